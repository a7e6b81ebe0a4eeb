//! Content-defined chunking (a gear rolling hash, as in FastCDC), chunk names
//! (XXH3-128) and the end-to-end checks of files: [`WholeCheck`] (XXH3-128)
//! for a file sent whole, [`RebuildCheck`] (a keyed GMAC per 64 KiB piece) for
//! a file rebuilt from old data, and [`StreamCheck`] to compute the latter on
//! a thread of its own.
//!
//! Boundaries depend only on the bytes near them, so an insertion or deletion
//! moves no boundary beyond the edit: both sides of a transfer cut the same
//! content into the same chunks wherever it sits in a file. Sizes: 4 KiB
//! minimum, about 6 KiB on average, 32 KiB maximum, with one cut condition
//! everywhere (no normalized chunking); why these, as measured, is in
//! bench/NOTES.md, "Chunk sizes and the cut condition".
//!
//! Pure code over byte slices and `Read`; no I/O of its own. Not for: which
//! chunks a receiver can reuse or how a file is rebuilt (`delta`), nor the
//! check of a file sent in segments (the BLAKE3 of its segments' check
//! values, kept by the sessions).

use crate::check::{Check, CheckValue};
use std::io::{self, Read};
use std::sync::mpsc;

pub const MIN_CHUNK: usize = 4 << 10;
/// The expected chunk size: the minimum plus one in 2^11 positions.
pub const AVG_CHUNK: usize = 6 << 10;
pub const MAX_CHUNK: usize = 32 << 10;

/// A cut where the top 11 spread bits of the gear hash are all zero: one in
/// 2 KiB positions, past the minimum.
const MASK: u64 = spread_mask(11);

/// `bits` one-bits at every other position from bit 63 down, where each bit
/// depends on a window of the last several dozen bytes.
const fn spread_mask(bits: u32) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < bits {
        m |= 1 << (63 - 2 * i);
        i += 1;
    }
    m
}

