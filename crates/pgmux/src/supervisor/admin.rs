//! The supervisor's side of the admin console: it answers the commands a listener passes on (`Msg::AdminRequest`),
//! never seeing a byte the console client sent.
//!
//! SHOW: the supervisor asks every worker for a fresh report (`Msg::StatsRequest`), waits for the answers for at
//! most [`GATHER_TIMEOUT`] (a worker blocked connecting upstream does not answer; its last report is used, marked
//! stale), and replies with a snapshot of its pools, session table, configuration and the reports. Counters of
//! workers that are gone stay in their pool's totals. Every `stats_period` the same gathering rolls the averaging
//! window (PgBouncer's averages cover the time since the previous roll but one).
//!
//! Controls act through the workers: PAUSE asks a pool's workers to start no new transaction and to close their
//! upstream once released; the reply waits until every worker reports that it has (polled every tick). While a
//! pool is paused, new sessions wait here. KILL closes a pool's sessions and workers; RECONNECT closes upstreams
//! once released; DISABLE refuses new logins here; SET and RELOAD change the configuration and pass changed
//! settings on to every child.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use pgmux_config::settings::{self, SetError};
use pgmux_config::PoolMode;
use pgmux_ipc::admin::{
    AdminCommand, AdminReply, ClientInfo, DatabaseInfo, PoolInfo, ProcessInfo, ShutdownMode, Snapshot, UserInfo,
    WorkerInfo, MODE_SESSION, MODE_STATEMENT, MODE_TRANSACTION,
};
use pgmux_ipc::stats::{Counters, Latency, WorkerReport};
use pgmux_ipc::wire::{self, Assembler};
use pgmux_ipc::{Msg, SessionRecord};

use super::{refuse, Role, Shutdown, Supervisor};

/// How long a SHOW waits for the workers' reports.
const GATHER_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseKind {
    Pause,
    Suspend,
}

/// What a finished gathering of worker reports is for.
#[derive(Debug)]
enum Then {
    Reply {
        listener: usize,
        id: u64,
    },
    /// Roll the SHOW STATS averaging window.
    Roll,
    /// Re-check the commands waiting for workers (PAUSE, WAIT_CLOSE, SHUTDOWN WAIT_FOR_SERVERS).
    Check,
}

#[derive(Debug)]
struct Gather {
    seq: u64,
    pending: HashSet<usize>,
    deadline: Instant,
    then: Then,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WaitFor {
    /// Every worker of the pools of `db` (all if None) is paused with its upstream closed.
    Released { db: Option<String> },
    /// No worker of those pools still has an upstream to close.
    Closed { db: Option<String> },
}

#[derive(Debug)]
struct Waiter {
    /// The console request to answer when done.
    reply_to: (usize, u64),
    tag: WaitFor,
    /// Reports answering a request this old or newer reflect the command.
    since_seq: u64,
}

/// A worker's latest report and the request it answered (0: unasked).
#[derive(Debug)]
struct Latest {
    report: WorkerReport,
    seq: u64,
}

/// The averaging window of SHOW STATS: pool totals at the last two rolls.
#[derive(Debug)]
struct Window {
    older: HashMap<usize, Counters>,
    newer: HashMap<usize, Counters>,
    older_at: Instant,
    newer_at: Instant,
    next_roll: Instant,
}

/// Everything the supervisor keeps for the console.
#[derive(Debug)]
pub(super) struct AdminState {
    next_seq: u64,
    gathers: Vec<Gather>,
    latest: HashMap<usize, Latest>,
    assembling: HashMap<usize, Assembler>,
    /// Counters and latency histograms of workers that are gone, by pool.
    retired: HashMap<usize, Counters>,
    retired_latency: HashMap<usize, Latency>,
    /// Crashes, moves and re-homed sessions, counted where they happen in `supervisor.rs` (the snapshot fills in
    /// the listener count).
    pub(super) events: ProcessInfo,
    window: Window,
    /// What SHOW CLIENTS shows of each session, noted at login.
    clients: HashMap<u64, ClientInfo>,
    pause: Option<PauseKind>,
    paused_dbs: HashSet<String>,
    disabled: HashSet<String>,
    waiters: Vec<Waiter>,
    /// The listeners were told to end the console sessions (pgmux is stopping).
    consoles_closed: bool,
}

impl AdminState {
    pub(super) fn new(stats_period: Duration) -> AdminState {
        let now = Instant::now();
        AdminState {
            next_seq: 1,
            gathers: Vec::new(),
            latest: HashMap::new(),
            assembling: HashMap::new(),
            retired: HashMap::new(),
            retired_latency: HashMap::new(),
            events: ProcessInfo { start_time_us: wall_now_us(), ..ProcessInfo::default() },
            window: Window {
                older: HashMap::new(),
                newer: HashMap::new(),
                older_at: now,
                newer_at: now,
                next_roll: now + stats_period,
            },
            clients: HashMap::new(),
            pause: None,
            paused_dbs: HashSet::new(),
            disabled: HashSet::new(),
            waiters: Vec::new(),
            consoles_closed: false,
        }
    }
}

fn wall_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn mode_byte(m: PoolMode) -> u8 {
    match m {
        PoolMode::Session => MODE_SESSION,
        PoolMode::Transaction => MODE_TRANSACTION,
        PoolMode::Statement => MODE_STATEMENT,
    }
}

/// "127.0.0.1:5000" → ("127.0.0.1", 5000); "[::1]:5000" → ("::1", 5000); "unix" → ("unix", 0).
fn split_addr(addr: &str) -> (String, u32) {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host.to_string(), port.parse().unwrap_or(0))
        }
        _ => (addr.to_string(), 0),
    }
}

