//! Per-entry decisions, rsync's generator: the quick check (or `-c`), what
//! stands in the way, directories and symlinks made at once, files queued to
//! be asked for, and the metadata each entry gets. Not for file data: that
//! arrives later (see [`super::publish`], [`super::rebuild`]).

use super::index::ReadAt;
use super::intake::Accepted;
use super::{listed, Hard, Receiver};
use crate::check::file_checksum;
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::names::{escape, split_parent};
use crate::proto::{Entry, Kind, LinkPolicy, Report, MUNGE_PREFIX};
use crate::store::destination::{Destination, Existing, ExistingKind, Meta, MetaOf};

pub(super) use crate::fs::names::link_stays_inside;

impl<D: Destination> Receiver<'_, D> {
    pub(super) fn entry(&mut self, mut e: Entry) -> Result<(), TransferError> {
        if let Some(c) = &self.chmod {
            if e.kind != Kind::Symlink {
                e.mode = c.apply(e.mode, e.kind == Kind::Dir);
            }
        }
        if let Some(c) = self.chown {
            e.uid = c.uid.unwrap_or(e.uid);
            e.gid = c.gid.unwrap_or(e.gid);
        }
        if let Some(ls) = self.list_start.take() {
            // the destination is created only once there is something to put in it
            self.start(ls)?;
        }
        let entries = &self.entries;
        let marks = self.opts.link_marks;
        let is_earlier_file = |j: u32| {
            entries
                .get(j as usize)
                .is_some_and(|t| t.kind == Kind::File && (!marks || t.hard == Hard::First))
        };
        let Accepted { index, rel } = self.intake.accept(&e, is_earlier_file)?;
        if self.intake.names_by_destination() {
            // (from here on the name is only ever shown)
            e.name.clone_from(&rel);
        }
        // (the intake counts what the listing holds)
        debug_assert_eq!(self.entries.is_empty(), index == 0);
        self.summary.files += 1;
        if e.kind == Kind::File {
            self.summary.total_size += e.size;
        }
        let existing = match self.dest.get() {
            Some(_) if self.made_dirs.contains(split_parent(&rel).0) => None,
            Some(d) => match d.stat(&rel) {
                Ok(x) => x,
                // --existing: below a directory it did not make, nothing exists
                Err(err) if self.opts.existing && err.kind() == std::io::ErrorKind::NotFound => {
                    None
                }
                Err(err) => {
                    self.entries.push(listed(&e, index, rel, true));
                    self.file_failed(&e.name, FileError::new(escape(&e.name), FileOp::Stat, err));
                    return Ok(());
                }
            },
            None => None,
        };
        self.entries
            .push(listed(&e, index, rel.clone(), existing.is_none()));
        // without -p a file that is replaced keeps its permissions (rsync)
        if let Some(x) = existing.filter(|x| !self.opts.perms && x.kind == ExistingKind::File) {
            self.entries[index as usize].mode = x.mode;
        }
        self.note_item(index, existing.as_ref());
        if self.root_created && rel == b"." {
            // made by this run just before its entry came
            self.entries[index as usize].item |= crate::proto::item::Item::NEW;
        }
        match e.kind {
            Kind::Dir => self.entry_dir(index, &e, existing.map(|x| x.kind)),
            Kind::Symlink => self.entry_symlink(index, &e, existing.map(|x| x.kind)),
            Kind::File => {
                if let Some(j) = e.link_to.filter(|&j| j != index) {
                    self.hardlinks.push((index, j));
                    return Ok(());
                }
                self.entry_file(index, &e, existing)
            }
        }
    }

    /// Removes what stands where an entry of another kind must go. A non-empty
    /// directory only goes with `--delete`.
    pub(super) fn clear_way(&mut self, index: u32, kind: ExistingKind) -> bool {
        let (rel, name) = {
            let l = &self.entries[index as usize];
            (l.rel.clone(), l.name.clone())
        };
        if self.opts.dry_run {
            return true;
        }
        let Some(dest) = self.dest.get() else {
            return true;
        };
        let non_empty_dir =
            kind == ExistingKind::Dir && dest.list(&rel).map(|l| !l.is_empty()).unwrap_or(true);
        if non_empty_dir && !self.opts.delete {
            self.file_error(
                &name,
                "cannot replace a non-empty directory (use --delete)".into(),
            );
            return false;
        }
        match dest.remove(&rel, None) {
            Ok(()) => {
                self.entries[index as usize].is_new = true;
                true
            }
            Err(err) => {
                self.file_failed(&name, FileError::new(escape(&name), FileOp::ClearWay, err));
                false
            }
        }
    }

    pub(super) fn entry_dir(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<ExistingKind>,
    ) -> Result<(), TransferError> {
        let rel = self.entries[index as usize].rel.clone();
        if self.opts.existing && existing.is_none() && rel != b"." {
            return Ok(()); // --existing makes nothing new
        }
        self.dirs.push(index);
        match existing {
            Some(ExistingKind::Dir) => {
                self.reached_dest_dir(&rel);
                self.emit_attrs(index, self.opts.times);
                return Ok(());
            }
            Some(k) if !self.clear_way(index, k) => return Ok(()),
            _ => {}
        }
        self.summary.transferred += 1;
        // shown as rsync shows directories: with a trailing slash
        let mut shown = e.name.clone();
        shown.push(b'/');
        self.emit_update(index, shown, 0, Vec::new(), 0, None);
        if self.opts.dry_run || rel == b"." {
            return Ok(());
        }
        let dest = self.dest.open();
        match dest.mkdir(&rel, 0o700) {
            Ok(()) => {
                self.made_dirs.insert(rel);
            }
            Err(err) => {
                let shown = dest.show(&rel);
                self.file_failed(&e.name, FileError::new(shown, FileOp::Mkdir, err));
            }
        }
        Ok(())
    }

    pub(super) fn entry_symlink(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<ExistingKind>,
    ) -> Result<(), TransferError> {
        let rel = self.entries[index as usize].rel.clone();
        if (self.opts.existing && existing.is_none())
            || (self.opts.ignore_existing && existing.is_some())
        {
            return Ok(());
        }
        // whatever the policy, the link is made with symlinkat beneath the
        // destination handle and nothing later resolves a path through it
        let target = match self.opts.symlinks {
            LinkPolicy::Verbatim => e.target.clone(),
            LinkPolicy::Munge => [MUNGE_PREFIX, &e.target].concat(),
            LinkPolicy::Safe if link_stays_inside(&rel, &e.target) => e.target.clone(),
            LinkPolicy::Safe => {
                self.emit(Report::Notice {
                    name: e.name.clone(),
                    text: format!(
                        "skipping symlink {} -> {}: it points outside the destination",
                        escape(&e.name),
                        escape(&e.target)
                    )
                    .into_bytes(),
                });
                return Ok(());
            }
        };
        if existing == Some(ExistingKind::Symlink) {
            if let Some(dest) = self.dest.get() {
                if dest.readlink(&rel).ok().as_deref() == Some(target.as_slice()) {
                    self.entries[index as usize].done = true;
                    self.settled(index);
                    return Ok(());
                }
            }
        }
        if existing.is_none() && self.symlink_from_basis(index, &target) {
            return Ok(());
        }
        if let Some(k) = existing {
            if k == ExistingKind::Dir && !self.clear_way(index, k) {
                return Ok(());
            }
        }
        self.summary.transferred += 1;
        // an existing link pointing elsewhere: its target changes (`c`)
        let changed = match existing {
            Some(ExistingKind::Symlink) => crate::proto::item::Item::CHANGED,
            _ => 0,
        };
        let detail = format!("-> {}", escape(&target)).into_bytes();
        self.emit_update(index, e.name.clone(), 0, detail, changed, None);
        if self.opts.dry_run {
            return Ok(());
        }
        let meta = self.meta_for(index, false);
        let dest = self.dest.open();
        let result = dest
            .symlink(&rel, &target)
            .and_then(|_| dest.set_meta(&rel, MetaOf::Link, &Meta { mode: None, ..meta }));
        match result {
            Ok(()) => self.settled(index),
            Err(err) => {
                let shown = dest.show(&rel);
                self.file_failed(&e.name, FileError::new(shown, FileOp::Symlink, err));
            }
        }
        Ok(())
    }

    pub(super) fn entry_file(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<Existing>,
    ) -> Result<(), TransferError> {
        let rel = self.entries[index as usize].rel.clone();
        let too_large = self.opts.max_size.is_some_and(|max| e.size > max);
        let too_small = self.opts.min_size.is_some_and(|min| e.size < min);
        if too_large || too_small || (self.opts.existing && existing.is_none()) {
            return Ok(()); // not transferred (and not deleted: it is listed)
        }
        if self.opts.ignore_existing && existing.is_some() {
            self.entries[index as usize].done =
                existing.is_some_and(|x| x.kind == ExistingKind::File);
            return Ok(());
        }
        if let Some(x) = existing {
            match x.kind {
                ExistingKind::File => {
                    if self.opts.update && x.mtime > e.mtime {
                        self.entries[index as usize].done = true;
                        return Ok(());
                    }
                    // the quick check compares mtimes to the nanosecond: a file
                    // rewritten within the same second as the copy was made is
                    // still seen as changed (rsync compares whole seconds)
                    let same = if self.opts.ignore_times {
                        false
                    } else if self.opts.checksum {
                        x.size == e.size && self.same_checksum(&rel, e.checksum)
                    } else if self.opts.size_only {
                        x.size == e.size
                    } else {
                        x.size == e.size && x.mtime == e.mtime && x.mtime_nsec == e.mtime_nsec
                    };
                    if same {
                        self.bytes_done += e.size;
                        self.entries[index as usize].done = true;
                        self.settled(index);
                        let content_only = self.opts.checksum || self.opts.size_only;
                        self.emit_attrs(index, self.opts.times && content_only);
                        self.refresh_meta(index, x);
                        return Ok(());
                    }
                }
                k => {
                    if !self.clear_way(index, k) {
                        return Ok(());
                    }
                }
            }
        }
        if existing.is_none() && self.try_basis_dirs(index, e) {
            return Ok(());
        }
        if self.opts.dry_run {
            self.summary.transferred += 1;
            let sent = crate::proto::item::Item::SENT;
            self.emit_update(index, e.name.clone(), e.size, Vec::new(), sent, None);
            return Ok(());
        }
        self.queue.push_back(index);
        Ok(())
    }

    pub(super) fn same_checksum(&mut self, rel: &[u8], want: Option<[u8; 32]>) -> bool {
        let (Some(want), Some(dest)) = (want, self.dest.get()) else {
            return false;
        };
        let Ok(f) = dest.open_basis(rel) else {
            return false;
        };
        file_checksum(ReadAt { file: &f, pos: 0 }).is_ok_and(|c| c == want)
    }

    /// An up-to-date file may still need its permissions or owner fixed.
    pub(super) fn refresh_meta(&mut self, index: u32, x: Existing) {
        let l = &self.entries[index as usize];
        let mut m = Meta::default();
        if self.opts.perms && x.mode != l.mode {
            m.mode = Some(l.mode);
        }
        let content_only = self.opts.checksum || self.opts.size_only;
        if self.opts.times && content_only && x.mtime != l.mtime.0 {
            m.mtime = Some(l.mtime);
        }
        if self.is_root && self.opts.owner && x.uid != l.uid {
            m.uid = Some(l.uid);
        }
        if self.is_root && self.opts.group && x.gid != l.gid {
            m.gid = Some(l.gid);
        }
        if m.mode.is_none() && m.mtime.is_none() && m.uid.is_none() && m.gid.is_none() {
            return;
        }
        if self.opts.dry_run {
            return;
        }
        let (rel, name) = (l.rel.clone(), l.name.clone());
        self.touched = true;
        if self.swap.is_some() {
            // --atomic: the file is a hard link into the old tree, which must
            // not change: a copy of its own gets the new metadata
            let mut whole = m;
            whole.mode = m.mode.or(Some(x.mode));
            whole.mtime = m.mtime.or(Some((x.mtime, x.mtime_nsec)));
            if let Err(err) = self.unshare(&rel, &whole) {
                self.file_failed(&name, FileError::new(escape(&name), FileOp::Metadata, err));
            }
            return;
        }
        if let Some(dest) = self.dest.get() {
            if let Err(err) = dest.set_meta(&rel, MetaOf::File, &m) {
                self.file_failed(&name, FileError::new(escape(&name), FileOp::Metadata, err));
            }
        }
    }

    /// `--atomic`: replaces the file at `rel` (a hard link into the old tree)
    /// with a copy of its own bearing `meta` (shared blocks where the store
    /// can), leaving the old tree's file as it is.
    fn unshare(&mut self, rel: &[u8], meta: &Meta) -> std::io::Result<()> {
        use crate::store::destination::{BasisFile, PublishHow, TempHow, TempWrite};
        let dest = self.dest.open();
        let from = dest.open_basis(rel)?;
        let len = from.len()?;
        let mut temp = dest.create_temp(rel, TempHow::default())?;
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            let copied = from
                .read_exact_at(&mut buf[..n], at)
                .and_then(|()| temp.append_from(&from, at, &buf[..n]));
            if let Err(e) = copied {
                dest.discard(temp);
                return Err(e);
            }
            at += n as u64;
        }
        let how = PublishHow {
            fsync: self.opts.fsync,
            backup: None,
        };
        dest.publish(temp, rel, meta, how)
    }

    /// The metadata to give entry `index` (a file, link or directory).
    pub(super) fn meta_for(&self, index: u32, is_new: bool) -> Meta {
        let l = &self.entries[index as usize];
        let mode = if self.opts.perms {
            Some(l.mode)
        } else if is_new || l.is_new {
            Some(l.mode & !crate::fs::umask())
        } else {
            None
        };
        // in a daemon module nothing becomes setuid or setgid
        let mode = mode.map(|m| {
            if self.beneath.is_some() {
                m & !0o6000
            } else {
                m
            }
        });
        Meta {
            mode,
            mtime: self.opts.times.then_some(l.mtime),
            uid: (self.is_root && self.opts.owner).then_some(l.uid),
            gid: (self.is_root && self.opts.group).then_some(l.gid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::link_stays_inside;

    #[test]
    fn symlink_containment() {
        assert!(link_stays_inside(b"a", b"b"));
        assert!(link_stays_inside(b"d/a", b"../b"));
        assert!(!link_stays_inside(b"a", b"../b"));
        assert!(!link_stays_inside(b"d/a", b"../../b"));
        assert!(!link_stays_inside(b"d/a", b"x/../../../b"));
        assert!(!link_stays_inside(b"a", b"/etc/passwd"));
        assert!(link_stays_inside(b"d/e/a", b"../x/./y"));
    }
}
