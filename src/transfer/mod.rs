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
use crate::proto::{HandshakeError, Options, Request, Role, Summary};
use crate::session::wire::Counters;
use crate::session::{self, Cancel, EventFn};
use crate::transport::child::{ChildPeer, SshOptions};
use crate::transport::daemon::{self, DaemonOptions};
use crate::transport::Stream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub mod endpoint;
mod local;
mod reach;
mod relay;
mod sftp;

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
    /// Module roots the local sides stay beneath (a daemon's API jobs).
    pub confine: Confine,
}

/// The daemon module roots a transfer's local sides are confined to, as the
/// daemon confines a client ([`crate::session::ModuleFiles`]): every file
/// read is opened beneath the source's root, every path written resolved
/// beneath the destination's, no symlink followed on the way. `None`: the
/// user's own paths, followed as the CLI always has.
#[derive(Debug, Clone, Default)]
pub struct Confine {
    pub source: Option<std::path::PathBuf>,
    pub dest: Option<std::path::PathBuf>,
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

/// Whether a failed transfer is worth trying again, with what the run has
/// seen so far: whether a daemon ever answered (`reached`). What can heal is
/// retried: a connection that broke, a resolver that did not answer, a daemon
/// that refuses after it once answered (restarting), a busy daemon. What
/// cannot is not: a name that does not exist, a first connection refused or
/// unanswered, the daemon's key, our key refused, our own files.
fn retryable(e: &TransferError, reached: bool) -> bool {
    match e {
        TransferError::Connection(_) => true,
        TransferError::Connect { why, .. } => {
            reached || *why == crate::error::ConnectFailure::ResolverDown
        }
        TransferError::Remote(text) => text.starts_with(daemon::BUSY),
        _ => false,
    }
}

/// How long a daemon transfer keeps retrying after the connection breaks.
const DEFAULT_RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// How many times a daemon transfer is tried again, at most.
pub const DEFAULT_RETRIES: u32 = 10;

/// The daemon a plan talks to, as the user typed it (`host` or
/// `host:port`), for the hint that ends a connection failure.
fn daemon_target(plan: &Plan) -> Option<String> {
    plan.sources
        .iter()
        .chain([&plan.dest])
        .find_map(|l| match l {
            Location::Daemon { host, port, .. } => Some(doctor_target(host, *port)),
            _ => None,
        })
}

/// The ssh peer of a plan as `[user@]host:` (the address without its
/// path, which `ferry doctor` reads as the ssh path).
fn ssh_target(plan: &Plan) -> Option<String> {
    ssh_target_in(plan.sources.iter().chain([&plan.dest])).map(|t| with_rsh(t, &plan.ssh))
}

/// `target` with the `-e` that makes `ferry doctor` look where the transfer
/// did, when its ssh command is not plain ssh.
fn with_rsh(target: String, ssh: &SshOptions) -> String {
    match doctor_rsh(ssh) {
        Some(rsh) => format!("{target} -e {}", shell_words::quote(&rsh)),
        None => target,
    }
}

/// The ssh command `ferry doctor` is to use to look where the transfer did
/// (`-e`, and scp's `-P`, `-i`, `-o` folded into it); `None` for plain ssh.
fn doctor_rsh(o: &SshOptions) -> Option<String> {
    let mut cmd = o.rsh.clone().unwrap_or_else(|| "ssh".into());
    if let Some(port) = o.port {
        cmd += &format!(" -p {port}");
    }
    if let Some(id) = &o.identity {
        cmd += &format!(" -i {}", shell_words::quote(id));
    }
    for opt in &o.ssh_options {
        cmd += &format!(" -o {}", shell_words::quote(opt));
    }
    (cmd != "ssh").then_some(cmd)
}

/// The first ssh peer among `locations`, as [`ssh_target`] gives it.
fn ssh_target_in<'a>(mut locations: impl Iterator<Item = &'a Location>) -> Option<String> {
    locations.find_map(|l| match l {
        Location::Ssh { user, host, .. } => Some(ssh_doctor_target(user.as_deref(), host)),
        _ => None,
    })
}

