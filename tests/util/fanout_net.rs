//! The fan-out proof harness: a switch namespace with a bridge and N+1 host
//! namespaces (host 0 is the source, 1..=N the destinations), each host with
//! one veth on 10.250.0.0/24 and `tbf` on both ends of it as its full-duplex
//! link rate, each running its own `ferry serve` with its own key, config and
//! data directory. The destinations trust the source's client key; the
//! source's `known_hosts` holds every destination's host key. Also here: the
//! measurements the fan-out tests judge by (a single-host `ferry sync`, an
//! `nc | tee` relay chain as the baseline, CPU busy from /proc/stat) and the
//! faults they inject (black hole, throttle, kill).
//!
//! It is not a network simulator: no delay or loss (this kernel has no
//! netem), and every address lives only inside the namespaces it creates,
//! which are removed on drop, panics included. Every command it runs is
//! bounded by `timeout(1)`. Needs root; `FanoutNet::build` returns `None`
//! with a clear message otherwise (see `root_available`).
#![allow(dead_code)]

use crate::util::{ferry_bin, root_available, tmp};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The port every host's daemon listens on (ferry's default, so that
/// `known_hosts` names hosts by address alone).
pub const DAEMON_PORT: u16 = 7420;
/// The port the `nc | tee` relay chain uses.
const RELAY_PORT: u16 = 7500;
/// Longest any one setup or teardown command may take.
const STEP: Duration = Duration::from_secs(20);

static NETS: AtomicUsize = AtomicUsize::new(0);

/// One host: its namespace, address and directories, and its daemon.
pub struct Host {
    pub ns: String,
    /// 10.250.0.(index+1)
    pub addr: String,
    /// The host's veth, inside its namespace.
    pub veth: String,
    /// The switch's end of it, inside the switch namespace.
    pub port: String,
    /// Holds `daemon/` (its config dir), `client/` (its client identity,
    /// `known_hosts`), `data/` (module `data`), `cache/`, `daemon.log`.
    pub dir: PathBuf,
    daemon: Option<Child>,
}

impl Host {
    pub fn daemon_dir(&self) -> PathBuf {
        self.dir.join("daemon")
    }
    pub fn client_dir(&self) -> PathBuf {
        self.dir.join("client")
    }
    /// The daemon's module `data`.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
    /// `ADDR::data/PATH`, this host's daemon as a destination.
    pub fn dest(&self, path: &str) -> String {
        format!("{}::data/{path}", self.addr)
    }
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }
}

/// The switch and its hosts; everything is removed on drop.
pub struct FanoutNet {
    pub switch: String,
    pub hosts: Vec<Host>,
    /// Each link's rate both ways, in Mbit/s.
    pub rate_mbit: u32,
    root: tempfile::TempDir,
}

