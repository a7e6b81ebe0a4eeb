//! Frames over a byte stream: the session's only contact with I/O. Reads check
//! the announced length against the frame limit before allocating; writes are
//! buffered and counted, and optionally paced to a bandwidth limit.

use crate::error::TransferError;
use crate::proto::codec::Writer;
use crate::proto::{frame, BlockHead, Message, MAX_BLOCK_HEAD};
use std::io::{self, BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes that crossed the connection, in each direction.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Buffers of data blocks already handled, for the readers to fill again
/// (a fresh 256 KiB allocation per block cost page faults and zeroing).
#[derive(Clone, Default)]
pub struct Spares(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Spares {
    /// At most this many buffers wait for reuse.
    const KEEP: usize = 32;

    /// Gives a handled block's buffer back.
    pub fn give(&self, buf: Vec<u8>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < Self::KEEP {
            kept.push(buf);
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }
}

/// The reader's buffer: many small frames per read, and smaller than a data
/// block ([`crate::proto::BLOCK_SIZE`]) so that most of a block bypasses it.
const READ_BUFFER: usize = 64 << 10;

pub struct FrameReader<R> {
    /// Buffered: frames are small and many, and each unbuffered read would be a
    /// system call.
    inner: io::BufReader<R>,
    buf: Vec<u8>,
    counters: Arc<Counters>,
    spares: Option<Spares>,
    /// The stream's other end is in this process ([`crate::transport::Stream::in_process`]).
    in_process: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, counters: Arc<Counters>) -> Self {
        FrameReader {
            // smaller than a data block: once the buffer is drained, the rest
            // of a block is read from the stream straight into its own buffer
            inner: io::BufReader::with_capacity(READ_BUFFER, inner),
            buf: Vec::new(),
            counters,
            spares: None,
            in_process: false,
        }
    }

    /// Marks the stream as one whose other end is in this process.
    pub fn set_in_process(&mut self, in_process: bool) {
        self.in_process = in_process;
    }

    /// Whether the stream's other end is in this process.
    pub fn in_process(&self) -> bool {
        self.in_process
    }

    /// Fills data blocks into buffers from `spares` when there are some.
    pub fn reuse(&mut self, spares: Spares) {
        self.spares = Some(spares);
    }

    /// The next message. A clean end of stream before a frame starts is
    /// `Ok(None)`; in the middle of one it is an error.
    pub fn recv(&mut self) -> Result<Option<Message>, TransferError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(TransferError::Connection(
                        "the peer closed the connection mid-frame".into(),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(&e)),
            }
        }
        let len = frame::payload_len(header)?;
        // the bytes of a data block go straight into the buffer the message
        // will carry (for large blocks, from the stream itself: see `new`);
        // anything else is decoded from the whole payload
        let mut head = [0u8; MAX_BLOCK_HEAD];
        let n = len.min(MAX_BLOCK_HEAD);
        read_exact(&mut self.inner, &mut head[..n])?;
        let msg = match BlockHead::peek(&head[..n]).filter(|(h, used)| used + h.len == len) {
            Some((block, used)) => {
                let mut bytes = self.spares.as_ref().and_then(Spares::take);
                let bytes = bytes.get_or_insert_with(Vec::new);
                // a spare already holds initialised bytes: no need to zero them
                if bytes.len() >= block.len {
                    bytes.truncate(block.len);
                } else {
                    bytes.resize(block.len, 0);
                }
                let k = n - used;
                bytes[..k].copy_from_slice(&head[used..n]);
                read_exact(&mut self.inner, &mut bytes[k..])?;
                block.into_message(std::mem::take(bytes))
            }
            None => {
                self.buf.resize(len, 0);
                self.buf[..n].copy_from_slice(&head[..n]);
                read_exact(&mut self.inner, &mut self.buf[n..])?;
                Message::decode(&self.buf)?
            }
        };
        self.counters
            .received
            .fetch_add(4 + len as u64, Ordering::Relaxed);
        Ok(Some(msg))
    }

    /// Whether a whole frame is already buffered: [`recv`](Self::recv) would
    /// return it without reading.
    pub fn has_buffered_frame(&self) -> bool {
        let b = self.inner.buffer();
        b.len() >= 4
            && frame::payload_len([b[0], b[1], b[2], b[3]]).is_ok_and(|len| b.len() >= 4 + len)
    }

    /// Like [`recv`](Self::recv), but the end of the stream is an error.
    pub fn expect(&mut self) -> Result<Message, TransferError> {
        self.recv()?
            .ok_or_else(|| TransferError::Connection("the peer closed the connection".into()))
    }
}

