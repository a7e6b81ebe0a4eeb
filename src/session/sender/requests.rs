//! The receiver's requests as this side takes them in: a reader thread turns
//! its messages into [`FromPeer`] work on one queue (stream workers report on
//! it too), and the main thread takes them in order, setting aside what
//! arrives while a file is being sent. Not for what a request means: that is
//! [`super::Sender::handle`].

use super::source::Unsent;
use super::{Sender, LIST_AHEAD};
use crate::check::CheckValue;
use crate::chunk::RebuildKey;
use crate::error::TransferError;
use crate::proto::{Event, Message, Summary};
use crate::session::text;
use crate::session::wire::FrameReader;
use crate::store::source::Source;
use std::io::{Read, Write};
use std::sync::mpsc;

/// What the reader thread passes on.
pub(super) enum FromPeer {
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
    /// `--remove-source-files`: these entries are verified and durable at
    /// the destination.
    Settled(Vec<u32>),
    Finish(Summary),
    /// An event from a remote receiver, for this client's callback.
    Event(Event),
    /// A stream worker finished a segment: its check value, or why it failed.
    SegmentDone {
        file: u32,
        start: u64,
        result: Result<CheckValue, Unsent>,
    },
    Failed(TransferError),
}

/// The reader thread: turns the receiver's messages into work for the writer.
pub(super) fn read_requests<R: Read>(mut reader: FrameReader<R>, tx: mpsc::Sender<FromPeer>) {
    loop {
        let out = match reader.recv() {
            Ok(Some(Message::Want { file, delta })) => FromPeer::Want { file, delta },
            Ok(Some(Message::Need { file, ranges })) => FromPeer::Need { file, ranges },
            Ok(Some(Message::ListAck { entries })) => FromPeer::ListAck(entries),
            Ok(Some(Message::Settled { files })) => FromPeer::Settled(files),
            Ok(Some(Message::Event(e))) => FromPeer::Event(e),
            Ok(Some(Message::Finish(s))) => {
                let _ = tx.send(FromPeer::Finish(s));
                return;
            }
            Ok(Some(Message::Fatal(t))) => FromPeer::Failed(TransferError::from_peer(text(&t))),
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

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// The next request: those set aside while a file was sent first, then
    /// what arrived; waits (what was written flushed first) if there is none.
    pub(super) fn next_job(&mut self) -> Result<FromPeer, TransferError> {
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

    /// While listing: once [`LIST_AHEAD`] entries are unacknowledged, serves
    /// the receiver's requests until it has taken in more of the list.
    pub(super) fn wait_for_ack(&mut self) -> Result<(), TransferError> {
        while self.listed - self.acked >= LIST_AHEAD {
            let job = self.next_job()?;
            self.cancel.check()?;
            self.handle(job)?;
        }
        Ok(())
    }

    /// Serves whatever requests have arrived, without waiting.
    /// After a write to the receiver failed: the error the receiver sent
    /// before it went away, if it sent one (its `Fatal`, taken off the
    /// connection by the reader thread, which stops after it). Waits for
    /// the reader thread to get that far, at most `wait`, and no longer once
    /// `reader_finished` says it has stopped (all it sent is then queued).
    pub(super) fn peer_failure(
        &mut self,
        wait: std::time::Duration,
        reader_finished: impl Fn() -> bool,
    ) -> Option<TransferError> {
        let said = |e: TransferError| (!matches!(e, TransferError::Connection(_))).then_some(e);
        while let Some(job) = self.deferred.pop_front() {
            if let FromPeer::Failed(e) = job {
                return said(e);
            }
        }
        let until = std::time::Instant::now() + wait;
        loop {
            let finished = reader_finished();
            let left = until.checked_duration_since(std::time::Instant::now())?;
            match self
                .rx
                .recv_timeout(left.min(std::time::Duration::from_millis(20)))
            {
                Ok(FromPeer::Failed(e)) => return said(e),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) if !finished => continue,
                Err(_) => return None,
            }
        }
    }

    pub(super) fn poll(&mut self) -> Result<(), TransferError> {
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
    pub(super) fn pass_events(&mut self) -> Result<(), TransferError> {
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

    pub(super) fn deliver(&mut self, e: Event) -> Result<(), TransferError> {
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
}
