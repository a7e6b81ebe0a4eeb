//! The shell session on a daemon module (`ferry shell host::module`): a
//! request/response mode of the daemon protocol, one request at a time,
//! for what an interactive session needs besides transfers (list a
//! directory with what `ls -l` shows, stat, realpath for `cd`, mkdir,
//! rmdir, remove, rename, chmod, statvfs for `df`).
//!
//! It is a protocol version step: a client that wants a shell says so in
//! its hello ([`shell_hello`]: versions up to [`VERSION_SHELL`]); a daemon
//! that has the shell answers [`VERSION_SHELL`], one that does not answers
//! what it speaks (3 or lower), and the client then asks it nothing it could
//! misread and says in one line that the daemon is too old. After the
//! version the client sends [`Op::Open`] (the module and the directory to
//! start in) and then one [`Op`] per [`Reply`]. Transfers (`get`, `put`)
//! are not here: they open ordinary transfer connections.
//!
//! Paths are the module's own: `/` is the module's root, and the daemon
//! resolves every one beneath it (`server::shell`). Codec only, no I/O:
//! frames are [`super::frame`]'s.

use super::codec::{Reader, Writer};
use super::{DecodeError, MAGIC, MAX_PATH, MAX_TEXT, VERSION_MIN};

/// The protocol version that adds the shell session.
pub const VERSION_SHELL: u16 = 4;

/// The most entries one listing carries (a larger directory is cut short,
/// and says so).
pub const MAX_ENTRIES: usize = 65536;

/// The hello of a client that wants a shell: the usual magic, versions
/// `VERSION_MIN..=VERSION_SHELL` (an older daemon picks its own highest).
pub fn shell_hello() -> [u8; 9] {
    let mut h = [0u8; 9];
    h[..5].copy_from_slice(MAGIC);
    h[5..7].copy_from_slice(&VERSION_MIN.to_le_bytes());
    h[7..9].copy_from_slice(&VERSION_SHELL.to_le_bytes());
    h
}

/// Whether a client's hello asks for the shell session.
pub fn asks_for_shell(hello: &[u8; 9]) -> bool {
    &hello[..5] == MAGIC && u16::from_le_bytes([hello[7], hello[8]]) >= VERSION_SHELL
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `ls -l` and `cd` need of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    /// Owner and group ids, when the far side gives them (SFTP does). Not
    /// on the daemon's wire: who owns a module's files on the server is
    /// not the client's business.
    pub owner: Option<(u32, u32)>,
}

/// A file system's numbers, for `df`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The first request: `module[/dir]`.
    Open(Vec<u8>),
    Realpath(Vec<u8>),
    Stat(Vec<u8>),
    List(Vec<u8>),
    Mkdir(Vec<u8>),
    Rmdir(Vec<u8>),
    Remove(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    Chmod(Vec<u8>, u32),
    Statvfs(Vec<u8>),
}

/// The daemon's answer to one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// Why not: an errno when the file system said no (0 otherwise), and
    /// the text to show.
    Failed {
        errno: u32,
        text: Vec<u8>,
    },
    /// [`Op::Open`] accepted: the starting directory, and whether the
    /// module may be written.
    Opened {
        cwd: Vec<u8>,
        read_only: bool,
    },
    Path(Vec<u8>),
    Stat(Stat),
    /// A listing, and whether it was cut at [`MAX_ENTRIES`].
    Entries(Vec<(Vec<u8>, Stat)>, bool),
    Space(Space),
}

mod tag {
    pub const OPEN: u8 = 1;
    pub const REALPATH: u8 = 2;
    pub const STAT: u8 = 3;
    pub const LIST: u8 = 4;
    pub const MKDIR: u8 = 5;
    pub const RMDIR: u8 = 6;
    pub const REMOVE: u8 = 7;
    pub const RENAME: u8 = 8;
    pub const CHMOD: u8 = 9;
    pub const STATVFS: u8 = 10;

    pub const DONE: u8 = 64;
    pub const FAILED: u8 = 65;
    pub const OPENED: u8 = 66;
    pub const PATH: u8 = 67;
    pub const STAT_REPLY: u8 = 68;
    pub const ENTRIES: u8 = 69;
    pub const SPACE: u8 = 70;
}

