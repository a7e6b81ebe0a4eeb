//! The conversation, pinned: a client and a server run over in-process pipes
//! with a tee in each direction that decodes every frame, and what each side
//! said is compared with a golden file under `tests/golden/transcript/`.
//!
//! This is the guard for refactoring the session: moving code between files,
//! splitting the sender and receiver, putting stores behind traits. Wire bytes
//! and message order must not change, and this test is what notices if they do.
//!
//! Per direction it records the multiset of messages (name, file index, and the
//! payload length or, where the payload carries paths or times, the fields that
//! do not), then each file's messages in the order they were sent. Threads on
//! both sides make the interleaving of different files vary from run to run;
//! neither record depends on it. Progress and overall-progress events are left
//! out: their cadence follows how data happened to be batched and the clock.
//! The keys a receiver draws for rebuilt files are random, but their length is
//! not.
//!
//! `FERRY_BLESS=1 cargo test --test transcript` rewrites the golden files.

mod util;
use ferry::proto::frame::payload_len;
use ferry::proto::{EventKind, Message, Options, Request, Role, Summary};
use ferry::session::wire::Counters;
use ferry::session::{run_client, serve, Cancel, Stream};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use util::*;

/// What one direction of a session carried.
#[derive(Default)]
struct Transcript {
    /// Every message, described, with how often it came; file data (`Data`,
    /// `Segment`) is counted per file with its payloads' total length.
    all: BTreeMap<String, (usize, usize)>,
    /// Each file's messages in order, runs of equal ones counted, in two
    /// lanes: the sender sends a file's spans and their end without waiting,
    /// while the chunk lists and data answer the receiver's `Need`s, so
    /// where `RecipeEnd` falls among those is a race and not recorded.
    by_file: BTreeMap<(u32, Lane), Vec<(String, usize)>>,
    /// Data frames are recorded as "some data", not one by one: for a
    /// source read while it changes, where the sender had read to is a race.
    loose_data: bool,
}

/// See [`Transcript::by_file`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Lane {
    Answers,
    Spans,
}

impl Transcript {
    fn record(&mut self, msg: &Message, payload_len: usize) {
        let Some(mut desc) = describe(msg, payload_len) else {
            return;
        };
        if let (true, Message::Finish(s)) = (self.loose_data, msg) {
            // how much was read before the source changed is a race
            desc = format!("Finish {:?}", Summary { literal: 0, ..*s });
        }
        let data = matches!(msg, Message::Data { .. } | Message::Segment { .. });
        let key = match (data, file_of(msg)) {
            (true, Some(f)) => format!("{} file={f}", msg.name()),
            _ => desc.clone(),
        };
        let counted = self.all.entry(key).or_default();
        counted.0 += 1;
        counted.1 += payload_len;
        if data && self.loose_data {
            desc = format!("{} file={}", msg.name(), file_of(msg).unwrap_or(0));
        }
        if let Some(file) = file_of(msg) {
            let lane = match msg {
                Message::Spans { .. } | Message::RecipeEnd { .. } => Lane::Spans,
                _ => Lane::Answers,
            };
            let seq = self.by_file.entry((file, lane)).or_default();
            match seq.last_mut() {
                Some((last, n)) if *last == desc => *n += 1,
                _ => seq.push((desc, 1)),
            }
        }
    }

    fn render(&self, out: &mut String) {
        for (desc, (n, bytes)) in &self.all {
            if desc.starts_with("Data ") || desc.starts_with("Segment ") {
                if self.loose_data {
                    out.push_str(&format!("     some × {desc}\n"));
                } else {
                    out.push_str(&format!("  {n:>4} × {desc} ({bytes} bytes)\n"));
                }
            } else {
                out.push_str(&format!("  {n:>4} × {desc}\n"));
            }
        }
        for ((file, lane), seq) in &self.by_file {
            match lane {
                Lane::Answers => out.push_str(&format!("  file {file}:")),
                Lane::Spans => out.push_str(&format!("  file {file} spans:")),
            }
            for (desc, n) in seq {
                // the file is the line's: keep the name and length
                let short = desc.replace(&format!(" file={file}"), "");
                let short = short.replace(" len=", ":");
                if short.starts_with("Data") && self.loose_data {
                    out.push_str(&format!(" {short}…"));
                } else if *n == 1 {
                    out.push_str(&format!(" {short}"));
                } else {
                    out.push_str(&format!(" {short}×{n}"));
                }
            }
            out.push('\n');
        }
    }
}