/// Runs `args` under `timeout`, panicking with its stderr if it fails.
#[track_caller]
pub fn run(args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg(STEP.as_secs().to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("timeout(1)");
    assert!(
        out.status.success(),
        "`{}` failed ({:?}): {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// Like [`run`], ignoring failure (teardown of what may not exist).
fn try_run(args: &[&str]) {
    let _ = Command::new("timeout")
        .arg(STEP.as_secs().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl FanoutNet {
    /// A source and `n` destinations, links at `rate_mbit` both ways, every
    /// daemon running. `None` (after a message) without root.
    pub fn build(n: usize, rate_mbit: u32) -> Option<FanoutNet> {
        if !root_available() {
            return None;
        }
        for tool in ["ip", "tc", "iptables", "nc", "tee", "timeout"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                found,
                "fan-out harness: `{tool}` is missing (scripts/test.sh installs it)"
            );
        }
        assert!(n + 1 < 250, "at most 248 destinations on one /24");
        let tag = format!(
            "ffo{}x{}",
            std::process::id() % 100_000,
            NETS.fetch_add(1, Ordering::SeqCst)
        );
        let root = tmp();
        let mut net = FanoutNet {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
            rate_mbit,
            root,
        };
        // leftovers of an earlier crashed run with the same pid
        try_run(&["ip", "netns", "del", &net.switch]);
        run(&["ip", "netns", "add", &net.switch]);
        let sw = net.switch.clone();
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..=n {
            let ns = format!("{tag}-h{i}");
            try_run(&["ip", "netns", "del", &ns]);
            run(&["ip", "netns", "add", &ns]);
            let host = Host {
                ns: ns.clone(),
                addr: format!("10.250.0.{}", i + 1),
                veth: format!("v{i}"),
                port: format!("s{i}"),
                dir: net.root.path().join(format!("h{i}")),
                daemon: None,
            };
            // pushed first, so that drop removes it if a step below fails
            net.hosts.push(host);
            let h = net.hosts.last().unwrap();
            run(&[
                "ip", "link", "add", &h.veth, "netns", &ns, "type", "veth", "peer", "name",
                &h.port, "netns", &sw,
            ]);
            run(&["ip", "-n", &sw, "link", "set", &h.port, "master", "br0"]);
            run(&["ip", "-n", &sw, "link", "set", &h.port, "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let cidr = format!("{}/24", h.addr);
            run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &h.veth]);
            run(&["ip", "-n", &ns, "link", "set", &h.veth, "up"]);
            for (space, dev) in [(&ns, &h.veth), (&sw, &h.port)] {
                let rate = format!("{rate_mbit}mbit");
                run(&[
                    "ip", "netns", "exec", space, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", &rate, "burst", "256kb", "latency", "100ms",
                ]);
            }
        }
        net.make_keys();
        for i in 0..=n {
            net.start_daemon(i, &[]);
        }
        Some(net)
    }

    /// Keys for every host; the destinations trust the source's client key
    /// and the source knows every destination's host key.
    fn make_keys(&self) {
        for h in &self.hosts {
            for d in [
                h.daemon_dir(),
                h.client_dir(),
                h.data(),
                h.dir.join("cache"),
            ] {
                std::fs::create_dir_all(&d).unwrap();
            }
            for d in [h.daemon_dir(), h.client_dir()] {
                crate::util::chmod(&d, 0o700);
                let d = d.display().to_string();
                let out = Command::new(ferry_bin())
                    .args(["keygen", "-C", "fanout-test", "--config-dir", &d])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ferry keygen in {d}");
            }
        }
        let source_key = std::fs::read_to_string(self.hosts[0].client_dir().join("id_ed25519.pub"))
            .expect("the source's client key");
        let mut known = String::new();
        for h in &self.hosts {
            let auth = h.daemon_dir().join("authorized_keys");
            std::fs::write(&auth, &source_key).unwrap();
            crate::util::chmod(&auth, 0o600);
            let host_key = std::fs::read_to_string(h.daemon_dir().join("id_ed25519.pub")).unwrap();
            known += &format!("{} {}\n", h.addr, host_key.trim());
        }
        std::fs::write(self.hosts[0].client_dir().join("known_hosts"), known).unwrap();
    }

    /// (Re)starts host `i`'s daemon with `env` added (e.g. the test hooks),
    /// waiting until it listens.
    pub fn start_daemon(&mut self, i: usize, env: &[(&str, &str)]) {
        self.stop_daemon(i);
        let h = &self.hosts[i];
        let listen = format!("{}:{DAEMON_PORT}", h.addr);
        let log = std::fs::File::create(h.dir.join("daemon.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns])
            .arg(ferry_bin())
            .args(["serve", "--listen", &listen, "--config-dir"])
            .arg(h.daemon_dir())
            .arg("--module")
            .arg(format!("data={}", h.data().display()))
            .env("FERRY_CACHE_DIR", h.dir.join("cache"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn ferry serve");
        // `ip netns exec` execs ferry in place: the child's pid is the daemon's
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            // keep reading so the daemon never blocks on stdout
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        let line = rx.recv_timeout(STEP).unwrap_or_default();
        if !line.starts_with("listening on ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon of host {i} ({}) did not start: {line}{}",
                h.addr,
                h.log()
            );
        }
        self.hosts[i].daemon = Some(child);
    }

    /// Kills host `i`'s daemon (SIGKILL) and reaps it.
    pub fn stop_daemon(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A command run inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// `ferry SUBCOMMAND` run on the source, with its client identity (and
    /// `known_hosts`, strictly: every destination's key is already there).
    pub fn ferry_on_source(&self, subcommand: &str) -> Command {
        let mut c = self.command(0, ferry_bin());
        c.arg(subcommand)
            .arg("--config-dir")
            .arg(self.hosts[0].client_dir())
            .args(["--host-key-check", "strict"])
            .env("FERRY_CACHE_DIR", self.hosts[0].dir.join("cache"))
            .stdin(Stdio::null());
        c
    }

    /// Panics with a clear message unless this build has `ferry fanout`
    /// (issue 21's engine): a fan-out test must fail, not skip, without it.
    pub fn require_fanout(&self) {
        let out = Command::new(ferry_bin())
            .args(["fanout", "--help"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`ferry fanout` is not in this build yet (the fan-out engine of issue 21): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
    }

    /// Starts `ferry fanout FLAGS SRC h1::data/DIR/ …` on the source to the
    /// destinations `hosts` (each gets SRC inside directory DIR, made if
    /// missing, as rsync would), its output going to files (read with
    /// [`FanoutRun::output`]).
    pub fn spawn_fanout(
        &self,
        flags: &[&str],
        src: &Path,
        hosts: &[usize],
        dir: &str,
    ) -> FanoutRun {
        let (out, err) = (
            self.root.path().join("fanout.out"),
            self.root.path().join("fanout.err"),
        );
        let child = self
            .ferry_on_source("fanout")
            .args(flags)
            .arg(src)
            .args(
                hosts
                    .iter()
                    .map(|&i| self.hosts[i].dest(&format!("{dir}/"))),
            )
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let most = read.clone();
        // what the source process has read (files and sockets), sampled until
        // it exits: /proc/PID/io's rchar
        std::thread::spawn(move || {
            let path = format!("/proc/{pid}/io");
            while let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(n) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("rchar: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    most.fetch_max(n, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FanoutRun {
            child,
            started: Instant::now(),
            out,
            err,
            read,
        }
    }

    /// Drops every packet arriving at host `i` (silence, not an error: what a
    /// hung host or a dead switch port looks like).
    pub fn blackhole(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        run(&[
            "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-j", "DROP",
        ]);
    }

    /// Changes host `i`'s link rate, both ways, mid-run if need be.
    pub fn set_rate(&self, i: usize, mbit: u32) {
        let h = &self.hosts[i];
        let rate = format!("{mbit}mbit");
        for (space, dev) in [(&h.ns, &h.veth), (&self.switch, &h.port)] {
            run(&[
                "ip", "netns", "exec", space, "tc", "qdisc", "change", "dev", dev, "root", "tbf",
                "rate", &rate, "burst", "256kb", "latency", "100ms",
            ]);
        }
    }

    /// Bytes the switch has sent down host `i`'s link so far (what reached
    /// the host: `tc -s` on the switch's end of its veth).
    pub fn bytes_into(&self, i: usize) -> u64 {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.switch,
            "tc",
            "-s",
            "qdisc",
            "show",
            "dev",
            &self.hosts[i].port,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("tc -s qdisc shows Sent BYTES")
    }

    /// The source file `name` (in the source's data dir) with `len` seeded
    /// pseudo-random bytes.
    pub fn source_file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let p = self.hosts[0].data().join(name);
        crate::util::write(&p, crate::util::random_bytes(len, seed));
        p
    }

    /// Whether `path` on host `i` holds exactly the bytes of `expected`.
    pub fn same_bytes(&self, i: usize, path: &str, expected: &Path) -> bool {
        let got = self.hosts[i].data().join(path);
        got.exists()
            && Command::new("cmp")
                .arg("-s")
                .arg(&got)
                .arg(expected)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
    }

    /// Removes `path` from every destination's data dir (between runs).
    pub fn clear(&self, path: &str) {
        for h in &self.hosts[1..] {
            let p = h.data().join(path);
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
    }

    /// T_1: one plain `ferry sync` of `src` from the source to host `i`
    /// (as `path`), checked byte for byte; its wall time and CPU busy.
    pub fn single_sync(&self, src: &Path, i: usize, path: &str) -> Measured {
        let cpu = CpuMeter::start();
        let started = Instant::now();
        let out = self
            .ferry_on_source("sync")
            .arg(src)
            .arg(self.hosts[i].dest(path))
            .output()
            .unwrap();
        let took = started.elapsed();
        let busy = cpu.busy();
        assert!(
            out.status.success(),
            "single-host ferry sync to {} failed ({:?}): {}",
            self.hosts[i].addr,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            self.same_bytes(i, path, src),
            "ferry sync to host {i}: bytes differ"
        );
        Measured { took, busy }
    }

    /// The baseline: `nc -l | tee FILE | nc NEXT` through `hosts` in order
    /// (the source sends with `nc`), timed until the last copy is complete,
    /// every copy checked byte for byte.
    pub fn relay_chain(&self, src: &Path, hosts: &[usize], path: &str) -> Measured {
        assert!(!hosts.is_empty());
        let mut listeners: Vec<Child> = Vec::new();
        for (k, &i) in hosts.iter().enumerate().rev() {
            let h = &self.hosts[i];
            let file = h.data().join(path);
            let script = match hosts.get(k + 1) {
                Some(&next) => format!(
                    "nc -l {} {RELAY_PORT} | tee '{}' | nc -N {} {RELAY_PORT}",
                    h.addr,
                    file.display(),
                    self.hosts[next].addr
                ),
                None => format!("nc -l {} {RELAY_PORT} > '{}'", h.addr, file.display()),
            };
            let child = self
                .command(i, "timeout")
                .args(["300", "sh", "-c", &script])
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            listeners.push(child);
            self.wait_listening(i, RELAY_PORT);
        }
        let cpu = CpuMeter::start();
        let started = Instant::now();
        let sent = self
            .command(0, "timeout")
            .args(["300", "nc", "-N", &self.hosts[hosts[0]].addr])
            .arg(RELAY_PORT.to_string())
            .stdin(std::fs::File::open(src).unwrap())
            .status()
            .unwrap();
        assert!(sent.success(), "nc from the source failed");
        for l in &mut listeners {
            let st = l.wait().unwrap();
            assert!(st.success(), "a relay in the chain failed: {st}");
        }
        let took = started.elapsed();
        let busy = cpu.busy();
        for &i in hosts {
            assert!(
                self.same_bytes(i, path, src),
                "relay chain: host {i}'s copy differs"
            );
        }
        Measured { took, busy }
    }

    /// Waits (bounded) until something in host `i` listens on `port`.
    fn wait_listening(&self, i: usize, port: u16) {
        let deadline = Instant::now() + STEP;
        let filter = format!("sport = :{port}");
        while Instant::now() < deadline {
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &self.hosts[i].ns,
                "ss",
                "-Hltn",
                &filter,
            ]);
            if !out.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nothing listens on port {port} in host {i}");
    }
}

impl Drop for FanoutNet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.stop_daemon(i);
        }
        // killing the namespaces' processes first lets `netns del` free them
        for h in &self.hosts {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            try_run(&["ip", "netns", "del", &h.ns]);
        }
        try_run(&["ip", "netns", "del", &self.switch]);
    }
}

/// A running `ferry fanout`; killed on drop.
pub struct FanoutRun {
    child: Child,
    pub started: Instant,
    out: PathBuf,
    err: PathBuf,
    /// The most the process had read (rchar) at the last sample.
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FanoutRun {
    /// Waits at most `limit` for it to end; `None` if it is still running.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        crate::util::wait_for(&mut self.child, limit)
    }
    /// Whether it is still running (not yet exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// What it printed so far: stdout, then stderr.
    pub fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read(&self.out), read(&self.err))
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Bytes the source process read (files and sockets) by its last sample,
    /// taken every 20 ms while it ran.
    pub fn source_read(&self) -> u64 {
        self.read.load(Ordering::SeqCst)
    }
    /// The job id it printed (the `"job"` field of `--json` output, or the
    /// first 32-hex-digit word), for `--resume`.
    pub fn job_id(&self) -> Option<String> {
        let text = self.output();
        if let Some(at) = text.find("\"job\"") {
            let rest = text[at + 5..].trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix('"').unwrap_or(rest);
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !id.is_empty() {
                return Some(id);
            }
        }
        text.split(|c: char| !c.is_ascii_hexdigit())
            .find(|w| w.len() == 32)
            .map(str::to_string)
    }
}

impl Drop for FanoutRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run's wall time and how busy the machine's CPUs were meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub took: Duration,
    /// Fraction of all CPU time not idle (iowait counts as idle).
    pub busy: f64,
}

/// Above this CPU busy fraction a time ratio measures the CPU, not the links.
pub const CPU_BOUND: f64 = 0.85;

impl Measured {
    pub fn cpu_bound(&self) -> bool {
        self.busy > CPU_BOUND
    }
}

/// CPU busy over an interval, from the first line of /proc/stat.
pub struct CpuMeter {
    start: (u64, u64),
}

/// (total, idle incl. iowait) jiffies since boot.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user)
    let total = v.iter().take(8).sum();
    (total, v[3] + v.get(4).copied().unwrap_or(0))
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter { start: cpu_times() }
    }
    /// The busy fraction since `start`.
    pub fn busy(&self) -> f64 {
        let (t, i) = cpu_times();
        let (dt, di) = (t - self.start.0, i - self.start.1);
        if dt == 0 {
            0.0
        } else {
            1.0 - di as f64 / dt as f64
        }
    }
}

/// Watches destination paths and records when each first holds the whole
/// expected length (what atomic publish makes visible at the final path).
pub struct Arrivals {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Option<Duration>>>>,
}

impl Arrivals {
    /// Polls `paths` every 25 ms from now on.
    pub fn watch(paths: Vec<PathBuf>, len: u64) -> Arrivals {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = vec![None; paths.len()];
            // one last look after the stop: a host that published within the
            // last poll interval is seen (at the stop, a late time, never an
            // early one)
            loop {
                let stopping = flag.load(Ordering::SeqCst);
                for (k, p) in paths.iter().enumerate() {
                    if seen[k].is_none() && std::fs::metadata(p).map(|m| m.len()).ok() == Some(len)
                    {
                        seen[k] = Some(started.elapsed());
                    }
                }
                if stopping || seen.iter().all(Option::is_some) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            seen
        });
        Arrivals {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops watching; when each path arrived, measured from `watch`.
    pub fn finish(mut self) -> Vec<Option<Duration>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }

    /// Whether every path has arrived already (without stopping).
    pub fn done(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.is_finished())
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
