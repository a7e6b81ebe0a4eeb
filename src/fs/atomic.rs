//! `--atomic` trees on the local filesystem: readers of a destination
//! directory (an inference server loading a checkpoint) see the whole old
//! tree or the whole new one, never a mix. The new tree is built beside the
//! old one, in a hidden sibling `.NAME.ferry-atomic`, which starts as a copy
//! of the old tree made of hard links (nothing is copied: an unchanged file
//! stays the same inode; a changed one is written beside and renamed over its
//! link, leaving the old tree's file alone); once it is whole and durable,
//! one `renameat2(RENAME_EXCHANGE)` swaps the two names, and the old tree,
//! now at the sibling's name, is removed or moved to `--backup-dir`.
//!
//! Crash safety: until the exchange the destination's name holds the old
//! tree; from it on, the new one. A sibling left by a killed run is removed
//! by the next run before it builds its own. A lock file beside the
//! destination (`.NAME.ferry-atomic.lock`, kept) stops two runs building in
//! the same sibling.
//!
//! Not for deciding what the new tree holds (the receiver does, as for any
//! sync into the sibling), nor for finding the parent directory: the caller
//! resolves it (under a daemon module's handle, without following symlinks)
//! and hands over its handle. Every call here works on directory handles and
//! never follows a symlink.

use crate::error::TransferError;
use crate::fs::dest::{dir_flags, list_at, remove_at};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags, Timestamps};
use rustix::io::Errno;
use std::io;
use std::os::fd::OwnedFd;

/// A new tree being built beside a destination directory, until it is
/// switched in.
pub struct Staged {
    /// The directory holding the destination and the sibling.
    parent: OwnedFd,
    /// The destination's name in `parent`.
    name: Vec<u8>,
    /// The sibling's name in `parent`.
    sibling: Vec<u8>,
    /// Whether there was an old tree (else the switch is a plain rename).
    had_old: bool,
    /// Where the replaced tree goes (`--backup-dir`): a directory and a
    /// name in it, on the destination's filesystem.
    backup: Option<(OwnedFd, Vec<u8>)>,
    /// The destination as shown in messages.
    shown: String,
    /// Held until the switch is done: one run per destination at a time.
    _lock: OwnedFd,
}

/// The hidden sibling a new tree for `name` is built in.
pub fn sibling_name(name: &[u8]) -> Vec<u8> {
    let mut s = b".".to_vec();
    s.extend_from_slice(&name[..name.len().min(200)]);
    s.extend_from_slice(b".ferry-atomic");
    s
}

fn lock_name(name: &[u8]) -> Vec<u8> {
    let mut s = sibling_name(name);
    s.extend_from_slice(b".lock");
    s
}

fn local(shown: &str, e: impl Into<io::Error>) -> TransferError {
    TransferError::local(shown.to_string(), &e.into())
}

