//! Where a bucket is and how requests to it are signed: the usual AWS
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`), else the profile
//! `AWS_PROFILE` (or `default`) in `~/.aws/credentials` and `~/.aws/config`,
//! and `--s3-endpoint` above both. Requests are path-style (MinIO, Ceph,
//! s3s), plain HTTP is allowed when the endpoint says `http://`, and the
//! client has a stall (read) timeout instead of a whole-request one, so a
//! long download on a slow link is not cut off.
//!
//! Without keys (and outside a container that supplies them) nothing is
//! guessed: the address is refused, naming what to set.
//!
//! Not for requests themselves (that is [`super::bucket`]). Secrets are read
//! here and handed to the client only: nothing here prints or formats them.

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::{ClientOptions, RetryConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// `--s3-endpoint`, set once by the command line.
static ENDPOINT: OnceLock<String> = OnceLock::new();

/// `--s3-checksum`, set once by the command line.
static CHECKSUM: OnceLock<String> = OnceLock::new();

/// Sets the checksum header of upload requests: `sha256` (the default),
/// `crc64nvme`, or `none`.
pub fn set_checksum(algo: &str) {
    let _ = CHECKSUM.set(algo.to_string());
}

/// Whether upload requests carry a checksum header (`--s3-checksum` is not
/// `none`).
pub fn checksum_headers() -> bool {
    CHECKSUM.get().map(String::as_str) != Some("none")
}

/// How long a response may stall (no byte read) before the request fails
/// and is retried.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes `url` the endpoint of every bucket this process opens, above the
/// environment and the profile (`--s3-endpoint`).
pub fn set_endpoint(url: &str) {
    let _ = ENDPOINT.set(url.to_string());
}

/// The client for `bucket`, configured from the command line, the
/// environment and the profile files.
pub fn client(bucket: &str) -> Result<AmazonS3, String> {
    builder(bucket)?
        .build()
        .map_err(|e| format!("cannot set up S3 for bucket {bucket}: {e}"))
}

/// What [`client`] builds from (its endpoint and region are also what a
/// request object_store has no call for is signed for and sent to).
pub fn builder(bucket: &str) -> Result<AmazonS3Builder, String> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    let profile = env
        .get("AWS_PROFILE")
        .cloned()
        .unwrap_or_else(|| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env.get(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let creds = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| ini_section(&t, &profile))
        .unwrap_or_default();
    let config = file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            let name = if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            };
            ini_section(&t, &name)
        })
        .unwrap_or_default();
    if env.contains_key("AWS_PROFILE") && creds.is_empty() && config.is_empty() {
        return Err(format!(
            "AWS_PROFILE names profile {profile:?}, which is in neither ~/.aws/credentials nor ~/.aws/config"
        ));
    }
    let pick = |vars: &[&str], key: &str| -> Option<String> {
        vars.iter()
            .find_map(|v| env.get(*v).cloned())
            .or_else(|| creds.get(key).cloned())
            .or_else(|| config.get(key).cloned())
    };
    let key_id = pick(&["AWS_ACCESS_KEY_ID"], "aws_access_key_id");
    let secret = pick(&["AWS_SECRET_ACCESS_KEY"], "aws_secret_access_key");
    let token = pick(&["AWS_SESSION_TOKEN"], "aws_session_token");
    let region =
        pick(&["AWS_REGION", "AWS_DEFAULT_REGION"], "region").unwrap_or_else(|| "us-east-1".into());
    let endpoint = ENDPOINT
        .get()
        .cloned()
        .or_else(|| pick(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], "endpoint_url"));
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_virtual_hosted_style_request(false)
        .with_client_options(
            ClientOptions::new()
                .with_timeout_disabled()
                .with_read_timeout(STALL_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(10))
                .with_allow_http(
                    endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://")),
                ),
        )
        .with_retry(RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(300),
            ..Default::default()
        });
    if let (Some(k), Some(s)) = (key_id, secret) {
        b = b.with_access_key_id(k).with_secret_access_key(s);
        if let Some(t) = token {
            b = b.with_token(t);
        }
    } else {
        // container credentials (ECS, EKS); nothing else is guessed at
        let mut container = false;
        for (k, v) in &env {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                if matches!(
                    key,
                    AmazonS3ConfigKey::ContainerCredentialsRelativeUri
                        | AmazonS3ConfigKey::ContainerCredentialsFullUri
                        | AmazonS3ConfigKey::ContainerAuthorizationTokenFile
                        | AmazonS3ConfigKey::MetadataEndpoint
                ) {
                    b = b.with_config(key, v);
                    container = true;
                }
            }
        }
        if !container {
            return Err(format!(
                "s3://{bucket}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or name a profile of ~/.aws/credentials with AWS_PROFILE"
            ));
        }
    }
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    match CHECKSUM.get().map(String::as_str).unwrap_or("sha256") {
        "none" => {}
        algo => {
            let c = algo
                .parse::<Checksum>()
                .map_err(|_| format!("--s3-checksum {algo}: not sha256, crc64nvme or none"))?;
            b = b.with_checksum_algorithm(c);
        }
    }
    Ok(b)
}

/// The `key = value` lines of section `[name]` of an AWS ini file.
fn ini_section(text: &str, name: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = h.trim() == name;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_section_is_read_and_others_are_not() {
        let t = "[default]\naws_access_key_id = A\n[profile x]\nregion=eu-1\n# c\nendpoint_url = http://h:1\n";
        let d = ini_section(t, "default");
        assert_eq!(d.get("aws_access_key_id").map(String::as_str), Some("A"));
        assert!(!d.contains_key("region"));
        let x = ini_section(t, "profile x");
        assert_eq!(x.get("region").map(String::as_str), Some("eu-1"));
        assert_eq!(
            x.get("endpoint_url").map(String::as_str),
            Some("http://h:1")
        );
    }
}
