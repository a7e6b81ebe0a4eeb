//! The job runner: one worker thread takes queued jobs in submission order
//! and runs each as a `transfer::run`, with its own retry policy on top:
//! transient failures (connection refused or cut, peer busy) are retried
//! with exponential backoff and jitter and counted as faults until
//! `max_faults` (default [`jobs::DEFAULT_MAX_FAULTS`]) or the deadline; permanent ones end the job at once with
//! their own code. Progress is written at most once a second. Not for HTTP.

use super::jobs::{self, JobSpec, Resolved};
use super::{db, ids, Api};
use crate::error::TransferError;
use crate::proto::Report;
use crate::session::Cancel;
use rusqlite::{params, OptionalExtension};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often progress reaches the database and the event log.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// On start: jobs a previous process left running are interrupted, and
/// queued again to resume from their partial files.
pub(super) fn recover(api: &Api) -> rusqlite::Result<()> {
    api.write(|tx| {
        let ids: Vec<String> = tx
            .prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in ids {
            tx.execute(
                "UPDATE jobs SET state = 'queued', interrupted = 1, status_detail = 'interrupted by a daemon restart; will resume', updated_ms = ?2 WHERE id = ?1",
                params![id, ids::now_ms()],
            )?;
            db::event(tx, Some(&id), "interrupted", &json!({"reason": "daemon restarted"}))?;
        }
        Ok(())
    })
}

