//! Transfers over SFTP, and when to use it (`--transport auto|ferry|sftp`).
//! With `auto`, ferry's own protocol is tried first; a remote that cannot
//! run ferry (`serve --stdio` exits 127 or 126, an sftp-only account, no
//! common protocol version) gets SFTP instead, with one line saying why and
//! that there is no delta. An ssh failure (exit 255: DNS, refused, host key,
//! authentication) is never retried over SFTP: ssh's message is shown with a
//! pointer to `ferry doctor`. The decision is remembered per host for a day.
//!
//! Over SFTP both halves of the session run here, as for a local transfer:
//! the remote side is a [`crate::sftp`] store over `ssh … -s sftp`.
//!
//! Not for the SFTP protocol itself ([`crate::sftp`]) nor for starting ssh
//! ([`crate::transport::child`]).

use super::{local, Plan};
use crate::error::TransferError;
use crate::proto::{Event, HandshakeError, Request, Role, Summary};
use crate::session::wire::Counters;
use crate::session::{self, Cancel, EventFn};
use crate::sftp::verify::{Hasher, How, Ranges, RemoteHash, Runner, Verify, HASHERS, RANGE_BYTES};
use crate::sftp::{remote_path, Sftp, SftpSide};
use crate::transport::child::{self, Ended, Transport, VerifyMode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a host's "use SFTP" is remembered.
const REMEMBERED_FOR: Duration = Duration::from_secs(24 * 3600);

/// What the sftp-server of an `internal-sftp`-only account says to a command.
const SFTP_ONLY: &str = "This service allows sftp connections only.";

/// Runs the client's half over ssh as `--transport` says.
#[allow(clippy::too_many_arguments)]
pub(super) fn over_ssh(
    plan: &Plan,
    user: Option<&str>,
    host: &str,
    request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    side: &dyn session::Side,
) -> Result<Summary, TransferError> {
    let ferry = |request, local_paths, kept| {
        super::over_ssh(
            plan,
            user,
            host,
            request,
            local_paths,
            events,
            cancel,
            counters,
            kept,
            side,
        )
    };
    let sftp = |request, local_paths, why: Option<String>| {
        run(
            plan,
            user,
            host,
            request,
            local_paths,
            events,
            cancel,
            counters,
            why,
            side,
        )
    };
    match plan.ssh.transport {
        Transport::Ferry => ferry(request, local_paths, None),
        Transport::Sftp => sftp(request, local_paths, None),
        // the user named the remote ferry: that one, or an error saying so
        Transport::Auto if plan.ssh.remote_ferry.is_some() => ferry(request, local_paths, None),
        Transport::Auto => {
            let key = cache_key(&plan.ssh, user, host);
            if let Some(why) = remembered(&key) {
                return sftp(request, local_paths, Some(recalled(&why)));
            }
            let mut fallback = None;
            let result = ferry(request.clone(), local_paths.clone(), Some(&mut fallback));
            match fallback {
                Some(why) => {
                    remember(&key, &why);
                    sftp(request, local_paths, Some(why))
                }
                None => result,
            }
        }
    }
}

/// What a ferry attempt whose stderr was kept means: `Ok(Some(why))` to fall
/// back to SFTP, `Ok(None)` to keep the attempt's result, or the error to
/// give instead of it (ssh's own failure, with ssh's message).
pub(super) fn judge(
    host: &str,
    ended: &Ended,
    result: &Result<Summary, TransferError>,
    events: &EventFn<'_>,
) -> Result<Option<String>, TransferError> {
    let said = ended.stderr.trim();
    let version = matches!(
        result,
        Err(TransferError::Handshake(
            HandshakeError::NoCommonVersion { .. }
        ))
    );
    match ended.code {
        _ if version => {
            return Ok(Some(format!(
                "the ferry on {host} speaks no protocol version this one does"
            )))
        }
        Some(255) => {
            return Err(TransferError::Connection(format!(
                "ssh to {host}: ssh failed (exit 255): {}",
                last_line(said).unwrap_or("no message")
            )))
        }
        Some(127) if result.is_err() => {
            return Ok(Some(format!(
                "{host} has no ferry (exit 127); install it there or pass --remote-ferry PATH"
            )))
        }
        Some(126) if result.is_err() => {
            return Ok(Some(format!(
                "ferry on {host} cannot run (exit 126: {})",
                last_line(said).unwrap_or("permission denied")
            )))
        }
        // (sshd sends that line on the channel, where ferry's hello should be)
        _ if said.contains(SFTP_ONLY) || sftp_only_hello(result) => {
            return Ok(Some(format!("{host} allows SFTP connections only")))
        }
        _ => {}
    }
    // (with cp -v, ssh's lines went to stderr as ssh printed them)
    if !said.is_empty() && result.is_ok() && !child::verbose() {
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            events(Event::notice(b"", line.to_string()));
        }
    }
    Ok(None)
}

