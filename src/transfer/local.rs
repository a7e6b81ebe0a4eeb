//! A transfer between two stores this process reaches itself (local to local,
//! or a store that cannot speak ferry's protocol: S3, SFTP) runs the server
//! half on a thread, connected by two in-memory pipes: the same protocol and
//! code as over ssh, with nothing to install. The receiving half reads its
//! pipe on its own thread (the stream is marked
//! [`in_process`](crate::transport::Stream::in_process)).
//!
//! `ferry ls` of a local path lists through the same pair.
//!
//! Not a transport: nothing here reaches another machine. It is the
//! in-process pair that a store which cannot speak ferry's protocol (S3,
//! SFTP next) will run both session halves through.

use crate::error::TransferError;
use crate::proto::{Entry, Request, Summary};
use crate::session::wire::Counters;
use crate::session::{self, Cancel, EventFn};
use crate::transport::{memory, Stream};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Runs `request` against an in-process server: the client half here, on
/// `local_paths`, the server half on a thread.
pub(super) fn run(
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    client_side: &dyn session::Side,
    server_side: Box<dyn session::Side + Send>,
) -> Result<Summary, TransferError> {
    let (stream, server) = local_server(server_side)?;
    let client = session::run_client_streams_on(
        stream,
        request,
        local_paths,
        events,
        cancel,
        counters.clone(),
        None,
        client_side,
    );
    let server = server.join().unwrap_or_else(|_| {
        Err(TransferError::Internal(
            "the local receiver panicked".into(),
        ))
    });
    match (client, server) {
        (Ok(s), _) => Ok(s),
        // the receiver's own error says more than what reached the sender
        (Err(TransferError::Connection(_) | TransferError::Remote(_)), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

/// `ferry ls` of a local path: the listing request put to the server half
/// on a thread, as a local transfer runs it.
pub(super) fn list(path: Vec<u8>) -> Result<Vec<Entry>, TransferError> {
    let (stream, server) = local_server(Box::new(session::LocalFiles))?;
    let listed = session::list_entries(stream, path);
    let server = server.join().unwrap_or_else(|_| {
        Err(TransferError::Internal(
            "the local listing server panicked".into(),
        ))
    });
    match (listed, server) {
        // what the server half said, when the conversation broke
        (Err(TransferError::Connection(_) | TransferError::Handshake(_)), Err(e)) => Err(e),
        (listed, _) => listed,
    }
}

/// Starts `serve` on a thread and returns the client's end of the stream.
fn local_server(
    side: Box<dyn session::Side + Send>,
) -> Result<(Stream, JoinHandle<Result<Summary, TransferError>>), TransferError> {
    // in-memory pipes, not the kernel's: no page allocated, charged and
    // freed per 4 KiB that crosses (`transport::memory`)
    let (to_server_r, to_server_w) = memory::pipe(memory::CAPACITY);
    let (to_client_r, to_client_w) = memory::pipe(memory::CAPACITY);
    let server = std::thread::Builder::new()
        .name("ferry-local-server".into())
        .spawn(move || {
            let stream = Stream {
                reader: Box::new(to_server_r),
                writer: Box::new(to_client_w),
                in_process: true,
            };
            session::serve_on(stream, &session::stdio_policy, None, side.as_ref())
        })
        .map_err(|e| TransferError::local("thread", &e))?;
    Ok((
        Stream {
            reader: Box::new(to_client_r),
            writer: Box::new(to_server_w),
            in_process: true,
        },
        server,
    ))
}
