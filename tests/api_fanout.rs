//! Fan-out jobs through the daemon's HTTP API, against the real binary: a
//! daemon with `--api` is the source (its own key, its known_hosts) and real
//! `ferry serve` daemons on loopback are the chain. A job to three daemons
//! lands byte-identical with modes and mtimes; a daemon that is down makes
//! the job partial, named, and `ferry job resume` repairs it by delta (a
//! resume that cannot start keeps it partial; one after the source changed
//! is a 409); cancel and the deadline stop a job whose hosts hang at setup;
//! bad specs are refused with a 422 and nothing is stored.

mod util;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use util::*;

const MIB: usize = 1 << 20;

/// A free port on loopback (for a daemon started later on it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The API daemon (module `src`) and its destinations (module `m` each).
struct Setup {
    api: Daemon,
    api_port: u16,
    url: String,
    key: String,
    dests: Vec<Option<Daemon>>,
    /// Each destination's port and directory (kept while it is down).
    ports: Vec<u16>,
    parked: Vec<Option<tempfile::TempDir>>,
}

impl Setup {
    /// `n` destinations that trust the API daemon's key, whose keys the API
    /// daemon has recorded (as an operator would, once).
    fn start(n: usize) -> Setup {
        Setup::start_with(n, &[])
    }

    /// Like [`start`](Self::start), the API daemon run under `wrapper`
    /// (e.g. `env K=V` for a test hook).
    fn start_with(n: usize, wrapper: &[&str]) -> Setup {
        // the free port may be taken by another test before the daemon
        // binds it: then a fresh start on another, a few times
        let mut tries = 0;
        let (api, api_port) = loop {
            let dir = tmp();
            let daemon = dir.path().join("daemon");
            std::fs::create_dir(&daemon).unwrap();
            chmod(&daemon, 0o700);
            write(&daemon.join("authorized_keys"), "");
            chmod(&daemon.join("authorized_keys"), 0o600);
            std::fs::create_dir(dir.path().join("src")).unwrap();
            let api_port = free_port();
            let src = dir.path().join("src");
            match Daemon::spawn_in(
                dir,
                &[("src", &src, false)],
                &["--api", &format!("127.0.0.1:{api_port}")],
                wrapper,
                "127.0.0.1:0",
            ) {
                Ok(api) => break (api, api_port),
                Err(e) if e.contains("Address already in use") && tries < 3 => tries += 1,
                Err(e) => panic!("API daemon did not start: {e}"),
            }
        };
        let cfg = api.daemon_dir().display().to_string();
        let key = stdout(&ok(ferry([
            "api-key",
            "create",
            "--name",
            "ops",
            "--scope",
            "jobs:read,jobs:write",
            "--config-dir",
            &cfg,
        ])))
        .trim()
        .to_string();
        let public = std::fs::read_to_string(api.daemon_dir().join("id_ed25519.pub")).unwrap();
        let mut s = Setup {
            api,
            api_port,
            url: format!("http://127.0.0.1:{api_port}"),
            key,
            dests: Vec::new(),
            ports: Vec::new(),
            parked: Vec::new(),
        };
        for _ in 0..n {
            let d = tmp();
            let dd = d.path().join("daemon");
            std::fs::create_dir(&dd).unwrap();
            chmod(&dd, 0o700);
            std::fs::create_dir(d.path().join("m")).unwrap();
            write(&dd.join("authorized_keys"), &public);
            chmod(&dd.join("authorized_keys"), 0o600);
            let port = free_port();
            s.ports.push(port);
            s.parked.push(Some(d));
            s.dests.push(None);
            let i = s.dests.len() - 1;
            s.up(i);
            ok(ferry([
                "ls",
                &format!("ferry://127.0.0.1:{port}/"),
                "--config-dir",
                &cfg,
                "--host-key-check",
                "accept-new",
            ]));
        }
        s
    }

    /// `kill -9` of the API daemon, then the same daemon (database, keys,
    /// API port) started again without test hooks.
    fn restart_api(&mut self) {
        self.api.kill9();
        let dir = std::mem::replace(&mut self.api.dir, tmp());
        let src = dir.path().join("src");
        self.api = Daemon::spawn_in(
            dir,
            &[("src", &src, false)],
            &["--api", &format!("127.0.0.1:{}", self.api_port)],
            &[],
            "127.0.0.1:0",
        )
        .unwrap_or_else(|e| panic!("API daemon did not restart: {e}"));
    }

