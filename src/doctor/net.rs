//! The network checks of `ferry doctor`: proxy variables, name resolution
//! (the system's getaddrinfo, as ssh and curl see it, plus where in
//! `/etc/hosts` an answer came from), the route, the TCP connection per
//! address family, and what answers on the port. Each is bounded by
//! [`super::limits`]. Not for TLS or anything above it.

use super::{limits, Check, Status};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Instant;

const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
];

/// Whether `host` is exempted by a `no_proxy` list (names, suffixes, `*`).
fn no_proxy_covers(list: &str, host: &str) -> bool {
    list.split(',').map(str::trim).any(|e| {
        !e.is_empty()
            && (e == "*"
                || e.eq_ignore_ascii_case(host)
                || host.to_ascii_lowercase().ends_with(&format!(
                    ".{}",
                    e.trim_start_matches('.').to_ascii_lowercase()
                )))
    })
}

/// `scheme://[user@]host[:port]` → (host, port).
fn proxy_addr(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let rest = rest.split('/').next()?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let default = match scheme {
        "https" => 443,
        s if s.starts_with("socks") => 1080,
        _ => 80,
    };
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            Some((h.to_string(), p.parse().ok()?))
        }
        _ => Some((rest.to_string(), default)),
    }
}

/// Proxy variables: which are set, whether they would apply to `host`, and
/// whether the proxy they name answers. ferry's own connections (TLS to the
/// daemon, ssh) do not use them; curl, S3 clients and Python tools do.
pub fn proxies(host: &str) -> Check {
    let t = Instant::now();
    let c = Check::new("env", "Proxy");
    let set: Vec<(&str, String)> = PROXY_VARS
        .iter()
        .filter_map(|v| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| (*v, s))
        })
        .collect();
    if set.is_empty() {
        return c.ok("no proxy variables set").took(t);
    }
    let no_proxy = std::env::var("no_proxy")
        .or_else(|_| std::env::var("NO_PROXY"))
        .unwrap_or_default();
    let exempt = no_proxy_covers(&no_proxy, host);
    let mut c = c;
    let mut dead = Vec::new();
    for (var, url) in &set {
        let mut line = format!("{var}={url}");
        if let Some((h, p)) = proxy_addr(url) {
            let answered = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), p))
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)));
            match answered {
                Some(Ok(_)) => line.push_str(" (the proxy accepts connections)"),
                Some(Err(e)) => {
                    line.push_str(&format!(
                        " (the proxy at {h}:{p} does not answer: {})",
                        crate::error::io_text(&e)
                    ));
                    dead.push(*var);
                }
                None => {
                    line.push_str(&format!(" (the proxy host {h} does not resolve)"));
                    dead.push(*var);
                }
            }
        }
        c = c.ev(line);
    }
    if !no_proxy.is_empty() {
        c = c.ev(format!("no_proxy={no_proxy}"));
    }
    let applies = if exempt {
        format!("{host} is in no_proxy, so no tool proxies it")
    } else {
        format!("curl, S3 clients and Python would send {host} through it; ferry's daemon TLS and ssh do not")
    };
    c = c.ev(applies);
    if !dead.is_empty() && !exempt {
        return c
            .set(
                Status::Warn,
                "proxy_unreachable",
                format!("{} set, and the proxy does not answer", dead.join(", ")),
            )
            .fix(format!(
                "unset {}   (or add {host} to no_proxy: export no_proxy={host})",
                dead.join(" ")
            ))
            .took(t);
    }
    let names: Vec<&str> = set.iter().map(|(v, _)| *v).collect();
    c.ok(format!(
        "{} set; ferry's connections do not use it",
        names.join(", ")
    ))
    .took(t)
}

/// What name resolution gave.
pub struct Resolved {
    pub check: Check,
    pub addrs: Vec<SocketAddr>,
    /// The answer came from `/etc/hosts` (line number).
    pub from_hosts: Option<usize>,
}

/// The `/etc/hosts` line (1-based) naming `host`, and its address.
fn hosts_line(host: &str) -> Option<(usize, String)> {
    let text = std::fs::read_to_string("/etc/hosts").ok()?;
    text.lines().enumerate().find_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let addr = words.next()?;
        words
            .any(|w| w.eq_ignore_ascii_case(host))
            .then(|| (i + 1, addr.to_string()))
    })
}

fn nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .collect()
}

