//! The input side of the fuzz harness: a seeded PRNG, random values shaped like the ones pgmux meets (names, SQL
//! text, unicode), and byte-level mutations of valid encodings (bit flips, inserted and deleted runs, truncation,
//! splices, length words set to extremes). Everything is a function of the seed, so a case is reproduced from its
//! seed alone.

/// xorshift64*, seeded through splitmix64 so that nearby seeds give unrelated streams.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let i = self.below(items.len());
        items[i]
    }

    /// A length biased towards small values, sometimes up to `max`.
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(8) {
            0..=4 => self.below(max.min(8) + 1),
            5 | 6 => self.below(max.min(64) + 1),
            _ => self.below(max + 1),
        }
    }

    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.len(max);
        (0..n).map(|_| self.interesting_byte()).collect()
    }

    /// Mostly random, often a byte some parser treats specially.
    pub fn interesting_byte(&mut self) -> u8 {
        const SPECIAL: &[u8] = b"\0\xff\x7f\x80\xc3\xe2\xf0'\"$;\\/*-\n\r\t ()=,.&:EeUuPSXQ";
        if self.one_in(3) {
            self.pick(SPECIAL)
        } else {
            self.byte()
        }
    }

    /// A string of up to `max` chars: ASCII identifiers, punctuation, multi-byte characters, sometimes a NUL.
    pub fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "_",
            "0",
            "9",
            " ",
            "-",
            ".",
            ",",
            "=",
            "'",
            "\"",
            "$",
            "\\",
            ";",
            "é",
            "ß",
            "Ж",
            "中",
            "🐘",
            "\u{200b}",
            "\u{fffd}",
            "\u{10ffff}",
            "\t",
            "\n",
            "user",
            "x",
        ];
        let n = self.len(max);
        let mut s = String::new();
        for _ in 0..n {
            if self.one_in(40) {
                s.push('\0');
            } else {
                s.push_str(self.pick(PIECES));
            }
        }
        s
    }

    /// Like [`Rng::text`] without NUL, for values that cannot carry one (C strings).
    pub fn cstr_text(&mut self, max: usize) -> String {
        self.text(max).replace('\0', "")
    }
}

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Values that make length and count fields lie: zero, just below and above the small minimums, sign boundaries,
/// the caps pgmux enforces (startup 10000, auth 8192, record strings 1 MiB) and their neighbours, all ones.
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    15,
    16,
    17,
    255,
    256,
    4096,
    8192,
    8193,
    10_000,
    10_001,
    65_535,
    65_536,
    1 << 20,
    (1 << 20) + 1,
    (1 << 30) + 1,
    0x7fff_fffe,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

const INTERESTING_U16: &[u16] = &[0, 1, 2, 0x7fff, 0x8000, 0xfffe, 0xffff];

/// Applies 1 to 4 random mutations to `buf`. `donor` supplies foreign material for splices (another valid input,
/// so a splice carries well-formed fragments into the wrong place).
pub fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, donor: &[u8]) {
    for _ in 0..=rng.below(4) {
        mutate_once(rng, buf, donor);
    }
}

fn mutate_once(rng: &mut Rng, buf: &mut Vec<u8>, donor: &[u8]) {
    let len = buf.len();
    let at = rng.below(len + 1);
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = rng.interesting_byte();
        }
        2 => {
            let run = rng.bytes(16);
            buf.splice(at..at, run);
        }
        3 => {
            // A long run of one byte: deep nesting, long names, many NULs.
            let b = rng.interesting_byte();
            let n = 1 + rng.below(512);
            buf.splice(at..at, std::iter::repeat_n(b, n));
        }
        4 if len > 0 => {
            let start = at.min(len - 1);
            let n = 1 + rng.len(len - start - 1);
            buf.drain(start..start + n);
        }
        5 => buf.truncate(at),
        6 if len > 0 => {
            // Duplicate a range of the input somewhere else in it.
            let start = rng.below(len);
            let n = 1 + rng.len(len - start - 1);
            let chunk = buf[start..start + n].to_vec();
            let to = rng.below(len + 1);
            buf.splice(to..to, chunk);
        }
        7 if !donor.is_empty() => {
            let start = rng.below(donor.len());
            let n = 1 + rng.len(donor.len() - start - 1);
            let chunk = &donor[start..start + n];
            if rng.one_in(2) {
                buf.splice(at..at, chunk.iter().copied());
            } else {
                let end = (at + n).min(len);
                buf.splice(at..end, chunk.iter().copied());
            }
        }
        8 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = interesting_u32(rng, len);
            buf[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        9 if len >= 2 => {
            let i = rng.below(len - 1);
            let v = rng.pick(INTERESTING_U16);
            buf[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        _ => buf.push(rng.interesting_byte()),
    }
}

/// An extreme value, or one near the input's own length (an "almost right" length word).
pub fn interesting_u32(rng: &mut Rng, len: usize) -> u32 {
    if rng.one_in(3) {
        let near = len as i64 + rng.below(9) as i64 - 4;
        near.clamp(0, u32::MAX as i64) as u32
    } else {
        rng.pick(INTERESTING_U32)
    }
}

/// Writes the big-endian length of `buf[at..]` into `buf[at..at + 4]`, as a correct encoder would. Used after
/// mutating a body so the decoder behind the framing gets exercised, not only the framing.
pub fn fix_len(buf: &mut [u8], at: usize) {
    if buf.len() >= at + 4 {
        let len = (buf.len() - at) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Lowercase hex, for failure reports.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