const fn gear_table() -> [u64; 256] {
    // splitmix64: a fixed, well-mixed table; both sides must use the same one.
    let mut t = [0u64; 256];
    let mut state: u64 = 0x6665_7272_7963_6463; // "ferrycdc"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

static GEAR: [u64; 256] = gear_table();

/// Length of the first chunk of `data`. `data` holds either at least
/// [`MAX_CHUNK`] bytes or everything left of the stream.
pub fn cut(data: &[u8]) -> usize {
    let n = data.len();
    if n <= MIN_CHUNK {
        return n;
    }
    let end = n.min(MAX_CHUNK);
    let window = &data[MIN_CHUNK..end];
    let mut fp: u64 = 0;
    // two bytes a step, the hash moved over both at once: the hash after two
    // bytes is (fp << 2) + (g0 << 1) + g1, whose last two terms do not wait
    // for fp, so each step waits on one shift and one add instead of two of
    // each; the hash after the first byte is worked out beside it
    let mut pairs = window.chunks_exact(2);
    let mut at = MIN_CHUNK;
    for pair in &mut pairs {
        let (g0, g1) = (GEAR[pair[0] as usize], GEAR[pair[1] as usize]);
        let first = (fp << 1).wrapping_add(g0);
        fp = (fp << 2).wrapping_add((g0 << 1).wrapping_add(g1));
        if first & MASK == 0 {
            return at + 1;
        }
        if fp & MASK == 0 {
            return at + 2;
        }
        at += 2;
    }
    for &b in pairs.remainder() {
        fp = (fp << 1).wrapping_add(GEAR[b as usize]);
        if fp & MASK == 0 {
            return at + 1;
        }
        at += 1;
    }
    end
}

/// A chunk's name: the 128-bit XXH3 of its bytes (rsync names blocks with
/// xxh128 too). It only finds chunks to reuse; a file rebuilt from chunks is
/// checked end to end with a [`RebuildCheck`], keyed so that bytes chosen to
/// collide with a chunk name still fail it.
/// BLAKE3, the chunk name before, ran at 1.9 GiB/s over pieces of ~6 KiB here;
/// XXH3 at many times that.
pub type ChunkHash = [u8; 16];

/// The [`ChunkHash`] of `data`.
pub fn chunk_hash(data: &[u8]) -> ChunkHash {
    xxhash_rust::xxh3::xxh3_128(data).to_le_bytes()
}

/// The end-to-end check of a file sent whole (nothing on the receiver reused):
/// the 128-bit XXH3 of its bytes, as rsync checks whole files with xxh128,
/// in the first half of the 32 bytes a file's end carries. It catches what goes
/// wrong between the sender's read and the receiver's write (a misplaced or
/// stale buffer, memory errors); the connection is authenticated by TLS or ssh,
/// and bytes that came whole from the sender could be chosen by nobody else.
/// A file rebuilt from old data is checked with a [`RebuildCheck`] instead:
/// there the receiver's own bytes were matched by XXH3, and whoever could write
/// them might have made them collide. XXH3 ran at 22 GiB/s here, the keyed
/// check at 7–8 GiB/s.
///
/// # Holes (`-S`, [`crate::proto::Message::Hole`])
/// A sparse file's holes are not hashed as zeros: [`hole`](Self::hole)
/// records each as an extent, so that the check costs per data byte and per
/// hole, not per byte of apparent size. A file with holes is checked with
/// two XXH3-128s ([`Check::Sparse`]): the first 16 bytes over its data bytes
/// in order (what this check hashes for any file, less the holes' zeros),
/// the last 16 over its holes, each a fixed 16-byte record (offset, length,
/// little-endian; adjacent holes merged into one), then the file's size.
///
/// Why that is sound: a file is determined by its size, its holes (sorted,
/// disjoint) and its data bytes in order, since every byte outside the holes
/// is the next data byte. Fixed-width records make the hole stream a
/// one-to-one encoding of the holes, so two files that differ in their
/// holes differ in what the second hash reads, and two that differ only in
/// their data differ in what the first reads (XXH3 is not made to resist a
/// chosen collision; nor need it be here, for the reason above: every byte
/// and hole came whole from the authenticated sender). Both ends hash the
/// same content: the sender the extents `SEEK_DATA`/`SEEK_HOLE` reported,
/// the receiver each hole at the offset where it actually extended its file
/// (its own write position, not the one the message names), so a receiver
/// that lost, doubled, moved or resized a hole hashes another record stream
/// (or other data-run lengths around it) and fails the check. Merging
/// adjacent holes makes the value independent of how the sender cut a hole
/// into messages. A file with no holes gets exactly [`Check::WholeFile`]'s
/// value. (XXH3 of a run of zeros has no closed form, which is why holes are
/// records rather than zeros hashed without reading them.)
#[derive(Clone)]
pub struct WholeCheck {
    data: xxhash_rust::xxh3::Xxh3,
    /// Data bytes hashed so far.
    data_len: u64,
    /// The holes recorded so far, once there is one.
    holes: Option<Box<HoleRecords>>,
}

/// The hole half of a [`WholeCheck`]: the records hashed so far, and the
/// last hole, held back until data follows it (a hole right after it is
/// merged into it).
#[derive(Clone)]
struct HoleRecords {
    hash: xxhash_rust::xxh3::Xxh3,
    /// The last hole: (offset, length), not hashed yet.
    open: Option<(u64, u64)>,
    /// Bytes of holes so far.
    zeros: u64,
}

impl HoleRecords {
    fn close(&mut self) {
        if let Some((offset, len)) = self.open.take() {
            let mut record = [0u8; 16];
            record[..8].copy_from_slice(&offset.to_le_bytes());
            record[8..].copy_from_slice(&len.to_le_bytes());
            self.hash.update(&record);
        }
    }
}

impl Default for WholeCheck {
    fn default() -> Self {
        WholeCheck {
            data: xxhash_rust::xxh3::Xxh3::new(),
            data_len: 0,
            holes: None,
        }
    }
}

impl WholeCheck {
    pub fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.data.update(data);
        self.data_len += data.len() as u64;
        if let Some(h) = &mut self.holes {
            h.close();
        }
    }

    /// A hole of `len` bytes at `offset` (where the file's bytes so far end:
    /// the caller checks that; this records what it is told).
    pub fn hole(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let h = self.holes.get_or_insert_with(|| {
            Box::new(HoleRecords {
                hash: xxhash_rust::xxh3::Xxh3::new(),
                open: None,
                zeros: 0,
            })
        });
        match &mut h.open {
            Some((at, n)) if *at + *n == offset => *n += len,
            _ => {
                h.close();
                h.open = Some((offset, len));
            }
        }
        h.zeros = h.zeros.saturating_add(len);
    }

    /// Whether a hole was recorded (the value is then a [`Check::Sparse`]).
    pub fn has_holes(&self) -> bool {
        self.holes.is_some()
    }

    pub fn finish(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&self.data.digest128().to_le_bytes());
        if let Some(h) = &self.holes {
            let mut h = h.clone();
            h.close();
            // the size: data and holes
            let size = self.data_len.saturating_add(h.zeros);
            h.hash.update(&size.to_le_bytes());
            out[16..].copy_from_slice(&h.hash.digest128().to_le_bytes());
        }
        out
    }

    /// The check of a file sent whole: what its `FileEnd` carries.
    pub fn file_value(&self) -> CheckValue {
        let check = match self.holes {
            Some(_) => Check::Sparse,
            None => Check::WholeFile,
        };
        CheckValue::new(check, self.finish())
    }

    /// The check of one segment: what its `SegmentEnd` carries.
    pub fn segment_value(&self) -> CheckValue {
        CheckValue::new(Check::Segment, self.finish())
    }

    /// The check of `data` in one piece.
    pub fn of(data: &[u8]) -> [u8; 32] {
        let mut c = WholeCheck::default();
        c.update(data);
        c.finish()
    }
}

