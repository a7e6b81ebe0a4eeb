//! The serving side of ferry: the daemon (`ferry serve`), which listens for
//! TLS connections, authenticates clients by key, and serves transfers into
//! and out of named modules; and the remote end of an ssh transfer (`ferry
//! serve --stdio`), which serves one session on its stdin and stdout.
//!
//! Not for reaching a server (that is [`crate::transport`]) nor for the
//! conversation itself (that is [`crate::session`]); this module decides what
//! a request may do and runs it.

pub mod config;
pub mod daemon;
pub mod fanout;
pub mod memory;
pub mod shell;
pub mod stats;
pub mod stdio;
