//! `ferry keygen`, `ferry trust`, `ferry copy-id` and `ferry ls`: managing who
//! trusts whom, and looking at what a daemon offers.

use super::args::{CopyIdArgs, KeygenArgs, LsArgs, TrustCommand, TrustFile};
use super::exit;
use super::stdout::outln;
use crate::error::TransferError;
use crate::location::Location;
use crate::trust::authorized::AuthorizedKeys;
use crate::trust::key::{Identity, PublicKey};
use std::io::{Read, Write};
use std::path::PathBuf;

fn usage(e: impl std::fmt::Display) -> TransferError {
    TransferError::Usage(e.to_string())
}

pub fn keygen(a: KeygenArgs) -> Result<i32, TransferError> {
    let dir = crate::trust::config_dir(a.config_dir.as_deref());
    let path = a.file.unwrap_or_else(|| dir.join("id_ed25519"));
    let comment = a.comment.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{user}@{}", host.trim())
    });
    let id = Identity::generate(&comment);
    id.save(&path).map_err(usage)?;
    outln!("wrote {} and {}.pub", path.display(), path.display());
    outln!("fingerprint: {}", id.public.fingerprint());
    Ok(exit::OK)
}

fn keys_path(f: &TrustFile) -> PathBuf {
    f.authorized_keys.clone().unwrap_or_else(|| {
        crate::trust::config_dir(f.config_dir.as_deref()).join("authorized_keys")
    })
}

/// A key given as a file, a line, or `-` (standard input).
fn read_key_arg(key: &str) -> Result<String, TransferError> {
    if key == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| TransferError::local("stdin", &e))?;
        return Ok(s.trim().to_string());
    }
    if key.starts_with("ssh-") {
        return Ok(key.trim().to_string());
    }
    std::fs::read_to_string(key)
        .map(|s| s.trim().to_string())
        .map_err(|e| TransferError::local(key, &e))
}

