//! The recipe that rebuilds a file from chunks the receiver already has plus
//! literal bytes.
//!
//! The sender describes its file as a recipe: spans of chunks, each named by
//! the BLAKE3 of its chunks' references, then, for the spans the receiver
//! lacks, the chunks themselves (lengths and XXH3-128 names). The receiver
//! looks every chunk up in a [`ChunkIndex`] built from its basis files (the old
//! file, a partial file from an interrupted run, other files of the
//! destination), asks for the rest ([`Plan::need`]), and rebuilds the file in
//! recipe order with [`Rebuild`]. A chunk that is missing but repeats within
//! the new file is asked for once and later copied from what was already
//! written. A chunk name only finds bytes to reuse: the rebuilt file's end
//! check is `chunk::RebuildCheck` (a keyed GMAC), not anything here.
//!
//! Pure code: the session supplies the bytes; nothing here touches a file.

use crate::chunk::{chunk_hash, Chunk, ChunkHash, Chunker};
use crate::proto::{ChunkRef, SpanRef, MAX_SPAN_CHUNKS};
use std::collections::HashMap;

/// Where a chunk the receiver already has can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Which basis file (an index the caller chose).
    pub basis: u32,
    pub offset: u64,
    pub len: u32,
}

/// Chunk hash → where to find those bytes.
#[derive(Default)]
pub struct ChunkIndex {
    map: HashMap<ChunkHash, Location>,
}

impl ChunkIndex {
    pub fn add(&mut self, basis: u32, chunk: &Chunk) {
        self.map.entry(chunk.hash).or_insert(Location {
            basis,
            offset: chunk.offset,
            len: chunk.len,
        });
    }
    pub fn get(&self, hash: &ChunkHash) -> Option<Location> {
        self.map.get(hash).copied()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One step of rebuilding the new file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copy from a basis file.
    Copy(Location),
    /// Copy from earlier in the new file itself.
    CopyOutput { offset: u64, len: u32 },
    /// Literal bytes the sender will send, checked against `hash`.
    Literal { len: u32, hash: ChunkHash },
}

impl Step {
    /// Bytes this step produces.
    pub fn bytes(&self) -> u32 {
        match self {
            Step::Copy(l) => l.len,
            Step::CopyOutput { len, .. } | Step::Literal { len, .. } => *len,
        }
    }
}

/// What the receiver will do with a recipe.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Ranges of recipe indices to request: (first, count).
    pub need: Vec<(u32, u32)>,
    pub literal_bytes: u64,
    pub reused_bytes: u64,
}

/// Decides, chunk by chunk, what to copy and what to ask for.
pub fn plan(recipe: &[ChunkRef], index: &ChunkIndex) -> Plan {
    let mut planner = Planner::default();
    planner.extend(recipe, index)
}

/// Chunks asked for that a planner remembers, to copy a repeat from the new
/// file instead of asking again (~1 MiB): past this many, a file mostly new
/// (a checkpoint against the previous one) would make it grow with its size;
/// repeats of later chunks are then asked for again.
pub const MAX_REMEMBERED: usize = 1 << 14;

/// Plans a recipe as it arrives: each part's plan can be acted on (asked for,
/// copied) before the next arrives.
#[derive(Default)]
pub struct Planner {
    // keyed by length too: a hash announced with another length is a lie that
    // must fail its own check, not a copy of bytes that were never written
    requested: HashMap<(ChunkHash, u32), u64>,
    out_offset: u64,
    next_index: u32,
}

impl Planner {
    /// The plan for the next part of a flat recipe; [`Plan::need`] indices
    /// count from the start of the whole recipe.
    pub fn extend(&mut self, batch: &[ChunkRef], index: &ChunkIndex) -> Plan {
        let mut p = Plan::default();
        let first = self.next_index;
        self.next_index += batch.len() as u32;
        self.chunks(batch, first, index, &mut p);
        p
    }

