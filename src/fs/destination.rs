//! The local filesystem as a [`Destination`]: [`Dest`] (a destination
//! directory held open) with [`TempFile`]s and plain [`File`]s as bases, and
//! [`LocalPlace`], which opens it from a path the user named or inside a
//! daemon module. Only delegation lives here: what keeps names safe and
//! files atomic is in [`crate::fs::dest`].

use crate::error::TransferError;
use crate::fs::dest::{close_later, Dest, ExistingKind, TempFile};
use crate::fs::names;
use crate::store::destination::{
    BasisFile, Caps, Destination, Existing, Meta, MetaOf, Place, PublishHow, Space, TempHow,
    TempWrite,
};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Destination for Dest {
    type Basis = File;
    type Temp = TempFile;

    fn caps(&self) -> Caps {
        Caps {
            rebuild: true,
            write_at: true,
            share_blocks: true,
        }
    }
    fn show(&self, rel: &[u8]) -> String {
        Dest::show(self, rel)
    }
    fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>> {
        Dest::stat(self, rel)
    }
    fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>> {
        Dest::list(self, rel)
    }
    fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        Dest::mkdir(self, rel, mode)
    }
    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        Dest::symlink(self, rel, target)
    }
    fn readlink(&mut self, rel: &[u8]) -> io::Result<Vec<u8>> {
        Dest::readlink(self, rel)
    }
    fn hardlink(&mut self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        Dest::hardlink(self, existing, rel)
    }
    fn hardlink_from(&mut self, other: &mut Dest, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        let (eparent, ename) = names::split_parent(existing);
        let edir = other.dir(eparent)?;
        let (parent, name) = names::split_parent(rel);
        let dir = self.dir(parent)?;
        // under a temporary name, then renamed over whatever is there
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(&name[..name.len().min(200)]);
        tmp.extend_from_slice(format!(".ferry-link-{}", std::process::id()).as_bytes());
        let _ = rustix::fs::unlinkat(&*dir, tmp.as_slice(), rustix::fs::AtFlags::empty());
        rustix::fs::linkat(
            &*edir,
            ename,
            &*dir,
            tmp.as_slice(),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(io::Error::from)?;
        rustix::fs::renameat(&*dir, tmp.as_slice(), &*dir, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&*dir, tmp.as_slice(), rustix::fs::AtFlags::empty());
            io::Error::from(e)
        })
    }
    fn same_file(&mut self, a: &[u8], b: &[u8]) -> io::Result<bool> {
        Dest::same_file(self, a, b)
    }
    fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        Dest::remove(self, rel, backup)
    }
    fn set_meta(&mut self, rel: &[u8], of: MetaOf, meta: &Meta) -> io::Result<()> {
        match of {
            MetaOf::File => self.set_file_meta(rel, meta),
            MetaOf::Dir => self.set_dir_meta(rel, meta),
            MetaOf::Link => self.set_link_meta(rel, meta),
        }
    }
    fn open_basis(&mut self, rel: &[u8]) -> io::Result<File> {
        self.open_file(rel)
    }
    fn open_partial(&mut self, rel: &[u8]) -> Option<File> {
        Dest::open_partial(self, rel)
    }
    fn create_temp(&mut self, rel: &[u8], how: TempHow) -> io::Result<TempFile> {
        if how.in_place {
            return Dest::open_in_place(self, rel, how.sparse);
        }
        Dest::create_temp(self, rel, how.partial, how.sparse, how.unnamed)
    }
    fn publish(
        &mut self,
        mut temp: TempFile,
        rel: &[u8],
        meta: &Meta,
        how: PublishHow<'_>,
    ) -> io::Result<()> {
        temp.finish(meta, how.fsync)?;
        Dest::publish(self, temp, rel, how.backup)
    }
    fn discard(&mut self, temp: TempFile) {
        Dest::discard(self, temp)
    }
    fn spill_dir(&mut self, rel: &[u8]) -> Option<Arc<OwnedFd>> {
        self.dir(rel).ok()
    }
    fn tidy_dir(&mut self, dir: &[u8]) {
        self.remove_partial_dir(dir)
    }
    fn space(&self) -> Space {
        Space {
            free_bytes: self.free_space().unwrap_or(0),
            out_of_inodes: self.out_of_inodes(),
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        Dest::sync_all(self)
    }
    fn keep_dirlinks(&mut self) -> bool {
        Dest::keep_dirlinks(self);
        true
    }
    fn sync_in_background(&mut self) {
        Dest::sync_in_background(self)
    }
    fn let_go(&mut self, bases: Vec<File>) {
        close_later(bases)
    }
}

