//! The end of a transfer (rsync's `hlink.c` and `delete.c`): hard links once
//! their targets exist, `--delete`, tidying partial directories, directory
//! metadata last, and one sync for everything. Not for anything per file.

use super::Receiver;
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::names::{self, escape};
use crate::proto::Report;
use crate::store::destination::{Destination, MetaOf};

impl<D: Destination> Receiver<'_, D> {
    /// The end of the list and of all files: hard links, deletions, directory
    /// metadata, and one sync for everything.
    pub(super) fn finish(&mut self) -> Result<(), TransferError> {
        for (index, target) in std::mem::take(&mut self.hardlinks) {
            let t = &self.entries[target as usize];
            let l = &self.entries[index as usize];
            let (trel, rel, name, tdone) = (t.rel.clone(), l.rel.clone(), l.name.clone(), t.done);
            if !tdone && !self.opts.dry_run {
                self.file_error(&name, "not linked: the file it links to failed".into());
                continue;
            }
            // a link already in place is left alone and not counted (rsync)
            let in_place = self
                .dest
                .get()
                .is_some_and(|d| d.same_file(&trel, &rel).unwrap_or(false));
            if in_place {
                self.settled(index);
                continue;
            }
            self.summary.transferred += 1;
            let detail = format!("=> {}", escape(&t.name)).into_bytes();
            let hard = crate::proto::item::Item::HARDLINK;
            self.emit_update(index, name.clone(), 0, detail, hard, None);
            if self.opts.dry_run {
                continue;
            }
            let dest = self.dest.open();
            match dest.hardlink(&trel, &rel) {
                Ok(()) => self.settled(index),
                Err(e) => {
                    let shown = dest.show(&rel);
                    self.file_failed(&name, FileError::new(shown, FileOp::Link, e));
                }
            }
        }
        if self.opts.delete && !self.deleted_first {
            if self.io_error {
                self.summary.delete_skipped = true;
                self.emit(Report::Error {
                    name: Vec::new(),
                    text: b"the sender had I/O errors: skipping deletion".to_vec(),
                });
            } else {
                self.delete_extraneous();
            }
        }
        // before directory times are set: removing an entry changes its parent's mtime
        if let Some(dest) = self.dest.get() {
            for dir in std::mem::take(&mut self.partial_dirs) {
                dest.tidy_dir(&dir);
            }
        }
        for &index in self.dirs.clone().iter().rev() {
            let meta = self.meta_for(index, false);
            let l = &self.entries[index as usize];
            let (rel, name) = (l.rel.clone(), l.name.clone());
            if self.opts.dry_run
                || (meta.mode.is_none() && meta.mtime.is_none() && meta.uid.is_none())
            {
                continue;
            }
            let Some(dest) = self.dest.get() else {
                continue;
            };
            // a directory already as it should be is left alone
            if let Ok(Some(x)) = dest.stat(&rel) {
                let same = meta.mode.is_none_or(|m| m == x.mode)
                    && meta.mtime.is_none_or(|t| t == (x.mtime, x.mtime_nsec))
                    && meta.uid.is_none_or(|u| u == x.uid)
                    && meta.gid.is_none_or(|g| g == x.gid);
                if same {
                    continue;
                }
            }
            self.touched = true;
            if let Err(e) = dest.set_meta(&rel, MetaOf::Dir, &meta) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    // the destination itself by its own name, not "."
                    let shown = if rel == b"." {
                        dest.show(&rel)
                    } else {
                        escape(&name)
                    };
                    self.file_failed(&name, FileError::new(shown, FileOp::Metadata, e));
                }
            }
        }
        // durable before success is reported; nothing to wait for when nothing
        // changed (syncfs would also wait for other writers on the filesystem)
        // (--atomic: the new tree is all new names, durable before it is switched in)
        let changed = self.summary.transferred > 0
            || self.summary.deleted > 0
            || self.touched
            || self.swap.is_some();
        if !self.opts.dry_run && changed {
            if let Some(dest) = self.dest.get_ref() {
                dest.sync_all()
                    .map_err(|e| TransferError::local(escape(&self.dest_path), &e))?;
            }
        }
        self.switch_atomic()
    }

    /// `--atomic`: switches the new tree in, unless something failed (then
    /// the destination keeps the whole old tree and the next run removes
    /// the new one's remains).
    fn switch_atomic(&mut self) -> Result<(), TransferError> {
        let Some(mut place) = self.swap.take() else {
            return Ok(());
        };
        if self.summary.errors > 0 || self.io_error {
            let text = format!(
                "--atomic: not switched in, as some entries failed: {} still holds the old tree",
                escape(&self.dest_path)
            );
            self.file_error(b"", text);
            return Ok(());
        }
        place.switch_atomic()
    }

    /// Whether `--delete` comes before any file is asked for
    /// (`--delete-before`, and `--delete-during`, which ferry does the same
    /// way: a directory's listing is whole only when the list is).
    pub(super) fn deleting_first(&self) -> bool {
        use crate::proto::DeleteTiming;
        self.opts.delete
            && matches!(
                self.opts.dest_side.delete_timing,
                DeleteTiming::Before | DeleteTiming::During
            )
            && !self.deleted_first
    }

    /// `--delete-before`, once the list is whole: deletes what it does not
    /// name (unless the sender had I/O errors), before any file is asked for.
    pub(super) fn delete_before_transfer(&mut self) {
        self.deleted_first = true;
        if self.io_error {
            self.summary.delete_skipped = true;
            self.emit(Report::Error {
                name: Vec::new(),
                text: b"the sender had I/O errors: skipping deletion".to_vec(),
            });
        } else {
            self.delete_extraneous();
        }
    }

    pub(super) fn delete_extraneous(&mut self) {
        // --max-delete: what is left standing beyond the limit
        let mut held_back = 0u64;
        // dir-merge rules: the destination's own merge files protect what they exclude
        let by_dest_rules = self.deletes_by_dest_rules();
        let listed: std::collections::HashSet<Vec<u8>> = if by_dest_rules {
            self.dirs
                .iter()
                .map(|&i| self.entries[i as usize].rel.clone())
                .collect()
        } else {
            Default::default()
        };
        for &index in &self.dirs.clone() {
            let rel = self.entries[index as usize].rel.clone();
            if self.dest.get().is_none() {
                return;
            }
            let layers = if by_dest_rules {
                match self.dest_layers(&rel, &listed) {
                    Some(layers) => layers,
                    None => continue, // a merge file could not be read: nothing deleted here
                }
            } else {
                Vec::new()
            };
            let Some(dest) = self.dest.get() else {
                return;
            };
            let Ok(mut children) = dest.list(&rel) else {
                continue;
            };
            // rsync's order, which decides what --max-delete leaves standing:
            // its list puts a directory's files before its subdirectories and
            // deletes from the end (subdirectories first, last name first)
            children.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
            for (child, is_dir) in children {
                let crel = names::join(&rel, &child);
                if child == crate::fs::PARTIAL_DIR
                    || self.intake.is_listed(&crel)
                    || (!self.opts.delete_excluded
                        && self.filters.excludes_in(&crel, is_dir, &layers))
                {
                    continue;
                }
                if self
                    .opts
                    .max_delete
                    .is_some_and(|max| self.summary.deleted >= max)
                {
                    held_back += 1;
                    continue;
                }
                let shown_name = names::join(&self.entries[index as usize].name, &child);
                let shown_name = if self.entries[index as usize].name == b"." {
                    child.clone()
                } else {
                    shown_name
                };
                self.summary.deleted += 1;
                if is_dir {
                    self.emit_deleted_contents(&crel, &shown_name);
                }
                self.emit(Report::Deleted {
                    name: shown_name.clone(),
                    is_dir,
                });
                if self.opts.dry_run {
                    continue;
                }
                let backup = self.opts.backup_suffix.clone();
                let dest = self.dest.open();
                if let Err(e) = dest.remove(&crel, backup.as_deref()) {
                    let shown = dest.show(&crel);
                    self.file_failed(&shown_name, FileError::new(shown, FileOp::Delete, e));
                }
            }
        }
        if held_back > 0 {
            let max = self.opts.max_delete.unwrap_or(0);
            self.file_error(
                b"",
                format!(
                    "deletions stopped at the --max-delete limit of {max}: {held_back} not deleted"
                ),
            );
        }
    }
}
