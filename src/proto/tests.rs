use super::*;
use proptest::prelude::*;

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        arb_bytes(64),
        0u8..3,
        0u32..0o7777,
        any::<i64>(),
        0u32..1_000_000_000,
        any::<u64>(),
        (any::<u32>(), any::<u32>()),
        arb_bytes(32),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<[u8; 32]>()),
    )
        .prop_map(
            |(name, k, mode, mtime, nsec, size, (uid, gid), target, link_to, checksum)| Entry {
                name,
                kind: [Kind::File, Kind::Dir, Kind::Symlink][k as usize],
                mode,
                mtime,
                mtime_nsec: nsec,
                size,
                uid,
                gid,
                target,
                link_to,
                checksum,
            },
        )
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_bytes(40), any::<bool>(), any::<u32>()).prop_map(|(p, push, bw)| {
            Message::Request(Request {
                role: if push {
                    Role::ServerReceives
                } else {
                    Role::ServerSends
                },
                paths: vec![p.clone(), p],
                options: Options {
                    recursive: true,
                    delete: push,
                    backup_suffix: Some(b"~".to_vec()),
                    filters: vec![(false, b"*.tmp".to_vec())],
                    bwlimit: bw as u64,
                    ..Options::default()
                },
            })
        }),
        arb_entry().prop_map(Message::Entry),
        (any::<u32>(), any::<Option<[u8; 16]>>())
            .prop_map(|(file, delta)| Message::Want { file, delta }),
        any::<u32>().prop_map(|entries| Message::ListAck { entries }),
        (
            any::<u32>(),
            proptest::collection::vec(
                (1u32..=crate::chunk::MAX_CHUNK as u32, any::<[u8; 16]>()),
                0..20
            )
        )
            .prop_map(|(file, c)| Message::Recipe {
                file,
                chunks: c
                    .into_iter()
                    .map(|(len, hash)| ChunkRef { len, hash })
                    .collect()
            }),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u32>(), any::<u32>()), 0..20)
        )
            .prop_map(|(file, ranges)| Message::Need { file, ranges }),
        (
            any::<u32>(),
            proptest::collection::vec(
                (
                    1u32..512,
                    1u64..=crate::chunk::MAX_CHUNK as u64,
                    any::<[u8; 32]>()
                ),
                0..16
            )
        )
            .prop_map(|(file, s)| Message::Spans {
                file,
                spans: s
                    .into_iter()
                    .map(|(chunks, len, hash)| SpanRef { chunks, len, hash })
                    .collect()
            }),
        (any::<u32>(), arb_bytes(2000)).prop_map(|(file, bytes)| Message::Data {
            file,
            compressed: false,
            raw_len: bytes.len() as u32,
            bytes
        }),
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(file, size, hash)| Message::FileEnd { file, size, hash }),
        (any::<u32>(), 0..u64::MAX / 2, 1..u64::MAX / 2)
            .prop_map(|(file, offset, len)| Message::Hole { file, offset, len }),
        (any::<u64>(), any::<u64>(), arb_bytes(30)).prop_map(|(a, b, text)| Message::Event(
            Event {
                kind: EventKind::Progress,
                name: text.clone(),
                a,
                b,
                text
            }
        )),
        Just(Message::Bye),
        Just(Message::ListEnd { io_error: true }),
    ]
}

#[test]
fn a_module_listing_that_is_not_utf8_is_refused() {
    // found by fuzzing: 100 invalid bytes decoded "lossily" into 300 bytes of
    // replacement characters, past the limit the encoder then enforced
    let mut w = super::codec::Writer::default();
    w.u8(17);
    w.varint(1);
    w.bytes(&[0xed; 100]);
    w.bytes(b"");
    w.bool(false);
    assert!(Message::decode(&w.buf).is_err());
}

