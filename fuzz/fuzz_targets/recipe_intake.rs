//! The receiver's two-level recipe exchange (spans → Need → Recipe → Need →
//! end), against a naive reference.
//!
//! The input is a script: batches of spans (some of which the receiver
//! "has"), recipes, ends and a final check, with lengths and counts drawn
//! near the limits the rules care about. `RecipeIntake` and the reference
//! must agree at every step: both refuse (with the same kind of refusal), or
//! both accept with the same `Need`, the same pieces of the batch, and the
//! same end. The reference says each rule the obvious way: the chunks of
//! lacked span k are those after the chunks of the lacked spans before it.
#![no_main]

use ferry::chunk::MIN_CHUNK;
use ferry::proto::{ChunkRef, SpanRef};
use ferry::session::receiver::recipe::{Part, Piece, RecipeIntake};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;

/// The receiver's rules, said plainly.
#[derive(Default)]
struct Reference {
    limit: u64,
    total: u64,
    short_seen: bool,
    batches: VecDeque<Vec<(SpanRef, Option<u32>)>>,
    end: Option<(u64, [u8; 32])>,
}

/// Which rule refused, from the refusal's text.
fn kind(text: &str) -> &'static str {
    for k in [
        "too short",
        "larger than the file",
        "which was not requested",
        "fewer chunks",
        "do not add up",
        "more chunks",
        "a recipe of",
        "before listing the spans",
        "before its recipe",
        "before sending the chunks",
    ] {
        if text.contains(k) {
            return k;
        }
    }
    panic!("a refusal of no known kind: {text}")
}

impl Reference {
    fn spans(&mut self, spans: &[(SpanRef, Option<u32>)]) -> Result<Vec<(u32, u32)>, &'static str> {
        for (sp, _) in spans {
            // a span holds its chunks at the minimum size, but for the last
            // chunk of the file, which may be 1 byte: more than (n-1) * MIN
            let most_short = (sp.chunks as u128).saturating_sub(1) * MIN_CHUNK as u128;
            if sp.chunks == 0 || self.short_seen || (sp.len as u128) <= most_short {
                return Err("too short");
            }
            self.short_seen = (sp.len as u128) < sp.chunks as u128 * MIN_CHUNK as u128;
            self.total = self.total.saturating_add(sp.len);
            if self.total > self.limit {
                return Err("larger than the file");
            }
        }
        self.batches.push_back(spans.to_vec());
        // the lacked spans' indices, then cut where they stop being consecutive
        let lacked: Vec<u32> = (0..spans.len() as u32)
            .filter(|&i| spans[i as usize].1.is_none())
            .collect();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for i in lacked {
            if let Some(last) = runs.last_mut() {
                if last.0 + last.1 == i {
                    last.1 += 1;
                    continue;
                }
            }
            runs.push((i, 1));
        }
        Ok(runs)
    }

    fn recipe(&mut self, chunks: &[ChunkRef]) -> Result<Vec<Piece<u32>>, &'static str> {
        let batch = self.batches.pop_front().ok_or("which was not requested")?;
        // where each lacked span's chunks start: after those of the lacked
        // spans before it
        let mut starts = Vec::new();
        let mut at = 0usize;
        for (sp, have) in &batch {
            if have.is_none() {
                starts.push(at);
                at += sp.chunks as usize;
            }
        }
        let mut k = 0;
        for (sp, have) in &batch {
            if have.is_some() {
                continue;
            }
            let range = starts[k]..starts[k] + sp.chunks as usize;
            k += 1;
            if range.end > chunks.len() {
                return Err("fewer chunks");
            }
            let sum: u64 = chunks[range].iter().map(|c| c.len as u64).sum();
            if sum != sp.len {
                return Err("do not add up");
            }
        }
        if at != chunks.len() {
            return Err("more chunks");
        }
        // the pieces: each known span, and each run of lacked ones with the
        // known span after it (if any)
        let mut pieces = Vec::new();
        let mut k = 0;
        for (i, (sp, have)) in batch.iter().enumerate() {
            match have {
                Some(l) => pieces.push(Piece::Known(*l)),
                None => {
                    let start = starts[k];
                    k += 1;
                    let end = start + sp.chunks as usize;
                    let continues = i > 0 && batch[i - 1].1.is_none();
                    if continues {
                        let Some(Piece::Lacked { chunks, .. }) = pieces.last_mut() else {
                            unreachable!()
                        };
                        chunks.end = end;
                    } else {
                        let next = batch[i..].iter().find_map(|(_, h)| *h);
                        pieces.push(Piece::Lacked {
                            chunks: start..end,
                            next,
                        });
                    }
                }
            }
        }
        Ok(pieces)
    }

    fn end(&mut self, size: u64, check: [u8; 32]) -> Result<(), &'static str> {
        if size != self.total {
            return Err("a recipe of");
        }
        self.end = Some((size, check));
        Ok(())
    }

    fn finished(&self, chunks_done: bool) -> Result<(u64, [u8; 32]), &'static str> {
        if !self.batches.is_empty() {
            return Err("before listing the spans");
        }
        let end = self.end.ok_or("before its recipe")?;
        if !chunks_done {
            return Err("before sending the chunks");
        }
        Ok(end)
    }
}

