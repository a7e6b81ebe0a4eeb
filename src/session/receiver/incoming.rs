//! The state of each file asked for, from the `Want` to its end, and giving up
//! on a file after a local problem (reported, counted, the rest of its frames
//! ignored). Not for the bytes of a file: each state's data is handled in
//! [`super::publish`], [`super::segments`] and [`super::rebuild`].

use super::index::Basis;
use super::rebuild::Rebuilding;
use super::segments::SegmentState;
use super::{violation, Failed, Receiver};
use crate::check::CheckValue;
use crate::chunk::{RebuildKey, WholeCheck};
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::names::{escape, split_parent};
use crate::store::destination::{Destination, Space, TempHow, TempWrite};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::thread::JoinHandle;

/// Files smaller than this are written under a temporary name rather than in
/// the partial directory: an interrupted small file is simply sent again.
pub(super) const PARTIAL_MIN_SIZE: u64 = 1 << 20;

pub(super) enum Incoming<D: Destination> {
    /// Asked for, nothing arrived yet; `delta`: asked for a recipe, whose
    /// end is checked under this key.
    Waiting { delta: Option<DeltaWait<D>> },
    /// Receiving a whole file.
    Whole {
        temp: D::Temp,
        check: Box<WholeCheck>,
    },
    /// Rebuilding from basis chunks and literal chunks while the recipe
    /// arrives: each batch is planned, asked for and copied as it comes.
    Rebuild(Box<Rebuilding<D>>),
    /// Receiving a whole file in segments over several streams.
    Segmented {
        temp: D::Temp,
        /// Segments in progress, by the offset their next bytes go to.
        active: HashMap<u64, SegmentState>,
        /// Verified segments: (start, length, check).
        done: Vec<(u64, u64, CheckValue)>,
        /// The sender's FileEnd (size, its manifest of the segments' checks),
        /// once seen.
        end: Option<(u64, [u8; 32])>,
    },
    /// Given up after a local error; what still arrives for it up to its
    /// end is ignored.
    Failed,
    /// Given up, and its end (or the sender's failure) has arrived: only
    /// segments still on their way over other streams may come, and are
    /// dropped. Not waited for at the end of the transfer.
    Ended,
}

/// A file asked for as a delta, before its recipe starts.
pub(super) struct DeltaWait<D: Destination> {
    /// The recipe's end is checked under this key.
    pub(super) key: RebuildKey,
    /// Its basis, being indexed on its own thread.
    pub(super) basis: JoinHandle<Basis<D::Basis>>,
    pub(super) slot: DeltaSlot,
}

/// Room for [`MAX_DELTA_IN_FLIGHT`](super::schedule::MAX_DELTA_IN_FLIGHT)
/// rebuilds at once (each holds open files and an index of its basis).
#[derive(Default)]
pub(super) struct DeltaSlots(Rc<Cell<usize>>);

impl DeltaSlots {
    /// A slot, if fewer than `max` are taken.
    pub(super) fn take(&self, max: usize) -> Option<DeltaSlot> {
        let used = self.0.get();
        if used >= max {
            return None;
        }
        self.0.set(used + 1);
        Some(DeltaSlot(self.0.clone()))
    }
}

/// One rebuild's room: held by its state from the `Want` to its end, given
/// back when that state is dropped, however the file ends.
pub(super) struct DeltaSlot(Rc<Cell<usize>>);

impl Drop for DeltaSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The files asked for and not done, by index, with the ones that have
/// [`Ended`](Incoming::Ended) kept apart in the count: the transfer waits for
/// the others only, and only they take room in the window of files in flight.
pub(super) struct InFlight<D: Destination> {
    files: HashMap<u32, Incoming<D>>,
    /// How many of `files` are `Ended`; kept by `insert` and `remove` only.
    ended: usize,
}

impl<D: Destination> Default for InFlight<D> {
    fn default() -> Self {
        InFlight {
            files: HashMap::new(),
            ended: 0,
        }
    }
}

