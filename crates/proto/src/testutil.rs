//! Test helpers shared by the decoder tests: a deterministic pseudo-random
//! byte generator so robustness tests are reproducible without a dependency.

/// xorshift64: not random in any cryptographic sense, just varied and stable.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A buffer of 0..max_len bytes, biased towards small values and NULs so
    /// decoders get past their first field often enough to be exercised.
    pub fn buffer(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next_u64() as usize) % (max_len + 1);
        (0..len)
            .map(|_| {
                let r = self.next_u64();
                match r % 4 {
                    0 => 0,
                    1 => (r >> 8) as u8 % 8,
                    _ => (r >> 8) as u8,
                }
            })
            .collect()
    }
}

/// Calls `f` on every strict prefix of `full` and asserts each one fails:
/// a valid message cut short must never decode (or panic).
/// `decodes` says whether the decoder accepted its input.
pub fn assert_prefixes_fail(full: &[u8], decodes: impl Fn(&[u8]) -> bool) {
    for n in 0..full.len() {
        let prefix = full.get(..n).unwrap_or_default();
        assert!(!decodes(prefix), "prefix of {n} bytes of {full:?} decoded");
    }
}
