//! Taking in the file list, sans-IO: what the client asked for, how list
//! names map to paths under the destination, the checks every entry passes
//! (names, order, duplicates, hard links) and the look-ahead window the
//! sender lists within (`ListAck`). A plain struct driven by method calls,
//! like `quinn-proto`: no files, threads, clocks or channels; the receiver
//! feeds it each entry and acts on what it returns. Not for acting on an
//! entry: that is [`super::generator`].
//!
//! # Security
//! Every name is untrusted: [`ListIntake::accept`] refuses it (with a
//! [`Violation`] whose text names it, escaped) unless it passes
//! [`crate::fs::names::check`], lies under what a pull asked for, comes after
//! its directory, is listed once, and stays within [`LIST_AHEAD`] entries of
//! the last acknowledgement, before the receiver holds any of it.

use super::Violation;
use crate::fs::names::{self, escape, split_parent};
use crate::proto::{Entry, Kind, LIST_AHEAD};
use crate::session::listing::Names;
use std::collections::HashSet;

/// How list names map to paths under the destination handle.
pub(super) enum Mapping {
    /// Names as they are.
    Under,
    /// The single file is written as this name (the destination named a file).
    FileAs(Vec<u8>),
    /// scp semantics: the single directory becomes the destination itself.
    StripTop(Vec<u8>),
}

/// The top-level names a pull asked for: what a pulling client (and the
/// relay, on behalf of a destination that cannot know) lets the sender
/// answer with. Without this check a source could answer `host1:data` with
/// `.ssh/...` and have it written into the destination directory.
pub struct Requested {
    any: bool,
    tops: HashSet<Vec<u8>>,
}

impl Requested {
    /// What the paths a pull asked for allow: a path ending in `/` (or `.`,
    /// `..`, nothing) its contents, under any name; any other its last
    /// component.
    pub fn new(paths: &[Vec<u8>]) -> Self {
        let mut r = Requested {
            any: false,
            tops: HashSet::new(),
        };
        for p in paths {
            let trimmed = p.strip_suffix(b"/").unwrap_or(p);
            let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
            if p.ends_with(b"/") || base == b"." || base == b".." || base.is_empty() {
                r.any = true;
            } else {
                r.tops.insert(base.to_vec());
            }
        }
        r
    }

    /// Any name at all (the checks are left to the destination).
    pub fn anything() -> Self {
        Requested {
            any: true,
            tops: HashSet::new(),
        }
    }

    /// Whether a list entry named `name` lies under what was asked for: the
    /// root entry, or a name whose first component was asked for.
    pub fn allows(&self, name: &[u8]) -> bool {
        let top = name.split(|&b| b == b'/').next().unwrap_or(name);
        self.any || name == b"." || self.tops.contains(top)
    }
}

/// An entry taken in: its index in the list and its path under the
/// destination.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Accepted {
    pub(super) index: u32,
    pub(super) rel: Vec<u8>,
}

/// The rules of the file list as it arrives.
pub(super) struct ListIntake {
    /// On a client that pulls: what it asked for.
    requested: Option<Requested>,
    recursive: bool,
    mapping: Mapping,
    /// Every path taken in, under the destination (`--delete` keeps these).
    rel_names: Names,
    /// Directories listed so far, by list name: an entry must follow its own.
    list_dirs: HashSet<Vec<u8>>,
    /// Entries taken in so far.
    count: u32,
    /// Entries taken in as last told to the sender with `ListAck`.
    acked: u32,
    done: bool,
    /// The sender marks the first file of each group of hard links (an entry
    /// linked to itself, [`crate::proto::Options::link_marks`]).
    link_marks: bool,
}

impl ListIntake {
    pub(super) fn new(requested: Option<&[Vec<u8>]>, recursive: bool) -> Self {
        ListIntake {
            requested: requested.map(Requested::new),
            recursive,
            mapping: Mapping::Under,
            rel_names: Names::default(),
            list_dirs: HashSet::new(),
            count: 0,
            acked: 0,
            done: false,
            link_marks: false,
        }
    }

    /// Takes an entry linked to itself as the first of a group of hard links
    /// (the sender was told to mark them).
    pub(super) fn expect_link_marks(&mut self) {
        self.link_marks = true;
    }

    /// How names map from here on (set once the destination is opened).
    pub(super) fn set_mapping(&mut self, mapping: Mapping) {
        self.mapping = mapping;
    }

