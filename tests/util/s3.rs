//! A real S3 server for tests: `s3s-fs` (installed by `scripts/test.sh`,
//! version 0.14.1) on a free loopback port with its own data directory,
//! where each object is a plain file; and a loopback proxy in front of it
//! that logs every request (method, path, content length, the copy headers)
//! and can refuse server-side copies, as a server without UploadPartCopy
//! would.

use super::ferry_bin;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KEY: &str = "ferry-test-key";
pub const SECRET: &str = "ferry-test-secret-9f3a";

/// An s3s-fs server, stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// The data directory: `data/bucket/key` is an object's bytes.
    pub data: PathBuf,
}

fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let p = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cargo/bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs is not installed: scripts/test.sh installs it \
         (cargo install s3s-fs --version 0.14.1 --locked --features binary)"
    );
    p
}

impl S3Server {
    pub fn start(data: &Path, buckets: &[&str]) -> S3Server {
        for b in buckets {
            std::fs::create_dir_all(data.join(b)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            port,
            data: data.to_path_buf(),
        }
    }

    /// ferry with the usual AWS variables pointing at `port` (the server's
    /// or a proxy's).
    pub fn command(&self, port: u16, args: &[&str]) -> Command {
        let mut c = Command::new(ferry_bin());
        c.args(args)
            .env_remove("AWS_PROFILE")
            .env("HOME", &self.data) // no ~/.aws of the user's
            .env("XDG_CACHE_HOME", self.data.with_file_name("cache"))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .stdin(Stdio::null());
        c
    }

    pub fn ferry(&self, args: &[&str]) -> Output {
        self.command(self.port, args).output().expect("run ferry")
    }

    pub fn ferry_via(&self, proxy: &Proxy, args: &[&str]) -> Output {
        self.command(proxy.port, args).output().expect("run ferry")
    }

    /// Every file under the data directory whose name contains `part`
    /// (s3s-fs keeps an unfinished upload's parts as `.upload_id-…` files).
    pub fn files_named(&self, part: &str) -> Vec<PathBuf> {
        fn walk(d: &Path, part: &str, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, part, out);
                } else if p.to_string_lossy().contains(part) {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data, part, &mut out);
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `PUT /bkt/key?partNumber=1&uploadId=…`
    pub line: String,
    pub len: u64,
    /// It asked the server to copy (UploadPartCopy).
    pub copy: bool,
}

impl Seen {
    pub fn is_put(&self) -> bool {
        self.line.starts_with("PUT ")
    }
}

/// A loopback HTTP proxy in front of the server (bodies forwarded
/// untouched), stopped with the test process.
pub struct Proxy {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer every UploadPartCopy with 501 NotImplemented, not forwarded.
    pub refuse_copies: Arc<AtomicBool>,
    /// Hold every UploadPartCopy unanswered while set (at most 2 minutes),
    /// then drop its connection: a copy that never finishes.
    pub stall_copies: Arc<AtomicBool>,
    /// Like `stall_copies`, for the UploadPartCopy requests whose request
    /// line holds this text only (`Some("/bkt/big.bin?")`: copies into the
    /// final key stall, those into a temporary object go through).
    pub stall_copies_to: Arc<Mutex<Option<String>>>,
}

impl Proxy {
    pub fn start(to: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refuse_copies = Arc::new(AtomicBool::new(false));
        let stall_copies = Arc::new(AtomicBool::new(false));
        let stall_copies_to: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (log, refuse, stall) = (seen.clone(), refuse_copies.clone(), stall_copies.clone());
        let stall_to = stall_copies_to.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // the server's answers go back as they come; a refused copy
                // is answered here instead, under the same lock
                let back = Arc::new(Mutex::new(()));
                let back2 = back.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match s2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let _g = back2.lock().unwrap();
                                if c2.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let (log, refuse, stall) = (log.clone(), refuse.clone(), stall.clone());
                let stall_to = stall_to.clone();
                std::thread::spawn(move || {
                    let mut from = BufReader::new(client);
                    let mut to = server;
                    loop {
                        let mut head = Vec::new();
                        let (mut len, mut copy) = (0u64, false);
                        loop {
                            let mut line = String::new();
                            match from.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                                if k.eq_ignore_ascii_case("x-amz-copy-source") {
                                    copy = true;
                                }
                            }
                            let end = line == "\r\n";
                            head.extend_from_slice(line.as_bytes());
                            if end {
                                break;
                            }
                        }
                        let first = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        log.lock().unwrap().push(Seen {
                            line: first.clone(),
                            len,
                            copy,
                        });
                        let stalled = || {
                            stall.load(Ordering::SeqCst)
                                || stall_to
                                    .lock()
                                    .unwrap()
                                    .as_deref()
                                    .is_some_and(|t| first.contains(t))
                        };
                        if copy && stalled() {
                            let until = Instant::now() + Duration::from_secs(120);
                            while stalled() && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            return;
                        }
                        if copy && refuse.load(Ordering::SeqCst) {
                            let mut body = vec![0u8; len as usize];
                            if from.read_exact(&mut body).is_err() {
                                return;
                            }
                            let msg = "<?xml version=\"1.0\"?><Error><Code>NotImplemented</Code>\
                                       <Message>no UploadPartCopy here</Message></Error>";
                            let answer = format!(
                                "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/xml\r\n\
                                 content-length: {}\r\n\r\n{msg}",
                                msg.len()
                            );
                            let _g = back.lock().unwrap();
                            if from.get_mut().write_all(answer.as_bytes()).is_err() {
                                return;
                            }
                            continue;
                        }
                        if to.write_all(&head).is_err() {
                            return;
                        }
                        let mut body = (&mut from).take(len);
                        if std::io::copy(&mut body, &mut to).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Proxy {
            port,
            seen,
            refuse_copies,
            stall_copies,
            stall_copies_to,
        }
    }

    /// The requests seen since the last call.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Bytes sent in request bodies (PUTs and POSTs) among `reqs`.
pub fn bytes_up(reqs: &[Seen]) -> u64 {
    reqs.iter()
        .filter(|r| r.line.starts_with("PUT ") || r.line.starts_with("POST "))
        .map(|r| r.len)
        .sum()
}
