//! The client's side of a connection: the version handshake, the request and
//! the server's answer, extra streams joined to the transfer, then the local
//! half (the sender for a push, the receiver for a pull). Also the two
//! requests that transfer nothing: a listing of entries (`ferry ls
//! host::module/path`) and of a daemon's modules.
//!
//! Not for the server's side ([`serve`](mod@super::serve)) nor for reaching
//! the server ([`crate::transport`]): callers hand in a connected [`Stream`].

use super::wire::{Counters, FrameReader, FrameWriter};
use super::{receiver, sender, text, Cancel, EventFn, Stream, NO_SUCH_TRANSFER};
use crate::error::TransferError;
use crate::proto::{self, Event, Message, ModuleInfo, Options, Request, Role, Summary};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The client's side: handshake, send the request, then run the local half.
pub fn run_client(
    stream: Stream,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: Arc<Counters>,
) -> Result<Summary, TransferError> {
    run_client_streams(stream, request, local_paths, events, cancel, counters, None)
}

/// Opens a further connection to the same server (for extra streams).
pub type Connect<'a> = dyn Fn() -> Result<Stream, TransferError> + Sync + 'a;

/// The client's side of opening a connection: versions, then `request`,
/// which the server must accept (`what` names it in errors). Returns the
/// options as the server was sent them (an older server, fewer).
fn open<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    request: &Request,
    what: &str,
) -> Result<Options, TransferError> {
    let sent = send_request(reader, writer, request)?;
    match reader.expect()? {
        Message::Accept => Ok(sent),
        Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
        other => Err(TransferError::PeerMisbehaved(format!(
            "answered {what} with {}",
            other.name()
        ))),
    }
}

/// Versions, then `request` (what the server answers is the caller's); the
/// options as sent.
fn send_request<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    request: &Request,
) -> Result<Options, TransferError> {
    writer.raw(&proto::client_hello())?;
    let version = proto::check_server_hello(&reader.raw::<7>()?)?;
    // an older peer is sent only what it understands (or told what it lacks)
    let options = request
        .options
        .for_peer(version)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    writer.send(&Message::Request(Request {
        options: options.clone(),
        ..request.clone()
    }))?;
    writer.flush()?;
    Ok(options)
}

/// Joins an extra stream to the transfer the server gave `token`.
fn join_stream(
    stream: Stream,
    token: [u8; 16],
    counters: Arc<Counters>,
) -> Result<Stream, TransferError> {
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let join = Request {
        role: Role::JoinStream,
        paths: vec![token.to_vec()],
        options: Options::default(),
    };
    open(&mut reader, &mut writer, &join, "a stream join")?;
    Ok(Stream {
        reader: Box::new(reader.into_inner()),
        writer: Box::new(writer.into_inner()?),
        in_process: false,
    })
}

/// Like [`run_client`], opening `request.options.streams - 1` extra streams
/// with `connect` when the server offers them.
pub fn run_client_streams(
    stream: Stream,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: Arc<Counters>,
    connect: Option<&Connect<'_>>,
) -> Result<Summary, TransferError> {
    run_client_streams_on(
        stream,
        request,
        local_paths,
        events,
        cancel,
        counters,
        connect,
        &super::LocalFiles,
    )
}

/// Like [`run_client_streams`], with the local half running on `side` (the
/// local filesystem, or another store this process reaches itself).
#[allow(clippy::too_many_arguments)]
pub fn run_client_streams_on(
    stream: Stream,
    mut request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: Arc<Counters>,
    connect: Option<&Connect<'_>>,
    side: &dyn super::Side,
) -> Result<Summary, TransferError> {
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    reader.set_in_process(stream.in_process);
    let mut writer = FrameWriter::new(stream.writer, counters.clone());
    let sent = open(&mut reader, &mut writer, &request, "the request")?;
    // both halves mark hard links only if the server was told to
    request.options.link_marks = sent.link_marks;
    // and stream zstd frames across blocks only if the server takes them
    request.options.zstd_stream = sent.zstd_stream;
    // and send holes as hole messages only if the server takes them
    request.options.sparse_holes = sent.sparse_holes;
    let streams = request.options.streams;
    let mut token = proto::NO_STREAM_TOKEN;
    if streams > 1 {
        token = match reader.expect()? {
            Message::StreamToken(t) => t,
            other => {
                return Err(TransferError::PeerMisbehaved(format!(
                    "sent {} instead of a stream token",
                    other.name()
                )))
            }
        };
    }
    let connect = connect.filter(|_| token != proto::NO_STREAM_TOKEN);
    let (joined, joins) = std::sync::mpsc::channel();
    let finished = AtomicBool::new(false);
    // extra streams connect while the transfer starts: a small transfer does
    // not wait for them, a large file is split across those that have joined
    std::thread::scope(|scope| {
        if let Some(connect) = connect {
            let (finished, counters) = (&finished, counters.clone());
            scope.spawn(move || {
                for n in 1..streams {
                    if finished.load(Ordering::Relaxed) {
                        return;
                    }
                    match connect().and_then(|s| join_stream(s, token, counters.clone())) {
                        Ok(s) => {
                            if joined.send(s).is_err() {
                                return;
                            }
                        }
                        // the transfer ended before this stream could join
                        Err(TransferError::Remote(t)) if t == NO_SUCH_TRANSFER => return,
                        Err(_) if finished.load(Ordering::Relaxed) => return,
                        Err(e) => {
                            // one stream is enough to finish the job
                            events(Event::notice(
                                b"",
                                format!("going on with {n} stream(s): another could not join: {e}"),
                            ));
                            return;
                        }
                    }
                }
            });
        } else {
            drop(joined);
        }
        let result = run_half(
            reader,
            writer,
            request,
            local_paths,
            events,
            cancel,
            connect.map(|_| joins),
            side,
        );
        finished.store(true, Ordering::Relaxed);
        result
    })
}

