//! The s18 (second) README walk's findings, against the built binary as a
//! new user meets them: `--bwlimit` as one total rate (item 1, and the first
//! walk's item 19 for local copies), Ctrl-C and SIGTERM exiting 20 (item 5),
//! a public key given as the identity (item 10), the job fault limit (item
//! 14), `ferry job watch`'s exit codes (item 15) and `cp`'s daemon flags
//! (item 8).

mod util;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Item 1: `--bwlimit 1M` to a daemon over two streams, for a file under
/// the 16 MiB split that only one stream carries, gives 1 MiB/s in total
/// (each stream had half the rate, so the file took twice as long).
#[test]
fn bwlimit_to_a_daemon_is_the_total_rate_when_one_stream_carries_the_file() {
    let t = tmp();
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let src = t.path().join("big3");
    let data = random_bytes(3 << 20, 18);
    write(&src, &data);
    let d = Daemon::start(&[("ckpt", &m, false)], "", &[]);
    let mut args = vec![
        "sync".to_string(),
        "--streams".into(),
        "2".into(),
        "--bwlimit".into(),
        "1M".into(),
        s(&src),
        d.url("ckpt/big3"),
    ];
    args.extend(d.client_args());
    let start = Instant::now();
    ok(ferry(&args));
    let took = start.elapsed();
    assert_eq!(std::fs::read(m.join("big3")).unwrap(), data);
    // 3 MiB at 1 MiB/s: 3 s (6 s at the half rate)
    assert!(took >= Duration::from_millis(2500), "{took:?}: not limited");
    assert!(
        took < Duration::from_millis(4500),
        "{took:?}: below the asked rate"
    );
}

/// The first walk's item 19: `--bwlimit` on a local copy paces the bytes
/// the copy moves, as rsync does locally. (The walk's copy went beside a
/// file holding the same data, which the receiver reused instead of
/// receiving it: no bytes moved, so nothing was slowed.)
#[test]
fn bwlimit_applies_to_a_local_copy() {
    let t = tmp();
    let src = t.path().join("src/big2");
    let data = random_bytes(2 << 20, 19);
    write(&src, &data);
    let start = Instant::now();
    ok(ferry([
        "sync",
        "--bwlimit",
        "1M",
        &s(&src),
        &s(&t.path().join("out")),
    ]));
    let took = start.elapsed();
    assert_eq!(std::fs::read(t.path().join("out")).unwrap(), data);
    assert!(took >= Duration::from_millis(1600), "{took:?}: not limited");
}

/// Runs `ferry ARGS` (a transfer slowed by `--bwlimit`), sends `signal`
/// once it has run `after`, and returns its output.
fn signalled(args: &[String], signal: &str, after: Duration) -> std::process::Output {
    let child = Command::new(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let st = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = child;
    if wait_for(&mut child, Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry kept running after {signal}");
    }
    child.wait_with_output().unwrap()
}

/// Item 5: SIGINT or SIGTERM during a transfer exits 20 ("cancelled") with
/// one line, and the partial file is kept for a resume. It exited 130 or
/// 143 and said nothing. Over ssh, as the walk ran it, and locally.
#[test]
fn a_signal_during_a_transfer_exits_20_and_keeps_the_partial_file() {
    let t = tmp();
    let src = t.path().join("big6");
    write(&src, random_bytes(6 << 20, 5));
    let mut routes: Vec<(Vec<String>, std::path::PathBuf)> = Vec::new();
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    routes.push((vec![s(&src), format!("{}/", s(&local))], local));
    let sshd = sshd_available().then(Sshd::start);
    if let Some(sshd) = &sshd {
        let r = t.path().join("remote");
        std::fs::create_dir(&r).unwrap();
        let mut a = sshd.args();
        a.extend([s(&src), format!("{}/", sshd.remote(&r))]);
        routes.push((a, r));
    }
    for (route, dest) in &routes {
        for signal in ["-INT", "-TERM"] {
            let mut args: Vec<String> = vec!["sync".into(), "--bwlimit".into(), "1M".into()];
            args.extend(route.iter().cloned());
            let o = signalled(&args, signal, Duration::from_millis(2000));
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(20), "{signal} {route:?}: {err}");
            assert_eq!(err.trim(), "ferry: transfer cancelled", "{signal}: {err}");
            assert!(
                !dest.join("big6").exists(),
                "{signal}: published half a file"
            );
            let partial = dest.join(".ferry-partial/big6");
            let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            assert!(kept > 0, "{signal} {route:?}: no partial file kept");
        }
    }
}

