//! The two-level recipe exchange of one rebuilt file, sans-IO: spans arrive
//! in batches and each batch is answered with a `Need` for the spans the
//! receiver lacks; the `Recipe` that follows lists the chunks of exactly
//! those spans (answered, by the caller, with a `Need` for the chunks it
//! lacks); then the `RecipeEnd`. [`RecipeIntake`] holds what may arrive when
//! and checks every count and length against the spans and the listed size.
//! A plain struct driven by method calls, like `quinn-proto`: no files,
//! threads, clocks or channels. It does not look anything up: the caller
//! says where it has a span (`have`), and plans the chunks of lacked spans
//! with its own index (the receiver's `rebuild`).
//!
//! # Security
//! Spans, chunk counts and lengths are the sender's word. A span must hold
//! its chunks at the minimum chunk size (only the last may be shorter), the
//! spans together at most the listed size plus a slack, each recipe exactly
//! the chunks of the spans asked for, adding up to each span's length, and
//! the end the total of the spans. Anything else is a [`Violation`] and ends
//! the session before a byte of it is used.

use super::Violation;
use crate::chunk::MIN_CHUNK;
use crate::proto::{ChunkRef, SpanRef};
use std::collections::VecDeque;
use std::ops::Range;

/// Which part of a delta recipe arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Spans,
    Recipe,
    End,
}

impl Part {
    pub fn what(self) -> &'static str {
        match self {
            Part::Spans => "spans",
            Part::Recipe => "a recipe",
            Part::End => "a recipe end",
        }
    }
}

/// One piece of a batch of spans, in order, once its recipe came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<L> {
    /// A span the receiver has (where `have` said), copied whole.
    Known(L),
    /// A run of spans it lacks: their chunks are `chunks` of the recipe;
    /// `next` is where it has the span after the run, if that is in the
    /// same batch (the caller looks for the chunks between its neighbours).
    Lacked {
        chunks: Range<usize>,
        next: Option<L>,
    },
}

/// The rules of one file's recipe as it arrives. `L` is where the receiver
/// has a span (a basis and an offset, to the caller).
#[derive(Debug)]
pub struct RecipeIntake<L> {
    file: u32,
    /// The most bytes the spans may describe (listed size plus slack).
    limit: u64,
    /// Recipe bytes so far.
    total: u64,
    /// A span shorter than its chunks at full size (only allowed last) was
    /// seen.
    short_seen: bool,
    /// Batches of spans answered and waiting for the `Recipe` of the spans
    /// asked for: each span, and where the receiver has it if it does.
    pending: VecDeque<Vec<(SpanRef, Option<L>)>>,
    /// Size and check value from `RecipeEnd`, once it came.
    end: Option<(u64, [u8; 32])>,
}

impl<L: Copy> RecipeIntake<L> {
    /// The recipe of file `file`, which may describe at most `limit` bytes.
    pub fn new(file: u32, limit: u64) -> Self {
        RecipeIntake {
            file,
            limit,
            total: 0,
            short_seen: false,
            pending: VecDeque::new(),
            end: None,
        }
    }

    /// Whether `part` may come now: recipes still may after the end (they
    /// answer spans sent before it), nothing else may.
    pub fn allows(&self, part: Part) -> bool {
        part == Part::Recipe || self.end.is_none()
    }

    /// A batch of spans; `have` says where the receiver has one. Returns the
    /// `Need` to send: runs (first, count) of the spans whose chunks are
    /// wanted (possibly none).
    pub fn on_spans(
        &mut self,
        spans: Vec<SpanRef>,
        mut have: impl FnMut(&SpanRef) -> Option<L>,
    ) -> Result<Vec<(u32, u32)>, Violation> {
        let file = self.file;
        let mut batch = Vec::with_capacity(spans.len());
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for (i, sp) in spans.into_iter().enumerate() {
            // only the last chunk of a file may be shorter than the minimum,
            // so only the last span may be shorter than its chunks at
            // minimum size; a span holds at least one chunk
            let full = sp.chunks as u64 * MIN_CHUNK as u64;
            if self.short_seen || sp.chunks == 0 || sp.len <= full - MIN_CHUNK as u64 {
                return Err(Violation(format!(
                    "sent a span of file {file} too short for its chunks"
                )));
            }
            self.short_seen = sp.len < full;
            self.total = self.total.saturating_add(sp.len);
            if self.total > self.limit {
                return Err(Violation(format!(
                    "sent a recipe for file {file} larger than the file"
                )));
            }
            let at = have(&sp);
            if at.is_none() {
                let i = i as u32;
                match ranges.last_mut() {
                    Some((start, count)) if *start + *count == i => *count += 1,
                    _ => ranges.push((i, 1)),
                }
            }
            batch.push((sp, at));
        }
        self.pending.push_back(batch);
        Ok(ranges)
    }

