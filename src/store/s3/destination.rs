//! A bucket prefix as a [`Destination`]. A large new file is uploaded
//! while it arrives ([`super::stream`]: parts sent as they fill, its BLAKE3
//! recorded in its chunk map, which its metadata names). Any other file
//! arrives in a spool file on this host (unnamed, in the temporary
//! directory), so it can be written at offsets and read back like a local
//! one; publishing hashes it (BLAKE3), then uploads it with its mtime (ns),
//! mode and BLAKE3 in the object's metadata: a small file (one request), a
//! file replacing a large object (composed from it on the server where it
//! can be), a file that must not replace anything (`--ignore-existing`:
//! one conditional PUT), and every file when segments of one may arrive
//! over several streams. Either way nothing is at the key until the
//! receiver has checked the whole file and the upload completes, and a
//! file that is discarded never reaches the bucket. A file whose bytes are
//! those of the object already there (only its mtime changed) is not
//! uploaded (a streamed one's upload is aborted).
//!
//! Not for reading objects (that is [`super::source`]). What S3 cannot hold
//! is refused or kept elsewhere, and said so here: no symlinks or hard links
//! (refused); directories are prefixes, and each one ferry makes, empty or
//! not, with its mode and mtime, is a line of the prefix's manifest (not a
//! marker object: object_store cannot name a key ending in `/`, and other
//! tools would list markers as files); a later change to a file's mode or
//! mtime alone goes in the manifest, which is what ferry reads first, while
//! the object keeps the metadata it was uploaded with (rewriting it would
//! copy the object on the server); nothing is rebuilt from old data on this
//! host (every changed file comes whole to the spool file; a large one is
//! then composed on the server from the old object where it can be, see
//! [`super::compose`]).

use super::bucket::{path, Bucket, Listed, Object, SINGLE_PUT_MAX};
use super::chunkmap::{self, ChunkMap};
use super::compose;
use super::listing::{walk_cmp, Listing};
use super::manifest;
use super::stream::Stream;
use crate::error::TransferError;
use crate::store::destination::{
    BasisFile, Caps, Destination, Existing, ExistingKind, Meta, MetaOf, Place, PublishHow, Space,
    TempHow, TempWrite,
};
use rustix::fs::{Mode, OFlags};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::ops::Bound;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;

/// Files remembered after the walk asked about them (see `Known::recent`).
const RECENT: usize = 1024;

/// A bucket before the destination in it is opened.
pub struct S3Place {
    bucket: Bucket,
    /// `--ignore-existing`-like: never replace an object (If-None-Match).
    create_only: bool,
    /// Large files are uploaded as they arrive (bytes come in order: no
    /// segments over several streams).
    streaming: bool,
}

impl S3Place {
    pub fn new(bucket: Bucket) -> S3Place {
        S3Place {
            bucket,
            create_only: false,
            streaming: true,
        }
    }

    /// With `no`, every file is spooled on this host before it is
    /// uploaded (when segments of one file may arrive over several
    /// streams, out of order).
    pub fn streaming(mut self, yes: bool) -> S3Place {
        self.streaming = yes;
        self
    }

    /// With `yes`, every upload is conditional (If-None-Match: *): an
    /// object already at the key, however recent, is left as it is and that
    /// file fails with "already exists" (what `--ignore-existing` asks).
    pub fn create_only(mut self, yes: bool) -> S3Place {
        self.create_only = yes;
        self
    }
}

/// A key with no slashes at either end (`""`: the bucket's root).
fn key_of(path: &[u8]) -> io::Result<String> {
    let s = std::str::from_utf8(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "S3 keys are UTF-8"))?;
    let s = s.trim_matches('/');
    Ok(if s == "." {
        String::new()
    } else {
        s.to_string()
    })
}

impl Place for S3Place {
    type Dest = S3Dest;

    fn probe(&mut self, path: &[u8], shown: &str) -> Result<Option<bool>, TransferError> {
        let key = key_of(path).map_err(|e| TransferError::Usage(format!("{shown}: {e}")))?;
        if key.is_empty() {
            return Ok(Some(true));
        }
        let at = self.bucket.show(&key);
        let fail = |e: io::Error| TransferError::local(at, &e);
        Ok(self
            .bucket
            .stat(&key, true)
            .map_err(fail)?
            .map(|o| o.is_none()))
    }

