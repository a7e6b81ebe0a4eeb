//! What changed about one entry, as the receiver saw it: the facts behind
//! rsync's `--itemize-changes` letters (new, data sent, size, time, perms,
//! owner, group, link target), the bytes of the file that crossed the wire
//! and the check value it was verified with. These travel in an `Itemized`
//! event (see [`super::Report::Itemized`]), sent only to a requester that asked
//! for them with [`super::Options::itemize`]. Rendering the letters is the
//! command line's job (`cli::itemize`), not this module's.

use super::codec::{Reader, Writer};
use super::DecodeError;

/// The change bits of an itemized entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Item(pub u32);

impl Item {
    /// The entry did not exist at the destination (`+++++++++`).
    pub const NEW: u32 = 1;
    /// The file's data was sent (rsync's `<`/`>`).
    pub const SENT: u32 = 1 << 1;
    /// A symlink's target changed, or (`-c`) a file's checksum (`c`).
    pub const CHANGED: u32 = 1 << 2;
    /// The size differed (`s`).
    pub const SIZE: u32 = 1 << 3;
    /// The modification time differed (`t`, or `T` when times are not kept).
    pub const TIME: u32 = 1 << 4;
    /// The permissions differed (`p`).
    pub const PERMS: u32 = 1 << 5;
    /// The owner differed (`o`).
    pub const OWNER: u32 = 1 << 6;
    /// The group differed (`g`).
    pub const GROUP: u32 = 1 << 7;
    /// Made as a hard link to an earlier file (`h`).
    pub const HARDLINK: u32 = 1 << 8;
    /// The entry is a directory (`d`).
    pub const DIR: u32 = 1 << 9;
    /// The entry is a symlink (`L`).
    pub const SYMLINK: u32 = 1 << 10;
    /// The entry was created or updated: a requester that does not itemize
    /// would have been told of it (`-v` lists it); without this bit only
    /// its attributes changed.
    pub const UPDATED: u32 = 1 << 11;
    /// The event's text carries the file's check value: the XXH3-128 of its
    /// bytes (the first 16 of the 32) for a file sent whole, unless one of
    /// the next two bits says otherwise.
    pub const CHECK: u32 = 1 << 12;
    /// The check value is the keyed BLAKE3 of a file rebuilt from data the
    /// receiver had (its key drawn for this transfer).
    pub const CHECK_KEYED: u32 = 1 << 13;
    /// The check value is the BLAKE3 of the check values of the file's
    /// segments (a large file sent over several streams).
    pub const CHECK_SEGMENTS: u32 = 1 << 14;
    /// The check value is that of a file with holes (`-S`): the XXH3-128 of
    /// its data bytes, then the XXH3-128 of its holes' extents and size.
    pub const CHECK_SPARSE: u32 = 1 << 15;
    /// Every bit this build knows.
    pub const ALL: u32 = (1 << 16) - 1;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// The parts of an `Itemized` event's text: the file's bytes that crossed
/// the wire, its modification time (seconds), its check value when
/// [`Item::CHECK`] is set, and the detail (`-> target`, `=> file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemText {
    pub wire: u64,
    pub mtime: i64,
    pub check: Option<[u8; 32]>,
    pub detail: Vec<u8>,
}

/// The text of an `Itemized` event: wire bytes (varint), mtime (zig-zag
/// varint), the check value (32 bytes, when [`Item::CHECK`] is set), then the
/// detail to the end.
pub fn encode_text(
    item: Item,
    wire: u64,
    mtime: i64,
    check: Option<&[u8; 32]>,
    detail: &[u8],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.varint(wire);
    w.i64(mtime);
    if item.has(Item::CHECK) {
        w.hash(check.unwrap_or(&[0; 32]));
    }
    w.raw(detail);
    w.buf
}

/// Reads what [`encode_text`] wrote; refuses unknown bits and short texts.
pub fn decode_text(item: Item, text: &[u8]) -> Result<ItemText, DecodeError> {
    if item.0 & !Item::ALL != 0 {
        return Err(DecodeError::Invalid("itemized event bits"));
    }
    let mut r = Reader::new(text);
    let wire = r.varint("itemized event")?;
    let mtime = r.i64("itemized mtime")?;
    let check = match item.has(Item::CHECK) {
        true => Some(r.hash("itemized check value")?),
        false => None,
    };
    let detail = r.take(r.remaining(), "itemized detail")?.to_vec();
    Ok(ItemText {
        wire,
        mtime,
        check,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Event, EventKind, Message, Options, Report, Request, Role};

    /// An `Itemized` report travels as an event of kind 6 and comes back
    /// whole; bits this build does not know, or a text too short for its
    /// check value, are refused when decoded.
    #[test]
    fn itemized_events_round_trip() {
        let r = Report::Itemized {
            name: b"d/f".to_vec(),
            size: 1000,
            item: Item(Item::SENT | Item::SIZE | Item::UPDATED | Item::CHECK),
            wire: 600,
            mtime: 1_600_000_000,
            check: Some([9; 32]),
            detail: Vec::new(),
        };
        let e = Event::from(r.clone());
        assert_eq!(e.kind, EventKind::Itemized);
        let bytes = Message::Event(e).to_payload();
        assert_eq!(bytes[..2], [14, 6]);
        match Message::decode(&bytes).unwrap() {
            Message::Event(e) => assert_eq!(e.report(), r),
            m => panic!("{m:?}"),
        }
        // an unknown bit, a check value announced and missing
        let text = encode_text(Item(Item::NEW), 0, 0, None, b"");
        for (b, want) in [
            (1u64 << 20, DecodeError::Invalid("itemized event bits")),
            (
                (Item::NEW | Item::CHECK) as u64,
                DecodeError::Truncated("itemized check value"),
            ),
            (1u64 << 40, DecodeError::Invalid("itemized event bits")),
        ] {
            let e = Event {
                kind: EventKind::Itemized,
                name: b"f".to_vec(),
                a: 0,
                b,
                text: text.clone(),
            };
            assert_eq!(Message::decode(&Message::Event(e).to_payload()), Err(want));
        }
    }

    /// `itemize` rides in the options' extension block (tag 24) and is not
    /// sent to a version-2 peer, which would not know it.
    #[test]
    fn itemize_option_round_trips() {
        let o = Options {
            itemize: true,
            recursive: true,
            ..Options::default()
        };
        let req = Message::Request(Request {
            role: Role::ServerReceives,
            paths: vec![b"x".to_vec()],
            options: o.clone(),
        });
        assert_eq!(Message::decode(&req.to_payload()), Ok(req));
        assert!(!o.for_peer(2).unwrap().itemize);
        assert!(o.for_peer(3).unwrap().itemize);
    }

    #[test]
    fn text_round_trips() {
        let item = Item(Item::NEW | Item::SENT | Item::CHECK | Item::UPDATED);
        let t = encode_text(item, 300, -5, Some(&[7; 32]), b"");
        let want = ItemText {
            wire: 300,
            mtime: -5,
            check: Some([7; 32]),
            detail: Vec::new(),
        };
        assert_eq!(decode_text(item, &t), Ok(want));
        let link = Item(Item::SYMLINK | Item::NEW);
        let t = encode_text(link, 0, 1_600_000_000, None, b"-> x");
        assert_eq!(decode_text(link, &t).unwrap().detail, b"-> x");
        assert!(decode_text(Item(1 << 20), &t).is_err());
        assert!(decode_text(item, &[0, 1, 2]).is_err());
    }
}