pub fn trust(t: TrustCommand) -> Result<i32, TransferError> {
    match t {
        TrustCommand::Add { key, options, file } => {
            let path = keys_path(&file);
            let text = read_key_arg(&key)?;
            let first = text.lines().next().unwrap_or("");
            if first.starts_with("-----BEGIN ") && first.contains("PRIVATE KEY") {
                return Err(usage(format!(
                    "{key} is a private key: trust takes the public one (its .pub file, or `ssh-keygen -y -f {key}`); keep the private key to yourself"
                )));
            }
            let (public, comment) =
                PublicKey::parse_openssh(first).map_err(|e| usage(format!("{key}: {e}")))?;
            let line = match &options {
                Some(o) => format!("{o} {} {comment}", public.to_openssh()),
                None => format!("{} {comment}", public.to_openssh()),
            };
            // the options must parse before anything is written
            let (parsed, problems) = AuthorizedKeys::parse(&line);
            if let Some(p) = problems.first() {
                // (the key is refused, so no "line skipped" as when reading the file)
                let why = p.trim_start_matches("line 1: ");
                let why = why.strip_suffix("; line skipped").unwrap_or(why);
                return Err(usage(format!("--options: {why}; nothing was written")));
            }
            debug_assert_eq!(parsed.keys.len(), 1);
            let existing = std::fs::read_to_string(&path).unwrap_or_default();
            if AuthorizedKeys::parse(&existing)
                .0
                .keys
                .iter()
                .any(|k| k.key == public)
            {
                outln!(
                    "{} is already authorized in {}",
                    public.fingerprint(),
                    path.display()
                );
                return Ok(exit::OK);
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| TransferError::local(dir.display().to_string(), &e))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode_0600()
                .open(&path)
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?;
            let sep = if existing.is_empty() || existing.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            writeln!(f, "{sep}{}", line.trim_end())
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?;
            outln!("authorized {} in {}", public.fingerprint(), path.display());
            Ok(exit::OK)
        }
        TrustCommand::List { file } => {
            let path = keys_path(&file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?;
            let (keys, problems) = AuthorizedKeys::parse(&text);
            for k in &keys.keys {
                let opts = if k.options.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", k.options)
                };
                outln!("{} {}{opts}", k.key.fingerprint(), k.comment);
            }
            for p in problems {
                eprintln!("ferry: {}: {p}", path.display());
            }
            Ok(exit::OK)
        }
        TrustCommand::Remove { fingerprint, file } => {
            let path = keys_path(&file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?;
            let mut removed = 0;
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    let (keys, _) = AuthorizedKeys::parse(line);
                    let hit = keys
                        .keys
                        .first()
                        .is_some_and(|k| k.key.fingerprint() == fingerprint);
                    removed += hit as usize;
                    !hit
                })
                .collect();
            if removed == 0 {
                return Err(usage(format!("no key {fingerprint} in {}", path.display())));
            }
            // replace the file atomically
            let tmp = path.with_extension("ferry-tmp");
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            std::fs::write(&tmp, body)
                .map_err(|e| TransferError::local(tmp.display().to_string(), &e))?;
            if let Ok(m) = std::fs::metadata(&path) {
                let _ = std::fs::set_permissions(&tmp, m.permissions());
            }
            std::fs::rename(&tmp, &path)
                .map_err(|e| TransferError::local(path.display().to_string(), &e))?;
            outln!("removed {fingerprint} from {}", path.display());
            Ok(exit::OK)
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

pub fn copy_id(a: CopyIdArgs) -> Result<i32, TransferError> {
    super::mistakes::host_target("copy-id", &a.target, false)?;
    let dir = crate::trust::config_dir(a.config_dir.as_deref());
    let pub_path = match a.identity {
        Some(p) if p.extension().is_some_and(|e| e == "pub") => p,
        Some(p) => p.with_extension("pub"),
        None => dir.join("id_ed25519.pub"),
    };
    let line = std::fs::read_to_string(&pub_path).map_err(|e| {
        usage(format!(
            "{}: {} (create a key with `ferry keygen`)",
            pub_path.display(),
            crate::error::io_text(&e)
        ))
    })?;
    let (key, _) = PublicKey::parse_openssh(line.trim())
        .map_err(|e| usage(format!("{}: {e}", pub_path.display())))?;
    let (user, host) = match a.target.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, a.target.clone()),
    };
    let rsh = a.rsh.unwrap_or_else(|| "ssh".into());
    let mut words = crate::transport::child::split_words(&rsh).map_err(usage)?;
    if words.is_empty() {
        return Err(usage("-e: empty command"));
    }
    let program = words.remove(0);
    let target = match user {
        Some(u) => format!("{u}@{host}"),
        None => host,
    };
    let remote = a.remote_ferry.unwrap_or_else(|| "ferry".into());
    let mut child = std::process::Command::new(program)
        .args(words)
        .arg("--")
        .arg(&target)
        .arg(format!(
            "{} trust add -",
            crate::transport::child::shell_quote(&remote)
        ))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            TransferError::Connection(format!("cannot start ssh: {}", crate::error::io_text(&e)))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{}", line.trim());
    }
    let status = child.wait().map_err(|e| TransferError::local("ssh", &e))?;
    if !status.success() {
        let why = match status.code() {
            Some(127) => {
                "ferry was not found there: install it, or pass --remote-ferry PATH".into()
            }
            Some(255) => "ssh failed; see its message above".into(),
            code => format!("{}; see the message above", crate::error::exit_text(code)),
        };
        return Err(TransferError::Connect {
            text: format!("installing the key on {target} failed: {why}"),
            why: crate::error::ConnectFailure::Other,
        });
    }
    outln!(
        "{} can now reach the ferry daemon on {target}",
        key.fingerprint()
    );
    Ok(exit::OK)
}

