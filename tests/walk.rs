//! What a new user hit walking the README (the s17 walk report), pinned
//! against the built binary the way the report ran it: a closed stdout, `cp`
//! of a directory without `-r`, flags between paths, the flags the README
//! names, help text and key messages. The API's items are in tests/api.rs.

mod util;
use std::process::{Command, Output, Stdio};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Runs ferry with its stdout a pipe nobody reads any more (`| head -1`
/// after its first line: here before the first).
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Walk item 2: `ferry ls DIR | head -1` panicked ("failed printing to
/// stdout: Broken pipe", exit 101); a closed stdout now ends a listing
/// quietly with status 0, as ripgrep does.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let t = tmp();
    for i in 0..300 {
        write(&t.path().join(format!("d/f{i}")), "x");
    }
    let d = s(&t.path().join("d"));
    for args in [
        vec!["ls", d.as_str()],
        vec!["ls", "--json", d.as_str()],
        vec!["doctor", "--json", "127.0.0.1:1"],
    ] {
        let o = with_closed_stdout(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
    // a transfer whose reader went away still finishes, as rsync -v | head
    let o = with_closed_stdout(&["sync", "-av", &format!("{d}/"), &s(&t.path().join("e"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(t.path().join("e/f299").is_file());
}

/// Walk item 1: `ferry sync -a -i KEY SRC DEST` copied the private key as a
/// source (on sync, -i is itemize). A private key right after -i is refused
/// with exit 1 and nothing is copied; --identity is what to write.
#[test]
fn sync_refuses_a_private_key_right_after_i() {
    let t = tmp();
    let key = t.path().join("other");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    write(&t.path().join("run/a"), "a");
    let dst = t.path().join("dst");
    for flags in [vec!["-a", "-i"], vec!["-ai"], vec!["-a", "-vi"]] {
        let mut args = vec!["sync"];
        args.extend(&flags);
        let (k, r, d) = (s(&key), format!("{}/", s(&t.path().join("run"))), s(&dst));
        args.extend([k.as_str(), r.as_str(), d.as_str()]);
        let o = ferry(&args);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("is a private key") && e.contains("--identity"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!dst.exists(), "{flags:?}");
    }
    // the public half is an ordinary file: -i itemizes its copy
    let o = ok(ferry([
        "sync",
        "-a",
        "-i",
        &format!("{}.pub", s(&key)),
        &format!("{}/", s(&dst)),
    ]));
    assert!(
        stdout(&o).contains(">f+++++++++ other.pub"),
        "{}",
        stdout(&o)
    );
    // -i elsewhere on the line copies the key on purpose
    ok(ferry([
        "sync",
        "-a",
        &s(&key),
        "-i",
        &format!("{}/", s(&dst)),
    ]));
    assert!(dst.join("other").is_file());
}

/// Walk item 7: `ferry cp ./ckpt ./dst` (a directory, no -r) said "skipping
/// directory" and exited 0; scp says "not a regular file" and exits 1.
/// `sync` keeps rsync's notice and exit 0.
#[test]
fn cp_of_a_directory_without_r_exits_1_and_sync_keeps_rsyncs_0() {
    let t = tmp();
    write(&t.path().join("ckpt/a"), "a");
    write(&t.path().join("f"), "f");
    let o = ferry([
        "cp",
        &s(&t.path().join("f")),
        &s(&t.path().join("ckpt")),
        &s(&t.path().join("x")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(!t.path().join("x").exists());
    let o = ferry(["sync", &s(&t.path().join("ckpt")), &s(&t.path().join("y"))]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipping directory"), "{}", stderr(&o));
    let rsync_code = Command::new("rsync")
        .arg(t.path().join("ckpt"))
        .arg(t.path().join("z"))
        .output()
        .unwrap()
        .status
        .code();
    assert_eq!(
        rsync_code,
        Some(0),
        "rsync's own exit for a skipped directory"
    );
    // over ssh the remote lists the directory: the same error and exit 1
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let mut args = vec!["cp".to_string()];
    args.extend(sshd.args());
    args.extend([sshd.remote(&t.path().join("ckpt")), s(&t.path().join("w"))]);
    let o = ferry(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(!t.path().join("w").exists());
}

/// Walk item 18: three missing sources printed three errors and then
/// "1 error(s)"; the count is now the errors printed.
#[test]
fn the_error_count_counts_every_missing_source() {
    let t = tmp();
    write(&t.path().join("x4/keep"), "k");
    let p = |n: &str| s(&t.path().join(n));
    let o = ferry([
        "sync",
        "-a",
        &p("x1"),
        &p("x2"),
        &p("x3"),
        &format!("{}/", p("x4")),
    ]);
    assert_eq!(o.status.code(), Some(23), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.matches("cannot read source").count(), 3, "{e}");
    assert!(e.contains("3 error(s)"), "{e}");
}

/// Walk item 8: `ferry sync ./run/ -a ./t2/` was refused ("2 values
/// required by '<SRC... DEST> <SRC... DEST>...'"); flags may stand between
/// the paths, as in rsync, and the usage reads SRC... DEST.
#[test]
fn flags_may_come_between_the_paths_and_the_usage_reads_src_dest() {
    let t = tmp();
    write(&t.path().join("run/a"), "a");
    write(&t.path().join("run2/b"), "b");
    let run = format!("{}/", s(&t.path().join("run")));
    let run2 = format!("{}/", s(&t.path().join("run2")));
    ok(ferry(["sync", &run, "-a", &s(&t.path().join("t2"))]));
    assert!(t.path().join("t2/a").is_file());
    ok(ferry([
        "sync",
        &run,
        "-a",
        &run2,
        "-v",
        &s(&t.path().join("t3")),
    ]));
    assert!(t.path().join("t3/a").is_file() && t.path().join("t3/b").is_file());
    ok(ferry([
        "cp",
        &s(&t.path().join("run/a")),
        "-p",
        &s(&t.path().join("t4")),
    ]));
    assert!(t.path().join("t4").is_file());
    for cmd in ["sync", "cp"] {
        let help = stdout(&ok(ferry([cmd, "--help"])));
        assert!(
            help.contains(&format!("Usage: ferry {cmd} [OPTIONS] SRC... DEST")),
            "{help}"
        );
        assert!(!help.contains("<SRC... DEST>"), "{help}");
        let o = ferry([cmd, "onlyone"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("<DEST>"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("<SRC... DEST>"), "{}", stderr(&o));
    }
}

/// Walk item 14: `-d/--dirs` was refused though `--files-from` "implies -R
/// and -d"; it copies a directory's files and its subdirectories, empty, as
/// rsync -d does (rsync is the oracle).
#[test]
fn dirs_copies_one_level_as_rsync_d() {
    let t = tmp();
    let src = t.path().join("src");
    write(&src.join("a"), "a");
    write(&src.join("sub/b"), "b");
    write(&src.join("sub/deep/c"), "c");
    let srcs = format!("{}/", s(&src));
    for flag in ["-d", "--dirs"] {
        let (mine, theirs) = (
            t.path().join(format!("f{flag}")),
            t.path().join(format!("r{flag}")),
        );
        ok(ferry([
            "sync",
            flag,
            "-t",
            &srcs,
            &format!("{}/", s(&mine)),
        ]));
        rsync([flag, "-t", &srcs, &format!("{}/", s(&theirs))]);
        assert!(mine.join("a").is_file() && mine.join("sub").is_dir());
        assert!(!mine.join("sub/b").exists());
        assert_same_tree(&theirs, &mine, false);
    }
}

/// Walk item 14: `--port` on `ls` (as on sync) for a host:: address.
#[test]
fn ls_takes_the_daemons_port() {
    let t = tmp();
    write(&t.path().join("m/file"), "x");
    let d = Daemon::start(&[("ckpt", &t.path().join("m"), false)], "", &[]);
    let port = d.addr.port().to_string();
    let mut args = vec!["ls", "127.0.0.1::", "--port", &port];
    let client = d.client_args();
    args.extend(client.iter().map(String::as_str));
    let o = ok(ferry(&args));
    assert!(stdout(&o).starts_with("ckpt"), "{}", stdout(&o));
    let mut args = vec!["ls", "--port", &port, "127.0.0.1::ckpt/"];
    args.extend(client.iter().map(String::as_str));
    let o = ok(ferry(&args));
    assert!(stdout(&o).contains(" file"), "{}", stdout(&o));
    // and on shell, for a daemon module
    let batch = t.path().join("batch");
    write(&batch, "ls\n");
    let mut args = vec!["shell", "-b", batch.to_str().unwrap(), "--port", &port];
    args.extend(client.iter().map(String::as_str));
    args.push("127.0.0.1::ckpt");
    let o = ok(ferry(&args));
    assert!(stdout(&o).contains("file"), "{}", stdout(&o));
}

/// Walk item 14: `shell` takes `-J`, `-4`/`-6` and `--remote-ferry` as `cp`
/// does; a wrong `--remote-ferry` shows that it was used.
#[test]
fn shell_takes_cps_ssh_flags() {
    for flags in [
        vec!["-J", "jump"],
        vec!["-4"],
        vec!["-6"],
        vec!["--remote-ferry", "/x/ferry"],
    ] {
        let mut args = vec!["shell"];
        args.extend(&flags);
        args.push("--help");
        ok(ferry(&args));
    }
    let help = stdout(&ok(ferry(["shell", "--help"])));
    for f in [
        "-J <DESTINATION>",
        "-4",
        "-6",
        "--remote-ferry",
        "--port <PORT>",
    ] {
        assert!(help.contains(f), "{f}: {help}");
    }
}

/// Walk item 22: help text: `ferry help sync` works, arguments have
/// descriptions, defaults are shown.
#[test]
fn help_describes_arguments_and_defaults() {
    let o = ok(ferry(["help", "sync"]));
    assert!(stdout(&o).contains("Usage: ferry sync"), "{}", stdout(&o));
    for (args, want) in [
        (
            vec!["trust", "remove", "--help"],
            "<FINGERPRINT>  The key's fingerprint",
        ),
        (
            vec!["api-key", "revoke", "--help"],
            "<NAME>  The key's name",
        ),
        (vec!["job", "submit", "--help"], "<SRC>  Where to read"),
        (vec!["job", "show", "--help"], "<ID>  The job's id"),
        (vec!["job", "cancel", "--help"], "<ID>  The job's id"),
        (vec!["job", "watch", "--help"], "<ID>  The job's id"),
        (vec!["serve", "--help"], "(default 256"),
        (vec!["serve", "--help"], "(default 10"),
        (vec!["cp", "--help"], "default: one per core"),
    ] {
        let o = ok(ferry(&args));
        let text = stdout(&o).split_whitespace().collect::<Vec<_>>().join(" ");
        let want = want.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains(&want), "{args:?}: {want}: {}", stdout(&o));
    }
}

/// Walk item 23: `trust add` of a private key named the PEM header; a bad
/// `--options` said "line skipped" though the command was refused.
#[test]
fn trust_add_names_a_private_key_and_a_refused_option() {
    let t = tmp();
    let key = t.path().join("other");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    let cfg = s(&t.path().join("cfg"));
    let o = ferry(["trust", "add", &s(&key), "--config-dir", &cfg]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("is a private key") && e.contains(".pub"), "{e}");
    assert!(!e.contains("-----BEGIN"), "{e}");
    assert!(!t.path().join("cfg/authorized_keys").exists());
    let pubkey = format!("{}.pub", s(&key));
    let o = ferry([
        "trust",
        "add",
        &pubkey,
        "--options",
        "bogus",
        "--config-dir",
        &cfg,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("bogus") && !e.contains("line skipped"), "{e}");
    assert!(!t.path().join("cfg/authorized_keys").exists());
    ok(ferry(["trust", "add", &pubkey, "--config-dir", &cfg]));
}

/// A closed stdout where `api-key create` shows its secret, the one time it
/// is shown: the command fails and the key is revoked again, not left
/// usable by nobody who knows its secret (listings end quietly; this does
/// not).
#[test]
fn api_key_create_with_a_closed_stdout_fails_and_leaves_no_usable_key() {
    let t = tmp();
    let dir = s(&t.path().join("cfg"));
    let o = with_closed_stdout(&[
        "api-key",
        "create",
        "--name",
        "lost",
        "--scope",
        "jobs:read",
        "--config-dir",
        &dir,
    ]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("API key lost not created") && err.lines().count() == 1,
        "{err}"
    );
    let list = stdout(&ok(ferry([
        "api-key",
        "list",
        "--json",
        "--config-dir",
        &dir,
    ])));
    assert!(
        !list.contains("\"lost\"") || list.contains("\"revoked\""),
        "{list}"
    );
}
