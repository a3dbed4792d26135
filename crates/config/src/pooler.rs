//! The configuration: `pooler.toml` (`[pooler]`, `[databases.*]`, `[users.*]`) or PgBouncer's `pgbouncer.ini`
//! (`[pgbouncer]`, `[databases]`, `[users]`, `[peers]`), both read into the same [`Config`].
//!
//! Key names, defaults and meanings follow PgBouncer 1.25 where PgBouncer has the key; `listeners` is pgmux's own.
//! [`crate::keys`] lists every PgBouncer key and whether pgmux applies it, stores it for later, or ignores it (each
//! of the last two is reported in [`Config::warnings`]). Parsing resolves every default and fallback (pool size,
//! pool mode, dbname, relative paths), so the rest of pgmux reads plain values and never sees an unset field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::databases::{Database, User};
use crate::error::line_col;
pub use crate::error::{ConfigError, Warning};
use crate::hba::Hba;
use crate::ini::{Entries, Entry};
use crate::keys;
use crate::walk::{toml_key, Section};

/// Fallback Unix socket directory for a database without `host` when
/// `unix_socket_dir` is empty (PgBouncer would have no directory to use).
pub const DEFAULT_SERVER_SOCKET_DIR: &str = "/var/run/postgresql";
/// The name of the fallback database entry.
pub const WILDCARD: &str = "*";
/// Upper bound for `pool_size` and `default_pool_size`.
pub const MAX_POOL_SIZE: u32 = 10_000;
/// PgBouncer 1.25's `auth_query` default.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END \
                                      FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// Which syntax a configuration file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pgmux's `pooler.toml`.
    Toml,
    /// PgBouncer's `pgbouncer.ini`.
    Ini,
}

impl Format {
    /// By extension: `.ini` is PgBouncer's format, anything else pooler.toml.
    pub fn of_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("ini") => Format::Ini,
            _ => Format::Toml,
        }
    }

    /// `ini` or `toml`, as the command line's `--format` takes it.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "ini" => Some(Format::Ini),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// How clients prove who they are (`auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Trust,
    Plain,
    Md5,
    ScramSha256,
    /// Per connection, the first matching rule of `auth_hba_file` ([`Config::hba`]) decides.
    Hba,
    /// Like trust, and the user name need not be known: every database logs in as its forced `user=`.
    Any,
}