    /// The chunks of the spans asked for in the oldest answered batch: that
    /// batch, in pieces, once `chunks` are exactly the chunks of its lacked
    /// spans.
    pub fn on_recipe(&mut self, chunks: &[ChunkRef]) -> Result<Vec<Piece<L>>, Violation> {
        let file = self.file;
        let Some(batch) = self.pending.pop_front() else {
            return Err(Violation(format!(
                "sent a recipe for file {file}, which was not requested or is not at that stage"
            )));
        };
        let mut pieces = Vec::new();
        let mut used = 0usize;
        let mut i = 0;
        while i < batch.len() {
            if let (_, Some(at)) = batch[i] {
                pieces.push(Piece::Known(at));
                i += 1;
                continue;
            }
            // a run of spans we lack, and the known span after it, if in this batch
            let end = i + batch[i..].iter().take_while(|(_, h)| h.is_none()).count();
            let next = batch.get(end).and_then(|(_, h)| *h);
            let start = used;
            for (sp, _) in &batch[i..end] {
                let these = chunks.get(used..used + sp.chunks as usize).ok_or_else(|| {
                    Violation(format!(
                        "sent fewer chunks for file {file} than its spans hold"
                    ))
                })?;
                if these.iter().map(|c| c.len as u64).sum::<u64>() != sp.len {
                    return Err(Violation(format!(
                        "sent chunks for file {file} that do not add up to their span"
                    )));
                }
                used += these.len();
            }
            pieces.push(Piece::Lacked {
                chunks: start..used,
                next,
            });
            i = end;
        }
        if used != chunks.len() {
            return Err(Violation(format!(
                "sent more chunks for file {file} than its spans hold"
            )));
        }
        Ok(pieces)
    }

    /// The `RecipeEnd`: the spans must add up to `size`.
    pub fn on_end(&mut self, size: u64, check: [u8; 32]) -> Result<(), Violation> {
        if self.total != size {
            return Err(Violation(format!(
                "sent a recipe of {} bytes for a file of {size}",
                self.total
            )));
        }
        self.end = Some((size, check));
        Ok(())
    }

