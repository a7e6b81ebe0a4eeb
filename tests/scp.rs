//! scp's habits (issue 24): `ferry cp host1:a host2:b` between two remotes,
//! directly from the first to the second where it can, else through this
//! host (`-3` forces that, leaving nothing behind here), and `-J` jump hosts.
//! The two "hosts" are the test's one sshd, with different paths.

mod util;
use std::path::Path;
use util::*;

fn tree(src: &Path) {
    write(&src.join("a.txt"), "alpha\n");
    write(&src.join("d/w.bin"), random_bytes(300_000, 4));
    set_mtime(&src.join("a.txt"), 1_600_000_000);
}

/// `ferry cp -r` from `src` on the sshd to `dst` on it, with `extra` flags
/// and `TMPDIR` set to `staging`.
fn remote_cp(
    sshd: &Sshd,
    extra: &[&str],
    src: &Path,
    dst: &Path,
    staging: &Path,
) -> std::process::Output {
    let mut args: Vec<String> = vec!["cp".into(), "-rp".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(sshd.args());
    args.extend([sshd.remote(src), sshd.remote(dst)]);
    std::process::Command::new(ferry_bin())
        .args(&args)
        .env("TMPDIR", staging)
        .output()
        .unwrap()
}

#[test]
fn remote_to_remote_directly() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, staging) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("staging"),
    );
    tree(&src);
    std::fs::create_dir_all(&staging).unwrap();
    let o = remote_cp(&sshd, &[], &src, &dst, &staging);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("copying directly from 127.0.0.1 to 127.0.0.1"),
        "{}",
        stderr(&o)
    );
    // scp's naming: dst did not exist, so it is the copy of src
    assert_same_tree(&src, &dst, false);
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "nothing staged here"
    );
}

#[test]
fn three_goes_through_this_host_and_leaves_nothing() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, staging) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("staging"),
    );
    tree(&src);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    let o = remote_cp(&sshd, &["-3"], &src, &dst, &staging);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("copying through this host"),
        "{}",
        stderr(&o)
    );
    // dst existed: src goes inside it, as with scp -r
    assert_same_tree(&src, &dst.join("src"), false);
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging removed"
    );
    // a single file, renamed on the way
    let o = remote_cp(
        &sshd,
        &["-3"],
        &src.join("d/w.bin"),
        &dst.join("copy.bin"),
        &staging,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dst.join("copy.bin")).unwrap(),
        std::fs::read(src.join("d/w.bin")).unwrap()
    );
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

/// The first host cannot reach the second (here: the ssh command works only
/// in this process's environment, not in the sshd's session): through here.
#[test]
fn unreachable_second_host_falls_back_to_this_host() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, staging) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("staging"),
    );
    tree(&src);
    std::fs::create_dir_all(&staging).unwrap();
    let rsh = t.path().join("only-here-ssh");
    write(
        &rsh,
        format!(
            "#!/bin/sh\n[ \"$FERRY_TEST_HERE\" = 1 ] || exit 255\nexec {} \"$@\"\n",
            sshd.rsh()
        ),
    );
    chmod(&rsh, 0o755);
    let o = std::process::Command::new(ferry_bin())
        .args(["cp", "-rp", "-e"])
        .arg(&rsh)
        .arg("--remote-ferry")
        .arg(ferry_bin())
        .args([sshd.remote(&src), sshd.remote(&dst)])
        .env("TMPDIR", &staging)
        .env("FERRY_TEST_HERE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("copying through this host"),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&src, &dst, false);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

/// `-J` reaches the remote through a jump host (ssh's ProxyJump): through a
/// jump host that does not answer the copy fails, through the sshd itself it
/// arrives. ssh reads the key and port for both hops from one config file.
#[test]
fn jump_host() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let d = sshd.dir.path().display().to_string();
    let cfg = t.path().join("ssh_config");
    write(
        &cfg,
        format!(
            "Host *\n  Port {}\n  IdentityFile {d}/id_ed25519\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
            sshd.port
        ),
    );
    let src = t.path().join("w.bin");
    write(&src, random_bytes(20_000, 8));
    let rsh = format!("ssh -F {}", cfg.display());
    let cp = |jump: &str, dst: &Path| {
        ferry([
            "cp".to_string(),
            "-J".into(),
            jump.into(),
            "-e".into(),
            rsh.clone(),
            "--remote-ferry".into(),
            ferry_bin().display().to_string(),
            src.display().to_string(),
            sshd.remote(dst),
        ])
    };
    let (bad, good) = (t.path().join("bad.bin"), t.path().join("good.bin"));
    let o = cp("127.0.0.1:1", &bad);
    assert!(!o.status.success(), "a dead jump host must fail the copy");
    assert!(!bad.exists());
    let o = cp("127.0.0.1", &good);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&good).unwrap(), std::fs::read(&src).unwrap());
}

