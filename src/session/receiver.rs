//! The receiving side: takes the file list, decides per entry what to do (skip,
//! create, fetch whole, rebuild from a basis), asks the sender for what it lacks,
//! verifies everything that arrives, and publishes each file atomically.
//!
//! # Security
//! Every name, count, length and index from the sender is checked before use:
//! names by [`crate::fs::names::check`] and against what the client asked for,
//! list order (a directory before its contents, no name twice), data only for
//! files this side asked for, chunks against their recipe hash, whole files
//! against their check value ([`crate::chunk::RebuildCheck`], under a key
//! drawn here, for a file rebuilt from old data; [`WholeCheck`] for one sent
//! whole) before they are renamed into place. A
//! violation ends the session; what was written so far stays in partial
//! files, never at a final path.

use super::listing::{Keep, Listing, Names};
use super::wire::{FrameReader, FrameWriter, Spares};
use super::{text, Cancel, EventFn};
use crate::chunk::{
    chunk_hash, new_rebuild_key, Chunk, ChunkHash, Chunker, RebuildKey, StreamCheck, WholeCheck,
    MAX_CHUNK, MIN_CHUNK,
};
use crate::delta::{self, ChunkIndex, Planner, Rebuild, SpanCollector, SpanIndex, SpanLoc, Step};
use crate::error::{io_text, TransferError};
use crate::filter::Filters;
use crate::fs::chunk_cache::{CacheWriter, ChunkCache};
use crate::fs::chunk_list::{ChunkList, ChunkListWriter};
use crate::fs::dest::{close_later, Dest, DropBehind, ExistingKind, Meta, TempFile};
use crate::fs::names::{self, escape, split_parent};
use crate::proto::{
    ChunkRef, Entry, Event, EventKind, Kind, ListStart, Message, Options, SpanRef, Summary,
    BLOCK_SIZE, LIST_AHEAD,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

pub struct Config<'a> {
    /// The destination path on this machine.
    pub dest: Vec<u8>,
    pub options: Options,
    /// The client's event callback; `None` on a server (events go to the peer).
    pub events: Option<&'a EventFn<'a>>,
    /// On a client that pulls: the paths it asked for, so that the sender cannot
    /// answer with names it was not asked for.
    pub requested: Option<Vec<Vec<u8>>>,
    /// A daemon module root: `dest` is relative to it and resolved without
    /// following symlinks.
    pub beneath: Option<PathBuf>,
    /// Extra streams joining this transfer (segments of large files).
    pub joins: Option<mpsc::Receiver<super::Stream>>,
}

/// Frames from the transfer's streams, in one queue.
enum Inbound {
    Primary(Result<Option<Message>, TransferError>),
    /// Messages of the main stream that arrived together: passed on as one,
    /// so that many small ones cost the receiver one wake-up.
    Batch(Vec<Message>),
    Secondary(Result<Message, TransferError>),
}

/// Batches of frames waiting for the receiver: bounded, so that a fast
/// sender is held back by TCP instead of filling memory (a batch holds less
/// than [`BATCH_DATA`] of file data plus one block, so at most ~18 MiB wait).
const INBOUND_DEPTH: usize = 64;
/// A batch of frames ends once it holds this much file data: three or four
/// small files, a wake-up of the receiver's thread for them all. Larger
/// batches were no faster for 20,000 small files, and let more small chunks
/// of a delta wait (+8 MiB of peak memory at 128 KiB).
const BATCH_DATA: usize = BLOCK_SIZE / 8;

/// One segment of a file arriving on some stream.
struct SegmentState {
    start: u64,
    next: u64,
    check: WholeCheck,
}

/// Files requested and not yet complete, at most this many…
const MAX_IN_FLIGHT: usize = 64;
/// …of which at most this many are being rebuilt from a basis (each holds open
/// files and an index of its basis chunks).
const MAX_DELTA_IN_FLIGHT: usize = 4;
/// Files smaller than this are fetched whole even when a basis exists.
const DELTA_MIN_SIZE: u64 = 64 << 10;
/// The most bytes one joined copy from a basis reads and writes at once.
const COPY_RUN: usize = crate::chunk::STREAM_BUFFER;
/// A recipe may describe at most this much more than the listed size.
const RECIPE_SLACK: u64 = 1 << 30;
/// Sibling directories looked at for a previous version of a new file.
const SIMILAR_SIBLINGS: usize = 64;
/// Directories with more entries than this are not searched for same-size files.
const SIMILAR_DIR_LIMIT: usize = 10_000;
/// Files smaller than this are written under a temporary name rather than in
/// the partial directory: an interrupted small file is simply sent again.
const PARTIAL_MIN_SIZE: u64 = 1 << 20;
/// Overall progress goes to a remote requester at most this often.
const OVERALL_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Progress events at most every this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

/// How list names map to paths under the destination handle.
enum Mapping {
    /// Names as they are.
    Under,
    /// The single file is written as this name (the destination named a file).
    FileAs(Vec<u8>),
    /// scp semantics: the single directory becomes the destination itself.
    StripTop(Vec<u8>),
}

/// What the receiver remembers of each list entry.
struct Listed {
    /// Name in the list (for messages).
    name: Vec<u8>,
    /// Path under the destination handle.
    rel: Vec<u8>,
    kind: Kind,
    size: u64,
    mode: u32,
    mtime: (i64, u32),
    uid: u32,
    gid: u32,
    is_new: bool,
    /// Published, or already up to date (a hard link may point at it).
    done: bool,
}

/// The basis a delta rebuild reads from. Its memory does not grow with its
/// size past [`FULL_INDEX_CHUNKS`]: the spans are in memory (~100 bytes per
/// ~768 KiB), each file's chunk list in a file, and the chunks of a lacked
/// span are looked for in a window of the basis around where it belongs.
#[derive(Default)]
struct Basis {
    files: Vec<File>,
    /// Each file's chunk list.
    lists: Vec<ChunkList>,
    spans: SpanIndex,
    /// Every chunk by hash, while the bases have few enough.
    full: Option<ChunkIndex>,
    /// Which of `files` were indexed from the chunk cache.
    cached: Vec<usize>,
    /// Whether the first of `files` is the one the new file replaces (the old
    /// file at its path, or a partial one).
    replaced: bool,
}

/// Bases of up to this many chunks together (~384 MiB) have all their chunks
/// indexed in memory (~4 MiB), so that a chunk is found wherever it moved;
/// past it, only near where it belongs (see [`SpanIndex::window`]). Also the
/// entries a chunk list keeps in memory before it moves to a file.
const FULL_INDEX_CHUNKS: usize = 1 << 16;

enum Incoming {
    /// Asked for, nothing arrived yet; `delta`: asked for a recipe, whose
    /// end is checked under this key.
    Waiting {
        delta: Option<RebuildKey>,
        basis: Option<JoinHandle<Basis>>,
    },
    /// Receiving a whole file.
    Whole {
        temp: TempFile,
        check: Box<WholeCheck>,
    },
    /// Rebuilding from basis chunks and literal chunks while the recipe
    /// arrives: each batch is planned, asked for and copied as it comes.
    Rebuild(Box<Rebuilding>),
    /// Receiving a whole file in segments over several streams.
    Segmented {
        temp: TempFile,
        /// Segments in progress, by the offset their next bytes go to.
        active: HashMap<u64, SegmentState>,
        /// Verified segments: (start, length, check).
        done: Vec<(u64, u64, [u8; 32])>,
        /// The sender's FileEnd (size, hash of the segment hashes), once seen.
        end: Option<(u64, [u8; 32])>,
    },
    /// Given up after a local error; what still arrives for it is ignored.
    Failed,
}

/// Which part of a delta recipe arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Spans,
    Recipe,
    End,
}

impl Part {
    fn what(self) -> &'static str {
        match self {
            Part::Spans => "spans",
            Part::Recipe => "a recipe",
            Part::End => "a recipe end",
        }
    }
}

struct Rebuilding {
    temp: TempFile,
    /// The new file's check, as its bytes are written.
    check: StreamCheck,
    /// The page cache of the file this one replaces, let go of as it is
    /// copied from.
    behind: Option<DropBehind>,
    rebuild: Rebuild,
    planner: Planner,
    basis: Basis,
    /// Recipe bytes so far, and whether a span shorter than its chunks at
    /// full size (only allowed last) was seen.
    total: u64,
    short_seen: bool,
    /// Batches of spans answered and waiting for the `Recipe` of the spans
    /// asked for: each span, and where the receiver has it if it does.
    pending: VecDeque<Vec<(SpanRef, Option<SpanLoc>)>>,
    /// Size and hash from `RecipeEnd`, once it came.
    end: Option<(u64, [u8; 32])>,
    /// The chunk cache entry of the new file, written as its recipe comes.
    cache_entry: Option<CacheWriter>,
    /// The last span of the new file found in the basis.
    last_known: Option<SpanLoc>,
    /// The basis chunks of the last window looked through, by hash.
    window: Option<(delta::Window, ChunkIndex)>,
}

