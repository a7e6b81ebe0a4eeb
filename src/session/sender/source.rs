//! The files this side reads, through its [`Source`]: opening a listed file with
//! its [`Stamp`] (taken again once the file is read, so that a file that changed
//! meanwhile is never passed off as sent), and giving up on a file (the receiver
//! is told why; the transfer goes on). Not for reading the bytes:
//! [`super::whole`], [`super::recipe`] and [`super::segments`] do that.

use super::Sender;
use crate::error::io_text;
use crate::error::TransferError;
use crate::fs::names::escape;
use crate::proto::Message;
use crate::store::source::{Source, SourceFile, Stamp};
use std::io::Write;

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Opens a listed file and notes its size and mtime; if that fails, the
    /// receiver is told and `None` comes back.
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
            Err(e) => self.give_up(file, path, io_text(&e)).map(|_| None),
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
        why: String,
    ) -> Result<(), TransferError> {
        self.recipes.give_up(file);
        self.streams.forget(file);
        let reason = format!("{}: {why}", escape(self.source.name(path)));
        self.writer.send(&Message::FileFailed {
            file,
            reason: reason.into_bytes(),
        })
    }
}

/// Whether a file read to its end is still the one opened: the same stamp, and
/// `size` bytes as read. If not, why not, for the receiver.
pub(super) fn unchanged<F: SourceFile>(f: &F, before: &Stamp, size: u64) -> Result<(), String> {
    match f.stamp() {
        Ok(after) if after == *before && after.size == size => Ok(()),
        Ok(_) => Err("changed while being sent".into()),
        Err(e) => Err(io_text(&e)),
    }
}
