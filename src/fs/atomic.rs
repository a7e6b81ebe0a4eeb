//! `--atomic` trees on the local filesystem: readers of a destination
//! directory (an inference server loading a checkpoint) see the whole old
//! tree or the whole new one, never a mix. The new tree is built beside the
//! old one, in a hidden sibling `.NAME.ferry-atomic`, which starts as a copy
//! of the old tree made of hard links (nothing is copied: an unchanged file
//! stays the same inode; a changed one is written beside and renamed over its
//! link, leaving the old tree's file alone); once it is whole and durable,
//! one `renameat2(RENAME_EXCHANGE)` swaps the two names, and the old tree,
//! now at the sibling's name, is removed or moved to `--backup-dir`.
//!
//! When the destination is a symlink to a directory (`current -> ckpt.7`,
//! as inference servers are often pointed at), the new tree is built as a
//! new hidden directory beside the link's target, `.NAME.ferry-N` (NAME the
//! link's name, N one more than any such name there), the same way; once it
//! is whole and durable, a temporary symlink beside the link
//! (`.NAME.ferry-link`) is made to point at it and renamed over the link (one
//! step on every POSIX filesystem); the old target is then removed or moved
//! to `--backup-dir`. The link keeps its form: only the last component of
//! its text changes (`releases/7` becomes `releases/.current.ferry-1`).
//!
//! Crash safety: until the exchange the destination's name holds the old
//! tree; from it on, the new one. A sibling left by a killed run is removed
//! by the next run before it builds its own. A lock file beside the
//! destination (`.NAME.ferry-atomic.lock`, kept) stops two runs building in
//! the same sibling. In the symlink form the lock file also journals, before
//! the new directory exists, what the run makes and what it replaces, so the
//! next run removes exactly those a killed run left (a `.NAME.ferry-N` not
//! linked, or the replaced target once the link was flipped), and never
//! another link's directories that happen to share the name.
//!
//! Not for deciding what the new tree holds (the receiver does, as for any
//! sync into the sibling), nor for finding the parent directory: the caller
//! resolves it (under a daemon module's handle, without following symlinks)
//! and hands over its handle. Every call here works on directory handles and
//! never follows a symlink.

use crate::error::TransferError;
use crate::fs::dest::{dir_flags, list_at, remove_at};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags, Timestamps};
use rustix::io::Errno;
use std::io;
use std::os::fd::OwnedFd;

/// A new tree being built beside a destination directory, until it is
/// switched in.
pub struct Staged {
    /// The symlink form: the link at `parent`/`name` is flipped to the new
    /// tree instead of exchanging two directories.
    flip: Option<Flip>,
    /// The directory holding the destination and the sibling.
    parent: OwnedFd,
    /// The destination's name in `parent`.
    name: Vec<u8>,
    /// The sibling's name in `parent`.
    sibling: Vec<u8>,
    /// Whether there was an old tree (else the switch is a plain rename).
    had_old: bool,
    /// Where the replaced tree goes (`--backup-dir`): a directory and a
    /// name in it, on the destination's filesystem.
    backup: Option<(OwnedFd, Vec<u8>)>,
    /// The destination as shown in messages.
    shown: String,
    /// Held until the switch is done: one run per destination at a time
    /// (in the symlink form, also the journal).
    lock: OwnedFd,
}

/// The symlink form of [`Staged`]: where the new tree is and what the link
/// will say.
struct Flip {
    /// The directory holding the link's target and the new tree.
    dir: OwnedFd,
    /// The link's target's name in `dir`, when it exists.
    old: Option<Vec<u8>>,
    /// The link's text now.
    text: Vec<u8>,
    /// The link's text once flipped: `text` with its last component `new`.
    new_text: Vec<u8>,
}

/// Finds the directory a link's text names: the directory it is in and its
/// name there. The caller decides how (on this machine, as the kernel
/// resolves the user's path; in a daemon module, beneath the module without
/// following symlinks, refusing a text that leaves it).
pub type Resolve<'a> = dyn FnMut(&[u8]) -> Result<(OwnedFd, Vec<u8>), TransferError> + 'a;

/// The hidden sibling a new tree for `name` is built in.
pub fn sibling_name(name: &[u8]) -> Vec<u8> {
    let mut s = b".".to_vec();
    s.extend_from_slice(&name[..name.len().min(200)]);
    s.extend_from_slice(b".ferry-atomic");
    s
}

fn lock_name(name: &[u8]) -> Vec<u8> {
    let mut s = sibling_name(name);
    s.extend_from_slice(b".lock");
    s
}

/// The temporary symlink renamed over the link `name`.
fn temp_link_name(name: &[u8]) -> Vec<u8> {
    let mut s = b".".to_vec();
    s.extend_from_slice(&name[..name.len().min(200)]);
    s.extend_from_slice(b".ferry-link");
    s
}

