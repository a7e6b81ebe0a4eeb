//! Remote to remote through this host, streamed: `ferry cp -3 host1:a
//! host2:b` (and any copy with a daemon at either end) opens the
//! destination as a push (its end runs the receiver) and the source as a
//! pull (its end runs the sender), and forwards the session's frames
//! between the two connections here, one frame at a time. Nothing is
//! written to this host's disk and memory stays bounded (a frame, at most a
//! data block, plus each connection's buffers: about a MiB, whatever the
//! size of the files). The two ends speak to each other as in any
//! transfer: the destination's receiver checks every file against the
//! sender's check values and publishes it atomically, and asks for the
//! chunks it lacks, so a changed file costs only its delta on both links.
//!
//! It plugs into the ordinary client machinery as two [`Side`]s: the push
//! to the destination runs [`Through`] as its "sender", which opens the
//! pull from the source with [`Splice`] as its "receiver". So each end is
//! reached as a single transfer would reach it (ssh with `--transport`'s
//! SFTP fallback, where both halves then run here over pipes; a daemon over
//! TLS).
//!
//! Not for deciding the route (that is [`super`]) nor for the rules of the
//! conversation: the relay reads only what it must (events, which it shows;
//! the end of the session; a fatal error, which it passes on) and leaves
//! every check to the two ends.

use crate::error::TransferError;
use crate::proto::{Message, Request, Role, Summary};
use crate::session::receiver::{self, Requested};
use crate::session::side::{Reader, Writer};
use crate::session::wire::{Counters, Spares};
use crate::session::{self, sender, Cancel, EventFn, Side};
use crate::transfer::endpoint::Peer;
use crate::transfer::Plan;
use std::sync::{Arc, Mutex};

/// One end of the relay, and the bytes that crossed its connection.
pub(super) struct End<'a> {
    pub peer: Peer<'a>,
    /// The host as the user named it, for messages.
    pub name: String,
    pub counters: Arc<Counters>,
}

/// What went wrong first, however the two halves of the relay end: the
/// error a user sees. The other end's reaction to it (a connection closed,
/// a remote side that exited) comes later and says less.
#[derive(Default)]
pub(super) struct FirstFailure(Mutex<Option<TransferError>>);

impl FirstFailure {
    /// Keeps `e` if nothing failed before it; returns a stand-in that says
    /// the same, for the caller to end with (the kept one is the answer).
    fn keep(&self, e: TransferError) -> TransferError {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = first.as_ref().unwrap_or(&e).to_string();
        if first.is_none() {
            *first = Some(e);
        }
        TransferError::Connection(text)
    }

    /// The first failure, if the relay saw one.
    pub(super) fn take(&self) -> Option<TransferError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs the client's half of `request` against `peer`, the local half on
/// `side`, as any transfer reaches a peer ([`super::super::reach`]), tried
/// once (the relay as a whole is retried). A failure ends with the `ferry
/// doctor` command for this end.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_peer(
    plan: &Plan,
    peer: &Peer<'_>,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    side: &dyn Side,
) -> Result<Summary, TransferError> {
    use super::super::{peer_doctor_target, reach::reach_peer, with_doctor_hint};
    let reached = reach_peer(
        plan,
        peer,
        request,
        local_paths,
        events,
        cancel,
        counters,
        side,
    );
    reached.map_err(|e| with_doctor_hint(e, &peer_doctor_target(peer)))
}

/// The push's sending half: instead of reading files, it pulls them from
/// the source and splices that session into this one.
pub(super) struct Through<'a> {
    pub plan: &'a Plan,
    pub source: End<'a>,
    /// The destination as the user named it, for messages.
    pub dest_name: String,
    pub events: &'a EventFn<'a>,
    pub failure: &'a FirstFailure,
}

