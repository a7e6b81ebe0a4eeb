//! S3-compatible object storage as a store (`s3://bucket/prefix`): a bucket
//! prefix is a [`source::S3Source`] to send from and a
//! [`destination::S3Place`] to receive into, so the engine moves files to
//! and from it as it does for the local filesystem, both session halves in
//! this process (or the client half, against a daemon). The S3 client
//! (`object_store`) and its async runtime stay inside [`bucket`]; the
//! engine's threads call plain blocking functions.
//!
//! Not for ferry's protocol (S3 cannot speak it) nor for where credentials
//! come from beyond [`config`].

pub mod bucket;
pub mod chunkmap;
pub mod compose;
pub mod config;
pub mod copy_part;
pub mod destination;
pub mod journal;
pub mod listing;
pub mod manifest;
pub mod probe;
pub mod source;
pub mod stream;
pub mod tree;

use crate::error::TransferError;
use crate::proto::Summary;
use crate::session::side::{Reader, Writer};
use crate::session::{receiver, sender, Cancel, Side};

pub use bucket::Bucket;

/// A session half running on a bucket.
pub struct S3Side {
    pub bucket: Bucket,
}

impl S3Side {
    /// Opens `bucket` (no request is made yet).
    pub fn open(bucket: &str) -> Result<S3Side, TransferError> {
        Ok(S3Side {
            bucket: Bucket::open(bucket).map_err(TransferError::Usage)?,
        })
    }
}

impl Side for S3Side {
    fn send(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: sender::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        let bucket = self.bucket.clone();
        sender::run_from(reader, writer, cfg, cancel, move || {
            Ok(source::S3Source::new(bucket))
        })
    }

    fn receive(
        &self,
        reader: Reader,
        writer: Writer,
        cfg: receiver::Config<'_>,
        cancel: &Cancel,
    ) -> Result<Summary, TransferError> {
        // --ignore-existing: an object created after the listing by another
        // writer is not replaced either (If-None-Match: *)
        // large files go up as they arrive, unless segments of one file
        // may come over several streams (out of order)
        let place = destination::S3Place::new(self.bucket.clone())
            .create_only(cfg.options.ignore_existing)
            .streaming(cfg.joins.is_none());
        receiver::run_into(corrupt_hook(reader), writer, cfg, place, cancel)
    }
}

/// A test hook: with `FERRY_TEST_HOOKS=1` and `FERRY_TEST_S3_FLIP_AT=N` in
/// ferry's environment, the byte at offset `N` of what the sending half
/// sends into a bucket is flipped on its way (a stream corrupted in
/// transit: the receiver's check must fail the file and the upload begun
/// for it must leave nothing at its key). Without `FERRY_TEST_HOOKS=1`
/// that variable is never read.
fn corrupt_hook(reader: Reader) -> Reader {
    if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
        return reader;
    }
    let Some(at) = std::env::var("FERRY_TEST_S3_FLIP_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return reader;
    };
    let counters = reader.counters();
    let inner = reader.into_inner();
    let flip = Flip { inner, at, pos: 0 };
    crate::session::wire::FrameReader::new(Box::new(flip), counters)
}

/// Flips one byte of a stream (see [`corrupt_hook`]).
struct Flip<R> {
    inner: R,
    at: u64,
    pos: u64,
}

impl<R: std::io::Read> std::io::Read for Flip<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let end = self.pos + n as u64;
        if (self.pos..end).contains(&self.at) {
            buf[(self.at - self.pos) as usize] ^= 0x55;
        }
        self.pos = end;
        Ok(n)
    }
}

/// What `ferry ls s3://bucket/prefix` shows: the object `prefix` names, or
/// the objects and prefixes directly under it, with ferry's metadata.
pub fn list(bucket: &str, prefix: &str) -> Result<Vec<crate::proto::Entry>, TransferError> {
    let b = Bucket::open(bucket).map_err(TransferError::Usage)?;
    let key = prefix.trim_matches('/');
    let fail = |e: std::io::Error| TransferError::local(b.show(key), &e);
    if !prefix.ends_with('/') && !key.is_empty() {
        if let Some(Some(o)) = b.stat(key, true).map_err(fail)? {
            let name = key.rsplit('/').next().unwrap_or(key);
            return Ok(vec![source::entry(name.as_bytes().to_vec(), Some(&o))]);
        }
    }
    let dir = if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    };
    let ((files, dirs), _) = b.list_dir(&dir, None).map_err(fail)?;
    if files.is_empty() && dirs.is_empty() && !key.is_empty() {
        return Err(TransferError::Usage(format!(
            "{}: no such object or prefix",
            b.show(key)
        )));
    }
    let mut out: Vec<crate::proto::Entry> = files
        .iter()
        .map(|(n, o)| source::entry(n.as_bytes().to_vec(), Some(o)))
        .chain(
            dirs.iter()
                .map(|d| source::entry(d.as_bytes().to_vec(), None)),
        )
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What `ferry s3 cleanup` did: the keys whose unfinished uploads it
/// aborted, and the temporary objects (of a composition a killed run left)
/// it removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub aborted: Vec<String>,
    pub removed: Vec<String>,
}

/// `ferry s3 cleanup s3://bucket/prefix`: aborts the multipart uploads this
/// host's journal holds under the prefix and forgets them, and removes the
/// temporary objects compositions of keys under the prefix left behind.
/// (object_store cannot list a bucket's uploads, so uploads started
/// elsewhere are not seen.) Meant for what killed runs left: an upload in
/// progress under the prefix is aborted too.
pub fn cleanup(bucket: &str, prefix: &str) -> Result<Cleaned, TransferError> {
    let b = Bucket::open(bucket).map_err(TransferError::Usage)?;
    let prefix = prefix.trim_start_matches('/');
    let mut done = Cleaned::default();
    for (file, jb, key, id) in journal::all() {
        let of_prefix = key.starts_with(prefix)
            || key
                .strip_prefix(&format!("{}/", compose::temp_dir()))
                .is_some_and(|k| k.starts_with(prefix));
        if jb != bucket || !of_prefix {
            continue;
        }
        b.abort(&key, &id)
            .map_err(|e| TransferError::local(b.show(&key), &e))?;
        let _ = std::fs::remove_file(file);
        done.aborted.push(key);
    }
    // the temporary objects: listed by the whole segments of the prefix
    // (object_store's listing), then matched by the rest
    let base = compose::temp_dir();
    let dir = match prefix.rfind('/') {
        Some(i) => format!("{base}/{}", &prefix[..i]),
        None => base.clone(),
    };
    let want = format!("{base}/{prefix}");
    let fail = |e: std::io::Error| TransferError::local(b.show(&dir), &e);
    for k in b.keys_under(&dir).map_err(fail)? {
        if k.as_ref().starts_with(&want) {
            b.delete_path(&k).map_err(fail)?;
            done.removed.push(k.to_string());
        }
    }
    done.aborted.sort();
    done.removed.sort();
    Ok(done)
}
