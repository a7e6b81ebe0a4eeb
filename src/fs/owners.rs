//! `--chown USER:GROUP` on the receiving host: a user or group named by
//! number, or by name as this host's `/etc/passwd` and `/etc/group` know it
//! (rsync resolves `--chown` names on the receiver too). Not for keeping
//! owners (`-o`/`-g` keep numbers, as rsync's `--numeric-ids`).

use std::path::Path;

/// The uid and gid `--chown` gives every entry (`None`: left as sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chown {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Chown {
    /// Parses `USER:GROUP`, `USER`, `:GROUP` (each a name or a number),
    /// names looked up on this host.
    pub fn parse(spec: &[u8]) -> Result<Chown, String> {
        Self::parse_with(spec, Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    fn parse_with(spec: &[u8], passwd: &Path, group: &Path) -> Result<Chown, String> {
        let spec = std::str::from_utf8(spec).map_err(|_| "--chown: not UTF-8".to_string())?;
        let (user, grp) = spec.split_once(':').unwrap_or((spec, ""));
        let look = |name: &str, db: &Path, what: &str| -> Result<Option<u32>, String> {
            if name.is_empty() {
                return Ok(None);
            }
            if let Ok(n) = name.parse::<u32>() {
                return Ok(Some(n));
            }
            let text = std::fs::read_to_string(db).unwrap_or_default();
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let n = f.next()?;
                    let id = f.nth(1)?.parse::<u32>().ok()?;
                    (n == name).then_some(id)
                })
                .next()
                .map(Some)
                .ok_or_else(|| format!("--chown: no {what} named {name:?} on this host"))
        };
        let c = Chown {
            uid: look(user, passwd, "user")?,
            gid: look(grp, group, "group")?,
        };
        if c.uid.is_none() && c.gid.is_none() {
            return Err("--chown: give USER, :GROUP or USER:GROUP".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let t = tempfile::tempdir().unwrap();
        let (p, g) = (t.path().join("passwd"), t.path().join("group"));
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(&g, "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let parse = |s: &str| Chown::parse_with(s.as_bytes(), &p, &g);
        assert_eq!(
            parse("nobody:nogroup"),
            Ok(Chown {
                uid: Some(65534),
                gid: Some(65534)
            })
        );
        assert_eq!(
            parse("12:34"),
            Ok(Chown {
                uid: Some(12),
                gid: Some(34)
            })
        );
        assert_eq!(parse(":root").unwrap().uid, None);
        assert_eq!(parse("root").unwrap().gid, None);
        assert!(parse("ghost:root")
            .unwrap_err()
            .contains("no user named \"ghost\""));
        assert!(parse(":").is_err());
    }
}
