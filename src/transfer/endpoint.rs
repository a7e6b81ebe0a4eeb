//! Addresses resolved to endpoints: each side of a transfer is either a
//! **peer**, something that speaks ferry's protocol and serves the other half
//! of a session (`ferry serve --stdio` over ssh, a ferry daemon), or a
//! **store**, files this process reads or writes itself (the local filesystem
//! and S3 buckets; SFTP next: they cannot speak the protocol, so both session
//! halves run in-process against them).
//!
//! Not for connecting or running anything: [`super::run`] takes the
//! [`Route`] made here and starts the session it names.

use crate::error::TransferError;
use crate::location::Location;
use crate::proto::Role;

/// Something that speaks ferry's protocol and serves one half of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer<'a> {
    /// `[user@]host:path`: `ferry serve --stdio` through the system `ssh`.
    Ssh {
        user: Option<&'a str>,
        host: &'a str,
    },
    /// `host::path`, `ferry://host[:port]/path`: a ferry daemon over TLS
    /// (no port: the default one).
    Daemon { host: &'a str, port: Option<u16> },
}

/// Files this process reads or writes itself, through [`crate::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store<'a> {
    /// The local filesystem ([`crate::fs`]).
    Local,
    /// `s3://bucket/prefix`: a bucket ([`crate::store::s3`]).
    S3 { bucket: &'a str },
}

/// Where one side of a transfer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Peer(Peer<'a>),
    Store(Store<'a>),
}

/// An address resolved: its endpoint and the path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub endpoint: Endpoint<'a>,
    pub path: Vec<u8>,
}

/// Resolves one address; refuses the kinds this build cannot reach.
pub fn resolve(loc: &Location) -> Result<Resolved<'_>, TransferError> {
    let (endpoint, path) = match loc {
        Location::Local(path) => (Endpoint::Store(Store::Local), path),
        Location::Ssh { user, host, path } => (
            Endpoint::Peer(Peer::Ssh {
                user: user.as_deref(),
                host,
            }),
            path,
        ),
        Location::Daemon { host, port, path } => {
            (Endpoint::Peer(Peer::Daemon { host, port: *port }), path)
        }
        Location::S3 { bucket, prefix } => {
            // the bucket's root is `/` (a request names no empty path)
            let path = if prefix.is_empty() { "/" } else { prefix };
            return Ok(Resolved {
                endpoint: Endpoint::Store(Store::S3 { bucket }),
                path: path.as_bytes().to_vec(),
            });
        }
    };
    Ok(Resolved {
        endpoint,
        path: path.clone(),
    })
}

/// Which half of the session runs where, and on which paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The endpoint that serves the other half: a peer, or a store served by
    /// an in-process server.
    pub serving: Endpoint<'a>,
    /// What that server does: receive (a push, or store to store) or send (a
    /// pull).
    pub role: Role,
    /// The paths the request names at the serving end.
    pub served_paths: Vec<Vec<u8>>,
    /// The paths the client half reads (a push) or writes into (a pull).
    pub local_paths: Vec<Vec<u8>>,
    /// The store the client half reads or writes.
    pub local_store: Store<'a>,
}

