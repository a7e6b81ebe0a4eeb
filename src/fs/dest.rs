//! The destination: the only code that writes to disk.
//!
//! # Security
//! Every path here comes from the peer. A [`Dest`] holds an open handle on the
//! destination directory; each relative name (already checked by
//! [`super::names::check`]) is resolved from that handle one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY`, so no `..`, absolute path or symlink planted
//! in the tree (even one swapped in while we work) can lead a write outside it.
//! Files are written under a temporary name (in the hidden partial directory, or
//! a dot-name beside the target) and renamed into place only when complete, so a
//! reader never sees a half-written file. A new file is written with no
//! name at all (`O_TMPFILE`) and linked into place when complete: one directory
//! change instead of three (create, rename's insert and remove), and nothing
//! left behind if the process dies.

use crate::fs::dir_stack::{open_child_dir, same_dir, DirStack};
use crate::fs::names::{escape, split_parent};
use crate::fs::PARTIAL_DIR;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many directories of the path last resolved a [`Dest`] keeps open.
const CACHED_DIRS: usize = 16;

/// A destination directory held open.
pub struct Dest {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    /// The deepest directories on the path last resolved, each with its
    /// name, outermost first (at most [`CACHED_DIRS`]): entries arrive in
    /// tree order, so most lookups hit one of them or go one level below,
    /// and a tree 1,000 directories deep is not opened from the root for
    /// each directory, on the way down nor back up.
    ancestors: Vec<(Vec<u8>, Arc<OwnedFd>)>,
    /// How an unnamed file gets its name here: unknown until first needed;
    /// `None` inside when this system cannot (no `O_TMPFILE` on the
    /// filesystem, or neither way of linking it allowed).
    link_by: Option<Option<LinkBy>>,
    /// Started by [`sync_in_background`](Self::sync_in_background).
    background: Option<BackgroundSync>,
    /// rsync's `-K`: a symlink to a directory is taken as that directory
    /// (followed when resolving a path and when stated).
    keep_dirlinks: bool,
}

/// The two ways to give a file opened with `O_TMPFILE` a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkBy {
    /// `linkat(fd, "", …, AT_EMPTY_PATH)`: needs `CAP_DAC_READ_SEARCH` on
    /// older kernels.
    EmptyPath,
    /// `linkat(AT_FDCWD, "/proc/self/fd/N", …, AT_SYMLINK_FOLLOW)`: needs /proc.
    Proc,
}

/// File metadata to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    pub mode: Option<u32>,
    pub mtime: Option<(i64, u32)>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What is at a destination path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub kind: ExistingKind,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file being written under a temporary name.
pub struct TempFile {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    pub file: File,
    sparse: bool,
    pos: u64,
    /// Up to where writeback has been started.
    flushed: u64,
    /// Runs written by [`write_at`](Self::write_at) (one per segment arriving
    /// on its own stream): where each ends and from where its writeback has
    /// not been started yet.
    runs: Vec<Run>,
    /// Whether this temp file lives in the partial directory (kept on failure).
    pub partial: bool,
    /// The destination file itself, written over in place (`--inplace`):
    /// published by leaving it where it is, kept on failure.
    in_place: bool,
    /// Whether `copy_file_range` into this file can do better than copying
    /// through the page cache (see [`copies_in_page_cache`]); found out when
    /// first needed.
    copy_range_helps: Option<bool>,
    /// A hole was appended ([`hole`](Self::hole)): the length is set at
    /// the end even without sparse writing (a trailing hole is no write).
    holes: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The filesystem block size assumed for sharing blocks (XFS and btrfs
/// default to 4 KiB; with larger blocks sharing just does not happen).
const BLOCK: u64 = 4096;

/// How often a large file being written starts writeback of what came before.
const WRITEBACK_STEP: u64 = 16 << 20;

/// At most this many runs of a file written at offsets are followed for
/// writeback (a file is cut into one segment per stream).
const MAX_RUNS: usize = 16;

/// Bytes written in order from `flushed` up to `end`, not yet handed to
/// writeback.
#[derive(Debug, Clone, Copy)]
struct Run {
    flushed: u64,
    end: u64,
}

/// `-K`: whether `name` in `dir` (`rel` from the destination's root) is a
/// symlink whose target stays inside the destination, as rsync (3.4 on)
/// follows only those; one that leaves it is never followed.
fn link_inside(dir: &OwnedFd, name: &[u8], rel: &[u8]) -> bool {
    match rustix::fs::readlinkat(dir, name, Vec::new()) {
        Ok(target) => crate::fs::names::link_stays_inside(rel, target.as_bytes()),
        Err(_) => false,
    }
}

pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Dest {
    /// Opens (or, if `create`, creates the last component of) the destination
    /// directory the user named. The user's own path may pass through symlinks;
    /// only names from the peer may not.
    pub fn open(path: &Path, create: bool) -> io::Result<Dest> {
        if create {
            match std::fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)?;
        Ok(Dest {
            root: Arc::new(fd),
            root_path: path.to_path_buf(),
            ancestors: Vec::new(),
            link_by: None,
            background: None,
            keep_dirlinks: false,
        })
    }

    /// A destination rooted at directory `rel` beneath this one (resolved
    /// without following symlinks).
    pub fn sub(&mut self, rel: &[u8]) -> io::Result<Dest> {
        let root = self.dir(rel)?;
        let mut path = self.root_path.clone();
        if rel != b"." && !rel.is_empty() {
            path.push(std::ffi::OsStr::from_bytes(rel));
        }
        Ok(Dest {
            root,
            root_path: path,
            ancestors: Vec::new(),
            link_by: self.link_by,
            background: None,
            keep_dirlinks: self.keep_dirlinks,
        })
    }

    /// Names shown relative to this destination's root from now on, the
    /// root itself as `.`: a daemon module's root, whose server-side path
    /// a client is never told (a source in a module is shown the same way).
    pub fn shown_relative(mut self) -> Dest {
        self.root_path = PathBuf::new();
        self
    }

    /// `name` shown with the destination path, for messages.
    pub fn show(&self, name: &[u8]) -> String {
        if self.root_path.as_os_str().is_empty() {
            return escape(name);
        }
        if name == b"." {
            return escape(self.root_path.as_os_str().as_encoded_bytes());
        }
        format!(
            "{}/{}",
            escape(self.root_path.as_os_str().as_encoded_bytes()).trim_end_matches('/'),
            escape(name)
        )
    }

    /// Resolves a relative directory name under the root, never following links.
    pub fn dir(&mut self, rel: &[u8]) -> io::Result<Arc<OwnedFd>> {
        if rel == b"." || rel.is_empty() {
            return Ok(self.root.clone());
        }
        // the deepest directory held that `rel` is in (or is)
        let held = self.ancestors.iter().rposition(|(name, _)| {
            rel.starts_with(name) && (rel.len() == name.len() || rel[name.len()] == b'/')
        });
        let (mut cur, mut so_far, rest): (Arc<OwnedFd>, Vec<u8>, &[u8]) = match held {
            Some(i) => {
                self.ancestors.truncate(i + 1);
                let (name, fd) = &self.ancestors[i];
                let rest = rel.get(name.len() + 1..).unwrap_or_default();
                if rest.is_empty() {
                    // held already: the usual case, an entry of the
                    // directory listed last (no name copied per entry)
                    return Ok(fd.clone());
                }
                (fd.clone(), name.clone(), rest)
            }
            None => {
                self.ancestors.clear();
                (self.root.clone(), Vec::new(), rel)
            }
        };
        for comp in rest.split(|&b| b == b'/').filter(|_| !rest.is_empty()) {
            if !so_far.is_empty() {
                so_far.push(b'/');
            }
            so_far.extend_from_slice(comp);
            let opened = match rustix::fs::openat(&*cur, comp, dir_flags(), Mode::empty()) {
                // -K: a symlink to a directory inside the destination is
                // that directory
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
                    if self.keep_dirlinks && link_inside(&cur, comp, &so_far) =>
                {
                    rustix::fs::openat(&*cur, comp, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
                }
                other => other,
            };
            let fd = opened.map_err(|e| {
                if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                    io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "a path component is a symlink or not a directory",
                    )
                } else {
                    to_io(e)
                }
            })?;
            cur = Arc::new(fd);
            self.ancestors.push((so_far.clone(), cur.clone()));
            if self.ancestors.len() > CACHED_DIRS {
                self.ancestors.remove(0);
            }
        }
        Ok(cur)
    }

    fn parent(&mut self, rel: &[u8]) -> io::Result<(Arc<OwnedFd>, Vec<u8>)> {
        let (parent, name) = split_parent(rel);
        let name = name.to_vec();
        Ok((self.dir(parent)?, name))
    }

    /// Follows symlinks to directories from now on (rsync's `-K`): the
    /// user trusts the links already at this destination.
    pub fn keep_dirlinks(&mut self) {
        self.keep_dirlinks = true;
        self.ancestors.clear();
    }

    /// What is at `rel` now, without following a symlink there (with `-K`,
    /// a symlink to a directory is stated as that directory).
    pub fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>> {
        let st = if rel == b"." {
            rustix::fs::fstat(&*self.root)
        } else {
            // (once per entry of every run: the name is not copied)
            let (parent, name) = split_parent(rel);
            let dir = match self.dir(parent) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st)
                    if self.keep_dirlinks
                        && st.st_mode & libc::S_IFMT == libc::S_IFLNK
                        && link_inside(&dir, name, rel) =>
                {
                    match rustix::fs::statat(&*dir, name, AtFlags::empty()) {
                        Ok(t) if t.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(t),
                        _ => Ok(st),
                    }
                }
                other => other,
            }
        };
        let st = match st {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(to_io(e)),
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let kind = match fmt {
            libc::S_IFREG => ExistingKind::File,
            libc::S_IFDIR => ExistingKind::Dir,
            libc::S_IFLNK => ExistingKind::Symlink,
            _ => ExistingKind::Other,
        };
        Ok(Some(Existing {
            kind,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            uid: st.st_uid,
            gid: st.st_gid,
        }))
    }

