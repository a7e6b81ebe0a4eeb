//! A hostile sender, speaking ferry's real protocol through the real codec,
//! against a real receiving client (a pull). Each case must end in a clear
//! error naming what the peer did, with nothing written outside the
//! destination and the destination's existing files untouched.

mod util;
use ferry::chunk::{chunk_slice, RebuildCheck, RebuildKey, WholeCheck};
use ferry::proto::frame::put_frame;
use ferry::proto::{
    self, ChunkRef, Entry, Kind, ListStart, Message, Options, Request, Role, SpanRef,
};
use ferry::session::wire::Counters;
use ferry::session::{run_client, Cancel, Stream};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use util::*;

fn entry(name: &str, kind: Kind, size: u64) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        mtime: 1_600_000_000,
        mtime_nsec: 0,
        size,
        uid: 0,
        gid: 0,
        target: Vec::new(),
        link_to: None,
        checksum: None,
    }
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    put_frame(&mut out, &msg.to_payload());
    out
}

/// Runs the client half of `request` over pipes against a server that answers
/// the handshake and the request, then hands its ends of the pipes to `serve`;
/// once `serve` returns, the server swallows whatever the client still says
/// until it hangs up. `events` sees the client's events.
fn against_server(
    request: Request,
    local: &Path,
    events: &ferry::session::EventFn<'_>,
    serve: impl FnOnce(&mut std::io::PipeReader, &mut std::io::PipeWriter) + Send + 'static,
) -> Result<proto::Summary, String> {
    let (client_r, server_w) = std::io::pipe().unwrap();
    let (server_r, client_w) = std::io::pipe().unwrap();
    let server = std::thread::spawn(move || {
        let (mut r, mut w) = (server_r, server_w);
        let mut hello = [0u8; 9];
        if r.read_exact(&mut hello).is_err() {
            return;
        }
        let _ = w.write_all(&proto::server_hello(proto::VERSION_MAX));
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            return;
        }
        let mut req = vec![0u8; u32::from_le_bytes(len) as usize];
        let _ = r.read_exact(&mut req);
        let _ = w.write_all(&frame(&Message::Accept));
        serve(&mut r, &mut w);
        drop(w);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let result = run_client(
        Stream {
            reader: Box::new(client_r),
            writer: Box::new(client_w),
            in_process: false,
        },
        request,
        vec![local.as_os_str().as_encoded_bytes().to_vec()],
        events,
        &Cancel::default(),
        Arc::new(Counters::default()),
    );
    server.join().expect("the scripted server");
    result.map_err(|e| e.to_string())
}

/// [`against_server`] with a server that writes `script` (raw bytes) and
/// ignores whatever the client says.
fn against_hostile(request: Request, local: &Path, script: Vec<u8>) -> Result<(), String> {
    against_server(request, local, &|_| {}, move |_, w| {
        let _ = w.write_all(&script);
    })
    .map(|_| ())
}

/// A pull of `requested` into `dest` from a hostile sender.
fn pull_from_hostile(requested: &str, dest: &Path, script: Vec<u8>) -> Result<(), String> {
    let request = Request {
        role: Role::ServerSends,
        paths: vec![requested.as_bytes().to_vec()],
        options: Options {
            recursive: true,
            links: true,
            partial: true,
            ..Options::default()
        },
    };
    against_hostile(request, dest, script)
}

fn list(items: &[Message]) -> Vec<u8> {
    let mut v = frame(&Message::ListStart(ListStart {
        single_file: false,
        single_dir: false,
    }));
    for m in items {
        v.extend(frame(m));
    }
    v
}

/// A destination with a file that must survive, inside a parent that must stay empty.
fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tmp();
    let dest = t.path().join("dest");
    write(&dest.join("keep"), "precious");
    (t, dest)
}

#[track_caller]
fn assert_contained(t: &Path, dest: &Path) {
    assert_eq!(
        std::fs::read_to_string(dest.join("keep")).unwrap(),
        "precious"
    );
    let outside: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("dest")],
        "something was written outside the destination"
    );
}

