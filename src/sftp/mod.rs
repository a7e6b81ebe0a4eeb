//! SFTP as a store: for a remote that has sshd but no ferry (a new machine,
//! an sftp-only account, an appliance), the engine's two halves both run in
//! this process and read or write the remote's files through an SFTP session
//! to the system `ssh … -s sftp` (so the user's ssh config, agent, ProxyJump
//! and known_hosts all keep working).
//!
//! [`wire`] is the protocol's byte format, [`client`] a synchronous client
//! with many requests outstanding, [`destination`] and [`source`] the store
//! seam's traits over it, [`verify`] the checks beyond ssh's MAC. Not for deciding when SFTP is used instead of
//! ferry's own protocol: that is `transfer::sftp`.

pub mod client;
pub mod destination;
pub mod source;
pub mod verify;
pub mod wire;

pub use client::Sftp;

use crate::error::TransferError;
use crate::proto::Summary;
use crate::session::side::{Reader, Writer};
use crate::session::{receiver, sender, Cancel, Side};

/// A session half running on the remote's files over one SFTP connection:
/// a pull sends from a [`source::SftpSource`], a push is received into a
/// [`destination::SftpPlace`].
pub struct SftpSide {
    pub sftp: Sftp,
    /// `[user@]host:` as messages show it.
    pub shown_host: String,
    /// How files are checked beyond ssh's MAC: an upload before it is
    /// renamed into place, a download before its last bytes are passed on.
    pub verify: Option<verify::Verify>,
}

impl Side for SftpSide {
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        let source = source::SftpSource {
            sftp: self.sftp.clone(),
            verify: self.verify.clone(),
        };
        sender::run_from(reader, writer, cfg, cancel, move || Ok(source))
    }

    fn receive(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        let place = destination::SftpPlace {
            sftp: self.sftp.clone(),
            shown_host: self.shown_host.clone(),
            verify: self.verify.clone(),
        };
        receiver::run_into(reader, writer, cfg, place, cancel)
    }
}

/// A remote path as the SFTP server takes it: `~` and `~/x` are relative to
/// the login directory, where the server starts (as scp rewrites them); an
/// empty path is that directory.
pub fn remote_path(path: &[u8]) -> Vec<u8> {
    if path.is_empty() || path == b"~" {
        return b".".to_vec();
    }
    match path.strip_prefix(b"~/") {
        Some(b"") => b".".to_vec(),
        Some(rest) => rest.to_vec(),
        None => path.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tilde_paths_are_relative_to_the_login_directory() {
        assert_eq!(super::remote_path(b""), b".");
        assert_eq!(super::remote_path(b"~"), b".");
        assert_eq!(super::remote_path(b"~/d/x"), b"d/x");
        assert_eq!(super::remote_path(b"/abs"), b"/abs");
        assert_eq!(super::remote_path(b"~other/x"), b"~other/x");
    }
}
