//! The fuzz harness for the record reader (`fuzz/fuzz_targets/tls_record.rs`),
//! here so that the unit tests replay the same seeds through it and so that it
//! reaches the reader's insides. It is for fuzzing and tests only: nothing in
//! ferry calls it.
//!
//! The fuzz input is a script. A peer that knows the reader's keys (the
//! scripted key schedule, [`Keys::Scripted`]) writes records, honest and
//! hostile: application data of every length up to the limit and past it,
//! padding, alerts, KeyUpdates anywhere, post-handshake messages whole and cut
//! short, content types that may not come, records altered, replayed, sealed
//! with the wrong key, raw bytes, and anything after close_notify. Sealing is
//! done here with aws-lc-rs directly, not with `record`, so that the reader is
//! not checked against itself. The reader then reads it all through memory
//! that hands it out in pieces of the sizes the input picks, into buffers of
//! the sizes it picks, while the writer half sends between reads.
//!
//! A model kept beside the script says what must come out: the application
//! data, then close (close_notify), truncation (no close_notify), or the error
//! and the alert that goes back. The reader must agree exactly, must not hold
//! more than its read buffer, and what its writer half sent must open with the
//! scripted keys: KeyUpdates the peer asked for, the data written, and one
//! alert at the end.

use super::keys::{scripted, Keys, SCRIPTED_RX, SCRIPTED_TX};
use super::reader::READ_BUFFER;
use super::{halves, lock, Socket};
use crate::transport::record::{self, HEADER, MAX_CIPHERTEXT, MAX_PLAINTEXT};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{AlertDescription, ConnectionTrafficSecrets};
use std::io::{self, Read, Write};
use std::time::Duration;

/// Wire bytes a script may produce, and steps it may take: enough for
/// many full records, small enough that a run stays quick.
const MAX_WIRE: usize = 1 << 20;
const MAX_OPS: usize = 256;

/// Sizes the socket hands out and the caller reads with: around a header, a
/// record, the plaintext limit, the read buffer.
const PIECES: [usize; 8] = [1, 3, 5, 21, 4096, 16_405, 65_536, 1 << 20];
const READS: [usize; 10] = [
    1, 2, 16, 4096, 16_383, 16_384, 16_385, 16_624, 65_536, 300_000,
];
/// Plaintext lengths a record is likely to carry: empty, one byte, around the
/// limit.
const LENGTHS: [usize; 6] = [0, 1, 2, 16_383, 16_384, 255];

/// Runs one script. Panics if the reader and the model disagree.
pub fn run(input: &[u8]) {
    let mut input = Input(input);
    let rest_pick = input.byte();
    let pieces: Vec<usize> = (0..4).map(|_| PIECES[input.pick(8)]).collect();
    let reads: Vec<usize> = (0..4).map(|_| READS[input.pick(10)]).collect();
    let writes: Vec<u8> = (0..4).map(|_| input.byte() % 4).collect();

    let mut script = Script::new();
    let mut ops = 0;
    while !input.0.is_empty() && ops < MAX_OPS && script.wire.len() < MAX_WIRE {
        script.op(&mut input);
        ops += 1;
    }
    let want = script.want.clone().unwrap_or(Want::Truncated);

    // the first bytes may already be in the reader's buffer, as when they
    // arrive with the end of the handshake
    let rest = match rest_pick % 4 {
        0 | 1 => 0,
        2 => (rest_pick as usize).min(script.wire.len()),
        _ => script.wire.len() / 2,
    };
    let (mut reader, mut writer) = halves(
        Memory::default(),
        Memory {
            input: script.wire.split_off(rest),
            pieces,
            ..Memory::default()
        },
        &(0, scripted(SCRIPTED_TX, 0)),
        &(0, scripted(SCRIPTED_RX, 0)),
        Keys::Scripted { tx: 0, rx: 0 },
        script.wire,
        Vec::new(),
    )
    .expect("scripted keys are good keys");

    let mut got = Vec::new();
    let mut written = Vec::new();
    let mut out = vec![0u8; READS[READS.len() - 1]];
    let end = (0..).find_map(|i: usize| {
        let n = reads[i % reads.len()];
        let r = reader.read(&mut out[..n]);
        assert!(reader.buf.len() <= READ_BUFFER.max(rest), "the buffer grew");
        match r {
            Ok(0) => Some(Ok(())),
            Ok(n) => {
                let want = script.data.get(got.len()..got.len() + n);
                assert!(want == Some(&out[..n]), "application data not sent");
                got.extend_from_slice(&out[..n]);
                // now and then the writer half sends too (a few bytes: a
                // record each), so that it answers KeyUpdates as it goes
                if i < 16 || i.is_multiple_of(64) {
                    let w = vec![i as u8; writes[i % writes.len()] as usize];
                    writer.write_all(&w).expect("the writer is open");
                    written.extend_from_slice(&w);
                }
                None
            }
            Err(e) => Some(Err(e)),
        }
    });
    assert!(got == script.data, "the application data differs");
    let end = end.expect("reads end");
    let alert = want.check(&end);

    // the writer's close_notify, unless a fatal alert went first
    drop(writer);
    let sent = std::mem::take(&mut lock(&reader.shared.tx).sock.output);
    check_sent(&sent, &written, script.asks, alert);
}

