//! Bad links: a daemon inside a network namespace this test creates, reached
//! over a veth pair on a private /30 that exists only between the test's own
//! interfaces. The link is cut with `ip link set down` and brought back, made
//! lossy with iptables' statistic match, made to duplicate packets with its TEE
//! target, and made long with a delay relay (this kernel has no netem).
//! Needs root (the README's test command runs these).

mod util;
use std::process::Command;
use std::time::{Duration, Instant};
use util::*;

/// A namespace with one veth link to this one; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_addr: String,
    /// A drop rule this test added to the host's INPUT chain (for its own
    /// interface only), removed on drop.
    host_rule: Option<Vec<String>>,
    peer_addr: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip(8)");
    assert!(st.success(), "ip {}", args.join(" "));
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let id = std::process::id() % 10_000;
        let name = format!("ferry-{tag}-{id}");
        let host_if = format!("fh{tag}{id}");
        let ns_if = format!("fn{tag}{id}");
        // a /30 of its own per namespace: the tag picks a third of the range
        let part = match tag {
            "a" => 0,
            "b" => 70,
            _ => 140,
        };
        let third = (std::process::id() % 60) + 20 + part;
        let (host_addr, peer_addr) = (format!("10.213.{third}.1"), format!("10.213.{third}.2"));
        // leftovers from an earlier crashed run
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            host_rule: None,
            host_addr: host_addr.clone(),
            peer_addr: peer_addr.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{peer_addr}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Drops `loss` of the packets each way and duplicates `dup` of those
    /// leaving the namespace. Drops are counted on arrival, where packets are
    /// one MTU each (netfilter sees a sender's TCP output before it is cut into
    /// packets), so offloads are turned off on both ends of the link.
    fn make_bad(&mut self, loss: &str, dup: &str) {
        for (dev, inside) in [(self.host_if.clone(), false), (self.ns_if.clone(), true)] {
            let cmd = [
                "ethtool", "-K", &dev, "tso", "off", "gso", "off", "gro", "off",
            ];
            if inside {
                self.exec(&cmd);
            } else {
                let st = Command::new(cmd[0])
                    .args(&cmd[1..])
                    .status()
                    .expect("ethtool");
                assert!(st.success(), "ethtool");
            }
        }
        let drop = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            loss,
            "-j",
            "DROP",
        ];
        let mut inside = vec!["iptables", "-A", "INPUT"];
        inside.extend(drop);
        self.exec(&inside);
        let mut rule: Vec<String> = vec!["INPUT".into(), "-i".into(), self.host_if.clone()];
        rule.extend(drop.iter().map(|s| s.to_string()));
        let st = Command::new("iptables")
            .arg("-A")
            .args(&rule)
            .status()
            .expect("iptables");
        assert!(st.success(), "iptables on the host");
        self.host_rule = Some(rule);
        self.exec(&[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            dup,
            "-j",
            "TEE",
            "--gateway",
            &self.host_addr,
        ]);
    }

    /// Packets matched so far by the rule of `table`/`chain` (inside the
    /// namespace, or on the host) whose line mentions `needle`.
    fn rule_packets(&self, inside: bool, table: &str, chain: &str, needle: &str) -> u64 {
        let mut cmd = Command::new(if inside { "ip" } else { "iptables" });
        if inside {
            cmd.args(["netns", "exec", &self.name, "iptables"]);
        }
        let out = cmd
            .args(["-t", table, "-L", chain, "-v", "-n", "-x"])
            .output()
            .expect("iptables");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().skip(2).find(|l| l.contains(needle));
        line.and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(rule) = self.host_rule.take() {
            let _ = Command::new("iptables").arg("-D").args(&rule).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn setup(tag: &str) -> Option<(Netns, Daemon, tempfile::TempDir)> {
    if !root_available() {
        return None;
    }
    let ns = Netns::create(tag);
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    // keys and config as Daemon::start makes them, then the daemon inside the namespace
    let probe = Daemon::start(&[("data", &module, false)], "", &[]);
    let dir = std::mem::replace(&mut { probe }.dir, tmp());
    let listen = format!("{}:7420", ns.peer_addr);
    let d = Daemon::spawn_in(
        dir,
        &[("data", &module, false)],
        &[],
        &["ip", "netns", "exec", &ns.name],
        &listen,
    )
    .expect("daemon in the namespace");
    Some((ns, d, t))
}

#[test]
fn a_link_cut_for_five_seconds_mid_transfer_still_finishes() {
    let Some((ns, d, t)) = setup("a") else { return };
    let src = t.path().join("big");
    write(&src, random_bytes(48 << 20, 5));
    let flags = ["--streams", "1", "--bwlimit", "16M", "--timeout", "20"];
    // 48 MiB at 16 MiB/s: about 3 s, so the cut at 1.2 s falls mid-transfer
    let mut client = sync_command(&d, &flags, &src, d.url("data/big"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        client.try_wait().unwrap().is_none(),
        "finished before the link was cut"
    );
    ns.link(false);
    std::thread::sleep(Duration::from_secs(5));
    ns.link(true);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(t.path().join("module/big")).unwrap(),
        random_bytes(48 << 20, 5)
    );
}

#[test]
fn a_link_down_longer_than_the_timeout_is_a_clear_network_error() {
    let Some((ns, d, t)) = setup("b") else { return };
    let src = t.path().join("big");
    write(&src, random_bytes(48 << 20, 6));
    let flags = ["--streams", "1", "--bwlimit", "16M", "--timeout", "3"];
    let child = sync_command(&d, &flags, &src, d.url("data/big"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    ns.link(false);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    ns.link(true);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gave up after retrying"), "{err}");
    assert!(err.contains("retrying in"), "no retry was attempted: {err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        !t.path().join("module/big").exists(),
        "a partial file was published"
    );
}

/// `ferry sync` with these flags from `src` to `dest`, trusting daemon `d`.
fn sync_command(
    d: &Daemon,
    flags: &[&str],
    src: impl AsRef<std::ffi::OsStr>,
    dest: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let mut c = Command::new(ferry_bin());
    c.arg("sync").args(flags).args(d.client_args());
    c.arg(src).arg(dest);
    c
}

/// 100 ms round trip, 5% of packets lost each way, 1% duplicated; TCP's own
/// retransmissions deliver segments out of order behind every loss. 32 MiB
/// here; FERRY_LONG=1 moves the 256 MiB.
#[test]
fn a_long_lossy_duplicating_link_delivers_every_byte() {
    let Some((mut ns, d, t)) = setup("c") else {
        return;
    };
    ns.make_bad("0.05", "0.01");
    let size = if std::env::var_os("FERRY_LONG").is_some() {
        256 << 20
    } else {
        32 << 20
    };
    let src = t.path().join("big");
    write(&src, random_bytes(size, 7));
    // 50 ms each way; up to 8 MiB held per direction (~1.3 Gbit/s × 50 ms)
    let relay = delay_relay(d.addr, Duration::from_millis(50), 8 << 20, 64);
    let started = Instant::now();
    let url = format!("ferry://{relay}/data/big");
    let out = sync_command(&d, &["--streams", "1"], &src, &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} MiB over the lossy link in {:?}",
        size >> 20,
        started.elapsed()
    );
    let got = std::fs::read(t.path().join("module/big")).unwrap();
    assert!(
        got == random_bytes(size, 7),
        "bytes differ after the lossy link"
    );
    // and back, so that the daemon's sending side crosses the bad link too
    // into a directory of its own: beside the source, the receiver would
    // rebuild it from the source as a similar file and move almost nothing
    let back = t.path().join("pulled/big");
    std::fs::create_dir(t.path().join("pulled")).unwrap();
    let out = sync_command(&d, &["--streams", "1"], &url, &back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&back).unwrap() == got,
        "bytes differ on the way back"
    );
    let (lost_in, lost_out, doubled) = (
        ns.rule_packets(true, "filter", "INPUT", "statistic"),
        ns.rule_packets(false, "filter", "INPUT", &ns.host_if),
        ns.rule_packets(true, "mangle", "POSTROUTING", "TEE"),
    );
    eprintln!("packets dropped: {lost_in} in, {lost_out} out; duplicated: {doubled}");
    assert!(
        lost_in > 0 && lost_out > 0 && doubled > 0,
        "the link was not bad"
    );
}
