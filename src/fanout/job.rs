//! A fan-out job as its front doors (`ferry fanout`, the API's job runner)
//! build and judge it: destination addresses checked and turned into the
//! chain's targets, the stall timeout's text, the job id's hex form, and
//! what an outcome means (every host has it, some missed it, none got it).
//! Both doors call these, so a job means the same whichever one ran it.
//!
//! Not for running the chain (that is [`super::source`]), printing or
//! keeping job records (each front door keeps its own).

use super::source::{HostResult, State, Target};
use crate::error::TransferError;
use crate::location::Location;
use std::time::Duration;

/// `10s`, `500ms`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs <= 86400.0) {
        return Err(format!("{s:?}: must be more than 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A job id as records and messages show it (32 hex digits).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A job id (16 bytes) or a manifest root (32) from its hex form.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One destination address (`host::module/path`, `ferry://host[:port]/module/path`)
/// as a target of the chain; `port` for addresses that name none.
pub fn target(arg: &str, port: Option<u16>) -> Result<Target, TransferError> {
    match Location::parse(std::ffi::OsStr::new(arg)) {
        Ok(Location::Daemon { host, port: p, path }) if !path.is_empty() => Ok(Target {
            host,
            port: p.or(port).unwrap_or(crate::proto::DEFAULT_PORT),
            path,
            shown: arg.to_string(),
        }),
        Ok(Location::Daemon { .. }) => Err(TransferError::Usage(format!(
            "{arg}: name a module (host::module/path)"
        ))),
        Ok(_) => Err(TransferError::Usage(format!(
            "{arg}: a fan-out destination must be a ferry daemon (host::module/path or ferry://host/module/path)"
        ))),
        Err(e) => Err(TransferError::Usage(e.to_string())),
    }
}

/// The chain's targets, in order: every address a daemon, no daemon twice
/// (a host cannot forward to itself).
pub fn chain<S: AsRef<str>>(addrs: &[S], port: Option<u16>) -> Result<Vec<Target>, TransferError> {
    let mut seen = std::collections::HashSet::new();
    let mut targets = Vec::new();
    for a in addrs {
        let t = target(a.as_ref(), port)?;
        if !seen.insert((t.host.clone(), t.port)) {
            return Err(TransferError::Usage(format!(
                "{}: the same daemon twice in one chain",
                t.shown
            )));
        }
        targets.push(t);
    }
    Ok(targets)
}

/// What a run's outcome means for the job, as the CLI's exit codes say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every host has the whole tree, verified (exit 0).
    Done,
    /// Some hosts have it, the others missed it (exit 24; resume repairs them).
    Partial,
    /// No host got it (exit 24 too: a resume runs it again once the causes
    /// are fixed).
    Failed,
}

/// How a run ended, from each host's result.
pub fn ending(hosts: &[HostResult]) -> Ending {
    let missed = hosts.iter().filter(|h| h.state == State::Missed).count();
    if missed == 0 {
        Ending::Done
    } else if missed == hosts.len() {
        Ending::Failed
    } else {
        Ending::Partial
    }
}

/// Whether every host that missed the job refused it itself (no such
/// module, read-only): a resume would meet the same refusal.
pub fn all_declined(hosts: &[HostResult]) -> bool {
    let mut missed = hosts.iter().filter(|h| h.state == State::Missed).peekable();
    missed.peek().is_some() && missed.all(|h| h.declined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_refuse_non_daemons_and_duplicates() {
        let t = chain(&["a::m/x", "ferry://b:7000/m/x"], None).unwrap();
        assert_eq!(t[0].port, crate::proto::DEFAULT_PORT);
        assert_eq!((t[1].host.as_str(), t[1].port), ("b", 7000));
        let e = chain(&["a::m/x", "ferry://a:7420/m/y"], None).unwrap_err();
        assert!(e.to_string().contains("the same daemon twice"), "{e}");
        let e = chain(&["host:/srv/x"], None).unwrap_err();
        assert!(e.to_string().contains("must be a ferry daemon"), "{e}");
        let e = chain(&["a::"], None).unwrap_err();
        assert!(e.to_string().contains("name a module"), "{e}");
    }
}
