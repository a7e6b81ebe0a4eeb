//! Reaching a ferry daemon: TCP, then TLS 1.3 with this user's key, then the
//! daemon's key checked against `known_hosts` before anything is sent.

use super::Stream;
use crate::error::TransferError;
use crate::trust::known_hosts::{self, HostKeyCheck, HostKeyStatus};
use std::io::{BufRead, IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// How a client reaches daemons.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// `-i`: the identity file (default: ferry's, else `~/.ssh/id_ed25519`).
    pub identity: Option<PathBuf>,
    /// `--known-hosts` (default: `known_hosts` in the config directory).
    pub known_hosts: Option<PathBuf>,
    /// `--host-key-check` (default: ask on a terminal, strict otherwise).
    pub host_key_check: Option<HostKeyCheck>,
    /// `--config-dir`.
    pub config_dir: Option<PathBuf>,
    /// Give up connecting (and on the TLS handshake) after this.
    pub timeout: Option<Duration>,
}

fn ask(question: &str) -> bool {
    let Ok(mut tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let _ = write!(tty, "{question}");
    let mut line = String::new();
    let _ = std::io::BufReader::new(&tty).read_line(&mut line);
    line.trim().eq_ignore_ascii_case("yes")
}

/// Connects, authenticates both ways, and returns the stream.
pub fn connect(host: &str, port: u16, opts: &DaemonOptions) -> Result<Stream, TransferError> {
    let dir = crate::trust::config_dir(opts.config_dir.as_deref());
    let identity = crate::trust::find_identity(opts.identity.as_deref(), &dir)
        .map_err(TransferError::Usage)?;
    let config = crate::trust::tls::client_config(&identity)
        .map_err(|e| TransferError::Connection(format!("TLS: {e}")))?;
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(30));
    let target = format!("{host}:{port}");
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            TransferError::Connection(format!(
                "{target}: cannot resolve: {}",
                crate::error::io_text(&e)
            ))
        })?
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
        let why = last
            .map(|e| crate::error::io_text(&e))
            .unwrap_or_else(|| "no address".into());
        TransferError::Connection(format!("cannot connect to {target}: {why}"))
    })?;
    let name = rustls::pki_types::ServerName::try_from("ferry").expect("a valid name");
    let conn = rustls::client::UnbufferedClientConnection::new(config, name)
        .map_err(|e| TransferError::Connection(format!("TLS: {e}")))?;
    let (reader, writer, key) = super::tls::establish(conn, sock, timeout).map_err(|e| {
        TransferError::Connection(format!("{target}: {}", crate::error::io_text(&e)))
    })?;
    if let Some(t) = opts.timeout {
        // --timeout: no wait for the daemon may last longer than this
        reader
            .set_timeout(Some(t))
            .map_err(|e| TransferError::connection(&e))?;
    }

    let known = opts
        .known_hosts
        .clone()
        .unwrap_or_else(|| dir.join("known_hosts"));
    let label = known_hosts::host_label(host, port);
    let fp = key.fingerprint();
    match known_hosts::check(&known, &label, &key).map_err(TransferError::Usage)? {
        HostKeyStatus::Known => {}
        HostKeyStatus::Changed(old) => {
            return Err(TransferError::HostKey(format!(
                "WARNING: the key of daemon {label} has CHANGED: it is now {fp}, {} has {old}. \
                 Someone may be intercepting the connection, or the daemon's key was replaced. \
                 Nothing was sent. If the change is expected, remove the old line from {} and connect again.",
                known.display(),
                known.display()
            )))
        }
        HostKeyStatus::Unknown => {
            let mode = opts.host_key_check.unwrap_or(if std::io::stdin().is_terminal() {
                HostKeyCheck::Ask
            } else {
                HostKeyCheck::Strict
            });
            let accepted = match mode {
                HostKeyCheck::Strict => false,
                HostKeyCheck::AcceptNew => true,
                HostKeyCheck::Ask => ask(&format!(
                    "The authenticity of daemon '{label}' can't be established.\n\
                     ED25519 key fingerprint is {fp}.\n\
                     Are you sure you want to continue connecting (yes/no)? "
                )),
            };
            if !accepted {
                return Err(TransferError::HostKey(format!(
                    "daemon {label} has an unknown key {fp}; refusing (--host-key-check={}). \
                     Check the fingerprint with the daemon's administrator, then connect with --host-key-check=accept-new",
                    match mode {
                        HostKeyCheck::Strict => "strict",
                        HostKeyCheck::AcceptNew => "accept-new",
                        HostKeyCheck::Ask => "ask",
                    }
                )));
            }
            known_hosts::add(&known, &label, &key).map_err(TransferError::Usage)?;
            eprintln!("ferry: permanently added daemon {label} ({fp}) to {}", known.display());
        }
    }
    Ok(Stream {
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}
