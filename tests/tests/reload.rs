//! Reload (SIGHUP) and the shutdown signals, against a real PostgreSQL.
//!
//! A reload that shrinks a pool drains the surplus workers: their sessions move to the remaining workers at their
//! next transaction boundary, keeping settings and prepared statements, and the pool ends at its new size. A reload
//! that changes a database's connection string retires every upstream of that pool the same way. A file that does
//! not load keeps the running configuration. SIGTERM waits for clients to leave; SIGINT lets transactions in flight
//! finish, then closes the sessions.

use std::time::Duration;

use pgmux_tests::util::{
    error_field, error_message, proc_stat, raw_login, raw_query, read_backend_message, wait_closed, wait_until,
};
use pgmux_tests::{Pgmux, PgmuxConfig, Postgres};

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

/// Sessions with their own setting and SQL-level prepared statement, one per index.
fn open_sessions(pgmux: &Pgmux, db: &str, user: &str, n: usize) -> Vec<postgres::Client> {
    (0..n)
        .map(|i| {
            let mut c = pgmux.client(db, user);
            c.batch_execute(&format!("SET work_mem = '{}kB'; PREPARE q AS SELECT {i} + $1::int", 1000 + i)).unwrap();
            c
        })
        .collect()
}

fn check_sessions(sessions: &mut [postgres::Client]) {
    for (i, c) in sessions.iter_mut().enumerate() {
        let wm: String = c.query_one("SHOW work_mem", &[]).unwrap().get(0);
        assert_eq!(wm, format!("{}kB", 1000 + i), "session {i} lost its setting");
        let rows = c.simple_query("EXECUTE q(1000)").unwrap();
        let v = rows.iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(v, Some((1000 + i).to_string()), "session {i} lost its prepared statement");
    }
}

/// Every session keeps one worker busy long enough that the pool grows to its size.
fn grow_pool(sessions: &mut [postgres::Client]) {
    std::thread::scope(|scope| {
        for c in sessions.iter_mut() {
            scope.spawn(move || c.batch_execute("SELECT pg_sleep(0.3)").unwrap());
        }
    });
}

