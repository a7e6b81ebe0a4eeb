//! The chunk map ferry keeps beside a large object it uploaded: the object's
//! content-defined chunks (ferry's chunker, [`crate::chunk`]: lengths and
//! XXH3-128 names, in order), with the size, BLAKE3 and ETag of the very
//! object it describes. It lives at `.ferry-chunks/<key>` in the same bucket
//! (listings leave that prefix out), 20 bytes a chunk (about 0.3% of the
//! object). When the object is next replaced, the new file's chunks are
//! matched against it to find the ranges of the old object that can be
//! copied on the server instead of sent ([`super::compose`]).
//!
//! For an object uploaded as it arrived ([`super::stream`]) the map is also
//! where its BLAKE3 is kept: the object's metadata names a check id, and
//! the map's first line ([`Header`]) carries the same id with the BLAKE3 a
//! download is checked against. Otherwise not for checking content: a map
//! whose size, BLAKE3 or ETag differs from the object now at the key
//! (replaced by another tool) is ignored, and a download is verified by the
//! BLAKE3 in the object's metadata.

use super::bucket::{hex, unhex, Object};
use crate::chunk::{ChunkHash, Chunker};
use std::fs::File;
use std::io::{self, Read, Seek};

const HEADER: &str = "ferry-chunks 1";
/// Where chunk maps live in a bucket (a prefix listings leave out).
pub const PREFIX: &str = ".ferry-chunks";

/// The chunk map's key for the object at `key`.
pub fn key_of(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

/// Whether a full key is a chunk map (not a user's object).
pub fn is_map(key: &str) -> bool {
    key.starts_with(PREFIX) && key[PREFIX.len()..].starts_with('/')
}

/// One object's chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMap {
    pub size: u64,
    pub blake3: [u8; 32],
    /// The ETag of the object described (empty when the server gave none).
    pub etag: String,
    /// For a streamed upload, the check id in the object's metadata (see
    /// [`super::stream`]): what ties the map to the object when it is
    /// written before the object exists (empty otherwise).
    pub check: String,
    /// Lengths and names, in order.
    pub chunks: Vec<(u32, ChunkHash)>,
}

impl ChunkMap {
    /// Cuts the first `len` bytes of `file` into chunks.
    pub fn of_file(file: &File, len: u64, blake3: [u8; 32]) -> io::Result<ChunkMap> {
        let mut f = file.try_clone()?;
        f.seek(io::SeekFrom::Start(0))?;
        let mut chunker = Chunker::chunks_only(io::BufReader::with_capacity(1 << 20, f.take(len)));
        let mut chunks = Vec::with_capacity((len / crate::chunk::AVG_CHUNK as u64) as usize + 1);
        while let Some((c, _)) = chunker.next_chunk()? {
            chunks.push((c.len, c.hash));
        }
        if chunker.position() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file cut short",
            ));
        }
        Ok(ChunkMap {
            size: len,
            blake3,
            etag: String::new(),
            check: String::new(),
            chunks,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = format!(
            "{HEADER}\t{}\t{}\t{}",
            self.size,
            hex(&self.blake3),
            self.etag.trim_matches('"')
        )
        .into_bytes();
        if !self.check.is_empty() {
            out.push(b'\t');
            out.extend_from_slice(self.check.as_bytes());
        }
        out.push(b'\n');
        out.reserve(self.chunks.len() * 20);
        for (len, h) in &self.chunks {
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(h);
        }
        out
    }

    /// Reads a map; `None` if it is not one, or its chunks do not add up to
    /// its size.
    pub fn parse(data: &[u8]) -> Option<ChunkMap> {
        let (head, nl) = Header::parse(data)?;
        let body = &data[nl + 1..];
        if !body.len().is_multiple_of(20) {
            return None;
        }
        let chunks: Vec<(u32, ChunkHash)> = body
            .chunks_exact(20)
            .map(|r| {
                let len = u32::from_le_bytes(r[..4].try_into().unwrap_or_default());
                let h: ChunkHash = r[4..].try_into().unwrap_or_default();
                (len, h)
            })
            .collect();
        if chunks.iter().map(|c| c.0 as u64).sum::<u64>() != head.size {
            return None;
        }
        Some(ChunkMap {
            size: head.size,
            blake3: head.blake3,
            etag: head.etag,
            check: head.check,
            chunks,
        })
    }

    /// Whether this map describes `o` (the object now at its key).
    pub fn describes(&self, o: &Object) -> bool {
        let etag_ok = match o.etag.as_deref() {
            Some(e) if !self.etag.is_empty() => e.trim_matches('"') == self.etag,
            _ => true,
        };
        o.size == self.size && o.blake3 == Some(self.blake3) && etag_ok
    }
}

/// A map's first line: what it describes, without its chunks (a streamed
/// object's check value is read from here; see [`super::bucket`]'s HEAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub size: u64,
    pub blake3: [u8; 32],
    pub etag: String,
    pub check: String,
}

/// Bytes of a map enough to hold its first line.
pub const HEADER_MAX: u64 = 512;

impl Header {
    /// The first line of `data` and where it ends (the newline).
    pub fn parse(data: &[u8]) -> Option<(Header, usize)> {
        let nl = data.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&data[..nl]).ok()?;
        let f: Vec<&str> = head.split('\t').collect();
        let (size, b3, etag, check) = match f[..] {
            [HEADER, size, b3, etag] => (size, b3, etag, ""),
            [HEADER, size, b3, etag, check] => (size, b3, etag, check),
            _ => return None,
        };
        Some((
            Header {
                size: size.parse().ok()?,
                blake3: unhex(b3)?,
                etag: etag.to_string(),
                check: check.to_string(),
            },
            nl,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_round_trips_and_a_cut_one_is_refused() {
        let m = ChunkMap {
            size: 10,
            blake3: [3; 32],
            etag: "abc-2".into(),
            check: String::new(),
            chunks: vec![(4, [1; 16]), (6, [2; 16])],
        };
        let r = m.render();
        assert_eq!(ChunkMap::parse(&r), Some(m.clone()));
        let streamed = ChunkMap {
            check: "0123abcd".into(),
            etag: String::new(),
            ..m.clone()
        };
        let r2 = streamed.render();
        assert_eq!(ChunkMap::parse(&r2), Some(streamed.clone()));
        assert_eq!(Header::parse(&r2[..40.min(r2.len())]), None);
        assert_eq!(
            Header::parse(&r2).map(|h| h.0.check),
            Some("0123abcd".into())
        );
        assert_eq!(ChunkMap::parse(&r[..r.len() - 1]), None);
        let mut o = Object {
            size: 10,
            mtime: (0, 0),
            mode: None,
            blake3: Some([3; 32]),
            etag: Some("\"abc-2\"".into()),
            modified_ms: 0,
        };
        assert!(m.describes(&o));
        o.etag = Some("\"other-2\"".into());
        assert!(!m.describes(&o));
    }

    #[test]
    fn only_keys_under_the_prefix_are_maps() {
        assert!(is_map(".ferry-chunks/a/b"));
        assert!(!is_map(".ferry-chunksx/a"));
        assert!(!is_map("data/.ferry-chunks/a"));
    }
}
