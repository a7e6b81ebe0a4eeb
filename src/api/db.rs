//! The API's durable state: one SQLite database (WAL) in the daemon's state
//! directory holding jobs, their event log, idempotency records, API keys and
//! the audit log. Every state change is written in the same transaction as
//! the event that records it. Not for deciding anything: callers own the
//! rules, this module only opens, migrates and appends.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::{Path, PathBuf};

/// Why the database cannot be used: always a startup error, never an empty
/// queue.
#[derive(Debug, thiserror::Error)]
#[error("API state database {}: {text}", .path.display())]
pub struct DbError {
    pub path: PathBuf,
    pub text: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  key_id TEXT,
  spec TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  faults INTEGER NOT NULL DEFAULT 0,
  status_detail TEXT NOT NULL DEFAULT '',
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  files_done INTEGER NOT NULL DEFAULT 0,
  files_total INTEGER NOT NULL DEFAULT 0,
  rate REAL NOT NULL DEFAULT 0,
  literal_bytes INTEGER NOT NULL DEFAULT 0,
  reused_bytes INTEGER NOT NULL DEFAULT 0,
  error_code TEXT,
  error_detail TEXT,
  files TEXT,
  deadline_ms INTEGER,
  created_ms INTEGER NOT NULL,
  started_ms INTEGER,
  finished_ms INTEGER,
  updated_ms INTEGER NOT NULL,
  interrupted INTEGER NOT NULL DEFAULT 0,
  hosts TEXT,
  manifest_root TEXT
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
  key_id TEXT NOT NULL,
  idem_key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  status INTEGER,
  body TEXT,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (key_id, idem_key)
);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE,
  scopes TEXT NOT NULL,
  modules TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS ui_tokens (
  hash TEXT PRIMARY KEY,
  created_ms INTEGER NOT NULL,
  used_ms INTEGER
);
CREATE TABLE IF NOT EXISTS ui_sessions (
  hash TEXT PRIMARY KEY,
  csrf TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  key_id TEXT,
  key_name TEXT,
  action TEXT NOT NULL,
  target TEXT,
  result TEXT NOT NULL,
  remote TEXT
);
";

/// The database file in a state directory.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("api.db")
}

/// Opens (creating if needed) and migrates the database, and checks that it
/// is sound and writable.
pub fn open(state_dir: &Path) -> Result<Connection, DbError> {
    let path = path_in(state_dir);
    let fail = |text: String| DbError {
        path: path.clone(),
        text,
    };
    if !state_dir.exists() {
        std::fs::create_dir_all(state_dir).map_err(|e| fail(crate::error::io_text(&e)))?;
        let _ = std::fs::set_permissions(
            state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
    }
    let conn =
        Connection::open(&path).map_err(|e| fail(format!("{e}{}", unwritable(state_dir))))?;
    let setup = || -> rusqlite::Result<String> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(format!("cannot use WAL journal mode (got {mode})"));
        }
        // state changes are rare: make each one survive a power loss too
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Ok(format!("integrity check failed: {check}"));
        }
        conn.execute_batch(SCHEMA)?;
        // a database made before fan-out jobs: their hosts' states; and
        // before the version their done hosts hold (its manifest root)
        for (column, kind) in [("hosts", "TEXT"), ("manifest_root", "TEXT")] {
            let has: i64 = conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = ?1",
                [column],
                |r| r.get(0),
            )?;
            if has == 0 {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {kind}"))?;
            }
        }
        // prove it is writable now, not at the first job
        conn.execute_batch("BEGIN IMMEDIATE; PRAGMA user_version=1; COMMIT;")?;
        Ok(String::new())
    };
    match setup() {
        Ok(problem) if problem.is_empty() => Ok(conn),
        Ok(problem) => Err(fail(problem)),
        Err(e) => Err(fail(format!("{e}{}", unwritable(state_dir)))),
    }
}

