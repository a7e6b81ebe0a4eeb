//! The accept loop and what happens on each connection.
//!
//! ```text
//! accept ─► (connection limit) ─► TLS handshake within the pre-auth timeout
//!        ─► client key looked up in authorized_keys (re-read per connection)
//!        ─► refused: the reason, and close    accepted: serve requests within
//!                                              the key's grant and the modules
//! ```
//!
//! # Security
//! Before authentication the daemon reads nothing but the TLS handshake and the
//! 9-byte protocol hello, all under the pre-auth timeout and the connection
//! limit. Module paths are resolved beneath the module root without following
//! symlinks, on both the sending and the receiving side.

use super::config::{DaemonConfig, Module};
use crate::error::TransferError;
use crate::fs::names;
use crate::proto::{ModuleInfo, Request, Role};
use crate::session::{self, Refusal, Serve};
use crate::transport::daemon::{ACCESS_DENIED, BUSY};
use crate::transport::Stream;
use crate::trust::authorized::{AuthorizedKeys, Denied, Grant, LoadError};
use crate::trust::key::{Identity, KeyError, PublicKey};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Loads the daemon's key, making one on first start (like sshd's host keys).
fn host_identity(path: &std::path::Path) -> Result<Identity, KeyError> {
    if path.exists() {
        return Identity::load(path);
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let id = Identity::generate(&format!("ferry-daemon@{}", host.trim()));
    id.save(path)?;
    info!(path = %path.display(), fingerprint = %id.public.fingerprint(), "generated the daemon's key");
    Ok(id)
}

/// Loads authorized_keys, logging each skipped line.
fn load_keys(path: &std::path::Path) -> Result<AuthorizedKeys, LoadError> {
    let (keys, problems) = AuthorizedKeys::load(path)?;
    for p in problems {
        warn!(file = %path.display(), "{p}");
    }
    Ok(keys)
}

/// Whether authorized_keys (or its directory) does not exist: no key is
/// authorized yet, which is not an error.
fn not_found(e: &LoadError) -> bool {
    matches!(e, LoadError::Read(p) if p.source.kind() == std::io::ErrorKind::NotFound)
}

/// How an administrator lets a first client in.
fn how_to_authorize(file: &std::path::Path) -> String {
    format!(
        "Add a client's key on this host with `ferry trust add --authorized-keys {} KEY.pub`, \
         or from the client with `ferry copy-id HOST` (over ssh)",
        file.display()
    )
}

/// Splits `module/rest` and finds the module.
pub(super) fn module_of<'m>(
    modules: &'m [Module],
    path: &[u8],
) -> Result<(&'m Module, Vec<u8>), Refusal> {
    let (name, rest) = match path.iter().position(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, &b""[..]),
    };
    let name = String::from_utf8_lossy(name);
    let m = modules.iter().find(|m| m.name == name).ok_or_else(|| {
        Refusal::NotFound(format!(
            "no module named {name:?} (list them with `ferry ls HOST::`)"
        ))
    })?;
    // its directory may have gone since the daemon started: refused here,
    // as rsync's `@ERROR: chdir failed`, rather than accepted and dropped
    // (which the client took for a lost connection and retried). The
    // message names the module, never its path on this host.
    if let Err(e) = std::fs::read_dir(&m.path) {
        return Err(Refusal::NotFound(format!(
            "module {}: chdir failed: {} (the module's directory on the daemon)",
            m.name,
            crate::error::io_text(&e)
        )));
    }
    // the rest must be a clean relative path (a trailing slash is meaningful)
    let trimmed = rest.strip_suffix(b"/").unwrap_or(rest);
    if !trimmed.is_empty() {
        names::check(trimmed)
            .map_err(|e| Refusal::Invalid(format!("path in module {}: {e}", m.name)))?;
    }
    Ok((m, rest.to_vec()))
}

