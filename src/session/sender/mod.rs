//! The sending side: lists the sources, then answers the receiver's requests with
//! whole files (streamed, hashed, compressed where that pays) or with recipes and
//! the chunks the receiver lacks.
//!
//! This file holds the setup and the main loop: the list, then one request at a
//! time. What each request leads to lives beside it: [`requests`] (the reader
//! thread and the order requests are served in), [`source`] (opening listed
//! files, noticing a file that changed, giving up on one), [`whole`] (a file
//! sent whole), [`recipe`] (a file sent as spans, a recipe and the chunks
//! asked for, following the rules kept by the sans-IO [`ledger`]) and
//! [`segments`] (a large file cut across extra streams). It does
//! not decide what the receiver may ask: the receiver decides, this side checks.
//!
//! # Security
//! The receiver may only ask for regular files this side listed, each once, and
//! only for chunks of a recipe this side sent. Anything else ends the session:
//! nothing derived from a file that was not listed ever leaves the host.

mod ledger;
mod recipe;
mod removal;
mod requests;
mod segments;
mod source;
mod sparse;
#[cfg(test)]
mod tests;
mod whole;

use super::wire::{FrameReader, FrameWriter};
use super::{Cancel, EventFn};
use crate::error::TransferError;
use crate::filter::Filters;
use crate::fs::source::LocalSource;
use crate::proto::{Event, Message, Options, Summary, BLOCK_SIZE, LIST_AHEAD};
use crate::session::compress::Packer;
use crate::store::source::{ListOptions, Listed, Source};
use ledger::Ledger;
use recipe::Reading;
use requests::{read_requests, FromPeer};
use segments::{SentBy, Streams};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;

/// The list goes out every this many entries, not only when the writer's
/// 256 KiB buffer fills (~5,800 unchanged entries) or the window of
/// [`LIST_AHEAD`] closes: held until then, what was listed left the receiver
/// idle while this side scanned, and the two ends took turns instead of
/// working at once (an unchanged re-sync of 200,000 files, bench/NOTES.md
/// §48).
const LIST_FLUSH: u32 = LIST_AHEAD / 8;

pub struct Config<'a> {
    pub sources: Vec<Vec<u8>>,
    pub options: Options,
    /// The client's event callback; `None` on a server (events go to the peer).
    pub events: Option<&'a EventFn<'a>>,
    /// A daemon module root: every source is inside it, and files are opened
    /// beneath it without following symlinks.
    pub confine: Option<PathBuf>,
    /// Extra streams joining this transfer: large files are cut into segments
    /// sent over all streams at once.
    pub joins: Option<mpsc::Receiver<super::Stream>>,
}

struct Sender<'a, W: Write, S: Source> {
    writer: FrameWriter<W>,
    events: Option<&'a EventFn<'a>>,
    options: Options,
    /// Regular files listed and not asked for yet, by index, with their
    /// listed size (the most a hole may reach: the receiver holds it to
    /// that): at most [`LIST_AHEAD`] entries beyond what the receiver
    /// acknowledged.
    files: HashMap<u32, (S::Handle, u64)>,
    /// Entries listed so far, and as many acknowledged by the receiver.
    listed: u32,
    acked: u32,
    /// The recipes on offer: which `Need` answers what (sans-IO).
    recipes: Ledger<Reading<S>>,
    packer: Packer,
    buf: Vec<u8>,
    rx: mpsc::Receiver<FromPeer>,
    /// Requests that arrived while a file was being sent, in order.
    deferred: std::collections::VecDeque<FromPeer>,
    finished: Option<Summary>,
    cancel: &'a Cancel,
    /// Where the listed files are read from.
    source: &'a S,
    /// Extra streams, the workers sending segments on them, and the files
    /// being sent in segments.
    streams: Streams<S>,
    /// `-S`: a block of zeros and its compressed frame, made at the first
    /// file with holes.
    zeros: Option<sparse::Zeros>,
    /// `--remove-source-files`: every listed non-directory, with how it
    /// looked when listed, until the receiver says it is settled.
    removable: HashMap<u32, (S::Handle, crate::store::source::Stamp)>,
}

