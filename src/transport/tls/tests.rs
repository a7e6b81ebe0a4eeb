//! The TLS halves against each other and against rustls's own record layer.

use super::*;
use crate::trust::key::Identity;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

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
