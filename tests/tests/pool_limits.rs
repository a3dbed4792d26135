//! Pool-side limits against the real binary and a real PostgreSQL, counted in `pg_stat_activity`:
//! `max_db_connections` and `max_user_connections` hold under concurrent load across pools while every query
//! completes; `max_db_client_connections` and `max_user_client_connections` refuse logins with PgBouncer's message;
//! `min_pool_size` opens connections after first use (and at start-up for a forced user) and reopens them after a
//! worker is killed; the reserve pool opens only after `reserve_pool_timeout` and closes again; dedicated users and
//! databases get in while every pooled connection is held; per-user pool settings; reload; the console's columns.
//!
//! Each test uses databases of its own (created on first use), so tests running side by side never count each
//! other's backends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgmux_tests::{wait_until, with_deadline, Pgmux, PgmuxConfig, Postgres};
use postgres::SimpleQueryMessage;

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/// Creates PostgreSQL database `name` unless it exists. Serialised: concurrent CREATE DATABASE from one template
/// may fail.
fn fresh_db(name: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pg = Postgres::shared();
    let exists = pg.psql_admin("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"));
    if exists.trim() == "0" {
        pg.psql_admin("postgres", &format!("CREATE DATABASE {name}"));
    }
}

/// pgmux in transaction mode with pool size 4 and databases `names` (each its own upstream database).
fn config(names: &[&str]) -> PgmuxConfig {
    let mut c = PgmuxConfig::new().set("admin_users", "\"admin\"").user("admin", "adminpw");
    for name in names {
        fresh_db(name);
        c = c.database(name, &[("dbname", &format!("\"{name}\""))]);
    }
    c
}

/// A direct connection to PostgreSQL (not through pgmux) for counting backends.
fn direct() -> postgres::Client {
    let pg = Postgres::shared();
    postgres::Client::connect(
        &format!("host={} port={} user=postgres dbname=postgres", pg.host(), pg.port()),
        postgres::NoTls,
    )
    .expect("connect to PostgreSQL")
}

/// Client backends connected to `db` (as `user`, if given).
fn backends(c: &mut postgres::Client, db: &str, user: Option<&str>) -> usize {
    let users = user.map(|u| format!(" AND usename = '{u}'")).unwrap_or_default();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'{users} AND backend_type = 'client backend'"
    );
    let n: i64 = c.query_one(&sql, &[]).expect("count backends").get(0);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Backends of `db` (or of `user` in any of `dbs`), now.
fn count(dbs: &[&str], user: Option<&str>) -> usize {
    let mut c = direct();
    dbs.iter().map(|db| backends(&mut c, db, user)).sum()
}

/// Runs `load` while sampling the backends of `dbs` (of `user`, if given) every few milliseconds; returns what
/// `load` returned and the most backends seen at once.
fn sampled<R: Send>(dbs: &[&str], user: Option<&str>, load: impl FnOnce() -> R + Send) -> (R, usize) {
    let done = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut c = direct();
            while !done.load(Ordering::Relaxed) {
                let n: usize = dbs.iter().map(|db| backends(&mut c, db, user)).sum();
                most.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let r = load();
        done.store(true, Ordering::Relaxed);
        r
    });
    (result, most.load(Ordering::Relaxed))
}

/// `clients` sessions of `user` on `db` each run `rounds` times `sql` at once; panics if any query fails.
fn run_load(pgmux: &Pgmux, work: &[(&str, &str)], clients: usize, rounds: usize, sql: &str) {
    std::thread::scope(|scope| {
        for (db, user) in work {
            for _ in 0..clients {
                scope.spawn(move || {
                    let mut c = pgmux.client(db, user);
                    for _ in 0..rounds {
                        c.batch_execute(sql).unwrap_or_else(|e| panic!("{user}@{db}: {sql}: {e:?}"));
                    }
                });
            }
        }
    });
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).expect("pg_backend_pid").get(0)
}

/// SQLSTATE and message of a failed connect or query.
fn db_error(e: &postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => (String::new(), e.to_string()),
    }
}

