//! rsync's per-file lines: the `-i/--itemize-changes` code (`>f+++++++++`,
//! `.d..t......`, `cL+++++++++`, `*deleting`), `--out-format`'s escapes
//! (`%n %i %l %b %f %M %t %o %L %p %%`, rsync's `'` for separated digits, and
//! the daemon-only `%h %a %m %P %u` left as rsync's client leaves them) and
//! `--log-file`'s line layout (a time, `[pid]`, the line). It turns one reported entry into text; it does not
//! decide what is printed when or where (that is [`super::output`]).

use crate::fs::names::escape;
use crate::proto::item::Item;
use std::io::Write;

/// One entry as the lines show it.
pub struct Line<'a> {
    /// As listed, a directory with a trailing `/`.
    pub name: &'a [u8],
    pub item: Item,
    /// Deleted (`*deleting`), not created or changed.
    pub deleted: bool,
    pub size: u64,
    /// The file's bytes that crossed the wire.
    pub wire: u64,
    pub mtime: i64,
    /// `-> target` or `=> file`, or empty.
    pub detail: &'a [u8],
}

/// What the code needs to know of the transfer.
#[derive(Clone, Copy)]
pub struct Direction {
    /// `<` when the receiver is remote (a push), `>` when it is here.
    pub arrow: char,
    /// Times are kept (`-t`): a changed time shows as `t`, else `T`.
    pub times: bool,
}

/// rsync's 11-character `%i`: update type, file type, then `cstpoguax`.
pub fn code(l: &Line, d: Direction) -> String {
    if l.deleted {
        return "*deleting  ".into();
    }
    let it = l.item;
    let kind = if it.has(Item::DIR) {
        'd'
    } else if it.has(Item::SYMLINK) {
        'L'
    } else {
        'f'
    };
    let update = if it.has(Item::HARDLINK) {
        'h'
    } else if it.has(Item::SENT) {
        d.arrow
    } else if kind != 'f' && (it.has(Item::NEW) || it.has(Item::CHANGED)) {
        'c'
    } else {
        '.'
    };
    let mut s = String::with_capacity(11);
    s.push(update);
    s.push(kind);
    if it.has(Item::NEW) {
        s.push_str("+++++++++");
        return s;
    }
    let bit = |b: u32, c: char| if it.has(b) { c } else { '.' };
    s.push(bit(Item::CHANGED, 'c'));
    s.push(bit(Item::SIZE, 's'));
    s.push(bit(Item::TIME, if d.times { 't' } else { 'T' }));
    s.push(bit(Item::PERMS, 'p'));
    s.push(bit(Item::OWNER, 'o'));
    s.push(bit(Item::GROUP, 'g'));
    s.push_str("...");
    // rsync: a line that names no change at all shows spaces, not dots
    // (a hard link made again: `hf          b => a`)
    if matches!(update, '.' | 'h' | 'c') && s[2..].bytes().all(|b| b == b'.') {
        s.replace_range(2.., "         ");
    }
    s
}

/// A parsed `--out-format` (or the `%i %n%L` that `-i` means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFormat {
    pieces: Vec<Piece>,
    /// Which end of the transfer this run is, as rsync's client sees it.
    side: Side,
}

/// What `%o` and `%f` say: rsync's client is the sender in a local copy
/// and a push (`send`, `%f` the path as the source argument names it), the
/// receiver in a pull (`recv`, `%f` the name without a trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// Not said: `send` where the arrow is `<`, else `recv`.
    ByArrow,
    /// This run reads the source; `root` is what the names are relative
    /// to (`src` for `src/`, `.` for `src`), when there is one source.
    Sender { root: Option<Vec<u8>> },
    /// This run writes the destination.
    Receiver,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// An escape letter, with rsync's optional width (`%-10n`) and its
    /// count of `'` (1: digits in groups of three, `50,000`; 2: `50.00K`;
    /// 3: `48.83K`, powers of 1024).
    Escape {
        letter: char,
        width: Option<(bool, usize)>,
        humanize: u8,
    },
}

/// The escapes `--out-format` knows.
const LETTERS: &str = "nilbfMtoLphamPu";

