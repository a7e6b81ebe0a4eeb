//! Addresses as rsync and scp users write them:
//!
//! | written | means |
//! |---|---|
//! | `path` | local (a `/` before the first `:` makes it local too: `./a:b`) |
//! | `[user@]host:path`, `[user@][v6addr]:path` | over ssh |
//! | `host::module/path`, `ferry://host[:port]/module/path` | the ferry daemon |
//! | `s3://bucket/prefix` | S3-compatible object storage |

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(Vec<u8>),
    Ssh {
        user: Option<String>,
        host: String,
        path: Vec<u8>,
    },
    Daemon {
        host: String,
        port: Option<u16>,
        path: Vec<u8>,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("{0:?}: empty path")]
    Empty(String),
    #[error("{0:?}: missing host name")]
    NoHost(String),
    #[error("{0:?}: missing bucket name (s3://BUCKET/PREFIX)")]
    NoBucket(String),
    #[error("{0:?}: bad port")]
    BadPort(String),
    #[error("{0:?}: unclosed '[' in the host")]
    UnclosedBracket(String),
    #[error("{0:?}: the host name is not valid UTF-8")]
    HostNotUtf8(String),
    #[error("{0:?}: unsupported scheme {1}:// (ferry takes HOST:PATH over ssh, HOST::MODULE/PATH or ferry://HOST[:PORT]/MODULE/PATH for its daemon, s3://BUCKET/PREFIX)")]
    Scheme(String, String),
}

impl Location {
    pub fn parse(arg: &OsStr) -> Result<Location, LocationError> {
        let b = arg.as_bytes();
        let shown = || arg.to_string_lossy().into_owned();
        if b.is_empty() {
            return Err(LocationError::Empty(shown()));
        }
        let text = |v: &[u8]| {
            std::str::from_utf8(v)
                .map(str::to_owned)
                .map_err(|_| LocationError::HostNotUtf8(shown()))
        };
        if let Some(rest) = b.strip_prefix(b"s3://") {
            let (bucket, prefix) = match rest.iter().position(|&c| c == b'/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            if bucket.is_empty() {
                return Err(LocationError::NoBucket(shown()));
            }
            return Ok(Location::S3 {
                bucket: text(bucket)?,
                prefix: text(prefix)?,
            });
        }
        if let Some(rest) = b.strip_prefix(b"ferry://") {
            let (hostport, path) = match rest.iter().position(|&c| c == b'/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let (host, port) = split_port(hostport, &shown)?;
            if host.is_empty() {
                return Err(LocationError::NoHost(shown()));
            }
            return Ok(Location::Daemon {
                host: text(host)?,
                port,
                path: path.to_vec(),
            });
        }
        // `ftp://x/y`, `http://…`: a scheme ferry does not speak, not ssh to
        // host `ftp` (scp and rsync would try that)
        if let Some(i) = b.windows(3).position(|w| w == b"://") {
            let scheme = &b[..i];
            if !scheme.is_empty()
                && scheme[0].is_ascii_alphabetic()
                && scheme
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
            {
                return Err(LocationError::Scheme(
                    shown(),
                    String::from_utf8_lossy(scheme).into_owned(),
                ));
            }
        }
        // an IPv6 literal in brackets
        let (host_end, after) = if b[0] == b'[' || (b.contains(&b'@') && b.contains(&b'[')) {
            match b.iter().position(|&c| c == b']') {
                Some(i) if b.get(i + 1) == Some(&b':') => (i + 1, i + 1),
                Some(_) => return Ok(Location::Local(b.to_vec())),
                None => return Err(LocationError::UnclosedBracket(shown())),
            }
        } else {
            match b.iter().position(|&c| c == b':') {
                Some(i) if !b[..i].contains(&b'/') => (i, i),
                _ => return Ok(Location::Local(b.to_vec())),
            }
        };
        let userhost = &b[..host_end];
        let rest = &b[after + 1..];
        let (user, host) = match userhost.iter().rposition(|&c| c == b'@') {
            Some(i) => (Some(text(&userhost[..i])?), &userhost[i + 1..]),
            None => (None, userhost),
        };
        let host = host.strip_prefix(b"[").unwrap_or(host);
        let host = host.strip_suffix(b"]").unwrap_or(host);
        if host.is_empty() {
            return Err(LocationError::NoHost(shown()));
        }
        if let Some(path) = rest.strip_prefix(b":") {
            return Ok(Location::Daemon {
                host: text(host)?,
                port: None,
                path: path.to_vec(),
            });
        }
        Ok(Location::Ssh {
            user,
            host: text(host)?,
            path: if rest.is_empty() {
                b".".to_vec()
            } else {
                rest.to_vec()
            },
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }
}

fn split_port<'a>(
    hostport: &'a [u8],
    shown: &dyn Fn() -> String,
) -> Result<(&'a [u8], Option<u16>), LocationError> {
    let colon = if hostport.starts_with(b"[") {
        hostport
            .iter()
            .position(|&c| c == b']')
            .and_then(|i| (hostport.get(i + 1) == Some(&b':')).then_some(i + 1))
    } else {
        hostport.iter().rposition(|&c| c == b':')
    };
    let (host, port) = match colon {
        Some(i) => {
            let p = std::str::from_utf8(&hostport[i + 1..])
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| LocationError::BadPort(shown()))?;
            (&hostport[..i], Some(p))
        }
        None => (hostport, None),
    };
    let host = host.strip_prefix(b"[").unwrap_or(host);
    let host = host.strip_suffix(b"]").unwrap_or(host);
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Location {
        Location::parse(OsStr::new(s)).unwrap()
    }

    #[test]
    fn forms() {
        assert_eq!(p("data/x"), Location::Local(b"data/x".to_vec()));
        assert_eq!(p("./a:b"), Location::Local(b"./a:b".to_vec()));
        assert_eq!(
            p("alice@gpu2:/data"),
            Location::Ssh {
                user: Some("alice".into()),
                host: "gpu2".into(),
                path: b"/data".to_vec()
            }
        );
        assert_eq!(
            p("gpu2:"),
            Location::Ssh {
                user: None,
                host: "gpu2".into(),
                path: b".".to_vec()
            }
        );
        assert_eq!(
            p("[::1]:x"),
            Location::Ssh {
                user: None,
                host: "::1".into(),
                path: b"x".to_vec()
            }
        );
        assert_eq!(
            p("gpu2::ckpt/run42"),
            Location::Daemon {
                host: "gpu2".into(),
                port: None,
                path: b"ckpt/run42".to_vec()
            }
        );
        assert_eq!(
            p("ferry://gpu2:7421/datasets/x"),
            Location::Daemon {
                host: "gpu2".into(),
                port: Some(7421),
                path: b"datasets/x".to_vec()
            }
        );
        assert_eq!(
            p("s3://bucket/pre/fix"),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "pre/fix".into()
            }
        );
    }

    #[test]
    fn errors() {
        assert!(Location::parse(OsStr::new("")).is_err());
        assert!(Location::parse(OsStr::new(":x")).is_err());
        assert!(Location::parse(OsStr::new("ferry://h:99999/x")).is_err());
    }
}