impl<D: Destination> InFlight<D> {
    pub(super) fn insert(&mut self, file: u32, state: Incoming<D>) {
        if matches!(state, Incoming::Ended) {
            self.ended += 1;
        }
        if let Some(Incoming::Ended) = self.files.insert(file, state) {
            self.ended -= 1;
        }
    }

    pub(super) fn remove(&mut self, file: u32) -> Option<Incoming<D>> {
        let state = self.files.remove(&file);
        if let Some(Incoming::Ended) = state {
            self.ended -= 1;
        }
        state
    }

    pub(super) fn get(&self, file: u32) -> Option<&Incoming<D>> {
        self.files.get(&file)
    }

    /// Files still to come (not ended).
    pub(super) fn live(&self) -> usize {
        self.files.len() - self.ended
    }

    pub(super) fn is_live(&self, file: u32) -> bool {
        self.files
            .get(&file)
            .is_some_and(|s| !matches!(s, Incoming::Ended))
    }

    /// Whether `file` was given up on and has ended.
    pub(super) fn has_ended(&self, file: u32) -> bool {
        matches!(self.files.get(&file), Some(Incoming::Ended))
    }
}

impl<D: Destination> Receiver<'_, D> {
    pub(super) fn new_temp(&mut self, index: u32) -> Result<D::Temp, Failed> {
        let l = &self.entries[index as usize];
        let rel = l.rel.clone();
        // a small file is cheaper to resend than to keep a partial copy of
        let in_place = self.opts.dest_side.inplace;
        let partial = self.opts.partial && l.size >= PARTIAL_MIN_SIZE && !in_place;
        if partial {
            self.partial_dirs.insert(split_parent(&rel).0.to_vec());
        }
        // a new file goes without a name until it is linked into place
        let unnamed = l.is_new;
        // the size and metadata it will be published with: a store that
        // uploads as bytes arrive needs them first
        let size = l.size;
        let meta = self.publish_meta(index);
        let dest = self.dest.open();
        let how = TempHow {
            partial,
            sparse: self.opts.sparse,
            unnamed,
            in_place,
        };
        dest.create_temp_for(&rel, how, size, &meta)
            .map_err(|e| Failed(FileOp::Create, e))
    }

    pub(super) fn not_requested(file: u32, what: &str) -> TransferError {
        violation(format!(
            "sent {what} for file {file}, which was not requested or is not at that stage"
        ))
    }

    /// After literal bytes were written: keep the file going, or give it up
    /// after a local write error.
    pub(super) fn settle(
        &mut self,
        file: u32,
        state: Incoming<D>,
        written: Result<(), Failed>,
    ) -> Result<(), TransferError> {
        match written {
            Ok(()) => {
                self.note_progress(file, &state);
                self.in_flight.insert(file, state);
                Ok(())
            }
            Err(failed) => {
                self.drop_state(state);
                self.abandon(file, failed)
            }
        }
    }

    /// Takes the state of a file that literal bytes arrived for: the first
    /// bytes of a whole file create its temporary file (in the state `start`
    /// makes); bytes for a file given up on are dropped (`None`).
    pub(super) fn take_for_data(
        &mut self,
        file: u32,
        what: &str,
        start: impl FnOnce(D::Temp) -> Incoming<D>,
    ) -> Result<Option<Incoming<D>>, TransferError> {
        let state = self
            .in_flight
            .remove(file)
            .ok_or_else(|| Self::not_requested(file, what))?;
        match state {
            Incoming::Failed => {
                self.in_flight.insert(file, state);
                Ok(None)
            }
            Incoming::Ended => {
                self.in_flight.insert(file, state);
                Err(Self::not_requested(file, what))
            }
            Incoming::Waiting { delta: None } => match self.new_temp(file) {
                Ok(temp) => Ok(Some(start(temp))),
                Err(failed) => self.abandon(file, failed).map(|_| None),
            },
            other => Ok(Some(other)),
        }
    }

    /// Gives up on one file after a local problem (cannot create or write it):
    /// it is reported and counted, what the sender still sends for it up to
    /// its end is ignored, and the rest of the transfer goes on.
    pub(super) fn abandon(&mut self, file: u32, failed: Failed) -> Result<(), TransferError> {
        self.report_abandoned(file, failed);
        self.in_flight.insert(file, Incoming::Failed);
        Ok(())
    }

    /// [`abandon`](Self::abandon) for a file whose end has arrived: nothing
    /// more comes for it, so it is not left in flight (the transfer would
    /// wait for it forever).
    pub(super) fn abandon_ended(&mut self, file: u32, failed: Failed) -> Result<(), TransferError> {
        self.report_abandoned(file, failed);
        self.in_flight.insert(file, Incoming::Ended);
        Ok(())
    }

    /// Reports a file given up on, saying what is short when the disk is full.
    pub(super) fn report_abandoned(&mut self, file: u32, Failed(op, source): Failed) {
        let (name, rel) = {
            let l = &self.entries[file as usize];
            (l.name.clone(), l.rel.clone())
        };
        let shown = match self.dest.get_ref() {
            Some(dest) => dest.show(&rel),
            None => escape(&name),
        };
        let error = FileError::new(shown, op, source);
        let space = match self.dest.get_ref() {
            Some(dest) if error.disk_full() => Some(dest.space()),
            _ => None,
        };
        let msg = abandoned_text(&error, space, self.entries[file as usize].size);
        self.progress.remove(&file);
        self.file_error(&name, msg);
    }

    /// Forgets a file in flight after a failure, keeping a partial file (whose
    /// content is only ever used through chunk hashes) and removing a plain
    /// temporary one.
    pub(super) fn drop_state(&mut self, state: Incoming<D>) {
        let temp = match state {
            Incoming::Whole { temp, .. } | Incoming::Segmented { temp, .. } => Some(temp),
            // (its delta slot goes back as the rest is dropped)
            Incoming::Rebuild(r) => Some(r.temp),
            Incoming::Waiting { .. } | Incoming::Failed | Incoming::Ended => None,
        };
        if let Some(t) = temp {
            if !t.is_partial() {
                self.dest.open().discard(t);
            }
        }
    }
}

