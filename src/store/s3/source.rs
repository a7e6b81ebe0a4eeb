//! A bucket prefix as a [`Source`]: listed from one listing streamed in
//! key order (see [`super::listing`]), each directory listed just before the
//! first key under it, so memory does not grow with the number of objects
//! (S3's order puts `a.txt` before `a/b`, the local scan the other way
//! round: the receiver needs only a directory before its contents), files
//! read by ranged GETs several ranges ahead, and every file that ferry
//! uploaded checked against the BLAKE3 in its metadata before its last bytes are
//! handed over: a corrupt object fails its read, so the receiver never
//! publishes it.
//!
//! Not for writing (that is [`super::destination`]). S3 has no directories,
//! symlinks or hard links: a prefix is listed as a directory (mode 0755,
//! the time of listing), and nothing else is.

use super::bucket::{path, Bucket, Object};
use super::listing::Listing;
use super::manifest::Manifest;
use crate::fs::names::escape;
use crate::proto::{Entry, Kind, ListStart};
use crate::store::source::{ListOptions, Listed, Source, SourceFile, Stamp};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;

/// Objects of a listing taken at a time (those the manifest does not
/// describe are asked about together).
const BATCH: usize = 256;

/// Where a recursive walk is: the directories (relative paths) open above
/// the last key, and an excluded directory whose keys are skipped.
struct Walk {
    open: Vec<String>,
    skip: Option<String>,
    /// The directories the manifest records (relative path → mode and
    /// mtime): those with no object under them are listed at the end.
    dirs: BTreeMap<String, Object>,
    /// The directories listed so far.
    listed: HashSet<String>,
}

/// The bytes of one ranged GET.
const RANGE: u64 = 8 << 20;
/// Ranged GETs of one file in flight ahead of the reader: each waits for
/// its share of the bucket's byte budget while it is fetched, and a range
/// that has arrived and waits for the reader is outside the budget, so a
/// file being read holds at most `AHEAD` × `RANGE` (64 MiB) besides it. 2 GiB down from s3s-fs on 2
/// cores, 8 MiB ranges: 4 ahead 9.6–10.6 s, 8 ahead 6.0–7.6 s, 16 ahead
/// 6.7 s at 219 MiB peak; 4 MiB × 16 and 2 MiB × 32 were slower than 8 MiB
/// × 8 (bench/NOTES.md §49).
const AHEAD: usize = 8;

/// Objects in one bucket, read through its client.
pub struct S3Source {
    bucket: Bucket,
}

/// A listed object: its key, its name in the list, what it was.
#[derive(Clone)]
pub struct S3Handle {
    key: String,
    shown: Vec<u8>,
    obj: Object,
}

impl S3Source {
    pub fn new(bucket: Bucket) -> S3Source {
        S3Source { bucket }
    }

