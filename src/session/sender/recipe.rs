//! A file the receiver rebuilds from old data: its spans in batches, the
//! chunk lists of the spans the receiver lacks, then the chunks it asks for,
//! and `FileEnd` once every message is answered and the file did not change.
//! The rules of that exchange are the sans-IO [`super::ledger`]; this file
//! reads the file, sends what the ledger says, and serves the receiver's
//! answers while it chunks. Not for whole files ([`super::whole`]).

use super::ledger::{Answer, SentBatch};
use super::source::unchanged;
use super::{FromPeer, Sender};
use crate::chunk::{chunk_hash, Chunker, RebuildKey};
use crate::delta::Spanner;
use crate::error::{io_text, TransferError};
use crate::proto::{Message, MAX_SPAN_BATCH};
use crate::store::source::{Source, SourceFile, Stamp};
use std::io::Write;

/// What the ledger holds for a file whose recipe is on offer: the open file,
/// its stamp when opened, and its name for messages.
pub(super) struct Reading<S: Source> {
    file: S::File,
    stamp: Stamp,
    path: S::Handle,
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
        self.recipes.open(
            file,
            Reading {
                file: f,
                stamp: before,
                path: path.clone(),
            },
        );
        let mut chunker = Chunker::new(reader, key);
        let mut spanner = Spanner::default();
        let mut batch = SentBatch::default();
        let mut spans = Vec::with_capacity(MAX_SPAN_BATCH);
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
                    batch.push_chunk(c.offset, c.len, c.hash);
                    spanner.push(c.len, &c.hash)
                }
                None => spanner.finish(),
            };
            if let Some(sp) = closed {
                batch.close_span(sp.chunks as usize);
                spans.push(sp);
            }
            if spans.len() == MAX_SPAN_BATCH || (next.is_none() && !spans.is_empty()) {
                self.recipes.sent_spans(file, std::mem::take(&mut batch));
                let spans = std::mem::replace(&mut spans, Vec::with_capacity(MAX_SPAN_BATCH));
                self.writer.send(&Message::Spans { file, spans })?;
                // answers to earlier messages: act on them now, while the
                // receiver rebuilds
                self.writer.flush()?;
                self.serve_arrived_needs(file)?;
                if !self.recipes.is_open(file) {
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
        self.recipes.ended(file, size, hash);
        self.maybe_file_end(file)
    }

    /// While a recipe is being sent: serves the receiver's answers for this
    /// file at once (those set aside earlier first, in order), and keeps its
    /// other requests for later. Waits for answers while [`MAX_BATCHES_AHEAD`](super::ledger::MAX_BATCHES_AHEAD)
    /// batches are unanswered, so that a fast sender does not pile up the
    /// chunk lists of a whole large file.
    pub(super) fn serve_arrived_needs(&mut self, current: u32) -> Result<(), TransferError> {
        loop {
            self.serve_ready_needs(current)?;
            if !self.recipes.is_ahead(current) {
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
        while self.recipes.is_open(current) {
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
        let wanted = match self.recipes.on_need(file, ranges) {
            Ok(Answer::Ignore) => return Ok(()),
            Ok(Answer::Recipe(chunks)) => {
                return self.writer.send(&Message::Recipe { file, chunks })
            }
            Ok(Answer::Chunks(wanted)) => wanted,
            Err(v) => return Err(TransferError::PeerMisbehaved(v.0)),
        };
        self.packer.reset();
        for range in wanted.ranges() {
            for (offset, len, hash) in range {
                let buf = &mut self.buf[..len as usize];
                let reading = self.recipes.held(file).expect("a recipe open");
                let why = match reading.file.read_exact_at(buf, offset) {
                    Err(e) => format!("read failed: {}", io_text(&e)),
                    Ok(()) if chunk_hash(buf) != hash => "changed while being sent".into(),
                    Ok(()) => {
                        let (compressed, bytes) = self.packer.pack(&self.buf[..len as usize]);
                        self.writer.send_data(file, compressed, len, bytes)?;
                        continue;
                    }
                };
                let path = reading.path.clone();
                return self.give_up(file, &path, why);
            }
            self.pass_events()?;
        }
        self.maybe_file_end(file)
    }

    /// Ends a file whose recipe has ended and whose batches are all answered.
    pub(super) fn maybe_file_end(&mut self, file: u32) -> Result<(), TransferError> {
        let Some((p, size, hash)) = self.recipes.finished(file) else {
            return Ok(());
        };
        if let Err(why) = unchanged(&p.file, &p.stamp, size) {
            let path = p.path.clone();
            return self.give_up(file, &path, why);
        }
        self.recipes.close(file);
        self.writer.send(&Message::FileEnd { file, size, hash })
    }
}
