//! The ferry daemon over TLS 1.3 with key authentication: who gets in, what
//! they may do, host key checking, and the daemon's hygiene (pre-auth timeout,
//! idle floods, graceful shutdown).

mod util;
use std::io::Read;
use std::time::{Duration, Instant};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn sync(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut v: Vec<String> = vec!["sync".into()];
    v.extend(d.client_args());
    v.extend(args.iter().map(|a| a.to_string()));
    ferry(&v)
}

fn tree(root: &std::path::Path) {
    write(&root.join("a.txt"), "alpha\n");
    write(&root.join("ckpt/model.bin"), random_bytes(2 << 20, 4));
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

#[test]
fn push_pull_and_list_over_tls() {
    let t = tmp();
    let (module, src, back) = (
        t.path().join("module"),
        t.path().join("src"),
        t.path().join("back"),
    );
    std::fs::create_dir(&module).unwrap();
    tree(&src);
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    ok(sync(
        &d,
        &["-a", &format!("{}/", src.display()), &d.url("data/run1/")],
    ));
    assert_same_tree(&src, &module.join("run1"), true);
    ok(sync(&d, &["-a", &d.url("data/run1/"), &s(&back)]));
    assert_same_tree(&src, &back, true);
    // host::module/path form too (default port differs, so only ferry:// here) and ls
    let mut args = vec!["ls".to_string(), d.url("")];
    args.extend(d.client_args());
    let out = stdout(&ok(ferry(&args)));
    assert!(out.lines().any(|l| l.starts_with("data")), "{out}");
    let mut args = vec!["ls".to_string(), d.url("data/run1/")];
    args.extend(d.client_args());
    let out = stdout(&ok(ferry(&args)));
    assert!(
        out.contains("a.txt") && out.contains("ckpt") && out.contains("link -> a.txt"),
        "{out}"
    );
}

#[test]
fn unauthorized_key_is_refused_before_any_file_operation() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let stranger = t.path().join("stranger");
    let made = stdout(&ok(ferry(["keygen", "--config-dir", &s(&stranger)])));
    let fingerprint = made
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .to_string();
    let o = ferry([
        "sync",
        "--config-dir",
        &s(&stranger),
        "--host-key-check",
        "accept-new",
        &s(&t.path().join("f")),
        &d.url("data/f"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not authorized"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(&module).unwrap().count(),
        0,
        "something was written"
    );
    assert!(
        d.log().contains(&fingerprint),
        "daemon log lacks {fingerprint}:\n{}",
        d.log()
    );
}

#[test]
fn host_keys_strict_accept_new_and_changed() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let known = d.client_dir().join("known_hosts");
    let base = |mode: &str| {
        vec![
            "sync".to_string(),
            "--config-dir".into(),
            s(&d.client_dir()),
            "--host-key-check".into(),
            mode.into(),
            s(&t.path().join("f")),
            d.url("data/f"),
        ]
    };
    let o = ferry(base("strict"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown key"), "{}", stderr(&o));
    assert!(!known.exists(), "strict mode wrote known_hosts");
    assert!(!module.join("f").exists());

    let o = ok(ferry(base("accept-new")));
    assert!(stderr(&o).contains("permanently added"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&known).unwrap().lines().count(), 1);
    let o = ok(ferry(base("accept-new")));
    assert!(
        stderr(&o).is_empty(),
        "second connection not silent: {}",
        stderr(&o)
    );
    let o = ok(ferry(base("strict")));
    assert!(stderr(&o).is_empty());

    // the daemon gets a new key: refused in every mode, nothing sent
    let before = std::fs::read_to_string(&known).unwrap();
    let other = t.path().join("other-key");
    ok(ferry(["keygen", "-f", &s(&other)]));
    let line = before.split_whitespace().next().unwrap();
    let new_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let (kind, b64) = {
        let mut w = new_pub.split_whitespace();
        (w.next().unwrap().to_string(), w.next().unwrap().to_string())
    };
    std::fs::write(&known, format!("{line} {kind} {b64}\n")).unwrap();
    write(&t.path().join("f"), "changed content");
    for mode in ["strict", "accept-new", "ask"] {
        let o = ferry(base(mode));
        assert!(!o.status.success(), "{mode}");
        assert!(stderr(&o).contains("CHANGED"), "{mode}: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_to_string(module.join("f")).unwrap(),
        "x",
        "data crossed a changed key"
    );
}

fn refused_with(
    options: &str,
    args: &dyn Fn(&Daemon, &std::path::Path) -> Vec<String>,
    expect: &str,
) {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&module.join("existing"), "keep");
    write(&t.path().join("f"), "x");
    let d = Daemon::start(
        &[("data", &module, false), ("other", &module, false)],
        options,
        &[],
    );
    let o = ferry(args(&d, t.path()));
    assert!(!o.status.success(), "{options}: succeeded");
    assert!(stderr(&o).contains(expect), "{options}: {}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(module.join("existing")).unwrap(),
        "keep"
    );
    assert!(!module.join("f").exists());
}

#[test]
fn key_options_limit_what_a_key_may_do() {
    let push = |d: &Daemon, t: &std::path::Path| {
        let mut v = vec!["sync".to_string()];
        v.extend(d.client_args());
        v.extend([s(&t.join("f")), d.url("data/f")]);
        v
    };
    refused_with("from=\"10.0.0.0/8\"", &push, "not allowed from 127.0.0.1");
    refused_with("expiry-time=\"20000101\"", &push, "expired");
    refused_with("restrict", &push, "read-only");
    refused_with("modules=\"other\"", &push, "may not use module \"data\"");
    // a read-only key may not delete either
    let delete = |d: &Daemon, t: &std::path::Path| {
        std::fs::create_dir_all(t.join("emptysrc")).unwrap();
        let mut v = vec!["sync".to_string(), "-r".into(), "--delete".into()];
        v.extend(d.client_args());
        v.extend([format!("{}/", t.join("emptysrc").display()), d.url("data/")]);
        v
    };
    refused_with("restrict", &delete, "read-only");
    // while the same key may still read
    let t = tmp();
    let module = t.path().join("module");
    write(&module.join("x"), "readable");
    let d = Daemon::start(&[("data", &module, false)], "restrict", &[]);
    ok(sync(&d, &[&d.url("data/x"), &s(&t.path().join("got"))]));
    assert_eq!(
        std::fs::read_to_string(t.path().join("got")).unwrap(),
        "readable"
    );
}

#[test]
fn malformed_lines_are_skipped_and_reported_and_loose_modes_stop_the_daemon() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let keys = d.daemon_dir().join("authorized_keys");
    let good = std::fs::read_to_string(&keys).unwrap();
    std::fs::write(
        &keys,
        format!(
            "frobnicate ssh-ed25519 AAAA bad option\nrestrict, {}\nssh-ed25519 !!!\n{good}",
            good.trim()
        ),
    )
    .unwrap();
    ok(sync(&d, &[&s(&t.path().join("f")), &d.url("data/f")]));
    let log = d.log();
    for n in ["line 1:", "line 2:", "line 3:"] {
        assert!(log.contains(n), "{n} not reported:\n{log}");
    }
    drop(d);

    // group-writable authorized_keys: the daemon refuses to start
    let dir = tmp();
    let daemon_dir = dir.path().join("daemon");
    std::fs::create_dir(&daemon_dir).unwrap();
    chmod(&daemon_dir, 0o700);
    write(&daemon_dir.join("authorized_keys"), "");
    chmod(&daemon_dir.join("authorized_keys"), 0o664);
    let err = Daemon::spawn(dir, &[("data", &module, false)], &[])
        .err()
        .expect("daemon started");
    assert!(err.contains("group- or world-writable"), "{err}");
}

#[test]
fn silent_connections_are_dropped_and_do_not_lock_out_clients() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), random_bytes(100_000, 3));
    let d = Daemon::start(
        &[("data", &module, false)],
        "",
        &["--preauth-timeout", "2", "--max-startups", "100"],
    );
    // one silent connection is closed after the pre-auth timeout
    let start = Instant::now();
    let mut silent = std::net::TcpStream::connect(d.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the daemon sent something before authentication");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    // 200 idle connections, more than may authenticate at once: a real client still gets in
    let idle: Vec<_> = (0..200)
        .map(|_| std::net::TcpStream::connect(d.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    ok(sync(&d, &[&s(&t.path().join("f")), &d.url("data/f")]));
    assert_eq!(
        std::fs::read(module.join("f")).unwrap(),
        random_bytes(100_000, 3)
    );
    drop(idle);
}

#[test]
fn sigterm_lets_the_transfer_in_progress_finish() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("big"), random_bytes(24 << 20, 9));
    let mut d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args: Vec<String> = vec!["sync".into(), "--bwlimit".into(), "12M".into()];
    args.extend(d.client_args());
    args.extend([s(&t.path().join("big")), d.url("data/big")]);
    let client = std::process::Command::new(ferry_bin())
        .args(&args)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "transfer broken by SIGTERM");
    let status = d
        .wait(Duration::from_secs(20))
        .expect("daemon did not stop");
    assert!(status.success());
    assert_eq!(
        std::fs::read(module.join("big")).unwrap(),
        random_bytes(24 << 20, 9)
    );
    // and it no longer accepts
    assert!(std::net::TcpStream::connect(d.addr).is_err());
}

