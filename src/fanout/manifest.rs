//! The manifest: the tree every destination gets (names, kinds, sizes, modes,
//! mtimes, symlink targets), made by the source from a walk of its files
//! (their contents are not read here). Its BLAKE3 is in the signed ticket,
//! so a daemon knows the list came from the source.
//!
//! Not for file contents: those are checked piece by piece against the
//! signed hashes that travel with the data.

use crate::error::TransferError;
use crate::fs::dir_stack::{names_in, now_is, open_child_dir, same_dir, DirStack};
use crate::fs::scan::OnDisk;
use crate::proto::codec::{Reader, Writer};
use crate::proto::DecodeError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Most entries one job may carry.
pub const MAX_ENTRIES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Link,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the destination directory; `.` is the directory itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub size: u64,
    /// A symlink's target.
    pub target: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    /// `-p`: modes as the source's (else new files get 0644/0755 less the umask).
    pub perms: bool,
    /// `-t`: mtimes as the source's.
    pub times: bool,
    /// `--delete`: remove what the destination has beyond the manifest.
    pub delete: bool,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bool(self.perms);
        w.bool(self.times);
        w.bool(self.delete);
        w.varint(self.entries.len() as u64);
        for e in &self.entries {
            w.bytes(&e.path);
            w.u8(match e.kind {
                Kind::Dir => 0,
                Kind::File => 1,
                Kind::Link => 2,
            });
            w.varint(e.mode as u64);
            w.i64(e.mtime);
            w.varint(e.mtime_ns as u64);
            w.varint(e.size);
            w.bytes(&e.target);
        }
        w.buf
    }

    /// Decodes and checks every name (relative, no `..`, no empty component).
    pub fn decode(b: &[u8]) -> Result<Manifest, DecodeError> {
        let mut r = Reader::new(b);
        let perms = r.bool("perms")?;
        let times = r.bool("times")?;
        let delete = r.bool("delete")?;
        let n = r.count(MAX_ENTRIES.min(r.remaining()), "entries")?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.bytes(crate::proto::MAX_PATH, "path")?.to_vec();
            crate::fs::names::check(&path).map_err(|_| DecodeError::Invalid("entry name"))?;
            let kind = match r.u8("kind")? {
                0 => Kind::Dir,
                1 => Kind::File,
                2 => Kind::Link,
                _ => return Err(DecodeError::Invalid("kind")),
            };
            entries.push(Entry {
                path,
                kind,
                mode: r.count(0o7777, "mode")? as u32,
                mtime: r.i64("mtime")?,
                mtime_ns: r.count(999_999_999, "mtime nanoseconds")? as u32,
                size: r.varint("size")?,
                target: r.bytes(crate::proto::MAX_PATH, "link target")?.to_vec(),
            });
        }
        r.finish("manifest")?;
        Ok(Manifest {
            entries,
            perms,
            times,
            delete,
        })
    }

    pub fn root(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }
}

/// What to walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk {
    pub recursive: bool,
    pub links: bool,
    pub perms: bool,
    pub times: bool,
    pub delete: bool,
}

