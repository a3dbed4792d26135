//! One client session inside a worker: its socket, its buffers and the state that travels in its record.
//!
//! A session is a plain struct in the worker's slab. It never touches the upstream itself; the worker decides when
//! its bytes are read (only while it owns the upstream, so a waiting request stays in the kernel) and where the
//! upstream's replies go.

use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use pgmux_ipc::SessionRecord;

use super::client_messages::SqlPrepared;
use super::statements::StmtDef;
use crate::net::Conn;

pub struct Session {
    pub id: u64,
    pub record: SessionRecord,
    pub conn: Conn,
    /// Settings this session expects on the upstream, lower-case names (see `settings`).
    pub settings: Vec<(String, String)>,
    /// The settings it started with: what RESET ALL goes back to.
    pub baseline: Vec<(String, String)>,
    /// Its turn ran something that may have changed settings: read them back before letting go of the upstream.
    pub settings_dirty: bool,
    /// Its turn ran RESET ALL or DISCARD ALL successfully.
    pub reset_seen: bool,
    /// Protocol-level prepared statements by the session's own names.
    pub prepared: HashMap<Box<str>, Rc<StmtDef>>,
    /// What the session last prepared as its unnamed statement.
    pub unnamed: Option<Rc<StmtDef>>,
    /// SQL-level prepared statements (PREPARE), by the session's own names.
    pub sql_prepared: HashMap<String, SqlPrepared>,
    pub sql_counter: u64,
    /// search_path and role as the session has them: statements are shared upstream only within one context.
    pub ctx: Rc<str>,
    /// Its turn ran DEALLOCATE ALL or DISCARD ALL through the extended protocol: applied when the turn ends.
    pub pending_deallocate_all: bool,
    /// Backend-held state it may have created (`pgmux_proto::sql::PIN_*`): while non-zero it keeps its upstream.
    pub pins: u8,
    /// Channels it LISTENs to; the worker's upstream listens to the union over its sessions.
    pub listens: std::collections::BTreeSet<String>,
    /// Client bytes read but not yet sent upstream: at most one partial message.
    pub inbuf: Vec<u8>,
    /// Bytes of a large client message still to stream upstream unbuffered.
    pub passthrough: usize,
    /// Bytes waiting to be written to the client.
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// Edge-triggered readiness as last reported and not yet used up.
    pub readable: bool,
    pub writable: bool,
    /// In the worker's wait queue.
    pub queued: bool,
    /// Sent at least one message upstream during its current turn; until then its turn is not over.
    pub turn_sent: bool,
    /// Where this turn's first byte sits in the upstream's output stream (see `Upstream::sent_total`).
    pub turn_start: u64,
    /// The peer has shut down its side (or the socket has an error): read until EOF.
    pub hup: bool,
    /// Short name for log lines: "s42 alice@127.0.0.1:50000".
    pub label: String,
    /// When it arrived at this worker.
    pub arrived: std::time::Instant,
    /// When it last joined the wait queue.
    pub queued_at: std::time::Instant,
    /// When its last turn ended (or it arrived): client_idle_timeout.
    pub idle_since: std::time::Instant,
    /// Bumped by every change to what its record carries (settings, prepared statements, channels).
    pub state_epoch: u64,
    /// The epoch the supervisor last heard of (`Msg::SessionState`).
    pub reported_epoch: u64,
    /// Report at the end of the next turn even if nothing changed (the supervisor's record still holds input this
    /// worker has since consumed).
    pub report_after_turn: bool,
    /// A state report sits in the outbox, not yet in the channel.
    pub report_unsent: bool,
    /// Its state could not be reported: if this worker dies, the session dies with it.
    pub unrecoverable: bool,
    /// Its request went upstream behind the owner's (`riders`); it owns the upstream when that one is answered.
    pub riding: bool,
    /// When its request went upstream as a rider.
    pub ride_sent_at: std::time::Instant,
    /// Its bytes were read for riding and are not a request that may ride: it waits for a turn of its own.
    pub ride_refused: bool,
    /// A cancel request arrived while it was riding: sent once it owns the upstream.
    pub cancel_pending: bool,
    /// A rider's protection against a cancel meant for a query ahead of it (`riders::Shield`).
    pub shield: super::riders::Shield,
}

