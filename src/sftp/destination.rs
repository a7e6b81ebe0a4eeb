//! A directory on an SFTP server as a [`Destination`]: what the receiver
//! writes lands in a hidden temporary beside its target (`.NAME.ferry-part`),
//! written with many requests outstanding, then fsynced (`fsync@openssh.com`),
//! given its mode and mtime, checked where the transfer asks (the remote's
//! hash command or a second read, [`super::verify`]: a file that fails stays
//! in its temporary, unpublished), and renamed into place
//! (`posix-rename@openssh.com`; a server without it gets remove-then-rename,
//! which is not atomic, and the transfer says so). A file larger than one
//! range ([`verify::Ranges`]) is hashed on the remote range by range while
//! it is written: each range once every write below its end is answered.
//!
//! Not for reading a transfer's sources (that is [`super::source`]) nor for
//! deciding when SFTP is used (that is `transfer`). The only old data offered
//! to rebuild a file from is the partial file an interrupted upload left
//! (read back once to check what it holds, chunk by chunk; what matches is
//! copied on the server with `copy-data`): a changed file is not rebuilt
//! from its old version, so over SFTP it comes whole.
//!
//! # Security
//! Names reach the server only inside SFTP packets: no shell ever sees them.
//! Every `rel` has passed the receiver's name checks (no `..`, no absolute
//! path), so it stays under the destination's root.

use super::client::{Handle, Pending, Sftp};
use super::verify::{self, How, RangeHashing, Ranges, Verify};
use super::wire::{self, Attrs};
use crate::error::TransferError;
use crate::fs::names::{self, escape, split_parent};
use crate::store::destination::{
    BasisFile, Caps, Destination, Existing, ExistingKind, Meta, MetaOf, Place, PublishHow, Space,
    TempHow, TempWrite,
};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Writes kept outstanding per file and connection: 16 × 255 KiB is more
/// than an OpenSSH channel window (2 MiB), so the window stays full.
const WRITES_IN_FLIGHT: usize = 16;

/// Where a file being written starts to be split across the other
/// connections too (`--streams N`): what follows is written at its offsets
/// into the one temporary through every connection.
const STRIPE_FROM: u64 = 16 << 20;