fn stat_at(dir: &OwnedFd, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_dir(st: &rustix::fs::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Prepares a new tree for directory `name` in `parent`: takes the lock,
/// removes a sibling a killed run left, checks that the filesystem can
/// exchange two names in one step, and fills the sibling with hard links to
/// the old tree. `backup` is `--backup-dir`'s directory and name, already
/// resolved by the caller. The receiver then opens the sibling (its name is
/// [`Staged::sibling`]) as its destination.
pub fn stage(
    parent: OwnedFd,
    name: &[u8],
    backup: Option<(OwnedFd, Vec<u8>)>,
    shown: &str,
) -> Result<Staged, TransferError> {
    let sibling = sibling_name(name);
    let lock = rustix::fs::openat(
        &parent,
        lock_name(name).as_slice(),
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| local(shown, e))?;
    match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(TransferError::Usage(format!(
            "--atomic: another ferry is building a new tree for {shown}; try again when it is done"
        )))
        }
        Err(e) => return Err(local(shown, e)),
    }
    let parent_st = rustix::fs::fstat(&parent).map_err(|e| local(shown, e))?;
    let old = stat_at(&parent, name).map_err(|e| local(shown, e))?;
    if let Some(st) = &old {
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} is a symlink; --atomic switches a real directory (name the directory it points to)"
            )));
        }
        if !is_dir(st) {
            return Err(TransferError::Usage(format!(
                "destination {shown} exists and is not a directory"
            )));
        }
        if st.st_dev != parent_st.st_dev {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} is a mount point; the new tree is built beside it, so it must be on the filesystem of the directory above it"
            )));
        }
    }
    if let Some((bdir, bname)) = &backup {
        if stat_at(bdir, bname).map_err(|e| local(shown, e))?.is_some() {
            return Err(TransferError::Usage(format!(
                "--backup-dir {}: already exists; name a new directory (the replaced tree is moved there whole)",
                crate::fs::names::escape(bname)
            )));
        }
        let st = rustix::fs::fstat(bdir).map_err(|e| local(shown, e))?;
        if st.st_dev != parent_st.st_dev {
            return Err(TransferError::Usage(format!(
                "--backup-dir {}: not on the filesystem of {shown} (the replaced tree is moved there, not copied)",
                crate::fs::names::escape(bname)
            )));
        }
    }
    // what a killed run left: never the destination itself
    if stat_at(&parent, &sibling)
        .map_err(|e| local(shown, e))?
        .is_some()
    {
        remove_at(&parent, &sibling, None).map_err(|e| local(shown, e))?;
    }
    rustix::fs::mkdirat(&parent, sibling.as_slice(), Mode::from_raw_mode(0o700))
        .map_err(|e| local(shown, e))?;
    let staged = Staged {
        parent,
        name: name.to_vec(),
        sibling,
        had_old: old.is_some(),
        backup,
        shown: shown.to_string(),
        _lock: lock,
    };
    let new = rustix::fs::openat(
        &staged.parent,
        staged.sibling.as_slice(),
        dir_flags(),
        Mode::empty(),
    )
    .map_err(|e| local(shown, e))?;
    staged.probe_exchange(&new)?;
    match old {
        Some(st) => {
            let from = rustix::fs::openat(&staged.parent, name, dir_flags(), Mode::empty())
                .map_err(|e| local(shown, e))?;
            clone_tree(&from, &new, st.st_dev).map_err(|e| local(shown, e))?;
            copy_dir_meta(&st, &new).map_err(|e| local(shown, e))?;
        }
        None => {
            let mode = 0o777 & !crate::fs::umask();
            rustix::fs::fchmod(&new, Mode::from_raw_mode(mode)).map_err(|e| local(shown, e))?;
        }
    }
    Ok(staged)
}

impl Staged {
    /// The sibling's name in the destination's parent directory.
    pub fn sibling(&self) -> &[u8] {
        &self.sibling
    }

    /// Fails early, before anything is transferred, where the filesystem
    /// cannot exchange two names (`EINVAL`/`ENOSYS`/`EOPNOTSUPP` from
    /// `renameat2`): two empty directories in the sibling are swapped.
    fn probe_exchange(&self, new: &OwnedFd) -> Result<(), TransferError> {
        let (a, b) = (&b".ferry-exchange-a"[..], &b".ferry-exchange-b"[..]);
        for n in [a, b] {
            rustix::fs::mkdirat(new, n, Mode::from_raw_mode(0o700))
                .map_err(|e| local(&self.shown, e))?;
        }
        let swapped = rustix::fs::renameat_with(new, a, new, b, RenameFlags::EXCHANGE);
        for n in [a, b] {
            let _ = rustix::fs::unlinkat(new, n, AtFlags::REMOVEDIR);
        }
        match swapped {
            Ok(()) => Ok(()),
            Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)) => {
                let _ = remove_at(&self.parent, &self.sibling, None);
                Err(TransferError::Usage(format!(
                    "--atomic: the filesystem of {} cannot swap two names in one step (renameat2 RENAME_EXCHANGE: {}); sync without --atomic",
                    self.shown,
                    io::Error::from(e)
                )))
            }
            Err(e) => Err(local(&self.shown, e)),
        }
    }

    /// Puts the new tree (durable already: the receiver synced it) at the
    /// destination's name in one step, makes that durable, then removes the
    /// old tree or moves it to the backup directory.
    pub fn switch(self) -> Result<(), TransferError> {
        let shown = &self.shown;
        let p = &self.parent;
        let how = if self.had_old {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(p, self.sibling.as_slice(), p, self.name.as_slice(), how)
            .map_err(|e| local(shown, e))?;
        rustix::fs::fsync(p).map_err(|e| local(shown, e))?;
        if !self.had_old {
            return Ok(());
        }
        let left = || {
            format!(
                "{shown}: the new tree is in place; the old one is left at {}",
                crate::fs::names::escape(&self.sibling)
            )
        };
        match &self.backup {
            Some((bdir, bname)) => {
                rustix::fs::renameat_with(
                    p,
                    self.sibling.as_slice(),
                    bdir,
                    bname.as_slice(),
                    RenameFlags::NOREPLACE,
                )
                .map_err(|e| local(&left(), e))?;
                rustix::fs::fsync(bdir).map_err(|e| local(shown, e))?;
            }
            None => remove_at(p, &self.sibling, None).map_err(|e| local(&left(), e))?,
        }
        Ok(())
    }
}