    /// Starts destination `i` (again) on its port.
    fn up(&mut self, i: usize) {
        self.up_with(i, &[]);
    }

    /// Starts destination `i` (again) on its port, run under `wrapper`.
    fn up_with(&mut self, i: usize, wrapper: &[&str]) {
        let d = self.parked[i].take().expect("destination is down");
        let m = d.path().join("m");
        let daemon = Daemon::spawn_in(
            d,
            &[("m", &m, false)],
            &[],
            wrapper,
            &format!("127.0.0.1:{}", self.ports[i]),
        )
        .unwrap_or_else(|e| panic!("destination did not start: {e}"));
        self.dests[i] = Some(daemon);
    }

    /// Stops destination `i`, keeping its directory.
    fn down(&mut self, i: usize) {
        let mut d = self.dests[i].take().expect("destination is up");
        self.parked[i] = Some(std::mem::replace(&mut d.dir, tmp()));
    }

    fn dest(&self, i: usize) -> String {
        format!("ferry://127.0.0.1:{}/m/out", self.ports[i])
    }

    fn out(&self, i: usize) -> PathBuf {
        match (&self.dests[i], &self.parked[i]) {
            (Some(d), _) => d.dir.path().join("m/out"),
            (None, Some(p)) => p.path().join("m/out"),
            _ => unreachable!(),
        }
    }

    fn src(&self) -> PathBuf {
        self.api.dir.path().join("src")
    }

    /// `ferry job ARGS…` against this API, bounded to two minutes.
    fn job(&self, args: &[&str]) -> Output {
        self.job_within(args, Duration::from_secs(120))
    }

    /// `ferry job ARGS…` against this API; a test failure if it has not
    /// ended within `bound`.
    fn job_within(&self, args: &[&str], bound: Duration) -> Output {
        let mut c = Command::new(ferry_bin());
        c.arg("job").args(args).args(["--api-url", &self.url]);
        c.env("FERRY_API_KEY", &self.key)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let end = Instant::now() + bound;
        while Instant::now() < end {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!(
            "ferry job {args:?} did not end in {bound:?}: {}\n{}",
            stderr(&o),
            self.api.log()
        );
    }

    fn show(&self, id: &str) -> Value {
        let o = self.job(&["show", id, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    }

    /// `curl` a request; (status, body).
    fn curl(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "-m", "30", "-X", method, "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {}", self.key)]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let o = c.arg(format!("{}{path}", self.url)).output().unwrap();
        let text = stdout(&o);
        let (body, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap(), body.to_string())
    }
}

/// A tree with a 20 MiB file, small files of several modes, an empty file
/// and nested directories, with set mtimes.
fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    write(&src.join("model.bin"), random_bytes(20 * MIB, 7));
    write(&src.join("sub/config.json"), b"{\"layers\": 32}\n");
    write(&src.join("sub/deeper/empty"), b"");
    write(&src.join("sub/deeper/run.sh"), b"#!/bin/sh\necho hi\n");
    chmod(&src.join("sub/config.json"), 0o600);
    chmod(&src.join("sub/deeper/run.sh"), 0o755);
    for (i, p) in [
        "model.bin",
        "sub/config.json",
        "sub/deeper/empty",
        "sub/deeper/run.sh",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&src.join(p), 1_600_000_000 + i as i64 * 1000);
    }
    for (i, p) in ["sub/deeper", "sub"].iter().enumerate() {
        set_mtime(&src.join(p), 1_500_000_000 + i as i64);
    }
}

