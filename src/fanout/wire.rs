//! The fan-out wire: one message enum for both connections (control, from the
//! source to each daemon; relay, from a hop to its successor), each message a
//! frame of a `u32` little-endian length and a payload whose first byte names
//! it.
//!
//! Not for deciding what a message may do or when: that is the hop's and the
//! source's. Every length is checked against a limit before anything is
//! allocated; before a relay is authorized only [`SMALL`] frames are read.

use crate::error::TransferError;
use crate::proto::codec::{Reader, Writer};
use crate::proto::DecodeError;
use std::io::{Read, Write};

/// Largest frame before the peer is known to be part of a job.
pub const SMALL: usize = 16 << 10;
/// Largest frame at all (a job's manifest of a large tree).
pub const LARGE: usize = 256 << 20;
/// Longest text (reasons) carried.
const TEXT: usize = 16 << 10;
/// Largest control frame after a job has started (a [`Msg::Hints`] answer:
/// at most ~25,000 chunk names of 4 KiB and more, ~32 bytes each).
pub const HINTS: usize = 2 << 20;
/// Most pieces one [`Msg::Ask`] may name (a window of many small files;
/// its runs stay under [`SMALL`] bytes).
pub const MAX_ASK: usize = 512;

/// What a fan-out connection is for, said in its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Control,
    Relay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// First message after the hello: what this connection is for; a relay
    /// names its job.
    Open { purpose: Purpose, job: [u8; 16] },
    /// Daemon → source (control): the daemon's own key, for the ticket.
    Who { key: [u8; 32] },
    /// Source → daemon (control): the signed ticket, the manifest, and where
    /// this daemon stands in the chain.
    Start {
        ticket: Vec<u8>,
        sig: [u8; 64],
        manifest: Vec<u8>,
        index: u32,
    },
    /// Daemon → source: ready; the files whose temporary copy starts as
    /// their old data (the rest start empty). What that old data holds is
    /// told a window at a time, when asked ([`Msg::Ask`]), never all at once:
    /// that would cost memory in proportion to the data on both ends.
    Ready { files: Vec<u32> },
    /// Source → daemon (control): tell me what you hold for these pieces, a
    /// window just ahead of the source's reader: runs of (file, first
    /// piece, number of pieces), in the chain's order, at most
    /// [`MAX_ASK`] pieces in all.
    Ask {
        window: u32,
        runs: Vec<(u32, u32, u32)>,
    },
    /// Daemon → source (control), the answer to [`Msg::Ask`]: the BLAKE3 of
    /// each asked piece whose temporary copy holds old data already (pieces
    /// that need not cross the wire if every host holds the same), and the
    /// names of the content-defined chunks of the old data around the asked
    /// pieces (chunks upstream may name instead of sending), each with the
    /// file and offset where it already sits in the temporary copy, if it
    /// does (then upstream need not even name it there). Hints only: every
    /// piece is checked against the source's signed hash all the same.
    Hints {
        window: u32,
        pieces: Vec<(u32, u32, [u8; 32])>,
        chunks: Vec<OldChunk>,
    },
    /// Either way: the job (or this connection) is refused or has failed.
    Refused { text: String },
    /// Source → daemon: dial the successor now.
    Link,
    /// Daemon → source: bytes of file data received and committed so far,
    /// and the time (ms) its forwarder spent blocked sending downstream.
    Progress {
        received: u64,
        committed: u64,
        blocked_ms: u64,
    },
    /// Source → daemon: the chain's new order (ticket positions): forward to
    /// the host after you in it; a host in `moved` (a slow host moved to the
    /// tail) is fed from the committed copy at its own pace, so that it
    /// never holds the others back.
    Order { hosts: Vec<u32>, moved: Vec<u32> },
    /// Daemon → source: the host at `host` was bypassed.
    Bypassed { host: u32, why: String },
    /// Daemon → source (control), and hop → predecessor (relay): every file
    /// committed and published.
    Done { received: u64, refused: u32 },
    /// Downstream → upstream (relay): what it has committed, per file a
    /// bitmap of pieces, and how far it has taken the live stream (`at`);
    /// sent once, when the relay opens. A new predecessor (after a move or
    /// a bypass) replays the live stream to it from `at` on, so that it,
    /// and every host after it, goes on as if nothing had changed.
    Have {
        files: Vec<(u32, Vec<u8>)>,
        at: StreamPos,
    },
    /// Upstream → downstream: file bytes at `offset`. A `resend` is not
    /// forwarded further on its own (downstream asks if it needs it).
    Data {
        file: u32,
        offset: u64,
        resend: bool,
        bytes: Vec<u8>,
    },
    /// Upstream → downstream: bytes `skip..skip + len` of the old chunk named
    /// `chunk`, which every host downstream holds, go at `offset` (checked
    /// with the rest of the piece at its end, like any bytes).
    Ref {
        file: u32,
        offset: u64,
        len: u32,
        skip: u32,
        chunk: [u8; 16],
    },
    /// Upstream → downstream: the end of a piece, with its signed hash.
    PieceEnd {
        file: u32,
        piece: u32,
        resend: bool,
        hash: [u8; 32],
        sig: [u8; 64],
    },
    /// Upstream → downstream: the source has sent everything.
    End,
    /// Downstream → upstream: pieces committed so far (progress, for the
    /// stall timeout).
    Ack { committed: u64 },
    /// Downstream → upstream: send this piece again (it was bad, or missing).
    Nack { file: u32, piece: u32 },
    /// Downstream → its old upstream, as that link is cut: another host
    /// feeds this one now (the chain's order changed, or that host bypassed
    /// the old upstream). The old upstream is told it was not failed, so
    /// that it neither reports this host bypassed nor links past it; it
    /// waits for its own new order instead (fan-out protocol 4).
    Fed,
}

