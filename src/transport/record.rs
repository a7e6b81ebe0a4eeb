//! TLS 1.3 record protection (RFC 8446 §5) for the daemon's connections once
//! rustls has done the handshake: records sealed straight into the buffer that
//! goes to the socket, and opened in place in the buffer the socket was read
//! into. rustls's own buffered record layer copied every received byte three
//! times after the socket and every sent byte once more (bench/NOTES.md §17).
//!
//! What is here is only the per-record work: the key, the nonce, the content
//! type. The keys come from rustls (its handshake and its key schedule for key
//! updates); which records may arrive when is `tls`'s business.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;
use std::ops::Range;

/// A record's header: outer type, legacy version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record may carry.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The longest protected payload a peer may send (§5.2: 2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG: usize = 16;
/// Bytes a record adds to its plaintext: header, inner content type, tag.
pub const OVERHEAD: usize = HEADER + 1 + TAG;

/// Content types (§5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Why a record could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The tag did not match: the record was altered, or is not ours.
    Altered,
    /// Authentic but malformed: all padding, no content type.
    NoContentType,
}

/// One direction's protection: its key, its IV and the next sequence number.
pub struct Protection {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Protection {
    /// The protection for traffic secrets from rustls, starting at `seq`.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Protection, String> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("a TLS cipher suite ferry cannot seal records with".into()),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| "bad TLS key length")?;
        Ok(Protection {
            key: LessSafeKey::new(key),
            iv: iv.as_ref().try_into().map_err(|_| "bad TLS IV length")?,
            seq,
        })
    }

    /// The sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The per-record nonce: the IV XORed with the sequence number (§5.3).
    fn nonce(&mut self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// Appends one record carrying `data` (at most [`MAX_PLAINTEXT`] bytes) of
    /// content type `typ` to `out`.
    pub fn seal(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) {
        assert!(data.len() <= MAX_PLAINTEXT, "record too long");
        let start = out.len();
        let len = (data.len() + 1 + TAG) as u16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.push(typ);
        let nonce = self.nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
            .expect("sealing cannot fail for a record this short");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens `record` (header included, as read) in place. Returns its inner
    /// content type and where its plaintext now lies within `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), OpenError> {
        let header: [u8; HEADER] = record[..HEADER].try_into().expect("a whole header");
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER..])
            .map_err(|_| OpenError::Altered)?;
        // the content type is the last byte that is not padding (§5.4)
        let at = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(OpenError::NoContentType)?;
        Ok((plain[at], HEADER..HEADER + at))
    }
}

/// The length of the protected payload a record header announces.
pub fn payload_len(header: &[u8]) -> usize {
    u16::from_be_bytes([header[3], header[4]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(k: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([k; 32]),
            iv: Iv::from([k; 12]),
        }
    }

    #[test]
    fn sealed_records_open_in_order_and_not_out_of_it() {
        let (mut tx, mut rx) = (
            Protection::new(7, &secrets(1)).unwrap(),
            Protection::new(7, &secrets(1)).unwrap(),
        );
        let mut wire = Vec::new();
        tx.seal(APPLICATION_DATA, b"hello", &mut wire);
        tx.seal(ALERT, &[1, 0], &mut wire);
        assert_eq!(wire.len(), 5 + 2 + 2 * OVERHEAD);
        assert_eq!(payload_len(&wire), 5 + 1 + TAG);
        let (first, second) = wire.split_at_mut(5 + OVERHEAD);
        let (typ, range) = rx.open(first).unwrap();
        assert_eq!((typ, &first[range]), (APPLICATION_DATA, &b"hello"[..]));
        let (typ, range) = rx.open(second).unwrap();
        assert_eq!((typ, &second[range]), (ALERT, &[1u8, 0][..]));

        // a replayed record (its sequence number is past) does not open
        let mut again = Vec::new();
        Protection::new(7, &secrets(1))
            .unwrap()
            .seal(APPLICATION_DATA, b"hello", &mut again);
        assert_eq!(rx.open(&mut again), Err(OpenError::Altered));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_is_caught() {
        let mut wire = Vec::new();
        Protection::new(0, &secrets(2))
            .unwrap()
            .seal(APPLICATION_DATA, &[9; 100], &mut wire);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            let mut rx = Protection::new(0, &secrets(2)).unwrap();
            assert_eq!(rx.open(&mut bad), Err(OpenError::Altered), "byte {i}");
        }
    }
}
