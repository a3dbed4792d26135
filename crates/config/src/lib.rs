//! pgmux-config: the only code that knows pgmux's file formats.
//!
//! `pooler.toml` (key names are PgBouncer's) is read by [`Config`], the
//! PgBouncer-style `auth_file` (userlist.txt) by [`UserList`]. Both only read
//! the files they are given: validation never touches the network, so a
//! config that loads here is one the binary can start with. Every problem is
//! a [`ConfigError`] naming the file, the dotted key or line, and what is wrong.

mod error;
pub mod hba;
pub mod pooler;
pub mod settings;
pub mod userlist;
mod walk;

pub use hba::Hba;
pub use pooler::{AuthType, Config, ConfigError, Database, PoolMode, Pooler};
pub use userlist::{Secret, UserList};
