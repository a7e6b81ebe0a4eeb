//! A file the receiver rebuilds from old data: its spans in batches, the
//! chunk lists of the spans the receiver lacks, then the chunks it asks for,
//! and `FileEnd` once every message is answered and the file did not change.
//! Not for whole files ([`super::whole`]).

use super::source::unchanged;
use super::{FromPeer, Sender};
use crate::chunk::{chunk_hash, ChunkHash, Chunker, RebuildKey};
use crate::delta::{check_need, Spanner};
use crate::error::{io_text, TransferError};
use crate::proto::{ChunkRef, Message, MAX_SPAN_BATCH};
use crate::store::source::{Source, SourceFile, Stamp};
use std::collections::HashMap;
use std::io::Write;

/// Recipes sent and not yet answered, at most this many at once.
pub(super) const MAX_PENDING_RECIPES: usize = 64;
/// Batches of spans of one file sent and not yet finished, at most this many
/// (~100 MiB of file ahead of the receiver's answers, ~1 MiB of chunk lists).
pub(super) const MAX_BATCHES_AHEAD: usize = 8;

/// A file whose recipe is being sent or answered. Every `Spans` and `Recipe`
/// message sent for it is answered by exactly one `Need`, in the order sent,
/// so the oldest unanswered message says what a `Need` means. `FileEnd`
/// follows once all are answered and the recipe has ended.
pub(super) struct PendingRecipe<S: Source> {
    file: S::File,
    /// Batches of spans sent and not yet finished, by number.
    batches: HashMap<u64, SentBatch>,
    next_batch: u64,
    /// Messages awaiting their `Need`: (batch, whether it was the `Recipe`).
    awaiting: std::collections::VecDeque<(u64, bool)>,
    /// Size and whole-file hash, once the recipe has ended.
    ended: Option<(u64, [u8; 32])>,
    stamp: Stamp,
    /// The source, for messages.
    path: S::Handle,
}

/// One `Spans` message: the chunks of its spans, and once the receiver asked
/// for some spans, the chunks listed in the `Recipe` that answered it.
#[derive(Default)]
pub(super) struct SentBatch {
    chunks: Vec<(u64, u32, ChunkHash)>,
    /// Each span: its first chunk (in `chunks`) and how many.
    spans: Vec<(usize, usize)>,
    /// Indices into `chunks` of the entries of the `Recipe` sent.
    listed: Vec<usize>,
}

