//! Every setting PgBouncer 1.25 documents, and what pgmux does with each.
//!
//! A key is **applied** (pgmux acts on it), **stored** (parsed into a [`crate::Pooler`], [`crate::Database`] or
//! [`crate::User`] field that later work will act on; until then setting it is reported as having no effect yet),
//! or **ignored** (accepted, its value checked, and reported as having no effect, with the reason). A key not listed
//! here is an error, as it is for PgBouncer. A value that already describes what pgmux does (`so_reuseport = 0`,
//! `client_tls_sslmode = disable`) is not reported. When a stored key becomes applied, change its [`Effect`] here;
//! the README's key table follows this list.

use crate::walk::{parse_bool, Raw, Section};

/// What pgmux does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Applied,
    Stored,
    Ignored(&'static str),
}

/// The type of an ignored key's value, checked so that a file PgBouncer would refuse is refused here too.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Int,
    Bool,
    Seconds,
    Text,
    OneOf(&'static [&'static str]),
}

/// Values that need no warning, because pgmux behaves that way anyway.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inert {
    /// Every value is worth a warning.
    Never,
    /// 0, off, or empty.
    Off,
    /// One of these (case-insensitive).
    Is(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub effect: Effect,
    pub inert: Inert,
}

const fn key(name: &'static str, kind: Kind, effect: Effect, inert: Inert) -> Key {
    Key { name, kind, effect, inert }
}

use Effect::{Applied, Ignored, Stored};
use Inert::{Never, Off};
use Kind::{Bool, Int, OneOf, Seconds, Text};

