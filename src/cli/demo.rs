//! `ferry demo`: the main job on an embedded sample, with nothing to set up.
//! Builds a small dataset (JSONL shards and a random "checkpoint"), pushes it to
//! a `ferry serve --stdio` child over the real protocol, changes about 1% of it,
//! pushes again, and shows how much was reused and that the copy is identical.

use super::args::DemoArgs;
use super::exit;
use super::stdout::outln;
use crate::error::TransferError;
use crate::proto::Options;
use crate::session::Cancel;
use crate::transfer::{push_to_command, Outcome};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const CKPT_SIZE: usize = 48 << 20;
const SHARDS: usize = 200;

fn local(e: std::io::Error, what: &Path) -> TransferError {
    TransferError::local(what.display().to_string(), &e)
}

/// Deterministic pseudo-random bytes (xorshift), so runs are comparable.
fn fill_random(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn build_dataset(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("shards"))?;
    std::fs::create_dir_all(root.join("ckpt"))?;
    for i in 0..SHARDS {
        let mut f = std::fs::File::create(root.join(format!("shards/shard-{i:04}.jsonl")))?;
        for j in 0..120 {
            writeln!(
                f,
                "{{\"id\": {}, \"text\": \"sample {j} of shard {i}: the quick brown fox jumps over the lazy dog\", \"label\": {}}}",
                i * 1000 + j,
                (i + j) % 7
            )?;
        }
    }
    let mut ckpt = vec![0u8; CKPT_SIZE];
    fill_random(&mut ckpt, 0x5eed);
    std::fs::write(root.join("ckpt/model.safetensors"), &ckpt)?;
    std::fs::write(
        root.join("README.txt"),
        "A sample dataset made by `ferry demo`.\n",
    )?;
    Ok(())
}

/// Changes about 1% of the dataset: scattered 64 KiB regions of the checkpoint,
/// two shards appended to, one new shard.
fn change_one_percent(root: &Path) -> std::io::Result<u64> {
    let ckpt = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("ckpt/model.safetensors"))?;
    let mut region = vec![0u8; 64 << 10];
    let regions = CKPT_SIZE / 100 / region.len() + 1;
    for i in 0..regions {
        fill_random(&mut region, 1000 + i as u64);
        let offset = (CKPT_SIZE / regions) * i + 12345;
        ckpt.write_all_at(&region, offset as u64)?;
    }
    for i in [3, 150] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join(format!("shards/shard-{i:04}.jsonl")))?;
        writeln!(f, "{{\"id\": -1, \"text\": \"appended\", \"label\": 0}}")?;
    }
    std::fs::write(root.join("shards/shard-new.jsonl"), "{\"id\": 0}\n")?;
    Ok((regions * region.len()) as u64)
}

/// BLAKE3 of every file under `root`, by relative path.
fn tree_hashes(root: &Path) -> std::io::Result<Vec<(PathBuf, [u8; 32])>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let h = crate::fs::scan::hash_file(&p)?;
                out.push((p.strip_prefix(root).unwrap_or(&p).to_path_buf(), h));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A size in the units the demo speaks throughout (powers of 1024, as the
/// checkpoint's `48 MiB`).
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1024.0;
        unit = u;
        if v < 1024.0 {
            break;
        }
    }
    format!("{v:.2} {unit}")
}

/// Regular files under `root` (what "files" means in every line the demo
/// prints; directories are not counted).
fn count_files(root: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The outcome, and how many regular files were sent.
fn push(src: &Path, dest: &Path) -> Result<(Outcome, u64), TransferError> {
    let exe = std::env::current_exe().map_err(|e| local(e, Path::new("current_exe")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["serve", "--stdio"]);
    let mut s = src.as_os_str().as_bytes().to_vec();
    s.push(b'/');
    let options = Options {
        recursive: true,
        links: true,
        perms: true,
        times: true,
        partial: true,
        // an event a file, to count the files sent
        file_events: true,
        ..Default::default()
    };
    let sent = std::sync::atomic::AtomicU64::new(0);
    let count = |e: crate::proto::Event| {
        use crate::proto::{item::Item, Report};
        let file = match e.report() {
            Report::Itemized { item, .. } => {
                item.has(Item::SENT) && !item.has(Item::DIR | Item::SYMLINK)
            }
            Report::Updated { name, detail, .. } => !name.ends_with(b"/") && detail.is_empty(),
            _ => false,
        };
        if file {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let o = push_to_command(
        cmd,
        vec![s],
        dest.as_os_str().as_bytes().to_vec(),
        options,
        &count,
        &Cancel::default(),
    )?;
    Ok((o, sent.into_inner()))
}

fn report(what: &str, (o, sent): &(Outcome, u64), files: u64) {
    let s = &o.summary;
    outln!(
        "{what}: {sent} of {files} files sent, {} literal, {} reused, {} on the wire",
        size(s.literal),
        size(s.reused),
        size(o.sent + o.received)
    );
}

pub fn run(a: DemoArgs) -> Result<i32, TransferError> {
    let (root, temporary) = match a.dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())),
            true,
        ),
    };
    let result = run_in(&root);
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn run_in(root: &Path) -> Result<i32, TransferError> {
    let src = root.join("dataset");
    let dst = root.join("replica");
    outln!(
        "building a sample dataset in {} ({SHARDS} JSONL shards, a {} MiB checkpoint)",
        src.display(),
        CKPT_SIZE >> 20
    );
    build_dataset(&src).map_err(|e| local(e, &src))?;

    let first = push(&src, &dst)?;
    report(
        "first sync ",
        &first,
        count_files(&src).map_err(|e| local(e, &src))?,
    );

    let changed = change_one_percent(&src).map_err(|e| local(e, &src))?;
    outln!(
        "changed {} of the checkpoint in scattered 64 KiB regions, appended to 2 shards, added 1",
        size(changed)
    );
    let second = push(&src, &dst)?;
    report(
        "second sync",
        &second,
        count_files(&src).map_err(|e| local(e, &src))?,
    );
    let second = second.0;
    let total = second.summary.literal + second.summary.reused;
    if total > 0 {
        outln!(
            "  reused {:.1}% of the changed files' bytes from the old copies",
            second.summary.reused as f64 * 100.0 / total as f64
        );
    }
    let a = tree_hashes(&src).map_err(|e| local(e, &src))?;
    let b = tree_hashes(&dst).map_err(|e| local(e, &dst))?;
    if a != b {
        eprintln!("ferry demo: the replica differs from the dataset");
        return Ok(exit::PARTIAL);
    }
    outln!(
        "verified: replica identical to the dataset ({} files, BLAKE3)",
        a.len()
    );
    Ok(exit::OK)
}
