//! `ferry api-key` (on the daemon's host: create, list, revoke keys in the
//! daemon's state database) and `ferry job` (a small HTTP/1.1 client of a
//! daemon's API, plain on loopback or https with the server's key pinned or
//! its certificate checked against a CA: submit, list, show, cancel, resume,
//! watch). The address, key and pin come from flags, `FERRY_API_URL` /
//! `FERRY_API_KEY` / `FERRY_API_PIN`, or the files `api_url` / `api_key` /
//! `api_pin` in the config directory. Not for serving the API.

use super::stdout::outln;
use crate::error::TransferError;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Make a key; prints its secret (fk_...) once: it is stored hashed
    Create {
        /// A name for the key (who uses it)
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: jobs:read, jobs:write, metrics:read, admin
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Limit the key to this module (repeatable; default: every module)
        #[arg(long)]
        module: Vec<String>,
        /// The daemon's config directory
        #[arg(long = "config-dir", value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
    /// List keys (never their secrets)
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// The daemon's config directory
        #[arg(long = "config-dir", value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Revoke a key by name: refused from the next request on
    Revoke {
        /// The key's name, as `api-key list` shows it
        name: String,
        /// The daemon's config directory
        #[arg(long = "config-dir", value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
}

/// Where the API is and which key to use.
#[derive(Args, Debug, Clone)]
pub struct ApiFlags {
    /// The API's address, e.g. http://127.0.0.1:7421 or https://gpu1:7421
    /// (default: $FERRY_API_URL, else the file api_url in the config directory)
    #[arg(long = "api-url", value_name = "URL")]
    pub url: Option<String>,
    /// The API key (default: $FERRY_API_KEY, else the file api_key in the
    /// config directory)
    #[arg(long = "api-key", value_name = "KEY")]
    pub key: Option<String>,
    /// For an https:// API: the pin of its certificate's key as ferry serve
    /// printed it, sha256//... (default: $FERRY_API_PIN, else the file
    /// api_pin in the config directory); a server with another key is refused
    #[arg(long = "api-pin", value_name = "PIN")]
    pub pin: Option<String>,
    /// For an https:// API whose certificate a CA signed: the CA's
    /// certificate (PEM); the certificate must name the URL's host
    #[arg(long = "api-cacert", value_name = "FILE", conflicts_with = "pin")]
    pub cacert: Option<PathBuf>,
    /// ferry's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Print the API's JSON
    #[arg(long)]
    pub json: bool,
}

// (parsed once per run: the size of the largest variant costs nothing)
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job: SRC and DST are module paths of the daemon (ckpt/run42/)
    /// or of another daemon (host::module/path, ferry://host/module/path);
    /// with --op fanout, SRC (a module path of the daemon) goes to every DST
    /// daemon down a verified chain
    #[command(after_help = "\
A fan-out job (--op fanout SRC DEST1 DEST2 ...) sends SRC, a module path of the daemon, \
to every DEST daemon (host::module/path or ferry://host[:port]/module/path, no daemon \
twice) down one verified chain, as `ferry fanout` does, with the daemon's own key: each \
DEST must authorize that key for its module. It takes --delete, --checksum and --fsync \
(a fan-out always checks every piece by BLAKE3 and fsyncs), --stall-timeout, --label and \
--deadline. It ends succeeded (every host has it), partial (the hosts that missed it are \
named; `ferry job resume ID` repairs them by delta) or failed (no host got it); \
`ferry job watch` exits 0, 24 and 12 for these.

A job stays inside the daemon's modules: a module path through a symlink (MODULE/link/...) \
fails it (permission_denied, naming the link), and symlinks inside the tree travel as links, \
never followed.")]
    Submit {
        /// Where to read: MODULE/PATH of the daemon, HOST::MODULE/PATH,
        /// ferry://HOST[:PORT]/MODULE/PATH or s3://BUCKET/PREFIX
        src: String,
        /// Where to write, written like SRC; one of the two is the daemon's
        /// module. With --op fanout: one or more daemons, in chain order
        #[arg(required = true, value_name = "DST")]
        dst: Vec<String>,
        /// copy, sync or fanout
        #[arg(long, default_value = "sync")]
        op: String,
        /// --op fanout: bypass a host that says nothing for this long (e.g.
        /// 10s, 500ms, 2m; default 10s)
        #[arg(long = "stall-timeout", value_name = "DUR")]
        stall_timeout: Option<String>,
        /// Delete files in DST that are not in SRC (sync only)
        #[arg(long)]
        delete: bool,
        /// Compare files by BLAKE3 checksum, not size and mtime
        #[arg(short = 'c', long)]
        checksum: bool,
        /// Compress file data
        #[arg(short = 'z', long)]
        compress: bool,
        /// zstd level for -z, 1-19; implies -z
        #[arg(long = "compress-level", value_name = "N",
              value_parser = clap::value_parser!(u8).range(1..=19))]
        compress_level: Option<u8>,
        /// Show what would change, change nothing
        #[arg(short = 'n', long = "dry-run")]
        dry_run: bool,
        /// Skip files that are newer at the destination
        #[arg(short = 'u', long)]
        update: bool,
        /// Write runs of zeros as holes, send only data
        #[arg(short = 'S', long)]
        sparse: bool,
        /// Preserve hard links
        #[arg(short = 'H', long = "hard-links")]
        hard_links: bool,
        /// fsync each file before it is renamed into place
        #[arg(long)]
        fsync: bool,
        /// Connections to a peer daemon, 1-8
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=8))]
        streams: Option<u8>,
        /// Exclude files matching PATTERN (repeatable)
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Do not exclude files matching PATTERN (repeatable)
        #[arg(long, value_name = "PATTERN")]
        include: Vec<String>,
        /// Limit the rate, e.g. 500 (KiB/s) or 10M
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        /// A label to find the job by
        #[arg(long)]
        label: Option<String>,
        /// Fail the job if it has not finished by then: SECONDS after
        /// submission, or an RFC 3339 UTC time (2027-01-01T00:00:00Z), as the
        /// API takes it (default: no deadline)
        #[arg(long, value_name = "SECONDS|TIME")]
        deadline: Option<String>,
        /// Fail the job at its Nth transient fault (default 10; 1: no retry)
        #[arg(long = "max-faults", value_name = "N")]
        max_faults: Option<u32>,
        /// Submit at most once: the same key returns the first job
        #[arg(long = "idempotency-key", value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// List jobs, newest first
    List {
        /// Only jobs in this state (queued, running, succeeded, partial, failed, canceled)
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Show one job
    Show {
        /// The job's id (26 characters, as `job submit` and `job list` print it)
        id: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Cancel a queued or running job
    Cancel {
        /// The job's id (26 characters, as `job submit` and `job list` print it)
        id: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Run a partial (or failed) fan-out job again for the hosts that missed
    /// it, under its own id: only what they lack crosses the wire
    Resume {
        /// The job's id (26 characters, as `job submit` and `job list` print it)
        id: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Follow a job's events until it ends; exits 0 if it succeeded, 24 if a
    /// fan-out ended partial, 20 if canceled, and for a failed job a code
    /// by its error (the codes: `ferry job watch --help`)
    #[command(after_help = "\
Exit codes: 0 succeeded; 1 an invalid request; 2 an incompatible peer; 11 the source \
is missing, a path is denied or a local file operation failed (source_not_found, \
permission_denied, local_error); 12 a connection or peer failure (connection_failed, \
unknown_host, max_faults_exceeded, key_refused, host_key_unknown, ...); 20 canceled or \
deadline_exceeded; 23 some files not transferred (partial_transfer); 24 a fan-out ended \
partial.")]
    Watch {
        /// The job's id (26 characters, as `job submit` and `job list` print it)
        id: String,
        #[command(flatten)]
        api: ApiFlags,
    },
}

fn usage(e: impl std::fmt::Display) -> TransferError {
    TransferError::Usage(e.to_string())
}

pub fn api_key(c: ApiKeyCommand) -> Result<i32, TransferError> {
    let open = |dir: &Option<PathBuf>| {
        let dir = crate::trust::config_dir(dir.as_deref());
        crate::api::db::open(&crate::api::state_dir(&dir)).map_err(usage)
    };
    match c {
        ApiKeyCommand::Create {
            name,
            scope,
            module,
            config_dir,
        } => {
            let conn = open(&config_dir)?;
            let (key, secret) =
                crate::api::keys::create(&conn, &name, &scope, &module).map_err(usage)?;
            // the secret is shown once: if it cannot be (a closed or full
            // stdout), the key is revoked again rather than left usable by
            // nobody who knows it
            let shown = {
                use std::io::Write;
                let mut o = std::io::stdout().lock();
                writeln!(o, "{secret}").and_then(|()| o.flush())
            };
            if let Err(e) = shown {
                let _ = crate::api::keys::revoke(&conn, &name);
                return Err(TransferError::Local {
                    path: "standard output".into(),
                    text: format!(
                        "{}; API key {name} not created (its secret could not be shown)",
                        crate::error::io_text(&e)
                    ),
                });
            }
            eprintln!(
                "ferry: API key {} ({}) created; the secret above is not shown again",
                key.name,
                key.scopes.join(",")
            );
        }
        ApiKeyCommand::List { json, config_dir } => {
            let conn = open(&config_dir)?;
            let keys = crate::api::keys::list(&conn).map_err(usage)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&keys).unwrap_or_default()
                );
            } else {
                for k in keys {
                    outln!(
                        "{:<20} {:<40} {:<20} {}",
                        k.name,
                        k.scopes.join(","),
                        if k.modules.is_empty() {
                            "*".to_string()
                        } else {
                            k.modules.join(",")
                        },
                        k.revoked
                            .map_or(format!("created {}", k.created), |r| format!("revoked {r}"))
                    );
                }
            }
        }
        ApiKeyCommand::Revoke { name, config_dir } => {
            let conn = open(&config_dir)?;
            crate::api::keys::revoke(&conn, &name).map_err(usage)?;
            eprintln!("ferry: API key {name} revoked");
        }
    }
    Ok(super::exit::OK)
}

