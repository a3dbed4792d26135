//! The supervisor: owns the listen sockets and every child, routes sessions to workers, and never parses a byte a
//! client sent.
//!
//! Its loop watches a signalfd (SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1/2), one SOCK_SEQPACKET channel per
//! child, and a 100 ms tick for respawns and shutdown deadlines. It never blocks on a child: messages that would
//! block wait in that child's outbox. What it knows about sessions comes from typed channel messages: listeners
//! report authenticated clients (socket + record) and decoded CancelRequests; workers report sessions that ended.
//!
//! Routing rule: a session goes to a worker of its own pool (database name as the client asked, user — the
//! database's forced user if it has one), never to another's. While the pool has fewer workers than its size (and
//! the limits shared with other pools allow, see `supervisor/limits.rs`) a new worker is started for it, otherwise
//! the least loaded worker takes it. In session mode a worker serves one session at a time and the others wait
//! here. A dedicated pool starts a worker for every session.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pgmux_config::{Config, PoolMode, PoolSettings, UserList};
use pgmux_ipc::{Channel, IpcError, Msg, Outbox, SessionRecord};

use crate::board::{self, Board};
use crate::listener::{self, ListenerContext};
use crate::logging;
use crate::process;
use crate::sockets::ListenSocket;
use crate::worker::{self, WorkerContext};

mod admin;
mod limits;

const SIGNALS: Token = Token(0);
const FIRST_CHILD: usize = 2;
const TICK: Duration = Duration::from_millis(100);
/// Children that die sooner than this after starting count as a crash loop and are respawned with a growing delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a shutdown waits, as PgBouncer's signals: SIGTERM waits for clients to leave, SIGINT for servers to be
/// released (every transaction in flight finishes, then the sessions are closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    WaitForClients,
    WaitForServers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Listener { index: u32 },
    Worker { pool: usize, index: u32 },
}

struct Child {
    pid: Pid,
    role: Role,
    channel: Channel,
    outbox: Outbox,
    started: Instant,
    sessions: u32,
    name: String,
    /// Told to go (reload replaced it, or it drains): its exit is expected and nothing respawns in its place.
    retiring: bool,
}

#[derive(Debug)]
struct Pool {
    database: String,
    /// The user it serves: the database's forced user if it has one, else the client's (as PgBouncer keys pools).
    /// A dedicated pool's is always the client's.
    user: String,
    /// Every session gets a worker of its own, outside every limit (`dedicated_databases` / `dedicated_users`).
    dedicated: bool,
    /// Its settings in the running configuration (`Config::pool_settings`); `size` and `mode` are copies.
    settings: PoolSettings,
    size: usize,
    mode: PoolMode,
    /// Child slots of this pool's workers, draining ones excepted.
    workers: Vec<usize>,
    /// Sessions waiting for a worker (session mode, a limit reached, PAUSE, or while a crashed pool backs off).
    waiting: VecDeque<Held>,
    respawn_at: Option<Instant>,
    backoff: Duration,
    /// A SCRAM ClientKey from a login as the user its workers log in as: lets a worker started without a session
    /// (min_pool_size) log in upstream when the auth file holds a SCRAM secret.
    client_key: Vec<u8>,
    /// Reserve pool and eviction bookkeeping (`supervisor/limits.rs`).
    limits: limits::PoolState,
}

/// A session the supervisor holds until a worker can take it, and since when it waits.
#[derive(Debug)]
struct Held {
    record: SessionRecord,
    fd: OwnedFd,
    since: Instant,
}

struct SessionEntry {
    child: usize,
    cancel: (u32, u32),
    pool: usize,
    /// The session's state as its worker last reported it between transactions, without unread input except
    /// bytes no worker has consumed yet.
    record: SessionRecord,
    /// A copy of the client socket: if the worker dies, an idle session is given to another worker with it.
    fd: Option<OwnedFd>,
}

pub struct Supervisor {
    config: Arc<Config>,
    userlist: Arc<UserList>,
    listen: Vec<ListenSocket>,
    /// The Prometheus endpoint's socket, bound here and served by the listeners (`crate::metrics`).
    metrics: Option<ListenSocket>,
    poll: Poll,
    signals: SignalFd,
    children: Vec<Option<Child>>,
    pools: Vec<Pool>,
    /// (database, user, dedicated) → index in `pools`.
    pool_index: HashMap<(String, String, bool), usize>,
    sessions: HashMap<u64, SessionEntry>,
    cancel_keys: HashMap<(u32, u32), u64>,
    next_session: u64,
    next_worker: u32,
    /// Listener indexes waiting to be respawned, with the time they may be and their current backoff.
    listener_respawn: Vec<(u32, Instant, Duration)>,
    listener_backoff: HashMap<u32, Duration>,
    shutdown: Option<Shutdown>,
    me: Pid,
    /// The admin console's state: worker reports, pause/disable flags, commands waiting (`supervisor/admin.rs`).
    admin: admin::AdminState,
    /// What each worker's upstream is doing, published by the workers themselves (see `board.rs`).
    board: Rc<Board>,
}

