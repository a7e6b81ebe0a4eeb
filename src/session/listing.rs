//! What the receiver keeps of the file list: entries by index while they are
//! needed, and a fingerprint of every name — so that its memory follows the
//! entries in play (at most [`crate::proto::LIST_AHEAD`] ahead, those being
//! transferred, the directories), not the length of the list.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The tables below are keyed by numbers nobody else chooses: the list's own
/// indices (0, 1, 2, … as entries arrive) and name fingerprints already keyed
/// at random. Hashing those again with SipHash was ~7% of a re-sync's
/// receiving thread; a multiply by the golden ratio spreads them as well.
///
/// # Security
/// Not for keys a peer picks. An index is this side's count, but a peer
/// chooses which indices stay kept (by which entries are directories or in
/// flight): a multiply alone maps indices one-to-one onto buckets, yet a
/// peer that knew it could keep indices whose buckets are contiguous and
/// lengthen every probe. So the index is first XORed with a key drawn once
/// per process, which the peer never sees. A fingerprint is under a key the
/// peer never sees already.
#[derive(Default, Clone, Copy)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ spread_key()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SpreadState = BuildHasherDefault<Spread>;

/// [`Spread`]'s key: random, drawn once per process.
fn spread_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| RandomState::new().hash_one(0x5eed_u64))
}

/// List entries by their index in the list; settled ones can be let go.
pub struct Listing<T> {
    kept: HashMap<u32, T, SpreadState>,
    count: u32,
    /// Entries below this were looked at by [`Listing::let_go`] already…
    swept: u32,
    /// …and of those, these were kept for now, to be looked at again.
    for_now: Vec<u32>,
}

/// What [`Listing::let_go`] does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Let it go.
    No,
    /// Keep it, and ask again next time (a file still in flight).
    ForNow,
    /// Keep it to the end of the transfer, without asking again.
    ToTheEnd,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            kept: HashMap::default(),
            count: 0,
            swept: 0,
            for_now: Vec::new(),
        }
    }
}

impl<T> Listing<T> {
    /// Adds the next entry of the list.
    pub fn push(&mut self, entry: T) {
        self.kept.insert(self.count, entry);
        self.count += 1;
    }

    /// Entries listed so far, kept or not.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `index`, unless it was let go (or never listed).
    pub fn get(&self, index: usize) -> Option<&T> {
        self.kept.get(&u32::try_from(index).ok()?)
    }

    /// Lets go of the entries below `below` that `keep` does not want. Each
    /// entry is asked about once, or again while it answers [`Keep::ForNow`]:
    /// a call costs what was listed since the last one, not what is kept
    /// (with `-H` that is every file).
    pub fn let_go(&mut self, below: u32, mut keep: impl FnMut(u32, &T) -> Keep) {
        let below = below.min(self.count);
        let again = std::mem::take(&mut self.for_now);
        for i in again.into_iter().chain(self.swept..below) {
            match self.kept.get(&i).map(|e| keep(i, e)) {
                Some(Keep::No) => {
                    self.kept.remove(&i);
                }
                Some(Keep::ForNow) => self.for_now.push(i),
                Some(Keep::ToTheEnd) | None => {}
            }
        }
        self.swept = self.swept.max(below);
        if self.kept.capacity() > 4 * self.kept.len().max(1024) {
            self.kept.shrink_to_fit();
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.kept.len()
    }
}

impl<T> std::ops::Index<usize> for Listing<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        self.get(index).expect("a list entry still in play")
    }
}

impl<T> std::ops::IndexMut<usize> for Listing<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        self.kept
            .get_mut(&(index as u32))
            .expect("a list entry still in play")
    }
}

/// The destination names of the list, as 64-bit fingerprints keyed at random
/// for each transfer (~16 bytes a name instead of the name): enough to refuse
/// a name listed twice and to tell listed files from extraneous ones for
/// `--delete`. Two names share a fingerprint with odds of about n²/2⁶⁵ (10⁻⁸
/// for a million names), and then the second is refused as listed twice, or an
/// extraneous file is kept: never a file lost.
pub struct Names {
    seen: HashSet<u64, SpreadState>,
    key: RandomState,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            seen: HashSet::default(),
            key: RandomState::new(),
        }
    }
}

impl Names {
    /// Records `name`; false if it was recorded before.
    pub fn insert(&mut self, name: &[u8]) -> bool {
        let h = self.key.hash_one(name);
        self.seen.insert(h)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.seen.contains(&self.key.hash_one(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_let_go_are_gone_and_the_rest_stay_at_their_index() {
        let mut l = Listing::default();
        for i in 0..100u32 {
            l.push(i * 10);
        }
        // every tenth to the end, 33 for now, the rest below 50 let go
        let keep = |i: u32, _: &u32| match i {
            _ if i.is_multiple_of(10) => Keep::ToTheEnd,
            33 => Keep::ForNow,
            _ => Keep::No,
        };
        l.let_go(50, keep);
        assert_eq!(l.len(), 100);
        assert_eq!(l.kept(), 56);
        assert_eq!(l.get(20), Some(&200));
        assert_eq!(l.get(21), None);
        assert_eq!(l.get(33), Some(&330));
        assert_eq!(l[60], 600);
        l[60] = 7;
        assert_eq!(l[60], 7);
        // next time 33 is asked again (and goes), kept ones are not asked
        let mut asked = Vec::new();
        l.let_go(52, |i, _| {
            asked.push(i);
            Keep::No
        });
        assert_eq!(asked, [33, 50, 51]);
        assert_eq!(l.get(33), None);
        assert_eq!(l.get(20), Some(&200));
        assert_eq!(l.kept(), 53);
    }

    #[test]
    fn names_are_told_apart() {
        let mut n = Names::default();
        assert!(n.insert(b"a/b"));
        assert!(!n.insert(b"a/b"));
        assert!(n.insert(b"a/c"));
        assert!(n.contains(b"a/c"));
        assert!(!n.contains(b"a"));
    }
}
