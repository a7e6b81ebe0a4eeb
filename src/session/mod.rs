//! The two ends of a transfer — [`sender`] and [`receiver`] — and the handshake
//! that starts them, speaking [`crate::proto`] over any byte stream: an ssh
//! child's stdio, a local pipe, and (later) TLS.
//!
//! Each side runs two threads so that both directions flow at once: the sender
//! writes the file list and file data while a reader thread collects the
//! receiver's requests; the receiver reads and writes files while a writer thread
//! sends its requests. Nothing here prints or exits: progress and problems are
//! [`Event`]s handed to the caller (or, on a server, forwarded to the client).

pub mod receiver;
pub mod sender;
pub mod wire;

use crate::error::TransferError;
use crate::proto::{self, Event, Message, Request, Role, Summary};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wire::{Counters, FrameReader, FrameWriter};

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

/// A connected byte stream, split into its two directions.
pub struct Stream {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
}

/// The client's side: handshake, send the request, then run the local half.
pub fn run_client(
    stream: Stream,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: Arc<Counters>,
) -> Result<Summary, TransferError> {
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    writer.raw(&proto::client_hello())?;
    let reply = reader.raw::<7>()?;
    proto::check_server_hello(&reply)?;
    writer.send(&Message::Request(request.clone()))?;
    writer.flush()?;
    match reader.expect()? {
        Message::Accept => {}
        Message::Fatal(t) => return Err(TransferError::Remote(text(&t))),
        other => {
            return Err(TransferError::PeerMisbehaved(format!(
                "answered the request with {}",
                other.name()
            )))
        }
    }
    match request.role {
        Role::ServerReceives => sender::run(
            reader,
            writer,
            sender::Config {
                sources: local_paths,
                options: request.options,
                events: Some(events),
            },
            cancel,
        ),
        Role::ServerSends => {
            let dest = local_paths.into_iter().next().unwrap_or_default();
            receiver::run(
                reader,
                writer,
                receiver::Config {
                    dest,
                    options: request.options,
                    events: Some(events),
                    requested: Some(request.paths),
                },
                cancel,
            )
        }
    }
}

/// The server's side (`ferry serve --stdio`): answer the handshake, check the
/// request, and run the half it asks for. Events go to the client.
pub fn serve(stream: Stream) -> Result<Summary, TransferError> {
    let counters = Arc::new(Counters::default());
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let hello = reader.raw::<9>()?;
    let version = match proto::choose_version(&hello) {
        Ok(v) => v,
        Err(e) => {
            let _ = writer.raw(&proto::server_hello(0));
            return Err(e.into());
        }
    };
    writer.raw(&proto::server_hello(version))?;
    let request = match reader.expect()? {
        Message::Request(r) => r,
        other => {
            return Err(TransferError::PeerMisbehaved(format!(
                "sent {} before a request",
                other.name()
            )))
        }
    };
    if let Err(e) = check_request(&request) {
        writer.send(&Message::Fatal(e.to_string().into_bytes()))?;
        writer.flush()?;
        return Err(e);
    }
    writer.send(&Message::Accept)?;
    let cancel = Cancel::default();
    match request.role {
        Role::ServerSends => sender::run(
            reader,
            writer,
            sender::Config {
                sources: request.paths,
                options: request.options,
                events: None,
            },
            &cancel,
        ),
        Role::ServerReceives => receiver::run(
            reader,
            writer,
            receiver::Config {
                dest: request.paths.into_iter().next().unwrap_or_default(),
                options: request.options,
                events: None,
                requested: None,
            },
            &cancel,
        ),
    }
}

fn check_request(r: &Request) -> Result<(), TransferError> {
    if r.paths.is_empty() || r.paths.iter().any(|p| p.is_empty()) {
        return Err(TransferError::Usage("the request names no path".into()));
    }
    if r.role == Role::ServerReceives && r.paths.len() != 1 {
        return Err(TransferError::Usage(
            "a push names exactly one destination".into(),
        ));
    }
    crate::filter::Filters::new(&r.options.filters)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    Ok(())
}

/// Text from the peer, shown safely.
pub(crate) fn text(bytes: &[u8]) -> String {
    crate::fs::names::escape(bytes)
}