/// The prefix of the new trees the symlink form builds for link `name`:
/// `.NAME.ferry-`, followed by a number.
fn flip_prefix(name: &[u8]) -> Vec<u8> {
    let mut s = b".".to_vec();
    s.extend_from_slice(&name[..name.len().min(200)]);
    s.extend_from_slice(b".ferry-");
    s
}

/// The number N of a name `.NAME.ferry-N` the symlink form made for `name`.
fn flip_number(name: &[u8], entry: &[u8]) -> Option<u64> {
    let digits = entry.strip_prefix(flip_prefix(name).as_slice())?;
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A link's text without trailing slashes, split into what comes before its
/// last component and that component; `None` when the last component is no
/// name of its own (`/`, `.`, `..`).
fn split_text(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut t = text;
    while t.len() > 1 && t.ends_with(b"/") {
        t = &t[..t.len() - 1];
    }
    let (prefix, last) = match t.iter().rposition(|&b| b == b'/') {
        Some(i) => (&t[..=i], &t[i + 1..]),
        None => (&t[..0], t),
    };
    if last.is_empty() || last == b"." || last == b".." {
        return None;
    }
    Some((prefix, last))
}

/// Whether `name` in `dir` is a symlink (the destination then takes the
/// symlink form).
pub fn is_symlink(dir: &OwnedFd, name: &[u8]) -> io::Result<bool> {
    Ok(stat_at(dir, name)?.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK))
}

fn local(shown: &str, e: impl Into<io::Error>) -> TransferError {
    TransferError::local(shown.to_string(), &e.into())
}

fn stat_at(dir: &OwnedFd, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_dir(st: &rustix::fs::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Takes the lock beside `name` in `parent`: one run per destination.
fn take_lock(parent: &OwnedFd, name: &[u8], shown: &str) -> Result<OwnedFd, TransferError> {
    let lock = rustix::fs::openat(
        parent,
        lock_name(name).as_slice(),
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| local(shown, e))?;
    match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(lock),
        Err(Errno::WOULDBLOCK) => Err(TransferError::Usage(format!(
            "--atomic: another ferry is building a new tree for {shown}; try again when it is done"
        ))),
        Err(e) => Err(local(shown, e)),
    }
}

/// Refuses a `--backup-dir` that exists already or is on another
/// filesystem than `dev` (the replaced tree is moved there, not copied).
fn check_backup(
    backup: &Option<(OwnedFd, Vec<u8>)>,
    dev: u64,
    shown: &str,
) -> Result<(), TransferError> {
    if let Some((bdir, bname)) = backup {
        if stat_at(bdir, bname).map_err(|e| local(shown, e))?.is_some() {
            return Err(TransferError::Usage(format!(
                "--backup-dir {}: already exists; name a new directory (the replaced tree is moved there whole)",
                crate::fs::names::escape(bname)
            )));
        }
        let st = rustix::fs::fstat(bdir).map_err(|e| local(shown, e))?;
        if st.st_dev != dev {
            return Err(TransferError::Usage(format!(
                "--backup-dir {}: not on the filesystem of {shown} (the replaced tree is moved there, not copied)",
                crate::fs::names::escape(bname)
            )));
        }
    }
    Ok(())
}

/// Prepares a new tree for directory `name` in `parent`: takes the lock,
/// removes a sibling a killed run left, checks that the filesystem can
/// exchange two names in one step, and fills the sibling with hard links to
/// the old tree. `backup` is `--backup-dir`'s directory and name, already
/// resolved by the caller. The receiver then opens the sibling (its name is
/// [`Staged::sibling`]) as its destination.
pub fn stage(
    parent: OwnedFd,
    name: &[u8],
    backup: Option<(OwnedFd, Vec<u8>)>,
    shown: &str,
) -> Result<Staged, TransferError> {
    let sibling = sibling_name(name);
    let lock = take_lock(&parent, name, shown)?;
    let parent_st = rustix::fs::fstat(&parent).map_err(|e| local(shown, e))?;
    let old = stat_at(&parent, name).map_err(|e| local(shown, e))?;
    if let Some(st) = &old {
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} is a symlink; --atomic switches a real directory (name the directory it points to)"
            )));
        }
        if !is_dir(st) {
            return Err(TransferError::Usage(format!(
                "destination {shown} exists and is not a directory"
            )));
        }
        if st.st_dev != parent_st.st_dev {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} is a mount point; the new tree is built beside it, so it must be on the filesystem of the directory above it"
            )));
        }
    }
    check_backup(&backup, parent_st.st_dev, shown)?;
    // what a killed run left: never the destination itself
    if stat_at(&parent, &sibling)
        .map_err(|e| local(shown, e))?
        .is_some()
    {
        remove_at(&parent, &sibling, None).map_err(|e| local(shown, e))?;
    }
    rustix::fs::mkdirat(&parent, sibling.as_slice(), Mode::from_raw_mode(0o700))
        .map_err(|e| local(shown, e))?;
    let staged = Staged {
        flip: None,
        parent,
        name: name.to_vec(),
        sibling,
        had_old: old.is_some(),
        backup,
        shown: shown.to_string(),
        lock,
    };
    let new = rustix::fs::openat(
        &staged.parent,
        staged.sibling.as_slice(),
        dir_flags(),
        Mode::empty(),
    )
    .map_err(|e| local(shown, e))?;
    staged.probe_exchange(&new)?;
    match old {
        Some(st) => {
            let from = rustix::fs::openat(&staged.parent, name, dir_flags(), Mode::empty())
                .map_err(|e| local(shown, e))?;
            clone_tree(&from, &new, st.st_dev).map_err(|e| local(shown, e))?;
            copy_dir_meta(&st, &new).map_err(|e| local(shown, e))?;
        }
        None => {
            let mode = 0o777 & !crate::fs::umask();
            rustix::fs::fchmod(&new, Mode::from_raw_mode(mode)).map_err(|e| local(shown, e))?;
        }
    }
    Ok(staged)
}