impl AuthType {
    fn from_file(s: &str) -> Option<Self> {
        // PgBouncer looks these up case-insensitively.
        match s.to_ascii_lowercase().as_str() {
            "trust" => Some(AuthType::Trust),
            "plain" => Some(AuthType::Plain),
            "md5" => Some(AuthType::Md5),
            "scram-sha-256" => Some(AuthType::ScramSha256),
            "hba" => Some(AuthType::Hba),
            "any" => Some(AuthType::Any),
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
            AuthType::Hba => "hba",
            AuthType::Any => "any",
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
    pub(crate) fn from_file(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
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

/// The `[pooler]` table (`[pgbouncer]` in pgbouncer.ini), every default applied.
///
/// The fields after `verbose` are parsed with PgBouncer's meaning and default but not acted on yet; setting them in
/// a file is reported in [`Config::warnings`] until [`crate::keys`] marks them applied.
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
    /// OS user to switch to after binding the listen sockets (the command line's `-u` wins).
    pub user: Option<String>,
    /// Log verbosity, as many `-v` (the larger of this and the command line's count applies).
    pub verbose: u8,
    /// Keep at least this many server connections per pool (capped at the pool's size).
    pub min_pool_size: u32,
    /// Extra connections a pool may open when a client waited `reserve_pool_timeout`.
    pub reserve_pool_size: u32,
    /// None = the reserve pool is never used.
    pub reserve_pool_timeout: Option<Duration>,
    /// Server connections per database, over all its users; 0 = unlimited.
    pub max_db_connections: u32,
    /// Client connections per database; 0 = unlimited.
    pub max_db_client_connections: u32,
    /// Server connections per user, over all databases; 0 = unlimited.
    pub max_user_connections: u32,
    /// Client connections per user; 0 = unlimited.
    pub max_user_client_connections: u32,
    /// pgmux's own: every session of these databases gets a server connection of its own, outside every limit.
    pub dedicated_databases: Vec<String>,
    /// pgmux's own: every session of these (client) users gets a server connection of its own.
    pub dedicated_users: Vec<String>,

    // ----- parsed, not acted on yet -----
    /// Close a server connection idle this long; None = never.
    pub server_idle_timeout: Option<Duration>,
    /// Cancel a query running this long; None = never.
    pub query_timeout: Option<Duration>,
    /// Disconnect a client idle (outside a transaction) this long; None = never.
    pub client_idle_timeout: Option<Duration>,
    /// Disconnect a client whose transaction lasts this long; None = never.
    pub transaction_timeout: Option<Duration>,
    /// Give up forwarding a cancel request after this long; None = never.
    pub cancel_wait_timeout: Option<Duration>,
    /// Run `server_reset_query` in every pool mode, not just session.
    pub server_reset_query_always: bool,
    /// Query checking a server connection that idled `server_check_delay`; `Some("")` sends an empty query
    /// (PgBouncer's `<empty>`), `None` disables the check (PgBouncer's `""`).
    pub server_check_query: Option<String>,
    pub server_check_delay: Duration,
    /// In session mode, close a server marked for reconnection after the transaction, not at session end.
    pub server_fast_close: bool,
    /// Startup parameters PgBouncer would drop instead of refusing (pgmux accepts and keeps every one).
    pub ignore_startup_parameters: Vec<String>,
    /// Append the client's address and port to `application_name` at login.
    pub application_name_add_host: bool,
    /// Users that may run every admin console command (database `pgbouncer`).
    pub admin_users: Vec<String>,
    /// Users that may run the console's read-only SHOW commands.
    pub stats_users: Vec<String>,
    /// The window SHOW STATS averages over (PgBouncer's default: 60 s).
    pub stats_period: Duration,
    /// `host:port` (`[v6]:port` for IPv6) of the Prometheus endpoint; None = no endpoint.
    pub metrics_listen: Option<String>,
    /// pg_hba.conf-style rules for `auth_type = hba`, read into [`Config::hba`].
    pub auth_hba_file: Option<PathBuf>,
    pub auth_ident_file: Option<PathBuf>,
    /// Look up users missing from auth_file with `auth_query`, logged in upstream as this user.
    pub auth_user: Option<String>,
    /// Returns (user name, secret) for `$1`; the secret may be NULL or the row missing (no such user).
    pub auth_query: String,
    /// The database entry (a name under `[databases]`) `auth_query` runs in; None = the one the client asked for.
    pub auth_dbname: Option<String>,
    /// Set SO_REUSEPORT on the TCP listen sockets.
    pub so_reuseport: bool,
    pub listen_backlog: u32,
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
            user: None,
            verbose: 0,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Some(Duration::from_secs(5)),
            max_db_connections: 0,
            max_db_client_connections: 0,
            max_user_connections: 0,
            max_user_client_connections: 0,
            dedicated_databases: Vec::new(),
            dedicated_users: Vec::new(),
            server_idle_timeout: Some(Duration::from_secs(600)),
            query_timeout: None,
            client_idle_timeout: None,
            transaction_timeout: None,
            cancel_wait_timeout: Some(Duration::from_secs(10)),
            server_reset_query_always: false,
            server_check_query: Some(String::new()),
            server_check_delay: Duration::from_secs(30),
            server_fast_close: false,
            ignore_startup_parameters: Vec::new(),
            application_name_add_host: false,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: Duration::from_secs(60),
            metrics_listen: None,
            auth_hba_file: None,
            auth_ident_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_dbname: None,
            so_reuseport: false,
            listen_backlog: 128,
        }
    }
}

/// A whole configuration file (with its includes).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, as given.
    pub path: PathBuf,
    /// The syntax it was read as; a reload reads it the same way.
    pub format: Format,
    pub pooler: Pooler,
    /// Ordered by name; the fallback entry is named `*`.
    pub databases: Vec<Database>,
    /// `[users]` entries, ordered by name.
    pub users: Vec<User>,
    /// Settings accepted without effect, and other differences from PgBouncer worth a log line.
    pub warnings: Vec<Warning>,
    /// The rules of `auth_hba_file`, read with the file when `auth_type = hba` (and only then).
    pub hba: Option<Hba>,
}

