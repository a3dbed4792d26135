//! The supervisor: owns the listen sockets and every child, routes sessions to workers, and never parses a byte a
//! client sent.
//!
//! Its loop watches a signalfd (SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1/2), one SOCK_SEQPACKET channel per
//! child, and a 100 ms tick for respawns and shutdown deadlines. It never blocks on a child: messages that would
//! block wait in that child's outbox. What it knows about sessions comes from typed channel messages: listeners
//! report authenticated clients (socket + record) and decoded CancelRequests; workers report sessions that ended.
//!
//! Routing rule: a session goes to a worker of its own pool (database name as the client asked, user), never to
//! another's. While the pool has fewer workers than its size a new worker is started for it, otherwise the least
//! loaded worker takes it. In session mode a worker serves one session at a time and the others wait here.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pgmux_config::{Config, PoolMode, UserList};
use pgmux_ipc::{Channel, IpcError, Msg, Outbox, SessionRecord};

use crate::listener::{self, ListenerContext};
use crate::logging;
use crate::process;
use crate::sockets::ListenSocket;
use crate::worker::{self, WorkerContext};

const SIGNALS: Token = Token(0);
const FIRST_CHILD: usize = 2;
const TICK: Duration = Duration::from_millis(100);
/// Children that die sooner than this after starting count as a crash loop and are respawned with a growing delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
}

#[derive(Debug)]
struct Pool {
    database: String,
    user: String,
    size: usize,
    mode: PoolMode,
    /// Child slots of this pool's workers.
    workers: Vec<usize>,
    /// Sessions waiting for a worker (session mode, or while a crashed pool backs off).
    waiting: VecDeque<(SessionRecord, OwnedFd)>,
    respawn_at: Option<Instant>,
    backoff: Duration,
}

struct SessionEntry {
    child: usize,
    cancel: (u32, u32),
}

pub struct Supervisor {
    config: Arc<Config>,
    userlist: Arc<UserList>,
    listen: Vec<ListenSocket>,
    poll: Poll,
    signals: SignalFd,
    children: Vec<Option<Child>>,
    pools: Vec<Pool>,
    pool_index: HashMap<(String, String), usize>,
    sessions: HashMap<u64, SessionEntry>,
    cancel_keys: HashMap<(u32, u32), u64>,
    next_session: u64,
    next_worker: u32,
    /// Listener indexes waiting to be respawned, with the time they may be and their current backoff.
    listener_respawn: Vec<(u32, Instant, Duration)>,
    listener_backoff: HashMap<u32, Duration>,
    shutdown_deadline: Option<Instant>,
    me: Pid,
}

