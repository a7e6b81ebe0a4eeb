//! `ferry shell -b` against OpenSSH's `sftp -b` as the oracle: the same
//! script, run by each against the same real sshd, leaves the same trees on
//! both sides and exits the same way.

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use util::*;

fn sftp_oracle(sshd: &Sshd, script: &Path, local: &Path) -> Output {
    let d = sshd.dir.path().display();
    Command::new("sftp")
        .args(["-b"])
        .arg(script)
        .args(["-F", "/dev/null", "-P", &sshd.port.to_string(), "-i"])
        .arg(format!("{d}/id_ed25519"))
        .args(["-o", &format!("UserKnownHostsFile={d}/known_hosts")])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg("127.0.0.1")
        .current_dir(local)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ferry_shell(sshd: &Sshd, script: &Path, local: &Path, cache: &Path) -> Output {
    Command::new(ferry_bin())
        .args(["shell", "-b"])
        .arg(script)
        .args(["-e", &sshd.rsh(), "127.0.0.1"])
        .current_dir(local)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn local_tree(root: &Path) {
    std::fs::create_dir_all(root.join("tree/b")).unwrap();
    write(&root.join("file1.txt"), "one\n");
    write(&root.join("tree/a"), random_bytes(300 << 10, 3));
    write(&root.join("tree/b/c"), "c\n");
    chmod(&root.join("tree/b/c"), 0o640);
    for (i, f) in ["file1.txt", "tree/a", "tree/b/c"].iter().enumerate() {
        set_mtime(&root.join(f), 1_600_000_000 + i as i64);
    }
}

/// Runs `script` (with `{R}` for the remote directory, `{L}` for the local
/// one) through sftp and through ferry shell; returns both outputs.
fn both(script: &str) -> (Output, Output, tempfile::TempDir) {
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let mut outs = Vec::new();
    for side in ["sftp", "ferry"] {
        let (l, r) = (
            t.path().join(format!("{side}-local")),
            t.path().join(format!("{side}-remote")),
        );
        local_tree(&l);
        std::fs::create_dir(&r).unwrap();
        let text = script
            .replace("{R}", &r.display().to_string())
            .replace("{L}", &l.display().to_string());
        let file = t.path().join(format!("{side}.batch"));
        write(&file, text);
        outs.push(match side {
            "sftp" => sftp_oracle(&sshd, &file, &l),
            _ => ferry_shell(&sshd, &file, &l, &t.path().join("cache")),
        });
    }
    let ferry = outs.pop().unwrap();
    let sftp = outs.pop().unwrap();
    for side in ["local", "remote"] {
        assert_same_tree(
            &t.path().join(format!("sftp-{side}")),
            &t.path().join(format!("ferry-{side}")),
            false,
        );
    }
    (sftp, ferry, t)
}

#[test]
fn a_batch_leaves_the_same_trees_as_sftp_b() {
    if !sshd_available() {
        return;
    }
    let script = "\
cd {R}
lcd {L}
# a comment, then a blank line: sftp echoes both

mkdir made
put -p file1.txt made/
put -r -p tree
-rm does-not-exist
@rename made/file1.txt made/renamed.txt
chmod 600 made/renamed.txt
mkdir gone
rmdir gone
get -r -p tree back
get -p made/renamed.txt
pwd
lpwd
ls
df
";
    let (sftp, ferry, t) = both(script);
    assert_eq!(sftp.status.code(), Some(0), "{}", stderr(&sftp));
    assert_eq!(ferry.status.code(), Some(0), "{}", stderr(&ferry));
    // (the tree really moved: this is not two empty directories agreeing)
    let r = t.path().join("ferry-remote");
    assert_eq!(std::fs::read(r.join("made/renamed.txt")).unwrap(), b"one\n");
    assert!(t.path().join("ferry-local/back/b/c").exists());
    assert!(stdout(&ferry).contains(&format!("Remote working directory: {}", r.display())));
    // each line is echoed as written (its `-` kept, blank and comment lines
    // too), except the `@` lines, as sftp does
    let echoed = |out: &Output, prompt: &str| -> Vec<String> {
        stdout(out)
            .lines()
            .filter_map(|l| l.strip_prefix(prompt))
            .map(|l| l.replace("/sftp-", "/ferry-"))
            .collect()
    };
    let ferry_echo = echoed(&ferry, "ferry> ");
    assert_eq!(echoed(&sftp, "sftp> "), ferry_echo);
    assert!(ferry_echo.contains(&"-rm does-not-exist".to_string()));
    assert!(!ferry_echo.iter().any(|l| l.contains("rename made")));
}

#[test]
fn a_failing_batch_stops_where_sftp_b_stops() {
    if !sshd_available() {
        return;
    }
    let script = "\
cd {R}
mkdir first
rm does-not-exist
mkdir never
";
    let (sftp, ferry, t) = both(script);
    assert_eq!(sftp.status.code(), Some(1));
    assert_eq!(ferry.status.code(), Some(1));
    assert!(t.path().join("ferry-remote/first").is_dir());
    assert!(!t.path().join("ferry-remote/never").exists());
}

#[test]
fn piped_commands_run_without_echo_or_escape_codes() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let r = t.path().join("remote");
    std::fs::create_dir(&r).unwrap();
    let mut child = Command::new(ferry_bin())
        .args([
            "shell",
            "-e",
            &sshd.rsh(),
            &format!("127.0.0.1:{}", r.display()),
        ])
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"mkdir 'with space'\npwd\nls\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(r.join("with space").is_dir());
    let out = stdout(&o);
    assert_eq!(
        out,
        format!("Remote working directory: {}\nwith space\n", r.display())
    );
    assert!(!out.contains('\x1b'));
}

/// A terminal for `ferry shell`: util-linux's `script` runs it on a
/// pseudo-terminal; what is written here is typed there, and what it prints
/// is read back (escape codes and all).
struct Pty {
    child: std::process::Child,
    keys: std::process::ChildStdin,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// How much of `out` an expectation has consumed.
    seen: usize,
}

impl Pty {
    fn spawn(args: &[String], cwd: &Path, state: &Path, cache: &Path) -> Pty {
        let mut words = vec![ferry_bin().display().to_string()];
        words.extend(args.iter().cloned());
        let mut child = Command::new("script")
            .args([
                "-q",
                "-f",
                "-e",
                "-c",
                &shell_words::join(&words),
                "/dev/null",
            ])
            .current_dir(cwd)
            .env("TERM", "xterm")
            .env("COLUMNS", "200")
            .env("LINES", "40")
            .env("XDG_STATE_HOME", state)
            .env("XDG_CACHE_HOME", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let keys = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            keys,
            out,
            seen: 0,
        }
    }

    fn send(&mut self, keys: &str) {
        use std::io::Write;
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits (at most `secs`) until what is printed after the last
    /// expectation contains `what`; returns what came up to its end.
    fn expect(&mut self, what: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            {
                let out = self.out.lock().unwrap();
                let text = String::from_utf8_lossy(&out[self.seen..]).into_owned();
                if let Some(i) = text.find(what) {
                    let upto = &text[..i + what.len()];
                    self.seen += upto.len();
                    return upto.to_string();
                }
                if std::time::Instant::now() > deadline {
                    panic!("waited {secs} s for {what:?}; the terminal showed:\n{text:?}");
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..500 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("ferry shell did not end");
    }
}

#[test]
fn pty_tab_completes_remote_and_local_paths_and_history_is_kept_private() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let (r, l) = (t.path().join("remote"), t.path().join("local"));
    std::fs::create_dir_all(r.join("models-v1")).unwrap();
    write(&r.join("other.txt"), "x");
    std::fs::create_dir_all(l.join("localdata")).unwrap();
    let (state, cache) = (t.path().join("state"), t.path().join("cache"));
    let args = vec![
        "shell".to_string(),
        "-e".into(),
        sshd.rsh(),
        format!("127.0.0.1:{}", r.display()),
    ];
    let mut pty = Pty::spawn(&args, &l, &state, &cache);
    pty.expect("ferry> ", 20);
    // "mod" + Tab becomes the one remote name it starts
    pty.send("cd mod\t");
    pty.expect("models-v1/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    pty.send("pwd\r");
    pty.expect(
        &format!("Remote working directory: {}/models-v1", r.display()),
        10,
    );
    // and "loc" + Tab the one local name
    pty.send("lcd loc\t");
    pty.expect("localdata/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    pty.send("lpwd\r");
    pty.expect(
        &format!("Local working directory: {}/localdata", l.display()),
        10,
    );
    pty.send("exit\r");
    assert!(pty.wait().success());
    let history = state.join("ferry/shell_history");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&history).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "history file mode {mode:o}");
    let text = std::fs::read_to_string(&history).unwrap();
    assert!(text.contains("cd models-v1/"), "{text}");
    // the next session has it: Up three times is `lcd localdata/`
    let mut pty = Pty::spawn(&args, &l, &state, &cache);
    pty.expect("ferry> ", 20);
    pty.send("\x1b[A\x1b[A\x1b[A");
    pty.expect("lcd localdata/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    pty.send("lpwd\r");
    pty.expect(
        &format!("Local working directory: {}/localdata", l.display()),
        10,
    );
    pty.send("exit\r");
    assert!(pty.wait().success());
}

#[test]
fn pty_ctrl_c_cancels_a_get_keeps_the_partial_and_reget_finishes_it() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let (r, l) = (t.path().join("remote"), t.path().join("local"));
    std::fs::create_dir_all(&r).unwrap();
    std::fs::create_dir_all(&l).unwrap();
    let size = 4usize << 20;
    let data = random_bytes(size, 21);
    write(&r.join("big.bin"), &data);
    // a few MB/s: the get takes seconds
    let target: std::net::SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    // connections: the session's, then each get's SFTP and its remote hash
    // check (and the first one's probe)
    let relay = delay_relay(target, std::time::Duration::from_millis(10), 256 << 10, 8);
    let d = sshd.dir.path().display();
    let rsh = format!(
        "ssh -F /dev/null -p {} -i {d}/id_ed25519 -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        relay.port()
    );
    let args = vec![
        "shell".to_string(),
        "--transport".into(),
        "sftp".into(),
        "-e".into(),
        rsh,
        format!("127.0.0.1:{}", r.display()),
    ];
    let (state, cache) = (t.path().join("state"), t.path().join("cache"));
    let mut pty = Pty::spawn(&args, &l, &state, &cache);
    pty.expect("ferry> ", 30);
    pty.send("get big.bin\r");
    let part = l.join(".ferry-partial/big.bin");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 512 << 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the get never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    pty.send("\x03");
    pty.expect("cancelled", 15);
    eprintln!("cancelled after {:?}", started.elapsed());
    pty.expect("ferry> ", 15);
    assert!(
        !l.join("big.bin").exists(),
        "a cut-short file was published"
    );
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept >= 512 << 10 && kept < size as u64, "{kept}");
    // the session (and its ssh) lived through it
    pty.send("pwd\r");
    pty.expect(&format!("Remote working directory: {}", r.display()), 10);
    pty.expect("ferry> ", 10);
    pty.send("reget big.bin\r");
    let started = std::time::Instant::now();
    let shown = pty.expect("ferry> ", 60);
    eprintln!("reget took {:?}", started.elapsed());
    let got = std::fs::read(l.join("big.bin"));
    assert!(
        got.is_ok(),
        "no file after reget; the terminal showed {shown:?}"
    );
    assert!(got.unwrap() == data, "reget gave other bytes");
    assert!(!part.exists());
    pty.send("bye\r");
    assert!(pty.wait().success());
}

#[test]
fn a_batch_prints_no_escape_codes() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let r = t.path().join("remote");
    std::fs::create_dir(&r).unwrap();
    write(&t.path().join("f"), random_bytes(1 << 20, 5));
    let script = t.path().join("b");
    write(
        &script,
        format!(
            "cd {}\nput {}\nls -l\nprogress\n",
            r.display(),
            t.path().join("f").display()
        ),
    );
    let o = ferry_shell(&sshd, &script, t.path(), &t.path().join("cache"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(r.join("f").exists());
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains('\x1b'), "{all:?}");
    assert!(!all.contains('\r'), "{all:?}");
}

#[test]
fn pty_a_slow_remote_listing_never_freezes_the_prompt() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let t = tmp();
    let r = t.path().join("remote");
    std::fs::create_dir_all(r.join("models-v1")).unwrap();
    // 500 ms each way: a listing (open, two reads, close) takes 4 s
    let target: std::net::SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    let relay = delay_relay(target, std::time::Duration::from_millis(500), 1 << 20, 1);
    let d = sshd.dir.path().display();
    let rsh = format!(
        "ssh -F /dev/null -p {} -i {d}/id_ed25519 -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        relay.port()
    );
    let args = vec![
        "shell".to_string(),
        "-e".into(),
        rsh,
        format!("127.0.0.1:{}", r.display()),
    ];
    let mut pty = Pty::spawn(
        &args,
        t.path(),
        &t.path().join("state"),
        &t.path().join("c"),
    );
    pty.expect("ferry> ", 60);
    let started = std::time::Instant::now();
    pty.send("cd mod\t");
    // no candidates yet: the bell, well before the listing could land
    pty.expect("\x07", 10);
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(3500),
        "Tab held the prompt {waited:?}"
    );
    // the listing lands meanwhile and serves the next Tab
    std::thread::sleep(std::time::Duration::from_secs(4));
    pty.send("\t");
    pty.expect("models-v1/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 20);
    pty.send("pwd\r");
    pty.expect(
        &format!("Remote working directory: {}/models-v1", r.display()),
        20,
    );
    pty.send("exit\r");
    assert!(pty.wait().success());
}

/// `ferry shell -b SCRIPT` on the daemon module `target` (a path in it).
fn daemon_shell(d: &Daemon, target: &str, script: &Path, local: &Path) -> Output {
    Command::new(ferry_bin())
        .args(["shell", "-b"])
        .arg(script)
        .args(d.client_args())
        .arg(d.url(target))
        .current_dir(local)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_batch_on_a_daemon_module_leaves_the_same_tree_as_sftp_b() {
    if !sshd_available() {
        return;
    }
    let body = "\
lcd {L}
mkdir made
put -p file1.txt made/
put -r -p tree
-rm does-not-exist
@rename made/file1.txt made/renamed.txt
chmod 600 made/renamed.txt
mkdir gone
rmdir gone
cd made
cd ..
get -r -p tree back
get -p made/renamed.txt
ls
ls -l made
df
";
    let t = tmp();
    let sshd = Sshd::start_with("Subsystem sftp internal-sftp\n");
    let module = t.path().join("daemon-remote");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut outs = Vec::new();
    for side in ["sftp", "daemon"] {
        let (l, r) = (
            t.path().join(format!("{side}-local")),
            t.path().join(format!("{side}-remote")),
        );
        local_tree(&l);
        std::fs::create_dir_all(&r).unwrap();
        let mut text = body.replace("{L}", &l.display().to_string());
        if side == "sftp" {
            text = format!("cd {}\n{text}", r.display());
        }
        let file = t.path().join(format!("{side}.batch"));
        write(&file, text);
        outs.push(match side {
            "sftp" => sftp_oracle(&sshd, &file, &l),
            _ => daemon_shell(&d, "data", &file, &l),
        });
    }
    let (sftp, daemon) = (&outs[0], &outs[1]);
    assert_eq!(sftp.status.code(), Some(0), "{}", stderr(sftp));
    assert_eq!(daemon.status.code(), Some(0), "{}", stderr(daemon));
    for side in ["local", "remote"] {
        assert_same_tree(
            &t.path().join(format!("sftp-{side}")),
            &t.path().join(format!("daemon-{side}")),
            false,
        );
    }
    // the tree really moved: not two empty directories agreeing
    assert_eq!(
        std::fs::read(module.join("made/renamed.txt")).unwrap(),
        b"one\n"
    );
    assert!(t.path().join("daemon-local/back/b/c").exists());
    let out = stdout(daemon);
    assert!(out.contains("ferry> ls -l made"), "{out}");
    assert!(out.contains("-rw-------"), "{out}");
    assert!(out.contains("Avail"), "{out}");
}

#[test]
fn a_daemon_shell_never_reaches_outside_its_module() {
    let t = tmp();
    let (module, outside, local) = (
        t.path().join("module"),
        t.path().join("outside"),
        t.path().join("local"),
    );
    for dir in [&module, &outside, &local] {
        std::fs::create_dir_all(dir).unwrap();
    }
    write(&outside.join("secret.txt"), "secret\n");
    chmod(&outside.join("secret.txt"), 0o600);
    write(&module.join("inside.txt"), "inside\n");
    write(&local.join("f"), "f\n");
    std::os::unix::fs::symlink(&outside, module.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), module.join("link")).unwrap();
    std::os::unix::fs::symlink("../outside", module.join("up")).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let refused = [
        "cd ..",
        "cd /../..",
        "ls ..",
        "ls out",
        "cd out",
        "cd up",
        "get ../outside/secret.txt",
        "get out/secret.txt",
        "get up/secret.txt",
        "get /etc/hostname",
        "rm out/secret.txt",
        "rm ../outside/secret.txt",
        "mkdir out/new",
        "mkdir ../new",
        "chmod 666 link",
        "chmod 666 out/secret.txt",
        "rename out/secret.txt stolen",
        "rename inside.txt ../stolen",
        "put f ../escaped",
        "put f out/escaped",
        "df ../..",
    ];
    let mut script = String::new();
    for c in refused {
        script.push_str(&format!("-{c}\n"));
    }
    script.push_str("pwd\nls\n");
    let file = t.path().join("batch");
    write(&file, &script);
    let o = daemon_shell(&d, "data", &file, &local);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    // every one said no, in a line of its own
    assert!(err.lines().count() >= refused.len(), "{err}");
    assert!(out.contains("Remote working directory: /\n"), "{out}");
    // (the batch echoes each command: only what was printed for them counts)
    let printed: Vec<&str> = out.lines().filter(|l| !l.starts_with("ferry> ")).collect();
    assert!(!printed.iter().any(|l| l.contains("secret")), "{out}");
    assert!(err.contains("would leave the module"), "{err}");
    assert!(err.contains("symlink"), "{err}");
    // nothing outside moved, changed or appeared
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"secret\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(outside.join("secret.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret.txt"]);
    assert!(!t.path().join("escaped").exists() && !t.path().join("stolen").exists());
    assert!(!t.path().join("new").exists());
    assert!(!local.join("secret.txt").exists() && !local.join("hostname").exists());
    assert_eq!(
        std::fs::read(module.join("inside.txt")).unwrap(),
        b"inside\n"
    );
}

#[test]
fn a_read_only_module_refuses_changes_with_the_transfer_s_words() {
    let t = tmp();
    let (module, local) = (t.path().join("module"), t.path().join("local"));
    std::fs::create_dir_all(module.join("d")).unwrap();
    std::fs::create_dir_all(&local).unwrap();
    write(&module.join("a.txt"), "a\n");
    write(&local.join("f"), "f\n");
    let d = Daemon::start(&[("ro", &module, true)], "", &[]);
    let file = t.path().join("batch");
    write(
        &file,
        "-put f\n-rm a.txt\n-mkdir new\n-rmdir d\n-rename a.txt b.txt\n-chmod 600 a.txt\nls\nget a.txt\n",
    );
    let o = daemon_shell(&d, "ro", &file, &local);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("module ro is read-only").count(), 6, "{err}");
    // reading still works, and nothing changed
    assert_eq!(std::fs::read(local.join("a.txt")).unwrap(), b"a\n");
    let names: std::collections::BTreeSet<_> = std::fs::read_dir(&module)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "d"].map(String::from).into());
    // without '-' the first refusal ends the batch with exit 1
    write(&file, "mkdir new\nget a.txt again.txt\n");
    let o = daemon_shell(&d, "ro", &file, &local);
    assert_eq!(o.status.code(), Some(1));
    assert!(!local.join("again.txt").exists());
}

