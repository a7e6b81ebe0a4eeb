//! `s3://` against a real S3 server: `s3s-fs` (installed by
//! `scripts/test.sh`, `cargo install s3s-fs --version 0.14.1 --locked
//! --features binary`) on loopback with its own data directory, where each
//! object is a plain file the test can read or corrupt. The built `ferry`
//! runs with the usual AWS variables, as a user would.
mod util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use util::*;

use util::s3::{S3Server, KEY, SECRET};

impl S3Server {
    /// ferry with other keys than the server's (a wrong secret).
    fn ferry_env(&self, args: &[&str], key: &str, secret: &str) -> Output {
        self.command(self.port, args)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .expect("run ferry")
    }

    /// Runs ferry against `proxy` instead of the server itself.
    fn ferry_counted(&self, proxy: &CountingProxy, args: &[&str]) -> Output {
        self.command(proxy.port, args).output().expect("run ferry")
    }
}

fn set_mtime_ns(path: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn mtime_ns(path: &Path) -> (i64, i64) {
    let m = std::fs::metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// A small tree with odd modes and nanosecond mtimes.
fn make_tree(root: &Path) {
    write(&root.join("a.bin"), random_bytes(3_000_000, 1));
    write(&root.join("empty"), b"");
    write(&root.join("sub/b.txt"), b"hello\n");
    write(&root.join("sub/deeper/c.json"), b"{\"k\": 1}\n");
    write(
        &root.join("sub.txt"),
        b"sorts between sub and sub/ in a flat listing\n",
    );
    chmod(&root.join("a.bin"), 0o640);
    chmod(&root.join("sub/b.txt"), 0o600);
    chmod(&root.join("sub/deeper/c.json"), 0o755);
    for (i, f) in [
        "a.bin",
        "empty",
        "sub/b.txt",
        "sub/deeper/c.json",
        "sub.txt",
    ]
    .iter()
    .enumerate()
    {
        set_mtime_ns(
            &root.join(f),
            1_600_000_000 + i as u64,
            123_456_789 + i as u32,
        );
    }
    for d in ["", "sub", "sub/deeper"] {
        chmod(&root.join(d), 0o755);
    }
}

#[test]
fn a_tree_goes_up_and_comes_back_with_bytes_modes_and_mtimes() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    make_tree(&src);
    ok(s3.ferry(&["cp", "-rp", src.to_str().unwrap(), "s3://bkt/run42/ckpt"]));
    // the objects are there, byte for byte
    let stored = s3.data.join("bkt/run42/ckpt");
    assert_eq!(std::fs::read(stored.join("sub/b.txt")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read(stored.join("a.bin")).unwrap(),
        std::fs::read(src.join("a.bin")).unwrap()
    );
    // ls shows them with their own modes and mtimes
    let ls = stdout(&ok(s3.ferry(&["ls", "s3://bkt/run42/ckpt/"])));
    // (times as ls -l shows them, in local time: 1600000000 is 13 September
    // 2020, 12:26 UTC)
    assert!(
        ls.contains("-rw-r-----         3000000 Sep 1") && ls.contains("  2020 a.bin"),
        "{ls}"
    );
    assert!(ls.contains("sub/"), "{ls}");
    let one = stdout(&ok(s3.ferry(&["ls", "s3://bkt/run42/ckpt/sub/b.txt"])));
    assert!(one.starts_with("-rw-------"), "{one}");

    let back = t.path().join("back");
    ok(s3.ferry(&["cp", "-rp", "s3://bkt/run42/ckpt", back.to_str().unwrap()]));
    assert_same_tree(&src, &back, false);
    assert_eq!(
        mtime_ns(&back.join("sub/b.txt")),
        (1_600_000_002, 123_456_791)
    );

    // sync into a bucket's root and back, by contents
    let back2 = t.path().join("back2");
    ok(s3.ferry(&["sync", "-a", &format!("{}/", src.display()), "s3://bkt/"]));
    ok(s3.ferry(&["sync", "-a", "s3://bkt/sub/", back2.to_str().unwrap()]));
    assert_same_tree(&src.join("sub"), &back2, false);
}

/// Whether two files hold the same bytes, read 16 MiB at a time.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[test]
fn a_large_file_goes_in_parts_and_comes_back_whole() {
    // the issue's 1 GiB: 64 parts of 16 MiB up, 128 ranged reads down, with
    // its mode and nanosecond mtime restored
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["models"]);
    let src = t.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..64 {
            f.write_all(&random_bytes(16 << 20, 100 + i)).unwrap();
        }
    }
    chmod(&src, 0o604);
    set_mtime_ns(&src, 1_700_000_000, 987_654_321);
    ok(s3.ferry(&["cp", "-p", src.to_str().unwrap(), "s3://models/big.bin"]));
    let etag = std::fs::read_dir(&s3.data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("internal"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    // a multipart ETag ends in -<parts>
    assert!(etag.contains("-64"), "not uploaded in 64 parts: {etag}");
    assert!(
        same_bytes(&src, &s3.data.join("models/big.bin")),
        "the object differs"
    );
    let back = t.path().join("back.bin");
    ok(s3.ferry(&["cp", "-p", "s3://models/big.bin", back.to_str().unwrap()]));
    assert!(same_bytes(&src, &back), "the bytes differ");
    let m = std::fs::metadata(&back).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o604);
    assert_eq!(mtime_ns(&back), (1_700_000_000, 987_654_321));
}

#[test]
fn a_byte_flipped_in_the_stored_object_fails_the_download_and_publishes_nothing() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    write(&src.join("model.bin"), random_bytes(20 << 20, 7));
    write(&src.join("fine.txt"), b"untouched\n");
    ok(s3.ferry(&["cp", "-r", src.to_str().unwrap(), "s3://bkt/x"]));
    let stored = s3.data.join("bkt/x/model.bin");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[12_345_678] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let back = t.path().join("back");
    let out = s3.ferry(&["cp", "-r", "s3://bkt/x", back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match the BLAKE3 stored with it"),
        "{}",
        stderr(&out)
    );
    assert!(
        !back.join("model.bin").exists(),
        "a corrupt file was published"
    );
    assert_eq!(
        std::fs::read(back.join("fine.txt")).unwrap(),
        b"untouched\n"
    );
    // nothing half-written at any final path (what was read before the
    // check failed may stay in .ferry-partial, as for any interrupted file:
    // a re-run reads the object again and checks it again)
    let left: Vec<_> = walk_files(&back)
        .into_iter()
        .filter(|p| !p.starts_with(back.join(".ferry-partial")))
        .collect();
    assert_eq!(left, vec![back.join("fine.txt")], "{left:?}");
    let again = s3.ferry(&["sync", "-r", "s3://bkt/x/", &format!("{}/", back.display())]);
    assert_eq!(again.status.code(), Some(23), "{}", stderr(&again));
    assert!(
        !back.join("model.bin").exists(),
        "a corrupt file was published"
    );

    // a single file, too
    let one = t.path().join("one.bin");
    let out = s3.ferry(&["sync", "s3://bkt/x/model.bin", one.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(!one.exists());
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn a_wrong_secret_is_refused_and_never_shown() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("f.txt");
    write(&src, b"x");
    let secret = "not-the-secret-5eb1";
    let out = s3.ferry_env(
        &["cp", src.to_str().unwrap(), "s3://bkt/f.txt"],
        KEY,
        secret,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("403")
            || err.to_lowercase().contains("forbidden")
            || err.contains("Signature"),
        "{err}"
    );
    assert!(!err.contains(secret) && !stdout(&out).contains(secret));
    assert!(!s3.data.join("bkt/f.txt").exists());
    // a bucket that is not there is named
    let out = s3.ferry(&["ls", "s3://nobucket/"]);
    assert!(!out.status.success());
    let _ = SystemTime::now();
}

/// A file to write (path, bytes) in the server's data directory.
type Plant = (PathBuf, Vec<u8>);

/// A loopback HTTP proxy in front of the server that records the method and
/// path of every request passing through (bodies forwarded untouched).
struct CountingProxy {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Flip a byte in the next part uploaded through the proxy.
    corrupt_part: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Before forwarding the next whole-object PUT, write these bytes at
    /// this path (an object in the server's data directory): another
    /// writer creating the key between a run's listing and its upload.
    plant: std::sync::Arc<std::sync::Mutex<Option<Plant>>>,
    /// Answer the next PUT to a probe key (`.ferry-probe-`) with 503
    /// SlowDown, not forwarded: a server throttling requests, which says
    /// nothing about hashes.
    slow_down_probe: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Give every UploadPart but the probe's the server's answer with
    /// another ETag (a plain MD5, of no part sent): what the client sees
    /// when the server stored other bytes than it was sent.
    wrong_part_etags: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CountingProxy {
    fn start(to: u16) -> CountingProxy {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let corrupt_part = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let corrupt = corrupt_part.clone();
        let plant = std::sync::Arc::new(std::sync::Mutex::new(None::<Plant>));
        let planted = plant.clone();
        let slow_down_probe = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow_down = slow_down_probe.clone();
        let wrong_part_etags = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let wrong_etags = wrong_part_etags.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                // a head and its body go in two writes: without this, each
                // body waits for the server's delayed ACK (40 ms a request)
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let log = log.clone();
                let corrupt = corrupt.clone();
                let planted = planted.clone();
                let (slow_down, wrong_etags) = (slow_down.clone(), wrong_etags.clone());
                let server_port = to;
                std::thread::spawn(move || {
                    let mut from = BufReader::new(client);
                    let mut to = server;
                    loop {
                        let mut head = Vec::new();
                        let mut len = 0u64;
                        let mut sums = String::new();
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
                                if k.to_ascii_lowercase().starts_with("x-amz-checksum-") {
                                    sums += &format!(" {}", k.to_ascii_lowercase());
                                }
                                if k.eq_ignore_ascii_case("if-none-match") {
                                    sums += &format!(" if-none-match={}", v.trim());
                                }
                            }
                            let end = line == "\r\n";
                            head.extend_from_slice(line.as_bytes());
                            if end {
                                break;
                            }
                        }
                        let first = String::from_utf8_lossy(&head);
                        let first = format!("{}{sums}\t{len}", first.lines().next().unwrap_or(""));
                        let probe = first.contains(".ferry-probe-");
                        let part = first.starts_with("PUT ") && first.contains("partNumber=");
                        let flip = part
                            && !probe
                            && corrupt.swap(false, std::sync::atomic::Ordering::SeqCst);
                        if first.starts_with("PUT ") && !first.contains("partNumber=") {
                            if let Some((at, bytes)) = planted.lock().unwrap().take() {
                                std::fs::write(at, bytes).unwrap();
                            }
                        }
                        log.lock().unwrap().push(first.clone());
                        // (the answers below go to the client while no other
                        // is on its way: HTTP/1.1 clients here send the next
                        // request on a connection only after the last answer)
                        if probe
                            && first.starts_with("PUT ")
                            && slow_down.swap(false, std::sync::atomic::Ordering::SeqCst)
                        {
                            let mut body = vec![0u8; len as usize];
                            if from.read_exact(&mut body).is_err() {
                                return;
                            }
                            let msg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error>\
                                       <Code>SlowDown</Code><Message>Please reduce your \
                                       request rate.</Message></Error>";
                            let answer = format!(
                                "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\n\
                                 content-length: {}\r\n\r\n{msg}",
                                msg.len()
                            );
                            if from.get_mut().write_all(answer.as_bytes()).is_err() {
                                return;
                            }
                            continue;
                        }
                        if part && !probe && wrong_etags.load(std::sync::atomic::Ordering::SeqCst) {
                            // forwarded on a connection of its own, whose
                            // whole answer is read and passed on, ETag changed
                            let Ok(mut once) =
                                std::net::TcpStream::connect(("127.0.0.1", server_port))
                            else {
                                return;
                            };
                            let text = String::from_utf8_lossy(&head).into_owned();
                            let mut lines: Vec<&str> = text
                                .split("\r\n")
                                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                                .collect();
                            lines.insert(1, "connection: close");
                            let mut body = (&mut from).take(len);
                            if once.write_all(lines.join("\r\n").as_bytes()).is_err()
                                || std::io::copy(&mut body, &mut once).is_err()
                            {
                                return;
                            }
                            let mut answer = Vec::new();
                            let _ = once.read_to_end(&mut answer);
                            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                                return;
                            };
                            let answer_head = String::from_utf8_lossy(&answer[..end]).into_owned();
                            let answer_head: Vec<String> = answer_head
                                .split("\r\n")
                                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                                .map(|l| {
                                    if l.to_ascii_lowercase().starts_with("etag:") {
                                        "etag: \"00000000000000000000000000000000\"".to_string()
                                    } else {
                                        l.to_string()
                                    }
                                })
                                .collect();
                            let mut out = answer_head.join("\r\n").into_bytes();
                            out.extend_from_slice(&answer[end..]);
                            if from.get_mut().write_all(&out).is_err() {
                                return;
                            }
                            continue;
                        }
                        if to.write_all(&head).is_err() {
                            return;
                        }
                        if flip && len > 0 {
                            let mut body = vec![0u8; len as usize];
                            if from.read_exact(&mut body).is_err() {
                                return;
                            }
                            body[len as usize / 2] ^= 0x20;
                            if to.write_all(&body).is_err() {
                                return;
                            }
                            continue;
                        }
                        let mut body = (&mut from).take(len);
                        if std::io::copy(&mut body, &mut to).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CountingProxy {
            port,
            seen,
            corrupt_part,
            plant,
            slow_down_probe,
            wrong_part_etags,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn count(reqs: &[String], method: &str) -> usize {
    reqs.iter()
        .filter(|r| r.starts_with(&format!("{method} ")))
        .count()
}

#[test]
fn an_unchanged_resync_makes_no_put_and_no_head_per_object() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("src");
    const N: usize = 300;
    for i in 0..N {
        let p = src.join(format!("d{}/f{i:04}.txt", i % 7));
        write(&p, format!("object {i}\n"));
        set_mtime_ns(&p, 1_650_000_000 + i as u64, 1 + i as u32);
    }
    let dest = "s3://bkt/data/";
    let src_arg = format!("{}/", src.display());
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    let first = proxy.take();
    assert_eq!(
        count(&first, "PUT"),
        N + 1,
        "one per object and the manifest"
    );

    // nothing changed: listings only
    let out = ok(s3.ferry_counted(&proxy, &["sync", "-a", "--stats", &src_arg, dest]));
    let again = proxy.take();
    assert_eq!(count(&again, "PUT"), 0, "{again:#?}");
    assert_eq!(count(&again, "HEAD"), 0, "{again:#?}");
    // a probe of the prefix, the manifest, and one listing of the prefix
    // and of each of its 7 directories
    assert!(
        again.len() <= 3 + 7,
        "{} requests: {again:#?}\n{}",
        again.len(),
        stdout(&out)
    );

    // and back: the source side reads the manifest, not a HEAD per object
    let back = t.path().join("back");
    ok(s3.ferry_counted(
        &proxy,
        &["sync", "-a", "s3://bkt/data/", back.to_str().unwrap()],
    ));
    let down = proxy.take();
    assert_eq!(count(&down, "HEAD"), 0, "{down:#?}");
    assert_same_tree(&src, &back, false);

    // a same-size edit with a new mtime is sent; only that file
    let edited = src.join("d3/f0003.txt");
    write(&edited, "OBJECT 3\n");
    set_mtime_ns(&edited, 1_700_000_000, 5);
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    let reqs = proxy.take();
    assert_eq!(
        count(&reqs, "PUT"),
        2,
        "the file and the manifest: {reqs:#?}"
    );
    assert_eq!(
        std::fs::read(s3.data.join("bkt/data/d3/f0003.txt")).unwrap(),
        b"OBJECT 3\n"
    );
}

/// The listings among `reqs`: (prefix, delimited), in the order sent.
fn listings(reqs: &[String]) -> Vec<(String, bool)> {
    reqs.iter()
        .filter(|r| r.starts_with("GET ") && r.contains("list-type=2"))
        .map(|r| {
            let query = r.split(' ').nth(1).unwrap().split_once('?').unwrap().1;
            let prefix = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("prefix="))
                .unwrap_or("")
                .replace("%2F", "/")
                .replace(['+'], " ")
                .replace("%20", " ");
            (prefix, query.contains("delimiter=%2F"))
        })
        .collect()
}

#[test]
fn a_tree_listed_a_directory_at_a_time_keeps_s3s_order_both_ways() {
    // Names where S3's byte order and the walk's differ (`a!` `a-b/` `a.txt`
    // sort before `a/`, `a0` after it), prefixes of each other (`a/b` a file
    // beside `a/b2/`), a deep path, and, with pages of 3 keys (a test hook),
    // every directory over several pages, pages ending on a directory. A
    // listing out of order would lose manifest lines (a HEAD) or hide
    // objects the destination has (a PUT), or come back as another tree.
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("src");
    let mut files = vec![
        "a.txt".to_string(),
        "a!".into(),
        "a-b/c".into(),
        "a/b".into(),
        "a/b2/c/d/e/f.txt".into(),
        "a/x.y".into(),
        "a/x/y.txt".into(),
        "a/x/y/z.bin".into(),
        "a0".into(),
        "sp ace/e.txt".into(),
    ];
    files.extend((0..8).map(|i| format!("many/f{i}")));
    files.extend((0..5).map(|i| format!("many/d{i}/g")));
    for (i, f) in files.iter().enumerate() {
        let p = src.join(f);
        write(&p, format!("{f} {}\n", "x".repeat(i)));
        chmod(&p, 0o600 + (i as u32 % 3) * 0o040);
        set_mtime_ns(&p, 1_650_000_000 + i as u64, 9 + i as u32);
    }
    std::fs::create_dir_all(src.join("a/empty")).unwrap();
    let hooked = |args: &[&str]| {
        let mut c = s3.command(proxy.port, args);
        c.env("FERRY_TEST_HOOKS", "1")
            .env("FERRY_TEST_S3_LIST_PAGE", "3");
        c.output().expect("run ferry")
    };
    let src_arg = format!("{}/", src.display());
    let dest = "s3://bkt/t/";
    ok(hooked(&["sync", "-a", &src_arg, dest]));
    for f in &files {
        assert_eq!(
            std::fs::read(s3.data.join("bkt/t").join(f)).ok(),
            std::fs::read(src.join(f)).ok(),
            "{f}: {:?}",
            walk_files(&s3.data.join("bkt/t"))
        );
    }
    proxy.take();

    // unchanged, up: nothing sent, no PUT, no HEAD
    let out = ok(hooked(&["sync", "-a", "--stats", &src_arg, dest]));
    assert_eq!(transferred(&stdout(&out)), 0, "{}", stdout(&out));
    let again = proxy.take();
    assert_eq!(count(&again, "PUT"), 0, "{again:#?}");
    assert_eq!(count(&again, "HEAD"), 0, "{again:#?}");
    // one directory at a time: every listing delimited, and every directory
    // under the prefix listed (a recursive listing walks a whole bucket on
    // s3s-fs for every page)
    let lists = listings(&again);
    assert!(lists.iter().all(|(_, d)| *d), "{lists:#?}");
    // the test's page of 3 keys was asked for, and directories took more
    // than one page
    assert!(
        again
            .iter()
            .any(|r| r.contains("max-keys=3") && r.contains("continuation-token=")),
        "{again:#?}"
    );
    for d in ["t/a/x/y/", "t/a/b2/c/d/e/", "t/many/d4/", "t/sp ace/"] {
        assert!(lists.iter().any(|(p, _)| *p == d), "{d}: {lists:#?}");
    }

    // down into an empty directory, and unchanged again: the same tree
    let back = t.path().join("back");
    ok(hooked(&["sync", "-a", dest, back.to_str().unwrap()]));
    assert_same_tree(&src, &back, false);
    assert_eq!(
        mtime_ns(&back.join("a/x/y/z.bin")),
        mtime_ns(&src.join("a/x/y/z.bin"))
    );
    proxy.take();
    let out = ok(hooked(&[
        "sync",
        "-a",
        "--stats",
        dest,
        back.to_str().unwrap(),
    ]));
    assert_eq!(transferred(&stdout(&out)), 0, "{}", stdout(&out));
    let down = proxy.take();
    assert_eq!(count(&down, "HEAD"), 0, "{down:#?}");
    let lists = listings(&down);
    assert!(
        !lists.is_empty() && lists.iter().all(|(_, d)| *d),
        "{down:#?}"
    );
    assert_same_tree(&src, &back, false);
}

#[test]
fn delete_filters_and_dry_run_work_into_a_bucket() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    write(&src.join("keep.txt"), b"k");
    write(&src.join("sub/x.log"), b"log");
    write(&src.join("sub/y.txt"), b"y");
    let src_arg = format!("{}/", src.display());
    ok(s3.ferry(&["sync", "-a", "--exclude", "*.log", &src_arg, "s3://bkt/p/"]));
    let stored = s3.data.join("bkt/p");
    assert!(stored.join("keep.txt").exists() && stored.join("sub/y.txt").exists());
    assert!(
        !stored.join("sub/x.log").exists(),
        "an excluded file was uploaded"
    );

    std::fs::remove_file(src.join("keep.txt")).unwrap();
    write(&src.join("new.txt"), b"n");
    // -n: says what it would do, does nothing
    let dry = ok(s3.ferry(&["sync", "-a", "-n", "--delete", &src_arg, "s3://bkt/p/"]));
    assert!(stdout(&dry).contains("new.txt"), "{}", stdout(&dry));
    assert!(stored.join("keep.txt").exists() && !stored.join("new.txt").exists());
    ok(s3.ferry(&["sync", "-a", "--delete", &src_arg, "s3://bkt/p/"]));
    assert!(
        !stored.join("keep.txt").exists(),
        "--delete left an extraneous object"
    );
    assert!(stored.join("new.txt").exists());
    // the manifest survives --delete and is never listed
    let ls = stdout(&ok(s3.ferry(&["ls", "s3://bkt/p/"])));
    assert!(!ls.contains(".ferry-manifest"), "{ls}");
    assert!(ls.contains("new.txt") && !ls.contains("keep.txt"), "{ls}");

    // --s3-endpoint wins over AWS_ENDPOINT_URL (here a port nobody listens on)
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let run = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("HOME", &s3.data)
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead_port}"))
            .output()
            .unwrap()
    };
    let flagged = stdout(&ok(run(&["ls", "--s3-endpoint", &endpoint, "s3://bkt/p/"])));
    assert!(flagged.contains("new.txt"), "{flagged}");
    assert!(!run(&["ls", "s3://bkt/p/"]).status.success());
}

/// Bytes sent in part uploads among `reqs`.
fn part_bytes(reqs: &[String]) -> u64 {
    reqs.iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .filter_map(|r| r.rsplit('\t').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn an_upload_killed_mid_way_resumes_from_its_journal() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..16 {
            f.write_all(&random_bytes(16 << 20, 500 + i)).unwrap();
        }
    }
    let size = 256u64 << 20;
    let journals = t.path().join("cache/ferry/s3-uploads");
    let mut child = s3
        .command(
            proxy.port,
            &["cp", src.to_str().unwrap(), "s3://bkt/big.bin"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // kill -9 once half the parts are accepted
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let parts = std::fs::read_dir(&journals)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map_or(0, |t| t.lines().count().saturating_sub(1));
        if parts >= 8 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload ended before it was killed"
        );
        assert!(Instant::now() < deadline, "no parts were journaled");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !s3.data.join("bkt/big.bin").exists(),
        "a killed upload left an object"
    );
    let first = proxy.take();
    assert!(part_bytes(&first) >= 8 * (16 << 20));

    ok(s3.ferry_counted(&proxy, &["cp", src.to_str().unwrap(), "s3://bkt/big.bin"]));
    let again = proxy.take();
    let sent = part_bytes(&again);
    assert!(
        sent * 100 < size * 60,
        "the re-run sent {sent} of {size} bytes in parts: {again:#?}"
    );
    assert!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap() == std::fs::read(&src).unwrap());
    // the journal is gone once the upload completed
    assert_eq!(std::fs::read_dir(&journals).unwrap().count(), 0);
}

#[test]
fn a_bucket_syncs_to_a_daemon_and_back() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    make_tree(&src);
    // a file large enough to be split over the daemon's extra streams
    write(&src.join("big.bin"), random_bytes(40 << 20, 9));
    set_mtime_ns(&src.join("big.bin"), 1_650_000_000, 42);
    ok(s3.ferry(&["sync", "-a", &format!("{}/", src.display()), "s3://bkt/p/"]));

    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let client: Vec<String> = d.client_args();
    let with = |mut a: Vec<String>| {
        a.extend(client.iter().cloned());
        a
    };
    let args = with(vec![
        "sync".into(),
        "-a".into(),
        "s3://bkt/p/".into(),
        d.url("data/run/"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(s3.ferry(&args));
    assert_same_tree(&src, &module.join("run"), false);

    // and from the daemon into another prefix, then down to compare
    let args = with(vec![
        "sync".into(),
        "-a".into(),
        d.url("data/run/"),
        "s3://bkt/q/".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(s3.ferry(&args));
    let back = t.path().join("back");
    ok(s3.ferry(&["sync", "-a", "s3://bkt/q/", &format!("{}/", back.display())]));
    assert_same_tree(&src, &back, false);
}

#[test]
fn a_corrupt_object_sent_to_a_daemon_over_several_streams_is_caught_and_not_published() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    // large enough to be split over streams, were it a local file
    write(&src.join("model.bin"), random_bytes(40 << 20, 11));
    ok(s3.ferry(&["cp", "-r", src.to_str().unwrap(), "s3://bkt/x"]));
    let stored = s3.data.join("bkt/x/model.bin");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[30_000_000] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args: Vec<String> = vec![
        "cp".into(),
        "--streams".into(),
        "2".into(),
        "s3://bkt/x/model.bin".into(),
        d.url("data/model.bin"),
    ];
    args.extend(d.client_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s3.ferry(&args);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match the BLAKE3 stored with it"),
        "{}",
        stderr(&out)
    );
    assert!(
        !module.join("model.bin").exists(),
        "a corrupt object was published at the daemon"
    );
}

#[test]
fn cleanup_aborts_the_uploads_this_host_left_unfinished() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..16 {
            f.write_all(&random_bytes(16 << 20, 900 + i)).unwrap();
        }
    }
    let journals = t.path().join("cache/ferry/s3-uploads");
    let mut child = s3
        .command(
            proxy.port,
            &["cp", src.to_str().unwrap(), "s3://bkt/ckpt/big.bin"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let parts = std::fs::read_dir(&journals)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map_or(0, |t| t.lines().count().saturating_sub(1));
        if parts >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload ended before it was killed"
        );
        assert!(Instant::now() < deadline, "no parts were journaled");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.take();

    // another prefix: nothing to do
    let out = stdout(&ok(
        s3.ferry_counted(&proxy, &["s3", "cleanup", "s3://bkt/other/"])
    ));
    assert!(out.contains("0 unfinished upload(s) aborted"), "{out}");
    assert_eq!(std::fs::read_dir(&journals).unwrap().count(), 1);

    let out = stdout(&ok(
        s3.ferry_counted(&proxy, &["s3", "cleanup", "s3://bkt/"])
    ));
    assert!(out.contains("s3://bkt/ckpt/big.bin"), "{out}");
    assert!(out.contains("1 unfinished upload(s) aborted"), "{out}");
    let reqs = proxy.take();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("DELETE ") && r.contains("uploadId=")),
        "no abort was sent: {reqs:#?}"
    );
    assert_eq!(std::fs::read_dir(&journals).unwrap().count(), 0);
    assert!(!s3.data.join("bkt/ckpt/big.bin").exists());
    // a new upload starts from the beginning and completes
    ok(s3.ferry(&["cp", src.to_str().unwrap(), "s3://bkt/ckpt/big.bin"]));
    assert!(
        std::fs::read(s3.data.join("bkt/ckpt/big.bin")).unwrap() == std::fs::read(&src).unwrap()
    );
    // a bad address is a usage error
    let bad = s3.ferry(&["s3", "cleanup", "/tmp/x"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
}

#[test]
fn each_checksum_header_choice_uploads_and_a_bad_one_is_a_usage_error() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("f.bin");
    write(&src, random_bytes(1 << 20, 3));
    for algo in ["sha256", "crc64nvme", "none"] {
        let dest = format!("s3://bkt/{algo}.bin");
        ok(s3.ferry_counted(
            &proxy,
            &["cp", "--s3-checksum", algo, src.to_str().unwrap(), &dest],
        ));
        let reqs = proxy.take();
        let put = reqs
            .iter()
            .find(|r| r.starts_with(&format!("PUT /bkt/{algo}.bin")))
            .unwrap_or_else(|| panic!("no PUT: {reqs:#?}"));
        match algo {
            "none" => assert!(!put.contains("x-amz-checksum-"), "{put}"),
            _ => assert!(put.contains(&format!("x-amz-checksum-{algo}")), "{put}"),
        }
        assert!(
            std::fs::read(s3.data.join(format!("bkt/{algo}.bin"))).unwrap()
                == std::fs::read(&src).unwrap()
        );
    }
    let bad = s3.ferry(&[
        "cp",
        "--s3-checksum",
        "md5",
        src.to_str().unwrap(),
        "s3://bkt/x",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--s3-checksum"), "{}", stderr(&bad));
}

#[test]
fn a_part_corrupted_on_the_way_is_caught_and_sent_again() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("f.bin");
    write(&src, random_bytes(40 << 20, 77));
    let parts = |reqs: &[String]| {
        reqs.iter()
            .filter(|r| r.contains("partNumber=") && !r.contains("ferry-probe-"))
            .count()
    };
    // the signed payload hash (SigV4) makes the server refuse a part whose
    // bytes changed on the way, with or without a checksum header; the
    // part is sent again and the object is whole
    for algo in ["sha256", "none"] {
        proxy
            .corrupt_part
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let dest = format!("s3://bkt/{algo}.bin");
        let args = ["cp", "--s3-checksum", algo, src.to_str().unwrap(), &dest];
        ok(s3.ferry_counted(&proxy, &args));
        let reqs = proxy.take();
        assert_eq!(parts(&reqs), 4, "3 parts, one of them twice: {reqs:#?}");
        let stored = std::fs::read(s3.data.join(format!("bkt/{algo}.bin"))).unwrap();
        assert!(
            stored == std::fs::read(&src).unwrap(),
            "{algo}: the object differs"
        );
    }
}

/// The requests of the payload probe among `reqs`, and the id of its
/// upload (from its UploadPart's request line).
fn probe_of(reqs: &[String]) -> (Vec<&String>, String) {
    let probes: Vec<&String> = reqs.iter().filter(|r| r.contains("ferry-probe-")).collect();
    let id = probes
        .iter()
        .find_map(|r| r.split("uploadId=").nth(1))
        .map(|r| r.split([' ', '&', '\t']).next().unwrap_or("").to_string())
        .unwrap_or_default();
    (probes, id)
}

/// The files s3s-fs keeps of `upload` (its parts, its record, its
/// metadata): none once it is aborted.
fn upload_left(s3: &S3Server, upload: &str) -> Vec<PathBuf> {
    assert!(!upload.is_empty());
    walk_files(&s3.data)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(upload))
        .collect()
}

#[test]
fn one_probe_learns_that_the_server_checks_signed_payloads_and_leaves_nothing() {
    // s3s refuses an UploadPart whose body is not what its signed
    // x-amz-content-sha256 says: then parts are checked by the server and
    // ferry computes no MD5 of them. One probe per run, however many large
    // files, a throwaway multipart upload that is always aborted: no object,
    // no upload left; a part corrupted on the way is still refused (by the
    // server, not by an ETag check) and sent again.
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let dir = t.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join("a.bin"), random_bytes(20 << 20, 5));
    write(&dir.join("b.bin"), random_bytes(36 << 20, 6));
    proxy
        .corrupt_part
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let args = ["cp", "-r", dir.to_str().unwrap(), "s3://bkt/run/"];
    ok(s3.ferry_counted(&proxy, &args));
    let reqs = proxy.take();
    // the probe: CreateMultipartUpload, part 1 naming the wrong hash
    // (refused: s3s answers a bare 500 InternalError), the same again
    // (refused the same way), part 1 naming the right hash (taken), abort
    let (probes, upload) = probe_of(&reqs);
    let methods: Vec<&str> = probes.iter().map(|r| &r[..r.find(' ').unwrap()]).collect();
    assert_eq!(
        methods,
        ["POST", "PUT", "PUT", "PUT", "DELETE"],
        "one probe: {reqs:#?}"
    );
    assert!(
        probes
            .iter()
            .all(|r| r.contains(" /bkt/.ferry-chunks/run/.ferry-probe-")),
        "{probes:?}"
    );
    assert!(
        probes[4].contains(&format!("uploadId={upload}")),
        "{probes:?}"
    );
    let parts = reqs
        .iter()
        .filter(|r| r.contains("partNumber=") && !r.contains("ferry-probe-"))
        .count();
    assert_eq!(parts, 2 + 3 + 1, "one part sent twice: {reqs:#?}");
    for (name, seed, len) in [("a.bin", 5, 20 << 20), ("b.bin", 6, 36 << 20)] {
        let stored = std::fs::read(s3.data.join("bkt/run").join(name)).unwrap();
        assert!(stored == random_bytes(len, seed), "{name} differs");
    }
    let left: Vec<PathBuf> = walk_files(&s3.data)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("ferry-probe"))
        .collect();
    assert!(left.is_empty(), "the probe left {left:?}");
    let left = upload_left(&s3, &upload);
    assert!(
        left.is_empty(),
        "the probe's upload is still there: {left:?}"
    );
    // and the bucket lists only what was copied
    let out = ok(s3.ferry(&["ls", "s3://bkt/"]));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}

