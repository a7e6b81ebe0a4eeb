//! The daemon's side of `ferry shell host::module`: after a hello that asks
//! for the shell ([`crate::proto::shell`]), one module is opened and each
//! request (list, stat, realpath, mkdir, rmdir, remove, rename, chmod,
//! statvfs) is answered in turn until the client closes.
//!
//! Not for transfers: the shell's `get` and `put` open ordinary transfer
//! connections, which the daemon serves as any other (`daemon.rs`).
//!
//! # Security
//! Every path is the module's own (`/` is the module's root). It is made
//! canonical by name first (`..` above the root is refused), then its
//! directory is opened beneath the module root with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and the last name is used only
//! through that handle, never followed if it is a symlink (`chmod` goes
//! through an `O_PATH` handle of the entry itself). So no request reaches
//! outside the module, through `..`, an absolute path or a symlink. A
//! read-only module or key refuses every change with the text a transfer
//! into it gets. Setuid and setgid bits are never set (the daemon writes as
//! itself, as a push into it does).

use super::config::Module;
use crate::error::io_text;
use crate::proto::frame::{payload_len, put_frame};
use crate::proto::shell::{Kind, Op, Reply, Space, Stat, MAX_ENTRIES, VERSION_SHELL};
use crate::proto::{server_hello, MAX_PATH};
use crate::transport::Stream;
use crate::trust::authorized::Grant;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tracing::{info, warn};

/// Whether the daemon serves a shell to this hello. The test hook
/// `FERRY_TEST_HOOKS=1` with `FERRY_TEST_DAEMON_NO_SHELL=1` in the daemon's
/// environment makes it answer as a daemon from before the shell did (for
/// the test that such a daemon is refused cleanly); without
/// `FERRY_TEST_HOOKS=1` that variable is never read.
pub fn wanted(hello: &[u8; 9]) -> bool {
    let old = std::env::var("FERRY_TEST_HOOKS").ok().as_deref() == Some("1")
        && std::env::var_os("FERRY_TEST_DAEMON_NO_SHELL").is_some();
    crate::proto::shell::asks_for_shell(hello) && !old
}

/// The largest request a client may send: a rename's two paths.
const MAX_OP: usize = 2 * MAX_PATH + 32;

/// Keeps a listing's reply well inside one frame.
const MAX_LISTING_BYTES: usize = crate::proto::frame::MAX_FRAME - (64 << 10);

fn read_frame(r: &mut dyn Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = payload_len(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a shell request of {len} bytes (the limit is {limit})"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

fn send(w: &mut dyn Write, reply: &Reply) -> io::Result<()> {
    let mut out = Vec::new();
    put_frame(&mut out, &reply.to_payload());
    w.write_all(&out)?;
    w.flush()
}

/// A failure to show the client: an errno if the file system said no.
struct Failure(u32, String);

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        let errno = e.raw_os_error().unwrap_or(0);
        let text = match errno {
            libc::ELOOP | libc::EXDEV => {
                "a symlink on the way (a daemon module's paths never follow one)".into()
            }
            _ => io_text(&e),
        };
        Failure(errno as u32, text)
    }
}

impl From<rustix::io::Errno> for Failure {
    fn from(e: rustix::io::Errno) -> Failure {
        io::Error::from(e).into()
    }
}

fn refused(text: impl Into<String>) -> Failure {
    Failure(0, text.into())
}

/// A module path made canonical by name: its components, none `.` or `..`.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, Failure> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(refused("\"..\" would leave the module"));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn joined(c: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for (i, c) in c.iter().enumerate() {
        if i > 0 {
            p.push(b'/');
        }
        p.extend_from_slice(c);
    }
    p
}

fn shown(c: &[&[u8]]) -> Vec<u8> {
    let mut p = b"/".to_vec();
    p.extend_from_slice(&joined(c));
    p
}

fn os(b: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(b))
}

fn kind_of(mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn stat_of(st: &rustix::fs::Stat) -> Stat {
    Stat {
        kind: kind_of(st.st_mode),
        mode: st.st_mode & 0o7777,
        size: st.st_size as u64,
        mtime: st.st_mtime,
        owner: None,
    }
}

/// One open module.
struct Session<'a> {
    module: &'a Module,
    root: OwnedFd,
    /// The module or the key is read-only: why a change is refused.
    read_only: Option<String>,
}

