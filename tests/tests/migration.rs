//! Sessions are not stuck behind a busy upstream: a session waiting on a worker whose upstream is held by another
//! session's idle transaction moves to another worker of its pool, carrying its settings and prepared statements.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::NoTls;

use postgres::fallible_iterator::FallibleIterator;

use pgmux_tests::{with_deadline, Pgmux, PgmuxConfig, Postgres};

fn backend_pids(pg: &Postgres, db: &str, user: &str) -> usize {
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

/// One session idles inside a transaction for the whole test; ten others, some of which share its worker, each
/// run twenty queries with their own settings and prepared statements, and all finish while it still idles.
#[test]
fn sessions_do_not_wait_behind_an_idle_transaction() {
    let pg = Postgres::shared();
    pg.psql_admin("otherdb", "CREATE TABLE IF NOT EXISTS mig_t (id int PRIMARY KEY, v int)");
    pg.psql_admin("otherdb", "INSERT INTO mig_t VALUES (1, 0) ON CONFLICT DO NOTHING");
    pg.psql_admin("otherdb", "GRANT ALL ON mig_t TO bob");
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut holder = pgmux.client("otherdb", "bob");
    holder.batch_execute("BEGIN; UPDATE mig_t SET v = v + 1 WHERE id = 1").unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    let results: Vec<(i32, Vec<i32>)> = with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|i: i32| {
                    let pgmux = &pgmux;
                    scope.spawn(move || {
                        let mut c = pgmux.client("otherdb", "bob");
                        c.batch_execute(&format!("SET work_mem = '{}kB'", 2001 + i)).unwrap();
                        let stmt = c.prepare(&format!("SELECT $1::int + {i}, current_setting('work_mem')")).unwrap();
                        let mut pids = Vec::new();
                        for q in 0..20 {
                            let row = c.query_one(&stmt, &[&q]).unwrap();
                            assert_eq!(row.get::<_, i32>(0), q + i, "session {i} got another's result");
                            let wm: String = row.get(1);
                            assert_eq!(wm, format!("{}kB", 2001 + i), "session {i} lost its work_mem");
                            let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                            pids.push(pid);
                        }
                        (i, pids)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    });
    for (i, pids) in &results {
        assert!(!pids.contains(&holder_pid), "session {i} ran on the backend held by the open transaction");
    }
    // The holder's transaction is intact and still its own.
    let v: i32 = holder.query_one("SELECT v FROM mig_t WHERE id = 1", &[]).unwrap().get(0);
    holder.batch_execute("COMMIT").unwrap();
    let after: i32 = pgmux.client("otherdb", "bob").query_one("SELECT v FROM mig_t WHERE id = 1", &[]).unwrap().get(0);
    assert_eq!(after, v);
    assert!(backend_pids(pg, "otherdb", "bob") <= 2, "more upstreams than the pool size");
    assert!(pgmux.log().contains("moving to another worker"), "no session moved (the fixture runs pgmux with -v)");
}

/// A slow query holds one upstream for seconds; sessions queued behind it on the same worker move to the idle
/// sibling instead of waiting (the earlier built-in pooler kept them pinned to the busy backend).
#[test]
fn sessions_do_not_wait_behind_a_slow_query() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut slow = pgmux.client("appdb", "alice");
    let slow_pid: i32 = slow.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // Ten sessions, created before the slow query starts so about half share its worker.
    let mut others: Vec<postgres::Client> = (0..10).map(|_| pgmux.client("appdb", "alice")).collect();
    for (i, c) in others.iter_mut().enumerate() {
        c.batch_execute(&format!("SET work_mem = '{}kB'", 3001 + i)).unwrap();
    }
    let started = std::time::Instant::now();
    with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            let slow_run = scope.spawn(move || {
                slow.batch_execute("SELECT pg_sleep(4)").unwrap();
                started.elapsed()
            });
            std::thread::sleep(Duration::from_millis(200));
            let handles: Vec<_> = others
                .iter_mut()
                .enumerate()
                .map(|(i, c)| {
                    scope.spawn(move || {
                        for q in 0..20 {
                            let row = c
                                .query_one("SELECT $1::int, current_setting('work_mem'), pg_backend_pid()", &[&q])
                                .unwrap();
                            assert_eq!(row.get::<_, i32>(0), q);
                            assert_eq!(
                                row.get::<_, String>(1),
                                format!("{}kB", 3001 + i),
                                "session {i} lost its work_mem"
                            );
                            assert_ne!(row.get::<_, i32>(2), slow_pid, "session {i} ran on the busy backend");
                        }
                        started.elapsed()
                    })
                })
                .collect();
            let finished: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let slow_done = slow_run.join().unwrap();
            let last = finished.iter().max().copied().unwrap_or_default();
            eprintln!("others finished after {last:?}; the slow query after {slow_done:?}");
            assert!(last < Duration::from_secs(3), "sessions waited behind the slow query: {finished:?}");
        })
    });
    assert!(pgmux.log().contains("upstream busy with a long turn"), "no session moved:\n{}", pgmux.log());
}

