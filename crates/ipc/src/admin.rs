//! The admin console's traffic between a listener (which serves the console connection and parses its commands)
//! and the supervisor (which holds the pools and the session table and acts): the commands, as already parsed and
//! checked for privilege, and the supervisor's answer — done, an error, or a [`Snapshot`] of everything the SHOW
//! commands display, from which the listener formats rows.
//!
//! A snapshot can be large (one entry per client), so replies travel in pieces (`wire::chunks`, `Msg::AdminReply`).

use crate::stats::{Counters, Latency, WorkerReport};
use crate::wire::{put_bool, put_bytes, put_list, put_opt_str, put_str, put_u32, put_u64, put_u8, Fields, WireError};

/// A console command the supervisor carries out. Database names are as the console user typed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Every SHOW: send a snapshot.
    Snapshot,
    Pause {
        db: Option<String>,
    },
    Resume {
        db: Option<String>,
    },
    Suspend,
    Disable {
        db: String,
    },
    Enable {
        db: String,
    },
    Kill {
        db: Option<String>,
    },
    KillClient {
        id: u64,
    },
    Reconnect {
        db: Option<String>,
    },
    WaitClose {
        db: Option<String>,
    },
    Reload,
    Shutdown {
        mode: ShutdownMode,
    },
    Set {
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    Immediate = 0,
    WaitForServers = 1,
    WaitForClients = 2,
}

const CMD_SNAPSHOT: u8 = 1;
const CMD_PAUSE: u8 = 2;
const CMD_RESUME: u8 = 3;
const CMD_SUSPEND: u8 = 4;
const CMD_DISABLE: u8 = 5;
const CMD_ENABLE: u8 = 6;
const CMD_KILL: u8 = 7;
const CMD_KILL_CLIENT: u8 = 8;
const CMD_RECONNECT: u8 = 9;
const CMD_WAIT_CLOSE: u8 = 10;
const CMD_RELOAD: u8 = 11;
const CMD_SHUTDOWN: u8 = 12;
const CMD_SET: u8 = 13;

impl AdminCommand {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AdminCommand::Snapshot => put_u8(out, CMD_SNAPSHOT),
            AdminCommand::Pause { db } => {
                put_u8(out, CMD_PAUSE);
                put_opt_str(out, db.as_deref());
            }
            AdminCommand::Resume { db } => {
                put_u8(out, CMD_RESUME);
                put_opt_str(out, db.as_deref());
            }
            AdminCommand::Suspend => put_u8(out, CMD_SUSPEND),
            AdminCommand::Disable { db } => {
                put_u8(out, CMD_DISABLE);
                put_str(out, db);
            }
            AdminCommand::Enable { db } => {
                put_u8(out, CMD_ENABLE);
                put_str(out, db);
            }
            AdminCommand::Kill { db } => {
                put_u8(out, CMD_KILL);
                put_opt_str(out, db.as_deref());
            }
            AdminCommand::KillClient { id } => {
                put_u8(out, CMD_KILL_CLIENT);
                put_u64(out, *id);
            }
            AdminCommand::Reconnect { db } => {
                put_u8(out, CMD_RECONNECT);
                put_opt_str(out, db.as_deref());
            }
            AdminCommand::WaitClose { db } => {
                put_u8(out, CMD_WAIT_CLOSE);
                put_opt_str(out, db.as_deref());
            }
            AdminCommand::Reload => put_u8(out, CMD_RELOAD),
            AdminCommand::Shutdown { mode } => {
                put_u8(out, CMD_SHUTDOWN);
                put_u8(out, *mode as u8);
            }
            AdminCommand::Set { key, value } => {
                put_u8(out, CMD_SET);
                put_str(out, key);
                put_str(out, value);
            }
        }
    }

    pub(crate) fn decode(f: &mut Fields<'_>) -> Result<AdminCommand, WireError> {
        Ok(match f.u8("command")? {
            CMD_SNAPSHOT => AdminCommand::Snapshot,
            CMD_PAUSE => AdminCommand::Pause { db: f.opt_string("db")? },
            CMD_RESUME => AdminCommand::Resume { db: f.opt_string("db")? },
            CMD_SUSPEND => AdminCommand::Suspend,
            CMD_DISABLE => AdminCommand::Disable { db: f.string("db")? },
            CMD_ENABLE => AdminCommand::Enable { db: f.string("db")? },
            CMD_KILL => AdminCommand::Kill { db: f.opt_string("db")? },
            CMD_KILL_CLIENT => AdminCommand::KillClient { id: f.u64("id")? },
            CMD_RECONNECT => AdminCommand::Reconnect { db: f.opt_string("db")? },
            CMD_WAIT_CLOSE => AdminCommand::WaitClose { db: f.opt_string("db")? },
            CMD_RELOAD => AdminCommand::Reload,
            CMD_SHUTDOWN => AdminCommand::Shutdown {
                mode: match f.u8("shutdown mode")? {
                    0 => ShutdownMode::Immediate,
                    1 => ShutdownMode::WaitForServers,
                    2 => ShutdownMode::WaitForClients,
                    _ => return Err(WireError::InvalidValue("shutdown mode")),
                },
            },
            CMD_SET => AdminCommand::Set { key: f.string("key")?, value: f.string("value")? },
            _ => return Err(WireError::InvalidValue("command")),
        })
    }
}

