//! `ferry shell -b` against OpenSSH's `sftp -b` as the oracle: the same
//! script, run by each against the same real sshd, leaves the same trees on
//! both sides and exits the same way.

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use util::*;

fn sftp_oracle(sshd: &Sshd, script: &Path, local: &Path) -> Output {
    let d = sshd.dir.path().display();
    Command::new("sftp")
        .args(["-b"])
        .arg(script)
        .args(["-F", "/dev/null", "-P", &sshd.port.to_string(), "-i"])
        .arg(format!("{d}/id_ed25519"))
        .args(["-o", &format!("UserKnownHostsFile={d}/known_hosts")])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg("127.0.0.1")
        .current_dir(local)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ferry_shell(sshd: &Sshd, script: &Path, local: &Path, cache: &Path) -> Output {
    Command::new(ferry_bin())
        .args(["shell", "-b"])
        .arg(script)
        .args(["-e", &sshd.rsh(), "127.0.0.1"])
        .current_dir(local)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn local_tree(root: &Path) {
    std::fs::create_dir_all(root.join("tree/b")).unwrap();
    write(&root.join("file1.txt"), "one\n");
    write(&root.join("tree/a"), random_bytes(300 << 10, 3));
    write(&root.join("tree/b/c"), "c\n");
    chmod(&root.join("tree/b/c"), 0o640);
    for (i, f) in ["file1.txt", "tree/a", "tree/b/c"].iter().enumerate() {
        set_mtime(&root.join(f), 1_600_000_000 + i as i64);
    }
}

/// Runs `script` (with `{R}` for the remote directory, `{L}` for the local
/// one) through sftp and through ferry shell; returns both outputs.
fn both(script: &str) -> (Output, Output, tempfile::TempDir) {
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let mut outs = Vec::new();
    for side in ["sftp", "ferry"] {
        let (l, r) = (
            t.path().join(format!("{side}-local")),
            t.path().join(format!("{side}-remote")),
        );
        local_tree(&l);
        std::fs::create_dir(&r).unwrap();
        let text = script
            .replace("{R}", &r.display().to_string())
            .replace("{L}", &l.display().to_string());
        let file = t.path().join(format!("{side}.batch"));
        write(&file, text);
        outs.push(match side {
            "sftp" => sftp_oracle(&sshd, &file, &l),
            _ => ferry_shell(&sshd, &file, &l, &t.path().join("cache")),
        });
    }
    let ferry = outs.pop().unwrap();
    let sftp = outs.pop().unwrap();
    for side in ["local", "remote"] {
        assert_same_tree(
            &t.path().join(format!("sftp-{side}")),
            &t.path().join(format!("ferry-{side}")),
            false,
        );
    }
    (sftp, ferry, t)
}

#[test]
fn a_batch_leaves_the_same_trees_as_sftp_b() {
    if !sshd_available() {
        return;
    }
    let script = "\
cd {R}
lcd {L}
mkdir made
put -p file1.txt made/
put -r -p tree
-rm does-not-exist
@rename made/file1.txt made/renamed.txt
chmod 600 made/renamed.txt
mkdir gone
rmdir gone
get -r -p tree back
get -p made/renamed.txt
pwd
lpwd
ls
df
";
    let (sftp, ferry, t) = both(script);
    assert_eq!(sftp.status.code(), Some(0), "{}", stderr(&sftp));
    assert_eq!(ferry.status.code(), Some(0), "{}", stderr(&ferry));
    // (the tree really moved: this is not two empty directories agreeing)
    let r = t.path().join("ferry-remote");
    assert_eq!(std::fs::read(r.join("made/renamed.txt")).unwrap(), b"one\n");
    assert!(t.path().join("ferry-local/back/b/c").exists());
    assert!(stdout(&ferry).contains(&format!("Remote working directory: {}", r.display())));
}

#[test]
fn a_failing_batch_stops_where_sftp_b_stops() {
    if !sshd_available() {
        return;
    }
    let script = "\
cd {R}
mkdir first
rm does-not-exist
mkdir never
";
    let (sftp, ferry, t) = both(script);
    assert_eq!(sftp.status.code(), Some(1));
    assert_eq!(ferry.status.code(), Some(1));
    assert!(t.path().join("ferry-remote/first").is_dir());
    assert!(!t.path().join("ferry-remote/never").exists());
}

#[test]
fn piped_commands_run_without_echo_or_escape_codes() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let r = t.path().join("remote");
    std::fs::create_dir(&r).unwrap();
    let mut child = Command::new(ferry_bin())
        .args([
            "shell",
            "-e",
            &sshd.rsh(),
            &format!("127.0.0.1:{}", r.display()),
        ])
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"mkdir 'with space'\npwd\nls\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(r.join("with space").is_dir());
    let out = stdout(&o);
    assert_eq!(
        out,
        format!("Remote working directory: {}\nwith space\n", r.display())
    );
    assert!(!out.contains('\x1b'));
}
