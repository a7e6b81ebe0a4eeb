//! Events for the user: per-file progress and errors, and the overall
//! progress (throttled for a remote requester). Not for deciding what a
//! failure means for the transfer ([`super::incoming`]).

use super::incoming::Incoming;
use super::Receiver;
use crate::error::FileError;
use crate::proto::{Event, Message, Report};

/// Overall progress goes to a remote requester at most this often.
pub(super) const OVERALL_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Progress events at most every this many bytes.
pub(super) const PROGRESS_STEP: u64 = 1 << 20;
use crate::store::destination::{Destination, TempWrite};

impl<D: Destination> Receiver<'_, D> {
    pub(super) fn emit(&self, report: Report) {
        // a remote requester that shows no file gets no event per file (three
        // messages per small file, each a wake-up of the writer at this end
        // and of the reader at the other)
        let per_file = matches!(
            report,
            Report::Updated { .. }
                | Report::Progress { .. }
                | Report::Deleted { .. }
                | Report::Itemized { .. }
        );
        if per_file && self.events.is_none() && !self.opts.file_events {
            return;
        }
        let e = Event::from(report);
        match self.events {
            Some(f) => f(e),
            None => {
                let _ = self.out.send(Message::Event(e));
            }
        }
    }

    pub(super) fn file_error(&mut self, name: &[u8], text: String) {
        self.summary.errors += 1;
        self.emit(Report::Error {
            name: name.to_vec(),
            text: text.into_bytes(),
        });
    }

    /// [`file_error`](Self::file_error) for a local operation that failed.
    pub(super) fn file_failed(&mut self, name: &[u8], error: FileError) {
        self.file_error(name, error.to_string());
    }

    pub(super) fn note_progress(&mut self, file: u32, state: &Incoming<D>) {
        let done = match state {
            Incoming::Whole { temp, .. } => temp.len(),
            Incoming::Rebuild(r) => r.temp.len(),
            Incoming::Segmented { active, done, .. } => {
                done.iter().map(|d| d.1).sum::<u64>()
                    + active.values().map(|a| a.next - a.start).sum::<u64>()
            }
            _ => return,
        };
        let last = self.progress.entry(file).or_insert(0);
        if done >= *last + PROGRESS_STEP {
            let step = done - *last;
            *last = done;
            self.bytes_done += step;
            let l = &self.entries[file as usize];
            let (name, size) = (l.name.clone(), l.size);
            self.emit_overall();
            self.emit(Report::Progress { name, done, size });
        }
    }

    pub(super) fn emit_overall(&self) {
        // to a remote requester a few times a second, and at the end
        if self.events.is_none() && self.bytes_done < self.summary.total_size {
            let now = std::time::Instant::now();
            match self.overall_sent.get() {
                Some(t) if now.duration_since(t) < OVERALL_EVERY => return,
                _ => self.overall_sent.set(Some(now)),
            }
        }
        self.emit(Report::Overall {
            done: self.bytes_done,
            total: self.summary.total_size,
        });
    }
}
