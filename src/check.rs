//! Check values that both ends of a transfer compute, each in one place so that
//! the two can never drift apart: the manifest of a file sent in segments, and
//! the whole-file BLAKE3 that `--checksum` compares. Not for the checks of data
//! in flight (XXH3 of a whole file, the keyed GMAC of a rebuilt one, chunk
//! hashes): those are in [`crate::chunk`].

use std::io::{self, Read};

/// The check of a file sent in segments: BLAKE3 over each segment's check
/// value, in the order of the segments' offsets. The sender sends it in
/// `FileEnd`; the receiver computes it from the segments it took in.
pub fn segment_manifest<'a>(checks: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
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
    fn the_file_checksum_is_blake3_of_the_bytes() {
        let data = vec![7u8; 200_000];
        assert_eq!(
            file_checksum(&data[..]).unwrap(),
            *blake3::hash(&data).as_bytes()
        );
    }
}