/// An ssh peer as `ferry doctor` is told it: `[user@]host:`.
fn ssh_doctor_target(user: Option<&str>, host: &str) -> String {
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    };
    match user {
        Some(u) => format!("{u}@{host}:"),
        None => format!("{host}:"),
    }
}

/// What `ferry doctor` is told to look into when `peer` cannot be reached.
fn peer_doctor_target(peer: &Peer<'_>) -> String {
    match peer {
        Peer::Ssh { user, host } => ssh_doctor_target(*user, host),
        Peer::Daemon { host, port } => doctor_target(host, *port),
    }
}

/// `host`, `host:port`, or `[v6]:port`: what `ferry doctor` is told.
fn doctor_target(host: &str, port: Option<u16>) -> String {
    match port {
        // an IPv6 address always with its port: `ferry doctor ::1` would
        // read as an ssh path, `[::1]` as a local one
        p if host.contains(':') => format!("[{host}]:{}", p.unwrap_or(crate::proto::DEFAULT_PORT)),
        Some(p) if p != crate::proto::DEFAULT_PORT => format!("{host}:{p}"),
        _ => host.to_string(),
    }
}

/// How the `ferry doctor` hint that ends a failure begins.
const DOCTOR_HINT: &str = "; run `ferry doctor ";

/// Ends a failure to reach `target` with where to look next. Failures that
/// are not about the connection (files, usage, the daemon's key, which
/// carry their own advice) are returned as they are.
fn with_doctor_hint(e: TransferError, target: &str) -> TransferError {
    let hint = format!("{DOCTOR_HINT}{target}` to find out why");
    // one pointer is enough (the ssh failure's own names the host already)
    if e.to_string().contains(DOCTOR_HINT) {
        return e;
    }
    match e {
        TransferError::Connect { text, why } => TransferError::Connect {
            text: text + &hint,
            why,
        },
        TransferError::Connection(text) => TransferError::Connection(text + &hint),
        TransferError::Remote(text) if text.starts_with(daemon::ACCESS_DENIED) => {
            TransferError::Remote(text + &hint)
        }
        other => other,
    }
}

/// Runs a transfer to completion. A transfer to or from a daemon whose
/// connection breaks is run again, with exponential backoff and jitter, up
/// to `--retries` times (10) within `--timeout` (60 s without it): files
/// already done are skipped and a file cut short resumes from its partial
/// file. What retrying cannot fix fails at once (see `retryable`); every
/// failure to reach the peer ends with the `ferry doctor` command to run.
pub fn run(plan: &Plan, events: &EventFn<'_>, cancel: &Cancel) -> Result<Outcome, TransferError> {
    if relay::is_remote_to_remote(plan) {
        // host1:a host2:b, as scp does it
        return relay::run(plan, events, cancel);
    }
    // (over ssh: no retry, ssh's own options govern that, but the hint)
    let target = daemon_target(plan).or_else(|| ssh_target(plan));
    reach::with_retries(plan, events, cancel, || run_once(plan, events, cancel)).map_err(|e| {
        match &target {
            Some(t) => with_doctor_hint(e, t),
            None => e,
        }
    })
}

fn run_once(plan: &Plan, events: &EventFn<'_>, cancel: &Cancel) -> Result<Outcome, TransferError> {
    // the sender's list errors (each source it cannot read) reach the
    // summary as one io_error flag: the count is the error events the run
    // reported, so `a b c dest/` with three missing sources says 3
    // error(s), as it printed three; an error only the sender saw after
    // the list (a source `--remove-source-files` kept) counts too, so the
    // run is partial (exit 23) as rsync's is
    let reported = std::sync::atomic::AtomicU64::new(0);
    let counting = |e: crate::proto::Event| {
        if e.kind == crate::proto::EventKind::Error {
            reported.fetch_add(1, Ordering::Relaxed);
        }
        events(e)
    };
    let mut outcome = run_counted(plan, &counting, cancel)?;
    let reported = reported.load(Ordering::Relaxed);
    outcome.summary.errors = outcome.summary.errors.max(reported);
    Ok(outcome)
}