/// Prepares a new tree for the symlink `name` in `parent` (the symlink
/// form): takes the lock, removes what the journal says a killed run left,
/// finds the link's target with `resolve`, and makes the new directory
/// `.NAME.ferry-N` beside it, filled with hard links to the old tree (a
/// link whose target does not exist yet gets an empty one). The receiver
/// then opens the new tree (its text, relative to `parent` as the link's, is
/// [`Staged::new_tree`]). `backup` is `--backup-dir`'s directory and name.
pub fn stage_flip(
    parent: OwnedFd,
    name: &[u8],
    resolve: &mut Resolve<'_>,
    backup: Option<(OwnedFd, Vec<u8>)>,
    shown: &str,
) -> Result<Staged, TransferError> {
    let lock = take_lock(&parent, name, shown)?;
    let text = rustix::fs::readlinkat(&parent, name, Vec::new())
        .map_err(|e| local(shown, e))?
        .into_bytes();
    let shown_text = crate::fs::names::escape(&text);
    let (prefix, _) = split_text(&text).ok_or_else(|| {
        TransferError::Usage(format!(
            "--atomic: {shown} is a symlink to {shown_text}, which names no directory of its own to build a new tree beside"
        ))
    })?;
    let prefix = prefix.to_vec();
    let (dir, target) = resolve(&text)?;
    let old = stat_at(&dir, &target).map_err(|e| local(shown, e))?;
    recover(&lock, name, &text, old.as_ref(), resolve, shown)?;
    // a temporary link a killed run left
    match rustix::fs::unlinkat(&parent, temp_link_name(name).as_slice(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(local(shown, e)),
    }
    let dir_st = rustix::fs::fstat(&dir).map_err(|e| local(shown, e))?;
    if let Some(st) = &old {
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} points at {shown_text}, itself a symlink; point {shown} straight at the directory"
            )));
        }
        if !is_dir(st) {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} points at {shown_text}, which is not a directory"
            )));
        }
        if st.st_dev != dir_st.st_dev {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} points at {shown_text}, a mount point; the new tree is built beside it, so it must be on the filesystem of the directory above it"
            )));
        }
    }
    check_backup(&backup, dir_st.st_dev, shown)?;
    // one more than any `.NAME.ferry-N` there: never a name in use
    let n = list_at(&dir)
        .map_err(|e| local(shown, e))?
        .iter()
        .filter_map(|(entry, _)| flip_number(name, entry))
        .max()
        .unwrap_or(0)
        + 1;
    // another link of the same name with its trees in this directory may
    // take N meanwhile (its lock is not ours): then N+1, and so on. The
    // journal names each candidate before it is made and is cleared on any
    // failure, so that it never names a tree another run made.
    let replaced = old.is_some().then(|| text.clone());
    let mut made_new = None;
    for n in n..n + FLIP_TRIES {
        let mut new = flip_prefix(name);
        new.extend_from_slice(n.to_string().as_bytes());
        let new_text = [prefix.as_slice(), &new].concat();
        let mut journal = Journal {
            new: new_text.clone(),
            old: replaced.clone(),
            kept: backup.is_some(),
            made: None,
        };
        let made = write_journal(&lock, &journal).and_then(|()| {
            flip_race_hook(&dir, &new);
            rustix::fs::mkdirat(&dir, new.as_slice(), Mode::from_raw_mode(0o700))
                .map_err(io::Error::from)
        });
        match made {
            Ok(()) => {
                // the journal now says which directory is ours: until it
                // does, a kill leaves a journal the next run removes no new
                // tree by (the name may be another run's, made first)
                let st = rustix::fs::statat(&dir, new.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| local(shown, e))?;
                journal.made = Some((st.st_dev, st.st_ino));
                write_journal(&lock, &journal).map_err(|e| local(shown, e))?;
                made_new = Some((new, new_text));
                break;
            }
            Err(e) => {
                let _ = rustix::fs::ftruncate(&lock, 0);
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(local(shown, e));
                }
            }
        }
    }
    let Some((new, new_text)) = made_new else {
        return Err(TransferError::Usage(format!(
            "--atomic: {FLIP_TRIES} names .{}.ferry-N beside {shown_text} were taken while {shown} was being staged; try again",
            crate::fs::names::escape(name)
        )));
    };
    let made = rustix::fs::openat(&dir, new.as_slice(), dir_flags(), Mode::empty())
        .map_err(|e| local(shown, e))?;
    match &old {
        Some(st) => {
            let from = rustix::fs::openat(&dir, target.as_slice(), dir_flags(), Mode::empty())
                .map_err(|e| local(shown, e))?;
            clone_tree(&from, &made, st.st_dev).map_err(|e| local(shown, e))?;
            copy_dir_meta(st, &made).map_err(|e| local(shown, e))?;
        }
        None => {
            let mode = 0o777 & !crate::fs::umask();
            rustix::fs::fchmod(&made, Mode::from_raw_mode(mode)).map_err(|e| local(shown, e))?;
        }
    }
    Ok(Staged {
        flip: Some(Flip {
            dir,
            old: old.is_some().then_some(target),
            text,
            new_text,
        }),
        parent,
        name: name.to_vec(),
        sibling: sibling_name(name),
        had_old: old.is_some(),
        backup,
        shown: shown.to_string(),
        lock,
    })
}

