//! `--json` on sync, cp and ls: every stdout line is one JSON object valid
//! against `docs/json-schema.json` (the schema the README links; the README's
//! table is checked to name every field it defines), the file lines name each
//! file once with its size, wire bytes and check value, the summary carries
//! the same numbers as `--stats`, and errors carry their category and exit
//! code. Driven locally, over a real sshd, against a real daemon and (for
//! `ls`) a real S3 server.

mod util;

#[path = "util/json_schema.rs"]
mod json_schema;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use util::*;

/// `docs/json-schema.json`, read once.
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(json_schema::load)
}

/// Every line of `out` parsed and validated against the schema.
#[track_caller]
fn lines(out: &str) -> Vec<Value> {
    assert!(!out.is_empty(), "no output");
    out.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            let errs = json_schema::errors(schema(), &v);
            assert!(
                errs.is_empty(),
                "line breaks docs/json-schema.json: {l}\n{errs:#?}"
            );
            v
        })
        .collect()
}

/// A tree: regular files of several sizes (one empty), a directory, a link.
fn tree(root: &Path) -> BTreeMap<String, u64> {
    let files = [
        ("a.txt", 11usize),
        ("empty", 0),
        ("ckpt/model.bin", 300_000),
        ("ckpt/deep/x.json", 1234),
    ];
    for (i, (name, n)) in files.iter().enumerate() {
        write(&root.join(name), random_bytes(*n, i as u64 + 1));
    }
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    files
        .iter()
        .map(|(n, s)| (n.to_string(), *s as u64))
        .collect()
}

/// Checks the lines of a first sync of `tree` into an empty destination.
#[track_caller]
fn check_first_sync(out: &str, want: &BTreeMap<String, u64>) {
    let v = lines(out);
    let files: Vec<&Value> = v.iter().filter(|l| l["kind"] == "file").collect();
    let mut seen = BTreeMap::new();
    for f in files.iter().filter(|f| f["type"] == "file") {
        assert_eq!(f["action"], "updated");
        let name = f["name"].as_str().unwrap().to_string();
        let size = f["size"].as_u64().unwrap();
        assert!(seen.insert(name.clone(), size).is_none(), "{name} twice");
    }
    assert_eq!(&seen, want, "{out}");
    let link: Vec<_> = files.iter().filter(|f| f["type"] == "symlink").collect();
    assert_eq!(link.len(), 1, "{out}");
    assert_eq!(link[0]["name"], "link");
    assert_eq!(link[0]["target"], "a.txt");
    assert!(files
        .iter()
        .any(|f| f["type"] == "dir" && f["name"] == "ckpt/deep"));
    // the summary comes last and adds up
    let s = v.last().unwrap();
    assert_eq!(s["kind"], "summary", "{out}");
    assert_eq!(v.iter().filter(|l| l["kind"] == "summary").count(), 1);
    let total: u64 = want.values().sum();
    assert_eq!(s["total_size"], total, "{out}");
    assert_eq!(s["literal"], total, "{out}");
    assert_eq!(s["matched"], 0);
    assert_eq!(s["transferred"], files.len() as u64, "{out}");
    // entries: the root, the two directories, the files and the link
    assert_eq!(s["files"], want.len() as u64 + 4, "{out}");
    assert_eq!(s["errors"], 0);
    assert_eq!(s["exit_code"], 0);
    assert!(s["sent"].as_u64().unwrap() > total, "{out}");
    assert!(!v.iter().any(|l| l["kind"] == "error"), "{out}");
}

