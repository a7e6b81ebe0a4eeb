//! Opening the destination when the first entry arrives, with rsync's and
//! scp's naming rules (a single file written under the destination's own name,
//! `cp -r dir new` making `new` the directory). Not for anything per entry.

use super::intake::Mapping;
use super::Receiver;
use crate::error::TransferError;
use crate::fs::dest::{Dest, ExistingKind};
use crate::fs::names::{self, escape, split_parent};
use crate::proto::ListStart;
use std::os::unix::ffi::OsStrExt;

impl Receiver<'_> {
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
        // what is there now, and a handle to open things from
        let (exists, is_dir, mut module) = match &self.beneath {
            None => {
                let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(trimmed)).ok();
                (
                    meta.is_some(),
                    meta.as_ref().is_some_and(|m| m.is_dir()),
                    None,
                )
            }
            Some(root) => {
                let mut m = Dest::open(root, false)
                    .map_err(|e| TransferError::local(root.display().to_string(), &e))?;
                let rel = if trimmed.is_empty() || trimmed == b"/" {
                    b".".as_slice()
                } else {
                    trimmed
                };
                names::check(rel)
                    .map_err(|e| TransferError::Usage(format!("destination {shown}: {e}")))?;
                let x = m
                    .stat(rel)
                    .map_err(|e| TransferError::local(shown.clone(), &e))?;
                (
                    x.is_some(),
                    x.is_some_and(|x| x.kind == ExistingKind::Dir),
                    Some(m),
                )
            }
        };
        let (root, create): (Vec<u8>, bool) = if ls.single_file && !trailing && !is_dir {
            let (parent, base) = split_parent(trimmed);
            self.mapping = Mapping::FileAs(base.to_vec());
            let parent = if trimmed.starts_with(b"/") && parent.is_empty() {
                b"/".as_slice()
            } else {
                parent
            };
            (parent.to_vec(), false)
        } else if self.opts.cp_mode && ls.single_dir && !exists {
            self.mapping = Mapping::StripTop(Vec::new());
            (trimmed.to_vec(), true)
        } else {
            if exists && !is_dir {
                return Err(TransferError::Usage(format!(
                    "destination {shown} exists and is not a directory"
                )));
            }
            (trimmed.to_vec(), !exists)
        };
        if self.opts.dry_run && create {
            return Ok(()); // nothing exists yet: everything is new
        }
        let opened = match module.as_mut() {
            None => Dest::open(
                std::path::Path::new(std::ffi::OsStr::from_bytes(&root)),
                create,
            ),
            Some(m) => {
                let rel = if root.is_empty() || root == b"/" {
                    b".".to_vec()
                } else {
                    root.clone()
                };
                if create {
                    m.mkdir(&rel, 0o755)
                        .or_else(|e| {
                            if e.kind() == std::io::ErrorKind::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| TransferError::local(shown.clone(), &e))?;
                }
                m.sub(&rel)
            }
        };
        match opened {
            Ok(mut dest) => {
                if !self.opts.fsync && !self.opts.dry_run {
                    dest.sync_in_background();
                }
                self.dest = Some(dest);
                Ok(())
            }
            Err(e) => Err(TransferError::local(escape(&root), &e)),
        }
    }
}