/// Rows of a console command as column name → value maps (NULL as "NULL").
fn rows(c: &mut postgres::Client, sql: &str) -> Vec<HashMap<String, String>> {
    let msgs = c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("NULL").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The row of `rows` whose columns `col` have the values given.
fn find<'a>(rows: &'a [HashMap<String, String>], want: &[(&str, &str)]) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| want.iter().all(|(col, v)| r.get(*col).map(String::as_str) == Some(*v)))
        .unwrap_or_else(|| panic!("no row with {want:?} in {rows:?}"))
}

// ---------------------------------------------------------------------------------------------------------------
// server connections
// ---------------------------------------------------------------------------------------------------------------

/// max_db_connections 3 over two users' pools of size 4: never more than 3 backends for the database, and every
/// query of both users completes (the pool that starts second gets a worker back from the first).
#[test]
fn max_db_connections_holds_across_pools() {
    let db = "lim_maxdb";
    let pgmux = Pgmux::start(config(&[db]).database(db, &[("dbname", "\"lim_maxdb\""), ("max_db_connections", "3")]));
    let ((), most) = with_deadline(&pgmux, Duration::from_secs(90), || {
        sampled(&[db], None, || run_load(&pgmux, &[(db, "alice"), (db, "bob")], 5, 15, "SELECT pg_sleep(0.01)"))
    });
    eprintln!("most backends at once: {most}");
    // Whichever pool started first gave workers back to the other (without taking them back at once).
    let log = pgmux.log();
    let evicted = log.matches("because: evicted (max_db_connections reached").count();
    eprintln!("workers given back: {evicted}");
    assert!(most <= 3, "{most} backends for a database limited to 3");
    assert!(most >= 2, "the load never used more than one connection");
    let mut admin = pgmux.client("pgbouncer", "admin");
    let d = rows(&mut admin, "SHOW DATABASES");
    let row = find(&d, &[("name", db)]);
    assert_eq!(row["max_connections"], "3");
    assert!(row["current_connections"].parse::<usize>().unwrap() <= 3, "{row:?}");
}

/// max_user_connections 2 for bob ([users] override) over two databases, in session mode: bob never has more than
/// 2 backends; clients wait for a server (sessions of the other database give theirs back once unused) and all of
/// them finish; alice is not limited.
#[test]
fn max_user_connections_holds_across_databases() {
    let (d1, d2) = ("lim_user1", "lim_user2");
    let pgmux =
        Pgmux::start(config(&[d1, d2]).set("pool_mode", "\"session\"").raw("[users.bob]\nmax_user_connections = 2\n"));
    let ((), most) = with_deadline(&pgmux, Duration::from_secs(90), || {
        sampled(&[d1, d2], Some("bob"), || {
            std::thread::scope(|scope| {
                for i in 0..6 {
                    let pgmux = &pgmux;
                    let db = if i % 2 == 0 { d1 } else { d2 };
                    scope.spawn(move || {
                        for _ in 0..3 {
                            let mut c = pgmux.client(db, "bob");
                            c.batch_execute("SELECT pg_sleep(0.05)").unwrap();
                        }
                    });
                }
            })
        })
    });
    eprintln!("most bob backends at once: {most}");
    assert!(most <= 2, "{most} backends for a user limited to 2");
    // alice is under no limit: three sessions, three servers at once.
    let mut held: Vec<postgres::Client> = (0..3).map(|_| pgmux.client(d1, "alice")).collect();
    let pids: std::collections::HashSet<i32> = held.iter_mut().map(backend_pid).collect();
    assert_eq!(pids.len(), 3);
    let mut admin = pgmux.client("pgbouncer", "admin");
    let u = rows(&mut admin, "SHOW USERS");
    assert_eq!(find(&u, &[("name", "bob")])["max_user_connections"], "2");
    assert_eq!(find(&u, &[("name", "alice")])["max_user_connections"], "0");
}