/// Item 2: a destination whose parent is missing is one line naming the
/// missing directory and `--mkpath`, exit 11 to a local path, over ssh and
/// to a daemon alike (over ssh it said only `No such file or directory`,
/// exit 12), and nothing is created.
#[test]
fn a_missing_destination_parent_names_it_and_mkpath_with_one_exit_code() {
    let t = tmp();
    write(&t.path().join("run/a.txt"), "a");
    let run = format!("{}/", s(&t.path().join("run")));
    let check = |o: std::process::Output, missing: &str, route: &str| {
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(11), "{route}: {err}");
        // (the daemon's key is new to the client: one line says it is added)
        let said = err.lines().filter(|l| !l.contains("permanently added"));
        assert_eq!(said.count(), 1, "{route}: {err}");
        assert!(
            err.contains(&format!(
                "directory {missing} does not exist (--mkpath creates it)"
            )),
            "{route}: {err}"
        );
    };
    // local
    let r = t.path().join("r");
    std::fs::create_dir(&r).unwrap();
    let nop = r.join("nop");
    let o = ferry(["sync", "-a", &run, &format!("{}/run42/", s(&nop))]);
    check(o, &s(&nop), "local");
    assert!(!nop.exists());
    // a single file into a missing directory
    let o = ferry([
        "sync",
        &s(&t.path().join("run/a.txt")),
        &s(&nop.join("a.txt")),
    ]);
    check(o, &s(&nop), "local file");
    // to a daemon module
    let d = Daemon::start(&[("ckpt", &r, false)], "", &[]);
    let mut args = vec!["sync".to_string(), "-a".into(), run.clone()];
    args.push(d.url("ckpt/nop/run42/"));
    args.extend(d.client_args());
    let o = ferry(&args);
    check(o, "nop", "daemon");
    assert!(!nop.exists());
    // over ssh, as the walk ran it
    if sshd_available() {
        let sshd = Sshd::start();
        let mut args = vec!["sync".to_string(), "-a".into()];
        args.extend(sshd.args());
        args.extend([run.clone(), format!("{}/run42/", sshd.remote(&nop))]);
        let o = ferry(&args);
        check(o, &s(&nop), "ssh");
        assert!(!nop.exists());
    }
    // --mkpath makes it
    ok(ferry([
        "sync",
        "-a",
        "--mkpath",
        &run,
        &format!("{}/run42/", s(&nop)),
    ]));
    assert!(nop.join("run42/a.txt").is_file());
}

