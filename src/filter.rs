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
}

#[derive(Debug, Clone)]
struct Rule {
    include: bool,
    pattern: Vec<u8>,
    dir_only: bool,
    anchored: bool,
    whole_path: bool,
}

/// An ordered list of include/exclude rules.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    rules: Vec<Rule>,
}

impl Filters {
    /// Builds the rule list from `(include?, pattern)` pairs, in order.
    pub fn new(rules: &[(bool, Vec<u8>)]) -> Result<Self, FilterError> {
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
        Ok(Filters { rules: out })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` (relative to the transfer root, `/`-separated) is excluded.
    pub fn excludes(&self, path: &[u8], is_dir: bool) -> bool {
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let hit = if r.anchored {
                glob(&r.pattern, path)
            } else if r.whole_path {
                suffixes(path).any(|s| glob(&r.pattern, s))
            } else {
                let last = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                glob(&r.pattern, last)
            };
            if hit {
                return !r.include;
            }
        }
        false
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
/// FILE, read once where the rule stands), `: FILE` / `dir-merge FILE` (per
/// directory: not supported yet, refused by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterRule {
    Include(Vec<u8>),
    Exclude(Vec<u8>),
    Merge(Vec<u8>),
}

/// Why a `--filter` rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("--filter {0:?}: expected '+ PATTERN', '- PATTERN' or 'merge FILE'")]
    Unknown(String),
    #[error("--filter {0:?}: per-directory merge files (dir-merge, ':') are not supported yet; use 'merge FILE' or --exclude-from")]
    DirMerge(String),
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
            b":" | b"dir-merge" => Err(RuleError::DirMerge(shown())),
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
        assert!(matches!(
            FilterRule::parse(b": .rsync-filter"),
            Err(RuleError::DirMerge(_))
        ));
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
