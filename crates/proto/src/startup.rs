//! The untagged first packet a client sends: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. Layout is an i32 length that counts
//! itself, an i32 code, then a code-specific body. This module owns
//! recognising which one arrived and validating it the way PostgreSQL does.

use crate::cursor::{Context, Cursor, DecodeError};
use crate::frame::MAX_STARTUP_LEN;
use std::fmt;

/// Protocol 3.0 as a startup code: major in the high 16 bits, minor low.
pub const PROTOCOL_3_0: u32 = 196608;
pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

/// Length word plus code word: the smallest packet PostgreSQL accepts.
const MIN_STARTUP_LEN: u32 = 8;
/// Prefix PostgreSQL reserves for protocol extension options (`_pq_.name`).
const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(Startup),
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, key: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Minor version requested; anything above 0 calls for a
    /// NegotiateProtocolVersion reply.
    pub minor: u16,
    pub params: Vec<(String, String)>,
    /// Names of `_pq_.` options, which the caller must report as
    /// unrecognised in NegotiateProtocolVersion.
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// The value of a parameter; if it was sent twice, the later one wins,
    /// matching PostgreSQL's handling of repeated GUCs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// PostgreSQL defaults the database to the user name when it is absent
    /// or empty.
    pub fn database(&self) -> Option<&str> {
        match self.get("database") {
            Some(db) if !db.is_empty() => Some(db),
            _ => self.user(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupError {
    TooShort(u32),
    TooLong(u32),
    UnsupportedVersion { major: u16, minor: u16 },
    Malformed(&'static str),
    MissingUser,
    Decode(DecodeError),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::TooShort(len) | StartupError::TooLong(len) => {
                write!(f, "invalid startup packet length {len}")
            }
            StartupError::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")
            }
            StartupError::Malformed(why) => write!(f, "invalid startup packet layout: {why}"),
            StartupError::MissingUser => {
                write!(f, "no PostgreSQL user name specified in startup packet")
            }
            StartupError::Decode(e) => write!(f, "invalid startup packet: {e}"),
        }
    }
}

impl std::error::Error for StartupError {}

impl From<DecodeError> for StartupError {
    fn from(e: DecodeError) -> Self {
        StartupError::Decode(e)
    }
}

/// How long the startup packet at the front of `buf` is, once its length
/// word is buffered. Ok(None) means "read more"; an Err means the client is
/// speaking nonsense and should be dropped before buffering anything more.
pub fn startup_packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*len);
    if len < MIN_STARTUP_LEN {
        return Err(StartupError::TooShort(len));
    }
    if len as usize > MAX_STARTUP_LEN {
        return Err(StartupError::TooLong(len));
    }
    Ok(Some(len as usize))
}

/// Decodes a whole startup packet, length word included.
pub fn decode_startup(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let len = match startup_packet_len(packet)? {
        Some(len) => len,
        None => return Err(DecodeError::Truncated("startup packet length").into()),
    };
    if len != packet.len() {
        return Err(StartupError::Malformed("length word does not match packet size"));
    }
    let mut cur = Cursor::new(packet);
    cur.read_u32().ctx("startup packet length")?;
    let code = cur.read_u32().ctx("startup packet protocol code")?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !cur.is_empty() {
                return Err(StartupError::Malformed("encryption request must be 8 bytes"));
            }
            Ok(if code == SSL_REQUEST_CODE { StartupPacket::SslRequest } else { StartupPacket::GssEncRequest })
        }
        CANCEL_REQUEST_CODE => {
            if cur.remaining() != 8 {
                return Err(StartupError::Malformed("cancel request must be 16 bytes"));
            }
            let pid = cur.read_u32().ctx("cancel request process id")?;
            let key = cur.read_u32().ctx("cancel request secret key")?;
            Ok(StartupPacket::Cancel { pid, key })
        }
        _ => decode_params(code, cur).map(StartupPacket::Startup),
    }
}

