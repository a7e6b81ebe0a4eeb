//! The sender's side of the filesystem: turns source paths into file list entries,
//! in a stable pre-order (a directory before its contents, names sorted bytewise),
//! streaming them out as it walks so that memory does not grow with the tree.
//!
//! Naming follows rsync: `dir/` sends the contents of `dir` (its root entry is
//! `.`), `dir` sends the directory itself (names start with `dir/`), a file is
//! sent under its own name.

use crate::fs::dir_stack::{names_in, same_dir, DirStack};
use crate::fs::names::{escape, join, link_stays_inside};
use crate::proto::{Entry, Kind, ListStart};
use crate::store::source::Listed;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What to scan: the store seam's list options.
pub use crate::store::source::ListOptions as ScanOptions;

/// What the walk produces, in order: an entry comes with where it is on
/// disk and which file the walk found there.
pub type ScanItem = Listed<OnDisk>;

/// Where a listed entry is on this host, and which file the walk stated
/// there: what the sender opens it by, and then checks that it opened.
///
/// # Memory
/// 40 bytes (the path boxed, without spare capacity), 16 more than the bare
/// path: the sender holds these only for the files listed and not yet asked
/// for ([`crate::proto::LIST_AHEAD`] at most beyond what the receiver took
/// in) and, with `--remove-source-files`, for each file until it is settled;
/// with `--delete-before`, for every file until the list ends (16 MB more
/// per million files).
#[derive(Clone, Debug)]
pub struct OnDisk {
    /// Its local path.
    pub path: Box<Path>,
    /// Device and inode of what the walk stated: the file itself, or what
    /// a symlink the walk followed pointed to.
    pub id: (u64, u64),
    /// The walk followed a symlink to it (`-L`, `--copy-unsafe-links`, a
    /// source named through a link): it is opened following links, and
    /// must still lead to `id`. Otherwise no symlink at its name is followed.
    pub followed: bool,
}

impl OnDisk {
    fn new(path: &Path, meta: &Meta, followed: bool) -> OnDisk {
        OnDisk {
            path: path.into(),
            id: (meta.dev(), meta.ino()),
            followed,
        }
    }
}

/// How a source path is named in the list.
struct Root {
    path: PathBuf,
    /// The list name of the root: `.` for "contents of", else its basename.
    name: Vec<u8>,
    /// Trailing slash: follow a symlinked root and send its contents.
    contents: bool,
    /// With `-R`: the directory the names are relative to (`name` is then
    /// the path below it, and each of its directories is sent too).
    base: Option<PathBuf>,
}

impl Root {
    /// Where entry `name` of this root would be on disk.
    fn path_of(&self, name: &[u8]) -> Option<PathBuf> {
        if let Some(base) = &self.base {
            return Some(base.join(OsStr::from_bytes(name)));
        }
        if self.contents {
            return Some(match name {
                b"." => self.path.clone(),
                _ => self.path.join(OsStr::from_bytes(name)),
            });
        }
        let top = name.split(|&b| b == b'/').next().unwrap_or(name);
        if top != self.name.as_slice() {
            return None;
        }
        let parent = self.path.parent().unwrap_or(Path::new("."));
        Some(parent.join(OsStr::from_bytes(name)))
    }
}

/// `-R`: the source's name is its path, from after a `/./` if it has one, else
/// without its leading `/`; `.` components and trailing slashes are dropped.
fn relative_root(src: &[u8]) -> Root {
    let (base, rel): (&[u8], &[u8]) = match src.windows(3).position(|w| w == b"/./") {
        Some(i) => (&src[..i + 1], &src[i + 3..]),
        None if src.starts_with(b"/") => (b"/", src),
        None => (b"", src),
    };
    let parts: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let name = if parts.is_empty() {
        b".".to_vec()
    } else {
        parts.join(&b'/')
    };
    let base = if base.is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(OsStr::from_bytes(base))
    };
    Root {
        path: base.join(OsStr::from_bytes(&name)),
        contents: name == b".",
        name,
        base: Some(base),
    }
}

/// `path` relative to `top` (`.` for `top` itself, with `-R`'s `./` marker
/// dropped), or as it is without a `top` or outside it.
pub(crate) fn shown_within<'p>(top: Option<&Path>, path: &'p [u8]) -> &'p [u8] {
    let Some(top) = top else { return path };
    let top = top.as_os_str().as_bytes();
    let top = top.strip_suffix(b"/").unwrap_or(top);
    let Some(rest) = path.strip_prefix(top) else {
        return path;
    };
    if !rest.is_empty() && !rest.starts_with(b"/") {
        return path;
    }
    let mut rest = rest;
    while let Some(r) = rest.strip_prefix(b"/").or_else(|| rest.strip_prefix(b"./")) {
        rest = r;
    }
    if rest.is_empty() || rest == b"." {
        b"."
    } else {
        rest
    }
}

fn root_for(src: &[u8], opts: &ScanOptions) -> Root {
    if opts.relative {
        relative_root(src)
    } else {
        root_of(src)
    }
}

fn root_of(src: &[u8]) -> Root {
    let path = PathBuf::from(OsStr::from_bytes(src));
    let trimmed: &[u8] = {
        let mut s = src;
        while s.len() > 1 && s.ends_with(b"/") {
            s = &s[..s.len() - 1];
        }
        s
    };
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let contents =
        src.ends_with(b"/") || base == b"." || base == b".." || trimmed == b"/" || base.is_empty();
    Root {
        path,
        name: if contents {
            b".".to_vec()
        } else {
            base.to_vec()
        },
        contents,
        base: None,
    }
}