/// Joins a root and a checked relative name (`.`: the root).
pub fn join_path(root: &[u8], rel: &[u8]) -> Vec<u8> {
    if rel == b"." || rel.is_empty() {
        return root.to_vec();
    }
    if root.is_empty() || root == b"." {
        return rel.to_vec();
    }
    let mut p = root.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

/// The hidden name a file is written under before it is published.
pub fn part_name(rel: &[u8]) -> Vec<u8> {
    let (dir, name) = split_parent(rel);
    let mut n = b".".to_vec();
    n.extend_from_slice(name);
    n.extend_from_slice(b".ferry-part");
    names::join(dir, &n)
}

fn existing(a: &Attrs) -> Existing {
    let perm = a.perm.unwrap_or(0);
    let kind = if a.is_dir() {
        ExistingKind::Dir
    } else if a.is_file() {
        ExistingKind::File
    } else if a.is_symlink() {
        ExistingKind::Symlink
    } else {
        ExistingKind::Other
    };
    let (uid, gid) = a.uid_gid.unwrap_or((0, 0));
    Existing {
        kind,
        size: a.size.unwrap_or(0),
        mode: perm & 0o7777,
        mtime: a.mtime(),
        mtime_nsec: 0,
        uid,
        gid,
    }
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The attributes a published file or directory gets.
fn attrs_of(meta: &Meta) -> Attrs {
    Attrs {
        perm: meta.mode.map(|m| m & 0o7777),
        times: meta.mtime.map(|(s, _)| (s as u32, s as u32)),
        uid_gid: meta.uid.zip(meta.gid),
        size: None,
    }
}

/// An SFTP destination before it is opened.
pub struct SftpPlace {
    pub sftp: Sftp,
    /// `[user@]host:` as messages show it.
    pub shown_host: String,
    /// How each file is checked before it is renamed into place.
    pub verify: Option<Verify>,
}

impl Place for SftpPlace {
    type Dest = SftpDest;

    fn probe(&mut self, path: &[u8], shown: &str) -> Result<Option<bool>, TransferError> {
        match not_found_is_none(self.sftp.stat(path)) {
            Ok(a) => Ok(a.map(|a| a.is_dir())),
            Err(e) => Err(TransferError::local(shown.to_string(), &e)),
        }
    }

    fn open(&mut self, root: &[u8], create: bool, shown: &str) -> Result<SftpDest, TransferError> {
        let fail = |e: &io::Error| TransferError::local(shown.to_string(), e);
        let mut made = false;
        match not_found_is_none(self.sftp.stat(root)).map_err(|e| fail(&e))? {
            Some(a) if a.is_dir() => {}
            Some(_) => {
                return Err(fail(&io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                )))
            }
            None if create => {
                self.sftp.mkdir(root, 0o755).map_err(|e| fail(&e))?;
                made = true;
            }
            None => return Err(fail(&io::Error::from(io::ErrorKind::NotFound))),
        }
        Ok(SftpDest {
            sftp: self.sftp.clone(),
            root: root.to_vec(),
            shown: format!("{}{}", self.shown_host, escape(root)),
            verify: self.verify.clone(),
            finishing: Default::default(),
            made: if made {
                [b".".to_vec()].into()
            } else {
                Default::default()
            },
            created: Default::default(),
            resuming: None,
            failed: Default::default(),
        })
    }
}

/// A directory on the server, files written beneath it.
pub struct SftpDest {
    sftp: Sftp,
    root: Vec<u8>,
    shown: String,
    /// How each file is checked before it is renamed into place.
    verify: Option<Verify>,
    /// Files published whose last requests are not answered yet, oldest
    /// first: many small files in flight, not a round trip each.
    finishing: std::sync::Mutex<VecDeque<Finishing>>,
    /// Directories this destination made: nothing was in them but what it
    /// put there, so a name it did not make needs no LSTAT to know it is
    /// not there (a round trip per file on a slow link).
    made: std::collections::HashSet<Vec<u8>>,
    /// What it made in them.
    created: std::collections::HashSet<Vec<u8>>,
    /// The file whose partial was just opened to resume from.
    resuming: Option<Vec<u8>>,
    /// Files whose finishing failed after `publish` had returned (their
    /// failure was reported to whichever call found it): the run fails at
    /// its final sync, so that none of them is taken as settled (with
    /// `--remove-source-files`, its source would be removed).
    failed: std::sync::Mutex<Vec<String>>,
}

/// Files whose publishing may be outstanding at once.
const FILES_IN_FLIGHT: usize = 96;

/// A published file on its way: opened, written, closed, renamed, each
/// step sent once the one before it is answered.
struct Finishing {
    /// The connection it was written through.
    sftp: Sftp,
    /// The file as messages name it.
    name: String,
    stage: Stage,
    temp_path: Vec<u8>,
    target: Vec<u8>,
    backup: Option<Vec<u8>>,
    /// The hashes of what was written, one per range, checked before the
    /// rename (`None`: not checked, or written out of order).
    hashed: Option<Vec<String>>,
    /// Its length.
    size: u64,
    /// The remote's answers asked so far: the whole file's, or one per
    /// range from the first (those asked while it was written first).
    answers: Vec<verify::Answer>,
}

enum Stage {
    /// The OPEN is outstanding; the file's bytes wait here.
    Opening {
        open: Pending,
        data: Vec<u8>,
        attrs: Attrs,
        fsync: bool,
    },
    /// Writes (the first `writes`), fsync, metadata and close outstanding.
    /// Once the writes are answered the remote hash command is asked (what
    /// it reads is what the server wrote), so that it hashes while the
    /// server fsyncs, not after: the whole file, or the ranges not asked
    /// yet ([`Finishing::answers`]).
    Closing {
        q: VecDeque<Pending>,
        writes: usize,
        asked: bool,
    },
    /// Written and closed; the remote hash command's answers outstanding
    /// (those come, in order, into the second).
    Verifying(Vec<io::Result<String>>),
    /// The renames outstanding; a `true` one may find nothing to move.
    Renaming(VecDeque<(Pending, bool)>),
}

/// The fsync, metadata and close of an open file, sent (after every write
/// to it was: the server handles one connection's requests in order).
fn tail(sftp: &Sftp, h: &[u8], attrs: &Attrs, fsync: bool) -> io::Result<Vec<Pending>> {
    let mut out = Vec::new();
    if fsync && sftp.ext.fsync {
        out.push(sftp.send(wire::EXTENDED, |p| {
            wire::put_str(p, b"fsync@openssh.com");
            wire::put_str(p, h);
        })?);
    }
    out.push(sftp.send(wire::FSETSTAT, |p| {
        wire::put_str(p, h);
        attrs.encode(p);
    })?);
    out.push(sftp.send(wire::CLOSE, |p| wire::put_str(p, h))?);
    Ok(out)
}

/// Sends the rename that puts `from` at `to` (replacing it where the
/// server can; else the caller removed `to` first).
fn send_replace(sftp: &Sftp, from: &[u8], to: &[u8]) -> io::Result<Pending> {
    if sftp.ext.posix_rename {
        sftp.send(wire::EXTENDED, |p| {
            wire::put_str(p, b"posix-rename@openssh.com");
            wire::put_str(p, from);
            wire::put_str(p, to);
        })
    } else {
        sftp.send(wire::RENAME, |p| {
            wire::put_str(p, from);
            wire::put_str(p, to);
        })
    }
}

fn mismatch(v: &Verify) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} does not match what was sent; not published", v.what()),
    )
}

/// Asks the remote for the hash of range `k` of the file at `path`, which
/// ends at `to`.
fn ask_range(r: &Ranges, path: &[u8], k: u64, to: u64) -> io::Result<verify::Answer> {
    let mib = 1 << 20;
    let first = k * r.bytes / mib;
    r.hash
        .ask_range(path, first, (to - k * r.bytes).div_ceil(mib))
}

fn ended() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the SFTP connection ended")
}

/// An answer, waiting for it or not.
fn answer(p: &Pending, block: bool) -> io::Result<Option<super::wire::Reply>> {
    if block {
        return p.recv().map(Some).map_err(|_| ended());
    }
    match p.try_recv() {
        Ok(r) => Ok(Some(r)),
        Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(ended()),
    }
}

fn status_ok(r: super::wire::Reply) -> io::Result<()> {
    match r {
        super::wire::Reply::Status {
            code: wire::FX_OK, ..
        } => Ok(()),
        super::wire::Reply::Status { code, message } => {
            Err(super::client::status_error(code, &message))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the SFTP server answered with the wrong kind of reply",
        )),
    }
}

impl SftpDest {
    fn path(&self, rel: &[u8]) -> Vec<u8> {
        join_path(&self.root, rel)
    }

