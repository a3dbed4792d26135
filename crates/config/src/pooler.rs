//! `pooler.toml`: the `[pooler]` settings and the `[databases.*]` routes.
//!
//! Key names, defaults and meanings follow PgBouncer's `pgbouncer.ini` where
//! PgBouncer has the key; `listeners` is pgmux's own. Parsing resolves every
//! default and fallback (pool size, pool mode, dbname, relative paths), so the
//! rest of pgmux reads plain values and never sees an unset field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::line_col;
pub use crate::error::ConfigError;
use crate::walk::{toml_key, Section};

/// Fallback Unix socket directory for a database without `host` when
/// `unix_socket_dir` is empty (PgBouncer would have no directory to use).
pub const DEFAULT_SERVER_SOCKET_DIR: &str = "/var/run/postgresql";
/// The name of the fallback database entry.
pub const WILDCARD: &str = "*";
/// Upper bound for `pool_size` and `default_pool_size`.
pub const MAX_POOL_SIZE: u32 = 10_000;

const POOLER_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "listeners",
    "auth_type",
    "auth_file",
    "pool_mode",
    "default_pool_size",
    "max_client_conn",
    "client_login_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "server_lifetime",
    "server_reset_query",
    "max_packet_size",
    "logfile",
    "pidfile",
    "admin_users",
    "stats_users",
    "stats_period",
];

const DATABASE_KEYS: &[&str] = &["host", "port", "dbname", "user", "password", "pool_size", "pool_mode"];

/// How clients prove who they are (`auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Trust,
    Plain,
    Md5,
    ScramSha256,
}

impl AuthType {
    fn from_file(s: &str) -> Option<Self> {
        match s {
            "trust" => Some(AuthType::Trust),
            "plain" => Some(AuthType::Plain),
            "md5" => Some(AuthType::Md5),
            "scram-sha-256" => Some(AuthType::ScramSha256),
            _ => None,
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::Trust => "trust",
            AuthType::Plain => "plain",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
        })
    }
}

/// When a server connection goes back to the pool (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    fn from_file(s: &str) -> Option<Self> {
        match s {
            "session" => Some(PoolMode::Session),
            "transaction" => Some(PoolMode::Transaction),
            "statement" => Some(PoolMode::Statement),
            _ => None,
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

/// The `[pooler]` table, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooler {
    /// TCP addresses to listen on; empty means no TCP, `*` became `0.0.0.0` and `::`.
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    /// `None` means no Unix socket.
    pub unix_socket_dir: Option<PathBuf>,
    pub listeners: u32,
    pub auth_type: AuthType,
    /// Resolved against the config file's directory when relative.
    pub auth_file: Option<PathBuf>,
    pub pool_mode: PoolMode,
    pub default_pool_size: u32,
    pub max_client_conn: u32,
    pub client_login_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,
    /// `None` means clients may wait for a server forever.
    pub query_wait_timeout: Option<Duration>,
    /// A client idle inside a transaction longer than this is disconnected; None = never (PgBouncer's default 0).
    pub idle_transaction_timeout: Option<Duration>,
    /// An upstream older than this is retired: its worker moves its sessions to other workers and exits.
    /// None = never. PgBouncer's default: 3600 s.
    pub server_lifetime: Option<Duration>,
    pub server_reset_query: String,
    pub max_packet_size: u32,
    /// `None` means log to stderr.
    pub logfile: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    /// Users that may run every admin console command (database `pgbouncer`).
    pub admin_users: Vec<String>,
    /// Users that may run the console's read-only SHOW commands.
    pub stats_users: Vec<String>,
    /// The window SHOW STATS averages over (PgBouncer's default: 60 s).
    pub stats_period: Duration,
}

impl Default for Pooler {
    /// PgBouncer's defaults (plus `listeners = 2`).
    fn default() -> Self {
        Pooler {
            listen_addr: Vec::new(),
            listen_port: 6432,
            unix_socket_dir: Some(PathBuf::from("/tmp")),
            listeners: 2,
            auth_type: AuthType::Md5,
            auth_file: None,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            max_client_conn: 100,
            client_login_timeout: Duration::from_secs(60),
            server_connect_timeout: Duration::from_secs(15),
            server_login_retry: Duration::from_secs(15),
            query_wait_timeout: Some(Duration::from_secs(120)),
            idle_transaction_timeout: None,
            server_lifetime: Some(Duration::from_secs(3600)),
            server_reset_query: "DISCARD ALL".to_string(),
            max_packet_size: 2_147_483_647,
            logfile: None,
            pidfile: None,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: Duration::from_secs(60),
        }
    }
}

/// One `[databases.X]` entry, every fallback resolved.
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
}

/// A whole `pooler.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, as given.
    pub path: PathBuf,
    pub pooler: Pooler,
    /// Ordered by name; the fallback entry is named `*`.
    pub databases: Vec<Database>,
}

