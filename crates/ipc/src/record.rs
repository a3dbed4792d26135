//! The session record: everything that describes a client session apart from its socket, and its versioned binary
//! encoding.
//!
//! The same record travels supervisor → worker for a new session, worker → supervisor → worker when a session moves,
//! and supervisor → worker when a session is recovered after its worker died, so the encoding is versioned and its
//! decoder is as strict as a decoder of client bytes: every length is checked against the bytes that remain and
//! against a cap before anything is allocated, strings must be UTF-8, and trailing bytes are rejected.
//!
//! Layout (all integers big-endian): `version: u8`, then the fields of [`SessionRecord`] in declaration order.
//! Strings are `u32` length + UTF-8 bytes, vectors are `u32` count + items, `pending_input` is `u32` length + bytes.

use std::fmt;

/// Version byte that starts every encoded record.
pub const RECORD_VERSION: u8 = 6;
/// Longest string (in bytes) a record may carry.
pub const MAX_STRING_LEN: usize = 1024 * 1024;
/// Most startup parameters a record may carry.
pub const MAX_STARTUP_PARAMS: usize = 4096;
/// Most tracked settings a record may carry.
pub const MAX_SETTINGS: usize = 4096;
/// Most prepared statements a record may carry.
pub const MAX_PREPARED: usize = 65536;
/// Most parameter types a single prepared statement may declare (the protocol's own limit).
pub const MAX_PARAM_TYPES: usize = 65535;
/// Most not-yet-processed client bytes a record may carry.
pub const MAX_PENDING_INPUT: usize = 1024 * 1024;

/// A prepared statement, kept by definition so it can be re-prepared on any upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedStatement {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

