//! An edit to a large object in a bucket sends only what changed: the new
//! version is composed on the server (UploadPartCopy) from the old one's
//! unchanged ranges, found by the chunk map ferry keeps beside it, plus the
//! changed bytes. Against a real S3 server (s3s-fs 0.14.1, which implements
//! UploadPartCopy with a range), through a proxy that counts what is sent
//! and can refuse server-side copies as a server without them would.
mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};
use util::s3::{bytes_up, Proxy, S3Server};
use util::*;

const MIB: usize = 1 << 20;

fn set_mtime_ns(path: &Path, secs: u64, nanos: u32) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

/// Overwrites `data` at each offset with `len` fresh bytes; returns how
/// many bytes changed.
fn edit(data: &mut [u8], at: &[usize], len: usize, seed: u64) -> u64 {
    for (i, &a) in at.iter().enumerate() {
        let fresh = random_bytes(len, seed + i as u64);
        data[a..a + len].copy_from_slice(&fresh);
    }
    (at.len() * len) as u64
}

/// Downloads `s3://bkt/big.bin` and checks bytes, mode and mtime.
fn check_download(s3: &S3Server, dir: &Path, want: &[u8], mtime: (i64, i64)) {
    let back = dir.join("back.bin");
    let _ = std::fs::remove_file(&back);
    ok(s3.ferry(&["cp", "-p", "s3://bkt/big.bin", back.to_str().unwrap()]));
    let got = std::fs::read(&back).unwrap();
    assert!(got == want, "the download differs from the file uploaded");
    let m = std::fs::metadata(&back).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!((m.mtime(), m.mtime_nsec()), mtime);
    std::fs::remove_file(&back).unwrap();
}

#[test]
fn a_one_percent_edit_to_a_large_object_sends_about_what_changed() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 96 * MIB;
    let mut data = random_bytes(size, 20);
    write(&src, &data);
    chmod(&src, 0o640);
    set_mtime_ns(&src, 1_700_000_000, 111_222_333);
    let up = |s3: &S3Server| {
        ok(s3.ferry_via(
            &proxy,
            &["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"],
        ))
    };
    up(&s3);
    let first = proxy.take();
    eprintln!("whole upload: {} bytes up", bytes_up(&first));
    assert!(bytes_up(&first) >= size as u64);
    assert!(!first.iter().any(|r| r.copy), "nothing to copy from yet");
    let map = s3.data.join("bkt/.ferry-chunks/big.bin");
    let map_len = std::fs::metadata(&map)
        .expect("a chunk map beside the object")
        .len();
    assert!(map_len < size as u64 / 200, "{map_len}");
    eprintln!("chunk map: {map_len} bytes");
    // a listing does not show the chunk maps
    let ls = stdout(&ok(s3.ferry(&["ls", "s3://bkt/"])));
    assert!(!ls.contains("ferry-chunks"), "{ls}");

    // 1%, contiguous, in the middle
    let changed = edit(&mut data, &[41 * MIB + 12_345], size / 100, 7);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_100, 5);
    up(&s3);
    let reqs = proxy.take();
    let sent = bytes_up(&reqs);
    let copies = reqs.iter().filter(|r| r.copy).count();
    eprintln!("contiguous 1% edit: {sent} bytes up for {changed} changed ({copies} copies)");
    assert!(copies >= 2, "{reqs:?}");
    assert!(
        sent as f64 <= 1.3 * changed as f64 + 2.0 * map_len as f64,
        "{sent} bytes sent for {changed} changed (chunk map {map_len})"
    );
    assert_eq!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap(), data);
    check_download(&s3, t.path(), &data, (1_700_000_100, 5));

    // 1%, scattered: eight edits 10 MiB apart, the last one at the very end
    let n = size / 100 / 8;
    let at: Vec<usize> = (0..7)
        .map(|i| 7 * MIB + i * 10 * MIB + 999)
        .chain([size - n])
        .collect();
    let changed = edit(&mut data, &at, n, 70);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_200, 999_999_999);
    up(&s3);
    let reqs = proxy.take();
    let sent = bytes_up(&reqs);
    eprintln!("scattered 1% edit: {sent} bytes up for {changed} changed");
    assert!(
        sent as f64 <= 1.3 * changed as f64 + 2.0 * map_len as f64,
        "{sent} bytes sent for {changed} changed (chunk map {map_len})"
    );
    assert_eq!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap(), data);
    check_download(&s3, t.path(), &data, (1_700_000_200, 999_999_999));
    // no temporary object and no unfinished upload is left behind
    assert!(
        s3.files_named(".compose").is_empty(),
        "{:?}",
        s3.files_named(".compose")
    );
    assert!(s3.files_named(".upload_id-").is_empty());
}