/// `ferry shell -b SCRIPT ARGS…` run in `cwd`.
fn shell_batch(script: &str, cwd: &std::path::Path, args: &[String]) -> std::process::Output {
    let file = cwd.join("batch");
    write(&file, script);
    Command::new(ferry_bin())
        .args(["shell", "-b"])
        .arg(&file)
        .args(args)
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cwd.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Items 4 and 16: in `ferry shell`, `ls FILE` and `ls -l FILE` of an
/// existing file list it (as sftp does; over ssh it said `No such file`, on
/// a daemon module `Not a directory`, and a batch ended there), and a
/// failed `get` prints one line (it printed the error, then "1 error(s):
/// some files were not transferred").
#[test]
fn shell_ls_of_a_file_lists_it_and_a_failed_get_says_one_line() {
    let t = tmp();
    let ckpt = t.path().join("ckpt");
    write(&ckpt.join("up.txt"), "up");
    write(&ckpt.join("sub/x"), "x");
    let here = t.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let d = Daemon::start(&[("data", t.path(), false)], "", &[]);
    let mut routes: Vec<(&str, Vec<String>, String)> = Vec::new();
    let mut daemon = d.client_args();
    daemon.push(d.url("data/ckpt"));
    routes.push(("daemon", daemon, "".into()));
    let sshd = sshd_available().then(|| Sshd::start_with("Subsystem sftp internal-sftp\n"));
    if let Some(sshd) = &sshd {
        let args = vec!["-e".into(), sshd.rsh(), "127.0.0.1".into()];
        routes.push(("ssh", args, format!("cd {}\n", s(&ckpt))));
    }
    for (route, args, cd) in &routes {
        let o = shell_batch(&format!("{cd}ls up.txt\nls -l up.txt\nls\n"), &here, args);
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(0), "{route}: {err}");
        // (a batch echoes each command, as sftp -b does)
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("ferry> ")).collect();
        assert_eq!(lines[0], "up.txt", "{route}: {out}");
        assert!(lines[1].starts_with("-rw"), "{route}: {out}");
        assert!(lines[1].ends_with(" up.txt"), "{route}: {out}");
        assert!(lines[1].contains(" 2 "), "{route}: size 2: {out}");
        assert_eq!(&lines[2..], ["sub", "up.txt"], "{route}: {out}");
        // a directory without -r, then a missing file: one line each
        // (over ssh `get sub` exits 0 and says nothing, as found here: not
        // this test's item, left for the next walk)
        let gets: &[&str] = if *route == "daemon" {
            &["get sub", "get nothere"]
        } else {
            &["get nothere"]
        };
        for get in gets {
            let o = shell_batch(&format!("{cd}{get}\n"), &here, args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{route} {get}: {err}");
            assert_eq!(err.lines().count(), 1, "{route} {get}: {err}");
            assert!(!err.contains("error(s)"), "{route} {get}: {err}");
        }
    }
}

/// Item 7: `ferry shell` and `ferry copy-id` refuse targets that are not
/// hosts in one line, exit 1, before any ssh (they ran ssh to a host named
/// `s3`, `ftp`, `./run`, `/tmp` or `127.0.0.1::ckpt`, exit 12); an unknown
/// scheme gets the words `cp` gives.
#[test]
fn shell_and_copy_id_refuse_targets_that_are_not_hosts() {
    let t = tmp();
    let cp = ferry(["cp", "ftp://x/y", &s(&t.path().join("o"))]);
    let cp_words = stderr(&cp);
    assert!(cp_words.contains("unsupported scheme ftp://"), "{cp_words}");
    // an ssh that fails the test if it is ever run
    let never = "sh -c 'echo ran ssh >&2; exit 99'";
    for target in ["s3://models/", "ftp://x/y", "./run", "/tmp"] {
        let o = ferry(["shell", "-e", never, "-b", "/dev/null", target]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "shell {target}: {err}");
        assert_eq!(err.lines().count(), 1, "shell {target}: {err}");
        assert!(!err.contains("ran ssh"), "shell {target}: {err}");
        if target == "ftp://x/y" {
            assert_eq!(err, cp_words, "the words cp gives");
        } else {
            assert!(err.contains("not a host"), "shell {target}: {err}");
        }
    }
    let cfg = t.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    chmod(&cfg, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&cfg)]));
    for target in [
        "127.0.0.1::ckpt",
        "ferry://127.0.0.1/ckpt",
        "s3://models/",
        "./run",
    ] {
        let o = ferry(["copy-id", "--config-dir", &s(&cfg), "-e", never, target]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "copy-id {target}: {err}");
        assert_eq!(err.lines().count(), 1, "copy-id {target}: {err}");
        assert!(err.contains("not a host"), "copy-id {target}: {err}");
    }
}

