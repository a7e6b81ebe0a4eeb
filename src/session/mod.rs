//! The two ends of a transfer — [`sender`] and [`receiver`] — and the handshake
//! that starts them, speaking [`crate::proto`] over any byte stream: an ssh
//! child's stdio, a local pipe, and (later) TLS.
//!
//! Each side runs two threads so that both directions flow at once: the sender
//! writes the file list and file data while a reader thread collects the
//! receiver's requests; the receiver reads and writes files while a writer thread
//! sends its requests. Nothing here prints or exits: progress and problems are
//! [`Event`]s handed to the caller (or, on a server, forwarded to the client).

mod listing;
pub mod receiver;
pub mod sender;
pub mod wire;

use crate::error::TransferError;
use crate::proto::{self, Event, Message, ModuleInfo, Options, Request, Role, Summary};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wire::{Counters, FrameReader, FrameWriter};

pub use crate::transport::Stream;

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
/// which the server must accept (`what` names it in errors).
fn open<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    request: &Request,
    what: &str,
) -> Result<(), TransferError> {
    send_request(reader, writer, request)?;
    match reader.expect()? {
        Message::Accept => Ok(()),
        Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
        other => Err(TransferError::PeerMisbehaved(format!(
            "answered {what} with {}",
            other.name()
        ))),
    }
}

/// Versions, then `request` (what the server answers is the caller's).
fn send_request<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    request: &Request,
) -> Result<(), TransferError> {
    writer.raw(&proto::client_hello())?;
    proto::check_server_hello(&reader.raw::<7>()?)?;
    writer.send(&Message::Request(request.clone()))?;
    writer.flush()
}

/// A server's answer to a stream join whose transfer it does not know (or
/// that has ended).
const NO_SUCH_TRANSFER: &str = "no transfer to join with that token";

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
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters.clone());
    open(&mut reader, &mut writer, &request, "the request")?;
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
                            events(Event {
                                kind: proto::EventKind::Notice,
                                name: Vec::new(),
                                a: 0,
                                b: 0,
                                text: format!(
                                    "going on with {n} stream(s): another could not join: {e}"
                                )
                                .into_bytes(),
                            });
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
            Some(joins),
        );
        finished.store(true, Ordering::Relaxed);
        result
    })
}

