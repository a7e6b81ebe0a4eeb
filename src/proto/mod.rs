//! The wire format: the version handshake, frames, and every message ferry's two
//! sides exchange, with the limits that hold before anything is allocated.
//!
//! No I/O and no clock live here: bytes in, messages out. The session layer owns
//! the conversation (who sends what when); this module only says what each message
//! looks like on the wire and refuses anything malformed or oversized, telling
//! "not enough bytes yet" ([`frame::FrameStatus::Incomplete`]) apart from
//! "the peer sent garbage" ([`DecodeError`]).
//!
//! ```text
//! client                                  server (`ferry serve --stdio`)
//!   "ferry" vmin vmax  ───────────────►
//!                      ◄───────────────   "ferry" chosen
//!   Request{role, paths, options} ─────►
//!                      ◄───────────────   Accept | Fatal
//! then the sender streams ListStart, Entry…, ListEnd; the receiver answers
//! Want(file); the sender sends Data…FileEnd (fresh), or for a delta a
//! recipe in two levels: batches of Spans, each answered by a Need for the
//! spans the receiver lacks, then a Recipe with those spans' chunks, answered
//! by a Need for the chunks it lacks, then Data with them; RecipeEnd when the
//! file is chunked, FileEnd when every batch is answered.
//! While listing, the receiver says with ListAck how many entries it has
//! taken in; the sender keeps at most LIST_AHEAD entries beyond that.
//! The receiver ends with Finish(summary); the sender answers Bye.
//! ```

pub mod codec;
pub mod frame;
pub mod item;
pub mod shell;

use codec::{Reader, Writer};

/// The protocol versions this build speaks.
/// 2: `Want` carries the key of a rebuilt file's check (`RecipeEnd`'s hash is
/// a `chunk::RebuildCheck`, no longer a BLAKE3).
/// 3: a `Request`'s options may end with an extension block (tagged fields
/// for the rsync flags added since: `--copy-unsafe-links`, the symlink
/// policy, …); a request without one is byte for byte a version-2 request.
pub const VERSION_MIN: u16 = 2;
pub const VERSION_MAX: u16 = 3;
/// The first version whose requests may carry the options' extension block.
pub const VERSION_OPTION_EXTENSIONS: u16 = 3;
/// The first bytes on every connection, before any frame: a peer that is not
/// ferry (a shell printing a banner, a web server) fails here with a clear error.
pub const MAGIC: &[u8; 5] = b"ferry";
/// The TCP port a ferry daemon listens on unless told otherwise (`host::`
/// addresses without a port, `known_hosts` lines without `[host]:port`).
pub const DEFAULT_PORT: u16 = 7420;

/// Size of a literal data block for whole-file transfers.
pub const BLOCK_SIZE: usize = 256 << 10;
/// Longest relative path a peer may name, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest single path component.
pub const MAX_COMPONENT: usize = 255;
/// Most source paths in one request.
pub const MAX_PATHS: usize = 4096;
/// Most filter rules in one request.
pub const MAX_FILTERS: usize = 4096;
/// Most chunk references in one `Recipe` frame.
pub const MAX_RECIPE_BATCH: usize = MAX_SPAN_BATCH * MAX_SPAN_CHUNKS;
/// Most spans in one `Spans` frame.
pub const MAX_SPAN_BATCH: usize = 16;
/// Most chunks in one span.
pub const MAX_SPAN_CHUNKS: usize = 512;
/// Most ranges in one `Need` frame.
pub const MAX_RANGES: usize = 65536;
/// Entries the sender may list beyond those the receiver acknowledged with
/// `ListAck`: what either side holds of the list at once.
pub const LIST_AHEAD: u32 = 8192;
/// Longest human-readable text (errors, reasons).
pub const MAX_TEXT: usize = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{what} larger than the limit of {limit}")]
    TooLarge { what: &'static str, limit: usize },
    #[error("unknown message type {0}")]
    UnknownMessage(u8),
    #[error("trailing bytes after {0}")]
    TrailingBytes(&'static str),
}

/// Builds the handshake preamble a client sends first.
pub fn client_hello() -> [u8; 9] {
    let mut h = [0u8; 9];
    h[..5].copy_from_slice(MAGIC);
    h[5..7].copy_from_slice(&VERSION_MIN.to_le_bytes());
    h[7..9].copy_from_slice(&VERSION_MAX.to_le_bytes());
    h
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// What came instead of a hello (a login banner, a shell startup file
    /// printing text, another protocol), escaped.
    #[error("not ferry: got \"{0}\" where the ferry protocol's hello belongs (a banner, or a shell startup file printing text?)")]
    NotFerry(String),
    #[error("no common protocol version: we speak {ours_min}..={ours_max}, the peer {theirs_min}..={theirs_max}")]
    NoCommonVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
}

fn escaped_prefix(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// Server side: given the client's 9-byte hello, picks a version.
pub fn choose_version(hello: &[u8; 9]) -> Result<u16, HandshakeError> {
    if &hello[..5] != MAGIC {
        return Err(HandshakeError::NotFerry(escaped_prefix(hello)));
    }
    let min = u16::from_le_bytes([hello[5], hello[6]]);
    let max = u16::from_le_bytes([hello[7], hello[8]]);
    let chosen = max.min(VERSION_MAX);
    if chosen < min.max(VERSION_MIN) {
        return Err(HandshakeError::NoCommonVersion {
            ours_min: VERSION_MIN,
            ours_max: VERSION_MAX,
            theirs_min: min,
            theirs_max: max,
        });
    }
    Ok(chosen)
}

/// The server's 7-byte answer: magic and the chosen version (0: none).
pub fn server_hello(version: u16) -> [u8; 7] {
    let mut h = [0u8; 7];
    h[..5].copy_from_slice(MAGIC);
    h[5..7].copy_from_slice(&version.to_le_bytes());
    h
}

/// Client side: checks the server's answer.
pub fn check_server_hello(reply: &[u8; 7]) -> Result<u16, HandshakeError> {
    if &reply[..5] != MAGIC {
        return Err(HandshakeError::NotFerry(escaped_prefix(reply)));
    }
    let v = u16::from_le_bytes([reply[5], reply[6]]);
    if !(VERSION_MIN..=VERSION_MAX).contains(&v) {
        return Err(HandshakeError::NoCommonVersion {
            ours_min: VERSION_MIN,
            ours_max: VERSION_MAX,
            theirs_min: v,
            theirs_max: v,
        });
    }
    Ok(v)
}

/// Which way the data flows, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The server reads `paths` and sends them (a pull).
    ServerSends,
    /// The server receives into `paths[0]` (a push).
    ServerReceives,
    /// The server lists the modules this client may see (`ferry ls host::`).
    ListModules,
    /// This connection joins a running transfer as an extra stream; `paths[0]`
    /// is the token the server gave that transfer.
    JoinStream,
}

/// How the transfer behaves; carried in the request so both sides agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub recursive: bool,
    /// Copy symlinks as symlinks (rsync `-l`).
    pub links: bool,
    /// Follow symlinks in the source and copy what they point to (scp).
    pub follow_links: bool,
    pub perms: bool,
    pub times: bool,
    pub owner: bool,
    pub group: bool,
    pub delete: bool,
    pub checksum: bool,
    pub update: bool,
    pub dry_run: bool,
    pub hard_links: bool,
    pub sparse: bool,
    pub compress: bool,
    pub fsync: bool,
    pub partial: bool,
    /// scp semantics for the destination: `cp -r dir host:new` makes `new` the
    /// copy of `dir` when `new` does not exist.
    pub cp_mode: bool,
    /// List a directory's entries without recursing (rsync `-d`; `ferry ls`).
    pub dirs: bool,
    /// The requester shows each file (`-v`, `--progress`, a dry run): a remote
    /// receiver sends an event per file. Without it, only errors, notices
    /// and the overall progress (a few times a second) come back.
    pub file_events: bool,
    /// Make backups of replaced or deleted files with this suffix.
    pub backup_suffix: Option<Vec<u8>>,
    /// Filter rules, first match wins: (include?, pattern).
    pub filters: Vec<(bool, Vec<u8>)>,
    /// Sender-side rate limit in bytes per second (0: none).
    pub bwlimit: u64,
    /// Connections to use (the daemon only): large files are cut into segments
    /// sent over all of them.
    pub streams: u8,
    /// zstd level for `compress` (0: the default, [`DEFAULT_ZSTD_LEVEL`]).
    pub compress_level: u8,
    // Version 3 (the extension block): every field below defaults to what a
    // version-2 peer does, and is sent only when it differs from that.
    /// What the receiver does with a symlink it is sent.
    pub symlinks: LinkPolicy,
    /// The sender follows symlinks that point outside the transfer and sends
    /// what they point to (rsync `--copy-unsafe-links`).
    pub copy_unsafe_links: bool,
    /// The sender follows symlinks to directories and sends them as
    /// directories (rsync `-k`).
    pub copy_dirlinks: bool,
    /// The receiver treats a symlink to a directory at the destination as
    /// that directory (rsync `-K`).
    pub keep_dirlinks: bool,
    /// `dir-merge` filter rules, read by the sender in each directory: the
    /// number of [`Options::filters`] before the rule, and the file's name.
    pub dir_merges: Vec<(u32, Vec<u8>)>,
    /// The quick check compares sizes only (rsync `--size-only`).
    pub size_only: bool,
    /// Every file is sent, whatever the quick check says (rsync `-I`).
    pub ignore_times: bool,
    /// Files already at the destination are left alone (rsync `--ignore-existing`).
    pub ignore_existing: bool,
    /// Nothing new is made at the destination: only what exists is updated
    /// (rsync `--existing`).
    pub existing: bool,
    /// No delta: every file that changed comes whole (rsync `-W`).
    pub whole_file: bool,
    /// `--delete` also removes destination files the filters exclude.
    pub delete_excluded: bool,
    /// The sender does not cross into other filesystems (rsync `-x`).
    pub one_file_system: bool,
    /// Each source is named by its path, from after a `/./` (rsync `-R`).
    pub relative: bool,
    /// The receiver makes the destination's missing parent directories
    /// (rsync `--mkpath`).
    pub mkpath: bool,
    /// Files larger than this are not transferred (rsync `--max-size`).
    pub max_size: Option<u64>,
    /// Files smaller than this are not transferred (rsync `--min-size`).
    pub min_size: Option<u64>,
    /// At most this many deletions (rsync `--max-delete`).
    pub max_delete: Option<u64>,
    /// `--chmod` rules (their text, comma-separated; see [`crate::chmod`]),
    /// applied by the receiver to the modes it is sent.
    pub chmod: Option<Vec<u8>>,
    /// rsync's destination-side options (`--link-dest` and friends,
    /// `--remove-source-files`, when to delete, …).
    pub dest_side: DestSide,
    /// The receiver reports each entry in detail, as `Itemized` events: what
    /// changed, attribute-only changes too, bytes on the wire and the check
    /// value (`-i`, `--out-format`, `--log-file`, `--json`).
    pub itemize: bool,
    /// With `-H`, the sender marks the first file of each group of hard
    /// links (an [`Entry`] whose `link_to` is its own index), so that the
    /// receiver keeps only those files' entries for the links that follow,
    /// not every file's. Set by [`crate::transfer`] whenever `hard_links` is;
    /// without it (an older peer, or a caller that leaves it out) the
    /// receiver keeps every file's entry to the end, as before.
    pub link_marks: bool,
    /// With `-z`, the sender's compressed blocks may continue the zstd frame
    /// of the block before them (see [`crate::session::compress`]), which a
    /// receiver from before this option cannot unpack. Set by
    /// [`crate::transfer`] whenever `compress` is.
    pub zstd_stream: bool,
    /// With `-S`, the sender sends each hole of a sparse file as one
    /// [`Message::Hole`] ("this many bytes of zeros here") instead of blocks
    /// of zeros, and checks the file with [`crate::check::Check::Sparse`]. Set
    /// by [`crate::transfer`] with `sparse` where the receiving end makes
    /// holes; a version-2 receiver is sent the zeros as before, and a
    /// version-3 one from before this option (extension tag 80) refuses the
    /// request.
    pub sparse_holes: bool,
}