/// What a key may do with a request, turned into what the server does.
fn decide(modules: &[Module], grant: &Grant, fp: &str, r: &Request) -> Result<Serve, Refusal> {
    let denied = |e: Denied| Refusal::Denied(e.to_string());
    match r.role {
        Role::ListModules => Ok(Serve::Modules(
            modules
                .iter()
                .filter(|m| grant.may_see(&m.name))
                .map(|m| ModuleInfo {
                    name: m.name.clone(),
                    comment: m.comment.clone(),
                    read_only: m.read_only || grant.read_only,
                })
                .collect(),
        )),
        Role::ServerSends => {
            let mut root: Option<&Module> = None;
            let mut sources = Vec::new();
            for p in &r.paths {
                let (m, rest) = module_of(modules, p)?;
                grant.check(fp, &m.name, false).map_err(denied)?;
                if root.is_some_and(|r| r.name != m.name) {
                    return Err(Refusal::Invalid(
                        "all sources of one transfer must be in the same module".into(),
                    ));
                }
                root = Some(m);
                let mut full = m.path.as_os_str().as_encoded_bytes().to_vec();
                // -R names paths relative to the module, never the module's own path
                full.extend_from_slice(if r.options.relative { b"/./" } else { b"/" });
                full.extend_from_slice(&rest);
                sources.push(full);
            }
            let m = root.ok_or_else(|| Refusal::Invalid("no source named".into()))?;
            // --remove-source-files writes to the module: only where a push may
            if r.options.dest_side.remove_source_files {
                grant.check(fp, &m.name, true).map_err(denied)?;
                if m.read_only {
                    return Err(Refusal::Denied(format!(
                        "--remove-source-files: module {} is read-only",
                        m.name
                    )));
                }
            }
            let mut options = r.options.clone();
            // a daemon never follows a symlink out of its module
            options.follow_links = false;
            options.copy_unsafe_links = false;
            options.copy_dirlinks = false;
            Ok(Serve::Send {
                sources,
                options,
                confine: Some(m.path.clone()),
            })
        }
        Role::JoinStream => Err(Refusal::Invalid("a stream join is not a request".into())),
        Role::ServerReceives => {
            let (m, rest) = module_of(modules, &r.paths[0])?;
            grant.check(fp, &m.name, true).map_err(denied)?;
            if m.read_only {
                return Err(Refusal::Denied(format!("module {} is read-only", m.name)));
            }
            // -K would follow links already in the module wherever they
            // point: a module is never written through a link
            if r.options.keep_dirlinks {
                return Err(Refusal::Denied(
                    "-K/--keep-dirlinks: a daemon module never follows a symlink when it writes"
                        .into(),
                ));
            }
            let mut options = r.options.clone();
            // the daemon writes as itself: a client cannot hand files to other
            // users (setuid and setgid bits are dropped by the receiver too)
            options.owner = false;
            options.group = false;
            // the module says which symlinks a client may make in it
            options.symlinks = m.symlinks.allow(options.symlinks);
            Ok(Serve::Receive {
                dest: if rest.is_empty() {
                    b"./".to_vec()
                } else {
                    rest
                },
                options,
                beneath: Some(m.path.clone()),
            })
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Shared {
    config: DaemonConfig,
    tls: Arc<rustls::ServerConfig>,
    /// Connection threads alive (authenticating or serving).
    active: AtomicUsize,
    /// Authenticated sessions.
    sessions: AtomicUsize,
    /// The last connection thread ended since the accept loop last looked:
    /// it gives freed memory back once nothing runs.
    went_idle: AtomicBool,
    /// Connections still authenticating, oldest first, to evict when full.
    startups: std::sync::Mutex<std::collections::VecDeque<(u64, TcpStream)>>,
    /// Transfers that extra streams may join: token → (client key, queue).
    joins: std::sync::Mutex<JoinRegistry>,
    /// Fan-out jobs running here, and the key this daemon relays with.
    fanout: super::fanout::Registry,
    identity: Arc<Identity>,
}

type JoinRegistry = std::collections::HashMap<[u8; 16], (String, std::sync::mpsc::Sender<Stream>)>;

impl Shared {
    /// Registers a new unauthenticated connection, dropping the oldest one if
    /// the pool is full.
    fn start_up(&self, id: u64, sock: &TcpStream) {
        let mut q = self.startups.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.config.max_startups {
            if let Some((_, oldest)) = q.pop_front() {
                let _ = oldest.shutdown(std::net::Shutdown::Both);
                info!(peer = ?oldest.peer_addr().ok(), "too many connections authenticating: dropped the oldest");
            }
        }
        if let Ok(clone) = sock.try_clone() {
            q.push_back((id, clone));
        }
    }

    fn started(&self, id: u64) {
        let mut q = self.startups.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|(i, _)| *i != id);
    }
}

/// A connection thread (and its id), counted in [`Shared::active`] until it
/// ends, however it ends; out of the pool of connections authenticating too.
struct Alive(Arc<Shared>, u64);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.started(self.1);
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.went_idle.store(true, Ordering::SeqCst);
        }
    }
}