/// How a failed lookup failed: glibc's getaddrinfo text, which std passes on
/// ("failed to lookup address information: Name or service not known").
#[derive(Debug, PartialEq, Eq)]
enum LookupError {
    /// EAI_NONAME / EAI_NODATA: the name does not exist.
    NoName(String),
    /// EAI_AGAIN / EAI_FAIL: no server answered, or it failed.
    Resolver(String),
    Other(String),
}

fn lookup_error(e: &std::io::Error) -> LookupError {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text)
        .to_string();
    if text.contains("Name or service not known")
        || text.contains("No address associated")
        || text.contains("not known")
    {
        LookupError::NoName(text)
    } else if text.contains("Temporary failure") || text.contains("Non-recoverable") {
        LookupError::Resolver(text)
    } else {
        LookupError::Other(text)
    }
}

/// The system resolver's answer for `host`, addresses in its order, once each.
fn getaddrinfo(host: &str) -> Result<Vec<IpAddr>, LookupError> {
    let addrs =
        std::net::ToSocketAddrs::to_socket_addrs(&(host, 0)).map_err(|e| lookup_error(&e))?;
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    Ok(out)
}

/// Resolves `host` as every other tool on this host would.
pub fn resolve(host: &str, port: u16) -> Resolved {
    let t = Instant::now();
    let c = Check::new("dns", "DNS");
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Resolved {
            check: c.ok(format!("{host} is an address: no lookup")).took(t),
            addrs: vec![SocketAddr::new(ip, port)],
            from_hosts: None,
        };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(getaddrinfo(&name));
    });
    let servers = nameservers();
    let ns_text = if servers.is_empty() {
        "no nameserver in /etc/resolv.conf".to_string()
    } else {
        format!("nameserver {}", servers.join(", "))
    };
    let hosts = hosts_line(host);
    let result = rx.recv_timeout(limits::DNS);
    let failed = |check: Check| Resolved {
        check,
        addrs: Vec::new(),
        from_hosts: None,
    };
    match result {
        Ok(Ok(ips)) if !ips.is_empty() => {
            let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            let from = hosts
                .as_ref()
                .filter(|(_, a)| a.parse::<IpAddr>().is_ok_and(|a| ips.contains(&a)))
                .map(|(n, _)| *n);
            let source = match from {
                Some(n) => format!(" (/etc/hosts line {n})"),
                None => format!(" (DNS, {ns_text})"),
            };
            Resolved {
                check: c
                    .ok(format!("{host} → {}{source}", list.join(", ")))
                    .took(t),
                addrs: ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                from_hosts: from,
            }
        }
        Ok(Ok(_)) => failed(
            c.set(Status::Fail, "nxdomain", format!("{host} has no address"))
                .took(t),
        ),
        Ok(Err(LookupError::NoName(text))) => failed(
            c.set(
                Status::Fail,
                "nxdomain",
                format!("{host} does not exist in DNS ({text})"),
            )
            .ev(format!("getaddrinfo: {text}; {ns_text}"))
            .fix(format!(
                "check the spelling and the `search` line of /etc/resolv.conf, or add {host} to /etc/hosts (or `HostName` in ~/.ssh/config)"
            ))
            .took(t),
        ),
        Ok(Err(LookupError::Resolver(text))) => failed(
            c.set(
                Status::Fail,
                "resolver",
                format!("no DNS server answered for {host} ({text})"),
            )
            .ev(format!("getaddrinfo: {text}; {ns_text}"))
            .fix("fix the resolver (or the VPN that provides it): check /etc/resolv.conf; meanwhile use the IP address or an /etc/hosts line")
            .took(t),
        ),
        Ok(Err(LookupError::Other(text))) => failed(
            c.set(Status::Fail, "dns", format!("{host}: {text}"))
                .ev(ns_text)
                .took(t),
        ),
        Err(_) => failed(
            c.set(
                Status::Fail,
                "resolver",
                format!(
                    "no DNS answer for {host} within {} s",
                    limits::DNS.as_secs()
                ),
            )
            .ev(ns_text)
            .fix("fix the resolver (or the VPN that provides it); meanwhile use the IP address or an /etc/hosts line")
            .took(t),
        ),
    }
}

