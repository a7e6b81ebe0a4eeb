//! `--json` on `cp`, `sync` and `ls`: what the run reports, as one JSON
//! object per line on stdout, for scripts. Every line carries the schema
//! version `"v"` and a `"kind"` (`file`, `error`, `notice`, `progress`,
//! `summary`, `entry`, `module`); the README has the table. This is the
//! machine-readable sibling of [`super::output`] (the human printer) and
//! prints nothing else: no colours, no bars, no human lines on stdout. It does
//! not decide exit codes or run anything; it only writes lines.

use crate::error::TransferError;
use crate::proto::item::Item;
use crate::transfer::{Event, Outcome, Report};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Mutex;

/// The schema version every line carries as `"v"`. Raised when a field
/// changes meaning or goes away; new fields may be added within a version.
pub const SCHEMA: u32 = 1;

/// The category and exit code of an error about one file: the transfer goes
/// on and ends with exit 23, as rsync's "partial transfer".
pub const FILE_ERROR_CATEGORY: &str = "file";

/// Writes one object as one line on stdout, `"v"` added.
pub fn line(mut v: Value) {
    if let Value::Object(m) = &mut v {
        m.insert("v".into(), json!(SCHEMA));
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The printer for `cp --json` and `sync --json`.
pub struct JsonPrinter {
    /// Emit `progress` lines (`--progress`/`-P` given with `--json`).
    pub progress: bool,
    pub dry_run: bool,
    lock: Mutex<()>,
}

impl JsonPrinter {
    pub fn new(progress: bool, dry_run: bool) -> Self {
        JsonPrinter {
            progress,
            dry_run,
            lock: Mutex::new(()),
        }
    }

    /// One event as its line (or none: progress without `--progress`).
    pub fn event(&self, e: Event) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = event_value(&e.report(), self.progress) {
            line(v);
        }
    }

    /// The closing `summary` line: the numbers `--stats` prints, and the exit
    /// code the run ends with.
    pub fn finish(&self, o: &Outcome, exit_code: i32) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        line(summary_value(o, exit_code, self.dry_run));
    }
}

/// The line for one report; `None` for progress when not asked for, and
/// for an entry whose attributes alone changed.
pub fn event_value(r: &Report, progress: bool) -> Option<Value> {
    Some(match r {
        Report::Itemized {
            name,
            size,
            item,
            wire,
            check,
            detail,
            ..
        } => {
            if !item.has(Item::UPDATED) {
                return None;
            }
            let updated = Report::Updated {
                name: name.clone(),
                size: *size,
                detail: detail.clone(),
            };
            let mut v = event_value(&updated, progress)?;
            v["wire"] = json!(wire);
            if let Some(c) = check {
                v["check"] = json!(check_text(*item, c));
            }
            v
        }
        Report::Updated { name, size, detail } => {
            let (name, kind) = match name.strip_suffix(b"/") {
                Some(n) => (n, "dir"),
                None if detail.starts_with(b"-> ") => (name.as_slice(), "symlink"),
                None if detail.starts_with(b"=> ") => (name.as_slice(), "hardlink"),
                None => (name.as_slice(), "file"),
            };
            let mut v = json!({
                "kind": "file",
                "action": "updated",
                "name": text(name),
                "type": kind,
                "size": size,
            });
            if let Some(t) = detail
                .strip_prefix(b"-> ")
                .or_else(|| detail.strip_prefix(b"=> "))
            {
                v["target"] = json!(text(t));
            }
            v
        }
        Report::Deleted { name, is_dir } => json!({
            "kind": "file",
            "action": "deleted",
            "name": text(name.strip_suffix(b"/").unwrap_or(name)),
            "type": if *is_dir { "dir" } else { "file" },
        }),
        Report::Error { name, text: t } => json!({
            "kind": "error",
            "fatal": false,
            "name": text(name),
            "category": FILE_ERROR_CATEGORY,
            "exit_code": super::exit::PARTIAL,
            "text": text(t),
        }),
        Report::Notice { name, text: t } => json!({
            "kind": "notice",
            "name": text(name),
            "text": text(t),
        }),
        Report::Progress { name, done, size } => {
            if !progress {
                return None;
            }
            json!({"kind": "progress", "name": text(name), "done": done, "size": size})
        }
        Report::Overall { done, total } => {
            if !progress {
                return None;
            }
            json!({"kind": "progress", "name": "", "done": done, "size": total})
        }
    })
}

