//! The chunk lists of destination files, kept between runs so that a re-sync
//! does not read and hash a large old file again to find what it can reuse.
//!
//! One file per cached file, named by device and inode, in a private cache
//! directory (`$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry/chunks`, else
//! `~/.cache/ferry/chunks`; `FERRY_CACHE_DIR=` turns it off). An entry holds the
//! file's size, mtime and ctime when it was written and the chunk list, sealed
//! with a BLAKE3 of its bytes. It is used only while size, mtime and ctime
//! still match: any write to the file, a `touch`, a rename or a chmod changes
//! the ctime, which no user can set back. And it is only ever a hint: every
//! byte copied through it goes into the rebuilt file's end check (a keyed GMAC,
//! `chunk::RebuildCheck`), and a file that fails that check has its bases'
//! entries forgotten.

use super::chunk_list::{entry, put_entry, ChunkList, ENTRY};
use crate::chunk::{ChunkHash, MAX_CHUNK};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An entry: magic, the file's size, mtime and ctime (seconds, nanoseconds)
/// and the entry count; the entries; a seal, the BLAKE3 of the header and of
/// the entries' BLAKE3 (so that entries can be written as they come and the
/// header last).
const MAGIC: &[u8; 12] = b"ferrychunks3";
const HEADER: usize = 12 + 6 * 8;
/// Entries kept, and their total size; beyond either the oldest are removed.
/// An entry is ~3.4 MB per GiB of file (20 bytes per ~6 KiB chunk), so the
/// size bound covers the chunk lists of about 75 GiB of files.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: u64 = 256 << 20;
/// Entry bytes read or written at once (a whole number of entries).
const IO_AT_ONCE: usize = ENTRY * 3276;

fn seal(header: &[u8], entries: &blake3::Hash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header);
    h.update(entries.as_bytes());
    *h.finalize().as_bytes()
}

