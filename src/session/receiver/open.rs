//! Opening the destination when the first entry arrives, with rsync's and
//! scp's naming rules (a single file written under the destination's own name,
//! `cp -r dir new` making `new` the directory). Not for anything per entry.

use super::intake::Mapping;
use super::{Receiver, Target};
use crate::error::TransferError;
use crate::fs::names::{escape, split_parent};
use crate::proto::ListStart;
use crate::store::destination::Destination;

impl<D: Destination> Receiver<'_, D> {
    /// Decides how names map to the destination and opens it: like rsync, a
    /// single file may be written under the destination's own name; otherwise
    /// the destination is a directory, created if missing (only its last
    /// component). With `cp` semantics a single directory becomes the
    /// destination when that does not exist yet.
    pub(super) fn start(&mut self, ls: ListStart) -> Result<(), TransferError> {
        let d = self.dest_path.clone();
        let trailing = d.ends_with(b"/");
        let mut trimmed = d.as_slice();
        while trimmed.len() > 1 && trimmed.ends_with(b"/") {
            trimmed = &trimmed[..trimmed.len() - 1];
        }
        let shown = escape(&d);
        // what is there now
        let Target::Unopened(place) = &mut self.dest else {
            return Ok(()); // (the list starts once)
        };
        let found = place.probe(trimmed, &shown)?;
        let (exists, is_dir) = (found.is_some(), found == Some(true));
        // --atomic switches a directory; a single file is published
        // atomically anyway
        let mut atomic = self.opts.dest_side.atomic && !self.opts.dry_run;
        let (root, create): (Vec<u8>, bool) = if ls.single_file && !trailing && !is_dir {
            atomic = false;
            let (parent, base) = split_parent(trimmed);
            self.intake.set_mapping(Mapping::FileAs(base.to_vec()));
            let parent = if trimmed.starts_with(b"/") && parent.is_empty() {
                b"/".as_slice()
            } else {
                parent
            };
            (parent.to_vec(), false)
        } else if self.opts.cp_mode && ls.single_dir && !exists {
            self.intake.set_mapping(Mapping::StripTop(Vec::new()));
            (trimmed.to_vec(), true)
        } else {
            // (--atomic: a symlink to a directory, which a daemon module
            // reports as no directory, is the place's to judge)
            if exists && !is_dir && !atomic {
                return Err(TransferError::Usage(format!(
                    "destination {shown} exists and is not a directory"
                )));
            }
            (trimmed.to_vec(), !exists)
        };
        if self.opts.dry_run && create {
            // nothing exists yet: everything is new
            self.dest = Target::Absent;
            return Ok(());
        }
        if !self.opts.mkpath && !self.opts.dry_run && place.has_directories() {
            // without --mkpath the directory the destination goes in must
            // exist: name the outermost one missing, and the flag
            let top: &[u8] = if create { split_parent(&root).0 } else { &root };
            let mut missing = None;
            let mut p = top;
            while !matches!(p, b"" | b"." | b"/") && place.probe(p, &shown)?.is_none() {
                missing = Some(p);
                p = split_parent(p).0;
            }
            if let Some(m) = missing {
                return Err(TransferError::no_parent(&shown, &escape(m)));
            }
        }
        if self.opts.mkpath && !self.opts.dry_run {
            // --mkpath: each missing directory above the destination (or the
            // directory a single file goes in), outermost first
            let mut p: &[u8] = if create { split_parent(&root).0 } else { &root };
            let mut missing = Vec::new();
            while !matches!(p, b"" | b"." | b"/") && place.probe(p, &shown)?.is_none() {
                missing.push(p.to_vec());
                p = split_parent(p).0;
            }
            for dir in missing.iter().rev() {
                place.open(dir, true, &shown)?;
            }
        }
        let mut dest = if atomic {
            let backup = self.opts.dest_side.backup_dir.clone();
            place.open_atomic(&root, backup.as_deref(), &shown)?
        } else {
            place.open(&root, create, &shown)?
        };
        if self.opts.keep_dirlinks && !dest.keep_dirlinks() {
            return Err(TransferError::Usage(format!(
                "-K/--keep-dirlinks: destination {shown} has no symlinks to follow"
            )));
        }
        if !self.opts.dest_side.basis_dirs.is_empty() || atomic {
            // --link-dest and friends: relative to the destination just opened
            let Target::Unopened(mut place) = std::mem::replace(&mut self.dest, Target::Absent)
            else {
                unreachable!("the destination is opened once");
            };
            if !self.opts.dest_side.basis_dirs.is_empty() {
                self.basis_dirs = self.open_basis_dirs(&mut *place, &root)?;
            }
            if atomic {
                self.swap = Some(place);
            }
        }
        self.root_created = create;
        if !self.opts.fsync && !self.opts.dry_run {
            dest.sync_in_background();
        }
        self.dest = Target::Open(dest);
        Ok(())
    }
}
