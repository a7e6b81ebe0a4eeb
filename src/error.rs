//! Error types shared by the library layers, keeping apart who is at fault: the
//! peer (it broke the protocol), the connection (it broke), or this machine (a
//! local file could not be read or written). A failure of one file
//! ([`FileError`]) is kept apart from a failure of the transfer
//! ([`TransferError`]): the first is reported and counted, the transfer goes
//! on. Not for errors of one operation that its own module types (decoding,
//! keys, configuration): those live beside the code that raises them.

use crate::proto::{DecodeError, HandshakeError};
use std::io;

/// Why a transfer failed as a whole. Per-file failures are reported as events
/// and counted in the summary instead.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer sent something the protocol does not allow.
    #[error("protocol error: the peer {0}")]
    PeerMisbehaved(String),
    /// A frame could not be decoded.
    #[error("protocol error: the peer sent a malformed message: {0}")]
    Malformed(#[from] DecodeError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The peer reported a fatal error of its own.
    #[error("{0}")]
    Remote(String),
    /// Reading or writing the connection failed.
    #[error("connection lost: {0}")]
    Connection(String),
    /// No connection was made: the name did not resolve, or nothing
    /// answered. Whether trying again can help depends on `why` and on
    /// whether the peer was ever reached (`transfer::run` decides). Exits
    /// 12 and reports category `connection`, as a lost connection does.
    #[error("{text}")]
    Connect { text: String, why: ConnectFailure },
    /// The daemon's key is unknown or changed: a trust decision, never retried.
    #[error("{0}")]
    HostKey(String),
    /// The connection's own authentication failed: the data was altered on the
    /// way. Never retried.
    #[error("{0}")]
    Integrity(String),
    /// A local file operation failed.
    #[error("{path}: {text}")]
    Local { path: String, text: String },
    /// The request itself is wrong (bad destination, conflicting options).
    #[error("{0}")]
    Usage(String),
    /// A bug on this side: a thread of this process panicked (the local
    /// receiver of a local transfer). Not the peer's doing, so not
    /// [`Remote`](Self::Remote); it exits 12 as it did when it was filed there.
    #[error("{0}")]
    Internal(String),
    #[error("transfer cancelled")]
    Cancelled,
}

impl TransferError {
    pub fn local(path: impl Into<String>, e: &io::Error) -> Self {
        // a store's server said no, or could not be reached: not this host's
        // files (exit 12, as for any peer), though it came as an io::Error
        match e.get_ref().and_then(|i| i.downcast_ref::<StoreFailed>()) {
            Some(StoreFailed::Refused(why)) => {
                return TransferError::Remote(format!("{}: {why}", path.into()))
            }
            Some(StoreFailed::Unreachable(why)) => {
                return TransferError::Connect {
                    text: format!("{}: {why}", path.into()),
                    why: ConnectFailure::Other,
                }
            }
            None => {}
        }
        TransferError::Local {
            path: path.into(),
            text: io_text(e),
        }
    }
    pub fn connection(e: &io::Error) -> Self {
        if e.get_ref().is_some_and(|i| i.is::<Altered>()) {
            return TransferError::Integrity(Altered.to_string());
        }
        TransferError::Connection(io_text(e))
    }

    /// The process exit code for this error, following rsync's numbers where
    /// one applies (see the README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            TransferError::Usage(_) => 1,
            TransferError::Handshake(_) => 2,
            TransferError::Local { .. } => 11,
            TransferError::PeerMisbehaved(_) | TransferError::Malformed(_) => 12,
            TransferError::Connection(_)
            | TransferError::Connect { .. }
            | TransferError::Integrity(_)
            | TransferError::HostKey(_) => 12,
            TransferError::Remote(_) | TransferError::Internal(_) => 12,
            TransferError::Cancelled => 20,
        }
    }
}

/// A child's exit as a message says it: `exit 127`, or `killed by a signal`
/// (never Rust's `Some(127)`).
pub fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".into(),
    }
}