/// Escapes rsync has that ferry's reports do not carry (the permission
/// string, owner and group ids, checksum bytes and rsync's checksums).
const NOT_CARRIED: &str = "BUGcC";

impl OutFormat {
    /// What `-i` prints: rsync's `%i %n%L`.
    pub fn itemize() -> Self {
        Self::parse("%i %n%L").expect("a valid format")
    }

    /// Which side of the transfer prints it.
    pub fn side(&self) -> &Side {
        &self.side
    }

    /// The same format, printed from `side` of the transfer.
    pub fn on(self, side: Side) -> Self {
        OutFormat { side, ..self }
    }

    /// Reads rsync's format: text with `%n %i %l %b %f %M %t %o %L %%`, an
    /// escape optionally with a width (`%-10n`, `%8l`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            if it.peek() == Some(&'%') {
                it.next();
                text.push('%');
                continue;
            }
            let mut humanize = 0u8;
            while it.next_if_eq(&'\'').is_some() {
                humanize = humanize.saturating_add(1);
            }
            let left = it.next_if_eq(&'-').is_some();
            let mut digits = String::new();
            while let Some(d) = it.next_if(|c| c.is_ascii_digit()) {
                digits.push(d);
            }
            while it.next_if_eq(&'\'').is_some() {
                humanize = humanize.saturating_add(1);
            }
            let letter = match it.next() {
                Some(l) if LETTERS.contains(l) => l,
                Some(l) if NOT_CARRIED.contains(l) => {
                    return Err(format!(
                        "--out-format: %{l} is rsync's but ferry does not report it (known: %n %i %l %b %f %M %t %o %L %p %%)"
                    ))
                }
                Some(l) => {
                    return Err(format!(
                        "--out-format: unknown escape %{l} (known: %n %i %l %b %f %M %t %o %L %p %%)"
                    ))
                }
                None => return Err("--out-format: a % at the end".into()),
            };
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            let width = match digits.parse::<usize>() {
                Ok(w) if w <= 4096 => Some((left, w)),
                Ok(_) => return Err("--out-format: a width over 4096".into()),
                Err(_) => None,
            };
            out.push(Piece::Escape {
                letter,
                width,
                humanize,
            });
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        Ok(OutFormat {
            pieces: out,
            side: Side::ByArrow,
        })
    }

    /// Has `%letter`.
    fn has(&self, letter: char) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Escape { letter: l, .. } if *l == letter))
    }

    /// A deletion is shown in this format only with `%i` or `%o` in it;
    /// otherwise rsync prints `deleting %n`.
    pub fn shows_deletions(&self) -> bool {
        self.has('i') || self.has('o')
    }

    /// Shows `%i`: every itemized change is a line, attributes alone too
    /// (rsync prints only transfers for a format without it).
    pub fn itemizes(&self) -> bool {
        self.has('i')
    }

    /// The line for one entry (no newline).
    pub fn render(&self, l: &Line, d: Direction, now: i64) -> String {
        let mut s = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Escape {
                    letter,
                    width,
                    humanize,
                } => {
                    let v = match letter {
                        'n' => escape(l.name),
                        'f' => escape(&self.full_name(l)),
                        'i' => code(l, d),
                        'l' => big_num(length(l), *humanize),
                        'b' => big_num(l.wire, *humanize),
                        'M' => datetime(l.mtime, '-'),
                        't' => datetime(now, ' '),
                        'o' => {
                            let sender = match self.side {
                                Side::ByArrow => d.arrow == '<',
                                Side::Sender { .. } => true,
                                Side::Receiver => false,
                            };
                            match (l.deleted, sender) {
                                (true, _) => "del.".into(),
                                (false, true) => "send".into(),
                                (false, false) => "recv".into(),
                            }
                        }
                        'L' if l.detail.is_empty() => String::new(),
                        'L' => format!(" {}", escape(l.detail)),
                        'p' => std::process::id().to_string(),
                        // what only a daemon knows: rsync's client prints
                        // %h %a %P %u as they are and %m as nothing
                        'm' => String::new(),
                        other => format!("%{other}"),
                    };
                    match width {
                        Some((true, w)) => s.push_str(&format!("{v:<w$}")),
                        Some((false, w)) => s.push_str(&format!("{v:>w$}")),
                        None => s.push_str(&v),
                    }
                }
            }
        }
        s
    }
}