#[test]
fn hostile_names_are_refused() {
    for bad in [
        "..",
        "../x",
        "/etc/passwd",
        "a/../../x",
        "",
        "a//b",
        ".ferry-partial/x",
        "x/.",
    ] {
        let (t, dest) = setup();
        let mut e = entry("placeholder", Kind::File, 1);
        e.name = bad.as_bytes().to_vec();
        let err = pull_from_hostile("data/", &dest, list(&[Message::Entry(e)])).unwrap_err();
        assert!(
            err.contains("protocol error") && err.contains("bad name"),
            "{bad:?}: {err}"
        );
        assert_contained(t.path(), &dest);
    }
    // NUL inside a name
    let (t, dest) = setup();
    let mut e = entry("a", Kind::File, 1);
    e.name = b"a\0b".to_vec();
    let err = pull_from_hostile("data/", &dest, list(&[Message::Entry(e)])).unwrap_err();
    assert!(err.contains("NUL"), "{err}");
    assert_contained(t.path(), &dest);
}

#[test]
fn a_file_that_was_not_requested_is_refused() {
    let (t, dest) = setup();
    // asked for "data", the server answers with ".ssh/authorized_keys"
    let items = [
        Message::Entry(entry(".ssh", Kind::Dir, 0)),
        Message::Entry(entry(".ssh/authorized_keys", Kind::File, 10)),
    ];
    let err = pull_from_hostile("data", &dest, list(&items)).unwrap_err();
    assert!(err.contains("not requested"), "{err}");
    assert!(!dest.join(".ssh").exists());
    assert_contained(t.path(), &dest);
}

#[test]
fn a_second_listing_or_an_orphan_is_refused() {
    let (t, dest) = setup();
    let items = [
        Message::Entry(entry("a", Kind::File, 1)),
        Message::Entry(entry("a", Kind::File, 1)),
    ];
    let err = pull_from_hostile("data/", &dest, list(&items)).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let items = [Message::Entry(entry("d/x", Kind::File, 1))];
    let err = pull_from_hostile("data/", &dest, list(&items)).unwrap_err();
    assert!(err.contains("before its directory"), "{err}");
    assert_contained(t.path(), &dest);
}

#[test]
fn a_sender_listing_past_the_acknowledged_entries_is_refused() {
    // files that are never sent keep the receiver from acknowledging: a
    // sender must wait, and one that lists on is refused before the
    // receiver holds more of its list
    let (t, dest) = setup();
    let items: Vec<Message> = (0..=ferry::proto::LIST_AHEAD)
        .map(|i| Message::Entry(entry(&format!("f{i:05}"), Kind::File, 1)))
        .collect();
    let err = pull_from_hostile("data/", &dest, list(&items)).unwrap_err();
    assert!(
        err.contains("listed more than 8192 entries beyond those acknowledged"),
        "{err}"
    );
    assert_contained(t.path(), &dest);
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    let (t, dest) = setup();
    let mut link = entry("link", Kind::Symlink, 0);
    link.target = b"../..".to_vec();
    // the link is skipped (it leaves the tree); a file "through" it has no listed parent
    let items = [
        Message::Entry(link),
        Message::Entry(entry("link/passwd", Kind::File, 4)),
    ];
    let err = pull_from_hostile("data/", &dest, list(&items)).unwrap_err();
    assert!(err.contains("before its directory"), "{err}");
    assert!(!dest.join("link").exists());
    assert_contained(t.path(), &dest);
    // and even a directory entry named like the link cannot be followed: it is
    // created as a directory or refused, never resolved through a symlink
    let (t, dest) = setup();
    std::os::unix::fs::symlink(t.path(), dest.join("planted")).unwrap();
    let items = [
        Message::Entry(entry("planted", Kind::Dir, 0)),
        Message::Entry(entry("planted/evil", Kind::File, 0)),
        Message::Want {
            file: 0,
            delta: None,
        },
    ];
    let _ = pull_from_hostile("data/", &dest, list(&items));
    assert!(
        !t.path().join("evil").exists(),
        "wrote through a planted symlink"
    );
}

#[test]
fn data_that_was_not_asked_for_is_refused() {
    let (t, dest) = setup();
    // entry 0 is a directory: nobody asks for its data
    let mut script = list(&[Message::Entry(entry("d", Kind::Dir, 0))]);
    script.extend(frame(&Message::Data {
        file: 0,
        compressed: false,
        raw_len: 3,
        bytes: b"abc".to_vec(),
    }));
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("not requested"), "{err}");
    assert!(!dest.join("d").is_file());
    assert_contained(t.path(), &dest);
}

