//! Ctrl-C while a shell command runs (a `get` or `put`): for as long as the
//! command runs, the terminal stops turning Ctrl-C into SIGINT (which would
//! also reach the ssh processes in ferry's process group and end the
//! session), and a thread reads the key itself and cancels the command, so
//! the prompt comes back and the partial file stays for `reget`/`reput`.
//! The terminal is put back as it was when the command ends.
//!
//! Not for the prompt (rustyline reads Ctrl-C there) nor for input that is
//! not a terminal (a batch cannot be interrupted from its input).

use crate::session::Cancel;
use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The watch over Ctrl-C; the terminal is restored when it is dropped.
pub struct CtrlC {
    saved: Termios,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts watching for Ctrl-C on stdin (`None` when stdin is not a
/// terminal); a press cancels `cancel`.
pub fn watch(cancel: Cancel) -> Option<CtrlC> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let saved = termios::tcgetattr(&stdin).ok()?;
    let mut raw = saved.clone();
    raw.local_modes
        .remove(LocalModes::ISIG | LocalModes::ICANON | LocalModes::ECHO);
    termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-shell-ctrl-c".into())
        .spawn(move || read_keys(cancel, stopping))
        .ok();
    Some(CtrlC {
        saved,
        stop,
        thread,
    })
}

/// Reads what is typed until told to stop (a tenth of a second at most
/// later); Ctrl-C cancels, other keys are dropped.
fn read_keys(cancel: Cancel, stop: Arc<AtomicBool>) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let stdin = std::io::stdin();
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        match rustix::io::read(&stdin, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if buf[..n].contains(&0x03) && !cancel.is_cancelled() {
                    eprintln!("^C: cancelling (the partial file is kept; reget/reput resume it)");
                    cancel.cancel();
                }
            }
        }
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
