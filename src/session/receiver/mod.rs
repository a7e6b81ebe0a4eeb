//! The receiving side: takes the file list, decides per entry what to do (skip,
//! create, fetch whole, rebuild from a basis), asks the sender for what it lacks,
//! verifies everything that arrives, and publishes each file atomically.
//! It writes through a [`Destination`] (the local filesystem's is
//! [`crate::fs::dest::Dest`]) and is monomorphic over it.
//!
//! One concept per file, along rsync's lines: `pumps` (its `io.c`: the
//! stream threads), `intake` and `recipe` (the rules of what may arrive
//! when, sans-IO), `open` (naming the destination), `generator` (per-entry
//! decisions), `schedule` (what to ask for next), `basis` and `index`
//! (old data to rebuild from), `incoming` (each file's state), `publish`
//! (whole files and file ends, rsync's `receiver.c`), `segments`,
//! `rebuild`, `finish` (`hlink.c` and `delete.c`) and `progress`. This
//! file holds the setup, the main loop and the dispatch of each message.
//!
//! # Security
//! Every name, count, length and index from the sender is checked before use:
//! names by [`crate::fs::names::check`] and against what the client asked for,
//! list order (a directory before its contents, no name twice), data only for
//! files this side asked for, chunks against their recipe hash, whole files
//! against their check value ([`crate::chunk::RebuildCheck`], under a key
//! drawn here, for a file rebuilt from old data; [`crate::chunk::WholeCheck`] for one sent
//! whole) before they are renamed into place. A
//! violation ends the session; what was written so far stays in partial
//! files, never at a final path.

mod basis;
mod basis_dirs;
mod dest_rules;
mod finish;
mod generator;
mod holes;
mod incoming;
mod index;
mod intake;
mod itemize;
mod open;
mod progress;
mod publish;
mod pumps;
mod rebuild;
pub mod recipe;
mod schedule;
mod segments;
mod settled;

use super::listing::Listing;
use super::wire::{FrameReader, FrameWriter, Spares};
use super::{text, Cancel, EventFn};
use crate::chunk::MAX_CHUNK;
use crate::error::{FileOp, TransferError};
use crate::filter::Filters;
use crate::fs::chunk_cache::ChunkCache;
use crate::fs::dest::Dest;
use crate::fs::destination::LocalPlace;
use crate::proto::{Entry, Kind, ListStart, Message, Options, Summary, BLOCK_SIZE};
use crate::store::destination::{Destination, Place};
use basis::DirFiles;
use incoming::{DeltaSlots, InFlight, Incoming};
use intake::ListIntake;
pub use intake::Requested;
use pumps::{spawn_readers, spawn_writer, Inbox, Outbox};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

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

/// A recipe may describe at most this much more than the listed size.
const RECIPE_SLACK: u64 = 1 << 30;

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
    /// What differs from what was at the destination ([`crate::proto::item::Item`]
    /// bits; only worked out when the requester itemizes).
    item: u32,
    /// Its part in a group of hard links, if any (such entries are kept to
    /// the end, for the links made there).
    hard: Hard,
}

/// An entry's part in a group of hard links (`-H`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hard {
    /// None that the list says: a plain file (or not a file).
    None,
    /// The first file of a group, marked by the sender (`link_to` its own
    /// index): later links name it.
    First,
    /// A link to an earlier file, made at the end.
    Link,
}