const TLS: &str = "pgmux does not speak TLS (it answers SSLRequest with N and connects to PostgreSQL without TLS)";
const DNS: &str = "host names are resolved by the system resolver at each server connect";
const SOCKET: &str = "pgmux leaves this socket option at the operating system's default";
const LOGGING: &str = "pgmux logs logins and disconnections with -v, errors always";
const SYSLOG: &str = "pgmux logs to stderr or to logfile, not to syslog";
const WINDOWS: &str = "Windows service names";
const SSLMODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// `[pgbouncer]` in pgbouncer.ini, `[pooler]` in pooler.toml.
pub(crate) const POOLER: &[Key] = &[
    // Applied.
    key("listen_addr", Text, Applied, Never),
    key("listen_port", Int, Applied, Never),
    key("unix_socket_dir", Text, Applied, Never),
    key("listeners", Int, Applied, Never),
    // pgmux's own: the Prometheus endpoint.
    key("metrics_listen", Text, Applied, Never),
    key("auth_type", Text, Applied, Never),
    key("auth_file", Text, Applied, Never),
    key("pool_mode", Text, Applied, Never),
    key("default_pool_size", Int, Applied, Never),
    key("max_client_conn", Int, Applied, Never),
    key("client_login_timeout", Seconds, Applied, Never),
    key("server_connect_timeout", Seconds, Applied, Never),
    key("server_login_retry", Seconds, Applied, Never),
    key("query_wait_timeout", Seconds, Applied, Never),
    key("idle_transaction_timeout", Seconds, Applied, Never),
    key("server_lifetime", Seconds, Applied, Never),
    key("server_reset_query", Text, Applied, Never),
    key("max_packet_size", Int, Applied, Never),
    key("logfile", Text, Applied, Never),
    key("pidfile", Text, Applied, Never),
    key("user", Text, Applied, Never),
    key("verbose", Int, Applied, Never),
    key("min_pool_size", Int, Applied, Off),
    key("reserve_pool_size", Int, Applied, Off),
    key("reserve_pool_timeout", Seconds, Applied, Never),
    key("max_db_connections", Int, Applied, Off),
    key("max_db_client_connections", Int, Applied, Off),
    key("max_user_connections", Int, Applied, Off),
    key("max_user_client_connections", Int, Applied, Off),
    // pgmux's own: sessions of these get a server connection of their own, outside every limit.
    key("dedicated_databases", Text, Applied, Off),
    key("dedicated_users", Text, Applied, Off),
    // Stored: clear meanings later work will implement.
    key("server_idle_timeout", Seconds, Applied, Off),
    key("query_timeout", Seconds, Applied, Off),
    key("client_idle_timeout", Seconds, Applied, Off),
    key("transaction_timeout", Seconds, Applied, Off),
    key("cancel_wait_timeout", Seconds, Stored, Never),
    key("server_reset_query_always", Bool, Applied, Off),
    key("server_check_query", Text, Applied, Never),
    key("server_check_delay", Seconds, Applied, Never),
    key("server_fast_close", Bool, Stored, Off),
    key(
        "ignore_startup_parameters",
        Text,
        Ignored("pgmux accepts every startup parameter and keeps it as a session setting"),
        Off,
    ),
    key("application_name_add_host", Bool, Applied, Off),
    key("admin_users", Text, Applied, Off),
    key("stats_users", Text, Applied, Off),
    key("stats_period", Int, Applied, Never),
    key("auth_hba_file", Text, Applied, Off),
    key("auth_ident_file", Text, Stored, Off),
    key("auth_user", Text, Applied, Off),
    key("auth_query", Text, Applied, Never),
    key("auth_dbname", Text, Applied, Off),
    key("so_reuseport", Bool, Stored, Off),
    key("listen_backlog", Int, Stored, Never),
    // Ignored.
    key("unix_socket_mode", Text, Ignored("the Unix socket keeps the mode pgmux creates it with"), Never),
    key("unix_socket_group", Text, Ignored("the Unix socket keeps the group pgmux creates it with"), Off),
    key(
        "server_round_robin",
        Bool,
        Ignored("each worker holds one server connection; pgmux picks the least busy worker"),
        Off,
    ),
    key("track_extra_parameters", Text, Ignored("pgmux tracks every setting of every session"), Never),
    key(
        "peer_id",
        Int,
        Ignored("pgmux does not peer with other poolers; one pgmux routes its own cancel requests"),
        Off,
    ),
    key("disable_pqexec", Bool, Ignored("pgmux always accepts the simple query protocol"), Off),
    key("conffile", Text, Ignored("pgmux reads the file named on its command line"), Never),
    key("service_name", Text, Ignored(WINDOWS), Never),
    key("job_name", Text, Ignored(WINDOWS), Never),
    key(
        "max_prepared_statements",
        Int,
        Ignored("pgmux tracks every prepared statement of every session, without a cap"),
        Never,
    ),
    key("scram_iterations", Int, Ignored("pgmux uses the iteration count of the stored SCRAM secret"), Never),
    key("auth_ldap_options", Text, Ignored("pgmux has no LDAP authentication"), Off),
    key("syslog", Bool, Ignored(SYSLOG), Off),
    key("syslog_ident", Text, Ignored(SYSLOG), Never),
    key("syslog_facility", Text, Ignored(SYSLOG), Never),
    key("log_connections", Bool, Ignored(LOGGING), Never),
    key("log_disconnections", Bool, Ignored(LOGGING), Never),
    key("log_pooler_errors", Bool, Ignored(LOGGING), Never),
    key("log_stats", Bool, Ignored("pgmux writes no periodic statistics to the log"), Off),
    key("autodb_idle_timeout", Seconds, Ignored("pools of the * entry are kept like any other pool"), Never),
    key("pool_idle_timeout", Seconds, Ignored("pgmux keeps empty pools"), Off),
    key("dns_max_ttl", Seconds, Ignored(DNS), Never),
    key("dns_nxdomain_ttl", Seconds, Ignored(DNS), Never),
    key("dns_zone_check_period", Seconds, Ignored(DNS), Off),
    key("resolv_conf", Text, Ignored(DNS), Off),
    key("query_wait_notify", Seconds, Ignored("pgmux sends no notice to clients that wait"), Off),
    key("login_notify_message", Text, Ignored("pgmux sends no welcome notice"), Off),
    key("suspend_timeout", Seconds, Ignored("pgmux has no SUSPEND and no online restart"), Never),
    key("client_tls_sslmode", OneOf(SSLMODES), Ignored(TLS), Inert::Is(&["disable"])),
    key("client_tls_key_file", Text, Ignored(TLS), Off),
    key("client_tls_cert_file", Text, Ignored(TLS), Off),
    key("client_tls_ca_file", Text, Ignored(TLS), Off),
    key("client_tls_protocols", Text, Ignored(TLS), Never),
    key("client_tls_ciphers", Text, Ignored(TLS), Never),
    key("client_tls13_ciphers", Text, Ignored(TLS), Off),
    key("client_tls_ecdhcurve", Text, Ignored(TLS), Never),
    key("client_tls_dheparams", Text, Ignored(TLS), Never),
    key("server_tls_sslmode", OneOf(SSLMODES), Ignored(TLS), Inert::Is(&["disable"])),
    key("server_tls_ca_file", Text, Ignored(TLS), Off),
    key("server_tls_key_file", Text, Ignored(TLS), Off),
    key("server_tls_cert_file", Text, Ignored(TLS), Off),
    key("server_tls_protocols", Text, Ignored(TLS), Never),
    key("server_tls_ciphers", Text, Ignored(TLS), Never),
    key("server_tls13_ciphers", Text, Ignored(TLS), Off),
    key("pkt_buf", Int, Ignored("pgmux sizes its buffers by message"), Never),
    key("sbuf_loopcnt", Int, Ignored("a pgmux worker serves one session's turn at a time"), Never),
    key("tcp_defer_accept", Int, Ignored(SOCKET), Off),
    key("tcp_socket_buffer", Int, Ignored(SOCKET), Off),
    key("tcp_keepalive", Bool, Ignored(SOCKET), Off),
    key("tcp_keepcnt", Int, Ignored(SOCKET), Off),
    key("tcp_keepidle", Int, Ignored(SOCKET), Off),
    key("tcp_keepintvl", Int, Ignored(SOCKET), Off),
    key("tcp_user_timeout", Int, Ignored(SOCKET), Off),
];

