//! Taking in the file list: what the client asked for, how list names map to
//! paths under the destination, the checks every entry passes (names, order,
//! duplicates) and the `ListAck` window. Not for acting on an entry: that is
//! [`super::generator`].

use super::{violation, Receiver};
use crate::error::TransferError;
use crate::fs::names::{self, escape, split_parent};
use crate::proto::{Entry, Kind, Message, LIST_AHEAD};
use crate::session::listing::Keep;
use std::collections::HashSet;

/// How list names map to paths under the destination handle.
pub(super) enum Mapping {
    /// Names as they are.
    Under,
    /// The single file is written as this name (the destination named a file).
    FileAs(Vec<u8>),
    /// scp semantics: the single directory becomes the destination itself.
    StripTop(Vec<u8>),
}

/// The top-level names a pull asked for.
pub(super) struct Requested {
    pub(super) any: bool,
    pub(super) tops: HashSet<Vec<u8>>,
}
use crate::store::destination::Destination;

impl<D: Destination> Receiver<'_, D> {
    /// Tells the sender how far into the list we are, once that moved a
    /// quarter of [`LIST_AHEAD`] (it lists at most that far beyond), and lets
    /// go of the entries settled by then: below the first still queued, not
    /// in flight. Directories stay for the end (their times and `--delete`),
    /// and with `-H` every file (a later hard link may name it).
    pub(super) fn acknowledge(&mut self) -> Result<(), TransferError> {
        let taken = match self.queue.front() {
            Some(&i) => i,
            None => self.entries.len() as u32,
        };
        if taken < self.acked.saturating_add(LIST_AHEAD / 4) {
            return Ok(());
        }
        self.acked = taken;
        let every_file = self.opts.hard_links;
        let in_flight = &self.in_flight;
        self.entries.let_go(taken, |i, l| {
            if l.kind == Kind::Dir || (every_file && l.kind == Kind::File) {
                Keep::ToTheEnd
            } else if in_flight.is_live(i) {
                Keep::ForNow
            } else {
                Keep::No
            }
        });
        if self.list_done {
            return Ok(());
        }
        self.send(Message::ListAck { entries: taken })
    }

    pub(super) fn map_name(&mut self, name: &[u8]) -> Result<Vec<u8>, TransferError> {
        match &mut self.mapping {
            Mapping::Under => Ok(name.to_vec()),
            Mapping::FileAs(base) => {
                if !self.entries.is_empty() {
                    return Err(violation(format!(
                        "sent {} after announcing a single file",
                        escape(name)
                    )));
                }
                Ok(base.clone())
            }
            Mapping::StripTop(top) => {
                if top.is_empty() {
                    if name.contains(&b'/') || name == b"." {
                        return Err(violation(format!(
                            "sent {} before its directory",
                            escape(name)
                        )));
                    }
                    *top = name.to_vec();
                    return Ok(b".".to_vec());
                }
                match name.strip_prefix(top.as_slice()) {
                    Some(rest) if rest.first() == Some(&b'/') => Ok(rest[1..].to_vec()),
                    _ => Err(violation(format!(
                        "sent {} outside the announced directory",
                        escape(name)
                    ))),
                }
            }
        }
    }

    /// Checks an entry against the list so far and what was asked for.
    pub(super) fn check_entry(&self, e: &Entry) -> Result<(), TransferError> {
        names::check(&e.name).map_err(|err| violation(format!("sent a bad name: {err}")))?;
        if let Some(req) = &self.requested {
            if !req.any && e.name != b"." {
                let top = e.name.split(|&b| b == b'/').next().unwrap_or(&e.name);
                if !req.tops.contains(top) {
                    return Err(violation(format!(
                        "sent {}, which was not requested",
                        escape(&e.name)
                    )));
                }
            }
        }
        if !self.opts.recursive && (e.name.contains(&b'/') || e.kind == Kind::Dir) {
            return Err(violation(format!(
                "sent {} in a transfer that is not recursive",
                escape(&e.name)
            )));
        }
        if e.name.contains(&b'/') {
            let (parent, _) = split_parent(&e.name);
            if !self.list_dirs.contains(parent) {
                return Err(violation(format!(
                    "sent {} before its directory",
                    escape(&e.name)
                )));
            }
        }
        if let Some(j) = e.link_to {
            let ok = self
                .entries
                .get(j as usize)
                .is_some_and(|t| t.kind == Kind::File);
            if !ok || e.kind != Kind::File {
                return Err(violation(format!(
                    "sent a hard link {} to an entry that is not an earlier file",
                    escape(&e.name)
                )));
            }
        }
        if e.name == b"." && !self.entries.is_empty() {
            return Err(violation("sent the root entry twice".into()));
        }
        Ok(())
    }
}
