//! Failing fast on what retrying cannot fix, retrying what can heal, and a
//! daemon that says why it refused: a name that does not exist and a port
//! nothing listens on end at once with the cause and the `ferry doctor` hint;
//! a daemon killed and restarted mid-transfer, or busy, is waited for; `ferry
//! serve` starts without `authorized_keys` and says how to let a client in;
//! each refused key is told its own reason, and the daemon logs it, in plain
//! text when the log is a file.

mod util;
use std::net::ToSocketAddrs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A client config directory with a fresh key.
fn client_dir(t: &std::path::Path) -> std::path::PathBuf {
    let c = t.join("client");
    ok(ferry(["keygen", "--config-dir", &s(&c)]));
    c
}

fn exit_code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn a_name_that_does_not_exist_fails_at_once_with_the_doctor_hint() {
    // the machine's resolver must say NXDOMAIN for this; one that does not
    // answer (no network) is another class, retried (tested elsewhere)
    match ("no-such-host.invalid", 7420).to_socket_addrs() {
        Err(e) if e.to_string().contains("Name or service not known") => {}
        other => {
            eprintln!("skipped: the resolver says {other:?} for no-such-host.invalid");
            return;
        }
    }
    let t = tmp();
    write(&t.path().join("d/f"), "x");
    let c = client_dir(t.path());
    let start = Instant::now();
    let o = ferry([
        "sync",
        "-a",
        "--config-dir",
        &s(&c),
        &format!("{}/", s(&t.path().join("d"))),
        "no-such-host.invalid::m/",
    ]);
    let took = start.elapsed();
    let err = stderr(&o);
    // the README's table: a connection that could not be made is 12
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(!err.contains("retrying"), "retried: {err}");
    assert!(
        err.contains("cannot resolve no-such-host.invalid: no such host"),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("run `ferry doctor no-such-host.invalid` to find out why"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

#[test]
fn a_port_nothing_listens_on_fails_at_once_with_the_doctor_hint() {
    let t = tmp();
    write(&t.path().join("d/f"), "x");
    let c = client_dir(t.path());
    // a port that was just free: nothing listens on it now
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let o = ferry([
        "sync",
        "-a",
        "--config-dir",
        &s(&c),
        "--host-key-check",
        "accept-new",
        &format!("{}/", s(&t.path().join("d"))),
        &format!("ferry://127.0.0.1:{port}/m/"),
    ]);
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    // before: 40 s and more of "retrying in 9.6 s"
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(!err.contains("retrying"), "retried: {err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        err.contains(&format!("nothing accepts on port {port}")),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(&format!(
            "run `ferry doctor 127.0.0.1:{port}` to find out why"
        )),
        "{err}"
    );
    assert!(!t.path().join("m").exists());

    // `ferry ls` says the same
    let o = ferry([
        "ls",
        "--config-dir",
        &s(&c),
        &format!("ferry://127.0.0.1:{port}/"),
    ]);
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(
        err.contains("connection refused")
            && err.contains(&format!("`ferry doctor 127.0.0.1:{port}`")),
        "{err}"
    );
}

#[test]
fn retries_are_bounded_by_retries_and_stated_in_help() {
    let help = stdout(&ok(ferry(["sync", "--help"])));
    assert!(help.contains("--retries <N>"), "{help}");
    assert!(help.contains("default: 10"), "{help}");
    assert!(help.contains("default: 60 s"), "{help}");
    // a peer that hangs up at once: a broken connection, worth retrying,
    // and --retries 2 stops after the third try (well within the window)
    let t = tmp();
    write(&t.path().join("f"), "x");
    let c = client_dir(t.path());
    let (addr, accepted) = hang_up_listener(10);
    let start = Instant::now();
    let o = ferry([
        "sync",
        "--retries",
        "2",
        "--config-dir",
        &s(&c),
        "--host-key-check",
        "accept-new",
        &s(&t.path().join("f")),
        &format!("ferry://{addr}/m/f"),
    ]);
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
    assert!(err.contains("gave up after retrying 2 time(s)"), "{err}");
    assert!(err.contains(&format!("`ferry doctor {addr}`")), "{err}");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "{err}"
    );
}

