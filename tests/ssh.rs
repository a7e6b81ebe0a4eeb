//! Transfers through a real OpenSSH server on 127.0.0.1: push, pull, `-e`,
//! `--remote-ferry`, a missing remote ferry, and remote names that a shell
//! would misread.

mod util;
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn tree(root: &std::path::Path) {
    write(&root.join("shard-0.jsonl"), "{\"a\":1}\n".repeat(1000));
    write(&root.join("ckpt/model.bin"), random_bytes(3 << 20, 5));
    write(&root.join("ckpt/empty"), "");
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("ckpt/model.bin", root.join("latest")).unwrap();
    chmod(&root.join("shard-0.jsonl"), 0o600);
    set_mtime(&root.join("ckpt/model.bin"), 1_650_000_000);
}

#[test]
fn push_and_pull_over_ssh_match_the_source() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let src = t.path().join("src");
    tree(&src);
    let remote = t.path().join("remote");
    let mut args = vec!["sync".to_string(), "-a".into()];
    args.extend(sshd.args());
    args.extend([format!("{}/", src.display()), sshd.remote(&remote)]);
    ok(ferry(&args));
    assert_same_tree(&src, &remote, true);

    let back = t.path().join("back");
    let mut args = vec!["sync".to_string(), "-a".into()];
    args.extend(sshd.args());
    args.extend([format!("{}/", sshd.remote(&remote)), s(&back)]);
    ok(ferry(&args));
    assert_same_tree(&src, &back, true);
}

#[test]
fn cp_pulls_a_single_file_like_scp() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    write(
        &t.path().join("remote/model.safetensors"),
        random_bytes(1 << 20, 8),
    );
    let here = t.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let mut args = vec!["cp".to_string()];
    args.extend(sshd.args());
    args.extend([
        sshd.remote(&t.path().join("remote/model.safetensors")),
        s(&here),
    ]);
    ok(ferry(&args));
    assert_eq!(
        std::fs::read(here.join("model.safetensors")).unwrap(),
        random_bytes(1 << 20, 8)
    );
}

#[test]
fn remote_names_with_shell_characters_are_just_names() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    // a shell on the remote would run these in the login directory (root's home)
    let tag = format!("ferry-pwned-{}", std::process::id());
    let marker = std::path::Path::new("/root").join(&tag);
    let weird = format!("a b;touch {tag}; `touch {tag}` $(touch {tag})\nx");
    let remote_file = t.path().join(&weird);
    write(&remote_file, "payload");
    let here = t.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let mut args = vec!["sync".to_string()];
    args.extend(sshd.args());
    args.extend([sshd.remote(&remote_file), s(&here)]);
    ok(ferry(&args));
    assert!(!marker.exists(), "a remote shell ran part of the name");
    assert_eq!(
        std::fs::read_to_string(here.join(&weird)).unwrap(),
        "payload"
    );
}

#[test]
fn missing_remote_ferry_names_remote_ferry_flag() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    write(&t.path().join("f"), "x");
    let o = ferry([
        "sync".to_string(),
        "-e".into(),
        sshd.rsh(),
        "--remote-ferry".into(),
        "/nonexistent/ferry".into(),
        s(&t.path().join("f")),
        sshd.remote(&t.path().join("g")),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--remote-ferry"), "{err}");
    assert!(!t.path().join("g").exists());
}

#[test]
fn unreachable_host_is_a_clear_error() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let port = sshd.port;
    drop(sshd); // nothing listens there now
    let t = tmp();
    write(&t.path().join("f"), "x");
    let o = ferry([
        "sync".to_string(),
        "-e".into(),
        format!("ssh -F /dev/null -p {port} -o BatchMode=yes -o ConnectTimeout=5"),
        s(&t.path().join("f")),
        format!("127.0.0.1:{}", t.path().join("g").display()),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ssh failed"), "{}", stderr(&o));
}

#[test]
fn copy_id_installs_my_key_in_the_remote_daemons_authorized_keys() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (mine, remote) = (t.path().join("mine"), t.path().join("remote"));
    std::fs::create_dir(&remote).unwrap();
    chmod(&remote, 0o700);
    ok(ferry(["keygen", "--config-dir", &s(&mine)]));
    // the remote ferry keeps its files in its own config directory: a wrapper
    // given as --remote-ferry adds --config-dir after `trust add -`
    let wrapper = t.path().join("remote-ferry.sh");
    write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --config-dir {}\n",
            ferry_bin().display(),
            remote.display()
        ),
    );
    chmod(&wrapper, 0o755);
    ok(ferry([
        "copy-id".to_string(),
        "-e".into(),
        sshd.rsh(),
        "--remote-ferry".into(),
        s(&wrapper),
        "--config-dir".into(),
        s(&mine),
        "127.0.0.1".into(),
    ]));
    let installed = std::fs::read_to_string(remote.join("authorized_keys")).unwrap();
    let public = std::fs::read_to_string(mine.join("id_ed25519.pub")).unwrap();
    let key_b64 = public.split_whitespace().nth(1).unwrap();
    assert!(installed.contains(key_b64), "{installed}");
}

