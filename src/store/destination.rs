//! The receiver's side of the store seam: [`Destination`], what a receiver
//! needs of the place files are written to (stat, list, mkdir, symlinks,
//! hard links, remove, metadata, a basis to rebuild from, a temporary file,
//! publish, discard, space, sync), with [`Caps`] saying what the store can do.
//! The receiver (`session::receiver`) is generic over it and monomorphic: the
//! data path calls [`TempWrite::write`] and [`BasisFile::read_exact_at`] on
//! concrete types, never through `dyn`.
//!
//! Not for how a store resolves names or keeps files safe: the local
//! filesystem's rules (every peer-named path resolved under a held directory
//! handle, `O_TMPFILE`, the partial directory) are [`crate::fs::dest`]'s, and
//! its implementation of this trait is [`crate::fs::destination`].
//!
//! # Security
//! Every `rel` handed to a store has passed [`crate::fs::names::check`] and
//! the receiver's list checks; a store must still never let one escape its
//! root (the local store resolves them without following symlinks).

use crate::error::TransferError;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use crate::fs::dest::{Existing, ExistingKind, Meta};

/// What a store can do beyond writing files front to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// It can give back old data to rebuild a file from (a delta): without
    /// it every file comes whole.
    pub rebuild: bool,
    /// It can write a file at offsets (segments over several streams).
    pub write_at: bool,
    /// A copy from a basis can share its blocks instead of copying them
    /// (reflinks).
    pub share_blocks: bool,
}

/// Which kind of entry metadata is set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOf {
    File,
    Dir,
    Link,
}

/// How a temporary file is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TempHow {
    /// Kept where an interrupted run can resume from it.
    pub partial: bool,
    /// All-zero blocks become holes.
    pub sparse: bool,
    /// No name until it is published (a new file), where the store can.
    pub unnamed: bool,
    /// The file at its path itself, written over (`--inplace`), where the
    /// store can; a store that cannot writes a temporary file as usual.
    pub in_place: bool,
}

/// How a finished temporary file becomes the file at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHow<'a> {
    /// Durable before it is in place.
    pub fsync: bool,
    /// Keep what was at the path under its name plus this suffix.
    pub backup: Option<&'a [u8]>,
}

/// What is left in the store, for the message when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free_bytes: u64,
    pub out_of_inodes: bool,
}

/// Where a receiver's destination is, before it is opened: opening it is
/// the store's business (a local path, a daemon module, a bucket), the
/// naming rules the receiver applies around it are not. Called once per
/// transfer, so a `dyn Place` costs nothing on the data path.
pub trait Place {
    type Dest: Destination;
    /// Whether something is at `path` and whether it is a directory.
    /// `shown` names the whole destination in messages.
    fn probe(&mut self, path: &[u8], shown: &str) -> Result<Option<bool>, TransferError>;
    /// Whether the directories above a destination must exist before it
    /// is written (a filesystem: without `--mkpath` a missing one is an
    /// error); a store of keys without directories (S3) says no.
    fn has_directories(&self) -> bool {
        true
    }
    /// Opens `root` as the destination, making it (its last component) when
    /// `create`.
    fn open(&mut self, root: &[u8], create: bool, shown: &str)
        -> Result<Self::Dest, TransferError>;
    /// Opens `dir` (`--link-dest` and friends: relative to `root`, the
    /// destination) to read earlier copies from; `Ok(None)` when nothing is
    /// there. A store that cannot says so.
    fn open_basis_dir(
        &mut self,
        root: &[u8],
        dir: &[u8],
        flag: &str,
    ) -> Result<Option<Self::Dest>, TransferError> {
        let _ = (root, dir);
        Err(TransferError::Usage(format!(
            "{flag} works only with a destination on a filesystem"
        )))
    }
    /// `--atomic`: prepares a new tree beside directory `root` (holding what
    /// `root` holds, unchanged files shared with it, not copied) and opens
    /// it as the destination; [`Place::switch_atomic`] puts it at `root`
    /// in one step. `backup_dir` (relative to `root`) is where the replaced
    /// tree goes. A store that cannot says so.
    fn open_atomic(
        &mut self,
        root: &[u8],
        backup_dir: Option<&[u8]>,
        shown: &str,
    ) -> Result<Self::Dest, TransferError> {
        let _ = (root, backup_dir, shown);
        Err(TransferError::Usage(
            "--atomic works only with a destination on a filesystem".into(),
        ))
    }
    /// `--atomic`: switches the tree [`Place::open_atomic`] prepared (all of
    /// it durable already) in at its root in one step, then removes the
    /// replaced tree or moves it to the backup directory.
    fn switch_atomic(&mut self) -> Result<(), TransferError> {
        Err(TransferError::Usage(
            "--atomic works only with a destination on a filesystem".into(),
        ))
    }
}

/// The place files are written to. `rel` is always a checked path relative to
/// the destination's root (`.` for the root itself).
pub trait Destination {
    /// Old data a rebuild reads: the file at a path, or a partial one.
    type Basis: BasisFile;
    /// A file being written, published at its path once verified.
    type Temp: TempWrite<Basis = Self::Basis>;

