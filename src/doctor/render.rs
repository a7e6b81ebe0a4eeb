//! A doctor [`Report`] as a person reads it (one line a check, `✓`/`✗` on a
//! UTF-8 terminal and ASCII otherwise, colour only when asked) or as one
//! JSON object for scripts. Not for deciding anything: the checks did that.

use super::{ms_text, Report, Status};
use std::fmt::Write;

/// How text output may look.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// `✓ ✗ ! –` and arrows; ASCII otherwise.
    pub utf8: bool,
    /// ANSI colour on the status marks.
    pub color: bool,
}

fn mark(status: Status, s: Style) -> (&'static str, &'static str) {
    let (u, a, colour) = match status {
        Status::Ok => ("✓", "ok", "\x1b[32m"),
        Status::Warn => ("!", "!!", "\x1b[33m"),
        Status::Fail => ("✗", "XX", "\x1b[31m"),
        Status::Skip => ("–", "--", "\x1b[2m"),
    };
    (if s.utf8 { u } else { a }, colour)
}

/// The report as text, a check a line, with evidence and fix beneath.
pub fn text(r: &Report, s: Style) -> String {
    let mut out = String::new();
    let (bullet, arrow) = if s.utf8 { ("•", "→") } else { ("*", "->") };
    for c in &r.checks {
        let (m, colour) = mark(c.status, s);
        let m = if s.color {
            format!("{colour}[{m}]\x1b[0m")
        } else {
            format!("[{m}]")
        };
        let mut summary = c.summary.clone();
        if !s.utf8 {
            summary = summary.replace('→', "->").replace('–', "-");
        }
        let ms = c.ms.map(ms_text).unwrap_or_default();
        let line = format!("{m} {:<12} {summary}", c.title);
        let _ = if ms.is_empty() || c.status == Status::Skip {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{line}  ({ms})")
        };
        let show_details = c.status != Status::Ok && c.status != Status::Skip;
        if show_details {
            for e in c.evidence.iter().filter(|e| !e.is_empty()) {
                let _ = writeln!(out, "    {bullet} {e}");
            }
        }
        if show_details {
            if let Some(f) = &c.fix {
                let _ = writeln!(out, "    {arrow} {f}");
            }
        }
    }
    let problems = r.problems();
    let warnings = r.checks.iter().filter(|c| c.status == Status::Warn).count();
    let _ = match (problems, warnings) {
        (0, 0) => writeln!(out, "{} no problems found", mark(Status::Ok, s).0),
        (0, w) => writeln!(
            out,
            "! no problems found, {w} warning{}",
            if w == 1 { "" } else { "s" }
        ),
        (p, _) => writeln!(out, "! {p} problem{} found", if p == 1 { "" } else { "s" }),
    };
    out
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The report as one JSON object:
/// `{target, kind, host, port, addresses[], checks[{id, title, status,
/// class, ms, summary, evidence[], fix}], problems}`.
pub fn json(r: &Report) -> String {
    let mut o = String::from("{");
    let _ = write!(
        o,
        "\"target\":{},\"kind\":{},\"host\":{},\"port\":{},\"addresses\":[{}],\"checks\":[",
        esc(&r.target),
        esc(r.kind),
        esc(&r.host),
        r.port,
        r.addresses
            .iter()
            .map(|a| esc(a))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (i, c) in r.checks.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let ms =
            c.ms.map(|m| format!("{:.3}", m))
                .unwrap_or_else(|| "null".into());
        let _ = write!(
            o,
            "{{\"id\":{},\"title\":{},\"status\":{},\"class\":{},\"ms\":{ms},\"summary\":{},\"evidence\":[{}],\"fix\":{}}}",
            esc(c.id),
            esc(&c.title),
            esc(c.status.name()),
            esc(c.class),
            esc(&c.summary),
            c.evidence.iter().map(|e| esc(e)).collect::<Vec<_>>().join(","),
            c.fix.as_deref().map(esc).unwrap_or_else(|| "null".into())
        );
    }
    let _ = write!(o, "],\"problems\":{}}}", r.problems());
    o
}