/// A file's check value as `kind:hex`: `xxh128` for a file sent whole (the
/// XXH3-128 as `xxhsum -H2` prints it),
/// `blake3-keyed` for one rebuilt from data the receiver had (keyed for
/// this transfer), `blake3-segments` for one sent in segments,
/// `xxh128-sparse` for one sent with holes (`-S`: the XXH3-128 of its data
/// bytes, then of its holes' extents and size).
pub fn check_text(item: Item, c: &[u8; 32]) -> String {
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if item.has(Item::CHECK_KEYED) {
        format!("blake3-keyed:{}", hex(c))
    } else if item.has(Item::CHECK_SEGMENTS) {
        format!("blake3-segments:{}", hex(c))
    } else if item.has(Item::CHECK_SPARSE) {
        format!("xxh128-sparse:{}", hex(c))
    } else {
        // (the wire carries the number little-endian)
        let mut n = [0u8; 16];
        n.copy_from_slice(&c[..16]);
        format!("xxh128:{:032x}", u128::from_le_bytes(n))
    }
}

/// The `summary` line.
pub fn summary_value(o: &Outcome, exit_code: i32, dry_run: bool) -> Value {
    let s = &o.summary;
    json!({
        "kind": "summary",
        "files": s.files,
        "transferred": s.transferred,
        "deleted": s.deleted,
        "total_size": s.total_size,
        "literal": s.literal,
        "matched": s.reused,
        "sent": o.sent,
        "received": o.received,
        "errors": s.errors,
        "delete_skipped": s.delete_skipped,
        "dry_run": dry_run,
        "exit_code": exit_code,
    })
}

/// The line for an error that ended the run: its category, exit code and text.
pub fn fatal(e: &TransferError) {
    line(json!({
        "kind": "error",
        "fatal": true,
        "name": "",
        "category": e.category(),
        "exit_code": e.exit_code(),
        "text": e.to_string(),
    }));
}

/// `ls --json`: one entry of a listing.
pub fn entry(e: &crate::proto::Entry) {
    let kind = match e.kind {
        crate::proto::Kind::File => "file",
        crate::proto::Kind::Dir => "dir",
        crate::proto::Kind::Symlink => "symlink",
    };
    let mut v = json!({
        "kind": "entry",
        "name": text(&e.name),
        "type": kind,
        "mode": e.mode,
        "size": e.size,
        "mtime": e.mtime,
    });
    if e.kind == crate::proto::Kind::Symlink {
        v["target"] = json!(text(&e.target));
    }
    if let Some(c) = &e.checksum {
        v["blake3"] = json!(c.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    line(v);
}

/// `ls --json` on `host::`: one module.
pub fn module(m: &crate::proto::ModuleInfo) {
    line(json!({
        "kind": "module",
        "name": m.name,
        "comment": m.comment,
        "read_only": m.read_only,
    }));
}

/// `ls --json`: a notice from the daemon.
pub fn notice(e: &Event) {
    line(json!({"kind": "notice", "name": text(&e.name), "text": text(&e.text)}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updated_kinds() {
        let v = event_value(
            &Report::Updated {
                name: b"d/".to_vec(),
                size: 0,
                detail: Vec::new(),
            },
            false,
        )
        .unwrap();
        assert_eq!(v["type"], "dir");
        assert_eq!(v["name"], "d");
        let v = event_value(
            &Report::Updated {
                name: b"l".to_vec(),
                size: 3,
                detail: b"-> /usr".to_vec(),
            },
            false,
        )
        .unwrap();
        assert_eq!(v["type"], "symlink");
        assert_eq!(v["target"], "/usr");
        let p = Report::Overall { done: 1, total: 2 };
        assert!(event_value(&p, false).is_none());
        assert!(event_value(&p, true).is_some());
    }
}
