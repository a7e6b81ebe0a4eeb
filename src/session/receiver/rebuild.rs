//! Rebuilding a file from old data: the two-level recipe (spans, the `Need`
//! for the spans lacked, their chunks, the `Need` for the chunks lacked, the
//! end), the copies from the basis as the recipe arrives, and the keyed check
//! of the new file. Not for files sent whole ([`super::publish`]).

use super::incoming::{DeltaSlot, DeltaWait, Incoming};
use super::index::{window_index, Basis};
use super::RECIPE_SLACK;
use super::{violation, write_error, Receiver};
use crate::chunk::{StreamCheck, MIN_CHUNK};
use crate::delta::{self, ChunkIndex, Planner, Rebuild, SpanLoc, Step};
use crate::error::{io_text, TransferError};
use crate::fs::chunk_cache::CacheWriter;
use crate::fs::dest::DropBehind;
use crate::proto::{ChunkRef, Message, SpanRef};
use crate::store::destination::{BasisFile, Destination, TempWrite};
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;

/// The most bytes one joined copy from a basis reads and writes at once.
pub(super) const COPY_RUN: usize = crate::chunk::STREAM_BUFFER;

/// Which part of a delta recipe arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Spans,
    Recipe,
    End,
}

impl Part {
    pub(super) fn what(self) -> &'static str {
        match self {
            Part::Spans => "spans",
            Part::Recipe => "a recipe",
            Part::End => "a recipe end",
        }
    }
}

pub(super) struct Rebuilding<D: Destination> {
    pub(super) temp: D::Temp,
    /// The new file's check, as its bytes are written.
    pub(super) check: StreamCheck,
    /// The page cache of the file this one replaces, let go of as it is
    /// copied from.
    pub(super) behind: Option<DropBehind>,
    pub(super) rebuild: Rebuild,
    pub(super) planner: Planner,
    pub(super) basis: Basis<D::Basis>,
    /// Recipe bytes so far, and whether a span shorter than its chunks at
    /// full size (only allowed last) was seen.
    pub(super) total: u64,
    pub(super) short_seen: bool,
    /// Batches of spans answered and waiting for the `Recipe` of the spans
    /// asked for: each span, and where the receiver has it if it does.
    pub(super) pending: VecDeque<Vec<(SpanRef, Option<SpanLoc>)>>,
    /// Size and hash from `RecipeEnd`, once it came.
    pub(super) end: Option<(u64, [u8; 32])>,
    /// The chunk cache entry of the new file, written as its recipe comes.
    pub(super) cache_entry: Option<CacheWriter>,
    /// The last span of the new file found in the basis.
    pub(super) last_known: Option<SpanLoc>,
    /// The basis chunks of the last window looked through, by hash.
    pub(super) window: Option<(delta::Window, ChunkIndex)>,
    /// Its room among the rebuilds in flight, held until it is dropped.
    pub(super) _slot: DeltaSlot,
}

/// Runs the copy steps of a rebuild up to its next literal.
/// Runs the copy steps of a rebuild up to its next literal. Copies of
/// consecutive basis bytes (a known span is a run of them) are joined into
/// reads and writes of up to [`COPY_RUN`] bytes: ~6 KiB system calls cost more
/// than the copying.
pub(super) fn run_copies<T: TempWrite>(
    rebuild: &mut Rebuild,
    temp: &mut T,
    check: &mut StreamCheck,
    bases: &[T::Basis],
    behind: &mut Option<DropBehind>,
) -> Result<(), String>
where
    T::Basis: BasisFile,
{
    // basis bytes waiting to be copied: (basis, offset, length)
    let mut run: Option<(u32, u64, usize)> = None;
    let mut flush = |run: &mut Option<(u32, u64, usize)>,
                     temp: &mut T,
                     check: &mut StreamCheck|
     -> Result<(), String> {
        if let Some((basis, offset, len)) = run.take() {
            let from = &bases[basis as usize];
            // read all the same: every byte of the new file goes into its hash
            let b = check.next(len, |b| {
                from.read_exact_at(b, offset)
                    .map_err(|e| format!("cannot read the basis: {}", io_text(&e)))
            })?;
            temp.append_from(from, offset, b)
                .map_err(|e| write_error(&e))?;
            if let (0, Some(behind), Some(f)) = (basis, behind.as_mut(), from.as_file()) {
                behind.read(f, offset, len as u64);
            }
        }
        Ok(())
    };
    rebuild.run_copies(|step, _| match *step {
        Step::Copy(loc) => {
            let n = loc.len as usize;
            match &mut run {
                Some((basis, offset, len))
                    if *basis == loc.basis
                        && *offset + *len as u64 == loc.offset
                        && *len + n <= COPY_RUN =>
                {
                    *len += n;
                    Ok(())
                }
                _ => {
                    flush(&mut run, temp, check)?;
                    run = Some((loc.basis, loc.offset, n));
                    Ok(())
                }
            }
        }
        Step::CopyOutput { offset, len } => {
            flush(&mut run, temp, check)?;
            let b = check.next(len as usize, |b| {
                temp.read_at(offset, b)
                    .map_err(|e| format!("cannot read back: {}", io_text(&e)))
            })?;
            temp.write(b).map_err(|e| write_error(&e))
        }
        Step::Literal { .. } => unreachable!("run_copies stops at literals"),
    })?;
    flush(&mut run, temp, check)
}