#[test]
fn a_daemon_without_the_shell_is_refused_in_one_line() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir_all(&module).unwrap();
    let mut d = Daemon::start(&[("data", &module, false)], "", &[]);
    // the same keys, served by a daemon that answers as one from before the shell
    let dir = std::mem::replace(&mut d.dir, tmp());
    drop(d);
    let d = Daemon::spawn_in(
        dir,
        &[("data", &module, false)],
        &[],
        &["env", "FERRY_TEST_HOOKS=1", "FERRY_TEST_DAEMON_NO_SHELL=1"],
        "127.0.0.1:0",
    )
    .unwrap();
    let file = t.path().join("batch");
    write(&file, "mkdir never\n");
    let started = std::time::Instant::now();
    let o = daemon_shell(&d, "data", &file, t.path());
    let err = stderr(&o);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // a peer it cannot work with, as a transfer's failed handshake
    assert_eq!(o.status.code(), Some(12), "{err}");
    // (the first connection to this port records the daemon's key)
    let said: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("permanently added daemon"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("too old for `ferry shell`"), "{err}");
    assert!(!module.join("never").exists());
    // and that daemon still serves transfers
    let mut args = vec!["ls".to_string(), d.url("data/")];
    args.extend(d.client_args());
    ok(ferry(&args));
}

