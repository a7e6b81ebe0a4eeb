//! SFTP fallback (issue 22) against a real OpenSSH `sshd` the tests start:
//! a remote without ferry on its PATH and an `internal-sftp`-only account
//! both get the tree, modes and mtimes intact; ssh's own failures (unknown
//! host key, unauthorized key) are shown with exactly one connection
//! attempt; hostile names round-trip and nothing runs.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use util::*;

const SUBSYSTEM: &str = "Subsystem sftp internal-sftp\n";
const SFTP_ONLY: &str =
    "Subsystem sftp internal-sftp\nMatch User root\n    ForceCommand internal-sftp\n";

/// What the summary names the remote hash command the test account gets:
/// `openssl dgst -sha256`, the cheapest SHA-256 command, taken where it is
/// (a test that puts [`no_openssl`] first on the PATH gets `sha256sum`).
const HASHED_BY: &str = "openssl dgst -sha256";

/// An `openssl` for the front of the remote's PATH that is not there (exit
/// 127, as the shell says for a missing command): the probe falls back to
/// `sha256sum`.
fn no_openssl(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    write(&bin.join("openssl"), "#!/bin/sh\nexit 127\n");
    chmod(&bin.join("openssl"), 0o755);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A remote shell command that logs each connection attempt to `log`, then
/// runs ssh with `rest`.
fn counting_rsh(dir: &Path, log: &Path, rest: &str) -> String {
    let wrapper = dir.join("ssh-counting");
    write(
        &wrapper,
        format!(
            "#!/bin/sh\necho attempt >> '{}'\nexec ssh \"$@\"\n",
            log.display()
        ),
    );
    chmod(&wrapper, 0o755);
    format!("{} {rest}", wrapper.display())
}

/// The test sshd's options without the ssh program: `ssh` + this = `Sshd::rsh`.
fn ssh_opts(sshd: &Sshd) -> String {
    sshd.rsh().strip_prefix("ssh ").unwrap().to_string()
}

/// Runs ferry with its transport cache in `cache`, and PATH without ferry.
fn ferry_in(cache: &Path, args: &[String]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

fn attempts(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// A tree with modes and whole-second mtimes (SFTP v3 carries seconds).
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deep")).unwrap();
    write(&root.join("a.bin"), random_bytes(3 << 20, 1));
    write(&root.join("sub/b.txt"), "hello\n");
    write(&root.join("sub/deep/empty"), "");
    write(&root.join("sub/exec.sh"), "#!/bin/sh\n");
    chmod(&root.join("sub/exec.sh"), 0o750);
    chmod(&root.join("sub/b.txt"), 0o600);
    for (i, f) in ["a.bin", "sub/b.txt", "sub/deep/empty", "sub/exec.sh"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(f), 1_600_000_000 + i as i64 * 1000);
    }
    for (i, d) in ["sub/deep", "sub", "."].iter().enumerate() {
        set_mtime(&root.join(d), 1_500_000_000 + i as i64 * 1000);
    }
}

/// Up and back over the fallback: `why` is the line's reason, `verified`
/// what the summary says, `attempts` the ssh connections after each run.
fn round_trip(extra: &str, why: &str, verified: &str, attempts_after: [usize; 2]) {
    let sshd = Sshd::start_with(extra);
    let t = tmp();
    let (cache, src) = (t.path().join("cache"), t.path().join("src"));
    tree(&src);
    let log = t.path().join("log");
    let rsh = counting_rsh(t.path(), &log, &ssh_opts(&sshd));
    let up = t.path().join("up");
    let o = ok(ferry_in(
        &cache,
        &[
            "cp".into(),
            "-rp".into(),
            "-e".into(),
            rsh.clone(),
            format!("{}/", s(&src)),
            sshd.remote(&up),
        ],
    ));
    let err = stderr(&o);
    assert!(err.contains(why), "{err}");
    assert!(err.contains("using SFTP (no delta)"), "{err}");
    assert!(err.contains(verified), "{err}");
    assert_same_tree(&src, &up, false);
    // the ferry attempt, then SFTP (and where commands may run, the hash
    // probe and the check)
    assert_eq!(attempts(&log), attempts_after[0]);
    // and back, the decision remembered: one connection
    let down = t.path().join("down");
    let o = ok(ferry_in(
        &cache,
        &[
            "cp".into(),
            "-rp".into(),
            "-e".into(),
            rsh.clone(),
            format!("{}/", sshd.remote(&up)),
            s(&down),
        ],
    ));
    assert!(
        stderr(&o).contains("remembered from an earlier run, for a day"),
        "{}",
        stderr(&o)
    );
    // a download is checked as an upload is
    assert!(stderr(&o).contains(verified), "{}", stderr(&o));
    assert_eq!(attempts(&log), attempts_after[1]);
    assert_same_tree(&src, &down, false);
    // `ferry ls` falls back as a copy does, and remembers it as a copy
    // does: from a fresh cache the ferry attempt and SFTP, then SFTP alone
    let fresh = t.path().join("cache-ls");
    let ls = || {
        ok(ferry_in(
            &fresh,
            &["ls".into(), "-e".into(), rsh.clone(), sshd.remote(&up)],
        ))
    };
    let o = ls();
    assert!(stdout(&o).contains("a.bin"), "{}", stdout(&o));
    assert!(stderr(&o).contains(why), "{}", stderr(&o));
    assert_eq!(attempts(&log), attempts_after[1] + 2);
    let o = ls();
    assert!(stdout(&o).contains("a.bin"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("remembered from an earlier run, for a day"),
        "{}",
        stderr(&o)
    );
    assert_eq!(attempts(&log), attempts_after[1] + 3);
}

#[test]
fn a_remote_without_ferry_gets_the_tree_over_sftp() {
    if !sshd_available() {
        return;
    }
    round_trip(
        SUBSYSTEM,
        "has no ferry (exit 127)",
        &format!("verified: {HASHED_BY} on 127.0.0.1 for 4 file(s)"),
        // back: SFTP and the check (the probe's answer is remembered)
        [4, 6],
    );
}

/// A download is hashed on the remote too: a remote whose `b3sum` lies
/// (right for empty input, so the probe takes it; wrong for every file)
/// fails the download with nothing at any final path; the same download
/// from an honest remote (openssl) arrives and says it was checked.
#[test]
fn a_download_the_remote_hash_disagrees_with_publishes_nothing() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let fake = t.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    write(
        &fake.join("b3sum"),
        "#!/bin/sh\n\
         if [ \"$#\" -eq 0 ]; then echo 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262  -'; exit 0; fi\n\
         shift\n\
         for f in \"$@\"; do echo \"0000000000000000000000000000000000000000000000000000000000000000  $f\"; done\n",
    );
    chmod(&fake.join("b3sum"), 0o755);
    let sshd = Sshd::start_with_env(&format!("PATH={}:/usr/bin:/bin", fake.display()), SUBSYSTEM);
    let src = t.path().join("src");
    tree(&src);
    let get = |cache: &Path, down: &Path| {
        ferry_in(
            cache,
            &[
                "cp".into(),
                "-rp".into(),
                "--transport".into(),
                "sftp".into(),
                "-e".into(),
                sshd.rsh(),
                format!("{}/", sshd.remote(&src)),
                s(down),
            ],
        )
    };
    let down = t.path().join("down");
    let o = get(&t.path().join("cache1"), &down);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match what was read"),
        "{}",
        stderr(&o)
    );
    for f in ["a.bin", "sub/b.txt", "sub/deep/empty", "sub/exec.sh"] {
        assert!(!down.join(f).exists(), "{f} was published");
    }
    // (into a fresh directory: a download resumed from the partial the
    // failed run kept is a_resumed_download_is_checked_…'s case)
    std::fs::remove_file(fake.join("b3sum")).unwrap();
    let down = t.path().join("down2");
    let o = ok(get(&t.path().join("cache2"), &down));
    assert!(
        stderr(&o).contains(&format!("verified: {HASHED_BY} on 127.0.0.1 for 4 file(s)")),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&src, &down, false);
}

