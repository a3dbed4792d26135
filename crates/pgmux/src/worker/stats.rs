//! The worker's side of the admin console: the counters behind SHOW STATS, the report the supervisor asks for
//! (`Msg::StatsRequest` → `Msg::WorkerStats`, the state of the upstream and of every session), and the console's
//! controls that act inside a worker (PAUSE/RESUME, KILL, KILL_CLIENT, RECONNECT, SET).
//!
//! Counting follows PgBouncer: a query ends at each ReadyForQuery a session receives, a transaction at each one
//! that leaves the upstream idle (so an autocommit statement is one transaction), query and transaction times run
//! from the first byte sent upstream to that ReadyForQuery, and wait time runs from a session's request until its
//! turn begins. The counters only grow; the supervisor keeps a dead worker's last numbers in its pool's totals, and
//! a worker that exits on purpose sends its final numbers unasked (`seq` 0). Each query time and each wait is also
//! counted in a latency histogram (the Prometheus endpoint's), at the moment it is added to its total.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use pgmux_ipc::stats::{
    Counters, Latency, ServerState, SessionReport, SessionState, UpstreamReport, WorkerReport, PIN_IN_TRANSACTION,
};
use pgmux_ipc::{wire, Msg};

use super::Worker;

/// What a worker counts and the console state it is under.
#[derive(Debug, Default)]
pub struct Stats {
    pub counters: Counters,
    pub latency: Latency,
    /// When the query now running upstream for a session was sent (cleared at its ReadyForQuery).
    query_start: Option<Instant>,
    /// When the transaction now open for a session began.
    xact_start: Option<Instant>,
    /// When a session last began a turn.
    last_turn: Option<Instant>,
    /// PAUSE: start no new turn.
    pub paused: bool,
    /// RECONNECT: close the upstream once it is released.
    pub reconnect: bool,
    /// Reports asked for and not yet sent. They are answered at the end of the loop iteration, after scheduling:
    /// a session whose request arrived in the same wake-up as the request for a report would otherwise be
    /// reported waiting although it is given the upstream a moment later (and a client's Terminate is no wait).
    pub reports_due: Vec<u64>,
}

impl Stats {
    /// A session's turn begins after it waited since `queued_at`.
    pub fn turn_began(&mut self, queued_at: Instant) {
        let now = Instant::now();
        let waited = micros(now.saturating_duration_since(queued_at));
        self.counters.server_assignment_count += 1;
        self.counters.wait_time_us += waited;
        self.latency.wait.observe(waited);
        self.last_turn = Some(now);
    }

    /// A client message of `len` bytes with `tag` went (or is going) upstream.
    pub fn client_message(&mut self, tag: u8, len: usize) {
        self.counters.received += len as u64;
        match tag {
            b'P' => self.counters.client_parse_count += 1,
            b'B' => self.counters.bind_count += 1,
            _ => {}
        }
        let now = Instant::now();
        self.query_start.get_or_insert(now);
        self.xact_start.get_or_insert(now);
    }

    /// Bytes of a large message streamed through without being framed again.
    pub fn client_bytes(&mut self, len: usize) {
        self.counters.received += len as u64;
    }

    pub fn sent_to_client(&mut self, len: usize) {
        self.counters.sent += len as u64;
    }

    pub fn server_parse(&mut self) {
        self.counters.server_parse_count += 1;
    }

    /// A session received a ReadyForQuery with transaction status `status`.
    pub fn ready_for_query(&mut self, status: u8) {
        let now = Instant::now();
        self.counters.query_count += 1;
        if let Some(t) = self.query_start.take() {
            let took = micros(now.saturating_duration_since(t));
            self.counters.query_time_us += took;
            self.latency.query.observe(took);
        }
        if status == b'I' {
            self.counters.xact_count += 1;
            if let Some(t) = self.xact_start.take() {
                self.counters.xact_time_us += micros(now.saturating_duration_since(t));
            }
        }
    }

