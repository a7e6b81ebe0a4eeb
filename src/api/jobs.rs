//! What a job is: the submitted body ([`JobSpec`], unknown fields refused),
//! its resolution into a transfer [`Plan`] (module paths of this daemon or
//! another daemon, never a bare local path), how a failure is classified
//! (transient, retried; or permanent, with its own code), and the job
//! resource as the API shows it. Not for running jobs (`runner`) or HTTP.

use crate::error::TransferError;
use crate::location::Location;
use crate::proto::Options;
use crate::server::config::Module;
use crate::transfer::Plan;
use crate::transport::daemon::DaemonOptions;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Copy,
    Sync,
    /// One module of this daemon to many daemons as a verified pipelined
    /// chain (`ferry fanout`): `src` and `destinations`, no `dst`
    Fanout,
}

/// Transient faults after which a job without `max_faults` fails (it fails
/// at the 10th, having retried 9 times). With the backoff (0.5 s doubling
/// to 10 s) a peer that stays down ends the job after about 55 s, and the
/// queue moves on.
pub const DEFAULT_MAX_FAULTS: u32 = 10;

/// A deadline: seconds after submission, or an RFC 3339 UTC time.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Deadline {
    /// Seconds after submission
    Seconds(u64),
    /// An RFC 3339 UTC time, e.g. 2026-12-04T21:00:00Z
    At(String),
}

/// A rate as the CLI's `--bwlimit` takes it: KiB/s, or with a suffix.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Rate {
    /// KiB/s
    KiB(u64),
    /// With a suffix, e.g. 10M
    Text(String),
}

/// A fan-out's stall timeout: seconds, or with a unit as the CLI takes it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stall {
    /// Seconds
    Seconds(u64),
    /// With a unit, e.g. 500ms, 10s, 2m
    Text(String),
}

/// The body of `POST /v1/jobs`. Options are named as the CLI names them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub op: Op,
    /// MODULE/PATH of this daemon, HOST::MODULE/PATH, ferry://HOST[:PORT]/MODULE/PATH
    /// or s3://BUCKET/PREFIX
    pub src: String,
    /// Like src; one of the two is a module of this daemon (not with op
    /// fanout, which names `destinations`)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dst: String,
    /// Op fanout only: the daemons that get src, in chain order
    /// (HOST::MODULE/PATH or ferry://HOST[:PORT]/MODULE/PATH, no daemon
    /// twice); each trusts this daemon's key for its module
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Op fanout only: bypass a host that says nothing for this long
    /// (default 10 s)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout: Option<Stall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128)]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Deadline>,
    /// The transient fault at which the job fails with max_faults_exceeded
    /// (default 10: about a minute of backoff against a peer that is down;
    /// 1 fails at the first fault, without a retry)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_faults: Option<u32>,
    #[serde(default)]
    pub delete: bool,
    #[serde(default)]
    pub checksum: bool,
    #[serde(default)]
    pub compress: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 19)]
    pub compress_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<Rate>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub update: bool,
    #[serde(default)]
    pub sparse: bool,
    #[serde(default)]
    pub hard_links: bool,
    #[serde(default)]
    pub fsync: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 8)]
    pub streams: Option<u8>,
}

/// Why a spec cannot be run: a field and what is wrong with it (422), or a
/// module the key may not use (403).
#[derive(Debug)]
pub enum Invalid {
    Field {
        pointer: &'static str,
        detail: String,
    },
    Forbidden(String),
}

fn field(pointer: &'static str, detail: impl Into<String>) -> Invalid {
    Invalid::Field {
        pointer,
        detail: detail.into(),
    }
}

/// One side of a job, resolved.
#[derive(Debug, Clone)]
pub struct Side {
    pub location: Location,
    /// The module named (of this daemon or the other), for allow-lists.
    pub module: String,
    /// For a module of this daemon: its root, which the transfer never
    /// leaves (no symlink followed on the way).
    pub root: Option<PathBuf>,
}

impl Side {
    /// The path on this machine, for a module of this daemon.
    pub fn local_path(&self) -> Option<&[u8]> {
        match &self.location {
            Location::Local(p) => Some(p),
            _ => None,
        }
    }
}