/// The interface and gateway of the IPv4 route to `ip` (`/proc/net/route`,
/// longest prefix).
fn route_v4(ip: std::net::Ipv4Addr) -> Option<(String, Option<std::net::Ipv4Addr>)> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    let target = u32::from(ip);
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dest, gw, mask) = (hex(f[1])?, hex(f[2])?, hex(f[7])?);
            (target & mask == dest).then(|| (mask.count_ones(), f[0].to_string(), gw))
        })
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, dev, gw)| (dev, (gw != 0).then(|| std::net::Ipv4Addr::from(gw))))
}

/// The route to each address: a UDP `connect` (no packet sent) gives the
/// source address, or "network unreachable".
pub fn route(addrs: &[SocketAddr]) -> Check {
    let t = Instant::now();
    let c = Check::new("route", "Route");
    let mut lines = Vec::new();
    let mut unreachable = Vec::new();
    for a in addrs {
        let bind: SocketAddr = if a.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let sock = UdpSocket::bind(bind).and_then(|s| s.connect(a).map(|_| s));
        match sock.and_then(|s| s.local_addr()) {
            Ok(local) => {
                let via = match a.ip() {
                    ip if ip.is_loopback() => " dev lo (this host)".to_string(),
                    IpAddr::V4(v4) => match route_v4(v4) {
                        Some((dev, Some(gw))) => format!(" via {gw} dev {dev}"),
                        Some((dev, None)) => format!(" dev {dev} (on the link)"),
                        None => String::new(),
                    },
                    IpAddr::V6(_) => String::new(),
                };
                lines.push(format!("{}{via} from {}", a.ip(), local.ip()));
            }
            Err(e) => unreachable.push(format!("{}: {}", a.ip(), crate::error::io_text(&e))),
        }
    }
    let c = unreachable.iter().fold(c, |c, l| c.ev(l.clone()));
    if lines.is_empty() {
        return c
            .set(
                Status::Fail,
                "no_route",
                format!(
                    "no route to {} from this host",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .fix("add a default route or bring up the VPN/interface that reaches it (see `ip route`)")
            .took(t);
    }
    c.ok(lines.join("; ")).took(t)
}

/// What connecting gave.
pub struct Connected {
    pub check: Check,
    pub stream: Option<(TcpStream, SocketAddr)>,
}

/// A failed connect, named.
fn classify(e: &std::io::Error, took_ms: f64) -> (&'static str, String) {
    let quick = took_ms < 1000.0;
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ("refused", format!("refused in {}", super::ms_text(took_ms))),
        Some(libc::EHOSTUNREACH) if quick => (
            "prohibited",
            format!(
                "rejected in {} (ICMP host unreachable or prohibited)",
                super::ms_text(took_ms)
            ),
        ),
        Some(libc::EHOSTUNREACH) => (
            "host_absent",
            format!(
                "no host answers at this address (unreachable after {})",
                super::ms_text(took_ms)
            ),
        ),
        Some(libc::ENETUNREACH) => (
            "prohibited",
            format!(
                "network unreachable in {} (ICMP net unreachable)",
                super::ms_text(took_ms)
            ),
        ),
        Some(libc::ETIMEDOUT) | Some(libc::EINPROGRESS) => (
            "timeout",
            format!("no answer in {}", super::ms_text(took_ms)),
        ),
        _ if e.kind() == std::io::ErrorKind::TimedOut
            || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            (
                "timeout",
                format!("no answer in {}", super::ms_text(took_ms)),
            )
        }
        _ => ("connect", crate::error::io_text(e)),
    }
}