/// The key of a [`RebuildCheck`]: drawn by the receiver for each file it
/// rebuilds, sent to the sender inside the authenticated connection.
pub type RebuildKey = [u8; 16];

/// A fresh [`RebuildKey`], or `None` if the system gave no random bytes.
pub fn new_rebuild_key() -> Option<RebuildKey> {
    let mut key = [0u8; 16];
    aws_lc_rs::rand::fill(&mut key).ok()?;
    Some(key)
}

/// Bytes per [`RebuildCheck`] piece.
const CHECK_PIECE: usize = 64 << 10;

/// The end-to-end check of a file rebuilt from old data: each 64 KiB piece of
/// the file authenticated with GMAC (AES-128-GCM over no plaintext, the piece
/// as associated data, its index as nonce) under a key the receiver drew for
/// this file, and the tags with the length hashed together (BLAKE3).
///
/// Why a keyed check: the receiver's old bytes were matched to the sender's
/// chunks by XXH3, and whoever could write those bytes might have made them
/// collide. They wrote them before the key existed and never see it (it
/// travels only inside the TLS or ssh connection), and two different 64 KiB
/// pieces fixed before the key is drawn get the same tag with probability at
/// most 2^-116. That is what the BLAKE3 of the whole file this replaces
/// guarded against, at twice its speed here (aws-lc's GMAC 7.1–7.8 GiB/s, the
/// `blake3` crate 3.7–4.0 GiB/s, one core, 16 KiB to 1 MiB pieces): ~0.5 s
/// of CPU less for a 2 GiB re-sync, both ends together.
pub struct RebuildCheck {
    key: aws_lc_rs::aead::LessSafeKey,
    /// The start of a piece not yet complete.
    carry: Vec<u8>,
    pieces: u64,
    len: u64,
    tags: blake3::Hasher,
}

