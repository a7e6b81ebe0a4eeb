//! Resume: a transfer killed with SIGKILL leaves its data in a partial file (never
//! at the final path); the same command run again sends only what is missing.

mod util;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;

fn spawn(args: &[String]) -> Child {
    Command::new(ferry_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `path` holds at least `bytes`, then kills the child with SIGKILL.
fn kill_when(child: &mut Child, path: &Path, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= bytes {
            child.kill().unwrap();
            child.wait().unwrap();
            // the kernel may still be writing what was in flight
            std::thread::sleep(Duration::from_millis(100));
            return std::fs::metadata(path).unwrap().len();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "transfer ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "transfer made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn resume_and_check(args: &[String], src: &Path, dst_file: &Path, partial_len: u64) {
    let o = ok(ferry(args));
    let (literal, matched, sent, received) = stats(&stdout(&o));
    let remaining = SIZE - partial_len;
    eprintln!(
        "partial {partial_len}, literal {literal}, matched {matched}, wire {}",
        sent + received
    );
    assert!(
        literal <= remaining + SIZE / 20,
        "resent {literal} bytes with {remaining} missing"
    );
    assert!(matched > 0, "nothing reused from the partial file");
    assert_eq!(
        std::fs::read(src).unwrap(),
        std::fs::read(dst_file).unwrap()
    );
    let pdir = dst_file.parent().unwrap().join(".ferry-partial");
    assert!(!pdir.exists(), "partial directory left behind");
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tmp();
    let src = t.path().join("model.bin");
    write(&src, random_bytes(SIZE as usize, 77));
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    (t, src, dst)
}

#[test]
fn killed_local_transfer_resumes_from_the_partial_file() {
    let (_t, src, dst) = setup();
    let args = vec![
        "sync".to_string(),
        "-a".into(),
        "--bwlimit".into(),
        "40M".into(),
        src.display().to_string(),
        format!("{}/", dst.display()),
    ];
    let mut child = spawn(&args);
    let partial = dst.join(".ferry-partial/model.bin");
    let got = kill_when(&mut child, &partial, 32 * MIB);
    assert!(
        !dst.join("model.bin").exists(),
        "a half-written file reached the final path"
    );
    let mut again = vec!["sync".to_string(), "-a".into(), "--stats".into()];
    again.extend([src.display().to_string(), format!("{}/", dst.display())]);
    resume_and_check(&again, &src, &dst.join("model.bin"), got);
}

#[test]
fn killed_ssh_pull_resumes_when_the_receiver_dies() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let (_t, src, dst) = setup();
    // in a pull the local process is the receiver
    let mut args = vec![
        "sync".to_string(),
        "-a".into(),
        "--bwlimit".into(),
        "40M".into(),
        // one stream: the partial file then grows from the start, so its
        // length is what arrived (segments over several streams leave holes;
        // tests/daemon.rs counts blocks for that case)
        "--streams".into(),
        "1".into(),
    ];
    args.extend(sshd.args());
    args.extend([sshd.remote(&src), format!("{}/", dst.display())]);
    let mut child = spawn(&args);
    let got = kill_when(&mut child, &dst.join(".ferry-partial/model.bin"), 32 * MIB);
    assert!(!dst.join("model.bin").exists());
    let mut again = vec!["sync".to_string(), "-a".into(), "--stats".into()];
    again.extend(sshd.args());
    again.extend([sshd.remote(&src), format!("{}/", dst.display())]);
    resume_and_check(&again, &src, &dst.join("model.bin"), got);
}

#[test]
fn killed_ssh_push_resumes_when_the_sender_dies() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let (_t, src, dst) = setup();
    let mut args = vec![
        "sync".to_string(),
        "-a".into(),
        "--bwlimit".into(),
        "40M".into(),
        // one stream: the partial file then grows from the start, so its
        // length is what arrived (segments over several streams leave holes;
        // tests/daemon.rs counts blocks for that case)
        "--streams".into(),
        "1".into(),
    ];
    args.extend(sshd.args());
    args.extend([src.display().to_string(), format!("{}/", sshd.remote(&dst))]);
    let mut child = spawn(&args);
    let partial = dst.join(".ferry-partial/model.bin");
    let mut got = kill_when(&mut child, &partial, 32 * MIB);
    // the remote receiver notices the closed connection and exits
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = std::fs::metadata(&partial).unwrap().len();
        if now == got {
            break;
        }
        got = now;
    }
    assert!(!dst.join("model.bin").exists());
    let mut again = vec!["sync".to_string(), "-a".into(), "--stats".into()];
    again.extend(sshd.args());
    again.extend([src.display().to_string(), format!("{}/", sshd.remote(&dst))]);
    resume_and_check(&again, &src, &dst.join("model.bin"), got);
}
