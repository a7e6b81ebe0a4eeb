//! One destination's share of a fan-out job: the pieces it receives are
//! written into temporary files, checked against the source's signed hashes
//! as they now are on disk, committed, and each file published (fsync,
//! rename) once all its pieces are committed. It serves committed pieces
//! again to its successor ([`super::relay::Pieces`]).
//!
//! Not for connections (the daemon's `server::fanout` feeds it messages),
//! nor for deciding whom to forward to ([`super::relay`]).
//!
//! # Security
//! Every file index, offset and length from upstream is checked against the
//! manifest before anything is written; a piece is committed only when the
//! bytes on disk hash to a value the ticket's signer signed for exactly this
//! job, file and piece. Names come from the signed manifest and are resolved
//! beneath the destination's directory handle without following symlinks.

use super::manifest::{Kind, Manifest};
use super::relay::{Fwd, Pieces, Report};
use super::ticket::{piece_signed, Ticket};
use super::wire::{Msg, StreamPos};
use super::{piece_range, pieces, PIECE, WINDOW};
use crate::chunk::{ChunkHash, MAX_CHUNK};
use crate::fs::dest::{Dest, Meta, TempFile};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Frames queued between the upstream reader and the forwarder: the memory
/// a hop holds in flight (at most this many frames of [`super::FRAME`]).
pub const QUEUE: usize = 16;

struct FileState {
    temp: Option<TempFile>,
    /// The old data the temporary copy started from, if any.
    old: Option<Old>,
    /// Per piece: its signed hash and signature once committed.
    committed: Vec<Option<([u8; 32], [u8; 64])>>,
    left: u32,
    published: bool,
}

struct State {
    dest: Dest,
    /// Old data (the files at the manifest's paths, or partial files).
    bases: Vec<Arc<std::fs::File>>,
    /// The chunks of old data near the pieces of each window the source
    /// asked about and the live stream has not passed yet (what a
    /// `Msg::Ref` names), oldest first, at most [`WINDOWS_HELD`].
    windows: VecDeque<OldWindow>,
    /// The live stream has brought everything before this (file, piece).
    passed: (u32, u32),
    /// How far the live stream has been taken (written and handed to the
    /// forwarder): what a new predecessor replays from ([`Msg::Have`]).
    live: StreamPos,
    files: HashMap<u32, FileState>,
    received: u64,
    committed_bytes: u64,
    refused: u32,
    /// Piece ends handled (acknowledged upstream as progress).
    handled: u64,
    end_seen: bool,
    finished: bool,
    error: Option<String>,
    upstream_gen: u64,
    upstream_sock: Option<TcpStream>,
    /// The current upstream's writer (what this hop tells its predecessor),
    /// to tell it [`Msg::Fed`] when another host takes its place.
    upstream_writer: Option<Upstream>,
    reports: VecDeque<Report>,
}

/// A file's old data: its basis (an index into `State::bases`), its length,
/// and how much of it the temporary copy holds in place (its whole pieces,
/// copied at the start).
#[derive(Debug, Clone, Copy)]
struct Old {
    basis: usize,
    len: u64,
    copied: u64,
}

/// Where an old chunk is: its basis (an index into `State::bases`), offset
/// and length there.
#[derive(Debug, Clone, Copy)]
struct OldAt {
    basis: usize,
    offset: u64,
    len: u32,
}

/// The chunks of old data indexed for one window the source asked about,
/// kept until the live stream passes `end` (its last piece's next position).
struct OldWindow {
    end: (u32, u32),
    chunks: HashMap<ChunkHash, OldAt>,
}

/// Windows a hop keeps indexed at once: it answers the source's next
/// question only when the live stream has passed the oldest, so that the
/// index never holds more than this many windows whatever the file's size
/// (and a source never reads more than this many windows ahead of the
/// slowest host of the chain that is on the live stream).
pub const WINDOWS_HELD: usize = 4;

/// What a chunk reference costs on the wire, counted as received.
const REF_COST: u64 = 40;

/// Who is at fault when a piece cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Upstream sent what the job does not allow.
    Peer(String),
    /// This host's disk failed.
    Local(String),
}

