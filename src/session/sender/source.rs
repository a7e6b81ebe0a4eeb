//! The files this side reads, through its [`Source`]: opening a listed file with
//! its [`Stamp`] (taken again once the file is read, so that a file that changed
//! meanwhile is never passed off as sent), and giving up on a file (the receiver
//! is told why; the transfer goes on). Not for reading the bytes:
//! [`super::whole`], [`super::recipe`] and [`super::segments`] do that.

use super::Sender;
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::names::escape;
use crate::proto::Message;
use crate::store::source::{Replaced, Source, SourceFile, Stamp};
use std::io::Write;

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Opens a listed file and notes its size and mtime; if that fails, the
    /// receiver is told and `None` comes back (a file that is not the one
    /// listed any more as one that changed while being sent).
    pub(super) fn open_listed(
        &mut self,
        file: u32,
        path: &S::Handle,
    ) -> Result<Option<(S::File, Stamp)>, TransferError> {
        let opened = self
            .source
            .open(path)
            .and_then(|f| f.stamp().map(|s| (f, s)));
        match opened {
            Ok(x) => Ok(Some(x)),
            Err(e) => {
                let why = match Replaced::of(&e) {
                    Some(why) => Unsent::Replaced(why),
                    None => Unsent::Io(FileOp::Open, e),
                };
                self.give_up(file, path, why).map(|_| None)
            }
        }
    }

    /// Gives up on `file`, however far it got: the receiver is told why (and
    /// goes on with the others), and whatever this side still held for the
    /// file is let go. If a recipe was offered for it, the receiver's answers
    /// still on their way are ignored when they arrive.
    pub(super) fn give_up(
        &mut self,
        file: u32,
        path: &S::Handle,
        why: Unsent,
    ) -> Result<(), TransferError> {
        self.recipes.give_up(file);
        self.streams.forget(file);
        let name = escape(self.source.name(path));
        let reason = match why {
            Unsent::Io(op, e) => FileError::new(name, op, e).to_string(),
            why => format!("{name}: {why}"),
        };
        self.writer.send(&Message::FileFailed {
            file,
            reason: reason.into_bytes(),
        })
    }
}

/// Why this side gave up on a file. The receiver is told `name: why` in a
/// `FileFailed` (for an I/O error, the text of the [`FileError`]); these texts
/// are what users have always seen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unsent {
    /// Opening, stamping or reading the file failed (shown without the name,
    /// which the [`FileError`] it becomes adds).
    #[error("{}", io_why(*.0, .1))]
    Io(FileOp, std::io::Error),
    /// It is no longer the file that was opened (size, mtime or bytes).
    #[error("changed while being sent")]
    Changed,
    /// Its name holds something else than the file listed (the source's
    /// [`Replaced`]): not opened, not read.
    #[error("changed while being sent: {0}")]
    Replaced(&'static str),
    /// The worker that was to send one of its segments is gone.
    #[error("a stream worker stopped")]
    WorkerStopped,
    /// The stream one of its segments went on failed.
    #[error("{0}")]
    Stream(TransferError),
}

/// What an I/O failure of the sender says after the file's name.
fn io_why(op: FileOp, e: &std::io::Error) -> String {
    match op {
        FileOp::Read => format!("read failed: {}", crate::error::io_text(e)),
        _ => crate::error::io_text(e),
    }
}

/// Whether a file read to its end is still the one opened: the same stamp, and
/// `size` bytes as read. If not, why not, for the receiver.
pub(super) fn unchanged<F: SourceFile>(f: &F, before: &Stamp, size: u64) -> Result<(), Unsent> {
    match f.stamp() {
        Ok(after) if after == *before && after.size == size => Ok(()),
        Ok(_) => Err(Unsent::Changed),
        Err(e) => Err(Unsent::Io(FileOp::Open, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_receiver_is_told_reads_as_it_always_did() {
        let denied = || std::io::Error::from_raw_os_error(libc::EACCES);
        let read = Unsent::Io(FileOp::Read, denied());
        assert_eq!(read.to_string(), "read failed: Permission denied");
        assert_eq!(
            FileError::new("d/f", FileOp::Read, denied()).to_string(),
            format!("d/f: {read}")
        );
        let open = Unsent::Io(FileOp::Open, denied());
        assert_eq!(
            FileError::new("d/f", FileOp::Open, denied()).to_string(),
            format!("d/f: {open}")
        );
        assert_eq!(Unsent::Changed.to_string(), "changed while being sent");
        assert_eq!(
            Unsent::Replaced("another file is there now").to_string(),
            "changed while being sent: another file is there now"
        );
    }
}