impl Config {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let root: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        let mut top: Vec<&String> = root.keys().collect();
        top.sort();
        for key in top {
            if key != "pooler" && key != "databases" {
                return Err(ConfigError::at_key(path, toml_key(key), "unknown table (expected pooler or databases)"));
            }
        }
        let empty = toml::Table::new();
        let pooler_table = table_at(path, &root, "pooler")?.unwrap_or(&empty);
        let pooler = parse_pooler(&Section::new(path, "pooler".into(), pooler_table), path)?;
        let databases = match table_at(path, &root, "databases")? {
            Some(dbs) => parse_databases(path, dbs, &pooler)?,
            None => Vec::new(),
        };
        if databases.is_empty() {
            return Err(ConfigError::at_key(
                path,
                "databases",
                "no database configured (add a [databases.NAME] or [databases.\"*\"] table)",
            ));
        }
        Ok(Config { path: path.to_path_buf(), pooler, databases })
    }

    /// The entry for `name`, else the `*` fallback, else `None`.
    pub fn database(&self, name: &str) -> Option<&Database> {
        let find =
            |n: &str| self.databases.binary_search_by(|db| db.name.as_str().cmp(n)).ok().map(|i| &self.databases[i]);
        find(name).or_else(|| find(WILDCARD))
    }

    /// The database to ask for upstream when a client requested `requested`
    /// and [`Config::database`] returned `db`.
    pub fn upstream_dbname<'a>(&'a self, db: &'a Database, requested: &'a str) -> &'a str {
        if db.dbname.is_empty() {
            requested
        } else {
            &db.dbname
        }
    }
}

fn toml_error(text: &str, path: &Path, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            ConfigError::at_line(path, line, Some(column), message)
        }
        None => ConfigError::new(path, message),
    }
}

fn table_at<'a>(path: &Path, root: &'a toml::Table, name: &str) -> Result<Option<&'a toml::Table>, ConfigError> {
    match root.get(name) {
        None => Ok(None),
        Some(toml::Value::Table(t)) => Ok(Some(t)),
        Some(other) => {
            Err(ConfigError::at_key(path, name, format!("wrong type: expected a table, found {}", other.type_str())))
        }
    }
}

fn parse_pooler(s: &Section<'_>, path: &Path) -> Result<Pooler, ConfigError> {
    let mut p = Pooler::default();
    apply_pooler(s, path, &mut p)?;
    Ok(p)
}

/// Sets every key present in `s` on `p`, leaving the others as they are: the whole `[pooler]` table at load time,
/// one key for the admin console's SET.
pub(crate) fn apply_pooler(s: &Section<'_>, path: &Path, p: &mut Pooler) -> Result<(), ConfigError> {
    s.check_keys(POOLER_KEYS)?;
    if let Some(list) = s.string_list("listen_addr")? {
        p.listen_addr = parse_listen_addr(s, &list)?;
    }
    if let Some(port) = s.int("listen_port", 1, 65535)? {
        p.listen_port = port as u16;
    }
    if let Some(dir) = s.string("unix_socket_dir")? {
        p.unix_socket_dir = non_empty(dir).map(PathBuf::from);
    }
    if let Some(n) = s.int("listeners", 1, 64)? {
        p.listeners = n as u32;
    }
    if let Some(v) = s.string("auth_type")? {
        p.auth_type = AuthType::from_file(v).ok_or_else(|| {
            s.err("auth_type", format!("invalid value {v:?} (expected trust, plain, md5 or scram-sha-256)"))
        })?;
    }
    if let Some(f) = s.string("auth_file")? {
        p.auth_file = resolve(path, f);
    }
    if let Some(mode) = pool_mode(s)? {
        p.pool_mode = mode;
    }
    if let Some(n) = s.int("default_pool_size", 1, MAX_POOL_SIZE.into())? {
        p.default_pool_size = n as u32;
    }
    if let Some(n) = s.int("max_client_conn", 1, u32::MAX.into())? {
        p.max_client_conn = n as u32;
    }
    // A zero login/connect timeout would drop every connection at once.
    if let Some(d) = s.seconds("client_login_timeout", 0.001)? {
        p.client_login_timeout = d;
    }
    if let Some(d) = s.seconds("server_connect_timeout", 0.001)? {
        p.server_connect_timeout = d;
    }
    if let Some(d) = s.seconds("server_login_retry", 0.0)? {
        p.server_login_retry = d;
    }
    if let Some(d) = s.seconds("server_lifetime", 0.0)? {
        p.server_lifetime = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = s.seconds("idle_transaction_timeout", 0.0)? {
        p.idle_transaction_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = s.seconds("query_wait_timeout", 0.0)? {
        p.query_wait_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(q) = s.string("server_reset_query")? {
        p.server_reset_query = q.to_string();
    }
    // Below a few kB even a startup packet would not fit; above i32::MAX the
    // wire format's length field cannot express it.
    if let Some(n) = s.int("max_packet_size", 1024, i32::MAX.into())? {
        p.max_packet_size = n as u32;
    }
    if let Some(f) = s.string("logfile")? {
        p.logfile = resolve(path, f);
    }
    if let Some(f) = s.string("pidfile")? {
        p.pidfile = resolve(path, f);
    }
    if let Some(list) = s.string_list("admin_users")? {
        p.admin_users = parse_user_list(s, "admin_users", &list)?;
    }
    if let Some(list) = s.string_list("stats_users")? {
        p.stats_users = parse_user_list(s, "stats_users", &list)?;
    }
    // Averages need a window of at least a second (PgBouncer's minimum too).
    if let Some(d) = s.seconds("stats_period", 1.0)? {
        p.stats_period = d;
    }
    Ok(())
}

/// `"alice, bob"` or `["alice", "bob"]` as PgBouncer's comma-separated user lists; `""` is the empty list.
fn parse_user_list(s: &Section<'_>, key: &str, items: &[&str]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        for user in item.split(',').map(str::trim) {
            if user.is_empty() {
                if items.len() == 1 && item.trim().is_empty() {
                    continue;
                }
                return Err(s.err(key, format!("invalid value {item:?} (empty user name in list)")));
            }
            if user.chars().any(|c| c.is_control()) {
                return Err(s.err(key, format!("invalid user name {user:?} (contains a control character)")));
            }
            if !out.iter().any(|u| u == user) {
                out.push(user.to_string());
            }
        }
    }
    Ok(out)
}

fn parse_listen_addr(s: &Section<'_>, items: &[&str]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |a: &str| {
        if !out.iter().any(|o| o == a) {
            out.push(a.to_string());
        }
    };
    for item in items {
        if item.trim().is_empty() && items.len() == 1 {
            return Ok(Vec::new());
        }
        for addr in item.split(',').map(str::trim) {
            if addr.is_empty() {
                return Err(s.err("listen_addr", format!("invalid value {item:?} (empty address in list)")));
            }
            if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(s.err("listen_addr", format!("invalid address {addr:?} (contains whitespace)")));
            }
            if addr == WILDCARD {
                push("0.0.0.0");
                push("::");
            } else {
                push(addr);
            }
        }
    }
    Ok(out)
}