#[test]
fn local_sync_json() {
    let t = tmp();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let want = tree(&src);
    let o = ok(ferry([
        "sync",
        "-a",
        "--json",
        &format!("{}/", src.display()),
        &dst.display().to_string(),
    ]));
    check_first_sync(&stdout(&o), &want);
    assert_same_tree(&src, &dst, true);

    // again after changing one file: one file line, reused data in the summary
    let mut data = random_bytes(300_000, 3);
    data[100] ^= 1;
    write(&src.join("ckpt/model.bin"), &data);
    std::fs::remove_file(src.join("empty")).unwrap();
    let o = ok(ferry([
        "sync",
        "-a",
        "--delete",
        "--json",
        &format!("{}/", src.display()),
        &dst.display().to_string(),
    ]));
    let out = stdout(&o);
    let v = lines(&out);
    let changed: Vec<_> = v
        .iter()
        .filter(|l| l["kind"] == "file" && l["type"] == "file")
        .collect();
    let updated: Vec<_> = changed
        .iter()
        .filter(|l| l["action"] == "updated")
        .collect();
    assert_eq!(updated.len(), 1, "{out}");
    assert_eq!(updated[0]["name"], "ckpt/model.bin");
    assert_eq!(updated[0]["size"], 300_000);
    assert!(
        changed
            .iter()
            .any(|l| l["action"] == "deleted" && l["name"] == "empty"),
        "{out}"
    );
    let s = v.last().unwrap();
    assert_eq!(s["deleted"], 1, "{out}");
    assert!(
        s["matched"].as_u64().unwrap() > 0,
        "delta reused nothing: {out}"
    );
    assert_eq!(
        s["literal"].as_u64().unwrap() + s["matched"].as_u64().unwrap(),
        300_000,
        "{out}"
    );
    assert_same_tree(&src, &dst, true);
}

#[test]
fn daemon_sync_and_ls_json() {
    let t = tmp();
    let (src, module) = (t.path().join("src"), t.path().join("module"));
    std::fs::create_dir(&module).unwrap();
    let want = tree(&src);
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args = vec![
        "sync".to_string(),
        "-a".into(),
        "--json".into(),
        format!("{}/", src.display()),
        d.url("data/run1/"),
    ];
    args.extend(d.client_args());
    let o = ok(ferry(&args));
    check_first_sync(&stdout(&o), &want);
    assert_same_tree(&src, &module.join("run1"), true);

    let mut args = vec!["ls".to_string(), "--json".into(), d.url("data/run1/")];
    args.extend(d.client_args());
    let out = stdout(&ok(ferry(&args)));
    let v = lines(&out);
    assert!(v.iter().all(|l| l["kind"] == "entry"), "{out}");
    let a = v
        .iter()
        .find(|l| l["name"] == "a.txt")
        .expect("a.txt listed");
    assert_eq!(a["size"], 11);
    assert_eq!(a["type"], "file");
    let link = v.iter().find(|l| l["name"] == "link").expect("link listed");
    assert_eq!(link["target"], "a.txt");
    assert!(v.iter().any(|l| l["name"] == "ckpt" && l["type"] == "dir"));

    let mut args = vec!["ls".to_string(), "--json".into(), d.url("")];
    args.extend(d.client_args());
    let out = stdout(&ok(ferry(&args)));
    let v = lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(v[0]["kind"], "module");
    assert_eq!(v[0]["name"], "data");
    assert_eq!(v[0]["read_only"], false);
}

#[test]
fn ssh_sync_json() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let src = t.path().join("src");
    let want = tree(&src);
    let remote = t.path().join("remote");
    let mut args = vec!["sync".to_string(), "-a".into(), "--json".into()];
    args.extend(sshd.args());
    args.extend([format!("{}/", src.display()), sshd.remote(&remote)]);
    let o = ok(ferry(&args));
    check_first_sync(&stdout(&o), &want);
    assert_same_tree(&src, &remote, true);
}

