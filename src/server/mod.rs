//! The ferry daemon (`ferry serve`): listens for TLS connections, authenticates
//! clients by key, and serves transfers into and out of named modules.

pub mod config;
pub mod daemon;

/// The daemon's default TCP port.
pub const DEFAULT_PORT: u16 = 7420;
