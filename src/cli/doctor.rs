//! `ferry doctor`: runs the checks and prints the report, as text (marks and
//! colour chosen for the terminal) or as JSON. The checks are `crate::doctor`'s.

use super::args::DoctorArgs;
use super::exit;
use super::stdout::{out, outln};
use crate::doctor::{self, render, Options, Target};
use crate::error::TransferError;
use std::io::IsTerminal;

/// Whether the locale says UTF-8 (LC_ALL, then LC_CTYPE, then LANG).
fn utf8_locale() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .map(|s| {
            let s = s.to_ascii_lowercase();
            s.contains("utf-8") || s.contains("utf8")
        })
        .unwrap_or(false)
}

/// The exit code when a check failed.
const PROBLEMS: i32 = 1;

pub fn run(a: DoctorArgs) -> Result<i32, TransferError> {
    let target = Target::parse(&a.target).map_err(TransferError::Usage)?;
    let opts = Options {
        identity: a.identity.clone(),
        known_hosts: a.known_hosts.clone(),
        config_dir: a.config_dir.clone(),
        rsh: a.rsh.clone(),
        remote_ferry: a.remote_ferry.clone(),
        daemon_port: a.daemon_port,
        speed: a.speed,
    };
    let report = doctor::run(&a.target, &target, &opts);
    if a.json {
        outln!("{}", render::json(&report));
    } else {
        let tty = std::io::stdout().is_terminal();
        let style = render::Style {
            utf8: utf8_locale(),
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        };
        out!("{}", render::text(&report, style));
    }
    Ok(if report.problems() == 0 {
        exit::OK
    } else {
        PROBLEMS
    })
}
