//! A new version of a large object composed on the server: the ranges of the
//! old object whose chunks the new file still has are copied there
//! (UploadPartCopy), and only the rest is sent. The old object's chunk map
//! ([`super::chunkmap`]) says where its chunks are; the new file is cut the
//! same way, so an edit changes only the chunks it touches.
//!
//! S3 takes parts of at least 5 MiB (all but the last), copied or sent
//! alike, so the plan ([`plan`]) is: an unchanged run shorter than 5 MiB is
//! sent with the changes around it; a changed run shorter than 5 MiB that
//! follows a copied run is sent as the last part of a small temporary
//! object whose first part copies the last 5 MiB of that run, and the
//! temporary object is then copied whole as one part (so a small edit costs
//! its own bytes, not 5 MiB). Every part's ETag (the MD5 of its bytes) is
//! checked against the same range of the local file, copied parts included:
//! what the server composed is what was meant, or the upload is aborted and
//! nothing is published (the caller then uploads the file whole).
//!
//! Not for when to compose or what metadata the object carries (that is
//! [`super::destination`]), nor for resuming part by part: a composed
//! upload is journaled (so `ferry s3 cleanup` can abort it) but a re-run
//! composes again, which costs the changed bytes again, no more.

use super::bucket::{self, check_etag, err, md5_hex, read_part, Bucket, Object};
use super::chunkmap::{self, ChunkMap};
use super::copy_part::Copier;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{Attributes, ObjectStoreExt, PutMultipartOptions, PutPayload};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// Where the temporary objects of a composition live: under the chunk
/// maps' prefix (hidden from listings), named after the key they are for,
/// so `ferry s3 cleanup s3://bucket/prefix` finds those a killed run left.
pub fn temp_dir() -> String {
    format!("{}/.compose", chunkmap::PREFIX)
}

/// The smallest part S3 takes (but for the last).
pub const MIN_PART: u64 = 5 << 20;
/// The largest range one UploadPartCopy copies.
const MAX_COPY: u64 = 5 << 30;
/// Parts one upload may have.
const MAX_PARTS: usize = 10_000;
/// Parts (and temporary objects) in flight at once.
const AT_ONCE: usize = 4;

/// One part of the new object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `len` bytes of the old object at `from`, which are the new file's at
    /// `at`.
    Copy { from: u64, at: u64, len: u64 },
    /// The new file's bytes at `at`.
    Send { at: u64, len: u64 },
    /// A temporary object copied whole: `pad` bytes of the old object at
    /// `from` (the new file's at `at`), then the new file's `len` bytes at
    /// `at + pad`, sent.
    Joined {
        from: u64,
        at: u64,
        pad: u64,
        len: u64,
    },
}

impl Part {
    /// The range of the new file this part holds.
    fn span(&self) -> (u64, u64) {
        match *self {
            Part::Copy { at, len, .. } | Part::Send { at, len } => (at, len),
            Part::Joined { at, pad, len, .. } => (at, pad + len),
        }
    }
}

/// The parts of a new version, and the bytes sent to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub parts: Vec<Part>,
    pub sent: u64,
}

/// A stretch of the new file: copied from the old object at `Some(from)`,
/// or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    at: u64,
    len: u64,
    from: Option<u64>,
}

/// The new file's chunks matched against the old object's: runs of chunks
/// that sit back to back in both, and runs of new chunks.
fn runs(old: &ChunkMap, new: &ChunkMap) -> Vec<Run> {
    let mut offsets = Vec::with_capacity(old.chunks.len());
    let mut first: HashMap<[u8; 16], usize> = HashMap::with_capacity(old.chunks.len());
    let mut o = 0u64;
    for (i, (len, h)) in old.chunks.iter().enumerate() {
        offsets.push(o);
        first.entry(*h).or_insert(i);
        o += *len as u64;
    }
    let mut out: Vec<Run> = Vec::new();
    // the old chunk after the current copied run, to keep runs long where
    // the same chunk is in the old object many times (zeros)
    let mut next_old: Option<usize> = None;
    let mut at = 0u64;
    for (len, h) in &new.chunks {
        let len = *len as u64;
        let hit = match next_old {
            Some(j) if old.chunks.get(j).is_some_and(|c| c.1 == *h) => Some(j),
            _ => first.get(h).copied(),
        };
        match (hit, out.last_mut()) {
            (Some(j), Some(r)) if r.from.is_some() && next_old == Some(j) => r.len += len,
            (None, Some(r)) if r.from.is_none() => r.len += len,
            (hit, _) => out.push(Run {
                at,
                len,
                from: hit.map(|j| offsets[j]),
            }),
        }
        next_old = hit.map(|j| j + 1);
        at += len;
    }
    out
}

