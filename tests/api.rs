//! The daemon's HTTP API, driven against the real binary on loopback: keys
//! and scopes, idempotency (replay, 422, 409 in flight, kept over a day),
//! problem bodies, jobs that run (between modules, other daemons and an S3
//! server), resume after `kill -9`, queue order, faults and fail-fast,
//! cancel, events (long-poll and SSE, keep-alives, resumed with
//! Last-Event-ID across a restart), metrics, the OpenAPI document, TLS
//! (pinned or CA-signed) with curl and the `ferry job` CLI, the logs, and
//! the dashboard in Chromium.

mod util;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

const MIB: usize = 1 << 20;

/// A daemon with `--api`, its config directory and modules `src` and `dst`.
struct Api {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Api {
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("cfg")
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn dst(&self) -> PathBuf {
        self.dir.path().join("dst")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn new() -> Api {
        Api::with(&[])
    }

    /// A daemon started with these extra `serve` flags.
    fn with(args: &[&str]) -> Api {
        let dir = tmp();
        for d in ["cfg", "src", "dst"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        chmod(&dir.path().join("cfg"), 0o700);
        write(&dir.path().join("cfg/authorized_keys"), "");
        chmod(&dir.path().join("cfg/authorized_keys"), 0o600);
        Api::spawn_with(dir, args).unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    fn spawn(dir: tempfile::TempDir) -> Result<Api, String> {
        Api::spawn_with(dir, &[])
    }

    fn spawn_with(dir: tempfile::TempDir, args: &[&str]) -> Result<Api, String> {
        Api::spawn_env(dir, args, &[])
    }

    /// A daemon in a fresh directory, with these variables in its environment.
    fn with_env(args: &[&str], env: &[(&str, &str)]) -> Api {
        let dir = tmp();
        for d in ["cfg", "src", "dst"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        chmod(&dir.path().join("cfg"), 0o700);
        Api::spawn_env(dir, args, env).unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    fn spawn_env(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Api, String> {
        let p = |s: &str| dir.path().join(s).display().to_string();
        // `--api ADDR` among the flags replaces the loopback default
        let listen = args
            .windows(2)
            .find(|w| w[0] == "--api")
            .map_or("127.0.0.1:0", |w| w[1]);
        let rest: Vec<&str> = match args.iter().position(|a| *a == "--api") {
            Some(i) => args
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| *a)
                .collect(),
            None => args.to_vec(),
        };
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut child = Command::new(ferry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--api", listen])
            .args(["--config-dir", &p("cfg")])
            .args(["--module", &format!("src={}", p("src"))])
            .args(["--module", &format!("dst={}", p("dst"))])
            .args(&rest)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        let mut pin = None;
        for _ in 0..2 {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            if let Some(u) = line.trim().strip_prefix("api listening on ") {
                url = Some(u.to_string());
            }
        }
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default());
        };
        if url.starts_with("https://") {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            pin = line
                .trim()
                .strip_prefix("api certificate pin ")
                .map(str::to_string);
        }
        if let Some(pin) = pin {
            std::fs::write(dir.path().join("pin"), pin).unwrap();
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(Api { child, url, dir })
    }

    fn kill9(&mut self) {
        let st = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        wait_for(&mut self.child, Duration::from_secs(5)).expect("daemon survived SIGKILL");
    }

    /// The same daemon started again (after a kill).
    fn restart(mut self) -> Api {
        let dir = std::mem::replace(&mut self.dir, tmp());
        drop(self);
        Api::spawn(dir).unwrap_or_else(|log| panic!("daemon did not restart:\n{log}"))
    }

    /// `ferry api-key create`; the secret.
    fn key(&self, name: &str, scopes: &str, modules: &[&str]) -> String {
        let mut args = vec![
            "api-key".to_string(),
            "create".into(),
            "--name".into(),
            name.into(),
            "--scope".into(),
            scopes.into(),
            "--config-dir".into(),
            self.config_dir().display().to_string(),
        ];
        for m in modules {
            args.extend(["--module".to_string(), m.to_string()]);
        }
        let o = ok(ferry(&args));
        let secret = stdout(&o).trim().to_string();
        assert!(secret.starts_with("fk_"), "{secret}");
        secret
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        http(&self.url, method, path, key, headers, body)
    }

    fn submit(&self, key: &str, body: &Value) -> Value {
        let a = self.call(
            "POST",
            "/v1/jobs",
            Some(key),
            &[("Content-Type", "application/json")],
            Some(&body.to_string()),
        );
        assert_eq!(a.status, 202, "{}", a.text());
        a.json()
    }

    fn job(&self, key: &str, id: &str) -> Value {
        let a = self.call("GET", &format!("/v1/jobs/{id}"), Some(key), &[], None);
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }

    /// Polls until the job is in one of `states`.
    fn wait_state(&self, key: &str, id: &str, states: &[&str], limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let j = self.job(key, id);
            if states.contains(&j["state"].as_str().unwrap()) {
                return j;
            }
            assert!(
                Instant::now() < end,
                "job never reached {states:?}: {j:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    /// Asserts an RFC 9457 problem with this status and code.
    #[track_caller]
    fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let v = self.json();
        assert_eq!(v["status"], status);
        assert_eq!(v["code"], code, "{v}");
        assert!(v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:ferry:problem:"));
        assert!(!v["detail"].as_str().unwrap().is_empty());
        v
    }
}

/// A plain HTTP/1.1 request over loopback.
fn http(
    url: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let host = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        let mut out = Vec::new();
        let mut r = &rest[..];
        loop {
            let nl = r.windows(2).position(|w| w == b"\r\n").unwrap();
            let n =
                usize::from_str_radix(std::str::from_utf8(&r[..nl]).unwrap().trim(), 16).unwrap();
            r = &r[nl + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&r[..n]);
            r = &r[n + 2..];
        }
        rest = out;
    }
    Answer {
        status,
        headers,
        body: rest,
    }
}

fn sync_job(src: &str, dst: &str) -> Value {
    json!({"op": "sync", "src": src, "dst": dst})
}

#[test]
fn keys_scopes_module_lists_and_revocation() {
    let api = Api::new();
    write(&api.src().join("a/f"), b"data");
    // no key, a bad key, a malformed key: 401 with the challenge
    for key in [
        None,
        Some("fk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some("nope"),
    ] {
        let a = api.call("GET", "/v1/jobs", key, &[], None);
        a.problem(401, "unauthorized");
        assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"ferry\""));
    }
    let reader = api.key("reader", "jobs:read", &[]);
    let writer = api.key("writer", "jobs:write,jobs:read", &[]);
    let only_a = api.key("only-a", "jobs:write,jobs:read", &["src"]);
    let admin = api.key("admin", "admin", &[]);
    assert_eq!(
        api.call("GET", "/v1/jobs", Some(&reader), &[], None).status,
        200
    );
    // a read-only key cannot submit: 403 naming the scope
    let a = api.call(
        "POST",
        "/v1/jobs",
        Some(&reader),
        &[("Content-Type", "application/json")],
        Some(&sync_job("src/a/", "dst/a/").to_string()),
    );
    let p = a.problem(403, "insufficient_scope");
    assert!(p["detail"].as_str().unwrap().contains("jobs:write"), "{p}");
    // a key limited to module src cannot write into dst
    let a = api.call(
        "POST",
        "/v1/jobs",
        Some(&only_a),
        &[("Content-Type", "application/json")],
        Some(&sync_job("src/a/", "dst/a/").to_string()),
    );
    let p = a.problem(403, "forbidden");
    assert!(p["detail"].as_str().unwrap().contains("dst"), "{p}");
    assert!(!api.dst().join("a").exists());
    // it can within its module
    let j = api.submit(&only_a, &sync_job("src/a/", "src/b/"));
    api.wait_state(
        &only_a,
        j["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
    assert_eq!(std::fs::read(api.src().join("b/f")).unwrap(), b"data");
    // the writer's job is invisible to the module-limited key
    let j2 = api.submit(&writer, &sync_job("src/a/", "dst/a/"));
    let id2 = j2["id"].as_str().unwrap();
    api.call("GET", &format!("/v1/jobs/{id2}"), Some(&only_a), &[], None)
        .problem(404, "unknown_job");
    // and so are its events
    let theirs = api
        .call("GET", "/v1/events", Some(&only_a), &[], None)
        .json();
    let evs = theirs["events"].as_array().unwrap();
    assert!(
        !evs.is_empty() && evs.iter().all(|e| e["job_id"] != id2),
        "{theirs:#}"
    );
    // the audit log needs admin, and records the denials
    api.call("GET", "/v1/audit", Some(&writer), &[], None)
        .problem(403, "insufficient_scope");
    let audit = api.call("GET", "/v1/audit", Some(&admin), &[], None).json();
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["result"]
            .as_str()
            .unwrap()
            .contains("denied: missing scope jobs:write")
            && e["key_name"] == "reader"),
        "{audit:#}"
    );
    assert!(
        entries.iter().any(|e| e["result"] == "denied: unknown_key"),
        "{audit:#}"
    );
    assert!(entries
        .iter()
        .any(|e| e["action"] == "job.create" && e["result"] == "ok"));
    // revocation: refused from the next request on, no restart
    ok(ferry([
        "api-key",
        "revoke",
        "writer",
        "--config-dir",
        &api.config_dir().display().to_string(),
    ]));
    let a = api.call("GET", "/v1/jobs", Some(&writer), &[], None);
    let p = a.problem(401, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("revoked"));
    let list = stdout(&ok(ferry([
        "api-key",
        "list",
        "--json",
        "--config-dir",
        &api.config_dir().display().to_string(),
    ])));
    assert!(list.contains("\"revoked\""), "{list}");
    // no secret anywhere: the log, the audit log, the key list
    let audit = api.call("GET", "/v1/audit", Some(&admin), &[], None).text();
    let db = std::fs::read(api.config_dir().join("state/api.db")).unwrap();
    for secret in [&reader, &writer, &only_a, &admin] {
        assert!(!api.log().contains(secret.as_str()), "a secret in the log");
        assert!(
            !audit.contains(secret.as_str()),
            "a secret in the audit log"
        );
        assert!(!list.contains(secret.as_str()));
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret stored in clear"
        );
    }
}

#[test]
fn idempotency_keys_replay_refuse_and_admit_one_job() {
    let api = Api::new();
    write(&api.src().join("d/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let other = api.key("other", "jobs:write,jobs:read", &[]);
    let body = sync_job("src/d/", "dst/d/").to_string();
    let post = |k: &str, idem: &str, body: &str| {
        api.call(
            "POST",
            "/v1/jobs",
            Some(k),
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", idem),
            ],
            Some(body),
        )
    };
    let first = post(&key, "step-2000", &body);
    assert_eq!(first.status, 202, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let again = post(&key, "step-2000", &body);
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], id.as_str());
    // the same key with another body
    post(&key, "step-2000", &sync_job("src/d/", "dst/e/").to_string())
        .problem(422, "idempotency_key_reused");
    // malformed keys
    post(&key, "", &body).problem(400, "malformed_idempotency_key");
    post(&key, &"x".repeat(300), &body).problem(400, "malformed_idempotency_key");
    // keys are per API key: another key's same value is a new job
    let theirs = post(&other, "step-2000", &body);
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.json()["id"], id.as_str());
    // eight concurrent submits with one key: exactly one job
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post(&key, "concurrent-1", &body)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|a| a.status == 202)
            .map(|a| a.json()["id"].as_str().unwrap().to_string())
            .collect()
    });
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let all = api.call("GET", "/v1/jobs", Some(&key), &[], None).json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 3, "{all:#}");
    // the record survives a restart
    let mut api = api;
    api.kill9();
    let api = api.restart();
    let replay = api.call(
        "POST",
        "/v1/jobs",
        Some(&key),
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "step-2000"),
        ],
        Some(&body),
    );
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], id.as_str());
}