#[test]
fn a_daemon_killed_mid_transfer_and_restarted_is_waited_for() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let data = random_bytes(24 << 20, 23);
    write(&t.path().join("big"), &data);
    let modules = [("data", module.as_path(), false)];
    let mut d = Daemon::start(&modules, "", &[]);
    let addr = d.addr;
    let mut args: Vec<String> = [
        "sync",
        "--streams",
        "1",
        "--bwlimit",
        "8M",
        "--timeout",
        "30",
    ]
    .map(String::from)
    .to_vec();
    args.extend(d.client_args());
    args.extend([s(&t.path().join("big")), d.url("data/big")]);
    let client = Command::new(ferry_bin())
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let partial = module.join(".ferry-partial/big");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 4 << 20 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();
    // down long enough that the client's first tries are refused
    std::thread::sleep(Duration::from_millis(1500));
    let dir = std::mem::replace(&mut d.dir, tmp());
    drop(d);
    let _d = Daemon::spawn_in(dir, &modules, &[], &[], &addr.to_string())
        .expect("daemon restarted on its port");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the client hung")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying in"), "{err}");
    assert!(
        err.contains("connection refused"),
        "the restart was not seen as refusals: {err}"
    );
    assert!(std::fs::read(module.join("big")).unwrap() == data);
}

