//! Reaching a ferry daemon: TCP, then TLS 1.3 with this user's key, then the
//! daemon's key checked against `known_hosts` before anything is sent.
//!
//! Not for deciding whether to trust a key never seen before: that is the
//! caller's [`HostKeyPolicy`] in [`DaemonOptions`]. Nothing here reads a
//! terminal or prints; a key just recorded comes back in [`Connected`].

use super::Stream;
use crate::error::{io_text, ConnectFailure, TransferError};
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
    /// `--retries`: how many times a transfer whose connection broke is run
    /// again (default: `transfer::DEFAULT_RETRIES`).
    pub retries: Option<u32>,
    /// `-4`/`-6`: only addresses of this IP version.
    pub ip_version: Option<u8>,
}

/// How a daemon's refusal of a client's key begins (after the TLS handshake
/// proved the client holds it); the rest says which rule refused it. A
/// prefix of the refusal text, not a message of its own, so that peers of
/// either age understand each other.
pub const ACCESS_DENIED: &str = "access denied: ";

/// How a daemon's refusal for want of room begins: worth trying again later.
pub const BUSY: &str = "the daemon is busy";

/// A connection to a daemon whose key is trusted.
pub struct Connected {
    pub stream: Stream,
    /// The daemon's key was unknown and has just been recorded in
    /// `known_hosts` (the caller tells the user: [`UnknownHost::added_notice`]).
    pub added: Option<UnknownHost>,
    /// The connection's socket (another handle on it): a caller that knows
    /// one wait must be longer than `--timeout` (a fan-out host indexing
    /// what it holds) sets its read timeout for that wait.
    pub socket: TcpStream,
}

/// Resolves `host` and connects to the first of its addresses that answers.
/// A failure says which it was (a name that does not exist, a refusal, no
/// answer) so that the caller can tell what trying again could change.
fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
    ip_version: Option<u8>,
) -> Result<TcpStream, TransferError> {
    // an IPv6 address in brackets, as ssh and URLs write it: [::1]:7420
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            let why = ConnectFailure::of_lookup(&e);
            let text = match why {
                ConnectFailure::NoSuchName => {
                    format!("cannot resolve {host}: no such host (the name does not exist)")
                }
                ConnectFailure::ResolverDown => format!(
                    "cannot resolve {host}: no DNS server answered (temporary failure in name resolution)"
                ),
                _ => format!("{target}: cannot resolve: {}", io_text(&e)),
            };
            TransferError::Connect { text, why }
        })?
        .filter(|a| match ip_version {
            Some(4) => a.is_ipv4(),
            Some(6) => a.is_ipv6(),
            _ => true,
        })
        .collect();
    if let (Some(v), true) = (ip_version, addrs.is_empty()) {
        return Err(TransferError::Usage(format!(
            "{target}: no IPv{v} address (-{v})"
        )));
    }
    let mut last = None;
    for a in &addrs {
        super::child::debug(format_args!(
            "Connecting to {host} [{}] port {port}.",
            a.ip()
        ));
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                super::child::debug(format_args!("Connection established."));
                return Ok(s);
            }
            Err(e) => {
                super::child::debug(format_args!("connect to {a}: {}", io_text(&e)));
                last = Some(e);
            }
        }
    }
    let (why, text) = match last {
        None => (ConnectFailure::Other, "no address".to_string()),
        Some(e) => {
            let why = ConnectFailure::of_connect(&e);
            let text = match why {
                ConnectFailure::Refused => format!(
                    "connection refused: {host} answered, but nothing accepts on port {port}"
                ),
                ConnectFailure::TimedOut => {
                    format!("no answer within {} s", timeout.as_secs_f64())
                }
                _ => io_text(&e),
            };
            (why, text)
        }
    };
    Err(TransferError::Connect {
        text: format!("cannot connect to {target}: {text}"),
        why,
    })
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
    // an IPv6 address in brackets, as ssh and URLs write it: [::1]:7420
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let sock = tcp_connect(host, port, timeout, opts.ip_version)?;
    let socket = sock
        .try_clone()
        .map_err(|e| TransferError::connection(&e))?;
    let name = rustls::pki_types::ServerName::try_from("ferry").expect("a valid name");
    let conn = rustls::client::UnbufferedClientConnection::new(config, name)
        .map_err(|e| TransferError::Connection(format!("TLS: {e}")))?;
    let (reader, writer, key) = super::tls::establish(conn, sock, timeout).map_err(|e| {
        let altered = e.get_ref().is_some_and(|i| i.is::<crate::error::Altered>());
        if e.kind() == std::io::ErrorKind::InvalidData && !altered {
            // something answers, but it does not speak ferry's TLS: another
            // service on the port, which trying again will not change
            return TransferError::Connect {
                text: format!(
                    "cannot connect to {target}: the TLS handshake failed ({}): what answers on port {port} may not be a ferry daemon",
                    io_text(&e)
                ),
                why: ConnectFailure::Other,
            };
        }
        TransferError::Connection(format!("{target}: {}", io_text(&e)))
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
    super::child::debug(format_args!(
        "TLS established; daemon host key: {fp}; checking it in {}",
        known.display()
    ));
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
            in_process: false,
        },
        added,
        socket,
    })
}
