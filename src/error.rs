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
            TransferError::Connection(_) => 12,
            TransferError::Remote(_) => 12,
            TransferError::Cancelled => 20,
        }
    }
}

/// An I/O error as a short lowercase-ish phrase, without "(os error N)".
pub fn io_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