/// Item 3: an empty `XDG_CONFIG_HOME` means `~/.config`, as the XDG spec
/// says (`ferry keygen` wrote `ferry/id_ed25519` in the working directory).
#[test]
fn an_empty_xdg_config_home_means_dot_config() {
    let t = tmp();
    let (home, cwd) = (t.path().join("home"), t.path().join("cwd"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    for xdg in ["", "relative"] {
        let o = Command::new(ferry_bin())
            .arg("keygen")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", xdg)
            .env_remove("FERRY_CONFIG_DIR")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            home.join(".config/ferry/id_ed25519").is_file(),
            "XDG_CONFIG_HOME={xdg:?}: {}",
            stderr(&o)
        );
        assert!(!cwd.join("ferry").exists(), "XDG_CONFIG_HOME={xdg:?}");
        assert!(!cwd.join("relative").exists(), "XDG_CONFIG_HOME={xdg:?}");
    }
}

/// Item 10: a public key given as the identity (`ls -i id_ed25519.pub`,
/// `sync --identity …/id_ed25519.pub`) is one line saying it is the public
/// half and naming the private key; it said `not an OpenSSH key`. The exit
/// code stays what any unreadable identity gives.
#[test]
fn a_public_key_as_the_identity_names_the_private_key() {
    let t = tmp();
    let cfg = t.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    chmod(&cfg, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&cfg)]));
    let public = s(&cfg.join("id_ed25519.pub"));
    let private = s(&cfg.join("id_ed25519"));
    let not_a_key = t.path().join("notes.txt");
    write(&not_a_key, "hello\n");
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    write(&t.path().join("a.txt"), "a");
    let d = Daemon::start(&[("ckpt", &m, false)], "", &[]);
    let ls = |key: &str| {
        let mut a = vec!["ls".to_string(), "-i".into(), key.into(), d.url("ckpt/")];
        a.extend(d.client_args());
        ferry(&a)
    };
    let sync = |key: &str| {
        let mut a = vec!["sync".to_string(), "--identity".into(), key.into()];
        a.extend([s(&t.path().join("a.txt")), d.url("ckpt/")]);
        a.extend(d.client_args());
        ferry(&a)
    };
    for (what, run) in [("ls", &ls as &dyn Fn(&str) -> _), ("sync", &sync)] {
        let today = run(&s(&not_a_key));
        assert!(stderr(&today).contains("not an OpenSSH key"), "{what}");
        let o = run(&public);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.contains(&format!("{public} is a public key")),
            "{what}: {err}"
        );
        assert!(
            err.contains(&format!("give the private key ({private}, without .pub)")),
            "{what}: {err}"
        );
        assert_eq!(o.status.code(), today.status.code(), "{what}: {err}");
        assert_ne!(o.status.code(), Some(0), "{what}");
    }
    assert!(!m.join("a.txt").exists(), "copied with a public key");
}

/// A daemon with `--api` on loopback, modules `src` and `dst`, and an API
/// key; stopped when dropped.
struct JobApi {
    child: std::process::Child,
    url: String,
    key: String,
    dir: tempfile::TempDir,
}