/// A database's own server_lifetime (1 s) retires workers under load while max_db_connections is 2: a draining
/// worker counts until it exits, its sessions move to the sibling or wait, and nothing fails.
#[test]
fn limits_hold_while_workers_are_retired() {
    let db = "lim_life";
    let pgmux = Pgmux::start(
        config(&[db])
            .database(db, &[("dbname", "\"lim_life\""), ("max_db_connections", "2"), ("server_lifetime", "1")]),
    );
    let ((), most) = with_deadline(&pgmux, Duration::from_secs(90), || {
        sampled(&[db], None, || {
            std::thread::scope(|scope| {
                for _ in 0..6 {
                    let pgmux = &pgmux;
                    scope.spawn(move || {
                        let mut c = pgmux.client(db, "alice");
                        let until = Instant::now() + Duration::from_secs(4);
                        while Instant::now() < until {
                            c.batch_execute("SELECT pg_sleep(0.01)").unwrap();
                        }
                    });
                }
            })
        })
    });
    eprintln!("most backends at once: {most}");
    assert!(most <= 2, "{most} backends for a database limited to 2");
    let log = pgmux.log();
    assert!(log.contains("draining: server_lifetime reached"), "no worker reached the database's server_lifetime");
}

// ---------------------------------------------------------------------------------------------------------------
// client connections
// ---------------------------------------------------------------------------------------------------------------

/// Logins beyond max_db_client_connections / max_user_client_connections are refused with PgBouncer's message and
/// SQLSTATE 53300; a slot that frees lets the next one in; a dedicated user is neither refused nor counted.
#[test]
fn client_limits_refuse_logins() {
    let (db, other) = ("lim_cl", "lim_cl2");
    let pgmux = Pgmux::start(
        config(&[db, other])
            .database(db, &[("dbname", "\"lim_cl\""), ("max_db_client_connections", "2")])
            .set("dedicated_users", "\"postgres\"")
            .raw("[users.bob]\nmax_user_client_connections = 2\n"),
    );
    let mut first = pgmux.client(db, "alice");
    let _second = pgmux.client(db, "bob");
    let e = pgmux.try_client(db, "alice", "").map(|_| ()).unwrap_err();
    assert_eq!(
        db_error(&e),
        ("53300".to_string(), "client connections exceeded (max_db_client_connections)".to_string())
    );
    // The operator's dedicated user still gets in, and does not take a client slot.
    let mut ops = pgmux.client(db, "postgres");
    ops.batch_execute("SELECT 1").unwrap();
    first.batch_execute("SELECT 1").unwrap();
    drop(first);
    wait_until(Duration::from_secs(10), "a freed client slot", || pgmux.try_client(db, "alice", "").is_ok());

    // bob has one session (on lim_cl); a second one elsewhere is fine, a third is refused wherever it goes.
    let _bob2 = pgmux.client(other, "bob");
    let e = pgmux.try_client(other, "bob", "bobpw").map(|_| ()).unwrap_err();
    assert_eq!(
        db_error(&e),
        ("53300".to_string(), "client connections exceeded (max_user_client_connections)".to_string())
    );
    // alice is under no user limit.
    let _a: Vec<postgres::Client> = (0..3).map(|_| pgmux.client(other, "alice")).collect();
    assert!(pgmux.log().contains("client connections exceeded (max_db_client_connections)"));
    let mut admin = pgmux.client("pgbouncer", "admin");
    let d = rows(&mut admin, "SHOW DATABASES");
    assert_eq!(find(&d, &[("name", db)])["max_client_connections"], "2");
    assert_eq!(find(&rows(&mut admin, "SHOW USERS"), &[("name", "bob")])["max_user_client_connections"], "2");
}

// ---------------------------------------------------------------------------------------------------------------
// min_pool_size
// ---------------------------------------------------------------------------------------------------------------

/// min_pool_size 2 (per database): nothing before the first client, two backends after it, kept although
/// server_idle_timeout passes (as PgBouncer), two again after a worker is SIGKILLed (the idle client keeps working).
#[test]
fn min_pool_size_fills_after_first_use_and_after_a_crash() {
    let db = "lim_min";
    let pgmux = Pgmux::start(
        config(&[db])
            .set("server_idle_timeout", "1")
            .database(db, &[("dbname", "\"lim_min\""), ("min_pool_size", "2")]),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&[db], None), 0, "no pool is filled before it is used");
    let mut c = pgmux.client(db, "alice");
    c.batch_execute("SELECT 1").unwrap();
    wait_until(Duration::from_secs(10), "min_pool_size backends", || count(&[db], None) == 2);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&[db], None), 2, "server_idle_timeout closed connections min_pool_size keeps");
    let workers = pgmux.children("pgmux-worker");
    assert_eq!(workers.len(), 2, "{workers:?}");
    let before = backend_pid(&mut c);
    let victim = *workers.iter().max().unwrap();
    pgmux.kill(victim, libc::SIGKILL);
    wait_until(Duration::from_secs(10), "a replacement worker", || {
        let now = pgmux.children("pgmux-worker");
        now.len() == 2 && !now.contains(&victim)
    });
    wait_until(Duration::from_secs(10), "min_pool_size backends again", || count(&[db], None) == 2);
    // The idle session survived the crash (it was re-homed if its worker was the one killed).
    let after = backend_pid(&mut c);
    assert!(after > 0 && (before > 0));
    c.batch_execute("SELECT 1").unwrap();
    let mut admin = pgmux.client("pgbouncer", "admin");
    assert_eq!(find(&rows(&mut admin, "SHOW DATABASES"), &[("name", db)])["min_pool_size"], "2");
}