impl Supervisor {
    pub fn new(config: Config, userlist: UserList, listen: Vec<ListenSocket>) -> Result<Supervisor, String> {
        let mask = process::supervisor_signals();
        mask.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_fd().as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| format!("register signalfd: {e}"))?;
        Ok(Supervisor {
            config: Arc::new(config),
            userlist: Arc::new(userlist),
            listen,
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
            shutdown_deadline: None,
            me: nix::unistd::getpid(),
        })
    }

    pub fn run(&mut self) -> i32 {
        for s in &self.listen {
            info!("listening on {}", s.describe());
        }
        for index in 1..=self.config.pooler.listeners {
            if let Err(e) = self.spawn_listener(index) {
                error!("cannot start listener-{index}: {e}");
                return 1;
            }
        }
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
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

    fn add_child(&mut self, pid: Pid, role: Role, channel: Channel, name: String) -> Result<usize, String> {
        let slot = match self.children.iter().position(|c| c.is_none()) {
            Some(i) => i,
            None => {
                self.children.push(None);
                self.children.len() - 1
            }
        };
        self.poll
            .registry()
            .register(
                &mut SourceFd(&channel.as_raw_fd()),
                Token(slot + FIRST_CHILD),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register channel: {e}"))?;
        if let Some(s) = self.children.get_mut(slot) {
            *s = Some(Child { pid, role, channel, outbox: Outbox::new(), started: Instant::now(), sessions: 0, name });
        }
        Ok(slot)
    }

    fn spawn_listener(&mut self, index: u32) -> Result<(), String> {
        let (mine, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut keep: Vec<RawFd> = self.listen.iter().map(|l| l.fd().as_raw_fd()).collect();
        keep.push(theirs.as_raw_fd());
        keep.extend(logging::log_fd());
        let config = self.config.clone();
        let userlist = self.userlist.clone();
        let parent = self.me;
        let listen = &self.listen;
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
            listener::run(ListenerContext { index, config, userlist, listen: sockets, channel: theirs, parent })
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
        let index = self.next_worker;
        self.next_worker += 1;
        let (mine, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut keep = vec![theirs.as_raw_fd()];
        keep.extend(logging::log_fd());
        let config = self.config.clone();
        let userlist = self.userlist.clone();
        let parent = self.me;
        let name = format!("worker-{index} {database}/{user}");
        let role_name = name.clone();
        let (db2, user2) = (database.clone(), user.clone());
        let pid = process::fork_child("pgmux-worker", &keep, move || {
            logging::set_role(role_name);
            worker::run(WorkerContext { index, database: db2, user: user2, config, userlist, channel: theirs, parent })
        })
        .map_err(|e| e.to_string())?;
        info!("started {name} (pid {pid})");
        let slot = self.add_child(pid, Role::Worker { pool, index }, mine, name)?;
        if let Some(p) = self.pools.get_mut(pool) {
            p.workers.push(slot);
        }
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
            (Some(Role::Worker { .. }), Msg::SessionClosed { session_id }) => self.session_closed(slot, session_id),
            (Some(Role::Worker { pool, .. }), Msg::Migrate { record }) => match fds.pop() {
                Some(fd) => self.migrate(slot, pool, record, fd),
                None => warn!("migrate without a socket"),
            },
            (Some(Role::Worker { pool, .. }), Msg::Draining) => {
                // It takes no new sessions; the pool may start another worker in its place.
                if let Some(p) = self.pools.get_mut(pool) {
                    p.workers.retain(|&w| w != slot);
                }
                if let Some(c) = self.children.get(slot).and_then(|c| c.as_ref()) {
                    info!("{} is draining", c.name);
                }
            }
            (Some(Role::Worker { .. }), Msg::WorkerStatus { upstream_up, sessions }) => {
                debug!("worker in slot {slot}: upstream_up={upstream_up} sessions={sessions}");
            }
            (_, other) => warn!("unexpected {} from child slot {slot}", other.name()),
        }
    }

    // ----- sessions -----

    fn login(&mut self, mut record: SessionRecord, fd: OwnedFd) {
        if self.shutdown_deadline.is_some() {
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
        self.cancel_keys.insert((record.cancel_pid, record.cancel_key), record.session_id);
        self.place(pool, record, fd);
    }

    fn pool_for(&mut self, database: &str, user: &str) -> Option<usize> {
        let key = (database.to_string(), user.to_string());
        if let Some(&i) = self.pool_index.get(&key) {
            return Some(i);
        }
        let db = self.config.database(database)?;
        self.pools.push(Pool {
            database: database.to_string(),
            user: user.to_string(),
            size: db.pool_size.max(1) as usize,
            mode: db.pool_mode,
            workers: Vec::new(),
            waiting: VecDeque::new(),
            respawn_at: None,
            backoff: Duration::from_millis(100),
        });
        let i = self.pools.len() - 1;
        self.pool_index.insert(key, i);
        Some(i)
    }

    /// Give a session to a worker of its pool, starting one if the pool may grow, or let it wait.
    fn place(&mut self, pool: usize, record: SessionRecord, fd: OwnedFd) {
        let Some(p) = self.pools.get(pool) else { return };
        let may_spawn = p.workers.len() < p.size && p.respawn_at.is_none_or(|t| Instant::now() >= t);
        let session_mode = p.mode == PoolMode::Session;
        let mut target = None;
        let mut best = u32::MAX;
        for &slot in &p.workers {
            if let Some(c) = self.children.get(slot).and_then(|c| c.as_ref()) {
                if c.sessions < best && !(session_mode && c.sessions > 0) {
                    best = c.sessions;
                    target = Some(slot);
                }
            }
        }
        // Prefer an idle worker; start a new one rather than doubling up.
        if best > 0 && may_spawn {
            match self.spawn_worker(pool) {
                Ok(slot) => target = Some(slot),
                Err(e) => error!("cannot start a worker for {}/{}: {e}", record.database, record.user),
            }
        }
        match target {
            Some(slot) => self.assign(slot, record, fd),
            None => {
                debug!("s{}: waiting for a worker of {}/{}", record.session_id, record.database, record.user);
                if let Some(p) = self.pools.get_mut(pool) {
                    p.waiting.push_back((record, fd));
                }
            }
        }
    }

    fn assign(&mut self, slot: usize, record: SessionRecord, fd: OwnedFd) {
        let id = record.session_id;
        let cancel = (record.cancel_pid, record.cancel_key);
        let msg = Msg::Assign { record };
        // Straight onto the channel when nothing is queued, keeping the socket meanwhile: a worker that died but is
        // not reaped yet refuses it (peer closed), and the session then goes to another worker instead of being
        // dropped with a worker it never reached.
        let direct = match self.children.get(slot).and_then(|c| c.as_ref()) {
            Some(c) if c.outbox.is_empty() => Some(c.channel.send(&msg, &[fd.as_fd()])),
            _ => None,
        };
        let sent = match direct {
            // Our copy of the socket closes here, as the outbox's would once sent.
            Some(Ok(())) => Ok(()),
            Some(Err(IpcError::Closed)) => {
                if let Msg::Assign { record } = msg {
                    self.assign_elsewhere(slot, record, fd);
                }
                return;
            }
            Some(Err(IpcError::WouldBlock)) | None => self.send(slot, msg, vec![fd]),
            Some(Err(e)) => Err(e),
        };
        match sent {
            Ok(()) => {
                if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
                    c.sessions += 1;
                    debug!("s{id} -> {}", c.name);
                }
                self.sessions.insert(id, SessionEntry { child: slot, cancel });
            }
            Err(e) => {
                warn!("s{id}: could not hand to worker: {e}");
                self.cancel_keys.remove(&cancel);
            }
        }
    }

    /// `slot`'s worker is gone (its channel is closed; SIGCHLD has not been handled yet): it takes no more sessions,
    /// and this one is placed on another worker of its pool.
    fn assign_elsewhere(&mut self, slot: usize, record: SessionRecord, fd: OwnedFd) {
        let Some(Role::Worker { pool, .. }) = self.children.get(slot).and_then(|c| c.as_ref()).map(|c| c.role) else {
            return;
        };
        warn!("s{}: its worker is gone before taking it; placing it on another", record.session_id);
        if let Some(p) = self.pools.get_mut(pool) {
            p.workers.retain(|&w| w != slot);
        }
        self.place(pool, record, fd);
    }

    /// A worker hands back a session that waits behind its busy upstream: give it to another worker of the same
    /// pool (starting one if the pool may grow), or back to the same worker if there is no other.
    fn migrate(&mut self, from: usize, pool: usize, record: SessionRecord, fd: OwnedFd) {
        let id = record.session_id;
        if let Some(c) = self.children.get_mut(from).and_then(|c| c.as_mut()) {
            c.sessions = c.sessions.saturating_sub(1);
        }
        let Some(p) = self.pools.get(pool) else { return };
        let may_spawn = p.workers.len() < p.size && p.respawn_at.is_none_or(|t| Instant::now() >= t);
        let mut target = None;
        let mut best = u32::MAX;
        for &w in &p.workers {
            if w == from {
                continue;
            }
            if let Some(c) = self.children.get(w).and_then(|c| c.as_ref()) {
                if c.sessions < best {
                    best = c.sessions;
                    target = Some(w);
                }
            }
        }
        if (target.is_none() || best > 0) && may_spawn {
            match self.spawn_worker(pool) {
                Ok(w) => target = Some(w),
                Err(e) => error!("cannot start a worker: {e}"),
            }
        }
        let target = target.unwrap_or(from);
        debug!("s{id}: moving to worker slot {target}");
        self.assign(target, record, fd);
    }

    fn session_closed(&mut self, slot: usize, id: u64) {
        if let Some(e) = self.sessions.remove(&id) {
            self.cancel_keys.remove(&e.cancel);
        }
        let mut pool = None;
        if let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) {
            c.sessions = c.sessions.saturating_sub(1);
            if let Role::Worker { pool: p, .. } = c.role {
                pool = Some(p);
            }
        }
        if let Some(p) = pool {
            self.drain_waiting(p);
        }
    }

    /// Place waiting sessions while the pool can take them.
    fn drain_waiting(&mut self, pool: usize) {
        loop {
            let Some(p) = self.pools.get_mut(pool) else { return };
            let Some((record, fd)) = p.waiting.pop_front() else { return };
            let before = p.waiting.len();
            self.place(pool, record, fd);
            let after = self.pools.get(pool).map(|p| p.waiting.len()).unwrap_or(0);
            if after > before {
                return; // it went back to waiting: nothing free
            }
        }
    }

    fn route_cancel(&mut self, pid: u32, key: u32) {
        let Some(&id) = self.cancel_keys.get(&(pid, key)) else {
            debug!("cancel request with an unknown key");
            return;
        };
        let Some(slot) = self.sessions.get(&id).map(|e| e.child) else { return };
        if let Err(e) = self.send(slot, Msg::Cancel { session_id: id }, Vec::new()) {
            warn!("s{id}: could not forward cancel: {e}");
        }
    }

    // ----- signals and children's deaths -----

    fn read_signals(&mut self) -> Option<i32> {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    match Signal::try_from(signo) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => self.begin_shutdown(signo),
                        Ok(Signal::SIGQUIT) => {
                            info!("SIGQUIT: exiting now");
                            self.kill_all(Signal::SIGKILL);
                            return Some(0);
                        }
                        Ok(Signal::SIGHUP) => warn!("SIGHUP: configuration reload is not implemented yet"),
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
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { return };
                    self.child_died(pid, status);
                }
            }
        }
    }

    fn child_died(&mut self, pid: Pid, status: WaitStatus) {
        let Some(slot) = self.children.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == pid)) else {
            return;
        };
        let Some(child) = self.children.get_mut(slot).and_then(|c| c.take()) else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&child.channel.as_raw_fd()));
        let how = match status {
            WaitStatus::Exited(_, code) => format!("exit code {code}"),
            WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
            other => format!("{other:?}"),
        };
        let crashed = !matches!(status, WaitStatus::Exited(_, 0));
        if self.shutdown_deadline.is_some() {
            info!("{} (pid {pid}) exited: {how}", child.name);
            return;
        }
        if crashed {
            warn!("{} (pid {pid}) died: {how}", child.name);
        } else {
            info!("{} (pid {pid}) exited", child.name);
        }
        let quick = child.started.elapsed() < HEALTHY_AFTER;
        match child.role {
            Role::Listener { index } => {
                let backoff = self.listener_backoff.entry(index).or_insert(Duration::from_millis(100));
                let delay = if quick { *backoff } else { Duration::ZERO };
                *backoff = if quick { (*backoff * 2).min(MAX_BACKOFF) } else { Duration::from_millis(100) };
                self.listener_respawn.push((index, Instant::now() + delay, *backoff));
            }
            Role::Worker { pool, .. } => {
                // Its sessions went with it.
                let lost: Vec<u64> = self.sessions.iter().filter(|(_, e)| e.child == slot).map(|(id, _)| *id).collect();
                for id in &lost {
                    if let Some(e) = self.sessions.remove(id) {
                        self.cancel_keys.remove(&e.cancel);
                    }
                }
                if !lost.is_empty() {
                    warn!("{} lost {} session(s)", child.name, lost.len());
                }
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
                self.drain_waiting(pool);
            }
        }
    }

    fn tick(&mut self) -> Option<i32> {
        if let Some(deadline) = self.shutdown_deadline {
            if self.children.iter().all(|c| c.is_none()) {
                info!("all children have exited");
                return Some(0);
            }
            if Instant::now() >= deadline {
                warn!("children did not exit in time, killing them");
                self.kill_all(Signal::SIGKILL);
                return Some(0);
            }
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
        for slot in 0..self.children.len() {
            let pending = self.children.get(slot).and_then(|c| c.as_ref()).is_some_and(|c| !c.outbox.is_empty());
            if pending {
                self.flush_child(slot);
            }
        }
        None
    }

    fn begin_shutdown(&mut self, signo: i32) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        info!("signal {signo}: shutting down");
        self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        for slot in 0..self.children.len() {
            let _ = self.send(slot, Msg::Shutdown, Vec::new());
        }
        for p in &mut self.pools {
            for (record, fd) in p.waiting.drain(..) {
                debug!("s{}: refused, shutting down", record.session_id);
                refuse(fd, "57P01", "pgmux is shutting down");
            }
        }
    }

    fn kill_all(&mut self, sig: Signal) {
        for c in self.children.iter().flatten() {
            let _ = signal::kill(c.pid, sig);
        }
    }
}

/// Tell a client it cannot be served, without reading anything from it. The message is pgmux's own.
fn refuse(fd: OwnedFd, code: &str, message: &str) {
    let mut out = Vec::new();
    pgmux_proto::backend::error_response(&mut out, "FATAL", code, message);
    if let Ok(conn) = crate::net::Conn::new(fd) {
        let _ = conn.write_all_timeout(&out, Duration::from_millis(50));
    }
}