    /// A prefix needs nothing above it.
    fn has_directories(&self) -> bool {
        false
    }

    fn open(&mut self, root: &[u8], _create: bool, shown: &str) -> Result<S3Dest, TransferError> {
        let root = key_of(root).map_err(|e| TransferError::Usage(format!("{shown}: {e}")))?;
        let known = Known::load(&self.bucket, &root)
            .map_err(|e| TransferError::local(self.bucket.show(&root), &e))?;
        Ok(S3Dest {
            bucket: self.bucket.clone(),
            root,
            create_only: self.create_only,
            streaming: self.streaming,
            notices: Vec::new(),
            known: Mutex::new(known),
            pending: Mutex::new(Pending::default()),
        })
    }
}

/// What is under the destination's prefix, learnt from one listing
/// streamed in key order and joined with the prefix's manifest as the
/// engine asks about paths (in its walk order, which differs from S3's:
/// `a/b` before `a.txt`), plus what this run uploaded and removed. What is
/// held is what was read but not yet asked about: the keys the walk will
/// come back to (`a.txt` while inside `a/`), not the whole listing.
struct Known {
    listing: Option<Listing>,
    /// The last key read from the listing.
    frontier: Option<String>,
    /// Keys read but not yet passed by the walk, with what the listing and
    /// the manifest said.
    ahead: BTreeMap<String, (Listed, Option<Object>)>,
    /// The largest key let go of: one asked about again (out of the walk's
    /// order) is asked of the server.
    forgotten: Option<String>,
    /// Every prefix seen with something under it.
    dirs: HashSet<String>,
    /// What this run uploaded, for the manifest.
    updated: BTreeMap<String, Object>,
    /// What this run removed (keys and prefixes).
    removed: HashSet<String>,
    /// Directories' modes and mtimes (key → as a zero-size object), from
    /// the manifest and this run: written back as its directory lines.
    dir_meta: BTreeMap<String, Object>,
    /// The files the walk asked about last, with what ferry knows of them:
    /// what publishing the same bytes again, or setting a mode, starts
    /// from, without a request.
    recent: VecDeque<(String, Object)>,
    /// The manifest must be written again.
    dirty: bool,
}

/// Adds the prefixes above `key` to `dirs`.
fn add_parents(dirs: &mut HashSet<String>, key: &str) {
    let mut k = key;
    while let Some(i) = k.rfind('/') {
        k = &k[..i];
        if !dirs.insert(k.to_string()) {
            break;
        }
    }
}

/// What the listing says of a path.
enum Found {
    /// An object, with the manifest's line when it still describes it.
    File(Option<Object>),
    Dir,
    Absent,
    /// Let go of already: ask the server.
    Unknown,
}

impl Known {
    fn load(bucket: &Bucket, root: &str) -> io::Result<Known> {
        let listing = Listing::open(bucket, root)?;
        let dir_meta = listing.dirs().clone();
        let mut dirs = HashSet::new();
        for d in dir_meta.keys() {
            add_parents(&mut dirs, &format!("{d}/"));
        }
        Ok(Known {
            listing: Some(listing),
            frontier: None,
            ahead: BTreeMap::new(),
            forgotten: None,
            dirs,
            updated: BTreeMap::new(),
            removed: HashSet::new(),
            dir_meta,
            recent: VecDeque::new(),
            dirty: false,
        })
    }

    /// Remembers what `key` is, for a while.
    fn remember(&mut self, key: &str, o: &Object) {
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((key.to_string(), o.clone()));
    }