#[test]
fn an_sftp_only_account_gets_the_tree_over_sftp() {
    if !sshd_available() {
        return;
    }
    round_trip(
        SFTP_ONLY,
        "allows SFTP connections only",
        "verified: size + SSH MAC only",
        [2, 3],
    );
}

#[test]
fn transport_sftp_syncs_without_trying_ferry_and_skips_what_is_there() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    let (cache, src) = (t.path().join("cache"), t.path().join("src"));
    tree(&src);
    let log = t.path().join("log");
    let rsh = counting_rsh(t.path(), &log, &ssh_opts(&sshd));
    let dst = t.path().join("dst");
    let sync = || {
        ok(ferry_in(
            &cache,
            &[
                "sync".into(),
                "-a".into(),
                "--stats".into(),
                "--transport".into(),
                "sftp".into(),
                "-e".into(),
                rsh.clone(),
                format!("{}/", s(&src)),
                sshd.remote(&dst),
            ],
        ))
    };
    let o = sync();
    assert!(!stderr(&o).contains("no ferry"), "{}", stderr(&o));
    assert_same_tree(&src, &dst, true);
    // SFTP, the hash probe, the check
    assert_eq!(attempts(&log), 3);
    assert!(
        stderr(&o).contains(&format!("verified: {HASHED_BY}")),
        "{}",
        stderr(&o)
    );
    // nothing changed: nothing moves
    let o = sync();
    let (literal, ..) = stats(&stdout(&o));
    assert_eq!(literal, 0, "{}", stdout(&o));
    // one file changed: it alone moves, and no temporary is left beside it
    write(&src.join("sub/b.txt"), "changed\n");
    set_mtime(&src.join("sub/b.txt"), 1_700_000_000);
    set_mtime(&src.join("sub"), 1_501_000_000);
    let o = sync();
    let (literal, ..) = stats(&stdout(&o));
    assert_eq!(literal, 8, "{}", stdout(&o));
    assert_same_tree(&src, &dst, true);
}

fn ssh_failure(rest: impl Fn(&Sshd, &Path) -> String, expect: &str) {
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    write(&t.path().join("f"), "x");
    let log = t.path().join("log");
    let rsh = counting_rsh(t.path(), &log, &rest(&sshd, t.path()));
    for transport in ["auto", "sftp"] {
        std::fs::remove_file(&log).ok();
        let o = ferry_in(
            &t.path().join("cache"),
            &[
                "cp".into(),
                "--transport".into(),
                transport.into(),
                "-e".into(),
                rsh.clone(),
                s(&t.path().join("f")),
                sshd.remote(&t.path().join("g")),
            ],
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{transport}: {err}");
        assert!(err.contains(expect), "{transport}: {err}");
        assert!(err.contains("ferry doctor"), "{transport}: {err}");
        assert!(!err.contains("using SFTP"), "{transport}: {err}");
        assert_eq!(
            attempts(&log),
            1,
            "{transport}: exactly one connection attempt"
        );
        assert!(!t.path().join("g").exists());
    }
}

#[test]
fn an_unknown_host_key_fails_with_sshs_message_and_one_attempt() {
    if !sshd_available() {
        return;
    }
    ssh_failure(
        |sshd, dir| {
            write(&dir.join("empty_known_hosts"), "");
            ssh_opts(sshd).replace(
                &format!(
                    "UserKnownHostsFile={}/known_hosts",
                    sshd.dir.path().display()
                ),
                &format!("UserKnownHostsFile={}/empty_known_hosts", dir.display()),
            )
        },
        "Host key verification failed",
    );
}

#[test]
fn an_unauthorized_key_fails_with_sshs_message_and_one_attempt() {
    if !sshd_available() {
        return;
    }
    ssh_failure(
        |sshd, dir| {
            let key = dir.join("other_key");
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(st.success());
            ssh_opts(sshd).replace(
                &format!("-i {}/id_ed25519", sshd.dir.path().display()),
                &format!("-o IdentitiesOnly=yes -i {}", key.display()),
            )
        },
        "Permission denied",
    );
}

#[test]
fn hostile_names_round_trip_over_sftp_and_nothing_runs() {
    if !sshd_available() {
        return;
    }
    // through each remote hash command: openssl escapes only a newline,
    // sha256sum a backslash and a carriage return too; and each in groups
    // of 64 run by bash (the remote has it) and of 7 run by sh (it has not)
    for ((program, _, hashed_by), bash) in REMOTE_HASHERS
        .into_iter()
        .flat_map(|h| [(h, true), (h, false)])
    {
        let t = tmp();
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        if program != "openssl" {
            no_openssl(&bin);
        }
        if !bash {
            write(&bin.join("bash"), "#!/bin/sh\nexit 127\n");
            chmod(&bin.join("bash"), 0o755);
        }
        let sshd = Sshd::start_with(&format!(
            "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
            bin.display()
        ));
        hostile_names(&sshd, &t, hashed_by);
        // the probe saw bash where it runs, and the groups ran in it: the
        // per-host cache says so on its second line
        let dir = t.path().join("cache/ferry/transport");
        let hash: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".hash"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        let want = if bash {
            format!("{hashed_by}\nbash")
        } else {
            hashed_by.to_string()
        };
        assert_eq!(hash, [want], "bash {bash}");
    }
}

fn hostile_names(sshd: &Sshd, t: &tempfile::TempDir, hashed_by: &str) {
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let canary = t.path().join("canary");
    let names = [
        "new\nline".to_string(),
        "with space".into(),
        "-leading-dash".into(),
        "star*".into(),
        format!("$(touch {})", canary.display()),
        "`touch x`; rm -rf y".into(),
        "ünïcødé ✓".into(),
        "quote'\"".into(),
        "back\\slash\nand\rcr".into(),
    ];
    for (i, n) in names.iter().enumerate() {
        write(&src.join(n), format!("{i}"));
        set_mtime(&src.join(n), 1_600_000_000);
    }
    let cache = t.path().join("cache");
    let up = t.path().join("up");
    for (from, to) in [
        (format!("{}/", s(&src)), sshd.remote(&up)),
        (format!("{}/", sshd.remote(&up)), s(&t.path().join("down"))),
    ] {
        let pushing = to.starts_with("127.0.0.1:");
        let o = ok(ferry_in(
            &cache,
            &[
                "cp".into(),
                "-rp".into(),
                "--transport".into(),
                "sftp".into(),
                "-e".into(),
                sshd.rsh(),
                from,
                to,
            ],
        ));
        // the names also went through the remote hash command
        if pushing {
            let want = format!(
                "verified: {hashed_by} on 127.0.0.1 for {} file(s)",
                names.len()
            );
            assert!(stderr(&o).contains(&want), "{}", stderr(&o));
        }
    }
    let listed = |d: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.len()
    };
    assert_eq!(listed(&up), names.len());
    assert_same_tree(&src, &up, false);
    assert_same_tree(&src, &t.path().join("down"), false);
    assert!(!canary.exists(), "a name ran as a command");
}

