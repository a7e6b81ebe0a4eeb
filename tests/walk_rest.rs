//! The rest of the s17 README walk's findings, against the built binary as a
//! new user meets them: the daemon's start-up errors (item 21), `cp -v`,
//! `--progress -v`, a daemon address without a module, unknown schemes and
//! `ferry demo`'s counts (item 25), a fan-out a host refuses (item 17),
//! `ferry doctor` of an ssh alias as a daemon (item 9) and `ferry ls` of a
//! missing local path (item 20).

mod util;
use std::process::{Command, Stdio};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// `ferry serve` in a fresh config directory, expected to refuse to start.
fn serve_refused(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(ferry_bin());
    c.args(["serve", "--config-dir", &s(&dir.join("cfg"))])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if wait_for(&mut child, std::time::Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry serve {args:?} kept running");
    }
    child.wait_with_output().unwrap()
}

/// Item 21: a config file with a misspelt key says where, on one line,
/// without the parser's `|` source-excerpt art.
#[test]
fn a_toml_error_names_file_line_and_column_on_one_line() {
    let t = tmp();
    let cfg = t.path().join("u.toml");
    write(&cfg, "listen = [\"127.0.0.1:0\"]\nmax_conections = 3\n");
    let o = serve_refused(t.path(), &["--config", &s(&cfg)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}:2:1: unknown field `max_conections`", s(&cfg))),
        "{err}"
    );
    assert!(!err.contains(" | "), "{err}");
    assert!(!err.contains("TOML parse error"), "{err}");
}

/// Item 21: a module whose path does not exist says so.
#[test]
fn a_missing_module_path_does_not_exist() {
    let t = tmp();
    let gone = t.path().join("gone");
    let o = serve_refused(
        t.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--module",
            &format!("m={}", s(&gone)),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{} does not exist", s(&gone))),
        "{err}"
    );
    assert!(!err.contains("not a directory"), "{err}");
    // a file where a directory should be still says "not a directory"
    let file = t.path().join("file");
    write(&file, "x");
    let o = serve_refused(
        t.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--module",
            &format!("m={}", s(&file)),
        ],
    );
    assert!(stderr(&o).contains("is not a directory"), "{}", stderr(&o));
}

/// Item 21: with its port in use, `serve` fails before it makes a key or
/// logs a warning about authorized_keys.
#[test]
fn a_port_in_use_fails_before_a_key_is_made() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = serve_refused(
        t.path(),
        &["--listen", &addr, "--module", &format!("m={}", s(&module))],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(11), "{err}");
    assert!(err.contains(&format!("listen on {addr}")), "{err}");
    assert!(!err.contains("WARN"), "{err}");
    assert!(!err.contains("authorized_keys"), "{err}");
    assert!(!err.contains("generated"), "{err}");
    assert!(
        !t.path().join("cfg/id_ed25519").exists(),
        "a key was made by a daemon that could not start"
    );
}

/// With the API's address in use, `serve --api` fails as `--listen` does:
/// exit 11, the address named, before a key or a job database is made.
#[test]
fn an_api_address_in_use_fails_before_a_key_is_made() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = serve_refused(
        t.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--api",
            &addr,
            "--module",
            &format!("m={}", s(&module)),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(11), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("--api {addr}: ")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
    assert!(
        !t.path().join("cfg/id_ed25519").exists(),
        "a key was made by a daemon that could not start"
    );
    assert!(
        !t.path().join("cfg/state").exists(),
        "a job database was made by a daemon that could not start"
    );
    // plain HTTP beyond loopback is still a usage error (exit 1), also
    // before anything is made
    let o = serve_refused(t.path(), &["--listen", "127.0.0.1:0", "--api", "0.0.0.0:0"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to serve plain HTTP"), "{err}");
    assert!(!t.path().join("cfg/id_ed25519").exists());
}

/// Item 25: `cp -v` shows ssh's own lines as ssh prints them (as scp -v),
/// not as ferry's (`ferry: debug1: …`).
#[test]
fn cp_v_passes_sshs_lines_through_unprefixed() {
    if !sshd_available() {
        return;
    }
    // ferry on the remote's PATH and no --remote-ferry, as the walk had it
    // (ssh's stderr is then read by ferry, to tell whether to fall back)
    let bin = ferry_bin();
    let sshd = Sshd::start_with_env(
        &format!("PATH={}:/usr/bin:/bin", s(bin.parent().unwrap())),
        "",
    );
    let t = tmp();
    write(&t.path().join("a.txt"), "alpha\n");
    let dest = t.path().join("out.txt");
    let mut args = vec!["cp".to_string(), "-v".into(), "-e".into(), sshd.rsh()];
    args.extend([s(&t.path().join("a.txt")), sshd.remote(&dest)]);
    let o = ok(ferry(&args));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "alpha\n");
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l.starts_with("debug1: Authenticat")),
        "{err}"
    );
    assert!(!err.contains("ferry: debug"), "{err}");
    assert!(!err.contains("ferry: OpenSSH"), "{err}");
}

