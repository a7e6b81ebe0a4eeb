//! The directories a walk is in, from its root down, as a bounded stack of
//! directory handles: the one way the sender's scan, the fan-out's manifest
//! walk and every recursive delete go down a tree. Each directory is opened
//! from its parent's handle, without following a symlink there (unless the
//! walk follows that one), and only if it is the directory that was stated
//! (device and inode). Not for resolving a peer's path in a destination
//! (that is [`super::dest::Dest::dir`]) nor for reading what is in a
//! directory in the walk's order (each walk keeps that in its levels' data).
//!
//! # Descriptors
//! The top [`MAX_HELD_DIRS`] levels are held open, and the deepest one; a
//! level deeper than that lets its handle go while the walk is below it, and
//! is opened again, name by name from the deepest level still held, when the
//! walk comes back to it. A tree 1,000 directories deep is walked with about
//! 65 descriptors open, not 1,000: under `ulimit -n 256` it is still walked
//! (and deleted).
//!
//! # Security
//! A directory opened again is reached name by name with `O_NOFOLLOW` (a
//! level the walk followed a link into excepted), and each level on the way
//! must still be the directory the walk entered: one swapped since, for a
//! symlink out of the tree or another directory, is refused with an error
//! saying so, never walked (nor deleted in).

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// How many directories down a walk holds a handle on each directory it is
/// in. Below that it holds only the deepest one's, and opens a directory
/// again (name by name from the deepest one held) when it comes back to it.
pub(crate) const MAX_HELD_DIRS: usize = 64;

/// A directory the walk is in, with the walk's own `data` for it.
struct Level<T> {
    /// Its handle; `None` while the walk is below it, deeper than
    /// [`MAX_HELD_DIRS`].
    fd: Option<OwnedFd>,
    /// Its name in its parent (to open it again from there).
    name: Vec<u8>,
    /// The walk followed a symlink to it (`-L`, `-k`): opened again
    /// following it. Never set by a delete.
    follow: bool,
    /// Device and inode: a handle opened again must be this directory.
    key: (u64, u64),
    data: T,
}

/// The stack. `during` names the walk in its errors ("the scan", "the
/// delete").
pub(crate) struct DirStack<T> {
    levels: Vec<Level<T>>,
    during: &'static str,
}

impl<T> DirStack<T> {
    pub(crate) fn new(during: &'static str) -> DirStack<T> {
        DirStack {
            levels: Vec::new(),
            during,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.levels.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.levels.clear();
    }

    /// Whether the walk is in directory `key` (a followed link back to it
    /// is a loop).
    pub(crate) fn holds(&self, key: (u64, u64)) -> bool {
        self.levels.iter().any(|l| l.key == key)
    }

    /// The deepest level's data.
    pub(crate) fn top_mut(&mut self) -> Option<&mut T> {
        self.levels.last_mut().map(|l| &mut l.data)
    }

    /// Makes `fd` (directory `name` of the deepest level, or the walk's
    /// root, stated as `key`) the deepest level. Below [`MAX_HELD_DIRS`]
    /// the level above lets its handle go meanwhile.
    pub(crate) fn push(
        &mut self,
        fd: OwnedFd,
        name: &[u8],
        key: (u64, u64),
        follow: bool,
        data: T,
    ) {
        let depth = self.levels.len();
        if depth > MAX_HELD_DIRS {
            self.levels[depth - 1].fd = None;
        }
        self.levels.push(Level {
            fd: Some(fd),
            name: name.to_vec(),
            follow,
            key,
            data,
        });
    }

    /// Leaves the deepest level: its data and its name in its parent (now
    /// the deepest level, if any).
    pub(crate) fn pop(&mut self) -> Option<(T, Vec<u8>)> {
        self.levels.pop().map(|l| (l.data, l.name))
    }

    /// Opens directory `name` of the deepest level: not through a symlink
    /// unless `follow`, and only if it is the directory stated as `key`.
    pub(crate) fn open_child(
        &mut self,
        name: &[u8],
        key: (u64, u64),
        follow: bool,
    ) -> io::Result<OwnedFd> {
        let during = self.during;
        let dir = self.top_fd()?;
        let fd = open_child_dir(dir, name, follow)
            .map_err(|e| now_is(dir, name, during).unwrap_or(e))?;
        same_dir(&fd, key, during)?;
        Ok(fd)
    }

    /// The handle of the deepest level, opened again if it was let go:
    /// name by name from the deepest level still held, each level on the
    /// way checked to be the directory the walk entered.
    pub(crate) fn top_fd(&mut self) -> io::Result<BorrowedFd<'_>> {
        let last = self
            .levels
            .len()
            .checked_sub(1)
            .ok_or_else(|| io::Error::other("no directory entered"))?;
        if self.levels[last].fd.is_none() {
            let fd = self.reopen(last)?;
            self.levels[last].fd = Some(fd);
        }
        Ok(self.levels[last].fd.as_ref().expect("held above").as_fd())
    }

