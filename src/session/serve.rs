//! The server's side of a connection: answer the version handshake, check the
//! request, let its [`Policy`] decide what it may do ([`Serve`]), and run that
//! half; or turn the connection away with a reason ([`refuse`]). Extra streams
//! join a running transfer through [`Streams`].
//!
//! Not for listening, authenticating or choosing the policy: that is
//! [`crate::server`] (the daemon's modules and grants, `serve --stdio`'s own
//! paths), which calls in here with a connected [`Stream`].

use super::wire::{Counters, FrameReader, FrameWriter};
use super::{receiver, sender, Cancel, Stream, NO_SUCH_TRANSFER};
use crate::error::TransferError;
use crate::proto::{self, Message, ModuleInfo, Options, Request, Role, Summary};
use std::path::PathBuf;
use std::sync::Arc;

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

/// Maps a request to what the server will do, or refuses it (the refusal's
/// text is sent to the client as the reason).
pub type Policy<'a> = dyn Fn(&Request) -> Result<Serve, Refusal> + 'a;

/// Why a server's policy refuses a request, by who would have to change
/// something: the request names what is not there, asks what this server
/// does not answer, or asks what the client's key may not do. The text is
/// what the client is told (and shows, exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "reason", content = "text", rename_all = "snake_case")]
pub enum Refusal {
    /// No such module, or no such place in it.
    #[error("{0}")]
    NotFound(String),
    /// Not a request this server answers, or not one that makes sense.
    #[error("{0}")]
    Invalid(String),
    /// The client's key (its `authorized_keys` options) or the module does
    /// not allow it.
    #[error("{0}")]
    Denied(String),
}

/// `ferry serve --stdio` (the remote end of ssh): paths are the user's own, as
/// with rsync over ssh.
pub fn stdio_policy(r: &Request) -> Result<Serve, Refusal> {
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
        Role::ListModules => Err(Refusal::Invalid(
            "module listings need the ferry daemon (host::), not ssh".into(),
        )),
        Role::JoinStream => Err(Refusal::Invalid("a stream join is not a request".into())),
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
    serve_on(stream, policy, streams, &super::LocalFiles)
}

/// Like [`serve_with`], with the half asked for running on `side` (the local
/// filesystem, or another store this process reaches itself).
pub fn serve_on(
    stream: Stream,
    policy: &Policy,
    streams: Option<&Streams>,
    side: &dyn super::Side,
) -> Result<Summary, TransferError> {
    let counters = Arc::new(Counters::default());
    let mut reader = FrameReader::new(stream.reader, counters.clone());
    reader.set_in_process(stream.in_process);
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
            in_process: false,
        };
        deliver(stream);
        return Ok(Summary::default());
    }
    let decided = check_request(&request)
        .and_then(|_| policy(&request).map_err(|r| TransferError::Usage(r.to_string())));
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
        } => side.send(
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
        } => side.receive(
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

fn check_request(r: &Request) -> Result<(), TransferError> {
    if r.paths.is_empty() || r.paths.iter().any(|p| p.is_empty()) {
        return Err(TransferError::Usage("the request names no path".into()));
    }
    if r.role == Role::ServerReceives && r.paths.len() != 1 {
        return Err(TransferError::Usage(
            "a push names exactly one destination".into(),
        ));
    }
    crate::filter::Filters::with_dir_merges(&r.options.filters, &r.options.dir_merges)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    r.options
        .validate()
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    Ok(())
}