/// Which file an entry describes and the state it was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(f: &File) -> Option<Stamp> {
    let m = f.metadata().ok()?;
    m.is_file().then(|| Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

pub struct ChunkCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ChunkCache {
    /// The cache of this user, created (mode 0700) if needed; `None` if it is
    /// turned off or cannot be made.
    pub fn open_default() -> Option<ChunkCache> {
        let dir = match std::env::var_os("FERRY_CACHE_DIR") {
            Some(d) if d.is_empty() => return None,
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d).join("ferry/chunks"),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/ferry/chunks"),
            },
        };
        Self::open(dir)
    }

    pub fn open(dir: PathBuf) -> Option<ChunkCache> {
        Self::open_with_limit(dir, MAX_BYTES)
    }

    /// A cache whose entries may take at most `max_bytes` together.
    pub fn open_with_limit(dir: PathBuf, max_bytes: u64) -> Option<ChunkCache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        Some(ChunkCache { dir, max_bytes })
    }

    fn path(&self, s: &Stamp) -> PathBuf {
        self.dir.join(format!("{:x}-{:x}", s.dev, s.ino))
    }

    /// Reads the entry of `f`, if one exists for it in its current state:
    /// each chunk's (length, hash) goes to `each`, in order, and the list is
    /// returned only if the whole entry was sound — a caller must forget what
    /// `each` saw when it is `None`.
    pub fn load(&self, f: &File, mut each: impl FnMut(u32, &ChunkHash)) -> Option<ChunkList> {
        let s = stamp(f)?;
        let on_disk = File::open(self.path(&s)).ok()?;
        let mut header = [0u8; HEADER];
        on_disk.read_exact_at(&mut header, 0).ok()?;
        if &header[..12] != MAGIC {
            return None;
        }
        let num = |i: usize| u64::from_le_bytes(header[12 + 8 * i..20 + 8 * i].try_into().unwrap());
        let stored = Stamp {
            dev: s.dev,
            ino: s.ino,
            size: num(0),
            mtime: (num(1) as i64, num(2) as i64),
            ctime: (num(3) as i64, num(4) as i64),
        };
        let count = num(5);
        let body = count.checked_mul(ENTRY as u64)?;
        if stored != s || on_disk.metadata().ok()?.len() != HEADER as u64 + body + 32 {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; IO_AT_ONCE];
        let (mut at, mut offset) = (0u64, 0u64);
        while at < body {
            let n = (body - at).min(IO_AT_ONCE as u64) as usize;
            on_disk
                .read_exact_at(&mut buf[..n], HEADER as u64 + at)
                .ok()?;
            hasher.update(&buf[..n]);
            for e in buf[..n].chunks_exact(ENTRY) {
                let (len, hash) = entry(e);
                if len == 0 || len as usize > MAX_CHUNK {
                    return None;
                }
                each(len, &hash);
                offset += len as u64;
            }
            at += n as u64;
        }
        let mut stored_seal = [0u8; 32];
        on_disk
            .read_exact_at(&mut stored_seal, HEADER as u64 + body)
            .ok()?;
        (offset == s.size && seal(&header, &hasher.finalize()) == stored_seal)
            .then(|| ChunkList::in_file(on_disk, HEADER as u64, count))
    }

    /// Starts an entry, written as the chunks of a file come and kept by
    /// [`CacheWriter::finish`] once the file is in place. Best effort: a cache
    /// that cannot be written is simply not there next time.
    pub fn writer(self: &Arc<Self>) -> Option<CacheWriter> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ok()?;
        Some(CacheWriter {
            cache: self.clone(),
            tmp: Some(tmp),
            file,
            buf: Vec::new(),
            hasher: blake3::Hasher::new(),
            count: 0,
            bytes: 0,
            broken: false,
        })
    }

    /// Records the chunks (length, hash) of `f` as it is now.
    pub fn store(self: &Arc<Self>, f: &File, chunks: &[(u32, ChunkHash)]) {
        if let Some(mut w) = self.writer() {
            for (len, hash) in chunks {
                w.push(*len, hash);
            }
            w.finish(f);
        }
    }

    /// Forgets the entry of `f` (after a file rebuilt from it failed its check).
    pub fn forget(&self, f: &File) {
        if let Some(s) = stamp(f) {
            let _ = std::fs::remove_file(self.path(&s));
        }
    }

    /// Keeps the directory within [`MAX_ENTRIES`] entries and its byte limit,
    /// removing the least recently written entries (down to 7/8 of each, so
    /// that not every store has to trim).
    fn trim(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut bytes: u64 = entries.iter().map(|e| e.1).sum();
        let mut count = entries.len();
        if count <= MAX_ENTRIES && bytes <= self.max_bytes {
            return;
        }
        entries.sort();
        for (_, len, p) in entries {
            if count <= MAX_ENTRIES * 7 / 8 && bytes <= self.max_bytes / 8 * 7 {
                break;
            }
            let _ = std::fs::remove_file(p);
            count -= 1;
            bytes -= len;
        }
    }
}

/// An entry being written: see [`ChunkCache::writer`]. Dropped unfinished,
/// it leaves nothing behind.
pub struct CacheWriter {
    cache: Arc<ChunkCache>,
    tmp: Option<PathBuf>,
    file: File,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
    count: u64,
    /// Bytes the chunks make.
    bytes: u64,
    broken: bool,
}

