//! Finding old data a new file may be rebuilt from: the old file at its path,
//! a partial file an earlier run left, or a similar file elsewhere in the
//! destination (a renamed shard, the previous checkpoint). Not for reading
//! those files: that is [`super::index`].

use super::Receiver;
use crate::fs::dest::ExistingKind;
use crate::fs::names::{self, split_parent};
use crate::store::destination::Destination;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Sibling directories looked at for a previous version of a new file.
pub(super) const SIMILAR_SIBLINGS: usize = 64;

/// Directories with more entries than this are not searched for same-size files.
pub(super) const SIMILAR_DIR_LIMIT: usize = 10_000;

/// Regular files of a destination directory with their sizes.
pub(super) type DirFiles = Vec<(Vec<u8>, u64)>;

impl<D: Destination> Receiver<'_, D> {
    /// Where the chunk list of a large basis for entry `index` may go: the
    /// directory its new version is written to.
    pub(super) fn spill_dir(&mut self, index: u32) -> Option<Arc<OwnedFd>> {
        let parent = split_parent(&self.entries[index as usize].rel).0.to_vec();
        self.dest.get()?.spill_dir(&parent)
    }

    /// Files whose chunks may rebuild entry `index`: the old file at its path,
    /// and the partial file an interrupted run left.
    pub(super) fn open_bases(&mut self, index: u32) -> (Vec<D::Basis>, bool) {
        let l = &self.entries[index as usize];
        let rel = l.rel.clone();
        let is_new = l.is_new;
        let Some(dest) = self.dest.get() else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        if !is_new {
            if let Ok(f) = dest.open_basis(&rel) {
                out.push(f);
            }
        }
        if self.opts.partial {
            if let Some(f) = dest.open_partial(&rel) {
                out.push(f);
            }
        }
        if !out.is_empty() {
            return (out, true);
        }
        // --link-dest and friends: the copy in a basis directory
        if let Some(j) = self.basis_of.get(&index).copied() {
            if let Ok(f) = self.basis_dirs[j].open_basis(&rel) {
                return (vec![f], false);
            }
        }
        let size = self.entries[index as usize].size;
        for candidate in self.similar_files(&rel, size) {
            if let Some(f) = self.dest.get().and_then(|d| d.open_basis(&candidate).ok()) {
                out.push(f);
            }
        }
        (out, false)
    }

    /// For a new file with nothing at its path: destination files likely to
    /// share its chunks. A file of the same size in the same directory (a renamed
    /// or duplicated shard), and the file of the same name in sibling directories
    /// (the previous checkpoint: `run/ckpt-100/model.bin` for
    /// `run/ckpt-200/model.bin`), closest in size first. Whatever is picked is
    /// only ever used through chunk hashes, so a poor guess costs a read, never
    /// correctness.
    pub(super) fn similar_files(&mut self, rel: &[u8], size: u64) -> Vec<Vec<u8>> {
        let (dir, name) = split_parent(rel);
        let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some(files) = self.dir_files(dir) {
            for (other, other_size) in files {
                if other_size == size && other != name {
                    found.push((0, names::join(dir, &other)));
                    break;
                }
            }
        }
        if dir != b"." {
            let (grand, here) = split_parent(dir);
            let (grand, here) = (grand.to_vec(), here.to_vec());
            if let Some(dest) = self.dest.get() {
                let siblings = dest.list(&grand).unwrap_or_default();
                for (sibling, is_dir) in siblings.into_iter().take(SIMILAR_SIBLINGS) {
                    if !is_dir || sibling == here || sibling == crate::fs::PARTIAL_DIR {
                        continue;
                    }
                    let candidate = names::join(&names::join(&grand, &sibling), name);
                    if let Ok(Some(x)) = dest.stat(&candidate) {
                        if x.kind == ExistingKind::File && x.size > 0 {
                            found.push((x.size.abs_diff(size), candidate));
                        }
                    }
                }
            }
        }
        found.sort();
        found.dedup_by(|a, b| a.1 == b.1);
        found.into_iter().take(2).map(|(_, p)| p).collect()
    }

    /// Regular files and their sizes in destination directory `dir`, read once
    /// per transfer (a directory with very many entries is not read at all).
    pub(super) fn dir_files(&mut self, dir: &[u8]) -> Option<DirFiles> {
        if let Some(v) = self.dir_cache.get(dir) {
            return v.clone();
        }
        let dest = self.dest.get()?;
        let listing = dest.list(dir).ok().unwrap_or_default();
        let files = (listing.len() <= SIMILAR_DIR_LIMIT).then(|| {
            listing
                .into_iter()
                .filter(|(_, is_dir)| !is_dir)
                .filter_map(|(n, _)| {
                    let p = names::join(dir, &n);
                    match dest.stat(&p) {
                        Ok(Some(x)) if x.kind == ExistingKind::File => Some((n, x.size)),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>()
        });
        if self.dir_cache.len() > 256 {
            self.dir_cache.clear();
        }
        self.dir_cache.insert(dir.to_vec(), files.clone());
        files
    }
}
