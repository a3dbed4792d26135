//! What a worker reports about itself when the supervisor asks (`Msg::StatsRequest` → `Msg::WorkerStats`): its
//! cumulative counters (the numbers behind SHOW STATS), its upstream's state (SHOW SERVERS) and the state of each of
//! its sessions (SHOW CLIENTS, SHOW POOLS, SHOW PINS).
//!
//! Counters only grow for the life of the worker; the supervisor adds a dead worker's last counters to its pool, so
//! totals never go backwards. Times are microseconds; wall-clock instants are microseconds since the Unix epoch.
//!
//! The latency histograms behind the Prometheus endpoint ([`Histogram`], [`Latency`]) travel the same way: a fixed
//! array of bucket counts per histogram, so observing is an index and an increment, and adding two is element-wise
//! (which is how the supervisor sums workers, dead ones included).

use crate::wire::{put_bool, put_list, put_str, put_u32, put_u64, put_u8, Fields, WireError};

/// Cumulative numbers, named after PgBouncer's SHOW STATS columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Times a session was given the upstream (a turn began).
    pub server_assignment_count: u64,
    /// Transactions (and autocommit statements) that ended.
    pub xact_count: u64,
    /// Queries answered (ReadyForQuery delivered to a session).
    pub query_count: u64,
    /// Bytes received from clients.
    pub received: u64,
    /// Bytes sent to clients.
    pub sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    /// Time sessions waited for the upstream.
    pub wait_time_us: u64,
    /// Parse messages from clients.
    pub client_parse_count: u64,
    /// Parse messages pgmux sent upstream.
    pub server_parse_count: u64,
    /// Bind messages from clients.
    pub bind_count: u64,
    /// Turns whose request went upstream behind another session's, before that one was answered (pipelined).
    pub pipelined_count: u64,
}

impl Counters {
    fn fields(&self) -> [u64; 12] {
        [
            self.server_assignment_count,
            self.xact_count,
            self.query_count,
            self.received,
            self.sent,
            self.xact_time_us,
            self.query_time_us,
            self.wait_time_us,
            self.client_parse_count,
            self.server_parse_count,
            self.bind_count,
            self.pipelined_count,
        ]
    }

    fn from_fields(f: [u64; 12]) -> Counters {
        let [server_assignment_count, xact_count, query_count, received, sent, xact_time_us, query_time_us, wait_time_us, client_parse_count, server_parse_count, bind_count, pipelined_count] =
            f;
        Counters {
            server_assignment_count,
            xact_count,
            query_count,
            received,
            sent,
            xact_time_us,
            query_time_us,
            wait_time_us,
            client_parse_count,
            server_parse_count,
            bind_count,
            pipelined_count,
        }
    }

    fn zip(&self, other: &Counters, op: impl Fn(u64, u64) -> u64) -> Counters {
        let (a, b) = (self.fields(), other.fields());
        let mut out = [0u64; 12];
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = op(x, y);
        }
        Counters::from_fields(out)
    }

    pub fn add(&self, other: &Counters) -> Counters {
        self.zip(other, u64::saturating_add)
    }

    /// `self - other`, never below zero (a counter from a restarted source cannot make a delta negative).
    pub fn since(&self, other: &Counters) -> Counters {
        self.zip(other, u64::saturating_sub)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in self.fields() {
            put_u64(out, v);
        }
    }

    pub(crate) fn decode(f: &mut Fields<'_>) -> Result<Counters, WireError> {
        let mut v = [0u64; 12];
        for slot in v.iter_mut() {
            *slot = f.u64("counters")?;
        }
        Ok(Counters::from_fields(v))
    }
}

/// Upper bounds of the latency buckets in µs, inclusive as Prometheus' `le`: 0.5 ms to 10 s. Observations above the
/// last bound fall in a final bucket (`le="+Inf"`).
pub const BUCKET_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];
/// Buckets per histogram: one per bound plus the +Inf one.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// A latency histogram: observations per bucket (not cumulative; Prometheus' cumulative `_bucket` series are
/// computed when rendering) and the sum of every observation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Histogram {
    /// Counts one observation of `us` microseconds.
    pub fn observe(&mut self, us: u64) {
        let i = BUCKET_BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BUCKET_BOUNDS_US.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b = b.saturating_add(1);
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Running totals: entry `i` counts the observations at or below bound `i`; the last one is [`Self::count`].
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut out = [0u64; BUCKETS];
        let mut running = 0u64;
        for (o, b) in out.iter_mut().zip(self.buckets) {
            running = running.saturating_add(b);
            *o = running;
        }
        out
    }

    pub fn add(&self, other: &Histogram) -> Histogram {
        let mut out = *self;
        for (o, b) in out.buckets.iter_mut().zip(other.buckets) {
            *o = o.saturating_add(b);
        }
        out.sum_us = out.sum_us.saturating_add(other.sum_us);
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for b in self.buckets {
            put_u64(out, b);
        }
        put_u64(out, self.sum_us);
    }

    fn decode(f: &mut Fields<'_>) -> Result<Histogram, WireError> {
        let mut h = Histogram::default();
        for b in h.buckets.iter_mut() {
            *b = f.u64("histogram bucket")?;
        }
        h.sum_us = f.u64("histogram sum")?;
        Ok(h)
    }
}