impl Op {
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let (t, p) = match self {
            Op::Open(p) => (tag::OPEN, p),
            Op::Realpath(p) => (tag::REALPATH, p),
            Op::Stat(p) => (tag::STAT, p),
            Op::List(p) => (tag::LIST, p),
            Op::Mkdir(p) => (tag::MKDIR, p),
            Op::Rmdir(p) => (tag::RMDIR, p),
            Op::Remove(p) => (tag::REMOVE, p),
            Op::Rename(p, _) => (tag::RENAME, p),
            Op::Chmod(p, _) => (tag::CHMOD, p),
            Op::Statvfs(p) => (tag::STATVFS, p),
        };
        w.u8(t);
        w.bytes(p);
        match self {
            Op::Rename(_, to) => w.bytes(to),
            Op::Chmod(_, mode) => w.varint(*mode as u64),
            _ => {}
        }
        w.buf
    }

    /// Decodes one request; every length is checked before use.
    pub fn decode(payload: &[u8]) -> Result<Op, DecodeError> {
        let mut r = Reader::new(payload);
        let t = r.u8("shell request")?;
        let path = |r: &mut Reader| r.bytes(MAX_PATH, "path").map(<[u8]>::to_vec);
        let p = path(&mut r)?;
        let op = match t {
            tag::OPEN => Op::Open(p),
            tag::REALPATH => Op::Realpath(p),
            tag::STAT => Op::Stat(p),
            tag::LIST => Op::List(p),
            tag::MKDIR => Op::Mkdir(p),
            tag::RMDIR => Op::Rmdir(p),
            tag::REMOVE => Op::Remove(p),
            tag::RENAME => Op::Rename(p, path(&mut r)?),
            tag::CHMOD => {
                let mode = r.varint("mode")?;
                if mode > 0o7777 {
                    return Err(DecodeError::Invalid("mode"));
                }
                Op::Chmod(p, mode as u32)
            }
            tag::STATVFS => Op::Statvfs(p),
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        r.finish("shell request")?;
        Ok(op)
    }
}

fn put_stat(w: &mut Writer, s: &Stat) {
    w.u8(match s.kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Other => 3,
    });
    w.varint(s.mode as u64);
    w.varint(s.size);
    w.i64(s.mtime);
}

fn get_stat(r: &mut Reader) -> Result<Stat, DecodeError> {
    let kind = match r.u8("file kind")? {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Other,
        _ => return Err(DecodeError::Invalid("file kind")),
    };
    let mode = r.varint("mode")?;
    if mode > 0o7777 {
        return Err(DecodeError::Invalid("mode"));
    }
    Ok(Stat {
        kind,
        mode: mode as u32,
        size: r.varint("size")?,
        mtime: r.i64("mtime")?,
        owner: None,
    })
}