/// rsync's destination-side options, carried in the extension block from tag
/// 20 on. Every default is what a version-2 peer does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestSide {
    /// Directories holding a previous copy (`--link-dest`, `--copy-dest`,
    /// `--compare-dest`), looked in, in order, for a file missing at the
    /// destination. A relative one is relative to the destination, as in
    /// rsync; to a daemon, each must stay inside the module.
    pub basis_dirs: Vec<Vec<u8>>,
    /// What an unchanged file found in `basis_dirs` becomes.
    pub basis_kind: BasisKind,
    /// The sender removes each non-directory source entry once the receiver
    /// says its copy is verified and durable (rsync `--remove-source-files`).
    pub remove_source_files: bool,
    /// When `--delete` deletes.
    pub delete_timing: DeleteTiming,
    /// Changed files are written over in place, not beside and renamed
    /// (rsync `--inplace`): no atomic publish, no delta; still verified.
    pub inplace: bool,
    /// `--chown USER:GROUP` as given (names resolved by the receiver, see
    /// [`crate::fs::owners`]).
    pub chown: Option<Vec<u8>>,
    /// `--atomic`: the receiver builds the new tree beside the destination
    /// directory and switches it in with one rename (see [`crate::fs::atomic`]).
    pub atomic: bool,
    /// `--backup-dir`, with `--atomic`: where the replaced tree is moved
    /// (relative to the destination, as rsync's; inside the module on a
    /// daemon). Without it the replaced tree is removed.
    pub backup_dir: Option<Vec<u8>>,
}

/// What an unchanged file found in a basis directory becomes at the
/// destination (a changed one is a delta basis whatever the kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BasisKind {
    /// A hard link to it (`--link-dest`: checkpoint snapshots).
    #[default]
    Link,
    /// A local copy of it (`--copy-dest`).
    Copy,
    /// Nothing: the destination holds only what differs (`--compare-dest`).
    Compare,
}

/// When `--delete` removes what the source does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeleteTiming {
    /// After every file is in place (`--delete-after`): a transfer that fails
    /// deletes nothing. ferry's default: its list streams, so a directory's
    /// listing is known complete only when the whole list is.
    #[default]
    After,
    /// Before any file is asked for (`--delete-before`): frees room first.
    Before,
    /// Decided as the list arrives, done at the end (`--delete-delay`); in
    /// ferry the same as `After`.
    Delay,
    /// rsync's default (`--delete-during`): directory by directory as the
    /// transfer goes. ferry deletes each directory's extras once the list is
    /// complete and before its files are asked for (a directory's listing is
    /// complete only then).
    During,
}

impl DestSide {
    /// Whether `--delete` deletes before any file is asked for.
    pub fn deletes_first(&self) -> bool {
        matches!(
            self.delete_timing,
            DeleteTiming::Before | DeleteTiming::During
        )
    }
}

impl BasisKind {
    /// The flag that names it.
    pub fn flag(self) -> &'static str {
        match self {
            BasisKind::Link => "--link-dest",
            BasisKind::Copy => "--copy-dest",
            BasisKind::Compare => "--compare-dest",
        }
    }
}

/// Most basis directories (rsync's limit too).
pub const MAX_BASIS_DIRS: usize = 20;
/// Most file indices in one `Settled` message.
pub const MAX_SETTLED: usize = 8192;

/// What a receiver does with the symlinks it is sent. Whatever the policy, a
/// receiver never follows a symlink when it writes: making one is not an escape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkPolicy {
    /// Skip a link that is absolute or climbs out of the transfer with `..`
    /// (rsync `--safe-links`; what every version-2 receiver does).
    #[default]
    Safe,
    /// Make every link exactly as sent (rsync `-l`).
    Verbatim,
    /// Make every link with `/rsyncd-munged/` in front of its target, so that
    /// nothing on the receiving host follows it (rsync `--munge-links`).
    Munge,
}

/// What `--munge-links` puts in front of a symlink's target (rsync's prefix).
pub const MUNGE_PREFIX: &[u8] = b"/rsyncd-munged/";

/// zstd level 1: on a 512 MiB JSONL corpus it moved 1.20x rsync -z's bytes at
/// 2.3x its speed; level 3 moved 1.11x at 1.6x (bench/NOTES.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// A `StreamToken` of zeros: the server offers no extra streams.
pub const NO_STREAM_TOKEN: [u8; 16] = [0; 16];
/// The highest zstd level accepted (beyond it zstd needs much more memory).
pub const MAX_ZSTD_LEVEL: u8 = 19;

impl Options {
    /// The zstd level to compress with, if compressing.
    pub fn zstd_level(&self) -> Option<i32> {
        self.compress.then_some(match self.compress_level {
            0 => DEFAULT_ZSTD_LEVEL,
            n => n as i32,
        })
    }
}

const OPT_FLAGS: [fn(&mut Options) -> &mut bool; 19] = [
    |o| &mut o.recursive,
    |o| &mut o.links,
    |o| &mut o.follow_links,
    |o| &mut o.perms,
    |o| &mut o.times,
    |o| &mut o.owner,
    |o| &mut o.group,
    |o| &mut o.delete,
    |o| &mut o.checksum,
    |o| &mut o.update,
    |o| &mut o.dry_run,
    |o| &mut o.hard_links,
    |o| &mut o.sparse,
    |o| &mut o.compress,
    |o| &mut o.fsync,
    |o| &mut o.partial,
    |o| &mut o.cp_mode,
    |o| &mut o.dirs,
    |o| &mut o.file_events,
];