/// The latency histograms a worker keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// From a query's first byte sent upstream to its ReadyForQuery (as `query_time_us`).
    pub query: Histogram,
    /// From a session's request arriving (it became readable and queued) to the start of its turn (as
    /// `wait_time_us`).
    pub wait: Histogram,
}

impl Latency {
    /// Encoded size in bytes.
    pub const LEN: usize = 2 * (BUCKETS + 1) * 8;

    pub fn add(&self, other: &Latency) -> Latency {
        Latency { query: self.query.add(&other.query), wait: self.wait.add(&other.wait) }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.query.encode(out);
        self.wait.encode(out);
    }

    pub(crate) fn decode(f: &mut Fields<'_>) -> Result<Latency, WireError> {
        Ok(Latency { query: Histogram::decode(f)?, wait: Histogram::decode(f)? })
    }
}

/// Where a session stands in its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Connected, nothing asked (PgBouncer counts these as cl_active too).
    Idle = 0,
    /// Owns the upstream (linked to a server).
    Active = 1,
    /// Has a request waiting for the upstream.
    Waiting = 2,
}

impl SessionState {
    fn from_u8(v: u8) -> Option<SessionState> {
        match v {
            0 => Some(SessionState::Idle),
            1 => Some(SessionState::Active),
            2 => Some(SessionState::Waiting),
            _ => None,
        }
    }
}

/// Pin bit a report adds to the statement-derived ones: the session holds the upstream inside a transaction.
pub const PIN_IN_TRANSACTION: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    pub session_id: u64,
    pub state: SessionState,
    /// How long it has waited for the upstream (0 unless waiting).
    pub wait_us: u64,
    /// When it last sent a request (0: never).
    pub request_time_us: u64,
    /// Its prepared statements (protocol and SQL level).
    pub prepared: u32,
    /// Why it keeps the upstream between transactions: `pgmux_proto::sql::PIN_*` bits and [`PIN_IN_TRANSACTION`].
    pub pins: u8,
}

/// The state of a worker's upstream, named as PgBouncer's server lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Idle = 0,
    Active = 1,
    /// Released but being cleaned (rollback, reset, unpin) before the next session gets it.
    Used = 2,
    /// Connecting and logging in.
    Login = 3,
}