/// What a symlink-form run makes and replaces, written to the lock file
/// (durably) before it makes anything, so that the next run can remove what
/// a kill left behind.
#[derive(Debug, PartialEq)]
struct Journal {
    /// The link's text once flipped (the new tree).
    new: Vec<u8>,
    /// The link's text before (the tree replaced), when it existed.
    old: Option<Vec<u8>>,
    /// Whether the replaced tree was to be kept (`--backup-dir`): then it is
    /// never removed, only left where it was.
    kept: bool,
    /// The new tree's device and inode, once this run made it. A journal
    /// without them names a tree that may be another run's (written before
    /// the name was taken, which another link's run may do first): the next
    /// run removes no new tree by it.
    made: Option<(u64, u64)>,
}

/// A journal of this form ends with the new tree's identity (`DEV:INO`, or
/// nothing before the run made it).
const JOURNAL_MAGIC: &[u8] = b"ferry-flip-2";
/// The form before the identity: read, and no new tree removed by it.
const JOURNAL_MAGIC_1: &[u8] = b"ferry-flip-1";

fn write_journal(lock: &OwnedFd, j: &Journal) -> io::Result<()> {
    // NUL never occurs in a link's text
    let mut body = JOURNAL_MAGIC.to_vec();
    body.push(0);
    body.extend_from_slice(&j.new);
    body.push(0);
    body.push(if j.kept { b'k' } else { b'r' });
    body.extend_from_slice(j.old.as_deref().unwrap_or_default());
    body.push(if j.old.is_some() { 0 } else { b'-' });
    if j.old.is_none() {
        body.push(0);
    }
    if let Some((dev, ino)) = j.made {
        body.extend_from_slice(format!("{dev}:{ino}").as_bytes());
    }
    body.push(0);
    rustix::fs::ftruncate(lock, 0)?;
    let mut at = 0;
    while at < body.len() {
        at += rustix::io::pwrite(lock, &body[at..], at as u64)?;
    }
    rustix::fs::fdatasync(lock)?;
    Ok(())
}

fn read_journal(lock: &OwnedFd) -> io::Result<Option<Journal>> {
    let mut body = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        let n = rustix::io::pread(lock, &mut body[len..], len as u64)?;
        if n == 0 || len + n == body.len() {
            len += n;
            break;
        }
        len += n;
    }
    body.truncate(len);
    let mut parts = body.split(|&b| b == 0);
    let v2 = match parts.next() {
        Some(JOURNAL_MAGIC) => true,
        Some(JOURNAL_MAGIC_1) => false,
        _ => return Ok(None),
    };
    let (Some(new), Some(rest)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (kept, old) = match rest.split_first() {
        Some((b'k', old)) => (true, old),
        Some((b'r', old)) => (false, old),
        _ => return Ok(None),
    };
    // (the first form ends a named old tree with a NUL, and "-" with
    // nothing; the second puts the identity and a NUL after either)
    let old = match old {
        b"-" => None,
        o if !o.is_empty() && (v2 || parts.next() == Some(&b""[..])) => Some(o.to_vec()),
        _ => return Ok(None),
    };
    let made = if v2 {
        let (Some(id), Some(b""), None) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        match id {
            b"" => None,
            id => {
                let text = std::str::from_utf8(id).ok();
                let id = text
                    .and_then(|t| t.split_once(':'))
                    .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)));
                match id {
                    Some(id) => Some(id),
                    None => return Ok(None),
                }
            }
        }
    } else {
        None
    };
    Ok(Some(Journal {
        new: new.to_vec(),
        old,
        kept,
        made,
    }))
}

