//! The `[pooler]` settings as the admin console sees them: each key's current value rendered the way PgBouncer's
//! `SHOW CONFIG` renders it, its default, whether a running pgmux can change it (`SET key = value`), and applying
//! such a change with exactly the validation the file gets.
//!
//! A change made here reaches only the process that applies it; the binary decides who applies it (pgmux's
//! supervisor applies a SET and passes it on to every child).

use std::time::Duration;

use crate::error::ConfigError;
use crate::pooler::{Config, Pooler};
use crate::walk::Section;

/// Keys a running pgmux applies without a restart. The others need one: sockets are bound and children forked with
/// them (listen_*, unix_socket_dir, listeners), they are read once at start (logfile, pidfile, auth_file), or every
/// database's resolved pool size depends on them (default_pool_size, pool_mode).
const CHANGEABLE: &[&str] = &[
    "auth_type",
    "max_client_conn",
    "client_login_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "server_lifetime",
    "server_reset_query",
    "max_packet_size",
    "admin_users",
    "stats_users",
    "stats_period",
];

/// Keys whose value is an integer in the file; `SET` text for them must be one.
const INTEGER_KEYS: &[&str] = &["listen_port", "listeners", "default_pool_size", "max_client_conn", "max_packet_size"];
/// Keys holding seconds; `SET` text for them must be a number.
const SECONDS_KEYS: &[&str] = &[
    "client_login_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "server_lifetime",
    "stats_period",
];

/// One row of `SHOW CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    pub default: String,
    pub changeable: bool,
}

/// Whether `SET key = ...` may change `key` while pgmux runs.
pub fn is_changeable(key: &str) -> bool {
    CHANGEABLE.contains(&key)
}

/// Every `[pooler]` key with its current and default value, in file order.
pub fn settings(p: &Pooler) -> Vec<Setting> {
    let defaults = rendered(&Pooler::default());
    rendered(p)
        .into_iter()
        .zip(defaults)
        .map(|((key, value), (_, default))| Setting { key, value, default, changeable: is_changeable(key) })
        .collect()
}

/// Seconds as PgBouncer shows them: whole seconds without a fraction, otherwise with one.
fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_string(), secs)
}

fn path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

fn rendered(p: &Pooler) -> Vec<(&'static str, String)> {
    vec![
        ("listen_addr", p.listen_addr.join(",")),
        ("listen_port", p.listen_port.to_string()),
        ("unix_socket_dir", path(&p.unix_socket_dir)),
        ("listeners", p.listeners.to_string()),
        ("auth_type", p.auth_type.to_string()),
        ("auth_file", path(&p.auth_file)),
        ("pool_mode", p.pool_mode.to_string()),
        ("default_pool_size", p.default_pool_size.to_string()),
        ("max_client_conn", p.max_client_conn.to_string()),
        ("client_login_timeout", secs(p.client_login_timeout)),
        ("server_connect_timeout", secs(p.server_connect_timeout)),
        ("server_login_retry", secs(p.server_login_retry)),
        ("query_wait_timeout", opt_secs(p.query_wait_timeout)),
        ("idle_transaction_timeout", opt_secs(p.idle_transaction_timeout)),
        ("server_lifetime", opt_secs(p.server_lifetime)),
        ("server_reset_query", p.server_reset_query.clone()),
        ("max_packet_size", p.max_packet_size.to_string()),
        ("logfile", path(&p.logfile)),
        ("pidfile", path(&p.pidfile)),
        ("admin_users", p.admin_users.join(",")),
        ("stats_users", p.stats_users.join(",")),
        ("stats_period", secs(p.stats_period)),
        ("metrics_listen", p.metrics_listen.clone().unwrap_or_default()),
        ("min_pool_size", p.min_pool_size.to_string()),
        ("reserve_pool_size", p.reserve_pool_size.to_string()),
        ("reserve_pool_timeout", opt_secs(p.reserve_pool_timeout)),
        ("max_db_connections", p.max_db_connections.to_string()),
        ("max_db_client_connections", p.max_db_client_connections.to_string()),
        ("max_user_connections", p.max_user_connections.to_string()),
        ("max_user_client_connections", p.max_user_client_connections.to_string()),
        ("dedicated_databases", p.dedicated_databases.join(",")),
        ("dedicated_users", p.dedicated_users.join(",")),
    ]
}

/// Why a `SET` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    UnknownKey,
    /// The key exists but needs a restart.
    NotChangeable,
    /// The value is not valid for the key (the message names both).
    Invalid(String),
}

