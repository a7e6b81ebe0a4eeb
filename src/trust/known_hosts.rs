//! The client's record of daemon keys, like ssh's `known_hosts`: one line per
//! host, `name` for the default port and `[name]:port` otherwise, then the key.
//! An unknown key is accepted only as the user says (`--host-key-check`); a
//! changed key is always refused.

use super::key::PublicKey;
use crate::error::PathError;
use std::io::Write;
use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    Known,
    Unknown,
    /// The host is known with another key (its fingerprint).
    Changed(String),
}

/// How to treat a daemon whose key is not yet known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Refuse unknown keys.
    Strict,
    /// Record an unknown key and go on.
    AcceptNew,
    /// Ask on the terminal.
    Ask,
}

/// A `--host-key-check` value that is none of the modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--host-key-check: {0:?} is not strict, accept-new or ask")]
pub struct UnknownHostKeyCheck(pub String);

impl std::str::FromStr for HostKeyCheck {
    type Err = UnknownHostKeyCheck;
    fn from_str(s: &str) -> Result<Self, UnknownHostKeyCheck> {
        match s {
            "strict" | "yes" => Ok(HostKeyCheck::Strict),
            "accept-new" => Ok(HostKeyCheck::AcceptNew),
            "ask" => Ok(HostKeyCheck::Ask),
            _ => Err(UnknownHostKeyCheck(s.to_string())),
        }
    }
}

/// The name a host is recorded under.
pub fn host_label(host: &str, port: u16) -> String {
    if port == crate::proto::DEFAULT_PORT {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// What the known_hosts file at `path` says about `label` presenting `key`
/// (a missing file knows no host). Reading it can only fail locally.
pub fn check(path: &Path, label: &str, key: &PublicKey) -> Result<HostKeyStatus, PathError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(PathError::new(path, e)),
    };
    Ok(check_text(&text, label, key))
}

/// What a known_hosts file's `text` says about `label` presenting `key`.
///
/// Only an ed25519 key recorded under exactly `label` counts. Lines ferry does
/// not act on are passed over, not refused, so one file can be shared with
/// ssh: marked lines (`@revoked`, `@cert-authority`: the marker stands where
/// the hosts are and equals no label), hashed host names (`|1|…`), other key
/// kinds and lines that do not parse. The key is decoded by the `ssh-key`
/// crate through [`PublicKey::parse_openssh`]; the line is split here, not by
/// ssh-key's `known_hosts` parser, which takes single spaces only where ssh
/// takes any blanks, and whose key decoding takes a key string whose length
/// prefix is wrong, which `parse_openssh` refuses.
pub fn check_text(text: &str, label: &str, key: &PublicKey) -> HostKeyStatus {
    let mut other = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hosts, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if !hosts.split(',').any(|h| h == label) {
            continue;
        }
        match PublicKey::parse_openssh(rest.trim()) {
            Ok((k, _)) if k == *key => return HostKeyStatus::Known,
            Ok((k, _)) => other = Some(k.fingerprint()),
            Err(_) => {}
        }
    }
    match other {
        Some(fp) => HostKeyStatus::Changed(fp),
        None => HostKeyStatus::Unknown,
    }
}

/// Records `key` for `label` at the end of the file at `path`.
pub fn add(path: &Path, label: &str, key: &PublicKey) -> Result<(), PathError> {
    let io = |e: std::io::Error| PathError::new(path, e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{label} {}", key.to_openssh()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::key::Identity;

    #[test]
    fn tofu_then_known_then_changed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("known_hosts");
        let (k1, k2) = (Identity::generate("").public, Identity::generate("").public);
        let label = host_label("gpu2", 7421);
        assert_eq!(label, "[gpu2]:7421");
        assert_eq!(check(&p, &label, &k1).unwrap(), HostKeyStatus::Unknown);
        add(&p, &label, &k1).unwrap();
        assert_eq!(check(&p, &label, &k1).unwrap(), HostKeyStatus::Known);
        assert_eq!(
            check(&p, &label, &k2).unwrap(),
            HostKeyStatus::Changed(k1.fingerprint())
        );
        assert_eq!(check(&p, "gpu2", &k2).unwrap(), HostKeyStatus::Unknown);
    }

    #[test]
    fn lines_ferry_does_not_act_on_are_passed_over() {
        let (k, other) = (Identity::generate("").public, Identity::generate("").public);
        let ed = |key: &PublicKey| key.to_openssh();
        let text = format!(
            "# a comment\n\
             @revoked gpu2 {}\n\
             @cert-authority gpu2 {}\n\
             |1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= {}\n\
             gpu2 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC6 rsa\n\
             gpu2 ssh-ed25519 !!!\n\
             other,gpu3\t\t{}   tabbed\n",
            ed(&other),
            ed(&other),
            ed(&other),
            ed(&k)
        );
        assert_eq!(check_text(&text, "gpu2", &k), HostKeyStatus::Unknown);
        assert_eq!(check_text(&text, "gpu3", &k), HostKeyStatus::Known);
        assert_eq!(
            check_text(&text, "gpu3", &other),
            HostKeyStatus::Changed(k.fingerprint())
        );
    }
}