impl OutFormat {
    /// `%f`: on the sending side the path the source argument gives
    /// (`src/` then `a.txt` is `src/a.txt`), without a leading `/` (rsync
    /// strips it); elsewhere the name without a trailing `/`.
    fn full_name(&self, l: &Line) -> Vec<u8> {
        let name = l.name.strip_suffix(b"/").unwrap_or(l.name);
        let Side::Sender { root: Some(root) } = &self.side else {
            return name.to_vec();
        };
        if l.deleted {
            return name.to_vec();
        }
        let mut joined = root.clone();
        joined.push(b'/');
        joined.extend_from_slice(name);
        // rsync's clean_fname: no empty or `.` parts but a last `.`, and
        // no leading `/`
        let parts: Vec<&[u8]> = joined.split(|&b| b == b'/').collect();
        let last = parts.len() - 1;
        let kept: Vec<&[u8]> = parts
            .iter()
            .enumerate()
            .filter(|(i, p)| !p.is_empty() && (**p != b"." || *i == last))
            .map(|(_, p)| *p)
            .collect();
        if kept.is_empty() {
            return b".".to_vec();
        }
        kept.join(&b'/')
    }
}

/// `%l`: a file's size, a link's target length (as rsync's list gives
/// it); 0 for a directory, where rsync shows the directory's own size.
fn length(l: &Line) -> u64 {
    if l.item.has(Item::SYMLINK) && !l.deleted {
        if let Some(target) = l.detail.strip_prefix(b"-> ") {
            return target.len() as u64;
        }
    }
    l.size
}