impl Side for Through<'_> {
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        // (the options as the destination was sent them: the source gets
        // the same, so that both ends agree on what the session carries)
        let splice = Splice {
            asked: names_asked(&cfg.sources, cfg.options.relative),
            dest: Mutex::new(Some((reader, writer))),
            dest_link_marks: cfg.options.link_marks,
            source: self.source.name.clone(),
            dest_name: self.dest_name.clone(),
            events: self.events,
            failure: self.failure,
        };
        let request = Request {
            role: Role::ServerSends,
            paths: cfg.sources,
            options: cfg.options.clone(),
        };
        on_peer(
            self.plan,
            &self.source.peer,
            request,
            vec![Vec::new()],
            self.events,
            cancel,
            &self.source.counters,
            &splice,
        )
        // (the source's own failure, not how the destination takes it)
        .map_err(|e| self.failure.keep(e))
    }

    fn receive(
        &self,
        _: Reader,
        _: Writer,
        _: receiver::Config<'_>,
        _: &Cancel,
    ) -> Result<Summary, TransferError> {
        Err(TransferError::Internal(
            "the relay's destination end was asked to receive".into(),
        ))
    }
}

/// The pull's receiving half: forwards the source's session to the
/// destination's connection and back.
struct Splice<'a> {
    /// What the pull asked the source for: the names it may answer with.
    asked: Requested,
    /// The destination's connection, until the source's session starts.
    dest: Mutex<Option<(Reader, Writer)>>,
    /// Whether the destination was told to expect hard-link marks.
    dest_link_marks: bool,
    /// The source and the destination as the user named them, for messages.
    source: String,
    dest_name: String,
    events: &'a EventFn<'a>,
    failure: &'a FirstFailure,
}

impl Side for Splice<'_> {
    fn send(
        &self,
        _: Reader,
        _: Writer,
        _: sender::Config<'_>,
        _: &Cancel,
    ) -> Result<Summary, TransferError> {
        Err(TransferError::Internal(
            "the relay's source end was asked to send".into(),
        ))
    }

    fn receive(
        &self,
        from_source: Reader,
        to_source: Writer,
        cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        let (from_dest, to_dest) = self
            .dest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                TransferError::Internal("the relay's source session started twice".into())
            })?;
        if cfg.options.link_marks != self.dest_link_marks {
            // an older ferry at one end: the two would read the list apart
            return Err(self.failure.keep(TransferError::Usage(
                "-H cannot be relayed between these two ends: one ferry is too old to mark hard links"
                    .into(),
            )));
        }
        let (events, failure) = (self.events, self.failure);
        let (source, dest) = (self.source.as_str(), self.dest_name.as_str());
        let asked = &self.asked;
        std::thread::scope(|scope| {
            let down = std::thread::Builder::new()
                .name("ferry-relay-down".into())
                .spawn_scoped(scope, move || {
                    let how = (events, cancel, failure);
                    downstream(from_source, to_dest, source, asked, how)
                })
                .map_err(|e| TransferError::local("thread", &e))?;
            let up = upstream(from_dest, to_source, dest, events, cancel, failure);
            let down = down.join().unwrap_or_else(|_| {
                Err(failure.keep(TransferError::Internal(
                    "the relay's thread panicked".into(),
                )))
            });
            match (up, down) {
                (Ok(summary), Ok(())) => Ok(summary),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })
    }
}

/// Sends `msg` (not flushed). A data block's buffer goes back to `spares`
/// for the reader to fill again.
fn pass(to: &mut Writer, msg: Message, spares: &Spares) -> Result<(), TransferError> {
    match msg {
        Message::Data {
            file,
            compressed,
            raw_len,
            bytes,
        } => {
            to.send_data(file, compressed, raw_len, &bytes)?;
            spares.give(bytes);
        }
        Message::Segment {
            file,
            offset,
            compressed,
            raw_len,
            bytes,
        } => {
            to.send_segment(file, offset, compressed, raw_len, &bytes)?;
            spares.give(bytes);
        }
        other => to.send(&other)?,
    }
    Ok(())
}

/// What one direction of the relay does with a frame.
enum Step {
    /// Pass it on.
    Pass(Message),
    /// The session's last frame this way: pass it on, and stop.
    Last(Message),
    /// Not to be passed on: the relay ends with this.
    Refuse(TransferError),
}

/// The names a pull may be answered with, checked here as a pulling client
/// checks them (the destination, receiving a push, does not know what was
/// asked for). With `-R` (which `cp` never sets) names keep their leading
/// directories, and the destination's own checks are the only ones.
fn names_asked(paths: &[Vec<u8>], relative: bool) -> Requested {
    match relative {
        true => Requested::anything(),
        false => Requested::new(paths),
    }
}