#[test]
fn a_server_that_refuses_copies_gets_the_file_whole_and_nothing_half_made() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 40 * MIB;
    let mut data = random_bytes(size, 21);
    write(&src, &data);
    chmod(&src, 0o640);
    set_mtime_ns(&src, 1_700_000_000, 1);
    let up = || {
        ok(s3.ferry_via(
            &proxy,
            &["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"],
        ))
    };
    up();
    proxy.take();
    proxy
        .refuse_copies
        .store(true, std::sync::atomic::Ordering::SeqCst);
    edit(&mut data, &[20 * MIB], 64 << 10, 3);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_050, 2);
    up();
    let reqs = proxy.take();
    // a copy was asked for, refused, and the file then went whole
    assert!(reqs.iter().any(|r| r.copy), "{reqs:?}");
    assert!(bytes_up(&reqs) >= size as u64);
    // the refused upload was aborted: no parts left on the server, no
    // temporary object
    assert!(
        s3.files_named(".upload_id-").is_empty(),
        "{:?}",
        s3.files_named(".upload_id-")
    );
    assert!(s3.files_named(".compose").is_empty());
    assert_eq!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap(), data);
    check_download(&s3, t.path(), &data, (1_700_000_050, 2));
}

#[test]
fn an_object_changed_behind_ferrys_back_is_caught_by_the_copied_parts_etags() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 24 * MIB;
    let mut data = random_bytes(size, 22);
    write(&src, &data);
    chmod(&src, 0o640);
    let up = || {
        ok(s3.ferry_via(
            &proxy,
            &["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"],
        ))
    };
    up();
    // the stored bytes change on the server's disk, its metadata (size,
    // ETag, ferry's BLAKE3) does not: the chunk map still seems to fit
    let stored = s3.data.join("bkt/big.bin");
    std::fs::write(&stored, random_bytes(size, 23)).unwrap();
    proxy.take();
    edit(&mut data, &[10 * MIB], 4096, 5);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_300, 3);
    up();
    let reqs = proxy.take();
    // copies were made, their ETags did not match the file's bytes: the
    // composed upload was dropped and the file went whole
    assert!(reqs.iter().any(|r| r.copy), "{reqs:?}");
    assert!(bytes_up(&reqs) >= size as u64);
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert!(s3.files_named(".upload_id-").is_empty());
    assert!(s3.files_named(".compose").is_empty());
    check_download(&s3, t.path(), &data, (1_700_000_300, 3));
}

#[test]
fn a_composed_upload_killed_mid_way_is_aborted_by_cleanup_and_composed_again() {
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 24 * MIB;
    let mut data = random_bytes(size, 24);
    write(&src, &data);
    chmod(&src, 0o640);
    let args = ["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"];
    ok(s3.ferry_via(&proxy, &args));
    // an edit at the end: the old object's first 24 MiB copied, the last
    // bytes sent; the copy never finishes and ferry is killed
    edit(&mut data, &[size - 4096], 4096, 9);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_400, 4);
    proxy.take();
    proxy
        .stall_copies
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut child = s3
        .command(proxy.port, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journals = t.path().join("cache/ferry/s3-uploads");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(proxy.take().iter().any(|r| r.copy)
        && std::fs::read_dir(&journals).is_ok_and(|mut d| d.next().is_some()))
    {
        assert!(child.try_wait().unwrap().is_none(), "ferry ended by itself");
        assert!(
            std::time::Instant::now() < deadline,
            "no copy was asked for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy
        .stall_copies
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // the old version is still there, whole
    assert_ne!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap(), data);
    let out = stdout(&ok(s3.ferry(&["s3", "cleanup", "s3://bkt/"])));
    assert!(out.contains("s3://bkt/big.bin"), "{out}");
    assert!(
        s3.files_named(".upload_id-").is_empty(),
        "{:?}",
        s3.files_named(".upload_id-")
    );
    // a re-run composes again, sending about the edit
    ok(s3.ferry_via(&proxy, &args));
    let reqs = proxy.take();
    assert!(reqs.iter().any(|r| r.copy));
    assert!(bytes_up(&reqs) < 2 * MIB as u64, "{}", bytes_up(&reqs));
    check_download(&s3, t.path(), &data, (1_700_000_400, 4));
}

#[test]
fn the_delta_fallback_is_told_on_stderr() {
    // a server that refuses server-side copies: the new version goes whole,
    // and the user is told so (not only in a log)
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 24 * MIB;
    let mut data = random_bytes(size, 31);
    write(&src, &data);
    chmod(&src, 0o640);
    let args = ["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"];
    let first = ok(s3.ferry_via(&proxy, &args));
    assert!(!stderr(&first).contains("composed"), "{}", stderr(&first));
    proxy
        .refuse_copies
        .store(true, std::sync::atomic::Ordering::SeqCst);
    edit(&mut data, &[12 * MIB], 4096, 5);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_600, 6);
    let out = ok(s3.ferry_via(&proxy, &args));
    let err = stderr(&out);
    assert!(
        err.contains("big.bin: not composed on the server from the old version (")
            && err.contains("); uploaded whole"),
        "{err}"
    );
    check_download(&s3, t.path(), &data, (1_700_000_600, 6));
}

