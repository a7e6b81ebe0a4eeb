//! Check values that both ends of a transfer compute, each in one place so that
//! the two can never drift apart: [`CheckValue`], which names the check a
//! file's or a segment's 32 bytes are (the wire's `FileEnd`, `RecipeEnd` and
//! `SegmentEnd` carry just the bytes; which check they are follows from how
//! the file was sent), the manifest of a file sent in segments, and the
//! whole-file BLAKE3 that `--checksum` compares. Not for computing the checks
//! of data in flight (XXH3 of a whole file, the keyed GMAC of a rebuilt one,
//! chunk hashes): those are in [`crate::chunk`].

use std::io::{self, Read};

/// Which check a [`CheckValue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// XXH3-128 of a file sent whole ([`crate::chunk::WholeCheck`]), in the
    /// first 16 of the 32 bytes.
    WholeFile,
    /// The keyed GMAC check of a file rebuilt from old data
    /// ([`crate::chunk::RebuildCheck`], under the key `Want` carried).
    Rebuilt,
    /// The manifest of a file sent in segments: [`segment_manifest`] of the
    /// segments' checks.
    Manifest,
    /// XXH3-128 of one segment ([`crate::chunk::WholeCheck`] of its bytes).
    Segment,
    /// A file sent whole with holes (`-S`, hole messages): XXH3-128 of its
    /// data bytes, then XXH3-128 of its holes' extents and its size (see
    /// [`crate::chunk::WholeCheck`], which says why that is sound).
    Sparse,
}

/// A check value and which check it is. Two values are equal only if they
/// are the same check with the same bytes: a segment's check never passes for
/// a whole file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckValue {
    pub check: Check,
    bytes: [u8; 32],
}

impl CheckValue {
    /// `bytes` read as `check`: what this side computed, or what the peer sent
    /// where the protocol says which check it is.
    pub fn new(check: Check, bytes: [u8; 32]) -> Self {
        CheckValue { check, bytes }
    }

    /// The 32 bytes the wire carries (protocol version 2).
    pub fn to_wire(&self) -> [u8; 32] {
        self.bytes
    }

    /// Whether `sent`, read as the same check, is this value.
    pub fn matches(&self, sent: &[u8; 32]) -> bool {
        self.bytes == *sent
    }
}

impl serde::Serialize for CheckValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let len = if matches!(self.check, Check::WholeFile | Check::Segment) {
            16
        } else {
            32
        };
        let hex: String = self.bytes[..len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut st = s.serialize_struct("CheckValue", 2)?;
        st.serialize_field("check", &self.check)?;
        st.serialize_field("value", &hex)?;
        st.end()
    }
}

/// The manifest of a file sent in segments, from its segments' checks in the
/// order of their offsets.
pub fn manifest_of<'a>(segments: impl IntoIterator<Item = &'a CheckValue>) -> CheckValue {
    let bytes = segment_manifest(segments.into_iter().map(|v| {
        debug_assert_eq!(v.check, Check::Segment);
        &v.bytes
    }));
    CheckValue::new(Check::Manifest, bytes)
}

/// The check of a file sent in segments: BLAKE3 over each segment's check
/// value, in the order of the segments' offsets. The sender sends it in
/// `FileEnd`; the receiver computes it from the segments it took in.
fn segment_manifest<'a>(checks: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut manifest = blake3::Hasher::new();
    for check in checks {
        manifest.update(check);
    }
    *manifest.finalize().as_bytes()
}

/// The BLAKE3 of everything `from` reads: what `--checksum` lists for a source
/// file and compares with the file at the destination.
pub fn file_checksum(from: impl Read) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(from)?;
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_blake3_of_the_checks_in_order() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        assert_eq!(segment_manifest([&a, &b]), *blake3::hash(&both).as_bytes());
        assert_ne!(segment_manifest([&a, &b]), segment_manifest([&b, &a]));
        assert_eq!(segment_manifest([]), *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn a_check_value_says_which_check_it_is() {
        let seg = CheckValue::new(Check::Segment, [3u8; 32]);
        assert_ne!(seg, CheckValue::new(Check::WholeFile, [3u8; 32]));
        assert!(seg.matches(&[3u8; 32]));
        assert_eq!(seg.to_wire(), [3u8; 32]);
        let m = manifest_of([&seg]);
        assert_eq!(m.check, Check::Manifest);
        assert_eq!(m.to_wire(), segment_manifest([&[3u8; 32]]));
        assert_eq!(
            serde_json::to_string(&seg).unwrap(),
            format!(r#"{{"check":"segment","value":"{}"}}"#, "03".repeat(16))
        );
    }

    #[test]
    fn the_file_checksum_is_blake3_of_the_bytes() {
        let data = vec![7u8; 200_000];
        assert_eq!(
            file_checksum(&data[..]).unwrap(),
            *blake3::hash(&data).as_bytes()
        );
    }
}