#[test]
fn an_oversized_frame_is_refused_before_allocation() {
    let (t, dest) = setup();
    let mut script = list(&[]);
    script.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("frame larger than the limit"), "{err}");
    assert_contained(t.path(), &dest);
}

/// Answers the client's Want for file 0 with `data_frames`, then `end`.
fn serve_file(entries: &[Message], data: Vec<Message>) -> Vec<u8> {
    let mut script = list(entries);
    script.extend(frame(&Message::ListEnd { io_error: false }));
    for m in data {
        script.extend(frame(&m));
    }
    script
}

#[test]
fn a_decompression_bomb_is_refused() {
    let (t, dest) = setup();
    let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
    let script = serve_file(
        &[Message::Entry(entry("f", Kind::File, 100))],
        vec![Message::Data {
            file: 0,
            compressed: true,
            raw_len: 100,
            bytes: bomb,
        }],
    );
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("compressed"), "{err}");
    assert!(!dest.join("f").exists());
    assert_contained(t.path(), &dest);
}

#[test]
fn a_size_or_hash_that_does_not_match_publishes_nothing() {
    for (label, declared, sent, hash_of) in [
        ("fewer bytes than declared", 10u64, &b"abc"[..], &b"abc"[..]),
        ("wrong hash", 3, &b"abc"[..], &b"xyz"[..]),
    ] {
        let (t, dest) = setup();
        write(&dest.join("f"), "old version");
        let script = serve_file(
            &[Message::Entry(entry("f", Kind::File, 3))],
            vec![
                Message::Data {
                    file: 0,
                    compressed: false,
                    raw_len: sent.len() as u32,
                    bytes: sent.to_vec(),
                },
                Message::FileEnd {
                    file: 0,
                    size: declared,
                    hash: WholeCheck::of(hash_of),
                },
            ],
        );
        let _ = pull_from_hostile("data/", &dest, script);
        assert_eq!(
            std::fs::read_to_string(dest.join("f")).unwrap(),
            "old version",
            "{label}"
        );
        assert_contained(t.path(), &dest);
    }
}

#[test]
fn lying_spans_and_recipes_are_refused() {
    let span = |chunks: u32, len: u64| SpanRef {
        chunks,
        len,
        hash: [7; 32],
    };
    let chunk = |len: u32| ChunkRef { len, hash: [8; 16] };
    let spans = |spans: Vec<SpanRef>| Message::Spans { file: 0, spans };
    let recipe = |chunks: Vec<ChunkRef>| Message::Recipe { file: 0, chunks };
    let cases: Vec<(&str, Vec<Message>, &str)> = vec![
        (
            // 256 MiB per message: past the listed size and the slack allowed
            // for a file growing while it is listed
            "spans beyond the file",
            vec![spans(vec![span(512, 512 * (32 << 10)); 16]); 5],
            "larger than the file",
        ),
        (
            "a span of many tiny chunks",
            vec![spans(vec![span(512, 512)])],
            "too short for its chunks",
        ),
        (
            "a recipe nobody asked for",
            vec![recipe(vec![chunk(4096)])],
            "recipe",
        ),
        (
            "more chunks than the span holds",
            vec![
                spans(vec![span(4, 128 << 10)]),
                recipe(vec![chunk(32 << 10); 5]),
            ],
            "more chunks",
        ),
        (
            "chunks that do not add up to their span",
            vec![
                spans(vec![span(4, 128 << 10)]),
                recipe(vec![chunk(30 << 10); 4]),
            ],
            "do not add up",
        ),
    ];
    for (label, messages, expect) in cases {
        let (t, dest) = setup();
        // an existing 128 KiB file makes the client ask for a delta
        write(&dest.join("f"), random_bytes(128 << 10, 1));
        let script = serve_file(
            &[Message::Entry(entry("f", Kind::File, 128 << 10))],
            messages,
        );
        let err = pull_from_hostile("data/", &dest, script).unwrap_err();
        assert!(err.contains(expect), "{label}: {err}");
        assert_eq!(
            std::fs::read(dest.join("f")).unwrap(),
            random_bytes(128 << 10, 1),
            "{label}"
        );
        assert_contained(t.path(), &dest);
    }
}