/// A moved session keeps SQL-level prepared statements and its cancel key works wherever it is.
#[test]
fn moved_session_keeps_sql_prepared_statements() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut holder = pgmux.client("appdb", "alice");
    holder.batch_execute("BEGIN; SELECT 1").unwrap();
    with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            for i in 0..6 {
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "alice");
                    c.batch_execute(&format!("PREPARE p AS SELECT {i} AS v")).unwrap();
                    for _ in 0..10 {
                        let rows = c.simple_query("EXECUTE p").unwrap();
                        let v = rows.iter().find_map(|m| match m {
                            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                            _ => None,
                        });
                        assert_eq!(v.as_deref(), Some(i.to_string().as_str()));
                    }
                });
            }
        });
    });
    holder.batch_execute("COMMIT").unwrap();
}

/// A cancel held for a queued request travels with the session when it moves: B waits behind A's slow query, its
/// client cancels, then the sibling frees up and B moves there; B's query is cancelled as soon as it runs on the
/// sibling instead of running to its end (the cancel used to stay behind at the first worker).
#[test]
fn held_cancel_moves_with_the_session() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let pid = |c: &mut postgres::Client| -> i32 { c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0) };
    // Idle sessions stay where they were placed: find two sharing a worker (A, B) and one on the other (C).
    let mut clients: Vec<(i32, postgres::Client)> = (0..8)
        .map(|_| {
            let mut c = pgmux.client("appdb", "alice");
            (pid(&mut c), c)
        })
        .collect();
    let first = clients.first().map(|(p, _)| *p).unwrap();
    let same = clients.iter().filter(|(p, _)| *p == first).count();
    let (pa, pc) = if same >= 2 {
        (first, clients.iter().map(|(p, _)| *p).find(|p| *p != first).expect("every session on one worker"))
    } else {
        let other = clients.iter().map(|(p, _)| *p).find(|p| *p != first).unwrap();
        (other, first)
    };
    let mut take = |want: i32| {
        let i = clients.iter().position(|(p, _)| *p == want).expect("no session left on that worker");
        clients.swap_remove(i).1
    };
    let (mut a, mut b, mut c) = (take(pa), take(pa), take(pc));
    let token = b.cancel_token();
    with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            let started = Instant::now();
            let ct = scope.spawn(move || c.batch_execute("SELECT pg_sleep(0.6)"));
            let at = scope.spawn(move || a.batch_execute("SELECT pg_sleep(1.2)"));
            std::thread::sleep(Duration::from_millis(150));
            // Both upstreams are busy: B waits behind A (too late to ride, nowhere to move yet).
            let bt = scope.spawn(move || {
                let r = b.batch_execute("SELECT pg_sleep(8)");
                (r, started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(150));
            token.cancel_query(NoTls).expect("send the cancel through pgmux");
            ct.join().unwrap().expect("C's query");
            at.join().unwrap().expect("A's query was hit by B's cancel");
            let (r, took) = bt.join().unwrap();
            let err = r.expect_err("B's query was not cancelled");
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
            assert!(took < Duration::from_secs(4), "B's query ran on after its cancel: {took:?}");
        });
    });
    let log = pgmux.log();
    assert!(log.contains("cancel held until its request runs"), "the cancel was not held:\n{log}");
    assert!(log.contains("a cancel held at its previous worker waits for its request here"), "B did not move:\n{log}");
}

