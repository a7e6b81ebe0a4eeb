//! The rules for a hole of a sparse file sent whole (`-S`,
//! [`Message::Hole`](crate::proto::Message::Hole)), sans-IO: a plain
//! function of what the file holds so far and what the hole says, like the
//! other cores ([`super::intake`], [`super::recipe`]). Not for extending the
//! file over the hole (the store's [`TempWrite::hole`]) nor for its check
//! ([`crate::chunk::WholeCheck::hole`]).
//!
//! # Security
//! A hole is untrusted: it costs the sender a few bytes and the receiver
//! nothing but apparent size, so each is held to the file it is for. It must
//! have been agreed on for the session, start exactly where the file's bytes
//! so far end (no overlap with what was written, no gap), and end within the
//! size the file was listed with. Anything else ends the session as a
//! [`Violation`]; the file is never published.
//!
//! [`TempWrite::hole`]: crate::store::destination::TempWrite::hole

use super::Violation;

/// What a hole's file is at when the hole arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct HoleAt {
    /// The session agreed on hole messages ([`crate::proto::Options::sparse_holes`]).
    pub agreed: bool,
    /// Where the file's bytes so far end (data and holes).
    pub written: u64,
    /// The file's size in the list.
    pub listed: u64,
}

/// Whether the hole of `len` bytes at `offset` of `file` may be taken.
pub(super) fn check_hole(file: u32, at: HoleAt, offset: u64, len: u64) -> Result<(), Violation> {
    let bad = |what: String| Err(Violation(format!("sent a hole for file {file} {what}")));
    if !at.agreed {
        return bad("in a session that did not agree on hole messages".into());
    }
    if len == 0 {
        return bad(format!("at {offset} with no length"));
    }
    if offset < at.written {
        return bad(format!(
            "at {offset}, overlapping its bytes already sent (up to {})",
            at.written
        ));
    }
    if offset > at.written {
        return bad(format!(
            "at {offset}, leaving a gap after its bytes so far (up to {})",
            at.written
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= at.listed => Ok(()),
        _ => bad(format!(
            "at {offset} of {len} bytes, past its listed size of {}",
            at.listed
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_starts_where_the_bytes_end_and_stays_within_the_size() {
        let at = |written| HoleAt {
            agreed: true,
            written,
            listed: 1000,
        };
        // (written so far, offset, length, refused with)
        let cases: [(u64, u64, u64, Option<&str>); 9] = [
            (0, 0, 1000, None),
            (10, 10, 990, None),
            (10, 10, 1, None),
            (10, 10, 991, Some("past its listed size of 1000")),
            (10, 10, u64::MAX, Some("past its listed size")),
            (
                10,
                5,
                10,
                Some("overlapping its bytes already sent (up to 10)"),
            ),
            (10, 11, 10, Some("leaving a gap")),
            (1000, 1000, 1, Some("past its listed size")),
            (10, 10, 0, Some("with no length")),
        ];
        for (written, offset, len, refused) in cases {
            let got = check_hole(7, at(written), offset, len);
            match refused {
                None => assert_eq!(got, Ok(()), "{written} {offset} {len}"),
                Some(text) => {
                    let Err(Violation(v)) = got else {
                        panic!("{written} {offset} {len} taken")
                    };
                    assert!(v.starts_with("sent a hole for file 7 "), "{v}");
                    assert!(v.contains(text), "{v}");
                }
            }
        }
        let unagreed = HoleAt {
            agreed: false,
            ..at(0)
        };
        assert!(check_hole(0, unagreed, 0, 1).is_err());
    }
}