#[test]
fn a_server_that_throttles_the_probe_keeps_the_md5_check_of_every_part() {
    // The probe's wrong-hash part answered with 503 SlowDown says nothing
    // about hashes: every part's ETag stays checked against the MD5 of what
    // was sent. A front that hands back other ETags (as if the server had
    // stored other bytes) makes that check fail the file, and nothing is
    // published. (ferry before this trusted any refusal: it skipped the
    // MD5s and published the file.)
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("big.bin");
    write(&src, random_bytes(20 << 20, 11));
    let on = |flag: &std::sync::atomic::AtomicBool| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst)
    };
    on(&proxy.slow_down_probe);
    on(&proxy.wrong_part_etags);
    let out = s3.ferry_counted(&proxy, &["cp", src.to_str().unwrap(), "s3://bkt/big.bin"]);
    let reqs = proxy.take();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the MD5 of what was sent"),
        "{}",
        stderr(&out)
    );
    assert!(!s3.data.join("bkt/big.bin").exists(), "published");
    // the probe was asked once, refused with 503, and aborted
    let (probes, upload) = probe_of(&reqs);
    let methods: Vec<&str> = probes.iter().map(|r| &r[..r.find(' ').unwrap()]).collect();
    assert_eq!(methods, ["POST", "PUT", "DELETE"], "{reqs:#?}");
    let left = upload_left(&s3, &upload);
    assert!(
        left.is_empty(),
        "the probe's upload is still there: {left:?}"
    );

    // the same front without the 503: s3s refuses the wrong hash, so the
    // server checks each part and ferry computes no MD5 (the ETags it is
    // handed go unread, as documented); the file is there, whole
    ok(s3.ferry_counted(&proxy, &["cp", src.to_str().unwrap(), "s3://bkt/big.bin"]));
    assert!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap() == random_bytes(20 << 20, 11));
}