/// Why no connection to a peer could be made, told apart by what trying
/// again can change: a name that does not exist or a port nothing listens on
/// stays so (ssh and rsync give up at once), a resolver that did not answer
/// may answer next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The name does not exist (getaddrinfo `EAI_NONAME`, NXDOMAIN).
    NoSuchName,
    /// No DNS server answered (getaddrinfo `EAI_AGAIN`).
    ResolverDown,
    /// The host answered, but nothing accepts on the port (`ECONNREFUSED`).
    Refused,
    /// Nothing answered within the timeout.
    TimedOut,
    /// No route to the host or its network (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// Any other failure to resolve or connect.
    Other,
}

impl ConnectFailure {
    /// What a failed `connect()` says.
    pub fn of_connect(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => return ConnectFailure::Refused,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => return ConnectFailure::Unreachable,
            Some(libc::ETIMEDOUT) => return ConnectFailure::TimedOut,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectFailure::TimedOut,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ConnectFailure::Unreachable
            }
            _ => ConnectFailure::Other,
        }
    }

    /// What a failed name lookup says. The standard library keeps only
    /// getaddrinfo's text (`gai_strerror`, in the C locale a Rust program
    /// runs in), so the two codes that matter are told apart by the texts
    /// of glibc and musl for them.
    pub fn of_lookup(e: &io::Error) -> Self {
        let text = e.to_string();
        let has = |s: &str| text.contains(s);
        if has("Name or service not known")
            || has("No address associated with hostname")
            || has("Name does not resolve")
            || has("Name has no usable address")
        {
            ConnectFailure::NoSuchName
        } else if has("Temporary failure in name resolution") {
            ConnectFailure::ResolverDown
        } else {
            ConnectFailure::Other
        }
    }
}

/// What was being done to a file when it failed: the `op` of a
/// [`FileError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOp {
    /// Sending: opening a file, or taking its size and mtime.
    Open,
    /// Sending: reading its bytes.
    Read,
    /// Receiving: creating the temporary file it is written to.
    Create,
    /// Receiving: writing its bytes.
    Write,
    /// Receiving: reading the old file a rebuild copies from.
    ReadBasis,
    /// Receiving: reading back what a rebuild already wrote.
    ReadBack,
    /// Receiving: putting the finished file in its place (rename, metadata,
    /// sync).
    Publish,
    /// Receiving: making a hard link to it.
    Link,
    /// Receiving: looking at what is at its place now.
    Stat,
    /// Receiving: removing what is in the way (a file where a directory
    /// goes, or the reverse).
    ClearWay,
    /// Receiving: making a directory.
    Mkdir,
    /// Receiving: making a symlink.
    Symlink,
    /// Receiving: setting its mode, owner or times.
    Metadata,
    /// `--delete`: removing an extraneous file.
    Delete,
}

/// One file that could not be sent or received: which file (as shown to the
/// user), what was being done, and the I/O error. The transfer goes on
/// without it. Its text is the one users and tests have always seen, which
/// for some operations leaves the name out (the event that carries the text
/// names the file); the error's kind says whether the disk is full
/// ([`FileError::disk_full`]).
#[derive(Debug, thiserror::Error)]
pub struct FileError {
    /// The file as shown: escaped, relative to the transfer's root.
    pub name: String,
    pub op: FileOp,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(name: impl Into<String>, op: FileOp, source: io::Error) -> Self {
        FileError {
            name: name.into(),
            op,
            source,
        }
    }

