//! ferry moves AI data between Linux servers: datasets of millions of small
//! files, multi-gigabyte checkpoints, JSONL corpora. It speaks scp's and rsync's
//! command lines, sends only the chunks the receiver lacks, checks every file end
//! to end (a file sent whole with XXH3-128, one rebuilt from old data with a
//! GMAC under a key the receiver draws, a file split across streams by a
//! manifest of its segments' checks; `--checksum` compares BLAKE3), and never
//! leaves a half-written file at a final path.
//!
//! ```text
//! cli ──► transfer ─────────────► session ───────────────► transport
//!  │      addresses → endpoints:  client | serve            Stream: ssh child,
//!  │      a peer (ssh, daemon)    sender | receiver         TLS to a daemon,
//!  │      or a store (local:          │                     joined streams
//!  │      both halves here)           │ reads, writes             │
//!  │                                  ▼                           ▼
//!  │                              store: Source/Destination    trust: keys,
//!  │                              └ fs: the local store        authorized_keys, known_hosts,
//!  │                                (scan, safe writes)        verifiers; HostKeyPolicy
//!  │                                                           (supplied by the caller)
//!  └──► server ──► session, transport, trust
//!       (the daemon, serve --stdio)
//!
//! pure code over bytes, no I/O: proto (wire format) · chunk · delta · filter · chmod · location
//! ```
//!
//! Arrows point from a layer to what it uses; nothing low imports anything
//! high. `transport` carries bytes and knows nothing of the conversation;
//! `session` speaks `proto` over any [`transport::Stream`]; `transfer` decides
//! where each half runs; `server` decides what a request may do. `store` is the
//! seam where a place files live plugs in: today the session calls `fs` (the
//! only code that touches the disk) directly, and S3 and SFTP come next as
//! stores. Library code never prints, prompts or exits: that is `cli`'s, through
//! events and the host-key policy it supplies.

pub mod api;
pub mod check;
pub mod chmod;
pub mod chunk;
pub mod cli;
pub mod delta;
pub mod doctor;
pub mod error;
pub mod fanout;
pub mod filter;
pub mod fs;
pub mod location;
pub mod proto;
pub mod server;
pub mod session;
pub mod sftp;
pub mod store;
pub mod transfer;
pub mod transport;
pub mod trust;