/// Pulls one file `f` of `size` bytes into `dest` from a sender that waits
/// for the receiver's `Want` of it and then sends what `answer` makes of that
/// request's rebuild key (`None`: asked for whole). Returns the transfer's
/// summary and the errors it reported.
fn pull_one_answering(
    dest: &Path,
    size: u64,
    answer: impl FnOnce(Option<RebuildKey>) -> Vec<Message> + Send + 'static,
) -> (proto::Summary, Vec<String>) {
    let request = Request {
        role: Role::ServerSends,
        paths: vec![b"data/".to_vec()],
        options: Options {
            recursive: true,
            times: true,
            ..Options::default()
        },
    };
    let errors = std::sync::Mutex::new(Vec::new());
    let events = |e: proto::Event| {
        if e.kind == proto::EventKind::Error {
            let text = String::from_utf8_lossy(&e.text).into_owned();
            errors.lock().unwrap().push(text);
        }
    };
    let result = against_server(request, dest, &events, move |r, w| {
        w.write_all(&serve_file(
            &[Message::Entry(entry("f", Kind::File, size))],
            vec![],
        ))
        .unwrap();
        // the receiver's messages, until it asks for the file
        let key = loop {
            let mut header = [0u8; 4];
            r.read_exact(&mut header).unwrap();
            let mut payload = vec![0u8; proto::frame::payload_len(header).unwrap()];
            r.read_exact(&mut payload).unwrap();
            if let Message::Want { delta, .. } = Message::decode(&payload).unwrap() {
                break delta;
            }
        };
        for m in answer(key) {
            w.write_all(&frame(&m)).unwrap();
        }
    });
    (
        result.expect("the session ends well"),
        errors.into_inner().unwrap(),
    )
}

/// A recipe naming the chunks of `old` (what the receiver has), ended with
/// the check of `content` (keyed by what the receiver drew, or a plain BLAKE3).
fn colliding_recipe(
    old: &[u8],
    key: Option<RebuildKey>,
    content: &[u8],
    keyed: bool,
) -> Vec<Message> {
    let key = key.expect("a delta asked for: the old file is there");
    let mut spanner = ferry::delta::Spanner::default();
    let mut spans = Vec::new();
    for c in chunk_slice(old) {
        spans.extend(spanner.push(c.len, &c.hash));
    }
    spans.extend(spanner.finish());
    let hash = if keyed {
        let mut check = RebuildCheck::new(&key);
        check.update(content);
        check.finish()
    } else {
        *blake3::hash(content).as_bytes()
    };
    let size = content.len() as u64;
    vec![
        Message::Spans { file: 0, spans },
        // the receiver has every span: it asks to see none of their chunks
        Message::Recipe {
            file: 0,
            chunks: Vec::new(),
        },
        Message::RecipeEnd {
            file: 0,
            size,
            hash,
        },
        Message::FileEnd {
            file: 0,
            size,
            hash,
        },
        Message::Bye,
    ]
}

#[test]
fn old_bytes_that_collide_with_the_senders_chunks_are_caught_by_the_keyed_check() {
    // The receiver's old file has chunks named like the sender's (as if
    // someone who could write it had made XXH3 collide), but the sender's
    // file is other bytes. The end check, keyed by what the receiver drew
    // for this file, must tell them apart; an unkeyed hash of the old bytes
    // (what anyone could compute) must not pass either.
    let old = random_bytes(300 << 10, 4);
    let mut real = old.clone();
    real[100_000] ^= 0x55;
    for (label, content, keyed) in [
        ("the sender's real bytes, keyed", real.clone(), true),
        ("the old bytes, unkeyed", old.clone(), false),
    ] {
        let (t, dest) = setup();
        write(&dest.join("f"), &old);
        let size = old.len() as u64;
        let theirs = old.clone();
        let (summary, errors) = pull_one_answering(&dest, size, move |key| {
            colliding_recipe(&theirs, key, &content, keyed)
        });
        assert_eq!(summary.errors, 1, "{label}");
        assert!(
            errors.len() == 1 && errors[0].contains("verification failed"),
            "{label}: {errors:?}"
        );
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), old, "{label}");
        assert_contained(t.path(), &dest);
    }
    // the control: the same recipe with the keyed check of the old bytes is
    // taken (so what failed above was the check, not the recipe): the file
    // is published anew, with the listed mtime
    let (t, dest) = setup();
    write(&dest.join("f"), &old);
    let size = old.len() as u64;
    let (summary, errors) = pull_one_answering(&dest, size, move |key| {
        colliding_recipe(&old, key, &old, true)
    });
    assert_eq!((summary.errors, summary.transferred), (0, 1), "{errors:?}");
    let meta = std::fs::metadata(dest.join("f")).unwrap();
    assert_eq!(
        meta.modified().unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)
    );
    assert_contained(t.path(), &dest);
}