fn decode_params(code: u32, mut cur: Cursor<'_>) -> Result<Startup, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedVersion { major, minor });
    }
    let mut params = Vec::new();
    let mut protocol_options = Vec::new();
    loop {
        let name = cur.read_cstr().ctx("startup parameter name")?;
        if name.is_empty() {
            break;
        }
        let value = cur.read_cstr().ctx("startup parameter value")?;
        if name.starts_with(PROTOCOL_OPTION_PREFIX) {
            protocol_options.push(name.to_owned());
        } else {
            params.push((name.to_owned(), value.to_owned()));
        }
    }
    // PostgreSQL insists the terminator is the last byte; trailing junk
    // would mean we and the client disagree about the layout.
    if !cur.is_empty() {
        return Err(StartupError::Malformed("expected terminator as last byte"));
    }
    let startup = Startup { minor, params, protocol_options };
    match startup.user() {
        Some(u) if !u.is_empty() => Ok(startup),
        _ => Err(StartupError::MissingUser),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_prefixes_fail, XorShift};

    /// Builds a packet with a correct length word around `code` and `body`.
    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut p = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn protocol_3_0() {
        let p = packet(PROTOCOL_3_0, b"user\0alice\0database\0app\0application_name\0psql\0\0");
        assert_eq!(&p[..8], b"\0\0\0\x37\0\x03\0\0");
        let StartupPacket::Startup(s) = decode_startup(&p).unwrap() else { panic!("not a startup") };
        assert_eq!(s.minor, 0);
        assert_eq!(s.user(), Some("alice"));
        assert_eq!(s.database(), Some("app"));
        assert_eq!(s.get("application_name"), Some("psql"));
        assert_eq!(s.get("nope"), None);
        assert!(s.protocol_options.is_empty());
        assert_prefixes_fail(&p, |b| decode_startup(b).is_ok());
    }

    #[test]
    fn protocol_3_2_with_option() {
        let p = packet(PROTOCOL_3_0 + 2, b"user\0bob\0_pq_.compression\0on\0options\0-c x=1\0user\0carol\0\0");
        let StartupPacket::Startup(s) = decode_startup(&p).unwrap() else { panic!("not a startup") };
        assert_eq!(s.minor, 2);
        assert_eq!(s.protocol_options, vec!["_pq_.compression".to_string()]);
        assert_eq!(s.get("_pq_.compression"), None);
        // Later duplicate wins; database falls back to user.
        assert_eq!(s.user(), Some("carol"));
        assert_eq!(s.database(), Some("carol"));
    }

    #[test]
    fn protocol_2_rejected() {
        let p = packet(0x0002_0000, b"user\0bob\0\0");
        let err = decode_startup(&p).unwrap_err();
        assert_eq!(err, StartupError::UnsupportedVersion { major: 2, minor: 0 });
        assert_eq!(err.to_string(), "unsupported frontend protocol 2.0: server supports 3.0 to 3.0");
    }

    #[test]
    fn special_requests() {
        assert_eq!(decode_startup(b"\0\0\0\x08\x04\xd2\x16\x2f"), Ok(StartupPacket::SslRequest));
        assert_eq!(decode_startup(b"\0\0\0\x08\x04\xd2\x16\x30"), Ok(StartupPacket::GssEncRequest));
        assert_eq!(
            decode_startup(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xde\xad\xbe\xef"),
            Ok(StartupPacket::Cancel { pid: 12345, key: 0xdeadbeef })
        );
        // Wrong sizes are malformed, not misread.
        assert!(matches!(decode_startup(&packet(SSL_REQUEST_CODE, b"x")), Err(StartupError::Malformed(_))));
        assert!(matches!(decode_startup(&packet(CANCEL_REQUEST_CODE, b"1234567")), Err(StartupError::Malformed(_))));
        assert!(matches!(decode_startup(&packet(CANCEL_REQUEST_CODE, b"123456789")), Err(StartupError::Malformed(_))));
    }

    #[test]
    fn packet_lengths() {
        assert_eq!(startup_packet_len(b"\0\0\0"), Ok(None));
        assert_eq!(startup_packet_len(b"\0\0\0\x07"), Err(StartupError::TooShort(7)));
        assert_eq!(startup_packet_len(b"\0\0\x27\x11"), Err(StartupError::TooLong(10001)));
        assert_eq!(startup_packet_len(b"\0\0\x27\x10"), Ok(Some(10000)));
        assert_eq!(
            startup_packet_len(b"\xff\xff\xff\xff").unwrap_err().to_string(),
            "invalid startup packet length 4294967295"
        );
        assert_eq!(decode_startup(b"\0\0\0\x07\0\x03\0"), Err(StartupError::TooShort(7)));
        // A length word that lies about the packet size.
        let mut p = packet(PROTOCOL_3_0, b"user\0a\0\0");
        p.push(0);
        assert!(matches!(decode_startup(&p), Err(StartupError::Malformed(_))));
    }

    #[test]
    fn missing_or_empty_user() {
        for body in [&b"database\0x\0\0"[..], b"user\0\0\0", b"\0"] {
            let err = decode_startup(&packet(PROTOCOL_3_0, body)).unwrap_err();
            assert_eq!(err, StartupError::MissingUser);
            assert_eq!(err.to_string(), "no PostgreSQL user name specified in startup packet");
        }
    }

    #[test]
    fn bad_layouts() {
        assert_eq!(
            decode_startup(&packet(PROTOCOL_3_0, b"user\0\xff\0\0")),
            Err(StartupError::Decode(DecodeError::InvalidUtf8("startup parameter value")))
        );
        assert!(matches!(decode_startup(&packet(PROTOCOL_3_0, b"user\0a\0\0junk")), Err(StartupError::Malformed(_))));
        assert!(matches!(
            decode_startup(&packet(PROTOCOL_3_0, b"user\0a\0")),
            Err(StartupError::Decode(DecodeError::MissingNul(_)))
        ));
        assert!(matches!(
            decode_startup(&packet(PROTOCOL_3_0, b"")),
            Err(StartupError::Decode(DecodeError::MissingNul(_)))
        ));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0x5eed);
        for i in 0..20_000 {
            let mut buf = rng.buffer(64);
            // Make half the buffers carry an honest length and a plausible
            // code so the parameter parser gets exercised, not just framing.
            if i % 2 == 0 {
                let mut p = packet(PROTOCOL_3_0, &buf);
                if i % 4 == 0 {
                    p.truncate(8);
                    p.extend_from_slice(b"user\0");
                    p.extend_from_slice(&buf);
                    let len = (p.len() as u32).to_be_bytes();
                    p[..4].copy_from_slice(&len);
                }
                buf = p;
            }
            let _ = startup_packet_len(&buf);
            let _ = decode_startup(&buf);
        }
    }
}
