//! Riders: waiting sessions whose requests go upstream right behind the owner's, before its reply is back.
//!
//! Under load every worker has a queue, and handing the upstream from one session to the next costs a round trip:
//! PostgreSQL answers, the worker wakes, ends the turn, reads the next session's request and sends it, and all that
//! time the backend waits. A *rider* is a queued session whose request is sent while the owner's is still running, so
//! the backend goes from one to the next without waiting, and both sides read several messages per system call. This
//! is what lets a worker keep up when another worker of its pool is held by a session idle in a transaction.
//!
//! Only requests that cannot change what the next one sees ride: whole simple Query messages in which the SQL lexer
//! finds nothing (no transaction control, settings, set_config, prepared statements, LISTEN, DISCARD, backend-held
//! state) and that never mention COPY (PostgreSQL would take the next session's Query for COPY data). Each runs as
//! its own implicit transaction and ends with ReadyForQuery 'I', as a turn must, and leaves the upstream's state as
//! it found it. The owner's own turn must consist of such requests, and a rider must expect exactly the settings the
//! upstream has. Replies already name their session entry by entry (`replies`); when the one ahead has had its
//! ReadyForQuery, the next rider becomes the owner (`promote_rider`) and its turn ends like any other.
//!
//! A request that has gone upstream cannot be taken back, and waiting behind a long turn is what migration exists to
//! avoid. So sessions ride only while the owner's request is younger than `RIDE_WINDOW` (a slow query can catch only
//! the sessions that asked within that window of its start), only while no sibling of the pool is idle (a waiting
//! session may still move there), at most `MAX_RIDERS` deep, never in session mode, and not while pgmux has its own
//! queries to run, is draining, shutting down or paused. A session that turns out to ask for something else keeps its
//! place at the head of the queue, with its bytes read (and so exposed, see `board.rs`).
//!
//! A rider has been read from, so it is exposed until its turn ends, like an owner. A cancel request for a rider is
//! held until it owns the upstream, so that it cannot stop the query ahead of it.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use pgmux_config::PoolMode;
use pgmux_proto::{frame, frontend as fe, sql};

use super::{settings, upstream, Worker, READ_CHUNK, STREAM_THRESHOLD};
use crate::net::ReadOutcome;

/// At most this many requests wait upstream behind the owner's.
pub(super) const MAX_RIDERS: usize = 3;
/// Sessions ride behind an owner's request only this soon after it was sent (see the module header).
pub(super) const RIDE_WINDOW: Duration = Duration::from_millis(2);

/// A whole client message that may ride, or run at the head of a chain of riders.
pub(super) fn rideable(msg: &[u8]) -> bool {
    let Some(h) = frame::peek_header(msg) else { return false };
    if h.tag != b'Q' || h.len < 4 || msg.len() != h.total_len() {
        return false;
    }
    let Ok(text) = fe::parse_query(msg.get(frame::HEADER_LEN..).unwrap_or_default()) else { return false };
    !mentions_copy(text.as_bytes()) && !sql::may_be_interesting(text) && sql::pins(text) == 0 && sql::unpins(text) == 0
}

/// `buf` is one or more whole messages, every one of them rideable.
fn all_rideable(buf: &[u8]) -> bool {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(h) = frame::peek_header(rest) else { return false };
        let total = h.total_len();
        if h.len < 4 || total > rest.len() || !rideable(rest.get(..total).unwrap_or_default()) {
            return false;
        }
        pos += total;
    }
    pos > 0
}

/// "copy" in any case, anywhere: conservative, a table named copy_log only costs the chance to ride.
fn mentions_copy(b: &[u8]) -> bool {
    b.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"))
}

