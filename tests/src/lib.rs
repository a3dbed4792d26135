//! Fixtures for pgmux's integration tests (`tests/tests/*.rs`): a throwaway
//! PostgreSQL 15 per test binary ([`Postgres::shared`]), the real pgmux binary
//! in front of it ([`Pgmux::start`] with a [`PgmuxConfig`]), raw-socket
//! helpers for input no driver would send ([`util`]), the checks the
//! robustness tests share ([`checks`]), and the chaos load with its durability
//! ledger ([`load`], also driven by `scripts/chaos`).
//!
//! Failures are loud: missing PostgreSQL binaries or a missing pgmux binary
//! panic with what to install or build; a failing test prints the ends of the
//! pgmux and PostgreSQL logs.

pub mod checks;
pub mod load;
pub mod pgmux;
pub mod postgres;
pub mod util;

pub use crate::pgmux::{with_deadline, Pgmux, PgmuxConfig, DEFAULT_USERS};
pub use crate::postgres::Postgres;
pub use crate::util::{error_message, free_port, raw_connect, read_backend_message, startup_packet, wait_until};
