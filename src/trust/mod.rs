//! Who may talk to whom: ed25519 identities in OpenSSH format, the daemon's
//! `authorized_keys` with per-key options, the client's `known_hosts`, and the
//! rustls configurations that make both sides prove their keys.
//!
//! Default files live in ferry's config directory: `$FERRY_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`.

pub mod authorized;
pub mod key;
pub mod known_hosts;
pub mod tls;

use std::path::PathBuf;

/// ferry's config directory (see the module docs).
pub fn config_dir(explicit: Option<&std::path::Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("FERRY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".config/ferry")
}

/// The client identity: an explicit file, else ferry's own key, else
/// `~/.ssh/id_ed25519`.
pub fn find_identity(
    explicit: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> Result<key::Identity, String> {
    if let Some(p) = explicit {
        return key::Identity::load(p).map_err(|e| e.to_string());
    }
    let ours = dir.join("id_ed25519");
    if ours.exists() {
        return key::Identity::load(&ours).map_err(|e| e.to_string());
    }
    if let Some(home) = std::env::var_os("HOME") {
        let ssh = PathBuf::from(home).join(".ssh/id_ed25519");
        if ssh.exists() {
            return key::Identity::load(&ssh).map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "no identity: {} does not exist (create one with `ferry keygen`, or pass -i FILE)",
        ours.display()
    ))
}
