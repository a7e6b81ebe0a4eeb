//! `ferry doctor`: walks the layers between this host and a peer in order
//! (environment, DNS, route, TCP, what answers on the port, TLS, host key,
//! client key, the protocol, ssh and the server-side view, the clock) and says
//! which one broke, with the evidence and a concrete fix.
//!
//! Every step is bounded by a timeout, so a run ends within about 20 s. The
//! result is a [`Report`] of [`Check`]s; turning it into text or JSON is
//! [`render`]'s job, printing it the CLI's. Not for moving data, and not for
//! changing anything on either host: the doctor only looks.

mod daemon;
mod net;
pub mod render;
mod speed;
mod ssh;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One step of the diagnosis.
#[derive(Debug, Clone)]
pub struct Check {
    /// Stable name (`dns`, `tcp`, `host_key`, ...), for scripts and tests.
    pub id: &'static str,
    /// What a person reads in the first column (`TCP 7420`).
    pub title: String,
    pub status: Status,
    /// Which failure (or success) this is, stable for scripts: `refused`,
    /// `nxdomain`, `loopback_only`, ... (`ok` when nothing is wrong).
    pub class: &'static str,
    /// How long the step took, when it did something.
    pub ms: Option<f64>,
    pub summary: String,
    /// What was seen, one fact a line.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Check {
    fn new(id: &'static str, title: impl Into<String>) -> Check {
        Check {
            id,
            title: title.into(),
            status: Status::Ok,
            class: "ok",
            ms: None,
            summary: String::new(),
            evidence: Vec::new(),
            fix: None,
        }
    }

    fn ok(mut self, summary: impl Into<String>) -> Check {
        self.status = Status::Ok;
        self.class = "ok";
        self.summary = summary.into();
        self
    }

    fn set(mut self, status: Status, class: &'static str, summary: impl Into<String>) -> Check {
        self.status = status;
        self.class = class;
        self.summary = summary.into();
        self
    }

    fn skip(id: &'static str, title: impl Into<String>, why: impl Into<String>) -> Check {
        Check::new(id, title).set(Status::Skip, "skipped", format!("skipped: {}", why.into()))
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    fn ev(mut self, line: impl Into<String>) -> Check {
        self.evidence.push(line.into());
        self
    }

    fn took(mut self, since: Instant) -> Check {
        self.ms = Some(since.elapsed().as_secs_f64() * 1000.0);
        self
    }
}

/// What the doctor examines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A ferry daemon: `host::module`, `host:PORT`, `host`, `ferry://host[:port]/…`.
    Daemon { host: String, port: u16 },
    /// The ssh path: `user@host`, `host:path`.
    Ssh { user: Option<String>, host: String },
}

impl Target {
    /// Reads a target as a user types it. A bare name is a daemon on the
    /// default port; `host:DIGITS` a daemon on that port; `user@host` and
    /// `host:path` the ssh path.
    pub fn parse(arg: &str) -> Result<Target, String> {
        use crate::location::Location;
        let default = crate::proto::DEFAULT_PORT;
        if arg.is_empty() {
            return Err("doctor: the target is empty (give a host, e.g. gpu2 or user@gpu2)".into());
        }
        // host:PORT (a colon and digits only) is a daemon port, not an ssh path
        if let Some((host, port)) = arg.rsplit_once(':') {
            // an IPv6 literal only in brackets: [::1]:7420
            let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(h) => (h, true),
                None => (host, false),
            };
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.is_empty()
                && (bracketed || !host.contains(':'))
                && !host.contains('@')
            {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("doctor: {arg:?}: bad port"))?;
                return Ok(Target::Daemon {
                    host: host.to_string(),
                    port,
                });
            }
        }
        if !arg.contains(':') && !arg.contains('/') {
            return Ok(match arg.rsplit_once('@') {
                Some((user, host)) if !host.is_empty() && !user.is_empty() => Target::Ssh {
                    user: Some(user.to_string()),
                    host: host.to_string(),
                },
                Some(_) => return Err(format!("doctor: {arg:?}: missing host name")),
                None => Target::Daemon {
                    host: arg.to_string(),
                    port: default,
                },
            });
        }
        match Location::parse(std::ffi::OsStr::new(arg)).map_err(|e| format!("doctor: {e}"))? {
            Location::Daemon { host, port, .. } => Ok(Target::Daemon {
                host,
                port: port.unwrap_or(default),
            }),
            Location::Ssh { user, host, .. } => Ok(Target::Ssh { user, host }),
            Location::Local(_) => Err(format!(
                "doctor: {arg:?} is a local path; give a host (gpu2, gpu2::module, user@gpu2)"
            )),
            Location::S3 { .. } => Err(format!(
                "doctor: {arg:?}: S3 targets are not diagnosed yet; give a host"
            )),
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Target::Daemon { host, .. } | Target::Ssh { host, .. } => host,
        }
    }
}

