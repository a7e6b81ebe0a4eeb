//! Reaching a ferry daemon: TCP, then TLS 1.3 with this user's key, then the
//! daemon's key checked against `known_hosts` before anything is sent.
//!
//! Not for deciding whether to trust a key never seen before: that is the
//! caller's [`HostKeyPolicy`] in [`DaemonOptions`]. Nothing here reads a
//! terminal or prints; a key just recorded comes back in [`Connected`].

use super::Stream;
use crate::error::TransferError;
use crate::trust::known_hosts::{self, HostKeyStatus};
use crate::trust::{HostKeyDecision, HostKeyPolicy, UnknownHost};
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
    /// What to do about a daemon whose key is not yet known (default:
    /// refuse; the CLI asks on a terminal).
    pub host_key: HostKeyPolicy,
    /// `--config-dir`.
    pub config_dir: Option<PathBuf>,
    /// Give up connecting (and on the TLS handshake) after this.
    pub timeout: Option<Duration>,
    /// `-4`/`-6`: only addresses of this IP version.
    pub ip_version: Option<u8>,
}

/// A connection to a daemon whose key is trusted.
pub struct Connected {
    pub stream: Stream,
    /// The daemon's key was unknown and has just been recorded in
    /// `known_hosts` (the caller tells the user: [`UnknownHost::added_notice`]).
    pub added: Option<UnknownHost>,
}

/// Connects, authenticates both ways, and returns the stream.
pub fn connect(host: &str, port: u16, opts: &DaemonOptions) -> Result<Connected, TransferError> {
    let dir = crate::trust::config_dir(opts.config_dir.as_deref());
    // exit 1, as always, whether the key is missing, unreadable or refused
    let identity = crate::trust::find_identity(opts.identity.as_deref(), &dir)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
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
        .filter(|a| match opts.ip_version {
            Some(4) => a.is_ipv4(),
            Some(6) => a.is_ipv6(),
            _ => true,
        })
        .collect();
    if let (Some(v), true) = (opts.ip_version, addrs.is_empty()) {
        return Err(TransferError::Usage(format!(
            "{target}: no IPv{v} address (-{v})"
        )));
    }
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
    let mut added = None;
    // known_hosts cannot be read or written: a local fault
    match known_hosts::check(&known, &label, &key)? {
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
            let unknown = UnknownHost {
                label,
                fingerprint: fp,
                known_hosts: known,
            };
            if opts.host_key.decide(&unknown) == HostKeyDecision::Refuse {
                return Err(TransferError::HostKey(format!(
                    "daemon {} has an unknown key {}; refusing (--host-key-check={}). \
                     Check the fingerprint with the daemon's administrator, then connect with --host-key-check=accept-new",
                    unknown.label,
                    unknown.fingerprint,
                    opts.host_key.flag()
                )));
            }
            known_hosts::add(&unknown.known_hosts, &unknown.label, &key)?;
            added = Some(unknown);
        }
    }
    Ok(Connected {
        stream: Stream {
            reader: Box::new(reader),
            writer: Box::new(writer),
        },
        added,
    })
}
