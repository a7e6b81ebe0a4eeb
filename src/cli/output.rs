//! What the user sees: changed names (`-v`), deletions, errors on stderr with
//! names escaped, per-file progress (`--progress`), and the closing statistics.
//! Nothing extra when output is not a terminal. rsync's itemized lines,
//! `--out-format` and `--log-file` are printed here through
//! [`super::itemize`], as are `--info=progress2` and `--info=stats2`.

use super::itemize::{self, Direction, LogFile, OutFormat};
use crate::fs::names::escape;
use crate::proto::item::Item;
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
    /// `-i`, `--out-format`, `--log-file`: rsync's per-entry lines.
    lines: Option<Lines>,
    /// `--info=progress2`: one line of whole-transfer progress.
    pub progress2: bool,
    /// `--info=stats2`: `--stats` and rsync's extra lines.
    pub stats2: bool,
    /// The source is remote: `-v` says `receiving incremental file list`
    /// (else `sending`), as rsync's client does.
    pub pull: bool,
    /// The destination as the command line names it, for rsync's
    /// `created directory DEST` when this run makes it (`-v`, `-i`).
    pub dest_shown: Option<String>,
    state: Mutex<State>,
}

/// rsync's per-entry lines: where they go and in what format.
pub struct Lines {
    pub direction: Direction,
    /// On stdout (`-i` is `%i %n%L`; `--out-format`).
    pub stdout: Option<OutFormat>,
    /// `--log-file`, in `--log-file-format` (rsync's default `%i %n%L`).
    pub log: Option<(LogFile, OutFormat)>,
}

