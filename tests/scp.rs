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