impl<D: Destination> Receiver<'_, D> {
    /// A batch of spans: each is looked up in the basis, and the answer is one
    /// `Need` naming the spans whose chunks we want to see (always sent, even
    /// when empty or the file was given up, so that the sender can go on).
    pub(super) fn spans(&mut self, file: u32, spans: Vec<SpanRef>) -> Result<(), TransferError> {
        let Some(mut r) = self.rebuild_for(file, Part::Spans)? else {
            return Ok(());
        };
        let limit = self.entries[file as usize].size + RECIPE_SLACK;
        let mut batch = Vec::with_capacity(spans.len());
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for (i, sp) in spans.into_iter().enumerate() {
            // only the last chunk of a file may be shorter than the minimum,
            // so only the last span may be shorter than its chunks at minimum size
            let full = sp.chunks as u64 * MIN_CHUNK as u64;
            if r.short_seen || sp.len <= full - MIN_CHUNK as u64 {
                return Err(violation(format!(
                    "sent a span of file {file} too short for its chunks"
                )));
            }
            r.short_seen = sp.len < full;
            r.total += sp.len;
            if r.total > limit {
                return Err(violation(format!(
                    "sent a recipe for file {file} larger than the file"
                )));
            }
            let have = r.basis.spans.get(&sp);
            if have.is_none() {
                let i = i as u32;
                match ranges.last_mut() {
                    Some((start, count)) if *start + *count == i => *count += 1,
                    _ => ranges.push((i, 1)),
                }
            }
            batch.push((sp, have));
        }
        r.pending.push_back(batch);
        self.in_flight.insert(file, Incoming::Rebuild(r));
        self.send(Message::Need { file, ranges })
    }

    /// The chunks of the spans asked for in the oldest answered batch: the
    /// batch is planned (known spans copied, chunks looked up), answered with
    /// one `Need` for the chunks we lack, and copied as far as it can be.
    pub(super) fn recipe(&mut self, file: u32, chunks: Vec<ChunkRef>) -> Result<(), TransferError> {
        let Some(mut r) = self.rebuild_for(file, Part::Recipe)? else {
            return Ok(());
        };
        let Some(batch) = r.pending.pop_front() else {
            return Err(Self::not_requested(file, "a recipe"));
        };
        let mut plan = delta::Plan::default();
        let mut listed = chunks.as_slice();
        let mut first = 0u32;
        let rb = &mut *r;
        let mut i = 0;
        while i < batch.len() {
            if let (_, Some(loc)) = batch[i] {
                // a span we have: copied whole, in pieces a joined copy takes
                let mut done = 0u64;
                while done < loc.at.len {
                    let len = (loc.at.len - done).min(COPY_RUN as u64) as u32;
                    let at = delta::Location {
                        basis: loc.basis,
                        offset: loc.at.offset + done,
                        len,
                    };
                    rb.planner.copy(at, &mut plan);
                    done += len as u64;
                }
                if let Some(w) = &mut rb.cache_entry {
                    let mut chunks = Vec::with_capacity(loc.at.chunks as usize);
                    match rb.basis.lists[loc.basis as usize].read(
                        loc.at.first,
                        loc.at.chunks as usize,
                        &mut chunks,
                    ) {
                        Ok(()) => chunks.iter().for_each(|(len, hash)| w.push(*len, hash)),
                        Err(_) => rb.cache_entry = None,
                    }
                }
                rb.last_known = Some(loc);
                i += 1;
                continue;
            }
            // a run of spans we lack, and the known span after it, if in this batch
            let end = i + batch[i..].iter().take_while(|(_, h)| h.is_none()).count();
            let next = batch.get(end).and_then(|(_, h)| *h);
            let mut n = 0;
            for (sp, _) in &batch[i..end] {
                let these = listed.get(n..n + sp.chunks as usize).ok_or_else(|| {
                    violation(format!(
                        "sent fewer chunks for file {file} than its spans hold"
                    ))
                })?;
                if these.iter().map(|c| c.len as u64).sum::<u64>() != sp.len {
                    return Err(violation(format!(
                        "sent chunks for file {file} that do not add up to their span"
                    )));
                }
                n += these.len();
            }
            let (these, rest) = listed.split_at(n);
            let index = match &rb.basis.full {
                Some(index) => index,
                None => window_index(&mut rb.window, &rb.basis, rb.last_known, next),
            };
            rb.planner.chunks(these, first, index, &mut plan);
            if let Some(w) = &mut rb.cache_entry {
                these.iter().for_each(|c| w.push(c.len, &c.hash));
            }
            listed = rest;
            first += n as u32;
            i = end;
        }
        if !listed.is_empty() {
            return Err(violation(format!(
                "sent more chunks for file {file} than its spans hold"
            )));
        }
        self.summary.reused += plan.reused_bytes;
        // ask first, so that the sender can start while we copy
        self.send(Message::Need {
            file,
            ranges: plan.need,
        })?;
        r.rebuild.extend(plan.steps);
        let Rebuilding {
            temp,
            check,
            rebuild,
            basis,
            behind,
            ..
        } = &mut *r;
        let copied = run_copies(rebuild, temp, check, &basis.files, behind);
        self.settle(file, Incoming::Rebuild(r), copied)
    }

    /// The rebuild that a part of a recipe continues (or starts: spans or an
    /// end may come first). `None` when the file was given up: what still
    /// arrives for it is dropped, and spans and recipes are answered with an
    /// empty `Need` so that the sender can finish the file.
    pub(super) fn rebuild_for(
        &mut self,
        file: u32,
        part: Part,
    ) -> Result<Option<Box<Rebuilding<D>>>, TransferError> {
        let state = self
            .in_flight
            .remove(file)
            .ok_or_else(|| Self::not_requested(file, part.what()))?;
        let r = match state {
            Incoming::Failed => {
                self.in_flight.insert(file, state);
                None
            }
            Incoming::Waiting { delta: Some(wait) } if part != Part::Recipe => {
                self.start_rebuild(file, wait)
            }
            // recipes may still come after the end; nothing else may
            Incoming::Rebuild(r) if part == Part::Recipe || r.end.is_none() => Some(r),
            _ => return Err(Self::not_requested(file, part.what())),
        };
        if r.is_none() && part != Part::End {
            self.send(Message::Need {
                file,
                ranges: Vec::new(),
            })?;
        }
        Ok(r)
    }

    /// The first recipe batch of a file: waits for its basis index and opens
    /// the temporary file; `None` if the file had to be given up.
    pub(super) fn start_rebuild(
        &mut self,
        file: u32,
        wait: DeltaWait<D>,
    ) -> Option<Box<Rebuilding<D>>> {
        let DeltaWait { key, basis, slot } = wait;
        // (indexing a large basis can take a while: nothing held waits for
        // it; a writer that stopped shows at the next send)
        let _ = self.out.flush();
        let basis = basis.join().unwrap_or_default();
        let size = self.entries[file as usize].size;
        // (unless the old file stays: as a backup or under another name)
        let behind = (basis.replaced
            && self.opts.backup_suffix.is_none()
            && basis.files[0]
                .as_file()
                .is_some_and(|f| f.metadata().is_ok_and(|m| m.nlink() == 1)))
        .then(DropBehind::default);
        match self.new_temp(file) {
            Ok(temp) => Some(Box::new(Rebuilding {
                temp,
                check: StreamCheck::new(size, &key),
                behind,
                rebuild: Rebuild::new(Vec::new()),
                planner: Planner::default(),
                basis,
                total: 0,
                short_seen: false,
                pending: VecDeque::new(),
                end: None,
                cache_entry: self.chunk_cache.as_ref().and_then(|c| c.writer()),
                last_known: None,
                window: None,
                _slot: slot,
            })),
            // (the slot goes back as this returns)
            Err(msg) => {
                let _ = self.abandon(file, msg);
                None
            }
        }
    }

    pub(super) fn recipe_end(
        &mut self,
        file: u32,
        size: u64,
        hash: [u8; 32],
    ) -> Result<(), TransferError> {
        // (an empty file has no batches: its recipe may start with its end)
        let Some(mut r) = self.rebuild_for(file, Part::End)? else {
            return Ok(());
        };
        if r.total != size {
            return Err(violation(format!(
                "sent a recipe of {} bytes for a file of {size}",
                r.total
            )));
        }
        r.end = Some((size, hash));
        self.in_flight.insert(file, Incoming::Rebuild(r));
        Ok(())
    }
}