impl Config {
    /// Reads and parses the file at `path`, in the format its extension says ([`Format::of_path`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_as(path, Format::of_path(path))
    }

    /// Reads and parses the file at `path` as `format`.
    pub fn load_as(path: &Path, format: Format) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))?;
        match format {
            Format::Toml => Config::parse(&text, path),
            Format::Ini => Config::parse_ini(&text, path),
        }
    }

    /// Parses `text` as pooler.toml read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let root: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        for key in root.keys() {
            if !["pooler", "databases", "users"].contains(&key.as_str()) {
                return Err(ConfigError::at_key(
                    path,
                    toml_key(key),
                    "unknown table (expected pooler, databases or users)",
                ));
            }
        }
        let empty = toml::Table::new();
        let pooler = Section::new(path, "pooler".into(), table_at(path, &root, "pooler")?.unwrap_or(&empty));
        let databases = named_tables(path, &root, "databases")?;
        let users = named_tables(path, &root, "users")?;
        let sections = Sections {
            pooler,
            databases: databases
                .iter()
                .map(|(n, t)| (n.as_str(), Section::new(path, prefix("databases", n), t)))
                .collect(),
            users: users.iter().map(|(n, t)| (n.as_str(), Section::new(path, prefix("users", n), t))).collect(),
            peers: Vec::new(),
        };
        build(path, Format::Toml, &sections, Vec::new())
    }

    /// Parses `text` as pgbouncer.ini read from `path`; `%include`d files are read from disk.
    pub fn parse_ini(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_ini_with(text, path, &|p| std::fs::read_to_string(p))
    }

    /// Like [`Config::parse_ini`], reading included files with `read`.
    pub(crate) fn parse_ini_with(
        text: &str,
        path: &Path,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let mut ini = crate::ini::parse(text, path, read)?;
        if ini.pgbouncer_at.is_none() {
            // PgBouncer refuses such a file too ("main section missing").
            return Err(ConfigError::new(path, "no [pgbouncer] section (PgBouncer requires one too)"));
        }
        let databases = connstrings(&ini.databases, "databases")?;
        let users = connstrings(&ini.users, "users")?;
        let peers = connstrings(&ini.peers, "peers")?;
        let (main_file, main_line) = match &ini.pgbouncer_at {
            Some((file, line)) => (file.as_path(), Some(*line)),
            None => (path, None),
        };
        let sections = Sections {
            pooler: Section::ini(main_file, main_line, "pgbouncer".into(), &ini.pgbouncer),
            databases: section_list(&databases, "databases"),
            users: section_list(&users, "users"),
            peers: section_list(&peers, "peers"),
        };
        let warnings = std::mem::take(&mut ini.warnings);
        build(path, Format::Ini, &sections, warnings)
    }

    /// The entry for `name`, else the `*` fallback, else `None`.
    pub fn database(&self, name: &str) -> Option<&Database> {
        let find = |n: &str| {
            self.databases.binary_search_by(|db| db.name.as_str().cmp(n)).ok().and_then(|i| self.databases.get(i))
        };
        find(name).or_else(|| find(WILDCARD))
    }

    /// The `[users]` entry for `name`, if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.binary_search_by(|u| u.name.as_str().cmp(name)).ok().and_then(|i| self.users.get(i))
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

/// The sections of either format, ready to be read the same way.
struct Sections<'a> {
    pooler: Section<'a>,
    databases: Vec<(&'a str, Section<'a>)>,
    users: Vec<(&'a str, Section<'a>)>,
    peers: Vec<(&'a str, Section<'a>)>,
}