    /// Whether entries are told by their path under the destination rather
    /// than their listed name: when the one directory sent became the
    /// destination itself (`cp -r src new`), as rsync names `src/ new/`'s
    /// items (`./`, `a.txt`); nothing named `src` is there. A single file
    /// written under another name keeps its own, as rsync shows it.
    pub(super) fn names_by_destination(&self) -> bool {
        matches!(self.mapping, Mapping::StripTop(_))
    }

    /// Whether an entry may still come (checked before the first one opens
    /// the destination).
    pub(super) fn before_entry(&self) -> Result<(), Violation> {
        if self.done {
            return Err(Violation("sent an entry after the end of the list".into()));
        }
        Ok(())
    }

    /// Takes in the next entry, or says what is wrong with it.
    /// `is_earlier_file(j)`: whether entry `j` is a regular file taken in
    /// before that a hard link may name (with marks: the first of a group).
    /// An entry linked to itself is the first of a group, with marks only.
    pub(super) fn accept(
        &mut self,
        e: &Entry,
        is_earlier_file: impl Fn(u32) -> bool,
    ) -> Result<Accepted, Violation> {
        self.before_entry()?;
        if self.count as u64 >= self.acked as u64 + LIST_AHEAD as u64 {
            return Err(Violation(format!(
                "listed more than {LIST_AHEAD} entries beyond those acknowledged"
            )));
        }
        self.check_entry(e, is_earlier_file)?;
        let rel = self.map_name(&e.name)?;
        if !self.rel_names.insert(&rel) {
            return Err(Violation(format!("listed {} twice", escape(&e.name))));
        }
        if e.kind == Kind::Dir {
            self.list_dirs.insert(e.name.clone());
        }
        let index = self.count;
        self.count += 1;
        Ok(Accepted { index, rel })
    }

    /// The end of the list.
    pub(super) fn end(&mut self) -> Result<(), Violation> {
        if self.done {
            return Err(Violation("ended the file list twice".into()));
        }
        self.done = true;
        Ok(())
    }

    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// Whether `rel` was listed.
    pub(super) fn is_listed(&self, rel: &[u8]) -> bool {
        self.rel_names.contains(rel)
    }

    /// The receiver has settled the entries below `taken`: once that moved a
    /// quarter of [`LIST_AHEAD`] past the last acknowledgement (the sender
    /// lists at most that far beyond), it is the new one, returned so that
    /// entries below it can go and the sender hear of it (unless the list has
    /// ended).
    pub(super) fn ack(&mut self, taken: u32) -> Option<u32> {
        if taken < self.acked.saturating_add(LIST_AHEAD / 4) {
            return None;
        }
        self.acked = taken;
        Some(taken)
    }

    fn map_name(&mut self, name: &[u8]) -> Result<Vec<u8>, Violation> {
        match &mut self.mapping {
            Mapping::Under => Ok(name.to_vec()),
            Mapping::FileAs(base) => {
                if self.count != 0 {
                    return Err(Violation(format!(
                        "sent {} after announcing a single file",
                        escape(name)
                    )));
                }
                Ok(base.clone())
            }
            Mapping::StripTop(top) => {
                if top.is_empty() {
                    if name.contains(&b'/') || name == b"." {
                        return Err(Violation(format!(
                            "sent {} before its directory",
                            escape(name)
                        )));
                    }
                    *top = name.to_vec();
                    return Ok(b".".to_vec());
                }
                match name.strip_prefix(top.as_slice()) {
                    Some(rest) if rest.first() == Some(&b'/') => Ok(rest[1..].to_vec()),
                    _ => Err(Violation(format!(
                        "sent {} outside the announced directory",
                        escape(name)
                    ))),
                }
            }
        }
    }