struct Receiver<'a> {
    opts: Options,
    /// Handled data blocks' buffers, back to the stream readers.
    spares: Spares,
    filters: Filters,
    out: Outbox,
    events: Option<&'a EventFn<'a>>,
    dest_path: Vec<u8>,
    beneath: Option<PathBuf>,
    dest: Option<Dest>,
    /// The list's opening, until the first entry opens the destination.
    list_start: Option<ListStart>,
    mapping: Mapping,
    requested: Option<Requested>,
    entries: Listing<Listed>,
    rel_names: Names,
    /// Entries taken in as last told to the sender with `ListAck`.
    acked: u32,
    /// The rest of a batch of messages from the main stream.
    arrived: VecDeque<Message>,
    list_dirs: HashSet<Vec<u8>>,
    /// Directories this run made: nothing was in them before it, so what is
    /// listed in them is not looked up in the destination (a `stat` per file
    /// was 2% of a daemon's time receiving 20,000 small files).
    made_dirs: HashSet<Vec<u8>>,
    dirs: Vec<u32>,
    queue: VecDeque<u32>,
    in_flight: HashMap<u32, Incoming>,
    delta_in_flight: usize,
    hardlinks: Vec<(u32, u32)>,
    /// Destination directories read when looking for similar files.
    dir_cache: HashMap<Vec<u8>, Option<DirFiles>>,
    /// Directories where a partial directory was used, to tidy at the end.
    partial_dirs: HashSet<Vec<u8>>,
    list_done: bool,
    io_error: bool,
    summary: Summary,
    is_root: bool,
    buf: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// Chunk lists of destination files from earlier runs.
    chunk_cache: Option<Arc<ChunkCache>>,
    /// Files given up on: late frames for them (from other streams) are ignored.
    failed_files: HashSet<u32>,
    /// Bytes of each file in flight already counted in progress events.
    progress: HashMap<u32, u64>,
    /// Bytes of the listed files that are done (sent, reused or up to date).
    bytes_done: u64,
    /// Metadata was changed on an existing entry (needs the final sync too).
    touched: bool,
    /// When the overall progress last went to a remote requester.
    overall_sent: std::cell::Cell<Option<std::time::Instant>>,
}

/// Regular files of a destination directory with their sizes.
type DirFiles = Vec<(Vec<u8>, u64)>;

/// The top-level names a pull asked for.
struct Requested {
    any: bool,
    tops: HashSet<Vec<u8>>,
}

/// Runs the receiving side until the transfer is complete.
pub fn run<R, W>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    mut cfg: Config,
    cancel: &Cancel,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (in_tx, inbound) = mpsc::sync_channel::<Inbound>(INBOUND_DEPTH);
    let counters = reader.counters();
    let spares = Spares::default();
    reader.reuse(spares.clone());
    {
        let tx = in_tx.clone();
        std::thread::Builder::new()
            .name("ferry-recv-rx".into())
            .spawn(move || loop {
                let mut batch = Vec::new();
                let mut data = 0;
                let last = loop {
                    match reader.recv() {
                        Ok(Some(m)) => {
                            if let Message::Data { bytes, .. } | Message::Segment { bytes, .. } = &m
                            {
                                data += bytes.len();
                            }
                            batch.push(m);
                        }
                        other => break Some(other),
                    }
                    // bounded in data as well as in frames, so that the
                    // channel's bound bounds the bytes it holds; several
                    // small files go in one batch (one wake-up of the
                    // receiver's thread, not one each)
                    if data >= BATCH_DATA || batch.len() == 64 || !reader.has_buffered_frame() {
                        break None;
                    }
                };
                if !batch.is_empty() && tx.send(Inbound::Batch(batch)).is_err() {
                    return;
                }
                if let Some(m) = last {
                    let _ = tx.send(Inbound::Primary(m));
                    return;
                }
            })
            .map_err(|e| TransferError::local("thread", &e))?;
    }
    if let Some(joins) = cfg.joins.take() {
        let tx = in_tx.clone();
        let spares = spares.clone();
        std::thread::Builder::new()
            .name("ferry-recv-joins".into())
            .spawn(move || {
                for stream in joins {
                    let tx = tx.clone();
                    let counters = counters.clone();
                    let spares = spares.clone();
                    let _ = std::thread::Builder::new()
                        .name("ferry-recv-segments".into())
                        .spawn(move || {
                            let _keep_open = stream.writer;
                            let mut r = FrameReader::new(stream.reader, counters);
                            r.reuse(spares);
                            loop {
                                match r.recv() {
                                    Ok(Some(m)) => {
                                        if tx.send(Inbound::Secondary(Ok(m))).is_err() {
                                            return;
                                        }
                                    }
                                    Ok(None) => return,
                                    Err(e) => {
                                        let _ = tx.send(Inbound::Secondary(Err(e)));
                                        return;
                                    }
                                }
                            }
                        });
                }
            })
            .map_err(|e| TransferError::local("thread", &e))?;
    }
    drop(in_tx);
    let (out, rx) = mpsc::channel::<Vec<Message>>();
    let writer_thread = std::thread::Builder::new()
        .name("ferry-recv-tx".into())
        .spawn(move || write_messages(writer, rx))
        .map_err(|e| TransferError::local("thread", &e))?;
    let filters =
        Filters::new(&cfg.options.filters).map_err(|e| TransferError::Usage(e.to_string()))?;
    let requested = cfg.requested.as_ref().map(|paths| {
        let mut r = Requested {
            any: false,
            tops: HashSet::new(),
        };
        for p in paths {
            let trimmed = p.strip_suffix(b"/").unwrap_or(p);
            let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
            if p.ends_with(b"/") || base == b"." || base == b".." || base.is_empty() {
                r.any = true;
            } else {
                r.tops.insert(base.to_vec());
            }
        }
        r
    });
    let mut r = Receiver {
        opts: cfg.options,
        spares,
        filters,
        out: Outbox {
            tx: out,
            held: Default::default(),
        },
        events: cfg.events,
        dest_path: cfg.dest,
        beneath: cfg.beneath,
        dest: None,
        list_start: None,
        mapping: Mapping::Under,
        requested,
        entries: Listing::default(),
        rel_names: Names::default(),
        acked: 0,
        arrived: VecDeque::new(),
        list_dirs: HashSet::new(),
        made_dirs: HashSet::new(),
        dirs: Vec::new(),
        queue: VecDeque::new(),
        in_flight: HashMap::new(),
        delta_in_flight: 0,
        hardlinks: Vec::new(),
        partial_dirs: HashSet::new(),
        dir_cache: HashMap::new(),
        list_done: false,
        io_error: false,
        summary: Summary::default(),
        is_root: rustix::process::geteuid().is_root(),
        buf: vec![0; BLOCK_SIZE.max(MAX_CHUNK)],
        decompressor: zstd::bulk::Decompressor::new()
            .map_err(|e| TransferError::local("zstd", &e))?,
        chunk_cache: ChunkCache::open_default().map(Arc::new),
        failed_files: HashSet::new(),
        progress: HashMap::new(),
        bytes_done: 0,
        touched: false,
        overall_sent: std::cell::Cell::new(None),
    };
    let result = r.run(&inbound, cancel);
    match result {
        Ok(summary) => {
            drop(r);
            let _ = writer_thread.join();
            Ok(summary)
        }
        Err(e) => {
            if !matches!(e, TransferError::Connection(_) | TransferError::Remote(_)) {
                let _ = r.out.send(Message::Fatal(e.to_string().into_bytes()));
            }
            // the writer thread ends once it has sent what is queued
            drop(r);
            let _ = writer_thread.join();
            Err(e)
        }
    }
}

/// Messages for the writer thread, handed over in batches. Frequent small
/// ones (a `Want` per file, events, list acknowledgements) wait in `held`
/// until the receiver's thread has handled what arrived and is about to wait
/// for more, or until [`OUT_BATCH`] are held; any other message goes at once,
/// with those held before it. A `Want` per small file woke the writer thread
/// once per file.
struct Outbox {
    tx: mpsc::Sender<Vec<Message>>,
    held: std::cell::RefCell<Vec<Message>>,
}

/// Messages held at most before they go to the writer thread.
const OUT_BATCH: usize = 64;

impl Outbox {
    fn send(&self, m: Message) -> Result<(), TransferError> {
        let can_wait = matches!(
            m,
            Message::Want { .. } | Message::Event(_) | Message::ListAck { .. }
        );
        let full = {
            let mut held = self.held.borrow_mut();
            held.push(m);
            held.len() >= OUT_BATCH
        };
        if can_wait && !full {
            return Ok(());
        }
        self.flush()
    }

    /// Hands what is held to the writer thread.
    fn flush(&self) -> Result<(), TransferError> {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if held.is_empty() {
            return Ok(());
        }
        self.tx
            .send(held)
            .map_err(|_| TransferError::Connection("the connection writer stopped".into()))
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The writer thread: sends queued messages, flushing whenever the queue is
/// empty so that requests never sit in a buffer while the sender waits.
fn write_messages<W: Write>(mut writer: FrameWriter<W>, rx: mpsc::Receiver<Vec<Message>>) {
    loop {
        let batch = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::TryRecvError::Empty) => {
                if writer.flush().is_err() {
                    return;
                }
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                let _ = writer.flush();
                return;
            }
        };
        for msg in &batch {
            if writer.send(msg).is_err() {
                return;
            }
        }
    }
}

fn violation(what: String) -> TransferError {
    TransferError::PeerMisbehaved(what)
}

