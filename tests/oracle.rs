//! rsync as the oracle: for each scenario, ferry's destination must equal what
//! rsync makes of the same starting point and the same flags (contents, modes,
//! mtimes, link targets), locally and through a real sshd.

mod util;
use std::path::Path;
use util::*;

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    /// `src/` (contents) rather than `src` (the directory itself).
    contents: bool,
    /// Compare mtimes (off where the flags do not preserve them).
    times: bool,
    build: fn(src: &Path, dst: &Path),
}

fn base_tree(src: &Path) {
    write(&src.join("a.txt"), "alpha\n");
    write(&src.join("data/shard-1.jsonl"), "{\"x\":1}\n".repeat(500));
    write(&src.join("data/shard-2.jsonl"), "{\"x\":2}\n".repeat(700));
    write(&src.join("ckpt/w.bin"), random_bytes(200_000, 3));
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

fn dir_times(root: &Path) {
    for d in ["data", "ckpt", "empty", "empty/nested"] {
        if root.join(d).is_dir() {
            set_mtime(&root.join(d), 1_650_000_000);
        }
    }
}

const CASES: &[Case] = &[
    Case {
        name: "new tree",
        args: &["-a"],
        contents: true,
        times: true,
        build: |s, _| base_tree(s),
    },
    Case {
        name: "no trailing slash",
        args: &["-a"],
        contents: false,
        times: true,
        build: |s, _| base_tree(s),
    },
    Case {
        name: "changed files",
        args: &["-a"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(d);
            base_tree(s);
            write(&s.join("a.txt"), "alpha, longer now\n");
            set_mtime(&s.join("a.txt"), 1_700_000_000);
            write(&s.join("ckpt/w.bin"), random_bytes(150_000, 4));
            set_mtime(&s.join("ckpt/w.bin"), 1_700_000_100);
            write(&s.join("data/new.jsonl"), "{}\n");
            set_mtime(&s.join("data/new.jsonl"), 1_700_000_200);
        },
    },
    Case {
        name: "delete",
        args: &["-a", "--delete"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(s);
            base_tree(d);
            write(&d.join("stale.bin"), "x");
            write(&d.join("gone/deep/file"), "x");
            write(&d.join("data/old.jsonl"), "x");
            dir_times(d);
        },
    },
    Case {
        name: "symlinks",
        args: &["-a"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(s);
            std::os::unix::fs::symlink("a.txt", s.join("to-a")).unwrap();
            std::os::unix::fs::symlink("../a.txt", s.join("data/up")).unwrap();
            std::os::unix::fs::symlink("ckpt", s.join("dirlink")).unwrap();
            // a stale link in the destination is replaced
            std::fs::create_dir_all(d).unwrap();
            std::os::unix::fs::symlink("elsewhere", d.join("to-a")).unwrap();
        },
    },
    Case {
        name: "permissions",
        args: &["-a"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(s);
            chmod(&s.join("a.txt"), 0o600);
            chmod(&s.join("ckpt/w.bin"), 0o755);
            chmod(&s.join("data"), 0o750);
            base_tree(d);
            chmod(&d.join("data/shard-1.jsonl"), 0o666);
        },
    },
    Case {
        name: "update skips newer receiver files",
        args: &["-au"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(s);
            base_tree(d);
            write(&d.join("a.txt"), "edited on the receiver, later\n");
            set_mtime(&d.join("a.txt"), 1_800_000_000);
            write(&s.join("data/shard-1.jsonl"), "changed at the source\n");
            set_mtime(&s.join("data/shard-1.jsonl"), 1_700_000_000);
        },
    },
    Case {
        name: "dry run",
        args: &["-an", "--delete"],
        contents: true,
        times: true,
        build: |s, d| {
            base_tree(s);
            write(&d.join("stale"), "x");
        },
    },
    Case {
        name: "excludes",
        args: &[
            "-a",
            "--exclude",
            "*.bin",
            "--exclude",
            "empty/",
            "--include",
            "shard-1.jsonl",
            "--exclude",
            "shard-*",
        ],
        contents: true,
        times: true,
        build: |s, _| base_tree(s),
    },
    Case {
        name: "recursive without times or perms",
        args: &["-r"],
        contents: true,
        times: false,
        build: |s, _| {
            base_tree(s);
            chmod(&s.join("a.txt"), 0o751);
        },
    },
];

fn prepare(case: &Case, root: &Path) -> std::path::PathBuf {
    let src = root.join("src");
    let init = root.join("init");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&init).unwrap();
    (case.build)(&src, &init);
    src
}

fn src_arg(case: &Case, src: &Path) -> String {
    if case.contents {
        format!("{}/", src.display())
    } else {
        src.display().to_string()
    }
}

enum Via<'a> {
    Local,
    Ssh(&'a Sshd),
    /// A daemon whose module "tmp" is the temporary directory.
    Daemon(&'a Daemon),
}

fn run_cases(via: Via) {
    for case in CASES {
        let t = tmp();
        let src = prepare(case, t.path());
        let (by_rsync, by_ferry) = (t.path().join("by-rsync"), t.path().join("by-ferry"));
        clone_tree(&t.path().join("init"), &by_rsync);
        clone_tree(&t.path().join("init"), &by_ferry);
        let mut args: Vec<String> = case.args.iter().map(|s| s.to_string()).collect();
        let mut rs = args.clone();
        rs.extend([src_arg(case, &src), format!("{}/", by_rsync.display())]);
        rsync(&rs);
        args.insert(0, "sync".into());
        let dest = match &via {
            Via::Ssh(sshd) => {
                args.extend(sshd.args());
                format!("{}/", sshd.remote(&by_ferry))
            }
            Via::Daemon(d) => {
                args.extend(d.client_args());
                let rel = by_ferry.strip_prefix(std::env::temp_dir()).unwrap();
                d.url(&format!("tmp/{}/", rel.display()))
            }
            Via::Local => format!("{}/", by_ferry.display()),
        };
        args.extend([src_arg(case, &src), dest]);
        let o = ferry(&args);
        assert!(
            o.status.success(),
            "{}: ferry failed: {}",
            case.name,
            stderr(&o)
        );
        let (a, b) = (
            snapshot(&by_rsync, case.times),
            snapshot(&by_ferry, case.times),
        );
        // rsync compares (and so only sets) times to the whole second, so the
        // oracle is only exact to the second; ferry against its source is
        // checked to the nanosecond elsewhere
        let strip = |m: std::collections::BTreeMap<Vec<u8>, Node>| -> Vec<(Vec<u8>, Node)> {
            let t = |(s, _): (i64, i64)| if case.times { (s, 0) } else { (0, 0) };
            m.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Node::File { mode, mtime, hash } => Node::File {
                            mode,
                            mtime: t(mtime),
                            hash,
                        },
                        Node::Dir { mode, mtime } => Node::Dir {
                            mode,
                            mtime: t(mtime),
                        },
                        other => other,
                    };
                    (k, v)
                })
                .collect()
        };
        assert_eq!(
            strip(a),
            strip(b),
            "scenario {:?}: ferry differs from rsync",
            case.name
        );
    }
}

#[test]
fn local_sync_matches_rsync() {
    run_cases(Via::Local);
}

#[test]
fn daemon_sync_matches_rsync() {
    let d = Daemon::start(&[("tmp", &std::env::temp_dir(), false)], "", &[]);
    run_cases(Via::Daemon(&d));
}

#[test]
fn ssh_sync_matches_rsync() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    run_cases(Via::Ssh(&sshd));
}
