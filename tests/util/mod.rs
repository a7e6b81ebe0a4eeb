//! Shared test harness: temporary trees, running the built `ferry`, comparing
//! trees the way a user would (bytes, modes, mtimes, link targets), a real
//! OpenSSH `sshd` on loopback, and rsync as an oracle.
#![allow(dead_code)]

pub mod failing_fs;
pub mod s3;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-test-")
        .tempdir()
        .unwrap()
}

/// Runs ferry with these arguments.
pub fn ferry<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a successful run, showing its output otherwise.
#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "ferry failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Pseudo-random bytes, fast and reproducible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in out.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        chunk.copy_from_slice(&s.to_le_bytes()[..chunk.len()]);
    }
    out
}

pub fn write(path: &Path, data: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

pub fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs as u64);
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a user would compare between two trees.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Node {
    File {
        mode: u32,
        mtime: (i64, i64),
        hash: [u8; 32],
    },
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    Link {
        target: Vec<u8>,
    },
}

/// Describes a tree by relative path (bytes), skipping `.ferry-partial`.
/// With `dir_times` false, directory mtimes are left out.
pub fn snapshot(root: &Path, dir_times: bool) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, dir_times: bool, out: &mut BTreeMap<Vec<u8>, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel.starts_with(b".ferry-partial") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let node = if m.file_type().is_symlink() {
                Node::Link {
                    target: std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                }
            } else if m.is_dir() {
                walk(root, &p, dir_times, out);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                    mtime: if dir_times {
                        (m.mtime(), m.mtime_nsec())
                    } else {
                        (0, 0)
                    },
                }
            } else {
                Node::File {
                    mode: m.mode() & 0o7777,
                    mtime: (m.mtime(), m.mtime_nsec()),
                    hash: *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes(),
                }
            };
            out.insert(rel, node);
        }
    }
    walk(root, root, dir_times, &mut out);
    out
}

#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path, dir_times: bool) {
    let (sa, sb) = (snapshot(a, dir_times), snapshot(b, dir_times));
    if sa != sb {
        let mut diff = String::new();
        for (k, v) in &sa {
            match sb.get(k) {
                None => {
                    diff += &format!("only in {}: {}\n", a.display(), String::from_utf8_lossy(k))
                }
                Some(w) if w != v => {
                    diff += &format!("differs: {}: {v:?} vs {w:?}\n", String::from_utf8_lossy(k))
                }
                _ => {}
            }
        }
        for k in sb.keys() {
            if !sa.contains_key(k) {
                diff += &format!("only in {}: {}\n", b.display(), String::from_utf8_lossy(k));
            }
        }
        panic!("trees differ:\n{diff}");
    }
}

/// Copies a tree exactly (contents, modes, mtimes, links) with rsync.
pub fn clone_tree(from: &Path, to: &Path) {
    let st = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .status()
        .expect("rsync is installed (scripts/test.sh installs it)");
    assert!(st.success());
}

/// Runs rsync with these arguments (the oracle).
#[track_caller]
pub fn rsync<I, S>(args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let o = Command::new("rsync").args(args).output().expect("rsync");
    assert!(
        o.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether tests that need this machine's root and sshd must run. The README's
/// test command sets FERRY_REQUIRE_SSHD=1, so there they fail instead of skip.
pub fn sshd_available() -> bool {
    let have = Path::new("/usr/sbin/sshd").exists() && rustix::process::geteuid().is_root();
    if !have && std::env::var_os("FERRY_REQUIRE_SSHD").is_some() {
        panic!("FERRY_REQUIRE_SSHD is set but /usr/sbin/sshd is missing or we are not root");
    }
    if !have {
        eprintln!("skipping: needs root and /usr/sbin/sshd (run scripts/test.sh)");
    }
    have
}

/// A throwaway OpenSSH server on 127.0.0.1 with its own host key, one
/// authorized client key, key-only authentication. Killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with("")
    }

    /// Like [`Sshd::start`], with `extra` appended to its sshd_config (a
    /// `Subsystem` line, a `Match` block).
    pub fn start_with(extra: &str) -> Sshd {
        Sshd::start_with_env("", extra)
    }

    /// Like [`Sshd::start_with`], with `env` (`NAME=value …`) set in every
    /// session (sshd takes only its first `SetEnv` line, so it goes there).
    pub fn start_with_env(env: &str, extra: &str) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tmp();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("id_ed25519"));
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPidFile {d}/sshd.pid\nLogLevel ERROR\nSetEnv SHLVL=1 {env}\n{extra}",
                d = d.display()
            );
            write(&d.join("sshd_config"), &config);
            let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
            write(
                &d.join("known_hosts"),
                format!("[127.0.0.1]:{port} {host_pub}"),
            );
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start sshd");
    }

    /// The `-e` command that reaches this server.
    pub fn rsh(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "ssh -F /dev/null -p {} -i {d}/id_ed25519 -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR",
            self.port
        )
    }

    /// `-e CMD --remote-ferry BIN`, ready to append to a ferry command line.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-e".into(),
            self.rsh(),
            "--remote-ferry".into(),
            ferry_bin().display().to_string(),
        ]
    }

    /// The listening sshd; sessions are its descendants.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PATH`
    pub fn remote(&self, path: &Path) -> String {
        format!("127.0.0.1:{}", path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `--stats` output: (literal, matched, sent, received).
pub fn stats(out: &str) -> (u64, u64, u64, u64) {
    let get = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_end_matches(" bytes").parse().unwrap())
            .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
    };
    (
        get("Literal data:"),
        get("Matched data:"),
        get("Total bytes sent:"),
        get("Total bytes received:"),
    )
}

