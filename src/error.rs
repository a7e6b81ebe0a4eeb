//! Error types shared by the library layers, keeping apart who is at fault: the
//! peer (it broke the protocol), the connection (it broke), or this machine (a
//! local file could not be read or written).

use crate::proto::{DecodeError, HandshakeError};
use std::io;

/// Why a transfer failed as a whole. Per-file failures are reported as events
/// and counted in the summary instead.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer sent something the protocol does not allow.
    #[error("protocol error: the peer {0}")]
    PeerMisbehaved(String),
    /// A frame could not be decoded.
    #[error("protocol error: the peer sent a malformed message: {0}")]
    Malformed(#[from] DecodeError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The peer reported a fatal error of its own.
    #[error("{0}")]
    Remote(String),
    /// Reading or writing the connection failed.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The daemon's key is unknown or changed: a trust decision, never retried.
    #[error("{0}")]
    HostKey(String),
    /// The connection's own authentication failed: the data was altered on the
    /// way. Never retried.
    #[error("{0}")]
    Integrity(String),
    /// A local file operation failed.
    #[error("{path}: {text}")]
    Local { path: String, text: String },
    /// The request itself is wrong (bad destination, conflicting options).
    #[error("{0}")]
    Usage(String),
    #[error("transfer cancelled")]
    Cancelled,
}

impl TransferError {
    pub fn local(path: impl Into<String>, e: &io::Error) -> Self {
        TransferError::Local {
            path: path.into(),
            text: io_text(e),
        }
    }
    pub fn connection(e: &io::Error) -> Self {
        if e.get_ref().is_some_and(|i| i.is::<Altered>()) {
            return TransferError::Integrity(Altered.to_string());
        }
        TransferError::Connection(io_text(e))
    }

    /// The process exit code for this error, following rsync's numbers where
    /// one applies (see the README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            TransferError::Usage(_) => 1,
            TransferError::Handshake(_) => 2,
            TransferError::Local { .. } => 11,
            TransferError::PeerMisbehaved(_) | TransferError::Malformed(_) => 12,
            TransferError::Connection(_)
            | TransferError::Integrity(_)
            | TransferError::HostKey(_) => 12,
            TransferError::Remote(_) => 12,
            TransferError::Cancelled => 20,
        }
    }
}

/// Marks an io::Error as "the data was altered in transit".
#[derive(Debug)]
pub struct Altered;

impl std::fmt::Display for Altered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("integrity error: data was altered in transit (TLS record authentication failed); nothing was published")
    }
}

impl std::error::Error for Altered {}

/// An I/O error as a short lowercase-ish phrase, without "(os error N)".
pub fn io_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