#[test]
fn with_s3_checksum_none_every_parts_md5_is_checked_and_nothing_is_probed() {
    // --s3-checksum none: no checksum header, so the MD5 of each part is
    // kept whatever the server would answer a probe; none is made. (ferry
    // before this probed, learnt that s3s checks signed hashes, and
    // published the file whose parts came back with other ETags.)
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("big.bin");
    write(&src, random_bytes(20 << 20, 12));
    proxy
        .wrong_part_etags
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let args = [
        "cp",
        "--s3-checksum",
        "none",
        src.to_str().unwrap(),
        "s3://bkt/big.bin",
    ];
    let out = s3.ferry_counted(&proxy, &args);
    let reqs = proxy.take();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the MD5 of what was sent"),
        "{}",
        stderr(&out)
    );
    assert!(!s3.data.join("bkt/big.bin").exists(), "published");
    assert!(
        !reqs.iter().any(|r| r.contains("ferry-probe-")),
        "probed: {reqs:#?}"
    );
    // with the ETags the server gave, the same upload goes through
    proxy
        .wrong_part_etags
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ok(s3.ferry_counted(&proxy, &args));
    assert!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap() == random_bytes(20 << 20, 12));
    // and --help says so
    let help = stdout(&ok(s3.ferry(&["cp", "--help"])));
    let flag = help
        .split("--s3-checksum")
        .nth(1)
        .expect("--s3-checksum in cp --help");
    let flag = flag.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flag.contains("none (for servers that reject the header; each part's ETag is then always checked against the MD5 of what was sent)"),
        "{help}"
    );
}

