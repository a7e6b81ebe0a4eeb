//! What `ferry shell`'s commands need of the far side, as a small trait
//! ([`Remote`]) with two implementations: an SFTP session over ssh
//! ([`SftpRemote`]) and a daemon module's shell session ([`super::daemon`]).
//! The command layer (`shell.rs`) and completion see only the trait.
//!
//! Not for transfers: `get` and `put` run `transfer::run` on the
//! [`Location`] a backend gives for a path (ssh or the daemon, as `ferry cp`).

use crate::location::Location;
use crate::proto::shell::{Kind, Space, Stat};
use crate::sftp::wire::Attrs;
use crate::sftp::Sftp;
use std::io;

/// The far side of a shell session. Paths are absolute in the backend's own
/// terms (the remote's file system over SFTP; the module's, rooted at `/`,
/// on a daemon).
pub trait Remote: Send + Sync {
    /// The canonical absolute form of `path` (which must exist).
    fn realpath(&self, path: &[u8]) -> io::Result<Vec<u8>>;
    fn stat(&self, path: &[u8]) -> io::Result<Stat>;
    fn read_dir(&self, path: &[u8]) -> io::Result<Vec<(Vec<u8>, Stat)>>;
    fn mkdir(&self, path: &[u8]) -> io::Result<()>;
    fn rmdir(&self, path: &[u8]) -> io::Result<()>;
    fn remove(&self, path: &[u8]) -> io::Result<()>;
    fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()>;
    fn chmod(&self, path: &[u8], mode: u32) -> io::Result<()>;
    fn statvfs(&self, path: &[u8]) -> io::Result<Space>;
    /// Where a transfer reaches `path` (a trailing `/` kept: "into").
    fn location(&self, path: &[u8]) -> io::Result<Location>;
    /// Ends the session.
    fn end(&self);
}

/// The mode as `ls -l` shows it (`drwxr-xr-x`, `-rwsr-x--T`).
pub fn mode_text(k: Kind, mode: u32) -> String {
    let mut s = String::from(match k {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Other => '?',
    });
    // (special bit, its letter with x, without)
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, shift) in [6, 3, 0].into_iter().enumerate() {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let (bit, with_x, without_x) = special[i];
        s.push(match (mode & bit != 0, bits & 1 != 0) {
            (true, true) => with_x,
            (true, false) => without_x,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `ferry shell host` over ssh: SFTP for the listings and small commands.
pub struct SftpRemote {
    pub sftp: Sftp,
    pub user: Option<String>,
    pub host: String,
}

fn stat_of(a: &Attrs) -> Stat {
    Stat {
        kind: if a.is_dir() {
            Kind::Dir
        } else if a.is_symlink() {
            Kind::Symlink
        } else if a.is_file() {
            Kind::File
        } else {
            Kind::Other
        },
        mode: a.perm.unwrap_or(0) & 0o7777,
        size: a.size.unwrap_or(0),
        mtime: a.mtime(),
        owner: a.uid_gid,
    }
}

impl Remote for SftpRemote {
    fn realpath(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        self.sftp.realpath(path)
    }
    fn stat(&self, path: &[u8]) -> io::Result<Stat> {
        self.sftp.stat(path).map(|a| stat_of(&a))
    }
    fn read_dir(&self, path: &[u8]) -> io::Result<Vec<(Vec<u8>, Stat)>> {
        Ok(self
            .sftp
            .read_dir(path)?
            .into_iter()
            .map(|(n, a)| (n, stat_of(&a)))
            .collect())
    }
    fn mkdir(&self, path: &[u8]) -> io::Result<()> {
        self.sftp.mkdir(path, 0o777)
    }
    fn rmdir(&self, path: &[u8]) -> io::Result<()> {
        self.sftp.rmdir(path)
    }
    fn remove(&self, path: &[u8]) -> io::Result<()> {
        self.sftp.remove(path)
    }
    fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        // sftp's rename: the atomic one where the server has it
        if self.sftp.ext.posix_rename {
            self.sftp.posix_rename(from, to)
        } else {
            self.sftp.rename(from, to)
        }
    }
    fn chmod(&self, path: &[u8], mode: u32) -> io::Result<()> {
        let attrs = Attrs {
            perm: Some(mode),
            ..Default::default()
        };
        self.sftp.setstat(path, &attrs)
    }
    fn statvfs(&self, path: &[u8]) -> io::Result<Space> {
        let s = self.sftp.statvfs(path)?;
        Ok(Space {
            frsize: s.frsize,
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
        })
    }
    fn location(&self, path: &[u8]) -> io::Result<Location> {
        Ok(Location::Ssh {
            user: self.user.clone(),
            host: self.host.clone(),
            path: path.to_vec(),
        })
    }
    fn end(&self) {
        self.sftp.end();
    }
}