/// The connection string of a `[databases]` entry (a `[databases.NAME]` table in pooler.toml).
pub(crate) const DATABASE: &[Key] = &[
    key("host", Text, Applied, Never),
    key("port", Int, Applied, Never),
    key("dbname", Text, Applied, Never),
    key("user", Text, Applied, Never),
    key("password", Text, Applied, Never),
    key("pool_size", Int, Applied, Never),
    key("pool_mode", Text, Applied, Never),
    key("min_pool_size", Int, Applied, Off),
    key("reserve_pool_size", Int, Applied, Off),
    key("reserve_pool", Int, Applied, Off),
    key("max_db_connections", Int, Applied, Off),
    key("max_db_client_connections", Int, Applied, Off),
    key("server_lifetime", Seconds, Applied, Never),
    key("query_wait_timeout", Seconds, Applied, Never),
    key("client_encoding", Text, Applied, Never),
    key("datestyle", Text, Applied, Never),
    key("timezone", Text, Applied, Never),
    key("application_name", Text, Applied, Never),
    key("connect_query", Text, Applied, Never),
    key("auth_user", Text, Applied, Never),
    key("auth_query", Text, Applied, Never),
    key("auth_dbname", Text, Applied, Never),
    key("load_balance_hosts", OneOf(&["round-robin", "disable"]), Ignored("pgmux takes one host per database"), Never),
    key(
        "target_session_attrs",
        OneOf(&["any", "read-write", "read-only", "primary", "standby"]),
        Ignored("pgmux accepts any server"),
        Inert::Is(&["any"]),
    ),
];

