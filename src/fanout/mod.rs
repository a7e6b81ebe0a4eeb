//! Fan-out: one source to many ferry daemons as a verified pipelined chain.
//!
//! ```text
//!            control (TLS, star): ticket, manifest, progress, reroutes, done
//!   source ──────────────┬──────────────┬──────────────┐
//!     │                  ▼              ▼              ▼
//!     └── data ──────►  h1  ── data ──► h2 ── data ──► h3      (chain, cut-through)
//!                        ◄── ack/nack ── ◄── ack/nack ──
//! ```
//!
//! The source reads each file once, cuts it into pieces ([`PIECE`]), signs each
//! piece's BLAKE3 with its key and sends the piece down the chain in frames of
//! at most [`FRAME`] bytes. Every hop writes the frames into a temporary file
//! and forwards them at once (cut-through), then, at the piece's end, checks
//! what it wrote against the signed hash: only a matching piece is committed
//! (and may later be served again); a bad one is refused (NACK) and re-sent
//! from the nearest upstream committed copy. A file is published (fsync,
//! rename) when all its pieces are committed. A predecessor that sees its
//! successor fail or stall dials the next host, learns what it has and where
//! it stands in the stream, replays the stream to it from there, and re-sends
//! older pieces it lacks from its own committed copy.
//!
//! Trust: the source signs a [`ticket::Ticket`] (job id, ordered hosts with
//! their keys, manifest root, expiry). A daemon takes the job only from a
//! client key it authorizes for the module, and a relay stream for it only
//! from a host the ticket names before it; a hop checks its successor's key
//! against the ticket. Destinations need no keys for each other.
//!
//! Not for the daemon's accept loop and module grants (that is
//! `server::fanout`), nor for the command line (`cli::fanout`).
//!
//! A test-only fault hook: with `FERRY_TEST_HOOKS=1` and
//! `FERRY_TEST_FANOUT_CORRUPT=N` in a daemon's environment, that hop flips one
//! bit in the Nth piece it forwards downstream, so that tests can prove a
//! damaged piece is never committed anywhere. Both variables are needed, so it
//! cannot fire in production by accident. The same switch enables
//! `FERRY_TEST_FANOUT_PACE_MS` ([`pace_hook`]), which slows a forwarder down
//! so that a loopback test can kill or stop a host half-way, and
//! `FERRY_TEST_FANOUT_RECV_PACE_MS` ([`receive_pace_hook`]), which makes a
//! daemon receive slowly (a slow host, to be moved to the tail), and
//! `FERRY_TEST_FANOUT_HINTS_DELAY_MS` ([`hints_delay_hook`]), which makes a
//! daemon slow to answer the source's questions about what it holds, and
//! `FERRY_TEST_FANOUT_ORDER_DELAY_MS` ([`order_delay_hook`]), which makes a
//! daemon take each new order of the chain late (a late order after a move).

pub mod connect;
pub mod hop;
pub mod job;
pub mod manifest;
pub mod relay;
pub mod source;
pub mod ticket;
pub mod wire;

/// Bytes per verified piece (what a hop commits, or refuses, at once).
pub const PIECE: u64 = 4 << 20;
/// Most bytes of new data one window of a delta's hints covers: the source
/// asks every host what it holds a window at a time, just ahead of its
/// reader ([`wire::Msg::Ask`]), and each host indexes only its old data
/// near those pieces, so that neither end holds an index of a whole file.
pub const WINDOW: u64 = 8 * PIECE;
/// Largest data frame forwarded (cut-through unit).
pub const FRAME: usize = 256 << 10;
/// The 9 bytes a fan-out connection opens with, instead of ferry's hello:
/// `ferryFAN` and the fan-out protocol's version, one digit. The fan-out
/// wire is spoken only between a source and daemons of the same version,
/// never negotiated down: a daemon answers another version's hello with a
/// one-line refusal ([`version_refusal`]), which a source of version 1 shows
/// as it is; a daemon from before version 2 takes a later hello for a session
/// or shell hello and answers with ferry's own (starting `ferry`), which the
/// source names as an older daemon ([`OLD_DAEMON`]). The old path (every
/// chunk name at the start) is not kept: its memory is what version 2 bounds.
/// Version 2: what a host holds is told a window at a time
/// ([`wire::Msg::Ask`], [`wire::Msg::Hints`]), not in `Ready`. Version 3:
/// a relay's `Have` says how far the host has taken the live stream
/// ([`wire::StreamPos`]), and a new predecessor replays the stream from
/// there (a version 2 daemon answers `ferryFAN3` with its refusal).
/// Version 4: a host that takes a new upstream tells the old one so
/// ([`wire::Msg::Fed`]), which then waits for its new order instead of
/// reporting a healthy host bypassed.
pub const HELLO: &[u8; 9] = b"ferryFAN4";

