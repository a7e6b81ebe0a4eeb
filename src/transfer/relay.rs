//! Remote to remote, as scp does it: `ferry cp host1:a host2:b`. Where the
//! first host can reach the second (ferry runs there, and the same ssh
//! command logs in to host2 from it without a prompt), the copy runs there,
//! directly between the two: `ssh host1 ferry cp a host2:b`. Otherwise (or
//! with `-3`, or when a daemon is one end) it goes through this host: the
//! sources are copied into a private temporary directory here, then from it
//! to the destination, and the directory is removed. Not for a transfer with
//! a local end: that is [`super::run_once`]'s.

use super::{Outcome, Plan};
use crate::error::TransferError;
use crate::location::Location;
use crate::proto::{Event, Report};
use crate::session::{Cancel, EventFn};
use crate::transport::child::{shell_quote, split_words, ssh_command, SshOptions};
use std::process::Stdio;

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
    run_through_here(plan, events, cancel)
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

/// Removes the staging directory however the copy ends.
struct Staging(std::path::PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last component of a source path: what it is called in the staging
/// directory.
fn base_name(path: &[u8]) -> Option<&[u8]> {
    path.split(|&b| b == b'/')
        .rfind(|c| !c.is_empty())
        .filter(|c| *c != b"." && *c != b"..")
}

/// Through this host: the sources into a private directory here, then from
/// there to the destination. Only the second copy's files are reported.
fn run_through_here(
    plan: &Plan,
    events: &EventFn<'_>,
    cancel: &Cancel,
) -> Result<Outcome, TransferError> {
    let mut names = Vec::new();
    for s in &plan.sources {
        let path = match s {
            Location::Ssh { path, .. } | Location::Daemon { path, .. } => path,
            _ => unreachable!("checked remote"),
        };
        let name = base_name(path).ok_or_else(|| {
            TransferError::Usage(format!(
                "{}: a copy between two remotes needs a source that names a file or directory",
                String::from_utf8_lossy(path)
            ))
        })?;
        names.push(name.to_vec());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("ferry-3-{}-{nanos}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| TransferError::local(dir.display().to_string(), &e))?;
    }
    let staging = Staging(dir);
    let here = staging.0.as_os_str().as_encoded_bytes().to_vec();
    let pull = Plan {
        dest: Location::Local([here.as_slice(), b"/"].concat()),
        ..plan.clone()
    };
    // the first leg's errors and notices only: its files are the second's
    let quiet = |e: Event| {
        if matches!(e.report(), Report::Error { .. } | Report::Notice { .. }) {
            events(e);
        }
    };
    let first = super::run(&pull, &quiet, cancel)?;
    let push = Plan {
        sources: names
            .iter()
            .map(|n| Location::Local([here.as_slice(), b"/", n].concat()))
            .collect(),
        ..plan.clone()
    };
    let second = super::run(&push, events, cancel)?;
    drop(staging);
    Ok(Outcome {
        summary: crate::proto::Summary {
            errors: first.summary.errors + second.summary.errors,
            ..second.summary
        },
        sent: first.sent + second.sent,
        received: first.received + second.received,
    })
}

#[cfg(test)]
mod tests {
    use super::base_name;

    #[test]
    fn staged_names() {
        assert_eq!(base_name(b"/data/ckpt/"), Some(&b"ckpt"[..]));
        assert_eq!(base_name(b"a"), Some(&b"a"[..]));
        assert_eq!(base_name(b"x/.."), None);
        assert_eq!(base_name(b""), None);
    }
}
