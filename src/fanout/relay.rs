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

/// Bytes of the live stream a forwarder remembers (what it took of each
/// piece, and whether its end passed), to replay to a new successor from
/// where it stands: at least 64 MiB of file bytes carried (data and chunk
/// references), far more than is ever in flight between two hosts (a queue
/// of 4 MiB and two sockets' buffers), counted in bytes, not pieces, so that
/// a tree of small files is covered as a checkpoint is; a successor further
/// behind gets the older pieces it lacks whole, re-sent. The log is bounded
/// in memory too: at most [`REPLAYED_PIECES`] pieces and [`REPLAYED_RUNS`]
/// runs in all (about 3 MiB and 10 MiB).
const REPLAYED: u64 = 64 << 20;

/// At most this many pieces in the replay log (64 MiB of 1 KiB files).
const REPLAYED_PIECES: usize = 65_536;

/// At most this many runs ([`Taken`]) in the replay log in all.
const REPLAYED_RUNS: usize = 262_144;

/// Data runs one piece may have in the log: a piece taken in more pieces
/// than this (gaps between them) is not replayed but left to the re-send
/// path.
const DATA_RUNS: usize = 16;

/// Chunk references one piece may have in the log: one per chunk a piece
/// can hold (4 MiB of chunks of at least 2 KiB).
const REF_RUNS: usize = 2048;

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
    /// This host could not read its own copy of `file` to serve it again
    /// (at the source: the file was replaced since the listing): its own
    /// failure, never the successor's. The source ends the run with the
    /// file's error; a hop fails.
    fn unreadable(&self, file: u32, e: &std::io::Error);
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
        let mut log = LiveLog::default();
        let mut fed_once = FedOnce::default();
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
                            let r = replay(&mut |m| d.send(m), pieces, &log, at, &mut resend);
                            let r = settle(pieces, r).and_then(|()| d.flush());
                            if let Err(e) = r {
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
            let mut cut = dead
                .as_ref()
                .map(|_| self.judge_cut(d.host, &failed, Some(&d.state.fed)));
            let mut refed = false;
            if cut == Some(Cut::Fed) && !fed_once.honour(d.host, &lock(&self.order).clone()) {
                refed = true;
                // the word again with no new order since we last waited on
                // it: a host that keeps dialing it would have us wait the
                // stall timeout and link back forever; judged as a cut
                tracing::warn!(
                    host = d.host,
                    "fan-out: the next host says again, under the same order, that another host feeds it; judged as a cut"
                );
                cut = Some(self.judge_cut(d.host, &failed, None));
            }
            if cut == Some(Cut::Fed) {
                // another host took our place before it: the source moved
                // a host, and our own new order is late. Not a failure: no
                // report, and no link past it (that would cut the next
                // host's healthy link in turn); we wait for our order
                let host = d.host;
                down = None;
                tracing::info!(
                    host,
                    "fan-out: the next host says another host feeds it now; waiting for our new order"
                );
                self.await_order(host, &failed, pieces);
                continue;
            }
            if cut == Some(Cut::Reordered) {
                // the chain's order changed and its new predecessor linked
                // to it (and so cut us off) before we heard: not a failure
                down = None;
                continue;
            }
            if let Some(why) = dead {
                let why = if refed && cut == Some(Cut::Failed) {
                    "said again under one order that another host feeds it (a host in the ticket keeps taking its upstream)".to_string()
                } else {
                    why
                };
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
                settle(pieces, send_piece(d, pieces, f, p))
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

    /// What a cut link to `host` means, judged within [`REORDER`]: the
    /// chain's order no longer puts `host` after us (the source sends a new
    /// order to each host on its own connection, a moved host's new
    /// predecessor may link to it first, and the host then cuts the old
    /// link to us, who may also be blocked sending to a slow host that was
    /// moved); or `host` said another host feeds it now (`fed`, looked at
    /// through the wait: when our write to it fails first, our `dead` is
    /// set before its listener stores the word); or neither: a failure.
    fn judge_cut(&self, host: usize, failed: &HashSet<usize>, fed: Option<&AtomicBool>) -> Cut {
        let said_fed = || fed.is_some_and(|f| f.load(Ordering::SeqCst));
        let until = Instant::now() + REORDER;
        loop {
            if said_fed() {
                return Cut::Fed;
            }
            if successor(&lock(&self.order), self.me, failed) != Some(host) {
                return Cut::Reordered;
            }
            if Instant::now() >= until {
                return if said_fed() { Cut::Fed } else { Cut::Failed };
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

/// What a cut link to the successor means ([`Forwarder::judge_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// It said another host feeds it now ([`Msg::Fed`]).
    Fed,
    /// Our order no longer puts it after us.
    Reordered,
    /// Neither: it failed, and is reported bypassed.
    Failed,
}

/// The successors whose [`Msg::Fed`] a forwarder has honoured under the
/// order it follows: each at most once until the order changes. Without
/// the limit, a hostile host in the ticket dialing our successor again and
/// again (each time our successor tells us `Fed`, we wait the stall timeout
/// for an order that never comes and link back, and it tells the hostile
/// host `Fed`) would keep the job crawling with nobody reported; a second
/// `Fed` is judged as any cut is (the 1 s wait for an order, then a report
/// the source judges).
#[derive(Debug, Default)]
struct FedOnce {
    /// The order (as last seen when a `Fed` came) the hosts were honoured
    /// under; an order of the same content counts as unchanged.
    order: Vec<usize>,
    hosts: HashSet<usize>,
}

impl FedOnce {
    /// Whether to honour `Fed` from `host` while following `order` (and
    /// notes it if so).
    fn honour(&mut self, host: usize, order: &[usize]) -> bool {
        if self.order != order {
            self.order = order.to_vec();
            self.hosts.clear();
        }
        self.hosts.insert(host)
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

/// What the live stream carried of a piece, one run at a time, as taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Data bytes `offset..offset + len` (contiguous frames merged).
    Data { offset: u64, len: u64 },
    /// A chunk reference, replayed as it came: a host behind rebuilds it
    /// from its own old data, so it never becomes raw data on the way.
    Ref {
        offset: u64,
        len: u32,
        skip: u32,
        chunk: [u8; 16],
    },
}

/// A piece of the live stream as a forwarder took it: the runs it carried
/// (`None`: more than [`DATA_RUNS`] data runs or [`REF_RUNS`] references,
/// not replayable), and whether its end passed (`ended`) or not yet. Only
/// these runs are replayed: the gaps between them (bytes every host holds
/// in place, or that an upstream left out) are not this host's to send.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LivePiece {
    file: u32,
    piece: u32,
    taken: Option<Vec<Taken>>,
    /// How many of `taken` are data runs (the rest are references).
    data_runs: usize,
    /// File bytes the runs covered (for [`REPLAYED`]).
    bytes: u64,
    ended: bool,
}

/// The last pieces of the live stream taken: at least [`REPLAYED`] bytes of
/// it, within [`REPLAYED_PIECES`] pieces and [`REPLAYED_RUNS`] runs.
#[derive(Debug, Default)]
struct LiveLog {
    pieces: VecDeque<LivePiece>,
    /// The sum of the pieces' `bytes`.
    bytes: u64,
    /// The runs held in all.
    runs: usize,
}

impl LiveLog {
    fn iter(&self) -> std::collections::vec_deque::Iter<'_, LivePiece> {
        self.pieces.iter()
    }
}

/// Notes a message of the live stream in `log`.
fn note(log: &mut LiveLog, m: &Fwd) {
    let (file, piece, run, ended) = match m {
        Fwd::Data {
            file,
            offset,
            bytes,
        } => (
            *file,
            (offset / PIECE) as u32,
            Some(Taken::Data {
                offset: *offset,
                len: bytes.len() as u64,
            }),
            false,
        ),
        Fwd::Ref {
            file,
            offset,
            len,
            skip,
            chunk,
        } => (
            *file,
            (offset / PIECE) as u32,
            Some(Taken::Ref {
                offset: *offset,
                len: *len,
                skip: *skip,
                chunk: *chunk,
            }),
            false,
        ),
        Fwd::PieceEnd { file, piece, .. } => (*file, *piece, None, true),
        Fwd::Committed { .. } | Fwd::End => return,
    };
    if log.pieces.back().map(|e| (e.file, e.piece)) != Some((file, piece)) {
        log.pieces.push_back(LivePiece {
            file,
            piece,
            taken: Some(Vec::new()),
            data_runs: 0,
            bytes: 0,
            ended: false,
        });
    }
    let e = log.pieces.back_mut().expect("pushed");
    e.ended |= ended;
    if let Some(run) = run {
        let len = match run {
            Taken::Data { len, .. } => len,
            Taken::Ref { len, .. } => len as u64,
        };
        e.bytes += len;
        log.bytes += len;
        if let Some(runs) = &mut e.taken {
            let before = runs.len();
            match (runs.last_mut(), run) {
                (Some(Taken::Data { offset, len }), Taken::Data { offset: o, len: n })
                    if *offset + *len == o =>
                {
                    *len += n
                }
                _ => runs.push(run),
            }
            if runs.len() > before && matches!(run, Taken::Data { .. }) {
                e.data_runs += 1;
            }
            if e.data_runs > DATA_RUNS || runs.len() - e.data_runs > REF_RUNS {
                // too broken up to keep: left to the re-send path
                log.runs -= before;
                e.taken = None;
            } else {
                log.runs += runs.len() - before;
            }
        }
    }
    // keep at least REPLAYED bytes, within the bounds on pieces and runs
    while log.pieces.len() > 1 {
        let front = &log.pieces[0];
        let runs = front.taken.as_ref().map_or(0, Vec::len);
        if log.bytes - front.bytes < REPLAYED
            && log.pieces.len() <= REPLAYED_PIECES
            && log.runs <= REPLAYED_RUNS
        {
            break;
        }
        log.bytes -= front.bytes;
        log.runs -= runs;
        log.pieces.pop_front();
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
/// (one piece's time more per host, seen as a stagger). Exactly the runs
/// taken here are replayed (data, and chunk references as references), from
/// `at` on: never a gap's bytes, which this host did not take. The piece
/// still in progress is read as written here, unchecked as the live stream
/// is; the successor checks it at its end like any piece. A piece whose end
/// passed here but that was refused here, or that was too broken up to log,
/// is not replayed: it is sent once it is committed (`resend`), or asked
/// for by the successor.
fn replay(
    send: &mut dyn FnMut(&Msg) -> Result<(), crate::error::TransferError>,
    pieces: &dyn Pieces,
    log: &LiveLog,
    at: StreamPos,
    resend: &mut VecDeque<(u32, u32)>,
) -> Result<(), Stop> {
    let mut buf = Vec::new();
    for e in log
        .iter()
        .filter(|e| (e.file, e.piece) >= (at.file, at.piece))
    {
        let signed = pieces.signed(e.file, e.piece);
        let Some(runs) = e.taken.as_ref().filter(|_| !e.ended || signed.is_some()) else {
            // refused here, or not logged: sent whole once committed
            if (e.ended || signed.is_some()) && !resend.contains(&(e.file, e.piece)) {
                resend.push_back((e.file, e.piece));
            }
            continue;
        };
        // what the successor took of this piece already
        let taken_to = if (e.file, e.piece) == (at.file, at.piece) {
            at.offset
        } else {
            0
        };
        for run in runs {
            match *run {
                Taken::Data { offset, len } => {
                    let mut from = offset.max(taken_to);
                    while from < offset + len {
                        let n = ((offset + len - from) as usize).min(FRAME);
                        buf.resize(n, 0);
                        pieces
                            .read(e.file, from, &mut buf)
                            .map_err(|x| Stop::Unreadable(e.file, x))?;
                        send(&Msg::Data {
                            file: e.file,
                            offset: from,
                            resend: false,
                            bytes: buf.clone(),
                        })?;
                        from += n as u64;
                    }
                }
                Taken::Ref {
                    offset,
                    len,
                    skip,
                    chunk,
                } => {
                    if offset + len as u64 > taken_to {
                        send(&Msg::Ref {
                            file: e.file,
                            offset,
                            len,
                            skip,
                            chunk,
                        })?;
                    }
                }
            }
        }
        if let (true, Some((hash, sig))) = (e.ended, signed) {
            send(&Msg::PieceEnd {
                file: e.file,
                piece: e.piece,
                resend: false,
                hash,
                sig,
            })?;
        }
    }
    Ok(())
}

/// Why a replay or a re-send stopped: this host could not read its own
/// copy (its own fault, not the successor's), or the link failed.
#[derive(Debug)]
enum Stop {
    Unreadable(u32, std::io::Error),
    Link(crate::error::TransferError),
}

impl From<crate::error::TransferError> for Stop {
    fn from(e: crate::error::TransferError) -> Self {
        Stop::Link(e)
    }
}

/// What a stopped replay or re-send means for the successor: a failed link
/// is its failure (`Err`, stored as its `dead`); a local read error is not.
/// That one fails here instead ([`Pieces::unreadable`]: at the source the
/// run ends with the file's error, a hop fails), and the successor, healthy,
/// is left to the re-send path rather than reported bypassed.
fn settle(pieces: &dyn Pieces, r: Result<(), Stop>) -> Result<(), crate::error::TransferError> {
    match r {
        Ok(()) => Ok(()),
        Err(Stop::Unreadable(file, e)) => {
            pieces.unreadable(file, &e);
            Ok(())
        }
        Err(Stop::Link(e)) => Err(e),
    }
}

/// Sends a committed piece again, from our copy.
fn send_piece(d: &mut Down, pieces: &dyn Pieces, file: u32, piece: u32) -> Result<(), Stop> {
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
            .map_err(|e| Stop::Unreadable(file, e))?;
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
    Ok(d.flush()?)
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

    fn reference(file: u32, offset: u64, len: u32) -> Fwd {
        Fwd::Ref {
            file,
            offset,
            len,
            skip: 0,
            chunk: [7; 16],
        }
    }

    /// A successor's `Fed` is honoured once per order the forwarder
    /// follows: again under the same order it is judged as a cut; a new
    /// order (a move) honours it again.
    #[test]
    fn fed_is_honoured_once_per_order_and_host() {
        let a = [0, 1, 2, 3];
        let b = [0, 2, 3, 1];
        let mut once = FedOnce::default();
        // (host, order, honoured)
        let steps: [(usize, &[usize], bool); 7] = [
            (2, &a, true),
            (2, &a, false),
            (2, &a, false),
            (3, &a, true),
            (2, &b, true),
            (2, &b, false),
            (3, &b, true),
        ];
        for (i, (host, order, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                once.honour(host, order),
                want,
                "step {i}: host {host} under {order:?}"
            );
        }
    }

    /// The runs logged of each piece, in order.
    fn runs(log: &LiveLog) -> Vec<(u32, u32, Option<Vec<Taken>>, bool)> {
        log.iter()
            .map(|e| (e.file, e.piece, e.taken.clone(), e.ended))
            .collect()
    }

    /// A host's own copy, as a replay reads it: each byte is its offset's
    /// low byte; `broken` cannot be read (a file replaced at the source).
    struct Copy {
        committed: HashSet<(u32, u32)>,
        broken: Option<u32>,
        unreadable: Mutex<Vec<u32>>,
    }

    impl Pieces for Copy {
        fn signed(&self, file: u32, piece: u32) -> Option<([u8; 32], [u8; 64])> {
            self.committed
                .contains(&(file, piece))
                .then_some(([piece as u8; 32], [1; 64]))
        }
        fn read(&self, file: u32, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            if self.broken == Some(file) {
                return Err(std::io::Error::other("replaced since the listing"));
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (offset + i as u64) as u8;
            }
            Ok(())
        }
        fn size(&self, _file: u32) -> u64 {
            64 * PIECE
        }
        fn sent_so_far(&self) -> Vec<(u32, u32)> {
            Vec::new()
        }
        fn report(&self, _r: Report) {}
        fn unreadable(&self, file: u32, _e: &std::io::Error) {
            lock(&self.unreadable).push(file);
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn copy(committed: &[(u32, u32)], broken: Option<u32>) -> Copy {
        Copy {
            committed: committed.iter().copied().collect(),
            broken,
            unreadable: Mutex::new(Vec::new()),
        }
    }

    /// A message replayed: (file, offset or piece, length, kind).
    type Sent = (u32, u64, u64, &'static str);

    /// What a replay sends, the data's bytes checked against the copy's.
    fn replayed(
        pieces: &Copy,
        log: &LiveLog,
        at: StreamPos,
        resend: &mut VecDeque<(u32, u32)>,
    ) -> (Vec<Sent>, Result<(), Stop>) {
        let mut sent = Vec::new();
        let r = replay(
            &mut |m| {
                sent.push(match m {
                    Msg::Data {
                        file,
                        offset,
                        resend: false,
                        bytes,
                    } => {
                        let want: Vec<u8> = (0..bytes.len() as u64)
                            .map(|i| (offset + i) as u8)
                            .collect();
                        assert_eq!(bytes, &want, "bytes not from this host's copy");
                        (*file, *offset, bytes.len() as u64, "data")
                    }
                    Msg::Ref {
                        file, offset, len, ..
                    } => (*file, *offset, *len as u64, "ref"),
                    Msg::PieceEnd {
                        file,
                        piece,
                        resend: false,
                        ..
                    } => (*file, *piece as u64, 0, "end"),
                    m => panic!("replayed {m:?}"),
                });
                Ok(())
            },
            pieces,
            log,
            at,
            resend,
        );
        (sent, r)
    }

    /// Issue 21 review A: the log keeps the runs the live stream carried
    /// (gaps left out, references as references), and a replay sends
    /// exactly those from where the successor stands: never the bytes of a
    /// gap (this host's old copy, or zeros), never a reference as raw data.
    #[test]
    fn a_replay_sends_exactly_the_runs_taken_gaps_and_references_as_they_came() {
        let mut log = LiveLog::default();
        note(&mut log, &data(1, 0, 100));
        note(&mut log, &data(1, 100, 100));
        // a gap: bytes every host holds in place
        note(&mut log, &data(1, 1000, 100));
        note(&mut log, &reference(1, 2000, 500));
        note(&mut log, &data(1, 2500, 100));
        note(&mut log, &end(1, 0));
        note(&mut log, &data(1, PIECE, 10));
        let r = |offset, len| Taken::Ref {
            offset,
            len,
            skip: 0,
            chunk: [7; 16],
        };
        let d = |offset, len| Taken::Data { offset, len };
        assert_eq!(
            runs(&log),
            [
                (
                    1,
                    0,
                    Some(vec![d(0, 200), d(1000, 100), r(2000, 500), d(2500, 100)]),
                    true
                ),
                (1, 1, Some(vec![d(PIECE, 10)]), false),
            ]
        );
        assert_eq!(log.bytes, 200 + 100 + 500 + 100 + 10);
        // the successor took piece 0 up to 150
        let at = StreamPos {
            file: 1,
            piece: 0,
            offset: 150,
        };
        let pieces = copy(&[(1, 0)], None);
        let mut resend = VecDeque::new();
        let (sent, r) = replayed(&pieces, &log, at, &mut resend);
        assert!(r.is_ok());
        assert_eq!(
            sent,
            [
                (1, 150, 50, "data"),
                (1, 1000, 100, "data"),
                (1, 2000, 500, "ref"),
                (1, 2500, 100, "data"),
                (1, 0, 0, "end"),
                (1, PIECE, 10, "data"),
            ]
        );
        assert!(resend.is_empty());
        // from past the reference: only what follows it
        let at = StreamPos {
            file: 1,
            piece: 0,
            offset: 2500,
        };
        let (sent, _) = replayed(&pieces, &log, at, &mut resend);
        assert_eq!(sent[..2], [(1, 2500, 100, "data"), (1, 0, 0, "end")]);
    }

    /// A piece taken in more than [`DATA_RUNS`] runs is not replayed: it is
    /// re-sent whole once committed here.
    #[test]
    fn a_piece_too_broken_up_is_left_to_the_resend_path() {
        let mut log = LiveLog::default();
        for i in 0..=DATA_RUNS as u64 {
            note(&mut log, &data(2, i * 1000, 10));
        }
        note(&mut log, &end(2, 0));
        assert_eq!(runs(&log), [(2, 0, None, true)]);
        assert_eq!(log.runs, 0);
        let pieces = copy(&[(2, 0)], None);
        let mut resend = VecDeque::new();
        let (sent, r) = replayed(&pieces, &log, StreamPos::default(), &mut resend);
        assert!(r.is_ok());
        assert!(sent.is_empty(), "{sent:?}");
        assert_eq!(resend, [(2, 0)]);
    }

    /// Issue 21 review B: the log keeps at least [`REPLAYED`] bytes of
    /// stream, however small the pieces (64 pieces of 4 KiB files were
    /// 256 KiB, less than is in flight), within [`REPLAYED_PIECES`].
    #[test]
    fn the_live_log_keeps_64_mib_of_stream_even_of_tiny_files() {
        let mut log = LiveLog::default();
        for f in 0..20_000 {
            note(&mut log, &data(f, 0, 4096));
            note(&mut log, &end(f, 0));
        }
        assert_eq!(log.iter().count(), (REPLAYED / 4096) as usize);
        assert_eq!(log.bytes, REPLAYED);
        assert_eq!(log.iter().next().map(|e| e.file), Some(20_000 - 16_384));
        // a host 1,000 files behind gets them all replayed
        let at = StreamPos {
            file: 19_000,
            piece: 0,
            offset: 0,
        };
        let committed: Vec<_> = (0..20_000).map(|f| (f, 0)).collect();
        let pieces = copy(&committed, None);
        let mut resend = VecDeque::new();
        let (sent, _) = replayed(&pieces, &log, at, &mut resend);
        assert_eq!(sent.len(), 2 * 1000);
        assert!(resend.is_empty());
        // pieces of 100 bytes: bounded by the count of pieces instead
        for f in 0..100_000 {
            note(&mut log, &data(f, 0, 100));
        }
        assert_eq!(log.iter().count(), REPLAYED_PIECES);
        // whole pieces of 4 MiB: 64 MiB is 16 of them
        for p in 0..40 {
            for k in 0..(PIECE / FRAME as u64) {
                note(&mut log, &data(3, p * PIECE + k * FRAME as u64, FRAME));
            }
            note(&mut log, &end(3, p as u32));
        }
        assert_eq!(log.iter().count(), 16);
        assert_eq!(log.bytes, REPLAYED);
        assert!(log.runs <= REPLAYED_RUNS);
    }

    /// Issue 21 review C: this host failing to read its own copy (at the
    /// source, a file replaced since the listing) stops the replay without
    /// blaming the successor: the failure is this host's
    /// ([`Pieces::unreadable`]) and the successor is not marked dead, while
    /// a broken link still is.
    #[test]
    fn a_local_read_error_in_a_replay_fails_here_not_the_successor() {
        let mut log = LiveLog::default();
        note(&mut log, &data(4, 0, 100));
        let pieces = copy(&[], Some(4));
        let mut resend = VecDeque::new();
        let (sent, r) = replayed(&pieces, &log, StreamPos::default(), &mut resend);
        assert!(sent.is_empty());
        assert!(matches!(r, Err(Stop::Unreadable(4, _))), "{r:?}");
        assert!(settle(&pieces, r).is_ok(), "the successor was blamed");
        assert_eq!(*lock(&pieces.unreadable), [4]);
        let lost = crate::error::TransferError::Connection("broken pipe".into());
        assert!(settle(&pieces, Err(Stop::Link(lost))).is_err());
        assert_eq!(*lock(&pieces.unreadable), [4]);
    }

    /// The replay log: per piece of the live stream, what it carried and
    /// whether its end passed.
    #[test]
    fn the_live_log_follows_each_piece_to_its_end_and_keeps_the_last_ones() {
        let mut log = LiveLog::default();
        note(&mut log, &data(1, 0, FRAME));
        note(&mut log, &data(1, FRAME as u64, FRAME));
        let d = |offset, len| Some(vec![Taken::Data { offset, len }]);
        assert_eq!(runs(&log), [(1, 0, d(0, 2 * FRAME as u64), false)]);
        note(&mut log, &end(1, 0));
        // a piece whose every byte was in place: only its end
        note(&mut log, &end(1, 1));
        note(&mut log, &data(2, PIECE, 10));
        note(&mut log, &Fwd::Committed { file: 1, piece: 0 });
        assert_eq!(
            runs(&log),
            [
                (1, 0, d(0, 2 * FRAME as u64), true),
                (1, 1, Some(vec![]), true),
                (2, 1, d(PIECE, 10), false),
            ]
        );
    }
}
