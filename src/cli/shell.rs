//! `ferry shell HOST`: an interactive session like OpenSSH's `sftp` (ls, cd,
//! lcd, pwd, lpwd, get, put, reget, reput, mkdir, rm, rmdir, rename, chmod,
//! df, progress, help), and its batch mode (`-b FILE`, `-b -`: stop at the
//! first failing command; a `-` prefix carries on after a failure, an `@`
//! prefix does not echo the command). Listings and small operations go over
//! an SFTP session; `get` and `put` run the same engine as `ferry cp` (with
//! ferry's delta and resume where the remote runs ferry, SFTP otherwise).
//!
//! At a terminal the prompt completes command names and local and remote
//! paths ([`complete`]), keeps its history between sessions (mode 0600), and
//! Ctrl-C cancels a running `get` or `put` ([`interrupt`]), keeping the
//! partial file for `reget`/`reput`. Piped input and `-b` get no prompt, no
//! escape codes and no progress bars.
//!
//! `ferry shell host::module` (or `ferry://host[:port]/module`) runs the
//! same commands on a ferry daemon module, over the daemon's TLS connection
//! and key trust ([`daemon`]): paths are the module's (`/` is its root),
//! nothing reaches outside it, and `get`/`put` are `ferry cp` to the module,
//! delta included. The commands see only the [`remote::Remote`] trait.
//!
//! Not for the protocol (that is `sftp` and `proto::shell`) nor for
//! transfers (`transfer`). Not yet: globs.

mod complete;
mod daemon;
mod interrupt;
mod remote;

use super::args::ShellArgs;
use super::stdout::outln;
use crate::error::TransferError;
use crate::fs::names::escape;
use crate::location::Location;
use crate::proto::shell::Kind;
use crate::proto::Options;
use crate::sftp::destination::join_path;
use crate::sftp::Sftp;
use crate::transfer::Plan;
use crate::transport::child::{sftp_command, SshOptions};
use crate::transport::daemon::DaemonOptions;
use remote::Remote;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// What one command line asks for, split into words (quotes and
/// backslashes as in a POSIX shell, as sftp takes them).
#[derive(Debug, PartialEq, Eq)]
struct Line {
    /// `-`: a failure does not end a batch.
    keep_going: bool,
    /// `@`: not echoed in batch mode.
    quiet: bool,
    words: Vec<String>,
}

fn parse(line: &str) -> Result<Option<Line>, String> {
    let mut rest = line.trim();
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (mut keep_going, mut quiet) = (false, false);
    loop {
        if let Some(r) = rest.strip_prefix('-') {
            keep_going = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('@') {
            quiet = true;
            rest = r;
        } else {
            break;
        }
    }
    let words = shell_words::split(rest).map_err(|e| format!("{e}"))?;
    if words.is_empty() {
        return Ok(None);
    }
    Ok(Some(Line {
        keep_going,
        quiet,
        words,
    }))
}

/// Splits `-r -p -a`-style flags off the front of a command's arguments.
fn flags<'a>(args: &'a [String], allowed: &str) -> Result<(String, &'a [String]), String> {
    let mut set = String::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let Some(f) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        if a == "--" {
            i += 1;
            break;
        }
        for c in f.chars() {
            if !allowed.contains(c) {
                return Err(format!("unknown option -{c}"));
            }
            set.push(c);
        }
        i += 1;
    }
    Ok((set, &args[i..]))
}

struct Shell {
    remote: Arc<dyn Remote>,
    /// How `get` and `put` reach the far side (the one the session uses).
    ssh: SshOptions,
    daemon: DaemonOptions,
    /// The remote working directory, absolute.
    cwd: Vec<u8>,
    progress: bool,
    /// Remote listings for completion (and its copy of `cwd`).
    names: complete::RemoteNames,
    /// At a terminal: Ctrl-C cancels a transfer.
    interactive: bool,
}

