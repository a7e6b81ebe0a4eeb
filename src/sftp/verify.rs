//! Checking what crossed SFTP, where OpenSSH's server cannot hash a file
//! itself (it has no `check-file`): the hash of the stream as it was
//! written or read here ([`Hashing`]), compared with a hash the remote
//! computes by running a command ([`RemoteHash`], one of [`HASHERS`]:
//! `b3sum`, `xxh128sum`, `openssl dgst -sha256`, `sha256sum` or `shasum -a
//! 256`) or with the file read again over SFTP (`--verify reread`).
//! [`Verify`] is what a transfer asked for and how many files it checked.
//!
//! A file larger than one range ([`Ranges`], 256 MiB) is checked range by
//! range: the remote hashes each range ([`Runner::Range`]) as soon as every
//! write below its end is answered, while the later ranges are still being
//! written, and this side hashes the same ranges of the stream
//! ([`RangeHashing`]); after the last write only the last range is left to
//! hash, not the whole file. After each range's answer the same run starts
//! the remote's writeback of what is written so far in the background
//! ([`RANGE_FLUSH`]), so that the final fsync is left about one range to write.
//!
//! Not for deciding which command a remote has (the probe is
//! `transfer::sftp`'s) nor for what a mismatch does to a file (the
//! destination keeps it unpublished; the source fails it).
//!
//! # Security
//! No name is ever put into a shell line, and no name is ever read back:
//! the remote runs one fixed line ([`remote_line`]), names reach it only as
//! NUL-terminated bytes on its stdin, which xargs passes as whole arguments
//! to a fixed `sh` (or `bash`) script; the script opens each file on a descriptor of
//! its own and names it to the hash command as `/dev/fd/N`. What the
//! command prints therefore holds only names ferry chose: a file name with
//! a newline, or one that looks like another file's hash line, cannot pair
//! a hash with the wrong file nor shift the answers of the files after it.
//! Each answer is told apart by its place in the group, never by a name.
//! A range is named the same way: its file's name, its first MiB and its
//! length in MiB, each NUL-terminated on stdin, opened by the script.
//! So a group must reach the script whole: xargs runs with `-x`, and exits
//! rather than split a group whose names do not fit one command line;
//! the files it left unanswered are then read again over SFTP
//! ([`or_reread`]), never matched with a shifted answer.

use super::client::Sftp;
use super::wire;
use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// A hash a remote command can compute, computed here over the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Blake3,
    Xxh128,
    Sha256,
}

impl HashKind {
    /// The hex digits of one hash.
    pub fn hex_len(self) -> usize {
        match self {
            HashKind::Blake3 | HashKind::Sha256 => 64,
            HashKind::Xxh128 => 32,
        }
    }

    /// The hash of no bytes, as the remote command prints it (the probe
    /// compares with it, as rclone does).
    pub fn empty_hex(self) -> String {
        Hashing::new(self).hex()
    }
}

/// A command a remote may have that hashes the files named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hasher {
    /// What messages and the per-host cache call it.
    pub name: &'static str,
    /// The command line the files follow (after `--`).
    pub command: &'static str,
    pub kind: HashKind,
}

/// The hash commands tried, cheapest first. `openssl dgst -sha256` comes
/// before `sha256sum`: the same hash, with SHA-NI where the CPU has it
/// (0.29 s of CPU for 512 MiB where coreutils 9.1's `sha256sum` takes 1.05
/// s); `shasum` (Perl) is the last resort, as on a Mac.
pub const HASHERS: [Hasher; 5] = [
    Hasher {
        name: "b3sum",
        command: "b3sum",
        kind: HashKind::Blake3,
    },
    Hasher {
        name: "xxh128sum",
        command: "xxh128sum",
        kind: HashKind::Xxh128,
    },
    Hasher {
        name: "openssl dgst -sha256",
        command: "openssl dgst -sha256 -r",
        kind: HashKind::Sha256,
    },
    Hasher {
        name: "sha256sum",
        command: "sha256sum",
        kind: HashKind::Sha256,
    },
    Hasher {
        name: "shasum -a 256",
        command: "shasum -a 256",
        kind: HashKind::Sha256,
    },
];

/// A hash being computed over a stream.
pub enum Hashing {
    Blake3(Box<blake3::Hasher>),
    Xxh128(Box<xxhash_rust::xxh3::Xxh3>),
    Sha256(aws_lc_rs::digest::Context),
}

impl Hashing {
    pub fn new(kind: HashKind) -> Hashing {
        match kind {
            HashKind::Blake3 => Hashing::Blake3(Box::default()),
            HashKind::Xxh128 => Hashing::Xxh128(Box::default()),
            HashKind::Sha256 => {
                Hashing::Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
            }
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hashing::Blake3(h) => {
                h.update(data);
            }
            Hashing::Xxh128(h) => h.update(data),
            Hashing::Sha256(c) => c.update(data),
        }
    }
    /// Lowercase hex, as the remote commands print it.
    pub fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hashing::Blake3(h) => h.finalize().as_bytes().to_vec(),
            Hashing::Xxh128(h) => h.digest128().to_be_bytes().to_vec(),
            Hashing::Sha256(c) => c.finish().as_ref().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A stream's hashes, one per range of `range` bytes (the last range may
/// be shorter; an empty stream has one range, empty). A stream of one
/// range has the hash of the whole.
pub struct RangeHashing {
    kind: HashKind,
    range: u64,
    /// Bytes hashed into `now`.
    at: u64,
    now: Hashing,
    done: Vec<String>,
}

impl RangeHashing {
    pub fn new(kind: HashKind, range: u64) -> RangeHashing {
        RangeHashing {
            kind,
            range: range.max(1),
            at: 0,
            now: Hashing::new(kind),
            done: Vec::new(),
        }
    }
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.at == self.range {
                let full = std::mem::replace(&mut self.now, Hashing::new(self.kind));
                self.done.push(full.hex());
                self.at = 0;
            }
            let n = (self.range - self.at).min(data.len() as u64) as usize;
            self.now.update(&data[..n]);
            self.at += n as u64;
            data = &data[n..];
        }
    }
    /// Each range's hash, in the remote command's hex, first to last.
    pub fn hexes(mut self) -> Vec<String> {
        self.done.push(self.now.hex());
        self.done
    }
}