    /// Moves a file on as far as its answers allow (waiting for one answer
    /// first when `block`); whether it is done.
    fn advance(&self, f: &mut Finishing, mut block: bool) -> io::Result<bool> {
        loop {
            match &mut f.stage {
                Stage::Opening {
                    open,
                    data,
                    attrs,
                    fsync,
                } => {
                    let Some(r) = answer(open, block)? else {
                        return Ok(false);
                    };
                    block = false;
                    let h = match r {
                        super::wire::Reply::Handle(h) => h,
                        other => return Err(status_ok(other).err().unwrap_or_else(ended)),
                    };
                    let mut q = VecDeque::new();
                    if !data.is_empty() {
                        q.push_back(f.sftp.send_write(&h, 0, data)?);
                    }
                    let writes = q.len();
                    q.extend(tail(&f.sftp, &h, attrs, *fsync)?);
                    f.stage = Stage::Closing {
                        q,
                        writes,
                        asked: false,
                    };
                }
                Stage::Closing { q, writes, asked } => {
                    loop {
                        let remote = match (&self.verify, &f.hashed) {
                            (
                                Some(
                                    v @ Verify {
                                        how: How::Remote(h),
                                        ..
                                    },
                                ),
                                Some(hashed),
                            ) => Some((v, h, hashed.len())),
                            _ => None,
                        };
                        if let (0, false, Some((v, h, ranges))) = (*writes, *asked, remote) {
                            *asked = true;
                            match &v.ranges {
                                Some(r) if ranges > 1 => {
                                    // the ranges not asked while it was written
                                    while f.answers.len() < ranges {
                                        let k = f.answers.len() as u64;
                                        let to = ((k + 1) * r.bytes).min(f.size);
                                        f.answers.push(ask_range(r, &f.temp_path, k, to)?);
                                    }
                                }
                                _ => {
                                    f.answers = vec![h.ask(&f.temp_path)?];
                                    if block {
                                        h.flush();
                                    }
                                }
                            }
                        }
                        let Some(p) = q.front() else { break };
                        let Some(r) = answer(p, block)? else {
                            return Ok(false);
                        };
                        block = false;
                        q.pop_front();
                        *writes = writes.saturating_sub(1);
                        status_ok(r)?;
                    }
                    // checked before anything is renamed into place
                    if let (Some(v), Some(want)) = (&self.verify, &f.hashed) {
                        match &v.how {
                            How::Remote(_) => {
                                f.stage = Stage::Verifying(Vec::new());
                                continue;
                            }
                            How::Reread => {
                                let got = verify::reread(&f.sftp, &f.temp_path, v.kind());
                                self.judge(v, &want[0], got)?;
                            }
                        }
                    }
                    f.stage = Stage::Renaming(self.send_renames(f)?);
                }
                Stage::Verifying(got) => {
                    let (Some(v), Some(want)) = (&self.verify, &f.hashed) else {
                        unreachable!("a file is verified when it was hashed")
                    };
                    while let Some(rx) = f.answers.get(got.len()) {
                        let r = if block {
                            if let How::Remote(h) = &v.how {
                                h.flush();
                            }
                            block = false;
                            rx.recv().unwrap_or_else(|_| Err(ended()))
                        } else {
                            match rx.try_recv() {
                                Ok(r) => r,
                                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(ended()),
                            }
                        };
                        got.push(r);
                    }
                    let got = std::mem::take(got);
                    self.judge_all(v, f, want, got)?;
                    f.stage = Stage::Renaming(self.send_renames(f)?);
                }
                Stage::Renaming(q) => {
                    while let Some((p, may_miss)) = q.front() {
                        let may_miss = *may_miss;
                        let Some(r) = answer(p, block)? else {
                            return Ok(false);
                        };
                        block = false;
                        q.pop_front();
                        match status_ok(r) {
                            Err(e) if may_miss && e.kind() == io::ErrorKind::NotFound => {}
                            other => other?,
                        }
                    }
                    return Ok(true);
                }
            }
        }
    }

    /// Whether a written file's check passed: the error names the check.
    /// A file that fails stays in its temporary, unpublished: the next run
    /// resumes from it and sends again what differs.
    fn judge(&self, v: &Verify, want: &str, got: io::Result<String>) -> io::Result<()> {
        self.judge_one(v, want, got)?;
        v.passed();
        Ok(())
    }

