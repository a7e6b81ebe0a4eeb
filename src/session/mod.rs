//! The two ends of a transfer — [`sender`] and [`receiver`] — and how a
//! connection starts them, speaking [`crate::proto`] over any byte stream
//! ([`Stream`]: an ssh child's stdio, a local pipe, TLS to a daemon): the
//! client's side in [`client`] (handshake, request, extra streams, listings),
//! the server's in [`serve`](mod@serve) (its policy, refusing, running the half asked for).
//!
//! Each side runs two threads so that both directions flow at once: the sender
//! writes the file list and file data while a reader thread collects the
//! receiver's requests; the receiver reads and writes files while a writer thread
//! sends its requests. Nothing here prints or exits: progress and problems are
//! [`Event`]s handed to the caller (or, on a server, forwarded to the client).
//! Not for reaching a peer (that is [`crate::transport`]) nor for deciding who
//! may do what (the server's policy is given to [`serve::serve_with`]).

pub mod client;
pub mod compress;
mod listing;
pub mod receiver;
pub mod sender;
pub mod serve;
pub mod side;
pub mod wire;

use crate::error::TransferError;
use crate::proto::Event;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use crate::transport::Stream;
pub use client::{
    list_entries, list_entries_counted, list_modules, run_client, run_client_streams,
    run_client_streams_on, Connect,
};
pub use serve::{
    refuse, serve, serve_on, serve_with, stdio_policy, Deliver, Policy, Refusal, Serve, Streams,
};
pub use side::{LocalFiles, ModuleFiles, Side};

/// Where a client's events go.
pub type EventFn<'a> = dyn Fn(Event) + Sync + 'a;

/// Stops a running transfer from another thread.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn check(&self) -> Result<(), TransferError> {
        if self.is_cancelled() {
            Err(TransferError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A server's answer to a stream join whose transfer it does not know (or
/// that has ended).
pub(crate) const NO_SUCH_TRANSFER: &str = "no transfer to join with that token";

/// Text from the peer, shown safely.
pub(crate) fn text(bytes: &[u8]) -> String {
    crate::fs::names::escape(bytes)
}
