//! Riders: waiting sessions whose requests go upstream right behind the owner's, before its reply is back.
//!
//! Under load every worker has a queue, and handing the upstream from one session to the next costs a round trip:
//! PostgreSQL answers, the worker wakes, ends the turn, reads the next session's request and sends it, and all that
//! time the backend waits. A *rider* is a queued session whose request is sent while the owner's is still running, so
//! the backend goes from one to the next without waiting, and both sides read several messages per system call. This
//! is what lets a worker keep up when another worker of its pool is held by a session idle in a transaction.
//!
//! Only requests that cannot change what the next one sees ride, and only whole ones: simple Query messages, and
//! extended-protocol batches (Parse, Bind, Describe, Execute) closed by their Sync, whose SQL (the Query's text, the
//! Parse's, or the text of the statement a Bind uses) the SQL lexer finds nothing in (no transaction control,
//! settings, set_config, prepared statements, LISTEN, DISCARD, backend-held state) and that never mentions COPY
//! (PostgreSQL would take the next session's messages for COPY data). Each runs as its own implicit transaction and
//! ends with ReadyForQuery 'I', as a turn must, and leaves the upstream's state as it found it; an error in one makes
//! PostgreSQL skip only to that request's own Sync. The owner's own turn must consist of such requests, and a rider
//! must expect exactly the settings the upstream has. Prepared statements are mapped as for any turn (a rider's Bind
//! may be preceded by the Parse its statement needs upstream). Replies already name their session entry by entry
//! (`replies`); when the one ahead has had its ReadyForQuery, the next rider becomes the owner (`promote_rider`) and
//! its turn ends like any other.
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
//!
//! The other way round needs more care. PostgreSQL ignores a cancel that arrives while the backend waits for a
//! command, but a rider's request is often already in the backend's input buffer, so a cancel meant for the query
//! ahead that lands late (the query just ended, or the postmaster's second signal, it signals the backend and its
//! process group) stops the rider's query instead. So a cancel sent while riders wait behind its target puts those
//! riders under a [`Shield`]: their replies are held back until their ReadyForQuery; one that is PostgreSQL's "user
//! request" cancel error, while the rider's client asked for no cancel, is dropped and the request runs again at the
//! head of the queue (it ran as an implicit transaction that rolled back, and its client saw nothing of it). That
//! is why a rider carries exactly one request, and never a Parse of a named statement (a second Parse of the name
//! would fail). No session rides until the cancelled turn is over.

use std::time::{Duration, Instant};

use log::{debug, info};
use pgmux_config::PoolMode;
use pgmux_proto::{frame, frontend as fe, sql};

use super::session::Session;
use super::statements::wire;
use super::{settings, SessionRead, Worker, STREAM_THRESHOLD};

/// At most this many requests wait upstream behind the owner's.
pub(super) const MAX_RIDERS: usize = 3;
/// Sessions ride behind an owner's request only this soon after it was sent (see the module header).
pub(super) const RIDE_WINDOW: Duration = Duration::from_millis(2);
/// A shielded rider's reply is held back up to this size; beyond it, it goes to the client and cannot be run again
/// (a cancel that lands late stops a query at its start, long before it has sent this much).
const SHIELD_HOLD_MAX: usize = 64 * 1024;
/// PostgreSQL's message for a cancel request (SQLSTATE 57014 is also a statement_timeout's, which must not be run
/// again). In another lc_messages language no reply matches, and a late cancel reaches the rider's client.
const USER_CANCEL_MESSAGE: &str = "canceling statement due to user request";

/// A rider's protection against a cancel request meant for a query ahead of it (see the module header).
#[derive(Debug, Default)]
pub struct Shield {
    /// The client bytes of its one request, copied when it rides (the buffer is kept from ride to ride; only the
    /// riders' are current, and only a holding one's is used).
    pub request: Vec<u8>,
    /// A cancel went upstream while its request waited behind the target: its reply is held back.
    pub holding: bool,
    /// The reply held back so far.
    pub held: Vec<u8>,
    /// The held reply has PostgreSQL's error for a cancel request.
    pub cancelled: bool,
    /// The session's own client asked for a cancel that was sent this turn: a cancel error is its own.
    pub own_cancel: bool,
    /// Its request already ran again once (cleared at the end of a turn that scheduled no run).
    pub retried: bool,
    /// The request to run again when its turn ends.
    pub again: Option<Vec<u8>>,
}

impl Shield {
    /// Reply bytes for the session: to its client, or held back while shielded (up to `SHIELD_HOLD_MAX`, beyond
    /// which the reply is let through and the request can no longer run again).
    pub fn take_reply(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.holding {
            out.extend_from_slice(bytes);
            return;
        }
        self.held.extend_from_slice(bytes);
        if self.held.len() > SHIELD_HOLD_MAX {
            out.append(&mut self.held);
            self.holding = false;
            self.cancelled = false;
        }
    }
}
/// How long a worker trusts its list of sibling slots.
const SIBLINGS_REFRESH: Duration = Duration::from_millis(100);

