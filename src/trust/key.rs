//! ed25519 identities in OpenSSH's formats, so that an existing
//! `~/.ssh/id_ed25519` and `authorized_keys` can serve ferry too.
//!
//! - public keys: `ssh-ed25519 AAAA… comment`, fingerprints `SHA256:…` as ssh
//!   prints them;
//! - private keys: the unencrypted `openssh-key-v1` format ssh-keygen writes.
//!
//! The formats are the `ssh-key` crate's (RustCrypto): it decodes and encodes
//! key blobs and the private key container, checking lengths, check bytes,
//! padding, trailing data and that both copies of the public key agree, and
//! writes the one-line public form and the fingerprint. What stays here is ferry's policy around it: ed25519 only
//! (another kind is named and refused with how to make a usable key), no
//! passphrases, OpenSSH's leniencies where ssh-key is stricter than ssh (see
//! [`PublicKey::parse_openssh`] and [`Identity::parse`]), and a check that the
//! public key is the one the seed makes (ssh-key does that only with its
//! `ed25519` feature, a second ed25519 implementation; aws-lc-rs has one).
//! Not for: signing (rustls signs with [`Identity::pkcs8`]), other key kinds,
//! or deciding who is trusted (`authorized`, `known_hosts`).
//!
//! Keys go to TLS as RFC 7250 raw public keys: the SubjectPublicKeyInfo of an
//! ed25519 key is a fixed 12-byte prefix and the 32 key bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ssh_key::private::{Ed25519Keypair, Ed25519PrivateKey, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, LineEnding};
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
    /// A public key (`ssh-ed25519 AAAA…`, an `id_*.pub`) where the private
    /// key was wanted: `{1}` names the private key to give instead.
    #[error("{0} is a public key; give the private key ({1}) instead")]
    PublicHalf(String, String),
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

/// Why a one-line OpenSSH public key (`ssh-ed25519 AAAA… comment`) was not
/// taken: the line's own fault, whoever wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLineError {
    #[error("empty line")]
    Empty,
    #[error("missing key data")]
    NoKeyData,
    /// Another kind of key than ed25519 (its name as the line gives it).
    #[error("{0} keys are not supported (ed25519 only)")]
    Unsupported(String),
    #[error("bad base64 in the key")]
    Base64,
    /// The key blob does not decode as the one encoding ssh writes.
    #[error("{0}")]
    Blob(&'static str),
}

/// Compares with the error's text (what tests and text-matching callers ask).
impl PartialEq<&str> for KeyLineError {
    fn eq(&self, other: &&str) -> bool {
        self.to_string().as_str() == *other
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// What ssh-key's refusal of a public key blob means, in ferry's words.
fn blob_error(e: ssh_key::Error) -> &'static str {
    match e {
        ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. } => {
            "not an ed25519 key"
        }
        // ssh-key names the fault inside its encoding error only as a type
        // of the ssh-encoding crate, not worth a dependency of its own
        ssh_key::Error::TrailingData { .. } | ssh_key::Error::Encoding(_) => {
            "truncated, mis-sized or trailing bytes in the key"
        }
        _ => "malformed key",
    }
}

impl PublicKey {
    fn ssh(&self) -> ssh_key::PublicKey {
        ssh_key::PublicKey::from(KeyData::Ed25519(Ed25519PublicKey(self.0)))
    }

    /// The key inside ssh-key's decoded key data, if it is an ed25519 key.
    fn from_key_data(data: &KeyData) -> Option<PublicKey> {
        data.ed25519().map(|k| PublicKey(k.0))
    }

    /// The SSH wire form: `string "ssh-ed25519" string key`.
    pub fn blob(&self) -> Vec<u8> {
        self.ssh().to_bytes().expect("an ed25519 key encodes")
    }

