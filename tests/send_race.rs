//! The sender opens each listed file so that what is at its name after the
//! scan cannot redirect or hang it: not through a symlink (unless the
//! transfer follows links, `-L`), never blocking on a FIFO, and only the very
//! file the scan listed (same device and inode). A file swapped between the
//! listing and the open is reported ("changed while being sent"), the run is
//! partial (exit 23), and nothing of what was swapped in arrives, whichever
//! end sends (a local copy, the remote end over ssh, a daemon's module).
//!
//! The swap is staged with the sender's test hook: `FERRY_TEST_SEND_PAUSE_AT`
//! holds the sender before it opens the file it names,
//! `FERRY_TEST_SEND_PAUSE_FILE` says when to go on.

mod util;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use util::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// What the file outside the tree holds; no run may deliver it.
const SECRET: &str = "secret-key-bytes-q7z\n";

/// A tree to send (`a/x`, `b.txt`) beside a secret file outside it;
/// returns (tree, secret).
fn staged(t: &Path) -> (PathBuf, PathBuf) {
    let (tree, secret) = (t.join("tree"), t.join("outside/id_ed25519"));
    write(&tree.join("a/x"), "listed\n");
    write(&tree.join("b.txt"), "b\n");
    write(&secret, SECRET);
    (tree, secret)
}

/// The hook's variables: hold the sender before it opens `name` until `go`
/// exists.
fn hook_env(go: &Path, name: &str) -> Vec<(String, String)> {
    vec![
        ("FERRY_TEST_HOOKS".into(), "1".into()),
        ("FERRY_TEST_SEND_PAUSE_AT".into(), name.into()),
        ("FERRY_TEST_SEND_PAUSE_FILE".into(), s(go)),
    ]
}

/// What replaces `a/x` once listed.
enum Swap<'a> {
    SymlinkTo(&'a Path),
    Fifo,
}

/// Once the sender waits before opening `x` (`tree/a/x` or the file the
/// hook names), replaces it as `swap` says and lets the sender go on.
fn swap_when_waiting(run: &mut Child, go: &Path, x: &Path, swap: Swap) {
    wait_for_pause(run, go, &format!("the open of {x:?}"));
    std::fs::remove_file(x).unwrap();
    match swap {
        Swap::SymlinkTo(target) => std::os::unix::fs::symlink(target, x).unwrap(),
        Swap::Fifo => assert!(Command::new("mkfifo").arg(x).status().unwrap().success()),
    }
    write(go, "");
}

/// Waits for a run started with piped output, 30 s at most (a sender hung
/// on a FIFO never ends: it is killed and the test fails).
fn finish(run: Child) -> std::process::Output {
    output_within(run, Duration::from_secs(30))
}

/// What every end must show: `a/x` reported as changed (one line naming
/// it, with `why`), the run partial (exit 23), the rest sent, and no byte
/// of the secret anywhere.
fn assert_refused(o: &std::process::Output, back: &Path, why: &str) {
    assert_refused_as(o, back, "a/x", why)
}

/// [`assert_refused`] for the file `name`.
fn assert_refused_as(o: &std::process::Output, back: &Path, name: &str, why: &str) {
    let (err, out) = (stderr(o), stdout(o));
    assert_eq!(o.status.code(), Some(23), "{err}");
    let line: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("changed while being sent"))
        .collect();
    assert_eq!(line.len(), 1, "{err}");
    assert!(
        line[0].contains(&format!("{name}: changed while being sent: ")) && line[0].ends_with(why),
        "{err}"
    );
    assert!(!err.contains(SECRET.trim()) && !out.contains(SECRET.trim()));
    assert!(
        !back.join(name).exists(),
        "{name} was published: {:?}",
        std::fs::read(back.join(name))
    );
    assert_eq!(std::fs::read_to_string(back.join("b.txt")).unwrap(), "b\n");
}