/// What the user is told about a file given up on: the error, and when the
/// disk is full (read from the error's kind), what is short.
fn abandoned_text(error: &FileError, space: Option<Space>, needed: u64) -> String {
    let msg = error.to_string();
    let Some(space) = space.filter(|_| error.disk_full()) else {
        return msg;
    };
    let free = space.free_bytes;
    let why = if space.out_of_inodes {
        format!("no inodes left, {free} bytes free")
    } else {
        format!("{free} bytes free, {needed} needed")
    };
    format!("{}: {msg} ({why}; the old file is kept)", error.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const SPACE: Space = Space {
        free_bytes: 4096,
        out_of_inodes: false,
    };

    #[test]
    fn a_full_disk_is_told_from_the_error_kind_whatever_its_text() {
        // ENOSPC with a message of the store's own (an S3 or SFTP store will
        // not say "No space left on device")
        let full = io::Error::new(io::ErrorKind::StorageFull, "the volume said no");
        let e = FileError::new("d/f", FileOp::Write, full);
        assert_eq!(
            abandoned_text(&e, Some(SPACE), 10_000),
            "d/f: write failed: the volume said no (4096 bytes free, 10000 needed; the old file is kept)"
        );
        let quota = io::Error::from_raw_os_error(libc::EDQUOT);
        let e = FileError::new("d/f", FileOp::Create, quota);
        let inodes = Space {
            out_of_inodes: true,
            ..SPACE
        };
        assert!(abandoned_text(&e, Some(inodes), 1)
            .ends_with("(no inodes left, 4096 bytes free; the old file is kept)"));
        // the old check's words in another error are just its text
        let other = io::Error::other("No space left on device");
        let e = FileError::new("d/f", FileOp::Write, other);
        assert_eq!(
            abandoned_text(&e, Some(SPACE), 1),
            "write failed: No space left on device"
        );
    }
}