/// Whether `hello` opens a fan-out connection (of any version).
pub fn is_fanout_hello(hello: &[u8; 9]) -> bool {
    hello[..8] == HELLO[..8]
}

/// The refusal a daemon sends for another version's fan-out hello.
pub fn version_refusal(hello: &[u8; 9]) -> String {
    format!(
        "this daemon speaks fan-out protocol {} and the peer protocol {}: run the same ferry version on the source and every host",
        HELLO[8] as char,
        String::from_utf8_lossy(&hello[8..]).escape_debug()
    )
}

/// How a source names a daemon from before fan-out protocol 2.
pub const OLD_DAEMON: &str =
    "the daemon runs an older ferry (fan-out protocol 1): run the same ferry version on the source and every host";
/// How often a daemon reports its progress to the source: often enough that
/// the source sees a slow host within a second (several reports a window).
pub const PROGRESS: std::time::Duration = std::time::Duration::from_millis(100);
/// Default time without acknowledged progress before a successor is bypassed.
pub const DEFAULT_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Number of pieces of a file of `size` bytes.
pub fn pieces(size: u64) -> u32 {
    size.div_ceil(PIECE) as u32
}

/// The byte range of piece `piece` of a file of `size` bytes.
pub fn piece_range(size: u64, piece: u32) -> (u64, u64) {
    let start = piece as u64 * PIECE;
    (start, (start + PIECE).min(size))
}

/// The test pacing hook: with `FERRY_TEST_HOOKS=1`,
/// `FERRY_TEST_FANOUT_PACE_MS=N` makes a forwarder (source or hop) wait N ms
/// after each frame it forwards, so that a test on loopback can act half-way
/// through a transfer (kill a host, stop one).
pub fn pace_hook() -> Option<std::time::Duration> {
    hook_ms("FERRY_TEST_FANOUT_PACE_MS")
}

/// The test hook for a slow host: with `FERRY_TEST_HOOKS=1`,
/// `FERRY_TEST_FANOUT_RECV_PACE_MS=N` makes a daemon wait N ms after each
/// data frame it receives (as a host on a slow link would).
pub fn receive_pace_hook() -> Option<std::time::Duration> {
    hook_ms("FERRY_TEST_FANOUT_RECV_PACE_MS")
}

/// The test hook for a host slow to look at what it holds: with
/// `FERRY_TEST_HOOKS=1`, `FERRY_TEST_FANOUT_READY_DELAY_MS=N` makes a daemon
/// wait N ms before it answers a job's start (as a host copying a large
/// previous checkpoint into its new temporary file would).
pub fn ready_delay_hook() -> Option<std::time::Duration> {
    hook_ms("FERRY_TEST_FANOUT_READY_DELAY_MS")
}

/// The test hook for a host slow to tell what it holds: with
/// `FERRY_TEST_HOOKS=1`, `FERRY_TEST_FANOUT_HINTS_DELAY_MS=N` makes a daemon
/// wait N ms before it answers each of the source's questions about a
/// window ([`wire::Msg::Ask`]), as a host whose old data is on a slow disk
/// would.
pub fn hints_delay_hook() -> Option<std::time::Duration> {
    hook_ms("FERRY_TEST_FANOUT_HINTS_DELAY_MS")
}

/// The test hook for a late order: with `FERRY_TEST_HOOKS=1`,
/// `FERRY_TEST_FANOUT_ORDER_DELAY_MS=N` makes a daemon wait N ms before it
/// takes each new order of the chain the source sends ([`wire::Msg::Order`]),
/// as a host whose control connection is slow would.
pub fn order_delay_hook() -> Option<std::time::Duration> {
    hook_ms("FERRY_TEST_FANOUT_ORDER_DELAY_MS")
}

/// A test hook's milliseconds: `var`'s value, read only with
/// `FERRY_TEST_HOOKS=1` in the environment.
fn hook_ms(var: &str) -> Option<std::time::Duration> {
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
        return None;
    }
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// The test hook's piece number, if both variables are set.
pub fn corrupt_hook() -> Option<u64> {
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
        return None;
    }
    std::env::var("FERRY_TEST_FANOUT_CORRUPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}