/// Walks `src` (rsync's rule: `dir/` sends what is in dir, `dir` sends dir
/// itself) into a manifest, with where each entry is on disk and which file
/// the walk stated there (what the source opens it by, and then checks that
/// it opened). A symlink in the tree is an entry of its own, never followed.
///
/// # Security
/// Every entry below `src` is looked at from the handle of the directory
/// holding it, opened without following a link (see [`DirStack`]). With
/// `confine` (a daemon module: the API's fan-out jobs), `src` is inside its
/// root and the walk never leaves it: the way down to `src` has no symlink
/// (nor `src` itself, sent by its contents). Without it (the CLI), `src` is
/// the user's own path, followed as given.
pub fn scan(
    src: &Path,
    how: Walk,
    confine: Option<&Module>,
) -> Result<(Manifest, Vec<OnDisk>), TransferError> {
    let shown = src.display().to_string();
    let contents = src.as_os_str().as_bytes().ends_with(b"/");
    let held;
    let root = match confine {
        None => {
            let meta = std::fs::metadata(src).map_err(|e| TransferError::local(&shown, &e))?;
            // (a source named through a symlink stated what it leads to)
            let followed = std::fs::symlink_metadata(src).is_ok_and(|m| m.is_symlink());
            (Node::of(&meta), followed, None)
        }
        Some(module) => {
            held = Held::open(&module.root, src, contents)?;
            let st =
                rustix::fs::statat(&held.dir, held.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| TransferError::local(&held.shown, &e.into()))?;
            (Node::of_stat(&st), false, Some(&held))
        }
    };
    let (node, followed, held) = root;
    let mut m = Manifest {
        perms: how.perms,
        times: how.times,
        delete: how.delete,
        ..Default::default()
    };
    let mut at = Vec::new();
    if node.kind == Some(Kind::Dir) && !how.recursive {
        return Err(TransferError::Usage(format!(
            "{shown} is a directory: add -r (or -a) to send it"
        )));
    }
    let top: Vec<u8> = if node.kind == Some(Kind::Dir) && contents {
        b".".to_vec()
    } else {
        let name = src
            .file_name()
            .ok_or_else(|| TransferError::Usage(format!("{shown}: no name to send it under")))?;
        name.as_bytes().to_vec()
    };
    let fail = |e: std::io::Error| TransferError::local(self::shown(confine, src), &e);
    let target = || match held {
        None => Ok(std::fs::read_link(src)?.into_os_string().into_vec()),
        Some(h) => Ok(rustix::fs::readlinkat(&h.dir, h.name.as_os_str(), Vec::new())?.into_bytes()),
    };
    if !add(src, &top, node, followed, target, how, &mut m, &mut at).map_err(fail)? {
        return Ok((m, at));
    }
    // the root directory, opened as it was stated
    let fd = match held {
        None => rustix::fs::open(
            src,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from),
        Some(h) => {
            let name = h.name.as_os_str().as_bytes();
            open_child_dir(h.dir.as_fd(), name, false)
                .map_err(|e| now_is(h.dir.as_fd(), name, "the scan").unwrap_or(e))
        }
    };
    let fd = fd
        .and_then(|fd| same_dir(&fd, node.id, "the scan").map(|()| fd))
        .map_err(fail)?;
    let mut levels = DirStack::new("the scan");
    let children = sorted_names(&fd).map_err(fail)?;
    let level = Level {
        local: src.to_path_buf(),
        rel: top,
        children,
    };
    levels.push(fd, b"", node.id, followed, level);
    walk(&mut levels, how, confine, &mut m, &mut at)?;
    Ok((m, at))
}

/// The daemon module a walk and its reads are confined to (an API job's).
#[derive(Clone, Debug)]
pub struct Module {
    /// Its root on this machine: never shown to a client.
    pub root: PathBuf,
    /// Its name, as a job's paths start (`src` of `src/ckpt/`).
    pub name: String,
}

impl Module {
    /// `path` (beneath the root) as the job names it: the module's name and
    /// the path within it, never where the module lives on this machine.
    pub fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => self.name.clone(),
            Ok(rel) => format!("{}/{}", self.name, rel.display()),
            Err(_) => "a path outside the module".to_string(),
        }
    }
}

/// `path` as a message names it: by the job's module path when confined,
/// else as the user gave it (the CLI's own paths).
pub fn shown(module: Option<&Module>, path: &Path) -> String {
    match module {
        Some(m) => m.shown(path),
        None => path.display().to_string(),
    }
}

/// The directory holding a confined walk's root, and the root's name in it.
struct Held {
    dir: OwnedFd,
    name: PathBuf,
    /// The root as the module names it, for messages.
    shown: String,
}

impl Held {
    fn open(root: &Path, src: &Path, contents: bool) -> Result<Held, TransferError> {
        let rel = src.strip_prefix(root).map_err(|_| {
            TransferError::Usage(format!("{}: not inside the module", src.display()))
        })?;
        let shown = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.display().to_string()
        };
        let io = |e: std::io::Error| TransferError::local(&shown, &e);
        if let Some((link, leaves)) =
            crate::fs::source::symlink_on_the_way(root, rel, contents).map_err(io)?
        {
            return Err(TransferError::Usage(format!(
                "{shown}: {}",
                crate::fs::source::symlink_refusal(&link, leaves)
            )));
        }
        let top = crate::fs::source::open_dir(root).map_err(io)?;
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, PathBuf::from(n)),
            _ => (Path::new(""), PathBuf::from(".")),
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = rustix::fs::openat2(
            &top,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(|e| io(e.into()))?;
        Ok(Held { dir, name, shown })
    }
}

/// What the walk needs of an entry's status, by path or from a handle.
#[derive(Clone, Copy)]
struct Node {
    /// `None`: devices, sockets, FIFOs (not sent).
    kind: Option<Kind>,
    mode: u32,
    mtime: i64,
    mtime_ns: u32,
    size: u64,
    /// Device and inode: a directory must still be this one when opened,
    /// and a file when the source opens it to send.
    id: (u64, u64),
}

impl Node {
    fn of(meta: &std::fs::Metadata) -> Node {
        let ft = meta.file_type();
        Node {
            kind: if ft.is_dir() {
                Some(Kind::Dir)
            } else if ft.is_file() {
                Some(Kind::File)
            } else if ft.is_symlink() {
                Some(Kind::Link)
            } else {
                None
            },
            mode: meta.permissions().mode() & 0o7777,
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec() as u32,
            size: meta.len(),
            id: (meta.dev(), meta.ino()),
        }
    }