    /// Whether the file failed because the disk (or a quota) is full.
    pub fn disk_full(&self) -> bool {
        is_disk_full(&self.source)
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, why) = (&self.name, io_text(&self.source));
        match self.op {
            FileOp::Open => write!(f, "{name}: {why}"),
            FileOp::Read => write!(f, "{name}: read failed: {why}"),
            FileOp::Create => write!(f, "cannot create a temporary file for {name}: {why}"),
            FileOp::Write => write!(f, "write failed: {why}"),
            FileOp::ReadBasis => write!(f, "cannot read the basis: {why}"),
            FileOp::ReadBack => write!(f, "cannot read back: {why}"),
            FileOp::Publish => write!(f, "cannot write {name}: {why}"),
            FileOp::Link => write!(f, "link {name}: {why}"),
            FileOp::Stat | FileOp::Metadata => write!(f, "{why}"),
            FileOp::ClearWay => write!(f, "cannot remove what is in the way: {why}"),
            FileOp::Mkdir => write!(f, "mkdir {name}: {why}"),
            FileOp::Symlink => write!(f, "symlink {name}: {why}"),
            FileOp::Delete => write!(f, "cannot delete {name}: {why}"),
        }
    }
}

/// A file error as the HTTP API shows it: the name, the operation, the error
/// kind (`"StorageFull"`, `"PermissionDenied"`, ...) and the text.
impl serde::Serialize for FileError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FileError", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("op", &self.op)?;
        st.serialize_field("kind", &format!("{:?}", self.source.kind()))?;
        st.serialize_field("text", &self.to_string())?;
        st.end()
    }
}

/// A local file this machine could not read or write, not one of a
/// transfer's files: a key, `known_hosts`, `authorized_keys`, a config file.
/// Its text is `path: error`; as a [`TransferError`] it is a local fault
/// (exit 11).
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .path.display(), io_text(.source))]
pub struct PathError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathError {
    pub fn new(path: impl Into<std::path::PathBuf>, source: io::Error) -> Self {
        PathError {
            path: path.into(),
            source,
        }
    }
}

impl From<PathError> for TransferError {
    fn from(e: PathError) -> Self {
        TransferError::local(e.path.display().to_string(), &e.source)
    }
}

/// Whether `e` says the disk or a quota is full, read from its kind (or its
/// errno, for an error built from one), never from its text.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl TransferError {
    /// Who is at fault, in one word: what the HTTP API reports beside the
    /// text and the exit code.
    pub fn category(&self) -> &'static str {
        match self {
            TransferError::PeerMisbehaved(_) | TransferError::Malformed(_) => "peer",
            TransferError::Handshake(_) => "incompatible",
            TransferError::Remote(_) => "remote",
            TransferError::Connection(_) | TransferError::Connect { .. } => "connection",
            TransferError::HostKey(_) => "host_key",
            TransferError::Integrity(_) => "integrity",
            TransferError::Local { .. } => "local",
            TransferError::Usage(_) => "usage",
            TransferError::Internal(_) => "internal",
            TransferError::Cancelled => "cancelled",
        }
    }
}

/// A transfer's failure as the HTTP API shows it: `{"category": "local",
/// "exit_code": 11, "text": "..."}`.
impl serde::Serialize for TransferError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("TransferError", 3)?;
        st.serialize_field("category", self.category())?;
        st.serialize_field("exit_code", &self.exit_code())?;
        st.serialize_field("text", &self.to_string())?;
        st.end()
    }
}

/// Marks an io::Error as a remote store's failure (an S3 server), not this
/// host's: [`TransferError::local`] turns it into the peer's error.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailed {
    /// The server answered no (bad credentials, no such bucket, denied).
    #[error("{0}")]
    Refused(String),
    /// The server could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

/// Marks an io::Error as "the data was altered in transit".
#[derive(Debug)]
pub struct Altered;

impl std::fmt::Display for Altered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("integrity error: data was altered in transit (TLS record authentication failed); nothing was published")
    }
}

impl std::error::Error for Altered {}

