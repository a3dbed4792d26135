//! Crash isolation and fault tolerance: worker and listener SIGKILLs under load, crash loops, upstreams terminated
//! by PostgreSQL, PostgreSQL restarted or stopped, clients vanishing at every stage of a session, and the
//! durability ledger (`pgmux_tests::load`) under all of it. `faults.rs` has the single-fault cases these build on.
//!
//! Each test that counts backends uses a database of its own; tests that restart or stop PostgreSQL use a private
//! cluster so the other tests of this binary keep theirs.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use pgmux_tests::load::{self, EventKind, Load, LoadConfig, Outcome, Target};
use pgmux_tests::util::{
    error_field, password_message, query_message, raw_connect, raw_send, read_backend_message, read_until_ready,
    ssl_request, startup_packet, with_length,
};
use pgmux_tests::{error_message, wait_until, with_deadline, Pgmux, PgmuxConfig, Postgres};

// ----- helpers -----

fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// Creates (or re-creates) the database `name`, owned by alice.
fn fresh_db(pg: &Postgres, name: &str) -> String {
    pg.psql_admin("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    pg.psql_admin("postgres", &format!("CREATE DATABASE {name} OWNER alice"));
    pg.psql_admin(name, "GRANT ALL ON SCHEMA public TO PUBLIC");
    name.to_string()
}

/// A direct (not through pgmux) connection string for `db` as postgres.
fn direct(pg: &Postgres, db: &str) -> String {
    format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10", pg.port())
}

/// The fixture config plus `[databases."db"]` with the given pool size, on `pg`.
fn config_on(pg: &Postgres, db: &str, size: u32) -> PgmuxConfig {
    let (dbname, size, port) = (format!("\"{db}\""), size.to_string(), pg.port().to_string());
    PgmuxConfig::new().database(db, &[("dbname", dbname.as_str()), ("pool_size", size.as_str()), ("port", &port)])
}

/// (pid, state, query) of the client backends connected to `db`.
fn backends(pg: &Postgres, db: &str) -> Vec<(i32, String, String)> {
    let out = pg.psql_admin(
        "postgres",
        &format!(
            "SELECT pid, coalesce(state, ''), replace(coalesce(query, ''), E'\\n', ' ') FROM pg_stat_activity \
             WHERE datname = '{db}' AND backend_type = 'client backend'"
        ),
    );
    out.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '|');
            Some((f.next()?.parse().ok()?, f.next()?.to_string(), f.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn running(pg: &Postgres, db: &str, needle: &str) -> bool {
    backends(pg, db).iter().any(|(_, state, q)| state == "active" && q.contains(needle))
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// (moved, closed) summed over the supervisor's "<worker>: M idle session(s) moved to other workers, N session(s)
/// with a request in flight closed" lines.
fn sessions_after_deaths(pgmux: &Pgmux) -> (usize, usize) {
    pgmux
        .log()
        .lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once(" idle session(s) moved to other workers, ")?;
            let moved: usize = head.rsplit(' ').next()?.parse().ok()?;
            let closed: usize = rest.split_whitespace().next()?.parse().ok()?;
            Some((moved, closed))
        })
        .fold((0, 0), |(m, c), (dm, dc)| (m + dm, c + dc))
}

/// utime + stime, in clock ticks, of the supervisor and all its children.
fn cpu_ticks(pgmux: &Pgmux) -> u64 {
    let mut pids = vec![pgmux.pid()];
    pids.extend(pgmux.children("pgmux-worker"));
    pids.extend(pgmux.children("pgmux-listener"));
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let tail = stat.rsplit_once(')')?.1;
            // After the comm: state(0) ppid(1) ... utime(11) stime(12).
            let f: Vec<&str> = tail.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn alice(db: &str) -> Target {
    Target { db: db.to_string(), user: "alice".into(), password: "alicepw".into() }
}

fn load_config(pgmux: &Pgmux, db: &str, writers: usize, idle: usize) -> LoadConfig {
    LoadConfig {
        port: pgmux.port(),
        targets: vec![alice(db)],
        writers_per_target: writers,
        idle_per_target: idle,
        deadline: Duration::from_secs(15),
        // A breath between transactions: the other tests of this binary share the machine.
        think: Duration::from_millis(1),
    }
}

/// Checks the ledger of `report` against `db` and panics with the details on any violation.
fn assert_ledger(pg: &Postgres, db: &str, report: &load::Report) -> load::Verdict {
    let txns: Vec<&load::Txn> = report.txns.iter().collect();
    let v = load::verify(&direct(pg, db), &txns).expect("ledger check");
    assert_eq!(v.violations(), 0, "durability violated: {v:?}");
    v
}

/// Logs in over a raw socket with md5 (the password the listener asks for).
fn raw_login_md5(port: u16, user: &str, password: &str, db: &str) -> TcpStream {
    let mut s = raw_connect(port);
    raw_send(&mut s, &startup_packet(user, db));
    let (tag, body) = read_backend_message(&mut s).expect("closed before the auth request");
    assert_eq!((tag, body.get(..4)), (b'R', Some(&[0u8, 0, 0, 5][..])), "expected AuthenticationMD5Password");
    let salt: [u8; 4] = body.get(4..8).and_then(|s| s.try_into().ok()).expect("md5 salt");
    raw_send(&mut s, &password_message(&md5_response(user, password, salt)));
    let msgs = read_until_ready(&mut s).expect("closed during md5 login");
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("md5 login refused: {}", error_message(body));
    }
    s
}

fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

/// Sends a simple query and reads to ReadyForQuery; panics on an error. Returns the transaction status.
fn raw_query(s: &mut TcpStream, sql: &str) -> u8 {
    raw_send(s, &query_message(sql));
    let msgs = read_until_ready(s).unwrap_or_else(|| panic!("connection closed during {sql:?}"));
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("{sql:?} failed: {}", error_message(body));
    }
    msgs.last().and_then(|m| m.1.first().copied()).unwrap_or(0)
}

/// Reads up to the first ErrorResponse of a query in progress (its RowDescription and rows may come first) and
/// returns its body; panics if the query completes or the connection closes first.
fn read_error(s: &mut TcpStream, who: &str) -> Vec<u8> {
    loop {
        let (tag, body) = read_backend_message(s).unwrap_or_else(|| panic!("{who} was closed without an error"));
        match tag {
            b'E' => return body,
            b'T' | b'D' | b'N' | b'S' => continue,
            other => panic!("{who} got '{}' instead of an error", other as char),
        }
    }
}

/// The first column of the first row of a simple query, as text.
fn raw_scalar(s: &mut TcpStream, sql: &str) -> String {
    raw_send(s, &query_message(sql));
    let msgs = read_until_ready(s).unwrap_or_else(|| panic!("connection closed during {sql:?}"));
    let (_, row) = msgs.iter().find(|m| m.0 == b'D').unwrap_or_else(|| panic!("{sql:?} returned no row: {msgs:?}"));
    // DataRow: column count (2 bytes), then length (4 bytes) and bytes of each column.
    let len = i32::from_be_bytes(row[2..6].try_into().unwrap());
    String::from_utf8_lossy(&row[6..6 + len as usize]).into_owned()
}

fn parse_bind_execute(sql: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = with_length(Some(b'P'), parse);
    out.extend(with_length(Some(b'B'), vec![0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(with_length(Some(b'E'), vec![0, 0, 0, 0, 0]));
    out
}

// ----- worker kills under a write load -----

/// Under a write load, SIGKILL of a worker aborts at most the one transaction it was running; every client error
/// comes from a session the supervisor reports lost with that worker, so clients of other workers notice nothing;
/// and no committed transaction is lost or duplicated.
#[test]
fn worker_kills_under_write_load_lose_only_their_own_sessions() {
    let pg = pg();
    let db = fresh_db(pg, "chaos_workerkill");
    load::setup_tables(&direct(pg, &db)).expect("ledger tables");
    let pgmux = Pgmux::start(config_on(pg, &db, 4));
    let report = with_deadline(&pgmux, Duration::from_secs(150), || {
        let load = Load::start(load_config(&pgmux, &db, 10, 6)).expect("start load");
        wait_until(Duration::from_secs(20), "200 commits", || load.committed() >= 200);
        wait_until(Duration::from_secs(10), "4 workers", || pgmux.children("pgmux-worker").len() == 4);
        for round in 0..3 {
            // Workers younger than 2 s count as a crash loop and come back with a delay; give them time to age.
            thread::sleep(Duration::from_millis(2200));
            let workers = pgmux.children("pgmux-worker");
            let victim = workers[round % workers.len()];
            let before = load.committed();
            pgmux.kill(victim, libc::SIGKILL);
            let died = format!("(pid {victim}) died");
            wait_until(Duration::from_secs(5), "the supervisor to log the death", || pgmux.log().contains(&died));
            wait_until(Duration::from_secs(20), "the load to go on after the kill", || {
                load.committed() >= before + 100
            });
            assert!(alive(pgmux.pid()), "the supervisor died with its worker");
        }
        load.stop()
    });
    let (moved, closed) = sessions_after_deaths(&pgmux);
    let aborted = report.events_of(EventKind::Aborted).count();
    let noticed = aborted
        + report.events_of(EventKind::SessionLost).count()
        + report.events_of(EventKind::ConnectFailed).count()
        + report.idle_lost.len();
    eprintln!(
        "{} committed, {aborted} aborted, {noticed} sessions noticed a fault; the killed workers' sessions: {moved} \
         moved, {closed} closed; events {:?}",
        report.count(Outcome::Committed),
        report.events.iter().map(|e| (e.kind, e.detail.as_str())).collect::<Vec<_>>()
    );
    assert!(aborted <= 3, "{aborted} transactions aborted by 3 worker kills (a worker runs one at a time)");
    assert!(noticed <= closed, "{noticed} client sessions saw an error but only {closed} were closed with the workers");
    assert!(report.idle_lost.is_empty(), "idle sessions did not survive their worker's death: {:?}", report.idle_lost);
    assert!(moved > 0, "no session was re-homed although 3 workers with sessions died");
    assert_eq!(report.events_of(EventKind::Deadline).count(), 0, "a client op hung past its deadline");
    let v = assert_ledger(pg, &db, &report);
    assert!(v.committed >= 500, "too little load to mean anything: {v:?}");
    wait_until(Duration::from_secs(10), "<= 4 backends", || backends(pg, &db).len() <= 4);
}

/// The ledger stays exact when clients are killed mid-transaction, upstreams are terminated and workers are
/// killed, all during one write load: nothing confirmed is lost or doubled, nothing that failed or was abandoned
/// is there.
#[test]
fn ledger_is_exact_under_mixed_faults() {
    let pg = pg();
    let db = fresh_db(pg, "chaos_ledger");
    load::setup_tables(&direct(pg, &db)).expect("ledger tables");
    let pgmux = Pgmux::start(config_on(pg, &db, 3));
    let report = with_deadline(&pgmux, Duration::from_secs(150), || {
        let load = Load::start(load_config(&pgmux, &db, 9, 3)).expect("start load");
        wait_until(Duration::from_secs(20), "100 commits", || load.committed() >= 100);
        let mut killed = 0;
        for round in 0..6 {
            let before = load.committed();
            match round % 3 {
                0 => killed += load.kill_clients(3),
                1 => {
                    let victims = backends(pg, &db);
                    if let Some((pid, _, _)) = victims.get(round % victims.len().max(1)) {
                        pg.psql_admin("postgres", &format!("SELECT pg_terminate_backend({pid})"));
                    }
                }
                _ => {
                    if let Some(&victim) = pgmux.children("pgmux-worker").first() {
                        pgmux.kill(victim, libc::SIGKILL);
                    }
                }
            }
            wait_until(Duration::from_secs(20), "the load to go on", || load.committed() >= before + 100);
            thread::sleep(Duration::from_millis(300));
        }
        assert!(killed >= 3, "kill_clients found nobody to kill");
        load.stop()
    });
    let v = assert_ledger(pg, &db, &report);
    eprintln!("{v:?}");
    assert!(report.killed >= 3 && report.events_of(EventKind::Killed).count() >= 3, "killed clients left no trace");
    assert!(v.failed + v.rolled_back > 0 && v.committed >= 500, "too little load to mean anything: {v:?}");
    assert_eq!(report.events_of(EventKind::Deadline).count(), 0, "a client op hung past its deadline");
    wait_until(Duration::from_secs(10), "<= 3 backends, none in a transaction", || {
        let b = backends(pg, &db);
        b.len() <= 3 && b.iter().all(|(_, state, _)| state == "idle")
    });
}

// ----- listeners -----

/// SIGKILL of a listener while clients log in continuously: only logins that were in flight at that moment may
/// fail, established sessions are untouched, and the listener comes back.
#[test]
fn listener_kill_loses_at_most_logins_in_flight() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("auth_type", "\"md5\""));
    let port = pgmux.port();
    let mut established: Vec<TcpStream> = (0..4).map(|_| raw_login_md5(port, "alice", "alicepw", "appdb")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    const LOGGERS: usize = 6;
    let (kill_at, failures, logins) = with_deadline(&pgmux, Duration::from_secs(60), || {
        let threads: Vec<_> = (0..LOGGERS)
            .map(|_| {
                let stop = stop.clone();
                let conn = pgmux.conn_str("appdb", "alice", "alicepw");
                thread::spawn(move || {
                    let mut log = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = Instant::now();
                        let r = postgres::Client::connect(&conn, postgres::NoTls)
                            .and_then(|mut c| c.simple_query("SELECT 1").map(|_| ()));
                        log.push((started, r.err().map(|e| e.to_string())));
                    }
                    log
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(700));
        let listeners = pgmux.children("pgmux-listener");
        let victim = listeners[0];
        let kill_at = Instant::now();
        pgmux.kill(victim, libc::SIGKILL);
        wait_until(Duration::from_secs(5), "the listener to be replaced", || {
            let now = pgmux.children("pgmux-listener");
            now.len() == 2 && !now.contains(&victim)
        });
        thread::sleep(Duration::from_millis(700));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let logs: Vec<_> = threads.into_iter().flat_map(|t| t.join().expect("login thread")).collect();
        let failures: Vec<(Duration, String)> = logs
            .iter()
            .filter_map(|(started, err)| err.as_ref().map(|e| (started.saturating_duration_since(kill_at), e.clone())))
            .collect();
        // Failures whose login started after the kill (a kill is not instantaneous: allow 50 ms).
        let late: Vec<_> = logs
            .iter()
            .filter(|(started, err)| err.is_some() && *started > kill_at + Duration::from_millis(50))
            .collect();
        assert!(late.is_empty(), "logins that started after the listener died failed: {late:?}");
        (kill_at, failures, logs.len())
    });
    let _ = kill_at;
    eprintln!("{logins} logins, failures: {failures:?}");
    assert!(logins > 50, "only {logins} logins: the test did not exercise much");
    assert!(failures.len() <= LOGGERS, "{} logins failed; at most {LOGGERS} were in flight", failures.len());
    for s in &mut established {
        assert_eq!(raw_query(s, "SELECT 1"), b'I', "an established session was hurt by a listener's death");
    }
}

// ----- crash loops back off -----

/// New children named `name` (time first seen, pid) while every one is SIGKILLed on sight, for `run`.
fn kill_on_sight(pgmux: &Pgmux, name: &str, run: Duration) -> Vec<(Instant, u32)> {
    let mut seen = std::collections::HashSet::new();
    let start = Instant::now();
    let mut born = Vec::new();
    for pid in pgmux.children(name) {
        seen.insert(pid);
        born.push((start, pid));
        pgmux.kill(pid, libc::SIGKILL);
    }
    while start.elapsed() < run {
        for pid in pgmux.children(name) {
            if seen.insert(pid) {
                born.push((Instant::now(), pid));
                // SAFETY: kill has no memory-safety preconditions; a pid that just exited is harmless here.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    born
}

fn assert_backoff_grows(what: &str, born: &[Instant]) {
    let gaps: Vec<u128> = born.windows(2).map(|w| w[1].duration_since(w[0]).as_millis()).collect();
    eprintln!("{what}: respawn gaps {gaps:?} ms");
    assert!(gaps.len() >= 4, "{what}: only {} respawns: {gaps:?}", gaps.len());
    assert!(gaps.len() <= 9, "{what}: {} respawns in the run: no backoff ({gaps:?})", gaps.len());
    let (first, last) = (gaps[0], gaps[gaps.len() - 1]);
    assert!(last >= 4 * first.max(50), "{what}: the respawn delay did not grow: {gaps:?}");
    // Each gap at least about as long as the one before (scheduling noise aside).
    for w in gaps.windows(2) {
        assert!(w[1] + 60 >= w[0], "{what}: respawn delay shrank in a crash loop: {gaps:?}");
    }
}

/// A worker or listener that keeps dying right after it starts is respawned with a doubling delay, and the pooler
/// stays up and serves again once the crashes stop.
#[test]
fn crash_loops_respawn_with_growing_backoff() {
    let pg = pg();
    let db = fresh_db(pg, "chaos_backoff");
    let pgmux = Pgmux::start(config_on(pg, &db, 1));
    pgmux.client(&db, "alice").simple_query("SELECT 1").expect("first session");

    // A client that keeps wanting the pool, so the supervisor keeps wanting a worker.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let demand = {
        let stop = stop.clone();
        let conn = pgmux.conn_str(&db, "alice", "alicepw");
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = postgres::Client::connect(&conn, postgres::NoTls)
                    .and_then(|mut c| c.simple_query("SELECT 1").map(|_| ()));
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let born = kill_on_sight(&pgmux, "pgmux-worker", Duration::from_millis(6000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = demand.join();
    // The first kill ends a healthy worker: its replacement comes at once; the crash loop starts with it.
    let times: Vec<Instant> = born.iter().skip(1).map(|(t, _)| *t).collect();
    assert_backoff_grows("worker", &times);
    assert!(alive(pgmux.pid()));

    // Listeners are respawned without demand; each index backs off on its own, so follow each index's line.
    let born = kill_on_sight(&pgmux, "pgmux-listener", Duration::from_millis(6000));
    let log = pgmux.log();
    for index in 1..=2 {
        let tag = format!("started listener-{index} (pid ");
        let pids: std::collections::HashSet<u32> =
            log.lines().filter_map(|l| l.split(&tag).nth(1)?.split(')').next()?.parse().ok()).collect();
        let times: Vec<Instant> = born.iter().filter(|(_, p)| pids.contains(p)).map(|(t, _)| *t).skip(1).collect();
        assert_backoff_grows(&format!("listener-{index}"), &times);
    }
    assert!(alive(pgmux.pid()));

    // Both loops over: the pooler serves again by itself (backoff at most 10 s).
    wait_until(Duration::from_secs(15), "2 listeners again", || pgmux.children("pgmux-listener").len() == 2);
    let conn = pgmux.conn_str(&db, "alice", "alicepw");
    wait_until(Duration::from_secs(15), "a session to work again", || {
        postgres::Client::connect(&conn, postgres::NoTls).and_then(|mut c| c.simple_query("SELECT 1")).is_ok()
    });
}

// ----- upstream faults -----

/// pg_terminate_backend of an upstream: the session running on it gets PostgreSQL's error, as on a direct
/// connection; a session of another worker carries on; an idle session of the same worker carries on over a new
/// upstream; a transaction open on a terminated upstream never silently continues on the new one.
#[test]
fn terminated_upstream_fails_only_the_session_on_it() {
    let pg = pg();
    let db = fresh_db(pg, "chaos_terminate");
    let pgmux = Pgmux::start(config_on(pg, &db, 2));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        // A speaks over a raw socket: the sync driver may report a plain "closed" when an error and the end of
        // the stream arrive together, which would hide what pgmux sent.
        let mut raw_a = raw_connect(pgmux.port());
        raw_send(&mut raw_a, &startup_packet("alice", &db));
        read_until_ready(&mut raw_a).expect("raw login");
        raw_query(&mut raw_a, "CREATE TABLE t (x int)");
        let pa: i32 = raw_scalar(&mut raw_a, "SELECT pg_backend_pid()").parse().expect("A's backend pid");
        let pid_of = |c: &mut postgres::Client| -> i32 { c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0) };
        let mut b = pgmux.client(&db, "alice");
        let mut c = pgmux.client(&db, "alice");
        // B gets a worker of its own (the pool may grow); C then shares A's (least loaded, first).
        let (pb, pc) = (pid_of(&mut b), pid_of(&mut c));
        assert_ne!(pa, pb);
        assert_eq!(pa, pc, "C should share A's worker (least loaded placement)");
        c.batch_execute("SET work_mem = '3MB'").unwrap();

        raw_send(&mut raw_a, &query_message("SELECT pg_sleep(30)"));
        let rb = thread::spawn(move || {
            let t = Instant::now();
            let mut n = 0;
            while t.elapsed() < Duration::from_secs(2) {
                b.query_one("SELECT 1", &[]).expect("B (another worker) was hit by A's upstream dying");
                n += 1;
            }
            (n, b)
        });
        wait_until(Duration::from_secs(10), "A's pg_sleep running", || running(pg, &db, "pg_sleep(30)"));
        pg.psql_admin("postgres", &format!("SELECT pg_terminate_backend({pa})"));
        let body = read_error(&mut raw_a, "A");
        assert_eq!(
            error_field(&body, b'C').as_deref(),
            Some("57P01"),
            "A's query on a terminated backend got: {}",
            error_message(&body)
        );
        assert!(pgmux_tests::util::wait_closed(&mut raw_a), "A's connection should be closed, as with PostgreSQL");
        let (n, mut b) = rb.join().expect("B's thread");
        assert!(n > 0);
        assert_eq!(pid_of(&mut b), pb, "B changed upstream");

        // C was idle on the terminated upstream: it goes on over a new one, with its settings.
        let pc2 = pid_of(&mut c);
        assert_ne!(pc2, pa, "C still on the terminated backend?");
        let wm: String = c.query_one("SELECT current_setting('work_mem')", &[]).unwrap().get(0);
        assert_eq!(wm, "3MB");

        // Terminated while nobody runs on it: the next session using it just works.
        pg.psql_admin("postgres", &format!("SELECT pg_terminate_backend({pc2})"));
        thread::sleep(Duration::from_millis(200));
        c.query_one("SELECT 1", &[]).expect("C after its idle upstream was terminated");

        // Terminated inside C's transaction: the transaction is gone, and C must hear about it.
        c.batch_execute("BEGIN; INSERT INTO t VALUES (1)").unwrap();
        let pc3 = pid_of(&mut c);
        pg.psql_admin("postgres", &format!("SELECT pg_terminate_backend({pc3})"));
        let after = c.batch_execute("INSERT INTO t VALUES (2)").and_then(|_| c.batch_execute("COMMIT"));
        assert!(after.is_err(), "C's transaction went on after its backend was terminated");

        // The same seen byte by byte: the client idle inside its transaction gets PostgreSQL's own FATAL, as a
        // direct client would, not only a pgmux message about an unexpected reply.
        let mut raw = raw_connect(pgmux.port());
        raw_send(&mut raw, &startup_packet("alice", &db));
        read_until_ready(&mut raw).expect("raw login");
        assert_eq!(raw_query(&mut raw, "BEGIN; INSERT INTO t VALUES (3); SELECT pg_backend_pid()"), b'T');
        let victim = backends(pg, &db)
            .into_iter()
            .find(|(_, state, _)| state == "idle in transaction")
            .map(|(pid, _, _)| pid)
            .expect("the raw client's backend idle in transaction");
        pg.psql_admin("postgres", &format!("SELECT pg_terminate_backend({victim})"));
        let body = read_error(&mut raw, "the client idle in a transaction");
        assert_eq!(
            error_field(&body, b'C').as_deref(),
            Some("57P01"),
            "a client whose backend was terminated got: {}",
            error_message(&body)
        );

        let n: i64 = pgmux.client(&db, "alice").query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
        assert_eq!(n, 0, "rows of a terminated transaction are visible");
    });
    wait_until(Duration::from_secs(10), "<= 2 backends", || backends(pg, &db).len() <= 2);
}

/// PostgreSQL restarted under pgmux: sessions running at that moment get PostgreSQL's error, idle sessions and new
/// ones work again by themselves, and the pool stays within its size.
#[test]
fn postgres_restart_pool_recovers_by_itself() {
    let private = Postgres::private();
    let db = fresh_db(&private, "chaos_restart");
    let pgmux = Pgmux::start(config_on(&private, &db, 2).set("server_login_retry", "1"));
    with_deadline(&pgmux, Duration::from_secs(90), || {
        let mut idle = pgmux.client(&db, "alice");
        idle.batch_execute("SET work_mem = '5MB'").unwrap();
        let stmt = idle.prepare("SELECT $1::int4 * 2").unwrap();
        // Raw, to see exactly what the client is told (see terminated_upstream_fails_only_the_session_on_it).
        let mut busy = raw_connect(pgmux.port());
        raw_send(&mut busy, &startup_packet("alice", &db));
        read_until_ready(&mut busy).expect("raw login");
        let before = private.postmaster_start_time();
        raw_send(&mut busy, &query_message("SELECT pg_sleep(30)"));
        wait_until(Duration::from_secs(10), "the busy query running", || running(&private, &db, "pg_sleep(30)"));
        private.restart_fast();
        assert_ne!(private.postmaster_start_time(), before, "PostgreSQL did not restart");
        let body = read_error(&mut busy, "the busy session");
        assert_eq!(
            error_field(&body, b'C').as_deref(),
            Some("57P01"),
            "the busy session got: {}",
            error_message(&body)
        );
        // No reconfiguration, no restart of pgmux: it recovers by itself.
        let conn = pgmux.conn_str(&db, "alice", "alicepw");
        wait_until(Duration::from_secs(15), "a new session to work", || {
            postgres::Client::connect(&conn, postgres::NoTls).and_then(|mut c| c.simple_query("SELECT 1")).is_ok()
        });
        let v: i32 = idle.query_one(&stmt, &[&21]).expect("the idle session after the restart").get(0);
        assert_eq!(v, 42);
        let wm: String = idle.query_one("SELECT current_setting('work_mem')", &[]).unwrap().get(0);
        assert_eq!(wm, "5MB", "the idle session lost its setting across the restart");
    });
    assert!(backends(&private, &db).len() <= 2);
    assert!(!pgmux.log().contains(" died"), "a pgmux process died during the restart");
}

/// PostgreSQL stopped: new sessions get a clear error quickly, nothing spins while it is down, and everything
/// works again once it is back.
#[test]
fn postgres_down_errors_clearly_without_spinning_then_recovers() {
    let private = Postgres::private();
    let db = fresh_db(&private, "chaos_down");
    let pgmux = Pgmux::start(
        config_on(&private, &db, 2)
            .set("server_connect_timeout", "1")
            .set("query_wait_timeout", "2")
            .set("server_login_retry", "1"),
    );
    let conn = pgmux.conn_str(&db, "alice", "alicepw");
    with_deadline(&pgmux, Duration::from_secs(90), || {
        let mut idle = raw_connect(pgmux.port());
        raw_send(&mut idle, &startup_packet("alice", &db));
        read_until_ready(&mut idle).expect("raw login");
        assert_eq!(raw_query(&mut idle, "SELECT 1"), b'I');
        let mut other = pgmux.client(&db, "alice");
        other.simple_query("SELECT 1").unwrap();
        private.stop_fast();

        // New sessions: a clear error, quickly.
        for _ in 0..3 {
            let t = Instant::now();
            let err = match postgres::Client::connect(&conn, postgres::NoTls) {
                Ok(mut c) => c.simple_query("SELECT 1").expect_err("a query ran with PostgreSQL down"),
                Err(e) => e,
            };
            let msg = err.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| err.to_string());
            assert!(msg.contains("pgmux") && msg.contains("server"), "unclear error with PostgreSQL down: {err:?}");
            assert!(t.elapsed() < Duration::from_secs(4), "the error took {:?}", t.elapsed());
        }
        // An existing session's next query: the same clear error, not a silently closed connection.
        raw_send(&mut idle, &query_message("SELECT 1"));
        let (tag, body) = read_backend_message(&mut idle).expect("an existing session was closed without a word");
        assert_eq!(tag, b'E', "an existing session's query with PostgreSQL down got '{}'", tag as char);
        let msg = error_message(&body);
        assert!(msg.contains("pgmux") && msg.contains("server"), "unclear error with PostgreSQL down: {msg}");

        // Nothing spins: with a client knocking every 200 ms and one idle, the pgmux processes stay nearly idle.
        let ticks_before = cpu_ticks(&pgmux);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            let _ = postgres::Client::connect(&conn, postgres::NoTls)
                .and_then(|mut c| c.simple_query("SELECT 1").map(|_| ()));
            thread::sleep(Duration::from_millis(200));
        }
        let used = cpu_ticks(&pgmux) - ticks_before;
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        eprintln!("pgmux CPU while PostgreSQL was down: {used} ticks in 3 s (hz {hz})");
        assert!(used * 10 < 3 * hz, "pgmux used {used} ticks ({hz}/s) in 3 s with PostgreSQL down: spinning");

        private.start_again();
        wait_until(Duration::from_secs(15), "a new session to work after PostgreSQL is back", || {
            postgres::Client::connect(&conn, postgres::NoTls).and_then(|mut c| c.simple_query("SELECT 1")).is_ok()
        });
        // A session that stayed idle through the outage keeps working once its worker may connect again
        // (server_login_retry = 1 s after its last failed attempt).
        thread::sleep(Duration::from_millis(1500));
        other.simple_query("SELECT 1").expect("a session idle through the outage");
        let mut c = pgmux.client(&db, "alice");
        let got: String = c.query_one("SELECT current_database()::text", &[]).unwrap().get(0);
        assert_eq!(got, db);
    });
    assert!(backends(&private, &db).len() <= 2);
    assert!(!pgmux.log().contains(" died"), "a pgmux process died while PostgreSQL was down");
}

// ----- clients vanishing at every stage -----

/// Clients that vanish during the startup packet, during authentication, mid-query, mid-COPY, inside a
/// transaction and mid-pipeline, many times and all at once: nothing they did is committed, the pool stays within
/// its size with nothing left running, no pgmux process dies, and a session that watched it all is unaffected.
#[test]
fn clients_vanishing_at_every_stage_leave_the_pool_clean() {
    let pg = pg();
    let db = fresh_db(pg, "chaos_stages");
    let pgmux = Pgmux::start(config_on(pg, &db, 2).set("auth_type", "\"md5\""));
    let port = pgmux.port();
    let mut witness = pgmux.client(&db, "alice");
    witness.batch_execute("CREATE TABLE t (x int); SET work_mem = '7MB'").unwrap();
    let stmt = witness.prepare("SELECT $1::int4 + 1").unwrap();
    let listeners = pgmux.children("pgmux-listener");

    type Stage = fn(u16, &str);
    let stages: Vec<(&str, Stage)> = vec![
        ("connect and close", |port, _| drop(raw_connect(port))),
        ("half a startup packet", |port, db| {
            let mut s = raw_connect(port);
            let p = startup_packet("alice", db);
            raw_send(&mut s, &p[..p.len() / 2]);
        }),
        ("SSLRequest then close", |port, _| {
            let mut s = raw_connect(port);
            raw_send(&mut s, &ssl_request());
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut s, &mut b);
        }),
        ("during md5 auth", |port, db| {
            let mut s = raw_connect(port);
            raw_send(&mut s, &startup_packet("alice", db));
            let _ = read_backend_message(&mut s);
        }),
        ("half a password message", |port, db| {
            let mut s = raw_connect(port);
            raw_send(&mut s, &startup_packet("alice", db));
            let _ = read_backend_message(&mut s);
            let p = password_message("md5ffffffffffffffffffffffffffffffff");
            raw_send(&mut s, &p[..7]);
        }),
        ("mid-query", |port, db| {
            let mut s = raw_login_md5(port, "alice", "alicepw", db);
            raw_send(&mut s, &query_message("SELECT pg_sleep(5.001)"));
            thread::sleep(Duration::from_millis(100));
        }),
        ("mid-COPY", |port, db| {
            let mut s = raw_login_md5(port, "alice", "alicepw", db);
            raw_send(&mut s, &query_message("COPY t FROM STDIN"));
            while let Some((tag, _)) = read_backend_message(&mut s) {
                if tag == b'G' || tag == b'E' {
                    break;
                }
            }
            raw_send(&mut s, &with_length(Some(b'd'), b"-10\n-11\n".to_vec()));
        }),
        ("inside a transaction", |port, db| {
            let mut s = raw_login_md5(port, "alice", "alicepw", db);
            assert_eq!(raw_query(&mut s, "BEGIN; INSERT INTO t VALUES (-1)"), b'T');
        }),
        ("mid-pipeline", |port, db| {
            let mut s = raw_login_md5(port, "alice", "alicepw", db);
            let mut batch = query_message("BEGIN");
            batch.extend(parse_bind_execute("INSERT INTO t VALUES (-2)"));
            batch.extend(parse_bind_execute("SELECT pg_sleep(0.3)"));
            batch.extend(with_length(Some(b'S'), Vec::new()));
            batch.extend(query_message("INSERT INTO t VALUES (-3)"));
            batch.extend(query_message("COMMIT"));
            raw_send(&mut s, &batch);
            // Gone before the pipeline is through: its COMMIT is never run for it.
            thread::sleep(Duration::from_millis(50));
        }),
    ];
    with_deadline(&pgmux, Duration::from_secs(120), || {
        for round in 0..3 {
            let handles: Vec<_> = stages
                .iter()
                .flat_map(|&(name, f)| {
                    let db = db.clone();
                    (0..4).map(move |_| {
                        let db = db.clone();
                        (name, thread::spawn(move || f(port, &db)))
                    })
                })
                .collect();
            for (name, h) in handles {
                h.join().unwrap_or_else(|_| panic!("round {round}: stage {name:?} failed"));
            }
            let v: i32 = witness.query_one(&stmt, &[&round]).expect("the witness session was hurt").get(0);
            assert_eq!(v, round + 1);
        }
        // And one burst of 300 clients logged in, half of them busy, gone at once.
        let burst: Vec<TcpStream> = (0..300)
            .map(|i| {
                let mut s = raw_login_md5(port, "alice", "alicepw", &db);
                if i % 2 == 0 {
                    raw_send(&mut s, &query_message("BEGIN; INSERT INTO t VALUES (-4); SELECT pg_sleep(0.5)"));
                }
                s
            })
            .collect();
        drop(burst);
        wait_until(Duration::from_secs(15), "every backend idle, within the pool size", || {
            let b = backends(pg, &db);
            b.len() <= 2 && b.iter().all(|(_, state, _)| state == "idle")
        });
    });
    let wm: String = witness.query_one("SELECT current_setting('work_mem')", &[]).unwrap().get(0);
    assert_eq!(wm, "7MB", "the witness session lost its setting");
    let n: i64 = witness.query_one("SELECT count(*) FROM t WHERE x < 0", &[]).unwrap().get(0);
    assert_eq!(n, 0, "work of clients that vanished was committed");
    let log = pgmux.log();
    assert!(!log.contains(" died") && !log.contains("panicked"), "a pgmux process died");
    assert_eq!(pgmux.children("pgmux-listener"), listeners, "a listener was replaced");
    let mut fresh = pgmux.client(&db, "alice");
    fresh.simple_query("SELECT 1").expect("a new session after it all");
    let _ = std::io::stderr().flush();
}

#[test]
fn md5_helper_matches_postgres() {
    // The raw md5 login above must be right, or every stage test would fail for the wrong reason.
    let pgmux = Pgmux::start(PgmuxConfig::new().set("auth_type", "\"md5\""));
    let mut s = raw_login_md5(pgmux.port(), "alice", "alicepw", "appdb");
    assert_eq!(raw_query(&mut s, "SELECT 1"), b'I');
    let mut bad = raw_connect(pgmux.port());
    raw_send(&mut bad, &startup_packet("alice", "appdb"));
    let (_, body) = read_backend_message(&mut bad).expect("auth request");
    let salt: [u8; 4] = body[4..8].try_into().unwrap();
    raw_send(&mut bad, &password_message(&md5_response("alice", "wrong", salt)));
    let (tag, body) = read_backend_message(&mut bad).expect("an answer to a wrong password");
    assert_eq!(tag, b'E');
    assert_eq!(error_field(&body, b'C').as_deref(), Some("28P01"));
}