/// A `sha256sum` for the front of the remote's PATH that prints a name's
/// newline as it is, as `xxh128sum` and OpenSSL 1.1 do (coreutils' escaped
/// line, unescaped), with [`no_openssl`] so that the probe takes it.
fn raw_newline_sha256sum(bin: &Path) {
    no_openssl(bin);
    write(
        &bin.join("sha256sum"),
        r#"#!/bin/sh
/usr/bin/sha256sum "$@" | sed -e '/^\\/{s/^\\//;s/\\n/\n/g;}'
"#,
    );
    chmod(&bin.join("sha256sum"), 0o755);
}

/// Names crafted against a reader of the hash command's output: under
/// OpenSSL 3's escaping (only a newline is written `\n`) `v\\nw\nx` reads
/// as its neighbour `v\nw\nx`; printed as it is, a name's second line looks
/// like another file's hash line. Every file must pass its check, up and
/// down, and arrive whole: the names never reach the output that is read.
#[test]
fn names_that_look_like_other_hash_lines_neither_pass_nor_fail_another_file() {
    if !sshd_available() {
        return;
    }
    let forged = format!("f\n{}  g", "0".repeat(64));
    let names = [
        "a plain one",
        "v\nw\nx",
        "v\\nw\nx",
        forged.as_str(),
        "-n",
        "zz last",
    ];
    for raw in [false, true] {
        let t = tmp();
        let bin = t.path().join("bin");
        let sshd = if raw {
            raw_newline_sha256sum(&bin);
            Sshd::start_with(&format!(
                "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
                bin.display()
            ))
        } else {
            Sshd::start_with(SUBSYSTEM)
        };
        let hashed_by = if raw { "sha256sum" } else { HASHED_BY };
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (i, n) in names.iter().enumerate() {
            write(&src.join(n), random_bytes(1000 + i, 40 + i as u64));
            set_mtime(&src.join(n), 1_600_000_000);
        }
        let (up, down) = (t.path().join("up"), t.path().join("down"));
        let cache = t.path().join("cache");
        for (from, to) in [
            (format!("{}/", s(&src)), sshd.remote(&up)),
            (format!("{}/", sshd.remote(&up)), s(&down)),
        ] {
            let o = ferry_in(
                &cache,
                &[
                    "cp".into(),
                    "-rp".into(),
                    "--transport".into(),
                    "sftp".into(),
                    "-e".into(),
                    sshd.rsh(),
                    from,
                    to,
                ],
            );
            let err = stderr(&o);
            assert!(o.status.success(), "{hashed_by}: {err}");
            let want = format!(
                "verified: {hashed_by} on 127.0.0.1 for {} file(s)",
                names.len()
            );
            assert!(err.contains(&want), "{err}");
        }
        assert_same_tree(&src, &up, false);
        assert_same_tree(&src, &down, false);
    }
}

/// Runs `ferry cp` slowly in the background until `partial` holds at least
/// `at_least` bytes, then kills it with SIGKILL.
fn kill_mid_copy(cache: &Path, args: &[String], partial: impl Fn() -> Option<u64>, at_least: u64) {
    let mut child = Command::new(ferry_bin())
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while partial().unwrap_or(0) < at_least {
        assert!(std::time::Instant::now() < deadline, "no partial file grew");
        assert!(child.try_wait().unwrap().is_none(), "the copy ended first");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The partial an interrupted upload left beside `target`.
fn remote_part(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap().to_str().unwrap();
    target.with_file_name(format!(".{name}.ferry-part"))
}

fn len_of(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

#[test]
fn a_killed_upload_resumes_sending_only_what_is_missing_and_a_flipped_byte_is_caught() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    let cache = t.path().join("cache");
    let size = 8u64 << 20;
    let data = random_bytes(size as usize, 7);
    let src = t.path().join("big.bin");
    write(&src, &data);
    let dst_dir = t.path().join("dst");
    std::fs::create_dir(&dst_dir).unwrap();
    let dst = dst_dir.join("big.bin");
    let part = remote_part(&dst);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["sync".into(), "--transport".into(), "sftp".into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-e".into(), sshd.rsh(), s(&src), sshd.remote(&dst)]);
        a
    };
    for flip in [false, true] {
        std::fs::remove_file(&dst).ok();
        kill_mid_copy(
            &cache,
            &args(&["--bwlimit", "2M"]),
            || len_of(&part),
            3 << 20,
        );
        assert!(!dst.exists(), "a file cut short was published");
        let kept = len_of(&part).unwrap();
        assert!(kept >= 3 << 20 && kept < size, "{kept}");
        if flip {
            let mut p = std::fs::read(&part).unwrap();
            p[1 << 20] ^= 0x40;
            std::fs::write(&part, p).unwrap();
        }
        let o = ok(ferry_in(&cache, &args(&["--stats"])));
        let (literal, matched, ..) = stats(&stdout(&o));
        assert_eq!(std::fs::read(&dst).unwrap(), data, "flip: {flip}");
        assert!(!part.exists());
        // what the partial held was not sent again (less a chunk or so
        // around the flipped byte)
        assert!(literal < size - (2 << 20), "flip {flip}: {}", stdout(&o));
        assert!(matched >= 2 << 20, "flip {flip}: {}", stdout(&o));
        if flip {
            assert!(literal > size - kept, "the flipped chunk was sent again");
        }
    }
}

#[test]
fn a_killed_download_resumes_and_publishes_only_the_whole_file() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    let cache = t.path().join("cache");
    let size = 8u64 << 20;
    let data = random_bytes(size as usize, 9);
    let remote = t.path().join("remote.bin");
    write(&remote, &data);
    let dst_dir = t.path().join("dst");
    std::fs::create_dir(&dst_dir).unwrap();
    let dst = dst_dir.join("remote.bin");
    let part = dst_dir.join(".ferry-partial/remote.bin");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["sync".into(), "--transport".into(), "sftp".into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-e".into(), sshd.rsh(), sshd.remote(&remote), s(&dst)]);
        a
    };
    kill_mid_copy(
        &cache,
        &args(&["--bwlimit", "2M"]),
        || len_of(&part),
        3 << 20,
    );
    assert!(!dst.exists(), "a file cut short was published");
    let o = ok(ferry_in(&cache, &args(&["--stats"])));
    let (literal, ..) = stats(&stdout(&o));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    assert!(literal < size - (2 << 20), "{}", stdout(&o));
}

/// A download resumed from its kept local partial is checked against the
/// remote's hash of the whole file, as a whole download is: the chunker
/// reads the remote file whole, and its hash is compared before the recipe
/// ends (the rebuilt local file is checked against that read). A byte
/// flipped in the kept partial is sent again and the file counted as
/// verified; a remote hash that disagrees publishes nothing.
#[test]
fn a_resumed_download_is_checked_against_the_remote_hash_of_the_whole_file() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let sshd = Sshd::start_with_env(&format!("PATH={}:/usr/bin:/bin", bin.display()), SUBSYSTEM);
    let size = 8u64 << 20;
    let data = random_bytes(size as usize, 13);
    let remote = t.path().join("remote.bin");
    write(&remote, &data);
    let dst_dir = t.path().join("dst");
    std::fs::create_dir(&dst_dir).unwrap();
    let dst = dst_dir.join("remote.bin");
    let part = dst_dir.join(".ferry-partial/remote.bin");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["sync".into(), "--transport".into(), "sftp".into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-e".into(), sshd.rsh(), sshd.remote(&remote), s(&dst)]);
        a
    };
    let cache = t.path().join("cache");
    let cut_and_flip = || {
        kill_mid_copy(
            &cache,
            &args(&["--bwlimit", "2M"]),
            || len_of(&part),
            3 << 20,
        );
        assert!(!dst.exists(), "a file cut short was published");
        let mut p = std::fs::read(&part).unwrap();
        p[1 << 20] ^= 0x40;
        std::fs::write(&part, p).unwrap();
    };
    cut_and_flip();
    // a b3sum that is right for empty input (the probe takes it) and wrong
    // for every file: the resumed download fails, and nothing is published
    write(
        &bin.join("b3sum"),
        "#!/bin/sh\n\
         if [ \"$#\" -eq 0 ]; then echo 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262  -'; exit 0; fi\n\
         shift\n\
         for f in \"$@\"; do echo \"0000000000000000000000000000000000000000000000000000000000000000  $f\"; done\n",
    );
    chmod(&bin.join("b3sum"), 0o755);
    let o = ferry_in(&t.path().join("cache-lying"), &args(&["--stats"]));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("does not match what was read"), "{err}");
    assert!(
        !dst.exists(),
        "a file the remote hash disagreed with was published"
    );
    std::fs::remove_file(bin.join("b3sum")).unwrap();
    if !part.exists() {
        cut_and_flip();
    }
    let kept = len_of(&part).unwrap();
    // the honest remote: resumed from the partial, the flipped chunk sent
    // again, and the file checked against the remote's hash
    let o = ok(ferry_in(&cache, &args(&["--stats"])));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let said = format!("verified: {HASHED_BY} on 127.0.0.1 for 1 file(s)");
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
    let (literal, matched, ..) = stats(&stdout(&o));
    assert!(matched >= 2 << 20, "{}", stdout(&o));
    assert!(
        literal > size - kept,
        "the flipped chunk was sent again: {}",
        stdout(&o)
    );
    assert!(literal < size - (2 << 20), "{}", stdout(&o));
}