    /// What ferry knows of the file at `key` without asking, if anything.
    fn object(&self, key: &str) -> Option<Object> {
        if let Some(o) = self.updated.get(key) {
            return Some(o.clone());
        }
        self.recent
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, o)| o.clone())
    }

    /// A directory as the receiver sees it.
    fn dir(&self, key: &str) -> Existing {
        let mut x = dir_existing();
        if let Some(o) = self.dir_meta.get(key) {
            x.mode = o.mode.unwrap_or(0o755);
            (x.mtime, x.mtime_nsec) = o.mtime;
        }
        x
    }

    /// Reads the listing until it is past `key` (in S3's order).
    fn read_to(&mut self, key: &str) -> io::Result<()> {
        while self.frontier.as_deref().is_none_or(|f| f < key) {
            let Some(listing) = self.listing.as_mut() else {
                return Ok(());
            };
            let Some((k, l, o)) = listing.next_item()? else {
                self.listing = None;
                return Ok(());
            };
            add_parents(&mut self.dirs, &k);
            self.ahead.insert(k.clone(), (l, o));
            self.frontier = Some(k);
        }
        Ok(())
    }

    /// Whether `key` or a prefix above it was removed by this run.
    fn is_removed(&self, key: &str) -> bool {
        if self.removed.is_empty() {
            return false;
        }
        let mut k = key;
        loop {
            if self.removed.contains(k) {
                return true;
            }
            match k.rfind('/') {
                Some(i) => k = &k[..i],
                None => return false,
            }
        }
    }

    /// What is at `key`; what both orders put before it is let go of.
    fn find(&mut self, key: &str) -> io::Result<Found> {
        if let Some(o) = self.updated.get(key) {
            return Ok(Found::File(Some(o.clone())));
        }
        if self.is_removed(key) {
            return Ok(Found::Absent);
        }
        // far enough to see whether anything is under `key/`
        self.read_to(&format!("{key}/"))?;
        let found = match self.ahead.get(key) {
            Some((_, o)) => {
                let o = o.clone();
                if let Some(o) = &o {
                    self.remember(key, o);
                }
                Found::File(o)
            }
            None if self.dirs.contains(key) => Found::Dir,
            None if self.forgotten.as_deref().is_some_and(|f| key <= f) => Found::Unknown,
            None => Found::Absent,
        };
        // the walk (in either order) will not ask about these again
        let gone: Vec<String> = self
            .ahead
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(key)))
            .filter(|(k, _)| walk_cmp(k, key) == Ordering::Less)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.ahead.remove(&k);
            if self.forgotten.as_deref().is_none_or(|f| f < k.as_str()) {
                self.forgotten = Some(k);
            }
        }
        Ok(found)
    }

    /// Records `key` as just uploaded (and the prefixes above it).
    fn published(&mut self, key: &str, obj: Object) {
        add_parents(&mut self.dirs, key);
        self.removed.remove(key);
        self.updated.insert(key.to_string(), obj);
        self.dirty = true;
    }

    fn removed(&mut self, key: &str) {
        self.updated.remove(key);
        let p = format!("{key}/");
        let under: Vec<String> = self
            .updated
            .range::<str, _>((Bound::Included(p.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.updated.remove(&k);
        }
        self.dirs.retain(|k| k != key && !k.starts_with(&p));
        self.dir_meta.retain(|k, _| k != key && !k.starts_with(&p));
        self.removed.insert(key.to_string());
        self.dirty = true;
    }
}

/// The objects under one prefix.
pub struct S3Dest {
    bucket: Bucket,
    root: String,
    create_only: bool,
    streaming: bool,
    /// Fallbacks to tell the user about (see [`Destination::take_notices`]).
    notices: Vec<String>,
    known: Mutex<Known>,
    /// Small files' uploads still in flight.
    pending: Mutex<Pending>,
}

/// Small files' uploads started and not yet waited for (at most
/// [`IN_FLIGHT`]), and those that failed. A small file is one request: many
/// go at once, which is what makes 10,000 small files fast; one that fails
/// fails the run when it ends ([`Destination::sync_all`]), named, and gets
/// no manifest line.
#[derive(Default)]
struct Pending {
    uploads: VecDeque<(String, Upload)>,
    failed: Vec<(String, io::Error)>,
}

type Upload = tokio::task::JoinHandle<io::Result<Option<String>>>;

/// Small files' uploads in flight at once, per destination.
const IN_FLIGHT: usize = 64;

impl S3Dest {
    /// Waits for the oldest uploads in flight until at most `keep` are
    /// left, recording each one's ETag or failure.
    fn settle(&self, keep: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while pending.uploads.len() > keep {
            let Some((key, h)) = pending.uploads.pop_front() else {
                break;
            };
            let got = self.bucket.finish(h);
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            match got {
                Ok(etag) => {
                    if let (Some(o), Some(e)) = (known.updated.get_mut(&key), etag) {
                        o.etag = Some(e);
                    }
                }
                Err(e) => {
                    known.updated.remove(&key);
                    pending.failed.push((key, e));
                }
            }
        }
    }

    fn key(&self, rel: &[u8]) -> io::Result<String> {
        let rel = key_of(rel)?;
        Ok(match (self.root.is_empty(), rel.is_empty()) {
            (_, true) => self.root.clone(),
            (true, false) => rel,
            (false, false) => format!("{}/{rel}", self.root),
        })
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("S3 has no {what}"))
}

fn file_existing(o: &Object) -> Existing {
    Existing {
        kind: ExistingKind::File,
        size: o.size,
        mode: o.mode.unwrap_or(0o644),
        mtime: o.mtime.0,
        mtime_nsec: o.mtime.1,
        uid: 0,
        gid: 0,
    }
}

/// A directory's line in the manifest, made now with `mode`.
fn dir_object(mode: u32) -> Object {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Object {
        size: 0,
        mtime: (now.as_secs() as i64, now.subsec_nanos()),
        mode: Some(mode & 0o7777),
        blake3: None,
        etag: None,
        modified_ms: 0,
    }
}

fn dir_existing() -> Existing {
    Existing {
        kind: ExistingKind::Dir,
        size: 0,
        mode: 0o755,
        mtime: 0,
        mtime_nsec: 0,
        uid: 0,
        gid: 0,
    }
}

impl Destination for S3Dest {
    type Basis = S3Basis;
    type Temp = S3Temp;

    fn caps(&self) -> Caps {
        // the spool file is local: it can be written at offsets
        Caps {
            rebuild: false,
            write_at: true,
            share_blocks: false,
        }
    }

    fn show(&self, rel: &[u8]) -> String {
        match self.key(rel) {
            Ok(k) => self.bucket.show(&k),
            Err(_) => self.bucket.show(&crate::fs::names::escape(rel)),
        }
    }

    fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>> {
        let key = self.key(rel)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if key.is_empty() || key == self.root {
            return Ok(Some(known.dir(&key)));
        }
        match known.find(&key)? {
            Found::File(Some(o)) => return Ok(Some(file_existing(&o))),
            Found::Dir => return Ok(Some(known.dir(&key))),
            Found::Absent => return Ok(None),
            Found::File(None) | Found::Unknown => {}
        }
        drop(known);
        // listed, but not as ferry last wrote it: ask
        Ok(match self.bucket.stat(&key, false)? {
            Some(Some(o)) => {
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remember(&key, &o);
                Some(file_existing(&o))
            }
            Some(None) => Some(dir_existing()),
            None => None,
        })
    }

    fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>> {
        let key = self.key(rel)?;
        let prefix = if key.is_empty() {
            key
        } else {
            format!("{key}/")
        };
        // one delimited listing of this prefix, with what this run changed
        let (files, dirs) = self.bucket.list_names(&prefix)?;
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let under = |k: &str| -> Option<String> {
            let rest = k.strip_prefix(prefix.as_str())?;
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        };
        let gone = |n: &str| known.is_removed(&format!("{prefix}{n}"));
        let mut out: Vec<(Vec<u8>, bool)> = files
            .into_iter()
            .filter(|n| n != manifest::NAME && !gone(n))
            .map(|n| (n.into_bytes(), false))
            .chain(
                dirs.into_iter()
                    .filter(|n| !gone(n) && (!prefix.is_empty() || n != chunkmap::PREFIX))
                    .map(|n| (n.into_bytes(), true)),
            )
            .collect();
        for k in known.updated.keys() {
            if let Some(n) = under(k) {
                out.push((n.into_bytes(), false));
            }
        }
        for d in &known.dirs {
            if let Some(n) = under(d) {
                out.push((n.into_bytes(), true));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A prefix exists once something is under it; the directory (empty
    /// or not) is recorded in the manifest, with its mode and mtime.
    fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let key = self.key(rel)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        add_parents(&mut known.dirs, &format!("{key}/"));
        known.removed.remove(&key);
        known.dir_meta.insert(key, dir_object(mode));
        known.dirty = true;
        Ok(())
    }

    fn symlink(&mut self, _rel: &[u8], _target: &[u8]) -> io::Result<()> {
        Err(unsupported("symlinks"))
    }

    fn readlink(&mut self, _rel: &[u8]) -> io::Result<Vec<u8>> {
        Err(unsupported("symlinks"))
    }

    fn hardlink(&mut self, _existing: &[u8], _rel: &[u8]) -> io::Result<()> {
        Err(unsupported("hard links"))
    }

    fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        let key = self.key(rel)?;
        if let Some(Some(_)) = self.bucket.stat(&key, false)? {
            if let Some(suffix) = backup {
                let suffix = std::str::from_utf8(suffix)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "suffix"))?;
                self.bucket.copy(&key, &format!("{key}{suffix}"))?;
            }
            self.bucket.delete(&key)?;
            // its chunk map, if it had one (nothing else reads it)
            let _ = self.bucket.delete(&chunkmap::key_of(&key));
        } else {
            for k in self.bucket.keys_under(&key)? {
                self.bucket.delete_path(&k)?;
            }
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .removed(&key);
        Ok(())
    }

    /// A directory's mode and mtime, or a file's that did not change
    /// otherwise, go in the manifest (no request until it is written): the
    /// object keeps the metadata it was uploaded with (see the module's
    /// note).
    fn set_meta(&mut self, rel: &[u8], of: MetaOf, meta: &Meta) -> io::Result<()> {
        let key = self.key(rel)?;
        match of {
            MetaOf::Dir => {
                let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                let o = known
                    .dir_meta
                    .entry(key)
                    .or_insert_with(|| dir_object(0o755));
                if let Some(m) = meta.mode {
                    o.mode = Some(m & 0o7777);
                }
                if let Some(t) = meta.mtime {
                    o.mtime = t;
                }
                known.dirty = true;
                Ok(())
            }
            MetaOf::File => {
                let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                let had = known.object(&key);
                drop(known);
                let mut o = match had {
                    Some(o) => o,
                    None => self.bucket.head(&key)?.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, self.bucket.show(&key))
                    })?,
                };
                if let Some(m) = meta.mode {
                    o.mode = Some(m & 0o7777);
                }
                if let Some(t) = meta.mtime {
                    o.mtime = t;
                }
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .published(&key, o);
                Ok(())
            }
            MetaOf::Link => Err(unsupported("symlinks")),
        }
    }

    fn open_basis(&mut self, rel: &[u8]) -> io::Result<S3Basis> {
        let key = self.key(rel)?;
        let o = self
            .bucket
            .head(&key)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, self.bucket.show(&key)))?;
        Ok(S3Basis {
            bucket: self.bucket.clone(),
            key: path(&key),
            size: o.size,
        })
    }

    fn open_partial(&mut self, _rel: &[u8]) -> Option<S3Basis> {
        None
    }

    fn create_temp(&mut self, _rel: &[u8], _how: TempHow) -> io::Result<S3Temp> {
        Ok(S3Temp::Spool(Spool {
            file: spool_file()?,
            len: 0,
        }))
    }

    /// A large new file is uploaded as it arrives ([`super::stream`]); a
    /// small one, one replacing a large object (composed from it where it
    /// can be), or one that must not replace anything, is spooled first.
    fn create_temp_for(
        &mut self,
        rel: &[u8],
        how: TempHow,
        size: u64,
        meta: &Meta,
    ) -> io::Result<S3Temp> {
        let key = self.key(rel)?;
        if !self.streaming || self.create_only || size <= SINGLE_PUT_MAX || key.is_empty() {
            return self.create_temp(rel, how);
        }
        // a HEAD that fails leaves it unknown: spooling is the choice that
        // is safe either way (the upload then says what the server said)
        if self.replaces_large(&key).unwrap_or(true) {
            return self.create_temp(rel, how);
        }
        Ok(S3Temp::Stream(Box::new(Stream::start(
            &self.bucket,
            &key,
            size,
            meta.mtime,
            meta.mode.map(|m| m & 0o7777),
        )?)))
    }

    fn publish(
        &mut self,
        temp: S3Temp,
        rel: &[u8],
        meta: &Meta,
        how: PublishHow<'_>,
    ) -> io::Result<()> {
        let key = self.key(rel)?;
        if key.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a file cannot be the bucket's root",
            ));
        }
        let temp = match temp {
            S3Temp::Spool(s) => s,
            S3Temp::Stream(s) => return self.publish_stream(*s, key, meta, how),
        };
        let mut file = temp.file;
        file.seek(io::SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = temp.len;
        while left > 0 {
            let n = file.read(&mut buf[..(left.min(1 << 20)) as usize])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spool file cut short",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let blake3 = *hasher.finalize().as_bytes();
        // the same bytes as the object there (a file touched, or its mtime
        // alone changed): only the manifest changes, nothing is uploaded
        let had = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .object(&key);
        if let Some(mut had) = had.clone().filter(|o| {
            o.size == temp.len
                && o.blake3 == Some(blake3)
                && !self.create_only
                && how.backup.is_none()
        }) {
            self.republish_same(&key, &mut had, meta);
            return Ok(());
        }
        self.back_up(&key, how.backup)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut obj = Object {
            size: temp.len,
            mtime: meta
                .mtime
                .unwrap_or((now.as_secs() as i64, now.subsec_nanos())),
            mode: meta.mode.map(|m| m & 0o7777),
            blake3: Some(blake3),
            etag: None,
            modified_ms: 0,
        };
        // a small file goes as one request among many in flight; what the
        // server says of it (its time) comes from the listing the manifest
        // is written from
        if !self.create_only && how.backup.is_none() && temp.len <= SINGLE_PUT_MAX {
            let h = self
                .bucket
                .upload_soon(&key, Arc::new(file), temp.len, &obj);
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .published(&key, obj);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .uploads
                .push_back((key, h));
            self.settle(IN_FLIGHT);
            return Ok(());
        }
        // a large file: its chunk map, and the object composed on the
        // server from the old one's unchanged ranges where it can be
        let file = Arc::new(file);
        let (mut map, mut composed) = (None, None);
        if temp.len > SINGLE_PUT_MAX && !self.create_only {
            let m = ChunkMap::of_file(&file, temp.len, blake3)?;
            let old = match had {
                Some(o) => Some(o),
                None => self.bucket.head(&key)?,
            };
            composed = old.and_then(|old| self.compose(&key, &file, &m, &old, &obj));
            map = Some(m);
        }
        obj.etag = match composed.map(Ok).unwrap_or_else(|| {
            self.bucket
                .upload(&key, file.clone(), temp.len, &obj, self.create_only)
        }) {
            Err(e) if self.create_only && e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "not replaced: another writer created it since this run listed the \
                     bucket (--ignore-existing keeps the first)",
                ))
            }
            other => other?,
        };
        // what the server now says of it (its time, which listings give),
        // and a check that the upload is what was sent
        match self.bucket.head(&key)? {
            Some(now) if now.size == obj.size && now.blake3 == obj.blake3 => {
                obj.modified_ms = now.modified_ms;
                obj.etag = now.etag.or(obj.etag);
            }
            _ => {
                return Err(io::Error::other(format!(
                    "{} is not what was uploaded (another writer?)",
                    self.bucket.show(&key)
                )))
            }
        }
        if let Some(mut m) = map {
            // without it the next version is sent whole: not an error
            m.etag = obj.etag.clone().unwrap_or_default();
            if let Err(e) = self
                .bucket
                .put_small(&chunkmap::key_of(&key), m.render().into())
            {
                self.notices.push(format!(
                    "its chunk map was not written ({e}): the next version is uploaded whole"
                ));
            }
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .published(&key, obj);
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn discard(&mut self, temp: S3Temp) {
        match temp {
            S3Temp::Spool(s) => drop(s),
            // bytes that failed their check: nothing goes to the key
            S3Temp::Stream(s) => s.abort(),
        }
    }

    fn spill_dir(&mut self, _rel: &[u8]) -> Option<Arc<OwnedFd>> {
        None
    }

    fn tidy_dir(&mut self, _dir: &[u8]) {}

    fn space(&self) -> Space {
        Space {
            free_bytes: u64::MAX,
            out_of_inodes: false,
        }
    }

    /// Objects are durable once uploaded; what is left is the manifest,
    /// written when something changed.
    fn sync_all(&self) -> io::Result<()> {
        self.settle(0);
        let failed = std::mem::take(
            &mut self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed,
        );
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !known.dirty {
            return Ok(());
        }
        // the new manifest: a line for each object listed now, from what
        // this run uploaded or else the old manifest's still-matching line,
        // written to a spool file as the listing streams
        let mut listing = Listing::open(&self.bucket, &self.root)?;
        let mut out = io::BufWriter::new(spool_file()?);
        out.write_all(manifest::header().as_bytes())?;
        for (k, o) in &known.dir_meta {
            out.write_all(manifest::render_dir_line(k, o).as_bytes())?;
        }
        while let Some((k, l, old)) = listing.next_item()? {
            let mut new = known.updated.get(&k).cloned();
            if let Some(o) = new.as_mut().filter(|o| o.modified_ms == 0) {
                // uploaded in flight, without a HEAD: the listing gives its
                // time; an object not the size sent (or not the ETag the
                // upload returned) is not described
                let etag_ok = match (&o.etag, &l.etag) {
                    (Some(a), Some(b)) => a.trim_matches('"') == b.trim_matches('"'),
                    _ => true,
                };
                if l.size != o.size || !etag_ok {
                    continue;
                }
                o.modified_ms = l.modified_ms;
            }
            if let Some(o) = new.as_ref().or(old.as_ref()) {
                out.write_all(manifest::render_line(&k, o).as_bytes())?;
            }
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        let len = file.seek(io::SeekFrom::End(0))?;
        self.bucket
            .put_file(&manifest::key_of(&self.root), file, len)?;
        known.dirty = false;
        if let Some((key, e)) = failed.first() {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{} upload(s) failed, the first {}: {e}",
                    failed.len(),
                    self.bucket.show(key)
                ),
            ));
        }
        Ok(())
    }
}

