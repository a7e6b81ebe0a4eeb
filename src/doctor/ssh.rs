//! The ssh side of `ferry doctor`: the effective ssh configuration
//! (`ssh -G`), where `ssh -v` stops, whether ferry runs on the remote, and,
//! once ssh logs in, the server-side view: what listens on the daemon port
//! and on which address (`/proc/net/tcp{,6}` read over ssh), and the
//! remote clock. That view is the only way to tell "bound to 127.0.0.1",
//! "not running" and "a firewall rejects" apart, since all three are an
//! instant refusal from outside. Every ssh run is bounded; none may prompt.

use super::{limits, Check, Options, Status};
use std::io::Read;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

/// The ssh command and its own arguments (`-e`), as words.
pub(super) fn ssh_words(opts: &Options) -> Vec<String> {
    opts.rsh
        .as_deref()
        .and_then(|r| shell_words::split(r).ok())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| vec!["ssh".to_string()])
}

pub(super) fn destination(host: &str, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    }
}

/// What a bounded child run gave.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    /// When the last bytes of stdout arrived.
    last_out: Option<(Instant, SystemTime)>,
    timed_out: bool,
}

/// Runs `words` + `args` with no stdin, killed after `limit`.
fn run_bounded(
    words: &[String],
    args: &[String],
    limit: std::time::Duration,
) -> Result<Ran, String> {
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {}", words[0], crate::error::io_text(&e)))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut last = None;
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            last = Some((Instant::now(), SystemTime::now()));
            all.extend_from_slice(&buf[..n]);
            if all.len() > 4 << 20 {
                break;
            }
        }
        (all, last)
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = (&mut err).take(1 << 20).read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                timed_out = true;
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let (stdout, last_out) = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(Ran {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout,
        stderr,
        last_out,
        timed_out,
    })
}

pub(super) fn batch_args() -> Vec<String> {
    vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", limits::SSH_CONNECT_SECS),
    ]
}

/// The effective ssh settings for a host.
pub struct Effective {
    pub check: Check,
    pub hostname: String,
    pub port: u16,
    pub jump: Option<String>,
}

/// `ssh -G`: the host name, port, user and ProxyJump ssh will use.
pub fn effective(host: &str, user: Option<&str>, opts: &Options) -> Effective {
    let t = Instant::now();
    let c = Check::new("ssh_config", "ssh config");
    let words = ssh_words(opts);
    let ran = run_bounded(&words, &["-G".into(), destination(host, user)], limits::SSH);
    let mut e = Effective {
        check: c.clone(),
        hostname: host.to_string(),
        port: 22,
        jump: None,
    };
    let ran = match ran {
        Ok(r) if r.code == Some(0) => r,
        Ok(r) => {
            e.check = c
                .set(
                    Status::Warn,
                    "ssh_config",
                    format!("`ssh -G` failed: {}", r.stderr.trim()),
                )
                .took(t);
            return e;
        }
        Err(why) => {
            e.check = c
                .set(Status::Fail, "no_ssh", why)
                .fix("install the OpenSSH client (`apt-get install openssh-client`)")
                .took(t);
            return e;
        }
    };
    let text = String::from_utf8_lossy(&ran.stdout);
    let mut login = String::new();
    let mut proxy_command = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        match k {
            "hostname" => e.hostname = v.to_string(),
            "port" => e.port = v.parse().unwrap_or(22),
            "user" => login = v.to_string(),
            "proxyjump" if v != "none" => e.jump = Some(v.to_string()),
            "proxycommand" if v != "none" => proxy_command = Some(v.to_string()),
            _ => {}
        }
    }
    let mut summary = format!("{login}@{}:{}", e.hostname, e.port);
    if let Some(j) = &e.jump {
        summary.push_str(&format!(" via ProxyJump {j}"));
    }
    if let Some(p) = &proxy_command {
        summary.push_str(&format!(" via ProxyCommand {p}"));
        e.jump.get_or_insert_with(|| format!("ProxyCommand {p}"));
    }
    if e.hostname != host {
        e.check = c.ev(format!("{host} is an alias: HostName {}", e.hostname));
    } else {
        e.check = c;
    }
    e.check = e.check.clone().ok(summary).took(t);
    e
}

/// Stages `ssh -v` reports, in order, and what each means.
const STAGES: [(&str, &str); 11] = [
    ("Connecting to", "connecting"),
    ("Connection established", "connected"),
    ("Remote protocol version", "SSH banner received"),
    ("kex: algorithm", "key exchange"),
    ("Server host key", "host key received"),
    ("is known and matches", "host key verified"),
    (
        "Authentications that can continue",
        "authentication offered",
    ),
    ("Offering public key", "key offered"),
    ("Server accepts key", "key accepted"),
    ("Authenticated to", "authenticated"),
    ("Exit status", "command ran"),
];