impl<W: Write, S: Source> Sender<'_, W, S> {
    pub(super) fn send_recipe(
        &mut self,
        file: u32,
        path: &S::Handle,
        key: &RebuildKey,
    ) -> Result<(), TransferError> {
        let Some((f, before)) = self.open_listed(file, path)? else {
            return Ok(());
        };
        let reader = f.try_clone().map_err(|e| TransferError::local("dup", &e))?;
        self.pending.insert(
            file,
            PendingRecipe {
                file: f,
                batches: HashMap::new(),
                next_batch: 0,
                awaiting: Default::default(),
                ended: None,
                stamp: before,
                path: path.clone(),
            },
        );
        let mut chunker = Chunker::new(reader, key);
        let mut spanner = Spanner::default();
        let mut batch = SentBatch::default();
        let mut spans = Vec::with_capacity(MAX_SPAN_BATCH);
        let mut span_start = 0;
        loop {
            let next = match chunker.next_chunk() {
                Ok(Some((c, _))) => Some(c),
                Ok(None) => None,
                Err(e) => {
                    return self.give_up(file, path, format!("read failed: {}", io_text(&e)));
                }
            };
            let closed = match next {
                Some(c) => {
                    batch.chunks.push((c.offset, c.len, c.hash));
                    spanner.push(c.len, &c.hash)
                }
                None => spanner.finish(),
            };
            if let Some(sp) = closed {
                batch.spans.push((span_start, sp.chunks as usize));
                span_start = batch.chunks.len();
                spans.push(sp);
            }
            if spans.len() == MAX_SPAN_BATCH || (next.is_none() && !spans.is_empty()) {
                let p = self.pending.get_mut(&file).expect("pending");
                let id = p.next_batch;
                p.next_batch += 1;
                p.batches.insert(id, std::mem::take(&mut batch));
                p.awaiting.push_back((id, false));
                span_start = 0;
                let spans = std::mem::replace(&mut spans, Vec::with_capacity(MAX_SPAN_BATCH));
                self.writer.send(&Message::Spans { file, spans })?;
                // answers to earlier messages: act on them now, while the
                // receiver rebuilds
                self.writer.flush()?;
                self.serve_arrived_needs(file)?;
                if !self.pending.contains_key(&file) {
                    return Ok(()); // given up while serving
                }
            }
            if next.is_none() {
                break;
            }
        }
        let size = chunker.position();
        let hash = chunker.whole_check();
        drop(chunker);
        self.writer.send(&Message::RecipeEnd { file, size, hash })?;
        let p = self.pending.get_mut(&file).expect("pending");
        p.ended = Some((size, hash));
        self.maybe_file_end(file)
    }

    /// While a recipe is being sent: serves the receiver's answers for this
    /// file at once (those set aside earlier first, in order), and keeps its
    /// other requests for later. Waits for answers while [`MAX_BATCHES_AHEAD`]
    /// batches are unanswered, so that a fast sender does not pile up the
    /// chunk lists of a whole large file.
    pub(super) fn serve_arrived_needs(&mut self, current: u32) -> Result<(), TransferError> {
        loop {
            self.serve_ready_needs(current)?;
            let behind = self
                .pending
                .get(&current)
                .is_some_and(|p| p.batches.len() >= MAX_BATCHES_AHEAD);
            if !behind {
                return Ok(());
            }
            self.writer.flush()?;
            let job = self
                .rx
                .recv()
                .map_err(|_| TransferError::Connection("the receiver went away".into()))?;
            self.take_while_chunking(current, job)?;
        }
    }

    /// A request that arrived while `current` is being chunked: its answers
    /// and events are acted on now, the rest kept for later, in order.
    pub(super) fn take_while_chunking(
        &mut self,
        current: u32,
        job: FromPeer,
    ) -> Result<(), TransferError> {
        match job {
            FromPeer::Need { file, ranges } if file == current => self.send_needed(file, &ranges),
            FromPeer::Event(e) => self.deliver(e),
            FromPeer::Failed(e) => Err(e),
            other => {
                self.deferred.push_back(other);
                Ok(())
            }
        }
    }

    pub(super) fn serve_ready_needs(&mut self, current: u32) -> Result<(), TransferError> {
        self.cancel.check()?;
        while self.pending.contains_key(&current) {
            let set_aside = self
                .deferred
                .iter()
                .position(|j| matches!(j, FromPeer::Need { file, .. } if *file == current));
            if let Some(i) = set_aside {
                if let Some(FromPeer::Need { file, ranges }) = self.deferred.remove(i) {
                    self.send_needed(file, &ranges)?;
                }
                continue;
            }
            match self.rx.try_recv() {
                Ok(job) => self.take_while_chunking(current, job)?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Acts on the receiver's `Need` for the oldest unanswered message of
    /// `file`: lists the chunks of the spans it lacks, or sends the chunks.
    pub(super) fn send_needed(
        &mut self,
        file: u32,
        ranges: &[(u32, u32)],
    ) -> Result<(), TransferError> {
        if self.given_up.contains(&file) {
            return Ok(());
        }
        let p = self.pending.get_mut(&file).ok_or_else(|| {
            TransferError::PeerMisbehaved(format!(
                "asked for chunks of file {file} without a recipe"
            ))
        })?;
        let Some((id, is_recipe)) = p.awaiting.pop_front() else {
            return Err(TransferError::PeerMisbehaved(format!(
                "asked for more of file {file} than was offered"
            )));
        };
        let batch = p.batches.get_mut(&id).expect("batch awaiting an answer");
        let offered = if is_recipe {
            batch.listed.len()
        } else {
            batch.spans.len()
        };
        check_need(ranges, offered).map_err(|why| {
            TransferError::PeerMisbehaved(format!("asked for chunks of file {file}: {why}"))
        })?;
        if !is_recipe {
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
            p.awaiting.push_back((id, true));
            return self.writer.send(&Message::Recipe { file, chunks });
        }
        let batch = p.batches.remove(&id).expect("batch");
        let path = p.path.clone();
        self.packer.reset();
        for &(start, count) in ranges {
            for &i in &batch.listed[start as usize..(start + count) as usize] {
                let (offset, len, hash) = batch.chunks[i];
                let buf = &mut self.buf[..len as usize];
                if let Err(e) = self.pending[&file].file.read_exact_at(buf, offset) {
                    return self.give_up(file, &path, format!("read failed: {}", io_text(&e)));
                }
                if chunk_hash(buf) != hash {
                    return self.give_up(file, &path, "changed while being sent".into());
                }
                let (compressed, bytes) = self.packer.pack(&self.buf[..len as usize]);
                self.writer.send_data(file, compressed, len, bytes)?;
            }
            self.pass_events()?;
        }
        self.maybe_file_end(file)
    }

    /// Ends a file whose recipe has ended and whose batches are all answered.
    pub(super) fn maybe_file_end(&mut self, file: u32) -> Result<(), TransferError> {
        let p = &self.pending[&file];
        let Some((size, hash)) = p.ended else {
            return Ok(());
        };
        if !p.awaiting.is_empty() {
            return Ok(());
        }
        if let Err(why) = unchanged(&p.file, &p.stamp, size) {
            let path = p.path.clone();
            return self.give_up(file, &path, why);
        }
        self.pending.remove(&file);
        self.writer.send(&Message::FileEnd { file, size, hash })
    }
}