    /// Creates directory `rel` (its parent must exist).
    pub fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::mkdirat(&*dir, name.as_slice(), Mode::from_raw_mode(mode)).map_err(to_io)
    }

    /// Opens an existing regular file for reading (a basis, or for `-c`).
    pub fn open_file(&mut self, rel: &[u8]) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            &*dir,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)?;
        Ok(File::from(fd))
    }

    /// Whether `a` and `b` are one inode (neither followed if a symlink).
    pub fn same_file(&mut self, a: &[u8], b: &[u8]) -> io::Result<bool> {
        let mut ids = [(0u64, 0u64); 2];
        for (id, rel) in ids.iter_mut().zip([a, b]) {
            let (dir, name) = self.parent(rel)?;
            let st = rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(to_io)?;
            *id = (st.st_dev as u64, st.st_ino as u64);
        }
        Ok(ids[0] == ids[1])
    }

    /// The target of the symlink at `rel`.
    pub fn readlink(&mut self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::readlinkat(&*dir, name.as_slice(), Vec::new())
            .map(|c| c.into_bytes())
            .map_err(to_io)
    }

    /// Opens the partial file an interrupted run left for `rel`, if any.
    pub fn open_partial(&mut self, rel: &[u8]) -> Option<File> {
        let (dir, name) = self.parent(rel).ok()?;
        let pdir = rustix::fs::openat(&*dir, PARTIAL_DIR, dir_flags(), Mode::empty()).ok()?;
        let fd = rustix::fs::openat(
            &pdir,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(File::from(fd))
    }

    /// Creates the file that will become `rel`: in the partial directory when
    /// `partial` (an interrupted run leaves it there to resume from), else under
    /// a hidden temporary name beside the target.
    /// With `unnamed` (for a new file), the file has no name until
    /// [`publish`](Self::publish) links it into place, where this system
    /// allows that.
    pub fn create_temp(
        &mut self,
        rel: &[u8],
        partial: bool,
        sparse: bool,
        unnamed: bool,
    ) -> io::Result<TempFile> {
        let (dir, name) = self.parent(rel)?;
        if unnamed && !partial && self.link_by(&dir).is_some() {
            if let Ok(file) = unnamed_file(&dir) {
                return Ok(TempFile {
                    dir,
                    name: Vec::new(),
                    file,
                    sparse,
                    pos: 0,
                    flushed: 0,
                    runs: Vec::new(),
                    copy_range_helps: None,
                    holes: false,
                    partial,
                    in_place: false,
                });
            }
        }
        let (tdir, tname) = if partial {
            match rustix::fs::mkdirat(&*dir, PARTIAL_DIR, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(to_io(e)),
            }
            let pdir = Arc::new(
                rustix::fs::openat(&*dir, PARTIAL_DIR, dir_flags(), Mode::empty())
                    .map_err(to_io)?,
            );
            // Every writer locks its partial file for as long as it writes it.
            // An old partial may be replaced only if nobody holds its lock: a
            // second transfer of the same file stops here instead of swapping
            // the file under the first one (whose rename would then publish the
            // second one's half-written data).
            match rustix::fs::openat(
                &*pdir,
                name.as_slice(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(old) => {
                    lock(&old)?;
                    // it was opened as a basis by now if it was useful
                    rustix::fs::unlinkat(&*pdir, name.as_slice(), AtFlags::empty())
                        .map_err(to_io)?;
                }
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(to_io(e)),
            }
            (pdir, name.clone())
        } else {
            let t = temp_name(&name);
            (dir, t)
        };
        let fd = rustix::fs::openat(
            &*tdir,
            tname.as_slice(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => busy(),
            e => to_io(e),
        })?;
        if partial {
            hold_new_partial(&tdir, &tname, &fd)?;
        }
        Ok(TempFile {
            dir: tdir,
            name: tname,
            file: File::from(fd),
            sparse,
            pos: 0,
            flushed: 0,
            runs: Vec::new(),
            copy_range_helps: None,
            holes: false,
            partial,
            in_place: false,
        })
    }

    /// Opens the file at `rel` itself to be written over from its start
    /// (`--inplace`): the same inode (its other hard links see the new
    /// bytes), made if missing. A reader sees it change as it is written and
    /// a failure leaves it half-written: what `--inplace` gives up.
    pub fn open_in_place(&mut self, rel: &[u8], sparse: bool) -> io::Result<TempFile> {
        let (dir, name) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            &*dir,
            name.as_slice(),
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(to_io)?;
        Ok(TempFile {
            dir,
            name,
            file: File::from(fd),
            sparse,
            pos: 0,
            flushed: 0,
            runs: Vec::new(),
            copy_range_helps: None,
            holes: false,
            partial: false,
            in_place: true,
        })
    }

    /// Renames a finished temporary file over `rel`. With `backup`, the old file
    /// (if any) is first linked to `rel` + suffix.
    pub fn publish(&mut self, temp: TempFile, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        if temp.in_place {
            return Ok(()); // (it is there already)
        }
        if let Some(suffix) = backup {
            self.backup(&dir, &name, suffix)?;
        }
        if temp.name.is_empty() {
            self.link_unnamed(&temp.file, &dir, &name)?;
        } else {
            rustix::fs::renameat(&*temp.dir, temp.name.as_slice(), &*dir, name.as_slice())
                .map_err(to_io)?;
        }
        if let Some(bg) = &self.background {
            bg.wrote(temp.unflushed());
        }
        Ok(())
    }

    /// Gives an unnamed file the name `name` in `dir`: linked there directly
    /// when the name is free, else linked under a temporary name and renamed
    /// over what is there (atomically, as for a named temporary file).
    fn link_unnamed(&mut self, file: &File, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        let by = self
            .link_by(dir)
            .ok_or_else(|| io::Error::other("cannot link an unnamed file here"))?;
        match link_fd(by, file, dir, name) {
            Err(rustix::io::Errno::EXIST) => {}
            other => return other.map_err(to_io),
        }
        let tmp = temp_name(name);
        link_fd(by, file, dir, &tmp).map_err(to_io)?;
        rustix::fs::renameat(dir, tmp.as_slice(), dir, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(dir, tmp.as_slice(), AtFlags::empty());
            to_io(e)
        })
    }

    /// How unnamed files get a name in this destination, found out once by
    /// linking a probe file in `dir` (and removing it again).
    fn link_by(&mut self, dir: &OwnedFd) -> Option<LinkBy> {
        *self.link_by.get_or_insert_with(|| {
            let file = unnamed_file(dir).ok()?;
            let probe = temp_name(b"probe");
            [LinkBy::EmptyPath, LinkBy::Proc].into_iter().find(|&by| {
                link_fd(by, &file, dir, &probe).is_ok()
                    && rustix::fs::unlinkat(dir, probe.as_slice(), AtFlags::empty()).is_ok()
            })
        })
    }

    /// Removes the partial directory beside `rel` if it is empty (called once per
    /// directory at the end of a transfer, not after every file: creating and
    /// removing a directory per file is slow on journaling filesystems).
    pub fn remove_partial_dir(&mut self, dir_rel: &[u8]) {
        if let Ok(dir) = self.dir(dir_rel) {
            if rustix::fs::unlinkat(&*dir, PARTIAL_DIR, AtFlags::REMOVEDIR).is_ok() {
                // a handle on it (or below it) is on a removed directory
                let gone = crate::fs::names::join(dir_rel, PARTIAL_DIR);
                self.ancestors.retain(|(name, _)| {
                    !(name.starts_with(&gone)
                        && (name.len() == gone.len() || name[gone.len()] == b'/'))
                });
            }
        }
    }

    fn backup(&self, dir: &OwnedFd, name: &[u8], suffix: &[u8]) -> io::Result<()> {
        let mut bname = name.to_vec();
        bname.extend_from_slice(suffix);
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(to_io(e)),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => return Ok(()),
            Ok(_) => {}
        }
        let _ = rustix::fs::unlinkat(dir, bname.as_slice(), AtFlags::empty());
        rustix::fs::linkat(dir, name, dir, bname.as_slice(), AtFlags::empty()).map_err(to_io)
    }

    /// Removes a temporary file (a failed transfer that leaves no partial).
    pub fn discard(&mut self, temp: TempFile) {
        if !temp.name.is_empty() && !temp.in_place {
            let _ = rustix::fs::unlinkat(&*temp.dir, temp.name.as_slice(), AtFlags::empty());
        }
    }

    /// Creates or replaces `rel` with a symlink to `target`, atomically.
    pub fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let tmp = temp_name(&name);
        rustix::fs::symlinkat(target, &*dir, tmp.as_slice()).map_err(to_io)?;
        rustix::fs::renameat(&*dir, tmp.as_slice(), &*dir, name.as_slice()).map_err(|e| {
            let _ = rustix::fs::unlinkat(&*dir, tmp.as_slice(), AtFlags::empty());
            to_io(e)
        })
    }

    /// Makes `rel` a hard link to the already published `existing`, atomically.
    pub fn hardlink(&mut self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        let (edir, ename) = self.parent(existing)?;
        let (dir, name) = self.parent(rel)?;
        let tmp = temp_name(&name);
        rustix::fs::linkat(
            &*edir,
            ename.as_slice(),
            &*dir,
            tmp.as_slice(),
            AtFlags::empty(),
        )
        .map_err(to_io)?;
        rustix::fs::renameat(&*dir, tmp.as_slice(), &*dir, name.as_slice()).map_err(|e| {
            let _ = rustix::fs::unlinkat(&*dir, tmp.as_slice(), AtFlags::empty());
            to_io(e)
        })
    }

    /// Removes `rel`, recursively if it is a directory. With `backup`, a file is
    /// renamed to `rel` + suffix instead.
    pub fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        self.ancestors.clear();
        remove_at(&dir, &name, backup)
    }

    /// Names in directory `rel` with whether each is a directory.
    pub fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>> {
        let dir = self.dir(rel)?;
        list_at(&dir)
    }

    /// Applies metadata to what is at `rel` (a directory, or the root).
    pub fn set_dir_meta(&mut self, rel: &[u8], meta: &Meta) -> io::Result<()> {
        if self.keep_dirlinks && rel != b"." {
            // -K: a directory that is a link keeps its referent's attributes;
            // like rsync, the time goes on the link itself
            let (dir, name) = self.parent(rel)?;
            let st = rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(to_io)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return self.set_link_meta(rel, meta);
            }
        }
        let fd = self.dir(rel)?;
        apply_fd_meta(&*fd, meta)
    }

    /// Applies ownership and mtime to a symlink itself.
    pub fn set_link_meta(&mut self, rel: &[u8], meta: &Meta) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        if meta.uid.is_some() || meta.gid.is_some() {
            rustix::fs::chownat(
                &*dir,
                name.as_slice(),
                meta.uid.map(rustix::fs::Uid::from_raw),
                meta.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(to_io)?;
        }
        if let Some(t) = meta.mtime {
            rustix::fs::utimensat(
                &*dir,
                name.as_slice(),
                &timestamps(t),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(to_io)?;
        }
        Ok(())
    }

    /// Applies metadata to a regular file at `rel`.
    pub fn set_file_meta(&mut self, rel: &[u8], meta: &Meta) -> io::Result<()> {
        let file = self.open_file(rel)?;
        apply_fd_meta(&file, meta)
    }

    /// Bytes an unprivileged writer may still use on the destination's filesystem.
    pub fn free_space(&self) -> Option<u64> {
        let st = rustix::fs::fstatvfs(&*self.root).ok()?;
        Some(st.f_bavail * st.f_frsize)
    }

    /// Whether the destination's filesystem has run out of inodes (a full
    /// disk with bytes to spare).
    pub fn out_of_inodes(&self) -> bool {
        rustix::fs::fstatvfs(&*self.root).is_ok_and(|st| st.f_files > 0 && st.f_favail == 0)
    }

    /// Makes everything written under the destination durable (one `syncfs`
    /// rather than one fsync per file).
    pub fn sync_all(&self) -> io::Result<()> {
        rustix::fs::syncfs(&*self.root).map_err(to_io)
    }

    /// From now on, files published here whose writeback has not started
    /// yet are synced from a thread of their own while the transfer goes on
    /// (see [`BackgroundSync`]).
    pub fn sync_in_background(&mut self) {
        self.background = BackgroundSync::start(self.root.clone());
    }
}

