//! Who may talk to whom: ed25519 identities in OpenSSH format, the daemon's
//! `authorized_keys` with per-key options, the client's `known_hosts`, and the
//! rustls configurations that make both sides prove their keys.
//!
//! Default files live in ferry's config directory: `$FERRY_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/ferry` (an absolute one), else `~/.config/ferry`.
//!
//! Not for asking anyone anything: whether to trust a daemon whose key is not
//! yet known is a [`HostKeyPolicy`] the caller supplies (the CLI's terminal
//! prompt, a daemon job's rule, a test's answer). Nothing here reads a
//! terminal or prints.

pub mod authorized;
pub mod key;
pub mod known_hosts;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

/// A daemon whose key `known_hosts` does not hold yet: what a
/// [`HostKeyPolicy`] is asked about and, once the key is recorded, what the
/// caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownHost {
    /// The name the key is recorded under: `host`, or `[host]:port` off the
    /// default port.
    pub label: String,
    /// The key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// The `known_hosts` file the key goes into once accepted.
    pub known_hosts: PathBuf,
}

impl UnknownHost {
    /// What to tell the user once the key is recorded (as ssh's "Permanently
    /// added").
    pub fn added_notice(&self) -> String {
        format!(
            "permanently added daemon {} ({}) to {}",
            self.label,
            self.fingerprint,
            self.known_hosts.display()
        )
    }
}

/// The answer about an [`UnknownHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyDecision {
    /// Record the key in `known_hosts` and go on.
    Accept,
    /// Refuse the connection; nothing is sent.
    Refuse,
}

/// Asks whoever can answer about an [`UnknownHost`].
pub type AskHostKey = dyn Fn(&UnknownHost) -> HostKeyDecision + Send + Sync;

/// What to do about a daemon whose key is not yet known. A changed key is
/// refused whatever the policy.
#[derive(Clone, Default)]
pub enum HostKeyPolicy {
    /// Refuse it (`--host-key-check=strict`): the default, since a library
    /// caller may have no one to ask.
    #[default]
    Strict,
    /// Record it and go on (`accept-new`).
    AcceptNew,
    /// Ask (`ask`): the CLI supplies a terminal prompt, a job its own rule.
    Ask(Arc<AskHostKey>),
}

impl HostKeyPolicy {
    /// Decides about `host`.
    pub fn decide(&self, host: &UnknownHost) -> HostKeyDecision {
        match self {
            HostKeyPolicy::Strict => HostKeyDecision::Refuse,
            HostKeyPolicy::AcceptNew => HostKeyDecision::Accept,
            HostKeyPolicy::Ask(ask) => ask(host),
        }
    }

    /// The `--host-key-check` value this policy stands for, for messages.
    pub fn flag(&self) -> &'static str {
        match self {
            HostKeyPolicy::Strict => "strict",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::Ask(_) => "ask",
        }
    }
}

impl std::fmt::Debug for HostKeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.flag())
    }
}

/// ferry's config directory (see the module docs).
pub fn config_dir(explicit: Option<&std::path::Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("FERRY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    // the XDG spec: an empty or relative value is ignored (`~/.config`);
    // an empty one made the directory `./ferry`
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
        if d.is_absolute() {
            return d.join("ferry");
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".config/ferry")
}

/// Why the client has no identity to connect with.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key file was found and could not be used.
    #[error(transparent)]
    Key(#[from] key::KeyError),
    /// No key file: ferry's own (this path) does not exist, nor ssh's.
    #[error("no identity: {} does not exist (create one with `ferry keygen`, or pass -i FILE)", .0.display())]
    Missing(PathBuf),
}

/// The client identity: an explicit file, else ferry's own key, else
/// `~/.ssh/id_ed25519`.
pub fn find_identity(
    explicit: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> Result<key::Identity, IdentityError> {
    if let Some(p) = explicit {
        return Ok(key::Identity::load(p)?);
    }
    let ours = dir.join("id_ed25519");
    if ours.exists() {
        return Ok(key::Identity::load(&ours)?);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let ssh = PathBuf::from(home).join(".ssh/id_ed25519");
        if ssh.exists() {
            return Ok(key::Identity::load(&ssh)?);
        }
    }
    Err(IdentityError::Missing(ours))
}
