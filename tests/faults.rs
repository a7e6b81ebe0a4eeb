//! Faults on the receiving side: concurrent writers, a full disk, SIGKILL at
//! random moments. Whatever happens, every file at its final path is a complete
//! version, never a mix or a fragment.

mod util;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn two_clients_writing_the_same_path_never_interleave() {
    let t = tmp();
    let size = 48usize << 20;
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write(&a, random_bytes(size, 1));
    write(&b, random_bytes(size, 2));
    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    for round in 0..3 {
        let _ = std::fs::remove_file(dest.join("model.bin"));
        let spawn = |src: &Path| {
            Command::new(ferry_bin())
                .args([
                    "sync",
                    "--bwlimit",
                    "64M",
                    &s(src),
                    &s(&dest.join("model.bin")),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        let got = std::fs::read(dest.join("model.bin")).unwrap();
        let is_a = got == random_bytes(size, 1);
        let is_b = got == random_bytes(size, 2);
        assert!(
            is_a || is_b,
            "round {round}: the result is neither file ({} bytes)",
            got.len()
        );
        // a client that lost the race says so clearly
        for o in [&oa, &ob] {
            if !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(err.contains("another transfer"), "round {round}: {err}");
            }
        }
    }
}

/// A filesystem this test mounted; unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Mounted {
    /// Mounts with `mount ARGS... DIR` (creating `dir`).
    fn new(args: &[&str], dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(args).arg(dir).status().unwrap();
        assert!(st.success(), "mount {}", args.join(" "));
        Mounted(dir.to_path_buf())
    }

    /// A tmpfs of `size` (e.g. `8m`) at `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Mounted {
        Self::new(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        )
    }

    /// Bytes free for an unprivileged writer.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_named_with_its_free_space_and_the_old_file_survives() {
    if !root_available() {
        return;
    }
    let t = tmp();
    let disk = Mounted::tmpfs(&t.path().join("disk"), "8m");
    write(&disk.0.join("model.bin"), random_bytes(1 << 20, 1));
    write(&t.path().join("model.bin"), random_bytes(16 << 20, 2));
    let o = ferry([
        "sync",
        &s(&t.path().join("model.bin")),
        &s(&disk.0.join("model.bin")),
    ]);
    assert_eq!(o.status.code(), Some(23), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("bytes free"), "{err}");
    assert!(err.contains(&s(&disk.0.join("model.bin"))), "{err}");
    assert_eq!(
        std::fs::read(disk.0.join("model.bin")).unwrap(),
        random_bytes(1 << 20, 1)
    );
    // nothing half-written under another name at the final path's directory
    let names: Vec<_> = std::fs::read_dir(&disk.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "model.bin" || n == ".ferry-partial"),
        "{names:?}"
    );
}

/// Two versions (a, b) of a tree of mixed sizes.
fn versions(a: &Path, b: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..30u64 {
        let size = [1 << 10, 40 << 10, 300 << 10, 2 << 20, 5 << 20][i as usize % 5];
        let name = format!("d{}/f{i:02}.bin", i % 3);
        let (va, vb) = (
            random_bytes(size, 1000 + i),
            random_bytes(size + 7, 2000 + i),
        );
        write(&a.join(&name), &va);
        write(&b.join(&name), &vb);
        files.push((name, va, vb));
    }
    files
}

/// After the final, uninterrupted run: every file is the new version.
#[track_caller]
fn each_file_is_new(dst: &Path, files: &[(String, Vec<u8>, Vec<u8>)]) {
    for (name, _, vb) in files {
        assert!(
            std::fs::read(dst.join(name)).unwrap() == *vb,
            "{name} after the final run"
        );
    }
}

#[track_caller]
fn each_file_is_whole(dst: &Path, files: &[(String, Vec<u8>, Vec<u8>)], when: &str) {
    for (name, va, vb) in files {
        if let Ok(got) = std::fs::read(dst.join(name)) {
            assert!(
                got == *va || got == *vb,
                "{when}: {name} is neither version ({} bytes)",
                got.len()
            );
        }
    }
}

