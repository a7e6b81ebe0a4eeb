//! The reading half: records read from the socket into one buffer, checked,
//! opened (straight into the caller's buffer when the record fits there) and
//! acted on: application data is returned, alerts end the session, KeyUpdates
//! change the key. Not the writing (`writer`), nor the per-record crypto
//! (`record`).
//!
//! # Security
//!
//! **Trusted:** the traffic secrets and key schedule from rustls's handshake
//! (`keys`), and bytes rustls read past the handshake only as bytes. **Not
//! trusted:** everything from the socket, and also what opens: an
//! authenticated peer may still send content types, alerts and handshake
//! messages that may not come, and each is parsed as hostile.
//!
//! **Limits before allocating.** The read buffer is [`READ_BUFFER`] (or the
//! bytes left over from the handshake, at most 1 MiB) and never grows: a
//! header announcing more than [`record::MAX_CIPHERTEXT`] is refused as soon
//! as its five bytes are in, before the rest is waited for (record_overflow),
//! and the buffer is compacted to keep room for one whole record. Nothing the
//! peer sends is copied into memory of a size it chose.
//!
//! **What is refused, and the alert sent back** (through the writer half,
//! under its lock; after it the writer is ended and writes fail):
//! an outer content type other than application_data after the handshake, an
//! inner type other than application_data, alert or handshake, a record of
//! only padding, a post-handshake message other than NewSessionTicket (ignored:
//! ferry never resumes) and KeyUpdate, or a KeyUpdate that is not the last
//! message of its record: unexpected_message. A record that does not open:
//! bad_record_mac, and the error is [`crate::error::Altered`] (an integrity
//! failure, not a connection one). An alert that is not two bytes, or a
//! handshake message cut short at the end of its record: decode_error.
//!
//! **Alerts received.** close_notify ends the session cleanly: this read and
//! every one after it return 0, and nothing after it is read, so bytes after
//! close_notify are never parsed. user_canceled is a warning and is ignored
//! (close_notify follows it). Any other alert, whatever level it claims, is
//! fatal (§6): the read fails with it (bad_record_mac as
//! [`crate::error::Altered`]), and no alert is sent back.
//!
//! **Truncation.** If the socket ends without close_notify (between records
//! or inside one), the read fails with `UnexpectedEof` ("the peer closed the
//! connection without ending the TLS session"). `Ok(0)` from a non-empty
//! buffer therefore always means the peer ended the session on purpose;
//! someone who can only cut the connection cannot make it look complete.
//!
//! **KeyUpdate.** A KeyUpdate (alone at the end of its record, RFC 8446 §5.1)
//! replaces the key the peer's next record is opened with by the next one
//! from rustls's key schedule, its sequence numbers starting again. If it
//! asks for ours too (update_requested), the writer half sends its own
//! KeyUpdate before its next record; asks before that record make one update.
//! The number of KeyUpdates is not limited (rustls allows 32 in a row): each
//! costs the peer a record and us one key derivation, and the writer answers
//! at most one per record it sends, so it amplifies nothing.
//!
//! **Not latched.** An error is returned once: the reader does not remember
//! it, and a caller that reads again would go on at the next record (after an
//! altered one, every later one fails too, its sequence number being spent).
//! The session stops at the first error. Zero-length application data and
//! handshake records are accepted, as rustls accepts the former.

use super::keys::KEY_UPDATE;
use super::{invalid, lock, tls_err, Shared, Socket};
use crate::transport::record::{self, OpenError, Protection};
use rustls::AlertDescription;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A handshake message type seen after the handshake (RFC 8446 §4).
const NEW_SESSION_TICKET: u8 = 4;
/// How much the reader asks the socket for at a time.
pub(super) const READ_BUFFER: usize = 128 << 10;

/// The reading half of a TLS session: [`Read`] gives the peer's application
/// data, `Ok(0)` once it has sent close_notify, an error for anything else
/// (`# Security` in `tls/reader.rs` says what is refused and how).
pub struct TlsReader<S = std::net::TcpStream> {
    pub(super) shared: Arc<Shared<S>>,
    pub(super) sock: S,
    pub(super) protection: Protection,
    /// Bytes from the socket: `buf[start..end]` not yet opened.
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Plaintext of the record last opened, within `buf`.
    pub(super) plain: std::ops::Range<usize>,
    /// Application data that arrived with the handshake, served first.
    pub(super) early: Vec<u8>,
    pub(super) early_pos: usize,
    /// The socket reached its end.
    pub(super) eof: bool,
    /// The peer ended the session properly (close_notify).
    pub(super) closed: bool,
}

