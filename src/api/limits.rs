//! Request rate limits for the API: one GCRA bucket (the `governor` crate)
//! per API key that authenticated, and one per client address for requests
//! without a valid key, so an unauthenticated flood never spends a key's
//! quota. Every answer carries the IETF draft's `RateLimit-Policy` and
//! `RateLimit` headers; one over the limit is a 429 with `Retry-After`. Not
//! for authentication itself (`keys`) or bandwidth (`--bwlimit`).

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// `--api-rate N/PERIOD`: N requests per PERIOD (s, min, h), bursts of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub period: Duration,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            requests: 600,
            period: Duration::from_secs(60),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("--api-rate {s:?}: expected N/PERIOD, e.g. 60/min, 10/s, 1000/h");
        let (n, p) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let period = match p.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86400,
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err(bad());
        }
        Ok(Rate {
            requests,
            period: Duration::from_secs(period),
        })
    }
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct Limiter {
    rate: Rate,
    keyed: Keyed,
}

/// What a check decided: the headers to send, and whether to refuse.
pub struct Decision {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the quota is whole again (allowed) or until the next
    /// request may pass (refused).
    pub reset_secs: u64,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        let n = NonZeroU32::new(rate.requests).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(rate.period / rate.requests.max(1))
            .unwrap_or_else(|| Quota::per_second(n))
            .allow_burst(n);
        Limiter {
            rate,
            keyed: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// Spends one request of `who`'s quota (`key:ID` or `addr:IP`).
    pub fn check(&self, who: &str) -> Decision {
        let per = self.rate.period.as_secs_f64() / self.rate.requests as f64;
        match self.keyed.check_key(&who.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.rate.requests.saturating_sub(remaining);
                Decision {
                    allowed: true,
                    remaining,
                    reset_secs: (used as f64 * per).ceil() as u64,
                }
            }
            Err(not_until) => Decision {
                allowed: false,
                remaining: 0,
                reset_secs: not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
            },
        }
    }

    /// `RateLimit-Policy`, e.g. `"default";q=600;w=60`.
    pub fn policy(&self) -> String {
        format!(
            "\"default\";q={};w={}",
            self.rate.requests,
            self.rate.period.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_limits_bite() {
        assert_eq!(
            "60/min".parse::<Rate>().unwrap(),
            Rate {
                requests: 60,
                period: Duration::from_secs(60)
            }
        );
        assert!("fast".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
        let l = Limiter::new("3/min".parse().unwrap());
        let d: Vec<Decision> = (0..4).map(|_| l.check("key:a")).collect();
        assert!(d[..3].iter().all(|d| d.allowed));
        assert_eq!(d[2].remaining, 0);
        assert!(!d[3].allowed && d[3].reset_secs >= 1);
        // another key has its own bucket
        assert!(l.check("key:b").allowed);
        assert_eq!(l.policy(), "\"default\";q=3;w=60");
    }
}
