//! A peer reached through a child process's stdin and stdout: `ssh host ferry
//! serve --stdio`, exactly as rsync runs `rsync --server` over ssh.
//!
//! # Security
//! The remote command line holds only the ferry program and `serve --stdio`;
//! every path travels inside the protocol, so no remote shell ever sees a file
//! name (no quoting bugs, no `$(...)` from a name).

use super::Stream;
use crate::error::TransferError;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// `ferry cp -v`: where the lines saying how the remote is reached go.
static DEBUG: std::sync::OnceLock<fn(std::fmt::Arguments)> = std::sync::OnceLock::new();

/// Turns on [`debug`] lines for this process (scp's `-v`): the ssh command
/// line, ssh's own `-v`, the daemon connection's steps, each handed to
/// `sink` (the CLI prints them on stderr).
pub fn set_debug(sink: fn(std::fmt::Arguments)) {
    let _ = DEBUG.set(sink);
}

/// Whether [`set_debug`] turned debug lines on.
pub fn verbose() -> bool {
    DEBUG.get().is_some()
}

/// A debug line, when [`set_debug`] turned them on.
pub fn debug(line: std::fmt::Arguments) {
    if let Some(sink) = DEBUG.get() {
        sink(line);
    }
}

/// How to reach a remote over ssh.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// The remote shell command (`-e`), split into words; default `ssh`.
    pub rsh: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<String>,
    /// Extra `-o` options for ssh.
    pub ssh_options: Vec<String>,
    pub config: Option<String>,
    /// Ask ssh to compress (scp `-C`).
    pub compress: bool,
    /// The ferry program on the remote.
    pub remote_ferry: Option<String>,
    /// An extra stream's connection: never prompt (`BatchMode`), and stay
    /// quiet if it fails (the transfer goes on without it and says so).
    pub extra: bool,
    /// Ferry's own protocol, SFTP, or ferry's falling back to SFTP where the
    /// remote cannot run it.
    pub transport: Transport,
    /// Remote to remote: through this host, never directly (scp `-3`).
    pub through_local: bool,
    /// How files moved over SFTP are checked beyond ssh's MAC.
    pub verify: VerifyMode,
}

/// How files moved over SFTP are checked beyond ssh's MAC (`--verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// Files are hashed on the remote (the cheapest of b3sum, xxh128sum,
    /// openssl dgst -sha256, sha256sum and shasum -a 256 it has) and
    /// compared before they are renamed into place, uploads and downloads,
    /// where the account may run commands; elsewhere size and ssh's MAC are
    /// all.
    #[default]
    Auto,
    /// Each file is read again over SFTP and its BLAKE3 compared before it
    /// is published (doubles the traffic; works on sftp-only accounts and
    /// for downloads).
    Reread,
}

/// How a transfer over ssh talks to the remote (`--transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// ferry's protocol (delta, resume); SFTP where the remote has no ferry.
    #[default]
    Auto,
    /// ferry's protocol only: `ferry serve --stdio` on the remote.
    Ferry,
    /// SFTP only (no delta): works with any OpenSSH server.
    Sftp,
}

/// A running child whose stdio is the stream.
pub struct ChildPeer {
    child: Child,
    what: String,
    /// What the child printed on stderr, when it is kept (to tell why it
    /// failed: ssh's own message, a missing ferry, an sftp-only account).
    stderr: Option<Arc<Mutex<Vec<u8>>>>,
    /// The `--remote-ferry PATH` the user named, for the message when it
    /// cannot be run (not "install it", but "that path is not there").
    remote_ferry: Option<String>,
}

/// How much of a child's stderr is kept.
const STDERR_KEPT: usize = 64 << 10;

/// Whether a line of ssh's stderr is one of its own `-v` lines (`debug1: …`,
/// `OpenSSH_9.6p1 …`), shown as it came under `cp -v`.
fn is_ssh_debug(line: &[u8]) -> bool {
    line.starts_with(b"debug") || line.starts_with(b"OpenSSH_")
}

/// How a child that carried a session ended.
pub struct Ended {
    /// The error its exit status means, as [`ChildPeer::finish`] gives it.
    pub error: Option<TransferError>,
    pub code: Option<i32>,
    /// Its stderr, when kept.
    pub stderr: String,
}

/// Splits a command line (`-e`/`--rsh`) into words as a POSIX shell does for
/// a simple command: single and double quotes, backslashes, `#` comments; no
/// expansion of any kind. The splitting is the `shell-words` crate's.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    shell_words::split(s).map_err(|e| format!("{e} in {s:?}"))
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// OpenSSH's default ciphers, AES-GCM first: with AES instructions it costs
/// ssh and sshd far less CPU than chacha20-poly1305 (2 GiB through one
/// connection here: 3.0 s against 5.3 s).
const AES_GCM_FIRST: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

