//! Pool limits, as PgBouncer applies them, in the supervisor's placement: which pool may start a worker (one worker
//! is one server connection), which logins are refused, and the workers the supervisor starts or retires by itself.
//!
//! - **Server connections.** A pool starts workers up to its `pool_size`, and beyond it up to `reserve_pool_size`
//!   more once a session has waited `reserve_pool_timeout`; never while its database has `max_db_connections`
//!   workers alive over all its pools, or its user `max_user_connections` over all databases (draining workers
//!   count until they exit: they still hold their connection). A pool held back shares its workers (transaction and
//!   statement pooling) or its sessions wait here (session pooling, or a pool with no worker yet), subject to
//!   `query_wait_timeout`. A pool that cannot start a worker because other pools of the same database or user hold
//!   them asks one of those to give a worker back (PgBouncer evicts an idle server): a worker without sessions
//!   closes at once, a busy one only if its pool keeps more workers than the one asking, and it drains (its sessions
//!   move to its siblings at their next transaction boundary).
//! - **Client connections.** A login beyond `max_db_client_connections` (clients of that database) or
//!   `max_user_client_connections` (clients logged in as that user) is refused with PgBouncer's message.
//! - **min_pool_size.** A pool with clients (or of a database with a forced user, created at start-up) is kept at
//!   `min_pool_size` workers, one more per tick, within the limits; those workers connect at once.
//! - **Reserve.** The workers' status board says since when the first session of each queue waits; once that is
//!   `reserve_pool_timeout` ago, the pool starts a reserve worker (one per tick). A pool above its `pool_size`
//!   gives one worker back each time nobody of it has waited for `reserve_pool_timeout` (at least a second).
//! - **Dedicated pools** (`dedicated_databases`, `dedicated_users`) start a worker for each session, outside every
//!   limit and not counted by any; the worker exits when its session ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use pgmux_config::PoolMode;
use pgmux_ipc::{Msg, SessionRecord};

use super::{board, refuse, worker, Pool, Role, Supervisor};

/// How long an eviction may take before the pool that asked for it may ask again (a busy victim drains at its
/// sessions' transaction boundaries; a long transaction keeps it).
const EVICTION_PATIENCE: Duration = Duration::from_secs(5);
/// A pool above its size gives a reserve worker back after nobody waited this long at least.
const RESERVE_RELEASE_MIN: Duration = Duration::from_secs(1);

/// Per-pool bookkeeping of this module.
#[derive(Debug, Default)]
pub(super) struct PoolState {
    /// Since when nobody of the pool has waited (sampled each tick), while the pool is above its size.
    calm_since: Option<Instant>,
    /// A worker another pool gave back for this one, and when it was asked to.
    evicting: Option<(usize, Instant)>,
}

/// Why a pool may start a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    Regular,
    Reserve,
    Dedicated,
}

/// Which shared limit holds a pool back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    Database,
    User,
}

impl Limit {
    fn key(self) -> &'static str {
        match self {
            Limit::Database => "max_db_connections",
            Limit::User => "max_user_connections",
        }
    }
}

/// Whether a pool may start a worker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Yes(How),
    /// The pool has room, but its database or user has no server connection left.
    Limited(Limit),
    /// At its size (and reserve), or backing off after crashes.
    No,
}

impl Supervisor {
    /// Whether `pool` may start one more worker for a session that has waited `waited`.
    pub(super) fn may_start(&self, pool: usize, waited: Duration) -> Start {
        let Some(p) = self.pools.get(pool) else { return Start::No };
        if p.respawn_at.is_some_and(|t| Instant::now() < t) {
            return Start::No;
        }
        if p.dedicated {
            return Start::Yes(How::Dedicated);
        }
        let n = p.workers.len();
        let size = p.size;
        let how = if n < size {
            How::Regular
        } else if n < size + p.settings.reserve_pool_size as usize
            && p.settings.reserve_pool_timeout.is_some_and(|t| waited >= t)
        {
            How::Reserve
        } else {
            return Start::No;
        };
        match self.limit_reached(p) {
            Some(limit) => Start::Limited(limit),
            None => Start::Yes(how),
        }
    }

    /// The shared limit `p` is at, if any.
    fn limit_reached(&self, p: &Pool) -> Option<Limit> {
        let max_db = self.config.max_db_connections(&p.database) as usize;
        if max_db > 0 && self.servers_where(|q| q.database == p.database) >= max_db {
            return Some(Limit::Database);
        }
        let max_user = self.config.max_user_connections(&p.user) as usize;
        if max_user > 0 && self.servers_where(|q| q.user == p.user) >= max_user {
            return Some(Limit::User);
        }
        None
    }

