//! Questions the command line asks a person on the terminal: today, whether to
//! trust a daemon whose key is not yet known (the `ask` host-key policy).
//!
//! Not for the library: [`crate::transport::daemon`] only calls the policy it
//! is given, so a daemon job or a test answers the same question its own way.

use crate::trust::known_hosts::HostKeyCheck;
use crate::trust::{HostKeyDecision, HostKeyPolicy, UnknownHost};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

/// The policy for `--host-key-check`: as given, and without it ask when
/// stdin is a terminal, refuse otherwise (as ssh does in batch mode).
pub fn host_key_policy(check: Option<HostKeyCheck>) -> HostKeyPolicy {
    let check = check.unwrap_or(if std::io::stdin().is_terminal() {
        HostKeyCheck::Ask
    } else {
        HostKeyCheck::Strict
    });
    match check {
        HostKeyCheck::Strict => HostKeyPolicy::Strict,
        HostKeyCheck::AcceptNew => HostKeyPolicy::AcceptNew,
        HostKeyCheck::Ask => HostKeyPolicy::Ask(Arc::new(ask_on_terminal)),
    }
}

/// Asks on `/dev/tty` whether to trust `host`; no terminal means no.
fn ask_on_terminal(host: &UnknownHost) -> HostKeyDecision {
    let question = format!(
        "The authenticity of daemon '{}' can't be established.\n\
         ED25519 key fingerprint is {}.\n\
         Are you sure you want to continue connecting (yes/no)? ",
        host.label, host.fingerprint
    );
    if ask(&question) {
        HostKeyDecision::Accept
    } else {
        HostKeyDecision::Refuse
    }
}

/// Writes `question` to the terminal and reads a line: true for "yes".
fn ask(question: &str) -> bool {
    let Ok(mut tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let _ = write!(tty, "{question}");
    let mut line = String::new();
    let _ = std::io::BufReader::new(&tty).read_line(&mut line);
    line.trim().eq_ignore_ascii_case("yes")
}