/// A session with a temporary table keeps its upstream: its table is usable across transactions, invisible to
/// every other session, untouched by another session's DISCARD TEMP, and gone from the backend once it leaves.
#[test]
fn temp_table_pins_its_upstream() {
    let pg = Postgres::shared();
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut a = pgmux.client("appdb", "bob");
    a.batch_execute("CREATE TEMP TABLE pin_t (x int); INSERT INTO pin_t VALUES (1)").unwrap();
    a.batch_execute("BEGIN; INSERT INTO pin_t VALUES (2); COMMIT").unwrap();
    let a_pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            for i in 0..10 {
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "bob");
                    for _ in 0..10 {
                        let row = c.query_one("SELECT pg_backend_pid(), to_regclass('pin_t') IS NULL", &[]).unwrap();
                        let (pid, invisible): (i32, bool) = (row.get(0), row.get(1));
                        assert_ne!(pid, a_pid, "session {i} ran on the pinned backend");
                        assert!(invisible, "session {i} sees another session's temp table");
                    }
                    if i == 0 {
                        c.batch_execute("DISCARD TEMP").unwrap();
                    }
                });
            }
        });
    });
    let n: i64 = a.query_one("SELECT count(*) FROM pin_t", &[]).unwrap().get(0);
    assert_eq!(n, 2, "the pinned session lost its temp table rows");
    let again: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    assert_eq!(again, a_pid, "a pinned session changed backend");
    drop(a);
    // Once it has left, its backend is cleaned before anyone else uses it.
    pgmux_tests::util::wait_until(Duration::from_secs(10), "the departed session's temp table to be dropped", || {
        pg.psql_admin("appdb", "SELECT count(*) FROM pg_class WHERE relname = 'pin_t' AND relpersistence = 't'").trim()
            == "0"
    });
    let mut b = pgmux.client("appdb", "bob");
    for _ in 0..4 {
        let gone: bool = b.query_one("SELECT to_regclass('pin_t') IS NULL", &[]).unwrap().get(0);
        assert!(gone);
    }
}

/// idle_transaction_timeout ends a session idling inside a transaction, with an error saying so, and its upstream
/// is rolled back and reused.
#[test]
fn idle_transaction_timeout_ends_the_session() {
    let pg = Postgres::shared();
    pg.psql_admin("appdb", "CREATE TABLE IF NOT EXISTS idle_t (id int PRIMARY KEY, v int)");
    pg.psql_admin("appdb", "INSERT INTO idle_t VALUES (1, 0) ON CONFLICT DO NOTHING");
    pg.psql_admin("appdb", "GRANT ALL ON idle_t TO bob");
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1").set("idle_transaction_timeout", "1"));
    let mut a = pgmux.client("appdb", "bob");
    a.batch_execute("BEGIN; UPDATE idle_t SET v = 42 WHERE id = 1").unwrap();
    let mut b = pgmux.client("appdb", "bob");
    // b waits behind a's transaction until the timeout ends it; then b runs on the same (rolled back) upstream.
    let v: i32 = with_deadline(&pgmux, Duration::from_secs(20), || {
        b.query_one("UPDATE idle_t SET v = v + 1 WHERE id = 1 RETURNING v", &[]).unwrap().get(0)
    });
    let err = a.batch_execute("SELECT 1").unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("idle transaction timeout") || err.is_closed(),
        "unexpected error for the timed-out session: {text}"
    );
    assert_eq!(v, 1, "the timed-out transaction's update was committed");
    assert!(pgmux.log().contains("closing because: idle transaction timeout"));
}

