//! Command lines that parse but almost surely say what the user did not
//! mean, refused before anything moves. Not for checking one flag's value
//! (clap and the commands do that).

use crate::error::TransferError;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `ferry sync -i KEY SRC DEST`: on sync `-i` is rsync's
/// `--itemize-changes`, so a key written after it the way scp and ssh take
/// `-i KEY` would be copied as one more source (the walk-through put a
/// private key into a daemon's module this way). Refused when the path
/// right after a short-flag group ending in `i` (`-i`, `-ai`) is a private
/// key, OpenSSH or PEM; nothing is sent. To copy a key file on purpose,
/// write `-i` anywhere else on the line.
pub fn sync_key_after_itemize(argv: &[OsString]) -> Result<(), TransferError> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    for w in argv[..end].windows(2) {
        let flag = w[0].as_bytes();
        let group = flag.len() >= 2
            && flag[0] == b'-'
            && flag[1..].iter().all(u8::is_ascii_alphanumeric)
            && flag.ends_with(b"i");
        if group && is_private_key(Path::new(&w[1])) {
            let key = Path::new(&w[1]).display();
            return Err(TransferError::Usage(format!(
                "{key} is a private key: on sync, -i is --itemize-changes (as in rsync) and would copy it as a source; for a daemon identity write --identity {key}"
            )));
        }
    }
    Ok(())
}

/// Whether `path` is a file that opens like a private key.
fn is_private_key(path: &Path) -> bool {
    // only a regular file, opened without following a link or waiting on
    // a FIFO or a device
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    let mut head = Vec::with_capacity(64);
    if f.take(64).read_to_end(&mut head).is_err() {
        return false;
    }
    head.starts_with(b"-----BEGIN ")
        && head
            .windows(b"PRIVATE KEY-----".len())
            .any(|w| w == b"PRIVATE KEY-----")
}