/// Appends bytes to a file.
pub fn append(path: &Path, data: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

/// A ferry daemon on 127.0.0.1 with its own config directory, a client config
/// directory with a key the daemon trusts (with `key_options`), and the given
/// modules. Killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    pub fn daemon_dir(&self) -> PathBuf {
        self.dir.path().join("daemon")
    }
    pub fn client_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Sets up keys and config, then starts `ferry serve` with `args`.
    pub fn start(modules: &[(&str, &Path, bool)], key_options: &str, args: &[&str]) -> Daemon {
        let dir = Daemon::keyed_setup(key_options);
        Daemon::spawn(dir, modules, args).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// A setup for [`spawn`](Self::spawn): the daemon's and the client's
    /// config directories, with a client key the daemon trusts (with
    /// `key_options`).
    pub fn keyed_setup(key_options: &str) -> tempfile::TempDir {
        let dir = tmp();
        let (daemon, client) = (dir.path().join("daemon"), dir.path().join("client"));
        for d in [&daemon, &client] {
            std::fs::create_dir(d).unwrap();
            chmod(d, 0o700);
        }
        ok(ferry([
            "keygen",
            "-C",
            "test-client",
            "--config-dir",
            &client.display().to_string(),
        ]));
        let public = std::fs::read_to_string(client.join("id_ed25519.pub")).unwrap();
        let line = if key_options.is_empty() {
            public
        } else {
            format!("{key_options} {public}")
        };
        write(&daemon.join("authorized_keys"), line);
        chmod(&daemon.join("authorized_keys"), 0o600);
        dir
    }

    /// Starts `ferry serve` in an existing setup; Err(log) if it exits instead.
    pub fn spawn(
        dir: tempfile::TempDir,
        modules: &[(&str, &Path, bool)],
        args: &[&str],
    ) -> Result<Daemon, String> {
        Daemon::spawn_in(dir, modules, args, &[], "127.0.0.1:0")
    }

    /// Like [`spawn`](Self::spawn), run under `wrapper` (e.g. `ip netns exec NS`)
    /// and listening on `listen`.
    pub fn spawn_in(
        dir: tempfile::TempDir,
        modules: &[(&str, &Path, bool)],
        args: &[&str],
        wrapper: &[&str],
        listen: &str,
    ) -> Result<Daemon, String> {
        let daemon = dir.path().join("daemon");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(ferry_bin());
                c
            }
            None => Command::new(ferry_bin()),
        };
        cmd.args(["serve", "--listen", listen, "--config-dir"])
            .arg(&daemon);
        for (name, path, ro) in modules {
            cmd.arg("--module").arg(format!(
                "{name}={}{}",
                path.display(),
                if *ro { ":ro" } else { "" }
            ));
        }
        cmd.args(args);
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.wait();
            return Err(std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default());
        };
        let addr = addr.parse().unwrap();
        // keep reading stdout so the daemon never blocks on it
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Daemon { child, addr, dir })
    }

    /// `ferry://127.0.0.1:PORT/PATH`
    pub fn url(&self, path: &str) -> String {
        format!("ferry://{}/{path}", self.addr)
    }

    /// Client flags that reach this daemon with its trusted key.
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "--config-dir".into(),
            self.client_dir().display().to_string(),
            "--host-key-check".into(),
            "accept-new".into(),
        ]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the daemon to exit (after a signal); its exit status.
    /// SIGKILLs the daemon and waits until it is gone.
    pub fn kill9(&mut self) {
        let st = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -KILL");
        self.wait(Duration::from_secs(5))
            .expect("daemon survived SIGKILL");
    }

    /// The same daemon (keys, configuration, `modules`) started again, on a
    /// new port.
    pub fn restart(mut self, modules: &[(&str, &Path, bool)]) -> Daemon {
        let dir = std::mem::replace(&mut self.dir, tmp());
        drop(self);
        Daemon::spawn(dir, modules, &[]).expect("daemon restarted")
    }

    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_for(&mut self.child, limit)
    }
}