proptest! {
    #[test]
    fn round_trip(msg in arb_message()) {
        let payload = msg.to_payload();
        prop_assert_eq!(Message::decode(&payload).unwrap(), msg);
    }

    #[test]
    fn a_peeked_block_head_agrees_with_the_decoder(msg in arb_message(), cut in 0usize..64) {
        // what a reader does with a data block's head (the first bytes of
        // the payload), then its bytes, must give what decoding the whole
        // payload gives: the same message, or (cut short) no message
        let mut payload = msg.to_payload();
        payload.truncate(payload.len().saturating_sub(cut % 2 * cut));
        let prefix = &payload[..payload.len().min(MAX_BLOCK_HEAD)];
        let block = matches!(msg, Message::Data { .. } | Message::Segment { .. });
        let truncated = cut % 2 == 1;
        if let Some((head, used)) = BlockHead::peek(prefix) {
            prop_assert!(block);
            let whole = used + head.len == payload.len();
            let decoded = Message::decode(&payload);
            prop_assert_eq!(whole, decoded.is_ok());
            if whole {
                prop_assert_eq!(head.into_message(payload[used..].to_vec()), msg);
            }
        } else {
            prop_assert!(!block || truncated, "a whole block's head was not recognised");
        }
    }

    #[test]
    fn every_truncation_is_an_error(msg in arb_message()) {
        let payload = msg.to_payload();
        for cut in 0..payload.len() {
            prop_assert!(Message::decode(&payload[..cut]).is_err());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in arb_bytes(300)) {
        let _ = Message::decode(&bytes);
    }
}

#[test]
fn trailing_bytes_rejected() {
    let mut p = Message::Bye.to_payload();
    p.push(0);
    assert_eq!(Message::decode(&p), Err(DecodeError::TrailingBytes("Bye")));
}

#[test]
fn recipe_count_checked_before_allocating() {
    let mut w = Writer::default();
    w.u8(tag::RECIPE);
    w.varint(0);
    w.varint(MAX_RECIPE_BATCH as u64);
    // claims 8192 chunks, carries none
    assert_eq!(
        Message::decode(&w.buf),
        Err(DecodeError::Truncated("recipe"))
    );
    let mut w = Writer::default();
    w.u8(tag::RECIPE);
    w.varint(0);
    w.varint(u64::MAX);
    assert!(matches!(
        Message::decode(&w.buf),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn zero_length_chunk_rejected() {
    let msg = Message::Recipe {
        file: 0,
        chunks: vec![ChunkRef {
            len: 0,
            hash: [0; 16],
        }],
    };
    assert_eq!(
        Message::decode(&msg.to_payload()),
        Err(DecodeError::Invalid("chunk length 0"))
    );
}

#[test]
fn handshake_versions() {
    assert_eq!(choose_version(&client_hello()), Ok(VERSION_MAX));
    let mut junk = *b"Welcome!\n";
    assert!(matches!(
        choose_version(&junk),
        Err(HandshakeError::NotFerry(_))
    ));
    junk[..5].copy_from_slice(MAGIC);
    junk[5..7].copy_from_slice(&50u16.to_le_bytes());
    junk[7..9].copy_from_slice(&60u16.to_le_bytes());
    assert!(matches!(
        choose_version(&junk),
        Err(HandshakeError::NoCommonVersion { .. })
    ));
    assert_eq!(
        check_server_hello(&server_hello(VERSION_MAX)),
        Ok(VERSION_MAX)
    );
    // a version-1 peer (whose rebuilt files were checked with an unkeyed
    // BLAKE3) is refused by name, both ways
    assert!(matches!(
        check_server_hello(&server_hello(1)),
        Err(HandshakeError::NoCommonVersion { theirs_min: 1, .. })
    ));
    let mut old_client = client_hello();
    old_client[5..9].copy_from_slice(&[1, 0, 1, 0]);
    assert!(matches!(
        choose_version(&old_client),
        Err(HandshakeError::NoCommonVersion { theirs_max: 1, .. })
    ));
}

/// Each kind of report travels as protocol version 2 always carried it: tag
/// 14, the kind, the name, two varints and the text, in these very bytes.
#[test]
fn reports_keep_the_event_wire_bytes() {
    // tag, kind, name ("f" or empty), a, b, text
    let cases: Vec<(Report, Vec<u8>)> = vec![
        (
            Report::Updated {
                name: b"f".to_vec(),
                size: 300,
                detail: Vec::new(),
            },
            vec![14, 0, 1, b'f', 0xac, 0x02, 0, 0],
        ),
        (
            Report::Updated {
                name: b"f".to_vec(),
                size: 0,
                detail: b"-> t".to_vec(),
            },
            vec![14, 0, 1, b'f', 0, 0, 4, b'-', b'>', b' ', b't'],
        ),
        (
            Report::Deleted {
                name: b"f".to_vec(),
                is_dir: true,
            },
            vec![14, 1, 1, b'f', 1, 0, 0],
        ),
        (
            Report::Deleted {
                name: b"f".to_vec(),
                is_dir: false,
            },
            vec![14, 1, 1, b'f', 0, 0, 0],
        ),
        (
            Report::Error {
                name: b"f".to_vec(),
                text: b"no".to_vec(),
            },
            vec![14, 2, 1, b'f', 0, 0, 2, b'n', b'o'],
        ),
        (
            Report::Notice {
                name: Vec::new(),
                text: b"hi".to_vec(),
            },
            vec![14, 3, 0, 0, 0, 2, b'h', b'i'],
        ),
        (
            Report::Progress {
                name: b"f".to_vec(),
                done: 5,
                size: 200,
            },
            vec![14, 4, 1, b'f', 5, 0xc8, 0x01, 0],
        ),
        (
            Report::Overall { done: 7, total: 9 },
            vec![14, 5, 0, 7, 9, 0],
        ),
    ];
    for (report, bytes) in cases {
        let event = Event::from(report.clone());
        assert_eq!(event.kind, report.kind());
        let payload = Message::Event(event.clone()).to_payload();
        assert_eq!(payload, bytes, "{report:?}");
        // the same bytes as the record built field by field, the old way
        let old = Event {
            kind: event.kind,
            name: event.name.clone(),
            a: event.a,
            b: event.b,
            text: event.text.clone(),
        };
        assert_eq!(Message::Event(old).to_payload(), bytes);
        match Message::decode(&bytes).unwrap() {
            Message::Event(e) => assert_eq!(e.report(), report),
            m => panic!("{m:?}"),
        }
    }
}

#[test]
fn reports_serialise_with_named_fields() {
    let progress = Event::from(Report::Progress {
        name: b"d/f".to_vec(),
        done: 5,
        size: 10,
    });
    assert_eq!(
        serde_json::to_string(&progress).unwrap(),
        r#"{"kind":"progress","name":"d/f","done":5,"size":10}"#
    );
    let deleted = Report::Deleted {
        name: b"old".to_vec(),
        is_dir: true,
    };
    assert_eq!(
        serde_json::to_string(&deleted).unwrap(),
        r#"{"kind":"deleted","name":"old","is_dir":true}"#
    );
}

/// Protocol 3's options extension: absent when every extended option keeps
/// its version-2 meaning (so an old peer reads the request as before), round
/// trips when present, and an older peer is never sent what it cannot read.
#[test]
fn options_extension_block() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"m/x".to_vec()],
            options,
        })
    };
    let plain = Options {
        recursive: true,
        links: true,
        ..Options::default()
    };
    let extended = Options {
        symlinks: LinkPolicy::Munge,
        copy_unsafe_links: true,
        copy_dirlinks: true,
        ..plain.clone()
    };
    // the extended request is the plain one with the block after it
    let (p, e) = (
        request(plain.clone()).to_payload(),
        request(extended.clone()).to_payload(),
    );
    assert!(e.len() > p.len() && e.starts_with(&p));
    assert_eq!(Message::decode(&e), Ok(request(extended.clone())));
    for policy in [LinkPolicy::Safe, LinkPolicy::Verbatim, LinkPolicy::Munge] {
        let o = Options {
            symlinks: policy,
            ..plain.clone()
        };
        assert_eq!(
            Message::decode(&request(o.clone()).to_payload()),
            Ok(request(o))
        );
    }
    // a version-2 peer: the symlink policy falls back to safe, the rest is refused by name
    let verbatim = Options {
        symlinks: LinkPolicy::Verbatim,
        ..plain.clone()
    };
    assert_eq!(verbatim.for_peer(2), Ok(plain.clone()));
    assert_eq!(
        request(verbatim.for_peer(2).unwrap()).to_payload(),
        p,
        "what a version-2 peer is sent is a version-2 request"
    );
    assert_eq!(
        extended.for_peer(2),
        Err(OptionsError::PeerTooOld("--copy-unsafe-links"))
    );
    assert_eq!(extended.for_peer(3), Ok(extended.clone()));
    // an unknown tag, a repeated one, unknown bits and a bad policy are refused
    for (block, why) in [
        (vec![1u8, 9, 1, 0], "option extension tag"),
        (vec![2u8, 2, 1, 1, 2, 1, 1], "option extension order"),
        (vec![1u8, 1, 3, 0x80, 0x80, 0x01], "extended option flags"),
        (vec![1u8, 2, 1, 7], "symlink policy"),
    ] {
        let mut bad = p.clone();
        bad.extend(block);
        assert_eq!(Message::decode(&bad), Err(DecodeError::Invalid(why)));
    }
}