    /// Adds `chunks` to `p`: copied when `index` has them (or they were asked
    /// for earlier), else asked for as indices `first + i`.
    pub fn chunks(&mut self, chunks: &[ChunkRef], first: u32, index: &ChunkIndex, p: &mut Plan) {
        for (k, c) in chunks.iter().enumerate() {
            let i = first + k as u32;
            let step = match index.get(&c.hash) {
                Some(loc) if loc.len == c.len => Step::Copy(loc),
                _ => match self.requested.get(&(c.hash, c.len)) {
                    Some(&offset) => Step::CopyOutput { offset, len: c.len },
                    None => {
                        if self.requested.len() < MAX_REMEMBERED {
                            self.requested.insert((c.hash, c.len), self.out_offset);
                        }
                        match p.need.last_mut() {
                            Some((start, count)) if *start + *count == i => *count += 1,
                            _ => p.need.push((i, 1)),
                        }
                        Step::Literal {
                            len: c.len,
                            hash: c.hash,
                        }
                    }
                },
            };
            match step {
                Step::Literal { len, .. } => p.literal_bytes += len as u64,
                _ => p.reused_bytes += c.len as u64,
            }
            p.steps.push(step);
            self.out_offset += c.len as u64;
        }
    }

    /// Adds a copy of bytes the receiver has (a chunk of a span it knows).
    pub fn copy(&mut self, loc: Location, p: &mut Plan) {
        p.steps.push(Step::Copy(loc));
        p.reused_bytes += loc.len as u64;
        self.out_offset += loc.len as u64;
    }
}

/// Spans end after a chunk whose hash says so: one chunk in this many, so a
/// span is about this many chunks, and where spans end depends only on the
/// content, like chunk boundaries themselves.
pub const SPAN_AVG: u16 = 128;

/// Whether a span ends after the chunk with this hash.
fn ends_span(hash: &ChunkHash) -> bool {
    u16::from_le_bytes([hash[14], hash[15]]).is_multiple_of(SPAN_AVG)
}

/// Groups a stream of chunks into spans, naming each by the BLAKE3 of its
/// chunks' (length, hash) references.
#[derive(Default)]
pub struct Spanner {
    chunks: u32,
    len: u64,
    hasher: blake3::Hasher,
}

impl Spanner {
    /// Adds the next chunk; returns the span it closes, if it closes one.
    pub fn push(&mut self, len: u32, hash: &ChunkHash) -> Option<SpanRef> {
        self.hasher.update(&len.to_le_bytes());
        self.hasher.update(hash);
        self.chunks += 1;
        self.len += len as u64;
        (ends_span(hash) || self.chunks as usize == MAX_SPAN_CHUNKS).then(|| self.take())
    }

    /// The last, unfinished span, if any chunks are left.
    pub fn finish(&mut self) -> Option<SpanRef> {
        (self.chunks > 0).then(|| self.take())
    }

    fn take(&mut self) -> SpanRef {
        let s = SpanRef {
            chunks: self.chunks,
            len: self.len,
            hash: *self.hasher.finalize().as_bytes(),
        };
        *self = Spanner::default();
        s
    }
}

/// One span of a basis file: where its chunks start (by number and by byte)
/// and how many bytes they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasisSpan {
    pub first: u64,
    pub offset: u64,
    pub chunks: u32,
    pub len: u64,
}

/// Collects the spans of one basis file as its chunks go by, in order.
#[derive(Default)]
pub struct SpanCollector {
    spanner: Spanner,
    next_first: u64,
    next_offset: u64,
    spans: Vec<([u8; 32], BasisSpan)>,
}

impl SpanCollector {
    pub fn push(&mut self, len: u32, hash: &ChunkHash) {
        if let Some(sp) = self.spanner.push(len, hash) {
            self.close(sp);
        }
    }

    /// The file's spans (named by hash), the last one closed.
    pub fn finish(mut self) -> Vec<([u8; 32], BasisSpan)> {
        if let Some(sp) = self.spanner.finish() {
            self.close(sp);
        }
        self.spans
    }

    fn close(&mut self, sp: SpanRef) {
        self.spans.push((
            sp.hash,
            BasisSpan {
                first: self.next_first,
                offset: self.next_offset,
                chunks: sp.chunks,
                len: sp.len,
            },
        ));
        self.next_first += sp.chunks as u64;
        self.next_offset += sp.len;
    }
}

/// Where a span the receiver has lies: which basis, which of its spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLoc {
    pub basis: u32,
    pub span: u32,
    pub at: BasisSpan,
}

/// Spans of a basis looked through for the chunks of spans the receiver
/// lacks, on each side of the spans it has around them: an edit rarely
/// moves data further than that.
pub const WINDOW_SIDE: usize = 4;
/// The most spans between two known neighbours looked through as one window
/// (~48 MiB of basis at the average span).
pub const WINDOW_GAP: usize = 64;

/// Spans of the basis files to look through: (basis, span range), sorted.
pub type Window = Vec<(u32, std::ops::Range<usize>)>;