#[test]
fn sigkill_at_fifty_moments_never_leaves_a_partial_file_at_a_final_path() {
    let t = tmp();
    let (a, b, dst) = (t.path().join("a"), t.path().join("b"), t.path().join("dst"));
    let files = versions(&a, &b);
    let mut seed: u64 = 0x5eed;
    let mut killed = 0;
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 400);
        // each round syncs the other version: there is always work to interrupt
        let src = if round % 2 == 0 { &a } else { &b };
        let mut child = Command::new(ferry_bin())
            .args([
                "sync",
                "-a",
                "--bwlimit",
                "40M",
                &format!("{}/", src.display()),
                &format!("{}/", dst.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        each_file_is_whole(&dst, &files, &format!("after kill {round}"));
    }
    eprintln!("SIGKILLed {killed} of 50 transfers mid-way; every file at its final path was a whole version each time");
    assert!(
        killed >= 40,
        "only {killed} runs were still going when killed"
    );
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", b.display()),
        &format!("{}/", dst.display()),
    ]));
    each_file_is_new(&dst, &files);
}

#[test]
fn a_fresh_copy_killed_mid_file_leaves_no_temporary_file_behind() {
    // files under the partial threshold (1 MiB) arriving slowly, so that a
    // kill lands while one of them is being written: a new file has no name
    // until it is whole, so nothing but whole files is left (before, a
    // hidden `.name.ferry-PID-N` stayed behind)
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for i in 0..40u64 {
        write(
            &src.join(format!("d{}/f{i:02}", i / 10)),
            random_bytes(512 << 10, i),
        );
    }
    for (round, delay_ms) in [300u64, 650, 1000].into_iter().enumerate() {
        let _ = std::fs::remove_dir_all(&dst);
        let mut child = Command::new(ferry_bin())
            .args([
                "sync",
                "-a",
                "--bwlimit",
                "4M",
                &format!("{}/", s(&src)),
                &format!("{}/", s(&dst)),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: finished before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let got = snapshot(&dst, false);
        let want = snapshot(&src, false);
        for (rel, node) in &got {
            let rel_s = String::from_utf8_lossy(rel);
            assert!(
                !rel_s.split('/').any(|c| c.starts_with('.')),
                "round {round}: left behind {rel_s}"
            );
            // (directories get their mode and times only at the end)
            if matches!(node, Node::File { .. }) {
                assert_eq!(Some(node), want.get(rel), "round {round}: {rel_s}");
            }
        }
        let whole = got
            .values()
            .filter(|n| matches!(n, Node::File { .. }))
            .count();
        assert!(whole < 40, "round {round}: the copy was not interrupted");
    }
}

#[test]
fn a_destination_out_of_inodes_fails_the_files_that_do_not_fit_and_ends() {
    // empty files (nothing but their end arrives) that cannot be created:
    // each is reported and the transfer ends with 23 (it used to wait
    // forever for the files it had given up on)
    if !root_available() {
        return;
    }
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..30 {
        write(&src.join(format!("e{i:02}")), b"");
    }
    let fs = Mounted::new(
        &["-t", "tmpfs", "-o", "size=4m,nr_inodes=12", "tmpfs"],
        &t.path().join("tiny"),
    );
    let dst = fs.0.join("d");
    let mut child = Command::new(ferry_bin())
        .args([
            "sync",
            "-a",
            &format!("{}/", s(&src)),
            &format!("{}/", s(&dst)),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if wait_for(&mut child, Duration::from_secs(30)).is_none() {
        child.kill().unwrap();
        panic!("the transfer did not end");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(23));
    let err = String::from_utf8_lossy(&out.stderr);
    let failed = err.lines().filter(|l| l.contains("no inodes left")).count();
    let copied = std::fs::read_dir(&dst).unwrap().count();
    assert!(
        copied > 0 && failed > 0,
        "{copied} copied, {failed} failed:\n{err}"
    );
    assert_eq!(copied + failed, 30, "{err}");
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_transfer_never_leads_writes_outside() {
    let t = tmp();
    let (src, dst, outside) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("outside"),
    );
    for i in 0..400 {
        write(&src.join(format!("sub/f{i:03}")), random_bytes(8 << 10, i));
    }
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (dst, outside, stop) = (dst.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // sub -> aside, symlink sub -> outside, then back
                let _ = std::fs::rename(dst.join("sub"), dst.join("aside"));
                let _ = std::os::unix::fs::symlink(&outside, dst.join("sub"));
                std::thread::sleep(Duration::from_micros(300));
                let _ = std::fs::remove_file(dst.join("sub"));
                let _ = std::fs::rename(dst.join("aside"), dst.join("sub"));
                swaps += 1;
            }
            swaps
        })
    };
    for _ in 0..5 {
        let _ = ferry([
            "sync",
            "-r",
            &format!("{}/", src.display()),
            &format!("{}/", dst.display()),
        ]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    let leaked: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    eprintln!("{swaps} swaps raced the receiver");
    assert!(
        leaked.is_empty(),
        "files written through the symlink: {leaked:?}"
    );
}

#[test]
fn a_source_that_changes_while_being_sent_is_reported_and_not_published() {
    let t = tmp();
    let src = t.path().join("big");
    write(&src, random_bytes(32 << 20, 3));
    // its own directory: beside the source it would be rebuilt from the source itself
    let dst = t.path().join("elsewhere/copy");
    std::fs::create_dir(t.path().join("elsewhere")).unwrap();
    let child = Command::new(ferry_bin())
        .args(["sync", "--bwlimit", "16M", &s(&src), &s(&dst)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"edited while being sent", 30 << 20)
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(23));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("changed while being sent"), "{err}");
    assert!(!dst.exists(), "a file that changed mid-send was published");
}

/// The sender reads a file up to the size it had when opened, not to its end
/// (one read for a small file): a file that grows meanwhile is still caught
/// by its stamp taken after, not sent cut short as if whole.
#[test]
fn a_source_that_grows_while_being_sent_is_reported_and_not_published() {
    let t = tmp();
    let src = t.path().join("big");
    write(&src, random_bytes(32 << 20, 4));
    let dst = t.path().join("elsewhere/copy");
    std::fs::create_dir(t.path().join("elsewhere")).unwrap();
    let child = Command::new(ferry_bin())
        .args(["sync", "--bwlimit", "16M", &s(&src), &s(&dst)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
        f.write_all(b"appended while being sent").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(23));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("changed while being sent"), "{err}");
    assert!(!dst.exists(), "a file that grew mid-send was published");
}

#[test]
fn sigkill_of_the_daemon_at_fifty_moments_never_leaves_a_partial_file() {
    let t = tmp();
    let (a, b, module) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("module"),
    );
    std::fs::create_dir(&module).unwrap();
    let files = versions(&a, &b);
    let dst = module.join("tree");
    let mut d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut seed: u64 = 0xfe77;
    let mut killed = 0;
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let src = if round % 2 == 0 { &a } else { &b };
        let mut args: Vec<String> = vec![
            "sync".into(),
            "-a".into(),
            "--bwlimit".into(),
            "40M".into(),
            "--timeout".into(),
            "1".into(),
        ];
        args.extend(d.client_args());
        args.extend([format!("{}/", src.display()), d.url("data/tree/")]);
        let mut client = Command::new(ferry_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(60 + seed % 400));
        if client.try_wait().unwrap().is_none() {
            d.kill9();
            killed += 1;
        }
        let _ = client.kill();
        let _ = client.wait();
        each_file_is_whole(&dst, &files, &format!("after daemon kill {round}"));
        d = d.restart(&[("data", &module, false)]);
    }
    eprintln!("SIGKILLed the daemon {killed} times of 50 mid-transfer; every file at its final path was a whole version each time");
    assert!(
        killed >= 40,
        "only {killed} transfers were still going when the daemon was killed"
    );
    ok(sync_all(&d, &b));
    each_file_is_new(&dst, &files);
}

