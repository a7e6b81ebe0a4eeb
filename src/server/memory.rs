//! Giving freed memory back to the operating system once a server goes idle.
//!
//! Under load each connection thread allocates from one of glibc's per-thread
//! arenas; what those threads free stays in the arenas, so a daemon that has
//! served 128 sessions at once keeps their peak in its RSS long after they
//! have ended. `malloc_trim(0)` returns the free pages of every arena. It walks
//! the whole heap, so it is called only on the transition to idle (the last
//! connection gone), at most once per [`MIN_GAP`], never per request.
//!
//! Trimming alone leaves what live allocations pin in each of the (up to 8
//! per core) arenas; [`cap_arenas`] at start-up keeps their number at two per
//! core, after which a trim takes the daemon back to within a few hundred KiB
//! of its idle level (bench/NOTES.md §36 has the measurements).

use std::time::{Duration, Instant};

/// The least time between two trims, so that clients arriving and leaving
/// one at a time do not pay for a heap walk each.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// How long nothing must have run before a trim: a connection's thread frees
/// its thread-locals and its allocation cache only after it has been counted
/// out, and what it frees after a trim would stay.
pub const SETTLE: Duration = Duration::from_millis(250);

/// When work last ended (if it has since the last trim), and when that trim
/// was: the owner marks the end of work with [`Idle::work_ended`] and calls
/// [`Idle::tick`] while nothing runs.
#[derive(Debug, Default)]
pub struct Idle {
    ended: Option<Instant>,
    last: Option<Instant>,
}

impl Idle {
    /// The last piece of work has just ended: trim once things have settled.
    pub fn work_ended(&mut self) {
        self.ended = Some(Instant::now());
    }

    /// Nothing is running: trims if work ended at least [`SETTLE`] ago and
    /// the last trim was at least [`MIN_GAP`] ago (otherwise stays due).
    pub fn tick(&mut self) {
        let Some(ended) = self.ended else { return };
        if ended.elapsed() < SETTLE || self.last.is_some_and(|t| t.elapsed() < MIN_GAP) {
            return;
        }
        self.ended = None;
        self.last = Some(Instant::now());
        let freed = give_back();
        tracing::debug!(freed, "idle: gave freed memory back to the system");
    }
}

/// Caps glibc's malloc arenas at two per core, unless `MALLOC_ARENA_MAX`
/// says otherwise (glibc reads that itself). Call before serving: arenas
/// already made stay. A no-op where the allocator is not glibc's.
pub fn cap_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_arena_max(cores.saturating_mul(2).min(64) as i32);
}

#[cfg(target_env = "gnu")]
fn set_arena_max(n: i32) {
    #[allow(unsafe_code)]
    // SAFETY: mallopt takes two plain integers and changes only a limit the
    // allocator reads, under its own lock, when it next makes an arena; it is
    // declared by the libc crate with glibc's signature.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
    if ok != 1 {
        tracing::debug!(n, "mallopt(M_ARENA_MAX) refused");
    }
}

#[cfg(not(target_env = "gnu"))]
fn set_arena_max(_n: i32) {}

/// Returns the free memory of every malloc arena to the system; whether any
/// was returned. A no-op (false) where the allocator is not glibc's.
#[cfg(target_env = "gnu")]
pub fn give_back() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes a plain integer, touches only the allocator's
    // own state under the allocator's locks, and is safe to call from any
    // thread at any time; it is declared by the libc crate with glibc's
    // signature.
    let r = unsafe { libc::malloc_trim(0) };
    r != 0
}

/// Returns the free memory of every malloc arena to the system; whether any
/// was returned. A no-op (false) where the allocator is not glibc's.
#[cfg(not(target_env = "gnu"))]
pub fn give_back() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_settled_once_per_end_of_work_and_not_twice_within_the_gap() {
        let mut idle = Idle::default();
        idle.tick();
        assert!(idle.last.is_none(), "nothing ended: no trim");
        idle.work_ended();
        idle.tick();
        assert!(idle.last.is_none(), "not settled yet: no trim");
        std::thread::sleep(SETTLE);
        idle.tick();
        let first = idle.last.expect("trimmed once settled");
        assert!(idle.ended.is_none());
        idle.tick();
        assert_eq!(idle.last, Some(first), "no work since: no second trim");
        idle.work_ended();
        std::thread::sleep(SETTLE);
        idle.tick();
        assert_eq!(idle.last, Some(first), "within the gap: not yet");
        assert!(idle.ended.is_some(), "still due, for after the gap");
    }
}