fn build(path: &Path, format: Format, s: &Sections<'_>, mut warnings: Vec<Warning>) -> Result<Config, ConfigError> {
    s.pooler.check_keys(&keys::names(keys::POOLER))?;
    let pooler = parse_pooler(&s.pooler)?;
    keys::check_and_report(&s.pooler, keys::POOLER, &mut warnings)?;
    let mut databases = Vec::with_capacity(s.databases.len());
    for (name, section) in &s.databases {
        databases.push(crate::databases::parse_database(section, name, &pooler)?);
        keys::check_and_report(section, keys::DATABASE, &mut warnings)?;
    }
    databases.sort_by(|a, b| a.name.cmp(&b.name));
    if databases.is_empty() {
        // PgBouncer starts without databases (its sample pgbouncer.ini has none, and only the admin console
        // answers); pooler.toml has always asked for one.
        match format {
            Format::Toml => {
                return Err(ConfigError::at_key(
                    path,
                    "databases",
                    "no database configured (add a [databases.NAME] or [databases.\"*\"] table)",
                ))
            }
            Format::Ini => warnings.push(Warning {
                file: path.to_path_buf(),
                line: None,
                key: Some("databases".into()),
                message: "no database configured: every client will be refused (add NAME = host=... or \
                          * = host=... under [databases])"
                    .into(),
            }),
        }
    }
    let mut users = Vec::with_capacity(s.users.len());
    for (name, section) in &s.users {
        users.push(crate::databases::parse_user(section, name, &pooler)?);
        keys::check_and_report(section, keys::USER, &mut warnings)?;
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    for (name, section) in &s.peers {
        section.check_keys(&keys::names(keys::PEER))?;
        if section.raw("host").is_none() {
            return Err(section.err("host", format!("peer {name} has no host (PgBouncer requires one)")));
        }
        keys::check_and_report(section, keys::PEER, &mut warnings)?;
    }
    let hba = crate::auth::check(&s.pooler, &pooler, &databases, &mut warnings)?;
    Ok(Config { path: path.to_path_buf(), format, pooler, databases, users, warnings, hba })
}

/// A parsed connection string: the entry's name, file and line, and its pairs as entries of their own.
type ConnString<'a> = (&'a str, &'a PathBuf, usize, Entries);

/// The connection strings of one ini section (`[databases]`, `[users]` or `[peers]`), split into pairs.
fn connstrings<'a>(entries: &'a Entries, section: &str) -> Result<Vec<ConnString<'a>>, ConfigError> {
    entries
        .values()
        .map(|e| {
            let pairs = crate::connstr::pairs(&e.value)
                .map_err(|m| ConfigError::at_key_line(&e.file, Some(e.line), prefix(section, &e.key), m))?;
            let entries: Entries = pairs
                .into_iter()
                .map(|(k, v)| {
                    let entry = Entry { key: k.clone(), value: v, file: e.file.clone(), line: e.line };
                    (k, entry)
                })
                .collect();
            Ok((e.key.as_str(), &e.file, e.line, entries))
        })
        .collect()
}

/// Sections for the parsed connection strings of one ini section.
fn section_list<'a>(list: &'a [ConnString<'a>], section: &str) -> Vec<(&'a str, Section<'a>)> {
    list.iter().map(|(n, f, line, e)| (*n, Section::ini(f, Some(*line), prefix(section, n), e))).collect()
}

fn prefix(section: &str, name: &str) -> String {
    format!("{section}.{}", toml_key(name))
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

/// The tables under `[name.X]`, as (X, table).
fn named_tables<'a>(
    path: &Path,
    root: &'a toml::Table,
    name: &str,
) -> Result<Vec<(String, &'a toml::Table)>, ConfigError> {
    let Some(outer) = table_at(path, root, name)? else { return Ok(Vec::new()) };
    outer
        .iter()
        .map(|(key, value)| match value {
            toml::Value::Table(t) => Ok((key.clone(), t)),
            other => Err(ConfigError::at_key(
                path,
                prefix(name, key),
                format!("wrong type: expected a table, found {}", other.type_str()),
            )),
        })
        .collect()
}

fn parse_pooler(s: &Section<'_>) -> Result<Pooler, ConfigError> {
    let mut p = Pooler::default();
    apply_pooler(s, &mut p)?;
    Ok(p)
}