/// Runs the sending side over the local filesystem (beneath the module root
/// when confined) until the receiver reports it is done.
pub fn run<R, W>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    cfg: Config,
    cancel: &Cancel,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write,
{
    let confine = cfg.confine.clone();
    run_from(reader, writer, cfg, cancel, move || match confine {
        // messages name paths relative to the module, never its path here
        Some(root) => LocalSource::confined(&root)
            .map_err(|e| TransferError::local("the module's directory".to_string(), &e)),
        None => Ok(LocalSource::default()),
    })
}

/// Runs the sending side over the source that `open` gives (called once the
/// reader thread runs) until the receiver reports it is done.
pub fn run_from<R, W, S>(
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    cfg: Config,
    cancel: &Cancel,
    open: impl FnOnce() -> Result<S, TransferError>,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write,
    S: Source,
{
    // --bwlimit is for the whole transfer: the streams share one pacer
    writer.set_rate(cfg.options.bwlimit);
    let (tx, rx) = mpsc::channel();
    let reports = tx.clone();
    let started = std::thread::Builder::new()
        .name("ferry-send-rx".into())
        .spawn(move || read_requests(reader, tx))
        .map_err(|e| TransferError::local("thread", &e));
    let (reader_thread, source) = match started.and_then(|t| Ok((t, open()?))) {
        Ok(s) => s,
        Err(e) => {
            // the receiver is waiting for a listing: tell it why none comes
            let _ = writer.send(&Message::Fatal(e.to_string().into_bytes()));
            let _ = writer.flush();
            return Err(e);
        }
    };
    let mut s = Sender {
        writer,
        events: cfg.events,
        options: cfg.options,
        files: HashMap::new(),
        listed: 0,
        acked: 0,
        recipes: Ledger::default(),
        packer: Packer::new(None),
        buf: vec![0; BLOCK_SIZE],
        rx,
        deferred: Default::default(),
        finished: None,
        cancel,
        source: &source,
        streams: Streams::new(cfg.joins, reports),
        zeros: None,
        removable: HashMap::new(),
    };
    s.packer = Packer::with(s.options.zstd_level(), s.options.zstd_stream);
    let result = s.run(&cfg.sources);
    match result {
        Ok(summary) => {
            let _ = reader_thread.join();
            Ok(summary)
        }
        Err(e) => {
            if let TransferError::Connection(_) = e {
                // a write that failed because the receiver went away: its
                // own words, when it sent them, say more than a broken pipe
                let wait = std::time::Duration::from_secs(2);
                if let Some(said) = s.peer_failure(wait, || reader_thread.is_finished()) {
                    return Err(said);
                }
            }
            if !matches!(e, TransferError::Connection(_) | TransferError::Remote(_)) {
                let _ = s.writer.send(&Message::Fatal(e.to_string().into_bytes()));
                let _ = s.writer.flush();
            }
            Err(e)
        }
    }
}

impl<W: Write, S: Source> Sender<'_, W, S> {
    fn emit(&mut self, e: Event) -> Result<(), TransferError> {
        match self.events {
            Some(f) => {
                f(e);
                Ok(())
            }
            None => self.writer.send(&Message::Event(e)),
        }
    }

    fn run(&mut self, sources: &[Vec<u8>]) -> Result<Summary, TransferError> {
        let filters = Filters::with_dir_merges(&self.options.filters, &self.options.dir_merges)
            .map_err(|e| TransferError::Usage(e.to_string()))?;
        let opts = ListOptions {
            recursive: self.options.recursive,
            dirs: self.options.dirs,
            cp_mode: self.options.cp_mode,
            links: self.options.links,
            follow_links: self.options.follow_links,
            copy_unsafe_links: self.options.copy_unsafe_links,
            copy_dirlinks: self.options.copy_dirlinks,
            one_file_system: self.options.one_file_system,
            relative: self.options.relative,
            hard_links: self.options.hard_links,
            checksum: self.options.checksum,
            filters,
        };
        let source = self.source;
        let start = source.list_start(sources, &opts);
        self.writer.send(&Message::ListStart(start))?;
        let io_error = source.list(sources, &opts, &mut |item| {
            self.cancel.check()?;
            match item {
                Listed::Entry(mut entry, path) => {
                    self.keep_removable(&entry, &path);
                    // the first of a group of hard links is marked (its own
                    // index) only for a receiver told to expect marks
                    let first_of_group = entry.link_to == Some(self.listed);
                    if first_of_group && !self.options.link_marks {
                        entry.link_to = None;
                    }
                    let regular = entry.kind == crate::proto::Kind::File
                        && (entry.link_to.is_none() || first_of_group);
                    if regular {
                        self.files.insert(self.listed, (path, entry.size));
                    }
                    self.listed += 1;
                    self.writer.send(&Message::Entry(entry))?;
                    // what the receiver sent first: a receiver that failed
                    // and closed its ends is reported by its own words, not
                    // by the flush's broken pipe
                    self.poll()?;
                    if self.listed.is_multiple_of(LIST_FLUSH) {
                        self.writer.flush()?;
                    }
                    self.wait_for_ack()
                }
                Listed::Notice(t) => self.emit(Event::notice(b"", t)),
                Listed::Error(t) => self.emit(Event::error(b"", t)),
            }
        })?;
        self.writer.send(&Message::ListEnd { io_error })?;
        loop {
            if let Some(summary) = self.finished {
                self.writer.send(&Message::Bye)?;
                self.writer.flush()?;
                return Ok(summary);
            }
            let job = self.next_job()?;
            self.cancel.check()?;
            self.handle(job)?;
        }
    }

    fn handle(&mut self, job: FromPeer) -> Result<(), TransferError> {
        match job {
            FromPeer::Want { file, delta } => {
                if self.options.dry_run {
                    return Err(TransferError::PeerMisbehaved(
                        "asked for file data in a dry run".into(),
                    ));
                }
                let (path, listed_size) = self.files.remove(&file).ok_or_else(|| {
                    TransferError::PeerMisbehaved(format!(
                        "asked for file {file}, which is not a regular file in the list or was asked for before"
                    ))
                })?;
                if let Some(key) = delta {
                    self.recipes
                        .room()
                        .map_err(|v| TransferError::PeerMisbehaved(v.0))?;
                    self.send_recipe(file, &path, &key)
                } else {
                    self.send_whole(file, &path, listed_size)
                }
            }
            FromPeer::Need { file, ranges } => self.send_needed(file, &ranges),
            FromPeer::ListAck(entries) => {
                if entries > self.listed || entries < self.acked {
                    return Err(TransferError::PeerMisbehaved(format!(
                        "acknowledged {entries} list entries of {}",
                        self.listed
                    )));
                }
                // the receiver asked for what it wants of those entries
                // before it said so: the rest will not be asked for
                self.acked = entries;
                // (--delete-before: the receiver acknowledges entries it
                // asks for only once the list is whole)
                if !self.options.delete || !self.options.dest_side.deletes_first() {
                    self.files.retain(|&i, _| i >= entries);
                }
                Ok(())
            }
            FromPeer::Settled(files) => self.remove_settled(&files),
            FromPeer::Finish(s) => {
                self.finished = Some(s);
                Ok(())
            }
            FromPeer::Event(e) => self.deliver(e),
            FromPeer::SegmentDone {
                file,
                start,
                result,
            } => self.segment_done(file, start, result, SentBy::Worker),
            FromPeer::Failed(e) => Err(e),
        }
    }
}