/// A database with a forced user and min_pool_size has its connections open from start-up, before any client,
/// as PgBouncer's; clients of any user share that pool.
#[test]
fn min_pool_size_of_a_forced_user_fills_at_start() {
    let db = "lim_forced";
    let pgmux = Pgmux::start(
        config(&[db]).database(db, &[("dbname", "\"lim_forced\""), ("user", "\"bob\""), ("min_pool_size", "2")]),
    );
    wait_until(Duration::from_secs(10), "backends of the forced user", || count(&[db], Some("bob")) == 2);
    let mut a = pgmux.client(db, "alice");
    let mut p = pgmux.client(db, "postgres");
    let who: String = a.query_one("SELECT current_user::text", &[]).unwrap().get(0);
    assert_eq!(who, "bob");
    p.batch_execute("SELECT 1").unwrap();
    assert_eq!(count(&[db], None), 2, "clients of other users share the forced user's pool");
    let mut admin = pgmux.client("pgbouncer", "admin");
    let pools = rows(&mut admin, "SHOW POOLS");
    assert_eq!(pools.iter().filter(|r| r["database"] == db).count(), 1, "{pools:?}");
    assert_eq!(find(&pools, &[("database", db)])["user"], "bob");
}

// ---------------------------------------------------------------------------------------------------------------
// reserve pool
// ---------------------------------------------------------------------------------------------------------------

/// Pool size 2, reserve 1 after 1 s: with both connections held in open transactions a third client's query waits
/// about a second, then runs on a reserve connection; once nobody waits the pool goes back to 2.
#[test]
fn reserve_pool_opens_after_its_timeout_and_closes_later() {
    let db = "lim_res";
    let pgmux = Pgmux::start(
        config(&[db])
            .set("reserve_pool_size", "1")
            .set("reserve_pool_timeout", "1")
            .database(db, &[("dbname", "\"lim_res\""), ("pool_size", "2")]),
    );
    let mut h1 = pgmux.client(db, "alice");
    let mut h2 = pgmux.client(db, "alice");
    h1.batch_execute("BEGIN; SELECT 1").unwrap();
    h2.batch_execute("BEGIN; SELECT 1").unwrap();
    assert_ne!(backend_pid(&mut h1), backend_pid(&mut h2));
    let mut third = pgmux.client(db, "alice");
    let (elapsed, seen_early) = with_deadline(&pgmux, Duration::from_secs(30), || {
        std::thread::scope(|scope| {
            let early = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                count(&[db], None)
            });
            let started = Instant::now();
            third.batch_execute("SELECT 1").unwrap();
            (started.elapsed(), early.join().unwrap())
        })
    });
    eprintln!("the third client waited {elapsed:?}");
    assert_eq!(seen_early, 2, "a reserve connection opened before reserve_pool_timeout");
    assert!(elapsed >= Duration::from_millis(900), "served after {elapsed:?}, before reserve_pool_timeout");
    assert!(elapsed < Duration::from_secs(5), "the reserve pool did not open: {elapsed:?}");
    assert_eq!(count(&[db], None), 3);
    assert!(pgmux.log().contains("taking connection from reserve_pool"));
    h1.batch_execute("COMMIT").unwrap();
    h2.batch_execute("COMMIT").unwrap();
    wait_until(Duration::from_secs(15), "the reserve connection to close", || count(&[db], None) == 2);
    // Everybody keeps working on what is left.
    for c in [&mut h1, &mut h2, &mut third] {
        c.batch_execute("SELECT 1").unwrap();
    }
    assert!(pgmux.log().contains("reserve_pool no longer needed"));
}