/// Starts the writeback of the files a transfer publishes while it writes
/// more: a thread calls `syncfs` on the destination at most every
/// [`BackgroundSync::EVERY`], once [`BackgroundSync::BATCH`] bytes were
/// published that had not been handed to writeback yet. A large file starts
/// its own writeback as it is written (every 16 MiB); small ones would
/// otherwise all wait for the transfer's final `syncfs`, with one core idle. 20,000 small files to the
/// daemon on a fresh ext4, six pairs: medians 1.385 → 1.285 s (per-file
/// `POSIX_FADV_DONTNEED` from a thread of its own: no faster, more CPU).
/// Durability still comes from the final sync; the thread stops when this is
/// dropped.
pub struct BackgroundSync {
    unsynced: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
    _stop: std::sync::mpsc::Sender<()>,
}

impl BackgroundSync {
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(200);
    pub const BATCH: u64 = 4 << 20;

    fn start(root: Arc<OwnedFd>) -> Option<BackgroundSync> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let unsynced = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let (u, n) = (unsynced.clone(), syncs.clone());
        std::thread::Builder::new()
            .name("ferry-sync".into())
            .spawn(move || {
                // ends when the sender is dropped
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::EVERY)
                {
                    let pending = u.load(Ordering::Relaxed);
                    if pending >= Self::BATCH {
                        u.fetch_sub(pending, Ordering::Relaxed);
                        let _ = rustix::fs::syncfs(&*root);
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .ok()?;
        Some(BackgroundSync {
            unsynced,
            syncs,
            _stop: stop,
        })
    }

    /// `bytes` were published without their writeback started.
    fn wrote(&self, bytes: u64) {
        self.unsynced.fetch_add(bytes, Ordering::Relaxed);
    }

    /// How many times the thread synced so far (for tests).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// Whether `copy_file_range` into `file` only copies through the page cache,
/// as on ext4 and tmpfs (no shared blocks, no copy on a server): there the
/// receiver writes the bytes it already read (to hash them) itself. A re-sync
/// of 2 GiB on ext4, four pairs: 1.55–1.60 s of the receiver's CPU against
/// 1.59–1.98 s through `copy_file_range` (which splices every page through a
/// pipe). Elsewhere (XFS and btrfs share blocks, NFS and SMB copy on the
/// server) it is worth its system call.
fn copies_in_page_cache(file: &File) -> bool {
    matches!(fs_type(file), Some(EXT4 | TMPFS))
}

/// `statfs` magic numbers of the filesystems [`copies_in_page_cache`] knows.
const EXT4: i64 = 0xEF53;
const TMPFS: i64 = 0x0102_1994;

/// The type of the filesystem `file` is on (`f_type` of `fstatfs`).
fn fs_type(file: &File) -> Option<i64> {
    // (f_type is not an i64 on every architecture)
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(file).ok().map(|st| st.f_type as i64)
}

/// Lets go of the page cache of a file that is about to be replaced, a
/// little behind where it is read: the pages its new version is written to
/// can then be the ones it frees, instead of another 2 GiB of memory taken
/// for a 2 GiB rebuild and other cached files pushed out. Only pages read at
/// least [`DROP_LAG`] before the furthest byte read go, so that copies a
/// little out of order still find theirs; a copy from further back reads
/// from disk once.
#[derive(Default)]
pub struct DropBehind {
    dropped: u64,
    furthest: u64,
}

/// How far behind the furthest byte read pages are dropped, and in what steps.
const DROP_LAG: u64 = 16 << 20;
const DROP_STEP: u64 = 16 << 20;

impl DropBehind {
    /// `file`'s bytes `offset..offset + len` were just read.
    pub fn read(&mut self, file: &File, offset: u64, len: u64) {
        self.furthest = self.furthest.max(offset + len);
        let to = self.furthest.saturating_sub(DROP_LAG);
        if to >= self.dropped + DROP_STEP {
            advise_later(file, self.dropped, to - self.dropped);
            self.dropped = to;
        }
    }
}

/// Closes `files` on a thread of their own. Closing the last handle of a file
/// whose last name is gone (the old version of a file a rebuild just
/// replaced) makes the filesystem free its blocks there and then: 0.4–0.6 s
/// for 2 GiB on this machine's ext4, mostly waiting for its journal, which
/// the transfer need not wait for. The blocks are freed all the same a moment
/// later (after a crash in between, from the orphan list at the next mount).
pub fn close_later(files: Vec<File>) {
    later(Later::Close(files));
}

/// `POSIX_FADV_DONTNEED` of `file`'s bytes `offset..offset + len`, on the
/// thread of [`close_later`]: it writes back the range's dirty pages
/// (submitting the writes) and drops its clean ones (taking them off the
/// page cache one by one), work that took a sixth of a rebuild's thread on
/// this machine, which is the slower end of a re-sync. Advice only: done a
/// moment later, through a handle of its own (opened again by /proc, not a
/// duplicate: that would share a partial file's lock and hold it while the
/// advice waits, turning away a retry); without /proc, here and now.
fn advise_later(file: &File, offset: u64, len: u64) {
    let Some(len) = std::num::NonZeroU64::new(len) else {
        return;
    };
    match rustix::fs::open(
        proc_path(file),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(own) => later(Later::DontNeed(File::from(own), offset, len)),
        Err(_) => dont_need(file, offset, len),
    }
}

fn dont_need(file: impl AsFd, offset: u64, len: std::num::NonZeroU64) {
    let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
}

/// The name of an open file under /proc, by which it can be opened again or
/// linked (an unnamed one has no other).
fn proc_path(file: &File) -> String {
    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file))
}

/// Work on files the transfer need not wait for.
enum Later {
    Close(Vec<File>),
    DontNeed(File, u64, std::num::NonZeroU64),
    /// Answered once everything before it is done (tests).
    #[cfg(test)]
    Mark(std::sync::mpsc::Sender<()>),
    /// Keeps the thread until told to go on (tests).
    #[cfg(test)]
    Until(std::sync::mpsc::Receiver<()>),
}

impl Later {
    fn run(self) {
        match self {
            Later::Close(files) => drop(files),
            Later::DontNeed(f, offset, len) => dont_need(&f, offset, len),
            #[cfg(test)]
            Later::Mark(done) => {
                let _ = done.send(());
            }
            #[cfg(test)]
            Later::Until(go) => {
                let _ = go.recv();
            }
        }
    }
}

/// Hands `job` to the process's one thread for [`Later`] work, started on
/// first use, in order; should it not start, the job is done here.
fn later(job: Later) {
    use std::sync::{mpsc, OnceLock};
    static LATER: OnceLock<Option<mpsc::Sender<Later>>> = OnceLock::new();
    let thread = LATER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Later>();
        std::thread::Builder::new()
            .name("ferry-later".into())
            .spawn(move || rx.into_iter().for_each(Later::run))
            .ok()
            .map(|_| tx)
    });
    let sent = match thread {
        Some(tx) => tx.send(job).map_err(|e| e.0),
        None => Err(job),
    };
    if let Err(job) = sent {
        job.run();
    }
}

