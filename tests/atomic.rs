//! `--atomic` trees (issue 24): readers of the destination see the whole old
//! tree or the whole new one, never a mix; a `kill -9` at any moment leaves
//! one of the two whole at the destination path; unchanged files are the old
//! tree's own inodes, not copies; `--backup-dir` keeps the old tree; it works
//! locally, over ssh and to the daemon (inside the module only).

mod util;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// Writes `n` files (some in subdirectories), each carrying `version` in its
/// content, so that a reader can tell which tree a file came from.
fn write_version(src: &Path, n: usize, version: u32) {
    for i in 0..n {
        let path = src.join(format!("d{}/f{i:04}", i % 10));
        let mut body = format!("v{version}:f{i}:").into_bytes();
        body.extend(std::iter::repeat_n(
            b'a' + (version % 26) as u8,
            100 + i % 300,
        ));
        write(&path, body);
    }
}

/// The versions of every file under `root`, reading through one handle on
/// the directory (as a reader that opened the tree once does); `None` when a
/// file vanished during the pass (the old tree being removed after the
/// switch).
fn versions_through(dir: &std::fs::File) -> Option<(BTreeSet<String>, usize)> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let mut versions = BTreeSet::new();
    let mut files = 0;
    let mut stack = vec![dir.try_clone().ok()?];
    while let Some(d) = stack.pop() {
        let fd = rustix::fs::openat(
            d.as_fd(),
            ".",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        let mut rd = rustix::fs::Dir::read_from(&fd).ok()?;
        while let Some(ent) = rd.read() {
            let ent = ent.ok()?;
            let name = ent.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let child = rustix::fs::openat(
                d.as_fd(),
                name.as_slice(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            let mut f = std::fs::File::from(child);
            if f.metadata().ok()?.is_dir() {
                stack.push(f);
                continue;
            }
            let mut body = String::new();
            f.read_to_string(&mut body).ok()?;
            let tag = body.split(':').next().unwrap_or("").to_string();
            versions.insert(tag);
            files += 1;
        }
    }
    Some((versions, files))
}

/// The versions of the tree at `root` by path (after a run, nothing moves).
fn versions_at(root: &Path) -> (BTreeSet<String>, usize) {
    let dir = std::fs::File::open(root).unwrap();
    versions_through(&dir).expect("a still tree reads whole")
}

/// Runs `run` while a reader thread opens `path` again and again and reads
/// every file through that handle (as the local reader tests do); the run's
/// output, and what the reader saw: passes that read `files` files whole,
/// the versions seen, and every pass that saw more than one version.
fn read_during(
    path: &Path,
    files: usize,
    run: impl FnOnce() -> std::process::Output,
) -> (
    std::process::Output,
    usize,
    BTreeSet<String>,
    Vec<BTreeSet<String>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), path.to_path_buf());
        std::thread::spawn(move || {
            let (mut whole, mut seen, mut mixed) = (0usize, BTreeSet::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                let Ok(dir) = std::fs::File::open(&path) else {
                    continue;
                };
                let Some((versions, n)) = versions_through(&dir) else {
                    continue; // the old tree went away under this pass
                };
                if versions.len() != 1 {
                    mixed.push(versions.clone());
                }
                if n == files {
                    whole += 1;
                }
                seen.extend(versions);
            }
            (whole, seen, mixed)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let o = run();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (whole, seen, mixed) = reader.join().unwrap();
    (o, whole, seen, mixed)
}

fn sync_atomic(extra: &[&str], src: &Path, dest: &str) -> std::process::Output {
    let mut args = vec!["sync".to_string(), "-a".into(), "--atomic".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([format!("{}/", src.display()), dest.to_string()]);
    ferry(&args)
}

fn inode(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// A reader opening the destination again and again and reading every file
/// through that handle, while 1,000 files all change: every pass sees one
/// version only (a pass may end early when the old tree it holds is removed
/// under it, never with a mix), and passes of both versions are seen.
#[test]
fn a_reader_never_sees_a_mix_of_versions() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write_version(&src, 1000, 1);
    ok(sync_atomic(&[], &src, &format!("{}/", dest.display())));
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v1".into()]), 1000));
    write_version(&src, 1000, 2);

    let (o, whole, seen, mixed) = read_during(&dest, 1000, || {
        sync_atomic(&[], &src, &format!("{}/", dest.display()))
    });
    ok(o);
    assert!(
        mixed.is_empty(),
        "a reader saw a mix of versions: {mixed:?}"
    );
    assert!(whole > 0, "the reader never read the tree whole");
    assert!(seen.contains("v2"), "the reader never saw the new tree");
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 1000));
    assert!(!t.path().join(".dest.ferry-atomic").exists());
}

/// A tiny seeded generator (the test's moments are the same every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// `kill -9` of ferry at 20 seeded moments of a re-sync of 1,000 changed
/// files: each time the destination path holds the whole old tree or the
/// whole new one, and the next run converges (removing what the killed one
/// left beside it).
#[test]
fn kill_9_at_any_moment_leaves_the_old_or_the_new_tree() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let dest_arg = format!("{}/", dest.display());
    write_version(&src, 1000, 1);
    ok(sync_atomic(&[], &src, &dest_arg));
    // how long a whole run takes here, to spread the moments over it
    write_version(&src, 1000, 2);
    let started = Instant::now();
    ok(sync_atomic(&[], &src, &dest_arg));
    let full = started.elapsed().as_micros().max(1000) as u64;
    let mut rng = Lcg(24);
    let (mut old_seen, mut new_seen) = (0, 0);
    for round in 0..20u32 {
        let (old, new) = (format!("v{}", round + 2), format!("v{}", round + 3));
        write_version(&src, 1000, round + 3);
        let at = Duration::from_micros(rng.next() % (full + full / 5));
        let mut child = Command::new(ferry_bin())
            .args(["sync", "-a", "--atomic"])
            .arg(format!("{}/", src.display()))
            .arg(&dest_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL (it may have finished already)
        let _ = child.wait();
        let (versions, files) = versions_at(&dest);
        assert_eq!(
            files, 1000,
            "round {round}: killed at {at:?}, {files} files"
        );
        assert_eq!(
            versions.len(),
            1,
            "round {round}: killed at {at:?}: {versions:?}"
        );
        if versions.contains(&old) {
            old_seen += 1;
        } else {
            assert!(versions.contains(&new), "round {round}: {versions:?}");
            new_seen += 1;
        }
        ok(sync_atomic(&[], &src, &dest_arg));
        assert_eq!(versions_at(&dest), (BTreeSet::from([new.clone()]), 1000));
        assert!(
            !t.path().join(".dest.ferry-atomic").exists(),
            "round {round}"
        );
    }
    eprintln!("killed runs left the old tree {old_seen} times, the new one {new_seen} times");
    assert!(old_seen > 0, "no kill landed before the switch");
}

/// Unchanged files are the old tree's own inodes (hard links, nothing
/// copied); changed ones are new files and the old tree's stay untouched;
/// a file the source lacks stays without --delete and goes with it; a
/// metadata-only change does not reach through the link into the old tree.
#[test]
fn unchanged_files_are_linked_not_copied() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let dest_arg = format!("{}/", dest.display());
    for i in 0..50 {
        write(&src.join(format!("f{i}")), random_bytes(5000, i));
    }
    ok(sync_atomic(&[], &src, &dest_arg));
    write(&dest.join("extra"), b"only at the destination");
    let before: Vec<u64> = (0..50)
        .map(|i| inode(&dest.join(format!("f{i}"))))
        .collect();
    let held = std::fs::File::open(dest.join("f3")).unwrap(); // the old f3
    for i in 0..5 {
        write(&src.join(format!("f{i}")), random_bytes(5000, 100 + i));
    }
    chmod(&src.join("f7"), 0o600);
    ok(sync_atomic(&[], &src, &dest_arg));
    for i in 5..50 {
        if i == 7 {
            continue;
        }
        assert_eq!(
            inode(&dest.join(format!("f{i}"))),
            before[i as usize],
            "f{i} was copied"
        );
    }
    for i in 0..5 {
        assert_ne!(inode(&dest.join(format!("f{i}"))), before[i as usize]);
        assert_eq!(
            std::fs::read(dest.join(format!("f{i}"))).unwrap(),
            random_bytes(5000, 100 + i)
        );
    }
    // the old tree's f3 was left as it was
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut old).unwrap();
    assert_eq!(old, random_bytes(5000, 3));
    let f7 = std::fs::metadata(dest.join("f7")).unwrap();
    assert_eq!(f7.mode() & 0o777, 0o600);
    assert_eq!(f7.nlink(), 1, "f7's new mode went through a link");
    assert_eq!(
        std::fs::read(dest.join("extra")).unwrap(),
        b"only at the destination"
    );
    ok(sync_atomic(&["--delete"], &src, &dest_arg));
    assert!(
        !dest.join("extra").exists(),
        "--delete keeps only the source's files"
    );
    assert_same_tree(&src, &dest, true);
}

