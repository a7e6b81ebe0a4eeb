//! Files on an SFTP server as a [`Source`]: the tree under each root walked
//! with READDIR in the order the local scan uses (a directory before what is
//! in it, names sorted bytewise; rsync's trailing-slash rule), and each file
//! read front to back with many read requests outstanding.
//!
//! A file read whole is hashed as it is read and, where the transfer asks,
//! checked before the reader sees its end: against the remote's hash
//! command or a second read over SFTP (`--verify reread`); a mismatch fails
//! the file, so the receiver never publishes it. A file the sender chunks
//! (a download resumed from its local partial) is read whole too, by the
//! chunker, and checked the same way before its recipe ends.
//!
//! Not for writing (that is [`super::destination`]) nor for choosing what to
//! send (the sender decides; this only lists and reads).

use super::client::{Handle, Pending, Sftp};
use super::verify::{self, Answer, Hashing, How, Verify};
use super::wire::{self, Attrs};
use crate::fs::names::{escape, join};
use crate::proto::{Entry, Kind, ListStart};
use crate::store::source::{ListOptions, Listed, Source, SourceFile, Stamp};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

/// Reads kept outstanding per file and connection while it is read in
/// order.
const READS_IN_FLIGHT: usize = 16;

/// Where a file read in order starts to be read through the other
/// connections too (`--streams N`): past this, its reads are spread over
/// all of them (each its own channel window), the bytes still passed on in
/// order.
const STRIPE_FROM: u64 = 16 << 20;

/// A tree on an SFTP server.
pub struct SftpSource {
    pub sftp: Sftp,
    /// How a file read whole is checked before its last bytes are passed
    /// on (a mismatch fails the file, so it is never published).
    pub verify: Option<Verify>,
}

/// A source path and how it is named in the list.
struct Root {
    path: Vec<u8>,
    name: Vec<u8>,
    contents: bool,
}

fn root_of(src: &[u8]) -> Root {
    let mut trimmed = src;
    while trimmed.len() > 1 && trimmed.ends_with(b"/") {
        trimmed = &trimmed[..trimmed.len() - 1];
    }
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let contents = src.is_empty()
        || src.ends_with(b"/")
        || base == b"."
        || base == b".."
        || trimmed == b"/"
        || base.is_empty();
    Root {
        path: if src.is_empty() {
            b".".to_vec()
        } else {
            src.to_vec()
        },
        name: if contents {
            b".".to_vec()
        } else {
            base.to_vec()
        },
        contents,
    }
}

struct Walk<'a, E> {
    sftp: &'a Sftp,
    opts: &'a ListOptions,
    emit: &'a mut dyn FnMut(Listed<Vec<u8>>) -> Result<(), E>,
    io_error: bool,
    depth: usize,
}

impl<E> Walk<'_, E> {
    fn fail(&mut self, path: &[u8], what: &str, e: io::Error) -> Result<(), E> {
        self.io_error = true;
        (self.emit)(Listed::Error(format!(
            "{what} {}: {}",
            escape(path),
            crate::error::io_text(&e)
        )))
    }

    fn visit(&mut self, path: &[u8], name: &[u8], a: Attrs) -> Result<(), E> {
        let (uid, gid) = a.uid_gid.unwrap_or((0, 0));
        let mut entry = Entry {
            name: name.to_vec(),
            kind: Kind::File,
            mode: a.perm.unwrap_or(0o644) & 0o7777,
            mtime: a.mtime(),
            mtime_nsec: 0,
            size: 0,
            uid,
            gid,
            target: Vec::new(),
            link_to: None,
            checksum: None,
        };
        if a.is_symlink() {
            if self.opts.follow_links {
                return match self.sftp.stat(path) {
                    Ok(t) => self.visit(path, name, t),
                    Err(e) => self.fail(path, "cannot follow symlink", e),
                };
            }
            if !self.opts.links {
                return (self.emit)(Listed::Notice(format!(
                    "skipping symlink {} (use -l or -a)",
                    escape(name)
                )));
            }
            match self.sftp.readlink(path) {
                Ok(t) => entry.target = t,
                Err(e) => return self.fail(path, "cannot read symlink", e),
            }
            entry.kind = Kind::Symlink;
            return (self.emit)(Listed::Entry(entry, path.to_vec()));
        }
        if a.is_dir() {
            entry.kind = Kind::Dir;
            (self.emit)(Listed::Entry(entry, path.to_vec()))?;
            if !self.opts.recursive && self.depth > 0 {
                return Ok(());
            }
            self.depth += 1;
            let r = self.descend(path, name);
            self.depth -= 1;
            return r;
        }
        if !a.is_file() {
            return (self.emit)(Listed::Notice(format!(
                "skipping non-regular file {}",
                escape(name)
            )));
        }
        entry.size = a.size.unwrap_or(0);
        if self.opts.checksum {
            match hash(self.sftp, path) {
                Ok(h) => entry.checksum = Some(h),
                Err(e) => return self.fail(path, "cannot read", e),
            }
        }
        (self.emit)(Listed::Entry(entry, path.to_vec()))
    }

    fn descend(&mut self, path: &[u8], name: &[u8]) -> Result<(), E> {
        let mut children = match self.sftp.read_dir(path) {
            Ok(c) => c,
            Err(e) => return self.fail(path, "cannot read directory", e),
        };
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (child, attrs) in children {
            if child == crate::fs::PARTIAL_DIR
                || (child.starts_with(b".") && child.ends_with(b".ferry-part"))
            {
                continue;
            }
            let child_name = join(name, &child);
            if self.opts.filters.excludes(&child_name, attrs.is_dir()) {
                continue;
            }
            let child_path = super::destination::join_path(path, &child);
            self.visit(&child_path, &child_name, attrs)?;
        }
        Ok(())
    }
}