/// A job on one daemon.
pub struct Hop {
    pub ticket: Ticket,
    pub ticket_bytes: Vec<u8>,
    pub index: usize,
    pub manifest: Manifest,
    state: Mutex<State>,
    forward: SyncSender<Fwd>,
    forward_rx: Mutex<Option<Receiver<Fwd>>>,
    cancelled: AtomicBool,
    /// The chain's order as the source last said it (ticket positions).
    pub order: Arc<Mutex<Vec<usize>>>,
    /// Hosts moved to the tail, fed from the committed copy.
    pub moved: Arc<Mutex<std::collections::HashSet<usize>>>,
    /// The forwarder feeds a moved successor from disk: [`Hop::forward`]
    /// then keeps only piece ends (in `feed`) instead of queueing frames.
    feeding: AtomicBool,
    feed: Mutex<(Vec<(u32, u32)>, bool)>,
    /// Time the forwarder spent blocked sending downstream (µs).
    pub blocked: Arc<std::sync::atomic::AtomicU64>,
    /// Held while one message from upstream is taken (written, handed to
    /// the forwarder, counted in `live`), and by a new upstream while it
    /// reads `live`: the old upstream's reader may be blocked handing a
    /// frame on when the new one opens, and that frame must be counted in
    /// the position the new predecessor replays from, and queued before
    /// the replay (see [`Hop::intake`]).
    intake: Mutex<()>,
}

/// The writer a hop answers its upstream on (acks, NACKs, done), shared by
/// the relay's threads.
pub type Upstream = Arc<Mutex<crate::transport::tls::TlsWriter>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_text(e: &io::Error) -> String {
    crate::error::io_text(e)
}