impl Reply {
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Reply::Done => w.u8(tag::DONE),
            Reply::Failed { errno, text } => {
                w.u8(tag::FAILED);
                w.varint(*errno as u64);
                w.bytes(&text[..text.len().min(MAX_TEXT)]);
            }
            Reply::Opened { cwd, read_only } => {
                w.u8(tag::OPENED);
                w.bytes(cwd);
                w.bool(*read_only);
            }
            Reply::Path(p) => {
                w.u8(tag::PATH);
                w.bytes(p);
            }
            Reply::Stat(s) => {
                w.u8(tag::STAT_REPLY);
                put_stat(&mut w, s);
            }
            Reply::Entries(list, cut) => {
                w.u8(tag::ENTRIES);
                w.varint(list.len() as u64);
                for (name, s) in list {
                    w.bytes(name);
                    put_stat(&mut w, s);
                }
                w.bool(*cut);
            }
            Reply::Space(s) => {
                w.u8(tag::SPACE);
                for v in [s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                    w.varint(v);
                }
            }
        }
        w.buf
    }

    /// Decodes one reply; every length and count is checked before use.
    pub fn decode(payload: &[u8]) -> Result<Reply, DecodeError> {
        let mut r = Reader::new(payload);
        let reply = match r.u8("shell reply")? {
            tag::DONE => Reply::Done,
            tag::FAILED => Reply::Failed {
                errno: r.varint("errno")?.min(u32::MAX as u64) as u32,
                text: r.bytes(MAX_TEXT, "error text")?.to_vec(),
            },
            tag::OPENED => Reply::Opened {
                cwd: r.bytes(MAX_PATH, "path")?.to_vec(),
                read_only: r.bool("read-only")?,
            },
            tag::PATH => Reply::Path(r.bytes(MAX_PATH, "path")?.to_vec()),
            tag::STAT_REPLY => Reply::Stat(get_stat(&mut r)?),
            tag::ENTRIES => {
                let n = r.count(MAX_ENTRIES, "entry count")?;
                // each entry takes at least 5 bytes (the name's length, the
                // kind, and three varints)
                if n > r.remaining() / 5 {
                    return Err(DecodeError::Truncated("entries"));
                }
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.bytes(super::MAX_COMPONENT, "name")?.to_vec();
                    // one name in the directory, nothing that climbs or nests
                    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                        return Err(DecodeError::Invalid("name"));
                    }
                    list.push((name, get_stat(&mut r)?));
                }
                Reply::Entries(list, r.bool("cut")?)
            }
            tag::SPACE => {
                let mut v = [0u64; 6];
                for x in &mut v {
                    *x = r.varint("statvfs")?;
                }
                let [frsize, blocks, bfree, bavail, files, ffree] = v;
                Reply::Space(Space {
                    frsize,
                    blocks,
                    bfree,
                    bavail,
                    files,
                    ffree,
                })
            }
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        r.finish("shell reply")?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_and_reply_round_trips() {
        let ops = [
            Op::Open(b"ckpt/run".to_vec()),
            Op::Realpath(b"/a/../b".to_vec()),
            Op::Stat(b"x".to_vec()),
            Op::List(b"/".to_vec()),
            Op::Mkdir(b"d".to_vec()),
            Op::Rmdir(b"d".to_vec()),
            Op::Remove(b"f".to_vec()),
            Op::Rename(b"a".to_vec(), b"b\nc".to_vec()),
            Op::Chmod(b"f".to_vec(), 0o640),
            Op::Statvfs(b"/".to_vec()),
        ];
        for op in ops {
            assert_eq!(Op::decode(&op.to_payload()).unwrap(), op);
        }
        let st = Stat {
            kind: Kind::Dir,
            mode: 0o755,
            size: 4096,
            mtime: -5,
            owner: None,
        };
        let replies = [
            Reply::Done,
            Reply::Failed {
                errno: 2,
                text: b"no".to_vec(),
            },
            Reply::Opened {
                cwd: b"/x".to_vec(),
                read_only: true,
            },
            Reply::Path(b"/p".to_vec()),
            Reply::Stat(st.clone()),
            Reply::Entries(vec![(b"n".to_vec(), st.clone())], false),
            Reply::Space(Space {
                frsize: 4096,
                blocks: 9,
                bfree: 8,
                bavail: 7,
                files: 6,
                ffree: 5,
            }),
        ];
        for r in replies {
            assert_eq!(Reply::decode(&r.to_payload()).unwrap(), r);
        }
    }

    #[test]
    fn lies_and_leftovers_are_refused() {
        // a listing that claims more entries than its bytes could hold
        let mut w = Writer::default();
        w.u8(tag::ENTRIES);
        w.varint(1000);
        assert!(Reply::decode(&w.buf).is_err());
        let mut chmod = Op::Chmod(b"f".to_vec(), 0o644).to_payload();
        chmod.push(0);
        assert!(Op::decode(&chmod).is_err());
        let mut w = Writer::default();
        w.u8(tag::CHMOD);
        w.bytes(b"f");
        w.varint(0o10000);
        assert!(Op::decode(&w.buf).is_err());
        assert!(Op::decode(&[200, 0]).is_err());
    }

    #[test]
    fn only_a_shell_hello_asks_for_the_shell() {
        assert!(asks_for_shell(&shell_hello()));
        assert!(!asks_for_shell(&super::super::client_hello()));
        // an old daemon picks its own highest version from a shell hello
        assert_eq!(
            super::super::choose_version(&shell_hello()),
            Ok(super::super::VERSION_MAX)
        );
    }
}