/// Running `text` leaves the session's and the upstream's state as they were, and ends where it began (outside a
/// transaction): the SQL lexer finds nothing in it, and it never mentions COPY.
pub(super) fn plain_sql(text: &str) -> bool {
    !mentions_copy(text.as_bytes()) && !sql::may_be_interesting(text) && sql::pins(text) == 0 && sql::unpins(text) == 0
}

/// Whether one whole client message keeps a batch plain: a simple Query or a Parse of plain SQL, a Bind of a plain
/// statement (`unnamed`: the unnamed statement it would use is; `named`: whether a named one is), Describe, Execute,
/// Sync. Anything else (Close, Flush, COPY data, function calls) is not.
fn message_plain(tag: u8, body: &[u8], unnamed: bool, named: &dyn Fn(&str) -> bool) -> bool {
    match tag {
        b'Q' => fe::parse_query(body).is_ok_and(plain_sql),
        b'P' => fe::parse_parse(body).is_ok_and(|p| plain_sql(p.query)),
        b'B' => match wire::split_bind(body) {
            Some((_, "", _)) => unnamed,
            Some((_, name, _)) => named(name),
            None => false,
        },
        b'D' | b'E' | b'S' => true,
        _ => false,
    }
}

/// `buf` holds exactly one whole request that may ride: a plain simple Query, or a batch of plain extended-protocol
/// messages closed by its Sync that prepares no named statement. `unnamed` and `named` say which of the session's statements are plain.
fn batch_rideable(buf: &[u8], unnamed: bool, named: &dyn Fn(&str) -> bool) -> bool {
    let mut pos = 0;
    let mut synced = true;
    // The unnamed statement and the names this batch prepares, as they will be once the messages ahead are handled.
    let mut unnamed = unnamed;
    let mut requests = 0;
    while pos < buf.len() {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(h) = frame::peek_header(rest) else { return false };
        let total = h.total_len();
        if h.len < 4 || total > rest.len() {
            return false;
        }
        let body = rest.get(frame::HEADER_LEN..total).unwrap_or_default();
        if !message_plain(h.tag, body, unnamed, named) || (h.tag == b'Q' && !synced) {
            return false;
        }
        if requests > 0 {
            return false; // one request only: a shielded rider is run again whole (module header)
        }
        match h.tag {
            b'P' => {
                match fe::parse_parse(body) {
                    Ok(p) if p.name.is_empty() => unnamed = true,
                    // A named statement's Parse cannot run twice (module header).
                    _ => return false,
                }
                synced = false;
            }
            b'S' | b'Q' => {
                synced = true;
                requests += 1;
            }
            _ => synced = false,
        }
        pos += total;
    }
    pos > 0 && synced
}

fn unnamed_plain(s: &Session) -> bool {
    s.unnamed.as_ref().is_some_and(|d| d.plain)
}

/// What a would-be rider has read may ride.
fn session_batch_rideable(s: &Session) -> bool {
    batch_rideable(&s.inbuf, unnamed_plain(s), &|n: &str| s.prepared.get(n).is_some_and(|d| d.plain))
}

