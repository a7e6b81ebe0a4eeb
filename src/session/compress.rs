//! Compression of the blocks a sender sends and their decompression on
//! arrival (zstd, with `-z`). Not for deciding what is sent: a block goes out
//! compressed or raw, and the frame says which.
//!
//! Two forms travel. A *whole* block is one zstd frame of its own (every
//! sender before extension tag 63). A *streamed* block continues the zstd
//! frame of the block before it from the same sender (the same file's `Data`,
//! or the same segment's next `Segment`), flushed at the block's end, so that
//! it can refer to the bytes of the blocks before it: on a JSONL corpus this
//! moves about a sixth fewer bytes than whole blocks at the same CPU cost. A
//! block that starts with zstd's frame magic starts a new frame (a flushed
//! continuation never can: its first three bytes are a block header, and one
//! with those bytes would be longer than zstd allows); a raw block, a new file
//! or a new segment ends a sender's frame.

use crate::error::TransferError;
use zstd::zstd_safe::{self, CParameter, DParameter, InBuffer, OutBuffer, ResetDirective};

/// The first bytes of every zstd frame.
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The window of a streamed frame (1 MiB), and the most a receiver accepts:
/// each open stream holds one, so this bounds a receiver's memory for them.
const WINDOW_LOG: u32 = 20;

/// Streams a receiver keeps open at once (one per file or segment being
/// sent; the least recently used one goes when a new one needs room).
const MAX_OPEN: usize = 16;

/// Compresses blocks with zstd when `-z` is on and the data compresses; after a
/// block that does not, skips the next few without trying, so random-looking data
/// (checkpoints) pays almost nothing.
pub struct Packer {
    how: How,
    skip: u32,
    out: Vec<u8>,
}

enum How {
    Raw,
    Whole(zstd::bulk::Compressor<'static>),
    /// The context, and whether a frame is open (the next block continues it).
    Streamed(zstd_safe::CCtx<'static>, bool),
}

impl Packer {
    /// A packer compressing at zstd `level` (whole blocks), or not at all.
    pub fn new(level: Option<i32>) -> Self {
        Packer::with(level, false)
    }

    /// A packer compressing at zstd `level`, each block continuing the last if
    /// `streamed` (the receiver said it takes that: extension tag 63).
    pub fn with(level: Option<i32>, streamed: bool) -> Self {
        let how = match level {
            None => How::Raw,
            Some(l) if streamed => match stream_context(l) {
                Some(c) => How::Streamed(c, false),
                None => How::Raw,
            },
            Some(l) => zstd::bulk::Compressor::new(l).map_or(How::Raw, How::Whole),
        };
        Packer {
            how,
            skip: 0,
            out: Vec::new(),
        }
    }

    /// A new file: nothing skipped, no frame continued.
    pub fn reset(&mut self) {
        self.skip = 0;
        self.interrupt();
    }

    /// The next block does not continue this one's frame (a block went out
    /// that this packer did not make, e.g. a sparse file's hole).
    pub fn interrupt(&mut self) {
        if let How::Streamed(_, open) = &mut self.how {
            *open = false;
        }
    }

    /// Returns (compressed?, bytes to send).
    pub fn pack<'b>(&'b mut self, raw: &'b [u8]) -> (bool, &'b [u8]) {
        if matches!(self.how, How::Raw) {
            return (false, raw);
        }
        if self.skip > 0 {
            self.skip -= 1;
            self.interrupt();
            return (false, raw);
        }
        self.out.clear();
        self.out.reserve(zstd_safe::compress_bound(raw.len()) + 64);
        let packed = match &mut self.how {
            How::Raw => None,
            How::Whole(c) => c.compress_to_buffer(raw, &mut self.out).ok(),
            How::Streamed(c, open) => {
                let was_open = std::mem::replace(open, false);
                if !was_open {
                    let _ = c.reset(ResetDirective::SessionOnly);
                }
                let n = flush_block(c, raw, &mut self.out);
                *open = n.is_some();
                n
            }
        };
        match packed {
            Some(n) if n < raw.len() - raw.len() / 10 => (true, &self.out[..n]),
            _ => {
                // the context took the block in: the receiver will not
                self.interrupt();
                self.skip = 16;
                (false, raw)
            }
        }
    }
}

/// A compression context for streamed blocks at `level`, its window
/// [`WINDOW_LOG`]. Level 1, the default, also gets a larger hash table and
/// longer minimum match than zstd's own level 1 (on JSONL: the bytes of zstd's
/// level 3 at its level 1's speed).
fn stream_context(level: i32) -> Option<zstd_safe::CCtx<'static>> {
    let mut c = zstd_safe::CCtx::try_create()?;
    c.set_parameter(CParameter::CompressionLevel(level)).ok()?;
    c.set_parameter(CParameter::WindowLog(WINDOW_LOG)).ok()?;
    if level == 1 {
        c.set_parameter(CParameter::HashLog(17)).ok()?;
        c.set_parameter(CParameter::MinMatch(6)).ok()?;
    }
    Some(c)
}