/// What `--info=stats2` counts from the itemized entries.
#[derive(Default)]
struct Counts {
    created: u64,
    created_dirs: u64,
    created_links: u64,
    regular_sent: u64,
    sent_size: u64,
    /// Entries deleted, every entry of a deleted directory included.
    deleted: u64,
    deleted_dirs: u64,
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
    counts: Counts,
    /// The log file, once taken out of [`Lines`].
    log: Option<(LogFile, OutFormat)>,
    /// A `--info=progress2` line is on screen without its newline.
    progress2_open: bool,
    /// `-v`'s first line is out.
    header_done: bool,
    /// `created directory DEST` is out.
    made_dest_done: bool,
    /// The file whose finished `--progress` line named it last: `-v` does
    /// not name it a second time.
    progress_named: Option<Vec<u8>>,
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
            lines: None,
            progress2: false,
            stats2: false,
            pull: false,
            dest_shown: None,
            state: Mutex::new(State {
                start: Instant::now(),
                open_line: false,
                bytes_done: 0,
                file_done: 0,
                overall: (0, 0),
                bar_visible: false,
                counts: Counts::default(),
                log: None,
                progress2_open: false,
                header_done: false,
                made_dest_done: false,
                progress_named: None,
            }),
        }
    }

    /// Prints rsync's per-entry lines as `lines` says.
    pub fn with_lines(mut self, mut lines: Lines) -> Self {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        st.log = lines.log.take();
        if let Some((log, fmt)) = &mut st.log {
            // rsync's first line in its log, on the side that lists files
            log.line(match fmt.side() {
                itemize::Side::Receiver => "receiving file list",
                _ => "building file list",
            });
        }
        self.lines = Some(lines);
        self
    }

    /// The line of an itemized, updated or deleted entry; `bool`: it was
    /// created or updated (not its attributes alone).
    fn entry_line(&self, r: &Report, st: &mut State, out: &mut std::io::StdoutLock) -> bool {
        match r {
            Report::Itemized { size, item, .. } => {
                if item.has(Item::SENT) && !item.has(Item::DIR | Item::SYMLINK) {
                    st.counts.regular_sent += 1;
                    st.counts.sent_size += size;
                }
                if item.has(Item::NEW) {
                    st.counts.created += 1;
                    st.counts.created_dirs += item.has(Item::DIR) as u64;
                    st.counts.created_links += item.has(Item::SYMLINK) as u64;
                }
            }
            // (from a run that does not itemize: a file sent is one
            // without a trailing `/` or a link's detail)
            Report::Updated { name, size, detail }
                if !name.ends_with(b"/") && detail.is_empty() =>
            {
                st.counts.regular_sent += 1;
                st.counts.sent_size += size;
            }
            Report::Deleted { is_dir, .. } => {
                st.counts.deleted += 1;
                st.counts.deleted_dirs += *is_dir as u64;
            }
            _ => {}
        }
        let Some(lines) = &self.lines else {
            return false;
        };
        let (line, updated) = match r {
            Report::Itemized {
                name,
                size,
                item,
                wire,
                mtime,
                detail,
                ..
            } => {
                let l = itemize::Line {
                    name,
                    item: *item,
                    deleted: false,
                    size: *size,
                    wire: *wire,
                    mtime: *mtime,
                    detail,
                };
                (l, item.has(Item::UPDATED))
            }
            // from a peer that does not itemize: what its event says
            Report::Updated { name, size, detail } => {
                let kind = if name.ends_with(b"/") {
                    Item::DIR | Item::NEW
                } else if detail.starts_with(b"-> ") {
                    Item::SYMLINK | Item::NEW
                } else if detail.starts_with(b"=> ") {
                    Item::HARDLINK
                } else {
                    Item::SENT
                };
                let l = itemize::Line {
                    name,
                    item: Item(kind | Item::UPDATED),
                    deleted: false,
                    size: *size,
                    wire: 0,
                    mtime: 0,
                    detail,
                };
                (l, true)
            }
            Report::Deleted { name, is_dir } => {
                let mut shown = name.clone();
                if *is_dir && !shown.ends_with(b"/") {
                    shown.push(b'/');
                }
                let l = itemize::Line {
                    name: &shown,
                    item: Item(0),
                    deleted: true,
                    size: 0,
                    wire: 0,
                    mtime: 0,
                    detail: b"",
                };
                return self.print_line(lines, &l, true, st, out);
            }
            _ => return false,
        };
        self.print_line(lines, &line, updated, st, out)
    }

    /// Writes one entry's line to stdout and the log; `true` when stdout
    /// takes rsync's lines (and `-v`'s are not printed).
    fn print_line(
        &self,
        lines: &Lines,
        l: &itemize::Line,
        updated: bool,
        st: &mut State,
        out: &mut std::io::StdoutLock,
    ) -> bool {
        let now = itemize::now();
        if let Some((log, fmt)) = &mut st.log {
            if updated || fmt.itemizes() {
                log.line(&fmt.render(l, lines.direction, now));
            }
        }
        let Some(fmt) = &lines.stdout else {
            return false;
        };
        if !self.quiet && (updated || fmt.itemizes()) {
            if st.bar_visible {
                eprint!("\r\x1b[K");
                st.bar_visible = false;
            }
            if st.open_line || st.progress2_open {
                let _ = writeln!(out);
                st.open_line = false;
                st.progress2_open = false;
            }
            if l.deleted && !fmt.shows_deletions() {
                // rsync's line for a deletion in a format without %i or %o
                let _ = writeln!(out, "deleting {}", escape(l.name));
            } else {
                let _ = writeln!(out, "{}", fmt.render(l, lines.direction, now));
            }
        }
        true
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
        self.header(&mut st, &mut out);
        let report = e.report();
        if let Report::Itemized { name, item, .. } = &report {
            if name == b"./" && item.has(Item::NEW) {
                self.created_dest(&mut st, &mut out);
            }
        }
        if self.entry_line(&report, &mut st, &mut out) {
            return;
        }
        let report = match report {
            Report::Itemized {
                name,
                size,
                item,
                detail,
                ..
            } if item.has(Item::UPDATED) => Report::Updated { name, size, detail },
            // -v names a directory made or whose attributes change, as rsync
            Report::Itemized {
                name,
                size,
                item,
                detail,
                ..
            } if item.has(Item::DIR)
                && item.0 & (Item::NEW | Item::TIME | Item::PERMS | Item::OWNER | Item::GROUP)
                    != 0 =>
            {
                Report::Updated { name, size, detail }
            }
            Report::Itemized { .. } => return,
            r => r,
        };
        match report {
            Report::Itemized { .. } => {}
            Report::Updated { name, detail, .. } => {
                let named = st.progress_named.take();
                if detail.is_empty() && named.as_deref() == Some(&name[..]) {
                    // its --progress line named it already
                    return;
                }
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
                if self.progress2 && !self.quiet {
                    let secs = st.start.elapsed().as_secs_f64().max(1e-3);
                    let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
                    let rate = done as f64 / secs;
                    // rsync's shape: the time left while it runs
                    let left = match rate > 0.0 {
                        true => total.saturating_sub(done) as f64 / rate,
                        false => 0.0,
                    };
                    let _ = write!(
                        out,
                        "\r{:>15} {:>3}% {} {}  ",
                        self.size(done),
                        pct,
                        rate_kb(rate),
                        clock(left)
                    );
                    let _ = out.flush();
                    st.progress2_open = true;
                    return;
                }
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
                if done >= total {
                    st.progress_named = Some(name.to_vec());
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
        self.header(&mut st, &mut out);
        if st.bar_visible {
            eprint!("\r\x1b[K");
            st.bar_visible = false;
        }
        if st.open_line {
            let _ = writeln!(out);
            st.open_line = false;
        }
        let s = &o.summary;
        let secs = st.start.elapsed().as_secs_f64().max(1e-3);
        if self.progress2 && !self.quiet {
            // the last line says where the whole transfer ended, with
            // rsync's count of files sent and of those left to check
            let _ = writeln!(
                out,
                "\r{:>15} 100% {} {} (xfr#{}, to-chk=0/{})",
                self.size(s.total_size),
                rate_kb(s.total_size as f64 / secs),
                clock(secs),
                st.counts.regular_sent,
                s.files
            );
            st.progress2_open = false;
        }
        if let Some((log, _)) = &mut st.log {
            log.line(&format!(
                "sent {} bytes  received {} bytes  total size {}",
                o.sent, o.received, s.total_size
            ));
        }
        if self.quiet {
            return;
        }
        let stats = stats || self.stats2;
        if stats {
            let _ = writeln!(out);
            let _ = writeln!(out, "Number of files: {}", s.files);
            let _ = writeln!(out, "Number of files transferred: {}", s.transferred);
            if self.stats2 {
                let c = &st.counts;
                let reg = c.created - (c.created_dirs + c.created_links).min(c.created);
                let _ = writeln!(
                    out,
                    "Number of created files: {}",
                    counted(
                        c.created,
                        &[
                            ("reg", reg),
                            ("dir", c.created_dirs),
                            ("link", c.created_links)
                        ]
                    )
                );
                // (itemizing, every entry of a deleted directory is counted,
                // as rsync counts them)
                let _ = writeln!(
                    out,
                    "Number of deleted files: {}",
                    counted(
                        c.deleted,
                        &[("reg", c.deleted - c.deleted_dirs), ("dir", c.deleted_dirs)]
                    )
                );
                let _ = writeln!(
                    out,
                    "Number of regular files transferred: {}",
                    c.regular_sent
                );
            } else {
                let _ = writeln!(out, "Number of deleted files: {}", s.deleted);
            }
            let _ = writeln!(out, "Total file size: {} bytes", self.size(s.total_size));
            if self.stats2 {
                let _ = writeln!(
                    out,
                    "Total transferred file size: {} bytes",
                    self.size(st.counts.sent_size)
                );
            }
            let _ = writeln!(out, "Literal data: {} bytes", self.size(s.literal));
            let _ = writeln!(out, "Matched data: {} bytes", self.size(s.reused));
            let _ = writeln!(out, "Total bytes sent: {}", self.size(o.sent));
            let _ = writeln!(out, "Total bytes received: {}", self.size(o.received));
        }
        if stats || self.verbose > 0 {
            let _ = writeln!(out);
            let rate = (o.sent + o.received) as f64 / secs;
            let _ = writeln!(
                out,
                "sent {} bytes  received {} bytes  {} bytes/sec",
                self.size(o.sent),
                self.size(o.received),
                // rsync --no-human-readable's two decimals
                match self.human {
                    true => human(rate as u64),
                    false => format!("{rate:.2}"),
                }
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

impl Printer {
    /// `-v`'s first line, once, before anything else on stdout.
    fn header(&self, st: &mut State, out: &mut std::io::StdoutLock) {
        if st.header_done {
            return;
        }
        st.header_done = true;
        if self.verbose > 0 && !self.quiet {
            let way = if self.pull { "receiving" } else { "sending" };
            let _ = writeln!(out, "{way} incremental file list");
        }
    }
}

impl Printer {
    /// rsync's `created directory DEST`, before the new destination's `./`.
    fn created_dest(&self, st: &mut State, out: &mut std::io::StdoutLock) {
        let itemizing = self
            .lines
            .as_ref()
            .and_then(|l| l.stdout.as_ref())
            .is_some_and(|f| f.itemizes());
        if st.made_dest_done || self.quiet || !(self.verbose > 0 || itemizing) {
            return;
        }
        st.made_dest_done = true;
        if let Some(dest) = &self.dest_shown {
            let _ = writeln!(out, "created directory {dest}");
        }
    }
}

/// rsync's `7 (reg: 2, dir: 3, link: 2)`: a count and its nonzero parts.
fn counted(total: u64, parts: &[(&str, u64)]) -> String {
    let shown: Vec<String> = parts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(label, n)| format!("{label}: {n}"))
        .collect();
    if total == 0 || shown.is_empty() {
        return total.to_string();
    }
    format!("{total} ({})", shown.join(", "))
}

/// `   0:01:05`: hours (width 4), minutes, seconds, as rsync's progress
/// shows a time.
fn clock(secs: f64) -> String {
    if !(0.0..=9999.0 * 3600.0).contains(&secs) {
        return "  ??:??:??".into();
    }
    let s = secs as u64;
    format!("{:>4}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `  47.69MB/s`: a rate in rsync's progress units (powers of 1024).
fn rate_kb(bytes_per_sec: f64) -> String {
    let mut rate = bytes_per_sec / 1024.0;
    let units = if rate > 1024.0 * 1024.0 {
        rate /= 1024.0 * 1024.0;
        "GB/s"
    } else if rate > 1024.0 {
        rate /= 1024.0;
        "MB/s"
    } else {
        "kB/s"
    };
    format!("{rate:>7.2}{units}")
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