/// Waits until the [`Later`] work handed over so far is done.
#[cfg(test)]
fn later_done() {
    let (tx, rx) = std::sync::mpsc::channel();
    later(Later::Mark(tx));
    let _ = rx.recv();
}

fn busy() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "another transfer is writing this file right now",
    )
}

/// Takes the partial file's lock without waiting; held until the fd closes.
fn lock(fd: &OwnedFd) -> io::Result<()> {
    rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            busy()
        } else {
            to_io(e)
        }
    })
}

/// Takes the lock of the partial file just created as `name` in `dir` and
/// checks that the name is still ours: between the create and the lock,
/// another transfer may have found the file unlocked and replaced it with its
/// own, and writing on would end in renaming the other's half-written file
/// into place (or in a rename of nothing).
fn hold_new_partial(dir: &OwnedFd, name: &[u8], fd: &OwnedFd) -> io::Result<()> {
    lock(fd)?;
    let ours = rustix::fs::fstat(fd).map_err(to_io)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_dev == ours.st_dev && st.st_ino == ours.st_ino => Ok(()),
        Ok(_) | Err(rustix::io::Errno::NOENT) => Err(busy()),
        Err(e) => Err(to_io(e)),
    }
}

/// A new file in `dir` with no name (`O_TMPFILE`): it disappears when closed
/// unless linked somewhere first.
///
/// Made `0644` (less the umask), the mode most files end up with, so that
/// [`apply_fd_meta`] need not change it. No other user can reach it before
/// that: an unnamed file has no path but `/proc/PID/fd/N`, which only its
/// owner (and root) may open, and its final mode is set before it is linked.
pub(crate) fn unnamed_file(dir: &OwnedFd) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    Ok(File::from(fd))
}