/// The remote hash commands the tests drive: the one taken where it is
/// (openssl) and the one taken where it is not (sha256sum), as (the file
/// on the PATH, the real one, what the summary calls it).
const REMOTE_HASHERS: [(&str, &str, &str); 2] = [
    ("openssl", "/usr/bin/openssl", HASHED_BY),
    ("sha256sum", "/usr/bin/sha256sum", "sha256sum"),
];

/// Puts a `program` in `bin` that runs `real` with its arguments, and
/// first, when it is given files (the names after `--`, but `/dev/null`),
/// `each` for each of them as `$f`; then `real`'s output goes through
/// `filter`. The probe (no `--`) gets the real thing. Where `program` is
/// not openssl, [`no_openssl`] too, so that the probe takes it.
fn wrapped_hasher(bin: &Path, (program, real, _): (&str, &str, &str), each: &str, filter: &str) {
    std::fs::create_dir_all(bin).unwrap();
    if program != "openssl" {
        no_openssl(bin);
    }
    write(
        &bin.join(program),
        format!(
            "#!/bin/sh\n\
             files=\n\
             for f in \"$@\"; do\n\
               if [ -n \"$files\" ] && [ \"$f\" != /dev/null ]; then {each}; fi\n\
               [ \"$f\" = -- ] && files=1\n\
             done\n\
             [ -n \"$files\" ] || exec {real} \"$@\"\n\
             {real} \"$@\" | {filter}\n"
        ),
    );
    chmod(&bin.join(program), 0o755);
}

