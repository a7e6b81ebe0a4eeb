//! Checking what crossed SFTP, where OpenSSH's server cannot hash a file
//! itself (it has no `check-file`): the hash of the stream as it was
//! written or read here ([`Hashing`]), compared with a hash the remote
//! computes by running a command ([`RemoteHash`], one of [`HASHERS`]:
//! `b3sum`, `xxh128sum`, `openssl dgst -sha256`, `sha256sum` or `shasum -a
//! 256`, names sent NUL-separated on stdin) or with the file read again over
//! SFTP (`--verify reread`). [`Verify`] is what a transfer asked for and how
//! many files it checked.
//!
//! Not for deciding which command a remote has (the probe is
//! `transfer::sftp`'s) nor for what a mismatch does to a file (the
//! destination keeps it unpublished; the source fails it).
//!
//! # Security
//! No name is ever put into a shell line: the remote runs the fixed line
//! `xargs -0 -n 16 COMMAND --`, and names reach it only as NUL-terminated
//! bytes on its stdin, which xargs passes as whole arguments.

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

/// How a hash command prints a name with a newline in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// coreutils, b3sum, shasum: the line starts with `\` and the name's
    /// `\`, newline and carriage return are written `\\`, `\n`, `\r`.
    Coreutils,
    /// OpenSSL 3: the line starts with `\` and only a newline is written
    /// `\n` (a `\` stays as it is). OpenSSL 1.1 prints the
    /// newline as is, as `xxh128sum` does: those lines are joined again.
    NewlineOnly,
}

/// A command a remote may have that hashes the files named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hasher {
    /// What messages and the per-host cache call it.
    pub name: &'static str,
    /// The command line the names follow (after `--`).
    pub command: &'static str,
    pub kind: HashKind,
    pub escapes: Escapes,
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
        escapes: Escapes::Coreutils,
    },
    Hasher {
        name: "xxh128sum",
        command: "xxh128sum",
        kind: HashKind::Xxh128,
        escapes: Escapes::Coreutils,
    },
    Hasher {
        name: "openssl dgst -sha256",
        command: "openssl dgst -sha256 -r",
        kind: HashKind::Sha256,
        escapes: Escapes::NewlineOnly,
    },
    Hasher {
        name: "sha256sum",
        command: "sha256sum",
        kind: HashKind::Sha256,
        escapes: Escapes::Coreutils,
    },
    Hasher {
        name: "shasum -a 256",
        command: "shasum -a 256",
        kind: HashKind::Sha256,
        escapes: Escapes::Coreutils,
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

/// How a transfer's files are checked beyond ssh's MAC.
#[derive(Clone)]
pub enum How {
    /// A command on the remote hashes each uploaded file before it is
    /// renamed into place.
    Remote(RemoteHash),
    /// The file is read again over SFTP and hashed here (BLAKE3).
    Reread,
}

/// What a transfer checks, and how many files passed.
#[derive(Clone)]
pub struct Verify {
    pub how: How,
    /// Files whose check passed.
    pub checked: Arc<AtomicU64>,
}

impl Verify {
    pub fn new(how: How) -> Verify {
        Verify {
            how,
            checked: Default::default(),
        }
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
}

/// Reads a remote file whole over SFTP (many reads outstanding) and hashes
/// it.
pub fn reread(sftp: &Sftp, path: &[u8], kind: HashKind) -> io::Result<String> {
    let h = sftp.open(path, wire::OPEN_READ, &wire::Attrs::default())?;
    let mut hashing = Hashing::new(kind);
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
    result.map(|_| hashing.hex())
}

/// Names per run of the remote command: xargs runs it as soon as it has
/// read this many, so a group is padded with `/dev/null` to be hashed at
/// once (16 names of at most 4 KiB stay under xargs's 128 KiB line).
const GROUP: usize = 16;

/// The name every group ends with, so that a file the command could not
/// read (and printed no line for) is noticed when this one's line comes.
const PAD: &[u8] = b"/dev/null";

/// A remote file's hash, or why there is none.
pub type Answer = mpsc::Receiver<io::Result<String>>;

/// One ssh connection running `xargs -0 -n 16 COMMAND --` on the remote,
/// started on first use; each name asked gets its line's hash, in order.
/// Clones share it.
#[derive(Clone)]
pub struct RemoteHash {
    pub hasher: Hasher,
    pub kind: HashKind,
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
        in_group: usize,
    },
    Failed(String),
}

/// Names sent and not answered yet, oldest first.
#[derive(Default)]
struct Asked {
    queue: VecDeque<Waiting>,
    /// Why the command ended, once it did.
    ended: Option<String>,
}

struct Waiting {
    name: Vec<u8>,
    /// Where the answer goes (`None`: padding).
    tx: Option<mpsc::Sender<io::Result<String>>>,
    /// A line whose name is the start of this one's (a name with a
    /// newline, printed unescaped by xxh128sum): hash and name so far.
    partial: Option<(String, Vec<u8>)>,
}

fn gone(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("the remote hash command ended: {why}"),
    )
}

