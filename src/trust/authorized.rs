//! `authorized_keys` in OpenSSH's format, with the options ferry understands:
//!
//! | option | meaning for ferry |
//! |---|---|
//! | `from="10.0.0.0/8,192.168.1.7,!10.1.0.0/16"` | client address must match (CIDR, address, `*`/`?` patterns, `!` negates) |
//! | `restrict` (or `read-only`) | the key may read, never write or delete |
//! | `modules="data,ckpt"` | the modules the key may reach |
//! | `expiry-time="YYYYMMDD[HHMM[SS]]"` | the key stops working then (UTC) |
//!
//! OpenSSH options with no meaning here (`no-pty`, `command=`, …) are accepted
//! and ignored, so one file can serve sshd and ferry (use `restrict`, not
//! `read-only`, in a file sshd reads too). A malformed line is reported with its
//! number and skipped; the other lines keep working.
//!
//! The key and its comment are read by [`PublicKey::parse_openssh`], where the
//! `ssh-key` crate decodes the key. The options field stays parsed here, not by
//! ssh-key's `authorized_keys` parser, which is a poor fit for a file shared
//! with sshd: it splits the options from the key at the first blank and cuts
//! the line at any `#`, so it refuses lines sshd accepts, such as
//! `command="rsync --server …"` or `environment="A=b c"`; it knows no
//! backslash escapes inside quotes; and it gives one bare error per line where
//! ferry names the option at fault. What each option means is ferry's anyway.

use super::key::PublicKey;
use crate::error::PathError;
use std::net::IpAddr;
use std::path::Path;

/// What a key is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub read_only: bool,
    /// `None`: every module.
    pub modules: Option<Vec<String>>,
    from: Option<Vec<String>>,
    /// Unix seconds after which the key is refused.
    expiry: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    pub grant: Grant,
    pub comment: String,
    /// The line's options as written, for `ferry trust list`.
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("key {0} is not authorized (add it on the daemon's host with `ferry trust add`, or with `ferry copy-id` over ssh)")]
    Unknown(String),
    #[error("key {0} is not allowed from {1} (from= option)")]
    From(String, IpAddr),
    #[error("key {0} expired (expiry-time option)")]
    Expired(String),
    #[error("key {0} may not use module {1:?} (modules= option)")]
    Module(String, String),
    #[error("key {0} is read-only (restrict option): it may not write or delete")]
    ReadOnly(String),
}

impl Denied {
    /// The rule that refused, in a few words, for the daemon's log.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Unknown(_) => "unknown key",
            Denied::From(..) => "from= mismatch",
            Denied::Expired(_) => "expired key",
            Denied::Module(..) => "module not granted",
            Denied::ReadOnly(_) => "read-only key",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct AuthorizedKeys {
    pub keys: Vec<AuthorizedKey>,
}

const IGNORED: &[&str] = &[
    "agent-forwarding",
    "command",
    "environment",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "principals",
    "pty",
    "tunnel",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Splits the options field: `a,b="x,y",c` → [("a", None), ("b", Some("x,y")), …].
fn split_options(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("empty option (a stray or trailing comma?)".into());
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.next() != Some('"') {
                return Err(format!("option {name}: value must be in double quotes"));
            }
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => v.push(c),
                        None => return Err(format!("option {name}: unterminated value")),
                    },
                    Some('"') => break,
                    Some(c) => v.push(c),
                    None => return Err(format!("option {name}: unterminated value")),
                }
            }
            value = Some(v);
        }
        out.push((name, value));
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} after an option")),
        }
    }
}

/// Splits a line into (options, rest) where rest starts with the key type.
fn options_and_key(line: &str) -> (&str, &str) {
    let first = line.split_whitespace().next().unwrap_or("");
    let looks_like_key =
        first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-");
    if looks_like_key {
        return ("", line);
    }
    // options run to the first space outside quotes
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_quotes && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => return (&line[..i], line[i..].trim_start()),
            _ => {}
        }
        escaped = false;
    }
    (line, "")
}

/// `YYYYMMDD[HHMM[SS]][Z]` → Unix seconds (UTC).
fn parse_expiry(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    if !s.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&s.len()) {
        return None;
    }
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (hh, mm, ss) = if s.len() >= 12 {
        (
            n(8, 10)?,
            n(10, 12)?,
            if s.len() == 14 { n(12, 14)? } else { 0 },
        )
    } else {
        (0, 0, 0)
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

fn glob_match(pattern: &str, text: &str) -> bool {
    crate::filter::glob(pattern.as_bytes(), text.as_bytes())
}

fn cidr_match(pattern: &str, ip: IpAddr) -> Option<bool> {
    let (addr, bits) = match pattern.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u32>().ok()?)),
        None => (pattern, None),
    };
    let net: IpAddr = addr.parse().ok()?;
    // an IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    Some(match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let bits = bits.unwrap_or(32);
            if bits > 32 {
                return None;
            }
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let bits = bits.unwrap_or(128);
            if bits > 128 {
                return None;
            }
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    })
}