    /// [`SftpDest::judge`] for one hash, not counting the file.
    fn judge_one(&self, v: &Verify, want: &str, got: io::Result<String>) -> io::Result<()> {
        match got {
            Ok(got) if got == want => Ok(()),
            Ok(_) => Err(mismatch(v)),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot check it with {}: {}; not published",
                    v.what(),
                    crate::error::io_text(&e)
                ),
            )),
        }
    }

    /// Whether each of a file's answers (the whole file's, or one per range)
    /// is its hash: a command that ended left it unchecked, and it is read
    /// again over SFTP instead ([`verify::or_reread`]).
    fn judge_all(
        &self,
        v: &Verify,
        f: &Finishing,
        want: &[String],
        got: Vec<io::Result<String>>,
    ) -> io::Result<()> {
        if want.len() == 1 {
            let got = got.into_iter().next().unwrap_or_else(|| Err(ended()));
            let got = verify::or_reread(got, &f.sftp, &f.temp_path, v);
            return self.judge(v, &want[0], got);
        }
        let gone =
            |r: &io::Result<String>| matches!(r, Err(e) if e.kind() == io::ErrorKind::BrokenPipe);
        let got: Vec<io::Result<String>> = if got.iter().any(gone) {
            v.reread.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match verify::reread_ranges(&f.sftp, &f.temp_path, v.kind(), v.range_bytes()) {
                Ok(hexes) => hexes.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            }
        } else {
            got
        };
        if got.len() != want.len() {
            // (read again: it is not as long as what was sent)
            return Err(mismatch(v));
        }
        for (k, (want, got)) in want.iter().zip(got).enumerate() {
            let from = k as u64 * v.range_bytes();
            let to = (from + v.range_bytes()).min(f.size);
            self.judge_one(v, want, got)
                .map_err(|e| io::Error::new(e.kind(), format!("{e} (bytes {from} to {to})")))?;
        }
        v.passed();
        Ok(())
    }

    /// Sends the renames that put a written file in place (its backup
    /// first), through the connection it was written by.
    fn send_renames(&self, f: &Finishing) -> io::Result<VecDeque<(Pending, bool)>> {
        let sftp = &f.sftp;
        let mut renames = VecDeque::new();
        if let Some(to) = &f.backup {
            renames.push_back((send_replace(sftp, &f.target, to)?, true));
        }
        if !sftp.ext.posix_rename {
            renames.push_back((
                sftp.send(wire::REMOVE, |p| wire::put_str(p, &f.target))?,
                true,
            ));
        }
        renames.push_back((send_replace(sftp, &f.temp_path, &f.target)?, false));
        Ok(renames)
    }

    /// Moves every file in flight on without waiting; while more than
    /// `keep` are left, waits for the oldest's next answer and moves every
    /// file on again (each answer that came meanwhile sends the next
    /// request of its file at once: the files' chains overlap, rather than
    /// one file's open, close, check and rename being waited for before
    /// the next file's). The first failure, naming its file.
    fn settle(&self, keep: usize) -> io::Result<()> {
        let mut q = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        let mut first: Option<io::Error> = None;
        let mut fail = |f: &Finishing, e: io::Error| {
            let text = format!("{}: {}", f.name, e);
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(text.clone());
            if first.is_none() {
                first = Some(io::Error::new(e.kind(), text));
            }
        };
        loop {
            let mut i = 0;
            while i < q.len() {
                match self.advance(&mut q[i], false) {
                    Ok(false) => i += 1,
                    Ok(true) => {
                        q.remove(i);
                    }
                    Err(e) => {
                        fail(&q[i], e);
                        q.remove(i);
                    }
                }
            }
            if q.len() <= keep {
                break;
            }
            match self.advance(&mut q[0], true) {
                Ok(false) => {}
                Ok(true) => {
                    q.pop_front();
                }
                Err(e) => {
                    fail(&q[0], e);
                    q.pop_front();
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits until every file published is in place.
    fn drain(&self) -> io::Result<()> {
        self.settle(0)
    }

    fn remove_tree(&self, path: &[u8]) -> io::Result<()> {
        let a = self.sftp.lstat(path)?;
        if !a.is_dir() {
            return self.sftp.remove(path);
        }
        for (name, _) in self.sftp.read_dir(path)? {
            self.remove_tree(&join_path(path, &name))?;
        }
        self.sftp.rmdir(path)
    }

    /// Puts `from` at `to`, replacing what is there: atomically where the
    /// server can.
    fn replace(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        if self.sftp.ext.posix_rename {
            return self.sftp.posix_rename(from, to);
        }
        match self.sftp.remove(to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.sftp.rename(from, to)
    }
}

impl Drop for SftpDest {
    /// A transfer that ends early still lets what it published land.
    fn drop(&mut self) {
        let _ = self.drain();
    }
}

impl Destination for SftpDest {
    type Basis = SftpBasis;
    type Temp = SftpTemp;

    fn caps(&self) -> Caps {
        Caps {
            // (only from a partial file: see open_basis)
            rebuild: true,
            write_at: false,
            share_blocks: false,
        }
    }
    fn show(&self, rel: &[u8]) -> String {
        if rel == b"." {
            return self.shown.clone();
        }
        format!("{}/{}", self.shown.trim_end_matches('/'), escape(rel))
    }
    fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>> {
        if rel != b"." && self.made.contains(split_parent(rel).0) && !self.created.contains(rel) {
            return Ok(None);
        }
        Ok(not_found_is_none(self.sftp.lstat(&self.path(rel)))?.map(|a| existing(&a)))
    }
    fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>> {
        self.drain()?;
        let mut v: Vec<_> = self
            .sftp
            .read_dir(&self.path(rel))?
            .into_iter()
            .map(|(n, a)| (n, a.is_dir()))
            .collect();
        v.sort();
        Ok(v)
    }
    fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let path = self.path(rel);
        self.created.insert(rel.to_vec());
        match self.sftp.mkdir(&path, mode) {
            Ok(()) => {
                self.made.insert(rel.to_vec());
                Ok(())
            }
            // v3 has no "exists" status: look
            Err(e) => match self.sftp.lstat(&path) {
                Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists")),
                Err(_) => Err(e),
            },
        }
    }
    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        self.created.insert(rel.to_vec());
        self.sftp.symlink(target, &self.path(rel))
    }
    fn readlink(&mut self, rel: &[u8]) -> io::Result<Vec<u8>> {
        self.sftp.readlink(&self.path(rel))
    }
    fn hardlink(&mut self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        self.drain()?;
        self.created.insert(rel.to_vec());
        if !self.sftp.ext.hardlink {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the SFTP server cannot make hard links",
            ));
        }
        self.sftp.hardlink(&self.path(existing), &self.path(rel))
    }
    fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        self.drain()?;
        let path = self.path(rel);
        if let Some(suffix) = backup {
            self.created.insert([rel, suffix].concat());
        }
        match backup {
            Some(suffix) => {
                let mut to = path.clone();
                to.extend_from_slice(suffix);
                self.replace(&path, &to)
            }
            None => self.remove_tree(&path),
        }
    }
    fn set_meta(&mut self, rel: &[u8], of: MetaOf, meta: &Meta) -> io::Result<()> {
        self.drain()?;
        if of == MetaOf::Link {
            // SETSTAT follows symlinks; a link's own times stay as made
            return Ok(());
        }
        self.sftp.setstat(&self.path(rel), &attrs_of(meta))
    }
    /// No old version to rebuild from: reading it back would cost as much
    /// as sending the file (and `-c` sends a file it cannot compare).
    fn open_basis(&mut self, _rel: &[u8]) -> io::Result<SftpBasis> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no delta over SFTP",
        ))
    }
    /// The partial file, moved aside first: the server refuses to copy
    /// between two handles of one path, and the new partial takes its name.
    /// Once open it is removed: the handle keeps it readable until closed.
    fn open_partial(&mut self, rel: &[u8]) -> Option<SftpBasis> {
        self.drain().ok()?;
        let part = self.path(&part_name(rel));
        let mut aside = part.clone();
        aside.extend_from_slice(b"-resume");
        self.sftp.rename(&part, &aside).ok()?;
        let basis = SftpBasis::open(&self.sftp, &aside);
        let _ = self.sftp.remove(&aside);
        if basis.is_ok() {
            self.resuming = Some(rel.to_vec());
        }
        basis.ok()
    }
    fn create_temp(&mut self, rel: &[u8], how: TempHow) -> io::Result<SftpTemp> {
        self.settle(FILES_IN_FLIGHT * self.sftp.streams())?;
        let path = self.path(&part_name(rel));
        // a file resumed from its partial stays on the first connection,
        // where the partial is open (a server copies only between its own
        // handles) and whole (a rebuild reads back what it wrote); any
        // other goes to the connection with the least outstanding, and a
        // large one spreads over the others too
        let resumed = self.resuming.take().is_some_and(|r| r == rel);
        let (sftp, family) = if resumed {
            (self.sftp.alone(), None)
        } else {
            // (connections that join later are written through too)
            (self.sftp.least_busy(), Some(self.sftp.clone()))
        };
        if how.partial {
            // a partial file being resumed from stays readable through its
            // open handle; the new file is a new one (the answer is not
            // waited for: the server handles requests in order)
            drop(sftp.send(wire::REMOVE, |p| wire::put_str(p, &path))?);
        }
        let flags = wire::OPEN_WRITE | wire::OPEN_CREAT | wire::OPEN_TRUNC;
        let perm = Attrs {
            perm: Some(0o600),
            ..Attrs::default()
        };
        let opening = sftp.send(wire::OPEN, |p| {
            wire::put_str(p, &path);
            wire::put_u32(p, flags);
            perm.encode(p);
        })?;
        Ok(SftpTemp {
            sftp,
            family,
            stripes: Vec::new(),
            handle: None,
            opening: Some(opening),
            path,
            partial: how.partial,
            sent: 0,
            buf: Vec::new(),
            writes: VecDeque::new(),
            hashing: self
                .verify
                .as_ref()
                .map(|v| StreamHash::Here(RangeHashing::new(v.kind(), v.range_bytes()))),
            ranges: self.verify.as_ref().and_then(|v| v.ranges.clone()),
            answered: 0,
            asked: Vec::new(),
        })
    }
    fn publish(
        &mut self,
        mut temp: SftpTemp,
        rel: &[u8],
        meta: &Meta,
        how: PublishHow<'_>,
    ) -> io::Result<()> {
        let size = temp.len();
        // a copy that may need writing again must be answered while the
        // file is open; the rest is finished in the background
        if temp.writes.iter().any(|(_, copied, _)| copied.is_some()) {
            temp.flush()?;
        }
        let attrs = attrs_of(meta);
        // there is no end-of-run sync over SFTP (no syncfs on the server), so
        // every file is made durable (fsync@openssh.com, where offered)
        // before its rename: ferry reports success only for data on disk
        let _ = how.fsync;
        let fsync = true;
        let stage = match (temp.opening.take(), temp.handle.take()) {
            (Some(open), _) => Stage::Opening {
                open,
                data: {
                    // (nothing was sent yet: all of it is here)
                    if let Some(h) = &mut temp.hashing {
                        h.bytes(&temp.buf)?;
                    }
                    std::mem::take(&mut temp.buf)
                },
                attrs,
                fsync,
            },
            (None, Some(h)) => {
                temp.handle = Some(h);
                temp.send_buf()?;
                if !temp.stripes.is_empty() {
                    // writes through the other connections land before the
                    // fsync and the mtime (a write would change it)
                    temp.flush()?;
                }
                let mut q: VecDeque<Pending> = temp.close_stripes()?.into();
                let h = temp.handle.take().expect("open");
                q.extend(temp.writes.drain(..).map(|(p, ..)| p));
                // (the stripes' closes count as writes: theirs were
                // answered before)
                let writes = q.len();
                q.extend(tail(&temp.sftp, &h, &attrs, fsync)?);
                Stage::Closing {
                    q,
                    writes,
                    asked: false,
                }
            }
            (None, None) => unreachable!("a temporary is open or opening"),
        };
        self.created.insert(rel.to_vec());
        if let Some(suffix) = how.backup {
            self.created.insert([rel, suffix].concat());
        }
        let target = self.path(rel);
        let backup = how.backup.map(|suffix| {
            let mut to = target.clone();
            to.extend_from_slice(suffix);
            to
        });
        let f = Finishing {
            sftp: temp.sftp.clone(),
            name: self.show(rel),
            stage,
            temp_path: std::mem::take(&mut temp.path),
            target,
            backup,
            hashed: temp.hashing.take().map(StreamHash::hexes).transpose()?,
            size,
            answers: std::mem::take(&mut temp.asked),
        };
        self.finishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(f);
        self.settle(FILES_IN_FLIGHT * self.sftp.streams())
    }
    fn discard(&mut self, mut temp: SftpTemp) {
        let _ = temp.resolve();
        if let Some(h) = temp.handle.take() {
            // what is outstanding must land before the file goes
            while let Some((p, ..)) = temp.writes.pop_front() {
                let _ = temp.sftp.expect_ok(p);
            }
            for p in temp.close_stripes().unwrap_or_default() {
                let _ = temp.sftp.expect_ok(p);
            }
            let _ = temp.sftp.close(&h);
        }
        if !temp.partial {
            let _ = temp.sftp.remove(&temp.path);
        }
    }
    fn spill_dir(&mut self, _rel: &[u8]) -> Option<Arc<OwnedFd>> {
        None
    }
    fn tidy_dir(&mut self, _dir: &[u8]) {}
    fn space(&self) -> Space {
        match self.sftp.ext.statvfs.then(|| self.sftp.statvfs(&self.root)) {
            Some(Ok(s)) => Space {
                free_bytes: s.bavail.saturating_mul(s.frsize),
                out_of_inodes: s.files > 0 && s.ffree == 0,
            },
            _ => Space {
                free_bytes: 0,
                out_of_inodes: false,
            },
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        // each file was fsynced before it was renamed (see `publish`)
        let drained = self.drain();
        let failed = std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()));
        match failed.first() {
            Some(first) => Err(io::Error::other(format!(
                "{} file(s) not published, the first {first}",
                failed.len()
            ))),
            None => drained,
        }
    }
}