impl Supervisor {
    pub fn new(
        config: Config,
        userlist: UserList,
        listen: Vec<ListenSocket>,
        metrics: Option<ListenSocket>,
    ) -> Result<Supervisor, String> {
        let mask = process::supervisor_signals();
        mask.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_fd().as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| format!("register signalfd: {e}"))?;
        let board = Rc::new(Board::new().map_err(|e| format!("status board: {e}"))?);
        Ok(Supervisor {
            admin: admin::AdminState::new(config.pooler.stats_period),
            config: Arc::new(config),
            userlist: Arc::new(userlist),
            listen,
            metrics,
            poll,
            signals,
            children: Vec::new(),
            pools: Vec::new(),
            pool_index: HashMap::new(),
            sessions: HashMap::new(),
            cancel_keys: HashMap::new(),
            next_session: 1,
            next_worker: 1,
            listener_respawn: Vec::new(),
            listener_backoff: HashMap::new(),
            shutdown: None,
            me: nix::unistd::getpid(),
            board,
        })
    }

    pub fn run(&mut self) -> i32 {
        for s in &self.listen {
            info!("listening on {}", s.describe());
        }
        if let Some(m) = &self.metrics {
            info!("metrics on http://{}/metrics", m.describe());
        }
        for index in 1..=self.config.pooler.listeners {
            if let Err(e) = self.spawn_listener(index) {
                error!("cannot start listener-{index}: {e}");
                return 1;
            }
        }
        self.create_forced_pools();
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        crate::sd_notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    error!("poll failed: {e}");
                    return 1;
                }
            }
            let mut ready: Vec<(usize, bool, bool)> = Vec::new();
            let mut got_signal = false;
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => got_signal = true,
                    Token(t) => {
                        ready.push((t - FIRST_CHILD, ev.is_readable() || ev.is_read_closed(), ev.is_writable()))
                    }
                }
            }
            for (slot, readable, writable) in ready {
                if writable {
                    self.flush_child(slot);
                }
                if readable {
                    self.read_child(slot);
                }
            }
            if got_signal {
                if let Some(code) = self.read_signals() {
                    return code;
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                if let Some(code) = self.tick() {
                    return code;
                }
            }
        }
    }

    // ----- children -----

    /// The child slot the next `add_child` will use.
    fn next_slot(&self) -> usize {
        self.children.iter().position(|c| c.is_none()).unwrap_or(self.children.len())
    }

    fn add_child(&mut self, pid: Pid, role: Role, channel: Channel, name: String) -> Result<usize, String> {
        let slot = self.next_slot();
        if slot == self.children.len() {
            self.children.push(None);
        }
        self.poll
            .registry()
            .register(
                &mut SourceFd(&channel.as_raw_fd()),
                Token(slot + FIRST_CHILD),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register channel: {e}"))?;
        if let Some(s) = self.children.get_mut(slot) {
            *s = Some(Child {
                pid,
                role,
                channel,
                outbox: Outbox::new(),
                started: Instant::now(),
                sessions: 0,
                name,
                retiring: false,
            });
        }
        Ok(slot)
    }

    fn spawn_listener(&mut self, index: u32) -> Result<(), String> {
        let (mine, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut keep: Vec<RawFd> = self.listen.iter().map(|l| l.fd().as_raw_fd()).collect();
        keep.extend(self.metrics.as_ref().map(|m| m.fd().as_raw_fd()));
        keep.push(theirs.as_raw_fd());
        keep.extend(logging::log_fd());
        let config = self.config.clone();
        let userlist = self.userlist.clone();
        let parent = self.me;
        let listen = &self.listen;
        let metrics_socket = &self.metrics;
        let pid = process::fork_child("pgmux-listener", &keep, || {
            logging::set_role(format!("listener-{index}"));
            let mut sockets = Vec::new();
            for l in listen {
                let Ok(fd) = l.fd().try_clone_to_owned() else { return 1 };
                sockets.push(match l {
                    ListenSocket::Tcp { addr, .. } => ListenSocket::Tcp { fd, addr: *addr },
                    ListenSocket::Unix { path, .. } => ListenSocket::Unix { fd, path: path.clone() },
                });
            }
            let metrics = match metrics_socket.as_ref().map(|m| m.fd().try_clone_to_owned()).transpose() {
                Ok(m) => m,
                Err(_) => return 1,
            };
            listener::run(ListenerContext {
                index,
                config,
                userlist,
                listen: sockets,
                channel: theirs,
                parent,
                metrics,
            })
        })
        .map_err(|e| e.to_string())?;
        let name = format!("listener-{index}");
        info!("started {name} (pid {pid})");
        self.add_child(pid, Role::Listener { index }, mine, name)?;
        Ok(())
    }

    fn spawn_worker(&mut self, pool: usize) -> Result<usize, String> {
        let Some(p) = self.pools.get(pool) else { return Err("no such pool".into()) };
        let (database, user) = (p.database.clone(), p.user.clone());
        let (dedicated, client_key) = (p.dedicated, p.client_key.clone());
        let index = self.next_worker;
        self.next_worker += 1;
        let (mine, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut keep = vec![theirs.as_raw_fd()];
        keep.extend(logging::log_fd());
        let config = self.config.clone();
        let userlist = self.userlist.clone();
        let parent = self.me;
        let name = format!("worker-{index} {database}/{user}{}", if dedicated { " (dedicated)" } else { "" });
        let role_name = name.clone();
        let (db2, user2) = (database.clone(), user.clone());
        let board_slot = self.next_slot();
        let board = self.board.clone();
        let pid = process::fork_child("pgmux-worker", &keep, move || {
            logging::set_role(role_name);
            worker::run(WorkerContext {
                index,
                database: db2,
                user: user2,
                config,
                userlist,
                channel: theirs,
                parent,
                board,
                board_slot,
                pool,
                dedicated,
                client_key,
            })
        })
        .map_err(|e| e.to_string())?;
        info!("started {name} (pid {pid})");
        let slot = self.add_child(pid, Role::Worker { pool, index }, mine, name)?;
        self.board.claim(slot, pool, pid.as_raw() as u32);
        if let Some(p) = self.pools.get_mut(pool) {
            p.workers.push(slot);
        }
        self.admin_worker_started(slot, pool);
        self.publish_room();
        Ok(slot)
    }

    fn send(&mut self, slot: usize, msg: Msg, fds: Vec<OwnedFd>) -> Result<(), IpcError> {
        let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) else {
            return Err(IpcError::Closed);
        };
        c.outbox.send(&c.channel, &msg, fds)
    }

    fn flush_child(&mut self, slot: usize) {
        if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
            if let Err(e) = c.outbox.flush(&c.channel) {
                debug!("{}: channel: {e}", c.name);
            }
        }
    }

    fn read_child(&mut self, slot: usize) {
        for _ in 0..1024 {
            let Some(c) = self.children.get(slot).and_then(|c| c.as_ref()) else { return };
            match c.channel.recv() {
                Ok(Some((msg, fds))) => self.on_message(slot, msg, fds),
                Ok(None) => return,
                Err(IpcError::Closed) => return, // SIGCHLD does the bookkeeping
                Err(e) => {
                    // A child sent something malformed: it is broken, not the supervisor.
                    error!("{}: bad message, stopping it: {e}", c.name);
                    let _ = signal::kill(c.pid, Signal::SIGKILL);
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, slot: usize, msg: Msg, mut fds: Vec<OwnedFd>) {
        let role = self.children.get(slot).and_then(|c| c.as_ref()).map(|c| c.role);
        match (role, msg) {
            (Some(Role::Listener { .. }), Msg::Login { record }) => match fds.pop() {
                Some(fd) => self.login(record, fd),
                None => warn!("login without a socket"),
            },
            (Some(Role::Listener { .. }), Msg::CancelRequest { pid, key }) => self.route_cancel(pid, key),
            // A worker sent back a cancel for a session it no longer has (see `forward_cancel`).
            (Some(Role::Worker { .. }), Msg::Cancel { session_id }) => self.forward_cancel(session_id, Some(slot)),
            (Some(Role::Worker { .. }), Msg::SessionClosed { session_id }) => self.session_closed(slot, session_id),
            (Some(Role::Worker { .. }), Msg::SessionState { record }) => {
                if let Some(e) = self.sessions.get_mut(&record.session_id) {
                    if e.child == slot {
                        e.record = record;
                    }
                }
            }
            (Some(Role::Worker { pool, .. }), Msg::Migrate { record }) => match fds.pop() {
                Some(fd) => self.migrate(slot, pool, record, fd),
                None => warn!("migrate without a socket"),
            },
            (Some(Role::Worker { pool, .. }), Msg::Draining) => {
                // It takes no new sessions; the pool may start another worker in its place.
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&w| w != slot);
                }
                if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                    c.retiring = true;
                    info!("{} is draining", c.name);
                }
            }
            (Some(Role::Worker { .. }), Msg::WorkerStatus { upstream_up, sessions }) => {
                debug!("worker in slot {slot}: upstream_up={upstream_up} sessions={sessions}");
            }
            (_, m @ (Msg::AdminRequest { .. } | Msg::WorkerStats { .. })) => self.on_admin_message(slot, m),
            (_, other) => warn!("unexpected {} from child slot {slot}", other.name()),
        }
    }

    // ----- sessions -----

    fn login(&mut self, mut record: SessionRecord, fd: OwnedFd) {
        if self.shutdown.is_some() {
            refuse(fd, "57P01", "pgmux is shutting down");
            return;
        }
        let total = self.sessions.len() + self.pools.iter().map(|p| p.waiting.len()).sum::<usize>();
        if total >= self.config.pooler.max_client_conn as usize {
            warn!("refusing client: no more connections allowed (max_client_conn)");
            refuse(fd, "53300", "no more connections allowed (max_client_conn)");
            return;
        }
        record.session_id = self.next_session;
        self.next_session += 1;
        let mut key = [0u8; 4];
        let _ = pgmux_proto::auth::random_bytes(&mut key);
        // The pid half encodes the session id (unique for the supervisor's life); the key half is random.
        record.cancel_pid = (record.session_id & 0x7fff_ffff) as u32;
        record.cancel_key = u32::from_be_bytes(key);
        let pool = match self.pool_for(&record.database, &record.user) {
            Some(p) => p,
            None => {
                refuse(fd, "3D000", &format!("no such database: {}", record.database));
                return;
            }
        };
        if let Some((code, message)) = self.admin_refusal(&record.database) {
            refuse(fd, code, &message);
            return;
        }
        if let Some(message) = self.client_limit_refusal(pool, &record) {
            warn!("refusing client {}/{}: {message}", record.database, record.user);
            refuse(fd, "53300", message);
            return;
        }
        self.remember_client_key(pool, &record);
        self.admin_login(&record, &fd);
        self.cancel_keys.insert((record.cancel_pid, record.cancel_key), record.session_id);
        self.place(pool, record, fd, Instant::now());
    }

    /// The pool of a client of `database` logged in as `client_user`: keyed by the database's forced user if it
    /// has one (clients of it share the pool, as in PgBouncer), else by the client's user; a dedicated session has
    /// a pool of its client's own.
    fn pool_for(&mut self, database: &str, client_user: &str) -> Option<usize> {
        let dedicated = self.config.is_dedicated(database, client_user);
        let user = if dedicated { client_user } else { self.config.pool_user(database, client_user) }.to_string();
        self.pool_named(database, &user, dedicated)
    }

    /// The pool (database, user, dedicated), created if need be; None if no database entry serves `database`.
    fn pool_named(&mut self, database: &str, user: &str, dedicated: bool) -> Option<usize> {
        // The running configuration decides, so a database removed by a reload takes no new sessions.
        let settings = self.config.pool_settings(database, user, dedicated)?;
        let key = (database.to_string(), user.to_string(), dedicated);
        if let Some(&i) = self.pool_index.get(&key) {
            return Some(i);
        }
        self.pools.push(Pool {
            database: database.to_string(),
            user: user.to_string(),
            dedicated,
            settings,
            size: settings.pool_size.max(1) as usize,
            mode: settings.pool_mode,
            workers: Vec::new(),
            waiting: VecDeque::new(),
            respawn_at: None,
            backoff: Duration::from_millis(100),
            client_key: Vec::new(),
            limits: limits::PoolState::default(),
        });
        let i = self.pools.len() - 1;
        self.pool_index.insert(key, i);
        Some(i)
    }

    /// Give a session to a worker of its pool, starting one if the pool may grow, or let it wait (`since`: when it
    /// began waiting, for the reserve pool and query_wait_timeout).
    fn place(&mut self, pool: usize, mut record: SessionRecord, fd: OwnedFd, since: Instant) {
        if self.admin_holds(pool) {
            // PAUSE: new sessions wait here until RESUME.
            self.hold(pool, record, fd, since);
            return;
        }
        let Some(p) = self.pools.get(pool) else { return };
        let session_mode = p.mode == PoolMode::Session;
        let mut target = None;
        let mut best = u32::MAX;
        // A dedicated session never shares: it always gets a worker of its own.
        for &slot in p.workers.iter().filter(|_| !p.dedicated) {
            if let Some(c) = self.children.get(slot).and_then(|c| c.as_ref()) {
                if c.sessions < best && !(session_mode && c.sessions > 0) {
                    best = c.sessions;
                    target = Some(slot);
                }
            }
        }
        // Prefer an idle worker; start a new one rather than doubling up.
        if best > 0 {
            match self.may_start(pool, since.elapsed()) {
                limits::Start::Yes(how) => match self.spawn_worker(pool) {
                    Ok(slot) => {
                        self.note_start(pool, how, since.elapsed());
                        target = Some(slot);
                    }
                    Err(e) => error!("cannot start a worker for {}/{}: {e}", record.database, record.user),
                },
                // Nothing to share: ask the pools over the limit to give a worker back.
                limits::Start::Limited(limit) if target.is_none() => self.make_room(pool, limit),
                _ => {}
            }
        }
        match target {
            Some(slot) => {
                if record.flags & worker::FLAG_MIGRATED != 0 {
                    // It waited here (or at its last worker) already: the next worker counts that too.
                    record.waiting_since_ns = worker::ns_at_instant(since);
                }
                self.assign(slot, record, fd)
            }
            None => {
                debug!("s{}: waiting for a worker of {}/{}", record.session_id, record.database, record.user);
                self.hold(pool, record, fd, since);
            }
        }
    }

    /// Keep a session here until a worker of its pool can take it (`drain_waiting`).
    fn hold(&mut self, pool: usize, record: SessionRecord, fd: OwnedFd, since: Instant) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.waiting.push_back(Held { record, fd, since });
        }
    }

    fn assign(&mut self, slot: usize, record: SessionRecord, fd: OwnedFd) {
        let id = record.session_id;
        let cancel = (record.cancel_pid, record.cancel_key);
        let pool = match self.children.get(slot).and_then(|c| c.as_ref()).map(|c| c.role) {
            Some(Role::Worker { pool, .. }) => pool,
            _ => return,
        };
        // Keep a copy of the socket and of the record: if this worker dies while the session is idle, the session
        // goes on elsewhere. Without a copy (out of descriptors) it simply is not recoverable.
        let copy = match fd.try_clone() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!("s{id}: cannot keep a copy of the client socket ({e}); it will not survive a worker crash");
                None
            }
        };
        let kept = record.clone();
        match self.send(slot, Msg::Assign { record }, vec![fd]) {
            Ok(()) => {
                if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                    c.sessions += 1;
                    debug!("s{id} -> {}", c.name);
                }
                self.sessions.insert(id, SessionEntry { child: slot, cancel, pool, record: kept, fd: copy });
            }
            Err(e) => {
                // The worker is gone (or going): it takes nothing more, and the session tries another one.
                warn!("s{id}: could not hand to worker: {e}");
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&w| w != slot);
                }
                // A moved session still has its entry naming the worker it left: drop it, so it neither counts
                // against max_client_conn nor gets re-homed twice if that worker dies.
                self.sessions.remove(&id);
                match copy {
                    Some(fd) => self.place(pool, kept, fd, Instant::now()),
                    None => {
                        self.cancel_keys.remove(&cancel);
                    }
                }
            }
        }
    }

    /// A worker hands back a session that waits behind its busy upstream (or that it drains): give it to another
    /// worker of the same pool (starting one if the pool may grow), back to the same worker if there is no other,
    /// or hold it here if that worker is draining and no other can take it.
    fn migrate(&mut self, from: usize, pool: usize, record: SessionRecord, fd: OwnedFd) {
        let id = record.session_id;
        self.admin.events.sessions_migrated += 1;
        if let Some(c) = self.children.get_mut(from).and_then(|c| c.as_mut()) {
            c.sessions = c.sessions.saturating_sub(1);
        }
        let since = match record.waiting_since_ns {
            0 => Instant::now(),
            ns => worker::instant_at_ns(ns),
        };
        let Some(p) = self.pools.get(pool) else { return };
        let from_usable = p.workers.contains(&from);
        if p.dedicated || p.mode == PoolMode::Session || self.admin_holds(pool) {
            // Session pooling needs a worker of the session's own (`place`'s rule); a paused pool holds it here.
            self.sessions.remove(&id);
            self.place(pool, record, fd, since);
            return;
        }
        let start = self.may_start(pool, since.elapsed());
        let Some(p) = self.pools.get(pool) else { return };
        // An idle worker (as the board says) serves the session at once; otherwise the one with fewest sessions.
        let mut target = None;
        let mut best = (false, u32::MAX);
        for &w in &p.workers {
            if w == from {
                continue;
            }
            if let Some(c) = self.children.get(w).and_then(|c| c.as_ref()) {
                let idle = self.board.status(w).is_some_and(|st| st.state == board::State::Idle);
                let key = (!idle, c.sessions);
                if key < (!best.0, best.1) {
                    best = (idle, c.sessions);
                    target = Some(w);
                }
            }
        }
        let best = if best.0 { 0 } else { best.1 };
        if target.is_none() || best > 0 {
            match start {
                limits::Start::Yes(how) => match self.spawn_worker(pool) {
                    Ok(w) => {
                        self.note_start(pool, how, since.elapsed());
                        target = Some(w);
                    }
                    Err(e) => error!("cannot start a worker: {e}"),
                },
                limits::Start::Limited(limit) if target.is_none() && !from_usable => self.make_room(pool, limit),
                _ => {}
            }
        }
        let target = match target {
            Some(t) => t,
            None if from_usable => from,
            None => {
                // Its worker is draining and nothing else may take it yet: it waits here, its wait still counting.
                debug!("s{id}: waiting here for a worker of its pool");
                self.sessions.remove(&id);
                self.hold(pool, record, fd, since);
                return;
            }
        };
        debug!("s{id}: moving to worker slot {target}");
        self.assign(target, record, fd);
    }

    fn session_closed(&mut self, slot: usize, id: u64) {
        if let Some(e) = self.sessions.remove(&id) {
            self.cancel_keys.remove(&e.cancel);
        }
        let mut pool = None;
        let mut now_idle = false;
        if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
            c.sessions = c.sessions.saturating_sub(1);
            now_idle = c.sessions == 0;
            if let Role::Worker { pool: p, .. } = c.role {
                pool = Some(p);
            }
        }
        if let Some(p) = pool {
            if now_idle && self.pools.get(p).is_some_and(|p| p.dedicated) {
                self.retire_worker(slot, "its dedicated session ended");
            }
            self.drain_waiting(p);
        }
        if now_idle && self.shutdown == Some(Shutdown::WaitForClients) {
            self.stop_idle_workers();
        }
    }

    /// Place waiting sessions while the pool can take them.
    fn drain_waiting(&mut self, pool: usize) {
        if self.admin_holds(pool) {
            return;
        }
        loop {
            let Some(p) = self.pools.get_mut(pool) else { return };
            let Some(held) = p.waiting.pop_front() else { return };
            let before = p.waiting.len();
            self.place(pool, held.record, held.fd, held.since);
            let Some(p) = self.pools.get_mut(pool) else { return };
            if p.waiting.len() > before {
                // It went back to waiting: nothing free. It keeps its place at the head of the queue.
                if let Some(h) = p.waiting.pop_back() {
                    p.waiting.push_front(h);
                }
                return;
            }
        }
    }

    fn route_cancel(&mut self, pid: u32, key: u32) {
        let Some(&id) = self.cancel_keys.get(&(pid, key)) else {
            debug!("cancel request with an unknown key");
            return;
        };
        self.forward_cancel(id, None);
    }

    /// Send a cancel to the worker serving session `id`. A session held here (waiting for a worker) has its request
    /// still unsent: the cancel is held in its record and fired once the request runs. `not_to`: the worker that sent
    /// the cancel back because the session moved away after it was routed there; its Migrate came first on the same
    /// channel, so the table already names where the session went, and if it still names that worker, the session
    /// is gone and the cancel is dropped.
    fn forward_cancel(&mut self, id: u64, not_to: Option<usize>) {
        if let Some(slot) = self.sessions.get(&id).map(|e| e.child) {
            if Some(slot) == not_to {
                debug!("s{id}: cancel dropped, the session is not on its worker any more");
                return;
            }
            if let Err(e) = self.send(slot, Msg::Cancel { session_id: id }, Vec::new()) {
                warn!("s{id}: could not forward cancel: {e}");
            }
            return;
        }
        let held = self.pools.iter_mut().flat_map(|p| p.waiting.iter_mut()).find(|h| h.record.session_id == id);
        match held {
            // Only a session that moved has been greeted (and so knows its cancel key) and carries a request.
            Some(h) if h.record.flags & worker::FLAG_MIGRATED != 0 => {
                h.record.flags |= worker::FLAG_CANCEL_HELD;
                debug!("s{id}: cancel held with the session while it waits for a worker");
            }
            _ => debug!("s{id}: cancel for a session no worker serves, dropped"),
        }
    }

    // ----- reload -----

    /// SIGHUP (and the console's RELOAD): read the configuration and auth file again. A file that does not load
    /// leaves everything as it was. Otherwise new listeners replace the old ones (which finish the logins they
    /// hold), and each pool follows its new definition: a pool whose upstream (host, port, dbname, user, password),
    /// pool mode or worker settings changed drains all its workers, so sessions move to fresh ones at their next
    /// transaction boundary; a pool that shrank drains its surplus workers, least busy first; a pool that grew
    /// starts workers as sessions need them. A database that is gone takes no new sessions and keeps the ones it has.
    fn reload(&mut self) -> Result<(), String> {
        let path = self.config.path.clone();
        let (config, userlist) = load_files(&path, self.config.format)?;
        let old = self.config.clone();
        if config.pooler.listen_addr != old.pooler.listen_addr
            || config.pooler.listen_port != old.pooler.listen_port
            || config.pooler.unix_socket_dir != old.pooler.unix_socket_dir
            || config.pooler.metrics_listen != old.pooler.metrics_listen
        {
            warn!("reload: listen_addr, listen_port, unix_socket_dir and metrics_listen only change with a restart");
        }
        self.config = Arc::new(config);
        self.userlist = Arc::new(userlist);
        let workers_changed = worker_view(&old.pooler) != worker_view(&self.config.pooler);
        // Listeners: start the new generation first, then retire the old one.
        let old_listeners: Vec<usize> = (0..self.children.len())
            .filter(|&slot| {
                self.children
                    .get(slot)
                    .and_then(|c| c.as_ref())
                    .is_some_and(|c| matches!(c.role, Role::Listener { .. }) && !c.retiring)
            })
            .collect();
        self.listener_respawn.clear();
        for index in 1..=self.config.pooler.listeners {
            if let Err(e) = self.spawn_listener(index) {
                error!("reload: cannot start listener-{index}: {e}");
                self.listener_respawn.push((index, Instant::now() + Duration::from_secs(1), MAX_BACKOFF));
            }
        }
        for slot in old_listeners {
            if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                c.retiring = true;
            }
            let _ = self.send(slot, Msg::Shutdown, Vec::new());
        }
        // Pools.
        let mut summary = Vec::new();
        for pool in 0..self.pools.len() {
            let Some(p) = self.pools.get(pool) else { continue };
            let (database, user) = (p.database.clone(), p.user.clone());
            let before = old.database(&database).cloned();
            let Some(db) = self.config.database(&database).cloned() else {
                summary.push(format!("{database}/{user}: removed, no new sessions"));
                continue;
            };
            let Some(settings) = self.config.pool_settings(&database, &user, p.dedicated) else { continue };
            let redefined = workers_changed
                || settings.pool_mode != p.settings.pool_mode
                || before.as_ref().is_none_or(|b| {
                    (&b.host, b.port, old.upstream_dbname(b, &database), &b.user, &b.password)
                        != (&db.host, db.port, self.config.upstream_dbname(&db, &database), &db.user, &db.password)
                        || entry_view(&old, b, &user) != entry_view(&self.config, &db, &user)
                });
            let size = settings.pool_size.max(1) as usize;
            let mut retire: Vec<usize> = Vec::new();
            if let Some(p) = self.pools.get_mut(pool) {
                p.settings = settings;
                p.mode = settings.pool_mode;
                p.size = size;
                if redefined {
                    retire = std::mem::take(&mut p.workers);
                } else if p.workers.len() > size {
                    let mut by_load: Vec<(u32, usize)> = p
                        .workers
                        .iter()
                        .map(|&w| (self.children.get(w).and_then(|c| c.as_ref()).map_or(0, |c| c.sessions), w))
                        .collect();
                    by_load.sort();
                    retire = by_load.iter().take(p.workers.len() - size).map(|&(_, w)| w).collect();
                    p.workers.retain(|w| !retire.contains(w));
                }
            }
            if redefined {
                summary.push(format!("{database}/{user}: redefined, draining {} worker(s)", retire.len()));
            } else if !retire.is_empty() {
                summary.push(format!("{database}/{user}: pool_size {size}, draining {} worker(s)", retire.len()));
            }
            for slot in retire {
                if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                    c.retiring = true;
                    info!("reload: draining {}", c.name);
                }
                let _ = self.send(slot, Msg::Drain, Vec::new());
            }
            self.drain_waiting(pool);
        }
        self.create_forced_pools();
        if summary.is_empty() {
            info!("configuration reloaded; no pool changed");
        } else {
            info!("configuration reloaded: {}", summary.join("; "));
        }
        Ok(())
    }

    // ----- signals and children's deaths -----

    fn read_signals(&mut self) -> Option<i32> {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    match Signal::try_from(signo) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) if self.shutdown.is_some() => {
                            info!("SIGTERM during shutdown: exiting now");
                            self.kill_all(Signal::SIGKILL);
                            return Some(0);
                        }
                        Ok(Signal::SIGTERM) => self.begin_shutdown(Shutdown::WaitForClients),
                        Ok(Signal::SIGINT) => self.begin_shutdown(Shutdown::WaitForServers),
                        Ok(Signal::SIGQUIT) => {
                            info!("SIGQUIT: exiting now");
                            self.kill_all(Signal::SIGKILL);
                            return Some(0);
                        }
                        Ok(Signal::SIGHUP) => {
                            info!("SIGHUP: reloading the configuration");
                            crate::sd_notify::notify("RELOADING=1");
                            if let Err(e) = self.reload() {
                                error!("reload failed, keeping the running configuration: {e}");
                            }
                            crate::sd_notify::notify("READY=1");
                        }
                        Ok(Signal::SIGUSR1) => self.signal_pause(),
                        Ok(Signal::SIGUSR2) => self.signal_resume(),
                        Ok(s) => info!("ignoring {s}"),
                        Err(_) => {}
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    error!("signalfd read: {e}");
                    return None;
                }
            }
        }
    }

    fn reap(&mut self) {
        // Collect every death first and take the dead workers out of their pools, so sessions re-homed from one
        // of them are not handed to another that died in the same instant.
        let mut dead = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { break };
                    dead.push((pid, status));
                }
            }
        }
        for (pid, _) in &dead {
            let role = self.children.iter().flatten().find(|c| c.pid == *pid).map(|c| c.role);
            let slot = self.children.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == *pid));
            if let (Some(Role::Worker { pool, .. }), Some(slot)) = (role, slot) {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&w| w != slot);
                }
            }
        }
        for (pid, status) in dead {
            self.child_died(pid, status);
        }
    }

    fn child_died(&mut self, pid: Pid, status: WaitStatus) {
        let Some(slot) = self.children.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == pid)) else {
            return;
        };
        // What it sent before dying still counts (a draining worker hands its last sessions over and exits at once).
        for _ in 0..16 {
            self.read_child(slot);
        }
        let exposed = self.board.exposed(slot);
        let Some(child) = self.children.get_mut(slot).and_then(|c| c.take()) else { return };
        if matches!(child.role, Role::Worker { .. }) {
            self.board.release(slot);
        }
        let _ = self.poll.registry().deregister(&mut SourceFd(&child.channel.as_raw_fd()));
        self.admin_child_gone(slot, child.role);
        let how = match status {
            WaitStatus::Exited(_, code) => format!("exit code {code}"),
            WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
            other => format!("{other:?}"),
        };
        let crashed = !matches!(status, WaitStatus::Exited(_, 0));
        if crashed {
            match child.role {
                Role::Worker { .. } => self.admin.events.worker_crashes += 1,
                Role::Listener { .. } => self.admin.events.listener_crashes += 1,
            }
        }
        if self.shutdown.is_some() || (child.retiring && !crashed) {
            info!("{} (pid {pid}) exited: {how}", child.name);
            if let Role::Worker { pool, .. } = child.role {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&s| s != slot);
                }
                let keep_serving = self.shutdown != Some(Shutdown::WaitForServers);
                self.rehome_sessions_of(slot, &child.name, keep_serving.then_some(exposed));
                self.limits_worker_gone(slot);
                self.drain_waiting(pool);
            }
            return;
        }
        if crashed {
            warn!("{} (pid {pid}) died: {how}", child.name);
        } else {
            info!("{} (pid {pid}) exited", child.name);
        }
        let quick = child.started.elapsed() < HEALTHY_AFTER;
        match child.role {
            Role::Listener { .. } if child.retiring => {}
            Role::Listener { index } => {
                let backoff = self.listener_backoff.entry(index).or_insert(Duration::from_millis(100));
                let delay = if quick { *backoff } else { Duration::ZERO };
                *backoff = if quick { (*backoff * 2).min(MAX_BACKOFF) } else { Duration::from_millis(100) };
                self.listener_respawn.push((index, Instant::now() + delay, *backoff));
            }
            Role::Worker { pool, .. } => {
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&s| s != slot);
                    if quick && crashed {
                        p.respawn_at = Some(Instant::now() + p.backoff);
                        p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    } else {
                        p.respawn_at = None;
                        p.backoff = Duration::from_millis(100);
                    }
                }
                self.rehome_sessions_of(slot, &child.name, Some(exposed));
                self.limits_worker_gone(slot);
                self.drain_waiting(pool);
            }
        }
    }

    /// A worker died. Each of its sessions that was not exposed (see `board.rs`: nothing of it read or written
    /// mid-request, its last state reported) goes on at another worker of its pool with the supervisor's copies of
    /// its socket and record; its next request is still in the kernel. The exposed ones (the transaction in flight)
    /// are closed: their clients see the connection end, never a silent success. `exposed` is `None` to close all
    /// (the board could not tell, or pgmux is shutting down), `Some(None)` when the board overflowed.
    fn rehome_sessions_of(&mut self, slot: usize, name: &str, exposed: Option<Option<Vec<u64>>>) {
        let ids: Vec<u64> = self.sessions.iter().filter(|(_, e)| e.child == slot).map(|(id, _)| *id).collect();
        debug!("{name}: exposed sessions per the board: {exposed:?}");
        let (mut moved, mut lost) = (0usize, 0usize);
        for id in ids {
            let Some(e) = self.sessions.remove(&id) else { continue };
            let recoverable = match &exposed {
                Some(Some(list)) => !list.contains(&id),
                _ => false,
            };
            match e.fd {
                Some(fd) if recoverable && self.pools.get(e.pool).is_some() => {
                    let mut record = e.record;
                    record.moved_at_ns = 0;
                    record.waiting_since_ns = 0;
                    moved += 1;
                    self.place(e.pool, record, fd, Instant::now());
                }
                fd => {
                    lost += 1;
                    info!("s{id}: closing because: its worker died while serving it ({name})");
                    self.cancel_keys.remove(&e.cancel);
                    if let Some(fd) = fd {
                        // Its client may have seen half a reply: end the connection rather than add to it.
                        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                    }
                }
            }
        }
        self.admin.events.sessions_recovered += moved as u64;
        self.admin.events.sessions_lost += lost as u64;
        if moved + lost > 0 {
            warn!(
                "{name}: {moved} idle session(s) moved to other workers, {lost} session(s) with a request in flight closed"
            );
        }
    }

    fn tick(&mut self) -> Option<i32> {
        if let Some(mode) = self.shutdown {
            self.admin_shutdown_tick();
            let waiting = self.pools.iter().any(|p| !p.waiting.is_empty());
            if self.children.iter().all(|c| c.is_none()) && !waiting {
                info!("all children have exited");
                return Some(0);
            }
            if mode == Shutdown::WaitForClients {
                for pool in 0..self.pools.len() {
                    self.drain_waiting(pool);
                }
            }
            self.flush_all();
            return None;
        }
        let now = Instant::now();
        let due: Vec<u32> = self.listener_respawn.iter().filter(|(_, at, _)| *at <= now).map(|(i, _, _)| *i).collect();
        self.listener_respawn.retain(|(_, at, _)| *at > now);
        for index in due {
            if let Err(e) = self.spawn_listener(index) {
                error!("cannot respawn listener-{index}: {e}");
                self.listener_respawn.push((index, now + Duration::from_secs(1), MAX_BACKOFF));
            }
        }
        for pool in 0..self.pools.len() {
            let waiting = self.pools.get(pool).map(|p| !p.waiting.is_empty()).unwrap_or(false);
            if waiting {
                self.drain_waiting(pool);
            }
        }
        self.limits_tick();
        self.admin_tick();
        self.flush_all();
        None
    }

    fn flush_all(&mut self) {
        for slot in 0..self.children.len() {
            let pending = self.children.get(slot).and_then(|c| c.as_ref()).is_some_and(|c| !c.outbox.is_empty());
            if pending {
                self.flush_child(slot);
            }
        }
    }

    /// SIGTERM (PgBouncer's "super safe" shutdown): stop accepting, keep serving every session until its client
    /// leaves, stop each worker once it has none. SIGINT ("safe"): stop accepting; workers let every transaction
    /// in flight finish, then close their sessions and exit. A SIGINT during a SIGTERM shutdown escalates to it.
    fn begin_shutdown(&mut self, mode: Shutdown) {
        if self.shutdown == Some(Shutdown::WaitForServers) || self.shutdown == Some(mode) {
            return;
        }
        match mode {
            Shutdown::WaitForClients => info!("SIGTERM: shutting down once every client has left"),
            Shutdown::WaitForServers => info!("SIGINT: shutting down once every transaction in flight has finished"),
        }
        let first = self.shutdown.is_none();
        self.shutdown = Some(mode);
        crate::sd_notify::notify("STOPPING=1");
        if first {
            // Stop listening: new connections go to a sibling pooler (so_reuseport) or are refused by the kernel.
            self.shut_listen_sockets();
            self.listen.clear();
            self.metrics = None;
            for slot in 0..self.children.len() {
                let is_listener = self
                    .children
                    .get(slot)
                    .and_then(|c| c.as_ref())
                    .is_some_and(|c| matches!(c.role, Role::Listener { .. }));
                if is_listener {
                    let _ = self.send(slot, Msg::Shutdown, Vec::new());
                }
            }
            self.listener_respawn.clear();
        }
        match mode {
            Shutdown::WaitForClients => self.stop_idle_workers(),
            Shutdown::WaitForServers => {
                for slot in 0..self.children.len() {
                    let is_worker = self
                        .children
                        .get(slot)
                        .and_then(|c| c.as_ref())
                        .is_some_and(|c| matches!(c.role, Role::Worker { .. }));
                    if is_worker {
                        let _ = self.send(slot, Msg::Shutdown, Vec::new());
                    }
                }
                for p in &mut self.pools {
                    for held in p.waiting.drain(..) {
                        debug!("s{}: refused, shutting down", held.record.session_id);
                        refuse(held.fd, "57P01", "pgmux is shutting down");
                    }
                }
            }
        }
    }

    /// During a SIGTERM shutdown, a worker with no session left is told to exit.
    fn stop_idle_workers(&mut self) {
        for slot in 0..self.children.len() {
            let idle = self
                .children
                .get(slot)
                .and_then(|c| c.as_ref())
                .is_some_and(|c| matches!(c.role, Role::Worker { .. }) && c.sessions == 0 && !c.retiring);
            if idle {
                if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                    c.retiring = true;
                }
                if let Role::Worker { pool, .. } = self
                    .children
                    .get(slot)
                    .and_then(|c| c.as_ref())
                    .map(|c| c.role)
                    .unwrap_or(Role::Listener { index: 0 })
                {
                    if let Some(p) = self.pools.get_mut(pool) {
                        p.workers.retain(|&w| w != slot);
                    }
                }
                let _ = self.send(slot, Msg::Shutdown, Vec::new());
            }
        }
    }

    fn kill_all(&mut self, sig: Signal) {
        for c in self.children.iter().flatten() {
            let _ = signal::kill(c.pid, sig);
        }
    }
}