    /// A source root: the key it names (no trailing slash), the name its
    /// entries take (`.` for a root's contents), and whether it is the
    /// contents of a prefix (a trailing slash, or the bucket's root).
    fn root(src: &[u8]) -> io::Result<(String, Vec<u8>, bool)> {
        let s = std::str::from_utf8(src)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "S3 keys are UTF-8"))?;
        let key = s.trim_end_matches('/').to_string();
        let contents = s.ends_with('/') || key.is_empty();
        let base = key.rsplit('/').next().unwrap_or("");
        let name = if contents {
            b".".to_vec()
        } else {
            base.as_bytes().to_vec()
        };
        Ok((key, name, contents))
    }

    fn entry(name: Vec<u8>, kind: Kind, obj: Option<&Object>) -> Entry {
        let mut e = entry(name, obj);
        e.kind = kind;
        e
    }

    /// Emits everything under `key` (named `name` in the list): with `-r`
    /// from one listing streamed in key order, a directory emitted when the
    /// first key under it goes by (keys under a prefix are contiguous in
    /// S3's order, so only the open directories are remembered); without,
    /// the prefixes and objects directly under it.
    fn walk<E>(
        &self,
        key: &str,
        name: &[u8],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
        failed: &mut bool,
    ) -> Result<(), E> {
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        if !opts.recursive {
            return self.walk_level(&prefix, name, opts, emit, failed);
        }
        let cannot = |e: &io::Error| {
            format!(
                "cannot list {}: {}",
                self.bucket.show(&prefix),
                crate::error::io_text(e)
            )
        };
        let mut listing = match Listing::open(&self.bucket, key) {
            Ok(l) => l,
            Err(e) => {
                *failed = true;
                return emit(Listed::Error(cannot(&e)));
            }
        };
        let mut walk = Walk {
            open: Vec::new(),
            skip: None,
            dirs: listing
                .dirs()
                .iter()
                .filter_map(|(k, o)| {
                    let rel = k.strip_prefix(prefix.as_str())?;
                    (!rel.is_empty()).then(|| (rel.to_string(), o.clone()))
                })
                .collect(),
            listed: HashSet::new(),
        };
        loop {
            // a batch at a time, so that objects the manifest does not
            // describe are asked about several at once
            let mut batch = Vec::new();
            let mut broken = None;
            while batch.len() < BATCH {
                match listing.next_item() {
                    Ok(Some(item)) => batch.push(item),
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            let missing: Vec<String> = batch
                .iter()
                .filter(|(_, _, o)| o.is_none())
                .map(|(k, _, _)| k.clone())
                .collect();
            let heads = if missing.is_empty() {
                Vec::new()
            } else {
                match self.bucket.head_many(&missing) {
                    Ok(h) => h,
                    Err(e) => {
                        *failed = true;
                        return emit(Listed::Error(cannot(&e)));
                    }
                }
            };
            let mut heads = heads.into_iter();
            let last = batch.len() < BATCH;
            for (k, _, known) in batch {
                let obj = match known {
                    Some(o) => Some(o),
                    None => heads.next().flatten(),
                };
                // (gone since it was listed: nothing to send)
                let (Some(obj), Some(rel)) = (obj, k.strip_prefix(prefix.as_str())) else {
                    continue;
                };
                self.object(&mut walk, rel, name, &prefix, obj, opts, emit)?;
            }
            if let Some(e) = broken {
                *failed = true;
                return emit(Listed::Error(cannot(&e)));
            }
            if last {
                // directories with nothing under them (parents first)
                let empty: Vec<String> = walk
                    .dirs
                    .keys()
                    .filter(|d| !walk.listed.contains(*d))
                    .cloned()
                    .collect();
                for d in empty {
                    walk.open.clear();
                    walk.skip = None;
                    self.open_dirs(&mut walk, &d, name, &prefix, opts, emit)?;
                }
                return Ok(());
            }
        }
    }

    /// One object of a recursive walk, after the directories above it that
    /// are not yet in the list.
    #[allow(clippy::too_many_arguments)]
    fn object<E>(
        &self,
        walk: &mut Walk,
        rel: &str,
        name: &[u8],
        prefix: &str,
        obj: Object,
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(s) = &walk.skip {
            if rel.starts_with(s.as_str()) {
                return Ok(());
            }
            walk.skip = None;
        }
        let dir = rel.rfind('/').map_or("", |i| &rel[..i]);
        // close what the key is not under, open what it is
        while let Some(top) = walk.open.last() {
            if dir == top || dir.starts_with(&format!("{top}/")) {
                break;
            }
            walk.open.pop();
        }
        if !self.open_dirs(walk, dir, name, prefix, opts, emit)? {
            return Ok(());
        }
        let child_name = join(name, rel.as_bytes());
        if opts.filters.excludes(&child_name, false) {
            return Ok(());
        }
        self.file(format!("{prefix}{rel}"), child_name, obj, opts, emit)
    }

    /// Lists the directories down to `dir` (relative) not yet listed;
    /// false when one of them is excluded (and its keys are skipped).
    fn open_dirs<E>(
        &self,
        walk: &mut Walk,
        dir: &str,
        name: &[u8],
        prefix: &str,
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut at = walk.open.last().map_or(0, |t| t.len() + 1);
        while at <= dir.len() && !dir.is_empty() {
            let end = dir[at..].find('/').map_or(dir.len(), |i| at + i);
            let d = &dir[..end];
            at = end + 1;
            let d_name = join(name, d.as_bytes());
            if opts.filters.excludes(&d_name, true) {
                walk.skip = Some(format!("{d}/"));
                return Ok(false);
            }
            walk.open.push(d.to_string());
            if !walk.listed.insert(d.to_string()) {
                continue;
            }
            let mut e = Self::entry(d_name, Kind::Dir, None);
            if let Some(o) = walk.dirs.get(d) {
                e.mode = o.mode.unwrap_or(0o755) & 0o7777;
                (e.mtime, e.mtime_nsec) = o.mtime;
            }
            let d_key = format!("{prefix}{d}");
            emit(Listed::Entry(
                e,
                S3Handle {
                    shown: self.bucket.show(&d_key).into_bytes(),
                    key: d_key,
                    obj: empty(),
                },
            ))?;
        }
        Ok(true)
    }

    /// The prefixes and objects directly under `prefix` (without `-r`).
    fn walk_level<E>(
        &self,
        prefix: &str,
        name: &[u8],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
        failed: &mut bool,
    ) -> Result<(), E> {
        let root = prefix.trim_end_matches('/');
        let inherited = self
            .bucket
            .get_small(&super::manifest::key_of(root))
            .ok()
            .flatten()
            .map(|t| Manifest::parse(&String::from_utf8_lossy(&t)));
        let ((files, dirs), _) = match self.bucket.list_dir(prefix, inherited.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                *failed = true;
                return emit(Listed::Error(format!(
                    "cannot list {}: {}",
                    self.bucket.show(prefix),
                    crate::error::io_text(&e)
                )));
            }
        };
        // merge files and prefixes by name, as a directory's sorted children
        let mut children: Vec<(String, Option<Object>)> = files
            .into_iter()
            .map(|(n, o)| (n, Some(o)))
            .chain(dirs.into_iter().map(|d| (d, None)))
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (child, obj) in children {
            let child_name = join(name, child.as_bytes());
            let child_key = format!("{prefix}{child}");
            if opts.filters.excludes(&child_name, obj.is_none()) {
                continue;
            }
            match obj {
                Some(o) => self.file(child_key, child_name, o, opts, emit)?,
                None => emit(Listed::Entry(
                    Self::entry(child_name, Kind::Dir, None),
                    S3Handle {
                        shown: self.bucket.show(&child_key).into_bytes(),
                        key: child_key,
                        obj: empty(),
                    },
                ))?,
            }
        }
        Ok(())
    }

    fn file<E>(
        &self,
        key: String,
        name: Vec<u8>,
        obj: Object,
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut e = Self::entry(name, Kind::File, Some(&obj));
        if opts.checksum {
            // the value ferry stored when it uploaded; none: compare by
            // content is not possible without reading, so it differs
            e.checksum = obj.blake3;
        }
        emit(Listed::Entry(
            e,
            S3Handle {
                shown: self.bucket.show(&key).into_bytes(),
                key,
                obj,
            },
        ))
    }
}