#[test]
fn reload_shrinks_a_pool_without_dropping_sessions() {
    let pg = Postgres::shared();
    let config = PgmuxConfig::new().database("appdb", &[("dbname", "\"appdb\""), ("pool_size", "4")]);
    let mut pgmux = Pgmux::start(config.clone());
    let mut sessions = open_sessions(&pgmux, "appdb", "alice", 8);
    grow_pool(&mut sessions);
    assert_eq!(backends(pg, "appdb", "alice"), 4, "the pool did not grow to 4");
    // One session is inside a transaction when the reload arrives; it must be able to finish it.
    let mut in_txn = pgmux.client("appdb", "alice");
    in_txn
        .batch_execute("BEGIN; CREATE TEMP TABLE reload_t (x int) ON COMMIT DROP; INSERT INTO reload_t VALUES (1)")
        .unwrap();

    pgmux.reload(config.database("appdb", &[("dbname", "\"appdb\""), ("pool_size", "2")]));
    wait_until(Duration::from_secs(5), "the reload to be logged", || pgmux.log().contains("configuration reloaded"));
    // Sessions move as they reach a transaction boundary: keep them busy.
    check_sessions(&mut sessions);
    let n: i64 = in_txn.query_one("SELECT count(*) FROM reload_t", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    in_txn.batch_execute("COMMIT").unwrap();
    wait_until(Duration::from_secs(15), "the pool to shrink to 2 upstreams", || {
        check_sessions(&mut sessions);
        backends(pg, "appdb", "alice") == 2
    });
    assert_eq!(pgmux.children("pgmux-worker").len(), 2, "{}", pgmux.log());
    check_sessions(&mut sessions);
    // The smaller pool stays at its size under load.
    grow_pool(&mut sessions);
    assert_eq!(backends(pg, "appdb", "alice"), 2);
    let log = pgmux.log();
    assert!(log.contains("appdb/alice: pool_size 2, draining 2 worker(s)"), "{log}");
    assert!(!log.contains("lost"), "a session was lost:\n{log}");
}

#[test]
fn reload_with_a_new_connection_string_retires_the_upstreams() {
    let config = PgmuxConfig::new().database("appdb", &[("dbname", "\"appdb\""), ("pool_size", "2")]);
    let mut pgmux = Pgmux::start(config.clone());
    let mut sessions = open_sessions(&pgmux, "appdb", "alice", 4);
    let mut in_txn = pgmux.client("appdb", "alice");
    in_txn.batch_execute("BEGIN").unwrap();
    let db: String = in_txn.query_one("SELECT current_database()", &[]).unwrap().get(0);
    assert_eq!(db, "appdb");

    pgmux.reload(config.database("appdb", &[("dbname", "\"otherdb\""), ("pool_size", "2")]));
    wait_until(Duration::from_secs(5), "the reload to be logged", || pgmux.log().contains("configuration reloaded"));
    // The open transaction stays on its upstream until it ends.
    let db: String = in_txn.query_one("SELECT current_database()", &[]).unwrap().get(0);
    assert_eq!(db, "appdb", "a transaction changed upstream midway");
    in_txn.batch_execute("COMMIT").unwrap();
    // Every session reaches the new upstream at a transaction boundary, state intact.
    wait_until(Duration::from_secs(15), "every session to run on the new upstream", || {
        check_sessions(&mut sessions);
        sessions.iter_mut().chain(std::iter::once(&mut in_txn)).all(|c| {
            let db: String = c.query_one("SELECT current_database()", &[]).unwrap().get(0);
            db == "otherdb"
        })
    });
    let mut fresh = pgmux.client("appdb", "alice");
    let db: String = fresh.query_one("SELECT current_database()", &[]).unwrap().get(0);
    assert_eq!(db, "otherdb");
    let pg = Postgres::shared();
    wait_until(Duration::from_secs(10), "the old upstreams to close", || backends(pg, "appdb", "alice") == 0);
}

#[test]
fn reload_with_a_bad_file_keeps_the_running_configuration() {
    let config = PgmuxConfig::new();
    let mut pgmux = Pgmux::start(config.clone());
    let mut c = pgmux.client("appdb", "alice");
    c.simple_query("SELECT 1").unwrap();
    let listeners = pgmux.children("pgmux-listener");

    pgmux.reload_raw("[pooler]\nlisten_port = \"not a number\"\n");
    wait_until(Duration::from_secs(5), "the failed reload to be logged", || {
        pgmux.log().contains("reload failed, keeping the running configuration")
    });
    assert!(pgmux.log().contains("listen_port"), "the log does not say which key is wrong:\n{}", pgmux.log());
    assert_eq!(pgmux.children("pgmux-listener"), listeners, "a failed reload replaced the listeners");
    c.simple_query("SELECT 1").unwrap();
    pgmux.client("otherdb", "bob").simple_query("SELECT 1").unwrap();

    // A good file afterwards is taken, and new listeners run it: password auth for everyone from now on.
    pgmux.reload(config.set("auth_type", "\"md5\""));
    wait_until(Duration::from_secs(10), "new listeners", || {
        let now = pgmux.children("pgmux-listener");
        now.len() == 2 && now.iter().all(|p| !listeners.contains(p))
    });
    let Err(err) = pgmux.try_client("appdb", "alice", "wrong") else { panic!("md5 auth did not take effect") };
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"), "{err:?}");
    pgmux.try_client("appdb", "alice", "alicepw").expect("login with the password").simple_query("SELECT 1").unwrap();
    // The session from before the reload is untouched.
    c.simple_query("SELECT 1").unwrap();
}

#[test]
fn reload_removing_a_database_refuses_new_sessions_and_keeps_old_ones() {
    let config = PgmuxConfig::new().remove_database("*");
    let mut pgmux = Pgmux::start(config.clone());
    let mut old = pgmux.client("otherdb", "bob");
    old.simple_query("SELECT 1").unwrap();
    pgmux.reload(config.remove_database("otherdb"));
    wait_until(Duration::from_secs(5), "the reload", || pgmux.log().contains("configuration reloaded"));
    wait_until(Duration::from_secs(5), "otherdb to be refused", || {
        pgmux
            .try_client("otherdb", "bob", "bobpw")
            .is_err_and(|e| e.as_db_error().is_some_and(|d| d.code().code() == "3D000"))
    });
    old.simple_query("SELECT 1").expect("a session of a removed database was dropped");
    pgmux.client("appdb", "alice").simple_query("SELECT 1").unwrap();
}

/// SIGTERM is PgBouncer's "super safe" shutdown: no new clients, existing ones are served until they leave.
#[test]
fn sigterm_waits_for_clients_to_leave() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    let mut a = pgmux.client("appdb", "alice");
    let mut b = pgmux.client("otherdb", "bob");
    a.batch_execute("SET work_mem = '3MB'").unwrap();
    b.simple_query("SELECT 1").unwrap();
    let pid = pgmux.pid();
    pgmux.kill(pid, libc::SIGTERM);
    wait_until(Duration::from_secs(5), "new connections to be refused", || {
        pgmux.try_client("appdb", "alice", "").is_err()
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let wm: String = a.query_one("SHOW work_mem", &[]).unwrap().get(0);
        assert_eq!(wm, "3MB");
        b.simple_query("SELECT 1").expect("a session was dropped by SIGTERM");
    }
    assert!(proc_stat(pid).is_some_and(|(s, _, _)| s != 'Z'), "pgmux exited with clients connected");
    drop(a);
    b.simple_query("SELECT 2").unwrap();
    drop(b);
    wait_until(Duration::from_secs(10), "pgmux to exit after the last client left", || {
        proc_stat(pid).is_none_or(|(s, _, _)| s == 'Z')
    });
    let status = pgmux.stop();
    assert!(status.success(), "pgmux exited with {status}");
}

#[test]
fn second_sigterm_exits_at_once() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    let mut a = pgmux.client("appdb", "alice");
    a.simple_query("SELECT 1").unwrap();
    let pid = pgmux.pid();
    pgmux.kill(pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    a.simple_query("SELECT 1").unwrap();
    pgmux.kill(pid, libc::SIGTERM);
    wait_until(Duration::from_secs(5), "pgmux to exit on the second SIGTERM", || {
        proc_stat(pid).is_none_or(|(s, _, _)| s == 'Z')
    });
    assert!(a.simple_query("SELECT 1").is_err());
}

/// SIGINT is PgBouncer's "safe" shutdown: a transaction in flight finishes (and commits), idle sessions are told
/// and closed, then pgmux exits.
#[test]
fn sigint_lets_transactions_finish_then_closes_sessions() {
    let pg = Postgres::shared();
    pg.psql_admin("appdb", "CREATE TABLE IF NOT EXISTS sigint_t (id int)");
    pg.psql_admin("appdb", "GRANT ALL ON sigint_t TO alice");
    let pgmux = Pgmux::start(PgmuxConfig::new());
    let sock = pgmux.socket_dir().join(format!(".s.PGSQL.{}", pgmux.port()));
    assert!(sock.exists(), "no Unix socket at {}", sock.display());
    let mut txn = pgmux.client("appdb", "alice");
    txn.batch_execute("BEGIN; INSERT INTO sigint_t VALUES (42)").unwrap();
    let mut idle = raw_login(pgmux.port(), "bob", "otherdb");
    raw_query(&mut idle, "SELECT 1");
    let pid = pgmux.pid();

    pgmux.kill(pid, libc::SIGINT);
    let (tag, body) = read_backend_message(&mut idle).expect("idle client closed without an error message");
    assert_eq!(tag, b'E', "expected an ErrorResponse, got '{}'", tag as char);
    assert_eq!(error_field(&body, b'C').as_deref(), Some("57P01"), "{}", error_message(&body));
    assert!(wait_closed(&mut idle));
    // The transaction in flight is not cut short.
    assert!(proc_stat(pid).is_some_and(|(s, _, _)| s != 'Z'), "pgmux exited during a transaction");
    txn.batch_execute("INSERT INTO sigint_t VALUES (43); COMMIT").expect("the transaction in flight was cut");
    wait_until(Duration::from_secs(10), "pgmux to exit", || proc_stat(pid).is_none_or(|(s, _, _)| s == 'Z'));
    let n = pg.psql_admin("appdb", "SELECT count(*) FROM sigint_t WHERE id IN (42, 43)");
    assert_eq!(n.trim(), "2", "the committed rows are not there");
    assert!(txn.simple_query("SELECT 1").is_err(), "a session survived shutdown");
    assert!(!sock.exists(), "Unix socket {} left behind", sock.display());
    let status = pgmux.stop();
    assert!(status.success(), "pgmux exited with {status}");
}

/// systemd's `Type=notify` (PgBouncer's unit file): READY=1 once listening, RELOADING=1 then READY=1 around a
/// reload, STOPPING=1 at shutdown.
#[test]
fn systemd_notify_protocol() {
    let dir = pgmux_tests::util::temp_dir("pgmux-notify");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no sd_notify datagram");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut pgmux = Pgmux::start_with_env(PgmuxConfig::new(), &[("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))]);
    let ready = recv();
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    assert!(ready.contains(&format!("MAINPID={}", pgmux.pid())), "{ready:?}");
    pgmux.client("appdb", "alice").simple_query("SELECT 1").unwrap();
    let config = pgmux.config().clone();
    pgmux.reload(config);
    assert_eq!(recv(), "RELOADING=1");
    assert_eq!(recv(), "READY=1");
    let status = pgmux.stop();
    assert!(status.success());
    assert_eq!(recv(), "STOPPING=1");
    // The unit file shipped is PgBouncer's with the binary swapped.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pgmux.service")).unwrap();
    for line in
        ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGINT", "ExecStart=/usr/local/bin/pgmux"]
    {
        assert!(unit.contains(line), "pgmux.service lacks {line}");
    }
}
