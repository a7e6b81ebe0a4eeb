//! The local filesystem as a [`Source`]: the scan ([`super::scan`]) lists,
//! files are opened by path, or beneath a daemon module's root without
//! following any symlink when the transfer is confined to it. Read-side only:
//! nothing here writes (that is [`super::dest`]).
//!
//! # Security
//! A confined source opens every file beneath the module root held as a
//! directory handle (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a
//! path listed inside the module that a symlink swapped in since would lead out
//! of it is refused, not followed.
//!
//! Confined or not, a listed file is opened without following a symlink at
//! its name (unless the scan followed one there: `-L`), without blocking (a
//! FIFO swapped in does not hold the sender), and is sent only if the handle
//! is a regular file with the device and inode the scan stated: a file
//! swapped since the listing (for a link to someone's key, say) is reported
//! as changed, never read.

use super::scan::{self, OnDisk};
use crate::proto::ListStart;
use crate::store::source::{ListOptions, Listed, Replaced, Source, SourceFile, Stamp};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Files on this host's disk, listed by the scan and opened by path.
#[derive(Default)]
pub struct LocalSource {
    /// The module root (path and handle) when confined.
    confine: Option<(PathBuf, OwnedFd)>,
}

impl LocalSource {
    /// A source whose files are all opened beneath `root`, a module root the
    /// administrator configured.
    pub fn confined(root: &Path) -> io::Result<LocalSource> {
        let fd = open_dir(root)?;
        Ok(LocalSource {
            confine: Some((root.to_path_buf(), fd)),
        })
    }
}

impl LocalSource {
    /// Opens a file by its path alone, for a walk that kept no identity
    /// (an API job's check of what it wrote): beneath the
    /// module root with no symlink anywhere when confined, else by the path
    /// as given; never opening for reading anything but a regular file.
    pub fn open_path(&self, path: &Path) -> io::Result<File> {
        let handle = self.open_handle(path, OFlags::empty())?;
        let st = handle.metadata()?;
        if !st.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        self.reopen(&handle, path, OFlags::empty(), (st.dev(), st.ino()))
    }

    /// A handle on `path` that reads nothing (`O_PATH`): taking it has no
    /// effect on what is there (a device is not opened, a FIFO does not
    /// block, a lease is not broken) and it can only be stated. Confined:
    /// beneath the module root with no symlink anywhere on the way,
    /// whatever `extra` says.
    fn open_handle(&self, path: &Path, extra: OFlags) -> io::Result<File> {
        match &self.confine {
            Some((root, fd)) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "outside the module")
                })?;
                open_beneath_with(fd, rel, OFlags::PATH)
            }
            None => {
                let flags = OFlags::PATH | OFlags::CLOEXEC | extra;
                Ok(File::from(rustix::fs::open(path, flags, Mode::empty())?))
            }
        }
    }

    /// The regular file `handle` names (it was stated: device and inode
    /// `id`), opened for reading through `/proc/self/fd`, which reaches
    /// that inode and no other. Without `/proc`: `path` again, without
    /// blocking or taking a terminal, and only if it is still `id`.
    fn reopen(
        &self,
        handle: &File,
        path: &Path,
        extra: OFlags,
        id: (u64, u64),
    ) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        match File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let file = match &self.confine {
            Some((root, fd)) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "outside the module")
                })?;
                open_beneath_with(fd, rel, OFlags::NONBLOCK | OFlags::NOCTTY)?
            }
            None => {
                let flags =
                    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY | extra;
                File::from(rustix::fs::open(path, flags, Mode::empty())?)
            }
        };
        let st = file.metadata()?;
        if !st.is_file() || (st.dev(), st.ino()) != id {
            return Err(Replaced::error(ANOTHER_FILE));
        }
        blocking(file)
    }
}