impl Options {
    /// Checks what the options may not say whoever sends them.
    ///
    /// # Security
    /// The backup suffix is appended to names the receiver writes: a `/` in it
    /// would turn a name into a path.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if let Some(s) = &self.backup_suffix {
            if s.is_empty() || s.len() > 64 || s.contains(&b'/') || s.contains(&0) {
                return Err(OptionsError::BackupSuffix);
            }
        }
        if let Some(c) = &self.chmod {
            crate::chmod::Chmod::parse(&[c]).map_err(|e| OptionsError::Chmod(e.to_string()))?;
        }
        let d = &self.dest_side;
        if d.atomic && d.inplace {
            return Err(OptionsError::AtomicInplace);
        }
        if d.backup_dir.is_some() && !d.atomic {
            return Err(OptionsError::BackupDirAlone);
        }
        if d.backup_dir.as_ref().is_some_and(|b| b.contains(&0)) {
            return Err(OptionsError::BackupDir);
        }
        Ok(())
    }
}

impl Options {
    /// The options as a peer speaking protocol `version` can be sent them. A
    /// version-2 peer knows nothing of the extension block: the symlink policy
    /// falls back to what it does anyway (safe links, each skipped link
    /// reported), and any other extended option is refused by name rather than
    /// silently ignored.
    pub fn for_peer(&self, version: u16) -> Result<Options, OptionsError> {
        if version >= VERSION_OPTION_EXTENSIONS {
            return Ok(self.clone());
        }
        let mut o = self.clone();
        o.symlinks = LinkPolicy::default();
        let ext = ext_flags(&o);
        if let Some((_, name)) = EXT_FLAGS
            .iter()
            .enumerate()
            .find_map(|(i, (_, name))| (ext & (1 << i) != 0).then_some((i, *name)))
        {
            return Err(OptionsError::PeerTooOld(name));
        }
        let mut copy = o.clone();
        if let Some((_, _, name)) = EXT_NUMBERS.iter().find(|(_, f, _)| f(&mut copy).is_some()) {
            return Err(OptionsError::PeerTooOld(name));
        }
        if o.chmod.is_some() {
            return Err(OptionsError::PeerTooOld("--chmod"));
        }
        if let Some(name) = dest_side_flag(&o.dest_side) {
            return Err(OptionsError::PeerTooOld(name));
        }
        if !o.dir_merges.is_empty() {
            return Err(OptionsError::PeerTooOld("--filter dir-merge"));
        }
        if o.keep_dirlinks {
            return Err(OptionsError::PeerTooOld("--keep-dirlinks"));
        }
        // what is itemized comes from the listing a version-2 peer still sends
        o.itemize = false;
        // a version-2 receiver takes a file linked to itself for a bad link
        o.link_marks = false;
        // a version-2 receiver unpacks every block on its own
        o.zstd_stream = false;
        // and takes a hole only as blocks of zeros
        o.sparse_holes = false;
        Ok(o)
    }
}

/// Options that no sender or receiver may be given, whoever sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("--suffix must be 1 to 64 bytes without '/' or NUL")]
    BackupSuffix,
    #[error("{0}")]
    Chmod(String),
    #[error("--atomic and --inplace do not go together: --atomic builds the new tree beside the old one, --inplace writes over the old one")]
    AtomicInplace,
    #[error("--backup-dir works only with --atomic (it keeps the replaced tree)")]
    BackupDirAlone,
    #[error("--backup-dir must not contain NUL")]
    BackupDir,
    #[error(
        "the remote ferry is too old for {0} (it speaks protocol 2): upgrade it, or leave {0} out"
    )]
    PeerTooOld(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub role: Role,
    pub paths: Vec<Vec<u8>>,
    pub options: Options,
}

/// What the receiver needs to know about the sources before the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListStart {
    /// Exactly one source, and it is not a directory: the destination may name
    /// the file itself.
    pub single_file: bool,
    /// Exactly one source, a directory sent by its name (no trailing slash): every
    /// name starts with that directory's name.
    pub single_dir: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One entry of the file list. Its position in the list is its file index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, `/`-separated; `.` for the transfer root itself.
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Symlink target.
    pub target: Vec<u8>,
    /// For a hard link: the index of the earlier entry it links to. Its own
    /// index marks the first file of a group of hard links, which later
    /// entries link to (only when [`Options::link_marks`] is set).
    pub link_to: Option<u32>,
    /// Whole-file BLAKE3, sent with `--checksum`.
    pub checksum: Option<[u8; 32]>,
}

/// A span of a recipe: a run of consecutive chunks (how many, their total
/// length) named by the BLAKE3 of their references (see `delta::span_hash`).
/// A receiver that has the span copies it whole; otherwise it asks for the
/// span's chunk references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    pub chunks: u32,
    pub len: u64,
    pub hash: [u8; 32],
}

/// A chunk reference in a recipe: its length and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub len: u32,
    pub hash: crate::chunk::ChunkHash,
}

/// The kind of an [`Event`]: its tag on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A file, directory or link was created or changed.
    Updated,
    /// An extraneous file was deleted.
    Deleted,
    /// Something went wrong with `name`; `text` says what.
    Error,
    /// A notice that is not an error, e.g. a skipped special file.
    Notice,
    /// Bytes of one file done so far.
    Progress,
    /// Bytes of the whole transfer done so far.
    Overall,
    /// What changed about one entry, in detail (only to a requester that
    /// set [`Options::itemize`]).
    Itemized,
}

/// Something a transfer reports as it goes, as it travels: a kind, a name,
/// two numbers and a text. What the numbers mean depends on the kind; read
/// an event through [`Event::report`], build one from a [`Report`], and the
/// numbers are named. The record itself is kept whole so that what a peer
/// sends decodes and re-encodes to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "Report")]
pub struct Event {
    pub kind: EventKind,
    pub name: Vec<u8>,
    /// The first number on the wire (see [`Report`] for its meaning).
    a: u64,
    /// The second number on the wire.
    b: u64,
    pub text: Vec<u8>,
}

/// What an [`Event`] says, by kind, with named fields. This is what the
/// library's emitters build and its printers read; the wire carries it as
/// `Event { kind, name, a, b, text }` (protocol version 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    /// `name` was created or changed: a file of `size` bytes, a directory
    /// (shown with a trailing `/`, size 0) or a link (`detail` says
    /// `-> target` or `=> file`). Wire: `a` = size, `text` = detail.
    Updated {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        size: u64,
        #[serde(serialize_with = "lossy")]
        detail: Vec<u8>,
    },
    /// An extraneous `name` was deleted. Wire: `a` = 1 for a directory.
    Deleted {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        is_dir: bool,
    },
    /// Something went wrong with `name` (empty: with the transfer).
    Error {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        #[serde(serialize_with = "lossy")]
        text: Vec<u8>,
    },
    /// A notice that is not an error, e.g. a skipped special file.
    Notice {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        #[serde(serialize_with = "lossy")]
        text: Vec<u8>,
    },
    /// `done` bytes of `name` of its `size`. Wire: `a` = done, `b` = size.
    Progress {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        done: u64,
        size: u64,
    },
    /// `done` bytes of the whole transfer of the `total` listed so far (it
    /// grows until the file list ends). Wire: `a` = done, `b` = total.
    Overall { done: u64, total: u64 },
    /// What changed about `name` (a directory with a trailing `/`): the
    /// [`item::Item`] bits, the file's bytes that crossed the wire, its
    /// check value, and `detail` as in `Updated`. Sent in place of `Updated`
    /// (with [`item::Item::UPDATED`]), and for entries whose attributes
    /// alone changed, when the requester set [`Options::itemize`]. Wire:
    /// `a` = size, `b` = the bits, `text` = [`item::encode_text`].
    Itemized {
        #[serde(serialize_with = "lossy")]
        name: Vec<u8>,
        size: u64,
        item: item::Item,
        wire: u64,
        /// The entry's modification time, in seconds.
        mtime: i64,
        check: Option<[u8; 32]>,
        #[serde(serialize_with = "lossy")]
        detail: Vec<u8>,
    },
}

/// Names and texts are bytes; as JSON they are text, invalid UTF-8 replaced.
fn lossy<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

