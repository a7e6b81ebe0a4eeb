//! What the receiver tells a requester that itemizes (`-i`, `--out-format`,
//! `--log-file`, `--json`; [`crate::proto::Options::itemize`]): for each
//! entry, what differs from what stood at the destination (new, size, time,
//! permissions, owner, group, link target), entries whose attributes alone
//! changed, each file's bytes on the wire and check value, and every entry
//! of a deleted directory. Without itemizing, the plain `Updated` events
//! go out as they always have. Not for deciding what to transfer: that is
//! the generator's ([`super::generator`]).

use super::Receiver;
use crate::proto::item::Item;
use crate::proto::{Kind, Report};
use crate::store::destination::{Destination, Existing, ExistingKind};

/// How a published file was checked: the [`Item`] bit naming the kind of
/// check value, and the value.
pub(super) type Checked = (u32, [u8; 32]);

impl<D: Destination> Receiver<'_, D> {
    /// Works out entry `index`'s change bits against `existing` (what was
    /// at its path), for the events that report it later.
    pub(super) fn note_item(&mut self, index: u32, existing: Option<&Existing>) {
        if !self.opts.itemize {
            return;
        }
        let (perms, times, owner, group) = (
            self.opts.perms,
            self.opts.times,
            self.is_root && self.opts.owner,
            self.is_root && self.opts.group,
        );
        let l = &mut self.entries[index as usize];
        let mut bits = match l.kind {
            Kind::Dir => Item::DIR,
            Kind::Symlink => Item::SYMLINK,
            Kind::File => 0,
        };
        let same_kind = |x: &Existing| {
            matches!(
                (x.kind, l.kind),
                (ExistingKind::File, Kind::File)
                    | (ExistingKind::Dir, Kind::Dir)
                    | (ExistingKind::Symlink, Kind::Symlink)
            )
        };
        match existing {
            Some(x) if same_kind(x) => {
                if l.kind == Kind::File && x.size != l.size {
                    bits |= Item::SIZE;
                }
                // a file's time is shown as changed when it will be (`T`
                // without -t: a rewritten file gets the time of the copy)
                let time_differs = (x.mtime, x.mtime_nsec) != l.mtime;
                if time_differs && (l.kind == Kind::File || (times && l.kind == Kind::Dir)) {
                    bits |= Item::TIME;
                }
                // a link whose target changes is made again with the
                // source's time: shown as rsync shows it, when the whole
                // seconds differ (a link left in place keeps its time)
                if times && l.kind == Kind::Symlink && x.mtime != l.mtime.0 {
                    bits |= Item::TIME;
                }
                if l.kind != Kind::Symlink {
                    if perms && x.mode & 0o7777 != l.mode & 0o7777 {
                        bits |= Item::PERMS;
                    }
                    if owner && x.uid != l.uid {
                        bits |= Item::OWNER;
                    }
                    if group && x.gid != l.gid {
                        bits |= Item::GROUP;
                    }
                }
            }
            _ => bits |= Item::NEW,
        }
        l.item = bits;
    }

    /// Reports entry `index` as created or updated (shown as `shown`): an
    /// `Itemized` event to a requester that itemizes, else `Updated`.
    /// `more` adds bits ([`Item::SENT`], [`Item::HARDLINK`], …); `checked`
    /// is a published file's check value.
    pub(super) fn emit_update(
        &mut self,
        index: u32,
        shown: Vec<u8>,
        size: u64,
        detail: Vec<u8>,
        more: u32,
        checked: Option<Checked>,
    ) {
        if !self.opts.itemize {
            self.emit(Report::Updated {
                name: shown,
                size,
                detail,
            });
            return;
        }
        let l = &self.entries[index as usize];
        let mut bits = l.item | Item::UPDATED | more;
        if l.is_new {
            bits |= Item::NEW;
        }
        if bits & Item::NEW == 0
            && bits & Item::SENT != 0
            && self.opts.checksum
            && l.kind == Kind::File
        {
            // (with -c a file is sent only when its checksum differs)
            bits |= Item::CHANGED;
        }
        let check = checked.map(|(kind, value)| {
            bits |= Item::CHECK | kind;
            value
        });
        let wire = self.wire.remove(&index).unwrap_or(0);
        let mtime = l.mtime.0;
        self.emit(Report::Itemized {
            name: shown,
            size,
            item: Item(bits),
            wire,
            mtime,
            check,
            detail,
        });
    }

    /// Reports entry `index`, left in place, whose attributes are changed
    /// (itemizing only; nothing when none differs). `times`: the time is
    /// set too.
    pub(super) fn emit_attrs(&mut self, index: u32, times: bool) {
        if !self.opts.itemize {
            return;
        }
        let l = &self.entries[index as usize];
        let mut attrs = Item::PERMS | Item::OWNER | Item::GROUP;
        if times {
            attrs |= Item::TIME;
        }
        // the destination directory this run made: new, and nothing else
        let made_root = l.item & Item::NEW != 0 && l.kind == Kind::Dir;
        if !made_root && (l.item & attrs == 0 || l.item & Item::NEW != 0) {
            return;
        }
        let mut shown = l.name.clone();
        if l.kind == Kind::Dir {
            shown.push(b'/');
        }
        let kept = if made_root { Item::NEW } else { attrs };
        let bits = (l.item & kept) | (l.item & (Item::DIR | Item::SYMLINK));
        self.emit(Report::Itemized {
            name: shown,
            size: if l.kind == Kind::File { l.size } else { 0 },
            item: Item(bits),
            wire: 0,
            mtime: l.mtime.0,
            check: None,
            detail: Vec::new(),
        });
    }

    /// Counts file data that came over the wire for `file` (itemizing only).
    pub(super) fn count_wire(&mut self, file: u32, bytes: usize) {
        if self.opts.itemize {
            *self.wire.entry(file).or_default() += bytes as u64;
        }
    }

    /// Before an extraneous directory `rel` (shown as `shown`) is deleted:
    /// each entry in it, deepest first, as rsync lists them (itemizing only).
    pub(super) fn emit_deleted_contents(&mut self, rel: &[u8], shown: &[u8]) {
        if !self.opts.itemize {
            return;
        }
        let mut found = Vec::new();
        let mut stack = vec![(rel.to_vec(), shown.to_vec())];
        // bounded by what the directory holds; each directory is listed once
        while let Some((dir, name)) = stack.pop() {
            let Some(dest) = self.dest.get() else {
                return;
            };
            let Ok(children) = dest.list(&dir) else {
                continue;
            };
            for (child, is_dir) in children {
                let crel = crate::fs::names::join(&dir, &child);
                let cname = crate::fs::names::join(&name, &child);
                if is_dir {
                    stack.push((crel, cname.clone()));
                }
                found.push((cname, is_dir));
            }
        }
        // deepest first: a directory after what is in it
        found.sort_by(|a, b| b.0.cmp(&a.0));
        for (name, is_dir) in found {
            self.emit(Report::Deleted { name, is_dir });
        }
    }
}
