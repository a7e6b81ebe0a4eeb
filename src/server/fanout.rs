//! The daemon's side of fan-out: a control connection from a source (an
//! authorized client key with write access to the module) starts a job on
//! this host; a relay connection from the host before it in the chain (any
//! key the job's signed ticket puts upstream, no authorized_keys entry
//! needed) feeds it data. The job's hop ([`crate::fanout::hop`]) verifies,
//! commits and publishes; its forwarder ([`crate::fanout::relay`]) passes
//! the stream on.
//!
//! Not for the protocol's messages or the chain's rules (`crate::fanout`),
//! nor for the accept loop and key lookup (`super::daemon`).
//!
//! # Security
//! A job is taken only with a ticket signed by the very key that
//! authenticated the control connection, naming this daemon's own key at
//! the position it is given, unexpired, with a manifest whose BLAKE3 the
//! ticket carries, into a module that key may write. A relay is taken only
//! for a job this daemon runs, from a key the ticket names upstream of it;
//! before that, only frames of [`wire::SMALL`] bytes are read, within the
//! pre-auth timeout.

use super::config::{Module, ModuleSymlinks};
use crate::fanout::hop::{Fault, Hop};
use crate::fanout::manifest::{Kind, Manifest};
use crate::fanout::relay::{Forwarder, Fwd, Report, HEARTBEAT};
use crate::fanout::ticket::{ticket_signed_by, Ticket};
use crate::fanout::wire::{self, Msg, Purpose};
use crate::fs::dest::Dest;
use crate::transport::tls::{TlsReader, TlsWriter};
use crate::trust::authorized::Grant;
use crate::trust::key::{Identity, PublicKey};
use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// The jobs this daemon runs, by job id.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<[u8; 16], Arc<Hop>>>);

impl Registry {
    fn get(&self, job: &[u8; 16]) -> Option<Arc<Hop>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .cloned()
    }
}

/// What a fan-out connection needs from the daemon.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub modules: &'a [Module],
    pub identity: Arc<Identity>,
    pub preauth: Duration,
}

