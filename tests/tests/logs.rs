//! Log lines for logins, login failures, server connections and disconnections are worded like PgBouncer's, so log
//! alerts written for PgBouncer keep matching. The expected shapes are PgBouncer's own (as PgBouncer 1.18 from
//! Debian prints them), e.g.
//!
//! ```text
//! C-0x55e315bd3810: appdb/alice@127.0.0.1:40196 login attempt: db=appdb user=alice tls=no
//! S-0x55e315bdaef0: appdb/alice@127.0.0.1:25533 new connection to server (from 127.0.0.1:49728)
//! C-0x55e315bd3810: appdb/alice@127.0.0.1:40196 closing because: client close request (age=0s)
//! C-0x55e315bd3810: appdb/alice@127.0.0.1:40206 closing because: password authentication failed (age=0s)
//! C-0x55e315bd3810: appdb/alice@127.0.0.1:40206 pooler error: password authentication failed
//! ```

use std::time::Duration;

use pgmux_tests::util::wait_until;
use pgmux_tests::{Pgmux, PgmuxConfig, Postgres};

/// The log line containing `needle`, checked to have PgBouncer's "<C|S>-0x<hex>: db/user@host:port " prefix.
fn line_with(log: &str, kind: char, db_user: &str, needle: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(needle) && l.contains(&format!(": {db_user}@")))
        .unwrap_or_else(|| panic!("no log line with {needle:?} for {db_user}:\n{log}"));
    let prefix = format!("{kind}-0x");
    let start = line.find(&prefix).unwrap_or_else(|| panic!("no {prefix} name in {line:?}"));
    let rest = &line[start + prefix.len()..];
    let (hex, rest) = rest.split_once(": ").unwrap_or_else(|| panic!("no ': ' after the name in {line:?}"));
    assert!(!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()), "{line:?}");
    let (who, what) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    let (du, addr) = who.split_once('@').unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(du, db_user, "{line:?}");
    let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{line:?}"));
    assert!(host == "127.0.0.1" && port.parse::<u16>().is_ok(), "{line:?}");
    assert!(what.starts_with(needle), "{what:?} does not start with {needle:?}");
    line.to_string()
}

#[test]
fn log_lines_are_worded_like_pgbouncer() {
    Postgres::shared();
    let pgmux = Pgmux::start(PgmuxConfig::new().set("auth_type", "\"md5\""));
    let mut c = pgmux.try_client("appdb", "alice", "alicepw").expect("login");
    c.simple_query("SELECT 1").unwrap();
    drop(c);
    assert!(pgmux.try_client("appdb", "alice", "wrong").is_err());
    wait_until(Duration::from_secs(5), "the disconnect to be logged", || {
        pgmux.log().contains("closing because: client close request")
    });
    let log = pgmux.log();
    line_with(&log, 'C', "appdb/alice", "login attempt: db=appdb user=alice tls=no");
    let server = line_with(&log, 'S', "appdb/alice", "new connection to server (from 127.0.0.1:");
    assert!(server.ends_with(')'), "{server:?}");
    let close = line_with(&log, 'C', "appdb/alice", "closing because: client close request (age=");
    assert!(close.ends_with("s)"), "{close:?}");
    line_with(&log, 'C', "appdb/alice", "closing because: password authentication failed (age=");
    let err = line_with(&log, 'C', "appdb/alice", "pooler error: password authentication failed");
    assert!(err.contains("WARN"), "pooler errors are warnings: {err:?}");
}