impl Session<'_> {
    /// Opens the directory `c` names beneath the root.
    fn dir(&self, c: &[&[u8]]) -> Result<OwnedFd, Failure> {
        let p = if c.is_empty() {
            b".".to_vec()
        } else {
            joined(c)
        };
        Ok(rustix::fs::openat2(
            &self.root,
            os(&p),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )?)
    }

    /// The directory holding the last name of `path`, and that name
    /// (`None` for the module's root itself).
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(OwnedFd, Option<&'p [u8]>), Failure> {
        let c = components(path)?;
        match c.split_last() {
            Some((name, dirs)) => Ok((self.dir(dirs)?, Some(name))),
            None => Ok((self.dir(&[])?, None)),
        }
    }

    fn writable(&self) -> Result<(), Failure> {
        match &self.read_only {
            Some(why) => Err(refused(why.clone())),
            None => Ok(()),
        }
    }

    fn stat(&self, path: &[u8]) -> Result<Stat, Failure> {
        let (dir, name) = self.parent(path)?;
        let st = match name {
            Some(n) => rustix::fs::statat(&dir, os(n), AtFlags::SYMLINK_NOFOLLOW)?,
            None => rustix::fs::fstat(&dir)?,
        };
        Ok(stat_of(&st))
    }

    fn named<'p>(&self, path: &'p [u8], what: &str) -> Result<(OwnedFd, &'p [u8]), Failure> {
        match self.parent(path)? {
            (dir, Some(n)) => Ok((dir, n)),
            (_, None) => Err(refused(format!("cannot {what} the module's root"))),
        }
    }

    fn answer(&self, op: Op) -> Result<Reply, Failure> {
        match op {
            Op::Open(_) => Err(refused("the module is already open")),
            Op::Realpath(p) => {
                let c = components(&p)?;
                self.stat(&p)?;
                Ok(Reply::Path(shown(&c)))
            }
            Op::Stat(p) => Ok(Reply::Stat(self.stat(&p)?)),
            Op::List(p) => {
                let c = components(&p)?;
                let dir = self.dir(&c)?;
                let mut list = Vec::new();
                let (mut bytes, mut cut) = (0, false);
                for entry in rustix::fs::Dir::read_from(&dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_bytes();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    if list.len() == MAX_ENTRIES || bytes + name.len() + 40 > MAX_LISTING_BYTES {
                        cut = true;
                        break;
                    }
                    // a name removed meanwhile is simply not listed
                    let Ok(st) = rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    else {
                        continue;
                    };
                    bytes += name.len() + 40;
                    list.push((name.to_vec(), stat_of(&st)));
                }
                Ok(Reply::Entries(list, cut))
            }
            Op::Mkdir(p) => {
                self.writable()?;
                let (dir, n) = self.named(&p, "make")?;
                rustix::fs::mkdirat(&dir, os(n), Mode::from_raw_mode(0o777))?;
                Ok(Reply::Done)
            }
            Op::Rmdir(p) => {
                self.writable()?;
                let (dir, n) = self.named(&p, "remove")?;
                rustix::fs::unlinkat(&dir, os(n), AtFlags::REMOVEDIR)?;
                Ok(Reply::Done)
            }
            Op::Remove(p) => {
                self.writable()?;
                let (dir, n) = self.named(&p, "remove")?;
                let st = rustix::fs::statat(&dir, os(n), AtFlags::SYMLINK_NOFOLLOW)?;
                if kind_of(st.st_mode) == Kind::Dir {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR).into());
                }
                rustix::fs::unlinkat(&dir, os(n), AtFlags::empty())?;
                Ok(Reply::Done)
            }
            Op::Rename(from, to) => {
                self.writable()?;
                let (fd, fname) = self.named(&from, "rename")?;
                let (td, tname) = self.named(&to, "replace")?;
                rustix::fs::renameat(&fd, os(fname), &td, os(tname))?;
                Ok(Reply::Done)
            }
            Op::Chmod(p, mode) => {
                self.writable()?;
                let (dir, n) = self.named(&p, "chmod")?;
                let entry = rustix::fs::openat(
                    &dir,
                    os(n),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if kind_of(rustix::fs::fstat(&entry)?.st_mode) == Kind::Symlink {
                    return Err(refused(
                        "a symlink (a daemon module's paths never follow one)",
                    ));
                }
                // through the handle: the name cannot be swapped for a
                // symlink in between; setuid and setgid are never given
                let via = format!("/proc/self/fd/{}", entry.as_raw_fd());
                rustix::fs::chmod(via.as_str(), Mode::from_raw_mode(mode & 0o1777))?;
                Ok(Reply::Done)
            }
            Op::Statvfs(p) => {
                let (dir, _) = self.parent(&p)?;
                let s = rustix::fs::fstatvfs(&dir)?;
                Ok(Reply::Space(Space {
                    frsize: s.f_frsize,
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                }))
            }
        }
    }
}

