//! The worker process: one upstream PostgreSQL connection shared by many client sessions, one mio event loop.
//!
//! A session owns the upstream from the first message it sends until the ReadyForQuery that leaves the upstream idle
//! outside a transaction with nothing more owed to it (transaction mode), until that ReadyForQuery whatever the
//! transaction state (statement mode, which refuses transaction blocks), or until it leaves (session mode). Sessions
//! with a request ready queue up in arrival order; their bytes stay in the kernel until their turn, unless their
//! request may ride behind the owner's (`riders`: plain simple queries, pipelined).
//!
//! Everything sent upstream is recorded in `replies` (see that module) so every reply finds its session, and the
//! upstream is handed on only when nothing is owed (or, to a rider, when nothing more is owed to the owner). Before a session's turn the upstream is brought to the
//! session's settings (`settings`). When a client leaves mid-transaction, the worker cancels what runs, syncs,
//! rolls back and only then serves the next session; when the upstream's state cannot be known (a message half
//! sent, a reply that fits nothing), it drops the upstream and reconnects.

mod client_messages;
mod limits;
mod replies;
mod riders;
mod session;
mod settings;
mod statements;
mod stats;
pub(crate) mod upstream;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::unistd::Pid;
use pgmux_config::{Config, PoolMode, Secret, UserList};
use pgmux_ipc::{Channel, IpcError, Msg, Outbox, SessionRecord};
use pgmux_proto::{backend as be, frame, frontend as fe};

use crate::board::{self, Board};
use crate::net::{Conn, ReadOutcome};
use replies::{Action, Disposition, Owner, Replies};
use session::Session;
use upstream::{Address, Credential, Upstream};

const CHANNEL: Token = Token(0);
const UPSTREAM: Token = Token(1);
const FIRST_SESSION: usize = 2;

/// Read at most this much per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Stop reading one side while the other side has this much unwritten.
const HIGH_WATER: usize = 1024 * 1024;
/// Messages larger than this are streamed through instead of buffered whole.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// Client messages pgmux may rewrite (Parse, Bind, Describe, Close, Query) are buffered whole up to this size;
/// larger ones stream through unchanged.
const MAX_REWRITTEN_MESSAGE: usize = 64 * 1024 * 1024;
/// Backend messages pgmux must parse (errors, statuses) are buffered whole up to this size.
const MAX_BUFFERED_BACKEND: u32 = 16 * 1024 * 1024;
const TICK: Duration = Duration::from_millis(100);
/// Shutting down, sessions are told 57P01 only once the last turn has been over this long (`janitor`).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(50);
/// A session waiting while the upstream's owner sits idle inside a transaction this long moves to another worker.
const MIGRATE_AFTER: Duration = Duration::from_millis(10);
/// A session that just arrived stays at least this long before it may move again (no ping-pong).
const MIGRATE_COOLDOWN: Duration = Duration::from_millis(50);
/// While the owner's turn runs long and no sibling is idle, look at the board again this often.
const BUSY_RECHECK: Duration = Duration::from_millis(10);
/// Record flag: the session moved here from another worker; it has been greeted already.
pub const FLAG_MIGRATED: u32 = 1;
/// Record flag, on a move only: a cancel was held for the request the session carries (it was queued when the
/// cancel came); the receiving worker fires it once that request is upstream.
pub const FLAG_CANCEL_HELD: u32 = 2;

pub struct WorkerContext {
    /// Unique among the supervisor's workers.
    pub index: u32,
    /// The pool: the database name clients asked for, and the user.
    pub database: String,
    pub user: String,
    pub config: Arc<Config>,
    pub userlist: Arc<UserList>,
    pub channel: Channel,
    pub parent: Pid,
    /// The shared status board and this worker's entry in it (its child slot in the supervisor).
    pub board: Rc<Board>,
    pub board_slot: usize,
    /// The supervisor's index of this worker's pool, as the board names pools.
    pub pool: usize,
    /// A dedicated pool (`dedicated_databases` / `dedicated_users`): one session, session pooling, never moved.
    pub dedicated: bool,
    /// A SCRAM ClientKey of the pool's user from an earlier login (32 bytes, else empty): lets a worker started
    /// without a session (min_pool_size) log in upstream with a SCRAM secret.
    pub client_key: Vec<u8>,
}

/// Why pgmux sent a query or Sync of its own; popped when its ReadyForQuery arrives.
#[derive(Debug)]
enum Job {
    /// Bring the upstream to this session's settings before its turn.
    Settings {
        session_id: u64,
        wanted: Vec<(String, String)>,
    },
    /// Close an extended-protocol batch pgmux itself left open.
    Sync,
    /// Close a departed client's extended-protocol batch after making it fail, so it rolls back.
    AbortSync,
    Rollback,
    /// server_reset_query after a session-mode client left.
    Reset,
    /// Read back the settings a session's turn may have changed.
    SettingsProbe {
        session_id: u64,
    },
    /// Deallocate SQL-level prepared statements of sessions that left.
    Cleanup,
    /// The database's connect_query on a new upstream: if it fails, the upstream is not used.
    Connect,
    /// server_check_query on an upstream that idled server_check_delay: if it fails, reconnect.
    Check,
}

/// The settings a session has on its upstream: everything set at session level (pgmux applies a session's settings
/// with set_config, so they are 'session' too), plus role and session authorization, which pg_settings hides.
/// `setting` is in base units, which set_config accepts back.
fn settings_probe(login_user: &str) -> String {
    format!(
        "SELECT lower(name), setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         AND name NOT IN ('is_superuser', 'role', 'session_authorization') \
         UNION ALL SELECT 'role', current_setting('role') WHERE current_setting('role') <> 'none' \
         UNION ALL SELECT 'session_authorization', current_setting('session_authorization') \
         WHERE current_setting('session_authorization') <> {}",
        pgmux_proto::sql::quote_literal(login_user)
    )
}

struct Worker {
    ctx: WorkerContext,
    poll: Poll,
    pool_mode: PoolMode,
    addr: Address,
    login_params: Vec<(String, String)>,
    login_user: String,
    credential: Credential,
    /// The login user has neither a `password=` nor an auth_file entry: the secret auth_query found comes with the
    /// sessions' records (`take_credential`).
    credential_from_records: bool,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    upstream: Option<Upstream>,
    replies: Replies,
    jobs: VecDeque<Job>,
    /// An ErrorResponse (whole message) swallowed from pgmux's own query, examined at its ReadyForQuery.
    job_error: Option<Vec<u8>>,
    /// Where the rest of a large backend message being streamed goes.
    stream_owner: Option<Owner>,
    owner: Option<usize>,
    /// Sessions whose requests went upstream behind the owner's, in order (`riders`).
    riders: VecDeque<usize>,
    /// A cancel went upstream while the current turns run: no session rides until the upstream is free
    /// (`riders::Shield`).
    cancel_shielding: bool,
    /// Everything the owner sent this turn may have riders behind it (`riders`).
    owner_plain: bool,
    /// The simple Query `client_query` handled last was plain (`riders::plain_sql`).
    last_query_plain: bool,
    /// Board slots of this pool's other workers, and when they were last looked up (`riders`).
    sibling_slots: Vec<usize>,
    siblings_seen_at: Option<Instant>,
    queue: VecDeque<usize>,
    outbox: Outbox,
    needs_reset: bool,
    /// A session that held backend state (temp tables, WITH HOLD cursors, advisory locks) left: clean the
    /// upstream before anyone else uses it.
    needs_unpin: bool,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    last_connect_error: String,
    shutting_down: bool,
    stop: bool,
    /// Counts turns; the statement cache's recency.
    turn: u64,
    /// Upstream generations are never reused, so a statement prepared on a previous connection is known lost.
    next_generation: u64,
    parse_slots: HashMap<u32, client_messages::ParseSlot>,
    next_parse_slot: u32,
    plans: HashMap<u32, client_messages::QueryPlan>,
    next_plan: u32,
    /// Rows of a settings probe being read.
    probe_rows: Vec<(String, String)>,
    /// Upstream names of SQL-level prepared statements whose sessions left.
    pending_deallocs: Vec<String>,
    /// Last time the owner sent something or was answered: how long it has left the upstream idle.
    owner_active_at: Instant,
    /// Other workers may exist for this pool, so waiting sessions can move.
    can_migrate: bool,
    settings_probe: String,
    /// Some session's channels changed: make the upstream listen to exactly the union of its sessions' channels.
    listen_sync: bool,
    /// Moving every session to other workers, then exiting (server_lifetime).
    draining: bool,
    /// When the current owner's turn began: a turn that runs long (a slow query) sends waiting sessions to idle
    /// siblings.
    turn_started: Instant,
    /// Earliest time to look at the board again for idle siblings.
    busy_check_at: Instant,
    /// Sessions that may be exposed besides the owner (output not yet written, input not yet acted on, a state
    /// report not yet sent); `publish` prunes it.
    watch: Vec<usize>,
    /// Scratch buffer for `publish`.
    exposed_ids: Vec<u64>,
    /// The owner's socket has been read from (or written to) during its turn: it is exposed.
    owner_exposed: bool,
    /// Counters and console state for the admin console (`stats`).
    stats: stats::Stats,
    timeouts: limits::Timeouts,
    connect_query: Option<String>,
    /// Since when nobody has used the upstream (server_idle_timeout, server_check_delay).
    upstream_idle_since: Instant,
    /// When the upstream's current transaction began (transaction_timeout).
    txn_started: Option<Instant>,
    /// When the owner's latest request was read (query_timeout).
    request_at: Instant,
}

pub fn run(ctx: WorkerContext) -> i32 {
    match Worker::new(ctx) {
        Ok(mut w) => w.run(),
        Err(e) => {
            error!("worker start-up failed: {e}");
            1
        }
    }
}