fn pool_mode(s: &Section<'_>) -> Result<Option<PoolMode>, ConfigError> {
    match s.string("pool_mode")? {
        None | Some("") => Ok(None),
        Some(v) => PoolMode::from_file(v).map(Some).ok_or_else(|| {
            s.err("pool_mode", format!("invalid value {v:?} (expected session, transaction or statement)"))
        }),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `value` relative to the config file's directory; `""` means unset.
fn resolve(config: &Path, value: &str) -> Option<PathBuf> {
    let value = Path::new(non_empty(value)?);
    match config.parent() {
        Some(dir) if value.is_relative() => Some(dir.join(value)),
        _ => Some(value.to_path_buf()),
    }
}

fn parse_databases(path: &Path, dbs: &toml::Table, pooler: &Pooler) -> Result<Vec<Database>, ConfigError> {
    let mut names: Vec<&String> = dbs.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let prefix = format!("databases.{}", toml_key(name));
        let table = match &dbs[name.as_str()] {
            toml::Value::Table(t) => t,
            other => {
                return Err(ConfigError::at_key(
                    path,
                    prefix,
                    format!("wrong type: expected a table, found {}", other.type_str()),
                ))
            }
        };
        if name.is_empty() {
            return Err(ConfigError::at_key(path, prefix, "empty database name"));
        }
        out.push(parse_database(&Section::new(path, prefix, table), name, pooler)?);
    }
    Ok(out)
}

fn parse_database(s: &Section<'_>, name: &str, pooler: &Pooler) -> Result<Database, ConfigError> {
    s.check_keys(DATABASE_KEYS)?;
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
    let user = s.string("user")?.and_then(non_empty).map(str::to_string);
    let password = s.string("password")?.and_then(non_empty).map(str::to_string);
    let pool_size = match s.int("pool_size", 0, MAX_POOL_SIZE.into())? {
        None | Some(0) => pooler.default_pool_size,
        Some(n) => n as u32,
    };
    let pool_mode = pool_mode(s)?.unwrap_or(pooler.pool_mode);
    Ok(Database { name: name.to_string(), host, port, dbname, user, password, pool_size, pool_mode })
}

fn validate_host<'a>(s: &Section<'_>, host: &'a str) -> Result<&'a str, ConfigError> {
    if host.is_empty() {
        return Err(s.err("host", "empty host (omit the key to use the Unix socket in unix_socket_dir)"));
    }
    if host.contains(',') {
        return Err(s.err("host", format!("invalid value {host:?} (host lists are not supported)")));
    }
    if !host.starts_with('/') && host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(s.err("host", format!("invalid value {host:?} (contains whitespace)")));
    }
    Ok(host)
}

#[cfg(test)]
mod tests;