/// What the reader must end with.
#[derive(Clone, Debug)]
enum Want {
    /// close_notify came: a clean end.
    Closed,
    /// The bytes ran out without close_notify.
    Truncated,
    /// This error, and this alert back to the peer (none for an alert
    /// received).
    Fails(Failure, Option<AlertDescription>),
    /// Some error (after raw bytes, or a header altered): which depends on
    /// the bytes.
    Any,
}

#[derive(Clone, Debug)]
enum Failure {
    Altered,
    Text(String),
}

impl Want {
    /// Checks how the reader ended; returns the alert it must have sent, if
    /// that is known (`Some(None)`: none).
    fn check(&self, end: &io::Result<()>) -> Option<Option<AlertDescription>> {
        match (self, end) {
            (Want::Closed, Ok(())) => Some(None),
            (Want::Truncated, Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                assert_eq!(
                    e.to_string(),
                    "the peer closed the connection without ending the TLS session"
                );
                Some(None)
            }
            (Want::Fails(f, alert), Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                match f {
                    Failure::Altered => assert!(
                        e.get_ref().is_some_and(|i| i.is::<crate::error::Altered>()),
                        "{e}"
                    ),
                    Failure::Text(t) => assert_eq!(&e.to_string(), t),
                }
                Some(*alert)
            }
            (Want::Any, Err(_)) => None,
            (want, got) => panic!("wanted {want:?}, the reader ended with {got:?}"),
        }
    }
}

/// What the writer half sent must open with the scripted keys: one KeyUpdate
/// for each time it sent after the peer asked (asks before one send make one
/// update), the data written, then one alert, the last record.
fn check_sent(
    mut sent: &[u8],
    written: &[u8],
    asks: usize,
    alert: Option<Option<AlertDescription>>,
) {
    let mut opener = Sealer::new(SCRIPTED_TX);
    let (mut data, mut updates, mut last) = (Vec::new(), 0, None);
    while !sent.is_empty() {
        assert!(last.is_none(), "a record after the alert");
        let len = HEADER + record::payload_len(sent);
        let (rec, after) = sent.split_at(len);
        sent = after;
        let mut inner = opener.open(rec).expect("the writer's records open");
        let typ = inner.pop().expect("a content type");
        match typ {
            record::APPLICATION_DATA => data.extend_from_slice(&inner),
            record::HANDSHAKE => {
                assert_eq!(inner, [24, 0, 0, 1, 0], "a KeyUpdate, not requesting");
                opener.next_key();
                updates += 1;
            }
            record::ALERT => last = Some(inner),
            other => panic!("the writer sent content type {other}"),
        }
    }
    assert!(data == written, "the data written differs");
    assert!(
        updates <= asks && (asks == 0) == (updates == 0),
        "{updates} KeyUpdates sent for {asks} asked"
    );
    let last = last.expect("the writer ends with an alert");
    match alert {
        Some(None) => assert_eq!(last, [1, 0], "close_notify"),
        Some(Some(d)) => assert_eq!(last, [2, u8::from(d)]),
        None => assert!(last == [1, 0] || last[0] == 2, "{last:?}"),
    }
}

