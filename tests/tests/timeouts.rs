//! The timeouts and server-connection settings a worker enforces, as PgBouncer's: query_timeout,
//! transaction_timeout, client_idle_timeout, server_idle_timeout, server_check_query/server_check_delay,
//! server_reset_query_always, and the per-database connect_query and startup parameters, application_name_add_host.

use std::time::{Duration, Instant};

use pgmux_tests::util::wait_until;
use pgmux_tests::{with_deadline, Pgmux, PgmuxConfig, Postgres};

fn backends(pg: &Postgres, db: &str, user: &str) -> usize {
    pg.psql_admin(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = '{user}' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ),
    )
    .trim()
    .parse()
    .unwrap_or(usize::MAX)
}

fn sqlstate(e: &postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("{e}"))
}

/// A sequence the test reads to count how often pgmux ran one of its own queries.
fn counter(pg: &Postgres, name: &str) -> i64 {
    pg.psql_admin("appdb", &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {name}"))
        .trim()
        .parse()
        .unwrap_or(-1)
}

fn make_counter(pg: &Postgres, name: &str) {
    pg.psql_admin(
        "appdb",
        &format!("DROP SEQUENCE IF EXISTS {name}; CREATE SEQUENCE {name}; GRANT ALL ON {name} TO alice"),
    );
}

#[test]
fn query_timeout_cancels_and_disconnects_only_that_client() {
    let pg = Postgres::shared();
    let pgmux = Pgmux::start(PgmuxConfig::new().set("query_timeout", "1").set("default_pool_size", "2"));
    let mut slow = pgmux.client("appdb", "alice");
    let mut other = pgmux.client("appdb", "alice");
    let started = Instant::now();
    let err = with_deadline(&pgmux, Duration::from_secs(20), || slow.batch_execute("SELECT pg_sleep(5)").unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(4), "query_timeout did not fire: {:?}", started.elapsed());
    // psql shows "FATAL: canceling statement due to query timeout (query_timeout)"; the Rust driver may report the
    // close that follows the FATAL instead.
    assert!(sqlstate(&err) == "57014" || err.is_closed(), "{err:?}");
    other.batch_execute("SELECT 1").expect("another session was affected");
    // The backend stopped sleeping (cancelled), and is clean for the next session.
    wait_until(Duration::from_secs(5), "pg_sleep to be gone", || {
        pg.psql_admin(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(5)%' AND state = 'active'",
        )
        .trim()
            == "0"
    });
    // Short queries are untouched.
    let mut c = pgmux.client("appdb", "alice");
    c.batch_execute("SELECT pg_sleep(0.2)").unwrap();
    assert!(pgmux.log().contains("closing because: query timeout"));
}

#[test]
fn transaction_timeout_ends_long_transactions() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("transaction_timeout", "1"));
    let mut c = pgmux.client("appdb", "alice");
    c.batch_execute("BEGIN; SELECT 1").unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    assert!(c.batch_execute("SELECT 1").is_err(), "a transaction outlived transaction_timeout");
    let mut d = pgmux.client("appdb", "alice");
    // Short transactions are fine.
    for _ in 0..3 {
        d.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
    }
    assert!(pgmux.log().contains("closing because: transaction timeout"));
}

#[test]
fn client_idle_timeout_closes_idle_clients_only() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("client_idle_timeout", "1"));
    let mut idle = pgmux.client("appdb", "alice");
    idle.batch_execute("SELECT 1").unwrap();
    let mut busy = pgmux.client("appdb", "alice");
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        busy.batch_execute("SELECT 1").expect("an active client was closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(idle.batch_execute("SELECT 1").is_err(), "an idle client outlived client_idle_timeout");
    assert!(pgmux.log().contains("closing because: client_idle_timeout"), "{}", pgmux.log());
}

#[test]
fn server_idle_timeout_closes_unused_upstreams_and_they_come_back() {
    let pg = Postgres::shared();
    let pgmux = Pgmux::start(PgmuxConfig::new().set("server_idle_timeout", "1").set("default_pool_size", "1"));
    let mut c = pgmux.client("otherdb", "bob");
    c.batch_execute("SET work_mem = '7000kB'").unwrap();
    assert_eq!(backends(pg, "otherdb", "bob"), 1);
    wait_until(Duration::from_secs(5), "the idle upstream to close", || backends(pg, "otherdb", "bob") == 0);
    // The session is still there, with its setting, on a new upstream.
    let wm: String = c.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(wm, "7000kB");
    assert_eq!(backends(pg, "otherdb", "bob"), 1);
    assert!(pgmux.log().contains("closing because: server idle timeout"));
}

