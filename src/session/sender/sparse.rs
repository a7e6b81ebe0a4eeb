//! A file with holes sent whole under `-S/--sparse`: the source is asked where
//! its data lies (`SEEK_DATA`/`SEEK_HOLE`) and only the data is read. Each
//! hole goes out as one `Hole` message ("this many bytes of zeros here"),
//! whatever its length, when the receiver took [`Options::sparse_holes`]; the
//! end check then covers the data bytes and the holes' extents
//! ([`crate::check::Check::Sparse`]), so that both ends' work follows the
//! data, not the apparent size. To a receiver from before that option, each
//! hole goes out as blocks of zeros already compressed once (a 256 KiB block
//! of zeros is a ~23-byte zstd frame), which it takes as ordinary `Data` and
//! leaves as a hole, checked with XXH3-128 over every byte as before.
//!
//! [`Options::sparse_holes`]: crate::proto::Options::sparse_holes
//!
//! Not for files without holes (they take [`super::whole`]), nor for a file
//! the receiver rebuilds from old data ([`super::recipe`] reads it all).

use super::source::{unchanged, Unsent};
use super::Sender;
use crate::chunk::WholeCheck;
use crate::error::{FileOp, TransferError};
use crate::proto::{Message, BLOCK_SIZE};
use crate::store::source::{Source, SourceFile, Stamp};
use std::io::Write;

/// A block of zeros, raw and as the zstd frame sent for it.
pub(super) struct Zeros {
    raw: Vec<u8>,
    full: Vec<u8>,
}

impl Zeros {
    fn new() -> Zeros {
        let raw = vec![0; BLOCK_SIZE];
        let full = zstd::bulk::compress(&raw, 1).expect("zstd compresses zeros");
        Zeros { raw, full }
    }
}

/// Whether `f` has a hole before its end (and so is worth sending sparse).
/// If not, its read position is back at the start: `SEEK_HOLE` left it at
/// the end, and the file is then read in order (without this, every file
/// without holes failed under `-S` as "changed while being sent").
pub(super) fn has_hole<F: SourceFile>(f: &F, size: u64) -> bool {
    if size == 0 {
        return false;
    }
    let hole = matches!(f.next_hole(0), Ok(Some(at)) if at < size);
    if !hole {
        // all of it is data: the first data is at 0, where this seeks to
        let _ = f.next_data(0);
    }
    hole
}

impl<W: Write, S: Source> Sender<'_, W, S> {
    /// Sends `file` (open as `f`, `before` its stamp) data run by data run.
    pub(super) fn send_sparse(
        &mut self,
        file: u32,
        path: &S::Handle,
        f: S::File,
        before: Stamp,
        holes: bool,
    ) -> Result<(), TransferError> {
        let size = before.size;
        let sent = if holes {
            self.send_runs(file, &f, size, None)
        } else {
            let zeros = self.zeros.take().unwrap_or_else(Zeros::new);
            let sent = self.send_runs(file, &f, size, Some(&zeros));
            self.zeros = Some(zeros);
            sent
        };
        let check = match sent {
            Ok(check) => check,
            Err(Stop::Read(e)) => return self.give_up(file, path, Unsent::Io(FileOp::Read, e)),
            Err(Stop::Transfer(e)) => return Err(e),
        };
        if let Err(why) = unchanged(&f, &before, size) {
            return self.give_up(file, path, why);
        }
        self.writer.send(&Message::FileEnd {
            file,
            size,
            hash: check.file_value().to_wire(),
        })
    }

    /// Sends the data runs of `f` (`size` bytes) and its holes: as `Hole`
    /// messages, or with `zeros` as blocks of zeros.
    fn send_runs(
        &mut self,
        file: u32,
        f: &S::File,
        size: u64,
        zeros: Option<&Zeros>,
    ) -> Result<WholeCheck, Stop> {
        self.packer.reset();
        let mut check = WholeCheck::default();
        let mut at = 0u64;
        while at < size {
            let data = f
                .next_data(at)
                .map_err(Stop::Read)?
                .unwrap_or(size)
                .min(size);
            if at < data && zeros.is_none() {
                // the hole [at, data): one message, nothing read
                check.hole(at, data - at);
                self.writer.send(&Message::Hole {
                    file,
                    offset: at,
                    len: data - at,
                })?;
                at = data;
                self.packer.interrupt();
                self.pass_events()?;
            }
            // or zeros from memory, compressed once
            while let (Some(zeros), true) = (zeros, at < data) {
                let n = (data - at).min(BLOCK_SIZE as u64) as usize;
                check.update(&zeros.raw[..n]);
                if n == BLOCK_SIZE {
                    self.writer.send_data(file, true, n as u32, &zeros.full)?;
                } else {
                    let frame = zstd::bulk::compress(&zeros.raw[..n], 1)
                        .map_err(|e| Stop::Transfer(TransferError::local("zstd", &e)))?;
                    self.writer.send_data(file, true, n as u32, &frame)?;
                }
                at += n as u64;
                // the hole's frames are whole: the next data block starts a frame
                self.packer.interrupt();
                self.pass_events()?;
            }
            if at >= size {
                break;
            }
            let hole = f
                .next_hole(at)
                .map_err(Stop::Read)?
                .unwrap_or(size)
                .min(size);
            // the data [at, hole), read at offsets
            while at < hole {
                let n = (hole - at).min(BLOCK_SIZE as u64) as usize;
                f.read_exact_at(&mut self.buf[..n], at)
                    .map_err(Stop::Read)?;
                let block = &self.buf[..n];
                check.update(block);
                let (compressed, bytes) = self.packer.pack(block);
                self.writer.send_data(file, compressed, n as u32, bytes)?;
                at += n as u64;
                self.pass_events()?;
            }
        }
        Ok(check)
    }
}

/// Why sending the runs stopped: the file (the receiver is told, the
/// transfer goes on) or the transfer itself.
enum Stop {
    Read(std::io::Error),
    Transfer(TransferError),
}

impl From<TransferError> for Stop {
    fn from(e: TransferError) -> Stop {
        Stop::Transfer(e)
    }
}
