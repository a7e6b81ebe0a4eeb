//! `ferry fanout`: parses the flags into a fan-out plan, runs it, prints the
//! job id and each host's outcome (text, or one JSON object), keeps the job
//! record in the config directory for `--resume`, and picks the exit code.
//! No fan-out logic here (that is [`crate::fanout`]).

use super::args::DaemonFlags;
use super::exit;
use super::stdout::outln;
use crate::error::TransferError;
use crate::fanout::job::parse_duration;
use crate::fanout::job::{self, hex, unhex};
use crate::fanout::manifest::Walk;
use crate::fanout::source::{self, Plan, State};
use clap::{ArgAction, Args};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Default)]
#[command(after_help = "\
Every DEST is a ferry daemon (host::module/path or ferry://host[:port]/module/path) and \
gets the same tree, as a directory made if missing: SRC/ sends what is in SRC, SRC sends \
SRC itself (as rsync). The data goes down one chain SRC -> DEST1 -> DEST2 -> ...; each \
host checks every 4 MiB piece against the source's signed BLAKE3 before it commits or \
forwards it again, and publishes each file atomically. A host that fails or goes silent \
for the stall timeout is bypassed; the others go on.

Exit codes: 0 every host has the whole tree, verified; 24 the job is partial: the hosts \
that missed it are named on stderr (repair them with --resume JOB); 1 bad usage, or a \
--resume of a source that changed since the job's first run (refused, nothing sent: the \
hosts that have the job hold the first version; run a new fanout without --resume); 11 a \
local fault (the source cannot be read).")]
pub struct FanoutArgs {
    /// Archive mode: -rlpt
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Recurse into directories
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Copy symlinks as symlinks (the daemon's module decides which it makes)
    #[arg(short = 'l', long)]
    pub links: bool,
    /// Preserve permissions
    #[arg(short = 'p', long)]
    pub perms: bool,
    /// Preserve modification times
    #[arg(short = 't', long)]
    pub times: bool,
    /// Delete what each destination has beyond the source's tree
    #[arg(long)]
    pub delete: bool,
    /// The daemons' port for host::module addresses that name none (default 7420)
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Bypass a host that says nothing for this long (e.g. 10s, 500ms, 2m; default 10s);
    /// also the longest wait for a host's first answer (it looks at what it holds first)
    #[arg(long = "stall-timeout", value_name = "DUR", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// Run job JOB again for the hosts that missed it: only the pieces they
    /// lack cross the wire
    #[arg(long, value_name = "JOB")]
    pub resume: Option<String>,
    /// One JSON object on stdout: the job and each host's result
    #[arg(long)]
    pub json: bool,
    /// Say more (each host's result)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// SRC DEST1 DEST2 ...
    pub paths: Vec<OsString>,
}

/// What `--resume` needs to run a job again.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    job: String,
    src: String,
    targets: Vec<String>,
    recursive: bool,
    links: bool,
    perms: bool,
    times: bool,
    delete: bool,
    port: Option<u16>,
    stall_ms: u64,
    /// Per target: "done" or "missed".
    states: Vec<String>,
    /// The manifest root (hex) of the version the done hosts hold: a
    /// resume of a source that differs now is refused. Absent in records
    /// from before it was kept, and while no host has the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<String>,
}

fn record_path(flags: &DaemonFlags, job: &str) -> PathBuf {
    crate::trust::config_dir(flags.config_dir.as_deref())
        .join("fanout")
        .join(format!("{job}.json"))
}

pub fn run(a: FanoutArgs) -> Result<i32, TransferError> {
    let daemon = super::daemon_options(&a.daemon)?;
    let (record, job, only): (Record, [u8; 16], Vec<usize>) = match &a.resume {
        Some(job) => {
            if !a.paths.is_empty() {
                return Err(TransferError::Usage(
                    "--resume JOB takes no SRC or DEST: they are the job's".into(),
                ));
            }
            let path = record_path(&a.daemon, job);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                TransferError::Usage(format!(
                    "no record of fan-out job {job} ({}: {})",
                    path.display(),
                    crate::error::io_text(&e)
                ))
            })?;
            let r: Record = serde_json::from_str(&text).map_err(|e| {
                TransferError::Usage(format!("{}: not a fan-out job record: {e}", path.display()))
            })?;
            let id = unhex(&r.job)
                .ok_or_else(|| TransferError::Usage(format!("{}: bad job id", path.display())))?;
            let only: Vec<usize> = (0..r.targets.len())
                .filter(|&i| r.states.get(i).map(String::as_str) != Some("done"))
                .collect();
            (r, id, only)
        }
        None => {
            if a.paths.len() < 2 {
                return Err(TransferError::Usage(
                    "usage: ferry fanout [FLAGS] SRC DEST1 [DEST2 ...]".into(),
                ));
            }
            let text = |p: &OsString| {
                p.to_str().map(str::to_string).ok_or_else(|| {
                    TransferError::Usage(format!("{}: not valid UTF-8", p.to_string_lossy()))
                })
            };
            let targets = a.paths[1..]
                .iter()
                .map(text)
                .collect::<Result<Vec<_>, _>>()?;
            let id = source::new_job();
            let r = Record {
                job: hex(&id),
                src: text(&a.paths[0])?,
                states: vec!["missed".into(); targets.len()],
                targets,
                recursive: a.recursive || a.archive,
                links: a.links || a.archive,
                perms: a.perms || a.archive,
                times: a.times || a.archive,
                delete: a.delete,
                port: a.port,
                stall_ms: a
                    .stall_timeout
                    .unwrap_or(crate::fanout::DEFAULT_STALL)
                    .as_millis() as u64,
                root: None,
            };
            let n = r.targets.len();
            (r, id, (0..n).collect())
        }
    };
    let chosen: Vec<&String> = only.iter().map(|&i| &record.targets[i]).collect();
    let targets = job::chain(&chosen, record.port)?;
    let mut record = record;
    if targets.is_empty() {
        if !a.json {
            outln!("job {}: every host has it already", record.job);
        }
        return Ok(exit::OK);
    }
    // the version the done hosts hold: a source that differs now would mix
    // two versions across the hosts
    let expect_root = match &record.root {
        Some(text) if record.states.iter().any(|s| s == "done") => {
            let bad = || {
                TransferError::Usage(format!(
                    "{}: bad manifest root",
                    record_path(&a.daemon, &record.job).display()
                ))
            };
            Some(unhex(text).ok_or_else(bad)?)
        }
        _ => None,
    };
    let plan = Plan {
        src: PathBuf::from(&record.src),
        // the user's own path: followed as given
        confine: None,
        walk: Walk {
            recursive: record.recursive,
            links: record.links,
            perms: record.perms,
            times: record.times,
            delete: record.delete,
        },
        targets,
        daemon,
        stall: a
            .stall_timeout
            .unwrap_or(Duration::from_millis(record.stall_ms)),
        job,
        watch: None,
        expect_root,
    };
    // a source that is not there fails before a job is announced
    std::fs::symlink_metadata(&plan.src)
        .map_err(|e| TransferError::local(record.src.clone(), &e))?;
    if !a.json {
        outln!("job {}", record.job);
    }
    let outcome = source::run(&plan).map_err(|e| match e {
        TransferError::Usage(text) if expect_root.is_some() && text.starts_with(source::CHANGED) => {
            TransferError::Usage(format!(
                "job {}: {text}: the hosts that have it hold the earlier version and a resume would mix the two; nothing was sent. Run a new `ferry fanout` (without --resume) to send the new version to every host",
                record.job
            ))
        }
        e => e,
    })?;
    for u in &outcome.added {
        eprintln!("ferry: {}", u.added_notice());
    }
    for (h, &i) in outcome.hosts.iter().zip(&only) {
        record.states[i] = match h.state {
            State::Done => "done".into(),
            State::Missed => "missed".into(),
        };
    }
    if record.states.iter().any(|s| s == "done") {
        // the version this run sent: equal to the recorded one when there is one
        record.root.get_or_insert_with(|| hex(&outcome.root));
    }
    let path = record_path(&a.daemon, &record.job);
    let saved = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&record).expect("a record serializes"),
            )
        });
    if let Err(e) = saved {
        eprintln!(
            "ferry: cannot keep the job record {}: {} (--resume will not find it)",
            path.display(),
            crate::error::io_text(&e)
        );
    }
    let missed: Vec<_> = outcome
        .hosts
        .iter()
        .filter(|h| h.state == State::Missed)
        .collect();
    let code = match job::ending(&outcome.hosts) {
        job::Ending::Done => exit::OK,
        job::Ending::Partial | job::Ending::Failed => exit::FANOUT_PARTIAL,
    };
    if a.json {
        let hosts: Vec<_> = outcome
            .hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "host": h.target.shown,
                    "state": match h.state { State::Done => "done", State::Missed => "missed" },
                    "bytes_received": h.bytes_received,
                    "seconds": (h.seconds * 1000.0).round() / 1000.0,
                    "pieces_refused": h.refused,
                    "moved_to_tail": h.moved,
                    "error": h.error,
                })
            })
            .collect();
        let v = serde_json::json!({
            "kind": "fanout",
            "v": 1,
            "job": record.job,
            "exit_code": code,
            "total_size": outcome.total_size,
            "source_read_bytes": outcome.source_read,
            "source_rchar": rchar(),
            "hosts": hosts,
        });
        outln!("{v}");
    } else {
        for h in &outcome.hosts {
            if h.state == State::Done && a.verbose > 0 {
                outln!(
                    "{}: done, {} bytes received in {:.2} s{}{}",
                    h.target.shown,
                    h.bytes_received,
                    h.seconds,
                    if h.moved {
                        " (slow: moved to the tail of the chain)"
                    } else {
                        ""
                    },
                    if h.refused > 0 {
                        format!(" ({} damaged piece(s) refused and sent again)", h.refused)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    for h in &missed {
        eprintln!(
            "ferry: {} missed the job: {}",
            h.target.shown,
            h.error.as_deref().unwrap_or("unknown")
        );
    }
    if job::all_declined(&outcome.hosts) {
        // --resume would meet the same refusal
        eprintln!(
            "ferry: job {} {}: {} of {} host(s) refused it (exit {code}); fix what they said above (the address, the module) and run the fan-out to them again",
            record.job,
            if missed.len() == outcome.hosts.len() {
                "failed"
            } else {
                "is partial"
            },
            missed.len(),
            outcome.hosts.len(),
        );
    } else if job::ending(&outcome.hosts) == job::Ending::Failed {
        eprintln!(
            "ferry: job {} failed: no host got it ({} of {} host(s) missed it, exit {code}); once the causes above are fixed, `ferry fanout --resume {}` runs it again",
            record.job,
            missed.len(),
            outcome.hosts.len(),
            record.job
        );
    } else if !missed.is_empty() {
        eprintln!(
            "ferry: job {} is partial: {} of {} host(s) missed it (exit {code}); repair them with `ferry fanout --resume {}`",
            record.job,
            missed.len(),
            outcome.hosts.len(),
            record.job
        );
    }
    Ok(code)
}

/// Bytes this process has read through system calls (`/proc/self/io`).
fn rchar() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn job_ids_round_trip() {
        let id = [0xab; 16];
        assert_eq!(unhex(&hex(&id)), Some(id));
        assert_eq!(unhex::<16>("zz"), None);
        assert_eq!(unhex::<32>(&hex(&[7; 32])), Some([7; 32]));
    }
}
