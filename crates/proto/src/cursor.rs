//! Checked, panic-free reading of big-endian integers and C strings from a
//! peer-supplied byte slice. Every decoder in this crate goes through
//! `Cursor`, so "never index peer data" is enforced in one place.

use std::fmt;

/// Why a message body could not be decoded. The `&'static str` names the
/// field being read, so a log line says which part of which message was bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated(&'static str),
    MissingNul(&'static str),
    InvalidUtf8(&'static str),
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated(what) => write!(f, "truncated {what}"),
            DecodeError::MissingNul(what) => write!(f, "missing NUL terminator in {what}"),
            DecodeError::InvalidUtf8(what) => write!(f, "invalid UTF-8 in {what}"),
            DecodeError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A read position over a borrowed buffer. Reads either succeed completely
/// or fail without consuming anything useful; callers stop at the first error.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Everything not yet read, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn read_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self.buf.split_first_chunk::<N>().ok_or(DecodeError::Truncated(what))?;
        self.buf = tail;
        Ok(*head)
    }

    pub fn read_u8(&mut self) -> Result<u8, DecodeError> {
        self.read_array::<1>("u8").map(|[b]| b)
    }

    pub fn read_u16(&mut self) -> Result<u16, DecodeError> {
        self.read_array("u16").map(u16::from_be_bytes)
    }

    pub fn read_u32(&mut self) -> Result<u32, DecodeError> {
        self.read_array("u32").map(u32::from_be_bytes)
    }

    pub fn read_i16(&mut self) -> Result<i16, DecodeError> {
        self.read_array("i16").map(i16::from_be_bytes)
    }

    pub fn read_i32(&mut self) -> Result<i32, DecodeError> {
        self.read_array("i32").map(i32::from_be_bytes)
    }

    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated("bytes"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A NUL-terminated byte string, returned without its NUL.
    pub fn read_cstr_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let nul = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul("string"))?;
        let (head, tail) = self.buf.split_at(nul);
        // `tail` starts with the NUL we just found.
        self.buf = tail.get(1..).unwrap_or_default();
        Ok(head)
    }

    /// A NUL-terminated UTF-8 string, returned without its NUL.
    pub fn read_cstr(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self.read_cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8("string"))
    }
}

impl DecodeError {
    /// The same failure, relabelled with the field being read.
    pub fn with_context(self, what: &'static str) -> Self {
        match self {
            DecodeError::Truncated(_) => DecodeError::Truncated(what),
            DecodeError::MissingNul(_) => DecodeError::MissingNul(what),
            DecodeError::InvalidUtf8(_) => DecodeError::InvalidUtf8(what),
            DecodeError::Invalid(_) => DecodeError::Invalid(what),
        }
    }
}

/// `cur.read_cstr().ctx("Parse statement name")?`: the Cursor only knows
/// it read "a string"; decoders know which field it was, and say so here.
pub trait Context<T> {
    fn ctx(self, what: &'static str) -> Result<T, DecodeError>;
}

impl<T> Context<T> for Result<T, DecodeError> {
    fn ctx(self, what: &'static str) -> Result<T, DecodeError> {
        self.map_err(|e| e.with_context(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integers_big_endian() {
        let mut c = Cursor::new(&[1, 0, 2, 0, 0, 0, 3, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xfd]);
        assert_eq!(c.read_u8(), Ok(1));
        assert_eq!(c.read_u16(), Ok(2));
        assert_eq!(c.read_u32(), Ok(3));
        assert_eq!(c.read_i16(), Ok(-2));
        assert_eq!(c.read_i32(), Ok(-3));
        assert!(c.is_empty());
        assert_eq!(c.read_u8(), Err(DecodeError::Truncated("u8")));
        assert_eq!(c.read_u8().ctx("f"), Err(DecodeError::Truncated("f")));
    }

    #[test]
    fn short_reads_fail() {
        assert_eq!(Cursor::new(&[1]).read_u16().ctx("x"), Err(DecodeError::Truncated("x")));
        assert_eq!(Cursor::new(&[1, 2, 3]).read_u32().ctx("x"), Err(DecodeError::Truncated("x")));
        assert_eq!(Cursor::new(&[1, 2, 3]).read_i32().ctx("x"), Err(DecodeError::Truncated("x")));
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.read_bytes(4).ctx("x"), Err(DecodeError::Truncated("x")));
        assert_eq!(c.read_bytes(usize::MAX).ctx("x"), Err(DecodeError::Truncated("x")));
        assert_eq!(c.read_bytes(2), Ok(&[1u8, 2][..]));
        assert_eq!(c.rest(), &[3u8][..]);
        assert_eq!(c.remaining(), 1);
    }

    #[test]
    fn cstrings() {
        let mut c = Cursor::new(b"ab\0\0c\xff\0d");
        assert_eq!(c.read_cstr(), Ok("ab"));
        assert_eq!(c.read_cstr(), Ok(""));
        assert_eq!(c.read_cstr().ctx("s"), Err(DecodeError::InvalidUtf8("s")));
        assert_eq!(c.read_cstr_bytes().ctx("s"), Err(DecodeError::MissingNul("s")));
        let mut c = Cursor::new(b"c\xff\0");
        assert_eq!(c.read_cstr_bytes(), Ok(&b"c\xff"[..]));
        assert!(c.is_empty());
    }

    #[test]
    fn display_names_the_field() {
        assert_eq!(DecodeError::Truncated("Parse statement name").to_string(), "truncated Parse statement name");
        assert_eq!(DecodeError::Invalid("x").to_string(), "invalid x");
    }
}