/// A number as rsync's `%'l` prints it: one `'` groups digits by three
/// (`50,000`), two give `50.00K` (powers of 1000), three powers of 1024.
pub fn big_num(n: u64, humanize: u8) -> String {
    if humanize > 1 {
        let mult: f64 = if humanize == 2 { 1000.0 } else { 1024.0 };
        if n as f64 >= mult {
            let mut v = n as f64 / mult;
            let mut units = ['K', 'M', 'G', 'T', 'P'].into_iter();
            let mut unit = units.next().unwrap_or('K');
            while v >= mult {
                match units.next() {
                    Some(u) => {
                        v /= mult;
                        unit = u;
                    }
                    None => break,
                }
            }
            return format!("{v:.2}{unit}");
        }
    }
    let digits = n.to_string();
    if humanize == 0 {
        return digits;
    }
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026/01/02` and `03:04:05` (UTC) joined by `sep`: rsync's `%M` uses `-`,
/// `%t` and the log file a space.
pub fn datetime(secs: i64, sep: char) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}/{m:02}/{d:02}{sep}{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `--log-file`: lines appended as rsync lays them out,
/// `YYYY/MM/DD HH:MM:SS [PID] text`; the file is made 0600 if missing.
pub struct LogFile {
    file: std::fs::File,
    pid: u32,
}

impl LogFile {
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                format!(
                    "--log-file: cannot open {}: {}",
                    path.display(),
                    crate::error::io_text(&e)
                )
            })?;
        Ok(LogFile {
            file,
            pid: std::process::id(),
        })
    }

    /// Appends one line.
    pub fn line(&mut self, text: &str) {
        let _ = writeln!(self.file, "{} [{}] {text}", datetime(now(), ' '), self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(item: u32) -> Line<'static> {
        Line {
            name: b"d/f",
            item: Item(item),
            deleted: false,
            size: 12,
            wire: 7,
            mtime: 1_600_000_000,
            detail: b"",
        }
    }

    const PULL: Direction = Direction {
        arrow: '>',
        times: true,
    };

    #[test]
    fn codes_as_rsync_prints_them() {
        let new = Item::NEW | Item::SENT | Item::UPDATED;
        assert_eq!(code(&line(new), PULL), ">f+++++++++");
        let push = Direction {
            arrow: '<',
            times: true,
        };
        let changed = Item::SENT | Item::SIZE | Item::TIME;
        assert_eq!(code(&line(changed), push), "<f.st......");
        assert_eq!(code(&line(Item::PERMS), PULL), ".f...p.....");
        assert_eq!(code(&line(Item::DIR | Item::TIME), PULL), ".d..t......");
        assert_eq!(code(&line(Item::DIR | Item::NEW), PULL), "cd+++++++++");
        assert_eq!(code(&line(Item::SYMLINK | Item::NEW), PULL), "cL+++++++++");
        assert_eq!(
            code(&line(Item::SYMLINK | Item::CHANGED), PULL),
            "cLc........"
        );
        let no_t = Direction {
            arrow: '>',
            times: false,
        };
        assert_eq!(code(&line(changed), no_t), ">f.sT......");
        let mut del = line(0);
        del.deleted = true;
        assert_eq!(code(&del, PULL), "*deleting  ");
    }

    #[test]
    fn a_line_naming_no_change_shows_spaces_as_rsync_does() {
        assert_eq!(code(&line(Item::HARDLINK), PULL), "hf         ");
        assert_eq!(
            code(&line(Item::HARDLINK | Item::TIME), PULL),
            "hf..t......"
        );
        assert_eq!(code(&line(Item::HARDLINK | Item::NEW), PULL), "hf+++++++++");
    }

    #[test]
    fn out_format_escapes() {
        let f = OutFormat::parse("%o %n %l/%b %M %-6i|%% %f").unwrap();
        let l = line(Item::NEW | Item::SENT);
        assert_eq!(
            f.render(&l, PULL, 0),
            "recv d/f 12/7 2020/09/13-12:26:40 >f+++++++++|% d/f"
        );
        assert!(!f.itemizes() || f.render(&l, PULL, 0).contains('+'));
        assert_eq!(
            OutFormat::parse("%t").unwrap().render(&l, PULL, 0),
            "1970/01/01 00:00:00"
        );
        assert!(OutFormat::parse("%q").unwrap_err().contains("%q"));
        assert!(OutFormat::parse("50%").is_err());
        assert!(OutFormat::itemize().itemizes());
        assert!(!OutFormat::parse("%n").unwrap().itemizes());
    }

    #[test]
    fn rsyncs_client_escapes() {
        assert_eq!(big_num(50_000, 0), "50000");
        assert_eq!(big_num(50_000, 1), "50,000");
        assert_eq!(big_num(1_234_567, 1), "1,234,567");
        assert_eq!(big_num(999, 1), "999");
        assert_eq!(big_num(50_000, 2), "50.00K");
        assert_eq!(big_num(4096, 3), "4.00K");
        assert_eq!(big_num(999, 2), "999");
        let push = |root: &str| Side::Sender {
            root: Some(root.as_bytes().to_vec()),
        };
        let f = OutFormat::parse("%o|%f|%'l|%h|%m|%p").unwrap();
        let l = line(Item::NEW | Item::SENT);
        let pid = std::process::id();
        assert_eq!(
            f.clone().on(push("/tmp/x/src")).render(&l, PULL, 0),
            format!("send|tmp/x/src/d/f|12|%h||{pid}")
        );
        assert_eq!(
            f.clone().on(Side::Receiver).render(&l, PULL, 0),
            format!("recv|d/f|12|%h||{pid}")
        );
        let mut root = line(Item::DIR);
        root.name = b"./";
        assert_eq!(
            OutFormat::parse("%f")
                .unwrap()
                .on(push("t/src"))
                .render(&root, PULL, 0),
            "t/src/."
        );
        assert_eq!(
            OutFormat::parse("%f")
                .unwrap()
                .on(push(""))
                .render(&l, PULL, 0),
            "d/f"
        );
        let mut link = line(Item::SYMLINK | Item::NEW);
        link.detail = b"-> /usr/bin/python3";
        assert_eq!(OutFormat::parse("%l").unwrap().render(&link, PULL, 0), "16");
        assert!(OutFormat::parse("%B")
            .unwrap_err()
            .contains("does not report"));
        let plain = OutFormat::parse("%n").unwrap();
        assert!(!plain.shows_deletions());
        assert!(OutFormat::parse("%o %n").unwrap().shows_deletions());
    }
}