impl Hop {
    /// Opens the destination (`dest`, made if missing), makes the manifest's
    /// directories and symlinks, and finds the old data each file can start
    /// from (a partial file an interrupted job left, or the file at its
    /// path), copying its whole pieces into the new temporary file. Returns
    /// the hop and the files whose temporary copy starts so (what they hold
    /// is told per window, when asked: [`Hop::hints`]).
    pub fn start(
        ticket: Ticket,
        ticket_bytes: Vec<u8>,
        index: usize,
        manifest: Manifest,
        mut dest: Dest,
    ) -> Result<(Hop, Vec<u32>), String> {
        let mut files = HashMap::new();
        let mut with_old = Vec::new();
        let mut bases = Vec::new();
        for (i, e) in manifest.entries.iter().enumerate() {
            let shown = dest.show(&e.path);
            match e.kind {
                Kind::Dir if e.path != b"." => match dest.mkdir(&e.path, 0o755) {
                    Ok(()) => {}
                    Err(x) if x.kind() == io::ErrorKind::AlreadyExists => {
                        if dest.stat(&e.path).ok().flatten().map(|s| s.kind)
                            != Some(crate::fs::dest::ExistingKind::Dir)
                        {
                            dest.remove(&e.path, None)
                                .and_then(|()| dest.mkdir(&e.path, 0o755))
                                .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                        }
                    }
                    Err(x) => return Err(format!("{shown}: {}", io_text(&x))),
                },
                Kind::Dir => {}
                Kind::Link if e.target.is_empty() => {} // the module refuses it
                Kind::Link => dest
                    .symlink(&e.path, &e.target)
                    .map_err(|x| format!("{shown}: {}", io_text(&x)))?,
                Kind::File => {
                    let n = pieces(e.size);
                    let basis = dest
                        .open_partial(&e.path)
                        .or_else(|| dest.open_file(&e.path).ok());
                    let mut temp = dest
                        .create_temp(&e.path, true, false, false)
                        .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                    temp.file
                        .set_len(e.size)
                        .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                    let mut old = None;
                    if let Some(b) = basis {
                        // the temporary copy holds the old bytes up to here
                        let (len, copied) = copy_basis(&b, &mut temp, e.size)
                            .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                        if len > 0 {
                            with_old.push(i as u32);
                            old = Some(Old {
                                basis: bases.len(),
                                len,
                                copied,
                            });
                            bases.push(Arc::new(b));
                        }
                    }
                    files.insert(
                        i as u32,
                        FileState {
                            temp: Some(temp),
                            old,
                            committed: vec![None; n as usize],
                            left: n,
                            published: false,
                        },
                    );
                }
            }
        }
        let (forward, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let order = (0..ticket.hosts.len()).collect();
        let hop = Hop {
            order: Arc::new(Mutex::new(order)),
            moved: Default::default(),
            feeding: AtomicBool::new(false),
            feed: Mutex::new((Vec::new(), false)),
            blocked: Default::default(),
            intake: Mutex::new(()),
            ticket,
            ticket_bytes,
            index,
            manifest,
            state: Mutex::new(State {
                dest,
                bases,
                windows: VecDeque::new(),
                passed: (0, 0),
                live: StreamPos::default(),
                files,
                received: 0,
                committed_bytes: 0,
                refused: 0,
                handled: 0,
                end_seen: false,
                finished: false,
                error: None,
                upstream_gen: 0,
                upstream_sock: None,
                upstream_writer: None,
                reports: VecDeque::new(),
            }),
            forward,
            forward_rx: Mutex::new(Some(rx)),
            cancelled: AtomicBool::new(false),
        };
        // files of no bytes are complete already
        let empty: Vec<u32> = lock(&hop.state)
            .files
            .iter()
            .filter(|(_, f)| f.left == 0)
            .map(|(&i, _)| i)
            .collect();
        for i in empty {
            hop.publish(&mut lock(&hop.state), i)?;
        }
        Ok((hop, with_old))
    }

    /// Answers the source's [`Msg::Ask`](super::wire::Msg::Ask) for window
    /// `window`: per asked piece whose temporary copy holds old data, its
    /// BLAKE3; and the chunks of each file's old data from a margin before
    /// its asked pieces to a margin after them (the margin: the run's own
    /// length, at most one piece), indexed for the chunk references to come.
    /// Waits first until fewer than [`WINDOWS_HELD`] windows are held (the
    /// live stream passes the oldest); `None` if the job ends meanwhile.
    ///
    /// So the index holds at most `WINDOWS_HELD` windows of at most
    /// [`WINDOW`] bytes of new data each, every byte indexed against at most
    /// three of old data: at most 96 MiB of old data, ~24,600 chunks of 4
    /// KiB or more, a few MB, whatever the files' sizes. A chunk that moved
    /// further than the margin, or into another file, is not found (it is
    /// sent again).
    pub fn hints(&self, window: u32, runs: &[(u32, u32, u32)]) -> Result<Option<Msg>, Fault> {
        // what was asked: files of the manifest, pieces they have, in order,
        // within one window
        let mut bytes = 0u64;
        let mut count = 0usize;
        let mut last: Option<(u32, u32)> = None;
        for &(file, first, n) in runs {
            let size = self.size_of(file).map_err(Fault::Peer)?;
            let end = first.checked_add(n).filter(|&e| n > 0 && e <= pieces(size));
            let Some(end) = end else {
                return Err(Fault::Peer(format!(
                    "asked about pieces {first}..{} of file {file}, which has {}",
                    first as u64 + n as u64,
                    pieces(size)
                )));
            };
            if last.is_some_and(|l| (file, first) <= l) {
                return Err(Fault::Peer("asked about pieces out of order".into()));
            }
            last = Some((file, end - 1));
            bytes += piece_range(size, end - 1).1 - piece_range(size, first).0;
            count += n as usize;
        }
        if bytes > WINDOW || count > super::wire::MAX_ASK {
            return Err(Fault::Peer(format!(
                "asked about {count} pieces, {bytes} bytes at once"
            )));
        }
        let Some(last) = last else {
            return Ok(Some(Msg::Hints {
                window,
                pieces: Vec::new(),
                chunks: Vec::new(),
            }));
        };
        // room for one more window
        loop {
            if self.is_cancelled() {
                return Ok(None);
            }
            if lock(&self.state).windows.len() < WINDOWS_HELD {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // what to read, taken under the lock, read without it
        let todo: Vec<(u32, u32, u32, Old, Arc<std::fs::File>)> = {
            let s = lock(&self.state);
            // a window the live stream passed already (the source gave up
            // waiting and sent it whole) is answered empty, unread: reading
            // and indexing each late window would only put this hop further
            // behind, window after window, until its queue of questions
            // overflowed
            if s.passed >= (last.0, last.1 + 1) {
                return Ok(Some(Msg::Hints {
                    window,
                    pieces: Vec::new(),
                    chunks: Vec::new(),
                }));
            }
            runs.iter()
                .filter_map(|&(file, first, n)| {
                    let old = s.files.get(&file)?.old?;
                    Some((file, first, n, old, s.bases[old.basis].clone()))
                })
                .collect()
        };
        let mut chunks: HashMap<ChunkHash, OldAt> = HashMap::new();
        let mut names = Vec::new();
        let mut hashes = Vec::new();
        for (file, first, n, old, basis) in todo {
            let size = self.size_of(file).map_err(Fault::Peer)?;
            let a = piece_range(size, first).0;
            let b = piece_range(size, first + n - 1).1;
            let margin = (b - a).min(PIECE);
            let from = a.saturating_sub(margin).min(old.len);
            let to = (b + margin).min(old.len);
            // the pieces the temporary copy holds in place, hashed as read
            let mut span = Span {
                file: &basis,
                at: from,
                end: (to + MAX_CHUNK as u64).min(old.len),
                pieces: (first..first + n)
                    .map(|p| (p, piece_range(size, p)))
                    .filter(|&(_, (_, pb))| pb <= old.copied)
                    .map(|(p, (pa, pb))| (p, pa, pb, blake3::Hasher::new()))
                    .collect(),
            };
            let read_old =
                |e: io::Error| Fault::Local(format!("reading old data: {}", io_text(&e)));
            {
                let mut c = crate::chunk::Chunker::chunks_only(&mut span);
                while let Some((chunk, _)) = c.next_chunk().map_err(read_old)? {
                    let at = from + chunk.offset;
                    if at >= to {
                        break;
                    }
                    if let std::collections::hash_map::Entry::Vacant(v) = chunks.entry(chunk.hash) {
                        let end = at + chunk.len as u64;
                        v.insert(OldAt {
                            basis: old.basis,
                            offset: at,
                            len: chunk.len,
                        });
                        names.push((chunk.hash, (end <= old.copied).then_some((file, at))));
                    }
                }
            }
            let b_hashed = span.pieces.last().map_or(0, |p| p.2);
            span.read_to(b_hashed).map_err(read_old)?;
            for (p, _, _, h) in span.pieces {
                hashes.push((file, p, *h.finalize().as_bytes()));
            }
        }
        let mut s = lock(&self.state);
        let end = (last.0, last.1 + 1);
        // a window the live stream passed already (the source went on
        // without this answer) is not kept
        if s.passed < end {
            s.windows.push_back(OldWindow { end, chunks });
        }
        Ok(Some(Msg::Hints {
            window,
            pieces: hashes,
            chunks: names,
        }))
    }

    /// The live stream (not a re-sent piece) has reached `file`'s `piece`
    /// (`ended`: and has ended it): the windows before that are dropped.
    pub fn passed(&self, file: u32, piece: u32, ended: bool) {
        let pos = (file, piece.saturating_add(ended as u32));
        let mut s = lock(&self.state);
        if pos > s.passed {
            s.passed = pos;
            while s.windows.front().is_some_and(|w| w.end <= pos) {
                s.windows.pop_front();
            }
        }
    }

    /// Writes bytes of an old chunk; an unknown chunk writes nothing (the
    /// piece's check will fail and ask for the bytes).
    pub fn copy_chunk(
        &self,
        file: u32,
        offset: u64,
        len: u32,
        skip: u32,
        chunk: &ChunkHash,
    ) -> Result<(), Fault> {
        use std::os::unix::fs::FileExt;
        let size = self.size_of(file).map_err(Fault::Peer)?;
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(Fault::Peer(format!(
                "named bytes past the end of file {file}"
            )));
        }
        let mut s = lock(&self.state);
        s.received += REF_COST;
        let Some(&OldAt {
            basis: b,
            offset: at,
            len: clen,
        }) = s.windows.iter().find_map(|w| w.chunks.get(chunk))
        else {
            return Ok(());
        };
        if skip as u64 + len as u64 > clen as u64 {
            return Ok(());
        }
        let piece = (offset / PIECE) as usize;
        let f = s.files.get(&file).expect("a file of the manifest");
        if f.committed.get(piece).is_some_and(|c| c.is_some()) || f.temp.is_none() {
            return Ok(());
        }
        let mut buf = vec![0u8; len as usize];
        s.bases[b]
            .read_exact_at(&mut buf, at + skip as u64)
            .map_err(|e| Fault::Local(format!("reading old data: {}", io_text(&e))))?;
        let t = s
            .files
            .get(&file)
            .and_then(|f| f.temp.as_ref())
            .expect("checked");
        t.file
            .write_all_at(&buf, offset)
            .map_err(|e| Fault::Local(format!("writing: {}", io_text(&e))))
    }

    /// The queue the forwarder takes (once).
    pub fn take_forward(&self) -> Option<Receiver<Fwd>> {
        lock(&self.forward_rx).take()
    }

    /// A new upstream connection (its socket, and the writer this hop
    /// answers it on): the old one (if any) is told that another host feeds
    /// this one now ([`Msg::Fed`]), then shut so its reader ends. Returns
    /// this upstream's generation.
    ///
    /// Without the word, the old upstream saw only a cut link, as from a
    /// dead host: if its own new order came late (after its wait), it
    /// reported this healthy host bypassed and linked to the host after
    /// it, cutting that host's healthy link in turn, whose upstream's
    /// report then matched the order, and a healthy host ended missed.
    pub fn new_upstream(&self, sock: Option<TcpStream>, writer: Option<Upstream>) -> u64 {
        let (old_sock, old_writer, gen) = {
            let mut s = lock(&self.state);
            s.upstream_gen += 1;
            let old = (s.upstream_sock.take(), s.upstream_writer.take());
            s.upstream_sock = sock;
            s.upstream_writer = writer;
            (old.0, old.1, s.upstream_gen)
        };
        // (outside the state lock, as this can wait: for the writer's lock,
        // which the old link's heartbeat thread may hold mid-write, and, if
        // the old upstream stopped reading and the socket's buffer is full,
        // for room for the record (a TLS record, at least 22 bytes); no write
        // timeout bounds that here)
        if let Some(w) = old_writer {
            let _ = super::wire::send_now(&mut *lock(&w), &Msg::Fed);
        }
        if let Some(old) = old_sock {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        gen
    }

    pub fn is_current(&self, gen: u64) -> bool {
        lock(&self.state).upstream_gen == gen && !self.is_cancelled()
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let mut s = lock(&self.state);
        if let Some(old) = s.upstream_sock.take() {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Taking one message from upstream, or reading where the live stream
    /// stands for a new upstream: one at a time. A reader checks that its
    /// upstream is still the current one while it holds this.
    pub fn intake(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.intake)
    }

    /// Live bytes `offset..offset + len` of `file` (a data frame or a
    /// chunk reference) were taken.
    pub fn took_data(&self, file: u32, offset: u64, len: u64) {
        let mut s = lock(&self.state);
        s.live = s.live.max(StreamPos {
            file,
            piece: (offset / PIECE) as u32,
            offset: offset + len,
        });
    }

    /// The live end of `file`'s `piece` was taken: the stream stands at the
    /// next piece's start.
    pub fn took_end(&self, file: u32, piece: u32) {
        let end = piece_range(self.size_of(file).unwrap_or(0), piece).1;
        let mut s = lock(&self.state);
        s.live = s.live.max(StreamPos {
            file,
            piece: piece.saturating_add(1),
            offset: end,
        });
    }

    /// How far the live stream has been taken.
    pub fn stream_pos(&self) -> StreamPos {
        lock(&self.state).live
    }

    /// Per file, a bitmap of committed pieces (what a new predecessor need
    /// not send).
    pub fn have(&self) -> Vec<(u32, Vec<u8>)> {
        let s = lock(&self.state);
        let mut out: Vec<(u32, Vec<u8>)> = s
            .files
            .iter()
            .map(|(&i, f)| {
                let mut bits = vec![0u8; f.committed.len().div_ceil(8)];
                for (p, c) in f.committed.iter().enumerate() {
                    if c.is_some() {
                        bits[p / 8] |= 1 << (p % 8);
                    }
                }
                (i, bits)
            })
            .collect();
        out.sort_by_key(|x| x.0);
        out
    }

    /// Writes bytes from upstream; `Err` names what was wrong with them.
    pub fn write(&self, file: u32, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let mut s = lock(&self.state);
        let size = self.size_of(file)?;
        if offset
            .checked_add(bytes.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(format!("sent bytes past the end of file {file}"));
        }
        s.received += bytes.len() as u64;
        let f = s.files.get_mut(&file).expect("a file of the manifest");
        let piece = (offset / PIECE) as usize;
        if f.committed.get(piece).is_some_and(|c| c.is_some()) {
            return Ok(()); // have it already, verified
        }
        if let Some(t) = f.temp.as_mut() {
            t.file
                .write_all_at_offset(bytes, offset)
                .map_err(|e| format!("writing: {}", io_text(&e)))?;
        }
        Ok(())
    }

    fn size_of(&self, file: u32) -> Result<u64, String> {
        match self.manifest.entries.get(file as usize) {
            Some(e) if e.kind == Kind::File => Ok(e.size),
            _ => Err(format!("named file {file}, which the manifest has not")),
        }
    }

    /// The end of a piece: checks the bytes on disk against the signed hash.
    /// `Ok(true)`: committed (or held already); `Ok(false)`: refused (ask
    /// again); `Err`: the peer or the disk failed.
    pub fn finish_piece(
        &self,
        file: u32,
        piece: u32,
        hash: &[u8; 32],
        sig: &[u8; 64],
    ) -> Result<bool, Fault> {
        let size = self.size_of(file).map_err(Fault::Peer)?;
        if piece >= pieces(size) {
            return Err(Fault::Peer(format!(
                "ended piece {piece} of file {file}, which has not so many"
            )));
        }
        if !piece_signed(
            &self.ticket.signer,
            &self.ticket.job,
            file,
            piece,
            hash,
            sig,
        ) {
            return Err(Fault::Peer(format!(
                "sent piece {piece} of file {file} without the source's signature"
            )));
        }
        let mut s = lock(&self.state);
        s.handled += 1;
        let f = s.files.get_mut(&file).expect("a file of the manifest");
        if f.committed[piece as usize].is_some() {
            return Ok(true);
        }
        let Some(t) = f.temp.as_ref() else {
            return Ok(true);
        };
        let (a, b) = piece_range(size, piece);
        let got = hash_range(&t.file, a, b)
            .map_err(|e| Fault::Local(format!("reading back: {}", io_text(&e))))?;
        if &got != hash {
            s.refused += 1;
            return Ok(false);
        }
        f.committed[piece as usize] = Some((*hash, *sig));
        f.left -= 1;
        let done = f.left == 0;
        s.committed_bytes += b - a;
        if done {
            self.publish(&mut s, file).map_err(Fault::Local)?;
        }
        Ok(true)
    }

    fn publish(&self, s: &mut State, file: u32) -> Result<(), String> {
        let e = &self.manifest.entries[file as usize];
        let f = s.files.get_mut(&file).expect("a file of the manifest");
        let Some(mut temp) = f.temp.take() else {
            return Ok(());
        };
        f.published = true;
        let meta = Meta {
            mode: Some(if self.manifest.perms { e.mode } else { 0o644 }),
            mtime: self.manifest.times.then_some((e.mtime, e.mtime_ns)),
            uid: None,
            gid: None,
        };
        let shown = s.dest.show(&e.path);
        temp.finish(&meta, true)
            .and_then(|()| s.dest.publish(temp, &e.path, None))
            .map_err(|x| format!("{shown}: {}", io_text(&x)))
    }

    /// Pieces not committed, per file (what to ask for after the end).
    pub fn missing(&self) -> Vec<(u32, u32)> {
        let s = lock(&self.state);
        let mut out = Vec::new();
        for (&i, f) in &s.files {
            for (p, c) in f.committed.iter().enumerate() {
                if c.is_none() {
                    out.push((i, p as u32));
                }
            }
        }
        out.sort();
        out
    }

    /// The source has sent everything: no chunk will be named any more.
    pub fn saw_end(&self) {
        let mut s = lock(&self.state);
        s.end_seen = true;
        s.windows.clear();
    }

    /// Whether every file is published; the first time it is, the
    /// directories get their metadata and `--delete` runs.
    pub fn complete(&self) -> Result<bool, String> {
        let mut s = lock(&self.state);
        if s.finished {
            // (a failed finish stays failed: not "done" on the next call)
            return s.error.clone().map_or(Ok(true), Err);
        }
        if !s.end_seen || s.files.values().any(|f| !f.published) {
            return Ok(false);
        }
        s.finished = true;
        // what fails from here on is the hop's error: a later call would
        // find it finished and report it done
        let finished = self.finish(&mut s);
        if let Err(why) = &finished {
            s.error.get_or_insert(why.clone());
        }
        finished.map(|()| true)
    }

    /// `--delete`, then the directories' and links' metadata (deepest first).
    fn finish(&self, s: &mut State) -> Result<(), String> {
        if self.manifest.delete {
            let keep: HashSet<&[u8]> = self.manifest.entries.iter().map(|e| &e.path[..]).collect();
            delete_extra(&mut s.dest, &keep).map_err(|x| format!("--delete: {}", io_text(&x)))?;
        }
        // before the directories get their mtimes: removing changes them
        for e in &self.manifest.entries {
            if e.kind == Kind::Dir {
                s.dest.remove_partial_dir(&e.path);
            }
        }
        for e in self.manifest.entries.iter().rev() {
            let meta = Meta {
                mode: self.manifest.perms.then_some(e.mode),
                mtime: self.manifest.times.then_some((e.mtime, e.mtime_ns)),
                uid: None,
                gid: None,
            };
            let r = match e.kind {
                Kind::Dir => s.dest.set_dir_meta(&e.path, &meta),
                Kind::Link if e.target.is_empty() => Ok(()), // refused: not made
                Kind::Link => s.dest.set_link_meta(&e.path, &Meta { mode: None, ..meta }),
                Kind::File => Ok(()),
            };
            r.map_err(|x| format!("{}: {}", s.dest.show(&e.path), io_text(&x)))?;
        }
        Ok(())
    }

    /// (bytes received, bytes committed, pieces refused, piece ends handled)
    pub fn counts(&self) -> (u64, u64, u32, u64) {
        let s = lock(&self.state);
        (s.received, s.committed_bytes, s.refused, s.handled)
    }

    pub fn fail(&self, why: String) {
        lock(&self.state).error.get_or_insert(why);
    }

    pub fn error(&self) -> Option<String> {
        lock(&self.state).error.clone()
    }

    pub fn forward(&self, m: Fwd) -> bool {
        if self.feeding.load(Ordering::SeqCst) {
            let mut f = lock(&self.feed);
            match m {
                Fwd::PieceEnd { file, piece, .. } | Fwd::Committed { file, piece } => {
                    f.0.push((file, piece))
                }
                Fwd::End => f.1 = true,
                _ => {}
            }
            return true;
        }
        self.forward.send(m).is_ok()
    }

    pub fn take_reports(&self) -> Vec<Report> {
        lock(&self.state).reports.drain(..).collect()
    }
}

/// Removes what the manifest does not name beneath the destination. The
/// directories it names are visited from a list of those still to visit,
/// not by recursion (a tree 1,000 directories deep needs no deep stack),
/// each resolved by [`Dest`]; a stale one is removed whole by
/// [`Dest::remove`], with a bounded number of descriptors whatever its
/// depth.
fn delete_extra(dest: &mut Dest, keep: &HashSet<&[u8]>) -> io::Result<()> {
    let mut dirs: Vec<Vec<u8>> = vec![b".".to_vec()];
    while let Some(dir) = dirs.pop() {
        for (name, is_dir) in dest.list(&dir)? {
            if name == crate::fs::PARTIAL_DIR {
                continue;
            }
            let rel = if dir == b"." {
                name
            } else {
                [&dir[..], b"/", &name].concat()
            };
            if !keep.contains(&rel[..]) {
                dest.remove(&rel, None)?;
            } else if is_dir {
                dirs.push(rel);
            }
        }
    }
    Ok(())
}

/// BLAKE3 of bytes `a..b` of `file`, read in frames.
pub fn hash_range(file: &std::fs::File, a: u64, b: u64) -> io::Result<[u8; 32]> {
    use std::os::unix::fs::FileExt;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; super::FRAME];
    let mut at = a;
    while at < b {
        let n = ((b - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// Copies the old data's whole pieces into the new temporary file; returns
/// the old data's length and how far the copy reaches (its whole pieces).
fn copy_basis(basis: &std::fs::File, temp: &mut TempFile, size: u64) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let len = basis.metadata()?.len();
    let mut buf = vec![0u8; super::FRAME];
    let mut copied = 0;
    for p in 0..pieces(size) {
        let (a, b) = piece_range(size, p);
        if b > len {
            break;
        }
        let mut at = a;
        while at < b {
            let n = ((b - at) as usize).min(buf.len());
            basis.read_exact_at(&mut buf[..n], at)?;
            temp.file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        copied = b;
    }
    Ok((len, copied))
}

/// Old data read from `at` to `end` in order (for the chunker), hashing the
/// whole pieces in `pieces` (number, start, end, hash so far) as it goes.
struct Span<'a> {
    file: &'a std::fs::File,
    at: u64,
    end: u64,
    pieces: Vec<(u32, u64, u64, blake3::Hasher)>,
}

impl io::Read for Span<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = ((self.end.saturating_sub(self.at)) as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let got = std::os::unix::fs::FileExt::read_at(self.file, &mut buf[..n], self.at)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the old data shrank while it was read",
            ));
        }
        let (a, b) = (self.at, self.at + got as u64);
        for (_, pa, pb, h) in &mut self.pieces {
            let (s, t) = (a.max(*pa), b.min(*pb));
            if s < t {
                h.update(&buf[(s - a) as usize..(t - a) as usize]);
            }
        }
        self.at = b;
        Ok(got)
    }
}

impl Span<'_> {
    /// Reads on (for the pieces' hashes) until `to`.
    fn read_to(&mut self, to: u64) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        while self.at < to.min(self.end) {
            let n = ((to - self.at) as usize).min(buf.len());
            io::Read::read(self, &mut buf[..n])?;
        }
        Ok(())
    }
}

