//! The sender's walk reads each directory from a handle opened beneath its
//! parent's without following a symlink: a directory swapped for a symlink
//! to somewhere else between being listed and being read is refused, never
//! followed, whichever end walks (a local copy, the remote end over ssh, a
//! daemon sending from a module); and a tree 1,000 directories deep is still
//! walked under a limit of 256 open descriptors.
//!
//! The swap is staged with the scan's test hook: `FERRY_TEST_SCAN_PAUSE_AT`
//! holds the walk at the directory it names, `FERRY_TEST_SCAN_PAUSE_FILE`
//! says when to go on.

mod util;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use util::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The file an outside directory holds, which no walk may list or copy.
const SECRET: &str = "secret-outside-q7z";

/// A tree to send (`a/` with a file, `b.txt`) beside a directory outside
/// it holding [`SECRET`]; returns (tree, outside).
fn staged(t: &Path) -> (PathBuf, PathBuf) {
    let (tree, outside) = (t.join("tree"), t.join("outside"));
    write(&tree.join("a/inside.txt"), "inside\n");
    write(&tree.join("b.txt"), "b\n");
    write(&outside.join(SECRET), "secret\n");
    (tree, outside)
}

/// The hook's variables: hold the walk at `a` until `go` exists.
fn hook_env(go: &Path) -> Vec<(String, String)> {
    vec![
        ("FERRY_TEST_HOOKS".into(), "1".into()),
        ("FERRY_TEST_SCAN_PAUSE_AT".into(), "a".into()),
        ("FERRY_TEST_SCAN_PAUSE_FILE".into(), s(go)),
    ]
}

/// Once the walk waits at `tree/a` (it has listed `a` as a directory),
/// replaces `a` with a symlink to `outside` and lets the walk go on.
fn swap_when_waiting(run: &mut Child, go: &Path, tree: &Path, outside: &Path) {
    wait_for_pause(run, go, "a/ in the walk");
    std::fs::rename(tree.join("a"), tree.with_file_name("a-moved")).unwrap();
    std::os::unix::fs::symlink(outside, tree.join("a")).unwrap();
    write(go, "");
}

/// Waits (bounded) for a run started with piped output.
fn finish(run: Child) -> std::process::Output {
    output_within(run, Duration::from_secs(60))
}

/// What every end must show: `a` refused as the symlink it became, the
/// run partial (exit 23), the rest sent, nothing of the outside listed or
/// copied.
fn assert_refused(o: &std::process::Output, back: &Path) {
    let (err, out) = (stderr(o), stdout(o));
    assert_eq!(o.status.code(), Some(23), "{err}");
    assert!(
        err.contains("cannot read directory ")
            && err.contains("a: it became a symlink during the scan (not followed)"),
        "{err}"
    );
    assert!(
        !err.contains(SECRET),
        "the outside's names are shown: {err}"
    );
    assert!(
        !out.contains(SECRET),
        "the outside's names are shown: {out}"
    );
    assert!(
        !back.join("a").join(SECRET).exists(),
        "the outside's file was copied"
    );
    assert!(back.join("a").is_dir());
    assert_eq!(std::fs::read_to_string(back.join("b.txt")).unwrap(), "b\n");
}

#[test]
fn a_local_copy_does_not_follow_a_directory_swapped_for_a_symlink() {
    let t = tmp();
    let (tree, outside) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let mut run = Command::new(ferry_bin())
        .args(["sync", "-a", &format!("{}/", s(&tree)), &s(&back)])
        .envs(hook_env(&go))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    swap_when_waiting(&mut run, &go, &tree, &outside);
    assert_refused(&finish(run), &back);
}

