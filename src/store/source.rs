//! The sender's side of the store seam: what a sender reads. A [`Source`] lists
//! the files to send, streaming list entries in the order the receiver takes
//! them in (so that memory does not grow with the tree), opens a listed file for
//! reading, and gives a [`Stamp`] of an open file, taken before and after it is
//! read so that a file that changed meanwhile is never passed off as sent.
//!
//! The local filesystem is [`crate::fs::source::LocalSource`]; S3 and SFTP
//! sources come next. Not for writing (that is [`super::destination`]) nor for
//! the protocol: the sender decides what to send, the source only reads.

use crate::filter::Filters;
use crate::proto::{Entry, ListStart};
use std::io;

/// What to list, from the transfer's options.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub recursive: bool,
    /// Without `recursive`: send a directory and its entries, not deeper.
    pub dirs: bool,
    /// scp's rules (`ferry cp`): a directory without `recursive` is an error
    /// ("not a regular file"), not rsync's notice.
    pub cp_mode: bool,
    /// Send symlinks as symlinks.
    pub links: bool,
    /// Follow symlinks and send what they point to.
    pub follow_links: bool,
    /// Follow only the symlinks that leave the tree (absolute, or `..` above
    /// the root).
    pub copy_unsafe_links: bool,
    /// Follow symlinks to directories.
    pub copy_dirlinks: bool,
    /// Do not descend into directories on another filesystem than the root's.
    pub one_file_system: bool,
    /// Name each source by its path (rsync `-R`), sending the directories
    /// above it too.
    pub relative: bool,
    /// Name hard links (`-H`): a file whose inode was listed before links to
    /// that entry (`link_to`), and the first file of such a group links to
    /// its own index (a store without hard links leaves `link_to` unset).
    pub hard_links: bool,
    /// Compute each file's BLAKE3 for the list (`--checksum`).
    pub checksum: bool,
    pub filters: Filters,
}

/// What listing produces, in order.
pub enum Listed<H> {
    /// The next entry of the file list, with what opens it again.
    Entry(Entry, H),
    /// Something skipped on purpose (a directory without `-r`, a socket, …).
    Notice(String),
    /// Something that could not be read; the transfer will report an I/O error.
    Error(String),
}

/// What an open file looked like. Taken when it is opened and again when it has
/// been read: if the two differ, or the size is not what was read, the file
/// changed while it was sent and the receiver is told so instead of `FileEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes in the file.
    pub size: u64,
    /// Last modification: seconds since the epoch, and nanoseconds.
    pub mtime: i64,
    pub mtime_nsec: i64,
}

/// What [`Source::open`] says of a listed file whose name now holds something
/// else than the file listed (swapped since: for a symlink, a FIFO, another
/// file): the sender reports it as a file that changed while being sent,
/// never reads it. `why` ends the one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Replaced(pub &'static str);

impl Replaced {
    /// As the error [`Source::open`] returns.
    pub fn error(why: &'static str) -> io::Error {
        io::Error::other(Replaced(why))
    }

    /// Why the file was not opened, if `e` says it was replaced.
    pub fn of(e: &io::Error) -> Option<&'static str> {
        e.get_ref()?.downcast_ref::<Replaced>().map(|r| r.0)
    }
}

/// A listed file opened for reading. Read in order from the start (a whole
/// file, a recipe's chunking) or at offsets (the chunks asked for, segments
/// sent from other threads through a clone).
pub trait SourceFile: io::Read + Send + Sized + 'static {
    /// What the file looks like now.
    fn stamp(&self) -> io::Result<Stamp>;
    /// Fills `buf` from `offset`; a file that ends first is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Whether what this file holds is checked only when it is read in
    /// order, through `read` (an S3 object against the BLAKE3 stored with
    /// it): then the sender never splits it over several streams, whose
    /// pieces are read at offsets and would go unchecked.
    fn verified_in_order(&self) -> bool {
        false
    }
    /// Where the next data at or after `offset` starts (`SEEK_DATA`), `None`
    /// when only a hole is left before the end: how `-S` sends holes without
    /// reading them. May move the read position (the caller then reads at
    /// offsets). A source that cannot tell says everything is data.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// Where the next hole at or after `offset` starts (`SEEK_HOLE`; the end
    /// of the file counts as one). A source that cannot tell says `None`.
    fn next_hole(&self, _offset: u64) -> io::Result<Option<u64>> {
        Ok(None)
    }
    /// Called once the sender has read, in order through this handle, as
    /// many bytes as the file had when it was opened: whether the file ends
    /// there (`true`), so a source that checks what it read when it meets
    /// the end (SFTP's remote hash) does it now, and its error fails the
    /// file. The default reads on to see the end; a local file, whose stamp
    /// taken after the read tells the same, says `true` without a read.
    fn at_end(&mut self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        loop {
            match self.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    /// A second handle on the same open file, for another thread or reader.
    /// Whether it shares the read position is the source's business: the
    /// sender reads in order through one handle only, and at offsets through
    /// the others.
    fn try_clone(&self) -> io::Result<Self>;
}

/// Where a sender's files live.
pub trait Source {
    /// What finds a listed file again (a path on the local filesystem).
    type Handle: Clone;
    type File: SourceFile;

    /// Looks at the roots (not their contents) to tell the receiver how to
    /// name the destination.
    fn list_start(&self, roots: &[Vec<u8>], opts: &ListOptions) -> ListStart;

    /// Lists every root, calling `emit` for each item as it is found. Returns
    /// whether anything could not be read (which must stop `--delete` on the
    /// receiver).
    fn list<E>(
        &self,
        roots: &[Vec<u8>],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<Self::Handle>) -> Result<(), E>,
    ) -> Result<bool, E>;

    /// Opens a listed file for reading; one that is not the file listed
    /// any more is a [`Replaced`] error.
    fn open(&self, at: &Self::Handle) -> io::Result<Self::File>;

    /// The file's name as this host knows it (a local path), for messages.
    fn name<'h>(&self, at: &'h Self::Handle) -> &'h [u8];

    /// Removes a listed file or symlink (`--remove-source-files`), unless it
    /// changed since it was listed (its size and mtime are not `listed`'s
    /// any more). A source that cannot remove says so.
    fn remove(&self, at: &Self::Handle, listed: Stamp) -> io::Result<()> {
        let _ = (at, listed);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this source cannot remove files",
        ))
    }
}