impl RemoteHash {
    /// `cmd` is an ssh to the remote, without its command.
    pub fn new(mut cmd: Command, hasher: Hasher) -> RemoteHash {
        cmd.arg(format!("xargs -0 -n {GROUP} {} --", hasher.command));
        RemoteHash {
            hasher,
            kind: hasher.kind,
            state: Arc::new(Mutex::new(State::Idle(Some(cmd)))),
            asked: Default::default(),
        }
    }

    /// Asks for the hash of `path` (sent with the next full group, or at
    /// the next [`RemoteHash::flush`]).
    pub fn ask(&self, path: &[u8]) -> io::Result<Answer> {
        if path.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a name with a NUL byte",
            ));
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.start(&mut state)?;
        let (tx, rx) = mpsc::channel();
        self.queue(path, Some(tx));
        let State::Running {
            group, in_group, ..
        } = &mut *state
        else {
            unreachable!("started")
        };
        group.extend_from_slice(path);
        group.push(0);
        *in_group += 1;
        if *in_group == GROUP - 1 {
            self.send_group(&mut state)?;
        }
        Ok(rx)
    }

    /// Sends the names not sent yet, padded to a whole group.
    pub fn flush(&self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            State::Running { in_group, .. } if *in_group > 0 => self.send_group(&mut state),
            _ => Ok(()),
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

    fn queue(&self, name: &[u8], tx: Option<mpsc::Sender<io::Result<String>>>) {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &asked.ended {
            if let Some(tx) = tx {
                let _ = tx.send(Err(gone(why)));
            }
            return;
        }
        asked.queue.push_back(Waiting {
            name: name.to_vec(),
            tx,
            partial: None,
        });
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
        let (len, escapes) = (self.kind.hex_len(), self.hasher.escapes);
        std::thread::Builder::new()
            .name("ferry-sftp-hash".into())
            .spawn(move || read_answers(asked, stdout, len, escapes))?;
        *state = State::Running {
            stdin,
            child,
            group: Vec::new(),
            in_group: 0,
        };
        Ok(())
    }

    fn send_group(&self, state: &mut State) -> io::Result<()> {
        let State::Running {
            stdin,
            group,
            in_group,
            ..
        } = state
        else {
            return Ok(());
        };
        for _ in *in_group..GROUP {
            self.queue(PAD, None);
            group.extend_from_slice(PAD);
            group.push(0);
        }
        *in_group = 0;
        let r = stdin.write_all(group).and_then(|_| stdin.flush());
        group.clear();
        if let Err(e) = r {
            let why = e.to_string();
            *state = State::Failed(why.clone());
            return Err(gone(&why));
        }
        Ok(())
    }
}

/// One output line's hash and name: `[\]HASH  NAME` or `[\]HASH *NAME`, the
/// name unescaped as `escapes` says where the line starts with `\`.
fn header(line: &[u8], len: usize, escapes: Escapes) -> Option<(String, Vec<u8>)> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    if line.len() < len + 2 || line[..len].contains(&b' ') {
        return None;
    }
    if &line[len..len + 2] != b"  " && &line[len..len + 2] != b" *" {
        return None;
    }
    let hash = String::from_utf8_lossy(&line[..len]).into_owned();
    let raw = &line[len + 2..];
    if !escaped {
        return Some((hash, raw.to_vec()));
    }
    let mut name = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            name.push(b);
            continue;
        }
        match (escapes, it.as_slice().first()) {
            (_, Some(b'n')) => name.push(b'\n'),
            (Escapes::Coreutils, Some(b'r')) => name.push(b'\r'),
            (Escapes::Coreutils, Some(&o)) => name.push(o),
            // (OpenSSL writes a `\` as it is)
            _ => {
                name.push(b'\\');
                continue;
            }
        }
        it.next();
    }
    Some((hash, name))
}

fn answer(w: Waiting, r: io::Result<String>) {
    if let Some(tx) = w.tx {
        let _ = tx.send(r);
    }
}

fn not_hashed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the remote hash command printed no hash for it",
    )
}