/// Whether a source root is stated through a symlink there.
fn follows_root(root: &Root, opts: &ScanOptions) -> bool {
    root.contents || opts.follow_links || !opts.links
}

fn stat_root(root: &Root, opts: &ScanOptions) -> std::io::Result<std::fs::Metadata> {
    if follows_root(root, opts) {
        std::fs::metadata(&root.path)
    } else {
        std::fs::symlink_metadata(&root.path)
    }
}

/// Looks at the sources (not their contents) to tell the receiver how to name
/// the destination.
pub fn list_start(sources: &[Vec<u8>], opts: &ScanOptions) -> ListStart {
    if sources.len() != 1 || opts.relative {
        return ListStart {
            single_file: false,
            single_dir: false,
        };
    }
    let root = root_of(&sources[0]);
    let is_dir = stat_root(&root, opts).map(|m| m.is_dir()).unwrap_or(false);
    ListStart {
        single_file: !is_dir,
        single_dir: is_dir && !root.contents && opts.recursive,
    }
}

struct Walker<'a, E> {
    opts: &'a ScanOptions,
    emit: &'a mut dyn FnMut(ScanItem) -> Result<(), E>,
    next_index: u32,
    inodes: HashMap<(u64, u64), u32>,
    io_error: bool,
    /// The directories the walk is in, from the source root down to the
    /// one whose entries it is visiting (so its depth below the root, and
    /// the directories that make a loop through a followed symlink), their
    /// handles bounded (see [`DirStack`]).
    levels: DirStack<Level>,
    /// With several sources: each name listed so far, and whether it is a
    /// directory. As in rsync, the first source to list a name wins; a
    /// directory listed again merges the later source's entries into it.
    seen: Option<HashMap<Vec<u8>, bool>>,
    /// With several sources: each root, and which one is being walked.
    roots: Vec<Root>,
    current: usize,
    /// The device of the root being walked (for `-x`).
    root_dev: u64,
    /// The rules of the per-directory merge files (`dir-merge`) read in the
    /// directories being walked, outermost first.
    layers: Vec<crate::filter::DirRules>,
    /// The highest directory whose merge files a `: /NAME` rule reads (a
    /// daemon module's root; `/` otherwise).
    top: Option<PathBuf>,
    /// `top`, opened: merge files are read beneath it.
    top_fd: Option<OwnedFd>,
}

/// Walks every source, calling `emit` for each item. Returns whether any I/O
/// error occurred (which must stop `--delete` on the receiver).
pub fn scan<E>(
    sources: &[Vec<u8>],
    opts: &ScanOptions,
    emit: &mut dyn FnMut(ScanItem) -> Result<(), E>,
) -> Result<bool, E> {
    scan_within(sources, opts, None, emit)
}

/// [`scan`] for a sender confined to `top` (a daemon module's root): a
/// `: /NAME` rule reads no merge file above it.
pub fn scan_within<E>(
    sources: &[Vec<u8>],
    opts: &ScanOptions,
    top: Option<&Path>,
    emit: &mut dyn FnMut(ScanItem) -> Result<(), E>,
) -> Result<bool, E> {
    let mut w = Walker {
        top: top.map(Path::to_path_buf),
        top_fd: top.and_then(|t| crate::fs::source::open_dir(t).ok()),
        opts,
        emit,
        next_index: 0,
        inodes: HashMap::new(),
        io_error: false,
        levels: DirStack::new("the scan"),
        seen: (sources.len() > 1 || opts.relative).then(HashMap::new),
        roots: if sources.len() > 1 {
            sources.iter().map(|s| root_for(s, opts)).collect()
        } else {
            Vec::new()
        },
        current: 0,
        root_dev: 0,
        layers: Vec::new(),
    };
    // with several sources, the destination's own entry (`.`) comes first,
    // from the first source that sends its contents, whatever comes before it
    if let Some(root) = w.roots.iter().find(|r| r.contents) {
        if let Ok(meta) = stat_root(root, opts) {
            if meta.is_dir() && (opts.recursive || opts.dirs) {
                let meta = Meta::from(&meta);
                let at = OnDisk::new(&root.path, &meta, true);
                let entry = entry_of(b".", &meta);
                w.push(
                    Entry {
                        kind: Kind::Dir,
                        ..entry
                    },
                    at,
                )?;
            }
        }
    }
    for (i, src) in sources.iter().enumerate() {
        w.current = i;
        let root = root_for(src, opts);
        if let Some(why) = w.link_on_the_way(&root) {
            w.io_error = true;
            let shown = w.shown(src);
            (w.emit)(ScanItem::Error(format!(
                "cannot read source {shown}: {why}"
            )))?;
            continue;
        }
        match stat_root(&root, opts) {
            Ok(meta) => {
                let is_dir = meta.is_dir();
                if is_dir && !opts.recursive && !opts.dirs && opts.cp_mode {
                    // scp: "ckpt: not a regular file", an error (rsync: a notice)
                    w.io_error = true;
                    (w.emit)(ScanItem::Error(format!(
                        "skipping directory {}: not a regular file (use -r)",
                        escape(src)
                    )))?;
                    continue;
                }
                if is_dir && !opts.recursive && !opts.dirs {
                    (w.emit)(ScanItem::Notice(format!(
                        "skipping directory {} (use -r)",
                        escape(src)
                    )))?;
                    continue;
                }
                w.implied_dirs(&root)?;
                let name = root.name.clone();
                w.levels.clear();
                // (a source named through a symlink stated what it leads to)
                let followed = follows_root(&root, opts)
                    && std::fs::symlink_metadata(&root.path).is_ok_and(|m| m.is_symlink());
                w.visit(&root.path, &name, Meta::from(&meta), followed)?;
                w.walk_levels()?;
            }
            Err(e) => {
                w.io_error = true;
                let shown = w.shown(src);
                (w.emit)(ScanItem::Error(format!(
                    "cannot read source {shown}: {}",
                    crate::error::io_text(&e)
                )))?;
            }
        }
    }
    Ok(w.io_error)
}