/// How the doctor reaches the peer (the same flags as transfers).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-i`: the identity for the daemon.
    pub identity: Option<PathBuf>,
    /// `--known-hosts`.
    pub known_hosts: Option<PathBuf>,
    /// `--config-dir`.
    pub config_dir: Option<PathBuf>,
    /// `-e`: the ssh command (default `ssh`).
    pub rsh: Option<String>,
    /// `--remote-ferry`: ferry's path on the remote (default `ferry`).
    pub remote_ferry: Option<String>,
    /// The daemon port the server-side view looks at, for ssh targets.
    pub daemon_port: Option<u16>,
    /// `--speed`: measure throughput too (about 10 s more).
    pub speed: bool,
}

/// Everything the doctor found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target as given.
    pub target: String,
    /// `daemon` or `ssh`.
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    /// The addresses the name resolved to.
    pub addresses: Vec<String>,
    pub checks: Vec<Check>,
}

impl Report {
    /// Checks that failed.
    pub fn problems(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// How long each step may take.
pub(crate) mod limits {
    use super::Duration;
    pub const DNS: Duration = Duration::from_secs(5);
    pub const CONNECT: Duration = Duration::from_secs(4);
    pub const BANNER: Duration = Duration::from_millis(500);
    pub const TLS: Duration = Duration::from_secs(4);
    pub const SSH: Duration = Duration::from_secs(8);
    pub const SSH_CONNECT_SECS: u32 = 4;
}

/// Runs every check against `target`, in order.
pub fn run(arg: &str, target: &Target, opts: &Options) -> Report {
    let mut report = match target {
        Target::Daemon { host, port } => run_daemon(arg, host, *port, opts),
        Target::Ssh { user, host } => run_ssh(arg, user.as_deref(), host, opts),
    };
    if opts.speed && report.check("speed").is_none() {
        report.checks.push(Check::skip(
            "speed",
            "Speed",
            "the host is not reachable over ssh",
        ));
    }
    report
}

/// What to do when a daemon's host name does not resolve. A daemon address
/// never reads ~/.ssh/config, so an ssh alias does not work there: name the
/// host the alias stands for, when ssh knows one.
fn daemon_name_fix(host: &str, port: u16, dns: &Check, opts: &Options) -> Option<String> {
    let named = ssh::effective(host, None, opts).hostname;
    if named != host {
        let address = if port == crate::proto::DEFAULT_PORT {
            format!("{named}::MODULE")
        } else {
            format!("ferry://{named}:{port}/MODULE")
        };
        return Some(format!(
            "{host} is an ssh alias (HostName {named}), and daemon addresses do not read ~/.ssh/config: use {address}, or add {host} to /etc/hosts"
        ));
    }
    (dns.class == "nxdomain").then(|| format!(
        "check the spelling, use the IP address, or add {host} to /etc/hosts (daemon addresses do not read ~/.ssh/config)"
    ))
}

fn run_daemon(arg: &str, host: &str, port: u16, opts: &Options) -> Report {
    let mut checks = vec![net::proxies(host)];
    let mut dns = net::resolve(host, port);
    if dns.addrs.is_empty() {
        if let Some(fix) = daemon_name_fix(host, port, &dns.check, opts) {
            dns.check.fix = Some(fix);
        }
    }
    let addresses = dns.addrs.iter().map(|a| a.ip().to_string()).collect();
    checks.push(dns.check.clone());
    let tcp_title = format!("TCP {port}");
    if dns.addrs.is_empty() {
        for (id, title) in [
            ("route", "Route"),
            ("tcp", tcp_title.as_str()),
            ("answers", "Answers"),
            ("mtu", "Path MTU"),
            ("tls", "TLS"),
            ("host_key", "Host key"),
            ("client_key", "Client key"),
            ("protocol", "Protocol"),
        ] {
            checks.push(Check::skip(id, title, "the name did not resolve"));
        }
        // ssh may still know the host under another name (HostName)
        let view = ssh::remote_view(host, None, opts, port, false);
        checks.extend(view.checks);
        return report(arg, "daemon", host, port, addresses, checks);
    }
    let route = net::route(&dns.addrs);
    checks.push(route.clone());
    if route.status == Status::Fail {
        for (id, title) in [
            ("tcp", tcp_title.as_str()),
            ("answers", "Answers"),
            ("mtu", "Path MTU"),
            ("tls", "TLS"),
            ("host_key", "Host key"),
            ("client_key", "Client key"),
            ("protocol", "Protocol"),
            ("ssh", "ssh"),
            ("listening", "Listening"),
            ("clock", "Clock"),
        ] {
            checks.push(Check::skip(id, title, "no route to the host"));
        }
        return report(arg, "daemon", host, port, addresses, checks);
    }
    let tcp = net::connect(&dns.addrs, port, dns.from_hosts, false);
    let tcp_index = checks.len();
    checks.push(tcp.check.clone());
    let mut reached = false;
    if let Some((stream, addr)) = tcp.stream {
        let banner = net::banner(stream, port);
        let ok = banner.status == Status::Ok;
        checks.push(banner);
        // full-size segments towards the daemon, before the handshake needs them
        let mtu = if ok {
            net::path_mtu(addr)
        } else {
            Check::skip("mtu", "Path MTU", "not a ferry daemon on this port")
        };
        let mtu_ok = mtu.status != Status::Fail;
        checks.push(mtu);
        if ok && mtu_ok {
            reached = true;
            checks.extend(daemon::checks(host, addr, port, opts));
        } else if ok {
            for (id, title) in [
                ("tls", "TLS"),
                ("host_key", "Host key"),
                ("client_key", "Client key"),
                ("protocol", "Protocol"),
            ] {
                checks.push(Check::skip(
                    id,
                    title,
                    "full-size packets do not get through",
                ));
            }
        } else {
            for (id, title) in [
                ("tls", "TLS"),
                ("host_key", "Host key"),
                ("client_key", "Client key"),
                ("protocol", "Protocol"),
            ] {
                checks.push(Check::skip(id, title, "not a ferry daemon on this port"));
            }
        }
    } else {
        for (id, title) in [
            ("answers", "Answers"),
            ("mtu", "Path MTU"),
            ("tls", "TLS"),
            ("host_key", "Host key"),
            ("client_key", "Client key"),
            ("protocol", "Protocol"),
        ] {
            checks.push(Check::skip(id, title, "no TCP connection"));
        }
    }
    let view = ssh::remote_view(host, None, opts, port, false);
    if !reached {
        if let Some(listen) = &view.listeners {
            let refined = ssh::refine_tcp(checks[tcp_index].clone(), listen, port);
            checks[tcp_index] = refined;
        }
    }
    let logged_in = view.listeners.is_some();
    checks.extend(view.checks);
    if opts.speed {
        checks.push(if logged_in {
            speed::check(host, None, opts, dns.addrs.first().copied())
        } else {
            Check::skip("speed", "Speed", "no ssh access to carry the measurement")
        });
    }
    report(arg, "daemon", host, port, addresses, checks)
}

fn run_ssh(arg: &str, user: Option<&str>, host: &str, opts: &Options) -> Report {
    let config = ssh::effective(host, user, opts);
    let mut checks = vec![net::proxies(host), config.check.clone()];
    let port = config.port;
    let name = config.hostname.clone();
    let mut addresses = Vec::new();
    if let Some(jump) = &config.jump {
        for (id, title) in [("dns", "DNS"), ("route", "Route"), ("tcp", "TCP")] {
            checks.push(Check::skip(
                id,
                title,
                format!("ssh goes through {jump}; only ssh itself can test that path"),
            ));
        }
    } else {
        let dns = net::resolve(&name, port);
        addresses = dns.addrs.iter().map(|a| a.ip().to_string()).collect();
        checks.push(dns.check.clone());
        if !dns.addrs.is_empty() {
            let route = net::route(&dns.addrs);
            let routed = route.status != Status::Fail;
            checks.push(route);
            if routed {
                let tcp = net::connect(&dns.addrs, port, dns.from_hosts, true);
                checks.push(tcp.check.clone());
                if let Some((stream, _)) = tcp.stream {
                    checks.push(net::ssh_banner(stream, port));
                }
            }
        }
    }
    let stages = ssh::stages(host, user, opts);
    let works = stages.status == Status::Ok;
    checks.push(stages);
    if works {
        checks.push(ssh::remote_ferry(host, user, opts));
        let daemon_port = opts.daemon_port.unwrap_or(crate::proto::DEFAULT_PORT);
        let view = ssh::remote_view(host, user, opts, daemon_port, true);
        checks.extend(view.checks.into_iter().filter(|c| c.id != "ssh"));
        if opts.speed {
            let rtt_to = addresses
                .first()
                .and_then(|a| a.parse().ok())
                .map(|ip| std::net::SocketAddr::new(ip, port));
            checks.push(speed::check(host, user, opts, rtt_to));
        }
    } else {
        for (id, title) in [
            ("remote_ferry", "Remote ferry"),
            ("listening", "Listening"),
            ("clock", "Clock"),
        ] {
            checks.push(Check::skip(id, title, "ssh does not log in"));
        }
    }
    report(arg, "ssh", host, port, addresses, checks)
}

fn report(
    arg: &str,
    kind: &'static str,
    host: &str,
    port: u16,
    addresses: Vec<String>,
    checks: Vec<Check>,
) -> Report {
    Report {
        target: arg.to_string(),
        kind,
        host: host.to_string(),
        port,
        addresses,
        checks,
    }
}

/// Milliseconds as a person reads them.
pub(crate) fn ms_text(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_as_users_type_them() {
        let d = |h: &str, p: u16| Target::Daemon {
            host: h.into(),
            port: p,
        };
        assert_eq!(Target::parse("gpu2::ckpt").unwrap(), d("gpu2", 7420));
        assert_eq!(Target::parse("gpu2").unwrap(), d("gpu2", 7420));
        assert_eq!(Target::parse("gpu2:7421").unwrap(), d("gpu2", 7421));
        assert_eq!(Target::parse("[::1]:7421").unwrap(), d("::1", 7421));
        assert_eq!(Target::parse("ferry://gpu2:9/m/x").unwrap(), d("gpu2", 9));
        assert_eq!(Target::parse("ferry://gpu2/m").unwrap(), d("gpu2", 7420));
        assert_eq!(
            Target::parse("alice@gpu2").unwrap(),
            Target::Ssh {
                user: Some("alice".into()),
                host: "gpu2".into()
            }
        );
        assert_eq!(
            Target::parse("gpu2:/data").unwrap(),
            Target::Ssh {
                user: None,
                host: "gpu2".into()
            }
        );
        assert!(Target::parse("gpu2:99999").is_err());
        assert!(Target::parse("./dir").is_err());
        assert!(Target::parse("").is_err());
    }
}