fn failed(f: Failure) -> Reply {
    Reply::Failed {
        errno: f.0,
        text: f.1.into_bytes(),
    }
}

/// Opens the module `Op::Open` names, as the key may.
fn open<'m>(
    modules: &'m [Module],
    grant: &Grant,
    fp: &str,
    path: &[u8],
) -> Result<(Session<'m>, Vec<u8>), Failure> {
    let (m, rest) = super::daemon::module_of(modules, path).map_err(|r| refused(r.to_string()))?;
    grant
        .check(fp, &m.name, false)
        .map_err(|e| refused(e.to_string()))?;
    let read_only = if m.read_only {
        // the words a transfer into it is refused with
        Some(format!("module {} is read-only", m.name))
    } else {
        grant.check(fp, &m.name, true).err().map(|e| e.to_string())
    };
    let root = crate::fs::source::open_dir(&m.path)
        .map_err(|e| refused(format!("module {}: {}", m.name, io_text(&e))))?;
    let s = Session {
        module: m,
        root,
        read_only,
    };
    let c = components(&rest)?;
    if s.stat(&rest)?.kind != Kind::Dir {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR).into());
    }
    Ok((s, shown(&c)))
}

/// Serves one shell session on `stream`, whose first 9 bytes are the hello
/// [`wanted`] said yes to.
pub fn serve(
    stream: Stream,
    modules: &[Module],
    grant: &Grant,
    fp: &str,
    peer: std::net::SocketAddr,
) {
    let (mut r, mut w) = (stream.reader, stream.writer);
    let mut run = || -> io::Result<()> {
        let mut hello = [0u8; 9];
        r.read_exact(&mut hello)?;
        w.write_all(&server_hello(VERSION_SHELL))?;
        w.flush()?;
        let bad = |e: crate::proto::DecodeError| io::Error::new(io::ErrorKind::InvalidData, e);
        let Some(first) = read_frame(&mut r, MAX_OP)? else {
            return Ok(());
        };
        let Op::Open(path) = Op::decode(&first).map_err(bad)? else {
            send(&mut w, &failed(refused("open a module first")))?;
            return Ok(());
        };
        let session = match open(modules, grant, fp, &path) {
            Ok((s, cwd)) => {
                send(
                    &mut w,
                    &Reply::Opened {
                        cwd,
                        read_only: s.read_only.is_some(),
                    },
                )?;
                s
            }
            Err(f) => {
                warn!(%peer, fingerprint = %fp, "shell refused: {}", f.1);
                return send(&mut w, &failed(f));
            }
        };
        info!(%peer, fingerprint = %fp, module = %session.module.name, "shell");
        while let Some(payload) = read_frame(&mut r, MAX_OP)? {
            let op = Op::decode(&payload).map_err(bad)?;
            let reply = session.answer(op).unwrap_or_else(failed);
            send(&mut w, &reply)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => info!(%peer, fingerprint = %fp, "shell done"),
        Err(e) => warn!(%peer, fingerprint = %fp, "shell ended: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_never_climbs_out_of_the_module() {
        assert_eq!(components(b"/a/./b/../c/").ok().unwrap(), [b"a", b"c"]);
        assert!(components(b"/").ok().unwrap().is_empty());
        assert!(components(b"/..").is_err());
        assert!(components(b"a/../..").is_err());
        assert!(components(b"/a/../../etc").is_err());
        assert_eq!(shown(&components(b"x//y").ok().unwrap()), b"/x/y");
    }
}