#[test]
fn a_busy_daemon_is_tried_again() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("big"), random_bytes(6 << 20, 5));
    write(&t.path().join("small"), "small\n");
    let d = Daemon::start(&[("data", &module, false)], "", &["--max-connections", "1"]);
    // the one session: about 2 s at 3 MiB/s
    let mut args: Vec<String> = ["sync", "--streams", "1", "--bwlimit", "3M"]
        .map(String::from)
        .to_vec();
    args.extend(d.client_args());
    args.extend([s(&t.path().join("big")), d.url("data/big")]);
    let mut first = Command::new(ferry_bin())
        .args(&args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("authenticated") {
        assert!(Instant::now() < deadline, "the first client never got in");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut args: Vec<String> = ["sync", "--streams", "1", "--timeout", "30"]
        .map(String::from)
        .to_vec();
    args.extend(d.client_args());
    args.extend([s(&t.path().join("small")), d.url("data/small")]);
    let o = ferry(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the daemon is busy"), "{err}");
    assert!(err.contains("retrying in"), "{err}");
    assert_eq!(
        std::fs::read_to_string(module.join("small")).unwrap(),
        "small\n"
    );
    assert!(wait_for(&mut first, Duration::from_secs(30)).is_some_and(|s| s.success()));
}

#[test]
fn serve_starts_without_authorized_keys_and_says_how_to_let_a_client_in() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let dir = tmp();
    let daemon = dir.path().join("daemon");
    std::fs::create_dir(&daemon).unwrap();
    chmod(&daemon, 0o700);
    let client = client_dir(dir.path());
    let d = Daemon::spawn(dir, &[("data", &module, false)], &[])
        .unwrap_or_else(|log| panic!("did not start: {log}"));
    let keys = d.daemon_dir().join("authorized_keys");
    let log = d.log();
    assert!(log.contains("no client can get in yet"), "{log}");
    assert!(log.contains("ferry trust add"), "{log}");
    assert!(log.contains("ferry copy-id"), "{log}");
    assert!(log.contains(&s(&keys)), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log:?}");

    // a client is turned away as a key the daemon does not know
    let push = || {
        let mut v: Vec<String> = vec!["sync".into()];
        v.extend(d.client_args());
        v.extend([s(&t.path().join("f")), d.url("data/f")]);
        ferry(&v)
    };
    let o = push();
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(err.contains("is not authorized"), "{err}");
    assert!(
        !err.contains(&s(&keys)),
        "the daemon's path told a client: {err}"
    );
    assert!(d.log().contains("unknown key"), "{}", d.log());

    // the fix the log gives works without a restart
    ok(ferry([
        "trust",
        "add",
        "--authorized-keys",
        &s(&keys),
        &s(&client.join("id_ed25519.pub")),
    ]));
    ok(push());
    assert_eq!(std::fs::read_to_string(module.join("f")).unwrap(), "x");
    assert!(!d.log().contains('\x1b'), "{:?}", d.log());
}

/// Pushes to a daemon whose key line has `options`, with the client key
/// (or a stranger's); returns the client's stderr and the daemon's log.
fn refused(options: &str, stranger: bool) -> (String, String) {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let d = Daemon::start(
        &[("data", &module, false), ("other", &module, false)],
        options,
        &[],
    );
    let config = if stranger {
        client_dir(t.path())
    } else {
        d.client_dir()
    };
    let o = ferry([
        "sync",
        "--config-dir",
        &s(&config),
        "--host-key-check",
        "accept-new",
        &s(&t.path().join("f")),
        &d.url("data/f"),
    ]);
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{options}: {err}");
    assert!(!err.contains("retrying"), "{options}: retried: {err}");
    assert!(!module.join("f").exists());
    (err, d.log())
}

#[test]
fn each_refused_key_is_told_its_own_reason_and_the_daemon_logs_it() {
    // (options, stranger, what the client is told, the reason the log gives)
    let cases = [
        ("", true, "is not authorized", "reason=\"unknown key\""),
        (
            "from=\"10.0.0.0/8\"",
            false,
            "is not allowed from 127.0.0.1 (from= option)",
            "reason=\"from= mismatch\"",
        ),
        (
            "expiry-time=\"20000101\"",
            false,
            "expired (expiry-time option)",
            "reason=\"expired key\"",
        ),
        (
            "modules=\"other\"",
            false,
            "may not use module \"data\" (modules= option)",
            "reason=\"not granted\"",
        ),
    ];
    for (options, stranger, told, logged) in cases {
        let (err, log) = refused(options, stranger);
        assert!(err.contains(told), "{options}: {err}");
        assert!(log.contains(logged), "{options}: {log}");
        assert!(log.contains(told), "{options}: {log}");
        assert!(!log.contains('\x1b'), "{options}: escape codes: {log:?}");
        // the key itself is refused: the doctor can tell more
        if !options.starts_with("modules") {
            assert!(
                err.contains("access denied: key SHA256:"),
                "{options}: {err}"
            );
            assert!(err.contains("`ferry doctor 127.0.0.1:"), "{options}: {err}");
        }
        // a stranger learns nothing of the rules for other keys
        if stranger {
            for rule in ["from=", "expir", "modules="] {
                assert!(!err.contains(rule), "{rule} told a stranger: {err}");
            }
        }
    }
}

#[test]
fn a_resolver_that_does_not_answer_is_retried_until_the_name_resolves() {
    // a private mount namespace where /etc/resolv.conf names a server that
    // is not there (EAI_AGAIN) and /etc/hosts does not know the name yet
    if !root_available()
        || !Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: needs root and unshare -m");
        return;
    }
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "resolved\n");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let (resolv, hosts) = (t.path().join("resolv.conf"), t.path().join("hosts"));
    write(
        &resolv,
        "nameserver 127.0.0.2\noptions timeout:1 attempts:1\n",
    );
    write(&hosts, "127.0.0.1 localhost\n");
    let mut v: Vec<String> = vec!["sync".into(), "--timeout".into(), "30".into()];
    v.extend(d.client_args());
    v.extend([
        s(&t.path().join("f")),
        format!("ferry://gpu2.ferry-test:{}/data/f", d.addr.port()),
    ]);
    let script = format!(
        "mount --bind {} /etc/resolv.conf && mount --bind {} /etc/hosts && exec \"$@\"",
        s(&resolv),
        s(&hosts)
    );
    let client = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .arg(ferry_bin())
        .args(&v)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // the name appears (as if the resolver came back); same file, same inode
    append(&hosts, b"127.0.0.1 gpu2.ferry-test\n");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the client hung")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cannot resolve gpu2.ferry-test: no DNS server answered"),
        "{err}"
    );
    assert!(err.contains("retrying in"), "{err}");
    assert_eq!(
        std::fs::read_to_string(module.join("f")).unwrap(),
        "resolved\n"
    );
}

