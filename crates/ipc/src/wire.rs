//! Field encoding shared by the stats and admin payloads: big-endian integers, `u32`-length strings and byte
//! strings, `u32`-count lists, 0/1 booleans; and the decoding side, strict like the session record's (every
//! length and count is checked against what remains before anything is allocated, strings must be UTF-8).

use crate::record::Reader;

/// Why a stats or admin payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated(&'static str),
    /// A declared length or count exceeds what the input can hold or a cap.
    TooLong(&'static str),
    InvalidUtf8(&'static str),
    /// A tag or boolean field held a value with no meaning.
    InvalidValue(&'static str),
    TrailingBytes(usize),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated(field) => write!(f, "payload truncated in {field}"),
            WireError::TooLong(field) => write!(f, "{field}: declared length beyond the input"),
            WireError::InvalidUtf8(field) => write!(f, "{field} is not valid UTF-8"),
            WireError::InvalidValue(field) => write!(f, "{field} has an invalid value"),
            WireError::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
        }
    }
}

impl std::error::Error for WireError {}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Lengths that do not fit a `u32` are clamped; the decoder then rejects the payload rather than misreading it.
pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(crate) fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            put_bool(out, true);
            put_str(out, s);
        }
        None => put_bool(out, false),
    }
}

/// Decoding on top of the record's bounds-checked [`Reader`].
pub(crate) struct Fields<'a> {
    r: Reader<'a>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Fields { r: Reader::new(buf) }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.r.u8(field).map_err(|_| WireError::Truncated(field))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::InvalidValue(field)),
        }
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.r.u32(field).map_err(|_| WireError::Truncated(field))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.r.u64(field).map_err(|_| WireError::Truncated(field))
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(field)? as usize;
        if len > self.r.remaining() {
            return Err(WireError::TooLong(field));
        }
        self.r.take(len, field).map_err(|_| WireError::Truncated(field))
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| WireError::InvalidUtf8(field))
    }

    pub(crate) fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        if self.bool(field)? {
            self.string(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `u32` count of items that each take at least `min_item_len` bytes: a count the remaining input cannot
    /// hold is refused before any allocation.
    pub(crate) fn count(&mut self, field: &'static str, min_item_len: usize) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item_len.max(1)) > self.r.remaining() {
            return Err(WireError::TooLong(field));
        }
        Ok(n)
    }

    pub(crate) fn list<T>(
        &mut self,
        field: &'static str,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = self.count(field, min_item_len)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        match self.r.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

pub(crate) fn put_list<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    put_len(out, items.len());
    for i in items {
        item(out, i);
    }
}

/// Largest piece of a payload sent in one channel message; the channel's own limit is 200 KiB.
pub const CHUNK_LEN: usize = 128 * 1024;
/// Largest whole payload a receiver reassembles (a SHOW CLIENTS over a very large pool still fits).
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// Splits an encoded payload into channel-sized pieces; an empty payload is one empty piece.
pub fn chunks(payload: &[u8]) -> Vec<&[u8]> {
    if payload.is_empty() {
        return vec![payload];
    }
    payload.chunks(CHUNK_LEN).collect()
}

/// Collects the pieces of one payload. A payload above [`MAX_PAYLOAD_LEN`] is refused (the peer is broken).
#[derive(Debug, Default)]
pub struct Assembler {
    buf: Vec<u8>,
}

impl Assembler {
    /// Adds a piece; returns the whole payload once `last` is set.
    pub fn push(&mut self, part: &[u8], last: bool) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len().saturating_add(part.len()) > MAX_PAYLOAD_LEN {
            self.buf = Vec::new();
            return Err(WireError::TooLong("payload"));
        }
        self.buf.extend_from_slice(part);
        Ok(if last { Some(std::mem::take(&mut self.buf)) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_strictness() {
        let mut out = Vec::new();
        put_u8(&mut out, 7);
        put_bool(&mut out, true);
        put_u32(&mut out, 9);
        put_u64(&mut out, u64::MAX);
        put_str(&mut out, "é");
        put_opt_str(&mut out, None);
        put_list(&mut out, &[1u32, 2], |o, v| put_u32(o, *v));
        let mut f = Fields::new(&out);
        assert_eq!(f.u8("a").unwrap(), 7);
        assert!(f.bool("b").unwrap());
        assert_eq!(f.u32("c").unwrap(), 9);
        assert_eq!(f.u64("d").unwrap(), u64::MAX);
        assert_eq!(f.string("e").unwrap(), "é");
        assert_eq!(f.opt_string("f").unwrap(), None);
        assert_eq!(f.list("g", 4, |f| f.u32("g")).unwrap(), vec![1, 2]);
        f.finish().unwrap();

        assert_eq!(Fields::new(&[2]).bool("x"), Err(WireError::InvalidValue("x")));
        assert_eq!(Fields::new(&[0, 0, 0, 9, b'a']).string("s"), Err(WireError::TooLong("s")));
        assert_eq!(Fields::new(&[0, 0, 0, 1, 0xff]).string("s"), Err(WireError::InvalidUtf8("s")));
        assert_eq!(Fields::new(&[0xff, 0xff, 0xff, 0xff]).count("n", 1), Err(WireError::TooLong("n")));
        assert_eq!(Fields::new(&[1]).finish(), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn chunking_reassembles() {
        let payload: Vec<u8> = (0..(CHUNK_LEN * 2 + 5)).map(|i| i as u8).collect();
        let parts = chunks(&payload);
        assert_eq!(parts.len(), 3);
        let mut a = Assembler::default();
        let mut whole = None;
        for (i, p) in parts.iter().enumerate() {
            whole = a.push(p, i == parts.len() - 1).unwrap();
        }
        assert_eq!(whole.unwrap(), payload);
        assert_eq!(chunks(&[]).len(), 1);
        let mut a = Assembler::default();
        assert_eq!(a.push(&[], true).unwrap(), Some(Vec::new()));
    }
}