/// The byte counts the wrapper of a test below wrote to `log`, one file per
/// remote session named `prefix` + pid, once `sessions` of them are complete
/// (a session's count is written as it ends, just after the client returns).
fn session_counts(log: &std::path::Path, prefix: &str, sessions: usize) -> Vec<u64> {
    for _ in 0..200 {
        let counts: Vec<u64> = std::fs::read_dir(log)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect();
        if counts.len() >= sessions {
            return counts;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "fewer than {sessions} remote sessions ended in {}",
        log.display()
    );
}

#[test]
fn a_large_file_crosses_several_ssh_connections_both_ways() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let size = 48u64 << 20;
    write(
        &t.path().join("src/model.bin"),
        random_bytes(size as usize, 61),
    );
    // the remote ferry, wrapped to count the bytes of its session in each
    // direction (each extra stream is an ssh session of its own)
    let wrapper = |log: &std::path::Path| {
        std::fs::create_dir(log).unwrap();
        let path = log.with_extension("sh");
        write(
            &path,
            format!(
                "#!/bin/bash\ntee >(wc -c > {l}/in.$$) | {f} \"$@\" | tee >(wc -c > {l}/out.$$)\n",
                l = log.display(),
                f = ferry_bin().display()
            ),
        );
        chmod(&path, 0o755);
        s(&path)
    };
    let run = |log: &std::path::Path, from: String, to: String| {
        let w = wrapper(log);
        ok(ferry([
            "sync",
            "-a",
            "--streams",
            "3",
            "-e",
            &sshd.rsh(),
            "--remote-ferry",
            &w,
            &from,
            &to,
        ]))
    };
    let (src, remote, back) = (
        t.path().join("src"),
        t.path().join("remote"),
        t.path().join("back"),
    );
    let (push_log, pull_log) = (t.path().join("push"), t.path().join("pull"));
    run(
        &push_log,
        format!("{}/", src.display()),
        sshd.remote(&remote),
    );
    assert_same_tree(&src, &remote, true);
    run(&pull_log, format!("{}/", sshd.remote(&remote)), s(&back));
    assert_same_tree(&src, &back, true);

    // three sessions each way, and the file's bytes split across all three
    for (log, data) in [(&push_log, "in."), (&pull_log, "out.")] {
        let counts = session_counts(log, data, 3);
        assert_eq!(counts.len(), 3, "one ssh session per stream: {counts:?}");
        assert!(
            counts.iter().all(|&n| n >= size / 4),
            "each stream should carry about a third of the file ({data}): {counts:?}"
        );
    }
}

/// s19 review: `ferry serve --stdio` failing before its session runs (a
/// `--chown` name unknown on the remote) tells the client why, in one line;
/// the user saw only "connection lost: ... exited with status 1". Through an
/// `-e` command that runs the remote side here, as ssh would.
#[test]
fn serve_stdio_failing_before_the_session_tells_the_client_why() {
    let t = tmp();
    write(&t.path().join("src/a"), "a");
    let rsh = t.path().join("local-rsh");
    // `rsh -- host ferry serve --stdio`: run the command, here
    write(&rsh, "#!/bin/sh\nshift 2\nexec sh -c \"$*\"\n");
    chmod(&rsh, 0o755);
    let dest = t.path().join("dest");
    let o = ferry([
        "sync",
        "-a",
        "--chown",
        "nosuchuser9x:",
        "-e",
        &s(&rsh),
        "--remote-ferry",
        &s(&ferry_bin()),
        &format!("{}/", s(&t.path().join("src"))),
        &format!("host:{}/", s(&dest)),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nosuchuser9x"), "{err}");
    assert!(!err.contains("connection lost"), "{err}");
    assert!(!dest.join("a").exists());
}
