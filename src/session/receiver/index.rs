//! Indexing a basis on its own thread: every basis file's spans and chunk
//! list (from the chunk cache when it has them), every chunk by hash while they
//! are few, and windows of chunks near where a lacked span belongs. Not for
//! choosing the basis ([`super::basis`]) or rebuilding from it
//! ([`super::rebuild`]).

use crate::chunk::{Chunk, ChunkHash, Chunker};
use crate::delta::{self, ChunkIndex, SpanCollector, SpanIndex, SpanLoc};
use crate::fs::chunk_cache::ChunkCache;
use crate::fs::chunk_list::{ChunkList, ChunkListWriter};
use crate::store::destination::BasisFile;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};

/// The basis a delta rebuild reads from. Its memory does not grow with its
/// size past [`FULL_INDEX_CHUNKS`]: the spans are in memory (~100 bytes per
/// ~768 KiB), each file's chunk list in a file, and the chunks of a lacked
/// span are looked for in a window of the basis around where it belongs.
pub(super) struct Basis<B> {
    pub(super) files: Vec<B>,
    /// Each file's chunk list.
    pub(super) lists: Vec<ChunkList>,
    pub(super) spans: SpanIndex,
    /// Every chunk by hash, while the bases have few enough.
    pub(super) full: Option<ChunkIndex>,
    /// Which of `files` were indexed from the chunk cache.
    pub(super) cached: Vec<usize>,
    /// Whether the first of `files` is the one the new file replaces (the old
    /// file at its path, or a partial one).
    pub(super) replaced: bool,
}

/// Bases of up to this many chunks together (~384 MiB) have all their chunks
/// indexed in memory (~4 MiB), so that a chunk is found wherever it moved;
/// past it, only near where it belongs (see [`SpanIndex::window`]). Also the
/// entries a chunk list keeps in memory before it moves to a file.
// (by hand: a derived Default would ask `B: Default`)
impl<B> Default for Basis<B> {
    fn default() -> Self {
        Basis {
            files: Vec::new(),
            lists: Vec::new(),
            spans: SpanIndex::default(),
            full: None,
            cached: Vec::new(),
            replaced: false,
        }
    }
}

pub(super) const FULL_INDEX_CHUNKS: usize = 1 << 16;

/// What indexing one basis file collects: its spans, and its chunks while
/// there is `room` for them in the full index.
pub(super) struct FileIndexer {
    pub(super) spans: SpanCollector,
    pub(super) few: Option<Vec<Chunk>>,
    pub(super) room: usize,
    pub(super) offset: u64,
}

impl FileIndexer {
    pub(super) fn new(room: Option<usize>) -> Self {
        FileIndexer {
            spans: SpanCollector::default(),
            few: room.map(|_| Vec::new()),
            room: room.unwrap_or(0),
            offset: 0,
        }
    }

    pub(super) fn push(&mut self, len: u32, hash: &ChunkHash) {
        self.spans.push(len, hash);
        if let Some(v) = &mut self.few {
            v.push(Chunk {
                offset: self.offset,
                len,
                hash: *hash,
            });
            if v.len() > self.room {
                self.few = None;
            }
        }
        self.offset += len as u64;
    }
}

/// Reads every basis file once (or its chunk cache entry), collecting its
/// spans and chunk list, and every chunk by hash while there are few enough.
pub(super) fn index_bases<B: BasisFile>(
    files: Vec<B>,
    cache: Option<&ChunkCache>,
    spill: Option<Arc<OwnedFd>>,
) -> Basis<B> {
    let mut b = Basis {
        full: Some(ChunkIndex::default()),
        ..Basis::default()
    };
    for (i, f) in files.iter().enumerate() {
        let room = b.full.as_ref().map(|ix| FULL_INDEX_CHUNKS - ix.len());
        let mut ix = FileIndexer::new(room);
        let cached = cache.zip(f.as_file());
        let list = match cached.and_then(|(c, f)| c.load(f, |len, hash| ix.push(len, hash))) {
            Some(list) => {
                b.cached.push(i);
                list
            }
            None => {
                ix = FileIndexer::new(room);
                let mut list = ChunkListWriter::new(spill.clone(), FULL_INDEX_CHUNKS);
                let mut ok = true;
                chunk_basis(f, spill.clone(), |len, hash| {
                    ix.push(len, hash);
                    ok &= list.push(len, hash).is_ok();
                });
                match list.finish() {
                    Ok(list) if ok => list,
                    // a list that could not be kept: this file offers nothing
                    _ => {
                        ix = FileIndexer::new(room);
                        ChunkList::empty()
                    }
                }
            }
        };
        b.spans.add_file(ix.spans.finish());
        match (&mut b.full, ix.few) {
            (Some(index), Some(chunks)) => chunks.iter().for_each(|c| index.add(i as u32, c)),
            _ => b.full = None,
        }
        b.lists.push(list);
    }
    b.files = files;
    b
}