    fn caps(&self) -> Caps;
    /// `rel` as shown in messages.
    fn show(&self, rel: &[u8]) -> String;
    /// What is at `rel` now, without following a symlink.
    fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>>;
    /// The entries of directory `rel`: names and whether each is a directory.
    fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>>;
    fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()>;
    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()>;
    fn readlink(&mut self, rel: &[u8]) -> io::Result<Vec<u8>>;
    /// Makes `rel` another name of `existing`.
    fn hardlink(&mut self, existing: &[u8], rel: &[u8]) -> io::Result<()>;
    /// Makes `rel` another name of `existing` in `other` (a basis directory
    /// of the same store, `--link-dest`), atomically.
    fn hardlink_from(&mut self, other: &mut Self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        let _ = (other, existing, rel);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Whether `a` and `b` already name the same file (one inode: a hard
    /// link in place). `false` where the store cannot tell.
    fn same_file(&mut self, a: &[u8], b: &[u8]) -> io::Result<bool> {
        let _ = (a, b);
        Ok(false)
    }
    /// Removes `rel` (a directory with what is in it), or keeps it under
    /// its name plus `backup`.
    fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()>;
    fn set_meta(&mut self, rel: &[u8], of: MetaOf, meta: &Meta) -> io::Result<()>;
    /// The file at `rel`, to read old data from (or to hash for `-c`).
    fn open_basis(&mut self, rel: &[u8]) -> io::Result<Self::Basis>;
    /// The partial file an interrupted run left for `rel`, if any.
    fn open_partial(&mut self, rel: &[u8]) -> Option<Self::Basis>;
    fn create_temp(&mut self, rel: &[u8], how: TempHow) -> io::Result<Self::Temp>;
    /// [`Destination::create_temp`] for a file the sender announced as
    /// `size` bytes, to be published with `meta`: a store that passes the
    /// bytes on as they arrive (S3 uploads parts at once, and takes an
    /// object's metadata only when its upload begins) needs both before
    /// the first byte. The same as `create_temp` unless a store says
    /// otherwise.
    fn create_temp_for(
        &mut self,
        rel: &[u8],
        how: TempHow,
        size: u64,
        meta: &Meta,
    ) -> io::Result<Self::Temp> {
        let _ = (size, meta);
        self.create_temp(rel, how)
    }
    /// Gives `temp` its metadata and puts it at `rel`, atomically.
    fn publish(
        &mut self,
        temp: Self::Temp,
        rel: &[u8],
        meta: &Meta,
        how: PublishHow<'_>,
    ) -> io::Result<()>;
    /// Forgets a temporary file that will not be published.
    fn discard(&mut self, temp: Self::Temp);
    /// What the store has to tell the user since it was last asked: a
    /// fallback it took that is not an error (S3: a new version uploaded
    /// whole because it could not be composed on the server). The receiver
    /// asks after each publish and passes each on as a notice. None by
    /// default.
    fn take_notices(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Where the chunk list of a large basis for a file in directory `rel`
    /// may spill; `None`: it stays in memory.
    fn spill_dir(&mut self, rel: &[u8]) -> Option<Arc<OwnedFd>>;
    /// Removes what is left of the partial directory in directory `dir`.
    fn tidy_dir(&mut self, dir: &[u8]);
    fn space(&self) -> Space;
    /// Makes everything written durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Starts making what is written durable as the transfer goes (so that
    /// the final sync has little left to wait for). Does nothing by default.
    fn sync_in_background(&mut self) {}
    /// rsync's `-K`: from now on a symlink to a directory here is taken as
    /// that directory. `false` when this store cannot (it has no symlinks to
    /// follow, or does not follow them).
    fn keep_dirlinks(&mut self) -> bool {
        false
    }
    /// Lets go of bases whose last use is over; the local store closes
    /// them on another thread (freeing a replaced file's blocks takes time).
    fn let_go(&mut self, bases: Vec<Self::Basis>) {
        drop(bases);
    }
}

/// Old data a rebuild reads from, by offset (two threads may read one).
pub trait BasisFile: Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads what is at `offset`, as much as fits in `buf` (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The local file, for the POSIX fast paths: `copy_file_range`, the
    /// chunk cache (keyed by inode), page-cache advice, link counts.
    fn as_file(&self) -> Option<&File>;
}

/// A file being written: front to back, or at offsets where the store can.
pub trait TempWrite {
    type Basis;
    /// Bytes written so far (the end of the file written front to back).
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether it lives where a later run can resume from it (kept on
    /// failure).
    fn is_partial(&self) -> bool;
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Appends `len` bytes of zeros (a hole of a sparse file): where the
    /// store can, without writing them, as a hole; a store that cannot
    /// (this default) writes the zeros.
    fn hole(&mut self, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
    /// Appends `data`, which are the bytes at `offset` of `from` (the store
    /// may share blocks instead of copying them).
    fn append_from(&mut self, from: &Self::Basis, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads back bytes already written (a chunk that repeats in the file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The local file, for the chunk cache (keyed by inode).
    fn as_file(&self) -> Option<&File>;
}