/// Adds a run, joining it to the last if both are sent.
fn push(runs: &mut Vec<Run>, r: Run) {
    if r.len == 0 {
        return;
    }
    match runs.last_mut() {
        Some(l) if l.from.is_none() && r.from.is_none() => l.len += r.len,
        _ => runs.push(r),
    }
}

/// Splits `len` bytes into the fewest pieces of at most `max`, evenly.
fn pieces(at: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let k = len.div_ceil(max).max(1);
    let base = len / k;
    let extra = len % k;
    (0..k).scan(at, move |p, i| {
        let n = base + u64::from(i < extra);
        let r = (*p, n);
        *p += n;
        Some(r)
    })
}

/// The parts that make the new file (`new.size` bytes) from the old
/// object's chunks and the new file's, or `None` when the server cannot be
/// asked to (too many parts).
pub fn plan(old: &ChunkMap, new: &ChunkMap) -> Option<Plan> {
    let part = bucket::part_size(new.size);
    // copied runs shorter than a part S3 takes are sent (but the last)
    let all = runs(old, new);
    let n = all.len();
    let mut rs: Vec<Run> = Vec::new();
    for (i, r) in all.into_iter().enumerate() {
        let small = r.len < MIN_PART && i + 1 < n;
        push(
            &mut rs,
            Run {
                from: if small { None } else { r.from },
                ..r
            },
        );
    }
    // a short sent run at the start has no copied run before it to pad it
    // out: it takes bytes from the run after it
    if rs.len() >= 2 && rs[0].from.is_none() && rs[0].len < MIN_PART {
        let need = MIN_PART - rs[0].len;
        let c = rs[1];
        if c.len >= need + MIN_PART || rs.len() == 2 {
            let take = need.min(c.len);
            rs[0].len += take;
            rs[1] = Run {
                at: c.at + take,
                len: c.len - take,
                from: c.from.map(|f| f + take),
            };
            if rs[1].len == 0 {
                rs.remove(1);
            }
        } else {
            let mut merged = vec![Run {
                at: 0,
                len: rs[0].len + c.len,
                from: None,
            }];
            for r in rs.drain(2..) {
                push(&mut merged, r);
            }
            rs = merged;
        }
    }
    let mut parts: Vec<Part> = Vec::new();
    let last = rs.len().saturating_sub(1);
    for (i, r) in rs.iter().enumerate() {
        match r.from {
            Some(from) => {
                for (at, len) in pieces(r.at, r.len, MAX_COPY) {
                    parts.push(Part::Copy {
                        from: from + (at - r.at),
                        at,
                        len,
                    });
                }
            }
            None if i == last || r.len >= MIN_PART => {
                for (at, len) in pieces(r.at, r.len, part) {
                    parts.push(Part::Send { at, len });
                }
            }
            None => {
                // after a copied run (at least 5 MiB): its tail pads this
                // one out in a temporary object
                let Some(Part::Copy { from, at, len }) = parts.pop() else {
                    return None;
                };
                let pad = if len >= 2 * MIN_PART { MIN_PART } else { len };
                if len > pad {
                    parts.push(Part::Copy {
                        from,
                        at,
                        len: len - pad,
                    });
                }
                parts.push(Part::Joined {
                    from: from + len - pad,
                    at: at + len - pad,
                    pad,
                    len: r.len,
                });
            }
        }
    }
    if parts.len() > MAX_PARTS {
        return None;
    }
    let sent = parts
        .iter()
        .map(|p| match *p {
            Part::Send { len, .. } | Part::Joined { len, .. } => len,
            Part::Copy { .. } => 0,
        })
        .sum();
    Some(Plan { parts, sent })
}