/// Removes what the run the journal describes left, if it was killed: its
/// new tree when the link does not point at it (never flipped), or the tree
/// it replaced when the link does (flipped, then killed before removing it;
/// unless it was to be kept). The link now says `text`, naming `current`.
fn recover(
    lock: &OwnedFd,
    name: &[u8],
    text: &[u8],
    current: Option<&rustix::fs::Stat>,
    resolve: &mut Resolve<'_>,
    shown: &str,
) -> Result<(), TransferError> {
    let Some(j) = read_journal(lock).map_err(|e| local(shown, e))? else {
        return Ok(());
    };
    if let Some(why) = untrusted(lock, name, text, &j).map_err(|e| local(shown, e))? {
        // one warning line (in the daemon's log; the library prints nothing)
        tracing::warn!(
            "--atomic: ignoring the journal in {} ({why}); nothing it names is removed",
            crate::fs::names::escape(&lock_name(name))
        );
        rustix::fs::ftruncate(lock, 0).map_err(|e| local(shown, e))?;
        return Ok(());
    }
    let same = |a: &rustix::fs::Stat, b: Option<&rustix::fs::Stat>| {
        b.is_some_and(|b| a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    };
    let trimmed = |t: &[u8]| split_text(t).map(|(p, l)| [p, l].concat());
    let flipped = trimmed(&j.new).is_some() && trimmed(&j.new) == trimmed(text);
    let mut leftovers = Vec::new();
    if !flipped {
        // a new tree only if the journal says this run made it, and it is
        // still that directory
        if let Some(made) = j.made {
            leftovers.push((j.new, Some(made)));
        }
    } else if let (Some(old), false) = (j.old, j.kept) {
        leftovers.push((old, None));
    }
    for (left, made) in leftovers {
        // only what resolves as it did (a text now outside a module is left)
        let Ok((dir, entry)) = resolve(&left) else {
            continue;
        };
        let Some(st) = stat_at(&dir, &entry).map_err(|e| local(shown, e))? else {
            continue;
        };
        // never what the link points at now, never anything but a directory,
        // and a new tree only by the name this form gives it
        if same(&st, current) || !is_dir(&st) || (!flipped && flip_number(name, &entry).is_none()) {
            continue;
        }
        if made.is_some_and(|id| id != (st.st_dev, st.st_ino)) {
            continue;
        }
        remove_at(&dir, &entry, None).map_err(|e| local(shown, e))?;
        rustix::fs::fsync(&dir).map_err(|e| local(shown, e))?;
    }
    rustix::fs::ftruncate(lock, 0).map_err(|e| local(shown, e))?;
    Ok(())
}

/// How many names `.NAME.ferry-N` a run tries when others take them first.
const FLIP_TRIES: u64 = 64;

/// Why the journal must not be acted on, if so: a lock file anyone but this
/// user could have written (another user who can write the link's directory
/// may plant one), or a journal naming anything but what this form makes
/// for this link: a new tree `.NAME.ferry-N` and the tree it replaced, both
/// beside the link's current target (every tree a run of this link makes is
/// beside the target it replaces).
fn untrusted(
    lock: &OwnedFd,
    name: &[u8],
    text: &[u8],
    j: &Journal,
) -> io::Result<Option<&'static str>> {
    let st = rustix::fs::fstat(lock)?;
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return Ok(Some("the lock file is owned by another user"));
    }
    if st.st_mode & 0o022 != 0 {
        return Ok(Some("the lock file is writable by group or others"));
    }
    let Some((dir_now, _)) = split_text(text) else {
        return Ok(Some("the link names no directory"));
    };
    match split_text(&j.new) {
        Some((dir, last)) if dir == dir_now && flip_number(name, last).is_some() => {}
        _ => {
            return Ok(Some(
                "its new tree is not a .NAME.ferry-N beside the link's target",
            ))
        }
    }
    if let Some(old) = &j.old {
        match split_text(old) {
            Some((dir, _)) if dir == dir_now => {}
            _ => return Ok(Some("its replaced tree is not beside the link's target")),
        }
    }
    Ok(None)
}

/// The test hook for two links of one name racing for a new tree's name:
/// with `FERRY_TEST_HOOKS=1` and `FERRY_TEST_FLIP_RACE=1`, just before the
/// symlink form makes `.NAME.ferry-N`, a directory of that name is made (as
/// another link's run would), holding a file `taken`, once per run; with
/// `FERRY_TEST_FLIP_RACE=kill` the run then exits at once. Without
/// `FERRY_TEST_HOOKS=1` the second variable is never read.
fn flip_race_hook(dir: &OwnedFd, new: &[u8]) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
        return;
    }
    // `kill`: the run then ends at once, as if killed before it learnt
    // that the name was taken
    let kill = match std::env::var("FERRY_TEST_FLIP_RACE").ok().as_deref() {
        Some("1") => false,
        Some("kill") => true,
        _ => return,
    };
    ONCE.call_once(|| {
        if rustix::fs::mkdirat(dir, new, Mode::from_raw_mode(0o755)).is_ok() {
            if let Ok(d) = rustix::fs::openat(dir, new, dir_flags(), Mode::empty()) {
                let _ = rustix::fs::openat(
                    &d,
                    "taken",
                    OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                );
            }
        }
        if kill {
            std::process::exit(137);
        }
    });
}