/// `sync` between two remotes is refused, as rsync refuses it.
#[test]
fn sync_between_two_remotes_is_refused() {
    let o = ferry(["sync", "-a", "h1:a/", "h2:b/"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("remote-to-remote"), "{}", stderr(&o));
}

/// What a copy must keep, for the streamed relay: modes, mtimes, an empty
/// file, a symlink (cp follows it, as scp does) and a multi-MiB file.
fn rich_tree(src: &Path) {
    write(&src.join("a.txt"), "alpha\n");
    chmod(&src.join("a.txt"), 0o640);
    set_mtime(&src.join("a.txt"), 1_600_000_000);
    write(&src.join("empty"), "");
    set_mtime(&src.join("empty"), 1_500_000_000);
    write(&src.join("d/big.bin"), random_bytes((6 << 20) + 12_345, 7));
    chmod(&src.join("d/big.bin"), 0o600);
    set_mtime(&src.join("d/big.bin"), 1_700_000_000);
    write(&src.join("d/run.sh"), "#!/bin/sh\necho hi\n");
    chmod(&src.join("d/run.sh"), 0o755);
    // (whole seconds: what SFTP keeps)
    set_mtime(&src.join("d/run.sh"), 1_650_000_000);
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
}

/// What `ferry cp -rp src` makes of `src` (links followed, as scp does):
/// the oracle a relayed copy is compared with.
fn copied_here(src: &Path, at: &Path) {
    ok(ferry([
        "cp".to_string(),
        "-rp".into(),
        src.display().to_string(),
        at.display().to_string(),
    ]));
    assert!(at.join("link").is_file(), "cp follows the link");
}

/// Runs `ferry cp ARGS` with `TMPDIR` set to `spool`, which must stay
/// empty: the relay writes nothing to this host's disk.
fn cp_spooled(args: &[String], spool: &Path) -> std::process::Output {
    std::fs::create_dir_all(spool).unwrap();
    let o = std::process::Command::new(ferry_bin())
        .arg("cp")
        .args(args)
        .env("TMPDIR", spool)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read_dir(spool).unwrap().count(),
        0,
        "nothing may be written here: {}",
        stderr(&o)
    );
    o
}

/// The `summary` line of `--json` output.
fn json_summary(o: &std::process::Output) -> std::collections::HashMap<String, i64> {
    let line = stdout(o)
        .lines()
        .find(|l| l.contains("\"kind\":\"summary\""))
        .unwrap_or_else(|| panic!("no summary in:\n{}", stdout(o)))
        .to_string();
    // flat numbers only: "key":123
    line.trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.trim_matches('"').to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `-3` streams: the tree arrives as a local `cp -rp` makes it, nothing is
/// written here, and a changed file copied again costs only its delta on
/// both links (the destination's signatures reach the source's sender).
#[test]
fn three_streams_a_tree_and_then_only_the_delta() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, spool) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("spool"),
    );
    rich_tree(&src);
    copied_here(&src, &t.path().join("expected"));
    let mut args: Vec<String> = vec!["-rp".into(), "-3".into()];
    args.extend(sshd.args());
    let o = cp_spooled(
        &[args.clone(), vec![sshd.remote(&src), sshd.remote(&dst)]].concat(),
        &spool,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("copying through this host"));
    assert_same_tree(&t.path().join("expected"), &dst, false);

    // 1000 bytes changed in the middle of the 6 MiB file
    let big = src.join("d/big.bin");
    let mut bytes = std::fs::read(&big).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 1000].copy_from_slice(&random_bytes(1000, 99));
    write(&big, &bytes);
    args.push("--json".into());
    let o = cp_spooled(
        &[
            args,
            vec![sshd.remote(&big), sshd.remote(&dst.join("d/big.bin"))],
        ]
        .concat(),
        &spool,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(dst.join("d/big.bin")).unwrap(), bytes);
    let s = json_summary(&o);
    let size = bytes.len() as i64;
    assert!(s["literal"] < 256 << 10, "only the change is sent: {s:?}");
    assert!(
        s["matched"] > size - (256 << 10),
        "the rest is reused: {s:?}"
    );
    // to the destination and from the source: the delta, not the file
    assert!(s["sent"] < 512 << 10, "to the destination: {s:?}");
    assert!(s["received"] < 512 << 10, "from the source: {s:?}");
}