impl Event {
    /// What this event says, its numbers named by its kind.
    pub fn report(&self) -> Report {
        let (name, text) = (self.name.clone(), self.text.clone());
        match self.kind {
            EventKind::Updated => Report::Updated {
                name,
                size: self.a,
                detail: text,
            },
            EventKind::Deleted => Report::Deleted {
                name,
                is_dir: self.a == 1,
            },
            EventKind::Error => Report::Error { name, text },
            EventKind::Notice => Report::Notice { name, text },
            EventKind::Progress => Report::Progress {
                name,
                done: self.a,
                size: self.b,
            },
            EventKind::Overall => Report::Overall {
                done: self.a,
                total: self.b,
            },
            EventKind::Itemized => {
                let bits = item::Item(self.b.min(u32::MAX as u64) as u32);
                // (checked when decoded: a malformed text cannot arrive)
                let t = item::decode_text(bits, &text).unwrap_or(item::ItemText {
                    wire: 0,
                    mtime: 0,
                    check: None,
                    detail: text,
                });
                Report::Itemized {
                    name,
                    size: self.a,
                    item: bits,
                    wire: t.wire,
                    mtime: t.mtime,
                    check: t.check,
                    detail: t.detail,
                }
            }
        }
    }

    /// An error about `name` (empty: about the transfer).
    pub fn error(name: &[u8], text: impl Into<String>) -> Self {
        Report::Error {
            name: name.to_vec(),
            text: text.into().into_bytes(),
        }
        .into()
    }

    /// A notice about `name` (empty: about the transfer).
    pub fn notice(name: &[u8], text: impl Into<String>) -> Self {
        Report::Notice {
            name: name.to_vec(),
            text: text.into().into_bytes(),
        }
        .into()
    }
}

impl Report {
    /// The kind this report travels as.
    pub fn kind(&self) -> EventKind {
        match self {
            Report::Updated { .. } => EventKind::Updated,
            Report::Deleted { .. } => EventKind::Deleted,
            Report::Error { .. } => EventKind::Error,
            Report::Notice { .. } => EventKind::Notice,
            Report::Progress { .. } => EventKind::Progress,
            Report::Overall { .. } => EventKind::Overall,
            Report::Itemized { .. } => EventKind::Itemized,
        }
    }
}

impl From<Report> for Event {
    fn from(r: Report) -> Self {
        let kind = r.kind();
        let (name, a, b, text) = match r {
            Report::Updated { name, size, detail } => (name, size, 0, detail),
            Report::Deleted { name, is_dir } => (name, is_dir as u64, 0, Vec::new()),
            Report::Error { name, text } | Report::Notice { name, text } => (name, 0, 0, text),
            Report::Progress { name, done, size } => (name, done, size, Vec::new()),
            Report::Overall { done, total } => (Vec::new(), done, total, Vec::new()),
            Report::Itemized {
                name,
                size,
                item,
                wire,
                mtime,
                check,
                detail,
            } => {
                let text = item::encode_text(item, wire, mtime, check.as_ref(), &detail);
                (name, size, item.0 as u64, text)
            }
        };
        Event {
            kind,
            name,
            a,
            b,
            text,
        }
    }
}

impl From<Event> for Report {
    fn from(e: Event) -> Self {
        e.report()
    }
}

/// What a transfer did, reported by the receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries in the file list.
    pub files: u64,
    /// Files (of any kind) created or updated.
    pub transferred: u64,
    /// Sum of the sizes of regular files in the list.
    pub total_size: u64,
    /// Bytes sent as literal data.
    pub literal: u64,
    /// Bytes rebuilt from data the receiver already had.
    pub reused: u64,
    pub deleted: u64,
    pub errors: u64,
    /// The sender had I/O errors, so `--delete` was skipped.
    pub delete_skipped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Accept,
    /// A fatal error: the session ends.
    Fatal(Vec<u8>),
    ListStart(ListStart),
    Entry(Entry),
    /// End of the file list; `io_error` if the sender could not read something.
    ListEnd {
        io_error: bool,
    },
    /// The receiver has taken in the first `entries` entries of the list
    /// (each decided on, or asked for): the sender may list up to
    /// [`LIST_AHEAD`] more.
    ListAck {
        entries: u32,
    },
    /// The receiver wants file `file`: whole, or (`delta`) a recipe to
    /// rebuild it from chunks it already has, its end checked under this key.
    Want {
        file: u32,
        delta: Option<crate::chunk::RebuildKey>,
    },
    /// The next spans of a file's recipe (delta transfers); answered with one
    /// `Need` naming the spans (indices in this message) whose chunks the
    /// receiver wants to see.
    Spans {
        file: u32,
        spans: Vec<SpanRef>,
    },
    /// The chunk references of the spans asked for, in order; answered with
    /// one `Need` naming the chunks (indices in this message) to send.
    Recipe {
        file: u32,
        chunks: Vec<ChunkRef>,
    },
    RecipeEnd {
        file: u32,
        size: u64,
        hash: [u8; 32],
    },
    /// The receiver lacks these chunks of the recipe: (first index, count).
    Need {
        file: u32,
        ranges: Vec<(u32, u32)>,
    },
    /// Literal bytes of `file`, in order; zstd-compressed if `compressed`.
    Data {
        file: u32,
        compressed: bool,
        raw_len: u32,
        bytes: Vec<u8>,
    },
    /// `len` bytes of zeros of `file` at `offset`, which is where its bytes
    /// so far end: a hole of a sparse file sent whole, never read nor sent
    /// as bytes (only when [`Options::sparse_holes`] was agreed). The
    /// receiver extends the file over it without writing, refusing one that
    /// does not start where the file's bytes end or that reaches past the
    /// file's listed size.
    Hole {
        file: u32,
        offset: u64,
        len: u64,
    },
    /// `file` is complete: `size` bytes whose check value is `hash` (for a
    /// file sent whole [`crate::chunk::WholeCheck`]; after a recipe,
    /// [`crate::chunk::RebuildCheck`] under the key `Want` gave;
    /// after segments, the BLAKE3 of their sorted check values). Which one
    /// follows from how the file was sent; both ends compute and compare it
    /// as a [`crate::check::CheckValue`] that says which.
    FileEnd {
        file: u32,
        size: u64,
        hash: [u8; 32],
    },
    /// The sender could not send `file` (vanished, unreadable, changed).
    FileFailed {
        file: u32,
        reason: Vec<u8>,
    },
    Event(Event),
    Finish(Summary),
    Bye,
    /// The daemon's answer to `ListModules`.
    Modules(Vec<ModuleInfo>),
    /// After `Accept`, when streams were asked for: the token extra connections
    /// join with ([`NO_STREAM_TOKEN`]: this server has no extra streams).
    StreamToken([u8; 16]),
    /// Literal bytes of `file` at `offset`, part of one segment sent on one
    /// stream, in order within the segment.
    Segment {
        file: u32,
        offset: u64,
        compressed: bool,
        raw_len: u32,
        bytes: Vec<u8>,
    },
    /// The segment of `file` that started at `offset` is complete: `len`
    /// bytes with this check value ([`crate::chunk::WholeCheck`]; a
    /// [`crate::check::Check::Segment`]).
    SegmentEnd {
        file: u32,
        offset: u64,
        len: u64,
        hash: [u8; 32],
    },
    /// `--remove-source-files` only, from the receiver before `Finish`: these
    /// list entries are at the destination, verified and durable (synced),
    /// so the sender may remove their sources.
    Settled {
        files: Vec<u32>,
    },
}

/// A module as `ferry ls host::` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub name: String,
    pub comment: String,
    pub read_only: bool,
}

/// Most streams one transfer may use.
pub const MAX_STREAMS: u8 = 16;

/// Most modules in one listing.
pub const MAX_MODULES: usize = 4096;

mod tag {
    pub const REQUEST: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const FATAL: u8 = 3;
    pub const LIST_START: u8 = 4;
    pub const ENTRY: u8 = 5;
    pub const LIST_END: u8 = 6;
    pub const WANT: u8 = 7;
    pub const RECIPE: u8 = 8;
    pub const RECIPE_END: u8 = 9;
    pub const NEED: u8 = 10;
    pub const DATA: u8 = 11;
    pub const FILE_END: u8 = 12;
    pub const FILE_FAILED: u8 = 13;
    pub const EVENT: u8 = 14;
    pub const FINISH: u8 = 15;
    pub const BYE: u8 = 16;
    pub const MODULES: u8 = 17;
    pub const STREAM_TOKEN: u8 = 18;
    pub const SEGMENT: u8 = 19;
    pub const SEGMENT_END: u8 = 20;
    pub const SPANS: u8 = 21;
    pub const LIST_ACK: u8 = 22;
    pub const SETTLED: u8 = 40;
    pub const HOLE: u8 = 80;
}