    /// Workers alive (each holds at most one server connection, draining ones until they exit) of the pools that
    /// `f` selects; dedicated pools count for nothing.
    fn servers_where(&self, f: impl Fn(&Pool) -> bool) -> usize {
        self.children
            .iter()
            .flatten()
            .filter(|c| match c.role {
                Role::Worker { pool, .. } => self.pools.get(pool).is_some_and(|q| !q.dedicated && f(q)),
                Role::Listener { .. } => false,
            })
            .count()
    }

    /// A worker was just started for `pool` because of `how`: PgBouncer logs the reserve being used.
    pub(super) fn note_start(&mut self, pool: usize, how: How, waited: Duration) {
        if let (How::Reserve, Some(p)) = (how, self.pools.get(pool)) {
            warn!(
                "{}/{}: taking connection from reserve_pool (a client waited {:.1}s)",
                p.database,
                p.user,
                waited.as_secs_f64()
            );
        }
    }

    /// A session of `pool` cannot get a worker because `limit` is reached by other pools: ask the best placed of
    /// them to give one back. One request at a time per pool; the worker counts until it has exited, and its exit
    /// lets waiting sessions through (`limits_worker_gone`).
    pub(super) fn make_room(&mut self, pool: usize, limit: Limit) {
        let now = Instant::now();
        let Some(p) = self.pools.get(pool) else { return };
        if let Some((slot, at)) = p.limits.evicting {
            let alive = self.children.get(slot).is_some_and(|c| c.is_some());
            if alive && now.duration_since(at) < EVICTION_PATIENCE {
                return;
            }
        }
        let mine = p.workers.len();
        let in_scope = |q: &Pool| {
            !q.dedicated
                && match limit {
                    Limit::Database => q.database == p.database,
                    Limit::User => q.user == p.user,
                }
        };
        // Best: a worker nobody uses; then an idle one of the pool with most workers; then the least loaded.
        type Preference = (bool, bool, std::cmp::Reverse<usize>, u32);
        let mut victim: Option<(Preference, usize)> = None;
        for (i, q) in self.pools.iter().enumerate() {
            if i == pool || !in_scope(q) {
                continue;
            }
            for &w in &q.workers {
                let Some(c) = self.children.get(w).and_then(|c| c.as_ref()) else { continue };
                let unused = c.sessions == 0;
                // A session-pooled worker with a session belongs to it; a busy worker is taken only from a pool
                // that keeps more than the asking pool will have.
                if !unused && (q.mode == PoolMode::Session || q.workers.len() <= mine + 1) {
                    continue;
                }
                let idle = self.board.status(w).is_some_and(|st| st.state == board::State::Idle);
                let key = (!unused, !idle, std::cmp::Reverse(q.workers.len()), c.sessions);
                if victim.as_ref().is_none_or(|(k, _)| key < *k) {
                    victim = Some((key, w));
                }
            }
        }
        let Some((_, slot)) = victim else { return };
        let why = format!("evicted ({} reached, {}/{} needs a server connection)", limit.key(), p.database, p.user);
        if let Some(p) = self.pools.get_mut(pool) {
            p.limits.evicting = Some((slot, now));
        }
        self.retire_worker(slot, &why);
    }

    /// Take a worker out of its pool and let it go: at once if it has no session, else once it has moved its
    /// sessions to its siblings (at their transaction boundaries) or they have left.
    pub(super) fn retire_worker(&mut self, slot: usize, why: &str) {
        let Some(c) = self.children.get_mut(slot).and_then(|c| c.as_mut()) else { return };
        if c.retiring {
            return;
        }
        c.retiring = true;
        let (role, sessions) = (c.role, c.sessions);
        info!("{}: closing its server connection because: {why}", c.name);
        if let Role::Worker { pool, .. } = role {
            if let Some(p) = self.pools.get_mut(pool) {
                p.workers.retain(|&w| w != slot);
            }
        }
        let msg = if sessions == 0 { Msg::Shutdown } else { Msg::Drain };
        let _ = self.send(slot, msg, Vec::new());
    }

    /// A worker has exited: its server connection goes first to the pool that asked for it (so that a sibling of
    /// the pool it came from does not take it back at once), then to any pool of its database or user.
    pub(super) fn limits_worker_gone(&mut self, slot: usize) {
        let asked: Vec<usize> = (0..self.pools.len())
            .filter(|&i| self.pools.get(i).is_some_and(|p| p.limits.evicting.is_some_and(|(s, _)| s == slot)))
            .collect();
        for pool in asked {
            if let Some(p) = self.pools.get_mut(pool) {
                p.limits.evicting = None;
            }
            if self.shutdown.is_none() && !self.admin_holds(pool) {
                if let Start::Yes(how) = self.may_start(pool, Duration::ZERO) {
                    self.start_for(pool, how, Duration::ZERO);
                }
            }
        }
        self.publish_room();
        for pool in 0..self.pools.len() {
            if self.pools.get(pool).is_some_and(|p| !p.waiting.is_empty()) {
                self.drain_waiting(pool);
            }
        }
    }