/// `--backup-dir` keeps the whole old tree (relative to the destination, as
/// rsync's); one that already exists is refused before anything changes.
#[test]
fn backup_dir_keeps_the_old_tree() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let dest_arg = format!("{}/", dest.display());
    write_version(&src, 20, 1);
    ok(sync_atomic(&[], &src, &dest_arg));
    write_version(&src, 20, 2);
    ok(sync_atomic(&["--backup-dir", "../prev"], &src, &dest_arg));
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 20));
    assert_eq!(
        versions_at(&t.path().join("prev")),
        (BTreeSet::from(["v1".into()]), 20)
    );
    write_version(&src, 20, 3);
    let o = sync_atomic(&["--backup-dir", "../prev"], &src, &dest_arg);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--backup-dir") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 20));
}

/// `--atomic --inplace` is a usage error naming both; `--backup-dir` alone too.
#[test]
fn atomic_with_inplace_is_refused() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("a"), b"a");
    let o = sync_atomic(&["--inplace"], &src, &format!("{}/", dest.display()));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--atomic") && err.contains("--inplace"),
        "{err}"
    );
    assert!(!dest.exists(), "nothing is written");
    let o = ferry([
        "sync".to_string(),
        "-a".into(),
        "--backup-dir".into(),
        "x".into(),
        format!("{}/", src.display()),
        format!("{}/", dest.display()),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--atomic"), "{}", stderr(&o));
}

/// `cp -r --atomic` makes a missing destination in one step and switches an
/// existing one whole.
#[test]
fn cp_atomic_switches_the_tree() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write_version(&src, 30, 1);
    let cp = |from: &Path| {
        ok(ferry([
            "cp".to_string(),
            "-r".into(),
            "-p".into(),
            "--atomic".into(),
            format!("{}/", from.display()),
            format!("{}/", dest.display()),
        ]))
    };
    cp(&src);
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v1".into()]), 30));
    write_version(&src, 30, 2);
    cp(&src);
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 30));
    assert!(!t.path().join(".dest.ferry-atomic").exists());
}

/// Over ssh the remote `ferry serve --stdio` builds and switches the tree.
#[test]
fn over_ssh_the_remote_switches_the_tree() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write_version(&src, 100, 1);
    let remote = format!("{}/", sshd.remote(&dest));
    let args: Vec<String> = sshd.args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(sync_atomic(&extra, &src, &remote));
    let keep = inode(&dest.join("d5/f0005"));
    // every file changes but one, kept as it was (a rename keeps its mtime)
    std::fs::rename(src.join("d5/f0005"), t.path().join("f0005")).unwrap();
    write_version(&src, 100, 2);
    std::fs::rename(t.path().join("f0005"), src.join("d5/f0005")).unwrap();
    ok(sync_atomic(&extra, &src, &remote));
    let (versions, files) = versions_at(&dest);
    assert_eq!(files, 100);
    assert_eq!(versions, BTreeSet::from(["v1".into(), "v2".into()]));
    assert_eq!(
        inode(&dest.join("d5/f0005")),
        keep,
        "the unchanged file was copied"
    );
    assert!(!t.path().join(".dest.ferry-atomic").exists());
}

