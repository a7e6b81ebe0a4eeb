//! `--json` on sync, cp and ls: every stdout line is one JSON object that
//! carries the schema version and the fields its kind promises (checked by a
//! small schema table below), the file lines name each file once with its
//! size, the summary adds up, and errors carry their category and exit code.

mod util;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use util::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Ty {
    Str,
    Uint,
    Int,
    Bool,
}

/// The README's schema table: required fields and their types per kind.
fn schema(kind: &str) -> Vec<(&'static str, Ty)> {
    use Ty::*;
    match kind {
        "file" => vec![("action", Str), ("name", Str), ("type", Str)],
        "error" => vec![
            ("fatal", Bool),
            ("name", Str),
            ("category", Str),
            ("exit_code", Uint),
            ("text", Str),
        ],
        "notice" => vec![("name", Str), ("text", Str)],
        "progress" => vec![("name", Str), ("done", Uint), ("size", Uint)],
        "summary" => vec![
            ("files", Uint),
            ("transferred", Uint),
            ("deleted", Uint),
            ("total_size", Uint),
            ("literal", Uint),
            ("matched", Uint),
            ("sent", Uint),
            ("received", Uint),
            ("errors", Uint),
            ("delete_skipped", Bool),
            ("dry_run", Bool),
            ("exit_code", Uint),
        ],
        "entry" => vec![
            ("name", Str),
            ("type", Str),
            ("mode", Uint),
            ("size", Uint),
            ("mtime", Int),
        ],
        "module" => vec![("name", Str), ("comment", Str), ("read_only", Bool)],
        other => panic!("unknown line kind {other:?}"),
    }
}

fn has_type(v: &Value, t: Ty) -> bool {
    match t {
        Ty::Str => v.is_string(),
        Ty::Uint => v.is_u64(),
        Ty::Int => v.is_i64() || v.is_u64(),
        Ty::Bool => v.is_boolean(),
    }
}

/// Every line of `out` parsed and checked against the schema.
#[track_caller]
fn lines(out: &str) -> Vec<Value> {
    assert!(!out.is_empty(), "no output");
    out.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert_eq!(v["v"], 1, "schema version missing: {l}");
            let kind = v["kind"].as_str().unwrap_or_else(|| panic!("no kind: {l}"));
            for (field, ty) in schema(kind) {
                assert!(has_type(&v[field], ty), "{kind}.{field} not {ty:?}: {l}");
            }
            match kind {
                "file" => {
                    let action = v["action"].as_str().unwrap();
                    assert!(["updated", "deleted"].contains(&action), "{l}");
                    let ty = v["type"].as_str().unwrap();
                    assert!(["file", "dir", "symlink", "hardlink"].contains(&ty), "{l}");
                    if action == "updated" {
                        assert!(v["size"].is_u64(), "{l}");
                    }
                    if ty == "symlink" || ty == "hardlink" {
                        assert!(v["target"].is_string(), "{l}");
                    }
                }
                "entry" => {
                    let ty = v["type"].as_str().unwrap();
                    assert!(["file", "dir", "symlink"].contains(&ty), "{l}");
                }
                _ => {}
            }
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
