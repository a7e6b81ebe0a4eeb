//! A fan-out job in the API's runner: sends a module of this daemon down a
//! verified chain of other daemons ([`crate::fanout`]) with the daemon's own
//! key, as API jobs to one peer do, and keeps each host's state in the job
//! record. A first run sends to every destination; a resumed one (after
//! `POST /v1/jobs/{id}/resume`, or a daemon restart mid-run) only to the
//! hosts that have not got it, repaired by delta from what they hold. The
//! job ends `succeeded` (every host has it), `partial` (some missed it, named)
//! or `failed` (none got it), as `ferry fanout` exits 0 or 24: a run that
//! cannot start (no source) leaves the hosts that had it done, so the job
//! is partial then too. The manifest root the done hosts hold is kept with
//! the job: a resume of a source that has changed since is refused (409),
//! and a run never sends a second version to the rest.
//!
//! Not for checking the spec (`jobs`), the queue or the retry policy of
//! other jobs (`runner`), nor the chain itself.

use super::jobs::{self, HostState, JobSpec, Resolved};
use super::{db, ids, Api};
use crate::fanout::job::{ending, Ending};
use crate::fanout::manifest::Walk;
use crate::fanout::source::{self, HostResult, Plan, State, Watch};
use crate::session::Cancel;
use rusqlite::params;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often progress reaches the database and the event log.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A host still ending an earlier run of the job is tried again this many
/// times, after this long, doubling (0.5 + 1 + 2 + 4 + 8 s): a cancelled
/// run's hops let go of their files within a second here.
const BUSY_RETRIES: u32 = 5;
const BUSY_FIRST: Duration = Duration::from_millis(500);

/// What the runner records when the job ends: its state, error, and what the
/// final event adds.
pub(super) type End = (
    &'static str,
    Option<(&'static str, String)>,
    serde_json::Value,
);

/// Sees the chain's progress and stops it on cancel or at the deadline.
struct Watcher {
    /// Bytes each running host has received, and the tree's size.
    seen: Mutex<(Vec<u64>, u64)>,
    cancel: Cancel,
    deadline: Option<Instant>,
    deadline_hit: AtomicBool,
}

impl Watch for Watcher {
    fn progress(&self, hosts: &[HostResult], total_size: u64) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = hosts.iter().map(|h| h.bytes_received).collect();
        s.1 = total_size;
    }
    fn stop(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.deadline_hit.store(true, Ordering::Relaxed);
            return true;
        }
        self.cancel.is_cancelled()
    }
}

/// The chain's job id for an API job: derived from the API job's id, so a
/// resumed run is the same job on every host, and the daemons' logs can be
/// matched to the API's record.
fn chain_id(id: &str) -> [u8; 16] {
    let h = blake3::hash(format!("ferry api fan-out job {id}").as_bytes());
    let mut j = [0u8; 16];
    j.copy_from_slice(&h.as_bytes()[..16]);
    j
}

/// The manifest root the job's done hosts hold, if one is recorded.
fn recorded_root(api: &Api, id: &str) -> Option<[u8; 32]> {
    let text: Option<String> = api
        .conn()
        .query_row("SELECT manifest_root FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap_or(None);
    text.as_deref().and_then(crate::fanout::job::unhex)
}

/// The walk of a fan-out job's source, as its options ask.
fn walk(r: &Resolved) -> Walk {
    Walk {
        recursive: r.options.recursive,
        links: r.options.links,
        perms: r.options.perms,
        times: r.options.times,
        delete: r.options.delete,
    }
}

/// The module a fan-out job's source is in, named as the job names it.
fn module(r: &Resolved) -> Option<crate::fanout::manifest::Module> {
    r.src
        .root
        .clone()
        .map(|root| crate::fanout::manifest::Module {
            root,
            name: r.src.module.clone(),
        })
}

fn source_path(r: &Resolved) -> std::path::PathBuf {
    std::path::PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            r.src.local_path().expect("a fan-out sends a local module"),
        ),
    )
}

