//! A large file sent whole in segments over several streams: each segment
//! checked on its own, the file published once its segments cover it and
//! their manifest matches the sender's. Not for files sent on one stream.

use super::incoming::Incoming;
use super::RECIPE_SLACK;
use super::{violation, write_error, Failed, Receiver};
use crate::check::manifest_of;
use crate::chunk::WholeCheck;
use crate::error::TransferError;
use crate::fs::names::escape;
use std::collections::HashMap;

/// One segment of a file arriving on some stream.
pub(super) struct SegmentState {
    pub(super) start: u64,
    pub(super) next: u64,
    pub(super) check: WholeCheck,
}
use crate::store::destination::{Destination, TempWrite};

impl<D: Destination> Receiver<'_, D> {
    /// Bytes of a segment: they go to `offset`, continuing a segment in
    /// progress or starting a new one that overlaps nothing received.
    pub(super) fn segment(
        &mut self,
        file: u32,
        offset: u64,
        compressed: bool,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        if self.in_flight.has_ended(file) {
            return Ok(());
        }
        let Some(mut state) =
            self.take_for_data(file, "a segment", |temp| Incoming::Segmented {
                temp,
                active: HashMap::new(),
                done: Vec::new(),
                end: None,
            })?
        else {
            return Ok(());
        };
        let limit = self.entries[file as usize].size + RECIPE_SLACK;
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| -> Result<Result<(), Failed>, TransferError> {
            let keys = (
                (file, offset),
                (file, offset.saturating_add(raw_len as u64)),
            );
            let block = Self::unpack(
                &mut self.unpacker,
                keys,
                &mut buf,
                compressed,
                raw_len,
                bytes,
            )?;
            let Incoming::Segmented {
                temp, active, done, ..
            } = &mut state
            else {
                return Err(Self::not_requested(file, "a segment"));
            };
            let end = offset
                .checked_add(block.len() as u64)
                .filter(|&e| e <= limit)
                .ok_or_else(|| {
                    violation(format!("sent a segment of file {file} beyond its size"))
                })?;
            let mut seg = match active.remove(&offset) {
                Some(seg) => seg,
                None => {
                    let overlaps = |s: u64, e: u64| s < end && offset < e;
                    if done.iter().any(|&(s, l, _)| overlaps(s, s + l))
                        || active
                            .values()
                            .any(|a| overlaps(a.start, a.next.max(a.start + 1)))
                    {
                        return Err(violation(format!(
                            "sent overlapping segments of file {file}"
                        )));
                    }
                    SegmentState {
                        start: offset,
                        next: offset,
                        check: WholeCheck::default(),
                    }
                }
            };
            seg.check.update(block);
            seg.next = end;
            self.summary.literal += block.len() as u64;
            self.count_wire(file, bytes.len());
            let written = temp.write_at(offset, block).map_err(write_error);
            active.insert(end, seg);
            Ok(written)
        })();
        self.buf = buf;
        self.settle(file, state, result?)
    }

    pub(super) fn segment_end(
        &mut self,
        file: u32,
        offset: u64,
        len: u64,
        hash: [u8; 32],
    ) -> Result<(), TransferError> {
        if self.in_flight.has_ended(file) {
            return Ok(());
        }
        let state = self
            .in_flight
            .remove(file)
            .ok_or_else(|| Self::not_requested(file, "a segment end"))?;
        let Incoming::Segmented {
            temp,
            mut active,
            mut done,
            end: file_end,
        } = state
        else {
            let failed = matches!(state, Incoming::Failed);
            self.in_flight.insert(file, state);
            return match failed {
                true => Ok(()),
                false => Err(Self::not_requested(file, "a segment end")),
            };
        };
        let end = offset
            .checked_add(len)
            .ok_or_else(|| violation("segment length overflows".into()))?;
        let seg = match active.remove(&end) {
            Some(seg) if seg.start == offset => seg,
            _ => {
                // an empty segment that never sent bytes, or a lie
                return Err(violation(format!(
                    "ended a segment of file {file} at {offset}+{len} that does not match what it sent"
                )));
            }
        };
        let check = seg.check.segment_value();
        if !check.matches(&hash) {
            let name = self.entries[file as usize].name.clone();
            return Err(TransferError::PeerMisbehaved(format!(
                "sent a segment of {} that does not match its check value",
                escape(&name)
            )));
        }
        done.push((offset, len, check));
        let state = Incoming::Segmented {
            temp,
            active,
            done,
            end: file_end,
        };
        self.in_flight.insert(file, state);
        self.finish_segmented(file)
    }

    /// Publishes a segmented file once its end is known and every byte of it
    /// has arrived in a verified segment.
    pub(super) fn finish_segmented(&mut self, file: u32) -> Result<(), TransferError> {
        let ready = match self.in_flight.get(file) {
            Some(Incoming::Segmented {
                active,
                done,
                end: Some((size, _)),
                ..
            }) => active.is_empty() && done.iter().map(|d| d.1).sum::<u64>() >= *size,
            _ => false,
        };
        if !ready {
            return Ok(());
        }
        let Some(Incoming::Segmented {
            temp,
            mut done,
            end: Some((size, hash)),
            ..
        }) = self.in_flight.remove(file)
        else {
            unreachable!("checked above")
        };
        done.sort_by_key(|&(start, ..)| start);
        let mut expect = 0u64;
        let mut contiguous = true;
        for &(start, len, _) in &done {
            contiguous &= start == expect;
            expect = start + len;
        }
        let ok = contiguous
            && expect == size
            && temp.len() == size
            && manifest_of(done.iter().map(|d| &d.2)).matches(&hash);
        let name = self.entries[file as usize].name.clone();
        if !ok {
            self.progress.remove(&file);
            self.dest.open().discard(temp);
            self.file_error(
                &name,
                "verification failed: the segments received do not make up the sender's file; the old file is kept".into(),
            );
            return Ok(());
        }
        let segments = crate::proto::item::Item::CHECK_SEGMENTS;
        self.publish(file, temp, Some((segments, hash)));
        Ok(())
    }
}