/// Connects to every address at once (each bounded); the first that works
/// is kept for the next checks.
pub fn connect(addrs: &[SocketAddr], port: u16, from_hosts: Option<usize>, ssh: bool) -> Connected {
    let t = Instant::now();
    let c = Check::new("tcp", format!("TCP {port}"));
    let handles: Vec<_> = addrs
        .iter()
        .map(|&a| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&a, limits::CONNECT);
                (a, r, t.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let mut c = c;
    let mut stream = None;
    let mut failures = Vec::new();
    for (a, r, ms) in results {
        match r {
            Ok(s) => {
                c = c.ev(format!("{a}: connected in {}", super::ms_text(ms)));
                if stream.is_none() {
                    stream = Some((s, a));
                }
            }
            Err(e) => {
                let (class, text) = classify(&e, ms);
                c = c.ev(format!("{a}: {text}"));
                failures.push((a, class, text));
            }
        }
    }
    let c = c.took(t);
    if let Some((s, a)) = stream {
        if let Some((bad, _, text)) = failures.iter().find(|(f, _, _)| f.is_ipv6() != a.is_ipv6()) {
            let family = if bad.is_ipv6() {
                ("IPv6", "IPv4")
            } else {
                ("IPv4", "IPv6")
            };
            return Connected {
                check: c
                    .set(
                        Status::Warn,
                        if bad.is_ipv6() { "ipv6_fails" } else { "ipv4_fails" },
                        format!("{} fails ({text}), {} works ({a})", family.0, family.1),
                    )
                    .fix(format!(
                        "make the daemon listen on both: `ferry serve --listen [::]:{port}`, or fix the {} route/firewall",
                        family.0
                    )),
                stream: Some((s, a)),
            };
        }
        return Connected {
            check: c.ok(format!("connected to {a}")),
            stream: Some((s, a)),
        };
    }
    let Some((a, class, text)) = failures.into_iter().next() else {
        return Connected {
            check: c.set(Status::Fail, "connect", "no address to connect to"),
            stream: None,
        };
    };
    let host = a.ip();
    let (summary, fix) = match class {
        "refused" => (
            format!("{text}: {host} answered, nothing accepts on {port} (or a firewall rejects it)"),
            if ssh {
                format!("start sshd on {host} (`systemctl start ssh`), or name the port it listens on (`-e 'ssh -p PORT'`); or open the port (`iptables -I INPUT -p tcp --dport {port} -j ACCEPT`)")
            } else {
                format!("start the daemon on {host}: `ferry serve --listen 0.0.0.0:{port}`; or open the port (`iptables -I INPUT -p tcp --dport {port} -j ACCEPT`)")
            },
        ),
        "prohibited" => (
            format!("{text}: a firewall on the path rejects port {port}"),
            format!("ask whoever runs the firewall or security group to allow TCP {port} to {host}"),
        ),
        "host_absent" => (
            format!("{text}: nothing answers at {host}"),
            format!("the host is down or {host} is the wrong address"),
        ),
        "timeout" => (
            format!("{text}: SYNs to {port} are dropped (firewall or security group), or the host is down"),
            format!("open TCP {port} on the host's firewall (`ufw allow {port}/tcp`) or security group"),
        ),
        _ => (text.clone(), format!("check the network path to {host}")),
    };
    let mut c = c.set(Status::Fail, class, summary).fix(fix);
    // an address that does not answer at all may be an old one
    if let (Some(n), "host_absent" | "timeout") = (from_hosts, class) {
        c = c
            .ev(format!("{host} comes from /etc/hosts line {n}: it may be stale"))
            .fix(format!(
                "check /etc/hosts line {n}: is {host} still this host's address? (compare `getent ahosts` elsewhere, or DNS)"
            ));
    }
    Connected {
        check: c,
        stream: None,
    }
}

/// Reads what the peer says first, within `limits::BANNER`.
fn first_bytes(mut s: TcpStream) -> Result<Vec<u8>, ()> {
    let _ = s.set_read_timeout(Some(limits::BANNER));
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => Ok(buf[..n].to_vec()),
        Err(_) => Err(()),
    }
}

fn shown(b: &[u8]) -> String {
    let line = b.split(|&c| c == b'\n').next().unwrap_or(b);
    String::from_utf8_lossy(line)
        .trim_end()
        .escape_debug()
        .to_string()
}

/// What answers on a daemon port: a ferry daemon is silent until the client
/// speaks TLS.
pub fn banner(s: TcpStream, port: u16) -> Check {
    let t = Instant::now();
    let c = Check::new("answers", "Answers");
    match first_bytes(s) {
        Err(()) => c
            .ok(format!(
                "silent for {} ms, as a TLS server waits for the client",
                limits::BANNER.as_millis()
            ))
            .took(t),
        Ok(b) if b.is_empty() => c
            .set(
                Status::Fail,
                "closed",
                format!("the peer closed the connection on port {port} at once"),
            )
            .fix("something accepts and closes: a proxy or a full daemon; check its log")
            .took(t),
        Ok(b) if b.starts_with(b"SSH-") => c
            .set(
                Status::Fail,
                "ssh_on_port",
                format!("port {port} is SSH ({}), not a ferry daemon", shown(&b)),
            )
            .fix(format!(
                "for the ssh path use `HOST:path`; the daemon listens on {} by default",
                crate::proto::DEFAULT_PORT
            ))
            .took(t),
        Ok(b) if b.starts_with(b"HTTP/") || b.starts_with(b"<") => c
            .set(
                Status::Fail,
                "http_on_port",
                format!("port {port} speaks HTTP ({}), not ferry", shown(&b)),
            )
            .fix("point ferry at the daemon's port (default 7420)")
            .took(t),
        Ok(b) => c
            .set(
                Status::Fail,
                "not_ferry",
                format!("port {port} sent {:?}, not a ferry daemon", shown(&b)),
            )
            .fix("point ferry at the daemon's port (default 7420)")
            .took(t),
    }
}

