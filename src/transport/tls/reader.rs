//! The reading half: records read from the socket into one buffer, checked,
//! opened (straight into the caller's buffer when the record fits there) and
//! acted on: application data is returned, alerts end the session, KeyUpdates
//! change the key. Not the writing (`writer`), nor the per-record crypto
//! (`record`).

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