/// How a transfer's files are checked beyond ssh's MAC.
#[derive(Clone)]
pub enum How {
    /// A command on the remote hashes each uploaded file before it is
    /// renamed into place.
    Remote(RemoteHash),
    /// The file is read again over SFTP and hashed here (BLAKE3).
    Reread,
}

/// What a range's run does once its answer is printed: starts `sync -d`
/// (GNU coreutils 8.24 on) of the file it has open as its stdin, an
/// fdatasync of everything written to it so far, so that the remote writes
/// the file out while the later ranges upload and the final
/// `fsync@openssh.com` finds about one range to write rather than the whole
/// file (the kernel starts no writeback of its own in a few seconds:
/// `dirty_background_ratio` is a share of the memory). A process beside the
/// SFTP server, never a request on the SFTP connection: an fsync there would
/// stall the server's single thread. An optimisation only: its status and
/// output are dropped, and the final fsync stays the durability guarantee.
///
/// In the background: on a disk slower than the link one fdatasync waits
/// for the whole dirty backlog (tens of seconds), and the next range's
/// hash must not wait for it (issue 22). The file goes to the flush as
/// descriptor 3 (`exec 3<&0`): dash (and POSIX, in a shell without job
/// control) gives a background command /dev/null as its stdin; bash keeps
/// the group's. Under a `sh` that marks the descriptors `exec` opens
/// close-on-exec (ksh93 does) `sync` cannot open `/dev/fd/3`, fails
/// silently, and nothing is flushed. Its stdout and stderr are /dev/null, never the
/// ssh channel, so a flush still running holds neither xargs nor the ssh
/// session open.
///
/// Only where `dd` (the range's own reader, of the same coreutils) says
/// GNU coreutils 8.24 or later, and `sync` (run by that path) is in the
/// same directory as that `dd`: GNU `sync` before 8.24 and busybox's
/// without its `-d` ignore a file argument and sync every file system on
/// the machine, at every range (the BSDs' take no file argument either).
/// `sync` itself cannot be asked its version: busybox's would sync
/// everything to answer `sync --version`. Elsewhere nothing runs. (`dd
/// --version` reads /dev/null at most, and what it prints is only matched.)
pub const RANGE_FLUSH: &str = "d=$(command -v dd); s=$(command -v sync); \
     case $d in \"${s%/*}/dd\") case $(dd --version </dev/null) in \
     *\"coreutils) 8.2\"[4-9]*|*\"coreutils) 8.\"[3-9][0-9]*|\
     *\"coreutils) \"9.*|*\"coreutils) \"[1-9][0-9].*) \
     exec 3<&0; { \"$s\" -d /dev/fd/3 >/dev/null 2>&1 & };; esac;; esac";

/// Where a large file's ranges are hashed on the remote, and how large a
/// range is.
///
/// 256 MiB: the remote hashes a range while the next one is written (its
/// SHA-256 with SHA-NI ~0.15 s of CPU, the upload of 256 MiB ~1 s on
/// loopback), so it keeps up, and after the last write only the last range
/// is hashed (≤ 0.15 s, where the whole of a 2 GiB file took ~1.2 s). Each
/// range costs a `sh`, a `dd` and the command's start (~10 ms), and a
/// range a mismatch is reported in; a file of up to one range is checked
/// whole, in the groups of names as before.
#[derive(Clone)]
pub struct Ranges {
    /// Its own ssh connection, logged in at the first range asked (a
    /// transfer of small files never opens it).
    pub hash: RemoteHash,
    /// A multiple of 1 MiB (`dd` counts in MiB).
    pub bytes: u64,
}

/// The range size, in bytes.
pub const RANGE_BYTES: u64 = 256 << 20;

/// What a transfer checks, and how many files passed.
#[derive(Clone)]
pub struct Verify {
    pub how: How,
    /// Where files larger than one range are hashed range by range (only
    /// with [`How::Remote`]).
    pub ranges: Option<Ranges>,
    /// Files whose check passed.
    pub checked: Arc<AtomicU64>,
    /// Of those asked of a remote command, the files it left unanswered
    /// and that were read again over SFTP instead ([`or_reread`]).
    pub reread: Arc<AtomicU64>,
}

impl Verify {
    pub fn new(how: How) -> Verify {
        Verify {
            how,
            ranges: None,
            checked: Default::default(),
            reread: Default::default(),
        }
    }
    /// The bytes a stream's ranges are hashed in: a file up to this long
    /// is checked whole.
    pub fn range_bytes(&self) -> u64 {
        self.ranges.as_ref().map_or(u64::MAX, |r| r.bytes)
    }
    /// The hash the stream is to be hashed with.
    pub fn kind(&self) -> HashKind {
        match &self.how {
            How::Remote(h) => h.kind,
            How::Reread => HashKind::Blake3,
        }
    }
    /// What the check is called in messages.
    pub fn what(&self) -> String {
        match &self.how {
            How::Remote(h) => format!("{} on the remote", h.hasher.name),
            How::Reread => "the file read again over SFTP".into(),
        }
    }
    pub fn passed(&self) {
        self.checked.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }
    /// How many files were read again because the remote command gave no
    /// answer for them.
    pub fn reread_count(&self) -> u64 {
        self.reread.load(Ordering::Relaxed)
    }
}

/// Reads a remote file whole over SFTP (many reads outstanding) and hashes
/// it.
pub fn reread(sftp: &Sftp, path: &[u8], kind: HashKind) -> io::Result<String> {
    let mut hexes = reread_ranges(sftp, path, kind, u64::MAX)?;
    Ok(hexes.pop().unwrap_or_default())
}