impl Worker {
    /// Whether waiting sessions may ride behind the current owner now (the upstream side of the rules).
    fn ride_open(&self) -> bool {
        let Some(o) = self.owner else { return false };
        if self.pool_mode == PoolMode::Session
            || !self.owner_plain
            || self.riders.len() >= MAX_RIDERS
            || self.queue.is_empty()
            || !self.jobs.is_empty()
            || self.replies.is_empty()
            || self.replies.needs_sync()
            || self.needs_reset
            || self.needs_unpin
            || self.listen_sync
            || !self.pending_deallocs.is_empty()
            || self.timeouts.reset_always
            || self.draining
            || self.shutting_down
            || self.stats.paused
            || self.request_at.elapsed() > RIDE_WINDOW
        {
            return false;
        }
        let Some(up) = self.upstream.as_ref() else { return false };
        if up.passthrough > 0 || up.copy_in || up.txn_status != b'I' {
            return false;
        }
        self.sessions.get(o).and_then(|s| s.as_ref()).is_some_and(|s| {
            s.inbuf.is_empty() && s.passthrough == 0 && s.turn_sent && s.pins == 0 && !s.settings_dirty
        })
    }

    /// Send the requests of sessions at the head of the queue behind the owner's while the rules allow. True if any
    /// session rode or was read.
    pub(super) fn take_riders(&mut self) -> bool {
        if !self.ride_open() {
            return false;
        }
        if self.can_migrate && self.ctx.board.siblings(self.ctx.pool, self.ctx.board_slot).0 > 0 {
            return false; // an idle sibling may take them, and nothing here is committed to this upstream yet
        }
        let mut progress = false;
        while self.ride_open() {
            let Some(&idx) = self.queue.front() else { break };
            let Some(up) = self.upstream.as_ref() else { break };
            let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else {
                self.queue.pop_front();
                continue;
            };
            if !s.queued {
                self.queue.pop_front();
                continue;
            }
            let same_settings = up.applied_for == Some(s.id) || settings::same(&up.applied, &s.settings);
            if s.ride_refused || s.pins != 0 || s.passthrough > 0 || !same_settings {
                break;
            }
            if !s.readable && s.inbuf.is_empty() {
                break;
            }
            // Exposed before a byte of it is read.
            s.riding = true;
            self.riders.push_back(idx);
            self.publish();
            progress = true;
            if !self.read_rider(idx) {
                continue; // it left; `close_session` took it off the riders
            }
            let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { break };
            if !all_rideable(&s.inbuf) {
                // Not a request that may ride (or nothing at all): it keeps its place and waits for its turn.
                s.riding = false;
                s.ride_refused = true;
                self.riders.pop_back();
                self.watch.push(idx);
                break;
            }
            s.queued = false;
            s.ride_sent_at = Instant::now();
            s.turn_sent = false;
            let queued_at = s.queued_at;
            self.queue.pop_front();
            self.stats.turn_began(queued_at);
            self.stats.counters.pipelined_count += 1;
            if log::log_enabled!(log::Level::Trace) {
                log::trace!("s{}: rides behind the owner ({} riding)", s.id, self.riders.len());
            }
            self.forward_client_input(idx);
        }
        progress
    }

