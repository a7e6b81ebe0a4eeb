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
use super::{piece_range, pieces, PIECE};
use crate::chunk::ChunkHash;
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
    /// Per piece: its signed hash and signature once committed.
    committed: Vec<Option<([u8; 32], [u8; 64])>>,
    left: u32,
    published: bool,
}

struct State {
    dest: Dest,
    /// Old data (the files at the manifest's paths, or partial files) and
    /// where each of its chunks is: what a [`Msg::Ref`] names.
    bases: Vec<std::fs::File>,
    chunks: HashMap<ChunkHash, OldAt>,
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
    reports: VecDeque<Report>,
}

/// What a hop holds before any data comes: per file with old data the
/// BLAKE3 of each of its pieces, and the names of the old data's chunks
/// (with where each sits in place in a new file's temporary copy).
pub struct Held {
    pub pieces: Vec<(u32, Vec<[u8; 32]>)>,
    pub chunks: Vec<super::wire::OldChunk>,
}

/// Where an old chunk is: its basis (an index into `State::bases`), offset
/// and length there, and whether the new file's temporary copy holds it at
/// the same offset (the basis is that file's own old data, and the chunk
/// lies in the whole pieces copied from it): then (that file, offset).
#[derive(Debug, Clone, Copy)]
struct OldAt {
    basis: usize,
    offset: u64,
    len: u32,
    in_place: Option<u32>,
}

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
}

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
    /// path). Returns the hop and what it holds already: per file with old
    /// data its piece hashes, and the names of the old data's chunks.
    pub fn start(
        ticket: Ticket,
        ticket_bytes: Vec<u8>,
        index: usize,
        manifest: Manifest,
        mut dest: Dest,
    ) -> Result<(Hop, Held), String> {
        let mut files = HashMap::new();
        let mut have = Vec::new();
        let mut bases = Vec::new();
        let mut chunks = HashMap::new();
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
                    if let Some(b) = basis {
                        let hashes = copy_basis(&b, &mut temp, e.size)
                            .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                        // the temporary copy holds the old bytes up to here
                        let copied = (hashes.len() as u64 * PIECE).min(e.size);
                        if !hashes.is_empty() {
                            have.push((i as u32, hashes));
                        }
                        index_chunks(&b, bases.len(), (i as u32, copied), &mut chunks)
                            .map_err(|x| format!("{shown}: {}", io_text(&x)))?;
                        bases.push(b);
                    }
                    files.insert(
                        i as u32,
                        FileState {
                            temp: Some(temp),
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
            ticket,
            ticket_bytes,
            index,
            manifest,
            state: Mutex::new(State {
                dest,
                bases,
                chunks,
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
        let names = lock(&hop.state)
            .chunks
            .iter()
            .map(|(name, at)| (*name, at.in_place.map(|f| (f, at.offset))))
            .collect();
        Ok((
            hop,
            Held {
                pieces: have,
                chunks: names,
            },
        ))
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
            ..
        }) = s.chunks.get(chunk)
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

    /// A new upstream connection: the old one (if any) is shut so its
    /// reader ends. Returns this upstream's generation.
    pub fn new_upstream(&self, sock: Option<TcpStream>) -> u64 {
        let mut s = lock(&self.state);
        if let Some(old) = s.upstream_sock.take() {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        s.upstream_gen += 1;
        s.upstream_sock = sock;
        s.upstream_gen
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

    /// The source has sent everything.
    pub fn saw_end(&self) {
        lock(&self.state).end_seen = true;
    }

    /// Whether every file is published; the first time it is, the
    /// directories get their metadata and `--delete` runs.
    pub fn complete(&self) -> Result<bool, String> {
        let mut s = lock(&self.state);
        if s.finished {
            return Ok(true);
        }
        if !s.end_seen || s.files.values().any(|f| !f.published) {
            return Ok(false);
        }
        s.finished = true;
        if self.manifest.delete {
            let keep: HashSet<&[u8]> = self.manifest.entries.iter().map(|e| &e.path[..]).collect();
            delete_extra(&mut s.dest, b".", &keep)
                .map_err(|x| format!("--delete: {}", io_text(&x)))?;
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
                Kind::Link => s.dest.set_link_meta(&e.path, &Meta { mode: None, ..meta }),
                Kind::File => Ok(()),
            };
            r.map_err(|x| format!("{}: {}", s.dest.show(&e.path), io_text(&x)))?;
        }
        Ok(true)
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

/// Removes, beneath `dir`, what the manifest does not name.
fn delete_extra(dest: &mut Dest, dir: &[u8], keep: &HashSet<&[u8]>) -> io::Result<()> {
    for (name, is_dir) in dest.list(dir)? {
        if name == crate::fs::PARTIAL_DIR {
            continue;
        }
        let rel = if dir == b"." {
            name.clone()
        } else {
            [dir, b"/", &name].concat()
        };
        if !keep.contains(&rel[..]) {
            dest.remove(&rel, None)?;
        } else if is_dir {
            delete_extra(dest, &rel, keep)?;
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

/// Copies the old data's whole pieces into the new temporary file, returning
/// each copied piece's hash (the pieces upstream need not send if they match).
fn copy_basis(basis: &std::fs::File, temp: &mut TempFile, size: u64) -> io::Result<Vec<[u8; 32]>> {
    use std::os::unix::fs::FileExt;
    let len = basis.metadata()?.len().min(size);
    let mut out = Vec::new();
    let mut buf = vec![0u8; super::FRAME];
    for p in 0..pieces(size) {
        let (a, b) = piece_range(size, p);
        if b > len {
            break;
        }
        let mut h = blake3::Hasher::new();
        let mut at = a;
        while at < b {
            let n = ((b - at) as usize).min(buf.len());
            basis.read_exact_at(&mut buf[..n], at)?;
            temp.file.write_all_at(&buf[..n], at)?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        out.push(*h.finalize().as_bytes());
    }
    Ok(out)
}

/// Indexes the content-defined chunks of old data `b`, which the temporary
/// copy of file `copy.0` holds in place up to `copy.1`.
fn index_chunks(
    basis: &std::fs::File,
    b: usize,
    copy: (u32, u64),
    into: &mut HashMap<ChunkHash, OldAt>,
) -> io::Result<()> {
    let mut c = crate::chunk::Chunker::chunks_only(basis);
    while let Some((chunk, _)) = c.next_chunk()? {
        let end = chunk.offset + chunk.len as u64;
        into.entry(chunk.hash).or_insert(OldAt {
            basis: b,
            offset: chunk.offset,
            len: chunk.len,
            in_place: (end <= copy.1).then_some(copy.0),
        });
    }
    Ok(())
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