    fn reopen(&self, at: usize) -> io::Result<OwnedFd> {
        let held = (0..at)
            .rev()
            .find(|&i| self.levels[i].fd.is_some())
            .expect("the levels above MAX_HELD_DIRS are always held");
        let mut fd: Option<OwnedFd> = None;
        for level in &self.levels[held + 1..=at] {
            let parent = match &fd {
                Some(fd) => fd.as_fd(),
                None => self.levels[held].fd.as_ref().expect("found held").as_fd(),
            };
            let opened = open_child_dir(parent, &level.name, level.follow)
                .map_err(|e| now_is(parent, &level.name, self.during).unwrap_or(e))?;
            same_dir(&opened, level.key, self.during)?;
            fd = Some(opened);
        }
        Ok(fd.expect("at is below held"))
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Opens directory `name` in `dir`, not following a symlink there unless
/// `follow`.
pub(crate) fn open_child_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    follow: bool,
) -> io::Result<OwnedFd> {
    let flags = if follow {
        dir_flags()
    } else {
        dir_flags() | OFlags::NOFOLLOW
    };
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Device and inode of what `fd` is.
pub(crate) fn key_of(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Refuses a directory opened that is not the one stated as `key`: it was
/// replaced (renamed over, or a symlink followed to another) `during` the
/// walk.
pub(crate) fn same_dir(fd: &OwnedFd, key: (u64, u64), during: &str) -> io::Result<()> {
    if key_of(fd)? != key {
        return Err(io::Error::other(format!("it was replaced during {during}")));
    }
    Ok(())
}

/// Why directory `name` in `dir`, entered as a directory, could not be
/// opened `during` the walk, when what is there now is not one.
pub(crate) fn now_is(dir: BorrowedFd<'_>, name: &[u8], during: &str) -> Option<io::Error> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => Some(io::Error::other(format!(
            "it became a symlink during {during} (not followed)"
        ))),
        FileType::Directory => None,
        _ => Some(io::Error::other("it is no longer a directory")),
    }
}

/// The names in directory `dir` (without `.` and `..`), read from it.
pub(crate) fn names_in(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn open(p: &Path) -> OwnedFd {
        rustix::fs::open(p, dir_flags(), Mode::empty()).unwrap()
    }

    /// Goes down `depth` levels of `d` under `root`: the stack.
    fn down(root: &Path, depth: usize) -> DirStack<()> {
        let mut s = DirStack::new("the test");
        let fd = open(root);
        let key = key_of(&fd).unwrap();
        s.push(fd, b"", key, false, ());
        for _ in 0..depth {
            let st =
                rustix::fs::statat(s.top_fd().unwrap(), "d", AtFlags::SYMLINK_NOFOLLOW).unwrap();
            #[allow(clippy::unnecessary_cast)]
            let key = (st.st_dev as u64, st.st_ino as u64);
            let fd = s.open_child(b"d", key, false).unwrap();
            s.push(fd, b"d", key, false, ());
        }
        s
    }

    fn held(s: &DirStack<()>) -> usize {
        s.levels.iter().filter(|l| l.fd.is_some()).count()
    }

    #[test]
    fn a_deep_walk_holds_a_bounded_number_of_handles_and_comes_back_up() {
        let t = tempfile::tempdir().unwrap();
        let deep = "d/".repeat(200);
        std::fs::create_dir_all(t.path().join(&deep)).unwrap();
        let mut s = down(t.path(), 200);
        assert_eq!(s.len(), 201);
        assert_eq!(held(&s), MAX_HELD_DIRS + 1);
        // back up: each level opened again is the one entered
        while s.len() > 1 {
            s.pop();
            s.top_fd().unwrap();
        }
        assert_eq!(
            key_of(s.top_fd().unwrap()).unwrap(),
            key_of(open(t.path())).unwrap()
        );
    }

    #[test]
    fn a_level_swapped_for_a_symlink_is_not_opened_again() {
        let t = tempfile::tempdir().unwrap();
        let below = MAX_HELD_DIRS + 3;
        std::fs::create_dir_all(t.path().join("d/".repeat(below + 1))).unwrap();
        std::fs::create_dir_all(t.path().join("outside/d")).unwrap();
        let mut s = down(t.path(), below + 1);
        let swapped = t.path().join("d/".repeat(below).trim_end_matches('/'));
        std::fs::rename(&swapped, t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), &swapped).unwrap();
        s.pop();
        let e = s.top_fd().unwrap_err();
        assert_eq!(
            e.to_string(),
            "it became a symlink during the test (not followed)"
        );
        // a directory put in its place instead is not the one entered
        std::fs::remove_file(&swapped).unwrap();
        std::fs::create_dir(&swapped).unwrap();
        let e = s.top_fd().unwrap_err();
        assert_eq!(e.to_string(), "it was replaced during the test");
    }
}