/// An I/O error as a short lowercase-ish phrase, without "(os error N)".
pub fn io_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_read_from_the_kind_not_the_text() {
        // ENOSPC and EDQUOT, whatever the message says
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let os = io::Error::from_raw_os_error(errno);
            assert!(is_disk_full(&os), "{os}");
            let renamed = io::Error::new(os.kind(), "the volume said no");
            assert!(is_disk_full(&renamed), "{renamed}");
        }
        // the old text check's words, on an error of another kind
        let lookalike = io::Error::other("No space left on device");
        assert!(!is_disk_full(&lookalike));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EACCES)));
        let e = FileError::new(
            "f",
            FileOp::Write,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(e.disk_full());
    }

    #[test]
    fn a_failed_connect_is_classified_by_errno_and_a_lookup_by_gai_text() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            ConnectFailure::of_connect(&os(libc::ECONNREFUSED)),
            ConnectFailure::Refused
        );
        assert_eq!(
            ConnectFailure::of_connect(&os(libc::EHOSTUNREACH)),
            ConnectFailure::Unreachable
        );
        assert_eq!(
            ConnectFailure::of_connect(&os(libc::ENETUNREACH)),
            ConnectFailure::Unreachable
        );
        assert_eq!(
            ConnectFailure::of_connect(&io::Error::from(io::ErrorKind::TimedOut)),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            ConnectFailure::of_connect(&os(libc::EACCES)),
            ConnectFailure::Other
        );
        // what std makes of getaddrinfo's codes (glibc, then musl)
        let gai = |t: &str| {
            ConnectFailure::of_lookup(&io::Error::other(format!(
                "failed to lookup address information: {t}"
            )))
        };
        assert_eq!(gai("Name or service not known"), ConnectFailure::NoSuchName);
        assert_eq!(
            gai("No address associated with hostname"),
            ConnectFailure::NoSuchName
        );
        assert_eq!(gai("Name does not resolve"), ConnectFailure::NoSuchName);
        assert_eq!(
            gai("Temporary failure in name resolution"),
            ConnectFailure::ResolverDown
        );
        assert_eq!(
            gai("Non-recoverable failure in name resolution"),
            ConnectFailure::Other
        );
        let e = TransferError::Connect {
            text: "x".into(),
            why: ConnectFailure::Refused,
        };
        assert_eq!((e.exit_code(), e.category()), (12, "connection"));
    }

    #[test]
    fn a_file_error_reads_as_it_always_did() {
        let denied = || io::Error::from_raw_os_error(libc::EACCES);
        let cases = [
            (FileOp::Open, "dir/f: Permission denied"),
            (FileOp::Read, "dir/f: read failed: Permission denied"),
            (
                FileOp::Create,
                "cannot create a temporary file for dir/f: Permission denied",
            ),
            (FileOp::Write, "write failed: Permission denied"),
            (
                FileOp::ReadBasis,
                "cannot read the basis: Permission denied",
            ),
            (FileOp::ReadBack, "cannot read back: Permission denied"),
            (FileOp::Publish, "cannot write dir/f: Permission denied"),
            (FileOp::Link, "link dir/f: Permission denied"),
            (FileOp::Stat, "Permission denied"),
            (
                FileOp::ClearWay,
                "cannot remove what is in the way: Permission denied",
            ),
            (FileOp::Mkdir, "mkdir dir/f: Permission denied"),
            (FileOp::Symlink, "symlink dir/f: Permission denied"),
            (FileOp::Metadata, "Permission denied"),
            (FileOp::Delete, "cannot delete dir/f: Permission denied"),
        ];
        for (op, text) in cases {
            assert_eq!(FileError::new("dir/f", op, denied()).to_string(), text);
        }
    }

    #[test]
    fn a_transfer_error_serialises_with_its_category_and_exit_code() {
        let e = TransferError::local("/d", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"category":"local","exit_code":11,"text":"/d: Permission denied"}"#
        );
        let panicked = TransferError::Internal("the local receiver panicked".into());
        assert_eq!(panicked.exit_code(), 12);
        assert_eq!(panicked.category(), "internal");
    }

    #[test]
    fn a_file_error_serialises_with_its_kind() {
        let e = FileError::new(
            "f",
            FileOp::Write,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["name"], "f");
        assert_eq!(v["op"], "write");
        assert_eq!(v["kind"], "StorageFull");
        assert_eq!(v["text"], "write failed: No space left on device");
    }
}
