//! Reaching a peer and trying again: the one place a transfer with a local
//! end ([`super::run`]) and the remote-to-remote relay ([`super::relay`])
//! both get them from. [`reach_peer`] runs the client's half of a session
//! against a peer (ssh with its SFTP fallback, or a daemon over TLS);
//! [`with_retries`] runs a whole attempt again, with backoff and jitter,
//! while a daemon's connection breaks, and says when it gave up.
//!
//! Not for choosing the route or the sides that run here (that is the
//! caller's), nor for the `ferry doctor` hint that ends a failure: the
//! caller knows which end it names.

use super::endpoint::Peer;
use super::{connect_daemon, daemon_target, retryable, sftp, Plan, DOCTOR_HINT};
use super::{DEFAULT_RETRIES, DEFAULT_RETRY_WINDOW};
use crate::error::TransferError;
use crate::proto::{Event, Request, Summary, DEFAULT_PORT};
use crate::session::wire::Counters;
use crate::session::{self, Cancel, EventFn, Side};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the client's half of `request` against `peer`, the local half on
/// `side`: over ssh (`ferry serve --stdio` on the remote, or SFTP as
/// `--transport` allows; one ssh child per extra stream), or to a daemon
/// over TLS (one connection per extra stream). Tried once: see
/// [`with_retries`].
#[allow(clippy::too_many_arguments)]
pub(super) fn reach_peer(
    plan: &Plan,
    peer: &Peer<'_>,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    side: &dyn Side,
) -> Result<Summary, TransferError> {
    match *peer {
        Peer::Ssh { user, host } => sftp::over_ssh(
            plan,
            user,
            host,
            request,
            local_paths,
            events,
            cancel,
            counters,
            side,
        ),
        Peer::Daemon { host, port } => {
            let port = port.unwrap_or(DEFAULT_PORT);
            let stream = connect_daemon(host, port, &plan.daemon, events)?;
            let more = || connect_daemon(host, port, &plan.daemon, events);
            session::run_client_streams_on(
                stream,
                request,
                local_paths,
                events,
                cancel,
                counters.clone(),
                Some(&more),
                side,
            )
        }
    }
}

/// Runs `attempt`, and again while it fails in a way that can heal (see
/// [`retryable`]), when a daemon is one end of `plan`: with exponential
/// backoff and ±25% jitter, up to `--retries` times (10) within
/// `--timeout` (60 s without it), each retry told to `events` as a notice.
/// The last failure then says it gave up, and after how many retries. Over
/// ssh alone it is tried once: ssh's own options govern that.
pub(super) fn with_retries<T>(
    plan: &Plan,
    events: &EventFn<'_>,
    cancel: &Cancel,
    mut attempt: impl FnMut() -> Result<T, TransferError>,
) -> Result<T, TransferError> {
    if daemon_target(plan).is_none() {
        return attempt();
    }
    let window = plan.daemon.timeout.unwrap_or(DEFAULT_RETRY_WINDOW);
    let retries = plan.daemon.retries.unwrap_or(DEFAULT_RETRIES);
    let mut first_failure: Option<Instant> = None;
    let mut delay = Duration::from_millis(250);
    let mut reached = false;
    let mut tries = 0u32;
    loop {
        let e = match attempt() {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        if !retryable(&e, reached) || cancel.is_cancelled() || retries == 0 {
            return Err(e);
        }
        // anything but a failed connect means a daemon answered
        reached |= !matches!(e, TransferError::Connect { .. });
        let since = *first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= window || tries >= retries {
            let given_up = if tries >= retries {
                format!(
                    "gave up after retrying {tries} time(s) in {} s (--retries {retries})",
                    since.elapsed().as_secs()
                )
            } else {
                format!("gave up after retrying for {} s", window.as_secs())
            };
            return Err(noted(e, &given_up));
        }
        tries += 1;
        // ±25% jitter so that many clients do not retry in step
        let mut r = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut r);
        let jitter = 0.75 + (u16::from_le_bytes(r) as f64 / u16::MAX as f64) * 0.5;
        // never past the window's end by more than one more try
        let wait = delay
            .mul_f64(jitter)
            .min(window.saturating_sub(since.elapsed()))
            .max(Duration::from_millis(50));
        // (the hint is for the failure that ends it all)
        let said = e.to_string();
        events(Event::notice(
            b"",
            format!(
                "{}; retrying in {:.1} s",
                unhinted(&said),
                wait.as_secs_f64()
            ),
        ));
        std::thread::sleep(wait);
        delay = (delay * 2).min(Duration::from_secs(8));
    }
}

/// `text` without the `ferry doctor` hint it may end with.
fn unhinted(text: &str) -> &str {
    text.find(DOCTOR_HINT).map_or(text, |at| &text[..at])
}

/// `e` with `(note)` after its text, and before a `ferry doctor` hint it
/// already ends with (the relay hints each end as it fails), so that the
/// hint stays the last thing said.
fn noted(e: TransferError, note: &str) -> TransferError {
    let add = |text: String| {
        let before = unhinted(&text);
        format!("{before} ({note}){}", &text[before.len()..])
    };
    match e {
        TransferError::Connect { text, why } => TransferError::Connect {
            text: add(text),
            why,
        },
        TransferError::Connection(m) => TransferError::Connection(add(m)),
        TransferError::Remote(m) => TransferError::Remote(add(m)),
        other => TransferError::Connection(add(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_goes_before_the_doctor_hint() {
        let hinted = super::super::with_doctor_hint(
            TransferError::Connection("reset (the destination, gpu2)".into()),
            "gpu2",
        );
        assert_eq!(
            noted(hinted, "gave up").to_string(),
            "connection lost: reset (the destination, gpu2) (gave up); \
             run `ferry doctor gpu2` to find out why"
        );
        let plain = noted(TransferError::Remote("busy".into()), "gave up");
        assert!(plain.to_string().ends_with("busy (gave up)"), "{plain}");
        assert_eq!(
            unhinted("reset; run `ferry doctor h` to find out why"),
            "reset"
        );
        assert_eq!(unhinted("reset"), "reset");
    }
}
