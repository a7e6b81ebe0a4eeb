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

use super::record::{self, OpenError, Protection};
use crate::trust::key::PublicKey;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use rustls::{AlertDescription, ConnectionTrafficSecrets};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Handshake message types seen after the handshake (RFC 8446 §4).
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// How much plaintext one write seals before it goes to the socket.
const WRITE_BATCH: usize = 256 << 10;
/// The most handshake bytes buffered before rustls has used them.
const MAX_HANDSHAKE_BUFFER: usize = 1 << 20;
/// How much the reader asks the socket for at a time.
const READ_BUFFER: usize = 128 << 10;

/// A connection whose handshake rustls drives without buffering.
pub trait Handshake {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
    fn into_keys(self) -> Result<(rustls::ExtractedSecrets, Keys), rustls::Error>;
}

/// The client's and the server's unbuffered connections differ only in type.
macro_rules! handshake_for {
    ($conn:ty, $data:ty, $keys:ident) => {
        impl Handshake for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &rustls::CommonState {
                self
            }
            fn into_keys(self) -> Result<(rustls::ExtractedSecrets, Keys), rustls::Error> {
                let (secrets, k) = self.dangerous_into_kernel_connection()?;
                Ok((secrets, Keys::$keys(k)))
            }
        }
    };
}

handshake_for!(UnbufferedClientConnection, ClientConnectionData, Client);
handshake_for!(UnbufferedServerConnection, ServerConnectionData, Server);

/// rustls's key schedule after the handshake: the next traffic keys of each
/// direction on a key update.
pub enum Keys {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Keys {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_tx_secret(),
            Keys::Server(k) => k.update_tx_secret(),
        }
    }
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_rx_secret(),
            Keys::Server(k) => k.update_rx_secret(),
        }
    }
    /// Records one key may seal before it must be replaced (AES-GCM: 2^24).
    fn limit(&self) -> u64 {
        let suite = match self {
            Keys::Client(k) => k.negotiated_cipher_suite(),
            Keys::Server(k) => k.negotiated_cipher_suite(),
        };
        suite
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit)
    }
}

/// The writing direction: the socket, its protection and a reused buffer.
struct Tx {
    sock: TcpStream,
    protection: Protection,
    /// Records sealed with one key before the next key update.
    limit: u64,
    /// Sealed records waiting to be sent: `records[..used]`. The buffer keeps
    /// its length, so sealing into it does not first fill it with zeros.
    records: Vec<u8>,
    used: usize,
    /// A fatal alert or close_notify went out: nothing more may follow.
    ended: bool,
}