fn file_of(msg: &Message) -> Option<u32> {
    match msg {
        Message::Want { file, .. }
        | Message::Spans { file, .. }
        | Message::Recipe { file, .. }
        | Message::RecipeEnd { file, .. }
        | Message::Need { file, .. }
        | Message::Data { file, .. }
        | Message::FileEnd { file, .. }
        | Message::FileFailed { file, .. }
        | Message::Segment { file, .. }
        | Message::SegmentEnd { file, .. } => Some(*file),
        _ => None,
    }
}

/// One line for a message, or `None` for what the transcript leaves out.
fn describe(msg: &Message, len: usize) -> Option<String> {
    let name = msg.name();
    let file = file_of(msg)
        .map(|f| format!(" file={f}"))
        .unwrap_or_default();
    Some(match msg {
        // paths (temporary directories) and times: not the same run to run
        Message::Request(r) => format!("{name} {:?}", r.role),
        Message::Entry(e) => format!(
            "{name} {:?} {} size={} link_to={:?} target={}",
            e.kind,
            String::from_utf8_lossy(&e.name),
            if e.kind == ferry::proto::Kind::Dir {
                0
            } else {
                e.size
            },
            e.link_to,
            e.target.len()
        ),
        Message::Event(ev) => match ev.kind {
            EventKind::Progress | EventKind::Overall => return None,
            k => format!("{name} {k:?} {}", String::from_utf8_lossy(&ev.name)),
        },
        Message::Fatal(_) | Message::FileFailed { .. } => format!("{name}{file}"),
        Message::Finish(s) => format!("{name} {s:?}"),
        _ => format!("{name}{file} len={len}"),
    })
}

/// Sees each message before the tee passes it on.
type Hook = Arc<dyn Fn(Way, &Message) + Send + Sync>;

/// Which way a message went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    ToServer,
    ToClient,
}

/// Copies one direction of the session from `from` to `to`, decoding each
/// frame into `log` after the raw handshake of `hello` bytes. `hook` sees
/// each message before it is passed on.
fn tee(
    mut from: impl Read,
    mut to: impl Write,
    hello: usize,
    log: Arc<Mutex<Transcript>>,
    way: Way,
    hook: Hook,
) {
    // once the other side has gone, keep reading so this side is not stuck
    let mut raw = vec![0u8; hello];
    if from.read_exact(&mut raw).is_err() {
        return;
    }
    let mut open = to.write_all(&raw).is_ok();
    loop {
        let mut head = [0u8; 4];
        if from.read_exact(&mut head).is_err() {
            return;
        }
        let len = payload_len(head).expect("a frame within the limit");
        let mut payload = vec![0u8; len];
        if from.read_exact(&mut payload).is_err() {
            return;
        }
        let msg = Message::decode(&payload).expect("a well-formed message");
        log.lock().unwrap().record(&msg, len);
        hook(way, &msg);
        if open {
            open = to.write_all(&head).is_ok() && to.write_all(&payload).is_ok();
        }
    }
}

/// A push of `src` into `dest` through `serve` on a thread, both directions
/// teed; `hook` sees each message before it is passed on. Returns the
/// rendered transcript.
fn push(src: &Path, dest: &Path, options: Options) -> String {
    push_with(src, dest, options, Arc::new(|_, _| {}), false)
}

/// [`push`] with a hook, and data recorded loosely (see [`Transcript`]).
fn push_with(src: &Path, dest: &Path, options: Options, hook: Hook, loose_data: bool) -> String {
    let bytes = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    let request = Request {
        role: Role::ServerReceives,
        paths: vec![bytes(dest)],
        options,
    };
    let mut src_arg = bytes(src);
    src_arg.push(b'/');
    run_pair(request, vec![src_arg], hook, loose_data)
}

/// A pull of `src` into `dest`: the server sends.
fn pull(src: &Path, dest: &Path, options: Options) -> String {
    let bytes = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    let mut src_arg = bytes(src);
    src_arg.push(b'/');
    let request = Request {
        role: Role::ServerSends,
        paths: vec![src_arg],
        options,
    };
    run_pair(request, vec![bytes(dest)], Arc::new(|_, _| {}), false)
}