/// Reads exactly `buf.len()` bytes of a frame.
fn read_exact(inner: &mut impl Read, buf: &mut [u8]) -> Result<(), TransferError> {
    inner.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            TransferError::Connection("the peer closed the connection mid-frame".into())
        } else {
            read_error(&e)
        }
    })
}

/// A failed read, saying so plainly when it was a timeout.
fn read_error(e: &io::Error) -> TransferError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransferError::Connection(
            "timed out: nothing arrived from the peer within --timeout".into(),
        ),
        _ => TransferError::connection(e),
    }
}

/// Paces writes to a rate, in bytes per second. One pacer is shared by
/// every stream of a transfer (cloned into each stream's writer), so that
/// `--bwlimit` holds for the transfer in total however many streams carry
/// data: a file under the split size sent on one of two streams gets the
/// whole rate, not half.
#[derive(Clone)]
pub struct Pacer(Arc<PacerState>);

struct PacerState {
    rate: u64,
    start: Instant,
    /// Bytes written through any writer sharing this pacer.
    sent: AtomicU64,
}

impl Pacer {
    /// A pacer to `rate` bytes per second; none for 0.
    pub fn new(rate: u64) -> Option<Pacer> {
        (rate > 0).then(|| {
            Pacer(Arc::new(PacerState {
                rate,
                start: Instant::now(),
                sent: AtomicU64::new(0),
            }))
        })
    }

    /// Counts `n` bytes written and sleeps until the total is due.
    fn pace(&self, n: u64) {
        let p = &*self.0;
        let sent = p.sent.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::from_secs_f64(sent as f64 / p.rate as f64);
        let elapsed = p.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

pub struct FrameWriter<W: Write> {
    inner: BufWriter<W>,
    scratch: Writer,
    counters: Arc<Counters>,
    pacer: Option<Pacer>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, counters: Arc<Counters>) -> Self {
        FrameWriter {
            inner: BufWriter::with_capacity(256 << 10, inner),
            scratch: Writer::default(),
            counters,
            pacer: None,
        }
    }

    /// Limits the sending rate (bytes per second; 0 for none).
    pub fn set_rate(&mut self, rate: u64) {
        self.pacer = Pacer::new(rate);
    }

    /// The pacer this writer writes through, to share with another
    /// stream's writer of the same transfer ([`set_pacer`](Self::set_pacer)).
    pub fn pacer(&self) -> Option<Pacer> {
        self.pacer.clone()
    }

    /// Paces this writer with another's pacer: their rate is one total.
    pub fn set_pacer(&mut self, pacer: Option<Pacer>) {
        self.pacer = pacer;
    }

    pub fn send(&mut self, msg: &Message) -> Result<(), TransferError> {
        self.scratch.buf.clear();
        self.scratch.buf.extend_from_slice(&[0; 4]);
        msg.encode(&mut self.scratch);
        self.write_scratch(&[])
    }

    /// The byte counters this writer adds to.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The underlying stream, flushed.
    pub fn into_inner(self) -> Result<W, TransferError> {
        self.inner
            .into_inner()
            .map_err(|e| TransferError::connection(e.error()))
    }

    /// Sends a `Segment` message whose bytes stay in the caller's buffer.
    pub fn send_segment(
        &mut self,
        file: u32,
        offset: u64,
        compressed: bool,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        self.scratch.buf.clear();
        self.scratch.buf.extend_from_slice(&[0; 4]);
        crate::proto::encode_segment_header(
            &mut self.scratch,
            file,
            offset,
            compressed,
            raw_len,
            bytes.len(),
        );
        self.write_scratch(bytes)
    }

    /// Sends a `Data` message whose bytes stay in the caller's buffer.
    pub fn send_data(
        &mut self,
        file: u32,
        compressed: bool,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        self.scratch.buf.clear();
        self.scratch.buf.extend_from_slice(&[0; 4]);
        crate::proto::encode_data_header(&mut self.scratch, file, compressed, raw_len, bytes.len());
        self.write_scratch(bytes)
    }

    fn write_scratch(&mut self, tail: &[u8]) -> Result<(), TransferError> {
        let len = self.scratch.buf.len() - 4 + tail.len();
        debug_assert!(len <= frame::MAX_FRAME);
        self.scratch.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        let io = |e: io::Error| read_error(&e);
        self.inner.write_all(&self.scratch.buf).map_err(io)?;
        self.inner.write_all(tail).map_err(io)?;
        let n = (4 + len) as u64;
        self.counters.sent.fetch_add(n, Ordering::Relaxed);
        if let Some(p) = &self.pacer {
            p.pace(n);
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), TransferError> {
        self.inner
            .flush()
            .map_err(|e| TransferError::connection(&e))
    }

    /// Writes raw bytes (the handshake preamble) and flushes.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        self.inner
            .write_all(bytes)
            .map_err(|e| TransferError::connection(&e))?;
        self.counters
            .sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.flush()
    }
}

impl<R: Read> FrameReader<R> {
    /// The byte counters this reader adds to.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The underlying stream, with whatever was read ahead still in it.
    pub fn into_inner(self) -> io::BufReader<R> {
        self.inner
    }