/// Reads the configuration file (in `format`) and the auth file it names: what start-up and reload both load. Settings accepted without effect are logged here, which
/// on a reload reaches the log; at start-up logging is not up yet (it needs the config's logfile), so `main` logs
/// them itself once it is.
pub fn load_files(path: &std::path::Path, format: pgmux_config::Format) -> Result<(Config, UserList), String> {
    let config = Config::load_as(path, format).map_err(|e| e.to_string())?;
    for w in &config.warnings {
        warn!("{w}");
    }
    let userlist = match &config.pooler.auth_file {
        Some(p) => UserList::load(p).map_err(|e| e.to_string())?,
        None => UserList::default(),
    };
    Ok((config, userlist))
}

/// The part of `[pooler]` that workers read: when it changes on reload, the workers are replaced. Keys only the
/// supervisor or the listeners read are blanked out, so changing them does not drain anything.
fn worker_view(p: &pgmux_config::Pooler) -> pgmux_config::Pooler {
    let mut v = p.clone();
    v.listen_addr.clear();
    v.listen_port = 0;
    v.unix_socket_dir = None;
    v.listeners = 0;
    v.auth_type = pgmux_config::AuthType::Trust;
    v.auth_file = None;
    v.max_client_conn = 0;
    v.client_login_timeout = Duration::ZERO;
    v.default_pool_size = 0;
    v.pool_mode = pgmux_config::PoolMode::Session;
    // Pool sizes and limits: the supervisor applies them; a worker reads the two connection limits only as a
    // hint for moving sessions.
    v.min_pool_size = 0;
    v.reserve_pool_size = 0;
    v.reserve_pool_timeout = None;
    v.max_db_connections = 0;
    v.max_db_client_connections = 0;
    v.max_user_connections = 0;
    v.max_user_client_connections = 0;
    v.dedicated_databases.clear();
    v.dedicated_users.clear();
    v.logfile = None;
    v.pidfile = None;
    v.admin_users.clear();
    v.stats_users.clear();
    v.stats_period = Duration::ZERO;
    v.metrics_listen = None;
    // Read only by main, at start-up.
    v.user = None;
    v.verbose = 0;
    v.so_reuseport = false;
    v.listen_backlog = 0;
    v
}

/// What a worker reads, at its start, from its database's and its user's entries besides the upstream's address
/// and login: when it changes on reload, the pool's workers are replaced.
#[allow(clippy::type_complexity)]
fn entry_view<'a>(
    config: &'a Config,
    db: &'a pgmux_config::Database,
    user: &str,
) -> ([Option<Duration>; 2], [&'a Option<String>; 5], Option<[Option<Duration>; 5]>) {
    let u = config.user(user).map(|u| {
        [
            u.query_timeout,
            u.query_wait_timeout,
            u.idle_transaction_timeout,
            u.transaction_timeout,
            u.client_idle_timeout,
        ]
    });
    (
        [db.server_lifetime, db.query_wait_timeout],
        [&db.client_encoding, &db.datestyle, &db.timezone, &db.application_name, &db.connect_query],
        u,
    )
}

/// Tell a client it cannot be served, without reading anything from it. The message is pgmux's own.
fn refuse(fd: OwnedFd, code: &str, message: &str) {
    let mut out = Vec::new();
    pgmux_proto::backend::error_response(&mut out, "FATAL", code, message);
    if let Ok(conn) = crate::net::Conn::new(fd) {
        let _ = conn.write_all_timeout(&out, Duration::from_millis(50));
    }
}