/// Matches one output line to the oldest names asked: a name with no line
/// of its own (the command could not read it) is failed when a later
/// name's line comes.
fn on_line(queue: &mut VecDeque<Waiting>, line: &[u8], len: usize, escapes: Escapes) {
    if let Some((hash, name)) = header(line, len, escapes) {
        while let Some(front) = queue.front_mut() {
            front.partial = None;
            if front.name == name {
                let w = queue.pop_front().expect("front");
                answer(w, Ok(hash));
                return;
            }
            if front.name.len() > name.len()
                && front.name.starts_with(&name)
                && front.name[name.len()] == b'\n'
            {
                front.partial = Some((hash, name));
                return;
            }
            let w = queue.pop_front().expect("front");
            answer(w, Err(not_hashed()));
        }
        return;
    }
    // the rest of a name printed with its newline as is
    let Some(front) = queue.front_mut() else {
        return;
    };
    let Some((hash, mut name)) = front.partial.take() else {
        return;
    };
    name.push(b'\n');
    name.extend_from_slice(line);
    if front.name == name {
        let w = queue.pop_front().expect("front");
        answer(w, Ok(hash));
    } else if front.name.starts_with(&name) && front.name.get(name.len()) == Some(&b'\n') {
        front.partial = Some((hash, name));
    } else {
        let w = queue.pop_front().expect("front");
        answer(w, Err(not_hashed()));
    }
}

fn read_answers(
    asked: Arc<Mutex<Asked>>,
    stdout: std::process::ChildStdout,
    len: usize,
    escapes: Escapes,
) {
    let mut r = io::BufReader::new(stdout);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break "it exited".to_string(),
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                }
                let mut a = asked.lock().unwrap_or_else(|p| p.into_inner());
                on_line(&mut a.queue, &line, len, escapes);
            }
            Err(e) => break e.to_string(),
        }
    };
    let mut a = asked.lock().unwrap_or_else(|p| p.into_inner());
    for w in std::mem::take(&mut a.queue) {
        answer(w, Err(gone(&why)));
    }
    a.ended = Some(why);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn waiting(name: &[u8]) -> (Waiting, Answer) {
        let (tx, rx) = mpsc::channel();
        (
            Waiting {
                name: name.to_vec(),
                tx: Some(tx),
                partial: None,
            },
            rx,
        )
    }

    #[test]
    fn lines_are_matched_to_names_escaped_unescaped_or_missing() {
        let h = "a".repeat(32);
        let mut q = VecDeque::new();
        let (a, ra) = waiting(b"plain");
        let (b, rb) = waiting(b"gone");
        let (c, rc) = waiting(b"new\nline");
        let (d, rd) = waiting(b"back\\slash\nnl");
        q.extend([a, b, c, d]);
        let on = |q: &mut VecDeque<Waiting>, l: &[u8]| on_line(q, l, 32, Escapes::Coreutils);
        on(&mut q, format!("{h}  plain").as_bytes());
        // "gone" printed nothing; xxh128sum prints a newline as is
        on(&mut q, format!("{h}  new").as_bytes());
        on(&mut q, b"line");
        on(&mut q, format!("\\{h}  back\\\\slash\\nnl").as_bytes());
        assert_eq!(ra.recv().unwrap().unwrap(), h);
        assert!(rb.recv().unwrap().is_err());
        assert_eq!(rc.recv().unwrap().unwrap(), h);
        assert_eq!(rd.recv().unwrap().unwrap(), h);
        assert!(q.is_empty());
        // a hash of the wrong length is no header
        assert!(header(b"abc  name", 32, Escapes::Coreutils).is_none());
    }

    /// OpenSSL 3 (`dgst -r`) escapes only a newline, and writes ` *`; a
    /// `\` in a name is as it is, escaped line or not.
    #[test]
    fn openssl_lines_keep_their_backslashes() {
        let h = "b".repeat(64);
        let mut q = VecDeque::new();
        let (a, ra) = waiting(b"back\\slash");
        let (b, rb) = waiting(b"new\nline \\x");
        let (c, rc) = waiting(b"-dash *star");
        q.extend([a, b, c]);
        let on = |q: &mut VecDeque<Waiting>, l: &[u8]| on_line(q, l, 64, Escapes::NewlineOnly);
        on(&mut q, format!("{h} *back\\slash").as_bytes());
        on(&mut q, format!("\\{h} *new\\nline \\x").as_bytes());
        on(&mut q, format!("{h} *-dash *star").as_bytes());
        assert_eq!(ra.recv().unwrap().unwrap(), h);
        assert_eq!(rb.recv().unwrap().unwrap(), h);
        assert_eq!(rc.recv().unwrap().unwrap(), h);
        // read as coreutils would, the `\x` would have lost its backslash
        assert_eq!(
            header(
                format!("\\{h} *a\\nb\\x").as_bytes(),
                64,
                Escapes::Coreutils
            )
            .unwrap()
            .1,
            b"a\nbx"
        );
    }
}