    /// The upstream went away: whatever was running will not be answered, and a RECONNECT asked for it is done.
    pub fn upstream_lost(&mut self) {
        self.query_start = None;
        self.xact_start = None;
        self.reconnect = false;
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `at` on the wall clock, in µs since the epoch (0 if the clock is before the epoch).
fn wall_us(at: Instant, now: Instant, wall_now: u64) -> u64 {
    wall_now.saturating_sub(micros(now.saturating_duration_since(at)))
}

fn wall_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(micros).unwrap_or(0)
}

impl Worker {
    /// Console messages from the supervisor. False: not one of them.
    pub(super) fn on_admin_message(&mut self, msg: &Msg) -> bool {
        match msg {
            Msg::StatsRequest { seq } => self.stats.reports_due.push(*seq),
            Msg::PauseSessions { paused } => {
                if self.stats.paused != *paused {
                    info!("{}", if *paused { "paused: no new transactions start" } else { "resumed" });
                }
                self.stats.paused = *paused;
            }
            Msg::ReconnectUpstream => {
                if self.upstream.is_some() {
                    info!("RECONNECT: the server connection closes once released");
                    self.stats.reconnect = true;
                }
            }
            Msg::KillSession { session_id } => {
                if let Some(&idx) = self.by_id.get(session_id) {
                    self.close_session(idx, "admin forced disconnect", Some(("08P01", "admin forced disconnect")));
                }
            }
            Msg::KillSessions => self.kill_all(),
            Msg::SetConfig { key, value } => match self.ctx.config.with_setting(key, value) {
                Ok(c) => {
                    self.ctx.config = Arc::new(c);
                    self.refresh_timeouts();
                }
                Err(e) => warn!("SET {key}: {e:?}"),
            },
            _ => return false,
        }
        true
    }

    /// KILL: every session goes (with PgBouncer's message), then the upstream, then this worker.
    fn kill_all(&mut self) {
        info!("KILL: closing every session and the server connection");
        let ids: Vec<usize> = (0..self.sessions.len()).filter(|&i| self.session(i).is_some()).collect();
        for idx in ids {
            self.close_session(idx, "KILL", Some(("08P01", "database removed")));
        }
        self.stop = true;
    }

    /// Whether the released, clean upstream must close now, and why: RECONNECT asked for it, or PAUSE (which in
    /// PgBouncer disconnects every server, so the database can be restarted; the next turn after RESUME connects
    /// again).
    pub(super) fn close_due(&self) -> Option<&'static str> {
        if self.upstream.is_none() || self.owner.is_some() {
            return None;
        }
        if self.stats.paused {
            Some("PAUSE")
        } else if self.stats.reconnect {
            Some("RECONNECT")
        } else {
            None
        }
    }

