//! The handshake: rustls's unbuffered client or server connection driven over
//! the socket until it may send application data, and what it leaves behind
//! (the traffic secrets, the key schedule, the peer's key, bytes read past the
//! handshake). Not the records after it: those are `reader`'s and `writer`'s.

use super::keys::Keys;
use super::{invalid, tls_err};
use crate::trust::key::PublicKey;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// The most handshake bytes buffered before rustls has used them.
const MAX_HANDSHAKE_BUFFER: usize = 1 << 20;

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

pub(super) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
}

/// What the handshake leaves: the traffic keys, the key schedule, the peer's
/// key, bytes read past the handshake, and application data that came with it.
pub(super) struct Handshaken {
    pub(super) secrets: rustls::ExtractedSecrets,
    pub(super) keys: Keys,
    pub(super) peer: PublicKey,
    pub(super) rest: Vec<u8>,
    pub(super) early: Vec<u8>,
}

/// Drives rustls's handshake over `sock` until it may send application data.
pub(super) fn handshake<C: Handshake>(
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
        // after an error rustls has queued its one fatal alert: a second pass
        // must not feed it the same bytes again, or it tries to send another
        let unread = if failed.is_some() { 0 } else { filled };
        let status = conn.process(&mut incoming[..unread]);
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