/// Sets every key present in `s` on `p`, leaving the others as they are: the whole `[pooler]` table at load time,
/// one key for the admin console's SET. Unknown keys are the caller's to reject.
pub(crate) fn apply_pooler(s: &Section<'_>, p: &mut Pooler) -> Result<(), ConfigError> {
    if let Some(list) = s.string_list("listen_addr")? {
        p.listen_addr = parse_listen_addr(s, &list)?;
    }
    if let Some(port) = s.int("listen_port", 1, 65535)? {
        p.listen_port = port as u16;
    }
    if s.string("unix_socket_dir")?.is_some_and(|d| d.starts_with('@')) {
        return Err(s.err("unix_socket_dir", "abstract-namespace sockets (@name) are not supported by pgmux"));
    }
    if let Some(dir) = s.path("unix_socket_dir")? {
        p.unix_socket_dir = dir;
    }
    if let Some(n) = s.int("listeners", 1, 64)? {
        p.listeners = n as u32;
    }
    if let Some(v) = s.string("auth_type")? {
        p.auth_type = AuthType::from_file(v).ok_or_else(|| {
            let unsupported = matches!(v.to_ascii_lowercase().as_str(), "cert" | "pam" | "ldap");
            let why = if unsupported { ": a PgBouncer method pgmux does not support" } else { "" };
            s.err(
                "auth_type",
                format!("invalid value {v:?}{why} (expected trust, plain, md5, scram-sha-256, hba or any)"),
            )
        })?;
    }
    if let Some(f) = s.path("auth_file")? {
        p.auth_file = f;
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
    if let Some(d) = s.timeout("server_lifetime")? {
        p.server_lifetime = d;
    }
    if let Some(d) = s.timeout("idle_transaction_timeout")? {
        p.idle_transaction_timeout = d;
    }
    if let Some(d) = s.timeout("query_wait_timeout")? {
        p.query_wait_timeout = d;
    }
    if let Some(q) = s.string("server_reset_query")? {
        p.server_reset_query = q.to_string();
    }
    // Below a few kB even a startup packet would not fit; above i32::MAX the
    // wire format's length field cannot express it.
    if let Some(n) = s.int("max_packet_size", 1024, i32::MAX.into())? {
        p.max_packet_size = n as u32;
    }
    if let Some(f) = s.path("logfile")? {
        p.logfile = f;
    }
    if let Some(f) = s.path("pidfile")? {
        p.pidfile = f;
    }
    if let Some(u) = s.string("user")? {
        p.user = non_empty(u).map(str::to_string);
    }
    if let Some(n) = s.int("verbose", 0, 9)? {
        p.verbose = n as u8;
    }
    apply_limits(s, p)?;
    if let Some(v) = s.string("metrics_listen")? {
        p.metrics_listen = match v.trim() {
            "" => None,
            addr => {
                check_host_port(addr).map_err(|why| s.err("metrics_listen", why))?;
                Some(addr.to_string())
            }
        };
    }
    parse_stored(s, p)?;
    Ok(())
}

/// `host:port`, `ip:port` or `[ipv6]:port`, port 1 to 65535; the host is resolved when the socket is bound.
fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = |why: &str| format!("invalid value {addr:?} ({why}; expected host:port, e.g. \"127.0.0.1:9127\")");
    let Some((host, port)) = addr.rsplit_once(':') else { return Err(bad("no port")) };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("the port must be 1 to 65535"));
    }
    let host = match host.strip_prefix('[') {
        Some(inner) => match inner.strip_suffix(']') {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            _ => return Err(bad("bad IPv6 address")),
        },
        // An unbracketed IPv6 address cannot be told from its port.
        None if host.contains(':') => return Err(bad("write IPv6 addresses in brackets")),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("bad host"));
    }
    Ok(())
}

