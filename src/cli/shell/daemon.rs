//! `ferry shell host::module`: the client of a daemon module's shell session
//! ([`crate::proto::shell`]) over the daemon's TLS connection and key trust,
//! as a [`Remote`]. One request at a time; completion shares the connection
//! through a lock.
//!
//! Not for the daemon's side (`server::shell`) nor for transfers: `get` and
//! `put` reach `host::module/path` through `transfer::run`, as `ferry cp`
//! does, delta included.

use super::remote::Remote;
use crate::error::TransferError;
use crate::location::Location;
use crate::proto::frame::{payload_len, put_frame, MAX_FRAME};
use crate::proto::shell::{shell_hello, Op, Reply, Space, Stat, VERSION_SHELL};
use crate::proto::{self, Message, Options, Request, Role};
use crate::transport::daemon::DaemonOptions;
use std::io::{self, Read, Write};
use std::sync::Mutex;

struct Conn {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
}

impl Conn {
    fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 4);
        put_frame(&mut out, payload);
        self.writer.write_all(&out)?;
        self.writer.flush()
    }

    fn receive(&mut self) -> io::Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.reader.read_exact(&mut header).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::BrokenPipe, "the daemon closed the session")
            } else {
                e
            }
        })?;
        let len = payload_len(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut payload = vec![0u8; len.min(MAX_FRAME)];
        self.reader.read_exact(&mut payload)?;
        Ok(payload)
    }

    fn call(&mut self, op: &Op) -> io::Result<Reply> {
        self.send(&op.to_payload())?;
        let reply = Reply::decode(&self.receive()?).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("the daemon sent {e}"))
        })?;
        match reply {
            Reply::Failed { errno, text } => {
                let kind = match errno {
                    0 => io::ErrorKind::PermissionDenied,
                    n => io::Error::from_raw_os_error(n as i32).kind(),
                };
                Err(io::Error::new(
                    kind,
                    String::from_utf8_lossy(&text).into_owned(),
                ))
            }
            r => Ok(r),
        }
    }
}

/// A shell session on one daemon module.
pub struct DaemonRemote {
    conn: Mutex<Conn>,
    host: String,
    port: Option<u16>,
    module: String,
}

fn odd(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the daemon answered {what} with something else"),
    )
}

impl DaemonRemote {
    /// Connects to `host:port`, checks the daemon has the shell, and opens
    /// `module[/dir]`; the session and its starting directory.
    pub fn open(
        host: &str,
        port: Option<u16>,
        path: &[u8],
        opts: &DaemonOptions,
        notice: &dyn Fn(String),
    ) -> Result<(DaemonRemote, Vec<u8>), TransferError> {
        let module_end = path.iter().position(|&b| b == b'/').unwrap_or(path.len());
        let module = String::from_utf8_lossy(&path[..module_end]).into_owned();
        if module.is_empty() {
            return Err(TransferError::Usage(format!(
                "{host}:: names no module: open a shell on {host}::MODULE (list them with `ferry ls {host}::`)"
            )));
        }
        let p = port.unwrap_or(proto::DEFAULT_PORT);
        let connected = crate::transport::daemon::connect(host, p, opts)?;
        if let Some(u) = &connected.added {
            notice(u.added_notice());
        }
        let mut conn = Conn {
            reader: connected.stream.reader,
            writer: connected.stream.writer,
        };
        let lost = |e: io::Error| {
            TransferError::Connection(format!("{host}:{p}: {}", crate::error::io_text(&e)))
        };
        conn.writer.write_all(&shell_hello()).map_err(lost)?;
        conn.writer.flush().map_err(lost)?;
        let mut answer = [0u8; 7];
        conn.reader.read_exact(&mut answer).map_err(lost)?;
        if &answer[..5] != proto::MAGIC {
            return Err(TransferError::PeerMisbehaved(format!(
                "{host}:{p} does not speak the ferry protocol"
            )));
        }
        let version = u16::from_le_bytes([answer[5], answer[6]]);
        if version < VERSION_SHELL {
            return Err(older(&mut conn, host, p, version));
        }
        match conn.call(&Op::Open(path.to_vec())) {
            Ok(Reply::Opened { cwd, .. }) => Ok((
                DaemonRemote {
                    conn: Mutex::new(conn),
                    host: host.to_string(),
                    port,
                    module,
                },
                cwd,
            )),
            Ok(_) => Err(TransferError::PeerMisbehaved(format!(
                "{host}:{p} answered the shell's open with something else"
            ))),
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(lost(e))
            }
            Err(e) => Err(TransferError::Remote(format!(
                "{host}::{}: {}",
                String::from_utf8_lossy(path),
                crate::error::io_text(&e)
            ))),
        }
    }

    fn call(&self, op: Op) -> io::Result<Reply> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .call(&op)
    }

    fn done(&self, op: Op) -> io::Result<()> {
        match self.call(op)? {
            Reply::Done => Ok(()),
            _ => Err(odd("a change")),
        }
    }
}