// ---------------------------------------------------------------------------------------------------------------
// dedicated databases and users
// ---------------------------------------------------------------------------------------------------------------

/// Every pooled connection of the database is held inside an open transaction (pool size and max_db_connections
/// both 2): a pooled client waits and times out (the database's own query_wait_timeout), while a dedicated user and a dedicated database get in and run
/// queries at once, each on a connection of its own that closes when the session ends.
#[test]
fn dedicated_users_and_databases_get_in_while_every_upstream_is_busy() {
    let db = "lim_ded";
    let pgmux = Pgmux::start(
        config(&[db])
            .set("dedicated_users", "\"postgres\"")
            .set("dedicated_databases", "\"lim_ops\"")
            .database(
                db,
                &[
                    ("dbname", "\"lim_ded\""),
                    ("pool_size", "2"),
                    ("max_db_connections", "2"),
                    ("query_wait_timeout", "2"),
                ],
            )
            .database("lim_ops", &[("dbname", "\"lim_ded\"")]),
    );
    let mut h1 = pgmux.client(db, "alice");
    let mut h2 = pgmux.client(db, "bob");
    h1.batch_execute("BEGIN; SELECT 1").unwrap();
    h2.batch_execute("BEGIN; SELECT 1").unwrap();
    assert_eq!(count(&[db], None), 2);
    with_deadline(&pgmux, Duration::from_secs(30), || {
        std::thread::scope(|scope| {
            // A pooled client has to wait, and gives up after query_wait_timeout.
            let pooled = scope.spawn(|| {
                let mut c = pgmux.client(db, "alice");
                c.batch_execute("SELECT 1").map_err(|e| db_error(&e))
            });
            let started = Instant::now();
            let mut ops = pgmux.client(db, "postgres");
            for _ in 0..5 {
                ops.batch_execute("SELECT 1").unwrap();
            }
            let ops_pid = backend_pid(&mut ops);
            let mut opsdb = pgmux.client("lim_ops", "alice");
            for _ in 0..5 {
                opsdb.batch_execute("SELECT 1").unwrap();
            }
            let opsdb_pid = backend_pid(&mut opsdb);
            assert!(started.elapsed() < Duration::from_secs(1), "dedicated sessions waited {:?}", started.elapsed());
            assert_ne!(ops_pid, opsdb_pid, "dedicated sessions share nothing");
            assert_eq!(count(&[db], None), 4, "two pooled and two dedicated connections");
            drop(ops);
            drop(opsdb);
            wait_until(Duration::from_secs(10), "dedicated connections to close", || count(&[db], None) == 2);
            let (code, message) = pooled.join().unwrap().expect_err("a pooled client was served over the limits");
            // The driver may see the connection end before it reads the FATAL message; the log says why.
            assert!(message.contains("query_wait_timeout") || message.contains("closed"), "{code}: {message}");
            assert!(pgmux.log().contains("closing because: query_wait_timeout"));
        })
    });
    h1.batch_execute("COMMIT").unwrap();
    h2.batch_execute("COMMIT").unwrap();
    let log = pgmux.log();
    assert!(log.contains("(dedicated)"), "no dedicated worker in the log");
    assert!(log.contains("its dedicated session ended"));
}

// ---------------------------------------------------------------------------------------------------------------
// per-user settings, reload, console
// ---------------------------------------------------------------------------------------------------------------