impl Message {
    /// A short name for error messages ("expected X, got Y").
    pub fn name(&self) -> &'static str {
        match self {
            Message::Request(_) => "Request",
            Message::Accept => "Accept",
            Message::Fatal(_) => "Fatal",
            Message::ListStart(_) => "ListStart",
            Message::Entry(_) => "Entry",
            Message::ListEnd { .. } => "ListEnd",
            Message::ListAck { .. } => "ListAck",
            Message::Want { .. } => "Want",
            Message::Spans { .. } => "Spans",
            Message::Recipe { .. } => "Recipe",
            Message::RecipeEnd { .. } => "RecipeEnd",
            Message::Need { .. } => "Need",
            Message::Data { .. } => "Data",
            Message::FileEnd { .. } => "FileEnd",
            Message::FileFailed { .. } => "FileFailed",
            Message::Event(_) => "Event",
            Message::Finish(_) => "Finish",
            Message::Bye => "Bye",
            Message::Modules(_) => "Modules",
            Message::StreamToken(_) => "StreamToken",
            Message::Segment { .. } => "Segment",
            Message::SegmentEnd { .. } => "SegmentEnd",
            Message::Settled { .. } => "Settled",
            Message::Hole { .. } => "Hole",
        }
    }

    /// Appends this message's payload (not the frame header) to `w`.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Message::Request(r) => {
                w.u8(tag::REQUEST);
                w.u8(match r.role {
                    Role::ServerSends => 0,
                    Role::ServerReceives => 1,
                    Role::ListModules => 2,
                    Role::JoinStream => 3,
                });
                w.varint(r.paths.len() as u64);
                for p in &r.paths {
                    w.bytes(p);
                }
                encode_options(&r.options, w);
            }
            Message::Accept => w.u8(tag::ACCEPT),
            Message::Fatal(t) => {
                w.u8(tag::FATAL);
                w.bytes(t);
            }
            Message::ListStart(s) => {
                w.u8(tag::LIST_START);
                w.bool(s.single_file);
                w.bool(s.single_dir);
            }
            Message::Entry(e) => {
                w.u8(tag::ENTRY);
                encode_entry(e, w);
            }
            Message::ListEnd { io_error } => {
                w.u8(tag::LIST_END);
                w.bool(*io_error);
            }
            Message::ListAck { entries } => {
                w.u8(tag::LIST_ACK);
                w.varint(*entries as u64);
            }
            Message::Settled { files } => {
                w.u8(tag::SETTLED);
                w.varint(files.len() as u64);
                for f in files {
                    w.varint(*f as u64);
                }
            }
            Message::Want { file, delta } => {
                w.u8(tag::WANT);
                w.varint(*file as u64);
                w.bool(delta.is_some());
                if let Some(key) = delta {
                    w.raw(key);
                }
            }
            Message::Spans { file, spans } => {
                w.u8(tag::SPANS);
                w.varint(*file as u64);
                w.varint(spans.len() as u64);
                for sp in spans {
                    w.varint(sp.chunks as u64);
                    w.varint(sp.len);
                    w.hash(&sp.hash);
                }
            }
            Message::Recipe { file, chunks } => {
                w.u8(tag::RECIPE);
                w.varint(*file as u64);
                w.varint(chunks.len() as u64);
                for c in chunks {
                    w.varint(c.len as u64);
                    w.raw(&c.hash);
                }
            }
            Message::RecipeEnd { file, size, hash } => {
                w.u8(tag::RECIPE_END);
                w.varint(*file as u64);
                w.varint(*size);
                w.hash(hash);
            }
            Message::Need { file, ranges } => {
                w.u8(tag::NEED);
                w.varint(*file as u64);
                w.varint(ranges.len() as u64);
                for (start, count) in ranges {
                    w.varint(*start as u64);
                    w.varint(*count as u64);
                }
            }
            Message::Data {
                file,
                compressed,
                raw_len,
                bytes,
            } => {
                encode_data_header(w, *file, *compressed, *raw_len, bytes.len());
                w.buf.extend_from_slice(bytes);
            }
            Message::Hole { file, offset, len } => {
                w.u8(tag::HOLE);
                w.varint(*file as u64);
                w.varint(*offset);
                w.varint(*len);
            }
            Message::FileEnd { file, size, hash } => {
                w.u8(tag::FILE_END);
                w.varint(*file as u64);
                w.varint(*size);
                w.hash(hash);
            }
            Message::FileFailed { file, reason } => {
                w.u8(tag::FILE_FAILED);
                w.varint(*file as u64);
                w.bytes(reason);
            }
            Message::Event(e) => {
                w.u8(tag::EVENT);
                w.u8(e.kind as u8);
                w.bytes(&e.name);
                w.varint(e.a);
                w.varint(e.b);
                w.bytes(&e.text);
            }
            Message::Finish(s) => {
                w.u8(tag::FINISH);
                for v in [
                    s.files,
                    s.transferred,
                    s.total_size,
                    s.literal,
                    s.reused,
                    s.deleted,
                    s.errors,
                ] {
                    w.varint(v);
                }
                w.bool(s.delete_skipped);
            }
            Message::Bye => w.u8(tag::BYE),
            Message::StreamToken(t) => {
                w.u8(tag::STREAM_TOKEN);
                w.buf.extend_from_slice(t);
            }
            Message::Segment {
                file,
                offset,
                compressed,
                raw_len,
                bytes,
            } => {
                encode_segment_header(w, *file, *offset, *compressed, *raw_len, bytes.len());
                w.buf.extend_from_slice(bytes);
            }
            Message::SegmentEnd {
                file,
                offset,
                len,
                hash,
            } => {
                w.u8(tag::SEGMENT_END);
                w.varint(*file as u64);
                w.varint(*offset);
                w.varint(*len);
                w.hash(hash);
            }
            Message::Modules(list) => {
                w.u8(tag::MODULES);
                w.varint(list.len() as u64);
                for m in list {
                    w.bytes(m.name.as_bytes());
                    w.bytes(m.comment.as_bytes());
                    w.bool(m.read_only);
                }
            }
        }
    }

    /// Encodes into a fresh payload buffer.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.buf
    }

    /// Decodes one frame payload. Every length and count is checked against its
    /// limit before use.
    /// (A reader that can put a data block's bytes straight where they go
    /// reads them after [`BlockHead::peek`] instead.)
    pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(payload);
        let t = r.u8("message type")?;
        let msg = match t {
            tag::REQUEST => {
                let role = match r.u8("role")? {
                    0 => Role::ServerSends,
                    1 => Role::ServerReceives,
                    2 => Role::ListModules,
                    3 => Role::JoinStream,
                    _ => return Err(DecodeError::Invalid("role")),
                };
                let n = r.count(MAX_PATHS, "path count")?;
                let mut paths = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    paths.push(r.bytes(MAX_PATH, "path")?.to_vec());
                }
                let options = decode_options(&mut r)?;
                Message::Request(Request {
                    role,
                    paths,
                    options,
                })
            }
            tag::ACCEPT => Message::Accept,
            tag::FATAL => Message::Fatal(r.bytes(MAX_TEXT, "error text")?.to_vec()),
            tag::LIST_START => Message::ListStart(ListStart {
                single_file: r.bool("single_file")?,
                single_dir: r.bool("single_dir")?,
            }),
            tag::ENTRY => Message::Entry(decode_entry(&mut r)?),
            tag::LIST_END => Message::ListEnd {
                io_error: r.bool("io_error")?,
            },
            tag::LIST_ACK => Message::ListAck {
                entries: r.count(u32::MAX as usize, "list entries")? as u32,
            },
            tag::SETTLED => {
                let n = r.count(MAX_SETTLED, "settled files")?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(file_index(&mut r)?);
                }
                Message::Settled { files }
            }
            tag::WANT => Message::Want {
                file: file_index(&mut r)?,
                delta: match r.bool("delta")? {
                    true => Some(r.array("rebuild key")?),
                    false => None,
                },
            },
            tag::SPANS => {
                let file = file_index(&mut r)?;
                let n = r.count(MAX_SPAN_BATCH, "span batch")?;
                // each span takes at least 34 bytes
                if n > r.remaining() / 34 {
                    return Err(DecodeError::Truncated("spans"));
                }
                let mut spans = Vec::with_capacity(n);
                for _ in 0..n {
                    let chunks = r.count(MAX_SPAN_CHUNKS, "chunks in a span")? as u32;
                    let len = r.varint("span length")?;
                    if chunks == 0 || len == 0 {
                        return Err(DecodeError::Invalid("empty span"));
                    }
                    if len > chunks as u64 * crate::chunk::MAX_CHUNK as u64 {
                        return Err(DecodeError::Invalid("span longer than its chunks"));
                    }
                    spans.push(SpanRef {
                        chunks,
                        len,
                        hash: r.hash("span hash")?,
                    });
                }
                Message::Spans { file, spans }
            }
            tag::RECIPE => {
                let file = file_index(&mut r)?;
                let n = r.count(MAX_RECIPE_BATCH, "recipe batch")?;
                // each chunk takes at least 17 bytes: a liar cannot make us reserve more
                if n > r.remaining() / 17 {
                    return Err(DecodeError::Truncated("recipe"));
                }
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.count(crate::chunk::MAX_CHUNK, "chunk length")? as u32;
                    if len == 0 {
                        return Err(DecodeError::Invalid("chunk length 0"));
                    }
                    chunks.push(ChunkRef {
                        len,
                        hash: r.array("chunk hash")?,
                    });
                }
                Message::Recipe { file, chunks }
            }
            tag::RECIPE_END => Message::RecipeEnd {
                file: file_index(&mut r)?,
                size: r.varint("size")?,
                hash: r.hash("file hash")?,
            },
            tag::NEED => {
                let file = file_index(&mut r)?;
                let n = r.count(MAX_RANGES, "range count")?;
                if n > r.remaining() / 2 {
                    return Err(DecodeError::Truncated("ranges"));
                }
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = r.count(u32::MAX as usize, "range start")? as u32;
                    let count = r.count(u32::MAX as usize, "range count")? as u32;
                    ranges.push((start, count));
                }
                Message::Need { file, ranges }
            }
            tag::DATA | tag::SEGMENT => {
                let head = BlockHead::read(&mut r, t)?;
                let data = r.take(head.len, "data")?;
                head.check()?;
                head.into_message(data.to_vec())
            }
            tag::HOLE => {
                let file = file_index(&mut r)?;
                let offset = r.varint("hole offset")?;
                let len = r.varint("hole length")?;
                if len == 0 {
                    return Err(DecodeError::Invalid("empty hole"));
                }
                if offset.checked_add(len).is_none() {
                    return Err(DecodeError::Invalid("hole past the largest offset"));
                }
                Message::Hole { file, offset, len }
            }
            tag::FILE_END => Message::FileEnd {
                file: file_index(&mut r)?,
                size: r.varint("size")?,
                hash: r.hash("file hash")?,
            },
            tag::FILE_FAILED => Message::FileFailed {
                file: file_index(&mut r)?,
                reason: r.bytes(MAX_TEXT, "reason")?.to_vec(),
            },
            tag::EVENT => {
                let kind = match r.u8("event kind")? {
                    0 => EventKind::Updated,
                    1 => EventKind::Deleted,
                    2 => EventKind::Error,
                    3 => EventKind::Notice,
                    4 => EventKind::Progress,
                    5 => EventKind::Overall,
                    6 => EventKind::Itemized,
                    _ => return Err(DecodeError::Invalid("event kind")),
                };
                let e = Event {
                    kind,
                    name: r.bytes(MAX_PATH, "event name")?.to_vec(),
                    a: r.varint("event value")?,
                    b: r.varint("event value")?,
                    text: r.bytes(MAX_TEXT, "event text")?.to_vec(),
                };
                if kind == EventKind::Itemized {
                    let bits = u32::try_from(e.b)
                        .map_err(|_| DecodeError::Invalid("itemized event bits"))?;
                    item::decode_text(item::Item(bits), &e.text)?;
                }
                Message::Event(e)
            }
            tag::FINISH => {
                let mut v = [0u64; 7];
                for x in v.iter_mut() {
                    *x = r.varint("summary")?;
                }
                Message::Finish(Summary {
                    files: v[0],
                    transferred: v[1],
                    total_size: v[2],
                    literal: v[3],
                    reused: v[4],
                    deleted: v[5],
                    errors: v[6],
                    delete_skipped: r.bool("delete_skipped")?,
                })
            }
            tag::BYE => Message::Bye,
            tag::STREAM_TOKEN => Message::StreamToken(r.token("stream token")?),
            tag::SEGMENT_END => Message::SegmentEnd {
                file: file_index(&mut r)?,
                offset: r.varint("segment offset")?,
                len: r.varint("segment length")?,
                hash: r.hash("segment hash")?,
            },
            tag::MODULES => {
                let n = r.count(MAX_MODULES, "module count")?;
                let mut list = Vec::with_capacity(n.min(64));
                // UTF-8 or refused: a lossy conversion could grow a name
                // past the limit it was read under
                let text = |b: &[u8], what| {
                    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid(what))
                };
                for _ in 0..n {
                    list.push(ModuleInfo {
                        name: text(r.bytes(MAX_COMPONENT, "module name")?, "module name")?,
                        comment: text(r.bytes(MAX_TEXT, "module comment")?, "module comment")?,
                        read_only: r.bool("read_only")?,
                    });
                }
                Message::Modules(list)
            }
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        r.finish(msg.name())?;
        Ok(msg)
    }
}

