//! Whether the server checks the SHA-256 a request's signature names for its
//! body (SigV4's `x-amz-content-sha256`), learnt once per bucket from a
//! small PUT that names the wrong hash, and (when that is refused without
//! saying why, as s3s does with a bare 500) the same PUT naming the right
//! one, which must then be taken. AWS S3, MinIO, Ceph RGW and s3s refuse
//! the first: there every part object_store uploads (it signs
//! each part's SHA-256) is checked by the server against the bytes it
//! received, and the MD5 ferry would otherwise compute of every part to
//! check its ETag (the same check, with a weaker hash, at 38% of the
//! upload's CPU) is skipped. A server that takes the probe is not trusted
//! with that: the probe object is removed and every part's ETag is checked.
//! Any other answer (no right to write, a network failure) leaves the MD5
//! check on.
//!
//! Not for choosing the per-request checksum header (`--s3-checksum`, see
//! [`super::config`]) nor for checking anything itself.

use super::copy_part::Copier;
use super::{bucket::path, chunkmap};
use object_store::ObjectStoreExt;
use std::sync::Arc;

/// What the probe PUT carries (and does not claim).
const BODY: &[u8] = b"ferry: does this server check the payload hash it signs?";

/// Whether the server refused a PUT whose signed payload hash was not its
/// body's (see the module's note). `key_hint`: a key the run writes, so that
/// the probe goes where the run may write (under ferry's hidden prefix).
pub async fn server_checks_payload(
    bucket: &str,
    store: Arc<object_store::aws::AmazonS3>,
    key_hint: &str,
) -> bool {
    let Ok(copier) = Copier::new(bucket, store.clone()) else {
        return false;
    };
    let mut seed = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut seed);
    let key = chunkmap::key_of(&format!(
        "{}.ferry-probe-{}",
        key_hint
            .rfind('/')
            .map_or(String::new(), |i| key_hint[..=i].to_string()),
        super::bucket::hex(&seed)
    ));
    let sha = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let ok = |status: u16| (200..300).contains(&status);
    match copier
        .put_claiming(&key, BODY, sha(b"not the body").as_ref())
        .await
    {
        Ok((status, _)) if ok(status) => {
            // it took bytes its signature did not vouch for
            let _ = store.delete(&path(&key)).await;
            false
        }
        Ok((status, body)) if refused_for_the_hash(status, &body) => true,
        Ok(_) => {
            // refused, but not saying why: the same request with the right
            // hash must be taken (else it was refused for something else)
            match copier.put_claiming(&key, BODY, sha(BODY).as_ref()).await {
                Ok((status, _)) if ok(status) => {
                    let _ = store.delete(&path(&key)).await;
                    true
                }
                _ => false,
            }
        }
        Err(_) => false,
    }
}

/// Whether an error answer says the payload did not match its hash: S3's
/// and MinIO's `XAmzContentSHA256Mismatch`, or a `BadDigest`.
fn refused_for_the_hash(status: u16, body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    status >= 400
        && ["xamzcontentsha256mismatch", "baddigest"]
            .iter()
            .any(|w| b.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_that_names_the_hash_counts_as_a_check() {
        let aws = "<Error><Code>XAmzContentSHA256Mismatch</Code></Error>";
        assert!(refused_for_the_hash(400, aws));
        assert!(refused_for_the_hash(400, "<Code>BadDigest</Code>"));
        // refused for another reason: says nothing of the hash
        assert!(!refused_for_the_hash(403, "<Code>AccessDenied</Code>"));
        assert!(!refused_for_the_hash(500, "<Code>InternalError</Code>"));
        assert!(!refused_for_the_hash(200, aws));
    }
}