/// Serves a fan-out connection whose hello (`hello`, of any fan-out
/// version) was read. `grant` is the client key's grant (`None`: the key is
/// not in authorized_keys, which only a relay may be).
pub fn serve(
    cx: &Context,
    hello: &[u8; 9],
    mut reader: TlsReader,
    mut writer: TlsWriter,
    key: &PublicKey,
    grant: Option<&Grant>,
    sock: Option<TcpStream>,
) -> Result<(), String> {
    if hello != crate::fanout::HELLO {
        // another version's source or hop: one line it can show (a frame
        // of version 1's layout, which `Refused` has kept), nothing read
        let text = crate::fanout::version_refusal(hello);
        let _ = wire::send_now(&mut writer, &Msg::Refused { text: text.clone() });
        return Err(text);
    }
    let _ = reader.set_timeout(Some(cx.preauth));
    let open = wire::expect(&mut reader, wire::SMALL).map_err(|e| e.to_string())?;
    let refuse = |w: &mut TlsWriter, text: String| {
        let _ = wire::send(w, &Msg::Refused { text: text.clone() });
        Err(text)
    };
    match open {
        Msg::Open {
            purpose: Purpose::Control,
            ..
        } => {
            let Some(grant) = grant else {
                return refuse(
                    &mut writer,
                    format!(
                        "access denied: key {} is not authorized here",
                        key.fingerprint()
                    ),
                );
            };
            control(cx, reader, writer, key, grant)
        }
        Msg::Open {
            purpose: Purpose::Relay,
            job,
        } => {
            let Some(hop) = cx.registry.get(&job) else {
                return refuse(&mut writer, "no such fan-out job on this host".into());
            };
            // any host of the ticket may come to feed this one (the source
            // may move a slow host to the tail); what it sends is checked
            // against the source's signatures all the same
            let in_job = hop.ticket.signer == key.0
                || hop
                    .ticket
                    .hosts
                    .iter()
                    .enumerate()
                    .any(|(i, h)| i != hop.index && h.key == key.0);
            if !in_job {
                return refuse(
                    &mut writer,
                    format!("key {} is not in the job's ticket", key.fingerprint()),
                );
            }
            let _ = reader.set_timeout(None);
            relay(&hop, reader, writer, sock)
        }
        m => refuse(&mut writer, format!("expected an open, got {}", m.name())),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a job and opens its destination.
fn take_job(
    cx: &Context,
    key: &PublicKey,
    grant: &Grant,
    ticket_bytes: &[u8],
    sig: &[u8; 64],
    manifest_bytes: &[u8],
    index: u32,
) -> Result<(Ticket, Manifest, Dest), String> {
    let ticket = Ticket::decode(ticket_bytes).map_err(|e| format!("bad ticket: {e}"))?;
    if ticket.signer != key.0 || !ticket_signed_by(key, ticket_bytes, sig) {
        return Err("the ticket is not signed by the key that sent it".into());
    }
    if ticket.expires < now() {
        return Err("the ticket has expired".into());
    }
    let me = ticket
        .hosts
        .get(index as usize)
        .ok_or("the ticket has no host at that position")?;
    if me.key != cx.identity.public.0 {
        return Err("the ticket names another key for this host".into());
    }
    if *blake3::hash(manifest_bytes).as_bytes() != ticket.manifest_root {
        return Err("the manifest is not the one the ticket names".into());
    }
    let mut manifest =
        Manifest::decode(manifest_bytes).map_err(|e| format!("bad manifest: {e}"))?;
    let path = me.path.clone();
    let (name, rest) = match path.iter().position(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..], &b""[..]),
    };
    let name = String::from_utf8_lossy(name);
    let m = cx
        .modules
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| format!("no module named {name:?}"))?;
    grant
        .check(&key.fingerprint(), &m.name, true)
        .map_err(|e| e.to_string())?;
    if m.read_only {
        return Err(format!("module {} is read-only", m.name));
    }
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    // messages name paths relative to the module, never its server-side path
    let mut root = Dest::open(&m.path, false)
        .map_err(|e| format!("module {}: {}", m.name, crate::error::io_text(&e)))?
        .shown_relative();
    let dest = if rest.is_empty() {
        root.sub(b".")
    } else {
        crate::fs::names::check(rest).map_err(|e| format!("path in module {}: {e}", m.name))?;
        let mut at = Vec::new();
        for comp in rest.split(|&b| b == b'/') {
            if !at.is_empty() {
                at.push(b'/');
            }
            at.extend_from_slice(comp);
            match root.mkdir(&at, 0o755) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{}: {}", root.show(&at), crate::error::io_text(&e))),
            }
        }
        root.sub(rest)
    }
    .map_err(|e| format!("destination: {}", crate::error::io_text(&e)))?;
    // the module decides which symlinks a client may make in it
    for e in manifest.entries.iter_mut().filter(|e| e.kind == Kind::Link) {
        match m.symlinks {
            ModuleSymlinks::Verbatim => {}
            ModuleSymlinks::Safe => {
                if !safe_link(&e.path, &e.target) {
                    e.target.clear();
                }
            }
            ModuleSymlinks::Munge => {
                e.target = [crate::proto::MUNGE_PREFIX, &e.target].concat();
            }
        }
    }
    Ok((ticket, manifest, dest))
}

