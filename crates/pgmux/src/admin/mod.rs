//! The admin console (database `pgbouncer`, also `pgmux`), PgBouncer's SHOW and control commands.
//!
//! The console runs in the listener that accepted the connection, because only listeners and workers may parse
//! what a client sends: `console` is the per-connection state machine, `command` parses a query into a command
//! (grammar, privileges and error messages as PgBouncer's), and `show` turns the supervisor's snapshot into
//! PgBouncer's result sets. The supervisor's side (gathering worker reports, pausing, killing, reloading) is
//! `supervisor/admin.rs`; the workers' side (counters, reports, pause) is `worker/stats.rs`.

pub mod command;
pub mod console;
pub mod show;

/// Database names that reach the console.
pub fn is_console_database(name: &str) -> bool {
    name == "pgbouncer" || name == "pgmux"
}

/// Whether a client on the Unix socket runs as the OS user running pgmux and asks for a console user name that
/// PgBouncer lets in that way ("pgbouncer"; also "pgmux" or the OS user's own name): then it needs no password.
pub fn is_own_user_over_unix(sock: &impl std::os::fd::AsFd, user: &str) -> bool {
    let Ok(cred) = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials) else {
        return false;
    };
    let me = nix::unistd::getuid();
    if cred.uid() != me.as_raw() {
        return false;
    }
    if user == "pgbouncer" || user == "pgmux" {
        return true;
    }
    matches!(nix::unistd::User::from_uid(me), Ok(Some(u)) if u.name == user)
}