    /// Sends this worker's report in as many pieces as it needs.
    pub(super) fn send_report(&mut self, seq: u64) {
        let mut payload = Vec::new();
        self.report().encode(&mut payload);
        let parts = wire::chunks(&payload);
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let msg = Msg::WorkerStats { seq, last: i + 1 == n, part: part.to_vec() };
            if let Err(e) = self.outbox.send(&self.ctx.channel, &msg, Vec::new()) {
                warn!("cannot send stats to the supervisor: {e}");
                return;
            }
        }
    }

    /// Answer the reports asked for since the last iteration (see `Stats::reports_due`).
    pub(super) fn send_due_reports(&mut self) {
        for seq in std::mem::take(&mut self.stats.reports_due) {
            self.send_report(seq);
        }
    }

    /// The numbers a worker leaves behind when it exits on purpose.
    pub(super) fn send_final_report(&mut self) {
        self.send_report(0);
        self.flush_outbox();
    }

    fn report(&self) -> WorkerReport {
        let now = Instant::now();
        let wall = wall_now_us();
        let owner_id = self.owner.and_then(|o| self.sessions.get(o)).and_then(|s| s.as_ref()).map(|s| s.id);
        let in_txn = self.upstream.as_ref().is_some_and(|u| u.txn_status != b'I');
        let cleaning = !self.replies.is_empty() || !self.jobs.is_empty() || self.needs_reset || self.needs_unpin;
        let upstream = self.upstream.as_ref().map(|u| {
            let (local_addr, local_port) = local_address(&u.conn);
            UpstreamReport {
                backend_pid: u.backend_pid,
                state: if owner_id.is_some() {
                    ServerState::Active
                } else if cleaning {
                    ServerState::Used
                } else {
                    ServerState::Idle
                },
                owner: owner_id.unwrap_or(0),
                connect_time_us: wall_us(u.connected_at, now, wall),
                request_time_us: self.stats.last_turn.map_or(0, |t| wall_us(t, now, wall)),
                local_addr,
                local_port,
                prepared: u32::try_from(u.stmts.count()).unwrap_or(u32::MAX),
                application_name: String::new(),
            }
        });
        let sessions = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(idx, s)| s.as_ref().map(|s| (idx, s)))
            .map(|(idx, s)| {
                let active = self.owner == Some(idx) || s.riding;
                let state = if active {
                    SessionState::Active
                } else if s.queued {
                    SessionState::Waiting
                } else {
                    SessionState::Idle
                };
                let mut pins = s.pins;
                if active && in_txn {
                    pins |= PIN_IN_TRANSACTION;
                }
                SessionReport {
                    session_id: s.id,
                    state,
                    wait_us: if s.queued { micros(now.saturating_duration_since(s.queued_at)) } else { 0 },
                    request_time_us: wall_us(s.queued_at, now, wall),
                    prepared: u32::try_from(s.prepared.len() + s.sql_prepared.len()).unwrap_or(u32::MAX),
                    pins,
                }
            })
            .collect();
        WorkerReport {
            counters: self.stats.counters,
            upstream,
            paused: self.stats.paused,
            released: self.owner.is_none() && !cleaning && self.upstream.is_none(),
            close_needed: self.stats.reconnect || self.draining,
            sessions,
            latency: self.stats.latency,
        }
    }
}

/// The local end of a socket: ("127.0.0.1", port), or ("unix", 0).
fn local_address(conn: &crate::net::Conn) -> (String, u32) {
    match socket2::SockRef::from(conn).local_addr().ok().and_then(|a| a.as_socket()) {
        Some(a) => (a.ip().to_string(), u32::from(a.port())),
        None => ("unix".to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_queries_and_transactions_like_pgbouncer() {
        let mut s = Stats::default();
        // An autocommit statement: one query, one transaction.
        s.turn_began(Instant::now() - Duration::from_millis(5));
        s.client_message(b'Q', 20);
        s.ready_for_query(b'I');
        // BEGIN; SELECT; COMMIT as three queries, one transaction.
        s.client_message(b'Q', 10);
        s.ready_for_query(b'T');
        s.client_message(b'P', 30);
        s.client_message(b'B', 12);
        s.client_message(b'E', 9);
        s.client_message(b'S', 5);
        s.ready_for_query(b'T');
        s.client_message(b'Q', 11);
        s.ready_for_query(b'I');
        let c = s.counters;
        assert_eq!((c.query_count, c.xact_count), (4, 2));
        assert_eq!((c.client_parse_count, c.bind_count), (1, 1));
        assert_eq!(c.received, 20 + 10 + 30 + 12 + 9 + 5 + 11);
        assert_eq!(c.server_assignment_count, 1);
        assert!(c.wait_time_us >= 5_000, "{c:?}");
        assert!(c.xact_time_us >= c.query_time_us.min(1));
        // Every query with a start and every turn lands in a histogram, with the same time as its total.
        assert_eq!(s.latency.query.count(), 4);
        assert_eq!(s.latency.query.sum_us, c.query_time_us);
        assert_eq!(s.latency.wait.count(), 1);
        assert_eq!(s.latency.wait.sum_us, c.wait_time_us);
        assert_eq!(s.latency.wait.buckets[0], 0, "a 5 ms wait is not under 0.5 ms");
    }

    #[test]
    fn wall_clock_conversion() {
        let now = Instant::now();
        assert_eq!(wall_us(now - Duration::from_micros(250), now, 1_000), 750);
        assert_eq!(wall_us(now - Duration::from_secs(10), now, 5), 0);
    }
}
