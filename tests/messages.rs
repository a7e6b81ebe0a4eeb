//! What a user is told when something goes wrong, driven through the real
//! binary against a real daemon and a real sshd: the findings of the
//! README walk-through (s17) pinned one by one. Each test names the finding.
//! A daemon never tells a client where its modules live; a failure to reach a
//! host says so once, with one `ferry doctor` pointer for the right target;
//! no message carries Rust's debug text.

mod util;
use std::path::Path;
use util::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Finding 6: a daemon's messages name module paths, never server paths.
#[test]
fn a_daemon_never_tells_the_client_its_server_side_paths() {
    let t = tmp();
    let module = t.path().join("srv-secret-root").join("ckpt");
    std::fs::create_dir_all(&module).unwrap();
    write(&module.join("a"), "a");
    std::fs::create_dir(module.join("locked")).unwrap();
    write(&module.join("locked").join("f"), "f");
    let d = Daemon::start(&[("ckpt", &module, false)], "", &[]);
    let c = d.client_args();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(c.iter().cloned());
        ferry(all)
    };

    // ls of a path that is not there: the module path, not the server's
    let o = run(&["ls", &d.url("ckpt/nothere")]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        !err.contains("srv-secret-root"),
        "server path leaked: {err}"
    );
    assert!(err.contains("ckpt/nothere"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(
        !err.contains("cannot read source"),
        "ls reads no source: {err}"
    );

    // a pull of a missing source and of an unreadable directory
    let dst = t.path().join("dst");
    let o = run(&["sync", "-a", &d.url("ckpt/nothere/"), &s(&dst)]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        !err.contains("srv-secret-root"),
        "server path leaked: {err}"
    );
    assert!(err.contains("nothere"), "{err}");
    if !root_available() {
        // (root reads a 000 directory anyway)
        chmod(&module.join("locked"), 0o000);
        let o = run(&["sync", "-a", &d.url("ckpt/"), &s(&dst)]);
        chmod(&module.join("locked"), 0o755);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(23), "{err}");
        assert!(
            !err.contains("srv-secret-root"),
            "server path leaked: {err}"
        );
        assert!(err.contains("locked"), "{err}");
    }
    // a push the module cannot take (an immutable directory, which stops
    // root too): the receiver names the path in the module, not the
    // server's (it said "cannot create a temporary file for
    // /…/srv-secret-root/ckpt/ro/up")
    let ro = module.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let up = t.path().join("up");
    write(&up, "u");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&ro)
            .status()
            .is_ok_and(|s| s.success())
    };
    if chattr("+i") {
        let o = run(&["cp", &s(&up), &d.url("ckpt/ro/up")]);
        assert!(chattr("-i"));
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            !err.contains("srv-secret-root"),
            "server path leaked: {err}"
        );
        assert!(err.contains("ro/up"), "{err}");
    }
    // nothing in the log is hidden from the administrator
    assert!(d.log().contains("request"), "{}", d.log());
}

/// Finding 6: with an unusable authorized_keys file, a client (authorized
/// or not) is only "not authorized", as sshd's StrictModes does it; the
/// daemon's log says why.
#[test]
fn a_stranger_learns_only_not_authorized_when_authorized_keys_is_unusable() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let keys = d.daemon_dir().join("authorized_keys");
    chmod(&keys, 0o620);
    let stranger = t.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    chmod(&stranger, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&stranger)]));
    let o = ferry([
        "ls",
        "--config-dir",
        &s(&stranger),
        "--host-key-check",
        "accept-new",
        &d.url("m/"),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("is not authorized"), "{err}");
    for leak in ["authorized_keys", "writable", &s(d.dir.path())] {
        assert!(!err.contains(leak), "{leak} told to a stranger: {err}");
    }
    let log = d.log();
    assert!(
        log.contains("authorized_keys") && log.contains("writable"),
        "the log keeps the detail:\n{log}"
    );
}

/// A `-e` command that prints a banner line on stdout before it runs ssh.
fn banner_rsh(dir: &Path, sshd: &Sshd) -> String {
    let script = dir.join("bannerssh");
    write(
        &script,
        format!(
            "#!/bin/sh\necho 'Welcome to gpu2!'\nexec {} \"$@\"\n",
            sshd.rsh()
        ),
    );
    chmod(&script, 0o755);
    s(&script)
}