/// BLAKE3 of a remote file (`--checksum`), read over SFTP.
fn hash(sftp: &Sftp, path: &[u8]) -> io::Result<[u8; 32]> {
    let mut f = SftpFile::open(sftp, path, None)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}

impl SftpSource {
    fn stat_root(&self, root: &Root, opts: &ListOptions) -> io::Result<Attrs> {
        if root.contents || opts.follow_links || !opts.links {
            self.sftp.stat(&root.path)
        } else {
            self.sftp.lstat(&root.path)
        }
    }
}

impl Source for SftpSource {
    type Handle = Vec<u8>;
    type File = SftpFile;

    fn list_start(&self, roots: &[Vec<u8>], opts: &ListOptions) -> ListStart {
        if roots.len() != 1 {
            return ListStart {
                single_file: false,
                single_dir: false,
            };
        }
        let root = root_of(&roots[0]);
        let is_dir = self
            .stat_root(&root, opts)
            .map(|a| a.is_dir())
            .unwrap_or(false);
        ListStart {
            single_file: !is_dir,
            single_dir: is_dir && !root.contents && opts.recursive,
        }
    }

    fn list<E>(
        &self,
        roots: &[Vec<u8>],
        opts: &ListOptions,
        emit: &mut dyn FnMut(Listed<Vec<u8>>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut w = Walk {
            sftp: &self.sftp,
            opts,
            emit,
            io_error: false,
            depth: 0,
        };
        for src in roots {
            let root = root_of(src);
            match self.stat_root(&root, opts) {
                Ok(a) => {
                    if a.is_dir() && !opts.recursive && !opts.dirs {
                        (w.emit)(Listed::Notice(format!(
                            "skipping directory {} (use -r)",
                            escape(src)
                        )))?;
                        continue;
                    }
                    w.visit(&root.path, &root.name, a)?;
                }
                Err(e) => {
                    w.io_error = true;
                    (w.emit)(Listed::Error(format!(
                        "cannot read source {}: {}",
                        escape(src),
                        crate::error::io_text(&e)
                    )))?;
                }
            }
        }
        Ok(w.io_error)
    }

    fn open(&self, at: &Vec<u8>) -> io::Result<SftpFile> {
        // files go to the least busy connection; a large one is read
        // through the others too
        let conn = self.sftp.least_busy();
        let mut f = SftpFile::open(&conn, at, self.verify.as_ref())?;
        // (connections that join later are read through too)
        f.family = Some(self.sftp.clone());
        Ok(f)
    }

    fn name<'h>(&self, at: &'h Vec<u8>) -> &'h [u8] {
        at
    }
}

/// A handle closed when its last user lets go.
struct Open {
    sftp: Sftp,
    handle: Handle,
}

impl Drop for Open {
    fn drop(&mut self) {
        let _ = self
            .sftp
            .send(wire::CLOSE, |p| wire::put_str(p, &self.handle));
    }
}