    /// Read what a would-be rider has sent (a few reads at most). False if it left.
    fn read_rider(&mut self, idx: usize) -> bool {
        for _ in 0..4 {
            let Some(s) = self.session(idx) else { return false };
            if !s.readable || s.inbuf.len() >= STREAM_THRESHOLD {
                break;
            }
            match s.conn.read_into(&mut s.inbuf, READ_CHUNK) {
                Ok(ReadOutcome::Data { drained, .. }) => {
                    if drained && !s.hup {
                        s.readable = false;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => s.readable = false,
                Ok(ReadOutcome::Eof) => {
                    self.close_session(idx, "client closed the connection", None);
                    return false;
                }
                Err(e) => {
                    self.close_session(idx, &format!("client read failed: {e}"), None);
                    return false;
                }
            }
        }
        true
    }

    /// The owner's turn is over: the first rider becomes the owner. False if there is none.
    pub(super) fn promote_rider(&mut self) -> bool {
        if self.owner.is_some() {
            return false;
        }
        while let Some(idx) = self.riders.pop_front() {
            let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { continue };
            s.riding = false;
            let (id, sent_at, cancel) = (s.id, s.ride_sent_at, std::mem::take(&mut s.cancel_pending));
            let now = Instant::now();
            self.owner = Some(idx);
            self.owner_exposed = true;
            self.owner_plain = true;
            self.turn += 1;
            self.turn_started = sent_at;
            self.request_at = sent_at;
            self.owner_active_at = now;
            self.upstream_idle_since = now;
            if let Some(up) = self.upstream.as_mut() {
                up.applied_for = Some(id);
            }
            if cancel && self.replies.owes(id) {
                if let Some(up) = self.upstream.as_ref() {
                    info!("s{id}: cancelling its running query (asked for while it waited upstream)");
                    if let Err(e) =
                        upstream::send_cancel(&up.addr, up.backend_pid, up.backend_key, Duration::from_secs(2))
                    {
                        warn!("s{id}: cancel failed: {e}");
                    }
                }
            }
            return true;
        }
        false
    }

    /// A cancel request for a session whose request waits upstream behind the owner's.
    pub(super) fn cancel_rider(&mut self, idx: usize) -> bool {
        let Some(s) = self.session(idx).filter(|s| s.riding) else { return false };
        s.cancel_pending = true;
        debug!("s{}: cancel held until its request runs", s.id);
        true
    }

    /// Write what riders have been answered. A rider whose client fails is closed (its remaining replies are
    /// swallowed).
    pub(super) fn flush_riders(&mut self) {
        let mut i = 0;
        while let Some(&idx) = self.riders.get(i) {
            i += 1;
            let Some(s) = self.session(idx) else { continue };
            if s.pending_out() == 0 {
                continue;
            }
            if let Err(e) = s.flush() {
                self.close_session(idx, &format!("client write failed: {e}"), None);
                i -= 1;
            }
        }
    }

    /// A rider has this much unwritten (read_upstream's back-pressure).
    pub(super) fn riders_backlog(&self) -> usize {
        self.riders
            .iter()
            .filter_map(|&i| self.sessions.get(i).and_then(|s| s.as_ref()))
            .map(|s| s.pending_out())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        fe::query(&mut out, text);
        out
    }

    #[test]
    fn plain_queries_ride() {
        assert!(rideable(&q("SELECT abalance FROM pgbench_accounts WHERE aid = 42;")));
        assert!(rideable(&q("UPDATE t SET v = v + 1 WHERE id = 3")));
        assert!(rideable(&q("select 1; select 2")));
        assert!(all_rideable(&[q("SELECT 1"), q("SELECT 2")].concat()));
    }

    #[test]
    fn state_changing_queries_do_not_ride() {
        for text in [
            "BEGIN",
            "select 1; commit",
            "SET work_mem = '8MB'",
            "SELECT set_config('work_mem', '8MB', false)",
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "DISCARD ALL",
            "CREATE TEMP TABLE t (x int)",
            "SELECT pg_advisory_lock(1)",
            "COPY t FROM STDIN",
            "select 1; copy t from stdin",
            "SELECT * FROM copy_log",
        ] {
            assert!(!rideable(&q(text)), "{text} must not ride");
        }
    }

    #[test]
    fn only_whole_simple_queries_ride() {
        let whole = q("SELECT 1");
        assert!(!all_rideable(&whole[..whole.len() - 1]), "a partial message");
        assert!(!all_rideable(&[]), "nothing");
        // Parse "" "SELECT 1" no types: the extended protocol never rides.
        let parse = [b'P', 0, 0, 0, 16, 0, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1', 0, 0, 0];
        assert!(!all_rideable(&parse));
        assert!(!all_rideable(&[whole.clone(), parse.to_vec()].concat()));
        // A length that lies.
        assert!(!all_rideable(&[b'Q', 0, 0, 0, 2]));
        assert!(!all_rideable(&[b'Q', 0xff, 0xff, 0xff, 0xff, b'x']));
    }
}