/// `ferry ls host:path` over SFTP: the entries a transfer over SFTP would
/// list (the directory and its entries, symlinks as symlinks), with `why`
/// (the fallback's reason) told once as a notice.
pub(super) fn list(
    user: Option<&str>,
    host: &str,
    path: &[u8],
    ssh: &child::SshOptions,
    why: Option<String>,
    events: &EventFn<'_>,
) -> Result<Vec<crate::proto::Entry>, TransferError> {
    use crate::store::source::{ListOptions, Listed, Source};
    if let Some(why) = why {
        events(Event::notice(b"", format!("{why}: listing over SFTP")));
    }
    let (cmd, target) = child::sftp_command(user, host, ssh)?;
    let sftp = Sftp::start(cmd).map_err(|e| TransferError::Connect {
        text: format!(
            "ssh to {target}: ssh failed: {}; see ssh's message above",
            crate::error::io_text(&e)
        ),
        why: crate::error::ConnectFailure::Other,
    })?;
    let source = crate::sftp::source::SftpSource { sftp, verify: None };
    let opts = ListOptions {
        dirs: true,
        links: true,
        ..Default::default()
    };
    let mut entries = Vec::new();
    let mut failed = None;
    let roots = [remote_path(path)];
    source.list(&roots, &opts, &mut |item| -> Result<(), TransferError> {
        match item {
            Listed::Entry(e, _) => entries.push(e),
            Listed::Error(t) => {
                failed.get_or_insert(t);
            }
            Listed::Notice(_) => {}
        }
        Ok(())
    })?;
    match failed {
        Some(t) => Err(TransferError::Remote(format!("{target}: {t}"))),
        None => Ok(entries),
    }
}