#[test]
fn server_check_query_runs_after_server_check_delay() {
    let pg = Postgres::shared();
    make_counter(pg, "pgmux_check_seq");
    let pgmux = Pgmux::start(
        PgmuxConfig::new()
            .set("server_check_delay", "1")
            .set("server_check_query", "\"SELECT nextval('pgmux_check_seq')\"")
            .set("default_pool_size", "1"),
    );
    let mut c = pgmux.client("appdb", "alice");
    c.batch_execute("SELECT 1").unwrap();
    let first = counter(pg, "pgmux_check_seq");
    // In quick succession: no check.
    for _ in 0..5 {
        c.batch_execute("SELECT 1").unwrap();
    }
    assert_eq!(counter(pg, "pgmux_check_seq"), first, "checked although the upstream was just used");
    std::thread::sleep(Duration::from_millis(1300));
    c.batch_execute("SELECT 1").unwrap();
    assert_eq!(counter(pg, "pgmux_check_seq"), first + 1, "no check after server_check_delay");
}

#[test]
fn server_reset_query_always_runs_after_every_transaction() {
    let pg = Postgres::shared();
    make_counter(pg, "pgmux_reset_seq");
    let pgmux = Pgmux::start(
        PgmuxConfig::new()
            .set("server_reset_query", "\"SELECT nextval('pgmux_reset_seq')\"")
            .set("server_reset_query_always", "true")
            .set("default_pool_size", "1"),
    );
    let mut c = pgmux.client("appdb", "alice");
    c.batch_execute("SET work_mem = '6000kB'").unwrap();
    let before = counter(pg, "pgmux_reset_seq");
    for _ in 0..4 {
        c.batch_execute("SELECT 1").unwrap();
    }
    // Each transaction's end runs it once (the last one's may still be on its way).
    wait_until(Duration::from_secs(5), "four resets", || counter(pg, "pgmux_reset_seq") >= before + 4);
    let wm: String = c.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!(wm, "6000kB", "the session's setting did not survive the resets");
}

#[test]
fn connect_query_and_startup_parameters_of_a_database() {
    let pg = Postgres::shared();
    make_counter(pg, "pgmux_connect_seq");
    let pgmux = Pgmux::start(
        PgmuxConfig::new()
            .set("default_pool_size", "1")
            .set("server_idle_timeout", "1")
            .set("application_name_add_host", "true")
            .database(
                "appdb",
                &[
                    ("dbname", "\"appdb\""),
                    ("timezone", "\"Asia/Tokyo\""),
                    ("connect_query", "\"SELECT nextval('pgmux_connect_seq')\""),
                ],
            ),
    );
    let before = counter(pg, "pgmux_connect_seq");
    let mut c = pgmux.client("appdb", "alice");
    let tz: String = c.query_one("SHOW timezone", &[]).unwrap().get(0);
    assert_eq!(tz, "Asia/Tokyo", "the database's timezone was not asked for");
    assert_eq!(counter(pg, "pgmux_connect_seq"), before + 1, "connect_query did not run once");
    c.batch_execute("SELECT 1").unwrap();
    assert_eq!(counter(pg, "pgmux_connect_seq"), before + 1, "connect_query ran again on the same connection");
    // A new server connection runs it again.
    wait_until(Duration::from_secs(5), "the idle upstream to close", || backends(pg, "appdb", "alice") == 0);
    c.batch_execute("SELECT 1").unwrap();
    assert_eq!(counter(pg, "pgmux_connect_seq"), before + 2);
    // application_name_add_host: "name - host:port".
    let conn = format!("{} application_name=myapp", pgmux.conn_str("appdb", "alice", ""));
    let mut named = postgres::Client::connect(&conn, postgres::NoTls).unwrap();
    let app: String = named.query_one("SHOW application_name", &[]).unwrap().get(0);
    assert!(app.starts_with("myapp - 127.0.0.1:"), "{app}");
}