    /// Checks an entry against the list so far and what was asked for.
    fn check_entry(
        &self,
        e: &Entry,
        is_earlier_file: impl Fn(u32) -> bool,
    ) -> Result<(), Violation> {
        names::check(&e.name).map_err(|err| Violation(format!("sent a bad name: {err}")))?;
        if let Some(req) = &self.requested {
            if !req.allows(&e.name) {
                return Err(Violation(format!(
                    "sent {}, which was not requested",
                    escape(&e.name)
                )));
            }
        }
        if !self.recursive && (e.name.contains(&b'/') || e.kind == Kind::Dir) {
            return Err(Violation(format!(
                "sent {} in a transfer that is not recursive",
                escape(&e.name)
            )));
        }
        if e.name.contains(&b'/') {
            let (parent, _) = split_parent(&e.name);
            if !self.list_dirs.contains(parent) {
                return Err(Violation(format!(
                    "sent {} before its directory",
                    escape(&e.name)
                )));
            }
        }
        if let Some(j) = e.link_to {
            let first_of_group = self.link_marks && j == self.count;
            let to_earlier = j < self.count && is_earlier_file(j);
            if !(first_of_group || to_earlier) || e.kind != Kind::File {
                return Err(Violation(format!(
                    "sent a hard link {} to an entry that is not an earlier file",
                    escape(&e.name)
                )));
            }
        }
        if e.name == b"." && self.count != 0 {
            return Err(Violation("sent the root entry twice".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The list rules of `tests/hostile.rs`, one table row each, without a
    //! peer, a pipe or a destination.
    use super::{Accepted, ListIntake, Mapping};
    use crate::proto::{Entry, Kind, LIST_AHEAD};

    fn entry(name: &[u8], kind: Kind) -> Entry {
        Entry {
            name: name.to_vec(),
            kind,
            mode: 0o644,
            mtime: 1_600_000_000,
            mtime_nsec: 0,
            size: 1,
            uid: 0,
            gid: 0,
            target: Vec::new(),
            link_to: None,
            checksum: None,
        }
    }

    fn file(name: &str) -> Entry {
        entry(name.as_bytes(), Kind::File)
    }

    fn dir(name: &str) -> Entry {
        entry(name.as_bytes(), Kind::Dir)
    }

    /// A pull of `data/` (any name may come), recursive.
    fn pull() -> ListIntake {
        ListIntake::new(Some(&[b"data/".to_vec()]), true)
    }

    /// Feeds `list` (every entry a file unless it says otherwise); the first
    /// refusal's text, or `None` if all were taken in.
    fn refusal(mut intake: ListIntake, list: &[Entry]) -> Option<String> {
        let mut kinds = Vec::new();
        for e in list {
            let earlier = |j: u32| kinds.get(j as usize) == Some(&Kind::File);
            match intake.accept(e, earlier) {
                Ok(_) => kinds.push(e.kind),
                Err(v) => return Some(v.0),
            }
        }
        None
    }

    #[test]
    fn hostile_names_are_refused() {
        let bad: [&[u8]; 9] = [
            b"..",
            b"../x",
            b"/etc/passwd",
            b"a/../../x",
            b"",
            b"a//b",
            b".ferry-partial/x",
            b"x/.",
            b"a\0b",
        ];
        for name in bad {
            let err = refusal(pull(), &[entry(name, Kind::File)]).expect("refused");
            assert!(err.starts_with("sent a bad name: "), "{name:?}: {err}");
        }
        let err = refusal(pull(), &[entry(b"a\0b", Kind::File)]).unwrap();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn the_list_rules_of_the_hostile_tests() {
        let many: Vec<Entry> = (0..=LIST_AHEAD)
            .map(|i| file(&format!("f{i:05}")))
            .collect();
        let linked = |to| Entry {
            link_to: Some(to),
            ..file("l")
        };
        let cases: Vec<(&str, ListIntake, Vec<Entry>, Option<&str>)> = vec![
            (
                "a name that was not requested",
                ListIntake::new(Some(&[b"data".to_vec()]), true),
                vec![dir(".ssh"), file(".ssh/authorized_keys")],
                Some("sent .ssh, which was not requested"),
            ),
            (
                "what was requested",
                ListIntake::new(Some(&[b"x/data".to_vec()]), true),
                vec![dir("data"), file("data/a")],
                None,
            ),
            (
                "a name listed twice",
                pull(),
                vec![file("a"), file("a")],
                Some("listed a twice"),
            ),
            (
                "an orphan",
                pull(),
                vec![file("d/x")],
                Some("sent d/x before its directory"),
            ),
            (
                "a directory, then what is in it",
                pull(),
                vec![dir("d"), file("d/x")],
                None,
            ),
            (
                "past LIST_AHEAD",
                pull(),
                many.clone(),
                Some("listed more than 8192 entries beyond those acknowledged"),
            ),
            (
                "up to LIST_AHEAD",
                pull(),
                many[..LIST_AHEAD as usize].to_vec(),
                None,
            ),
            (
                "the root twice",
                pull(),
                vec![dir("."), dir(".")],
                Some("sent the root entry twice"),
            ),
            (
                "a directory where nothing recursive was asked for",
                ListIntake::new(None, false),
                vec![dir("d")],
                Some("sent d in a transfer that is not recursive"),
            ),
            (
                "a hard link to a later entry",
                pull(),
                vec![file("a"), linked(5)],
                Some("sent a hard link l to an entry that is not an earlier file"),
            ),
            (
                "a hard link to a directory",
                pull(),
                vec![dir("d"), linked(0)],
                Some("sent a hard link l to an entry that is not an earlier file"),
            ),
            (
                "a hard link to an earlier file",
                pull(),
                vec![file("a"), linked(0)],
                None,
            ),
        ];
        for (label, intake, list, want) in cases {
            assert_eq!(refusal(intake, &list).as_deref(), want, "{label}");
        }
    }

    /// `-H` with marks: a file linked to itself is the first of a group, and
    /// only when the sender was told to mark (else it is a bad link).
    #[test]
    fn a_file_linked_to_itself_is_a_mark_only_when_marks_were_asked_for() {
        let to = |name: &str, to| Entry {
            link_to: Some(to),
            ..file(name)
        };
        let marked = || {
            let mut i = pull();
            i.expect_link_marks();
            i
        };
        let bad = Some("sent a hard link a to an entry that is not an earlier file");
        let cases: Vec<(&str, ListIntake, Vec<Entry>, Option<&str>)> = vec![
            (
                "a mark, asked for",
                marked(),
                vec![to("a", 0), to("b", 0)],
                None,
            ),
            ("a mark, not asked for", pull(), vec![to("a", 0)], bad),
            (
                "a later mark",
                marked(),
                vec![file("x"), to("a", 1), to("b", 1)],
                None,
            ),
            (
                "a mark past itself",
                marked(),
                vec![file("x"), to("a", 2)],
                bad,
            ),
            (
                "a directory marked",
                marked(),
                vec![Entry {
                    link_to: Some(0),
                    ..dir("a")
                }],
                bad,
            ),
        ];
        for (label, intake, list, want) in cases {
            assert_eq!(refusal(intake, &list).as_deref(), want, "{label}");
        }
    }

    #[test]
    fn acknowledgements_move_the_window_in_quarters() {
        let mut intake = pull();
        for i in 0..LIST_AHEAD {
            intake
                .accept(&file(&format!("f{i:05}")), |_| false)
                .unwrap();
        }
        assert_eq!(intake.ack(LIST_AHEAD / 4 - 1), None, "not far enough yet");
        assert_eq!(intake.ack(LIST_AHEAD / 4), Some(LIST_AHEAD / 4));
        // room for a quarter more
        for i in 0..LIST_AHEAD / 4 {
            intake
                .accept(&file(&format!("g{i:05}")), |_| false)
                .unwrap();
        }
        let err = intake.accept(&file("h"), |_| false).unwrap_err();
        assert!(err.0.starts_with("listed more than"), "{}", err.0);
    }

    #[test]
    fn the_end_of_the_list_is_final() {
        let mut intake = pull();
        intake.end().unwrap();
        assert!(intake.is_done());
        assert_eq!(intake.end().unwrap_err().0, "ended the file list twice");
        assert_eq!(
            intake.accept(&file("a"), |_| false).unwrap_err().0,
            "sent an entry after the end of the list"
        );
    }

    #[test]
    fn names_map_as_the_destination_says() {
        let mut one = pull();
        one.set_mapping(Mapping::FileAs(b"target".to_vec()));
        let got = one.accept(&file("a"), |_| false).unwrap();
        assert_eq!(
            got,
            Accepted {
                index: 0,
                rel: b"target".to_vec()
            }
        );
        assert_eq!(
            one.accept(&file("b"), |_| false).unwrap_err().0,
            "sent b after announcing a single file"
        );
        let mut cp = pull();
        cp.set_mapping(Mapping::StripTop(Vec::new()));
        assert_eq!(cp.accept(&dir("top"), |_| false).unwrap().rel, b".");
        assert_eq!(cp.accept(&file("top/x"), |_| false).unwrap().rel, b"x");
        assert!(cp.is_listed(b"x"));
        assert_eq!(
            cp.accept(&dir("other"), |_| false).unwrap_err().0,
            "sent other outside the announced directory"
        );
    }
}