/// The list entry of an object (`Some`) or a prefix (`None`, a directory).
pub fn entry(name: Vec<u8>, obj: Option<&Object>) -> Entry {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (mtime, nsec) = obj.map_or((now.as_secs() as i64, 0), |o| o.mtime);
    Entry {
        name,
        kind: if obj.is_some() { Kind::File } else { Kind::Dir },
        mode: obj.map_or(0o755, |o| o.mode.unwrap_or(0o644)) & 0o7777,
        mtime,
        mtime_nsec: nsec,
        size: obj.map_or(0, |o| o.size),
        uid: 0,
        gid: 0,
        target: Vec::new(),
        link_to: None,
        checksum: None,
    }
}

fn empty() -> Object {
    Object {
        size: 0,
        mtime: (0, 0),
        mode: None,
        blake3: None,
        etag: None,
        modified_ms: 0,
    }
}

fn join(name: &[u8], child: &[u8]) -> Vec<u8> {
    if name == b"." {
        child.to_vec()
    } else {
        let mut v = name.to_vec();
        v.push(b'/');
        v.extend_from_slice(child);
        v
    }
}

impl Source for S3Source {
    type Handle = S3Handle;
    type File = S3File;

    fn list_start(&self, roots: &[Vec<u8>], opts: &ListOptions) -> ListStart {
        let single = roots.len() == 1;
        let (is_dir, contents) = match roots.first().map(|r| Self::root(r)) {
            Some(Ok((key, _, contents))) => {
                let file = !contents && matches!(self.bucket.stat(&key, true), Ok(Some(Some(_))));
                (!file, contents)
            }
            _ => (false, false),
        };
        ListStart {
            single_file: single && !is_dir,
            single_dir: single && is_dir && !contents && opts.recursive,
        }
    }