/// The PTY test of `pty_tab_completes_…` and `pty_ctrl_c_cancels_…` on a
/// daemon module (`ferry://host:port/module`, as `host::module`): Tab
/// completes remote and local paths, history is kept (mode 0600) and
/// recalled by the next session, Ctrl-C cancels a `get` and keeps the
/// partial file, and `reget` finishes it over the same session.
#[test]
fn pty_on_a_daemon_module_completes_keeps_history_cancels_and_regets() {
    let t = tmp();
    let (module, l) = (t.path().join("module"), t.path().join("local"));
    std::fs::create_dir_all(module.join("models-v1")).unwrap();
    std::fs::create_dir_all(l.join("localdata")).unwrap();
    let size = 4usize << 20;
    let data = random_bytes(size, 23);
    write(&module.join("models-v1/big.bin"), &data);
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    // a few MB/s: the get takes seconds (connections: the session's, each
    // transfer's streams)
    let relay = delay_relay(d.addr, std::time::Duration::from_millis(10), 64 << 10, 32);
    let mut args = vec!["shell".to_string()];
    args.extend(d.client_args());
    args.push(format!("ferry://{relay}/data"));
    let (state, cache) = (t.path().join("state"), t.path().join("cache"));
    let mut pty = Pty::spawn(&args, &l, &state, &cache);
    pty.expect("ferry> ", 30);
    // "mod" + Tab becomes the one remote name it starts
    pty.send("cd mod\t");
    pty.expect("models-v1/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    pty.send("pwd\r");
    pty.expect("Remote working directory: /models-v1", 10);
    pty.expect("ferry> ", 10);
    // and "loc" + Tab the one local name
    pty.send("lcd loc\t");
    pty.expect("localdata/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    // a get through the slow link, cancelled half way
    let local = l.join("localdata");
    let part = local.join(".ferry-partial/big.bin");
    pty.send("get big.bin\r");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 512 << 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the get never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pty.send("\x03");
    pty.expect("cancelled", 15);
    pty.expect("ferry> ", 15);
    assert!(
        !local.join("big.bin").exists(),
        "a cut-short file was published"
    );
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept >= 512 << 10 && kept < size as u64, "{kept}");
    // the session lived through it
    pty.send("pwd\r");
    pty.expect("Remote working directory: /models-v1", 10);
    pty.expect("ferry> ", 10);
    pty.send("reget big.bin\r");
    let shown = pty.expect("ferry> ", 60);
    let got = std::fs::read(local.join("big.bin"));
    assert!(
        got.is_ok(),
        "no file after reget; the terminal showed {shown:?}"
    );
    assert!(got.unwrap() == data, "reget gave other bytes");
    assert!(!part.exists());
    pty.send("exit\r");
    assert!(pty.wait().success());
    let history = state.join("ferry/shell_history");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&history).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "history file mode {mode:o}");
    let text = std::fs::read_to_string(&history).unwrap();
    assert!(text.contains("cd models-v1/"), "{text}");
    // the next session has it: Up five times (exit, reget, pwd, get) is
    // `lcd localdata/`
    let mut pty = Pty::spawn(&args, &l, &state, &cache);
    pty.expect("ferry> ", 30);
    pty.send("\x1b[A\x1b[A\x1b[A\x1b[A\x1b[A");
    pty.expect("lcd localdata/", 10);
    pty.send("\r");
    pty.expect("ferry> ", 10);
    pty.send("lpwd\r");
    pty.expect(
        &format!("Local working directory: {}/localdata", l.display()),
        10,
    );
    pty.send("exit\r");
    assert!(pty.wait().success());
}

