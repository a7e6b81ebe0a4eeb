//! The manifest: the tree every destination gets (names, kinds, sizes, modes,
//! mtimes, symlink targets), made by the source from a walk of its files
//! (their contents are not read here). Its BLAKE3 is in the signed ticket,
//! so a daemon knows the list came from the source.
//!
//! Not for file contents: those are checked piece by piece against the
//! signed hashes that travel with the data.

use crate::error::TransferError;
use crate::proto::codec::{Reader, Writer};
use crate::proto::DecodeError;
use std::os::unix::ffi::OsStrExt;
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
/// itself) into a manifest, with the local path of each entry.
pub fn scan(src: &Path, how: Walk) -> Result<(Manifest, Vec<PathBuf>), TransferError> {
    let shown = src.display().to_string();
    let meta = std::fs::metadata(src).map_err(|e| TransferError::local(&shown, &e))?;
    let contents = src.as_os_str().as_bytes().ends_with(b"/");
    let mut m = Manifest {
        perms: how.perms,
        times: how.times,
        delete: how.delete,
        ..Default::default()
    };
    let mut paths = Vec::new();
    if meta.is_dir() && !how.recursive {
        return Err(TransferError::Usage(format!(
            "{shown} is a directory: add -r (or -a) to send it"
        )));
    }
    let top: Vec<u8> = if meta.is_dir() && contents {
        b".".to_vec()
    } else {
        let name = src
            .file_name()
            .ok_or_else(|| TransferError::Usage(format!("{shown}: no name to send it under")))?;
        name.as_bytes().to_vec()
    };
    walk(src, top, &meta, how, &mut m, &mut paths)?;
    Ok((m, paths))
}

fn walk(
    local: &Path,
    rel: Vec<u8>,
    meta: &std::fs::Metadata,
    how: Walk,
    m: &mut Manifest,
    paths: &mut Vec<PathBuf>,
) -> Result<(), TransferError> {
    let kind = if meta.is_dir() {
        Kind::Dir
    } else if meta.is_file() {
        Kind::File
    } else if meta.file_type().is_symlink() {
        Kind::Link
    } else {
        return Ok(()); // devices, sockets, fifos: not sent
    };
    let target = if kind == Kind::Link {
        std::fs::read_link(local)
            .map_err(|e| TransferError::local(local.display().to_string(), &e))?
            .as_os_str()
            .as_bytes()
            .to_vec()
    } else {
        Vec::new()
    };
    if kind == Kind::Link && !how.links {
        return Ok(());
    }
    m.entries.push(Entry {
        path: rel.clone(),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec() as u32,
        size: if kind == Kind::File { meta.len() } else { 0 },
        target,
    });
    paths.push(local.to_path_buf());
    if kind != Kind::Dir {
        return Ok(());
    }
    let mut children: Vec<_> = std::fs::read_dir(local)
        .map_err(|e| TransferError::local(local.display().to_string(), &e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    children.sort();
    for name in children {
        let child = local.join(&name);
        let meta = std::fs::symlink_metadata(&child)
            .map_err(|e| TransferError::local(child.display().to_string(), &e))?;
        let mut r = if rel == b"." {
            Vec::new()
        } else {
            [&rel[..], b"/"].concat()
        };
        r.extend_from_slice(name.as_bytes());
        walk(&child, r, &meta, how, m, paths)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (m, paths) = scan(&src, how).unwrap();
        let names: Vec<_> = m.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            names,
            vec![b".".to_vec(), b"a".to_vec(), b"b".to_vec(), b"b/x".to_vec()]
        );
        assert_eq!(paths.len(), 4);
        assert_eq!(m.total_size(), 6);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        // without the slash the directory itself is sent
        let (m2, _) = scan(d.path(), how).unwrap();
        assert!(m2.entries[1].path.ends_with(b"/a"));
        assert!(scan(d.path(), Walk::default()).is_err());
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