/// The fuzz input, read from the front; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn pick(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    /// A plaintext length: often one of [`LENGTHS`], else any up to the limit.
    fn plain_len(&mut self) -> usize {
        let v = self.u16() as usize;
        if v & 0x8000 != 0 {
            LENGTHS[v % LENGTHS.len()]
        } else {
            v % (MAX_PLAINTEXT + 1)
        }
    }
}

/// The peer's side of the script: the wire it writes and the model of what
/// the reader must make of it.
struct Script {
    wire: Vec<u8>,
    sealer: Sealer,
    /// The record last written whole, for a replay.
    last: Vec<u8>,
    /// Application data the reader must return, in order.
    data: Vec<u8>,
    /// Set by the first record that ends the session: what follows is read by
    /// nobody (garbage after close_notify, after an error).
    want: Option<Want>,
    /// KeyUpdates asking for ours, before the end.
    asks: usize,
    counter: u32,
}

impl Script {
    fn new() -> Script {
        Script {
            wire: Vec::new(),
            sealer: Sealer::new(SCRIPTED_RX),
            last: Vec::new(),
            data: Vec::new(),
            want: None,
            asks: 0,
            counter: 0,
        }
    }

    /// Plaintext nobody could mistake for other plaintext.
    fn plaintext(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let c = self.counter;
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31) ^ c.wrapping_mul(97)) as u8 | 1)
            .collect()
    }

    fn live(&self) -> bool {
        self.want.is_none()
    }

    fn end(&mut self, want: Want) {
        if self.live() {
            self.want = Some(want);
        }
    }

    fn fails(&mut self, text: String, alert: AlertDescription) {
        self.end(Want::Fails(Failure::Text(text), Some(alert)));
    }

    fn write(&mut self, rec: Vec<u8>) {
        self.wire.extend_from_slice(&rec);
        self.last = rec;
    }

    /// The model of a record of content type `typ` that opened.
    fn opened(&mut self, typ: u8, body: &[u8]) {
        match typ {
            record::APPLICATION_DATA => {
                if self.live() {
                    self.data.extend_from_slice(body);
                }
            }
            record::ALERT => match body {
                [_, 0] => self.end(Want::Closed),
                [_, 90] => {} // user_canceled: close_notify follows
                // bad_record_mac: the peer says ours were altered
                [_, 20] => self.end(Want::Fails(Failure::Altered, None)),
                [_, d] => {
                    let e = rustls::Error::AlertReceived(AlertDescription::from(*d));
                    self.end(Want::Fails(Failure::Text(e.to_string()), None));
                }
                _ => self.fails(
                    "TLS: a malformed alert".into(),
                    AlertDescription::DecodeError,
                ),
            },
            record::HANDSHAKE => self.handshake_messages(body),
            0 => self.fails(
                "TLS: a record without a content type".into(),
                AlertDescription::UnexpectedMessage,
            ),
            other => self.fails(
                format!("TLS: unexpected content type {other}"),
                AlertDescription::UnexpectedMessage,
            ),
        }
    }

    /// The model of post-handshake messages in one record: session tickets
    /// are ignored, a KeyUpdate must be the record's last message, anything
    /// else is refused. The key changes after the record.
    fn handshake_messages(&mut self, mut body: &[u8]) {
        let mut update = None;
        while !body.is_empty() {
            if body.len() < 4 {
                return self.cut_short();
            }
            let len = u32::from_be_bytes([0, body[1], body[2], body[3]]) as usize;
            if body.len() - 4 < len {
                return self.cut_short();
            }
            let (typ, msg) = (body[0], &body[4..4 + len]);
            body = &body[4 + len..];
            match (typ, msg) {
                (24, [asked @ (0 | 1)]) if body.is_empty() => update = Some(*asked == 1),
                (4, _) => {}
                _ => {
                    return self.fails(
                        format!("TLS: unexpected handshake message {typ} after the handshake"),
                        AlertDescription::UnexpectedMessage,
                    )
                }
            }
        }
        if let Some(asked) = update {
            if self.live() {
                self.sealer.next_key();
                self.asks += asked as usize;
            }
        }
    }

    fn cut_short(&mut self) {
        self.fails(
            "TLS: a post-handshake message cut short".into(),
            AlertDescription::DecodeError,
        )
    }

    /// Writes a record whose plaintext is `body` and content type `typ`
    /// (then `padding` zeros), and models it.
    fn seal(&mut self, typ: u8, body: &[u8], padding: usize) {
        let mut inner = body.to_vec();
        inner.push(typ);
        inner.resize(inner.len() + padding, 0);
        let rec = self.sealer.seal(record::APPLICATION_DATA, &inner);
        self.write(rec);
        let payload = inner.len() + TAG;
        if payload > MAX_CIPHERTEXT {
            // refused from its header, before it is opened
            self.fails(
                format!("TLS: a record of {payload} bytes"),
                AlertDescription::RecordOverflow,
            );
        } else if self.live() {
            // (after the end nothing is opened: the model must not change
            // the key for a KeyUpdate nobody reads)
            self.opened(typ, body);
        }
    }

    /// One step of the script.
    fn op(&mut self, input: &mut Input) {
        match input.byte() % 16 {
            // application data
            0 | 1 => {
                let len = input.plain_len();
                let data = self.plaintext(len);
                self.seal(record::APPLICATION_DATA, &data, 0);
            }
            // application data with padding, past the limit or not
            2 => {
                let len = input.plain_len();
                let padding = input.u16() as usize % 512;
                let data = self.plaintext(len);
                self.seal(record::APPLICATION_DATA, &data, padding);
            }
            // a record of exactly the most ciphertext, one byte more, or a
            // header announcing the most a header can
            3 => match input.pick(3) {
                0 => {
                    let data = self.plaintext(MAX_PLAINTEXT);
                    self.seal(record::APPLICATION_DATA, &data, 239);
                }
                1 => {
                    let data = self.plaintext(MAX_PLAINTEXT);
                    self.seal(record::APPLICATION_DATA, &data, 240);
                }
                _ => {
                    self.fails(
                        format!("TLS: a record of {} bytes", u16::MAX),
                        AlertDescription::RecordOverflow,
                    );
                    let mut rec = vec![record::APPLICATION_DATA, 3, 3, 0xff, 0xff];
                    rec.resize(HEADER + u16::MAX as usize, 7);
                    self.write(rec);
                }
            },
            // an alert, usually one the reader knows
            4 => {
                let level = input.byte();
                let what = match input.pick(5) {
                    0 => 0,  // close_notify
                    1 => 90, // user_canceled
                    2 => 20, // bad_record_mac
                    _ => input.byte(),
                };
                self.seal(record::ALERT, &[level, what], 0);
            }
            5 => self.seal(record::ALERT, &[1, 0], 0),
            // an alert of another length
            6 => {
                let n = input.pick(4);
                let body = input.take(n).to_vec();
                if body.len() != 2 {
                    self.seal(record::ALERT, &body, 0);
                }
            }
            // a KeyUpdate, asking for ours or not
            7 | 8 => {
                let asked = input.byte() & 1;
                self.seal(record::HANDSHAKE, &[24, 0, 0, 1, asked], 0);
            }
            // post-handshake messages, whole or cut short
            9 => {
                let mut body = Vec::new();
                for _ in 0..=input.pick(3) {
                    let typ = match input.pick(4) {
                        0 => 4,
                        1 | 2 => 24,
                        _ => input.byte(),
                    };
                    let len = match input.pick(4) {
                        0 => 1,
                        1 => 0,
                        _ => input.byte() as usize,
                    };
                    let claimed = match input.pick(4) {
                        0 => len + 1,
                        _ => len,
                    };
                    body.extend_from_slice(&[typ, 0, (claimed >> 8) as u8, claimed as u8]);
                    let msg: Vec<u8> = (0..len).map(|_| input.byte() % 3).collect();
                    body.extend_from_slice(&msg);
                }
                let cut = body.len() - input.pick(3).min(body.len());
                self.seal(record::HANDSHAKE, &body[..cut], 0);
            }
            // a content type that may not come, or none at all
            10 => match input.byte() {
                0 => {
                    let zeros = vec![0; input.pick(64)];
                    self.seal(0, &[], zeros.len());
                }
                t if [record::ALERT, record::HANDSHAKE, record::APPLICATION_DATA].contains(&t) => {
                    self.seal(20, b"\x01", 0)
                }
                t => {
                    let data = self.plaintext(input.plain_len() % 64);
                    self.seal(t, &data, 0);
                }
            },
            // a record whose outer type is not application data
            11 => {
                let outer = match input.byte() {
                    record::APPLICATION_DATA => 20,
                    t => t,
                };
                let data = self.plaintext(16);
                let mut inner = data.clone();
                inner.push(record::APPLICATION_DATA);
                let rec = self.sealer.seal(outer, &inner);
                self.fails(
                    format!("TLS: unexpected record of type {outer} after the handshake"),
                    AlertDescription::UnexpectedMessage,
                );
                self.write(rec);
            }
            // a record with one bit flipped
            12 => {
                let len = input.plain_len();
                let data = self.plaintext(len);
                let mut inner = data;
                inner.push(record::APPLICATION_DATA);
                let mut rec = self.sealer.seal(record::APPLICATION_DATA, &inner);
                let at = input.u16() as usize % rec.len();
                rec[at] ^= 1 << input.pick(8);
                match at {
                    0 => {
                        let t = rec[0];
                        self.fails(
                            format!("TLS: unexpected record of type {t} after the handshake"),
                            AlertDescription::UnexpectedMessage,
                        )
                    }
                    // the length: shorter or longer, or past the limit
                    3 | 4 => self.end(Want::Any),
                    _ => self.altered(),
                }
                self.write(rec);
            }
            // a record too short to hold a tag
            13 => {
                let len = input.pick(record::OVERHEAD - HEADER);
                let mut rec = vec![record::APPLICATION_DATA, 3, 3, 0, len as u8];
                rec.extend_from_slice(&vec![0x55; len]);
                self.altered();
                self.write(rec);
            }
            // the last record again, or one sealed under another key
            14 => {
                if input.byte() & 1 == 0 {
                    if self.last.is_empty() {
                        return;
                    }
                    let again = self.last.clone();
                    self.altered();
                    self.write(again);
                } else {
                    // the writer's own key: a record reflected back
                    let mut other = Sealer::new(SCRIPTED_TX);
                    let rec = other.seal(record::APPLICATION_DATA, b"x\x17");
                    self.altered();
                    self.write(rec);
                }
            }
            // raw bytes
            _ => {
                let n = input.pick(64);
                let raw = input.take(n).to_vec();
                if !raw.is_empty() {
                    self.end(Want::Any);
                    self.wire.extend_from_slice(&raw);
                }
            }
        }
    }

    fn altered(&mut self) {
        self.end(Want::Fails(
            Failure::Altered,
            Some(AlertDescription::BadRecordMac),
        ));
    }
}