#[test]
fn a_remote_hash_that_disagrees_fails_the_upload() {
    if !sshd_available() {
        return;
    }
    for hasher in REMOTE_HASHERS {
        let t = tmp();
        // a hash command on the remote's PATH that answers the probe (empty
        // input) truly and every file wrongly
        let bin = t.path().join("bin");
        wrapped_hasher(&bin, hasher, ":", "sed 's/^[0-9a-f]/x/'");
        let sshd = Sshd::start_with(&format!(
            "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
            bin.display()
        ));
        write(&t.path().join("f"), "payload");
        let o = ferry_in(
            &t.path().join("cache"),
            &[
                "cp".into(),
                "--transport".into(),
                "sftp".into(),
                "-e".into(),
                sshd.rsh(),
                s(&t.path().join("f")),
                sshd.remote(&t.path().join("g")),
            ],
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        let said = format!("{} on the remote does not match what was sent", hasher.2);
        assert!(err.contains(&said), "{err}");
        assert!(!t.path().join("g").exists());
    }
}

#[test]
fn small_files_through_a_slow_link_are_many_in_flight() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..100 {
        write(&src.join(format!("f{i:03}")), random_bytes(4096, i));
    }
    let target: std::net::SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    let d = sshd.dir.path().display();
    // 20 ms each way; the relay's port is not in known_hosts
    let opts = |port: u16| {
        format!(
            "-F /dev/null -p {port} -i {d}/id_ed25519 -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        )
    };
    let one_way = std::time::Duration::from_millis(20);
    let relay = delay_relay(target, one_way, 1 << 20, 3).port();
    let started = std::time::Instant::now();
    ok(ferry_in(
        &t.path().join("cache"),
        &[
            "cp".into(),
            "-r".into(),
            "--transport".into(),
            "sftp".into(),
            "-e".into(),
            format!("ssh {}", opts(relay)),
            format!("{}/", s(&src)),
            format!("127.0.0.1:{}", t.path().join("by-ferry").display()),
        ],
    ));
    let ferry = started.elapsed();
    let relay = delay_relay(target, one_way, 1 << 20, 1).port();
    let batch = t.path().join("batch");
    write(
        &batch,
        format!(
            "mkdir {dst}\nput -r {src}/* {dst}/\n",
            dst = t.path().join("by-sftp").display(),
            src = s(&src)
        ),
    );
    let started = std::time::Instant::now();
    let mut sftp = Command::new("sftp");
    sftp.arg("-b").arg(&batch);
    // (sftp's port flag is -P; only the word -p is changed: a temporary
    // directory named ferry-test-p… once became …-P… and lost the key)
    for w in opts(relay).split(' ') {
        sftp.arg(if w == "-p" { "-P" } else { w });
    }
    let o = sftp.arg("127.0.0.1").stdin(Stdio::null()).output().unwrap();
    let oracle = started.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..100 {
        let f = format!("f{i:03}");
        let by_ferry = std::fs::read(t.path().join("by-ferry").join(&f)).unwrap();
        assert_eq!(by_ferry, std::fs::read(src.join(&f)).unwrap());
        assert!(t.path().join("by-sftp").join(&f).exists());
    }
    eprintln!("100 × 4 KiB at 40 ms RTT: ferry over SFTP {ferry:?}, sftp put -r {oracle:?}");
    // sftp waits about four round trips per file; ferry keeps many in flight
    // (and pays three ssh connections of about 11 round trips: SFTP, the
    // hash probe, the remote check). Measured 1.9-2.0x on the 2-core VM, the
    // code before the hash-command probe included: the bound is 1.5x, which
    // a copy waiting on each file in turn (about 1x) still fails
    assert!(ferry * 3 < oracle * 2, "ferry {ferry:?}, sftp {oracle:?}");
}

/// A hash command for the remote's PATH (one of [`REMOTE_HASHERS`]) that,
/// the first time it is given files, flips byte 100 of each (as a disk or
/// another writer might between the upload's last write and its rename),
/// then hashes them truly.
fn corrupting_hasher(bin: &Path, hasher: (&str, &str, &str), marker: &Path) {
    wrapped_hasher(
        bin,
        hasher,
        &format!(
            "if [ -n \"$flipping\" ] || [ ! -e '{m}' ]; then flipping=1; touch '{m}'; \
             printf Z | dd of=\"$f\" bs=1 seek=100 conv=notrunc 2>/dev/null; fi",
            m = marker.display()
        ),
        "cat",
    );
}

#[test]
fn a_byte_flipped_in_the_remote_partial_before_the_rename_is_never_published() {
    if !sshd_available() {
        return;
    }
    for hasher in REMOTE_HASHERS {
        let t = tmp();
        let bin = t.path().join("bin");
        let marker = t.path().join("flipped-once");
        corrupting_hasher(&bin, hasher, &marker);
        let sshd = Sshd::start_with(&format!(
            "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
            bin.display()
        ));
        let size = 2usize << 20;
        let mut data = random_bytes(size, 11);
        data[100] = b'a';
        let src = t.path().join("model.bin");
        write(&src, &data);
        let dst_dir = t.path().join("dst");
        std::fs::create_dir(&dst_dir).unwrap();
        let dst = dst_dir.join("model.bin");
        let args = vec![
            "sync".to_string(),
            "--stats".into(),
            "--transport".into(),
            "sftp".into(),
            "-e".into(),
            sshd.rsh(),
            s(&src),
            sshd.remote(&dst),
        ];
        let cache = t.path().join("cache");
        let o = ferry_in(&cache, &args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        eprintln!("the failed run said:\n{err}");
        assert!(marker.exists(), "the remote hash command never ran");
        let said = format!(
            "{} on the remote does not match what was sent; not published",
            hasher.2
        );
        assert!(err.contains(&said), "{err}");
        assert!(!dst.exists(), "a corrupted file was published");
        // what was written stays as the partial, flipped byte and all
        let part = std::fs::read(remote_part(&dst)).unwrap();
        assert_eq!(part.len(), size);
        assert_eq!(part[100], b'Z');
        // the next run resumes from it, sends again only what differs, and
        // publishes the file the source holds
        let o = ok(ferry_in(&cache, &args));
        let said = format!("verified: {} on 127.0.0.1 for 1 file(s)", hasher.2);
        assert!(stderr(&o).contains(&said), "{}", stderr(&o));
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(!remote_part(&dst).exists());
        let (literal, matched, ..) = stats(&stdout(&o));
        assert!(literal > 0 && literal < 256 << 10, "{}", stdout(&o));
        assert!(matched >= (size as u64) - (256 << 10), "{}", stdout(&o));
    }
}

#[test]
fn verify_reread_checks_both_ways_where_no_command_may_run() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SFTP_ONLY);
    let t = tmp();
    let (cache, src) = (t.path().join("cache"), t.path().join("src"));
    tree(&src);
    let (up, down) = (t.path().join("up"), t.path().join("down"));
    for (from, to) in [
        (format!("{}/", s(&src)), sshd.remote(&up)),
        (format!("{}/", sshd.remote(&up)), s(&down)),
    ] {
        let o = ok(ferry_in(
            &cache,
            &[
                "cp".into(),
                "-rp".into(),
                "--verify".into(),
                "reread".into(),
                "-e".into(),
                sshd.rsh(),
                from,
                to,
            ],
        ));
        let err = stderr(&o);
        assert!(
            err.contains("verified: re-read over SFTP (BLAKE3) for 4 file(s)"),
            "{err}"
        );
    }
    assert_same_tree(&src, &up, false);
    assert_same_tree(&src, &down, false);
    // without it, a download says what it could not check
    let o = ok(ferry_in(
        &cache,
        &[
            "cp".into(),
            "-rp".into(),
            "-e".into(),
            sshd.rsh(),
            format!("{}/", sshd.remote(&up)),
            s(&t.path().join("again")),
        ],
    ));
    assert!(
        stderr(&o).contains("verified: size + SSH MAC only"),
        "{}",
        stderr(&o)
    );
}

/// An sshd whose sftp subsystem is OpenSSH's `sftp-server` logging each
/// session's opens and closes (with the bytes written) to a file of its
/// own under `logs`.
fn logging_sshd(logs: &Path) -> Sshd {
    logging_sshd_at(logs, "INFO")
}

/// [`logging_sshd`] at sftp-server's log `level` (VERBOSE also names each
/// fsync).
fn logging_sshd_at(logs: &Path, level: &str) -> Sshd {
    std::fs::create_dir_all(logs).unwrap();
    let wrapper = logs.join("sftp-server-logging");
    write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/lib/openssh/sftp-server -e -l {level} 2>>'{}/session.'$$\n",
            logs.display()
        ),
    );
    chmod(&wrapper, 0o755);
    Sshd::start_with(&format!("Subsystem sftp {}\n", wrapper.display()))
}

