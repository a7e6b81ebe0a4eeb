//! Which store a session half runs on: [`Side`] starts the sender or the
//! receiver over the files it stands for. [`LocalFiles`] is this host's
//! filesystem (what every half used before); [`ModuleFiles`] the same
//! confined to a daemon module's root, as the daemon serves a client (its API
//! jobs run on it); another store (S3) supplies its
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

/// This host's filesystem confined to a daemon module's root, the way the
/// daemon's policy confines a client (`server::daemon`): the sender opens
/// every file beneath the root and follows no link (`-L`, `-k`,
/// `--copy-unsafe-links` are off), the receiver resolves the destination
/// beneath the root without following a symlink and refuses `-K`. The
/// daemon's API jobs name module paths and run on this.
pub struct ModuleFiles {
    root: std::path::PathBuf,
}

impl ModuleFiles {
    pub fn new(root: std::path::PathBuf) -> ModuleFiles {
        ModuleFiles { root }
    }
}

impl Side for ModuleFiles {
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        mut cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        cfg.options.follow_links = false;
        cfg.options.copy_unsafe_links = false;
        cfg.options.copy_dirlinks = false;
        cfg.confine = Some(self.root.clone());
        sender::run(reader, writer, cfg, cancel)
    }

    fn receive(
        &self,
        reader: Reader,
        writer: Writer,
        mut cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        if cfg.options.keep_dirlinks {
            return Err(TransferError::Usage(
                "-K/--keep-dirlinks: a daemon module never follows a symlink when it writes".into(),
            ));
        }
        // the destination as a path inside the module (`./` for its root)
        let mut top = self.root.as_os_str().as_encoded_bytes().to_vec();
        top.push(b'/');
        let rest = cfg
            .dest
            .strip_prefix(top.as_slice())
            .ok_or_else(|| TransferError::Usage("the destination is outside the module".into()))?;
        cfg.dest = if rest.is_empty() {
            b"./".to_vec()
        } else {
            rest.to_vec()
        };
        cfg.beneath = Some(self.root.clone());
        receiver::run(reader, writer, cfg, cancel)
    }
}