/// The worker loop (never returns).
pub(super) fn work(api: &Api) {
    // once the queue has run dry after a job: its freed memory back
    let mut memory = crate::server::memory::Idle::default();
    loop {
        let next = api
            .conn()
            .query_row(
                "SELECT id, spec, created_ms, interrupted FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)? != 0)),
            )
            .optional();
        match next {
            Ok(Some((id, spec, created, interrupted))) => {
                run_job(api, &id, &spec, created, interrupted);
                memory.work_ended();
            }
            Ok(None) => {
                memory.tick();
                let (lock, cv) = &api.wake;
                let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
                if !*woken {
                    woken = cv
                        .wait_timeout(woken, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                *woken = false;
            }
            Err(e) => {
                tracing::error!("job queue: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Ends a job in `state` with an optional error, in one transaction with its
/// event.
fn finish(
    api: &Api,
    id: &str,
    state: &str,
    error: Option<(&str, String)>,
    extra: serde_json::Value,
) {
    let now = ids::now_ms();
    let detail = match (&error, state) {
        (Some((code, text)), _) => format!("{code}: {text}"),
        (None, "succeeded") => "done".into(),
        (None, s) => s.to_string(),
    };
    let r = api.write(|tx| {
        let started: Option<i64> =
            tx.query_row("SELECT started_ms FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
        if let Some(s) = started {
            super::metrics::job_duration((now - s).max(0) as f64 / 1000.0);
        }
        tx.execute(
            "UPDATE jobs SET state = ?2, error_code = ?3, error_detail = ?4, status_detail = ?5, finished_ms = ?6, updated_ms = ?6, rate = 0 WHERE id = ?1",
            params![id, state, error.as_ref().map(|e| e.0), error.as_ref().map(|e| e.1.clone()), detail, now],
        )?;
        let mut data = json!({"state": state});
        if let Some((code, text)) = &error {
            data["error"] = json!({"code": code, "detail": text});
        }
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                data[k] = v;
            }
        }
        db::event(tx, Some(id), state, &data)?;
        Ok(())
    });
    if let Err(e) = r {
        tracing::error!(job = id, "cannot record the end of a job: {e}");
    }
    tracing::info!(job = id, state, "job ended");
}

/// What the event callback keeps between database writes.
#[derive(Default)]
struct Progress {
    done: u64,
    total: u64,
    files_done: u64,
    files: Vec<(String, u64)>,
    errors: Vec<String>,
    last_write: Option<Instant>,
}

fn run_job(api: &Api, id: &str, spec_text: &str, created_ms: i64, interrupted: bool) {
    let spec: JobSpec = match serde_json::from_str(spec_text) {
        Ok(s) => s,
        Err(e) => {
            return finish(
                api,
                id,
                "failed",
                Some(("internal_error", e.to_string())),
                json!({}),
            )
        }
    };
    let resolved = match jobs::resolve(&spec, &api.modules, created_ms, &|_| true) {
        Ok(r) => r,
        Err(jobs::Invalid::Field { detail, .. } | jobs::Invalid::Forbidden(detail)) => {
            return finish(
                api,
                id,
                "failed",
                Some(("invalid_request", detail)),
                json!({}),
            )
        }
    };
    // a module path through a symlink fails now: a job never leaves its module
    for (side, addr, writing) in [
        (&resolved.src, &spec.src, false),
        (&resolved.dst, &spec.dst, true),
    ] {
        if let Err(text) = jobs::check_no_symlink(side, addr, writing) {
            return finish(
                api,
                id,
                "failed",
                Some(("permission_denied", text)),
                json!({}),
            );
        }
    }
    // a missing local source fails now, not after retries (a fan-out's
    // run says so itself, keeping the hosts that have it done)
    if let Some(src) = resolved
        .src
        .local_path()
        .filter(|_| resolved.fanout.is_none())
    {
        let p = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(src),
        );
        if std::fs::symlink_metadata(p).is_err() {
            return finish(
                api,
                id,
                "failed",
                Some((
                    "source_not_found",
                    format!("{}: no such file or directory", spec.src),
                )),
                json!({}),
            );
        }
    }
    let cancel = Cancel::default();
    api.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), cancel.clone());
    if resolved.fanout.is_some() {
        let (state, error, extra) =
            super::fanout::run(api, id, &spec, &resolved, interrupted, &cancel);
        api.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        return finish(api, id, state, error, extra);
    }
    let result = attempts(api, id, &spec, &resolved, interrupted, &cancel);
    api.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
    match result {
        Ok(extra) => finish(api, id, "succeeded", None, extra),
        Err((state, code, text)) => finish(api, id, state, Some((code, text)), json!({})),
    }
}

type Failure = (&'static str, &'static str, String);

/// Runs the transfer until it succeeds, fails for good or is cancelled.
fn attempts(
    api: &Api,
    id: &str,
    spec: &JobSpec,
    r: &Resolved,
    mut resuming: bool,
    cancel: &Cancel,
) -> Result<serde_json::Value, Failure> {
    let plan = jobs::plan(r, &api.identity, &api.config_dir);
    let deadline = r
        .deadline_ms
        .map(|d| Instant::now() + Duration::from_millis((d - ids::now_ms()).max(0) as u64));
    let deadline_hit = AtomicBool::new(false);
    let mut delay = Duration::from_millis(500);
    let mut last_fault: Option<String> = None;
    let db_err = |e: rusqlite::Error| ("failed", "internal_error", e.to_string());
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err((
                "failed",
                "deadline_exceeded",
                "the deadline passed before the job finished".into(),
            ));
        }
        let now = ids::now_ms();
        let kind = if resuming { "resumed" } else { "started" };
        let detail = match (&last_fault, resuming) {
            (Some(f), _) => format!("retrying after {f}"),
            (None, true) => "resuming from partial files after a daemon restart".into(),
            (None, false) => "running".into(),
        };
        let attempt: i64 = api
            .write(|tx| {
                tx.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, interrupted = 0, started_ms = COALESCE(started_ms, ?2), updated_ms = ?2, status_detail = ?3 WHERE id = ?1",
                    params![id, now, detail],
                )?;
                let n: i64 = tx.query_row("SELECT attempts FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
                db::event(tx, Some(id), kind, &json!({"attempt": n}))?;
                Ok(n)
            })
            .map_err(db_err)?;
        tracing::info!(job = id, attempt, "{kind}");
        let started = Instant::now();
        let progress = Mutex::new(Progress::default());
        let on_event = |e: crate::transfer::Event| {
            if deadline.is_some_and(|d| Instant::now() >= d)
                && !deadline_hit.swap(true, Ordering::Relaxed)
            {
                cancel.cancel();
            }
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            match e.report() {
                Report::Overall { done, total } => {
                    p.done = done;
                    p.total = total;
                }
                Report::Updated { name, size, detail }
                    if detail.is_empty() && !name.ends_with(b"/") =>
                {
                    p.files_done += 1;
                    p.files
                        .push((String::from_utf8_lossy(&name).into_owned(), size));
                }
                Report::Error { name, text } => p.errors.push(format!(
                    "{}{}{}",
                    String::from_utf8_lossy(&name),
                    if name.is_empty() { "" } else { ": " },
                    String::from_utf8_lossy(&text)
                )),
                _ => {}
            }
            if p.last_write.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                p.last_write = Some(Instant::now());
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = p.done as f64 / secs;
                let (done, total, files) = (p.done as i64, p.total as i64, p.files_done as i64);
                drop(p);
                let _ = api.write(|tx| {
                    tx.execute(
                        "UPDATE jobs SET bytes_done = ?2, bytes_total = ?3, files_done = ?4, rate = ?5, updated_ms = ?6 WHERE id = ?1",
                        params![id, done, total, files, rate, ids::now_ms()],
                    )?;
                    db::event(tx, Some(id), "progress", &json!({"bytes_done": done, "bytes_total": total, "files_done": files, "rate_bytes_per_second": rate.round() as i64}))?;
                    Ok(())
                });
            }
        };
        let result = crate::transfer::run(&plan, &on_event, cancel);
        let p = progress.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(outcome) => {
                let s = outcome.summary;
                let files = checked_files(r, &p.files);
                super::metrics::job_done(s.literal, p.files_done);
                let _ = api.write(|tx| {
                    tx.execute(
                        "UPDATE jobs SET bytes_done = ?2, bytes_total = ?2, files_done = ?3, files_total = ?4, literal_bytes = ?5, reused_bytes = ?6, files = ?7, updated_ms = ?8 WHERE id = ?1",
                        params![id, s.total_size as i64, p.files_done as i64, s.files as i64, s.literal as i64, s.reused as i64, files.to_string(), ids::now_ms()],
                    )?;
                    Ok(())
                });
                if s.errors > 0 {
                    let text = p.errors.join("; ");
                    let code = if text.contains("No such file") {
                        "source_not_found"
                    } else if text.contains("ermission denied") {
                        "permission_denied"
                    } else {
                        "partial_transfer"
                    };
                    return Err((
                        "failed",
                        code,
                        format!("{} file(s) not transferred: {text}", s.errors),
                    ));
                }
                return Ok(json!({"literal_bytes": s.literal, "reused_bytes": s.reused}));
            }
            Err(TransferError::Cancelled) if deadline_hit.load(Ordering::Relaxed) => {
                return Err(("failed", "deadline_exceeded", "the deadline passed while the transfer ran; nothing half-written was published".into()));
            }
            Err(TransferError::Cancelled) => {
                return Err((
                    "canceled",
                    "canceled",
                    "canceled by request; nothing half-written was published".into(),
                ));
            }
            Err(e) => {
                let (code, transient) = jobs::classify(&e);
                if !transient {
                    return Err(("failed", code, e.to_string()));
                }
                let faults: i64 = api
                    .write(|tx| {
                        tx.execute(
                            "UPDATE jobs SET faults = faults + 1, status_detail = ?2, updated_ms = ?3 WHERE id = ?1",
                            params![id, format!("{code}: {e}; retrying"), ids::now_ms()],
                        )?;
                        let n: i64 = tx.query_row("SELECT faults FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
                        db::event(tx, Some(id), "fault", &json!({"code": code, "detail": e.to_string(), "faults": n}))?;
                        Ok(n)
                    })
                    .map_err(db_err)?;
                tracing::warn!(job = id, faults, "transient failure: {e}");
                let max = spec.max_faults.unwrap_or(jobs::DEFAULT_MAX_FAULTS);
                if faults >= max as i64 {
                    return Err((
                        "failed",
                        "max_faults_exceeded",
                        format!("{faults} faults (max_faults {max}); last: {e}"),
                    ));
                }
                // exponential backoff with ±25% jitter, cut short by cancel
                let mut b = [0u8; 2];
                let _ = aws_lc_rs::rand::fill(&mut b);
                let jitter = 0.75 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64) * 0.5;
                let until = Instant::now() + delay.mul_f64(jitter);
                while Instant::now() < until && !cancel.is_cancelled() {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if cancel.is_cancelled() {
                    return Err(("canceled", "canceled", "canceled by request".into()));
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                last_fault = Some(format!("{code}: {e}"));
                resuming = true;
            }
        }
    }
}

/// The files a job wrote, with sizes and BLAKE3 checks of the copy on this
/// machine, each opened beneath its module's root without following a
/// symlink (a link the job made is not read through).
fn checked_files(r: &Resolved, files: &[(String, u64)]) -> serde_json::Value {
    let base = jobs::local_base(r);
    let root = match r.dst.local_path() {
        Some(_) => r.dst.root.as_ref(),
        None => r.src.root.as_ref(),
    };
    let module = root.and_then(|root| crate::fs::source::LocalSource::confined(root).ok());
    let list: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, size)| {
            let check = base.as_ref().zip(module.as_ref()).and_then(|(b, m)| {
                let f = m.open_path(&b.join(name)).ok()?;
                let mut h = blake3::Hasher::new();
                h.update_reader(f).ok()?;
                Some(h.finalize().to_hex().to_string())
            });
            json!({"name": name, "size": size, "blake3": check})
        })
        .collect();
    serde_json::Value::Array(list)
}