impl RebuildCheck {
    pub fn new(key: &RebuildKey) -> Self {
        let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, key)
            .expect("a 16-byte AES-128 key");
        RebuildCheck {
            key: aws_lc_rs::aead::LessSafeKey::new(key),
            carry: Vec::new(),
            pieces: 0,
            len: 0,
            tags: blake3::Hasher::new(),
        }
    }

    /// Takes the stream's next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let take = (CHECK_PIECE - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < CHECK_PIECE {
                return;
            }
            let piece = std::mem::take(&mut self.carry);
            self.piece(&piece);
            self.carry = piece;
            self.carry.clear();
        }
        let whole = data.len() / CHECK_PIECE * CHECK_PIECE;
        for piece in data[..whole].chunks_exact(CHECK_PIECE) {
            self.piece(piece);
        }
        self.carry.extend_from_slice(&data[whole..]);
    }

    fn piece(&mut self, piece: &[u8]) {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.pieces.to_le_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(piece),
                &mut [],
            )
            .expect("GMAC of at most 64 KiB");
        self.tags.update(tag.as_ref());
        self.pieces += 1;
        self.len += piece.len() as u64;
    }

    /// The check of everything given.
    pub fn finish(mut self) -> [u8; 32] {
        if !self.carry.is_empty() || self.pieces == 0 {
            let last = std::mem::take(&mut self.carry);
            self.piece(&last);
        }
        self.tags.update(&self.len.to_le_bytes());
        *self.tags.finalize().as_bytes()
    }
}

/// The [`RebuildCheck`] of a stream of bytes given in order: for a large
/// stream, computed on a thread of its own while the caller goes on to its
/// next bytes. A receiver rebuilding a large file reads old bytes, checks and
/// writes them on one thread, the slower end of a re-sync; the check (BLAKE3
/// then) was a third of that thread's time. Memory: up to [`STREAM_BUFFERS`]
/// buffers of [`STREAM_BUFFER`] bytes, reused.
pub struct StreamCheck(Hashing);

enum Hashing {
    Here {
        check: Box<RebuildCheck>,
        scratch: Vec<u8>,
    },
    Thread {
        /// The buffer being filled, and how much of it is.
        cur: Vec<u8>,
        used: usize,
        /// Buffers to check, in order; those checked come back.
        tx: mpsc::SyncSender<(Vec<u8>, usize)>,
        back: mpsc::Receiver<Vec<u8>>,
        made: usize,
        thread: std::thread::JoinHandle<[u8; 32]>,
    },
}

/// The size of one buffer handed to a hashing thread.
pub const STREAM_BUFFER: usize = 1 << 20;
/// Buffers a hashing thread and its caller share at most.
const STREAM_BUFFERS: usize = 4;
/// Streams expected to be shorter are checked where they are given.
const STREAM_THREAD_MIN: u64 = 16 << 20;

impl StreamCheck {
    /// The check under `key` of a stream of about `expected` bytes.
    pub fn new(expected: u64, key: &RebuildKey) -> Self {
        let two = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if expected >= STREAM_THREAD_MIN && two {
            let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(STREAM_BUFFERS - 2);
            let (back_tx, back) = mpsc::channel();
            let mut check = RebuildCheck::new(key);
            let spawned = std::thread::Builder::new()
                .name("ferry-hash".into())
                .spawn(move || {
                    for (buf, used) in rx {
                        check.update(&buf[..used]);
                        let _ = back_tx.send(buf);
                    }
                    check.finish()
                });
            if let Ok(thread) = spawned {
                return StreamCheck(Hashing::Thread {
                    cur: vec![0; STREAM_BUFFER],
                    used: 0,
                    tx,
                    back,
                    made: 1,
                    thread,
                });
            }
        }
        StreamCheck(Hashing::Here {
            check: Box::new(RebuildCheck::new(key)),
            scratch: Vec::new(),
        })
    }