#[test]
fn ignore_existing_puts_only_if_none_match_and_never_replaces_a_newer_object() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let a = t.path().join("a.txt");
    let b = t.path().join("b.txt");
    std::fs::write(&a, b"first writer's bytes\n").unwrap();
    std::fs::write(&b, b"second writer's other bytes\n").unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    // the upload is conditional with the flag, and only with it
    ok(s3.ferry_counted(&proxy, &["sync", "--ignore-existing", a, "s3://bkt/k"]));
    let reqs = proxy.take();
    let puts: Vec<_> = reqs.iter().filter(|r| r.starts_with("PUT ")).collect();
    assert!(
        puts.iter()
            .any(|r| r.contains("/bkt/k ") && r.contains("if-none-match=*")),
        "{reqs:?}"
    );
    // a file that would otherwise go in parts goes as one conditional PUT
    let big = t.path().join("big.bin");
    std::fs::write(&big, vec![7u8; (17 << 20) + 5]).unwrap();
    let big = big.to_str().unwrap();
    ok(s3.ferry_counted(&proxy, &["sync", "--ignore-existing", big, "s3://bkt/big"]));
    let reqs = proxy.take();
    assert!(!reqs.iter().any(|r| r.contains("partNumber=")), "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("PUT /bkt/big ") && r.contains("if-none-match=*")),
        "{reqs:?}"
    );
    assert_eq!(
        std::fs::metadata(s3.data.join("bkt/big")).unwrap().len(),
        (17 << 20) + 5
    );
    ok(s3.ferry_counted(&proxy, &["cp", a, "s3://bkt/plain"]));
    let reqs = proxy.take();
    assert!(count(&reqs, "PUT") > 0, "{reqs:?}");
    assert!(
        !reqs.iter().any(|r| r.contains("if-none-match")),
        "{reqs:?}"
    );

    // an existing key is skipped: no PUT, the first bytes stay
    let out = ok(s3.ferry_counted(&proxy, &["sync", "--ignore-existing", b, "s3://bkt/k"]));
    let reqs = proxy.take();
    assert_eq!(count(&reqs, "PUT"), 0, "{reqs:?}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(s3.data.join("bkt/k")).unwrap(),
        b"first writer's bytes\n"
    );

    // another writer creates the key after this run listed the bucket and
    // before its upload: the server refuses the conditional PUT, the run
    // says so in one line, and the other writer's object is left whole
    *proxy.plant.lock().unwrap() = Some((s3.data.join("bkt/k2"), b"the other writer\n".to_vec()));
    let out = s3.ferry_counted(&proxy, &["sync", "--ignore-existing", b, "s3://bkt/k2"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("s3://bkt/k2")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("another writer created it"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(s3.data.join("bkt/k2")).unwrap(),
        b"the other writer\n"
    );
}

#[test]
fn two_racing_ignore_existing_writers_leave_one_whole_object() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let a = t.path().join("a.bin");
    let b = t.path().join("b.bin");
    let a_bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let b_bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    // s3s-fs 0.14.1 checks If-None-Match before it takes the body, not
    // atomically with the rename that makes the object: two requests in
    // flight together can both be accepted (counted, not asserted)
    let (mut both_wrote, mut refused, mut none_won, mut mixed) = (0, 0, 0, 0);
    for round in 0..8 {
        let key = format!("s3://bkt/race{round}");
        let run = |src: &Path| {
            let mut c = Command::new(ferry_bin());
            c.args([
                "sync",
                "-v",
                "--ignore-existing",
                src.to_str().unwrap(),
                &key,
            ])
            .env_remove("AWS_PROFILE")
            .env("HOME", &s3.data)
            .env("XDG_CACHE_HOME", s3.data.with_file_name("cache"))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3.port))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            c.spawn().expect("run ferry")
        };
        let (pa, pb) = (run(&a), run(&b));
        let outs = [
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        ];
        if !outs.iter().any(|o| o.status.success()) {
            // s3s-fs took both bodies and mixed one's bytes with the
            // other's metadata: both runs saw it after their upload
            none_won += 1;
        }
        for o in &outs {
            if !o.status.success() {
                // the loser says so, in one line; nothing crashed: refused
                // by the server, or (s3s-fs accepting both) caught by the
                // check after the upload
                let err = stderr(o);
                let lines = err.lines().filter(|l| l.contains("another writer"));
                assert_eq!(lines.count(), 1, "round {round}: {err}");
                assert!(!err.contains("panicked"), "round {round}: {err}");
            }
        }
        let wrote = |o: &Output, name: &str| o.status.success() && stdout(o).contains(name);
        if wrote(&outs[0], "a.bin") && wrote(&outs[1], "b.bin") {
            both_wrote += 1;
        }
        refused += outs
            .iter()
            .filter(|o| stderr(o).contains("another writer created it"))
            .count();
        let stored = std::fs::read(s3.data.join(format!("bkt/race{round}"))).unwrap();
        assert!(
            stored == a_bytes || stored == b_bytes,
            "round {round}: the object is neither writer's bytes ({} bytes)",
            stored.len()
        );
        // it downloads as those bytes, or (its metadata another
        // writer's) the download fails and publishes nothing
        let back = t.path().join(format!("back{round}"));
        let down = s3.ferry(&["cp", &key, back.to_str().unwrap()]);
        if down.status.success() {
            assert_eq!(std::fs::read(&back).unwrap(), stored, "round {round}");
        } else {
            assert!(!back.exists(), "round {round}: {}", stderr(&down));
            // s3s-fs accepted both and kept one's bytes under the other's
            // metadata (the ETag the winner checked included): the
            // download's BLAKE3 check is what catches it
            assert!(
                stderr(&down).contains("does not match the BLAKE3 stored with it"),
                "round {round}: {}",
                stderr(&down)
            );
            mixed += 1;
        }
    }
    eprintln!(
        "8 races: {refused} conditional PUT(s) refused; s3s-fs accepted both in \
         {both_wrote} (both runs wrote) + {none_won} (neither run's check passed); \
         {mixed} stored one's bytes under the other's metadata"
    );
}