#[test]
fn a_daemon_writes_as_itself_and_never_makes_setuid_files() {
    use std::os::unix::fs::MetadataExt;
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let f = t.path().join("tool");
    write(&f, "#!/bin/sh\n");
    chmod(&f, 0o4755);
    std::os::unix::fs::chown(&f, Some(12345), Some(12345)).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    ok(sync(&d, &["-a", &s(&f), &d.url("data/tool")]));
    let m = std::fs::metadata(module.join("tool")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "setuid bit kept");
    assert_eq!(
        m.uid(),
        rustix::process::geteuid().as_raw(),
        "owner taken from the client"
    );
}

#[test]
fn a_backup_suffix_cannot_name_a_path() {
    let t = tmp();
    let module = t.path().join("module");
    write(&module.join("f"), "old");
    write(&t.path().join("f"), "new!");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = sync(
        &d,
        &[
            "-b",
            "--suffix",
            "/../../escaped",
            &s(&t.path().join("f")),
            &d.url("data/f"),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("suffix"), "{}", stderr(&o));
    assert!(!t.path().join("escaped").exists());
    assert_eq!(std::fs::read_to_string(module.join("f")).unwrap(), "old");
}

#[test]
fn an_existing_ssh_key_is_the_identity_when_ferry_has_none() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "via ssh key");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    // a home whose ~/.ssh/id_ed25519 is the key the daemon trusts, and an empty
    // ferry config directory
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::copy(
        d.client_dir().join("id_ed25519"),
        home.join(".ssh/id_ed25519"),
    )
    .unwrap();
    let empty = t.path().join("empty-config");
    let o = std::process::Command::new(ferry_bin())
        .env("HOME", &home)
        .args([
            "sync",
            "--config-dir",
            &s(&empty),
            "--host-key-check",
            "accept-new",
        ])
        .args([s(&t.path().join("f")), d.url("data/f")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(module.join("f")).unwrap(),
        "via ssh key"
    );
}

