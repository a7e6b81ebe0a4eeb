//! A synchronous SFTP v3 client over a child process's stdio (the system
//! `ssh … -s sftp`): many requests outstanding at once, each with its own id,
//! and one reader thread that hands every reply to whoever waits for its id.
//! Threads, not async: the engine that drives it is threaded, and so tokio
//! stays out of the data path.
//!
//! Not for what files mean to a transfer (that is [`super::destination`] and
//! [`super::source`]) nor for how ssh is started (the caller gives the
//! command).

use super::wire::{self, Attrs, Reply};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// What the server offers beyond plain version 3.
#[derive(Debug, Clone, Default)]
pub struct Extensions {
    pub posix_rename: bool,
    pub fsync: bool,
    pub hardlink: bool,
    pub statvfs: bool,
    /// `limits@openssh.com`: ask for the sizes below.
    pub limits: bool,
    /// `copy-data` (OpenSSH 9.0): a copy between two open files on the
    /// server, nothing crossing the network.
    pub copy_data: bool,
}

/// Request sizes: what `limits@openssh.com` allows, else the 32 KiB every
/// server takes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub read: usize,
    pub write: usize,
    pub open_handles: usize,
}

/// A waiting request's answer.
pub type Pending = mpsc::Receiver<Reply>;

struct Inner {
    writer: Mutex<Option<ChildStdin>>,
    waiting: Mutex<HashMap<u32, mpsc::Sender<Reply>>>,
    /// Why the connection ended, once it did.
    ended: Mutex<Option<String>>,
    next_id: AtomicU32,
    child: Mutex<Child>,
    /// Write packets already sent (and hashed), to build the next ones in:
    /// a fresh 255 KiB vector per write was mapped, faulted in page by page
    /// and unmapped again (on a 2 GiB upload ~5% of ferry's samples,
    /// `bench/NOTES.md` §44).
    spares: Mutex<Vec<Vec<u8>>>,
}

/// Sent packets kept at most for reuse: a packet comes back once written
/// (or, past the first MiB of a file, once the hashing thread has hashed it),
/// so those waiting for that thread (16) and a few being built circulate.
const SPARE_PACKETS: usize = 24;

/// The largest packet kept for reuse: a WRITE of the most a server may be
/// asked to take (256 KiB, [`Limits`]) with its header and handle.
const SPARE_CAPACITY: usize = (256 << 10) + 1024;

/// A connection to an SFTP server; clones share it. It may carry more
/// connections to the same server (`--streams N`: separate ssh processes,
/// each with its own channel window), which [`Sftp::least_busy`] spreads
/// files and a large file's writes over.
#[derive(Clone)]
pub struct Sftp {
    inner: Arc<Inner>,
    pub ext: Arc<Extensions>,
    pub limits: Limits,
    /// The other connections, when this is the first of several.
    more: Arc<Mutex<More>>,
}

/// The connections beside the first: they may still be joining while the
/// transfer runs on those already open.
#[derive(Default)]
struct More {
    open: Vec<Sftp>,
    /// Set when the session ends: one that opens later is ended at once.
    ended: bool,
}

/// A file or directory handle on the server.
pub type Handle = Vec<u8>;

/// Free space, from `statvfs@openssh.com`.
#[derive(Debug, Clone, Copy)]
pub struct Statvfs {
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the SFTP connection ended (see ssh's message above)",
    )
}

/// A status reply as an error.
pub fn status_error(code: u32, message: &str) -> io::Error {
    let kind = match code {
        wire::FX_NO_SUCH_FILE => io::ErrorKind::NotFound,
        wire::FX_PERMISSION_DENIED => io::ErrorKind::PermissionDenied,
        wire::FX_OP_UNSUPPORTED => io::ErrorKind::Unsupported,
        wire::FX_EOF => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    };
    let text = if message.is_empty() {
        format!("SFTP error {code}")
    } else {
        message.to_string()
    };
    io::Error::new(kind, text)
}

