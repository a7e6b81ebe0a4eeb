//! rsync's `--chmod` rules: parsed once, then applied to the permission bits of
//! each entry the receiver takes in, as if the sender had sent those bits (so
//! with `-p` they are what the destination gets, without it they shape new
//! files only, as in rsync). Pure code over the rule text; not for applying
//! modes to files (the receiver does that as for any mode).
//!
//! Syntax (rsync's, like chmod(1) without the umask): items separated by
//! commas, each optionally starting with `D` (directories only) or `F`
//! (everything else), then an octal mode (`644`, `D2775`) or `[ugoa]*` followed
//! by one or more `[-+=][rwxXst]*` (`u+rwx`, `go-w`, `Fa=r,Da=rx`). An empty
//! who means `a`.

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `Some(true)`: directories only; `Some(false)`: non-directories only.
    dirs: Option<bool>,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Octal(u32),
    /// Who (a mask of `0o7777` bits it may touch), then each operation.
    Symbolic(u32, Vec<(u8, Perms)>),
}

/// The permission letters of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Perms {
    r: bool,
    w: bool,
    x: bool,
    /// `X`: execute if a directory or if any execute bit is already set.
    big_x: bool,
    s: bool,
    t: bool,
}

/// A `--chmod` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chmod {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--chmod: {0:?} is not a mode change (e.g. 644, D755, u+rwx, go-w, Fa=r)")]
pub struct ChmodError(pub String);

impl Chmod {
    /// Parses one or more `--chmod` values (each may hold several items).
    pub fn parse<S: AsRef<[u8]>>(values: &[S]) -> Result<Chmod, ChmodError> {
        let mut rules = Vec::new();
        for v in values {
            for item in v.as_ref().split(|&b| b == b',') {
                rules.push(
                    parse_item(item)
                        .ok_or_else(|| ChmodError(String::from_utf8_lossy(item).into_owned()))?,
                );
            }
        }
        Ok(Chmod { rules })
    }

    /// The permission bits `mode` (of a directory or not) become.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mut m = mode & 0o7777;
        for rule in &self.rules {
            if rule.dirs.is_some_and(|d| d != is_dir) {
                continue;
            }
            match &rule.action {
                Action::Octal(o) => m = *o,
                Action::Symbolic(who, ops) => {
                    for (op, p) in ops {
                        let any_x = m & 0o111 != 0;
                        let mut bits = 0;
                        if p.r {
                            bits |= 0o444;
                        }
                        if p.w {
                            bits |= 0o222;
                        }
                        if p.x || (p.big_x && (is_dir || any_x)) {
                            bits |= 0o111;
                        }
                        if p.s {
                            bits |= 0o6000;
                        }
                        if p.t {
                            bits |= 0o1000;
                        }
                        let bits = bits & who;
                        match op {
                            b'+' => m |= bits,
                            b'-' => m &= !bits,
                            _ => m = (m & !(who & 0o7777)) | bits,
                        }
                    }
                }
            }
        }
        m
    }
}

fn parse_item(item: &[u8]) -> Option<Rule> {
    let (dirs, rest) = match item.first()? {
        b'D' => (Some(true), &item[1..]),
        b'F' => (Some(false), &item[1..]),
        _ => (None, item),
    };
    if !rest.is_empty() && rest.iter().all(|b| (b'0'..=b'7').contains(b)) {
        if rest.len() > 4 {
            return None;
        }
        let v = rest.iter().fold(0u32, |a, &b| a * 8 + (b - b'0') as u32);
        return Some(Rule {
            dirs,
            action: Action::Octal(v),
        });
    }
    let split = rest.iter().position(|b| b"+-=".contains(b))?;
    let (who_text, mut ops_text) = rest.split_at(split);
    let mut who = 0u32;
    for c in who_text {
        who |= match c {
            b'u' => 0o4700,
            b'g' => 0o2070,
            b'o' => 0o0007,
            b'a' => 0o7777,
            _ => return None,
        };
    }
    if who == 0 {
        who = 0o7777; // (only `a`, or no who, reaches the sticky bit)
    }
    let mut ops = Vec::new();
    while let Some((&op, rest)) = ops_text.split_first() {
        if !b"+-=".contains(&op) {
            return None;
        }
        let end = rest
            .iter()
            .position(|b| b"+-=".contains(b))
            .unwrap_or(rest.len());
        let mut p = Perms::default();
        for c in &rest[..end] {
            match c {
                b'r' => p.r = true,
                b'w' => p.w = true,
                b'x' => p.x = true,
                b'X' => p.big_x = true,
                b's' => p.s = true,
                b't' => p.t = true,
                _ => return None,
            }
        }
        ops.push((op, p));
        ops_text = &rest[end..];
    }
    Some(Rule {
        dirs,
        action: Action::Symbolic(who, ops),
    })
}

#[cfg(test)]
mod tests {
    use super::Chmod;

    fn ch(s: &str) -> Chmod {
        Chmod::parse(&[s]).unwrap()
    }

    #[test]
    fn rules() {
        assert_eq!(ch("644").apply(0o755, false), 0o644);
        assert_eq!(ch("D2775").apply(0o700, true), 0o2775);
        assert_eq!(ch("D2775").apply(0o600, false), 0o600);
        assert_eq!(ch("u+rwx").apply(0o000, false), 0o700);
        assert_eq!(ch("go-w").apply(0o777, false), 0o755);
        assert_eq!(ch("Fa=r,Da=rx").apply(0o777, false), 0o444);
        assert_eq!(ch("Fa=r,Da=rx").apply(0o700, true), 0o555);
        assert_eq!(ch("a+X").apply(0o600, false), 0o600);
        assert_eq!(ch("a+X").apply(0o700, false), 0o711);
        assert_eq!(ch("a+X").apply(0o600, true), 0o711);
        assert_eq!(ch("u=rw,g=r,o=").apply(0o777, false), 0o640);
        assert_eq!(ch("+x").apply(0o644, false), 0o755);
        assert_eq!(ch("g+s,+t").apply(0o755, true), 0o3755);
        assert_eq!(ch("u+w-x").apply(0o500, false), 0o600);
        for bad in ["", "q+r", "u+z", "8", "u", "D", "12345"] {
            assert!(Chmod::parse(&[bad]).is_err(), "{bad:?}");
        }
    }
}