#[test]
fn a_one_percent_edit_over_the_daemon_moves_under_two_percent() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let size = 64usize << 20;
    let mut data = random_bytes(size, 21);
    write(&t.path().join("big"), &data);
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    ok(sync(
        &d,
        &["-a", &s(&t.path().join("big")), &d.url("data/big")],
    ));
    for i in 0..10 {
        let at = i * (size / 10) + 999;
        data[at..at + 65536].copy_from_slice(&random_bytes(65536, 100 + i as u64));
    }
    write(&t.path().join("big"), &data);
    let o = ok(sync(
        &d,
        &[
            "-a",
            "--stats",
            &s(&t.path().join("big")),
            &d.url("data/big"),
        ],
    ));
    let (_, _, sent, received) = stats(&stdout(&o));
    assert!(
        sent + received <= size as u64 / 50,
        "{} bytes on the wire",
        sent + received
    );
    assert_eq!(std::fs::read(module.join("big")).unwrap(), data);
    // the replaced version is closed off the transfer's path, but closed: the
    // daemon must not keep it open (its blocks would never be freed)
    let deleted_held = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().ends_with(" (deleted)"))
            .count()
    };
    let start = Instant::now();
    while deleted_held() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon still holds the replaced file open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pushes a `size`-byte file over `streams` connections, SIGKILLs the daemon
