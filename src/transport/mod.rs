//! Byte streams a session can run over: a child process's stdio (the system
//! `ssh` running `ferry serve --stdio` on the remote, or a local `ferry serve
//! --stdio` child) and an in-process pipe pair for local-to-local transfers.

pub mod child;
pub mod daemon;
pub mod pipe;
pub mod record;
pub mod rendezvous;
pub mod stdio;
pub mod tls;