/// Idempotency records outlive a day (and restarts), and expire after two:
/// the daemon restarted with its clock 25 h, then 49 h ahead (libfaketime).
#[test]
fn an_idempotency_key_is_kept_over_a_day_across_restarts() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "faketime is not installed (scripts/test.sh installs it)"
    );
    let api = Api::new();
    write(&api.src().join("d/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let body = sync_job("src/d/", "dst/d/").to_string();
    let post = |api: &Api| {
        api.call(
            "POST",
            "/v1/jobs",
            Some(&key),
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "nightly-2026-12-04"),
            ],
            Some(&body),
        )
    };
    let first = post(&api);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_string();
    api.wait_state(&key, &id, &["succeeded"], Duration::from_secs(30));
    let ahead = |mut api: Api, offset: &str| -> Api {
        api.kill9();
        let dir = std::mem::replace(&mut api.dir, tmp());
        drop(api);
        Api::spawn_env(
            dir,
            &[],
            &[
                ("LD_PRELOAD", lib),
                ("FAKETIME", offset),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
        .unwrap_or_else(|log| panic!("daemon did not restart:\n{log}"))
    };
    let api = ahead(api, "+25h");
    let again = post(&api);
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], id.as_str());
    // the clock really moved: a new job is stamped a day later
    let other = api.submit(&key, &sync_job("src/d/", "dst/e/"));
    let day = |t: &Value| t.as_str().unwrap()[..10].to_string();
    assert_ne!(day(&other["created_at"]), day(&first.json()["created_at"]));
    let api = ahead(api, "+49h");
    let late = post(&api);
    assert_eq!(late.status, 202, "{}", late.text());
    assert_eq!(late.header("idempotent-replayed"), None);
    assert_ne!(late.json()["id"], id.as_str());
}

#[test]
fn the_same_idempotency_key_while_the_first_is_processed_is_a_409() {
    // the test hook holds a submit for 3 s after it has claimed its key
    let hooks = [
        ("FERRY_TEST_HOOKS", "1"),
        ("FERRY_TEST_SUBMIT_DELAY_MS", "3000"),
    ];
    let mut api = Api::with_env(&[], &hooks);
    write(&api.src().join("d/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let body = sync_job("src/d/", "dst/d/").to_string();
    let post = |url: &str, idem: &str| {
        http(
            url,
            "POST",
            "/v1/jobs",
            Some(&key),
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", idem),
            ],
            Some(&body),
        )
    };
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| post(&api.url, "in-flight"));
        std::thread::sleep(Duration::from_millis(300));
        let b = s.spawn(|| post(&api.url, "in-flight"));
        (a.join().unwrap(), b.join().unwrap())
    });
    // whichever claimed the key first made the job; the other one, sent
    // while it was processed, got 409 at once
    let (made, refused) = if first.status == 202 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(made.status, 202, "{}", made.text());
    let p = refused.problem(409, "idempotency_key_in_use");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("still being processed"),
        "{p}"
    );
    let id = made.json()["id"].as_str().unwrap().to_string();
    // once answered, the key replays the first answer
    let again = post(&api.url, "in-flight");
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], id.as_str());
    let all = api.call("GET", "/v1/jobs", Some(&key), &[], None).json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1, "{all:#}");
    // a daemon killed while a request holds its key: after the restart the
    // key is free (no job was made, no answer sent), not a 409 forever
    let url = api.url.clone();
    let k2 = key.clone();
    let b2 = body.clone();
    let pending = std::thread::spawn(move || {
        let host = url.strip_prefix("http://").unwrap().to_string();
        let mut s = TcpStream::connect(&host).unwrap();
        let req = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {k2}\r\nContent-Type: application/json\r\nIdempotency-Key: cut-off\r\nContent-Length: {}\r\n\r\n{b2}",
            b2.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    });
    std::thread::sleep(Duration::from_millis(800));
    api.kill9();
    assert!(
        pending.join().unwrap().is_empty(),
        "answered before the kill"
    );
    let api = api.restart();
    let after = post(&api.url, "cut-off");
    assert_eq!(after.status, 202, "{}", after.text());
    assert_eq!(after.header("idempotent-replayed"), None);
    let all = api.call("GET", "/v1/jobs", Some(&key), &[], None).json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2, "{all:#}");
}

#[test]
fn malformed_requests_get_problem_bodies() {
    let api = Api::new();
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let json_ct = [("Content-Type", "application/json")];
    api.call("POST", "/v1/jobs", Some(&key), &json_ct, Some("{\"op\": "))
        .problem(400, "malformed_json");
    let p = api
        .call(
            "POST",
            "/v1/jobs",
            Some(&key),
            &json_ct,
            Some(r#"{"op":"sync","src":"src/","dst":"dst/","frobnicate":1}"#),
        )
        .problem(422, "invalid_body");
    assert!(p["detail"].as_str().unwrap().contains("frobnicate"), "{p}");
    api.call(
        "POST",
        "/v1/jobs",
        Some(&key),
        &[("Content-Type", "text/plain")],
        Some("{}"),
    )
    .problem(415, "unsupported_media_type");
    api.call(
        "POST",
        "/v1/jobs",
        Some(&key),
        &json_ct,
        Some(&"x".repeat(100_000)),
    )
    .problem(413, "body_too_large");
    // a bare local path, an unknown module, an escaping path
    for (src, dst) in [
        ("/etc/", "dst/"),
        ("nope/", "dst/"),
        ("src/../../etc", "dst/"),
    ] {
        let p = api
            .call(
                "POST",
                "/v1/jobs",
                Some(&key),
                &json_ct,
                Some(&sync_job(src, dst).to_string()),
            )
            .problem(422, "invalid_job");
        assert_eq!(p["errors"][0]["pointer"], "/src", "{p}");
    }
    api.call(
        "GET",
        "/v1/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        Some(&key),
        &[],
        None,
    )
    .problem(404, "unknown_job");
    api.call("GET", "/v1/nothing", Some(&key), &[], None)
        .problem(404, "not_found");
    api.call("DELETE", "/v1/jobs", Some(&key), &[], None)
        .problem(405, "method_not_allowed");
    let all = api.call("GET", "/v1/jobs", Some(&key), &[], None).json();
    assert!(
        all["jobs"].as_array().unwrap().is_empty(),
        "a refused request made a job"
    );
}

#[test]
fn a_job_runs_lists_its_files_and_a_missing_source_fails_fast() {
    let api = Api::new();
    write(&api.src().join("ckpt/a.bin"), random_bytes(300_000, 1));
    write(&api.src().join("ckpt/sub/b.txt"), b"hello");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/ckpt/", "dst": "dst/run42/", "label": "step-1"}),
    );
    let id = j["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);
    assert_eq!(j["state"], "queued");
    let j = api.wait_state(&key, id, &["succeeded", "failed"], Duration::from_secs(30));
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["label"], "step-1");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["bytes_done"], 300_005);
    assert_eq!(
        std::fs::read(api.dst().join("run42/a.bin")).unwrap(),
        random_bytes(300_000, 1)
    );
    let files = j["files"].as_array().unwrap();
    let a = files
        .iter()
        .find(|f| f["name"] == "a.bin")
        .expect("a.bin listed");
    assert_eq!(a["size"], 300_000);
    assert_eq!(
        a["blake3"],
        blake3::hash(&random_bytes(300_000, 1)).to_hex().as_str()
    );
    assert!(files.iter().any(|f| f["name"] == "sub/b.txt"));
    for t in ["created_at", "started_at", "finished_at"] {
        assert!(j[t].as_str().unwrap().ends_with('Z'), "{t}: {j}");
    }
    // a missing source: failed at once with its own code, no retries
    let start = Instant::now();
    let j = api.submit(&key, &sync_job("src/missing/", "dst/m/"));
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(20),
    );
    assert_eq!(j["state"], "failed");
    assert_eq!(j["error"]["code"], "source_not_found", "{j:#}");
    assert_eq!(j["faults"], 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // a finished job cannot be cancelled
    api.call(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&key),
        &[],
        None,
    )
    .problem(409, "job_finished");
}