/// The security case: a client pulling `host::m/` gets nothing from outside
/// the module, not even a name, when a directory of the module becomes a
/// symlink out of it while the daemon walks.
#[test]
fn a_daemon_pull_lists_nothing_outside_the_module_when_a_directory_is_swapped() {
    let t = tmp();
    let (module, outside) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let d = daemon_with_env(&module, &hook_env(&go));
    let mut run = Command::new(ferry_bin())
        .arg("sync")
        .args(d.client_args())
        .args(["-av", &d.url("m/"), &s(&back)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    swap_when_waiting(&mut run, &go, &module, &outside);
    let o = finish(run);
    assert_refused(&o, &back);
    assert!(!d.log().contains(SECRET), "{}", d.log());
}

#[test]
fn an_ssh_pull_does_not_follow_a_directory_swapped_for_a_symlink() {
    if !sshd_available() {
        eprintln!("skipped: no sshd");
        return;
    }
    let t = tmp();
    let (tree, outside) = staged(t.path());
    let (go, back) = (t.path().join("go"), t.path().join("back"));
    let env: Vec<String> = hook_env(&go)
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
    swap_when_waiting(&mut run, &go, &tree, &outside);
    assert_refused(&finish(run), &back);
}

/// `src/d/d/…/d/f`, `depth` directories below `src`, made one level at a
/// time (a whole path this long is near PATH_MAX).
fn deep_tree(src: &Path, depth: usize) {
    let mut dir = src.to_path_buf();
    for _ in 0..depth {
        dir.push("d");
    }
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("f"), "deep\n");
    write(&src.join("top.txt"), "top\n");
}

/// The bottom file of [`deep_tree`] under `root`.
fn deep_file(root: &Path, depth: usize) -> PathBuf {
    let mut p = root.to_path_buf();
    for _ in 0..depth {
        p.push("d");
    }
    p.join("f")
}

/// `sh -c 'ulimit -n 256; exec "$@"'`: what follows runs with at most 256
/// open descriptors.
const LIMITED: [&str; 4] = ["sh", "-c", "ulimit -n 256 && exec \"$@\"", "sh"];

#[test]
fn a_tree_a_thousand_directories_deep_is_walked_with_256_descriptors() {
    let t = tmp();
    let (src, back) = (t.path().join("src"), t.path().join("back"));
    deep_tree(&src, 1000);
    let o = Command::new(LIMITED[0])
        .args(&LIMITED[1..])
        .arg(ferry_bin())
        .args(["sync", "-a", &format!("{}/", s(&src)), &s(&back)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(deep_file(&back, 1000)).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(back.join("top.txt")).unwrap(),
        "top\n"
    );

    // a daemon with the same limit sends the same tree from a module
    let back2 = t.path().join("back2");
    let d = Daemon::spawn_in(
        Daemon::keyed_setup(""),
        &[("m", &src, false)],
        &[],
        &LIMITED,
        "127.0.0.1:0",
    )
    .unwrap_or_else(|log| panic!("daemon did not start: {log}"));
    let o = ferry(
        ["sync".to_string()]
            .into_iter()
            .chain(d.client_args())
            .chain(["-a".into(), d.url("m/"), s(&back2)]),
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log());
    assert_eq!(
        std::fs::read_to_string(deep_file(&back2, 1000)).unwrap(),
        "deep\n"
    );
}

/// Makes `back/old`, a stale tree `depth` directories deep (a file at the
/// bottom and one half way) that the source does not have.
fn stale_tree(back: &Path, depth: usize) {
    write(&deep_file(&back.join("old"), depth), "stale\n");
    write(&deep_file(&back.join("old"), depth / 2), "stale\n");
}

/// Runs `ferry ARGS` under [`LIMITED`], 60 s at most.
fn limited_ferry(args: &[String]) -> std::process::Output {
    let run = Command::new(LIMITED[0])
        .args(&LIMITED[1..])
        .arg(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(run)
}

/// `--delete` removes a stale tree 300 directories deep under a limit of
/// 256 open descriptors, as rsync does, whether the receiver is local or a
/// daemon (issue: the delete held a handle per level, failed part-way with
/// "Too many open files" and left the stale tree in place).
#[test]
fn a_stale_tree_300_directories_deep_is_deleted_with_256_descriptors() {
    let t = tmp();
    let (src, back) = (t.path().join("src"), t.path().join("back"));
    write(&src.join("top.txt"), "top\n");
    stale_tree(&back, 300);
    let o = limited_ferry(&[
        "sync".into(),
        "-r".into(),
        "--delete".into(),
        format!("{}/", s(&src)),
        s(&back),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!back.join("old").exists(), "the stale tree is still there");
    assert_eq!(
        std::fs::read_to_string(back.join("top.txt")).unwrap(),
        "top\n"
    );

    // a daemon with the same limit, pushed to
    let back2 = t.path().join("back2");
    stale_tree(&back2, 300);
    let d = Daemon::spawn_in(
        Daemon::keyed_setup(""),
        &[("m", &back2, false)],
        &[],
        &LIMITED,
        "127.0.0.1:0",
    )
    .unwrap_or_else(|log| panic!("daemon did not start: {log}"));
    let mut args = vec!["sync".to_string()];
    args.extend(d.client_args());
    args.extend([
        "-r".into(),
        "--delete".into(),
        format!("{}/", s(&src)),
        d.url("m/"),
    ]);
    let o = limited_ferry(&args);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log());
    assert!(!back2.join("old").exists(), "the stale tree is still there");
    assert_eq!(
        std::fs::read_to_string(back2.join("top.txt")).unwrap(),
        "top\n"
    );
}

/// A delete deep in a stale tree (below the handles it holds, so it opens
/// directories again on its way back up) whose directory above is swapped
/// for a symlink to a directory outside deletes nothing there: the delete
/// stops with one line saying so, the run is partial (exit 23), and what
/// the outside directory holds is all still there.
#[test]
fn a_delete_does_not_follow_a_directory_swapped_for_a_symlink() {
    let t = tmp();
    let (src, back, outside) = (
        t.path().join("src"),
        t.path().join("back"),
        t.path().join("outside"),
    );
    write(&src.join("top.txt"), "top\n");
    // back/old/d…d (70 deep)/{a/f, b}: the delete holds at `a`
    let mut swapped = back.join("old");
    for _ in 0..70 {
        swapped.push("d");
    }
    write(&swapped.join("a/f"), "stale\n");
    write(&swapped.join("b"), "stale\n");
    // what the delete would remove there if it followed the link
    std::fs::create_dir_all(outside.join("a")).unwrap();
    write(&outside.join("b"), "keep\n");
    let go = t.path().join("go");
    let mut run = Command::new(ferry_bin())
        .args([
            "sync",
            "-r",
            "--delete",
            &format!("{}/", s(&src)),
            &s(&back),
        ])
        .envs([
            ("FERRY_TEST_HOOKS", "1".to_string()),
            ("FERRY_TEST_DELETE_PAUSE_AT", "a".to_string()),
            ("FERRY_TEST_DELETE_PAUSE_FILE", s(&go)),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&mut run, &go, "the delete of a/");
    std::fs::rename(&swapped, t.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &swapped).unwrap();
    write(&go, "");
    let o = finish(run);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(23), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("it became a symlink during the delete (not followed)"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(outside.join("a").is_dir(), "the outside's a/ was removed");
    assert_eq!(
        std::fs::read_to_string(outside.join("b")).unwrap(),
        "keep\n"
    );
    assert!(swapped.symlink_metadata().unwrap().is_symlink());
    assert_eq!(
        std::fs::read_to_string(back.join("top.txt")).unwrap(),
        "top\n"
    );
}