/// How far a host has taken the live stream (the pieces in the source's
/// order, each its data frames, then its end): every live message of the
/// pieces before (`file`, `piece`), and of that piece the bytes before
/// `offset` (an absolute offset in the file). After a piece's end it is the
/// next piece's start. Ordered as the stream runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPos {
    pub file: u32,
    pub piece: u32,
    pub offset: u64,
}

/// An old chunk's name, and the (file, offset) where the new file's
/// temporary copy already holds it, if it does.
pub type OldChunk = ([u8; 16], Option<(u32, u64)>);

mod code {
    pub const OPEN: u8 = 1;
    pub const WHO: u8 = 2;
    pub const START: u8 = 3;
    pub const READY: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const LINK: u8 = 6;
    pub const PROGRESS: u8 = 7;
    pub const BYPASSED: u8 = 8;
    pub const DONE: u8 = 9;
    pub const HAVE: u8 = 10;
    pub const DATA: u8 = 11;
    pub const PIECE_END: u8 = 12;
    pub const END: u8 = 13;
    pub const ACK: u8 = 14;
    pub const NACK: u8 = 15;
    pub const REF: u8 = 16;
    pub const ORDER: u8 = 17;
    pub const ASK: u8 = 18;
    pub const HINTS: u8 = 19;
    pub const FED: u8 = 20;
}

