//! The files this side reads: opening a listed file (beneath the module root
//! when confined), its [`Stamp`] taken before and after reading so that a file
//! that changed meanwhile is never passed off as sent, and giving up on a file
//! (the receiver is told why; the transfer goes on). Not for reading the
//! bytes: [`super::whole`], [`super::recipe`] and [`super::segments`] do that.

use super::Sender;
use crate::error::io_text;
use crate::error::TransferError;
use crate::fs::names::escape;
use crate::proto::Message;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// Size and mtime: if they change while a file is read, the copy is not trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp(pub(super) u64, pub(super) i64, pub(super) i64);

pub(super) fn stamp(f: &File) -> std::io::Result<Stamp> {
    let m = f.metadata()?;
    Ok(Stamp(m.size(), m.mtime(), m.mtime_nsec()))
}

impl<W: Write> Sender<'_, W> {
    pub(super) fn fail_file(
        &mut self,
        file: u32,
        path: &std::path::Path,
        why: String,
    ) -> Result<(), TransferError> {
        let reason = format!("{}: {why}", escape(path.as_os_str().as_encoded_bytes()));
        self.writer.send(&Message::FileFailed {
            file,
            reason: reason.into_bytes(),
        })
    }

    /// Opens a listed file: beneath the module root when confined.
    pub(super) fn open_source(&self, path: &std::path::Path) -> std::io::Result<File> {
        match &self.confine {
            Some((root, fd)) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "outside the module")
                })?;
                crate::fs::dest::open_beneath(fd, rel)
            }
            None => File::open(path),
        }
    }

    /// Opens a listed file and notes its size and mtime; if that fails, the
    /// receiver is told and `None` comes back.
    pub(super) fn open_listed(
        &mut self,
        file: u32,
        path: &std::path::Path,
    ) -> Result<Option<(File, Stamp)>, TransferError> {
        let opened = self
            .open_source(path)
            .and_then(|f| stamp(&f).map(|s| (f, s)));
        match opened {
            Ok(x) => Ok(Some(x)),
            Err(e) => self.fail_file(file, path, io_text(&e)).map(|_| None),
        }
    }

    /// Fails a file that has a pending recipe: later answers for it are ignored.
    pub(super) fn give_up(
        &mut self,
        file: u32,
        path: &std::path::Path,
        why: String,
    ) -> Result<(), TransferError> {
        self.pending.remove(&file);
        self.given_up.insert(file);
        self.fail_file(file, path, why)
    }
}