fn segment(offset: u64, bytes: &[u8]) -> Message {
    Message::Segment {
        file: 0,
        offset,
        compressed: false,
        raw_len: bytes.len() as u32,
        bytes: bytes.to_vec(),
    }
}

#[test]
fn lying_segments_are_refused_and_publish_nothing() {
    let f = || Message::Entry(entry("f", Kind::File, 1000));
    // overlapping segments
    let (t, dest) = setup();
    let script = serve_file(&[f()], vec![segment(0, &[1; 500]), segment(100, &[2; 100])]);
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("overlapping"), "{err}");
    assert!(!dest.join("f").exists());
    assert_contained(t.path(), &dest);
    // a segment far beyond the file
    let (t, dest) = setup();
    let script = serve_file(&[f()], vec![segment(40 << 30, &[1; 10])]);
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("beyond its size"), "{err}");
    assert_contained(t.path(), &dest);
    // a segment whose hash lies
    let (t, dest) = setup();
    let script = serve_file(
        &[f()],
        vec![
            segment(0, &[1; 1000]),
            Message::SegmentEnd {
                file: 0,
                offset: 0,
                len: 1000,
                hash: WholeCheck::of(&[2; 1000]),
            },
        ],
    );
    let err = pull_from_hostile("data/", &dest, script).unwrap_err();
    assert!(err.contains("does not match its check value"), "{err}");
    assert!(!dest.join("f").exists());
    assert_contained(t.path(), &dest);
    // segments that do not make up the file the end describes: never published
    let (t, dest) = setup();
    write(&dest.join("f"), "old version");
    let mut manifest = blake3::Hasher::new();
    manifest.update(&WholeCheck::of(&[1; 500]));
    let script = serve_file(
        &[Message::Entry(Entry {
            mtime: 1_700_000_000,
            ..entry("f", Kind::File, 1000)
        })],
        vec![
            segment(0, &[1; 500]),
            Message::SegmentEnd {
                file: 0,
                offset: 0,
                len: 500,
                hash: WholeCheck::of(&[1; 500]),
            },
            // claims the whole 1000 bytes while only 500 came in segments
            Message::FileEnd {
                file: 0,
                size: 1000,
                hash: *manifest.finalize().as_bytes(),
            },
        ],
    );
    let _ = pull_from_hostile("data/", &dest, script);
    assert_eq!(
        std::fs::read_to_string(dest.join("f")).unwrap(),
        "old version"
    );
    assert_contained(t.path(), &dest);
}

/// A push of `src` to a hostile receiver.
fn push_to_hostile(src: &Path, script: Vec<u8>) -> Result<(), String> {
    let request = Request {
        role: Role::ServerReceives,
        paths: vec![b"dest".to_vec()],
        options: Options {
            recursive: true,
            ..Options::default()
        },
    };
    against_hostile(request, src, script)
}

#[test]
fn a_hostile_receiver_gets_nothing_that_was_not_listed() {
    let t = tmp();
    let src = t.path().join("data");
    write(&src.join("listed"), "public");
    write(&t.path().join("secret"), "do not send");
    // a file index past the list (the secret beside the source is not in it)
    let err = push_to_hostile(
        Path::new(&format!("{}/", src.display())),
        frame(&Message::Want {
            file: 7,
            delta: None,
        }),
    )
    .unwrap_err();
    assert!(err.contains("not a regular file in the list"), "{err}");
    // the directory entry itself
    let err = push_to_hostile(
        Path::new(&format!("{}/", src.display())),
        frame(&Message::Want {
            file: 0,
            delta: None,
        }),
    )
    .unwrap_err();
    assert!(err.contains("not a regular file in the list"), "{err}");
    // an acknowledgement of list entries never sent
    let err = push_to_hostile(
        Path::new(&format!("{}/", src.display())),
        frame(&Message::ListAck { entries: 9 }),
    )
    .unwrap_err();
    assert!(err.contains("acknowledged 9 list entries"), "{err}");
    // chunks of a file without a recipe
    let err = push_to_hostile(
        Path::new(&format!("{}/", src.display())),
        frame(&Message::Need {
            file: 1,
            ranges: vec![(0, 1)],
        }),
    )
    .unwrap_err();
    assert!(err.contains("without a recipe"), "{err}");
}