impl Supervisor {
    // ----- hooks called from supervisor.rs -----

    /// A console message from a child. Listeners send commands; workers send reports.
    pub(super) fn on_admin_message(&mut self, slot: usize, msg: Msg) {
        let role = self.children.get(slot).and_then(|c| c.as_ref()).map(|c| c.role);
        match (role, msg) {
            (Some(Role::Listener { .. }), Msg::AdminRequest { id, command }) => self.admin_command(slot, id, command),
            (Some(Role::Worker { .. }), Msg::WorkerStats { seq, last, part }) => {
                self.worker_stats(slot, seq, last, &part)
            }
            (_, other) => warn!("unexpected {} from child slot {slot}", other.name()),
        }
    }

    /// Whether a new session of `database` must be refused now, and with what.
    pub(super) fn admin_refusal(&self, database: &str) -> Option<(&'static str, String)> {
        if self.admin.disabled.contains(database) {
            return Some(("08P01", format!("database does not allow connections: {database}")));
        }
        None
    }

    /// Notes what SHOW CLIENTS shows of a session that just logged in.
    pub(super) fn admin_login(&mut self, record: &SessionRecord, fd: &OwnedFd) {
        let (addr, mut port) = split_addr(&record.client_addr);
        let (local_addr, local_port) = match socket2::SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => (a.ip().to_string(), u32::from(a.port())),
            None => ("unix".to_string(), u32::from(self.config.pooler.listen_port)),
        };
        if addr == "unix" {
            port = local_port;
        }
        let application_name = record
            .startup_params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let info = ClientInfo {
            id: record.session_id,
            database: record.database.clone(),
            user: record.user.clone(),
            addr,
            port,
            local_addr,
            local_port,
            connect_time_us: wall_now_us(),
            application_name,
        };
        self.admin.clients.insert(record.session_id, info);
    }

    /// Whether the pool is paused, so its new sessions wait here instead of going to a worker.
    pub(super) fn admin_holds(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| self.pool_paused(&p.database))
    }

    /// SUSPEND is in force (sessions held here do not time out meanwhile).
    pub(super) fn admin_suspended(&self) -> bool {
        self.admin.pause == Some(PauseKind::Suspend)
    }

    /// A worker was just started: tell it if its pool is paused, before it gets any session.
    pub(super) fn admin_worker_started(&mut self, slot: usize, pool: usize) {
        if self.admin_holds(pool) {
            let _ = self.send(slot, Msg::PauseSessions { paused: true }, Vec::new());
        }
    }

    /// A child is gone: its counters stay in its pool's totals, and nobody waits for its report any more.
    pub(super) fn admin_child_gone(&mut self, slot: usize, role: Role) {
        self.admin.assembling.remove(&slot);
        if let (Some(latest), Role::Worker { pool, .. }) = (self.admin.latest.remove(&slot), role) {
            let retired = self.admin.retired.entry(pool).or_default();
            *retired = retired.add(&latest.report.counters);
            let retired = self.admin.retired_latency.entry(pool).or_default();
            *retired = retired.add(&latest.report.latency);
        }
        for g in &mut self.admin.gathers {
            g.pending.remove(&slot);
        }
        self.finish_gathers();
    }

    /// Stops listening on the TCP sockets in every process at once: listeners hold copies of them, and a listener
    /// stays up while it serves console sessions, so closing the supervisor's copy alone would leave new
    /// connections waiting in the backlog instead of being refused.
    pub(super) fn shut_listen_sockets(&self) {
        for l in self.listen.iter().chain(&self.metrics) {
            if let crate::sockets::ListenSocket::Tcp { fd, .. } = l {
                let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Read);
            }
        }
    }

    /// Every tick of a shutdown: once no worker is left, the console sessions (which the listeners keep until then,
    /// as PgBouncer keeps its console open until it exits) may end, so the listeners can exit too.
    pub(super) fn admin_shutdown_tick(&mut self) {
        if self.admin.consoles_closed || !self.worker_slots().is_empty() {
            return;
        }
        self.admin.consoles_closed = true;
        for c in self.children.iter_mut().flatten() {
            if matches!(c.role, Role::Listener { .. }) {
                let _ = c.outbox.send(&c.channel, &Msg::CloseConsoles, Vec::new());
            }
        }
    }

    /// Every tick: gatherings past their deadline, the stats window, commands waiting for workers, shutdown.
    pub(super) fn admin_tick(&mut self) {
        let now = Instant::now();
        self.finish_gathers();
        if now >= self.admin.window.next_roll {
            self.admin.window.next_roll = now + self.config.pooler.stats_period;
            self.start_gather(Then::Roll);
        }
        let checking = self.admin.gathers.iter().any(|g| matches!(g.then, Then::Check));
        if !self.admin.waiters.is_empty() && !checking {
            self.start_gather(Then::Check);
        }
        // Sessions that ended leave the table; their login notes go too.
        if self.admin.clients.len() > self.sessions.len() {
            let held: HashSet<u64> =
                self.pools.iter().flat_map(|p| p.waiting.iter().map(|h| h.record.session_id)).collect();
            let sessions = &self.sessions;
            self.admin.clients.retain(|id, _| sessions.contains_key(id) || held.contains(id));
        }
    }

    // ----- gathering worker reports -----

    fn worker_slots(&self) -> Vec<usize> {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| matches!(c.role, Role::Worker { .. })).map(|_| i))
            .collect()
    }

    fn start_gather(&mut self, then: Then) {
        let seq = self.admin.next_seq;
        self.admin.next_seq += 1;
        let mut pending = HashSet::new();
        for slot in self.worker_slots() {
            if self.send(slot, Msg::StatsRequest { seq }, Vec::new()).is_ok() {
                pending.insert(slot);
            }
        }
        self.admin.gathers.push(Gather { seq, pending, deadline: Instant::now() + GATHER_TIMEOUT, then });
        self.finish_gathers();
    }

    fn worker_stats(&mut self, slot: usize, seq: u64, last: bool, part: &[u8]) {
        let whole = match self.admin.assembling.entry(slot).or_default().push(part, last) {
            Ok(Some(whole)) => whole,
            Ok(None) => return,
            Err(e) => {
                warn!("worker slot {slot}: stats report: {e}");
                return;
            }
        };
        match WorkerReport::decode(&whole) {
            Ok(report) => {
                let seq = self.admin.latest.get(&slot).map_or(seq, |l| l.seq.max(seq));
                self.admin.latest.insert(slot, Latest { report, seq });
            }
            Err(e) => warn!("worker slot {slot}: bad stats report: {e}"),
        }
        for g in &mut self.admin.gathers {
            if g.seq == seq {
                g.pending.remove(&slot);
            }
        }
        self.finish_gathers();
    }

    /// Completes the gatherings every worker answered (or whose time is up).
    fn finish_gathers(&mut self) {
        let now = Instant::now();
        let (done, open): (Vec<Gather>, Vec<Gather>) = std::mem::take(&mut self.admin.gathers)
            .into_iter()
            .partition(|g| g.pending.is_empty() || now >= g.deadline);
        self.admin.gathers = open;
        if done.is_empty() {
            return;
        }
        for g in done {
            match g.then {
                Then::Reply { listener, id } => {
                    let snap = self.snapshot(g.seq);
                    self.reply(listener, id, &AdminReply::Snapshot(Box::new(snap)));
                }
                Then::Roll => self.roll_window(),
                Then::Check => {}
            }
        }
        self.check_waiters();
    }

    fn reply(&mut self, listener: usize, id: u64, reply: &AdminReply) {
        let mut payload = Vec::new();
        reply.encode(&mut payload);
        let parts = wire::chunks(&payload);
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let msg = Msg::AdminReply { id, last: i + 1 == n, part: part.to_vec() };
            if let Err(e) = self.send(listener, msg, Vec::new()) {
                warn!("cannot answer a console command: {e}");
                return;
            }
        }
    }

    /// Every worker's counters plus the retired ones, by pool.
    fn pool_totals(&self) -> HashMap<usize, Counters> {
        let mut totals = self.admin.retired.clone();
        for (slot, l) in &self.admin.latest {
            if let Some(Role::Worker { pool, .. }) = self.children.get(*slot).and_then(|c| c.as_ref()).map(|c| c.role) {
                let t = totals.entry(pool).or_default();
                *t = t.add(&l.report.counters);
            }
        }
        totals
    }

    /// Every worker's latency histograms plus the retired ones, by pool.
    fn pool_latency(&self) -> HashMap<usize, Latency> {
        let mut totals = self.admin.retired_latency.clone();
        for (slot, l) in &self.admin.latest {
            if let Some(Role::Worker { pool, .. }) = self.children.get(*slot).and_then(|c| c.as_ref()).map(|c| c.role) {
                let t = totals.entry(pool).or_default();
                *t = t.add(&l.report.latency);
            }
        }
        totals
    }

    fn roll_window(&mut self) {
        let totals = self.pool_totals();
        let w = &mut self.admin.window;
        w.older = std::mem::replace(&mut w.newer, totals);
        w.older_at = w.newer_at;
        w.newer_at = Instant::now();
    }

    // ----- the snapshot -----

    fn snapshot(&self, seq: u64) -> Snapshot {
        let now = Instant::now();
        let totals = self.pool_totals();
        let latency = self.pool_latency();
        let window_us =
            u64::try_from(now.saturating_duration_since(self.admin.window.older_at).as_micros()).unwrap_or(u64::MAX);
        let mut pools = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            let mut workers = Vec::new();
            for (slot, c) in self.children.iter().enumerate() {
                let Some(c) = c else { continue };
                let Role::Worker { pool, index } = c.role else { continue };
                if pool != i {
                    continue;
                }
                let latest = self.admin.latest.get(&slot);
                workers.push(WorkerInfo {
                    index,
                    pid: u32::try_from(c.pid.as_raw()).unwrap_or(0),
                    fresh: latest.is_some_and(|l| l.seq >= seq),
                    report: latest.map(|l| l.report.clone()),
                });
            }
            let waiting = p
                .waiting
                .iter()
                .map(|h| (h.record.session_id, u64::try_from(h.since.elapsed().as_micros()).unwrap_or(u64::MAX)))
                .collect();
            pools.push(PoolInfo {
                database: p.database.clone(),
                user: p.user.clone(),
                pool_mode: mode_byte(p.mode),
                size: u32::try_from(p.size).unwrap_or(u32::MAX),
                waiting,
                workers,
                totals: totals.get(&i).copied().unwrap_or_default(),
                window_start: self.admin.window.older.get(&i).copied().unwrap_or_default(),
                window_us,
                latency: latency.get(&i).copied().unwrap_or_default(),
            });
        }
        let db_info = |name: &str, db: &pgmux_config::Database| DatabaseInfo {
            name: name.to_string(),
            host: db.host.clone(),
            port: u32::from(db.port),
            dbname: if db.dbname.is_empty() { name.to_string() } else { db.dbname.clone() },
            force_user: db.user.clone(),
            pool_size: db.pool_size,
            pool_mode: mode_byte(db.pool_mode),
            server_lifetime_s: db.server_lifetime.map_or(0, |d| d.as_secs()),
            paused: self.admin.paused_dbs.contains(name),
            disabled: self.admin.disabled.contains(name),
            min_pool_size: db.min_pool_size,
            reserve_pool_size: db.reserve_pool_size,
            max_connections: self.config.max_db_connections(name),
            max_client_connections: self.config.max_db_client_connections(name),
        };
        let mut databases: Vec<DatabaseInfo> = self
            .config
            .databases
            .iter()
            .filter(|d| d.name != pgmux_config::pooler::WILDCARD)
            .map(|d| db_info(&d.name, d))
            .collect();
        // Databases served through the "*" entry appear once they have a pool, as PgBouncer registers them.
        for p in &self.pools {
            if !databases.iter().any(|d| d.name == p.database) {
                if let Some(db) = self.config.database(&p.database) {
                    databases.push(db_info(&p.database, db));
                }
            }
        }
        let mut users: Vec<String> = self.userlist.names().map(str::to_string).collect();
        for p in &self.pools {
            if !users.contains(&p.user) {
                users.push(p.user.clone());
            }
        }
        let user_limits = users
            .iter()
            .map(|name| {
                let entry = self.config.user(name);
                UserInfo {
                    pool_size: entry.and_then(|u| u.pool_size),
                    reserve_pool_size: entry.and_then(|u| u.reserve_pool_size),
                    pool_mode: entry.and_then(|u| u.pool_mode).map(mode_byte),
                    max_connections: self.config.max_user_connections(name),
                    max_client_connections: self.config.max_user_client_connections(name),
                }
            })
            .collect();
        let mut clients: Vec<ClientInfo> = self.admin.clients.values().cloned().collect();
        clients.sort_by_key(|c| c.id);
        Snapshot {
            now_us: wall_now_us(),
            pause_state: match self.admin.pause {
                None => 0,
                Some(PauseKind::Pause) => 1,
                Some(PauseKind::Suspend) => 2,
            },
            listen_port: u32::from(self.config.pooler.listen_port),
            databases,
            pools,
            clients,
            users,
            user_limits,
            settings: settings::settings(&self.config.pooler)
                .into_iter()
                .map(|s| (s.key.to_string(), s.value, s.default, s.changeable))
                .collect(),
            workers: u32::try_from(self.worker_slots().len()).unwrap_or(u32::MAX),
            process: ProcessInfo {
                listeners: u32::try_from(
                    self.children.iter().flatten().filter(|c| matches!(c.role, Role::Listener { .. })).count(),
                )
                .unwrap_or(u32::MAX),
                ..self.admin.events.clone()
            },
        }
    }

    // ----- commands -----

    fn admin_command(&mut self, listener: usize, id: u64, command: AdminCommand) {
        let result = match command {
            AdminCommand::Snapshot => {
                self.start_gather(Then::Reply { listener, id });
                return;
            }
            AdminCommand::Pause { db } => self.cmd_pause(listener, id, db),
            AdminCommand::Suspend => self.cmd_suspend(listener, id),
            AdminCommand::Resume { db } => self.cmd_resume(db),
            AdminCommand::Disable { db } => self.check_db(&db, "disable").map(|_| {
                info!("DISABLE '{db}' command issued");
                self.admin.disabled.insert(db);
                Some(AdminReply::Done)
            }),
            AdminCommand::Enable { db } => self.check_db(&db, "enable").map(|_| {
                info!("ENABLE '{db}' command issued");
                self.admin.disabled.remove(&db);
                Some(AdminReply::Done)
            }),
            AdminCommand::Kill { db } => self.cmd_kill(db),
            AdminCommand::KillClient { id: target } => self.cmd_kill_client(target),
            AdminCommand::Reconnect { db } => self.cmd_reconnect(db),
            AdminCommand::WaitClose { db } => self.cmd_wait_close(listener, id, db),
            AdminCommand::Reload => Ok(Some(self.cmd_reload())),
            AdminCommand::Shutdown { mode } => self.cmd_shutdown(listener, id, mode),
            AdminCommand::Set { key, value } => Ok(Some(self.cmd_set(&key, &value))),
        };
        match result {
            Ok(Some(reply)) => self.reply(listener, id, &reply),
            Ok(None) => {} // answered later
            Err(message) => self.reply(listener, id, &AdminReply::error(message)),
        }
    }

    fn pool_paused(&self, database: &str) -> bool {
        self.admin.pause.is_some() || self.admin.paused_dbs.contains(database)
    }

    /// `db` must be a database clients could reach, and not the console's own.
    fn check_db(&self, db: &str, verb: &str) -> Result<(), String> {
        if crate::admin::is_console_database(db) {
            return Err(format!("cannot {verb} admin db: {db}"));
        }
        if self.config.database(db).is_none() {
            return Err(format!("no such database: {db}"));
        }
        Ok(())
    }

    /// Worker slots of the pools of `db` (every pool if None).
    fn workers_of(&self, db: Option<&str>) -> Vec<usize> {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| match c.as_ref().map(|c| c.role) {
                Some(Role::Worker { pool, .. })
                    if db.is_none_or(|d| self.pools.get(pool).is_some_and(|p| p.database == d)) =>
                {
                    Some(slot)
                }
                _ => None,
            })
            .collect()
    }

    /// Tells every worker whether its pool is paused now; releases the sessions held for pools no longer paused.
    fn apply_pause(&mut self) {
        for slot in self.worker_slots() {
            let pool = match self.children.get(slot).and_then(|c| c.as_ref()).map(|c| c.role) {
                Some(Role::Worker { pool, .. }) => pool,
                _ => continue,
            };
            let paused = self.admin_holds(pool);
            let _ = self.send(slot, Msg::PauseSessions { paused }, Vec::new());
        }
        for pool in 0..self.pools.len() {
            if !self.admin_holds(pool) {
                self.drain_waiting(pool);
            }
        }
    }

    /// SIGUSR1, as PgBouncer: PAUSE everything (no console to answer; the log says when it is done).
    pub(super) fn signal_pause(&mut self) {
        if self.admin.pause.is_some() {
            info!("SIGUSR1: already paused");
            return;
        }
        info!("SIGUSR1: pausing all pools");
        self.admin.pause = Some(PauseKind::Pause);
        self.apply_pause();
    }

    /// SIGUSR2, as PgBouncer: RESUME after PAUSE or SUSPEND.
    pub(super) fn signal_resume(&mut self) {
        match self.cmd_resume(None) {
            Ok(_) => info!("SIGUSR2: resumed"),
            Err(e) => info!("SIGUSR2: {e}"),
        }
    }

    fn wait_for(&mut self, reply_to: (usize, u64), tag: WaitFor) {
        let since_seq = self.admin.next_seq;
        self.admin.waiters.push(Waiter { reply_to, tag, since_seq });
        self.start_gather(Then::Check);
    }

    fn cmd_pause(&mut self, listener: usize, id: u64, db: Option<String>) -> Result<Option<AdminReply>, String> {
        if self.admin.pause.is_some() {
            return Err("already suspended/paused".into());
        }
        match &db {
            None => {
                info!("PAUSE command issued");
                self.admin.pause = Some(PauseKind::Pause);
            }
            Some(d) => {
                info!("PAUSE '{d}' command issued");
                if crate::admin::is_console_database(d) {
                    return Err(format!("cannot pause admin db: {d}"));
                }
                self.check_db(d, "pause")?;
                self.admin.paused_dbs.insert(d.clone());
            }
        }
        self.apply_pause();
        self.wait_for((listener, id), WaitFor::Released { db });
        Ok(None)
    }

    fn cmd_suspend(&mut self, listener: usize, id: u64) -> Result<Option<AdminReply>, String> {
        if self.admin.pause.is_some() {
            return Err("already suspended/paused".into());
        }
        if !self.admin.paused_dbs.is_empty() {
            return Err("cannot suspend with paused databases".into());
        }
        info!("SUSPEND command issued");
        self.admin.pause = Some(PauseKind::Suspend);
        self.apply_pause();
        self.wait_for((listener, id), WaitFor::Released { db: None });
        Ok(None)
    }

    fn cmd_resume(&mut self, db: Option<String>) -> Result<Option<AdminReply>, String> {
        match db {
            None => {
                info!("RESUME command issued");
                if self.shutdown.is_some() {
                    return Err("pooler is shutting down".into());
                }
                if self.admin.pause.take().is_none() {
                    return Err("pooler is not paused/suspended".into());
                }
            }
            Some(d) => {
                info!("RESUME '{d}' command issued");
                if self.config.database(&d).is_none() {
                    return Err(format!("no such database: {d}"));
                }
                if !self.admin.paused_dbs.remove(&d) {
                    return Err(format!("database {d} is not paused"));
                }
            }
        }
        // A PAUSE still waiting for its servers is over: nothing is paused any more.
        let waiting: Vec<Waiter> = self.admin.waiters.drain(..).collect();
        for w in waiting {
            match &w.tag {
                WaitFor::Released { db } if !self.still_paused(db.as_deref()) => {
                    self.reply(w.reply_to.0, w.reply_to.1, &AdminReply::Done)
                }
                _ => self.admin.waiters.push(w),
            }
        }
        self.apply_pause();
        Ok(Some(AdminReply::Done))
    }

    fn still_paused(&self, db: Option<&str>) -> bool {
        match db {
            None => self.admin.pause.is_some(),
            Some(d) => self.pool_paused(d),
        }
    }

    fn cmd_kill(&mut self, db: Option<String>) -> Result<Option<AdminReply>, String> {
        if self.admin.pause.is_some() {
            return Err("already suspended/paused".into());
        }
        match &db {
            None => info!("KILL command issued"),
            Some(d) => {
                info!("KILL '{d}' command issued");
                if crate::admin::is_console_database(d) {
                    return Err(format!("cannot kill admin db: {d}"));
                }
                self.check_db(d, "kill")?;
            }
        }
        // As in PgBouncer, a killed database stays paused: new clients wait for RESUME.
        let dbs: Vec<String> = match &db {
            Some(d) => vec![d.clone()],
            None => self.pools.iter().map(|p| p.database.clone()).collect(),
        };
        self.admin.paused_dbs.extend(dbs);
        for slot in self.workers_of(db.as_deref()) {
            // Its exit is expected: nothing respawns in its place until a session needs a worker again.
            if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                c.retiring = true;
            }
            let _ = self.send(slot, Msg::KillSessions, Vec::new());
            for p in &mut self.pools {
                p.workers.retain(|&w| w != slot);
            }
        }
        for p in &mut self.pools {
            if db.as_deref().is_none_or(|d| d == p.database) {
                for held in p.waiting.drain(..) {
                    info!("s{}: refused: database removed (KILL)", held.record.session_id);
                    refuse(held.fd, "08P01", "database removed");
                }
            }
        }
        self.apply_pause();
        Ok(Some(AdminReply::Done))
    }

    fn cmd_kill_client(&mut self, target: u64) -> Result<Option<AdminReply>, String> {
        info!("KILL_CLIENT {target} command issued");
        if let Some(slot) = self.sessions.get(&target).map(|e| e.child) {
            let _ = self.send(slot, Msg::KillSession { session_id: target }, Vec::new());
            return Ok(Some(AdminReply::Done));
        }
        for p in &mut self.pools {
            if let Some(at) = p.waiting.iter().position(|h| h.record.session_id == target) {
                if let Some(held) = p.waiting.remove(at) {
                    refuse(held.fd, "08P01", "admin forced disconnect");
                }
                self.admin.clients.remove(&target);
                return Ok(Some(AdminReply::Done));
            }
        }
        Err("client not found".into())
    }

    fn cmd_reconnect(&mut self, db: Option<String>) -> Result<Option<AdminReply>, String> {
        match &db {
            None => info!("RECONNECT command issued"),
            Some(d) => {
                info!("RECONNECT '{d}' command issued");
                if crate::admin::is_console_database(d) {
                    return Err(format!("cannot reconnect admin db: {d}"));
                }
                self.check_db(d, "reconnect")?;
            }
        }
        for slot in self.workers_of(db.as_deref()) {
            let _ = self.send(slot, Msg::ReconnectUpstream, Vec::new());
        }
        Ok(Some(AdminReply::Done))
    }

    fn cmd_wait_close(&mut self, listener: usize, id: u64, db: Option<String>) -> Result<Option<AdminReply>, String> {
        match &db {
            None => info!("WAIT_CLOSE command issued"),
            Some(d) => {
                info!("WAIT_CLOSE '{d}' command issued");
                if crate::admin::is_console_database(d) {
                    return Err(format!("cannot wait in admin db: {d}"));
                }
                self.check_db(d, "wait_close")?;
            }
        }
        self.wait_for((listener, id), WaitFor::Closed { db });
        Ok(None)
    }

    /// SHUTDOWN's modes are the signals' (`Supervisor::begin_shutdown`): WAIT_FOR_CLIENTS is SIGTERM's (serve every
    /// session until its client leaves), WAIT_FOR_SERVERS SIGINT's (let every transaction in flight finish, then
    /// close the sessions); a plain SHUTDOWN is the latter without an answer, as PgBouncer's console connection ends
    /// with the pooler. Either way listeners stop accepting and console sessions end.
    fn cmd_shutdown(&mut self, listener: usize, id: u64, mode: ShutdownMode) -> Result<Option<AdminReply>, String> {
        let how = match mode {
            ShutdownMode::Immediate => {
                info!("SHUTDOWN command issued");
                Shutdown::WaitForServers
            }
            ShutdownMode::WaitForServers => {
                info!("SHUTDOWN WAIT_FOR_SERVERS command issued");
                Shutdown::WaitForServers
            }
            ShutdownMode::WaitForClients => {
                info!("SHUTDOWN WAIT_FOR_CLIENTS command issued");
                Shutdown::WaitForClients
            }
        };
        if mode != ShutdownMode::Immediate {
            // The answer goes out before the listener is told to stop, on the same channel.
            self.reply(listener, id, &AdminReply::Done);
        }
        self.begin_shutdown(how);
        Ok(None)
    }

    fn cmd_set(&mut self, key: &str, value: &str) -> AdminReply {
        match self.config.with_setting(key, value) {
            Ok(next) => {
                info!("SET {key} = {value:?}");
                self.config = Arc::new(next);
                self.broadcast_setting(key, value);
                AdminReply::Done
            }
            Err(e) => {
                let why = match e {
                    SetError::UnknownKey => format!("unknown parameter {key}"),
                    SetError::NotChangeable => format!("{key} cannot be changed while pgmux runs"),
                    SetError::Invalid(m) => m,
                };
                warn!("SET {key} = {value:?} failed: {why}");
                AdminReply::error(format!("SET failed: {why}"))
            }
        }
    }

    fn broadcast_setting(&mut self, key: &str, value: &str) {
        let msg = Msg::SetConfig { key: key.to_string(), value: value.to_string() };
        for c in self.children.iter_mut().flatten() {
            let _ = c.outbox.send(&c.channel, &msg, Vec::new());
        }
    }

    /// RELOAD is SIGHUP's reload (`Supervisor::reload`): new listeners get the new configuration, pools whose
    /// worker settings changed get new workers.
    fn cmd_reload(&mut self) -> AdminReply {
        info!("RELOAD command issued");
        match self.reload() {
            Ok(()) => AdminReply::Done,
            Err(e) => {
                warn!("RELOAD failed: {e}");
                AdminReply::Error {
                    code: "F0000".into(),
                    message: "RELOAD failed, see logs for additional details".into(),
                }
            }
        }
    }

    /// Answers the commands whose condition the latest reports now meet.
    fn check_waiters(&mut self) {
        if self.admin.waiters.is_empty() {
            return;
        }
        let waiters: Vec<Waiter> = std::mem::take(&mut self.admin.waiters);
        for w in waiters {
            if !self.waiter_done(&w) {
                self.admin.waiters.push(w);
                continue;
            }
            info!("{:?}: done", w.tag);
            self.reply(w.reply_to.0, w.reply_to.1, &AdminReply::Done);
        }
    }

    fn waiter_done(&self, w: &Waiter) -> bool {
        let db = match &w.tag {
            WaitFor::Released { db } | WaitFor::Closed { db } => db.as_deref(),
        };
        self.workers_of(db).iter().all(|slot| match self.admin.latest.get(slot) {
            Some(l) if l.seq >= w.since_seq => match w.tag {
                WaitFor::Released { .. } => l.report.paused && l.report.released,
                WaitFor::Closed { .. } => !l.report.close_needed,
            },
            _ => false,
        })
    }
}
