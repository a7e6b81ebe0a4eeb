//! One bucket behind a small private tokio runtime: the blocking calls the
//! engine's threads make (head, list a "directory", ranged get, upload a file
//! with its metadata, delete), each run to completion with `block_on`.
//! Uploads go in parts, the part size growing with the object so that none
//! needs more than 10,000 parts, several parts at once; every part and
//! every ranged read first takes its bytes from one budget shared by the
//! whole process, so what is being sent or fetched stays bounded however
//! many files move at once (a fetched range goes back to the budget when it
//! has arrived; what waits for its reader is bounded per file by
//! [`super::source`]'s read-ahead).
//!
//! Not for the store seam's rules (naming, temporary files, verification):
//! those are [`super::source`] and [`super::destination`]. Async code stays
//! in here; callers see plain functions.

use super::journal;
use super::manifest::{self, Manifest};
use super::tree::Tree;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::MultipartStore;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload,
};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Bytes in flight across every upload and download of the process.
pub(super) const BUDGET: usize = 256 << 20;
/// The budget's unit (a semaphore permit).
pub(super) const UNIT: usize = 64 << 10;
/// Objects up to this size go in one request.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The largest object S3 takes in one PUT.
const PUT_MAX: u64 = 5 << 30;
/// The smallest part of a multipart upload.
const MIN_PART: u64 = 16 << 20;
/// Parts an upload may have (S3 allows 10,000; some servers fewer).
const MAX_PARTS: u64 = 9_000;
/// Parts of one file uploaded at once.
const PARTS_AT_ONCE: usize = 8;
/// Keys a listing asks for in one page. AWS, MinIO and Ceph return at
/// most 1,000 whatever is asked; a server that does not cap the page
/// answers in fewer of them, which matters where each page costs the server
/// a walk of the whole directory (s3s-fs stats every object directly under
/// a prefix for every page of a delimited listing of it). A page is held
/// per open directory and per directory asked for ahead (see
/// [`super::tree`]); 5,000 a page grew the peak memory of a 20,000-object
/// re-sync by ~6 MiB over a 5,000-object one when one page was held (each
/// page's XML and its parse, ~3 MB), this size stays within the
/// flat-memory test's margin.
const LIST_PAGE: usize = 2_000;

/// The keys a listing page asks for: [`LIST_PAGE`], or, as a test hook
/// with `FERRY_TEST_HOOKS=1`, `FERRY_TEST_S3_LIST_PAGE=N` (a page of a few
/// keys makes every directory of a small tree span several pages). Without
/// `FERRY_TEST_HOOKS=1` that variable is never read.
fn list_page() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        if std::env::var("FERRY_TEST_HOOKS").ok().as_deref() != Some("1") {
            return LIST_PAGE;
        }
        std::env::var("FERRY_TEST_S3_LIST_PAGE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(LIST_PAGE)
    })
}

/// Metadata keys ferry keeps on an object (`x-amz-meta-…`).
pub const META_MTIME: &str = "ferry-mtime";
pub const META_MODE: &str = "ferry-mode";
pub const META_BLAKE3: &str = "ferry-blake3";
/// A streamed object's check id: its BLAKE3, not known when the upload
/// began, is in its chunk map, which names the same id (see
/// [`super::stream`]).
pub const META_CHECK: &str = "ferry-check";

/// What an object is, with ferry's metadata when it has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub size: u64,
    /// ferry's mtime (ns) when recorded, else the object's last-modified.
    pub mtime: (i64, u32),
    pub mode: Option<u32>,
    /// BLAKE3 of the whole object, when ferry wrote it.
    pub blake3: Option<[u8; 32]>,
    pub etag: Option<String>,
    /// The server's last-modified time (ms), which a listing also gives:
    /// what ties a manifest line to the object when the listing has no
    /// ETag (s3s-fs).
    pub modified_ms: i64,
}

/// The objects (name and what it is) and the prefixes (names) directly
/// under a prefix.
pub type DirListing = (Vec<(String, Object)>, Vec<String>);

/// What a listing says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    pub etag: Option<String>,
    pub modified_ms: i64,
}

/// A bucket, cheap to clone and to share between threads.
#[derive(Clone)]
pub struct Bucket {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    store: Arc<AmazonS3>,
    name: String,
    budget: Arc<Semaphore>,
    /// Whether the server checks signed payload hashes (probed at the
    /// first multipart upload, see [`super::probe`]).
    payload_checked: std::sync::OnceLock<bool>,
}

/// The part size for an object of `size` bytes: at least 16 MiB, and large
/// enough (a whole number of MiB) that it needs at most 9,000 parts.
pub fn part_size(size: u64) -> u64 {
    let need = size.div_ceil(MAX_PARTS);
    need.div_ceil(1 << 20)
        .max(1)
        .saturating_mul(1 << 20)
        .max(MIN_PART)
}