#[test]
fn cancel_stops_a_running_job_and_publishes_nothing() {
    let api = Api::new();
    write(&api.src().join("big.bin"), random_bytes(16 * MIB, 3));
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let j = api.submit(
        &key,
        &json!({"op": "copy", "src": "src/big.bin", "dst": "dst/", "bwlimit": "2M"}),
    );
    let id = j["id"].as_str().unwrap();
    api.wait_state(&key, id, &["running"], Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let a = api.call(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&key),
        &[],
        None,
    );
    assert_eq!(a.status, 202, "{}", a.text());
    let j = api.wait_state(
        &key,
        id,
        &["canceled", "succeeded", "failed"],
        Duration::from_secs(10),
    );
    assert_eq!(j["state"], "canceled", "{j:#}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        !api.dst().join("big.bin").exists(),
        "a half-written file was published"
    );
    api.call(
        "POST",
        &format!("/v1/jobs/{id}/cancel"),
        Some(&key),
        &[],
        None,
    )
    .problem(409, "job_finished");
}

/// Milliseconds of the day of an RFC 3339 UTC time (…THH:MM:SS.fffZ).
fn ms_of_day(t: &str) -> i64 {
    let clock = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let v: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    ((v[0] * 60 + v[1]) * 60 + v[2]) * 1000 + frac.parse::<i64>().unwrap()
}

#[test]
fn a_running_job_shows_rate_and_eta_and_progress_comes_at_most_once_a_second() {
    let api = Api::new();
    write(&api.src().join("p/big.bin"), random_bytes(6 * MIB, 41));
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/p/", "dst": "dst/p/", "bwlimit": "2M"}),
    );
    let id = j["id"].as_str().unwrap().to_string();
    // while it runs: a rate and an ETA
    let end = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let j = api.job(&key, &id);
        if j["state"] == "running" && j["rate_bytes_per_second"].as_u64().unwrap_or(0) > 0 {
            break j;
        }
        assert!(Instant::now() < end, "no rate while running: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rate = running["rate_bytes_per_second"].as_u64().unwrap();
    assert!(rate > 200_000 && rate < 8 * MIB as u64, "{running:#}");
    assert!(running["eta_seconds"].as_u64().is_some(), "{running:#}");
    assert!(running["bytes_total"].as_u64().unwrap() >= 6 * MIB as u64);
    let j = api.wait_state(&key, &id, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(j["eta_seconds"].is_null());
    let ev = api
        .call(
            "GET",
            &format!("/v1/events?job={id}"),
            Some(&key),
            &[],
            None,
        )
        .json();
    let times: Vec<i64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "progress")
        .map(|e| ms_of_day(e["time"].as_str().unwrap()))
        .collect();
    assert!(times.len() >= 2, "{ev:#}");
    for w in times.windows(2) {
        let gap = (w[1] - w[0]).rem_euclid(86_400_000);
        assert!(gap >= 900, "progress events {gap} ms apart: {times:?}");
    }
}

/// Waits until `path` holds at least `bytes`.
fn wait_len(path: &Path, bytes: u64, api: &Api) {
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(Instant::now() < end, "no progress:\n{}", api.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_mid_job_then_restart_resumes_the_same_job() {
    const SIZE: usize = 24 * MIB;
    let mut api = Api::new();
    let data = random_bytes(SIZE, 9);
    write(&api.src().join("model/weights.bin"), &data);
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/model/", "dst": "dst/model/", "bwlimit": "8M"}),
    );
    let id = j["id"].as_str().unwrap().to_string();
    let partial = api.dst().join("model/.ferry-partial/weights.bin");
    wait_len(&partial, (SIZE * 6 / 10) as u64, &api);
    api.kill9();
    assert!(
        !api.dst().join("model/weights.bin").exists(),
        "a half-written file was published"
    );
    let api = api.restart();
    let j = api.wait_state(
        &key,
        &id,
        &["succeeded", "failed", "canceled"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", api.log());
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["attempts"], 2, "{j:#}");
    let literal = j["literal_bytes"].as_u64().unwrap();
    assert!(
        literal < (SIZE / 2) as u64,
        "resent {literal} of {SIZE} bytes"
    );
    assert!(j["reused_bytes"].as_u64().unwrap() > 0);
    assert!(
        std::fs::read(api.dst().join("model/weights.bin")).unwrap() == data,
        "destination differs"
    );
    // the events tell the story, in order
    let ev = api
        .call(
            "GET",
            &format!("/v1/events?job={id}"),
            Some(&key),
            &[],
            None,
        )
        .json();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] != "progress")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "started", "interrupted", "resumed", "succeeded"]
    );
}