/// The spans of the basis files: which span of which file a hash names, and
/// each file's spans in order. About 100 bytes per ~768 KiB of basis, so it
/// is kept whole in memory where the chunks are not.
#[derive(Default)]
pub struct SpanIndex {
    map: HashMap<[u8; 32], (u32, u32)>,
    files: Vec<Vec<BasisSpan>>,
}

impl SpanIndex {
    /// Adds the next basis file's spans: basis number one more than the last.
    pub fn add_file(&mut self, spans: Vec<([u8; 32], BasisSpan)>) {
        let basis = self.files.len() as u32;
        for (i, (hash, _)) in spans.iter().enumerate() {
            self.map.entry(*hash).or_insert((basis, i as u32));
        }
        self.files.push(spans.into_iter().map(|(_, s)| s).collect());
    }

    /// The spans of basis file `basis`, in order.
    pub fn spans(&self, basis: u32) -> &[BasisSpan] {
        &self.files[basis as usize]
    }

    /// Where the receiver has `span`, if it does (same hash, length and count).
    pub fn get(&self, span: &SpanRef) -> Option<SpanLoc> {
        let &(basis, i) = self.map.get(&span.hash)?;
        let at = self.files[basis as usize][i as usize];
        (at.len == span.len && at.chunks == span.chunks).then_some(SpanLoc { basis, span: i, at })
    }

    /// The spans of the basis whose chunks are worth looking through for a
    /// run of new spans the receiver lacks, given the known spans just
    /// before (`prev`) and after (`next`) the run in the new file: what lies
    /// between them in the basis when they are close and in order (an edit in
    /// place, an insert, a delete), else a few spans after `prev` and before
    /// `next`. Returned as (basis, span range), sorted, not overlapping.
    pub fn window(&self, prev: Option<SpanLoc>, next: Option<SpanLoc>) -> Window {
        let mut w = Window::new();
        if let (Some(p), Some(n)) = (prev, next) {
            if p.basis == n.basis && p.span < n.span && (n.span - p.span) as usize <= WINDOW_GAP {
                w.push((p.basis, p.span as usize..n.span as usize + 1));
                return w;
            }
        }
        if let Some(p) = prev {
            let count = self.files[p.basis as usize].len();
            let s = p.span as usize;
            w.push((p.basis, s..(s + 1 + WINDOW_SIDE).min(count)));
        }
        if let Some(n) = next {
            let e = n.span as usize + 1;
            let r = e.saturating_sub(1 + WINDOW_SIDE)..e;
            match w.last_mut() {
                Some((b, prior))
                    if *b == n.basis && r.start <= prior.end && prior.start <= r.end =>
                {
                    *prior = prior.start.min(r.start)..prior.end.max(r.end);
                }
                _ => w.push((n.basis, r)),
            }
            w.sort_by_key(|(b, r)| (*b, r.start));
        }
        w
    }
}

/// Checks a `Need` from the receiver against the recipe it answers: ranges in
/// order, inside the recipe, not overlapping. Returns the number of chunks asked.
pub fn check_need(ranges: &[(u32, u32)], recipe_len: usize) -> Result<u64, &'static str> {
    let mut next = 0u64;
    let mut total = 0u64;
    for &(start, count) in ranges {
        let (start, count) = (start as u64, count as u64);
        if count == 0 {
            return Err("empty range");
        }
        if start < next {
            return Err("ranges out of order or overlapping");
        }
        if start + count > recipe_len as u64 {
            return Err("range past the end of the recipe");
        }
        next = start + count;
        total += count;
    }
    Ok(total)
}

/// Walks a plan's steps in order: copies run on their own, literals wait for data.
pub struct Rebuild {
    /// Steps not yet done start at `pos`; done ones are dropped now and then.
    steps: Vec<Step>,
    pos: usize,
    written: u64,
}

impl Rebuild {
    pub fn new(steps: Vec<Step>) -> Self {
        Rebuild {
            steps,
            pos: 0,
            written: 0,
        }
    }

