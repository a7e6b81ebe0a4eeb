//! The sending side: lists the sources, then answers the receiver's requests with
//! whole files (streamed, hashed, compressed where that pays) or with recipes and
//! the chunks the receiver lacks.
//!
//! # Security
//! The receiver may only ask for regular files this side listed, each once, and
//! only for chunks of a recipe this side sent. Anything else ends the session:
//! nothing derived from a file that was not listed ever leaves the host.

use super::wire::{FrameReader, FrameWriter};
use super::{text, Cancel, EventFn};
use crate::chunk::{chunk_hash, ChunkHash, Chunker, RebuildKey, WholeCheck};
use crate::delta::{check_need, Spanner};
use crate::error::{io_text, TransferError};
use crate::filter::Filters;
use crate::fs::names::escape;
use crate::fs::scan::{self, ScanItem, ScanOptions};
use crate::proto::{
    ChunkRef, Event, EventKind, Message, Options, Summary, BLOCK_SIZE, LIST_AHEAD, MAX_SPAN_BATCH,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::mpsc;

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

/// Files at least this large are cut into segments when extra streams exist.
const SEGMENT_MIN: u64 = 16 << 20;

/// How long the first large file waits for extra streams still connecting.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A segment for a stream worker to send.
struct SegmentJob {
    file: u32,
    source: File,
    start: u64,
    len: u64,
    compress: Option<i32>,
}

/// A segmented file whose segments are still being sent.
struct SegmentedSend {
    /// Worker segments not yet reported.
    remaining: usize,
    /// This thread's own (first) segment has been sent or has failed.
    own_finished: bool,
    hashes: Vec<(u64, [u8; 32])>,
    failure: Option<String>,
    source: File,
    stamp: Stamp,
    path: PathBuf,
}

/// Recipes sent and not yet answered, at most this many at once.
const MAX_PENDING_RECIPES: usize = 64;
/// Batches of spans of one file sent and not yet finished, at most this many
/// (~100 MiB of file ahead of the receiver's answers, ~1 MiB of chunk lists).
const MAX_BATCHES_AHEAD: usize = 8;

/// What the reader thread passes on.
enum FromPeer {
    Want {
        file: u32,
        delta: Option<RebuildKey>,
    },
    Need {
        file: u32,
        ranges: Vec<(u32, u32)>,
    },
    /// The receiver has taken in this many list entries.
    ListAck(u32),
    Finish(Summary),
    /// An event from a remote receiver, for this client's callback.
    Event(Event),
    /// A stream worker finished a segment: its check value, or why it failed.
    SegmentDone {
        file: u32,
        start: u64,
        result: Result<[u8; 32], String>,
    },
    Failed(TransferError),
}

/// A file whose recipe is being sent or answered. Every `Spans` and `Recipe`
/// message sent for it is answered by exactly one `Need`, in the order sent,
/// so the oldest unanswered message says what a `Need` means. `FileEnd`
/// follows once all are answered and the recipe has ended.
struct PendingRecipe {
    file: File,
    /// Batches of spans sent and not yet finished, by number.
    batches: HashMap<u64, SentBatch>,
    next_batch: u64,
    /// Messages awaiting their `Need`: (batch, whether it was the `Recipe`).
    awaiting: std::collections::VecDeque<(u64, bool)>,
    /// Size and whole-file hash, once the recipe has ended.
    ended: Option<(u64, [u8; 32])>,
    stamp: Stamp,
    /// The source, for messages.
    path: PathBuf,
}

/// One `Spans` message: the chunks of its spans, and once the receiver asked
/// for some spans, the chunks listed in the `Recipe` that answered it.
#[derive(Default)]
struct SentBatch {
    chunks: Vec<(u64, u32, ChunkHash)>,
    /// Each span: its first chunk (in `chunks`) and how many.
    spans: Vec<(usize, usize)>,
    /// Indices into `chunks` of the entries of the `Recipe` sent.
    listed: Vec<usize>,
}

/// Size and mtime: if they change while a file is read, the copy is not trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp(u64, i64, i64);

fn stamp(f: &File) -> std::io::Result<Stamp> {
    let m = f.metadata()?;
    Ok(Stamp(m.size(), m.mtime(), m.mtime_nsec()))
}

/// Compresses blocks with zstd when `-z` is on and the data compresses; after a
/// block that does not, skips the next few without trying, so random-looking data
/// (checkpoints) pays almost nothing.
struct Packer {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    skip: u32,
    out: Vec<u8>,
}

impl Packer {
    /// A packer compressing at zstd `level`, or not at all.
    fn new(level: Option<i32>) -> Self {
        Packer {
            compressor: level.and_then(|l| zstd::bulk::Compressor::new(l).ok()),
            skip: 0,
            out: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.skip = 0;
    }

    /// Returns (compressed?, bytes to send).
    fn pack<'b>(&'b mut self, raw: &'b [u8]) -> (bool, &'b [u8]) {
        let Some(c) = &mut self.compressor else {
            return (false, raw);
        };
        if self.skip > 0 {
            self.skip -= 1;
            return (false, raw);
        }
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        match c.compress_to_buffer(raw, &mut self.out) {
            Ok(n) if n < raw.len() - raw.len() / 10 => (true, &self.out[..n]),
            _ => {
                self.skip = 16;
                (false, raw)
            }
        }
    }
}

struct Sender<'a, W: Write> {
    writer: FrameWriter<W>,
    events: Option<&'a EventFn<'a>>,
    options: Options,
    /// Regular files listed and not asked for yet, by index: at most
    /// [`LIST_AHEAD`] entries beyond what the receiver acknowledged.
    files: HashMap<u32, PathBuf>,
    /// Entries listed so far, and as many acknowledged by the receiver.
    listed: u32,
    acked: u32,
    pending: HashMap<u32, PendingRecipe>,
    /// Files given up on mid-recipe: a `Need` the receiver sent before it
    /// heard is ignored.
    given_up: std::collections::HashSet<u32>,
    packer: Packer,
    buf: Vec<u8>,
    rx: mpsc::Receiver<FromPeer>,
    /// Requests that arrived while a file was being sent, in order.
    deferred: std::collections::VecDeque<FromPeer>,
    finished: Option<Summary>,
    cancel: &'a Cancel,
    /// The module root (path and handle) when confined.
    confine: Option<(PathBuf, std::os::fd::OwnedFd)>,
    /// Extra streams still to be attached, and the workers sending on them.
    joins: Option<mpsc::Receiver<super::Stream>>,
    workers: Vec<mpsc::Sender<SegmentJob>>,
    /// The first large file has waited for the extra streams.
    waited_for_joins: bool,
    /// For workers to report back on the same queue as the receiver's requests.
    reports: mpsc::Sender<FromPeer>,
    segmented: HashMap<u32, SegmentedSend>,
}

