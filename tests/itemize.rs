//! rsync's output flags on `sync` (issue 24): `--out-format`'s escapes,
//! `--log-file`'s appended lines (made 0600), `--info=progress2` and
//! `--info=stats2`, and `-i` on `cp` (long form only) and `sync` (with the
//! daemon identity moved to `--identity`). The itemized codes themselves are
//! compared with rsync's in `tests/oracle.rs`.

mod util;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use util::*;

fn tree(src: &Path) {
    write(&src.join("a.txt"), "alpha\n");
    write(&src.join("d/b.bin"), random_bytes(50_000, 1));
    std::os::unix::fs::symlink("a.txt", src.join("l")).unwrap();
    set_mtime(&src.join("a.txt"), 1_600_000_000);
    set_mtime(&src.join("d/b.bin"), 1_600_000_100);
}

fn sync(args: &[&str], src: &Path, dst: &Path) -> std::process::Output {
    let mut v: Vec<String> = vec!["sync".into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v.extend([format!("{}/", src.display()), format!("{}/", dst.display())]);
    ferry(&v)
}

#[test]
fn out_format_escapes() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let o = ok(sync(
        &["-a", "--out-format=%o|%n|%f|%l|%b|%M|%i|%L"],
        &src,
        &dst,
    ));
    let out = stdout(&o);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert!(
        lines.contains(&"recv|a.txt|a.txt|6|6|2020/09/13-12:26:40|>f+++++++++|"),
        "{out}"
    );
    assert!(
        lines.contains(&"recv|d/b.bin|d/b.bin|50000|50000|2020/09/13-12:28:20|>f+++++++++|"),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("recv|d/|d|0|0|")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("recv|l|l|") && l.ends_with("|cL+++++++++| -> a.txt")),
        "{out}"
    );
    // a format without %i shows transfers only: a mode change alone is silent
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = ok(sync(&["-a", "--out-format=%n"], &src, &dst));
    assert_eq!(stdout(&o), "", "attributes alone are not a transfer");
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = ok(sync(&["-a", "--out-format=[%i] %n"], &src, &dst));
    assert_eq!(stdout(&o), "[.f...p.....] a.txt\n");
    // an unknown escape is refused before anything is written
    let other = t.path().join("other");
    let o = sync(&["-a", "--out-format=%q"], &src, &other);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("%q"), "{}", stderr(&o));
    assert!(!other.exists());
}

#[test]
fn log_file_is_appended_in_rsyncs_layout() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let log = t.path().join("ferry.log");
    let flag = format!("--log-file={}", log.display());
    let o = ok(sync(&["-a", &flag], &src, &dst));
    assert_eq!(stdout(&o), "", "the log is not printed");
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    write(&src.join("a.txt"), "alpha, again\n");
    ok(sync(&["-a", "--delete", &flag], &src, &dst));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // 2026/12/05 01:02:03 [1234] >f+++++++++ a.txt
    let body = |l: &str| -> String {
        let (date, rest) = l.split_at(19);
        assert!(
            date.as_bytes()[4] == b'/'
                && date.as_bytes()[10] == b' '
                && date.as_bytes()[13] == b':',
            "{l}"
        );
        let rest = rest.strip_prefix(" [").unwrap_or_else(|| panic!("{l}"));
        let (pid, text) = rest.split_once("] ").unwrap_or_else(|| panic!("{l}"));
        assert!(pid.parse::<u32>().is_ok(), "{l}");
        text.to_string()
    };
    let bodies: Vec<String> = lines.iter().map(|l| body(l)).collect();
    assert!(bodies.contains(&">f+++++++++ a.txt".to_string()), "{text}");
    assert!(
        bodies.contains(&">f+++++++++ d/b.bin".to_string()),
        "{text}"
    );
    assert!(
        bodies.contains(&"cL+++++++++ l -> a.txt".to_string()),
        "{text}"
    );
    assert!(
        bodies.contains(&">f.st...... a.txt".to_string()),
        "appended: {text}"
    );
    let totals = bodies.iter().filter(|b| b.starts_with("sent ")).count();
    assert_eq!(totals, 2, "a totals line per run: {text}");
    assert!(
        bodies.last().unwrap().contains("total size 50013"),
        "{text}"
    );
}