fn local_run(tree: &Path, back: &Path, go: &Path, flags: &str, hold: &str) -> Child {
    Command::new(ferry_bin())
        .args(["sync", flags, &format!("{}/", s(tree)), &s(back)])
        .envs(hook_env(go, hold))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_local_copy_does_not_send_a_file_swapped_for_a_symlink_to_a_secret() {
    let t = tmp();
    let (tree, secret) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let mut run = local_run(&tree, &back, &go, "-a", "a/x");
    swap_when_waiting(&mut run, &go, &tree.join("a/x"), Swap::SymlinkTo(&secret));
    assert_refused(&finish(run), &back, "it became a symlink (not followed)");
}

#[test]
fn a_local_copy_does_not_hang_on_a_file_swapped_for_a_fifo() {
    let t = tmp();
    let (tree, _) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let mut run = local_run(&tree, &back, &go, "-a", "a/x");
    swap_when_waiting(&mut run, &go, &tree.join("a/x"), Swap::Fifo);
    assert_refused(&finish(run), &back, "it is no longer a regular file");
}

/// `--remove-source-files` removes only the very file that was sent: one
/// replaced after it was read by another file of the same size and mtime
/// (an editor's save, a `cp -p`) holds data the destination never got, and
/// is kept and reported, as a file that changed is.
#[test]
fn remove_source_files_keeps_a_file_replaced_after_it_was_sent() {
    let t = tmp();
    let (tree, back, go) = (
        t.path().join("tree"),
        t.path().join("back"),
        t.path().join("go"),
    );
    write(&tree.join("1.bin"), "first\n");
    write(&tree.join("2.bin"), "second\n");
    let mut run = Command::new(ferry_bin())
        .args(["sync", "-a", "--remove-source-files"])
        .arg(format!("{}/", s(&tree)))
        .arg(&back)
        .envs(hook_env(&go, "2.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 1.bin has been opened and read: put another file in its place with
    // the same size and mtime
    wait_for_pause(&mut run, &go, "the open of 2.bin");
    let listed = std::fs::metadata(tree.join("1.bin")).unwrap();
    let other = tree.join("1.bin.new");
    write(&other, "FIRST\n");
    std::fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(listed.modified().unwrap())
        .unwrap();
    std::fs::rename(&other, tree.join("1.bin")).unwrap();
    write(&go, "");
    let o = finish(run);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(23), "{err}");
    assert!(
        err.lines().any(|l| l.contains("not removing source ")
            && l.ends_with("1.bin: it was replaced since it was sent")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("1.bin")).unwrap(),
        "FIRST\n"
    );
    assert_eq!(
        std::fs::read_to_string(back.join("1.bin")).unwrap(),
        "first\n"
    );
    // the file that was sent and stayed as it was is removed
    assert!(!tree.join("2.bin").exists(), "{err}");
    assert_eq!(
        std::fs::read_to_string(back.join("2.bin")).unwrap(),
        "second\n"
    );
}

/// Whatever is swapped in is not even opened for reading (a device could
/// act on an open: a watchdog starts, a tape rewinds): the sender takes a
/// handle that reads nothing first. Seen with a FIFO: a writer waiting to
/// open it is let through only by a reader's open. Before, the sender's
/// non-blocking open let it through.
#[test]
fn a_file_swapped_for_a_fifo_is_not_opened_for_reading() {
    let t = tmp();
    let (tree, _) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let x = tree.join("a/x");
    let mut run = local_run(&tree, &back, &go, "-a", "a/x");
    wait_for_pause(&mut run, &go, "the open of a/x");
    std::fs::remove_file(&x).unwrap();
    assert!(Command::new("mkfifo").arg(&x).status().unwrap().success());
    let fifo = x.clone();
    let writer =
        std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo).map(drop));
    std::thread::sleep(Duration::from_millis(200));
    write(&go, "");
    assert_refused(&finish(run), &back, "it is no longer a regular file");
    std::thread::sleep(Duration::from_millis(200));
    let opened = writer.is_finished();
    // (let the writer go: a reader that gives up at once)
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&x);
    let _ = writer.join();
    assert!(!opened, "the sender opened the FIFO for reading");
}

/// `-L` follows links on purpose: a link the scan followed is opened
/// following it (and sent, as it always was), but only if it still leads
/// to the file the scan stated there; pointed elsewhere since (at a secret),
/// it is refused.
#[test]
fn with_copy_links_a_link_pointed_elsewhere_after_the_scan_is_refused() {
    let t = tmp();
    let (tree, secret) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let shared = t.path().join("outside/shared.txt");
    write(&shared, "shared\n");
    std::os::unix::fs::symlink(&shared, tree.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&shared, tree.join("kept.txt")).unwrap();
    let mut run = local_run(&tree, &back, &go, "-aL", "link.txt");
    swap_when_waiting(
        &mut run,
        &go,
        &tree.join("link.txt"),
        Swap::SymlinkTo(&secret),
    );
    let o = finish(run);
    assert_refused_as(&o, &back, "link.txt", "another file is there now");
    assert_eq!(
        std::fs::read_to_string(back.join("a/x")).unwrap(),
        "listed\n"
    );
    let kept = back.join("kept.txt");
    assert!(!kept.symlink_metadata().unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "shared\n");
}

#[test]
fn an_ssh_pull_does_not_send_a_file_swapped_for_a_symlink_to_a_secret() {
    if !sshd_available() {
        eprintln!("skipped: no sshd");
        return;
    }
    let t = tmp();
    let (tree, secret) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let env: Vec<String> = hook_env(&go, "a/x")
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let sshd = Sshd::start_with_env(&env.join(" "), "");
    let mut run = Command::new(ferry_bin())
        .arg("sync")
        .args(sshd.args())
        .args(["-a", &format!("{}/", sshd.remote(&tree)), &s(&back)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    swap_when_waiting(&mut run, &go, &tree.join("a/x"), Swap::SymlinkTo(&secret));
    assert_refused(&finish(run), &back, "it became a symlink (not followed)");
}

/// The daemon's case: a FIFO swapped into a module would hold a connection
/// thread (and a connection slot) until restart.
#[test]
fn a_daemon_pull_does_not_hang_on_a_file_swapped_for_a_fifo() {
    let t = tmp();
    let (module, _) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let d = daemon_with_env(&module, &hook_env(&go, "a/x"));
    let mut run = Command::new(ferry_bin())
        .arg("sync")
        .args(d.client_args())
        .args(["-a", &d.url("m/"), &s(&back)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    swap_when_waiting(&mut run, &go, &module.join("a/x"), Swap::Fifo);
    assert_refused(&finish(run), &back, "it is no longer a regular file");
    // the daemon is free for the next client
    let again = t.path().join("again");
    std::fs::remove_file(module.join("a/x")).unwrap();
    let o = ferry(
        ["sync".to_string()]
            .into_iter()
            .chain(d.client_args())
            .chain(["-a".into(), d.url("m/"), s(&again)]),
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log());
}