/// Resolves `addr` (`module/path`, `host::module/path`, `ferry://host/module/path`,
/// `s3://bucket/prefix`: the bucket reached with the daemon's own S3
/// settings, its AWS_* environment and profile).
pub fn side(
    addr: &str,
    pointer: &'static str,
    modules: &[Module],
    writing: bool,
) -> Result<Side, Invalid> {
    if addr.is_empty() {
        return Err(field(pointer, "empty address"));
    }
    if addr.starts_with("ferry://") || addr.contains("::") {
        let loc = Location::parse(std::ffi::OsStr::new(addr))
            .map_err(|e| field(pointer, e.to_string()))?;
        let Location::Daemon { path, .. } = &loc else {
            return Err(field(pointer, format!("{addr:?} is not a daemon address")));
        };
        let module =
            String::from_utf8_lossy(path.split(|&b| b == b'/').next().unwrap_or(b"")).into_owned();
        if module.is_empty() {
            return Err(field(pointer, format!("{addr:?} names no module")));
        }
        return Ok(Side {
            location: loc,
            module,
            root: None,
        });
    }
    if addr.starts_with("s3://") {
        let loc = Location::parse(std::ffi::OsStr::new(addr))
            .map_err(|e| field(pointer, e.to_string()))?;
        let Location::S3 { bucket, .. } = &loc else {
            return Err(field(pointer, format!("{addr:?} is not an s3:// address")));
        };
        // for a key's module allow-list, a bucket is named s3://BUCKET
        let module = format!("s3://{bucket}");
        return Ok(Side {
            location: loc,
            module,
            root: None,
        });
    }
    if addr.starts_with('/') || addr.contains(':') {
        return Err(field(
            pointer,
            format!("{addr:?}: a job names a module path (MODULE/PATH), another daemon (HOST::MODULE/PATH, ferry://HOST/MODULE/PATH) or a bucket (s3://BUCKET/PREFIX), never a local path"),
        ));
    }
    let (name, rest) = addr.split_once('/').unwrap_or((addr, ""));
    let m = modules
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| field(pointer, format!("no module named {name:?} on this daemon")))?;
    if writing && m.read_only {
        return Err(Invalid::Forbidden(format!("module {name} is read-only")));
    }
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    if !trimmed.is_empty() {
        crate::fs::names::check(trimmed.as_bytes())
            .map_err(|e| field(pointer, format!("path in module {name}: {e}")))?;
    }
    let mut full = m.path.as_os_str().as_encoded_bytes().to_vec();
    full.push(b'/');
    full.extend_from_slice(rest.as_bytes());
    Ok(Side {
        location: Location::Local(full),
        module: name.to_string(),
        root: Some(m.path.clone()),
    })
}

/// A spec checked and resolved.
pub struct Resolved {
    pub src: Side,
    /// For a fan-out: its first destination.
    pub dst: Side,
    pub options: Options,
    pub deadline_ms: Option<i64>,
    /// For op fanout: the chain.
    pub fanout: Option<Fanout>,
}

/// A fan-out job's chain, checked.
pub struct Fanout {
    pub targets: Vec<crate::fanout::source::Target>,
    pub stall: std::time::Duration,
}

fn deadline_ms(spec: &JobSpec, created_ms: i64) -> Result<Option<i64>, Invalid> {
    Ok(match &spec.deadline {
        None => None,
        Some(Deadline::Seconds(s)) => Some(created_ms + (*s as i64).saturating_mul(1000)),
        Some(Deadline::At(t)) => Some(super::ids::parse_rfc3339(t).ok_or_else(|| {
            field(
                "/deadline",
                "seconds, or an RFC 3339 UTC time like 2026-12-04T21:00:00Z",
            )
        })?),
    })
}

/// Most daemons one fan-out job may name (the ticket names every one).
pub const MAX_DESTINATIONS: usize = 256;