/// Runs the sending side until the receiver reports it is done.
pub fn run<R, W>(
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    cfg: Config,
    cancel: &Cancel,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write,
{
    // --bwlimit is for the whole transfer: each stream gets its share
    let per_stream_rate = cfg.options.bwlimit / cfg.options.streams.max(1) as u64;
    writer.set_rate(per_stream_rate);
    let (tx, rx) = mpsc::channel();
    let reports = tx.clone();
    let reader_thread = std::thread::Builder::new()
        .name("ferry-send-rx".into())
        .spawn(move || read_requests(reader, tx))
        .map_err(|e| TransferError::local("thread", &e))?;
    let mut s = Sender {
        writer,
        events: cfg.events,
        options: cfg.options,
        files: HashMap::new(),
        listed: 0,
        acked: 0,
        pending: HashMap::new(),
        given_up: Default::default(),
        packer: Packer::new(None),
        buf: vec![0; BLOCK_SIZE],
        rx,
        deferred: Default::default(),
        finished: None,
        cancel,
        confine: None,
        joins: cfg.joins,
        workers: Vec::new(),
        waited_for_joins: false,
        reports,
        segmented: HashMap::new(),
    };
    if let Some(root) = &cfg.confine {
        let fd = crate::fs::dest::open_dir(root)
            .map_err(|e| TransferError::local(root.display().to_string(), &e))?;
        s.confine = Some((root.clone(), fd));
    }
    s.packer = Packer::new(s.options.zstd_level());
    let result = s.run(&cfg.sources);
    match result {
        Ok(summary) => {
            let _ = reader_thread.join();
            Ok(summary)
        }
        Err(e) => {
            if !matches!(e, TransferError::Connection(_) | TransferError::Remote(_)) {
                let _ = s.writer.send(&Message::Fatal(e.to_string().into_bytes()));
                let _ = s.writer.flush();
            }
            Err(e)
        }
    }
}

/// The reader thread: turns the receiver's messages into work for the writer.
fn read_requests<R: Read>(mut reader: FrameReader<R>, tx: mpsc::Sender<FromPeer>) {
    loop {
        let out = match reader.recv() {
            Ok(Some(Message::Want { file, delta })) => FromPeer::Want { file, delta },
            Ok(Some(Message::Need { file, ranges })) => FromPeer::Need { file, ranges },
            Ok(Some(Message::ListAck { entries })) => FromPeer::ListAck(entries),
            Ok(Some(Message::Event(e))) => FromPeer::Event(e),
            Ok(Some(Message::Finish(s))) => {
                let _ = tx.send(FromPeer::Finish(s));
                return;
            }
            Ok(Some(Message::Fatal(t))) => FromPeer::Failed(TransferError::Remote(text(&t))),
            Ok(Some(other)) => FromPeer::Failed(TransferError::PeerMisbehaved(format!(
                "sent {} to the sending side",
                other.name()
            ))),
            Ok(None) => FromPeer::Failed(TransferError::Connection(
                "the receiver closed the connection".into(),
            )),
            Err(e) => FromPeer::Failed(e),
        };
        let stop = matches!(out, FromPeer::Failed(_));
        if tx.send(out).is_err() || stop {
            return;
        }
    }
}

impl<W: Write> Sender<'_, W> {
    fn emit(&mut self, kind: EventKind, name: &[u8], text: String) -> Result<(), TransferError> {
        let e = Event {
            kind,
            name: name.to_vec(),
            a: 0,
            b: 0,
            text: text.into_bytes(),
        };
        match self.events {
            Some(f) => {
                f(e);
                Ok(())
            }
            None => self.writer.send(&Message::Event(e)),
        }
    }

    fn run(&mut self, sources: &[Vec<u8>]) -> Result<Summary, TransferError> {
        let filters =
            Filters::new(&self.options.filters).map_err(|e| TransferError::Usage(e.to_string()))?;
        let opts = ScanOptions {
            recursive: self.options.recursive,
            dirs: self.options.dirs,
            links: self.options.links,
            follow_links: self.options.follow_links,
            hard_links: self.options.hard_links,
            checksum: self.options.checksum,
            filters,
        };
        let start = scan::list_start(sources, &opts);
        self.writer.send(&Message::ListStart(start))?;
        let io_error = scan::scan(sources, &opts, &mut |item| {
            self.cancel.check()?;
            match item {
                ScanItem::Entry(entry, path) => {
                    let regular = entry.kind == crate::proto::Kind::File && entry.link_to.is_none();
                    if regular {
                        self.files.insert(self.listed, path);
                    }
                    self.listed += 1;
                    self.writer.send(&Message::Entry(entry))?;
                    self.poll()?;
                    self.wait_for_ack()
                }
                ScanItem::Notice(t) => self.emit(EventKind::Notice, b"", t),
                ScanItem::Error(t) => self.emit(EventKind::Error, b"", t),
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

    /// The next request: those set aside while a file was sent first, then
    /// what arrived; waits (what was written flushed first) if there is none.
    fn next_job(&mut self) -> Result<FromPeer, TransferError> {
        if let Some(job) = self.deferred.pop_front() {
            return Ok(job);
        }
        if let Ok(job) = self.rx.try_recv() {
            return Ok(job);
        }
        self.writer.flush()?;
        self.rx
            .recv()
            .map_err(|_| TransferError::Connection("the receiver went away".into()))
    }

    /// Starts a worker for each extra stream that has joined. Before the first
    /// large file, waits (up to [`JOIN_WAIT`]) for the streams still
    /// connecting, so that file is split across all of them.
    fn attach_streams(&mut self, large: bool) {
        let Some(joins) = self.joins.take() else {
            return;
        };
        let wanted = usize::from(self.options.streams.saturating_sub(1));
        let wait = large && !self.waited_for_joins;
        let deadline = std::time::Instant::now() + JOIN_WAIT;
        loop {
            let next = if wait && self.workers.len() < wanted {
                joins
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .ok()
            } else {
                joins.try_recv().ok()
            };
            let Some(stream) = next else { break };
            self.start_worker(stream);
        }
        self.waited_for_joins |= large;
        self.joins = Some(joins);
    }

    /// Sends segments over a joined stream, on a thread of its own.
    fn start_worker(&mut self, stream: super::Stream) {
        let (tx, jobs) = mpsc::channel::<SegmentJob>();
        let reports = self.reports.clone();
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
            self.workers.push(tx);
        }
    }

    /// While listing: once [`LIST_AHEAD`] entries are unacknowledged, serves
    /// the receiver's requests until it has taken in more of the list.
    fn wait_for_ack(&mut self) -> Result<(), TransferError> {
        while self.listed - self.acked >= LIST_AHEAD {
            let job = self.next_job()?;
            self.cancel.check()?;
            self.handle(job)?;
        }
        Ok(())
    }

    /// Serves whatever requests have arrived, without waiting.
    fn poll(&mut self) -> Result<(), TransferError> {
        while let Some(job) = self.deferred.pop_front() {
            self.handle(job)?;
        }
        while let Ok(job) = self.rx.try_recv() {
            self.handle(job)?;
        }
        Ok(())
    }

    /// While a file is being sent: pass the receiver's events on to the client's
    /// callback at once, and keep its other requests for later.
    fn pass_events(&mut self) -> Result<(), TransferError> {
        self.cancel.check()?;
        while let Ok(job) = self.rx.try_recv() {
            match job {
                FromPeer::Event(e) => self.deliver(e)?,
                FromPeer::Failed(e) => return Err(e),
                other => self.deferred.push_back(other),
            }
        }
        Ok(())
    }

    fn deliver(&mut self, e: Event) -> Result<(), TransferError> {
        match self.events {
            Some(f) => {
                f(e);
                Ok(())
            }
            None => Err(TransferError::PeerMisbehaved(
                "sent an event to a server".into(),
            )),
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
                let path = self.files.remove(&file).ok_or_else(|| {
                    TransferError::PeerMisbehaved(format!(
                        "asked for file {file}, which is not a regular file in the list or was asked for before"
                    ))
                })?;
                if let Some(key) = delta {
                    if self.pending.len() >= MAX_PENDING_RECIPES {
                        return Err(TransferError::PeerMisbehaved(
                            "left too many recipes unanswered".into(),
                        ));
                    }
                    self.send_recipe(file, &path, &key)
                } else {
                    self.send_whole(file, &path)
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
                self.files.retain(|&i, _| i >= entries);
                Ok(())
            }
            FromPeer::Finish(s) => {
                self.finished = Some(s);
                Ok(())
            }
            FromPeer::Event(e) => self.deliver(e),
            FromPeer::SegmentDone {
                file,
                start,
                result,
            } => self.segment_done(file, start, result),
            FromPeer::Failed(e) => Err(e),
        }
    }

    fn fail_file(
        &mut self,
        file: u32,
        path: &std::path::Path,
        why: String,
    ) -> Result<(), TransferError> {
        let reason = format!("{}: {why}", escape(path.as_os_str().as_encoded_bytes()));
        self.writer.send(&Message::FileFailed {
            file,
            reason: reason.into_bytes(),
        })
    }

    /// Opens a listed file: beneath the module root when confined.
    fn open_source(&self, path: &std::path::Path) -> std::io::Result<File> {
        match &self.confine {
            Some((root, fd)) => {
                let rel = path.strip_prefix(root).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "outside the module")
                })?;
                crate::fs::dest::open_beneath(fd, rel)
            }
            None => File::open(path),
        }
    }

    /// Cuts a large file into one segment per stream: this thread sends the
    /// first on the main stream, the workers the others; the file ends when
    /// all have reported.
    fn send_segmented(
        &mut self,
        file: u32,
        path: &std::path::Path,
        f: File,
        before: Stamp,
    ) -> Result<(), TransferError> {
        let size = before.0;
        let n = self.workers.len() as u64 + 1;
        let per = size.div_ceil(n).div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64;
        let mut jobs = Vec::new();
        let mut start = per.min(size);
        for w in 0..self.workers.len() {
            if start >= size {
                break;
            }
            let len = per.min(size - start);
            let source = match f.try_clone() {
                Ok(c) => c,
                Err(e) => return self.fail_file(file, path, io_text(&e)),
            };
            jobs.push((
                w,
                SegmentJob {
                    file,
                    source,
                    start,
                    len,
                    compress: self.options.zstd_level(),
                },
            ));
            start += len;
        }
        let mut entry = SegmentedSend {
            remaining: jobs.len(),
            own_finished: false,
            hashes: Vec::new(),
            failure: None,
            source: f,
            stamp: before,
            path: path.to_path_buf(),
        };
        for (w, job) in jobs {
            if self.workers[w].send(job).is_err() {
                entry.remaining -= 1;
                entry.failure = Some("a stream worker stopped".into());
            }
        }
        let first = SegmentJob {
            file,
            source: entry
                .source
                .try_clone()
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?,
            start: 0,
            len: per.min(size),
            compress: self.options.zstd_level(),
        };
        self.segmented.insert(file, entry);
        let mut buf = std::mem::take(&mut self.buf);
        let result = send_segment(&mut self.writer, &first, &mut buf);
        self.buf = buf;
        self.segment_done_inner(file, 0, result, true)
    }

    fn segment_done(
        &mut self,
        file: u32,
        start: u64,
        result: Result<[u8; 32], String>,
    ) -> Result<(), TransferError> {
        self.segment_done_inner(file, start, result, false)
    }

    fn segment_done_inner(
        &mut self,
        file: u32,
        start: u64,
        result: Result<[u8; 32], String>,
        own: bool,
    ) -> Result<(), TransferError> {
        let Some(entry) = self.segmented.get_mut(&file) else {
            return Ok(());
        };
        if own {
            entry.own_finished = true;
        } else {
            entry.remaining -= 1;
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
        let mut entry = self.segmented.remove(&file).expect("present");
        if let Some(why) = entry.failure {
            return self.fail_file(file, &entry.path, why);
        }
        match stamp(&entry.source) {
            Ok(after) if after == entry.stamp => {}
            Ok(_) => return self.fail_file(file, &entry.path, "changed while being sent".into()),
            Err(e) => return self.fail_file(file, &entry.path, io_text(&e)),
        }
        entry.hashes.sort();
        let mut manifest = blake3::Hasher::new();
        for (_, h) in &entry.hashes {
            manifest.update(h);
        }
        self.writer.send(&Message::FileEnd {
            file,
            size: entry.stamp.0,
            hash: *manifest.finalize().as_bytes(),
        })
    }

    /// Opens a listed file and notes its size and mtime; if that fails, the
    /// receiver is told and `None` comes back.
    fn open_listed(
        &mut self,
        file: u32,
        path: &std::path::Path,
    ) -> Result<Option<(File, Stamp)>, TransferError> {
        let opened = self
            .open_source(path)
            .and_then(|f| stamp(&f).map(|s| (f, s)));
        match opened {
            Ok(x) => Ok(Some(x)),
            Err(e) => self.fail_file(file, path, io_text(&e)).map(|_| None),
        }
    }

    fn send_whole(&mut self, file: u32, path: &std::path::Path) -> Result<(), TransferError> {
        let Some((f, before)) = self.open_listed(file, path)? else {
            return Ok(());
        };
        self.attach_streams(before.0 >= SEGMENT_MIN);
        if !self.workers.is_empty() && before.0 >= SEGMENT_MIN {
            return self.send_segmented(file, path, f, before);
        }
        self.packer.reset();
        let mut check = WholeCheck::default();
        let mut total = 0u64;
        let mut reader = &f;
        loop {
            let n = match read_full(&mut reader, &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    return self.fail_file(file, path, format!("read failed: {}", io_text(&e)))
                }
            };
            if n == 0 {
                break;
            }
            let block = &self.buf[..n];
            check.update(block);
            total += n as u64;
            let (compressed, bytes) = self.packer.pack(block);
            self.writer.send_data(file, compressed, n as u32, bytes)?;
            self.pass_events()?;
            if n < self.buf.len() {
                break;
            }
        }
        match stamp(&f) {
            Ok(after) if after == before && after.0 == total => {}
            Ok(_) => return self.fail_file(file, path, "changed while being sent".into()),
            Err(e) => return self.fail_file(file, path, io_text(&e)),
        }
        self.writer.send(&Message::FileEnd {
            file,
            size: total,
            hash: check.finish(),
        })
    }

    fn send_recipe(
        &mut self,
        file: u32,
        path: &std::path::Path,
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
                path: path.to_path_buf(),
            },
        );
        let mut chunker = Chunker::new(&reader, key);
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
    fn serve_arrived_needs(&mut self, current: u32) -> Result<(), TransferError> {
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
    fn take_while_chunking(&mut self, current: u32, job: FromPeer) -> Result<(), TransferError> {
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

    fn serve_ready_needs(&mut self, current: u32) -> Result<(), TransferError> {
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
    fn send_needed(&mut self, file: u32, ranges: &[(u32, u32)]) -> Result<(), TransferError> {
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
    fn maybe_file_end(&mut self, file: u32) -> Result<(), TransferError> {
        let p = &self.pending[&file];
        let Some((size, hash)) = p.ended else {
            return Ok(());
        };
        if !p.awaiting.is_empty() {
            return Ok(());
        }
        let p = self.pending.remove(&file).expect("pending");
        let path = p.path;
        match stamp(&p.file) {
            Ok(after) if after == p.stamp && after.0 == size => {}
            Ok(_) => return self.give_up(file, &path, "changed while being sent".into()),
            Err(e) => return self.give_up(file, &path, io_text(&e)),
        }
        self.writer.send(&Message::FileEnd { file, size, hash })
    }

    /// Fails a file that has a pending recipe: later answers for it are ignored.
    fn give_up(
        &mut self,
        file: u32,
        path: &std::path::Path,
        why: String,
    ) -> Result<(), TransferError> {
        self.pending.remove(&file);
        self.given_up.insert(file);
        self.fail_file(file, path, why)
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sends one segment (`Segment` frames, then `SegmentEnd`) and returns its
/// check value, or why it could not be read.
fn send_segment<W: Write>(
    writer: &mut FrameWriter<W>,
    job: &SegmentJob,
    buf: &mut [u8],
) -> Result<[u8; 32], String> {
    let mut packer = Packer::new(job.compress);
    let mut check = WholeCheck::default();
    let mut offset = job.start;
    let end = job.start + job.len;
    while offset < end {
        let n = (end - offset).min(buf.len() as u64) as usize;
        let block = &mut buf[..n];
        job.source
            .read_exact_at(block, offset)
            .map_err(|e| format!("read failed: {}", io_text(&e)))?;
        check.update(block);
        let (compressed, bytes) = packer.pack(block);
        writer
            .send_segment(job.file, offset, compressed, n as u32, bytes)
            .map_err(|e| e.to_string())?;
        offset += n as u64;
    }
    let hash = check.finish();
    writer
        .send(&Message::SegmentEnd {
            file: job.file,
            offset: job.start,
            len: job.len,
            hash,
        })
        .and_then(|_| writer.flush())
        .map_err(|e| e.to_string())?;
    Ok(hash)
}
