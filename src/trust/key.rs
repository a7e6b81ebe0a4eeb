//! ed25519 identities in OpenSSH's formats, so that an existing
//! `~/.ssh/id_ed25519` and `authorized_keys` can serve ferry too.
//!
//! - public keys: `ssh-ed25519 AAAA… comment`, fingerprints `SHA256:…` as ssh
//!   prints them;
//! - private keys: the unencrypted `openssh-key-v1` format ssh-keygen writes.
//!
//! Keys go to TLS as RFC 7250 raw public keys: the SubjectPublicKeyInfo of an
//! ed25519 key is a fixed 12-byte prefix and the 32 key bytes.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const KEY_TYPE: &str = "ssh-ed25519";
const MAGIC: &[u8] = b"openssh-key-v1\0";
const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";
/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{0}: not an OpenSSH key")]
    NotAKey(String),
    #[error("{path}: {kind} keys are not supported; make an ed25519 key with `ferry keygen` (or `ssh-keygen -t ed25519`)")]
    Unsupported { path: String, kind: String },
    #[error("{0}: the key is encrypted with a passphrase; ferry needs an unencrypted key (`ferry keygen` makes one)")]
    Encrypted(String),
    #[error("{0}: malformed key ({1})")]
    Malformed(String, &'static str),
    #[error("{0}: {1}")]
    Io(String, String),
    #[error("{0} already exists; not overwriting it")]
    Exists(String),
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Reads SSH wire strings (`u32` big-endian length + bytes).
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_first_chunk::<4>()?;
        self.0 = t;
        Some(u32::from_be_bytes(*h))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (s, t) = self.0.split_at(n);
        self.0 = t;
        Some(s)
    }
}

impl PublicKey {
    /// The SSH wire form: `string "ssh-ed25519" string key`.
    pub fn blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(51);
        put_string(&mut b, KEY_TYPE.as_bytes());
        put_string(&mut b, &self.0);
        b
    }

    pub fn from_blob(blob: &[u8]) -> Result<PublicKey, &'static str> {
        let mut r = SshReader(blob);
        let kind = r.string().ok_or("truncated key type")?;
        if kind != KEY_TYPE.as_bytes() {
            return Err("not an ed25519 key");
        }
        let key = r.string().ok_or("truncated key")?;
        let key: [u8; 32] = key.try_into().map_err(|_| "ed25519 key is not 32 bytes")?;
        if !r.0.is_empty() {
            return Err("trailing bytes after the key");
        }
        Ok(PublicKey(key))
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.blob());
        format!("SHA256:{}", STANDARD_NO_PAD.encode(d.as_ref()))
    }

    /// `ssh-ed25519 AAAA…` (without comment).
    pub fn to_openssh(&self) -> String {
        format!("{KEY_TYPE} {}", STANDARD.encode(self.blob()))
    }

    /// Parses `ssh-ed25519 AAAA… [comment]`; returns the key and the comment.
    pub fn parse_openssh(line: &str) -> Result<(PublicKey, String), String> {
        let mut parts = line.split_whitespace();
        let kind = parts.next().ok_or("empty line")?;
        let b64 = parts.next().ok_or("missing key data")?;
        if kind != KEY_TYPE {
            return Err(format!("{kind} keys are not supported (ed25519 only)"));
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| "bad base64 in the key".to_string())?;
        let key = PublicKey::from_blob(&blob).map_err(str::to_string)?;
        Ok((key, parts.collect::<Vec<_>>().join(" ")))
    }

    /// The RFC 7250 raw public key (DER SubjectPublicKeyInfo).
    pub fn spki(&self) -> Vec<u8> {
        [&SPKI_PREFIX[..], &self.0[..]].concat()
    }

    /// The key inside an ed25519 SubjectPublicKeyInfo, if that is what it is.
    pub fn from_spki(der: &[u8]) -> Option<PublicKey> {
        let key = der.strip_prefix(&SPKI_PREFIX[..])?;
        Some(PublicKey(key.try_into().ok()?))
    }
}