/// A remote file open for reading: in order with reads ahead, or at offsets.
pub struct SftpFile {
    open: Arc<Open>,
    /// Where the next in-order read starts.
    pos: u64,
    /// Reads asked ahead of `pos`: offset, the connection asked (`None`:
    /// the file's own, else an index into `stripes`) and answer.
    ahead: VecDeque<(u64, Option<usize>, Pending)>,
    /// The connection that carries the others (`--streams N`), which a
    /// large file is also read through once it passes [`STRIPE_FROM`].
    family: Option<Sftp>,
    /// The file's path (to open it on them).
    path: Vec<u8>,
    /// The file opened on them: the OPEN outstanding, then the handle.
    stripes: Vec<(Sftp, Option<Pending>, Option<Arc<Open>>)>,
    /// Where the next read ahead starts.
    asked: u64,
    /// What arrived and is not read yet.
    have: Vec<u8>,
    used: usize,
    at_end: bool,
    /// The check of a file read front to back, until it is made. (A mutex
    /// only so that [`SourceFile::try_clone`] can hand it on.)
    check: std::sync::Mutex<Option<Check>>,
    /// Bytes read ahead for reads at offsets that follow one another (the
    /// chunks a resumed download lacks come in order, each far smaller than
    /// a round trip is worth).
    ahead_at: std::sync::Mutex<AheadAt>,
}

/// A window of the file read at once, and where the last read at an
/// offset ended.
#[derive(Default)]
struct AheadAt {
    start: u64,
    data: Vec<u8>,
    last_end: u64,
    /// The file's size, asked once.
    size: Option<u64>,
}

/// How much a run of reads at offsets reads ahead.
const AHEAD_AT: u64 = 2 << 20;

/// What is needed to check a file once its last byte is read.
struct Check {
    verify: Verify,
    path: Vec<u8>,
    /// The hash of the bytes passed on so far.
    hashing: Hashing,
    /// The remote command's answer, asked for when the file was opened.
    remote: Option<Answer>,
}

impl Check {
    /// The hash of what was read against the remote's (or a second read's).
    fn finish(self, sftp: &Sftp) -> io::Result<()> {
        let got = match (&self.verify.how, self.remote) {
            (How::Remote(h), Some(rx)) => {
                h.flush();
                let got = rx.recv().unwrap_or_else(|_| Err(gone()));
                // a command that ended left it unchecked: read it again
                verify::or_reread(got, sftp, &self.path, &self.verify)
            }
            _ => verify::reread(sftp, &self.path, self.verify.kind()),
        };
        match got {
            Ok(got) if got == self.hashing.hex() => {
                self.verify.passed();
                Ok(())
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not match what was read (did it change meanwhile?)",
                    self.verify.what()
                ),
            )),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot check it with {}: {}",
                    self.verify.what(),
                    crate::error::io_text(&e)
                ),
            )),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the remote hash command ended")
}

impl SftpFile {
    fn open(sftp: &Sftp, path: &[u8], verify: Option<&Verify>) -> io::Result<SftpFile> {
        let handle = sftp.open(path, wire::OPEN_READ, &Attrs::default())?;
        let mut f = SftpFile::on(Arc::new(Open {
            sftp: sftp.clone(),
            handle,
        }));
        f.path = path.to_vec();
        if let Some(v) = verify {
            let remote = match &v.how {
                How::Remote(h) => Some(h.ask(path)?),
                How::Reread => None,
            };
            f.check = std::sync::Mutex::new(Some(Check {
                verify: v.clone(),
                path: path.to_vec(),
                hashing: Hashing::new(v.kind()),
                remote,
            }));
        }
        Ok(f)
    }

    fn on(open: Arc<Open>) -> SftpFile {
        SftpFile {
            open,
            pos: 0,
            ahead: VecDeque::new(),
            family: None,
            path: Vec::new(),
            stripes: Vec::new(),
            asked: 0,
            have: Vec::new(),
            used: 0,
            at_end: false,
            check: Default::default(),
            ahead_at: Default::default(),
        }
    }
}

impl Drop for SftpFile {
    fn drop(&mut self) {
        // a handle still being opened on another connection is closed once
        // it comes (the open ones close with their `Open`)
        for (s, opening, _) in self.stripes.drain(..) {
            if let Some(Ok(wire::Reply::Handle(h))) = opening.map(|p| p.recv()) {
                let _ = s.send(wire::CLOSE, |p| wire::put_str(p, &h));
            }
        }
    }
}