    pub fn from_blob(blob: &[u8]) -> Result<PublicKey, &'static str> {
        // another kind is refused as such, not for whatever ssh-key's decoding
        // of that kind finds wrong
        if ssh_string(&mut &blob[..]).is_some_and(|kind| kind != KEY_TYPE.as_bytes()) {
            return Err("not an ed25519 key");
        }
        let key = ssh_key::PublicKey::from_bytes(blob).map_err(blob_error)?;
        let key = PublicKey::from_key_data(key.key_data()).ok_or("not an ed25519 key")?;
        // ssh-key (its ssh-encoding 0.2) does not check that a length prefix
        // covers exactly what was read under it, so a key string whose length
        // is wrong decodes; only the one encoding ssh writes is taken
        if key.blob() != blob {
            return Err("truncated, mis-sized or trailing bytes in the key");
        }
        Ok(key)
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.ssh().fingerprint(HashAlg::Sha256).to_string()
    }

    /// `ssh-ed25519 AAAA…` (without comment).
    pub fn to_openssh(&self) -> String {
        self.ssh().to_openssh().expect("an ed25519 key encodes")
    }

    /// Parses `ssh-ed25519 AAAA… [comment]`; returns the key and the comment.
    ///
    /// Fields are separated by any run of blanks, as sshd and ssh read them
    /// (ssh-key's one-line parser takes single spaces only), so the line is
    /// split here and ssh-key decodes the key blob; the comment's words come
    /// back joined by single spaces.
    pub fn parse_openssh(line: &str) -> Result<(PublicKey, String), KeyLineError> {
        let mut parts = line.split_whitespace();
        let kind = parts.next().ok_or(KeyLineError::Empty)?;
        let b64 = parts.next().ok_or(KeyLineError::NoKeyData)?;
        if kind != KEY_TYPE {
            return Err(KeyLineError::Unsupported(kind.to_string()));
        }
        let blob = STANDARD.decode(b64).map_err(|_| KeyLineError::Base64)?;
        let key = PublicKey::from_blob(&blob).map_err(KeyLineError::Blob)?;
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

/// The SSH string (`u32` big-endian length + bytes) at the head of `b`.
fn ssh_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let n = u32::from_be_bytes(*len) as usize;
    if n > rest.len() {
        return None;
    }
    let (s, rest) = rest.split_at(n);
    *b = rest;
    Some(s)
}

/// The names an `openssh-key-v1` container's head gives: its cipher (with the
/// key derivation's name and options after it), and the type of its (first)
/// key. Read here only to say in words why a key is refused: ssh-key refuses
/// a truncated encrypted key, or a kind of key it was built without (ECDSA),
/// with a bare decoding error.
fn container_names(bytes: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some(mut b) = bytes.strip_prefix(MAGIC) else {
        return (None, None);
    };
    let cipher = (|| {
        let cipher = ssh_string(&mut b)?;
        ssh_string(&mut b)?; // kdf name
        ssh_string(&mut b)?; // kdf options
        Some(cipher)
    })();
    let kind = (|| {
        let (_count, mut rest) = b.split_first_chunk::<4>()?;
        let mut blob = ssh_string(&mut rest)?;
        ssh_string(&mut blob)
    })();
    (cipher, kind)
}

/// How the refusal of a key kind names it.
fn kind_name(kind: &[u8]) -> String {
    let kind = String::from_utf8_lossy(kind);
    match kind.as_ref() {
        "ssh-rsa" => "RSA".to_string(),
        k if k.starts_with("ecdsa") => "ECDSA".to_string(),
        k => k.to_string(),
    }
}