#[test]
fn a_fanout_job_reaches_three_daemons_byte_identical() {
    let s = Setup::start(3);
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    let o = s.job(&[
        "submit",
        "--op",
        "fanout",
        "--label",
        "step-2000",
        "src/ckpt/",
        &s.dest(0),
        &s.dest(1),
        &s.dest(2),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 26, "{id}");
    let w = s.job(&["watch", &id]);
    assert_eq!(
        w.status.code(),
        Some(0),
        "{}\n{}\n{}",
        stdout(&w),
        stderr(&w),
        s.api.log()
    );
    let j = s.show(&id);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["op"], "fanout");
    assert!(j["error"].is_null(), "{j:#}");
    // not retried (its missed hosts are resumed): no max_faults
    assert!(j["max_faults"].is_null(), "{j:#}");
    let total = (20 * MIB + 15 + 18) as u64;
    let hosts = j["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["host"], s.dest(i).as_str());
        assert_eq!(h["state"], "done", "{h}");
        assert_eq!(h["bytes_received"].as_u64().unwrap(), total, "{h}");
        assert_same_tree(&ckpt, &s.out(i), true);
        assert!(!s.out(i).join(".ferry-partial").exists());
    }
    assert_eq!(j["bytes_done"].as_u64().unwrap(), 3 * total, "{j:#}");
    // the events tell the story: created, started, succeeded naming every host
    let (code, body) = s.curl("GET", &format!("/v1/events?job={id}"), None);
    assert_eq!(code, 200, "{body}");
    let ev: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"), "{kinds:?}");
    assert!(kinds.contains(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"succeeded"), "{kinds:?}");
    // the text form names each host
    let t = s.job(&["show", &id]);
    let text = stdout(&t);
    for i in 0..3 {
        assert!(text.contains(&format!("{} done", s.dest(i))), "{text}");
    }
    // a resume of a job every host has is refused: nothing to do
    let r = s.job(&["resume", &id]);
    assert_ne!(r.status.code(), Some(0));
    assert!(
        stderr(&r).contains("every host has it already"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn a_destination_down_makes_the_job_partial_and_resume_repairs_it_by_delta() {
    let mut s = Setup::start(3);
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    // the host that will be down holds the previous checkpoint: the same
    // model but for one 4 MiB piece
    let mut old = std::fs::read(ckpt.join("model.bin")).unwrap();
    old[9 * MIB..9 * MIB + 100].fill(0xEE);
    write(&s.out(1).join("model.bin"), &old);
    s.down(1);
    let body = json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0), s.dest(1), s.dest(2)], "stall_timeout": "3s"});
    let (code, text) = s.curl("POST", "/v1/jobs", Some(&body));
    assert_eq!(code, 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(24), "{}\n{}", stdout(&w), stderr(&w));
    let j = s.show(&id);
    assert_eq!(j["state"], "partial", "{j:#}");
    assert_eq!(j["error"]["code"], "fanout_partial", "{j:#}");
    let detail = j["error"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("1 of 3 host(s) missed it: "), "{detail}");
    assert!(detail.contains(&s.dest(1)), "{detail}");
    assert!(!detail.contains(&s.dest(0)), "{detail}");
    let states: Vec<&str> = j["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "missed", "done"], "{j:#}");
    for i in [0, 2] {
        assert_same_tree(&ckpt, &s.out(i), true);
    }
    // nothing of the new tree reached the host that was down
    assert_eq!(std::fs::read(s.out(1).join("model.bin")).unwrap(), old);
    assert!(!s.out(1).join("sub").exists());
    let kept: Vec<_> = [0, 2]
        .iter()
        .map(|&i| {
            std::fs::metadata(s.out(i).join("model.bin"))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let size0 = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(s.out(0).join("model.bin")).unwrap(),
    );

    // the host comes back; the job resumes under its own id, for it alone
    s.up(1);
    let r = s.job(&["resume", &id, "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let q: Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(q["id"], id.as_str());
    assert!(
        matches!(q["state"].as_str(), Some("queued" | "running")),
        "{q:#}"
    );
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(0), "{}\n{}", stdout(&w), s.api.log());
    let j = s.show(&id);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(j["error"].is_null(), "{j:#}");
    for i in 0..3 {
        assert_eq!(j["hosts"][i]["state"], "done", "{j:#}");
        assert_same_tree(&ckpt, &s.out(i), true);
    }
    // by delta: the repaired host was sent far less than the tree
    let total = (20 * MIB + 15 + 18) as u64;
    let got = j["hosts"][1]["bytes_received"].as_u64().unwrap();
    assert!(got < total / 2, "the repair moved {got} of {total} bytes");
    // the hosts that had it were not sent it again
    for (k, &i) in [0, 2].iter().enumerate() {
        let m = std::fs::metadata(s.out(i).join("model.bin")).unwrap();
        assert_eq!(m.modified().unwrap(), kept[k]);
    }
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(s.out(0).join("model.bin")).unwrap()
        ),
        size0
    );
    let (_, body) = s.curl("GET", &format!("/v1/events?job={id}"), None);
    let ev: Value = serde_json::from_str(&body).unwrap();
    let events = ev["events"].as_array().unwrap();
    let requeued = events.iter().find(|e| e["type"] == "requeued").unwrap();
    assert_eq!(requeued["data"]["hosts"], json!([s.dest(1)]));
    let resumed = events.iter().find(|e| e["type"] == "resumed").unwrap();
    assert_eq!(resumed["data"]["hosts"], json!([s.dest(1)]));
    assert_eq!(events.last().unwrap()["type"], "succeeded");
}

#[test]
fn bad_fanout_specs_are_refused_and_nothing_is_stored() {
    let s = Setup::start(1);
    std::fs::create_dir(s.src().join("ckpt")).unwrap();
    let d = s.dest(0);
    let same = d.replace("/m/out", "/m/other");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"op": "fanout", "src": "src/ckpt/"}),
            "/destinations",
            "at least one destination daemon",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": []}),
            "/destinations",
            "at least one destination daemon",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": [d, "src/copy/"]}),
            "/destinations",
            "must be a ferry daemon",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": ["gpu1:/srv/ckpt/"]}),
            "/destinations",
            "must be a ferry daemon",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": [d, same]}),
            "/destinations",
            "the same daemon twice in one chain",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": ["gpu1::"]}),
            "/destinations",
            "module",
        ),
        (
            json!({"op": "fanout", "src": d, "destinations": [d]}),
            "/src",
            "a module path of this daemon",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "dst": d}),
            "/dst",
            "destinations, not dst",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": [d], "compress": true}),
            "/compress",
            "does not take compress",
        ),
        (
            json!({"op": "fanout", "src": "src/ckpt/", "destinations": [d], "stall_timeout": "10x"}),
            "/stall_timeout",
            "unknown unit",
        ),
        (
            json!({"op": "sync", "src": "src/ckpt/", "dst": d, "destinations": [d]}),
            "/destinations",
            "only a fan-out job",
        ),
    ];
    for (body, pointer, says) in &cases {
        let (code, text) = s.curl("POST", "/v1/jobs", Some(body));
        assert_eq!(code, 422, "{body}: {text}");
        let p: Value = serde_json::from_str(&text).unwrap();
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{body}: {detail}");
        assert!(!detail.contains('\n'), "{detail}");
        assert_eq!(p["errors"][0]["pointer"], *pointer, "{body}: {p:#}");
    }
    // none of them was stored
    let (code, text) = s.curl("GET", "/v1/jobs", None);
    assert_eq!(code, 200);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["jobs"], json!([]), "{list:#}");
    // the CLI says the API's reason in one line and exits non-zero
    let o = s.job(&["submit", "--op", "fanout", "src/ckpt/", &d, &same]);
    assert_ne!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert!(e.contains("the same daemon twice in one chain"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // several destinations without --op fanout is a usage error, sent nowhere
    let o = s.job(&["submit", "src/ckpt/", &d, &same]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--op fanout"), "{}", stderr(&o));
    let (_, text) = s.curl("GET", "/v1/jobs", None);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["jobs"],
        json!([])
    );
    // the OpenAPI document describes the fan-out form and its resume
    let (code, text) = s.curl("GET", "/v1/openapi.json", None);
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["paths"]["/v1/jobs/{id}/resume"]["post"].is_object());
    let schemas = &doc["components"]["schemas"];
    for f in ["destinations", "stall_timeout"] {
        assert!(schemas["JobSpec"]["properties"][f].is_object(), "{f}");
    }
    assert!(text.contains("\"fanout\""));
    assert!(text.contains("\"partial\""));
    assert!(schemas["Job"]["properties"]["hosts"].is_object());
    // a sync job does not resume: it is submitted again
    let (code, text) = s.curl(
        "POST",
        "/v1/jobs",
        Some(&json!({"op": "sync", "src": "src/ckpt/", "dst": "src/copy/"})),
    );
    assert_eq!(code, 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, text) = s.curl("POST", &format!("/v1/jobs/{id}/resume"), None);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("not a fan-out job"), "{text}");
}