impl io::Read for SftpFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let o = &*self.open;
        let step = o.sftp.limits.read as u64;
        loop {
            if self.used < self.have.len() {
                let n = (self.have.len() - self.used).min(buf.len());
                buf[..n].copy_from_slice(&self.have[self.used..self.used + n]);
                let check = self.check.get_mut().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = check {
                    c.hashing.update(&buf[..n]);
                }
                self.used += n;
                self.pos += n as u64;
                return Ok(n);
            }
            if self.at_end {
                // the end: checked before the reader learns it is whole
                let check = self.check.get_mut().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = check.take() {
                    c.finish(&o.sftp)?;
                }
                return Ok(0);
            }
            let more = match &self.family {
                Some(all)
                    if self.asked >= STRIPE_FROM && all.streams() > 1 + self.stripes.len() =>
                {
                    all.beside(&o.sftp, self.stripes.iter().map(|(s, ..)| s))
                }
                _ => Vec::new(),
            };
            {
                for s in more {
                    let p = s.send(wire::OPEN, |p| {
                        wire::put_str(p, &self.path);
                        wire::put_u32(p, wire::OPEN_READ);
                        Attrs::default().encode(p);
                    })?;
                    self.stripes.push((s, Some(p), None));
                }
            }
            for (s, opening, open) in &mut self.stripes {
                if let Some(p) = opening {
                    match p.try_recv() {
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                        Ok(wire::Reply::Handle(handle)) => {
                            *opening = None;
                            *open = Some(Arc::new(Open {
                                sftp: s.clone(),
                                handle,
                            }));
                        }
                        // a connection that cannot open it is left out
                        _ => *opening = None,
                    }
                }
            }
            let open_stripes = self.stripes.iter().filter(|s| s.2.is_some()).count();
            while self.ahead.len() < READS_IN_FLIGHT * (1 + open_stripes) {
                // the connection with the least outstanding
                let mut best: (Option<usize>, usize) = (None, o.sftp.outstanding());
                for (i, (s, _, open)) in self.stripes.iter().enumerate() {
                    if open.is_some() && s.outstanding() < best.1 {
                        best = (Some(i), s.outstanding());
                    }
                }
                let (sftp, handle) = match best.0 {
                    None => (&o.sftp, &o.handle),
                    Some(i) => {
                        let open = self.stripes[i].2.as_ref().expect("open");
                        (&open.sftp, &open.handle)
                    }
                };
                let p = sftp.send_read(handle, self.asked, step as u32)?;
                self.ahead.push_back((self.asked, best.0, p));
                self.asked += step;
            }
            let (at, on, p) = self.ahead.pop_front().expect("asked");
            let d = match on {
                None => o.sftp.read_reply(p)?,
                Some(i) => {
                    let open = self.stripes[i].2.as_ref().expect("open");
                    open.sftp.read_reply(p)?
                }
            };
            if d.is_empty() {
                self.at_end = true;
                // the answers still outstanding are dropped unread
                self.ahead.clear();
                continue;
            }
            if at != self.pos || (d.len() as u64) < step {
                // a short answer: ask again from where the data stops
                self.ahead.clear();
                self.asked = at + d.len() as u64;
            }
            if at == self.pos {
                self.have = d;
                self.used = 0;
            }
        }
    }
}

impl SourceFile for SftpFile {
    fn stamp(&self) -> io::Result<Stamp> {
        let a = self.open.sftp.fstat(&self.open.handle)?;
        Ok(Stamp {
            size: a.size.unwrap_or(0),
            mtime: a.mtime(),
            mtime_nsec: 0,
        })
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = &*self.open;
        let mut a = self.ahead_at.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset + buf.len() as u64;
        let window_end = a.start + a.data.len() as u64;
        if offset >= a.start && end <= window_end {
            let at = (offset - a.start) as usize;
            buf.copy_from_slice(&a.data[at..at + buf.len()]);
            a.last_end = end;
            return Ok(());
        }
        let following = offset == a.last_end && offset > 0;
        a.last_end = end;
        if following {
            let size = match a.size {
                Some(s) => s,
                None => {
                    let s = o.sftp.fstat(&o.handle)?.size.unwrap_or(0);
                    a.size = Some(s);
                    s
                }
            };
            let window = AHEAD_AT.min(size.saturating_sub(offset));
            if window > buf.len() as u64 {
                let mut data = vec![0u8; window as usize];
                o.sftp.read_exact_at(&o.handle, &mut data, offset)?;
                buf.copy_from_slice(&data[..buf.len()]);
                a.start = offset;
                a.data = data;
                return Ok(());
            }
        }
        o.sftp.read_exact_at(&o.handle, buf, offset)
    }
    /// A file sent as a recipe (a download resumed from the local partial)
    /// is read whole in order through a clone (the chunker), and the chunks
    /// the receiver lacks are read at offsets from this one: the check goes
    /// with the first clone made before anything was read, which reads
    /// every byte, so a resumed download is checked against the remote's
    /// hash as a whole one is.
    fn try_clone(&self) -> io::Result<SftpFile> {
        let mut clone = SftpFile::on(self.open.clone());
        if self.pos == 0 {
            let mut check = self.check.lock().unwrap_or_else(|p| p.into_inner());
            clone.check = std::sync::Mutex::new(check.take());
        }
        Ok(clone)
    }
}
