//! Dialing a hop: TCP, TLS 1.3 with our key (the source's client key, or a
//! daemon's own key when it relays), and the hop's key checked against the
//! one the signed ticket names, before anything is sent.
//!
//! Not for `known_hosts` (the source checks each daemon's key there when it
//! opens the control connection; the ticket carries the keys on), nor for
//! what is said on the connection.

use crate::error::TransferError;
use crate::transport::tls::{TlsReader, TlsWriter};
use crate::trust::key::Identity;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A connection to a hop whose key is the expected one.
pub struct Dialed {
    pub reader: TlsReader,
    pub writer: TlsWriter,
    /// The socket, kept to shut it from another thread (a stalled peer).
    pub sock: TcpStream,
}

/// Connects to `addr` (`host:port`) as `id`, requiring the key `expect`,
/// and sends the fan-out hello.
pub fn dial(
    addr: &str,
    expect: &[u8; 32],
    id: &Identity,
    timeout: Duration,
) -> Result<Dialed, TransferError> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| TransferError::Connection(format!("{addr}: {}", crate::error::io_text(&e))))?
        .collect();
    let mut last = None;
    let mut sock = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let sock = sock.ok_or_else(|| {
        TransferError::Connection(format!(
            "cannot connect to {addr}: {}",
            last.map(|e| crate::error::io_text(&e))
                .unwrap_or_else(|| "no address".into())
        ))
    })?;
    let raw = sock
        .try_clone()
        .map_err(|e| TransferError::connection(&e))?;
    let config = crate::trust::tls::client_config(id)
        .map_err(|e| TransferError::Connection(format!("TLS: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from("ferry").expect("a valid name");
    let conn = rustls::client::UnbufferedClientConnection::new(config, name)
        .map_err(|e| TransferError::Connection(format!("TLS: {e}")))?;
    let (reader, mut writer, key) = crate::transport::tls::establish(conn, sock, timeout)
        .map_err(|e| TransferError::Connection(format!("{addr}: {}", crate::error::io_text(&e))))?;
    if &key.0 != expect {
        return Err(TransferError::HostKey(format!(
            "{addr} answered with key {}, not the one the job's ticket names",
            key.fingerprint()
        )));
    }
    writer
        .write_all(super::HELLO)
        .map_err(|e| TransferError::connection(&e))?;
    Ok(Dialed {
        reader,
        writer,
        sock: raw,
    })
}