/// Compresses `raw` into `out`, flushed so that the receiver can decompress it
/// whole; the number of bytes, or `None` if zstd failed.
fn flush_block(c: &mut zstd_safe::CCtx<'static>, raw: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut input = InBuffer::around(raw);
    loop {
        let mut output = OutBuffer::around_pos(out, out.len());
        let left = c
            .compress_stream2(
                &mut output,
                &mut input,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .ok()?;
        if left == 0 && input.pos() == raw.len() {
            return Some(out.len());
        }
        out.reserve(left.max(4096));
    }
}

/// Decompresses the blocks a receiver is sent: whole ones, and streamed ones
/// each continuing the last of its key (a file's `Data`, or a segment's bytes
/// ending where the next begin).
#[derive(Default)]
pub struct Unpacker {
    open: Vec<(Key, zstd_safe::DCtx<'static>)>,
    spare: Vec<zstd_safe::DCtx<'static>>,
}

/// Which blocks continue each other: the file, and for a segment the offset
/// the next block starts at ([`u64::MAX`] for `Data`).
pub type Key = (u32, u64);

impl Unpacker {
    /// Frees the streams `ended` says nothing continues any more (a file's
    /// `Data` at its end or failure), so that a stream still in use (a
    /// segment's, between two of its blocks) is not the one that makes room
    /// for a new one.
    pub fn close(&mut self, ended: impl Fn(Key) -> bool) {
        let mut i = 0;
        while i < self.open.len() {
            if ended(self.open[i].0) {
                let (_, c) = self.open.remove(i);
                self.spare.push(c);
            } else {
                i += 1;
            }
        }
        self.spare.truncate(2);
    }

    /// The bytes of `packed` (a block of `raw_len` bytes, sent under `key`),
    /// decompressed into `buf`; `next` is the key the block after it would
    /// continue under (the same for `Data`).
    pub fn unpack<'b>(
        &mut self,
        key: Key,
        next: Key,
        packed: &[u8],
        raw_len: u32,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], TransferError> {
        let at = self.open.iter().position(|(k, _)| *k == key);
        let mut ctx = if packed.starts_with(&MAGIC) {
            if let Some(i) = at {
                let (_, c) = self.open.remove(i);
                self.spare.push(c);
            }
            let mut c = match self.spare.pop() {
                Some(c) => c,
                None => new_dctx()?,
            };
            let _ = c.reset(ResetDirective::SessionOnly);
            c
        } else {
            match at {
                Some(i) => self.open.remove(i).1,
                None => {
                    return Err(violation(
                        "sent a compressed block that continues no block before it".into(),
                    ))
                }
            }
        };
        let want = raw_len as usize;
        // one byte of room more than declared, to see a block that is longer
        let room = (want + 1).min(buf.len());
        let mut input = InBuffer::around(packed);
        let mut output = OutBuffer::around(&mut buf[..room]);
        let mut ended;
        loop {
            let before = (input.pos(), output.pos());
            ended = ctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|_| {
                    violation(
                        "sent a compressed block that does not decompress within its declared size"
                            .into(),
                    )
                })?
                == 0;
            let done = input.pos() == packed.len() && (ended || output.pos() == room);
            if done || (input.pos(), output.pos()) == before {
                break;
            }
        }
        let n = output.pos();
        if input.pos() != packed.len() || n != want {
            return Err(violation(format!(
                "sent a compressed block of {n} bytes declared as {raw_len}"
            )));
        }
        if ended {
            self.spare.push(ctx);
        } else {
            if self.open.len() >= MAX_OPEN {
                let (_, c) = self.open.remove(0);
                self.spare.push(c);
            }
            self.open.push((next, ctx));
        }
        self.spare.truncate(2);
        Ok(&buf[..n])
    }
}

