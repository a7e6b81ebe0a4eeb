//! A FUSE filesystem for tests whose files fail to read part-way: each file
//! has a size, bytes, and an offset from which every read returns EIO — the
//! way a dying disk or a broken network mount behaves. Mounted by the test
//! process itself (needs root); unmounted when the session is dropped.

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    Request,
};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub struct FailingFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Reads at or past this offset fail with EIO.
    pub fail_at: u64,
}

struct Fs {
    files: Vec<FailingFile>,
    mtime: SystemTime,
}

const TTL: Duration = Duration::from_secs(60);

impl Fs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = if ino == 1 {
            (FileType::Directory, 0, 0o755)
        } else {
            let f = self.files.get(ino as usize - 2)?;
            (FileType::RegularFile, f.bytes.len() as u64, 0o644)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = self.files.iter().position(|f| OsStr::new(&f.name) == name);
        match (parent, found.and_then(|i| self.attr(i as u64 + 2))) {
            (1, Some(a)) => reply.entry(&TTL, &a, 0),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _: &Request<'_>, ino: u64, _: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        size: u32,
        _: i32,
        _: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(f) = (ino as usize)
            .checked_sub(2)
            .and_then(|i| self.files.get(i))
        else {
            return reply.error(libc::ENOENT);
        };
        let start = offset as u64;
        if start >= f.fail_at {
            return reply.error(libc::EIO);
        }
        let end = (start + size as u64)
            .min(f.fail_at)
            .min(f.bytes.len() as u64);
        reply.data(&f.bytes[start.min(end) as usize..end as usize]);
    }

    fn readdir(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != 1 {
            return reply.error(libc::ENOTDIR);
        }
        let mut entries = vec![(1, FileType::Directory, ".".to_string())];
        entries.push((1, FileType::Directory, "..".to_string()));
        for (i, f) in self.files.iter().enumerate() {
            entries.push((i as u64 + 2, FileType::RegularFile, f.name.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mounts the files at `at` (an empty directory); unmounted on drop.
pub fn mount(at: &Path, files: Vec<FailingFile>, mtime: SystemTime) -> fuser::BackgroundSession {
    let fs = Fs { files, mtime };
    fuser::spawn_mount2(
        fs,
        at,
        &[MountOption::RO, MountOption::FSName("ferry-test".into())],
    )
    .expect("mount the failing FUSE filesystem")
}