/// Reads a remote file whole over SFTP and hashes each `range` bytes of it
/// ([`RangeHashing`]).
pub fn reread_ranges(
    sftp: &Sftp,
    path: &[u8],
    kind: HashKind,
    range: u64,
) -> io::Result<Vec<String>> {
    let h = sftp.open(path, wire::OPEN_READ, &wire::Attrs::default())?;
    let mut hashing = RangeHashing::new(kind, range);
    let step = sftp.limits.read as u64;
    let mut asked = VecDeque::new();
    let mut next = 0u64;
    let result = loop {
        while asked.len() < 16 {
            match sftp.send_read(&h, next, step as u32) {
                Ok(p) => asked.push_back((next, p)),
                Err(e) => return Err(e),
            }
            next += step;
        }
        let (at, p) = asked.pop_front().expect("asked");
        let d = match sftp.read_reply(p) {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        if d.is_empty() {
            break Ok(());
        }
        hashing.update(&d);
        if (d.len() as u64) < step {
            // a short answer: the rest is asked for again from there
            for (_, p) in asked.drain(..) {
                let _ = sftp.read_reply(p);
            }
            next = at + d.len() as u64;
        }
    };
    for (_, p) in asked {
        let _ = sftp.read_reply(p);
    }
    let _ = sftp.close(&h);
    result.map(|_| hashing.hexes())
}

/// The remote's answer for the file at `path`, or, where the remote command
/// could give none because it ended (xargs refusing a group too long for
/// one command line, the command's connection lost), the file read again
/// over SFTP and hashed here with the same `kind`. A wrong hash and a file
/// the command could not hash stay what they are.
pub fn or_reread(
    got: io::Result<String>,
    sftp: &Sftp,
    path: &[u8],
    verify: &Verify,
) -> io::Result<String> {
    match got {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            verify.reread.fetch_add(1, Ordering::Relaxed);
            reread(sftp, path, verify.kind())
        }
        got => got,
    }
}

/// What runs each group of names on the remote. A POSIX `sh` opens the
/// files as descriptors 3 to 9 (its redirections take one digit), so one
/// run of the command hashes seven files; `bash`, where the remote has it,
/// opens descriptors of two digits, and one run hashes 64. Each run costs a
/// shell and the command's start-up (`openssl` takes ~8 ms to start), so on
/// a fast link 2,000 small files spent seconds starting commands in groups
/// of seven. xargs starts a run as soon as it has read a group's names; a
/// group is padded with [`PAD`] to be hashed at once.
///
/// [`Runner::Range`] is not a probe's result: it hashes one range of one
/// large file per run ([`Ranges`]), in `sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    Sh,
    Bash,
    Range,
}

impl Runner {
    /// Files per run.
    pub fn group(self) -> usize {
        match self {
            Runner::Sh => 7,
            Runner::Bash => 64,
            Runner::Range => 1,
        }
    }

    /// The descriptor the first file is opened on.
    fn first_fd(self) -> usize {
        match self {
            Runner::Sh | Runner::Range => 3,
            Runner::Bash => 10,
        }
    }

    /// How the runner is started. `--norc`: bash started with `SSH_CLIENT`
    /// set and a shell level below 2 (xargs under the login shell's `exec`)
    /// reads `~/.bashrc` as if it were the login, for every group: a conda
    /// or pyenv set-up there cost ~40 ms a run here (2,000 names: 2.78 s
    /// against 0.44 s), and one that prints would garble the answers.
    fn program(self) -> &'static str {
        match self {
            Runner::Sh | Runner::Range => "sh",
            Runner::Bash => "bash --norc",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Runner::Sh | Runner::Range => "sh",
            Runner::Bash => "bash",
        }
    }

    /// A frame of output is at most this many lines (a command that prints
    /// more is not answering what it was asked).
    fn frame_lines(self) -> usize {
        4 * self.group()
    }
}

/// The most bytes of names one group carries: GNU xargs takes a command
/// line of 128 KiB by default and busybox's 32 KiB, and 64 names of long
/// paths would pass either (seven could not pass GNU's: a path is at most
/// 4 KiB). The script (~2.5 KiB) and the padding take the rest.
const GROUP_BYTES: usize = 24 << 10;

/// What pads a group; its answer is dropped (a slot is told by its place,
/// so a real file of this name is hashed like any other).
const PAD: &[u8] = b"/dev/null";

/// The fixed line the remote runs for `command`: xargs hands each group of
/// names ([`Runner::group`]) to `sh -c SCRIPT` (or `bash -c`) as its
/// arguments (`-x`: whole, or not at all: xargs exits); the script opens
/// the files as descriptors from [`Runner::first_fd`] on and runs the
/// command once on `/dev/fd/N` for each, then prints `=STATUS`. Where that
/// run fails (a file that cannot be opened, a remote without `/dev/fd`)
/// each file of the group is hashed alone from its stdin, each followed by
/// its own `=STATUS` line. The script has no `'` and no `\`, so it quotes
/// the same in every login shell (sh, bash, zsh, fish, tcsh).
///
/// For [`Runner::Range`] each run takes three arguments, a name, the
/// range's first MiB and its MiB, opens the file as its stdin, and pipes
/// that range (`dd`, which seeks to it) into the command, then prints
/// `=STATUS` (a file that cannot be opened: `=1`). After the answer it
/// starts the file's flush in the background ([`RANGE_FLUSH`]); whatever
/// that does, the run prints nothing more and exits 0 (xargs stops at a run that exits 255).
pub fn remote_line(command: &str, runner: Runner) -> String {
    if runner == Runner::Range {
        return format!(
            "xargs -0 -x -n 3 sh -c 'exec 2>/dev/null; \
             {{ dd bs=1048576 skip=$2 count=$3 | {command} --; echo =$?; {RANGE_FLUSH}; true; }} \
             <\"$1\" || echo =1' sh"
        );
    }
    let fds = (0..runner.group()).map(|i| i + runner.first_fd());
    let files: Vec<String> = fds.clone().map(|fd| format!("/dev/fd/{fd}")).collect();
    let opens: Vec<String> = fds
        .enumerate()
        .map(|(i, fd)| format!("{fd}<\"${{{}}}\"", i + 1))
        .collect();
    format!(
        "xargs -0 -x -n {} {} -c 'exec 2>/dev/null; {command} -- {} {}; s=$?; echo =$s; \
         [ $s = 0 ] || for f in \"$@\"; do {command} -- <\"$f\"; echo =$?; done' {}",
        runner.group(),
        runner.program(),
        files.join(" "),
        opens.join(" "),
        runner.name(),
    )
}