/// Why job `id` may not resume: some hosts hold its source as it was at
/// the first run, and the source is another version now (its manifest
/// root differs). `None` when it may: no host has it yet, no version is
/// recorded, or the source cannot be read now (the run then says why).
/// Walks the source tree (metadata only): call it off the async threads.
pub(super) fn changed_source(api: &Api, id: &str) -> Option<String> {
    let old = recorded_root(api, id)?;
    let (spec, created): (String, i64) = api
        .conn()
        .query_row(
            "SELECT spec, created_ms FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()?;
    let spec: JobSpec = serde_json::from_str(&spec).ok()?;
    let r = jobs::resolve(&spec, &api.modules, created, &|_| true).ok()?;
    let (manifest, _) =
        crate::fanout::manifest::scan(&source_path(&r), walk(&r), module(&r).as_ref()).ok()?;
    let now = manifest.root();
    (now != old).then(|| {
        format!(
            "job {id}: the source {} changed since the job's first run (its manifest root was {}…, now {}…): the hosts that have it hold the earlier version and a resume would mix the two; submit a new job to send the new version to every host",
            spec.src,
            &crate::fanout::job::hex(&old)[..16],
            &crate::fanout::job::hex(&now)[..16]
        )
    })
}

/// The hosts' states as last recorded (or all pending).
fn recorded_hosts(api: &Api, id: &str, spec: &JobSpec) -> Vec<HostState> {
    let text: Option<String> = api
        .conn()
        .query_row("SELECT hosts FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap_or(None);
    text.and_then(|t| serde_json::from_str::<Vec<HostState>>(&t).ok())
        .filter(|h| h.len() == spec.destinations.len())
        .unwrap_or_else(|| jobs::pending_hosts(spec))
}

/// Runs the fan-out to the hosts that do not have the tree yet.
pub(super) fn run(
    api: &Api,
    id: &str,
    spec: &JobSpec,
    r: &Resolved,
    interrupted: bool,
    cancel: &Cancel,
) -> End {
    let chain = r.fanout.as_ref().expect("a fan-out job");
    let mut hosts = recorded_hosts(api, id, spec);
    let only: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].state != "done")
        .collect();
    if only.is_empty() {
        return (
            "succeeded",
            None,
            json!({"detail": "every host has it already"}),
        );
    }
    let resuming = interrupted || hosts.iter().any(|h| h.state != "pending");
    for &i in &only {
        hosts[i].state = "running".into();
        hosts[i].error = None;
    }
    let kind = if resuming { "resumed" } else { "started" };
    let detail = format!(
        "{} {} of {} host(s)",
        if resuming { "repairing" } else { "sending to" },
        only.len(),
        hosts.len()
    );
    let now = ids::now_ms();
    let hosts_text = json!(hosts).to_string();
    let started = api.write(|tx| {
        tx.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, interrupted = 0, started_ms = COALESCE(started_ms, ?2), updated_ms = ?2, status_detail = ?3, hosts = ?4, bytes_done = 0, rate = 0 WHERE id = ?1",
            params![id, now, detail, hosts_text],
        )?;
        let n: i64 = tx.query_row("SELECT attempts FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
        let names: Vec<&str> = only.iter().map(|&i| hosts[i].host.as_str()).collect();
        db::event(tx, Some(id), kind, &json!({"attempt": n, "hosts": names}))?;
        Ok(())
    });
    if let Err(e) = started {
        return ("failed", Some(("internal_error", e.to_string())), json!({}));
    }
    tracing::info!(job = id, hosts = only.len(), "fan-out {kind}");
    let deadline = r
        .deadline_ms
        .map(|d| Instant::now() + Duration::from_millis((d - ids::now_ms()).max(0) as u64));
    let watcher = Arc::new(Watcher {
        seen: Mutex::new((vec![0; only.len()], 0)),
        cancel: cancel.clone(),
        deadline,
        deadline_hit: AtomicBool::new(false),
    });
    // the version the done hosts hold: every round must send that one
    let mut root = recorded_root(api, id).filter(|_| hosts.iter().any(|h| h.state == "done"));
    let mut pending = only.clone();
    let mut delay = BUSY_FIRST;
    let (mut received, mut source_read, mut total_size) = (0u64, 0u64, 0u64);
    for round in 0..=BUSY_RETRIES {
        let outcome = match chain_once(api, id, spec, r, &mut hosts, &pending, &watcher, root) {
            Ok(o) => o,
            Err(end) => {
                // the chain did not start: no host of this round got it,
                // and the hosts of earlier rounds and runs still have it
                let why = end.1.as_ref().map(|e| e.1.clone());
                for &i in &pending {
                    hosts[i].state = "missed".into();
                    hosts[i].error = why.clone();
                }
                let hosts_text = json!(hosts).to_string();
                let root_text = root.map(|r| crate::fanout::job::hex(&r));
                let _ = api.write(|tx| {
                    tx.execute(
                        "UPDATE jobs SET hosts = ?2, manifest_root = COALESCE(?4, manifest_root), rate = 0, updated_ms = ?3 WHERE id = ?1",
                        params![id, hosts_text, ids::now_ms(), root_text],
                    )?;
                    Ok(())
                });
                if !hosts.iter().any(|h| h.state == "done") {
                    return end;
                }
                let extra = json!({
                    "hosts": hosts.iter().map(|h| json!({"host": h.host, "state": h.state, "error": h.error})).collect::<Vec<_>>(),
                });
                return (
                    "partial",
                    Some(("fanout_partial", missed_text(&hosts))),
                    extra,
                );
            }
        };
        received += outcome.hosts.iter().map(|h| h.bytes_received).sum::<u64>();
        source_read += outcome.source_read;
        total_size = outcome.total_size;
        for (h, &i) in outcome.hosts.iter().zip(&pending) {
            let s = &mut hosts[i];
            s.state = match h.state {
                State::Done => "done",
                State::Missed => "missed",
            }
            .into();
            s.bytes_received = h.bytes_received;
            s.error = h.error.clone();
            s.pieces_refused = h.refused;
            s.moved_to_tail = h.moved;
        }
        if outcome.hosts.iter().any(|h| h.state == State::Done) {
            root = Some(outcome.root);
        }
        let busy: Vec<usize> = outcome
            .hosts
            .iter()
            .zip(&pending)
            .filter(|(h, _)| h.state == State::Missed && h.error.as_deref().is_some_and(still_busy))
            .map(|(_, &i)| i)
            .collect();
        if busy.is_empty() || round == BUSY_RETRIES || watcher.stop() {
            break;
        }
        // a host still ending a run just stopped (a cancel, a resume at
        // once): try it again shortly, not the job's end
        tracing::info!(
            job = id,
            hosts = busy.len(),
            "hosts still busy with an earlier run; trying them again in {delay:?}"
        );
        let until = Instant::now() + delay;
        while Instant::now() < until && !watcher.stop() {
            std::thread::sleep(Duration::from_millis(50));
        }
        delay *= 2;
        pending = busy;
    }
    super::metrics::job_done(received, 0);
    let hosts_text = json!(hosts).to_string();
    let all = total_size.saturating_mul(only.len() as u64);
    let root_text = root.map(|r| crate::fanout::job::hex(&r));
    let _ = api.write(|tx| {
        tx.execute(
            "UPDATE jobs SET hosts = ?2, bytes_done = ?3, bytes_total = ?4, literal_bytes = ?5, rate = 0, updated_ms = ?6, manifest_root = COALESCE(?7, manifest_root) WHERE id = ?1",
            params![id, hosts_text, received as i64, all as i64, received as i64, ids::now_ms(), root_text],
        )?;
        Ok(())
    });
    let extra = json!({
        "hosts": hosts.iter().map(|h| json!({"host": h.host, "state": h.state, "error": h.error})).collect::<Vec<_>>(),
        "source_read_bytes": source_read,
        "total_size": total_size,
    });
    if watcher.deadline_hit.load(Ordering::Relaxed) {
        return (
            "failed",
            Some((
                "deadline_exceeded",
                format!(
                    "the deadline passed while the fan-out ran; {}; nothing half-written was published",
                    missed_text(&hosts)
                ),
            )),
            extra,
        );
    }
    if cancel.is_cancelled() {
        return (
            "canceled",
            Some((
                "canceled",
                format!(
                    "canceled by request; {}; nothing half-written was published",
                    missed_text(&hosts)
                ),
            )),
            extra,
        );
    }
    let results: Vec<HostResult> = hosts
        .iter()
        .zip(&chain.targets)
        .map(|(h, t)| HostResult {
            target: t.clone(),
            state: if h.state == "done" {
                State::Done
            } else {
                State::Missed
            },
            bytes_received: h.bytes_received,
            seconds: 0.0,
            refused: h.pieces_refused,
            error: h.error.clone(),
            declined: false,
            moved: h.moved_to_tail,
        })
        .collect();
    match ending(&results) {
        Ending::Done => ("succeeded", None, extra),
        Ending::Partial => (
            "partial",
            Some(("fanout_partial", missed_text(&hosts))),
            extra,
        ),
        Ending::Failed => (
            "failed",
            Some(("fanout_failed", missed_text(&hosts))),
            extra,
        ),
    }
}