/// Resolves `sources` and `dest` and decides the route: store to store runs
/// the in-process pair, store to peer pushes, peer to store pulls. All sources
/// must be at one endpoint, and peer to peer is not supported yet.
pub fn route<'a>(sources: &'a [Location], dest: &'a Location) -> Result<Route<'a>, TransferError> {
    if sources.is_empty() {
        return Err(TransferError::Usage("no source given".into()));
    }
    let sources = sources.iter().map(resolve).collect::<Result<Vec<_>, _>>()?;
    let dest = resolve(dest)?;
    let from = &sources[0].endpoint;
    let one_place = sources.iter().all(|s| s.endpoint == *from);
    let source_paths = || sources.iter().map(|s| s.path.clone()).collect();
    match (from, dest.endpoint) {
        (Endpoint::Store(local), serving) if one_place => Ok(Route {
            serving,
            role: Role::ServerReceives,
            served_paths: vec![dest.path],
            local_paths: source_paths(),
            local_store: *local,
        }),
        (Endpoint::Peer(peer), Endpoint::Store(local)) if one_place => Ok(Route {
            serving: Endpoint::Peer(peer.clone()),
            role: Role::ServerSends,
            served_paths: source_paths(),
            local_paths: vec![dest.path],
            local_store: local,
        }),
        (_, Endpoint::Store(_)) => Err(TransferError::Usage(
            "all remote sources must be on the same host, and local and remote sources cannot be mixed".into(),
        )),
        // every source remote: `cp` relays that (`transfer::relay`), `sync`
        // does not
        (_, Endpoint::Peer(_))
            if sources
                .iter()
                .all(|s| matches!(s.endpoint, Endpoint::Peer(_))) =>
        {
            Err(TransferError::Usage(
                "remote-to-remote transfers are not supported by sync: one side must be local \
                 (ferry cp copies from one host to another)"
                    .into(),
            ))
        }
        (_, Endpoint::Peer(_)) => Err(TransferError::Usage(
            "remote-to-remote transfers are not supported: one side must be local".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locs(args: &[&str]) -> Vec<Location> {
        args.iter()
            .map(|a| Location::parse(std::ffi::OsStr::new(a)).unwrap())
            .collect()
    }

    /// Why `sources` to `dest` cannot be routed.
    fn refusal(sources: &[&str], dest: &str) -> String {
        let (sources, dest) = (locs(sources), locs(&[dest]));
        route(&sources, &dest[0]).unwrap_err().to_string()
    }

    #[test]
    fn store_to_store_is_served_in_process() {
        let (sources, dest) = (locs(&["a", "b"]), locs(&["c"]));
        let r = route(&sources, &dest[0]).unwrap();
        assert_eq!(r.serving, Endpoint::Store(Store::Local));
        assert_eq!(r.role, Role::ServerReceives);
        assert_eq!(r.served_paths, vec![b"c".to_vec()]);
        assert_eq!(r.local_paths, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn store_to_peer_pushes_and_peer_to_store_pulls() {
        let (sources, dest) = (locs(&["a"]), locs(&["me@host:d"]));
        let r = route(&sources, &dest[0]).unwrap();
        let ssh = Peer::Ssh {
            user: Some("me"),
            host: "host",
        };
        assert_eq!(r.serving, Endpoint::Peer(ssh));
        assert_eq!(r.role, Role::ServerReceives);
        assert_eq!(r.served_paths, vec![b"d".to_vec()]);
        assert_eq!(r.local_paths, vec![b"a".to_vec()]);

        let (sources, dest) = (locs(&["host::m/x", "host::m/y"]), locs(&["d"]));
        let r = route(&sources, &dest[0]).unwrap();
        let daemon = Peer::Daemon {
            host: "host",
            port: None,
        };
        assert_eq!(r.serving, Endpoint::Peer(daemon));
        assert_eq!(r.role, Role::ServerSends);
        assert_eq!(r.served_paths, vec![b"m/x".to_vec(), b"m/y".to_vec()]);
        assert_eq!(r.local_paths, vec![b"d".to_vec()]);
    }

    #[test]
    fn a_bucket_is_a_store_on_either_side() {
        let (sources, dest) = (locs(&["a"]), locs(&["s3://bucket/x/"]));
        let r = route(&sources, &dest[0]).unwrap();
        assert_eq!(r.serving, Endpoint::Store(Store::S3 { bucket: "bucket" }));
        assert_eq!(r.served_paths, vec![b"x/".to_vec()]);
        assert_eq!(r.local_store, Store::Local);
        let (sources, dest) = (locs(&["s3://b"]), locs(&["h::m/p"]));
        let r = route(&sources, &dest[0]).unwrap();
        assert_eq!(r.local_store, Store::S3 { bucket: "b" });
        assert_eq!(r.local_paths, vec![b"/".to_vec()]);
        assert_eq!(r.role, Role::ServerReceives);
    }

    #[test]
    fn what_cannot_be_routed_says_why() {
        let mixed = "all remote sources must be on the same host";
        assert!(refusal(&["a", "host:b"], "d").contains(mixed));
        assert!(refusal(&["h1:a", "h2:b"], "d").contains(mixed));
        // a daemon's default port is not the same address as one written out
        assert!(refusal(&["h::m/a", "ferry://h:7420/m/b"], "d").contains(mixed));
        let remote = "remote-to-remote transfers are not supported";
        assert!(refusal(&["h1:a"], "h2:b").contains(remote));
        assert!(refusal(&["h1:a"], "h2:b").contains("ferry cp copies from one host to another"));
        assert!(!refusal(&["a", "h1:a"], "h2:b").contains("ferry cp"));
        assert!(refusal(&["a", "h1:a"], "h2:b").contains(remote));
        assert_eq!(refusal(&[], "d"), "no source given");
    }
}