/// Links the open (unnamed) `file` as `name` in `dir`.
fn link_fd(by: LinkBy, file: &File, dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<()> {
    match by {
        LinkBy::EmptyPath => rustix::fs::linkat(file, c"", dir, name, AtFlags::EMPTY_PATH),
        LinkBy::Proc => {
            let path = proc_path(file);
            rustix::fs::linkat(
                rustix::fs::CWD,
                path.as_str(),
                dir,
                name,
                AtFlags::SYMLINK_FOLLOW,
            )
        }
    }
}

fn temp_name(name: &[u8]) -> Vec<u8> {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut t = b".".to_vec();
    t.extend_from_slice(&name[..name.len().min(200)]);
    t.extend_from_slice(format!(".ferry-{}-{n}", std::process::id()).as_bytes());
    t
}

fn timestamps((sec, nsec): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets `meta` on the open file `fd`: owner, then mode (a `chown` clears
/// set-id bits), then times. An owner or mode the file already has is not set
/// again: on ext4 each of these calls is a journal handle and an inode
/// written, and a new file usually has both already (50,000 new files,
/// bench/NOTES.md §53: 1.78–1.85 s of the kernel's CPU with both calls,
/// 1.63–1.64 s without).
fn apply_fd_meta(fd: impl AsFd, meta: &Meta) -> io::Result<()> {
    let has = if meta.uid.is_some() || meta.gid.is_some() || meta.mode.is_some() {
        Some(rustix::fs::fstat(&fd).map_err(to_io)?)
    } else {
        None
    };
    let owner_differs = has.as_ref().is_some_and(|st| {
        meta.uid.is_some_and(|u| u != st.st_uid) || meta.gid.is_some_and(|g| g != st.st_gid)
    });
    if owner_differs {
        rustix::fs::fchown(
            &fd,
            meta.uid.map(rustix::fs::Uid::from_raw),
            meta.gid.map(rustix::fs::Gid::from_raw),
        )
        .map_err(to_io)?;
    }
    if let Some(mode) = meta.mode {
        // after a chown the set-id bits may have gone: set the mode again
        let same = !owner_differs
            && has
                .as_ref()
                .is_some_and(|st| st.st_mode & 0o7777 == mode & 0o7777);
        if !same {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(to_io)?;
        }
    }
    if let Some(t) = meta.mtime {
        rustix::fs::futimens(&fd, &timestamps(t)).map_err(to_io)?;
    }
    Ok(())
}

pub(crate) fn list_at(dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let fd = rustix::fs::openat(dir, ".", dir_flags(), Mode::empty()).map_err(to_io)?;
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(&fd).map_err(to_io)?;
    while let Some(ent) = d.read() {
        let ent = ent.map_err(to_io)?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    .unwrap_or(false)
            }
            _ => false,
        };
        out.push((name.to_vec(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// Removes `name` in `dir`, and all that is in it if it is a directory;
/// with `backup`, files are renamed to their name + suffix instead (and the
/// directories holding them stay).
///
/// Iterative, one level at a time on a [`DirStack`]: a stale tree 1,000
/// directories deep is removed on a thread's small stack and with about 65
/// descriptors open, not one per level.
///
/// # Security
/// No symlink is followed: each directory is opened from its parent's
/// handle with `O_NOFOLLOW` and must be the directory stated there (device
/// and inode), and so must each directory opened again on the way back up.
/// A symlink found where a directory was stated is removed itself (its
/// target is not touched); a directory above swapped for a symlink while the
/// delete is below it stops the delete with an error saying so.
pub(crate) fn remove_at(dir: &OwnedFd, name: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
    let Some(key) = stated_dir(dir.as_fd(), name)? else {
        return remove_entry(dir.as_fd(), name, backup);
    };
    let Some((fd, children)) = open_to_delete(dir.as_fd(), name, key)? else {
        return remove_entry(dir.as_fd(), name, backup);
    };
    let mut levels: DirStack<std::vec::IntoIter<(Vec<u8>, bool)>> = DirStack::new("the delete");
    levels.push(fd, name, key, false, children);
    while let Some(children) = levels.top_mut() {
        let Some((child, _)) = children.next() else {
            let (_, gone) = levels.pop().expect("a level is there");
            let parent = if levels.is_empty() {
                dir.as_fd()
            } else {
                levels.top_fd()?
            };
            match rustix::fs::unlinkat(parent, gone.as_slice(), AtFlags::REMOVEDIR) {
                Ok(()) => {}
                // backups left inside keep the directory
                Err(rustix::io::Errno::NOTEMPTY) if backup.is_some() => {}
                Err(e) => return Err(to_io(e)),
            }
            continue;
        };
        let top = levels.top_fd()?;
        let opened = match stated_dir(top, &child)? {
            Some(key) => open_to_delete(top, &child, key)?.map(|x| (key, x)),
            None => None,
        };
        match opened {
            Some((key, (fd, children))) => levels.push(fd, &child, key, false, children),
            None => remove_entry(levels.top_fd()?, &child, backup)?,
        }
    }
    Ok(())
}

/// The device and inode of `name` in `dir` if it is a directory (not
/// following a symlink there).
fn stated_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<(u64, u64)>> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(to_io)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let key = (st.st_dev as u64, st.st_ino as u64);
    Ok((st.st_mode & libc::S_IFMT == libc::S_IFDIR).then_some(key))
}

/// Opens directory `name` in `dir`, stated as `key`, to delete what is in
/// it, and lists it; `None` if it is no longer a directory (swapped for a
/// symlink or a file since it was stated: that is removed instead).
#[allow(clippy::type_complexity)]
fn open_to_delete(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: (u64, u64),
) -> io::Result<Option<(OwnedFd, std::vec::IntoIter<(Vec<u8>, bool)>)>> {
    delete_pause_hook(name);
    let fd = match open_child_dir(dir, name, false) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Ok(None),
        Err(e) => return Err(e),
    };
    same_dir(&fd, key, "the delete")?;
    let children = list_at(&fd)?;
    Ok(Some((fd, children.into_iter())))
}

/// Removes `name` in `dir`, which is not a directory (with `backup`,
/// renames it to its name + suffix, unless it is a backup already).
fn remove_entry(dir: BorrowedFd<'_>, name: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
    match backup {
        Some(suffix) if name.ends_with(suffix) => Ok(()), // already a backup
        Some(suffix) => {
            let bname = [name, suffix].concat();
            rustix::fs::renameat(dir, name, dir, bname.as_slice()).map_err(to_io)
        }
        None => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(to_io),
    }
}

/// The test hook for a directory swapped during a delete: with
/// `FERRY_TEST_HOOKS=1`, `FERRY_TEST_DELETE_PAUSE_AT=NAME` and
/// `FERRY_TEST_DELETE_PAUSE_FILE=PATH`, a delete about to open directory
/// NAME to remove what is in it makes `PATH.waiting` and waits (20 s at
/// most) until PATH exists. Without `FERRY_TEST_HOOKS=1` the other two are
/// never read.
fn delete_pause_hook(name: &[u8]) {
    static PAUSE: crate::fs::pause::PauseHook = crate::fs::pause::PauseHook::new(
        "FERRY_TEST_DELETE_PAUSE_AT",
        "FERRY_TEST_DELETE_PAUSE_FILE",
    );
    PAUSE.hold_if(|at| at == name);
}

/// Whether `data` is all zero bytes, looked at 64 bytes at a time (an OR
/// the compiler vectorizes). A sparse file's holes arrive as blocks of zeros
/// that the receiver checks before it seeks past them: checked a byte at a
/// time, that check was 74% of the receiving daemon's CPU for a 20 GiB file
/// with 64 MiB of data (bench/NOTES.md §31).
fn all_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

impl TempFile {
    /// Appends bytes; with sparse writing, all-zero blocks become holes.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.sparse && all_zero(data) {
            self.pos += data.len() as u64;
            return Ok(());
        }
        self.file.write_all_at(data, self.pos)?;
        self.pos += data.len() as u64;
        if self.pos - self.flushed >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    /// Appends `data`, which are the bytes at `offset` of `from`: where the
    /// filesystem can, the new file shares those blocks with `from` instead
    /// of holding a copy (`copy_file_range` reflinks on XFS and btrfs when
    /// offsets are block-aligned; elsewhere the kernel copies in place).
    pub fn append_from(&mut self, from: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.sparse || !self.shares_blocks(offset, data.len()) {
            return self.write(data);
        }
        // blocks can only be shared whole: write the unaligned head and tail
        let head = ((BLOCK - offset % BLOCK) % BLOCK) as usize;
        let middle = (data.len() - head) / BLOCK as usize * BLOCK as usize;
        self.write(&data[..head])?;
        let (mut off_in, mut off_out) = (offset + head as u64, self.pos);
        let end = self.pos + middle as u64;
        while off_out < end {
            let left = (end - off_out) as usize;
            match rustix::fs::copy_file_range(
                from,
                Some(&mut off_in),
                &self.file,
                Some(&mut off_out),
                left,
            ) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                // not on this filesystem, or not between these files: write
                Err(_) => {
                    let done = (off_out - self.pos) as usize;
                    self.file
                        .write_all_at(&data[head + done..head + middle], off_out)?;
                    break;
                }
            }
        }
        self.pos = end;
        self.write(&data[head + middle..])
    }

    /// Appends `len` bytes of zeros without writing them: the file is
    /// extended over them (its length set at [`finish`](Self::finish)), so
    /// they are a hole that reads back as zeros and holds no blocks. Every
    /// temporary file starts empty (created, or truncated in place), so no
    /// old bytes lie under a hole.
    pub fn hole(&mut self, len: u64) {
        // (no writeback to start over a range that was never written)
        let all_flushed = self.flushed == self.pos;
        self.pos += len;
        if all_flushed {
            self.flushed = self.pos;
        }
        self.holes = true;
    }

    /// Whether appending `len` bytes from `offset` of another file could
    /// share blocks: the same position within a 4 KiB block on both sides,
    /// and long enough to be worth a system call of its own.
    fn shares_blocks(&mut self, offset: u64, len: usize) -> bool {
        len >= 64 << 10
            && offset % BLOCK == self.pos % BLOCK
            && *self
                .copy_range_helps
                .get_or_insert_with(|| !copies_in_page_cache(&self.file))
    }

    /// Bytes written whose writeback has not been started: since the last
    /// start for a file written in order, in each run followed for one
    /// written at offsets.
    fn unflushed(&self) -> u64 {
        if self.runs.is_empty() {
            self.pos - self.flushed
        } else {
            self.runs.iter().map(|r| r.end - r.flushed).sum()
        }
    }

    /// Asks the kernel to start writing what we wrote so far to disk, without
    /// waiting: the sync at the end of the transfer then finds little left to
    /// do, and a large file does not fill the page cache with dirty pages.
    /// The advice also covers the two steps before: handed to writeback one
    /// and two steps ago, they are on disk by now, and their pages leave the
    /// cache (a page still dirty is kept). A large file then writes into pages
    /// it let go of moments ago rather than into fresh memory, which on this
    /// VM (its freed memory handed back to the host) cost the first touch of
    /// every page: 54% of a 2 GiB S3 download's samples, its system CPU
    /// 2.8-3.3 s -> 1.3 s (bench/NOTES.md §52). The file is then read from
    /// disk if it is read soon after, as a replaced one is ([`DropBehind`]).
    fn start_writeback(&mut self) {
        self.writeback(self.flushed.saturating_sub(2 * WRITEBACK_STEP), self.pos);
        self.flushed = self.pos;
    }

    /// Starts writeback of `from..to` without waiting (`POSIX_FADV_DONTNEED`
    /// writes dirty pages back and drops the clean ones), from another thread.
    fn writeback(&self, from: u64, to: u64) {
        advise_later(&self.file, from, to - from);
    }

    /// Writes bytes at `offset` (a segment of a file arriving over several
    /// streams); the file's length is the furthest byte written. Each run of
    /// bytes written in order starts its writeback as [`write`](Self::write)
    /// does, so the sync at the end finds little left to do here too.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if !(self.sparse && all_zero(data)) {
            self.file.write_all_at(data, offset)?;
        }
        self.pos = self.pos.max(end);
        let run = match self.runs.iter().position(|r| r.end == offset) {
            Some(i) => &mut self.runs[i],
            None => {
                if self.runs.len() == MAX_RUNS {
                    self.runs.remove(0);
                }
                self.runs.push(Run {
                    flushed: offset,
                    end: offset,
                });
                self.runs.last_mut().expect("just pushed")
            }
        };
        run.end = end;
        if run.end - run.flushed >= WRITEBACK_STEP {
            let (from, to) = (run.flushed, run.end);
            run.flushed = to;
            self.writeback(from, to);
        }
        Ok(())
    }

    /// Reads back bytes already written (a chunk that repeats in the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn len(&self) -> u64 {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Sets the final length (trailing holes), metadata, and optionally fsyncs.
    pub fn finish(&mut self, meta: &Meta, fsync: bool) -> io::Result<()> {
        if self.sparse || self.holes {
            self.file.set_len(self.pos)?;
        }
        self.file.flush()?;
        apply_fd_meta(&self.file, meta)?;
        if fsync {
            self.file.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::source::open_dir;

    #[test]
    fn small_files_are_synced_while_more_are_published_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        dest.sync_in_background();
        let publish = |dest: &mut Dest, name: &str, len: u64| {
            let mut temp = dest
                .create_temp(name.as_bytes(), false, false, true)
                .unwrap();
            let block = vec![5u8; 1 << 20];
            for _ in 0..len >> 20 {
                temp.write(&block).unwrap();
            }
            dest.publish(temp, name.as_bytes(), None).unwrap();
        };
        let ticks = BackgroundSync::EVERY * 3;
        // a large file started its own writeback as it was written; a few
        // small bytes wait for more
        publish(&mut dest, "large", 2 * WRITEBACK_STEP);
        publish(&mut dest, "small-1", BackgroundSync::BATCH / 2);
        std::thread::sleep(ticks);
        let syncs = |dest: &Dest| dest.background.as_ref().unwrap().syncs();
        assert_eq!(syncs(&dest), 0);
        // enough small files: synced at the next tick, once
        publish(&mut dest, "small-2", BackgroundSync::BATCH / 2);
        let start = std::time::Instant::now();
        while syncs(&dest) == 0 {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(ticks);
        assert_eq!(syncs(&dest), 1);
    }

    /// How many pages of `file`'s bytes `offset..offset + len` are in the
    /// page cache (`mincore` of a read-only mapping: the only way to ask).
    #[allow(unsafe_code)]
    fn cached_pages(file: &File, offset: usize, len: usize) -> usize {
        let fd = std::os::fd::AsRawFd::as_raw_fd(file);
        let null = std::ptr::null_mut();
        let map = unsafe {
            libc::mmap(
                null,
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                offset as _,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let mut v = vec![0u8; len.div_ceil(4096)];
        assert_eq!(unsafe { libc::mincore(map, len, v.as_mut_ptr()) }, 0);
        unsafe { libc::munmap(map, len) };
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn a_replaced_file_is_let_go_of_behind_its_reader_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        let mib = 1 << 20;
        std::fs::write(&path, vec![7u8; 64 * mib]).unwrap();
        let f = File::open(&path).unwrap();
        f.sync_all().unwrap(); // (dirty pages are not let go of)
        if fs_type(&f) == Some(TMPFS) {
            return; // tmpfs: its pages are the file
        }
        let mut buf = vec![0u8; mib];
        for i in 0..64 {
            f.read_exact_at(&mut buf, (i * mib) as u64).unwrap();
        }
        assert_eq!(cached_pages(&f, 0, 64 * mib), 64 * mib / 4096);
        // read in order up to 40 MiB: pages go in 16 MiB steps, 16 MiB behind
        let mut behind = DropBehind::default();
        for i in 0..40 {
            behind.read(&f, (i * mib) as u64, mib as u64);
        }
        later_done();
        assert_eq!(cached_pages(&f, 0, 16 * mib), 0, "read long ago");
        assert_eq!(cached_pages(&f, 16 * mib, 48 * mib), 48 * mib / 4096);
    }

    #[test]
    fn a_large_file_written_in_order_lets_go_of_what_is_already_on_disk() {
        // each writeback step's advice covers the two steps before it too:
        // their pages, on disk by then, leave the page cache, so a large
        // download recycles its own pages instead of touching fresh memory
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        let mut temp = dest.create_temp(b"big", false, false, false).unwrap();
        if fs_type(&temp.file) == Some(TMPFS) {
            return; // tmpfs: its pages are the file
        }
        let piece = vec![7u8; 1 << 20];
        let step = WRITEBACK_STEP as usize;
        for _ in 0..2 * step / piece.len() {
            temp.write(&piece).unwrap();
        }
        later_done();
        temp.file.sync_data().unwrap(); // (dirty pages are not let go of)
        for _ in 0..step / piece.len() {
            temp.write(&piece).unwrap();
        }
        later_done();
        assert_eq!(cached_pages(&temp.file, 0, 2 * step), 0, "on disk");
    }

    #[test]
    fn segments_written_side_by_side_each_start_their_writeback() {
        // two segments of one file arriving interleaved (two streams), in
        // pieces: each is followed as a run of its own, so writeback starts
        // every WRITEBACK_STEP of each rather than never
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        let mut temp = dest.create_temp(b"big", false, false, false).unwrap();
        let piece = vec![7u8; 1 << 20];
        let half = 3 * WRITEBACK_STEP;
        for i in 0..half / piece.len() as u64 {
            let at = i * piece.len() as u64;
            temp.write_at(at, &piece).unwrap();
            temp.write_at(half + at, &piece).unwrap();
        }
        let runs: Vec<(u64, u64)> = temp.runs.iter().map(|r| (r.flushed, r.end)).collect();
        assert_eq!(runs, vec![(half, half), (2 * half, 2 * half)]);
        assert_eq!(temp.len(), 2 * half);
        assert_eq!(temp.file.metadata().unwrap().len(), 2 * half);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_partial_file_taken_over_before_its_lock_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        // one transfer has just created its partial file, not yet locked…
        let partial_dir = dir.path().join(".ferry-partial");
        std::fs::create_dir(&partial_dir).unwrap();
        let pdir = open_dir(&partial_dir).unwrap();
        let first = rustix::fs::openat(
            &pdir,
            "f",
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // …when a second finds it unlocked and replaces it with its own
        let second = dest.create_temp(b"f", true, false, false).unwrap();
        // the first must not go on writing a file that is no longer named
        let e = hold_new_partial(&pdir, b"f", &first).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        // and the second's own lock holds against anyone else
        assert_eq!(
            dest.create_temp(b"f", true, false, false)
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::ResourceBusy)
        );
        drop(second);
    }

    #[test]
    fn advice_still_queued_does_not_hold_a_given_up_partial_files_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        // the writeback of a partial file's first bytes waits behind other
        // work (old files being closed)…
        let (go, wait) = std::sync::mpsc::channel();
        later(Later::Until(wait));
        let mut temp = dest.create_temp(b"f", true, false, false).unwrap();
        temp.write(&vec![3u8; WRITEBACK_STEP as usize]).unwrap();
        // …when the transfer gives up, keeping it: a retry takes it over
        drop(temp);
        let retry = dest.create_temp(b"f", true, false, false);
        go.send(()).unwrap();
        later_done();
        assert!(retry.is_ok(), "{:?}", retry.err());
    }

    #[test]
    fn an_unnamed_file_is_invisible_until_published_then_linked_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), b"old contents").unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        for (rel, body) in [(&b"new"[..], &b"fresh"[..]), (b"old", b"replaced")] {
            let mut temp = dest.create_temp(rel, false, false, true).unwrap();
            assert!(temp.name.is_empty(), "this filesystem has O_TMPFILE");
            temp.write(body).unwrap();
            let meta = Meta {
                mode: Some(0o640),
                ..Meta::default()
            };
            temp.finish(&meta, false).unwrap();
            // nothing under any name until published
            let before = names(dir.path());
            assert!(
                before.iter().all(|n| n == "new" || n == "old"),
                "{before:?}"
            );
            dest.publish(temp, rel, None).unwrap();
            let path = dir.path().join(std::str::from_utf8(rel).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), body);
            let mode = std::fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o640
            );
        }
        assert_eq!(names(dir.path()), ["new", "old"]);
        // given up on: nothing to remove, nothing left
        let mut temp = dest.create_temp(b"gone", false, false, true).unwrap();
        temp.write(b"half").unwrap();
        dest.discard(temp);
        assert_eq!(names(dir.path()), ["new", "old"]);
    }

    #[test]
    fn a_new_file_gets_exactly_its_mode_and_owner_whatever_it_was_made_with() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut dest = Dest::open(dir.path(), false).unwrap();
        let (me, my_group) = (rustix::process::geteuid(), rustix::process::getegid());
        let root = me.is_root();
        // (mode, owner): the mode an unnamed file is made with, narrower,
        // wider, executable, set-id; and, as root, another owner, whose chown
        // would clear a set-id bit set before it
        let mut cases = vec![
            (0o644, None),
            (0o600, None),
            (0o664, None),
            (0o755, None),
            (0o4755, None),
            (0o644, Some((me.as_raw(), my_group.as_raw()))),
        ];
        if root {
            cases.push((0o2755, Some((4321, 4322))));
            cases.push((0o644, Some((4321, 4322))));
        }
        for (i, (mode, owner)) in cases.into_iter().enumerate() {
            let rel = format!("f{i}");
            let mut temp = dest
                .create_temp(rel.as_bytes(), false, false, true)
                .unwrap();
            temp.write(b"x").unwrap();
            let meta = Meta {
                mode: Some(mode),
                uid: owner.map(|o| o.0),
                gid: owner.map(|o| o.1),
                ..Meta::default()
            };
            temp.finish(&meta, false).unwrap();
            dest.publish(temp, rel.as_bytes(), None).unwrap();
            let st = std::fs::metadata(dir.path().join(&rel)).unwrap();
            assert_eq!(st.mode() & 0o7777, mode, "{rel}: mode {mode:o}");
            if let Some((u, g)) = owner {
                assert_eq!((st.uid(), st.gid()), (u, g), "{rel}: owner");
            }
        }
    }

    #[test]
    fn a_set_id_bit_a_chown_clears_is_set_again_though_the_mode_was_already_right() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !rustix::process::geteuid().is_root() {
            return; // only root gives a file away
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let file = File::open(&path).unwrap();
        let meta = Meta {
            mode: Some(0o6755),
            uid: Some(4321),
            gid: Some(4322),
            ..Meta::default()
        };
        apply_fd_meta(&file, &meta).unwrap();
        let st = std::fs::metadata(&path).unwrap();
        assert_eq!((st.uid(), st.gid()), (4321, 4322));
        assert_eq!(st.mode() & 0o7777, 0o6755);
    }

    #[test]
    fn all_zero_sees_one_set_bit_anywhere() {
        assert!(all_zero(&[]));
        for len in [1, 63, 64, 65, 127, 128, 200, 256 << 10] {
            let mut data = vec![0u8; len];
            assert!(all_zero(&data), "{len} zeros");
            // one bit set at the start, in the middle, in the last whole
            // chunk, in the remainder, and at the end
            for at in [0, len / 2, (len / 64 * 64).saturating_sub(1), len - 1] {
                for bit in [0x01, 0x80] {
                    data[at] = bit;
                    assert!(!all_zero(&data), "{len} bytes, {bit:#x} at {at}");
                    data[at] = 0;
                }
            }
        }
    }
}