/// "copy" in any case, anywhere: conservative, a table named copy_log only costs the chance to ride.
pub(super) fn mentions_copy(b: &[u8]) -> bool {
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
            || self.cancel_shielding
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
        if self.can_migrate && self.idle_sibling() {
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
            if !session_batch_rideable(s) {
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
            s.shield.request.clear();
            s.shield.request.extend_from_slice(&s.inbuf);
            self.forward_client_input(idx);
        }
        progress
    }

    /// Whether another worker of the pool is idle. Which slots hold siblings is looked up on the whole board at most
    /// every `SIBLINGS_REFRESH` (a worker started since then is missed until the next look).
    fn idle_sibling(&mut self) -> bool {
        let now = Instant::now();
        if self.siblings_seen_at.is_none_or(|t| now.duration_since(t) > SIBLINGS_REFRESH) {
            self.siblings_seen_at = Some(now);
            self.ctx.board.sibling_slots(self.ctx.pool, self.ctx.board_slot, &mut self.sibling_slots);
        }
        self.ctx.board.any_idle(self.ctx.pool, &self.sibling_slots)
    }

    /// Read what a would-be rider has sent (a few reads at most). False if it left.
    fn read_rider(&mut self, idx: usize) -> bool {
        for _ in 0..4 {
            let Some(s) = self.session(idx) else { return false };
            if !s.readable || s.inbuf.len() >= STREAM_THRESHOLD {
                break;
            }
            if matches!(self.read_session(idx), SessionRead::Closed) {
                return false;
            }
        }
        true
    }

    /// Whether the owner's next whole message (`msg`, tag included) keeps its turn one that riders may follow.
    pub(super) fn owner_message_plain(&self, idx: usize, msg: &[u8]) -> bool {
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return false };
        let Some(h) = frame::peek_header(msg) else { return false };
        // The session's unnamed statement and names are current: its earlier messages have been handled.
        let named = |n: &str| s.prepared.get(n).is_some_and(|d| d.plain);
        message_plain(h.tag, msg.get(frame::HEADER_LEN..).unwrap_or_default(), unnamed_plain(s), &named)
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
            if cancel {
                if let Some(s) = self.session(idx) {
                    s.cancel_pending = true;
                }
                self.fire_held_cancel(idx);
            }
            return true;
        }
        false
    }

    /// The owner asked for a cancel before its request ran (it was queued or riding): its request is upstream now,
    /// so cancel it.
    pub(super) fn fire_held_cancel(&mut self, idx: usize) {
        let Some(s) = self.session(idx) else { return };
        let id = s.id;
        if !std::mem::take(&mut s.cancel_pending) || !self.replies.owes(id) {
            return;
        }
        info!("s{id}: cancelling its running query (asked for while it waited)");
        self.flush_then_cancel(id, &format!("s{id}: cancel"));
    }

    /// A cancel for session `target` is about to go upstream: the riders waiting behind it are shielded, and no
    /// session rides until the upstream is free.
    pub(super) fn shield_riders(&mut self, target: u64) {
        self.cancel_shielding = true;
        if let Some(s) = self.by_id.get(&target).copied().and_then(|i| self.session(i)) {
            s.shield.own_cancel = true;
        }
        for i in 0..self.riders.len() {
            let Some(idx) = self.riders.get(i).copied() else { break };
            if let Some(s) = self.session(idx) {
                if s.id != target && !s.shield.holding {
                    s.shield.holding = true;
                    debug!("s{}: its reply is held back (a cancel for s{target} went upstream ahead of it)", s.id);
                }
            }
        }
    }

    /// An ErrorResponse or ReadyForQuery for session `id` has been routed while riders are shielded (a holding
    /// session implies `cancel_shielding`): see whether its held reply was stopped by a cancel that was not its own,
    /// and at its end, release the reply or arrange for the request to run again.
    pub(super) fn shield_reply(&mut self, id: u64, tag: u8, body: &[u8]) {
        let Some(s) = self.by_id.get(&id).copied().and_then(|i| self.session(i)) else { return };
        let shield = &mut s.shield;
        if !shield.holding {
            return;
        }
        if tag == b'E' {
            if !shield.own_cancel && !shield.retried {
                shield.cancelled |= pgmux_proto::backend::parse_error_fields(body)
                    .is_ok_and(|f| f.code == "57014" && f.message == USER_CANCEL_MESSAGE);
            }
            return;
        }
        // ReadyForQuery: the rider's one request is answered.
        shield.holding = false;
        let held = std::mem::take(&mut shield.held);
        // A client that has asked for a cancel meanwhile wanted its query stopped: it gets the error.
        let asked = shield.own_cancel || s.cancel_pending;
        if std::mem::take(&mut shield.cancelled) && !asked {
            shield.again = Some(std::mem::take(&mut shield.request));
            shield.retried = true;
            info!(
                "s{id}: its query was stopped by a cancel meant for the query ahead of it on the server connection; \
                 it runs again"
            );
        } else {
            s.out.extend_from_slice(&held);
        }
    }

    /// At the end of its turn: a request stopped by another session's cancel goes back to the head of the queue,
    /// read already (it may run again only this once). True if so.
    pub(super) fn run_again(&mut self, idx: usize) -> bool {
        let Some(s) = self.session(idx) else { return false };
        let Some(again) = s.shield.again.take() else {
            s.shield.retried = false;
            return false;
        };
        let mut inbuf = again;
        inbuf.append(&mut s.inbuf);
        s.inbuf = inbuf;
        s.queued = true;
        s.queued_at = Instant::now();
        self.queue.push_front(idx);
        self.watch.push(idx);
        self.publish();
        true
    }

    /// A cancel request for a session whose request waits upstream behind the owner's.
    pub(super) fn cancel_rider(&mut self, idx: usize) -> bool {
        let Some(s) = self.session(idx).filter(|s| s.riding) else { return false };
        s.cancel_pending = true;
        debug!("s{}: cancel held until its request runs (it rides behind the owner's)", s.id);
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

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn parse(name: &str, text: &str) -> Vec<u8> {
        msg(b'P', &[name.as_bytes(), b"\0", text.as_bytes(), b"\0\0\0"].concat())
    }

    fn bind(stmt: &str) -> Vec<u8> {
        msg(b'B', &[b"\0", stmt.as_bytes(), b"\0\0\0\0\0\0\0"].concat())
    }

    fn execute() -> Vec<u8> {
        msg(b'E', b"\0\0\0\0\0")
    }

    fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }

    /// Rideable for a session whose unnamed statement is not plain and whose only named statement is "good".
    fn rides(parts: &[Vec<u8>]) -> bool {
        batch_rideable(&parts.concat(), false, &|n: &str| n == "good")
    }

    #[test]
    fn plain_simple_queries_ride() {
        assert!(rides(&[q("SELECT abalance FROM pgbench_accounts WHERE aid = 42;")]));
        assert!(rides(&[q("UPDATE t SET v = v + 1 WHERE id = 3")]));
        assert!(rides(&[q("select 1; select 2")]));
        // Two requests: a shielded rider could not run just the one a late cancel stopped.
        assert!(!rides(&[q("SELECT 1"), q("SELECT 2")]));
    }

    #[test]
    fn state_changing_sql_never_rides() {
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
            assert!(!plain_sql(text), "{text} must not ride");
            assert!(!rides(&[q(text)]), "{text} must not ride");
            assert!(!rides(&[parse("", text), bind(""), execute(), sync()]), "{text} must not ride (extended)");
        }
    }

    #[test]
    fn extended_batches_ride_when_closed_and_plain() {
        // pgbench -M extended: the unnamed statement, parsed in the batch.
        assert!(rides(&[parse("", "SELECT 1"), bind(""), msg(b'D', b"P\0"), execute(), sync()]));
        // -M prepared, after the first use: a named statement the session has, plain.
        assert!(rides(&[bind("good"), execute(), sync()]));
        // Prepared in this very batch: a named Parse could not run again.
        assert!(!rides(&[parse("fresh", "SELECT 2"), bind("fresh"), execute(), sync()]));
        // Two requests.
        assert!(!rides(&[bind("good"), execute(), sync(), q("SELECT 3")]));
        assert!(!rides(&[bind("good"), execute(), sync(), bind("good"), execute(), sync()]));
        // Not closed by a Sync: the upstream would wait inside the batch.
        assert!(!rides(&[bind("good"), execute()]));
        assert!(!rides(&[parse("", "SELECT 1"), bind(""), execute(), msg(b'H', b"")]));
        // The session's unnamed statement is not plain, or the statement is unknown or not plain.
        assert!(!rides(&[bind(""), execute(), sync()]));
        assert!(!rides(&[bind("other"), execute(), sync()]));
        // A simple query inside an unsynced batch; a Close; a function call.
        assert!(!rides(&[parse("", "SELECT 1"), q("SELECT 1"), sync()]));
        assert!(!rides(&[msg(b'C', b"Sx\0"), sync()]));
        assert!(!rides(&[msg(b'F', b"\0\0\0\x01\0\0\0\0\0\0"), sync()]));
    }

    #[test]
    fn a_shield_holds_replies_back_up_to_its_cap() {
        let mut out = Vec::new();
        let mut shield = Shield::default();
        shield.take_reply(b"T", &mut out);
        assert_eq!(out, b"T", "an unshielded reply goes straight through");
        shield.holding = true;
        shield.take_reply(b"EZ", &mut out);
        assert_eq!(out, b"T", "a shielded reply is held back");
        assert_eq!(shield.held, b"EZ");
        // A reply too large to hold goes through, and the request can no longer run again (no longer holding).
        shield.take_reply(&vec![b'D'; SHIELD_HOLD_MAX], &mut out);
        assert_eq!(out.len(), 1 + 2 + SHIELD_HOLD_MAX);
        assert!(!shield.holding && shield.held.is_empty());
        shield.take_reply(b"Z", &mut out);
        assert_eq!(out.last(), Some(&b'Z'));
    }

    #[test]
    fn only_whole_messages_ride() {
        let whole = q("SELECT 1");
        assert!(!batch_rideable(&whole[..whole.len() - 1], true, &|_: &str| true), "a partial message");
        assert!(!batch_rideable(&[], true, &|_: &str| true), "nothing");
        // Lengths that lie.
        assert!(!batch_rideable(&[b'Q', 0, 0, 0, 2], true, &|_: &str| true));
        assert!(!batch_rideable(&[b'S', 0, 0, 0, 0], true, &|_: &str| true));
        assert!(!batch_rideable(&[b'Q', 0xff, 0xff, 0xff, 0xff, b'x'], true, &|_: &str| true));
    }
}