/// Everything about a client session except its socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: u64,
    /// The database name the client asked for.
    pub database: String,
    pub user: String,
    /// Startup parameters as sent by the client, without `user` and `database`.
    pub startup_params: Vec<(String, String)>,
    pub cancel_pid: u32,
    pub cancel_key: u32,
    /// `"127.0.0.1:51234"`, `"[::1]:5000"` or `"unix"`.
    pub client_addr: String,
    /// Tracked session settings.
    pub settings: Vec<(String, String)>,
    /// The session's prepared statements, by definition.
    pub prepared: Vec<PreparedStatement>,
    /// Pinned-state bits, defined by the binary.
    pub flags: u32,
    /// Client bytes already read but not yet acted on.
    pub pending_input: Vec<u8>,
    /// The settings the session started with (what RESET ALL returns to).
    pub baseline: Vec<(String, String)>,
    /// SQL-level prepared statements: (the session's name, pgmux's upstream name, the text after the name).
    pub sql_prepared: Vec<(String, String, String)>,
    /// Channels the session LISTENs to.
    pub listens: Vec<String>,
    /// When the session left its previous worker (CLOCK_MONOTONIC nanoseconds, shared by all processes); 0 if it
    /// never moved. Lets the receiving worker measure what a move cost.
    pub moved_at_ns: u64,
    /// Since when the session has been waiting for a server connection (CLOCK_MONOTONIC nanoseconds), kept across
    /// moves so `query_wait_timeout` and the reserve pool count the whole wait; 0 if it is not waiting.
    pub waiting_since_ns: u64,
    /// The client's SCRAM ClientKey when it logged in with SCRAM-SHA-256 against a stored secret (32 bytes), else
    /// empty: lets the worker log in upstream as the user without the password.
    pub scram_client_key: Vec<u8>,
    /// The secret `auth_query` returned for this user (md5 hash, SCRAM secret or password, as PostgreSQL stores
    /// it), when the user is not in auth_file; else empty. The worker logs in upstream with it (with an md5 hash or
    /// a password directly, with a SCRAM secret together with `scram_client_key`).
    pub auth_secret: String,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The first byte is not a version this build understands.
    UnknownVersion(u8),
    /// The buffer ended inside `field`.
    Truncated { field: &'static str, needed: usize, remaining: usize },
    /// `field` declares a length or count above its cap.
    TooLong { field: &'static str, len: usize, max: usize },
    /// `field` declares more items than the remaining bytes could possibly hold.
    CountExceedsInput { field: &'static str, count: usize, remaining: usize },
    /// `field` is not valid UTF-8.
    InvalidUtf8 { field: &'static str },
    /// Bytes were left after a complete record.
    TrailingBytes(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::UnknownVersion(v) => {
                write!(f, "session record: unknown version {v} (expected {RECORD_VERSION})")
            }
            RecordError::Truncated { field, needed, remaining } => {
                write!(f, "session record: truncated in {field}: need {needed} bytes, {remaining} remain")
            }
            RecordError::TooLong { field, len, max } => {
                write!(f, "session record: {field} length {len} exceeds cap {max}")
            }
            RecordError::CountExceedsInput { field, count, remaining } => {
                write!(f, "session record: {field} declares {count} items but only {remaining} bytes remain")
            }
            RecordError::InvalidUtf8 { field } => {
                write!(f, "session record: {field} is not valid UTF-8")
            }
            RecordError::TrailingBytes(n) => {
                write!(f, "session record: {n} trailing bytes after the record")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// A bounds-checked cursor over received bytes. Shared with `message` so both decoders fail the same way.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RecordError> {
        let remaining = self.remaining();
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(RecordError::Truncated { field, needed: n, remaining }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a `u32` count of items each at least `min_item_len` bytes long, checked against `max` and against what
    /// remains, so a lying count can never drive an allocation.
    fn count(&mut self, field: &'static str, max: usize, min_item_len: usize) -> Result<usize, RecordError> {
        let count = self.u32(field)? as usize;
        if count > max {
            return Err(RecordError::TooLong { field, len: count, max });
        }
        let remaining = self.remaining();
        if count.saturating_mul(min_item_len) > remaining {
            return Err(RecordError::CountExceedsInput { field, count, remaining });
        }
        Ok(count)
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], RecordError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(RecordError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    fn string(&mut self, field: &'static str) -> Result<String, RecordError> {
        let bytes = self.bytes(field, MAX_STRING_LEN)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| RecordError::InvalidUtf8 { field })
    }

    fn pairs(
        &mut self,
        field: &'static str,
        key_field: &'static str,
        value_field: &'static str,
        max: usize,
    ) -> Result<Vec<(String, String)>, RecordError> {
        // Each pair is at least two empty strings: 8 bytes.
        let count = self.count(field, max, 8)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.string(key_field)?;
            let value = self.string(value_field)?;
            out.push((key, value));
        }
        Ok(out)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Lengths above `u32::MAX` cannot be represented; they are clamped, which yields an encoding the decoder rejects
/// (every cap is far below `u32::MAX`) instead of a silently different record.
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    put_len(out, pairs.len());
    for (k, v) in pairs {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

impl SessionRecord {
    /// Appends the versioned encoding to `out`. Caps are not enforced here; the receiver's decoder enforces them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.session_id.to_be_bytes());
        put_bytes(out, self.database.as_bytes());
        put_bytes(out, self.user.as_bytes());
        put_pairs(out, &self.startup_params);
        put_u32(out, self.cancel_pid);
        put_u32(out, self.cancel_key);
        put_bytes(out, self.client_addr.as_bytes());
        put_pairs(out, &self.settings);
        put_len(out, self.prepared.len());
        for p in &self.prepared {
            put_bytes(out, p.name.as_bytes());
            put_bytes(out, p.query.as_bytes());
            put_len(out, p.param_types.len());
            for t in &p.param_types {
                put_u32(out, *t);
            }
        }
        put_u32(out, self.flags);
        put_bytes(out, &self.pending_input);
        put_pairs(out, &self.baseline);
        put_len(out, self.sql_prepared.len());
        for (name, upstream, rest) in &self.sql_prepared {
            put_bytes(out, name.as_bytes());
            put_bytes(out, upstream.as_bytes());
            put_bytes(out, rest.as_bytes());
        }
        put_len(out, self.listens.len());
        for l in &self.listens {
            put_bytes(out, l.as_bytes());
        }
        out.extend_from_slice(&self.moved_at_ns.to_be_bytes());
        out.extend_from_slice(&self.waiting_since_ns.to_be_bytes());
        put_bytes(out, &self.scram_client_key);
        put_bytes(out, self.auth_secret.as_bytes());
    }

    /// Decodes a record that must fill `buf` exactly.
    pub fn decode(buf: &[u8]) -> Result<SessionRecord, RecordError> {
        let (record, used) = Self::decode_prefix(buf)?;
        match buf.len() - used {
            0 => Ok(record),
            n => Err(RecordError::TrailingBytes(n)),
        }
    }

    /// Decodes a record from the start of `buf` and returns it with the number of bytes it occupied, so a record
    /// can be embedded in a larger message.
    pub fn decode_prefix(buf: &[u8]) -> Result<(SessionRecord, usize), RecordError> {
        let mut r = Reader::new(buf);
        let record = Self::decode_from(&mut r)?;
        Ok((record, r.position()))
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<SessionRecord, RecordError> {
        let version = r.u8("version")?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion(version));
        }
        let session_id = r.u64("session_id")?;
        let database = r.string("database")?;
        let user = r.string("user")?;
        let startup_params =
            r.pairs("startup_params", "startup_params.name", "startup_params.value", MAX_STARTUP_PARAMS)?;
        let cancel_pid = r.u32("cancel_pid")?;
        let cancel_key = r.u32("cancel_key")?;
        let client_addr = r.string("client_addr")?;
        let settings = r.pairs("settings", "settings.name", "settings.value", MAX_SETTINGS)?;
        // Each statement is at least two empty strings and an empty type list: 12 bytes.
        let n_prepared = r.count("prepared", MAX_PREPARED, 12)?;
        let mut prepared = Vec::with_capacity(n_prepared);
        for _ in 0..n_prepared {
            let name = r.string("prepared.name")?;
            let query = r.string("prepared.query")?;
            let n_types = r.count("prepared.param_types", MAX_PARAM_TYPES, 4)?;
            let mut param_types = Vec::with_capacity(n_types);
            for _ in 0..n_types {
                param_types.push(r.u32("prepared.param_types")?);
            }
            prepared.push(PreparedStatement { name, query, param_types });
        }
        let flags = r.u32("flags")?;
        let pending_input = r.bytes("pending_input", MAX_PENDING_INPUT)?.to_vec();
        let baseline = r.pairs("baseline", "baseline.name", "baseline.value", MAX_SETTINGS)?;
        // Three strings, each at least a 4-byte length.
        let n_sql = r.count("sql_prepared", MAX_PREPARED, 12)?;
        let mut sql_prepared = Vec::with_capacity(n_sql);
        for _ in 0..n_sql {
            let name = r.string("sql_prepared.name")?;
            let upstream = r.string("sql_prepared.upstream_name")?;
            let rest = r.string("sql_prepared.text")?;
            sql_prepared.push((name, upstream, rest));
        }
        let n_listens = r.count("listens", MAX_SETTINGS, 4)?;
        let mut listens = Vec::with_capacity(n_listens);
        for _ in 0..n_listens {
            listens.push(r.string("listens")?);
        }
        let moved_at_ns = r.u64("moved_at_ns")?;
        let waiting_since_ns = r.u64("waiting_since_ns")?;
        let scram_client_key = r.bytes("scram_client_key", 32)?.to_vec();
        let auth_secret = r.string("auth_secret")?;
        Ok(SessionRecord {
            session_id,
            database,
            user,
            startup_params,
            cancel_pid,
            cancel_key,
            client_addr,
            settings,
            prepared,
            flags,
            pending_input,
            baseline,
            sql_prepared,
            listens,
            moved_at_ns,
            waiting_since_ns,
            scram_client_key,
            auth_secret,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn full_record() -> SessionRecord {
        SessionRecord {
            session_id: 0x0102_0304_0506_0708,
            database: "app".into(),
            user: "alice".into(),
            startup_params: vec![("application_name".into(), "psql".into()), ("client_encoding".into(), "UTF8".into())],
            cancel_pid: 42,
            cancel_key: 0xdead_beef,
            client_addr: "[::1]:5000".into(),
            settings: vec![("search_path".into(), "public".into())],
            prepared: vec![
                PreparedStatement { name: "s1".into(), query: "select $1::int".into(), param_types: vec![23] },
                PreparedStatement { name: String::new(), query: "select 1".into(), param_types: vec![] },
            ],
            flags: 0b101,
            pending_input: b"Q\0\0\0\x0dselect 1\0".to_vec(),
            baseline: vec![("application_name".into(), "psql".into())],
            sql_prepared: vec![("p".into(), "pgmuxq_1_1".into(), " AS SELECT 1".into())],
            listens: vec!["jobs".into()],
            moved_at_ns: 123_456_789,
            waiting_since_ns: 123_000_000,
            scram_client_key: vec![9; 32],
            auth_secret: "md5d0763edaa9d9bd2a9516280e9044d885".into(),
        }
    }

    fn round_trip(r: &SessionRecord) {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf[0], RECORD_VERSION);
        assert_eq!(&SessionRecord::decode(&buf).unwrap(), r);
        let (prefix, used) = SessionRecord::decode_prefix(&buf).unwrap();
        assert_eq!((&prefix, used), (r, buf.len()));
    }

    /// A small deterministic PRNG so fuzz loops need no dependency.
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn round_trip_empty() {
        round_trip(&SessionRecord::default());
    }

    #[test]
    fn round_trip_full() {
        round_trip(&full_record());
    }

    #[test]
    fn round_trip_unicode() {
        let mut r = full_record();
        r.database = "базаданных".into();
        r.user = "ユーザー🐘".into();
        r.settings.push(("application_name".into(), "ça va — ✓".into()));
        round_trip(&r);
    }

    #[test]
    fn round_trip_max_counts() {
        let pair = (String::new(), String::new());
        let r = SessionRecord {
            startup_params: vec![pair.clone(); MAX_STARTUP_PARAMS],
            settings: vec![pair; MAX_SETTINGS],
            prepared: {
                let mut v = vec![PreparedStatement::default(); MAX_PREPARED];
                v[0].param_types = vec![7; MAX_PARAM_TYPES];
                v
            },
            pending_input: vec![0xAB; MAX_PENDING_INPUT],
            database: "d".repeat(MAX_STRING_LEN),
            ..SessionRecord::default()
        };
        round_trip(&r);
    }

    #[test]
    fn over_caps_rejected() {
        let mut r = SessionRecord {
            settings: vec![(String::new(), String::new()); MAX_SETTINGS + 1],
            ..SessionRecord::default()
        };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert!(matches!(SessionRecord::decode(&buf), Err(RecordError::TooLong { field: "settings", .. })));

        r = SessionRecord { user: "u".repeat(MAX_STRING_LEN + 1), ..SessionRecord::default() };
        buf.clear();
        r.encode(&mut buf);
        assert!(matches!(SessionRecord::decode(&buf), Err(RecordError::TooLong { field: "user", .. })));

        r = SessionRecord { pending_input: vec![0; MAX_PENDING_INPUT + 1], ..SessionRecord::default() };
        buf.clear();
        r.encode(&mut buf);
        assert!(matches!(SessionRecord::decode(&buf), Err(RecordError::TooLong { field: "pending_input", .. })));
    }

    #[test]
    fn every_prefix_fails() {
        let mut buf = Vec::new();
        full_record().encode(&mut buf);
        for len in 0..buf.len() {
            let err = SessionRecord::decode(&buf[..len]).unwrap_err();
            assert!(
                matches!(err, RecordError::Truncated { .. } | RecordError::CountExceedsInput { .. }),
                "prefix {len}: {err}"
            );
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut buf = Vec::new();
        full_record().encode(&mut buf);
        buf.push(0);
        assert_eq!(SessionRecord::decode(&buf), Err(RecordError::TrailingBytes(1)));
    }

    #[test]
    fn unknown_version_rejected() {
        let mut buf = Vec::new();
        full_record().encode(&mut buf);
        buf[0] = RECORD_VERSION + 1;
        assert_eq!(SessionRecord::decode(&buf), Err(RecordError::UnknownVersion(RECORD_VERSION + 1)));
    }

    #[test]
    fn invalid_utf8_rejected() {
        let r = SessionRecord { database: "ab".into(), ..SessionRecord::default() };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        // version(1) + session_id(8) + len(4) → first byte of "ab"
        buf[13] = 0xFF;
        assert_eq!(SessionRecord::decode(&buf), Err(RecordError::InvalidUtf8 { field: "database" }));
    }

    #[test]
    fn lying_counts_fail_without_allocating() {
        // Empty record, then overwrite the startup_params count (after version, id, two empty strings) with a count
        // within the cap but far beyond the input, and then with u32::MAX.
        let mut buf = Vec::new();
        SessionRecord::default().encode(&mut buf);
        let at = 1 + 8 + 4 + 4;
        for count in [MAX_STARTUP_PARAMS as u32, u32::MAX] {
            buf[at..at + 4].copy_from_slice(&count.to_be_bytes());
            assert!(SessionRecord::decode(&buf).is_err());
        }
        // A string length of u32::MAX must not be trusted either.
        let mut buf = Vec::new();
        SessionRecord::default().encode(&mut buf);
        buf[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(SessionRecord::decode(&buf), Err(RecordError::TooLong { field: "database", .. })));
        // A prepared count within the cap that the input cannot hold.
        let r = SessionRecord::default();
        let mut buf = Vec::new();
        r.encode(&mut buf);
        // version, id, db, user, params, pid, key, addr, settings → prepared count
        let at = 1 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + 4;
        buf[at..at + 4].copy_from_slice(&(MAX_PREPARED as u32).to_be_bytes());
        assert!(matches!(SessionRecord::decode(&buf), Err(RecordError::CountExceedsInput { field: "prepared", .. })));
    }

    #[test]
    fn fuzz_decode_no_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut valid = Vec::new();
        full_record().encode(&mut valid);
        for i in 0..20_000 {
            let mut buf = if i % 2 == 0 {
                valid.clone()
            } else {
                let len = (rng.next() % 128) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            };
            if !buf.is_empty() {
                for _ in 0..(rng.next() % 4 + 1) {
                    let at = (rng.next() as usize) % buf.len();
                    buf[at] = rng.next() as u8;
                }
            }
            let _ = SessionRecord::decode(&buf);
        }
    }
}
