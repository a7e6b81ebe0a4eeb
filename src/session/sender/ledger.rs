//! The sender's half of the two-level recipe exchange, as plain data: which
//! `Need` answers which `Spans` or `Recipe` message, and what it may ask for.
//! Every `Spans` and `Recipe` message sent for a file is answered by exactly one
//! `Need`, in the order sent, so the oldest unanswered message says what a
//! `Need` means: spans (answered by the chunk list of those asked for, a
//! `Recipe`) or a recipe (answered by the chunks asked for). `FileEnd` may
//! follow once the recipe has ended and every message is answered.
//!
//! Sans-IO, like `quinn-proto`: no files, threads, clocks or channels. The
//! sender's main thread tells the ledger what it sent ([`Ledger::sent_spans`],
//! [`Ledger::ended`]), hands it each `Need` ([`Ledger::on_need`]) and acts on
//! what comes back: a recipe to send, chunks to read and send, or a
//! [`Violation`] that ends the session. What a file's entry holds besides
//! (the open file, for the sender) is the caller's `T`.
//!
//! # Security
//! A `Need` is checked before anything is read for it: for a file with a recipe
//! on offer, against the oldest message unanswered, with ranges in order,
//! inside what that message offered, not overlapping.

use crate::chunk::ChunkHash;
use crate::delta::check_need;
use crate::proto::ChunkRef;
use std::collections::{HashMap, HashSet, VecDeque};

/// Recipes sent and not yet answered, at most this many at once.
pub(super) const MAX_PENDING_RECIPES: usize = 64;
/// Batches of spans of one file sent and not yet finished, at most this many
/// (~100 MiB of file ahead of the receiver's answers, ~1 MiB of chunk lists).
pub(super) const MAX_BATCHES_AHEAD: usize = 8;

/// The receiver broke the rules of the exchange; the text says how.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// One `Spans` message: the chunks of its spans, and once the receiver asked
/// for some spans, the chunks listed in the `Recipe` that answered it.
#[derive(Default)]
pub struct SentBatch {
    /// Each chunk: offset in the file, length, hash.
    chunks: Vec<(u64, u32, ChunkHash)>,
    /// Each span: its first chunk (in `chunks`) and how many.
    spans: Vec<(usize, usize)>,
    /// Indices into `chunks` of the entries of the `Recipe` sent.
    listed: Vec<usize>,
    /// Where the span being built starts in `chunks`.
    span_start: usize,
}

impl SentBatch {
    /// The next chunk of the file, in order.
    pub fn push_chunk(&mut self, offset: u64, len: u32, hash: ChunkHash) {
        self.chunks.push((offset, len, hash));
    }

    /// A span closed: its `chunks` chunks are the last pushed since the
    /// previous span closed.
    pub fn close_span(&mut self, chunks: usize) {
        self.spans.push((self.span_start, chunks));
        self.span_start = self.chunks.len();
    }
}

/// Which message of a file awaits its `Need`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Offered {
    /// The spans of a batch: the `Need` says which the receiver lacks.
    Spans,
    /// The chunk list (`Recipe`) of those spans: the `Need` says which chunks.
    Recipe,
}

/// A file whose recipe is being sent or answered.
struct Offer<T> {
    held: T,
    /// Batches of spans sent and not yet finished, by number.
    batches: HashMap<u64, SentBatch>,
    next_batch: u64,
    /// Messages awaiting their `Need`, oldest first.
    awaiting: VecDeque<(u64, Offered)>,
    /// Size and whole-file check, once the recipe has ended.
    ended: Option<(u64, [u8; 32])>,
}

/// What to do about a `Need`.
pub enum Answer {
    /// Nothing: the file was given up on, and the receiver asked before it
    /// heard.
    Ignore,
    /// Send a `Recipe` with these chunks.
    Recipe(Vec<ChunkRef>),
    /// Read and send the chunks asked for.
    Chunks(Wanted),
}

