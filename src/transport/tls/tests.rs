//! The TLS halves against each other and against rustls's own record layer.

use super::*;
use crate::trust::key::Identity;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;

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

/// Plaintext lengths around one record's limit (2^14, RFC 8446 §5.1); each is
/// one write, so rustls sends 0 as nothing and 16,385 as two records.
const SIZES: [usize; 5] = [0, 1, 16_383, 16_384, 16_385];

fn sizes_pattern() -> Vec<u8> {
    SIZES.iter().flat_map(|&n| pattern(n)).collect()
}

/// ferry's client half, running `client` on a thread of its own, and a
/// standard rustls server (its own record layer, sending the two session
/// tickets rustls sends by default) for it to connect to.
fn rustls_server_for<T: Send + 'static>(
    client: impl FnOnce(TlsReader, TlsWriter) -> T + Send + 'static,
) -> (
    rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    std::thread::JoinHandle<T>,
) {
    let (_, _, sc, cc) = configs();
    let mut sc = (*sc).clone();
    sc.send_tls13_tickets = 2;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let sock = TcpStream::connect(addr).unwrap();
        let conn = UnbufferedClientConnection::new(cc, name()).unwrap();
        let (r, w, _) = establish(conn, sock, Duration::from_secs(5)).unwrap();
        client(r, w)
    });
    let (sock, _) = l.accept().unwrap();
    let conn = rustls::ServerConnection::new(Arc::new(sc)).unwrap();
    (rustls::StreamOwned::new(conn, sock), client)
}

/// ferry's half of [`stock_side`]: it reads what the stock side sent, sends
/// the same back with its key replaced every 3 records, and answers the stock
/// side's KeyUpdate before its next record.
fn ferry_side(mut r: TlsReader, mut w: TlsWriter) {
    let want = sizes_pattern();
    lock(&w.shared.tx).limit = 3;
    for round in 0..2 {
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).unwrap();
        assert!(got == want, "round {round}: the data differs");
        // round 1 came after the stock side's KeyUpdate, which asked for ours
        let asked = w.shared.update_asked.load(Ordering::Acquire);
        assert_eq!(asked, round == 1);
        for n in SIZES {
            w.write_all(&pattern(n)).unwrap();
        }
        assert!(!w.shared.update_asked.load(Ordering::Acquire));
        assert!(lock(&w.shared.tx).protection.seq() < 3);
    }
    drop(w); // close_notify
             // the stock side's close_notify: a clean end, after all the data
    assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
}

/// The stock rustls side of the exchange: each size as one write, a
/// KeyUpdate it starts (asking for ferry's too), each size again, then
/// close_notify; it reads what ferry sends back, under ferry's changing keys,
/// and ferry's close_notify.
fn stock_side<C, S>(tls: &mut rustls::StreamOwned<C, TcpStream>)
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    let want = sizes_pattern();
    for round in 0..2 {
        if round == 1 {
            tls.conn.refresh_traffic_keys().unwrap();
        }
        for n in SIZES {
            tls.write_all(&pattern(n)).unwrap();
            tls.flush().unwrap();
        }
        let mut got = vec![0u8; want.len()];
        tls.read_exact(&mut got).unwrap();
        assert!(got == want, "round {round}: the echo differs");
    }
    let mut tail = Vec::new();
    tls.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty());
    tls.conn.send_close_notify();
    tls.flush().unwrap();
}

/// ferry's server half against a stock rustls client: boundary sizes and
/// KeyUpdates started by each side, both ways, then close_notify both ways.
#[test]
fn boundary_records_and_key_updates_from_each_side_as_server() {
    let (mut tls, server) = rustls_client_to(ferry_side);
    stock_side(&mut tls);
    server.join().unwrap();
}

/// The same with ferry's client half against a stock rustls server (which
/// also sends session tickets, ignored).
#[test]
fn boundary_records_and_key_updates_from_each_side_as_client() {
    let (mut tls, client) = rustls_server_for(ferry_side);
    stock_side(&mut tls);
    client.join().unwrap();
}

/// A stream that stops without close_notify is truncated, not ended: ferry's
/// reader returns all the data, then says so; a stock reader says the same of
/// ferry's writer cut off.
#[test]
fn a_stream_cut_without_close_notify_is_reported_as_truncated() {
    let (mut tls, server) = rustls_client_to(|mut r, mut w| {
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        w.write_all(&pattern(20_000)).unwrap();
        // cut off: no close_notify (the writer's, on drop, cannot go out)
        lock(&w.shared.tx).sock.shutdown(Shutdown::Write).unwrap();
        (got, e)
    });
    tls.write_all(&sizes_pattern()).unwrap();
    tls.flush().unwrap();
    tls.sock.shutdown(Shutdown::Write).unwrap();
    let (got, e) = server.join().unwrap();
    assert!(got == sizes_pattern());
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(
        e.to_string(),
        "the peer closed the connection without ending the TLS session"
    );
    let mut got = Vec::new();
    let e = tls.read_to_end(&mut got).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert!(got == pattern(20_000));
}

