//! TLS over TCP for the daemon, split into a reading half and a writing half that
//! two threads use at once (the session's sender and receiver both need that).
//!
//! One rustls connection is shared under a lock. The reader reads the socket
//! without holding it, then feeds the bytes in; the writer encrypts under the
//! lock and writes the records while holding only a second lock that keeps
//! records in order on the socket. Neither half ever blocks on the network
//! while holding the connection lock, so a full send buffer cannot stall the
//! reader (and so the peer).

use crate::trust::key::PublicKey;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Shared {
    conn: Mutex<rustls::Connection>,
    /// Held while records are written, so they reach the socket in order.
    out: Mutex<TcpStream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Sends whatever TLS records the connection has ready.
    fn flush_records(&self) -> io::Result<()> {
        let mut sock = lock(&self.out);
        let mut records = Vec::new();
        {
            let mut c = lock(&self.conn);
            while c.wants_write() {
                c.write_tls(&mut records)?;
            }
        }
        sock.write_all(&records)
    }
}

pub struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    /// Bytes read from the socket and not yet taken by rustls.
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
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
}

/// An io::Error from a rustls call, with TLS failures explained.
fn from_rustls_io(e: io::Error) -> io::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls_err(tls.clone()),
        None => e,
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    let altered = matches!(
        e,
        rustls::Error::DecryptError
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
    if altered {
        return io::Error::new(io::ErrorKind::InvalidData, crate::error::Altered);
    }
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut flush = false;
            let mut fed = false;
            {
                let mut c = lock(&self.shared.conn);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(from_rustls_io(e)),
                }
                // records that came in with the last handshake flight may sit
                // in rustls unprocessed: process them before waiting on the socket
                c.process_new_packets().map_err(tls_err)?;
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(from_rustls_io(e)),
                }
                if self.pos < self.pending.len() || self.eof {
                    let mut slice = &self.pending[self.pos..];
                    let n = c.read_tls(&mut slice).map_err(from_rustls_io)?;
                    self.pos += n;
                    fed = n > 0;
                    let processed = c.process_new_packets();
                    flush = c.wants_write();
                    if let Err(e) = processed {
                        drop(c);
                        let _ = self.shared.flush_records(); // the alert
                        return Err(tls_err(e));
                    }
                    if self.eof && self.pos == self.pending.len() && n == 0 {
                        // rustls has seen the end: the next read says how it ended
                        match c.reader().read(buf) {
                            Ok(n) => return Ok(n),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Err(io::ErrorKind::UnexpectedEof.into())
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            if flush {
                self.shared.flush_records()?;
            }
            if fed {
                continue; // what was fed in may have made plaintext: look first
            }
            if self.pos == self.pending.len() && !self.eof {
                self.pending.resize(64 << 10, 0);
                let n = loop {
                    match self.sock.read(&mut self.pending) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other?,
                    }
                };
                self.pending.truncate(n);
                self.pos = 0;
                self.eof = n == 0;
            }
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sock = lock(&self.shared.out);
        let mut records = Vec::with_capacity(buf.len() + 1024);
        let n = {
            let mut c = lock(&self.shared.conn);
            let n = c.writer().write(buf).map_err(from_rustls_io)?;
            while c.wants_write() {
                c.write_tls(&mut records).map_err(from_rustls_io)?;
            }
            n
        };
        sock.write_all(&records)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TlsWriter {
    fn drop(&mut self) {
        lock(&self.shared.conn).send_close_notify();
        let _ = self.shared.flush_records();
        let _ = lock(&self.shared.out).shutdown(Shutdown::Write);
    }
}

/// Runs the handshake to completion within `deadline`, then splits the stream.
/// Returns the halves and the key the peer proved it holds.
pub fn establish(
    mut conn: rustls::Connection,
    mut sock: TcpStream,
    timeout: Duration,
) -> io::Result<(TlsReader, TlsWriter, PublicKey)> {
    let deadline = Instant::now() + timeout;
    let _ = sock.set_nodelay(true);
    while conn.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?;
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    // the client's last flight (its certificate and Finished) may still be queued
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    let key = crate::trust::tls::peer_key(&conn).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the peer presented no ed25519 key",
        )
    })?;
    let out = sock.try_clone()?;
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        out: Mutex::new(out),
    });
    Ok((
        TlsReader {
            shared: shared.clone(),
            sock,
            pending: Vec::new(),
            pos: 0,
            eof: false,
        },
        TlsWriter { shared },
        key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::key::Identity;
    use std::net::TcpListener;

    #[test]
    fn both_directions_flow_after_the_handshake() {
        let (server_id, client_id) = (Identity::generate("s"), Identity::generate("c"));
        let sc = crate::trust::tls::server_config(&server_id).unwrap();
        let cc = crate::trust::tls::client_config(&client_id).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client_pub = client_id.public;
        let server = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let conn = rustls::Connection::Server(rustls::ServerConnection::new(sc).unwrap());
            let (mut r, mut w, key) = establish(conn, sock, Duration::from_secs(5)).unwrap();
            assert_eq!(key, client_pub);
            let mut hello = [0u8; 9];
            r.read_exact(&mut hello).unwrap();
            w.write_all(b"welcome").unwrap();
            let mut big = vec![0u8; 3 << 20];
            r.read_exact(&mut big).unwrap();
            big
        });
        let sock = TcpStream::connect(addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("ferry").unwrap();
        let conn = rustls::Connection::Client(rustls::ClientConnection::new(cc, name).unwrap());
        let (mut r, mut w, key) = establish(conn, sock, Duration::from_secs(5)).unwrap();
        assert_eq!(key, server_id.public);
        w.write_all(b"123456789").unwrap();
        let mut reply = [0u8; 7];
        r.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"welcome");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7) as u8).collect();
        w.write_all(&data).unwrap();
        assert_eq!(server.join().unwrap(), data);
    }
}
