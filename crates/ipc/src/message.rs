//! The messages processes exchange over their channels: one enum variant per message, one tag byte per variant,
//! and how many file descriptors each variant carries.
//!
//! Decoding is as strict as decoding client bytes: unknown tags, truncation, non-0/1 booleans and trailing bytes are
//! errors. Integers are big-endian; records use the encoding in [`crate::record`].

use std::fmt;

use crate::admin::AdminCommand;
use crate::channel::MAX_MSG_LEN;
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
// The admin console's messages start at 40, clear of the core's.
const TAG_STATS_REQUEST: u8 = 40;
const TAG_WORKER_STATS: u8 = 41;
const TAG_ADMIN_REQUEST: u8 = 42;
const TAG_ADMIN_REPLY: u8 = 43;
const TAG_PAUSE_SESSIONS: u8 = 44;
const TAG_KILL_SESSIONS: u8 = 45;
const TAG_KILL_SESSION: u8 = 46;
const TAG_RECONNECT_UPSTREAM: u8 = 47;
const TAG_SET_CONFIG: u8 = 49;
const TAG_CLOSE_CONSOLES: u8 = 50;

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
    /// Cancel the running (or held) request of a session. Also worker → supervisor: the worker no longer has that
    /// session (it moved away meanwhile), route it again.
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
    // ----- admin console -----
    /// supervisor → worker: report your counters and state (`WorkerStats` with the same `seq`).
    StatsRequest {
        seq: u64,
    },
    /// worker → supervisor: one piece of an encoded `stats::WorkerReport`; `last` ends it. `seq` 0: unsolicited
    /// (a worker's final numbers before it exits).
    WorkerStats {
        seq: u64,
        last: bool,
        part: Vec<u8>,
    },
    /// listener → supervisor: a console command, parsed and privilege-checked by the listener.
    AdminRequest {
        id: u64,
        command: AdminCommand,
    },
    /// supervisor → listener: one piece of an encoded `admin::AdminReply` to request `id`.
    AdminReply {
        id: u64,
        last: bool,
        part: Vec<u8>,
    },
    /// supervisor → worker: PAUSE (start no new transaction) or RESUME.
    PauseSessions {
        paused: bool,
    },
    /// supervisor → worker: KILL: close every session and the upstream, then exit.
    KillSessions,
    /// supervisor → worker: KILL_CLIENT: close this session.
    KillSession {
        session_id: u64,
    },
    /// supervisor → worker: RECONNECT: close the upstream once it is released; the next turn opens a new one.
    ReconnectUpstream,
    /// supervisor → any child: a `[pooler]` setting changed (console SET), already validated by the supervisor.
    SetConfig {
        key: String,
        value: String,
    },
    /// supervisor → listener: pgmux is stopping, end the console sessions (a listener that is only retired by a
    /// reload keeps serving them until their clients leave).
    CloseConsoles,
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
    /// A field's content is not valid (not UTF-8, an unknown command).
    Invalid {
        msg: &'static str,
        field: &'static str,
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
            MessageError::Invalid { msg, field } => write!(f, "ipc message {msg}: invalid {field}"),
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

    /// A `u32`-length byte string of at most one channel message.
    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, MessageError> {
        let msg = self.msg;
        let len = self.u32(field)? as usize;
        if len > MAX_MSG_LEN || len > self.r.remaining() {
            return Err(MessageError::Truncated { msg, field });
        }
        self.r.take(len, field).map(<[u8]>::to_vec).map_err(|_| MessageError::Truncated { msg, field })
    }

    fn string(&mut self, field: &'static str) -> Result<String, MessageError> {
        let msg = self.msg;
        String::from_utf8(self.bytes(field)?).map_err(|_| MessageError::Invalid { msg, field })
    }

    /// A console command filling the rest of the message.
    fn command(&mut self) -> Result<AdminCommand, MessageError> {
        let msg = self.msg;
        let rest = self
            .r
            .take(self.r.remaining(), "command")
            .map_err(|_| MessageError::Truncated { msg, field: "command" })?;
        let mut f = crate::wire::Fields::new(rest);
        let c = AdminCommand::decode(&mut f).and_then(|c| f.finish().map(|_| c));
        c.map_err(|_| MessageError::Invalid { msg, field: "command" })
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
            Msg::StatsRequest { .. } => "StatsRequest",
            Msg::WorkerStats { .. } => "WorkerStats",
            Msg::AdminRequest { .. } => "AdminRequest",
            Msg::AdminReply { .. } => "AdminReply",
            Msg::PauseSessions { .. } => "PauseSessions",
            Msg::KillSessions => "KillSessions",
            Msg::KillSession { .. } => "KillSession",
            Msg::ReconnectUpstream => "ReconnectUpstream",
            Msg::SetConfig { .. } => "SetConfig",
            Msg::CloseConsoles => "CloseConsoles",
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
            | Msg::WorkerStatus { .. }
            | Msg::StatsRequest { .. }
            | Msg::WorkerStats { .. }
            | Msg::AdminRequest { .. }
            | Msg::AdminReply { .. }
            | Msg::PauseSessions { .. }
            | Msg::KillSessions
            | Msg::KillSession { .. }
            | Msg::ReconnectUpstream
            | Msg::SetConfig { .. }
            | Msg::CloseConsoles => 0,
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
            Msg::StatsRequest { seq } => {
                out.push(TAG_STATS_REQUEST);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Msg::WorkerStats { seq, last, part } => {
                out.push(TAG_WORKER_STATS);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(u8::from(*last));
                crate::wire::put_bytes(out, part);
            }
            Msg::AdminRequest { id, command } => {
                out.push(TAG_ADMIN_REQUEST);
                out.extend_from_slice(&id.to_be_bytes());
                command.encode(out);
            }
            Msg::AdminReply { id, last, part } => {
                out.push(TAG_ADMIN_REPLY);
                out.extend_from_slice(&id.to_be_bytes());
                out.push(u8::from(*last));
                crate::wire::put_bytes(out, part);
            }
            Msg::PauseSessions { paused } => {
                out.push(TAG_PAUSE_SESSIONS);
                out.push(u8::from(*paused));
            }
            Msg::KillSessions => out.push(TAG_KILL_SESSIONS),
            Msg::KillSession { session_id } => {
                out.push(TAG_KILL_SESSION);
                out.extend_from_slice(&session_id.to_be_bytes());
            }
            Msg::ReconnectUpstream => out.push(TAG_RECONNECT_UPSTREAM),
            Msg::SetConfig { key, value } => {
                out.push(TAG_SET_CONFIG);
                crate::wire::put_str(out, key);
                crate::wire::put_str(out, value);
            }
            Msg::CloseConsoles => out.push(TAG_CLOSE_CONSOLES),
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
            TAG_STATS_REQUEST => "StatsRequest",
            TAG_WORKER_STATS => "WorkerStats",
            TAG_ADMIN_REQUEST => "AdminRequest",
            TAG_ADMIN_REPLY => "AdminReply",
            TAG_PAUSE_SESSIONS => "PauseSessions",
            TAG_KILL_SESSIONS => "KillSessions",
            TAG_KILL_SESSION => "KillSession",
            TAG_RECONNECT_UPSTREAM => "ReconnectUpstream",
            TAG_SET_CONFIG => "SetConfig",
            TAG_CLOSE_CONSOLES => "CloseConsoles",
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
            TAG_STATS_REQUEST => Msg::StatsRequest { seq: f.u64("seq")? },
            TAG_WORKER_STATS => Msg::WorkerStats { seq: f.u64("seq")?, last: f.bool("last")?, part: f.bytes("part")? },
            TAG_ADMIN_REQUEST => Msg::AdminRequest { id: f.u64("id")?, command: f.command()? },
            TAG_ADMIN_REPLY => Msg::AdminReply { id: f.u64("id")?, last: f.bool("last")?, part: f.bytes("part")? },
            TAG_PAUSE_SESSIONS => Msg::PauseSessions { paused: f.bool("paused")? },
            TAG_KILL_SESSIONS => Msg::KillSessions,
            TAG_KILL_SESSION => Msg::KillSession { session_id: f.u64("session_id")? },
            TAG_RECONNECT_UPSTREAM => Msg::ReconnectUpstream,
            TAG_SET_CONFIG => Msg::SetConfig { key: f.string("key")?, value: f.string("value")? },
            TAG_CLOSE_CONSOLES => Msg::CloseConsoles,
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
            Msg::StatsRequest { seq: 3 },
            Msg::WorkerStats { seq: 3, last: true, part: vec![1, 2, 3] },
            Msg::AdminRequest { id: 4, command: AdminCommand::Pause { db: Some("appdb".into()) } },
            Msg::AdminReply { id: 4, last: false, part: Vec::new() },
            Msg::PauseSessions { paused: true },
            Msg::KillSessions,
            Msg::KillSession { session_id: 5 },
            Msg::ReconnectUpstream,
            Msg::SetConfig { key: "query_wait_timeout".into(), value: "5".into() },
            Msg::CloseConsoles,
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
        assert_eq!(counts, [1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
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
            // A console command fills the rest of its message, so an extra byte makes the command invalid.
            let ok = matches!(err, MessageError::TrailingBytes { count: 1, .. })
                || matches!((&m, &err), (Msg::AdminRequest { .. }, MessageError::Invalid { field: "command", .. }));
            assert!(ok, "{}: {err}", m.name());
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
