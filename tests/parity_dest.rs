//! The order of rsync's destination-side flags, observed: `--delete-before`
//! frees room before any file is written (a full disk takes the new files),
//! `--delete-after` (ferry's default) deletes nothing when the transfer is
//! cut. The trees these flags make are compared with rsync's in
//! `tests/oracle.rs`.

mod util;
use std::path::Path;
use std::time::Duration;
use util::*;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// On a 1 MiB disk holding a 700 KiB file the source no longer has, a
/// 600 KiB new file fits only once the old one is gone: `--delete-before`
/// (and `--delete-during`, which ferry does the same way) succeeds,
/// `--delete-after` runs out of room first and says so.
#[test]
fn delete_before_frees_room_first_on_a_full_disk() {
    if !root_available() {
        return;
    }
    let t = tmp();
    let src = t.path().join("src");
    let new = random_bytes(600 << 10, 1);
    write(&src.join("new.bin"), &new);
    for (flag, fits) in [
        ("--delete-after", false),
        ("--delete-before", true),
        ("--delete-during", true),
    ] {
        let disk = SmallDisk::mount(&t.path().join(&flag[2..]), "1m");
        write(&disk.0.join("old.bin"), random_bytes(700 << 10, 2));
        let o = ferry([
            "sync".to_string(),
            "-a".into(),
            "--no-partial".into(),
            flag.into(),
            format!("{}/", src.display()),
            format!("{}/", disk.0.display()),
        ]);
        if fits {
            assert!(o.status.success(), "{flag}: {}", stderr(&o));
            assert_eq!(
                std::fs::read(disk.0.join("new.bin")).unwrap(),
                new,
                "{flag}"
            );
        } else {
            assert!(!o.status.success(), "{flag} found room");
            assert!(stderr(&o).contains("space"), "{flag}: {}", stderr(&o));
            assert!(!disk.0.join("new.bin").exists(), "{flag}");
        }
        assert!(
            !disk.0.join("old.bin").exists(),
            "{flag}: the old file stays"
        );
    }
}

/// A push to the daemon cut mid-way (the daemon killed): with
/// `--delete-after` nothing at the destination was deleted; with
/// `--delete-before` the extras were gone before the first file arrived.
#[test]
fn delete_after_deletes_nothing_when_the_transfer_is_cut() {
    let t = tmp();
    let (src, module) = (t.path().join("src"), t.path().join("module"));
    for i in 0..40 {
        write(&src.join(format!("f{i:02}.bin")), random_bytes(64 << 10, i));
    }
    for (flag, deleted) in [("--delete-after", false), ("--delete-before", true)] {
        let dest = module.join(&flag[2..]);
        write(&dest.join("stale/a"), "x");
        write(&dest.join("stale.bin"), "x");
        let mut d = Daemon::start(&[("m", &module, false)], "", &[]);
        let mut args = vec!["sync".to_string(), "-a".into(), flag.into()];
        args.extend(["--bwlimit=256".into(), "--retries=0".into()]);
        args.extend(d.client_args());
        args.extend([
            format!("{}/", src.display()),
            d.url(&format!("m/{}/", &flag[2..])),
        ]);
        let mut client = std::process::Command::new(ferry_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // some files arrived, not all
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&dest)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().starts_with('f')
            })
            .count()
            < 3
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{flag}: nothing arrived"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d.kill9();
        let st = wait_for(&mut client, Duration::from_secs(30)).expect("the client ended");
        assert!(!st.success(), "{flag}: the cut transfer succeeded");
        assert!(
            !dest.join("f39.bin").exists(),
            "{flag}: the transfer was not cut"
        );
        assert_eq!(!dest.join("stale.bin").exists(), deleted, "{flag}");
        assert_eq!(!dest.join("stale").exists(), deleted, "{flag}");
    }
}

/// `--delete-before` holds every request until the list is whole: a list
/// longer than the window the sender may list ahead still goes through (the
/// receiver acknowledges what it holds), over the daemon too.
#[test]
fn delete_before_with_a_list_longer_than_the_window() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8300 {
        std::fs::write(src.join(format!("{i:05}")), i.to_string()).unwrap();
    }
    let module = t.path().join("module");
    write(&module.join("out/stale"), "x");
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let mut args = vec!["sync".to_string(), "-a".into(), "--delete-before".into()];
    args.extend(d.client_args());
    args.extend([format!("{}/", src.display()), d.url("m/out/")]);
    let o = ferry(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!module.join("out/stale").exists());
    assert_same_tree(&src, &module.join("out"), false);
}

/// `--inplace` writes over the file itself: another hard link to it sees the
/// new bytes (as with rsync), where the default publish leaves it the old
/// file; the bytes written are still verified (the copy equals the source).
#[test]
fn inplace_writes_over_the_same_inode() {
    let t = tmp();
    let src = t.path().join("src");
    let new = random_bytes(300_000, 7);
    write(&src.join("a.bin"), &new);
    for (flag, shared) in [("--inplace", true), ("--whole-file", false)] {
        let dest = t.path().join(&flag[2..]);
        write(&dest.join("a.bin"), random_bytes(200_000, 8));
        std::fs::hard_link(
            dest.join("a.bin"),
            t.path().join(format!("other-{}", &flag[2..])),
        )
        .unwrap();
        ok(ferry([
            "sync".to_string(),
            "-a".into(),
            flag.into(),
            format!("{}/", src.display()),
            format!("{}/", dest.display()),
        ]));
        assert_eq!(std::fs::read(dest.join("a.bin")).unwrap(), new, "{flag}");
        let other = std::fs::read(t.path().join(format!("other-{}", &flag[2..]))).unwrap();
        assert_eq!(other == new, shared, "{flag}");
    }
    let o = ferry([
        "sync".to_string(),
        "-a".into(),
        "--inplace".into(),
        "-b".into(),
        format!("{}/", src.display()),
        format!("{}/", t.path().join("x").display()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--inplace"), "{}", stderr(&o));
}