    /// Room for the next `n` bytes of the stream (at most
    /// [`STREAM_BUFFER`]), which `fill` writes; they are checked as given and
    /// returned for the caller to use.
    pub fn next<E>(
        &mut self,
        n: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<&[u8], E> {
        assert!(n <= STREAM_BUFFER, "at most one buffer at a time");
        match &mut self.0 {
            Hashing::Here { check, scratch } => {
                if scratch.len() < n {
                    scratch.resize(n, 0);
                }
                let b = &mut scratch[..n];
                fill(b)?;
                check.update(b);
                Ok(b)
            }
            Hashing::Thread {
                cur,
                used,
                tx,
                back,
                made,
                ..
            } => {
                if *used + n > STREAM_BUFFER {
                    // hand over the full buffer; take one checked already, a
                    // new one while there are few, else wait for one
                    let next = match back.try_recv() {
                        Ok(b) => b,
                        Err(_) if *made < STREAM_BUFFERS => {
                            *made += 1;
                            vec![0; STREAM_BUFFER]
                        }
                        Err(_) => back.recv().unwrap_or_else(|_| vec![0; STREAM_BUFFER]),
                    };
                    let full = std::mem::replace(cur, next);
                    // (should the thread be gone, finish reports a wrong hash)
                    let _ = tx.send((full, std::mem::take(used)));
                }
                let b = &mut cur[*used..*used + n];
                fill(b)?;
                *used += n;
                Ok(b)
            }
        }
    }

    /// Takes `data` as the stream's next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Hashing::Here { check, .. } => {
                check.update(data);
            }
            Hashing::Thread { .. } => {
                for piece in data.chunks(STREAM_BUFFER) {
                    let _ = self.next(piece.len(), |b| {
                        b.copy_from_slice(piece);
                        Ok::<_, ()>(())
                    });
                }
            }
        }
    }

    /// The check of a rebuilt file: what its `FileEnd` must carry.
    pub fn value(self) -> CheckValue {
        CheckValue::new(Check::Rebuilt, self.finish())
    }

    /// The check of everything given.
    pub fn finish(self) -> [u8; 32] {
        match self.0 {
            Hashing::Here { check, .. } => check.finish(),
            Hashing::Thread {
                cur,
                used,
                tx,
                thread,
                ..
            } => {
                let _ = tx.send((cur, used));
                drop(tx);
                // a thread that died cannot vouch for anything: no hash
                // matches all zeros but by chance
                thread.join().unwrap_or([0; 32])
            }
        }
    }
}

/// One chunk of a stream: where it is and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub hash: ChunkHash,
}

/// Splits a readable stream into chunks, hashing each, and the whole stream too.
/// Memory: one buffer of a few maximum-size chunks, reused.
pub struct Chunker<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    offset: u64,
    /// The whole stream's [`RebuildCheck`], unless only the chunks are wanted.
    whole: Option<RebuildCheck>,
    /// `buf[..checked]` is in `whole`: up to the last [`CHECK_PIECE`]
    /// boundary of the stream read so far (all of it at the end), so that the
    /// check takes whole pieces straight from this buffer rather than
    /// gathering them in one of its own.
    checked: usize,
}

impl<R: Read> Chunker<R> {
    /// A chunker that also checks the whole stream under `key`.
    pub fn new(inner: R, key: &RebuildKey) -> Self {
        Chunker {
            whole: Some(RebuildCheck::new(key)),
            ..Self::chunks_only(inner)
        }
    }