const HELP: &str = "\
Available commands:
cd path                        Change remote directory to 'path'
chmod mode path                Change permissions of file 'path' to 'mode'
df [-hi] [path]                Display statistics for current directory or filesystem containing 'path' (-i: inodes)
exit, quit, bye                Quit ferry shell
get [-p -r] remote [local]     Download file (with ferry cp's engine)
help, ?                        Display this help text
lcd path                       Change local directory to 'path'
lpwd                           Print local working directory
ls [-1al] [path]               Display remote directory listing (-a: also dot files)
mkdir path                     Create remote directory
progress                       Toggle display of progress meter
put [-p -r] local [remote]     Upload file (with ferry cp's engine)
pwd                            Display remote working directory
reget [-p -r] remote [local]   Resume download of file
rename oldpath newpath         Rename remote file
reput [-p -r] local [remote]   Resume upload of file
rm path                        Delete remote file
rmdir path                     Remove remote directory";

impl Shell {
    fn remote(&self, path: &str) -> Vec<u8> {
        let p = crate::sftp::remote_path(path.as_bytes());
        if p.starts_with(b"/") {
            p
        } else {
            join_path(&self.cwd, &p)
        }
    }

    fn io(&self, what: &str, path: &[u8], e: std::io::Error) -> String {
        format!("{what} \"{}\": {}", escape(path), crate::error::io_text(&e))
    }

    /// Runs one command; `Ok(false)` ends the session.
    fn run(&mut self, words: &[String]) -> Result<bool, String> {
        let (cmd, args) = words.split_first().expect("a word");
        let need = |n: usize| {
            if args.len() < n {
                Err(format!("{cmd}: missing argument"))
            } else {
                Ok(())
            }
        };
        match cmd.as_str() {
            "exit" | "quit" | "bye" => return Ok(false),
            "help" | "?" => outln!("{HELP}"),
            "pwd" => outln!("Remote working directory: {}", escape(&self.cwd)),
            "lpwd" => {
                let d = std::env::current_dir().map_err(|e| e.to_string())?;
                outln!("Local working directory: {}", d.display());
            }
            "lcd" => {
                need(1)?;
                std::env::set_current_dir(&args[0]).map_err(|e| format!("lcd {}: {e}", args[0]))?;
            }
            "cd" => {
                let to = match args.first() {
                    Some(p) => self.remote(p),
                    None => b".".to_vec(),
                };
                let real = self
                    .remote
                    .realpath(&to)
                    .map_err(|e| self.io("cd", &to, e))?;
                let a = self.remote.stat(&real).map_err(|e| self.io("cd", &to, e))?;
                if a.kind != Kind::Dir {
                    return Err(format!("cd \"{}\": not a directory", escape(&to)));
                }
                *self.names.cwd.lock().unwrap_or_else(|p| p.into_inner()) = real.clone();
                self.cwd = real;
            }
            "ls" | "dir" => {
                let (f, rest) = flags(args, "1al")?;
                let dir = rest
                    .first()
                    .map(|p| self.remote(p))
                    .unwrap_or(self.cwd.clone());
                // `ls FILE` lists the file, named as given (as sftp does)
                let file = match rest.first() {
                    Some(given) => match self.remote.stat(&dir) {
                        Ok(a) if a.kind != Kind::Dir => Some((given.as_bytes().to_vec(), a)),
                        _ => None,
                    },
                    None => None,
                };
                // a file named outright is shown even if its name starts with '.'
                let single = file.is_some();
                let mut list = match file {
                    Some(one) => vec![one],
                    None => self
                        .remote
                        .read_dir(&dir)
                        .map_err(|e| self.io("ls", &dir, e))?,
                };
                list.sort_by(|a, b| a.0.cmp(&b.0));
                let now = super::long_listing::now();
                for (name, a) in list {
                    if name.starts_with(b".") && !f.contains('a') && !single {
                        continue;
                    }
                    if f.contains('l') {
                        // as sftp's `ls -l` (ls_file): mode, owner and
                        // group ids (a daemon keeps them to itself), size,
                        // date, name
                        let (uid, gid) = match a.owner {
                            Some((u, g)) => (u.to_string(), g.to_string()),
                            None => ("-".into(), "-".into()),
                        };
                        outln!(
                            "{} {uid:<8} {gid:<8} {:>8} {} {}",
                            remote::mode_text(a.kind, a.mode),
                            a.size,
                            super::long_listing::time(a.mtime, now),
                            escape(&name)
                        );
                    } else {
                        outln!("{}", escape(&name));
                    }
                }
            }
            "mkdir" => {
                need(1)?;
                let p = self.remote(&args[0]);
                self.remote.mkdir(&p).map_err(|e| self.io("mkdir", &p, e))?;
            }
            "rmdir" => {
                need(1)?;
                let p = self.remote(&args[0]);
                self.remote.rmdir(&p).map_err(|e| self.io("rmdir", &p, e))?;
            }
            "rm" => {
                need(1)?;
                for a in args {
                    let p = self.remote(a);
                    self.remote.remove(&p).map_err(|e| self.io("rm", &p, e))?;
                }
            }
            "rename" => {
                need(2)?;
                let (from, to) = (self.remote(&args[0]), self.remote(&args[1]));
                self.remote
                    .rename(&from, &to)
                    .map_err(|e| self.io("rename", &from, e))?;
            }
            "chmod" => {
                need(2)?;
                let mode = u32::from_str_radix(&args[0], 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("chmod: invalid mode {:?}", args[0]))?;
                for a in &args[1..] {
                    let p = self.remote(a);
                    self.remote
                        .chmod(&p, mode)
                        .map_err(|e| self.io("chmod", &p, e))?;
                }
            }
            "df" => {
                let (f, rest) = flags(args, "hi")?;
                let p = rest
                    .first()
                    .map(|p| self.remote(p))
                    .unwrap_or(self.cwd.clone());
                let s = self.remote.statvfs(&p).map_err(|e| self.io("df", &p, e))?;
                // laid out as sftp's do_df
                let bytes = |blocks: u64| blocks.saturating_mul(s.frsize);
                let cap = super::long_listing::capacity;
                if f.contains('i') {
                    let used = s.files.saturating_sub(s.ffree);
                    outln!("     Inodes        Used       Avail      (root)    %Capacity");
                    outln!(
                        "{:>11} {used:>11} {:>11} {:>11}         {:>3}%",
                        s.files,
                        s.ffree,
                        s.ffree,
                        cap(used, s.files)
                    );
                } else if f.contains('h') {
                    let h = super::long_listing::human;
                    let (size, free, avail) = (bytes(s.blocks), bytes(s.bfree), bytes(s.bavail));
                    let used = size.saturating_sub(free);
                    outln!("    Size     Used    Avail   (root)    %Capacity");
                    outln!(
                        "{:>8} {:>8} {:>8} {:>8}         {:>3}%",
                        h(size),
                        h(used),
                        h(avail),
                        h(free),
                        cap(used, size)
                    );
                } else {
                    let k = |b: u64| bytes(b) / 1024;
                    let (size, free, avail) = (k(s.blocks), k(s.bfree), k(s.bavail));
                    let used = size.saturating_sub(free);
                    outln!("        Size         Used        Avail       (root)    %Capacity");
                    outln!(
                        "{size:>12} {used:>12} {avail:>12} {free:>12}         {:>3}%",
                        cap(used, size)
                    );
                }
            }
            "progress" => {
                self.progress = !self.progress;
                outln!(
                    "Progress meter {}",
                    if self.progress { "enabled" } else { "disabled" }
                );
            }
            "get" | "reget" | "put" | "reput" => {
                let (f, rest) = flags(args, "aprPR")?;
                need(1).and_then(|_| {
                    if rest.is_empty() {
                        Err(format!("{cmd}: missing argument"))
                    } else {
                        Ok(())
                    }
                })?;
                let recursive = f.contains('r') || f.contains('R');
                let preserve = f.contains('p') || f.contains('P');
                if !recursive {
                    self.refuse_dir(cmd, &rest[0])?;
                }
                let at = |p: Vec<u8>| self.remote.location(&p).map_err(|e| self.io(cmd, &p, e));
                let (source, dest) = if cmd.ends_with("get") {
                    let local = rest.get(1).cloned().unwrap_or_else(|| ".".into());
                    (
                        at(self.remote(&rest[0]))?,
                        Location::Local(local.into_bytes()),
                    )
                } else {
                    let to = rest.get(1).map(String::as_str).unwrap_or("");
                    let to = if to.is_empty() {
                        let mut c = self.cwd.clone();
                        if !c.ends_with(b"/") {
                            c.push(b'/');
                        }
                        at(c)?
                    } else {
                        at(self.remote(to))?
                    };
                    (Location::Local(rest[0].clone().into_bytes()), to)
                };
                self.transfer(source, dest, recursive, preserve)?;
            }
            other => return Err(format!("Invalid command \"{other}\".")),
        }
        Ok(true)
    }

    /// Without `-r` a directory is refused as sftp refuses it, in its
    /// words: one line, and the command fails (a batch stops, `-get` goes
    /// on). The transfer would skip it with a notice and succeed.
    fn refuse_dir(&self, cmd: &str, given: &str) -> Result<(), String> {
        if cmd.ends_with("get") {
            let p = self.remote(given);
            if matches!(self.remote.stat(&p), Ok(st) if st.kind == Kind::Dir) {
                let p = p.strip_suffix(b"/").unwrap_or(&p);
                return Err(format!("download {}/: not a regular file", escape(p)));
            }
        } else if std::path::Path::new(given).is_dir() {
            let p = given.strip_suffix('/').unwrap_or(given);
            return Err(format!(
                "local \"{}/\" is not a regular file",
                escape(p.as_bytes())
            ));
        }
        Ok(())
    }

    fn transfer(
        &self,
        source: Location,
        dest: Location,
        recursive: bool,
        preserve: bool,
    ) -> Result<(), String> {
        let plan = Plan {
            confine: Default::default(),
            sources: vec![source],
            dest,
            options: Options {
                recursive,
                follow_links: true,
                perms: preserve,
                times: preserve,
                partial: true,
                cp_mode: true,
                file_events: self.progress,
                streams: 1,
                ..Default::default()
            },
            ssh: self.ssh.clone(),
            daemon: self.daemon.clone(),
        };
        let printer = super::output::Printer::new(0, !self.progress, self.progress, false, false);
        let cancel = crate::session::Cancel::default();
        let watch = self
            .interactive
            .then(|| interrupt::watch(cancel.clone()))
            .flatten();
        let result = crate::transfer::run(&plan, &|e| printer.event(e), &cancel);
        drop(watch);
        match result {
            Ok(outcome) => {
                printer.finish(&outcome, false);
                match outcome.summary.errors {
                    0 => Ok(()),
                    // each error was printed as it came: sftp says one
                    // line, and the command still fails (a batch stops)
                    _ => Err(String::new()),
                }
            }
            Err(TransferError::Cancelled) => {
                Err("cancelled: the partial file is kept (reget/reput resume it)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Runs `ferry shell`.
pub fn run(a: ShellArgs) -> Result<i32, TransferError> {
    super::mistakes::host_target("shell", &a.host, true)?;
    let daemon_target = a.host.starts_with("ferry://") || a.host.contains("::");
    let ssh = SshOptions {
        rsh: a.rsh.clone(),
        port: a.port,
        identity: a.identity.clone(),
        ssh_options: [
            a.ssh_option.clone(),
            a.jump.iter().map(|j| format!("ProxyJump={j}")).collect(),
            a.ip.ssh_options(),
        ]
        .concat(),
        config: a.ssh_config.clone(),
        remote_ferry: a.remote_ferry.clone(),
        transport: a.transport,
        verify: a.verify,
        ..Default::default()
    };
    let daemon = super::daemon_options(&super::args::DaemonFlags {
        identity: a.identity.clone().map(Into::into),
        known_hosts: a.known_hosts.clone(),
        host_key_check: a.host_key_check.clone(),
        config_dir: a.config_dir.clone(),
        retry: super::args::RetryFlags {
            timeout: a.timeout,
            ..Default::default()
        },
        ip: a.ip,
    })?;
    let (remote, cwd): (Arc<dyn Remote>, Vec<u8>) = if daemon_target {
        let Ok(Location::Daemon { host, port, path }) =
            Location::parse(std::ffi::OsStr::new(&a.host))
        else {
            return Err(TransferError::Usage(format!(
                "{:?}: not a daemon module (host::module or ferry://host[:port]/module)",
                a.host
            )));
        };
        let port = port.or(a.daemon_port);
        let (r, cwd) =
            daemon::DaemonRemote::open(&host, port, &path, &daemon, &|n| eprintln!("ferry: {n}"))?;
        (Arc::new(r), cwd)
    } else {
        open_ssh(&a.host, &ssh)?
    };
    // as sftp (`sftp host:/nonexist` says the file is not found and exits 1),
    // the session starts only in a directory that is there
    let start = remote.stat(&cwd).map(|st| st.kind);
    if !matches!(start, Ok(Kind::Dir)) {
        remote.end();
        let why = match start {
            Err(e) => crate::error::io_text(&e),
            Ok(_) => "not a directory".into(),
        };
        return Err(TransferError::Usage(format!(
            "{}: cannot start in {}: {why}",
            a.host,
            escape(&cwd)
        )));
    }
    let batch = a.batch.is_some();
    let interactive = !batch && std::io::stdin().is_terminal();
    let mut shell = Shell {
        names: complete::RemoteNames::new(remote.clone(), cwd.clone()),
        remote,
        ssh,
        daemon,
        cwd,
        progress: !batch && std::io::stdout().is_terminal(),
        interactive,
    };
    let code = match a.batch {
        Some(file) => {
            let input: Box<dyn BufRead> = if file.as_os_str().as_bytes() == b"-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&file)
                    .map_err(|e| TransferError::local(file.display().to_string(), &e))?;
                Box::new(std::io::BufReader::new(f))
            };
            run_batch(&mut shell, input, true)
        }
        None if interactive => run_interactive(&mut shell),
        // piped commands: like a batch without the echo
        None => run_batch(&mut shell, Box::new(std::io::stdin().lock()), false),
    };
    shell.remote.end();
    Ok(code)
}

/// `[user@]host[:directory]` over ssh: an SFTP session, and where it starts.
fn open_ssh(target: &str, ssh: &SshOptions) -> Result<(Arc<dyn Remote>, Vec<u8>), TransferError> {
    let (user, rest) = match target.split_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, target.to_string()),
    };
    let (host, start) = match rest.split_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (rest, String::new()),
    };
    if host.is_empty() {
        return Err(TransferError::Usage(format!(
            "{target:?}: missing host name"
        )));
    }
    let (cmd, shown) = sftp_command(user.as_deref(), &host, ssh)?;
    // nothing was connected yet: not "connection lost"
    let sftp = Sftp::start(cmd).map_err(|e| TransferError::Connect {
        text: format!(
            "ssh to {shown}: {}; see ssh's message above, and run `ferry doctor {shown}:` to see why",
            crate::error::io_text(&e)
        ),
        why: crate::error::ConnectFailure::Other,
    })?;
    let cwd = sftp
        .realpath(&crate::sftp::remote_path(start.as_bytes()))
        .map_err(|e| TransferError::Remote(format!("{shown}: {}", crate::error::io_text(&e))))?;
    Ok((Arc::new(remote::SftpRemote { sftp, user, host }), cwd))
}

/// Prints a failed command's message (none when its errors were printed
/// as they came).
fn say(e: &str) {
    if !e.is_empty() {
        eprintln!("{e}");
    }
}

/// Reads commands from `input`; the first failure without a `-` ends it with
/// exit 1, as sftp's batch mode does.
fn run_batch(shell: &mut Shell, input: Box<dyn BufRead + '_>, echo: bool) -> i32 {
    for line in input.lines() {
        let Ok(line) = line else {
            return 1;
        };
        let parsed = parse(&line);
        // echoed as written, blank and comment lines and the `-` too: the
        // same transcript as sftp's, under ferry's prompt (an `@` line is
        // quiet even if it does not parse)
        let quiet = line.trim_start().trim_start_matches('-').starts_with('@');
        if echo && !quiet {
            outln!("ferry> {line}");
            let _ = std::io::stdout().flush();
        }
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("ferry shell: {e}");
                return 1;
            }
        };
        let r = shell.run(&parsed.words);
        shell.names.forget();
        match r {
            Ok(true) => {}
            Ok(false) => return 0,
            Err(e) => {
                say(&e);
                if !parsed.keep_going {
                    return 1;
                }
            }
        }
    }
    0
}

fn run_interactive(shell: &mut Shell) -> i32 {
    let config = rustyline::Config::builder()
        .completion_type(rustyline::CompletionType::List)
        .auto_add_history(false)
        .build();
    let mut editor: rustyline::Editor<complete::ShellHelper, rustyline::history::DefaultHistory> =
        match rustyline::Editor::with_config(config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("ferry shell: {e}");
                return 1;
            }
        };
    editor.set_helper(Some(complete::ShellHelper::new(shell.names.clone())));
    let history = history_file();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        match editor.readline("ferry> ") {
            Ok(line) => {
                let parsed = match parse(&line) {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(e) => {
                        eprintln!("{e}");
                        continue;
                    }
                };
                let _ = editor.add_history_entry(line.as_str());
                let r = shell.run(&parsed.words);
                shell.names.forget();
                match r {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => say(&e),
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        save_history(&mut editor, h);
    }
    0
}

/// Writes the history file, made with mode 0600 before anything is in it
/// (the commands typed may name private paths).
fn save_history<H: rustyline::Helper>(
    editor: &mut rustyline::Editor<H, rustyline::history::DefaultHistory>,
    path: &std::path::Path,
) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
    if made.is_ok() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        if let Err(e) = editor.save_history(path) {
            eprintln!(
                "ferry shell: cannot save history to {}: {e}",
                path.display()
            );
        }
    }
}

/// `$XDG_STATE_HOME/ferry/shell_history`, else `~/.local/state/ferry/…`.
fn history_file() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("ferry/shell_history"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_prefixes_and_quoting() {
        let l = parse("-@put -p 'a b' c\\ d").unwrap().unwrap();
        assert!(l.keep_going && l.quiet);
        assert_eq!(l.words, ["put", "-p", "a b", "c d"]);
        assert_eq!(parse("  # comment").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert!(parse("ls 'unclosed").is_err());
    }

    #[test]
    fn flags_stop_at_the_first_operand() {
        let words: Vec<String> = ["-rp", "-x", "f"].iter().map(|s| s.to_string()).collect();
        assert!(flags(&words, "rp").is_err());
        let words: Vec<String> = ["-rp", "--", "-f"].iter().map(|s| s.to_string()).collect();
        let (f, rest) = flags(&words, "rp").unwrap();
        assert_eq!(f, "rp");
        assert_eq!(rest, ["-f"]);
    }
}