impl Msg {
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Open { .. } => "open",
            Msg::Who { .. } => "who",
            Msg::Start { .. } => "start",
            Msg::Ready { .. } => "ready",
            Msg::Ask { .. } => "ask",
            Msg::Hints { .. } => "hints",
            Msg::Refused { .. } => "refused",
            Msg::Link => "link",
            Msg::Progress { .. } => "progress",
            Msg::Order { .. } => "order",
            Msg::Bypassed { .. } => "bypassed",
            Msg::Done { .. } => "done",
            Msg::Have { .. } => "have",
            Msg::Data { .. } => "data",
            Msg::Ref { .. } => "chunk reference",
            Msg::PieceEnd { .. } => "piece end",
            Msg::End => "end",
            Msg::Ack { .. } => "ack",
            Msg::Nack { .. } => "nack",
            Msg::Fed => "fed by another host",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode_into(&mut w);
        w.buf
    }

    /// Appends the payload to `w`.
    fn encode_into(&self, w: &mut Writer) {
        match self {
            Msg::Open { purpose, job } => {
                w.u8(code::OPEN);
                w.u8(match purpose {
                    Purpose::Control => 1,
                    Purpose::Relay => 2,
                });
                w.raw(job);
            }
            Msg::Who { key } => {
                w.u8(code::WHO);
                w.raw(key);
            }
            Msg::Start {
                ticket,
                sig,
                manifest,
                index,
            } => {
                w.u8(code::START);
                w.bytes(ticket);
                w.raw(sig);
                w.bytes(manifest);
                w.varint(*index as u64);
            }
            Msg::Ready { files } => {
                w.u8(code::READY);
                w.varint(files.len() as u64);
                for f in files {
                    w.varint(*f as u64);
                }
            }
            Msg::Ask { window, runs } => {
                w.u8(code::ASK);
                w.varint(*window as u64);
                w.varint(runs.len() as u64);
                for (f, first, n) in runs {
                    w.varint(*f as u64);
                    w.varint(*first as u64);
                    w.varint(*n as u64);
                }
            }
            Msg::Hints {
                window,
                pieces,
                chunks,
            } => {
                w.u8(code::HINTS);
                w.varint(*window as u64);
                w.varint(pieces.len() as u64);
                for (f, p, h) in pieces {
                    w.varint(*f as u64);
                    w.varint(*p as u64);
                    w.hash(h);
                }
                w.varint(chunks.len() as u64);
                for (name, at) in chunks {
                    w.raw(name);
                    match at {
                        None => w.varint(0),
                        Some((f, o)) => {
                            w.varint(*f as u64 + 1);
                            w.varint(*o);
                        }
                    }
                }
            }
            Msg::Ref {
                file,
                offset,
                len,
                skip,
                chunk,
            } => {
                w.u8(code::REF);
                w.varint(*file as u64);
                w.varint(*offset);
                w.varint(*len as u64);
                w.varint(*skip as u64);
                w.raw(chunk);
            }
            Msg::Refused { text } => {
                w.u8(code::REFUSED);
                w.bytes(text.as_bytes());
            }
            Msg::Link => w.u8(code::LINK),
            Msg::Progress {
                received,
                committed,
                blocked_ms,
            } => {
                w.u8(code::PROGRESS);
                w.varint(*received);
                w.varint(*committed);
                w.varint(*blocked_ms);
            }
            Msg::Order { hosts, moved } => {
                w.u8(code::ORDER);
                for list in [hosts, moved] {
                    w.varint(list.len() as u64);
                    for h in list {
                        w.varint(*h as u64);
                    }
                }
            }
            Msg::Bypassed { host, why } => {
                w.u8(code::BYPASSED);
                w.varint(*host as u64);
                w.bytes(why.as_bytes());
            }
            Msg::Done { received, refused } => {
                w.u8(code::DONE);
                w.varint(*received);
                w.varint(*refused as u64);
            }
            Msg::Have { files, at } => {
                w.u8(code::HAVE);
                w.varint(files.len() as u64);
                for (f, bits) in files {
                    w.varint(*f as u64);
                    w.bytes(bits);
                }
                w.varint(at.file as u64);
                w.varint(at.piece as u64);
                w.varint(at.offset);
            }
            Msg::Data {
                file,
                offset,
                resend,
                bytes,
            } => {
                w.u8(code::DATA);
                w.varint(*file as u64);
                w.varint(*offset);
                w.bool(*resend);
                w.bytes(bytes);
            }
            Msg::PieceEnd {
                file,
                piece,
                resend,
                hash,
                sig,
            } => {
                w.u8(code::PIECE_END);
                w.varint(*file as u64);
                w.varint(*piece as u64);
                w.bool(*resend);
                w.hash(hash);
                w.raw(sig);
            }
            Msg::End => w.u8(code::END),
            Msg::Fed => w.u8(code::FED),
            Msg::Ack { committed } => {
                w.u8(code::ACK);
                w.varint(*committed);
            }
            Msg::Nack { file, piece } => {
                w.u8(code::NACK);
                w.varint(*file as u64);
                w.varint(*piece as u64);
            }
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader::new(payload);
        let u32_of = |r: &mut Reader, what| -> Result<u32, DecodeError> {
            Ok(r.count(u32::MAX as usize, what)? as u32)
        };
        let text = |r: &mut Reader, what| -> Result<String, DecodeError> {
            Ok(String::from_utf8_lossy(r.bytes(TEXT, what)?).into_owned())
        };
        let m = match r.u8("message type")? {
            code::OPEN => {
                let purpose = match r.u8("purpose")? {
                    1 => Purpose::Control,
                    2 => Purpose::Relay,
                    _ => return Err(DecodeError::Invalid("purpose")),
                };
                Msg::Open {
                    purpose,
                    job: r.token("job")?,
                }
            }
            code::WHO => Msg::Who {
                key: r.array("key")?,
            },
            code::START => Msg::Start {
                ticket: r.bytes(SMALL * 64, "ticket")?.to_vec(),
                sig: r.array("signature")?,
                manifest: r.bytes(LARGE, "manifest")?.to_vec(),
                index: u32_of(&mut r, "index")?,
            },
            code::READY => {
                let n = r.count(r.remaining(), "files")?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(u32_of(&mut r, "file")?);
                }
                Msg::Ready { files }
            }
            code::ASK => {
                let window = u32_of(&mut r, "window")?;
                let n = r.count(MAX_ASK, "runs")?;
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    runs.push((
                        u32_of(&mut r, "file")?,
                        u32_of(&mut r, "piece")?,
                        r.count(MAX_ASK, "pieces")? as u32,
                    ));
                }
                Msg::Ask { window, runs }
            }
            code::HINTS => {
                let window = u32_of(&mut r, "window")?;
                let n = r.count(MAX_ASK, "pieces")?;
                let mut pieces = Vec::with_capacity(n);
                for _ in 0..n {
                    pieces.push((
                        u32_of(&mut r, "file")?,
                        u32_of(&mut r, "piece")?,
                        r.hash("hash")?,
                    ));
                }
                let k = r.count(r.remaining() / 17, "chunks")?;
                let mut chunks = Vec::with_capacity(k);
                for _ in 0..k {
                    let name = r.token("chunk")?;
                    let at = match r.varint("chunk's file")? {
                        0 => None,
                        f => Some((
                            u32::try_from(f - 1)
                                .map_err(|_| DecodeError::Invalid("chunk's file"))?,
                            r.varint("chunk's offset")?,
                        )),
                    };
                    chunks.push((name, at));
                }
                Msg::Hints {
                    window,
                    pieces,
                    chunks,
                }
            }
            code::REF => Msg::Ref {
                file: u32_of(&mut r, "file")?,
                offset: r.varint("offset")?,
                len: r.count(crate::chunk::MAX_CHUNK, "length")? as u32,
                skip: r.count(crate::chunk::MAX_CHUNK, "skip")? as u32,
                chunk: r.token("chunk")?,
            },
            code::REFUSED => Msg::Refused {
                text: text(&mut r, "text")?,
            },
            code::LINK => Msg::Link,
            code::PROGRESS => Msg::Progress {
                received: r.varint("received")?,
                committed: r.varint("committed")?,
                blocked_ms: r.varint("blocked")?,
            },
            code::ORDER => {
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = r.count(super::ticket::MAX_HOSTS, "hosts")?;
                    for _ in 0..n {
                        list.push(u32_of(&mut r, "host")?);
                    }
                }
                let [hosts, moved] = lists;
                Msg::Order { hosts, moved }
            }
            code::BYPASSED => Msg::Bypassed {
                host: u32_of(&mut r, "host")?,
                why: text(&mut r, "reason")?,
            },
            code::DONE => Msg::Done {
                received: r.varint("received")?,
                refused: u32_of(&mut r, "refused")?,
            },
            code::HAVE => {
                let n = r.count(r.remaining(), "files")?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let f = u32_of(&mut r, "file")?;
                    files.push((f, r.bytes(LARGE, "bitmap")?.to_vec()));
                }
                let at = StreamPos {
                    file: u32_of(&mut r, "stream's file")?,
                    piece: u32_of(&mut r, "stream's piece")?,
                    offset: r.varint("stream's offset")?,
                };
                Msg::Have { files, at }
            }
            code::DATA => Msg::Data {
                file: u32_of(&mut r, "file")?,
                offset: r.varint("offset")?,
                resend: r.bool("resend")?,
                bytes: r.bytes(super::FRAME, "data")?.to_vec(),
            },
            code::PIECE_END => Msg::PieceEnd {
                file: u32_of(&mut r, "file")?,
                piece: u32_of(&mut r, "piece")?,
                resend: r.bool("resend")?,
                hash: r.hash("hash")?,
                sig: r.array("signature")?,
            },
            code::END => Msg::End,
            code::FED => Msg::Fed,
            code::ACK => Msg::Ack {
                committed: r.varint("committed")?,
            },
            code::NACK => Msg::Nack {
                file: u32_of(&mut r, "file")?,
                piece: u32_of(&mut r, "piece")?,
            },
            t => return Err(DecodeError::UnknownMessage(t)),
        };
        r.finish(m.name())?;
        Ok(m)
    }
}

