//! The messages processes exchange over their channels: one enum variant per message, one tag byte per variant,
//! and how many file descriptors each variant carries.
//!
//! Decoding is as strict as decoding client bytes: unknown tags, truncation, non-0/1 booleans and trailing bytes are
//! errors. Integers are big-endian; records use the encoding in [`crate::record`].

use std::fmt;

use crate::record::{Reader, RecordError, SessionRecord};

const TAG_LOGIN: u8 = 1;
const TAG_CANCEL_REQUEST: u8 = 2;
const TAG_ASSIGN: u8 = 3;
const TAG_CANCEL: u8 = 4;
const TAG_SHUTDOWN: u8 = 5;
const TAG_SESSION_CLOSED: u8 = 6;
const TAG_WORKER_STATUS: u8 = 7;
const TAG_MIGRATE: u8 = 8;
const TAG_DRAINING: u8 = 9;
const TAG_DRAIN: u8 = 10;
const TAG_SESSION_STATE: u8 = 11;

/// One message between two pgmux processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    // listener → supervisor
    /// Carries 1 fd: the authenticated client socket.
    Login {
        record: SessionRecord,
    },
    /// A client's CancelRequest, already decoded by the listener.
    CancelRequest {
        pid: u32,
        key: u32,
    },
    // supervisor → worker
    /// Carries 1 fd: the client socket.
    Assign {
        record: SessionRecord,
    },
    Cancel {
        session_id: u64,
    },
    // supervisor → any child
    Shutdown,
    // worker → supervisor
    SessionClosed {
        session_id: u64,
    },
    WorkerStatus {
        upstream_up: bool,
        sessions: u32,
    },
    /// worker → supervisor: this session waits behind a busy upstream; give it to another worker of its pool.
    /// Carries 1 fd: the client socket.
    Migrate {
        record: SessionRecord,
    },
    /// worker → supervisor: this worker is moving all its sessions away and will exit; give it no new ones.
    Draining,
    /// supervisor → worker: move every session to other workers at its next transaction boundary, then exit (a pool
    /// shrank or its definition changed on reload).
    Drain,
    /// worker → supervisor: the session's state as it stands between transactions (after its greeting, and after any
    /// turn that changed its settings, prepared statements or channels). The supervisor keeps it, with a copy of the
    /// client socket, to re-home the session if this worker dies.
    SessionState {
        record: SessionRecord,
    },
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// A zero-length payload: there is no tag.
    Empty,
    UnknownTag(u8),
    /// The payload ended inside `field` of message `msg`.
    Truncated {
        msg: &'static str,
        field: &'static str,
    },
    /// A boolean field held something other than 0 or 1.
    InvalidBool {
        msg: &'static str,
        field: &'static str,
        value: u8,
    },
    /// The embedded session record of message `msg` is invalid.
    Record {
        msg: &'static str,
        source: RecordError,
    },
    /// Bytes were left after a complete message.
    TrailingBytes {
        msg: &'static str,
        count: usize,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Empty => write!(f, "ipc message: empty payload"),
            MessageError::UnknownTag(t) => write!(f, "ipc message: unknown tag {t}"),
            MessageError::Truncated { msg, field } => {
                write!(f, "ipc message {msg}: truncated in {field}")
            }
            MessageError::InvalidBool { msg, field, value } => {
                write!(f, "ipc message {msg}: {field} is {value}, not a boolean")
            }
            MessageError::Record { msg, source } => write!(f, "ipc message {msg}: {source}"),
            MessageError::TrailingBytes { msg, count } => {
                write!(f, "ipc message {msg}: {count} trailing bytes")
            }
        }
    }
}

impl std::error::Error for MessageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MessageError::Record { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Field readers that name the message in their errors.
struct Fields<'a> {
    msg: &'static str,
    r: Reader<'a>,
}