    /// Reads whatever raw bytes are available (draining a refused connection).
    pub fn raw_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }

    /// Reads exactly `N` raw bytes (the handshake preamble).
    pub fn raw<const N: usize>(&mut self) -> Result<[u8; N], TransferError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                TransferError::Connection(
                    "the peer closed the connection during the handshake".into(),
                )
            } else {
                read_error(&e)
            }
        })?;
        self.counters
            .received
            .fetch_add(N as u64, Ordering::Relaxed);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffered_frame_is_seen_only_when_whole() {
        let counters = Arc::new(Counters::default());
        let mut w = FrameWriter::new(Vec::new(), counters.clone());
        for file in 0..2 {
            w.send(&Message::Want { file, delta: None }).unwrap();
        }
        w.flush().unwrap();
        let bytes = w.inner.get_ref().clone();
        // two whole frames, then the first three bytes of a third
        let mut stream = bytes.clone();
        stream.extend_from_slice(&bytes[..3]);
        let mut r = FrameReader::new(stream.as_slice(), counters);
        assert!(!r.has_buffered_frame(), "nothing read yet");
        assert!(matches!(r.recv(), Ok(Some(Message::Want { file: 0, .. }))));
        assert!(r.has_buffered_frame());
        assert!(matches!(r.recv(), Ok(Some(Message::Want { file: 1, .. }))));
        assert!(!r.has_buffered_frame(), "a partial frame is not whole");
    }

    #[test]
    fn data_blocks_read_into_used_buffers_arrive_whole() {
        // blocks shorter and longer than a head, than the read buffer and
        // than the spares, between small messages, read into spares holding
        // older bytes (longer and shorter than the block)
        let counters = Arc::new(Counters::default());
        let mut w = FrameWriter::new(Vec::new(), counters.clone());
        let mut sent = Vec::new();
        for (i, len) in [
            0,
            1,
            41,
            42,
            43,
            5000,
            READ_BUFFER + 7,
            crate::proto::BLOCK_SIZE,
        ]
        .into_iter()
        .enumerate()
        {
            let bytes: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
            sent.push(Message::Want {
                file: i as u32,
                delta: Some([1; 16]),
            });
            sent.push(Message::Data {
                file: i as u32,
                compressed: false,
                raw_len: len as u32,
                bytes: bytes.clone(),
            });
            sent.push(Message::Segment {
                file: i as u32,
                offset: u64::MAX - len as u64,
                compressed: false,
                raw_len: len as u32,
                bytes,
            });
        }
        for m in &sent {
            w.send(m).unwrap();
        }
        w.flush().unwrap();
        let stream = w.inner.get_ref().clone();
        let spares = Spares::default();
        let mut r = FrameReader::new(stream.as_slice(), counters.clone());
        r.reuse(spares.clone());
        for m in &sent {
            spares.give(vec![0xAB; 3000]);
            spares.give(vec![0xCD; crate::proto::BLOCK_SIZE + 100]);
            assert_eq!(&r.recv().unwrap().unwrap(), m);
        }
        assert!(r.recv().unwrap().is_none());
        assert_eq!(
            counters.received.load(Ordering::Relaxed),
            stream.len() as u64
        );
    }

    #[test]
    fn a_data_frame_longer_than_its_block_is_refused() {
        let counters = Arc::new(Counters::default());
        let mut payload = Message::Data {
            file: 1,
            compressed: false,
            raw_len: 3,
            bytes: b"abc".to_vec(),
        }
        .to_payload();
        payload.push(0);
        let mut stream = Vec::new();
        frame::put_frame(&mut stream, &payload);
        let mut r = FrameReader::new(stream.as_slice(), counters);
        let err = r.recv().unwrap_err().to_string();
        assert!(err.contains("trailing"), "{err}");
    }
}