/// A file on the server opened for reading old data.
pub struct SftpBasis {
    sftp: Sftp,
    handle: Handle,
    len: u64,
}

impl SftpBasis {
    fn open(sftp: &Sftp, path: &[u8]) -> io::Result<SftpBasis> {
        let handle = sftp.open(path, wire::OPEN_READ, &Attrs::default())?;
        let len = sftp.fstat(&handle)?.size.unwrap_or(0);
        Ok(SftpBasis {
            sftp: sftp.clone(),
            handle,
            len,
        })
    }
}

impl Drop for SftpBasis {
    fn drop(&mut self) {
        if let Ok(p) = self
            .sftp
            .send(wire::CLOSE, |p| wire::put_str(p, &self.handle))
        {
            drop(p); // the answer is not waited for
        }
    }
}

impl BasisFile for SftpBasis {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.sftp.read_at(&self.handle, buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.sftp.read_exact_at(&self.handle, buf, offset)
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// A server-side copy's place in the file and its bytes.
type Copied = (u64, Vec<u8>);

/// Where a file's hash moves off the writing thread: past this, the
/// packets sent are hashed on a thread of their own (the writer goes on
/// filling the channel window meanwhile); below it, a thread costs more
/// than the hashing.
const HASH_THREAD_FROM: u64 = 1 << 20;

/// Packets waiting for the hashing thread: a bound, so that a hash slower
/// than the network holds the writer back rather than memory growing.
const HASH_QUEUE: usize = 16;

/// The hash of what a file was written with, front to back.
enum StreamHash {
    /// Computed on the writing thread (a small file).
    Here(RangeHashing),
    /// Computed on a thread of its own, from the packets as sent (each
    /// with where its data starts, and the connection that sent it, which
    /// gets it back to build a later write in; bytes copied on the server
    /// come with none and are not kept): no copy beyond the one into the
    /// packet.
    Away {
        tx: std::sync::mpsc::SyncSender<(Vec<u8>, usize, Option<Sftp>)>,
        done: std::thread::JoinHandle<RangeHashing>,
    },
    /// Only while moving from here to away.
    Moving,
}

fn no_hash() -> io::Error {
    io::Error::other("the thread hashing what was sent ended early")
}

impl StreamHash {
    /// Hashes `packet[at..]`, the data of a write just sent, and gives the
    /// packet back to `sftp` for the next write; `sent` is how far the file
    /// is written.
    fn packet(&mut self, packet: Vec<u8>, at: usize, sent: u64, sftp: &Sftp) -> io::Result<()> {
        match self {
            StreamHash::Here(h) if sent < HASH_THREAD_FROM => {
                h.update(&packet[at..]);
                sftp.give_back(packet);
                Ok(())
            }
            StreamHash::Here(_) => {
                let StreamHash::Here(mut h) = std::mem::replace(self, StreamHash::Moving) else {
                    unreachable!("matched above")
                };
                let (tx, rx) =
                    std::sync::mpsc::sync_channel::<(Vec<u8>, usize, Option<Sftp>)>(HASH_QUEUE);
                let done = std::thread::Builder::new()
                    .name("ferry-sftp-hash".into())
                    .spawn(move || {
                        for (p, at, from) in rx {
                            h.update(&p[at..]);
                            if let Some(from) = from {
                                from.give_back(p);
                            }
                        }
                        h
                    })?;
                tx.send((packet, at, Some(sftp.clone())))
                    .map_err(|_| no_hash())?;
                *self = StreamHash::Away { tx, done };
                Ok(())
            }
            StreamHash::Away { tx, .. } => tx
                .send((packet, at, Some(sftp.clone())))
                .map_err(|_| no_hash()),
            StreamHash::Moving => Err(no_hash()),
        }
    }

    /// Bytes already in hand (a copy made on the server), hashed in order
    /// with the packets.
    fn bytes(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            StreamHash::Here(h) => {
                h.update(data);
                Ok(())
            }
            StreamHash::Away { tx, .. } => tx.send((data.to_vec(), 0, None)).map_err(|_| no_hash()),
            StreamHash::Moving => Err(no_hash()),
        }
    }

    /// The hash of each range, in the remote command's hex.
    fn hexes(self) -> io::Result<Vec<String>> {
        match self {
            StreamHash::Here(h) => Ok(h.hexes()),
            StreamHash::Away { tx, done } => {
                drop(tx);
                done.join().map(RangeHashing::hexes).map_err(|_| no_hash())
            }
            StreamHash::Moving => Err(no_hash()),
        }
    }
}

/// A file being written on the server, front to back, with writes of the
/// size the server takes kept outstanding.
pub struct SftpTemp {
    /// The connection it is opened and published through.
    sftp: Sftp,
    /// The connection that carries the others (`--streams N`), which a
    /// large file is also written through once it passes [`STRIPE_FROM`]
    /// (none for a resumed file).
    family: Option<Sftp>,
    /// Its handles on them.
    stripes: Vec<Stripe>,
    /// Open until published or discarded.
    handle: Option<Handle>,
    /// The OPEN, until its answer is needed (a small file is published
    /// without waiting for it).
    opening: Option<Pending>,
    path: Vec<u8>,
    partial: bool,
    /// Bytes sent in write requests.
    sent: u64,
    /// Bytes not sent yet (less than one request).
    buf: Vec<u8>,
    /// Write requests not answered yet, oldest first; a server-side copy
    /// with its offset and bytes, written plainly if the copy falls short;
    /// where each ends.
    writes: VecDeque<(Pending, Option<Copied>, u64)>,
    /// The hash of what was written front to back (`None` once anything is
    /// written elsewhere).
    hashing: Option<StreamHash>,
    /// Where a file larger than one range is hashed on the remote.
    ranges: Option<Ranges>,
    /// Every write below this is answered.
    answered: u64,
    /// The remote's hashes of the ranges asked so far, first to last.
    asked: Vec<verify::Answer>,
}

/// The temporary open through another connection.
enum Stripe {
    Opening(Sftp, Pending),
    Open(Sftp, Handle),
}

impl Stripe {
    fn conn(&self) -> &Sftp {
        match self {
            Stripe::Opening(s, _) | Stripe::Open(s, _) => s,
        }
    }
}

impl SftpTemp {
    /// Opens the temporary through the other connections once the file is
    /// large enough (the first OPEN, answered, made it), and takes in the
    /// answers that came.
    fn stripe(&mut self) -> io::Result<()> {
        let more = match &self.family {
            Some(all) if self.sent >= STRIPE_FROM && all.streams() > 1 + self.stripes.len() => {
                all.beside(&self.sftp, self.stripes.iter().map(Stripe::conn))
            }
            _ => Vec::new(),
        };
        {
            for s in more {
                let p = s.send(wire::OPEN, |p| {
                    wire::put_str(p, &self.path);
                    wire::put_u32(p, wire::OPEN_WRITE);
                    Attrs::default().encode(p);
                })?;
                self.stripes.push(Stripe::Opening(s, p));
            }
        }
        for st in &mut self.stripes {
            if let Stripe::Opening(s, p) = st {
                match answer(p, false)? {
                    None => {}
                    Some(super::wire::Reply::Handle(h)) => *st = Stripe::Open(s.clone(), h),
                    Some(other) => return Err(status_ok(other).err().unwrap_or_else(ended)),
                }
            }
        }
        Ok(())
    }