/// A fan-out spec: a module of this daemon to daemons, with the options a
/// chain takes. Every piece is compared and checked by BLAKE3 and every file
/// fsynced before it is published, so `checksum` and `fsync` are what a
/// fan-out always does; the options it cannot honour are refused by name.
fn resolve_fanout(
    spec: &JobSpec,
    modules: &[Module],
    created_ms: i64,
    may_use: &dyn Fn(&str) -> bool,
) -> Result<Resolved, Invalid> {
    let src = side(&spec.src, "/src", modules, false)?;
    if src.local_path().is_none() {
        return Err(field(
            "/src",
            format!(
                "{:?}: a fan-out job sends a module path of this daemon (MODULE/PATH)",
                spec.src
            ),
        ));
    }
    if !spec.dst.is_empty() {
        return Err(field(
            "/dst",
            "a fan-out job names its daemons in destinations, not dst",
        ));
    }
    if spec.destinations.is_empty() {
        return Err(field(
            "/destinations",
            "a fan-out job names at least one destination daemon",
        ));
    }
    if spec.destinations.len() > MAX_DESTINATIONS {
        return Err(field(
            "/destinations",
            format!("at most {MAX_DESTINATIONS} destinations"),
        ));
    }
    let refused: [(&'static str, bool); 10] = [
        ("/compress", spec.compress),
        ("/compress_level", spec.compress_level.is_some()),
        ("/include", !spec.include.is_empty()),
        ("/exclude", !spec.exclude.is_empty()),
        ("/bwlimit", spec.bwlimit.is_some()),
        ("/dry_run", spec.dry_run),
        ("/update", spec.update),
        ("/sparse", spec.sparse),
        ("/hard_links", spec.hard_links),
        ("/streams", spec.streams.is_some()),
    ];
    if let Some((pointer, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(field(
            pointer,
            format!("a fan-out job does not take {}", &pointer[1..]),
        ));
    }
    if spec.max_faults.is_some() {
        return Err(field(
            "/max_faults",
            "a fan-out job is not retried: the hosts that miss it are named, and POST /v1/jobs/{id}/resume repairs them",
        ));
    }
    for d in &spec.destinations {
        if !(d.starts_with("ferry://") || d.contains("::")) {
            return Err(field(
                "/destinations",
                format!("{d:?}: a fan-out destination must be a ferry daemon (HOST::MODULE/PATH or ferry://HOST[:PORT]/MODULE/PATH)"),
            ));
        }
    }
    let targets = crate::fanout::job::chain(&spec.destinations, None)
        .map_err(|e| field("/destinations", e.to_string()))?;
    let mut first = None;
    for d in &spec.destinations {
        let s = side(d, "/destinations", modules, true)?;
        if !may_use(&s.module) {
            return Err(Invalid::Forbidden(format!(
                "this API key may not use module {}",
                s.module
            )));
        }
        first.get_or_insert(s);
    }
    if !may_use(&src.module) {
        return Err(Invalid::Forbidden(format!(
            "this API key may not use module {}",
            src.module
        )));
    }
    if spec.label.as_ref().is_some_and(|l| l.len() > 128) {
        return Err(field("/label", "at most 128 characters"));
    }
    let stall = match &spec.stall_timeout {
        None => crate::fanout::DEFAULT_STALL,
        Some(Stall::Seconds(0)) => {
            return Err(field("/stall_timeout", "must be more than 0 seconds"))
        }
        Some(Stall::Seconds(s)) if *s > 86400 => {
            return Err(field("/stall_timeout", "at most a day"))
        }
        Some(Stall::Seconds(s)) => std::time::Duration::from_secs(*s),
        Some(Stall::Text(t)) => {
            crate::fanout::job::parse_duration(t).map_err(|e| field("/stall_timeout", e))?
        }
    };
    let options = Options {
        recursive: true,
        links: true,
        perms: true,
        times: true,
        delete: spec.delete,
        checksum: true,
        fsync: true,
        ..Default::default()
    };
    Ok(Resolved {
        src,
        dst: first.expect("at least one destination"),
        options,
        deadline_ms: deadline_ms(spec, created_ms)?,
        fanout: Some(Fanout { targets, stall }),
    })
}

pub fn resolve(
    spec: &JobSpec,
    modules: &[Module],
    created_ms: i64,
    may_use: &dyn Fn(&str) -> bool,
) -> Result<Resolved, Invalid> {
    if spec.op == Op::Fanout {
        return resolve_fanout(spec, modules, created_ms, may_use);
    }
    if !spec.destinations.is_empty() || spec.stall_timeout.is_some() {
        let pointer = if spec.destinations.is_empty() {
            "/stall_timeout"
        } else {
            "/destinations"
        };
        return Err(field(pointer, "only a fan-out job (op fanout) takes this"));
    }
    let src = side(&spec.src, "/src", modules, false)?;
    let dst = side(&spec.dst, "/dst", modules, true)?;
    for s in [&src, &dst] {
        if !may_use(&s.module) {
            return Err(Invalid::Forbidden(format!(
                "this API key may not use module {}",
                s.module
            )));
        }
    }
    if src.local_path().is_none() && dst.local_path().is_none() {
        return Err(field(
            "/dst",
            "one of src and dst must be a module of this daemon",
        ));
    }
    if spec.op == Op::Copy && spec.delete {
        return Err(field("/delete", "delete works with op sync only"));
    }
    if spec.label.as_ref().is_some_and(|l| l.len() > 128) {
        return Err(field("/label", "at most 128 characters"));
    }
    let deadline_ms = deadline_ms(spec, created_ms)?;
    let bwlimit = match &spec.bwlimit {
        None => 0,
        Some(Rate::KiB(k)) => k << 10,
        Some(Rate::Text(t)) => crate::cli::args::parse_rate(t).map_err(|e| field("/bwlimit", e))?,
    };
    let mut filters: Vec<(bool, Vec<u8>)> = Vec::new();
    filters.extend(spec.include.iter().map(|p| (true, p.as_bytes().to_vec())));
    filters.extend(spec.exclude.iter().map(|p| (false, p.as_bytes().to_vec())));
    crate::filter::Filters::new(&filters).map_err(|e| field("/exclude", e.to_string()))?;
    if spec.compress_level.is_some_and(|l| !(1..=19).contains(&l)) {
        return Err(field("/compress_level", "1 to 19"));
    }
    let mut options = Options {
        recursive: true,
        // links as `ferry sync -a` asks for them; the receiving module
        // decides what it makes (below, or the peer daemon's module)
        links: true,
        symlinks: crate::proto::LinkPolicy::Verbatim,
        perms: true,
        times: true,
        delete: spec.delete,
        checksum: spec.checksum,
        update: spec.update,
        dry_run: spec.dry_run,
        hard_links: spec.hard_links,
        sparse: spec.sparse,
        compress: spec.compress || spec.compress_level.is_some(),
        compress_level: spec.compress_level.unwrap_or(0),
        fsync: spec.fsync,
        partial: true,
        file_events: true,
        streams: spec.streams.unwrap_or(1).clamp(1, 8),
        filters,
        bwlimit,
        ..Default::default()
    };
    // the destination module says which symlinks a job may make in it, as
    // it does for a client pushing into it (server::daemon)
    if let Some(m) = modules
        .iter()
        .find(|m| m.name == dst.module)
        .filter(|_| dst.local_path().is_some())
    {
        options.symlinks = m.symlinks.allow(options.symlinks);
    }
    Ok(Resolved {
        src,
        dst,
        options,
        deadline_ms,
        fanout: None,
    })
}

/// The plan a job runs. Connections to other daemons use this daemon's key
/// and its known_hosts, strictly (an unknown key is refused). A side in a
/// module of this daemon is confined to it as the daemon confines a client:
/// nothing is read or written through a symlink.
pub fn plan(r: &Resolved, identity: &Path, config_dir: &Path) -> Plan {
    Plan {
        sources: vec![r.src.location.clone()],
        dest: r.dst.location.clone(),
        options: r.options.clone(),
        ssh: Default::default(),
        daemon: daemon_options(identity, config_dir),
        confine: crate::transfer::Confine {
            source: r.src.root.clone(),
            dest: r.dst.root.clone(),
        },
    }
}

/// Refuses a job whose module path goes through a symlink (`src/evil/x`
/// with `evil` a link): one line naming the path as submitted and the link.
/// A source's last name may be a link (it is sent as one) unless it is sent
/// by its contents (`dir/`); a destination is written into, so no name of
/// it may be a link. Run when the job starts; the confined transfer keeps
/// to the module whatever changes after.
pub fn check_no_symlink(side: &Side, addr: &str, writing: bool) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let (Some(root), Some(full)) = (&side.root, side.local_path()) else {
        return Ok(());
    };
    let full = Path::new(std::ffi::OsStr::from_bytes(full));
    let Ok(rel) = full.strip_prefix(root) else {
        return Ok(());
    };
    let last_too = writing || addr.ends_with('/');
    match crate::fs::source::symlink_on_the_way(root, rel, last_too) {
        Ok(None) => Ok(()),
        Ok(Some((link, leaves))) => {
            let link = Path::new(&side.module).join(link);
            Err(format!(
                "{addr}: {}",
                crate::fs::source::symlink_refusal(&link, leaves)
            ))
        }
        Err(e) => Err(format!("{addr}: {}", crate::error::io_text(&e))),
    }
}

/// How a job reaches other daemons: this daemon's key, its known_hosts,
/// strictly (an unknown key is refused).
pub fn daemon_options(identity: &Path, config_dir: &Path) -> DaemonOptions {
    DaemonOptions {
        identity: Some(identity.to_path_buf()),
        known_hosts: Some(config_dir.join("known_hosts")),
        host_key: Default::default(),
        config_dir: Some(config_dir.to_path_buf()),
        // transfer::run does not retry and its connect wait is short: the
        // job runner retries with its own backoff, counting faults
        timeout: Some(std::time::Duration::from_secs(2)),
        retries: Some(0),
        ip_version: None,
    }
}

/// A failure's stable code, and whether trying again may help.
pub fn classify(e: &TransferError) -> (&'static str, bool) {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    match e {
        TransferError::Connection(_) => ("connection_failed", true),
        // a job is not a command typed at a terminal: a refused or silent
        // peer may be restarting, but a name that does not exist will not heal
        TransferError::Connect {
            why: crate::error::ConnectFailure::NoSuchName,
            ..
        } => ("unknown_host", false),
        TransferError::Connect { .. } => ("connection_failed", true),
        TransferError::Remote(_) if has("access denied") || has("not authorized") => {
            ("key_refused", false)
        }
        TransferError::Remote(_) if has("busy") => ("peer_busy", true),
        TransferError::Remote(_) if has("no module") => ("unknown_module", false),
        TransferError::HostKey(_) if has("changed") || has("CHANGED") => {
            ("host_key_changed", false)
        }
        TransferError::HostKey(_) => ("host_key_unknown", false),
        TransferError::Remote(_) | TransferError::Local { .. }
            if has("No such file") || has("not found") =>
        {
            ("source_not_found", false)
        }
        TransferError::Remote(_) | TransferError::Local { .. }
            if has("ermission denied") || has("not allowed") || has("read-only") =>
        {
            ("permission_denied", false)
        }
        TransferError::Remote(_) => ("remote_error", false),
        TransferError::Local { .. } => ("local_error", false),
        TransferError::Usage(_) => ("invalid_request", false),
        TransferError::Handshake(_) => ("incompatible_peer", false),
        TransferError::Integrity(_) => ("integrity_error", false),
        TransferError::PeerMisbehaved(_) | TransferError::Malformed(_) => ("protocol_error", false),
        TransferError::Internal(_) => ("internal_error", false),
        TransferError::Cancelled => ("canceled", false),
    }
}