/// Whether a link at `path` to `target` stays inside the tree.
fn safe_link(path: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') || target.is_empty() {
        return false;
    }
    let mut depth = path.iter().filter(|&&b| b == b'/').count() as i64;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn control(
    cx: &Context,
    mut reader: TlsReader,
    mut writer: TlsWriter,
    key: &PublicKey,
    grant: &Grant,
) -> Result<(), String> {
    wire::send(
        &mut writer,
        &Msg::Who {
            key: cx.identity.public.0,
        },
    )
    .map_err(|e| e.to_string())?;
    let _ = reader.set_timeout(Some(Duration::from_secs(60)));
    let (ticket_bytes, sig, manifest_bytes, index) =
        match wire::expect(&mut reader, wire::LARGE).map_err(|e| e.to_string())? {
            Msg::Start {
                ticket,
                sig,
                manifest,
                index,
            } => (ticket, sig, manifest, index),
            m => return Err(format!("expected a job, got {}", m.name())),
        };
    let taken = take_job(cx, key, grant, &ticket_bytes, &sig, &manifest_bytes, index).and_then(
        |(ticket, manifest, dest)| Hop::start(ticket, ticket_bytes, index as usize, manifest, dest),
    );
    let (hop, with_old) = match taken {
        Ok(x) => x,
        Err(text) => {
            let _ = wire::send(&mut writer, &Msg::Refused { text: text.clone() });
            return Err(text);
        }
    };
    let hop = Arc::new(hop);
    let job = hop.ticket.job;
    {
        let mut jobs = cx.registry.0.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.contains_key(&job) {
            let text = "this job is already running on this host".to_string();
            let _ = wire::send(&mut writer, &Msg::Refused { text: text.clone() });
            return Err(text);
        }
        jobs.insert(job, hop.clone());
    }
    info!(job = %hex(&job), index, files = hop.manifest.entries.len(), "fan-out job started");
    let result = run_control(cx, &hop, reader, writer, with_old);
    hop.cancel();
    cx.registry
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job);
    result
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run_control(
    cx: &Context,
    hop: &Arc<Hop>,
    mut reader: TlsReader,
    writer: TlsWriter,
    with_old: Vec<u32>,
) -> Result<(), String> {
    let e = |e: crate::error::TransferError| e.to_string();
    let ready = Msg::Ready { files: with_old };
    if let Some(d) = crate::fanout::ready_delay_hook() {
        std::thread::sleep(d);
    }
    let writer = Arc::new(Mutex::new(writer));
    wire::send(&mut *lockw(&writer), &ready).map_err(e)?;
    drop(ready);
    let _ = reader.set_timeout(None);
    // the source's questions about what this host holds are answered on
    // a thread of their own: an answer waits until the live stream has
    // passed an older window (the hop's memory bound), and orders must
    // not wait behind it
    // (a source asks one window ahead, and again after each window it
    // gave up waiting for: more questions queued than this is misbehavior)
    let (atx, arx) = std::sync::mpsc::sync_channel::<(u32, Vec<(u32, u32, u32)>)>(64);
    {
        let (hop, writer) = (hop.clone(), writer.clone());
        let delay = crate::fanout::hints_delay_hook();
        std::thread::spawn(move || {
            for (window, runs) in arx {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let why = match hop.hints(window, &runs) {
                    Ok(Some(m)) => match wire::send(&mut *lockw(&writer), &m) {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                    Ok(None) => return,
                    Err(Fault::Peer(why)) => format!("the source {why}"),
                    Err(Fault::Local(why)) => why,
                };
                hop.fail(why);
                return;
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let order = hop.order.clone();
    let moved_set = hop.moved.clone();
    let asks_hop = hop.clone();
    let n = hop.ticket.hosts.len();
    let order_delay = crate::fanout::order_delay_hook();
    std::thread::spawn(move || loop {
        match wire::recv(&mut reader, wire::SMALL) {
            Ok(Some(Msg::Link)) => {
                let _ = tx.send(true);
            }
            Ok(Some(Msg::Ask { window, runs })) => {
                if let Err(std::sync::mpsc::TrySendError::Full(_)) = atx.try_send((window, runs)) {
                    // (the job's loop reports it to the source)
                    asks_hop.fail("the source asked about over 64 windows at once".into());
                    return;
                }
            }
            Ok(Some(Msg::Order { hosts, moved }))
                if hosts.iter().chain(&moved).all(|&h| (h as usize) < n) =>
            {
                if let Some(late) = order_delay {
                    std::thread::sleep(late);
                }
                *moved_set.lock().unwrap_or_else(|p| p.into_inner()) =
                    moved.into_iter().map(|h| h as usize).collect();
                *order.lock().unwrap_or_else(|p| p.into_inner()) =
                    hosts.into_iter().map(|h| h as usize).collect();
            }
            _ => {
                let _ = tx.send(false);
                return;
            }
        }
    });
    let mut forwarder: Option<std::thread::JoinHandle<()>> = None;
    let mut done_sent = false;
    loop {
        match rx.recv_timeout(crate::fanout::PROGRESS) {
            Ok(true) if forwarder.is_none() => {
                if let Some(rx) = hop.take_forward() {
                    let f = Forwarder {
                        ticket: Arc::new(hop.ticket.clone()),
                        me: Some(hop.index),
                        order: hop.order.clone(),
                        moved: hop.moved.clone(),
                        blocked: hop.blocked.clone(),
                        identity: cx.identity.clone(),
                        stall: Duration::from_millis(hop.ticket.stall_ms),
                        corrupt: crate::fanout::corrupt_hook(),
                        pace: crate::fanout::pace_hook(),
                    };
                    let h = hop.clone();
                    forwarder = Some(std::thread::spawn(move || f.run(rx, &*h)));
                }
            }
            Ok(true) => {}
            Ok(false) => {
                // the source is gone (finished, or gave up on this host)
                if !done_sent {
                    warn!(job = %hex(&hop.ticket.job), "fan-out job ended before it completed");
                }
                return Ok(());
            }
            Err(_) => {}
        }
        for r in hop.take_reports() {
            let Report::Bypassed { host, why } = r;
            warn!(job = %hex(&hop.ticket.job), host, "bypassed the next host: {why}");
            wire::send(&mut *lockw(&writer), &Msg::Bypassed { host, why }).map_err(e)?;
        }
        if let Some(text) = hop.error() {
            let _ = wire::send(&mut *lockw(&writer), &Msg::Refused { text: text.clone() });
            return Err(text);
        }
        let (received, committed, refused, _) = hop.counts();
        if !done_sent {
            match hop.complete() {
                Ok(true) => {
                    done_sent = true;
                    info!(job = %hex(&hop.ticket.job), received, refused, "fan-out job complete");
                    wire::send(&mut *lockw(&writer), &Msg::Done { received, refused })
                        .map_err(e)?;
                }
                Ok(false) => {
                    let blocked_ms = hop.blocked.load(std::sync::atomic::Ordering::Relaxed) / 1000;
                    wire::send(
                        &mut *lockw(&writer),
                        &Msg::Progress {
                            received,
                            committed,
                            blocked_ms,
                        },
                    )
                    .map_err(e)?;
                }
                Err(text) => {
                    let _ = wire::send(&mut *lockw(&writer), &Msg::Refused { text: text.clone() });
                    return Err(text);
                }
            }
        }
    }
}

/// Takes data from the host before this one.
fn relay(
    hop: &Arc<Hop>,
    mut reader: TlsReader,
    writer: TlsWriter,
    sock: Option<TcpStream>,
) -> Result<(), String> {
    let writer = Arc::new(Mutex::new(writer));
    let gen = hop.new_upstream(sock, Some(writer.clone()));
    // where the stream stands once the old upstream's reader (if any) has
    // put down what it holds: the new predecessor replays from exactly here
    let have = {
        let _intake = hop.intake();
        Msg::Have {
            files: hop.have(),
            at: hop.stream_pos(),
        }
    };
    wire::send(&mut *lockw(&writer), &have).map_err(|e| e.to_string())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (w, stop, hop) = (writer.clone(), stop.clone(), hop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, _, _, handled) = hop.counts();
                let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
                if wire::send(&mut *g, &Msg::Ack { committed: handled }).is_err() {
                    return;
                }
                drop(g);
                std::thread::sleep(HEARTBEAT);
            }
        });
    }
    struct Stop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _stop = Stop(stop);
    let mut nacked = std::collections::HashSet::new();
    let mut done_sent = false;
    let pace = crate::fanout::receive_pace_hook();
    loop {
        let m = match wire::recv(&mut reader, crate::fanout::FRAME + 1024) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => {
                if hop.is_current(gen) {
                    return Err(format!("upstream: {e}"));
                }
                return Ok(());
            }
        };
        // (released before the next read: an upstream replaced meanwhile
        // takes nothing more)
        let _intake = hop.intake();
        if !hop.is_current(gen) {
            return Ok(());
        }
        match m {
            Msg::Data {
                file,
                offset,
                resend,
                bytes,
            } => {
                if let Some(p) = pace {
                    std::thread::sleep(p);
                }
                if let Err(why) = hop.write(file, offset, &bytes) {
                    let _ = wire::send(&mut *lockw(&writer), &Msg::Refused { text: why.clone() });
                    return Err(why);
                }
                if !resend {
                    hop.passed(file, (offset / crate::fanout::PIECE) as u32, false);
                    let len = bytes.len() as u64;
                    hop.forward(Fwd::Data {
                        file,
                        offset,
                        bytes,
                    });
                    hop.took_data(file, offset, len);
                }
            }
            Msg::Ref {
                file,
                offset,
                len,
                skip,
                chunk,
            } => {
                if let Err(fault) = hop.copy_chunk(file, offset, len, skip, &chunk) {
                    let why = match fault {
                        Fault::Peer(why) => why,
                        Fault::Local(why) => {
                            hop.fail(why.clone());
                            why
                        }
                    };
                    let _ = wire::send(&mut *lockw(&writer), &Msg::Refused { text: why.clone() });
                    return Err(why);
                }
                hop.passed(file, (offset / crate::fanout::PIECE) as u32, false);
                hop.forward(Fwd::Ref {
                    file,
                    offset,
                    len,
                    skip,
                    chunk,
                });
                hop.took_data(file, offset, len as u64);
            }
            Msg::PieceEnd {
                file,
                piece,
                resend,
                hash,
                sig,
            } => {
                let ok = match hop.finish_piece(file, piece, &hash, &sig) {
                    Ok(ok) => ok,
                    Err(fault) => {
                        let why = match fault {
                            Fault::Peer(why) => why,
                            Fault::Local(why) => {
                                hop.fail(why.clone());
                                why
                            }
                        };
                        let _ =
                            wire::send(&mut *lockw(&writer), &Msg::Refused { text: why.clone() });
                        return Err(why);
                    }
                };
                if ok {
                    nacked.remove(&(file, piece));
                } else {
                    warn!(job = %hex(&hop.ticket.job), file, piece, "a piece did not match its signed hash: asked for it again");
                    nacked.insert((file, piece));
                    wire::send(&mut *lockw(&writer), &Msg::Nack { file, piece })
                        .map_err(|e| e.to_string())?;
                }
                if !resend {
                    hop.passed(file, piece, true);
                    hop.forward(Fwd::PieceEnd {
                        file,
                        piece,
                        hash,
                        sig,
                    });
                    hop.took_end(file, piece);
                } else if ok {
                    // a moved host is fed only re-sent pieces: what it
                    // commits so is what it can feed a host moved after it
                    hop.forward(Fwd::Committed { file, piece });
                }
            }
            Msg::End => {
                hop.saw_end();
                hop.forward(Fwd::End);
                for (file, piece) in hop.missing() {
                    if nacked.insert((file, piece)) {
                        wire::send(&mut *lockw(&writer), &Msg::Nack { file, piece })
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            m => return Err(format!("upstream sent {} on a relay", m.name())),
        }
        if !done_sent && hop.complete().unwrap_or(false) {
            done_sent = true;
            let (received, _, refused, _) = hop.counts();
            wire::send(&mut *lockw(&writer), &Msg::Done { received, refused })
                .map_err(|e| e.to_string())?;
        }
    }
}

fn lockw(w: &Mutex<TlsWriter>) -> std::sync::MutexGuard<'_, TlsWriter> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}
