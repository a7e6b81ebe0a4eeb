//! Everything that touches the local filesystem: scanning source trees into file
//! list entries ([`scan`]), and the only code that writes to a destination
//! ([`dest`]), where every path a peer names is resolved under a held directory
//! handle, one component at a time, never following a symlink.

pub mod atomic;
pub mod chunk_cache;
pub mod chunk_list;
pub mod dest;
pub mod destination;
pub mod dir_stack;
pub mod names;
pub mod owners;
pub(crate) mod pause;
pub mod scan;
pub mod source;

/// Directory (inside each destination directory) holding partial files of
/// interrupted transfers, like rsync's `--partial-dir`. Never sent, never deleted
/// by `--delete`, refused as a name from a peer.
pub const PARTIAL_DIR: &[u8] = b".ferry-partial";

/// The process umask, read once (it can only be read by setting it).
pub fn umask() -> u32 {
    use std::sync::OnceLock;
    static MASK: OnceLock<u32> = OnceLock::new();
    *MASK.get_or_init(|| {
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(old);
        old.as_raw_mode() as u32
    })
}