/// Appends one message as a frame to `buf` (its bytes copied once).
pub fn frame_into(buf: &mut Vec<u8>, m: &Msg) {
    let at = buf.len();
    if let Msg::Data { bytes, .. } = m {
        buf.reserve(bytes.len() + 32);
    }
    buf.extend_from_slice(&[0; 4]);
    let mut w = Writer {
        buf: std::mem::take(buf),
    };
    m.encode_into(&mut w);
    *buf = w.buf;
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Writes one message as a frame (not flushed).
pub fn send(w: &mut dyn Write, m: &Msg) -> Result<(), TransferError> {
    let mut frame = Vec::new();
    frame_into(&mut frame, m);
    w.write_all(&frame)
        .map_err(|e| TransferError::connection(&e))
}

/// Writes one message and flushes.
pub fn send_now(w: &mut dyn Write, m: &Msg) -> Result<(), TransferError> {
    send(w, m)?;
    w.flush().map_err(|e| TransferError::connection(&e))
}

/// Reads one message whose frame is at most `limit` bytes; `None` at a clean
/// end of the stream.
pub fn recv(r: &mut dyn Read, limit: usize) -> Result<Option<Msg>, TransferError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(TransferError::Connection(
                    "the peer closed mid-frame".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::connection(&e)),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > limit {
        return Err(TransferError::Malformed(DecodeError::TooLarge {
            what: "fan-out frame",
            limit,
        }));
    }
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload)
        .map_err(|e| TransferError::connection(&e))?;
    Ok(Some(Msg::decode(&payload)?))
}