impl S3Dest {
    /// Whether a large object is at `key` (a file replacing it is composed
    /// from it, so it is spooled, not streamed). What the walk learnt of
    /// the key may be forgotten by now (the receiver asks about thousands
    /// of entries before their bytes arrive, and only the last
    /// [`RECENT`] are remembered): then the server is asked, one HEAD for
    /// a large file, and its answer remembered for the publish.
    fn replaces_large(&self, key: &str) -> io::Result<bool> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .object(key);
        let o = match known {
            Some(o) => Some(o),
            None => {
                let o = self.bucket.head(key)?;
                if let Some(o) = &o {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remember(key, o);
                }
                o
            }
        };
        Ok(o.is_some_and(|o| o.size > SINGLE_PUT_MAX))
    }

    /// Puts a streamed file at `key` once all of it has arrived (and the
    /// receiver checked it): its chunk map (with its BLAKE3) first, then
    /// the upload completed, then a HEAD to see the object is what was
    /// sent. Bytes the same as the object already there are not put (the
    /// upload is aborted; the manifest takes the new mtime).
    fn publish_stream(
        &mut self,
        mut s: Stream,
        key: String,
        meta: &Meta,
        how: PublishHow<'_>,
    ) -> io::Result<()> {
        let summed = match s.finish() {
            Ok(x) => x,
            Err(e) => {
                // a part refused or corrupted: the parts the server took
                // stay journaled for a re-run
                return Err(e);
            }
        };
        let len = s.len();
        let had = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .object(&key);
        if let Some(mut had) =
            had.filter(|o| o.size == len && o.blake3 == Some(summed.blake3) && how.backup.is_none())
        {
            s.abort();
            self.republish_same(&key, &mut had, meta);
            return Ok(());
        }
        self.back_up(&key, how.backup)?;
        // the map that vouches for the object, before the object: without
        // it the object would have no check value, so it is not completed
        let map = ChunkMap {
            size: len,
            blake3: summed.blake3,
            etag: String::new(),
            check: s.check().to_string(),
            chunks: summed.chunks,
        };
        if let Err(e) = self
            .bucket
            .put_small(&chunkmap::key_of(&key), map.render().into())
        {
            s.abort();
            return Err(e);
        }
        let etag = s.complete()?;
        match self.bucket.head(&key)? {
            Some(now) if now.size == len && now.blake3 == Some(summed.blake3) => {
                let mut obj = now;
                obj.etag = obj.etag.or(etag);
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .published(&key, obj);
                Ok(())
            }
            _ => Err(io::Error::other(format!(
                "{} is not what was uploaded (another writer?)",
                self.bucket.show(&key)
            ))),
        }
    }

    /// Uploads `file` (chunked as `new`) as `key` composed from the old
    /// object `old` when it has a chunk map and enough of it is unchanged;
    /// the new ETag (if the server gave one), or `None` to upload the file
    /// whole (nothing to reuse,
    /// or the server would not compose: then nothing was published).
    fn compose(
        &mut self,
        key: &str,
        file: &Arc<File>,
        new: &ChunkMap,
        old: &Object,
        obj: &Object,
    ) -> Option<Option<String>> {
        let old_map = compose::old_map(&self.bucket, key, old).ok()??;
        let plan = compose::plan(&old_map, new)?;
        // not worth a second request per part
        if plan.sent > new.size / 4 * 3 {
            return None;
        }
        match compose::run(
            &self.bucket,
            key,
            (file.clone(), new.size, new.blake3),
            &plan,
            super::bucket::attributes(obj),
            old.etag.clone(),
        ) {
            Ok(etag) => Some(etag),
            Err(e) => {
                // the delta fallback: correct, but every byte is sent
                self.notices.push(format!(
                    "not composed on the server from the old version ({}); uploaded whole",
                    crate::error::io_text(&e)
                ));
                None
            }
        }
    }
}

