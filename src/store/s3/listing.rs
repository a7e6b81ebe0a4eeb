//! A prefix's objects in key order as they stream from the server, each
//! joined with its line in the prefix's manifest (read as it streams too):
//! what both the source and the destination walk, so that neither holds a
//! listing whole and memory stays flat however many objects there are. Also
//! the order the engine walks a local tree in, compared with S3's.
//!
//! Not for deciding anything about the objects (that is [`super::source`]
//! and [`super::destination`]) nor for talking to the server (that is
//! [`super::bucket`]).

use super::bucket::{Bucket, ListStream, Listed, Object};
use super::manifest::{self, Cursor};
use std::cmp::Ordering;
use std::io;

/// One object: its full key, what the listing says of it, and what the
/// manifest says (only when its line still describes this very object).
pub type Item = (String, Listed, Option<Object>);

/// The objects under one prefix, in S3's (byte) order of keys.
pub struct Listing {
    list: ListStream,
    manifest: Cursor,
}

impl Listing {
    /// Starts listing under `root` (a key without slashes at either end;
    /// empty: the whole bucket), with `root`'s manifest. Costs the manifest's
    /// GET; the listing's pages are asked for as they are consumed.
    pub fn open(bucket: &Bucket, root: &str) -> io::Result<Listing> {
        let manifest = match bucket.lines(&manifest::key_of(root))? {
            Some(lines) => Cursor::new(Box::new(lines)),
            None => Cursor::empty(),
        };
        Ok(Listing {
            list: bucket.list_stream(root),
            manifest,
        })
    }

    /// The directories the manifest records (key → mode and mtime).
    pub fn dirs(&self) -> &std::collections::BTreeMap<String, Object> {
        &self.manifest.dirs
    }

    /// The next object, manifests left out.
    pub fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            let Some((key, l)) = self.list.next_object()? else {
                return Ok(None);
            };
            if key.rsplit('/').next() == Some(manifest::NAME) || super::chunkmap::is_map(&key) {
                continue;
            }
            let known = self
                .manifest
                .seek(&key)
                .filter(|o| manifest::matches(o, l.size, l.etag.as_deref(), l.modified_ms));
            return Ok(Some((key, l, known)));
        }
    }
}

/// The order the engine walks a tree in (a directory, then what is in it,
/// names sorted bytewise): paths compared with `/` below every other byte.
/// S3 lists in plain byte order, where `a.txt` comes before `a/b`.
pub fn walk_cmp(a: &str, b: &str) -> Ordering {
    let m = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(m).cmp(b.bytes().map(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_puts_a_directory_before_names_that_sort_between_it_and_its_slash() {
        assert_eq!(walk_cmp("sub/b", "sub.txt"), Ordering::Less);
        assert_eq!("sub/b".cmp("sub.txt"), Ordering::Greater);
        assert_eq!(walk_cmp("sub", "sub/b"), Ordering::Less);
        assert_eq!(walk_cmp("a/z", "b"), Ordering::Less);
        assert_eq!(walk_cmp("x", "x"), Ordering::Equal);
    }
}