/// A private ed25519 key with its public half.
pub struct Identity {
    seed: [u8; 32],
    pub public: PublicKey,
    pub comment: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({:?})", self.public)
    }
}

fn public_of(seed: &[u8; 32]) -> PublicKey {
    let kp = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .expect("any 32 bytes are an ed25519 seed");
    let mut p = [0u8; 32];
    p.copy_from_slice(aws_lc_rs::signature::KeyPair::public_key(&kp).as_ref());
    PublicKey(p)
}

impl Identity {
    pub fn generate(comment: &str) -> Identity {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).expect("system randomness");
        Identity {
            public: public_of(&seed),
            seed,
            comment: comment.to_string(),
        }
    }

    /// PKCS#8 DER, for TLS.
    pub fn pkcs8(&self) -> Vec<u8> {
        [&PKCS8_PREFIX[..], &self.seed[..]].concat()
    }

    /// Reads an OpenSSH private key file.
    pub fn load(path: &Path) -> Result<Identity, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::Io(shown.clone(), crate::error::io_text(&e)))?;
        Identity::parse(&text, &shown)
    }

    pub fn parse(text: &str, shown: &str) -> Result<Identity, KeyError> {
        let malformed = |why| KeyError::Malformed(shown.to_string(), why);
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            return Err(KeyError::Unsupported {
                path: shown.into(),
                kind: "RSA".into(),
            });
        }
        let body = trimmed
            .strip_prefix(PEM_BEGIN)
            .and_then(|b| b.strip_suffix(PEM_END))
            .ok_or_else(|| KeyError::NotAKey(shown.into()))?;
        let b64: String = body.split_whitespace().collect();
        let bytes = STANDARD.decode(b64).map_err(|_| malformed("bad base64"))?;
        let rest = bytes.strip_prefix(MAGIC).ok_or(malformed("bad magic"))?;
        let mut r = SshReader(rest);
        let cipher = r.string().ok_or(malformed("truncated"))?;
        let _kdf = r.string().ok_or(malformed("truncated"))?;
        let _kdf_options = r.string().ok_or(malformed("truncated"))?;
        if cipher != b"none" {
            return Err(KeyError::Encrypted(shown.into()));
        }
        if r.u32() != Some(1) {
            return Err(malformed("not exactly one key"));
        }
        let public_blob = r.string().ok_or(malformed("truncated"))?;
        let mut kind_reader = SshReader(public_blob);
        let kind = kind_reader.string().ok_or(malformed("truncated"))?;
        if kind != KEY_TYPE.as_bytes() {
            let kind = String::from_utf8_lossy(kind);
            let kind = match kind.as_ref() {
                "ssh-rsa" => "RSA".to_string(),
                k if k.starts_with("ecdsa") => "ECDSA".to_string(),
                k => k.to_string(),
            };
            return Err(KeyError::Unsupported {
                path: shown.into(),
                kind,
            });
        }
        let private = r.string().ok_or(malformed("truncated"))?;
        let mut p = SshReader(private);
        let (c1, c2) = (p.u32(), p.u32());
        if c1.is_none() || c1 != c2 {
            return Err(malformed("check bytes differ"));
        }
        if p.string() != Some(KEY_TYPE.as_bytes()) {
            return Err(malformed("private key type"));
        }
        let public: [u8; 32] = p
            .string()
            .and_then(|k| k.try_into().ok())
            .ok_or(malformed("public key"))?;
        let secret = p.string().ok_or(malformed("private key"))?;
        if secret.len() != 64 || secret[32..] != public {
            return Err(malformed("private key"));
        }
        let comment = p.string().ok_or(malformed("comment"))?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&secret[..32]);
        if public_of(&seed) != PublicKey(public) {
            return Err(malformed("public key does not match the private key"));
        }
        Ok(Identity {
            seed,
            public: PublicKey(public),
            comment: String::from_utf8_lossy(comment).into_owned(),
        })
    }

    /// The OpenSSH private key file text.
    pub fn to_openssh(&self) -> String {
        let mut private = Vec::new();
        let mut check = [0u8; 4];
        aws_lc_rs::rand::fill(&mut check).expect("system randomness");
        private.extend_from_slice(&check);
        private.extend_from_slice(&check);
        put_string(&mut private, KEY_TYPE.as_bytes());
        put_string(&mut private, &self.public.0);
        put_string(&mut private, &[&self.seed[..], &self.public.0[..]].concat());
        put_string(&mut private, self.comment.as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut out = MAGIC.to_vec();
        put_string(&mut out, b"none");
        put_string(&mut out, b"none");
        put_string(&mut out, b"");
        out.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut out, &self.public.blob());
        put_string(&mut out, &private);
        let b64 = STANDARD.encode(out);
        let mut text = format!("{PEM_BEGIN}\n");
        for line in b64.as_bytes().chunks(70) {
            text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            text.push('\n');
        }
        text.push_str(PEM_END);
        text.push('\n');
        text
    }

    /// Writes `path` (0600) and `path.pub`; refuses to overwrite either.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let pub_path = path.with_extension("pub");
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(KeyError::Exists(p.display().to_string()));
            }
        }
        let io = |p: &Path, e: std::io::Error| {
            KeyError::Io(p.display().to_string(), crate::error::io_text(&e))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io(path, e))?;
        f.write_all(self.to_openssh().as_bytes())
            .map_err(|e| io(path, e))?;
        let line = format!("{} {}\n", self.public.to_openssh(), self.comment);
        std::fs::write(&pub_path, line).map_err(|e| io(&pub_path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_round_trip() {
        let id = Identity::generate("me@host");
        let text = id.to_openssh();
        let back = Identity::parse(&text, "k").unwrap();
        assert_eq!(back.public, id.public);
        assert_eq!(back.seed, id.seed);
        assert_eq!(back.comment, "me@host");
    }

    #[test]
    fn reads_what_ssh_keygen_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(&path)
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            eprintln!("skipping: no ssh-keygen");
            return;
        }
        let id = Identity::load(&path).unwrap();
        let pub_line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let (public, comment) = PublicKey::parse_openssh(&pub_line).unwrap();
        assert_eq!(id.public, public);
        assert_eq!(comment, "test");
        // and ssh-keygen reads what we write
        let ours = dir.path().join("ours");
        Identity::generate("x").save(&ours).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(&ours)
            .output()
            .unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        let (k, _) = PublicKey::parse_openssh(&printed).unwrap();
        assert_eq!(k, Identity::load(&ours).unwrap().public);
        let fp = std::process::Command::new("ssh-keygen")
            .args(["-l", "-f"])
            .arg(ours.with_extension("pub"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&fp.stdout).contains(&k.fingerprint()));
    }

    #[test]
    fn save_refuses_to_overwrite_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id_ed25519");
        Identity::generate("a").save(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            Identity::generate("b").save(&p),
            Err(KeyError::Exists(_))
        ));
    }

    #[test]
    fn rsa_and_encrypted_keys_get_clear_errors() {
        let rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            Identity::parse(rsa, "k"),
            Err(KeyError::Unsupported { .. })
        ));
        let mut enc = MAGIC.to_vec();
        put_string(&mut enc, b"aes256-ctr");
        put_string(&mut enc, b"bcrypt");
        put_string(&mut enc, b"");
        let text = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(enc));
        assert_eq!(
            Identity::parse(&text, "k").unwrap_err(),
            KeyError::Encrypted("k".into())
        );
    }

    #[test]
    fn spki_round_trip() {
        let k = Identity::generate("").public;
        assert_eq!(PublicKey::from_spki(&k.spki()), Some(k));
        assert_eq!(PublicKey::from_spki(&k.spki()[..40]), None);
    }
}