struct Shared {
    tx: Mutex<Tx>,
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

impl Tx {
    /// Seals `data` (any length) as application data records.
    fn seal_all(&mut self, shared: &Shared, data: &[u8]) -> io::Result<()> {
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
    fn before_record(&mut self, shared: &Shared) -> io::Result<()> {
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
    fn alert(&mut self, shared: &Shared, level: u8, what: AlertDescription) -> io::Result<()> {
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

impl Shared {
    /// Tells the peer why we stop reading (best effort: the error that made
    /// us stop is what counts).
    fn fatal(&self, what: AlertDescription) {
        let _ = lock(&self.tx).alert(self, 2, what);
    }
}

pub struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    protection: Protection,
    /// Bytes from the socket: `buf[start..end]` not yet opened.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Plaintext of the record last opened, within `buf`.
    plain: std::ops::Range<usize>,
    /// Application data that arrived with the handshake, served first.
    early: Vec<u8>,
    early_pos: usize,
    /// The socket reached its end.
    eof: bool,
    /// The peer ended the session properly (close_notify).
    closed: bool,
}

pub struct TlsWriter {
    shared: Arc<Shared>,
}

impl TlsReader {
    /// Bounds how long a read, or a write into a full send buffer, may wait for
    /// the peer (the socket is shared by both halves).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)?;
        self.sock.set_write_timeout(t)
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

impl Read for TlsReader {
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

impl Write for TlsWriter {
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

impl Drop for TlsWriter {
    fn drop(&mut self) {
        let mut tx = lock(&self.shared.tx);
        let _ = tx.alert(&self.shared, 1, AlertDescription::CloseNotify);
        let _ = tx.sock.shutdown(Shutdown::Write);
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
}

/// What the handshake leaves: the traffic keys, the key schedule, the peer's
/// key, bytes read past the handshake, and application data that came with it.
struct Handshaken {
    secrets: rustls::ExtractedSecrets,
    keys: Keys,
    peer: PublicKey,
    rest: Vec<u8>,
    early: Vec<u8>,
}

/// Drives rustls's handshake over `sock` until it may send application data.
fn handshake<C: Handshake>(
    mut conn: C,
    sock: &mut TcpStream,
    deadline: Instant,
) -> io::Result<Handshaken> {
    // one deadline for the whole handshake: each read and write gets what is left
    let left = |sock: &TcpStream| -> io::Result<()> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)?;
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))
    };
    let mut incoming = vec![0u8; 16 << 10];
    let mut filled = 0;
    let mut outgoing = vec![0u8; 16 << 10];
    let mut queued = 0;
    let mut early = Vec::new();
    let mut failed = None;
    loop {
        let status = conn.process(&mut incoming[..filled]);
        let discard = status.discard;
        let mut read = false;
        let mut done = false;
        match status.state {
            Err(e) => {
                if failed.is_some() {
                    break; // the alert, if any, has gone out
                }
                failed = Some(e);
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => loop {
                match data.encode(&mut outgoing[queued..]) {
                    Ok(n) => {
                        queued += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        outgoing.resize(queued + required_size, 0)
                    }
                    Err(e) => return Err(invalid(format!("TLS: {e}"))),
                }
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                left(sock)?;
                sock.write_all(&outgoing[..queued])?;
                queued = 0;
                t.done();
            }
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    early.extend_from_slice(rec.map_err(tls_err)?.payload);
                }
            }
            Ok(ConnectionState::BlockedHandshake) if failed.is_none() => read = true,
            Ok(ConnectionState::WriteTraffic(_)) if failed.is_none() => done = true,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) if failed.is_none() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ))
            }
            Ok(_) => {
                failed.get_or_insert(rustls::Error::General("unexpected TLS state".into()));
                break;
            }
        }
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if done {
            break;
        }
        if read {
            if filled == incoming.len() {
                // rustls refuses any handshake message over 64 KiB long before this
                if filled >= MAX_HANDSHAKE_BUFFER {
                    return Err(invalid("TLS: the peer's handshake is too long"));
                }
                incoming.resize(filled * 2, 0);
            }
            left(sock)?;
            let n = match sock.read(&mut incoming[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
            filled += n;
        }
    }
    if let Some(e) = failed {
        return Err(tls_err(e));
    }
    let peer = crate::trust::tls::peer_key(conn.common()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the peer presented no ed25519 key",
        )
    })?;
    let (secrets, keys) = conn.into_keys().map_err(tls_err)?;
    incoming.truncate(filled);
    Ok(Handshaken {
        secrets,
        keys,
        peer,
        rest: incoming,
        early,
    })
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
    let (tx_seq, tx_secrets) = &h.secrets.tx;
    let (rx_seq, rx_secrets) = &h.secrets.rx;
    let tx = Tx {
        sock: sock.try_clone()?,
        protection: Protection::new(*tx_seq, tx_secrets).map_err(invalid)?,
        limit: h.keys.limit(),
        records: Vec::new(),
        used: 0,
        ended: false,
    };
    let rx = Protection::new(*rx_seq, rx_secrets).map_err(invalid)?;
    let shared = Arc::new(Shared {
        tx: Mutex::new(tx),
        keys: Mutex::new(h.keys),
        update_asked: AtomicBool::new(false),
    });
    let end = h.rest.len();
    Ok((
        TlsReader {
            shared: shared.clone(),
            sock,
            protection: rx,
            buf: h.rest,
            start: 0,
            end,
            plain: 0..0,
            early: h.early,
            early_pos: 0,
            eof: false,
            closed: false,
        },
        TlsWriter { shared },
        h.peer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::key::Identity;
    use std::net::TcpListener;

    fn configs() -> (
        Identity,
        Identity,
        Arc<rustls::ServerConfig>,
        Arc<rustls::ClientConfig>,
    ) {
        let (server_id, client_id) = (Identity::generate("s"), Identity::generate("c"));
        let sc = crate::trust::tls::server_config(&server_id).unwrap();
        let cc = crate::trust::tls::client_config(&client_id).unwrap();
        (server_id, client_id, sc, cc)
    }

    fn name() -> rustls::pki_types::ServerName<'static> {
        rustls::pki_types::ServerName::try_from("ferry").unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn both_directions_flow_after_the_handshake() {
        let (server_id, client_id, sc, cc) = configs();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client_pub = client_id.public;
        let server = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let conn = UnbufferedServerConnection::new(sc).unwrap();
            let (mut r, mut w, key) = establish(conn, sock, Duration::from_secs(5)).unwrap();
            assert_eq!(key, client_pub);
            let mut hello = [0u8; 9];
            r.read_exact(&mut hello).unwrap();
            w.write_all(b"welcome").unwrap();
            let mut big = vec![0u8; 3 << 20];
            r.read_exact(&mut big).unwrap();
            // the client's close_notify: a clean end, not an error
            assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
            big
        });
        let sock = TcpStream::connect(addr).unwrap();
        let conn = UnbufferedClientConnection::new(cc, name()).unwrap();
        let (mut r, mut w, key) = establish(conn, sock, Duration::from_secs(5)).unwrap();
        assert_eq!(key, server_id.public);
        w.write_all(b"123456789").unwrap();
        let mut reply = [0u8; 7];
        r.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"welcome");
        let data = pattern(3 << 20);
        w.write_all(&data).unwrap();
        drop(w);
        assert_eq!(server.join().unwrap(), data);
    }

    /// ferry's server half, running `serve` on a thread of its own, and a
    /// standard rustls client (its own record layer) connected to it.
    fn rustls_client_to<T: Send + 'static>(
        serve: impl FnOnce(TlsReader, TlsWriter) -> T + Send + 'static,
    ) -> (
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
        std::thread::JoinHandle<T>,
    ) {
        let (_, _, sc, cc) = configs();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let conn = UnbufferedServerConnection::new(sc).unwrap();
            let (r, w, _) = establish(conn, sock, Duration::from_secs(5)).unwrap();
            serve(r, w)
        });
        let sock = TcpStream::connect(addr).unwrap();
        let conn = rustls::ClientConnection::new(cc, name()).unwrap();
        (rustls::StreamOwned::new(conn, sock), server)
    }

    /// Records, key updates both ways and the close interoperate with rustls.
    #[test]
    fn records_and_key_updates_interoperate_with_rustls_itself() {
        let (mut tls, server) = rustls_client_to(|mut r, mut w| {
            // our key is replaced every 5 records: the peer must follow
            lock(&w.shared.tx).limit = 5;
            let mut got = vec![0u8; 1 << 20];
            r.read_exact(&mut got).unwrap();
            w.write_all(&got).unwrap();
            // 1 MiB is 64 records: sealed under 13 keys, each for < 5 records
            assert!(lock(&w.shared.tx).protection.seq() < 5);
            let mut tail = Vec::new();
            r.read_to_end(&mut tail).unwrap();
            (got, tail)
        });
        let data = pattern(1 << 20);
        tls.write_all(&data[..300_000]).unwrap();
        // the client asks for a key update, ours and its own
        tls.conn.refresh_traffic_keys().unwrap();
        tls.write_all(&data[300_000..]).unwrap();
        let mut echo = vec![0u8; 1 << 20];
        tls.read_exact(&mut echo).unwrap();
        assert!(echo == data, "the echo differs");
        tls.write_all(b"bye").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let (got, tail) = server.join().unwrap();
        assert!(got == data);
        assert_eq!(tail, b"bye");
    }

    #[test]
    fn an_altered_record_is_an_integrity_error_on_both_sides() {
        let (mut tls, server) = rustls_client_to(|mut r, w| {
            let e = r.read_exact(&mut vec![0u8; 100_000]).unwrap_err();
            drop(w); // (after the alert: its close_notify would end the session first)
            e
        });
        tls.write_all(b"first").unwrap();
        tls.flush().unwrap();
        // a record with one bit flipped, straight onto the socket
        tls.conn.writer().write_all(&pattern(1000)).unwrap();
        let mut raw = Vec::new();
        tls.conn.write_tls(&mut raw).unwrap();
        raw[500] ^= 4;
        tls.sock.write_all(&raw).unwrap();
        let e = server.join().unwrap();
        assert!(
            e.get_ref().is_some_and(|i| i.is::<crate::error::Altered>()),
            "{e}"
        );
        // the client hears why: a bad_record_mac alert
        let e = tls.read(&mut [0u8; 10]).unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
    }
}