/// A daemon's first answer on a fan-out connection: like [`expect`], but a
/// daemon from before fan-out protocol 2 answers the new hello with
/// ferry's own session hello (`ferry`, version 0), named as such.
pub fn expect_first(r: &mut dyn Read, limit: usize) -> Result<Msg, TransferError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head)
        .map_err(|e| TransferError::connection(&e))?;
    if &head == b"ferr" {
        return Err(TransferError::Remote(super::OLD_DAEMON.into()));
    }
    expect(&mut std::io::Read::chain(&head[..], r), limit)
}

/// Like [`recv`], with the end of the stream an error.
pub fn expect(r: &mut dyn Read, limit: usize) -> Result<Msg, TransferError> {
    recv(r, limit)?
        .ok_or_else(|| TransferError::Connection("the peer closed the connection".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let all = vec![
            Msg::Open {
                purpose: Purpose::Relay,
                job: [7; 16],
            },
            Msg::Who { key: [1; 32] },
            Msg::Start {
                ticket: vec![1, 2],
                sig: [3; 64],
                manifest: vec![4; 100],
                index: 5,
            },
            Msg::Ready {
                files: vec![1, 3, 70_000],
            },
            Msg::Ask {
                window: 9,
                runs: vec![(1, 0, 8), (4, 2, 1)],
            },
            Msg::Hints {
                window: 9,
                pieces: vec![(1, 0, [9; 32]), (1, 1, [8; 32])],
                chunks: vec![([3; 16], None), ([4; 16], Some((2, 4096)))],
            },
            Msg::Ref {
                file: 2,
                offset: 77,
                len: 4000,
                skip: 12,
                chunk: [5; 16],
            },
            Msg::Refused { text: "no".into() },
            Msg::Link,
            Msg::Progress {
                received: 10,
                committed: 5,
                blocked_ms: 3,
            },
            Msg::Order {
                hosts: vec![0, 2, 1],
                moved: vec![1],
            },
            Msg::Bypassed {
                host: 2,
                why: "dead".into(),
            },
            Msg::Done {
                received: 1 << 40,
                refused: 1,
            },
            Msg::Have {
                files: vec![(0, vec![0xff, 1])],
                at: StreamPos {
                    file: 3,
                    piece: 2,
                    offset: 9 << 20,
                },
            },
            Msg::Data {
                file: 3,
                offset: 1 << 33,
                resend: true,
                bytes: vec![5; 1000],
            },
            Msg::PieceEnd {
                file: 1,
                piece: 2,
                resend: false,
                hash: [4; 32],
                sig: [6; 64],
            },
            Msg::End,
            Msg::Ack { committed: 9 },
            Msg::Nack { file: 1, piece: 0 },
            Msg::Fed,
        ];
        for m in all {
            let mut buf = Vec::new();
            send(&mut buf, &m).unwrap();
            let back = recv(&mut buf.as_slice(), LARGE).unwrap().unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn frames_appended_to_one_buffer_read_back_in_order() {
        let mut buf = Vec::new();
        let a = Msg::Ack { committed: 3 };
        let b = Msg::Data {
            file: 1,
            offset: 9,
            resend: false,
            bytes: vec![7; 300],
        };
        frame_into(&mut buf, &a);
        frame_into(&mut buf, &b);
        let mut r = buf.as_slice();
        assert_eq!(recv(&mut r, LARGE).unwrap(), Some(a));
        assert_eq!(recv(&mut r, LARGE).unwrap(), Some(b));
        assert_eq!(recv(&mut r, LARGE).unwrap(), None);
    }

    #[test]
    fn a_daemon_from_before_protocol_2_is_named_as_such() {
        // what such a daemon answers `ferryFAN2` with: ferry's own hello
        let mut old: &[u8] = b"ferry\0\0";
        let e = expect_first(&mut old, SMALL).unwrap_err().to_string();
        assert_eq!(e, crate::fanout::OLD_DAEMON);
        let mut buf = Vec::new();
        send(&mut buf, &Msg::Who { key: [2; 32] }).unwrap();
        let m = expect_first(&mut buf.as_slice(), SMALL).unwrap();
        assert_eq!(m, Msg::Who { key: [2; 32] });
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let mut buf = Vec::new();
        send(
            &mut buf,
            &Msg::Data {
                file: 0,
                offset: 0,
                resend: false,
                bytes: vec![0; 20_000],
            },
        )
        .unwrap();
        assert!(recv(&mut buf.as_slice(), SMALL).is_err());
    }
}