/// OpenSSH's rule: any negated match denies; otherwise some positive match allows.
fn from_allows(patterns: &[String], ip: IpAddr) -> bool {
    let text = ip.to_string();
    let mut allowed = false;
    for p in patterns {
        let (neg, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let hit = cidr_match(p, ip).unwrap_or_else(|| glob_match(p, &text));
        if hit && neg {
            return false;
        }
        allowed |= hit;
    }
    allowed
}

impl AuthorizedKeys {
    /// Parses the file's text; returns the keys and one message per skipped line.
    pub fn parse(text: &str) -> (AuthorizedKeys, Vec<String>) {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match Self::parse_line(line) {
                Ok(k) => keys.push(k),
                Err(why) => problems.push(format!("line {}: {why}; line skipped", i + 1)),
            }
        }
        (AuthorizedKeys { keys }, problems)
    }

    fn parse_line(line: &str) -> Result<AuthorizedKey, String> {
        let (opts, rest) = options_and_key(line);
        let (key, comment) = PublicKey::parse_openssh(rest).map_err(|e| e.to_string())?;
        let mut grant = Grant::default();
        if !opts.is_empty() {
            for (name, value) in split_options(opts)? {
                let lname = name.to_ascii_lowercase();
                let need = |v: Option<String>| v.ok_or(format!("option {name} needs a value"));
                match lname.as_str() {
                    "from" => {
                        let v = need(value)?;
                        let list: Vec<String> =
                            v.split(',').map(|s| s.trim().to_string()).collect();
                        if list.iter().any(|p| p.is_empty() || p == "!") {
                            return Err(format!("option from=\"{v}\": empty pattern"));
                        }
                        grant.from = Some(list);
                    }
                    "restrict" | "read-only" => grant.read_only = true,
                    "modules" => {
                        let v = need(value)?;
                        let list: Vec<String> =
                            v.split(',').map(|s| s.trim().to_string()).collect();
                        if list.iter().any(|m| m.is_empty()) {
                            return Err(format!("option modules=\"{v}\": empty module name"));
                        }
                        grant.modules = Some(list);
                    }
                    "expiry-time" => {
                        let v = need(value)?;
                        grant.expiry = Some(parse_expiry(&v).ok_or(format!(
                            "option expiry-time=\"{v}\": not YYYYMMDD[HHMM[SS]]"
                        ))?);
                    }
                    "cert-authority" => return Err("cert-authority keys are not supported".into()),
                    n if IGNORED.contains(&n) => {}
                    _ => return Err(format!("unknown option {name}")),
                }
            }
        }
        Ok(AuthorizedKey {
            key,
            grant,
            comment,
            options: opts.to_string(),
        })
    }

    /// Loads a file, refusing one that others could have written to (like
    /// sshd's StrictModes): the file and its directory must not be group- or
    /// world-writable.
    pub fn load(path: &Path) -> Result<(AuthorizedKeys, Vec<String>), LoadError> {
        check_strict_modes(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| PathError::new(path, e))?;
        Ok(Self::parse(&text))
    }

    /// Decides whether `key`, connecting from `ip` at `now`, may connect.
    pub fn authorize(&self, key: &PublicKey, ip: IpAddr, now: i64) -> Result<Grant, Denied> {
        let fp = key.fingerprint();
        let entry = self
            .keys
            .iter()
            .find(|k| k.key == *key)
            .ok_or_else(|| Denied::Unknown(fp.clone()))?;
        let g = &entry.grant;
        if let Some(from) = &g.from {
            if !from_allows(from, ip) {
                return Err(Denied::From(fp, ip));
            }
        }
        if g.expiry.is_some_and(|t| now >= t) {
            return Err(Denied::Expired(fp));
        }
        Ok(g.clone())
    }
}

impl Grant {
    /// Checks access to a module, for reading or writing.
    pub fn check(&self, fingerprint: &str, module: &str, write: bool) -> Result<(), Denied> {
        if let Some(m) = &self.modules {
            if !m.iter().any(|x| x == module) {
                return Err(Denied::Module(fingerprint.into(), module.into()));
            }
        }
        if write && self.read_only {
            return Err(Denied::ReadOnly(fingerprint.into()));
        }
        Ok(())
    }

    pub fn may_see(&self, module: &str) -> bool {
        self.modules
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == module))
    }
}

/// Why an `authorized_keys` file is not loaded: it cannot be read (a local
/// fault), or others could have written to it (refused, like sshd's
/// StrictModes; the administrator must fix its mode).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] PathError),
    #[error("{} is group- or world-writable: refusing to trust keys from it (fix with: chmod go-w {})", .0.display(), .0.display())]
    Writable(std::path::PathBuf),
}

impl LoadError {
    /// Whether the error's text contains `s` (what text-matching callers and
    /// tests ask).
    pub fn contains(&self, s: &str) -> bool {
        self.to_string().contains(s)
    }
}