    /// Performs every copy step up to the next literal (or the end).
    /// `copy(step, output_offset)` does the actual reading and writing.
    pub fn run_copies<E>(
        &mut self,
        mut copy: impl FnMut(&Step, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(step) = self.steps.get(self.pos) {
            if matches!(step, Step::Literal { .. }) {
                break;
            }
            copy(step, self.written)?;
            self.written += step.bytes() as u64;
            self.pos += 1;
        }
        Ok(())
    }

    /// The literal chunk the rebuild waits for, if any.
    pub fn next_literal(&self) -> Option<(u32, ChunkHash)> {
        match self.steps.get(self.pos) {
            Some(Step::Literal { len, hash }) => Some((*len, *hash)),
            _ => None,
        }
    }

    /// Marks the awaited literal as written.
    pub fn literal_written(&mut self) {
        let len = self.steps[self.pos].bytes();
        self.written += len as u64;
        self.pos += 1;
    }

    /// Appends the steps of the next recipe batch.
    pub fn extend(&mut self, steps: Vec<Step>) {
        self.steps.drain(..self.pos);
        self.pos = 0;
        self.steps.extend(steps);
    }

    pub fn is_done(&self) -> bool {
        self.pos == self.steps.len()
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Errors of the in-memory [`apply`] used by tests and fuzzing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("copy outside the basis at offset {offset}")]
    BasisOutOfRange { offset: u64 },
    #[error("missing literal chunk")]
    MissingLiteral,
    #[error("literal chunk does not match its hash")]
    BadLiteral,
}

/// A self-contained delta: the recipe plus the literal chunks the receiver lacks.
pub struct Delta {
    pub recipe: Vec<ChunkRef>,
    pub literals: Vec<Vec<u8>>,
}

/// Computes what a sender would send to rebuild `target` from `basis` (in memory).
pub fn delta(basis: &[u8], target: &[u8]) -> Delta {
    let mut index = ChunkIndex::default();
    for c in crate::chunk::chunk_slice(basis) {
        index.add(0, &c);
    }
    let mut recipe = Vec::new();
    let mut chunks = Vec::new();
    let mut chunker = Chunker::chunks_only(target);
    while let Some((c, _)) = chunker.next_chunk().expect("slice") {
        recipe.push(ChunkRef {
            len: c.len,
            hash: c.hash,
        });
        chunks.push(c);
    }
    let p = plan(&recipe, &index);
    let mut literals = Vec::new();
    for &(start, count) in &p.need {
        for c in &chunks[start as usize..(start + count) as usize] {
            literals.push(target[c.offset as usize..c.offset as usize + c.len as usize].to_vec());
        }
    }
    Delta { recipe, literals }
}

/// Rebuilds the target from `basis` and a [`Delta`] (in memory).
pub fn apply(basis: &[u8], d: &Delta) -> Result<Vec<u8>, ApplyError> {
    let mut index = ChunkIndex::default();
    for c in crate::chunk::chunk_slice(basis) {
        index.add(0, &c);
    }
    let p = plan(&d.recipe, &index);
    let mut out: Vec<u8> = Vec::new();
    let mut literals = d.literals.iter();
    let mut rb = Rebuild::new(p.steps);
    loop {
        rb.run_copies(|step, _| {
            let (src, off, len): (&[u8], u64, u32) = match *step {
                Step::Copy(l) => (basis, l.offset, l.len),
                Step::CopyOutput { offset, len } => (&out, offset, len),
                Step::Literal { .. } => unreachable!(),
            };
            let end = off + len as u64;
            if end > src.len() as u64 {
                return Err(ApplyError::BasisOutOfRange { offset: off });
            }
            let bytes = src[off as usize..end as usize].to_vec();
            out.extend_from_slice(&bytes);
            Ok(())
        })?;
        let Some((len, hash)) = rb.next_literal() else {
            break;
        };
        let lit = literals.next().ok_or(ApplyError::MissingLiteral)?;
        if lit.len() != len as usize || chunk_hash(lit) != hash {
            return Err(ApplyError::BadLiteral);
        }
        out.extend_from_slice(lit);
        rb.literal_written();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{AVG_CHUNK, MAX_CHUNK};
    use proptest::prelude::*;

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    const SIZES: [usize; 9] = [
        0,
        1,
        AVG_CHUNK - 1,
        AVG_CHUNK,
        AVG_CHUNK + 1,
        MAX_CHUNK - 1,
        MAX_CHUNK,
        MAX_CHUNK + 1,
        3 << 20,
    ];

    fn literal_bytes(d: &Delta) -> usize {
        d.literals.iter().map(|l| l.len()).sum()
    }

    #[test]
    fn a_repeated_hash_with_another_length_is_not_copied_from_the_output() {
        // A lying recipe: the same hash announced with two lengths. The second
        // cannot be the bytes written for the first, so it must be asked for
        // (and then fail its own check), not copied from beyond what was written.
        let hash = chunk_hash(&[7u8; 10]);
        let recipe = [ChunkRef { len: 10, hash }, ChunkRef { len: 50, hash }];
        let p = plan(&recipe, &ChunkIndex::default());
        assert_eq!(p.steps[1], Step::Literal { len: 50, hash });
        assert_eq!(p.need, vec![(0, 2)]);
    }

    fn spans_of(data: &[u8]) -> Vec<SpanRef> {
        let mut sp = Spanner::default();
        let mut out = Vec::new();
        for c in crate::chunk::chunk_slice(data) {
            out.extend(sp.push(c.len, &c.hash));
        }
        out.extend(sp.finish());
        out
    }

    fn span_index(files: &[&[u8]]) -> SpanIndex {
        let mut index = SpanIndex::default();
        for data in files {
            let mut spans = SpanCollector::default();
            for c in crate::chunk::chunk_slice(data) {
                spans.push(c.len, &c.hash);
            }
            index.add_file(spans.finish());
        }
        index
    }

    #[test]
    fn collected_spans_are_the_senders_spans_at_their_places() {
        let data = random(8 << 20, 11);
        let index = span_index(&[&data]);
        let (mut first, mut offset) = (0, 0);
        for (i, sp) in spans_of(&data).iter().enumerate() {
            let loc = index.get(sp).expect("known");
            assert_eq!((loc.basis, loc.span as usize), (0, i));
            assert_eq!(loc.at.first, first);
            assert_eq!(loc.at.offset, offset);
            first += sp.chunks as u64;
            offset += sp.len;
        }
        assert_eq!(offset, data.len() as u64);
    }

    #[test]
    fn the_window_is_the_basis_between_known_neighbours_or_near_them() {
        let a = random(64 << 20, 12);
        let b = random(8 << 20, 13);
        let index = span_index(&[&a, &b]);
        let n = index.spans(0).len();
        assert!(n > WINDOW_GAP + 12, "{n} spans");
        let loc = |basis: u32, span: usize| SpanLoc {
            basis,
            span: span as u32,
            at: index.spans(basis)[span],
        };
        // an edit in place: between the neighbours, both included
        assert_eq!(
            index.window(Some(loc(0, 10)), Some(loc(0, 12))),
            vec![(0, 10..13)]
        );
        // neighbours far apart, out of order, or in other files: a few spans
        // after the one before and before the one after
        let side = WINDOW_SIDE;
        assert_eq!(
            index.window(Some(loc(0, 10)), Some(loc(0, 11 + WINDOW_GAP))),
            vec![
                (0, 10..11 + side),
                (0, 11 + WINDOW_GAP - side..12 + WINDOW_GAP)
            ]
        );
        assert_eq!(
            index.window(Some(loc(0, 40)), Some(loc(0, 30))),
            vec![(0, 30 - side..31), (0, 40..41 + side)]
        );
        // (overlapping sides are one range)
        assert_eq!(
            index.window(Some(loc(0, 40)), Some(loc(0, 40))),
            vec![(0, 40 - side..41 + side)]
        );
        assert_eq!(
            index.window(Some(loc(1, 0)), Some(loc(0, 2))),
            vec![(0, 0..3), (1, 0..1 + side)]
        );
        // at the ends of the file, and with one neighbour only
        assert_eq!(index.window(None, Some(loc(0, 1))), vec![(0, 0..2)]);
        assert_eq!(index.window(Some(loc(0, n - 2)), None), vec![(0, n - 2..n)]);
        assert_eq!(index.window(None, None), vec![]);
    }

    #[test]
    fn spans_cover_the_file_and_an_edit_changes_only_its_own() {
        let data = random(16 << 20, 5);
        let spans = spans_of(&data);
        assert_eq!(spans.iter().map(|s| s.len).sum::<u64>(), data.len() as u64);
        assert!(spans.len() > 8, "{} spans", spans.len());
        let index = span_index(&[&data]);
        assert!(spans.iter().all(|s| index.get(s).is_some()));
        // 64 KiB rewritten in the middle: one or two spans differ, and the
        // receiver finds each of the others where it was
        let mut edited = data.clone();
        edited[8 << 20..(8 << 20) + 65536].copy_from_slice(&random(65536, 6));
        let after = spans_of(&edited);
        let unknown = after.iter().filter(|s| index.get(s).is_none()).count();
        assert!((1..=2).contains(&unknown), "{unknown} spans changed");
        assert!(after.len().abs_diff(spans.len()) <= 1);
    }

    #[test]
    fn round_trip_over_boundary_sizes() {
        for &b in &SIZES {
            for &t in &SIZES {
                let basis = random(b, b as u64 + 1);
                let target = random(t, t as u64 + 2);
                let d = delta(&basis, &target);
                assert_eq!(apply(&basis, &d).unwrap(), target, "basis {b} target {t}");
            }
        }
    }

    #[test]
    fn edits_cost_about_their_size() {
        let basis = random(4 << 20, 42);
        let mid = basis.len() / 2;
        let end = basis.len();
        let insert = random(1000, 7);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("insert at start", [&insert[..], &basis[..]].concat()),
            (
                "insert in middle",
                [&basis[..mid], &insert[..], &basis[mid..]].concat(),
            ),
            ("insert at end", [&basis[..], &insert[..]].concat()),
            ("delete at start", basis[5000..].to_vec()),
            (
                "delete in middle",
                [&basis[..mid], &basis[mid + 5000..]].concat(),
            ),
            ("delete at end", basis[..end - 5000].to_vec()),
            ("overwrite in middle", {
                let mut v = basis.clone();
                v[mid..mid + 1000].copy_from_slice(&insert);
                v
            }),
        ];
        for (what, target) in cases {
            let d = delta(&basis, &target);
            assert_eq!(apply(&basis, &d).unwrap(), target, "{what}");
            let lit = literal_bytes(&d);
            assert!(lit <= 3 * MAX_CHUNK, "{what}: {lit} literal bytes");
        }
    }

    #[test]
    fn a_planner_remembers_a_bounded_number_of_chunks_asked_for() {
        let chunk = |i: u32| ChunkRef {
            len: 4096,
            hash: *blake3::hash(&i.to_le_bytes())
                .as_bytes()
                .first_chunk()
                .unwrap(),
        };
        let mut planner = Planner::default();
        let index = ChunkIndex::default();
        let first: Vec<ChunkRef> = (0..MAX_REMEMBERED as u32 + 10).map(chunk).collect();
        let p = planner.extend(&first, &index);
        assert_eq!(p.literal_bytes, first.len() as u64 * 4096);
        assert_eq!(planner.requested.len(), MAX_REMEMBERED);
        // a repeat of a remembered chunk is copied, one past the bound asked again
        let p = planner.extend(&[chunk(5), chunk(MAX_REMEMBERED as u32 + 5)], &index);
        assert!(matches!(p.steps[0], Step::CopyOutput { .. }));
        assert!(matches!(p.steps[1], Step::Literal { .. }));
    }

    #[test]
    fn repeated_missing_chunk_is_requested_once() {
        let block = random(MAX_CHUNK, 9);
        let target = [&block[..], &block[..], &block[..]].concat();
        let d = delta(&[], &target);
        assert_eq!(apply(&[], &d).unwrap(), target);
        assert!(literal_bytes(&d) < target.len() / 2);
    }

    #[test]
    fn corrupt_literal_is_refused() {
        let target = random(100_000, 3);
        let mut d = delta(&[], &target);
        d.literals[0][0] ^= 1;
        assert_eq!(apply(&[], &d), Err(ApplyError::BadLiteral));
        d.literals.clear();
        assert_eq!(apply(&[], &d), Err(ApplyError::MissingLiteral));
    }

    #[test]
    fn need_ranges_are_checked() {
        assert_eq!(check_need(&[(0, 2), (5, 1)], 6), Ok(3));
        assert!(check_need(&[(0, 2), (1, 1)], 6).is_err());
        assert!(check_need(&[(5, 2)], 6).is_err());
        assert!(check_need(&[(0, 0)], 6).is_err());
        assert!(check_need(&[(u32::MAX, u32::MAX)], 6).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn apply_of_delta_is_target(
            seed in any::<u64>(),
            len in 0usize..400_000,
            edits in proptest::collection::vec((any::<u32>(), 0usize..3, 0usize..20_000), 0..6),
        ) {
            let basis = random(len, seed);
            let mut target = basis.clone();
            for (pos, kind, n) in edits {
                let at = if target.is_empty() { 0 } else { pos as usize % target.len() };
                match kind {
                    0 => { let ins = random(n, pos as u64); target.splice(at..at, ins); }
                    1 => { let e = (at + n).min(target.len()); target.drain(at..e); }
                    _ => { let e = (at + n).min(target.len()); for b in &mut target[at..e] { *b = !*b; } }
                }
            }
            let d = delta(&basis, &target);
            prop_assert_eq!(apply(&basis, &d).unwrap(), target);
        }
    }
}
