//! Local transfers through the built binary: rsync's and scp's naming rules,
//! --delete, -n, -u, -c, excludes, backups, hard links, sparse files, hostile
//! names, and the errors and exit codes a user sees.

mod util;
use std::os::unix::ffi::OsStrExt;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}
use std::os::unix::fs::MetadataExt;
use util::*;

fn sample(root: &std::path::Path) {
    write(&root.join("a.txt"), "alpha\n");
    write(&root.join("sub/b.bin"), random_bytes(300_000, 1));
    write(&root.join("sub/deep/c"), "c");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    chmod(&root.join("a.txt"), 0o640);
    set_mtime(&root.join("a.txt"), 1_600_000_000);
}

#[test]
fn trailing_slash_copies_contents_and_no_slash_copies_the_directory() {
    let t = tmp();
    let src = t.path().join("src");
    sample(&src);
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &s(&t.path().join("d1")),
    ]));
    assert_same_tree(&src, &t.path().join("d1"), true);
    ok(ferry(["sync", "-a", &s(&src), &s(&t.path().join("d2"))]));
    assert_same_tree(&src, &t.path().join("d2/src"), true);
}

#[test]
fn single_file_to_a_new_name_and_into_a_directory() {
    let t = tmp();
    let f = t.path().join("model.bin");
    write(&f, random_bytes(70_000, 2));
    ok(ferry([
        "sync",
        "-t",
        &s(&f),
        &s(&t.path().join("copy.bin")),
    ]));
    assert_eq!(
        std::fs::read(t.path().join("copy.bin")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    std::fs::create_dir(t.path().join("dir")).unwrap();
    ok(ferry(["sync", &s(&f), &s(&t.path().join("dir"))]));
    assert_eq!(
        std::fs::read(t.path().join("dir/model.bin")).unwrap(),
        std::fs::read(&f).unwrap()
    );
}

#[test]
fn cp_follows_scp_naming() {
    let t = tmp();
    let src = t.path().join("ckpt");
    sample(&src);
    // destination missing: it becomes the copy
    ok(ferry(["cp", "-rp", &s(&src), &s(&t.path().join("new"))]));
    assert_eq!(
        std::fs::read(t.path().join("new/sub/b.bin")).unwrap(),
        random_bytes(300_000, 1)
    );
    // destination exists: the copy goes inside
    std::fs::create_dir(t.path().join("exists")).unwrap();
    ok(ferry(["cp", "-rp", &s(&src), &s(&t.path().join("exists"))]));
    assert!(t.path().join("exists/ckpt/sub/deep/c").exists());
    // scp follows symlinks: the link arrives as a regular file
    let m = std::fs::symlink_metadata(t.path().join("new/link")).unwrap();
    assert!(m.is_file());
    // -p keeps modes and times
    let m = std::fs::metadata(t.path().join("new/a.txt")).unwrap();
    assert_eq!((m.mode() & 0o777, m.mtime()), (0o640, 1_600_000_000));
}

#[test]
fn cp_without_r_refuses_directories() {
    let t = tmp();
    let src = t.path().join("d");
    sample(&src);
    let o = ferry(["cp", &s(&src), &s(&t.path().join("x"))]);
    assert!(stderr(&o).contains("skipping directory"), "{}", stderr(&o));
    assert!(!t.path().join("x").exists());
}

#[test]
fn delete_removes_extraneous_files_and_dry_run_changes_nothing() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    write(&dst.join("stale.txt"), "old");
    write(&dst.join("olddir/x"), "old");
    std::fs::remove_file(src.join("sub/deep/c")).unwrap();

    let o = ok(ferry([
        "sync",
        "-an",
        "--delete",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    let out = stdout(&o);
    assert!(out.contains("deleting stale.txt"), "{out}");
    assert!(out.contains("deleting olddir/"), "{out}");
    assert!(out.contains("deleting sub/deep/c"), "{out}");
    assert!(
        dst.join("stale.txt").exists() && dst.join("sub/deep/c").exists(),
        "dry run deleted"
    );

    ok(ferry([
        "sync",
        "-a",
        "--delete",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_same_tree(&src, &dst, false);
}

#[test]
fn delete_is_skipped_when_the_sender_has_io_errors() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    write(&dst.join("keep-me"), "precious");
    let o = ferry([
        "sync",
        "-a",
        "--delete",
        &format!("{}/", src.display()),
        &s(&t.path().join("no-such-source")),
        &s(&dst),
    ]);
    assert_eq!(o.status.code(), Some(23), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("no-such-source"), "{err}");
    assert!(err.contains("skipping deletion"), "{err}");
    assert!(dst.join("keep-me").exists());
    assert!(dst.join("sub/b.bin").exists());
}

#[test]
fn update_skips_files_newer_on_the_receiver() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("f"), "source");
    set_mtime(&src.join("f"), 1_600_000_000);
    write(&dst.join("f"), "newer receiver copy");
    set_mtime(&dst.join("f"), 1_700_000_000);
    ok(ferry([
        "sync",
        "-au",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(
        std::fs::read_to_string(dst.join("f")).unwrap(),
        "newer receiver copy"
    );
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "source");
}

#[test]
fn checksum_finds_changes_that_size_and_mtime_hide() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("f"), "AAAA");
    write(&dst.join("f"), "BBBB");
    set_mtime(&src.join("f"), 1_600_000_000);
    set_mtime(&dst.join("f"), 1_600_000_000);
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(
        std::fs::read_to_string(dst.join("f")).unwrap(),
        "BBBB",
        "quick check skips"
    );
    ok(ferry([
        "sync",
        "-ac",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "AAAA");
}

#[test]
fn excludes_and_includes_first_match_wins() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("keep.tmp"), "k");
    write(&src.join("drop.tmp"), "d");
    write(&src.join("cache/big"), "c");
    write(&src.join("data/x.jsonl"), "x");
    ok(ferry([
        "sync",
        "-a",
        "--include",
        "keep.tmp",
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache/",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert!(dst.join("keep.tmp").exists());
    assert!(!dst.join("drop.tmp").exists());
    assert!(!dst.join("cache").exists());
    assert!(dst.join("data/x.jsonl").exists());
    // excluded files on the receiver are protected from --delete
    write(&dst.join("local.tmp"), "mine");
    ok(ferry([
        "sync",
        "-a",
        "--delete",
        "--exclude",
        "*.tmp",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert!(dst.join("local.tmp").exists());
}

#[test]
fn backup_keeps_the_replaced_file() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("f"), "new");
    write(&dst.join("f"), "old");
    set_mtime(&dst.join("f"), 1_500_000_000);
    ok(ferry([
        "sync",
        "-a",
        "--backup",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "new");
    assert_eq!(std::fs::read_to_string(dst.join("f~")).unwrap(), "old");
}

#[test]
fn hard_links_are_kept_with_h() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("a"), random_bytes(100_000, 9));
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    ok(ferry([
        "sync",
        "-aH",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    let (ma, mb) = (
        std::fs::metadata(dst.join("a")).unwrap(),
        std::fs::metadata(dst.join("b")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(
        std::fs::read(dst.join("b")).unwrap(),
        random_bytes(100_000, 9)
    );
}

#[test]
fn sparse_files_stay_sparse_with_s() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    drop(f);
    ok(ferry([
        "sync",
        "-aS",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    let m = std::fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    assert_eq!(
        std::fs::read(dst.join("sparse")).unwrap(),
        std::fs::read(src.join("sparse")).unwrap()
    );
}

/// `-S` on files without holes (most files): each arrives whole. Before,
/// asking the file for its first hole left its read position at the end,
/// and every such file failed as "changed while being sent".
#[test]
fn files_without_holes_arrive_whole_with_s() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("dense.bin"), random_bytes(3 << 20, 8));
    write(&src.join("small.txt"), "no holes here\n");
    ok(ferry([
        "sync",
        "-aS",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_same_tree(&src, &dst, false);
}

#[test]
fn hostile_names_are_copied_exactly_and_printed_escaped() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let names: [&[u8]; 4] = [
        b"new\nline",
        b"\x1b[31mred\x1b[0m",
        b"bad\xffutf8",
        b"sp ace;$(touch pwned)",
    ];
    for n in names {
        write(&src.join(std::ffi::OsStr::from_bytes(n)), n);
    }
    let o = ok(ferry([
        "sync",
        "-av",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    for n in names {
        assert_eq!(
            std::fs::read(dst.join(std::ffi::OsStr::from_bytes(n))).unwrap(),
            n
        );
    }
    let out = o.stdout;
    assert!(!out.contains(&0x1b), "raw escape byte reached the terminal");
    let out = String::from_utf8(out).expect("output is valid UTF-8");
    assert!(out.contains("new\\x0aline"), "{out}");
    assert!(out.contains("\\x1b[31mred"), "{out}");
    assert!(out.contains("bad\\xffutf8"), "{out}");
    assert!(!t.path().join("pwned").exists());
}

#[test]
fn unchanged_tree_transfers_nothing() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    ok(ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    let o = ok(ferry([
        "sync",
        "-a",
        "--stats",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    let (literal, matched, _, _) = stats(&stdout(&o));
    assert_eq!((literal, matched), (0, 0));
    assert!(stdout(&o).contains("Number of files transferred: 0"));
}

#[test]
fn without_v_the_receiver_sends_back_no_message_per_file_and_with_v_lists_each() {
    // the receiver's side of a copy of many small files: its requests, but
    // not three events per file that nobody prints (before: 106 bytes back
    // per file, now 8)
    let t = tmp();
    let src = t.path().join("src");
    for i in 0..2000 {
        write(
            &src.join(format!("d{}/file-with-a-longish-name-{i:05}", i / 500)),
            b"x",
        );
    }
    let copy = |dst: &str, verbose: bool| {
        let mut args = vec!["sync", "-a", "--stats"];
        if verbose {
            args.push("-v");
        }
        let (from, to) = (
            format!("{}/", src.display()),
            format!("{}/", t.path().join(dst).display()),
        );
        args.extend([from.as_str(), to.as_str()]);
        ok(ferry(&args))
    };
    let quiet = copy("quiet", false);
    let (_, _, _, received) = stats(&stdout(&quiet));
    assert!(
        received < 2000 * 30,
        "{received} bytes came back for 2000 files"
    );
    assert!(!stdout(&quiet).contains("file-with-a-longish-name"));
    let listed = copy("listed", true);
    let names = stdout(&listed)
        .lines()
        .filter(|l| l.contains("file-with-a-longish-name-"))
        .count();
    assert_eq!(names, 2000, "-v lists every file");
    assert_same_tree(&src, &t.path().join("quiet"), false);
}

#[test]
fn a_file_replaces_a_directory_and_back() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("x"), "now a file");
    write(&dst.join("x/inner"), "was a dir");
    let o = ferry([
        "sync",
        "-a",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]);
    assert_eq!(o.status.code(), Some(23));
    assert!(stderr(&o).contains("non-empty directory"), "{}", stderr(&o));
    ok(ferry([
        "sync",
        "-a",
        "--delete",
        &format!("{}/", src.display()),
        &format!("{}/", dst.display()),
    ]));
    assert_eq!(
        std::fs::read_to_string(dst.join("x")).unwrap(),
        "now a file"
    );
}

#[test]
fn usage_errors_exit_1_with_one_clear_line() {
    let o = ferry(["sync", "--frobnicate", "a", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--frobnicate"));
    let o = ferry(["sync", "--delete", "a", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--delete does not work without -r"),
        "{}",
        stderr(&o)
    );
    let o = ferry(["sync", "--bwlimit", "fast", "a", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--bwlimit"), "{}", stderr(&o));
    let o = ferry(["sync", "a", "s3://bucket/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("s3://"), "{}", stderr(&o));
    let o = ferry(["sync", "--host-key-check", "sometimes", "a", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--host-key-check"), "{}", stderr(&o));
    let o = ferry(["sync", "-b", "--suffix", "a/b", "a", "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--suffix"), "{}", stderr(&o));
}

#[test]
fn missing_source_is_named_and_exits_23() {
    let t = tmp();
    let o = ferry(["sync", &s(&t.path().join("nope")), &s(&t.path().join("d"))]);
    assert_eq!(o.status.code(), Some(23));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

#[test]
fn destination_parent_missing_is_a_clear_error() {
    let t = tmp();
    write(&t.path().join("f"), "x");
    write(&t.path().join("g"), "y");
    let o = ferry([
        "sync",
        &s(&t.path().join("f")),
        &s(&t.path().join("g")),
        &s(&t.path().join("no/such/dir")),
    ]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/dir"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn demo_runs_and_verifies() {
    let t = tmp();
    let o = ok(ferry(["demo", "--dir", &s(t.path())]));
    let out = stdout(&o);
    assert!(out.contains("verified: replica identical"), "{out}");
    assert!(out.contains("reused"), "{out}");
}