/// Whether the ferry attempt met the sftp-only account's line instead of a
/// hello.
fn sftp_only_hello(result: &Result<Summary, TransferError>) -> bool {
    match result {
        Err(TransferError::Handshake(HandshakeError::NotFerry(sent))) => {
            let start = sent.trim_start_matches(['"', '\'']);
            !start.is_empty() && SFTP_ONLY.starts_with(start.trim_end_matches(['"', '\'']))
        }
        _ => false,
    }
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// Runs the transfer over SFTP: both session halves here, the remote a store.
#[allow(clippy::too_many_arguments)]
fn run(
    plan: &Plan,
    user: Option<&str>,
    host: &str,
    mut request: Request,
    local_paths: Vec<Vec<u8>>,
    events: &EventFn<'_>,
    cancel: &Cancel,
    counters: &Arc<Counters>,
    why: Option<String>,
    side: &dyn session::Side,
) -> Result<Summary, TransferError> {
    let why_kind = match &why {
        Some(w) if w.contains("allows SFTP connections only") => Exec::No,
        Some(_) => Exec::Yes,
        None => Exec::Unknown,
    };
    if let Some(why) = why {
        events(Event::notice(b"", format!("{why}: using SFTP (no delta)")));
    }
    let (cmd, target) = child::sftp_command(user, host, &plan.ssh)?;
    // nothing was connected yet: not "connection lost"
    let sftp = Sftp::start(cmd).map_err(|e| TransferError::Connect {
        text: format!(
            "ssh to {target}: ssh failed: {}; see ssh's message above",
            crate::error::io_text(&e)
        ),
        why: crate::error::ConnectFailure::Other,
    })?;
    if !sftp.ext.posix_rename {
        events(Event::notice(
            b"",
            format!("the SFTP server on {host} lacks posix-rename@openssh.com: a file is replaced by remove then rename, so the publish is not atomic"),
        ));
    }
    request.paths = request.paths.iter().map(|p| remote_path(p)).collect();
    // `--streams N`: N SFTP connections, each its own ssh; the session
    // itself is one, in order (the store spreads files over them)
    let streams = usize::from(request.options.streams.max(1));
    request.options.streams = 1;
    // SFTP makes no holes: a hole is written as zeros, block by block (so a
    // cancel is seen between them), not in one call
    request.options.sparse_holes = false;
    // the others log in meanwhile, and are used as they join
    let joining = (streams > 1).then(|| more_streams(&sftp, streams - 1, user, host, plan));
    let pushing = request.role == Role::ServerReceives;
    // files are hashed on the remote where the account may run commands,
    // both ways: an upload before it is renamed into place there, a
    // download (what was read against what the remote holds) before it is
    // renamed into place here; `--verify reread` reads every file again
    // over SFTP instead
    let verify = match plan.ssh.verify {
        VerifyMode::Reread => Some(Verify::new(How::Reread)),
        VerifyMode::Auto => {
            remote_hash(plan, user, host, &why_kind).and_then(|(hasher, runner)| {
                let (cmd, _) = child::ssh_command(user, host, &plan.ssh).ok()?;
                let mut v = Verify::new(How::Remote(RemoteHash::new(cmd, hasher, runner)));
                // a large upload's ranges: their own connection, opened at
                // the first range, perhaps hours in: it never prompts (as an
                // extra stream's); if it cannot log in, the file is read
                // again over SFTP instead
                if pushing {
                    let quiet = child::SshOptions {
                        extra: true,
                        ..plan.ssh.clone()
                    };
                    let (cmd, _) = child::ssh_command(user, host, &quiet).ok()?;
                    v.ranges = Some(Ranges {
                        hash: RemoteHash::on_demand(cmd, hasher, Runner::Range),
                        bytes: range_bytes(),
                    });
                }
                Some(v)
            })
        }
    };
    let remote = SftpSide {
        sftp: sftp.clone(),
        shown_host: format!("{target}:"),
        verify: verify.clone(),
    };
    let result = local::run(
        request,
        local_paths,
        events,
        cancel,
        counters,
        side,
        Box::new(remote),
    );
    if let Some(Verify {
        how: How::Remote(h),
        ..
    }) = &verify
    {
        h.end();
    }
    if let Some(r) = verify.as_ref().and_then(|v| v.ranges.as_ref()) {
        r.hash.end();
    }
    let status = sftp.end();
    if let Some(opener) = joining {
        // (one that opens now is ended at once)
        if let Ok(Some(why)) = opener.join() {
            events(Event::notice(
                b"",
                format!("--streams {streams}: not every SFTP connection to {host} opened ({why}); went on with those that did"),
            ));
        }
    }
    let summary = result?;
    if status.is_some_and(|s| s.code() == Some(255)) && pushing {
        return Err(TransferError::Connection(format!(
            "ssh to {target} ended with exit 255 after the transfer"
        )));
    }
    let verified = match &verify {
        Some(
            v @ Verify {
                how: How::Remote(h),
                ..
            },
        ) => match v.reread_count() {
            0 => format!(
                "verified: {} on {host} for {} file(s)",
                h.hasher.name,
                v.count()
            ),
            // the command left some unanswered: those were read again
            reread => format!(
                "verified: {} on {host} for {} file(s), re-read over SFTP (the command gave no answer) for {reread}",
                h.hasher.name,
                v.count().saturating_sub(reread),
            ),
        },
        Some(v) => format!(
            "verified: re-read over SFTP (BLAKE3) for {} file(s)",
            v.count()
        ),
        None if pushing => "verified: size + SSH MAC only (SFTP: no remote hash)".to_string(),
        None => "verified: size + SSH MAC only (SFTP; --verify reread reads each file again)"
            .to_string(),
    };
    events(Event::notice(b"", verified));
    Ok(summary)
}

/// The bytes a large upload is hashed in on the remote ([`RANGE_BYTES`];
/// tests set it in MiB with `FERRY_TEST_SFTP_RANGE_MIB`, under
/// `FERRY_TEST_HOOKS=1`, to check ranges on small files).
fn range_bytes() -> u64 {
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() == Some("1") {
        if let Some(mib) = std::env::var("FERRY_TEST_SFTP_RANGE_MIB")
            .ok()
            .and_then(|m| m.parse::<u64>().ok())
            .filter(|m| *m > 0)
        {
            return mib << 20;
        }
    }
    RANGE_BYTES
}

/// Opens `n` more SFTP connections beside `first` on a thread of their
/// own (ssh in batch mode, as for ferry's own extra streams; at most 8
/// logging in at once, below sshd's `MaxStartups`): the transfer starts on
/// the first and takes each other one as it joins (a login costs about 11
/// round trips, more than a few small files take). The thread ends with why
/// one failed to open, if one did.
fn more_streams(
    first: &Sftp,
    n: usize,
    user: Option<&str>,
    host: &str,
    plan: &Plan,
) -> std::thread::JoinHandle<Option<String>> {
    let extra = child::SshOptions {
        extra: true,
        ..plan.ssh.clone()
    };
    let (first, user, host) = (first.clone(), user.map(str::to_string), host.to_string());
    std::thread::spawn(move || {
        let mut failed = None;
        let mut left = n;
        while left > 0 {
            let now = left.min(8);
            left -= now;
            let started: Vec<Option<String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..now)
                    .map(|_| {
                        s.spawn(|| {
                            let opened = child::sftp_command(user.as_deref(), &host, &extra)
                                .map_err(|e| std::io::Error::other(e.to_string()))
                                .and_then(|(cmd, _)| Sftp::start(cmd));
                            match opened {
                                Ok(s) => {
                                    first.add_stream(s);
                                    None
                                }
                                Err(e) => Some(crate::error::io_text(&e)),
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Some("panicked".into())))
                    .collect()
            });
            if let Some(why) = started.into_iter().flatten().next() {
                failed = Some(why);
            }
        }
        failed
    })
}

/// Whether commands may run on the remote, as far as the ferry attempt
/// told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exec {
    Yes,
    No,
    Unknown,
}