/// The test hook for a kill after the switch: with `FERRY_TEST_HOOKS=1`,
/// `FERRY_TEST_AFTER_SWITCH_MS=N` holds the run N ms once the new tree is
/// in place and durable, before the old one is removed, so that a test can
/// see the switch and kill the run in that window every time. Without
/// `FERRY_TEST_HOOKS=1` the second variable is never read.
fn after_switch_hook() {
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
        return;
    }
    if let Some(ms) = std::env::var("FERRY_TEST_AFTER_SWITCH_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

impl Staged {
    /// The sibling's name in the destination's parent directory.
    pub fn sibling(&self) -> &[u8] {
        &self.sibling
    }

    /// Where the new tree is, relative to the destination's parent
    /// directory (or absolute): the sibling's name, or in the symlink form
    /// the link's text once flipped.
    pub fn new_tree(&self) -> &[u8] {
        match &self.flip {
            Some(f) => &f.new_text,
            None => &self.sibling,
        }
    }

    /// Fails early, before anything is transferred, where the filesystem
    /// cannot exchange two names (`EINVAL`/`ENOSYS`/`EOPNOTSUPP` from
    /// `renameat2`): two empty directories in the sibling are swapped.
    fn probe_exchange(&self, new: &OwnedFd) -> Result<(), TransferError> {
        let (a, b) = (&b".ferry-exchange-a"[..], &b".ferry-exchange-b"[..]);
        for n in [a, b] {
            rustix::fs::mkdirat(new, n, Mode::from_raw_mode(0o700))
                .map_err(|e| local(&self.shown, e))?;
        }
        let swapped = if no_exchange_hook() {
            Err(Errno::INVAL)
        } else {
            rustix::fs::renameat_with(new, a, new, b, RenameFlags::EXCHANGE)
        };
        for n in [a, b] {
            let _ = rustix::fs::unlinkat(new, n, AtFlags::REMOVEDIR);
        }
        match swapped {
            Ok(()) => Ok(()),
            Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)) => {
                let _ = remove_at(&self.parent, &self.sibling, None);
                let mut d = self.shown.as_str();
                while d.len() > 1 && d.ends_with('/') {
                    d = &d[..d.len() - 1];
                }
                Err(TransferError::Usage(format!(
                    "--atomic: the filesystem of {} cannot swap two directories in one step (renameat2 RENAME_EXCHANGE: {}); convert it to a symlink (mv {d} {d}.1 && ln -s {d}.1 {d}) and --atomic flips the link in one rename",
                    self.shown,
                    io::Error::from(e)
                )))
            }
            Err(e) => Err(local(&self.shown, e)),
        }
    }

    /// Puts the new tree (durable already: the receiver synced it) at the
    /// destination's name in one step, makes that durable, then removes the
    /// old tree or moves it to the backup directory.
    pub fn switch(self) -> Result<(), TransferError> {
        if self.flip.is_some() {
            return self.flip();
        }
        let shown = &self.shown;
        let p = &self.parent;
        let how = if self.had_old {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(p, self.sibling.as_slice(), p, self.name.as_slice(), how)
            .map_err(|e| local(shown, e))?;
        rustix::fs::fsync(p).map_err(|e| local(shown, e))?;
        after_switch_hook();
        if !self.had_old {
            return Ok(());
        }
        let left = || {
            format!(
                "{shown}: the new tree is in place; the old one is left at {}",
                crate::fs::names::escape(&self.sibling)
            )
        };
        match &self.backup {
            Some((bdir, bname)) => {
                rustix::fs::renameat_with(
                    p,
                    self.sibling.as_slice(),
                    bdir,
                    bname.as_slice(),
                    RenameFlags::NOREPLACE,
                )
                .map_err(|e| local(&left(), e))?;
                rustix::fs::fsync(bdir).map_err(|e| local(shown, e))?;
            }
            None => remove_at(p, &self.sibling, None).map_err(|e| local(&left(), e))?,
        }
        Ok(())
    }
}