/// `ssh -v -o BatchMode=yes HOST true`, and where it stopped.
pub fn stages(host: &str, user: Option<&str>, opts: &Options) -> Check {
    let t = Instant::now();
    let c = Check::new("ssh", "ssh");
    let dest = destination(host, user);
    let mut args = vec!["-v".to_string()];
    args.extend(batch_args());
    args.extend([dest.clone(), "true".into()]);
    let ran = match run_bounded(&ssh_words(opts), &args, limits::SSH) {
        Ok(r) => r,
        Err(why) => return c.set(Status::Fail, "no_ssh", why).took(t),
    };
    let reached = STAGES
        .iter()
        .rev()
        .find(|(needle, _)| ran.stderr.contains(needle))
        .map(|(_, stage)| *stage)
        .unwrap_or("nothing");
    if ran.code == Some(0) {
        return c.ok(format!("{dest}: logged in and ran a command")).took(t);
    }
    if ran.stderr.contains("Authenticated to") && !ran.timed_out {
        // logged in: what the account runs is the next check's business
        return c
            .ok(format!(
                "{dest}: logged in (`true` exited {})",
                ran.code.map_or("by a signal".into(), |c| c.to_string())
            ))
            .took(t);
    }
    let last_error = ran
        .stderr
        .lines()
        .rfind(|l| !l.starts_with("debug") && !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    let has = |s: &str| ran.stderr.contains(s);
    let (class, summary, fix): (&str, String, String) = if ran.timed_out {
        (
            "ssh_timeout",
            format!(
                "ssh gave no result in {} s (stopped at: {reached})",
                limits::SSH.as_secs()
            ),
            "check the network path to the ssh port, or whether sshd is overloaded".into(),
        )
    } else if has("Could not resolve hostname") {
        (
            "ssh_resolve",
            format!("ssh cannot resolve {host}"),
            "check the name, or set `HostName` in ~/.ssh/config".into(),
        )
    } else if has("Connection refused") {
        (
            "ssh_refused",
            "ssh's connection was refused".into(),
            "start sshd on the host, or check `Port` in ~/.ssh/config".into(),
        )
    } else if has("timed out") {
        (
            "ssh_timeout",
            "ssh's connection timed out".into(),
            "a firewall drops the ssh port, or the host is down".into(),
        )
    } else if has("No route to host") || has("Network is unreachable") {
        (
            "ssh_unreachable",
            last_error.clone(),
            "check the route and firewall to the host".into(),
        )
    } else if has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        ("ssh_host_key_changed", "WARNING: the ssh host key of this host HAS CHANGED".into(), "confirm the new key with the host's administrator, then `ssh-keygen -R HOST` as ssh says".into())
    } else if has("Host key verification failed") || has("host key is known") {
        ("ssh_host_key_unknown", "ssh does not know this host's key and may not ask (BatchMode)".into(), format!("check the key's fingerprint with the administrator, then `ssh {dest} true` once at a terminal to record it"))
    } else if has("Too many authentication failures") {
        (
            "ssh_too_many_keys",
            "the server stopped after too many keys were offered".into(),
            "pick the key: `-e 'ssh -i KEY -o IdentitiesOnly=yes'`".into(),
        )
    } else if has("Permission denied") {
        ("ssh_auth", format!("{dest}: no key was accepted ({last_error})"), format!("install your public key on the host (`ssh-copy-id {dest}`), or pick the right one with -i"))
    } else if has("kex_exchange_identification") {
        (
            "ssh_throttled",
            "sshd closed the connection before the banner (MaxStartups or a TCP wrapper)".into(),
            "try again with fewer parallel logins, or raise MaxStartups in sshd_config".into(),
        )
    } else {
        (
            "ssh",
            format!(
                "ssh failed ({}): {last_error}",
                crate::error::exit_text(ran.code)
            ),
            "run `ssh -v HOST true` to see the whole exchange".into(),
        )
    };
    c.set(Status::Fail, class, summary)
        .ev(format!("ssh -v got as far as: {reached}"))
        .ev(last_error)
        .fix(fix)
        .took(t)
}

