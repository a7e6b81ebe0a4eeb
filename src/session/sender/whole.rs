//! A file sent whole: read in blocks, checked with XXH3 as it goes, compressed
//! where that pays, then `FileEnd` if the file did not change meanwhile. Not for
//! large files when extra streams exist ([`super::segments`]) nor for files
//! the receiver rebuilds from old data ([`super::recipe`]).

use super::segments::SEGMENT_MIN;
use super::source::{unchanged, Unsent};
use super::Sender;
use crate::chunk::WholeCheck;
use crate::error::{FileOp, TransferError};
use crate::proto::Message;
use crate::store::source::{Source, SourceFile};
use std::io::{Read, Write};

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Sends `file`, listed as `listed_size` bytes, whole.
    pub(super) fn send_whole(
        &mut self,
        file: u32,
        path: &S::Handle,
        listed_size: u64,
    ) -> Result<(), TransferError> {
        let Some((mut f, before)) = self.open_listed(file, path)? else {
            return Ok(());
        };
        if self.options.sparse && super::sparse::has_hole(&f, before.size) {
            // holes as messages only within the size the receiver was
            // listed (a file that grew since is sent with its zeros)
            let holes = self.options.sparse_holes && before.size == listed_size;
            return self.send_sparse(file, path, f, before, holes);
        }
        let segmented = before.size >= SEGMENT_MIN && !f.verified_in_order();
        self.attach_streams(segmented);
        if self.streams.attached() && segmented {
            return self.send_segmented(file, path, f, before);
        }
        self.packer.reset();
        let mut check = WholeCheck::default();
        let mut total = 0u64;
        loop {
            // no more than the size stamped at the open: a small file is one
            // read, with no second one to see its end (a file that grew
            // since fails the stamp taken after, as one that shrank does)
            let want = self
                .buf
                .len()
                .min((before.size - total.min(before.size)) as usize);
            if want == 0 {
                // the size stamped at the open is read: the source sees
                // its end now (SFTP checks the remote's hash there)
                match f.at_end() {
                    Ok(true) => break,
                    Ok(false) => return self.give_up(file, path, Unsent::Changed),
                    Err(e) => return self.give_up(file, path, Unsent::Io(FileOp::Read, e)),
                }
            }
            let n = match read_full(&mut f, &mut self.buf[..want]) {
                Ok(n) => n,
                Err(e) => return self.give_up(file, path, Unsent::Io(FileOp::Read, e)),
            };
            if n == 0 {
                break;
            }
            let block = &self.buf[..n];
            check.update(block);
            total += n as u64;
            let (compressed, bytes) = self.packer.pack(block);
            self.writer.send_data(file, compressed, n as u32, bytes)?;
            self.pass_events()?;
            if n < want {
                break;
            }
        }
        if let Err(why) = unchanged(&f, &before, total) {
            return self.give_up(file, path, why);
        }
        self.writer.send(&Message::FileEnd {
            file,
            size: total,
            hash: check.file_value().to_wire(),
        })
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
