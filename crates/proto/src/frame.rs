//! Framing of regular (tagged) protocol-3 messages: one tag byte, then an
//! i32 length that counts itself but not the tag. This module answers
//! "is a whole message buffered, and is its header believable?"; parsing
//! the body is left to `frontend` and `backend`.

use std::fmt;

/// Tag byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;
/// PostgreSQL's own cap on the untagged startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// PostgreSQL refuses messages over 1 GiB (PQ_LARGE_MESSAGE_LIMIT); so do we
/// unless configured lower.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Wire length: includes the 4 length bytes, excludes the tag.
    pub len: u32,
}

impl Header {
    /// Bytes the whole message occupies in the buffer, tag included.
    pub fn total_len(&self) -> usize {
        (self.len as usize).saturating_add(1)
    }

    /// Bytes after the header. Saturating, because an unchecked header may
    /// claim a length below 4.
    pub fn body_len(&self) -> usize {
        (self.len as usize).saturating_sub(4)
    }
}

/// The header at the start of `buf`, or None until 5 bytes are buffered.
/// No validation: callers decide which direction's rules apply.
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    let [tag, a, b, c, d] = *buf.first_chunk::<HEADER_LEN>()?;
    Some(Header { tag, len: u32::from_be_bytes([a, b, c, d]) })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    LengthTooShort { tag: u8, len: u32 },
    LengthTooLong { tag: u8, len: u32, max: u32 },
    UnknownTag(u8),
}

/// Tags are usually printable ASCII; show them as such and fall back to hex
/// for garbage so log lines stay readable.
fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::LengthTooShort { tag, len } => {
                write!(f, "invalid message length {len} for message type {}", tag_name(*tag))
            }
            FrameError::LengthTooLong { tag, len, max } => {
                write!(f, "message length {len} for message type {} exceeds the limit of {max} bytes", tag_name(*tag))
            }
            FrameError::UnknownTag(tag) => write!(f, "unknown message type 0x{tag:02x}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Frontend (client to server) message types valid once startup is over.
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'X' | b'd' | b'c' | b'f' | b'F' | b'p')
}

/// Backend (server to client) message types.
pub fn is_backend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'S'
            | b'K'
            | b'Z'
            | b'E'
            | b'N'
            | b'A'
            | b'T'
            | b'D'
            | b'C'
            | b'I'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b't'
            | b's'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'V'
            | b'v'
    )
}

fn check(h: Header, max_len: u32, known: fn(u8) -> bool) -> Result<(), FrameError> {
    if h.len < 4 {
        return Err(FrameError::LengthTooShort { tag: h.tag, len: h.len });
    }
    if h.len > max_len {
        return Err(FrameError::LengthTooLong { tag: h.tag, len: h.len, max: max_len });
    }
    if !known(h.tag) {
        return Err(FrameError::UnknownTag(h.tag));
    }
    Ok(())
}

/// Validates a header read from a client.
pub fn check_frontend(h: Header, max_len: u32) -> Result<(), FrameError> {
    check(h, max_len, is_frontend_tag)
}

/// Validates a header read from an upstream server.
pub fn check_backend(h: Header, max_len: u32) -> Result<(), FrameError> {
    check(h, max_len, is_backend_tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_needs_five_bytes() {
        assert_eq!(peek_header(b""), None);
        assert_eq!(peek_header(b"Q\0\0\0"), None);
        let h = peek_header(b"Q\0\0\0\x0dSELECT 1;\0").unwrap();
        assert_eq!(h, Header { tag: b'Q', len: 13 });
        assert_eq!(h.total_len(), 14);
        assert_eq!(h.body_len(), 9);
    }

    #[test]
    fn lengths_below_four_saturate() {
        let h = peek_header(b"Q\0\0\0\x02").unwrap();
        assert_eq!(h.body_len(), 0);
        assert_eq!(check_frontend(h, DEFAULT_MAX_MESSAGE_LEN), Err(FrameError::LengthTooShort { tag: b'Q', len: 2 }));
        assert_eq!(
            check_frontend(h, DEFAULT_MAX_MESSAGE_LEN).unwrap_err().to_string(),
            "invalid message length 2 for message type 'Q'"
        );
        let h = peek_header(&[b'Q', 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(h.total_len(), 0x1_0000_0000);
    }

    #[test]
    fn checks_limits_and_tags() {
        let ok = Header { tag: b'S', len: 4 };
        assert_eq!(check_frontend(ok, 4), Ok(()));
        assert_eq!(check_backend(ok, 4), Ok(()));
        let long = Header { tag: b'D', len: 100 };
        assert_eq!(check_backend(long, 99), Err(FrameError::LengthTooLong { tag: b'D', len: 100, max: 99 }));
        let unknown = Header { tag: 7, len: 4 };
        assert_eq!(check_frontend(unknown, 100), Err(FrameError::UnknownTag(7)));
        assert_eq!(FrameError::UnknownTag(7).to_string(), "unknown message type 0x07");
        // 'R' only travels server to client, 'Q' only client to server.
        assert!(check_frontend(Header { tag: b'R', len: 8 }, 100).is_err());
        assert!(check_backend(Header { tag: b'Q', len: 8 }, 100).is_err());
    }

    #[test]
    fn tag_sets() {
        for t in b"QPBDECSHXdcfFp" {
            assert!(is_frontend_tag(*t), "{}", *t as char);
        }
        for t in b"RSKZENATDCI123ntsGHWdcVv" {
            assert!(is_backend_tag(*t), "{}", *t as char);
        }
        assert!(!is_frontend_tag(0));
        assert!(!is_backend_tag(b'Q'));
        assert!(!is_frontend_tag(b'R'));
    }
}
