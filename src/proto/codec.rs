//! Primitive encoding for ferry's wire messages: little-endian integers, LEB128
//! varints and length-prefixed byte strings.
//!
//! A [`Reader`] works over a complete frame payload that is already in memory; it
//! never allocates more than the bytes it was given, so a lying length can cost no
//! more than the frame that carried it.

use super::DecodeError;

/// Appends primitive values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }
    pub fn i64(&mut self, v: i64) {
        // zig-zag so that small negative mtimes stay small
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    pub fn hash(&mut self, v: &[u8; 32]) {
        self.buf.extend_from_slice(v);
    }
    /// Bytes of a fixed size the reader knows (no length prefix).
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
}

/// Reads primitive values from one frame's payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(what)),
        }
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(what)?;
            let part = (byte & 0x7f) as u64;
            if shift == 63 && part > 1 {
                return Err(DecodeError::Invalid(what));
            }
            v |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid(what))
    }
    /// A varint that must fit `limit`, checked before anything is built from it.
    pub fn count(&mut self, limit: usize, what: &'static str) -> Result<usize, DecodeError> {
        let v = self.varint(what)?;
        if v > limit as u64 {
            return Err(DecodeError::TooLarge { what, limit });
        }
        Ok(v as usize)
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let z = self.varint(what)?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }
    pub fn bytes(&mut self, limit: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.count(limit, what)?;
        self.take(n, what)
    }
    pub fn hash(&mut self, what: &'static str) -> Result<[u8; 32], DecodeError> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32, what)?);
        Ok(h)
    }
    /// `N` bytes written with [`Writer::raw`].
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub fn token(&mut self, what: &'static str) -> Result<[u8; 16], DecodeError> {
        let mut t = [0u8; 16];
        t.copy_from_slice(self.take(16, what)?);
        Ok(t)
    }
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(what));
        }
        Ok(())
    }
}