struct Receiver<'a, D: Destination = Dest> {
    opts: Options,
    /// Handled data blocks' buffers, back to the stream readers.
    spares: Spares,
    filters: Filters,
    /// `--chmod`: rules applied to each mode as it arrives.
    chmod: Option<crate::chmod::Chmod>,
    out: Outbox,
    events: Option<&'a EventFn<'a>>,
    dest_path: Vec<u8>,
    beneath: Option<PathBuf>,
    /// The destination: where it is until the first entry opens it.
    dest: Target<'a, D>,
    /// The list's opening, until the first entry opens the destination.
    list_start: Option<ListStart>,
    /// The rules of the list as it arrives.
    intake: ListIntake,
    entries: Listing<Listed>,
    /// The rest of a batch of messages from the main stream.
    arrived: VecDeque<Message>,
    /// Directories this run made: nothing was in them before it, so what is
    /// listed in them is not looked up in the destination (a `stat` per file
    /// was 2% of a daemon's time receiving 20,000 small files).
    made_dirs: HashSet<Vec<u8>>,
    dirs: Vec<u32>,
    queue: VecDeque<u32>,
    in_flight: InFlight<D>,
    delta_slots: DeltaSlots,
    hardlinks: Vec<(u32, u32)>,
    /// Destination directories read when looking for similar files.
    dir_cache: HashMap<Vec<u8>, Option<DirFiles>>,
    /// Directories where a partial directory was used, to tidy at the end.
    partial_dirs: HashSet<Vec<u8>>,
    io_error: bool,
    summary: Summary,
    is_root: bool,
    buf: Vec<u8>,
    unpacker: crate::session::compress::Unpacker,
    /// Chunk lists of destination files from earlier runs.
    chunk_cache: Option<Arc<ChunkCache>>,
    /// Bytes of each file in flight already counted in progress events.
    progress: HashMap<u32, u64>,
    /// Bytes of the listed files that are done (sent, reused or up to date).
    bytes_done: u64,
    /// Bytes of file data that came over the wire per file in flight (only
    /// counted when the requester itemizes).
    wire: HashMap<u32, u64>,
    /// This run made the destination directory itself (itemized as new).
    root_created: bool,
    /// Metadata was changed on an existing entry (needs the final sync too).
    touched: bool,
    /// When the overall progress last went to a remote requester.
    overall_sent: std::cell::Cell<Option<std::time::Instant>>,
    /// `--link-dest`/`--copy-dest`/`--compare-dest` directories, opened.
    basis_dirs: Vec<D>,
    /// Files to rebuild from a basis directory's copy: which one.
    basis_of: HashMap<u32, usize>,
    /// `--remove-source-files`: entries at the destination as listed, told to
    /// the sender once synced.
    settled: Vec<u32>,
    /// `--delete-before` has deleted (once the list was whole).
    deleted_first: bool,
    /// `--chown`: the owner and group every entry gets.
    chown: Option<crate::fs::owners::Chown>,
    /// `--atomic`: the place that built the new tree beside the destination,
    /// to switch it in once the whole tree is written and durable.
    swap: Option<Box<dyn Place<Dest = D> + 'a>>,
    /// `--delete` with `dir-merge` rules: each destination directory's own
    /// merge-file rules, read once ([`dest_rules`]).
    dest_rules: HashMap<Vec<u8>, dest_rules::OwnRules>,
}

/// Runs the receiving side until the transfer is complete, into the local
/// filesystem.
pub fn run<R, W>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    cfg: Config,
    cancel: &Cancel,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let place = LocalPlace::new(cfg.beneath.clone());
    run_into(reader, writer, cfg, place, cancel)
}

/// The receiver's own reading of the options: the filters, `--chmod` and
/// `--chown` (names resolved on this host).
type Setup = (
    Filters,
    Option<crate::chmod::Chmod>,
    Option<crate::fs::owners::Chown>,
);