    /// Where the next write goes: the connection (of this file's) with the
    /// least outstanding.
    fn next_target(&self) -> (&Sftp, &Handle) {
        let mut best = (&self.sftp, self.handle.as_ref().expect("open"));
        let mut load = self.sftp.outstanding();
        for st in &self.stripes {
            if let Stripe::Open(s, h) = st {
                let l = s.outstanding();
                if l < load {
                    (best, load) = ((s, h), l);
                }
            }
        }
        best
    }

    /// Closes the temporary on the other connections (waiting for an open
    /// still outstanding): the answers to wait for.
    fn close_stripes(&mut self) -> io::Result<Vec<Pending>> {
        let mut out = Vec::new();
        for st in std::mem::take(&mut self.stripes) {
            let (s, h) = match st {
                Stripe::Open(s, h) => (s, h),
                Stripe::Opening(s, p) => match s.wait(p)? {
                    super::wire::Reply::Handle(h) => (s, h),
                    other => return Err(status_ok(other).err().unwrap_or_else(ended)),
                },
            };
            out.push(s.send(wire::CLOSE, |p| wire::put_str(p, &h))?);
        }
        Ok(out)
    }

    /// Waits for the OPEN's answer, if it is still outstanding.
    fn resolve(&mut self) -> io::Result<()> {
        if let Some(p) = self.opening.take() {
            match self.sftp.wait(p)? {
                super::wire::Reply::Handle(h) => self.handle = Some(h),
                other => return Err(status_ok(other).err().unwrap_or_else(ended)),
            }
        }
        Ok(())
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.send_data(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Writes `data` next, at the end of what was sent.
    fn send_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.resolve()?;
        self.stripe()?;
        let open = 1 + self
            .stripes
            .iter()
            .filter(|s| matches!(s, Stripe::Open(..)))
            .count();
        if self.writes.len() >= WRITES_IN_FLIGHT * open {
            self.settle_oldest()?;
        }
        let (sftp, h) = self.next_target();
        // (the packet goes back to the connection that sent it)
        let sftp = sftp.clone();
        let (p, packet) = sftp.send_write_keep(h, self.sent, data)?;
        self.sent += data.len() as u64;
        self.writes.push_back((p, None, self.sent));
        match &mut self.hashing {
            Some(hash) => {
                // the data is the packet's tail
                let at = packet.len() - data.len();
                hash.packet(packet, at, self.sent, &sftp)?;
            }
            None => sftp.give_back(packet),
        }
        Ok(())
    }

    /// Waits for the oldest outstanding request's answer.
    fn settle_oldest(&mut self) -> io::Result<()> {
        let Some((p, copied, end)) = self.writes.pop_front() else {
            return Ok(());
        };
        match (self.sftp.expect_ok(p), copied) {
            (Ok(()), _) => {}
            // a copy that met the end of its source (OpenSSH answers EOF
            // when a range ends there) or failed: write the bytes instead
            (Err(_), Some((offset, data))) => {
                let h = self.handle.as_ref().expect("open");
                let p = self.sftp.send_write(h, offset, &data)?;
                self.sftp.expect_ok(p)?;
            }
            (Err(e), None) => return Err(e),
        }
        // (writes are answered in the order sent, on every connection:
        // everything below `end` is written)
        self.answered = end;
        self.ask_ranges()
    }

    /// Asks the remote for each whole range below what is answered, once
    /// more follows it (a file of one range is checked whole, at its
    /// publish): the remote hashes it while the later ranges are written.
    fn ask_ranges(&mut self) -> io::Result<()> {
        let Some(r) = &self.ranges else {
            return Ok(());
        };
        if self.hashing.is_none() {
            return Ok(());
        }
        loop {
            let k = self.asked.len() as u64;
            let to = (k + 1) * r.bytes;
            if self.answered <= to {
                return Ok(());
            }
            let a = ask_range(r, &self.path, k, to)?;
            self.asked.push(a);
            range_pause_hook(self.asked.len());
        }
    }

    /// Sends what is buffered and waits until every write is answered.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()?;
        while !self.writes.is_empty() {
            self.settle_oldest()?;
        }
        Ok(())
    }
}

/// The test hook that makes a range's flush come mid-upload every time:
/// with `FERRY_TEST_HOOKS=1`, `FERRY_TEST_SFTP_RANGE_PAUSE_AT=N` and
/// `FERRY_TEST_SFTP_RANGE_PAUSE_FILE=PATH`, the upload, once it has asked
/// the remote for N ranges, makes `PATH.waiting` and writes nothing more
/// (20 s at most) until PATH exists. Without `FERRY_TEST_HOOKS=1` the
/// other two are never read.
fn range_pause_hook(asked: usize) {
    static PAUSE: crate::fs::pause::PauseHook = crate::fs::pause::PauseHook::new(
        "FERRY_TEST_SFTP_RANGE_PAUSE_AT",
        "FERRY_TEST_SFTP_RANGE_PAUSE_FILE",
    );
    PAUSE.hold_if(|at| at == asked.to_string().as_bytes());
}

impl Drop for SftpTemp {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.sftp.send(wire::CLOSE, |p| wire::put_str(p, &h));
        }
        for st in std::mem::take(&mut self.stripes) {
            if let Stripe::Open(s, h) = st {
                let _ = s.send(wire::CLOSE, |p| wire::put_str(p, &h));
            }
        }
    }
}

