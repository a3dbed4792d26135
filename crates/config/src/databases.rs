//! `[databases]` and `[users]` entries: one per database name clients may ask for, one per user with settings of
//! its own.
//!
//! In pgbouncer.ini each entry is a connection string (`appdb = host=... dbname=...`, see [`crate::connstr`]); in
//! pooler.toml a table (`[databases.appdb]`). Both are read through the same [`Section`] getters, and every value a
//! database or user does not set is resolved from `[pgbouncer]`/`[pooler]` here.

use std::time::Duration;

use crate::error::ConfigError;
use crate::keys;
use crate::pooler::{non_empty, pool_mode, PoolMode, Pooler, DEFAULT_SERVER_SOCKET_DIR, MAX_POOL_SIZE, WILDCARD};
use crate::walk::Section;

/// The database name PgBouncer keeps for its admin console.
const RESERVED: &str = "pgbouncer";

/// One `[databases]` entry, every fallback resolved (how they combine with `[users]` for a pool:
/// [`crate::Config::pool_settings`]).
///
/// The fields after `query_wait_timeout` are parsed with PgBouncer's meaning but not acted on yet (see
/// [`crate::keys`]).
#[derive(Debug, Clone)]
pub struct Database {
    /// The name clients connect to; `*` for the fallback entry.
    pub name: String,
    /// Hostname, IP address, or a directory (starting with `/`) holding the server's Unix socket.
    pub host: String,
    pub port: u16,
    /// Upstream database; empty (only for `*`) means "the name the client asked for".
    pub dbname: String,
    /// Connect upstream as this user instead of the client's.
    pub user: Option<String>,
    /// Upstream password; otherwise the auth_file's secret for the user is used.
    pub password: Option<String>,
    /// Never 0.
    pub pool_size: u32,
    pub pool_mode: PoolMode,
    /// Who runs `auth_query` for clients missing from auth_file (this entry's, else `[pooler]`'s); None = no
    /// lookups for this database.
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// The database entry the lookup connects to; None = this one.
    pub auth_dbname: Option<String>,

    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    /// 0 = unlimited. As in PgBouncer, 0 here means `[pooler]`'s value.
    pub max_db_connections: u32,
    /// 0 = unlimited. As in PgBouncer, 0 here means `[pooler]`'s value.
    pub max_db_client_connections: u32,
    /// `[pooler]`'s unless set here (a value that differs from it overrides it; the console's SET follows).
    pub server_lifetime: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,

    /// Startup parameters to ask the server for.
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    pub application_name: Option<String>,
    /// Run once on each new server connection, before any client uses it.
    pub connect_query: Option<String>,
}

/// One `[users]` entry. Pool settings stay optional: whether they win over the database's is decided per pool
/// (PgBouncer: user, then database, then `[pgbouncer]`, see [`crate::Config::pool_settings`]); limits and the
/// other timeouts are resolved from `[pgbouncer]`.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    /// 0 = unlimited. As in PgBouncer, 0 here means `[pooler]`'s value.
    pub max_user_connections: u32,
    /// 0 = unlimited. As in PgBouncer, 0 here means `[pooler]`'s value.
    pub max_user_client_connections: u32,
    pub query_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    pub transaction_timeout: Option<Duration>,
    pub client_idle_timeout: Option<Duration>,
}