impl<E> Walker<'_, E> {
    /// Confined to a daemon module: why `root` cannot be walked, when a
    /// symlink on the way to it (or the root itself, sent by its contents)
    /// would be followed; the walk below the root never follows one.
    fn link_on_the_way(&self, root: &Root) -> Option<String> {
        let top = self.top.as_deref()?;
        let rel = beneath(top, &root.path)?;
        match crate::fs::source::symlink_on_the_way(top, &rel, root.contents) {
            Ok(Some((link, leaves))) => Some(crate::fs::source::symlink_refusal(&link, leaves)),
            // (what cannot be looked at is reported by the walk)
            _ => None,
        }
    }

    fn fail(&mut self, path: &Path, what: &str, e: std::io::Error) -> Result<(), E> {
        self.io_error = true;
        let shown = self.shown(path.as_os_str().as_bytes());
        (self.emit)(ScanItem::Error(format!(
            "{what} {shown}: {}",
            crate::error::io_text(&e)
        )))
    }

    /// A path as a message shows it: confined to a daemon module, relative
    /// to the module's root (the client never learns where the module lives
    /// on the server, as an rsync daemon shows only module paths).
    fn shown(&self, path: &[u8]) -> String {
        escape(shown_within(self.top.as_deref(), path))
    }

    /// Sends the entry at `path` (named `name`), stated as `meta`; a
    /// directory to walk is entered (its entries are visited by
    /// [`Self::walk_levels`], not by recursion, so a deep tree needs no deep
    /// stack). `followed`: `meta` is of what a symlink there points to,
    /// followed as the options ask.
    fn visit(&mut self, path: &Path, name: &[u8], meta: Meta, followed: bool) -> Result<(), E> {
        let ft = meta;
        let mut entry = entry_of(name, &meta);
        if ft.is_symlink() {
            if self.opts.follow_links {
                match self.stat_followed(path) {
                    Ok(m) => return self.visit(path, name, m, true),
                    Err(e) => return self.fail(path, "cannot follow symlink", e),
                }
            }
            let target = match self.read_link(path) {
                Ok(t) => t,
                Err(e) => return self.fail(path, "cannot read symlink", e),
            };
            // -k follows links to directories, --copy-unsafe-links those that
            // leave the tree; either sends what the link points to
            let unsafe_link = !link_stays_inside(name, &target);
            if self.opts.copy_unsafe_links && unsafe_link {
                match self.stat_followed(path) {
                    Ok(m) => return self.visit(path, name, m, true),
                    Err(e) => return self.fail(path, "cannot follow symlink", e),
                }
            }
            if self.opts.copy_dirlinks {
                if let Ok(m) = self.stat_followed(path) {
                    if m.is_dir() {
                        return self.visit(path, name, m, true);
                    }
                }
            }
            if !self.opts.links {
                return (self.emit)(ScanItem::Notice(format!(
                    "skipping symlink {} (use -l or -a)",
                    escape(name)
                )));
            }
            entry.target = target;
            entry.kind = Kind::Symlink;
            return self.push(entry, OnDisk::new(path, &meta, false));
        }
        let depth = self.levels.len();
        if ft.is_dir() {
            entry.kind = Kind::Dir;
            let key = (meta.dev(), meta.ino());
            if self.levels.holds(key) {
                return (self.emit)(ScanItem::Notice(format!(
                    "skipping {}: directory loop through a symlink",
                    escape(name)
                )));
            }
            match self.listed_before(name) {
                Some(true) => {} // merged into the directory listed before
                Some(false) => return Ok(()),
                None => self.push(entry, OnDisk::new(path, &meta, followed))?,
            }
            if !self.opts.recursive && depth > 0 {
                return Ok(()); // -d: the directory itself, not its contents
            }
            if !self.opts.recursive && self.opts.relative && name != b"." {
                return Ok(()); // -R -d (--files-from): a named directory, not its contents
            }
            if depth == 0 {
                self.root_dev = meta.dev();
            } else if self.opts.one_file_system && meta.dev() != self.root_dev {
                return Ok(()); // -x: a mount point is sent, not what is in it
            }
            let outer = self.layers.len();
            if depth == 0 {
                self.read_merge_files_above(path, name)?;
            }
            let entered = self.enter(path, name, key, followed, outer);
            if !matches!(entered, Ok(true)) {
                self.layers.truncate(outer);
            }
            return entered.map(|_| ());
        }
        if !ft.is_file() {
            return (self.emit)(ScanItem::Notice(format!(
                "skipping non-regular file {}",
                escape(name)
            )));
        }
        entry.size = meta.size();
        if self.listed_before(name).is_some() || self.directory_later(name) {
            return Ok(()); // before the hard-link bookkeeping counts it
        }
        if self.opts.hard_links && meta.nlink() > 1 {
            // only files with more than one link get a table entry
            let key = (meta.dev(), meta.ino());
            if let Some(&first) = self.inodes.get(&key) {
                entry.link_to = Some(first);
            } else {
                // marked as the first of its group (its own index; the
                // sender takes the mark off for a peer that does not know it)
                self.inodes.insert(key, self.next_index);
                entry.link_to = Some(self.next_index);
            }
        }
        let first_of_group = entry.link_to == Some(self.next_index);
        if self.opts.checksum && (entry.link_to.is_none() || first_of_group) {
            match self.hash_entry(path) {
                Ok(h) => entry.checksum = Some(h),
                Err(e) => return self.fail(path, "cannot read", e),
            }
        }
        self.push(entry, OnDisk::new(path, &meta, followed))
    }

    /// `-R`: each directory above the root's name, with the attributes of
    /// the directory it names at the source (rsync's implied directories).
    fn implied_dirs(&mut self, root: &Root) -> Result<(), E> {
        let Some(base) = &root.base else {
            return Ok(());
        };
        let mut name: Vec<u8> = Vec::new();
        let parts: Vec<&[u8]> = root.name.split(|&b| b == b'/').collect();
        for part in &parts[..parts.len() - 1] {
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(part);
            if self.listed_before(&name).is_some() {
                continue;
            }
            let path = base.join(OsStr::from_bytes(&name));
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    let meta = Meta::from(&meta);
                    let entry = Entry {
                        kind: Kind::Dir,
                        ..entry_of(&name, &meta)
                    };
                    self.push(entry, OnDisk::new(&path, &meta, true))?;
                }
                Ok(_) => {}
                Err(e) => return self.fail(&path, "cannot stat", e),
            }
        }
        Ok(())
    }

    /// With several sources: whether an earlier source listed `name`, and as
    /// a directory.
    fn listed_before(&self, name: &[u8]) -> Option<bool> {
        self.seen.as_ref()?.get(name).copied()
    }

    /// With several sources: whether a later source has a directory named
    /// `name` (as in rsync, a directory wins over a file or link of the same
    /// name, whichever source comes first).
    fn directory_later(&self, name: &[u8]) -> bool {
        let follow = self.opts.follow_links || self.opts.copy_dirlinks;
        self.roots.iter().skip(self.current + 1).any(|root| {
            let Some(path) = root.path_of(name) else {
                return false;
            };
            let meta = if follow {
                std::fs::metadata(&path)
            } else {
                std::fs::symlink_metadata(&path)
            };
            meta.is_ok_and(|m| m.is_dir())
        })
    }

    fn push(&mut self, entry: Entry, at: OnDisk) -> Result<(), E> {
        if let Some(seen) = &mut self.seen {
            if seen.contains_key(&entry.name) {
                return Ok(()); // the first source to list a name wins
            }
            if entry.kind != Kind::Dir && self.directory_later(&entry.name) {
                return Ok(());
            }
            let seen = self.seen.as_mut().expect("checked above");
            seen.insert(entry.name.clone(), entry.kind == Kind::Dir);
        }
        self.next_index += 1;
        (self.emit)(ScanItem::Entry(entry, at))
    }

    /// Opens the directory at `path` (named `name`, stated as `key`), reads
    /// its names and merge files, and makes it the level whose entries the
    /// walk visits next; whether it did (what could not be read is
    /// reported). `outer`: the merge-file layers in force above it.
    fn enter(
        &mut self,
        path: &Path,
        name: &[u8],
        key: (u64, u64),
        followed: bool,
        outer: usize,
    ) -> Result<bool, E> {
        scan_pause_hook(name);
        let fd = match self.open_dir(path, key, followed) {
            Ok(fd) => fd,
            Err(e) => {
                self.fail(path, "cannot read directory", e)?;
                return Ok(false);
            }
        };
        let mut children = match names_in(&fd) {
            Ok(names) => names,
            Err(e) => {
                self.fail(path, "cannot read directory", e)?;
                return Ok(false);
            }
        };
        children.sort();
        self.read_merge_files(&fd, path, name)?;
        // (below the held depth, the parent's handle is let go while the
        // walk is in here, and opened again if it needs it on its way back)
        let comp = path.file_name().map(|c| c.as_bytes().to_vec());
        let level = Level {
            path: path.to_path_buf(),
            name: name.to_vec(),
            children: children.into_iter(),
            layers: outer,
        };
        let comp = comp.unwrap_or_default();
        self.levels.push(fd, &comp, key, followed, level);
        Ok(true)
    }

    /// Visits the entries of the directories entered, depth first, until
    /// the walk is back above the source root: each entry is stated from
    /// its directory's handle, never through a symlink.
    fn walk_levels(&mut self) -> Result<(), E> {
        while let Some(level) = self.levels.top_mut() {
            let Some(child) = level.children.next() else {
                let (done, _) = self.levels.pop().expect("a level is there");
                self.layers.truncate(done.layers);
                continue;
            };
            if child == crate::fs::PARTIAL_DIR {
                continue;
            }
            let child_name = join(&level.name, &child);
            let child_path = level.path.join(OsStr::from_bytes(&child));
            let dir = match self.held_dir() {
                Ok(dir) => dir,
                Err(e) => {
                    // the directory is not what was listed any more: none
                    // of the rest of it is sent
                    let (done, _) = self.levels.pop().expect("a level is there");
                    self.layers.truncate(done.layers);
                    self.fail(&done.path, "cannot read directory", e)?;
                    continue;
                }
            };
            let meta = rustix::fs::statat(dir, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| Meta::from(&st))
                .map_err(std::io::Error::from);
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    self.fail(&child_path, "cannot stat", e)?;
                    continue;
                }
            };
            if self.opts.filters.excludes_in(
                &child_name_for_filter(&child_name),
                meta.is_dir(),
                &self.layers,
            ) {
                continue;
            }
            self.visit(&child_path, &child_name, meta, false)?;
        }
        Ok(())
    }

    /// The handle of the directory whose entries the walk is visiting,
    /// opened again if it was let go (see [`DirStack`]).
    fn held_dir(&mut self) -> std::io::Result<BorrowedFd<'_>> {
        self.levels.top_fd()
    }

    /// Opens the directory at `path`, which was stated as `key`: the
    /// source root by its path (beneath the module's root when confined to
    /// one, no symlink on the way), anything below it by its name in the
    /// handle of the directory holding it, not following a symlink there
    /// unless the walk follows this one (`followed`). A directory that is
    /// not the one stated (swapped meanwhile) is refused.
    fn open_dir(
        &mut self,
        path: &Path,
        key: (u64, u64),
        followed: bool,
    ) -> std::io::Result<OwnedFd> {
        if self.levels.is_empty() {
            let fd = match (&self.top, &self.top_fd) {
                (None, _) => rustix::fs::open(path, dir_flags(), Mode::empty())?,
                (Some(top), Some(top_fd)) => {
                    let rel = beneath(top, path).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "outside the module",
                        )
                    })?;
                    let opened = rustix::fs::openat2(
                        top_fd,
                        &rel,
                        dir_flags() | OFlags::NOFOLLOW,
                        Mode::empty(),
                        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                    );
                    match opened {
                        Ok(fd) => fd,
                        // (a root named without `-l` was stated through it)
                        Err(e) => {
                            return Err(
                                match crate::fs::source::symlink_on_the_way(top, &rel, true) {
                                    Ok(Some((link, leaves))) => std::io::Error::other(
                                        crate::fs::source::symlink_refusal(&link, leaves),
                                    ),
                                    _ => e.into(),
                                },
                            )
                        }
                    }
                }
                (Some(_), None) => {
                    return Err(std::io::Error::other("cannot open the module root"))
                }
            };
            same_dir(&fd, key, "the scan")?;
            return Ok(fd);
        }
        let comp = path.file_name().unwrap_or_default().as_bytes();
        self.levels.open_child(comp, key, followed)
    }

    /// `stat` of what the symlink at `path` points to, from its directory.
    fn stat_followed(&mut self, path: &Path) -> std::io::Result<Meta> {
        if self.levels.is_empty() {
            return std::fs::metadata(path).map(|m| Meta::from(&m));
        }
        let comp = path.file_name().unwrap_or_default().to_os_string();
        let st = rustix::fs::statat(self.held_dir()?, comp.as_os_str(), AtFlags::empty())?;
        Ok(Meta::from(&st))
    }

    /// The target of the symlink at `path`, read from its directory.
    fn read_link(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        if self.levels.is_empty() {
            return Ok(std::fs::read_link(path)?.into_os_string().into_vec());
        }
        let comp = path.file_name().unwrap_or_default().to_os_string();
        let target = rustix::fs::readlinkat(self.held_dir()?, comp.as_os_str(), Vec::new())?;
        Ok(target.into_bytes())
    }

    /// `--checksum`: the BLAKE3 of the file at `path`, opened from its
    /// directory without following a symlink (nor blocking on a FIFO
    /// swapped in), and only if it is still a regular file.
    fn hash_entry(&mut self, path: &Path) -> std::io::Result<[u8; 32]> {
        if self.levels.is_empty() {
            return hash_file(path);
        }
        let comp = path.file_name().unwrap_or_default().to_os_string();
        let fd = rustix::fs::openat(
            self.held_dir()?,
            comp.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("no longer a regular file"));
        }
        crate::check::file_checksum(file)
    }

    /// `: /NAME` (and `-F`): before the walk of root directory `path`
    /// (named `name`) starts, the merge files in each directory above it,
    /// from the top (`/`, or a daemon module's root) down to its parent, as
    /// rsync's parent-directory scan reads them. Their anchored rules are
    /// anchored in the directory holding the file.
    fn read_merge_files_above(&mut self, path: &Path, name: &[u8]) -> Result<(), E> {
        let wanted: Vec<usize> = (0..self.opts.filters.dir_merge_names().count())
            .filter(|&m| self.opts.filters.dir_merge_from_top(m))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let Ok(dir) = std::fs::canonicalize(path) else {
            return Ok(()); // the walk reports what cannot be read
        };
        let top = match &self.top {
            Some(t) => match std::fs::canonicalize(t) {
                Ok(t) => t,
                Err(_) => return Ok(()),
            },
            None => PathBuf::from("/"),
        };
        if !dir.starts_with(&top) || dir == top {
            return Ok(());
        }
        // where the names start: the root itself for `src/`, else above it
        let mut base = dir.clone();
        if name != b"." {
            for _ in name.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                base.pop();
            }
        }
        let mut above = Vec::new();
        let mut p = dir.parent();
        while let Some(d) = p {
            if !d.starts_with(&top) {
                break;
            }
            above.push(d.to_path_buf());
            p = d.parent();
        }
        for d in above.into_iter().rev() {
            let layer_at = match base.strip_prefix(&d) {
                // at or above where the names start: anchored below `d`
                Ok(lead) => Above::Lead(lead.as_os_str().as_bytes().to_vec()),
                // below it (-R): an ordinary directory of the names
                Err(_) => match d.strip_prefix(&base) {
                    Ok(rel) => Above::Dir(rel.as_os_str().as_bytes().to_vec()),
                    Err(_) => continue,
                },
            };
            for &m in &wanted {
                let file = self
                    .opts
                    .filters
                    .dir_merge_names()
                    .nth(m)
                    .map(<[u8]>::to_vec);
                let Some(file) = file else { continue };
                let file_path = d.join(OsStr::from_bytes(&file));
                let Some(text) = self.read_merge_file(&file_path)? else {
                    continue;
                };
                let rules = match &layer_at {
                    Above::Lead(lead) => self.opts.filters.dir_rules_above(m, lead, &text),
                    Above::Dir(rel) => self.opts.filters.dir_rules(m, rel, &text),
                };
                match rules {
                    Ok(rules) => self.layers.push(rules),
                    Err(why) => {
                        self.fail(&file_path, "filter file", std::io::Error::other(why))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `dir-merge`: the rules in this directory's merge files, for what is
    /// below it. A merge file is read only when it is a regular file (never
    /// through a symlink, so that a daemon module's sender reads nothing
    /// outside the module); one that cannot be read or parsed is an I/O
    /// error, as in rsync, and its rules are not applied.
    fn read_merge_files(&mut self, dir: &OwnedFd, path: &Path, name: &[u8]) -> Result<(), E> {
        let names: Vec<Vec<u8>> = self
            .opts
            .filters
            .dir_merge_names()
            .map(<[u8]>::to_vec)
            .collect();
        for (m, file) in names.iter().enumerate() {
            let file_path = path.join(OsStr::from_bytes(file));
            // (opened from the directory's handle, as its entries are)
            let read = read_merge_text(MergeAt::Beneath(dir, Path::new(OsStr::from_bytes(file))));
            let Some(text) = self.merge_text(&file_path, read)? else {
                continue;
            };
            match self.opts.filters.dir_rules(m, name, &text) {
                Ok(rules) => self.layers.push(rules),
                Err(why) => {
                    self.fail(&file_path, "filter file", std::io::Error::other(why))?;
                }
            }
        }
        Ok(())
    }

    /// The text of the merge file at `file_path`, if there is one to read
    /// (see [`read_merge_text`]); confined to a daemon module, it is opened
    /// beneath the module root's handle, never through a symlink anywhere on
    /// the way.
    fn read_merge_file(&mut self, file_path: &Path) -> Result<Option<Vec<u8>>, E> {
        let read = match (&self.top, &self.top_fd) {
            (None, _) => read_merge_text(MergeAt::Path(file_path)),
            (Some(top), Some(fd)) => match beneath(top, file_path) {
                Some(rel) => read_merge_text(MergeAt::Beneath(fd, &rel)),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "outside the module",
                )),
            },
            (Some(_), None) => Err(std::io::Error::other("cannot open the module root")),
        };
        self.merge_text(file_path, read)
    }

    /// What a merge file's read gives the walk: its text, or nothing (with
    /// a notice for a symlink or a special file, an error for a failure).
    fn merge_text(
        &mut self,
        file_path: &Path,
        read: std::io::Result<MergeText>,
    ) -> Result<Option<Vec<u8>>, E> {
        match read {
            Ok(MergeText::Text(text)) => Ok(Some(text)),
            Ok(MergeText::Missing) => Ok(None),
            Ok(MergeText::Symlink) => {
                (self.emit)(ScanItem::Notice(format!(
                    "not reading filter file {}: it is a symlink",
                    escape(file_path.as_os_str().as_bytes())
                )))?;
                Ok(None)
            }
            Ok(MergeText::Special) => {
                (self.emit)(ScanItem::Notice(format!(
                    "not reading filter file {}: not a regular file",
                    escape(file_path.as_os_str().as_bytes())
                )))?;
                Ok(None)
            }
            Ok(MergeText::Dir) => Ok(None),
            Err(e) => {
                self.fail(file_path, "cannot read filter file", e)?;
                Ok(None)
            }
        }
    }
}

/// The test hook for a directory swapped during the walk: with
/// `FERRY_TEST_HOOKS=1`, `FERRY_TEST_SCAN_PAUSE_AT=NAME` and
/// `FERRY_TEST_SCAN_PAUSE_FILE=PATH`, the walk, about to open the directory
/// it listed as NAME, makes `PATH.waiting` and waits (20 s at most) until
/// PATH exists, so that a test can change the tree at that moment every
/// time. Without `FERRY_TEST_HOOKS=1` the other two are never read.
fn scan_pause_hook(name: &[u8]) {
    static PAUSE: crate::fs::pause::PauseHook =
        crate::fs::pause::PauseHook::new("FERRY_TEST_SCAN_PAUSE_AT", "FERRY_TEST_SCAN_PAUSE_FILE");
    PAUSE.hold_if(|at| at == name);
}

/// Where a merge file read above the transfer root stands relative to the
/// transfer's names.
enum Above {
    /// At or above where they start: this path leads down to there.
    Lead(Vec<u8>),
    /// Below it (a `-R` root's parent): a directory of the names.
    Dir(Vec<u8>),
}

/// A directory the walk is in (its handle is on the [`DirStack`]).
struct Level {
    /// Its local path (what the entries below it are read from by the
    /// source) and its name in the list.
    path: PathBuf,
    name: Vec<u8>,
    /// Its names not visited yet, in order.
    children: std::vec::IntoIter<Vec<u8>>,
    /// How many merge-file layers were in force above it.
    layers: usize,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// What the walk needs of an entry's `stat`, from std's metadata (the roots)
/// or from a `stat` relative to its directory (the rest).
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    dev: u64,
    ino: u64,
    nlink: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    uid: u32,
    gid: u32,
}

impl Meta {
    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    fn dev(&self) -> u64 {
        self.dev
    }
    fn ino(&self) -> u64 {
        self.ino
    }
    fn nlink(&self) -> u64 {
        self.nlink
    }
    fn size(&self) -> u64 {
        self.size
    }
}

impl From<&std::fs::Metadata> for Meta {
    fn from(m: &std::fs::Metadata) -> Meta {
        Meta {
            mode: m.mode(),
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

impl From<&rustix::fs::Stat> for Meta {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn from(st: &rustix::fs::Stat) -> Meta {
        Meta {
            mode: st.st_mode as u32,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            size: st.st_size as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

/// The list entry for `name` as `meta` describes it (a file until the walk
/// says otherwise).
fn entry_of(name: &[u8], meta: &Meta) -> Entry {
    Entry {
        name: name.to_vec(),
        kind: Kind::File,
        mode: meta.mode & 0o7777,
        mtime: meta.mtime,
        mtime_nsec: meta.mtime_nsec as u32,
        size: 0,
        uid: meta.uid,
        gid: meta.gid,
        target: Vec::new(),
        link_to: None,
        checksum: None,
    }
}

fn child_name_for_filter(name: &[u8]) -> Vec<u8> {
    name.to_vec()
}

/// BLAKE3 of a whole file, as `--checksum` lists it.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    crate::check::file_checksum(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filters;
    use crate::fs::dir_stack::MAX_HELD_DIRS;

    fn names(sources: &[&str], opts: &ScanOptions) -> Vec<String> {
        let srcs: Vec<Vec<u8>> = sources.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut out = Vec::new();
        scan::<()>(&srcs, opts, &mut |item| {
            if let ScanItem::Entry(e, _) = item {
                out.push(String::from_utf8(e.name).unwrap());
            }
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn trailing_slash_rule_and_order() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::write(d.join("b/x"), "x").unwrap();
        std::fs::write(d.join("a"), "a").unwrap();
        std::fs::create_dir(d.join(".ferry-partial")).unwrap();
        let opts = ScanOptions {
            recursive: true,
            ..Default::default()
        };
        let p = d.to_str().unwrap();
        assert_eq!(names(&[p], &opts), ["data", "data/a", "data/b", "data/b/x"]);
        assert_eq!(names(&[&format!("{p}/")], &opts), [".", "a", "b", "b/x"]);
        let not_recursive = ScanOptions::default();
        assert!(names(&[p], &not_recursive).is_empty());
    }

    #[test]
    fn relative_names_and_implied_dirs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        std::fs::write(t.path().join("a/b/c/f"), "f").unwrap();
        std::fs::write(t.path().join("a/b/g"), "g").unwrap();
        let opts = ScanOptions {
            recursive: true,
            relative: true,
            ..Default::default()
        };
        let p = t.path().to_str().unwrap();
        // named from after /./, the directories above sent first, once
        assert_eq!(
            names(&[&format!("{p}/a/./b/c/"), &format!("{p}/a/./b/g")], &opts),
            ["b", "b/c", "b/c/f", "b/g"]
        );
        let no_r = ScanOptions {
            relative: true,
            ..Default::default()
        };
        assert_eq!(
            names(&[&format!("{p}/./a/b/g")], &no_r),
            ["a", "a/b", "a/b/g"]
        );
        let root = relative_root(b"/x/./y//./z/");
        assert_eq!(
            (root.name.as_slice(), root.base),
            (&b"y/z"[..], Some(PathBuf::from("/x/")))
        );
        assert_eq!(relative_root(b"/abs/path").name, b"abs/path");
    }

    /// Scans `src` recursively, swapping the directory listed as `swap`
    /// for a symlink to `outside` as soon as the entry named `when` is sent:
    /// the names sent and the errors.
    fn scan_swapping(
        src: &Path,
        when: &str,
        swap: &str,
        outside: &Path,
    ) -> (Vec<String>, Vec<String>) {
        let opts = ScanOptions {
            recursive: true,
            links: true,
            ..Default::default()
        };
        let (mut names, mut errors) = (Vec::new(), Vec::new());
        let srcs = [format!("{}/", src.display()).into_bytes()];
        scan::<()>(&srcs, &opts, &mut |item| {
            match item {
                ScanItem::Entry(e, _) => {
                    let name = String::from_utf8(e.name).unwrap();
                    if name == when {
                        let path = src.join(swap);
                        std::fs::rename(&path, src.with_file_name("moved")).unwrap();
                        std::os::unix::fs::symlink(outside, &path).unwrap();
                    }
                    names.push(name);
                }
                ScanItem::Error(e) => errors.push(e),
                ScanItem::Notice(_) => {}
            }
            Ok(())
        })
        .unwrap();
        (names, errors)
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_before_it_is_read_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (src, outside) = (t.path().join("src"), t.path().join("outside"));
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/in"), "").unwrap();
        std::fs::write(src.join("b"), "").unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "").unwrap();
        let (names, errors) = scan_swapping(&src, "a", "a", &outside);
        assert_eq!(names, [".", "a", "b"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with("/src/a: it became a symlink during the scan (not followed)"),
            "{errors:?}"
        );
    }

    /// Below [`MAX_HELD_DIRS`] the walk lets a directory's handle go while
    /// it is below it, and opens it again to visit the rest: what comes
    /// after a subdirectory is still listed, and a directory swapped before
    /// it is opened again is refused as it is higher up.
    #[test]
    fn deeper_than_the_held_handles_the_walk_opens_directories_again() {
        let t = tempfile::tempdir().unwrap();
        let (src, outside) = (t.path().join("src"), t.path().join("outside"));
        let deep = "d/".repeat(MAX_HELD_DIRS + 5);
        let deep = deep.trim_end_matches('/');
        std::fs::create_dir_all(src.join(deep).join("a/sub")).unwrap();
        std::fs::create_dir_all(src.join(deep).join("c/sub")).unwrap();
        std::fs::write(src.join(deep).join("a/z"), "").unwrap();
        std::fs::write(src.join(deep).join("c/z"), "").unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "").unwrap();
        std::fs::write(outside.join("z"), "").unwrap();
        // `a/sub` is walked, then `a` is opened again for `a/z`; `c` is
        // swapped while `c/sub` is walked, so opening it again finds a link
        let (names, errors) = scan_swapping(
            &src,
            &format!("{deep}/c/sub"),
            &format!("{deep}/c"),
            &outside,
        );
        let below: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix(deep)).collect();
        assert_eq!(below, ["", "/a", "/a/sub", "/a/z", "/c", "/c/sub"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with("/c: it became a symlink during the scan (not followed)"),
            "{errors:?}"
        );
        assert!(!names.iter().any(|n| n.contains("secret")));
    }

    #[test]
    fn excludes_prune_directories() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("skip/inner")).unwrap();
        std::fs::write(t.path().join("skip/inner/f"), "").unwrap();
        std::fs::write(t.path().join("keep.txt"), "").unwrap();
        std::fs::write(t.path().join("drop.tmp"), "").unwrap();
        let opts = ScanOptions {
            recursive: true,
            filters: Filters::new(&[(false, b"skip/".to_vec()), (false, b"*.tmp".to_vec())])
                .unwrap(),
            ..Default::default()
        };
        let src = format!("{}/", t.path().display());
        assert_eq!(names(&[&src], &opts), [".", "keep.txt"]);
    }
}

/// What a per-directory merge file's name holds.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeText {
    /// Nothing by that name.
    Missing,
    /// A symlink (at the name, or on the way beneath a module root): not read.
    Symlink,
    /// A directory: no rules.
    Dir,
    /// A FIFO, socket or device: not read.
    Special,
    /// A regular file's whole text.
    Text(Vec<u8>),
}

/// Where a merge file is opened.
pub enum MergeAt<'a> {
    /// By path (only the last component is not followed).
    Path(&'a Path),
    /// Beneath a directory handle, no symlink anywhere, no `..` out of it.
    Beneath(&'a OwnedFd, &'a Path),
}

/// Reads a per-directory merge file the one hardened way both sides use:
/// opened with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` (a FIFO swapped in
/// does not block), checked to be a regular file after opening (`fstat`),
/// and read only up to [`crate::filter::MAX_MERGE_FILE`] bytes (more is an
/// error saying so).
pub fn read_merge_text(at: MergeAt<'_>) -> std::io::Result<MergeText> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = match at {
        MergeAt::Path(p) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(p),
        MergeAt::Beneath(fd, rel) => {
            crate::fs::source::open_beneath_with(fd, rel, OFlags::NONBLOCK)
        }
    };
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MergeText::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(MergeText::Symlink),
        // (opening a socket)
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(MergeText::Special),
        Err(e) => return Err(e),
    };
    let ft = f.metadata()?.file_type();
    if ft.is_dir() {
        return Ok(MergeText::Dir);
    }
    if !ft.is_file() {
        return Ok(MergeText::Special);
    }
    let mut text = Vec::new();
    (&mut f)
        .take(crate::filter::MAX_MERGE_FILE + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > crate::filter::MAX_MERGE_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(MergeText::Text(text))
}

/// `path` relative to the module root `top`, as given or canonical (the
/// reader above the source works on canonical paths); `None` if outside it.
fn beneath(top: &Path, path: &Path) -> Option<PathBuf> {
    let rel = match path.strip_prefix(top) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => {
            let canon = std::fs::canonicalize(top).ok()?;
            path.strip_prefix(canon).ok()?.to_path_buf()
        }
    };
    Some(if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    })
}
