//! SIGINT and SIGTERM during `sync` or `cp`: the transfer is cancelled and
//! ferry exits 20 ("cancelled", the README's exit table and rsync's code for
//! a signal) with one line, keeping the partial file as a killed transfer
//! always did. Without this the default action ended ferry with 130 or 143
//! and no word.
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

/// Watches for SIGINT and SIGTERM while a transfer runs; stops on drop.
pub struct Watch {
    handle: signal_hook::iterator::Handle,
    finished: Arc<AtomicBool>,
}

/// Cancels `cancel` on the first SIGINT or SIGTERM; if the transfer has not
/// ended [`GRACE`] later, or a second signal comes, exits 20 with one line.
/// None when the handler cannot be installed (the signal then acts as it
/// always did).
pub fn watch(cancel: &Cancel) -> Option<Watch> {
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
                eprintln!("ferry: {}", TransferError::Cancelled);
                std::process::exit(TransferError::Cancelled.exit_code());
            }
        })
        .ok()?;
    Some(Watch { handle, finished })
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
    }
}