fn setup(options: &Options) -> Result<Setup, TransferError> {
    let filters = Filters::with_dir_merges(&options.filters, &options.dir_merges)
        .map_err(|e| TransferError::Usage(e.to_string()))?;
    let chmod = match &options.chmod {
        Some(c) => Some(
            crate::chmod::Chmod::parse(&[c]).map_err(|e| TransferError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    if options.dest_side.atomic && options.dest_side.inplace {
        return Err(TransferError::Usage(
            crate::proto::OptionsError::AtomicInplace.to_string(),
        ));
    }
    let chown = match &options.dest_side.chown {
        Some(c) => Some(crate::fs::owners::Chown::parse(c).map_err(TransferError::Usage)?),
        None => None,
    };
    Ok((filters, chmod, chown))
}

/// Runs the receiving side until the transfer is complete, into the store
/// `place` opens (`cfg.dest` is its path there).
pub fn run_into<'a, R, W, P>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    mut cfg: Config<'a>,
    place: P,
    cancel: &Cancel,
) -> Result<Summary, TransferError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
    P: Place + 'a,
{
    let spares = Spares::default();
    let mut inbox = spawn_readers(reader, cfg.joins.take(), spares.clone())?;
    let (out, writer_thread) = spawn_writer(writer)?;
    // what this side cannot do as asked (a --chown name unknown here) is
    // told to the sender, whose user would otherwise see a lost connection
    let (filters, chmod, chown) = match setup(&cfg.options) {
        Ok(s) => s,
        Err(e) => {
            let _ = out.send(Message::Fatal(e.to_string().into_bytes()));
            drop(out);
            let _ = writer_thread.join();
            return Err(e);
        }
    };
    // -R: a pull's names start with the first component of each path asked for
    let requested = cfg.requested.as_ref().map(|paths| {
        if !cfg.options.relative {
            return paths.clone();
        }
        // (from a daemon the first component is the module's name and the
        // names start with the second: either may lead)
        paths
            .iter()
            .flat_map(|p| {
                let rel = match p.windows(3).position(|w| w == b"/./") {
                    Some(i) => &p[i + 3..],
                    None => p.as_slice(),
                };
                let mut parts = rel
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .take(2)
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>();
                if parts.is_empty() {
                    parts.push(b"./".to_vec());
                }
                parts
            })
            .collect()
    });
    // (-R names paths, and the directories above them, without -r too; -d
    // sends directories and the entries one level in)
    let nested = cfg.options.recursive || cfg.options.relative || cfg.options.dirs;
    let mut intake = ListIntake::new(requested.as_deref(), nested);
    if cfg.options.link_marks {
        intake.expect_link_marks();
    }
    let mut r = Receiver {
        opts: cfg.options,
        spares,
        filters,
        chmod,
        out,
        events: cfg.events,
        dest_path: cfg.dest,
        beneath: cfg.beneath,
        dest: Target::Unopened(Box::new(place)),
        list_start: None,
        intake,
        entries: Listing::default(),
        arrived: VecDeque::new(),
        made_dirs: HashSet::new(),
        dirs: Vec::new(),
        queue: VecDeque::new(),
        in_flight: InFlight::default(),
        delta_slots: DeltaSlots::default(),
        hardlinks: Vec::new(),
        partial_dirs: HashSet::new(),
        dir_cache: HashMap::new(),
        io_error: false,
        summary: Summary::default(),
        is_root: rustix::process::geteuid().is_root(),
        // one byte more than a block: a compressed block that unpacks longer
        // than it says is seen as such
        buf: vec![0; BLOCK_SIZE.max(MAX_CHUNK) + 1],
        unpacker: Default::default(),
        chunk_cache: ChunkCache::open_default().map(Arc::new),
        progress: HashMap::new(),
        wire: HashMap::new(),
        root_created: false,
        bytes_done: 0,
        touched: false,
        overall_sent: std::cell::Cell::new(None),
        basis_dirs: Vec::new(),
        basis_of: HashMap::new(),
        settled: Vec::new(),
        deleted_first: false,
        chown,
        swap: None,
        dest_rules: HashMap::new(),
    };
    let result = r.run(&mut inbox, cancel);
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

/// The destination of a transfer, from where it is to open.
enum Target<'a, D: Destination> {
    /// Until the first entry: where it is (opened once there is something
    /// to put in it).
    Unopened(Box<dyn Place<Dest = D> + 'a>),
    /// A dry run into a directory that does not exist: nothing to look at.
    Absent,
    Open(D),
}

impl<D: Destination> Target<'_, D> {
    /// The destination, when there is one to look at.
    fn get(&mut self) -> Option<&mut D> {
        match self {
            Target::Open(d) => Some(d),
            _ => None,
        }
    }

    fn get_ref(&self) -> Option<&D> {
        match self {
            Target::Open(d) => Some(d),
            _ => None,
        }
    }

    /// The destination, to change it. Changes come only after the first
    /// entry opened it and never in a dry run, the one case that leaves it
    /// absent: this is the only place that holds the receiver to that.
    fn open(&mut self) -> &mut D {
        match self {
            Target::Open(d) => d,
            _ => unreachable!("a change before the destination was opened, or in a dry run"),
        }
    }

    fn open_ref(&self) -> &D {
        match self {
            Target::Open(d) => d,
            _ => unreachable!("a change before the destination was opened, or in a dry run"),
        }
    }
}

/// What the peer did wrong, as the sans-IO cores (`intake`, [`recipe`])
/// say it: it ends the session as [`TransferError::PeerMisbehaved`], with
/// this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl From<Violation> for TransferError {
    fn from(v: Violation) -> Self {
        TransferError::PeerMisbehaved(v.0)
    }
}

fn violation(what: String) -> TransferError {
    TransferError::PeerMisbehaved(what)
}

fn listed(e: &Entry, index: u32, rel: Vec<u8>, is_new: bool) -> Listed {
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
        item: 0,
        hard: match e.link_to {
            None => Hard::None,
            Some(j) if j == index => Hard::First,
            Some(_) => Hard::Link,
        },
    }
}