#[test]
fn cp_json() {
    let t = tmp();
    let src = t.path().join("weights.bin");
    write(&src, random_bytes(70_000, 9));
    let dst = t.path().join("copy.bin");
    let o = ok(ferry([
        "cp",
        "--json",
        &src.display().to_string(),
        &dst.display().to_string(),
    ]));
    let out = stdout(&o);
    let v = lines(&out);
    assert_eq!(v.len(), 2, "{out}");
    assert_eq!(v[0]["kind"], "file");
    // the name the sender lists: the source's, for a single file
    assert_eq!(v[0]["name"], "weights.bin");
    assert_eq!(v[0]["size"], 70_000);
    assert_eq!(v[1]["kind"], "summary");
    assert_eq!(v[1]["total_size"], 70_000);
    assert_eq!(v[1]["transferred"], 1);
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn missing_source_is_an_error_line_with_its_code() {
    let t = tmp();
    let missing = t.path().join("nope");
    let dst = t.path().join("dst");
    let o = ferry([
        "sync",
        "-a",
        "--json",
        &missing.display().to_string(),
        &dst.display().to_string(),
    ]);
    let out = stdout(&o);
    let v = lines(&out);
    let code = o.status.code().expect("exit code");
    assert_eq!(code, 23, "{out}");
    let err = v
        .iter()
        .find(|l| l["kind"] == "error")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    assert_eq!(err["category"], "file");
    assert_eq!(err["exit_code"], code);
    assert_eq!(err["fatal"], false);
    assert!(err["text"].as_str().unwrap().contains("nope"), "{out}");
    let s = v.last().unwrap();
    assert_eq!(s["kind"], "summary");
    assert_eq!(s["errors"], 1);
    assert_eq!(s["exit_code"], code);
    assert!(!dst.exists());
}

#[test]
fn fatal_error_is_a_json_line_with_category_and_exit_code() {
    // nothing listens on this port: the connection is refused at once
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = tmp();
    write(&t.path().join("f"), b"x");
    let cfg = t.path().join("cfg").display().to_string();
    ok(ferry(["keygen", "--config-dir", &cfg]));
    let o = ferry([
        "sync".to_string(),
        "--json".into(),
        t.path().join("f").display().to_string(),
        format!("ferry://127.0.0.1:{port}/m/f"),
        "--config-dir".into(),
        cfg,
    ]);
    let out = stdout(&o);
    let v = lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    let code = o.status.code().expect("exit code");
    assert_ne!(code, 0);
    assert_eq!(v[0]["kind"], "error");
    assert_eq!(v[0]["fatal"], true);
    assert_eq!(v[0]["category"], "connection", "{out}");
    assert_eq!(v[0]["exit_code"], code);
    // the human line stays on stderr
    assert!(stderr(&o).starts_with("ferry: "), "{}", stderr(&o));
}

/// Issue 24: each file line carries the bytes of the file's data that
/// crossed the wire and the check value it was verified with; a file sent
/// whole shows the XXH3-128 of its bytes, one rebuilt from the old copy a
/// keyed check and fewer bytes on the wire than its size.
#[test]
fn file_lines_carry_wire_bytes_and_check_value() {
    let t = tmp();
    let src = t.path().join("src");
    let data = random_bytes(600_000, 5);
    write(&src.join("model.bin"), &data);
    write(&src.join("empty"), "");
    std::os::unix::fs::symlink("model.bin", src.join("latest")).unwrap();
    let dst = t.path().join("dst");
    let run = || {
        let o = ok(ferry([
            "sync".to_string(),
            "-a".into(),
            "--json".into(),
            format!("{}/", src.display()),
            format!("{}/", dst.display()),
        ]));
        lines(&stdout(&o))
    };
    let find = |ls: &[Value], name: &str| -> Value {
        ls.iter()
            .find(|l| l["kind"] == "file" && l["name"] == name)
            .unwrap_or_else(|| panic!("no line for {name}: {ls:?}"))
            .clone()
    };
    let first = run();
    let m = find(&first, "model.bin");
    assert_eq!(m["wire"], 600_000, "{m}");
    let want = format!("xxh128:{:032x}", xxhash_rust::xxh3::xxh3_128(&data));
    assert_eq!(m["check"], want.as_str(), "{m}");
    let e = find(&first, "empty");
    assert_eq!(e["wire"], 0, "{e}");
    assert_eq!(
        e["check"],
        format!("xxh128:{:032x}", xxhash_rust::xxh3::xxh3_128(b"")).as_str()
    );
    let l = find(&first, "latest");
    assert_eq!(l["wire"], 0, "{l}");
    assert!(l.get("check").is_none(), "{l}");
    // change a little in the middle: rebuilt from the old copy
    let mut changed = data.clone();
    changed[300_000..300_100].fill(7);
    write(&src.join("model.bin"), &changed);
    let second = run();
    let m = find(&second, "model.bin");
    let wire = m["wire"].as_u64().unwrap();
    assert!(wire > 0 && wire < 300_000, "{m}");
    let check = m["check"].as_str().unwrap();
    assert!(
        check.starts_with("blake3-keyed:") && check.len() == "blake3-keyed:".len() + 64,
        "{m}"
    );
    assert_eq!(std::fs::read(dst.join("model.bin")).unwrap(), changed);
}

/// The schema can fail: lines a script must not be given are rejected, each
/// for the reason the README states.
#[test]
fn schema_rejects_what_the_readme_rules_out() {
    let good = json!({"v": 1, "kind": "file", "action": "updated", "name": "a", "type": "file",
        "size": 3, "wire": 3, "check": format!("xxh128:{}", "0".repeat(32))});
    assert_eq!(json_schema::errors(schema(), &good), Vec::<String>::new());
    // (what, field, its new value; None: the field removed)
    let cases = [
        ("no version", "v", None),
        ("version 2", "v", Some(json!(2))),
        ("unknown kind", "kind", Some(json!("files"))),
        ("updated file without check", "check", None),
        ("updated without wire", "wire", None),
        ("size as text", "size", Some(json!("3"))),
        ("negative size", "size", Some(json!(-1))),
        ("bad check", "check", Some(json!("md5:00"))),
        ("unknown action", "action", Some(json!("moved"))),
        ("symlink without target", "type", Some(json!("symlink"))),
    ];
    for (what, field, value) in cases {
        let mut v = good.clone();
        match value {
            Some(x) => v[field] = x,
            None => drop(v.as_object_mut().unwrap().remove(field)),
        }
        assert!(
            !json_schema::errors(schema(), &v).is_empty(),
            "{what} passed the schema"
        );
    }
    let summary = json!({"v": 1, "kind": "summary", "files": 1, "transferred": 1, "deleted": 0,
        "total_size": 0, "literal": 0, "matched": 0, "sent": 1, "received": 1, "errors": 0,
        "delete_skipped": false, "dry_run": false});
    let errs = json_schema::errors(schema(), &summary);
    assert!(errs.iter().any(|e| e.contains("exit_code")), "{errs:?}");
    let file_error = json!({"v": 1, "kind": "error", "fatal": false, "name": "a",
        "category": "connection", "exit_code": 23, "text": "x"});
    assert!(!json_schema::errors(schema(), &file_error).is_empty());
}

/// The README's table and the schema file describe the same fields: every
/// kind the schema defines has a row, and the row names every field of it.
#[test]
fn readme_table_names_every_schema_field() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### `--json`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a `--json` section");
    assert!(
        section.contains("docs/json-schema.json"),
        "the README's JSON section does not link the schema"
    );
    let rows: BTreeMap<String, String> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | `kind` | when | fields |
            let kind = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((kind.to_string(), cells.get(3)?.to_string()))
        })
        .collect();
    let branches = schema()["oneOf"].as_array().unwrap();
    let kinds = schema()["properties"]["kind"]["enum"].as_array().unwrap();
    assert_eq!(branches.len(), kinds.len());
    for b in branches {
        let kind = b["properties"]["kind"]["const"].as_str().unwrap();
        assert!(kinds.contains(&json!(kind)), "{kind} not in the kind enum");
        let row = rows
            .get(kind)
            .unwrap_or_else(|| panic!("README's JSON table has no row for {kind}"));
        for field in b["properties"].as_object().unwrap().keys() {
            if field != "kind" {
                assert!(
                    row.contains(&format!("`{field}`")),
                    "README's row for {kind} does not name `{field}`"
                );
            }
        }
    }
}