trait WriteAt {
    fn write_all_at_offset(&self, b: &[u8], at: u64) -> io::Result<()>;
}
impl WriteAt for std::fs::File {
    fn write_all_at_offset(&self, b: &[u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, b, at)
    }
}

impl Pieces for Hop {
    fn signed(&self, file: u32, piece: u32) -> Option<([u8; 32], [u8; 64])> {
        lock(&self.state)
            .files
            .get(&file)?
            .committed
            .get(piece as usize)
            .copied()
            .flatten()
    }

    fn read(&self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = lock(&self.state);
        let f = s
            .files
            .get(&file)
            .ok_or_else(|| io::Error::other("no such file"))?;
        match &f.temp {
            Some(t) => std::os::unix::fs::FileExt::read_exact_at(&t.file, buf, offset),
            None => {
                drop(s);
                // published: read it at its path
                let e = &self.manifest.entries[file as usize];
                let mut s = lock(&self.state);
                let file = s.dest.open_file(&e.path)?;
                std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset)
            }
        }
    }

    fn size(&self, file: u32) -> u64 {
        self.size_of(file).unwrap_or(0)
    }

    fn sent_so_far(&self) -> Vec<(u32, u32)> {
        let s = lock(&self.state);
        let mut out = Vec::new();
        for (&i, f) in &s.files {
            for (p, c) in f.committed.iter().enumerate() {
                if c.is_some() {
                    out.push((i, p as u32));
                }
            }
        }
        out.sort();
        out
    }

    fn report(&self, r: Report) {
        lock(&self.state).reports.push_back(r);
    }

    fn unreadable(&self, file: u32, e: &io::Error) {
        let shown = match self.manifest.entries.get(file as usize) {
            Some(entry) => lock(&self.state).dest.show(&entry.path),
            None => format!("file {file}"),
        };
        self.fail(format!("{shown}: {}", io_text(e)));
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn set_feeding(&self, on: bool) {
        self.feeding.store(on, Ordering::SeqCst);
    }

    fn take_feed(&self) -> (Vec<(u32, u32)>, bool) {
        let mut f = lock(&self.feed);
        (std::mem::take(&mut f.0), std::mem::replace(&mut f.1, false))
    }
}

