//! `--exclude` / `--include` rules with rsync's glob semantics for the common
//! cases, first matching rule wins:
//!
//! - `*` matches within one path component, `**` across components, `?` one
//!   character (not `/`), `[...]` a character class (`[!...]` or `[^...]` negated);
//! - a trailing `/` makes a rule match directories only;
//! - a leading `/` anchors the rule at the transfer root;
//! - a rule without `/` (or `**`) matches the last component at any depth; an
//!   unanchored rule with `/` matches the trailing components of the path.
//!
//! Names are matched as bytes: non-UTF-8 names work like any other.

use crate::proto::MAX_PATH;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty filter pattern")]
    Empty,
    #[error("filter pattern longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("unclosed '[' in filter pattern {0:?}")]
    UnclosedClass(String),
    #[error("--filter dir-merge {0:?}: a per-directory merge file is named by a plain file name (like .rsync-filter)")]
    MergeName(String),
}

#[derive(Debug, Clone)]
struct Rule {
    include: bool,
    pattern: Vec<u8>,
    dir_only: bool,
    anchored: bool,
    whole_path: bool,
}

/// An ordered list of include/exclude rules, with the per-directory merge
/// files (`dir-merge`) that stand among them.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    rules: Vec<Rule>,
    /// Each `dir-merge` rule: the index in `rules` it stands before, and the
    /// name of the file read in each directory.
    dir_merges: Vec<(usize, Vec<u8>)>,
    /// Per `dir-merge` rule: it was named with a leading `/` (`: /NAME`,
    /// `-F`), so the sender also reads the file in each directory above
    /// the transfer, from the top down (rsync's parent-directory scan).
    from_top: Vec<bool>,
}

/// The rules one directory's merge file adds for its contents (rsync's
/// `dir-merge`): they come before those inherited from the directories above.
#[derive(Debug, Clone)]
pub struct DirRules {
    /// Which of the filter list's `dir-merge` rules read this file.
    merge: usize,
    /// The directory holding the file, relative to the transfer root (`.`
    /// for the root): a rule starting with `/` is anchored there.
    dir: Vec<u8>,
    /// For a file read above the transfer root (`: /NAME`): the path from
    /// its directory down to where the transfer's names start, put before
    /// each name an anchored rule is matched against. Empty otherwise.
    lead: Vec<u8>,
    rules: Vec<Rule>,
    /// The file said `!`: the rules inherited from above are dropped.
    clear: bool,
}

/// Longest per-directory merge file read.
pub const MAX_MERGE_FILE: u64 = 1 << 20;

impl Filters {
    /// Builds the rule list from `(include?, pattern)` pairs, in order.
    pub fn new(rules: &[(bool, Vec<u8>)]) -> Result<Self, FilterError> {
        Ok(Filters {
            rules: parse_rules(rules)?,
            dir_merges: Vec::new(),
            from_top: Vec::new(),
        })
    }