/// A daemon that answered a version below the shell's: either it refuses
/// this client (it says why at once) or it is older than the shell. Asked
/// only what it understands (its module list), it answers one way or the
/// other, and the session ends with one line.
fn older(conn: &mut Conn, host: &str, port: u16, version: u16) -> TransferError {
    let too_old = TransferError::Remote(format!(
        "the ferry daemon at {host}:{port} is too old for `ferry shell` (it speaks protocol {version}, \
         a shell on a module needs {VERSION_SHELL}): upgrade ferry there, or use `ferry ls` and `ferry cp`"
    ));
    if version == 0 {
        return too_old;
    }
    let list = Message::Request(Request {
        role: Role::ListModules,
        paths: vec![b".".to_vec()],
        options: Options::default(),
    });
    if conn.send(&list.to_payload()).is_err() {
        return too_old;
    }
    match conn.receive().map(|p| Message::decode(&p)) {
        Ok(Ok(Message::Fatal(t))) => {
            TransferError::Remote(String::from_utf8_lossy(&t).into_owned())
        }
        _ => too_old,
    }
}

impl Remote for DaemonRemote {
    fn realpath(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        match self.call(Op::Realpath(path.to_vec()))? {
            Reply::Path(p) => Ok(p),
            _ => Err(odd("a realpath")),
        }
    }
    fn stat(&self, path: &[u8]) -> io::Result<Stat> {
        match self.call(Op::Stat(path.to_vec()))? {
            Reply::Stat(s) => Ok(s),
            _ => Err(odd("a stat")),
        }
    }
    fn read_dir(&self, path: &[u8]) -> io::Result<Vec<(Vec<u8>, Stat)>> {
        match self.call(Op::List(path.to_vec()))? {
            Reply::Entries(list, _) => Ok(list),
            _ => Err(odd("a listing")),
        }
    }
    fn mkdir(&self, path: &[u8]) -> io::Result<()> {
        self.done(Op::Mkdir(path.to_vec()))
    }
    fn rmdir(&self, path: &[u8]) -> io::Result<()> {
        self.done(Op::Rmdir(path.to_vec()))
    }
    fn remove(&self, path: &[u8]) -> io::Result<()> {
        self.done(Op::Remove(path.to_vec()))
    }
    fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        self.done(Op::Rename(from.to_vec(), to.to_vec()))
    }
    fn chmod(&self, path: &[u8], mode: u32) -> io::Result<()> {
        self.done(Op::Chmod(path.to_vec(), mode))
    }
    fn statvfs(&self, path: &[u8]) -> io::Result<Space> {
        match self.call(Op::Statvfs(path.to_vec()))? {
            Reply::Space(s) => Ok(s),
            _ => Err(odd("a statvfs")),
        }
    }
    /// `module/path`, made canonical by name here (the daemon refuses any
    /// `..` in a transfer's path, even one that stays inside).
    fn location(&self, path: &[u8]) -> io::Result<Location> {
        let mut parts: Vec<&[u8]> = Vec::new();
        for c in path.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "\"..\" would leave the module",
                        ));
                    }
                }
                c => parts.push(c),
            }
        }
        let mut p = self.module.as_bytes().to_vec();
        for c in parts {
            p.push(b'/');
            p.extend_from_slice(c);
        }
        if path.ends_with(b"/") {
            p.push(b'/');
        }
        Ok(Location::Daemon {
            host: self.host.clone(),
            port: self.port,
            path: p,
        })
    }
    fn end(&self) {
        let _ = self
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writer
            .flush();
    }
}