/// Runs `cmd` to the end; its peak resident memory (KiB: the kernel's
/// VmHWM of that process, read every 10 ms while it runs, so at most the
/// last 10 ms are missed) and its stdout. Fails the test, with its stderr,
/// if it fails.
fn peak_kib(mut cmd: Command, log: &Path) -> (u64, String) {
    let out = log.with_extension("out");
    let err = log.with_extension("err");
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run ferry");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ferry ran for 10 minutes");
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .unwrap_or(0);
        peak = peak.max(hwm);
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "ferry failed ({status}): {}\n{stdout}",
        std::fs::read_to_string(&err).unwrap()
    );
    assert!(peak > 0, "no VmHWM read");
    (peak, stdout)
}

/// "Number of files transferred" of `--stats` output.
fn transferred(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("Number of files transferred:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no stats in:\n{out}"))
}

/// `n` small files in 10 directories, names with dots (which S3 lists
/// before a `/`).
fn many_files(root: &Path, n: usize) {
    for i in 0..n {
        let p = root.join(format!("d{}/f{i:06}.txt", i % 10));
        write(&p, format!("object {i}\n"));
        set_mtime_ns(&p, 1_650_000_000 + i as u64, 7);
    }
}

#[test]
fn a_bucket_of_twenty_thousand_objects_syncs_in_flat_memory_and_resyncs_with_no_put_or_head() {
    // The engine itself keeps a little per listed file (its list, as for a
    // local sync); the S3 store must add nothing per object: the listing
    // and the manifest stream. Measured as the growth of peak RSS from
    // 5,000 to 20,000 objects, against the growth of a local sync of the
    // same trees. Before the listing streamed, the S3 side grew by ~7 MiB
    // (upload) and ~15 MiB (download) more than the local one.
    // The same runs, through a proxy that counts requests, prove that an
    // unchanged re-sync (of 5,000 and of 20,000 objects, so also of the
    // issue's 10,000) makes no PUT and no HEAD per object, both ways: one
    // upload of each tree serves both proofs. The two sizes run side by
    // side (each through its own proxy; peak RSS is each process's own), and
    // the test's name sorts first so that it starts first: it is the
    // longest, s3s-fs's listing being O(n²).
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let logs = t.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = |n: usize| {
        let proxy = CountingProxy::start(s3.port);
        let src = t.path().join(format!("src{n}"));
        many_files(&src, n);
        let src_arg = format!("{}/", src.display());
        let dest = format!("s3://bkt/n{n}/");
        // synced up: one PUT per object, every object there
        let log = logs.join(format!("up{n}"));
        let (_, out) = peak_kib(
            s3.command(proxy.port, &["sync", "-a", "--stats", &src_arg, &dest]),
            &log,
        );
        assert_eq!(transferred(&out), n as u64 + 10, "files and dirs: {out}");
        let first = proxy.take();
        assert_eq!(puts_of(&first, ".txt"), n, "one PUT per object");
        let stored = walk_files(&s3.data.join(format!("bkt/n{n}")));
        assert_eq!(stored.len(), n + 1, "the objects and the manifest");
        // unchanged, both ways: the whole listing is walked, nothing moves
        let mut rss = Vec::new();
        for (what, args) in [
            (
                "resync",
                ["sync", "-a", "--stats", src_arg.as_str(), dest.as_str()],
            ),
            (
                "down",
                [
                    "sync",
                    "-a",
                    "--stats",
                    dest.as_str(),
                    src.to_str().unwrap(),
                ],
            ),
        ] {
            let (peak, out) = peak_kib(
                s3.command(proxy.port, &args),
                &logs.join(format!("{what}{n}")),
            );
            assert_eq!(transferred(&out), 0, "{what}: nothing to move: {out}");
            let reqs = proxy.take();
            assert_eq!(count(&reqs, "PUT"), 0, "{what} {n}: {reqs:#?}");
            assert_eq!(count(&reqs, "HEAD"), 0, "{what} {n}: {reqs:#?}");
            // a probe of the root, the manifest, and the listing's pages
            // (one directory at a time: the root's, then each of the 10
            // directories', asked for ahead in a first page of 500 keys,
            // then pages of 2,000, as s3s-fs does not cap them at 1,000 as
            // AWS does): no request per object
            let per_dir = 1 + (n / 10).saturating_sub(500).div_ceil(2000);
            assert!(
                reqs.len() <= 3 + 10 * per_dir,
                "{what} {n}: {} requests: {reqs:#?}\n{out}",
                reqs.len(),
            );
            rss.push(peak);
        }
        // the engine's share: the same unchanged sync between local trees
        let copy = t.path().join(format!("copy{n}"));
        ok(ferry(["sync", "-a", &src_arg, copy.to_str().unwrap()]));
        let mut c = Command::new(ferry_bin());
        c.args(["sync", "-a", "--stats", &src_arg, copy.to_str().unwrap()]);
        let (local, _) = peak_kib(c, &logs.join(format!("local{n}")));
        std::fs::remove_dir_all(&copy).unwrap();
        (rss[0], rss[1], local)
    };
    let peaks = std::thread::scope(|s| {
        let small = s.spawn(|| run(5_000));
        let large = s.spawn(|| run(20_000));
        [small.join().unwrap(), large.join().unwrap()]
    });
    let (up5, down5, local5) = peaks[0];
    let (up20, down20, local20) = peaks[1];
    let engine = local20 as i64 - local5 as i64;
    // 4 MiB over 15,000 objects: ~280 bytes an object would break it
    const MARGIN: i64 = 4 << 10;
    let shown = format!(
        "peak RSS KiB at 5,000 / 20,000 objects: upload re-sync {up5} / {up20}, \
         download re-sync {down5} / {down20}, local {local5} / {local20}"
    );
    eprintln!("{shown}");
    assert!(up20 as i64 - up5 as i64 <= engine + MARGIN, "{shown}");
    assert!(down20 as i64 - down5 as i64 <= engine + MARGIN, "{shown}");
}

