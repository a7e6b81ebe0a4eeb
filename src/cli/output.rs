//! What the user sees: changed names (`-v`), deletions, errors on stderr with
//! names escaped, per-file progress (`--progress`), and the closing statistics.
//! Nothing extra when output is not a terminal.

use crate::fs::names::escape;
use crate::transfer::{Event, EventKind, Outcome, Report};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

pub struct Printer {
    pub verbose: u8,
    pub quiet: bool,
    pub progress: bool,
    pub human: bool,
    pub dry_run: bool,
    tty: bool,
    /// stderr is a terminal: draw the overall progress bar there.
    bar: bool,
    state: Mutex<State>,
}

struct State {
    start: Instant,
    /// A progress line is on screen without its newline.
    open_line: bool,
    bytes_done: u64,
    file_done: u64,
    /// The last overall figures: (bytes done, bytes listed).
    overall: (u64, u64),
    /// The overall bar is drawn on stderr and must be cleared before other output.
    bar_visible: bool,
}

impl Printer {
    pub fn new(verbose: u8, quiet: bool, progress: bool, human: bool, dry_run: bool) -> Self {
        Printer {
            verbose,
            quiet,
            progress,
            human,
            dry_run,
            tty: std::io::stdout().is_terminal(),
            bar: std::io::stderr().is_terminal() && !quiet,
            state: Mutex::new(State {
                start: Instant::now(),
                open_line: false,
                bytes_done: 0,
                file_done: 0,
                overall: (0, 0),
                bar_visible: false,
            }),
        }
    }

    fn size(&self, n: u64) -> String {
        if !self.human {
            return n.to_string();
        }
        human(n)
    }

    pub fn event(&self, e: Event) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = std::io::stdout();
        let mut out = out.lock();
        let close_line = |st: &mut State, out: &mut std::io::StdoutLock| {
            if st.bar_visible {
                eprint!("\r\x1b[K");
                st.bar_visible = false;
            }
            if st.open_line {
                let _ = writeln!(out);
                st.open_line = false;
            }
        };
        match e.report() {
            Report::Updated { name, detail, .. } => {
                if self.verbose > 0 || (self.dry_run && !self.quiet) {
                    close_line(&mut st, &mut out);
                    let name = escape(&name);
                    if detail.is_empty() {
                        let _ = writeln!(out, "{name}");
                    } else {
                        let _ = writeln!(out, "{name} {}", escape(&detail));
                    }
                }
            }
            Report::Deleted { name, is_dir } => {
                if self.verbose > 0 || (self.dry_run && !self.quiet) {
                    close_line(&mut st, &mut out);
                    let slash = if is_dir { "/" } else { "" };
                    let _ = writeln!(out, "deleting {}{slash}", escape(&name));
                }
            }
            Report::Error { name, text } | Report::Notice { name, text } => {
                if e.kind == EventKind::Notice && self.quiet {
                    return;
                }
                close_line(&mut st, &mut out);
                let _ = out.flush();
                let text = String::from_utf8_lossy(&text);
                if name.is_empty() || text.contains(&escape(&name)) {
                    eprintln!("ferry: {text}");
                } else {
                    eprintln!("ferry: {}: {text}", escape(&name));
                }
            }
            Report::Overall { done, total } => {
                st.overall = (done, total);
                // with --progress on a terminal the file lines carry the total
                if !self.bar || (self.progress && self.tty) || total == 0 {
                    return;
                }
                let secs = st.start.elapsed().as_secs_f64().max(1e-3);
                let frac = (done as f64 / total as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                eprint!(
                    "\r\x1b[K[{}{}] {:>3}%  {}/{}  {}/s",
                    "#".repeat(filled),
                    "-".repeat(30 - filled),
                    (frac * 100.0) as u32,
                    human(done),
                    human(total),
                    human((done as f64 / secs) as u64)
                );
                st.bar_visible = true;
            }
            Report::Progress {
                name,
                done,
                size: total,
            } => {
                if !self.progress || self.quiet {
                    return;
                }
                if done < st.file_done {
                    st.file_done = 0;
                }
                st.bytes_done += done - st.file_done;
                st.file_done = if done >= total { 0 } else { done };
                let secs = st.start.elapsed().as_secs_f64().max(1e-3);
                let rate = st.bytes_done as f64 / secs;
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                let mut line = format!(
                    "{}  {:>3}%  {}  {}/s",
                    escape(&name),
                    pct,
                    self.size(done),
                    human(rate as u64)
                );
                if self.tty {
                    let (all_done, all) = st.overall;
                    if let Some(pct) = (all_done * 100).checked_div(all) {
                        line += &format!("  (total {pct}%)");
                    }
                    if st.bar_visible {
                        eprint!("\r\x1b[K");
                        st.bar_visible = false;
                    }
                    let _ = write!(out, "\r\x1b[K{line}");
                    st.open_line = true;
                    if done >= total {
                        let _ = writeln!(out);
                        st.open_line = false;
                    }
                } else if done >= total {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
        }
    }

    /// The closing lines: rsync's two-line summary with -v, the table with --stats.
    pub fn finish(&self, o: &Outcome, stats: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = std::io::stdout();
        let mut out = out.lock();
        if st.bar_visible {
            eprint!("\r\x1b[K");
            st.bar_visible = false;
        }
        if st.open_line {
            let _ = writeln!(out);
            st.open_line = false;
        }
        if self.quiet {
            return;
        }
        let s = &o.summary;
        let secs = st.start.elapsed().as_secs_f64().max(1e-3);
        if stats {
            let _ = writeln!(out);
            let _ = writeln!(out, "Number of files: {}", s.files);
            let _ = writeln!(out, "Number of files transferred: {}", s.transferred);
            let _ = writeln!(out, "Number of deleted files: {}", s.deleted);
            let _ = writeln!(out, "Total file size: {} bytes", self.size(s.total_size));
            let _ = writeln!(out, "Literal data: {} bytes", self.size(s.literal));
            let _ = writeln!(out, "Matched data: {} bytes", self.size(s.reused));
            let _ = writeln!(out, "Total bytes sent: {}", self.size(o.sent));
            let _ = writeln!(out, "Total bytes received: {}", self.size(o.received));
        }
        if stats || self.verbose > 0 {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "sent {} bytes  received {} bytes  {} bytes/sec",
                self.size(o.sent),
                self.size(o.received),
                self.size(((o.sent + o.received) as f64 / secs) as u64)
            );
            let wire = (o.sent + o.received).max(1);
            let _ = writeln!(
                out,
                "total size is {}  speedup is {:.2}{}",
                self.size(s.total_size),
                s.total_size as f64 / wire as f64,
                if self.dry_run { " (DRY RUN)" } else { "" }
            );
        }
        if s.delete_skipped {
            eprintln!("ferry: deletion was skipped because the sender had I/O errors");
        }
    }
}

/// 1234567 → "1.23M" (powers of 1000, as rsync -h prints).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1000 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1000.0;
        unit = u;
        if v < 1000.0 {
            break;
        }
    }
    format!("{v:.2}{unit}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(999), "999");
        assert_eq!(super::human(1234567), "1.23M");
        assert_eq!(super::human(5_000_000_000), "5.00G");
    }
}
