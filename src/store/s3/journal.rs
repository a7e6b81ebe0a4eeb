//! The local journal of multipart uploads, so that an interrupted upload
//! resumes instead of starting again (S3 has no cheap way to ask which parts
//! it holds, and some servers give no part ETags when asked): one file per
//! bucket and key under `~/.cache/ferry/s3-uploads/` (or
//! `$XDG_CACHE_HOME`), naming the upload id, the file's size, part size and
//! BLAKE3, then one line per part the server accepted, with its ETag. A
//! re-run of the same content to the same key picks the upload up and sends
//! only the parts missing; different content starts a new upload.
//!
//! Not for uploading (that is [`super::bucket`]) nor for aborting uploads
//! on the server.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

const HEADER: &str = "ferry-upload 1";
/// A streamed upload's journal: one more field, the check id its object's
/// metadata names (see [`super::stream`]).
const HEADER_STREAM: &str = "ferry-upload 2";

/// What an upload is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub size: u64,
    pub part: u64,
    pub blake3: [u8; 32],
    /// For a streamed upload, the check id in its metadata (empty for a
    /// file uploaded from a spool file).
    pub check: String,
}

/// One upload's journal file, appended to as parts are accepted.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

fn dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferry").join("s3-uploads"))
}

pub fn path_of(bucket: &str, key: &str) -> Option<PathBuf> {
    let mut h = blake3::Hasher::new();
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    Some(dir()?.join(super::bucket::hex(&h.finalize().as_bytes()[..16])))
}

/// The upload of this content to `key` that an earlier run left, with the
/// parts (index → ETag) the server accepted.
pub fn find(
    bucket: &str,
    key: &str,
    size: u64,
    blake3: &[u8; 32],
) -> Option<(Upload, BTreeMap<usize, String>)> {
    let text = std::fs::read_to_string(path_of(bucket, key)?).ok()?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next()?.split('\t').collect();
    let (id, s, p, h, check) = match head[..] {
        [HEADER, id, s, p, h, ..] => (id, s, p, h, ""),
        [HEADER_STREAM, id, s, p, h, check, ..] => (id, s, p, h, check),
        _ => return None,
    };
    let up = Upload {
        id: id.to_string(),
        size: s.parse().ok()?,
        part: p.parse().ok()?,
        blake3: super::bucket::unhex(h)?,
        check: check.to_string(),
    };
    if up.size != size || up.blake3 != *blake3 {
        return None;
    }
    let mut parts = BTreeMap::new();
    for l in lines {
        if let Some((i, etag)) = l.split_once('\t') {
            if let Ok(i) = i.parse() {
                parts.insert(i, etag.to_string());
            }
        }
    }
    Some((up, parts))
}

/// Every journaled upload: its journal file, bucket, key and upload id.
pub fn all() -> Vec<(PathBuf, String, String, String)> {
    let Some(d) = dir() else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(d) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let first = text.lines().next().unwrap_or("");
        let f: Vec<&str> = first.splitn(8, '\t').collect();
        match f[..] {
            [HEADER_STREAM, id, _, _, _, _, bucket, key] => {
                out.push((p, bucket.to_string(), key.to_string(), id.to_string()))
            }
            [HEADER, id, _, _, _, bucket, ..] => {
                // (the key may hold no tab, but split it as version 1 did)
                let key = first.splitn(7, '\t').nth(6).unwrap_or("");
                out.push((p, bucket.to_string(), key.to_string(), id.to_string()))
            }
            _ => {}
        }
    }
    out
}

impl Journal {
    /// Starts (or, with `parts`, continues) the journal of `up`.
    pub fn open(
        bucket: &str,
        key: &str,
        up: &Upload,
        parts: &BTreeMap<usize, String>,
    ) -> io::Result<Journal> {
        let path = path_of(bucket, key).ok_or_else(|| io::Error::other("no home directory"))?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut text = if up.check.is_empty() {
            format!(
                "{HEADER}\t{}\t{}\t{}\t{}\t{bucket}\t{key}\n",
                up.id,
                up.size,
                up.part,
                super::bucket::hex(&up.blake3)
            )
        } else {
            format!(
                "{HEADER_STREAM}\t{}\t{}\t{}\t{}\t{}\t{bucket}\t{key}\n",
                up.id,
                up.size,
                up.part,
                super::bucket::hex(&up.blake3),
                up.check
            )
        };
        for (i, e) in parts {
            text += &format!("{i}\t{e}\n");
        }
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
        })
    }

    /// Records a part the server accepted.
    pub fn part(&self, index: usize, etag: &str) -> io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(format!("{index}\t{etag}\n").as_bytes())?;
        f.sync_data()
    }

    /// The upload is complete (or abandoned): forget it.
    pub fn done(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
