//! TLS 1.3 record protection (RFC 8446 §5) for the daemon's connections once
//! rustls has done the handshake: records sealed from the caller's bytes
//! straight into the buffer that goes to the socket, and opened from the
//! buffer the socket was read into straight into the reader's buffer (or in
//! place, when that is too small for the record). rustls's own buffered record
//! layer copied every received byte three times after the socket and every
//! sent byte once more (bench/NOTES.md §17); sealing and opening in place
//! still copied each byte once (§21).
//!
//! What is here is only the per-record work: the key, the nonce, the content
//! type. The keys come from rustls (its handshake and its key schedule for key
//! updates); which records may arrive when is `tls`'s business.
//!
//! # Security
//!
//! **Trusted:** the traffic secrets and the first sequence number, which come
//! from rustls after it has authenticated the peer's key. **Not trusted:**
//! every byte of a record to open, header included.
//!
//! **Nonces.** Each record's nonce is the key's IV XORed with a 64-bit
//! sequence number (RFC 8446 §5.3), which [`Protection`] advances by one for
//! every record it seals and every one it tries to open (whether or not it
//! opens), and never sets back: a nonce is used once per key as long as each key lives in one
//! `Protection`, used for one direction, and a `Protection` is made only from
//! a fresh secret (the handshake's, or the next one from rustls's key schedule
//! after a KeyUpdate). The sequence number never wraps: the writer
//! (`tls::writer`) replaces its key before it has sealed the cipher suite's
//! limit (AES-GCM: 2^24 records, as rustls counts them; ChaCha20-Poly1305: at
//! 2^64 - 1), and a peer would have to send 2^64 records under one key to
//! wrap ours.
//!
//! **Opening.** The tag covers the header (as additional data) and the inner
//! plaintext with its content type, so a record altered anywhere, sealed under
//! another key, replayed, reordered or following a dropped one (its implicit
//! sequence number is then wrong) does not open: [`OpenError::Altered`]. The
//! reader treats that as fatal, so a forger gets one try per connection and
//! the AEAD's integrity limit is never approached. [`Protection::open_into`]
//! may leave unauthenticated bytes in `out` when the record does not open;
//! they must not be used (the reader returns an error instead of a length).
//! The content type is the last byte that is not zero padding; a record of
//! only padding is [`OpenError::NoContentType`]. Which content types may come
//! is not judged here.
//!
//! **Lengths.** [`Protection::seal`] refuses (panics on) more than
//! [`MAX_PLAINTEXT`] bytes: it seals only ferry's own data. Opening takes the
//! record as the caller cut it: the caller checks the header's length against
//! [`MAX_CIPHERTEXT`] before it collects the rest of the record, and passes
//! at least a whole header. Opening does not check the inner plaintext against
//! 2^14 + 1 bytes (§5.4): an authenticated peer may send up to 2^14 + 255, which
//! is within the buffers sized for [`MAX_CIPHERTEXT`].

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

    /// Seals one record carrying `data` (at most [`MAX_PLAINTEXT`] bytes) of
    /// content type `typ` into the front of `out`, which must hold
    /// `data.len() + OVERHEAD` bytes; returns that length. The plaintext is
    /// encrypted from where it lies into `out` (not copied there first).
    pub fn seal(&mut self, typ: u8, data: &[u8], out: &mut [u8]) -> usize {
        assert!(data.len() <= MAX_PLAINTEXT, "record too long");
        let total = data.len() + OVERHEAD;
        let len = (data.len() + 1 + TAG) as u16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out[..HEADER].copy_from_slice(&header);
        let (body, type_and_tag) = out[HEADER..total].split_at_mut(data.len());
        let nonce = self.nonce();
        self.key
            .seal_out_of_place_scatter(nonce, Aad::from(header), data, body, &[typ], type_and_tag)
            .expect("sealing cannot fail for a record this short");
        total
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
        let at = content_type_at(plain)?;
        Ok((plain[at], HEADER..HEADER + at))
    }

    /// Opens `record` (header included, as read) into the front of `out`,
    /// which must hold [`sealed_len`] of it: the decryption writes the
    /// plaintext where the caller wants it instead of in place, to be copied
    /// after. Returns the inner content type and the plaintext's length; the
    /// bytes of `out` after it (the content type, any padding) are not part of
    /// it. If the record does not open, `out` holds nothing of use.
    pub fn open_into(&mut self, record: &[u8], out: &mut [u8]) -> Result<(u8, usize), OpenError> {
        if record.len() < HEADER + TAG {
            return Err(OpenError::Altered);
        }
        let header: [u8; HEADER] = record[..HEADER].try_into().expect("a whole header");
        let nonce = self.nonce();
        let (sealed, tag) = record[HEADER..].split_at(record.len() - HEADER - TAG);
        let plain = &mut out[..sealed.len()];
        self.key
            .open_separate_gather(nonce, Aad::from(header), sealed, tag, plain)
            .map_err(|_| OpenError::Altered)?;
        let at = content_type_at(plain)?;
        Ok((plain[at], at))
    }
}