/// Whether to ask ssh to prefer AES-GCM: only for OpenSSH's `ssh`, on a CPU with
/// AES instructions, and only when nobody chose ciphers already — not `-e`
/// (`-c`, `-o Ciphers=`), not `-o`, not the ssh config files (or `-F` file).
fn prefer_aes_gcm(program: &str, args: &[String], opts: &SshOptions) -> bool {
    if std::path::Path::new(program).file_name() != Some(std::ffi::OsStr::new("ssh")) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    let option = |o: &str| {
        let o = o.to_ascii_lowercase();
        o.starts_with("ciphers") || o.starts_with("-ociphers")
    };
    let chosen = args.iter().any(|a| a.starts_with("-c") || option(a))
        || opts.ssh_options.iter().any(|o| option(o));
    if !aes || chosen {
        return false;
    }
    let given = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("-F")? {
            "" => args.get(i + 1).cloned(),
            attached => Some(attached.to_string()),
        })
        .or_else(|| opts.config.clone());
    let configs: Vec<std::path::PathBuf> = match given {
        Some(f) => vec![f.into()],
        None => {
            let mut c = vec![std::path::PathBuf::from("/etc/ssh/ssh_config")];
            if let Some(home) = std::env::var_os("HOME") {
                c.push(std::path::Path::new(&home).join(".ssh/config"));
            }
            if let Ok(dir) = std::fs::read_dir("/etc/ssh/ssh_config.d") {
                c.extend(dir.flatten().map(|e| e.path()));
            }
            c
        }
    };
    !configs
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| text.lines().any(|l| option(l.trim_start())))
}

/// `ssh [ferry's options] -- [user@]host`, the remote command still to add;
/// and `[user@]host` for messages.
pub fn ssh_command(
    user: Option<&str>,
    host: &str,
    opts: &SshOptions,
) -> Result<(Command, String), TransferError> {
    ssh_command_with(user, host, opts, |_| {})
}

