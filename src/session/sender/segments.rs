//! A large file cut across extra streams: one segment per stream, this thread
//! sending the first on the main stream and a worker thread per joined stream
//! the others; the file ends with the manifest of the segments' checks once
//! all have reported. Not for files below [`SEGMENT_MIN`] or transfers
//! without extra streams ([`super::whole`]).

use super::source::{unchanged, Unsent};
use super::{FromPeer, Sender};
use crate::check::{manifest_of, CheckValue};
use crate::chunk::WholeCheck;
use crate::error::{FileOp, TransferError};
use crate::proto::{Message, BLOCK_SIZE};
use crate::session::compress::Packer;
use crate::session::wire::FrameWriter;
use crate::session::Stream;
use crate::store::source::{Source, SourceFile, Stamp};
use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc;

/// Files at least this large are cut into segments when extra streams exist.
pub(super) const SEGMENT_MIN: u64 = 16 << 20;

/// How long the first large file waits for extra streams still connecting.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A segment for a stream worker to send.
struct SegmentJob<F> {
    file: u32,
    source: F,
    start: u64,
    len: u64,
    compress: Option<i32>,
    /// Blocks continue each other's zstd frame ([`crate::proto::Options::zstd_stream`]).
    zstd_stream: bool,
}

/// The extra streams of a transfer: those still joining, a worker thread
/// sending segments on each that joined, and the files sent in segments.
pub(super) struct Streams<S: Source> {
    /// Extra streams still to be attached.
    joins: Option<mpsc::Receiver<Stream>>,
    /// A worker per stream attached, sending the segments it is given.
    workers: Vec<mpsc::Sender<SegmentJob<S::File>>>,
    /// The first large file has waited for the extra streams.
    waited: bool,
    /// For workers to report back on the same queue as the receiver's requests.
    reports: mpsc::Sender<FromPeer>,
    /// Files whose segments are still being sent.
    segmented: HashMap<u32, SegmentedSend<S>>,
}

impl<S: Source> Streams<S> {
    pub(super) fn new(
        joins: Option<mpsc::Receiver<Stream>>,
        reports: mpsc::Sender<FromPeer>,
    ) -> Self {
        Streams {
            joins,
            workers: Vec::new(),
            waited: false,
            reports,
            segmented: HashMap::new(),
        }
    }

    /// Whether any extra stream is attached (files can be cut into segments).
    pub(super) fn attached(&self) -> bool {
        !self.workers.is_empty()
    }

    /// `file` was given up on: its segments still to report are ignored.
    pub(super) fn forget(&mut self, file: u32) {
        self.segmented.remove(&file);
    }
}

/// Who sent a segment: this thread sends a segmented file's first segment
/// on the main stream, the workers the others on the joined streams.
pub(super) enum SentBy {
    ThisThread,
    Worker,
}