/// once `kept` (measured on the partial file) passes `at`, restarts it, and
/// syncs again. Checks that nothing was published by the killed run, that the
/// re-run sent about only what was missing, and the bytes. Returns what the
/// partial file held and the re-run's --stats (literal, matched).
fn resume_after_daemon_kill(
    streams: &str,
    bwlimit: &str,
    size: u64,
    seed: u64,
    at: u64,
    kept: fn(&std::path::Path) -> u64,
) -> (u64, u64, u64) {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("big"), random_bytes(size as usize, seed));
    let modules = [("data", module.as_path(), false)];
    let mut d = Daemon::start(&modules, "", &[]);
    let mut args: Vec<String> = ["sync", "--streams", streams, "--bwlimit", bwlimit]
        .map(String::from)
        .to_vec();
    args.extend(d.client_args());
    args.extend([s(&t.path().join("big")), d.url("data/big")]);
    let mut client = std::process::Command::new(ferry_bin())
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = module.join(".ferry-partial/big");
    let deadline = Instant::now() + Duration::from_secs(60);
    while kept(&partial) < at {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();
    // the client would retry for a while: it has done its part
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        !module.join("big").exists(),
        "a half-written file was published"
    );
    let have = kept(&partial);
    let d = d.restart(&modules);
    let o = ok(sync(
        &d,
        &[
            "--stats",
            "--streams",
            streams,
            &s(&t.path().join("big")),
            &d.url("data/big"),
        ],
    ));
    let (literal, matched, _, _) = stats(&stdout(&o));
    assert!(
        literal <= size - have + size / 20,
        "resent {literal} with {have} of {size} already there"
    );
    assert!(
        std::fs::read(module.join("big")).unwrap() == random_bytes(size as usize, seed),
        "bytes differ after the resumed run"
    );
    assert!(!module.join(".ferry-partial").exists());
    (have, literal, matched)
}

#[test]
fn killed_daemon_restarted_resumes_from_the_partial_file() {
    let length = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (have, _, matched) = resume_after_daemon_kill("1", "30M", 96 << 20, 33, 24 << 20, length);
    assert!(matched >= have / 2, "reused only {matched}");
}

#[test]
fn a_large_file_over_four_streams_arrives_intact_both_ways() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let size = 1usize << 30;
    write(&t.path().join("big"), random_bytes(size, 44));
    let expected = blake3::hash(&random_bytes(size, 44));
    let hash_of = |p: &std::path::Path| {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
        h.finalize()
    };
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = ok(sync(
        &d,
        &[
            "--stats",
            "--streams",
            "4",
            &s(&t.path().join("big")),
            &d.url("data/big"),
        ],
    ));
    let (literal, _, sent, _) = stats(&stdout(&o));
    assert_eq!(literal, size as u64);
    assert!(
        sent >= size as u64,
        "the counters missed the extra streams: {sent}"
    );
    assert_eq!(hash_of(&module.join("big")), expected);
    let pulled = t.path().join("pulled");
    std::fs::create_dir(&pulled).unwrap();
    ok(sync(
        &d,
        &["--streams", "4", &d.url("data/big"), &s(&pulled)],
    ));
    assert_eq!(hash_of(&pulled.join("big")), expected);
    // two transfers of four connections each
    assert_eq!(d.log().matches("authenticated").count(), 8, "{}", d.log());
}

#[test]
fn killed_daemon_with_four_streams_resumes_with_only_the_missing_data() {
    // segments arrive out of order: count the blocks written, not the length
    use std::os::unix::fs::MetadataExt;
    let allocated =
        |p: &std::path::Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
    resume_after_daemon_kill("4", "8M", 128 << 20, 55, 32 << 20, allocated);
}

#[test]
fn cp_follows_scp_naming_over_the_daemon() {
    let t = tmp();
    let module = t.path().join("module");
    tree(&module.join("datasets/imagenet"));
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args = vec!["cp".to_string(), "-r".into()];
    args.extend(d.client_args());
    args.extend([
        d.url("data/datasets/imagenet"),
        s(&t.path().join("imagenet")),
    ]);
    ok(ferry(&args));
    // the destination did not exist: it became the copy (scp's rule)
    assert_eq!(
        std::fs::read(t.path().join("imagenet/ckpt/model.bin")).unwrap(),
        random_bytes(2 << 20, 4)
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("imagenet/a.txt")).unwrap(),
        "alpha\n"
    );
}