/// s19 review: `get DIR` and `put DIR` without `-r` are refused as `sftp
/// -b` refuses them, in its words and one line each (`download DIR/: not a
/// regular file`, `local "DIR/" is not a regular file`): the command fails,
/// so a batch stops with exit 1, and `-get`/`-put` go on. They succeeded
/// (exit 0; `get` said nothing at all). Over SFTP, and on a daemon module.
#[test]
fn get_and_put_of_a_directory_without_r_are_refused_as_sftp_refuses_them() {
    if !sshd_available() {
        return;
    }
    let script = "\
cd {R}
lcd {L}
put -r -p tree
-get tree
-put tree
mkdir went-on
get tree
mkdir never
";
    // the words each side says, its own directories put back as {R} and {L}
    let said = |o: &Output, r: &Path, l: &Path| -> Vec<String> {
        stderr(o)
            .lines()
            .map(|line| {
                line.replace(&r.display().to_string(), "{R}")
                    .replace(&l.display().to_string(), "{L}")
            })
            .collect()
    };
    let (sftp, ferry, t) = both(script);
    let at = |side: &str| {
        (
            t.path().join(format!("{side}-remote")),
            t.path().join(format!("{side}-local")),
        )
    };
    let (sr, sl) = at("sftp");
    let (fr, fl) = at("ferry");
    assert_eq!(sftp.status.code(), Some(1), "{}", stderr(&sftp));
    assert_eq!(ferry.status.code(), Some(1), "{}", stderr(&ferry));
    let want = said(&sftp, &sr, &sl);
    assert_eq!(
        want,
        [
            "download {R}/tree/: not a regular file",
            "local \"tree/\" is not a regular file",
            "download {R}/tree/: not a regular file",
        ],
        "the oracle's words changed"
    );
    assert_eq!(said(&ferry, &fr, &fl), want);
    assert!(fr.join("went-on").is_dir() && !fr.join("never").exists());

    // on a daemon module: the same lines (the module's own paths) and exit
    let module = t.path().join("module");
    let local = t.path().join("daemon-local");
    local_tree(&local);
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let file = t.path().join("daemon.batch");
    write(
        &file,
        script
            .replace("cd {R}\n", "")
            .replace("{L}", &local.display().to_string()),
    );
    let o = daemon_shell(&d, "data", &file, &local);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o)
            .lines()
            .filter(|l| !l.contains("permanently added")) // (first contact)
            .collect::<Vec<_>>(),
        [
            "download /tree/: not a regular file",
            "local \"tree/\" is not a regular file",
            "download /tree/: not a regular file",
        ]
    );
    assert!(module.join("went-on").is_dir() && !module.join("never").exists());
}