/// When the pool's only upstream is pinned by another session, a waiting session gets a clear error after
/// query_wait_timeout instead of waiting forever.
#[test]
fn all_upstreams_pinned_gives_query_wait_timeout() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1").set("query_wait_timeout", "1"));
    let mut a = pgmux.client("otherdb", "alice");
    a.batch_execute("CREATE TEMP TABLE pinned_t (x int)").unwrap();
    // psql reports the FATAL message reliably even though the connection closes right after it.
    let out = with_deadline(&pgmux, Duration::from_secs(20), || pgmux.psql("otherdb", "alice", "SELECT 1"));
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the waiting session was served while every upstream was pinned");
    assert!(text.contains("query_wait_timeout"), "unexpected error: {text}");
    assert!(text.contains("temporary tables"), "the error does not say why: {text}");
    // The pinned session is unaffected.
    a.batch_execute("INSERT INTO pinned_t VALUES (1)").unwrap();
}

fn notifications(c: &mut postgres::Client, wait: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut n = c.notifications();
    let mut it = n.timeout_iter(wait);
    while let Ok(Some(note)) = it.next() {
        out.push((note.channel().to_string(), note.payload().to_string()));
    }
    out
}

/// LISTEN in transaction mode: each listening session gets the notifications of its own channels only, whichever
/// upstream its transactions run on; UNLISTEN and UNLISTEN * work; a rolled-back NOTIFY is never delivered.
#[test]
fn listen_notify_in_transaction_mode() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let mut a = pgmux.client("appdb", "alice");
    let mut b = pgmux.client("appdb", "alice");
    let mut ab = pgmux.client("appdb", "alice");
    let mut idle = pgmux.client("appdb", "alice");
    a.batch_execute("LISTEN chan_a").unwrap();
    b.batch_execute("LISTEN chan_b").unwrap();
    ab.batch_execute("LISTEN chan_a; LISTEN chan_b").unwrap();
    // Many other sessions keep the upstreams busy in between.
    let mut others: Vec<postgres::Client> = (0..6).map(|_| pgmux.client("appdb", "alice")).collect();
    for o in others.iter_mut() {
        o.batch_execute("SELECT 1").unwrap();
    }
    let mut sender = pgmux.client("appdb", "bob");
    sender.batch_execute("NOTIFY chan_a, 'one'; NOTIFY chan_b, 'two'").unwrap();
    sender.batch_execute("BEGIN; NOTIFY chan_a, 'rolled back'; ROLLBACK").unwrap();
    // Poke every session so the notifications are read (a direct PostgreSQL client also sees them on its next read).
    let wait = Duration::from_secs(3);
    let got_a = with_deadline(&pgmux, Duration::from_secs(30), || notifications(&mut a, wait));
    let got_b = notifications(&mut b, Duration::from_millis(500));
    let got_ab = notifications(&mut ab, Duration::from_millis(500));
    let got_idle = notifications(&mut idle, Duration::from_millis(300));
    assert_eq!(got_a, vec![("chan_a".to_string(), "one".to_string())]);
    assert_eq!(got_b, vec![("chan_b".to_string(), "two".to_string())]);
    let mut got_ab_sorted = got_ab.clone();
    got_ab_sorted.sort();
    assert_eq!(got_ab_sorted, vec![("chan_a".into(), "one".into()), ("chan_b".into(), "two".into())]);
    assert!(got_idle.is_empty(), "a session that never listened got {got_idle:?}");
    // UNLISTEN one channel, then UNLISTEN *.
    ab.batch_execute("UNLISTEN chan_a").unwrap();
    a.batch_execute("UNLISTEN *").unwrap();
    sender.batch_execute("NOTIFY chan_a, 'three'; NOTIFY chan_b, 'four'").unwrap();
    let got_a = notifications(&mut a, Duration::from_millis(800));
    let got_ab = notifications(&mut ab, Duration::from_millis(800));
    let got_b = notifications(&mut b, Duration::from_millis(800));
    assert!(got_a.is_empty(), "UNLISTEN * did not stop notifications: {got_a:?}");
    assert_eq!(got_ab, vec![("chan_b".to_string(), "four".to_string())]);
    assert_eq!(got_b, vec![("chan_b".to_string(), "four".to_string())]);
}

