//! `ferry fanout` end to end: the real binary as the source, several real
//! `ferry serve` daemons on 127.0.0.1 as the chain.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use util::*;

/// N daemons that trust one client key, each with a module `m`.
struct Chain {
    client: tempfile::TempDir,
    hosts: Vec<Daemon>,
}

impl Chain {
    fn start(n: usize) -> Chain {
        Chain::start_with(n, &|_| vec![])
    }

    /// `wrapper(i)`: the command host i's daemon runs under (e.g. `env K=V`).
    fn start_with(n: usize, wrapper: &dyn Fn(usize) -> Vec<String>) -> Chain {
        let client = tmp();
        ok(ferry([
            "keygen",
            "-C",
            "fanout-client",
            "--config-dir",
            &client.path().display().to_string(),
        ]));
        let hosts = (0..n)
            .map(|i| Chain::spawn(&client, i, wrapper(i), "127.0.0.1:0", None))
            .collect();
        Chain { client, hosts }
    }

    fn spawn(
        client: &tempfile::TempDir,
        i: usize,
        wrapper: Vec<String>,
        listen: &str,
        reuse: Option<tempfile::TempDir>,
    ) -> Daemon {
        let dir = reuse.unwrap_or_else(|| Chain::prepare(client, i, tmp()));
        let module = dir.path().join("m");
        let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        Daemon::spawn_in(dir, &[("m", &module, false)], &[], &w, listen)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Makes `dir` a daemon's: its key directory, authorized_keys, module.
    fn prepare(client: &tempfile::TempDir, i: usize, dir: tempfile::TempDir) -> tempfile::TempDir {
        let daemon = dir.path().join("daemon");
        std::fs::create_dir(&daemon).unwrap();
        chmod(&daemon, 0o700);
        std::fs::create_dir(dir.path().join("m")).unwrap();
        let public = std::fs::read_to_string(client.path().join("id_ed25519.pub")).unwrap();
        // host 90+ is a stranger to the client key (see the refusal test)
        let keys = if i >= 90 { String::new() } else { public };
        write(&daemon.join("authorized_keys"), keys);
        chmod(&daemon.join("authorized_keys"), 0o600);
        dir
    }

    fn dest(&self, i: usize) -> String {
        format!("ferry://{}/m/out", self.hosts[i].addr)
    }

    fn out(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.path().join("m/out")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--config-dir".into(),
            self.client.path().display().to_string(),
            "--host-key-check".into(),
            "accept-new".into(),
        ]
    }

    /// `ferry fanout ARGS… SRC DEST…` (all hosts) with extra environment.
    fn run(&self, flags: &[&str], src: &Path, env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(ferry_bin());
        c.arg("fanout").args(self.args()).args(flags).arg(src);
        for i in 0..self.hosts.len() {
            c.arg(self.dest(i));
        }
        for (k, v) in env {
            c.env(k, v);
        }
        run_bounded(c)
    }
}

/// Runs a command, killing it if it takes over two minutes.
fn run_bounded(mut c: Command) -> Output {
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    panic!("ferry fanout did not finish in 2 minutes: {}", stderr(&o));
}

fn json(o: &Output) -> serde_json::Value {
    let text = stdout(o);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const MIB: usize = 1 << 20;

/// A tree with a large file, small files of several modes, an empty file
/// and nested directories, with set mtimes.
fn tree(root: &Path, big: usize) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    write(&src.join("model.bin"), random_bytes(big, 7));
    write(&src.join("sub/config.json"), b"{\"layers\": 32}\n");
    write(&src.join("sub/deeper/empty"), b"");
    write(&src.join("sub/deeper/odd"), random_bytes(4 * MIB + 1, 3));
    chmod(&src.join("sub/config.json"), 0o600);
    chmod(&src.join("sub/deeper/odd"), 0o755);
    for (i, p) in [
        "model.bin",
        "sub/config.json",
        "sub/deeper/empty",
        "sub/deeper/odd",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&src.join(p), 1_600_000_000 + i as i64 * 1000);
    }
    for (i, p) in ["sub/deeper", "sub"].iter().enumerate() {
        set_mtime(&src.join(p), 1_500_000_000 + i as i64);
    }
    src
}

/// `SRC/` as rsync means it: the directory's contents.
fn contents(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}/", p.display()))
}

#[test]
fn a_tree_and_a_64_mib_file_reach_four_daemons_byte_identical_read_once() {
    let chain = Chain::start(4);
    let work = tmp();
    let src = tree(work.path(), 64 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["kind"], "fanout");
    assert_eq!(v["exit_code"], 0);
    let total = v["total_size"].as_u64().unwrap();
    assert_eq!(total, (64 * MIB + 4 * MIB + 1 + 15) as u64);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 4);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done", "{h}");
        assert_eq!(h["host"], chain.dest(i).as_str());
        assert!(h["error"].is_null());
        assert_eq!(h["bytes_received"].as_u64().unwrap(), total, "{h}");
        assert_same_tree(&src, &chain.out(i), true);
    }
    // the source read each file once: its file reads are the tree's size,
    // and all it read at all (sockets and key files too) is not much more
    assert_eq!(v["source_read_bytes"].as_u64().unwrap(), total);
    let rchar = v["source_rchar"].as_u64().unwrap();
    assert!(rchar <= total + 8 * MIB as u64, "read {rchar} for {total}");
    // no temporary file is left anywhere
    for i in 0..4 {
        assert!(!chain.out(i).join(".ferry-partial").exists());
        assert!(!chain.out(i).join("sub/deeper/.ferry-partial").exists());
    }
    // the job id is the record --resume finds
    let job = v["job"].as_str().unwrap();
    assert_eq!(job.len(), 32);
    assert!(chain
        .client
        .path()
        .join(format!("fanout/{job}.json"))
        .exists());
}