/// The client's half of a transfer, once the server has accepted it.
#[allow(clippy::too_many_arguments)]
fn run_half(
    reader: FrameReader<Box<dyn Read + Send>>,
    writer: FrameWriter<Box<dyn Write + Send>>,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    joins: Option<std::sync::mpsc::Receiver<Stream>>,
    side: &dyn super::Side,
) -> Result<Summary, TransferError> {
    match request.role {
        Role::ServerReceives => side.send(
            reader,
            writer,
            sender::Config {
                sources: local_paths,
                options: request.options,
                events: Some(events),
                confine: None,
                joins,
            },
            cancel,
        ),
        Role::ListModules | Role::JoinStream => Err(TransferError::Usage(
            "list_modules and stream joins are not transfers".into(),
        )),
        Role::ServerSends => {
            let dest = local_paths.into_iter().next().unwrap_or_default();
            side.receive(
                reader,
                writer,
                receiver::Config {
                    dest,
                    options: request.options,
                    events: Some(events),
                    requested: Some(request.paths),
                    beneath: None,
                    joins,
                },
                cancel,
            )
        }
    }
}

/// Most entries `ferry ls` accepts from a listing.
const MAX_LISTING: usize = 1 << 20;

/// Asks the server for the entries at `path` (a directory's entries, or one
/// file), without transferring anything.
pub fn list_entries(stream: Stream, path: Vec<u8>) -> Result<Vec<proto::Entry>, TransferError> {
    list_entries_counted(stream, path, Arc::new(Counters::default()))
}

/// [`list_entries`], counting the bytes each way in `counters` (whether the
/// server answered at all).
pub fn list_entries_counted(
    stream: Stream,
    path: Vec<u8>,
    counters: Arc<Counters>,
) -> Result<Vec<proto::Entry>, TransferError> {
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let request = Request {
        role: Role::ServerSends,
        paths: vec![path.clone()],
        options: Options {
            dirs: true,
            links: true,
            dry_run: true,
            ..Options::default()
        },
    };
    open(&mut reader, &mut writer, &request, "a listing request")?;
    let mut entries = Vec::new();
    // (the server reports a path it cannot read as an error event, not a
    // fatal one: ls must not show it as an empty listing)
    let mut failed = None;
    loop {
        match reader.expect()? {
            Message::Event(e) if e.kind == proto::EventKind::Error => {
                failed.get_or_insert(listing_error(&path, &text(&e.text)));
            }
            Message::ListStart(_) | Message::Event(_) => {}
            Message::Entry(e) => {
                crate::fs::names::check(&e.name).map_err(|err| {
                    TransferError::PeerMisbehaved(format!("sent a bad name: {err}"))
                })?;
                if entries.len() >= MAX_LISTING {
                    return Err(TransferError::PeerMisbehaved(
                        "sent more entries than a listing may hold".into(),
                    ));
                }
                entries.push(e);
            }
            Message::ListEnd { .. } => break,
            Message::Fatal(t) => return Err(TransferError::Remote(text(&t))),
            other => {
                return Err(TransferError::PeerMisbehaved(format!(
                    "sent {} in a listing",
                    other.name()
                )))
            }
        }
    }
    writer.send(&Message::Finish(Summary::default()))?;
    writer.flush()?;
    let _ = reader.recv();
    match failed {
        Some(t) => Err(TransferError::Remote(t)),
        None => Ok(entries),
    }
}

/// What `ferry ls PATH` says when the server cannot read PATH: `PATH: why`,
/// as `ls` says it (the server's scan says "cannot read source …", and names
/// the path as it knows it).
fn listing_error(path: &[u8], said: &str) -> String {
    match said
        .strip_prefix("cannot read source ")
        .and_then(|rest| rest.rsplit_once(": "))
    {
        Some((_, why)) => format!("{}: {why}", crate::fs::names::escape(path)),
        None => said.to_string(),
    }
}

/// Asks a daemon for the modules this client may see.
pub fn list_modules(stream: Stream) -> Result<Vec<ModuleInfo>, TransferError> {
    let counters = Arc::new(Counters::default());
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let request = Request {
        role: Role::ListModules,
        paths: vec![b".".to_vec()],
        options: Options::default(),
    };
    send_request(&mut reader, &mut writer, &request)?;
    match reader.expect()? {
        Message::Modules(list) => Ok(list),
        Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
        other => Err(TransferError::PeerMisbehaved(format!(
            "answered a module listing with {}",
            other.name()
        ))),
    }
}
