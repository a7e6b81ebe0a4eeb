//! `--link-dest`, `--copy-dest` and `--compare-dest` (rsync's
//! `try_dests_reg`): for a file missing at the destination, the directories
//! holding an earlier copy are looked in, in order. A copy that passes the
//! quick check and has the same attributes is used as it is (hard-linked,
//! copied locally, or left out of the destination); one that passes the quick
//! check only is copied locally and given the listed attributes; any other
//! regular file there is the delta basis. Not for opening those directories
//! (the store's [`Place::open_basis_dir`](crate::store::destination::Place))
//! nor for rebuilding from them ([`super::basis`]).

use super::index::ReadAt;
use super::Receiver;
use crate::check::file_checksum;
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::names::escape;
use crate::proto::{BasisKind, Entry, Report};
use crate::store::destination::{
    BasisFile, Destination, Existing, ExistingKind, Place, PublishHow, TempHow, TempWrite,
};

/// How closely a basis directory's copy matches a listed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    /// A regular file: something to rebuild from.
    Basis,
    /// Same content by the quick check.
    Content,
    /// Same content and attributes.
    Whole,
}

impl<D: Destination> Receiver<'_, D> {
    /// Opens the basis directories, relative to the destination `root`; one
    /// that does not exist is reported and left out, as rsync does.
    pub(super) fn open_basis_dirs(
        &mut self,
        place: &mut dyn Place<Dest = D>,
        root: &[u8],
    ) -> Result<Vec<D>, TransferError> {
        let kind = self.opts.dest_side.basis_kind;
        let mut out = Vec::new();
        for dir in &self.opts.dest_side.basis_dirs {
            match place.open_basis_dir(root, dir, kind.flag())? {
                Some(d) => out.push(d),
                None => self.emit(Report::Notice {
                    name: Vec::new(),
                    text: format!("{} {}: no such directory", kind.flag(), escape(dir))
                        .into_bytes(),
                }),
            }
        }
        Ok(out)
    }

    /// For file `index`, missing at the destination: whether a basis
    /// directory settled it (linked, copied or left out: `true`), else which
    /// one holds a basis to rebuild it from (remembered for
    /// [`super::basis`]).
    pub(super) fn try_basis_dirs(&mut self, index: u32, e: &Entry) -> bool {
        if self.basis_dirs.is_empty() {
            return false;
        }
        let rel = self.entries[index as usize].rel.clone();
        let mut best: Option<(Match, usize)> = None;
        for j in 0..self.basis_dirs.len() {
            let Ok(Some(x)) = self.basis_dirs[j].stat(&rel) else {
                continue;
            };
            if x.kind != ExistingKind::File {
                continue;
            }
            let mut level = Match::Basis;
            if self.quick_same(j, &rel, &x, e) {
                level = Match::Content;
                if self.attrs_same(index, &x) {
                    level = Match::Whole;
                }
            }
            if best.is_none_or(|(b, _)| level > b) {
                best = Some((level, j));
            }
            if level == Match::Whole {
                break;
            }
        }
        let Some((level, j)) = best else {
            return false;
        };
        let kind = self.opts.dest_side.basis_kind;
        match (level, kind) {
            (Match::Basis, _) => {
                self.basis_of.insert(index, j);
                false
            }
            (Match::Whole, BasisKind::Compare) => true,
            (Match::Whole, BasisKind::Link) if self.link_from_basis(index, j) => true,
            _ => self.copy_from_basis(index, j),
        }
    }

    /// rsync's quick check against a basis directory's copy.
    fn quick_same(&mut self, j: usize, rel: &[u8], x: &Existing, e: &Entry) -> bool {
        if self.opts.ignore_times || x.size != e.size {
            return false;
        }
        if self.opts.checksum {
            let Some(want) = e.checksum else {
                return false;
            };
            let Ok(f) = self.basis_dirs[j].open_basis(rel) else {
                return false;
            };
            return f.as_file().is_some_and(|f| {
                file_checksum(ReadAt { file: f, pos: 0 }).is_ok_and(|c| c == want)
            });
        }
        self.opts.size_only || (x.mtime == e.mtime && x.mtime_nsec == e.mtime_nsec)
    }

    /// rsync's `unchanged_attrs`: the attributes this transfer keeps (the
    /// mtime too: with `-c` or `--size-only` the quick check passes without it).
    fn attrs_same(&self, index: u32, x: &Existing) -> bool {
        let l = &self.entries[index as usize];
        let meta = self.meta_for(index, true);
        (!self.opts.perms || meta.mode.is_none_or(|m| m == x.mode))
            && (!self.opts.times || (x.mtime, x.mtime_nsec) == l.mtime)
            && (!(self.is_root && self.opts.owner) || x.uid == l.uid)
            && (!(self.is_root && self.opts.group) || x.gid == l.gid)
    }

    /// Hard-links basis directory `j`'s copy at the destination; `false`
    /// when that cannot be done (another filesystem): it is copied instead.
    fn link_from_basis(&mut self, index: u32, j: usize) -> bool {
        let (rel, size) = {
            let l = &self.entries[index as usize];
            (l.rel.clone(), l.size)
        };
        if !self.opts.dry_run {
            let Some(dest) = self.dest.get() else {
                return false;
            };
            if dest
                .hardlink_from(&mut self.basis_dirs[j], &rel, &rel)
                .is_err()
            {
                return false;
            }
            self.touched = true;
        }
        self.settle_from_basis(index, size);
        true
    }

    /// Copies basis directory `j`'s copy to the destination, with the listed
    /// attributes; `true` once done (or failed and reported).
    fn copy_from_basis(&mut self, index: u32, j: usize) -> bool {
        let (rel, name, size) = {
            let l = &self.entries[index as usize];
            (l.rel.clone(), l.name.clone(), l.size)
        };
        self.summary.transferred += 1;
        self.emit(Report::Updated {
            name: name.clone(),
            size,
            detail: Vec::new(),
        });
        if self.opts.dry_run {
            self.settle_from_basis(index, size);
            return true;
        }
        let meta = self.meta_for(index, true);
        let how = TempHow {
            partial: false,
            sparse: self.opts.sparse,
            unnamed: true,
            in_place: false,
        };
        let publish = PublishHow {
            fsync: self.opts.fsync,
            backup: None,
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            let from = self.basis_dirs[j].open_basis(&rel)?;
            let dest = self.dest.open();
            let mut temp = dest.create_temp(&rel, how)?;
            let mut at = 0u64;
            let copied = loop {
                let n = match from.read_at(&mut buf, at) {
                    Ok(n) => n,
                    Err(e) => break Err(e),
                };
                if n == 0 {
                    break Ok(());
                }
                if let Err(e) = temp.append_from(&from, at, &buf[..n]) {
                    break Err(e);
                }
                at += n as u64;
            };
            match copied {
                Ok(()) => dest.publish(temp, &rel, &meta, publish),
                Err(e) => {
                    dest.discard(temp);
                    Err(e)
                }
            }
        })();
        self.buf = buf;
        match result {
            Ok(()) => {
                self.touched = true;
                self.settle_from_basis(index, size);
            }
            Err(err) => {
                let shown = self.dest.open_ref().show(&rel);
                self.file_failed(&name, FileError::new(shown, FileOp::Write, err));
            }
        }
        true
    }

    /// A symlink missing at the destination, the same in a basis directory:
    /// `--link-dest` links it, `--compare-dest` leaves it out (`true`: done).
    pub(super) fn symlink_from_basis(&mut self, index: u32, target: &[u8]) -> bool {
        let kind = self.opts.dest_side.basis_kind;
        if self.basis_dirs.is_empty() || kind == BasisKind::Copy {
            return false;
        }
        let rel = self.entries[index as usize].rel.clone();
        let Some(j) = (0..self.basis_dirs.len()).find(|&j| {
            let d = &mut self.basis_dirs[j];
            matches!(d.stat(&rel), Ok(Some(x)) if x.kind == ExistingKind::Symlink)
                && d.readlink(&rel).ok().as_deref() == Some(target)
        }) else {
            return false;
        };
        if kind == BasisKind::Compare {
            return true;
        }
        self.link_from_basis(index, j)
    }

    /// Entry `index` is at the destination as listed, without data sent.
    fn settle_from_basis(&mut self, index: u32, size: u64) {
        self.bytes_done += size;
        self.entries[index as usize].done = true;
        self.settled(index);
    }
}
