//! The manifest ferry keeps beside what it uploaded: one object,
//! `<prefix>/.ferry-manifest`, listing every file under the prefix with the
//! ETag it had when ferry wrote it, its size, mtime (ns), mode and BLAKE3. A
//! listing gives each object's size and ETag but none of its metadata, so
//! without this a sync would need a HEAD per object to learn mtimes; with
//! it, an object whose size and ETag still match its line needs no request
//! at all. A line that does not match (the object was replaced by another
//! tool) is ignored and the object asked about directly.
//!
//! Directories have lines too (their key and a slash, first in the file):
//! S3 has no directories, so an empty one would otherwise be lost, and a
//! directory's mode and mtime with it.
//!
//! Not for deciding what to send (the receiver does that from what
//! [`super::destination`] reports) nor for verifying content: the BLAKE3 in
//! each object's own metadata (or, for an object uploaded as it arrived,
//! in the chunk map its metadata names) is what a download is checked
//! against.

use super::bucket::{hex, unhex, Object};
use std::collections::{BTreeMap, HashMap};

/// The manifest's name under its prefix; hidden from listings.
pub const NAME: &str = ".ferry-manifest";
const HEADER: &str = "ferry-manifest 1";

/// Files by full key.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    entries: HashMap<String, Object>,
}