fn handle(shared: &Shared, id: u64, sock: TcpStream, peer: SocketAddr) {
    let conn = match rustls::server::UnbufferedServerConnection::new(shared.tls.clone()) {
        Ok(c) => c,
        Err(e) => return warn!(%peer, "TLS setup failed: {e}"),
    };
    shared.start_up(id, &sock);
    // kept to cut a fan-out relay that a new predecessor replaces
    let raw = sock.try_clone().ok();
    let established = crate::transport::tls::establish(conn, sock, shared.config.preauth_timeout);
    shared.started(id);
    let (mut reader, writer, key) = match established {
        Ok(x) => x,
        Err(e) => return info!(%peer, "connection closed before authentication: {e}"),
    };
    let fp = key.fingerprint();
    let ip: IpAddr = peer.ip();
    // the TLS handshake proved the client holds `key`: it may learn which
    // rule refuses its own key; a stranger's key is simply not authorized
    let grant = match load_keys(&shared.config.authorized_keys) {
        Ok(keys) => keys.authorize(&key, ip, now()).map_err(|e| {
            let reason = e.reason();
            (format!("{ACCESS_DENIED}{e}"), reason, None)
        }),
        Err(e) if not_found(&e) => {
            let e = Denied::Unknown(fp.clone());
            Err((format!("{ACCESS_DENIED}{e}"), e.reason(), None))
        }
        // the file's path and trouble are the administrator's, not the
        // client's: as sshd's StrictModes, the client is only not authorized
        // and the log says why
        Err(e) => {
            let denied = Denied::Unknown(fp.clone());
            Err((
                format!("{ACCESS_DENIED}{denied}"),
                "authorized_keys unusable",
                Some(format!(
                    "the daemon cannot use its authorized_keys file ({e}); no key is authorized until it is fixed"
                )),
            ))
        }
    };
    let fanout = |reader, writer, grant: Option<&Grant>, raw, hello: [u8; 9]| {
        let cx = super::fanout::Context {
            registry: &shared.fanout,
            modules: &shared.config.modules,
            identity: shared.identity.clone(),
            preauth: shared.config.preauth_timeout,
        };
        match super::fanout::serve(&cx, &hello, reader, writer, &key, grant, raw) {
            Ok(()) => info!(%peer, fingerprint = %fp, "fan-out connection done"),
            Err(e) => warn!(%peer, fingerprint = %fp, "fan-out connection ended: {e}"),
        }
    };
    let grant = match grant {
        Ok(g) => g,
        Err((why, reason, detail)) => {
            // no read on a refused connection may wait longer than the pre-auth timeout
            let _ = reader.set_timeout(Some(shared.config.preauth_timeout));
            // a fan-out relay from a host before this one in a job's chain
            // needs no authorized key: its job's signed ticket decides
            let mut hello = [0u8; 9];
            if std::io::Read::read_exact(&mut reader, &mut hello).is_err() {
                return;
            }
            if crate::fanout::is_fanout_hello(&hello) {
                return fanout(reader, writer, None, raw, hello);
            }
            let said = why.strip_prefix(ACCESS_DENIED).unwrap_or(&why);
            let said = detail.as_deref().unwrap_or(said);
            warn!(%peer, fingerprint = %fp, reason, "refused: {said}");
            let stream = Stream {
                reader: Box::new(std::io::Read::chain(std::io::Cursor::new(hello), reader)),
                writer: Box::new(writer),
                in_process: false,
            };
            let _ = session::refuse(stream, &why);
            return;
        }
    };
    let mut hello = [0u8; 9];
    let _ = reader.set_timeout(Some(shared.config.preauth_timeout));
    if std::io::Read::read_exact(&mut reader, &mut hello).is_err() {
        return;
    }
    let _ = reader.set_timeout(None);
    if crate::fanout::is_fanout_hello(&hello) {
        return fanout(reader, writer, Some(&grant), raw, hello);
    }
    let stream = Stream {
        reader: Box::new(super::stats::CountRead(std::io::Read::chain(
            std::io::Cursor::new(hello),
            reader,
        ))),
        writer: Box::new(super::stats::CountWrite(writer)),
        in_process: false,
    };
    if shared.sessions.fetch_add(1, Ordering::SeqCst) >= shared.config.max_connections {
        shared.sessions.fetch_sub(1, Ordering::SeqCst);
        let why = format!(
            "{BUSY} ({} sessions); try again later",
            shared.config.max_connections
        );
        warn!(%peer, fingerprint = %fp, "refused: {why}");
        let _ = session::refuse(stream, &why);
        return;
    }
    struct Session<'a>(&'a AtomicUsize);
    impl Drop for Session<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _session = Session(&shared.sessions);
    let _counted = super::stats::Open::start();
    info!(%peer, fingerprint = %fp, "authenticated");
    let modules = &shared.config.modules;
    // `ferry shell host::module`: a request/response session of its own
    if super::shell::wanted(&hello) {
        return super::shell::serve(stream, modules, &grant, &fp, peer);
    }
    let role = std::cell::Cell::new(None);
    let policy = |r: &Request| {
        role.set(Some(r.role));
        let d = decide(modules, &grant, &fp, r);
        match &d {
            Ok(_) => {
                info!(%peer, fingerprint = %fp, role = ?r.role, paths = %show_paths(&r.paths), "request")
            }
            Err(why) => {
                let reason = match why {
                    Refusal::NotFound(_) => "not found",
                    Refusal::Invalid(_) => "invalid request",
                    Refusal::Denied(_) => "not granted",
                };
                warn!(%peer, fingerprint = %fp, reason, "request refused: {why}")
            }
        }
        d
    };
    // extra streams may join this transfer, from the same key only
    let registered = std::cell::RefCell::new(Vec::new());
    let lock_joins = || shared.joins.lock().unwrap_or_else(|p| p.into_inner());
    let register = || {
        let mut token = [0u8; 16];
        aws_lc_rs::rand::fill(&mut token).expect("system randomness");
        let (tx, rx) = std::sync::mpsc::channel();
        lock_joins().insert(token, (fp.clone(), tx));
        registered.borrow_mut().push(token);
        (token, rx)
    };
    let join = |t: &[u8; 16]| {
        lock_joins()
            .get(t)
            .filter(|(owner, _)| *owner == fp)
            .map(|(_, tx)| {
                let tx = tx.clone();
                Box::new(move |s| {
                    let _ = tx.send(s);
                }) as session::Deliver
            })
    };
    let streams = session::Streams {
        register: &register,
        join: &join,
    };
    let result = session::serve_with(stream, &policy, Some(&streams));
    for t in registered.borrow().iter() {
        lock_joins().remove(t);
    }
    match result {
        Ok(s) => {
            match role.get() {
                Some(Role::ServerSends) => super::stats::files(true, s.transferred),
                Some(Role::ServerReceives) => super::stats::files(false, s.transferred),
                _ => {}
            }
            info!(%peer, fingerprint = %fp, files = s.files, transferred = s.transferred, "done")
        }
        // an extra stream that came after its transfer had ended (a small
        // copy is done before its extra connections arrive): nothing wrong
        Err(TransferError::Usage(t)) if t == crate::session::NO_SUCH_TRANSFER => {
            tracing::debug!(%peer, fingerprint = %fp, "extra stream too late: {t}")
        }
        Err(e) => warn!(%peer, fingerprint = %fp, "ended: {e}"),
    }
}