impl ServerState {
    fn from_u8(v: u8) -> Option<ServerState> {
        match v {
            0 => Some(ServerState::Idle),
            1 => Some(ServerState::Active),
            2 => Some(ServerState::Used),
            3 => Some(ServerState::Login),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReport {
    pub backend_pid: u32,
    pub state: ServerState,
    /// The session that owns it (0: none).
    pub owner: u64,
    pub connect_time_us: u64,
    /// When a session last began a turn on it (0: never).
    pub request_time_us: u64,
    pub local_addr: String,
    pub local_port: u32,
    /// Statements prepared on it.
    pub prepared: u32,
    pub application_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub counters: Counters,
    pub upstream: Option<UpstreamReport>,
    /// PAUSE is in effect: no new turns begin.
    pub paused: bool,
    /// No session owns the upstream and nothing is owed: PAUSE is complete for this worker.
    pub released: bool,
    /// The upstream will be closed once released (RECONNECT, server_lifetime).
    pub close_needed: bool,
    pub sessions: Vec<SessionReport>,
    pub latency: Latency,
}

impl WorkerReport {
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.counters.encode(out);
        match &self.upstream {
            None => put_bool(out, false),
            Some(u) => {
                put_bool(out, true);
                put_u32(out, u.backend_pid);
                put_u8(out, u.state as u8);
                put_u64(out, u.owner);
                put_u64(out, u.connect_time_us);
                put_u64(out, u.request_time_us);
                put_str(out, &u.local_addr);
                put_u32(out, u.local_port);
                put_u32(out, u.prepared);
                put_str(out, &u.application_name);
            }
        }
        put_bool(out, self.paused);
        put_bool(out, self.released);
        put_bool(out, self.close_needed);
        put_list(out, &self.sessions, |out, s| {
            put_u64(out, s.session_id);
            put_u8(out, s.state as u8);
            put_u64(out, s.wait_us);
            put_u64(out, s.request_time_us);
            put_u32(out, s.prepared);
            put_u8(out, s.pins);
        });
        self.latency.encode(out);
    }

    /// Decodes a whole payload (all its pieces joined).
    pub fn decode(buf: &[u8]) -> Result<WorkerReport, WireError> {
        let mut f = Fields::new(buf);
        let counters = Counters::decode(&mut f)?;
        let upstream = if f.bool("upstream")? {
            Some(UpstreamReport {
                backend_pid: f.u32("backend_pid")?,
                state: ServerState::from_u8(f.u8("server state")?).ok_or(WireError::InvalidValue("server state"))?,
                owner: f.u64("owner")?,
                connect_time_us: f.u64("connect_time")?,
                request_time_us: f.u64("request_time")?,
                local_addr: f.string("local_addr")?,
                local_port: f.u32("local_port")?,
                prepared: f.u32("prepared")?,
                application_name: f.string("application_name")?,
            })
        } else {
            None
        };
        let paused = f.bool("paused")?;
        let released = f.bool("released")?;
        let close_needed = f.bool("close_needed")?;
        // id 8 + state 1 + wait 8 + request 8 + prepared 4 + pins 1
        let sessions = f.list("sessions", 30, |f| {
            Ok(SessionReport {
                session_id: f.u64("session_id")?,
                state: SessionState::from_u8(f.u8("session state")?).ok_or(WireError::InvalidValue("session state"))?,
                wait_us: f.u64("wait")?,
                request_time_us: f.u64("request_time")?,
                prepared: f.u32("prepared")?,
                pins: f.u8("pins")?,
            })
        })?;
        let latency = Latency::decode(&mut f)?;
        f.finish()?;
        Ok(WorkerReport { counters, upstream, paused, released, close_needed, sessions, latency })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> WorkerReport {
        WorkerReport {
            counters: Counters {
                xact_count: 3,
                query_count: 9,
                sent: 100,
                bind_count: u64::MAX,
                ..Counters::default()
            },
            upstream: Some(UpstreamReport {
                backend_pid: 4242,
                state: ServerState::Active,
                owner: 7,
                connect_time_us: 1_700_000_000_000_000,
                request_time_us: 1_700_000_000_500_000,
                local_addr: "127.0.0.1".into(),
                local_port: 51000,
                prepared: 2,
                application_name: String::new(),
            }),
            paused: false,
            released: false,
            close_needed: true,
            sessions: vec![
                SessionReport {
                    session_id: 7,
                    state: SessionState::Active,
                    wait_us: 0,
                    request_time_us: 5,
                    prepared: 1,
                    pins: 1 | PIN_IN_TRANSACTION,
                },
                SessionReport {
                    session_id: 8,
                    state: SessionState::Waiting,
                    wait_us: 1500,
                    request_time_us: 6,
                    prepared: 0,
                    pins: 0,
                },
            ],
            latency: {
                let mut l = Latency::default();
                l.query.observe(700);
                l.wait.observe(u64::MAX);
                l
            },
        }
    }

    #[test]
    fn report_round_trip() {
        for r in [sample(), WorkerReport::default()] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(WorkerReport::decode(&buf).unwrap(), r);
            for len in 0..buf.len() {
                assert!(WorkerReport::decode(&buf[..len]).is_err(), "prefix {len}");
            }
            buf.push(0);
            assert_eq!(WorkerReport::decode(&buf), Err(WireError::TrailingBytes(1)));
        }
    }

    #[test]
    fn bad_enum_values_rejected() {
        let r = WorkerReport { sessions: sample().sessions, ..WorkerReport::default() };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        // counters 12 × 8 + upstream flag 1 + 3 flags + count 4 + session id 8 → state byte
        buf[96 + 1 + 3 + 4 + 8] = 9;
        assert_eq!(WorkerReport::decode(&buf), Err(WireError::InvalidValue("session state")));
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let mut h = Histogram::default();
        for us in [0, 500, 501, 1_000, 10_000_000, 10_000_001, u64::MAX] {
            h.observe(us);
        }
        // 0 and 500 in le=0.0005; 501 and 1000 in le=0.001; 10 s in le=10; the rest in +Inf.
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 2);
        assert_eq!(h.buckets[BUCKETS - 2], 1);
        assert_eq!(h.buckets[BUCKETS - 1], 2);
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum_us, u64::MAX, "the sum saturates instead of wrapping");
        let c = h.cumulative();
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c[BUCKETS - 1], h.count());
        assert_eq!(c[0], 2);
        assert_eq!(c[1], 4);
        let twice = h.add(&h);
        assert_eq!(twice.count(), 14);
        assert_eq!(twice.buckets[1], 4);
    }

    #[test]
    fn counters_arithmetic() {
        let a = Counters { xact_count: 5, sent: 10, ..Counters::default() };
        let b = Counters { xact_count: 2, sent: 20, ..Counters::default() };
        assert_eq!(a.add(&b).xact_count, 7);
        assert_eq!(a.since(&b).xact_count, 3);
        assert_eq!(a.since(&b).sent, 0);
    }
}