/// A daemon at either end (or both) goes through this host, streamed.
#[test]
fn through_here_to_from_and_between_daemons() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let module = t.path().join("module");
    rich_tree(&module.join("src"));
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    // the oracles: what one hop makes of each source (a daemon does not
    // follow the link: it never follows one inside a module)
    let (expected, expected_d) = (t.path().join("expected"), t.path().join("expected_d"));
    copied_here(&module.join("src"), &expected);
    let mut args = vec!["cp".to_string(), "-rp".into()];
    args.extend(d.client_args());
    ok(ferry(
        [args, vec![d.url("m/src"), expected_d.display().to_string()]].concat(),
    ));
    let spool = t.path().join("spool");
    let cp = |from: String, to: String| {
        let mut args: Vec<String> = vec!["-rp".into()];
        args.extend(sshd.args());
        args.extend(d.client_args());
        args.extend([from, to]);
        let o = cp_spooled(&args, &spool);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("copying through this host"));
    };
    let from_daemon = t.path().join("from_daemon");
    cp(d.url("m/src"), sshd.remote(&from_daemon));
    assert_same_tree(&expected_d, &from_daemon, false);
    cp(sshd.remote(&module.join("src")), d.url("m/to_daemon"));
    assert_same_tree(&expected, &module.join("to_daemon"), false);
    cp(d.url("m/src"), d.url("m/between"));
    assert_same_tree(&expected_d, &module.join("between"), false);
}

/// The peak resident memory (VmHWM) of `child` until it exits, in KiB,
/// checking `meanwhile` every 20 ms.
fn peak_rss_kib(
    child: &mut std::process::Child,
    meanwhile: impl Fn(),
) -> (std::process::ExitStatus, u64) {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        meanwhile();
        if let Some(st) = child.try_wait().unwrap() {
            return (st, peak);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the copy hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes `mib` MiB of random bytes to `path`, 8 MiB at a time.
fn big_file(path: &Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..mib.div_ceil(8) {
        let n = 8.min(mib - i * 8) << 20;
        std::io::Write::write_all(&mut f, &random_bytes(n, 1000 + i as u64)).unwrap();
    }
}

/// Whether two files hold the same bytes (read 8 MiB at a time).
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let mut m = 0;
        while m < n {
            let k = fb.read(&mut bb[m..n]).unwrap();
            if k == 0 {
                return false;
            }
            m += k;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb[..1]).unwrap() == 0;
        }
    }
}

/// A 200 MiB file crosses with `-3` while the ferry client here stays
/// small (it forwards frames; it never holds a file) and writes nothing
/// to its disk.
#[test]
fn three_moves_a_big_file_in_bounded_memory_and_no_disk() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, spool) = (
        t.path().join("big.bin"),
        t.path().join("copy.bin"),
        t.path().join("spool"),
    );
    big_file(&src, 200);
    std::fs::create_dir_all(&spool).unwrap();
    let mut child = std::process::Command::new(ferry_bin())
        .args(["cp", "-p", "-3"])
        .args(sshd.args())
        .args([sshd.remote(&src), sshd.remote(&dst)])
        .env("TMPDIR", &spool)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // nothing is staged here at any moment of the copy
    let (status, peak) = peak_rss_kib(&mut child, || {
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "staged here");
    });
    assert!(status.success(), "{status}");
    assert!(same_bytes(&src, &dst), "the copy differs");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    eprintln!("peak RSS of the relaying client: {peak} KiB");
    assert!(peak > 0, "VmHWM was read");
    assert!(
        peak < 32 << 10,
        "the client held {peak} KiB for a 200 MiB file"
    );
    std::fs::remove_file(&src).unwrap();
    std::fs::remove_file(&dst).unwrap();
}

/// The processes (other than `except`) that hold `path` open.
fn holders(path: &Path, except: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == except {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
        {
            found.push(pid);
        }
    }
    found
}

/// An sshd whose sessions find ferry on their PATH, as on a real host: no
/// `--remote-ferry`, so each end's stderr is kept (and shown only if the
/// copy succeeds), and a failure is the one line this client prints.
fn sshd_with_ferry_on_path() -> Sshd {
    let bin = ferry_bin().parent().unwrap().display().to_string();
    Sshd::start_with_env(&format!("PATH={bin}:/usr/bin:/bin"), "")
}

