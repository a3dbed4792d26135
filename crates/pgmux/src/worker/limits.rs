//! The timeouts and server-connection checks one worker enforces, resolved once from the configuration for its pool
//! (PgBouncer's precedence: a `[users]` entry, then the `[databases]` entry, then `[pgbouncer]`/`[pooler]`).
//!
//! The config crate has already applied the global defaults to each database and user entry, so a per-entry value
//! that equals the global one is indistinguishable from "not set"; an override is a value that differs.

use std::time::Duration;

use pgmux_config::{Config, Database};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Retire the upstream after this long (drain, then exit).
    pub server_lifetime: Option<Duration>,
    /// Close an upstream nobody used for this long (sessions stay; it reconnects on demand).
    pub server_idle: Option<Duration>,
    /// A session waiting for the upstream this long gets an error.
    pub query_wait: Option<Duration>,
    /// An owner idle inside a transaction this long is disconnected.
    pub idle_transaction: Option<Duration>,
    /// A request running this long: its client is disconnected, the query cancelled.
    pub query: Option<Duration>,
    /// A transaction lasting this long (idle or not): its client is disconnected.
    pub transaction: Option<Duration>,
    /// A client idle between transactions this long is disconnected.
    pub client_idle: Option<Duration>,
    /// Run `server_check` on an upstream idle at least this long before handing it to a session.
    pub server_check_delay: Duration,
    /// `None`: no check; `Some("")`: an empty query.
    pub server_check: Option<String>,
    /// Run server_reset_query after every transaction, not only when a session-mode client leaves.
    pub reset_always: bool,
}

impl Timeouts {
    pub fn resolve(config: &Config, db: &Database, user: &str) -> Timeouts {
        let p = &config.pooler;
        let u = config.user(user);
        // A per-entry value overrides only when it differs from the global one it was defaulted from.
        let pick = |global: Option<Duration>, db_value: Option<Duration>, user_value: Option<Option<Duration>>| {
            match user_value {
                Some(v) if v != global => v,
                _ if db_value != global => db_value,
                _ => global,
            }
        };
        Timeouts {
            server_lifetime: pick(p.server_lifetime, db.server_lifetime, None),
            server_idle: p.server_idle_timeout,
            query_wait: pick(p.query_wait_timeout, db.query_wait_timeout, u.map(|u| u.query_wait_timeout)),
            idle_transaction: pick(
                p.idle_transaction_timeout,
                p.idle_transaction_timeout,
                u.map(|u| u.idle_transaction_timeout),
            ),
            query: pick(p.query_timeout, p.query_timeout, u.map(|u| u.query_timeout)),
            transaction: pick(p.transaction_timeout, p.transaction_timeout, u.map(|u| u.transaction_timeout)),
            client_idle: pick(p.client_idle_timeout, p.client_idle_timeout, u.map(|u| u.client_idle_timeout)),
            server_check_delay: p.server_check_delay,
            server_check: p.server_check_query.clone(),
            reset_always: p.server_reset_query_always,
        }
    }
}

/// Startup parameters a `[databases]` entry asks the server for (PgBouncer sends them in its startup packet).
pub fn upstream_startup_params(db: &Database) -> Vec<(String, String)> {
    [
        ("client_encoding", &db.client_encoding),
        ("DateStyle", &db.datestyle),
        ("TimeZone", &db.timezone),
        ("application_name", &db.application_name),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().filter(|v| !v.is_empty()).map(|v| (name.to_string(), v.clone())))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/pgmux/pooler.toml")).unwrap()
    }

    #[test]
    fn precedence_user_then_database_then_global() {
        let c = config(
            "[pooler]\nquery_wait_timeout = 30\nquery_timeout = 5\nclient_idle_timeout = 100\n\
             [databases.a]\nquery_wait_timeout = 20\nserver_lifetime = 50\n\
             [databases.b]\n\
             [users.alice]\nquery_wait_timeout = 10\nquery_timeout = 0\n",
        );
        let a = c.database("a").unwrap();
        let b = c.database("b").unwrap();
        let t = Timeouts::resolve(&c, a, "alice");
        assert_eq!(t.query_wait, Some(Duration::from_secs(10)), "user wins");
        assert_eq!(t.query, None, "user turns query_timeout off");
        assert_eq!(t.server_lifetime, Some(Duration::from_secs(50)), "database wins over global");
        assert_eq!(t.client_idle, Some(Duration::from_secs(100)), "global");
        let t = Timeouts::resolve(&c, a, "bob");
        assert_eq!(t.query_wait, Some(Duration::from_secs(20)), "database wins without a user entry");
        assert_eq!(t.query, Some(Duration::from_secs(5)));
        let t = Timeouts::resolve(&c, b, "bob");
        assert_eq!(t.query_wait, Some(Duration::from_secs(30)));
        assert_eq!(t.server_lifetime, Some(Duration::from_secs(3600)), "PgBouncer's default");
        assert_eq!(t.server_idle, Some(Duration::from_secs(600)), "PgBouncer's default");
    }

    #[test]
    fn startup_params_of_a_database() {
        let c = config("[databases.a]\nclient_encoding = \"LATIN1\"\ntimezone = \"UTC\"\napplication_name = \"\"\n");
        let p = upstream_startup_params(c.database("a").unwrap());
        assert_eq!(p, [("client_encoding".to_string(), "LATIN1".to_string()), ("TimeZone".into(), "UTC".into())]);
    }
}