/// Finding 4: a banner on the ssh channel is "not ferry" (exit 2), as the
/// README's exit table says, also in --json; rsync asks "is your shell clean?".
#[test]
fn a_banner_on_the_ssh_channel_is_not_ferry_exit_2() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    write(&t.path().join("src").join("f"), "x");
    let rsh = banner_rsh(t.path(), &sshd);
    let dst = sshd.remote(&t.path().join("dst"));
    let src = format!("{}/", s(&t.path().join("src")));
    let base = |json: bool| {
        let mut a: Vec<String> = vec!["sync".into(), "-a".into()];
        if json {
            a.push("--json".into());
        }
        a.extend([
            "-e".into(),
            rsh.clone(),
            "--remote-ferry".into(),
            s(&ferry_bin()),
            src.clone(),
            format!("{dst}/"),
        ]);
        a
    };
    let o = ferry(base(false));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not ferry: got \"Welcome"), "{err}");
    // (the remote ferry, which met a client that hung up, may print its
    // own line through ssh's stderr first; ferry's own verdict comes last)
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains("not ferry: got"), "{err}");
    let o = ferry(base(true));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = stdout(&o);
    let fatal = out
        .lines()
        .find(|l| l.contains("\"fatal\":true"))
        .unwrap_or_else(|| panic!("no fatal event: {out}"));
    assert!(fatal.contains("\"category\":\"incompatible\""), "{fatal}");
    assert!(fatal.contains("\"exit_code\":2"), "{fatal}");
    assert!(fatal.contains("not ferry: got"), "{fatal}");
    assert!(!t.path().join("dst").join("f").exists());
}

/// Finding 12: an ssh that cannot reach its host: one line, no "connection
/// lost" (no connection was made), one `ferry doctor` pointer naming the ssh
/// target (`host:`), as scp ends with ssh's own message.
#[test]
fn an_unreachable_ssh_host_is_one_line_with_one_doctor_pointer() {
    let t = tmp();
    write(&t.path().join("f"), "x");
    // nothing listens on the port: ssh exits 255 at once
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rsh = format!("ssh -F /dev/null -p {port} -o BatchMode=yes -o ConnectTimeout=5");
    for transport in ["auto", "ferry"] {
        let o = ferry([
            "cp",
            "--transport",
            transport,
            "-e",
            &rsh,
            &s(&t.path().join("f")),
            "127.0.0.1:/tmp/ferry-never-written",
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(12), "{transport}: {err}");
        assert!(!err.contains("connection lost"), "{transport}: {err}");
        assert_eq!(
            err.matches("ferry doctor").count(),
            1,
            "{transport}: one pointer: {err}"
        );
        // with the ssh command it was given, so that the doctor looks
        // where the copy did (not at port 22)
        assert!(
            err.contains(&format!("`ferry doctor 127.0.0.1: -e '{rsh}'`")),
            "{transport}: the ssh target: {err}"
        );
    }
}

/// Finding 12: `--remote-ferry PATH` that is not there, or not a program, is
/// named as such (not "install it on the PATH or pass --remote-ferry").
#[test]
fn a_remote_ferry_that_is_missing_or_not_executable_is_named() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    write(&t.path().join("f"), "x");
    let not_exec = t.path().join("not-a-program");
    write(&not_exec, "just text\n");
    chmod(&not_exec, 0o644);
    let missing = t.path().join("no-such-ferry");
    for (remote, expect) in [
        (s(&missing), "no such command"),
        (s(&not_exec), "cannot be run"),
    ] {
        let o = ferry([
            "cp",
            "-e",
            &sshd.rsh(),
            "--remote-ferry",
            &remote,
            &s(&t.path().join("f")),
            &sshd.remote(&t.path().join("g")),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(12), "{remote}: {err}");
        assert!(err.contains(&format!("--remote-ferry {remote}")), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("or pass --remote-ferry"), "{err}");
        assert!(!err.contains("connection lost"), "{err}");
        assert!(!err.contains("Some("), "{err}");
        assert!(!t.path().join("g").exists());
    }
}

/// Finding 12: copy-id to a host without ferry says so without Rust's debug
/// text (`exit Some(127)`).
#[test]
fn copy_id_to_a_host_without_ferry_says_so_plainly() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let cfg = t.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    chmod(&cfg, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&cfg)]));
    let o = ferry([
        "copy-id",
        "--config-dir",
        &s(&cfg),
        "-e",
        &sshd.rsh(),
        "--remote-ferry",
        &s(&t.path().join("no-such-ferry")),
        "127.0.0.1",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("Some("), "{err}");
    assert!(
        err.contains("installing the key on 127.0.0.1 failed"),
        "{err}"
    );
}