#[test]
fn three_queued_jobs_survive_kill_9_and_run_in_order() {
    let mut api = Api::new();
    write(&api.src().join("slow/big.bin"), random_bytes(12 * MIB, 4));
    for i in 0..3 {
        write(&api.src().join(format!("q{i}/f")), format!("file {i}"));
    }
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let slow = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/slow/", "dst": "dst/slow/", "bwlimit": "4M"}),
    );
    let slow = slow["id"].as_str().unwrap().to_string();
    api.wait_state(&key, &slow, &["running"], Duration::from_secs(20));
    let queued: Vec<String> = (0..3)
        .map(|i| {
            api.submit(
                &key,
                &sync_job(&format!("src/q{i}/"), &format!("dst/q{i}/")),
            )["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for q in &queued {
        assert_eq!(api.job(&key, q)["state"], "queued");
    }
    api.kill9();
    let api = api.restart();
    for q in &queued {
        let j = api.wait_state(&key, q, &["succeeded", "failed"], Duration::from_secs(60));
        assert_eq!(j["state"], "succeeded", "{j:#}");
    }
    let slow_j = api.wait_state(
        &key,
        &slow,
        &["succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(slow_j["state"], "succeeded");
    for i in 0..3 {
        assert_eq!(
            std::fs::read_to_string(api.dst().join(format!("q{i}/f"))).unwrap(),
            format!("file {i}")
        );
    }
    // submission order: the interrupted job first, then the three
    let ev = api.call("GET", "/v1/events", Some(&key), &[], None).json();
    let starts: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "started" || e["type"] == "resumed")
        .map(|e| e["job_id"].as_str().unwrap())
        .collect();
    let mut want = vec![slow.as_str(), slow.as_str()];
    want.extend(queued.iter().map(String::as_str));
    assert_eq!(starts, want);
}

/// Reads SSE events (id, type) from a stream until `n` arrived.
fn sse(url: &str, key: &str, last_id: Option<i64>, n: usize) -> Vec<(i64, String)> {
    let host = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n");
    if let Some(l) = last_id {
        req.push_str(&format!("Last-Event-ID: {l}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut out = Vec::new();
    let (mut id, mut kind) = (None, None);
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")) {
            id = v.trim().parse().ok();
        } else if let Some(v) = l
            .strip_prefix("event: ")
            .or_else(|| l.strip_prefix("event:"))
        {
            kind = Some(v.trim().to_string());
        } else if l.starts_with("data:") {
            if let (Some(i), Some(k)) = (id.take(), kind.take()) {
                out.push((i, k));
            }
        }
    }
    out
}

#[test]
fn events_stream_in_order_and_resume_across_a_restart() {
    let mut api = Api::new();
    write(&api.src().join("e/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let reader = api.key("r", "jobs:read", &[]);
    let j = api.submit(&key, &sync_job("src/e/", "dst/e/"));
    api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
    let all = sse(&api.url, &reader, None, 3);
    assert_eq!(all[0].1, "created");
    assert_eq!(all[1].1, "started");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");
    // resume after the first: the next one, not the first again
    let rest = sse(&api.url, &reader, Some(all[0].0), 1);
    assert_eq!(rest[0], all[1]);
    // long-poll: waits for what comes next
    let last = api
        .call("GET", "/v1/events", Some(&reader), &[], None)
        .json()["last_id"]
        .as_i64()
        .unwrap();
    let url = api.url.clone();
    let r2 = reader.clone();
    let poll = std::thread::spawn(move || {
        http(
            &url,
            "GET",
            &format!("/v1/events?after={last}&wait=20"),
            Some(&r2),
            &[],
            None,
        )
        .json()
    });
    std::thread::sleep(Duration::from_millis(500));
    let j2 = api.submit(&key, &sync_job("src/e/", "dst/e2/"));
    let got = poll.join().unwrap();
    let first = &got["events"][0];
    assert_eq!(first["id"].as_i64().unwrap(), last + 1, "{got}");
    assert_eq!(first["type"], "created");
    assert_eq!(first["job_id"], j2["id"]);
    api.wait_state(
        &key,
        j2["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
    let last = api
        .call("GET", "/v1/events", Some(&reader), &[], None)
        .json()["last_id"]
        .as_i64()
        .unwrap();
    // across a restart: ids go on from where they were
    api.kill9();
    let api = api.restart();
    let url = api.url.clone();
    let r3 = reader.clone();
    let stream = std::thread::spawn(move || sse(&url, &r3, Some(last), 1));
    std::thread::sleep(Duration::from_millis(500));
    let j3 = api.submit(&key, &sync_job("src/e/", "dst/e3/"));
    let got = stream.join().unwrap();
    assert_eq!(got[0], (last + 1, "created".to_string()));
    api.wait_state(
        &key,
        j3["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
}

#[test]
fn a_quiet_event_stream_gets_keep_alives_and_the_text_log_has_no_colour() {
    let api = Api::new();
    let key = api.key("r", "jobs:read", &[]);
    let host = api.url.strip_prefix("http://").unwrap().to_string();
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let req = format!("GET /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    let start = Instant::now();
    let mut line = String::new();
    let mut head = true;
    let mut comments = 0;
    // no job, no event: only keep-alive comments arrive, about every 5 s
    while start.elapsed() < Duration::from_secs(12) && comments < 2 {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if head {
            if l.to_ascii_lowercase().starts_with("content-type:") {
                assert!(l.contains("text/event-stream"), "{l}");
            }
            head = !l.is_empty();
            continue;
        }
        assert!(!l.starts_with("data:"), "an event on a quiet stream: {l}");
        if l.starts_with(':') {
            comments += 1;
        }
    }
    assert_eq!(comments, 2, "keep-alives in {:?}", start.elapsed());
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // the text log goes to a file here: no ANSI colour in it
    let log = api.log();
    assert!(log.contains("api request"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}

/// On a terminal (a pseudo-terminal from `script`), the text log is
/// coloured; the test above shows a file gets none.
#[test]
fn the_text_log_is_coloured_on_a_terminal() {
    let dir = tmp();
    for d in ["cfg", "m"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    chmod(&dir.path().join("cfg"), 0o700);
    let cmd = format!(
        "exec {} serve --listen 127.0.0.1:0 --api 127.0.0.1:0 --config-dir {} --module m={}",
        ferry_bin().display(),
        dir.path().join("cfg").display(),
        dir.path().join("m").display()
    );
    let mut script = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let script_pid = script.id();
    let out = script.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut url = None;
    let mut coloured = false;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && !coloured {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        seen.push_str(&line);
        if let Some(u) = line.trim().strip_prefix("api listening on ") {
            url = Some(u.to_string());
            // a request, so the log has a line to colour
            let _ = http(u, "GET", "/v1/jobs", None, &[], None);
        }
        coloured = url.is_some() && line.contains("api request") && line.contains("\u{1b}[");
    }
    // stop the daemon (script's child), then script
    let children =
        std::fs::read_to_string(format!("/proc/{script_pid}/task/{script_pid}/children"))
            .unwrap_or_default();
    for pid in children.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    let _ = script.kill();
    let _ = script.wait();
    assert!(url.is_some(), "the daemon did not start:\n{seen}");
    assert!(coloured, "no colour on a terminal:\n{seen:?}");
}

#[test]
fn a_corrupt_database_or_a_public_plain_address_refuses_to_start() {
    let api = Api::new();
    let dir = std::mem::replace(&mut { api }.dir, tmp());
    std::fs::remove_file(dir.path().join("cfg/state/api.db-wal")).ok();
    std::fs::remove_file(dir.path().join("cfg/state/api.db-shm")).ok();
    write(
        &dir.path().join("cfg/state/api.db"),
        random_bytes(64 * 1024, 5),
    );
    let err = Api::spawn(dir)
        .err()
        .expect("started on a corrupt database");
    assert!(err.contains("api.db"), "{err}");
    assert!(
        err.contains("not a database") || err.contains("malformed"),
        "{err}"
    );
    // plain HTTP on a public address
    let d = tmp();
    let o = ferry([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "0.0.0.0:0",
        "--config-dir",
        &d.path().display().to_string(),
        "--module",
        &format!("m={}", d.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("non-loopback"), "{}", stderr(&o));
}

/// An unwritable state database (its directory mounted read-only in a
/// mount namespace of the test's own) stops the daemon at start, naming the
/// file, rather than serving an empty queue.
#[test]
fn an_unwritable_database_refuses_to_start() {
    let api = Api::new();
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    write(&api.src().join("u/f"), b"x");
    let j = api.submit(&key, &sync_job("src/u/", "dst/u/"));
    api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
    let dir = std::mem::replace(&mut { api }.dir, tmp());
    let p = |s: &str| dir.path().join(s).display().to_string();
    let state = p("cfg/state");
    let script = format!(
        "mount --bind {state} {state} && mount -o remount,ro,bind {state} {state} && exec \"$0\" \"$@\""
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .arg(ferry_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .args(["--config-dir", &p("cfg")])
        .args(["--module", &format!("src={}", p("src"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare (util-linux)");
    let status = wait_for(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the daemon started on a read-only state directory");
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("api listening"));
    assert!(err.contains("api.db"), "{err}");
    assert!(err.contains("is not writable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_job_cli_submits_lists_shows_and_watches() {
    let api = Api::new();
    write(&api.src().join("c/f.bin"), random_bytes(100_000, 6));
    let key = api.key("cli", "jobs:write,jobs:read", &[]);
    let run = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_API_URL", &api.url)
            .env("FERRY_API_KEY", &key)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = ok(run(&[
        "job",
        "submit",
        "src/c/",
        "dst/c/",
        "--label",
        "cli-test",
        "--idempotency-key",
        "k1",
    ]));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 26, "{id}");
    let o = ok(run(&["job", "watch", &id]));
    assert!(stdout(&o).contains("succeeded"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(api.dst().join("c/f.bin")).unwrap(),
        random_bytes(100_000, 6)
    );
    let o = ok(run(&["job", "list"]));
    assert!(stdout(&o).contains(&id) && stdout(&o).contains("succeeded"));
    let o = ok(run(&["job", "show", &id, "--json"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["label"], "cli-test");
    // the same idempotency key: the same job
    let o = ok(run(&[
        "job",
        "submit",
        "src/c/",
        "dst/c/",
        "--label",
        "cli-test",
        "--idempotency-key",
        "k1",
    ]));
    assert_eq!(stdout(&o).trim(), id);
    let o = run(&["job", "cancel", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("409"), "{}", stderr(&o));
    let o = run(&["job", "submit", "/etc/", "dst/x/"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("never a local path"), "{}", stderr(&o));
}

/// Walk item 3: a job whose peer never answers used to stay `running`
/// (retried without end) and hold every job queued after it. Without
/// `max_faults` it now fails at the default 10th fault (about a minute
/// of backoff), with its last error, and the next job runs.
#[test]
fn a_dead_peer_fails_its_job_by_default_and_the_queue_moves_on() {
    // (waiting polls the job for over a minute: more than the default rate)
    let api = Api::with(&["--api-rate", "100/s"]);
    write(&api.src().join("out/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    // nothing listens on this port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let dead = api.submit(
        &key,
        &json!({"op": "copy", "src": "src/out/", "dst": format!("ferry://127.0.0.1:{port}/in/")}),
    );
    let next = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/out/", "dst": "dst/out/"}),
    );
    let j = api.wait_state(
        &key,
        dead["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(150),
    );
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["error"]["code"], "max_faults_exceeded", "{j:#}");
    assert_eq!(
        (j["faults"].as_u64(), j["max_faults"].as_u64()),
        (Some(10), Some(10)),
        "{j:#}"
    );
    let detail = j["error"]["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("127.0.0.1:{port}")), "{detail}");
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "{:?}",
        start.elapsed()
    );
    let j = api.wait_state(
        &key,
        next["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(std::fs::read(api.dst().join("out/f")).unwrap(), b"x");
}

/// Walk item 2: `ferry job list | head -1` panicked on the closed pipe
/// (exit 101); it now ends quietly with status 0, as `ls` does.
#[test]
fn job_list_and_show_end_quietly_on_a_closed_stdout() {
    let api = Api::new();
    write(&api.src().join("c/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let j = api.submit(
            &key,
            &json!({"op": "sync", "src": "src/c/", "dst": format!("dst/c{i}/")}),
        );
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        api.wait_state(&key, id, &["succeeded", "failed"], Duration::from_secs(60));
    }
    for args in [
        vec!["job", "list"],
        vec!["job", "list", "--json"],
        vec!["job", "show", &ids[0]],
        vec!["job", "watch", &ids[1]],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(ferry_bin())
            .args(&args)
            .env("FERRY_API_URL", &api.url)
            .env("FERRY_API_KEY", &key)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}

/// Walk items 14 and 24: `job submit --deadline` takes an RFC 3339 time as
/// the API does, and the fields the API takes (dry_run, update, sparse,
/// hard_links, fsync, streams, compress_level); `job show` says a failed
/// job's error once; cancelling an ended job says it has ended.
#[test]
fn job_submit_takes_the_apis_fields_and_show_says_an_error_once() {
    let api = Api::new();
    write(&api.src().join("c/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let run = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_API_URL", &api.url)
            .env("FERRY_API_KEY", &key)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = ok(run(&[
        "job",
        "submit",
        "src/c/",
        "dst/c/",
        "--deadline",
        "2099-01-01T00:00:00Z",
        "-n",
        "-u",
        "-S",
        "-H",
        "--fsync",
        "--streams",
        "2",
        "--compress-level",
        "3",
    ]));
    let id = stdout(&o).trim().to_string();
    let j = api.wait_state(&key, &id, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(
        j["deadline"]
            .as_str()
            .unwrap()
            .starts_with("2099-01-01T00:00:00"),
        "{j:#}"
    );
    for k in ["dry_run", "update", "sparse", "hard_links", "fsync"] {
        assert_eq!(j["options"][k], true, "{k}: {j:#}");
    }
    assert_eq!(
        (
            j["options"]["streams"].as_u64(),
            j["options"]["compress_level"].as_u64()
        ),
        (Some(2), Some(3))
    );
    // a dry run wrote nothing
    assert!(!api.dst().join("c/f").exists());
    let o = run(&[
        "job",
        "submit",
        "src/c/",
        "dst/c/",
        "--deadline",
        "tomorrow",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--deadline \"tomorrow\""),
        "{}",
        stderr(&o)
    );
    // a job that fails: its error is said once
    let o = ok(run(&["job", "submit", "src/nothere/", "dst/x/"]));
    let failed = stdout(&o).trim().to_string();
    let j = api.wait_state(
        &key,
        &failed,
        &["succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "failed", "{j:#}");
    let shown = stdout(&ok(run(&["job", "show", &failed])));
    let detail = j["error"]["detail"].as_str().unwrap();
    assert_eq!(shown.matches(detail).count(), 1, "{shown}");
    assert!(shown.contains("(max 10)"), "{shown}");
    let o = run(&["job", "cancel", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has already ended (succeeded)"),
        "{}",
        stderr(&o)
    );
}

/// A second daemon `B` that trusts the API daemon's key, on a fixed port, and
/// whose key the API daemon has recorded in its known_hosts.
fn peer_for(api: &Api) -> (tempfile::TempDir, u16, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bdir = tmp();
    let daemon = bdir.path().join("daemon");
    std::fs::create_dir(&daemon).unwrap();
    chmod(&daemon, 0o700);
    let inbox = bdir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let public = std::fs::read_to_string(api.config_dir().join("id_ed25519.pub")).unwrap();
    write(&daemon.join("authorized_keys"), public);
    chmod(&daemon.join("authorized_keys"), 0o600);
    (bdir, port, inbox)
}

fn start_peer(bdir: tempfile::TempDir, port: u16, inbox: &Path) -> Daemon {
    Daemon::spawn_in(
        bdir,
        &[("in", inbox, false)],
        &[],
        &[],
        &format!("127.0.0.1:{port}"),
    )
    .unwrap_or_else(|e| panic!("peer did not start: {e}"))
}

#[test]
fn a_peer_down_for_10_s_is_a_fault_the_job_survives() {
    let api = Api::new();
    let data = random_bytes(2 * MIB, 8);
    write(&api.src().join("out/shard.bin"), &data);
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let (bdir, port, inbox) = peer_for(&api);
    // learn the peer's key once, as an operator would (known_hosts is strict)
    let peer = start_peer(bdir, port, &inbox);
    ok(ferry([
        "ls",
        &format!("ferry://127.0.0.1:{port}/"),
        "--config-dir",
        &api.config_dir().display().to_string(),
        "--host-key-check",
        "accept-new",
    ]));
    let bdir = std::mem::replace(&mut { peer }.dir, tmp());
    // the peer is down when the job starts, and comes back after 10 s
    let dst = format!("ferry://127.0.0.1:{port}/in/out/");
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/out/", "dst": dst, "max_faults": 50}),
    );
    let id = j["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(10));
    let during = api.job(&key, &id);
    assert_eq!(during["state"], "running", "{during:#}");
    assert!(during["faults"].as_u64().unwrap() >= 1, "{during:#}");
    assert!(
        during["status_detail"]
            .as_str()
            .unwrap()
            .contains("connection_failed"),
        "{during:#}"
    );
    let _peer = start_peer(bdir, port, &inbox);
    let j = api.wait_state(&key, &id, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", api.log());
    assert!(j["faults"].as_u64().unwrap() >= 1);
    assert_eq!(std::fs::read(inbox.join("out/shard.bin")).unwrap(), data);
    let ev = api
        .call(
            "GET",
            &format!("/v1/events?job={id}"),
            Some(&key),
            &[],
            None,
        )
        .json();
    assert!(ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "fault" && e["data"]["code"] == "connection_failed"));
}

/// The s3s-fs server binary (scripts/test.sh installs it).
fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs")))
        .find(|p| p.is_file())
        .expect("s3s-fs (scripts/test.sh installs it)")
}

/// A job with an s3:// side: the daemon reaches the bucket with its own S3
/// settings (its AWS_* environment), against a real S3 server (s3s-fs).
#[test]
fn a_job_copies_a_module_to_s3_and_back() {
    let s3dir = tmp();
    let data = s3dir.path().join("data");
    std::fs::create_dir_all(data.join("bkt")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                "AKIAFERRYAPI",
                "--secret-key",
                "api-s3-secret",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs"),
    );
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "s3s-fs did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let home = s3dir.path().display().to_string();
    let api = Api::with_env(
        &[],
        &[
            ("HOME", &home),
            ("AWS_ACCESS_KEY_ID", "AKIAFERRYAPI"),
            ("AWS_SECRET_ACCESS_KEY", "api-s3-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
        ],
    );
    let weights = random_bytes(3 * MIB, 31);
    write(&api.src().join("ck/weights.bin"), &weights);
    write(&api.src().join("ck/sub/meta.json"), b"{\"step\": 42}\n");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    // a module of this daemon to a bucket
    let j = api.submit(&key, &sync_job("src/ck/", "s3://bkt/run42/"));
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", api.log());
    assert_eq!(
        std::fs::read(data.join("bkt/run42/weights.bin")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(data.join("bkt/run42/sub/meta.json")).unwrap(),
        b"{\"step\": 42}\n"
    );
    // and back into another module
    let j = api.submit(&key, &sync_job("s3://bkt/run42/", "dst/back/"));
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", api.log());
    assert_eq!(
        std::fs::read(api.dst().join("back/weights.bin")).unwrap(),
        weights
    );
    let f = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "weights.bin")
        .expect("weights.bin listed")
        .clone();
    assert_eq!(f["blake3"], blake3::hash(&weights).to_hex().as_str());
    // a key limited to modules may not reach a bucket it does not list
    let limited = api.key("limited", "jobs:write,jobs:read", &["src", "dst"]);
    let json_ct = [("Content-Type", "application/json")];
    api.call(
        "POST",
        "/v1/jobs",
        Some(&limited),
        &json_ct,
        Some(&sync_job("src/ck/", "s3://bkt/other/").to_string()),
    )
    .problem(403, "forbidden");
    let listed = api.key("listed", "jobs:write,jobs:read", &["src", "s3://bkt"]);
    let a = api.call(
        "POST",
        "/v1/jobs",
        Some(&listed),
        &json_ct,
        Some(&sync_job("src/ck/", "s3://bkt/other/").to_string()),
    );
    assert_eq!(a.status, 202, "{}", a.text());
    api.wait_state(
        &key,
        a.json()["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(60),
    );
    // two buckets: one side must be this daemon's module
    api.call(
        "POST",
        "/v1/jobs",
        Some(&key),
        &json_ct,
        Some(&sync_job("s3://bkt/run42/", "s3://bkt/copy/").to_string()),
    )
    .problem(422, "invalid_job");
    // the S3 secret reaches neither the log nor a job
    assert!(!api.log().contains("api-s3-secret"));
    let all = api.call("GET", "/v1/jobs", Some(&key), &[], None).text();
    assert!(!all.contains("api-s3-secret"));
}

#[test]
fn max_faults_and_deadline_end_a_job_with_their_codes() {
    let api = Api::new();
    write(&api.src().join("out/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    // nothing listens on this port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dst = format!("ferry://127.0.0.1:{port}/in/");
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/out/", "dst": dst, "max_faults": 1}),
    );
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(j["error"]["code"], "max_faults_exceeded", "{j:#}");
    assert_eq!(j["faults"], 1);
    let start = Instant::now();
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/out/", "dst": dst, "deadline": 4}),
    );
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(j["error"]["code"], "deadline_exceeded", "{j:#}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    // an unknown peer key is refused at once (strict known_hosts), not retried
    let (bdir, bport, inbox) = peer_for(&api);
    let _peer = start_peer(bdir, bport, &inbox);
    let j = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/out/", "dst": format!("ferry://127.0.0.1:{bport}/in/")}),
    );
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(30),
    );
    assert_eq!(j["error"]["code"], "host_key_unknown", "{j:#}");
    assert_eq!(j["faults"], 0);
}

#[test]
fn permanent_peer_failures_fail_at_once_with_their_codes() {
    let api = Api::new();
    write(&api.src().join("out/f"), b"x");
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let (bdir, port, inbox) = peer_for(&api);
    let ro = bdir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let peer = Daemon::spawn_in(
        bdir,
        &[("in", &inbox, false), ("ro", &ro, true)],
        &[],
        &[],
        &format!("127.0.0.1:{port}"),
    )
    .unwrap_or_else(|e| panic!("peer did not start: {e}"));
    ok(ferry([
        "ls",
        &format!("ferry://127.0.0.1:{port}/"),
        "--config-dir",
        &api.config_dir().display().to_string(),
        "--host-key-check",
        "accept-new",
    ]));
    let fails_fast = |dst: String, code: &str| {
        let start = Instant::now();
        let j = api.submit(
            &key,
            &json!({"op": "sync", "src": "src/out/", "dst": dst, "max_faults": 20}),
        );
        let j = api.wait_state(
            &key,
            j["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(30),
        );
        assert_eq!(j["state"], "failed", "{j:#}");
        assert_eq!(j["error"]["code"], code, "{j:#}");
        assert_eq!(j["faults"], 0, "{j:#}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{code} took {:?}",
            start.elapsed()
        );
    };
    fails_fast(
        format!("ferry://127.0.0.1:{port}/nomodule/x/"),
        "unknown_module",
    );
    fails_fast(
        format!("ferry://127.0.0.1:{port}/ro/x/"),
        "permission_denied",
    );
    assert!(std::fs::read_dir(&ro).unwrap().next().is_none());
    // another daemon (another key) on the same address: the key changed
    drop(peer);
    let (bdir2, _, inbox2) = peer_for(&api);
    let _other = start_peer(bdir2, port, &inbox2);
    fails_fast(
        format!("ferry://127.0.0.1:{port}/in/x/"),
        "host_key_changed",
    );
    assert!(!inbox2.join("x").exists());
}

#[test]
fn rate_limits_send_ietf_headers_and_429_without_spending_other_quotas() {
    let api = Api::with(&["--api-rate", "5/min"]);
    let key = api.key("k", "jobs:read", &[]);
    let other = api.key("other", "jobs:read", &[]);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let a = api.call("GET", "/v1/jobs", Some(&key), &[], None);
        assert_eq!(a.status, 200);
        assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=5;w=60"));
        seen.push(a.header("ratelimit").unwrap().to_string());
    }
    assert!(seen[0].starts_with("\"default\";r=4;"), "{seen:?}");
    assert!(seen[4].starts_with("\"default\";r=0;"), "{seen:?}");
    let a = api.call("GET", "/v1/jobs", Some(&key), &[], None);
    let p = a.problem(429, "rate_limited");
    assert_eq!(p["violated-policies"][0], "default");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(a.header("ratelimit").unwrap().contains("r=0"));
    // a flood without a valid key spends its own bucket, not another key's
    for _ in 0..20 {
        let a = api.call(
            "GET",
            "/v1/jobs",
            Some("fk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            &[],
            None,
        );
        assert!(a.status == 401 || a.status == 429, "{}", a.status);
        assert!(a.header("ratelimit").is_some());
    }
    assert_eq!(
        api.call("GET", "/v1/jobs", Some(&other), &[], None).status,
        200
    );
}

#[test]
fn metrics_pass_promtool_count_cli_transfers_and_hold_no_secret() {
    let api = Api::with(&["--log-format", "json"]);
    let admin = api.key("metrics", "metrics:read,jobs:write,jobs:read", &[]);
    let reader = api.key("reader", "jobs:read", &[]);
    write(&api.src().join("m/f.bin"), random_bytes(200_000, 11));
    let j = api.submit(&admin, &sync_job("src/m/", "dst/m/"));
    api.wait_state(
        &admin,
        j["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(30),
    );
    // a CLI client's transfer through the daemon counts too
    let client = api.dir.path().join("client");
    std::fs::create_dir(&client).unwrap();
    chmod(&client, 0o700);
    ok(ferry([
        "keygen",
        "-C",
        "c",
        "--config-dir",
        &client.display().to_string(),
    ]));
    write(
        &api.config_dir().join("authorized_keys"),
        std::fs::read(client.join("id_ed25519.pub")).unwrap(),
    );
    chmod(&api.config_dir().join("authorized_keys"), 0o600);
    let port = std::fs::read_to_string(api.dir.path().join("daemon.log")).unwrap();
    let addr = port
        .lines()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["fields"]["addresses"]
                .as_str()
                .map(|a| a.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .expect("the listening line, as JSON");
    ok(ferry([
        "sync",
        "-a",
        "--config-dir",
        &client.display().to_string(),
        "--host-key-check",
        "accept-new",
        &format!("{}/", api.src().join("m").display()),
        &format!("ferry://{addr}/dst/cli/"),
    ]));
    api.call("GET", "/metrics", Some(&reader), &[], None)
        .problem(403, "insufficient_scope");
    let a = api.call("GET", "/metrics", Some(&admin), &[], None);
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = a.text();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("ferry_jobs_finished_total{result=\"succeeded\"}"), 1);
    assert_eq!(value("ferry_daemon_files_total{direction=\"received\"}"), 1);
    assert!(value("ferry_daemon_bytes_total{direction=\"received\"}") >= 200_000);
    assert_eq!(
        value("ferry_api_auth_failures_total{reason=\"insufficient_scope\"}"),
        1
    );
    assert!(
        text.contains(
            "ferry_api_requests_total{route=\"/v1/jobs/{id}\",method=\"GET\",code=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        !text.contains(j["id"].as_str().unwrap()),
        "a job id as a label"
    );
    // the JSON log: one object a line, and no secret anywhere
    let log = api.log();
    assert!(
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{log}"
    );
    for secret in [&admin, &reader] {
        assert!(!text.contains(secret.as_str()));
        assert!(!log.contains(secret.as_str()));
    }
}

#[test]
fn beyond_loopback_the_api_speaks_tls_with_a_pinned_key() {
    let api = Api::with(&["--api", "0.0.0.0:0", "--api-tls"]);
    assert!(api.url.starts_with("https://"), "{}", api.url);
    let pin = std::fs::read_to_string(api.dir.path().join("pin")).unwrap();
    assert!(pin.starts_with("sha256//"), "{pin}");
    let port = api.url.rsplit(':').next().unwrap();
    let url = format!("https://127.0.0.1:{port}/v1/jobs");
    let key = api.key("k", "jobs:read", &[]);
    let curl = |pin: &str| {
        Command::new("curl")
            .args([
                "-sk",
                "--pinnedpubkey",
                pin,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-H", &format!("Authorization: Bearer {key}"), &url])
            .output()
            .expect("curl")
    };
    let o = curl(&pin);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", stderr(&o));
    // another key's pin: curl refuses the connection (exit 90)
    let o = curl("sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert_eq!(o.status.code(), Some(90), "{}", stderr(&o));
    // plain HTTP gets no answer there
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "plain HTTP was served"
    );
}

/// `ferry job ARGS` with this environment (nothing of the caller's
/// FERRY_API_* variables).
fn job_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(ferry_bin())
        .args(args)
        .env_remove("FERRY_API_URL")
        .env_remove("FERRY_API_KEY")
        .env_remove("FERRY_API_PIN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A pin as curl takes it, of a key's SubjectPublicKeyInfo.
fn pin_of_key(k: &rcgen::KeyPair) -> String {
    use base64::Engine;
    let spki = rcgen::PublicKeyData::subject_public_key_info(k);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost:
/// (ca.pem, cert.pem, key.pem, the server key's pin) in `dir`.
fn make_ca_and_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    write(&p("ca.pem"), ca.pem());
    write(&p("cert.pem"), cert.pem());
    write(&p("key.pem"), key.serialize_pem());
    chmod(&p("key.pem"), 0o600);
    (p("ca.pem"), p("cert.pem"), p("key.pem"), pin_of_key(&key))
}

#[test]
fn the_job_cli_reaches_a_tls_api_by_its_pin_and_refuses_another_key() {
    // TLS on loopback with the certificate made from the daemon's key
    let api = Api::with(&["--api-tls"]);
    assert!(api.url.starts_with("https://127.0.0.1:"), "{}", api.url);
    let pin = std::fs::read_to_string(api.dir.path().join("pin")).unwrap();
    write(&api.src().join("t/f.bin"), random_bytes(50_000, 21));
    let key = api.key("tls", "jobs:write,jobs:read", &[]);
    let env = [
        ("FERRY_API_URL", api.url.as_str()),
        ("FERRY_API_KEY", key.as_str()),
    ];
    // the pin as a flag: submit, watch, show
    let o = ok(job_cli(
        &["job", "submit", "src/t/", "dst/t/", "--api-pin", &pin],
        &env,
    ));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 26, "{id}");
    let o = ok(job_cli(&["job", "watch", &id, "--api-pin", &pin], &env));
    assert!(stdout(&o).contains("succeeded"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(api.dst().join("t/f.bin")).unwrap(),
        random_bytes(50_000, 21)
    );
    // the pin from FERRY_API_PIN
    let mut with_pin = env.to_vec();
    with_pin.push(("FERRY_API_PIN", pin.as_str()));
    let o = ok(job_cli(&["job", "show", &id, "--json"], &with_pin));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state"], "succeeded");
    // address, key and pin from the config directory
    let client = api.dir.path().join("client");
    std::fs::create_dir(&client).unwrap();
    write(&client.join("api_url"), format!("{}\n", api.url));
    write(&client.join("api_key"), format!("{key}\n"));
    write(&client.join("api_pin"), format!("{pin}\n"));
    let cfg = client.display().to_string();
    let o = ok(job_cli(&["job", "list", "--config-dir", &cfg], &[]));
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    // another key's pin: refused before the API key is sent, in one line
    let wrong = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let o = job_cli(&["job", "list", "--api-pin", wrong], &env);
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "its certificate's key is {pin}, not the pin {wrong}"
        )),
        "{err}"
    );
    // no pin at all, or a malformed one: a usage error that says what to give
    let o = job_cli(&["job", "list"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--api-pin"), "{}", stderr(&o));
    let o = job_cli(&["job", "list", "--api-pin", "sha256//short"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a key pin"), "{}", stderr(&o));
    // curl with the same pin
    let o = Command::new("curl")
        .args([
            "-sk",
            "--pinnedpubkey",
            &pin,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .arg(format!("{}/v1/jobs", api.url))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", stderr(&o));
    // no secret in the log
    assert!(!api.log().contains(&key));
}

#[test]
fn an_api_cert_from_a_ca_serves_curl_and_the_job_cli() {
    let certs = tmp();
    let (ca, cert, key_file, cert_pin) = make_ca_and_cert(certs.path(), "good");
    let (other_ca, _, _, _) = make_ca_and_cert(certs.path(), "other");
    let cert_s = cert.display().to_string();
    let key_s = key_file.display().to_string();
    let api = Api::with(&["--api-cert", &cert_s, "--api-key-file", &key_s]);
    assert!(api.url.starts_with("https://"), "{}", api.url);
    // the daemon prints the pin of the certificate's key
    let printed = std::fs::read_to_string(api.dir.path().join("pin")).unwrap();
    assert_eq!(printed, cert_pin);
    let key = api.key("ca", "jobs:read", &[]);
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .arg("-s")
            .args(extra)
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .arg(format!("{}/v1/jobs", api.url))
            .output()
            .expect("curl")
    };
    let ca_s = ca.display().to_string();
    let o = curl(&["--cacert", &ca_s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", stderr(&o));
    let o = curl(&["--cacert", &ca_s, "--pinnedpubkey", &cert_pin]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", stderr(&o));
    // another CA: curl refuses the certificate (exit 60)
    let o = curl(&["--cacert", &other_ca.display().to_string()]);
    assert_eq!(o.status.code(), Some(60), "{}", stderr(&o));
    let env = [
        ("FERRY_API_URL", api.url.as_str()),
        ("FERRY_API_KEY", key.as_str()),
    ];
    // ferry job: by the CA, or by the pin
    let o = ok(job_cli(&["job", "list", "--api-cacert", &ca_s], &env));
    assert_eq!(stdout(&o), "");
    ok(job_cli(&["job", "list", "--api-pin", &cert_pin], &env));
    let o = job_cli(
        &[
            "job",
            "list",
            "--api-cacert",
            &other_ca.display().to_string(),
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("TLS refused"), "{}", stderr(&o));
    // a missing key file is a clear start-up error
    let dir = tmp();
    let o = ferry([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--api-cert",
        &cert_s,
        "--api-key-file",
        &dir.path().join("nope.pem").display().to_string(),
        "--config-dir",
        &dir.path().display().to_string(),
        "--module",
        &format!("m={}", dir.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--api-key-file"), "{}", stderr(&o));
}

#[test]
fn the_openapi_document_validates() {
    let api = Api::new();
    let a = api.call("GET", "/v1/openapi.json", None, &[], None);
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let path = api.dir.path().join("openapi.json");
    std::fs::write(&path, a.text()).unwrap();
    let o = Command::new("python3")
        .args(["-c", "import sys; from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; validate(read_from_filename(sys.argv[1])[0]); print('valid')"])
        .arg(&path)
        .output()
        .expect("python3 with openapi-spec-validator (pip)");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).trim(), "valid");
}

#[test]
fn every_described_operation_is_served_and_answers_problems_it_lists() {
    let api = Api::new();
    let doc = api.call("GET", "/v1/openapi.json", None, &[], None).json();
    // the document and the router agree: every operation described is
    // served (a handler answers, not the fallback's not_found or
    // method_not_allowed), and every error answer is a problem body
    let paths = doc["paths"].as_object().unwrap();
    for want in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/events",
        "/v1/audit",
        "/metrics",
        "/v1/openapi.json",
        "/ui/",
        "/ui/login",
    ] {
        assert!(paths.contains_key(want), "{want} is not described");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["JobSpec"]["additionalProperties"], false);
    let spec_fields = schemas["JobSpec"]["properties"].as_object().unwrap();
    for f in [
        "op",
        "src",
        "dst",
        "delete",
        "exclude",
        "bwlimit",
        "max_faults",
    ] {
        assert!(spec_fields.contains_key(f), "JobSpec lacks {f}");
    }
    let key = api.key("k", "jobs:read", &[]);
    let mut served = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "01ZZZZZZZZZZZZZZZZZZZZZZZZ");
        for (method, op) in item.as_object().unwrap() {
            let a = api.call(
                &method.to_ascii_uppercase(),
                &concrete,
                Some(&key),
                &[("Content-Type", "application/json")],
                Some("{}"),
            );
            if a.status >= 400 {
                let p = a.json();
                assert!(
                    p["code"] != "not_found" && p["code"] != "method_not_allowed",
                    "{method} {path} is described but not served: {p}"
                );
                assert!(
                    op["responses"][a.status.to_string()].is_object(),
                    "{method} {path} answered {} which its description does not list",
                    a.status
                );
            }
            served += 1;
        }
    }
    assert!(served >= 13, "{served}");
}

/// Runs headless Chromium with a profile kept in `profile` (so the session
/// cookie survives from one run to the next).
fn chromium(profile: &Path, args: &[&str]) -> String {
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (Debian package chromium)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The dashboard page as Chromium renders it, once its script has filled in
/// the row of job `id`: `--dump-dom` does not wait for the page's fetches,
/// so on a loaded machine an early dump is tried again (ten times at most).
fn dashboard_dom(profile: &Path, url: &str, id: &str) -> String {
    let mut dom = String::new();
    for _ in 0..10 {
        dom = chromium(profile, &["--dump-dom", &format!("{url}/ui/")]);
        if dom.contains(&format!("id=\"job-{id}\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    dom
}

fn set_cookie(a: &Answer) -> String {
    a.header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_dashboard_shows_a_jobs_progress_and_final_state_in_chromium() {
    let api = Api::new();
    write(&api.src().join("d/big.bin"), random_bytes(8 * MIB, 12));
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let j = api.submit(&key, &json!({"op": "sync", "src": "src/d/", "dst": "dst/d/", "bwlimit": "512K", "label": "dash-test"}));
    let id = j["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(30);
    while api.job(&key, &id)["bytes_done"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < end, "the job never made progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = api.config_dir().display().to_string();
    let link = stdout(&ok(ferry(["dashboard-link", "--config-dir", &cfg])))
        .trim()
        .to_string();
    assert!(
        link.starts_with(&format!("{}/ui/#login=", api.url)),
        "{link}"
    );
    let profile = api.dir.path().join("chromium");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let running_png = shots.join("dashboard-running.png");
    let _ = std::fs::remove_file(&running_png);
    // log in through the link; the page keeps the session cookie
    chromium(
        &profile,
        &[
            "--timeout=3000",
            "--window-size=1200,400",
            &format!("--screenshot={}", running_png.display()),
            &link,
        ],
    );
    assert!(std::fs::read(&running_png).unwrap().starts_with(b"\x89PNG"));
    // the logged-in page, while the job runs
    let dom = dashboard_dom(&profile, &api.url, &id);
    let row = |dom: &str| -> String {
        let start = dom
            .find(&format!("id=\"job-{id}\""))
            .unwrap_or_else(|| panic!("no row for the job in:\n{dom}"));
        dom[start..].split("</tr>").next().unwrap().to_string()
    };
    let r = row(&dom);
    assert!(r.contains("running") && r.contains("dash-test"), "{r}");
    assert!(
        dom.contains("<ul id=\"modules\"><li>src</li><li>dst</li></ul>"),
        "{dom}"
    );
    let pct: u64 = r
        .split("class=\"pct\">")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pct < 100, "{r}");
    api.wait_state(&key, &id, &["succeeded"], Duration::from_secs(60));
    let final_png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&final_png);
    chromium(
        &profile,
        &[
            "--timeout=3000",
            "--window-size=1200,400",
            &format!("--screenshot={}", final_png.display()),
            &format!("{}/ui/", api.url),
        ],
    );
    assert!(std::fs::read(&final_png).unwrap().starts_with(b"\x89PNG"));
    let r = row(&dashboard_dom(&profile, &api.url, &id));
    assert!(
        r.contains("succeeded") && r.contains("100% of 8.0 MiB"),
        "{r}"
    );
    // a strict CSP, nothing from another host
    let page = api.call("GET", "/ui/", None, &[], None);
    let csp = page.header("content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!page.text().contains("http"), "an asset from another host");
    // the link works once
    let token = link.split("#login=").nth(1).unwrap();
    let body = json!({"token": token}).to_string();
    let json_ct = [("Content-Type", "application/json")];
    api.call("POST", "/ui/login", None, &json_ct, Some(&body))
        .problem(401, "login_link_invalid");
    // a session changes nothing without its CSRF token
    let link2 = stdout(&ok(ferry(["dashboard-link", "--config-dir", &cfg])))
        .trim()
        .to_string();
    let body = json!({"token": link2.split("#login=").nth(1).unwrap()}).to_string();
    let login = api.call("POST", "/ui/login", None, &json_ct, Some(&body));
    assert_eq!(login.status, 200, "{}", login.text());
    assert!(login.header("set-cookie").unwrap().contains("HttpOnly"));
    let cookie = set_cookie(&login);
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let j2 = api.submit(
        &key,
        &json!({"op": "sync", "src": "src/d/", "dst": "dst/d2/", "bwlimit": "1M"}),
    );
    let id2 = j2["id"].as_str().unwrap();
    let path = format!("/v1/jobs/{id2}/cancel");
    api.call("POST", &path, None, &[("Cookie", &cookie)], None)
        .problem(403, "csrf_failed");
    assert_eq!(
        api.call("GET", "/v1/jobs", None, &[("Cookie", &cookie)], None)
            .status,
        200
    );
    let a = api.call(
        "POST",
        &path,
        None,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        None,
    );
    assert_eq!(a.status, 202, "{}", a.text());
    api.wait_state(&key, id2, &["canceled"], Duration::from_secs(10));
}

/// A job's src or dst that goes through a symlink in a module (here `evil`,
/// pointing at a directory outside it) fails, naming the path and saying it
/// leaves the module: nothing outside is read, nothing outside is written.
/// A symlink inside the synced tree arrives as a symlink, not its target.
#[test]
fn a_job_never_leaves_its_module_through_a_symlink() {
    let api = Api::new();
    let outside = api.dir.path().join("outside");
    let secret = b"root:$6$secret-hash:19000::::::\n".to_vec();
    write(&outside.join("shadow"), &secret);
    let outside_w = api.dir.path().join("outside_w");
    std::fs::create_dir(&outside_w).unwrap();
    std::os::unix::fs::symlink(&outside, api.src().join("evil")).unwrap();
    std::os::unix::fs::symlink(&outside_w, api.dst().join("evil")).unwrap();
    write(&api.src().join("tree/a.txt"), b"in the module");
    write(&api.src().join("tree/sub/b.txt"), b"also in it");
    std::os::unix::fs::symlink("a.txt", api.src().join("tree/ln")).unwrap();
    std::os::unix::fs::symlink("sub", api.src().join("tree/dirln")).unwrap();
    std::os::unix::fs::symlink(outside.join("shadow"), api.src().join("tree/abs")).unwrap();
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    let (bdir, port, inbox) = peer_for(&api);
    write(&inbox.join("pulled/p.txt"), b"from the peer");
    let _peer = start_peer(bdir, port, &inbox);
    ok(ferry([
        "ls",
        &format!("ferry://127.0.0.1:{port}/"),
        "--config-dir",
        &api.config_dir().display().to_string(),
        "--host-key-check",
        "accept-new",
    ]));
    // options that follow links are no job's to give: refused by name
    for f in [
        "copy_links",
        "copy_dirlinks",
        "keep_dirlinks",
        "copy_unsafe_links",
    ] {
        let body = json!({"op": "sync", "src": "src/tree/", "dst": "dst/l/", f: true});
        let a = api.call(
            "POST",
            "/v1/jobs",
            Some(&key),
            &[("Content-Type", "application/json")],
            Some(&body.to_string()),
        );
        let p = a.problem(422, "invalid_body");
        assert!(p["detail"].as_str().unwrap().contains(f), "{p}");
    }
    let pulled = format!("ferry://127.0.0.1:{port}/in/pulled/");
    for (op, src, dst, named) in [
        ("sync", "src/evil/", "dst/got/", "evil"),
        ("sync", "src/evil/shadow", "dst/got/", "evil/shadow"),
        ("copy", "src/evil/shadow", "dst/got/", "evil/shadow"),
        ("sync", "src/tree/", "dst/evil/", "evil"),
        ("sync", "src/tree/", "dst/evil/deeper/", "evil/deeper"),
        ("copy", "src/tree/a.txt", "dst/evil/", "evil"),
        ("sync", &pulled, "dst/evil/", "evil"),
    ] {
        let j = api.submit(&key, &json!({"op": op, "src": src, "dst": dst}));
        let j = api.wait_state(
            &key,
            j["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(30),
        );
        assert_eq!(j["state"], "failed", "{op} {src} -> {dst}: {j:#}");
        let detail = j["error"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(named) && detail.contains("leaves the module"),
            "{op} {src} -> {dst}: {detail}"
        );
        assert!(
            !detail.contains(&api.dir.path().display().to_string()),
            "the daemon's own paths are not shown: {detail}"
        );
        assert_eq!(j["faults"], 0, "{j:#}");
    }
    // nothing of the secret reached the destination module, nothing was
    // written outside it, and the secret is as it was
    let got = snapshot(&api.dst(), false);
    assert!(
        got.keys().all(|k| !k.ends_with(b"shadow")),
        "{:?}",
        got.keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read_dir(&outside_w).unwrap().count(), 0);
    assert_eq!(std::fs::read(outside.join("shadow")).unwrap(), secret);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

    // a symlink inside the tree is sent as a symlink, its target not read
    let j = api.submit(&key, &sync_job("src/tree/", "dst/ok/"));
    let j = api.wait_state(
        &key,
        j["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(30),
    );
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let ok_dir = api.dst().join("ok");
    assert_eq!(
        std::fs::read(ok_dir.join("a.txt")).unwrap(),
        b"in the module"
    );
    for (name, target) in [("ln", "a.txt"), ("dirln", "sub")] {
        let m = std::fs::symlink_metadata(ok_dir.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name} arrived as {m:?}");
        assert_eq!(
            std::fs::read_link(ok_dir.join(name)).unwrap(),
            Path::new(target)
        );
    }
    // a link out of the tree is skipped (the module takes safe links), and
    // its target's bytes never arrive in its place
    assert_eq!(
        std::fs::read_link(ok_dir.join("abs")).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound),
        "a link out of the tree was made in a module that takes safe links"
    );
    // the job's file list does not read through the link either
    let secret_check = blake3::hash(&secret).to_hex().to_string();
    assert!(
        !j["files"].to_string().contains(&secret_check),
        "{:#}",
        j["files"]
    );
}

/// A job writing into a module makes the symlinks that module's `symlinks`
/// setting allows, as a client pushing into it would: munged in a `munge`
/// module, as sent in a `verbatim` one (and skipped when they leave the tree
/// in a `safe` one, above).
#[test]
fn a_job_into_a_module_makes_the_links_its_symlinks_setting_allows() {
    let mods = tmp();
    let (munge, verbatim) = (mods.path().join("munge"), mods.path().join("verbatim"));
    std::fs::create_dir(&munge).unwrap();
    std::fs::create_dir(&verbatim).unwrap();
    let cfg = mods.path().join("ferry.toml");
    write(
        &cfg,
        format!(
            "[[module]]\nname = \"munge\"\npath = \"{}\"\nsymlinks = \"munge\"\n\n\
             [[module]]\nname = \"verbatim\"\npath = \"{}\"\nsymlinks = \"verbatim\"\n",
            munge.display(),
            verbatim.display()
        ),
    );
    let api = Api::with(&["--config", cfg.to_str().unwrap()]);
    write(&api.src().join("tree/a.txt"), b"in the module");
    std::os::unix::fs::symlink("a.txt", api.src().join("tree/ln")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", api.src().join("tree/abs")).unwrap();
    let key = api.key("k", "jobs:write,jobs:read", &[]);
    for (module, root, ln, abs) in [
        (
            "munge",
            &munge,
            "/rsyncd-munged/a.txt",
            Some("/rsyncd-munged//etc/hostname"),
        ),
        ("verbatim", &verbatim, "a.txt", Some("/etc/hostname")),
        ("dst", &api.dst(), "a.txt", None),
    ] {
        let j = api.submit(&key, &sync_job("src/tree/", &format!("{module}/t/")));
        let j = api.wait_state(
            &key,
            j["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(30),
        );
        assert_eq!(j["state"], "succeeded", "{module}: {j:#}");
        let t = root.join("t");
        assert_eq!(std::fs::read(t.join("a.txt")).unwrap(), b"in the module");
        assert_eq!(
            std::fs::read_link(t.join("ln")).unwrap(),
            Path::new(ln),
            "{module}"
        );
        assert_eq!(
            std::fs::read_link(t.join("abs")).ok(),
            abs.map(PathBuf::from),
            "{module}"
        );
    }
}