#[derive(Args, Debug)]
pub struct DashboardLinkArgs {
    /// The daemon's config directory
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

/// `ferry dashboard-link`: a login link good once, for ten minutes.
pub fn dashboard_link(a: DashboardLinkArgs) -> Result<i32, TransferError> {
    let dir = crate::trust::config_dir(a.config_dir.as_deref());
    let state = crate::api::state_dir(&dir);
    let conn = crate::api::db::open(&state).map_err(usage)?;
    let url = std::fs::read_to_string(state.join("api_url"))
        .map(|s| s.trim().to_string())
        .map_err(|_| {
            usage("no API has run from this config directory: start ferry serve --api ADDR first")
        })?;
    let token = crate::api::ui::create_link(&conn).map_err(usage)?;
    outln!("{url}/ui/#login={token}");
    eprintln!("ferry: this link logs in once, within ten minutes");
    Ok(super::exit::OK)
}

/// The API's answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

struct Client {
    /// The URL's scheme and authority, for messages (`https://host:port`).
    base: String,
    /// host:port, to connect to and for the Host header.
    host: String,
    key: String,
    tls: Option<Tls>,
}

/// What an https client needs.
struct Tls {
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    mismatch: crate::api::tls::Mismatch,
    pin: Option<String>,
}

/// A connection to the API, plain or TLS.
trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

impl Client {
    fn new(f: &ApiFlags) -> Result<Client, TransferError> {
        let dir = crate::trust::config_dir(f.config_dir.as_deref());
        let from_file = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let url = f
            .url
            .clone()
            .or_else(|| std::env::var("FERRY_API_URL").ok())
            .or_else(|| from_file("api_url"))
            .ok_or_else(|| usage("no API address: give --api-url, set FERRY_API_URL, or write it to api_url in the config directory"))?;
        let key = f
            .key
            .clone()
            .or_else(|| std::env::var("FERRY_API_KEY").ok())
            .or_else(|| from_file("api_key"))
            .ok_or_else(|| usage("no API key: give --api-key, set FERRY_API_KEY, or write it to api_key in the config directory"))?;
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(usage(format!(
                    "--api-url {url:?}: give http://HOST:PORT (loopback) or https://HOST:PORT"
                )))
            }
        };
        let host = rest.trim_end_matches('/').to_string();
        if host.is_empty() || host.contains('/') {
            return Err(usage(format!(
                "--api-url {url:?}: give the API's address only, like https://HOST:PORT"
            )));
        }
        let base = format!("{}://{host}", if https { "https" } else { "http" });
        if !https {
            return Ok(Client {
                base,
                host,
                key,
                tls: None,
            });
        }
        let trust = match &f.cacert {
            Some(ca) => crate::api::tls::ClientTrust::CaFile(ca.clone()),
            None => {
                let pin = f
                    .pin
                    .clone()
                    .or_else(|| std::env::var("FERRY_API_PIN").ok().filter(|p| !p.is_empty()))
                    .or_else(|| from_file("api_pin"))
                    .ok_or_else(|| usage(format!(
                        "{base}: an https API needs the pin ferry serve printed (--api-pin sha256//..., FERRY_API_PIN, or api_pin in the config directory) or --api-cacert FILE"
                    )))?;
                crate::api::tls::ClientTrust::Pin(pin.trim().to_string())
            }
        };
        let (config, mismatch) = crate::api::tls::client_config(&trust).map_err(usage)?;
        // the name the certificate must hold (not checked with a pin)
        let name_part = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
        };
        let name =
            rustls::pki_types::ServerName::try_from(name_part.to_string()).map_err(|_| {
                usage(format!(
                    "--api-url {url:?}: {name_part:?} is not a host name"
                ))
            })?;
        Ok(Client {
            base,
            host,
            key,
            tls: Some(Tls {
                config,
                name,
                mismatch,
                pin: match trust {
                    crate::api::tls::ClientTrust::Pin(p) => Some(p),
                    _ => None,
                },
            }),
        })
    }

    /// The error for a failed exchange: a refused pin is told as such.
    fn io_error(&self, e: &std::io::Error) -> TransferError {
        if let Some(t) = &self.tls {
            let seen = t.mismatch.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let (Some(got), Some(want)) = (seen, &t.pin) {
                return TransferError::HostKey(format!(
                    "API at {}: its certificate's key is {got}, not the pin {want}: refusing it (check --api-pin or FERRY_API_PIN)",
                    self.base
                ));
            }
            if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return TransferError::HostKey(format!(
                    "API at {}: TLS refused: {inner}",
                    self.base
                ));
            }
        }
        TransferError::Connection(format!(
            "API at {}: {}",
            self.base,
            crate::error::io_text(e)
        ))
    }

    fn connect(&self) -> Result<Box<dyn Io>, TransferError> {
        let s = std::net::TcpStream::connect(&self.host).map_err(|e| self.io_error(&e))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| self.io_error(&e))?;
        let Some(t) = &self.tls else {
            return Ok(Box::new(s));
        };
        let conn = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
            .map_err(|e| usage(format!("API at {}: {e}", self.base)))?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        // the handshake now, so a refused key is told before anything is sent
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| self.io_error(&e))?;
        }
        Ok(Box::new(tls))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<Answer, TransferError> {
        let mut s = self.connect()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host,
            self.key,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes())
            .and_then(|_| s.flush())
            .map_err(|e| self.io_error(&e))?;
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw) {
            Ok(_) => {}
            // a TLS peer that closed without close_notify: the answer is
            // taken only when it is whole
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(&raw) => {}
            Err(e) => return Err(self.io_error(&e)),
        }
        parse_answer(&raw).ok_or_else(|| {
            TransferError::Connection(format!("API at {}: a malformed HTTP answer", self.base))
        })
    }

    /// A call whose non-2xx answer is an error with the problem's detail.
    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<Value, TransferError> {
        let a = self.call(method, path, body, extra)?;
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        if !(200..300).contains(&a.status) {
            let detail = v["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&a.body).into_owned());
            return Err(usage(format!("the API answered {}: {detail}", a.status)));
        }
        Ok(v)
    }
}