impl Worker {
    fn new(ctx: WorkerContext) -> Result<Worker, String> {
        let config = ctx.config.clone();
        let db =
            config.database(&ctx.database).ok_or_else(|| format!("no database section for \"{}\"", ctx.database))?;
        let pool = config
            .pool_settings(&ctx.database, &ctx.user, ctx.dedicated)
            .ok_or_else(|| format!("no database section for \"{}\"", ctx.database))?;
        let login_user = db.user.clone().unwrap_or_else(|| ctx.user.clone());
        let credential = match (&db.password, ctx.userlist.get(&login_user)) {
            (Some(p), _) => Credential::Plain(p.clone()),
            (None, Some(Secret::Plain(p))) => Credential::Plain(p.clone()),
            (None, Some(Secret::Md5(h))) => Credential::Md5(h.clone()),
            (None, Some(Secret::Scram(text))) => match pgmux_proto::auth::ScramSecret::parse(text) {
                Some(secret) => {
                    Credential::Scram { secret, client_key: <[u8; 32]>::try_from(ctx.client_key.as_slice()).ok() }
                }
                None => Credential::None,
            },
            _ => Credential::None,
        };
        let credential_from_records = db.password.is_none() && ctx.userlist.get(&login_user).is_none();
        let dbname = config.upstream_dbname(db, &ctx.database).to_string();
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(
                &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&ctx.channel)),
                CHANNEL,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register channel: {e}"))?;
        Ok(Worker {
            pool_mode: pool.pool_mode,
            addr: Address::new(&db.host, db.port),
            login_params: [("user".to_string(), login_user.clone()), ("database".to_string(), dbname)]
                .into_iter()
                .chain(limits::upstream_startup_params(db))
                .collect(),
            timeouts: limits::Timeouts::resolve(&config, db, &ctx.user),
            connect_query: db.connect_query.clone().filter(|q| !q.trim().is_empty()),
            upstream_idle_since: Instant::now(),
            txn_started: None,
            request_at: Instant::now(),
            login_user: login_user.clone(),
            credential,
            credential_from_records,
            ctx,
            poll,
            sessions: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            upstream: None,
            replies: Replies::new(),
            jobs: VecDeque::new(),
            job_error: None,
            stream_owner: None,
            owner: None,
            riders: VecDeque::new(),
            cancel_shielding: false,
            owner_plain: false,
            last_query_plain: false,
            sibling_slots: Vec::new(),
            siblings_seen_at: None,
            queue: VecDeque::new(),
            outbox: Outbox::new(),
            needs_reset: false,
            needs_unpin: false,
            retry_at: None,
            retry_delay: Duration::from_millis(250),
            last_connect_error: String::new(),
            shutting_down: false,
            stop: false,
            turn: 0,
            next_generation: 1,
            parse_slots: HashMap::new(),
            next_parse_slot: 0,
            plans: HashMap::new(),
            next_plan: 0,
            probe_rows: Vec::new(),
            pending_deallocs: Vec::new(),
            owner_active_at: Instant::now(),
            can_migrate: !pool.dedicated
                && pool.pool_size + pool.reserve_pool_size > 1
                && pool.pool_mode != PoolMode::Session,
            settings_probe: settings_probe(&login_user),
            listen_sync: false,
            draining: false,
            turn_started: Instant::now(),
            busy_check_at: Instant::now(),
            watch: Vec::new(),
            exposed_ids: Vec::new(),
            owner_exposed: false,
            stats: stats::Stats::default(),
        })
    }

    fn run(&mut self) -> i32 {
        // Connect before the first session arrives: a worker started for min_pool_size has none, and one started
        // for a session connects now rather than a moment later. Without a usable credential (a SCRAM secret
        // and no client key yet), the first session's login supplies it.
        let awaits_credential = matches!(self.credential, Credential::Scram { client_key: None, .. })
            || (matches!(self.credential, Credential::None) && self.credential_from_records);
        if !awaits_credential {
            let _ = self.ensure_upstream();
        }
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        while !self.stop {
            let mut wake = next_tick;
            if self.migration_due_at().is_some_and(|t| t < wake) {
                wake = self.migration_due_at().unwrap_or(wake);
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    error!("poll failed: {e}");
                    return 1;
                }
            }
            let mut channel_ready = false;
            for ev in events.iter() {
                match ev.token() {
                    CHANNEL => {
                        channel_ready = true;
                        if ev.is_writable() {
                            self.flush_outbox();
                        }
                    }
                    UPSTREAM => {
                        if let Some(up) = self.upstream.as_mut() {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                up.readable = true;
                            }
                            if ev.is_read_closed() || ev.is_error() {
                                up.hup = true;
                            }
                            if ev.is_writable() || ev.is_error() {
                                up.writable = true;
                            }
                        }
                    }
                    Token(t) => self.session_event(t - FIRST_SESSION, ev),
                }
            }
            if channel_ready {
                self.read_channel();
            }
            self.drive();
            if self.migration_due_at().is_some_and(|t| t <= Instant::now()) {
                self.migrate_waiting();
            }
            if self.draining {
                self.drain_step();
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.janitor();
            }
            self.publish();
            self.send_due_reports();
        }
        self.send_final_report();
        if let Some(mut up) = self.upstream.take() {
            let mut out = Vec::new();
            fe::terminate(&mut out);
            let _ = up.conn.write(&out);
            up.outbuf.clear();
        }
        0
    }

    // ----- channel to the supervisor -----

    fn read_channel(&mut self) {
        loop {
            match self.ctx.channel.recv() {
                Ok(Some((msg, fds))) => self.on_message(msg, fds),
                Ok(None) => return,
                Err(IpcError::Closed) => {
                    info!("supervisor channel closed, exiting");
                    self.stop = true;
                    return;
                }
                Err(e) => {
                    error!("bad message from supervisor: {e}");
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, msg: Msg, mut fds: Vec<std::os::fd::OwnedFd>) {
        match msg {
            Msg::Assign { record } => match fds.pop() {
                Some(fd) => self.assign(record, fd),
                None => error!("assign without a socket"),
            },
            Msg::Cancel { session_id } => self.cancel(session_id),
            Msg::Shutdown => {
                info!("shutdown requested");
                self.shutting_down = true;
            }
            Msg::Drain => self.begin_drain("the pool was reconfigured"),
            other => {
                if !self.on_admin_message(&other) {
                    warn!("unexpected message {} from supervisor", other.name())
                }
            }
        }
    }

    fn send_supervisor(&mut self, msg: Msg) {
        if let Err(e) = self.outbox.send(&self.ctx.channel, &msg, Vec::new()) {
            warn!("cannot tell supervisor {}: {e}", msg.name());
        }
    }

    fn flush_outbox(&mut self) {
        if let Err(e) = self.outbox.flush(&self.ctx.channel) {
            warn!("supervisor channel: {e}");
        }
    }

    // ----- sessions arriving and leaving -----

    fn assign(&mut self, mut record: SessionRecord, fd: std::os::fd::OwnedFd) {
        let conn = match Conn::new(fd) {
            Ok(c) => c,
            Err(e) => {
                warn!("s{}: unusable client socket: {e}", record.session_id);
                self.send_supervisor(Msg::SessionClosed { session_id: record.session_id });
                return;
            }
        };
        conn.set_nodelay();
        self.take_credential(&record);
        if let Err(msg) = self.ensure_upstream() {
            let mut out = Vec::new();
            be::error_response(&mut out, "FATAL", "08006", &msg);
            let _ = conn.write_all_timeout(&out, Duration::from_millis(200));
            self.send_supervisor(Msg::SessionClosed { session_id: record.session_id });
            return;
        }
        let migrated = record.flags & FLAG_MIGRATED != 0;
        if !migrated && self.ctx.config.pooler.application_name_add_host {
            add_host_to_application_name(&mut record.startup_params, &record.client_addr);
        }
        let settings = if migrated { record.settings.clone() } else { settings::from_startup(&record.startup_params) };
        let pending = std::mem::take(&mut record.pending_input);
        let cancel_held = migrated && record.flags & FLAG_CANCEL_HELD != 0;
        record.flags &= !FLAG_CANCEL_HELD;
        let mut s = Session::new(record, conn, settings);
        if cancel_held {
            debug!("{}: a cancel held at its previous worker waits for its request here", s.label);
            s.cancel_pending = true;
        }
        if migrated {
            let moved_at = s.record.moved_at_ns;
            if moved_at != 0 {
                debug!("{}: moved here in {} us", s.label, monotonic_ns().saturating_sub(moved_at) / 1000);
            }
            s.restore_from_record();
            // The supervisor's copy of the record is this one.
            s.reported_epoch = s.state_epoch;
            if !s.listens.is_empty() {
                self.listen_sync = true;
            }
        } else {
            self.greet(&mut s);
        }
        // Bytes the client pipelined behind its login: they wait for a turn like bytes still in the kernel. A
        // session that moved here came because it had a request waiting.
        let has_pending = !pending.is_empty() || migrated;
        if migrated {
            s.readable = true;
        }
        // A moved session's wait began at its first worker: query_wait_timeout counts all of it.
        let waited_since = (s.record.waiting_since_ns != 0).then(|| instant_at_ns(s.record.waiting_since_ns));
        // The supervisor's copy of the record carries these bytes until this worker says they are consumed: report
        // at the end of the first turn here.
        s.report_after_turn = !pending.is_empty();
        s.inbuf = pending;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        let fd = s.conn.raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(idx + FIRST_SESSION),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("{}: register failed: {e}", s.label);
            self.free.push(idx);
            self.send_supervisor(Msg::SessionClosed { session_id: s.id });
            return;
        }
        debug!("{}: assigned", s.label);
        self.by_id.insert(s.id, idx);
        if has_pending {
            s.queued = true;
            s.queued_at = waited_since.unwrap_or_else(Instant::now);
            self.queue.push_back(idx);
        }
        if let Some(slot) = self.sessions.get_mut(idx) {
            *slot = Some(s);
        }
        // Exposed (published) before the greeting is written: a worker that dies halfway through it must not leave
        // the session to be greeted twice.
        self.watch.push(idx);
        self.publish();
        let Some(s) = self.session(idx) else { return };
        if let Err(e) = s.flush() {
            debug!("{}: greeting failed: {e}", s.label);
        }
        if !migrated {
            // Greeted: from now on the supervisor's record says so (and still carries the unread bytes, if any).
            self.report_state(idx, true);
        }
    }

    /// Tell the supervisor the session's state if it changed since it last heard (or `force`), so it can re-home the
    /// session should this worker die. Sent between transactions only. The record carries unread input only when
    /// `force`d at the greeting; otherwise input has been consumed (or the session is exposed, see `board.rs`).
    fn report_state(&mut self, idx: usize, with_input: bool) {
        let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { return };
        if !with_input && s.state_epoch == s.reported_epoch && !s.report_after_turn {
            return;
        }
        let mut record = s.to_record();
        if !with_input {
            record.pending_input.clear();
            s.report_after_turn = false;
        }
        s.reported_epoch = s.state_epoch;
        let id = s.id;
        match self.outbox.send(&self.ctx.channel, &Msg::SessionState { record }, Vec::new()) {
            Ok(()) => {
                if !self.outbox.is_empty() {
                    if let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) {
                        s.report_unsent = true;
                    }
                }
            }
            Err(e) => {
                // Too big for one message, or the channel is gone: the supervisor's copy is stale for good.
                debug!("s{id}: state report failed ({e}); the session cannot be recovered if this worker dies");
                if let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) {
                    s.unrecoverable = true;
                }
            }
        }
        self.watch.push(idx);
    }

    /// AuthenticationOk, the server's parameters as this session will see them, its cancel key, ReadyForQuery.
    fn greet(&self, s: &mut Session) {
        be::auth_ok(&mut s.out);
        if let Some(up) = self.upstream.as_ref() {
            for (name, value) in &up.params {
                let lower = name.to_ascii_lowercase();
                let v = s.settings.iter().find(|(n, _)| *n == lower).map(|(_, v)| v.as_str()).unwrap_or(value);
                be::parameter_status(&mut s.out, name, v);
            }
        }
        be::backend_key_data(&mut s.out, s.record.cancel_pid, s.record.cancel_key);
        be::ready_for_query(&mut s.out, b'I');
    }

    /// "S-0x7: appdb/alice@127.0.0.1:5432" as PgBouncer names server connections; the worker index plays the
    /// pointer's part.
    fn server_label(&self) -> String {
        format!("S-0x{:x}: {}/{}@{}", self.ctx.index, self.ctx.database, self.login_user, self.addr)
    }

    fn session(&mut self, idx: usize) -> Option<&mut Session> {
        self.sessions.get_mut(idx).and_then(|s| s.as_mut())
    }

    fn session_event(&mut self, idx: usize, ev: &mio::event::Event) {
        let owner = self.owner;
        let Some(s) = self.session(idx) else { return };
        if ev.is_writable() || ev.is_error() {
            s.writable = true;
        }
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        if readable {
            s.readable = true;
        }
        if ev.is_read_closed() || ev.is_error() {
            // The peer's FIN may sit behind the data: read until EOF, not just until a short read.
            s.hup = true;
        }
        if s.pending_out() > 0 && s.writable {
            if let Err(e) = s.flush() {
                let label = s.label.clone();
                self.close_session(idx, &format!("client write failed: {e}"), None);
                debug!("{label}: closed");
                return;
            }
        }
        let Some(s) = self.session(idx) else { return };
        if readable && owner != Some(idx) && !s.queued && !s.riding {
            s.queued = true;
            s.queued_at = Instant::now();
            self.queue.push_back(idx);
        }
    }

    /// Remove a session. `error` is sent to the client first (SQLSTATE, message). If it owned the upstream, the
    /// upstream is cleaned before anyone else may use it.
    fn close_session(&mut self, idx: usize, reason: &str, error: Option<(&str, &str)>) {
        let Some(mut s) = self.sessions.get_mut(idx).and_then(|slot| slot.take()) else { return };
        self.free.push(idx);
        self.by_id.remove(&s.id);
        let _ = self.poll.registry().deregister(&mut SourceFd(&s.conn.raw_fd()));
        if let Some((code, message)) = error {
            be::error_response(&mut s.out, "FATAL", code, message);
            let pending = s.out.get(s.out_pos..).unwrap_or_default();
            let _ = s.conn.write_all_timeout(pending, Duration::from_millis(100));
            // Closing a socket with unread input makes the kernel send RST, and the client may then lose the error
            // it has not read yet: consume what the client already sent (a waiting request, typically) first.
            s.conn.shutdown_write();
            let mut sink = Vec::new();
            for _ in 0..16 {
                sink.clear();
                match s.conn.read_into(&mut sink, 64 * 1024) {
                    Ok(ReadOutcome::Data { .. }) => {}
                    _ => break,
                }
            }
        }
        if error.is_none() {
            // The supervisor holds a copy of the socket: closing ours alone would not end the connection.
            s.conn.shutdown_write();
        }
        // PgBouncer's wording for the common reasons, so existing log alerts keep matching.
        let why = match reason {
            "client sent Terminate" => "client close request",
            "client closed the connection" => "client unexpected eof",
            other => other,
        };
        info!("{} closing because: {why} (age={}s)", s.label, s.arrived.elapsed().as_secs());
        self.send_supervisor(Msg::SessionClosed { session_id: s.id });
        if !s.listens.is_empty() {
            self.listen_sync = true;
        }
        if let Some(up) = self.upstream.as_ref() {
            let generation = up.generation;
            self.pending_deallocs.extend(
                s.sql_prepared.values().filter(|p| p.generation == generation).map(|p| p.upstream_name.clone()),
            );
        }
        if s.riding {
            // Its request runs (or has run) upstream for nobody, like a direct client's that disconnected after
            // sending it; what is owed to it is swallowed.
            self.riders.retain(|&i| i != idx);
            self.replies.orphan(s.id);
            return;
        }
        if self.owner != Some(idx) {
            return;
        }
        self.owner = None;
        // Requests of other sessions wait upstream behind this one's: its bytes cannot be cut out, and a cancel
        // sent now could land after its query and stop theirs. Only a query_timeout cancels (its query runs long).
        let chain = !self.riders.is_empty();
        let Some(up) = self.upstream.as_mut() else { return };
        if s.passthrough > 0 {
            // Half a message went upstream: the protocol state cannot be recovered.
            self.replies.orphan(s.id);
            self.drop_upstream("client left in the middle of a message");
            return;
        }
        if !chain && s.turn_sent && up.sent_total <= s.turn_start {
            // Nothing of this turn has reached PostgreSQL yet (a request followed by the client's EOF): take it
            // back rather than run it for nobody.
            let cut = up.out_pos + (s.turn_start - up.sent_total) as usize;
            up.outbuf.truncate(cut);
            self.replies.forget_unsent(s.id);
        }
        let running = self.replies.owes(s.id) && (!chain || error.is_some_and(|(code, _)| code == "57014"));
        self.replies.orphan(s.id);
        if running && !self.flush_then_cancel(s.id, "cancel after client left") {
            return;
        }
        let Some(up) = self.upstream.as_mut() else { return };
        if up.copy_in {
            fe::copy_fail(&mut up.outbuf, "client disconnected");
            up.copy_in = false;
            self.replies.push(Owner::Pgmux, b'f', Disposition::Swallow);
        }
        if self.replies.needs_sync() {
            // An implicit transaction may be open: make it fail before the Sync so that it rolls back, as
            // PostgreSQL does when a client disconnects, instead of committing the departed client's work.
            if let Some(up) = self.upstream.as_mut() {
                fe::execute(&mut up.outbuf, "pgmux: client disconnected", 0);
            }
            self.replies.push(Owner::Pgmux, b'E', Disposition::Swallow);
            self.send_job_sync(Job::AbortSync);
        }
        if self.pool_mode == PoolMode::Session {
            self.needs_reset = true;
        }
        if s.pins & pgmux_proto::sql::PIN_LOAD != 0 {
            // A loaded library cannot be unloaded.
            self.drop_upstream("a session that LOADed a library left");
        } else if s.pins != 0 {
            self.needs_unpin = true;
        }
    }

    /// Write everything queued for the upstream, so that the query a cancel is meant for reaches the server before
    /// the cancel does (one that overtook it would find the backend idle and be lost), then send the cancel. False
    /// if the upstream was lost meanwhile.
    fn flush_then_cancel(&mut self, target: u64, what: &str) -> bool {
        self.shield_riders(target);
        let Some(up) = self.upstream.as_mut() else { return false };
        let pending = up.outbuf.get(up.out_pos..).unwrap_or_default();
        if let Err(e) = up.conn.write_all_timeout(pending, Duration::from_secs(2)) {
            self.drop_upstream(&format!("write failed: {e}"));
            return false;
        }
        up.sent_total += pending.len() as u64;
        up.outbuf.clear();
        up.out_pos = 0;
        if let Err(e) = upstream::send_cancel(&up.addr, up.backend_pid, up.backend_key, Duration::from_secs(2)) {
            warn!("{what} failed: {e}");
        }
        true
    }

    fn cancel(&mut self, session_id: u64) {
        let Some(&idx) = self.by_id.get(&session_id) else {
            // It moved away (or ended) after the supervisor routed the cancel here: the supervisor knows where it
            // went by now (our Migrate precedes this on the channel) and routes it once more.
            debug!("s{session_id}: cancel for a session not here, back to the supervisor");
            self.send_supervisor(Msg::Cancel { session_id });
            return;
        };
        if self.cancel_rider(idx) {
            return;
        }
        if self.owner != Some(idx) || !self.replies.owes(session_id) {
            // A request waiting for the upstream (queued, or the owner's not read yet while pgmux applies its
            // settings) is cancelled once it runs, as it would have been had it reached PostgreSQL at once. A
            // session with nothing asked (idle, or idle inside its transaction) ignores it, as PostgreSQL does.
            let waiting = self.owner != Some(idx) || self.session(idx).is_some_and(|s| !s.turn_sent);
            if let Some(s) = self.session(idx).filter(|s| waiting && (s.queued || s.readable || !s.inbuf.is_empty())) {
                s.cancel_pending = true;
                debug!("s{session_id}: cancel held until its request runs (it waits for the server)");
                return;
            }
            debug!("s{session_id}: cancel ignored, nothing of it runs");
            return;
        }
        self.shield_riders(session_id);
        if let Some(up) = self.upstream.as_ref() {
            info!("s{session_id}: cancelling its running query");
            if let Err(e) = upstream::send_cancel(&up.addr, up.backend_pid, up.backend_key, Duration::from_secs(2)) {
                warn!("s{session_id}: cancel failed: {e}");
            }
        }
    }

    // ----- the upstream -----

    /// Learns from a session's record what the upstream login may need. A secret or key in a record is the
    /// record's user's, so it serves only when that user is the one logging in upstream (no forced `user=`).
    fn take_credential(&mut self, record: &SessionRecord) {
        if record.user != self.login_user {
            return;
        }
        // A user auth_query found has no auth_file entry: its sessions bring the secret. A fresh login's lookup is
        // the newest (the password may have changed), a moved session's only better than nothing.
        if self.credential_from_records && !record.auth_secret.is_empty() {
            let offered = Credential::from_lookup(&record.auth_secret, &record.scram_client_key);
            let fresh = record.flags & FLAG_MIGRATED == 0;
            if matches!(self.credential, Credential::None) || (fresh && !offered.same_secret(&self.credential)) {
                self.credential = offered;
                // A failed login with the old credential says nothing about this one.
                self.retry_at = None;
                return;
            }
        }
        // A SCRAM secret alone cannot log in upstream; a client's ClientKey (from its own SCRAM login) can.
        if let Credential::Scram { client_key: client_key @ None, .. } = &mut self.credential {
            if let Ok(key) = <[u8; 32]>::try_from(record.scram_client_key.as_slice()) {
                *client_key = Some(key);
                self.retry_at = None;
            }
        }
    }

    fn ensure_upstream(&mut self) -> Result<(), String> {
        if self.upstream.is_some() {
            return Ok(());
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return Err(self.last_connect_error.clone());
            }
        }
        let params: Vec<(&str, &str)> = self.login_params.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let timeout = self.ctx.config.pooler.server_connect_timeout;
        match upstream::connect(&self.addr, &params, &self.login_user, &self.credential, timeout) {
            Ok(mut up) => {
                up.generation = self.next_generation;
                self.next_generation += 1;
                self.parse_slots.clear();
                self.plans.clear();
                self.pending_deallocs.clear();
                self.listen_sync = true;
                let fd = up.conn.raw_fd();
                if let Err(e) =
                    self.poll.registry().register(&mut SourceFd(&fd), UPSTREAM, Interest::READABLE | Interest::WRITABLE)
                {
                    return Err(format!("pgmux: cannot watch server connection: {e}"));
                }
                let local = socket2::SockRef::from(&up.conn)
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or_else(|| "unix socket".to_string(), |a| a.to_string());
                info!("{} new connection to server (from {local})", self.server_label());
                debug!("new server connection to {} (backend pid {})", self.addr, up.backend_pid);
                self.upstream = Some(up);
                self.retry_at = None;
                self.retry_delay = Duration::from_millis(250);
                self.replies = Replies::new();
                self.jobs.clear();
                self.upstream_idle_since = Instant::now();
                self.txn_started = None;
                if let Some(q) = self.connect_query.clone() {
                    self.send_job_query(&q, Job::Connect);
                }
                self.send_supervisor(Msg::WorkerStatus { upstream_up: true, sessions: self.by_id.len() as u32 });
                Ok(())
            }
            Err(e) => {
                warn!("server connection failed: {e}");
                self.last_connect_error = format!("pgmux: {e}");
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(self.ctx.config.pooler.server_login_retry);
                Err(self.last_connect_error.clone())
            }
        }
    }

    /// Forget the upstream; the session that owned it (if any) loses its connection as it would with PostgreSQL.
    fn drop_upstream(&mut self, reason: &str) {
        let Some(up) = self.upstream.take() else { return };
        warn!(
            "{} closing because: {reason} (age={}s, backend pid {})",
            self.server_label(),
            up.connected_at.elapsed().as_secs(),
            up.backend_pid
        );
        self.stats.upstream_lost();
        let _ = self.poll.registry().deregister(&mut SourceFd(&up.conn.raw_fd()));
        drop(up);
        self.replies = Replies::new();
        self.jobs.clear();
        self.job_error = None;
        self.stream_owner = None;
        self.needs_reset = false;
        self.needs_unpin = false;
        self.cancel_shielding = false;
        let lost: Vec<usize> = self.owner.take().into_iter().chain(self.riders.drain(..)).collect();
        for idx in lost {
            if let Some(s) = self.session(idx) {
                s.riding = false;
            }
            self.close_session(idx, reason, Some(("08006", &format!("pgmux: server connection lost: {reason}"))));
        }
        self.send_supervisor(Msg::WorkerStatus { upstream_up: false, sessions: self.by_id.len() as u32 });
    }

    fn send_job_query(&mut self, sql: &str, job: Job) {
        let Some(up) = self.upstream.as_mut() else { return };
        fe::query(&mut up.outbuf, sql);
        self.replies.push(Owner::Pgmux, b'Q', Disposition::Swallow);
        self.jobs.push_back(job);
    }

    fn send_job_sync(&mut self, job: Job) {
        let Some(up) = self.upstream.as_mut() else { return };
        fe::sync(&mut up.outbuf);
        self.replies.push(Owner::Pgmux, b'S', Disposition::Swallow);
        self.jobs.push_back(job);
    }

    /// Run until nothing moves: write upstream, read upstream, read the owner, hand the upstream on.
    fn drive(&mut self) {
        for _ in 0..64 {
            let mut progress = self.flush_upstream();
            progress |= self.read_upstream();
            progress |= self.read_owner();
            progress |= self.take_riders();
            progress |= self.flush_upstream();
            progress |= self.settle();
            if !progress {
                break;
            }
        }
    }

    fn flush_upstream(&mut self) -> bool {
        let Some(up) = self.upstream.as_mut() else { return false };
        let mut progress = false;
        while up.out_pos < up.outbuf.len() && up.writable {
            let pending = up.outbuf.get(up.out_pos..).unwrap_or_default();
            match up.conn.write(pending) {
                Ok(0) => up.writable = false,
                Ok(n) => {
                    up.out_pos += n;
                    up.sent_total += n as u64;
                    progress = true;
                }
                Err(e) => {
                    self.drop_upstream(&format!("write failed: {e}"));
                    return true;
                }
            }
        }
        if up.out_pos >= up.outbuf.len() {
            up.outbuf.clear();
            up.out_pos = 0;
        }
        progress
    }

    fn upstream_backlog(&self) -> usize {
        self.upstream.as_ref().map(|u| u.outbuf.len() - u.out_pos).unwrap_or(0)
    }

    fn read_upstream(&mut self) -> bool {
        let mut progress = false;
        loop {
            if let Some(o) = self.owner {
                if self.sessions.get(o).and_then(|s| s.as_ref()).map(|s| s.pending_out()).unwrap_or(0) > HIGH_WATER {
                    break;
                }
            }
            if !self.riders.is_empty() && self.riders_backlog() > HIGH_WATER {
                break;
            }
            let Some(up) = self.upstream.as_mut() else { break };
            if !up.readable {
                break;
            }
            match up.conn.read_into(&mut up.inbuf, READ_CHUNK) {
                Ok(ReadOutcome::Data { drained, .. }) => {
                    progress = true;
                    if drained && !up.hup {
                        up.readable = false;
                    }
                    if let Err(reason) = self.process_upstream_input() {
                        self.drop_upstream(&reason);
                        break;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => up.readable = false,
                Ok(ReadOutcome::Eof) => {
                    self.drop_upstream("server closed the connection unexpectedly");
                    break;
                }
                Err(e) => {
                    self.drop_upstream(&format!("read failed: {e}"));
                    break;
                }
            }
        }
        if progress {
            self.flush_owner();
            if !self.riders.is_empty() {
                self.flush_riders();
            }
            self.check_release();
        }
        progress
    }

    fn flush_owner(&mut self) {
        let Some(idx) = self.owner else { return };
        let Some(s) = self.session(idx) else { return };
        if let Err(e) = s.flush() {
            self.close_session(idx, &format!("client write failed: {e}"), None);
        }
    }

    /// Route every whole (or streamable) backend message in the upstream buffer.
    fn process_upstream_input(&mut self) -> Result<(), String> {
        let Some(mut up) = self.upstream.take() else { return Ok(()) };
        let mut buf = std::mem::take(&mut up.inbuf);
        self.upstream = Some(up);
        let result = self.route_backend(&mut buf);
        self.owner_active_at = Instant::now();
        if let Some(up) = self.upstream.as_mut() {
            up.inbuf = buf;
        }
        result
    }

    fn route_backend(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut pos = 0;
        let result = loop {
            let avail = buf.len() - pos;
            let passthrough = self.upstream.as_ref().map(|u| u.passthrough).unwrap_or(0);
            if passthrough > 0 {
                let n = passthrough.min(avail);
                if n == 0 {
                    break Ok(());
                }
                let owner = self.stream_owner;
                self.deliver(owner, Disposition::Forward, buf.get(pos..pos + n).unwrap_or_default());
                pos += n;
                if let Some(up) = self.upstream.as_mut() {
                    up.passthrough -= n;
                }
                continue;
            }
            let rest = buf.get(pos..).unwrap_or_default();
            let Some(h) = frame::peek_header(rest) else { break Ok(()) };
            if let Err(e) = frame::check_backend(h, frame::DEFAULT_MAX_MESSAGE_LEN) {
                break Err(format!("bad message from server: {e}"));
            }
            let total = h.total_len();
            let complete = avail >= total;
            let streamable = matches!(h.tag, b'D' | b'd' | b'T' | b't') && total > STREAM_THRESHOLD;
            if !complete && !streamable {
                if h.len > MAX_BUFFERED_BACKEND {
                    break Err(format!("server message '{}' of {} bytes is too large", h.tag as char, h.len));
                }
                break Ok(());
            }
            log::trace!("upstream message '{}' ({} bytes)", h.tag as char, total);
            let route = match self.replies.on_backend(h.tag) {
                Ok(r) => r,
                Err(e) => break Err(self.unsolicited(h.tag, rest.get(..total).filter(|_| complete), e)),
            };
            if !complete {
                // Stream the rest of a large row through without buffering it.
                let msg = rest;
                self.deliver(route.owner, route.disposition, msg);
                if let Some(up) = self.upstream.as_mut() {
                    up.passthrough = total - avail;
                }
                self.stream_owner = if route.disposition == Disposition::Forward { route.owner } else { None };
                pos = buf.len();
                break Ok(());
            }
            let msg = rest.get(..total).unwrap_or_default();
            let body = msg.get(frame::HEADER_LEN..).unwrap_or_default();
            match h.tag {
                b'Z' => {
                    if let (Ok(status), Some(up)) = (be::parse_ready_for_query(body), self.upstream.as_mut()) {
                        up.txn_status = status;
                        if status == b'I' {
                            self.txn_started = None;
                        } else if self.txn_started.is_none() {
                            self.txn_started = Some(self.request_at);
                        }
                        up.copy_in = false;
                        if matches!(route.owner, Some(Owner::Session(_))) && route.disposition != Disposition::Swallow {
                            self.stats.ready_for_query(status);
                        }
                    }
                }
                b'G' => {
                    if let Some(up) = self.upstream.as_mut() {
                        up.copy_in = true;
                    }
                }
                b'S' => {
                    if let (Some(Owner::Session(id)), Ok((name, value))) =
                        (route.owner, be::parse_parameter_status(body))
                    {
                        self.note_parameter(id, name, value);
                    }
                }
                b'E' => {
                    if let Some(up) = self.upstream.as_mut() {
                        up.copy_in = false;
                    }
                    if route.owner == Some(Owner::Pgmux) {
                        self.job_error = Some(msg.to_vec());
                    }
                }
                _ => {}
            }
            if h.tag == b'A' && self.pool_mode != PoolMode::Session {
                // A notification goes to the sessions listening to its channel, wherever their turns are.
                self.notify(msg, body);
                pos += total;
                continue;
            }
            let mut show = true;
            match (route.action, h.tag) {
                (Action::Parsed(slot), b'1') => self.parse_settled(slot, true),
                (Action::Parsed(slot), b'E') => self.parse_settled(slot, false),
                (Action::Plan(slot), b'C' | b'Z') => show = self.plan_progress(slot, h.tag),
                _ => {}
            }
            if h.tag == b'E' {
                for action in self.replies.take_dropped() {
                    if let Action::Parsed(slot) = action {
                        self.parse_settled(slot, false);
                    }
                }
            }
            if h.tag == b'D' && route.owner == Some(Owner::Pgmux) {
                if let Some((name, value)) = parse_two_column_row(body) {
                    self.probe_rows.push((name, value));
                }
            }
            match (&route.replacement, route.disposition) {
                (Some(replacement), _) if h.tag == b'E' => {
                    let bytes = replacement.clone();
                    self.deliver(route.owner, Disposition::Forward, &bytes);
                }
                (_, Disposition::HideOk) if h.tag != b'E' => {}
                (_, Disposition::HideOk) => self.deliver(route.owner, Disposition::Forward, msg),
                _ if show => self.deliver(route.owner, route.disposition, msg),
                _ => {}
            }
            if let (true, Some(Owner::Session(id)), b'E' | b'Z') = (self.cancel_shielding, route.owner, h.tag) {
                self.shield_reply(id, h.tag, body);
            }
            pos += total;
            if route.ready && route.owner == Some(Owner::Pgmux) {
                self.job_done();
            }
            self.pump_synth();
            if self.upstream.is_none() {
                break Ok(());
            }
        };
        buf.drain(..pos.min(buf.len()));
        result
    }

    /// A backend message no request asked for: why the upstream must go. When it is PostgreSQL ending the
    /// connection itself (a FATAL from pg_terminate_backend or a shutdown, arriving while the owner sits idle inside
    /// its transaction), the owner gets that error first, as a direct client would.
    fn unsolicited(&mut self, tag: u8, msg: Option<&[u8]>, e: replies::Desync) -> String {
        let fields = msg
            .filter(|_| tag == b'E')
            .and_then(|m| be::parse_error_fields(m.get(frame::HEADER_LEN..).unwrap_or_default()).ok())
            .filter(|f| f.severity == "FATAL" || f.severity == "PANIC");
        let (Some(f), Some(msg)) = (fields, msg) else { return e.to_string() };
        if let Some(s) = self.owner.and_then(|o| self.sessions.get_mut(o)).and_then(|s| s.as_mut()) {
            s.out.extend_from_slice(msg);
        }
        format!("the server ended it: {} {} {}", f.severity, f.code, f.message)
    }

    /// A reported setting changed in a session's own statement: remember it for that session and the upstream.
    fn note_parameter(&mut self, session_id: u64, name: &str, value: &str) {
        if !settings::is_tracked_reported(name) {
            return;
        }
        let lower = name.to_ascii_lowercase();
        if let Some(&idx) = self.by_id.get(&session_id) {
            if let Some(s) = self.session(idx) {
                s.set(lower.clone(), value.to_string());
            }
        }
        if let Some(up) = self.upstream.as_mut() {
            up.applied.insert(lower, value.to_string());
            up.applied_for = Some(session_id);
        }
    }

    fn deliver(&mut self, owner: Option<Owner>, disposition: Disposition, bytes: &[u8]) {
        if disposition == Disposition::Swallow {
            return;
        }
        let idx = match owner {
            // Nearly every reply is for the session that holds the upstream: skip the map lookup for it.
            Some(Owner::Session(id)) => match self.owner {
                Some(o) if self.sessions.get(o).and_then(|s| s.as_ref()).is_some_and(|s| s.id == id) => Some(o),
                _ => self.by_id.get(&id).copied(),
            },
            // An asynchronous message while nothing is owed (a notice after a transaction, a notification): it
            // belongs to nobody in transaction mode; in session mode to the session that holds the upstream.
            None if self.pool_mode == PoolMode::Session => self.owner,
            _ => None,
        };
        if let Some(s) = idx.and_then(|i| self.session(i)) {
            s.shield.take_reply(bytes, &mut s.out);
        } else {
            return;
        }
        self.stats.sent_to_client(bytes.len());
    }

    /// Fan a NotificationResponse out to this worker's sessions that listen to its channel.
    fn notify(&mut self, msg: &[u8], body: &[u8]) {
        let mut cur = pgmux_proto::cursor::Cursor::new(body);
        let _pid = cur.read_i32();
        let Ok(channel) = cur.read_cstr() else { return };
        let targets: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.sessions.get(i).and_then(|s| s.as_ref()).is_some_and(|s| s.listens.contains(channel)))
            .collect();
        for &idx in &targets {
            let Some(s) = self.session(idx) else { continue };
            s.out.extend_from_slice(msg);
            self.watch.push(idx);
        }
        self.publish();
        for idx in targets {
            let Some(s) = self.session(idx) else { continue };
            if let Err(e) = s.flush() {
                self.close_session(idx, &format!("client write failed: {e}"), None);
            }
        }
    }

    /// `UNLISTEN *` plus a LISTEN per channel any session here listens to, unless the upstream already matches.
    fn listen_sync_sql(&mut self) -> Option<String> {
        let wanted: std::collections::BTreeSet<String> =
            self.sessions.iter().flatten().flat_map(|s| s.listens.iter().cloned()).collect();
        let up = self.upstream.as_mut()?;
        if up.listening == wanted {
            return None;
        }
        let mut sql = String::from("UNLISTEN *;");
        for c in &wanted {
            sql.push_str("LISTEN ");
            sql.push_str(&pgmux_proto::sql::quote_ident(c));
            sql.push(';');
        }
        up.listening = wanted;
        Some(sql)
    }

    /// pgmux's own query or Sync has been answered.
    fn job_done(&mut self) {
        let job = self.jobs.pop_front();
        let error = self.job_error.take();
        match job {
            Some(Job::Settings { session_id, wanted }) => {
                let idx = self.by_id.get(&session_id).copied();
                match error {
                    None => {
                        if let Some(up) = self.upstream.as_mut() {
                            up.applied = wanted.into_iter().collect();
                            up.applied_for = Some(session_id);
                        }
                    }
                    Some(err) => {
                        // A setting the session asked for at startup is invalid: it fails for this session only,
                        // as PostgreSQL would have refused the connection.
                        if let Some(idx) = idx {
                            if let Some(s) = self.session(idx) {
                                s.out.extend_from_slice(&err);
                            }
                            self.close_session(idx, "invalid startup parameter", None);
                        }
                    }
                }
            }
            Some(Job::AbortSync) => {}
            Some(Job::SettingsProbe { session_id }) => {
                let rows = std::mem::take(&mut self.probe_rows);
                if error.is_none() {
                    self.settings_read_back(session_id, rows);
                }
            }
            Some(Job::Connect) | Some(Job::Check) if error.is_some() => {
                let message = error
                    .as_ref()
                    .and_then(|e| be::parse_error_fields(e.get(frame::HEADER_LEN..).unwrap_or_default()).ok())
                    .map(|f| f.message)
                    .unwrap_or_default();
                let what = if matches!(job, Some(Job::Connect)) { "connect_query" } else { "server_check_query" };
                self.drop_upstream(&format!("{what} failed: {message}"));
            }
            Some(Job::Connect) | Some(Job::Check) => {}
            Some(Job::Reset) => {
                if let Some(err) = error {
                    let fields = be::parse_error_fields(err.get(frame::HEADER_LEN..).unwrap_or_default());
                    warn!("server_reset_query failed: {}", fields.map(|f| f.message).unwrap_or_default());
                }
                // DISCARD ALL (the usual reset) drops prepared statements, settings and LISTENs upstream.
                self.upstream_deallocated(true);
                if let Some(up) = self.upstream.as_mut() {
                    up.listening.clear();
                }
                self.listen_sync = true;
            }
            Some(Job::Rollback) | Some(Job::Sync) | Some(Job::Cleanup) => {
                if let Some(err) = error {
                    let fields = be::parse_error_fields(err.get(frame::HEADER_LEN..).unwrap_or_default());
                    warn!("clean-up query failed: {}", fields.map(|f| f.message).unwrap_or_default());
                }
            }
            None => warn!("ReadyForQuery for a pgmux query that was never sent"),
        }
    }

    // ----- the owning session -----

    fn read_owner(&mut self) -> bool {
        let Some(idx) = self.owner else { return false };
        if !self.jobs.is_empty() {
            // Its settings are being applied or read back; its request waits in the kernel until that is done.
            return false;
        }
        if !self.riders.is_empty() {
            // Others' requests wait upstream behind its own: its next one waits for a turn after theirs.
            return false;
        }
        if !self.owner_exposed {
            // Exposed before a byte of its request is read (see `board.rs`).
            self.owner_exposed = true;
            self.publish();
        }
        let mut progress = false;
        // Bytes the listener read after the startup packet, or a partial message from this session's last turn.
        if self.session(idx).is_some_and(|s| !s.inbuf.is_empty()) && !self.forward_client_input(idx) {
            return true;
        }
        loop {
            if self.upstream_backlog() > HIGH_WATER || self.upstream.is_none() {
                break;
            }
            let Some(s) = self.session(idx) else { break };
            if !s.readable {
                break;
            }
            match self.read_session(idx) {
                SessionRead::Data => {
                    progress = true;
                    self.request_at = Instant::now();
                    if !self.forward_client_input(idx) {
                        return true;
                    }
                }
                SessionRead::Nothing => {}
                SessionRead::Closed => return true,
            }
        }
        if self.session(idx).is_some_and(|s| s.cancel_pending) {
            self.fire_held_cancel(idx);
        }
        self.check_release();
        progress
    }

    /// One read from a session's socket into its input buffer, keeping its readiness; the session is closed on EOF or
    /// an error.
    fn read_session(&mut self, idx: usize) -> SessionRead {
        let Some(s) = self.session(idx) else { return SessionRead::Closed };
        match s.conn.read_into(&mut s.inbuf, READ_CHUNK) {
            Ok(ReadOutcome::Data { drained, .. }) => {
                if drained && !s.hup {
                    s.readable = false;
                }
                SessionRead::Data
            }
            Ok(ReadOutcome::WouldBlock) => {
                s.readable = false;
                SessionRead::Nothing
            }
            Ok(ReadOutcome::Eof) => {
                self.close_session(idx, "client closed the connection", None);
                SessionRead::Closed
            }
            Err(e) => {
                self.close_session(idx, &format!("client read failed: {e}"), None);
                SessionRead::Closed
            }
        }
    }

    /// Move the owner's whole messages (and the streamed part of a large one) upstream. False if the session was
    /// closed.
    fn forward_client_input(&mut self, idx: usize) -> bool {
        let max_len = self.ctx.config.pooler.max_packet_size;
        let rewrite = self.pool_mode != PoolMode::Session;
        let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { return false };
        let id = s.id;
        let mut inbuf = std::mem::take(&mut s.inbuf);
        let mut pos = 0;
        let mut fault: Option<String> = None;
        let mut terminate = false;
        loop {
            let avail = inbuf.len() - pos;
            let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { break };
            let Some(up) = self.upstream.as_mut() else { break };
            if s.passthrough > 0 {
                let n = s.passthrough.min(avail);
                if n == 0 {
                    break;
                }
                up.outbuf.extend_from_slice(inbuf.get(pos..pos + n).unwrap_or_default());
                s.passthrough -= n;
                pos += n;
                self.stats.client_bytes(n);
                continue;
            }
            let rest = inbuf.get(pos..).unwrap_or_default();
            let Some(h) = frame::peek_header(rest) else { break };
            if let Err(e) = frame::check_frontend(h, max_len) {
                fault = Some(e.to_string());
                break;
            }
            match h.tag {
                b'X' => {
                    terminate = true;
                    pos += h.total_len().min(avail);
                    break;
                }
                b'p' => {
                    fault = Some("unexpected password message after authentication".into());
                    break;
                }
                b'c' | b'f' => up.copy_in = false,
                _ => {}
            }
            let total = h.total_len();
            // Messages pgmux may rewrite are buffered whole (up to a cap); others stream through when large.
            let stream_at = if rewrite && matches!(h.tag, b'P' | b'B' | b'D' | b'C' | b'Q') {
                MAX_REWRITTEN_MESSAGE
            } else {
                STREAM_THRESHOLD
            };
            if avail < total && total <= stream_at {
                break;
            }
            if !s.turn_sent {
                s.turn_sent = true;
                s.turn_start = up.sent_total + (up.outbuf.len() - up.out_pos) as u64;
            }
            self.stats.client_message(h.tag, total.min(avail));
            let is_owner = self.owner == Some(idx);
            if avail >= total {
                let msg = rest.get(..total).unwrap_or_default();
                if rewrite {
                    self.client_message(idx, id, h.tag, msg);
                    if self.owner_plain && is_owner {
                        // After handling: a Query's classification is the one `client_query` just made, and a Bind
                        // sees the unnamed statement and names its batch's Parse left.
                        self.owner_plain =
                            if h.tag == b'Q' { self.last_query_plain } else { self.owner_message_plain(idx, msg) };
                    }
                } else {
                    up.outbuf.extend_from_slice(msg);
                    self.replies.push(Owner::Session(id), h.tag, Disposition::Forward);
                }
                pos += total;
            } else {
                if is_owner {
                    self.owner_plain = false;
                }
                up.outbuf.extend_from_slice(rest);
                self.replies.push(Owner::Session(id), h.tag, Disposition::Forward);
                s.passthrough = total - avail;
                pos = inbuf.len();
                break;
            }
        }
        if pos > 0 {
            self.owner_active_at = Instant::now();
        }
        inbuf.drain(..pos.min(inbuf.len()));
        if let Some(s) = self.session(idx) {
            s.inbuf = inbuf;
        }
        self.pump_synth();
        if let Some(reason) = fault {
            self.close_session(idx, &reason, Some(("08P01", &reason)));
            return false;
        }
        if terminate {
            self.close_session(idx, "client sent Terminate", None);
            return false;
        }
        true
    }

    /// Deliver replies pgmux gives itself once nothing the upstream owes is ahead of them.
    fn pump_synth(&mut self) {
        while let Some((owner, bytes, action)) = self.replies.pop_synth() {
            if let Action::Parsed(slot) = action {
                self.parse_settled(slot, true);
            }
            self.deliver(Some(owner), Disposition::Forward, &bytes);
        }
    }

    /// The settings a session's turn left on the upstream, read back: they are the upstream's now, and the
    /// session's (plus, after RESET ALL, the startup values the upstream does not have yet).
    fn settings_read_back(&mut self, session_id: u64, rows: Vec<(String, String)>) {
        let Some(idx) = self.by_id.get(&session_id).copied() else { return };
        let Some(s) = self.session(idx) else { return };
        let upstream_view: HashMap<String, String> = rows.iter().cloned().collect();
        let mut settings = rows;
        let mut in_step = true;
        if s.reset_seen {
            for (n, v) in &s.baseline {
                if !settings.iter().any(|(m, _)| m == n) {
                    settings.push((n.clone(), v.clone()));
                    in_step = false;
                }
            }
            s.reset_seen = false;
        }
        s.settings_dirty = false;
        s.settings = settings;
        s.refresh_ctx();
        if let Some(up) = self.upstream.as_mut() {
            up.applied = upstream_view;
            up.applied_for = in_step.then_some(session_id);
        }
    }

    /// Hand the upstream back when the owner's transaction is over and nothing is owed.
    fn check_release(&mut self) {
        loop {
            self.release_turn();
            // The next rider's request is upstream already: it owns the upstream from now (and may be answered
            // already, so look again).
            if self.owner.is_some() || !self.promote_rider() {
                return;
            }
        }
    }

    /// End the owner's turn if it is over.
    fn release_turn(&mut self) {
        let Some(idx) = self.owner else { return };
        let Some(up) = self.upstream.as_ref() else { return };
        let owed = match self.riders.is_empty() {
            true => !self.replies.is_empty(),
            // Riders' entries follow the owner's; only its own count.
            false => self.sessions.get(idx).and_then(|s| s.as_ref()).is_none_or(|s| self.replies.owes(s.id)),
        };
        if owed || self.replies.needs_sync() || !self.jobs.is_empty() {
            return;
        }
        let status = up.txn_status;
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return };
        if s.passthrough > 0 || !s.inbuf.is_empty() || (s.readable && !s.turn_sent) {
            return;
        }
        if s.pending_deallocate_all && status == b'I' {
            // DEALLOCATE ALL / DISCARD ALL ran through the extended protocol during this turn.
            let id = s.id;
            if let Some(s) = self.session(idx) {
                s.pending_deallocate_all = false;
            }
            self.deallocated_all(id);
        }
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return };
        if s.settings_dirty && self.pool_mode != PoolMode::Session && status == b'I' {
            let id = s.id;
            self.probe_rows.clear();
            let probe = self.settings_probe.clone();
            self.send_job_query(&probe, Job::SettingsProbe { session_id: id });
            return;
        }
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return };
        if s.pins != 0 && status == b'I' {
            // Backend-held state (temp tables, WITH HOLD cursors, advisory locks): the session keeps its upstream,
            // and sessions waiting here move to other workers.
            return;
        }
        match self.pool_mode {
            PoolMode::Session => return,
            PoolMode::Statement if status != b'I' => {
                self.close_session(
                    idx,
                    "transaction block in statement mode",
                    Some(("08P01", "transaction blocks not allowed in statement pooling mode")),
                );
                return;
            }
            _ if status != b'I' => return,
            _ => {}
        }
        log::trace!("{}: turn ends (readable={})", s.label, s.readable);
        self.report_state(idx, false);
        if self.session(idx).is_some_and(|s| s.pending_out() > 0 || !s.inbuf.is_empty()) {
            self.watch.push(idx);
        }
        self.owner = None;
        self.upstream_idle_since = Instant::now();
        if self.timeouts.reset_always && self.pool_mode != PoolMode::Session {
            // server_reset_query_always: every transaction ends with the reset query, as in PgBouncer.
            self.needs_reset = true;
        }
        if let Some(s) = self.session(idx) {
            s.idle_since = Instant::now();
            // A cancel held for a request that never ran (it went nowhere) must not hit the next one.
            s.cancel_pending = false;
            s.shield.own_cancel = false;
        }
        // The client has (or is being sent) its whole reply: say at once that it is idle again, so a crash from
        // here on does not cost it its connection.
        self.publish();
        if self.riders.is_empty() {
            self.cancel_shielding = false;
        }
        if self.run_again(idx) {
            return;
        }
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return };
        let readable = s.readable;
        if readable {
            if let Some(s) = self.session(idx) {
                s.queued = true;
                s.queued_at = Instant::now();
            }
            self.queue.push_back(idx);
        }
    }

    /// When nobody owns the upstream: finish clean-up, then give it to the next waiting session.
    fn settle(&mut self) -> bool {
        let mut progress = false;
        loop {
            if self.owner.is_none() && !self.riders.is_empty() {
                // The owner left with riders behind it.
                self.check_release();
                progress = true;
            }
            if self.owner.is_some() || !self.replies.is_empty() || !self.jobs.is_empty() {
                return progress;
            }
            if self.upstream.is_none() {
                if self.queue.is_empty() || self.shutting_down || self.stats.paused {
                    return progress;
                }
                if let Err(msg) = self.ensure_upstream() {
                    // Nobody can be served: tell the waiting clients instead of leaving them hanging.
                    while let Some(idx) = self.queue.pop_front() {
                        self.close_session(idx, "server unavailable", Some(("08006", &msg)));
                    }
                    return true;
                }
                progress = true;
            }
            let Some(up) = self.upstream.as_ref() else { return progress };
            if up.passthrough > 0 {
                return progress;
            }
            if self.replies.needs_sync() {
                self.send_job_sync(Job::Sync);
                return true;
            }
            if up.txn_status != b'I' {
                self.send_job_query("ROLLBACK", Job::Rollback);
                return true;
            }
            if self.needs_unpin {
                self.needs_unpin = false;
                self.send_job_query(
                    "DISCARD TEMP; CLOSE ALL; SELECT pg_catalog.pg_advisory_unlock_all()",
                    Job::Cleanup,
                );
                return true;
            }
            if self.needs_reset {
                self.needs_reset = false;
                let q = self.ctx.config.pooler.server_reset_query.clone();
                if !q.trim().is_empty() {
                    if let Some(up) = self.upstream.as_mut() {
                        up.applied.clear();
                        up.applied_for = None;
                    }
                    self.send_job_query(&q, Job::Reset);
                    return true;
                }
            }
            if self.listen_sync {
                self.listen_sync = false;
                if let Some(sql) = self.listen_sync_sql() {
                    self.send_job_query(&sql, Job::Cleanup);
                    return true;
                }
            }
            if !self.pending_deallocs.is_empty() {
                let sql: String =
                    self.pending_deallocs.drain(..).map(|n| format!("DEALLOCATE {n};")).collect::<Vec<_>>().concat();
                self.send_job_query(&sql, Job::Cleanup);
                return true;
            }
            if let Some(why) = self.close_due() {
                self.drop_upstream(why);
                progress = true;
                continue;
            }
            if self.shutting_down || self.stats.paused {
                return progress;
            }
            if self.queue.is_empty() {
                return progress;
            }
            if let Some(check) = self.timeouts.server_check.clone() {
                if self.upstream_idle_since.elapsed() >= self.timeouts.server_check_delay {
                    // Not used for a while: make sure it still works before a session relies on it.
                    self.upstream_idle_since = Instant::now();
                    self.send_job_query(&check, Job::Check);
                    return true;
                }
            }
            let Some(idx) = self.queue.pop_front() else { return progress };
            let Some(s) = self.session(idx) else { continue };
            if !s.queued {
                continue;
            }
            s.queued = false;
            self.begin_turn(idx);
            progress = true;
        }
    }

    fn begin_turn(&mut self, idx: usize) {
        self.owner = Some(idx);
        self.owner_plain = true;
        self.owner_active_at = Instant::now();
        self.turn_started = self.owner_active_at;
        // Not exposed yet: pgmux may first apply its settings; `read_owner` publishes it before reading.
        self.owner_exposed = false;
        self.upstream_idle_since = self.owner_active_at;
        self.turn += 1;
        if let Some(queued_at) = self.sessions.get(idx).and_then(|s| s.as_ref()).map(|s| s.queued_at) {
            self.stats.turn_began(queued_at);
        }
        if log::log_enabled!(log::Level::Trace) {
            if let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) {
                log::trace!("{}: turn {} begins", s.label, self.turn);
            }
        }
        let Some(s) = self.session(idx) else { return };
        s.turn_sent = false;
        s.ride_refused = false;
        let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) else { return };
        let Some(up) = self.upstream.as_ref() else { return };
        if up.applied_for == Some(s.id) {
            return;
        }
        let id = s.id;
        match settings::diff_sql(&up.applied, &s.settings) {
            Some(sql) => {
                let wanted = s.settings.clone();
                debug!("{}: applying settings: {sql}", s.label);
                self.send_job_query(&sql, Job::Settings { session_id: id, wanted });
            }
            None => {
                if let Some(up) = self.upstream.as_mut() {
                    up.applied_for = Some(id);
                }
            }
        }
    }

    // ----- moving waiting sessions to other workers -----

    /// Why waiting sessions should move, and when.
    fn migration_due(&self) -> Option<(Instant, Blocked)> {
        if !self.can_migrate || self.queue.is_empty() || self.owner.is_none() || self.shutting_down {
            return None;
        }
        let up = self.upstream.as_ref()?;
        if !self.replies.is_empty() || !self.jobs.is_empty() {
            // The upstream is working for the owner. Waiting is fair while every sibling is busy too; a turn that
            // runs long (a slow query, a big COPY) must not keep sessions here while a sibling sits idle.
            return Some((self.busy_check_at.max(self.turn_started + MIGRATE_AFTER), Blocked::SlowTurn));
        }
        let pinned =
            self.owner.and_then(|o| self.sessions.get(o)).and_then(|s| s.as_ref()).is_some_and(|s| s.pins != 0);
        if up.txn_status == b'I' && !pinned {
            return None;
        }
        Some((self.owner_active_at + MIGRATE_AFTER, Blocked::IdleOwner))
    }

    fn migration_due_at(&self) -> Option<Instant> {
        self.migration_due().map(|(at, _)| at)
    }

    /// Hand waiting sessions (whose bytes are still in the kernel) to the supervisor for another worker: all of
    /// them when the owner idles inside a transaction or is pinned (it may do so for ever), as many as there are
    /// idle siblings (or room for new ones) when the owner's turn merely runs long.
    fn migrate_waiting(&mut self) {
        let Some((_, why)) = self.migration_due() else { return };
        let now = Instant::now();
        let mut budget = match why {
            Blocked::IdleOwner => usize::MAX,
            Blocked::SlowTurn => {
                // Idle siblings, and the workers the pool may still start (the supervisor weighs the pool size and
                // the limits it shares with other pools, see `supervisor/limits.rs`).
                let (idle, _) = self.ctx.board.siblings(self.ctx.pool, self.ctx.board_slot);
                idle + self.ctx.board.room(self.ctx.board_slot) as usize
            }
        };
        if budget == 0 {
            self.busy_check_at = now + BUSY_RECHECK;
            return;
        }
        let reason = match why {
            Blocked::IdleOwner => "upstream idle in a transaction of another session",
            Blocked::SlowTurn => "upstream busy with a long turn of another session, a sibling is idle",
        };
        let waiting: Vec<usize> = self.queue.drain(..).collect();
        for idx in waiting {
            let Some(s) = self.session(idx) else { continue };
            if !s.queued {
                continue;
            }
            if budget == 0 || now.duration_since(s.arrived) < MIGRATE_COOLDOWN || !self.migrate_one(idx, reason) {
                self.queue.push_back(idx);
            } else {
                budget -= 1;
            }
        }
        self.busy_check_at = now + BUSY_RECHECK;
    }

    /// Tell the board what the upstream is doing and which sessions are exposed: once per loop turn, and at once
    /// whenever a session becomes exposed (a few relaxed stores; the watch list is usually empty).
    fn publish(&mut self) {
        let outbox_empty = self.outbox.is_empty();
        let owner_idx = self.owner;
        let mut watch = std::mem::take(&mut self.watch);
        let mut ids = std::mem::take(&mut self.exposed_ids);
        ids.clear();
        watch.sort_unstable();
        watch.dedup();
        watch.retain(|&i| {
            let Some(s) = self.sessions.get_mut(i).and_then(|s| s.as_mut()) else { return false };
            if outbox_empty {
                s.report_unsent = false;
            }
            let exposed = s.unrecoverable || s.pending_out() > 0 || !s.inbuf.is_empty() || s.report_unsent;
            if exposed {
                log::trace!(
                    "{}: exposed (unrecoverable={} out={} in={} report_unsent={})",
                    s.label,
                    s.unrecoverable,
                    s.pending_out(),
                    s.inbuf.len(),
                    s.report_unsent
                );
            }
            if exposed && owner_idx != Some(i) {
                ids.push(s.id);
            }
            exposed
        });
        self.watch = watch;
        for &i in &self.riders {
            if let Some(s) = self.sessions.get(i).and_then(|s| s.as_ref()) {
                ids.push(s.id);
            }
        }
        let state = if self.draining || self.shutting_down {
            board::State::Draining
        } else if self.upstream.is_none() {
            board::State::Unknown
        } else if self.owner.is_none() && self.queue.is_empty() && self.replies.is_empty() && self.jobs.is_empty() {
            board::State::Idle
        } else {
            board::State::Busy
        };
        let owner = self
            .owner
            .filter(|_| self.owner_exposed)
            .and_then(|o| self.sessions.get(o))
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.id);
        // The queue is in arrival order, so its head has waited longest (near enough: a moved session may have
        // started waiting earlier elsewhere).
        let waiting_since = self
            .queue
            .front()
            .and_then(|&i| self.sessions.get(i))
            .and_then(|s| s.as_ref())
            .map_or(0, |s| ns_at_instant(s.queued_at));
        self.ctx.board.publish(
            self.ctx.board_slot,
            state,
            self.queue.len(),
            self.by_id.len(),
            owner,
            waiting_since,
            &ids,
        );
        self.exposed_ids = ids;
    }

    /// Send one session (not the owner) to the supervisor for another worker. False if it must stay.
    fn migrate_one(&mut self, idx: usize, why: &str) -> bool {
        if self.owner == Some(idx) {
            return false;
        }
        let Some(s) = self.sessions.get_mut(idx).and_then(|s| s.as_mut()) else { return false };
        if s.riding || s.passthrough > 0 || !matches!(s.flush(), Ok(true)) {
            return false; // replies still on their way to the client stay with this worker until written
        }
        let mut record = s.to_record();
        if s.cancel_pending {
            record.flags |= FLAG_CANCEL_HELD;
        }
        record.moved_at_ns = monotonic_ns();
        record.waiting_since_ns = if s.queued { ns_at_instant(s.queued_at) } else { 0 };
        let mut encoded = Vec::new();
        record.encode(&mut encoded);
        if encoded.len() + 64 > pgmux_ipc::channel::MAX_MSG_LEN {
            return false; // too much state to move in one message: it stays here
        }
        let Some(mut s) = self.sessions.get_mut(idx).and_then(|slot| slot.take()) else { return false };
        self.free.push(idx);
        self.by_id.remove(&s.id);
        let _ = self.poll.registry().deregister(&mut SourceFd(&s.conn.raw_fd()));
        if let Err(e) = s.flush() {
            debug!("{}: flush before moving failed: {e}", s.label);
        }
        if let Some(up) = self.upstream.as_ref() {
            let generation = up.generation;
            self.pending_deallocs.extend(
                s.sql_prepared.values().filter(|p| p.generation == generation).map(|p| p.upstream_name.clone()),
            );
        }
        debug!("{}: moving to another worker ({why})", s.label);
        if !s.listens.is_empty() {
            self.listen_sync = true;
        }
        let fd = s.conn.into_fd();
        if let Err(e) = self.outbox.send(&self.ctx.channel, &Msg::Migrate { record }, vec![fd]) {
            warn!("s{}: could not hand over for migration: {e}", s.id);
        }
        true
    }

    /// Retire this worker's upstream (server_lifetime, or the supervisor's `Drain` on reload) by moving every session
    /// elsewhere, then exiting.
    fn begin_drain(&mut self, why: &str) {
        if self.draining {
            return;
        }
        info!("draining: {why}; moving every session to other workers");
        self.draining = true;
        if let Err(e) = self.outbox.send(&self.ctx.channel, &Msg::Draining, Vec::new()) {
            warn!("cannot tell the supervisor about draining: {e}");
        }
    }

    /// Move every session that is between transactions; exit once none is left and the upstream is clean.
    fn drain_step(&mut self) {
        let idle: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.owner != Some(i) && self.sessions.get(i).is_some_and(|s| s.is_some()))
            .collect();
        for idx in idle {
            self.migrate_one(idx, "draining");
        }
        self.queue.retain(|&i| self.sessions.get(i).is_some_and(|s| s.is_some()));
        if self.by_id.is_empty() && self.owner.is_none() && self.replies.is_empty() && self.jobs.is_empty() {
            self.flush_outbox();
            if self.outbox.is_empty() {
                if let Some(up) = self.upstream.as_ref() {
                    info!(
                        "{} closing because: server lifetime over (age={}s)",
                        self.server_label(),
                        up.connected_at.elapsed().as_secs()
                    );
                }
                info!("drained, exiting");
                self.stop = true;
            }
        }
    }

    // ----- periodic checks -----

    /// idle_transaction_timeout for the owner, query_wait_timeout for sessions waiting for the upstream.
    fn enforce_timeouts(&mut self) {
        let now = Instant::now();
        let (idle_limit, wait_limit) = (self.timeouts.idle_transaction, self.timeouts.query_wait);
        self.enforce_request_timeouts(now);
        if let (Some(limit), Some(idx), Some(up)) = (idle_limit, self.owner, self.upstream.as_ref()) {
            let idle_in_txn = up.txn_status != b'I' && self.replies.is_empty() && self.jobs.is_empty();
            if idle_in_txn && now.duration_since(self.owner_active_at) > limit {
                if let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) {
                    info!("{}: closing because: idle transaction timeout", s.label);
                }
                self.close_session(
                    idx,
                    "idle transaction timeout",
                    Some((
                        "25P03",
                        "terminating connection due to idle transaction timeout (idle_transaction_timeout)",
                    )),
                );
            }
        }
        if let Some(limit) = wait_limit {
            let late: Vec<usize> = self
                .queue
                .iter()
                .copied()
                .filter(|&i| {
                    self.sessions
                        .get(i)
                        .and_then(|s| s.as_ref())
                        .is_some_and(|s| s.queued && now.duration_since(s.queued_at) > limit)
                })
                .collect();
            for idx in late {
                let why = if self
                    .owner
                    .and_then(|o| self.sessions.get(o))
                    .and_then(|s| s.as_ref())
                    .is_some_and(|s| s.pins != 0)
                {
                    "query_wait_timeout: the server connection is held by a session with temporary tables, WITH HOLD cursors or advisory locks"
                } else {
                    "query_wait_timeout"
                };
                if let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) {
                    warn!("{}: closing because: {why}", s.label);
                }
                self.close_session(idx, "query_wait_timeout", Some(("08P01", why)));
            }
        }
    }

    /// query_timeout and transaction_timeout for the owner, client_idle_timeout for sessions between transactions.
    fn enforce_request_timeouts(&mut self, now: Instant) {
        if let (Some(idx), Some(up)) = (self.owner, self.upstream.as_ref()) {
            let running = !self.replies.is_empty();
            let query_late = self.timeouts.query.is_some_and(|l| running && now.duration_since(self.request_at) > l);
            let txn_late = self
                .timeouts
                .transaction
                .is_some_and(|l| up.txn_status != b'I' && self.txn_started.is_some_and(|t| now.duration_since(t) > l));
            if query_late || txn_late {
                let (reason, message) = if query_late {
                    ("query timeout", "canceling statement due to query timeout (query_timeout)")
                } else {
                    ("transaction timeout", "terminating connection due to transaction timeout (transaction_timeout)")
                };
                if let Some(s) = self.sessions.get(idx).and_then(|s| s.as_ref()) {
                    warn!("{} closing because: {reason}", s.label);
                }
                // Closing the owner cancels what still runs and rolls its transaction back before reuse.
                self.close_session(idx, reason, Some(("57014", message)));
            }
        }
        if let Some(limit) = self.timeouts.client_idle {
            let idle: Vec<usize> = (0..self.sessions.len())
                .filter(|&i| {
                    self.owner != Some(i)
                        && self.sessions.get(i).and_then(|s| s.as_ref()).is_some_and(|s| {
                            !s.queued && !s.riding && s.pending_out() == 0 && now.duration_since(s.idle_since) > limit
                        })
                })
                .collect();
            for idx in idle {
                self.close_session(idx, "client_idle_timeout", Some(("08P01", "client_idle_timeout")));
            }
        }
    }

    /// The configuration changed (the console's SET): resolve this pool's timeouts again.
    fn refresh_timeouts(&mut self) {
        let config = self.ctx.config.clone();
        if let Some(db) = config.database(&self.ctx.database) {
            self.timeouts = limits::Timeouts::resolve(&config, db, &self.ctx.user);
        }
    }

    /// server_idle_timeout: an upstream nobody used for that long is closed; the sessions stay, and the next one to
    /// need it reconnects. Kept while a session listens (notifications arrive on it) or the upstream holds state.
    fn close_idle_upstream(&mut self) {
        let Some(limit) = self.timeouts.server_idle else { return };
        let Some(up) = self.upstream.as_ref() else { return };
        // As PgBouncer, not below the pool's min_pool_size: this worker and its (non-draining) siblings count.
        let min = self.ctx.config.pool_settings(&self.ctx.database, &self.ctx.user, self.ctx.dedicated);
        if min.is_some_and(|m| self.ctx.board.siblings(self.ctx.pool, self.ctx.board_slot).1 < m.min_pool_size as usize)
        {
            return;
        }
        let idle = self.owner.is_none()
            && self.queue.is_empty()
            && self.replies.is_empty()
            && self.jobs.is_empty()
            && up.txn_status == b'I'
            && up.listening.is_empty()
            && !self.listen_sync
            && !self.needs_unpin;
        if !idle || self.upstream_idle_since.elapsed() <= limit {
            return;
        }
        if let Some(mut up) = self.upstream.take() {
            info!(
                "{} closing because: server idle timeout (age={}s)",
                self.server_label(),
                up.connected_at.elapsed().as_secs()
            );
            let _ = self.poll.registry().deregister(&mut SourceFd(&up.conn.raw_fd()));
            let mut out = Vec::new();
            fe::terminate(&mut out);
            let _ = up.conn.write(&out);
            up.outbuf.clear();
        }
        self.send_supervisor(Msg::WorkerStatus { upstream_up: false, sessions: self.by_id.len() as u32 });
    }

    fn janitor(&mut self) {
        if !crate::process::parent_alive(self.ctx.parent) {
            warn!("supervisor is gone, exiting");
            self.stop = true;
            return;
        }
        self.enforce_timeouts();
        self.close_idle_upstream();
        if let (Some(limit), Some(up)) = (self.timeouts.server_lifetime, self.upstream.as_ref()) {
            if up.connected_at.elapsed() > limit {
                self.begin_drain("server_lifetime reached");
            }
        }
        if !self.outbox.is_empty() {
            self.flush_outbox();
        }
        // Shutting down waits for the transaction in flight, not for the owner to let go: a session pinned by a temp
        // table (or any session in session mode) owns the upstream between its transactions too.
        let in_flight = !self.replies.is_empty()
            || !self.jobs.is_empty()
            || self.upstream.as_ref().is_some_and(|u| u.txn_status != b'I')
            || self
                .owner
                .and_then(|o| self.sessions.get(o))
                .and_then(|s| s.as_ref())
                .is_some_and(|s| !s.inbuf.is_empty());
        // A reply that just went out is given a moment to be read before the 57P01: a client library that reads
        // both at once may report the error instead of its COMMIT's success.
        let settled = self.upstream_idle_since.elapsed() >= SHUTDOWN_GRACE;
        if self.shutting_down && !in_flight && settled {
            let ids: Vec<usize> = (0..self.sessions.len()).filter(|i| self.sessions[*i].is_some()).collect();
            for idx in ids {
                self.close_session(idx, "pooler shutting down", Some(("57P01", "pgmux is shutting down")));
            }
            self.flush_outbox();
            self.stop = true;
        }
    }
}

