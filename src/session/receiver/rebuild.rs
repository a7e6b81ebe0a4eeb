//! Rebuilding a file from old data: each part of the two-level recipe
//! passed through the file's [`RecipeIntake`] (which holds the rules of what
//! may arrive when), the chunks of lacked spans looked up in the basis index,
//! the `Need` for the chunks lacked, the copies from the basis as the recipe
//! arrives, and the keyed check of the new file. Not for files sent whole
//! ([`super::publish`]).

use super::incoming::{DeltaSlot, DeltaWait, Incoming};
use super::index::{window_index, Basis};
use super::recipe::{Part, Piece, RecipeIntake};
use super::RECIPE_SLACK;
use super::{write_error, Failed, Receiver};
use crate::chunk::StreamCheck;
use crate::delta::{self, ChunkIndex, Planner, Rebuild, SpanLoc, Step};
use crate::error::{FileOp, TransferError};
use crate::fs::chunk_cache::CacheWriter;
use crate::fs::dest::DropBehind;
use crate::proto::{ChunkRef, Message, SpanRef};
use crate::store::destination::{BasisFile, Destination, TempWrite};
use std::os::unix::fs::MetadataExt;

/// The most bytes one joined copy from a basis reads and writes at once.
pub(super) const COPY_RUN: usize = crate::chunk::STREAM_BUFFER;

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
    /// What of the recipe may arrive when, and what has.
    pub(super) intake: RecipeIntake<SpanLoc>,
    /// The chunk cache entry of the new file, written as its recipe comes.
    pub(super) cache_entry: Option<CacheWriter>,
    /// The last span of the new file found in the basis.
    pub(super) last_known: Option<SpanLoc>,
    /// The basis chunks of the last window looked through, by hash.
    pub(super) window: Option<(delta::Window, ChunkIndex)>,
    /// Its room among the rebuilds in flight, held until it is dropped.
    pub(super) _slot: DeltaSlot,
}

impl<D: Destination> Rebuilding<D> {
    /// Plans the copy of a span the receiver has, in pieces a joined copy
    /// takes, and adds its chunks to the new file's cache entry.
    fn copy_known(&mut self, loc: SpanLoc, plan: &mut delta::Plan) {
        let mut done = 0u64;
        while done < loc.at.len {
            let len = (loc.at.len - done).min(COPY_RUN as u64) as u32;
            let at = delta::Location {
                basis: loc.basis,
                offset: loc.at.offset + done,
                len,
            };
            self.planner.copy(at, plan);
            done += len as u64;
        }
        if let Some(w) = &mut self.cache_entry {
            let mut chunks = Vec::with_capacity(loc.at.chunks as usize);
            match self.basis.lists[loc.basis as usize].read(
                loc.at.first,
                loc.at.chunks as usize,
                &mut chunks,
            ) {
                Ok(()) => chunks.iter().for_each(|(len, hash)| w.push(*len, hash)),
                Err(_) => self.cache_entry = None,
            }
        }
        self.last_known = Some(loc);
    }
}

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
) -> Result<(), Failed>
where
    T::Basis: BasisFile,
{
    // basis bytes waiting to be copied: (basis, offset, length)
    let mut run: Option<(u32, u64, usize)> = None;
    let mut flush = |run: &mut Option<(u32, u64, usize)>,
                     temp: &mut T,
                     check: &mut StreamCheck|
     -> Result<(), Failed> {
        if let Some((basis, offset, len)) = run.take() {
            let from = &bases[basis as usize];
            // read all the same: every byte of the new file goes into its hash
            let b = check.next(len, |b| {
                from.read_exact_at(b, offset)
                    .map_err(|e| Failed(FileOp::ReadBasis, e))
            })?;
            temp.append_from(from, offset, b).map_err(write_error)?;
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
                    .map_err(|e| Failed(FileOp::ReadBack, e))
            })?;
            temp.write(b).map_err(write_error)
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
        let Rebuilding { intake, basis, .. } = &mut *r;
        let ranges = intake.on_spans(spans, |sp| basis.spans.get(sp))?;
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
        let pieces = r.intake.on_recipe(&chunks)?;
        let mut plan = delta::Plan::default();
        let rb = &mut *r;
        for piece in pieces {
            match piece {
                // a span we have: copied whole, in pieces a joined copy takes
                Piece::Known(loc) => rb.copy_known(loc, &mut plan),
                // a run of spans we lack, and the known span after it, if in
                // this batch: their chunks looked for near where they belong
                Piece::Lacked { chunks: run, next } => {
                    let first = run.start as u32;
                    let these = &chunks[run];
                    let index = match &rb.basis.full {
                        Some(index) => index,
                        None => window_index(&mut rb.window, &rb.basis, rb.last_known, next),
                    };
                    rb.planner.chunks(these, first, index, &mut plan);
                    if let Some(w) = &mut rb.cache_entry {
                        these.iter().for_each(|c| w.push(c.len, &c.hash));
                    }
                }
            }
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
            Incoming::Rebuild(r) if r.intake.allows(part) => Some(r),
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
                intake: RecipeIntake::new(file, size + RECIPE_SLACK),
                cache_entry: self.chunk_cache.as_ref().and_then(|c| c.writer()),
                last_known: None,
                window: None,
                _slot: slot,
            })),
            // (the slot goes back as this returns)
            Err(failed) => {
                let _ = self.abandon(file, failed);
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
        r.intake.on_end(size, hash)?;
        self.in_flight.insert(file, Incoming::Rebuild(r));
        Ok(())
    }
}