fn sync_all(d: &Daemon, src: &Path) -> std::process::Output {
    let mut args: Vec<String> = vec!["sync".into(), "-a".into()];
    args.extend(d.client_args());
    args.extend([format!("{}/", src.display()), d.url("data/tree/")]);
    ferry(&args)
}

/// Processes under `root` (its children, theirs, …) whose command line
/// contains `needle`.
fn descendants(root: u32, needle: &str) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: the comm may hold spaces, so split after ')'
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        else {
            continue;
        };
        parent.insert(pid, ppid);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found.retain(|&p| {
        let mut at = p;
        while let Some(&up) = parent.get(&at) {
            if up == root {
                return true;
            }
            if up <= 1 {
                break;
            }
            at = up;
        }
        false
    });
    found
}

#[test]
fn sigkill_of_either_side_of_an_ssh_transfer_at_fifty_moments() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (a, b, dst) = (t.path().join("a"), t.path().join("b"), t.path().join("dst"));
    let files = versions(&a, &b);
    let mut seed: u64 = 0x55d;
    let (mut senders, mut receivers) = (0, 0);
    for round in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // the version flips every other round: a receiver-kill round goes on
        // with the work its sender-kill round left, so that both find work
        let src = if (round / 2) % 2 == 0 { &a } else { &b };
        let mut args: Vec<String> =
            vec!["sync".into(), "-a".into(), "--bwlimit".into(), "40M".into()];
        args.extend(sshd.args());
        args.extend([format!("{}/", src.display()), sshd.remote(&dst) + "/"]);
        let mut client = Command::new(ferry_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = std::time::Instant::now() + Duration::from_millis(150 + seed % 400);
        // odd rounds kill the receiver on the far side of ssh, even rounds the
        // sending client
        let remote = round % 2 == 1;
        let mut victim = None;
        while std::time::Instant::now() < at {
            if remote && victim.is_none() {
                victim = descendants(sshd.pid(), "serve").first().copied();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if client.try_wait().unwrap().is_none() {
            if remote {
                if let Some(pid) =
                    victim.or_else(|| descendants(sshd.pid(), "serve").first().copied())
                {
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap();
                    receivers += 1;
                }
            } else {
                client.kill().unwrap();
                senders += 1;
            }
        }
        let status = client.wait().unwrap();
        if std::env::var_os("FERRY_DEBUG_KILLS").is_some() {
            eprintln!("round {round}: remote={remote} victim={victim:?} status={status:?}");
        }
        // the far side notices its peer is gone and exits
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !descendants(sshd.pid(), "serve").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        each_file_is_whole(&dst, &files, &format!("after kill {round}"));
    }
    eprintln!(
        "over ssh: SIGKILLed the sender {senders} times and the remote receiver {receivers} times of 50; every file at its final path was a whole version each time"
    );
    assert!(
        senders + receivers >= 35,
        "only {} transfers were still going when killed",
        senders + receivers
    );
    assert!(
        receivers >= 10,
        "the remote receiver was killed only {receivers} times"
    );
    let mut args: Vec<String> = vec!["sync".into(), "-a".into()];
    args.extend(sshd.args());
    args.extend([format!("{}/", b.display()), sshd.remote(&dst) + "/"]);
    ok(ferry(&args));
    each_file_is_new(&dst, &files);
}

#[test]
fn a_source_that_fails_to_read_part_way_keeps_the_old_file_and_leaves_no_temp() {
    use util::failing_fs::{mount, FailingFile};
    if !root_available() {
        return;
    }
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let files = vec![
        // an old version waits at the destination: the delta path
        FailingFile {
            name: "changed.bin".into(),
            bytes: random_bytes(8 << 20, 1),
            fail_at: 3 << 20,
        },
        // nothing at the destination: the fresh path
        FailingFile {
            name: "new.bin".into(),
            bytes: random_bytes(6 << 20, 2),
            fail_at: 1 << 20,
        },
        FailingFile {
            name: "fine.bin".into(),
            bytes: random_bytes(2 << 20, 3),
            fail_at: u64::MAX,
        },
    ];
    let _mounted = mount(&src, files, mtime);
    write(&dst.join("changed.bin"), random_bytes(8 << 20, 4));
    let out = ferry([
        "sync",
        "-a",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("{err}");
    for name in ["changed.bin", "new.bin"] {
        assert!(
            err.lines()
                .any(|l| l.contains(name) && l.contains("Input/output error")),
            "{name} not reported with its error: {err}"
        );
    }
    assert!(
        std::fs::read(dst.join("changed.bin")).unwrap() == random_bytes(8 << 20, 4),
        "the old version was replaced"
    );
    assert!(
        !dst.join("new.bin").exists(),
        "a file that failed was published"
    );
    assert!(std::fs::read(dst.join("fine.bin")).unwrap() == random_bytes(2 << 20, 3));
    // nothing else: at most the resumable partial directory
    let mut names: Vec<String> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.retain(|n| n != ".ferry-partial");
    assert_eq!(
        names,
        ["changed.bin", "fine.bin"],
        "temporary files left behind"
    );
}

/// An XFS filesystem of `mib` MiB in the file `image`, loop-mounted at `dir`;
/// `None` (the test skips) where mkfs.xfs is missing outside CI.
fn mount_xfs(image: &Path, dir: &Path, mib: u64) -> Option<Mounted> {
    if Command::new("mkfs.xfs").arg("-V").output().is_err() {
        if std::env::var_os("FERRY_REQUIRE_SSHD").is_some() {
            panic!("mkfs.xfs is missing (scripts/test.sh installs xfsprogs)");
        }
        eprintln!("skipping: needs mkfs.xfs");
        return None;
    }
    std::fs::File::create(image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let st = Command::new("mkfs.xfs")
        .args(["-q", &s(image)])
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.xfs");
    Some(Mounted::new(&["-o", "loop", &s(image)], dir))
}

#[test]
fn a_resync_on_xfs_shares_the_unchanged_blocks_with_the_old_file() {
    if !root_available() {
        return;
    }
    let t = tmp();
    let Some(disk) = mount_xfs(&t.path().join("xfs.img"), &t.path().join("mnt"), 400) else {
        return;
    };
    let size = 200usize << 20;
    let src = t.path().join("model.bin");
    let mut data = random_bytes(size, 8);
    write(&src, &data);
    let dst = t.path().join("mnt/model.bin");
    ok(ferry(["sync", "-a", &s(&src), &s(&dst)]));
    // 1% rewritten in place; without shared blocks the new version would need
    // another 200 MiB, more than this filesystem has left
    let before = disk.free();
    assert!(
        before < size as u64,
        "{before} bytes free: the test needs a tighter disk"
    );
    for i in 0..32 {
        let at = i * (size / 32) + 4096 * 3;
        data[at..at + 65536].copy_from_slice(&random_bytes(65536, 100 + i as u64));
    }
    write(&src, &data);
    let out = ferry(["sync", "-a", &s(&src), &s(&dst)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dst).unwrap() == data, "bytes differ");
    let used = before.saturating_sub(disk.free());
    eprintln!("the re-sync took {} KiB of a 200 MiB file", used >> 10);
    assert!(
        used < 32 << 20,
        "{used} bytes used: the blocks were not shared"
    );
}