/// [users] pool_mode and pool_size win over the database's (PgBouncer's precedence): bob's sessions are session
/// pooled with pool size 2, alice's stay transaction pooled; SHOW POOLS / USERS / DATABASES say so.
#[test]
fn per_user_pool_mode_and_size() {
    let db = "lim_peruser";
    let pgmux = Pgmux::start(
        config(&[db])
            .database(
                db,
                &[
                    ("dbname", "\"lim_peruser\""),
                    ("reserve_pool", "1"),
                    ("server_lifetime", "600"),
                    ("min_pool_size", "1"),
                ],
            )
            .raw("[users.bob]\npool_mode = \"session\"\npool_size = 2\n"),
    );
    let mut b1 = pgmux.client(db, "bob");
    let mut b2 = pgmux.client(db, "bob");
    let (p1, p2) = (backend_pid(&mut b1), backend_pid(&mut b2));
    assert_ne!(p1, p2);
    // A third bob session waits for one of the two (session pooling, pool size 2) until one leaves.
    let waiting = std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            let mut c = pgmux.client(db, "bob");
            backend_pid(&mut c)
        });
        std::thread::sleep(Duration::from_millis(500));
        let blocked = !h.is_finished();
        for _ in 0..3 {
            assert_eq!(backend_pid(&mut b1), p1, "a session-pooled client changed server");
        }
        drop(b2);
        let pid = h.join().unwrap();
        (blocked, pid)
    });
    assert!(waiting.0, "a third session got a server beyond bob's pool_size 2");
    assert_eq!(waiting.1, p2, "the third session took the server the second left");
    let mut admin = pgmux.client("pgbouncer", "admin");
    let pools = rows(&mut admin, "SHOW POOLS");
    assert_eq!(find(&pools, &[("database", db), ("user", "bob")])["pool_mode"], "session");
    let users = rows(&mut admin, "SHOW USERS");
    let bob = find(&users, &[("name", "bob")]);
    assert_eq!((bob["pool_size"].as_str(), bob["pool_mode"].as_str()), ("        2", "session"));
    let alice = find(&users, &[("name", "alice")]);
    assert_eq!((alice["pool_size"].as_str(), alice["pool_mode"].as_str()), ("", "NULL"));
    let d = rows(&mut admin, "SHOW DATABASES");
    let row = find(&d, &[("name", db)]);
    assert_eq!(
        (row["pool_size"].as_str(), row["reserve_pool_size"].as_str(), row["server_lifetime"].as_str()),
        ("4", "1", "600")
    );
    assert_eq!((row["min_pool_size"].as_str(), row["pool_mode"].as_str()), ("1", "transaction"));
    // alice's sessions are transaction pooled: two of them share one server between transactions.
    let mut a1 = pgmux.client(db, "alice");
    let mut a2 = pgmux.client(db, "alice");
    a1.batch_execute("SELECT 1").unwrap();
    a2.batch_execute("SELECT 1").unwrap();
    assert_eq!(
        find(&rows(&mut admin, "SHOW POOLS"), &[("database", db), ("user", "alice")])["pool_mode"],
        "transaction"
    );
}

/// A reload that raises max_db_connections lets the pool grow; one that sets max_db_client_connections refuses the
/// next login.
#[test]
fn reload_changes_limits() {
    let db = "lim_reload";
    let base = config(&[db]);
    let mut pgmux =
        Pgmux::start(base.clone().database(db, &[("dbname", "\"lim_reload\""), ("max_db_connections", "1")]));
    let work = [(db, "alice")];
    let ((), most) = with_deadline(&pgmux, Duration::from_secs(60), || {
        sampled(&[db], None, || run_load(&pgmux, &work, 4, 3, "SELECT pg_sleep(0.1)"))
    });
    assert_eq!(most, 1, "max_db_connections 1 exceeded");
    pgmux.reload(base.clone().database(db, &[("dbname", "\"lim_reload\""), ("max_db_connections", "3")]));
    wait_until(Duration::from_secs(10), "the reload", || pgmux.log().contains("configuration reloaded"));
    let ((), most) = with_deadline(&pgmux, Duration::from_secs(60), || {
        sampled(&[db], None, || run_load(&pgmux, &work, 6, 4, "SELECT pg_sleep(0.1)"))
    });
    eprintln!("most backends after raising the limit: {most}");
    assert!((2..=3).contains(&most), "{most} backends with max_db_connections 3");

    let _kept = pgmux.client(db, "alice");
    pgmux.reload(base.database(
        db,
        &[("dbname", "\"lim_reload\""), ("max_db_connections", "3"), ("max_db_client_connections", "1")],
    ));
    wait_until(Duration::from_secs(10), "the limit to apply", || {
        pgmux.try_client(db, "alice", "").is_err_and(|e| db_error(&e).0 == "53300")
    });
}
