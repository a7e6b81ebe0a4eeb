//! The daemon's layers as `ferry doctor` sees them: the TLS handshake, the
//! daemon's key against `known_hosts`, whether the daemon accepts this
//! client's key, and the protocol (version, a module listing's round trip).
//! Nothing is transferred and `known_hosts` is never written.

use super::{limits, Check, Options, Status};
use crate::proto::{self, Message, Request, Role};
use crate::session::wire::{Counters, FrameReader, FrameWriter};
use crate::trust::known_hosts::{self, HostKeyStatus};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

const LATER: [(&str, &str); 3] = [
    ("host_key", "Host key"),
    ("client_key", "Client key"),
    ("protocol", "Protocol"),
];

fn skip_rest(out: &mut Vec<Check>, from: usize, why: &str) {
    for (id, title) in &LATER[from..] {
        out.push(Check::skip(id, *title, why));
    }
}

/// TLS, host key, client key and protocol against the daemon at `addr`.
pub fn checks(host: &str, addr: SocketAddr, port: u16, opts: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let t = Instant::now();
    let tls = Check::new("tls", "TLS");
    let dir = crate::trust::config_dir(opts.config_dir.as_deref());
    let identity = match crate::trust::find_identity(opts.identity.as_deref(), &dir) {
        Ok(i) => i,
        Err(e) => {
            out.push(
                tls.set(Status::Fail, "no_identity", format!("no key to connect with: {e}"))
                    .fix("create one with `ferry keygen`, then add its .pub on the daemon host (`ferry copy-id HOST`)"),
            );
            skip_rest(&mut out, 0, "no TLS session");
            return out;
        }
    };
    let established = crate::trust::tls::client_config(&identity)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|config| {
            let sock = TcpStream::connect_timeout(&addr, limits::CONNECT)?;
            let name = rustls::pki_types::ServerName::try_from("ferry").expect("a valid name");
            let conn = rustls::client::UnbufferedClientConnection::new(config, name)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            crate::transport::tls::establish(conn, sock, limits::TLS)
        });
    let (reader, writer, key) = match established {
        Ok(x) => x,
        Err(e) => {
            let text = crate::error::io_text(&e);
            let class = if e.kind() == std::io::ErrorKind::TimedOut {
                "tls_timeout"
            } else {
                "tls"
            };
            out.push(
                tls.set(Status::Fail, class, format!("the TLS handshake failed: {text}"))
                    .fix("make sure the port is a ferry daemon of a compatible version (`ferry --version` on both hosts); see the daemon's log")
                    .took(t),
            );
            skip_rest(&mut out, 0, "no TLS session");
            return out;
        }
    };
    out.push(
        tls.ok("TLS 1.3 established; the daemon proved it holds its key")
            .took(t),
    );

    // the daemon's key against known_hosts
    let t = Instant::now();
    let hk = Check::new("host_key", "Host key");
    let known = opts
        .known_hosts
        .clone()
        .unwrap_or_else(|| dir.join("known_hosts"));
    let label = known_hosts::host_label(host, port);
    let fp = key.fingerprint();
    match known_hosts::check(&known, &label, &key) {
        Ok(HostKeyStatus::Known) => out.push(
            hk.ok(format!("{fp} matches {}", known.display()))
                .took(t),
        ),
        Ok(HostKeyStatus::Unknown) => out.push(
            hk.set(
                Status::Warn,
                "unknown_host_key",
                format!("{label} is not in {}; it presents {fp}", known.display()),
            )
            .ev(format!("fingerprint {fp}"))
            .fix(format!(
                "on the daemon host, `ssh-keygen -lf ~/.config/ferry/id_ed25519` (or the `fingerprint=` of the daemon's `listening` log line) must show {fp}; if it does, connect once with --host-key-check=accept-new"
            ))
            .took(t),
        ),
        Ok(HostKeyStatus::Changed(old)) => {
            out.push(
                hk.set(
                    Status::Fail,
                    "changed_host_key",
                    format!("WARNING: THE KEY OF DAEMON {label} HAS CHANGED: it is now {fp}, {} has {old}", known.display()),
                )
                .ev("someone may be intercepting the connection, or the daemon's key was replaced")
                .ev("nothing was sent after the handshake")
                .fix(format!(
                    "confirm the new key with the daemon's administrator; only then remove the {label} line from {}",
                    known.display()
                ))
                .took(t),
            );
            skip_rest(&mut out, 1, "the daemon's key changed; nothing is sent to it");
            return out;
        }
        Err(e) => {
            out.push(
                hk.set(Status::Fail, "known_hosts", format!("cannot read known_hosts: {e}"))
                    .took(t),
            );
            skip_rest(&mut out, 1, "known_hosts cannot be read");
            return out;
        }
    }

    // hello, then a module listing: the daemon accepts the key or says why not
    let t = Instant::now();
    let counters = Arc::new(Counters::default());
    let _ = reader.set_timeout(Some(limits::TLS));
    let mut r = FrameReader::new(reader, counters.clone());
    let mut w = FrameWriter::new(writer, counters);
    let ck = Check::new("client_key", "Client key");
    let pc = Check::new("protocol", "Protocol");
    let version = w
        .raw(&proto::client_hello())
        .and_then(|_| r.raw::<7>())
        .map_err(|e| e.to_string())
        .and_then(|h| proto::check_server_hello(&h).map_err(|e| e.to_string()));
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            out.push(Check::skip(
                "client_key",
                "Client key",
                "no protocol greeting",
            ));
            out.push(
                pc.set(
                    Status::Fail,
                    "protocol",
                    format!("the greeting failed: {e}"),
                )
                .fix("run the same ferry version on both hosts (`ferry --version`)")
                .took(t),
            );
            return out;
        }
    };
    let hello_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t2 = Instant::now();
    let request = Request {
        role: Role::ListModules,
        paths: vec![b".".to_vec()],
        options: proto::Options::default(),
    };
    let answer = w
        .send(&Message::Request(request))
        .and_then(|_| w.flush())
        .and_then(|_| r.expect());
    let rtt = t2.elapsed().as_secs_f64() * 1000.0;
    let my_fp = identity.public.fingerprint();
    match answer {
        Ok(Message::Modules(list)) => {
            out.push(ck.ok(format!("the daemon accepts {my_fp}")).took(t));
            let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
            let shown = if names.is_empty() {
                "none granted to this key".to_string()
            } else {
                names.join(", ")
            };
            out.push(
                pc.ok(format!(
                    "version {version}, round trip {} (greeting {}); modules: {shown}",
                    super::ms_text(rtt),
                    super::ms_text(hello_ms)
                ))
                .took(t),
            );
        }
        Ok(Message::Fatal(text)) => {
            let why = String::from_utf8_lossy(&text).into_owned();
            if why.contains("busy") {
                out.push(ck.ok("not refused (the daemon is busy)").took(t));
                out.push(
                    pc.set(Status::Fail, "busy", format!("the daemon refused: {why}"))
                        .fix("try again later, or raise --max-connections on the daemon")
                        .took(t),
                );
            } else {
                let class = if why.contains("expired") {
                    "key_expired"
                } else if why.contains("from=") || why.contains("address") {
                    "key_from"
                } else {
                    "key_refused"
                };
                out.push(
                    ck.set(Status::Fail, class, format!("the daemon does not accept {my_fp}: {why}"))
                        .fix(format!(
                            "install the key on the daemon host: `ferry copy-id {host}`, or there `ferry trust add` with this key's .pub ({my_fp})"
                        ))
                        .took(t),
                );
                out.push(Check::skip("protocol", "Protocol", "the key was refused"));
            }
        }
        Ok(other) => out.push(
            pc.set(
                Status::Fail,
                "protocol",
                format!("the daemon answered a module listing with {}", other.name()),
            )
            .took(t),
        ),
        Err(e) => {
            out.push(
                ck.set(
                    Status::Fail,
                    "closed",
                    format!("the daemon closed the session without a reason: {e}"),
                )
                .fix("see the daemon's log for why it refused this client")
                .took(t),
            );
            out.push(Check::skip(
                "protocol",
                "Protocol",
                "no answer to the listing",
            ));
        }
    }
    let _ = w.send(&Message::Bye).and_then(|_| w.flush());
    out
}