fn new_dctx() -> Result<zstd_safe::DCtx<'static>, TransferError> {
    let mut c = zstd_safe::DCtx::try_create()
        .ok_or_else(|| TransferError::local("zstd", &std::io::Error::other("no memory")))?;
    c.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
        .map_err(|_| TransferError::local("zstd", &std::io::Error::other("window limit")))?;
    Ok(c)
}

fn violation(what: String) -> TransferError {
    TransferError::PeerMisbehaved(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words = [
            "alpha ",
            "beta ",
            "gamma ",
            "delta ",
            "{\"id\": ",
            "\"text\": ",
        ];
        let mut x = seed;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
            v.extend_from_slice(format!("{} ", x >> 50).as_bytes());
        }
        v.truncate(n);
        v
    }

    fn round_trip(streamed: bool) -> usize {
        let mut p = Packer::with(Some(1), streamed);
        let mut u = Unpacker::default();
        let mut buf = vec![0u8; 256 << 10];
        let mut wire = 0;
        for i in 0..6u64 {
            let block = text(200_000 + i as usize * 1000, i % 2);
            let (c, bytes) = p.pack(&block);
            assert!(c);
            wire += bytes.len();
            let bytes = bytes.to_vec();
            let out = u
                .unpack(
                    (3, u64::MAX),
                    (3, u64::MAX),
                    &bytes,
                    block.len() as u32,
                    &mut buf,
                )
                .unwrap();
            assert_eq!(out, &block[..]);
        }
        wire
    }

    /// `len` bytes of JSON lines like `bench/compare.sh`'s corpus: a few
    /// fields, then a text of 20–120 words drawn from a 5,000-word vocabulary
    /// (what compresses is the words, so how much of the vocabulary the
    /// matcher sees decides the bytes).
    fn jsonl(len: usize) -> Vec<u8> {
        let mut x = 42u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let words: Vec<String> = (0..5000)
            .map(|_| {
                let n = 2 + next(9);
                (0..n).map(|_| (b'a' + next(26) as u8) as char).collect()
            })
            .collect();
        let mut v = Vec::with_capacity(len + 2048);
        let mut id = 0;
        while v.len() < len {
            let n = 20 + next(101);
            let text: Vec<&str> = (0..n)
                .map(|_| words[next(5000) as usize].as_str())
                .collect();
            let line = format!(
                "{{\"id\": {id}, \"source\": \"crawl-{:02}\", \"lang\": \"en\", \"score\": 0.{:04}, \"text\": \"{}\"}}\n",
                next(100),
                next(10000),
                text.join(" ")
            );
            v.extend_from_slice(line.as_bytes());
            id += 1;
        }
        v.truncate(len);
        v
    }

    /// Sends `data` in [`crate::proto::BLOCK_SIZE`] blocks through a
    /// streamed packer and today's [`Unpacker`], checking every block comes
    /// back; the bytes on the wire.
    fn streamed_wire(data: &[u8]) -> usize {
        let mut p = Packer::with(Some(1), true);
        let mut u = Unpacker::default();
        let mut buf = vec![0u8; crate::proto::BLOCK_SIZE + 1];
        let mut wire = 0;
        for block in data.chunks(crate::proto::BLOCK_SIZE) {
            let (c, bytes) = p.pack(block);
            assert!(c, "a block of text went out raw");
            wire += bytes.len();
            let bytes = bytes.to_vec();
            let key = (7, u64::MAX);
            let out = u
                .unpack(key, key, &bytes, block.len() as u32, &mut buf)
                .unwrap();
            assert_eq!(out, block);
        }
        wire
    }

    /// The bytes of `data` as one zstd level-3 stream flushed every
    /// [`crate::proto::BLOCK_SIZE`]: rsync -z's compressor (its default
    /// level, zstd's default window for it), before rsync's own framing.
    fn level3_stream(data: &[u8]) -> usize {
        let mut c = zstd_safe::CCtx::create();
        c.set_parameter(CParameter::CompressionLevel(3)).unwrap();
        let mut out = Vec::new();
        data.chunks(crate::proto::BLOCK_SIZE)
            .map(|block| {
                out.clear();
                out.reserve(zstd_safe::compress_bound(block.len()) + 64);
                flush_block(&mut c, block, &mut out).unwrap()
            })
            .sum()
    }

    #[test]
    fn a_jsonl_corpus_round_trips_in_no_more_bytes_than_pinned() {
        // 6 MiB: the 1 MiB window wraps several times in the stream. PINNED
        // is what session 20 measured with zstd 1.5.7 (level 1, hash log 17,
        // minimum match 6): a setting that makes the corpus larger fails
        // here (so would a zstd upgrade that did: re-measure then), and so
        // does one that sends more than rsync -z's compressor.
        const PINNED: usize = 2_105_414;
        let data = jsonl(6 << 20);
        let wire = streamed_wire(&data);
        assert!(wire <= PINNED, "{wire} bytes, pinned at {PINNED}");
        let rsync = level3_stream(&data);
        assert!(wire <= rsync, "{wire} bytes, zstd level 3 {rsync}");
    }

    #[test]
    fn a_repeat_farther_back_than_half_the_window_is_still_found() {
        // 768 KiB of the corpus sent twice: the second copy is within the
        // 1 MiB window and costs almost nothing. A smaller window (bench
        // data alone would favour 256 KiB: NOTES §38) sends it again.
        let a = jsonl(768 << 10);
        let once = streamed_wire(&a);
        let twice = streamed_wire(&[a.clone(), a].concat());
        assert!(twice < once + once / 50, "once {once}, twice {twice}");
    }

    #[test]
    fn streamed_blocks_round_trip_and_take_fewer_bytes() {
        let whole = round_trip(false);
        let streamed = round_trip(true);
        assert!(streamed < whole, "streamed {streamed} whole {whole}");
    }

    #[test]
    fn a_continuation_without_its_start_is_refused() {
        let mut p = Packer::with(Some(1), true);
        let a = text(100_000, 1);
        let _ = p.pack(&a).1.to_vec();
        let b = p.pack(&a).1.to_vec();
        assert!(!b.starts_with(&MAGIC));
        let mut buf = vec![0u8; 256 << 10];
        let mut u = Unpacker::default();
        let e = u
            .unpack((1, 0), (1, 0), &b, a.len() as u32, &mut buf)
            .unwrap_err();
        assert!(e.to_string().contains("continues no block"), "{e}");
    }

    #[test]
    fn a_block_longer_or_shorter_than_declared_is_refused() {
        let a = text(100_000, 2);
        let packed = zstd::bulk::compress(&a, 1).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        for len in [a.len() - 1, a.len() + 1] {
            let mut u = Unpacker::default();
            assert!(u
                .unpack((1, 0), (1, 0), &packed, len as u32, &mut buf)
                .is_err());
        }
        let mut u = Unpacker::default();
        let out = u
            .unpack((1, 0), (1, 0), &packed, a.len() as u32, &mut buf)
            .unwrap();
        assert_eq!(out, &a[..]);
    }

    #[test]
    fn a_segment_outlives_many_files_that_end_between_its_blocks() {
        // the receiver closes a file's streams at its FileEnd: a segment's
        // stream, still in use, is then never the one dropped for room
        let mut seg = Packer::with(Some(1), true);
        let a = text(100_000, 4);
        let mut buf = vec![0u8; 256 << 10];
        let mut u = Unpacker::default();
        let first = seg.pack(&a).1.to_vec();
        let n = a.len() as u64;
        u.unpack((1000, 0), (1000, n), &first, a.len() as u32, &mut buf)
            .unwrap();
        for file in 0..(MAX_OPEN as u32 * 3) {
            let mut p = Packer::with(Some(1), true);
            let b = text(50_000, 5);
            let packed = p.pack(&b).1.to_vec();
            let key = (file, u64::MAX);
            u.unpack(key, key, &packed, b.len() as u32, &mut buf)
                .unwrap();
            u.close(|k| k.0 == file);
        }
        let second = seg.pack(&a).1.to_vec();
        assert!(!second.starts_with(&MAGIC));
        let out = u
            .unpack((1000, n), (1000, 2 * n), &second, a.len() as u32, &mut buf)
            .unwrap();
        assert_eq!(out, &a[..]);
        assert!(u.open.len() == 1 && u.spare.len() <= 2);
    }

    #[test]
    fn a_raw_block_starts_a_new_frame() {
        let mut p = Packer::with(Some(1), true);
        let a = text(100_000, 3);
        let first = p.pack(&a).1.to_vec();
        assert!(first.starts_with(&MAGIC));
        p.interrupt();
        let again = p.pack(&a).1.to_vec();
        assert!(again.starts_with(&MAGIC));
        let mut buf = vec![0u8; 256 << 10];
        let mut u = Unpacker::default();
        let out = u
            .unpack((1, 0), (1, 0), &again, a.len() as u32, &mut buf)
            .unwrap();
        assert_eq!(out, &a[..]);
    }
}
