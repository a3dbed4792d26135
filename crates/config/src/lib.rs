//! pgmux-config: the only code that knows pgmux's file formats.
//!
//! The configuration is read by [`Config`] from either `pooler.toml` (pgmux's own format, key names PgBouncer's) or
//! PgBouncer's `pgbouncer.ini` (with `%include`, `[databases]` connection strings, `[users]` and `[peers]`); both
//! produce the same [`Config`]. The PgBouncer-style `auth_file` (userlist.txt) is read by [`UserList`]. Both only
//! read the files they are given: validation never touches the network, so a config that loads here is one the
//! binary can start with. Every problem is a [`ConfigError`] naming the file, the line when there is one, the dotted
//! key, and what is wrong; every setting accepted without effect is a [`Warning`] in [`Config::warnings`].

mod auth;
mod connstr;
mod databases;
mod error;
pub mod hba;
mod ini;
mod keys;
pub mod pooler;
mod pools;
pub mod settings;
pub mod userlist;
mod walk;

pub use hba::Hba;
pub use pooler::{AuthType, Config, ConfigError, Database, Format, PoolMode, Pooler, User, Warning};
pub use pools::PoolSettings;
pub use userlist::{Secret, UserList};