pub(super) fn err(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, e.to_string())
        }
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            io::Error::new(io::ErrorKind::AlreadyExists, e.to_string())
        }
        _ => io::Error::other(failed(&e.to_string())),
    }
}

/// What an S3 failure means for the user, in one line: the server's error
/// code read from its XML answer (bad credentials, no such bucket), or that
/// the endpoint could not be reached; object_store's own text (which holds
/// the whole XML body) otherwise, on one line.
fn failed(text: &str) -> crate::error::StoreFailed {
    use crate::error::StoreFailed::{Refused, Unreachable};
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].trim().to_string())
    };
    if let Some(code) = tag("Code") {
        return Refused(match code.as_str() {
            "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken"
            | "AuthorizationHeaderMalformed" => {
                format!("bad credentials: the server says {code} (check the access key and secret)")
            }
            "NoSuchBucket" => "no such bucket".into(),
            "AccessDenied" => "access denied by the server (AccessDenied)".into(),
            _ => match tag("Message") {
                Some(m) if !m.is_empty() => format!("the server says {code}: {m}"),
                _ => format!("the server says {code}"),
            },
        });
    }
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower = one_line.to_lowercase();
    if [
        "error sending request",
        "connection refused",
        "dns error",
        "timed out",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return Unreachable(format!("cannot reach the S3 endpoint ({one_line})"));
    }
    Refused(one_line)
}

/// A key as object_store names it.
pub fn path(key: &str) -> Path {
    Path::from(key)
}