/// A segmented file whose segments are still being sent.
struct SegmentedSend<S: Source> {
    /// Worker segments not yet reported.
    remaining: usize,
    /// This thread's own (first) segment has been sent or has failed.
    own_finished: bool,
    hashes: Vec<(u64, CheckValue)>,
    failure: Option<Unsent>,
    source: S::File,
    stamp: Stamp,
    path: S::Handle,
}

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Starts a worker for each extra stream that has joined. Before the first
    /// large file, waits (up to [`JOIN_WAIT`]) for the streams still
    /// connecting, so that file is split across all of them.
    pub(super) fn attach_streams(&mut self, large: bool) {
        let Some(joins) = self.streams.joins.take() else {
            return;
        };
        let wanted = usize::from(self.options.streams.saturating_sub(1));
        let wait = large && !self.streams.waited;
        let deadline = std::time::Instant::now() + JOIN_WAIT;
        loop {
            let next = if wait && self.streams.workers.len() < wanted {
                joins
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .ok()
            } else {
                joins.try_recv().ok()
            };
            let Some(stream) = next else { break };
            self.start_worker(stream);
        }
        self.streams.waited |= large;
        self.streams.joins = Some(joins);
    }

    /// Sends segments over a joined stream, on a thread of its own.
    pub(super) fn start_worker(&mut self, stream: Stream) {
        let (tx, jobs) = mpsc::channel::<SegmentJob<S::File>>();
        let reports = self.streams.reports.clone();
        let rate = self.options.bwlimit / self.options.streams.max(1) as u64;
        let counters = self.writer.counters();
        let spawned = std::thread::Builder::new()
            .name("ferry-send-segments".into())
            .spawn(move || {
                let mut writer = FrameWriter::new(stream.writer, counters);
                writer.set_rate(rate);
                // kept open until the transfer ends: over ssh, closing it lets
                // the process that handed this channel over exit early
                let _held = stream.reader;
                let mut buf = vec![0u8; BLOCK_SIZE];
                for job in jobs {
                    let result = send_segment(&mut writer, &job, &mut buf);
                    let _ = reports.send(FromPeer::SegmentDone {
                        file: job.file,
                        start: job.start,
                        result,
                    });
                }
            });
        if spawned.is_ok() {
            self.streams.workers.push(tx);
        }
    }

    /// Cuts a large file into one segment per stream: this thread sends the
    /// first on the main stream, the workers the others; the file ends when
    /// all have reported.
    pub(super) fn send_segmented(
        &mut self,
        file: u32,
        path: &S::Handle,
        f: S::File,
        before: Stamp,
    ) -> Result<(), TransferError> {
        let size = before.size;
        let n = self.streams.workers.len() as u64 + 1;
        let per = size.div_ceil(n).div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64;
        let mut jobs = Vec::new();
        let mut start = per.min(size);
        for w in 0..self.streams.workers.len() {
            if start >= size {
                break;
            }
            let len = per.min(size - start);
            let source = match f.try_clone() {
                Ok(c) => c,
                Err(e) => return self.give_up(file, path, Unsent::Io(FileOp::Open, e)),
            };
            jobs.push((
                w,
                SegmentJob {
                    file,
                    source,
                    start,
                    len,
                    compress: self.options.zstd_level(),
                    zstd_stream: self.options.zstd_stream,
                },
            ));
            start += len;
        }
        let mut entry = SegmentedSend::<S> {
            remaining: jobs.len(),
            own_finished: false,
            hashes: Vec::new(),
            failure: None,
            source: f,
            stamp: before,
            path: path.clone(),
        };
        for (w, job) in jobs {
            if self.streams.workers[w].send(job).is_err() {
                entry.remaining -= 1;
                entry.failure = Some(Unsent::WorkerStopped);
            }
        }
        let first = SegmentJob {
            file,
            source: entry.source.try_clone().map_err(|e| {
                TransferError::local(String::from_utf8_lossy(self.source.name(path)), &e)
            })?,
            start: 0,
            len: per.min(size),
            compress: self.options.zstd_level(),
            zstd_stream: self.options.zstd_stream,
        };
        self.streams.segmented.insert(file, entry);
        let mut buf = std::mem::take(&mut self.buf);
        let result = send_segment(&mut self.writer, &first, &mut buf);
        self.buf = buf;
        self.segment_done(file, 0, result, SentBy::ThisThread)
    }

    /// A segment of `file` starting at `start` was sent (or failed); once all
    /// have, the file ends with the manifest of their checks.
    pub(super) fn segment_done(
        &mut self,
        file: u32,
        start: u64,
        result: Result<CheckValue, Unsent>,
        by: SentBy,
    ) -> Result<(), TransferError> {
        let Some(entry) = self.streams.segmented.get_mut(&file) else {
            return Ok(());
        };
        match by {
            SentBy::ThisThread => entry.own_finished = true,
            SentBy::Worker => entry.remaining -= 1,
        }
        match result {
            Ok(h) => entry.hashes.push((start, h)),
            Err(why) => {
                entry.failure.get_or_insert(why);
            }
        }
        if entry.remaining > 0 || !entry.own_finished {
            return Ok(());
        }
        let mut entry = self.streams.segmented.remove(&file).expect("present");
        if let Some(why) = entry.failure {
            return self.give_up(file, &entry.path, why);
        }
        if let Err(why) = unchanged(&entry.source, &entry.stamp, entry.stamp.size) {
            return self.give_up(file, &entry.path, why);
        }
        entry.hashes.sort_by_key(|(start, _)| *start);
        self.writer.send(&Message::FileEnd {
            file,
            size: entry.stamp.size,
            hash: manifest_of(entry.hashes.iter().map(|(_, h)| h)).to_wire(),
        })
    }
}

/// Sends one segment (`Segment` frames, then `SegmentEnd`) and returns its
/// check value, or why it could not be read.
fn send_segment<W: Write, F: SourceFile>(
    writer: &mut FrameWriter<W>,
    job: &SegmentJob<F>,
    buf: &mut [u8],
) -> Result<CheckValue, Unsent> {
    let mut packer = Packer::with(job.compress, job.zstd_stream);
    let mut check = WholeCheck::default();
    let mut offset = job.start;
    let end = job.start + job.len;
    while offset < end {
        let n = (end - offset).min(buf.len() as u64) as usize;
        let block = &mut buf[..n];
        job.source
            .read_exact_at(block, offset)
            .map_err(|e| Unsent::Io(FileOp::Read, e))?;
        check.update(block);
        let (compressed, bytes) = packer.pack(block);
        writer
            .send_segment(job.file, offset, compressed, n as u32, bytes)
            .map_err(Unsent::Stream)?;
        offset += n as u64;
    }
    let value = check.segment_value();
    writer
        .send(&Message::SegmentEnd {
            file: job.file,
            offset: job.start,
            len: job.len,
            hash: value.to_wire(),
        })
        .and_then(|_| writer.flush())
        .map_err(Unsent::Stream)?;
    Ok(value)
}
