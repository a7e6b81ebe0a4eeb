//! A large file uploaded to S3 while it arrives: a multipart upload begun
//! before the first byte, each part sent as soon as it is full, so nothing
//! is spooled on this host and the upload ends soon after the last byte.
//! A part takes its bytes from the process's one in-flight budget before
//! it is filled, and at most [`PARTS_AT_ONCE`] of a file are in flight:
//! memory follows the budget, not the file's size.
//!
//! The object's BLAKE3 is known only at the end, after S3 has taken its
//! metadata (CreateMultipartUpload is the last moment it can be set). So
//! the metadata carries a random check id instead, and the BLAKE3 goes in
//! the object's chunk map ([`super::chunkmap`], which a later version is
//! composed from), written *before* the upload is completed and naming the
//! same id: once the object is at its key, the map that vouches for it is
//! there too, and a download reads the BLAKE3 from it (see the HEAD in
//! [`super::bucket`]). Nothing is at the key until the receiver has checked
//! every byte against the sender's check value and every part's ETag was
//! the MD5 of what was sent: a mismatch aborts the upload
//! ([`Stream::abort`]), and S3's completion is atomic.
//!
//! Resuming: the upload id and each accepted part (index, ETag) are
//! journaled ([`super::journal`]) under an identity made of the file's
//! size, part size, mtime and mode (its content is not known up front). A
//! re-run with the same identity continues that upload: a part whose bytes
//! arrive again with the MD5 the journal recorded is not sent again.
//!
//! Not for small files (one request each, see [`super::destination`]), nor
//! for composing a new version from an old one (a file replacing a large
//! object is spooled for that, see [`super::compose`]).

use super::bucket::{
    self, attributes, check_etag, err, md5_hex, part_size, path, Bucket, Object, META_CHECK,
};
use super::journal::{self, Journal, Upload};
use crate::chunk::{chunk_hash, cut, ChunkHash, MAX_CHUNK};
use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{Attribute, PutMultipartOptions, PutPayload};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{mpsc, Arc};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

/// Parts of one streamed file in flight at once (each holds its bytes
/// until the server has them).
pub const PARTS_AT_ONCE: usize = 4;

/// A multipart upload fed as bytes arrive.
pub struct Stream {
    bucket: Bucket,
    key: String,
    p: Path,
    id: String,
    /// The check id in the object's metadata.
    check: String,
    part: u64,
    /// Bytes arrived so far.
    len: u64,
    /// The part being filled (no capacity: none begun) and its share of
    /// the budget.
    buf: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    /// Parts handed to the runtime, in order, not yet waited for.
    sending: VecDeque<JoinHandle<io::Result<PartId>>>,
    /// Parts the server holds, in order.
    sent: Vec<PartId>,
    journal: Arc<Journal>,
    /// Parts an earlier run had accepted (index → ETag).
    resumed: Arc<BTreeMap<usize, String>>,
    digest: Option<Digest>,
}

/// What the bytes of a streamed file were, once all arrived.
pub struct Digest {
    tx: mpsc::SyncSender<Bytes>,
    thread: std::thread::JoinHandle<Summed>,
}

/// A finished file's BLAKE3 and chunks (lengths and names, in order).
pub struct Summed {
    pub blake3: [u8; 32],
    pub chunks: Vec<(u32, ChunkHash)>,
}