/// Why a directory cannot be written, when it cannot: SQLite's own words
/// ("unable to open database file") do not say.
fn unwritable(dir: &Path) -> String {
    match rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
        Ok(()) => String::new(),
        Err(e) => format!(
            " ({} is not writable: {})",
            dir.display(),
            crate::error::io_text(&std::io::Error::from(e))
        ),
    }
}

/// Appends an event inside `tx`; its id.
pub fn event(
    tx: &Transaction<'_>,
    job_id: Option<&str>,
    kind: &str,
    data: &serde_json::Value,
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO events (job_id, type, data, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![job_id, kind, data.to_string(), super::ids::now_ms()],
    )?;
    Ok(tx.last_insert_rowid())
}

/// One entry of the audit log, inside `tx`.
pub struct Audit<'a> {
    pub key_id: Option<&'a str>,
    pub key_name: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub result: &'a str,
    pub remote: Option<&'a str>,
}

pub fn audit(conn: &Connection, a: &Audit<'_>) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (at_ms, key_id, key_name, action, target, result, remote) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![super::ids::now_ms(), a.key_id, a.key_name, a.action, a.target, a.result, a.remote],
    )?;
    Ok(())
}

/// The newest event id (0 when there is none).
pub fn last_event(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
}

/// One entry of the event log, as `/v1/events` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Strictly increasing; the SSE id, for Last-Event-ID
    pub id: i64,
    pub job_id: Option<String>,
    /// created, started, progress, fault, interrupted, resumed, succeeded,
    /// partial, failed, canceled or requeued (a fan-out's resume asked for)
    #[serde(rename = "type")]
    pub kind: String,
    /// What the event says (e.g. progress counts, a fault's code)
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// RFC 3339 UTC
    pub time: String,
}

/// Events after `after`, oldest first, at most `limit`.
pub fn events_after(
    conn: &Connection,
    after: i64,
    job: Option<&str>,
    limit: i64,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut st = conn.prepare_cached(
        "SELECT id, job_id, type, data, at_ms FROM events WHERE id > ?1 AND (?2 IS NULL OR job_id = ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows = st.query_map(params![after, job, limit], |r| {
        let data: String = r.get(3)?;
        let e = Event {
            id: r.get(0)?,
            job_id: r.get(1)?,
            kind: r.get(2)?,
            data: serde_json::from_str(&data).unwrap_or_default(),
            time: super::ids::rfc3339(r.get(4)?),
        };
        Ok(serde_json::to_value(e).unwrap_or_default())
    })?;
    rows.collect()
}

/// Whether a row exists (a small helper for lookups by id).
pub fn exists(conn: &Connection, sql: &str, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.query_row(sql, [id], |_| Ok(())).optional()?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database an older daemon made (no hosts, no manifest_root) gains
    /// both columns on open, keeping its jobs.
    #[test]
    fn an_older_database_gains_the_new_columns_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(path_in(dir.path())).unwrap();
        let schema = SCHEMA
            .replace("  hosts TEXT,\n  manifest_root TEXT\n", "")
            .replace(
                "interrupted INTEGER NOT NULL DEFAULT 0,",
                "interrupted INTEGER NOT NULL DEFAULT 0",
            );
        old.execute_batch(&schema).unwrap();
        let columns: i64 = old
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name IN ('hosts', 'manifest_root')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(columns, 0);
        old.execute(
            "INSERT INTO jobs (id, spec, state, created_ms, updated_ms) VALUES ('j1', '{}', 'partial', 1, 1)",
            [],
        )
        .unwrap();
        drop(old);
        let conn = open(dir.path()).unwrap();
        let (state, hosts, root): (String, Option<String>, Option<String>) = conn
            .query_row(
                "SELECT state, hosts, manifest_root FROM jobs WHERE id = 'j1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((state.as_str(), hosts, root), ("partial", None, None));
        // and opening it again changes nothing
        drop(conn);
        open(dir.path()).unwrap();
    }
}