/// server_lifetime retires upstreams by draining their workers: every session moves to another worker between
/// transactions, keeping its settings and prepared statements; nothing is dropped.
#[test]
fn server_lifetime_drains_workers_without_dropping_sessions() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2").set("server_lifetime", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            for i in 0..6 {
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("otherdb", "alice");
                    c.batch_execute(&format!("SET work_mem = '{}kB'", 3001 + i)).unwrap();
                    let stmt = c.prepare(&format!("SELECT $1::int * {}", i + 1)).unwrap();
                    let until = std::time::Instant::now() + Duration::from_secs(4);
                    let mut n = 0;
                    while std::time::Instant::now() < until {
                        let v: i32 = c.query_one(&stmt, &[&n]).unwrap().get(0);
                        assert_eq!(v, n * (i + 1));
                        let wm: String = c.query_one("SHOW work_mem", &[]).unwrap().get(0);
                        assert_eq!(wm, format!("{}kB", 3001 + i));
                        n += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
    });
    let log = pgmux.log();
    assert!(log.contains("draining: server_lifetime reached"), "no worker was drained");
    assert!(log.contains("drained, exiting"), "no drained worker exited");
}

/// Migration under load: pgbench -M prepared runs while a few sessions keep leaving their upstreams idle inside
/// transactions, so waiting sessions move between workers continually; no transaction fails and sessions keep their
/// settings and prepared statements.
#[test]
fn migration_under_load() {
    const HOLDERS: usize = 3;
    const HOLD: Duration = Duration::from_millis(20);
    const CLIENTS: &str = "300";
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "4"));
    let init = pgmux.pgbench(&["-i", "-s", "1", "-q", "-U", "alice", "appdb"]);
    assert!(init.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = with_deadline(&pgmux, Duration::from_secs(90), || {
        std::thread::scope(|scope| {
            // Holders: short transactions with client think time inside them.
            for _ in 0..HOLDERS {
                let (pgmux, stop) = (&pgmux, &stop);
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "alice");
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.batch_execute("BEGIN; SELECT 1").unwrap();
                        std::thread::sleep(HOLD);
                        c.batch_execute("COMMIT").unwrap();
                    }
                });
            }
            // Sessions with their own settings and statements, checked throughout.
            let checkers: Vec<_> = (0..4)
                .map(|i: i32| {
                    let (pgmux, stop) = (&pgmux, &stop);
                    scope.spawn(move || {
                        let mut c = pgmux.client("appdb", "alice");
                        c.batch_execute(&format!("SET work_mem = '{}kB'", 4001 + i)).unwrap();
                        let stmt = c.prepare(&format!("SELECT $1::int + {i}, current_setting('work_mem')")).unwrap();
                        let mut n = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let row = c.query_one(&stmt, &[&n]).unwrap();
                            assert_eq!(row.get::<_, i32>(0), n + i);
                            assert_eq!(row.get::<_, String>(1), format!("{}kB", 4001 + i));
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let out = pgmux
                .pgbench(&["-n", "-S", "-M", "prepared", "-c", CLIENTS, "-j", "2", "-T", "6", "-U", "alice", "appdb"]);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for c in checkers {
                assert!(c.join().unwrap() > 0);
            }
            out
        })
    });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "pgbench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    let log = pgmux.log();
    let moves = log.matches("moving to another worker").count();
    // What one move costs, from the old worker handing the session over to the new one having it registered.
    let mut costs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split(": moved here in ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(" us").trim().parse().ok())
        .collect();
    costs.sort_unstable();
    let pick = |q: f64| costs.get(((costs.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    eprintln!(
        "migrations during the run: {moves} (~{} per second); cost per move: median {} us, p99 {} us ({} samples)",
        moves / 6,
        pick(0.5),
        pick(0.99),
        costs.len()
    );
    assert!(!costs.is_empty(), "no move reported its cost");
    // Thousands of moves a second is the target; a loaded 2-core machine measured 1650-1780 here.
    assert!(moves / 6 >= 1000, "only {moves} moves in 6 s: fewer than 1000 a second");
}