    fn of_stat(st: &rustix::fs::Stat) -> Node {
        Node {
            kind: match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => Some(Kind::Dir),
                FileType::RegularFile => Some(Kind::File),
                FileType::Symlink => Some(Kind::Link),
                _ => None,
            },
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
            mtime_ns: st.st_mtime_nsec as u32,
            size: st.st_size as u64,
            #[allow(clippy::unnecessary_cast)] // the field types differ between targets
            id: (st.st_dev as u64, st.st_ino as u64),
        }
    }
}

/// A directory the walk is in, from the walk's root down (its handle is
/// on the [`DirStack`]).
struct Level {
    /// Its local path and its name in the manifest.
    local: PathBuf,
    rel: Vec<u8>,
    /// Its names not visited yet, sorted bytewise.
    children: std::vec::IntoIter<Vec<u8>>,
}

/// The names in directory `fd`, sorted bytewise.
fn sorted_names(fd: &OwnedFd) -> std::io::Result<std::vec::IntoIter<Vec<u8>>> {
    let mut names = names_in(fd)?;
    names.sort();
    Ok(names.into_iter())
}

/// The entry at `rel` in the manifest, and where it is on disk (nothing
/// for devices, sockets, FIFOs, and symlinks without `-l`); whether it is a
/// directory to walk into. `target`: a symlink's, read only for one sent.
#[allow(clippy::too_many_arguments)]
fn add(
    local: &Path,
    rel: &[u8],
    node: Node,
    followed: bool,
    target: impl FnOnce() -> std::io::Result<Vec<u8>>,
    how: Walk,
    m: &mut Manifest,
    at: &mut Vec<OnDisk>,
) -> std::io::Result<bool> {
    let Some(kind) = node.kind else {
        return Ok(false); // devices, sockets, fifos: not sent
    };
    if kind == Kind::Link && !how.links {
        return Ok(false);
    }
    let target = if kind == Kind::Link {
        target()?
    } else {
        Vec::new()
    };
    m.entries.push(Entry {
        path: rel.to_vec(),
        kind,
        mode: node.mode,
        mtime: node.mtime,
        mtime_ns: node.mtime_ns,
        size: if kind == Kind::File { node.size } else { 0 },
        target,
    });
    at.push(OnDisk {
        path: local.into(),
        id: node.id,
        followed,
    });
    Ok(kind == Kind::Dir)
}

