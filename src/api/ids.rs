//! Job ids and timestamps: ULID-style ids (48-bit milliseconds, 80 random
//! bits, Crockford base32) that sort by creation time and stay strictly
//! increasing within one process, and RFC 3339 UTC times. Not for anything
//! secret: API keys draw their own randomness in `keys`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new id, greater than every id this process made before.
pub fn new_id() -> String {
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let ms = now_ms().max(0) as u64;
    let (ms, rand) = if ms <= last.0 {
        (last.0, (last.1 + 1) & ((1u128 << 80) - 1))
    } else {
        let mut r = [0u8; 10];
        aws_lc_rs::rand::fill(&mut r).expect("system randomness");
        let mut v = 0u128;
        for b in r {
            v = (v << 8) | b as u128;
        }
        // leave room to count up within one millisecond
        (ms, v >> 1)
    };
    *last = (ms, rand);
    let value = ((ms as u128) << 80) | rand;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Whether `s` looks like an id this module makes.
pub fn is_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| CROCKFORD.contains(&b))
}

/// `ms` since the epoch as `2026-12-04T21:08:17.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC only) into ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, "0"),
    };
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    Some((days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + se) * 1000 + frac_ms)
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_and_times_round_trip() {
        let a: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|i| is_id(i)));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = 1_796_418_497_123;
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2026-12-04T21:08:17Z"),
            Some(1_796_418_497_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
