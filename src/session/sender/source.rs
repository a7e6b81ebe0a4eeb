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
    pub(super) fn fail_file(
        &mut self,
        file: u32,
        path: &S::Handle,
        why: String,
    ) -> Result<(), TransferError> {
        let reason = format!("{}: {why}", escape(self.source.name(path)));
        self.writer.send(&Message::FileFailed {
            file,
            reason: reason.into_bytes(),
        })
    }

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
            Err(e) => self.fail_file(file, path, io_text(&e)).map(|_| None),
        }
    }

    /// Fails a file that has a pending recipe: later answers for it are ignored.
    pub(super) fn give_up(
        &mut self,
        file: u32,
        path: &S::Handle,
        why: String,
    ) -> Result<(), TransferError> {
        self.pending.remove(&file);
        self.given_up.insert(file);
        self.fail_file(file, path, why)
    }
}