#[test]
fn info_progress2_and_stats2() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    let o = ok(sync(&["-a", "--info=progress2,stats2"], &src, &dst));
    let out = stdout(&o);
    // one progress line rewritten in place, ending at 100%; the created
    // count includes the destination directory this run makes, as rsync's
    // does (rsync -a --info=stats2 on this tree: 5, reg 2, dir 2, link 1)
    let progress: Vec<&str> = out.lines().filter(|l| l.contains('%')).collect();
    assert_eq!(progress.len(), 1, "{out:?}");
    let last = progress[0].rsplit('\r').next().unwrap();
    assert!(last.contains("50006 100%"), "{out:?}");
    assert!(
        out.contains("Number of created files: 5 (reg: 2, dir: 2, link: 1)"),
        "{out}"
    );
    assert!(
        out.contains("Number of regular files transferred: 2"),
        "{out}"
    );
    assert!(
        out.contains("Total transferred file size: 50006 bytes"),
        "{out}"
    );
    assert!(out.contains("Literal data: 50006 bytes"), "{out}");
}

#[test]
fn cp_itemizes_with_the_long_flag_and_keeps_scps_i() {
    let t = tmp();
    let src = t.path().join("w.bin");
    write(&src, random_bytes(1000, 2));
    let dst = t.path().join("copy.bin");
    let o = ok(ferry([
        "cp".as_ref(),
        "--itemize-changes".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]));
    // (named as the sender lists it, as rsync -i names it)
    assert_eq!(stdout(&o), ">f+++++++++ w.bin\n");
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    // cp -i takes a file, as scp's does
    let o = ferry(["cp", "-i"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `cp -r src new` makes `new` the copy of `src`: its items are named where
/// they land under `new`, as rsync names `src/ new/`'s (rsync the oracle);
/// into an existing directory they keep `src/` in front, as there.
#[test]
fn cp_r_to_a_new_name_itemizes_names_under_the_destination() {
    let t = tmp();
    let src = t.path().join("src");
    tree(&src);
    let lines = |o: &std::process::Output| {
        let mut v: Vec<String> = stdout(o).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let new = t.path().join("new");
    let o = ok(ferry([
        "cp".as_ref(),
        "-r".as_ref(),
        "--itemize-changes".as_ref(),
        src.as_os_str(),
        new.as_os_str(),
    ]));
    let theirs = std::process::Command::new("rsync")
        .args(["-rL", "-i"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", t.path().join("by-rsync").display()))
        .output()
        .expect("rsync");
    // (rsync also says "created directory …")
    let theirs: Vec<String> = lines(&theirs)
        .into_iter()
        .filter(|l| !l.starts_with("created directory"))
        .collect();
    assert_eq!(lines(&o), theirs);
    assert!(
        lines(&o).contains(&">f+++++++++ d/b.bin".to_string()),
        "{:?}",
        lines(&o)
    );
    assert_eq!(std::fs::read(new.join("a.txt")).unwrap(), b"alpha\n");
    // `new` exists now: src goes into it, under its own name
    let o = ok(ferry([
        "cp".as_ref(),
        "-r".as_ref(),
        "--itemize-changes".as_ref(),
        src.as_os_str(),
        new.as_os_str(),
    ]));
    assert!(
        lines(&o).contains(&">f+++++++++ src/d/b.bin".to_string()),
        "{:?}",
        lines(&o)
    );
    assert!(new.join("src/d/b.bin").exists());
}

#[test]
fn sync_i_itemizes_and_identity_is_long() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    tree(&src);
    std::fs::create_dir_all(&dst).unwrap();
    let key = t.path().join("key");
    let o = ok(sync(
        &["-ai", "--identity", key.to_str().unwrap()],
        &src,
        &dst,
    ));
    assert!(stdout(&o).contains(">f+++++++++ a.txt\n"), "{}", stdout(&o));
    let help = stdout(&ok(ferry(["sync", "--help"])));
    assert!(help.contains("-i, --itemize-changes"), "{help}");
    assert!(help.contains("    --identity <FILE>"), "{help}");
    // ls keeps -i FILE
    let help = stdout(&ok(ferry(["ls", "--help"])));
    assert!(help.contains("-i, --identity <FILE>"), "{help}");
}