/// PUTs of whole objects (not parts) among `reqs` whose path ends in `end`.
fn puts_of(reqs: &[String], end: &str) -> usize {
    reqs.iter()
        .filter(|r| r.starts_with("PUT ") && !r.contains("partNumber="))
        .filter(|r| r.split(' ').nth(1).is_some_and(|p| p.ends_with(end)))
        .count()
}

#[test]
fn a_mode_or_mtime_change_alone_uploads_nothing_and_empty_directories_come_back() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = CountingProxy::start(s3.port);
    let src = t.path().join("src");
    write(&src.join("a.txt"), random_bytes(100_000, 3));
    write(&src.join("sub/b.txt"), b"b\n");
    std::fs::create_dir_all(src.join("empty/inner")).unwrap();
    std::fs::create_dir_all(src.join("sub/hollow")).unwrap();
    chmod(&src.join("a.txt"), 0o644);
    chmod(&src.join("empty"), 0o750);
    chmod(&src.join("sub/hollow"), 0o700);
    set_mtime_ns(&src.join("a.txt"), 1_600_000_000, 11);
    set_mtime_ns(&src.join("sub/b.txt"), 1_600_000_001, 22);
    for (d, s) in [
        ("empty/inner", 3),
        ("empty", 4),
        ("sub/hollow", 5),
        ("sub", 6),
    ] {
        let t = UNIX_EPOCH + Duration::new(1_500_000_000 + s, 9);
        std::fs::File::open(src.join(d))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let src_arg = format!("{}/", src.display());
    let dest = "s3://bkt/m/";
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    proxy.take();

    // empty directories, and every directory's mode and mtime, come back
    let back = t.path().join("back");
    ok(s3.ferry(&["sync", "-a", dest, back.to_str().unwrap()]));
    assert!(back.join("empty/inner").is_dir());
    assert!(back.join("sub/hollow").is_dir());
    // (the root directory's own mtime is not kept: the snapshot leaves it out)
    assert_eq!(snapshot(&src, true), snapshot(&back, true));

    // unchanged: nothing written, not even the manifest
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    let again = proxy.take();
    assert_eq!(count(&again, "PUT"), 0, "{again:#?}");

    // a mode changed alone: the manifest is written, no object
    chmod(&src.join("a.txt"), 0o600);
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    let reqs = proxy.take();
    assert_eq!(count(&reqs, "PUT"), 1, "{reqs:#?}");
    assert_eq!(puts_of(&reqs, ".ferry-manifest"), 1, "{reqs:#?}");
    assert_eq!(count(&reqs, "HEAD"), 0, "{reqs:#?}");

    // an mtime changed alone (the same bytes, touched): sent to this host,
    // not uploaded
    set_mtime_ns(&src.join("a.txt"), 1_700_000_000, 33);
    ok(s3.ferry_counted(&proxy, &["sync", "-a", &src_arg, dest]));
    let reqs = proxy.take();
    assert_eq!(count(&reqs, "PUT"), 1, "{reqs:#?}");
    assert_eq!(puts_of(&reqs, ".ferry-manifest"), 1, "{reqs:#?}");

    // what comes back has the new mode and mtime
    let back2 = t.path().join("back2");
    ok(s3.ferry(&["sync", "-a", dest, back2.to_str().unwrap()]));
    let m = std::fs::metadata(back2.join("a.txt")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(mtime_ns(&back2.join("a.txt")), (1_700_000_000, 33));
    // and so does a sync onto the first copy
    ok(s3.ferry(&["sync", "-a", dest, back.to_str().unwrap()]));
    assert_eq!(
        std::fs::metadata(back.join("a.txt")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(mtime_ns(&back.join("a.txt")), (1_700_000_000, 33));
}

/// A loopback TCP proxy in front of the server that passes what the server
/// sends at `rate` bytes a second at most (a slow link); returns its port
/// and a count of the GET requests for `key` that went through.
fn slow_link(
    to: u16,
    rate: u64,
    key: &'static str,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let gets = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = gets.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let counted = counted.clone();
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let want = format!("GET /{key}");
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = c2.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let seen = String::from_utf8_lossy(&buf[..n]).matches(&want).count();
                    counted.fetch_add(seen, SeqCst);
                    if s2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, gets)
}

#[test]
fn a_download_on_a_slow_link_outlives_any_whole_request_timeout() {
    // One ranged GET (8 MiB) through a link of 200 KiB/s takes ~40 s: more
    // than object_store's default whole-request timeout (30 s), which cuts
    // it off (arrow-rs-object-store#386; object_store 0.14 then asks again
    // for the rest, so such a download still ends, a request every 30 s, as
    // long as its retries last). ferry sets a stall timeout instead: the one
    // GET runs to its end. (The issue's 20 Mbit/s for minutes is the same
    // request shape, scaled down to keep the test short.)
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("slow.bin");
    write(&src, random_bytes(8 << 20, 77));
    ok(s3.ferry(&["cp", src.to_str().unwrap(), "s3://bkt/slow.bin"]));
    let (port, gets) = slow_link(s3.port, 200 << 10, "bkt/slow.bin");
    let back = t.path().join("back.bin");
    let started = Instant::now();
    let out = s3
        .command(port, &["cp", "s3://bkt/slow.bin", back.to_str().unwrap()])
        .output()
        .unwrap();
    let took = started.elapsed();
    let out = ok(out);
    assert!(
        took > Duration::from_secs(35),
        "the link was not slow enough to prove anything: {took:?}\n{}",
        stdout(&out)
    );
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap(),
        "the bytes differ"
    );
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the GET was cut off and sent again"
    );
}

