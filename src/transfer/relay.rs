//! Remote to remote, as scp does it: `ferry cp host1:a host2:b`. Where the
//! first host can reach the second (ferry runs there, and the same ssh
//! command logs in to host2 from it without a prompt), the copy runs there,
//! directly between the two: `ssh host1 ferry cp a host2:b`. Otherwise (or
//! with `-3`, or when a daemon is one end) it goes through this host,
//! streamed ([`splice`]): the session between the source's sender and the
//! destination's receiver is forwarded here frame by frame, with nothing
//! written to this host's disk and memory bounded whatever the file sizes.
//! Not for a transfer with a local end: that is [`super::run_once`]'s.

mod splice;

use super::endpoint::{self, Endpoint, Peer};
use super::{Outcome, Plan};
use crate::error::TransferError;
use crate::location::Location;
use crate::proto::{Event, Request, Role};
use crate::session::wire::Counters;
use crate::session::{Cancel, EventFn};
use crate::transport::child::{shell_quote, split_words, ssh_command, SshOptions};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A `cp` whose ends are both remote: every source and the destination
/// (`sync`, as rsync, refuses that).
pub fn is_remote_to_remote(plan: &Plan) -> bool {
    let remote = |l: &Location| matches!(l, Location::Ssh { .. } | Location::Daemon { .. });
    plan.options.cp_mode
        && !plan.sources.is_empty()
        && plan.sources.iter().all(remote)
        && remote(&plan.dest)
}

/// Runs a remote-to-remote plan: directly when it can, else through here.
pub fn run(plan: &Plan, events: &EventFn<'_>, cancel: &Cancel) -> Result<Outcome, TransferError> {
    if let Some(direct) = direct_route(plan) {
        if !plan.ssh.through_local && reachable(plan, &direct)? {
            events(Event::notice(
                b"",
                format!("copying directly from {} to {}", direct.host1, direct.host2),
            ));
            return run_direct(plan, &direct);
        }
    }
    events(Event::notice(b"", "copying through this host"));
    through_here_retrying(plan, events, cancel)
}

/// With a daemon at either end, a relay whose connection breaks is run
/// again as any transfer to or from a daemon is ([`super::reach::with_retries`]:
/// `--retries`, `--timeout`, backoff with jitter, and the line that says it
/// gave up): files already done are skipped and a file cut short resumes
/// from its partial file at the destination.
fn through_here_retrying(
    plan: &Plan,
    events: &EventFn<'_>,
    cancel: &Cancel,
) -> Result<Outcome, TransferError> {
    super::reach::with_retries(plan, events, cancel, || {
        run_through_here(plan, events, cancel)
    })
}

/// scp's direct route: every source over ssh on one host, the destination
/// over ssh.
struct Direct {
    /// `[user@]host1`, `[user@]host2`.
    user1: Option<String>,
    host1: String,
    host2: String,
    /// The source paths on host1, the destination as host1 names it.
    paths: Vec<String>,
    dest: String,
}

fn direct_route(plan: &Plan) -> Option<Direct> {
    let Location::Ssh {
        user: user2,
        host: host2,
        path: dest_path,
    } = &plan.dest
    else {
        return None;
    };
    let mut first: Option<(&Option<String>, &String)> = None;
    let mut paths = Vec::new();
    for s in &plan.sources {
        let Location::Ssh { user, host, path } = s else {
            return None;
        };
        match first {
            Some((u, h)) if (u, h) != (user, host) => return None,
            _ => first = Some((user, host)),
        }
        paths.push(String::from_utf8(path.clone()).ok()?);
    }
    let (user1, host1) = first?;
    let bracket = |h: &str| match h.contains(':') {
        true => format!("[{h}]"),
        false => h.to_string(),
    };
    let target2 = match user2 {
        Some(u) => format!("{u}@{}", bracket(host2)),
        None => bracket(host2),
    };
    let dest = format!("{target2}:{}", String::from_utf8(dest_path.clone()).ok()?);
    Some(Direct {
        user1: user1.clone(),
        host1: host1.clone(),
        host2: target2,
        paths,
        dest,
    })
}

/// The ssh command that reaches host2, as one word list for host1's shell:
/// the same `-e` command, port, key, config and options.
fn rsh_for_host2(ssh: &SshOptions) -> Result<Vec<String>, TransferError> {
    let mut words = split_words(ssh.rsh.as_deref().unwrap_or("ssh"))
        .map_err(|e| TransferError::Usage(format!("-e: {e}")))?;
    if let Some(p) = ssh.port {
        words.extend(["-p".into(), p.to_string()]);
    }
    if let Some(i) = &ssh.identity {
        words.extend(["-i".into(), i.clone()]);
    }
    if let Some(f) = &ssh.config {
        words.extend(["-F".into(), f.clone()]);
    }
    for o in &ssh.ssh_options {
        words.extend(["-o".into(), o.clone()]);
    }
    Ok(words)
}

fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn remote_ferry(ssh: &SshOptions) -> String {
    ssh.remote_ferry.clone().unwrap_or_else(|| "ferry".into())
}

