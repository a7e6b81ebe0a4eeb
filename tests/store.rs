//! The store seam carries a whole transfer: an in-memory `Destination`
//! (files as byte vectors in a map, temporaries as vectors published by
//! moving them in) receives the rsync-oracle scenarios from the real sender
//! through the same receiver that writes to disk, and must end up as the
//! disk does: the same names, kinds, modes, times, link targets and bytes.
//! Nothing here is library code: the store lives in this test only.
mod util;

use ferry::proto::Options;
use ferry::proto::Summary;
use ferry::session::receiver::{self, Config};
use ferry::session::sender;
use ferry::session::wire::{Counters, FrameReader, FrameWriter};
use ferry::session::Cancel;
use ferry::store::destination::{
    BasisFile, Caps, Destination, Existing, ExistingKind, Meta, MetaOf, Place, PublishHow, Space,
    TempHow, TempWrite,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use util::*;

/// What the store holds at a path.
#[derive(Debug, Clone)]
enum Held {
    File {
        data: Arc<Vec<u8>>,
        mode: u32,
        mtime: (i64, u32),
    },
    Dir {
        mode: u32,
        mtime: (i64, u32),
    },
    Link {
        target: Vec<u8>,
    },
}

type Tree = Arc<Mutex<BTreeMap<Vec<u8>, Held>>>;

struct Memory(Tree);

struct MemoryBasis(Arc<Vec<u8>>);

struct MemoryTemp(Vec<u8>);

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

fn parent(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b".",
    }
}

fn under(dir: &[u8], rel: &[u8]) -> bool {
    dir == b"." || (rel.starts_with(dir) && rel.get(dir.len()) == Some(&b'/'))
}

