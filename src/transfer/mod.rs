//! The library's front door: a [`Plan`] (sources, destination, options) becomes
//! a running transfer, reporting [`Event`]s and cancellable from another
//! thread. Each address is first resolved to an [`endpoint`]: a store this
//! process reads or writes itself, or a peer that serves the other half of the
//! session. Store to store runs both halves in-process (`local`); store to
//! peer runs the client half against the peer, over ssh or TLS.
//!
//! The CLI and (later) the daemon's job API both drive this. Not for printing,
//! prompting or exiting: that is the caller's, through the events and the
//! [`DaemonOptions`] host-key policy it supplies.

use crate::error::TransferError;
use crate::location::Location;
use crate::proto::{Options, Request, Role, Summary};
use crate::session::wire::Counters;
use crate::session::{self, Cancel, EventFn};
use crate::transport::child::{ChildPeer, SshOptions};
use crate::transport::daemon::{self, DaemonOptions};
use crate::transport::Stream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub mod endpoint;
mod local;

use endpoint::{Endpoint, Peer, Store};

pub use crate::proto::{Event, EventKind, Report};

/// What to transfer, where, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sources: Vec<Location>,
    pub dest: Location,
    pub options: Options,
    pub ssh: SshOptions,
    pub daemon: DaemonOptions,
}

/// What a finished transfer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub summary: Summary,
    /// Bytes this side wrote to the connection.
    pub sent: u64,
    /// Bytes this side read from the connection.
    pub received: u64,
}

/// Whether a failed transfer is worth trying again: the connection broke, not
/// the peer's rules or our own files, and nothing was tampered with.
fn retryable(e: &TransferError) -> bool {
    matches!(e, TransferError::Connection(_))
}

/// How long a daemon transfer keeps retrying after the connection breaks.
const DEFAULT_RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a transfer to completion. A transfer to or from a daemon whose
/// connection breaks is run again, with exponential backoff and jitter, for
/// up to `--timeout` (60 s without it): files already done are skipped and a
/// file cut short resumes from its partial file.
pub fn run(plan: &Plan, events: &EventFn<'_>, cancel: &Cancel) -> Result<Outcome, TransferError> {
    let daemon = plan
        .sources
        .iter()
        .chain([&plan.dest])
        .any(|l| matches!(l, Location::Daemon { .. }));
    let window = plan.daemon.timeout.unwrap_or(DEFAULT_RETRY_WINDOW);
    let mut first_failure: Option<std::time::Instant> = None;
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match run_once(plan, events, cancel) {
            Err(e) if daemon && retryable(&e) && !cancel.is_cancelled() => {
                let since = *first_failure.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= window {
                    return Err(TransferError::Connection(format!(
                        "{} (gave up after retrying for {} s)",
                        match &e {
                            TransferError::Connection(m) => m.clone(),
                            other => other.to_string(),
                        },
                        window.as_secs()
                    )));
                }
                // ±25% jitter so that many clients do not retry in step
                let mut r = [0u8; 2];
                let _ = aws_lc_rs::rand::fill(&mut r);
                let jitter = 0.75 + (u16::from_le_bytes(r) as f64 / u16::MAX as f64) * 0.5;
                let wait = delay.mul_f64(jitter);
                events(Event::notice(
                    b"",
                    format!("{e}; retrying in {:.1} s", wait.as_secs_f64()),
                ));
                std::thread::sleep(wait);
                delay = (delay * 2).min(std::time::Duration::from_secs(8));
            }
            other => return other,
        }
    }
}

fn run_once(plan: &Plan, events: &EventFn<'_>, cancel: &Cancel) -> Result<Outcome, TransferError> {
    let route = endpoint::route(&plan.sources, &plan.dest)?;
    let mut options = plan.options.clone();
    if let Endpoint::Store(_) = route.serving {
        // extra streams exist only to a peer (a daemon, or over ssh)
        options.streams = 1;
    }
    let request = Request {
        role: route.role,
        paths: route.served_paths,
        options,
    };
    let local_paths = route.local_paths;
    let counters = Arc::new(Counters::default());
    let side = side_of(route.local_store)?;
    let side = side.as_ref();
    let summary = match route.serving {
        Endpoint::Store(store) => {
            let server = side_of(store)?;
            local::run(
                request,
                local_paths,
                events,
                cancel,
                &counters,
                side,
                server,
            )?
        }
        Endpoint::Peer(Peer::Ssh { user, host }) => over_ssh(
            plan,
            user,
            host,
            request,
            local_paths,
            events,
            cancel,
            &counters,
            side,
        )?,
        Endpoint::Peer(Peer::Daemon { host, port }) => {
            let port = port.unwrap_or(crate::proto::DEFAULT_PORT);
            let stream = connect_daemon(host, port, &plan.daemon, events)?;
            let more = || connect_daemon(host, port, &plan.daemon, events);
            session::run_client_streams_on(
                stream,
                request,
                local_paths,
                events,
                cancel,
                counters.clone(),
                Some(&more),
                side,
            )?
        }
    };
    Ok(Outcome {
        summary,
        sent: counters.sent.load(Ordering::Relaxed),
        received: counters.received.load(Ordering::Relaxed),
    })
}