#[test]
fn cleanup_removes_what_a_composition_killed_mid_way_left() {
    // an edit in the middle: a temporary object (the old bytes before the
    // edit, then the edit) is made first, then the new object is composed;
    // ferry is killed while the copies into the final key hang, leaving the
    // temporary object and the unfinished upload
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let src = t.path().join("big.bin");
    let size = 32 * MIB;
    let mut data = random_bytes(size, 41);
    write(&src, &data);
    chmod(&src, 0o640);
    let args = ["cp", "-p", src.to_str().unwrap(), "s3://bkt/big.bin"];
    ok(s3.ferry_via(&proxy, &args));
    let old = data.clone();
    edit(&mut data, &[16 * MIB], 4096, 7);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_700, 8);
    proxy.take();
    *proxy.stall_copies_to.lock().unwrap() = Some("/bkt/big.bin?".into());
    let mut child = s3
        .command(proxy.port, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !proxy
        .take()
        .iter()
        .any(|r| r.copy && r.line.contains("/bkt/big.bin?"))
    {
        assert!(child.try_wait().unwrap().is_none(), "ferry ended by itself");
        assert!(
            std::time::Instant::now() < deadline,
            "no copy into the key was asked for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    *proxy.stall_copies_to.lock().unwrap() = None;
    let left = s3.files_named(".compose");
    assert!(!left.is_empty(), "no temporary object was left to clean up");
    assert_eq!(std::fs::read(s3.data.join("bkt/big.bin")).unwrap(), old);

    let out = stdout(&ok(s3.ferry(&["s3", "cleanup", "s3://bkt/"])));
    assert!(
        out.contains("aborted the unfinished upload of s3://bkt/big.bin"),
        "{out}"
    );
    assert!(
        out.contains("removed the temporary object s3://bkt/.ferry-chunks/.compose/big.bin."),
        "{out}"
    );
    assert!(out.contains("temporary object(s) removed"), "{out}");
    // nothing is left: no temporary object, no upload's parts
    assert!(
        s3.files_named(".compose").is_empty(),
        "{:?}",
        s3.files_named(".compose")
    );
    assert!(
        s3.files_named(".upload_id-").is_empty(),
        "{:?}",
        s3.files_named(".upload_id-")
    );
    // the listing a user sees holds the object alone
    let ls = stdout(&ok(s3.ferry(&["ls", "s3://bkt/"])));
    assert!(ls.contains("big.bin") && !ls.contains("compose"), "{ls}");
    // and a re-run composes again
    ok(s3.ferry_via(&proxy, &args));
    check_download(&s3, t.path(), &data, (1_700_000_700, 8));
}

#[test]
fn a_large_object_asked_about_long_before_its_bytes_arrive_is_still_composed() {
    // the large file comes first in the walk and 1,500 small ones after it:
    // the receiver asks about all of them (it looks thousands of entries
    // ahead) before the large file's bytes arrive, so what the listing said
    // of it is long forgotten when its upload is chosen; it must still be
    // composed from the old object, whose chunk map stays as it was until
    // the new version is complete
    let t = tmp();
    let s3 = S3Server::start(&t.path().join("s3"), &["bkt"]);
    let proxy = Proxy::start(s3.port);
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let src = tree.join("a.big");
    let size = 24 * MIB;
    let mut data = random_bytes(size, 51);
    write(&src, &data);
    chmod(&src, 0o640);
    for i in 0..1500 {
        write(
            &tree.join(format!("f{i:04}")),
            format!("small {i}").as_bytes(),
        );
    }
    let from = format!("{}/", tree.display());
    let args = ["sync", "-a", from.as_str(), "s3://bkt/tree/"];
    ok(s3.ferry_via(&proxy, &args));
    let map = s3.data.join("bkt/.ferry-chunks/tree/a.big");
    let old_map = std::fs::read(&map).expect("a chunk map beside the object");
    let old = data.clone();

    edit(&mut data, &[12 * MIB], 4096, 52);
    write(&src, &data);
    set_mtime_ns(&src, 1_700_000_800, 9);
    proxy.take();
    *proxy.stall_copies_to.lock().unwrap() = Some("/bkt/tree/a.big?".into());
    let mut child = s3
        .command(proxy.port, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !proxy
        .take()
        .iter()
        .any(|r| r.copy && r.line.contains("/bkt/tree/a.big?"))
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ferry ended without composing tree/a.big from the old object"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no copy into the key was asked for"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // mid-way: the old object and the chunk map that describes it, intact
    assert_eq!(std::fs::read(s3.data.join("bkt/tree/a.big")).unwrap(), old);
    assert!(
        std::fs::read(&map).unwrap() == old_map,
        "the old object's chunk map was replaced before the new version was complete"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    *proxy.stall_copies_to.lock().unwrap() = None;
    ok(s3.ferry(&["s3", "cleanup", "s3://bkt/"]));

    // a re-run composes, sending about the edit
    proxy.take();
    ok(s3.ferry_via(&proxy, &args));
    let reqs = proxy.take();
    assert!(reqs.iter().any(|r| r.copy), "not composed");
    assert!(bytes_up(&reqs) < 2 * MIB as u64, "{}", bytes_up(&reqs));
    assert_eq!(std::fs::read(s3.data.join("bkt/tree/a.big")).unwrap(), data);
    assert_ne!(std::fs::read(&map).unwrap(), old_map);
}