fn run_pair(request: Request, local: Vec<Vec<u8>>, hook: Hook, loose_data: bool) -> String {
    let transcript = || {
        Arc::new(Mutex::new(Transcript {
            loose_data,
            ..Transcript::default()
        }))
    };
    let (up, down) = (transcript(), transcript());
    let (client_r, tee_down_w) = std::io::pipe().unwrap();
    let (tee_down_r, server_w) = std::io::pipe().unwrap();
    let (tee_up_r, client_w) = std::io::pipe().unwrap();
    let (server_r, tee_up_w) = std::io::pipe().unwrap();
    let log = up.clone();
    let h = hook.clone();
    let tee_up = std::thread::spawn(move || tee(tee_up_r, tee_up_w, 9, log, Way::ToServer, h));
    let log = down.clone();
    let tee_down =
        std::thread::spawn(move || tee(tee_down_r, tee_down_w, 7, log, Way::ToClient, hook));
    let server = std::thread::spawn(move || {
        serve(Stream {
            reader: Box::new(server_r),
            writer: Box::new(server_w),
            in_process: false,
        })
    });
    let client = run_client(
        Stream {
            reader: Box::new(client_r),
            writer: Box::new(client_w),
            in_process: false,
        },
        request,
        local,
        &|_| {},
        &Cancel::default(),
        Arc::new(Counters::default()),
    );
    let server = server.join().expect("the server thread");
    tee_up.join().expect("the client-to-server tee");
    tee_down.join().expect("the server-to-client tee");
    let outcome = |r: Result<ferry::proto::Summary, ferry::error::TransferError>| match r {
        Ok(s) if loose_data => format!("ok {:?}", Summary { literal: 0, ..s }),
        Ok(s) => format!("ok {s:?}"),
        Err(e) => format!("error: {}", scrub(&e.to_string())),
    };
    let mut out = String::new();
    out.push_str(&format!("client: {}\n", outcome(client)));
    out.push_str(&format!("server: {}\n", outcome(server)));
    out.push_str("client -> server:\n");
    up.lock().unwrap().render(&mut out);
    out.push_str("server -> client:\n");
    down.lock().unwrap().render(&mut out);
    out
}

/// Error texts name temporary paths: keep only what follows the test's
/// temporary directory.
fn scrub(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(at) = out.find("/ferry-test-") {
        let end = out[at + 1..].find('/').map_or(out.len(), |e| at + 1 + e);
        out.replace_range(at..end, "<tmp>");
    }
    out
}

fn options() -> Options {
    Options {
        recursive: true,
        links: true,
        perms: true,
        times: true,
        partial: true,
        file_events: true,
        ..Options::default()
    }
}

/// Compares `got` with the golden file for `name` (or writes it, blessed).
fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/transcript")
        .join(format!("{name}.txt"));
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (FERRY_BLESS=1 writes it)", path.display()));
    if want != got {
        let mut diff = String::new();
        let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
        for l in &w {
            if !g.contains(l) {
                diff.push_str(&format!("- {l}\n"));
            }
        }
        for l in &g {
            if !w.contains(l) {
                diff.push_str(&format!("+ {l}\n"));
            }
        }
        panic!(
            "the conversation changed ({}):\n{diff}\nwhole transcript:\n{got}",
            path.display()
        );
    }
}

/// Stable times, so entries and quick checks are the same every run.
fn settle(root: &Path) {
    fn walk(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(&p);
            }
            if meta.is_file() {
                set_mtime(&p, 1_700_000_000);
            }
        }
    }
    walk(root);
}

fn no_cache() {
    // the chunk cache would let a re-sync skip reading its old file; the
    // conversation is the same, but keep runs independent of each other
    std::env::set_var("FERRY_CACHE_DIR", "");
}

/// A small tree of every kind a fresh copy meets.
fn tree(root: &Path) {
    write(&root.join("empty"), b"");
    write(&root.join("one"), b"1");
    write(&root.join("a/small.txt"), random_bytes(100 << 10, 1));
    write(&root.join("a/b/medium.bin"), random_bytes(1536 << 10, 2));
    write(&root.join("a/b/c/tiny"), b"tiny\n");
    std::os::unix::fs::symlink("small.txt", root.join("a/link")).unwrap();
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    settle(root);
}

