//! What each pool runs with: the `[users]`, `[databases]` and `[pooler]` settings combined with PgBouncer's
//! precedence, and the limits that span pools (per database, per user).
//!
//! A pool serves one database name (as clients ask for it) and one user: the database's forced `user` when it has
//! one, else the client's own user, as PgBouncer keys its pools. Precedence (PgBouncer 1.25):
//! - `pool_mode`, `pool_size`, `reserve_pool_size`: the pool user's `[users]` entry, else the database's entry,
//!   else `[pooler]`;
//! - `min_pool_size` (capped at the pool size): the database's, else `[pooler]`'s;
//! - `query_wait_timeout`: the pool user's, else the database's, else `[pooler]`'s (as the worker's
//!   `worker/limits.rs` resolves it: an entry's value overrides when it differs from the global one, since parsing
//!   filled every entry with the global value);
//! - `max_db_connections`, `max_db_client_connections`: the database's (0 = `[pooler]`'s);
//! - `max_user_connections` (for the pool user), `max_user_client_connections` (for the client's user): the
//!   user's entry (0 = `[pooler]`'s).
//!
//! Dedicated pools (pgmux's `dedicated_databases` / `dedicated_users`) give each session a server connection of
//! its own: session pooling, no pool size, no limit, never shared.
//!
//! Everything is resolved on each call from the current [`Config`].

use std::time::Duration;

use crate::pooler::{Config, PoolMode};

/// One pool's settings, every fallback resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Server connections the pool keeps for its clients (never 0).
    pub pool_size: u32,
    pub pool_mode: PoolMode,
    /// Server connections kept open while the pool is in use (at most `pool_size`).
    pub min_pool_size: u32,
    /// Extra server connections once a client waited `reserve_pool_timeout`.
    pub reserve_pool_size: u32,
    /// None: the reserve is never used.
    pub reserve_pool_timeout: Option<Duration>,
    /// None: clients wait for a server for ever.
    pub query_wait_timeout: Option<Duration>,
    /// Every session has a server connection of its own (pgmux's `dedicated_databases` / `dedicated_users`).
    pub dedicated: bool,
}

impl Config {
    /// The user a pool of `database` serves for a client logged in as `client_user`: the database's forced `user`
    /// if it has one, else the client's.
    pub fn pool_user<'a>(&'a self, database: &str, client_user: &'a str) -> &'a str {
        match self.database(database).and_then(|db| db.user.as_deref()) {
            Some(forced) => forced,
            None => client_user,
        }
    }

    /// Whether a session of `database` for a client logged in as `client_user` gets a server connection of its own.
    pub fn is_dedicated(&self, database: &str, client_user: &str) -> bool {
        self.pooler.dedicated_databases.iter().any(|d| d == database)
            || self.pooler.dedicated_users.iter().any(|u| u == client_user)
    }

    /// The settings of the pool of `database` (the name clients ask for) and `pool_user` (see [`Config::pool_user`];
    /// for a dedicated pool, the client's user). None if no database entry serves `database`.
    pub fn pool_settings(&self, database: &str, pool_user: &str, dedicated: bool) -> Option<PoolSettings> {
        let db = self.database(database)?;
        let p = &self.pooler;
        if dedicated {
            return Some(PoolSettings {
                pool_size: 1,
                pool_mode: PoolMode::Session,
                min_pool_size: 0,
                reserve_pool_size: 0,
                reserve_pool_timeout: None,
                query_wait_timeout: None,
                dedicated: true,
            });
        }
        let user = self.user(pool_user);
        let pool_size = user.and_then(|u| u.pool_size).unwrap_or(db.pool_size).max(1);
        let global = p.query_wait_timeout;
        let query_wait_timeout = match user.map(|u| u.query_wait_timeout) {
            Some(v) if v != global => v,
            _ if db.query_wait_timeout != global => db.query_wait_timeout,
            _ => global,
        };
        Some(PoolSettings {
            pool_size,
            pool_mode: user.and_then(|u| u.pool_mode).unwrap_or(db.pool_mode),
            min_pool_size: db.min_pool_size.min(pool_size),
            reserve_pool_size: user.and_then(|u| u.reserve_pool_size).unwrap_or(db.reserve_pool_size),
            reserve_pool_timeout: p.reserve_pool_timeout,
            query_wait_timeout,
            dedicated: false,
        })
    }

    /// Server connections allowed for `database` over all its pools; 0 = unlimited.
    pub fn max_db_connections(&self, database: &str) -> u32 {
        self.database(database).map_or(self.pooler.max_db_connections, |db| db.max_db_connections)
    }