/// What answers on an ssh port: an `SSH-2.0-` banner.
pub fn ssh_banner(s: TcpStream, port: u16) -> Check {
    let t = Instant::now();
    let c = Check::new("answers", "Answers");
    let mut s = s;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) if buf[..n].starts_with(b"SSH-") => c.ok(shown(&buf[..n])).took(t),
        Ok(0) => c
            .set(Status::Fail, "closed", format!("port {port} closed the connection without an SSH banner"))
            .fix("sshd may be throttling (MaxStartups) or a wrapper rejects this client (hosts.deny)")
            .took(t),
        Ok(n) => c
            .set(Status::Fail, "not_ssh", format!("port {port} sent {:?}, not an SSH banner", shown(&buf[..n])))
            .fix("check the port in ~/.ssh/config (`Port`)")
            .took(t),
        Err(_) => c
            .set(Status::Fail, "silent", format!("port {port} sent no SSH banner in 2 s"))
            .fix("this is not an ssh server (a TLS service waits silently); check `Port` in ~/.ssh/config")
            .took(t),
    }
}

/// How long sent data may stay unacknowledged before the path counts as a
/// black hole.
const STALL: std::time::Duration = std::time::Duration::from_secs(3);
/// How much the probe sends: some 20 full-size segments, less than any
/// receiver's initial window, so the peer's kernel acknowledges all of it
/// whether or not the daemon reads.
const PROBE_BYTES: usize = 32 << 10;

/// Bytes this host has sent on the connection `local` → `remote` that the
/// peer has not acknowledged yet (`tx_queue` of `/proc/net/tcp{,6}`); None
/// when the connection is gone.
fn unacked(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let file = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(file).ok()?;
    let hex_port = |p: u16| format!(":{p:04X}");
    let (lp, rp) = (hex_port(local.port()), hex_port(remote.port()));
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[1].ends_with(&lp) && f[2].ends_with(&rp) {
            let tx = f[4].split(':').next()?;
            u64::from_str_radix(tx, 16).ok()
        } else {
            None
        }
    })
}