/// A local operation on a file being received that failed: the file is
/// given up on ([`Receiver::abandon`], which names it as a [`FileError`]
/// and reads from the error's kind whether the disk is full).
///
/// [`FileError`]: crate::error::FileError
#[derive(Debug)]
pub(super) struct Failed(pub FileOp, pub std::io::Error);

fn write_error(e: std::io::Error) -> Failed {
    Failed(FileOp::Write, e)
}

impl<D: Destination> Receiver<'_, D> {
    fn send(&self, m: Message) -> Result<(), TransferError> {
        self.out.send(m)
    }

    fn run<R: Read>(
        &mut self,
        inbound: &mut Inbox<R>,
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
            if self.intake.is_done() && self.queue.is_empty() && self.in_flight.live() == 0 {
                break;
            }
            let msg = self.next(inbound)?;
            self.handle(msg)?;
            self.pump()?;
            self.acknowledge()?;
        }
        self.finish()?;
        self.send_settled()?;
        self.send(Message::Finish(self.summary))?;
        match self.next(inbound)? {
            Message::Bye => Ok(self.summary),
            Message::Fatal(t) => Err(TransferError::Remote(text(&t))),
            other => Err(violation(format!("sent {} instead of Bye", other.name()))),
        }
    }

    fn handle(&mut self, msg: Message) -> Result<(), TransferError> {
        match msg {
            Message::Entry(e) => {
                self.intake.before_entry()?;
                self.entry(e)
            }
            Message::ListEnd { io_error } => {
                self.intake.end()?;
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
            Message::Hole { file, offset, len } => self.hole(file, offset, len),
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
            // a file's `Data` stream ends with it (its segments' streams
            // are left to age out: a segmented file's `FileEnd` may be read
            // before another connection's last blocks of its segments, which
            // the receiver then waits for)
            Message::RecipeEnd { file, size, hash } => {
                self.unpacker.close(|k| k == (file, u64::MAX));
                self.recipe_end(file, size, hash)
            }
            Message::FileEnd { file, size, hash } => {
                self.unpacker.close(|k| k == (file, u64::MAX));
                self.file_end(file, size, hash)
            }
            Message::FileFailed { file, reason } => {
                self.unpacker.close(|k| k == (file, u64::MAX));
                let state = self
                    .in_flight
                    .remove(file)
                    .filter(|s| !matches!(s, Incoming::Ended))
                    .ok_or_else(|| {
                        violation(format!(
                            "reported a failure of file {file}, which was not requested"
                        ))
                    })?;
                self.drop_state(state);
                self.progress.remove(&file);
                self.in_flight.insert(file, Incoming::Ended);
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
}