const TAG: usize = 16;

/// Seals and opens records with the scripted keys of one direction, by
/// aws-lc-rs directly: the reader is checked against this, not against
/// `record`.
struct Sealer {
    direction: u8,
    generation: u64,
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Sealer {
    fn new(direction: u8) -> Sealer {
        let (key, iv) = Sealer::key(direction, 0);
        Sealer {
            direction,
            generation: 0,
            key,
            iv,
            seq: 0,
        }
    }

    fn key(direction: u8, generation: u64) -> (LessSafeKey, [u8; NONCE_LEN]) {
        let ConnectionTrafficSecrets::Aes256Gcm { key, iv } = scripted(direction, generation)
        else {
            unreachable!("the scripted keys are AES-256-GCM")
        };
        let key = UnboundKey::new(&aead::AES_256_GCM, key.as_ref()).expect("a 32-byte key");
        (
            LessSafeKey::new(key),
            iv.as_ref().try_into().expect("a 12-byte IV"),
        )
    }

    /// The next key, for the records after a KeyUpdate.
    fn next_key(&mut self) {
        self.generation += 1;
        (self.key, self.iv) = Sealer::key(self.direction, self.generation);
        self.seq = 0;
    }

    fn nonce(iv: &[u8; NONCE_LEN], seq: u64) -> Nonce {
        let mut n = *iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    fn header(outer: u8, payload: usize) -> [u8; HEADER] {
        [outer, 3, 3, (payload >> 8) as u8, payload as u8]
    }

    /// A record of outer type `outer` carrying `inner` under the current key.
    fn seal(&mut self, outer: u8, inner: &[u8]) -> Vec<u8> {
        let header = Sealer::header(outer, inner.len() + TAG);
        let mut rec = header.to_vec();
        rec.extend_from_slice(inner);
        let nonce = Sealer::nonce(&self.iv, self.seq);
        self.seq += 1;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut rec[HEADER..])
            .expect("sealing");
        rec.extend_from_slice(tag.as_ref());
        rec
    }

    /// Opens a whole record under the current key: its inner plaintext
    /// without padding (content type last).
    fn open(&mut self, rec: &[u8]) -> Option<Vec<u8>> {
        let header: [u8; HEADER] = rec.get(..HEADER)?.try_into().ok()?;
        let mut body = rec[HEADER..].to_vec();
        let nonce = Sealer::nonce(&self.iv, self.seq);
        self.seq += 1;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut body)
            .ok()?;
        let end = plain.iter().rposition(|&b| b != 0)? + 1;
        Some(plain[..end].to_vec())
    }
}