    fn list<E>(
        &self,
        roots: &[Vec<u8>],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<S3Handle>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut failed = false;
        for src in roots {
            let (key, name, contents) = match Self::root(src) {
                Ok(r) => r,
                Err(e) => {
                    failed = true;
                    emit(Listed::Error(format!(
                        "cannot read source {}: {e}",
                        escape(src)
                    )))?;
                    continue;
                }
            };
            let shown = self.bucket.show(&key);
            match self.bucket.stat(&key, true) {
                Ok(Some(Some(o))) if !contents => {
                    self.file(key, name, o, opts, emit)?;
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    failed = true;
                    emit(Listed::Error(format!(
                        "cannot read source {shown}: no such object or prefix"
                    )))?;
                    continue;
                }
                Err(e) => {
                    failed = true;
                    emit(Listed::Error(format!(
                        "cannot read source {shown}: {}",
                        crate::error::io_text(&e)
                    )))?;
                    continue;
                }
            }
            if !opts.recursive && !opts.dirs {
                emit(Listed::Notice(format!(
                    "skipping directory {shown} (use -r)"
                )))?;
                continue;
            }
            emit(Listed::Entry(
                Self::entry(name.clone(), Kind::Dir, None),
                S3Handle {
                    key: key.clone(),
                    shown: shown.clone().into_bytes(),
                    obj: empty(),
                },
            ))?;
            self.walk(&key, &name, opts, emit, &mut failed)?;
        }
        Ok(failed)
    }

    fn open(&self, at: &S3Handle) -> io::Result<S3File> {
        Ok(S3File::new(self.bucket.clone(), at))
    }

    fn name<'h>(&self, at: &'h S3Handle) -> &'h [u8] {
        &at.shown
    }
}

/// An object being read: in order through [`io::Read`] with ranged GETs
/// running ahead, or at offsets.
pub struct S3File {
    bucket: Bucket,
    key: object_store::path::Path,
    shown: String,
    obj: Object,
    /// Where the next range to fetch starts.
    next: u64,
    ahead: VecDeque<tokio::task::JoinHandle<io::Result<VecDeque<Bytes>>>>,
    /// The chunks of the range being read that are not yet hashed, as its
    /// body arrived in them.
    range: VecDeque<Bytes>,
    /// That range is the object's last.
    last: bool,
    /// What is left of the chunk being handed out (hashed).
    cur: Bytes,
    hasher: AlignedHasher,
}

/// BLAKE3 fed in pieces that start at multiples of [`AlignedHasher::ALIGN`]
/// of the object: a piece that starts elsewhere is hashed a chunk or a few at
/// a time, not 16 in parallel. The body's chunks end wherever the socket's
/// reads did, so the bytes around each boundary (less than `ALIGN` from each
/// side) are carried over into a small buffer first. Hashing each body chunk
/// as it came made BLAKE3 15% of a download's samples, up from 10% for whole
/// 8 MiB ranges (bench/NOTES.md §52).
#[derive(Default)]
struct AlignedHasher {
    hasher: blake3::Hasher,
    /// Bytes after the last multiple of `ALIGN` hashed, fewer than `ALIGN`.
    carry: Vec<u8>,
}

impl AlignedHasher {
    /// 16 BLAKE3 chunks of 1 KiB: as many as its widest SIMD hashes at once.
    const ALIGN: usize = 16 << 10;

    fn update(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let take = (Self::ALIGN - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < Self::ALIGN {
                return;
            }
            self.hasher.update(&self.carry);
            self.carry.clear();
        }
        let whole = data.len() / Self::ALIGN * Self::ALIGN;
        self.hasher.update(&data[..whole]);
        self.carry.extend_from_slice(&data[whole..]);
    }

    /// The hash of everything given so far.
    fn finalize(&mut self) -> blake3::Hash {
        self.hasher.update(&self.carry);
        self.carry.clear();
        self.hasher.finalize()
    }
}