/// Whether a host missed a run only because it was still ending an earlier
/// one of this job (its files' write locks, the job's registration).
fn still_busy(why: &str) -> bool {
    why.contains("another transfer is writing this file right now")
        || why.contains("this job is already running on this host")
}

/// One run of the chain through the hosts `pending`, its progress written
/// to the job as it goes; the outcome, or how the job ends when the chain
/// could not start.
#[allow(clippy::too_many_arguments)]
fn chain_once(
    api: &Api,
    id: &str,
    spec: &JobSpec,
    r: &Resolved,
    hosts: &mut [HostState],
    pending: &[usize],
    watcher: &Arc<Watcher>,
    expect_root: Option<[u8; 32]>,
) -> Result<source::Outcome, End> {
    let chain = r.fanout.as_ref().expect("a fan-out job");
    let src = source_path(r);
    if std::fs::symlink_metadata(&src).is_err() {
        // named as the job names it, not by this daemon's path
        return Err((
            "failed",
            Some((
                "source_not_found",
                format!("{}: no such file or directory", spec.src),
            )),
            json!({}),
        ));
    }
    let plan = Plan {
        src,
        confine: module(r),
        walk: walk(r),
        targets: pending.iter().map(|&i| chain.targets[i].clone()).collect(),
        daemon: jobs::daemon_options(&api.identity, &api.config_dir),
        stall: chain.stall,
        job: chain_id(id),
        watch: Some(watcher.clone()),
        expect_root,
    };
    let t0 = Instant::now();
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| source::run(&plan));
        let mut last = Instant::now();
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() < PROGRESS_EVERY {
                continue;
            }
            last = Instant::now();
            let (seen, total) = watcher
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for (k, &i) in pending.iter().enumerate() {
                hosts[i].bytes_received = seen.get(k).copied().unwrap_or(0);
            }
            let done: u64 = seen.iter().sum();
            let all = total.saturating_mul(pending.len() as u64);
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(0.001);
            let hosts_text = json!(hosts).to_string();
            // hosts done in an earlier round are saved here: their version
            // with them, so that a daemon stopped now resumes knowing it
            let root_text = expect_root.map(|r| crate::fanout::job::hex(&r));
            let _ = api.write(|tx| {
                tx.execute(
                    "UPDATE jobs SET bytes_done = ?2, bytes_total = ?3, rate = ?4, hosts = ?5, updated_ms = ?6, manifest_root = COALESCE(?7, manifest_root) WHERE id = ?1",
                    params![id, done as i64, all as i64, rate, hosts_text, ids::now_ms(), root_text],
                )?;
                db::event(tx, Some(id), "progress", &json!({"bytes_done": done, "bytes_total": all, "rate_bytes_per_second": rate.round() as i64}))?;
                Ok(())
            });
        }
        h.join()
    });
    match result {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => {
            let (code, _) = jobs::classify(&e);
            Err(("failed", Some((code, e.to_string())), json!({})))
        }
        Err(_) => Err((
            "failed",
            Some(("internal_error", "the fan-out panicked".into())),
            json!({}),
        )),
    }
}

/// "2 of 3 host(s) missed it: H1 (why); H2 (why)".
fn missed_text(hosts: &[HostState]) -> String {
    let missed: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != "done")
        .map(|h| {
            format!(
                "{} ({})",
                h.host,
                h.error.as_deref().unwrap_or("not reached")
            )
        })
        .collect();
    format!(
        "{} of {} host(s) missed it: {}",
        missed.len(),
        hosts.len(),
        missed.join("; ")
    )
}