/// One handle on a connection in memory: reads come from `input` in pieces of
/// the sizes in `pieces` (in turn), writes go to `output`.
#[derive(Default)]
struct Memory {
    input: Vec<u8>,
    at: usize,
    pieces: Vec<usize>,
    turn: usize,
    output: Vec<u8>,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = self.pieces.get(self.turn % self.pieces.len().max(1));
        self.turn += 1;
        let n = buf
            .len()
            .min(self.input.len() - self.at)
            .min(piece.copied().unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for Memory {
    fn set_timeouts(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::run;

    /// The fuzz target's seeds (`fuzz/seeds/tls_record`), one scenario each:
    /// boundary sizes, KeyUpdates anywhere, truncation, garbage after
    /// close_notify, every refusal.
    #[test]
    fn the_fuzz_seeds_replay() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/tls_record");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let name = path.display().to_string();
            let r = std::panic::catch_unwind(|| run(&input));
            assert!(r.is_ok(), "seed {name}");
            seeds += 1;
        }
        assert!(seeds >= 20, "{seeds} seeds");
    }

    /// A few thousand scripts of random bytes: the fuzz target's work in
    /// small, on every test run.
    #[test]
    fn random_scripts_agree_with_the_model() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = 13 + (next() % 120) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let r = std::panic::catch_unwind(|| run(&input));
            assert!(r.is_ok(), "script {input:?}");
        }
    }
}