/// To the daemon the tree is built and switched inside the module: the
/// module's root cannot be switched, and a destination that is a symlink
/// (out of the module) is refused, never followed.
#[test]
fn to_the_daemon_inside_the_module() {
    let t = tmp();
    let (src, module, outside) = (
        t.path().join("src"),
        t.path().join("module"),
        t.path().join("outside"),
    );
    std::fs::create_dir_all(&module).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write(&outside.join("keep"), b"outside");
    std::os::unix::fs::symlink(&outside, module.join("escape")).unwrap();
    write_version(&src, 50, 1);
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let run = |url: &str, extra: &[&str]| {
        let mut args: Vec<String> = d.client_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let extra: Vec<&str> = args.iter().map(String::as_str).collect();
        sync_atomic(&extra, &src, url)
    };
    ok(run(&d.url("m/out/"), &[]));
    write_version(&src, 50, 2);
    ok(run(&d.url("m/out/"), &["--backup-dir", "../out.prev"]));
    assert_eq!(
        versions_at(&module.join("out")),
        (BTreeSet::from(["v2".into()]), 50)
    );
    assert_eq!(
        versions_at(&module.join("out.prev")),
        (BTreeSet::from(["v1".into()]), 50)
    );
    // the module's root, a symlink out of it, a backup dir out of it
    let o = run(&d.url("m/"), &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("module's root"), "{}", stderr(&o));
    let o = run(&d.url("m/escape/"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("symlink") || err.contains("not a directory"),
        "{err}"
    );
    let o = run(&d.url("m/out/"), &["--backup-dir", "../../prev2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("outside the module"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "wrote outside the module"
    );
    assert!(!t.path().join("prev2").exists());
    assert_eq!(
        versions_at(&module.join("out")),
        (BTreeSet::from(["v2".into()]), 50)
    );
}

// ---- the symlink form: DEST is a symlink to a directory (`current ->
// releases/7`), flipped to a new tree with one rename ----

/// The entries of `dir` (names only, sorted).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `t/releases/first` holding nothing yet and `t/current -> releases/first`
/// (relative, as a deployment script makes it).
fn release_link(t: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(t.join("releases/first")).unwrap();
    std::os::unix::fs::symlink("releases/first", t.join("current")).unwrap();
    t.join("current")
}

/// After a run: the link points (with a relative text, as it did) at the
/// one directory left in `releases`, and nothing else ferry made is left
/// beside the link or the trees.
fn assert_converged(t: &Path) {
    let target = std::fs::read_link(t.join("current")).unwrap();
    let text = target.to_string_lossy().into_owned();
    assert!(text.starts_with("releases/.current.ferry-"), "{text}");
    let left = entries(&t.join("releases"));
    assert_eq!(
        left,
        vec![text.trim_start_matches("releases/").to_string()],
        "old trees left behind"
    );
    for e in entries(t) {
        assert!(
            !e.contains(".ferry-") || e == ".current.ferry-atomic.lock",
            "{e} left beside the link"
        );
    }
}

/// A reader opening `current` (through the link) once per pass and reading
/// every file through that handle, while 1,000 files all change: no pass
/// sees a mix, passes of both versions are seen, the link keeps its relative
/// form and the old target is removed.
#[test]
fn a_symlinked_destination_flips_and_a_reader_never_sees_a_mix() {
    let t = tmp();
    let src = t.path().join("src");
    let current = release_link(t.path());
    let dest_arg = current.display().to_string();
    write_version(&src, 1000, 1);
    ok(sync_atomic(&[], &src, &dest_arg));
    assert_eq!(versions_at(&current), (BTreeSet::from(["v1".into()]), 1000));
    assert_converged(t.path());
    assert!(
        !t.path().join("releases/first").exists(),
        "the old target is removed"
    );
    write_version(&src, 1000, 2);

    // a trailing slash names the directory the link points at: the link is
    // still what is switched
    let (o, whole, seen, mixed) = read_during(&current, 1000, || {
        sync_atomic(&[], &src, &format!("{dest_arg}/"))
    });
    ok(o);
    assert!(
        mixed.is_empty(),
        "a reader saw a mix of versions: {mixed:?}"
    );
    assert!(whole > 0, "the reader never read the tree whole");
    assert!(seen.contains("v1"), "the reader never saw the old tree");
    assert!(seen.contains("v2"), "the reader never saw the new tree");
    assert_eq!(versions_at(&current), (BTreeSet::from(["v2".into()]), 1000));
    assert!(std::fs::symlink_metadata(&current)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_converged(t.path());
}

/// `kill -9` at 10 seeded moments of a re-sync through the link: each time
/// the link points at the whole old tree or the whole new one, and the next
/// run converges, leaving no tree a killed run made or replaced.
#[test]
fn kill_9_through_a_symlink_leaves_the_old_or_the_new_tree_and_no_leak() {
    let t = tmp();
    let src = t.path().join("src");
    let current = release_link(t.path());
    let dest_arg = current.display().to_string();
    write_version(&src, 1000, 1);
    ok(sync_atomic(&[], &src, &dest_arg));
    write_version(&src, 1000, 2);
    let started = Instant::now();
    ok(sync_atomic(&[], &src, &dest_arg));
    let full = started.elapsed().as_micros().max(1000) as u64;
    let mut rng = Lcg(2024);
    let (mut old_seen, mut new_seen) = (0, 0);
    for round in 0..10u32 {
        let (old, new) = (format!("v{}", round + 2), format!("v{}", round + 3));
        write_version(&src, 1000, round + 3);
        let at = Duration::from_micros(rng.next() % (full + full / 5));
        let mut child = Command::new(ferry_bin())
            .args(["sync", "-a", "--atomic"])
            .arg(format!("{}/", src.display()))
            .arg(&dest_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL (it may have finished already)
        let _ = child.wait();
        let (versions, files) = versions_at(&current);
        assert_eq!(
            files, 1000,
            "round {round}: killed at {at:?}, {files} files"
        );
        assert_eq!(
            versions.len(),
            1,
            "round {round}: killed at {at:?}: {versions:?}"
        );
        if versions.contains(&old) {
            old_seen += 1;
        } else {
            assert!(versions.contains(&new), "round {round}: {versions:?}");
            new_seen += 1;
        }
        ok(sync_atomic(&[], &src, &dest_arg));
        assert_eq!(versions_at(&current), (BTreeSet::from([new.clone()]), 1000));
        assert_converged(t.path());
    }
    eprintln!("killed runs left the old tree {old_seen} times, the new one {new_seen} times");
    assert!(old_seen > 0, "no kill landed before the flip");
}

/// Through an absolute link: unchanged files keep their inode (hard links
/// into the old target), changed ones are new files, the link stays
/// absolute, and `--backup-dir` keeps the replaced target whole; a link to
/// a directory that does not exist yet gets a new tree; a link to a link is
/// refused in one line.
#[test]
fn a_symlinked_destination_links_unchanged_files_and_keeps_a_backup() {
    let t = tmp();
    let (src, ckpt) = (t.path().join("src"), t.path().join("ckpt"));
    std::fs::create_dir_all(ckpt.join("7")).unwrap();
    let current = t.path().join("serve/current");
    std::fs::create_dir_all(t.path().join("serve")).unwrap();
    std::os::unix::fs::symlink(ckpt.join("7"), &current).unwrap();
    for i in 0..50 {
        write(&src.join(format!("f{i}")), random_bytes(5000, i));
    }
    let dest_arg = current.display().to_string();
    ok(sync_atomic(&[], &src, &dest_arg));
    let first = std::fs::read_link(&current).unwrap();
    assert_eq!(
        first,
        ckpt.join(".current.ferry-1"),
        "the link stays absolute"
    );
    let before: Vec<u64> = (0..50)
        .map(|i| inode(&current.join(format!("f{i}"))))
        .collect();
    for i in 0..5 {
        write(&src.join(format!("f{i}")), random_bytes(5000, 100 + i));
    }
    ok(sync_atomic(&["--backup-dir", "../prev"], &src, &dest_arg));
    assert_eq!(
        std::fs::read_link(&current).unwrap(),
        ckpt.join(".current.ferry-2")
    );
    for i in 5..50 {
        assert_eq!(
            inode(&current.join(format!("f{i}"))),
            before[i as usize],
            "f{i} was copied"
        );
    }
    for i in 0..5 {
        assert_ne!(inode(&current.join(format!("f{i}"))), before[i as usize]);
        assert_eq!(
            std::fs::read(current.join(format!("f{i}"))).unwrap(),
            random_bytes(5000, 100 + i)
        );
    }
    assert_same_tree(&src, &current, false);
    // --backup-dir is taken from DEST as rsync's: beside the link
    let prev = t.path().join("serve/prev");
    for i in 0..50 {
        assert_eq!(
            std::fs::read(prev.join(format!("f{i}"))).unwrap(),
            random_bytes(5000, i),
            "the backup holds the old tree"
        );
    }
    assert_eq!(entries(&ckpt), vec![".current.ferry-2".to_string()]);

    // a link to a directory that is not there yet
    let fresh = t.path().join("fresh");
    std::os::unix::fs::symlink("releases/none", &fresh).unwrap();
    std::fs::create_dir(t.path().join("releases")).unwrap();
    ok(sync_atomic(&[], &src, &fresh.display().to_string()));
    assert_eq!(
        std::fs::read_link(&fresh).unwrap(),
        Path::new("releases/.fresh.ferry-1")
    );
    assert_same_tree(&src, &fresh, false);

    // a link to a link
    let chain = t.path().join("chain");
    std::os::unix::fs::symlink("serve/current", &chain).unwrap();
    let o = sync_atomic(&[], &src, &chain.display().to_string());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("itself a symlink"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_link(&chain).unwrap(),
        Path::new("serve/current")
    );
}

/// A filesystem that cannot exchange two names (NFS, some FUSE): a real
/// directory is refused before anything is written, in one line that says
/// how to switch to the symlink form, and the directory stays a directory.
/// (The test hook makes the probe report `RENAME_EXCHANGE` unsupported.)
#[test]
fn without_rename_exchange_a_directory_is_refused_with_the_symlink_recipe() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write_version(&src, 10, 1);
    ok(sync_atomic(&[], &src, &dest.display().to_string()));
    write_version(&src, 10, 2);
    let run = |dest: &Path| {
        Command::new(ferry_bin())
            .args(["sync", "-a", "--atomic"])
            .arg(format!("{}/", src.display()))
            .arg(dest)
            .env("FERRY_TEST_HOOKS", "1")
            .env("FERRY_TEST_NO_EXCHANGE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&dest);
    assert!(!o.status.success());
    let err = stderr(&o);
    let d = dest.display().to_string();
    assert!(
        err.contains("RENAME_EXCHANGE")
            && err.contains(&format!("mv {d} {d}.1 && ln -s {d}.1 {d}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_dir());
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v1".into()]), 10));
    assert!(!t.path().join(".dest.ferry-atomic").exists());
    // following the advice works on the same filesystem
    std::fs::rename(&dest, t.path().join("dest.1")).unwrap();
    std::os::unix::fs::symlink(t.path().join("dest.1"), &dest).unwrap();
    ok(run(&dest));
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 10));
    assert!(!t.path().join("dest.1").exists());
}

/// Over ssh the remote flips the link: the unchanged file keeps its inode.
#[test]
fn over_ssh_the_remote_flips_the_link() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let src = t.path().join("src");
    let current = release_link(t.path());
    write_version(&src, 100, 1);
    let remote = sshd.remote(&current);
    let args: Vec<String> = sshd.args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(sync_atomic(&extra, &src, &remote));
    let keep = inode(&current.join("d5/f0005"));
    std::fs::rename(src.join("d5/f0005"), t.path().join("f0005")).unwrap();
    write_version(&src, 100, 2);
    std::fs::rename(t.path().join("f0005"), src.join("d5/f0005")).unwrap();
    ok(sync_atomic(&extra, &src, &remote));
    let (versions, files) = versions_at(&current);
    assert_eq!(files, 100);
    assert_eq!(versions, BTreeSet::from(["v1".into(), "v2".into()]));
    assert_eq!(
        inode(&current.join("d5/f0005")),
        keep,
        "the unchanged file was copied"
    );
    assert_converged(t.path());
}

/// To the daemon a link inside the module is flipped (relative or absolute
/// text, the new tree beside its target, resolved beneath the module); a
/// link out of the module, or to the module's root, is refused in one line
/// and nothing outside is touched.
#[test]
fn to_the_daemon_a_link_inside_the_module_is_flipped() {
    let t = tmp();
    let (src, module, outside) = (
        t.path().join("src"),
        t.path().join("module"),
        t.path().join("outside"),
    );
    std::fs::create_dir_all(module.join("releases/7")).unwrap();
    std::fs::create_dir_all(module.join("serve")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write(&outside.join("keep"), b"outside");
    std::os::unix::fs::symlink("../releases/7", module.join("serve/current")).unwrap();
    std::os::unix::fs::symlink(module.join("releases/abs"), module.join("abs")).unwrap();
    std::os::unix::fs::symlink(&outside, module.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside", module.join("serve/climb")).unwrap();
    std::os::unix::fs::symlink(&module, module.join("root")).unwrap();
    write_version(&src, 50, 1);
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let run = |url: &str, extra: &[&str]| {
        let mut args: Vec<String> = d.client_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let extra: Vec<&str> = args.iter().map(String::as_str).collect();
        sync_atomic(&extra, &src, url)
    };
    ok(run(&d.url("m/serve/current"), &[]));
    let current = module.join("serve/current");
    assert_eq!(
        std::fs::read_link(&current).unwrap(),
        Path::new("../releases/.current.ferry-1")
    );
    assert_eq!(versions_at(&current), (BTreeSet::from(["v1".into()]), 50));
    write_version(&src, 50, 2);
    ok(run(
        &d.url("m/serve/current/"),
        &["--backup-dir", "../prev"],
    ));
    assert_eq!(
        std::fs::read_link(&current).unwrap(),
        Path::new("../releases/.current.ferry-2")
    );
    assert_eq!(versions_at(&current), (BTreeSet::from(["v2".into()]), 50));
    assert_eq!(
        versions_at(&module.join("serve/prev")),
        (BTreeSet::from(["v1".into()]), 50)
    );
    assert_eq!(entries(&module.join("releases")), vec![".current.ferry-2"]);
    // unchanged files are linked, not copied
    let keep = inode(&current.join("d3/f0003"));
    ok(run(&d.url("m/serve/current"), &[]));
    assert_eq!(
        std::fs::read_link(&current).unwrap(),
        Path::new("../releases/.current.ferry-3")
    );
    assert_eq!(inode(&current.join("d3/f0003")), keep, "copied, not linked");
    // an absolute link that stays inside the module
    ok(run(&d.url("m/abs"), &[]));
    assert_eq!(
        std::fs::read_link(module.join("abs")).unwrap(),
        module.join("releases/.abs.ferry-1")
    );
    assert_eq!(
        versions_at(&module.join("abs")),
        (BTreeSet::from(["v2".into()]), 50)
    );
    // out of the module (absolute, climbing), and the module's root
    for (name, why) in [
        ("m/escape", "outside the module"),
        ("m/serve/climb", "outside the module"),
        ("m/root", "module's root"),
    ] {
        let o = run(&d.url(name), &[]);
        assert!(!o.status.success(), "{name}");
        let err = stderr(&o);
        assert!(
            err.contains("symlink") && err.contains(why),
            "{name}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
    }
    assert_eq!(entries(&outside), vec!["keep"], "wrote outside the module");
    assert_eq!(entries(t.path()), vec!["module", "outside", "src"]);
}

/// A FUSE mount of `backing` at `at` (bindfs, which answers
/// `RENAME_EXCHANGE` with `EINVAL` as many FUSE filesystems do), unmounted
/// when dropped.
struct Fuse {
    at: std::path::PathBuf,
}

impl Fuse {
    /// `None` (the test skips) without root or bindfs, outside CI.
    fn mount(backing: &Path, at: &Path) -> Option<Fuse> {
        if !root_available() {
            return None;
        }
        if Command::new("bindfs").arg("--version").output().is_err() {
            if std::env::var_os("FERRY_REQUIRE_SSHD").is_some() {
                panic!("bindfs is missing (scripts/test.sh installs it)");
            }
            eprintln!("skipping: needs bindfs");
            return None;
        }
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("bindfs")
            .arg(backing)
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "bindfs");
        Some(Fuse {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let done = Command::new("fusermount")
            .arg("-u")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// On a real filesystem without `RENAME_EXCHANGE` (FUSE, through bindfs): a
/// directory is refused before anything is written, in one line saying how
/// to convert it; done as it says, the link is flipped there (rename and
/// symlink work on any POSIX filesystem) and unchanged files are still hard
/// links into the old tree.
#[test]
fn on_fuse_without_rename_exchange_the_symlink_form_works() {
    let t = tmp();
    let backing = t.path().join("backing");
    let Some(fuse) = Fuse::mount(&backing, &t.path().join("fuse")) else {
        return;
    };
    let src = t.path().join("src");
    let dest = fuse.at.join("dest");
    write_version(&src, 30, 1);
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &dest.display().to_string(),
    ]));
    let o = sync_atomic(&[], &src, &dest.display().to_string());
    assert!(!o.status.success());
    let err = stderr(&o);
    let d = dest.display().to_string();
    assert!(
        err.contains("RENAME_EXCHANGE")
            && err.contains(&format!("mv {d} {d}.1 && ln -s {d}.1 {d}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_dir());
    assert_eq!(entries(&fuse.at), vec![".dest.ferry-atomic.lock", "dest"]);
    // as the message says
    std::fs::rename(&dest, fuse.at.join("dest.1")).unwrap();
    std::os::unix::fs::symlink(fuse.at.join("dest.1"), &dest).unwrap();
    let keep = inode(&backing.join("dest.1/d4/f0004"));
    std::fs::rename(src.join("d4/f0004"), t.path().join("f0004")).unwrap();
    write_version(&src, 30, 2);
    std::fs::rename(t.path().join("f0004"), src.join("d4/f0004")).unwrap();
    ok(sync_atomic(&[], &src, &dest.display().to_string()));
    assert_eq!(
        std::fs::read_link(&dest).unwrap(),
        fuse.at.join(".dest.ferry-1")
    );
    let (versions, files) = versions_at(&dest);
    assert_eq!(files, 30);
    assert_eq!(versions, BTreeSet::from(["v1".into(), "v2".into()]));
    assert_eq!(
        inode(&backing.join(".dest.ferry-1/d4/f0004")),
        keep,
        "the unchanged file was copied"
    );
    assert_eq!(
        entries(&fuse.at),
        vec![".dest.ferry-1", ".dest.ferry-atomic.lock", "dest"]
    );
}

// ---- the same proofs over ssh and to the daemon: the reader during a
// remote re-sync, and `kill -9` of the receiving end (the side that
// switches) ----

/// The reader's verdict on a re-sync from v1 to v2 of 1,000 files.
#[track_caller]
fn assert_reader_saw_no_mix(
    (o, whole, seen, mixed): (
        std::process::Output,
        usize,
        BTreeSet<String>,
        Vec<BTreeSet<String>>,
    ),
) {
    ok(o);
    assert!(
        mixed.is_empty(),
        "a reader saw a mix of versions: {mixed:?}"
    );
    assert!(whole > 0, "the reader never read the tree whole");
    assert!(seen.contains("v1"), "the reader never saw the old tree");
    assert!(seen.contains("v2"), "the reader never saw the new tree");
}

/// Over ssh (the remote `ferry serve --stdio` switches): a reader of the
/// destination during a re-sync of 1,000 changed files never sees a mix.
#[test]
fn over_ssh_a_reader_never_sees_a_mix_of_versions() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let remote = format!("{}/", sshd.remote(&dest));
    let args = sshd.args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    write_version(&src, 1000, 1);
    ok(sync_atomic(&extra, &src, &remote));
    write_version(&src, 1000, 2);
    assert_reader_saw_no_mix(read_during(&dest, 1000, || {
        sync_atomic(&extra, &src, &remote)
    }));
    assert_eq!(versions_at(&dest), (BTreeSet::from(["v2".into()]), 1000));
    assert!(!t.path().join(".dest.ferry-atomic").exists());
}

/// To the daemon (it switches inside the module): a reader during a
/// re-sync of 1,000 changed files never sees a mix, in the directory form
/// and through a `current` link.
#[test]
fn to_the_daemon_a_reader_never_sees_a_mix_of_versions() {
    let t = tmp();
    let (src, module) = (t.path().join("src"), t.path().join("module"));
    std::fs::create_dir_all(module.join("a")).unwrap();
    let current = release_link(&module);
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let args = d.client_args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    for (url, at) in [("m/a/dest/", module.join("a/dest")), ("m/current", current)] {
        write_version(&src, 1000, 1);
        ok(sync_atomic(&extra, &src, &d.url(url)));
        write_version(&src, 1000, 2);
        assert_reader_saw_no_mix(read_during(&at, 1000, || {
            sync_atomic(&extra, &src, &d.url(url))
        }));
        assert_eq!(versions_at(&at), (BTreeSet::from(["v2".into()]), 1000));
    }
    assert_eq!(
        entries(&module.join("a")),
        vec![".dest.ferry-atomic.lock", "dest"]
    );
    assert_converged(&module);
}

/// The receiving processes of a run (given the client), empty before the
/// session reached them.
type Victims<'a> = Box<dyn Fn(&std::process::Child) -> Vec<u32> + 'a>;

/// How the kill rounds reach one receiving end.
struct Receiving<'a> {
    /// Starts one `sync -a --atomic` of the source into the destination.
    start: Box<dyn Fn() -> std::process::Child + 'a>,
    /// The processes that receive (and switch) for this client now; empty
    /// before the session reached them.
    victims: Victims<'a>,
    /// After a kill: what must run again before the next run (the daemon).
    revive: Box<dyn Fn() + 'a>,
}

/// How a tree at the destination shows that it was switched: the
/// directory's inode, or the link's text.
fn switch_mark(dest: &Path) -> String {
    match std::fs::read_link(dest) {
        Ok(text) => text.display().to_string(),
        Err(_) => std::fs::symlink_metadata(dest)
            .map(|m| m.ino().to_string())
            .unwrap_or_default(),
    }
}

/// Waits (bounded) until the receiving end of `child`'s session runs; its
/// processes and when they were first seen.
fn wait_for_victims(r: &Receiving, child: &mut std::process::Child) -> (Vec<u32>, Instant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = (r.victims)(child);
        if !pids.is_empty() {
            return (pids, Instant::now());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the run ended ({st}) before its receiving end was seen: {err}");
        }
        assert!(Instant::now() < deadline, "no receiving end after 20 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (bounded) for a run to end.
fn finish(child: &mut std::process::Child) -> std::process::ExitStatus {
    match wait_for(child, Duration::from_secs(60)) {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a run did not end within 60 s");
        }
    }
}

/// `kill -9` of the receiving end at `rounds` moments of re-syncs of 1,000
/// changed files into `dest`: after each, `dest` holds the whole old tree
/// or the whole new one (the new one whenever the client reported
/// success), and the next run converges (`converged` checks that nothing a
/// killed run made is left). A calibration run finds when the switch
/// comes; even rounds kill at a seeded moment before it, odd ones as soon
/// as the switch is seen, while the receiving end holds after it (the
/// `FERRY_TEST_AFTER_SWITCH_MS` hook, set by [`spawn_sync`] and by the
/// remote ends' environments), so that kills land on both sides of it
/// however loaded the machine is. Returns (kills that left the old tree, kills of a
/// live session that left the new tree).
fn kill_rounds(
    r: &Receiving,
    src: &Path,
    dest: &Path,
    rounds: u32,
    seed: u64,
    converged: &dyn Fn(u32),
) -> (u32, u32) {
    write_version(src, 1000, 1);
    ok(finish_output((r.start)()));
    // calibration: when, after the receiving end appears, the switch comes
    // and the run ends
    write_version(src, 1000, 2);
    let before = switch_mark(dest);
    let mut child = (r.start)();
    let (_, seen) = wait_for_victims(r, &mut child);
    let mut switched = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        if switched.is_none() && switch_mark(dest) != before {
            switched = Some(seen.elapsed());
        }
        if let Ok(Some(st)) = child.try_wait() {
            break (st, seen.elapsed());
        }
        assert!(Instant::now() < deadline, "the calibration run hung");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(ended.0.success(), "the calibration run failed");
    let end = ended.1.as_micros().max(2000) as u64;
    let switch = switched
        .map(|s| s.as_micros() as u64)
        .unwrap_or(end * 9 / 10)
        .clamp(1, end - 1000);
    eprintln!("calibration: the switch {switch} us after the receiver started, the end {end} us");
    let mut rng = Lcg(seed);
    let (mut old_seen, mut new_seen) = (0, 0);
    for round in 0..rounds {
        let (old, new) = (format!("v{}", round + 2), format!("v{}", round + 3));
        write_version(src, 1000, round + 3);
        let before = switch_mark(dest);
        let mut child = (r.start)();
        let (pids, seen) = wait_for_victims(r, &mut child);
        let at = if round % 2 == 0 {
            let at = Duration::from_micros(rng.next() % switch);
            std::thread::sleep(at.saturating_sub(seen.elapsed()));
            at
        } else {
            // the receiving end holds AFTER_SWITCH_MS once the new tree is
            // in place: kill it there, seen, every time
            let deadline = Instant::now() + Duration::from_secs(60);
            while switch_mark(dest) == before {
                assert!(
                    child.try_wait().ok().flatten().is_none(),
                    "round {round}: the run ended before its switch was seen"
                );
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no switch in 60 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            seen.elapsed()
        };
        for pid in &pids {
            // it may have ended already
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(*pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let st = finish(&mut child);
        (r.revive)();
        let (versions, files) = versions_at(dest);
        assert_eq!(
            files, 1000,
            "round {round}: killed at {at:?}, {files} files"
        );
        assert_eq!(
            versions.len(),
            1,
            "round {round}: killed at {at:?}: {versions:?}"
        );
        if versions.contains(&old) {
            assert!(!st.success(), "round {round}: success, yet the old tree");
            old_seen += 1;
        } else {
            assert!(versions.contains(&new), "round {round}: {versions:?}");
            if !st.success() {
                new_seen += 1;
            }
        }
        ok(finish_output((r.start)()));
        assert_eq!(versions_at(dest), (BTreeSet::from([new.clone()]), 1000));
        converged(round);
    }
    eprintln!(
        "kills left the old tree {old_seen} times, the new one {new_seen} times (after the switch)"
    );
    (old_seen, new_seen)
}

/// The output of a started run (bounded).
fn finish_output(mut child: std::process::Child) -> std::process::Output {
    let st = finish(&mut child);
    let read = |s: Option<&mut dyn std::io::Read>| {
        let mut v = Vec::new();
        if let Some(s) = s {
            let _ = s.read_to_end(&mut v);
        }
        v
    };
    std::process::Output {
        status: st,
        stdout: read(child.stdout.as_mut().map(|s| s as &mut dyn std::io::Read)),
        stderr: read(child.stderr.as_mut().map(|s| s as &mut dyn std::io::Read)),
    }
}

/// The test hook that holds a receiving end for a moment after its switch
/// (`src/fs/atomic.rs`), for the kill rounds' after-the-switch kills.
const AFTER_SWITCH: [(&str, &str); 2] = [
    ("FERRY_TEST_HOOKS", "1"),
    ("FERRY_TEST_AFTER_SWITCH_MS", "400"),
];

/// `env NAME=value …` for [`AFTER_SWITCH`], a wrapper for a daemon.
fn after_switch_env() -> Vec<String> {
    std::iter::once("env".to_string())
        .chain(AFTER_SWITCH.iter().map(|(k, v)| format!("{k}={v}")))
        .collect()
}

/// A `sync -a --atomic` of `src/` into `dest` with `extra` flags and the
/// [`AFTER_SWITCH`] hook, started (stderr kept for a failure's message; its
/// output is small).
fn spawn_sync(extra: &[String], src: &Path, dest: &str) -> std::process::Child {
    Command::new(ferry_bin())
        .args(["sync", "-a", "--atomic"])
        .args(extra)
        .envs(AFTER_SWITCH)
        .arg(format!("{}/", src.display()))
        .arg(dest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// After a run in the directory form: nothing but the kept lock file is
/// left beside `dir/dest`.
fn assert_no_leftover(dir: &Path, round: u32) {
    for e in entries(dir) {
        assert!(
            !e.contains(".ferry-") || e == ".dest.ferry-atomic.lock",
            "round {round}: {e} left beside the destination"
        );
    }
}

/// The `ferry serve --stdio` processes under `sshd` (sessions are its
/// descendants): the remote ends of ferry's ssh sessions.
fn remote_servers(sshd: u32) -> Vec<u32> {
    let bin = std::fs::canonicalize(ferry_bin()).unwrap();
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(1)?.parse().ok()
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&bin) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if argv.get(1..3) != Some(&[&b"serve"[..], &b"--stdio"[..]][..]) {
            continue;
        }
        let (mut up, mut hops) = (parent(pid), 0);
        while let Some(p) = up {
            if p == sshd {
                found.push(pid);
                break;
            }
            if p <= 1 || hops > 20 {
                break;
            }
            (up, hops) = (parent(p), hops + 1);
        }
    }
    found
}

/// Over ssh, `kill -9` of the remote `ferry serve --stdio` (the side that
/// builds and switches) at 20 seeded moments, in the directory form
/// (`RENAME_EXCHANGE`): the old or the new tree whole each time, kills on
/// both sides of the switch, and the next run converges with no leftover.
#[test]
fn over_ssh_kill_9_of_the_remote_leaves_the_old_or_the_new_tree() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with_env(&after_switch_env()[1..].join(" "), "");
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let remote = format!("{}/", sshd.remote(&dest));
    let args = sshd.args();
    let r = Receiving {
        start: Box::new(|| spawn_sync(&args, &src, &remote)),
        victims: Box::new(|_| remote_servers(sshd.pid())),
        revive: Box::new(|| {}),
    };
    let (old, new) = kill_rounds(&r, &src, &dest, 20, 24, &|round| {
        assert_no_leftover(t.path(), round)
    });
    assert!(old > 0, "no kill landed before the switch");
    assert!(new > 0, "no kill landed after the switch");
}

/// Over ssh, the same through a `current` link flipped by the remote.
#[test]
fn over_ssh_kill_9_of_the_remote_through_a_symlink() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with_env(&after_switch_env()[1..].join(" "), "");
    let t = tmp();
    let src = t.path().join("src");
    let current = release_link(t.path());
    let remote = sshd.remote(&current);
    let args = sshd.args();
    let r = Receiving {
        start: Box::new(|| spawn_sync(&args, &src, &remote)),
        victims: Box::new(|_| remote_servers(sshd.pid())),
        revive: Box::new(|| {}),
    };
    let (old, new) = kill_rounds(&r, &src, &current, 20, 2024, &|_| {
        assert_converged(t.path())
    });
    assert!(old > 0, "no kill landed before the flip");
    assert!(new > 0, "no kill landed after the flip");
}

/// A daemon for the kill rounds: killed with `kill -9` and started again
/// (same keys and module, a new port) after each kill.
struct Revived {
    daemon: std::cell::RefCell<Option<Daemon>>,
    module: std::path::PathBuf,
}

impl Revived {
    /// `d`'s keys and configuration served again by a daemon with the
    /// [`AFTER_SWITCH`] hook, module `m` at `module`, on a new port.
    fn start(mut d: Daemon, module: &Path) -> Daemon {
        let dir = std::mem::replace(&mut d.dir, tmp());
        drop(d);
        let env = after_switch_env();
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        Daemon::spawn_in(dir, &[("m", module, false)], &[], &env, "127.0.0.1:0")
            .expect("daemon started")
    }

    fn receiving<'a>(&'a self, src: &'a Path, path: &'a str) -> Receiving<'a> {
        Receiving {
            start: Box::new(move || {
                let d = self.daemon.borrow();
                let d = d.as_ref().unwrap();
                // a client retries a broken daemon connection for a
                // minute; here the state the kill left is what is checked
                let mut args = d.client_args();
                args.extend(["--retries".into(), "0".into()]);
                spawn_sync(&args, src, &d.url(path))
            }),
            victims: Box::new(move |_| vec![self.daemon.borrow().as_ref().unwrap().pid()]),
            revive: Box::new(move || {
                let mut d = self.daemon.borrow_mut().take().unwrap();
                assert!(
                    d.wait(Duration::from_secs(5)).is_some(),
                    "the daemon survived SIGKILL"
                );
                *self.daemon.borrow_mut() = Some(Revived::start(d, &self.module));
            }),
        }
    }
}

/// To the daemon, `kill -9` of the daemon itself at 20 seeded moments (and
/// a restart after each), in the directory form: the old or the new tree
/// whole each time, kills on both sides of the switch, and the next run
/// converges with no leftover in the module.
#[test]
fn to_the_daemon_kill_9_leaves_the_old_or_the_new_tree() {
    let t = tmp();
    let (src, module) = (t.path().join("src"), t.path().join("module"));
    std::fs::create_dir_all(&module).unwrap();
    let d = Revived {
        daemon: Some(Revived::start(
            Daemon::start(&[("m", &module, false)], "", &[]),
            &module,
        ))
        .into(),
        module: module.clone(),
    };
    let r = d.receiving(&src, "m/dest/");
    let (old, new) = kill_rounds(&r, &src, &module.join("dest"), 20, 7, &|round| {
        assert_no_leftover(&module, round)
    });
    assert!(old > 0, "no kill landed before the switch");
    assert!(new > 0, "no kill landed after the switch");
}

/// To the daemon, the same through a `current` link inside the module.
#[test]
fn to_the_daemon_kill_9_through_a_symlink() {
    let t = tmp();
    let (src, module) = (t.path().join("src"), t.path().join("module"));
    std::fs::create_dir_all(&module).unwrap();
    let current = release_link(&module);
    let d = Revived {
        daemon: Some(Revived::start(
            Daemon::start(&[("m", &module, false)], "", &[]),
            &module,
        ))
        .into(),
        module: module.clone(),
    };
    let r = d.receiving(&src, "m/current");
    let (old, new) = kill_rounds(&r, &src, &current, 20, 77, &|_| assert_converged(&module));
    assert!(old > 0, "no kill landed before the flip");
    assert!(new > 0, "no kill landed after the flip");
}

/// Locally, as the kill test above but with the moments chosen on both
/// sides of the switch: some kills land after it (the old tree being
/// removed) and leave the new tree whole, not only kills before it.
#[test]
fn kill_9_after_the_switch_leaves_the_new_tree() {
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let dest_arg = format!("{}/", dest.display());
    let r = Receiving {
        start: Box::new(|| spawn_sync(&[], &src, &dest_arg)),
        victims: Box::new(|child| vec![child.id()]),
        revive: Box::new(|| {}),
    };
    let (old, new) = kill_rounds(&r, &src, &dest, 20, 99, &|round| {
        assert_no_leftover(t.path(), round)
    });
    assert!(old > 0, "no kill landed before the switch");
    assert!(new > 0, "no kill landed after the switch");
}

/// `a/current` and `b/current`, two links of one name whose trees are in
/// one directory `r`: `a/current -> ../r/a0` (holding version 1 of the
/// source), `b/current -> ../r/b0` (holding `b-file`).
fn two_links(t: &Path, src: &Path) {
    write_version(src, 20, 1);
    std::fs::create_dir_all(t.join("a")).unwrap();
    std::fs::create_dir_all(t.join("b")).unwrap();
    std::fs::create_dir_all(t.join("r/a0")).unwrap();
    write(&t.join("r/b0/b-file"), b"b's tree");
    std::os::unix::fs::symlink("../r/a0", t.join("a/current")).unwrap();
    std::os::unix::fs::symlink("../r/b0", t.join("b/current")).unwrap();
}

/// Points `b/current` at `to` (a text relative to `b`) in one rename, as
/// b's own `--atomic` run does when it wins a name.
fn repoint_b(t: &Path, to: &str) {
    let temp = t.join("b/.repoint");
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(to, &temp).unwrap();
    std::fs::rename(&temp, t.join("b/current")).unwrap();
}

fn sync_racing(src: &Path, dest: &Path) -> Command {
    let mut c = Command::new(ferry_bin());
    c.args(["sync", "-a", "--atomic"])
        .arg(format!("{}/", src.display()))
        .arg(dest)
        .env("FERRY_TEST_HOOKS", "1")
        .env("FERRY_TEST_FLIP_RACE", "1")
        .stdin(Stdio::null());
    c
}

/// A run killed after another link's run took the name it had journalled,
/// before it could clear the journal (staged by the hook: it makes the name,
/// holding `taken`, then exits), leaves a journal naming b's tree: a's next
/// run must not remove it. The journal now holds the new tree's device and
/// inode once the run made it; before, a's next run removed b's live tree
/// (seen as a flaky failure of the kill-at-random-times test below).
#[test]
fn a_run_killed_as_it_loses_the_name_never_removes_the_winners_tree() {
    let t = tmp();
    let src = t.path().join("src");
    two_links(t.path(), &src);
    let a = t.path().join("a/current");
    let o = sync_racing(&src, &a)
        .env("FERRY_TEST_FLIP_RACE", "kill")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let won = t.path().join("r/.current.ferry-1");
    assert!(won.join("taken").exists(), "the hook made b's tree");
    assert_eq!(std::fs::read_link(&a).unwrap(), Path::new("../r/a0"));
    repoint_b(t.path(), "../r/.current.ferry-1");
    write_version(&src, 20, 2);
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    assert_eq!(versions_at(&a), (BTreeSet::from(["v2".into()]), 20));
    assert!(
        t.path().join("b/current/taken").exists(),
        "a's next run removed b's live tree"
    );
}

/// Review finding (high): two runs for same-named links whose trees share
/// a directory pick the same `.current.ferry-N`; the one that loses the
/// name (forced here by the test hook, which makes that name, holding
/// `taken`, just before the run does) goes on with N+1 instead of failing
/// with a journal that names the winner's tree, and once `b/current` points
/// at the tree that won, a's next runs never remove it.
#[test]
fn a_run_losing_its_new_trees_name_never_removes_the_winners_tree() {
    let t = tmp();
    let src = t.path().join("src");
    two_links(t.path(), &src);
    let a = t.path().join("a/current");
    let o = sync_racing(&src, &a).output().unwrap();
    ok(o);
    let won = t.path().join("r/.current.ferry-1");
    assert!(
        won.join("taken").exists(),
        "the hook made the winner's tree"
    );
    assert_eq!(
        std::fs::read_link(&a).unwrap(),
        Path::new("../r/.current.ferry-2"),
        "a's run took the next name"
    );
    assert_eq!(versions_at(&a), (BTreeSet::from(["v1".into()]), 20));
    // b's run flips b/current to the tree it made
    repoint_b(t.path(), "../r/.current.ferry-1");
    write_version(&src, 20, 2);
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    assert_eq!(versions_at(&a), (BTreeSet::from(["v2".into()]), 20));
    assert!(
        t.path().join("b/current/taken").exists(),
        "a's next run removed b's live tree"
    );
    assert!(t.path().join("r/b0/b-file").exists());
}

/// The same race with `kill -9` of a's run at seeded moments from its start
/// (the hook making the name a's run would take each time, which b's run
/// then points at), each followed by a whole run: every tree `b/current`
/// ever pointed at is still there with what it held, and `a/current` ends
/// whole.
#[test]
fn kill_9_of_a_racing_run_never_removes_another_links_tree() {
    let t = tmp();
    let src = t.path().join("src");
    two_links(t.path(), &src);
    let a = t.path().join("a/current");
    let mut b_trees = vec![t.path().join("r/b0")];
    // later moments only while no kill has landed in the race yet (a loaded
    // machine starts the run later): at most 13 rounds
    for (round, ms) in [0u64, 1, 2, 4, 7, 12, 20, 35, 60, 100, 170, 300, 500]
        .into_iter()
        .enumerate()
    {
        if round >= 8 && b_trees.len() > 1 {
            break;
        }
        let mut child = sync_racing(&src, &a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        // b's run takes any tree of the name that a's link does not point at
        let a_now = std::fs::read_link(&a).unwrap();
        for e in entries(&t.path().join("r")) {
            let p = t.path().join("r").join(&e);
            if e.starts_with(".current.ferry-")
                && p.join("taken").exists()
                && Path::new("../r").join(&e) != a_now
                && !b_trees.contains(&p)
            {
                repoint_b(t.path(), &format!("../r/{e}"));
                b_trees.push(p);
            }
        }
        write_version(&src, 20, round as u32 + 2);
        ok(sync_atomic(&[], &src, &a.display().to_string()));
        assert_eq!(
            versions_at(&a),
            (BTreeSet::from([format!("v{}", round + 2)]), 20),
            "round {round}"
        );
        for p in &b_trees {
            assert!(
                p.join("taken").exists() || p.join("b-file").exists(),
                "round {round}: a's run removed b's tree {}",
                p.display()
            );
        }
    }
    assert!(b_trees.len() > 1, "no round raced for a name");
}

/// Writes a journal into a's lock file as a killed run would have, naming
/// `new` and `old` (texts relative to `a`), the old tree not kept.
fn plant_journal(t: &Path, new: &str, old: &str) -> std::path::PathBuf {
    let lock = t.join("a/.current.ferry-atomic.lock");
    let mut body = b"ferry-flip-1\0".to_vec();
    body.extend_from_slice(new.as_bytes());
    body.extend_from_slice(b"\0r");
    body.extend_from_slice(old.as_bytes());
    body.push(0);
    std::fs::write(&lock, body).unwrap();
    lock
}

/// Review finding: the lock file's journal is not trusted. A journal
/// naming a directory that is not beside the link's target (`../precious`
/// as the tree replaced by a flip to what the link says now) is ignored
/// (a warning in the log) and the directory survives; so is a journal in a
/// lock file owned by another user or writable by others, even naming a
/// `.current.ferry-N` the link's own runs would have made.
#[test]
fn a_planted_journal_removes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let t = tmp();
    let src = t.path().join("src");
    two_links(t.path(), &src);
    let a = t.path().join("a/current");
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    let now = std::fs::read_link(&a).unwrap().display().to_string();
    write(&t.path().join("precious/keep"), b"mine");

    // the replaced tree named outside the link's target's directory
    plant_journal(t.path(), &now, "../precious");
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    assert!(t.path().join("precious/keep").exists(), "precious removed");

    // a new tree of the link's own form, but the lock file writable by others
    let now = std::fs::read_link(&a).unwrap().display().to_string();
    write(&t.path().join("r/.current.ferry-90/keep"), b"mine");
    let lock = plant_journal(t.path(), "../r/.current.ferry-90", &now);
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    assert!(t.path().join("r/.current.ferry-90/keep").exists());

    // owned by another user
    let lock = plant_journal(t.path(), "../r/.current.ferry-90", &now);
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    ok(sync_atomic(&[], &src, &a.display().to_string()));
    assert!(t.path().join("r/.current.ferry-90/keep").exists());
    assert!(t.path().join("b/current/b-file").exists());
    assert_eq!(versions_at(&a), (BTreeSet::from(["v1".into()]), 20));
}