/// Refuses a file (or its directory) that is group- or world-writable.
pub fn check_strict_modes(path: &Path) -> Result<(), LoadError> {
    use std::os::unix::fs::MetadataExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for p in [path, dir] {
        let m = std::fs::metadata(p).map_err(|e| PathError::new(p, e))?;
        // the sticky /tmp is world-writable by design; its files are still per-owner
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !sticky_dir {
            return Err(LoadError::Writable(p.to_path_buf()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::key::Identity;

    #[test]
    fn a_from_pattern_with_an_unclosed_bracket_denies_without_panicking() {
        let id = Identity::generate("x");
        let line = format!("from=\"10.[\" {}", id.public.to_openssh());
        let (keys, problems) = AuthorizedKeys::parse(&line);
        assert!(problems.is_empty(), "{problems:?}");
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(keys.authorize(&id.public, ip, 0).is_err());
    }

    fn key() -> PublicKey {
        Identity::generate("").public
    }

    #[test]
    fn options_and_problems() {
        let (a, b, c, d) = (key(), key(), key(), key());
        let text = format!(
            "# comment\n\
             {}  plain key\n\
             from=\"10.0.0.0/8,!10.9.0.0/16\",restrict,modules=\"data,ckpt\",no-pty {} limited\n\
             frobnicate {} bad option\n\
             restrict, {} trailing comma\n\
             ssh-ed25519 !!!notbase64\n\
             ssh-rsa AAAAB3NzaC1yc2E= rsa\n",
            a.to_openssh(),
            b.to_openssh(),
            c.to_openssh(),
            d.to_openssh()
        );
        let (keys, problems) = AuthorizedKeys::parse(&text);
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("line 4: unknown option frobnicate"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("line 5:"), "{problems:?}");
        assert!(problems[2].contains("base64"), "{problems:?}");
        assert!(
            problems[3].contains("ssh-rsa keys are not supported"),
            "{problems:?}"
        );
        let g = keys.authorize(&b, "10.1.2.3".parse().unwrap(), 0).unwrap();
        assert!(g.read_only);
        assert!(g.check("fp", "data", false).is_ok());
        assert!(matches!(
            g.check("fp", "data", true),
            Err(Denied::ReadOnly(_))
        ));
        assert!(matches!(
            g.check("fp", "other", false),
            Err(Denied::Module(..))
        ));
        assert!(matches!(
            keys.authorize(&b, "10.9.0.1".parse().unwrap(), 0),
            Err(Denied::From(..))
        ));
        assert!(matches!(
            keys.authorize(&b, "192.168.0.1".parse().unwrap(), 0),
            Err(Denied::From(..))
        ));
        assert!(matches!(
            keys.authorize(&c, "10.1.2.3".parse().unwrap(), 0),
            Err(Denied::Unknown(_))
        ));
        assert!(keys.authorize(&a, "::1".parse().unwrap(), 0).is_ok());
    }

    #[test]
    fn expiry() {
        assert_eq!(parse_expiry("19700101"), Some(0));
        assert_eq!(parse_expiry("20000301"), Some(951868800));
        assert_eq!(parse_expiry("202001011230"), Some(1577881800));
        assert_eq!(parse_expiry("2020"), None);
        let k = key();
        let text = format!("expiry-time=\"20200101\" {}", k.to_openssh());
        let (keys, p) = AuthorizedKeys::parse(&text);
        assert!(p.is_empty());
        assert!(keys
            .authorize(&k, "127.0.0.1".parse().unwrap(), 1_500_000_000)
            .is_ok());
        assert!(matches!(
            keys.authorize(&k, "127.0.0.1".parse().unwrap(), 1_600_000_000),
            Err(Denied::Expired(_))
        ));
    }

    #[test]
    fn mapped_ipv4_matches_v4_cidr() {
        let ip: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(from_allows(&["10.0.0.0/24".into()], ip));
        assert!(from_allows(
            &["127.0.0.*".into()],
            "127.0.0.1".parse().unwrap()
        ));
    }

    #[test]
    fn strict_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("authorized_keys");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_strict_modes(&f).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(check_strict_modes(&f)
            .unwrap_err()
            .contains("group- or world-writable"));
    }

    /// Lines an sshd `authorized_keys` holds, which ssh-key's own parser
    /// refuses (a blank or a `#` inside a quoted option, a tab after the
    /// options): why ferry splits the options itself.
    #[test]
    fn lines_shared_with_sshd_parse() {
        let k = key();
        let text = format!(
            "command=\"rsync --server -e.LsfxC . /data # nightly\",no-pty,modules=\"data\" {k} backup\n\
             environment=\"A=b c\",from=\"10.0.0.0/8\"\t{k}\n",
            k = k.to_openssh()
        );
        let (keys, problems) = AuthorizedKeys::parse(&text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.keys[0].comment, "backup");
        assert_eq!(keys.keys[0].grant.modules, Some(vec!["data".to_string()]));
        assert!(keys.keys[1].grant.from.is_some());
    }
}