impl Bucket {
    /// The client for `name`, with its runtime.
    pub fn open(name: &str) -> Result<Bucket, String> {
        let store = super::config::client(name)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 runtime: {e}"))?;
        Ok(Bucket {
            inner: Arc::new(Inner {
                rt,
                store: Arc::new(store),
                name: name.to_string(),
                budget: Arc::new(Semaphore::new(BUDGET / UNIT)),
                payload_checked: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `s3://bucket/key`, for messages.
    pub fn show(&self, key: &str) -> String {
        format!("s3://{}/{}", self.inner.name, key)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.rt.block_on(f)
    }

    /// The runtime and the client, for what [`super::compose`] asks of the
    /// server that object_store has no call for.
    pub(super) fn raw(&self) -> (&tokio::runtime::Runtime, Arc<AmazonS3>) {
        (&self.inner.rt, self.inner.store.clone())
    }

    /// Whether the server refuses a request whose body is not what its
    /// signature's payload hash says (asked once, with a throwaway upload
    /// near `key`; see [`super::probe`]): then every part object_store
    /// uploads is checked by the server, and its ETag need not be checked
    /// against an MD5 of what was sent. Never with `--s3-checksum none`:
    /// the user asked for no checksum header, so the MD5 of each part is
    /// the one check of its own ferry keeps, and nothing is probed.
    pub fn payload_checked(&self, key: &str) -> bool {
        *self.inner.payload_checked.get_or_init(|| {
            if !super::config::checksum_headers() {
                return false;
            }
            let (name, store) = (self.inner.name.clone(), self.inner.store.clone());
            self.block_on(super::probe::server_checks_payload(&name, store, key))
        })
    }

    /// The budget every upload and download takes its bytes from.
    pub(super) fn budget(&self) -> Arc<Semaphore> {
        self.inner.budget.clone()
    }

    /// The object at `key` with its metadata, or `None`.
    pub fn head(&self, key: &str) -> io::Result<Option<Object>> {
        if key.is_empty() || key.ends_with('/') {
            return Ok(None);
        }
        let store = self.inner.store.clone();
        let p = path(key);
        self.block_on(async move { head(&store, &p).await })
    }

    /// What `key` is: an object, a prefix with objects under it (a
    /// directory), or nothing. `dir_first` asks the listing first (for a
    /// key that is likely a prefix: some servers fail a HEAD of one).
    pub fn stat(&self, key: &str, dir_first: bool) -> io::Result<Option<Option<Object>>> {
        if key.is_empty() {
            return Ok(Some(None));
        }
        if dir_first && self.any_under(key)? {
            return Ok(Some(None));
        }
        match self.head(key) {
            Ok(Some(o)) => Ok(Some(Some(o))),
            Ok(None) if dir_first => Ok(None),
            Ok(None) => Ok(self.any_under(key)?.then_some(None)),
            Err(e) => match self.any_under(key) {
                Ok(true) => Ok(Some(None)),
                _ => Err(e),
            },
        }
    }

    /// The objects (with their metadata) and the "directories" directly
    /// under `prefix` (a key ending in `/`, or empty for the bucket's root),
    /// each sorted by name, and the manifest that described them: the one in
    /// this listing, else `inherited`. An object the manifest describes costs
    /// no request; any other, a HEAD (several at once).
    pub fn list_dir(
        &self,
        prefix: &str,
        inherited: Option<&Manifest>,
    ) -> io::Result<(DirListing, Option<Manifest>)> {
        let store = self.inner.store.clone();
        let p = (!prefix.is_empty()).then(|| path(prefix.trim_end_matches('/')));
        let inherited = inherited.cloned();
        self.block_on(async move {
            let listed = store.list_with_delimiter(p.as_ref()).await.map_err(err)?;
            let mut dirs: Vec<String> = listed
                .common_prefixes
                .iter()
                .filter_map(|d| d.filename().map(str::to_string))
                .filter(|d| !(p.is_none() && d == super::chunkmap::PREFIX))
                .collect();
            let mut manifest = inherited;
            let mut objects = Vec::new();
            for m in listed.objects {
                if m.location.filename() == Some(manifest::NAME) {
                    if let Some(text) = get_small(&store, &m.location).await? {
                        manifest = Some(Manifest::parse(&String::from_utf8_lossy(&text)));
                    }
                } else {
                    objects.push(m);
                }
            }
            let files = futures::stream::iter(objects)
                .map(|m| {
                    let store = store.clone();
                    let known = manifest.as_ref().and_then(|man| {
                        man.get(
                            m.location.as_ref(),
                            m.size,
                            m.e_tag.as_deref(),
                            m.last_modified.timestamp_millis(),
                        )
                    });
                    async move {
                        let name = m.location.filename().unwrap_or_default().to_string();
                        let o = match known {
                            Some(o) => Some(o),
                            None => head(&store, &m.location).await?,
                        };
                        Ok::<_, io::Error>(o.map(|o| (name, o)))
                    }
                })
                .buffered(16)
                .try_collect::<Vec<_>>()
                .await?;
            let mut files: Vec<(String, Object)> = files.into_iter().flatten().collect();
            files.sort_by(|a, b| a.0.cmp(&b.0));
            dirs.sort();
            Ok(((files, dirs), manifest))
        })
    }

    /// Every object under `prefix/` (recursively; the whole bucket for an
    /// empty prefix) in key order, read as it is consumed: a depth-first
    /// walk of delimited listings, one directory at a time, the next
    /// directories' first pages asked for ahead (see [`super::tree`]), so
    /// that a few pages are held however many objects there are.
    pub fn list_stream(&self, prefix: &str) -> ListStream {
        // the prefix as object_store names keys, and its slash
        let p = path(prefix.trim_matches('/'));
        let p = if p.as_ref().is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        let tree = Tree::new(
            self.inner.store.clone(),
            self.inner.rt.handle().clone(),
            p,
            list_page(),
        );
        ListStream {
            bucket: self.clone(),
            tree: Some(tree),
        }
    }

    /// The lines of the object at `key` as they stream from the server
    /// (`None`: no such object).
    pub fn lines(&self, key: &str) -> io::Result<Option<Lines>> {
        let store = self.inner.store.clone();
        let p = path(key);
        let got = self.block_on(async move {
            match store.get(&p).await {
                Ok(r) => Ok(Some(r.into_stream())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })?;
        Ok(got.map(|stream| Lines {
            bucket: self.clone(),
            stream: Some(stream),
            buf: Vec::new(),
            at: 0,
        }))
    }

    /// HEADs of several keys at once, in the order given.
    pub fn head_many(&self, keys: &[String]) -> io::Result<Vec<Option<Object>>> {
        let store = self.inner.store.clone();
        let paths: Vec<Path> = keys.iter().map(|k| path(k)).collect();
        self.block_on(async move {
            futures::stream::iter(paths)
                .map(|p| {
                    let store = store.clone();
                    async move { head(&store, &p).await }
                })
                .buffered(16)
                .try_collect()
                .await
        })
    }

    /// The names of the objects and of the prefixes directly under
    /// `prefix` (a key ending in `/`, or empty), as one delimited listing
    /// gives them: no HEAD, no manifest.
    pub fn list_names(&self, prefix: &str) -> io::Result<(Vec<String>, Vec<String>)> {
        let store = self.inner.store.clone();
        let p = (!prefix.is_empty()).then(|| path(prefix.trim_end_matches('/')));
        self.block_on(async move {
            let listed = store.list_with_delimiter(p.as_ref()).await.map_err(err)?;
            let files = listed
                .objects
                .iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .collect();
            let dirs = listed
                .common_prefixes
                .iter()
                .filter_map(|d| d.filename().map(str::to_string))
                .collect();
            Ok((files, dirs))
        })
    }

    /// Writes `len` bytes of `file` as the object `key`, without ferry's
    /// metadata (a manifest spooled on disk): one request up to 16 MiB,
    /// else a multipart upload.
    pub fn put_file(&self, key: &str, file: File, len: u64) -> io::Result<()> {
        let store = self.inner.store.clone();
        let p = path(key);
        let file = Arc::new(file);
        self.block_on(async move {
            if len <= SINGLE_PUT_MAX {
                let data = read_part(file, 0, len).await?;
                store.put(&p, PutPayload::from(data)).await.map_err(err)?;
                return Ok(());
            }
            let mut up = store.put_multipart(&p).await.map_err(err)?;
            let part = part_size(len);
            let mut at = 0;
            while at < len {
                let n = part.min(len - at);
                let data = read_part(file.clone(), at, n).await?;
                if let Err(e) = up.put_part(PutPayload::from(data)).await {
                    let _ = up.abort().await;
                    return Err(err(e));
                }
                at += n;
            }
            up.complete().await.map(|_| ()).map_err(err)
        })
    }

    /// A small object's bytes (a manifest), or `None`.
    pub fn get_small(&self, key: &str) -> io::Result<Option<Bytes>> {
        let store = self.inner.store.clone();
        let p = path(key);
        self.block_on(async move { get_small(&store, &p).await })
    }

    /// Writes a small object (a manifest).
    pub fn put_small(&self, key: &str, data: Bytes) -> io::Result<()> {
        let store = self.inner.store.clone();
        let p = path(key);
        self.block_on(async move {
            store
                .put(&p, PutPayload::from(data))
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    /// Whether any object's key starts with `prefix/`: one delimited
    /// listing of one key (an object or a prefix directly under it), which
    /// costs a server the least (s3s-fs stats only what is directly under
    /// the prefix, not every object below it).
    pub fn any_under(&self, prefix: &str) -> io::Result<bool> {
        let store = self.inner.store.clone();
        // the prefix as object_store names keys, and its slash
        let p = path(prefix.trim_matches('/'));
        let p = (!p.as_ref().is_empty()).then(|| format!("{p}/"));
        self.block_on(async move {
            let opts = PaginatedListOptions {
                delimiter: Some("/".into()),
                max_keys: Some(1),
                ..Default::default()
            };
            let page = store
                .list_paginated(p.as_deref(), opts)
                .await
                .map_err(err)?;
            Ok(!page.result.objects.is_empty() || !page.result.common_prefixes.is_empty())
        })
    }

    /// Every key under `prefix/` (recursively), in the listing's order.
    pub fn keys_under(&self, prefix: &str) -> io::Result<Vec<Path>> {
        let store = self.inner.store.clone();
        let p = path(prefix.trim_end_matches('/'));
        self.block_on(async move {
            store
                .list(Some(&p))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(err)
        })
    }

    /// Starts fetching `range` of `key` (pinned to `etag` where the server
    /// honours it); the bytes come from the shared budget. They come back as
    /// the chunks the body arrived in, not copied into one buffer: a copy of
    /// every byte into a fresh range-sized allocation cost a pass over memory
    /// per byte downloaded (bench/NOTES.md §52). A body longer or shorter
    /// than the range is an error.
    pub fn fetch(
        &self,
        key: &Path,
        range: std::ops::Range<u64>,
        etag: Option<String>,
    ) -> tokio::task::JoinHandle<io::Result<VecDeque<Bytes>>> {
        let (store, budget) = (self.inner.store.clone(), self.inner.budget.clone());
        let key = key.clone();
        self.inner.rt.spawn(async move {
            let units = (range.end - range.start).div_ceil(UNIT as u64).max(1) as u32;
            let _permit = budget
                .acquire_many_owned(units)
                .await
                .map_err(io::Error::other)?;
            let want = range.end - range.start;
            let mut body = store
                .get_opts(
                    &key,
                    GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        if_match: etag,
                        ..Default::default()
                    },
                )
                .await
                .map_err(err)?
                .into_stream();
            let mut chunks = VecDeque::new();
            let mut small = Gather::default();
            let mut got = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(err)?;
                got += chunk.len() as u64;
                if got > want {
                    // refused as soon as it is too long: no more is held
                    return Err(wrong_length(format!("more than {want}"), want));
                }
                small.take(chunk, &mut chunks);
            }
            if got != want {
                return Err(wrong_length(got.to_string(), want));
            }
            small.flush(&mut chunks);
            Ok(chunks)
        })
    }

    /// Waits for a fetch started with [`Bucket::fetch`].
    pub fn wait(
        &self,
        h: tokio::task::JoinHandle<io::Result<VecDeque<Bytes>>>,
    ) -> io::Result<VecDeque<Bytes>> {
        self.block_on(h).map_err(io::Error::other)?
    }

    /// Reads `buf.len()` bytes of `key` at `offset` into `buf`, now; with
    /// `etag`, only from that version of the object (If-Match).
    pub fn read_into(
        &self,
        key: &Path,
        offset: u64,
        buf: &mut [u8],
        etag: Option<String>,
    ) -> io::Result<()> {
        let h = self.fetch(key, offset..offset + buf.len() as u64, etag);
        let mut at = 0;
        // (the fetch refused a body of any other length than buf's)
        for chunk in self.wait(h)? {
            buf[at..at + chunk.len()].copy_from_slice(&chunk);
            at += chunk.len();
        }
        Ok(())
    }

    /// Uploads `len` bytes of `file` as `key` with ferry's metadata: one
    /// request for a small file, else parts in parallel. With `create_only`
    /// an object already at `key` is left alone and the upload fails with
    /// `AlreadyExists`. Nothing is at `key` until the upload is complete.
    /// Returns the new object's ETag.
    pub fn upload(
        &self,
        key: &str,
        file: Arc<File>,
        len: u64,
        meta: &Object,
        create_only: bool,
    ) -> io::Result<Option<String>> {
        let attrs = attributes(meta);
        // object_store makes only a single PUT conditional (its public
        // multipart completion always overwrites): a create-only upload is
        // one request, so S3's cap on one PUT applies
        if create_only && len > PUT_MAX {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{len} bytes is more than one conditional PUT can carry (5 GiB): \
                     --ignore-existing into S3 cannot upload it"
                ),
            ));
        }
        let checked = len > SINGLE_PUT_MAX && !create_only && self.payload_checked(key);
        let (store, budget) = (self.inner.store.clone(), self.inner.budget.clone());
        let p = path(key);
        let (bucket, key) = (self.inner.name.clone(), key.to_string());
        self.block_on(async move {
            if len <= SINGLE_PUT_MAX || create_only {
                return put_single(&store, &budget, &p, file, len, attrs, create_only).await;
            }
            let blake3 = meta.blake3.unwrap_or_default();
            let job = Multipart {
                store,
                budget,
                p,
                file,
                len,
                attrs,
                bucket,
                key,
                blake3,
                checked,
            };
            match job.run(true).await {
                // the upload the journal named is gone from the server
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(path) = journal::path_of(&job.bucket, &job.key) {
                        let _ = std::fs::remove_file(path);
                    }
                    job.run(false).await
                }
                other => other,
            }
        })
    }

    /// Starts uploading a small file (one request, at most
    /// [`SINGLE_PUT_MAX`] bytes) as `key` with ferry's metadata, and returns
    /// at once: many small objects are in flight together, their bytes
    /// drawn from the shared budget. [`Bucket::finish`] waits for it.
    pub fn upload_soon(
        &self,
        key: &str,
        file: Arc<File>,
        len: u64,
        meta: &Object,
    ) -> tokio::task::JoinHandle<io::Result<Option<String>>> {
        debug_assert!(len <= SINGLE_PUT_MAX);
        let attrs = attributes(meta);
        let (store, budget) = (self.inner.store.clone(), self.inner.budget.clone());
        let p = path(key);
        self.inner
            .rt
            .spawn(async move { put_single(&store, &budget, &p, file, len, attrs, false).await })
    }

    /// Waits for an upload started with [`Bucket::upload_soon`]; its ETag.
    pub fn finish(
        &self,
        h: tokio::task::JoinHandle<io::Result<Option<String>>>,
    ) -> io::Result<Option<String>> {
        self.block_on(h).map_err(io::Error::other)?
    }

    /// Aborts the multipart upload `id` of `key` (one already gone is not
    /// an error).
    pub fn abort(&self, key: &str, id: &str) -> io::Result<()> {
        let store = self.inner.store.clone();
        let (p, id) = (path(key), id.to_string());
        self.block_on(async move {
            match store.abort_multipart(&p, &id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(err(e)),
            }
        })
    }

    pub fn delete(&self, key: &str) -> io::Result<()> {
        let store = self.inner.store.clone();
        let p = path(key);
        self.block_on(async move { store.delete(&p).await.map_err(err) })
    }

    pub fn delete_path(&self, p: &Path) -> io::Result<()> {
        let store = self.inner.store.clone();
        let p = p.clone();
        self.block_on(async move { store.delete(&p).await.map_err(err) })
    }

    /// Copies `from` to `to` on the server.
    pub fn copy(&self, from: &str, to: &str) -> io::Result<()> {
        let store = self.inner.store.clone();
        let (f, t) = (path(from), path(to));
        self.block_on(async move { store.copy(&f, &t).await.map_err(err) })
    }
}

/// A listing consumed as it streams (see [`Bucket::list_stream`]).
pub struct ListStream {
    bucket: Bucket,
    /// The walk, until its end or its first error.
    tree: Option<Tree>,
}

impl ListStream {
    /// The next object: its key and what the listing says of it.
    pub fn next_object(&mut self) -> io::Result<Option<(String, Listed)>> {
        let Some(tree) = self.tree.as_mut() else {
            return Ok(None);
        };
        let got = self.bucket.block_on(tree.next());
        match got {
            Ok(None) => {
                self.tree = None;
                Ok(None)
            }
            Err(e) => {
                self.tree = None;
                Err(err(e))
            }
            Ok(Some(m)) => {
                let listed = Listed {
                    size: m.size,
                    etag: m.e_tag,
                    modified_ms: m.last_modified.timestamp_millis(),
                };
                Ok(Some((m.location.to_string(), listed)))
            }
        }
    }
}

/// An object's lines as its body streams in (see [`Bucket::lines`]).
pub struct Lines {
    bucket: Bucket,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    at: usize,
}

impl Iterator for Lines {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<io::Result<String>> {
        loop {
            if let Some(i) = self.buf[self.at..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.at..self.at + i];
                let line = String::from_utf8_lossy(line).into_owned();
                self.at += i + 1;
                return Some(Ok(line));
            }
            let stream = self.stream.as_mut()?;
            match self.bucket.block_on(stream.next()) {
                Some(Ok(b)) => {
                    // what was read goes before more comes in
                    self.buf.drain(..self.at);
                    self.at = 0;
                    self.buf.extend_from_slice(&b);
                }
                Some(Err(e)) => {
                    self.stream = None;
                    return Some(Err(err(e)));
                }
                None => {
                    self.stream = None;
                    if self.at >= self.buf.len() {
                        return None;
                    }
                    let line = String::from_utf8_lossy(&self.buf[self.at..]).into_owned();
                    self.at = self.buf.len();
                    return Some(Ok(line));
                }
            }
        }
    }
}

/// One multipart upload, resumable from its journal.
struct Multipart {
    store: Arc<AmazonS3>,
    budget: Arc<Semaphore>,
    p: Path,
    file: Arc<File>,
    len: u64,
    attrs: Attributes,
    bucket: String,
    key: String,
    blake3: [u8; 32],
    /// The server checks each part's signed SHA-256: no MD5 of it.
    checked: bool,
}

impl Multipart {
    /// Uploads the parts not yet accepted (all of them without `resume`)
    /// and completes the upload; returns its ETag.
    async fn run(&self, resume: bool) -> io::Result<Option<String>> {
        // an earlier run's upload of the same content, if any
        let Multipart {
            store,
            budget,
            p,
            file,
            len,
            attrs,
            bucket,
            key,
            blake3,
            checked,
        } = self;
        let (len, blake3, checked) = (*len, *blake3, *checked);
        let found = resume
            .then(|| journal::find(bucket, key, len, &blake3))
            .flatten();
        let (up, done) = match found {
            Some(found) => found,
            None => {
                let id = store
                    .create_multipart_opts(
                        p,
                        PutMultipartOptions {
                            attributes: attrs.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(err)?;
                let up = journal::Upload {
                    id,
                    size: len,
                    part: part_size(len),
                    blake3,
                    check: String::new(),
                };
                (up, BTreeMap::new())
            }
        };
        let journal = Arc::new(journal::Journal::open(bucket, key, &up, &done)?);
        let (id, part) = (up.id.clone(), up.part);
        let count = len.div_ceil(part);
        let parts = futures::stream::iter(0..count)
            .map(|i| {
                let (store, budget, file, p, id) = (
                    store.clone(),
                    budget.clone(),
                    file.clone(),
                    p.clone(),
                    id.clone(),
                );
                let (journal, done) = (journal.clone(), done.get(&(i as usize)).cloned());
                async move {
                    if let Some(etag) = done {
                        return Ok(PartId { content_id: etag });
                    }
                    let at = i * part;
                    let n = part.min(len - at);
                    let units = n.div_ceil(UNIT as u64) as u32;
                    let _permit = budget
                        .acquire_many_owned(units)
                        .await
                        .map_err(io::Error::other)?;
                    let (data, md5) = if checked {
                        (read_part(file, at, n).await?, None)
                    } else {
                        let (data, md5) = read_hashed(file, at, n).await?;
                        (data, Some(md5))
                    };
                    let got = store
                        .put_part(&p, &id, i as usize, PutPayload::from(data))
                        .await
                        .map_err(err)?;
                    if let Some(md5) = md5 {
                        check_etag(&got.content_id, &md5, &format!("part {}", i + 1))?;
                    }
                    journal.part(i as usize, &got.content_id)?;
                    Ok::<_, io::Error>(got)
                }
            })
            .buffered(PARTS_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await;
        // on failure the upload and its journal stay, for a re-run
        let done = store
            .complete_multipart(p, &id, parts?)
            .await
            .map(|r| r.e_tag);
        if let Ok(journal) = Arc::try_unwrap(journal) {
            if done.is_ok() || matches!(done, Err(object_store::Error::NotFound { .. })) {
                journal.done();
            }
        }
        done.map_err(err)
    }
}

/// ferry's metadata for an object (`x-amz-meta-…`): mtime (ns), mode and
/// BLAKE3.
pub(super) fn attributes(meta: &Object) -> Attributes {
    let mut attrs = Attributes::new();
    attrs.insert(
        Attribute::Metadata(META_MTIME.into()),
        format!(
            "{}",
            meta.mtime.0 as i128 * 1_000_000_000 + meta.mtime.1 as i128
        )
        .into(),
    );
    if let Some(mode) = meta.mode {
        attrs.insert(
            Attribute::Metadata(META_MODE.into()),
            format!("{mode:o}").into(),
        );
    }
    if let Some(h) = meta.blake3 {
        attrs.insert(Attribute::Metadata(META_BLAKE3.into()), hex(&h).into());
    }
    attrs
}

/// One PUT of the whole file (conditional with `create_only`); checks the
/// returned ETag against the MD5 of what was sent; returns the ETag.
async fn put_single(
    store: &AmazonS3,
    budget: &Arc<Semaphore>,
    p: &Path,
    file: Arc<File>,
    len: u64,
    attrs: Attributes,
    create_only: bool,
) -> io::Result<Option<String>> {
    let units = len.div_ceil(UNIT as u64).clamp(1, (BUDGET / UNIT) as u64) as u32;
    let _permit = budget
        .clone()
        .acquire_many_owned(units)
        .await
        .map_err(io::Error::other)?;
    let (data, md5) = read_hashed(file, 0, len).await?;
    let opts = PutOptions {
        mode: if create_only {
            PutMode::Create
        } else {
            PutMode::Overwrite
        },
        attributes: attrs,
        ..Default::default()
    };
    let r = store
        .put_opts(p, PutPayload::from(data), opts)
        .await
        .map_err(err)?;
    if let Some(e) = &r.e_tag {
        check_etag(e, &md5, "the object")?;
    }
    Ok(r.e_tag)
}

/// The ETag itself, without quotes, from an ETag or from a part's id as
/// object_store gives it (`<PartMetadata><e_tag>"…"</e_tag>…`).
pub(super) fn etag_text(id: &str) -> &str {
    id.split("<e_tag>")
        .nth(1)
        .and_then(|r| r.split("</e_tag>").next())
        .unwrap_or(id)
        .trim_matches('"')
}

pub(super) fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(data))
}

/// Checks an ETag the server returned for a part (or a single-request
/// object) against the MD5 of what was sent. An ETag that is not a plain
/// MD5 (encrypted objects, some servers) says nothing and is let through;
/// never a multipart object's ETag, which is no content hash.
pub(super) fn check_etag(etag: &str, md5: &str, what: &str) -> io::Result<()> {
    let e = etag_text(etag);
    let plain = e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit());
    if plain && !e.eq_ignore_ascii_case(md5) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the server's ETag for {what} ({e}) is not the MD5 of what was sent \
                 ({md5}): it was corrupted on the way"
            ),
        ));
    }
    Ok(())
}