/// Basis files at least this large are chunked by two threads, one from the
/// start and one from the middle.
pub(super) const TWO_THREAD_CHUNKING: u64 = 64 << 20;

/// How many of the second thread's first cuts the first thread tries to meet.
pub(super) const SYNC_CUTS: usize = 64;

/// Chunks a basis file, giving each chunk's length and hash to `each` in file
/// order: the same chunks one pass from the start would give. A large file is
/// chunked by two threads (the receiver otherwise indexes its old file on one
/// core while the other waits): one from the middle into a chunk list, the
/// other from the start until one of its cuts meets one of the first thread's
/// (content-defined cuts depend only on the bytes after the last cut, so from
/// a common cut on both find the same chunks); the rest then comes from the
/// list. Where no cut meets (long runs cut only at the maximum size, as in
/// zeros), the first thread carries on to the end alone. A read error ends
/// the chunks early: a basis only offers bytes to reuse.
pub(super) fn chunk_basis<B: BasisFile>(
    f: &B,
    spill: Option<Arc<OwnedFd>>,
    each: impl FnMut(u32, &ChunkHash),
) {
    let two = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    chunk_basis_from(
        f,
        spill,
        if two { TWO_THREAD_CHUNKING } else { u64::MAX },
        each,
    )
}

/// [`chunk_basis`], with two threads for files of at least `two_from` bytes.
pub(super) fn chunk_basis_from<B: BasisFile>(
    f: &B,
    spill: Option<Arc<OwnedFd>>,
    two_from: u64,
    mut each: impl FnMut(u32, &ChunkHash),
) {
    let size = f.len().unwrap_or(0);
    if size < two_from {
        return chunk_from(f, 0, |c| {
            each(c.len, &c.hash);
            true
        });
    }
    let mid = size / 2;
    let stop = &std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (starts_tx, starts_rx) = mpsc::sync_channel::<Vec<u64>>(1);
        let second = std::thread::Builder::new()
            .name("ferry-basis-2".into())
            .spawn_scoped(scope, move || {
                // where its first SYNC_CUTS chunks start, sent once known
                let mut starts = Some(Vec::with_capacity(SYNC_CUTS));
                let mut list = ChunkListWriter::new(spill, FULL_INDEX_CHUNKS);
                let mut ok = true;
                chunk_from(f, mid, |c| {
                    if let Some(v) = &mut starts {
                        v.push(mid + c.offset);
                        if v.len() == SYNC_CUTS {
                            let _ = starts_tx.send(starts.take().expect("just seen"));
                        }
                    }
                    ok = list.push(c.len, &c.hash).is_ok();
                    ok && !stop.load(std::sync::atomic::Ordering::Relaxed)
                });
                if let Some(v) = starts {
                    let _ = starts_tx.send(v);
                }
                list.finish().ok().filter(|_| ok)
            });
        // the first: from the start until one of its cuts is where one of
        // the second's chunks starts (then `met` is that chunk's number)
        let mut met = None;
        let mut starts: Option<Vec<u64>> = None;
        chunk_from(f, 0, |c| {
            each(c.len, &c.hash);
            let end = c.offset + c.len as u64;
            if end < mid || second.is_err() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                return true;
            }
            let starts = starts.get_or_insert_with(|| starts_rx.recv().unwrap_or_default());
            match starts.binary_search(&end) {
                Ok(k) => {
                    met = Some(k as u64);
                    return false;
                }
                // past the cuts it could meet: on alone to the end
                Err(k) if k == starts.len() => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed)
                }
                Err(_) => {}
            }
            true
        });
        let rest = second.ok().and_then(|t| t.join().ok().flatten());
        let (Some(mut next), Some(rest)) = (met, rest) else {
            return;
        };
        let mut batch = Vec::new();
        while next < rest.len() {
            batch.clear();
            let n = (rest.len() - next).min(4096) as usize;
            if rest.read(next, n, &mut batch).is_err() {
                return;
            }
            batch.iter().for_each(|(len, hash)| each(*len, hash));
            next += n as u64;
        }
    });
}