/// A pull with `-S` from a hostile sender; `holes`: hole messages agreed.
fn pull_sparse_from_hostile(dest: &Path, script: Vec<u8>, holes: bool) -> Result<(), String> {
    let request = Request {
        role: Role::ServerSends,
        paths: vec![b"data/".to_vec()],
        options: Options {
            recursive: true,
            partial: true,
            sparse: true,
            sparse_holes: holes,
            ..Options::default()
        },
    };
    against_hostile(request, dest, script)
}

fn hole(offset: u64, len: u64) -> Message {
    Message::Hole {
        file: 0,
        offset,
        len,
    }
}

fn bytes(b: &[u8]) -> Message {
    Message::Data {
        file: 0,
        compressed: false,
        raw_len: b.len() as u32,
        bytes: b.to_vec(),
    }
}

/// Issue 25: a hole is held to the file it is for. One past the listed size,
/// over bytes already sent, after a gap, or in a session that did not agree
/// on holes ends the session with a line saying so; one the end's check does
/// not cover is never published. A hole within the rules makes a file that
/// reads back as zeros there.
#[test]
fn lying_holes_are_refused_and_publish_nothing() {
    let f = || Message::Entry(entry("f", Kind::File, 1000));
    for (label, frames, agreed, refused) in [
        (
            "past the size",
            vec![hole(0, 2000)],
            true,
            "past its listed size of 1000",
        ),
        (
            "past the size, after data",
            vec![bytes(&[1; 10]), hole(10, 991)],
            true,
            "past its listed size",
        ),
        (
            "over data",
            vec![bytes(&[1; 500]), hole(100, 100)],
            true,
            "overlapping its bytes already sent (up to 500)",
        ),
        ("a gap", vec![hole(10, 100)], true, "leaving a gap"),
        (
            "not agreed",
            vec![hole(0, 100)],
            false,
            "did not agree on hole messages",
        ),
    ] {
        let (t, dest) = setup();
        write(&dest.join("f"), "old version");
        let script = serve_file(&[f()], frames);
        let err = pull_sparse_from_hostile(&dest, script, agreed).unwrap_err();
        assert!(err.contains("sent a hole for file 0"), "{label}: {err}");
        assert!(err.contains(refused), "{label}: {err}");
        assert!(!err.contains('\n'), "{label}: {err}");
        assert_eq!(
            std::fs::read_to_string(dest.join("f")).unwrap(),
            "old version",
            "{label}"
        );
        assert_contained(t.path(), &dest);
    }
    // the end's check is that of the zeros sent as data, not of a hole
    let (t, dest) = setup();
    write(&dest.join("f"), "old version");
    let mut as_zeros = WholeCheck::default();
    as_zeros.update(&[1; 100]);
    as_zeros.update(&[0; 900]);
    let end = |hash| Message::FileEnd {
        file: 0,
        size: 1000,
        hash,
    };
    let script = serve_file(
        &[f()],
        vec![bytes(&[1; 100]), hole(100, 900), end(as_zeros.finish())],
    );
    let _ = pull_sparse_from_hostile(&dest, script, true);
    assert_eq!(
        std::fs::read_to_string(dest.join("f")).unwrap(),
        "old version"
    );
    assert_contained(t.path(), &dest);
    // within the rules, with its check: published, zeros where the hole is
    let (t, dest) = setup();
    let mut sparse = WholeCheck::default();
    sparse.update(&[1; 100]);
    sparse.hole(100, 900);
    let script = serve_file(
        &[f()],
        vec![bytes(&[1; 100]), hole(100, 900), end(sparse.finish())],
    );
    // (the script ends without a Bye: the file is published before that)
    let _ = pull_sparse_from_hostile(&dest, script, true);
    let got = std::fs::read(dest.join("f")).unwrap();
    assert_eq!(got, [vec![1u8; 100], vec![0; 900]].concat());
    assert_contained(t.path(), &dest);
}