impl Staged {
    /// The symlink form of [`Staged::switch`]: the new tree's entry made
    /// durable, a temporary link to it renamed over the link (checked first
    /// to still say what it said), the link's directory made durable, then
    /// the old target removed or moved to the backup directory.
    fn flip(self) -> Result<(), TransferError> {
        let shown = &self.shown;
        let Some(f) = &self.flip else {
            unreachable!("the symlink form");
        };
        let p = &self.parent;
        rustix::fs::fsync(&f.dir).map_err(|e| local(shown, e))?;
        let now = rustix::fs::readlinkat(p, self.name.as_slice(), Vec::new())
            .map_err(|e| local(shown, e))?;
        if now.as_bytes() != f.text.as_slice() {
            return Err(TransferError::Usage(format!(
                "--atomic: {shown} was changed by someone else during the run (it points at {} now); not switched",
                crate::fs::names::escape(now.as_bytes())
            )));
        }
        let temp = temp_link_name(&self.name);
        match rustix::fs::unlinkat(p, temp.as_slice(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(local(shown, e)),
        }
        rustix::fs::symlinkat(f.new_text.as_slice(), p, temp.as_slice())
            .map_err(|e| local(shown, e))?;
        if let Err(e) = rustix::fs::renameat(p, temp.as_slice(), p, self.name.as_slice()) {
            let _ = rustix::fs::unlinkat(p, temp.as_slice(), AtFlags::empty());
            return Err(local(shown, e));
        }
        rustix::fs::fsync(p).map_err(|e| local(shown, e))?;
        after_switch_hook();
        if let Some(old) = &f.old {
            let left = || {
                format!(
                    "{shown}: the link points at the new tree; the old one is left at {}",
                    crate::fs::names::escape(&f.text)
                )
            };
            match &self.backup {
                Some((bdir, bname)) => {
                    rustix::fs::renameat_with(
                        &f.dir,
                        old.as_slice(),
                        bdir,
                        bname.as_slice(),
                        RenameFlags::NOREPLACE,
                    )
                    .map_err(|e| local(&left(), e))?;
                    rustix::fs::fsync(bdir).map_err(|e| local(shown, e))?;
                }
                None => remove_at(&f.dir, old, None).map_err(|e| local(&left(), e))?,
            }
        }
        // done: nothing for the next run to clean
        rustix::fs::ftruncate(&self.lock, 0).map_err(|e| local(shown, e))?;
        Ok(())
    }
}

/// The test hook for a filesystem without `RENAME_EXCHANGE`: with
/// `FERRY_TEST_HOOKS=1` and `FERRY_TEST_NO_EXCHANGE=1` the probe reports it
/// unsupported (as NFS and some FUSE filesystems do). Without
/// `FERRY_TEST_HOOKS=1` the second variable is never read.
fn no_exchange_hook() -> bool {
    std::env::var("FERRY_TEST_HOOKS").ok().as_deref() == Some("1")
        && std::env::var("FERRY_TEST_NO_EXCHANGE").ok().as_deref() == Some("1")
}

/// Fills directory `to` with what directory `from` holds: a directory for
/// each directory (with its mode, owner and times), a hard link for
/// everything else (files, symlinks, devices), never following a symlink and
/// never crossing into another filesystem (`dev`: a mount point inside the
/// tree cannot be linked from, so it is refused).
fn clone_tree(from: &OwnedFd, to: &OwnedFd, dev: u64) -> io::Result<()> {
    for (child, _) in list_at(from)? {
        let Some(st) = stat_at(from, &child)? else {
            continue; // gone meanwhile
        };
        if is_dir(&st) {
            if st.st_dev != dev {
                return Err(io::Error::other(format!(
                    "{} is a mount point inside the destination; --atomic cannot link across it",
                    crate::fs::names::escape(&child)
                )));
            }
            rustix::fs::mkdirat(to, child.as_slice(), Mode::from_raw_mode(0o700))?;
            let f = rustix::fs::openat(from, child.as_slice(), dir_flags(), Mode::empty())?;
            let t = rustix::fs::openat(to, child.as_slice(), dir_flags(), Mode::empty())?;
            clone_tree(&f, &t, dev)?;
            copy_dir_meta(&st, &t)?;
        } else {
            rustix::fs::linkat(
                from,
                child.as_slice(),
                to,
                child.as_slice(),
                AtFlags::empty(),
            )?;
        }
    }
    Ok(())
}

/// Gives directory `to` the mode, owner (where this process may) and times
/// of `st`, once its entries are in (adding them changes its mtime).
fn copy_dir_meta(st: &rustix::fs::Stat, to: &OwnedFd) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let uid = rustix::process::Uid::from_raw(st.st_uid);
        let gid = rustix::process::Gid::from_raw(st.st_gid);
        rustix::fs::fchown(to, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(to, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let ts = |sec: i64, nsec: u64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: ts(st.st_atime, st.st_atime_nsec),
        last_modification: ts(st.st_mtime, st.st_mtime_nsec),
    };
    rustix::fs::futimens(to, &times)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

    fn open_dir(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, dir_flags(), Mode::empty()).unwrap()
    }

    #[test]
    fn a_switch_exchanges_the_trees_and_shares_unchanged_files() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        std::fs::write(dest.join("sub/a"), b"old a").unwrap();
        std::fs::write(dest.join("b"), b"old b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dest.join("l")).unwrap();
        let staged = stage(open_dir(t.path()), b"d", None, "d").unwrap();
        let new = t.path().join(".d.ferry-atomic");
        assert_eq!(
            std::fs::metadata(new.join("sub/a")).unwrap().ino(),
            std::fs::metadata(dest.join("sub/a")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(new.join("l")).unwrap(),
            std::path::Path::new("/etc/passwd")
        );
        // a changed file is replaced, not written through its link
        std::fs::write(new.join("b.tmp"), b"new b").unwrap();
        std::fs::rename(new.join("b.tmp"), new.join("b")).unwrap();
        staged.switch().unwrap();
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"new b");
        assert_eq!(std::fs::read(dest.join("sub/a")).unwrap(), b"old a");
        assert!(!new.exists(), "the old tree is removed");
    }

