//! Test hooks that hold the sender at a named entry, so that a test can change
//! the tree at that moment every time (a directory swapped before the walk
//! opens it, a file swapped before it is opened to be sent). Not for anything
//! a user runs: without `FERRY_TEST_HOOKS=1` in the environment the hook's own
//! variables are never read and nothing waits.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One hook: `AT=NAME` names where to hold, `FILE=PATH` when to go on.
pub(crate) struct PauseHook {
    at: &'static str,
    file: &'static str,
    /// The two variables, read once.
    set: OnceLock<Option<(Vec<u8>, PathBuf)>>,
}

/// How long a held sender waits for the test at most.
const AT_MOST: Duration = Duration::from_secs(20);

impl PauseHook {
    pub(crate) const fn new(at: &'static str, file: &'static str) -> PauseHook {
        PauseHook {
            at,
            file,
            set: OnceLock::new(),
        }
    }

    /// When the hook is set and `here` says its NAME is this entry: makes
    /// `PATH.waiting` and waits (20 s at most) until PATH exists.
    pub(crate) fn hold_if(&self, here: impl FnOnce(&[u8]) -> bool) {
        let set = self.set.get_or_init(|| {
            if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
                return None;
            }
            let at = std::env::var_os(self.at)?;
            let file = std::env::var_os(self.file)?;
            Some((at.into_vec(), PathBuf::from(file)))
        });
        let Some((at, file)) = set else { return };
        if !here(at) {
            return;
        }
        let mut waiting = OsString::from(file.as_os_str());
        waiting.push(".waiting");
        let _ = std::fs::write(&waiting, b"");
        let until = Instant::now() + AT_MOST;
        while !file.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
