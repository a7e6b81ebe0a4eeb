//! `--delete` with `dir-merge` rules, as rsync(1) "PER-DIRECTORY RULES AND
//! DELETE" has it: the receiver reads its own copies of the per-directory
//! merge files (`.rsync-filter` with `-F`), and a destination entry they
//! exclude is not deleted (unless `--delete-excluded`). The copies read are
//! those standing when the directory is reached: with `--delete-after`
//! (ferry's default) the ones this run just wrote, with `--delete-before`,
//! `--delete-during` and `--delete-delay` the ones the destination held
//! before. Not for deciding what is sent: the sender reads its own merge
//! files for that ([`crate::fs::scan`]).
//!
//! # Security
//! A merge file is read through the destination (a daemon module's never
//! outside the module), never through a symlink, only when it is a regular
//! file, and at most [`crate::filter::MAX_MERGE_FILE`] bytes of it.

use super::Receiver;
use crate::filter::{DirRules, MAX_MERGE_FILE};
use crate::fs::names::{self, escape};
use crate::fs::scan::{read_merge_text, MergeAt, MergeText};
use crate::proto::{DeleteTiming, Report};
use crate::store::destination::{BasisFile, Destination, ExistingKind};
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;

/// The rules a destination directory's own merge files hold, or why they
/// could not be read (then nothing is deleted there).
pub(super) type OwnRules = Result<Vec<DirRules>, String>;

impl<D: Destination> Receiver<'_, D> {
    /// Whether deletions look at the destination's merge files at all.
    pub(super) fn deletes_by_dest_rules(&self) -> bool {
        self.opts.delete && !self.opts.delete_excluded && self.filters.has_dir_merges()
    }

    /// A directory that stood at the destination was reached: with
    /// `--delete-delay` its merge files are read now, before this run
    /// writes into it (the other timings read them when they delete).
    pub(super) fn reached_dest_dir(&mut self, rel: &[u8]) {
        if self.deletes_by_dest_rules() && self.opts.dest_side.delete_timing == DeleteTiming::Delay
        {
            self.own_rules(rel);
        }
    }

    /// The merge-file rules that apply in destination directory `rel`:
    /// those of each listed directory from the top down to `rel`, outermost
    /// first. `None` when one of them could not be read (said once).
    pub(super) fn dest_layers(
        &mut self,
        rel: &[u8],
        listed: &HashSet<Vec<u8>>,
    ) -> Option<Vec<DirRules>> {
        let mut dirs: Vec<Vec<u8>> = Vec::new();
        if rel != b"." && listed.contains(b".".as_slice()) {
            dirs.push(b".".to_vec());
        }
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/' && listed.contains(&rel[..i]) {
                dirs.push(rel[..i].to_vec());
            }
        }
        dirs.push(rel.to_vec());
        let mut layers = Vec::new();
        for dir in dirs {
            match self.own_rules(&dir) {
                Ok(rules) => layers.extend(rules.iter().cloned()),
                Err(_) => return None,
            }
        }
        Some(layers)
    }

    /// Directory `rel`'s own merge-file rules, read once.
    fn own_rules(&mut self, rel: &[u8]) -> &OwnRules {
        if !self.dest_rules.contains_key(rel) {
            let read = self.read_own_rules(rel);
            if let Err(why) = &read {
                let shown = escape(rel);
                self.file_error(rel, format!("not deleting in {shown}: {why}"));
            }
            self.dest_rules.insert(rel.to_vec(), read);
        }
        &self.dest_rules[rel]
    }

    fn read_own_rules(&mut self, rel: &[u8]) -> OwnRules {
        let files: Vec<Vec<u8>> = self.filters.dir_merge_names().map(<[u8]>::to_vec).collect();
        let mut out = Vec::new();
        for (m, file) in files.iter().enumerate() {
            let frel = names::join(rel, file);
            let Some(dest) = self.dest.get() else {
                break;
            };
            let shown = dest.show(&frel);
            // on this host's disk: opened the hardened way, from the
            // directory's handle (a FIFO swapped in after a look does not
            // block, and one found is said)
            if let Some(dir) = dest.spill_dir(rel) {
                let name = std::path::Path::new(std::ffi::OsStr::from_bytes(file));
                let text = match read_merge_text(MergeAt::Beneath(&dir, name)) {
                    Ok(MergeText::Text(text)) => text,
                    Ok(MergeText::Missing | MergeText::Dir) => continue,
                    Ok(MergeText::Symlink) => {
                        self.not_reading(frel, &shown, "it is a symlink");
                        continue;
                    }
                    Ok(MergeText::Special) => {
                        self.not_reading(frel, &shown, "not a regular file");
                        continue;
                    }
                    Err(e) => return Err(format!("cannot read filter file {shown}: {e}")),
                };
                let rules = self
                    .filters
                    .dir_rules(m, rel, &text)
                    .map_err(|why| format!("filter file {shown}: {why}"))?;
                out.push(rules);
                continue;
            }
            let text = match dest.stat(&frel) {
                Ok(None) => continue,
                Ok(Some(x)) if x.kind == ExistingKind::Symlink => {
                    self.emit(Report::Notice {
                        name: frel.clone(),
                        text: format!("not reading filter file {shown}: it is a symlink")
                            .into_bytes(),
                    });
                    continue;
                }
                Ok(Some(x)) if x.kind != ExistingKind::File => continue,
                Ok(Some(_)) => read_limited(dest, &frel)
                    .map_err(|e| format!("cannot read filter file {shown}: {e}"))?,
                Err(e) => return Err(format!("cannot read filter file {shown}: {e}")),
            };
            let rules = self
                .filters
                .dir_rules(m, rel, &text)
                .map_err(|why| format!("filter file {shown}: {why}"))?;
            out.push(rules);
        }
        Ok(out)
    }

    /// Says that merge file `frel` (shown as `shown`) is not read, and why.
    fn not_reading(&mut self, frel: Vec<u8>, shown: &str, why: &str) {
        self.emit(Report::Notice {
            name: frel,
            text: format!("not reading filter file {shown}: {why}").into_bytes(),
        });
    }
}

/// The file at `rel`, whole, if it is at most [`MAX_MERGE_FILE`] bytes.
fn read_limited<D: Destination>(dest: &mut D, rel: &[u8]) -> std::io::Result<Vec<u8>> {
    let file = dest.open_basis(rel)?;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read_at(&mut buf, text.len() as u64)?;
        if n == 0 {
            return Ok(text);
        }
        text.extend_from_slice(&buf[..n]);
        if text.len() as u64 > MAX_MERGE_FILE {
            return Err(std::io::Error::other("larger than 1 MiB"));
        }
    }
}
