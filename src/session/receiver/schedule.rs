//! Asking for queued files while there is room: at most [`MAX_IN_FLIGHT`]
//! files, of which [`MAX_DELTA_IN_FLIGHT`] are rebuilt from a basis (each one
//! starts indexing its basis on a thread). Not for what happens to a file once
//! asked for.

use super::incoming::{DeltaWait, Incoming};
use super::index::{index_bases, Basis};
use super::{Hard, Receiver};
use crate::chunk::new_rebuild_key;
use crate::error::TransferError;
use crate::proto::Message;

/// Files requested and not yet complete, at most this many…
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// …of which at most this many are being rebuilt from a basis (each holds open
/// files and an index of its basis chunks).
pub(super) const MAX_DELTA_IN_FLIGHT: usize = 4;

/// Files smaller than this are fetched whole even when a basis exists.
pub(super) const DELTA_MIN_SIZE: u64 = 64 << 10;
use crate::proto::Kind;
use crate::session::listing::Keep;
use crate::store::destination::Destination;

impl<D: Destination> Receiver<'_, D> {
    /// Sends requests for queued files while there is room.
    pub(super) fn pump(&mut self) -> Result<(), TransferError> {
        if self.deleting_first() {
            // --delete-before: nothing is asked for until the list is whole
            // and what it does not name is gone
            if !self.intake.is_done() {
                return Ok(());
            }
            self.delete_before_transfer();
        }
        // refill in bursts, once half the files asked for have arrived: one
        // `Want` per finished file cost a wake-up and a write at both ends
        // for every small file
        if self.in_flight.live() > MAX_IN_FLIGHT / 2 {
            return Ok(());
        }
        while self.in_flight.live() < MAX_IN_FLIGHT {
            let Some(&index) = self.queue.front() else {
                break;
            };
            let l = &self.entries[index as usize];
            // (a store that cannot give back old data gets every file whole)
            let can_rebuild = self.dest.get_ref().is_some_and(|d| d.caps().rebuild);
            // (--inplace: the old data is being written over, so no delta)
            let wants_delta = l.size >= DELTA_MIN_SIZE
                && can_rebuild
                && !self.opts.whole_file
                && !self.opts.dest_side.inplace;
            let slot = if wants_delta {
                match self.delta_slots.take(MAX_DELTA_IN_FLIGHT) {
                    Some(slot) => Some(slot),
                    None => break,
                }
            } else {
                None
            };
            self.queue.pop_front();
            let (bases, replaced) = if wants_delta {
                self.open_bases(index)
            } else {
                (Vec::new(), false)
            };
            // (no key, no delta: the file comes whole)
            let key = if bases.is_empty() {
                None
            } else {
                new_rebuild_key()
            };
            // (no slot taken for a file that comes whole: it goes back here)
            let wait = match (key, slot) {
                (Some(key), Some(slot)) => {
                    let cache = self.chunk_cache.clone();
                    let spill = self.spill_dir(index);
                    let basis = std::thread::Builder::new()
                        .name("ferry-basis".into())
                        .spawn(move || Basis {
                            replaced,
                            ..index_bases(bases, cache.as_deref(), spill)
                        })
                        .map_err(|e| TransferError::local("thread", &e))?;
                    Some(DeltaWait { key, basis, slot })
                }
                _ => None,
            };
            let delta = wait.as_ref().map(|w| w.key);
            self.in_flight
                .insert(index, Incoming::Waiting { delta: wait });
            self.send(Message::Want { file: index, delta })?;
        }
        Ok(())
    }

    /// Tells the sender how far into the list we are, once that moved far
    /// enough (see [`ListIntake::ack`](super::intake::ListIntake::ack)), and
    /// lets go of the entries settled by then: below the first still queued,
    /// not in flight. Directories stay for the end (their times and
    /// `--delete`), and with `-H` the files of groups of hard links (every
    /// file when the sender does not mark them: a later link may name any).
    pub(super) fn acknowledge(&mut self) -> Result<(), TransferError> {
        // (--delete-before holds the queue until the list is whole: what is
        // queued is kept below, and the sender keeps what it listed)
        let holding = self.deleting_first() && !self.intake.is_done();
        let taken = match self.queue.front() {
            Some(&i) if !holding => i,
            _ => self.entries.len() as u32,
        };
        let first_queued = self.queue.front().copied().unwrap_or(u32::MAX);
        let Some(taken) = self.intake.ack(taken) else {
            return Ok(());
        };
        // with -H a later link may name any file, unless the sender marks
        // the files that have links (then only those, and the links, stay)
        let every_file = self.opts.hard_links && !self.opts.link_marks;
        let in_flight = &self.in_flight;
        self.entries.let_go(taken, |i, l| {
            if l.kind == Kind::Dir || (every_file && l.kind == Kind::File) || l.hard != Hard::None {
                Keep::ToTheEnd
            } else if in_flight.is_live(i) || (holding && i >= first_queued) {
                Keep::ForNow
            } else {
                Keep::No
            }
        });
        if self.intake.is_done() {
            return Ok(());
        }
        self.send(Message::ListAck { entries: taken })
    }
}