/// What ssh-key's refusal of a private key container means, in ferry's words.
fn container_error(e: &ssh_key::Error) -> &'static str {
    match e {
        ssh_key::Error::Crypto => "check bytes or key copies differ",
        ssh_key::Error::PublicKey => "public key does not match the private key",
        ssh_key::Error::FormatEncoding => "bad magic or padding",
        ssh_key::Error::TrailingData { .. } => "trailing bytes",
        ssh_key::Error::Encoding(_) => "truncated or mis-encoded",
        _ => "not a usable openssh-key-v1 container",
    }
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

    /// Parses an OpenSSH private key file's text (`shown` names it in errors).
    ///
    /// The PEM armour is read as OpenSSH reads it: the base64 may be wrapped
    /// at any width (Go's tools wrap at 64) and the text may carry blank lines
    /// around it. ssh-key's PEM decoder takes only 70-column lines, so the
    /// armour is taken off here and ssh-key decodes the container inside.
    pub fn parse(text: &str, shown: &str) -> Result<Identity, KeyError> {
        let malformed = |why| KeyError::Malformed(shown.to_string(), why);
        let unsupported = |kind: &[u8]| KeyError::Unsupported {
            path: shown.into(),
            kind: kind_name(kind),
        };
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            return Err(unsupported(b"ssh-rsa"));
        }
        // one `TYPE BASE64 [comment]` line of an ssh key type: an `id_*.pub`
        let kind = trimmed.split_whitespace().next().unwrap_or("");
        let key_type = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
            .iter()
            .any(|p| kind.starts_with(p));
        let public = match PublicKey::parse_openssh(trimmed) {
            Ok(_) => true,
            Err(KeyLineError::Unsupported(_)) => trimmed
                .split_whitespace()
                .nth(1)
                .is_some_and(|b| STANDARD.decode(b).is_ok_and(|d| d.len() > 16)),
            Err(_) => false,
        };
        if key_type && public && trimmed.lines().count() == 1 {
            let private = match shown.strip_suffix(".pub") {
                Some(p) if !p.is_empty() => format!("{p}, without .pub"),
                _ => "the file without .pub".to_string(),
            };
            return Err(KeyError::PublicHalf(shown.into(), private));
        }
        let body = trimmed
            .strip_prefix(PEM_BEGIN)
            .and_then(|b| b.strip_suffix(PEM_END))
            .ok_or_else(|| KeyError::NotAKey(shown.into()))?;
        let b64: String = body.split_whitespace().collect();
        let bytes = STANDARD.decode(b64).map_err(|_| malformed("bad base64"))?;
        if !bytes.starts_with(MAGIC) {
            return Err(malformed("bad magic"));
        }
        let (cipher, kind) = container_names(&bytes);
        if cipher.is_some_and(|c| c != b"none") {
            return Err(KeyError::Encrypted(shown.into()));
        }
        let key = ssh_key::PrivateKey::from_bytes(&bytes).map_err(|e| match (&e, kind) {
            (
                ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. },
                Some(kind),
            ) if kind != KEY_TYPE.as_bytes() => unsupported(kind),
            _ => malformed(container_error(&e)),
        })?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted(shown.into()));
        }
        let KeypairData::Ed25519(pair) = key.key_data() else {
            return Err(unsupported(key.algorithm().as_str().as_bytes()));
        };
        // only the one encoding of what was decoded: ssh-key does not check
        // that each length prefix covers exactly what was read under it
        if !key.to_bytes().is_ok_and(|again| again[..] == bytes[..]) {
            return Err(malformed("mis-sized fields"));
        }
        let seed = pair.private.to_bytes();
        let public = PublicKey(pair.public.0);
        if public_of(&seed) != public {
            return Err(malformed("public key does not match the private key"));
        }
        Ok(Identity {
            seed,
            public,
            comment: key.comment().to_string(),
        })
    }

    /// The OpenSSH private key file text.
    pub fn to_openssh(&self) -> String {
        let pair = Ed25519Keypair {
            public: Ed25519PublicKey(self.public.0),
            private: Ed25519PrivateKey::from_bytes(&self.seed),
        };
        let key = ssh_key::PrivateKey::new(KeypairData::Ed25519(pair), &self.comment)
            .expect("an unencrypted ed25519 key");
        let text = key
            .to_openssh(LineEnding::LF)
            .expect("an ed25519 key encodes");
        text.as_str().to_string()
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

/// Appends an SSH string; the tests build containers by hand with it.
#[cfg(test)]
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
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

    /// The armour is read as OpenSSH reads it: any line width, one line, blank
    /// lines around (ssh-key's own PEM decoder takes 70-column lines only).
    #[test]
    fn reads_private_keys_wrapped_at_any_width() {
        let id = Identity::generate("wrapped");
        let text = id.to_openssh();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let wrap = |width: usize| {
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(width)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            format!("\n{PEM_BEGIN}\n{}\n{PEM_END}\n\n", lines.join("\n"))
        };
        for width in [64, 76, 10_000] {
            let back = Identity::parse(&wrap(width), "k").unwrap();
            assert_eq!((back.public, back.seed), (id.public, id.seed), "{width}");
        }
    }

    #[test]
    fn private_keys_ferry_cannot_use_are_refused_by_name() {
        // an ECDSA key in the openssh-key-v1 container: ssh-key is built
        // without ECDSA, and ferry still names the kind
        let mut blob = Vec::new();
        put_string(&mut blob, b"ecdsa-sha2-nistp256");
        put_string(&mut blob, b"nistp256");
        put_string(&mut blob, &[4; 65]);
        let mut c = MAGIC.to_vec();
        for s in [&b"none"[..], b"none", b""] {
            put_string(&mut c, s);
        }
        c.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut c, &blob);
        put_string(&mut c, &[0; 8]);
        let text = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(&c));
        let err = Identity::parse(&text, "k").unwrap_err();
        assert!(
            err.to_string().contains("ECDSA keys are not supported"),
            "{err}"
        );
        assert!(err.to_string().contains("ferry keygen"), "{err}");

        // a public half that is not the seed's: both copies agree, so only
        // ferry's own check sees it
        let id = Identity::generate("x");
        let liar = Identity {
            seed: id.seed,
            public: Identity::generate("").public,
            comment: String::new(),
        };
        assert_eq!(
            Identity::parse(&liar.to_openssh(), "k").unwrap_err(),
            KeyError::Malformed("k".into(), "public key does not match the private key")
        );

        // the same lie inside a private key file's public key
        let text = id.to_openssh();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut bytes = STANDARD.decode(b64).unwrap();
        let at = MAGIC.len() + 8 + 8 + 4 + 4 + 4 + 15;
        assert_eq!(bytes[at..at + 4], [0, 0, 0, 32]);
        bytes[at + 3] = 33;
        let lying = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(&bytes));
        assert!(matches!(
            Identity::parse(&lying, "k"),
            Err(KeyError::Malformed(..))
        ));

        let not_pem = "ssh-ed25519 AAAA";
        assert_eq!(
            Identity::parse(not_pem, "k").unwrap_err(),
            KeyError::NotAKey("k".into())
        );
    }

    #[test]
    fn rsa_and_ecdsa_keys_from_ssh_keygen_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, name) in [("rsa", "RSA"), ("ecdsa", "ECDSA")] {
            let path = dir.path().join(kind);
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(&path)
                .status();
            if !matches!(ok, Ok(s) if s.success()) {
                eprintln!("skipping: no ssh-keygen");
                return;
            }
            let err = Identity::load(&path).unwrap_err();
            assert!(
                matches!(&err, KeyError::Unsupported { kind, .. } if kind == name),
                "{err}"
            );
        }
    }

    #[test]
    fn public_keys_parse_as_sshd_reads_them() {
        let k = Identity::generate("").public;
        let b64 = k.to_openssh()[KEY_TYPE.len() + 1..].to_string();
        // any run of blanks between fields, the comment's words kept
        let (back, comment) =
            PublicKey::parse_openssh(&format!("ssh-ed25519\t{b64}   me  at\thost")).unwrap();
        assert_eq!((back, comment.as_str()), (k, "me at host"));
        // a blob of another type under the ed25519 name, a short key, trailing bytes
        let mut other = Vec::new();
        put_string(&mut other, b"ssh-dss");
        put_string(&mut other, &[1; 32]);
        let mut short = Vec::new();
        put_string(&mut short, KEY_TYPE.as_bytes());
        put_string(&mut short, &[1; 31]);
        let mut long = k.blob();
        long.push(0);
        for (blob, why) in [
            (other, "not an ed25519 key"),
            (short, "truncated, mis-sized or trailing bytes in the key"),
            (long, "truncated, mis-sized or trailing bytes in the key"),
        ] {
            let line = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
            assert_eq!(PublicKey::parse_openssh(&line).unwrap_err(), why);
        }
        // a key string whose length prefix says 33 over the same 32 bytes:
        // ssh-key decodes it, ferry takes only the encoding ssh writes
        let mut lying = k.blob();
        assert_eq!(lying[15..19], [0, 0, 0, 32]);
        lying[18] = 33;
        assert!(PublicKey::from_blob(&lying).is_err());
        assert_eq!(PublicKey::from_blob(&k.blob()), Ok(k));
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert_eq!(k.fingerprint().len(), 7 + 43);
    }
}