/// The source's ferry killed mid-file: the copy fails with one line that
/// names the source, and nothing is published at the destination.
#[test]
fn a_source_killed_mid_file_publishes_nothing() {
    if !sshd_available() {
        return;
    }
    let sshd = sshd_with_ferry_on_path();
    let t = tmp();
    let (src, dst) = (t.path().join("big.bin"), t.path().join("dst"));
    big_file(&src, 64);
    std::fs::create_dir_all(&dst).unwrap();
    // -l: 80 Mbit/s, so that the file takes several seconds
    let mut child = std::process::Command::new(ferry_bin())
        .args(["cp", "-p", "-3", "-l", "80000", "-e", &sshd.rsh()])
        .args([sshd.remote(&src), sshd.remote(&dst.join("big.bin"))])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the source's ferry is the one process that reads the file
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let source = loop {
        if let Some(&pid) = holders(&src, child.id()).first() {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the source never opened the file"
        );
        assert!(child.try_wait().unwrap().is_none(), "the copy ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let st = std::process::Command::new("kill")
        .args(["-KILL", &source.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = wait_for(&mut child, std::time::Duration::from_secs(60)).expect("ferry hung");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    eprintln!("{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("copying through this host"))
        .collect();
    assert_eq!(said.len(), 1, "one line says what failed:\n{err}");
    assert!(
        said[0].contains("connection lost") && said[0].contains("the source, 127.0.0.1"),
        "{err}"
    );
    assert!(!dst.join("big.bin").exists(), "nothing published");
    std::fs::remove_file(&src).unwrap();
}

/// Several sources, `-r` and `-p` mean what they mean for one hop: each
/// source lands inside the existing destination directory by its name,
/// without `-p` the times are the copy's own, and a source that is missing
/// is reported while the others arrive (exit 23, as scp's partial copy).
#[test]
fn three_keeps_cp_semantics_for_several_sources() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dst, spool) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("spool"),
    );
    rich_tree(&src);
    std::fs::create_dir_all(&dst).unwrap();
    let run = |extra: &[&str], sources: &[&Path]| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push("-3".into());
        args.extend(sshd.args());
        args.extend(sources.iter().map(|p| sshd.remote(p)));
        args.push(sshd.remote(&dst));
        cp_spooled(&args, &spool)
    };
    let o = run(&["-rp"], &[&src.join("d"), &src.join("a.txt")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&src.join("d"), &dst.join("d"), false);
    let a = std::fs::metadata(dst.join("a.txt")).unwrap();
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        a.modified().unwrap(),
        std::fs::metadata(src.join("a.txt"))
            .unwrap()
            .modified()
            .unwrap()
    );
    // without -p the time is the copy's own
    let o = run(&[], &[&src.join("empty")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mtime = std::fs::metadata(dst.join("empty"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        mtime.elapsed().unwrap() < std::time::Duration::from_secs(600),
        "without -p the copy is new"
    );
    // a missing source among others: reported, the rest arrives
    let o = run(
        &["-p"],
        &[&t.path().join("nothing-here"), &src.join("d/run.sh")],
    );
    assert_eq!(o.status.code(), Some(23), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing-here"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dst.join("run.sh")).unwrap(),
        std::fs::read(src.join("d/run.sh")).unwrap()
    );
    // what one hop does with a directory and no -r
    let single = ferry([
        "cp".to_string(),
        src.join("d").display().to_string(),
        t.path().join("one-hop").display().to_string(),
    ]);
    let o = run(&[], &[&src.join("d")]);
    assert_eq!(o.status.code(), single.status.code(), "{}", stderr(&o));
}

/// Over SFTP at both ends (`--transport sftp`: no ferry needed there) the
/// relay still streams: both session halves run here, over the two SFTP
/// connections.
#[test]
fn three_streams_between_two_sftp_ends() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let (src, dst, spool) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("spool"),
    );
    rich_tree(&src);
    copied_here(&src, &t.path().join("expected"));
    let o = cp_spooled(
        &[
            "-rp".to_string(),
            "-3".into(),
            "--transport".into(),
            "sftp".into(),
            "-e".into(),
            sshd.rsh(),
            sshd.remote(&src),
            sshd.remote(&dst),
        ],
        &spool,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&t.path().join("expected"), &dst, false);
}

/// An end that cannot be reached (here a daemon address where nothing
/// listens) fails the relay with one line naming it and the `ferry doctor`
/// command to run, whichever end it is; nothing is made at the other.
#[test]
fn an_unreachable_end_is_named_with_its_doctor_command() {
    if !sshd_available() {
        return;
    }
    let sshd = sshd_with_ferry_on_path();
    let t = tmp();
    let src = t.path().join("a.txt");
    write(&src, "alpha\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("ferry://127.0.0.1:{port}/m/x");
    let config = t.path().join("config");
    ok(ferry([
        "keygen".to_string(),
        "--config-dir".into(),
        config.display().to_string(),
    ]));
    let doctor = format!("ferry doctor 127.0.0.1:{port}");
    let spool = t.path().join("spool");
    let dst = t.path().join("never");
    for (from, to) in [
        (sshd.remote(&src), dead.clone()),
        (dead.clone(), sshd.remote(&dst)),
    ] {
        let mut args = vec!["-e".to_string(), sshd.rsh()];
        args.extend([
            "--config-dir".into(),
            config.display().to_string(),
            from,
            to,
        ]);
        let o = cp_spooled(&args, &spool);
        assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
        let err = stderr(&o);
        let said: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("copying through this host"))
            .collect();
        assert_eq!(said.len(), 1, "{err}");
        assert!(said[0].contains(&doctor), "{err}");
        assert!(!dst.exists());
    }
}

/// A TCP proxy to `target` whose first connection is cut once `cut_after`
/// bytes went from the client to the server; later ones pass whole. At most
/// `connections` connections are served.
fn cutting_proxy(
    target: std::net::SocketAddr,
    cut_after: usize,
    connections: usize,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, client) in l.incoming().take(connections).enumerate() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(target) else {
                return;
            };
            let limit = if n == 0 { cut_after } else { usize::MAX };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let (mut from, mut to) = (c2, s2);
                let (mut buf, mut passed) = (vec![0u8; 64 << 10], 0usize);
                while let Ok(k) = from.read(&mut buf) {
                    if k == 0 || to.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    passed += k;
                    if passed >= limit {
                        break;
                    }
                }
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let (mut from, mut to) = (server, client);
                let _ = std::io::copy(&mut from, &mut to);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

/// A daemon end whose connection breaks mid-file: the relay is run again,
/// as a transfer to a daemon is, resumes from the partial file the first
/// run left there, and the file arrives whole.
#[test]
fn a_broken_daemon_connection_is_retried() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir_all(&module).unwrap();
    let src = t.path().join("big.bin");
    big_file(&src, 8);
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let proxy = cutting_proxy(d.addr, 3 << 20, 4);
    let mut args = vec!["-p".to_string(), "--json".into()];
    args.extend(sshd.args());
    args.extend(d.client_args());
    args.extend([sshd.remote(&src), format!("ferry://{proxy}/m/big.bin")]);
    let o = cp_spooled(&args, &t.path().join("spool"));
    assert!(o.status.success(), "{}", stderr(&o));
    // (with --json, notices are JSON lines on stdout)
    assert!(stdout(&o).contains("retrying"), "{}", stdout(&o));
    assert!(same_bytes(&src, &module.join("big.bin")));
    // the second run resumed from the partial file the first one left
    let s = json_summary(&o);
    assert!(s["matched"] > 1 << 20, "{s:?}");
    assert!(s["literal"] < 8 << 20, "{s:?}");
}

/// A relay whose daemon end keeps breaking gives up as a direct transfer to
/// a daemon does (`tests/failfast.rs`): each retry told, then the failure
/// says it gave up, with the `ferry doctor` command for that end still
/// last. (`cp` has no `--retries`: the defaults, 10 retries within 60 s,
/// so this takes about 50 s of waiting.)
#[test]
fn a_relay_gives_up_after_its_retries_as_a_direct_copy_does() {
    let t = tmp();
    let module = t.path().join("module");
    write(&module.join("f"), "x");
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    // a "daemon" that hangs up at once: a broken connection, worth retrying
    let (addr, accepted) = hang_up_listener(20);
    let mut args = d.client_args();
    args.extend([d.url("m/f"), format!("ferry://{addr}/m/f")]);
    let o = cp_spooled(&args, &t.path().join("spool"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    let retried = err.matches("retrying in").count();
    // (each retry is told as the direct path tells it: the hint comes once)
    assert_eq!(err.matches("ferry doctor").count(), 1, "{err}");
    assert!((1..=10).contains(&retried), "{err}");
    assert!(err.contains("gave up after retrying"), "{err}");
    assert!(
        err.trim_end()
            .ends_with(&format!("run `ferry doctor {addr}` to find out why")),
        "{err}"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        retried + 1,
        "{err}"
    );
}
