//! Whether the server checks the SHA-256 a request's signature names for its
//! body (SigV4's `x-amz-content-sha256`) on UploadPart, learnt once per
//! bucket from a throwaway multipart upload: CreateMultipartUpload on a
//! unique hidden key, one UploadPart whose signature names the wrong hash,
//! then AbortMultipartUpload, whatever the answers were. Nothing is ever
//! completed, so no object is left at the key, and the abort removes the
//! part the server may hold.
//!
//! The wrong-hash part must be refused *for the hash*: a 400 naming it
//! (`XAmzContentSHA256Mismatch`, as AWS S3 and MinIO answer, or
//! `BadDigest`); or a 400 or 500 that does not say why (s3s answers a bare
//! `InternalError`), but only when the same request refused again gets the
//! same answer and the part naming the right hash is taken. Then every part
//! object_store uploads (it signs each part's SHA-256) is checked by the
//! server against the bytes it received, and the MD5 ferry would otherwise
//! compute of every part to check its ETag (the same check, with a weaker
//! hash, at 38% of the upload's CPU) is skipped.
//!
//! Any other answer keeps the MD5 check: a server that takes the part, and
//! one that refuses it for another reason (throttled with 503 SlowDown, no
//! right to write, a proxy's 502, a network failure) has said nothing about
//! hashes.
//!
//! Not for choosing the per-request checksum header (`--s3-checksum`, see
//! [`super::config`]; with `none` nothing is probed and the MD5 check
//! stays, see [`super::bucket::Bucket::payload_checked`]) nor for checking
//! anything itself.

use super::copy_part::Copier;
use super::{bucket::path, chunkmap};
use object_store::multipart::MultipartStore;
use std::sync::Arc;

/// What the probe part carries (and does not claim).
const BODY: &[u8] = b"ferry: does this server check the payload hash it signs?";

/// What the server's answer to a part naming the wrong hash says.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 2xx: it took bytes its signature did not vouch for.
    Taken,
    /// 400 naming the hash: `XAmzContentSHA256Mismatch` or `BadDigest`.
    HashMismatch,
    /// A 400 or 500 that does not say why (status, error code if any): a
    /// refusal for the hash only if it holds when asked again and the right
    /// hash is taken.
    Unexplained(u16, String),
    /// A refusal that names another reason, or another status: nothing
    /// learnt about hashes.
    Other,
}

impl Answer {
    fn of(status: u16, body: &str) -> Answer {
        let code = body
            .split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or("")
            .trim()
            .to_string();
        let names_the_hash = ["XAmzContentSHA256Mismatch", "BadDigest"]
            .iter()
            .any(|c| code.eq_ignore_ascii_case(c));
        // codes that say only "bad request" or "something failed"
        let says_nothing = ["", "InternalError", "InvalidRequest", "BadRequest"]
            .iter()
            .any(|c| code.eq_ignore_ascii_case(c));
        match status {
            200..=299 => Answer::Taken,
            400 if names_the_hash => Answer::HashMismatch,
            400 | 500 if says_nothing => Answer::Unexplained(status, code),
            _ => Answer::Other,
        }
    }
}

/// Whether the server refused an UploadPart whose signed payload hash was
/// not its body's (see the module's note). `key_hint`: a key the run
/// writes, so that the probe goes where the run may write (under ferry's
/// hidden prefix).
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
    let p = path(&key);
    let Ok(upload) = store.create_multipart(&p).await else {
        return false;
    };
    let verdict = ask(&copier, &key, &upload).await;
    // always, whatever was answered: the upload is never completed, so
    // this leaves no object, and it removes any part the server took; a
    // server that throttles or drops the abort is asked again (its part
    // would stay, billed, until a lifecycle rule removes it)
    for wait_ms in [0, 250, 1000] {
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        if store.abort_multipart(&p, &upload).await.is_ok() {
            break;
        }
    }
    verdict
}

/// Puts part 1 of `upload` naming the wrong hash (and again, and with the
/// right one, when the refusal does not say why); whether the answers
/// prove that the server checks the hash.
async fn ask(copier: &Copier, key: &str, upload: &str) -> bool {
    let sha = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let wrong = sha(b"not the body");
    let send = |claimed: &[u8]| {
        let claimed = claimed.to_vec();
        async move {
            copier
                .upload_part_claiming(key, upload, 1, BODY, &claimed)
                .await
                .map(|(status, body)| Answer::of(status, &body))
        }
    };
    match send(wrong.as_ref()).await {
        Ok(Answer::HashMismatch) => true,
        Ok(first @ Answer::Unexplained(..)) => {
            // refused without saying why: it must be refused the same way
            // again (not a passing fault) and the right hash must be taken
            // (not a refusal of anything else the request holds)
            matches!(send(wrong.as_ref()).await, Ok(again) if again == first)
                && matches!(send(sha(BODY).as_ref()).await, Ok(Answer::Taken))
        }
        Ok(Answer::Taken | Answer::Other) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_that_names_the_hash_proves_a_check_at_once() {
        let aws = "<Error><Code>XAmzContentSHA256Mismatch</Code></Error>";
        assert_eq!(Answer::of(400, aws), Answer::HashMismatch);
        assert_eq!(
            Answer::of(400, "<Code>BadDigest</Code>"),
            Answer::HashMismatch
        );
        assert_eq!(Answer::of(200, ""), Answer::Taken);
        assert_eq!(Answer::of(204, aws), Answer::Taken);
    }

    #[test]
    fn a_refusal_for_another_reason_says_nothing_of_hashes() {
        let slow = "<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>";
        assert_eq!(Answer::of(503, slow), Answer::Other);
        assert_eq!(Answer::of(503, ""), Answer::Other);
        assert_eq!(Answer::of(502, "<html>Bad Gateway</html>"), Answer::Other);
        assert_eq!(Answer::of(403, "<Code>AccessDenied</Code>"), Answer::Other);
        assert_eq!(Answer::of(404, "<Code>NoSuchUpload</Code>"), Answer::Other);
        // a hash code with another status than S3's is not taken on its word
        assert_eq!(Answer::of(503, "<Code>BadDigest</Code>"), Answer::Other);
        // a 400 or 500 that names another reason
        assert_eq!(
            Answer::of(400, "<Code>InvalidArgument</Code>"),
            Answer::Other
        );
        assert_eq!(Answer::of(500, "<Code>SlowDown</Code>"), Answer::Other);
    }

    #[test]
    fn a_bare_400_or_500_is_unexplained_and_keeps_its_code_for_the_repeat() {
        let s3s = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code></Error>";
        assert_eq!(
            Answer::of(500, s3s),
            Answer::Unexplained(500, "InternalError".into())
        );
        assert_eq!(Answer::of(400, ""), Answer::Unexplained(400, String::new()));
        assert_ne!(Answer::of(500, s3s), Answer::of(400, ""));
    }
}