impl TempWrite for SftpTemp {
    type Basis = SftpBasis;

    fn len(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }
    fn is_partial(&self) -> bool {
        self.partial
    }
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let step = self.sftp.limits.write;
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= step {
                // a whole request's worth: sent from where it is
                self.send_data(&data[..step])?;
                data = &data[step..];
                continue;
            }
            let n = (step - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == step {
                self.send_buf()?;
            }
        }
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset == self.len() {
            return self.write(data);
        }
        self.flush()?;
        self.resolve()?;
        // (not checked: the ranges asked are dropped unread)
        self.hashing = None;
        self.asked.clear();
        let h = self.handle.as_ref().expect("open");
        let p = self.sftp.send_write(h, offset, data)?;
        self.sftp.expect_ok(p)
    }
    /// Copies on the server where it can (`copy-data`): the bytes were
    /// read back to check them, they need not cross the network again.
    fn append_from(&mut self, from: &SftpBasis, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.sftp.ext.copy_data || data.is_empty() {
            return self.write(data);
        }
        self.send_buf()?;
        if let Some(h) = &mut self.hashing {
            h.bytes(data)?;
        }
        self.resolve()?;
        if self.writes.len() >= WRITES_IN_FLIGHT {
            self.settle_oldest()?;
        }
        let to = self.handle.as_ref().expect("open");
        let p = self
            .sftp
            .send_copy(&from.handle, offset, data.len() as u64, to, self.sent)?;
        let at = self.sent;
        self.sent += data.len() as u64;
        self.writes
            .push_back((p, Some((at, data.to_vec())), self.sent));
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if offset >= self.sent && end <= self.len() {
            let at = (offset - self.sent) as usize;
            buf.copy_from_slice(&self.buf[at..at + buf.len()]);
            return Ok(());
        }
        // (writes before this read are answered first: the server handles
        // requests in order)
        let h = self.handle.as_ref().expect("open");
        let sent = (self.sent.saturating_sub(offset) as usize).min(buf.len());
        self.sftp.read_exact_at(h, &mut buf[..sent], offset)?;
        if sent < buf.len() {
            let rest = buf.len() - sent;
            buf[sent..].copy_from_slice(&self.buf[..rest]);
        }
        Ok(())
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}