/// The identity a streamed upload is journaled under: what is known of the
/// file before its bytes, and what its metadata will say (the mtime asked
/// for, if any: without one the object keeps the time its upload began).
fn identity(size: u64, part: u64, mtime: Option<(i64, u32)>, mode: Option<u32>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry-stream 1");
    h.update(&size.to_le_bytes());
    h.update(&part.to_le_bytes());
    match mtime {
        Some((s, ns)) => {
            h.update(&[1]);
            h.update(&s.to_le_bytes());
            h.update(&ns.to_le_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    h.update(&mode.unwrap_or(u32::MAX).to_le_bytes());
    *h.finalize().as_bytes()
}

/// A fresh check id: 128 bits nobody else will pick.
fn new_check_id(key: &str) -> String {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(key.as_bytes());
    // the system's randomness, as everywhere else in ferry (best effort:
    // the time and pid already make the id unique to this upload)
    let mut seed = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut seed).is_ok() {
        h.update(&seed);
    }
    bucket::hex(&h.finalize().as_bytes()[..16])
}

impl Stream {
    /// Begins the upload of `size` bytes to `key` with `mtime` (now, when
    /// none is asked for) and `mode` in its metadata, or continues the one
    /// an earlier run left for the same file.
    pub fn start(
        bucket: &Bucket,
        key: &str,
        size: u64,
        mtime: Option<(i64, u32)>,
        mode: Option<u32>,
    ) -> io::Result<Stream> {
        let part = part_size(size);
        let ident = identity(size, part, mtime, mode);
        let name = bucket.name().to_string();
        let (rt, store) = bucket.raw();
        let p = path(key);
        let found = journal::find(&name, key, size, &ident)
            .filter(|(up, _)| up.part == part && !up.check.is_empty());
        let (up, resumed) = match found {
            Some(found) => found,
            None => {
                // an upload an earlier run left for this key (of other
                // content): aborted, its journal would be overwritten
                for (file, b, k, old) in journal::all() {
                    if b == name && k == key {
                        let _ = rt.block_on(store.abort_multipart(&p, &old));
                        let _ = std::fs::remove_file(file);
                    }
                }
                let check = new_check_id(key);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let meta = Object {
                    size,
                    mtime: mtime.unwrap_or((now.as_secs() as i64, now.subsec_nanos())),
                    mode,
                    blake3: None,
                    etag: None,
                    modified_ms: 0,
                };
                let mut attrs = attributes(&meta);
                attrs.insert(Attribute::Metadata(META_CHECK.into()), check.clone().into());
                let id = rt
                    .block_on(store.create_multipart_opts(
                        &p,
                        PutMultipartOptions {
                            attributes: attrs,
                            ..Default::default()
                        },
                    ))
                    .map_err(err)?;
                let up = Upload {
                    id,
                    size,
                    part,
                    blake3: ident,
                    check,
                };
                (up, BTreeMap::new())
            }
        };
        let journal = Arc::new(Journal::open(&name, key, &up, &resumed)?);
        Ok(Stream {
            bucket: bucket.clone(),
            key: key.to_string(),
            p,
            id: up.id,
            check: up.check,
            part,
            len: 0,
            buf: Vec::new(),
            permit: None,
            sending: VecDeque::new(),
            sent: Vec::new(),
            journal,
            resumed: Arc::new(resumed),
            digest: Some(Digest::start()?),
        })
    }

    /// Bytes arrived so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The check id the object's metadata names.
    pub fn check(&self) -> &str {
        &self.check
    }

    /// Takes the next bytes of the file: parts are sent as they fill.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.begin_part()?;
            }
            let room = self.part as usize - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.len += n as u64;
            data = &data[n..];
            if self.buf.len() as u64 == self.part {
                self.send_part()?;
            }
        }
        Ok(())
    }

    /// Waits until a part may be filled: fewer than [`PARTS_AT_ONCE`] of
    /// this file in flight, and its bytes taken from the budget.
    fn begin_part(&mut self) -> io::Result<()> {
        while self.sending.len() >= PARTS_AT_ONCE {
            self.wait_one()?;
        }
        let units = self
            .part
            .div_ceil(bucket::UNIT as u64)
            .clamp(1, (bucket::BUDGET / bucket::UNIT) as u64) as u32;
        let budget = self.bucket.budget();
        let (rt, _) = self.bucket.raw();
        self.permit = Some(
            rt.block_on(budget.acquire_many_owned(units))
                .map_err(io::Error::other)?,
        );
        self.buf = Vec::with_capacity(self.part as usize);
        Ok(())
    }

    /// Hands the part filled so far to the runtime (and its bytes to the
    /// hashing thread).
    fn send_part(&mut self) -> io::Result<()> {
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let permit = self.permit.take();
        let i = self.sent.len() + self.sending.len();
        if let Some(d) = &self.digest {
            d.tx.send(data.clone())
                .map_err(|_| io::Error::other("the hashing thread stopped"))?;
        }
        let (rt, store) = self.bucket.raw();
        let (p, id) = (self.p.clone(), self.id.clone());
        let (journal, resumed) = (self.journal.clone(), self.resumed.clone());
        let h = rt.spawn(async move {
            let _permit = permit;
            // hashed off the runtime's workers (16 MiB holds one for ~30 ms)
            let (data, md5) = tokio::task::spawn_blocking(move || {
                let md5 = md5_hex(&data);
                (data, md5)
            })
            .await
            .map_err(io::Error::other)?;
            if let Some(etag) = resumed.get(&i) {
                if bucket::etag_text(etag).eq_ignore_ascii_case(&md5) {
                    // the server has these very bytes from an earlier run
                    return Ok(PartId {
                        content_id: etag.clone(),
                    });
                }
            }
            let got = store
                .put_part(&p, &id, i, PutPayload::from(data))
                .await
                .map_err(err)?;
            check_etag(&got.content_id, &md5, &format!("part {}", i + 1))?;
            journal.part(i, &got.content_id)?;
            Ok::<_, io::Error>(got)
        });
        self.sending.push_back(h);
        Ok(())
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> io::Result<()> {
        let Some(h) = self.sending.pop_front() else {
            return Ok(());
        };
        let (rt, _) = self.bucket.raw();
        let got = rt.block_on(h).map_err(io::Error::other)?;
        match got {
            Ok(part) => {
                self.sent.push(part);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.gone(e)),
            Err(e) => Err(e),
        }
    }

    /// The upload is gone from the server (aborted by `ferry s3 cleanup`,
    /// or expired): its journal goes too, so that a re-run starts afresh.
    fn gone(&self, e: io::Error) -> io::Error {
        if let Some(path) = journal::path_of(self.bucket.name(), &self.key) {
            let _ = std::fs::remove_file(path);
        }
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the multipart upload of {} is gone from the server ({e}); run again to \
                 upload it afresh",
                self.bucket.show(&self.key)
            ),
        )
    }

    /// Sends the last part and waits until the server holds every part;
    /// what the bytes were.
    pub fn finish(&mut self) -> io::Result<Summed> {
        if !self.buf.is_empty() || self.sent.len() + self.sending.len() == 0 {
            if self.buf.capacity() == 0 {
                self.begin_part()?;
            }
            self.send_part()?;
        }
        while !self.sending.is_empty() {
            self.wait_one()?;
        }
        let d = self
            .digest
            .take()
            .ok_or_else(|| io::Error::other("finished twice"))?;
        d.finish()
    }

    /// Puts the object at its key (every part sent and checked: see
    /// [`Stream::finish`]); its ETag.
    pub fn complete(mut self) -> io::Result<Option<String>> {
        let parts = std::mem::take(&mut self.sent);
        let (rt, store) = self.bucket.raw();
        let done = rt.block_on(store.complete_multipart(&self.p, &self.id, parts));
        match done {
            Ok(r) => {
                if let Some(path) = journal::path_of(self.bucket.name(), &self.key) {
                    let _ = std::fs::remove_file(path);
                }
                Ok(r.e_tag)
            }
            Err(e @ object_store::Error::NotFound { .. }) => Err(self.gone(err(e))),
            Err(e) => Err(err(e)),
        }
    }

    /// Gives the upload up: parts in flight are stopped, the server drops
    /// what it holds, the journal is removed. Nothing was at the key.
    pub fn abort(mut self) {
        for h in self.sending.drain(..) {
            h.abort();
        }
        let (rt, store) = self.bucket.raw();
        let _ = rt.block_on(store.abort_multipart(&self.p, &self.id));
        if let Some(path) = journal::path_of(self.bucket.name(), &self.key) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Digest {
    /// A thread that hashes (BLAKE3) and chunks the parts in order, beside
    /// their upload.
    fn start() -> io::Result<Digest> {
        // two parts queued at most: the thread keeps up (BLAKE3 and the
        // chunker run at GB/s), and if it did not the sender would wait
        let (tx, rx) = mpsc::sync_channel::<Bytes>(2);
        let thread = std::thread::Builder::new()
            .name("ferry-s3-hash".into())
            .spawn(move || {
                let mut hasher = blake3::Hasher::new();
                let mut chunker = PushChunker::default();
                for b in rx {
                    hasher.update(&b);
                    chunker.push(&b);
                }
                Summed {
                    blake3: *hasher.finalize().as_bytes(),
                    chunks: chunker.finish(),
                }
            })?;
        Ok(Digest { tx, thread })
    }

    fn finish(self) -> io::Result<Summed> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the hashing thread failed"))
    }
}