/// Reads the script's bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    /// A length near the sizes the rules compare with.
    fn len(&mut self, chunks: u32) -> u64 {
        let min = MIN_CHUNK as u64;
        let n = chunks as u64;
        match self.u8() % 8 {
            0 => n * min,
            1 => (n.saturating_sub(1) * min).saturating_add(self.u8() as u64),
            2 => (n * min).saturating_sub(self.u8() as u64 % (min + 1)),
            3 => n * (32 << 10),
            4 => self.u16() as u64 * 64,
            5 => u64::MAX - self.u16() as u64,
            6 => (n * min).saturating_add(self.u16() as u64),
            _ => self.u8() as u64,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let limit = match b.u8() % 3 {
        0 => b.u16() as u64 * 4096,
        1 => (1 << 30) + b.u16() as u64,
        _ => u64::MAX,
    };
    let mut real = RecipeIntake::<u32>::new(7, limit);
    let mut naive = Reference {
        limit,
        ..Reference::default()
    };
    let mut next_loc = 0u32;
    while !b.done() {
        match b.u8() % 8 {
            // a batch of spans, some of which the receiver has
            0..=3 => {
                let n = b.u8() % 9;
                let mut spans = Vec::new();
                for _ in 0..n {
                    let chunks = match b.u8() % 4 {
                        0 => 0,
                        1 => 1,
                        2 => b.u8() as u32 % 8,
                        _ => b.u16() as u32,
                    };
                    let len = b.len(chunks);
                    let have = (b.u8() % 3 == 0).then(|| {
                        next_loc += 1;
                        next_loc
                    });
                    let sp = SpanRef {
                        chunks,
                        len,
                        hash: [b.u8(); 32],
                    };
                    spans.push((sp, have));
                }
                if !real.allows(Part::Spans) {
                    // the receiver refuses spans after the end itself
                    return;
                }
                let mut i = 0;
                let got = real
                    .on_spans(spans.iter().map(|s| s.0).collect(), |sp| {
                        assert_eq!(*sp, spans[i].0, "spans are looked up in order");
                        i += 1;
                        spans[i - 1].1
                    })
                    .map_err(|v| kind(&v.0));
                let want = naive.spans(&spans);
                assert_eq!(got, want, "spans");
                if got.is_err() {
                    return;
                }
            }
            // the recipe of the oldest batch: its chunks, honest or not
            4..=6 => {
                let mut chunks = Vec::new();
                let honest = b.u8() % 2 == 0;
                if let (true, Some(batch)) = (honest, naive.batches.front()) {
                    // each lacked span's chunks, lengths adding up where they can
                    for (sp, have) in batch {
                        if have.is_some() || sp.chunks == 0 {
                            continue;
                        }
                        let each = (sp.len / sp.chunks as u64).min(u32::MAX as u64) as u32;
                        for k in 0..sp.chunks {
                            let len = if k + 1 == sp.chunks {
                                (sp.len - each as u64 * (sp.chunks as u64 - 1)).min(u32::MAX as u64)
                                    as u32
                            } else {
                                each
                            };
                            chunks.push(ChunkRef { len, hash: [1; 16] });
                        }
                    }
                    // and now and then one lie
                    match b.u8() % 4 {
                        0 if !chunks.is_empty() => {
                            let at = b.u16() as usize % chunks.len();
                            chunks[at].len ^= 1 << (b.u8() % 32);
                        }
                        1 => chunks.push(ChunkRef {
                            len: 1,
                            hash: [2; 16],
                        }),
                        2 => {
                            chunks.pop();
                        }
                        _ => {}
                    }
                } else {
                    for _ in 0..b.u8() % 16 {
                        let len = b.u16() as u32 * 64;
                        chunks.push(ChunkRef { len, hash: [3; 16] });
                    }
                }
                let got = real.on_recipe(&chunks).map_err(|v| kind(&v.0));
                let want = naive.recipe(&chunks);
                assert_eq!(got, want, "recipe");
                if got.is_err() {
                    return;
                }
            }
            // the end, the spans' total or not
            _ => {
                let size = match b.u8() % 3 {
                    0 => naive.total,
                    1 => naive.total.wrapping_add(1),
                    _ => b.u16() as u64,
                };
                if !real.allows(Part::End) {
                    return;
                }
                let check = [b.u8(); 32];
                let got = real.on_end(size, check).map_err(|v| kind(&v.0));
                assert_eq!(got, naive.end(size, check), "end");
                if got.is_err() {
                    return;
                }
            }
        }
    }
    for chunks_done in [false, true] {
        let got = real.finished(chunks_done).map_err(|v| kind(&v.0));
        assert_eq!(got, naive.finished(chunks_done), "finished");
    }
});
