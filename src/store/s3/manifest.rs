//! The manifest ferry keeps beside what it uploaded: one object,
//! `<prefix>/.ferry-manifest`, listing every file under the prefix with the
//! ETag it had when ferry wrote it, its size, mtime (ns), mode and BLAKE3. A
//! listing gives each object's size and ETag but none of its metadata, so
//! without this a sync would need a HEAD per object to learn mtimes; with
//! it, an object whose size and ETag still match its line needs no request
//! at all. A line that does not match (the object was replaced by another
//! tool) is ignored and the object asked about directly.
//!
//! Not for deciding what to send (the receiver does that from what
//! [`super::destination`] reports) nor for verifying content: the BLAKE3 in
//! each object's own metadata is what a download is checked against.

use super::bucket::{hex, unhex, Object};
use std::collections::HashMap;

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
            let f: Vec<&str> = line.splitn(7, '\t').collect();
            let [etag, modified, size, mtime, mode, blake3, key] = f[..] else {
                continue;
            };
            let (Ok(size), Ok(ns)) = (size.parse::<u64>(), mtime.parse::<i128>()) else {
                continue;
            };
            entries.insert(
                key.to_string(),
                Object {
                    size,
                    mtime: (
                        ns.div_euclid(1_000_000_000) as i64,
                        ns.rem_euclid(1_000_000_000) as u32,
                    ),
                    mode: u32::from_str_radix(mode, 8).ok(),
                    blake3: unhex(blake3),
                    etag: (!etag.is_empty()).then(|| etag.to_string()),
                    modified_ms: modified.parse().unwrap_or(i64::MIN),
                },
            );
        }
        Manifest { entries }
    }

    pub fn render(&self) -> String {
        let mut keys: Vec<&String> = self.entries.keys().collect();
        keys.sort();
        let mut out = format!("{HEADER}\n");
        for k in keys {
            let o = &self.entries[k];
            let ns = o.mtime.0 as i128 * 1_000_000_000 + o.mtime.1 as i128;
            out += &format!(
                "{}\t{}\t{}\t{ns}\t{}\t{}\t{k}\n",
                o.etag.as_deref().unwrap_or(""),
                o.modified_ms,
                o.size,
                o.mode.map(|m| format!("{m:o}")).unwrap_or_default(),
                o.blake3.map(|h| hex(&h)).unwrap_or_default(),
            );
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
        // servers quote ETags in headers and sometimes not in listings
        let bare = |t: Option<&str>| t.map(|t| t.trim_matches('"').to_string());
        let same = match (etag, &o.etag) {
            (Some(_), Some(_)) => bare(o.etag.as_deref()) == bare(etag),
            // a HEAD gives whole seconds, a listing milliseconds
            _ => o.modified_ms.div_euclid(1000) == modified_ms.div_euclid(1000),
        };
        (o.size == size && same).then(|| o.clone())
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
}
