//! Framing: every message travels as `u32 little-endian length` + payload.
//!
//! [`split_frame`] looks at buffered bytes and says whether a whole frame is there
//! ([`FrameStatus::Incomplete`] is not an error: read more) or the peer announced a
//! frame over [`MAX_FRAME`] (an error before any allocation). It does no I/O; the
//! transport layer feeds it.

use super::DecodeError;

/// The largest payload a frame may carry. Data blocks are at most
/// [`super::BLOCK_SIZE`] plus a small header, so 2 MiB leaves room without letting
/// a peer make us buffer much.
pub const MAX_FRAME: usize = 2 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// Not enough bytes yet: `need` is how many the whole frame takes.
    Incomplete { need: usize },
    /// A complete frame: payload is `buf[4..4 + len]`.
    Complete { len: usize },
}

/// Checks whether `buf` starts with a complete frame.
pub fn split_frame(buf: &[u8]) -> Result<FrameStatus, DecodeError> {
    if buf.len() < 4 {
        return Ok(FrameStatus::Incomplete { need: 4 });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::TooLarge {
            what: "frame",
            limit: MAX_FRAME,
        });
    }
    if buf.len() < 4 + len {
        return Ok(FrameStatus::Incomplete { need: 4 + len });
    }
    Ok(FrameStatus::Complete { len })
}

/// Reads a frame header and returns the payload length it announces, checked
/// against [`MAX_FRAME`].
pub fn payload_len(header: [u8; 4]) -> Result<usize, DecodeError> {
    match split_frame(&header)? {
        FrameStatus::Incomplete { need } => Ok(need - 4),
        FrameStatus::Complete { len } => Ok(len),
    }
}

/// Appends one frame holding `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_then_complete() {
        let mut out = Vec::new();
        put_frame(&mut out, b"hello");
        for cut in 0..out.len() {
            assert!(matches!(
                split_frame(&out[..cut]).unwrap(),
                FrameStatus::Incomplete { .. }
            ));
        }
        assert_eq!(split_frame(&out).unwrap(), FrameStatus::Complete { len: 5 });
    }

    #[test]
    fn oversize_rejected_before_payload_arrives() {
        let header = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            split_frame(&header),
            Err(DecodeError::TooLarge { what: "frame", .. })
        ));
    }
}