/// The chunks a `Need` for a recipe asked for, in the order to send them.
pub struct Wanted {
    batch: SentBatch,
    ranges: Vec<(u32, u32)>,
}

impl Wanted {
    /// Each range asked for, as its chunks in order: (offset, length, hash).
    pub fn ranges(
        &self,
    ) -> impl Iterator<Item = impl Iterator<Item = (u64, u32, ChunkHash)> + '_> + '_ {
        self.ranges.iter().map(move |&(start, count)| {
            self.batch.listed[start as usize..(start + count) as usize]
                .iter()
                .map(move |&i| self.batch.chunks[i])
        })
    }
}

/// The recipes of all files on offer, and the files given up on mid-recipe.
pub struct Ledger<T> {
    files: HashMap<u32, Offer<T>>,
    /// Files given up on mid-recipe: a `Need` the receiver sent before it
    /// heard is ignored.
    given_up: HashSet<u32>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            files: HashMap::new(),
            given_up: HashSet::new(),
        }
    }
}

impl<T> Ledger<T> {
    /// Whether the receiver may ask for one more recipe.
    pub fn room(&self) -> Result<(), Violation> {
        if self.files.len() >= MAX_PENDING_RECIPES {
            return Err(Violation("left too many recipes unanswered".into()));
        }
        Ok(())
    }

    /// A recipe for `file` starts; `held` stays with it until it ends.
    pub fn open(&mut self, file: u32, held: T) {
        self.files.insert(
            file,
            Offer {
                held,
                batches: HashMap::new(),
                next_batch: 0,
                awaiting: VecDeque::new(),
                ended: None,
            },
        );
    }

    /// Whether `file` has a recipe on offer (it was not given up on).
    pub fn is_open(&self, file: u32) -> bool {
        self.files.contains_key(&file)
    }

    /// Whether [`MAX_BATCHES_AHEAD`] batches of `file` are unanswered, so
    /// that chunking it waits for answers.
    pub fn is_ahead(&self, file: u32) -> bool {
        self.files
            .get(&file)
            .is_some_and(|o| o.batches.len() >= MAX_BATCHES_AHEAD)
    }

    /// What `file`'s entry holds.
    pub fn held(&self, file: u32) -> Option<&T> {
        self.files.get(&file).map(|o| &o.held)
    }

    /// A `Spans` message for `file` was sent with the spans of `batch`.
    ///
    /// # Panics
    /// If `file` has no recipe open.
    pub fn sent_spans(&mut self, file: u32, batch: SentBatch) {
        let o = self.files.get_mut(&file).expect("a recipe open");
        let id = o.next_batch;
        o.next_batch += 1;
        o.batches.insert(id, batch);
        o.awaiting.push_back((id, Offered::Spans));
    }

    /// `RecipeEnd` for `file` was sent: its size and whole-file check.
    ///
    /// # Panics
    /// If `file` has no recipe open.
    pub fn ended(&mut self, file: u32, size: u64, check: [u8; 32]) {
        self.files.get_mut(&file).expect("a recipe open").ended = Some((size, check));
    }

    /// The receiver's `Need` for `file`: what it answers, and what to send.
    pub fn on_need(&mut self, file: u32, ranges: &[(u32, u32)]) -> Result<Answer, Violation> {
        if self.given_up.contains(&file) {
            return Ok(Answer::Ignore);
        }
        let o = self.files.get_mut(&file).ok_or_else(|| {
            Violation(format!("asked for chunks of file {file} without a recipe"))
        })?;
        let Some((id, offered)) = o.awaiting.pop_front() else {
            return Err(Violation(format!(
                "asked for more of file {file} than was offered"
            )));
        };
        let batch = o.batches.get_mut(&id).expect("batch awaiting an answer");
        let len = match offered {
            Offered::Recipe => batch.listed.len(),
            Offered::Spans => batch.spans.len(),
        };
        check_need(ranges, len)
            .map_err(|why| Violation(format!("asked for chunks of file {file}: {why}")))?;
        if offered == Offered::Spans {
            // the chunk references of the spans asked for
            let mut listed = Vec::new();
            for &(start, count) in ranges {
                for &(first, n) in &batch.spans[start as usize..(start + count) as usize] {
                    listed.extend(first..first + n);
                }
            }
            let chunks = listed
                .iter()
                .map(|&i| ChunkRef {
                    len: batch.chunks[i].1,
                    hash: batch.chunks[i].2,
                })
                .collect();
            batch.listed = listed;
            o.awaiting.push_back((id, Offered::Recipe));
            return Ok(Answer::Recipe(chunks));
        }
        let batch = o.batches.remove(&id).expect("batch");
        Ok(Answer::Chunks(Wanted {
            batch,
            ranges: ranges.to_vec(),
        }))
    }