impl S3File {
    fn new(bucket: Bucket, at: &S3Handle) -> S3File {
        S3File {
            key: path(&at.key),
            shown: bucket.show(&at.key),
            bucket,
            obj: at.obj.clone(),
            next: 0,
            ahead: VecDeque::new(),
            range: VecDeque::new(),
            last: false,
            cur: Bytes::new(),
            hasher: AlignedHasher::default(),
        }
    }

    /// Keeps `AHEAD` ranges in flight.
    fn fill(&mut self) {
        while self.ahead.len() < AHEAD && self.next < self.obj.size {
            let end = (self.next + RANGE).min(self.obj.size);
            let h = self
                .bucket
                .fetch(&self.key, self.next..end, self.obj.etag.clone());
            self.ahead.push_back(h);
            self.next = end;
        }
    }

    /// The next chunk of the object, hashed; empty at its end. Each chunk is
    /// hashed just before it is handed on, while it is in the CPU's cache for
    /// the copy that follows (a whole range hashed at once was read from
    /// memory twice). The whole object is checked before its last chunk is
    /// handed on: a corrupt object fails here, and its last bytes go nowhere.
    fn next_chunk(&mut self) -> io::Result<Bytes> {
        while self.range.is_empty() {
            self.fill();
            let Some(h) = self.ahead.pop_front() else {
                return Ok(Bytes::new());
            };
            self.range = self.bucket.wait(h)?;
            self.fill();
            self.last = self.ahead.is_empty() && self.next >= self.obj.size;
        }
        let chunk = self.range.pop_front().unwrap_or_default();
        self.hasher.update(&chunk);
        if self.last && self.range.is_empty() {
            if let Some(want) = self.obj.blake3 {
                if *self.hasher.finalize().as_bytes() != want {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} does not match the BLAKE3 stored with it: the object is corrupt",
                            self.shown
                        ),
                    ));
                }
            }
        }
        Ok(chunk)
    }
}

impl io::Read for S3File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cur.is_empty() {
            self.cur = self.next_chunk()?;
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

impl SourceFile for S3File {
    fn stamp(&self) -> io::Result<Stamp> {
        Ok(Stamp {
            size: self.obj.size,
            mtime: self.obj.mtime.0,
            mtime_nsec: self.obj.mtime.1 as i64,
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if offset + buf.len() as u64 > self.obj.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "past the object's end",
            ));
        }
        // the version listed, whose BLAKE3 the in-order read checks
        self.bucket
            .read_into(&self.key, offset, buf, self.obj.etag.clone())
    }

    fn verified_in_order(&self) -> bool {
        true
    }

    fn try_clone(&self) -> io::Result<S3File> {
        Ok(S3File {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            shown: self.shown.clone(),
            obj: self.obj.clone(),
            next: 0,
            ahead: VecDeque::new(),
            range: VecDeque::new(),
            last: false,
            cur: Bytes::new(),
            hasher: AlignedHasher::default(),
        })
    }
}

impl Drop for S3File {
    fn drop(&mut self) {
        for h in self.ahead.drain(..) {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedHasher;

    /// Whatever the pieces, the hash is BLAKE3 of the whole: pieces around
    /// and across the alignment, the carry filled exactly, and nothing.
    #[test]
    fn an_object_hashed_in_any_pieces_hashes_as_its_bytes_do() {
        let a = AlignedHasher::ALIGN;
        let data: Vec<u8> = (0..(5 * a + 777) as u32)
            .map(|i| (i * 31 + i / 1021) as u8)
            .collect();
        let cuts: [&[usize]; 6] = [
            &[],
            &[1],
            &[a - 1, a, a + 1],
            &[a / 2, a, 3 * a + 5],
            &[7, 8, 9, 2 * a - 3],
            &[65_483, 65_484],
        ];
        for cut in cuts {
            let mut h = AlignedHasher::default();
            let mut at = 0;
            for &c in cut.iter().chain([data.len()].iter()) {
                let c = c.min(data.len());
                h.update(&data[at..c]);
                at = c;
            }
            assert_eq!(h.finalize(), blake3::hash(&data), "cut at {cut:?}");
        }
        assert_eq!(
            AlignedHasher::default().finalize(),
            blake3::hash(b""),
            "empty"
        );
    }
}