    #[test]
    fn a_leftover_sibling_is_removed_and_a_symlinked_destination_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(".d.ferry-atomic/junk")).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let staged = stage(open_dir(t.path()), b"d", None, "d").unwrap();
        assert!(!t.path().join(".d.ferry-atomic/junk").exists());
        drop(staged);
        std::os::unix::fs::symlink("d", t.path().join("l")).unwrap();
        let e = stage(open_dir(t.path()), b"l", None, "l").err().unwrap();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }

    #[test]
    fn a_link_text_keeps_its_form_and_the_journal_round_trips() {
        assert_eq!(
            split_text(b"releases/7/"),
            Some((&b"releases/"[..], &b"7"[..]))
        );
        assert_eq!(split_text(b"/ckpt/7"), Some((&b"/ckpt/"[..], &b"7"[..])));
        assert_eq!(split_text(b"7"), Some((&b""[..], &b"7"[..])));
        assert_eq!(split_text(b"/"), None);
        assert_eq!(split_text(b"a/.."), None);
        assert_eq!(flip_number(b"cur", b".cur.ferry-12"), Some(12));
        assert_eq!(flip_number(b"cur", b".cur.ferry-atomic"), None);
        assert_eq!(flip_number(b"cur", b".other.ferry-1"), None);
        let t = tempfile::tempdir().unwrap();
        let lock = take_lock(&open_dir(t.path()), b"cur", "cur").unwrap();
        assert_eq!(read_journal(&lock).unwrap(), None, "an empty lock file");
        for j in [
            Journal {
                new: b"r/.cur.ferry-2".to_vec(),
                old: Some(b"r/7".to_vec()),
                kept: false,
                made: Some((2049, 1234567)),
            },
            Journal {
                new: b"/abs/.cur.ferry-1".to_vec(),
                old: None,
                kept: true,
                made: None,
            },
            Journal {
                new: b"r/.cur.ferry-3".to_vec(),
                old: None,
                kept: false,
                made: Some((1, 2)),
            },
        ] {
            write_journal(&lock, &j).unwrap();
            assert_eq!(read_journal(&lock).unwrap(), Some(j));
        }
        // a journal an older ferry wrote is read, without an identity (so
        // no new tree is removed by it)
        for (body, old) in [
            (
                &b"ferry-flip-1\0r/.cur.ferry-2\0rr/7\0"[..],
                Some(b"r/7".to_vec()),
            ),
            (&b"ferry-flip-1\0r/.cur.ferry-2\0r-"[..], None),
        ] {
            rustix::fs::ftruncate(&lock, 0).unwrap();
            rustix::io::pwrite(&lock, body, 0).unwrap();
            let j = read_journal(&lock).unwrap().expect("read");
            assert_eq!((j.old, j.made), (old, None));
        }
    }

    #[test]
    fn a_killed_flip_is_cleaned_by_the_next_run() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("r/7")).unwrap();
        std::fs::write(t.path().join("r/7/a"), b"a").unwrap();
        std::os::unix::fs::symlink("r/7", t.path().join("cur")).unwrap();
        let root = t.path().to_path_buf();
        let mut resolve = |text: &[u8]| -> Result<(OwnedFd, Vec<u8>), TransferError> {
            let p = root.join(std::ffi::OsStr::from_bytes(text));
            let dir = open_dir(p.parent().unwrap());
            Ok((dir, p.file_name().unwrap().as_bytes().to_vec()))
        };
        // killed while building: the next run removes the unlinked tree
        let staged = stage_flip(open_dir(t.path()), b"cur", &mut resolve, None, "cur").unwrap();
        assert_eq!(staged.new_tree(), b"r/.cur.ferry-1");
        drop(staged);
        // another link's tree of the same name is never touched
        std::fs::create_dir(t.path().join("r/.cur.ferry-5")).unwrap();
        let staged = stage_flip(open_dir(t.path()), b"cur", &mut resolve, None, "cur").unwrap();
        assert!(!t.path().join("r/.cur.ferry-1").exists());
        assert_eq!(staged.new_tree(), b"r/.cur.ferry-6");
        staged.switch().unwrap();
        assert_eq!(
            std::fs::read_link(t.path().join("cur")).unwrap(),
            std::path::Path::new("r/.cur.ferry-6")
        );
        assert_eq!(std::fs::read(t.path().join("cur/a")).unwrap(), b"a");
        assert!(!t.path().join("r/7").exists());
        assert!(t.path().join("r/.cur.ferry-5").exists());
    }
}
