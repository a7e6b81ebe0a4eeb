//! Relative names as they travel between peers, checked before any use, and
//! escaped before any display.
//!
//! # Security
//! A name from the peer is untrusted: it must be `.` or `/`-separated components,
//! none empty, `.`, `..`, longer than [`MAX_COMPONENT`], containing NUL, or equal to
//! the partial directory's name. Absolute names are refused. Only then may the
//! receiver resolve it, and even so only under its destination handle.

use crate::proto::{MAX_COMPONENT, MAX_PATH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("absolute name {0}")]
    Absolute(String),
    #[error("name {0} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("name {0} contains NUL")]
    Nul(String),
    #[error("name {0} is too long")]
    TooLong(String),
    #[error("name {0} uses the reserved directory .ferry-partial")]
    Reserved(String),
}

/// Checks a relative name from a peer. `.` (the transfer root) is allowed.
pub fn check(name: &[u8]) -> Result<(), NameError> {
    let shown = || escape(name);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == b"." {
        return Ok(());
    }
    if name.len() > MAX_PATH {
        return Err(NameError::TooLong(shown()));
    }
    if name[0] == b'/' {
        return Err(NameError::Absolute(shown()));
    }
    if name.contains(&0) {
        return Err(NameError::Nul(shown()));
    }
    for c in name.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(NameError::BadComponent(shown()));
        }
        if c.len() > MAX_COMPONENT {
            return Err(NameError::TooLong(shown()));
        }
        if c == super::PARTIAL_DIR {
            return Err(NameError::Reserved(shown()));
        }
    }
    Ok(())
}

/// Splits a checked name into (parent, last component); the parent of a
/// top-level name is `.`.
pub fn split_parent(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (b".", name),
    }
}

/// Joins a relative directory name and a component.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir == b"." || dir.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// A name for humans: UTF-8 where it is, `\xNN` for other bytes, and control
/// characters (newline, escape, …) escaped so a name cannot forge terminal output.
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    for b in c.to_string().bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Whether a symlink at `rel` pointing to `target` stays inside the tree:
/// not absolute, and no `..` climbs above the tree's root (rsync's "safe").
pub fn link_stays_inside(rel: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth = rel.split(|&b| b == b'/').count() as i64 - 1;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"a/",
            b"a\0b",
            b".ferry-partial/x",
            b"d/.ferry-partial",
        ] {
            assert!(check(bad).is_err(), "{:?}", escape(bad));
        }
        assert!(check(&vec![b'a'; 256]).is_err());
        assert!(check(&[b"a/".repeat(2100), b"x".to_vec()].concat()).is_err());
    }

    #[test]
    fn ordinary_and_odd_names_accepted() {
        for ok in [
            &b"."[..],
            b"a",
            b"a/b/c",
            b"new\nline",
            b"\x1b[31mred",
            b"\xff\xfe",
            b"..a",
            b"a..",
        ] {
            assert!(check(ok).is_ok(), "{:?}", escape(ok));
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(b"plain/name"), "plain/name");
        assert_eq!(escape(b"new\nline"), "new\\x0aline");
        assert_eq!(escape(b"\x1b[31m"), "\\x1b[31m");
        assert_eq!(escape(b"bad\xffbyte"), "bad\\xffbyte");
        assert_eq!(escape("café".as_bytes()), "café");
    }

    #[test]
    fn parent_split() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b"."[..], &b"c"[..]));
        assert_eq!(join(b".", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }
}
