//! Peak memory a user would see (RSS, as GNU time reports it) does not grow
//! with the number of files in a tree: the sender lists at most a fixed
//! number of entries ahead of the receiver, and both let go of entries once
//! they are settled.

mod util;
use std::path::Path;
use util::*;

/// Runs ferry under GNU time; returns its peak RSS in KiB.
fn peak_rss(args: &[&Path]) -> u64 {
    let t = tmp();
    let rss = t.path().join("rss");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(ferry_bin())
        .env("FERRY_CACHE_DIR", "")
        .args(["sync", "-a"])
        .args(args)
        .output()
        .unwrap();
    ok(out);
    let kib = std::fs::read_to_string(&rss).unwrap();
    kib.trim().lines().last().unwrap().parse().unwrap()
}

/// A tree of `n` small files in directories of 1,000.
fn tree(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("sample-{i:06}.json")),
            format!("{{\"id\": {i}}}\n"),
        )
        .unwrap();
    }
}

#[test]
fn memory_does_not_grow_with_the_number_of_files() {
    let t = tmp();
    let mut peaks = Vec::new();
    for n in [10_000, 40_000] {
        let (src, dst) = (
            t.path().join(format!("src{n}")),
            t.path().join(format!("dst{n}")),
        );
        tree(&src, n);
        let (from, to) = (src.join(""), dst.join(""));
        let fresh = peak_rss(&[&from, &to]);
        let unchanged = peak_rss(&[&from, &to]);
        eprintln!("{n} files: peak RSS fresh {fresh} KiB, unchanged {unchanged} KiB");
        assert_same_tree(&src, &dst, false);
        peaks.push(fresh.max(unchanged));
    }
    // before, every entry stayed on both sides: ~300 bytes a file, 9 MiB
    // more here; now what grows is a 64-bit fingerprint of each name
    assert!(
        peaks[1] <= peaks[0] + 2 * 1024,
        "peak RSS {} KiB for 40,000 files vs {} KiB for 10,000",
        peaks[1],
        peaks[0]
    );
}
