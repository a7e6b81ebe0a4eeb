//! The forwarder: what a hop (or the source) runs toward the rest of the
//! chain. It dials the next host the ticket names, learns what that host has
//! committed and how far it has taken the live stream, replays the stream to
//! it from there (`replay`), re-sends older pieces it lacks from its own
//! committed copy, forwards the live stream frame by frame, answers NACKs
//! from its committed copy, and bypasses a successor that fails or goes
//! silent for the stall timeout (heartbeats come every [`HEARTBEAT`]) by
//! dialing the one after it. It follows the chain's order as the source last
//! set it (a slow host moved to the tail), and feeds a moved successor from
//! its committed copy, never from the live queue, so that a slow host never
//! holds the chain back.
//!
//! Not for receiving or verifying (that is [`super::hop`]); what it serves
//! again comes from [`Pieces`]: committed pieces only, but for a replay of
//! the live stream, whose piece still in progress is as unchecked as live
//! bytes are (the successor checks it at its end).

use super::connect::{dial, Dialed};
use super::ticket::Ticket;
use super::wire::{self, Msg, Purpose, StreamPos};
use super::{piece_range, FRAME, PIECE};
use crate::trust::key::Identity;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a downstream hop tells its predecessor it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Pieces of the live stream a forwarder remembers (where each ends so far,
/// and whether its end passed), to replay to a new successor from where it
/// stands: 256 MiB of stream, far more than is ever in flight between two
/// hosts (a queue of 4 MiB and two sockets' buffers); a successor further
/// behind gets the older pieces it lacks whole, re-sent.
const REPLAYED: usize = 64;

/// How long a forwarder whose successor cut the link waits for a new order
/// before it takes the cut for a failure (the source sends the steps of a
/// move 150 ms apart).
const REORDER: Duration = Duration::from_secs(1);

/// What flows from the upstream reader (or the source's reader) to the
/// forwarder.
#[derive(Debug)]
pub enum Fwd {
    Data {
        file: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Bytes of an old chunk every host downstream holds.
    Ref {
        file: u32,
        offset: u64,
        len: u32,
        skip: u32,
        chunk: [u8; 16],
    },
    PieceEnd {
        file: u32,
        piece: u32,
        hash: [u8; 32],
        sig: [u8; 64],
    },
    /// A piece committed here from a re-sent copy (never on the live
    /// stream): nothing to pass on live, but a successor fed from the
    /// committed copy (a host moved to the tail) may lack it. Without it a
    /// moved host, fed only re-sent pieces, never forwarded to a host moved
    /// after it.
    Committed {
        file: u32,
        piece: u32,
    },
    End,
}

/// What the forwarder tells the control side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The host at this index of the ticket was bypassed, and why.
    Bypassed { host: u32, why: String },
}

/// Where a forwarder finds pieces to serve again.
pub trait Pieces: Send + Sync {
    /// A committed piece's signed hash and signature (`None`: not committed
    /// here, so not to be served).
    fn signed(&self, file: u32, piece: u32) -> Option<([u8; 32], [u8; 64])>;
    /// Bytes of the file as held here: of a committed piece, or of the
    /// piece the live stream is in (written, not checked yet: only a
    /// replay of the live stream to a new successor reads those, which
    /// checks them as it checks any live bytes).
    fn read(&self, file: u32, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    fn size(&self, file: u32) -> u64;
    /// Pieces a new successor may lack: every piece committed here.
    fn sent_so_far(&self) -> Vec<(u32, u32)>;
    fn report(&self, r: Report);
    fn cancelled(&self) -> bool;
    /// The forwarder feeds a moved successor from the committed copy: the
    /// live queue must not wait for it (a hop then keeps only the ends of
    /// pieces, in [`take_feed`](Self::take_feed)).
    fn set_feeding(&self, _on: bool) {}
    /// Piece ends that came while feeding, and whether the end came.
    fn take_feed(&self) -> (Vec<(u32, u32)>, bool) {
        (Vec::new(), false)
    }
}

/// What the downstream reader and the watchdog share with the forwarder.
struct DownState {
    nacks: Mutex<VecDeque<(u32, u32)>>,
    done: AtomicBool,
    dead: Mutex<Option<String>>,
    last_heard: Mutex<Instant>,
    closed: AtomicBool,
    /// The successor said another host feeds it now ([`Msg::Fed`]): the cut
    /// is no failure of its.
    fed: AtomicBool,
}

struct Down {
    host: usize,
    writer: crate::transport::tls::TlsWriter,
    sock: std::net::TcpStream,
    state: Arc<DownState>,
    end_sent: bool,
    /// Frames not yet written: small messages (chunk references, piece
    /// ends) go out together, as one TLS record and one write, instead of
    /// a record and a packet each.
    out: Vec<u8>,
}

/// Frames gathered before they are written (a data frame, larger, goes out
/// at once).
const BATCH: usize = 64 << 10;

impl Down {
    /// Queues one message; writes the batch once it is full.
    fn send(&mut self, m: &Msg) -> Result<(), crate::error::TransferError> {
        wire::frame_into(&mut self.out, m);
        if self.out.len() >= BATCH {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes what is queued.
    fn flush(&mut self) -> Result<(), crate::error::TransferError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = std::io::Write::write_all(&mut self.writer, &self.out);
        self.out.clear();
        r.map_err(|e| crate::error::TransferError::connection(&e))
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        // a successor that finished gets a clean end (close_notify, as the
        // writer is dropped); one given up on is cut
        if !self.state.done.load(Ordering::SeqCst) {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The forwarder's settings.
pub struct Forwarder {
    pub ticket: Arc<Ticket>,
    /// Our own position in the ticket (`None`: the source, before all).
    pub me: Option<usize>,
    /// The chain's current order (ticket positions), which the source may
    /// change (a slow host moved to the tail); we forward to the host after
    /// us in it that has not failed us.
    pub order: Arc<Mutex<Vec<usize>>>,
    /// Hosts moved to the tail for being slow: fed from our committed copy,
    /// never from the live queue, so they cannot hold the chain back.
    pub moved: Arc<Mutex<HashSet<usize>>>,
    /// Time spent blocked sending live frames (µs): a successor slower
    /// than the stream shows here.
    pub blocked: Arc<std::sync::atomic::AtomicU64>,
    pub identity: Arc<Identity>,
    pub stall: Duration,
    /// The test hook: damage the Nth piece forwarded.
    pub corrupt: Option<u64>,
    /// The test hook: wait this long after each live frame.
    pub pace: Option<Duration>,
}

impl Forwarder {
    /// Forwards everything `rx` gives until the chain below has it all (or
    /// there is no one left to forward to).
    pub fn run(&self, rx: Receiver<Fwd>, pieces: &dyn Pieces) {
        let mut failed: HashSet<usize> = HashSet::new();
        let mut down: Option<Down> = None;
        let mut end_in = false;
        let mut resend: VecDeque<(u32, u32)> = VecDeque::new();
        let mut forwarded = 0u64;
        let mut last_piece: Option<(u32, u64)> = None;
        let mut corrupted = false;
        // pieces whose end passed through here: what a new successor may
        // lack (the rest is still on its way through the queue)
        let mut ended: HashSet<(u32, u32)> = HashSet::new();
        // pieces to feed a moved successor, in the order they came
        let mut feed: VecDeque<(u32, u32)> = VecDeque::new();
        // the last pieces of the live stream taken, to replay to a new
        // successor from where it stands
        let mut log: VecDeque<LivePiece> = VecDeque::new();
        loop {
            if pieces.cancelled() {
                return;
            }
            let desired = successor(&lock(&self.order), self.me, &failed);
            if down.is_none() || down.as_ref().map(|d| d.host) != desired {
                // the order changed (or the successor failed): relink
                down = None;
                let Some(next) = desired else {
                    // the tail: nothing to forward to, for now
                    if end_in {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    let got = rx.recv_timeout(Duration::from_millis(10));
                    if let Ok(m) = &got {
                        note(&mut log, m);
                    }
                    match got {
                        Ok(Fwd::PieceEnd { file, piece, .. } | Fwd::Committed { file, piece }) => {
                            ended.insert((file, piece));
                        }
                        Ok(Fwd::End) | Err(RecvTimeoutError::Disconnected) => end_in = true,
                        Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    }
                    continue;
                };
                match self.open(next) {
                    Ok((mut d, Have { pieces: have, at })) => {
                        resend.clear();
                        // a host on the live stream gets the stream from
                        // where it stands, as live messages (it passes them
                        // on); a moved host is fed whole committed pieces
                        let live = !lock(&self.moved).contains(&next);
                        let replayed: HashSet<(u32, u32)> = log
                            .iter()
                            .filter(|e| live && (e.file, e.piece) >= (at.file, at.piece))
                            .map(|e| (e.file, e.piece))
                            .collect();
                        for (f, p) in pieces.sent_so_far() {
                            if ended.contains(&(f, p))
                                && !have.contains(&(f, p))
                                && !replayed.contains(&(f, p))
                            {
                                resend.push_back((f, p));
                            }
                        }
                        if live {
                            if let Err(e) = replay(&mut d, pieces, &log, at, &mut resend) {
                                lock(&d.state.dead).get_or_insert(e.to_string());
                            }
                        }
                        down = Some(d);
                    }
                    Err(why) => {
                        pieces.report(Report::Bypassed {
                            host: next as u32,
                            why,
                        });
                        failed.insert(next);
                        continue;
                    }
                }
            }
            let d = down.as_mut().expect("connected");
            let dead = lock(&d.state.dead).clone();
            if dead.is_some() && d.state.fed.load(Ordering::SeqCst) {
                // another host took our place before it: the source moved
                // a host, and our own new order is late. Not a failure: no
                // report, and no link past it (that would cut the next
                // host's healthy link in turn); we wait for our order
                let host = d.host;
                down = None;
                self.await_order(host, &failed, pieces);
                continue;
            }
            if dead.is_some() && self.reordered(d.host, &failed) {
                // the chain's order changed and its new predecessor linked
                // to it (and so cut us off) before we heard: not a failure
                down = None;
                continue;
            }
            if let Some(why) = dead {
                pieces.report(Report::Bypassed {
                    host: d.host as u32,
                    why,
                });
                failed.insert(d.host);
                down = None;
                continue;
            }
            if d.end_sent && d.state.done.load(Ordering::SeqCst) {
                // everything is through; stay for a change of order
                let _ = d.flush();
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for n in lock(&d.state.nacks).drain(..) {
                if !resend.contains(&n) {
                    resend.push_back(n);
                }
            }
            let feeding = lock(&self.moved).contains(&d.host);
            pieces.set_feeding(feeding);
            if feeding {
                // take the live queue as it comes, never waiting on the successor
                let (ends, end) = pieces.take_feed();
                for e in ends {
                    ended.insert(e);
                    feed.push_back(e);
                }
                end_in |= end;
                loop {
                    let got = rx.try_recv();
                    if let Ok(m) = &got {
                        note(&mut log, m);
                    }
                    match got {
                        Ok(Fwd::PieceEnd { file, piece, .. } | Fwd::Committed { file, piece }) => {
                            ended.insert((file, piece));
                            feed.push_back((file, piece));
                        }
                        Ok(Fwd::End) => end_in = true,
                        Ok(_) => {}
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            end_in = true;
                            break;
                        }
                    }
                }
                while let Some(&(f, p)) = feed.front() {
                    if pieces.signed(f, p).is_none() {
                        break;
                    }
                    if !resend.contains(&(f, p)) {
                        resend.push_back((f, p));
                    }
                    feed.pop_front();
                }
            } else {
                feed.clear();
            }
            let ready = resend
                .iter()
                .position(|&(f, p)| pieces.signed(f, p).is_some());
            let sent = if let Some(i) = ready {
                let (f, p) = resend.remove(i).expect("found");
                send_piece(d, pieces, f, p)
            } else if end_in || feeding {
                if end_in && !d.end_sent && resend.is_empty() && feed.is_empty() {
                    d.end_sent = true;
                    d.send(&Msg::End).and_then(|()| d.flush())
                } else {
                    let r = d.flush();
                    std::thread::sleep(Duration::from_millis(10));
                    r
                }
            } else {
                // what is queued goes out before waiting for more
                let next = match rx.try_recv() {
                    Ok(m) => Ok(Ok(m)),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Ok(Err(RecvTimeoutError::Disconnected))
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        let t = Instant::now();
                        let r = d.flush();
                        self.blocked
                            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        r.map(|()| rx.recv_timeout(Duration::from_millis(10)))
                    }
                };
                if let Ok(Ok(m)) = &next {
                    note(&mut log, m);
                }
                match next {
                    Err(e) => Err(e),
                    Ok(next) => match next {
                        Ok(Fwd::Data {
                            file,
                            offset,
                            mut bytes,
                        }) => {
                            let piece = offset / super::PIECE;
                            if last_piece != Some((file, piece)) {
                                last_piece = Some((file, piece));
                                forwarded += 1;
                                if !corrupted
                                    && self.corrupt == Some(forwarded)
                                    && !bytes.is_empty()
                                {
                                    corrupted = true;
                                    bytes[0] ^= 1;
                                }
                            }
                            if let Some(p) = self.pace {
                                std::thread::sleep(p);
                            }
                            let t = Instant::now();
                            let r = d.send(&Msg::Data {
                                file,
                                offset,
                                resend: false,
                                bytes,
                            });
                            self.blocked
                                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                            r
                        }
                        Ok(Fwd::PieceEnd {
                            file,
                            piece,
                            hash,
                            sig,
                        }) => {
                            ended.insert((file, piece));
                            d.send(&Msg::PieceEnd {
                                file,
                                piece,
                                resend: false,
                                hash,
                                sig,
                            })
                        }
                        Ok(Fwd::Ref {
                            file,
                            offset,
                            len,
                            skip,
                            chunk,
                        }) => {
                            let t = Instant::now();
                            let r = d.send(&Msg::Ref {
                                file,
                                offset,
                                len,
                                skip,
                                chunk,
                            });
                            self.blocked
                                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                            r
                        }
                        Ok(Fwd::Committed { file, piece }) => {
                            // the successor had the live copy (or asks by NACK)
                            ended.insert((file, piece));
                            Ok(())
                        }
                        Ok(Fwd::End) => {
                            end_in = true;
                            Ok(())
                        }
                        Err(RecvTimeoutError::Timeout) => Ok(()),
                        Err(RecvTimeoutError::Disconnected) => {
                            end_in = true;
                            Ok(())
                        }
                    },
                }
            };
            if let Err(e) = sent {
                let mut dead = lock(&d.state.dead);
                if dead.is_none() {
                    *dead = Some(e.to_string());
                }
            }
        }
    }

    /// Whether the chain's order no longer puts `host` after us, or does
    /// not within [`REORDER`]: the source sends a new order to each host
    /// on its own connection, a moved host's new predecessor may link to
    /// it first, and the host then cuts the old link (to us, who may also
    /// be blocked sending to a slow host that was moved).
    fn reordered(&self, host: usize, failed: &HashSet<usize>) -> bool {
        let until = Instant::now() + REORDER;
        loop {
            if successor(&lock(&self.order), self.me, failed) != Some(host) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the chain's order no longer puts `host` after us (our
    /// new order came), for at most the stall timeout: if it still does
    /// then, the host that took our place followed an order older than
    /// ours, and we link to `host` again (taking our place back).
    fn await_order(&self, host: usize, failed: &HashSet<usize>, pieces: &dyn Pieces) {
        let until = Instant::now() + self.stall;
        while successor(&lock(&self.order), self.me, failed) == Some(host)
            && Instant::now() < until
            && !pieces.cancelled()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Dials host `i`, and learns what it has and how far it has taken the
    /// live stream.
    fn open(&self, i: usize) -> Result<(Down, Have), String> {
        let h = &self.ticket.hosts[i];
        let Dialed {
            mut reader,
            mut writer,
            sock,
        } = dial(&h.addr, &h.key, &self.identity, self.stall).map_err(|e| e.to_string())?;
        let _ = reader.set_timeout(Some(self.stall));
        wire::send(
            &mut writer,
            &Msg::Open {
                purpose: Purpose::Relay,
                job: self.ticket.job,
            },
        )
        .map_err(|e| e.to_string())?;
        let (have, at) = match wire::expect(&mut reader, wire::LARGE).map_err(|e| e.to_string())? {
            Msg::Have { files, at } => {
                let mut set = HashSet::new();
                for (f, bits) in files {
                    for (byte, b) in bits.iter().enumerate() {
                        for bit in 0..8 {
                            if b & (1 << bit) != 0 {
                                set.insert((f, (byte * 8 + bit) as u32));
                            }
                        }
                    }
                }
                (set, at)
            }
            Msg::Refused { text } => return Err(format!("refused the relay: {text}")),
            m => return Err(format!("sent {} instead of what it has", m.name())),
        };
        let _ = reader.set_timeout(None);
        let state = Arc::new(DownState {
            nacks: Mutex::new(VecDeque::new()),
            done: AtomicBool::new(false),
            dead: Mutex::new(None),
            last_heard: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            fed: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || listen(reader, &st));
        let st = state.clone();
        let watch = sock.try_clone().map_err(|e| e.to_string())?;
        let stall = self.stall;
        std::thread::spawn(move || watchdog(watch, &st, stall));
        Ok((
            Down {
                host: i,
                writer,
                sock,
                state,
                end_sent: false,
                out: Vec::new(),
            },
            Have { pieces: have, at },
        ))
    }
}

/// What a new successor says it holds when the relay opens.
struct Have {
    /// Pieces it has committed.
    pieces: HashSet<(u32, u32)>,
    /// How far it has taken the live stream.
    at: StreamPos,
}

/// The host after `me` in `order` that has not failed (`me` `None`: the
/// source, before all).
fn successor(order: &[usize], me: Option<usize>, failed: &HashSet<usize>) -> Option<usize> {
    let from = match me {
        None => 0,
        Some(m) => order.iter().position(|&h| h == m)? + 1,
    };
    order[from..].iter().copied().find(|h| !failed.contains(h))
}

/// A piece of the live stream as a forwarder took it: its data so far ends
/// at `to`, and its end passed (`ended`) or not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LivePiece {
    file: u32,
    piece: u32,
    to: u64,
    ended: bool,
}

/// Notes a message of the live stream in `log` (the last [`REPLAYED`]
/// pieces).
fn note(log: &mut VecDeque<LivePiece>, m: &Fwd) {
    let (file, piece, to, ended) = match m {
        Fwd::Data {
            file,
            offset,
            bytes,
        } => (
            *file,
            (offset / PIECE) as u32,
            offset + bytes.len() as u64,
            false,
        ),
        Fwd::Ref {
            file, offset, len, ..
        } => (*file, (offset / PIECE) as u32, offset + *len as u64, false),
        Fwd::PieceEnd { file, piece, .. } => (*file, *piece, 0, true),
        Fwd::Committed { .. } | Fwd::End => return,
    };
    match log.back_mut() {
        Some(e) if (e.file, e.piece) == (file, piece) => {
            e.to = e.to.max(to);
            e.ended |= ended;
        }
        _ => {
            log.push_back(LivePiece {
                file,
                piece,
                to: to.max(piece as u64 * PIECE),
                ended,
            });
            if log.len() > REPLAYED {
                log.pop_front();
            }
        }
    }
}

/// Replays the live stream to a new successor from where it stands (`at`):
/// the pieces taken live from there on, read from this host's copy and sent
/// as live messages (not re-sends), so that the successor takes them as it
/// would have from its old predecessor and passes them on. So a relink (a
/// move, a bypass) costs no host after it a byte twice nor a refused piece:
/// without it, the successor had the start of its current piece from its
/// old predecessor and the rest from the new one, refused the piece with a
/// hole in it, and so did every host after it, each asking for the piece
/// again from its predecessor, which had it only once it had it itself
/// (one piece's time more per host, seen as a stagger). The piece still in
/// progress is read as written here, unchecked as the live stream is; the
/// successor checks it at its end like any piece. A piece whose end passed
/// here but that was refused here is not replayed: it is sent once it is
/// committed (`resend`).
fn replay(
    d: &mut Down,
    pieces: &dyn Pieces,
    log: &VecDeque<LivePiece>,
    at: StreamPos,
    resend: &mut VecDeque<(u32, u32)>,
) -> Result<(), crate::error::TransferError> {
    let mut buf = Vec::new();
    for e in log
        .iter()
        .filter(|e| (e.file, e.piece) >= (at.file, at.piece))
    {
        let signed = pieces.signed(e.file, e.piece);
        if e.ended && signed.is_none() {
            if !resend.contains(&(e.file, e.piece)) {
                resend.push_back((e.file, e.piece));
            }
            continue;
        }
        let start = piece_range(pieces.size(e.file), e.piece).0;
        let mut from = if (e.file, e.piece) == (at.file, at.piece) {
            at.offset.max(start)
        } else {
            start
        };
        while from < e.to {
            let n = ((e.to - from) as usize).min(FRAME);
            buf.resize(n, 0);
            pieces
                .read(e.file, from, &mut buf)
                .map_err(|x| crate::error::TransferError::local("the live stream's bytes", &x))?;
            d.send(&Msg::Data {
                file: e.file,
                offset: from,
                resend: false,
                bytes: buf.clone(),
            })?;
            from += n as u64;
        }
        if let (true, Some((hash, sig))) = (e.ended, signed) {
            d.send(&Msg::PieceEnd {
                file: e.file,
                piece: e.piece,
                resend: false,
                hash,
                sig,
            })?;
        }
    }
    d.flush()
}

/// Sends a committed piece again, from our copy.
fn send_piece(
    d: &mut Down,
    pieces: &dyn Pieces,
    file: u32,
    piece: u32,
) -> Result<(), crate::error::TransferError> {
    let Some((hash, sig)) = pieces.signed(file, piece) else {
        return Ok(());
    };
    let (a, b) = piece_range(pieces.size(file), piece);
    let mut at = a;
    let mut buf = vec![0u8; FRAME];
    while at < b {
        let n = ((b - at) as usize).min(FRAME);
        pieces
            .read(file, at, &mut buf[..n])
            .map_err(|e| crate::error::TransferError::local("a committed piece", &e))?;
        d.send(&Msg::Data {
            file,
            offset: at,
            resend: true,
            bytes: buf[..n].to_vec(),
        })?;
        at += n as u64;
    }
    d.send(&Msg::PieceEnd {
        file,
        piece,
        resend: true,
        hash,
        sig,
    })?;
    d.flush()
}

/// Reads what the successor says: heartbeats, NACKs, done.
fn listen(mut reader: crate::transport::tls::TlsReader, st: &DownState) {
    loop {
        let m = wire::recv(&mut reader, wire::SMALL);
        *lock(&st.last_heard) = Instant::now();
        let why = match m {
            Ok(Some(Msg::Ack { .. })) => continue,
            Ok(Some(Msg::Nack { file, piece })) => {
                lock(&st.nacks).push_back((file, piece));
                continue;
            }
            Ok(Some(Msg::Done { .. })) => {
                st.done.store(true, Ordering::SeqCst);
                continue;
            }
            Ok(Some(Msg::Fed)) => {
                st.fed.store(true, Ordering::SeqCst);
                "another host feeds it now".to_string()
            }
            Ok(Some(Msg::Refused { text })) => format!("it failed: {text}"),
            Ok(Some(m)) => format!("it sent {} on a relay", m.name()),
            Ok(None) => "it closed the connection".to_string(),
            Err(e) => e.to_string(),
        };
        if !st.closed.load(Ordering::SeqCst) && !st.done.load(Ordering::SeqCst) {
            lock(&st.dead).get_or_insert(why);
        }
        return;
    }
}

/// Shuts the connection to a successor silent for longer than `stall`.
fn watchdog(sock: std::net::TcpStream, st: &DownState, stall: Duration) {
    while !st.closed.load(Ordering::SeqCst) && lock(&st.dead).is_none() {
        if st.done.load(Ordering::SeqCst) {
            return;
        }
        let silent = lock(&st.last_heard).elapsed();
        if silent > stall {
            lock(&st.dead).get_or_insert(format!(
                "no word from it for {:.1} s (stall timeout)",
                silent.as_secs_f64()
            ));
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(file: u32, offset: u64, len: usize) -> Fwd {
        Fwd::Data {
            file,
            offset,
            bytes: vec![0; len],
        }
    }

    fn end(file: u32, piece: u32) -> Fwd {
        Fwd::PieceEnd {
            file,
            piece,
            hash: [0; 32],
            sig: [0; 64],
        }
    }

    /// The replay log: per piece of the live stream, where its data ends so
    /// far and whether its end passed, for the last [`REPLAYED`] pieces.
    #[test]
    fn the_live_log_follows_each_piece_to_its_end_and_keeps_the_last_ones() {
        let mut log = VecDeque::new();
        note(&mut log, &data(1, 0, FRAME));
        note(&mut log, &data(1, FRAME as u64, FRAME));
        let piece = |file, piece, to, ended| LivePiece {
            file,
            piece,
            to,
            ended,
        };
        assert_eq!(log, [piece(1, 0, 2 * FRAME as u64, false)]);
        note(&mut log, &end(1, 0));
        // a piece whose every byte was in place: only its end
        note(&mut log, &end(1, 1));
        note(&mut log, &data(2, PIECE, 10));
        note(&mut log, &Fwd::Committed { file: 1, piece: 0 });
        assert_eq!(
            log,
            [
                piece(1, 0, 2 * FRAME as u64, true),
                piece(1, 1, PIECE, true),
                piece(2, 1, PIECE + 10, false),
            ]
        );
        for p in 0..2 * REPLAYED as u32 {
            note(&mut log, &end(3, p));
        }
        assert_eq!(log.len(), REPLAYED);
        assert_eq!(log.front().map(|e| e.piece), Some(REPLAYED as u32));
    }
}