#[test]
fn a_running_fanout_job_shows_each_hosts_progress_and_cancel_stops_it() {
    // the API daemon's forwarder waits 50 ms a 256 KiB frame: 20 MiB take 4 s
    let s = Setup::start_with(
        2,
        &["env", "FERRY_TEST_HOOKS=1", "FERRY_TEST_FANOUT_PACE_MS=50"],
    );
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    let body = json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0), s.dest(1)]});
    let (code, text) = s.curl("POST", "/v1/jobs", Some(&body));
    assert_eq!(code, 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // progress: the job is running, bytes are counted, each host is running
    let end = Instant::now() + Duration::from_secs(60);
    let during = loop {
        let j = s.show(&id);
        if j["state"] == "running" && j["bytes_done"].as_u64().unwrap_or(0) > 0 {
            break j;
        }
        assert!(
            Instant::now() < end && j["state"] != "succeeded",
            "no progress seen: {j:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = (20 * MIB + 15 + 18) as u64;
    assert_eq!(
        during["bytes_total"].as_u64().unwrap(),
        2 * total,
        "{during:#}"
    );
    assert!(
        during["bytes_done"].as_u64().unwrap() < 2 * total,
        "{during:#}"
    );
    for h in during["hosts"].as_array().unwrap() {
        assert_eq!(h["state"], "running", "{during:#}");
    }
    assert!(
        during["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["bytes_received"].as_u64().unwrap() > 0),
        "{during:#}"
    );
    // cancel: the chain stops, nothing half-written is at a final path
    let c = s.job(&["cancel", &id, "--json"]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    let j = s.show(&id);
    assert_eq!(j["state"], "canceled", "{j:#}\n{}", s.api.log());
    assert_eq!(j["error"]["code"], "canceled", "{j:#}");
    for i in 0..2 {
        assert_eq!(j["hosts"][i]["state"], "missed", "{j:#}");
        assert!(!s.out(i).join("model.bin").exists());
    }
    // and resumes to the end under its own id
    let r = s.job(&["resume", &id]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(0), "{}\n{}", stdout(&w), s.api.log());
    for i in 0..2 {
        assert_same_tree(&ckpt, &s.out(i), true);
    }
}

#[test]
fn kill_9_of_the_api_daemon_mid_fanout_then_restart_finishes_the_same_job() {
    let mut s = Setup::start_with(
        2,
        &["env", "FERRY_TEST_HOOKS=1", "FERRY_TEST_FANOUT_PACE_MS=50"],
    );
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    let o = s.job(&[
        "submit",
        "--op",
        "fanout",
        "src/ckpt/",
        &s.dest(0),
        &s.dest(1),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.show(&id);
        if j["bytes_done"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(j["state"], "running", "{j:#}");
            break;
        }
        assert!(Instant::now() < end, "no progress seen: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.restart_api();
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(0), "{}\n{}", stdout(&w), s.api.log());
    let j = s.show(&id);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    for i in 0..2 {
        assert_eq!(j["hosts"][i]["state"], "done", "{j:#}");
        assert_same_tree(&ckpt, &s.out(i), true);
    }
    let (_, body) = s.curl("GET", &format!("/v1/events?job={id}"), None);
    let ev: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"interrupted"), "{kinds:?}");
    assert!(kinds.contains(&"resumed"), "{kinds:?}");
}

/// A fan-out job that some hosts have: posts it with `dest(1)` down, waits
/// for it to end partial; its id.
fn partial_job(s: &mut Setup) -> String {
    s.down(1);
    let body = json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0), s.dest(1), s.dest(2)], "stall_timeout": "3s"});
    let (code, text) = s.curl("POST", "/v1/jobs", Some(&body));
    assert_eq!(code, 202, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(24), "{}\n{}", stdout(&w), stderr(&w));
    assert_eq!(s.show(&id)["state"], "partial");
    id
}