impl<S: Socket> TlsReader<S> {
    /// Bounds how long a read, or a write into a full send buffer, may wait for
    /// the peer (the socket is shared by both halves).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_timeouts(t)
    }

    /// Opens the record at `buf[start..]`, which is whole. Application data
    /// goes straight into `out` when the record fits there (decrypted from
    /// `buf` into `out`, rather than in place and then copied): returns how
    /// many bytes of `out` it filled. Otherwise it becomes `plain`, or changes
    /// the session's state, and 0 is returned. `out` past what is returned may
    /// hold the record's content type and padding.
    fn open_record(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let at = self.start;
        self.start += len;
        if self.buf[at] != record::APPLICATION_DATA {
            self.shared.fatal(AlertDescription::UnexpectedMessage);
            return Err(invalid(format!(
                "TLS: unexpected record of type {} after the handshake",
                self.buf[at]
            )));
        }
        // the plaintext's range: in `out` when opened into it, else in `buf`
        let sealed = record::sealed_len(len);
        let into_out = sealed > 0 && out.len() >= sealed;
        let opened = if into_out {
            self.protection
                .open_into(&self.buf[at..at + len], &mut out[..sealed])
                .map(|(typ, n)| (typ, 0..n))
        } else {
            self.protection
                .open(&mut self.buf[at..at + len])
                .map(|(typ, range)| (typ, at + range.start..at + range.end))
        };
        let (typ, body) = match opened {
            Ok(x) => x,
            Err(OpenError::Altered) => {
                self.shared.fatal(AlertDescription::BadRecordMac);
                return Err(invalid(crate::error::Altered));
            }
            Err(OpenError::NoContentType) => {
                self.shared.fatal(AlertDescription::UnexpectedMessage);
                return Err(invalid("TLS: a record without a content type"));
            }
        };
        if typ == record::APPLICATION_DATA {
            if into_out {
                return Ok(body.len());
            }
            self.plain = body;
            return Ok(0);
        }
        // anything else is handled from `buf`: opened into `out`, its
        // plaintext goes where its ciphertext was
        let body = if into_out {
            let inbuf = at + record::HEADER..at + record::HEADER + body.len();
            self.buf[inbuf.clone()].copy_from_slice(&out[body]);
            inbuf
        } else {
            body
        };
        match typ {
            record::ALERT => self.alert(body)?,
            record::HANDSHAKE => self.handshake_messages(body)?,
            other => {
                self.shared.fatal(AlertDescription::UnexpectedMessage);
                return Err(invalid(format!("TLS: unexpected content type {other}")));
            }
        }
        Ok(0)
    }

    fn alert(&mut self, body: std::ops::Range<usize>) -> io::Result<()> {
        let what = match self.buf[body] {
            [_, d] => AlertDescription::from(d),
            _ => {
                self.shared.fatal(AlertDescription::DecodeError);
                return Err(invalid("TLS: a malformed alert"));
            }
        };
        match what {
            AlertDescription::CloseNotify => {
                self.closed = true;
                Ok(())
            }
            AlertDescription::UserCanceled => Ok(()), // a warning; close_notify follows
            other => Err(tls_err(rustls::Error::AlertReceived(other))),
        }
    }

    /// Post-handshake messages: a KeyUpdate changes the key the peer's next
    /// record is sealed with; session tickets are not used (the daemon sends
    /// none), so one is ignored.
    fn handshake_messages(&mut self, body: std::ops::Range<usize>) -> io::Result<()> {
        let mut rest = &self.buf[body];
        let mut updates = Vec::new();
        while !rest.is_empty() {
            let (typ, len) = match rest {
                [t, a, b, c, ..] => (*t, u32::from_be_bytes([0, *a, *b, *c]) as usize),
                _ => (0, usize::MAX),
            };
            if rest.len() < 4 || rest.len() - 4 < len {
                self.shared.fatal(AlertDescription::DecodeError);
                return Err(invalid("TLS: a post-handshake message cut short"));
            }
            let msg = &rest[4..4 + len];
            rest = &rest[4 + len..];
            match (typ, msg) {
                (KEY_UPDATE, [asked @ (0 | 1)]) if rest.is_empty() => updates.push(*asked == 1),
                (NEW_SESSION_TICKET, _) => {}
                _ => {
                    self.shared.fatal(AlertDescription::UnexpectedMessage);
                    return Err(invalid(format!(
                        "TLS: unexpected handshake message {typ} after the handshake"
                    )));
                }
            }
        }
        for asked in updates {
            let (seq, secrets) = lock(&self.shared.keys).next_rx().map_err(tls_err)?;
            self.protection = Protection::new(seq, &secrets).map_err(invalid)?;
            if asked {
                self.shared.update_asked.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Reads more from the socket, keeping what is not opened yet.
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < record::HEADER + record::MAX_CIPHERTEXT {
            // room for at least one whole record after what is kept
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < READ_BUFFER {
            self.buf.resize(READ_BUFFER, 0);
        }
        let n = loop {
            match self.sock.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(())
    }
}

impl<S: Socket> Read for TlsReader<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.early_pos < self.early.len() {
            let n = out.len().min(self.early.len() - self.early_pos);
            out[..n].copy_from_slice(&self.early[self.early_pos..self.early_pos + n]);
            self.early_pos += n;
            return Ok(n);
        }
        loop {
            if !self.plain.is_empty() || out.is_empty() {
                let n = out.len().min(self.plain.len());
                out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
                self.plain.start += n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            let have = self.end - self.start;
            if have >= record::HEADER {
                let len = record::payload_len(&self.buf[self.start..]);
                if len > record::MAX_CIPHERTEXT {
                    self.shared.fatal(AlertDescription::RecordOverflow);
                    return Err(invalid(format!("TLS: a record of {len} bytes")));
                }
                if have >= record::HEADER + len {
                    let n = self.open_record(record::HEADER + len, out)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    continue;
                }
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without ending the TLS session",
                ));
            }
            self.fill()?;
        }
    }
}