/// The sessions' logs, one string each.
fn session_logs(logs: &Path) -> Vec<String> {
    std::fs::read_dir(logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("session."))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// A tree of one large file (split across the streams) and many small ones
/// (spread over them), with modes and whole-second mtimes.
fn streams_tree(root: &Path, big: usize) -> Vec<u8> {
    let data = random_bytes(big, 21);
    std::fs::create_dir_all(root).unwrap();
    write(&root.join("big.bin"), &data);
    chmod(&root.join("big.bin"), 0o640);
    set_mtime(&root.join("big.bin"), 1_650_000_000);
    for d in 0..4 {
        let dir = root.join(format!("small/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..60 {
            let f = dir.join(format!("f{i:02}"));
            write(&f, random_bytes(1000 + 37 * i, (d * 100 + i) as u64));
            chmod(&f, if i % 3 == 0 { 0o600 } else { 0o644 });
            set_mtime(&f, 1_600_000_000 + (d * 100 + i) as i64);
        }
    }
    data
}

#[test]
fn streams_4_spread_small_files_and_split_a_large_one_over_four_sessions() {
    if !sshd_available() || !Path::new("/usr/lib/openssh/sftp-server").exists() {
        return;
    }
    let t = tmp();
    let logs = t.path().join("logs");
    let sshd = logging_sshd(&logs);
    let src = t.path().join("src");
    streams_tree(&src, 40 << 20);
    let dst = t.path().join("dst");
    let o = ok(ferry_in(
        &t.path().join("cache"),
        &[
            "cp".into(),
            "-rp".into(),
            "--transport".into(),
            "sftp".into(),
            "--streams".into(),
            "4".into(),
            "-e".into(),
            sshd.rsh(),
            format!("{}/", s(&src)),
            sshd.remote(&dst),
        ],
    ));
    assert!(
        stderr(&o).contains(&format!(
            "verified: {HASHED_BY} on 127.0.0.1 for 241 file(s)"
        )),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&src, &dst, false);
    let sessions = session_logs(&logs);
    assert_eq!(sessions.len(), 4, "SFTP sessions: {sessions:#?}");
    // every session wrote part of the large file into its one temporary,
    // and small files were spread over them
    let wrote_big = sessions
        .iter()
        .filter(|l| {
            l.lines().any(|l| {
                l.contains(".big.bin.ferry-part\" bytes read 0 written")
                    && !l.ends_with("written 0")
            })
        })
        .count();
    let big_lines: Vec<&str> = sessions
        .iter()
        .flat_map(|l| l.lines().filter(|l| l.contains("big.bin")))
        .collect();
    assert_eq!(wrote_big, 4, "{big_lines:#?}");
    let with_small = sessions
        .iter()
        .filter(|l| {
            l.lines()
                .any(|l| l.contains("/small/d") && l.contains("close"))
        })
        .count();
    assert!(with_small >= 2, "{sessions:#?}");
    // one fsync and one rename for it, on one session
    let renames = sessions
        .iter()
        .map(|l| {
            l.lines()
                .filter(|l| l.contains("posix-rename") && l.contains(".big.bin.ferry-part"))
                .count()
        })
        .sum::<usize>();
    assert_eq!(renames, 1, "{sessions:#?}");
}

#[test]
fn a_killed_upload_over_streams_resumes() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with(SUBSYSTEM);
    let t = tmp();
    let cache = t.path().join("cache");
    let src = t.path().join("src");
    let size = 40u64 << 20;
    let data = streams_tree(&src, size as usize);
    let dst = t.path().join("dst");
    let part = dst.join(".big.bin.ferry-part");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "sync".into(),
            "-a".into(),
            "--transport".into(),
            "sftp".into(),
            "--streams".into(),
            "4".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend([
            "-e".into(),
            sshd.rsh(),
            format!("{}/", s(&src)),
            sshd.remote(&dst),
        ]);
        a
    };
    // past the point where the file is split across the streams
    kill_mid_copy(
        &cache,
        &args(&["--bwlimit", "8M"]),
        || len_of(&part),
        24 << 20,
    );
    assert!(
        !dst.join("big.bin").exists(),
        "a file cut short was published"
    );
    let o = ok(ferry_in(&cache, &args(&["--stats"])));
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
    assert!(!part.exists());
    assert_same_tree(&src, &dst, false);
    // what the partial verifiably held was not sent again
    let (literal, matched, ..) = stats(&stdout(&o));
    assert!(matched >= 12 << 20, "{}", stdout(&o));
    assert!(literal < size - (12 << 20) + (1 << 20), "{}", stdout(&o));
}