/// Whether ferry runs on the remote, and whether the login shell prints
/// anything that would corrupt the protocol.
pub fn remote_ferry(host: &str, user: Option<&str>, opts: &Options) -> Check {
    let t = Instant::now();
    let c = Check::new("remote_ferry", "Remote ferry");
    let bin = opts.remote_ferry.clone().unwrap_or_else(|| "ferry".into());
    let mut args = batch_args();
    args.extend([
        destination(host, user),
        format!("{} --version", shell_words::quote(&bin)),
    ]);
    let ran = match run_bounded(&ssh_words(opts), &args, limits::SSH) {
        Ok(r) => r,
        Err(why) => return c.set(Status::Fail, "no_ssh", why).took(t),
    };
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    let all = format!("{out}{}", ran.stderr);
    if all.contains("This service allows sftp connections only.") {
        return c
            .set(
                Status::Fail,
                "sftp_only",
                "this account allows sftp only (ForceCommand internal-sftp)",
            )
            .fix(
                "ferry cannot run here; use an account with a shell, or a ferry daemon on the host",
            )
            .took(t);
    }
    match ran.code {
        Some(127) => c
            .set(Status::Fail, "not_found", format!("{bin} is not found on the remote (exit 127)"))
            .ev(ran.stderr.trim().to_string())
            .fix(format!("install ferry on {host} (in a directory on the non-interactive PATH), or pass --remote-ferry PATH"))
            .took(t),
        Some(126) => c
            .set(Status::Fail, "cannot_execute", format!("{bin} cannot be executed on the remote (exit 126)"))
            .ev(ran.stderr.trim().to_string())
            .fix("install the binary built for the remote's architecture, with the execute bit (`chmod +x`)")
            .took(t),
        Some(0) => {
            let lines: Vec<&str> = out.lines().collect();
            match lines.iter().position(|l| l.starts_with("ferry ")) {
                Some(0) => c.ok(lines[0].to_string()).took(t),
                Some(i) => c
                    .set(Status::Fail, "noisy_shell", format!("the remote shell prints text before ferry's output: {:?}", lines[..i].join(" / ")))
                    .fix("make the shell start-up files (~/.bashrc, ~/.profile) print nothing when not interactive: `[ -z \"$PS1\" ] && return` at the top")
                    .took(t),
                None => c
                    .set(Status::Fail, "not_ferry", format!("`{bin} --version` printed {:?}", out.trim()))
                    .took(t),
            }
        }
        code => c
            .set(Status::Fail, "remote_ferry", format!("`{bin} --version` failed ({}): {}", crate::error::exit_text(code), ran.stderr.trim()))
            .took(t),
    }
}

/// One listening socket on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
}

/// Listening sockets from `/proc/net/tcp` and `tcp6` text.
pub fn parse_listeners(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let addr = match addr.len() {
            8 => match u32::from_str_radix(addr, 16) {
                Ok(v) => IpAddr::from(v.to_le_bytes()),
                Err(_) => continue,
            },
            32 => {
                let mut b = [0u8; 16];
                let mut ok = true;
                for i in 0..4 {
                    match u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16) {
                        Ok(v) => b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes()),
                        Err(_) => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                let v6 = std::net::Ipv6Addr::from(b);
                v6.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6))
            }
            _ => continue,
        };
        out.push(Listener { addr, port });
    }
    out
}

/// The ssh login, the remote listeners and the clock, as far as ssh gets.
pub struct View {
    pub checks: Vec<Check>,
    /// Listeners on the port, when ssh worked.
    pub listeners: Option<Vec<Listener>>,
}

const MARK: &str = "@@ferry-doctor@@";

