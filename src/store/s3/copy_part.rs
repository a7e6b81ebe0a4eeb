//! UploadPartCopy: one part of a multipart upload filled on the server from
//! a byte range of an object already there (`x-amz-copy-source`,
//! `x-amz-copy-source-range`), which object_store has no call for. The
//! request is ferry's own, signed (SigV4) by object_store's
//! [`AwsAuthorizer`] with the store's own credentials, and sent with an HTTP
//! client made from object_store's (reqwest) on the bucket's runtime;
//! path-style addressing, as the store is configured.
//!
//! Not for deciding what to copy (that is [`super::compose`]) nor for the
//! rest of the upload (object_store's multipart calls).

use object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Where requests go and how they are signed.
pub struct Copier {
    http: HttpClient,
    store: Arc<AmazonS3>,
    /// `http(s)://host[:port]`, no trailing slash.
    endpoint: String,
    region: String,
    bucket: String,
}

/// A key (or bucket) as it goes in a path: every byte but the unreserved
/// ones and `/` percent-encoded (S3's rule for SigV4's canonical URI).
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The ETag in an UploadPartCopy answer (`<CopyPartResult><ETag>…`).
fn etag_of(body: &str) -> Option<String> {
    let start = body.find("<ETag>")? + "<ETag>".len();
    let end = start + body[start..].find("</ETag>")?;
    let e = body[start..end]
        .replace("&quot;", "\"")
        .replace("&#34;", "\"");
    Some(e.trim().to_string())
}

impl Copier {
    /// A copier for `bucket`, configured as its client is.
    pub fn new(bucket: &str, store: Arc<AmazonS3>) -> io::Result<Copier> {
        let b = super::config::builder(bucket).map_err(io::Error::other)?;
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = b
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        let http = ReqwestConnector::default()
            .connect(
                &ClientOptions::new()
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_allow_http(endpoint.starts_with("http://")),
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Copier {
            http,
            store,
            endpoint,
            region,
            bucket: bucket.to_string(),
        })
    }

    /// Fills part `part` (0-based) of upload `upload_id` of `key` with
    /// `range` of the object `from` (pinned to `if_match` where the server
    /// honours it); returns the part's ETag.
    pub async fn copy(
        &self,
        key: &str,
        upload_id: &str,
        part: usize,
        from: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> io::Result<String> {
        let cred = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let url = format!(
            "{}/{}/{}?partNumber={}&uploadId={}",
            self.endpoint,
            encode(&self.bucket),
            encode(key),
            part + 1,
            encode(upload_id).replace('/', "%2F"),
        );
        let mut req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&url)
            .header(
                "x-amz-copy-source",
                format!("/{}/{}", encode(&self.bucket), encode(from)),
            )
            .header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        if let Some(e) = if_match {
            req = req.header("x-amz-copy-source-if-match", e);
        }
        let mut req: HttpRequest = req
            .body(HttpRequestBody::empty())
            .map_err(io::Error::other)?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| io::Error::other(format!("UploadPartCopy: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| io::Error::other(format!("UploadPartCopy: {e}")))?;
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let code = body
                .split("<Code>")
                .nth(1)
                .and_then(|r| r.split("</Code>").next())
                .unwrap_or("");
            return Err(io::Error::other(format!(
                "the server refused to copy a part on its side (UploadPartCopy: {status} {code})"
            )));
        }
        // an error may come with 200 (S3 does this for copies)
        etag_of(&body).ok_or_else(|| {
            io::Error::other("the server's answer to UploadPartCopy has no ETag (it failed)")
        })
    }
}

impl Copier {
    /// PUTs `body` as part `part` (1-based) of upload `upload_id` of `key`,
    /// signed as if its SHA-256 were `claimed` (the `x-amz-content-sha256`
    /// header); the answer's status and body. For [`super::probe`] only: a
    /// server that checks signed payloads refuses a claim that is not the
    /// body's.
    pub async fn upload_part_claiming(
        &self,
        key: &str,
        upload_id: &str,
        part: usize,
        body: &'static [u8],
        claimed: &[u8],
    ) -> io::Result<(u16, String)> {
        let cred = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let url = format!(
            "{}/{}/{}?partNumber={part}&uploadId={}",
            self.endpoint,
            encode(&self.bucket),
            encode(key),
            encode(upload_id).replace('/', "%2F"),
        );
        let mut req: HttpRequest = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&url)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(HttpRequestBody::from(bytes::Bytes::from_static(body)))
            .map_err(io::Error::other)?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, Some(claimed))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().bytes().await.unwrap_or_default();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_s3_signs_them() {
        assert_eq!(encode("a/b c+d.bin"), "a/b%20c%2Bd.bin");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn the_etag_is_read_from_the_answer() {
        let b =
            "<?xml version=\"1.0\"?><CopyPartResult><ETag>&quot;abc&quot;</ETag></CopyPartResult>";
        assert_eq!(etag_of(b).as_deref(), Some("\"abc\""));
        assert_eq!(etag_of("<Error><Code>InternalError</Code></Error>"), None);
    }
}