    /// A chunker that does not also check the whole stream (indexing a basis
    /// needs only the chunks).
    pub fn chunks_only(inner: R) -> Self {
        Chunker {
            inner,
            buf: vec![0; 4 * MAX_CHUNK + CHECK_PIECE],
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            whole: None,
            checked: 0,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.buf.len() - self.start < MAX_CHUNK {
            // (what the whole stream's check has not taken yet stays too:
            // less than CHECK_PIECE before the end)
            let keep = match self.whole {
                Some(_) => self.start.min(self.checked),
                None => self.start,
            };
            self.buf.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.start -= keep;
            self.checked = self.checked.saturating_sub(keep);
        }
        while !self.eof && self.end - self.start < MAX_CHUNK {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // the whole stream is checked as it is read, in whole pieces
        if let Some(w) = &mut self.whole {
            let upto = if self.eof {
                self.end
            } else {
                // where buf[0] lies in the stream
                let base = self.offset - self.start as u64;
                let align = CHECK_PIECE as u64;
                ((base + self.end as u64) / align * align).saturating_sub(base) as usize
            };
            if upto > self.checked {
                w.update(&self.buf[self.checked..upto]);
                self.checked = upto;
            }
        }
        Ok(())
    }

    /// The next chunk and its bytes, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<(Chunk, &[u8])>> {
        self.fill()?;
        if self.start == self.end {
            return Ok(None);
        }
        let len = cut(&self.buf[self.start..self.end]);
        let data = &self.buf[self.start..self.start + len];
        let chunk = Chunk {
            offset: self.offset,
            len: len as u32,
            hash: chunk_hash(data),
        };
        self.offset += len as u64;
        self.start += len;
        Ok(Some((chunk, data)))
    }

    /// Total bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// The [`RebuildCheck`] of the whole stream, once `next_chunk` has
    /// returned `None` (made by [`Chunker::new`]).
    pub fn whole_check(&mut self) -> CheckValue {
        let bytes = self
            .whole
            .take()
            .expect("a chunker that checks the whole stream, asked once")
            .finish();
        CheckValue::new(Check::Rebuilt, bytes)
    }
}

/// Chunks a whole slice (tests and small inputs).
pub fn chunk_slice(data: &[u8]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut c = Chunker::chunks_only(data);
    while let Some((chunk, _)) = c.next_chunk().expect("reading a slice cannot fail") {
        out.push(chunk);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` pseudo-random bytes (xorshift; `seed` not 0), for tests here and
    /// elsewhere.
    pub(crate) fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    /// The gear hash one byte at a time, as defined: `cut` must find the same
    /// cut points however many bytes a step it takes.
    fn cut_one_byte_a_step(data: &[u8]) -> usize {
        let n = data.len();
        if n <= MIN_CHUNK {
            return n;
        }
        let end = n.min(MAX_CHUNK);
        let mut fp: u64 = 0;
        for (i, &b) in data[MIN_CHUNK..end].iter().enumerate() {
            fp = (fp << 1).wrapping_add(GEAR[b as usize]);
            if fp & MASK == 0 {
                return MIN_CHUNK + i + 1;
            }
        }
        end
    }

    #[test]
    fn cut_points_match_the_definition() {
        let data = random(8 << 20, 99);
        let mut at = 0;
        let mut cuts = 0;
        while at < data.len() {
            // every window length, so cuts fall at each position of a step
            for extra in 0..4 {
                let slice = &data[at..(at + MAX_CHUNK + extra).min(data.len())];
                assert_eq!(cut(slice), cut_one_byte_a_step(slice), "at {at}");
            }
            at += cut(&data[at..(at + MAX_CHUNK).min(data.len())]);
            cuts += 1;
        }
        assert!(cuts > 1000, "{cuts} chunks");
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        for size in [
            0,
            1,
            MIN_CHUNK,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            3 << 20,
        ] {
            let data = random(size, 7);
            let chunks = chunk_slice(&data);
            let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
            assert_eq!(total, size as u64);
            let mut off = 0;
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(c.offset, off);
                assert!(c.len as usize <= MAX_CHUNK);
                if i + 1 < chunks.len() {
                    assert!(c.len as usize > MIN_CHUNK);
                }
                let d = &data[off as usize..off as usize + c.len as usize];
                assert_eq!(c.hash, chunk_hash(d));
                off += c.len as u64;
            }
        }
    }

    #[test]
    fn average_size_is_near_target() {
        let data = random(32 << 20, 3);
        let n = chunk_slice(&data).len();
        let avg = data.len() / n;
        assert!(
            (AVG_CHUNK * 3 / 4..AVG_CHUNK * 3 / 2).contains(&avg),
            "average chunk {avg}"
        );
    }

    #[test]
    fn insertion_only_disturbs_nearby_chunks() {
        let data = random(4 << 20, 11);
        let mut edited = data[..1 << 20].to_vec();
        edited.extend_from_slice(&random(1000, 99));
        edited.extend_from_slice(&data[1 << 20..]);
        let a: std::collections::HashSet<_> = chunk_slice(&data).iter().map(|c| c.hash).collect();
        let b = chunk_slice(&edited);
        let new = b.iter().filter(|c| !a.contains(&c.hash)).count();
        assert!(new <= 3, "{new} chunks changed by one insertion");
    }

    /// The check of `data` given in one piece.
    fn check_of(data: &[u8], key: &RebuildKey) -> [u8; 32] {
        let mut c = RebuildCheck::new(key);
        c.update(data);
        c.finish()
    }

    #[test]
    fn the_rebuild_check_sees_every_byte_the_length_and_the_key_but_not_the_pieces() {
        let key = [7u8; 16];
        let data = random(3 * CHECK_PIECE + 1000, 3);
        let whole = check_of(&data, &key);
        // given in pieces of any size: the same
        for step in [
            1,
            999,
            CHECK_PIECE - 1,
            CHECK_PIECE,
            CHECK_PIECE + 1,
            200_000,
        ] {
            let mut c = RebuildCheck::new(&key);
            for piece in data.chunks(step) {
                c.update(piece);
            }
            assert_eq!(c.finish(), whole, "pieces of {step}");
        }
        // any byte changed, in any piece, the last one too
        for at in [
            0,
            CHECK_PIECE - 1,
            CHECK_PIECE,
            2 * CHECK_PIECE + 5,
            data.len() - 1,
        ] {
            let mut other = data.clone();
            other[at] ^= 1;
            assert_ne!(check_of(&other, &key), whole, "byte {at} changed");
        }
        // longer or shorter, even by zeros or at a piece's end
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(check_of(&longer, &key), whole);
        assert_ne!(check_of(&data[..3 * CHECK_PIECE], &key), whole);
        assert_ne!(
            check_of(&data[..3 * CHECK_PIECE], &key),
            check_of(&data[..2 * CHECK_PIECE], &key)
        );
        assert_ne!(check_of(&[], &key), check_of(&[0], &key));
        // under another key, nothing is the same
        let other_key = [8u8; 16];
        assert_ne!(check_of(&data, &other_key), whole);
        assert_ne!(check_of(&[], &other_key), check_of(&[], &key));
        // keys drawn are not the same twice
        assert_ne!(new_rebuild_key(), new_rebuild_key());
    }

    #[test]
    fn a_stream_checked_on_a_thread_is_checked_whole_and_in_order() {
        let data = random(5 << 20, 11);
        let key = [9u8; 16];
        for expected in [0, 1 << 30] {
            let mut h = StreamCheck::new(expected, &key);
            // pieces of every size, given both ways, across buffer ends
            let (mut at, mut step) = (0, 1);
            while at < data.len() {
                let n = step.min(data.len() - at);
                let piece = &data[at..at + n];
                if step % 2 == 0 {
                    h.update(piece);
                } else {
                    let got = h
                        .next(n, |b| {
                            b.copy_from_slice(piece);
                            Ok::<_, ()>(())
                        })
                        .unwrap();
                    assert_eq!(got, piece);
                }
                at += n;
                step = (step * 7 + 3) % (STREAM_BUFFER + 1);
            }
            assert_eq!(h.finish(), check_of(&data, &key), "expected {expected}");
        }
    }

    /// Gives its bytes in reads of sizes that change from one to the next.
    struct Uneven<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Uneven<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step = (self.step * 7 + 3) % 70_001;
            let n = (self.step + 1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn whole_check_matches() {
        // whole reads, and reads of every size (the check is taken in aligned
        // pieces that lag the reads, across the buffer's moves)
        let key = [5u8; 16];
        for (len, uneven) in [
            (200_000, false),
            (3 << 20, true),
            ((3 << 20) + 12_345, true),
        ] {
            let data = random(len, 5);
            let mut c: Chunker<Box<dyn Read>> = Chunker::new(
                if uneven {
                    Box::new(Uneven {
                        data: &data,
                        step: 1,
                    })
                } else {
                    Box::new(&data[..])
                },
                &key,
            );
            let mut chunks = Vec::new();
            while let Some((chunk, _)) = c.next_chunk().unwrap() {
                chunks.push(chunk);
            }
            assert_eq!(c.whole_check().to_wire(), check_of(&data, &key), "{len}");
            assert_eq!(c.position(), data.len() as u64);
            assert_eq!(chunks, chunk_slice(&data), "{len}");
        }
    }

    /// The check of a file with holes: its data and its holes, wherever the
    /// sender cut them into messages; a hole lost, moved or resized fails it.
    #[test]
    fn holes_are_checked_as_extents_not_zeros() {
        let (a, b) = (random(5000, 1), random(3000, 2));
        let sent = |cuts: &[&dyn Fn(&mut WholeCheck)]| {
            let mut c = WholeCheck::default();
            for cut in cuts {
                cut(&mut c);
            }
            c.file_value()
        };
        let whole = sent(&[
            &|c| c.update(&a),
            &|c| c.hole(5000, 1 << 30),
            &|c| c.update(&b),
            &|c| c.hole(5000 + (1 << 30) + 3000, 100),
        ]);
        assert_eq!(whole.check, Check::Sparse);
        // the same holes cut in two, the data in other blocks: the same value
        let recut = sent(&[
            &|c| c.update(&a[..10]),
            &|c| c.update(&a[10..]),
            &|c| c.hole(5000, 1 << 20),
            &|c| c.hole(5000 + (1 << 20), (1 << 30) - (1 << 20)),
            &|c| c.update(&b),
            &|c| c.hole(5000 + (1 << 30) + 3000, 100),
        ]);
        assert_eq!(recut, whole);
        // a hole moved, resized, or lost
        let moved = sent(&[
            &|c| c.update(&a),
            &|c| c.hole(5001, 1 << 30),
            &|c| c.update(&b),
            &|c| c.hole(5001 + (1 << 30) + 3000, 100),
        ]);
        let resized = sent(&[
            &|c| c.update(&a),
            &|c| c.hole(5000, (1 << 30) + 1),
            &|c| c.update(&b),
            &|c| c.hole(5001 + (1 << 30) + 3000, 99),
        ]);
        let lost = sent(&[&|c| c.update(&a), &|c| c.hole(5000, 1 << 30), &|c| {
            c.update(&b)
        }]);
        for other in [moved, resized, lost] {
            assert_ne!(other, whole);
        }
        // zeros sent as data are not a hole
        let mut zeros = WholeCheck::default();
        zeros.update(&a);
        zeros.update(&[0; 100]);
        let mut hole = WholeCheck::default();
        hole.update(&a);
        hole.hole(5000, 100);
        assert_ne!(zeros.file_value(), hole.file_value());
        // no hole: exactly the whole-file check
        let mut dense = WholeCheck::default();
        dense.update(&a);
        dense.hole(5000, 0);
        assert_eq!(dense.file_value().check, Check::WholeFile);
        assert_eq!(dense.finish(), WholeCheck::of(&a));
    }
}
