//! The job ticket the source signs, and the signatures on each piece.
//!
//! A ticket names the job, the ordered hosts of the chain with the keys they
//! must show and the path each writes to, the BLAKE3 of the manifest, and an
//! expiry. A daemon takes a job only with a ticket signed by a key it
//! authorizes for the module; a hop dials a successor only if its key is the
//! ticket's; a relay is accepted only from a host the ticket puts upstream.
//! Each piece's hash is signed too (domain-separated from the ticket), so a
//! hop in the middle can drop or damage data but never make a hop downstream
//! commit anything the source did not send.
//!
//! Not for key files or authorized_keys (that is `trust`).

use crate::proto::codec::{Reader, Writer};
use crate::proto::DecodeError;
use crate::trust::key::{Identity, PublicKey};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

const TICKET_DOMAIN: &[u8] = b"ferry fan-out ticket v1\0";
const PIECE_DOMAIN: &[u8] = b"ferry fan-out piece v1\0";
/// Most hosts one chain may name.
pub const MAX_HOSTS: usize = 1024;

/// One host of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `host:port` as the predecessor dials it.
    pub addr: String,
    /// The key it must show (checked by whoever dials it).
    pub key: [u8; 32],
    /// `module/path` it writes the tree into.
    pub path: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub job: [u8; 16],
    /// Unix seconds after which no daemon takes the job or a relay for it.
    pub expires: i64,
    /// The source's key: it signs the ticket and every piece.
    pub signer: [u8; 32],
    pub hosts: Vec<Host>,
    /// BLAKE3 of the encoded manifest.
    pub manifest_root: [u8; 32],
    /// How long a hop waits without word from its successor before it
    /// bypasses it (milliseconds).
    pub stall_ms: u64,
}

impl Ticket {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(&self.job);
        w.i64(self.expires);
        w.raw(&self.signer);
        w.varint(self.hosts.len() as u64);
        for h in &self.hosts {
            w.bytes(h.addr.as_bytes());
            w.raw(&h.key);
            w.bytes(&h.path);
        }
        w.hash(&self.manifest_root);
        w.varint(self.stall_ms);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Ticket, DecodeError> {
        let mut r = Reader::new(b);
        let job = r.token("job")?;
        let expires = r.i64("expiry")?;
        let signer = r.array("signer")?;
        let n = r.count(MAX_HOSTS, "hosts")?;
        let mut hosts = Vec::with_capacity(n);
        for _ in 0..n {
            hosts.push(Host {
                addr: String::from_utf8_lossy(r.bytes(1024, "address")?).into_owned(),
                key: r.array("host key")?,
                path: r.bytes(crate::proto::MAX_PATH, "path")?.to_vec(),
            });
        }
        let manifest_root = r.hash("manifest root")?;
        let stall_ms = r.varint("stall timeout")?.clamp(100, 3_600_000);
        r.finish("ticket")?;
        Ok(Ticket {
            job,
            expires,
            signer,
            hosts,
            manifest_root,
            stall_ms,
        })
    }
}

/// The source's signing key.
pub struct Signer(Ed25519KeyPair);

impl Signer {
    pub fn new(id: &Identity) -> Result<Signer, String> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&id.pkcs8())
            .map(Signer)
            .map_err(|e| format!("cannot use the key for signing: {e}"))
    }

    pub fn public(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        k
    }

    fn sign(&self, domain: &[u8], msg: &[u8]) -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(self.0.sign(&[domain, msg].concat()).as_ref());
        s
    }

    pub fn sign_ticket(&self, ticket: &[u8]) -> [u8; 64] {
        self.sign(TICKET_DOMAIN, ticket)
    }

    pub fn sign_piece(&self, job: &[u8; 16], file: u32, piece: u32, hash: &[u8; 32]) -> [u8; 64] {
        self.sign(PIECE_DOMAIN, &piece_message(job, file, piece, hash))
    }
}

fn piece_message(job: &[u8; 16], file: u32, piece: u32, hash: &[u8; 32]) -> Vec<u8> {
    [&job[..], &file.to_le_bytes(), &piece.to_le_bytes(), hash].concat()
}

fn verify(key: &[u8; 32], domain: &[u8], msg: &[u8], sig: &[u8; 64]) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&[domain, msg].concat(), sig)
        .is_ok()
}

/// Whether `sig` is `key`'s signature of the encoded ticket.
pub fn ticket_signed_by(key: &PublicKey, ticket: &[u8], sig: &[u8; 64]) -> bool {
    verify(&key.0, TICKET_DOMAIN, ticket, sig)
}

/// Whether `sig` is the signer's signature of this piece's hash.
pub fn piece_signed(
    signer: &[u8; 32],
    job: &[u8; 16],
    file: u32,
    piece: u32,
    hash: &[u8; 32],
    sig: &[u8; 64],
) -> bool {
    verify(
        signer,
        PIECE_DOMAIN,
        &piece_message(job, file, piece, hash),
        sig,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_ticket_verifies_and_a_changed_one_does_not() {
        let id = Identity::generate("t");
        let s = Signer::new(&id).unwrap();
        assert_eq!(s.public(), id.public.0);
        let t = Ticket {
            job: [1; 16],
            expires: 99,
            signer: s.public(),
            hosts: vec![Host {
                addr: "a:1".into(),
                key: [2; 32],
                path: b"m/p".to_vec(),
            }],
            manifest_root: [3; 32],
            stall_ms: 10_000,
        };
        let b = t.encode();
        assert_eq!(Ticket::decode(&b).unwrap(), t);
        let sig = s.sign_ticket(&b);
        assert!(ticket_signed_by(&id.public, &b, &sig));
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(!ticket_signed_by(&id.public, &bad, &sig));
        // a piece signature is not a ticket signature, nor for another piece
        let p = s.sign_piece(&t.job, 0, 1, &[5; 32]);
        assert!(piece_signed(&s.public(), &t.job, 0, 1, &[5; 32], &p));
        assert!(!piece_signed(&s.public(), &t.job, 0, 2, &[5; 32], &p));
        assert!(!piece_signed(&s.public(), &t.job, 0, 1, &[6; 32], &p));
    }
}
