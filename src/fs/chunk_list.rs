//! The chunk list of a basis file — (length, hash) per chunk, in file order —
//! kept where it costs no memory once the file is large.
//!
//! A rebuild looks up only the chunks near the spans it lacks, so the list is
//! read back a few hundred entries at a time. A short list stays in memory; a
//! long one moves to an unnamed temporary file (`O_TMPFILE`, gone with the
//! process, nothing left behind by a crash) in the destination directory, or
//! is read from the chunk cache's entry when it came from there.

use crate::chunk::ChunkHash;
use crate::fs::dest::unnamed_file;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes of one entry: length (u32, little-endian) and hash. The chunk
/// cache's entries hold the same.
pub const ENTRY: usize = 4 + 16;

/// Appends one entry to `buf`.
pub fn put_entry(buf: &mut Vec<u8>, len: u32, hash: &ChunkHash) {
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(hash);
}

/// The (length, hash) of an entry's [`ENTRY`] bytes.
pub fn entry(e: &[u8]) -> (u32, ChunkHash) {
    (
        u32::from_le_bytes(e[..4].try_into().unwrap()),
        e[4..ENTRY].try_into().unwrap(),
    )
}

/// A finished chunk list.
pub struct ChunkList {
    store: Store,
    count: u64,
}

enum Store {
    Memory(Vec<u8>),
    /// Entries from byte `base` of `file`.
    File {
        file: File,
        base: u64,
    },
}

impl ChunkList {
    /// `count` entries stored in `file` from byte `base` (a chunk cache entry).
    pub fn in_file(file: File, base: u64, count: u64) -> ChunkList {
        ChunkList {
            store: Store::File { file, base },
            count,
        }
    }

    pub fn empty() -> ChunkList {
        ChunkList {
            store: Store::Memory(Vec::new()),
            count: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the entries are in memory (a short list, or no file could be made).
    #[cfg(test)]
    pub fn in_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    /// Appends entries `first..first + n` to `out`.
    pub fn read(&self, first: u64, n: usize, out: &mut Vec<(u32, ChunkHash)>) -> io::Result<()> {
        if first + n as u64 > self.count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk list read past its end",
            ));
        }
        let start = first as usize * ENTRY;
        let owned;
        let bytes: &[u8] = match &self.store {
            Store::Memory(v) => &v[start..start + n * ENTRY],
            Store::File { file, base } => {
                let mut v = vec![0; n * ENTRY];
                file.read_exact_at(&mut v, base + start as u64)?;
                owned = v;
                &owned
            }
        };
        out.extend(bytes.chunks_exact(ENTRY).map(entry));
        Ok(())
    }
}

/// Bytes written to the temporary file at once.
const WRITE_AT_ONCE: usize = 64 << 10;

/// Builds a [`ChunkList`]: in memory up to `keep` entries, then in an unnamed
/// file in `spill_dir` (in memory still if there is none or it cannot be made).
pub struct ChunkListWriter {
    buf: Vec<u8>,
    file: Option<File>,
    spill_dir: Option<Arc<OwnedFd>>,
    keep: usize,
    count: u64,
}

impl ChunkListWriter {
    pub fn new(spill_dir: Option<Arc<OwnedFd>>, keep: usize) -> Self {
        ChunkListWriter {
            buf: Vec::new(),
            file: None,
            spill_dir,
            keep,
            count: 0,
        }
    }

    pub fn push(&mut self, len: u32, hash: &ChunkHash) -> io::Result<()> {
        put_entry(&mut self.buf, len, hash);
        self.count += 1;
        if self.file.is_none() && self.count as usize > self.keep {
            if let Some(dir) = self.spill_dir.take() {
                self.file = unnamed_file(&dir).ok();
            }
        }
        if let Some(f) = &mut self.file {
            if self.buf.len() >= WRITE_AT_ONCE {
                f.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<ChunkList> {
        let store = match self.file.take() {
            Some(mut f) => {
                f.write_all(&self.buf)?;
                Store::File { file: f, base: 0 }
            }
            None => {
                self.buf.shrink_to_fit();
                Store::Memory(self.buf)
            }
        };
        Ok(ChunkList {
            store,
            count: self.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<(u32, ChunkHash)> {
        (0..n)
            .map(|i| {
                (
                    i + 1,
                    *blake3::hash(&i.to_le_bytes())
                        .as_bytes()
                        .first_chunk()
                        .unwrap(),
                )
            })
            .collect()
    }

    fn write(dir: Option<Arc<OwnedFd>>, keep: usize, all: &[(u32, ChunkHash)]) -> ChunkList {
        let mut w = ChunkListWriter::new(dir, keep);
        for (len, hash) in all {
            w.push(*len, hash).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn a_long_list_moves_to_an_unnamed_file_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let fd = Arc::new(OwnedFd::from(File::open(dir.path()).unwrap()));
        let all = entries(10_000);
        let list = write(Some(fd), 100, &all);
        assert!(!list.in_memory());
        assert_eq!(list.len(), 10_000);
        // nothing named was left in the directory
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut out = Vec::new();
        list.read(0, 3, &mut out).unwrap();
        list.read(9_990, 10, &mut out).unwrap();
        assert_eq!(out[..3], all[..3]);
        assert_eq!(out[3..], all[9_990..]);
        assert!(list.read(9_995, 10, &mut out).is_err());
    }

    #[test]
    fn a_short_list_or_one_with_nowhere_to_go_stays_in_memory() {
        let all = entries(500);
        let dir = tempfile::tempdir().unwrap();
        let fd = Arc::new(OwnedFd::from(File::open(dir.path()).unwrap()));
        for list in [write(Some(fd), 1_000, &all), write(None, 10, &all)] {
            assert!(list.in_memory());
            let mut out = Vec::new();
            list.read(0, 500, &mut out).unwrap();
            assert_eq!(out, all);
        }
    }
}