impl BasisFile for MemoryBasis {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let from = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - from);
        buf[..n].copy_from_slice(&self.0[from..from + n]);
        Ok(n)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.read_at(buf, offset)? {
            n if n == buf.len() => Ok(()),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl TempWrite for MemoryTemp {
    type Basis = MemoryBasis;
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn is_partial(&self) -> bool {
        false
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset as usize + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn append_from(&mut self, _: &MemoryBasis, _: u64, data: &[u8]) -> io::Result<()> {
        self.write(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let from = offset as usize;
        let got = self
            .0
            .get(from..from + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(got);
        Ok(())
    }
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl Destination for Memory {
    type Basis = MemoryBasis;
    type Temp = MemoryTemp;

    fn caps(&self) -> Caps {
        Caps {
            rebuild: true,
            write_at: true,
            share_blocks: false,
        }
    }
    fn show(&self, rel: &[u8]) -> String {
        format!("memory:{}", String::from_utf8_lossy(rel))
    }
    fn stat(&mut self, rel: &[u8]) -> io::Result<Option<Existing>> {
        let tree = self.0.lock().unwrap();
        let Some(held) = tree.get(rel) else {
            return Ok(None);
        };
        let (kind, size, mode, mtime) = match held {
            Held::File { data, mode, mtime } => {
                (ExistingKind::File, data.len() as u64, *mode, *mtime)
            }
            Held::Dir { mode, mtime } => (ExistingKind::Dir, 0, *mode, *mtime),
            Held::Link { .. } => (ExistingKind::Symlink, 0, 0o777, (0, 0)),
        };
        Ok(Some(Existing {
            kind,
            size,
            mode,
            mtime: mtime.0,
            mtime_nsec: mtime.1,
            uid: 0,
            gid: 0,
        }))
    }
    fn list(&mut self, rel: &[u8]) -> io::Result<Vec<(Vec<u8>, bool)>> {
        let tree = self.0.lock().unwrap();
        Ok(tree
            .iter()
            .filter(|(k, _)| k.as_slice() != b"." && parent(k) == rel)
            .map(|(k, v)| {
                let name = k.rsplit(|&b| b == b'/').next().unwrap().to_vec();
                (name, matches!(v, Held::Dir { .. }))
            })
            .collect())
    }
    fn mkdir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let mut tree = self.0.lock().unwrap();
        if tree.contains_key(rel) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        tree.insert(
            rel.to_vec(),
            Held::Dir {
                mode,
                mtime: (0, 0),
            },
        );
        Ok(())
    }
    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let held = Held::Link {
            target: target.to_vec(),
        };
        self.0.lock().unwrap().insert(rel.to_vec(), held);
        Ok(())
    }
    fn readlink(&mut self, rel: &[u8]) -> io::Result<Vec<u8>> {
        match self.0.lock().unwrap().get(rel) {
            Some(Held::Link { target }) => Ok(target.clone()),
            _ => Err(not_found()),
        }
    }
    fn hardlink(&mut self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        let mut tree = self.0.lock().unwrap();
        let held = tree.get(existing).cloned().ok_or_else(not_found)?;
        tree.insert(rel.to_vec(), held);
        Ok(())
    }
    fn remove(&mut self, rel: &[u8], backup: Option<&[u8]>) -> io::Result<()> {
        assert!(backup.is_none(), "no backups in these scenarios");
        let mut tree = self.0.lock().unwrap();
        tree.remove(rel).ok_or_else(not_found)?;
        tree.retain(|k, _| !under(rel, k));
        Ok(())
    }
    fn set_meta(&mut self, rel: &[u8], _: MetaOf, meta: &Meta) -> io::Result<()> {
        let mut tree = self.0.lock().unwrap();
        match tree.get_mut(rel).ok_or_else(not_found)? {
            Held::File { mode, mtime, .. } | Held::Dir { mode, mtime } => {
                *mode = meta.mode.unwrap_or(*mode);
                *mtime = meta.mtime.unwrap_or(*mtime);
            }
            Held::Link { .. } => {}
        }
        Ok(())
    }
    fn open_basis(&mut self, rel: &[u8]) -> io::Result<MemoryBasis> {
        match self.0.lock().unwrap().get(rel) {
            Some(Held::File { data, .. }) => Ok(MemoryBasis(data.clone())),
            _ => Err(not_found()),
        }
    }
    fn open_partial(&mut self, _: &[u8]) -> Option<MemoryBasis> {
        None
    }
    fn create_temp(&mut self, _: &[u8], _: TempHow) -> io::Result<MemoryTemp> {
        Ok(MemoryTemp(Vec::new()))
    }
    fn publish(&mut self, t: MemoryTemp, rel: &[u8], m: &Meta, _: PublishHow) -> io::Result<()> {
        let held = Held::File {
            data: Arc::new(t.0),
            mode: m.mode.unwrap_or(0o644),
            mtime: m.mtime.unwrap_or((0, 0)),
        };
        self.0.lock().unwrap().insert(rel.to_vec(), held);
        Ok(())
    }
    fn discard(&mut self, _: MemoryTemp) {}
    fn spill_dir(&mut self, _: &[u8]) -> Option<Arc<OwnedFd>> {
        None
    }
    fn tidy_dir(&mut self, _: &[u8]) {}
    fn space(&self) -> Space {
        Space {
            free_bytes: u64::MAX,
            out_of_inodes: false,
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The memory store as a place to open: its root always exists.
struct MemoryPlace(Tree);

impl Place for MemoryPlace {
    type Dest = Memory;
    fn probe(&mut self, _: &[u8], _: &str) -> Result<Option<bool>, ferry::error::TransferError> {
        Ok(Some(true))
    }
    fn open(&mut self, _: &[u8], _: bool, _: &str) -> Result<Memory, ferry::error::TransferError> {
        Ok(Memory(self.0.clone()))
    }
}

/// A disk tree as the store holds it.
fn load(root: &Path) -> Tree {
    let mut tree = BTreeMap::new();
    // the root, which the receiver looks at as "."
    let m = std::fs::metadata(root).unwrap();
    let root_held = Held::Dir {
        mode: m.mode() & 0o7777,
        mtime: (m.mtime(), m.mtime_nsec() as u32),
    };
    tree.insert(b".".to_vec(), root_held);
    for (rel, node) in snapshot(root, true) {
        let p = root.join(std::ffi::OsStr::new(std::str::from_utf8(&rel).unwrap()));
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mtime = (m.mtime(), m.mtime_nsec() as u32);
        let held = match node {
            Node::File { mode, .. } => Held::File {
                data: Arc::new(std::fs::read(&p).unwrap()),
                mode,
                mtime,
            },
            Node::Dir { mode, .. } => Held::Dir { mode, mtime },
            Node::Link { target } => Held::Link { target },
        };
        tree.insert(rel, held);
    }
    Arc::new(Mutex::new(tree))
}

/// The store's tree as `snapshot` describes a disk tree.
fn described(tree: &Tree) -> BTreeMap<Vec<u8>, Node> {
    let tree = tree.lock().unwrap();
    tree.iter()
        .filter(|(rel, _)| rel.as_slice() != b".")
        .map(|(rel, held)| {
            let node = match held {
                Held::File { data, mode, mtime } => Node::File {
                    mode: *mode & 0o7777,
                    mtime: (mtime.0, mtime.1 as i64),
                    hash: *blake3::hash(data).as_bytes(),
                },
                Held::Dir { mode, mtime } => Node::Dir {
                    mode: *mode & 0o7777,
                    mtime: (mtime.0, mtime.1 as i64),
                },
                Held::Link { target } => Node::Link {
                    target: target.clone(),
                },
            };
            (rel.clone(), node)
        })
        .collect()
}

/// `ferry sync -a [--delete]` of `src/` into a receiver, by the real sender
/// over in-process pipes; `receive` runs the receiver.
fn transfer(
    src: &Path,
    options: &Options,
    receive: impl FnOnce(
            FrameReader<io::PipeReader>,
            FrameWriter<io::PipeWriter>,
            Config<'static>,
        ) -> Result<Summary, ferry::error::TransferError>
        + Send
        + 'static,
    dest: Vec<u8>,
) -> Summary {
    let (to_receiver, from_sender) = io::pipe().unwrap();
    let (to_sender, from_receiver) = io::pipe().unwrap();
    let cfg = Config {
        dest,
        options: options.clone(),
        events: None,
        requested: None,
        beneath: None,
        joins: None,
    };
    let receiving = std::thread::spawn(move || {
        receive(
            FrameReader::new(to_receiver, Arc::new(Counters::default())),
            FrameWriter::new(from_receiver, Arc::new(Counters::default())),
            cfg,
        )
    });
    let events = |_| {};
    let mut source = src.as_os_str().as_encoded_bytes().to_vec();
    source.push(b'/');
    let sent = sender::run(
        FrameReader::new(to_sender, Arc::new(Counters::default())),
        FrameWriter::new(from_sender, Arc::new(Counters::default())),
        sender::Config {
            sources: vec![source],
            options: options.clone(),
            events: Some(&events),
            confine: None,
            joins: None,
        },
        &Cancel::default(),
    );
    let received = receiving.join().unwrap().expect("the receiver finishes");
    sent.expect("the sender finishes");
    received
}

/// Runs one scenario into the disk and into memory, from the same start.
fn both_ways(name: &str, delete: bool, build: impl Fn(&Path, &Path)) -> (Summary, Summary) {
    let t = tmp();
    let (src, init, disk) = (
        t.path().join("src"),
        t.path().join("init"),
        t.path().join("disk"),
    );
    std::fs::create_dir_all(&init).unwrap();
    build(&src, &init);
    std::fs::create_dir_all(&disk).unwrap();
    clone_tree(&init, &disk);
    let options = Options {
        recursive: true,
        links: true,
        perms: true,
        times: true,
        delete,
        ..Default::default()
    };
    let on_disk = transfer(
        &src,
        &options,
        |r, w, cfg| receiver::run(r, w, cfg, &Cancel::default()),
        disk.as_os_str().as_encoded_bytes().to_vec(),
    );
    let tree = load(&init);
    let kept = tree.clone();
    let in_memory = transfer(
        &src,
        &options,
        move |r, w, cfg| receiver::run_into(r, w, cfg, MemoryPlace(tree), &Cancel::default()),
        b"memory".to_vec(),
    );
    let (want, got) = (snapshot(&disk, true), described(&kept));
    assert!(
        want == got,
        "{name}: the memory store differs from the disk:\n{want:#?}\n{got:#?}"
    );
    assert_eq!(
        (on_disk.transferred, on_disk.deleted, on_disk.errors),
        (in_memory.transferred, in_memory.deleted, in_memory.errors),
        "{name}"
    );
    (on_disk, in_memory)
}

fn base_tree(src: &Path) {
    write(&src.join("a.txt"), "alpha\n");
    write(&src.join("data/shard-1.jsonl"), "{\"x\":1}\n".repeat(500));
    write(&src.join("data/shard-2.jsonl"), "{\"x\":2}\n".repeat(700));
    write(&src.join("ckpt/w.bin"), random_bytes(400_000, 3));
    std::fs::create_dir_all(src.join("empty/nested")).unwrap();
    for (i, f) in [
        "a.txt",
        "data/shard-1.jsonl",
        "data/shard-2.jsonl",
        "ckpt/w.bin",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&src.join(f), 1_600_000_000 + i as i64 * 1000);
    }
}

#[test]
fn a_fresh_tree_arrives_in_memory_as_on_disk() {
    both_ways("fresh", false, |s, _| {
        base_tree(s);
        std::os::unix::fs::symlink("a.txt", s.join("to-a")).unwrap();
        std::os::unix::fs::symlink("../a.txt", s.join("data/up")).unwrap();
    });
}

#[test]
fn changed_files_are_rebuilt_from_what_memory_holds() {
    let (disk, memory) = both_ways("changed", false, |s, d| {
        base_tree(d);
        base_tree(s);
        write(&s.join("a.txt"), "alpha, longer now\n");
        set_mtime(&s.join("a.txt"), 1_700_000_000);
        let mut w = random_bytes(400_000, 3);
        w[200_000..204_000].fill(7);
        write(&s.join("ckpt/w.bin"), w);
        set_mtime(&s.join("ckpt/w.bin"), 1_700_000_100);
        write(&s.join("data/new.jsonl"), "{}\n");
    });
    assert!(
        disk.reused > 0 && memory.reused > 0,
        "w.bin is rebuilt both ways"
    );
    assert_eq!(disk.reused, memory.reused);
}

#[test]
fn delete_removes_from_memory_what_it_removes_from_disk() {
    let (disk, _) = both_ways("delete", true, |s, d| {
        base_tree(s);
        base_tree(d);
        write(&d.join("stale.bin"), "x");
        write(&d.join("gone/deep/file"), "x");
        write(&d.join("data/old.jsonl"), "x");
    });
    assert!(disk.deleted >= 3, "{disk:?}");
}