/// Where the files named in a transfer's events live on this machine: the
/// destination directory when it is local, else the source's base.
pub fn local_base(r: &Resolved) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(d) = r.dst.local_path() {
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(d)));
    }
    let s = r.src.local_path()?;
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(s));
    if s.ends_with(b"/") {
        Some(p)
    } else {
        p.parent().map(Path::to_path_buf)
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    /// A fan-out that some hosts missed (named in `hosts` and the error);
    /// `POST /v1/jobs/{id}/resume` repairs them
    Partial,
    Failed,
    Canceled,
}

/// One destination of a fan-out job and how it fared.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostState {
    /// The destination as submitted
    pub host: String,
    /// pending (not yet run), running, done (the whole tree, verified and
    /// published) or missed
    pub state: String,
    pub bytes_received: u64,
    /// Why it missed the job
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Damaged pieces it refused (and got again)
    #[serde(default)]
    pub pieces_refused: u32,
    /// Moved to the tail of the chain for being slow
    #[serde(default)]
    pub moved_to_tail: bool,
}

/// Why a job failed (or was canceled): a stable code and a human detail.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobError {
    /// e.g. source_not_found, max_faults_exceeded, deadline_exceeded, canceled
    pub code: String,
    pub detail: Option<String>,
}

/// A file a finished job wrote or sent, with its size and BLAKE3 check.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFile {
    pub name: String,
    pub size: u64,
    pub blake3: Option<String>,
}