/// The session half that runs on `store` in this process.
fn side_of(store: Store<'_>) -> Result<Box<dyn session::Side + Send>, TransferError> {
    Ok(match store {
        Store::Local => Box::new(session::LocalFiles),
        Store::S3 { bucket } => Box::new(crate::store::s3::S3Side::open(bucket)?),
    })
}

/// Lists what a daemon offers: its modules (`host::`), or the entries at a
/// module path (`host::module/path`), as (name, entry) pairs.
/// Notices (a daemon key just recorded) go to `events`.
pub fn list_daemon(
    host: &str,
    port: Option<u16>,
    path: &[u8],
    opts: &DaemonOptions,
    events: &EventFn<'_>,
) -> Result<Listing, TransferError> {
    let port = port.unwrap_or(crate::proto::DEFAULT_PORT);
    let stream = connect_daemon(host, port, opts, events)?;
    if path.is_empty() {
        return session::list_modules(stream).map(Listing::Modules);
    }
    session::list_entries(stream, path.to_vec()).map(Listing::Entries)
}

/// Connects to a daemon; a key recorded on the way is told to `events` as a
/// notice.
fn connect_daemon(
    host: &str,
    port: u16,
    opts: &DaemonOptions,
    events: &EventFn<'_>,
) -> Result<Stream, TransferError> {
    let connected = daemon::connect(host, port, opts)?;
    if let Some(host) = connected.added {
        events(Event::notice(b"", host.added_notice()));
    }
    Ok(connected.stream)
}

/// What `ferry ls` shows.
pub enum Listing {
    Modules(Vec<crate::proto::ModuleInfo>),
    Entries(Vec<crate::proto::Entry>),
}

/// Runs the client's half over ssh: one `ssh` child, and one more for each
/// extra stream (as mscp does: one channel's cipher is not the limit).
#[allow(clippy::too_many_arguments)]
fn over_ssh(
    plan: &Plan,
    user: Option<&str>,
    host: &str,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    side: &dyn session::Side,
) -> Result<Summary, TransferError> {
    let (peer, stream) = ChildPeer::ssh(user, host, &plan.ssh)?;
    let extra = std::sync::Mutex::new(Vec::new());
    let extra_ssh = SshOptions {
        extra: true,
        ..plan.ssh.clone()
    };
    let more = || {
        let (peer, stream) = ChildPeer::ssh(user, host, &extra_ssh)?;
        extra.lock().unwrap_or_else(|p| p.into_inner()).push(peer);
        Ok(stream)
    };
    let result = session::run_client_streams_on(
        stream,
        request,
        local_paths,
        events,
        cancel,
        counters.clone(),
        Some(&more),
        side,
    );
    for peer in extra.into_inner().unwrap_or_else(|p| p.into_inner()) {
        peer.end();
    }
    finish_child(peer, result)
}

fn finish_child(
    peer: ChildPeer,
    result: Result<Summary, TransferError>,
) -> Result<Summary, TransferError> {
    let failed = result.is_err();
    let child_error = peer.finish(failed);
    match (result, child_error) {
        (Ok(s), _) => Ok(s),
        (Err(TransferError::Connection(_) | TransferError::Handshake(_)), Some(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

/// Pushes local sources to a peer started as a child process that serves the
/// protocol on its stdio (the demo runs `ferry serve --stdio` this way).
pub fn push_to_command(
    cmd: std::process::Command,
    sources: Vec<Vec<u8>>,
    dest: Vec<u8>,
    options: Options,
    events: &EventFn<'_>,
    cancel: &Cancel,
) -> Result<Outcome, TransferError> {
    let (peer, stream) = ChildPeer::spawn(cmd, "the local ferry server".into())?;
    let counters = Arc::new(Counters::default());
    let request = Request {
        role: Role::ServerReceives,
        paths: vec![dest],
        options,
    };
    let result = session::run_client(stream, request, sources, events, cancel, counters.clone());
    let summary = finish_child(peer, result)?;
    Ok(Outcome {
        summary,
        sent: counters.sent.load(Ordering::Relaxed),
        received: counters.received.load(Ordering::Relaxed),
    })
}