#[test]
fn streams_4_download_reads_a_large_file_through_four_sessions() {
    if !sshd_available() || !Path::new("/usr/lib/openssh/sftp-server").exists() {
        return;
    }
    let t = tmp();
    let logs = t.path().join("logs");
    let sshd = logging_sshd(&logs);
    let src = t.path().join("src");
    let data = streams_tree(&src, 40 << 20);
    let dst = t.path().join("dst");
    let o = ok(ferry_in(
        &t.path().join("cache"),
        &[
            "cp".into(),
            "-rp".into(),
            "--transport".into(),
            "sftp".into(),
            "--streams".into(),
            "4".into(),
            "-e".into(),
            sshd.rsh(),
            format!("{}/", sshd.remote(&src)),
            s(&dst),
        ],
    ));
    assert!(
        stderr(&o).contains(&format!(
            "verified: {HASHED_BY} on 127.0.0.1 for 241 file(s)"
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
    assert_same_tree(&src, &dst, false);
    // one local temporary, renamed once: none is left beside it
    let left: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let sessions = session_logs(&logs);
    assert_eq!(sessions.len(), 4, "SFTP sessions: {sessions:#?}");
    // sessions read parts of the large file, and small files were
    // spread over them
    let read_big = sessions
        .iter()
        .filter(|l| {
            l.lines()
                .any(|l| l.contains("/big.bin\" bytes read") && !l.contains("bytes read 0 written"))
        })
        .count();
    let big_lines: Vec<&str> = sessions
        .iter()
        .flat_map(|l| l.lines().filter(|l| l.contains("big.bin")))
        .collect();
    // the transfer does not wait for logins: a session that logs in after
    // the file's last reads were asked (on a loaded machine 3 of 4 did once)
    // reads none of it; striped means more than one session read it
    assert!(read_big >= 2, "{big_lines:#?}");
    let with_small = sessions
        .iter()
        .filter(|l| {
            l.lines()
                .any(|l| l.contains("/small/d") && l.contains("close"))
        })
        .count();
    assert!(with_small >= 2, "{sessions:#?}");
}

/// ferry reports success only for data on disk. Over SFTP there is no
/// end-of-run sync of the server's filesystem, so every upload is fsynced
/// (`fsync@openssh.com`) before its rename even without `--fsync`: OpenSSH's
/// sftp-server, logging at VERBOSE, names each temporary it fsynced.
#[test]
fn every_upload_is_fsynced_before_its_rename_without_being_asked() {
    if !sshd_available() || !Path::new("/usr/lib/openssh/sftp-server").exists() {
        return;
    }
    let t = tmp();
    let logs = t.path().join("logs");
    let sshd = logging_sshd_at(&logs, "VERBOSE");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let names = ["a.bin", "b.txt", "c.jsonl"];
    for (i, n) in names.iter().enumerate() {
        write(&src.join(n), random_bytes(3000 + 5000 * i, i as u64));
    }
    let dst = t.path().join("dst");
    ok(ferry_in(
        &t.path().join("cache"),
        &[
            "cp".into(),
            "-r".into(),
            "--transport".into(),
            "sftp".into(),
            "-e".into(),
            sshd.rsh(),
            format!("{}/", s(&src)),
            sshd.remote(&dst),
        ],
    ));
    for n in names {
        assert_eq!(
            std::fs::read(dst.join(n)).unwrap(),
            std::fs::read(src.join(n)).unwrap(),
            "{n}"
        );
    }
    let log = session_logs(&logs).join("\n");
    for n in names {
        let fsynced = format!(".{n}.ferry-part\"");
        assert!(
            log.lines()
                .any(|l| l.contains("fsync \"") && l.contains(&fsynced)),
            "no fsync of {n}'s temporary in the server's log:\n{log}"
        );
    }
}

/// s19 review: the remote hash pairs answers with files by their place in
/// a group (of 64 here, where bash runs them), so xargs must never split a group. With an `xargs`
/// first on the remote's PATH whose command line holds only two of these
/// names (`-s`), every file arrives whole and verified, up and down (xargs
/// refuses the group, `-x`, and its files are read again over SFTP).
/// Before, xargs ran each group split and the answers shifted onto the
/// wrong files: files failed their check.
#[test]
fn a_hash_group_xargs_cannot_pass_whole_is_checked_another_way() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let bin = t.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write(
        &bin.join("xargs"),
        "#!/bin/sh\nlen=$(printf '%s ' \"$@\" | wc -c)\n\
         exec /usr/bin/xargs -s $((len + 200)) \"$@\"\n",
    );
    chmod(&bin.join("xargs"), 0o755);
    let sshd = Sshd::start_with(&format!(
        "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
        bin.display()
    ));
    let src = t.path().join("src");
    let n = 16;
    for i in 0..n {
        let name = format!("{}{i:02}", "n".repeat(50));
        write(&src.join(&name), format!("file {i}\n").repeat(i + 1));
        // (SFTP v3 carries whole seconds)
        set_mtime(&src.join(&name), 1_600_000_000);
    }
    let cache = t.path().join("cache");
    let (up, down) = (t.path().join("up"), t.path().join("down"));
    for (from, to, pushing) in [
        (format!("{}/", s(&src)), sshd.remote(&up), true),
        (format!("{}/", sshd.remote(&up)), s(&down), false),
    ] {
        let o = ok(ferry_in(
            &cache,
            &[
                "cp".into(),
                "-rp".into(),
                "--transport".into(),
                "sftp".into(),
                "-e".into(),
                sshd.rsh(),
                from,
                to,
            ],
        ));
        // the summary says which files the command checked and which were
        // read again: together, every file
        let err = stderr(&o);
        let line = err
            .lines()
            .find(|l| l.contains("verified: "))
            .unwrap_or_else(|| panic!("push {pushing}: no verified line: {err}"));
        let prefix = format!("verified: {HASHED_BY} on 127.0.0.1 for ");
        let rest = line
            .split_once(&prefix)
            .unwrap_or_else(|| panic!("push {pushing}: {line}"))
            .1;
        let (hashed, reread): (usize, usize) = match rest
            .split_once(" file(s), re-read over SFTP (the command gave no answer) for ")
        {
            Some((h, r)) => (h.parse().unwrap(), r.trim().parse().unwrap()),
            None => (rest.trim_end_matches(" file(s)").parse().unwrap(), 0),
        };
        // the upload's groups are the ones xargs refuses here (the names of
        // the temporaries are longer): those files were read again
        assert!(!pushing || reread > 0, "push {pushing}: {line}");
        assert_eq!(hashed + reread, n, "push {pushing}: {line}");
    }
    assert_same_tree(&src, &up, false);
    assert_same_tree(&src, &down, false);
}

/// An sshd whose remote `dd` (first on the PATH) logs each call with the
/// length of the file it reads then, and flips byte 100 of the first file
/// whose range 0 it reads (once: `marker` says it did). Returns (sshd,
/// marker, log).
fn sshd_with_flipping_dd(t: &Path) -> (Sshd, PathBuf, PathBuf) {
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let (marker, log) = (t.join("flipped"), t.join("dd.log"));
    write(
        &bin.join("dd"),
        format!(
            "#!/bin/sh\n\
             f=$(readlink /proc/$$/fd/0)\n\
             echo \"$* $(stat -c %s \"$f\")\" >> '{log}'\n\
             if [ \"$2\" = skip=0 ] && [ ! -e '{m}' ]; then touch '{m}'; \
             printf Z | /bin/dd of=\"$f\" bs=1 seek=100 conv=notrunc 2>/dev/null; fi\n\
             exec /bin/dd \"$@\"\n",
            log = log.display(),
            m = marker.display()
        ),
    );
    chmod(&bin.join("dd"), 0o755);
    let sshd = Sshd::start_with(&format!(
        "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
        bin.display()
    ));
    (sshd, marker, log)
}

/// Session 21 (issue 22, the remote hash overlapped): a file larger than
/// one range is hashed on the remote range by range while the later ranges
/// are still uploading (1 MiB ranges here, `FERRY_TEST_SFTP_RANGE_MIB`). A
/// `dd` first on the remote's PATH (the range script's) flips a byte of the
/// first range the first time it is asked for it, and logs how long the
/// partial was then. The file fails with nothing published, the range
/// named; the range was hashed before the upload ended; the re-run resumes
/// from the partial and publishes the source's bytes. Before, a file was
/// hashed whole after its last write: no `dd` ran and the byte was never
/// flipped (the marker was missing).
#[test]
fn a_byte_flipped_in_an_early_range_fails_the_file_and_was_checked_mid_upload() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let (sshd, marker, log) = sshd_with_flipping_dd(t.path());
    let size = 8usize << 20;
    let mut data = random_bytes(size, 21);
    data[100] = b'a';
    let src = t.path().join("ckpt.bin");
    write(&src, &data);
    let dst_dir = t.path().join("dst");
    std::fs::create_dir(&dst_dir).unwrap();
    let dst = dst_dir.join("ckpt.bin");
    let cache = t.path().join("cache");
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["sync".into(), "--stats".into()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend([
            "--transport".into(),
            "sftp".into(),
            "-e".into(),
            sshd.rsh(),
            s(&src),
            sshd.remote(&dst),
        ]);
        Command::new(ferry_bin())
            .args(&args)
            .env("XDG_CACHE_HOME", &cache)
            .env("FERRY_TEST_HOOKS", "1")
            .env("FERRY_TEST_SFTP_RANGE_MIB", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run ferry")
    };
    // (4 s at 2 MB/s: the first range is answered long before the last)
    let o = run(&["--bwlimit", "2M"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(marker.exists(), "the first range was never hashed by range");
    assert!(
        err.contains(&format!(
            "{HASHED_BY} on the remote does not match what was sent; not published (bytes 0 to 1048576)"
        )),
        "{err}"
    );
    assert!(!dst.exists(), "a corrupted file was published");
    let part = std::fs::read(remote_part(&dst)).unwrap();
    assert_eq!(part.len(), size);
    assert_eq!(part[100], b'Z');
    // the first range was hashed while the file was still being written
    let logged = std::fs::read_to_string(&log).unwrap();
    let first = logged
        .lines()
        .find(|l| l.contains("skip=0 "))
        .unwrap_or_else(|| panic!("{logged}"));
    let len_then: usize = first.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(len_then < size, "hashed only after the upload: {logged}");
    // every range was asked for, each once, in MiB
    for k in 0..8 {
        let n = logged
            .lines()
            .filter(|l| l.starts_with(&format!("bs=1048576 skip={k} count=1 ")))
            .count();
        assert_eq!(n, 1, "range {k}: {logged}");
    }
    // the re-run resumes from the partial, sends the flipped chunk again,
    // checks every range and publishes the source's bytes
    let o = ok(run(&[]));
    let said = format!("verified: {HASHED_BY} on 127.0.0.1 for 1 file(s)");
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    assert!(!remote_part(&dst).exists());
    let (literal, ..) = stats(&stdout(&o));
    assert!(literal > 0 && literal < 256 << 10, "{}", stdout(&o));
}

/// `--remove-source-files` over SFTP removes no source whose upload failed
/// its check: a file's check may end after later files were published
/// (many are in flight), and its failure must still keep its source. Here
/// the first file's first range is corrupted on the remote while 40 small
/// files follow it; before, the failure was charged to a later entry and
/// the corrupted file's source was removed with only a partial file left.
#[test]
fn remove_source_files_keeps_a_source_whose_upload_failed_its_check() {
    if !sshd_available() {
        return;
    }
    let t = tmp();
    let (sshd, marker, _) = sshd_with_flipping_dd(t.path());
    let src = t.path().join("ckpts");
    let big = random_bytes(4 << 20, 22);
    write(&src.join("a.bin"), &big);
    for i in 0..40 {
        write(&src.join(format!("b{i:02}.txt")), format!("small {i}\n"));
    }
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = Command::new(ferry_bin())
        .args(["sync", "-a", "--remove-source-files", "--transport", "sftp"])
        .args(["-e", &sshd.rsh()])
        .arg(format!("{}/", s(&src)))
        .arg(format!("{}/", sshd.remote(&dst)))
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .env("FERRY_TEST_HOOKS", "1")
        .env("FERRY_TEST_SFTP_RANGE_MIB", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry");
    let err = stderr(&o);
    assert!(marker.exists(), "the first range was never hashed by range");
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("a.bin"), "the failed file is not named: {err}");
    assert!(
        !dst.join("a.bin").exists(),
        "a corrupted file was published"
    );
    assert!(
        std::fs::read(src.join("a.bin")).ok() == Some(big),
        "the source of a file that was not published was removed: {err}"
    );
}

/// An sshd whose remote `sync` (first on the PATH, beside a link to the
/// real `dd`: the flush runs only a `sync` in `dd`'s directory) logs each
/// call: its arguments, the file its descriptor 3 is and that file's length
/// then (by the descriptor: the file may be renamed meanwhile). It then runs the real `sync`, or, where `fails`, prints lines that
/// look like a range's answer and exits 255 (which would stop xargs).
/// Returns (sshd, log).
fn sshd_with_logging_sync(t: &Path, fails: bool) -> (Sshd, PathBuf) {
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = t.join("sync.log");
    let then = if fails {
        format!("echo =0; echo '{}  -'; exit 255", "0".repeat(64))
    } else {
        "exec /bin/sync \"$@\"".to_string()
    };
    write(
        &bin.join("sync"),
        format!(
            "#!/bin/sh\n\
             f=$(readlink /proc/$$/fd/3)\n\
             echo \"$* $f $(stat -L -c %s /proc/$$/fd/3)\" >> '{log}'\n\
             {then}\n",
            log = log.display(),
        ),
    );
    chmod(&bin.join("sync"), 0o755);
    let dd = ["/usr/bin/dd", "/bin/dd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("dd");
    std::os::unix::fs::symlink(dd, bin.join("dd")).unwrap();
    let sshd = Sshd::start_with(&format!(
        "{SUBSYSTEM}Match User root\n    SetEnv PATH={}:/usr/bin:/bin\n",
        bin.display()
    ));
    (sshd, log)
}

/// Session 23 (issue 22, the remote's writeback overlapped): after each
/// range's answer the range's run starts a flush of the temporary it holds
/// open (`sync -d`, an fdatasync, in the background), so that the remote
/// writes the file out while the later ranges upload and the final
/// `fsync@openssh.com` is left about one range. A `sync` first on the
/// remote's PATH logs each call: it was called on the temporary's
/// descriptor while the temporary was shorter than the file (mid-upload,
/// before the rename: the upload holds after asking for its first range,
/// `FERRY_TEST_SFTP_RANGE_PAUSE_AT`, until the log exists). A `sync` that
/// fails, prints answer-like lines and exits 255 changes nothing: every
/// range's answer still pairs, the file is verified and published. Before,
/// no range ran a flush (the log was missing).
#[test]
fn each_range_flushes_the_temporary_mid_upload_and_a_failing_flush_changes_nothing() {
    if !sshd_available() {
        return;
    }
    for fails in [false, true] {
        let t = tmp();
        let (sshd, log) = sshd_with_logging_sync(t.path(), fails);
        let size = 8usize << 20;
        let data = random_bytes(size, 23);
        let src = t.path().join("ckpt.bin");
        write(&src, &data);
        let dst_dir = t.path().join("dst");
        std::fs::create_dir(&dst_dir).unwrap();
        let dst = dst_dir.join("ckpt.bin");
        let o = Command::new(ferry_bin())
            .args(["sync", "--transport", "sftp", "-e"])
            .arg(sshd.rsh())
            .arg(&src)
            .arg(sshd.remote(&dst))
            .env("XDG_CACHE_HOME", t.path().join("cache"))
            .env("FERRY_TEST_HOOKS", "1")
            .env("FERRY_TEST_SFTP_RANGE_MIB", "1")
            .env("FERRY_TEST_SFTP_RANGE_PAUSE_AT", "1")
            .env("FERRY_TEST_SFTP_RANGE_PAUSE_FILE", &log)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry");
        let err = stderr(&o);
        assert!(o.status.success(), "sync fails {fails}: {err}");
        let said = format!("verified: {HASHED_BY} on 127.0.0.1 for 1 file(s)");
        assert!(err.contains(&said), "sync fails {fails}: {err}");
        assert_eq!(std::fs::read(&dst).unwrap(), data, "sync fails {fails}");
        assert!(!remote_part(&dst).exists());
        // (the flushes run in the background: the last may log after
        // ferry has ended; 10 s at most)
        let mut logged = String::new();
        for _ in 0..200 {
            logged = std::fs::read_to_string(&log).unwrap_or_default();
            if logged.lines().count() >= 8 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            !logged.is_empty(),
            "sync fails {fails}: no range flushed the file"
        );
        // one flush per range answered, each of the file it hashed (the
        // last may run after the rename: the same file, by its new name)
        let part = s(&remote_part(&dst));
        let mut mid_upload = 0;
        for line in logged.lines() {
            let rest = line
                .strip_prefix("-d /dev/fd/3 ")
                .unwrap_or_else(|| panic!("{logged}"));
            let (file, len) = rest.rsplit_once(' ').unwrap();
            assert!(file == part || file == s(&dst), "{logged}");
            let len: usize = len.parse().unwrap_or_else(|_| panic!("{logged}"));
            if file == part && len < size {
                mid_upload += 1;
            }
        }
        assert_eq!(logged.lines().count(), 8, "sync fails {fails}: {logged}");
        assert!(mid_upload > 0, "sync fails {fails}: {logged}");
    }
}