/// ferry's content-defined chunker fed block by block (the same cuts as
/// over the whole file at once): at most one chunk's bytes are kept
/// between blocks.
#[derive(Default)]
struct PushChunker {
    carry: Vec<u8>,
    chunks: Vec<(u32, ChunkHash)>,
}

impl PushChunker {
    fn push(&mut self, block: &[u8]) {
        // `pos`: where this block's bytes not yet chunked (or carried) begin
        let mut pos = 0;
        // the bytes left from the last block first, topped up from this one
        while !self.carry.is_empty() && pos < block.len() {
            let take = (2 * MAX_CHUNK - self.carry.len()).min(block.len() - pos);
            self.carry.extend_from_slice(&block[pos..pos + take]);
            pos += take;
            if self.carry.len() < MAX_CHUNK {
                return;
            }
            let mut at = 0;
            while self.carry.len() - at >= MAX_CHUNK {
                let n = cut(&self.carry[at..]);
                self.chunks
                    .push((n as u32, chunk_hash(&self.carry[at..at + n])));
                at += n;
            }
            let left = self.carry.len() - at;
            if left <= take {
                // what is left came from this block: go on in place
                self.carry.clear();
                pos -= left;
            } else {
                self.carry.drain(..at);
            }
        }
        let mut data = &block[pos..];
        while data.len() >= MAX_CHUNK {
            let n = cut(data);
            self.chunks.push((n as u32, chunk_hash(&data[..n])));
            data = &data[n..];
        }
        self.carry.extend_from_slice(data);
    }