impl Config {
    /// This configuration with `[pooler]` `key` set from the console text `value`, validated as in the file.
    pub fn with_setting(&self, key: &str, value: &str) -> Result<Config, SetError> {
        if !rendered(&self.pooler).iter().any(|(k, _)| *k == key) {
            return Err(SetError::UnknownKey);
        }
        if !is_changeable(key) {
            return Err(SetError::NotChangeable);
        }
        let toml_value = if INTEGER_KEYS.contains(&key) {
            let n: i64 =
                value.trim().parse().map_err(|_| SetError::Invalid(format!("{key}: {value:?} is not an integer")))?;
            toml::Value::Integer(n)
        } else if SECONDS_KEYS.contains(&key) {
            let n: f64 = value
                .trim()
                .parse()
                .map_err(|_| SetError::Invalid(format!("{key}: {value:?} is not a number of seconds")))?;
            toml::Value::Float(n)
        } else {
            toml::Value::String(value.to_string())
        };
        let mut table = toml::Table::new();
        table.insert(key.to_string(), toml_value);
        let mut next = self.clone();
        let section = Section::new(&self.path, "pooler".into(), &table);
        crate::pooler::apply_pooler(&section, &mut next.pooler)
            .map_err(|e: ConfigError| SetError::Invalid(e.message))?;
        crate::auth::check_set(&next).map_err(SetError::Invalid)?;
        // Database and user entries carry the global value when they did not set their own: follow the change.
        let (old, new) = (&self.pooler, next.pooler.clone());
        for db in &mut next.databases {
            if db.server_lifetime == old.server_lifetime {
                db.server_lifetime = new.server_lifetime;
            }
            if db.query_wait_timeout == old.query_wait_timeout {
                db.query_wait_timeout = new.query_wait_timeout;
            }
        }
        for u in &mut next.users {
            for (field, was, now) in [
                (&mut u.query_timeout, old.query_timeout, new.query_timeout),
                (&mut u.query_wait_timeout, old.query_wait_timeout, new.query_wait_timeout),
                (&mut u.idle_transaction_timeout, old.idle_transaction_timeout, new.idle_transaction_timeout),
                (&mut u.transaction_timeout, old.transaction_timeout, new.transaction_timeout),
                (&mut u.client_idle_timeout, old.client_idle_timeout, new.client_idle_timeout),
            ] {
                if *field == was {
                    *field = now;
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(pooler: &str) -> Config {
        let text = format!("[pooler]\n{pooler}\n[databases.x]\nhost = \"h\"\n");
        Config::parse(&text, Path::new("/etc/pgmux/pooler.toml")).unwrap()
    }

    #[test]
    fn show_config_values_and_defaults() {
        let c = config("query_wait_timeout = 0\nadmin_users = \"a, b\"\nclient_login_timeout = 2.5");
        let rows = settings(&c.pooler);
        let get = |k: &str| rows.iter().find(|r| r.key == k).cloned().unwrap();
        assert_eq!(get("query_wait_timeout").value, "0");
        assert_eq!(get("query_wait_timeout").default, "120");
        assert_eq!(get("admin_users").value, "a,b");
        assert_eq!(get("client_login_timeout").value, "2.5");
        assert_eq!(get("listen_port").value, "6432");
        assert!(!get("listen_port").changeable);
        assert!(get("query_wait_timeout").changeable);
        assert_eq!(get("stats_period").default, "60");
        assert_eq!(rows.first().map(|r| r.key), Some("listen_addr"));
    }

    #[test]
    fn set_applies_with_file_validation() {
        let c = config("");
        let c2 = c.with_setting("query_wait_timeout", "5").unwrap();
        assert_eq!(c2.pooler.query_wait_timeout, Some(Duration::from_secs(5)));
        let c3 = c2.with_setting("query_wait_timeout", "0").unwrap();
        assert_eq!(c3.pooler.query_wait_timeout, None);
        let c4 = c.with_setting("stats_users", "alice,bob").unwrap();
        assert_eq!(c4.pooler.stats_users, vec!["alice", "bob"]);
        let c5 = c.with_setting("max_client_conn", "7").unwrap();
        assert_eq!(c5.pooler.max_client_conn, 7);
        // Other keys are untouched (auth_file is not cleared by setting something else).
        let c6 = config("auth_file = \"/u.txt\"").with_setting("server_reset_query", "").unwrap();
        assert_eq!(c6.pooler.auth_file, Some(std::path::PathBuf::from("/u.txt")));
        assert_eq!(c6.pooler.server_reset_query, "");
    }

    #[test]
    fn set_refusals() {
        let c = config("");
        assert_eq!(c.with_setting("nope", "1").unwrap_err(), SetError::UnknownKey);
        assert_eq!(c.with_setting("listen_port", "1").unwrap_err(), SetError::NotChangeable);
        assert!(matches!(c.with_setting("max_client_conn", "x"), Err(SetError::Invalid(_))));
        assert!(matches!(c.with_setting("max_client_conn", "0"), Err(SetError::Invalid(_))));
        assert!(matches!(c.with_setting("auth_type", "bogus"), Err(SetError::Invalid(_))));
        assert!(matches!(c.with_setting("stats_period", "0"), Err(SetError::Invalid(_))));
        assert!(matches!(c.with_setting("admin_users", "a,,b"), Err(SetError::Invalid(_))));
    }
}