/// A ranged GET whose body was not the range's length.
fn wrong_length(got: String, want: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the object gave {got} bytes where {want} were asked for"),
    )
}

/// Reads `n` bytes of `file` at `at` and their MD5 (hex), both off the
/// runtime's workers (hashing 16 MiB would hold one up for tens of ms).
async fn read_hashed(file: Arc<File>, at: u64, n: u64) -> io::Result<(Bytes, String)> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, at)?;
        let md5 = md5_hex(&buf);
        Ok((Bytes::from(buf), md5))
    })
    .await
    .map_err(io::Error::other)?
}

/// Reads `n` bytes of `file` at `at`, off the runtime's workers.
pub(super) async fn read_part(file: Arc<File>, at: u64, n: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, at)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

async fn get_small(store: &AmazonS3, p: &Path) -> io::Result<Option<Bytes>> {
    match store.get(p).await {
        Ok(r) => r.bytes().await.map(Some).map_err(err),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

async fn head(store: &AmazonS3, p: &Path) -> io::Result<Option<Object>> {
    let got = store
        .get_opts(
            p,
            GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await;
    let got = match got {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let m = |k: &str| {
        got.attributes
            .get(&Attribute::Metadata(k.to_string().into()))
            .map(|v| v.as_ref().to_string())
    };
    let lm = got.meta.last_modified;
    let mtime = m(META_MTIME)
        .and_then(|t| t.parse::<i128>().ok())
        .map(|ns| {
            (
                ns.div_euclid(1_000_000_000) as i64,
                ns.rem_euclid(1_000_000_000) as u32,
            )
        })
        .unwrap_or((lm.timestamp(), lm.timestamp_subsec_nanos()));
    let size = got.meta.size;
    let mut blake3 = m(META_BLAKE3).and_then(|t| unhex(&t));
    if let (None, Some(check)) = (blake3, m(META_CHECK)) {
        // streamed: the BLAKE3 is in the chunk map that names the same id
        blake3 = streamed_blake3(store, p, size, &check).await?;
    }
    Ok(Some(Object {
        size,
        mtime,
        mode: m(META_MODE).and_then(|t| u32::from_str_radix(&t, 8).ok()),
        blake3,
        etag: got.meta.e_tag.clone(),
        modified_ms: lm.timestamp_millis(),
    }))
}

/// The BLAKE3 a streamed object's chunk map records for it: the map's
/// first line, when it names the object's check id and size (`None` when
/// it does not: another upload's map, or none).
async fn streamed_blake3(
    store: &AmazonS3,
    p: &Path,
    size: u64,
    check: &str,
) -> io::Result<Option<[u8; 32]>> {
    let map = path(&super::chunkmap::key_of(p.as_ref()));
    let got = store
        .get_opts(
            &map,
            GetOptions {
                range: Some(GetRange::Bounded(0..super::chunkmap::HEADER_MAX)),
                ..Default::default()
            },
        )
        .await;
    let data = match got {
        Ok(r) => r.bytes().await.map_err(err)?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    Ok(super::chunkmap::Header::parse(&data)
        .map(|(h, _)| h)
        .filter(|h| h.size == size && !h.check.is_empty() && h.check == check)
        .map(|h| h.blake3))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(t: &str) -> Option<[u8; 32]> {
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_none_needs_more_than_ten_thousand() {
        assert_eq!(part_size(1), 16 << 20);
        assert_eq!(part_size(100 << 30), 16 << 20);
        let five_tib: u64 = 5 << 40;
        let p = part_size(five_tib);
        assert!(five_tib.div_ceil(p) <= 10_000, "{p}");
        assert_eq!(p % (1 << 20), 0);
    }

    #[test]
    fn a_part_etag_that_is_not_the_md5_of_what_was_sent_is_an_error() {
        let md5 = md5_hex(b"part");
        assert!(check_etag(&format!("\"{md5}\""), &md5, "part 1").is_ok());
        let other = md5_hex(b"parT");
        let e = check_etag(&format!("\"{other}\""), &md5, "part 1").unwrap_err();
        assert!(e.to_string().contains("part 1"), "{e}");
        // not a plain MD5 (a multipart or encrypted object's): says nothing
        assert!(check_etag("\"0123-4\"", &md5, "the object").is_ok());
        // a part's id as object_store gives it holds the ETag
        let id = format!("<PartMetadata><e_tag>\"{other}\"</e_tag></PartMetadata>");
        assert!(check_etag(&id, &md5, "part 2").is_err());
        let id = format!("<PartMetadata><e_tag>\"{md5}\"</e_tag></PartMetadata>");
        assert!(check_etag(&id, &md5, "part 2").is_ok());
    }

    #[test]
    fn hex_round_trips() {
        let h = [7u8; 32];
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
    }
}

/// A fetched body's small chunks copied together. Each chunk the HTTP client
/// hands over keeps its whole read buffer alive, and where the network
/// delivers a little at a time those buffers can hold more memory than the
/// bytes fetched, which the byte budget counts. Chunks of 64 KiB or more (all
/// of them on a fast link) are kept as they are, uncopied; smaller ones go
/// into a buffer of 1 MiB, so what a range holds stays within its bytes plus
/// one such buffer.
#[derive(Default)]
struct Gather {
    buf: bytes::BytesMut,
}

impl Gather {
    const SMALL: usize = 64 << 10;
    const BUF: usize = 1 << 20;

    fn take(&mut self, chunk: Bytes, out: &mut VecDeque<Bytes>) {
        if chunk.is_empty() {
            return;
        }
        if chunk.len() >= Self::SMALL {
            self.flush(out);
            out.push_back(chunk);
            return;
        }
        if self.buf.capacity() - self.buf.len() < chunk.len() {
            self.flush(out);
            self.buf = bytes::BytesMut::with_capacity(Self::BUF);
        }
        self.buf.extend_from_slice(&chunk);
    }

    /// What was gathered goes out (in order, before what comes next).
    fn flush(&mut self, out: &mut VecDeque<Bytes>) {
        if !self.buf.is_empty() {
            out.push_back(self.buf.split().freeze());
        }
    }
}

#[cfg(test)]
mod gather_tests {
    use super::*;

    #[test]
    fn small_chunks_are_copied_together_large_ones_kept_and_the_order_holds() {
        let mut out = VecDeque::new();
        let mut g = Gather::default();
        let mut want = Vec::new();
        let sizes = [10, 3000, 70_000, 1, 65_535, 65_536, 900_000, 200_000, 7];
        for (i, n) in sizes.into_iter().enumerate() {
            let c: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            want.extend_from_slice(&c);
            g.take(Bytes::from(c), &mut out);
        }
        g.flush(&mut out);
        let got: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(got, want);
        // 10+3000 gathered, 70,000 kept, 1+65,535 gathered, 65,536 and
        // 900,000 kept, 200,000 kept, 7 gathered
        let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(lens, [3010, 70_000, 65_536, 65_536, 900_000, 200_000, 7]);
    }
}