/// Whether `raw` holds a whole answer: its Content-Length of body, or a
/// chunked body's last chunk.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if let Some(n) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= n;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}

/// Parses an HTTP/1.1 response (Content-Length, chunked, or to the end).
pub fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..nl])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        out
    } else {
        rest.to_vec()
    };
    Some(Answer { status, body })
}

fn print_job(j: &Value) {
    let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
    outln!("job {}  {}", s("id"), s("state"));
    outln!(
        "  {} {} -> {}{}",
        s("op"),
        s("src"),
        dst_text(j),
        j["label"]
            .as_str()
            .map(|l| format!("  [{l}]"))
            .unwrap_or_default()
    );
    outln!(
        "  {} of {} bytes, {} files, attempts {}, faults {}{}",
        j["bytes_done"],
        j["bytes_total"],
        j["files_done"],
        j["attempts"],
        j["faults"],
        // a fan-out is not retried: it has no max
        if j["max_faults"].is_null() {
            String::new()
        } else {
            format!(" (max {})", j["max_faults"])
        }
    );
    // a failed job's status is its error: said once, on the error line
    if j["error"].is_null() {
        outln!("  {}", s("status_detail"));
    } else {
        outln!(
            "  error {}: {}",
            j["error"]["code"].as_str().unwrap_or(""),
            j["error"]["detail"].as_str().unwrap_or("")
        );
    }
    print_hosts(j);
    outln!(
        "  created {}  finished {}",
        s("created_at"),
        s("finished_at")
    );
}