#[test]
fn a_source_that_shrinks_during_a_segmented_send_is_reported_not_published() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let src = t.path().join("big");
    write(&src, random_bytes(64 << 20, 66));
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args: Vec<String> = vec![
        "sync".into(),
        "--streams".into(),
        "2".into(),
        "--bwlimit".into(),
        "16M".into(),
    ];
    args.extend(d.client_args());
    args.extend([s(&src), d.url("data/big")]);
    let client = std::process::Command::new(ferry_bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // every segment now reads past the end, the first one included
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the transfer hung")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read failed") || err.contains("changed"),
        "{err}"
    );
    assert!(
        !module.join("big").exists(),
        "a file that changed was published"
    );
}

#[test]
fn a_black_hole_peer_is_given_up_on_within_the_timeout() {
    let t = tmp();
    write(&t.path().join("f"), "x");
    let client = t.path().join("client");
    ok(ferry(["keygen", "--config-dir", &s(&client)]));
    // accepts, then says nothing, ever (bounded: the test ends it)
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = l.incoming().take(2).filter_map(Result::ok).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let start = Instant::now();
    let o = ferry([
        "sync",
        "--timeout",
        "2",
        "--config-dir",
        &s(&client),
        "--host-key-check",
        "accept-new",
        &s(&t.path().join("f")),
        &format!("ferry://{addr}/m/f"),
    ]);
    let took = start.elapsed();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
}