    /// [`Filters::new`] with `dir-merge` rules: `(index, name)`, the rule
    /// reading file `name` in each directory standing before `rules[index]`
    /// (`index == rules.len()`: after the last).
    pub fn with_dir_merges(
        rules: &[(bool, Vec<u8>)],
        dir_merges: &[(u32, Vec<u8>)],
    ) -> Result<Self, FilterError> {
        let mut f = Filters::new(rules)?;
        for (at, name) in dir_merges {
            f.from_top.push(name.starts_with(b"/"));
            let name = name.strip_prefix(b"/").unwrap_or(name);
            if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
                return Err(FilterError::MergeName(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            f.dir_merges
                .push(((*at as usize).min(f.rules.len()), name.to_vec()));
        }
        Ok(f)
    }

    /// The file names of the `dir-merge` rules, in order (an index into this
    /// is what [`Filters::dir_rules`] takes).
    pub fn dir_merge_names(&self) -> impl Iterator<Item = &[u8]> {
        self.dir_merges.iter().map(|(_, n)| n.as_slice())
    }

    /// Whether `dir-merge` rule `merge` was named with a leading `/`: its
    /// file is read in the directories above the transfer root too.
    pub fn dir_merge_from_top(&self, merge: usize) -> bool {
        self.from_top.get(merge).copied().unwrap_or(false)
    }

    /// [`Filters::dir_rules`] for a merge file read in a directory above
    /// the transfer root: `lead` is the path from that directory down to
    /// where the transfer's names start (`src/path` for `/` when the names
    /// start in `/src/path`; empty for the directory they start in).
    pub fn dir_rules_above(
        &self,
        merge: usize,
        lead: &[u8],
        text: &[u8],
    ) -> Result<DirRules, String> {
        let mut rules = self.dir_rules(merge, b".", text)?;
        rules.lead = lead.to_vec();
        Ok(rules)
    }

    /// The rules of the merge file of `dir-merge` rule `merge` found in
    /// directory `dir` (relative to the transfer root): one rule a line,
    /// `+ PATTERN` or `- PATTERN` (or `include`/`exclude`), `!` to drop what
    /// is inherited; blank lines and `#`/`;` comments skipped.
    pub fn dir_rules(&self, merge: usize, dir: &[u8], text: &[u8]) -> Result<DirRules, String> {
        let mut pairs = Vec::new();
        let mut clear = false;
        for line in text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b";"))
        {
            if line == b"!" {
                clear = true;
                pairs.clear();
                continue;
            }
            match FilterRule::parse(line).map_err(|e| e.to_string())? {
                FilterRule::Include(p) => pairs.push((true, p)),
                FilterRule::Exclude(p) => pairs.push((false, p)),
                FilterRule::Merge(_) | FilterRule::DirMerge(_) => {
                    return Err(format!(
                        "{:?}: merge rules inside a per-directory merge file are not supported",
                        String::from_utf8_lossy(line)
                    ))
                }
            }
        }
        Ok(DirRules {
            merge,
            dir: dir.to_vec(),
            lead: Vec::new(),
            rules: parse_rules(&pairs).map_err(|e| e.to_string())?,
            clear,
        })
    }

    /// Whether `path` is excluded, with the rules of the merge files read in
    /// the directories above it (`layers`, outermost first).
    pub fn excludes_in(&self, path: &[u8], is_dir: bool, layers: &[DirRules]) -> bool {
        if self.dir_merges.is_empty() {
            return self.excludes(path, is_dir);
        }
        for i in 0..=self.rules.len() {
            for (m, (at, _)) in self.dir_merges.iter().enumerate() {
                if *at != i {
                    continue;
                }
                // the innermost directory's rules first, then those above it
                for layer in layers.iter().rev().filter(|l| l.merge == m) {
                    let led;
                    let rel = if !layer.lead.is_empty() {
                        led = [layer.lead.as_slice(), b"/", path].concat();
                        led.as_slice()
                    } else if layer.dir == b"." {
                        path
                    } else {
                        match path
                            .strip_prefix(layer.dir.as_slice())
                            .and_then(|p| p.strip_prefix(b"/"))
                        {
                            Some(p) => p,
                            None => continue,
                        }
                    };
                    for r in &layer.rules {
                        if let Some(ex) = r.decides(path, rel, is_dir) {
                            return ex;
                        }
                    }
                    if layer.clear {
                        break;
                    }
                }
            }
            if let Some(r) = self.rules.get(i) {
                if let Some(ex) = r.decides(path, path, is_dir) {
                    return ex;
                }
            }
        }
        false
    }
}

/// Parses `(include?, pattern)` pairs into rules.
fn parse_rules(rules: &[(bool, Vec<u8>)]) -> Result<Vec<Rule>, FilterError> {
    let mut out = Vec::with_capacity(rules.len());
    for (include, pat) in rules {
        if pat.is_empty() {
            return Err(FilterError::Empty);
        }
        if pat.len() > MAX_PATH {
            return Err(FilterError::TooLong);
        }
        check_classes(pat)?;
        let mut p = pat.as_slice();
        let dir_only = p.len() > 1 && p.ends_with(b"/");
        if dir_only {
            p = &p[..p.len() - 1];
        }
        let anchored = p.starts_with(b"/");
        if anchored {
            p = &p[1..];
        }
        let whole_path = anchored || p.contains(&b'/') || contains(p, b"**");
        out.push(Rule {
            include: *include,
            pattern: p.to_vec(),
            dir_only,
            anchored,
            whole_path,
        });
    }
    Ok(out)
}