/// A `[users]` entry (a `[users.NAME]` table in pooler.toml).
pub(crate) const USER: &[Key] = &[
    key("pool_mode", Text, Applied, Never),
    key("pool_size", Int, Applied, Never),
    key("reserve_pool_size", Int, Applied, Never),
    key("max_user_connections", Int, Applied, Off),
    key("max_user_client_connections", Int, Applied, Off),
    key("query_timeout", Seconds, Applied, Never),
    key("query_wait_timeout", Seconds, Applied, Never),
    key("idle_transaction_timeout", Seconds, Applied, Never),
    key("transaction_timeout", Seconds, Applied, Never),
    key("client_idle_timeout", Seconds, Applied, Never),
];

/// A `[peers]` entry: pgmux does not peer, so all of it is ignored (and checked).
pub(crate) const PEER: &[Key] = &[
    key("host", Text, Ignored(PEERS), Never),
    key("port", Int, Ignored(PEERS), Never),
    key("pool_size", Int, Ignored(PEERS), Never),
];

pub(crate) const PEERS: &str = "pgmux does not forward cancel requests to peers";

/// The names of `keys`.
pub(crate) fn names(keys: &[Key]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

/// Checks the type of every ignored key present in `s`, and reports each stored or ignored key whose value is not
/// inert. Applied and stored keys are parsed (and checked) by their readers.
pub(crate) fn check_and_report(
    s: &Section<'_>,
    keys: &[Key],
    warnings: &mut Vec<crate::Warning>,
) -> Result<(), crate::ConfigError> {
    for name in s.keys() {
        let Some(k) = keys.iter().find(|k| k.name == name) else { continue };
        let Some(raw) = s.raw(name) else { continue };
        if let Effect::Ignored(_) = k.effect {
            check_kind(s, k)?;
        }
        if inert(k.inert, raw) {
            continue;
        }
        match k.effect {
            Effect::Applied => {}
            Effect::Stored => warnings.push(s.warning(name, "has no effect in pgmux yet (accepted, not acted on)")),
            Effect::Ignored(why) => warnings.push(s.warning(name, format!("has no effect in pgmux: {why}"))),
        }
    }
    Ok(())
}

fn check_kind(s: &Section<'_>, k: &Key) -> Result<(), crate::ConfigError> {
    match k.kind {
        Kind::Int => s.int(k.name, i64::from(i32::MIN), i64::from(i32::MAX)).map(drop),
        Kind::Bool => s.bool(k.name).map(drop),
        Kind::Seconds => s.seconds(k.name, 0.0).map(drop),
        Kind::Text => s.string(k.name).map(drop),
        Kind::OneOf(allowed) => match s.string(k.name)? {
            Some(v) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) => {
                Err(s.err(k.name, format!("invalid value {v:?} (expected one of: {})", allowed.join(", "))))
            }
            _ => Ok(()),
        },
    }
}

fn inert(inert: Inert, raw: Raw<'_>) -> bool {
    match (inert, raw) {
        (Inert::Never, _) => false,
        (Inert::Off, Raw::Text(t)) => {
            t.trim().is_empty() || parse_bool(t) == Some(false) || t.trim().parse::<f64>().is_ok_and(|f| f == 0.0)
        }
        (Inert::Off, Raw::Toml(v)) => match v {
            toml::Value::Integer(i) => *i == 0,
            toml::Value::Float(f) => *f == 0.0,
            toml::Value::Boolean(b) => !*b,
            toml::Value::String(s) => s.is_empty(),
            toml::Value::Array(a) => a.is_empty(),
            _ => false,
        },
        (Inert::Is(values), Raw::Text(t)) => values.iter().any(|v| v.eq_ignore_ascii_case(t.trim())),
        (Inert::Is(values), Raw::Toml(toml::Value::String(t))) => values.iter().any(|v| v.eq_ignore_ascii_case(t)),
        (Inert::Is(_), Raw::Toml(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_listed_twice() {
        for table in [POOLER, DATABASE, USER, PEER] {
            let mut names = names(table);
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "duplicate key in {names:?}");
        }
    }
}