fn host_states(j: &Value) -> Vec<String> {
    j["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_resume_that_cannot_start_ends_partial_keeping_the_hosts_that_have_it() {
    let mut s = Setup::start(3);
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    let id = partial_job(&mut s);
    // the resumed run cannot start: its source is gone
    std::fs::remove_dir_all(&ckpt).unwrap();
    s.up(1);
    let r = s.job(&["resume", &id]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(24), "{}\n{}", stdout(&w), stderr(&w));
    let j = s.show(&id);
    assert_eq!(j["state"], "partial", "{j:#}");
    assert_eq!(j["error"]["code"], "fanout_partial", "{j:#}");
    let detail = j["error"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("1 of 3 host(s) missed it: "), "{detail}");
    assert!(
        detail.contains(&format!(
            "{} (src/ckpt/: no such file or directory)",
            s.dest(1)
        )),
        "{detail}"
    );
    assert_eq!(host_states(&j), ["done", "missed", "done"], "{j:#}");
    assert!(j["hosts"][0]["error"].is_null(), "{j:#}");
    // the hosts that had it keep it; the missed one got nothing
    for i in [0, 2] {
        assert_eq!(
            std::fs::read(s.out(i).join("model.bin")).unwrap(),
            random_bytes(20 * MIB, 7)
        );
    }
    assert!(!s.out(1).join("model.bin").exists());
}

/// A "daemon" on loopback that accepts TCP, reads what it is sent and never
/// answers (a host hung before the TLS handshake ends); its port. Its
/// threads end when the test process does (each read ends at the peer's
/// close, the accept loop after two minutes).
fn silent_host() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while matches!(std::io::Read::read(&mut c, &mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    port
}

/// Two hosts that hang at setup, as destinations.
fn hung_hosts() -> Vec<String> {
    (0..2)
        .map(|_| format!("ferry://127.0.0.1:{}/m/out", silent_host()))
        .collect()
}

impl Setup {
    /// Posts a job; its id.
    fn post(&self, body: Value) -> String {
        let (code, text) = self.curl("POST", "/v1/jobs", Some(&body));
        assert_eq!(code, 202, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[test]
fn cancel_stops_a_fanout_whose_hosts_hang_at_setup() {
    let s = Setup::start(0);
    tree(&s.src().join("ckpt"));
    // cancel while every host hangs at setup: canceled at once
    let id = s.post(json!({"op": "fanout", "src": "src/ckpt/", "destinations": hung_hosts()}));
    let end = Instant::now() + Duration::from_secs(30);
    while s.show(&id)["state"] != "running" {
        assert!(Instant::now() < end, "{:#}", s.show(&id));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let c = s.job(&["cancel", &id, "--json"]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    let j = s.show(&id);
    let took = asked.elapsed();
    assert_eq!(j["state"], "canceled", "{j:#}\n{}", s.api.log());
    assert_eq!(j["error"]["code"], "canceled", "{j:#}");
    // stopped by the cancel, not by the hosts' own read timeout; the bound
    // only catches a hang (timings are for benches, not tests)
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
    assert_eq!(host_states(&j), ["missed", "missed"], "{j:#}");
    for h in j["hosts"].as_array().unwrap() {
        assert_eq!(h["error"], "canceled", "{j:#}");
    }
}

#[test]
fn the_deadline_ends_a_fanout_whose_hosts_hang_at_setup() {
    let s = Setup::start(0);
    tree(&s.src().join("ckpt"));
    let t0 = Instant::now();
    let id = s.post(
        json!({"op": "fanout", "src": "src/ckpt/", "destinations": hung_hosts(), "deadline": 1}),
    );
    let w = s.job(&["watch", &id]);
    let took = t0.elapsed();
    assert_eq!(w.status.code(), Some(20), "{}\n{}", stdout(&w), stderr(&w));
    let j = s.show(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["error"]["code"], "deadline_exceeded", "{j:#}");
    assert!(took < Duration::from_secs(10), "the job ran {took:?}");
    assert_eq!(host_states(&j), ["missed", "missed"], "{j:#}");
}

#[test]
fn a_resume_after_the_source_changed_is_refused_and_nothing_is_mixed() {
    let mut s = Setup::start(3);
    let ckpt = s.src().join("ckpt");
    tree(&ckpt);
    let id = partial_job(&mut s);
    let before = s.show(&id);
    let (_, body) = s.curl("GET", &format!("/v1/events?job={id}"), None);
    let events_before = serde_json::from_str::<Value>(&body).unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    // the source changes: a new config
    let cfg = ckpt.join("sub/config.json");
    write(&cfg, b"{\"layers\": 48}\n");
    s.up(1);
    let (code, text) = s.curl("POST", &format!("/v1/jobs/{id}/resume"), None);
    assert_eq!(code, 409, "{text}");
    let p: Value = serde_json::from_str(&text).unwrap();
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("src/ckpt/ changed since the job's first run"),
        "{detail}"
    );
    assert!(detail.contains("submit a new job"), "{detail}");
    assert!(!detail.contains('\n'), "{detail}");
    // the CLI says so in one line
    let r = s.job(&["resume", &id]);
    assert_ne!(r.status.code(), Some(0));
    assert!(
        stderr(&r).contains("changed since the job's first run"),
        "{}",
        stderr(&r)
    );
    assert_eq!(stderr(&r).trim_end().lines().count(), 1, "{}", stderr(&r));
    // nothing changed in the store, nothing was sent
    let after = s.show(&id);
    for k in ["state", "error", "hosts", "attempts", "updated_at"] {
        assert_eq!(after[k], before[k], "{k}: {after:#}");
    }
    let (_, body) = s.curl("GET", &format!("/v1/events?job={id}"), None);
    let n = serde_json::from_str::<Value>(&body).unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, events_before);
    assert!(!s.out(1).join("sub").exists());
    assert_eq!(
        std::fs::read(s.out(0).join("sub/config.json")).unwrap(),
        b"{\"layers\": 32}\n"
    );
    // the first version back, as it was: the resume runs and every host
    // holds that one version
    write(&cfg, b"{\"layers\": 32}\n");
    set_mtime(&cfg, 1_600_000_000 + 1000);
    let r = s.job(&["resume", &id]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(0), "{}\n{}", stdout(&w), s.api.log());
    for i in 0..3 {
        assert_same_tree(&ckpt, &s.out(i), true);
    }
}

/// A fan-out job's source that goes through a symlink in the module (`evil`,
/// pointing at a directory outside it) fails, naming the path and saying it
/// leaves the module; the secret reaches no host. Symlinks inside the tree
/// travel as symlinks, never followed.
#[test]
fn a_fanout_job_never_leaves_its_module_through_a_symlink() {
    let s = Setup::start(1);
    let outside = s.api.dir.path().join("outside");
    let secret = b"root:$6$secret-hash:19000::::::\n".to_vec();
    write(&outside.join("shadow"), &secret);
    std::os::unix::fs::symlink(&outside, s.src().join("evil")).unwrap();
    let ckpt = s.src().join("ckpt");
    write(&ckpt.join("a.txt"), b"in the module");
    write(&ckpt.join("sub/b.txt"), b"also in it");
    std::os::unix::fs::symlink("a.txt", ckpt.join("ln")).unwrap();
    std::os::unix::fs::symlink("sub", ckpt.join("dirln")).unwrap();
    std::os::unix::fs::symlink(outside.join("shadow"), ckpt.join("abs")).unwrap();
    for src in ["src/evil/", "src/evil/shadow"] {
        let (code, body) = s.curl(
            "POST",
            "/v1/jobs",
            Some(&json!({"op": "fanout", "src": src, "destinations": [s.dest(0)]})),
        );
        assert_eq!(code, 202, "{body}");
        let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let w = s.job(&["watch", &id]);
        assert_ne!(w.status.code(), Some(0), "{src}: {}", stdout(&w));
        let j = s.show(&id);
        assert_eq!(j["state"], "failed", "{src}: {j:#}");
        let detail = j["error"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(src) && detail.contains("leaves the module"),
            "{src}: {detail}"
        );
        assert!(
            !s.out(0).exists() || snapshot(&s.out(0), false).is_empty(),
            "{src}: something arrived: {:?}",
            snapshot(&s.out(0), false).keys().collect::<Vec<_>>()
        );
    }
    // the tree's own links arrive as links, with the same targets
    let (code, body) = s.curl(
        "POST",
        "/v1/jobs",
        Some(&json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0)]})),
    );
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let w = s.job(&["watch", &id]);
    assert_eq!(w.status.code(), Some(0), "{}\n{}", stderr(&w), s.api.log());
    let out = s.out(0);
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"in the module");
    for (name, target) in [("ln", "a.txt"), ("dirln", "sub")] {
        let m = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name} arrived as {m:?}");
        assert_eq!(
            std::fs::read_link(out.join(name)).unwrap(),
            Path::new(target)
        );
    }
    // a link out of the tree is not made (the module takes safe links), and
    // its target's bytes never arrive in its place
    match std::fs::symlink_metadata(out.join("abs")) {
        Ok(m) => assert!(m.file_type().is_symlink(), "abs arrived as {m:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
}

#[test]
fn a_fanout_jobs_errors_name_module_paths_not_the_daemons_own() {
    // the walk holds a directory handle a level down to 64 levels: with
    // fewer descriptors than that left to the daemon, a tree 200 deep fails
    // within it, even for root (mode 000 would not stop root)
    let s = Setup::start_with(1, &["sh", "-c", "ulimit -n 64 && exec \"$@\"", "sh"]);
    let ckpt = s.src().join("ckpt");
    write(&ckpt.join("a.txt"), b"in the module");
    let mut deep = ckpt.join("deep");
    for _ in 0..200 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let (code, body) = s.curl(
        "POST",
        "/v1/jobs",
        Some(&json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0)]})),
    );
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let w = s.job(&["watch", &id]);
    assert_ne!(w.status.code(), Some(0), "{}", stdout(&w));
    let j = s.show(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    let detail = j["error"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("src/ckpt/deep/d/d/") && detail.contains("pen files"),
        "{detail}"
    );
    let here = s.api.dir.path().display().to_string();
    assert!(!detail.contains(&here), "the daemon's own path: {detail}");
    assert!(!s.out(0).exists() || snapshot(&s.out(0), false).is_empty());
}