/// A remote file's hash, or why there is none.
pub type Answer = mpsc::Receiver<io::Result<String>>;

type Slot = Option<mpsc::Sender<io::Result<String>>>;

/// One ssh connection running [`remote_line`] on the remote, started on
/// first use; each name asked gets the hash of the slot it was sent in.
/// Clones share it.
#[derive(Clone)]
pub struct RemoteHash {
    pub hasher: Hasher,
    pub kind: HashKind,
    runner: Runner,
    state: Arc<Mutex<State>>,
    asked: Arc<Mutex<Asked>>,
}

enum State {
    /// The ssh command, not started yet.
    Idle(Option<Command>),
    Running {
        stdin: ChildStdin,
        child: Child,
        /// Names of the group not sent yet, NUL-terminated.
        group: Vec<u8>,
        /// Where their answers go, in order.
        slots: Vec<Slot>,
    },
    Failed(String),
}

/// Groups sent and not answered yet, oldest first.
#[derive(Default)]
struct Asked {
    queue: VecDeque<Vec<Slot>>,
    /// Why the command ended, once it did.
    ended: Option<String>,
}

fn gone(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("the remote hash command ended: {why}"),
    )
}

impl RemoteHash {
    /// `cmd` is an ssh to the remote, without its command. The connection
    /// is started at once: its login (about 11 round trips) overlaps the
    /// transfer's first files rather than holding up their checks.
    pub fn new(mut cmd: Command, hasher: Hasher, runner: Runner) -> RemoteHash {
        cmd.arg(remote_line(hasher.command, runner));
        let h = RemoteHash {
            hasher,
            kind: hasher.kind,
            runner,
            state: Arc::new(Mutex::new(State::Idle(Some(cmd)))),
            asked: Default::default(),
        };
        {
            let mut state = h.state.lock().unwrap_or_else(|p| p.into_inner());
            // (a failure is kept, and said at the first file asked)
            let _ = h.start(&mut state);
        }
        h
    }

    /// As [`RemoteHash::new`], but the connection is started at the first
    /// name asked (a range hash: most transfers never need it).
    pub fn on_demand(mut cmd: Command, hasher: Hasher, runner: Runner) -> RemoteHash {
        cmd.arg(remote_line(hasher.command, runner));
        RemoteHash {
            hasher,
            kind: hasher.kind,
            runner,
            state: Arc::new(Mutex::new(State::Idle(Some(cmd)))),
            asked: Default::default(),
        }
    }

    /// Asks for the hash of `mibs` MiB of `path` from its MiB `first` on
    /// (a [`Runner::Range`] hash: sent at once).
    pub fn ask_range(&self, path: &[u8], first: u64, mibs: u64) -> io::Result<Answer> {
        let mut item = path.to_vec();
        item.push(0);
        item.extend_from_slice(first.to_string().as_bytes());
        item.push(0);
        item.extend_from_slice(mibs.to_string().as_bytes());
        self.ask_item(path, &item)
    }

    /// Asks for the hash of `path` (sent with the next full group, or at
    /// the next [`RemoteHash::flush`]). Once the command has ended, the
    /// answer is that it ended (see [`or_reread`]); only a name the command
    /// could never be given is an error here.
    pub fn ask(&self, path: &[u8]) -> io::Result<Answer> {
        self.ask_item(path, path)
    }

    /// Queues `item` (`path`, and for a range its numbers, NUL-separated)
    /// as one slot.
    fn ask_item(&self, path: &[u8], item: &[u8]) -> io::Result<Answer> {
        if path.contains(&0) || path.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty name or one with a NUL byte",
            ));
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = mpsc::channel();
        if let Err(e) = self.start(&mut state) {
            let _ = tx.send(Err(e));
            return Ok(rx);
        }
        // names that would make the group's command line longer than xargs
        // takes (`-x`: it would exit) go in the next group, this one padded
        let full = match &*state {
            State::Running { group, slots, .. } => {
                !slots.is_empty() && group.len() + item.len() + 1 > GROUP_BYTES
            }
            _ => false,
        };
        if full {
            self.send_group(&mut state);
        }
        let State::Running { group, slots, .. } = &mut *state else {
            // (the command ended as the group was sent: answered so)
            let _ = tx.send(Err(gone("it ended")));
            return Ok(rx);
        };
        group.extend_from_slice(item);
        group.push(0);
        slots.push(Some(tx));
        if slots.len() == self.runner.group() {
            self.send_group(&mut state);
        }
        Ok(rx)
    }

    /// Sends the names not sent yet, padded to a whole group. (A command
    /// that ended answers them so.)
    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Running { slots, .. } = &*state {
            if !slots.is_empty() {
                self.send_group(&mut state);
            }
        }
    }

    /// Closes the command's input and waits for it (a few seconds at most).
    pub fn end(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Running { child, stdin, .. } =
            std::mem::replace(&mut *state, State::Failed("ended".into()))
        {
            drop(stdin);
            let mut child = child;
            for _ in 0..250 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start(&self, state: &mut State) -> io::Result<()> {
        let cmd = match state {
            State::Running { .. } => return Ok(()),
            State::Failed(why) => return Err(gone(why)),
            State::Idle(cmd) => cmd.take(),
        };
        let Some(mut cmd) = cmd else {
            return Err(gone("not started"));
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                *state = State::Failed(e.to_string());
                return Err(e);
            }
        };
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let asked = self.asked.clone();
        let len = self.kind.hex_len();
        let runner = self.runner;
        std::thread::Builder::new()
            .name("ferry-sftp-hash".into())
            .spawn(move || read_answers(asked, io::BufReader::new(stdout), len, runner))?;
        *state = State::Running {
            stdin,
            child,
            group: Vec::new(),
            slots: Vec::new(),
        };
        Ok(())
    }

    /// Sends the group. Its slots are queued first, so a command that has
    /// ended (or ends now: the write fails) answers each that it ended.
    fn send_group(&self, state: &mut State) {
        let State::Running {
            stdin,
            group,
            slots,
            ..
        } = state
        else {
            return;
        };
        while slots.len() < self.runner.group() {
            slots.push(None);
            group.extend_from_slice(PAD);
            group.push(0);
        }
        // queued before it is sent: its answers may come at once
        {
            let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            let slots = std::mem::take(slots);
            if let Some(why) = &asked.ended {
                for tx in slots.into_iter().flatten() {
                    let _ = tx.send(Err(gone(why)));
                }
                group.clear();
                return;
            }
            asked.queue.push_back(slots);
        }
        let r = stdin.write_all(group).and_then(|_| stdin.flush());
        group.clear();
        if let Err(e) = r {
            // (the reader answers the queued slots when the output ends);
            // the command is reaped, not left a zombie until ferry exits
            if let State::Running { mut child, .. } =
                std::mem::replace(state, State::Failed(e.to_string()))
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn answer(slot: Slot, r: io::Result<String>) {
    if let Some(tx) = slot {
        let _ = tx.send(r);
    }
}

fn not_hashed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the remote hash command printed no hash for it",
    )
}

/// One frame of the script's output: the lines before an `=STATUS` line,
/// and the status (`None` at the end of the output).
type Frame = (Vec<Vec<u8>>, i32);

fn read_frame(r: &mut impl BufRead, max_lines: usize) -> io::Result<Option<Frame>> {
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        if line.ends_with(b"\n") {
            line.pop();
        }
        if let Some(status) = line.strip_prefix(b"=") {
            let status = std::str::from_utf8(status)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1);
            return Ok(Some((lines, status)));
        }
        if lines.len() < max_lines {
            lines.push(line);
        }
    }
}

