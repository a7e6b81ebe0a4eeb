//! `--remove-source-files` on the sending side: every listed non-directory is
//! remembered with how it looked when listed, and removed only when the
//! receiver names it in a `Settled` message, which it sends once the copy is
//! verified and synced. A connection cut before then removes nothing; a file
//! that changed since it was listed is kept and reported. Directories stay,
//! as rsync leaves them. Not for deciding what is settled: that is the
//! receiver's.

use super::Sender;
use crate::error::TransferError;
use crate::fs::names::escape;
use crate::proto::{Entry, Event, Kind};
use crate::store::source::{Source, Stamp};
use std::io::Write;

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Remembers listed entry `entry` (the next index) to remove once settled.
    pub(super) fn keep_removable(&mut self, entry: &Entry, path: &S::Handle) {
        let o = &self.options;
        if !o.dest_side.remove_source_files || o.dry_run || entry.kind == Kind::Dir {
            return;
        }
        let stamp = Stamp {
            size: entry.size,
            mtime: entry.mtime,
            mtime_nsec: entry.mtime_nsec as i64,
        };
        self.removable.insert(self.listed, (path.clone(), stamp));
    }

    /// Removes the sources of the entries the receiver settled.
    ///
    /// # Security
    /// Only entries this side listed as non-directories, each once: anything
    /// else ends the session.
    pub(super) fn remove_settled(&mut self, files: &[u32]) -> Result<(), TransferError> {
        if !self.options.dest_side.remove_source_files {
            return Err(TransferError::PeerMisbehaved(
                "settled files without --remove-source-files".into(),
            ));
        }
        for &file in files {
            let (path, stamp) = self.removable.remove(&file).ok_or_else(|| {
                TransferError::PeerMisbehaved(format!(
                    "settled entry {file}, which is not a listed file or was settled before"
                ))
            })?;
            if let Err(e) = self.source.remove(&path, stamp) {
                let name = escape(self.source.name(&path));
                self.emit(Event::error(
                    b"",
                    format!("not removing source {name}: {e}"),
                ))?;
            }
        }
        Ok(())
    }
}