fn show_paths(paths: &[Vec<u8>]) -> String {
    paths
        .iter()
        .map(|p| names::escape(p))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long an authenticated connection may be silent before the kernel
/// starts asking whether the peer is still there.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long between those questions.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How many unanswered questions mean the peer is gone.
const KEEPALIVE_PROBES: u32 = 6;
/// How long data the daemon sent may stay unacknowledged before the
/// connection is given up (`TCP_USER_TIMEOUT`).
const UNACKED_LIMIT: Duration = Duration::from_secs(120);

/// Lets the kernel notice a client that vanished without closing (its host
/// powered off, a cable pulled, a firewall that drops): a session blocked
/// reading from such a peer ends after about `KEEPALIVE_IDLE` +
/// `KEEPALIVE_INTERVAL` × `KEEPALIVE_PROBES` (2 minutes), one blocked
/// writing to it after `UNACKED_LIMIT`, and its slot is free again. A
/// killed client process needs none of this: its kernel closes the socket.
/// Keepalive, not a read timeout, because a live client may be silent for
/// long (hashing a large file before it asks for anything).
fn keep_alive(sock: &TcpStream) {
    let s = socket2::SockRef::from(sock);
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = s
        .set_tcp_keepalive(&ka)
        .and_then(|()| s.set_tcp_user_timeout(Some(UNACKED_LIMIT)))
    {
        warn!("cannot set TCP keepalive: {e}");
    }
}

/// The key clients should expect, for `ferry serve` to print.
pub fn fingerprint(config: &DaemonConfig) -> Result<PublicKey, KeyError> {
    host_identity(&config.identity).map(|i| i.public)
}

/// Binds every address the daemon listens on. `ferry serve` calls it first,
/// so an address in use fails before a key is made or a warning logged. An
/// address it cannot listen on (in use, not this machine's) is a local
/// fault, [`TransferError::Local`].
pub fn bind(config: &DaemonConfig) -> Result<Vec<TcpListener>, TransferError> {
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listen = |e: std::io::Error| TransferError::local(format!("listen on {addr}"), &e);
        let l = TcpListener::bind(addr).map_err(listen)?;
        l.set_nonblocking(true)
            .map_err(|e| TransferError::Usage(e.to_string()))?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serves until `shutdown` is set (SIGTERM, SIGINT), then waits for the
/// transfers in progress to end, on the `listeners` [`bind`] made. `ready`
/// gets the bound addresses.
///
/// A configuration it cannot serve is a [`TransferError::Usage`].
/// Raises this process's soft limit on open descriptors to its hard limit
/// (as OpenSSH's sshd and most servers do): each connection's receiver
/// holds a few directories open, and the default soft limit of 1,024 would
/// run out part-way through transfers on a busy daemon. A `ulimit -n` the
/// administrator set is the hard limit too, and stays.
pub fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%e, "could not raise the open-descriptor limit");
        }
    }
}

