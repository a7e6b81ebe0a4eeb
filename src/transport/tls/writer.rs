//! The writing half: application data sealed into records in a reused buffer
//! and sent, the key replaced when the peer asks or the key has sealed all it
//! may, and the session ended with an alert (close_notify when the writer is
//! dropped, a fatal one when the reader gives up). Not the reading of records
//! (`reader`), nor the per-record crypto (`record`).
//!
//! # Security
//!
//! **Nonces never repeat.** Every record goes through [`Tx::push`], under the
//! `tx` lock, with the one [`Protection`] of the current key, whose sequence
//! number only advances. Before each record ([`Tx::before_record`]) the key is
//! replaced if the peer asked, or if the next sequence number would reach the
//! cipher suite's limit (`Keys::limit`: rustls's confidentiality limit, 2^24
//! records for AES-GCM): a KeyUpdate (update_not_requested) is sealed as the
//! old key's last record, then the next secret comes from rustls's key
//! schedule and a new `Protection` starts at the sequence number rustls gives.
//! No key seals more than its limit, and no record can slip in between the
//! KeyUpdate and the switch.
//!
//! **Ending.** Dropping the writer sends close_notify, then shuts the socket
//! for writing: the peer can tell a complete session from a cut one. When
//! the reader refuses something it sends a fatal alert through here instead.
//! Either way `ended` is set first: nothing, not even a close_notify after a
//! fatal alert, follows the first alert, and later writes fail with
//! `BrokenPipe`. Sending the alert is best effort; the error that caused it
//! is what the caller sees.
//!
//! **Bounds.** Only ferry's own data is sealed here; the sealed-records
//! buffer holds one batch of [`WRITE_BATCH`] bytes of plaintext and its
//! overhead, whatever the peer does.

use super::keys::KEY_UPDATE;
use super::{invalid, lock, tls_err, Shared, Socket};
use crate::transport::record::{self, Protection};
use rustls::AlertDescription;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How much plaintext one write seals before it goes to the socket.
const WRITE_BATCH: usize = 256 << 10;

/// The writing direction: the socket, its protection and a reused buffer.
pub(super) struct Tx<S> {
    pub(super) sock: S,
    pub(super) protection: Protection,
    /// Records sealed with one key before the next key update.
    pub(super) limit: u64,
    /// Sealed records waiting to be sent: `records[..used]`. The buffer keeps
    /// its length, so sealing into it does not first fill it with zeros.
    pub(super) records: Vec<u8>,
    pub(super) used: usize,
    /// A fatal alert or close_notify went out: nothing more may follow.
    pub(super) ended: bool,
}

impl<S: Socket> Tx<S> {
    /// Seals `data` (any length) as application data records.
    fn seal_all(&mut self, shared: &Shared<S>, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(record::MAX_PLAINTEXT) {
            self.before_record(shared)?;
            self.push(record::APPLICATION_DATA, piece);
        }
        Ok(())
    }

    /// Seals one record after those waiting to be sent.
    fn push(&mut self, typ: u8, data: &[u8]) {
        let end = self.used + data.len() + record::OVERHEAD;
        if self.records.len() < end {
            self.records.resize(end, 0);
        }
        self.used += self
            .protection
            .seal(typ, data, &mut self.records[self.used..end]);
    }

    /// Replaces the key first if the peer asked or this one has sealed all it
    /// may: a KeyUpdate under the old key, then everything under the new.
    fn before_record(&mut self, shared: &Shared<S>) -> io::Result<()> {
        let asked = shared.update_asked.swap(false, Ordering::AcqRel);
        if !asked && self.protection.seq() + 1 < self.limit {
            return Ok(());
        }
        // KeyUpdate, update_not_requested
        self.push(record::HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0]);
        let (seq, secrets) = lock(&shared.keys).next_tx().map_err(tls_err)?;
        self.protection = Protection::new(seq, &secrets).map_err(invalid)?;
        Ok(())
    }

    /// Sends what was sealed.
    fn send(&mut self) -> io::Result<()> {
        let r = self.sock.write_all(&self.records[..self.used]);
        self.used = 0;
        r
    }

    /// Sends an alert (close_notify or a fatal one); nothing follows it.
    pub(super) fn alert(
        &mut self,
        shared: &Shared<S>,
        level: u8,
        what: AlertDescription,
    ) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.used = 0;
        let _ = self.before_record(shared);
        self.push(record::ALERT, &[level, u8::from(what)]);
        self.send()
    }
}

/// The writing half of a TLS session: [`Write`] seals and sends at once
/// (`flush` has nothing to do); dropping it sends close_notify.
pub struct TlsWriter<S: Socket = std::net::TcpStream> {
    pub(super) shared: Arc<Shared<S>>,
}

impl<S: Socket> Write for TlsWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut tx = lock(&self.shared.tx);
        if tx.ended {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session has ended",
            ));
        }
        for batch in buf.chunks(WRITE_BATCH) {
            tx.seal_all(&self.shared, batch)?;
            tx.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Socket> Drop for TlsWriter<S> {
    fn drop(&mut self) {
        let mut tx = lock(&self.shared.tx);
        let _ = tx.alert(&self.shared, 1, AlertDescription::CloseNotify);
        let _ = tx.sock.shutdown_write();
    }
}