/// Chunks `f` from `pos` to its end (or a read error), while `go` wants more;
/// chunk offsets are from `pos`.
pub(super) fn chunk_from<B: BasisFile>(f: &B, pos: u64, mut go: impl FnMut(&Chunk) -> bool) {
    let mut chunker = Chunker::chunks_only(ReadAt { file: f, pos });
    while let Ok(Some((c, _))) = chunker.next_chunk() {
        if !go(&c) {
            return;
        }
    }
}

/// Reads a file from `pos` on with `pread`, leaving its offset alone (two
/// threads read the same file).
pub(super) struct ReadAt<'f, B> {
    pub(super) file: &'f B,
    pub(super) pos: u64,
}

impl<B: BasisFile> Read for ReadAt<'_, B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The basis chunks near a run of lacked spans between the known spans
/// `prev` and `next` (see [`SpanIndex::window`]), indexed by hash; the last
/// window is kept, as runs close together often share it.
pub(super) fn window_index<'w, B>(
    kept: &'w mut Option<(delta::Window, ChunkIndex)>,
    basis: &Basis<B>,
    prev: Option<SpanLoc>,
    next: Option<SpanLoc>,
) -> &'w ChunkIndex {
    let wanted = basis.spans.window(prev, next);
    if kept.as_ref().is_none_or(|(w, _)| *w != wanted) {
        let mut index = ChunkIndex::default();
        let mut entries = Vec::new();
        for (b, range) in &wanted {
            let spans = &basis.spans.spans(*b)[range.clone()];
            let (Some(start), Some(last)) = (spans.first(), spans.last()) else {
                continue;
            };
            let count = (last.first + last.chunks as u64 - start.first) as usize;
            entries.clear();
            // unreadable: the window offers nothing, the chunks are asked for
            if basis.lists[*b as usize]
                .read(start.first, count, &mut entries)
                .is_err()
            {
                continue;
            }
            let mut offset = start.offset;
            for &(len, hash) in &entries {
                index.add(*b, &Chunk { offset, len, hash });
                offset += len as u64;
            }
        }
        *kept = Some((wanted, index));
    }
    &kept.as_ref().expect("just set").1
}

#[cfg(test)]
mod tests {
    use super::chunk_basis_from;
    use crate::chunk::tests::random;
    use crate::chunk::{chunk_slice, ChunkHash};
    use std::io::Write;

    #[test]
    fn a_basis_chunked_by_two_threads_gives_the_chunks_of_one_pass() {
        let mib = 1 << 20;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("random", random(6 * mib, 1)),
            // cut only at the maximum size, the middle off their grid: no
            // cut meets, the first thread goes on alone
            ("zeros", vec![0; 6 * mib + 1000]),
            ("zeros across the middle", {
                let mut v = random(2 * mib, 2);
                v.extend(vec![0u8; 2 * mib]);
                v.extend(random(2 * mib, 3));
                v
            }),
            ("random, then zeros from the middle", {
                let mut v = random(3 * mib, 4);
                v.extend(vec![0u8; 3 * mib]);
                v
            }),
        ];
        for (what, data) in cases {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let want: Vec<(u32, ChunkHash)> =
                chunk_slice(&data).iter().map(|c| (c.len, c.hash)).collect();
            let mut got = Vec::new();
            chunk_basis_from(&f, None, mib as u64, |len, hash| got.push((len, *hash)));
            assert_eq!(got.len(), want.len(), "{what}: chunk count");
            assert!(got == want, "{what}: chunks differ");
        }
    }
}