/// Whether the end that receives writes files that can hold holes: a
/// local filesystem, or a ferry peer's (which writes into its own).
fn receiver_makes_holes(route: &endpoint::Route<'_>) -> bool {
    let receiving = match (&route.role, &route.serving) {
        (Role::ServerReceives, Endpoint::Store(s)) => s,
        (Role::ServerReceives, Endpoint::Peer(_)) => return true,
        _ => &route.local_store,
    };
    matches!(receiving, endpoint::Store::Local)
}

/// [`run_once`] without the error count.
fn run_counted(
    plan: &Plan,
    events: &EventFn<'_>,
    cancel: &Cancel,
) -> Result<Outcome, TransferError> {
    let route = endpoint::route(&plan.sources, &plan.dest)?;
    let mut options = plan.options.clone();
    // -H: only files with more than one link are kept for their links
    options.link_marks = options.hard_links;
    // -z: blocks continue each other's zstd frame
    options.zstd_stream = options.compress;
    // -S: holes travel as hole messages, not as zeros, where the receiving
    // end makes holes (its files): a store that cannot (S3) would write a
    // hole's zeros in one call, as long as a hostile sender says
    options.sparse_holes = options.sparse && receiver_makes_holes(&route);
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
    // the client half reads the sources (a push) or writes the destination
    let client_root = match request.role {
        Role::ServerReceives => plan.confine.source.as_ref(),
        _ => plan.confine.dest.as_ref(),
    };
    let side = side_of(route.local_store, client_root)?;
    let side = side.as_ref();
    let summary = match route.serving {
        Endpoint::Store(store) => {
            // (store to store: the in-process server receives)
            let server = side_of(store, plan.confine.dest.as_ref())?;
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
        Endpoint::Peer(peer) => reach::reach_peer(
            plan,
            &peer,
            request,
            local_paths,
            events,
            cancel,
            &counters,
            side,
        )?,
    };
    Ok(Outcome {
        summary,
        sent: counters.sent.load(Ordering::Relaxed),
        received: counters.received.load(Ordering::Relaxed),
    })
}

/// The session half that runs on `store` in this process; on the local
/// filesystem confined to the module root `confine`, when given.
fn side_of(
    store: Store<'_>,
    confine: Option<&std::path::PathBuf>,
) -> Result<Box<dyn session::Side + Send>, TransferError> {
    Ok(match store {
        Store::Local => match confine {
            Some(root) => Box::new(session::ModuleFiles::new(root.clone())),
            None => Box::new(session::LocalFiles),
        },
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
    let target = doctor_target(host, port);
    let port = port.unwrap_or(crate::proto::DEFAULT_PORT);
    let listed = connect_daemon(host, port, opts, events).and_then(|stream| {
        if path.is_empty() {
            return session::list_modules(stream).map(Listing::Modules);
        }
        session::list_entries(stream, path.to_vec()).map(Listing::Entries)
    });
    listed.map_err(|e| with_doctor_hint(e, &target))
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

/// `ferry ls` of a local path or an ssh path: the listing request the daemon
/// answers, put to the server half (on a thread here for a local path, as a
/// local transfer runs it; the remote's `ferry serve --stdio` over ssh), so
/// the entries are the ones a transfer would list.
/// Over ssh, `--transport` decides as for a transfer: a remote that cannot
/// run ferry is listed over SFTP (with one notice saying why), and a failure
/// to reach the host ends with the `ferry doctor` command to run.
pub fn list_path(
    loc: &Location,
    ssh: &SshOptions,
    events: &EventFn<'_>,
) -> Result<Vec<crate::proto::Entry>, TransferError> {
    let Location::Ssh {
        user, host, path, ..
    } = loc
    else {
        return list_over_stdio(loc, ssh);
    };
    let target = ssh_target_in(std::iter::once(loc)).map(|t| with_rsh(t, ssh));
    let hint = |e| match &target {
        Some(t) => with_doctor_hint(e, t),
        None => e,
    };
    let user = user.as_deref();
    let auto = ssh.transport == crate::transport::child::Transport::Auto;
    if ssh.transport == crate::transport::child::Transport::Sftp {
        return sftp::list(user, host, path, ssh, None, events).map_err(hint);
    }
    if !auto || ssh.remote_ferry.is_some() {
        return list_over_stdio(loc, ssh).map_err(hint);
    }
    // auto: SFTP where an earlier run found the remote cannot run ferry;
    // else ferry first, and SFTP (remembered) if it cannot
    if let Some(why) = sftp::remembered_for(ssh, user, host) {
        return sftp::list(user, host, path, ssh, Some(why), events).map_err(hint);
    }
    let (peer, stream) = ChildPeer::ssh_kept(user, host, ssh).map_err(hint)?;
    let counters = Arc::new(Counters::default());
    let listed = session::list_entries_counted(stream, path.clone(), counters.clone());
    let ended = peer.finish_kept(listed.is_err());
    let reached = counters.received.load(Ordering::Relaxed) > 0;
    let as_summary = match &listed {
        Ok(_) => Ok(Summary::default()),
        Err(TransferError::Handshake(HandshakeError::NotFerry(t))) => Err(
            TransferError::Handshake(HandshakeError::NotFerry(t.clone())),
        ),
        Err(TransferError::Handshake(HandshakeError::NoCommonVersion {
            ours_min,
            ours_max,
            theirs_min,
            theirs_max,
        })) => Err(TransferError::Handshake(HandshakeError::NoCommonVersion {
            ours_min: *ours_min,
            ours_max: *ours_max,
            theirs_min: *theirs_min,
            theirs_max: *theirs_max,
        })),
        Err(_) => Err(TransferError::Connection(String::new())),
    };
    let judged =
        sftp::judge(host, &ended, &as_summary, events).map_err(|e| hint(unreached(e, reached)))?;
    if let Some(why) = judged {
        sftp::remember_for(ssh, user, host, &why);
        return sftp::list(user, host, path, ssh, Some(why), events).map_err(hint);
    }
    match (listed, ended.error) {
        (Ok(entries), _) => Ok(entries),
        (Err(e @ TransferError::Handshake(HandshakeError::NotFerry(_))), _) => Err(e),
        (Err(TransferError::Connection(_) | TransferError::Handshake(_)), Some(e)) => {
            Err(hint(unreached(with_message(e, &ended.stderr), reached)))
        }
        (Err(e), _) => Err(hint(e)),
    }
}

/// [`list_path`] through `ferry serve --stdio`, local or over ssh.
fn list_over_stdio(
    loc: &Location,
    ssh: &SshOptions,
) -> Result<Vec<crate::proto::Entry>, TransferError> {
    match loc {
        Location::Local(path) => local::list(path.clone()),
        Location::Ssh {
            user, host, path, ..
        } => {
            let (peer, stream) = ChildPeer::ssh(user.as_deref(), host, ssh)?;
            let counters = Arc::new(Counters::default());
            let listed = session::list_entries_counted(stream, path.clone(), counters.clone());
            let child_error = peer.finish(listed.is_err());
            let reached = counters.received.load(Ordering::Relaxed) > 0;
            match (listed, child_error) {
                (Err(e @ TransferError::Handshake(HandshakeError::NotFerry(_))), _) => Err(e),
                (Err(TransferError::Connection(_) | TransferError::Handshake(_)), Some(e)) => {
                    Err(unreached(e, reached))
                }
                (listed, _) => listed,
            }
        }
        _ => Err(TransferError::Usage(
            "list_path lists a local or an ssh path".into(),
        )),
    }
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
    kept: Option<&mut Option<String>>,
    side: &dyn session::Side,
) -> Result<Summary, TransferError> {
    let (peer, stream) = match kept {
        Some(_) => ChildPeer::ssh_kept(user, host, &plan.ssh)?,
        None => ChildPeer::ssh(user, host, &plan.ssh)?,
    };
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
    let reached = || counters.received.load(Ordering::Relaxed) > 0;
    let Some(fallback) = kept else {
        return finish_child(peer, result).map_err(|e| unreached(e, reached()));
    };
    // (with auto: whether the remote could run ferry at all)
    let ended = peer.finish_kept(result.is_err());
    let judged = sftp::judge(host, &ended, &result, events).map_err(|e| unreached(e, reached()))?;
    match judged {
        Some(why) => {
            *fallback = Some(why);
            result
        }
        None => match (result, ended.error) {
            (Ok(s), _) => Ok(s),
            // what came instead of a hello (a banner) says more than the
            // exit of the remote ferry that met no hello
            (Err(e @ TransferError::Handshake(HandshakeError::NotFerry(_))), _) => Err(e),
            (Err(TransferError::Connection(_) | TransferError::Handshake(_)), Some(e)) => {
                Err(unreached(with_message(e, &ended.stderr), reached()))
            }
            (Err(e), _) => Err(e),
        },
    }
}

/// A connection failure of an ssh peer that never sent a byte is a failure
/// to connect ("ssh to H: …"), not a lost connection.
fn unreached(e: TransferError, reached: bool) -> TransferError {
    match e {
        TransferError::Connection(text) if !reached => TransferError::Connect {
            text,
            why: crate::error::ConnectFailure::Other,
        },
        e => e,
    }
}

/// An error with the last thing the remote side said.
fn with_message(e: TransferError, stderr: &str) -> TransferError {
    match (
        e,
        stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()),
    ) {
        (TransferError::Connection(m), Some(line)) => {
            TransferError::Connection(format!("{m}: {line}"))
        }
        (e, _) => e,
    }
}

fn finish_child(
    peer: ChildPeer,
    result: Result<Summary, TransferError>,
) -> Result<Summary, TransferError> {
    let failed = result.is_err();
    let child_error = peer.finish(failed);
    match (result, child_error) {
        (Ok(s), _) => Ok(s),
        (Err(e @ TransferError::Handshake(HandshakeError::NotFerry(_))), _) => Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ConnectFailure;

    #[test]
    fn only_what_can_heal_is_retried() {
        let connect = |why| TransferError::Connect {
            text: String::new(),
            why,
        };
        use ConnectFailure::*;
        // before a daemon ever answered: only a resolver that did not answer
        for (why, first, later) in [
            (NoSuchName, false, true),
            (ResolverDown, true, true),
            (Refused, false, true),
            (TimedOut, false, true),
            (Unreachable, false, true),
            (Other, false, true),
        ] {
            assert_eq!(retryable(&connect(why), false), first, "{why:?}");
            assert_eq!(retryable(&connect(why), true), later, "{why:?} later");
        }
        let broke = TransferError::Connection("reset".into());
        assert!(retryable(&broke, false));
        let busy = TransferError::Remote(format!("{} (4 sessions)", daemon::BUSY));
        assert!(retryable(&busy, false));
        for never in [
            TransferError::Remote(format!("{}key SHA256:x expired", daemon::ACCESS_DENIED)),
            TransferError::Remote("no module named \"m\"".into()),
            TransferError::HostKey("changed".into()),
            TransferError::Integrity("altered".into()),
            TransferError::Usage("bad".into()),
        ] {
            assert!(!retryable(&never, true), "{never}");
        }
    }

    /// A plan confined to module roots (an API job) reads and writes
    /// nothing through a symlink on the way, whatever checked the paths
    /// before; the same plan unconfined (the CLI) follows the user's links.
    #[test]
    fn a_confined_plan_follows_no_symlink_out_of_its_modules() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let (outside, outside_w) = (t.path().join("outside"), t.path().join("outside_w"));
        for d in [&src, &dst, &outside, &outside_w] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(outside.join("shadow"), b"secret").unwrap();
        std::fs::create_dir(src.join("tree")).unwrap();
        std::fs::write(src.join("tree/a.txt"), b"a").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("evil")).unwrap();
        std::os::unix::fs::symlink(&outside_w, dst.join("evil")).unwrap();
        let local = |p: &std::path::Path, tail: &str| {
            let mut b = p.as_os_str().as_encoded_bytes().to_vec();
            b.extend_from_slice(tail.as_bytes());
            Location::Local(b)
        };
        let plan = |from: Location, to: Location, confined: bool| Plan {
            sources: vec![from],
            dest: to,
            options: Options {
                recursive: true,
                links: true,
                ..Default::default()
            },
            ssh: Default::default(),
            daemon: Default::default(),
            confine: match confined {
                true => Confine {
                    source: Some(src.clone()),
                    dest: Some(dst.clone()),
                },
                false => Confine::default(),
            },
        };
        let run = |p: &Plan| {
            let errors = std::sync::Mutex::new(Vec::new());
            let events = |e: Event| {
                if e.kind == EventKind::Error {
                    errors
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&e.text).into_owned());
                }
            };
            let r = super::run(p, &events, &Cancel::default()).map(|o| o.summary.errors);
            (r, errors.into_inner().unwrap().join("; "))
        };
        // read through a link: listed as an error naming it, nothing sent
        let (r, said) = run(&plan(local(&src, "/evil/"), local(&dst, "/got/"), true));
        assert!(r.is_ok_and(|errors| errors > 0), "{said}");
        assert!(
            said.contains("evil is a symlink that leaves the module"),
            "{said}"
        );
        assert!(!dst.join("got/shadow").exists());
        // written through a link: refused, nothing outside
        let (r, said) = run(&plan(local(&src, "/tree/"), local(&dst, "/evil/"), true));
        assert!(r.is_err(), "{said}");
        assert_eq!(std::fs::read_dir(&outside_w).unwrap().count(), 0);
        // inside the modules, a transfer runs as ever
        let (r, said) = run(&plan(local(&src, "/tree/"), local(&dst, "/ok/"), true));
        assert_eq!(r.ok(), Some(0), "{said}");
        assert_eq!(std::fs::read(dst.join("ok/a.txt")).unwrap(), b"a");
        // unconfined, the user's own link is followed as before
        let (r, said) = run(&plan(local(&src, "/evil/"), local(&dst, "/got/"), false));
        assert_eq!(r.ok(), Some(0), "{said}");
        assert_eq!(std::fs::read(dst.join("got/shadow")).unwrap(), b"secret");
    }

    #[test]
    fn the_doctor_is_told_the_host_as_typed() {
        assert_eq!(doctor_target("gpu2", None), "gpu2");
        assert_eq!(
            doctor_target("gpu2", Some(crate::proto::DEFAULT_PORT)),
            "gpu2"
        );
        assert_eq!(doctor_target("gpu2", Some(7000)), "gpu2:7000");
        assert_eq!(doctor_target("::1", Some(7000)), "[::1]:7000");
        // `ferry doctor ::1` is refused as a host-less ssh path
        let default = crate::proto::DEFAULT_PORT;
        assert_eq!(doctor_target("::1", None), format!("[::1]:{default}"));
        assert_eq!(
            doctor_target("::1", Some(default)),
            format!("[::1]:{default}")
        );
        let hinted = with_doctor_hint(TransferError::Connection("reset".into()), "gpu2");
        assert_eq!(
            hinted.to_string(),
            "connection lost: reset; run `ferry doctor gpu2` to find out why"
        );
        // not a connection failure: left as it is
        let key = with_doctor_hint(TransferError::HostKey("changed".into()), "gpu2");
        assert_eq!(key.to_string(), "changed");
    }
}
