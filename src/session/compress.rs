//! Compression of the blocks a sender sends (zstd, with `-z`). Not for
//! deciding what is sent: a block goes out compressed or raw, and the frame
//! says which.

/// Compresses blocks with zstd when `-z` is on and the data compresses; after a
/// block that does not, skips the next few without trying, so random-looking data
/// (checkpoints) pays almost nothing.
pub struct Packer {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    skip: u32,
    out: Vec<u8>,
}

impl Packer {
    /// A packer compressing at zstd `level`, or not at all.
    pub fn new(level: Option<i32>) -> Self {
        Packer {
            compressor: level.and_then(|l| zstd::bulk::Compressor::new(l).ok()),
            skip: 0,
            out: Vec::new(),
        }
    }

    pub fn reset(&mut self) {
        self.skip = 0;
    }

    /// Returns (compressed?, bytes to send).
    pub fn pack<'b>(&'b mut self, raw: &'b [u8]) -> (bool, &'b [u8]) {
        let Some(c) = &mut self.compressor else {
            return (false, raw);
        };
        if self.skip > 0 {
            self.skip -= 1;
            return (false, raw);
        }
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        match c.compress_to_buffer(raw, &mut self.out) {
            Ok(n) if n < raw.len() - raw.len() / 10 => (true, &self.out[..n]),
            _ => {
                self.skip = 16;
                (false, raw)
            }
        }
    }
}