/// The hash a line starts with: `len` bytes with no space (what is not
/// hex then fails the comparison as a wrong hash), then a space. The `rest`
/// after the hash's separator (`  ` or ` *`), where asked for, must be
/// exactly that.
fn hash_of(line: &[u8], len: usize, rest: Option<&[u8]>) -> Option<String> {
    let hex = line.get(..len)?;
    if hex.contains(&b' ') {
        return None;
    }
    let after = line.get(len..)?;
    if !after.starts_with(b" ") {
        return None;
    }
    if let Some(rest) = rest {
        let name = after
            .strip_prefix(b"  ")
            .or_else(|| after.strip_prefix(b" *"))?;
        if name != rest {
            return None;
        }
    }
    Some(String::from_utf8_lossy(hex).into_owned())
}

/// A group's answers from a run over all its files: one line per
/// descriptor, in order, each naming the descriptor it hashed.
fn group_hashes(lines: &[Vec<u8>], len: usize, runner: Runner) -> Option<Vec<String>> {
    if lines.len() != runner.group() {
        return None;
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let fd = i + runner.first_fd();
            hash_of(l, len, Some(format!("/dev/fd/{fd}").as_bytes()))
        })
        .collect()
}

/// A file's answer from a run over its stdin alone.
fn one_hash((lines, status): Frame, len: usize) -> io::Result<String> {
    match lines.as_slice() {
        [line] if status == 0 => hash_of(line, len, None).ok_or_else(not_hashed),
        _ => Err(not_hashed()),
    }
}