/// The remote hash command to check files with, probed once per host (as
/// rclone does: each of [`HASHERS`] hashes empty input, and must give the
/// known empty hash) and remembered: the cheapest that answers right, and
/// whether the remote has `bash` to run it in groups of 64 ([`Runner`]).
/// The probe is one fixed command line; each command's output follows a
/// line `=N` naming it (several print the same SHA-256).
fn remote_hash(
    plan: &Plan,
    user: Option<&str>,
    host: &str,
    exec: &Exec,
) -> Option<(Hasher, Runner)> {
    let key = format!("{}.hash", cache_key(&plan.ssh, user, host));
    let known = cache_dir()
        .map(|d| d.join(&key))
        .filter(|p| fresh(p))
        .and_then(|p| std::fs::read_to_string(p).ok());
    let found = match known {
        Some(k) => k,
        None if *exec == Exec::No => "none".to_string(),
        None => {
            let out = child::ssh_command(user, host, &plan.ssh)
                .ok()
                .and_then(|(mut c, _)| {
                    c.arg(probe_line())
                        .stdin(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .output()
                        .ok()
                });
            let text = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let found = probed(&text).map_or_else(|| "none".into(), |h| h.name.to_string());
            // (a second line: what runs the groups; a cache from before
            // it has none, and keeps `sh`)
            let found = if has_bash(&text) {
                found + "\nbash"
            } else {
                found
            };
            write_cache(&key, &found);
            found
        }
    };
    let mut lines = found.lines().map(str::trim);
    let name = lines.next().unwrap_or("none");
    let runner = if lines.any(|l| l == "bash") {
        Runner::Bash
    } else {
        Runner::Sh
    };
    HASHERS
        .iter()
        .copied()
        .find(|h| h.name == name)
        .map(|h| (h, runner))
}

/// The probe's command line: `echo =N; COMMAND </dev/null 2>/dev/null;` for
/// each of [`HASHERS`], then whether `bash` runs.
fn probe_line() -> String {
    let mut line = String::new();
    for (i, h) in HASHERS.iter().enumerate() {
        line.push_str(&format!(
            "echo ={i}; {} </dev/null 2>/dev/null; ",
            h.command
        ));
    }
    line.push_str("echo =bash; bash --version </dev/null 2>/dev/null; true");
    line
}

/// Whether the probe's `text` shows that `bash` ran: GNU bash's version
/// line right after the `=bash` line.
fn has_bash(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .any(|w| w[0] == "=bash" && w[1].starts_with("GNU bash, version "))
}

/// The first of [`HASHERS`] whose output in the probe's `text` starts with
/// the hash of no bytes.
fn probed(text: &str) -> Option<Hasher> {
    let mut answered = Vec::new();
    let mut now: Option<usize> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix('=') {
            // (`=bash` ends the hash commands' part)
            now = n.trim().parse().ok();
            continue;
        }
        let Some(h) = now.and_then(|i| HASHERS.get(i)) else {
            continue;
        };
        if line.split_whitespace().next() == Some(&h.kind.empty_hex()) {
            answered.push(now.expect("a command"));
        }
    }
    answered.into_iter().min().map(|i| HASHERS[i])
}