    /// If `file`'s recipe has ended and every message is answered: what it
    /// holds, with the size and check for `FileEnd`. The file stays open
    /// until [`Ledger::close`] or [`Ledger::give_up`].
    pub fn finished(&self, file: u32) -> Option<(&T, u64, [u8; 32])> {
        let o = self.files.get(&file)?;
        let (size, check) = o.ended?;
        o.awaiting.is_empty().then_some((&o.held, size, check))
    }

    /// `FileEnd` for `file` was sent: nothing more may be asked of it.
    pub fn close(&mut self, file: u32) -> Option<T> {
        self.files.remove(&file).map(|o| o.held)
    }

    /// `file` was given up on. If it had a recipe on offer, the receiver's
    /// answers still on their way are ignored when they arrive.
    pub fn give_up(&mut self, file: u32) -> Option<T> {
        let o = self.files.remove(&file)?;
        self.given_up.insert(file);
        Some(o.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger with file 7 open and one batch of three spans sent: chunks
    /// 0-1, 2, 3-5 (offset = 100 × index, length 10 + index).
    fn offered() -> Ledger<()> {
        let mut l = Ledger::default();
        l.open(7, ());
        let mut b = SentBatch::default();
        for i in 0..6u8 {
            b.push_chunk(100 * i as u64, 10 + i as u32, [i; 16]);
            match i {
                1 => b.close_span(2),
                2 => b.close_span(1),
                5 => b.close_span(3),
                _ => {}
            }
        }
        l.sent_spans(7, b);
        l
    }

    fn refused(l: &mut Ledger<()>, file: u32, ranges: &[(u32, u32)]) -> String {
        match l.on_need(file, ranges) {
            Err(Violation(t)) => t,
            Ok(_) => panic!("{ranges:?} was accepted"),
        }
    }

    fn recipe(l: &mut Ledger<()>, ranges: &[(u32, u32)]) -> Vec<u32> {
        match l.on_need(7, ranges) {
            Ok(Answer::Recipe(c)) => c.iter().map(|c| c.len).collect(),
            _ => panic!("no recipe"),
        }
    }

    #[test]
    fn spans_then_recipe_then_chunks_then_end() {
        let mut l = offered();
        assert!(l.finished(7).is_none());
        assert_eq!(recipe(&mut l, &[(0, 1), (2, 1)]), [10, 11, 13, 14, 15]);
        l.ended(7, 600, [9; 32]);
        assert!(l.finished(7).is_none(), "the recipe is not answered yet");
        let Ok(Answer::Chunks(w)) = l.on_need(7, &[(1, 2), (4, 1)]) else {
            panic!("no chunks");
        };
        let sent: Vec<Vec<u64>> = w.ranges().map(|r| r.map(|c| c.0).collect()).collect();
        assert_eq!(sent, [vec![100, 300], vec![500]]);
        assert_eq!(l.finished(7).map(|(_, s, c)| (s, c)), Some((600, [9; 32])));
        assert!(l.close(7).is_some());
        assert!(!l.is_open(7));
    }

    #[test]
    fn an_empty_need_answers_without_chunks() {
        let mut l = offered();
        assert!(recipe(&mut l, &[]).is_empty());
        assert!(matches!(l.on_need(7, &[]), Ok(Answer::Chunks(w)) if w.ranges().count() == 0));
    }

    /// Each hostile `Need`, with the text the session ends with.
    #[test]
    fn hostile_needs_are_refused_with_todays_texts() {
        type Setup = fn(&mut Ledger<()>);
        /// What is set up, the file and ranges of the `Need`, the text it ends with.
        type Case = (
            &'static str,
            Setup,
            u32,
            &'static [(u32, u32)],
            &'static str,
        );
        fn nothing(_: &mut Ledger<()>) {}
        /// The spans answered, then the recipe: nothing awaits a `Need`.
        fn answered(l: &mut Ledger<()>) {
            let _ = l.on_need(7, &[(0, 3)]);
            let _ = l.on_need(7, &[]);
        }
        /// ... and the file ended.
        fn ended(l: &mut Ledger<()>) {
            answered(l);
            l.ended(7, 600, [0; 32]);
            l.close(7);
        }
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (
                "a file with no recipe",
                nothing,
                8,
                &[(0, 1)],
                "asked for chunks of file 8 without a recipe",
            ),
            (
                "a batch never sent",
                answered,
                7,
                &[(0, 1)],
                "asked for more of file 7 than was offered",
            ),
            (
                "a span past the end",
                nothing,
                7,
                &[(2, 2)],
                "asked for chunks of file 7: range past the end of the recipe",
            ),
            (
                "a range far out of bounds",
                nothing,
                7,
                &[(u32::MAX, u32::MAX)],
                "asked for chunks of file 7: range past the end of the recipe",
            ),
            (
                "overlapping ranges",
                nothing,
                7,
                &[(0, 2), (1, 1)],
                "asked for chunks of file 7: ranges out of order or overlapping",
            ),
            (
                "ranges out of order",
                nothing,
                7,
                &[(2, 1), (0, 1)],
                "asked for chunks of file 7: ranges out of order or overlapping",
            ),
            (
                "an empty range",
                nothing,
                7,
                &[(0, 0)],
                "asked for chunks of file 7: empty range",
            ),
            (
                "a need after the end",
                ended,
                7,
                &[],
                "asked for chunks of file 7 without a recipe",
            ),
        ];
        for &(label, setup, file, ranges, text) in cases {
            let mut l = offered();
            setup(&mut l);
            assert_eq!(refused(&mut l, file, ranges), text, "{label}");
        }
    }

    #[test]
    fn a_chunk_past_the_recipe_is_refused() {
        let mut l = offered();
        recipe(&mut l, &[(1, 1)]); // one chunk listed
        assert_eq!(
            refused(&mut l, 7, &[(0, 2)]),
            "asked for chunks of file 7: range past the end of the recipe"
        );
    }

    #[test]
    fn a_file_given_up_on_ignores_late_answers_and_a_whole_file_does_not() {
        let mut l = offered();
        assert!(l.give_up(7).is_some());
        assert!(matches!(l.on_need(7, &[(0, 1)]), Ok(Answer::Ignore)));
        assert!(l.give_up(8).is_none(), "never offered");
        assert_eq!(
            refused(&mut l, 8, &[]),
            "asked for chunks of file 8 without a recipe"
        );
    }

    #[test]
    fn too_many_recipes_and_too_many_batches_ahead() {
        let mut l: Ledger<()> = Ledger::default();
        for f in 0..MAX_PENDING_RECIPES as u32 {
            assert!(l.room().is_ok());
            l.open(f, ());
        }
        assert_eq!(
            l.room(),
            Err(Violation("left too many recipes unanswered".into()))
        );
        for _ in 0..MAX_BATCHES_AHEAD {
            assert!(!l.is_ahead(0));
            l.sent_spans(0, SentBatch::default());
        }
        assert!(l.is_ahead(0));
    }
}
