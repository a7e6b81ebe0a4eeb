//! The receiver's I/O threads (rsync's `io.c`): one reads the main stream in
//! batches, one per joined stream reads segments, all into one bounded queue
//! (an in-process stream is read on the receiver's own thread instead,
//! [`Inbox::Here`]); one writes what the receiver sends, batched by the
//! [`Outbox`]. Not for
//! deciding anything about what arrives: that is the rest of the receiver.

use super::{violation, Receiver};
use crate::error::TransferError;
use crate::proto::{Message, BLOCK_SIZE};
use crate::session::wire::{FrameReader, FrameWriter, Spares};
use crate::session::Stream;
use std::io::Read;
use std::io::Write;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Frames from the transfer's streams, in one queue.
pub(super) enum Inbound {
    Primary(Result<Option<Message>, TransferError>),
    /// Messages of the main stream that arrived together: passed on as one,
    /// so that many small ones cost the receiver one wake-up.
    Batch(Vec<Message>),
    Secondary(Result<Message, TransferError>),
}

/// Batches of frames waiting for the receiver: bounded, so that a fast
/// sender is held back by TCP instead of filling memory (a batch holds less
/// than [`BATCH_DATA`] of file data plus one block, so at most ~18 MiB wait).
pub(super) const INBOUND_DEPTH: usize = 64;

/// A batch of frames ends once it holds this much file data: three or four
/// small files, a wake-up of the receiver's thread for them all. Larger
/// batches were no faster for 20,000 small files, and let more small chunks
/// of a delta wait (+8 MiB of peak memory at 128 KiB).
pub(super) const BATCH_DATA: usize = BLOCK_SIZE / 8;

/// Messages for the writer thread, handed over in batches. Frequent small
/// ones (a `Want` per file, events, list acknowledgements) wait in `held`
/// until the receiver's thread has handled what arrived and is about to wait
/// for more, or until [`OUT_BATCH`] are held; any other message goes at once,
/// with those held before it. A `Want` per small file woke the writer thread
/// once per file.
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Vec<Message>>,
    pub(super) held: std::cell::RefCell<Vec<Message>>,
}

/// Messages held at most before they go to the writer thread.
pub(super) const OUT_BATCH: usize = 64;

impl Outbox {
    pub(super) fn send(&self, m: Message) -> Result<(), TransferError> {
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
    pub(super) fn flush(&self) -> Result<(), TransferError> {
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
pub(super) fn write_messages<W: Write>(
    mut writer: FrameWriter<W>,
    rx: mpsc::Receiver<Vec<Message>>,
) {
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
use crate::store::destination::Destination;

impl<D: Destination> Receiver<'_, D> {
    /// The next frame from any stream. Extra streams may only carry segments.
    pub(super) fn next<R: Read>(&mut self, inbox: &mut Inbox<R>) -> Result<Message, TransferError> {
        if let Some(m) = self.arrived.pop_front() {
            return Ok(m);
        }
        let inbound = match inbox {
            Inbox::Queue(q) => q,
            Inbox::Here(reader) => {
                // what arrived is handled: what it asked for goes out before
                // a read that may wait
                if !reader.has_buffered_frame() {
                    self.out.flush()?;
                }
                return match reader.recv() {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err(TransferError::Connection(
                        "the peer closed the connection".into(),
                    )),
                    Err(e) => Err(e),
                };
            }
        };
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
}

/// Where the receiver's frames come from.
pub(super) enum Inbox<R> {
    /// The queue the stream threads fill ([`spawn_readers`]): a stream to
    /// another process or machine, read (and decrypted) while the receiver
    /// writes what came before.
    Queue(mpsc::Receiver<Inbound>),
    /// The main stream itself, read on the receiver's own thread: an
    /// in-process pair ([`crate::transport::Stream::in_process`]), whose
    /// sender is a thread of this process and which has no extra streams.
    /// A reader thread there only adds a hand-off of every block between
    /// threads (over SFTP, 34,000 wake-ups of it and as many of the
    /// receiver per 2 GiB, `bench/NOTES.md` §40 and §44).
    Here(FrameReader<R>),
}
/// Starts the threads that read the transfer's streams: the main one, in
/// batches, and each extra stream that joins (segments of large files), all
/// into one bounded queue. Handled data blocks' buffers come back through
/// `spares`.
/// An in-process stream without extra streams is read by the receiver
/// itself ([`Inbox::Here`]), with no thread.
pub(super) fn spawn_readers<R: Read + Send + 'static>(
    mut reader: FrameReader<R>,
    joins: Option<mpsc::Receiver<Stream>>,
    spares: Spares,
) -> Result<Inbox<R>, TransferError> {
    reader.reuse(spares.clone());
    if reader.in_process() && joins.is_none() {
        return Ok(Inbox::Here(reader));
    }
    let (in_tx, inbound) = mpsc::sync_channel::<Inbound>(INBOUND_DEPTH);
    let counters = reader.counters();
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
    if let Some(joins) = joins {
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
    Ok(Inbox::Queue(inbound))
}

/// Starts the writer thread; what the receiver sends goes through the
/// returned [`Outbox`].
pub(super) fn spawn_writer<W: Write + Send + 'static>(
    writer: FrameWriter<W>,
) -> Result<(Outbox, JoinHandle<()>), TransferError> {
    let (out, rx) = mpsc::channel::<Vec<Message>>();
    let writer_thread = std::thread::Builder::new()
        .name("ferry-recv-tx".into())
        .spawn(move || write_messages(writer, rx))
        .map_err(|e| TransferError::local("thread", &e))?;
    Ok((
        Outbox {
            tx: out,
            held: Default::default(),
        },
        writer_thread,
    ))
}

#[cfg(test)]
mod tests {
    use super::{Outbox, OUT_BATCH};

    #[test]
    fn the_outbox_holds_only_what_may_wait_and_keeps_the_order() {
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
}
