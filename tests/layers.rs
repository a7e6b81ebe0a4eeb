//! What the layering of issue 18 promises, seen from outside: a `known_hosts`
//! the client cannot read or write, and a listen address the daemon finds in
//! use, exit 11 (the README's "local file operation failed"), not 1 (usage);
//! and the host-key decision is the caller's, so a
//! library user (a daemon job, a test) answers it without a terminal.

mod util;
use ferry::transport::daemon::{self, DaemonOptions};
use ferry::trust::{HostKeyDecision, HostKeyPolicy, UnknownHost};
use std::sync::{Arc, Mutex};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A sync of one small file to `d`, with `known_hosts` at `known`.
fn push(d: &Daemon, t: &std::path::Path, known: &std::path::Path) -> std::process::Output {
    write(&t.join("f"), "x");
    let mut args = d.client_args();
    args.extend(["--known-hosts".into(), s(known)]);
    let mut v: Vec<String> = vec!["sync".into()];
    v.extend(args);
    v.extend([s(&t.join("f")), d.url("data/f")]);
    ferry(&v)
}

#[test]
fn a_known_hosts_file_that_cannot_be_read_exits_11() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    // a directory where the file should be: reading it fails, not "not found"
    let known = t.path().join("known_hosts");
    std::fs::create_dir(&known).unwrap();
    let o = push(&d, t.path(), &known);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains(&s(&known)), "{}", stderr(&o));
    assert!(!module.join("f").exists());
}

#[test]
fn a_known_hosts_file_that_cannot_be_written_exits_11() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    // reads as absent, but creating it fails (even for root): the link points
    // into a directory that does not exist
    let known = t.path().join("known_hosts");
    std::os::unix::fs::symlink(t.path().join("no-such-dir/known_hosts"), &known).unwrap();
    let o = push(&d, t.path(), &known);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains(&s(&known)), "{}", stderr(&o));
    assert!(!module.join("f").exists());
}

#[test]
fn a_daemon_whose_address_is_in_use_exits_11() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let o = ferry([
        "serve",
        "--listen",
        &d.addr.to_string(),
        "--config-dir",
        &s(&d.daemon_dir()),
        "--module",
        &format!("data={}", module.display()),
    ]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("listen on {}", d.addr)),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_caller_decides_about_an_unknown_daemon_key() {
    let t = tmp();
    let module = t.path().join("module");
    std::fs::create_dir(&module).unwrap();
    let d = Daemon::start(&[("data", &module, false)], "", &[]);
    let known = t.path().join("known_hosts");
    let asked: Arc<Mutex<Vec<UnknownHost>>> = Arc::default();
    let answer = |decision: HostKeyDecision| {
        let asked = asked.clone();
        HostKeyPolicy::Ask(Arc::new(move |h: &UnknownHost| {
            asked.lock().unwrap().push(h.clone());
            decision
        }))
    };
    let opts = |policy| DaemonOptions {
        config_dir: Some(d.client_dir()),
        known_hosts: Some(known.clone()),
        host_key: policy,
        ..Default::default()
    };
    let host = d.addr.ip().to_string();
    let port = d.addr.port();

    // refused: nothing recorded, and the error says which policy refused
    let refused = daemon::connect(&host, port, &opts(answer(HostKeyDecision::Refuse)));
    let Err(e) = refused else {
        panic!("a refused key connected")
    };
    assert!(e.to_string().contains("unknown key"), "{e}");
    assert!(e.to_string().contains("--host-key-check=ask"), "{e}");
    assert!(!known.exists());
    assert_eq!(asked.lock().unwrap().len(), 1);
    let label = format!("[{host}]:{port}");
    assert_eq!(asked.lock().unwrap()[0].label, label);
    assert_eq!(asked.lock().unwrap()[0].known_hosts, known);

    // accepted: recorded, and the connection says so for the caller to tell
    let c = daemon::connect(&host, port, &opts(answer(HostKeyDecision::Accept))).unwrap();
    let added = c.added.expect("the key was just recorded");
    assert_eq!(added.label, label);
    assert!(added.added_notice().starts_with("permanently added daemon"));
    assert!(std::fs::read_to_string(&known).unwrap().starts_with(&label));

    // known now: nobody is asked again
    let c = daemon::connect(&host, port, &opts(answer(HostKeyDecision::Refuse))).unwrap();
    assert!(c.added.is_none());
    assert_eq!(asked.lock().unwrap().len(), 2);

    // the library's default has no one to ask: it refuses
    std::fs::remove_file(&known).unwrap();
    let strict = daemon::connect(&host, port, &opts(HostKeyPolicy::default()));
    assert!(strict.is_err());
    assert!(!known.exists());
}