/// What ferry's reader refuses from a stock rustls client once the handshake
/// is done, the error it returns and the alert the client hears.
#[test]
fn hostile_records_are_refused_with_the_right_alert() {
    use crate::transport::record::{self, Protection};
    // sealed with a key that is not the session's
    let mut stranger = Protection::new(
        0,
        &ConnectionTrafficSecrets::Aes256Gcm {
            key: [9u8; 32].into(),
            iv: [9u8; 12].into(),
        },
    )
    .unwrap();
    let mut foreign = vec![0u8; 100 + record::OVERHEAD];
    stranger.seal(record::APPLICATION_DATA, &[7; 100], &mut foreign);
    // a header announcing one byte more than any record may hold: refused
    // from the header, before the rest arrives (each case is one small
    // write, read whole, so that nothing unread turns the close into a reset)
    let mut over = vec![record::APPLICATION_DATA, 3, 3];
    over.extend_from_slice(&(record::MAX_CIPHERTEXT as u16 + 1).to_be_bytes());
    over.resize(record::HEADER + 100, 0);
    // a handshake record, unprotected, after the handshake
    let handshake = vec![record::HANDSHAKE, 3, 3, 0, 5, 24, 0, 0, 1, 0];
    // a change_cipher_spec, which rustls tolerates during the handshake only
    let ccs = vec![20, 3, 3, 0, 1, 1];
    type Check = fn(&io::Error) -> bool;
    let altered: Check = |e| e.get_ref().is_some_and(|i| i.is::<crate::error::Altered>());
    let cases: [(&str, Vec<u8>, Check, &str); 4] = [
        ("another key", foreign, altered, "BadRecordMac"),
        (
            "over the limit",
            over,
            |e| e.to_string() == "TLS: a record of 16641 bytes",
            "RecordOverflow",
        ),
        (
            "a handshake record",
            handshake,
            |e| e.to_string() == "TLS: unexpected record of type 22 after the handshake",
            "UnexpectedMessage",
        ),
        (
            "change_cipher_spec",
            ccs,
            |e| e.to_string() == "TLS: unexpected record of type 20 after the handshake",
            "UnexpectedMessage",
        ),
    ];
    for (label, raw, check, alert) in cases {
        let (mut tls, server) = rustls_client_to(|mut r, w| {
            let mut first = [0u8; 5];
            r.read_exact(&mut first).unwrap();
            let e = r.read(&mut [0u8; 100]).unwrap_err();
            drop(w);
            e
        });
        tls.write_all(b"first").unwrap();
        tls.flush().unwrap();
        tls.sock.write_all(&raw).unwrap();
        let e = server.join().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{label}: {e}");
        assert!(check(&e), "{label}: {e}");
        let heard = tls.read(&mut [0u8; 10]).unwrap_err();
        assert!(heard.to_string().contains(alert), "{label}: {heard}");
    }
}

/// Something that is not TLS on the daemon's port (an ssh client, a web
/// browser) is refused with an error on both ends of the handshake, and
/// never trips rustls's "one fatal alert only" assertion, which a second pass
/// over the same unread bytes used to do in debug builds.
#[test]
fn a_peer_that_does_not_speak_tls_is_an_error_not_a_panic() {
    let (_, _, sc, cc) = configs();
    for garbage in [
        &b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        // a server fed garbage by its client
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sc = sc.clone();
        let server = std::thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let conn = UnbufferedServerConnection::new(sc).unwrap();
            establish(conn, sock, Duration::from_secs(5)).map(|_| ())
        });
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(garbage).unwrap();
        let _ = sock.shutdown(Shutdown::Write);
        let mut alert = Vec::new();
        let _ = sock.read_to_end(&mut alert);
        assert!(server.join().unwrap().is_err());
        // a client answered with garbage by its server
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let answer = garbage.to_vec();
        let peer = std::thread::spawn(move || {
            let (mut sock, _) = l.accept().unwrap();
            let _ = sock.write_all(&answer);
            let mut hello = [0u8; 512];
            let _ = sock.read(&mut hello);
        });
        let sock = TcpStream::connect(addr).unwrap();
        let conn = UnbufferedClientConnection::new(cc.clone(), name()).unwrap();
        assert!(establish(conn, sock, Duration::from_secs(5)).is_err());
        peer.join().unwrap();
    }
}