/// Where the content type lies in an opened record's plaintext: the last byte
/// that is not padding (§5.4).
fn content_type_at(plain: &[u8]) -> Result<usize, OpenError> {
    plain
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(OpenError::NoContentType)
}

/// How many bytes [`Protection::open_into`] writes for a whole record of
/// `len` bytes (header included): its plaintext, content type and padding.
pub fn sealed_len(len: usize) -> usize {
    len.saturating_sub(HEADER + TAG)
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

    /// Appends a sealed record to `wire`.
    fn push(p: &mut Protection, typ: u8, data: &[u8], wire: &mut Vec<u8>) {
        let at = wire.len();
        wire.resize(at + data.len() + OVERHEAD, 0);
        assert_eq!(p.seal(typ, data, &mut wire[at..]), data.len() + OVERHEAD);
    }

    #[test]
    fn sealed_records_open_in_order_and_not_out_of_it() {
        let (mut tx, mut rx) = (
            Protection::new(7, &secrets(1)).unwrap(),
            Protection::new(7, &secrets(1)).unwrap(),
        );
        let mut wire = Vec::new();
        push(&mut tx, APPLICATION_DATA, b"hello", &mut wire);
        push(&mut tx, ALERT, &[1, 0], &mut wire);
        assert_eq!(wire.len(), 5 + 2 + 2 * OVERHEAD);
        assert_eq!(payload_len(&wire), 5 + 1 + TAG);
        let (first, second) = wire.split_at_mut(5 + OVERHEAD);
        let (typ, range) = rx.open(first).unwrap();
        assert_eq!((typ, &first[range]), (APPLICATION_DATA, &b"hello"[..]));
        let (typ, range) = rx.open(second).unwrap();
        assert_eq!((typ, &second[range]), (ALERT, &[1u8, 0][..]));

        // a replayed record (its sequence number is past) does not open
        let mut again = Vec::new();
        push(
            &mut Protection::new(7, &secrets(1)).unwrap(),
            APPLICATION_DATA,
            b"hello",
            &mut again,
        );
        assert_eq!(rx.open(&mut again), Err(OpenError::Altered));
        let mut out = [0u8; 64];
        assert_eq!(rx.open_into(&again, &mut out), Err(OpenError::Altered));
    }

    #[test]
    fn records_open_into_another_buffer_as_they_open_in_place() {
        let mut tx = Protection::new(3, &secrets(4)).unwrap();
        let (mut a, mut b) = (
            Protection::new(3, &secrets(4)).unwrap(),
            Protection::new(3, &secrets(4)).unwrap(),
        );
        let data: Vec<u8> = (0..MAX_PLAINTEXT).map(|i| (i * 7 % 251) as u8).collect();
        let mut wire = Vec::new();
        push(&mut tx, APPLICATION_DATA, &data, &mut wire);
        push(&mut tx, HANDSHAKE, &[24, 0, 0, 1, 0], &mut wire);
        push(&mut tx, APPLICATION_DATA, b"", &mut wire);
        // a record with padding after its content type (§5.4), as another
        // TLS 1.3 implementation may send
        let mut padded = b"tail".to_vec();
        padded.extend_from_slice(&[APPLICATION_DATA, 0, 0, 0]);
        let len = (padded.len() + TAG) as u16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = tx.nonce();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut padded)
            .unwrap();
        wire.extend_from_slice(&header);
        wire.extend_from_slice(&padded);
        wire.extend_from_slice(tag.as_ref());

        let mut rest = &mut wire[..];
        let mut out = vec![0xAAu8; MAX_PLAINTEXT + 1];
        let want: [(u8, &[u8]); 4] = [
            (APPLICATION_DATA, &data),
            (HANDSHAKE, &[24, 0, 0, 1, 0]),
            (APPLICATION_DATA, b""),
            (APPLICATION_DATA, b"tail"),
        ];
        for (typ, body) in want {
            let len = HEADER + payload_len(rest);
            let (record, after) = rest.split_at_mut(len);
            let (t, n) = a.open_into(record, &mut out[..sealed_len(len)]).unwrap();
            assert_eq!((t, &out[..n]), (typ, body));
            let (t, range) = b.open(record).unwrap();
            assert_eq!((t, &record[range]), (typ, body));
            rest = after;
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_is_caught() {
        let mut wire = Vec::new();
        push(
            &mut Protection::new(0, &secrets(2)).unwrap(),
            APPLICATION_DATA,
            &[9; 100],
            &mut wire,
        );
        let mut out = [0u8; 128];
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            let mut rx = Protection::new(0, &secrets(2)).unwrap();
            assert_eq!(
                rx.open_into(&bad, &mut out),
                Err(OpenError::Altered),
                "byte {i}"
            );
            let mut rx = Protection::new(0, &secrets(2)).unwrap();
            assert_eq!(rx.open(&mut bad), Err(OpenError::Altered), "byte {i}");
        }
    }
}