/// The old object's chunk map, when it describes `old` (the object now at
/// `key`).
pub fn old_map(b: &Bucket, key: &str, old: &Object) -> io::Result<Option<ChunkMap>> {
    Ok(b.get_small(&chunkmap::key_of(key))?
        .and_then(|d| ChunkMap::parse(&d))
        .filter(|m| m.describes(old)))
}

/// Uploads `file` (the new file, `new.size` bytes) as `key` by `plan`, with
/// `attrs` (ferry's metadata); the old object at `key` has ETag `old_etag`.
/// Returns the new object's ETag. On failure the uploads are aborted and
/// the temporary objects removed: nothing new is at `key`.
pub fn run(
    b: &Bucket,
    key: &str,
    (file, new_size, blake3): (Arc<File>, u64, [u8; 32]),
    plan: &Plan,
    attrs: Attributes,
    old_etag: Option<String>,
) -> io::Result<Option<String>> {
    let (rt, store) = b.raw();
    let copier = Arc::new(Copier::new(b.name(), store.clone())?);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp_base = format!("{}/{key}.{}-{stamp:x}", temp_dir(), std::process::id());
    let job = Job {
        store,
        budget: b.budget(),
        copier,
        file,
        bucket: b.name().to_string(),
        key: key.to_string(),
        old_etag,
        tmp_base,
        size: new_size,
        blake3,
    };
    rt.block_on(job.run(plan, attrs))
}

/// One composed upload in progress.
struct Job {
    store: Arc<object_store::aws::AmazonS3>,
    /// The process's one in-flight budget: bytes of the new file read to be
    /// sent take their share of it first.
    budget: Arc<tokio::sync::Semaphore>,
    copier: Arc<Copier>,
    file: Arc<File>,
    bucket: String,
    key: String,
    old_etag: Option<String>,
    tmp_base: String,
    /// The new file's size and BLAKE3 (for the journal).
    size: u64,
    blake3: [u8; 32],
}

/// What a part checks against: the MD5 of the new file's bytes it holds.
async fn local_md5(file: Arc<File>, at: u64, len: u64) -> io::Result<String> {
    tokio::task::spawn_blocking(move || {
        use md5::Digest;
        use std::os::unix::fs::FileExt;
        let mut h = md5::Md5::new();
        let mut buf = vec![0u8; (1 << 20).min(len as usize).max(1)];
        let mut done = 0u64;
        while done < len {
            let n = buf.len().min((len - done) as usize);
            file.read_exact_at(&mut buf[..n], at + done)?;
            h.update(&buf[..n]);
            done += n as u64;
        }
        Ok(bucket::hex(&h.finalize()))
    })
    .await
    .map_err(io::Error::other)?
}

impl Job {
    /// Reads `len` bytes of the new file at `at` to send, once the budget
    /// has room for them (held until the returned permit is dropped).
    async fn read_budgeted(
        &self,
        at: u64,
        len: u64,
    ) -> io::Result<(Bytes, tokio::sync::OwnedSemaphorePermit)> {
        let units = len
            .div_ceil(bucket::UNIT as u64)
            .clamp(1, (bucket::BUDGET / bucket::UNIT) as u64) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(io::Error::other)?;
        Ok((read_part(self.file.clone(), at, len).await?, permit))
    }