/// Runs `cmd` (ferry, `TMPDIR` set to `tmpdir`) to the end, watching it
/// every 10 ms: its peak resident memory (KiB, VmHWM) and every file it
/// held open under `tmpdir` (an unnamed spool file shows as
/// `tmpdir/#123 (deleted)` among its descriptors, though the directory
/// lists nothing), and whether any name appeared in `tmpdir`. Its output.
fn watched(mut cmd: Command, tmpdir: &Path) -> (u64, Vec<String>, Output) {
    let mut child = cmd
        .env("TMPDIR", tmpdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry");
    let pid = child.id();
    let mut peak = 0u64;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ferry ran for 5 minutes");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        // a file's data spooled here passes 1 MiB within milliseconds; the
        // run's closing manifest (a line per object) is spooled too, and is
        // far smaller
        let big = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 1 << 20);
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(to) = std::fs::read_link(fd.path()) {
                    if to.starts_with(tmpdir) && big(&fd.path()) {
                        seen.push(to.display().to_string());
                    }
                }
            }
        }
        for e in std::fs::read_dir(tmpdir).unwrap().flatten() {
            if big(&e.path()) {
                seen.push(e.path().display().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (peak, seen, out)
}

#[test]
fn a_large_file_streams_up_with_no_spool_file_in_bounded_memory_and_comes_back_whole() {
    // 200 MiB: 13 parts of 16 MiB, sent as they arrive (at most 4 in
    // flight and one filling): nothing is written on this host, and the
    // client's memory stays far below the file's size
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..25 {
            f.write_all(&random_bytes(8 << 20, 4000 + i)).unwrap();
        }
    }
    chmod(&src, 0o640);
    set_mtime_ns(&src, 1_710_000_000, 123_456_789);
    let spool = t.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let cmd = s3.command(
        s3.port,
        &["cp", "-p", src.to_str().unwrap(), "s3://bkt/ckpt/big.bin"],
    );
    let (peak, seen, out) = watched(cmd, &spool);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(seen.is_empty(), "a spool file was used: {seen:?}");
    assert!(
        peak < 140 << 10,
        "peak RSS {} MiB for a 200 MiB file",
        peak >> 10
    );
    assert!(
        same_bytes(&src, &s3.data.join("bkt/ckpt/big.bin")),
        "the object differs"
    );
    // no upload left behind on the server or in the journal
    assert!(s3.files_named(".upload_id").is_empty());
    let journals = t.path().join("cache/ferry/s3-uploads");
    assert_eq!(
        std::fs::read_dir(&journals).map_or(0, |d| d.count()),
        0,
        "a journal was left"
    );
    // down again, checked against the BLAKE3 the chunk map holds for it
    // (its metadata names the map; the object itself has mode and mtime)
    let back = t.path().join("back.bin");
    ok(s3.ferry(&["cp", "-p", "s3://bkt/ckpt/big.bin", back.to_str().unwrap()]));
    assert!(same_bytes(&src, &back), "the bytes differ");
    assert_eq!(std::fs::metadata(&back).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(mtime_ns(&back), (1_710_000_000, 123_456_789));
    // a flipped byte in the stored object is caught by that check
    let stored = s3.data.join("bkt/ckpt/big.bin");
    {
        use std::io::{Seek, Write};
        use std::os::unix::fs::FileExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&stored)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(150 << 20)).unwrap();
        let mut b = [0u8; 1];
        std::fs::File::open(&src)
            .unwrap()
            .read_exact_at(&mut b, 150 << 20)
            .unwrap();
        f.write_all(&[b[0] ^ 1]).unwrap();
    }
    let bad = t.path().join("bad.bin");
    let out = s3.ferry(&["cp", "s3://bkt/ckpt/big.bin", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match the BLAKE3 stored with it"),
        "{}",
        stderr(&out)
    );
    assert!(!bad.exists());
}

#[test]
fn a_stream_corrupted_on_its_way_leaves_no_object_and_no_upload() {
    // the byte at 40 MiB of the stream into the bucket is flipped (a test
    // hook): two parts are already on the server when the file's check
    // fails at its end; the upload is aborted, nothing is at the key
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("big.bin");
    write(&src, random_bytes(64 << 20, 4100));
    let out = s3
        .command(s3.port, &["cp", src.to_str().unwrap(), "s3://bkt/big.bin"])
        .env("FERRY_TEST_HOOKS", "1")
        .env("FERRY_TEST_S3_FLIP_AT", (40u64 << 20).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("verification failed"),
        "{}",
        stderr(&out)
    );
    assert!(!s3.data.join("bkt/big.bin").exists(), "an object was left");
    assert!(
        s3.files_named(".upload_id").is_empty(),
        "the upload's parts were left: {:?}",
        s3.files_named(".upload_id")
    );
    let journals = t.path().join("cache/ferry/s3-uploads");
    assert_eq!(std::fs::read_dir(&journals).map_or(0, |d| d.count()), 0);
    // without the hook the same command puts it there whole
    ok(s3.ferry(&["cp", src.to_str().unwrap(), "s3://bkt/big.bin"]));
    assert!(same_bytes(&src, &s3.data.join("bkt/big.bin")));
}

#[test]
fn ls_of_a_prefix_with_nothing_under_it_fails_and_an_empty_bucket_lists_nothing() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt", "empty"]);
    let src = t.path().join("d");
    std::fs::create_dir(&src).unwrap();
    write(&src.join("a"), b"a\n");
    ok(s3.ferry(&["cp", "-r", src.to_str().unwrap(), "s3://bkt/"]));
    // nothing there: one line naming the address, exit 1, nothing listed
    for (addr, shown) in [
        ("s3://bkt/missing/", "s3://bkt/missing"),
        ("s3://bkt/missing", "s3://bkt/missing"),
        ("s3://bkt/d/missing/", "s3://bkt/d/missing"),
        ("s3://empty/missing/", "s3://empty/missing"),
    ] {
        let out = s3.ferry(&["ls", addr]);
        assert_eq!(out.status.code(), Some(1), "{addr}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!("ferry: {shown}: no such object or prefix\n"),
            "{addr}"
        );
        assert_eq!(stdout(&out), "", "{addr}");
    }
    // a bucket that does not exist is named (the server said so: exit 12)
    for addr in ["s3://no-such-bucket/", "s3://no-such-bucket/x/"] {
        let out = s3.ferry(&["ls", addr]);
        assert_eq!(out.status.code(), Some(12), "{addr}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("s3://no-such-bucket/"), "{err}");
        assert!(err.contains("no such bucket"), "{err}");
        assert_eq!(stdout(&out), "", "{addr}");
    }
    // an empty bucket that exists: nothing to list, no error
    for addr in ["s3://empty/", "s3://empty"] {
        let out = ok(s3.ferry(&["ls", addr]));
        assert_eq!(stdout(&out), "", "{addr}");
        assert_eq!(stderr(&out), "", "{addr}");
    }
    // and what is there is listed
    let out = ok(s3.ferry(&["ls", "s3://bkt/d/"]));
    assert!(stdout(&out).ends_with(" a\n"), "{}", stdout(&out));
}