/// The destination-side options (tags 20 on) round trip, are refused by name
/// to a version-2 peer, and bad values are refused; `Settled` round trips.
#[test]
fn dest_side_options_and_settled() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"m/x".to_vec()],
            options,
        })
    };
    let plain = Options {
        recursive: true,
        ..Options::default()
    };
    for (dest_side, flag) in [
        (
            DestSide {
                basis_dirs: vec![b"../prev".to_vec(), b"/abs/x".to_vec()],
                basis_kind: BasisKind::Compare,
                ..DestSide::default()
            },
            "--compare-dest",
        ),
        (
            DestSide {
                remove_source_files: true,
                ..DestSide::default()
            },
            "--remove-source-files",
        ),
        (
            DestSide {
                delete_timing: DeleteTiming::Before,
                ..DestSide::default()
            },
            "--delete-before",
        ),
    ] {
        let o = Options {
            dest_side,
            chmod: Some(b"u+x".to_vec()),
            ..plain.clone()
        };
        assert_eq!(
            Message::decode(&request(o.clone()).to_payload()),
            Ok(request(o.clone()))
        );
        let without_chmod = Options {
            chmod: None,
            ..o.clone()
        };
        assert_eq!(
            without_chmod.for_peer(2),
            Err(OptionsError::PeerTooOld(flag))
        );
    }
    let p = request(plain).to_payload();
    for (block, why) in [
        (vec![1u8, 20, 2, 7, 0], "basis directory kind"),
        (vec![1u8, 21, 1, 4], "destination option flags"),
        (vec![1u8, 22, 1, 9], "delete timing"),
    ] {
        let mut bad = p.clone();
        bad.extend(block);
        assert_eq!(Message::decode(&bad), Err(DecodeError::Invalid(why)));
    }
    let settled = Message::Settled {
        files: vec![0, 7, u32::MAX],
    };
    assert_eq!(Message::decode(&settled.to_payload()), Ok(settled));
}