/// A nameless file in the temporary directory (gone when closed).
/// Helpers shared by [`S3Dest`]'s two publish paths (spooled and streamed).
impl S3Dest {
    /// The object already holds these bytes: only its recorded mtime and
    /// mode change (in the manifest), nothing is uploaded.
    fn republish_same(&self, key: &str, had: &mut Object, meta: &Meta) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        had.mtime = meta
            .mtime
            .unwrap_or((now.as_secs() as i64, now.subsec_nanos()));
        if let Some(m) = meta.mode {
            had.mode = Some(m & 0o7777);
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .published(key, had.clone());
    }

    /// `--backup`: the object about to be replaced is copied to KEY+SUFFIX
    /// on the server first.
    fn back_up(&self, key: &str, suffix: Option<&[u8]>) -> io::Result<()> {
        if let Some(suffix) = suffix {
            if self.bucket.head(key)?.is_some() {
                let suffix = std::str::from_utf8(suffix)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "suffix"))?;
                self.bucket.copy(key, &format!("{key}{suffix}"))?;
            }
        }
        Ok(())
    }
}

fn spool_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    match rustix::fs::open(
        &dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(_) => {
            // no O_TMPFILE here: a named file, unlinked at once
            let name = dir.join(format!(
                ".ferry-s3-{}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(f)
        }
    }
}

/// A file on its way to the bucket: spooled on this host, or uploaded as
/// it arrives.
pub enum S3Temp {
    Spool(Spool),
    Stream(Box<Stream>),
}

impl TempWrite for S3Temp {
    type Basis = S3Basis;

    fn len(&self) -> u64 {
        match self {
            S3Temp::Spool(s) => s.len(),
            S3Temp::Stream(s) => s.len(),
        }
    }
    /// A streamed upload is kept on failure (journaled: a re-run continues
    /// it), unless its bytes failed their check.
    fn is_partial(&self) -> bool {
        matches!(self, S3Temp::Stream(_))
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            S3Temp::Spool(s) => s.write(data),
            S3Temp::Stream(s) => s.write(data),
        }
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            S3Temp::Spool(s) => s.write_at(offset, data),
            S3Temp::Stream(s) if offset == s.len() => s.write(data),
            S3Temp::Stream(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an upload to S3 as the file arrives takes its bytes in order",
            )),
        }
    }
    fn append_from(&mut self, _from: &S3Basis, _offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            S3Temp::Spool(s) => s.read_at(offset, buf),
            S3Temp::Stream(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "bytes already uploaded to S3 are not read back",
            )),
        }
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// A file on its way to the bucket, spooled on this host.
pub struct Spool {
    file: File,
    len: u64,
}

impl TempWrite for Spool {
    type Basis = S3Basis;

    fn len(&self) -> u64 {
        self.len
    }
    fn is_partial(&self) -> bool {
        false
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.len)?;
        self.len += data.len() as u64;
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }
    fn append_from(&mut self, _from: &S3Basis, _offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// An object read at offsets (for `--checksum`, which hashes what is there).
pub struct S3Basis {
    bucket: Bucket,
    key: object_store::path::Path,
    size: u64,
}

impl BasisFile for S3Basis {
    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(self.size);
        let n = (end - offset) as usize;
        self.bucket
            .read_into(&self.key, offset, &mut buf[..n], None)?;
        Ok(n)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "past the object's end",
            ));
        }
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "object cut short",
            ));
        }
        Ok(())
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}