    /// At the file's end: every batch answered by its recipe, the end seen,
    /// and (`chunks_done`, the caller's word) every chunk asked for arrived.
    /// Returns the size and check value the end announced.
    pub fn finished(&self, chunks_done: bool) -> Result<(u64, [u8; 32]), Violation> {
        let file = self.file;
        if !self.pending.is_empty() {
            return Err(Violation(format!(
                "ended file {file} before listing the spans asked for"
            )));
        }
        let Some(end) = self.end else {
            return Err(Violation(format!("ended file {file} before its recipe")));
        };
        if !chunks_done {
            return Err(Violation(format!(
                "ended file {file} before sending the chunks it asked for"
            )));
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    //! The recipe rules of `tests/hostile.rs` (`lying_spans_and_recipes_are_
    //! refused`), one table row each, without a peer, a basis or a file.
    use super::{Part, Piece, RecipeIntake};
    use crate::proto::{ChunkRef, SpanRef};

    /// What arrives: spans (the receiver has those marked `true`), a
    /// recipe, or the end.
    enum In {
        Spans(Vec<(SpanRef, bool)>),
        Recipe(Vec<ChunkRef>),
        End(u64),
    }

    fn span(chunks: u32, len: u64) -> SpanRef {
        SpanRef {
            chunks,
            len,
            hash: [7; 32],
        }
    }

    fn chunks(n: usize, len: u32) -> Vec<ChunkRef> {
        vec![ChunkRef { len, hash: [8; 16] }; n]
    }

    fn lacked(spans: Vec<SpanRef>) -> In {
        In::Spans(spans.into_iter().map(|s| (s, false)).collect())
    }

    /// Feeds `script` to the recipe of a file listed at `size`; the first
    /// refusal's text, or `None`.
    fn refusal(size: u64, script: Vec<In>) -> Option<String> {
        let mut r = RecipeIntake::<u32>::new(0, size + (1 << 30));
        for step in script {
            let result = match step {
                In::Spans(spans) => {
                    let have: Vec<bool> = spans.iter().map(|s| s.1).collect();
                    let mut i = 0;
                    let spans = spans.into_iter().map(|s| s.0).collect();
                    r.on_spans(spans, |_| {
                        i += 1;
                        have[i - 1].then_some(i as u32)
                    })
                    .map(drop)
                }
                In::Recipe(c) => r.on_recipe(&c).map(drop),
                In::End(size) => r.on_end(size, [0; 32]),
            };
            if let Err(v) = result {
                return Some(v.0);
            }
        }
        None
    }

    #[test]
    fn lying_spans_and_recipes_are_refused() {
        let size = 128 << 10;
        let cases: Vec<(&str, Vec<In>, Option<&str>)> = vec![
            (
                // 256 MiB per message: past the listed size and the slack
                "spans beyond the file",
                (0..5)
                    .map(|_| lacked(vec![span(512, 512 * (32 << 10)); 16]))
                    .collect(),
                Some("sent a recipe for file 0 larger than the file"),
            ),
            (
                "a span of many tiny chunks",
                vec![lacked(vec![span(512, 512)])],
                Some("sent a span of file 0 too short for its chunks"),
            ),
            (
                "a span of no chunks",
                vec![lacked(vec![span(0, 10)])],
                Some("sent a span of file 0 too short for its chunks"),
            ),
            (
                // (found by the fuzz target: 0 - MIN_CHUNK wrapped past it)
                "a span of no chunks and every length",
                vec![lacked(vec![span(0, u64::MAX)])],
                Some("sent a span of file 0 too short for its chunks"),
            ),
            (
                "a short span before the last",
                vec![lacked(vec![span(4, 7 << 10), span(4, 128 << 10)])],
                Some("sent a span of file 0 too short for its chunks"),
            ),
            (
                "a recipe nobody asked for",
                vec![In::Recipe(chunks(1, 4096))],
                Some("sent a recipe for file 0, which was not requested or is not at that stage"),
            ),
            (
                "more chunks than the span holds",
                vec![lacked(vec![span(4, size)]), In::Recipe(chunks(5, 32 << 10))],
                Some("sent more chunks for file 0 than its spans hold"),
            ),
            (
                "fewer chunks than the span holds",
                vec![lacked(vec![span(4, size)]), In::Recipe(chunks(3, 32 << 10))],
                Some("sent fewer chunks for file 0 than its spans hold"),
            ),
            (
                "chunks that do not add up to their span",
                vec![lacked(vec![span(4, size)]), In::Recipe(chunks(4, 30 << 10))],
                Some("sent chunks for file 0 that do not add up to their span"),
            ),
            (
                "an end that is not the spans' total",
                vec![lacked(vec![span(4, size)]), In::End(size + 1)],
                Some("sent a recipe of 131072 bytes for a file of 131073"),
            ),
            (
                "an honest recipe",
                vec![
                    lacked(vec![span(4, size)]),
                    In::Recipe(chunks(4, 32 << 10)),
                    In::End(size),
                ],
                None,
            ),
        ];
        for (label, script, want) in cases {
            assert_eq!(refusal(size, script).as_deref(), want, "{label}");
        }
    }

    #[test]
    fn a_batch_is_answered_in_runs_and_comes_back_in_pieces() {
        let mut r = RecipeIntake::<u32>::new(3, 1 << 40);
        let have = [false, false, true, false, true];
        let spans = vec![span(2, 8 << 10); 5];
        let mut i = 0;
        let need = r
            .on_spans(spans, |_| {
                i += 1;
                have[i - 1].then_some(i as u32 - 1)
            })
            .unwrap();
        assert_eq!(need, [(0, 2), (3, 1)]);
        // the end may come before the recipe it answers, nothing else after it
        r.on_end(40 << 10, [1; 32]).unwrap();
        assert!(r.allows(Part::Recipe) && !r.allows(Part::Spans) && !r.allows(Part::End));
        assert_eq!(
            r.finished(true).unwrap_err().0,
            "ended file 3 before listing the spans asked for"
        );
        let pieces = r.on_recipe(&chunks(6, 4 << 10)).unwrap();
        assert_eq!(
            pieces,
            [
                Piece::Lacked {
                    chunks: 0..4,
                    next: Some(2)
                },
                Piece::Known(2),
                Piece::Lacked {
                    chunks: 4..6,
                    next: Some(4)
                },
                Piece::Known(4),
            ]
        );
        assert_eq!(
            r.finished(false).unwrap_err().0,
            "ended file 3 before sending the chunks it asked for"
        );
        assert_eq!(r.finished(true).unwrap(), (40 << 10, [1; 32]));
        let fresh = RecipeIntake::<u32>::new(3, 1 << 40);
        assert_eq!(
            fresh.finished(true).unwrap_err().0,
            "ended file 3 before its recipe"
        );
    }
}