/// A source and a destination that a `sync -a --delete` changes in every
/// way `--stats` counts: unchanged files, a file rebuilt from the old copy,
/// new files, a deleted file and a deleted directory with a file in it.
fn stats_scene(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (src, base) = (root.join("src"), root.join("base"));
    let old = random_bytes(400_000, 21);
    for (name, n, seed) in [("keep/a.bin", 50_000, 22), ("keep/b.txt", 900, 23)] {
        let data = random_bytes(n, seed);
        write(&src.join(name), &data);
        write(&base.join(name), &data);
        set_mtime(&src.join(name), 1_600_000_000);
        set_mtime(&base.join(name), 1_600_000_000);
    }
    let mut new = old.clone();
    new[200_000..200_050].fill(1);
    write(&src.join("model.bin"), &new);
    write(&base.join("model.bin"), &old);
    set_mtime(&src.join("model.bin"), 1_700_000_000);
    set_mtime(&base.join("model.bin"), 1_600_000_000);
    write(&src.join("fresh/x.json"), random_bytes(3_000, 24));
    write(&src.join("empty"), "");
    write(&base.join("stale.bin"), random_bytes(2_000, 25));
    write(&base.join("gone/old.txt"), random_bytes(10, 26));
    (src, base)
}

/// `--stats` output as the summary line's names.
fn stats_numbers(out: &str) -> BTreeMap<&'static str, u64> {
    let get = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_end_matches(" bytes").parse().unwrap())
            .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
    };
    BTreeMap::from([
        ("files", get("Number of files:")),
        ("transferred", get("Number of files transferred:")),
        ("deleted", get("Number of deleted files:")),
        ("total_size", get("Total file size:")),
        ("literal", get("Literal data:")),
        ("matched", get("Matched data:")),
        ("sent", get("Total bytes sent:")),
        ("received", get("Total bytes received:")),
    ])
}

