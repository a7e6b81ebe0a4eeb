//! The rest of the s17 README walk's findings, against the built binary as a
//! new user meets them: the daemon's start-up errors (item 21).

mod util;
use std::process::{Command, Stdio};
use util::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// `ferry serve` in a fresh config directory, expected to refuse to start.
fn serve_refused(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(ferry_bin());
    c.args(["serve", "--config-dir", &s(&dir.join("cfg"))])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if wait_for(&mut child, std::time::Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry serve {args:?} kept running");
    }
    child.wait_with_output().unwrap()
}

/// Item 21: a config file with a misspelt key says where, on one line,
/// without the parser's `|` source-excerpt art.
#[test]
fn a_toml_error_names_file_line_and_column_on_one_line() {
    let t = tmp();
    let cfg = t.path().join("u.toml");
    write(&cfg, "listen = [\"127.0.0.1:0\"]\nmax_conections = 3\n");
    let o = serve_refused(t.path(), &["--config", &s(&cfg)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}:2:1: unknown field `max_conections`", s(&cfg))),
        "{err}"
    );
    assert!(!err.contains(" | "), "{err}");
    assert!(!err.contains("TOML parse error"), "{err}");
}

/// Item 21: a module whose path does not exist says so.
#[test]
fn a_missing_module_path_does_not_exist() {
    let t = tmp();
    let gone = t.path().join("gone");
    let o = serve_refused(
        t.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--module",
            &format!("m={}", s(&gone)),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{} does not exist", s(&gone))),
        "{err}"
    );
    assert!(!err.contains("not a directory"), "{err}");
    // a file where a directory should be still says "not a directory"
    let file = t.path().join("file");
    write(&file, "x");
    let o = serve_refused(
        t.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--module",
            &format!("m={}", s(&file)),
        ],
    );
    assert!(stderr(&o).contains("is not a directory"), "{}", stderr(&o));
}

/// Item 21: with its port in use, `serve` fails before it makes a key or
/// logs a warning about authorized_keys.
#[test]
fn a_port_in_use_fails_before_a_key_is_made() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir(&module).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = serve_refused(
        t.path(),
        &["--listen", &addr, "--module", &format!("m={}", s(&module))],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(11), "{err}");
    assert!(err.contains(&format!("listen on {addr}")), "{err}");
    assert!(!err.contains("WARN"), "{err}");
    assert!(!err.contains("authorized_keys"), "{err}");
    assert!(!err.contains("generated"), "{err}");
    assert!(
        !t.path().join("cfg/id_ed25519").exists(),
        "a key was made by a daemon that could not start"
    );
}