fn ssh_command_with(
    user: Option<&str>,
    host: &str,
    opts: &SshOptions,
    before_host: impl FnOnce(&mut Command),
) -> Result<(Command, String), TransferError> {
    let rsh = opts.rsh.as_deref().unwrap_or("ssh");
    let words = split_words(rsh).map_err(|e| TransferError::Usage(format!("-e: {e}")))?;
    let Some((program, args)) = words.split_first() else {
        return Err(TransferError::Usage(
            "-e: empty remote shell command".into(),
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    // scp -v passes -v on to ssh (only to ssh itself: another -e program
    // may not take it)
    if verbose() && !opts.extra && Path::new(program).file_name() == Some("ssh".as_ref()) {
        cmd.arg("-v");
    }
    if let Some(p) = opts.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(i) = &opts.identity {
        cmd.arg("-i").arg(i);
    }
    if let Some(f) = &opts.config {
        cmd.arg("-F").arg(f);
    }
    for o in &opts.ssh_options {
        cmd.arg("-o").arg(o);
    }
    if opts.compress {
        cmd.arg("-C");
    }
    if opts.extra {
        cmd.arg("-o").arg("BatchMode=yes");
        cmd.stderr(Stdio::null());
    }
    if prefer_aes_gcm(program, args, opts) {
        cmd.arg("-o").arg(format!("Ciphers={AES_GCM_FIRST}"));
    }
    let target = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    before_host(&mut cmd);
    // `--` keeps a host name starting with '-' from being read as an option
    cmd.arg("--").arg(&target);
    Ok((cmd, target))
}

/// The ssh that runs a remote's SFTP server, with the options sftp and scp
/// give it (`sftp.c`, `scp.c do_cmd`): no X11 or agent forwarding, no local
/// command, no port forwards, no remote command or tty, no master
/// connection of its own; then `-s -- HOST sftp`.
pub fn sftp_command(
    user: Option<&str>,
    host: &str,
    opts: &SshOptions,
) -> Result<(Command, String), TransferError> {
    let (mut cmd, target) = ssh_command_with(user, host, opts, |cmd| {
        for o in [
            "ForwardX11=no",
            "PermitLocalCommand=no",
            "ClearAllForwardings=yes",
            "RemoteCommand=none",
            "RequestTTY=no",
            "ControlMaster=no",
            "ForwardAgent=no",
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.arg("-s");
    })?;
    cmd.arg("sftp");
    Ok((cmd, target))
}

impl ChildPeer {
    /// Starts `ssh [options] [user@]host <remote ferry> serve --stdio`.
    pub fn ssh(
        user: Option<&str>,
        host: &str,
        opts: &SshOptions,
    ) -> Result<(ChildPeer, Stream), TransferError> {
        let (mut cmd, target) = ssh_command(user, host, opts)?;
        let remote = opts.remote_ferry.as_deref().unwrap_or("ferry");
        cmd.arg(format!("{} serve --stdio", shell_quote(remote)));
        let (mut peer, stream) = ChildPeer::spawn(cmd, format!("ssh to {target}"))?;
        peer.remote_ferry = opts.remote_ferry.clone();
        Ok((peer, stream))
    }

    /// Starts any command that speaks the protocol on its stdio.
    pub fn spawn(mut cmd: Command, what: String) -> Result<(ChildPeer, Stream), TransferError> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        if verbose() {
            let words: Vec<String> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|w| shell_quote(&w.to_string_lossy()))
                .collect();
            debug(format_args!(
                "Executing: program {} ({what})",
                words.join(" ")
            ));
        }
        let mut child = cmd.spawn().map_err(|e| TransferError::Connect {
            text: format!(
                "cannot start {} for {what}: {}",
                cmd.get_program().to_string_lossy(),
                crate::error::io_text(&e)
            ),
            why: crate::error::ConnectFailure::Other,
        })?;
        let (stdin, stdout) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
        );
        super::widen_pipe(&stdin);
        super::widen_pipe(&stdout);
        let stream = Stream {
            writer: Box::new(stdin),
            reader: Box::new(stdout),
            in_process: false,
        };
        Ok((
            ChildPeer {
                child,
                what,
                stderr: None,
                remote_ferry: None,
            },
            stream,
        ))
    }

    /// Like [`ChildPeer::ssh`], keeping what the child prints on stderr
    /// (for [`ChildPeer::finish_kept`]) instead of letting it through.
    pub fn ssh_kept(
        user: Option<&str>,
        host: &str,
        opts: &SshOptions,
    ) -> Result<(ChildPeer, Stream), TransferError> {
        let (mut cmd, target) = ssh_command(user, host, opts)?;
        let remote = opts.remote_ferry.as_deref().unwrap_or("ferry");
        cmd.arg(format!("{} serve --stdio", shell_quote(remote)));
        cmd.stderr(Stdio::piped());
        let (mut peer, stream) = ChildPeer::spawn(cmd, format!("ssh to {target}"))?;
        peer.remote_ferry = opts.remote_ferry.clone();
        if let Some(mut err) = peer.child.stderr.take() {
            let kept = Arc::new(Mutex::new(Vec::new()));
            let into = kept.clone();
            let _ = std::thread::Builder::new()
                .name("ferry-ssh-stderr".into())
                .spawn(move || {
                    // with -v, ssh's lines go to our stderr as ssh prints
                    // them (as scp -v shows them); its debug lines are
                    // not kept (they are not what it said about a failure)
                    let through = verbose();
                    let mut line = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = err.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut k = into.lock().unwrap_or_else(|p| p.into_inner());
                        if !through {
                            let room = STDERR_KEPT.saturating_sub(k.len()).min(n);
                            k.extend_from_slice(&buf[..room]);
                            continue;
                        }
                        let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
                        line.extend_from_slice(&buf[..n]);
                        while let Some(i) = line.iter().position(|&b| b == b'\n') {
                            let l: Vec<u8> = line.drain(..=i).collect();
                            if !is_ssh_debug(&l) && k.len() + l.len() <= STDERR_KEPT {
                                k.extend_from_slice(&l);
                            }
                        }
                    }
                    if !is_ssh_debug(&line) {
                        let mut k = into.lock().unwrap_or_else(|p| p.into_inner());
                        let room = STDERR_KEPT.saturating_sub(k.len()).min(line.len());
                        k.extend_from_slice(&line[..room]);
                    }
                });
            peer.stderr = Some(kept);
        }
        Ok((peer, stream))
    }

    /// Like [`ChildPeer::finish`], with the exit code and the stderr kept.
    pub fn finish_kept(mut self, session_failed: bool) -> Ended {
        let kept = self.stderr.take();
        let (error, code) = self.finish_code(session_failed);
        let stderr = match kept {
            Some(k) => {
                // the reader thread ends with the child: a moment for the last line
                for _ in 0..25 {
                    if Arc::strong_count(&k) == 1 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let k = k.lock().unwrap_or_else(|p| p.into_inner());
                String::from_utf8_lossy(&k).into_owned()
            }
            None => String::new(),
        };
        Ended {
            error,
            code,
            stderr,
        }
    }

    /// Waits for the child after the session; turns a failed start (ferry
    /// missing on the remote, ssh refused) into an error that says so.
    pub fn finish(mut self, session_failed: bool) -> Option<TransferError> {
        self.finish_code(session_failed).0
    }

    fn finish_code(&mut self, session_failed: bool) -> (Option<TransferError>, Option<i32>) {
        if session_failed {
            // give ssh a moment to report why the remote side went away
            for _ in 0..50 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let Ok(status) = self.child.wait() else {
            return (None, None);
        };
        let error = match status.code() {
            Some(0) | None => None,
            Some(127) => Some(TransferError::Connection(match &self.remote_ferry {
                Some(path) => format!(
                    "{}: --remote-ferry {path}: no such command on the remote (exit 127)",
                    self.what
                ),
                None => format!(
                    "{}: ferry was not found on the remote's PATH (exit 127); install it there or pass --remote-ferry PATH",
                    self.what
                ),
            })),
            Some(126) => Some(TransferError::Connection(format!(
                "{}: {} cannot be run on the remote (exit 126: not executable, or not a program)",
                self.what,
                match &self.remote_ferry {
                    Some(path) => format!("--remote-ferry {path}"),
                    None => "ferry".into(),
                }
            ))),
            Some(255) => Some(TransferError::Connection(format!(
                "{}: ssh failed (exit 255); see its message above",
                self.what
            ))),
            Some(c) if session_failed => Some(TransferError::Connection(format!(
                "{}: the remote side exited with status {c}",
                self.what
            ))),
            Some(_) => None,
        };
        (error, status.code())
    }
}

impl ChildPeer {
    /// Lets an extra stream's child finish after the transfer (its remote end
    /// exits when the transfer's process does), stopping it after a grace.
    pub fn end(mut self) {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ChildPeer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split_words("ssh -p 2222 -i '/k ey' -o \"A=b c\"").unwrap(),
            ["ssh", "-p", "2222", "-i", "/k ey", "-o", "A=b c"]
        );
        assert!(split_words("ssh 'x").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn words_split_as_a_posix_shell_splits_them() {
        // inside double quotes a backslash escapes only $ ` " \ and newline
        assert_eq!(
            split_words(r#"ssh -o "A=\$x \q" it\'s"#).unwrap(),
            ["ssh", "-o", "A=$x \\q", "it's"]
        );
        assert_eq!(split_words("ssh -v # a comment").unwrap(), ["ssh", "-v"]);
        assert_eq!(split_words("ssh \\\n -v").unwrap(), ["ssh", "-v"]);
        assert!(split_words("ssh \"x")
            .unwrap_err()
            .contains("missing closing quote"));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn aes_gcm_is_preferred_only_when_nobody_chose_ciphers() {
        let aes = std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        let dir = tempfile::tempdir().unwrap();
        let chosen = dir.path().join("chosen");
        std::fs::write(
            &chosen,
            "Host *\n    Ciphers chacha20-poly1305@openssh.com\n",
        )
        .unwrap();
        let words = |s: &str| split_words(s).unwrap();
        let none = SshOptions::default();
        let prefer = |cmd: &str, opts: &SshOptions| {
            let w = words(cmd);
            prefer_aes_gcm(&w[0], &w[1..], opts)
        };
        assert_eq!(prefer("ssh -F /dev/null -p 22", &none), aes);
        assert_eq!(
            prefer("/usr/bin/ssh -F/dev/null -C", &none),
            aes,
            "-C is compression"
        );
        assert!(!prefer("dbclient -F /dev/null", &none), "not OpenSSH");
        assert!(!prefer("ssh -F /dev/null -c aes256-ctr", &none));
        assert!(!prefer("ssh -F /dev/null -caes256-ctr", &none));
        assert!(!prefer("ssh -F /dev/null -o Ciphers=aes256-ctr", &none));
        assert!(!prefer("ssh -F /dev/null -oCiphers=aes256-ctr", &none));
        let with_o = SshOptions {
            ssh_options: vec!["ciphers=aes256-ctr".into()],
            ..SshOptions::default()
        };
        assert!(!prefer("ssh -F /dev/null", &with_o));
        assert!(!prefer(&format!("ssh -F {}", chosen.display()), &none));
        let with_f = SshOptions {
            config: Some(chosen.display().to_string()),
            ..SshOptions::default()
        };
        assert!(!prefer("ssh", &with_f), "the config file chose");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/ferry"), "/usr/bin/ferry");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