impl CacheWriter {
    pub fn push(&mut self, len: u32, hash: &ChunkHash) {
        put_entry(&mut self.buf, len, hash);
        self.count += 1;
        self.bytes += len as u64;
        if self.buf.len() >= IO_AT_ONCE {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let at = HEADER as u64 + (self.count * ENTRY as u64 - self.buf.len() as u64);
        self.hasher.update(&self.buf);
        self.broken |= self.file.write_all_at(&self.buf, at).is_err();
        self.buf.clear();
    }

    /// Keeps the entry as the chunk list of `f`, if they add up to it.
    pub fn finish(mut self, f: &File) {
        self.flush();
        let Some(s) = stamp(f) else { return };
        if self.broken || self.bytes != s.size {
            return;
        }
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for n in [
            s.size,
            s.mtime.0 as u64,
            s.mtime.1 as u64,
            s.ctime.0 as u64,
            s.ctime.1 as u64,
            self.count,
        ] {
            header.extend_from_slice(&n.to_le_bytes());
        }
        let sealed = seal(&header, &self.hasher.finalize());
        let end = HEADER as u64 + self.count * ENTRY as u64;
        let tmp = self.tmp.take().expect("not finished twice");
        let written = self
            .file
            .write_all_at(&header, 0)
            .and_then(|_| self.file.write_all_at(&sealed, end))
            .and_then(|_| std::fs::rename(&tmp, self.cache.path(&s)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        self.cache.trim();
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_slice;

    fn setup() -> (tempfile::TempDir, Arc<ChunkCache>, PathBuf, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(t.path().join("cache")).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = t.path().join("f");
        std::fs::write(&p, &data).unwrap();
        (t, cache, p, data)
    }

    fn list(data: &[u8]) -> Vec<(u32, ChunkHash)> {
        chunk_slice(data).iter().map(|c| (c.len, c.hash)).collect()
    }

    /// The entry's chunks as `load` passes them on, if it is sound, and the
    /// same read back from the list it returns.
    fn load(cache: &ChunkCache, f: &File) -> Option<Vec<(u32, ChunkHash)>> {
        let mut seen = Vec::new();
        let l = cache.load(f, |len, hash| seen.push((len, *hash)))?;
        let mut again = Vec::new();
        l.read(0, l.len() as usize, &mut again).unwrap();
        assert_eq!(again, seen);
        Some(seen)
    }

    #[test]
    fn an_entry_is_found_while_the_file_is_unchanged() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        cache.store(&f, &list(&data));
        assert_eq!(load(&cache, &f).unwrap(), list(&data));
    }

    #[test]
    fn any_change_to_the_file_hides_its_entry() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        cache.store(&f, &list(&data));
        // same size, same bytes, mtime set back: the ctime still moved
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = f.metadata().unwrap().modified().unwrap();
        std::fs::write(&p, &data).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(load(&cache, &File::open(&p).unwrap()).is_none());
    }

    #[test]
    fn the_oldest_entries_go_when_the_cache_is_over_its_size() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
        // room for about two entries of this file's chunk list
        let one = (HEADER + chunk_slice(&data).len() * ENTRY + 32) as u64;
        let cache =
            Arc::new(ChunkCache::open_with_limit(t.path().join("cache"), one * 5 / 2).unwrap());
        let mut files = Vec::new();
        for i in 0..4 {
            let p = t.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            let f = File::open(&p).unwrap();
            cache.store(&f, &list(&data));
            files.push(f);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<bool> = files.iter().map(|f| load(&cache, f).is_some()).collect();
        assert_eq!(kept, [false, false, true, true], "the newest two stay");
    }

    #[test]
    fn a_damaged_or_wrong_entry_is_ignored() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        // chunks that do not add up to the file are never stored
        cache.store(&f, &list(&data[..1000]));
        assert!(load(&cache, &f).is_none());
        cache.store(&f, &list(&data));
        let entry = std::fs::read_dir(&cache.dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[HEADER + 7] ^= 1;
        std::fs::write(&entry, &bytes).unwrap();
        assert!(load(&cache, &f).is_none());
        cache.store(&f, &list(&data));
        cache.forget(&f);
        assert!(load(&cache, &f).is_none());
    }

    #[test]
    fn an_entry_given_up_half_way_leaves_nothing() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        let mut w = cache.writer().unwrap();
        for (len, hash) in &list(&data)[..3] {
            w.push(*len, hash);
        }
        // dropped unfinished (the rebuilt file failed), or finished for a
        // file its chunks do not make
        drop(w);
        let mut w = cache.writer().unwrap();
        w.push(1000, &[0; 16]);
        w.finish(&f);
        assert_eq!(std::fs::read_dir(&cache.dir).unwrap().count(), 0);
        assert!(load(&cache, &f).is_none());
    }
}