/// Whether host1 runs ferry and reaches host2 with the same ssh command,
/// without a prompt (bounded: ssh's ConnectTimeout on each hop).
fn reachable(plan: &Plan, d: &Direct) -> Result<bool, TransferError> {
    let mut probe = rsh_for_host2(&plan.ssh)?;
    probe.extend(
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "--",
            &d.host2,
            "true",
        ]
        .map(String::from),
    );
    let script = format!(
        "{} --version >/dev/null 2>&1 && {} >/dev/null 2>&1",
        shell_quote(&remote_ferry(&plan.ssh)),
        quoted(&probe)
    );
    let opts = SshOptions {
        ssh_options: [plan.ssh.ssh_options.clone(), vec!["BatchMode=yes".into()]].concat(),
        ..plan.ssh.clone()
    };
    let (mut cmd, _) = ssh_command(d.user1.as_deref(), &d.host1, &opts)?;
    cmd.arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd.status().is_ok_and(|s| s.success()))
}

/// `ssh host1 ferry cp [flags] paths host2:dest`, its output ours.
fn run_direct(plan: &Plan, d: &Direct) -> Result<Outcome, TransferError> {
    let o = &plan.options;
    let mut words = vec![remote_ferry(&plan.ssh), "cp".into()];
    for (on, flag) in [(o.recursive, "-r"), (o.perms && o.times, "-p")] {
        if on {
            words.push(flag.into());
        }
    }
    words.extend(["-e".into(), quoted(&rsh_for_host2(&plan.ssh)?)]);
    if let Some(f) = &plan.ssh.remote_ferry {
        words.extend(["--remote-ferry".into(), f.clone()]);
    }
    words.push("--".into());
    words.extend(d.paths.iter().cloned());
    words.push(d.dest.clone());
    let (mut cmd, target) = ssh_command(d.user1.as_deref(), &d.host1, &plan.ssh)?;
    cmd.arg(quoted(&words)).stdin(Stdio::null());
    let status = cmd.status().map_err(|e| {
        TransferError::Connection(format!("ssh to {target}: {}", crate::error::io_text(&e)))
    })?;
    match status.code() {
        Some(0) => Ok(Outcome::default()),
        Some(23) => Ok(Outcome {
            summary: crate::proto::Summary {
                errors: 1,
                ..Default::default()
            },
            ..Default::default()
        }),
        code => Err(TransferError::Remote(format!(
            "the copy from {target} to {} failed (exit {}); see its message above",
            d.host2,
            code.map_or("by a signal".into(), |c| c.to_string())
        ))),
    }
}

/// Through this host, streamed ([`splice`]): the destination opened as a
/// push, the source as a pull, the session forwarded between the two.
fn run_through_here(
    plan: &Plan,
    events: &EventFn<'_>,
    cancel: &Cancel,
) -> Result<Outcome, TransferError> {
    let mut sources = Vec::new();
    let mut paths = Vec::new();
    for s in &plan.sources {
        let r = endpoint::resolve(s)?;
        let Endpoint::Peer(peer) = r.endpoint else {
            unreachable!("checked remote")
        };
        sources.push(peer);
        paths.push(r.path);
    }
    if sources.iter().any(|p| *p != sources[0]) {
        return Err(TransferError::Usage(
            "all remote sources must be on the same host".into(),
        ));
    }
    let dest = endpoint::resolve(&plan.dest)?;
    let Endpoint::Peer(to) = dest.endpoint else {
        unreachable!("checked remote")
    };
    let from = sources.swap_remove(0);
    let mut options = plan.options.clone();
    // -H: only files with more than one link are kept for their links
    options.link_marks = options.hard_links;
    // -z: blocks continue each other's zstd frame
    options.zstd_stream = options.compress;
    // -S: holes travel as hole messages, not as zeros
    options.sparse_holes = options.sparse;
    // one connection to each end: the relay forwards one ordered session
    options.streams = 1;
    let request = Request {
        role: Role::ServerReceives,
        paths: vec![dest.path],
        options,
    };
    let (into, out_of) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let failure = splice::FirstFailure::default();
    let through = splice::Through {
        plan,
        source: splice::End {
            name: peer_name(&from),
            peer: from,
            counters: out_of.clone(),
        },
        dest_name: peer_name(&to),
        events,
        failure: &failure,
    };
    let summary = splice::on_peer(plan, &to, request, paths, events, cancel, &into, &through);
    // what failed first, not how the other end took it
    let summary = match (summary, failure.take()) {
        (Ok(s), _) => s,
        (Err(_), Some(first)) => return Err(first),
        (Err(e), None) => return Err(e),
    };
    Ok(Outcome {
        summary,
        sent: into.sent.load(Ordering::Relaxed),
        received: out_of.received.load(Ordering::Relaxed),
    })
}

/// A peer as messages name it.
fn peer_name(peer: &Peer<'_>) -> String {
    match peer {
        Peer::Ssh {
            user: Some(u),
            host,
        } => format!("{u}@{host}"),
        Peer::Ssh { user: None, host } => host.to_string(),
        Peer::Daemon { host, port } => super::doctor_target(host, *port),
    }
}