impl Rule {
    /// `Some(excluded?)` when this rule matches `path`; an anchored rule is
    /// matched against `anchored_path` (the path below the directory it is
    /// anchored in).
    fn decides(&self, path: &[u8], anchored_path: &[u8], is_dir: bool) -> Option<bool> {
        if self.dir_only && !is_dir {
            return None;
        }
        let hit = if self.anchored {
            glob(&self.pattern, anchored_path)
        } else if self.whole_path {
            suffixes(path).any(|s| glob(&self.pattern, s))
        } else {
            let last = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            glob(&self.pattern, last)
        };
        hit.then_some(!self.include)
    }
}

impl Filters {
    /// Whether any `dir-merge` rule stands in the list.
    pub fn has_dir_merges(&self) -> bool {
        !self.dir_merges.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.dir_merges.is_empty()
    }

    /// Whether `path` (relative to the transfer root, `/`-separated) is
    /// excluded by the rules of the list itself (not those of per-directory
    /// merge files: see [`Filters::excludes_in`]).
    pub fn excludes(&self, path: &[u8], is_dir: bool) -> bool {
        self.rules
            .iter()
            .find_map(|r| r.decides(path, path, is_dir))
            .unwrap_or(false)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The path itself and every tail that starts after a `/`.
fn suffixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(path).chain(
        path.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(move |(i, _)| &path[i + 1..]),
    )
}

fn check_classes(p: &[u8]) -> Result<(), FilterError> {
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'[' && class_end(p, i).is_none() {
            return Err(FilterError::UnclosedClass(
                String::from_utf8_lossy(p).into_owned(),
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Index of the `]` closing the class opened at `p[start]`.
fn class_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < p.len() && (p[i] == b'!' || p[i] == b'^') {
        i += 1;
    }
    if i < p.len() && p[i] == b']' {
        i += 1;
    }
    while i < p.len() {
        if p[i] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn class_matches(class: &[u8], c: u8) -> bool {
    let (neg, body) = match class.first() {
        Some(b'!') | Some(b'^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut hit = false;
    let mut i = 0;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == b'-' {
            if body[i] <= c && c <= body[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if body[i] == c {
                hit = true;
            }
            i += 1;
        }
    }
    hit != neg
}

/// Glob match over bytes. Memoised over (pattern position, text position), so the
/// cost is bounded by their product whatever the pattern.
pub fn glob(pat: &[u8], text: &[u8]) -> bool {
    let width = text.len() + 1;
    let mut seen = vec![false; (pat.len() + 1) * width];
    glob_at(pat, text, 0, 0, &mut seen, width)
}

fn glob_at(p: &[u8], t: &[u8], pi: usize, ti: usize, seen: &mut [bool], w: usize) -> bool {
    let (mut pi, mut ti) = (pi, ti);
    loop {
        if seen[pi * w + ti] {
            return false; // already shown not to match from here
        }
        seen[pi * w + ti] = true;
        if pi == p.len() {
            return ti == t.len();
        }
        match p[pi] {
            b'*' => {
                let double = p.get(pi + 1) == Some(&b'*');
                let next = if double { pi + 2 } else { pi + 1 };
                // `**/` also matches zero directories
                if double && p.get(next) == Some(&b'/') && glob_at(p, t, next + 1, ti, seen, w) {
                    return true;
                }
                let mut k = ti;
                loop {
                    if glob_at(p, t, next, k, seen, w) {
                        return true;
                    }
                    if k == t.len() || (!double && t[k] == b'/') {
                        return false;
                    }
                    k += 1;
                }
            }
            b'?' => {
                if ti == t.len() || t[ti] == b'/' {
                    return false;
                }
            }
            // a class; a `[` that never closes is an ordinary character
            // (filter rules refuse it up front; other callers may not)
            b'[' if class_end(p, pi).is_some() => {
                let end = class_end(p, pi).expect("just checked");
                if ti == t.len() || t[ti] == b'/' || !class_matches(&p[pi + 1..end], t[ti]) {
                    return false;
                }
                pi = end + 1;
                ti += 1;
                continue;
            }
            b'\\' if pi + 1 < p.len() => {
                if ti == t.len() || t[ti] != p[pi + 1] {
                    return false;
                }
                pi += 2;
                ti += 1;
                continue;
            }
            c => {
                if ti == t.len() || t[ti] != c {
                    return false;
                }
            }
        }
        pi += 1;
        ti += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_bracket_is_an_ordinary_character_in_glob() {
        // found by fuzzing: authorized_keys `from="10.["` reached glob()
        // without the class check that filter rules get, and panicked
        assert!(glob(b"10.[", b"10.["));
        assert!(!glob(b"10.[", b"10.1"));
        assert!(glob(b"*[", b"ab["));
    }

    fn f(rules: &[(bool, &str)]) -> Filters {
        Filters::new(
            &rules
                .iter()
                .map(|(i, p)| (*i, p.as_bytes().to_vec()))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.tmp", "a.tmp", true),
            ("*.tmp", "a/b.tmp", false),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[ab]x", "bx", true),
            ("[!ab]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("**/x", "a/b/x", true),
            ("**/x", "x", true),
            ("a/**", "a/b/c", true),
            ("a/*", "a/b/c", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), *want, "{p} vs {t}");
        }
    }

    #[test]
    fn rsync_rule_semantics() {
        let r = f(&[(false, "*.tmp"), (false, "/build/"), (false, "cache/x")]);
        assert!(r.excludes(b"deep/dir/a.tmp", false));
        assert!(r.excludes(b"build", true));
        assert!(!r.excludes(b"build", false), "dir-only rule");
        assert!(!r.excludes(b"src/build", true), "anchored rule");
        assert!(r.excludes(b"src/cache/x", false), "tail match");
        assert!(!r.excludes(b"src/cache/xy", false));
    }

    #[test]
    fn first_match_wins() {
        let r = f(&[(true, "keep.tmp"), (false, "*.tmp")]);
        assert!(!r.excludes(b"keep.tmp", false));
        assert!(r.excludes(b"other.tmp", false));
        let r = f(&[(true, "*/"), (true, "*.rs"), (false, "*")]);
        assert!(!r.excludes(b"src", true));
        assert!(!r.excludes(b"src/main.rs", false));
        assert!(r.excludes(b"src/notes.txt", false));
    }

    #[test]
    fn pathological_pattern_is_bounded() {
        let pat = "*a".repeat(200) + "b";
        let text = "a".repeat(3000);
        assert!(!glob(pat.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn bad_patterns_rejected() {
        assert_eq!(
            Filters::new(&[(false, vec![])]).unwrap_err(),
            FilterError::Empty
        );
        assert!(matches!(
            Filters::new(&[(false, b"a[bc".to_vec())]).unwrap_err(),
            FilterError::UnclosedClass(_)
        ));
    }
}

/// One `--filter` rule as rsync writes it: `+ PATTERN` / `include PATTERN`,
/// `- PATTERN` / `exclude PATTERN`, `. FILE` / `merge FILE` (the rules in
/// FILE, read once where the rule stands), `: FILE` / `dir-merge FILE` (the
/// rules in the file of that name in each directory the sender walks, for
/// what is below it; see [`Filters::with_dir_merges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterRule {
    Include(Vec<u8>),
    Exclude(Vec<u8>),
    Merge(Vec<u8>),
    DirMerge(Vec<u8>),
}

/// Why a `--filter` rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("--filter {0:?}: expected '+ PATTERN', '- PATTERN', 'merge FILE' or 'dir-merge FILE'")]
    Unknown(String),
    #[error("--filter {0:?}: rule modifiers are not supported")]
    Modifiers(String),
}

impl FilterRule {
    /// Parses one rule (a `--filter` value or a line of a merged file).
    pub fn parse(rule: &[u8]) -> Result<FilterRule, RuleError> {
        let shown = || String::from_utf8_lossy(rule).into_owned();
        let (word, rest) = match rule.iter().position(|&b| b == b' ' || b == b'_') {
            Some(i) => (&rule[..i], &rule[i + 1..]),
            None => return Err(RuleError::Unknown(shown())),
        };
        if rest.is_empty() {
            return Err(RuleError::Unknown(shown()));
        }
        match word {
            b"+" | b"include" => Ok(FilterRule::Include(rest.to_vec())),
            b"-" | b"exclude" => Ok(FilterRule::Exclude(rest.to_vec())),
            b"." | b"merge" => Ok(FilterRule::Merge(rest.to_vec())),
            b":" | b"dir-merge" => Ok(FilterRule::DirMerge(rest.to_vec())),
            w if w.len() > 1 && matches!(w[0], b'+' | b'-' | b'.' | b':') => {
                Err(RuleError::Modifiers(shown()))
            }
            _ => Err(RuleError::Unknown(shown())),
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    #[test]
    fn filter_rules_in_both_spellings() {
        assert_eq!(
            FilterRule::parse(b"+ *.py"),
            Ok(FilterRule::Include(b"*.py".to_vec()))
        );
        assert_eq!(
            FilterRule::parse(b"exclude /tmp/"),
            Ok(FilterRule::Exclude(b"/tmp/".to_vec()))
        );
        assert_eq!(
            FilterRule::parse(b"- a b"),
            Ok(FilterRule::Exclude(b"a b".to_vec()))
        );
        assert_eq!(
            FilterRule::parse(b". rules.txt"),
            Ok(FilterRule::Merge(b"rules.txt".to_vec()))
        );
        assert_eq!(
            FilterRule::parse(b": .rsync-filter"),
            Ok(FilterRule::DirMerge(b".rsync-filter".to_vec()))
        );
        assert!(matches!(
            FilterRule::parse(b"-! x"),
            Err(RuleError::Modifiers(_))
        ));
        assert!(matches!(
            FilterRule::parse(b"+"),
            Err(RuleError::Unknown(_))
        ));
        assert!(matches!(
            FilterRule::parse(b"x y"),
            Err(RuleError::Unknown(_))
        ));
    }
}

#[cfg(test)]
mod dir_merge_tests {
    use super::*;

    fn with(merges: &[&str]) -> Filters {
        let dm: Vec<(u32, Vec<u8>)> = merges.iter().map(|n| (0, n.as_bytes().to_vec())).collect();
        Filters::with_dir_merges(&[], &dm).unwrap()
    }

    #[test]
    fn a_leading_slash_reads_from_the_top() {
        let f = with(&["/.rsync-filter", ".other"]);
        assert!(f.dir_merge_from_top(0));
        assert!(!f.dir_merge_from_top(1));
        assert_eq!(
            f.dir_merge_names().collect::<Vec<_>>(),
            [b".rsync-filter".as_slice(), b".other"]
        );
    }

    #[test]
    fn a_file_above_the_root_anchors_in_its_own_directory() {
        let f = with(&["/.rsync-filter"]);
        // read in `/` while the names start in `/src/path`
        let top = f
            .dir_rules_above(0, b"src/path", b"- /src/path/x\n- /y\n")
            .unwrap();
        assert!(f.excludes_in(b"x", false, std::slice::from_ref(&top)));
        assert!(!f.excludes_in(b"y", false, std::slice::from_ref(&top)));
        assert!(!f.excludes_in(b"sub/x", false, std::slice::from_ref(&top)));
        // an inner directory's rules come first
        let inner = f.dir_rules(0, b".", b"+ x\n").unwrap();
        assert!(!f.excludes_in(b"x", false, &[top.clone(), inner]));
        // `!` in the inner file drops the rules from above
        let cleared = f.dir_rules(0, b".", b"!\n").unwrap();
        assert!(!f.excludes_in(b"x", false, &[top, cleared]));
    }
}