/// A host that takes longer than the API's 2 s connection wait to answer a
/// job's start (it indexes a large previous checkpoint first: here the test
/// hook makes it wait 3 s) is healthy: it is waited for up to the stall
/// timeout, not marked missed, and gets the tree.
#[test]
fn a_host_slow_to_answer_the_start_is_not_missed() {
    let mut s = Setup::start(2);
    tree(&s.src().join("ckpt"));
    s.down(1);
    s.up_with(
        1,
        &[
            "env",
            "FERRY_TEST_HOOKS=1",
            "FERRY_TEST_FANOUT_READY_DELAY_MS=3000",
        ],
    );
    let id = s.post(json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0), s.dest(1)], "stall_timeout": "10s"}));
    let w = s.job(&["watch", &id]);
    let j = s.show(&id);
    assert_eq!(w.status.code(), Some(0), "{}\n{j:#}", stdout(&w));
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(host_states(&j), ["done", "done"], "{j:#}");
    for i in 0..2 {
        assert_same_tree(&s.src().join("ckpt"), &s.out(i), true);
    }
}

/// A host that answers the start later than the stall timeout is missed
/// ("timed out") and the run goes on without it: the job ends partial naming
/// it (it used to hang, waiting on a host that was never linked), the other
/// host has the tree, and a resume repairs the one missed.
#[test]
fn a_host_missed_at_the_start_ends_the_job_partial_and_resume_repairs_it() {
    for slow in [0, 1] {
        let mut s = Setup::start(2);
        let ckpt = s.src().join("ckpt");
        tree(&ckpt);
        s.down(slow);
        s.up_with(
            slow,
            &[
                "env",
                "FERRY_TEST_HOOKS=1",
                "FERRY_TEST_FANOUT_READY_DELAY_MS=3000",
            ],
        );
        let id = s.post(json!({"op": "fanout", "src": "src/ckpt/", "destinations": [s.dest(0), s.dest(1)], "stall_timeout": "1s"}));
        // bounded: the job used to run on forever
        let w = s.job_within(&["watch", &id], Duration::from_secs(60));
        let j = s.show(&id);
        assert_eq!(w.status.code(), Some(24), "{}\n{j:#}", stdout(&w));
        assert_eq!(j["state"], "partial", "{j:#}");
        let detail = j["error"]["detail"].as_str().unwrap();
        assert!(detail.starts_with("1 of 2 host(s) missed it: "), "{detail}");
        assert!(detail.contains(&s.dest(slow)), "{detail}");
        assert!(!detail.contains(&s.dest(1 - slow)), "{detail}");
        let mut want = ["done", "done"];
        want[slow] = "missed";
        assert_eq!(host_states(&j), want, "{j:#}");
        assert_same_tree(&ckpt, &s.out(1 - slow), true);
        assert!(!s.out(slow).join("model.bin").exists(), "{j:#}");
        // the host answers promptly again: a resume repairs it
        s.down(slow);
        s.up(slow);
        let r = s.job(&["resume", &id]);
        assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
        let w = s.job_within(&["watch", &id], Duration::from_secs(60));
        let j = s.show(&id);
        assert_eq!(w.status.code(), Some(0), "{}\n{j:#}", stdout(&w));
        assert_eq!(j["state"], "succeeded", "{j:#}");
        for i in 0..2 {
            assert_same_tree(&ckpt, &s.out(i), true);
        }
    }
}

/// A fan-out job of a module tree 1,000 directories deep, the API daemon
/// run with at most 256 open descriptors: its walk (confined to the module,
/// from directory handles) neither runs out of stack nor holds a handle per
/// level, and the tree arrives whole.
#[test]
fn a_fanout_job_of_a_tree_1000_directories_deep_arrives_whole() {
    let s = Setup::start_with(2, &["sh", "-c", "ulimit -n 256 && exec \"$@\"", "sh"]);
    let top = s.src().join("deep");
    let deepest = top.join("d/".repeat(1000).trim_end_matches('/'));
    std::fs::create_dir_all(&deepest).unwrap();
    write(&deepest.join("bottom"), b"at the bottom\n");
    write(
        &top.join("d/".repeat(500)).join("half"),
        random_bytes(5000, 9),
    );
    let o = s.job(&[
        "submit",
        "--op",
        "fanout",
        "src/deep/",
        &s.dest(0),
        &s.dest(1),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let w = s.job(&["watch", &id]);
    let j = s.show(&id);
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", s.api.log());
    assert_eq!(w.status.code(), Some(0), "{}", stderr(&w));
    for i in 0..2 {
        assert_same_tree(&top, &s.out(i), true);
    }
}