/// Pool sizes, connection limits and the dedicated lists (see `crate::pools` for how they combine with the
/// `[databases]` and `[users]` entries).
fn apply_limits(s: &Section<'_>, p: &mut Pooler) -> Result<(), ConfigError> {
    let size = |name: &str| -> Result<Option<u32>, ConfigError> {
        Ok(s.int(name, 0, MAX_POOL_SIZE.into())?.map(|n| n as u32))
    };
    let count =
        |name: &str| -> Result<Option<u32>, ConfigError> { Ok(s.int(name, 0, i32::MAX.into())?.map(|n| n as u32)) };
    if let Some(n) = size("min_pool_size")? {
        p.min_pool_size = n;
    }
    if let Some(n) = size("reserve_pool_size")? {
        p.reserve_pool_size = n;
    }
    if let Some(d) = s.timeout("reserve_pool_timeout")? {
        p.reserve_pool_timeout = d;
    }
    for (name, field) in [
        ("max_db_connections", &mut p.max_db_connections),
        ("max_db_client_connections", &mut p.max_db_client_connections),
        ("max_user_connections", &mut p.max_user_connections),
        ("max_user_client_connections", &mut p.max_user_client_connections),
    ] {
        if let Some(n) = count(name)? {
            *field = n;
        }
    }
    for (name, field) in
        [("dedicated_databases", &mut p.dedicated_databases), ("dedicated_users", &mut p.dedicated_users)]
    {
        if let Some(list) = s.name_list(name)? {
            *field = list;
        }
    }
    Ok(())
}

/// The keys pgmux parses with PgBouncer's meaning but does not act on yet.
fn parse_stored(s: &Section<'_>, p: &mut Pooler) -> Result<(), ConfigError> {
    for (name, field) in [
        ("server_idle_timeout", &mut p.server_idle_timeout),
        ("query_timeout", &mut p.query_timeout),
        ("client_idle_timeout", &mut p.client_idle_timeout),
        ("transaction_timeout", &mut p.transaction_timeout),
        ("cancel_wait_timeout", &mut p.cancel_wait_timeout),
    ] {
        if let Some(d) = s.timeout(name)? {
            *field = d;
        }
    }
    for (name, field) in [
        ("server_reset_query_always", &mut p.server_reset_query_always),
        ("server_fast_close", &mut p.server_fast_close),
        ("application_name_add_host", &mut p.application_name_add_host),
        ("so_reuseport", &mut p.so_reuseport),
    ] {
        if let Some(b) = s.bool(name)? {
            *field = b;
        }
    }
    if let Some(q) = s.string("server_check_query")? {
        p.server_check_query = match q {
            "" => None,
            "<empty>" => Some(String::new()),
            q => Some(q.to_string()),
        };
    }
    if let Some(d) = s.seconds("server_check_delay", 0.0)? {
        p.server_check_delay = d;
    }
    for (name, field) in [
        ("ignore_startup_parameters", &mut p.ignore_startup_parameters),
        ("admin_users", &mut p.admin_users),
        ("stats_users", &mut p.stats_users),
    ] {
        if let Some(list) = s.name_list(name)? {
            *field = list;
        }
    }
    // Averages need a window of at least a second (PgBouncer's minimum too).
    if let Some(d) = s.seconds("stats_period", 1.0)? {
        p.stats_period = d;
    }
    if let Some(f) = s.path("auth_hba_file")? {
        p.auth_hba_file = f;
    }
    if let Some(f) = s.path("auth_ident_file")? {
        p.auth_ident_file = f;
    }
    if let Some(u) = s.string("auth_user")? {
        p.auth_user = non_empty(u).map(str::to_string);
    }
    if let Some(q) = s.string("auth_query")? {
        p.auth_query = q.to_string();
    }
    if let Some(d) = s.string("auth_dbname")? {
        p.auth_dbname = non_empty(d).map(str::to_string);
    }
    if let Some(n) = s.int("listen_backlog", 1, i32::MAX.into())? {
        p.listen_backlog = n as u32;
    }
    Ok(())
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

pub(crate) fn pool_mode(s: &Section<'_>) -> Result<Option<PoolMode>, ConfigError> {
    match s.string("pool_mode")? {
        None | Some("") => Ok(None),
        Some(v) => PoolMode::from_file(v).map(Some).ok_or_else(|| {
            s.err("pool_mode", format!("invalid value {v:?} (expected session, transaction or statement)"))
        }),
    }
}

pub(crate) fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests;