#[test]
fn text_output_prints_the_job_id_and_a_single_file_lands_in_the_directory() {
    let chain = Chain::start(2);
    let work = tmp();
    let f = work.path().join("weights.bin");
    write(&f, random_bytes(MIB + 5, 1));
    let o = chain.run(&["-v"], &f, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("job "), "{out}");
    assert!(out.contains("done"), "{out}");
    for i in 0..2 {
        assert_eq!(
            std::fs::read(chain.out(i).join("weights.bin")).unwrap(),
            std::fs::read(&f).unwrap()
        );
    }
}

#[test]
fn a_bit_flipped_by_a_middle_hop_is_never_committed_and_is_sent_again() {
    // host 1 damages the 2nd piece it forwards (to host 2)
    let chain = Chain::start_with(4, &|i| {
        if i == 1 {
            vec![
                "env".into(),
                "FERRY_TEST_HOOKS=1".into(),
                "FERRY_TEST_FANOUT_CORRUPT=2".into(),
            ]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 24 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    // host 2 got the damaged piece and refused it; host 3, fed the same
    // bytes by host 2's cut-through, refused it too; hosts 0 and 1 never saw it
    assert_eq!(hosts[0]["pieces_refused"], 0);
    assert_eq!(hosts[1]["pieces_refused"], 0);
    assert!(hosts[2]["pieces_refused"].as_u64().unwrap() >= 1, "{v}");
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done");
        assert_same_tree(&src, &chain.out(i), true);
    }
    assert!(chain.hosts[2]
        .log()
        .contains("did not match its signed hash"));
}

#[test]
fn the_corrupt_hook_needs_the_test_switch_too() {
    let chain = Chain::start_with(3, &|i| {
        if i == 0 {
            vec!["env".into(), "FERRY_TEST_FANOUT_CORRUPT=1".into()]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 9 * MIB);
    let v = json(&chain.run(&["-a", "--json"], &contents(&src), &[]));
    for h in v["hosts"].as_array().unwrap() {
        assert_eq!(h["state"], "done");
        assert_eq!(h["pieces_refused"], 0, "{v}");
    }
}

#[test]
fn a_daemon_that_does_not_know_the_client_key_is_refused_cleanly_and_named() {
    let client = tmp();
    ok(ferry([
        "keygen",
        "-C",
        "c",
        "--config-dir",
        &client.path().display().to_string(),
    ]));
    // hosts 0 and 2 trust the client; host 1 (index 90+) trusts no one
    let hosts = vec![
        Chain::spawn(&client, 0, vec![], "127.0.0.1:0", None),
        Chain::spawn(&client, 90, vec![], "127.0.0.1:0", None),
        Chain::spawn(&client, 2, vec![], "127.0.0.1:0", None),
    ];
    let chain = Chain { client, hosts };
    let work = tmp();
    let src = tree(work.path(), 5 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(24), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{} missed the job", chain.dest(1))),
        "{err}"
    );
    assert!(err.contains("not authorized"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["state"], "missed");
    assert!(hosts[1]["error"]
        .as_str()
        .unwrap()
        .contains("not authorized"));
    assert_same_tree(&src, &chain.out(0), true);
    assert_same_tree(&src, &chain.out(2), true);
    assert!(
        !chain.out(1).exists(),
        "nothing written on the refusing host"
    );
}

#[test]
fn bad_usage_is_one_clear_line_and_exit_1() {
    let work = tmp();
    let o = ferry(["fanout", "onlyone"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("usage: ferry fanout"));
    let f = work.path().join("f");
    write(&f, b"x");
    let o = ferry(["fanout".as_ref(), f.as_os_str(), "host:/path".as_ref()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("must be a ferry daemon"),
        "{}",
        stderr(&o)
    );
    let o = ferry(["fanout", "--stall-timeout", "soon", "a", "h::m"]);
    assert_eq!(o.status.code(), Some(1));
    let o = ferry(["fanout", "--resume", "00000000000000000000000000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no record of fan-out job"),
        "{}",
        stderr(&o)
    );
    let help = stdout(&ferry(["fanout", "--help"]));
    assert!(help.contains("24 the job is partial"), "{help}");
    assert!(help.contains("--stall-timeout"));
}

/// Bytes allocated on disk for `p` (its temporary file is made at full
/// length, sparse: the blocks say how much has been written).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Waits until host `i` has written at least `bytes` of `model.bin`.
fn wait_written(chain: &Chain, i: usize, bytes: u64) {
    let partial = chain.out(i).join(".ferry-partial/model.bin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while allocated(&partial) < bytes {
        assert!(
            Instant::now() < deadline,
            "host {i} never got {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `ferry fanout` in the background, paced by the test hook so that
/// 64 MiB take about 2.5 s on loopback.
fn spawn_paced(chain: &Chain, flags: &[&str], src: &Path) -> std::process::Child {
    let mut c = Command::new(ferry_bin());
    c.arg("fanout").args(chain.args()).args(flags).arg(src);
    for i in 0..chain.hosts.len() {
        c.arg(chain.dest(i));
    }
    c.env("FERRY_TEST_HOOKS", "1")
        .env("FERRY_TEST_FANOUT_PACE_MS", "10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: std::process::Child) -> Output {
    if wait_for(&mut child, Duration::from_secs(120)).is_none() {
        let _ = child.kill();
        panic!("ferry fanout did not finish in 2 minutes");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_middle_host_killed_half_way_is_bypassed_and_resume_repairs_it_by_delta() {
    let mut chain = Chain::start(4);
    let work = tmp();
    let src = tree(work.path(), 64 * MIB);
    let child = spawn_paced(&chain, &["-a", "--json"], &contents(&src));
    wait_written(&chain, 1, 36 * MIB as u64);
    chain.hosts[1].kill9();
    let o = finish(child);
    assert_eq!(o.status.code(), Some(24), "{}", stderr(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["state"], "missed");
    assert!(stderr(&o).contains(&format!("{} missed the job", chain.dest(1))));
    for i in [0, 2, 3] {
        assert_eq!(hosts[i]["state"], "done", "{v}");
        assert_same_tree(&src, &chain.out(i), true);
    }
    // nothing wrong at any final path of the dead host: only whole files
    let dead_model = chain.out(1).join("model.bin");
    assert!(!dead_model.exists(), "a half-received file was published");
    // the daemon comes back on the same address; --resume repairs it,
    // sending only the pieces it lacks
    let addr = chain.hosts[1].addr.to_string();
    let dir = std::mem::replace(&mut chain.hosts[1].dir, tmp());
    chain.hosts[1] = Chain::spawn(&chain.client, 1, vec![], &addr, Some(dir));
    let job = v["job"].as_str().unwrap().to_string();
    let mut c = Command::new(ferry_bin());
    c.arg("fanout")
        .args(chain.args())
        .args(["--json", "--resume", &job]);
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = json(&o);
    let hosts = r["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "only the missed host runs again: {r}");
    assert_eq!(hosts[0]["host"], chain.dest(1).as_str());
    let moved = hosts[0]["bytes_received"].as_u64().unwrap();
    let total = r["total_size"].as_u64().unwrap();
    assert!(
        (moved as f64) < 0.6 * total as f64,
        "resume moved {moved} of {total}"
    );
    assert_same_tree(&src, &chain.out(1), true);
    // a second resume has nothing to do
    let mut c = Command::new(ferry_bin());
    c.arg("fanout").args(chain.args()).args(["--resume", &job]);
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("every host has it already"));
}

#[test]
fn a_hung_middle_host_is_bypassed_within_the_stall_timeout() {
    let chain = Chain::start(3);
    let work = tmp();
    let src = tree(work.path(), 64 * MIB);
    let started = Instant::now();
    let child = spawn_paced(
        &chain,
        &["-a", "--json", "--stall-timeout", "2s"],
        &contents(&src),
    );
    wait_written(&chain, 1, 24 * MIB as u64);
    let pid = chain.hosts[1].pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let o = finish(child);
    let took = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(o.status.code(), Some(24), "{}", stderr(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["state"], "missed");
    let why = hosts[1]["error"].as_str().unwrap();
    assert!(why.contains("stall timeout"), "{why}");
    for i in [0, 2] {
        assert_eq!(hosts[i]["state"], "done", "{v}");
        assert_same_tree(&src, &chain.out(i), true);
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn with_every_host_holding_v1_only_the_changed_5_percent_crosses_each_link() {
    let chain = Chain::start(3);
    let work = tmp();
    let src = tree(work.path(), 64 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // v2: 5% of the model rewritten, in two places, one of them across a
    // piece boundary
    let model = src.join("model.bin");
    let mut data = std::fs::read(&model).unwrap();
    let edit = data.len() / 40; // 2.5% each
    let fresh = random_bytes(2 * edit, 99);
    data[5 * MIB..5 * MIB + edit].copy_from_slice(&fresh[..edit]);
    let at = 40 * MIB - edit / 2;
    data[at..at + edit].copy_from_slice(&fresh[edit..]);
    write(&model, &data);
    set_mtime(&model, 1_700_000_000);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    for (i, h) in v["hosts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["state"], "done");
        let moved = h["bytes_received"].as_u64().unwrap() as f64;
        assert!(
            moved < 0.07 * (64 * MIB) as f64,
            "host {i} received {moved} bytes for a 5% change: {v}"
        );
        assert_same_tree(&src, &chain.out(i), true);
    }
}

/// A host slow to tell what it holds (its answers to the source's
/// questions, a window at a time, come after the stall timeout) is waited
/// for once, then no more: the others still get only the difference, and
/// it gets what it lacks whole (its pieces fail their check and are sent
/// again). It had cost every window the stall timeout and every host the
/// delta: each window went whole to all (seen failing: every host received
/// ~67 MB of the 64 MiB file).
#[test]
fn a_host_slow_to_answer_hints_is_waited_for_once_and_the_others_keep_the_delta() {
    let chain = Chain::start_with(3, &|i| {
        if i == 1 {
            vec![
                "env".into(),
                "FERRY_TEST_HOOKS=1".into(),
                "FERRY_TEST_FANOUT_HINTS_DELAY_MS=6000".into(),
            ]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 64 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // v2: 5% rewritten in place, and 64 KiB inserted at 40 MiB (what
    // follows is shifted: named by reference, which the slow host cannot
    // resolve without having answered)
    let model = src.join("model.bin");
    let mut data = std::fs::read(&model).unwrap();
    let edit = data.len() / 20;
    data[5 * MIB..5 * MIB + edit].copy_from_slice(&random_bytes(edit, 98));
    let tail = data.split_off(40 * MIB);
    data.extend_from_slice(&random_bytes(64 << 10, 97));
    data.extend_from_slice(&tail);
    write(&model, &data);
    set_mtime(&model, 1_700_000_000);
    let started = Instant::now();
    let o = chain.run(
        &["-a", "--json", "--stall-timeout", "2s"],
        &contents(&src),
        &[],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let size = data.len() as f64;
    for (i, h) in v["hosts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["state"], "done", "host {i}: {v}");
        assert_same_tree(&src, &chain.out(i), true);
        let moved = h["bytes_received"].as_u64().unwrap() as f64;
        eprintln!("host {i} received {moved} bytes ({took:?} in all)");
        if i != 1 {
            assert!(
                moved < 0.07 * size,
                "host {i} received {moved} bytes of {size} for a 5% change beside a host slow to answer: {v}"
            );
        }
    }
}

#[test]
fn a_slow_host_is_moved_to_the_tail_and_the_others_do_not_wait_for_it() {
    // host 1 takes 80 ms per 256 KiB frame it receives: ~15 s for 48 MiB
    let chain = Chain::start_with(4, &|i| {
        if i == 1 {
            vec![
                "env".into(),
                "FERRY_TEST_HOOKS=1".into(),
                "FERRY_TEST_FANOUT_RECV_PACE_MS=80".into(),
            ]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 48 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["moved_to_tail"], true, "{v}");
    let slow = hosts[1]["seconds"].as_f64().unwrap();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done", "{v}");
        assert_same_tree(&src, &chain.out(i), true);
        if i != 1 {
            assert_eq!(h["moved_to_tail"], false);
            let t = h["seconds"].as_f64().unwrap();
            assert!(
                t < 0.7 * slow,
                "host {i} took {t} s, the slow one {slow} s: {v}"
            );
        }
    }
}

/// Issue 21 (session 22): when a slow host is moved, its predecessor links
/// to the host after it and replays the live stream from where that host
/// stands, so that it and every host after it take each byte once. Before,
/// the host after the moved one had the start of its current piece from
/// the moved host and the rest from the new predecessor, refused the piece
/// with a hole in it, and so did every host after it (each +2.5 MiB here),
/// each waiting for its predecessor to have the piece again: one piece's
/// time more per host, a stagger at 200 Mbit/s (bench/NOTES.md §43).
#[test]
fn after_a_move_the_hosts_behind_it_take_each_byte_once_and_refuse_nothing() {
    // host 1 takes 80 ms per 256 KiB frame it receives; four hosts behind it
    let chain = Chain::start_with(6, &|i| {
        if i == 1 {
            vec![
                "env".into(),
                "FERRY_TEST_HOOKS=1".into(),
                "FERRY_TEST_FANOUT_RECV_PACE_MS=80".into(),
            ]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 48 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    let total = v["total_size"].as_u64().unwrap();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done", "{v}");
        assert_same_tree(&src, &chain.out(i), true);
        assert_eq!(h["moved_to_tail"], i == 1, "host {i}: {v}");
    }
    for (i, h) in hosts.iter().enumerate().skip(2) {
        let got = h["bytes_received"].as_u64().unwrap();
        assert_eq!(
            h["pieces_refused"], 0,
            "host {i} refused a piece after the move: {v}"
        );
        // (a frame of slack; before the fix: +2.5 MiB on each)
        assert!(
            got <= total + 256 * 1024,
            "host {i} received {got} bytes for {total}: {v}"
        );
        let log = chain.hosts[i].log();
        assert!(
            !log.contains("did not match its signed hash"),
            "host {i} refused a piece:\n{log}"
        );
    }
}

/// Issue 21 (bench/NOTES.md §45): a moved host whose new order comes late
/// (after its forwarder's 1 s wait for an order) saw its successor cut the
/// link, as from a dead host, bypassed it and linked to the host after it,
/// cutting that host's healthy link; the old successor's own report of it
/// then matched the order and a healthy host ended missed (exit 24). Now
/// the host that takes a new upstream tells the old one so, and the old one
/// waits for its order instead.
#[test]
fn a_host_moved_whose_order_comes_late_leaves_every_healthy_host_done() {
    // host 1 takes 80 ms per 256 KiB frame and each new order 2 s late
    let chain = Chain::start_with(6, &|i| {
        if i == 1 {
            vec![
                "env".into(),
                "FERRY_TEST_HOOKS=1".into(),
                "FERRY_TEST_FANOUT_RECV_PACE_MS=80".into(),
                "FERRY_TEST_FANOUT_ORDER_DELAY_MS=2000".into(),
            ]
        } else {
            vec![]
        }
    });
    let work = tmp();
    let src = tree(work.path(), 96 * MIB);
    // the source paced to 8 ms a frame (32 MB/s): the healthy hosts are
    // still taking the stream ~2.3 s after the move, when host 1's wait (1 s)
    // and then host 2's (1 s) are over
    let paced = [
        ("FERRY_TEST_HOOKS", "1"),
        ("FERRY_TEST_FANOUT_PACE_MS", "8"),
    ];
    let o = chain.run(&["-a", "--json"], &contents(&src), &paced);
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[1]["moved_to_tail"], true, "the premise: {v}");
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done", "host {i}: {v}");
        assert_same_tree(&src, &chain.out(i), true);
    }
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // the path under test ran: host 1's forwarder took host 2's cut for
    // the word `Fed` and waited for its own order
    let log = chain.hosts[1].log();
    assert!(
        log.contains("another host feeds it now; waiting for our new order"),
        "host 1 never took the Fed branch:\n{log}"
    );
}

#[test]
#[ignore = "timing on loopback: when the CPU bounds the whole chain near the 80 ms host's own pace (load ~10 on 2 cores: healthy hosts at 6.8 s for 16 MiB) that host keeps pace, is rightly not moved, and the test's premise fails; passed 1 of 2 runs so in session 21; run with --ignored"]
fn a_host_moved_after_another_is_fed_by_it_and_every_host_gets_everything() {
    // host 2 is the slowest (160 ms per 256 KiB frame), host 1 slow (80 ms):
    // both are moved, one after the other (which first depends on when host
    // 1's queue fills); the one moved later goes ahead of the one moved
    // earlier and feeds it from what it commits (a moved host is fed only
    // re-sent pieces); the old tail feeds the first of them.
    let chain = Chain::start_with(5, &|i| match i {
        1 | 2 => vec![
            "env".into(),
            "FERRY_TEST_HOOKS=1".into(),
            format!("FERRY_TEST_FANOUT_RECV_PACE_MS={}", 80 * i),
        ],
        _ => vec![],
    });
    let work = tmp();
    let src = tree(work.path(), 16 * MIB);
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stderr(&o), stdout(&o));
    let v = json(&o);
    let hosts = v["hosts"].as_array().unwrap();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["state"], "done", "host {i}: {v}");
        assert_same_tree(&src, &chain.out(i), true);
    }
    assert_eq!(hosts[1]["moved_to_tail"], true, "{v}");
    assert_eq!(hosts[2]["moved_to_tail"], true, "{v}");
    let slowest = hosts[1]["seconds"]
        .as_f64()
        .unwrap()
        .min(hosts[2]["seconds"].as_f64().unwrap());
    for i in [0, 3, 4] {
        assert_eq!(hosts[i]["moved_to_tail"], false, "{v}");
        let t = hosts[i]["seconds"].as_f64().unwrap();
        assert!(
            t < 0.7 * slowest,
            "host {i} took {t} s, the slow ones {slowest} s or more: {v}"
        );
    }
}

/// A hop's messages name paths relative to its module, never the daemon's
/// server-side path: a host that cannot write (an immutable directory,
/// which stops root too) is reported missed with `out/…`, as a plain push
/// to a daemon reports it (it said "/tmp/…/m/out/w.bin: …").
#[test]
fn a_host_that_cannot_write_is_named_without_its_server_side_path() {
    let chain = Chain::start(2);
    let out = chain.out(1);
    std::fs::create_dir_all(&out).unwrap();
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        return; // a filesystem without immutable files (tmpfs)
    }
    let work = tmp();
    let f = work.path().join("w.bin");
    write(&f, random_bytes(MIB, 2));
    let o = chain.run(&[], &f, &[]);
    assert!(chattr("-i"));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(o.status.code(), Some(0), "{text}");
    let server_side = chain.hosts[1].dir.path().display().to_string();
    assert!(!text.contains(&server_side), "server path leaked: {text}");
    assert!(
        text.contains("out/w.bin: Operation not permitted"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(chain.out(0).join("w.bin")).unwrap(),
        std::fs::read(&f).unwrap()
    );
}

/// A resume of a job whose source changed since its first run is refused
/// in one line, exit 1, nothing sent: the hosts that have the job hold the
/// first version and a resume would give the others the new one. A record
/// from before the root was kept (none in it) still resumes.
#[test]
fn a_resume_after_the_source_changed_is_refused_and_nothing_is_mixed() {
    let mut chain = Chain::start(2);
    let work = tmp();
    let src = tree(work.path(), 5 * MIB);
    // host 1 is down for the first run: it misses the job
    let addr = chain.hosts[1].addr.to_string();
    chain.hosts[1].kill9();
    let o = chain.run(&["-a", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(24), "{}", stderr(&o));
    let job = json(&o)["job"].as_str().unwrap().to_string();
    assert_same_tree(&src, &chain.out(0), true);
    let dir = std::mem::replace(&mut chain.hosts[1].dir, tmp());
    chain.hosts[1] = Chain::spawn(&chain.client, 1, vec![], &addr, Some(dir));
    // the source changes: a new config
    let cfg = src.join("sub/config.json");
    write(&cfg, b"{\"layers\": 48}\n");
    let resume = || {
        let mut c = Command::new(ferry_bin());
        c.arg("fanout").args(chain.args()).args(["--resume", &job]);
        run_bounded(c)
    };
    let o = resume();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("the source changed since the job's first run"),
        "{err}"
    );
    assert!(err.contains("without --resume"), "{err}");
    assert!(!chain.out(1).exists(), "something was sent to host 1");
    assert_eq!(
        std::fs::read(chain.out(0).join("sub/config.json")).unwrap(),
        b"{\"layers\": 32}\n"
    );
    // a record from an older ferry (no root) resumes as before
    let record = chain
        .client
        .path()
        .join("fanout")
        .join(format!("{job}.json"));
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert!(r["root"].is_string(), "{r}");
    r.as_object_mut().unwrap().remove("root");
    write(&record, r.to_string());
    write(&cfg, b"{\"layers\": 32}\n");
    set_mtime(&cfg, 1_600_000_000 + 1000);
    let o = resume();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_same_tree(&src, &chain.out(1), true);
}

/// A host that answers the start later than the stall timeout is missed
/// ("timed out") and the others go on without it: the run exits partial
/// naming it (it used to hang, its place in the chain never linked), and
/// `--resume` repairs it.
#[test]
fn a_host_missed_at_the_start_makes_the_run_partial_and_resume_repairs_it() {
    for slow in [0, 1] {
        let mut chain = Chain::start_with(2, &|i| {
            if i == slow {
                [
                    "env",
                    "FERRY_TEST_HOOKS=1",
                    "FERRY_TEST_FANOUT_READY_DELAY_MS=3000",
                ]
                .map(String::from)
                .to_vec()
            } else {
                vec![]
            }
        });
        let work = tmp();
        let src = tree(work.path(), MIB);
        let o = chain.run(
            &["-a", "--json", "--stall-timeout", "1s"],
            &contents(&src),
            &[],
        );
        assert_eq!(o.status.code(), Some(24), "{}", stderr(&o));
        let v = json(&o);
        let hosts = v["hosts"].as_array().unwrap();
        assert_eq!(hosts[slow]["state"], "missed", "{v}");
        assert_eq!(hosts[1 - slow]["state"], "done", "{v}");
        assert!(
            stderr(&o).contains(&format!("{} missed the job", chain.dest(slow))),
            "{}",
            stderr(&o)
        );
        assert_same_tree(&src, &chain.out(1 - slow), true);
        assert!(!chain.out(slow).join("model.bin").exists());
        // the host answers promptly again: --resume repairs it
        chain.hosts[slow].kill9();
        let addr = chain.hosts[slow].addr.to_string();
        let dir = std::mem::replace(&mut chain.hosts[slow].dir, tmp());
        chain.hosts[slow] = Chain::spawn(&chain.client, slow, vec![], &addr, Some(dir));
        let job = v["job"].as_str().unwrap().to_string();
        let mut c = Command::new(ferry_bin());
        c.arg("fanout")
            .args(chain.args())
            .args(["--json", "--resume", &job]);
        let o = run_bounded(c);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_same_tree(&src, &chain.out(slow), true);
    }
}

/// A scratch directory in memory (`/dev/shm`) when there is one: the files
/// of the memory test are large, and publishing them fsyncs. A page of a
/// file in tmpfs is not part of a process's VmHWM.
fn scratch() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("ferry-fanmem-");
    if Path::new("/dev/shm").is_dir() {
        b.tempdir_in("/dev/shm").unwrap()
    } else {
        b.tempdir().unwrap()
    }
}

/// A process's peak resident memory so far, in KiB (VmHWM).
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// One fan-out of v2 of a file of `size` bytes to two fresh daemons that
/// hold v1 at the destination path (a previous checkpoint): v2 rewrites 1
/// MiB in place and inserts 100 KiB before it (shifting what follows
/// within a piece). Returns the source's and the daemons' peak RSS (KiB)
/// and the bytes each host received.
fn delta_run(size: usize) -> (u64, Vec<u64>, Vec<u64>) {
    let client = tmp();
    ok(ferry([
        "keygen",
        "-C",
        "fanout-client",
        "--config-dir",
        &client.path().display().to_string(),
    ]));
    let v1 = random_bytes(size, 21);
    let hosts: Vec<Daemon> = (0..2)
        .map(|i| {
            let dir = Chain::prepare(&client, i, scratch());
            std::fs::create_dir(dir.path().join("m/out")).unwrap();
            write(&dir.path().join("m/out/model.bin"), &v1);
            Chain::spawn(&client, i, vec![], "127.0.0.1:0", Some(dir))
        })
        .collect();
    let chain = Chain { client, hosts };
    let work = scratch();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut v2 = v1;
    let at = size / 2;
    v2[at..at + MIB].copy_from_slice(&random_bytes(MIB, 22));
    let insert = random_bytes(100 << 10, 23);
    v2.splice(size / 4..size / 4, insert);
    write(&src.join("model.bin"), &v2);
    drop(v2);
    let rss = work.path().join("source-rss");
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(ferry_bin())
        .arg("fanout")
        .args(chain.args())
        .args(["-a", "--json"])
        .arg(contents(&src));
    for i in 0..chain.hosts.len() {
        c.arg(chain.dest(i));
    }
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let source_kib = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let mut daemons = Vec::new();
    let mut received = Vec::new();
    for (i, h) in v["hosts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["state"], "done", "{v}");
        received.push(h["bytes_received"].as_u64().unwrap());
        daemons.push(vm_hwm_kib(chain.hosts[i].pid()));
        assert_same_tree(&src, &chain.out(i), true);
    }
    (source_kib, daemons, received)
}

/// Issue 21, "memory per hop bounded and independent of the file size":
/// with delta (every host holding the previous checkpoint), a hop used to
/// index every chunk of its old data and send all their names at the start,
/// and the source to keep them, ~20 MB per GiB on each. Now both hold only
/// a few windows' worth: their peak RSS stays within 4 MiB when the file
/// grows from 128 to 512 MiB, and each host still receives about the
/// change (an edit in place and an insertion that shifts the rest).
#[test]
fn memory_per_hop_stays_flat_when_a_delta_file_grows_fourfold() {
    let (small_src, small_d, small_rx) = delta_run(128 * MIB);
    let (big_src, big_d, big_rx) = delta_run(512 * MIB);
    eprintln!(
        "source peak RSS {small_src} -> {big_src} KiB; daemons {small_d:?} -> {big_d:?} KiB; received {small_rx:?} / {big_rx:?} bytes"
    );
    const MARGIN_KIB: u64 = 4 << 10;
    assert!(
        big_src <= small_src + MARGIN_KIB,
        "the source's peak RSS grew from {small_src} to {big_src} KiB with the file"
    );
    for i in 0..2 {
        assert!(
            big_d[i] <= small_d[i] + MARGIN_KIB,
            "host {i}'s peak RSS grew from {} to {} KiB with the file",
            small_d[i],
            big_d[i]
        );
    }
    // the change is 1.1 MiB; what follows the insertion is named by
    // reference (~40 bytes a chunk, under 1% of it)
    for (size, rx) in [(128 * MIB, &small_rx), (512 * MIB, &big_rx)] {
        for (i, &r) in rx.iter().enumerate() {
            assert!(
                r > MIB as u64 && (r as f64) < 0.02 * size as f64,
                "host {i} received {r} bytes of a {size}-byte file for a 1.1 MiB change"
            );
        }
    }
}

/// Makes `DEPTH` directories one inside the other under `src`, a file at the
/// bottom and one half way; returns the deepest directory.
fn deep_tree(src: &Path, depth: usize) -> PathBuf {
    let deepest = src.join("d/".repeat(depth).trim_end_matches('/'));
    std::fs::create_dir_all(&deepest).unwrap();
    write(&deepest.join("bottom"), b"at the bottom\n");
    let half = src.join("d/".repeat(depth / 2));
    write(&half.join("half"), random_bytes(5000, 9));
    deepest
}

/// The shell wrapper that runs a command with at most `n` open descriptors.
fn ulimit_n(n: u32) -> Vec<String> {
    ["sh", "-c", &format!("ulimit -n {n} && exec \"$@\""), "sh"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A tree 1,000 directories deep is walked by the source and made by each
/// hop without running out of stack, and (under `ulimit -n 256` for the
/// source and the daemons) without a descriptor per level.
#[test]
fn a_tree_1000_directories_deep_reaches_every_daemon_whole() {
    let chain = Chain::start_with(2, &|_| ulimit_n(256));
    let work = tmp();
    let src = work.path().join("src");
    deep_tree(&src, 1000);
    let mut c = Command::new("sh");
    c.args(["-c", "ulimit -n 256 && exec \"$@\"", "sh"])
        .arg(ferry_bin())
        .arg("fanout")
        .args(chain.args())
        .args(["-a", "--json"])
        .arg(contents(&src));
    for i in 0..2 {
        c.arg(chain.dest(i));
    }
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    for (i, h) in v["hosts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["state"], "done", "{h}");
        assert_same_tree(&src, &chain.out(i), true);
    }
}

/// A stale tree 300 directories deep is removed by a hop's `--delete`
/// under `ulimit -n 256` (its removal used to hold a handle a level: it
/// failed with "Too many open files", the stale tree left in place).
#[test]
fn a_stale_tree_300_directories_deep_is_deleted_on_a_hop_with_256_descriptors() {
    let chain = Chain::start_with(1, &|_| ulimit_n(256));
    let work = tmp();
    let src = work.path().join("src");
    write(&src.join("a"), b"a");
    let stale = chain.out(0).join("old");
    let deepest = stale.join("d/".repeat(300).trim_end_matches('/'));
    std::fs::create_dir_all(&deepest).unwrap();
    write(&deepest.join("f"), b"stale");
    let o = chain.run(&["-a", "--delete", "--json"], &contents(&src), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(json(&o)["hosts"][0]["state"], "done", "{}", stdout(&o));
    assert!(!stale.exists(), "the stale tree is still there");
    assert_eq!(std::fs::read(chain.out(0).join("a")).unwrap(), b"a");
}

/// Makes `file` impossible to remove for this test's user (immutable for
/// root, in a read-only directory otherwise); `false` where neither holds.
fn undeletable(file: &Path) -> bool {
    let dir = file.parent().unwrap();
    chmod(dir, 0o555);
    if std::fs::File::create(dir.join("probe")).is_err() {
        return true; // not root: the directory's mode is enough
    }
    let _ = std::fs::remove_file(dir.join("probe"));
    Command::new("chattr")
        .arg("+i")
        .arg(file)
        .status()
        .is_ok_and(|s| s.success())
}

/// Undoes [`undeletable`] (so that the test's directory can be removed).
fn deletable(file: &Path) {
    let _ = Command::new("chattr").arg("-i").arg(file).status();
    chmod(file.parent().unwrap(), 0o755);
}

/// A `--delete` that fails on a hop (here a stale file that cannot be
/// removed) fails the run for that host, naming `--delete`; it used to be
/// reported done, the stale file left in place.
#[test]
fn a_delete_that_fails_on_a_hop_is_not_reported_done() {
    let chain = Chain::start(1);
    let work = tmp();
    let src = work.path().join("src");
    write(&src.join("a"), b"a");
    let stale = chain.out(0).join("old/stuck");
    write(&stale, b"stale");
    if !undeletable(&stale) {
        deletable(&stale);
        eprintln!("skipped: no way to make a file undeletable here");
        return;
    }
    let o = chain.run(&["-a", "--delete", "--json"], &contents(&src), &[]);
    deletable(&stale);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    let v = json(&o);
    let h = &v["hosts"][0];
    assert_ne!(h["state"], "done", "{h}");
    assert!(h["error"].as_str().unwrap().contains("--delete: "), "{h}");
}

/// The fan-out source opens each file only if it is the file its manifest
/// walk stated, as the session's sender does: `a/x` swapped for a symlink
/// to a secret after the walk (held there by the sender's test hook) is
/// reported in one line as changed while being sent, no byte of the secret
/// leaves, and no host has `a/x` (before, the source opened it by path and
/// sent the secret).
#[test]
fn a_file_swapped_for_a_symlink_after_the_walk_is_not_sent() {
    let chain = Chain::start(1);
    let work = tmp();
    let src = work.path().join("src");
    write(&src.join("a/x"), b"listed\n");
    write(&src.join("b.txt"), b"b\n");
    let secret = work.path().join("outside/id_ed25519");
    write(&secret, b"secret-key-bytes-q7z\n");
    let go = work.path().join("go");
    let mut c = Command::new(ferry_bin());
    c.arg("fanout")
        .args(chain.args())
        .args(["-a", "--json"])
        .arg(contents(&src))
        .arg(chain.dest(0))
        .envs([
            ("FERRY_TEST_HOOKS", "1".to_string()),
            ("FERRY_TEST_SEND_PAUSE_AT", "a/x".to_string()),
            ("FERRY_TEST_SEND_PAUSE_FILE", go.display().to_string()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut run = c.spawn().unwrap();
    wait_for_pause(&mut run, &go, "the open of a/x");
    std::fs::remove_file(src.join("a/x")).unwrap();
    std::os::unix::fs::symlink(&secret, src.join("a/x")).unwrap();
    write(&go, b"");
    let o = output_within(run, Duration::from_secs(120));
    let (out, err) = (stdout(&o), stderr(&o));
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("secret-key") && !err.contains("secret-key"));
    let h = &json(&o)["hosts"][0];
    assert_ne!(h["state"], "done", "{h}");
    let why = h["error"].as_str().unwrap();
    assert!(
        why.ends_with("a/x: changed while being sent: it became a symlink (not followed)"),
        "{h}"
    );
    let landed = chain.out(0).join("a/x");
    assert!(
        !landed.exists(),
        "a/x was published: {:?}",
        std::fs::read(&landed)
    );
}
