//! API keys: made, listed and revoked by `ferry api-key`, checked on every
//! request. A key is `fk_` and 43 characters of a 256-bit random secret; only
//! its SHA-256 is stored, so the secret is shown once and never again. A key
//! carries scopes and an optional module allow-list. Not for HTTP: the
//! handlers turn a [`Denied`] into 401 or 403.

use super::db;
use super::ids;
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};

pub const SCOPES: [&str; 4] = ["jobs:read", "jobs:write", "metrics:read", "admin"];

/// A key found by its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Empty: every module.
    pub modules: Vec<String>,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl Key {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }
    pub fn may_use_module(&self, module: &str) -> bool {
        self.modules.is_empty() || self.modules.iter().any(|m| m == module)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown scope {0:?} (scopes: jobs:read, jobs:write, metrics:read, admin)")]
    Scope(String),
    #[error("a key named {0:?} exists already")]
    Exists(String),
    #[error("no key named {0:?}")]
    NoSuchKey(String),
    #[error("key name {0:?}: use 1-64 letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("--scope: name at least one scope")]
    NoScope,
    #[error("{0}")]
    Db(#[from] rusqlite::Error),
}

fn hash(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a key; the secret, to be shown once.
pub fn create(
    conn: &Connection,
    name: &str,
    scopes: &[String],
    modules: &[String],
) -> Result<(Key, String), KeyError> {
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok_name {
        return Err(KeyError::Name(name.into()));
    }
    if scopes.is_empty() {
        return Err(KeyError::NoScope);
    }
    if let Some(s) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(KeyError::Scope(s.clone()));
    }
    if db::exists(conn, "SELECT 1 FROM api_keys WHERE name = ?1", name)? {
        return Err(KeyError::Exists(name.into()));
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).expect("system randomness");
    let secret = format!(
        "fk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let id = ids::new_id();
    let now = ids::now_ms();
    conn.execute(
        "INSERT INTO api_keys (id, name, hash, scopes, modules, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, name, hash(&secret), scopes.join(","), modules.join(","), now],
    )?;
    db::audit(
        conn,
        &db::Audit {
            key_id: Some(&id),
            key_name: Some(name),
            action: "api_key.create",
            target: Some(name),
            result: "ok",
            remote: Some("cli"),
        },
    )?;
    let key = Key {
        id,
        name: name.into(),
        scopes: scopes.to_vec(),
        modules: modules.to_vec(),
        created: ids::rfc3339(now),
        revoked: None,
    };
    Ok((key, secret))
}

fn split(s: String) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Key, String)> {
    Ok((
        Key {
            id: r.get(0)?,
            name: r.get(1)?,
            scopes: split(r.get(2)?),
            modules: split(r.get(3)?),
            created: ids::rfc3339(r.get(4)?),
            revoked: r.get::<_, Option<i64>>(5)?.map(ids::rfc3339),
        },
        r.get(6)?,
    ))
}

const COLUMNS: &str = "id, name, scopes, modules, created_ms, revoked_ms, hash";

pub fn list(conn: &Connection) -> Result<Vec<Key>, KeyError> {
    let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY id"))?;
    let keys = st
        .query_map([], row)?
        .map(|r| r.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

/// Revokes the key named `name`; it is refused from the next request on.
pub fn revoke(conn: &Connection, name: &str) -> Result<(), KeyError> {
    let n = conn.execute(
        "UPDATE api_keys SET revoked_ms = ?1 WHERE name = ?2 AND revoked_ms IS NULL",
        params![ids::now_ms(), name],
    )?;
    if n == 0 {
        return Err(KeyError::NoSuchKey(name.into()));
    }
    db::audit(
        conn,
        &db::Audit {
            key_id: None,
            key_name: Some(name),
            action: "api_key.revoke",
            target: Some(name),
            result: "ok",
            remote: Some("cli"),
        },
    )?;
    Ok(())
}

/// Why a presented secret is refused (the reason goes to the audit log and
/// metrics; the secret never does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Malformed,
    Unknown,
    Revoked,
}

impl Denied {
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Malformed => "malformed",
            Denied::Unknown => "unknown_key",
            Denied::Revoked => "revoked",
        }
    }
}

/// Finds the key whose secret this is.
pub fn verify(conn: &Connection, secret: &str) -> Result<Key, Denied> {
    let well_formed = secret.len() == 46
        && secret.starts_with("fk_")
        && secret[3..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Denied::Malformed);
    }
    let h = hash(secret);
    let found = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM api_keys WHERE hash = ?1"),
            [&h],
            row,
        )
        .optional()
        .map_err(|_| Denied::Unknown)?;
    let Some((key, stored)) = found else {
        return Err(Denied::Unknown);
    };
    // the lookup found it by hash; compare again in constant time anyway
    if aws_lc_rs::constant_time::verify_slices_are_equal(stored.as_bytes(), h.as_bytes()).is_err() {
        return Err(Denied::Unknown);
    }
    if key.revoked.is_some() {
        return Err(Denied::Revoked);
    }
    Ok(key)
}