/// Logs in over ssh once: reads what listens on `port`, and the clock.
pub fn remote_view(
    host: &str,
    user: Option<&str>,
    opts: &Options,
    port: u16,
    ssh_target: bool,
) -> View {
    let t = Instant::now();
    let c = Check::new("ssh", "ssh");
    let mut args = batch_args();
    args.extend([
        destination(host, user),
        format!("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; echo {MARK}; date +%s.%N"),
    ]);
    let ran = run_bounded(&ssh_words(opts), &args, limits::SSH);
    let failed = |why: String| {
        View {
        checks: vec![
            c.clone()
                .set(Status::Skip, "no_ssh_access", format!("no ssh login to {host} ({why}): the server-side view and the clock are not checked"))
                .took(t),
            Check::skip("listening", "Listening", "no ssh access"),
            Check::skip("clock", "Clock", "no ssh access"),
        ],
        listeners: None,
    }
    };
    let ran = match ran {
        Ok(r) if r.code == Some(0) => r,
        Ok(r) if r.timed_out => return failed(format!("no result in {} s", limits::SSH.as_secs())),
        Ok(r) => {
            let why = r
                .stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("ssh failed")
                .trim()
                .to_string();
            return failed(why);
        }
        Err(why) => return failed(why),
    };
    let text = String::from_utf8_lossy(&ran.stdout).into_owned();
    let (table, after) = text.split_once(MARK).unwrap_or((&text, ""));
    let mut checks = vec![c
        .ok(format!("logged in to {}", destination(host, user)))
        .took(t)];
    let all = parse_listeners(table);
    let on_port: Vec<Listener> = all.into_iter().filter(|l| l.port == port).collect();
    let lc = Check::new("listening", "Listening");
    let shown: Vec<String> = on_port
        .iter()
        .map(|l| match l.addr {
            IpAddr::V6(a) => format!("[{a}]:{port}"),
            a => format!("{a}:{port}"),
        })
        .collect();
    checks.push(if on_port.is_empty() {
        if ssh_target {
            lc.ok(format!(
                "no daemon listens on {port} on {host} (the ssh path does not need one)"
            ))
        } else {
            lc.ok(format!(
                "nothing listens on {port} on {host} (seen over ssh)"
            ))
        }
    } else {
        lc.ok(format!("on {host}: listening on {}", shown.join(", ")))
    });
    // the clock: the remote's `date` against ours when its answer arrived
    let cc = Check::new("clock", "Clock");
    let remote: Option<f64> = after.split_whitespace().next().and_then(|s| s.parse().ok());
    let clock = match (remote, ran.last_out) {
        (Some(r), Some((_, arrived))) => {
            let local = arrived
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let skew = r - local;
            let way = if skew > 0.0 { "ahead of" } else { "behind" };
            let text = format!("{host} is {:.1} s {way} this host", skew.abs());
            let fix = "turn on time synchronisation on both hosts: `timedatectl set-ntp true` (or chrony); skew breaks -u and confuses logs";
            if skew.abs() > 300.0 {
                cc.set(Status::Fail, "clock_skew", text).fix(fix)
            } else if skew.abs() > 2.0 {
                cc.set(Status::Warn, "clock_skew", text).fix(fix)
            } else {
                cc.ok(format!("within {:.1} s of this host", skew.abs()))
            }
        }
        _ => cc.set(
            Status::Skip,
            "skipped",
            "skipped: the remote did not print its clock",
        ),
    };
    checks.push(clock);
    View {
        checks,
        listeners: Some(on_port),
    }
}

/// Names a refused or dropped connection from what the server side shows.
pub fn refine_tcp(check: Check, on_port: &[Listener], port: u16) -> Check {
    if check.status != Status::Fail {
        return check;
    }
    let loopback = |l: &Listener| l.addr.is_loopback();
    let shown: Vec<String> = on_port.iter().map(|l| l.addr.to_string()).collect();
    let mut c = check;
    c.fix = None;
    match c.class {
        "refused" if on_port.is_empty() => {
            c.class = "not_listening";
            c.summary = format!("{}: nothing listens on {port} (seen over ssh)", c.summary.split(':').next().unwrap_or("refused"));
            c.ev(format!("seen over ssh: nothing listens on port {port}"))
                .fix(format!("start the daemon there: `ferry serve --listen 0.0.0.0:{port}`"))
        }
        "refused" if on_port.iter().all(loopback) => {
            c.class = "loopback_only";
            c.summary = format!("{}: the daemon listens on {} only", c.summary.split(':').next().unwrap_or("refused"), shown.join(", "));
            c.ev(format!("seen over ssh: ferry listens on {}:{port} only", shown.join(", ")))
                .fix(format!("on the host: `ferry serve --listen 0.0.0.0:{port}`   (0.0.0.0 = every IPv4 interface; [::] for IPv6 too)"))
        }
        "refused" => {
            c.class = "firewall_reject";
            c.summary = format!("{}: a listener is on {} but the connection is rejected: a firewall", c.summary.split(':').next().unwrap_or("refused"), shown.join(", "));
            c.ev(format!("seen over ssh: listening on {} port {port}", shown.join(", ")))
                .fix(format!("allow the port on the host: `ufw allow {port}/tcp`, `firewall-cmd --add-port={port}/tcp`, or `iptables -I INPUT -p tcp --dport {port} -j ACCEPT`"))
        }
        "timeout" | "prohibited" if !on_port.is_empty() && !on_port.iter().all(loopback) => {
            c.ev(format!("seen over ssh: listening on {} port {port}, so a firewall stops the connection", shown.join(", ")))
                .fix(format!("allow TCP {port} on the host's firewall (`iptables -I INPUT -p tcp --dport {port} -j ACCEPT`) or security group"))
        }
        _ => {
            let fix = format!("see `ss -ltn` on the host; start the daemon with `ferry serve --listen 0.0.0.0:{port}`");
            c.ev(format!("seen over ssh: listening on port {port}: {}", if shown.is_empty() { "nothing".into() } else { shown.join(", ") }))
                .fix(fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1CFC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:1CFC 0200007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0\n\
   0: 00000000000000000000000001000000:1CFC 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0\n";
        let l = parse_listeners(text);
        assert_eq!(
            l,
            vec![
                Listener {
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 7420
                },
                Listener {
                    addr: "0.0.0.0".parse().unwrap(),
                    port: 22
                },
                Listener {
                    addr: "::1".parse().unwrap(),
                    port: 7420
                },
            ]
        );
    }
}