pub fn run(
    config: DaemonConfig,
    listeners: Vec<TcpListener>,
    shutdown: Arc<AtomicBool>,
    ready: &dyn Fn(&[SocketAddr]),
) -> Result<(), TransferError> {
    // a key or authorized_keys it cannot use is a usage error (exit 1), as
    // it always was
    let usage = |e: &dyn std::fmt::Display| TransferError::Usage(e.to_string());
    let identity = host_identity(&config.identity)
        .map_err(|e| TransferError::Usage(format!("the daemon's key: {e}")))?;
    // refuse to start with keys anyone could have planted; without the
    // file, start, and say how to let a client in
    match load_keys(&config.authorized_keys) {
        Ok(keys) if keys.keys.is_empty() => warn!(
            file = %config.authorized_keys.display(),
            "no client key is authorized: no client can get in yet. {}",
            how_to_authorize(&config.authorized_keys)
        ),
        Ok(_) => {}
        Err(e) if not_found(&e) => warn!(
            file = %config.authorized_keys.display(),
            "no authorized_keys file: no client can get in yet. {}",
            how_to_authorize(&config.authorized_keys)
        ),
        Err(e) => return Err(usage(&e)),
    }
    if config.modules.is_empty() {
        return Err(TransferError::Usage(
            "no modules: add --module NAME=PATH or [[module]] in the config file".into(),
        ));
    }
    let tls = crate::trust::tls::server_config(&identity)
        .map_err(|e| TransferError::Usage(format!("TLS: {e}")))?;
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    info!(addresses = ?bound, fingerprint = %identity.public.fingerprint(), modules = config.modules.len(), "listening");
    ready(&bound);
    let shared = Arc::new(Shared {
        config,
        tls,
        active: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
        went_idle: AtomicBool::new(false),
        startups: std::sync::Mutex::new(std::collections::VecDeque::new()),
        joins: std::sync::Mutex::new(Default::default()),
        fanout: Default::default(),
        identity: Arc::new(identity),
    });
    let mut next_id = 0u64;
    let mut memory = super::memory::Idle::default();
    while !shutdown.load(Ordering::Relaxed) {
        let mut idle = true;
        for l in &listeners {
            match l.accept() {
                Ok((sock, peer)) => {
                    idle = false;
                    let _ = sock.set_nonblocking(false);
                    keep_alive(&sock);
                    // threads are bounded by both pools (and a little slack for
                    // connections on their way out)
                    let cap = shared.config.max_connections + shared.config.max_startups + 16;
                    if shared.active.load(Ordering::Relaxed) >= cap {
                        warn!(%peer, limit = cap, "connection limit reached: closed");
                        continue;
                    }
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    let s = shared.clone();
                    next_id += 1;
                    let id = next_id;
                    let spawned = std::thread::Builder::new()
                        .name(format!("ferry-conn-{peer}"))
                        .spawn(move || {
                            // counted out even if the thread panics: shutdown
                            // waits for the count to reach zero
                            let alive = Alive(s, id);
                            handle(&alive.0, id, sock, peer);
                        });
                    if let Err(e) = spawned {
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                        warn!(%peer, "cannot start a thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => warn!("accept: {e}"),
            }
        }
        if idle {
            // after load: what the connection threads freed back to the system
            if shared.active.load(Ordering::SeqCst) == 0 {
                if shared.went_idle.swap(false, Ordering::SeqCst) {
                    memory.work_ended();
                }
                memory.tick();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(listeners);
    let n = shared.active.load(Ordering::Relaxed);
    if n > 0 {
        info!(
            transfers = n,
            "shutting down: waiting for transfers in progress"
        );
    }
    while shared.active.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    info!("stopped");
    Ok(())
}

/// Paths the daemon's files default to, for `--help`.
pub fn default_paths(config_dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (
        config_dir.join("id_ed25519"),
        config_dir.join("authorized_keys"),
    )
}