/// `file` opened with `O_NONBLOCK`, now reading as a file always does
/// (the flag was only for the open).
fn blocking(file: File) -> io::Result<File> {
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

/// Why a listed file is not sent: a symlink at its name that the scan did
/// not follow.
const BECAME_SYMLINK: &str = "it became a symlink (not followed)";
/// A FIFO, socket, device or directory where the scan found a regular file.
const NOT_REGULAR: &str = "it is no longer a regular file";
/// A regular file, but not the one the scan stated (another inode).
const ANOTHER_FILE: &str = "another file is there now";

impl Source for LocalSource {
    type Handle = OnDisk;
    type File = File;

    fn list_start(&self, roots: &[Vec<u8>], opts: &ListOptions) -> ListStart {
        scan::list_start(roots, opts)
    }

    fn list<E>(
        &self,
        roots: &[Vec<u8>],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<OnDisk>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let top = self.confine.as_ref().map(|(root, _)| root.as_path());
        scan::scan_within(roots, opts, top, emit)
    }

    /// Opens a listed file: beneath the module root when confined; not
    /// through a symlink at its name unless the scan followed one there;
    /// first as a handle that reads nothing (`O_PATH`), then for reading
    /// only if it is a regular file and the one the scan stated (device
    /// and inode).
    ///
    /// # Security
    /// What is at a listed name when it is opened is whatever a user with
    /// write access to the tree put there since the scan: a symlink to
    /// another user's key, a FIFO that would block `open` for ever, a
    /// directory on the way swapped for a link to `/dev` (opening a device
    /// can start a watchdog or rewind a tape). None is opened for reading:
    /// the scan's identity of the file is the only one read and sent.
    fn open(&self, at: &OnDisk) -> io::Result<File> {
        send_pause_hook(&at.path);
        let nofollow = if at.followed {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        let handle = self
            .open_handle(&at.path, nofollow)
            .map_err(|e| match e.raw_os_error() {
                // (confined, a symlink anywhere on the way)
                Some(libc::ELOOP) if !at.followed => Replaced::error(BECAME_SYMLINK),
                _ => e,
            })?;
        let st = handle.metadata()?;
        if st.file_type().is_symlink() {
            return Err(Replaced::error(BECAME_SYMLINK));
        }
        if !st.is_file() {
            return Err(Replaced::error(NOT_REGULAR));
        }
        if (st.dev(), st.ino()) != at.id {
            return Err(Replaced::error(ANOTHER_FILE));
        }
        self.reopen(&handle, &at.path, nofollow, at.id)
    }

    /// Confined, relative to the module root: the name goes to the client,
    /// which never learns where the module lives on the server.
    fn name<'h>(&self, at: &'h OnDisk) -> &'h [u8] {
        let top = self.confine.as_ref().map(|(root, _)| root.as_path());
        scan::shown_within(top, at.path.as_os_str().as_encoded_bytes())
    }

    /// # Security
    /// Confined to a module, the parent directory is opened beneath the
    /// module root without following symlinks, and the entry is looked at
    /// and removed from that handle.
    fn remove(&self, at: &OnDisk, listed: Stamp) -> io::Result<()> {
        let path = &at.path;
        let (dir, name) = match &self.confine {
            Some((root, fd)) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "outside the module")
                })?;
                let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
                let dir = rustix::fs::openat2(
                    fd,
                    parent.unwrap_or(Path::new(".")),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
                )?;
                (dir, rel.file_name())
            }
            None => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                let dir = open_dir(parent.unwrap_or(Path::new(".")))?;
                (dir, path.file_name())
            }
        };
        let name = name.ok_or_else(|| io::Error::other("not a file name"))?;
        let st = rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(io::Error::other("a directory"));
        }
        // the very file the scan listed (and the sender read), not another
        // put in its place since with the same size and mtime; a name the
        // walk followed to its target is the link, not the target
        if !at.followed && (st.st_dev, st.st_ino) != at.id {
            return Err(io::Error::other("it was replaced since it was sent"));
        }
        // (a symlink is listed without a size of its own)
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let now = Stamp {
            size: if is_link {
                listed.size
            } else {
                st.st_size as u64
            },
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as i64,
        };
        if now != listed {
            return Err(io::Error::other("it changed since it was sent"));
        }
        rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty())?;
        Ok(())
    }
}