/// A job's destination: its dst, or a fan-out's daemons in chain order.
fn dst_text(j: &Value) -> String {
    match j["options"]["destinations"].as_array() {
        Some(d) => d
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        None => j["dst"].as_str().unwrap_or("-").to_string(),
    }
}

/// A fan-out job's hosts, one line each.
fn print_hosts(j: &Value) {
    for h in j["hosts"].as_array().into_iter().flatten() {
        outln!(
            "  {} {}, {} bytes received{}",
            h["host"].as_str().unwrap_or(""),
            h["state"].as_str().unwrap_or(""),
            h["bytes_received"],
            h["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

fn show(j: &Value, as_json: bool) {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(j).unwrap_or_default());
    } else {
        print_job(j);
    }
}

fn check_id(id: &str) -> Result<(), TransferError> {
    if crate::api::ids::is_id(id) {
        Ok(())
    } else {
        Err(usage(format!(
            "{id:?} is not a job id (26 characters, like 01JF...)"
        )))
    }
}

/// The exit code for a job's final state: for a failed job, its error code
/// mapped to the README's exit codes (a missing source 11, a peer 12).
fn job_exit(state: &str, job: &serde_json::Value) -> i32 {
    match state {
        "succeeded" => super::exit::OK,
        "canceled" => 20,
        "partial" => super::exit::FANOUT_PARTIAL,
        _ => failed_exit(job["error"]["code"].as_str().unwrap_or("")),
    }
}

/// A failed job's exit code from its error code.
fn failed_exit(code: &str) -> i32 {
    match code {
        "invalid_request" | "invalid_job" => super::exit::USAGE,
        "incompatible_peer" => 2,
        "source_not_found" | "permission_denied" | "local_error" => 11,
        "deadline_exceeded" => 20,
        "partial_transfer" => super::exit::PARTIAL,
        "fanout_partial" => super::exit::FANOUT_PARTIAL,
        // connection_failed, unknown_host, max_faults_exceeded, peer_busy,
        // key_refused, unknown_module, host_key_*, remote_error,
        // protocol_error, integrity_error, internal_error, fanout_failed
        _ => 12,
    }
}

pub fn job(c: JobCommand) -> Result<i32, TransferError> {
    match c {
        JobCommand::Submit {
            src,
            dst,
            op,
            stall_timeout,
            delete,
            checksum,
            compress,
            compress_level,
            dry_run,
            update,
            sparse,
            hard_links,
            fsync,
            streams,
            exclude,
            include,
            bwlimit,
            label,
            deadline,
            max_faults,
            idempotency_key,
            api,
        } => {
            let client = Client::new(&api)?;
            let mut body = if op == "fanout" {
                json!({"op": op, "src": src, "destinations": dst})
            } else if let [one] = dst.as_slice() {
                json!({"op": op, "src": src, "dst": one})
            } else {
                return Err(usage(format!(
                    "--op {op} takes one DST ({} given); several are a fan-out: --op fanout",
                    dst.len()
                )));
            };
            let set = |b: &mut Value, k: &str, v: Value| b[k] = v;
            // seconds go as a number, a duration with a unit as its text
            match stall_timeout.as_deref().map(|d| (d, d.parse::<u64>())) {
                Some((_, Ok(secs))) => set(&mut body, "stall_timeout", json!(secs)),
                Some((d, Err(_))) => set(&mut body, "stall_timeout", json!(d)),
                None => {}
            }
            if delete {
                set(&mut body, "delete", json!(true));
            }
            if checksum {
                set(&mut body, "checksum", json!(true));
            }
            if compress {
                set(&mut body, "compress", json!(true));
            }
            if !exclude.is_empty() {
                set(&mut body, "exclude", json!(exclude));
            }
            if !include.is_empty() {
                set(&mut body, "include", json!(include));
            }
            if let Some(r) = bwlimit {
                set(&mut body, "bwlimit", json!(r));
            }
            if let Some(l) = label {
                set(&mut body, "label", json!(l));
            }
            for (k, on) in [
                ("dry_run", dry_run),
                ("update", update),
                ("sparse", sparse),
                ("hard_links", hard_links),
                ("fsync", fsync),
            ] {
                if on {
                    set(&mut body, k, json!(true));
                }
            }
            if let Some(n) = compress_level {
                set(&mut body, "compress_level", json!(n));
            }
            if let Some(n) = streams {
                set(&mut body, "streams", json!(n));
            }
            // seconds go as a number, a time as its text (the API checks it)
            match deadline.as_deref().map(|d| (d, d.parse::<u64>())) {
                Some((_, Ok(secs))) => set(&mut body, "deadline", json!(secs)),
                Some((d, Err(_))) if crate::api::ids::parse_rfc3339(d).is_none() => {
                    return Err(usage(format!(
                        "--deadline {d:?}: give seconds, or an RFC 3339 UTC time like 2027-01-01T00:00:00Z"
                    )))
                }
                Some((d, Err(_))) => set(&mut body, "deadline", json!(d)),
                None => {}
            }
            if let Some(m) = max_faults {
                set(&mut body, "max_faults", json!(m));
            }
            let extra: Vec<(&str, &str)> = idempotency_key
                .as_deref()
                .map(|k| ("Idempotency-Key", k))
                .into_iter()
                .collect();
            let j = client.json("POST", "/v1/jobs", Some(&body), &extra)?;
            if api.json {
                show(&j, true);
            } else {
                outln!("{}", j["id"].as_str().unwrap_or(""));
            }
            Ok(super::exit::OK)
        }
        JobCommand::List { state, api } => {
            let client = Client::new(&api)?;
            let path = match &state {
                Some(s) => format!("/v1/jobs?state={s}"),
                None => "/v1/jobs".into(),
            };
            let v = client.json("GET", &path, None, &[])?;
            if api.json {
                show(&v, true);
            } else {
                for j in v["jobs"].as_array().into_iter().flatten() {
                    let pct = match (j["bytes_done"].as_f64(), j["bytes_total"].as_f64()) {
                        (Some(d), Some(t)) if t > 0.0 => format!("{:>3.0}%", d * 100.0 / t),
                        _ => "   -".into(),
                    };
                    outln!(
                        "{}  {:<9} {pct}  {} {} -> {}",
                        j["id"].as_str().unwrap_or(""),
                        j["state"].as_str().unwrap_or(""),
                        j["op"].as_str().unwrap_or(""),
                        j["src"].as_str().unwrap_or(""),
                        dst_text(j)
                    );
                }
            }
            Ok(super::exit::OK)
        }
        JobCommand::Show { id, api } => {
            check_id(&id)?;
            let j = Client::new(&api)?.json("GET", &format!("/v1/jobs/{id}"), None, &[])?;
            show(&j, api.json);
            Ok(super::exit::OK)
        }
        JobCommand::Cancel { id, api } => {
            check_id(&id)?;
            let j = Client::new(&api)?.json("POST", &format!("/v1/jobs/{id}/cancel"), None, &[])?;
            show(&j, api.json);
            Ok(super::exit::OK)
        }
        JobCommand::Resume { id, api } => {
            check_id(&id)?;
            let j = Client::new(&api)?.json("POST", &format!("/v1/jobs/{id}/resume"), None, &[])?;
            show(&j, api.json);
            Ok(super::exit::OK)
        }
        JobCommand::Watch { id, api } => {
            check_id(&id)?;
            let client = Client::new(&api)?;
            let mut after = 0i64;
            // bounded: a job that never ends is watched for at most a week
            for _ in 0..(7 * 24 * 3600 / 20) {
                let v = client.json(
                    "GET",
                    &format!("/v1/events?job={id}&after={after}&wait=20"),
                    None,
                    &[],
                )?;
                for e in v["events"].as_array().into_iter().flatten() {
                    after = e["id"].as_i64().unwrap_or(after);
                    if api.json {
                        outln!("{e}");
                    } else {
                        outln!(
                            "{} {:<11} {}",
                            e["time"].as_str().unwrap_or(""),
                            e["type"].as_str().unwrap_or(""),
                            e["data"]
                        );
                    }
                    if let "succeeded" | "partial" | "failed" | "canceled" =
                        e["type"].as_str().unwrap_or("")
                    {
                        // a resumed fan-out ended before and runs again: its
                        // end is the one its state shows now
                        let j = client.json("GET", &format!("/v1/jobs/{id}"), None, &[])?;
                        if let t @ ("succeeded" | "partial" | "failed" | "canceled") =
                            j["state"].as_str().unwrap_or("")
                        {
                            return Ok(job_exit(t, &j));
                        }
                    }
                }
                after = v["last_id"].as_i64().unwrap_or(after);
                // a job that ended before the events we asked for
                let j = client.json("GET", &format!("/v1/jobs/{id}"), None, &[])?;
                if let t @ ("succeeded" | "partial" | "failed" | "canceled") =
                    j["state"].as_str().unwrap_or("")
                {
                    if v["events"].as_array().is_none_or(|a| a.is_empty()) {
                        if !api.json {
                            print_job(&j);
                        }
                        return Ok(job_exit(t, &j));
                    }
                }
            }
            Err(usage("gave up watching after a week"))
        }
    }
}
