//! Bad links: a daemon inside a network namespace this test creates, reached
//! over a veth pair on a private /30 that exists only between the test's own
//! interfaces. The link is cut with `ip link set down` and brought back.
//! Needs root (the README's test command runs these).

mod util;
use std::process::Command;
use std::time::{Duration, Instant};
use util::*;

/// A namespace with one veth link to this one; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    pub peer_addr: String,
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
        // a /30 of its own per namespace: the tag picks a half of the range
        let half = if tag == "a" { 0 } else { 100 };
        let third = (std::process::id() % 100) + 20 + half;
        let (host_addr, peer_addr) = (format!("10.213.{third}.1"), format!("10.213.{third}.2"));
        // leftovers from an earlier crashed run
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
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

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
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
    let mut args = vec![
        "sync".to_string(),
        "--streams".into(),
        "1".into(),
        "--bwlimit".into(),
        "16M".into(),
        "--timeout".into(),
        "20".into(),
    ];
    args.extend(d.client_args());
    args.extend([src.display().to_string(), d.url("data/big")]);
    let client = Command::new(ferry_bin()).args(&args).output();
    let cutter = std::thread::spawn({
        let host_if = ns.host_if.clone();
        move || {
            std::thread::sleep(Duration::from_millis(1200));
            ip(&["link", "set", &host_if, "down"]);
            std::thread::sleep(Duration::from_secs(5));
            ip(&["link", "set", &host_if, "up"]);
        }
    });
    let out = client.unwrap();
    cutter.join().unwrap();
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
    let mut args = vec![
        "sync".to_string(),
        "--streams".into(),
        "1".into(),
        "--bwlimit".into(),
        "16M".into(),
        "--timeout".into(),
        "3".into(),
    ];
    args.extend(d.client_args());
    args.extend([src.display().to_string(), d.url("data/big")]);
    let child = Command::new(ferry_bin())
        .args(&args)
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