impl SourceFile for File {
    /// Size and mtime.
    fn stamp(&self) -> io::Result<Stamp> {
        let m = self.metadata()?;
        Ok(Stamp {
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    /// The stamp taken after the read (size and mtime) tells whether the
    /// file grew: no read to see its end.
    fn at_end(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    fn try_clone(&self) -> io::Result<File> {
        File::try_clone(self)
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match rustix::fs::seek(self, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => Ok(Some(at)),
            // no data at or after `offset`: a hole to the end
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn next_hole(&self, offset: u64) -> io::Result<Option<u64>> {
        match rustix::fs::seek(self, rustix::fs::SeekFrom::Hole(offset)) {
            Ok(at) => Ok(Some(at)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The test hook for a file swapped after the scan listed it: with
/// `FERRY_TEST_HOOKS=1`, `FERRY_TEST_SEND_PAUSE_AT=NAME` and
/// `FERRY_TEST_SEND_PAUSE_FILE=PATH`, the sender, about to open a file whose
/// path ends in NAME (`a/x`: the components `a` and `x`) to send it, makes
/// `PATH.waiting` and waits (20 s at most) until PATH exists. Without
/// `FERRY_TEST_HOOKS=1` the other two are never read.
fn send_pause_hook(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    static PAUSE: super::pause::PauseHook =
        super::pause::PauseHook::new("FERRY_TEST_SEND_PAUSE_AT", "FERRY_TEST_SEND_PAUSE_FILE");
    PAUSE.hold_if(|at| path.ends_with(std::ffi::OsStr::from_bytes(at)));
}

/// Opens `rel` for reading beneath the directory `root`, refusing any symlink
/// on the way and any `..` out of it (`openat2` with `RESOLVE_BENEATH` and
/// `RESOLVE_NO_SYMLINKS`): what a daemon sends from a module stays in it.
/// `extra` open flags: `O_NONBLOCK`, so that a FIFO found there does not
/// block the open.
pub fn open_beneath_with(root: &OwnedFd, rel: &Path, extra: OFlags) -> io::Result<File> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
        rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
    )
    .map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// Opens a directory the administrator configured (a module root).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// The first symlink met on the way down `rel` beneath the module root
/// `root`, looked at one component at a time from directory handles, never
/// followed: its path relative to `root`, and whether it leads out of the
/// module. The last component is looked at only with `last_too` (a name
/// that would be followed: a source sent by its contents, `dir/`, or a
/// destination directory); a symlink there otherwise is sent as a link.
/// What does not exist yet ends the walk: `None`, there is no link on the
/// way (the transfer reports the missing path, or makes it).
///
/// # Security
/// This names a link for the error message; it is not what keeps a
/// transfer inside the module (a link swapped in after the check): the
/// confined sender ([`LocalSource::confined`]) and receiver do that, opening
/// everything beneath the root's handle with no symlink followed.
pub fn symlink_on_the_way(
    root: &Path,
    rel: &Path,
    last_too: bool,
) -> io::Result<Option<(PathBuf, bool)>> {
    use rustix::fs::{AtFlags, FileType};
    let parts: Vec<_> = rel
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let mut dir = open_dir(root)?;
    let mut at = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last && !last_too {
            break;
        }
        at.push(part);
        let st = match rustix::fs::statat(&dir, part.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let inside = match (
                    std::fs::canonicalize(root.join(&at)),
                    std::fs::canonicalize(root),
                ) {
                    (Ok(target), Ok(top)) => target.starts_with(top),
                    // a link to nothing: where it would lead is not inside
                    _ => false,
                };
                return Ok(Some((at, !inside)));
            }
            FileType::Directory if !last => {
                dir = rustix::fs::openat(
                    &dir,
                    part.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// What a transfer confined to a module says of a path that goes through a
/// symlink: `link` (relative to the module root) and whether it leads out.
pub fn symlink_refusal(link: &Path, leaves: bool) -> String {
    let link = super::names::escape(link.as_os_str().as_encoded_bytes());
    if leaves {
        format!(
            "{link} is a symlink that leaves the module (a module is never left through a symlink)"
        )
    } else {
        format!("{link} is a symlink; inside a module no symlink on the way is followed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_symlink_on_the_way_is_named_and_where_it_leads() {
        let t = tempfile::tempdir().unwrap();
        let (root, out) = (t.path().join("m"), t.path().join("out"));
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&out, root.join("evil")).unwrap();
        std::os::unix::fs::symlink("d/e", root.join("near")).unwrap();
        let check =
            |rel: &str, last_too| symlink_on_the_way(&root, Path::new(rel), last_too).unwrap();
        assert_eq!(check("evil/x", false), Some((PathBuf::from("evil"), true)));
        assert_eq!(check("evil", true), Some((PathBuf::from("evil"), true)));
        // the last name is sent as a link unless it would be followed
        assert_eq!(check("evil", false), None);
        assert_eq!(check("near/f", false), Some((PathBuf::from("near"), false)));
        assert_eq!(check("d/e/new/deeper", true), None);
        assert_eq!(check("d/e", true), None);
        assert_eq!(check("", true), None);
        assert!(symlink_refusal(Path::new("evil"), true)
            .contains("evil is a symlink that leaves the module"));
    }

    /// The file `name` of `dir` as the scan lists it (`-L`: `follow`).
    fn listed(dir: &Path, name: &str, follow: bool) -> OnDisk {
        let opts = ListOptions {
            recursive: true,
            links: true,
            follow_links: follow,
            ..Default::default()
        };
        let mut found = None;
        let src = [format!("{}/", dir.display()).into_bytes()];
        scan::scan::<()>(&src, &opts, &mut |item| {
            if let Listed::Entry(e, at) = item {
                if e.name == name.as_bytes() {
                    found = Some(at);
                }
            }
            Ok(())
        })
        .unwrap();
        found.expect("listed")
    }

    #[test]
    fn a_listed_file_is_opened_only_while_it_is_the_file_listed() {
        let t = tempfile::tempdir().unwrap();
        let (dir, secret) = (t.path().join("d"), t.path().join("secret"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&secret, "secret").unwrap();
        let why = |r: io::Result<File>| Replaced::of(&r.unwrap_err());
        let source = LocalSource::default();
        let x = dir.join("x");
        let swap = |make: &dyn Fn(&Path)| {
            // (what the last swap left there goes first)
            let _ = std::fs::remove_file(&x);
            std::fs::write(&x, "listed").unwrap();
            let at = listed(&dir, "x", false);
            std::fs::remove_file(&x).unwrap();
            make(&x);
            at
        };
        // unchanged: opened, and reads block as usual
        std::fs::write(&x, "listed").unwrap();
        let f = source.open(&listed(&dir, "x", false)).unwrap();
        let flags = rustix::fs::fcntl_getfl(&f).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK));
        std::fs::remove_file(&x).unwrap();

        let at = swap(&|x| std::os::unix::fs::symlink(&secret, x).unwrap());
        assert_eq!(why(source.open(&at)), Some(BECAME_SYMLINK));
        let at = swap(&|x| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                x,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap()
        });
        assert_eq!(why(source.open(&at)), Some(NOT_REGULAR));
        // another file (the listed one kept elsewhere, so that the new one
        // cannot be given its inode number)
        std::fs::remove_file(&x).unwrap();
        std::fs::write(&x, "listed").unwrap();
        let at = listed(&dir, "x", false);
        std::fs::rename(&x, t.path().join("kept")).unwrap();
        std::fs::write(&x, "another").unwrap();
        assert_eq!(why(source.open(&at)), Some(ANOTHER_FILE));
        std::fs::remove_file(&x).unwrap();

        // -L: a link the scan followed is opened through it, and must
        // still lead to what the scan stated
        let target = t.path().join("target");
        std::fs::write(&target, "target").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
        let at = listed(&dir, "link", true);
        assert!(at.followed);
        let mut text = String::new();
        io::Read::read_to_string(&mut source.open(&at).unwrap(), &mut text).unwrap();
        assert_eq!(text, "target");
        std::fs::remove_file(dir.join("link")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
        assert_eq!(why(source.open(&at)), Some(ANOTHER_FILE));
    }
}