/// Answers each group sent, in order, from the frames the script prints.
fn read_answers(asked: Arc<Mutex<Asked>>, mut r: impl BufRead, len: usize, runner: Runner) {
    let max = runner.frame_lines();
    let why = loop {
        let frame = match read_frame(&mut r, max) {
            Ok(Some(f)) => f,
            Ok(None) => break "it exited".to_string(),
            Err(e) => break e.to_string(),
        };
        let slots = asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue
            .pop_front();
        let Some(mut slots) = slots else {
            break "it printed more than it was asked".to_string();
        };
        if runner == Runner::Range {
            // one range per run: its answer is the run's
            if let Some(slot) = slots.into_iter().next() {
                answer(slot, one_hash(frame, len));
            }
            continue;
        }
        if frame.1 == 0 {
            let hashes = group_hashes(&frame.0, len, runner);
            for (i, slot) in slots.into_iter().enumerate() {
                answer(
                    slot,
                    hashes.as_ref().map(|h| h[i].clone()).ok_or_else(not_hashed),
                );
            }
            continue;
        }
        // each file of the group, alone
        let mut failed = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            match read_frame(&mut r, max) {
                Ok(Some(f)) => answer(slot.take(), one_hash(f, len)),
                Ok(None) => failed = Some((i, "it exited".to_string())),
                Err(e) => failed = Some((i, e.to_string())),
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some((_, why)) = failed {
            for slot in slots {
                answer(slot, Err(gone(&why)));
            }
            break why;
        }
    };
    let mut a = asked.lock().unwrap_or_else(|p| p.into_inner());
    for slots in std::mem::take(&mut a.queue) {
        for slot in slots {
            answer(slot, Err(gone(&why)));
        }
    }
    a.ended = Some(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GROUP: usize = 7;

    #[test]
    fn empty_hashes_are_what_the_commands_print_for_no_input() {
        assert_eq!(
            HashKind::Sha256.empty_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            HashKind::Blake3.empty_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            HashKind::Xxh128.empty_hex(),
            "99aa06d3014798d86001c324468d497f"
        );
    }

    fn slots(n: usize) -> (Vec<Slot>, Vec<Answer>) {
        (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                (Some(tx), rx)
            })
            .unzip()
    }

    fn run(out: &str, groups: Vec<Vec<Slot>>, len: usize) {
        run_by(out, groups, len, Runner::Sh)
    }

    fn run_by(out: &str, groups: Vec<Vec<Slot>>, len: usize, runner: Runner) {
        let asked = Arc::new(Mutex::new(Asked {
            queue: groups.into(),
            ended: None,
        }));
        read_answers(asked, io::Cursor::new(out.as_bytes().to_vec()), len, runner);
    }

    /// A whole group's run answers each slot by its descriptor; lines are
    /// taken only where each names the descriptor of its place.
    #[test]
    fn a_group_is_answered_by_place_and_descriptor() {
        let h: Vec<String> = (0..GROUP).map(|i| format!("{i:x}").repeat(64)).collect();
        let good: String = (0..GROUP)
            .map(|i| format!("{} */dev/fd/{}\n", h[i], i + 3))
            .collect();
        let (a, ra) = slots(GROUP);
        let (b, rb) = slots(GROUP);
        // the second group's lines are out of order: not taken
        let mut swapped: Vec<String> = (0..GROUP)
            .map(|i| format!("{}  /dev/fd/{}\n", h[i], i + 3))
            .collect();
        swapped.swap(0, 1);
        run(
            &format!("{good}=0\n{}=0\n", swapped.concat()),
            vec![a, b],
            64,
        );
        for (i, r) in ra.iter().enumerate() {
            assert_eq!(r.recv().unwrap().unwrap(), h[i]);
        }
        for r in rb {
            assert!(r.recv().unwrap().is_err());
        }
    }

    /// A group whose run failed is answered file by file; a file with no
    /// line, two lines or a failed status has no hash; the groups after it
    /// keep their own answers, and what was never answered fails when the
    /// command ends.
    #[test]
    fn a_failed_group_is_answered_file_by_file() {
        let h = "c".repeat(32);
        let (a, ra) = slots(GROUP);
        let (b, rb) = slots(GROUP);
        let (c, rc) = slots(GROUP);
        let mut out = format!("{h}  /dev/fd/3\n=1\n");
        out += &format!("{h}  -\n=0\n");
        out += "=1\n";
        out += &format!("{h}  -\n{h}  -\n=0\n");
        out += &format!("{h}  stdin\n=2\n");
        for _ in 4..GROUP {
            out += &format!("{h}  -\n=0\n");
        }
        let all: String = (0..GROUP)
            .map(|i| format!("{h}  /dev/fd/{}\n", i + 3))
            .collect();
        out += &format!("{all}=0\n");
        run(&out, vec![a, b, c], 32);
        let got: Vec<bool> = ra.iter().map(|r| r.recv().unwrap().is_ok()).collect();
        assert_eq!(got[..4], [true, false, false, false]);
        assert!(got[4..].iter().all(|ok| *ok));
        for r in rb {
            assert_eq!(r.recv().unwrap().unwrap(), h);
        }
        for r in rc {
            let e = r.recv().unwrap().unwrap_err();
            assert!(e.to_string().contains("ended"), "{e}");
        }
    }

    /// The line the remote runs holds the command and fixed words only.
    #[test]
    fn the_remote_line_names_descriptors_not_files() {
        assert_eq!(Runner::Sh.group(), GROUP);
        let line = remote_line("sha256sum", Runner::Sh);
        assert!(
            line.starts_with("xargs -0 -x -n 7 sh -c 'exec 2>/dev/null; sha256sum -- /dev/fd/3 ")
        );
        assert!(line.contains(" 3<\"${1}\" 4<\"${2}\" "));
        assert!(line.contains(" 9<\"${7}\"; s=$?"));
        assert!(line.ends_with("' sh"));
        assert_eq!(line.matches('\'').count(), 2);
        assert!(!line.contains('\\'));
    }

    /// With bash, a run opens 64 files on descriptors 10 to 73 (two digits,
    /// which a POSIX sh would read as a word), and its lines are taken by
    /// those descriptors: a line naming the descriptor `sh` would use is not.
    #[test]
    fn with_bash_a_group_is_64_files_on_two_digit_descriptors() {
        let line = remote_line("openssl dgst -sha256 -r", Runner::Bash);
        assert!(line.starts_with(
            "xargs -0 -x -n 64 bash --norc -c 'exec 2>/dev/null; openssl dgst -sha256 -r -- /dev/fd/10 /dev/fd/11 "
        ));
        assert!(line.contains(" /dev/fd/73 10<\"${1}\" 11<\"${2}\" "));
        assert!(line.contains(" 73<\"${64}\"; s=$?"));
        assert!(line.ends_with("' bash"));
        assert_eq!(line.matches('\'').count(), 2);
        assert!(!line.contains('\\'));
        let h: Vec<String> = (0..64).map(|i| format!("{:02x}", i).repeat(32)).collect();
        // (`openssl dgst -r` prints as coreutils does: `HEX *NAME`)
        let good: String = (0..64)
            .map(|i| format!("{} */dev/fd/{}\n", h[i], i + 10))
            .collect();
        let sh_fds: String = (0..64)
            .map(|i| format!("{}  /dev/fd/{}\n", h[i], i + 3))
            .collect();
        let (a, ra) = slots(64);
        let (b, rb) = slots(64);
        run_by(
            &format!("{good}=0\n{sh_fds}=0\n"),
            vec![a, b],
            64,
            Runner::Bash,
        );
        for (i, r) in ra.iter().enumerate() {
            assert_eq!(r.recv().unwrap().unwrap(), h[i]);
        }
        for r in rb {
            assert!(r.recv().unwrap().is_err());
        }
    }

    /// A stream's ranges split where a range ends, inside a write or on its
    /// edge; a stream of at most one range has the whole stream's hash.
    #[test]
    fn range_hashes_split_at_each_range_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = |d: &[u8]| {
            let mut h = Hashing::new(HashKind::Xxh128);
            h.update(d);
            h.hex()
        };
        for len in [0, 1, 999, 1000, 1001, 2999, 3000, 3001, 10_000] {
            for step in [1, 7, 1000, 4096] {
                let mut r = RangeHashing::new(HashKind::Xxh128, 1000);
                for c in data[..len].chunks(step) {
                    r.update(c);
                }
                let want: Vec<String> = if len == 0 {
                    vec![whole(&[])]
                } else {
                    data[..len].chunks(1000).map(whole).collect()
                };
                assert_eq!(r.hexes(), want, "len {len} step {step}");
            }
        }
        let mut one = RangeHashing::new(HashKind::Xxh128, u64::MAX);
        one.update(&data);
        assert_eq!(one.hexes(), vec![whole(&data)]);
    }

    /// The range line holds fixed words only; run here (through `sh -c` in
    /// place of ssh) on a file with a hostile name, it answers each range
    /// asked as this side hashes it, and nothing in the name runs.
    #[test]
    fn ranges_of_a_hostile_name_are_hashed_by_the_range_line() {
        let line = remote_line("sha256sum", Runner::Range);
        assert_eq!(line.matches('\'').count(), 2);
        assert!(!line.contains('\\'));
        assert!(line.ends_with("' sh"));
        let t = tempfile::tempdir().unwrap();
        let name = "-a b\n$(touch ran)*`touch ran2`;x\u{e9}";
        let path = t.path().join(name);
        let data: Vec<u8> = (0..(3u32 << 20) + 12345).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut cmd = Command::new("sh");
        cmd.current_dir(t.path()).arg("-c");
        let sha = HASHERS.iter().find(|h| h.name == "sha256sum").unwrap();
        let h = RemoteHash::on_demand(cmd, *sha, Runner::Range);
        let p = path.as_os_str().as_encoded_bytes();
        // MiB 0, 1 and 2, then the last 12345 bytes (one MiB asked)
        let asked: Vec<Answer> = (0..4).map(|k| h.ask_range(p, k, 1).unwrap()).collect();
        let mut want = RangeHashing::new(HashKind::Sha256, 1 << 20);
        want.update(&data);
        let got: Vec<String> = asked
            .into_iter()
            .map(|a| a.recv().unwrap().unwrap())
            .collect();
        assert_eq!(got, want.hexes());
        // a file that is not there has no hash
        let gone = h.ask_range(b"/nonexistent/x", 0, 1).unwrap();
        assert!(gone.recv().unwrap().is_err());
        h.end();
        assert!(!t.path().join("ran").exists() && !t.path().join("ran2").exists());
    }

    /// Issue 22 (review): the flush runs in the background, so a slow one
    /// (an fdatasync waiting for a slow disk's whole dirty backlog) holds
    /// back neither the next range's answer nor the end of the command.
    /// With a `sync` that sleeps 3 s, four ranges are all answered, and the
    /// command has ended, within 2 s (before: at 0, 3, 6 and 9 s), under
    /// dash and under bash as the `sh` that xargs runs; each flush still
    /// comes, of the file on descriptor 3.
    #[test]
    fn a_slow_flush_holds_back_no_answer_and_not_the_end() {
        let data: Vec<u8> = (0..(3u32 << 20) + 999).map(|i| (i % 239) as u8).collect();
        let mut want = RangeHashing::new(HashKind::Sha256, 1 << 20);
        want.update(&data);
        let want = want.hexes();
        let sha = HASHERS.iter().find(|h| h.name == "sha256sum").unwrap();
        for shell in ["/bin/dash", "/bin/bash"] {
            if !Path::new(shell).exists() {
                continue;
            }
            let t = tempfile::tempdir().unwrap();
            let bin = t.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            let log = t.path().join("sync.log");
            let dd = real("dd");
            fake(
                &bin,
                "dd",
                format!(
                    "[ \"$1\" = --version ] && {{ echo 'dd (GNU coreutils) 9.4'; exit 0; }}\nexec {} \"$@\"\n",
                    dd.display()
                ),
            );
            fake(
                &bin,
                "sync",
                format!(
                    "sleep 3\necho \"$* $(readlink /proc/$$/fd/3) $(stat -L -c %s /proc/$$/fd/3)\" >> '{}'\n",
                    log.display()
                ),
            );
            std::os::unix::fs::symlink(shell, bin.join("sh")).unwrap();
            let path = t.path().join("ckpt.bin");
            std::fs::write(&path, &data).unwrap();
            let mut cmd = Command::new("sh");
            let search = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            cmd.env("PATH", search).arg("-c");
            let h = RemoteHash::on_demand(cmd, *sha, Runner::Range);
            let p = path.as_os_str().as_encoded_bytes();
            let began = std::time::Instant::now();
            let asked: Vec<Answer> = (0..4).map(|k| h.ask_range(p, k, 1).unwrap()).collect();
            let got: Vec<String> = asked
                .into_iter()
                .map(|a| a.recv().unwrap().unwrap())
                .collect();
            assert_eq!(got, want, "{shell}");
            let answered = began.elapsed();
            h.end();
            let ended = began.elapsed();
            assert!(
                // (one flush waited for is 3 s; the four were 9 s)
                answered < std::time::Duration::from_millis(2800)
                    && ended < std::time::Duration::from_millis(2800),
                "{shell}: answered after {answered:?}, ended after {ended:?}"
            );
            // the flushes come after, in the background (10 s at most)
            let each = format!("-d /dev/fd/3 {} {}\n", path.display(), data.len());
            let logged = wait_for_lines(&log, 4);
            assert_eq!(logged, each.repeat(4), "{shell}");
        }
    }

    /// The first `name` on the PATH.
    fn real(name: &str) -> std::path::PathBuf {
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} on the PATH"))
    }

    /// A shell script `name` in `bin`.
    fn fake(bin: &Path, name: &str, body: String) {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// What `log` holds once it has `n` lines, or after 10 s.
    fn wait_for_lines(log: &Path, n: usize) -> String {
        let mut logged = String::new();
        for _ in 0..200 {
            logged = std::fs::read_to_string(log).unwrap_or_default();
            if logged.lines().count() >= n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        logged
    }

    /// After each range's answer its run flushes the file it holds open
    /// (`sync -d /dev/fd/3`, the file as descriptor 3), but only where `dd`
    /// says GNU coreutils 8.24 or later and `sync` is in `dd`'s directory:
    /// any other `sync` (busybox's, GNU's before 8.24) takes the file as no
    /// argument and syncs the whole machine. A flush that fails, prints
    /// lines that look like answers, or exits 255 (which would stop xargs)
    /// changes no answer. Run here through `sh -c` in place of ssh, with a
    /// `dd` and a `sync` first on the PATH (or the `sync` in a second
    /// directory after it).
    #[test]
    fn a_range_is_flushed_after_its_answer_only_by_a_sync_that_takes_a_file() {
        let real_dd = real("dd");
        let data: Vec<u8> = (0..(3u32 << 20) + 999).map(|i| (i % 241) as u8).collect();
        let mut want = RangeHashing::new(HashKind::Sha256, 1 << 20);
        want.update(&data);
        let want = want.hexes();
        let sha = HASHERS.iter().find(|h| h.name == "sha256sum").unwrap();
        // (what `dd --version` says, whether `sync` is beside `dd`, and so
        // whether it may be given the file)
        let cases = [
            ("dd (coreutils) 9.1", true, true),
            ("dd (GNU coreutils) 8.32", true, true),
            ("dd (GNU coreutils) 8.30", true, true),
            ("dd (GNU coreutils) 8.24", true, true),
            ("dd (coreutils) 10.2", true, true),
            ("dd (GNU coreutils) 8.23", true, false),
            ("dd (GNU coreutils) 8.4", true, false),
            ("dd (GNU coreutils) 8.3", true, false),
            ("dd (uutils coreutils) 0.0.27", true, false),
            ("dd (uutils coreutils) 0.2.2", true, false),
            (
                "BusyBox v1.36.1 (2024-06-10 07:11:47 UTC) multi-call binary.",
                true,
                false,
            ),
            ("dd: invalid option -- '-'", true, false),
            // a GNU `dd`, and a `sync` (busybox's, say) found elsewhere
            ("dd (GNU coreutils) 9.4", false, false),
        ];
        for (says, beside, takes_a_file) in cases {
            for sync_fails in [false, true] {
                let t = tempfile::tempdir().unwrap();
                let bin = t.path().join("bin");
                let other = t.path().join("other");
                std::fs::create_dir(&bin).unwrap();
                std::fs::create_dir(&other).unwrap();
                let log = t.path().join("sync.log");
                fake(
                    &bin,
                    "dd",
                    format!(
                        "[ \"$1\" = --version ] && {{ echo \"{says}\"; exit 0; }}\nexec {} \"$@\"\n",
                        real_dd.display()
                    ),
                );
                let (out, status) = if sync_fails {
                    (format!("=0\n{}  -\n", "0".repeat(64)), 255)
                } else {
                    (String::new(), 0)
                };
                fake(
                    if beside { &bin } else { &other },
                    "sync",
                    format!(
                        "echo \"$* $(readlink /proc/$$/fd/3) $(stat -L -c %s /proc/$$/fd/3)\" >> '{}'\nprintf '{out}'\nexit {status}\n",
                        log.display()
                    ),
                );
                let path = t.path().join("ckpt.bin");
                std::fs::write(&path, &data).unwrap();
                let mut cmd = Command::new("sh");
                let search = format!(
                    "{}:{}:{}",
                    bin.display(),
                    other.display(),
                    std::env::var("PATH").unwrap()
                );
                cmd.env("PATH", search).arg("-c");
                let h = RemoteHash::on_demand(cmd, *sha, Runner::Range);
                let p = path.as_os_str().as_encoded_bytes();
                let asked: Vec<Answer> = (0..4).map(|k| h.ask_range(p, k, 1).unwrap()).collect();
                let got: Vec<String> = asked
                    .into_iter()
                    .map(|a| a.recv().unwrap().unwrap())
                    .collect();
                assert_eq!(got, want, "{says}, sync fails: {sync_fails}");
                h.end();
                let each = format!("-d /dev/fd/3 {} {}\n", path.display(), data.len());
                let expect = if takes_a_file {
                    each.repeat(4)
                } else {
                    String::new()
                };
                // (the flushes run in the background: wait for all four
                // where they are due; where none is, the run has ended and
                // a flush it started would have logged in the time the
                // others take)
                let logged = if takes_a_file {
                    wait_for_lines(&log, 4)
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    std::fs::read_to_string(&log).unwrap_or_default()
                };
                assert_eq!(logged, expect, "{says}, sync fails: {sync_fails}");
            }
        }
    }

    /// Long names end a group early instead of making xargs refuse it: 64
    /// paths of ~2.5 KiB would pass xargs' 128 KiB command line, and before
    /// the limit every file after that was answered "ended". The command
    /// runs here, through `sh -c` in place of ssh.
    #[test]
    fn long_names_end_a_group_before_xargs_would_refuse_it() {
        if std::process::Command::new("bash")
            .arg("--version")
            .output()
            .is_err()
        {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let mut dir = t.path().to_path_buf();
        for i in 0..12 {
            dir.push(format!("{i:02}{}", "d".repeat(198)));
        }
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c");
        let sha = HASHERS.iter().find(|h| h.name == "sha256sum").unwrap();
        let h = RemoteHash::new(cmd, *sha, Runner::Bash);
        let mut asked = Vec::new();
        for i in 0..80 {
            let path = dir.join(format!("f{i:03}"));
            std::fs::write(&path, format!("file {i}\n")).unwrap();
            let mut want = Hashing::new(HashKind::Sha256);
            want.update(format!("file {i}\n").as_bytes());
            asked.push((
                h.ask(path.as_os_str().as_encoded_bytes()).unwrap(),
                want.hex(),
            ));
        }
        h.flush();
        for (i, (rx, want)) in asked.into_iter().enumerate() {
            let got = rx.recv().unwrap();
            assert_eq!(got.ok().as_deref(), Some(want.as_str()), "file {i}");
        }
        h.end();
    }
}