/// Whether full-size segments reach the daemon. On a fresh connection 32 KiB
/// of zeros goes out (a ferry daemon refuses them as a bad TLS record), and
/// the kernel's count of unacknowledged bytes is watched: on a sound path it
/// drops to zero within round trips. Where the path MTU is below this
/// link's and the ICMP "fragmentation needed" that would say so is dropped,
/// the TCP handshake and small packets get through but no full-size segment
/// does, and the count never moves. The same bytes are then sent again in
/// segments of [`SMALL_MSS`]: that they arrive is the proof that segment size,
/// not the peer or a firewall, is what fails. The daemon logs each probe as a
/// connection closed before authentication.
pub fn path_mtu(addr: SocketAddr) -> Check {
    let t = Instant::now();
    let c = Check::new("mtu", "Path MTU");
    let left = match probe(addr, None) {
        Probe::NoConnect(e) => {
            return c
                .set(
                    Status::Warn,
                    "connect",
                    format!("the probe could not connect again: {e}"),
                )
                .took(t)
        }
        Probe::NoAddress => {
            return c
                .set(Status::Skip, "skipped", "skipped: no local address")
                .took(t)
        }
        // refused at once: the daemon read the first segments and hung up
        Probe::Closed => {
            return c
                .ok("full-size segments get through (the daemon read them and closed)")
                .took(t)
        }
        Probe::Acked(took) => {
            return c
                .ok(format!(
                    "{} KiB in full-size segments acknowledged in {}",
                    PROBE_BYTES >> 10,
                    super::ms_text(took.as_secs_f64() * 1000.0)
                ))
                .took(t)
        }
        Probe::Stalled(left) => left,
    };
    let dev = match addr.ip() {
        IpAddr::V4(v4) => route_v4(v4).map(|(d, _)| d).unwrap_or_else(|| "DEV".into()),
        IpAddr::V6(_) => "DEV".into(),
    };
    let small = match probe(addr, Some(SMALL_MSS)) {
        Probe::Acked(took) => Some(format!(
            "the same {} KiB in {SMALL_MSS}-byte segments acknowledged in {}",
            PROBE_BYTES >> 10,
            super::ms_text(took.as_secs_f64() * 1000.0)
        )),
        Probe::Closed => Some(format!(
            "the same {} KiB in {SMALL_MSS}-byte segments got through (the daemon read them and closed)",
            PROBE_BYTES >> 10
        )),
        _ => None,
    };
    let c = c.set(
        Status::Fail,
        "pmtu_blackhole",
        format!(
            "full-size segments are lost: {} of {} KiB still unacknowledged after {} s, though the connection and small packets work",
            left >> 10,
            PROBE_BYTES >> 10,
            STALL.as_secs()
        ),
    );
    let c = match small {
        Some(line) => c
            .ev(line)
            .ev("the path MTU is below this link's and the ICMP \"fragmentation needed\" that would say so is dropped (a path-MTU black hole)"),
        None => c.ev(format!(
            "{SMALL_MSS}-byte segments were lost too: maybe a path-MTU black hole, maybe a path that drops data but not handshakes"
        )),
    };
    c.fix(format!(
        "lower the MTU here (`ip link set dev {dev} mtu 1280`), or clamp the MSS on the router (`iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`), or `sysctl -w net.ipv4.tcp_mtu_probing=1`"
    ))
    .took(t)
}

/// The segment size of the second probe: fits a 1280-byte MTU (IPv6's
/// minimum) with room for IP and TCP options.
const SMALL_MSS: u32 = 1200;

/// What one probe saw.
enum Probe {
    NoConnect(String),
    NoAddress,
    /// The peer closed while the probe was being written.
    Closed,
    /// Everything acknowledged, after this long.
    Acked(std::time::Duration),
    /// Still this many bytes unacknowledged after [`STALL`].
    Stalled(u64),
}

/// Sends [`PROBE_BYTES`] on a fresh connection, in segments of at most `mss`
/// bytes if given, and watches them being acknowledged.
fn probe(addr: SocketAddr, mss: Option<u32>) -> Probe {
    use std::io::Write;
    let socket = match socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) => return Probe::NoConnect(crate::error::io_text(&e)),
    };
    if let Some(mss) = mss {
        // set before connecting, so the SYN announces it to the peer as well
        if let Err(e) = socket.set_tcp_mss(mss) {
            return Probe::NoConnect(crate::error::io_text(&e));
        }
    }
    if let Err(e) = socket.connect_timeout(&addr.into(), limits::CONNECT) {
        return Probe::NoConnect(crate::error::io_text(&e));
    }
    let mut s: TcpStream = socket.into();
    let Ok(local) = s.local_addr() else {
        return Probe::NoAddress;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    if s.write_all(&[0u8; PROBE_BYTES]).is_err() {
        return Probe::Closed;
    }
    let sent = Instant::now();
    let mut left = PROBE_BYTES as u64;
    while sent.elapsed() < STALL {
        match unacked(local, addr) {
            Some(0) | None => return Probe::Acked(sent.elapsed()),
            Some(n) => left = n,
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Probe::Stalled(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_and_no_proxy() {
        assert_eq!(
            proxy_addr("http://127.0.0.1:9"),
            Some(("127.0.0.1".into(), 9))
        );
        assert_eq!(
            proxy_addr("socks5h://u:p@px:1081/"),
            Some(("px".into(), 1081))
        );
        assert_eq!(proxy_addr("http://px"), Some(("px".into(), 80)));
        assert!(no_proxy_covers("localhost,.corp", "gpu2.corp"));
        assert!(no_proxy_covers("gpu2", "GPU2"));
        assert!(!no_proxy_covers("gpu3", "gpu2"));
    }

    #[test]
    fn a_refused_connection_is_named_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        let r = connect(&[a], a.port(), None, false);
        assert_eq!(r.check.status, Status::Fail);
        assert_eq!(r.check.class, "refused");
        assert!(r.stream.is_none());
    }
}