/// The supervisor's answer to one [`AdminCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// The command took effect; the listener sends its CommandComplete.
    Done,
    /// ErrorResponse with this SQLSTATE and message.
    Error {
        code: String,
        message: String,
    },
    Snapshot(Box<Snapshot>),
}

const REPLY_DONE: u8 = 1;
const REPLY_ERROR: u8 = 2;
const REPLY_SNAPSHOT: u8 = 3;

impl AdminReply {
    pub fn error(message: impl Into<String>) -> AdminReply {
        AdminReply::Error { code: "08P01".into(), message: message.into() }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AdminReply::Done => put_u8(out, REPLY_DONE),
            AdminReply::Error { code, message } => {
                put_u8(out, REPLY_ERROR);
                put_str(out, code);
                put_str(out, message);
            }
            AdminReply::Snapshot(s) => {
                put_u8(out, REPLY_SNAPSHOT);
                s.encode(out);
            }
        }
    }

    /// Decodes a whole reassembled payload.
    pub fn decode(buf: &[u8]) -> Result<AdminReply, WireError> {
        let mut f = Fields::new(buf);
        let reply = match f.u8("reply")? {
            REPLY_DONE => AdminReply::Done,
            REPLY_ERROR => AdminReply::Error { code: f.string("code")?, message: f.string("message")? },
            REPLY_SNAPSHOT => AdminReply::Snapshot(Box::new(Snapshot::decode(&mut f)?)),
            _ => return Err(WireError::InvalidValue("reply")),
        };
        f.finish()?;
        Ok(reply)
    }
}

/// Pool modes as one byte.
pub const MODE_SESSION: u8 = 0;
pub const MODE_TRANSACTION: u8 = 1;
pub const MODE_STATEMENT: u8 = 2;

/// Everything the SHOW commands display, as the supervisor knows it at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The supervisor's wall clock (µs since the epoch): waits and ages are relative to it.
    pub now_us: u64,
    /// 0 running, 1 paused (PAUSE without a database), 2 suspended.
    pub pause_state: u8,
    pub listen_port: u32,
    pub databases: Vec<DatabaseInfo>,
    pub pools: Vec<PoolInfo>,
    pub clients: Vec<ClientInfo>,
    /// Users of the auth_file, plus pool users not in it.
    pub users: Vec<String>,
    /// The `[users]` settings and limits of each of `users`, in the same order.
    pub user_limits: Vec<UserInfo>,
    /// SHOW CONFIG rows: key, value, default, changeable.
    pub settings: Vec<(String, String, String, bool)>,
    /// Workers alive (each holds at most one upstream).
    pub workers: u32,
    /// The process family's own numbers (the Prometheus endpoint shows them).
    pub process: ProcessInfo,
}

/// What the supervisor counts about its children and sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Listener processes alive.
    pub listeners: u32,
    /// When the supervisor started (µs since the epoch).
    pub start_time_us: u64,
    /// Workers that died of a signal or a non-zero exit.
    pub worker_crashes: u64,
    /// Listeners that did.
    pub listener_crashes: u64,
    /// Sessions a worker handed back to be moved to another worker (`Msg::Migrate`).
    pub sessions_migrated: u64,
    /// Sessions whose worker went away and that went on at another worker.
    pub sessions_recovered: u64,
    /// Sessions closed because their worker died while serving them.
    pub sessions_lost: u64,
}