/// Walks the tree below the root level in pre-order (a directory, then its
/// entries sorted bytewise, each directory's whole subtree before its next
/// name), the order the manifest root depends on. Iterative, so a deep tree
/// does not grow the thread's stack; each entry is stated from its
/// directory's handle, never through a symlink, and the walk holds a handle
/// on at most [`MAX_HELD_DIRS`] directories (plus the deepest), whatever the
/// depth.
///
/// [`MAX_HELD_DIRS`]: crate::fs::dir_stack::MAX_HELD_DIRS
fn walk(
    levels: &mut DirStack<Level>,
    how: Walk,
    module: Option<&Module>,
    m: &mut Manifest,
    at: &mut Vec<OnDisk>,
) -> Result<(), TransferError> {
    let fail = |e: std::io::Error, path: &Path| TransferError::local(shown(module, path), &e);
    loop {
        let Some(level) = levels.top_mut() else {
            return Ok(());
        };
        let Some(name) = level.children.next() else {
            levels.pop();
            continue;
        };
        let child = level.local.join(std::ffi::OsStr::from_bytes(&name));
        let r = if level.rel == b"." {
            name.clone()
        } else {
            [&level.rel[..], b"/", &name].concat()
        };
        let dir_path = level.local.clone();
        let dir = levels.top_fd().map_err(|e| fail(e, &dir_path))?;
        let st = rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(e.into(), &child))?;
        let node = Node::of_stat(&st);
        let target = || Ok(rustix::fs::readlinkat(dir, name.as_slice(), Vec::new())?.into_bytes());
        if !add(&child, &r, node, false, target, how, m, at).map_err(|e| fail(e, &child))? {
            continue;
        }
        let fd = levels
            .open_child(&name, node.id, false)
            .map_err(|e| fail(e, &child))?;
        let children = sorted_names(&fd).map_err(|e| fail(e, &child))?;
        let level = Level {
            local: child,
            rel: r,
            children,
        };
        levels.push(fd, &name, node.id, false, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::dir_stack::MAX_HELD_DIRS;

    #[test]
    fn a_tree_scans_in_order_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        std::fs::write(d.path().join("b/x"), b"12345").unwrap();
        std::fs::write(d.path().join("a"), b"1").unwrap();
        let src = PathBuf::from(format!("{}/", d.path().display()));
        let how = Walk {
            recursive: true,
            ..Default::default()
        };
        let (m, paths) = scan(&src, how, None).unwrap();
        let names: Vec<_> = m.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            names,
            vec![b".".to_vec(), b"a".to_vec(), b"b".to_vec(), b"b/x".to_vec()]
        );
        assert_eq!(paths.len(), 4);
        assert_eq!(m.total_size(), 6);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        // without the slash the directory itself is sent
        let (m2, _) = scan(d.path(), how, None).unwrap();
        assert!(m2.entries[1].path.ends_with(b"/a"));
        assert!(scan(d.path(), Walk::default(), None).is_err());
    }

    #[test]
    fn a_confined_walk_follows_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (root, out) = (d.path().join("m"), d.path().join("out"));
        std::fs::create_dir_all(root.join("t/sub")).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("shadow"), b"secret").unwrap();
        std::fs::write(root.join("t/sub/x"), b"x").unwrap();
        std::os::unix::fs::symlink(&out, root.join("evil")).unwrap();
        std::os::unix::fs::symlink(&out, root.join("t/ln")).unwrap();
        let how = Walk {
            recursive: true,
            links: true,
            ..Default::default()
        };
        let module = Module {
            root: root.clone(),
            name: "m".into(),
        };
        for src in ["evil/", "evil/shadow"] {
            let e = scan(&root.join(src), how, Some(&module)).unwrap_err();
            assert!(
                e.to_string()
                    .contains("evil is a symlink that leaves the module"),
                "{e}"
            );
        }
        let (m, paths) = scan(&root.join("t/"), how, Some(&module)).unwrap();
        let kinds: Vec<_> = m.entries.iter().map(|e| (e.path.clone(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (b".".to_vec(), Kind::Dir),
                (b"ln".to_vec(), Kind::Link),
                (b"sub".to_vec(), Kind::Dir),
                (b"sub/x".to_vec(), Kind::File)
            ]
        );
        assert_eq!(m.entries[1].target, out.as_os_str().as_bytes());
        assert_eq!(*paths[3].path, *root.join("t/sub/x"));
        // the module's root itself, by its contents
        let (m, _) = scan(
            &PathBuf::from(format!("{}/", root.display())),
            how,
            Some(&module),
        )
        .unwrap();
        assert_eq!(m.entries.len(), 6);
    }

    /// A tree 1,000 directories deep is walked on a thread with a small
    /// stack (a daemon's connection threads have 2 MiB), in the same order
    /// as a shallow one's, confined or not: the walk keeps its levels on
    /// the heap, not on the stack.
    #[test]
    fn a_tree_1000_directories_deep_is_walked_on_a_small_stack_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("m");
        let deep = "d/".repeat(1000);
        std::fs::create_dir_all(root.join("t").join(&deep)).unwrap();
        std::fs::write(root.join("t").join(&deep).join("x"), b"x").unwrap();
        std::fs::write(
            root.join("t")
                .join("d/".repeat(MAX_HELD_DIRS + 3))
                .join("z"),
            b"",
        )
        .unwrap();
        let module = Module {
            root: root.clone(),
            name: "m".into(),
        };
        let how = Walk {
            recursive: true,
            ..Default::default()
        };
        for confine in [None, Some(module)] {
            let src = root.join("t/");
            let src = PathBuf::from(format!("{}/", src.display()));
            let (m, paths) = std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || scan(&src, how, confine.as_ref()).unwrap())
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(m.entries.len(), 1 + 1000 + 2);
            let mut want = vec![b".".to_vec()];
            for i in 1..=1000 {
                want.push(b"d/".repeat(i)[..2 * i - 1].to_vec());
            }
            // "d" sorts before "z": the deep subtree comes first, then the
            // walk opens level 67 again (its handle was let go) for `z`
            let names: Vec<Vec<u8>> = m.entries.iter().map(|e| e.path.clone()).collect();
            let z = [b"d/".repeat(MAX_HELD_DIRS + 3), b"z".to_vec()].concat();
            let x = [b"d/".repeat(1000), b"x".to_vec()].concat();
            want.push(x);
            want.push(z);
            assert_eq!(names, want);
            assert_eq!(
                *paths[1002].path,
                *root
                    .join("t")
                    .join("d/".repeat(MAX_HELD_DIRS + 3))
                    .join("z")
            );
        }
    }

    #[test]
    fn a_name_climbing_out_is_refused() {
        let m = Manifest {
            entries: vec![Entry {
                path: b"../x".to_vec(),
                kind: Kind::File,
                mode: 0o644,
                mtime: 0,
                mtime_ns: 0,
                size: 0,
                target: vec![],
            }],
            ..Default::default()
        };
        assert!(Manifest::decode(&m.encode()).is_err());
    }
}
