//! A byte pipe inside one process: what the in-process pair of session
//! halves (`transfer`'s local copies, and the SFTP and S3 stores) talks
//! through, in place of an OS pipe.
//!
//! An OS pipe costs, per 4 KiB page that crosses it, a page allocated,
//! charged to the memory cgroup, freed and uncharged, and its writer and
//! reader contend for the kernel's pipe lock (on a 2 GiB SFTP upload ~8% of
//! ferry's samples, `bench/NOTES.md` §44). Here the bytes cross one fixed
//! ring buffer under a mutex, and a side is woken only when the other is
//! waiting for it.
//!
//! Not for another process or machine (that is [`super::child`] and
//! [`super::tls`]), and not framing: a plain [`Read`] and [`Write`] pair, as
//! any other stream.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes a pipe holds at most: as wide as a pipe to an ssh child
/// ([`super::widen_pipe`]), so that a file's bytes cross in large steps.
pub const CAPACITY: usize = 1 << 20;

struct State {
    buf: VecDeque<u8>,
    /// The writing end was dropped: a read of an empty pipe is the end.
    writer_gone: bool,
    /// The reading end was dropped: a write fails as on a broken pipe.
    reader_gone: bool,
    /// A side sleeps waiting for the other (only then is it woken: a wake
    /// is a system call).
    reader_waits: bool,
    writer_waits: bool,
}

struct Shared {
    state: Mutex<State>,
    readable: Condvar,
    writable: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reading end.
pub struct PipeReader(Arc<Shared>);

/// The writing end.
pub struct PipeWriter(Arc<Shared>);

/// A new pipe holding at most `capacity` bytes.
pub fn pipe(capacity: usize) -> (PipeReader, PipeWriter) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: VecDeque::with_capacity(capacity.max(1)),
            writer_gone: false,
            reader_gone: false,
            reader_waits: false,
            writer_waits: false,
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
    });
    (PipeReader(shared.clone()), PipeWriter(shared))
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let shared = &*self.0;
        let mut s = shared.lock();
        while s.buf.is_empty() {
            if s.writer_gone {
                return Ok(0);
            }
            s.reader_waits = true;
            s = shared.readable.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.reader_waits = false;
        let n = s.buf.len().min(out.len());
        let (a, b) = s.buf.as_slices();
        let from_a = a.len().min(n);
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        s.buf.drain(..n);
        if s.writer_waits {
            s.writer_waits = false;
            shared.writable.notify_one();
        }
        Ok(n)
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let shared = &*self.0;
        let mut s = shared.lock();
        let cap = s.buf.capacity();
        loop {
            if s.reader_gone {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            if s.buf.len() < cap {
                break;
            }
            s.writer_waits = true;
            s = shared.writable.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.writer_waits = false;
        let n = (cap - s.buf.len()).min(data.len());
        s.buf.extend(&data[..n]);
        if s.reader_waits {
            s.reader_waits = false;
            shared.readable.notify_one();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.reader_gone = true;
        s.buf = VecDeque::new();
        self.0.writable.notify_all();
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.lock().writer_gone = true;
        self.0.readable.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes arrive whole and in order across the ring's wrap, through
    /// writes and reads of every size around the capacity, and the end of
    /// the writer is the end of the stream.
    #[test]
    fn bytes_cross_in_order_and_the_writers_end_is_the_end() {
        let (mut r, mut w) = pipe(1000);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expect = sent.clone();
        let writer = std::thread::spawn(move || {
            let mut at = 0;
            for (k, size) in [1, 999, 1000, 1001, 3, 4096].iter().cycle().enumerate() {
                if at == sent.len() {
                    break;
                }
                let end = (at + size).min(sent.len());
                w.write_all(&sent[at..end]).unwrap();
                at = end;
                if k % 17 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        for size in [7, 1500, 1, 1000, 333].iter().cycle() {
            let n = r.read(&mut buf[..*size]).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "the bytes differ");
    }

    /// A writer blocked on a full pipe learns that the reader is gone.
    #[test]
    fn a_write_after_the_reader_is_gone_fails_as_a_broken_pipe() {
        let (r, mut w) = pipe(16);
        w.write_all(&[1; 16]).unwrap();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(r);
        });
        let e = w.write_all(&[2; 16]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        dropper.join().unwrap();
    }
}