fn mode_string(kind: crate::proto::Kind, mode: u32) -> String {
    let t = match kind {
        crate::proto::Kind::Dir => 'd',
        crate::proto::Kind::Symlink => 'l',
        crate::proto::Kind::File => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn ls(a: LsArgs) -> Result<i32, TransferError> {
    let loc = Location::parse(&a.target).map_err(usage)?;
    if let Location::S3 { bucket, prefix } = &loc {
        for e in crate::store::s3::list(bucket, prefix)? {
            if a.json {
                super::json::entry(&e);
                continue;
            }
            let name = crate::fs::names::escape(&e.name);
            let slash = if e.kind == crate::proto::Kind::Dir {
                "/"
            } else {
                ""
            };
            outln!(
                "{} {:>15} {} {name}{slash}",
                mode_string(e.kind, e.mode),
                e.size,
                super::long_listing::time(e.mtime, super::long_listing::now())
            );
        }
        return Ok(exit::OK);
    }
    if let Location::Local(path) = &loc {
        // a missing local path is this host's file error (exit 11), not a
        // connection's (the listing itself runs over a local child)
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        if let Err(e) = std::fs::symlink_metadata(p) {
            let shown = crate::fs::names::escape(path);
            let mut err = TransferError::local(shown.clone(), &e);
            // a bare word that is not here was likely meant as a host
            if let TransferError::Local { text, .. } = &mut err {
                if e.kind() == std::io::ErrorKind::NotFound && !path.contains(&b'/') {
                    text.push_str(&format!(
                        " (a host is written {shown}: for ssh, {shown}:: for a daemon)"
                    ));
                }
            }
            return Err(err);
        }
    }
    if matches!(loc, Location::Local(_) | Location::Ssh { .. }) {
        let ssh = crate::transport::child::SshOptions {
            rsh: a.rsh.clone(),
            remote_ferry: a.remote_ferry.clone(),
            transport: a.transport,
            ssh_options: a.daemon.ip.ssh_options(),
            ..Default::default()
        };
        let notice = |e: crate::proto::Event| {
            if a.json {
                return super::json::notice(&e);
            }
            eprintln!("ferry: {}", String::from_utf8_lossy(&e.text));
        };
        for e in crate::transfer::list_path(&loc, &ssh, &notice)? {
            print_entry(&e, a.json);
        }
        return Ok(exit::OK);
    }
    let Location::Daemon { host, port, path } = loc else {
        return Err(usage(
            "ferry ls takes a daemon address (host:: or host::module/path), s3://bucket/prefix, host:path or a local path",
        ));
    };
    let port = port.or(a.port);
    let opts = super::daemon_options(&a.daemon)?;
    let notice = |e: crate::proto::Event| {
        if a.json {
            return super::json::notice(&e);
        }
        eprintln!("ferry: {}", String::from_utf8_lossy(&e.text));
    };
    match crate::transfer::list_daemon(&host, port, &path, &opts, &notice)? {
        crate::transfer::Listing::Modules(list) => {
            for m in list {
                if a.json {
                    super::json::module(&m);
                    continue;
                }
                let ro = if m.read_only { " (read-only)" } else { "" };
                outln!("{:<20} {}{ro}", m.name, m.comment);
            }
        }
        crate::transfer::Listing::Entries(entries) => {
            for e in entries {
                print_entry(&e, a.json);
            }
        }
    }
    Ok(exit::OK)
}

/// One entry of `ferry ls` of a path (daemon, ssh or local), as a line.
fn print_entry(e: &crate::proto::Entry, json: bool) {
    if json {
        return super::json::entry(e);
    }
    let name = crate::fs::names::escape(&e.name);
    let target = if e.kind == crate::proto::Kind::Symlink {
        format!(" -> {}", crate::fs::names::escape(&e.target))
    } else {
        String::new()
    };
    outln!(
        "{} {:>15} {} {name}{target}",
        mode_string(e.kind, e.mode),
        e.size,
        super::long_listing::time(e.mtime, super::long_listing::now())
    );
}