impl Fields<'_> {
    fn u32(&mut self, field: &'static str) -> Result<u32, MessageError> {
        let msg = self.msg;
        self.r.u32(field).map_err(|_| MessageError::Truncated { msg, field })
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, MessageError> {
        let msg = self.msg;
        self.r.u64(field).map_err(|_| MessageError::Truncated { msg, field })
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, MessageError> {
        let msg = self.msg;
        match self.r.u8(field) {
            Ok(0) => Ok(false),
            Ok(1) => Ok(true),
            Ok(value) => Err(MessageError::InvalidBool { msg, field, value }),
            Err(_) => Err(MessageError::Truncated { msg, field }),
        }
    }

    fn record(&mut self) -> Result<SessionRecord, MessageError> {
        let msg = self.msg;
        SessionRecord::decode_from(&mut self.r).map_err(|source| MessageError::Record { msg, source })
    }

    fn finish(self) -> Result<(), MessageError> {
        match self.r.remaining() {
            0 => Ok(()),
            count => Err(MessageError::TrailingBytes { msg: self.msg, count }),
        }
    }
}

impl Msg {
    /// The name used in logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Login { .. } => "Login",
            Msg::CancelRequest { .. } => "CancelRequest",
            Msg::Assign { .. } => "Assign",
            Msg::Cancel { .. } => "Cancel",
            Msg::Shutdown => "Shutdown",
            Msg::SessionClosed { .. } => "SessionClosed",
            Msg::WorkerStatus { .. } => "WorkerStatus",
            Msg::Migrate { .. } => "Migrate",
            Msg::Draining => "Draining",
            Msg::Drain => "Drain",
            Msg::SessionState { .. } => "SessionState",
        }
    }

    /// How many file descriptors travel with this message in SCM_RIGHTS.
    pub fn fd_count(&self) -> usize {
        match self {
            Msg::Login { .. } | Msg::Assign { .. } | Msg::Migrate { .. } => 1,
            Msg::CancelRequest { .. }
            | Msg::Cancel { .. }
            | Msg::Shutdown
            | Msg::SessionClosed { .. }
            | Msg::Draining
            | Msg::Drain
            | Msg::SessionState { .. }
            | Msg::WorkerStatus { .. } => 0,
        }
    }

    /// Appends the tag and fields to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Login { record } => {
                out.push(TAG_LOGIN);
                record.encode(out);
            }
            Msg::CancelRequest { pid, key } => {
                out.push(TAG_CANCEL_REQUEST);
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&key.to_be_bytes());
            }
            Msg::Assign { record } => {
                out.push(TAG_ASSIGN);
                record.encode(out);
            }
            Msg::Cancel { session_id } => {
                out.push(TAG_CANCEL);
                out.extend_from_slice(&session_id.to_be_bytes());
            }
            Msg::Shutdown => out.push(TAG_SHUTDOWN),
            Msg::SessionClosed { session_id } => {
                out.push(TAG_SESSION_CLOSED);
                out.extend_from_slice(&session_id.to_be_bytes());
            }
            Msg::WorkerStatus { upstream_up, sessions } => {
                out.push(TAG_WORKER_STATUS);
                out.push(u8::from(*upstream_up));
                out.extend_from_slice(&sessions.to_be_bytes());
            }
            Msg::Migrate { record } => {
                out.push(TAG_MIGRATE);
                record.encode(out);
            }
            Msg::Draining => out.push(TAG_DRAINING),
            Msg::Drain => out.push(TAG_DRAIN),
            Msg::SessionState { record } => {
                out.push(TAG_SESSION_STATE);
                record.encode(out);
            }
        }
    }

    /// Decodes one whole message; the payload must hold exactly one message.
    pub fn decode(buf: &[u8]) -> Result<Msg, MessageError> {
        let (&tag, body) = buf.split_first().ok_or(MessageError::Empty)?;
        let name = match tag {
            TAG_LOGIN => "Login",
            TAG_CANCEL_REQUEST => "CancelRequest",
            TAG_ASSIGN => "Assign",
            TAG_CANCEL => "Cancel",
            TAG_SHUTDOWN => "Shutdown",
            TAG_SESSION_CLOSED => "SessionClosed",
            TAG_WORKER_STATUS => "WorkerStatus",
            TAG_MIGRATE => "Migrate",
            TAG_DRAINING => "Draining",
            TAG_DRAIN => "Drain",
            TAG_SESSION_STATE => "SessionState",
            other => return Err(MessageError::UnknownTag(other)),
        };
        let mut f = Fields { msg: name, r: Reader::new(body) };
        let msg = match tag {
            TAG_LOGIN => Msg::Login { record: f.record()? },
            TAG_CANCEL_REQUEST => Msg::CancelRequest { pid: f.u32("pid")?, key: f.u32("key")? },
            TAG_ASSIGN => Msg::Assign { record: f.record()? },
            TAG_CANCEL => Msg::Cancel { session_id: f.u64("session_id")? },
            TAG_SHUTDOWN => Msg::Shutdown,
            TAG_SESSION_CLOSED => Msg::SessionClosed { session_id: f.u64("session_id")? },
            TAG_MIGRATE => Msg::Migrate { record: f.record()? },
            TAG_DRAINING => Msg::Draining,
            TAG_DRAIN => Msg::Drain,
            TAG_SESSION_STATE => Msg::SessionState { record: f.record()? },
            // The only tag left after the match above.
            _ => Msg::WorkerStatus { upstream_up: f.bool("upstream_up")?, sessions: f.u32("sessions")? },
        };
        f.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{full_record, XorShift};

    fn all() -> Vec<Msg> {
        vec![
            Msg::Login { record: full_record() },
            Msg::CancelRequest { pid: 7, key: 0xffff_ffff },
            Msg::Assign { record: SessionRecord::default() },
            Msg::Cancel { session_id: 9 },
            Msg::Shutdown,
            Msg::SessionClosed { session_id: u64::MAX },
            Msg::WorkerStatus { upstream_up: true, sessions: 3 },
            Msg::WorkerStatus { upstream_up: false, sessions: 0 },
            Msg::Migrate { record: full_record() },
            Msg::Draining,
            Msg::Drain,
            Msg::SessionState { record: full_record() },
        ]
    }

    fn encoded(m: &Msg) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        buf
    }

    #[test]
    fn round_trip_all_variants() {
        for m in all() {
            assert_eq!(Msg::decode(&encoded(&m)).unwrap(), m, "{}", m.name());
        }
    }

    #[test]
    fn fd_counts() {
        let counts: Vec<usize> = all().iter().map(Msg::fd_count).collect();
        assert_eq!(counts, [1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn every_prefix_fails() {
        for m in all() {
            let buf = encoded(&m);
            for len in 0..buf.len() {
                assert!(Msg::decode(&buf[..len]).is_err(), "{} prefix {len}", m.name());
            }
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        for m in all() {
            let mut buf = encoded(&m);
            buf.push(0);
            let err = Msg::decode(&buf).unwrap_err();
            assert!(matches!(err, MessageError::TrailingBytes { count: 1, .. }), "{}: {err}", m.name());
        }
    }

    #[test]
    fn unknown_tags_rejected() {
        assert_eq!(Msg::decode(&[]), Err(MessageError::Empty));
        for tag in [0u8, 12, 0x51, 0xFF] {
            assert_eq!(Msg::decode(&[tag]), Err(MessageError::UnknownTag(tag)));
        }
    }

    #[test]
    fn invalid_bool_rejected() {
        assert!(matches!(
            Msg::decode(&[TAG_WORKER_STATUS, 2, 0, 0, 0, 0]),
            Err(MessageError::InvalidBool { value: 2, .. })
        ));
    }

    #[test]
    fn bad_embedded_record_rejected() {
        let mut buf = encoded(&Msg::Assign { record: full_record() });
        buf[1] = 99;
        assert!(matches!(
            Msg::decode(&buf),
            Err(MessageError::Record { msg: "Assign", source: RecordError::UnknownVersion(99) })
        ));
    }

    #[test]
    fn fuzz_decode_no_panic() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let valid: Vec<Vec<u8>> = all().iter().map(encoded).collect();
        for i in 0..50_000 {
            let mut buf = if i % 3 == 0 {
                let len = (rng.next() % 64) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let mut b = valid[(rng.next() as usize) % valid.len()].clone();
                b.truncate((rng.next() as usize) % (b.len() + 1) + if i % 2 == 0 { b.len() } else { 0 });
                b
            };
            if !buf.is_empty() {
                for _ in 0..(rng.next() % 3 + 1) {
                    let at = (rng.next() as usize) % buf.len();
                    buf[at] = rng.next() as u8;
                }
            }
            let _ = Msg::decode(&buf);
        }
    }
}