impl JobApi {
    fn start() -> JobApi {
        let dir = tmp();
        let p = |n: &str| dir.path().join(n);
        for d in ["cfg", "src", "dst", "client"] {
            std::fs::create_dir(p(d)).unwrap();
        }
        chmod(&p("cfg"), 0o700);
        chmod(&p("client"), 0o700);
        write(&p("cfg/authorized_keys"), "");
        chmod(&p("cfg/authorized_keys"), 0o600);
        let log = std::fs::File::create(p("daemon.log")).unwrap();
        let mut child = Command::new(ferry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(["--config-dir", &s(&p("cfg"))])
            .args(["--module", &format!("src={}", s(&p("src")))])
            .args(["--module", &format!("dst={}", s(&p("dst")))])
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        for _ in 0..2 {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            if let Some(u) = line.trim().strip_prefix("api listening on ") {
                url = Some(u.to_string());
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon did not start: {}",
                std::fs::read_to_string(p("daemon.log")).unwrap_or_default()
            );
        };
        let mut api = JobApi {
            child,
            url,
            key: String::new(),
            dir,
        };
        let o = ok(ferry([
            "api-key",
            "create",
            "--name",
            "k",
            "--scope",
            "jobs:write,jobs:read",
            "--config-dir",
            &s(&api.dir.path().join("cfg")),
        ]));
        api.key = stdout(&o).trim().to_string();
        api
    }

    /// `ferry ARGS` with this API's address and key in the environment.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_API_URL", &self.url)
            .env("FERRY_API_KEY", &self.key)
            .env("FERRY_CONFIG_DIR", self.dir.path().join("client"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ferry job submit ARGS`; the job's id.
    fn submit(&self, args: &[&str]) -> String {
        let mut a = vec!["job", "submit"];
        a.extend(args);
        let id = stdout(&ok(self.run(&a))).trim().to_string();
        assert_eq!(id.len(), 26, "{id}");
        id
    }

    /// `ferry job watch ID` (bounded: the jobs here end within seconds).
    fn watch(&self, id: &str) -> std::process::Output {
        let child = Command::new(ferry_bin())
            .args(["job", "watch", id])
            .env("FERRY_API_URL", &self.url)
            .env("FERRY_API_KEY", &self.key)
            .env("FERRY_CONFIG_DIR", self.dir.path().join("client"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        if wait_for(&mut child, Duration::from_secs(60)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("job watch {id} did not end");
        }
        child.wait_with_output().unwrap()
    }

    fn show(&self, id: &str) -> serde_json::Value {
        let o = ok(self.run(&["job", "show", id, "--json"]));
        serde_json::from_str(&stdout(&o)).unwrap()
    }
}

impl Drop for JobApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Item 14: with `max_faults` N a job fails at its Nth fault, and the
/// record, the message and `--help` say so: `faults 2 (max 2)`, "2 faults
/// (max_faults 2)" (it failed at fault N+1: `faults 11 (max 10)`).
#[test]
fn a_job_fails_at_its_max_faults_th_fault() {
    let api = JobApi::start();
    write(&api.dir.path().join("src/out/f"), "x");
    let dst = format!("ferry://127.0.0.1:{}/in/", dead_port());
    let id = api.submit(&["--op", "copy", "--max-faults", "2", "src/out/", &dst]);
    let w = api.watch(&id);
    assert_eq!(w.status.code(), Some(12), "{}", stderr(&w));
    let j = api.show(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["error"]["code"], "max_faults_exceeded", "{j:#}");
    assert_eq!(
        (j["faults"].as_u64(), j["max_faults"].as_u64()),
        (Some(2), Some(2)),
        "{j:#}"
    );
    let detail = j["error"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("2 faults (max_faults 2); last: "),
        "{detail}"
    );
    let shown = stdout(&ok(api.run(&["job", "show", &id])));
    assert!(shown.contains(", faults 2 (max 2)"), "{shown}");
    // 1: the first fault fails it, nothing retried
    let id = api.submit(&["--max-faults", "1", "src/out/", &dst]);
    assert_eq!(api.watch(&id).status.code(), Some(12));
    let j = api.show(&id);
    assert_eq!(
        (j["faults"].as_u64(), j["attempts"].as_u64()),
        (Some(1), Some(1)),
        "{j:#}"
    );
    let help = stdout(&ok(ferry(["job", "submit", "--help"])));
    assert!(
        help.contains("Fail the job at its Nth transient fault"),
        "{help}"
    );
}

/// Item 15: `ferry job watch` of a failed job exits by its error, in the
/// README's exit codes: a missing source 11, a peer that cannot be reached
/// 12 (every failure exited 12).
#[test]
fn job_watch_exits_by_the_failed_jobs_error() {
    let api = JobApi::start();
    write(&api.dir.path().join("src/out/f"), "x");
    let id = api.submit(&["src/missing/", "dst/m/"]);
    let w = api.watch(&id);
    assert_eq!(api.show(&id)["error"]["code"], "source_not_found");
    assert_eq!(w.status.code(), Some(11), "{}", stdout(&w));
    let dst = format!("ferry://127.0.0.1:{}/in/", dead_port());
    let id = api.submit(&["--max-faults", "1", "src/out/", &dst]);
    assert_eq!(api.watch(&id).status.code(), Some(12));
    let id = api.submit(&["src/out/", "dst/out/"]);
    assert_eq!(api.watch(&id).status.code(), Some(0));
    assert_eq!(
        std::fs::read(api.dir.path().join("dst/out/f")).unwrap(),
        b"x"
    );
    let help = stdout(&ok(ferry(["job", "watch", "--help"])));
    assert!(help.contains("11 the source is missing"), "{help}");
}

/// Item 8: `cp` takes `--port`, `-4`/`-6`, `--timeout` and `--retries` as
/// `sync` does (`cp -4` was `unexpected argument '-4'`).
#[test]
fn cp_takes_the_daemon_port_ip_version_timeout_and_retries() {
    let t = tmp();
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let a = t.path().join("a.txt");
    write(&a, "a");
    let d = Daemon::start(&[("ckpt", &m, false)], "", &[]);
    let port = d
        .url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    // --port for a host::module address without one, over IPv4 only
    let mut args = vec!["cp".to_string(), "-4".into(), "--port".into(), port.clone()];
    args.extend([
        "--retries".into(),
        "0".into(),
        "--timeout".into(),
        "10".into(),
    ]);
    args.extend([s(&a), "127.0.0.1::ckpt/p.txt".into()]);
    args.extend(d.client_args());
    ok(ferry(&args));
    assert_eq!(std::fs::read(m.join("p.txt")).unwrap(), b"a");
    // -6 to an IPv4 address: a usage error, nothing copied
    let mut args = vec!["cp".to_string(), "-6".into(), "--port".into(), port];
    args.extend([s(&a), "127.0.0.1::ckpt/q.txt".into()]);
    args.extend(d.client_args());
    let o = ferry(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!m.join("q.txt").exists());
    // --timeout: a port that accepts and never answers is given up after it
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(c, _)| c));
    let start = Instant::now();
    let mut args = vec!["cp".to_string(), "--timeout".into(), "2".into()];
    args.extend([s(&a), format!("ferry://{addr}/ckpt/r.txt")]);
    args.extend(d.client_args());
    let o = ferry(&args);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    assert!(
        took < Duration::from_secs(15),
        "{took:?}: --timeout 2 ignored"
    );
    drop(held);
    let help = stdout(&ok(ferry(["cp", "--help"])));
    for flag in [
        "--port <PORT>",
        "--timeout <SECONDS>",
        "--retries <N>",
        "-4",
        "-6",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}

/// Walk 2, items 21 and 22: `sync` between two remotes says `ferry cp`
/// does it; `ferry ls gpu2` (a bare word that is no local path) says how a
/// host is written. Both keep their exit codes (1 and 11).
#[test]
fn refusals_name_the_next_step() {
    let t = tmp();
    let o = ferry(["sync", "-a", "h1:/a/", "h2:/b/"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ferry cp copies from one host to another"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = Command::new(ferry_bin())
        .args(["ls", "gpu2"])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("gpu2: No such file or directory (a host is written gpu2: for ssh, gpu2:: for a daemon)"),
        "{}",
        stderr(&o)
    );
    // a missing path with a slash is only a missing path
    let o = Command::new(ferry_bin())
        .args(["ls", "d/gpu2"])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(!stderr(&o).contains("a host is written"), "{}", stderr(&o));
}

/// Walk 2, item 13: an sshd without an sftp subsystem, with `--transport
/// sftp`: nothing was ever connected, so no "connection lost", and ssh's
/// exit as other messages print it (`exit 255`, not Rust's `exit status:`).
#[test]
fn sftp_that_never_starts_is_not_a_lost_connection() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start(); // no Subsystem line: no SFTP
    let t = tmp();
    write(&t.path().join("src/a"), "a");
    for cmd in ["sync", "cp"] {
        let mut args: Vec<String> =
            vec![cmd.into(), "-r".into(), "--transport".into(), "sftp".into()];
        args.extend(["-e".into(), sshd.rsh()]);
        args.push(format!("{}/", s(&t.path().join("src"))));
        args.push(sshd.remote(&t.path().join("dst")));
        let o = ferry(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(12), "{err}");
        assert!(!err.contains("connection lost"), "{err}");
        assert!(!err.contains("exit status"), "{err}");
        assert!(
            err.contains("ssh ended before SFTP started (exit "),
            "{err}"
        );
        assert!(!t.path().join("dst").exists());
    }
}

/// s19 review: a signal during `sync --json` ends the run with exit 20, the
/// one stderr line, and the cancelled run's fatal JSON line on stdout.
/// Locally, over ssh, to a daemon, and to a peer that never answers (its
/// read sees no cancel, so the watcher ends the run after its 2 s grace: it
/// printed the stderr line alone).
#[test]
fn a_signal_during_a_json_sync_prints_the_cancelled_line_and_exits_20() {
    let t = tmp();
    let src = t.path().join("tree");
    for i in 0..24 {
        write(&src.join(format!("f{i:02}")), random_bytes(256 << 10, i));
    }
    let mut routes: Vec<Vec<String>> = Vec::new();
    let local = t.path().join("local");
    routes.push(vec![format!("{}/", s(&src)), format!("{}/", s(&local))]);
    let sshd = sshd_available().then(Sshd::start);
    if let Some(sshd) = &sshd {
        let r = t.path().join("remote");
        let mut a = sshd.args();
        a.extend([format!("{}/", s(&src)), format!("{}/", sshd.remote(&r))]);
        routes.push(a);
    }
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let d = Daemon::start(&[("m", &m, false)], "", &[]);
    let mut a = vec![format!("{}/", s(&src)), d.url("m/")];
    a.extend(d.client_args());
    routes.push(a);
    // an "ssh" that takes ferry's bytes and never answers (its stdout kept
    // open on fd 3, ferry sees no end)
    let stall = t.path().join("stall-rsh");
    write(&stall, "#!/bin/sh\nexec 3>&1 >/dev/null\nexec cat\n");
    chmod(&stall, 0o755);
    routes.push(vec![
        "-e".into(),
        s(&stall),
        format!("{}/", s(&src)),
        "host:/nowhere/".into(),
    ]);
    for route in &routes {
        for signal in ["-INT", "-TERM"] {
            let mut args: Vec<String> = ["sync", "-a", "--json", "--bwlimit", "1M"]
                .map(String::from)
                .to_vec();
            args.extend(route.iter().cloned());
            let o = signalled(&args, signal, Duration::from_millis(1500));
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(20), "{signal} {route:?}: {err}");
            assert_eq!(err.trim(), "ferry: transfer cancelled", "{signal}: {err}");
            let out = stdout(&o);
            // every line is JSON; the last is the run's end
            let lines: Vec<serde_json::Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            let last = lines
                .last()
                .unwrap_or_else(|| panic!("{signal} {route:?}: no JSON on stdout"));
            assert_eq!(last["kind"], "error", "{signal} {route:?}: {out}");
            assert_eq!(last["fatal"], true, "{out}");
            assert_eq!(last["category"], "cancelled", "{out}");
            assert_eq!(last["exit_code"], 20, "{out}");
        }
    }
}

/// s19 review: once the transfer has ended, SIGTERM takes its default action.
/// The watch's end left SIGINT and SIGTERM caught and ignored, so a `--json`
/// summary blocked on a pipe nobody reads could not be stopped (it exited 20
/// two seconds later, "cancelled", for a transfer that was complete). Here
/// stdout is a full pipe: the summary write blocks, and SIGTERM kills ferry.
#[test]
fn a_signal_after_the_transfer_ended_acts_as_default() {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let t = tmp();
    let src = t.path().join("src");
    write(&src.join("a"), "a");
    let (src_arg, out_arg) = (format!("{}/", s(&src)), s(&t.path().join("out")));
    ok(ferry(["sync", "-a", &src_arg, &out_arg]));
    let (reader, mut writer) = std::io::pipe().unwrap();
    // fill the pipe (64 KiB on Linux) so that ferry's first write blocks
    writer.write_all(&vec![b'x'; 65536]).unwrap();
    let mut child = Command::new(ferry_bin())
        .args(["sync", "-a", "--json", &src_arg, &out_arg])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let blocked = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w.contains("pipe_write"))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blocked() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(blocked(), "ferry never blocked writing its summary");
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = wait_for(&mut child, Duration::from_secs(1));
    let _ = child.kill();
    let _ = child.wait();
    drop(reader);
    let status = status.expect("ferry kept running after SIGTERM");
    assert_eq!(status.signal(), Some(15), "{status:?}");
}
