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
//! byte copied through it is hashed again into the rebuilt file's BLAKE3, and a
//! file that fails that check has its bases' entries forgotten.

use crate::chunk::{Chunk, ChunkHash, MAX_CHUNK};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

const MAGIC: &[u8; 12] = b"ferrychunks2";
const HEADER: usize = 12 + 5 * 8 + 8;
const ENTRY: usize = 4 + 16;
/// Entries kept, and their total size; beyond either the oldest are removed.
/// An entry is ~3.4 MB per GiB of file (20 bytes per ~6 KiB chunk), so the
/// size bound covers the chunk lists of about 75 GiB of files.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: u64 = 256 << 20;

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

    /// The chunks of `f`, if an entry for it in its current state exists.
    pub fn load(&self, f: &File) -> Option<Vec<Chunk>> {
        let s = stamp(f)?;
        let bytes = std::fs::read(self.path(&s)).ok()?;
        let body_len = bytes.len().checked_sub(32)?;
        let (body, seal) = bytes.split_at(body_len);
        if body.len() < HEADER || blake3::hash(body).as_bytes() != seal || &body[..12] != MAGIC {
            return None;
        }
        let num = |i: usize| u64::from_le_bytes(body[12 + 8 * i..20 + 8 * i].try_into().unwrap());
        let stored = Stamp {
            dev: s.dev,
            ino: s.ino,
            size: num(0),
            mtime: (num(1) as i64, num(2) as i64),
            ctime: (num(3) as i64, num(4) as i64),
        };
        let count = num(5) as usize;
        if stored != s || body.len() != HEADER + count.checked_mul(ENTRY)? {
            return None;
        }
        let mut chunks = Vec::with_capacity(count);
        let mut offset = 0u64;
        for e in body[HEADER..].chunks_exact(ENTRY) {
            let len = u32::from_le_bytes(e[..4].try_into().unwrap());
            if len == 0 || len as usize > MAX_CHUNK {
                return None;
            }
            chunks.push(Chunk {
                offset,
                len,
                hash: e[4..].try_into().unwrap(),
            });
            offset += len as u64;
        }
        (offset == s.size).then_some(chunks)
    }

    /// Records the chunks (length, BLAKE3) of `f` as it is now. Best effort:
    /// a cache that cannot be written is simply not there next time.
    pub fn store(&self, f: &File, chunks: &[(u32, ChunkHash)]) {
        let Some(s) = stamp(f) else { return };
        if chunks.iter().map(|c| c.0 as u64).sum::<u64>() != s.size {
            return;
        }
        let mut body = Vec::with_capacity(HEADER + chunks.len() * ENTRY + 32);
        body.extend_from_slice(MAGIC);
        for n in [
            s.size,
            s.mtime.0 as u64,
            s.mtime.1 as u64,
            s.ctime.0 as u64,
            s.ctime.1 as u64,
            chunks.len() as u64,
        ] {
            body.extend_from_slice(&n.to_le_bytes());
        }
        for (len, hash) in chunks {
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(hash);
        }
        let seal = blake3::hash(&body);
        body.extend_from_slice(seal.as_bytes());
        let path = self.path(&s);
        let tmp = self.dir.join(format!(".tmp-{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut t| t.write_all(&body))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        self.trim();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_slice;

    fn setup() -> (tempfile::TempDir, ChunkCache, PathBuf, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(t.path().join("cache")).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = t.path().join("f");
        std::fs::write(&p, &data).unwrap();
        (t, cache, p, data)
    }

    fn list(data: &[u8]) -> Vec<(u32, ChunkHash)> {
        chunk_slice(data).iter().map(|c| (c.len, c.hash)).collect()
    }

    #[test]
    fn an_entry_is_found_while_the_file_is_unchanged() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        cache.store(&f, &list(&data));
        assert_eq!(cache.load(&f).unwrap(), chunk_slice(&data));
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
        assert!(cache.load(&File::open(&p).unwrap()).is_none());
    }

    #[test]
    fn the_oldest_entries_go_when_the_cache_is_over_its_size() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
        // room for about two entries of this file's chunk list
        let one = (HEADER + chunk_slice(&data).len() * ENTRY + 32) as u64;
        let cache = ChunkCache::open_with_limit(t.path().join("cache"), one * 5 / 2).unwrap();
        let mut files = Vec::new();
        for i in 0..4 {
            let p = t.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            let f = File::open(&p).unwrap();
            cache.store(&f, &list(&data));
            files.push(f);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<bool> = files.iter().map(|f| cache.load(f).is_some()).collect();
        assert_eq!(kept, [false, false, true, true], "the newest two stay");
    }

    #[test]
    fn a_damaged_or_wrong_entry_is_ignored() {
        let (_t, cache, p, data) = setup();
        let f = File::open(&p).unwrap();
        // chunks that do not add up to the file are never stored
        cache.store(&f, &list(&data[..1000]));
        assert!(cache.load(&f).is_none());
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
        assert!(cache.load(&f).is_none());
        cache.store(&f, &list(&data));
        cache.forget(&f);
        assert!(cache.load(&f).is_none());
    }
}