/// The test hooks' pause: waits (30 s at most) until a run held by a
/// `FERRY_TEST_*_PAUSE_FILE=go` hook says it waits (`go.waiting` exists);
/// `what` names where it is held, for the failure.
pub fn wait_for_pause(run: &mut Child, go: &Path, what: &str) {
    let waiting = PathBuf::from(format!("{}.waiting", go.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiting.exists() {
        if let Ok(Some(st)) = run.try_wait() {
            panic!("the run ended ({st}) before it was held at {what}");
        }
        assert!(
            Instant::now() < deadline,
            "the run was never held at {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits at most `limit` for a run started with piped output and returns
/// it; a run still going then is killed and the test fails (it hangs).
pub fn output_within(run: Child, limit: Duration) -> std::process::Output {
    let pid = run.id();
    let out = std::thread::spawn(move || run.wait_with_output().unwrap());
    let deadline = Instant::now() + limit;
    while !out.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = out.join();
            panic!("the run did not finish in {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out.join().unwrap()
}

/// A keyed daemon serving `module` as `m`, with `env` in its environment
/// (the test hooks' variables).
pub fn daemon_with_env(module: &Path, env: &[(String, String)]) -> Daemon {
    let wrapper: Vec<String> = std::iter::once("env".to_string())
        .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Daemon::spawn_in(
        Daemon::keyed_setup(""),
        &[("m", module, false)],
        &[],
        &wrapper,
        "127.0.0.1:0",
    )
    .unwrap_or_else(|log| panic!("daemon did not start: {log}"))
}

/// Waits at most `limit` for `child` to exit; `None` if it is still running.
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether tests that need root (mounts, namespaces) can run; under the README's
/// test command (FERRY_REQUIRE_SSHD=1, as root) they must.
pub fn root_available() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root && std::env::var_os("FERRY_REQUIRE_SSHD").is_some() {
        panic!("FERRY_REQUIRE_SSHD is set but we are not root");
    }
    if !root {
        eprintln!("skipping: needs root (run scripts/test.sh as root)");
    }
    root
}

/// A TCP relay that delays every byte by `one_way` in each direction, the way
/// a long link does (this kernel has no netem). It holds at most `in_flight`
/// bytes per direction — about rate × delay — so a sender feels the pipe fill
/// up. Serves `connections` connections, then stops accepting.
pub fn delay_relay(
    target: std::net::SocketAddr,
    one_way: Duration,
    in_flight: usize,
    connections: usize,
) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in l.incoming().take(connections) {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            delay_pipe(client, server, one_way, in_flight);
            delay_pipe(s2, c2, one_way, in_flight);
        }
    });
    addr
}

/// One direction of [`delay_relay`]: a reader stamps each piece with its
/// arrival time, a writer forwards it once `one_way` has passed.
fn delay_pipe(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    one_way: Duration,
    in_flight: usize,
) {
    const PIECE: usize = 64 << 10;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(in_flight.div_ceil(PIECE));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = match std::io::Read::read(&mut from, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (arrived, bytes) in rx {
            let due = arrived + one_way;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// A "daemon" on 127.0.0.1 that hangs up on each of its first `connections`
/// connections at once (a broken connection, worth retrying), and how many
/// it took.
pub fn hang_up_listener(
    connections: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().take(connections) {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    (addr, accepted)
}