/// The client's half of a transfer, once the server has accepted it.
fn run_half(
    reader: FrameReader<Box<dyn Read + Send>>,
    writer: FrameWriter<Box<dyn Write + Send>>,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    joins: Option<std::sync::mpsc::Receiver<Stream>>,
) -> Result<Summary, TransferError> {
    match request.role {
        Role::ServerReceives => sender::run(
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
            receiver::run(
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

/// What a server does with a request, decided by its [`Policy`].
pub enum Serve {
    /// Send these local paths. With `confine`, every path is inside that
    /// directory and files are opened beneath it without following symlinks.
    Send {
        sources: Vec<Vec<u8>>,
        options: Options,
        confine: Option<PathBuf>,
    },
    /// Receive into `dest`; with `beneath`, `dest` is relative to that directory
    /// and resolved without following symlinks.
    Receive {
        dest: Vec<u8>,
        options: Options,
        beneath: Option<PathBuf>,
    },
    /// Answer with this module list.
    Modules(Vec<ModuleInfo>),
}

/// Maps a request to what the server will do, or refuses it (the error is sent
/// to the client as the reason).
pub type Policy<'a> = dyn Fn(&Request) -> Result<Serve, String> + 'a;

/// `ferry serve --stdio` (the remote end of ssh): paths are the user's own, as
/// with rsync over ssh.
pub fn stdio_policy(r: &Request) -> Result<Serve, String> {
    match r.role {
        Role::ServerSends => Ok(Serve::Send {
            sources: r.paths.clone(),
            options: r.options.clone(),
            confine: None,
        }),
        Role::ServerReceives => Ok(Serve::Receive {
            dest: r.paths[0].clone(),
            options: r.options.clone(),
            beneath: None,
        }),
        Role::ListModules => Err("module listings need the ferry daemon (host::), not ssh".into()),
        Role::JoinStream => Err("a stream join is not a request".into()),
    }
}

/// Takes a stream that joined with a known token to its transfer.
pub type Deliver<'a> = Box<dyn FnOnce(Stream) + 'a>;

/// How a server lets extra streams join its transfers (the daemon's registry;
/// over ssh, [`crate::transport::rendezvous`]).
pub struct Streams<'a> {
    /// A new token and the queue joined streams arrive on.
    pub register: &'a dyn Fn() -> ([u8; 16], std::sync::mpsc::Receiver<Stream>),
    /// Where a stream joining with this token goes (`None`: unknown token).
    pub join: &'a dyn Fn(&[u8; 16]) -> Option<Deliver<'a>>,
}

/// The server's side: answer the handshake, check the request, and run the
/// half it asks for. Events go to the client.
pub fn serve(stream: Stream) -> Result<Summary, TransferError> {
    serve_with(stream, &stdio_policy, None)
}

/// Like [`serve`], with a policy deciding what each request may do.
pub fn serve_with(
    stream: Stream,
    policy: &Policy,
    streams: Option<&Streams>,
) -> Result<Summary, TransferError> {
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
    if request.role == Role::JoinStream {
        let target = request
            .paths
            .first()
            .and_then(|t| <[u8; 16]>::try_from(t.as_slice()).ok())
            .and_then(|t| streams.and_then(|s| (s.join)(&t)));
        let Some(deliver) = target else {
            let e = TransferError::Usage(NO_SUCH_TRANSFER.into());
            writer.send(&Message::Fatal(e.to_string().into_bytes()))?;
            writer.flush()?;
            return Err(e);
        };
        writer.send(&Message::Accept)?;
        let stream = Stream {
            reader: Box::new(reader.into_inner()),
            writer: Box::new(writer.into_inner()?),
        };
        deliver(stream);
        return Ok(Summary::default());
    }
    let decided =
        check_request(&request).and_then(|_| policy(&request).map_err(TransferError::Usage));
    let serve = match decided {
        Ok(s) => s,
        Err(e) => {
            writer.send(&Message::Fatal(e.to_string().into_bytes()))?;
            writer.flush()?;
            return Err(e);
        }
    };
    if let Serve::Modules(list) = serve {
        writer.send(&Message::Modules(list))?;
        writer.flush()?;
        return Ok(Summary::default());
    }
    writer.send(&Message::Accept)?;
    let wants_streams = match &serve {
        Serve::Send { options, .. } | Serve::Receive { options, .. } => options.streams > 1,
        Serve::Modules(_) => false,
    };
    let mut joins = None;
    if wants_streams {
        match streams {
            Some(s) => {
                let (token, rx) = (s.register)();
                writer.send(&Message::StreamToken(token))?;
                joins = Some(rx);
            }
            None => writer.send(&Message::StreamToken(proto::NO_STREAM_TOKEN))?,
        }
    }
    let cancel = Cancel::default();
    match serve {
        Serve::Send {
            sources,
            options,
            confine,
        } => sender::run(
            reader,
            writer,
            sender::Config {
                sources,
                options,
                events: None,
                confine,
                joins,
            },
            &cancel,
        ),
        Serve::Receive {
            dest,
            options,
            beneath,
        } => receiver::run(
            reader,
            writer,
            receiver::Config {
                dest,
                options,
                events: None,
                requested: None,
                beneath,
                joins,
            },
            &cancel,
        ),
        Serve::Modules(_) => unreachable!("answered above"),
    }
}

/// Turns a connection away after authentication failed: answers the protocol
/// hello so the client can read the reason, sends the reason, and reads nothing
/// else of substance (what the client sent meanwhile is discarded, briefly, so
/// the reason is not lost to a connection reset).
pub fn refuse(stream: Stream, reason: &str) -> Result<(), TransferError> {
    let counters = Arc::new(Counters::default());
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let hello = reader.raw::<9>()?;
    let version = proto::choose_version(&hello).unwrap_or(0);
    writer.raw(&proto::server_hello(version))?;
    writer.send(&Message::Fatal(reason.as_bytes().to_vec()))?;
    writer.flush()?;
    drop(writer);
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 256 << 10 {
        match reader.raw_read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    Ok(())
}

/// Most entries `ferry ls` accepts from a listing.
const MAX_LISTING: usize = 1 << 20;

/// Asks the server for the entries at `path` (a directory's entries, or one
/// file), without transferring anything.
pub fn list_entries(stream: Stream, path: Vec<u8>) -> Result<Vec<proto::Entry>, TransferError> {
    let counters = Arc::new(Counters::default());
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    let mut writer = FrameWriter::new(stream.writer, counters);
    let request = Request {
        role: Role::ServerSends,
        paths: vec![path],
        options: Options {
            dirs: true,
            links: true,
            dry_run: true,
            ..Options::default()
        },
    };
    open(&mut reader, &mut writer, &request, "a listing request")?;
    let mut entries = Vec::new();
    loop {
        match reader.expect()? {
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
    Ok(entries)
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
    r.options.validate().map_err(TransferError::Usage)?;
    Ok(())
}

/// Text from the peer, shown safely.
pub(crate) fn text(bytes: &[u8]) -> String {
    crate::fs::names::escape(bytes)
}