/// Forwards frames `from` one end (`name`d) `to` the other until `step`
/// says the last one passed. Events are shown here; a fatal error from
/// either end is passed on and ends the relay; a failure of this relay (a
/// connection that broke) is told to the other end as a fatal error, so
/// that the destination ends the session and publishes nothing cut short.
/// The first failure of either direction is kept in `failure`.
fn forward(
    mut from: Reader,
    mut to: Writer,
    name: &str,
    (events, cancel, failure): (&EventFn<'_>, &Cancel, &FirstFailure),
    mut step: impl FnMut(Message) -> Step,
) -> Result<(), TransferError> {
    let lost = |e: TransferError| match e {
        TransferError::Connection(m) => TransferError::Connection(format!("{m} ({name})")),
        other => other,
    };
    let spares = Spares::default();
    from.reuse(spares.clone());
    // frames passed on and not flushed yet
    let mut unflushed = false;
    let result = (|| loop {
        cancel.check()?;
        // nothing may sit in a buffer while this side waits to read (the
        // other end may be waiting for it): flush before a read that can
        // block, not after each frame
        if unflushed && !from.has_buffered_frame() {
            to.flush()?;
            unflushed = false;
        }
        let msg = from.recv().map_err(lost)?.ok_or_else(|| {
            lost(TransferError::Connection(
                "the peer closed the connection".into(),
            ))
        })?;
        match msg {
            Message::Event(e) => events(e),
            Message::Fatal(t) => {
                let e = TransferError::Remote(session::text(&t));
                let _ = to.send(&Message::Fatal(t));
                let _ = to.flush();
                return Err(e);
            }
            msg => match step(msg) {
                Step::Pass(msg) => {
                    pass(&mut to, msg, &spares)?;
                    unflushed = true;
                }
                Step::Last(msg) => {
                    pass(&mut to, msg, &spares)?;
                    return to.flush();
                }
                Step::Refuse(e) => return Err(e),
            },
        }
    })();
    result.map_err(|e| {
        let told = matches!(e, TransferError::Remote(_));
        let e = failure.keep(e);
        if !told {
            let _ = to.send(&Message::Fatal(e.to_string().into_bytes()));
            let _ = to.flush();
        }
        e
    })
}

/// Source to destination: the list and the file data, until the source's
/// `Bye`. The source's events (a file that vanished, a listing error) are
/// shown here.
fn downstream(
    from: Reader,
    to: Writer,
    source: &str,
    asked: &Requested,
    how: (&EventFn<'_>, &Cancel, &FirstFailure),
) -> Result<(), TransferError> {
    let name = format!("the source, {source}");
    forward(from, to, &name, how, |msg| match msg {
        Message::Entry(e) if !asked.allows(&e.name) => {
            Step::Refuse(TransferError::PeerMisbehaved(format!(
                "sent {}, which was not requested ({name})",
                session::text(&e.name)
            )))
        }
        Message::Bye => Step::Last(Message::Bye),
        msg => Step::Pass(msg),
    })
}

/// Destination to source: acknowledgements, requests for files and chunks
/// (with the destination's signatures), and at the end its summary, which
/// is the relay's. The destination's events (each file as it settles) are
/// shown here.
fn upstream(
    from: Reader,
    to: Writer,
    dest: &str,
    events: &EventFn<'_>,
    cancel: &Cancel,
    failure: &FirstFailure,
) -> Result<Summary, TransferError> {
    let mut finished = None;
    let name = format!("the destination, {dest}");
    forward(
        from,
        to,
        &name,
        (events, cancel, failure),
        |msg| match msg {
            Message::Finish(s) => {
                finished = Some(s);
                Step::Last(Message::Finish(s))
            }
            msg => Step::Pass(msg),
        },
    )?;
    finished.ok_or_else(|| TransferError::Internal("the relay ended without a summary".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Entry, Kind, ListStart};
    use crate::session::wire::{FrameReader, FrameWriter};
    use std::io::Write;

    #[test]
    fn a_pull_is_answered_only_with_what_it_asked_for() {
        let asked = names_asked(&[b"/data/ckpt".to_vec(), b"m/x.bin".to_vec()], false);
        for (name, ok) in [
            (&b"ckpt"[..], true),
            (b"ckpt/shard-0", true),
            (b"x.bin", true),
            (b".", true),
            (b".ssh", false),
            (b".ssh/authorized_keys", false),
            (b"ckpt2", false),
            (b"data", false),
        ] {
            assert_eq!(asked.allows(name), ok, "{}", String::from_utf8_lossy(name));
        }
        // a directory's contents (trailing slash, `.`): any name
        for path in ["/data/", ".", "a/.."] {
            let paths = [path.as_bytes().to_vec()];
            assert!(names_asked(&paths, false).allows(b".ssh"), "{path}");
        }
    }

    /// What a writer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(name: &str, kind: Kind) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            uid: 0,
            gid: 0,
            target: Vec::new(),
            link_to: None,
            checksum: None,
        }
    }

    /// Frames passed on reach the other end before the relay waits for
    /// more, even when the frame after them is one it keeps (an event):
    /// otherwise both ends wait on each other with the frames in a buffer.
    #[test]
    fn what_was_passed_on_is_flushed_before_waiting() {
        let counters = Arc::new(Counters::default());
        let (pipe_r, mut pipe_w) = std::io::pipe().unwrap();
        let mut script = FrameWriter::new(Vec::new(), counters.clone());
        script
            .send(&Message::ListStart(ListStart {
                single_file: true,
                single_dir: false,
            }))
            .unwrap();
        script
            .send(&Message::Event(crate::proto::Event::notice(b"", "hi")))
            .unwrap();
        pipe_w.write_all(&script.into_inner().unwrap()).unwrap();
        let from: Reader = FrameReader::new(Box::new(pipe_r), counters.clone());
        let dest = Captured::default();
        let to: Writer = FrameWriter::new(Box::new(dest.clone()), counters);
        let relay = std::thread::spawn(move || {
            let failure = FirstFailure::default();
            let asked = names_asked(&[b"f".to_vec()], false);
            let how: (&EventFn<'_>, _, _) = (&|_| {}, &Cancel::default(), &failure);
            downstream(from, to, "host1", &asked, how)
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dest.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "ListStart never left");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(pipe_w);
        assert!(relay.join().unwrap().is_err(), "the source hung up");
    }

    /// A source that answers `host1:data` with `.ssh/authorized_keys`: the
    /// relay stops at the first name it was not asked for, passes none of
    /// it on, and tells the destination to end the session.
    #[test]
    fn a_source_answering_with_what_was_not_asked_for_is_refused() {
        let counters = Arc::new(Counters::default());
        let mut script = FrameWriter::new(Vec::new(), counters.clone());
        for m in [
            Message::ListStart(ListStart {
                single_file: false,
                single_dir: true,
            }),
            Message::Entry(entry("data", Kind::Dir)),
            Message::Entry(entry(".ssh", Kind::Dir)),
            Message::Entry(entry(".ssh/authorized_keys", Kind::File)),
            Message::Bye,
        ] {
            script.send(&m).unwrap();
        }
        let script = script.into_inner().unwrap();
        let from: Reader =
            FrameReader::new(Box::new(std::io::Cursor::new(script)), counters.clone());
        let dest = Captured::default();
        let to: Writer = FrameWriter::new(Box::new(dest.clone()), counters.clone());
        let failure = FirstFailure::default();
        let asked = names_asked(&[b"/srv/data".to_vec()], false);
        let how: (&EventFn<'_>, _, _) = (&|_| {}, &Cancel::default(), &failure);
        let e = downstream(from, to, "host1", &asked, how).unwrap_err();
        assert!(e.to_string().contains(".ssh"), "{e}");
        let first = failure.take().expect("kept").to_string();
        assert!(
            first.contains("sent .ssh, which was not requested (the source, host1)"),
            "{first}"
        );
        let bytes = dest.0.lock().unwrap().clone();
        let mut passed = FrameReader::new(bytes.as_slice(), counters);
        let mut got = Vec::new();
        while let Some(m) = passed.recv().unwrap() {
            got.push(m);
        }
        assert!(matches!(got[0], Message::ListStart(_)));
        assert!(matches!(&got[1], Message::Entry(e) if e.name == b"data"));
        assert!(
            matches!(&got[2], Message::Fatal(t) if String::from_utf8_lossy(t).contains(".ssh"))
        );
        assert_eq!(got.len(), 3, "nothing after the refusal: {got:?}");
    }
}