/// Runs ferry with `TZ=UTC` (times in listings are local, as `ls -l`'s).
fn ferry_utc(args: &[String], cwd: &Path) -> std::process::Output {
    std::process::Command::new(ferry_bin())
        .args(args)
        .env("TZ", "UTC")
        .env("XDG_CACHE_HOME", cwd.join("cache"))
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// Finding 13: `ferry ls` shows times as `ls -l` does (the clock when
/// recent, the year when older than six months); --json keeps the number.
#[test]
fn ls_shows_times_as_ls_l_does_and_json_keeps_the_number() {
    let t = tmp();
    let dir = t.path().join("d");
    write(&dir.join("old"), "old");
    write(&dir.join("new"), "new");
    set_mtime(&dir.join("old"), 1_600_000_000); // 2020-09-13 12:26:40 UTC
    let o = ferry_utc(&strings(&["ls", &s(&dir)]), t.path());
    let out = stdout(&ok(o));
    let old = out.lines().find(|l| l.ends_with("old")).expect(&out);
    assert!(old.contains(" Sep 13  2020 "), "{out}");
    assert!(!out.contains("1600000000"), "{out}");
    let new = out.lines().find(|l| l.ends_with("new")).expect(&out);
    let clock = new.split_whitespace().rev().nth(1).unwrap();
    assert!(
        clock.len() == 5 && clock.as_bytes()[2] == b':',
        "a recent file shows the time of day: {out}"
    );
    let o = ferry_utc(&strings(&["ls", "--json", &s(&dir)]), t.path());
    let out = stdout(&ok(o));
    assert!(out.contains("\"mtime\":1600000000"), "{out}");
}

/// Finding 13: `ferry shell`'s `ls -l` and `df` as sftp lays them out.
#[test]
fn the_shell_lists_and_counts_space_as_sftp_does() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let r = t.path().join("remote");
    write(&r.join("f"), "12345");
    chmod(&r.join("f"), 0o640);
    set_mtime(&r.join("f"), 1_600_000_000);
    let script = t.path().join("batch");
    write(&script, "ls -l\ndf\ndf -h\ndf -i\n");
    let o = ferry_utc(
        &strings(&[
            "shell",
            "-b",
            &s(&script),
            "-e",
            &sshd.rsh(),
            &format!("127.0.0.1:{}", s(&r)),
        ]),
        t.path(),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}{out}", stderr(&o));
    let f = out
        .lines()
        .find(|l| l.ends_with(" f"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(f.starts_with("-rw-r----- "), "{f}");
    assert!(f.contains(" Sep 13  2020 f"), "{f}");
    let uid = std::fs::metadata(r.join("f")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let words: Vec<&str> = f.split_whitespace().collect();
    assert_eq!(words[1], uid.unwrap().to_string(), "{f}");
    assert_eq!(words[3], "5", "{f}");
    assert_eq!(out.matches("%Capacity").count(), 3, "{out}");
    assert!(!out.contains("K "), "no K-suffixed numbers: {out}");
    // df -h: human units (B, K, M, G, T) and a percentage
    let h = out
        .lines()
        .skip_while(|l| !l.contains("ferry> df -h"))
        .nth(2)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        h.split_whitespace()
            .take(4)
            .all(|w| w.ends_with(['B', 'K', 'M', 'G', 'T', 'P'])),
        "{h}"
    );
    assert!(h.trim_end().ends_with('%'), "{h}");
}

/// Finding 16: `ferry shell host:/nonexist` refuses to start, as sftp does.
#[test]
fn the_shell_refuses_to_start_in_a_directory_that_is_not_there() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let script = t.path().join("batch");
    write(&script, "pwd\n");
    let missing = t.path().join("nonexist");
    let o = ferry_utc(
        &strings(&[
            "shell",
            "-b",
            &s(&script),
            "-e",
            &sshd.rsh(),
            &format!("127.0.0.1:{}", s(&missing)),
        ]),
        t.path(),
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(!out.contains("Remote working directory"), "{out}");
    assert!(err.contains("nonexist"), "{err}");
    assert!(err.contains("No such file"), "{err}");
    // a daemon module path that is not there: refused too (the daemon
    // answers it: exit 12, as for any error the peer reports)
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let mut args = strings(&["shell", "-b", &s(&script)]);
    args.extend(d.client_args());
    args.push(d.url("m/nonexist"));
    let o = ferry_utc(&args, t.path());
    assert!(!o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("m/nonexist: No such file"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("Remote working directory"));
}

/// Finding 15: `ferry ls host:path` where the remote has no ferry (or only
/// SFTP) lists over SFTP as cp and sync do, with one notice line; and
/// `--transport ferry` does not.
#[test]
fn ls_falls_back_to_sftp_as_cp_does() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let r = t.path().join("remote");
    write(&r.join("a.bin"), "aaaa");
    std::fs::create_dir(r.join("sub")).unwrap();
    for extra in [
        "Subsystem sftp internal-sftp\n",
        "Subsystem sftp internal-sftp\nMatch User root\n    ForceCommand internal-sftp\n",
    ] {
        let sshd = Sshd::start_with_env("PATH=/usr/bin:/bin", extra);
        let target = format!("127.0.0.1:{}", s(&r));
        let o = ferry_utc(&strings(&["ls", "-e", &sshd.rsh(), &target]), t.path());
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(0), "{extra}: {err}");
        assert!(out.lines().any(|l| l.ends_with("a.bin")), "{out}");
        assert!(out.lines().any(|l| l.ends_with("sub")), "{out}");
        let a = out.lines().find(|l| l.ends_with("a.bin")).unwrap();
        assert!(a.contains(" 4 "), "{a}");
        assert_eq!(err.lines().count(), 1, "one notice: {err}");
        assert!(err.contains("listing over SFTP"), "{err}");
        // the same entries as a local ls of the directory
        let local = stdout(&ok(ferry_utc(&strings(&["ls", &s(&r)]), t.path())));
        let shape = |o: &str| -> Vec<String> {
            o.lines()
                .filter_map(|l| l.split_whitespace().last().map(str::to_string))
                .collect()
        };
        assert_eq!(shape(&out), shape(&local), "{out}\n{local}");
        let o = ferry_utc(
            &strings(&["ls", "--transport", "ferry", "-e", &sshd.rsh(), &target]),
            t.path(),
        );
        assert!(!o.status.success(), "{}", stdout(&o));
        assert!(!stderr(&o).contains("SFTP"), "{}", stderr(&o));
    }
}

/// Finding 11: S3 failures are one line naming the s3:// address and what
/// the server said, with the peer's exit code (12), not a local file's (11).
#[test]
fn s3_failures_are_one_line_naming_the_address_and_what_the_server_said() {
    use util::s3::{S3Server, KEY};
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let f = t.path().join("f.txt");
    write(&f, "x");
    let one_line = |o: &std::process::Output| {
        let err = stderr(o);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("<?xml") && !err.contains("Generic"), "{err}");
        err
    };
    // a wrong secret
    let o = s3
        .command(s3.port, &["ls", "s3://bkt/"])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-91f")
        .output()
        .unwrap();
    let err = one_line(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert!(err.contains("s3://bkt/"), "{err}");
    assert!(err.contains("bad credentials"), "{err}");
    assert!(!err.contains("wrong-secret-91f"), "{err}");
    // a bucket that is not there, written to
    let o = s3.ferry(&["cp", &s(&f), "s3://nobucket/x"]);
    let err = one_line(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert!(err.contains("s3://nobucket/x"), "{err}");
    assert!(err.contains("no such bucket"), "{err}");
    // an endpoint nothing listens on
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let o = s3
        .command(dead_port, &["ls", "s3://bkt/"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert!(
        err.contains("s3://bkt/") && err.contains("cannot reach"),
        "{err}"
    );
    // no bucket named at all
    let o = s3.ferry(&["sync", "-a", &format!("{}/", s(t.path())), "s3://"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing bucket name"), "{}", stderr(&o));
}

/// Finding 17: a fan-out whose source is not there announces no job; one that
/// no host got says it failed, not that it is "partial".
#[test]
fn a_fanout_that_cannot_start_or_reaches_no_host_says_so() {
    let t = tmp();
    let cfg = t.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    chmod(&cfg, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&cfg)]));
    let dead = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dests = [
        format!("ferry://127.0.0.1:{}/m/out", dead()),
        format!("ferry://127.0.0.1:{}/m/out", dead()),
    ];
    let run = |src: &Path| {
        let mut c = std::process::Command::new(ferry_bin());
        c.args(["fanout", "-a", "--config-dir", &s(&cfg)])
            .args(["--host-key-check", "accept-new"])
            .arg(src)
            .args(&dests)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let status = wait_for(&mut child, std::time::Duration::from_secs(180));
        if status.is_none() {
            let _ = child.kill();
        }
        let o = child.wait_with_output().unwrap();
        assert!(status.is_some(), "fanout hung: {}", stderr(&o));
        o
    };
    let o = run(&t.path().join("nonexist"));
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "no job announced");
    assert!(stderr(&o).contains("nonexist"), "{}", stderr(&o));
    let src = t.path().join("src");
    write(&src.join("f"), "x");
    let o = run(&src);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("failed: no host got it"), "{err}");
    assert!(!err.contains("is partial"), "{err}");
}

/// Finding 25: an IPv6 daemon address is shown in brackets, as ssh and URLs
/// write it (`[::1]:PORT`, not `::1:PORT`).
#[test]
fn an_ipv6_daemon_address_is_shown_in_brackets() {
    let t = tmp();
    let cfg = t.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    chmod(&cfg, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&cfg)]));
    // a port nothing listens on (taken on IPv4, free on both in practice)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = ferry([
        "ls",
        "--config-dir",
        &s(&cfg),
        "--retries",
        "0",
        &format!("ferry://[::1]:{port}/m/"),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert!(err.contains(&format!("[::1]:{port}")), "{err}");
    assert!(!err.contains(&format!(" ::1:{port}")), "{err}");
}