/// The longest [`BlockHead`] on the wire (a tag and varints of ten bytes).
pub const MAX_BLOCK_HEAD: usize = 42;

/// What a `Data` or `Segment` message says before its bytes, so that a reader
/// can put the bytes straight into the buffer they will be used from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHead {
    /// A `Segment`'s offset; `None` for `Data`.
    segment: Option<u64>,
    file: u32,
    compressed: bool,
    raw_len: u32,
    /// How many bytes follow the head.
    pub len: usize,
}

impl BlockHead {
    /// Reads the fields after the tag `t` (`DATA` or `SEGMENT`).
    fn read(r: &mut Reader, t: u8) -> Result<BlockHead, DecodeError> {
        let file = file_index(r)?;
        let segment = match t {
            tag::SEGMENT => Some(r.varint("segment offset")?),
            _ => None,
        };
        Ok(BlockHead {
            segment,
            file,
            compressed: r.bool("compressed")?,
            raw_len: r.count(BLOCK_SIZE, "data length")? as u32,
            len: r.count(BLOCK_SIZE + 1024, "data")?,
        })
    }

    /// Uncompressed bytes must be as long as the head says.
    fn check(&self) -> Result<(), DecodeError> {
        if !self.compressed && self.len != self.raw_len as usize {
            return Err(DecodeError::Invalid("data length"));
        }
        Ok(())
    }

    /// The head a frame payload starts with, and how many of its bytes it
    /// took, if `prefix` (the payload's first [`MAX_BLOCK_HEAD`] bytes, or all
    /// of a shorter one) starts a well-formed `Data` or `Segment`. `None` for
    /// any other payload: [`Message::decode`] judges those.
    pub fn peek(prefix: &[u8]) -> Option<(BlockHead, usize)> {
        let mut r = Reader::new(prefix);
        let t = r.u8("message type").ok()?;
        if t != tag::DATA && t != tag::SEGMENT {
            return None;
        }
        let head = BlockHead::read(&mut r, t).ok()?;
        head.check().ok()?;
        Some((head, prefix.len() - r.remaining()))
    }

    /// The message, with `bytes` (`len` of them) as its block.
    pub fn into_message(self, bytes: Vec<u8>) -> Message {
        debug_assert_eq!(bytes.len(), self.len);
        let BlockHead {
            segment,
            file,
            compressed,
            raw_len,
            ..
        } = self;
        match segment {
            Some(offset) => Message::Segment {
                file,
                offset,
                compressed,
                raw_len,
                bytes,
            },
            None => Message::Data {
                file,
                compressed,
                raw_len,
                bytes,
            },
        }
    }
}

/// Writes everything of a `Segment` message but its bytes.
pub fn encode_segment_header(
    w: &mut Writer,
    file: u32,
    offset: u64,
    compressed: bool,
    raw_len: u32,
    len: usize,
) {
    w.u8(tag::SEGMENT);
    w.varint(file as u64);
    w.varint(offset);
    w.bool(compressed);
    w.varint(raw_len as u64);
    w.varint(len as u64);
}

/// Writes everything of a `Data` message but its bytes, so that a sender can
/// append the bytes from its own buffer without building a [`Message`].
pub fn encode_data_header(w: &mut Writer, file: u32, compressed: bool, raw_len: u32, len: usize) {
    w.u8(tag::DATA);
    w.varint(file as u64);
    w.bool(compressed);
    w.varint(raw_len as u64);
    w.varint(len as u64);
}

fn file_index(r: &mut Reader) -> Result<u32, DecodeError> {
    Ok(r.count(u32::MAX as usize, "file index")? as u32)
}

fn encode_options(o: &Options, w: &mut Writer) {
    let mut copy = o.clone();
    let mut bits: u32 = 0;
    for (i, f) in OPT_FLAGS.iter().enumerate() {
        if *f(&mut copy) {
            bits |= 1 << i;
        }
    }
    w.u32(bits);
    match &o.backup_suffix {
        Some(s) => {
            w.bool(true);
            w.bytes(s);
        }
        None => w.bool(false),
    }
    w.varint(o.filters.len() as u64);
    for (include, pat) in &o.filters {
        w.bool(*include);
        w.bytes(pat);
    }
    w.varint(o.bwlimit);
    w.u8(o.streams);
    w.u8(o.compress_level);
    encode_extensions(o, w);
}