pub(crate) fn parse_database(s: &Section<'_>, name: &str, pooler: &Pooler) -> Result<Database, ConfigError> {
    if name.is_empty() {
        return Err(s.section_err("empty database name"));
    }
    if name == RESERVED {
        return Err(s.section_err(format!("the database name {RESERVED:?} is reserved for the admin console")));
    }
    s.check_keys(&keys::names(keys::DATABASE))?;
    let host = match s.string("host")? {
        // As in PgBouncer: no host means the server's Unix socket, looked for
        // in unix_socket_dir.
        None => {
            pooler.unix_socket_dir.as_ref().map_or(DEFAULT_SERVER_SOCKET_DIR.to_string(), |d| d.display().to_string())
        }
        Some(h) => validate_host(s, h)?.to_string(),
    };
    let port = s.int("port", 1, 65535)?.unwrap_or(5432) as u16;
    let dbname = match s.string("dbname")?.and_then(non_empty) {
        Some(d) => d.to_string(),
        None if name == WILDCARD => String::new(),
        None => name.to_string(),
    };
    let text = |key: &str| -> Result<Option<String>, ConfigError> {
        Ok(s.string(key)?.and_then(non_empty).map(str::to_string))
    };
    let size =
        |key: &str| -> Result<Option<u32>, ConfigError> { Ok(s.int(key, 0, MAX_POOL_SIZE.into())?.map(|n| n as u32)) };
    let count =
        |key: &str| -> Result<Option<u32>, ConfigError> { Ok(s.int(key, 0, i32::MAX.into())?.map(|n| n as u32)) };
    let pool_size = match size("pool_size")? {
        None | Some(0) => pooler.default_pool_size,
        Some(n) => n,
    };
    // `reserve_pool` is the name PgBouncer accepted before 1.24.
    let reserve_pool_size = match size("reserve_pool_size")? {
        Some(n) => Some(n),
        None => size("reserve_pool")?,
    };
    Ok(Database {
        name: name.to_string(),
        host,
        port,
        dbname,
        user: text("user")?,
        password: text("password")?,
        pool_size,
        pool_mode: pool_mode(s)?.unwrap_or(pooler.pool_mode),
        min_pool_size: size("min_pool_size")?.unwrap_or(pooler.min_pool_size),
        reserve_pool_size: reserve_pool_size.unwrap_or(pooler.reserve_pool_size),
        // PgBouncer takes `<= 0` here as "use [pgbouncer]'s".
        max_db_connections: count("max_db_connections")?.filter(|n| *n > 0).unwrap_or(pooler.max_db_connections),
        max_db_client_connections: count("max_db_client_connections")?
            .filter(|n| *n > 0)
            .unwrap_or(pooler.max_db_client_connections),
        server_lifetime: s.timeout("server_lifetime")?.unwrap_or(pooler.server_lifetime),
        query_wait_timeout: s.timeout("query_wait_timeout")?.unwrap_or(pooler.query_wait_timeout),
        client_encoding: text("client_encoding")?,
        datestyle: text("datestyle")?,
        timezone: text("timezone")?,
        application_name: text("application_name")?,
        connect_query: text("connect_query")?,
        auth_user: text("auth_user")?.or_else(|| pooler.auth_user.clone()),
        auth_query: text("auth_query")?.unwrap_or_else(|| pooler.auth_query.clone()),
        auth_dbname: text("auth_dbname")?.or_else(|| pooler.auth_dbname.clone()),
    })
}

pub(crate) fn parse_user(s: &Section<'_>, name: &str, pooler: &Pooler) -> Result<User, ConfigError> {
    if name.is_empty() {
        return Err(s.section_err("empty user name"));
    }
    s.check_keys(&keys::names(keys::USER))?;
    let size =
        |key: &str| -> Result<Option<u32>, ConfigError> { Ok(s.int(key, 0, MAX_POOL_SIZE.into())?.map(|n| n as u32)) };
    let count =
        |key: &str| -> Result<Option<u32>, ConfigError> { Ok(s.int(key, 0, i32::MAX.into())?.map(|n| n as u32)) };
    Ok(User {
        name: name.to_string(),
        pool_mode: pool_mode(s)?,
        pool_size: size("pool_size")?.filter(|n| *n > 0),
        reserve_pool_size: size("reserve_pool_size")?,
        // PgBouncer takes `<= 0` here as "use [pgbouncer]'s".
        max_user_connections: count("max_user_connections")?.filter(|n| *n > 0).unwrap_or(pooler.max_user_connections),
        max_user_client_connections: count("max_user_client_connections")?
            .filter(|n| *n > 0)
            .unwrap_or(pooler.max_user_client_connections),
        query_timeout: s.timeout("query_timeout")?.unwrap_or(pooler.query_timeout),
        query_wait_timeout: s.timeout("query_wait_timeout")?.unwrap_or(pooler.query_wait_timeout),
        idle_transaction_timeout: s.timeout("idle_transaction_timeout")?.unwrap_or(pooler.idle_transaction_timeout),
        transaction_timeout: s.timeout("transaction_timeout")?.unwrap_or(pooler.transaction_timeout),
        client_idle_timeout: s.timeout("client_idle_timeout")?.unwrap_or(pooler.client_idle_timeout),
    })
}

fn validate_host<'a>(s: &Section<'_>, host: &'a str) -> Result<&'a str, ConfigError> {
    if host.is_empty() {
        return Err(s.err("host", "empty host (omit the key to use the Unix socket in unix_socket_dir)"));
    }
    if host.contains(',') {
        return Err(s.err("host", format!("invalid value {host:?} (host lists are not supported)")));
    }
    if host.starts_with('@') {
        return Err(s.err("host", format!("invalid value {host:?} (abstract-namespace sockets are not supported)")));
    }
    if !host.starts_with('/') && host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(s.err("host", format!("invalid value {host:?} (contains whitespace)")));
    }
    Ok(host)
}
