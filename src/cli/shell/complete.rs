//! Tab completion for `ferry shell`: command names, local paths (for `lcd`
//! and the local side of `put` and `get`, through rustyline's filename
//! completer) and remote paths (the rest), from directory listings cached
//! for a few seconds. A listing not in the cache is read on a thread of its
//! own and waited for at most [`LIST_WAIT`]: on a slow link the prompt
//! comes back without candidates rather than freezing, and the listing,
//! once it lands, serves the next Tab.
//!
//! Not for running commands (that is the shell) nor for reading the remote
//! (the backend, [`super::remote`]).

use super::remote::Remote;
use crate::proto::shell::Kind;
use crate::sftp::destination::join_path;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::Context;
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a Tab waits for a remote listing.
pub const LIST_WAIT: Duration = Duration::from_millis(1500);

/// How long a listing is trusted (commands that change the remote clear
/// them all).
const FRESH_FOR: Duration = Duration::from_secs(10);

/// The shell's commands, for completing the first word.
const COMMANDS: [&str; 21] = [
    "bye", "cd", "chmod", "df", "dir", "exit", "get", "help", "lcd", "lpwd", "ls", "mkdir",
    "progress", "put", "pwd", "quit", "reget", "rename", "reput", "rm", "rmdir",
];

/// A directory's names, each with whether it is a directory.
type Names = Vec<(Vec<u8>, bool)>;

enum Listing {
    Ready(Instant, Names),
    /// Being read; the waiters' channels.
    Reading(Vec<mpsc::Sender<Names>>),
}

/// Remote directory listings, cached.
#[derive(Clone)]
pub struct RemoteNames {
    remote: Arc<dyn Remote>,
    /// The remote working directory, as the shell keeps it.
    pub cwd: Arc<Mutex<Vec<u8>>>,
    cache: Arc<Mutex<HashMap<Vec<u8>, Listing>>>,
}

impl RemoteNames {
    pub fn new(remote: Arc<dyn Remote>, cwd: Vec<u8>) -> RemoteNames {
        RemoteNames {
            remote,
            cwd: Arc::new(Mutex::new(cwd)),
            cache: Default::default(),
        }
    }

    /// Forgets every listing (after a command that may change the remote).
    pub fn forget(&self) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|_, l| matches!(l, Listing::Reading(_)));
    }

    /// The names in `dir`, waiting at most `wait` for a listing not cached.
    pub fn names(&self, dir: &[u8], wait: Duration) -> Option<Names> {
        let (tx, rx) = mpsc::channel();
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match c.get_mut(dir) {
                Some(Listing::Ready(at, names)) if at.elapsed() < FRESH_FOR => {
                    return Some(names.clone())
                }
                Some(Listing::Reading(waiters)) => waiters.push(tx),
                _ => {
                    c.insert(dir.to_vec(), Listing::Reading(vec![tx]));
                    let me = self.clone();
                    let dir = dir.to_vec();
                    std::thread::spawn(move || me.read(dir));
                }
            }
        }
        rx.recv_timeout(wait).ok()
    }

    fn read(&self, dir: Vec<u8>) {
        let names: Names = self
            .remote
            .read_dir(&dir)
            .map(|l| {
                l.into_iter()
                    .map(|(n, a)| (n, a.kind == Kind::Dir))
                    .collect()
            })
            .unwrap_or_default();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Listing::Reading(waiters)) =
            c.insert(dir, Listing::Ready(Instant::now(), names.clone()))
        {
            for w in waiters {
                let _ = w.send(names.clone());
            }
        }
    }

    /// Candidates for the remote path `word`.
    fn complete(&self, word: &str, wait: Duration) -> Vec<Pair> {
        let (dir_part, start) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let dir = {
            let cwd = self.cwd.lock().unwrap_or_else(|p| p.into_inner());
            let d = crate::sftp::remote_path(dir_part.as_bytes());
            if d.starts_with(b"/") {
                d
            } else {
                join_path(&cwd, &d)
            }
        };
        let Some(names) = self.names(&dir, wait) else {
            return Vec::new();
        };
        let mut out: Vec<Pair> = names
            .into_iter()
            .filter_map(|(n, is_dir)| {
                let n = String::from_utf8(n).ok()?;
                if !n.starts_with(start) || (n.starts_with('.') && !start.starts_with('.')) {
                    return None;
                }
                let slash = if is_dir { "/" } else { "" };
                Some(Pair {
                    display: format!("{n}{slash}"),
                    replacement: format!("{}{}{slash}", escape_word(dir_part), escape_word(&n)),
                })
            })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out
    }
}

/// A word as the shell's parser reads it back: spaces, quotes and
/// backslashes escaped with a backslash.
fn escape_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || "\\'\"$`*?[]#;&|<>()".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What the word under the cursor names.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Local,
    Remote,
}

/// The slot of the `n`th operand (flags not counted) of `cmd`.
fn slot(cmd: &str, n: usize) -> Slot {
    match (cmd, n) {
        ("lcd", _) => Slot::Local,
        ("put" | "reput", 0) => Slot::Local,
        ("get" | "reget", 1) => Slot::Local,
        _ => Slot::Remote,
    }
}

/// rustyline's helper for the shell's prompt.
pub struct ShellHelper {
    files: FilenameCompleter,
    pub remote: RemoteNames,
}

impl ShellHelper {
    pub fn new(remote: RemoteNames) -> ShellHelper {
        ShellHelper {
            files: FilenameCompleter::new(),
            remote,
        }
    }

    fn candidates(&self, line: &str, pos: usize, ctx: &Context<'_>) -> (usize, Vec<Pair>) {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|&(i, c)| c == ' ' && !before[..i].ends_with('\\'))
            .map(|(i, _)| i + 1)
            .unwrap_or(0);
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let word = &before[start..];
        let Some((cmd, args)) = words.split_first() else {
            let cmds = COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| Pair {
                    display: c.to_string(),
                    replacement: format!("{c} "),
                })
                .collect();
            return (start, cmds);
        };
        let cmd = cmd.trim_start_matches(['-', '@']);
        let operand = args.iter().filter(|a| !a.starts_with('-')).count();
        match slot(cmd, operand) {
            Slot::Local => self
                .files
                .complete(line, pos, ctx)
                .unwrap_or((start, Vec::new())),
            Slot::Remote => (start, self.remote.complete(word, LIST_WAIT)),
        }
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.candidates(line, pos, ctx))
    }
}

impl rustyline::hint::Hinter for ShellHelper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for ShellHelper {}
impl rustyline::validate::Validator for ShellHelper {}
impl rustyline::Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_are_local_or_remote_as_sftp_takes_them() {
        assert_eq!(slot("put", 0), Slot::Local);
        assert_eq!(slot("put", 1), Slot::Remote);
        assert_eq!(slot("get", 0), Slot::Remote);
        assert_eq!(slot("get", 1), Slot::Local);
        assert_eq!(slot("lcd", 0), Slot::Local);
        assert_eq!(slot("rm", 3), Slot::Remote);
    }

    #[test]
    fn completed_names_read_back_as_one_word() {
        let w = escape_word("a b'$(x)");
        assert_eq!(shell_words::split(&w).unwrap(), ["a b'$(x)"]);
    }
}