    /// Whether a login of `record` (for `pool`) exceeds a client limit, with PgBouncer's message. Dedicated
    /// sessions are neither limited nor counted.
    pub(super) fn client_limit_refusal(&self, pool: usize, record: &SessionRecord) -> Option<&'static str> {
        if self.pools.get(pool).is_none_or(|p| p.dedicated) {
            return None;
        }
        let max_db = self.config.max_db_client_connections(&record.database) as usize;
        let max_user = self.config.max_user_client_connections(&record.user) as usize;
        if max_db == 0 && max_user == 0 {
            return None;
        }
        // A scan, not counters kept in step with every way a session can end; only when a limit is set.
        let regular = |pool: usize| self.pools.get(pool).is_some_and(|p| !p.dedicated);
        let (mut db_clients, mut user_clients) = (0usize, 0usize);
        let held = self.pools.iter().enumerate().flat_map(|(i, p)| p.waiting.iter().map(move |h| (&h.record, i)));
        for (r, pool) in self.sessions.values().map(|e| (&e.record, e.pool)).chain(held) {
            if !regular(pool) {
                continue;
            }
            db_clients += usize::from(r.database == record.database);
            user_clients += usize::from(r.user == record.user);
        }
        if max_db > 0 && db_clients >= max_db {
            return Some("client connections exceeded (max_db_client_connections)");
        }
        if max_user > 0 && user_clients >= max_user {
            return Some("client connections exceeded (max_user_client_connections)");
        }
        None
    }

    /// Keeps a SCRAM ClientKey of the user `pool`'s workers log in as, for workers started without a session.
    pub(super) fn remember_client_key(&mut self, pool: usize, record: &SessionRecord) {
        if record.scram_client_key.len() != 32 {
            return;
        }
        let forced = self.config.database(&record.database).and_then(|d| d.user.clone());
        if let Some(p) = self.pools.get_mut(pool) {
            // A forced user logs in with its own secret; the client's key is for the client's user.
            if forced.as_deref().unwrap_or(&p.user) == record.user {
                p.client_key.clone_from(&record.scram_client_key);
            }
        }
    }

    /// As PgBouncer: the pool of each database with a forced user and a `min_pool_size` exists from the start, so
    /// it is filled before any client comes.
    pub(super) fn create_forced_pools(&mut self) {
        let forced: Vec<(String, String)> = self
            .config
            .databases
            .iter()
            .filter(|d| d.name != pgmux_config::pooler::WILDCARD && d.min_pool_size > 0)
            .filter_map(|d| d.user.clone().map(|u| (d.name.clone(), u)))
            .collect();
        for (database, user) in forced {
            self.pool_named(&database, &user, false);
        }
    }

    /// Every tick: `query_wait_timeout` for sessions waiting here, `min_pool_size`, the reserve pool (opening and
    /// giving back), and a fair share for pools held back by a limit.
    pub(super) fn limits_tick(&mut self) {
        self.expire_held();
        self.publish_room();
        let now = Instant::now();
        let now_ns = worker::monotonic_ns();
        // Counting sessions per pool is a scan of the session table: only when some pool is below its minimum.
        let below_min = self.pools.iter().any(|p| p.workers.len() < p.settings.min_pool_size as usize);
        let clients = if below_min { self.clients_per_pool() } else { Vec::new() };
        for pool in 0..self.pools.len() {
            let Some(p) = self.pools.get(pool) else { continue };
            if p.dedicated || self.admin_holds(pool) {
                continue;
            }
            let forced = self.config.database(&p.database).is_some_and(|d| d.user.is_some());
            let has_clients = clients.get(pool).copied().unwrap_or(0) > 0;
            // The longest wait of the pool: its workers' queues (the board) and the sessions held here.
            let mut oldest_ns = u64::MAX;
            let mut queued = false;
            for &w in &p.workers {
                if let Some(st) = self.board.status(w) {
                    queued |= st.queued > 0;
                    if st.waiting_since_ns != 0 {
                        oldest_ns = oldest_ns.min(st.waiting_since_ns);
                    }
                }
            }
            let held_wait = p.waiting.front().map(|h| h.since.elapsed());
            let queue_wait = Duration::from_nanos(now_ns.saturating_sub(oldest_ns.min(now_ns)));
            let waited =
                held_wait.unwrap_or_default().max(if oldest_ns == u64::MAX { Duration::ZERO } else { queue_wait });
            let waiting = queued || held_wait.is_some();
            let n = p.workers.len();
            let (size, min) = (p.size, p.settings.min_pool_size as usize);
            let release_after = p.settings.reserve_pool_timeout.unwrap_or_default().max(RESERVE_RELEASE_MIN);

            if n < min && (has_clients || forced) {
                if let Start::Yes(how) = self.may_start(pool, Duration::ZERO) {
                    debug!("launching new connection to satisfy min_pool_size");
                    self.start_for(pool, how, Duration::ZERO);
                }
            } else if n >= size && waiting {
                match self.may_start(pool, waited) {
                    Start::Yes(how @ How::Reserve) => self.start_for(pool, how, waited),
                    Start::Limited(limit) => self.make_room(pool, limit),
                    _ => {}
                }
            } else if waiting && n < size {
                // Its workers are busy and it may grow but a shared limit holds it back: ask for a fair share.
                if let Start::Limited(limit) = self.may_start(pool, waited) {
                    self.make_room(pool, limit);
                }
            }

            // Give reserve workers back once nobody has waited for a while.
            let Some(p) = self.pools.get_mut(pool) else { continue };
            if n <= size || waiting {
                p.limits.calm_since = None;
                continue;
            }
            let calm_since = *p.limits.calm_since.get_or_insert(now);
            if now.duration_since(calm_since) < release_after {
                continue;
            }
            p.limits.calm_since = Some(now);
            let session_mode = p.mode == PoolMode::Session;
            let candidate = p
                .workers
                .iter()
                .filter_map(|&w| self.children.get(w).and_then(|c| c.as_ref()).map(|c| (c.sessions, w)))
                .filter(|(sessions, _)| !session_mode || *sessions == 0)
                .min();
            if let Some((_, slot)) = candidate {
                self.retire_worker(slot, "reserve_pool no longer needed");
            }
        }
    }

    /// Tells each worker, on the board, how many more workers its pool may start now, so that it moves sessions
    /// waiting behind a long turn only where they can be served sooner.
    pub(super) fn publish_room(&self) {
        let mut per_db: HashMap<&str, usize> = HashMap::new();
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        for c in self.children.iter().flatten() {
            if let Role::Worker { pool, .. } = c.role {
                if let Some(q) = self.pools.get(pool).filter(|q| !q.dedicated) {
                    *per_db.entry(q.database.as_str()).or_default() += 1;
                    *per_user.entry(q.user.as_str()).or_default() += 1;
                }
            }
        }
        for (i, p) in self.pools.iter().enumerate() {
            let mut room = if p.dedicated || self.admin_holds(i) { 0 } else { p.size.saturating_sub(p.workers.len()) };
            let max_db = self.config.max_db_connections(&p.database) as usize;
            if max_db > 0 {
                room = room.min(max_db.saturating_sub(per_db.get(p.database.as_str()).copied().unwrap_or(0)));
            }
            let max_user = self.config.max_user_connections(&p.user) as usize;
            if max_user > 0 {
                room = room.min(max_user.saturating_sub(per_user.get(p.user.as_str()).copied().unwrap_or(0)));
            }
            for &w in &p.workers {
                self.board.set_room(w, u32::try_from(room).unwrap_or(u32::MAX));
            }
        }
    }

    fn start_for(&mut self, pool: usize, how: How, waited: Duration) {
        match self.spawn_worker(pool) {
            Ok(_) => self.note_start(pool, how, waited),
            Err(e) => warn!("cannot start a worker: {e}"),
        }
    }

    /// Sessions of each pool, held here or at a worker.
    fn clients_per_pool(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = self.pools.iter().map(|p| p.waiting.len()).collect();
        for e in self.sessions.values() {
            if let Some(c) = counts.get_mut(e.pool) {
                *c += 1;
            }
        }
        counts
    }

    /// Sessions held here longer than their pool's `query_wait_timeout` are refused, as PgBouncer disconnects a
    /// client that waited too long for a server (not while SUSPENDed, which PgBouncer's janitor skips).
    fn expire_held(&mut self) {
        if self.admin_suspended() {
            return;
        }
        for p in &mut self.pools {
            let Some(limit) = p.settings.query_wait_timeout else { continue };
            if !p.waiting.iter().any(|h| h.since.elapsed() > limit) {
                continue;
            }
            let (late, keep): (Vec<_>, Vec<_>) = p.waiting.drain(..).partition(|h| h.since.elapsed() > limit);
            p.waiting = keep.into();
            for h in late {
                info!(
                    "s{}: {}/{}: closing because: query_wait_timeout (waited {:.1}s)",
                    h.record.session_id,
                    h.record.database,
                    h.record.user,
                    h.since.elapsed().as_secs_f64()
                );
                self.cancel_keys.remove(&(h.record.cancel_pid, h.record.cancel_key));
                refuse(h.fd, "08P01", "query_wait_timeout");
            }
        }
    }
}