/// Reaches one boolean option.
type OptFlag = fn(&mut Options) -> &mut bool;
/// Reaches one optional number.
type OptNumber = fn(&mut Options) -> &mut Option<u64>;

/// The extension block's boolean options, bit by bit, with the flag that sets
/// each (for errors).
const EXT_FLAGS: [(OptFlag, &str); 11] = [
    (|o| &mut o.copy_unsafe_links, "--copy-unsafe-links"),
    (|o| &mut o.copy_dirlinks, "--copy-dirlinks"),
    (|o| &mut o.size_only, "--size-only"),
    (|o| &mut o.ignore_times, "--ignore-times"),
    (|o| &mut o.ignore_existing, "--ignore-existing"),
    (|o| &mut o.existing, "--existing"),
    (|o| &mut o.whole_file, "--whole-file"),
    (|o| &mut o.delete_excluded, "--delete-excluded"),
    (|o| &mut o.one_file_system, "--one-file-system"),
    (|o| &mut o.relative, "--relative"),
    (|o| &mut o.mkpath, "--mkpath"),
];

/// The extension block's numbers, with their tags and flags.
const EXT_NUMBERS: [(u64, OptNumber, &str); 3] = [
    (ext_tag::MAX_SIZE, |o| &mut o.max_size, "--max-size"),
    (ext_tag::MIN_SIZE, |o| &mut o.min_size, "--min-size"),
    (ext_tag::MAX_DELETE, |o| &mut o.max_delete, "--max-delete"),
];

/// Tags of the extension block's fields, in the order they are written.
mod ext_tag {
    /// A varint of [`super::EXT_FLAGS`] bits.
    pub const FLAGS: u64 = 1;
    /// The symlink policy, one byte (1 verbatim, 2 munge; safe is not sent).
    pub const SYMLINKS: u64 = 2;
    /// Varints, each present only when set.
    pub const MAX_SIZE: u64 = 3;
    pub const MIN_SIZE: u64 = 4;
    pub const MAX_DELETE: u64 = 5;
    /// The `--chmod` rules' text.
    pub const CHMOD: u64 = 6;
    /// [`super::Options::itemize`], no bytes (the issue's number: out of the
    /// way of the tags the other rsync flags take).
    pub const ITEMIZE: u64 = 24;
    /// [`super::Options::dir_merges`]: a count, then each rule's position
    /// (a varint) and file name.
    pub const DIR_MERGE: u64 = 46;
    /// [`super::Options::keep_dirlinks`], no bytes.
    pub const KEEP_DIRLINKS: u64 = 47;
    /// [`super::DestSide`]: the basis directories (a kind byte, a count,
    /// each path).
    pub const BASIS_DIRS: u64 = 20;
    /// A varint of [`super::DEST_FLAGS`] bits.
    pub const DEST_FLAGS: u64 = 21;
    /// The delete timing, one byte (1 before, 2 delay, 3 during; after is
    /// not sent).
    pub const DELETE_TIMING: u64 = 22;
    /// The `--chown` text.
    pub const CHOWN: u64 = 23;
    /// [`super::DestSide::atomic`], no bytes.
    pub const ATOMIC: u64 = 41;
    /// [`super::DestSide::backup_dir`]: the path.
    pub const BACKUP_DIR: u64 = 42;
    /// [`super::Options::link_marks`], no bytes (issue 25's numbers: 56–60).
    pub const LINK_MARKS: u64 = 56;
    /// [`super::Options::zstd_stream`], no bytes (issue 25's numbers: 63–65).
    pub const ZSTD_STREAM: u64 = 63;
    /// [`super::Options::sparse_holes`], no bytes (issue 25's numbers: 80–83).
    pub const SPARSE_HOLES: u64 = 80;
}

/// [`DestSide`]'s boolean options, bit by bit, with the flag that sets each.
/// Reaches one of [`DestSide`]'s boolean options.
type DestFlag = fn(&mut DestSide) -> &mut bool;

const DEST_FLAGS: [(DestFlag, &str); 2] = [
    (|d| &mut d.remove_source_files, "--remove-source-files"),
    (|d| &mut d.inplace, "--inplace"),
];

/// The flag of the first destination-side option that differs from what a
/// version-2 peer does, if any.
fn dest_side_flag(d: &DestSide) -> Option<&'static str> {
    if !d.basis_dirs.is_empty() {
        return Some(d.basis_kind.flag());
    }
    let mut copy = d.clone();
    if let Some((_, name)) = DEST_FLAGS.iter().find(|(f, _)| *f(&mut copy)) {
        return Some(name);
    }
    if d.chown.is_some() {
        return Some("--chown");
    }
    if d.atomic {
        return Some("--atomic");
    }
    if d.backup_dir.is_some() {
        return Some("--backup-dir");
    }
    match d.delete_timing {
        DeleteTiming::After => None,
        DeleteTiming::Before => Some("--delete-before"),
        DeleteTiming::Delay => Some("--delete-delay"),
        DeleteTiming::During => Some("--delete-during"),
    }
}

fn ext_flags(o: &Options) -> u64 {
    let mut copy = o.clone();
    let mut bits = 0u64;
    for (i, (f, _)) in EXT_FLAGS.iter().enumerate() {
        if *f(&mut copy) {
            bits |= 1 << i;
        }
    }
    bits
}

/// The extension block: nothing at all when every extended option has its
/// version-2 meaning, else a count of fields, each a tag and its bytes.
fn encode_extensions(o: &Options, w: &mut Writer) {
    let mut fields: Vec<(u64, Vec<u8>)> = Vec::new();
    let bits = ext_flags(o);
    if bits != 0 {
        let mut v = Writer::default();
        v.varint(bits);
        fields.push((ext_tag::FLAGS, v.buf));
    }
    match o.symlinks {
        LinkPolicy::Safe => {}
        LinkPolicy::Verbatim => fields.push((ext_tag::SYMLINKS, vec![1])),
        LinkPolicy::Munge => fields.push((ext_tag::SYMLINKS, vec![2])),
    }
    let mut copy = o.clone();
    for (tag, f, _) in EXT_NUMBERS {
        if let Some(n) = *f(&mut copy) {
            let mut v = Writer::default();
            v.varint(n);
            fields.push((tag, v.buf));
        }
    }
    if let Some(c) = &o.chmod {
        fields.push((ext_tag::CHMOD, c.clone()));
    }
    encode_dest_side(&o.dest_side, &mut fields);
    if o.itemize {
        fields.push((ext_tag::ITEMIZE, Vec::new()));
    }
    if o.dest_side.atomic {
        fields.push((ext_tag::ATOMIC, Vec::new()));
    }
    if let Some(d) = &o.dest_side.backup_dir {
        fields.push((ext_tag::BACKUP_DIR, d.clone()));
    }
    if o.link_marks {
        fields.push((ext_tag::LINK_MARKS, Vec::new()));
    }
    if o.zstd_stream {
        fields.push((ext_tag::ZSTD_STREAM, Vec::new()));
    }
    if o.sparse_holes {
        fields.push((ext_tag::SPARSE_HOLES, Vec::new()));
    }
    if !o.dir_merges.is_empty() {
        let mut v = Writer::default();
        v.varint(o.dir_merges.len() as u64);
        for (at, name) in &o.dir_merges {
            v.varint(*at as u64);
            v.bytes(name);
        }
        fields.push((ext_tag::DIR_MERGE, v.buf));
    }
    if o.keep_dirlinks {
        fields.push((ext_tag::KEEP_DIRLINKS, Vec::new()));
    }
    // tags go in increasing order, whichever option pushed its field first
    fields.sort_by_key(|(tag, _)| *tag);
    if fields.is_empty() {
        return;
    }
    w.varint(fields.len() as u64);
    for (tag, bytes) in fields {
        w.varint(tag);
        w.bytes(&bytes);
    }
}

/// Most fields in an extension block.
const MAX_EXT_FIELDS: usize = 64;

