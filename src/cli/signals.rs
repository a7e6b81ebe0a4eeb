//! SIGINT and SIGTERM during `sync` or `cp`: the transfer is cancelled and
//! ferry exits 20 ("cancelled", the README's exit table and rsync's code for
//! a signal) with one line, keeping the partial file as a killed transfer
//! always did. Without this the default action ended ferry with 130 or 143
//! and no word.
//!
//! With `--json` the cancelled run's fatal line (`"category":"cancelled"`)
//! goes to stdout too, whichever of the transfer and the watcher ends it.
//!
//! The watch covers the transfer only: when it ends (before the summary is
//! printed) SIGINT and SIGTERM act as default again, so a final write that
//! blocks on a pipe nobody reads can still be stopped. signal-hook cannot
//! give the disposition back (unregistering leaves its handler installed,
//! ignoring the signal), so the watch also registers the default action
//! behind a flag that its end raises. One watch per process: after it,
//! the signals stay default.
//!
//! Not for the daemon (a signal drains its sessions, see `serve`) nor for
//! `ferry shell` (Ctrl-C there cancels one command, see `shell::interrupt`).

use crate::error::TransferError;
use crate::session::Cancel;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a cancelled transfer may take to wind down (a read blocked on a
/// peer sees the flag only when something arrives) before ferry exits anyway.
const GRACE: Duration = Duration::from_secs(2);

/// How long the watcher waits for stdout to take the `--json` line before
/// it exits without it (a reader that stopped reading must not keep a
/// cancelled ferry alive).
const JSON_WRITE: Duration = Duration::from_secs(1);

/// Watches for SIGINT and SIGTERM while a transfer runs; stops on drop,
/// and from then on the signals take their default action.
pub struct Watch {
    handle: signal_hook::iterator::Handle,
    finished: Arc<AtomicBool>,
    /// Raised on drop: the signals' default action (registered behind it)
    /// runs from then on.
    default_again: Arc<AtomicBool>,
}

/// Cancels `cancel` on the first SIGINT or SIGTERM; if the transfer has not
/// ended [`GRACE`] later, or a second signal comes, exits 20 with one line
/// (and, with `json`, the fatal JSON line on stdout). None when the handler
/// cannot be installed (the signal then acts as it always did).
pub fn watch(cancel: &Cancel, json: bool) -> Option<Watch> {
    let default_again = Arc::new(AtomicBool::new(false));
    let watch = install(cancel, json, &default_again);
    if watch.is_none() {
        // whatever was registered before the failure acts as default
        default_again.store(true, Ordering::SeqCst);
    }
    watch
}

/// [`watch`]'s steps; None at the first that fails.
fn install(cancel: &Cancel, json: bool, default_again: &Arc<AtomicBool>) -> Option<Watch> {
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_default(sig, default_again.clone()).ok()?;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM]).ok()?;
    let handle = signals.handle();
    let finished = Arc::new(AtomicBool::new(false));
    let (cancel, done) = (cancel.clone(), finished.clone());
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return; // closed: the transfer ended
            }
            cancel.cancel();
            let deadline = std::time::Instant::now() + GRACE;
            while std::time::Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                if signals.pending().next().is_some() {
                    break; // a second Ctrl-C: do not wait
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // the transfer's own end and this one exclusive: one line
            if !done.swap(true, Ordering::SeqCst) {
                if json {
                    json_line_or_give_up();
                }
                eprintln!("ferry: {}", TransferError::Cancelled);
                std::process::exit(TransferError::Cancelled.exit_code());
            }
        })
        .ok()?;
    Some(Watch {
        handle,
        finished,
        default_again: default_again.clone(),
    })
}

/// The cancelled run's `--json` line, written from a thread of its own: the
/// transfer may be stuck writing to a full stdout, holding its lock, and
/// then the line is given up after [`JSON_WRITE`].
fn json_line_or_give_up() {
    let written = Arc::new(AtomicBool::new(false));
    let w = written.clone();
    let spawned = std::thread::Builder::new()
        .name("ferry-signals-json".into())
        .spawn(move || {
            super::json::fatal(&TransferError::Cancelled);
            w.store(true, Ordering::SeqCst);
        });
    if spawned.is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + JSON_WRITE;
    while !written.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A transfer's result as the user sees it: whatever error a cancelled
/// transfer ended with (a connection its ssh child dropped on the same
/// Ctrl-C, a reader that saw the flag) is "cancelled". One that finished
/// before the signal mattered stands.
pub fn outcome<T>(cancel: &Cancel, result: Result<T, TransferError>) -> Result<T, TransferError> {
    match result {
        Err(_) if cancel.is_cancelled() => Err(TransferError::Cancelled),
        r => r,
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.finished.swap(true, Ordering::SeqCst) {
            // the watcher is saying "cancelled" and ending the process
            loop {
                std::thread::park();
            }
        }
        self.handle.close();
        self.default_again.store(true, Ordering::SeqCst);
    }
}