    async fn run(&self, plan: &Plan, attrs: Attributes) -> io::Result<Option<String>> {
        let temps: Vec<(usize, Part)> = plan
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Part::Joined { .. }))
            .map(|(i, p)| (i, *p))
            .collect();
        let got = self.compose(plan, &temps, attrs).await;
        // the temporary objects go, whatever happened
        for (i, _) in &temps {
            let _ = self.store.delete(&Path::from(self.tmp_key(*i))).await;
        }
        got
    }

    fn tmp_key(&self, i: usize) -> String {
        format!("{}.{i}", self.tmp_base)
    }

    async fn compose(
        &self,
        plan: &Plan,
        temps: &[(usize, Part)],
        attrs: Attributes,
    ) -> io::Result<Option<String>> {
        // the temporary objects first: each is one part of the new object
        futures::stream::iter(temps.iter().copied())
            .map(|(i, p)| self.temp(i, p))
            .buffer_unordered(AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        let dest = Path::from(self.key.as_str());
        let id = self
            .store
            .create_multipart_opts(
                &dest,
                PutMultipartOptions {
                    attributes: attrs,
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        // journaled, so that `ferry s3 cleanup` can abort it if this
        // process dies; an upload an earlier run left for this key is
        // aborted first (its journal would be overwritten)
        for (file, b, k, old) in super::journal::all() {
            if b == self.bucket && k == self.key {
                let _ = self.store.abort_multipart(&dest, &old).await;
                let _ = std::fs::remove_file(file);
            }
        }
        let up = super::journal::Upload {
            id: id.clone(),
            size: self.size,
            part: bucket::part_size(self.size),
            blake3: self.blake3,
            check: String::new(),
        };
        let journal =
            super::journal::Journal::open(&self.bucket, &self.key, &up, &Default::default())?;
        let parts = futures::stream::iter(plan.parts.iter().copied().enumerate())
            .map(|(i, p)| self.part(&dest, &id, i, p))
            .buffered(AT_ONCE)
            .try_collect::<Vec<PartId>>()
            .await;
        let done = match parts {
            Ok(parts) => self
                .store
                .complete_multipart(&dest, &id, parts)
                .await
                .map_err(err),
            Err(e) => Err(e),
        };
        let done = match done {
            Ok(r) => Ok(r.e_tag),
            Err(e) => {
                let _ = self.store.abort_multipart(&dest, &id).await;
                Err(e)
            }
        };
        journal.done();
        done
    }

    /// Fills part `i` of upload `id` of `dest`, checking its ETag against
    /// the new file's bytes.
    async fn part(&self, dest: &Path, id: &str, i: usize, p: Part) -> io::Result<PartId> {
        let (at, len) = p.span();
        let want = local_md5(self.file.clone(), at, len);
        let got = match p {
            Part::Copy { from, len, .. } => {
                self.copier
                    .copy(
                        &self.key,
                        id,
                        i,
                        &self.key,
                        from..from + len,
                        self.old_etag.as_deref(),
                    )
                    .await?
            }
            Part::Joined { .. } => {
                self.copier
                    .copy(&self.key, id, i, &self.tmp_key(i), 0..len, None)
                    .await?
            }
            Part::Send { at, len } => {
                let (data, _permit) = self.read_budgeted(at, len).await?;
                let id = id.to_string();
                self.store
                    .put_part(dest, &id, i, PutPayload::from(data))
                    .await
                    .map_err(err)?
                    .content_id
            }
        };
        check_etag(&got, &want.await?, &format!("part {}", i + 1))?;
        Ok(PartId { content_id: got })
    }

    /// Makes the temporary object for part `i`: the old object's bytes
    /// (copied), then the new file's (sent).
    async fn temp(&self, i: usize, p: Part) -> io::Result<()> {
        let Part::Joined { from, at, pad, len } = p else {
            return Ok(());
        };
        let key = self.tmp_key(i);
        let dest = Path::from(key.as_str());
        let id = self.store.create_multipart(&dest).await.map_err(err)?;
        // journaled, so that `ferry s3 cleanup` aborts it if this process
        // dies (the temporary object itself it removes by its prefix)
        let up = super::journal::Upload {
            id: id.clone(),
            size: pad + len,
            part: pad,
            blake3: self.blake3,
            check: String::new(),
        };
        let journal = super::journal::Journal::open(&self.bucket, &key, &up, &Default::default())?;
        let work = async {
            let want = local_md5(self.file.clone(), at, pad).await?;
            let e1 = self
                .copier
                .copy(
                    &key,
                    &id,
                    0,
                    &self.key,
                    from..from + pad,
                    self.old_etag.as_deref(),
                )
                .await?;
            check_etag(&e1, &want, "a copied range")?;
            let (data, _permit) = self.read_budgeted(at + pad, len).await?;
            let md5 = md5_hex(&data);
            let e2 = self
                .store
                .put_part(&dest, &id, 1, PutPayload::from(data))
                .await
                .map_err(err)?
                .content_id;
            check_etag(&e2, &md5, "a changed range")?;
            self.store
                .complete_multipart(
                    &dest,
                    &id,
                    vec![PartId { content_id: e1 }, PartId { content_id: e2 }],
                )
                .await
                .map_err(err)
        };
        let got = match work.await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.store.abort_multipart(&dest, &id).await;
                Err(e)
            }
        };
        journal.done();
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u32 = 8 << 10;

    /// A map of `n` chunks of 8 KiB named by `name(i)`.
    fn map(names: &[u64]) -> ChunkMap {
        ChunkMap {
            size: names.len() as u64 * C as u64,
            blake3: [0; 32],
            etag: String::new(),
            check: String::new(),
            chunks: names
                .iter()
                .map(|&x| {
                    let mut h = [0u8; 16];
                    h[..8].copy_from_slice(&x.to_le_bytes());
                    (C, h)
                })
                .collect(),
        }
    }

    /// Checks that the parts tile the new file and keep S3's size rules.
    fn check(p: &Plan, size: u64) {
        let mut at = 0;
        for (i, part) in p.parts.iter().enumerate() {
            let (a, len) = part.span();
            assert_eq!(a, at, "{p:?}");
            if i + 1 < p.parts.len() {
                assert!(len >= MIN_PART, "part {i} is {len} bytes: {p:?}");
            }
            if let Part::Joined { pad, .. } = part {
                assert!(*pad >= MIN_PART);
            }
            at += len;
        }
        assert_eq!(at, size);
    }

    const N: u64 = (64 << 20) / C as u64; // 64 MiB

    #[test]
    fn an_unchanged_file_is_copied_whole() {
        let old = map(&(0..N).collect::<Vec<_>>());
        let p = plan(&old, &old).unwrap();
        check(&p, old.size);
        assert_eq!(p.sent, 0);
        assert_eq!(p.parts.len(), 1);
    }

    #[test]
    fn a_small_edit_in_the_middle_sends_only_its_chunks() {
        let old: Vec<u64> = (0..N).collect();
        let mut new = old.clone();
        for x in &mut new[4000..4010] {
            *x += 1 << 40;
        }
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, 10 * C as u64, "{p:?}");
        assert!(p.parts.iter().any(|x| matches!(x, Part::Joined { .. })));
    }

    #[test]
    fn scattered_edits_far_apart_each_cost_their_own_bytes() {
        let old: Vec<u64> = (0..N).collect();
        let mut new = old.clone();
        // seven edits 8 MiB apart, and one at the end
        for k in 0..7u64 {
            let i = (700 + k * 1024) as usize;
            new[i] += 1 << 40;
        }
        *new.last_mut().unwrap() += 1 << 40;
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, 8 * C as u64);
    }

    #[test]
    fn an_edit_at_the_start_is_sent_with_what_follows_up_to_a_part() {
        let old: Vec<u64> = (0..N).collect();
        let mut new = old.clone();
        new[0] += 1 << 40;
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, MIN_PART);
    }

    #[test]
    fn edits_closer_than_a_part_are_sent_with_what_is_between_them() {
        let old: Vec<u64> = (0..N).collect();
        let mut new = old.clone();
        new[2000] += 1 << 40;
        new[2100] += 1 << 40; // 800 KiB later
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, 101 * C as u64);
    }

    #[test]
    fn inserted_and_removed_bytes_move_nothing_else() {
        let old: Vec<u64> = (0..N).collect();
        let mut new = old.clone();
        new.insert(3000, 1 << 50);
        new.remove(6000);
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, new.len() as u64 * C as u64);
        assert_eq!(p.sent, C as u64);
    }

    #[test]
    fn a_file_with_nothing_in_common_is_sent_whole() {
        let old: Vec<u64> = (0..N).collect();
        let new: Vec<u64> = (0..N).map(|x| x + (1 << 40)).collect();
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, N * C as u64);
    }

    #[test]
    fn repeated_chunks_still_copy_in_long_runs() {
        let old: Vec<u64> = vec![7; N as usize];
        let mut new = old.clone();
        new[5000] = 9;
        let p = plan(&map(&old), &map(&new)).unwrap();
        check(&p, N * C as u64);
        assert_eq!(p.sent, C as u64);
        assert!(p.parts.len() <= 4, "{p:?}");
    }
}