/// A TCP relay to `target` that flips one bit of the client-to-server bytes at
/// `offset` (counted per connection).
fn bit_flipping_proxy(target: std::net::SocketAddr, offset: usize) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in l.incoming().take(4) {
            let Ok(client) = client else { return };
            let server = std::net::TcpStream::connect(target).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut seen = 0usize;
                let mut buf = [0u8; 16384];
                loop {
                    let n = match std::io::Read::read(&mut c_in, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if (seen..seen + n).contains(&offset) {
                        buf[offset - seen] ^= 0x10;
                    }
                    seen += n;
                    if std::io::Write::write_all(&mut s_out, &buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn a_flipped_bit_in_the_tls_stream_aborts_and_publishes_nothing() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("big"), random_bytes(2 << 20, 77));
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    // learn the daemon's key once, directly (a small file: nothing the big one
    // could be rebuilt from, so all of it crosses the proxy every time)
    write(&t.path().join("small"), "warm-up");
    ok(sync(
        &d,
        &[&s(&t.path().join("small")), &d.url("data/warmup")],
    ));
    let mut integrity = 0;
    for (i, offset) in [
        4_000usize, 9_000, 20_000, 65_000, 150_000, 400_000, 700_000, 1_000_000, 1_500_000,
        2_000_000,
    ]
    .into_iter()
    .enumerate()
    {
        let proxy = bit_flipping_proxy(d.addr, offset);
        let mut args = vec![
            "sync".to_string(),
            "--streams".into(),
            "1".into(),
            "--timeout".into(),
            "2".into(),
        ];
        args.extend(d.client_args());
        // the proxy's port differs: record its key under that name too
        args.extend([
            s(&t.path().join("big")),
            format!("ferry://{proxy}/data/f{i}"),
        ]);
        let o = ferry(&args);
        assert!(
            !o.status.success(),
            "offset {offset}: a corrupted stream was accepted"
        );
        eprintln!(
            "offset {offset}: {}",
            stderr(&o).lines().last().unwrap_or("")
        );
        integrity += stderr(&o).contains("integrity error") as usize;
        assert!(
            !module.join(format!("f{i}")).exists(),
            "offset {offset}: published"
        );
    }
    assert!(
        integrity >= 8,
        "only {integrity} of 10 runs reported an integrity error"
    );
    assert!(d.log().contains("integrity error"), "{}", d.log());
}

#[test]
fn a_busy_daemon_refusing_an_extra_stream_does_not_fail_the_transfer() {
    // one session at a time: the extra stream is turned away ("busy"), the
    // transfer goes on over the first one and says so
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let data = random_bytes(40 << 20, 71);
    write(&t.path().join("big"), &data);
    let d = Daemon::start(&[("data", &module, false)], "", &["--max-connections", "1"]);
    let o = ok(sync(
        &d,
        &[
            "--streams",
            "2",
            &s(&t.path().join("big")),
            &d.url("data/big"),
        ],
    ));
    assert!(
        stderr(&o).contains("going on with 1 stream(s): another could not join"),
        "{}",
        stderr(&o)
    );
    assert!(std::fs::read(module.join("big")).unwrap() == data);
    assert!(d.log().contains("busy"), "{}", d.log());
}

/// s19 review: a module whose directory was deleted after the daemon started
/// (or never existed) is refused at once with one line naming the module and
/// not the server's path, like rsync's `@ERROR: chdir failed`, with the exit
/// code of an unknown module (12); pull, push and ls alike. It was
/// "connection lost", retried 10 times (~48 s).
#[test]
fn a_module_whose_directory_is_gone_is_refused_at_once_without_its_path() {
    let t = tmp();
    let (here, gone) = (t.path().join("here"), t.path().join("gone-dir-xq7"));
    std::fs::create_dir(&here).unwrap();
    std::fs::create_dir(&gone).unwrap();
    write(&t.path().join("f.txt"), "f\n");
    let d = Daemon::start(&[("here", &here, false), ("ckpt", &gone, false)], "", &[]);
    std::fs::remove_dir(&gone).unwrap();
    // refused as a module that is not there is: exit 12, the peer's fatal
    // error (README exit table; rsync's @ERROR lines are one code too)
    let unknown = sync(&d, &[&d.url("nomodule/x"), &s(&t.path().join("o1"))]);
    let want = unknown.status.code();
    assert_eq!(want, Some(12), "{}", stderr(&unknown));
    let out = s(&t.path().join("out"));
    let src = s(&t.path().join("f.txt"));
    let ls: Vec<String> = ["ls".to_string(), d.url("ckpt/")]
        .into_iter()
        .chain(d.client_args())
        .collect();
    for (what, o) in [
        ("pull", sync(&d, &[&d.url("ckpt/x"), &out])),
        ("pull all", sync(&d, &["-a", &d.url("ckpt/"), &out])),
        ("push", sync(&d, &[&src, &d.url("ckpt/")])),
        ("ls", ferry(&ls)),
    ] {
        let err = stderr(&o);
        assert_eq!(o.status.code(), want, "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(err.contains("module ckpt"), "{what}: {err}");
        assert!(err.contains("chdir failed"), "{what}: {err}");
        assert!(
            !err.contains("gone-dir-xq7"),
            "{what} shows the root: {err}"
        );
        assert!(!err.contains("connection lost"), "{what}: {err}");
    }
    assert!(
        !t.path().join("out").exists(),
        "a pull created its destination"
    );
}

/// A pull of a module path through a symlink out of the module (`evil` ->
/// a directory outside it) is refused by name: the target directory is not
/// listed (its names never reach the client) and nothing of it arrives.
#[test]
fn a_pull_through_a_symlink_out_of_the_module_lists_nothing_of_its_target() {
    let t = tmp();
    let (module, outside, back) = (
        t.path().join("module"),
        t.path().join("outside"),
        t.path().join("back"),
    );
    write(&outside.join("shadow-name-secret"), "secret");
    write(&module.join("ok.txt"), "ok");
    std::os::unix::fs::symlink(&outside, module.join("evil")).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = sync(&d, &["-a", &d.url("data/evil/"), &s(&back)]);
    assert_eq!(o.status.code(), Some(23), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("evil is a symlink that leaves the module"),
        "{err}"
    );
    assert!(!err.contains("shadow-name-secret"), "{err}");
    assert!(!stdout(&o).contains("shadow-name-secret"));
    assert!(!back.join("shadow-name-secret").exists());
}

/// The same pull named without a trailing slash and without `-l`: the root
/// is stated through the link (a symlink is not sent as one without `-l`),
/// but the walk opens it beneath the module without following a link, so it
/// is refused by name and nothing of its target is listed.
#[test]
fn a_pull_of_a_symlinked_root_without_l_lists_nothing_of_its_target() {
    let t = tmp();
    let (module, outside, back) = (
        t.path().join("module"),
        t.path().join("outside"),
        t.path().join("back"),
    );
    write(&outside.join("shadow-name-secret"), "secret");
    write(&module.join("ok.txt"), "ok");
    std::os::unix::fs::symlink(&outside, module.join("evil")).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = sync(&d, &["-rv", &d.url("data/evil"), &s(&back)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(23), "{err}");
    assert!(
        err.contains("cannot read directory evil: evil is a symlink that leaves the module"),
        "{err}"
    );
    assert!(!err.contains("shadow-name-secret"), "{err}");
    assert!(!stdout(&o).contains("shadow-name-secret"));
    assert!(!back.join("evil/shadow-name-secret").exists());
}