impl ProcessInfo {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.listeners);
        for v in [
            self.start_time_us,
            self.worker_crashes,
            self.listener_crashes,
            self.sessions_migrated,
            self.sessions_recovered,
            self.sessions_lost,
        ] {
            put_u64(out, v);
        }
    }

    fn decode(f: &mut Fields<'_>) -> Result<ProcessInfo, WireError> {
        Ok(ProcessInfo {
            listeners: f.u32("listeners")?,
            start_time_us: f.u64("start time")?,
            worker_crashes: f.u64("worker crashes")?,
            listener_crashes: f.u64("listener crashes")?,
            sessions_migrated: f.u64("sessions migrated")?,
            sessions_recovered: f.u64("sessions recovered")?,
            sessions_lost: f.u64("sessions lost")?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseInfo {
    pub name: String,
    pub host: String,
    pub port: u32,
    pub dbname: String,
    pub force_user: Option<String>,
    pub pool_size: u32,
    pub pool_mode: u8,
    pub server_lifetime_s: u64,
    pub paused: bool,
    pub disabled: bool,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    /// `max_db_connections`, `max_db_client_connections`: 0 = unlimited.
    pub max_connections: u32,
    pub max_client_connections: u32,
}

/// What SHOW USERS shows of a user's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's own `pool_size`, `reserve_pool_size` and pool mode (None: not set in `[users]`).
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub pool_mode: Option<u8>,
    /// `max_user_connections`, `max_user_client_connections` in effect: 0 = unlimited.
    pub max_connections: u32,
    pub max_client_connections: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolInfo {
    pub database: String,
    pub user: String,
    pub pool_mode: u8,
    pub size: u32,
    /// Sessions the supervisor holds for this pool (no worker could take them yet): id and µs waited.
    pub waiting: Vec<(u64, u64)>,
    pub workers: Vec<WorkerInfo>,
    /// Counters of every worker this pool ever had, including the live ones' latest.
    pub totals: Counters,
    /// The totals at the start of the averaging window, and how long ago that was (µs; 0 = no window yet).
    pub window_start: Counters,
    pub window_us: u64,
    /// Latency histograms of every worker this pool ever had, as `totals`.
    pub latency: Latency,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerInfo {
    pub index: u32,
    pub pid: u32,
    /// The report answered the request that produced this snapshot (false: an older one, or none).
    pub fresh: bool,
    pub report: Option<WorkerReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: u64,
    pub database: String,
    pub user: String,
    /// "127.0.0.1", "::1" or "unix".
    pub addr: String,
    pub port: u32,
    pub local_addr: String,
    pub local_port: u32,
    pub connect_time_us: u64,
    pub application_name: String,
}

fn put_opt_u32(out: &mut Vec<u8>, v: Option<u32>) {
    put_bool(out, v.is_some());
    if let Some(v) = v {
        put_u32(out, v);
    }
}

fn opt_u32(f: &mut Fields<'_>, field: &'static str) -> Result<Option<u32>, WireError> {
    Ok(if f.bool(field)? { Some(f.u32(field)?) } else { None })
}

impl Snapshot {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.now_us);
        put_u8(out, self.pause_state);
        put_u32(out, self.listen_port);
        put_list(out, &self.databases, |out, d| {
            put_str(out, &d.name);
            put_str(out, &d.host);
            put_u32(out, d.port);
            put_str(out, &d.dbname);
            put_opt_str(out, d.force_user.as_deref());
            put_u32(out, d.pool_size);
            put_u8(out, d.pool_mode);
            put_u64(out, d.server_lifetime_s);
            put_bool(out, d.paused);
            put_bool(out, d.disabled);
            put_u32(out, d.min_pool_size);
            put_u32(out, d.reserve_pool_size);
            put_u32(out, d.max_connections);
            put_u32(out, d.max_client_connections);
        });
        put_list(out, &self.pools, |out, p| {
            put_str(out, &p.database);
            put_str(out, &p.user);
            put_u8(out, p.pool_mode);
            put_u32(out, p.size);
            put_list(out, &p.waiting, |out, (id, us)| {
                put_u64(out, *id);
                put_u64(out, *us);
            });
            put_list(out, &p.workers, |out, w| {
                put_u32(out, w.index);
                put_u32(out, w.pid);
                put_bool(out, w.fresh);
                match &w.report {
                    Some(r) => {
                        put_bool(out, true);
                        let mut b = Vec::new();
                        r.encode(&mut b);
                        put_bytes(out, &b);
                    }
                    None => put_bool(out, false),
                }
            });
            p.totals.encode(out);
            p.window_start.encode(out);
            put_u64(out, p.window_us);
            p.latency.encode(out);
        });
        put_list(out, &self.clients, |out, c| {
            put_u64(out, c.id);
            put_str(out, &c.database);
            put_str(out, &c.user);
            put_str(out, &c.addr);
            put_u32(out, c.port);
            put_str(out, &c.local_addr);
            put_u32(out, c.local_port);
            put_u64(out, c.connect_time_us);
            put_str(out, &c.application_name);
        });
        put_list(out, &self.users, |out, u| put_str(out, u));
        put_list(out, &self.user_limits, |out, u| {
            put_opt_u32(out, u.pool_size);
            put_opt_u32(out, u.reserve_pool_size);
            match u.pool_mode {
                Some(m) => {
                    put_bool(out, true);
                    put_u8(out, m);
                }
                None => put_bool(out, false),
            }
            put_u32(out, u.max_connections);
            put_u32(out, u.max_client_connections);
        });
        put_list(out, &self.settings, |out, (k, v, d, c)| {
            put_str(out, k);
            put_str(out, v);
            put_str(out, d);
            put_bool(out, *c);
        });
        put_u32(out, self.workers);
        self.process.encode(out);
    }

    fn decode(f: &mut Fields<'_>) -> Result<Snapshot, WireError> {
        let now_us = f.u64("now")?;
        let pause_state = f.u8("pause_state")?;
        let listen_port = f.u32("listen_port")?;
        let databases = f.list("databases", 4 * 4 + 1 + 4 + 1 + 8 + 2 + 4 * 4, |f| {
            Ok(DatabaseInfo {
                name: f.string("db name")?,
                host: f.string("db host")?,
                port: f.u32("db port")?,
                dbname: f.string("dbname")?,
                force_user: f.opt_string("force_user")?,
                pool_size: f.u32("pool_size")?,
                pool_mode: f.u8("pool_mode")?,
                server_lifetime_s: f.u64("server_lifetime")?,
                paused: f.bool("paused")?,
                disabled: f.bool("disabled")?,
                min_pool_size: f.u32("min_pool_size")?,
                reserve_pool_size: f.u32("reserve_pool_size")?,
                max_connections: f.u32("max_connections")?,
                max_client_connections: f.u32("max_client_connections")?,
            })
        })?;
        let pools = f.list("pools", 4 + 4 + 1 + 4 + 4 + 4 + 88 + 88 + 8 + Latency::LEN, |f| {
            Ok(PoolInfo {
                database: f.string("pool database")?,
                user: f.string("pool user")?,
                pool_mode: f.u8("pool mode")?,
                size: f.u32("pool size")?,
                waiting: f.list("waiting", 16, |f| Ok((f.u64("waiting id")?, f.u64("waiting us")?)))?,
                workers: f.list("workers", 4 + 4 + 1 + 1, |f| {
                    let index = f.u32("worker index")?;
                    let pid = f.u32("worker pid")?;
                    let fresh = f.bool("fresh")?;
                    let report = if f.bool("report")? { Some(WorkerReport::decode(f.bytes("report")?)?) } else { None };
                    Ok(WorkerInfo { index, pid, fresh, report })
                })?,
                totals: Counters::decode(f)?,
                window_start: Counters::decode(f)?,
                window_us: f.u64("window")?,
                latency: Latency::decode(f)?,
            })
        })?;
        let clients = f.list("clients", 8 + 4 * 6 + 8 + 4, |f| {
            Ok(ClientInfo {
                id: f.u64("client id")?,
                database: f.string("client database")?,
                user: f.string("client user")?,
                addr: f.string("client addr")?,
                port: f.u32("client port")?,
                local_addr: f.string("local addr")?,
                local_port: f.u32("local port")?,
                connect_time_us: f.u64("connect time")?,
                application_name: f.string("application_name")?,
            })
        })?;
        let users = f.list("users", 4, |f| f.string("user"))?;
        let user_limits = f.list("user_limits", 3 + 8, |f| {
            let pool_size = opt_u32(f, "user pool_size")?;
            let reserve_pool_size = opt_u32(f, "user reserve_pool_size")?;
            let pool_mode = if f.bool("user pool_mode set")? { Some(f.u8("user pool_mode")?) } else { None };
            Ok(UserInfo {
                pool_size,
                reserve_pool_size,
                pool_mode,
                max_connections: f.u32("max_user_connections")?,
                max_client_connections: f.u32("max_user_client_connections")?,
            })
        })?;
        let settings = f.list("settings", 13, |f| {
            Ok((f.string("key")?, f.string("value")?, f.string("default")?, f.bool("changeable")?))
        })?;
        let workers = f.u32("workers")?;
        let process = ProcessInfo::decode(f)?;
        Ok(Snapshot {
            now_us,
            pause_state,
            listen_port,
            databases,
            pools,
            clients,
            users,
            user_limits,
            settings,
            workers,
            process,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_snapshot() -> Snapshot {
        Snapshot {
            now_us: 99,
            pause_state: 1,
            listen_port: 6432,
            databases: vec![DatabaseInfo {
                name: "appdb".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                dbname: "appdb".into(),
                force_user: Some("app".into()),
                pool_size: 4,
                pool_mode: MODE_TRANSACTION,
                server_lifetime_s: 3600,
                paused: true,
                disabled: false,
                min_pool_size: 1,
                reserve_pool_size: 2,
                max_connections: 3,
                max_client_connections: 4,
            }],
            pools: vec![PoolInfo {
                database: "appdb".into(),
                user: "alice".into(),
                pool_mode: MODE_SESSION,
                size: 4,
                waiting: vec![(5, 10)],
                workers: vec![
                    WorkerInfo { index: 1, pid: 100, fresh: true, report: Some(crate::stats::tests::sample()) },
                    WorkerInfo { index: 2, pid: 101, fresh: false, report: None },
                ],
                totals: Counters { xact_count: 9, ..Counters::default() },
                window_start: Counters { xact_count: 1, ..Counters::default() },
                window_us: 60_000_000,
                latency: crate::stats::tests::sample().latency,
            }],
            clients: vec![ClientInfo {
                id: 7,
                database: "appdb".into(),
                user: "alice".into(),
                addr: "127.0.0.1".into(),
                port: 50000,
                local_addr: "127.0.0.1".into(),
                local_port: 6432,
                connect_time_us: 1,
                application_name: "psql".into(),
            }],
            users: vec!["alice".into(), "bob".into()],
            user_limits: vec![
                UserInfo {
                    pool_size: Some(5),
                    reserve_pool_size: None,
                    pool_mode: Some(MODE_STATEMENT),
                    max_connections: 6,
                    max_client_connections: 0,
                },
                UserInfo::default(),
            ],
            settings: vec![("listen_port".into(), "6432".into(), "6432".into(), false)],
            workers: 2,
            process: ProcessInfo {
                listeners: 2,
                start_time_us: 1_700_000_000_000_000,
                worker_crashes: 1,
                listener_crashes: 0,
                sessions_migrated: 5,
                sessions_recovered: 3,
                sessions_lost: u64::MAX,
            },
        }
    }

    fn all_commands() -> Vec<AdminCommand> {
        vec![
            AdminCommand::Snapshot,
            AdminCommand::Pause { db: None },
            AdminCommand::Pause { db: Some("appdb".into()) },
            AdminCommand::Resume { db: Some("x".into()) },
            AdminCommand::Suspend,
            AdminCommand::Disable { db: "d".into() },
            AdminCommand::Enable { db: "d".into() },
            AdminCommand::Kill { db: None },
            AdminCommand::KillClient { id: 12 },
            AdminCommand::Reconnect { db: None },
            AdminCommand::WaitClose { db: Some("w".into()) },
            AdminCommand::Reload,
            AdminCommand::Shutdown { mode: ShutdownMode::WaitForClients },
            AdminCommand::Set { key: "k".into(), value: "v".into() },
        ]
    }

    #[test]
    fn commands_round_trip() {
        for c in all_commands() {
            let mut buf = Vec::new();
            c.encode(&mut buf);
            let mut f = Fields::new(&buf);
            assert_eq!(AdminCommand::decode(&mut f).unwrap(), c);
            f.finish().unwrap();
            for len in 0..buf.len() {
                let mut f = Fields::new(&buf[..len]);
                assert!(AdminCommand::decode(&mut f).and_then(|_| f.finish()).is_err(), "{c:?} prefix {len}");
            }
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            AdminReply::Done,
            AdminReply::error("no such database: x"),
            AdminReply::Snapshot(Box::new(sample_snapshot())),
            AdminReply::Snapshot(Box::default()),
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(AdminReply::decode(&buf).unwrap(), r);
            for len in 0..buf.len() {
                assert!(AdminReply::decode(&buf[..len]).is_err(), "prefix {len}");
            }
            buf.push(1);
            assert!(AdminReply::decode(&buf).is_err());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut buf = Vec::new();
        AdminReply::Snapshot(Box::new(sample_snapshot())).encode(&mut buf);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut b = buf.clone();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % b.len();
                b[at] = (x >> 32) as u8;
            }
            let _ = AdminReply::decode(&b);
        }
    }
}