/// Where per-host transport decisions are kept.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join("ferry/transport")),
        None => Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/ferry/transport")),
    }
}

/// One file per way of reaching a host: the same name through another
/// `-e`, port or config may be another machine.
fn cache_key(s: &child::SshOptions, user: Option<&str>, host: &str) -> String {
    let id = format!(
        "{user:?}\0{host}\0{:?}\0{:?}\0{:?}\0{:?}",
        s.rsh, s.port, s.config, s.ssh_options
    );
    blake3::hash(id.as_bytes()).to_hex()[..32].to_string()
}

/// Whether a cache file was written less than a day ago.
fn fresh(path: &std::path::Path) -> bool {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_some_and(|a| a <= REMEMBERED_FOR)
}

/// With `--transport auto`: why SFTP was chosen for this way of reaching
/// `host` within the last day, said as [`recalled`] says it.
pub(super) fn remembered_for(
    ssh: &child::SshOptions,
    user: Option<&str>,
    host: &str,
) -> Option<String> {
    remembered(&cache_key(ssh, user, host)).map(|why| recalled(&why))
}

/// Remembers for a day that `host`, reached this way, needs SFTP.
pub(super) fn remember_for(ssh: &child::SshOptions, user: Option<&str>, host: &str, why: &str) {
    remember(&cache_key(ssh, user, host), why);
}

/// A remembered reason, told as one.
fn recalled(why: &str) -> String {
    format!(
        "{why} (remembered from an earlier run, for a day; --transport ferry tries ferry again)"
    )
}

fn remembered(key: &str) -> Option<String> {
    let path = cache_dir()?.join(key);
    if !fresh(&path) {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let why = text.strip_prefix("sftp\n")?.trim();
    (!why.is_empty()).then(|| why.to_string())
}

fn remember(key: &str, why: &str) {
    write_cache(key, &format!("sftp\n{why}\n"));
}

fn write_cache(key: &str, text: &str) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = cache_dir() else {
        return;
    };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_ok()
    {
        let _ = std::fs::write(dir.join(key), text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl`, `sha256sum` and `shasum` print the same empty hash: the
    /// `=N` lines tell them apart, and the cheapest that answered is taken.
    #[test]
    fn the_probe_takes_the_cheapest_command_that_answered_right() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let text = format!("=0\n=1\n=2\n{sha} *stdin\n=3\n{sha}  -\n=4\n{sha}  -\n");
        assert_eq!(probed(&text).unwrap().name, "openssl dgst -sha256");
        // no openssl: sha256sum
        let text = format!("=0\n=1\n=2\n=3\n{sha}  -\n=4\n{sha}  -\n");
        assert_eq!(probed(&text).unwrap().name, "sha256sum");
        // a command that prints a wrong hash is not taken
        let text = format!("=0\n{sha}  -\n=1\n=2\n=3\n=4\n{sha}  -\n");
        assert_eq!(probed(&text).unwrap().name, "shasum -a 256");
        assert!(probed("=0\n=1\n=2\n=3\n=4\n").is_none());
        assert!(probe_line().starts_with("echo =0; b3sum </dev/null 2>/dev/null; "));
    }

    /// bash's version line right after `=bash` says groups of 64 may run
    /// in it; anything else (no bash: nothing printed) keeps `sh`, and the
    /// line does not count as a hash command's output.
    #[test]
    fn the_probe_sees_whether_bash_runs() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let with = format!("=0\n=1\n=2\n=3\n{sha}  -\n=4\n=bash\nGNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n");
        assert!(has_bash(&with));
        assert_eq!(probed(&with).unwrap().name, "sha256sum");
        assert!(!has_bash(&format!("=0\n=1\n=2\n=3\n{sha}  -\n=4\n=bash\n")));
        assert!(!has_bash("=bash\nbash: command not found\n"));
        assert!(probe_line().ends_with("; echo =bash; bash --version </dev/null 2>/dev/null; true"));
        assert!(!probe_line().contains('\''));
    }
}
