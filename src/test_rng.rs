//! A tiny deterministic generator (xorshift64) for the "random input never
//! panics" tests, so they fail the same way every run.

pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A copy of `fixture` with up to 8 bytes overwritten within its first
    /// `window` bytes, then cut to between half and all of its length.
    pub fn mutate(&mut self, fixture: &[u8], window: u64) -> Vec<u8> {
        let mut buf = fixture.to_vec();
        for _ in 0..=(self.next() % 8) {
            let offset = (self.next() % window) as usize % buf.len();
            buf[offset] = self.next() as u8;
        }
        let len = buf.len() - (self.next() as usize % (buf.len() + 1)) / 2;
        buf.truncate(len);
        buf
    }
}