/// Fills directory `to` with what directory `from` holds: a directory for
/// each directory (with its mode, owner and times), a hard link for
/// everything else (files, symlinks, devices), never following a symlink and
/// never crossing into another filesystem (`dev`: a mount point inside the
/// tree cannot be linked from, so it is refused).
fn clone_tree(from: &OwnedFd, to: &OwnedFd, dev: u64) -> io::Result<()> {
    for (child, _) in list_at(from)? {
        let Some(st) = stat_at(from, &child)? else {
            continue; // gone meanwhile
        };
        if is_dir(&st) {
            if st.st_dev != dev {
                return Err(io::Error::other(format!(
                    "{} is a mount point inside the destination; --atomic cannot link across it",
                    crate::fs::names::escape(&child)
                )));
            }
            rustix::fs::mkdirat(to, child.as_slice(), Mode::from_raw_mode(0o700))?;
            let f = rustix::fs::openat(from, child.as_slice(), dir_flags(), Mode::empty())?;
            let t = rustix::fs::openat(to, child.as_slice(), dir_flags(), Mode::empty())?;
            clone_tree(&f, &t, dev)?;
            copy_dir_meta(&st, &t)?;
        } else {
            rustix::fs::linkat(
                from,
                child.as_slice(),
                to,
                child.as_slice(),
                AtFlags::empty(),
            )?;
        }
    }
    Ok(())
}

/// Gives directory `to` the mode, owner (where this process may) and times
/// of `st`, once its entries are in (adding them changes its mtime).
fn copy_dir_meta(st: &rustix::fs::Stat, to: &OwnedFd) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let uid = rustix::process::Uid::from_raw(st.st_uid);
        let gid = rustix::process::Gid::from_raw(st.st_gid);
        rustix::fs::fchown(to, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(to, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let ts = |sec: i64, nsec: u64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    };
    rustix::fs::futimens(to, &times)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn open_dir(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, dir_flags(), Mode::empty()).unwrap()
    }

    #[test]
    fn a_switch_exchanges_the_trees_and_shares_unchanged_files() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("sub/a"), b"old a").unwrap();
        std::fs::write(dest.join("b"), b"old b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dest.join("l")).unwrap();
        let staged = stage(open_dir(t.path()), b"d", None, "d").unwrap();
        let new = t.path().join(".d.ferry-atomic");
        assert_eq!(
            std::fs::metadata(new.join("sub/a")).unwrap().ino(),
            std::fs::metadata(dest.join("sub/a")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(new.join("l")).unwrap(),
            std::path::Path::new("/etc/passwd")
        );
        // a changed file is replaced, not written through its link
        std::fs::write(new.join("b.tmp"), b"new b").unwrap();
        std::fs::rename(new.join("b.tmp"), new.join("b")).unwrap();
        staged.switch().unwrap();
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"new b");
        assert_eq!(std::fs::read(dest.join("sub/a")).unwrap(), b"old a");
        assert!(!new.exists(), "the old tree is removed");
    }

    #[test]
    fn a_leftover_sibling_is_removed_and_a_symlinked_destination_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(".d.ferry-atomic/junk")).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let staged = stage(open_dir(t.path()), b"d", None, "d").unwrap();
        assert!(!t.path().join(".d.ferry-atomic/junk").exists());
        drop(staged);
        std::os::unix::fs::symlink("d", t.path().join("l")).unwrap();
        let e = stage(open_dir(t.path()), b"l", None, "l").err().unwrap();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }
}