impl BasisFile for File {
    fn len(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

impl TempWrite for TempFile {
    type Basis = File;

    fn len(&self) -> u64 {
        TempFile::len(self)
    }
    fn is_partial(&self) -> bool {
        self.partial
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        TempFile::write(self, data)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        TempFile::write_at(self, offset, data)
    }
    fn hole(&mut self, len: u64) -> io::Result<()> {
        TempFile::hole(self, len);
        Ok(())
    }
    fn append_from(&mut self, from: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        TempFile::append_from(self, from, offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        TempFile::read_at(self, offset, buf)
    }
    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// A local destination before it is opened: a path on this machine, or a
/// path inside a daemon module (`beneath`), resolved without following
/// symlinks.
pub struct LocalPlace {
    beneath: Option<PathBuf>,
    /// The module root, once opened to look at the destination.
    module: Option<Dest>,
    /// `--atomic`: the new tree being built beside the destination.
    staged: Option<crate::fs::atomic::Staged>,
}

impl LocalPlace {
    pub fn new(beneath: Option<PathBuf>) -> Self {
        LocalPlace {
            beneath,
            module: None,
            staged: None,
        }
    }

    /// The module root, opened the first time it is needed; `None` when
    /// the destination is not beneath a module.
    fn module(&mut self) -> Result<Option<&mut Dest>, TransferError> {
        let Some(root) = &self.beneath else {
            return Ok(None);
        };
        if self.module.is_none() {
            // messages name paths relative to the module, never its
            // server-side path
            let m = Dest::open(root, false)
                .map_err(|e| TransferError::local("the module's directory".to_string(), &e))?
                .shown_relative();
            self.module = Some(m);
        }
        Ok(self.module.as_mut())
    }
}

/// `dir` taken from `root` (both relative to a module), with `.` and `..`
/// resolved by name: `None` when it is absolute or climbs out of the module.
fn inside_module(root: &[u8], dir: &[u8]) -> Option<Vec<u8>> {
    if dir.starts_with(b"/") {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in root.split(|&b| b == b'/').chain(dir.split(|&b| b == b'/')) {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(if parts.is_empty() {
        b".".to_vec()
    } else {
        parts.join(&b'/')
    })
}

/// `dir` taken from `root` (paths on this machine), `.` and `..` resolved by
/// name, so that the result does not depend on `root` existing yet.
fn lexically_from(root: &[u8], dir: &[u8]) -> Vec<u8> {
    let absolute = dir.starts_with(b"/") || root.starts_with(b"/");
    let mut parts: Vec<&[u8]> = Vec::new();
    let start: &[u8] = if dir.starts_with(b"/") { b"" } else { root };
    for c in start.split(|&b| b == b'/').chain(dir.split(|&b| b == b'/')) {
        match c {
            b"" | b"." => {}
            b".." if parts.last().is_some_and(|p| *p != b"..") => {
                parts.pop();
            }
            b".." if absolute => {}
            c => parts.push(c),
        }
    }
    let joined = parts.join(&b'/');
    match (absolute, joined.is_empty()) {
        (true, _) => [b"/".as_slice(), &joined].concat(),
        (false, true) => b".".to_vec(),
        (false, false) => joined,
    }
}

/// A directory on this machine, opened by the user's own path (through
/// symlinks, as the kernel resolves them).
fn open_dir_path(path: &[u8], shown: &str) -> Result<OwnedFd, TransferError> {
    let path = if path.is_empty() {
        b".".as_slice()
    } else {
        path
    };
    rustix::fs::open(
        std::ffi::OsStr::from_bytes(path),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| TransferError::local(shown.to_string(), &io::Error::from(e)))
}

/// The last component of `path` when it names an entry of its own (not
/// `.`, `..` or the filesystem's root), with the directory it is in.
fn named(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let (parent, name) = names::split_parent(path);
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    let parent: &[u8] = if parent.is_empty() {
        if path.starts_with(b"/") {
            b"/"
        } else {
            b"."
        }
    } else {
        parent
    };
    Some((parent, name))
}

/// A symlink's `text` read from directory `dir` (paths on this machine):
/// absolute as it is, relative taken from `dir`.
fn text_from(dir: &[u8], text: &[u8]) -> Vec<u8> {
    if text.starts_with(b"/") {
        text.to_vec()
    } else {
        names::join(dir, text)
    }
}

/// A symlink's `text` read from directory `dir` of a module, as a
/// module-relative name, `..` taken lexically: `None` when it leaves the
/// module. An absolute text counts when it lies under one of `roots` (the
/// module's path as configured and as resolved).
fn module_text(dir: &[u8], text: &[u8], roots: &[Vec<u8>]) -> Option<Vec<u8>> {
    if !text.starts_with(b"/") {
        return inside_module(in_module(dir), text);
    }
    let abs = lexically_from(b"/", text);
    roots.iter().find_map(|r| {
        let rest = abs.strip_prefix(r.as_slice())?;
        let rest = if r.as_slice() == b"/" {
            rest
        } else if rest.is_empty() {
            b"."
        } else {
            rest.strip_prefix(b"/")?
        };
        inside_module(b".", rest)
    })
}

/// Whether `text` has a `..` after a name (`a/../b`): taken lexically it may
/// name another directory than the kernel finds through a symlink `a`.
fn climbs_after_a_name(text: &[u8]) -> bool {
    let mut named = false;
    for c in text.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if named => return true,
            b".." => {}
            _ => named = true,
        }
    }
    false
}

/// The module-relative name of `path` (`.` for the module root).
fn in_module(path: &[u8]) -> &[u8] {
    if path.is_empty() || path == b"/" {
        b"."
    } else {
        path
    }
}

impl Place for LocalPlace {
    type Dest = Dest;

    /// # Security
    /// Beneath a daemon module `dir` is resolved by name from the
    /// destination, `..` taken lexically, and refused unless it stays inside
    /// the module; it is then opened through the module's handle without
    /// following symlinks. Elsewhere it is the user's own path (relative to
    /// the destination, through symlinks as the kernel resolves them).
    fn open_basis_dir(
        &mut self,
        root: &[u8],
        dir: &[u8],
        flag: &str,
    ) -> Result<Option<Dest>, TransferError> {
        let shown = names::escape(dir);
        let Some(m) = self.module()? else {
            let path = if dir.starts_with(b"/") {
                PathBuf::from(std::ffi::OsStr::from_bytes(dir))
            } else {
                Path::new(std::ffi::OsStr::from_bytes(root)).join(std::ffi::OsStr::from_bytes(dir))
            };
            return match Dest::open(&path, false) {
                Ok(d) => Ok(Some(d)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(TransferError::Usage(format!("{flag} {shown}: {e}"))),
            };
        };
        let rel = inside_module(in_module(root), dir).ok_or_else(|| {
            TransferError::Usage(format!(
                "{flag} {shown}: outside the module (it must stay inside it, relative to the destination)"
            ))
        })?;
        names::check(&rel).map_err(|e| TransferError::Usage(format!("{flag} {shown}: {e}")))?;
        match m.stat(&rel) {
            Ok(Some(x)) if x.kind == ExistingKind::Dir => {}
            Ok(None) => return Ok(None),
            Ok(Some(x)) if x.kind == ExistingKind::Symlink => {
                return Err(TransferError::Usage(format!(
                    "{flag} {shown}: a symlink, not followed inside a module"
                )))
            }
            Ok(Some(_)) => {
                return Err(TransferError::Usage(format!(
                    "{flag} {shown}: not a directory"
                )))
            }
            Err(e) => return Err(TransferError::Usage(format!("{flag} {shown}: {e}"))),
        }
        m.sub(&rel)
            .map(Some)
            .map_err(|e| TransferError::Usage(format!("{flag} {shown}: {e}")))
    }

    fn probe(&mut self, path: &[u8], shown: &str) -> Result<Option<bool>, TransferError> {
        match &self.beneath {
            None => {
                let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(path)).ok();
                Ok(meta.map(|m| m.is_dir()))
            }
            Some(_) => {
                let rel = in_module(path);
                names::check(rel)
                    .map_err(|e| TransferError::Usage(format!("destination {shown}: {e}")))?;
                let m = self.module()?.expect("beneath a module");
                let x = m
                    .stat(rel)
                    .map_err(|e| TransferError::local(shown.to_string(), &e))?;
                Ok(x.map(|x| x.kind == ExistingKind::Dir))
            }
        }
    }

    fn open(&mut self, root: &[u8], create: bool, shown: &str) -> Result<Dest, TransferError> {
        // beneath a module, always through the module's handle, whether or
        // not `probe` came first
        let opened = match self.module()? {
            None => Dest::open(Path::new(std::ffi::OsStr::from_bytes(root)), create),
            Some(m) => {
                let rel = in_module(root);
                if create {
                    m.mkdir(rel, 0o755)
                        .or_else(|e| {
                            if e.kind() == io::ErrorKind::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| TransferError::local(shown.to_string(), &e))?;
                }
                m.sub(rel)
            }
        };
        opened.map_err(|e| TransferError::local(names::escape(root), &e))
    }

    /// # Security
    /// Beneath a daemon module the destination's parent and `--backup-dir`
    /// are resolved through the module's handle without following symlinks,
    /// `--backup-dir`'s `..` taken lexically and refused unless it stays
    /// inside the module; the module's root itself is never switched (its
    /// parent is outside). The swap and the removal work on those handles.
    fn open_atomic(
        &mut self,
        root: &[u8],
        backup_dir: Option<&[u8]>,
        shown: &str,
    ) -> Result<Dest, TransferError> {
        let unnamed = || {
            TransferError::Usage(format!(
                "--atomic: {shown} has no name of its own to build a new tree beside; name the directory itself"
            ))
        };
        let bad_backup = |why: String| {
            TransferError::Usage(format!(
                "--backup-dir {}: {why}",
                names::escape(backup_dir.unwrap_or_default())
            ))
        };
        // a daemon module's root as configured and as resolved: an absolute
        // symlink inside it may name it either way
        let roots: Vec<Vec<u8>> = match &self.beneath {
            None => Vec::new(),
            Some(b) => {
                let mut r = vec![lexically_from(b"/", b.as_os_str().as_bytes())];
                if let Ok(c) = std::fs::canonicalize(b) {
                    r.push(c.as_os_str().as_bytes().to_vec());
                }
                r
            }
        };
        match self.module()? {
            None => {
                let (parent, name) = named(root).ok_or_else(unnamed)?;
                let backup = match backup_dir {
                    None => None,
                    Some(dir) => {
                        let path = lexically_from(root, dir);
                        let (bparent, bname) = named(&path)
                            .ok_or_else(|| bad_backup("names no directory of its own".into()))?;
                        Some((open_dir_path(bparent, shown)?, bname.to_vec()))
                    }
                };
                let pfd = open_dir_path(parent, shown)?;
                let is_link = crate::fs::atomic::is_symlink(&pfd, name)
                    .map_err(|e| TransferError::local(shown.to_string(), &e))?;
                let staged = if is_link {
                    // the symlink form: the link's text as the kernel reads
                    // it, from the link's directory
                    let mut resolve = |text: &[u8]| {
                        let path = text_from(parent, text);
                        let (tparent, tname) = named(&path).ok_or_else(unnamed)?;
                        Ok((open_dir_path(tparent, shown)?, tname.to_vec()))
                    };
                    crate::fs::atomic::stage_flip(pfd, name, &mut resolve, backup, shown)?
                } else {
                    crate::fs::atomic::stage(pfd, name, backup, shown)?
                };
                let path = text_from(parent, staged.new_tree());
                let dest = Dest::open(Path::new(std::ffi::OsStr::from_bytes(&path)), false)
                    .map_err(|e| TransferError::local(shown.to_string(), &e))?;
                self.staged = Some(staged);
                Ok(dest)
            }
            Some(m) => {
                let rel = in_module(root);
                names::check(rel)
                    .map_err(|e| TransferError::Usage(format!("destination {shown}: {e}")))?;
                if rel == b"." {
                    return Err(TransferError::Usage(format!(
                        "--atomic: {shown} is the module's root, which cannot be switched (the directory above it is outside the module); name a directory inside it"
                    )));
                }
                let (parent, name) = names::split_parent(rel);
                let parent = in_module(parent);
                let local = |e: io::Error| TransferError::local(shown.to_string(), &e);
                let backup = match backup_dir {
                    None => None,
                    Some(dir) => {
                        let brel = inside_module(rel, dir)
                            .filter(|b| b != b".")
                            .ok_or_else(|| bad_backup("outside the module (it must stay inside it, relative to the destination)".into()))?;
                        names::check(&brel).map_err(|e| bad_backup(e.to_string()))?;
                        let (bparent, bname) = names::split_parent(&brel);
                        let fd = m.dir(in_module(bparent)).map_err(local)?;
                        Some((fd.try_clone().map_err(local)?, bname.to_vec()))
                    }
                };
                let pfd = m.dir(parent).map_err(local)?.try_clone().map_err(local)?;
                let is_link = crate::fs::atomic::is_symlink(&pfd, name).map_err(local)?;
                let staged = if is_link {
                    // the symlink form: its target resolved beneath the
                    // module, never following a symlink, refused outside it
                    let mut resolve = |text: &[u8]| {
                        if climbs_after_a_name(text) {
                            // `a/../b` is taken lexically here, but a reader's
                            // kernel goes through `a` if it is a symlink
                            return Err(TransferError::Usage(format!(
                                "--atomic: {shown} is a symlink to {}, with `..` after a name; inside a module write the link's target without it",
                                names::escape(text)
                            )));
                        }
                        let t = module_text(parent, text, &roots).ok_or_else(|| {
                            TransferError::Usage(format!(
                                "--atomic: {shown} is a symlink to {}, outside the module; a link switched through the daemon must point inside the module",
                                names::escape(text)
                            ))
                        })?;
                        names::check(&t)
                            .map_err(|e| TransferError::Usage(format!("--atomic: {shown}: {e}")))?;
                        if t == b"." {
                            return Err(TransferError::Usage(format!(
                                "--atomic: {shown} is a symlink to the module's root, which cannot be switched; point it at a directory inside the module"
                            )));
                        }
                        let (tparent, tname) = names::split_parent(&t);
                        let fd = m.dir(in_module(tparent)).map_err(|e| {
                            TransferError::Usage(format!(
                                "--atomic: {shown} is a symlink to {}: {e}",
                                names::escape(text)
                            ))
                        })?;
                        Ok((fd.try_clone().map_err(local)?, tname.to_vec()))
                    };
                    crate::fs::atomic::stage_flip(pfd, name, &mut resolve, backup, shown)?
                } else {
                    crate::fs::atomic::stage(pfd, name, backup, shown)?
                };
                let new = module_text(parent, staged.new_tree(), &roots)
                    .expect("resolved inside the module when staged");
                let dest = m.sub(&new).map_err(local)?;
                self.staged = Some(staged);
                Ok(dest)
            }
        }
    }

    fn switch_atomic(&mut self) -> Result<(), TransferError> {
        match self.staged.take() {
            Some(s) => s.switch(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_a_module_open_stays_inside_without_a_probe_first() {
        let t = tempfile::tempdir().unwrap();
        let module = t.path().join("module");
        std::fs::create_dir(&module).unwrap();
        let name = format!("ferry-place-test-{}", std::process::id());
        let mut place = LocalPlace::new(Some(module.clone()));
        // without the module's handle this would be made in the working
        // directory, outside the module
        let opened = place.open(name.as_bytes(), true, &name);
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert!(!Path::new(&name).exists(), "opened outside the module");
        assert!(module.join(&name).is_dir());
    }

    #[test]
    fn a_basis_dir_stays_inside_the_module() {
        assert_eq!(
            inside_module(b"d", b"../prev").as_deref(),
            Some(&b"prev"[..])
        );
        assert_eq!(inside_module(b".", b"a/./b").as_deref(), Some(&b"a/b"[..]));
        assert_eq!(inside_module(b"d/e", b"../..").as_deref(), Some(&b"."[..]));
        assert_eq!(inside_module(b"d", b"../../x"), None);
        assert_eq!(inside_module(b".", b".."), None);
        assert_eq!(inside_module(b"d", b"/etc"), None);
        assert_eq!(inside_module(b"d", b"x/../../../y"), None);
    }

    #[test]
    fn a_link_text_inside_a_module() {
        let roots = [b"/srv/m".to_vec()];
        assert_eq!(
            module_text(b"serve", b"../releases/7", &roots).as_deref(),
            Some(&b"releases/7"[..])
        );
        assert_eq!(
            module_text(b".", b"/srv/m/releases/7/", &roots).as_deref(),
            Some(&b"releases/7"[..])
        );
        assert_eq!(
            module_text(b".", b"/srv/m", &roots).as_deref(),
            Some(&b"."[..])
        );
        assert_eq!(module_text(b".", b"/srv/mx/7", &roots), None);
        assert_eq!(module_text(b".", b"/etc", &roots), None);
        assert_eq!(module_text(b"serve", b"../../x", &roots), None);
        assert!(climbs_after_a_name(b"a/../b"));
        assert!(!climbs_after_a_name(b"../../releases/./7"));
    }
}