fn unexpected(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the SFTP server answered {what} with the wrong kind of reply"),
    )
}

/// Reads one packet: its type and its body (the bytes after the type),
/// read straight into the vector that is returned.
fn read_packet(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..4]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > wire::MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the SFTP server sent a packet of {len} bytes (a shell start-up file that prints text breaks SFTP)"
            ),
        ));
    }
    r.read_exact(&mut head[4..])?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body)?;
    Ok(Some((head[4], body)))
}

impl Sftp {
    /// Starts `cmd` (an ssh running the sftp subsystem) and does the version
    /// exchange. Its stderr is the caller's to set up.
    pub fn start(mut cmd: Command) -> io::Result<Sftp> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        // ssh and this process wake each other less often through wide
        // pipes, and the replies are read through a buffer (a status is
        // a few dozen bytes: two reads each without it)
        crate::transport::widen_pipe(&stdin);
        crate::transport::widen_pipe(&stdout);
        let mut stdout = io::BufReader::with_capacity(READ_BUFFER, stdout);
        let mut init = wire::start(wire::INIT);
        wire::put_u32(&mut init, 3);
        let hello = stdin
            .write_all(&wire::finish(init))
            .and_then(|_| stdin.flush())
            .and_then(|_| read_packet(&mut stdout));
        let (kind, body) = match hello {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => {
                drop(stdin);
                let status = child.wait()?;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "ssh ended before SFTP started ({})",
                        crate::error::exit_text(status.code())
                    ),
                ));
            }
        };
        if kind != wire::VERSION {
            let _ = child.kill();
            let _ = child.wait();
            return Err(unexpected("the version exchange"));
        }
        let (_, list) = wire::decode_version(&body)?;
        let has = |n: &str| list.iter().any(|(name, _)| name == n);
        let ext = Extensions {
            posix_rename: has("posix-rename@openssh.com"),
            fsync: has("fsync@openssh.com"),
            hardlink: has("hardlink@openssh.com"),
            statvfs: has("statvfs@openssh.com"),
            limits: has("limits@openssh.com"),
            copy_data: has("copy-data"),
        };
        let inner = Arc::new(Inner {
            writer: Mutex::new(Some(stdin)),
            waiting: Mutex::new(HashMap::new()),
            ended: Mutex::new(None),
            next_id: AtomicU32::new(1),
            child: Mutex::new(child),
            spares: Mutex::new(Vec::new()),
        });
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("ferry-sftp-rx".into())
            .spawn(move || read_replies(reader, stdout))?;
        let mut sftp = Sftp {
            inner,
            more: Default::default(),
            ext: Arc::new(ext),
            limits: Limits {
                read: 32 << 10,
                write: 32 << 10,
                open_handles: 64,
            },
        };
        if sftp.ext.limits {
            if let Ok(l) = sftp.query_limits() {
                sftp.limits = l;
            }
        }
        Ok(sftp)
    }

    fn more(&self) -> std::sync::MutexGuard<'_, More> {
        self.more.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This connection with `more` to the same server beside it.
    pub fn with_streams(self, more: Vec<Sftp>) -> Sftp {
        for s in more {
            self.add_stream(s);
        }
        self
    }

    /// Puts one more connection to the same server beside this one (from
    /// now on files and a large file's requests go to it too); one that
    /// comes after the session ended is ended.
    pub fn add_stream(&self, s: Sftp) {
        let mut m = self.more();
        if m.ended {
            drop(m);
            s.end();
        } else {
            m.open.push(s);
        }
    }

    /// Connections to the server: this one and any beside it.
    pub fn streams(&self) -> usize {
        1 + self.more().open.len()
    }

    /// The connection with the fewest requests outstanding (this one when it
    /// is alone), as a connection of its own.
    pub fn least_busy(&self) -> Sftp {
        let mut best = self.alone();
        let mut load = self.outstanding();
        for s in self.more().open.iter() {
            let l = s.outstanding();
            if l < load {
                (best, load) = (s.clone(), l);
            }
        }
        best
    }

    /// The connections beside this one.
    pub fn others(&self) -> Vec<Sftp> {
        self.more().open.clone()
    }

    /// The connections (this one first) that are not `conn` and not in
    /// `taken`: those a file opened on `conn` may also be written or read
    /// through.
    pub fn beside<'a>(
        &self,
        conn: &Sftp,
        taken: impl Iterator<Item = &'a Sftp> + Clone,
    ) -> Vec<Sftp> {
        std::iter::once(self.alone())
            .chain(self.others())
            .filter(|s| !s.same(conn) && !taken.clone().any(|t| t.same(s)))
            .collect()
    }

    /// This connection without those beside it.
    pub fn alone(&self) -> Sftp {
        Sftp {
            more: Default::default(),
            ..self.clone()
        }
    }

    /// Whether `other` is this connection.
    pub fn same(&self, other: &Sftp) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Requests sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Sends a request built by `body` (after its id) and returns where its
    /// answer arrives.
    pub fn send(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Pending> {
        self.send_sized(kind, 0, body)
    }

    /// [`Sftp::send`] for a request that carries `extra` bytes of data: the
    /// packet is allocated whole at once, and the data copied once.
    fn send_sized(
        &self,
        kind: u8,
        extra: usize,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<Pending> {
        self.send_packet(kind, extra, body).map(|(p, _)| p)
    }

    /// [`Sftp::send_sized`], giving back the packet that was sent.
    fn send_packet(
        &self,
        kind: u8,
        extra: usize,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<(Pending, Vec<u8>)> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut p = match extra {
            0 => wire::start(kind),
            _ => wire::start_in(self.spare(), kind),
        };
        p.reserve(extra);
        wire::put_u32(&mut p, id);
        body(&mut p);
        let (tx, rx) = mpsc::channel();
        {
            let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if self
                .inner
                .ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
            {
                return Err(lost());
            }
            waiting.insert(id, tx);
        }
        let mut w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = w.as_mut().ok_or_else(lost)?;
        let p = wire::finish(p);
        w.write_all(&p).map_err(|_| lost())?;
        Ok((rx, p))
    }

    /// A packet sent earlier, to build another in (empty if none is kept).
    fn spare(&self) -> Vec<u8> {
        self.inner
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Gives back a packet that [`Sftp::send_write_keep`] returned, once
    /// its bytes are no longer needed: the next write is built in it.
    pub fn give_back(&self, packet: Vec<u8>) {
        if packet.capacity() > SPARE_CAPACITY {
            return;
        }
        let mut kept = self.inner.spares.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < SPARE_PACKETS {
            kept.push(packet);
        }
    }

    /// Waits for an answer.
    pub fn wait(&self, p: Pending) -> io::Result<Reply> {
        p.recv().map_err(|_| {
            let why = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
            match why.as_deref() {
                Some(w) if !w.is_empty() => {
                    io::Error::new(io::ErrorKind::BrokenPipe, w.to_string())
                }
                _ => lost(),
            }
        })
    }

    fn call(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Reply> {
        let p = self.send(kind, body)?;
        self.wait(p)
    }

    /// A request answered by a status: OK or an error.
    pub fn expect_ok(&self, p: Pending) -> io::Result<()> {
        match self.wait(p)? {
            Reply::Status {
                code: wire::FX_OK, ..
            } => Ok(()),
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("a request")),
        }
    }

    fn ok(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let p = self.send(kind, body)?;
        self.expect_ok(p)
    }

    fn handle(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Handle> {
        match self.call(kind, body)? {
            Reply::Handle(h) => Ok(h),
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("an open")),
        }
    }

    fn attrs(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Attrs> {
        match self.call(kind, body)? {
            Reply::Attrs(a) => Ok(a),
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("a stat")),
        }
    }

    fn one_name(&self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Vec<u8>> {
        match self.call(kind, body)? {
            Reply::Name(mut n) if !n.is_empty() => Ok(n.swap_remove(0).0),
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("a name lookup")),
        }
    }

    fn extended(&self, name: &str, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<Pending> {
        self.send(wire::EXTENDED, |p| {
            wire::put_str(p, name.as_bytes());
            body(p);
        })
    }

    fn query_limits(&self) -> io::Result<Limits> {
        let p = self.extended("limits@openssh.com", |_| {})?;
        match self.wait(p)? {
            Reply::Extended(d) => {
                let mut c = wire::Cursor(&d);
                let (_packet, read, write, handles) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
                let size = |n: u64| (n as usize).clamp(4 << 10, 256 << 10);
                Ok(Limits {
                    read: if read == 0 { 32 << 10 } else { size(read) },
                    write: if write == 0 { 32 << 10 } else { size(write) },
                    open_handles: if handles == 0 { 64 } else { handles as usize },
                })
            }
            _ => Err(unexpected("limits@openssh.com")),
        }
    }

    pub fn lstat(&self, path: &[u8]) -> io::Result<Attrs> {
        self.attrs(wire::LSTAT, |p| wire::put_str(p, path))
    }
    pub fn stat(&self, path: &[u8]) -> io::Result<Attrs> {
        self.attrs(wire::STAT, |p| wire::put_str(p, path))
    }
    pub fn fstat(&self, h: &[u8]) -> io::Result<Attrs> {
        self.attrs(wire::FSTAT, |p| wire::put_str(p, h))
    }
    pub fn setstat(&self, path: &[u8], a: &Attrs) -> io::Result<()> {
        self.ok(wire::SETSTAT, |p| {
            wire::put_str(p, path);
            a.encode(p);
        })
    }
    pub fn fsetstat(&self, h: &[u8], a: &Attrs) -> io::Result<()> {
        self.ok(wire::FSETSTAT, |p| {
            wire::put_str(p, h);
            a.encode(p);
        })
    }
    pub fn open(&self, path: &[u8], flags: u32, a: &Attrs) -> io::Result<Handle> {
        self.handle(wire::OPEN, |p| {
            wire::put_str(p, path);
            wire::put_u32(p, flags);
            a.encode(p);
        })
    }
    pub fn close(&self, h: &[u8]) -> io::Result<()> {
        self.ok(wire::CLOSE, |p| wire::put_str(p, h))
    }
    /// Asks for `len` bytes at `offset`; answered by data, or EOF.
    pub fn send_read(&self, h: &[u8], offset: u64, len: u32) -> io::Result<Pending> {
        self.send(wire::READ, |p| {
            wire::put_str(p, h);
            wire::put_u64(p, offset);
            wire::put_u32(p, len);
        })
    }
    /// A read's answer: the bytes (empty at the end of the file).
    pub fn read_reply(&self, p: Pending) -> io::Result<Vec<u8>> {
        match self.wait(p)? {
            Reply::Data(d) => Ok(d),
            Reply::Status {
                code: wire::FX_EOF, ..
            } => Ok(Vec::new()),
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("a read")),
        }
    }
    /// Reads at `offset` as much as fits in `buf` (0 at the end).
    pub fn read_at(&self, h: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = buf.len().min(self.limits.read) as u32;
        let p = self.send_read(h, offset, len)?;
        let d = self.read_reply(p)?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
    /// Fills `buf` from `offset`, many requests outstanding at once.
    pub fn read_exact_at(&self, h: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
        let step = self.limits.read;
        let mut asked = std::collections::VecDeque::new();
        let mut next = 0usize;
        let mut done = 0usize;
        while done < buf.len() {
            while next < buf.len() && asked.len() < 16 {
                let n = step.min(buf.len() - next);
                asked.push_back((next, n, self.send_read(h, offset + next as u64, n as u32)?));
                next += n;
            }
            let (at, n, p) = asked.pop_front().expect("asked");
            let d = self.read_reply(p)?;
            buf[at..at + d.len().min(n)].copy_from_slice(&d[..d.len().min(n)]);
            let mut got = d.len().min(n);
            // a short read: the rest of this piece, one request at a time
            while got < n {
                let k = self.read_at(h, &mut buf[at + got..at + n], offset + (at + got) as u64)?;
                if k == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the remote file ended early",
                    ));
                }
                got += k;
            }
            done = at + n;
        }
        Ok(())
    }
    pub fn send_write(&self, h: &[u8], offset: u64, data: &[u8]) -> io::Result<Pending> {
        let (p, packet) = self.send_write_keep(h, offset, data)?;
        self.give_back(packet);
        Ok(p)
    }
    /// [`Sftp::send_write`], giving back the packet sent: `data` is its
    /// last `data.len()` bytes (to be hashed from there, not copied again).
    pub fn send_write_keep(
        &self,
        h: &[u8],
        offset: u64,
        data: &[u8],
    ) -> io::Result<(Pending, Vec<u8>)> {
        self.send_packet(wire::WRITE, h.len() + data.len() + 16, |p| {
            wire::put_str(p, h);
            wire::put_u64(p, offset);
            wire::put_str(p, data);
        })
    }
    /// Asks the server to copy `len` bytes at `from_offset` of `from` to
    /// `to_offset` of `to` (`copy-data`); answered by a status.
    pub fn send_copy(
        &self,
        from: &[u8],
        from_offset: u64,
        len: u64,
        to: &[u8],
        to_offset: u64,
    ) -> io::Result<Pending> {
        self.extended("copy-data", |p| {
            wire::put_str(p, from);
            wire::put_u64(p, from_offset);
            wire::put_u64(p, len);
            wire::put_str(p, to);
            wire::put_u64(p, to_offset);
        })
    }
    pub fn opendir(&self, path: &[u8]) -> io::Result<Handle> {
        self.handle(wire::OPENDIR, |p| wire::put_str(p, path))
    }
    /// Every entry of a directory but `.` and `..`.
    pub fn read_dir(&self, path: &[u8]) -> io::Result<Vec<(Vec<u8>, Attrs)>> {
        let h = self.opendir(path)?;
        let mut out = Vec::new();
        let r = loop {
            match self.call(wire::READDIR, |p| wire::put_str(p, &h)) {
                Ok(Reply::Name(names)) => out.extend(
                    names
                        .into_iter()
                        .filter(|(n, _)| n.as_slice() != b"." && n.as_slice() != b".."),
                ),
                Ok(Reply::Status {
                    code: wire::FX_EOF, ..
                }) => break Ok(()),
                Ok(Reply::Status { code, message }) => break Err(status_error(code, &message)),
                Ok(_) => break Err(unexpected("a directory read")),
                Err(e) => break Err(e),
            }
        };
        let _ = self.close(&h);
        r.map(|_| out)
    }
    pub fn mkdir(&self, path: &[u8], mode: u32) -> io::Result<()> {
        self.ok(wire::MKDIR, |p| {
            wire::put_str(p, path);
            Attrs {
                perm: Some(mode & 0o7777),
                ..Attrs::default()
            }
            .encode(p);
        })
    }
    pub fn rmdir(&self, path: &[u8]) -> io::Result<()> {
        self.ok(wire::RMDIR, |p| wire::put_str(p, path))
    }
    pub fn remove(&self, path: &[u8]) -> io::Result<()> {
        self.ok(wire::REMOVE, |p| wire::put_str(p, path))
    }
    /// Plain v3 rename: fails if `to` exists.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        self.ok(wire::RENAME, |p| {
            wire::put_str(p, from);
            wire::put_str(p, to);
        })
    }
    /// An atomic rename that replaces `to` (`posix-rename@openssh.com`).
    pub fn posix_rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let p = self.extended("posix-rename@openssh.com", |p| {
            wire::put_str(p, from);
            wire::put_str(p, to);
        })?;
        self.expect_ok(p)
    }
    pub fn hardlink(&self, existing: &[u8], new: &[u8]) -> io::Result<()> {
        let p = self.extended("hardlink@openssh.com", |p| {
            wire::put_str(p, existing);
            wire::put_str(p, new);
        })?;
        self.expect_ok(p)
    }
    pub fn fsync(&self, h: &[u8]) -> io::Result<()> {
        let p = self.extended("fsync@openssh.com", |p| wire::put_str(p, h))?;
        self.expect_ok(p)
    }
    pub fn statvfs(&self, path: &[u8]) -> io::Result<Statvfs> {
        let p = self.extended("statvfs@openssh.com", |p| wire::put_str(p, path))?;
        match self.wait(p)? {
            Reply::Extended(d) => {
                let mut c = wire::Cursor(&d);
                let (_bsize, frsize, blocks, bfree, bavail, files, ffree) = (
                    c.u64()?,
                    c.u64()?,
                    c.u64()?,
                    c.u64()?,
                    c.u64()?,
                    c.u64()?,
                    c.u64()?,
                );
                Ok(Statvfs {
                    frsize,
                    blocks,
                    bfree,
                    bavail,
                    files,
                    ffree,
                })
            }
            Reply::Status { code, message } => Err(status_error(code, &message)),
            _ => Err(unexpected("statvfs@openssh.com")),
        }
    }
    pub fn realpath(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        self.one_name(wire::REALPATH, |p| wire::put_str(p, path))
    }
    pub fn readlink(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        self.one_name(wire::READLINK, |p| wire::put_str(p, path))
    }
    /// Makes `link` point to `target`. (OpenSSH takes the two in the
    /// opposite order to the draft: target first.)
    pub fn symlink(&self, target: &[u8], link: &[u8]) -> io::Result<()> {
        self.ok(wire::SYMLINK, |p| {
            wire::put_str(p, target);
            wire::put_str(p, link);
        })
    }

    /// Ends the session (and those beside it) and waits for ssh; the first
    /// connection's exit status.
    pub fn end(&self) -> Option<std::process::ExitStatus> {
        let more = {
            let mut m = self.more();
            m.ended = true;
            std::mem::take(&mut m.open)
        };
        for s in more {
            s.end();
        }
        let mut child = self.inner.child.lock().unwrap_or_else(|p| p.into_inner());
        // closing stdin ends the sftp server, and with it ssh
        drop(
            self.inner
                .writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for _ in 0..250 {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How much of ssh's output is read at once.
/// (A read as large as this bypasses the buffer: read data is not copied
/// through it.)
const READ_BUFFER: usize = 64 << 10;

fn read_replies(inner: Arc<Inner>, mut stdout: io::BufReader<std::process::ChildStdout>) {
    let why = loop {
        let (kind, body) = match read_packet(&mut stdout) {
            Ok(Some(p)) => p,
            Ok(None) => break String::new(),
            Err(e) => break crate::error::io_text(&e),
        };
        if body.len() < 4 {
            break "the SFTP server sent a packet without an id".into();
        }
        let id = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        let reply = match kind {
            // the data stays in the vector it was read into
            wire::DATA => match wire::data_in_place(body) {
                Ok(d) => wire::Reply::Data(d),
                Err(e) => break crate::error::io_text(&e),
            },
            _ => match wire::decode_reply(kind, &body[4..]) {
                Ok(r) => r,
                Err(e) => break crate::error::io_text(&e),
            },
        };
        let to = inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match to {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => break format!("the SFTP server answered request {id}, which was not asked"),
        }
    };
    let mut waiting = inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
    *inner.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    // dropping the senders wakes every waiter with an error
    waiting.clear();
}
