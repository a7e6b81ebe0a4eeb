//! TLS 1.3 over TCP for the daemon, split into a reading half and a writing half
//! that two threads use at once (the session's sender and receiver both need
//! that).
//!
//! rustls runs the handshake (its unbuffered API, so that no byte it has not
//! processed is left inside it); then each direction's traffic keys go to a
//! [`Protection`] of its own and `record` seals and opens the records in
//! ferry's own buffers. The halves share nothing but the socket and the rustls
//! key schedule, which is locked only for a key update: a full send buffer
//! cannot stall the reader (and so the peer), and neither waits on the other's
//! encryption.
//!
//! `handshake` drives rustls; `keys` is its key schedule afterwards; `reader`
//! and `writer` are the halves, each with a `# Security` section on what it
//! trusts, refuses and sends; `record` (beside this module) seals and opens.
//! The halves are generic over a [`Socket`] so that `harness` (the fuzz
//! target's, doc-hidden) can run them over memory; ferry uses TCP only.

mod handshake;
/// Built only for the unit tests and the fuzz crate (feature `fuzzing`):
/// its key schedule is public, so it must not be in a release binary.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod harness;
mod keys;
mod reader;
mod writer;

pub use handshake::Handshake;
pub use keys::Keys;
pub use reader::TlsReader;
pub use writer::TlsWriter;

use crate::transport::record::Protection;
use crate::trust::key::PublicKey;
use handshake::{handshake, timed_out};
use rustls::AlertDescription;
use rustls::ConnectionTrafficSecrets;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use writer::Tx;

/// What the halves need of their connection: a TCP socket in ferry, memory in
/// the fuzz harness. The reader and the writer each hold their own handle to
/// it (for TCP, one socket cloned).
pub trait Socket: Read + Write {
    /// Bounds how long a read, or a write into a full send buffer, may wait.
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
    /// Tells the peer nothing more will be written.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Socket for TcpStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

struct Shared<S> {
    tx: Mutex<Tx<S>>,
    keys: Mutex<Keys>,
    /// The peer asked for our key to change too (a KeyUpdate with
    /// update_requested): done before the next record we send.
    update_asked: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl<S: Socket> Shared<S> {
    /// Tells the peer why we stop reading (best effort: the error that made
    /// us stop is what counts).
    fn fatal(&self, what: AlertDescription) {
        let _ = lock(&self.tx).alert(self, 2, what);
    }
}

/// An io::Error from rustls, with TLS failures explained.
fn tls_err(e: rustls::Error) -> io::Error {
    let altered = matches!(
        e,
        rustls::Error::DecryptError
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
    if altered {
        return invalid(crate::error::Altered);
    }
    invalid(e)
}

/// Runs the handshake to completion within `timeout`, then splits the stream.
/// Returns the halves and the key the peer proved it holds.
pub fn establish<C: Handshake>(
    conn: C,
    mut sock: TcpStream,
    timeout: Duration,
) -> io::Result<(TlsReader, TlsWriter, PublicKey)> {
    let deadline = Instant::now() + timeout;
    let _ = sock.set_nodelay(true);
    let h = handshake(conn, &mut sock, deadline).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => e,
    })?;
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    let (reader, writer) = halves(
        sock.try_clone()?,
        sock,
        &h.secrets.tx,
        &h.secrets.rx,
        h.keys,
        h.rest,
        h.early,
    )?;
    Ok((reader, writer, h.peer))
}

/// The two halves over `tx_sock` and `rx_sock` (handles to one connection),
/// from each direction's traffic secret and where its sequence numbers start,
/// the key schedule for updates, the bytes read past the handshake (`rest`, the
/// start of the first records) and application data that came with it.
///
/// `establish` calls this after the handshake; the fuzz harness calls it with
/// memory for the socket and [`Keys::Scripted`], to reach the record layer
/// with keys it knows.
fn halves<S: Socket>(
    tx_sock: S,
    rx_sock: S,
    (tx_seq, tx_secrets): &(u64, ConnectionTrafficSecrets),
    (rx_seq, rx_secrets): &(u64, ConnectionTrafficSecrets),
    keys: Keys,
    rest: Vec<u8>,
    early: Vec<u8>,
) -> io::Result<(TlsReader<S>, TlsWriter<S>)> {
    let tx = Tx {
        sock: tx_sock,
        protection: Protection::new(*tx_seq, tx_secrets).map_err(invalid)?,
        limit: keys.limit(),
        records: Vec::new(),
        used: 0,
        ended: false,
    };
    let rx = Protection::new(*rx_seq, rx_secrets).map_err(invalid)?;
    let shared = Arc::new(Shared {
        tx: Mutex::new(tx),
        keys: Mutex::new(keys),
        update_asked: AtomicBool::new(false),
    });
    let end = rest.len();
    Ok((
        TlsReader {
            shared: shared.clone(),
            sock: rx_sock,
            protection: rx,
            buf: rest,
            start: 0,
            end,
            plain: 0..0,
            early,
            early_pos: 0,
            eof: false,
            closed: false,
        },
        TlsWriter { shared },
    ))
}

#[cfg(test)]
mod tests;
