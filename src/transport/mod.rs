//! Byte streams a session can run over, and how to reach a peer through one: a
//! child process's stdio (the system `ssh` running `ferry serve --stdio` on
//! the remote, or a local `ferry serve --stdio` child), TLS 1.3 to a ferry
//! daemon, the extra streams that join an ssh transfer, and the in-memory
//! pipes between two session halves in one process ([`memory`]).
//!
//! Not for what runs over the streams: the conversation is `session`'s,
//! serving it is `server`'s (and, for local copies, `transfer`'s). Nothing
//! here imports those; they import [`Stream`] from here.

pub mod child;
pub mod daemon;
pub mod memory;
pub mod record;
pub mod rendezvous;
pub mod tls;

use std::io::{Read, Write};

/// A connected byte stream, split into its two directions.
pub struct Stream {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// Both ends are in this process (`transfer`'s in-process pair): no
    /// other machine, nothing to decrypt, no extra streams. The receiving
    /// half then reads it on its own thread rather than through a reader
    /// thread (`session::receiver`'s pumps).
    pub in_process: bool,
}

/// How big a pipe carrying a session is made (the most an unprivileged
/// process may ask for by default, `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1 << 20;

/// Widens a pipe that carries a session from the kernel's 64 KiB: each side
/// can write further ahead of the other, and `ssh` and ferry wake each other
/// less often (2 GiB over ssh, five interleaved pairs: medians 4.10 -> 3.76 s).
/// Not a pipe, or not allowed: left as it is.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_pipe_holds_a_mebibyte() {
        let (r, w) = std::io::pipe().unwrap();
        super::widen_pipe(&w);
        assert_eq!(
            rustix::pipe::fcntl_getpipe_size(&r).unwrap(),
            super::PIPE_SIZE
        );
    }
}