    /// Client connections allowed for `database`; 0 = unlimited.
    pub fn max_db_client_connections(&self, database: &str) -> u32 {
        self.database(database).map_or(self.pooler.max_db_client_connections, |db| db.max_db_client_connections)
    }

    /// Server connections allowed for pools of `user` over all databases; 0 = unlimited.
    pub fn max_user_connections(&self, user: &str) -> u32 {
        self.user(user).map_or(self.pooler.max_user_connections, |u| u.max_user_connections)
    }

    /// Client connections allowed for clients logged in as `user`; 0 = unlimited.
    pub fn max_user_client_connections(&self, user: &str) -> u32 {
        self.user(user).map_or(self.pooler.max_user_client_connections, |u| u.max_user_client_connections)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/pgmux/pooler.toml")).unwrap()
    }

    const FILE: &str = r#"
[pooler]
pool_mode = "transaction"
default_pool_size = 10
min_pool_size = 3
reserve_pool_size = 2
query_wait_timeout = 30
server_lifetime = 600
max_db_connections = 50
max_user_connections = 40
max_user_client_connections = 70
dedicated_users = "ops"

[databases.plain]
[databases.tuned]
pool_size = 4
pool_mode = "session"
min_pool_size = 8
reserve_pool = 1
server_lifetime = 60
query_wait_timeout = 0
max_db_connections = 5
max_db_client_connections = 9
[databases.forced]
user = "app"
max_db_connections = 0
[databases.opsdb]

[users.alice]
pool_mode = "statement"
pool_size = 7
reserve_pool_size = 0
query_wait_timeout = 3
max_user_connections = 2
max_user_client_connections = 0
"#;

    #[test]
    fn precedence_is_pgbouncers() {
        let c = config(
            &FILE.replace("dedicated_users = \"ops\"", "dedicated_users = \"ops\"\ndedicated_databases = \"opsdb\""),
        );
        let plain = c.pool_settings("plain", "bob", false).unwrap();
        assert_eq!(
            plain,
            PoolSettings {
                pool_size: 10,
                pool_mode: PoolMode::Transaction,
                min_pool_size: 3,
                reserve_pool_size: 2,
                reserve_pool_timeout: Some(Duration::from_secs(5)),
                query_wait_timeout: Some(Duration::from_secs(30)),
                dedicated: false,
            }
        );
        let tuned = c.pool_settings("tuned", "bob", false).unwrap();
        assert_eq!((tuned.pool_size, tuned.pool_mode, tuned.min_pool_size), (4, PoolMode::Session, 4), "min capped");
        assert_eq!(tuned.reserve_pool_size, 1);
        assert_eq!(tuned.query_wait_timeout, None, "0 in the database: wait for ever");
        // The user's entry wins over the database's for mode, size, reserve and query_wait_timeout.
        let alice = c.pool_settings("tuned", "alice", false).unwrap();
        assert_eq!((alice.pool_size, alice.pool_mode, alice.reserve_pool_size), (7, PoolMode::Statement, 0));
        assert_eq!((alice.min_pool_size, alice.query_wait_timeout), (7, Some(Duration::from_secs(3))), "min capped");
        // Limits: 0 in an entry means [pooler]'s value.
        assert_eq!((c.max_db_connections("tuned"), c.max_db_connections("forced")), (5, 50));
        assert_eq!((c.max_db_client_connections("tuned"), c.max_db_client_connections("plain")), (9, 0));
        assert_eq!((c.max_user_connections("alice"), c.max_user_connections("bob")), (2, 40));
        assert_eq!(c.max_user_client_connections("alice"), 70);
        assert_eq!(c.pool_settings("nope", "alice", false), None);
        // Forced users key the pool; dedicated users and databases get session-pooled connections of their own.
        assert_eq!((c.pool_user("forced", "bob"), c.pool_user("plain", "bob")), ("app", "bob"));
        assert!(c.is_dedicated("plain", "ops") && c.is_dedicated("opsdb", "bob") && !c.is_dedicated("plain", "bob"));
        let ops = c.pool_settings("plain", "ops", true).unwrap();
        assert_eq!(
            (ops.pool_mode, ops.min_pool_size, ops.reserve_pool_size, ops.dedicated),
            (PoolMode::Session, 0, 0, true)
        );
    }

    #[test]
    fn console_set_reaches_entries_without_their_own_value() {
        let c = config(FILE).with_setting("query_wait_timeout", "9").unwrap();
        let wait = |db: &str, user: &str| c.pool_settings(db, user, false).unwrap().query_wait_timeout;
        assert_eq!(wait("plain", "bob"), Some(Duration::from_secs(9)));
        assert_eq!(wait("tuned", "bob"), None);
        assert_eq!(wait("plain", "alice"), Some(Duration::from_secs(3)));
    }
}
