//! Whole files and the end of every file (rsync's `receiver.c`): literal data
//! unpacked and written, each file's end checked against the sender's check
//! value, the temporary file published at its final path and the chunk cache
//! told about it. Not for the recipe of a rebuild ([`super::rebuild`]).

use super::holes::{check_hole, HoleAt};
use super::incoming::Incoming;
use super::index::Basis;
use super::rebuild::{run_copies, Rebuilding};
use super::RECIPE_SLACK;
use super::{violation, write_error, Failed, Receiver};
use crate::chunk::{chunk_hash, WholeCheck};
use crate::error::{FileError, FileOp, TransferError};
use crate::fs::chunk_cache::CacheWriter;
use crate::fs::names::escape;
use crate::proto::Report;
use crate::session::compress::{Key, Unpacker};
use crate::store::destination::{BasisFile, Destination, PublishHow, TempWrite};
use std::os::unix::fs::MetadataExt;

impl<D: Destination> Receiver<'_, D> {
    /// `bytes` as sent (under `key`, the next block of the same stream
    /// under `next`: see [`crate::session::compress`]), unpacked into `buf`.
    pub(super) fn unpack<'b>(
        unpacker: &mut Unpacker,
        (key, next): (Key, Key),
        buf: &'b mut [u8],
        compressed: bool,
        raw_len: u32,
        bytes: &'b [u8],
    ) -> Result<&'b [u8], TransferError> {
        if !compressed {
            return Ok(bytes);
        }
        unpacker.unpack(key, next, bytes, raw_len, buf)
    }

    pub(super) fn data(
        &mut self,
        file: u32,
        compressed: bool,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        let Some(mut state) = self.take_for_data(file, "data", |temp| Incoming::Whole {
            temp,
            check: Box::default(),
        })?
        else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| -> Result<Result<(), Failed>, TransferError> {
            let key = (file, u64::MAX);
            let block = Self::unpack(
                &mut self.unpacker,
                (key, key),
                &mut buf,
                compressed,
                raw_len,
                bytes,
            )?;
            match &mut state {
                Incoming::Whole { temp, check } => {
                    let limit = self.entries[file as usize].size + RECIPE_SLACK;
                    if temp.len() + block.len() as u64 > limit {
                        return Err(violation(format!(
                            "sent more data for file {file} than its size allows"
                        )));
                    }
                    check.update(block);
                    self.summary.literal += block.len() as u64;
                    self.count_wire(file, bytes.len());
                    Ok(temp.write(block).map_err(write_error))
                }
                Incoming::Rebuild(r) => {
                    let Rebuilding {
                        temp,
                        check,
                        rebuild,
                        basis,
                        behind,
                        ..
                    } = &mut **r;
                    let Some((len, hash)) = rebuild.next_literal() else {
                        return Err(violation(format!(
                            "sent more chunks for file {file} than it asked for"
                        )));
                    };
                    if block.len() != len as usize || chunk_hash(block) != hash {
                        return Err(TransferError::PeerMisbehaved(format!(
                            "sent a chunk of {} that does not match its hash",
                            escape(&self.entries[file as usize].name)
                        )));
                    }
                    check.update(block);
                    self.summary.literal += block.len() as u64;
                    self.count_wire(file, bytes.len());
                    if let Err(e) = temp.write(block) {
                        return Ok(Err(write_error(e)));
                    }
                    rebuild.literal_written();
                    Ok(run_copies(rebuild, temp, check, &basis.files, behind))
                }
                _ => Err(Self::not_requested(file, "data")),
            }
        })();
        self.buf = buf;
        self.settle(file, state, result?)
    }

    /// A hole of a file sent whole (`-S`): held to the rules of
    /// [`super::holes`], recorded in the file's check at the offset where
    /// the file is extended, and the file extended over it without writing.
    pub(super) fn hole(&mut self, file: u32, offset: u64, len: u64) -> Result<(), TransferError> {
        let Some(mut state) = self.take_for_data(file, "a hole", |temp| Incoming::Whole {
            temp,
            check: Box::default(),
        })?
        else {
            return Ok(());
        };
        let Incoming::Whole { temp, check } = &mut state else {
            return Err(Self::not_requested(file, "a hole"));
        };
        let at = HoleAt {
            agreed: self.opts.sparse_holes,
            written: temp.len(),
            listed: self.entries[file as usize].size,
        };
        check_hole(file, at, offset, len)?;
        // where this side extends the file, not where the message says
        check.hole(temp.len(), len);
        let extended = temp.hole(len).map_err(write_error);
        self.settle(file, state, extended)
    }

    pub(super) fn file_end(
        &mut self,
        file: u32,
        size: u64,
        hash: [u8; 32],
    ) -> Result<(), TransferError> {
        let state = self
            .in_flight
            .remove(file)
            .ok_or_else(|| Self::not_requested(file, "the end"))?;
        // for a rebuilt file: its chunk cache entry (kept once published) and the
        // bases whose cached chunk lists it trusted
        let mut rebuilt: Option<(Option<CacheWriter>, Basis<D::Basis>)> = None;
        let mut check_kind = 0;
        let (temp, ok) = match state {
            Incoming::Failed => {
                self.in_flight.insert(file, Incoming::Ended);
                return Ok(());
            }
            Incoming::Segmented {
                temp,
                active,
                done,
                end: None,
            } => {
                self.in_flight.insert(
                    file,
                    Incoming::Segmented {
                        temp,
                        active,
                        done,
                        end: Some((size, hash)),
                    },
                );
                return self.finish_segmented(file);
            }
            // an empty file: nothing came before its end
            Incoming::Waiting { delta: None } => match self.new_temp(file) {
                Ok(t) => (
                    t,
                    size == 0 && WholeCheck::default().file_value().matches(&hash),
                ),
                Err(failed) => return self.abandon_ended(file, failed),
            },
            Incoming::Whole { temp, check } => {
                if check.has_holes() {
                    check_kind = crate::proto::item::Item::CHECK_SPARSE;
                }
                let ok = temp.len() == size && check.file_value().matches(&hash);
                (temp, ok)
            }
            Incoming::Rebuild(r) => {
                let Rebuilding {
                    temp,
                    check,
                    rebuild,
                    intake,
                    cache_entry,
                    basis,
                    ..
                } = *r;
                rebuilt = Some((cache_entry, basis));
                check_kind = crate::proto::item::Item::CHECK_KEYED;
                let (want_size, want_hash) = intake.finished(rebuild.is_done())?;
                let ok = size == want_size
                    && hash == want_hash
                    && rebuild.written() == size
                    && check.value().matches(&hash);
                (temp, ok)
            }
            _ => return Err(Self::not_requested(file, "the end")),
        };
        let name = self.entries[file as usize].name.clone();
        if !ok {
            self.progress.remove(&file);
            if let (Some(cache), Some((_, basis))) = (&self.chunk_cache, &rebuilt) {
                for &i in &basis.cached {
                    if let Some(f) = basis.files[i].as_file() {
                        cache.forget(f);
                    }
                }
            }
            // never publish, never keep as a basis
            self.dest.open().discard(temp);
            self.file_error(
                &name,
                "verification failed: the received data does not match the sender's check value; the old file is kept".into(),
            );
            return Ok(());
        }
        // a handle kept past the publish only for the chunk cache's entry of
        // a rebuilt file (a file sent whole has none: no dup, no close)
        let published = match (&rebuilt, &self.chunk_cache) {
            (Some((Some(_), _)), Some(_)) => temp.as_file().and_then(|f| f.try_clone().ok()),
            _ => None,
        };
        self.publish(file, temp, Some((check_kind, hash)));
        let Some((entry, basis)) = rebuilt else {
            return Ok(());
        };
        // remember the new file's chunks: the next re-sync need not read it;
        // forget those of a basis the new file replaced
        if let (Some(cache), Some(entry), Some(f), true) = (
            &self.chunk_cache,
            entry,
            published,
            self.entries[file as usize].done,
        ) {
            entry.finish(&f);
            for b in basis.files.iter().filter_map(|b| b.as_file()) {
                if b.metadata().is_ok_and(|m| m.nlink() == 0) {
                    cache.forget(b);
                }
            }
        }
        // the old version's blocks are freed as its last handle closes: not
        // something the rest of the transfer need wait for
        if let Some(dest) = self.dest.get() {
            dest.let_go(basis.files);
        }
        Ok(())
    }

    /// The metadata file `file` is published with.
    pub(super) fn publish_meta(&self, file: u32) -> crate::store::destination::Meta {
        let mut meta = self.meta_for(file, false);
        let l = &self.entries[file as usize];
        if meta.mode.is_none() {
            // the new copy of a file replaced without -p: the mode it had
            let setid = if self.beneath.is_some() { 0o6000 } else { 0 };
            meta.mode = Some(l.mode & !setid);
        }
        meta
    }

    pub(super) fn publish(
        &mut self,
        file: u32,
        temp: D::Temp,
        checked: Option<super::itemize::Checked>,
    ) {
        let meta = self.publish_meta(file);
        let l = &self.entries[file as usize];
        let (rel, name, size) = (l.rel.clone(), l.name.clone(), l.size);
        let fsync = self.opts.fsync;
        let backup = self.opts.backup_suffix.clone();
        let dest = self.dest.open();
        let how = PublishHow {
            fsync,
            backup: backup.as_deref(),
        };
        let result = dest.publish(temp, &rel, &meta, how);
        for text in dest.take_notices() {
            self.emit(Report::Notice {
                name: name.clone(),
                text: text.into_bytes(),
            });
        }
        match result {
            Ok(()) => {
                self.entries[file as usize].done = true;
                self.settled(file);
                self.summary.transferred += 1;
                let counted = self.progress.remove(&file).unwrap_or(0);
                self.bytes_done += size.saturating_sub(counted);
                self.emit_overall();
                self.emit(Report::Progress {
                    name: name.clone(),
                    done: size,
                    size,
                });
                let sent = crate::proto::item::Item::SENT;
                self.emit_update(file, name, size, Vec::new(), sent, checked);
            }
            Err(e) => {
                let shown = self.dest.open_ref().show(&rel);
                self.file_failed(&name, FileError::new(shown, FileOp::Publish, e));
            }
        }
    }
}