impl Hop {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::manifest::Entry;

    /// A hop over one file of `size` bytes whose old data (`old`) is at
    /// its path.
    fn hop_with_old(dir: &std::path::Path, old: &[u8], size: u64) -> (Hop, Vec<u32>) {
        std::fs::write(dir.join("f"), old).unwrap();
        let manifest = Manifest {
            entries: vec![Entry {
                path: b"f".to_vec(),
                kind: Kind::File,
                mode: 0o644,
                mtime: 0,
                mtime_ns: 0,
                size,
                target: Vec::new(),
            }],
            ..Default::default()
        };
        let ticket = Ticket {
            job: [1; 16],
            expires: i64::MAX,
            signer: [2; 32],
            hosts: Vec::new(),
            manifest_root: manifest.root(),
            stall_ms: 1000,
        };
        let dest = Dest::open(dir, false).unwrap();
        Hop::start(ticket, Vec::new(), 0, manifest, dest).unwrap()
    }

    fn old_data(n: usize) -> Vec<u8> {
        crate::chunk::tests::random(n, 0x9e37_79b9_7f4a_7c15)
    }

    /// The hop's memory bound: it holds at most [`WINDOWS_HELD`] windows
    /// indexed, and answers the next question only once the live stream
    /// has passed the oldest; what it tells is the old data's in-place
    /// pieces and chunks near the asked ones.
    #[test]
    fn a_hop_answers_a_window_only_with_room_and_tells_what_its_old_data_holds() {
        let d = tempfile::tempdir().unwrap();
        let n = WINDOWS_HELD as u32 + 1;
        let old = old_data((n as u64 * PIECE) as usize);
        let (hop, with_old) = hop_with_old(d.path(), &old, n as u64 * PIECE);
        assert_eq!(with_old, vec![0]);
        let hop = Arc::new(hop);
        for w in 0..WINDOWS_HELD as u32 {
            let Some(Msg::Hints { pieces, chunks, .. }) = hop.hints(w, &[(0, w, 1)]).unwrap()
            else {
                panic!("no hints");
            };
            let (a, b) = piece_range(n as u64 * PIECE, w);
            let hash = *blake3::hash(&old[a as usize..b as usize]).as_bytes();
            assert_eq!(pieces, vec![(0, w, hash)]);
            // in place: the old data's chunks where the copy holds them
            assert!(chunks.len() > (PIECE as usize / crate::chunk::MAX_CHUNK));
            assert!(chunks.iter().all(|(_, at)| at.is_some_and(|(f, _)| f == 0)));
        }
        // a fifth window waits until the live stream passes the first
        let (tx, rx) = std::sync::mpsc::channel();
        let h = hop.clone();
        std::thread::spawn(move || {
            let _ = tx.send(h.hints(WINDOWS_HELD as u32, &[(0, n - 1, 1)]));
        });
        let wait = std::time::Duration::from_millis(300);
        assert!(rx.recv_timeout(wait).is_err(), "answered with no room");
        hop.passed(0, 0, true);
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(Ok(Some(Msg::Hints { .. })))
        ));
        // asking about more than a window at once is the source's fault
        let d2 = tempfile::tempdir().unwrap();
        let big = 9 * PIECE;
        let (hop, _) = hop_with_old(d2.path(), b"old", big);
        assert!(matches!(hop.hints(0, &[(0, 0, 9)]), Err(Fault::Peer(_))));
        assert!(matches!(hop.hints(0, &[(0, 8, 2)]), Err(Fault::Peer(_))));
    }

    /// A window the live stream has passed (the source gave up waiting and
    /// sent it whole) is answered empty without reading the old data, and
    /// is not held: a hop late to answer does not fall further behind.
    #[test]
    fn a_window_the_stream_passed_is_answered_empty_and_not_held() {
        let d = tempfile::tempdir().unwrap();
        let old = old_data(3 * PIECE as usize);
        let (hop, _) = hop_with_old(d.path(), &old, 3 * PIECE);
        hop.passed(0, 2, false);
        let Some(Msg::Hints { pieces, chunks, .. }) = hop.hints(0, &[(0, 0, 2)]).unwrap() else {
            panic!("no hints");
        };
        assert!(pieces.is_empty() && chunks.is_empty());
        assert!(lock(&hop.state).windows.is_empty());
        // the piece ahead of the stream is still told
        let Some(Msg::Hints { pieces, .. }) = hop.hints(1, &[(0, 2, 1)]).unwrap() else {
            panic!("no hints");
        };
        assert_eq!(pieces.len(), 1);
    }
}
