//! `/metrics` in the classic Prometheus text format (0.0.4), written by hand:
//! build info, jobs by state and finished by result (from the database, so
//! they survive restarts), job durations, what the daemon served to every
//! client (`server::stats`), sessions, authentication failures by reason,
//! rate-limit rejections and HTTP requests by route template and code. Every
//! label has a fixed, small set of values: never a job id, a path or a key.
//! Not for recording job state (`runner`) or serving HTTP (`http`).

use crate::server::stats;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static HTTP: Mutex<BTreeMap<(String, String, u16), u64>> = Mutex::new(BTreeMap::new());
static AUTH_FAILURES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
static JOB_BYTES: AtomicU64 = AtomicU64::new(0);
static JOB_FILES: AtomicU64 = AtomicU64::new(0);

const BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];
struct Histogram {
    counts: [u64; 9],
    count: u64,
    sum: f64,
}
static DURATIONS: Mutex<Histogram> = Mutex::new(Histogram {
    counts: [0; 9],
    count: 0,
    sum: 0.0,
});

pub fn http_request(route: &str, method: &str, status: u16) {
    *HTTP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((route.to_string(), method.to_string(), status))
        .or_default() += 1;
}

pub fn auth_failure(reason: &'static str) {
    *AUTH_FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(reason)
        .or_default() += 1;
}

pub fn rate_limited() {
    RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
}

/// A job's transfer ended: its literal bytes and files, and how long the
/// job ran.
pub fn job_done(bytes: u64, files: u64) {
    JOB_BYTES.fetch_add(bytes, Ordering::Relaxed);
    JOB_FILES.fetch_add(files, Ordering::Relaxed);
}

pub fn job_duration(secs: f64) {
    let mut h = DURATIONS.lock().unwrap_or_else(|p| p.into_inner());
    for (i, b) in BUCKETS.iter().enumerate() {
        if secs <= *b {
            h.counts[i] += 1;
        }
    }
    h.count += 1;
    h.sum += secs;
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(conn: &Connection) -> rusqlite::Result<String> {
    let mut o = String::new();
    family(
        &mut o,
        "ferry_build_info",
        "gauge",
        "Build information; always 1.",
    );
    let _ = writeln!(
        o,
        "ferry_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    let mut by_state: BTreeMap<String, i64> = [
        "queued",
        "running",
        "succeeded",
        "partial",
        "failed",
        "canceled",
    ]
    .iter()
    .map(|s| (s.to_string(), 0))
    .collect();
    let mut st = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = r?;
        by_state.insert(s, n);
    }
    family(
        &mut o,
        "ferry_jobs",
        "gauge",
        "Jobs in the database by state.",
    );
    for (s, n) in &by_state {
        let _ = writeln!(o, "ferry_jobs{{state=\"{s}\"}} {n}");
    }
    family(
        &mut o,
        "ferry_jobs_finished_total",
        "counter",
        "Jobs that ended, by result.",
    );
    for s in ["succeeded", "partial", "failed", "canceled"] {
        let _ = writeln!(
            o,
            "ferry_jobs_finished_total{{result=\"{s}\"}} {}",
            by_state[s]
        );
    }
    {
        let h = DURATIONS.lock().unwrap_or_else(|p| p.into_inner());
        family(
            &mut o,
            "ferry_job_duration_seconds",
            "histogram",
            "How long jobs ran, from first start to end (jobs ended by this process).",
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferry_job_duration_seconds_bucket{{le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            o,
            "ferry_job_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(o, "ferry_job_duration_seconds_sum {}", h.sum);
        let _ = writeln!(o, "ferry_job_duration_seconds_count {}", h.count);
    }
    family(
        &mut o,
        "ferry_job_transferred_bytes_total",
        "counter",
        "Literal file data jobs transferred.",
    );
    let _ = writeln!(
        o,
        "ferry_job_transferred_bytes_total {}",
        JOB_BYTES.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "ferry_job_transferred_files_total",
        "counter",
        "Files jobs created or updated.",
    );
    let _ = writeln!(
        o,
        "ferry_job_transferred_files_total {}",
        JOB_FILES.load(Ordering::Relaxed)
    );

    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        &mut o,
        "ferry_daemon_bytes_total",
        "counter",
        "Bytes on the wire of every session the daemon served, by direction.",
    );
    let _ = writeln!(
        o,
        "ferry_daemon_bytes_total{{direction=\"sent\"}} {}",
        load(&stats::BYTES_SENT)
    );
    let _ = writeln!(
        o,
        "ferry_daemon_bytes_total{{direction=\"received\"}} {}",
        load(&stats::BYTES_RECEIVED)
    );
    family(
        &mut o,
        "ferry_daemon_files_total",
        "counter",
        "Files the daemon sent or received for its clients.",
    );
    let _ = writeln!(
        o,
        "ferry_daemon_files_total{{direction=\"sent\"}} {}",
        load(&stats::FILES_SENT)
    );
    let _ = writeln!(
        o,
        "ferry_daemon_files_total{{direction=\"received\"}} {}",
        load(&stats::FILES_RECEIVED)
    );
    family(
        &mut o,
        "ferry_daemon_sessions",
        "gauge",
        "Authenticated sessions open now.",
    );
    let _ = writeln!(o, "ferry_daemon_sessions {}", load(&stats::SESSIONS_ACTIVE));
    family(
        &mut o,
        "ferry_daemon_sessions_total",
        "counter",
        "Authenticated sessions since start.",
    );
    let _ = writeln!(
        o,
        "ferry_daemon_sessions_total {}",
        load(&stats::SESSIONS_TOTAL)
    );

    family(
        &mut o,
        "ferry_api_auth_failures_total",
        "counter",
        "API requests refused by authentication or scope, by reason.",
    );
    {
        let a = AUTH_FAILURES.lock().unwrap_or_else(|p| p.into_inner());
        for r in [
            "missing",
            "malformed",
            "unknown_key",
            "revoked",
            "insufficient_scope",
        ] {
            let _ = writeln!(
                o,
                "ferry_api_auth_failures_total{{reason=\"{r}\"}} {}",
                a.get(r).copied().unwrap_or(0)
            );
        }
    }
    family(
        &mut o,
        "ferry_api_rate_limited_total",
        "counter",
        "API requests refused by the rate limit.",
    );
    let _ = writeln!(o, "ferry_api_rate_limited_total {}", load(&RATE_LIMITED));
    family(
        &mut o,
        "ferry_api_requests_total",
        "counter",
        "API requests by route template, method and status code.",
    );
    for ((route, method, code), n) in HTTP.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            o,
            "ferry_api_requests_total{{route=\"{route}\",method=\"{method}\",code=\"{code}\"}} {n}"
        );
    }
    Ok(o)
}