impl Manifest {
    /// Reads a manifest; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Manifest {
        let mut entries = HashMap::new();
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Manifest::default();
        }
        for line in lines {
            if let Some((k, o)) = parse_line(line) {
                entries.insert(k, o);
            }
        }
        Manifest { entries }
    }

    pub fn render(&self) -> String {
        let mut keys: Vec<&String> = self.entries.keys().collect();
        keys.sort();
        let mut out = format!("{HEADER}\n");
        for k in keys {
            out += &render_line(k, &self.entries[k]);
        }
        out
    }

    /// What `key` is, when the object listed with this size, ETag and
    /// last-modified time is the one the manifest describes (by ETag where
    /// the listing gives one, else by last-modified time).
    pub fn get(
        &self,
        key: &str,
        size: u64,
        etag: Option<&str>,
        modified_ms: i64,
    ) -> Option<Object> {
        let o = self.entries.get(key)?;
        matches(o, size, etag, modified_ms).then(|| o.clone())
    }

    /// Records `key` as the server has it (ETag and last-modified time).
    pub fn insert(&mut self, key: String, obj: Object) {
        if !key.contains('\n') && !key.contains('\t') {
            self.entries.insert(key, obj);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets every key under `prefix/`.
    pub fn remove_under(&mut self, prefix: &str) {
        let p = format!("{prefix}/");
        self.entries.retain(|k, _| !k.starts_with(&p));
    }

    /// Keeps only the keys `keep` says still exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

/// The key of the manifest of prefix `root` (no slashes at either end).
pub fn key_of(root: &str) -> String {
    if root.is_empty() {
        NAME.to_string()
    } else {
        format!("{root}/{NAME}")
    }
}

/// The line of a directory (kept so that an empty one comes back, and the
/// mode and mtime of any): its key with a slash after it (`/` alone for the
/// bucket's root), written before the objects' lines.
pub fn render_dir_line(key: &str, o: &Object) -> String {
    render_line(&format!("{key}/"), o)
}

/// The manifest's first line.
pub fn header() -> String {
    format!("{HEADER}\n")
}

/// One line of a manifest: the key and what ferry wrote there. `None` for a
/// line that is not one (a header, a damaged line).
pub fn parse_line(line: &str) -> Option<(String, Object)> {
    let f: Vec<&str> = line.splitn(7, '\t').collect();
    let [etag, modified, size, mtime, mode, blake3, key] = f[..] else {
        return None;
    };
    let (Ok(size), Ok(ns)) = (size.parse::<u64>(), mtime.parse::<i128>()) else {
        return None;
    };
    let o = Object {
        size,
        mtime: (
            ns.div_euclid(1_000_000_000) as i64,
            ns.rem_euclid(1_000_000_000) as u32,
        ),
        mode: u32::from_str_radix(mode, 8).ok(),
        blake3: unhex(blake3),
        etag: (!etag.is_empty()).then(|| etag.to_string()),
        modified_ms: modified.parse().unwrap_or(i64::MIN),
    };
    Some((key.to_string(), o))
}

/// The line of `key` (empty for a key a line cannot hold).
pub fn render_line(key: &str, o: &Object) -> String {
    if key.contains('\n') || key.contains('\t') {
        return String::new();
    }
    let ns = o.mtime.0 as i128 * 1_000_000_000 + o.mtime.1 as i128;
    format!(
        "{}\t{}\t{}\t{ns}\t{}\t{}\t{key}\n",
        o.etag.as_deref().unwrap_or(""),
        o.modified_ms,
        o.size,
        o.mode.map(|m| format!("{m:o}")).unwrap_or_default(),
        o.blake3.map(|h| hex(&h)).unwrap_or_default(),
    )
}

/// Whether the object listed with this size, ETag and last-modified time is
/// the one line `o` describes (by ETag where the listing gives one, else by
/// last-modified time).
pub fn matches(o: &Object, size: u64, etag: Option<&str>, modified_ms: i64) -> bool {
    // servers quote ETags in headers and sometimes not in listings
    let bare = |t: Option<&str>| t.map(|t| t.trim_matches('"').to_string());
    let same = match (etag, &o.etag) {
        (Some(_), Some(_)) => bare(o.etag.as_deref()) == bare(etag),
        // a HEAD gives whole seconds, a listing milliseconds
        _ => o.modified_ms.div_euclid(1000) == modified_ms.div_euclid(1000),
    };
    o.size == size && same
}

/// A manifest read line by line in key order, as it streams from the
/// server, so that a prefix of a million objects is joined with its listing
/// in constant memory. Keys must be asked for in byte order (the order the
/// manifest is written in and S3 lists in).
pub struct Cursor {
    lines: Box<dyn Iterator<Item = std::io::Result<String>> + Send>,
    head: Option<(String, Object)>,
    /// The directories the manifest records (written before the objects):
    /// key (no trailing slash; empty for the bucket's root) → mode, mtime.
    pub dirs: BTreeMap<String, Object>,
}

impl Cursor {
    /// A cursor over `lines` (a manifest's, header first); one whose header
    /// is not a manifest's is empty.
    pub fn new(mut lines: Box<dyn Iterator<Item = std::io::Result<String>> + Send>) -> Cursor {
        let ok = matches!(lines.next(), Some(Ok(h)) if h == HEADER);
        if !ok {
            lines = Box::new(std::iter::empty());
        }
        let mut c = Cursor {
            lines,
            head: None,
            dirs: BTreeMap::new(),
        };
        c.advance();
        c
    }

    /// A cursor with nothing in it (no manifest).
    pub fn empty() -> Cursor {
        Cursor::new(Box::new(std::iter::empty()))
    }

    fn advance(&mut self) {
        self.head = None;
        // a read error ends the manifest: what it would have said is asked
        // of the server instead
        while let Some(Ok(line)) = self.lines.next() {
            if let Some((k, o)) = parse_line(&line) {
                if let Some(dir) = k.strip_suffix('/') {
                    self.dirs.insert(dir.to_string(), o);
                    continue;
                }
                self.head = Some((k, o));
                return;
            }
        }
    }

    /// The line for `key`, skipping the lines before it.
    pub fn seek(&mut self, key: &str) -> Option<Object> {
        loop {
            match &self.head {
                Some((k, _)) if k.as_str() < key => self.advance(),
                Some((k, o)) if k == key => {
                    let o = o.clone();
                    self.advance();
                    return Some(o);
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_a_replaced_object_is_not_trusted() {
        let mut m = Manifest::default();
        let o = Object {
            size: 5,
            mtime: (1_600_000_000, 123),
            mode: Some(0o640),
            blake3: Some([9; 32]),
            etag: Some("\"abc\"".into()),
            modified_ms: 1_700_000_000_123,
        };
        m.insert("p/a b".into(), o.clone());
        let back = Manifest::parse(&m.render());
        let at = 1_700_000_000_123;
        assert_eq!(back.get("p/a b", 5, Some("abc"), at), Some(o.clone()));
        assert_eq!(back.get("p/a b", 5, Some("\"other\""), at), None);
        assert_eq!(back.get("p/a b", 6, Some("\"abc\""), at), None);
        // a listing without ETags: the last-modified time decides
        assert_eq!(back.get("p/a b", 5, None, at), Some(o));
        assert_eq!(back.get("p/a b", 5, None, at + 1000), None);
        assert!(Manifest::parse("not a manifest\nx").entries.is_empty());
    }

    #[test]
    fn a_cursor_finds_lines_asked_for_in_key_order_and_skips_the_rest() {
        let mut m = Manifest::default();
        let o = |size| Object {
            size,
            mtime: (1, 2),
            mode: Some(0o600),
            blake3: None,
            etag: None,
            modified_ms: 5,
        };
        for (k, n) in [("a", 1), ("b.txt", 2), ("b/c", 3), ("d", 4)] {
            m.insert(k.into(), o(n));
        }
        let text = m.render();
        let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
        let mut c = Cursor::new(Box::new(lines.into_iter()));
        assert_eq!(c.seek("a").map(|o| o.size), Some(1));
        assert_eq!(c.seek("b.txt").map(|o| o.size), Some(2));
        assert_eq!(c.seek("b/a"), None);
        assert_eq!(c.seek("d").map(|o| o.size), Some(4));
        assert_eq!(c.seek("e"), None);
        let bad: Vec<std::io::Result<String>> =
            vec![Ok("nope".into()), Ok(render_line("a", &o(1)))];
        assert_eq!(Cursor::new(Box::new(bad.into_iter())).seek("a"), None);
    }
}