/// `--atomic` and `--backup-dir` (tags 41 and 42) round trip together with
/// the other options (the block is written in tag order), are refused by
/// name to a version-2 peer, and `--atomic --inplace` is refused whoever
/// sends it.
#[test]
fn atomic_options() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"m/x".to_vec()],
            options,
        })
    };
    let o = Options {
        recursive: true,
        itemize: true,
        chmod: Some(b"u+x".to_vec()),
        dest_side: DestSide {
            atomic: true,
            backup_dir: Some(b"../x.prev".to_vec()),
            delete_timing: DeleteTiming::Before,
            ..DestSide::default()
        },
        ..Options::default()
    };
    assert_eq!(
        Message::decode(&request(o.clone()).to_payload()),
        Ok(request(o.clone()))
    );
    let only_atomic = Options {
        dest_side: DestSide {
            atomic: true,
            ..DestSide::default()
        },
        ..Options::default()
    };
    assert_eq!(
        only_atomic.for_peer(2),
        Err(OptionsError::PeerTooOld("--atomic"))
    );
    assert_eq!(only_atomic.validate(), Ok(()));
    let mut both = only_atomic.clone();
    both.dest_side.inplace = true;
    assert_eq!(both.validate(), Err(OptionsError::AtomicInplace));
    let mut alone = Options::default();
    alone.dest_side.backup_dir = Some(b"x".to_vec());
    assert_eq!(alone.validate(), Err(OptionsError::BackupDirAlone));
}