/// application_name_add_host: "app - 10.0.0.5:51234", as PgBouncer writes it.
fn add_host_to_application_name(params: &mut Vec<(String, String)>, client_addr: &str) {
    match params.iter_mut().find(|(n, _)| n == "application_name") {
        Some((_, v)) => *v = format!("{v} - {client_addr}"),
        None => params.push(("application_name".into(), format!(" - {client_addr}"))),
    }
}

/// What keeps waiting sessions from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What one read from a session's socket gave.
enum SessionRead {
    Data,
    /// Nothing to read now (its readiness is used up).
    Nothing,
    /// EOF or an error: the session has been closed.
    Closed,
}

enum Blocked {
    /// The owner sits idle inside a transaction, or is pinned.
    IdleOwner,
    /// The owner's turn is still running.
    SlowTurn,
}

/// A DataRow of two non-null text columns (the settings probe's rows).
fn parse_two_column_row(body: &[u8]) -> Option<(String, String)> {
    let mut cur = pgmux_proto::cursor::Cursor::new(body);
    if cur.read_i16().ok()? != 2 {
        return None;
    }
    let mut col = || -> Option<String> {
        let len = cur.read_i32().ok()?;
        let bytes = cur.read_bytes(usize::try_from(len).ok()?).ok()?;
        String::from_utf8(bytes.to_vec()).ok()
    };
    let a = col()?;
    let b = col()?;
    Some((a, b))
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine, so a time taken in one worker
/// can be compared in another.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

/// `at` on the shared monotonic clock (see [`monotonic_ns`]).
pub(crate) fn ns_at_instant(at: Instant) -> u64 {
    let ago = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
    monotonic_ns().saturating_sub(ago).max(1)
}

/// The `Instant` of a time taken on the shared monotonic clock (now, if it is in the future or unrepresentable).
pub(crate) fn instant_at_ns(ns: u64) -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(monotonic_ns().saturating_sub(ns))).unwrap_or(now)
}