/// The job resource, as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// A ULID (26 characters)
    pub id: String,
    pub op: Op,
    pub src: String,
    pub dst: String,
    pub label: Option<String>,
    pub state: State,
    pub attempts: i64,
    /// Transient failures met (and retried) so far
    pub faults: i64,
    /// The job's max_faults, or the default (10) where none was given;
    /// null for a fan-out (not retried)
    pub max_faults: Option<u32>,
    pub status_detail: String,
    pub bytes_done: i64,
    pub bytes_total: i64,
    pub files_done: i64,
    pub files_total: i64,
    pub rate_bytes_per_second: i64,
    pub eta_seconds: Option<i64>,
    /// Bytes sent as literal data (not rebuilt from what the destination had)
    pub literal_bytes: i64,
    pub reused_bytes: i64,
    pub error: Option<JobError>,
    /// When the job has succeeded: the files, with sizes and checks
    pub files: Option<Vec<JobFile>>,
    /// Op fanout: each destination's state, in chain order
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<HostState>>,
    /// The submitted body
    pub options: JobSpec,
    /// RFC 3339 UTC
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    pub deadline: Option<String>,
}

/// The job resource from its row.
pub fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
    use super::ids::rfc3339;
    let bad = |e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    };
    let spec: JobSpec = serde_json::from_str(&r.get::<_, String>("spec")?).map_err(bad)?;
    let state: String = r.get("state")?;
    let state: State = serde_json::from_value(serde_json::Value::String(state)).map_err(bad)?;
    let (done, total): (i64, i64) = (r.get("bytes_done")?, r.get("bytes_total")?);
    let rate: f64 = r.get("rate")?;
    let eta = (state == State::Running && rate > 0.0 && total > done)
        .then(|| ((total - done) as f64 / rate).ceil() as i64);
    let error = match r.get::<_, Option<String>>("error_code")? {
        Some(code) => Some(JobError {
            code,
            detail: r.get("error_detail")?,
        }),
        None => None,
    };
    let files: Option<Vec<JobFile>> = r
        .get::<_, Option<String>>("files")?
        .and_then(|f| serde_json::from_str(&f).ok());
    let hosts: Option<Vec<HostState>> = match spec.op {
        Op::Fanout => Some(
            r.get::<_, Option<String>>("hosts")?
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_else(|| pending_hosts(&spec)),
        ),
        _ => None,
    };
    let t = |c: &str| -> rusqlite::Result<Option<String>> {
        Ok(r.get::<_, Option<i64>>(c)?.map(rfc3339))
    };
    let job = Job {
        id: r.get("id")?,
        op: spec.op,
        src: spec.src.clone(),
        dst: spec.dst.clone(),
        label: spec.label.clone(),
        state,
        attempts: r.get("attempts")?,
        faults: r.get("faults")?,
        // a fan-out is not retried: its missed hosts are resumed
        max_faults: (spec.op != Op::Fanout).then(|| spec.max_faults.unwrap_or(DEFAULT_MAX_FAULTS)),
        status_detail: r.get("status_detail")?,
        bytes_done: done,
        bytes_total: total,
        files_done: r.get("files_done")?,
        files_total: r.get("files_total")?,
        rate_bytes_per_second: rate.round() as i64,
        eta_seconds: eta,
        literal_bytes: r.get("literal_bytes")?,
        reused_bytes: r.get("reused_bytes")?,
        error,
        files,
        hosts,
        options: spec,
        created_at: t("created_ms")?.unwrap_or_default(),
        started_at: t("started_ms")?,
        finished_at: t("finished_ms")?,
        updated_at: t("updated_ms")?.unwrap_or_default(),
        deadline: t("deadline_ms")?,
    };
    serde_json::to_value(job).map_err(bad)
}

/// A fan-out job's hosts before it has run.
pub fn pending_hosts(spec: &JobSpec) -> Vec<HostState> {
    spec.destinations
        .iter()
        .map(|d| HostState {
            host: d.clone(),
            state: "pending".into(),
            bytes_received: 0,
            error: None,
            pieces_refused: 0,
            moved_to_tail: false,
        })
        .collect()
}
