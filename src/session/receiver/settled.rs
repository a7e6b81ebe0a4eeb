//! `--remove-source-files` on the receiving side: which list entries are at
//! the destination as listed (published, already up to date, linked), told to
//! the sender in `Settled` messages only after the final sync, so that a
//! source is never removed before its copy is verified and durable. Not for
//! the removal itself: that is the sender's ([`crate::session::sender`]).

use super::Receiver;
use crate::error::TransferError;
use crate::proto::{Message, MAX_SETTLED};
use crate::store::destination::Destination;

impl<D: Destination> Receiver<'_, D> {
    /// Entry `index` is at the destination as listed.
    pub(super) fn settled(&mut self, index: u32) {
        if self.opts.dest_side.remove_source_files && !self.opts.dry_run {
            self.settled.push(index);
        }
    }

    /// Tells the sender what is settled; called once everything is synced.
    pub(super) fn send_settled(&mut self) -> Result<(), TransferError> {
        let all = std::mem::take(&mut self.settled);
        for files in all.chunks(MAX_SETTLED) {
            self.send(Message::Settled {
                files: files.to_vec(),
            })?;
        }
        Ok(())
    }
}
