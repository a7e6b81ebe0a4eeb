//! ferry moves AI data between Linux servers: datasets of millions of small
//! files, multi-gigabyte checkpoints, JSONL corpora. It speaks scp's and rsync's
//! command lines, sends only the chunks the receiver lacks, verifies everything
//! with BLAKE3, and never leaves a half-written file at a final path.
//!
//! ```text
//! cli ──► transfer ──► session (sender | receiver) ──► transport (ssh child, pipe, TLS)
//!            │              │         │                          │
//!         location        proto     delta      fs (scan,       trust (keys, authorized_keys,
//!                                     │         dest)          known_hosts, verifiers)
//!                                   chunk
//!                                              server (the daemon: listeners, modules)
//! ```
//!
//! `proto`, `chunk`, `delta` and `filter` are pure code over bytes; `fs` is the
//! only code that touches the disk; `session` speaks `proto` over any stream.

pub mod check;
pub mod chunk;
pub mod cli;
pub mod delta;
pub mod error;
pub mod filter;
pub mod fs;
pub mod location;
pub mod proto;
pub mod server;
pub mod session;
pub mod store;
pub mod transfer;
pub mod transport;
pub mod trust;
