//! Process-wide counters of what the daemon serves: sessions open now and in
//! all, bytes on the wire each way, and files sent and received, for every
//! client (CLI or job). Plain atomics, read by the API's `/metrics`. Not for
//! per-client or per-path numbers (those would be unbounded labels).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

pub static SESSIONS_ACTIVE: AtomicU64 = AtomicU64::new(0);
pub static SESSIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
pub static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
pub static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
pub static FILES_SENT: AtomicU64 = AtomicU64::new(0);
pub static FILES_RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Counts the bytes read through it into [`BYTES_RECEIVED`].
pub struct CountRead<R>(pub R);
impl<R: Read> Read for CountRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        BYTES_RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Counts the bytes written through it into [`BYTES_SENT`].
pub struct CountWrite<W>(pub W);
impl<W: Write> Write for CountWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        BYTES_SENT.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A session that is open; counted until dropped.
pub struct Open;
impl Open {
    pub fn start() -> Open {
        SESSIONS_ACTIVE.fetch_add(1, Ordering::Relaxed);
        SESSIONS_TOTAL.fetch_add(1, Ordering::Relaxed);
        Open
    }
}
impl Drop for Open {
    fn drop(&mut self) {
        SESSIONS_ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transfer the daemon served ended: `files` went out (it sent) or in.
pub fn files(sent: bool, files: u64) {
    let c = if sent { &FILES_SENT } else { &FILES_RECEIVED };
    c.fetch_add(files, Ordering::Relaxed);
}