/// `-H`'s marks (tag 56, no bytes): sent only when set, in tag order beside
/// the other fields, round trip, and never to a version-2 peer; an entry
/// linked to its own index travels as any link does.
#[test]
fn link_marks_travel_as_tag_56() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerSends,
            paths: vec![b"m/".to_vec()],
            options,
        })
    };
    let plain = Options {
        recursive: true,
        hard_links: true,
        ..Options::default()
    };
    let marked = Options {
        link_marks: true,
        ..plain.clone()
    };
    let (p, m) = (
        request(plain.clone()).to_payload(),
        request(marked.clone()).to_payload(),
    );
    // one field: tag 56 with no bytes
    assert_eq!(m, [p.clone(), vec![1, 56, 0]].concat());
    assert_eq!(Message::decode(&m), Ok(request(marked.clone())));
    let with_others = Options {
        itemize: true,
        chmod: Some(b"u+w".to_vec()),
        symlinks: LinkPolicy::Munge,
        ..marked.clone()
    };
    assert_eq!(
        Message::decode(&request(with_others.clone()).to_payload()),
        Ok(request(with_others))
    );
    assert_eq!(marked.for_peer(2), Ok(plain.clone()));
    assert_eq!(marked.for_peer(3), Ok(marked));
    let first = Message::Entry(Entry {
        name: b"a".to_vec(),
        kind: Kind::File,
        mode: 0o644,
        mtime: 1,
        mtime_nsec: 0,
        size: 3,
        uid: 0,
        gid: 0,
        target: Vec::new(),
        link_to: Some(7),
        checksum: None,
    });
    assert_eq!(Message::decode(&first.to_payload()), Ok(first));
}

/// `-z`'s streamed blocks (tag 63, no bytes): sent only when set, after the
/// fields with lower tags, round trip, and never to a version-2 peer.
#[test]
fn zstd_stream_travels_as_tag_63() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"m/".to_vec()],
            options,
        })
    };
    let plain = Options {
        recursive: true,
        compress: true,
        ..Options::default()
    };
    let streamed = Options {
        zstd_stream: true,
        ..plain.clone()
    };
    let (p, s) = (
        request(plain.clone()).to_payload(),
        request(streamed.clone()).to_payload(),
    );
    assert_eq!(s, [p, vec![1, 63, 0]].concat());
    assert_eq!(Message::decode(&s), Ok(request(streamed.clone())));
    let with_marks = Options {
        link_marks: true,
        hard_links: true,
        ..streamed.clone()
    };
    let payload = request(with_marks.clone()).to_payload();
    assert!(payload.ends_with(&[2, 56, 0, 63, 0]), "{payload:?}");
    assert_eq!(Message::decode(&payload), Ok(request(with_marks)));
    assert_eq!(streamed.for_peer(2), Ok(plain));
    assert_eq!(streamed.for_peer(3), Ok(streamed));
}

/// `-S`'s holes on the wire (tag 80, no bytes): sent only when set, round
/// trip, and never to a version-2 peer.
#[test]
fn sparse_holes_travel_as_tag_80() {
    let request = |options: Options| {
        Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"m/".to_vec()],
            options,
        })
    };
    let plain = Options {
        sparse: true,
        ..Options::default()
    };
    let holes = Options {
        sparse_holes: true,
        ..plain.clone()
    };
    let (p, h) = (
        request(plain.clone()).to_payload(),
        request(holes.clone()).to_payload(),
    );
    assert_eq!(h, [p, vec![1, 80, 0]].concat());
    assert_eq!(Message::decode(&h), Ok(request(holes.clone())));
    assert_eq!(holes.for_peer(2), Ok(plain));
    assert_eq!(holes.for_peer(3), Ok(holes));
}

/// A hole message round trips; an empty one, or one past the largest
/// offset, is refused as it is decoded.
#[test]
fn a_hole_is_a_file_an_offset_and_a_length() {
    let hole = Message::Hole {
        file: 3,
        offset: 1 << 20,
        len: 64 << 30,
    };
    assert_eq!(Message::decode(&hole.to_payload()), Ok(hole));
    let empty = Message::Hole {
        file: 3,
        offset: 5,
        len: 0,
    };
    assert_eq!(
        Message::decode(&empty.to_payload()),
        Err(DecodeError::Invalid("empty hole"))
    );
    let past = Message::Hole {
        file: 0,
        offset: u64::MAX - 1,
        len: 2,
    };
    assert_eq!(
        Message::decode(&past.to_payload()),
        Err(DecodeError::Invalid("hole past the largest offset"))
    );
}
