//! `ferry cp -v` in scp's spirit: how the remote is reached, as `debug1:`
//! lines on stderr (the ssh command line and ssh's own `-v` output, the
//! daemon connection's steps), and nothing on stdout.

mod util;
use util::*;

#[test]
fn cp_v_over_ssh_shows_the_ssh_command_on_stderr_only() {
    if !sshd_available() {
        return;
    }
    let sshd = Sshd::start();
    let t = tmp();
    write(&t.path().join("a.txt"), "alpha\n");
    let dest = t.path().join("out.txt");
    let mut args = vec!["cp".to_string(), "-v".into()];
    args.extend(sshd.args());
    args.extend([
        t.path().join("a.txt").display().to_string(),
        sshd.remote(&dest),
    ]);
    let o = ok(ferry(&args));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "alpha\n");
    assert_eq!(stdout(&o), "", "cp -v printed on stdout");
    let err = stderr(&o);
    let exec = err
        .lines()
        .find(|l| l.starts_with("debug1: Executing: program "))
        .unwrap_or_else(|| panic!("no Executing line: {err}"));
    assert!(exec.contains("serve --stdio"), "{exec}");
    assert!(exec.contains(" -v "), "ssh is given -v: {exec}");
    // ssh's own debug lines, as scp -v shows them
    assert!(
        err.lines().filter(|l| l.starts_with("debug1: ")).count() > 3,
        "{err}"
    );
    // without -v: nothing of it
    let mut quiet = vec!["cp".to_string()];
    quiet.extend(sshd.args());
    quiet.extend([
        t.path().join("a.txt").display().to_string(),
        sshd.remote(&t.path().join("out2.txt")),
    ]);
    let o = ok(ferry(&quiet));
    assert!(!stderr(&o).contains("debug1:"), "{}", stderr(&o));
}

#[test]
fn cp_v_to_a_daemon_shows_the_connection_steps() {
    let t = tmp();
    let module = t.path().join("m");
    std::fs::create_dir_all(&module).unwrap();
    write(&t.path().join("a.txt"), "alpha\n");
    let d = Daemon::start(&[("m", &module, false)], "", &[]);
    let mut args = vec!["cp".to_string(), "-v".into()];
    args.extend(d.client_args());
    args.extend([
        t.path().join("a.txt").display().to_string(),
        d.url("m/a.txt"),
    ]);
    let o = ok(ferry(&args));
    assert_eq!(
        std::fs::read_to_string(module.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(stdout(&o), "", "cp -v printed on stdout");
    let err = stderr(&o);
    for want in [
        "debug1: Connecting to ",
        "debug1: Connection established.",
        "debug1: TLS established; daemon host key: ",
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
}