/// Item 25: `--progress -v` names each file once.
#[test]
fn progress_v_names_each_file_once() {
    let t = tmp();
    write(&t.path().join("run/alpha.bin"), vec![7u8; 3000]);
    write(&t.path().join("run/sub/beta.bin"), vec![8u8; 5000]);
    let o = ok(ferry([
        "sync",
        "-a",
        "--progress",
        "-v",
        &format!("{}/", s(&t.path().join("run"))),
        &format!("{}/", s(&t.path().join("dst"))),
    ]));
    let out = stdout(&o);
    for name in ["alpha.bin", "sub/beta.bin"] {
        let lines = out.lines().filter(|l| l.contains(name)).count();
        assert_eq!(lines, 1, "{name} named {lines} times:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("alpha.bin") && l.contains("100%")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(t.path().join("dst/sub/beta.bin")).unwrap(),
        vec![8u8; 5000]
    );
}

/// Item 25: a daemon address without a module says to name one (and how to
/// list them), before any connection.
#[test]
fn a_daemon_address_without_a_module_asks_for_one() {
    let t = tmp();
    write(&t.path().join("run/a"), "a");
    let src = format!("{}/", s(&t.path().join("run")));
    // nothing listens there: the refusal comes before connecting
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let url = format!("ferry://127.0.0.1:{port}/");
    let o = ferry(["sync", "-a", &src, &url]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!("ferry: {url}: name a module (ferry ls {url} lists them)")
    );
    let o = ferry(["cp", "-r", &src, "gpu9::"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("gpu9::: name a module (ferry ls gpu9:: lists them)"),
        "{}",
        stderr(&o)
    );
}

/// Item 25: `ftp://x/y`, `http://…` are refused as schemes ferry does not
/// speak, not tried as ssh to host `ftp`.
#[test]
fn an_unknown_scheme_is_refused() {
    let t = tmp();
    write(&t.path().join("a"), "a");
    for url in ["ftp://x/y", "http://example.com/data/", "rsync://h/m/"] {
        let o = ferry(["sync", "-a", &s(&t.path().join("a")), url]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{url}: {err}");
        assert!(err.contains("unsupported scheme"), "{url}: {err}");
        assert!(!err.contains("ssh to"), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let o = ferry(["ls", "ftp://x/y"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("unsupported scheme ftp://"));
}

/// Item 25: `ferry demo`'s counts are of files throughout (the sync lines
/// agree with the verification) and its sizes use one unit system.
#[test]
fn demo_counts_files_alike_and_speaks_one_unit() {
    let t = tmp();
    let o = ok(ferry(["demo", "--dir", &s(t.path())]));
    let out = stdout(&o);
    let of = |line: &str| -> (u64, u64) {
        let l = out.lines().find(|l| l.starts_with(line)).unwrap();
        let words: Vec<&str> = l.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "of").unwrap();
        (words[i - 1].parse().unwrap(), words[i + 1].parse().unwrap())
    };
    let verified: u64 = out
        .split("replica identical to the dataset (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let (sent1, all1) = of("first sync");
    let (sent2, all2) = of("second sync");
    // every file on the first sync; the new shard is one more file
    assert_eq!((sent1, all1 + 1), (all1, verified), "{out}");
    assert_eq!(all2, verified, "{out}");
    // 2 appended shards, the new one, the checkpoint
    assert_eq!(sent2, 4, "{out}");
    for decimal in ["KB", "MB", "GB"] {
        assert!(!out.contains(decimal), "{decimal} among MiB:\n{out}");
    }
    assert!(out.contains(" MiB literal"), "{out}");
}

/// Item 17: a fan-out every host refused (an unknown module) does not
/// suggest `--resume`, which would meet the same refusal.
#[test]
fn a_refused_fanout_does_not_suggest_resume() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    write(&t.path().join("src/a"), "a");
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let mut args = vec!["fanout".to_string(), "-a".into()];
    args.extend(d.client_args());
    args.extend([
        format!("{}/", s(&t.path().join("src"))),
        d.url("nosuch/out"),
    ]);
    let o = ferry(&args);
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("no module named \"nosuch\""), "{err}");
    assert!(!err.contains("--resume"), "{err}");
    assert!(err.contains("1 of 1 host(s) refused it"), "{err}");
    assert!(!module.join("out").exists());
}

/// Item 9: `ferry doctor alias::m`, where `alias` is only an ssh alias,
/// says daemon addresses do not read ssh config and names the host to use.
#[test]
fn doctor_of_an_ssh_alias_as_a_daemon_names_the_real_host() {
    let t = tmp();
    let cfg = t.path().join("ssh_config");
    write(
        &cfg,
        "Host walkalias.invalid\n  HostName 127.0.0.1\n  Port 2222\n",
    );
    let o = ferry([
        "doctor",
        "-e",
        &format!("ssh -F {}", s(&cfg)),
        "walkalias.invalid::ckpt",
    ]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_ne!(o.status.code(), Some(0), "{all}");
    assert!(!all.contains("HostName` in ~/.ssh/config"), "{all}");
    assert!(
        all.contains("walkalias.invalid is an ssh alias (HostName 127.0.0.1)"),
        "{all}"
    );
    assert!(all.contains("use 127.0.0.1::MODULE"), "{all}");
    // a name no ssh config knows: no ssh config advice at all
    let o = ferry(["doctor", "nosuchname.invalid::ckpt"]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("HostName` in ~/.ssh/config"), "{all}");
}

/// Item 20: `ferry ls` of a missing local path is a local file error
/// (exit 11, as the README's table says), while an ssh failure stays 12.
#[test]
fn ls_of_a_missing_local_path_exits_11() {
    let t = tmp();
    let gone = t.path().join("nonexist");
    let o = ferry(["ls", &s(&gone)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(11), "{err}");
    assert_eq!(
        err.trim(),
        format!("ferry: {}: No such file or directory", s(&gone))
    );
    let o = ferry([
        "ls",
        "-e",
        "ssh -F /dev/null -o ConnectTimeout=5",
        "nosuchhost.invalid:/tmp",
    ]);
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
}