    fn finish(mut self) -> Vec<(u32, ChunkHash)> {
        let mut at = 0;
        while at < self.carry.len() {
            let n = cut(&self.carry[at..]);
            self.chunks
                .push((n as u32, chunk_hash(&self.carry[at..at + n])));
            at += n;
        }
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_pushed_one_by_one_are_cut_as_the_whole_file_is() {
        let data = crate::chunk::tests::random(3 << 20, 7);
        let whole: Vec<(u32, ChunkHash)> = crate::chunk::chunk_slice(&data)
            .iter()
            .map(|c| (c.len, c.hash))
            .collect();
        // blocks around and below the largest chunk, and uneven ones
        for sizes in [
            vec![1 << 20],
            vec![MAX_CHUNK],
            vec![MAX_CHUNK - 1, MAX_CHUNK + 1],
            vec![100, 5000, 70_000, 1],
            vec![7],
        ] {
            let mut c = PushChunker::default();
            let (mut at, mut i) = (0, 0);
            while at < data.len() {
                let n = sizes[i % sizes.len()].min(data.len() - at);
                c.push(&data[at..at + n]);
                at += n;
                i += 1;
            }
            assert_eq!(c.finish(), whole, "blocks of {sizes:?}");
        }
    }

    #[test]
    fn check_ids_are_128_bits_of_hex_and_never_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_check_id("same/key")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn the_identity_changes_with_what_the_metadata_says() {
        let (mb, part) = (1u64 << 20, 16u64 << 20);
        let a = identity(100 * mb, part, Some((5, 6)), Some(0o644));
        assert_eq!(a, identity(100 * mb, part, Some((5, 6)), Some(0o644)));
        assert_ne!(a, identity(100 * mb, part, Some((5, 7)), Some(0o644)));
        assert_ne!(a, identity(100 * mb, part, None, Some(0o644)));
        assert_ne!(a, identity(100 * mb, part, Some((5, 6)), Some(0o600)));
        assert_ne!(a, identity(101 * mb, part, Some((5, 6)), Some(0o644)));
    }
}