impl Session {
    pub fn new(record: SessionRecord, conn: Conn, settings: Vec<(String, String)>) -> Session {
        // PgBouncer names clients "C-0x<ptr>: db/user@addr" in its log; the session id plays the pointer's part.
        let label = format!("C-0x{:x}: {}/{}@{}", record.session_id, record.database, record.user, record.client_addr);
        let mut s = Session {
            id: record.session_id,
            record,
            conn,
            baseline: settings.clone(),
            settings,
            settings_dirty: false,
            reset_seen: false,
            prepared: HashMap::new(),
            unnamed: None,
            sql_prepared: HashMap::new(),
            sql_counter: 0,
            ctx: Rc::from(""),
            pending_deallocate_all: false,
            pins: 0,
            listens: std::collections::BTreeSet::new(),
            inbuf: Vec::new(),
            passthrough: 0,
            out: Vec::new(),
            out_pos: 0,
            readable: false,
            writable: true,
            queued: false,
            turn_sent: false,
            turn_start: 0,
            hup: false,
            label,
            arrived: std::time::Instant::now(),
            queued_at: std::time::Instant::now(),
            idle_since: std::time::Instant::now(),
            state_epoch: 1,
            reported_epoch: 0,
            report_after_turn: false,
            report_unsent: false,
            unrecoverable: false,
            riding: false,
            ride_sent_at: std::time::Instant::now(),
            ride_refused: false,
            cancel_pending: false,
            shield: super::riders::Shield::default(),
        };
        s.refresh_ctx();
        s
    }

    pub fn pending_out(&self) -> usize {
        self.out.len().saturating_sub(self.out_pos)
    }

    /// Write what the socket takes. Ok(true) when everything has gone.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            if !self.writable {
                return Ok(false);
            }
            let pending = self.out.get(self.out_pos..).unwrap_or_default();
            let n = self.conn.write(pending)?;
            if n == 0 {
                self.writable = false;
                return Ok(false);
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Note that the state its record carries changed, so the supervisor hears of it at the end of the turn.
    pub fn touch(&mut self) {
        self.state_epoch += 1;
    }

    /// Record a setting the client changed (confirmed by the upstream's ParameterStatus).
    pub fn set(&mut self, name: String, value: String) {
        self.touch();
        if let Some(slot) = self.settings.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.settings.push((name, value));
        }
        self.refresh_ctx();
    }

    /// Recompute the statement-sharing context from the settings.
    pub fn refresh_ctx(&mut self) {
        self.touch();
        let get = |n: &str| self.settings.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap_or("");
        let ctx = format!("{}\0{}\0{}", get("search_path"), get("role"), get("session_authorization"));
        if *self.ctx != *ctx {
            self.ctx = Rc::from(ctx);
        }
    }
}

impl Session {
    /// The record that lets another worker carry on with this session: its settings, its prepared statements by
    /// definition, and any bytes read but not acted on.
    pub fn to_record(&self) -> SessionRecord {
        let mut r = self.record.clone();
        r.settings = self.settings.clone();
        r.baseline = self.baseline.clone();
        r.prepared = self
            .prepared
            .iter()
            .map(|(name, def)| pgmux_ipc::PreparedStatement {
                name: name.to_string(),
                query: def.query.to_string(),
                param_types: def.param_types.to_vec(),
            })
            .collect();
        r.sql_prepared =
            self.sql_prepared.iter().map(|(name, p)| (name.clone(), p.upstream_name.clone(), p.rest.clone())).collect();
        r.pending_input = self.inbuf.clone();
        r.listens = self.listens.iter().cloned().collect();
        r.flags |= super::FLAG_MIGRATED;
        r.flags &= !super::FLAG_CANCEL_HELD;
        // Only a move carries a wait (the worker sets it then); a report must not leave a stale one behind.
        r.waiting_since_ns = 0;
        r
    }

    /// Take over the state a record carries from another worker. Nothing is prepared upstream yet: statements are
    /// prepared when first used here (SQL-level ones carry generation 0, which no upstream has).
    pub fn restore_from_record(&mut self) {
        let r = &self.record;
        if !r.baseline.is_empty() {
            self.baseline = r.baseline.clone();
        }
        for p in &r.prepared {
            let def = Rc::new(StmtDef::new(&p.query, &p.param_types));
            self.prepared.insert(p.name.as_str().into(), def);
        }
        for (name, upstream_name, rest) in &r.sql_prepared {
            let p = SqlPrepared { upstream_name: upstream_name.clone(), rest: rest.clone(), generation: 0 };
            self.sql_prepared.insert(name.clone(), p);
        }
        self.listens = r.listens.iter().cloned().collect();
        self.record.prepared.clear();
        self.record.sql_prepared.clear();
        self.record.listens.clear();
        self.record.pending_input.clear();
    }
}