/// Runs `sync -a --delete --stats -i` into one copy of the destination and
/// `sync -a --delete --json` into another, identical one (`dest(i)` names
/// them with names of the same length; `fresh()` makes both again from the
/// same base), and checks the summary carries every `--stats` number
/// unchanged.
///
/// Both runs exchange the same bytes but one kind of message: the overall
/// progress a receiver sends a remote client at most every 100 ms, so
/// `received` may differ by such a message between two runs. Every other
/// number must match in every attempt; an attempt where `received` matches
/// too is required within five.
#[track_caller]
fn summary_equals_stats(
    src: &Path,
    extra: &[String],
    dest: impl Fn(usize) -> String,
    fresh: impl Fn(),
) {
    let run = |flags: &[&str], to: String| {
        let mut args = vec!["sync".to_string(), "-a".into(), "--delete".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(extra.iter().cloned());
        args.extend([format!("{}/", src.display()), to]);
        stdout(&ok(ferry(&args)))
    };
    let mut attempts = Vec::new();
    for _ in 0..5 {
        fresh();
        // (`-i` asks the peer for the same per-file reports `--json` does)
        let human = run(&["--stats", "-i"], dest(1));
        let out = run(&["--json"], dest(2));
        let want = stats_numbers(&human);
        let v = lines(&out);
        let s = v.last().unwrap();
        assert_eq!(s["kind"], "summary", "{out}");
        let got: BTreeMap<&'static str, u64> = want
            .keys()
            .map(|k| (*k, s[*k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"))))
            .collect();
        fn without(m: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
            let mut m = m.clone();
            m.remove("received");
            m
        }
        assert_eq!(
            without(&got),
            without(&want),
            "--json summary vs --stats:\n{out}\n{human}"
        );
        // the scene exercises each number
        assert_eq!(want["deleted"], 2, "{human}");
        assert!(want["matched"] > 0 && want["literal"] > 0, "{human}");
        assert!(want["transferred"] < want["files"], "{human}");
        // and the file lines agree with the summary
        let updated = v
            .iter()
            .filter(|l| l["kind"] == "file" && l["action"] == "updated")
            .count() as u64;
        assert_eq!(updated, want["transferred"], "{out}");
        if got == want {
            return;
        }
        attempts.push((got, want));
    }
    panic!("`received` never matched --stats in five attempts: {attempts:#?}");
}

#[test]
fn summary_equals_stats_over_ssh() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let (src, base) = stats_scene(t.path());
    let fresh = || {
        for i in [1, 2] {
            let d = t.path().join(format!("dst{i}"));
            let _ = std::fs::remove_dir_all(&d);
            clone_tree(&base, &d);
        }
    };
    summary_equals_stats(
        &src,
        &sshd.args(),
        |i| sshd.remote(&t.path().join(format!("dst{i}"))),
        fresh,
    );
    assert_same_tree(&src, &t.path().join("dst1"), true);
    assert_same_tree(&src, &t.path().join("dst2"), true);
}

#[test]
fn summary_equals_stats_to_the_daemon() {
    let t = tmp();
    let (src, base) = stats_scene(t.path());
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let fresh = || {
        for i in [1, 2] {
            let d = module.join(format!("dst{i}"));
            let _ = std::fs::remove_dir_all(&d);
            clone_tree(&base, &d);
        }
    };
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    summary_equals_stats(
        &src,
        &d.client_args(),
        |i| d.url(&format!("data/dst{i}/")),
        fresh,
    );
    assert_same_tree(&src, &module.join("dst1"), true);
    assert_same_tree(&src, &module.join("dst2"), true);
}

/// The bytes of `cp -r` of `tree`, the link followed as scp follows it.
#[track_caller]
fn check_cp_copy(src: &Path, copy: &Path) {
    for name in ["a.txt", "empty", "ckpt/model.bin", "ckpt/deep/x.json"] {
        assert_eq!(
            std::fs::read(copy.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read(copy.join("link")).unwrap(),
        std::fs::read(src.join("a.txt")).unwrap()
    );
}

/// Checks `cp -r --json` of `tree` (copied as `DEST/src/...`): a line per
/// file with its size, wire bytes and check value, and a summary that
/// counts them.
#[track_caller]
fn check_cp_tree(out: &str, src: &Path, want: &BTreeMap<String, u64>) {
    let v = lines(out);
    let mut seen = BTreeMap::new();
    for f in v
        .iter()
        .filter(|l| l["kind"] == "file" && l["type"] == "file")
    {
        assert_eq!(f["action"], "updated", "{out}");
        let name = f["name"].as_str().unwrap();
        // names are relative to the transfer root: the copied directory
        let rel = name
            .strip_prefix("src/")
            .unwrap_or_else(|| panic!("{name} not under src/: {out}"));
        let data = std::fs::read(src.join(rel)).unwrap();
        assert_eq!(f["size"], data.len() as u64, "{f}");
        assert_eq!(f["wire"], data.len() as u64, "{f}");
        let check = format!("xxh128:{:032x}", xxhash_rust::xxh3::xxh3_128(&data));
        assert_eq!(f["check"], check.as_str(), "{f}");
        assert!(seen.insert(rel.to_string(), data.len() as u64).is_none());
    }
    // cp follows the link, as scp does: it arrives as a copy of a.txt
    let mut want = want.clone();
    want.insert("link".into(), 11);
    assert_eq!(seen, want, "{out}");
    let s = v.last().unwrap();
    assert_eq!(s["kind"], "summary", "{out}");
    let total: u64 = want.values().sum();
    assert_eq!(s["total_size"], total, "{out}");
    assert_eq!(s["literal"], total, "{out}");
    let updated = v.iter().filter(|l| l["kind"] == "file").count() as u64;
    assert_eq!(s["transferred"], updated, "{out}");
    // src, src/ckpt, src/ckpt/deep and five files
    assert_eq!(s["files"], want.len() as u64 + 3, "{out}");
    assert_eq!(
        (s["errors"].as_u64(), s["exit_code"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(!v.iter().any(|l| l["kind"] == "error"), "{out}");
}

fn cp_json_args(src: &Path, to: String, extra: &[String]) -> Vec<String> {
    let mut args = vec!["cp".to_string(), "-rp".into(), "--json".into()];
    args.extend(extra.iter().cloned());
    args.extend([src.display().to_string(), to]);
    args
}

#[test]
fn cp_r_json_locally() {
    let t = tmp();
    let src = t.path().join("src");
    let want = tree(&src);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = ok(ferry(cp_json_args(&src, dst.display().to_string(), &[])));
    check_cp_tree(&stdout(&o), &src, &want);
    check_cp_copy(&src, &dst.join("src"));
}

#[test]
fn cp_r_json_over_ssh() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let src = t.path().join("src");
    let want = tree(&src);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = ok(ferry(cp_json_args(&src, sshd.remote(&dst), &sshd.args())));
    check_cp_tree(&stdout(&o), &src, &want);
    check_cp_copy(&src, &dst.join("src"));
}

#[test]
fn cp_r_json_to_the_daemon() {
    let t = tmp();
    let src = t.path().join("src");
    let want = tree(&src);
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = ok(ferry(cp_json_args(&src, d.url("data/"), &d.client_args())));
    check_cp_tree(&stdout(&o), &src, &want);
    check_cp_copy(&src, &module.join("src"));
}

/// `cp --json` of a source that does not exist: an error line with the
/// file's category and exit code 23, the process exits 23, nothing written.
#[test]
fn cp_json_missing_source_is_an_error_line() {
    let t = tmp();
    let missing = t.path().join("nope.bin");
    let dst = t.path().join("dst.bin");
    let o = ferry([
        "cp",
        "--json",
        &missing.display().to_string(),
        &dst.display().to_string(),
    ]);
    let out = stdout(&o);
    let v = lines(&out);
    assert_eq!(o.status.code(), Some(23), "{out}\n{}", stderr(&o));
    let err = v
        .iter()
        .find(|l| l["kind"] == "error")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    assert_eq!(err["category"], "file", "{out}");
    assert_eq!(err["exit_code"], 23, "{out}");
    assert!(err["text"].as_str().unwrap().contains("nope.bin"), "{out}");
    let s = v.last().unwrap();
    assert_eq!(s["kind"], "summary", "{out}");
    assert_eq!(
        (s["errors"].as_u64(), s["exit_code"].as_u64()),
        (Some(1), Some(23))
    );
    assert!(!dst.exists());
}

/// The same over ssh, the missing file on the remote: a file's error line
/// that names it, exit 23, and a summary counting the error.
#[test]
fn cp_json_missing_remote_source_over_ssh() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let dst = t.path().join("dst.bin");
    let mut args = vec!["cp".to_string(), "--json".into()];
    args.extend(sshd.args());
    args.extend([
        sshd.remote(&t.path().join("nope.bin")),
        dst.display().to_string(),
    ]);
    let o = ferry(&args);
    let out = stdout(&o);
    let v = lines(&out);
    let code = o.status.code().expect("exit code");
    assert_ne!(code, 0, "{out}");
    let err = v
        .iter()
        .find(|l| l["kind"] == "error")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    assert_eq!(err["exit_code"], code, "{out}");
    assert!(err["text"].as_str().unwrap().contains("nope.bin"), "{out}");
    assert_eq!(
        (code, &err["category"], &err["fatal"]),
        (23, &json!("file"), &json!(false)),
        "{out}"
    );
    let s = v.last().unwrap();
    assert_eq!(s["kind"], "summary", "{out}");
    assert_eq!(
        (s["errors"].as_u64(), s["exit_code"].as_u64()),
        (Some(1), Some(23))
    );
    assert!(!dst.exists());
}

/// `ls --json` of an S3 prefix (a real s3s-fs server): an entry per object
/// and one per "directory" under it, each valid against the schema, with
/// the modes, sizes and mtimes `cp -p` stored.
#[test]
fn s3_ls_json() {
    let t = tmp();
    let s3 = util::s3::S3Server::start(&t.path().join("s3"), &["bkt"]);
    let src = t.path().join("src");
    write(&src.join("a.bin"), random_bytes(5_000, 31));
    write(&src.join("sub/b.txt"), b"hello\n");
    chmod(&src.join("a.bin"), 0o640);
    chmod(&src.join("sub/b.txt"), 0o600);
    set_mtime(&src.join("a.bin"), 1_600_000_000);
    set_mtime(&src.join("sub/b.txt"), 1_600_000_100);
    ok(s3.ferry(&["cp", "-rp", src.to_str().unwrap(), "s3://bkt/run/ckpt"]));
    let out = stdout(&ok(s3.ferry(&["ls", "--json", "s3://bkt/run/ckpt/"])));
    let v = lines(&out);
    assert!(v.iter().all(|l| l["kind"] == "entry"), "{out}");
    let find = |name: &str| {
        v.iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {out}"))
    };
    let a = find("a.bin");
    assert_eq!(
        (&a["type"], &a["size"], &a["mode"], &a["mtime"]),
        (
            &json!("file"),
            &json!(5_000),
            &json!(0o640),
            &json!(1_600_000_000)
        ),
        "{out}"
    );
    assert_eq!(find("sub")["type"], "dir", "{out}");
    assert_eq!(v.len(), 2, "{out}");
    let out = stdout(&ok(s3.ferry(&[
        "ls",
        "--json",
        "s3://bkt/run/ckpt/sub/b.txt",
    ])));
    let v = lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(
        (&v[0]["type"], &v[0]["size"], &v[0]["mode"], &v[0]["mtime"]),
        (
            &json!("file"),
            &json!(6),
            &json!(0o600),
            &json!(1_600_000_100)
        ),
        "{out}"
    );
}

/// Checks `ls --json DIR/` of `tree`: an entry per name directly in it,
/// each valid against the schema, with the sizes, modes and mtimes on disk.
#[track_caller]
fn check_ls_tree(out: &str, src: &Path) {
    use std::os::unix::fs::MetadataExt;
    let v = lines(out);
    assert!(v.iter().all(|l| l["kind"] == "entry"), "{out}");
    for name in ["a.txt", "empty", "ckpt", "link"] {
        let e = v
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {out}"));
        let m = std::fs::symlink_metadata(src.join(name)).unwrap();
        let ty = if m.is_dir() {
            "dir"
        } else if m.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        assert_eq!(e["type"], ty, "{e}");
        assert_eq!(e["mode"], m.mode() & 0o7777, "{e}");
        assert_eq!(e["mtime"], m.mtime(), "{e}");
        if ty == "file" {
            assert_eq!(e["size"], m.len(), "{e}");
        }
    }
    let link = v.iter().find(|l| l["name"] == "link").unwrap();
    assert_eq!(link["target"], "a.txt", "{out}");
    // the directory's own entries only, not the tree below it
    assert!(!v.iter().any(|l| l["name"] == "ckpt/model.bin"), "{out}");
}

#[test]
fn ls_json_locally() {
    let t = tmp();
    let src = t.path().join("src");
    tree(&src);
    let out = stdout(&ok(ferry(["ls", "--json", &format!("{}/", src.display())])));
    check_ls_tree(&out, &src);
    // one file: its own entry
    let out = stdout(&ok(ferry([
        "ls",
        "--json",
        &src.join("ckpt/model.bin").display().to_string(),
    ])));
    let v = lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(
        (&v[0]["name"], &v[0]["size"]),
        (&json!("model.bin"), &json!(300_000))
    );
    // a path that is not there: an error line, not an empty listing
    let o = ferry(["ls", "--json", &t.path().join("nope").display().to_string()]);
    let out = stdout(&o);
    let v = lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(v[0]["kind"], "error", "{out}");
    assert_eq!(v[0]["exit_code"], o.status.code().unwrap(), "{out}");
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(v[0]["text"].as_str().unwrap().contains("nope"), "{out}");
}

#[test]
fn ls_json_over_ssh() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    let src = t.path().join("src");
    tree(&src);
    let mut args = vec!["ls".to_string(), "--json".into()];
    args.extend(sshd.args());
    args.push(format!("{}/", sshd.remote(&src)));
    let out = stdout(&ok(ferry(&args)));
    check_ls_tree(&out, &src);
}

/// `ls --json` of a module path that is not there: an error line with the
/// process's exit code, not an empty listing.
#[test]
fn daemon_ls_json_of_a_missing_path_is_an_error() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let mut args = vec!["ls".to_string(), "--json".into(), d.url("data/nope/")];
    args.extend(d.client_args());
    let o = ferry(&args);
    let out = stdout(&o);
    let v = lines(&out);
    let err = v
        .iter()
        .find(|l| l["kind"] == "error")
        .unwrap_or_else(|| panic!("no error line: {out}"));
    assert_eq!(err["fatal"], true, "{out}");
    assert_eq!(err["exit_code"], o.status.code().unwrap(), "{out}");
    assert_eq!(o.status.code(), Some(12), "{out}");
    assert!(err["text"].as_str().unwrap().contains("nope"), "{out}");
    assert!(!v.iter().any(|l| l["kind"] == "entry"), "{out}");
}