fn encode_dest_side(d: &DestSide, fields: &mut Vec<(u64, Vec<u8>)>) {
    if !d.basis_dirs.is_empty() {
        let mut v = Writer::default();
        v.u8(match d.basis_kind {
            BasisKind::Link => 0,
            BasisKind::Copy => 1,
            BasisKind::Compare => 2,
        });
        v.varint(d.basis_dirs.len() as u64);
        for dir in &d.basis_dirs {
            v.bytes(dir);
        }
        fields.push((ext_tag::BASIS_DIRS, v.buf));
    }
    let mut copy = d.clone();
    let mut bits = 0u64;
    for (i, (f, _)) in DEST_FLAGS.iter().enumerate() {
        if *f(&mut copy) {
            bits |= 1 << i;
        }
    }
    if bits != 0 {
        let mut v = Writer::default();
        v.varint(bits);
        fields.push((ext_tag::DEST_FLAGS, v.buf));
    }
    let timing = match d.delete_timing {
        DeleteTiming::After => None,
        DeleteTiming::Before => Some(1),
        DeleteTiming::Delay => Some(2),
        DeleteTiming::During => Some(3),
    };
    if let Some(t) = timing {
        fields.push((ext_tag::DELETE_TIMING, vec![t]));
    }
    if let Some(c) = &d.chown {
        fields.push((ext_tag::CHOWN, c.clone()));
    }
}

/// Decodes one of [`DestSide`]'s fields; `false` for a tag that is not one.
fn decode_dest_side(tag: u64, v: &mut Reader, d: &mut DestSide) -> Result<bool, DecodeError> {
    match tag {
        ext_tag::BASIS_DIRS => {
            d.basis_kind = match v.u8("basis directory kind")? {
                0 => BasisKind::Link,
                1 => BasisKind::Copy,
                2 => BasisKind::Compare,
                _ => return Err(DecodeError::Invalid("basis directory kind")),
            };
            let n = v.count(MAX_BASIS_DIRS, "basis directory count")?;
            for _ in 0..n {
                d.basis_dirs
                    .push(v.bytes(MAX_PATH, "basis directory")?.to_vec());
            }
        }
        ext_tag::DEST_FLAGS => {
            let bits = v.varint("destination option flags")?;
            if bits >> DEST_FLAGS.len() != 0 {
                return Err(DecodeError::Invalid("destination option flags"));
            }
            for (i, (f, _)) in DEST_FLAGS.iter().enumerate() {
                *f(d) = bits & (1 << i) != 0;
            }
        }
        ext_tag::DELETE_TIMING => {
            d.delete_timing = match v.u8("delete timing")? {
                1 => DeleteTiming::Before,
                2 => DeleteTiming::Delay,
                3 => DeleteTiming::During,
                _ => return Err(DecodeError::Invalid("delete timing")),
            }
        }
        ext_tag::CHOWN => {
            let text = v.take(v.remaining(), "chown")?;
            if text.len() > 2 * MAX_COMPONENT {
                return Err(DecodeError::TooLarge {
                    what: "chown",
                    limit: 2 * MAX_COMPONENT,
                });
            }
            d.chown = Some(text.to_vec());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn decode_extensions(r: &mut Reader, o: &mut Options) -> Result<(), DecodeError> {
    if r.remaining() == 0 {
        return Ok(());
    }
    let n = r.count(MAX_EXT_FIELDS, "option extension count")?;
    let mut last = 0;
    for _ in 0..n {
        let tag = r.varint("option extension tag")?;
        if tag <= last {
            return Err(DecodeError::Invalid("option extension order"));
        }
        last = tag;
        let mut v = Reader::new(r.bytes(MAX_TEXT, "option extension")?);
        match tag {
            ext_tag::FLAGS => {
                let bits = v.varint("extended option flags")?;
                if bits >> EXT_FLAGS.len() != 0 {
                    return Err(DecodeError::Invalid("extended option flags"));
                }
                for (i, (f, _)) in EXT_FLAGS.iter().enumerate() {
                    *f(o) = bits & (1 << i) != 0;
                }
            }
            ext_tag::SYMLINKS => {
                o.symlinks = match v.u8("symlink policy")? {
                    1 => LinkPolicy::Verbatim,
                    2 => LinkPolicy::Munge,
                    _ => return Err(DecodeError::Invalid("symlink policy")),
                }
            }
            t if EXT_NUMBERS.iter().any(|(tag, _, _)| *tag == t) => {
                let (_, f, _) = EXT_NUMBERS.iter().find(|(tag, _, _)| *tag == t).unwrap();
                *f(o) = Some(v.varint("extended option number")?);
            }
            ext_tag::CHMOD => {
                let text = v.take(v.remaining(), "chmod rules")?;
                if text.len() > MAX_PATH {
                    return Err(DecodeError::TooLarge {
                        what: "chmod rules",
                        limit: MAX_PATH,
                    });
                }
                o.chmod = Some(text.to_vec());
            }
            t if decode_dest_side(t, &mut v, &mut o.dest_side)? => {}
            ext_tag::ITEMIZE => o.itemize = true,
            ext_tag::ATOMIC => o.dest_side.atomic = true,
            ext_tag::BACKUP_DIR => {
                let dir = v.take(v.remaining(), "backup dir")?;
                if dir.is_empty() || dir.len() > MAX_PATH {
                    return Err(DecodeError::Invalid("backup dir"));
                }
                o.dest_side.backup_dir = Some(dir.to_vec());
            }
            ext_tag::LINK_MARKS => o.link_marks = true,
            ext_tag::ZSTD_STREAM => o.zstd_stream = true,
            ext_tag::SPARSE_HOLES => o.sparse_holes = true,
            ext_tag::DIR_MERGE => {
                let n = v.count(MAX_FILTERS, "dir-merge count")?;
                for _ in 0..n {
                    let at = v.count(MAX_FILTERS, "dir-merge position")? as u32;
                    let name = v.bytes(MAX_COMPONENT, "dir-merge name")?.to_vec();
                    o.dir_merges.push((at, name));
                }
            }
            ext_tag::KEEP_DIRLINKS => o.keep_dirlinks = true,
            _ => return Err(DecodeError::Invalid("option extension tag")),
        }
        v.finish("option extension")?;
    }
    Ok(())
}

fn decode_options(r: &mut Reader) -> Result<Options, DecodeError> {
    let bits = r.u32("option flags")?;
    if bits >> OPT_FLAGS.len() != 0 {
        return Err(DecodeError::Invalid("option flags"));
    }
    let mut o = Options::default();
    for (i, f) in OPT_FLAGS.iter().enumerate() {
        *f(&mut o) = bits & (1 << i) != 0;
    }
    if r.bool("backup flag")? {
        o.backup_suffix = Some(r.bytes(MAX_COMPONENT, "backup suffix")?.to_vec());
    }
    let n = r.count(MAX_FILTERS, "filter count")?;
    for _ in 0..n {
        let include = r.bool("filter kind")?;
        o.filters
            .push((include, r.bytes(MAX_PATH, "filter pattern")?.to_vec()));
    }
    o.bwlimit = r.varint("bwlimit")?;
    o.streams = r.u8("streams")?;
    if o.streams > MAX_STREAMS {
        return Err(DecodeError::TooLarge {
            what: "stream count",
            limit: MAX_STREAMS as usize,
        });
    }
    o.compress_level = r.u8("compression level")?;
    if o.compress_level > MAX_ZSTD_LEVEL {
        return Err(DecodeError::TooLarge {
            what: "compression level",
            limit: MAX_ZSTD_LEVEL as usize,
        });
    }
    decode_extensions(r, &mut o)?;
    Ok(o)
}

fn encode_entry(e: &Entry, w: &mut Writer) {
    w.bytes(&e.name);
    w.u8(match e.kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    });
    w.varint(e.mode as u64);
    w.i64(e.mtime);
    w.varint(e.mtime_nsec as u64);
    w.varint(e.size);
    w.varint(e.uid as u64);
    w.varint(e.gid as u64);
    w.bytes(&e.target);
    match e.link_to {
        Some(i) => {
            w.bool(true);
            w.varint(i as u64);
        }
        None => w.bool(false),
    }
    match &e.checksum {
        Some(h) => {
            w.bool(true);
            w.hash(h);
        }
        None => w.bool(false),
    }
}

fn decode_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let name = r.bytes(MAX_PATH, "entry name")?.to_vec();
    let kind = match r.u8("entry kind")? {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        _ => return Err(DecodeError::Invalid("entry kind")),
    };
    let mode = r.count(0o7777, "mode")? as u32;
    let mtime = r.i64("mtime")?;
    let mtime_nsec = r.count(999_999_999, "mtime nanoseconds")? as u32;
    let size = r.varint("size")?;
    let uid = r.count(u32::MAX as usize, "uid")? as u32;
    let gid = r.count(u32::MAX as usize, "gid")? as u32;
    let target = r.bytes(MAX_PATH, "link target")?.to_vec();
    let link_to = if r.bool("hard link flag")? {
        Some(file_index(r)?)
    } else {
        None
    };
    let checksum = if r.bool("checksum flag")? {
        Some(r.hash("checksum")?)
    } else {
        None
    };
    Ok(Entry {
        name,
        kind,
        mode,
        mtime,
        mtime_nsec,
        size,
        uid,
        gid,
        target,
        link_to,
        checksum,
    })
}

#[cfg(test)]
mod tests;
