//! Which store a session half runs on: [`Side`] starts the sender or the
//! receiver over the files it stands for. [`LocalFiles`] is this host's
//! filesystem (what every half used before); another store (S3) supplies its
//! own, so that the client half or the in-process server half reads or
//! writes it through the same engine.
//!
//! Not for what a store does (that is [`crate::store`]): a side only picks
//! the `Source` or `Place` a half runs over.

use super::wire::{FrameReader, FrameWriter};
use super::{receiver, sender, Cancel};
use crate::error::TransferError;
use crate::proto::Summary;
use std::io::{Read, Write};

/// A session half's read end of the connection.
pub type Reader = FrameReader<Box<dyn Read + Send>>;
/// A session half's write end of the connection.
pub type Writer = FrameWriter<Box<dyn Write + Send>>;

/// Runs a session half over one store.
pub trait Side: Sync {
    /// The sending half, reading the store.
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError>;
    /// The receiving half, writing into the store.
    fn receive(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError>;
}

/// This host's filesystem.
pub struct LocalFiles;

impl Side for LocalFiles {
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        sender::run(reader, writer, cfg, cancel)
    }
    fn receive(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        receiver::run(reader, writer, cfg, cancel)
    }
}