#[test]
fn an_unknown_module_or_daemon_key_fails_at_once() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("f"), "x");
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let push = |extra: &[&str], config: &std::path::Path, url: &str| {
        let mut v: Vec<String> = vec!["sync".into(), "--config-dir".into(), s(config)];
        v.extend(extra.iter().map(|a| a.to_string()));
        v.extend([s(&t.path().join("f")), url.to_string()]);
        let start = Instant::now();
        let o = ferry(&v);
        (o, start.elapsed())
    };
    // a module the daemon does not have
    let (o, took) = push(
        &["--host-key-check", "accept-new"],
        &d.client_dir(),
        &d.url("nope/f"),
    );
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(err.contains("no module named \"nope\""), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // a daemon key this client has never seen, with strict checking
    let fresh = client_dir(t.path());
    let (o, took) = push(&["--host-key-check", "strict"], &fresh, &d.url("data/f"));
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(err.contains("unknown key"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!module.join("f").exists());
}

#[test]
fn a_daemon_key_or_config_it_cannot_read_is_named() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let dir = t.path().join("daemon");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    write(&dir.join("id_ed25519"), "not a key\n");
    chmod(&dir.join("id_ed25519"), 0o600);
    let serve = |extra: &[&str]| {
        let mut c = Command::new(ferry_bin());
        c.args(["serve", "--listen", "127.0.0.1:0", "--config-dir"])
            .arg(&dir)
            .arg("--module")
            .arg(format!("data={}", module.display()))
            .args(extra)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let o = serve(&[]);
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(1), "{err}");
    assert!(err.contains("the daemon's key"), "{err}");
    assert!(err.contains(&s(&dir.join("id_ed25519"))), "{err}");
    let missing = t.path().join("no-such.toml");
    let o = serve(&["--config", &s(&missing)]);
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(1), "{err}");
    assert!(err.contains(&s(&missing)), "{err}");
}

#[test]
fn a_port_where_something_else_answers_fails_at_once() {
    // answers every TLS hello with a fatal handshake_failure alert, as a
    // TLS server of another kind would
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().take(10) {
            let Ok(mut c) = conn else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = std::io::Read::read(&mut c, &mut [0u8; 4096]);
            let _ = std::io::Write::write_all(&mut c, &[0x15, 3, 3, 0, 2, 2, 40]);
        }
    });
    let t = tmp();
    write(&t.path().join("f"), "x");
    let c = client_dir(t.path());
    let start = Instant::now();
    let o = ferry([
        "sync",
        "--config-dir",
        &s(&c),
        "--host-key-check",
        "accept-new",
        &s(&t.path().join("f")),
        &format!("ferry://{addr}/m/f"),
    ]);
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(exit_code(&o), Some(12), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(err.contains("the TLS handshake failed"), "{err}");
    assert!(
        err.contains(&format!("port {} may not be a ferry daemon", addr.port())),
        "{err}"
    );
    assert!(err.contains(&format!("`ferry doctor {addr}`")), "{err}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_daemon_sent_another_protocol_still_stops_on_sigterm() {
    // an ssh client (or a scanner) at the daemon's port, then SIGTERM: the
    // daemon ends at once, whatever became of that connection
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let mut d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut c = std::net::TcpStream::connect(d.addr).unwrap();
    std::io::Write::write_all(&mut c, b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = std::io::Read::read(&mut c, &mut [0u8; 256]);
    drop(c);
    let st = Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = d.wait(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not stop: {status:?}\n{}",
        d.log()
    );
    assert!(d.log().contains("stopped"), "{}", d.log());
}
