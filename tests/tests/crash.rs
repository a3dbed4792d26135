//! A worker's death costs at most the request it was serving: idle sessions keep their client connection, their
//! settings and their prepared statements, and go on at another worker (the supervisor holds a copy of each client
//! socket and the state the worker last reported). A session whose request was in flight sees its connection end,
//! never a silent success.

use std::time::Duration;

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

fn kill_all_workers(pgmux: &Pgmux) -> Vec<u32> {
    // The sessions' last replies have arrived; give the workers a moment to note they are idle (a worker killed
    // within microseconds of finishing a reply cannot tell the supervisor, which then treats it as in flight).
    std::thread::sleep(Duration::from_millis(50));
    let workers = pgmux.children("pgmux-worker");
    assert!(!workers.is_empty(), "no worker to kill");
    for &w in &workers {
        pgmux.kill(w, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(5), "the killed workers to be reaped", || {
        pgmux.children("pgmux-worker").iter().all(|p| !workers.contains(p))
    });
    workers
}

struct Idle {
    client: postgres::Client,
    stmt: postgres::Statement,
    work_mem: String,
    n: i32,
}

fn open_idle(pgmux: &Pgmux, n: i32) -> Idle {
    let mut client = pgmux.client("appdb", "alice");
    let work_mem = format!("{}kB", 5001 + n);
    client
        .batch_execute(&format!(
            "SET work_mem = '{work_mem}'; SET application_name = 'idle{n}'; PREPARE sq AS SELECT $1::int * {n}"
        ))
        .unwrap();
    let stmt = client.prepare(&format!("SELECT $1::int + {n}, current_setting('work_mem')")).unwrap();
    Idle { client, stmt, work_mem, n }
}

fn check_idle(s: &mut Idle) {
    let row = s.client.query_one(&s.stmt, &[&100]).unwrap_or_else(|e| panic!("session {} failed: {e}", s.n));
    assert_eq!(row.get::<_, i32>(0), 100 + s.n, "session {} got a wrong result", s.n);
    assert_eq!(row.get::<_, String>(1), s.work_mem, "session {} lost its work_mem", s.n);
    let app: String = s.client.query_one("SHOW application_name", &[]).unwrap().get(0);
    assert_eq!(app, format!("idle{}", s.n));
    let rows = s.client.simple_query("EXECUTE sq(3)").unwrap();
    let v = rows.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(v, Some((3 * s.n).to_string()), "session {} lost its SQL-level prepared statement", s.n);
}

/// The test: 30 idle sessions with settings and prepared statements, SIGKILL every worker, use all 30.
#[test]
fn idle_sessions_survive_every_worker_being_killed() {
    let pg = Postgres::shared();
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "4"));
    let mut sessions: Vec<Idle> = (0..30).map(|n| open_idle(&pgmux, n)).collect();
    for s in sessions.iter_mut() {
        check_idle(s);
    }
    let before = pgmux.children("pgmux-worker").len();
    assert!(before >= 2, "the sessions all went to one worker ({before})");
    let killed = kill_all_workers(&pgmux);

    with_deadline(&pgmux, Duration::from_secs(60), || {
        for s in sessions.iter_mut() {
            check_idle(s);
        }
        // And again, after every one of them has run on its new worker.
        for s in sessions.iter_mut() {
            check_idle(s);
        }
    });
    let log = pgmux.log();
    assert!(log.contains("idle session(s) moved to other workers"), "{log}");
    assert!(!log.contains("closing because: its worker died"), "an idle session was closed:\n{log}");
    wait_until(Duration::from_secs(5), "at most pool_size upstreams", || backends(pg, "appdb", "alice") <= 4);
    assert!(pgmux.children("pgmux-worker").iter().all(|p| !killed.contains(p)));
    // Twice in a row: the re-homed sessions are recoverable again.
    kill_all_workers(&pgmux);
    with_deadline(&pgmux, Duration::from_secs(60), || {
        for s in sessions.iter_mut() {
            check_idle(s);
        }
    });
}

/// A transaction open on the killed worker's upstream is gone: its session's connection ends (PostgreSQL rolled the
/// transaction back), and it never reports success. Idle sessions on the same worker carry on.
#[test]
fn open_transaction_on_a_killed_worker_fails_loudly() {
    let pg = Postgres::shared();
    pg.psql_admin("appdb", "CREATE TABLE IF NOT EXISTS crash_t (id int)");
    pg.psql_admin("appdb", "GRANT ALL ON crash_t TO alice");
    // Pool of 1: everyone shares the one worker.
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    let mut idle = open_idle(&pgmux, 1);
    let mut txn = pgmux.client("appdb", "alice");
    txn.batch_execute("BEGIN; INSERT INTO crash_t VALUES (777)").unwrap();
    kill_all_workers(&pgmux);
    let result = txn.batch_execute("INSERT INTO crash_t VALUES (778); COMMIT");
    assert!(result.is_err(), "a transaction whose upstream died reported success");
    with_deadline(&pgmux, Duration::from_secs(30), || check_idle(&mut idle));
    let n = pg.psql_admin("appdb", "SELECT count(*) FROM crash_t WHERE id IN (777, 778)");
    assert_eq!(n.trim(), "0", "rows of a lost transaction were committed");
    assert!(pgmux.log().contains("1 session(s) with a request in flight closed"), "{}", pgmux.log());
}

/// A query running when its worker dies: the client gets an error, not a hang or a result.
#[test]
fn running_query_on_a_killed_worker_fails_loudly() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    let mut idle = open_idle(&pgmux, 2);
    let mut busy = pgmux.client("appdb", "alice");
    with_deadline(&pgmux, Duration::from_secs(30), || {
        std::thread::scope(|scope| {
            let run = scope.spawn(move || busy.batch_execute("SELECT pg_sleep(3)"));
            std::thread::sleep(Duration::from_millis(500));
            kill_all_workers(&pgmux);
            let r = run.join().unwrap();
            assert!(r.is_err(), "a query whose worker died returned success");
        })
    });
    with_deadline(&pgmux, Duration::from_secs(30), || check_idle(&mut idle));
}

/// Listening sessions keep their channels across a worker's death.
#[test]
fn listening_session_survives_its_worker() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut listener = pgmux.client("appdb", "alice");
    listener.batch_execute("LISTEN crash_chan").unwrap();
    kill_all_workers(&pgmux);
    with_deadline(&pgmux, Duration::from_secs(30), || {
        listener.batch_execute("SELECT 1").unwrap();
        let mut talker = pgmux.client("appdb", "alice");
        talker.batch_execute("NOTIFY crash_chan, 'after'").unwrap();
        let mut got = None;
        for _ in 0..50 {
            listener.batch_execute("SELECT 1").unwrap();
            let mut notes = listener.notifications();
            let mut it = notes.iter();
            if let Ok(Some(n)) = postgres::fallible_iterator::FallibleIterator::next(&mut it) {
                got = Some(n.payload().to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(got.as_deref(), Some("after"), "the listener lost its channel");
    });
}