#[test]
fn a_fresh_tree() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    tree(&src);
    let got = push(&src, &dest, options());
    assert_same_tree(&src, &dest, false);
    check("fresh_tree", &got);
}

/// A 3 MiB checkpoint at `dest`, and at `src` the same with 30 KiB (1%)
/// rewritten in place.
fn one_percent_edit(src: &Path, dest: &Path) {
    let mut data = random_bytes(3 << 20, 3);
    write(&dest.join("ckpt.bin"), &data);
    for (i, b) in data[1 << 20..(1 << 20) + (30 << 10)].iter_mut().enumerate() {
        *b = i as u8;
    }
    write(&src.join("ckpt.bin"), &data);
    settle(src);
}

#[test]
fn a_one_percent_edit() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    one_percent_edit(&src, &dest);
    let got = push(&src, &dest, options());
    assert_same_tree(&src, &dest, false);
    check("edit_1pct", &got);
}

#[test]
fn a_one_percent_edit_pulled() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    one_percent_edit(&src, &dest);
    let got = pull(&src, &dest, options());
    assert_same_tree(&src, &dest, false);
    check("edit_1pct_pull", &got);
}

#[test]
fn a_mebibyte_inserted() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let old = random_bytes(4 << 20, 4);
    write(&dest.join("shard.bin"), &old);
    let mut new = old[..3 << 19].to_vec();
    new.extend(random_bytes(1 << 20, 5));
    new.extend(&old[3 << 19..]);
    write(&src.join("shard.bin"), &new);
    settle(&src);
    let got = push(&src, &dest, options());
    assert_same_tree(&src, &dest, false);
    check("insert_1mib", &got);
}

#[test]
fn hard_links_and_delete() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("d/first"), random_bytes(200 << 10, 6));
    std::fs::hard_link(src.join("d/first"), src.join("d/second")).unwrap();
    write(&src.join("kept"), b"kept\n");
    write(&dest.join("kept"), b"kept\n");
    write(&dest.join("extra/file"), b"goes\n");
    write(&dest.join("stale"), b"goes too\n");
    settle(&src);
    settle(&dest);
    let got = push(
        &src,
        &dest,
        Options {
            hard_links: true,
            delete: true,
            ..options()
        },
    );
    assert_same_tree(&src, &dest, false);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(dest.join("d/first")).unwrap().ino(),
        std::fs::metadata(dest.join("d/second")).unwrap().ino()
    );
    check("hardlinks_delete", &got);
}

#[test]
fn a_dry_run() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    tree(&src);
    write(&dest.join("one"), b"2");
    write(&dest.join("extra"), b"goes\n");
    let before = snapshot(&dest, true);
    let got = push(
        &src,
        &dest,
        Options {
            dry_run: true,
            delete: true,
            ..options()
        },
    );
    assert_eq!(
        snapshot(&dest, true),
        before,
        "a dry run changed the destination"
    );
    check("dry_run", &got);
}

#[test]
fn a_source_that_shrinks_mid_file() {
    no_cache();
    let t = tmp();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src.join("before"), b"before\n");
    write(&src.join("shrinks"), random_bytes(1 << 20, 7));
    write(&src.join("z_after"), b"after\n");
    settle(&src);
    // once its first block is on its way (so after it was listed at 1 MiB
    // and opened), the file loses all but its first 100 KiB
    let victim = src.join("shrinks");
    let cut = Mutex::new(false);
    let hook: Hook = Arc::new(move |way, m| {
        if let (Way::ToServer, Message::Data { file: 2, .. }) = (way, m) {
            let mut cut = cut.lock().unwrap();
            if !*cut {
                *cut = true;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&victim)
                    .unwrap()
                    .set_len(100 << 10)
                    .unwrap();
            }
        }
    });
    let got = push_with(&src, &dest, options(), hook, true);
    assert!(
        !dest.join("shrinks").exists(),
        "a file that shrank was published: {got}"
    );
    assert_eq!(std::fs::read(dest.join("z_after")).unwrap(), b"after\n");
    check("shrinks", &got);
}