impl Receiver<'_> {
    fn send(&self, m: Message) -> Result<(), TransferError> {
        self.out.send(m)
    }

    fn emit(&self, kind: EventKind, name: &[u8], a: u64, b: u64, text: String) {
        // a remote requester that shows no file gets no event per file (three
        // messages per small file, each a wake-up of the writer at this end
        // and of the reader at the other)
        let per_file = matches!(
            kind,
            EventKind::Updated | EventKind::Progress | EventKind::Deleted
        );
        if per_file && self.events.is_none() && !self.opts.file_events {
            return;
        }
        let e = Event::from_parts(kind, name.to_vec(), a, b, text.into_bytes());
        match self.events {
            Some(f) => f(e),
            None => {
                let _ = self.out.send(Message::Event(e));
            }
        }
    }

    fn file_error(&mut self, name: &[u8], text: String) {
        self.summary.errors += 1;
        self.emit(EventKind::Error, name, 0, 0, text);
    }

    /// The next frame from any stream. Extra streams may only carry segments.
    fn next(&mut self, inbound: &mpsc::Receiver<Inbound>) -> Result<Message, TransferError> {
        if let Some(m) = self.arrived.pop_front() {
            return Ok(m);
        }
        // what arrived is handled: what it asked for goes out before we wait
        self.out.flush()?;
        match inbound.recv() {
            Ok(Inbound::Batch(batch)) => {
                self.arrived = batch.into();
                Ok(self.arrived.pop_front().expect("batches are not empty"))
            }
            Ok(Inbound::Primary(Ok(Some(m)))) => Ok(m),
            Ok(Inbound::Primary(Ok(None))) | Err(_) => Err(TransferError::Connection(
                "the peer closed the connection".into(),
            )),
            Ok(Inbound::Primary(Err(e))) | Ok(Inbound::Secondary(Err(e))) => Err(e),
            Ok(Inbound::Secondary(Ok(m))) => match m {
                Message::Segment { .. } | Message::SegmentEnd { .. } => Ok(m),
                other => Err(violation(format!(
                    "sent {} on an extra stream",
                    other.name()
                ))),
            },
        }
    }

    fn run(
        &mut self,
        inbound: &mpsc::Receiver<Inbound>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        match self.next(inbound)? {
            Message::ListStart(ls) => self.list_start = Some(ls),
            Message::Fatal(t) => return Err(TransferError::Remote(text(&t))),
            other => {
                return Err(violation(format!(
                    "sent {} before the file list",
                    other.name()
                )))
            }
        }
        loop {
            cancel.check()?;
            if self.list_done && self.queue.is_empty() && self.in_flight.is_empty() {
                break;
            }
            let msg = self.next(inbound)?;
            self.handle(msg)?;
            self.pump()?;
            self.acknowledge()?;
        }
        self.finish()?;
        self.send(Message::Finish(self.summary))?;
        match self.next(inbound)? {
            Message::Bye => Ok(self.summary),
            Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
            other => Err(violation(format!("sent {} instead of Bye", other.name()))),
        }
    }

    /// Tells the sender how far into the list we are, once that moved a
    /// quarter of [`LIST_AHEAD`] (it lists at most that far beyond), and lets
    /// go of the entries settled by then: below the first still queued, not
    /// in flight. Directories stay for the end (their times and `--delete`),
    /// and with `-H` every file (a later hard link may name it).
    fn acknowledge(&mut self) -> Result<(), TransferError> {
        let taken = match self.queue.front() {
            Some(&i) => i,
            None => self.entries.len() as u32,
        };
        if taken < self.acked.saturating_add(LIST_AHEAD / 4) {
            return Ok(());
        }
        self.acked = taken;
        let every_file = self.opts.hard_links;
        let in_flight = &self.in_flight;
        self.entries.let_go(taken, |i, l| {
            if l.kind == Kind::Dir || (every_file && l.kind == Kind::File) {
                Keep::ToTheEnd
            } else if in_flight.contains_key(&i) {
                Keep::ForNow
            } else {
                Keep::No
            }
        });
        if self.list_done {
            return Ok(());
        }
        self.send(Message::ListAck { entries: taken })
    }

    /// Decides how names map to the destination and opens it: like rsync, a
    /// single file may be written under the destination's own name; otherwise
    /// the destination is a directory, created if missing (only its last
    /// component). With `cp` semantics a single directory becomes the
    /// destination when that does not exist yet.
    fn start(&mut self, ls: ListStart) -> Result<(), TransferError> {
        let d = self.dest_path.clone();
        let trailing = d.ends_with(b"/");
        let mut trimmed = d.as_slice();
        while trimmed.len() > 1 && trimmed.ends_with(b"/") {
            trimmed = &trimmed[..trimmed.len() - 1];
        }
        let shown = escape(&d);
        // what is there now, and a handle to open things from
        let (exists, is_dir, mut module) = match &self.beneath {
            None => {
                let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(trimmed)).ok();
                (
                    meta.is_some(),
                    meta.as_ref().is_some_and(|m| m.is_dir()),
                    None,
                )
            }
            Some(root) => {
                let mut m = Dest::open(root, false)
                    .map_err(|e| TransferError::local(root.display().to_string(), &e))?;
                let rel = if trimmed.is_empty() || trimmed == b"/" {
                    b".".as_slice()
                } else {
                    trimmed
                };
                names::check(rel)
                    .map_err(|e| TransferError::Usage(format!("destination {shown}: {e}")))?;
                let x = m
                    .stat(rel)
                    .map_err(|e| TransferError::local(shown.clone(), &e))?;
                (
                    x.is_some(),
                    x.is_some_and(|x| x.kind == ExistingKind::Dir),
                    Some(m),
                )
            }
        };
        let (root, create): (Vec<u8>, bool) = if ls.single_file && !trailing && !is_dir {
            let (parent, base) = split_parent(trimmed);
            self.mapping = Mapping::FileAs(base.to_vec());
            let parent = if trimmed.starts_with(b"/") && parent.is_empty() {
                b"/".as_slice()
            } else {
                parent
            };
            (parent.to_vec(), false)
        } else if self.opts.cp_mode && ls.single_dir && !exists {
            self.mapping = Mapping::StripTop(Vec::new());
            (trimmed.to_vec(), true)
        } else {
            if exists && !is_dir {
                return Err(TransferError::Usage(format!(
                    "destination {shown} exists and is not a directory"
                )));
            }
            (trimmed.to_vec(), !exists)
        };
        if self.opts.dry_run && create {
            return Ok(()); // nothing exists yet: everything is new
        }
        let opened = match module.as_mut() {
            None => Dest::open(
                std::path::Path::new(std::ffi::OsStr::from_bytes(&root)),
                create,
            ),
            Some(m) => {
                let rel = if root.is_empty() || root == b"/" {
                    b".".to_vec()
                } else {
                    root.clone()
                };
                if create {
                    m.mkdir(&rel, 0o755)
                        .or_else(|e| {
                            if e.kind() == std::io::ErrorKind::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| TransferError::local(shown.clone(), &e))?;
                }
                m.sub(&rel)
            }
        };
        match opened {
            Ok(mut dest) => {
                if !self.opts.fsync && !self.opts.dry_run {
                    dest.sync_in_background();
                }
                self.dest = Some(dest);
                Ok(())
            }
            Err(e) => Err(TransferError::local(escape(&root), &e)),
        }
    }

    fn map_name(&mut self, name: &[u8]) -> Result<Vec<u8>, TransferError> {
        match &mut self.mapping {
            Mapping::Under => Ok(name.to_vec()),
            Mapping::FileAs(base) => {
                if !self.entries.is_empty() {
                    return Err(violation(format!(
                        "sent {} after announcing a single file",
                        escape(name)
                    )));
                }
                Ok(base.clone())
            }
            Mapping::StripTop(top) => {
                if top.is_empty() {
                    if name.contains(&b'/') || name == b"." {
                        return Err(violation(format!(
                            "sent {} before its directory",
                            escape(name)
                        )));
                    }
                    *top = name.to_vec();
                    return Ok(b".".to_vec());
                }
                match name.strip_prefix(top.as_slice()) {
                    Some(rest) if rest.first() == Some(&b'/') => Ok(rest[1..].to_vec()),
                    _ => Err(violation(format!(
                        "sent {} outside the announced directory",
                        escape(name)
                    ))),
                }
            }
        }
    }

    /// Checks an entry against the list so far and what was asked for.
    fn check_entry(&self, e: &Entry) -> Result<(), TransferError> {
        names::check(&e.name).map_err(|err| violation(format!("sent a bad name: {err}")))?;
        if let Some(req) = &self.requested {
            if !req.any && e.name != b"." {
                let top = e.name.split(|&b| b == b'/').next().unwrap_or(&e.name);
                if !req.tops.contains(top) {
                    return Err(violation(format!(
                        "sent {}, which was not requested",
                        escape(&e.name)
                    )));
                }
            }
        }
        if !self.opts.recursive && (e.name.contains(&b'/') || e.kind == Kind::Dir) {
            return Err(violation(format!(
                "sent {} in a transfer that is not recursive",
                escape(&e.name)
            )));
        }
        if e.name.contains(&b'/') {
            let (parent, _) = split_parent(&e.name);
            if !self.list_dirs.contains(parent) {
                return Err(violation(format!(
                    "sent {} before its directory",
                    escape(&e.name)
                )));
            }
        }
        if let Some(j) = e.link_to {
            let ok = self
                .entries
                .get(j as usize)
                .is_some_and(|t| t.kind == Kind::File);
            if !ok || e.kind != Kind::File {
                return Err(violation(format!(
                    "sent a hard link {} to an entry that is not an earlier file",
                    escape(&e.name)
                )));
            }
        }
        if e.name == b"." && !self.entries.is_empty() {
            return Err(violation("sent the root entry twice".into()));
        }
        Ok(())
    }

    fn handle(&mut self, msg: Message) -> Result<(), TransferError> {
        match msg {
            Message::Entry(e) => {
                if self.list_done {
                    return Err(violation("sent an entry after the end of the list".into()));
                }
                self.entry(e)
            }
            Message::ListEnd { io_error } => {
                if self.list_done {
                    return Err(violation("ended the file list twice".into()));
                }
                self.list_done = true;
                self.io_error = io_error;
                if io_error {
                    self.summary.errors += 1;
                }
                Ok(())
            }
            Message::Data {
                file,
                compressed,
                raw_len,
                bytes,
            } => {
                let done = self.data(file, compressed, raw_len, &bytes);
                self.spares.give(bytes);
                done
            }
            Message::Spans { file, spans } => self.spans(file, spans),
            Message::Recipe { file, chunks } => self.recipe(file, chunks),
            Message::Segment {
                file,
                offset,
                compressed,
                raw_len,
                bytes,
            } => {
                let done = self.segment(file, offset, compressed, raw_len, &bytes);
                self.spares.give(bytes);
                done
            }
            Message::SegmentEnd {
                file,
                offset,
                len,
                hash,
            } => self.segment_end(file, offset, len, hash),
            Message::RecipeEnd { file, size, hash } => self.recipe_end(file, size, hash),
            Message::FileEnd { file, size, hash } => self.file_end(file, size, hash),
            Message::FileFailed { file, reason } => {
                let state = self.in_flight.remove(&file).ok_or_else(|| {
                    violation(format!(
                        "reported a failure of file {file}, which was not requested"
                    ))
                })?;
                self.drop_state(state);
                self.progress.remove(&file);
                self.failed_files.insert(file);
                let name = self.entries[file as usize].name.clone();
                self.file_error(&name, text(&reason));
                Ok(())
            }
            Message::Event(e) => match self.events {
                Some(f) => {
                    f(e);
                    Ok(())
                }
                None => Err(violation("sent an event to a server".into())),
            },
            Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
            other => Err(violation(format!(
                "sent {} to the receiving side",
                other.name()
            ))),
        }
    }

    fn entry(&mut self, e: Entry) -> Result<(), TransferError> {
        if let Some(ls) = self.list_start.take() {
            // the destination is created only once there is something to put in it
            self.start(ls)?;
        }
        if self.entries.len() as u64 >= self.acked as u64 + LIST_AHEAD as u64 {
            return Err(violation(format!(
                "listed more than {LIST_AHEAD} entries beyond those acknowledged"
            )));
        }
        self.check_entry(&e)?;
        let rel = self.map_name(&e.name)?;
        if !self.rel_names.insert(&rel) {
            return Err(violation(format!("listed {} twice", escape(&e.name))));
        }
        if e.kind == Kind::Dir {
            self.list_dirs.insert(e.name.clone());
        }
        let index = self.entries.len() as u32;
        self.summary.files += 1;
        if e.kind == Kind::File {
            self.summary.total_size += e.size;
        }
        let existing = match self.dest.as_mut() {
            Some(_) if self.made_dirs.contains(split_parent(&rel).0) => None,
            Some(d) => match d.stat(&rel) {
                Ok(x) => x,
                Err(err) => {
                    self.entries.push(listed(&e, rel, true));
                    self.file_error(&e.name, io_text(&err));
                    return Ok(());
                }
            },
            None => None,
        };
        self.entries
            .push(listed(&e, rel.clone(), existing.is_none()));
        match e.kind {
            Kind::Dir => self.entry_dir(index, &e, existing.map(|x| x.kind)),
            Kind::Symlink => self.entry_symlink(index, &e, existing.map(|x| x.kind)),
            Kind::File => {
                if let Some(j) = e.link_to {
                    self.hardlinks.push((index, j));
                    return Ok(());
                }
                self.entry_file(index, &e, existing)
            }
        }
    }

    /// Removes what stands where an entry of another kind must go. A non-empty
    /// directory only goes with `--delete`.
    fn clear_way(&mut self, index: u32, kind: ExistingKind) -> bool {
        let (rel, name) = {
            let l = &self.entries[index as usize];
            (l.rel.clone(), l.name.clone())
        };
        if self.opts.dry_run {
            return true;
        }
        let Some(dest) = self.dest.as_mut() else {
            return true;
        };
        let non_empty_dir =
            kind == ExistingKind::Dir && dest.list(&rel).map(|l| !l.is_empty()).unwrap_or(true);
        if non_empty_dir && !self.opts.delete {
            self.file_error(
                &name,
                "cannot replace a non-empty directory (use --delete)".into(),
            );
            return false;
        }
        match dest.remove(&rel, None) {
            Ok(()) => {
                self.entries[index as usize].is_new = true;
                true
            }
            Err(err) => {
                self.file_error(
                    &name,
                    format!("cannot remove what is in the way: {}", io_text(&err)),
                );
                false
            }
        }
    }

    fn entry_dir(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<ExistingKind>,
    ) -> Result<(), TransferError> {
        self.dirs.push(index);
        let rel = self.entries[index as usize].rel.clone();
        match existing {
            Some(ExistingKind::Dir) => return Ok(()),
            Some(k) if !self.clear_way(index, k) => return Ok(()),
            _ => {}
        }
        self.summary.transferred += 1;
        // shown as rsync shows directories: with a trailing slash
        let mut shown = e.name.clone();
        shown.push(b'/');
        self.emit(EventKind::Updated, &shown, 0, 0, String::new());
        if self.opts.dry_run || rel == b"." {
            return Ok(());
        }
        let dest = self.dest.as_mut().expect("destination open");
        match dest.mkdir(&rel, 0o700) {
            Ok(()) => {
                self.made_dirs.insert(rel);
            }
            Err(err) => {
                let shown = dest.show(&rel);
                self.file_error(&e.name, format!("mkdir {shown}: {}", io_text(&err)));
            }
        }
        Ok(())
    }

    fn entry_symlink(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<ExistingKind>,
    ) -> Result<(), TransferError> {
        let rel = self.entries[index as usize].rel.clone();
        if !link_stays_inside(&rel, &e.target) {
            self.emit(
                EventKind::Notice,
                &e.name,
                0,
                0,
                format!(
                    "skipping symlink {} -> {}: it points outside the destination",
                    escape(&e.name),
                    escape(&e.target)
                ),
            );
            return Ok(());
        }
        if existing == Some(ExistingKind::Symlink) {
            if let Some(dest) = self.dest.as_mut() {
                if dest.readlink(&rel).ok().as_deref() == Some(e.target.as_slice()) {
                    self.entries[index as usize].done = true;
                    return Ok(());
                }
            }
        }
        if let Some(k) = existing {
            if k == ExistingKind::Dir && !self.clear_way(index, k) {
                return Ok(());
            }
        }
        self.summary.transferred += 1;
        self.emit(
            EventKind::Updated,
            &e.name,
            0,
            0,
            format!("-> {}", escape(&e.target)),
        );
        if self.opts.dry_run {
            return Ok(());
        }
        let meta = self.meta_for(index, false);
        let dest = self.dest.as_mut().expect("destination open");
        let result = dest
            .symlink(&rel, &e.target)
            .and_then(|_| dest.set_link_meta(&rel, &Meta { mode: None, ..meta }));
        if let Err(err) = result {
            let shown = dest.show(&rel);
            self.file_error(&e.name, format!("symlink {shown}: {}", io_text(&err)));
        }
        Ok(())
    }

    fn entry_file(
        &mut self,
        index: u32,
        e: &Entry,
        existing: Option<crate::fs::dest::Existing>,
    ) -> Result<(), TransferError> {
        let rel = self.entries[index as usize].rel.clone();
        if let Some(x) = existing {
            match x.kind {
                ExistingKind::File => {
                    if self.opts.update && x.mtime > e.mtime {
                        self.entries[index as usize].done = true;
                        return Ok(());
                    }
                    // the quick check compares mtimes to the nanosecond: a file
                    // rewritten within the same second as the copy was made is
                    // still seen as changed (rsync compares whole seconds)
                    let same = if self.opts.checksum {
                        x.size == e.size && self.same_checksum(&rel, e.checksum)
                    } else {
                        x.size == e.size && x.mtime == e.mtime && x.mtime_nsec == e.mtime_nsec
                    };
                    if same {
                        self.bytes_done += e.size;
                        self.entries[index as usize].done = true;
                        self.refresh_meta(index, x);
                        return Ok(());
                    }
                }
                k => {
                    if !self.clear_way(index, k) {
                        return Ok(());
                    }
                }
            }
        }
        if self.opts.dry_run {
            self.summary.transferred += 1;
            self.emit(EventKind::Updated, &e.name, e.size, 0, String::new());
            return Ok(());
        }
        self.queue.push_back(index);
        Ok(())
    }

    fn same_checksum(&mut self, rel: &[u8], want: Option<[u8; 32]>) -> bool {
        let (Some(want), Some(dest)) = (want, self.dest.as_mut()) else {
            return false;
        };
        let Ok(f) = dest.open_file(rel) else {
            return false;
        };
        let mut h = blake3::Hasher::new();
        h.update_reader(f).is_ok() && *h.finalize().as_bytes() == want
    }

    /// An up-to-date file may still need its permissions or owner fixed.
    fn refresh_meta(&mut self, index: u32, x: crate::fs::dest::Existing) {
        let l = &self.entries[index as usize];
        let mut m = Meta::default();
        if self.opts.perms && x.mode != l.mode {
            m.mode = Some(l.mode);
        }
        if self.opts.times && self.opts.checksum && x.mtime != l.mtime.0 {
            m.mtime = Some(l.mtime);
        }
        if self.is_root && self.opts.owner && x.uid != l.uid {
            m.uid = Some(l.uid);
        }
        if self.is_root && self.opts.group && x.gid != l.gid {
            m.gid = Some(l.gid);
        }
        if m.mode.is_none() && m.mtime.is_none() && m.uid.is_none() && m.gid.is_none() {
            return;
        }
        if self.opts.dry_run {
            return;
        }
        let (rel, name) = (l.rel.clone(), l.name.clone());
        self.touched = true;
        if let Some(dest) = self.dest.as_mut() {
            if let Err(err) = dest.set_file_meta(&rel, &m) {
                self.file_error(&name, io_text(&err));
            }
        }
    }

    /// The metadata to give entry `index` (a file, link or directory).
    fn meta_for(&self, index: u32, is_new: bool) -> Meta {
        let l = &self.entries[index as usize];
        let mode = if self.opts.perms {
            Some(l.mode)
        } else if is_new || l.is_new {
            Some(l.mode & !crate::fs::umask())
        } else {
            None
        };
        // in a daemon module nothing becomes setuid or setgid
        let mode = mode.map(|m| {
            if self.beneath.is_some() {
                m & !0o6000
            } else {
                m
            }
        });
        Meta {
            mode,
            mtime: self.opts.times.then_some(l.mtime),
            uid: (self.is_root && self.opts.owner).then_some(l.uid),
            gid: (self.is_root && self.opts.group).then_some(l.gid),
        }
    }

    /// Sends requests for queued files while there is room.
    fn pump(&mut self) -> Result<(), TransferError> {
        // refill in bursts, once half the files asked for have arrived: one
        // `Want` per finished file cost a wake-up and a write at both ends
        // for every small file
        if self.in_flight.len() > MAX_IN_FLIGHT / 2 {
            return Ok(());
        }
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(&index) = self.queue.front() else {
                break;
            };
            let l = &self.entries[index as usize];
            let wants_delta = l.size >= DELTA_MIN_SIZE;
            if wants_delta && self.delta_in_flight >= MAX_DELTA_IN_FLIGHT {
                break;
            }
            self.queue.pop_front();
            let (bases, replaced) = if wants_delta {
                self.open_bases(index)
            } else {
                (Vec::new(), false)
            };
            // (no key, no delta: the file comes whole)
            let delta = if bases.is_empty() {
                None
            } else {
                new_rebuild_key()
            };
            let basis = if delta.is_some() {
                self.delta_in_flight += 1;
                let cache = self.chunk_cache.clone();
                let spill = self.spill_dir(index);
                Some(
                    std::thread::Builder::new()
                        .name("ferry-basis".into())
                        .spawn(move || Basis {
                            replaced,
                            ..index_bases(bases, cache.as_deref(), spill)
                        })
                        .map_err(|e| TransferError::local("thread", &e))?,
                )
            } else {
                None
            };
            self.in_flight
                .insert(index, Incoming::Waiting { delta, basis });
            self.send(Message::Want { file: index, delta })?;
        }
        Ok(())
    }

    /// Where the chunk list of a large basis for entry `index` may go: the
    /// directory its new version is written to.
    fn spill_dir(&mut self, index: u32) -> Option<Arc<OwnedFd>> {
        let parent = split_parent(&self.entries[index as usize].rel).0.to_vec();
        self.dest.as_mut()?.dir(&parent).ok()
    }

    /// Files whose chunks may rebuild entry `index`: the old file at its path,
    /// and the partial file an interrupted run left.
    fn open_bases(&mut self, index: u32) -> (Vec<File>, bool) {
        let l = &self.entries[index as usize];
        let rel = l.rel.clone();
        let is_new = l.is_new;
        let Some(dest) = self.dest.as_mut() else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        if !is_new {
            if let Ok(f) = dest.open_file(&rel) {
                out.push(f);
            }
        }
        if self.opts.partial {
            if let Some(f) = dest.open_partial(&rel) {
                out.push(f);
            }
        }
        if !out.is_empty() {
            return (out, true);
        }
        let size = self.entries[index as usize].size;
        for candidate in self.similar_files(&rel, size) {
            if let Some(f) = self
                .dest
                .as_mut()
                .and_then(|d| d.open_file(&candidate).ok())
            {
                out.push(f);
            }
        }
        (out, false)
    }

    /// For a new file with nothing at its path: destination files likely to
    /// share its chunks. A file of the same size in the same directory (a renamed
    /// or duplicated shard), and the file of the same name in sibling directories
    /// (the previous checkpoint: `run/ckpt-100/model.bin` for
    /// `run/ckpt-200/model.bin`), closest in size first. Whatever is picked is
    /// only ever used through chunk hashes, so a poor guess costs a read, never
    /// correctness.
    fn similar_files(&mut self, rel: &[u8], size: u64) -> Vec<Vec<u8>> {
        let (dir, name) = split_parent(rel);
        let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some(files) = self.dir_files(dir) {
            for (other, other_size) in files {
                if other_size == size && other != name {
                    found.push((0, names::join(dir, &other)));
                    break;
                }
            }
        }
        if dir != b"." {
            let (grand, here) = split_parent(dir);
            let (grand, here) = (grand.to_vec(), here.to_vec());
            if let Some(dest) = self.dest.as_mut() {
                let siblings = dest.list(&grand).unwrap_or_default();
                for (sibling, is_dir) in siblings.into_iter().take(SIMILAR_SIBLINGS) {
                    if !is_dir || sibling == here || sibling == crate::fs::PARTIAL_DIR {
                        continue;
                    }
                    let candidate = names::join(&names::join(&grand, &sibling), name);
                    if let Ok(Some(x)) = dest.stat(&candidate) {
                        if x.kind == ExistingKind::File && x.size > 0 {
                            found.push((x.size.abs_diff(size), candidate));
                        }
                    }
                }
            }
        }
        found.sort();
        found.dedup_by(|a, b| a.1 == b.1);
        found.into_iter().take(2).map(|(_, p)| p).collect()
    }

    /// Regular files and their sizes in destination directory `dir`, read once
    /// per transfer (a directory with very many entries is not read at all).
    fn dir_files(&mut self, dir: &[u8]) -> Option<DirFiles> {
        if let Some(v) = self.dir_cache.get(dir) {
            return v.clone();
        }
        let dest = self.dest.as_mut()?;
        let listing = dest.list(dir).ok().unwrap_or_default();
        let files = (listing.len() <= SIMILAR_DIR_LIMIT).then(|| {
            listing
                .into_iter()
                .filter(|(_, is_dir)| !is_dir)
                .filter_map(|(n, _)| {
                    let p = names::join(dir, &n);
                    match dest.stat(&p) {
                        Ok(Some(x)) if x.kind == ExistingKind::File => Some((n, x.size)),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>()
        });
        if self.dir_cache.len() > 256 {
            self.dir_cache.clear();
        }
        self.dir_cache.insert(dir.to_vec(), files.clone());
        files
    }

    fn new_temp(&mut self, index: u32) -> Result<TempFile, String> {
        let l = &self.entries[index as usize];
        let rel = l.rel.clone();
        // a small file is cheaper to resend than to keep a partial copy of
        let partial = self.opts.partial && l.size >= PARTIAL_MIN_SIZE;
        if partial {
            self.partial_dirs.insert(split_parent(&rel).0.to_vec());
        }
        // a new file goes without a name until it is linked into place
        let unnamed = l.is_new;
        let dest = self.dest.as_mut().expect("destination open");
        dest.create_temp(&rel, partial, self.opts.sparse, unnamed)
            .map_err(|e| {
                format!(
                    "cannot create a temporary file for {}: {}",
                    dest.show(&rel),
                    io_text(&e)
                )
            })
    }

    fn not_requested(file: u32, what: &str) -> TransferError {
        violation(format!(
            "sent {what} for file {file}, which was not requested or is not at that stage"
        ))
    }

    fn unpack<'b>(
        decompressor: &mut zstd::bulk::Decompressor<'static>,
        buf: &'b mut [u8],
        compressed: bool,
        raw_len: u32,
        bytes: &'b [u8],
    ) -> Result<&'b [u8], TransferError> {
        if !compressed {
            return Ok(bytes);
        }
        let out = &mut buf[..raw_len as usize];
        match decompressor.decompress_to_buffer(bytes, out) {
            Ok(n) if n == raw_len as usize => Ok(&buf[..n]),
            Ok(n) => Err(violation(format!(
                "sent a compressed block of {n} bytes declared as {raw_len}"
            ))),
            Err(_) => Err(violation(
                "sent a compressed block that does not decompress within its declared size".into(),
            )),
        }
    }

    fn data(
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
        let result = (|| -> Result<Result<(), String>, TransferError> {
            let block = Self::unpack(&mut self.decompressor, &mut buf, compressed, raw_len, bytes)?;
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
                    Ok(temp.write(block).map_err(|e| write_error(&e)))
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
                    if let Err(e) = temp.write(block) {
                        return Ok(Err(write_error(&e)));
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

    /// After literal bytes were written: keep the file going, or give it up
    /// after a local write error.
    fn settle(
        &mut self,
        file: u32,
        state: Incoming,
        written: Result<(), String>,
    ) -> Result<(), TransferError> {
        match written {
            Ok(()) => {
                self.note_progress(file, &state);
                self.in_flight.insert(file, state);
                Ok(())
            }
            Err(msg) => {
                self.drop_state(state);
                self.abandon(file, msg)
            }
        }
    }

    /// Takes the state of a file that literal bytes arrived for: the first
    /// bytes of a whole file create its temporary file (in the state `start`
    /// makes); bytes for a file given up on are dropped (`None`).
    fn take_for_data(
        &mut self,
        file: u32,
        what: &str,
        start: impl FnOnce(TempFile) -> Incoming,
    ) -> Result<Option<Incoming>, TransferError> {
        let state = self
            .in_flight
            .remove(&file)
            .ok_or_else(|| Self::not_requested(file, what))?;
        match state {
            Incoming::Failed => {
                self.in_flight.insert(file, state);
                Ok(None)
            }
            Incoming::Waiting { delta: None, .. } => match self.new_temp(file) {
                Ok(temp) => Ok(Some(start(temp))),
                Err(msg) => self.abandon(file, msg).map(|_| None),
            },
            other => Ok(Some(other)),
        }
    }

    fn note_progress(&mut self, file: u32, state: &Incoming) {
        let done = match state {
            Incoming::Whole { temp, .. } => temp.len(),
            Incoming::Rebuild(r) => r.temp.len(),
            Incoming::Segmented { active, done, .. } => {
                done.iter().map(|d| d.1).sum::<u64>()
                    + active.values().map(|a| a.next - a.start).sum::<u64>()
            }
            _ => return,
        };
        let last = self.progress.entry(file).or_insert(0);
        if done >= *last + PROGRESS_STEP {
            let step = done - *last;
            *last = done;
            self.bytes_done += step;
            let l = &self.entries[file as usize];
            let (name, size) = (l.name.clone(), l.size);
            self.emit_overall();
            self.emit(EventKind::Progress, &name, done, size, String::new());
        }
    }

    fn emit_overall(&self) {
        // to a remote requester a few times a second, and at the end
        if self.events.is_none() && self.bytes_done < self.summary.total_size {
            let now = std::time::Instant::now();
            match self.overall_sent.get() {
                Some(t) if now.duration_since(t) < OVERALL_EVERY => return,
                _ => self.overall_sent.set(Some(now)),
            }
        }
        self.emit(
            EventKind::Overall,
            b"",
            self.bytes_done,
            self.summary.total_size,
            String::new(),
        );
    }

    /// Gives up on one file after a local problem (cannot create or write it):
    /// it is reported and counted, what the sender still sends for it up to
    /// its end is ignored, and the rest of the transfer goes on.
    fn abandon(&mut self, file: u32, msg: String) -> Result<(), TransferError> {
        self.report_abandoned(file, msg);
        self.in_flight.insert(file, Incoming::Failed);
        Ok(())
    }

    /// [`abandon`](Self::abandon) for a file whose end has arrived: nothing
    /// more comes for it, so it is not left in flight (the transfer would
    /// wait for it forever).
    fn abandon_ended(&mut self, file: u32, msg: String) -> Result<(), TransferError> {
        self.report_abandoned(file, msg);
        self.failed_files.insert(file);
        Ok(())
    }

    /// Reports a file given up on, saying what is short when the disk is full.
    fn report_abandoned(&mut self, file: u32, mut msg: String) {
        let name = self.entries[file as usize].name.clone();
        if msg.contains("No space left") {
            let rel = self.entries[file as usize].rel.clone();
            if let Some(dest) = &self.dest {
                let free = dest.free_space().unwrap_or(0);
                let why = if dest.out_of_inodes() {
                    format!("no inodes left, {free} bytes free")
                } else {
                    format!(
                        "{free} bytes free, {} needed",
                        self.entries[file as usize].size
                    )
                };
                msg = format!("{}: {msg} ({why}; the old file is kept)", dest.show(&rel));
            }
        }
        self.progress.remove(&file);
        self.file_error(&name, msg);
    }

    /// Bytes of a segment: they go to `offset`, continuing a segment in
    /// progress or starting a new one that overlaps nothing received.
    fn segment(
        &mut self,
        file: u32,
        offset: u64,
        compressed: bool,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        if self.failed_files.contains(&file) {
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
        let result = (|| -> Result<Result<(), String>, TransferError> {
            let block = Self::unpack(&mut self.decompressor, &mut buf, compressed, raw_len, bytes)?;
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
            let written = temp.write_at(offset, block).map_err(|e| write_error(&e));
            active.insert(end, seg);
            Ok(written)
        })();
        self.buf = buf;
        self.settle(file, state, result?)
    }

    fn segment_end(
        &mut self,
        file: u32,
        offset: u64,
        len: u64,
        hash: [u8; 32],
    ) -> Result<(), TransferError> {
        if self.failed_files.contains(&file) {
            return Ok(());
        }
        let state = self
            .in_flight
            .get_mut(&file)
            .ok_or_else(|| Self::not_requested(file, "a segment end"))?;
        let Incoming::Segmented { active, done, .. } = state else {
            return match state {
                Incoming::Failed => Ok(()),
                _ => Err(Self::not_requested(file, "a segment end")),
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
        if seg.check.finish() != hash {
            let name = self.entries[file as usize].name.clone();
            return Err(TransferError::PeerMisbehaved(format!(
                "sent a segment of {} that does not match its check value",
                escape(&name)
            )));
        }
        done.push((offset, len, hash));
        self.finish_segmented(file)
    }

    /// Publishes a segmented file once its end is known and every byte of it
    /// has arrived in a verified segment.
    fn finish_segmented(&mut self, file: u32) -> Result<(), TransferError> {
        let ready = match self.in_flight.get(&file) {
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
        }) = self.in_flight.remove(&file)
        else {
            unreachable!("checked above")
        };
        done.sort();
        let mut expect = 0u64;
        let mut manifest = blake3::Hasher::new();
        let mut contiguous = true;
        for &(start, len, h) in &done {
            contiguous &= start == expect;
            expect = start + len;
            manifest.update(&h);
        }
        let ok = contiguous
            && expect == size
            && temp.len() == size
            && *manifest.finalize().as_bytes() == hash;
        let name = self.entries[file as usize].name.clone();
        if !ok {
            self.progress.remove(&file);
            self.dest.as_mut().expect("destination open").discard(temp);
            self.file_error(
                &name,
                "verification failed: the segments received do not make up the sender's file; the old file is kept".into(),
            );
            return Ok(());
        }
        self.publish(file, temp);
        Ok(())
    }

    /// A batch of spans: each is looked up in the basis, and the answer is one
    /// `Need` naming the spans whose chunks we want to see (always sent, even
    /// when empty or the file was given up, so that the sender can go on).
    fn spans(&mut self, file: u32, spans: Vec<SpanRef>) -> Result<(), TransferError> {
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
    fn recipe(&mut self, file: u32, chunks: Vec<ChunkRef>) -> Result<(), TransferError> {
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
    fn rebuild_for(
        &mut self,
        file: u32,
        part: Part,
    ) -> Result<Option<Box<Rebuilding>>, TransferError> {
        let state = self
            .in_flight
            .remove(&file)
            .ok_or_else(|| Self::not_requested(file, part.what()))?;
        let r = match state {
            Incoming::Failed => {
                self.in_flight.insert(file, state);
                None
            }
            Incoming::Waiting {
                delta: Some(key),
                basis,
            } if part != Part::Recipe => self.start_rebuild(file, &key, basis),
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
    fn start_rebuild(
        &mut self,
        file: u32,
        key: &RebuildKey,
        basis: Option<JoinHandle<Basis>>,
    ) -> Option<Box<Rebuilding>> {
        // (indexing a large basis can take a while: nothing held waits for
        // it; a writer that stopped shows at the next send)
        let _ = self.out.flush();
        let basis = basis.and_then(|h| h.join().ok()).unwrap_or_default();
        let size = self.entries[file as usize].size;
        // (unless the old file stays: as a backup or under another name)
        let behind = (basis.replaced
            && self.opts.backup_suffix.is_none()
            && basis.files[0].metadata().is_ok_and(|m| m.nlink() == 1))
        .then(DropBehind::default);
        match self.new_temp(file) {
            Ok(temp) => Some(Box::new(Rebuilding {
                temp,
                check: StreamCheck::new(size, key),
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
            })),
            Err(msg) => {
                self.delta_in_flight -= 1;
                let _ = self.abandon(file, msg);
                None
            }
        }
    }

    fn recipe_end(&mut self, file: u32, size: u64, hash: [u8; 32]) -> Result<(), TransferError> {
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

    fn file_end(&mut self, file: u32, size: u64, hash: [u8; 32]) -> Result<(), TransferError> {
        let state = self
            .in_flight
            .remove(&file)
            .ok_or_else(|| Self::not_requested(file, "the end"))?;
        // for a rebuilt file: its chunk cache entry (kept once published) and the
        // bases whose cached chunk lists it trusted
        let mut rebuilt: Option<(Option<CacheWriter>, Basis)> = None;
        let (temp, ok) = match state {
            Incoming::Failed => {
                self.failed_files.insert(file);
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
            Incoming::Waiting { delta: None, .. } => match self.new_temp(file) {
                Ok(t) => (t, size == 0 && hash == WholeCheck::default().finish()),
                Err(msg) => return self.abandon_ended(file, msg),
            },
            Incoming::Whole { temp, check } => {
                let ok = temp.len() == size && check.finish() == hash;
                (temp, ok)
            }
            Incoming::Rebuild(r) => {
                let Rebuilding {
                    temp,
                    check,
                    rebuild,
                    end,
                    cache_entry,
                    basis,
                    pending,
                    ..
                } = *r;
                rebuilt = Some((cache_entry, basis));
                if !pending.is_empty() {
                    return Err(violation(format!(
                        "ended file {file} before listing the spans asked for"
                    )));
                }
                let Some((want_size, want_hash)) = end else {
                    return Err(violation(format!("ended file {file} before its recipe")));
                };
                if !rebuild.is_done() {
                    return Err(violation(format!(
                        "ended file {file} before sending the chunks it asked for"
                    )));
                }
                self.delta_in_flight -= 1;
                let ok = size == want_size
                    && hash == want_hash
                    && rebuild.written() == size
                    && check.finish() == hash;
                (temp, ok)
            }
            _ => return Err(Self::not_requested(file, "the end")),
        };
        let name = self.entries[file as usize].name.clone();
        if !ok {
            self.progress.remove(&file);
            if let (Some(cache), Some((_, basis))) = (&self.chunk_cache, &rebuilt) {
                for &i in &basis.cached {
                    cache.forget(&basis.files[i]);
                }
            }
            // never publish, never keep as a basis
            self.dest.as_mut().expect("destination open").discard(temp);
            self.file_error(
                &name,
                "verification failed: the received data does not match the sender's check value; the old file is kept".into(),
            );
            return Ok(());
        }
        let published = temp.file.try_clone().ok();
        self.publish(file, temp);
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
            for b in &basis.files {
                if b.metadata().is_ok_and(|m| m.nlink() == 0) {
                    cache.forget(b);
                }
            }
        }
        // the old version's blocks are freed as its last handle closes: not
        // something the rest of the transfer need wait for
        close_later(basis.files);
        Ok(())
    }

    fn publish(&mut self, file: u32, mut temp: TempFile) {
        let meta = self.meta_for(file, false);
        let l = &self.entries[file as usize];
        let (rel, name, size) = (l.rel.clone(), l.name.clone(), l.size);
        let fsync = self.opts.fsync;
        let backup = self.opts.backup_suffix.clone();
        let dest = self.dest.as_mut().expect("destination open");
        let result = temp
            .finish(&meta, fsync)
            .and_then(|_| dest.publish(temp, &rel, backup.as_deref()));
        match result {
            Ok(()) => {
                self.entries[file as usize].done = true;
                self.summary.transferred += 1;
                let counted = self.progress.remove(&file).unwrap_or(0);
                self.bytes_done += size.saturating_sub(counted);
                self.emit_overall();
                self.emit(EventKind::Progress, &name, size, size, String::new());
                self.emit(EventKind::Updated, &name, size, 0, String::new());
            }
            Err(e) => {
                let shown = self.dest.as_ref().expect("destination open").show(&rel);
                self.file_error(&name, format!("cannot write {shown}: {}", io_text(&e)));
            }
        }
    }

    /// Forgets a file in flight after a failure, keeping a partial file (whose
    /// content is only ever used through chunk hashes) and removing a plain
    /// temporary one.
    fn drop_state(&mut self, state: Incoming) {
        let temp = match state {
            Incoming::Whole { temp, .. } | Incoming::Segmented { temp, .. } => Some(temp),
            Incoming::Rebuild(r) => {
                self.delta_in_flight -= 1;
                Some(r.temp)
            }
            Incoming::Waiting { delta: Some(_), .. } => {
                self.delta_in_flight -= 1;
                None
            }
            Incoming::Waiting { delta: None, .. } | Incoming::Failed => None,
        };
        if let Some(t) = temp {
            if !t.partial {
                self.dest.as_mut().expect("destination open").discard(t);
            }
        }
    }

    /// The end of the list and of all files: hard links, deletions, directory
    /// metadata, and one sync for everything.
    fn finish(&mut self) -> Result<(), TransferError> {
        for (index, target) in std::mem::take(&mut self.hardlinks) {
            let t = &self.entries[target as usize];
            let l = &self.entries[index as usize];
            let (trel, rel, name, tdone) = (t.rel.clone(), l.rel.clone(), l.name.clone(), t.done);
            if !tdone && !self.opts.dry_run {
                self.file_error(&name, "not linked: the file it links to failed".into());
                continue;
            }
            self.summary.transferred += 1;
            self.emit(
                EventKind::Updated,
                &name,
                0,
                0,
                format!("=> {}", escape(&t.name)),
            );
            if self.opts.dry_run {
                continue;
            }
            let dest = self.dest.as_mut().expect("destination open");
            if let Err(e) = dest.hardlink(&trel, &rel) {
                let shown = dest.show(&rel);
                self.file_error(&name, format!("link {shown}: {}", io_text(&e)));
            }
        }
        if self.opts.delete {
            if self.io_error {
                self.summary.delete_skipped = true;
                self.emit(
                    EventKind::Error,
                    b"",
                    0,
                    0,
                    "the sender had I/O errors: skipping deletion".into(),
                );
            } else {
                self.delete_extraneous();
            }
        }
        // before directory times are set: removing an entry changes its parent's mtime
        if let Some(dest) = self.dest.as_mut() {
            for dir in std::mem::take(&mut self.partial_dirs) {
                dest.remove_partial_dir(&dir);
            }
        }
        for &index in self.dirs.clone().iter().rev() {
            let meta = self.meta_for(index, false);
            let l = &self.entries[index as usize];
            let (rel, name) = (l.rel.clone(), l.name.clone());
            if self.opts.dry_run
                || (meta.mode.is_none() && meta.mtime.is_none() && meta.uid.is_none())
            {
                continue;
            }
            let Some(dest) = self.dest.as_mut() else {
                continue;
            };
            // a directory already as it should be is left alone
            if let Ok(Some(x)) = dest.stat(&rel) {
                let same = meta.mode.is_none_or(|m| m == x.mode)
                    && meta.mtime.is_none_or(|t| t == (x.mtime, x.mtime_nsec))
                    && meta.uid.is_none_or(|u| u == x.uid)
                    && meta.gid.is_none_or(|g| g == x.gid);
                if same {
                    continue;
                }
            }
            self.touched = true;
            if let Err(e) = dest.set_dir_meta(&rel, &meta) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.file_error(&name, io_text(&e));
                }
            }
        }
        // durable before success is reported; nothing to wait for when nothing
        // changed (syncfs would also wait for other writers on the filesystem)
        let changed = self.summary.transferred > 0 || self.summary.deleted > 0 || self.touched;
        if !self.opts.dry_run && changed {
            if let Some(dest) = &self.dest {
                dest.sync_all()
                    .map_err(|e| TransferError::local(escape(&self.dest_path), &e))?;
            }
        }
        Ok(())
    }

    fn delete_extraneous(&mut self) {
        for &index in &self.dirs.clone() {
            let rel = self.entries[index as usize].rel.clone();
            let Some(dest) = self.dest.as_mut() else {
                return;
            };
            let Ok(children) = dest.list(&rel) else {
                continue;
            };
            for (child, is_dir) in children {
                let crel = names::join(&rel, &child);
                if child == crate::fs::PARTIAL_DIR
                    || self.rel_names.contains(&crel)
                    || self.filters.excludes(&crel, is_dir)
                {
                    continue;
                }
                let shown_name = names::join(&self.entries[index as usize].name, &child);
                let shown_name = if self.entries[index as usize].name == b"." {
                    child.clone()
                } else {
                    shown_name
                };
                self.summary.deleted += 1;
                self.emit(
                    EventKind::Deleted,
                    &shown_name,
                    is_dir as u64,
                    0,
                    String::new(),
                );
                if self.opts.dry_run {
                    continue;
                }
                let backup = self.opts.backup_suffix.clone();
                let dest = self.dest.as_mut().expect("destination open");
                if let Err(e) = dest.remove(&crel, backup.as_deref()) {
                    let shown = dest.show(&crel);
                    self.file_error(
                        &shown_name,
                        format!("cannot delete {shown}: {}", io_text(&e)),
                    );
                }
            }
        }
    }
}

fn listed(e: &Entry, rel: Vec<u8>, is_new: bool) -> Listed {
    Listed {
        name: e.name.clone(),
        rel,
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        mtime: (e.mtime, e.mtime_nsec),
        uid: e.uid,
        gid: e.gid,
        is_new,
        done: false,
    }
}

fn write_error(e: &std::io::Error) -> String {
    format!("write failed: {}", io_text(e))
}

/// What indexing one basis file collects: its spans, and its chunks while
/// there is `room` for them in the full index.
struct FileIndexer {
    spans: SpanCollector,
    few: Option<Vec<Chunk>>,
    room: usize,
    offset: u64,
}

impl FileIndexer {
    fn new(room: Option<usize>) -> Self {
        FileIndexer {
            spans: SpanCollector::default(),
            few: room.map(|_| Vec::new()),
            room: room.unwrap_or(0),
            offset: 0,
        }
    }

    fn push(&mut self, len: u32, hash: &ChunkHash) {
        self.spans.push(len, hash);
        if let Some(v) = &mut self.few {
            v.push(Chunk {
                offset: self.offset,
                len,
                hash: *hash,
            });
            if v.len() > self.room {
                self.few = None;
            }
        }
        self.offset += len as u64;
    }
}

/// Reads every basis file once (or its chunk cache entry), collecting its
/// spans and chunk list, and every chunk by hash while there are few enough.
fn index_bases(files: Vec<File>, cache: Option<&ChunkCache>, spill: Option<Arc<OwnedFd>>) -> Basis {
    let mut b = Basis {
        full: Some(ChunkIndex::default()),
        ..Basis::default()
    };
    for (i, f) in files.iter().enumerate() {
        let room = b.full.as_ref().map(|ix| FULL_INDEX_CHUNKS - ix.len());
        let mut ix = FileIndexer::new(room);
        let list = match cache.and_then(|c| c.load(f, |len, hash| ix.push(len, hash))) {
            Some(list) => {
                b.cached.push(i);
                list
            }
            None => {
                ix = FileIndexer::new(room);
                let mut list = ChunkListWriter::new(spill.clone(), FULL_INDEX_CHUNKS);
                let mut ok = true;
                chunk_basis(f, spill.clone(), |len, hash| {
                    ix.push(len, hash);
                    ok &= list.push(len, hash).is_ok();
                });
                match list.finish() {
                    Ok(list) if ok => list,
                    // a list that could not be kept: this file offers nothing
                    _ => {
                        ix = FileIndexer::new(room);
                        ChunkList::empty()
                    }
                }
            }
        };
        b.spans.add_file(ix.spans.finish());
        match (&mut b.full, ix.few) {
            (Some(index), Some(chunks)) => chunks.iter().for_each(|c| index.add(i as u32, c)),
            _ => b.full = None,
        }
        b.lists.push(list);
    }
    b.files = files;
    b
}

/// Basis files at least this large are chunked by two threads, one from the
/// start and one from the middle.
const TWO_THREAD_CHUNKING: u64 = 64 << 20;

/// How many of the second thread's first cuts the first thread tries to meet.
const SYNC_CUTS: usize = 64;

/// Chunks a basis file, giving each chunk's length and hash to `each` in file
/// order: the same chunks one pass from the start would give. A large file is
/// chunked by two threads (the receiver otherwise indexes its old file on one
/// core while the other waits): one from the middle into a chunk list, the
/// other from the start until one of its cuts meets one of the first thread's
/// (content-defined cuts depend only on the bytes after the last cut, so from
/// a common cut on both find the same chunks); the rest then comes from the
/// list. Where no cut meets (long runs cut only at the maximum size, as in
/// zeros), the first thread carries on to the end alone. A read error ends
/// the chunks early: a basis only offers bytes to reuse.
fn chunk_basis(f: &File, spill: Option<Arc<OwnedFd>>, each: impl FnMut(u32, &ChunkHash)) {
    let two = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    chunk_basis_from(
        f,
        spill,
        if two { TWO_THREAD_CHUNKING } else { u64::MAX },
        each,
    )
}

/// [`chunk_basis`], with two threads for files of at least `two_from` bytes.
fn chunk_basis_from(
    f: &File,
    spill: Option<Arc<OwnedFd>>,
    two_from: u64,
    mut each: impl FnMut(u32, &ChunkHash),
) {
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size < two_from {
        return chunk_from(f, 0, |c| {
            each(c.len, &c.hash);
            true
        });
    }
    let mid = size / 2;
    let stop = &std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (starts_tx, starts_rx) = mpsc::sync_channel::<Vec<u64>>(1);
        let second = std::thread::Builder::new()
            .name("ferry-basis-2".into())
            .spawn_scoped(scope, move || {
                // where its first SYNC_CUTS chunks start, sent once known
                let mut starts = Some(Vec::with_capacity(SYNC_CUTS));
                let mut list = ChunkListWriter::new(spill, FULL_INDEX_CHUNKS);
                let mut ok = true;
                chunk_from(f, mid, |c| {
                    if let Some(v) = &mut starts {
                        v.push(mid + c.offset);
                        if v.len() == SYNC_CUTS {
                            let _ = starts_tx.send(starts.take().expect("just seen"));
                        }
                    }
                    ok = list.push(c.len, &c.hash).is_ok();
                    ok && !stop.load(std::sync::atomic::Ordering::Relaxed)
                });
                if let Some(v) = starts {
                    let _ = starts_tx.send(v);
                }
                list.finish().ok().filter(|_| ok)
            });
        // the first: from the start until one of its cuts is where one of
        // the second's chunks starts (then `met` is that chunk's number)
        let mut met = None;
        let mut starts: Option<Vec<u64>> = None;
        chunk_from(f, 0, |c| {
            each(c.len, &c.hash);
            let end = c.offset + c.len as u64;
            if end < mid || second.is_err() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                return true;
            }
            let starts = starts.get_or_insert_with(|| starts_rx.recv().unwrap_or_default());
            match starts.binary_search(&end) {
                Ok(k) => {
                    met = Some(k as u64);
                    return false;
                }
                // past the cuts it could meet: on alone to the end
                Err(k) if k == starts.len() => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed)
                }
                Err(_) => {}
            }
            true
        });
        let rest = second.ok().and_then(|t| t.join().ok().flatten());
        let (Some(mut next), Some(rest)) = (met, rest) else {
            return;
        };
        let mut batch = Vec::new();
        while next < rest.len() {
            batch.clear();
            let n = (rest.len() - next).min(4096) as usize;
            if rest.read(next, n, &mut batch).is_err() {
                return;
            }
            batch.iter().for_each(|(len, hash)| each(*len, hash));
            next += n as u64;
        }
    });
}

/// Chunks `f` from `pos` to its end (or a read error), while `go` wants more;
/// chunk offsets are from `pos`.
fn chunk_from(f: &File, pos: u64, mut go: impl FnMut(&Chunk) -> bool) {
    let mut chunker = Chunker::chunks_only(ReadAt { file: f, pos });
    while let Ok(Some((c, _))) = chunker.next_chunk() {
        if !go(&c) {
            return;
        }
    }
}

/// Reads a file from `pos` on with `pread`, leaving its offset alone (two
/// threads read the same file).
struct ReadAt<'f> {
    file: &'f File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The basis chunks near a run of lacked spans between the known spans
/// `prev` and `next` (see [`SpanIndex::window`]), indexed by hash; the last
/// window is kept, as runs close together often share it.
fn window_index<'w>(
    kept: &'w mut Option<(delta::Window, ChunkIndex)>,
    basis: &Basis,
    prev: Option<SpanLoc>,
    next: Option<SpanLoc>,
) -> &'w ChunkIndex {
    let wanted = basis.spans.window(prev, next);
    if kept.as_ref().is_none_or(|(w, _)| *w != wanted) {
        let mut index = ChunkIndex::default();
        let mut entries = Vec::new();
        for (b, range) in &wanted {
            let spans = &basis.spans.spans(*b)[range.clone()];
            let (Some(start), Some(last)) = (spans.first(), spans.last()) else {
                continue;
            };
            let count = (last.first + last.chunks as u64 - start.first) as usize;
            entries.clear();
            // unreadable: the window offers nothing, the chunks are asked for
            if basis.lists[*b as usize]
                .read(start.first, count, &mut entries)
                .is_err()
            {
                continue;
            }
            let mut offset = start.offset;
            for &(len, hash) in &entries {
                index.add(*b, &Chunk { offset, len, hash });
                offset += len as u64;
            }
        }
        *kept = Some((wanted, index));
    }
    &kept.as_ref().expect("just set").1
}

/// Runs the copy steps of a rebuild up to its next literal.
/// Runs the copy steps of a rebuild up to its next literal. Copies of
/// consecutive basis bytes (a known span is a run of them) are joined into
/// reads and writes of up to [`COPY_RUN`] bytes: ~6 KiB system calls cost more
/// than the copying.
fn run_copies(
    rebuild: &mut Rebuild,
    temp: &mut TempFile,
    check: &mut StreamCheck,
    bases: &[File],
    behind: &mut Option<DropBehind>,
) -> Result<(), String> {
    // basis bytes waiting to be copied: (basis, offset, length)
    let mut run: Option<(u32, u64, usize)> = None;
    let mut flush = |run: &mut Option<(u32, u64, usize)>,
                     temp: &mut TempFile,
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
            if let (0, Some(behind)) = (basis, behind.as_mut()) {
                behind.read(from, offset, len as u64);
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

/// Whether a symlink at `rel` pointing to `target` stays inside the tree.
fn link_stays_inside(rel: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth = rel.split(|&b| b == b'/').count() as i64 - 1;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{chunk_basis_from, link_stays_inside};
    use crate::chunk::tests::random;
    use crate::chunk::{chunk_slice, ChunkHash};
    use std::io::Write;

    #[test]
    fn the_outbox_holds_only_what_may_wait_and_keeps_the_order() {
        use super::{Outbox, OUT_BATCH};
        use crate::proto::Message;
        let (tx, rx) = std::sync::mpsc::channel();
        let out = Outbox {
            tx,
            held: Default::default(),
        };
        let want = |file| Message::Want { file, delta: None };
        let files = |batch: Vec<Message>| -> Vec<u32> {
            batch
                .iter()
                .map(|m| match m {
                    Message::Want { file, .. } | Message::Need { file, .. } => *file,
                    _ => u32::MAX,
                })
                .collect()
        };
        out.send(want(1)).unwrap();
        out.send(want(2)).unwrap();
        assert!(rx.try_recv().is_err(), "requests for whole files may wait");
        // a delta's answer never waits: it goes at once, after what was held
        out.send(Message::Need {
            file: 3,
            ranges: vec![],
        })
        .unwrap();
        assert_eq!(files(rx.try_recv().unwrap()), [1, 2, 3]);
        out.send(want(4)).unwrap();
        out.flush().unwrap();
        assert_eq!(files(rx.try_recv().unwrap()), [4]);
        for f in 0..OUT_BATCH as u32 {
            out.send(want(f)).unwrap();
        }
        assert_eq!(
            rx.try_recv().unwrap().len(),
            OUT_BATCH,
            "a full outbox goes"
        );
        out.send(want(9)).unwrap();
        drop(out);
        assert_eq!(
            files(rx.try_recv().unwrap()),
            [9],
            "nothing is lost at the end"
        );
    }

    #[test]
    fn a_basis_chunked_by_two_threads_gives_the_chunks_of_one_pass() {
        let mib = 1 << 20;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("random", random(6 * mib, 1)),
            // cut only at the maximum size, the middle off their grid: no
            // cut meets, the first thread goes on alone
            ("zeros", vec![0; 6 * mib + 1000]),
            ("zeros across the middle", {
                let mut v = random(2 * mib, 2);
                v.extend(vec![0u8; 2 * mib]);
                v.extend(random(2 * mib, 3));
                v
            }),
            ("random, then zeros from the middle", {
                let mut v = random(3 * mib, 4);
                v.extend(vec![0u8; 3 * mib]);
                v
            }),
        ];
        for (what, data) in cases {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let want: Vec<(u32, ChunkHash)> =
                chunk_slice(&data).iter().map(|c| (c.len, c.hash)).collect();
            let mut got = Vec::new();
            chunk_basis_from(&f, None, mib as u64, |len, hash| got.push((len, *hash)));
            assert_eq!(got.len(), want.len(), "{what}: chunk count");
            assert!(got == want, "{what}: chunks differ");
        }
    }

    #[test]
    fn symlink_containment() {
        assert!(link_stays_inside(b"a", b"b"));
        assert!(link_stays_inside(b"d/a", b"../b"));
        assert!(!link_stays_inside(b"a", b"../b"));
        assert!(!link_stays_inside(b"d/a", b"../../b"));
        assert!(!link_stays_inside(b"d/a", b"x/../../../b"));
        assert!(!link_stays_inside(b"a", b"/etc/passwd"));
        assert!(link_stays_inside(b"d/e/a", b"../x/./y"));
    }
}
