//! The daemon's HTTP API: durable transfer jobs, API keys, an event stream.
//! `ferry serve --api ADDR` starts it beside the transfer port, in its own
//! thread with its own tokio runtime: async stays here, at the edge. A job is
//! a `transfer::run` on a plain worker thread (`runner`), cancelled through
//! the same [`Cancel`] the CLI uses; its state lives in SQLite (`db`).
//!
//! Not for the transfer protocol, the daemon's accept loop or printing.

pub mod db;
mod fanout;
mod http;
pub mod ids;
pub mod jobs;
pub mod keys;
pub mod limits;
mod metrics;
mod openapi;
mod runner;
pub mod tls;
pub mod ui;

use crate::server::config::Module;
use crate::session::Cancel;
use rusqlite::Connection;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// What `--api` and its companions say.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where the database lives (the daemon's config directory's `state/`).
    pub state_dir: PathBuf,
    /// The daemon's key: jobs reach other daemons with it.
    pub identity: PathBuf,
    /// known_hosts for jobs' peers lives here.
    pub config_dir: PathBuf,
    pub modules: Vec<Module>,
    /// `--api-rate`: requests per API key (or per address without one).
    pub rate: limits::Rate,
    /// TLS (required beyond loopback).
    pub tls: Option<tls::TlsSource>,
}

/// Where the API listens, and the pin of its certificate's key when ferry
/// made it.
pub struct Started {
    pub addr: SocketAddr,
    pub tls: bool,
    pub pin: Option<String>,
}

/// The state directory under a daemon's config directory.
pub fn state_dir(config_dir: &std::path::Path) -> PathBuf {
    config_dir.join("state")
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("--api {0}: {1}")]
    Listen(String, String),
    #[error("--api {0}: refusing to serve plain HTTP on a non-loopback address; add --api-tls (a certificate made from the daemon's key) or --api-cert FILE --api-key-file FILE, or listen on 127.0.0.1")]
    NotLoopback(String),
    #[error("--api TLS: {0}")]
    Tls(String),
}

/// Shared by the HTTP handlers and the job runner.
pub(crate) struct Api {
    db: Mutex<Connection>,
    modules: Vec<Module>,
    identity: PathBuf,
    config_dir: PathBuf,
    /// The newest event id, for SSE and long-poll waiters.
    events: tokio::sync::watch::Sender<i64>,
    /// Cancel handles of running jobs.
    running: Mutex<HashMap<String, Cancel>>,
    /// Wakes the runner when a job is queued.
    wake: (Mutex<bool>, Condvar),
    limiter: limits::Limiter,
    /// Whether the API speaks TLS (the session cookie is then Secure).
    tls: bool,
}

impl Api {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one immediate transaction, then tells event waiters.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        let last = db::last_event(&c)?;
        drop(c);
        self.events.send_if_modified(|v| {
            let changed = *v != last;
            *v = last;
            changed
        });
        Ok(v)
    }

    fn wake_runner(&self) {
        *self.wake.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.1.notify_all();
    }
}

/// The API's address, bound before the daemon makes anything (its key, the
/// database): an address that is not one, or is in use, or plain HTTP beyond
/// loopback, fails first and leaves nothing behind.
pub struct Bound {
    listen: String,
    listener: std::net::TcpListener,
}

/// Why the API's address cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Not an address, or plain HTTP beyond loopback: the command line.
    #[error(transparent)]
    Usage(StartError),
    /// The system refused it (in use, not this host's): `--api ADDR: …`.
    #[error("--api {0}: {1}")]
    Io(String, String),
}

/// Binds `listen` for the API; `tls` says whether it will speak TLS.
pub fn bind(listen: &str, tls: bool) -> Result<Bound, BindError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| BindError::Usage(StartError::Listen(listen.to_string(), format!("{e}"))))?;
    if !addr.ip().is_loopback() && !tls {
        return Err(BindError::Usage(StartError::NotLoopback(
            listen.to_string(),
        )));
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| BindError::Io(listen.to_string(), crate::error::io_text(&e)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| BindError::Io(listen.to_string(), e.to_string()))?;
    Ok(Bound {
        listen: listen.to_string(),
        listener,
    })
}

/// Opens the database, recovers jobs a previous process left running and
/// serves on the address [`bind`] bound, in a thread of its own.
pub fn start(cfg: ApiConfig, bound: Bound) -> Result<Started, StartError> {
    let Bound { listen, listener } = bound;
    let tls = match &cfg.tls {
        Some(src) => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let ip = listener
                .local_addr()
                .map_err(|e| StartError::Listen(listen.clone(), e.to_string()))?
                .ip();
            let mut names = vec!["localhost".to_string(), ip.to_string()];
            if !host.trim().is_empty() {
                names.push(host.trim().to_string());
            }
            Some(tls::load(src, names).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let conn = db::open(&cfg.state_dir)?;
    // an Idempotency-Key claimed by a request that a previous process was
    // still processing: no answer was sent for it, so the key is free again
    // (else it would answer 409 until the record expires)
    conn.execute("DELETE FROM idempotency WHERE status IS NULL", [])
        .map_err(|e| db::DbError {
            path: db::path_in(&cfg.state_dir),
            text: e.to_string(),
        })?;
    let last = db::last_event(&conn).map_err(|e| db::DbError {
        path: db::path_in(&cfg.state_dir),
        text: e.to_string(),
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Listen(listen.clone(), e.to_string()))?;
    let pin = tls.as_ref().and_then(|t| t.pin.clone());
    let server_tls = tls.map(|t| t.config);
    let is_tls = server_tls.is_some();
    // for `ferry dashboard-link`: where this API is
    let scheme = if is_tls { "https" } else { "http" };
    let _ = std::fs::write(
        cfg.state_dir.join("api_url"),
        format!("{scheme}://{bound}\n"),
    );
    let (tx, _) = tokio::sync::watch::channel(last);
    let api = Arc::new(Api {
        db: Mutex::new(conn),
        modules: cfg.modules,
        identity: cfg.identity,
        config_dir: cfg.config_dir,
        events: tx,
        running: Mutex::new(HashMap::new()),
        wake: (Mutex::new(false), Condvar::new()),
        limiter: limits::Limiter::new(cfg.rate),
        tls: is_tls,
    });
    runner::recover(&api).map_err(|e| db::DbError {
        path: db::path_in(&cfg.state_dir),
        text: e.to_string(),
    })?;
    let r = api.clone();
    std::thread::Builder::new()
        .name("ferry-jobs".into())
        .spawn(move || runner::work(&r))
        .map_err(|e| StartError::Listen(listen.clone(), e.to_string()))?;
    std::thread::Builder::new()
        .name("ferry-api".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(http::serve(api, listener, server_tls));
        })
        .map_err(|e| StartError::Listen(listen.clone(), e.to_string()))?;
    Ok(Started {
        addr: bound,
        tls: is_tls,
        pin,
    })
}
