//! Core behaviour of pgmux seen by real clients: psql, pgbench, the `postgres` / `tokio-postgres` drivers and a
//! raw protocol client. Every test starts its own pgmux in front of the binary's shared PostgreSQL 15.
//!
//! Tests that count upstream backends use a database/user combination no other test in this file uses
//! (pgbench: bob@appdb, multiplexing: alice@otherdb), because tests run concurrently on one cluster.
//!
//! Every test body runs under [`with_deadline`]: a hung pooler kills pgmux (so blocked clients see EOF) and fails
//! the test instead of hanging the run.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pgmux_tests::util::{
    error_message, query_message, raw_connect, raw_send, read_backend_message, read_until_ready, startup_packet,
    with_length,
};
use pgmux_tests::{with_deadline, Pgmux, PgmuxConfig, Postgres};

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn pg() -> &'static Postgres {
    Postgres::shared()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A psql command with the fixture's flags (`-X -A -t -v ON_ERROR_STOP=1`) and no PG* environment.
fn psql_cmd() -> Command {
    let mut cmd = Command::new(pg().bin("psql"));
    pgmux_tests::postgres::clear_pg_env(&mut cmd);
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]).env("PGCONNECT_TIMEOUT", "10").stdin(Stdio::null());
    cmd
}

/// psql through pgmux's Unix socket.
fn psql_unix(pgmux: &Pgmux, db: &str, user: &str, sql: &str) -> Output {
    let mut cmd = psql_cmd();
    cmd.arg("-h").arg(pgmux.socket_dir()).args(["-p", &pgmux.port().to_string(), "-U", user, "-d", db, "-c", sql]);
    cmd.output().expect("spawn psql")
}

/// Connects with extra libpq-style key/value text appended to the fixture's connection string.
fn client_with(pgmux: &Pgmux, db: &str, user: &str, extra: &str) -> postgres::Client {
    let s = format!("{} {extra}", pgmux.conn_str(db, user, ""));
    postgres::Client::connect(&s, postgres::NoTls).unwrap_or_else(|e| panic!("connect {s}: {e:?}"))
}

/// The SQLSTATE and message of a driver error, or its Display text when it is not a database error.
fn db_error(e: &postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => (String::new(), format!("{e} ({e:?})")),
    }
}

/// Number of client backends PostgreSQL has for `db`/`user`, and their pids (admin connection excluded).
fn backends(db: &str, user: &str) -> Vec<i32> {
    let out = pg().psql_admin(
        "postgres",
        &format!(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = '{db}' \
             AND usename = '{user}' AND pid <> pg_backend_pid() ORDER BY pid"
        ),
    );
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().unwrap()).collect()
}

/// Polls [`backends`] every ~50 ms on a thread until stopped; returns the largest count seen.
struct BackendSampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<i32>)>>,
}

impl BackendSampler {
    fn start(db: &'static str, user: &'static str) -> BackendSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            let mut at_max = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let b = backends(db, user);
                if b.len() > max {
                    max = b.len();
                    at_max = b;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (max, at_max)
        });
        BackendSampler { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> (usize, Vec<i32>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("sampler thread")
    }
}

// ----- raw protocol -----

fn cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0u16.to_be_bytes());
    with_length(Some(b'P'), b)
}

fn bind_msg(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0u16.to_be_bytes()); // parameter format codes
    b.extend_from_slice(&0u16.to_be_bytes()); // parameters
    b.extend_from_slice(&0u16.to_be_bytes()); // result format codes
    with_length(Some(b'B'), b)
}

fn execute_msg(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0u32.to_be_bytes());
    with_length(Some(b'E'), b)
}

fn sync_msg() -> Vec<u8> {
    with_length(Some(b'S'), Vec::new())
}

fn flush_msg() -> Vec<u8> {
    with_length(Some(b'H'), Vec::new())
}

/// Parse + Bind + Execute of `sql` with the unnamed statement and portal.
fn pbe(sql: &str) -> Vec<u8> {
    let mut v = parse_msg("", sql);
    v.extend(bind_msg("", ""));
    v.extend(execute_msg(""));
    v
}

/// The text values of a DataRow body.
fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            out.push(Some(String::from_utf8_lossy(&body[pos..pos + len]).into_owned()));
            pos += len;
        }
    }
    out
}

/// Logs in over a raw socket (trust) and reads up to the first ReadyForQuery.
fn raw_login(pgmux: &Pgmux, user: &str, db: &str) -> TcpStream {
    let mut s = raw_connect(pgmux.port());
    raw_send(&mut s, &startup_packet(user, db));
    let msgs = read_until_ready(&mut s).expect("pgmux closed during login");
    assert_eq!(msgs[0].0, b'R', "first login reply is not Authentication: {:?}", msgs[0].0 as char);
    assert!(
        !msgs.iter().any(|m| m.0 == b'E'),
        "login failed: {:?}",
        msgs.iter().filter(|m| m.0 == b'E').map(|m| error_message(&m.1)).collect::<Vec<_>>()
    );
    s
}

/// A compact picture of backend messages: type letters, DataRows as their first value, errors as `E(message)`.
fn describe(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(t, body)| match t {
            b'D' => format!("D({})", data_row(body)[0].clone().unwrap_or_else(|| "NULL".into())),
            b'E' => format!("E({})", error_message(body)),
            b'Z' => format!("Z({})", body.first().map(|b| *b as char).unwrap_or('?')),
            t => (*t as char).to_string(),
        })
        .collect()
}

/// Reads exactly `n` ReadyForQuery-terminated groups and returns all messages.
fn read_n_ready(s: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.extend(read_until_ready(s).expect("pgmux closed the connection"));
    }
    all
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. psql
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn psql_tcp_and_unix_socket() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        // A query's result over TCP.
        let out = pgmux.psql("appdb", "alice", "SELECT 40 + 2, current_user, current_database()");
        assert!(out.status.success(), "psql failed: {}", stderr_of(&out));
        assert_eq!(stdout_of(&out).trim(), "42|alice|appdb");

        // Several statements in one simple Query (psql -c sends them as one message, one implicit transaction):
        // the temp table exists for the later statements of the same message.
        let out = pgmux.psql(
            "appdb",
            "alice",
            "CREATE TEMP TABLE core_psql_t (a int); INSERT INTO core_psql_t VALUES (1), (2), (39); \
             SELECT sum(a) FROM core_psql_t",
        );
        assert!(out.status.success(), "multi-statement psql failed: {}", stderr_of(&out));
        let stdout = stdout_of(&out);
        assert_eq!(stdout.lines().last().map(str::trim), Some("42"), "stdout: {stdout:?}");

        // The same with the driver's simple_query: every statement's rows come back, in order.
        let mut c = pgmux.client("appdb", "alice");
        let msgs = c.simple_query("SELECT 1 AS a; SELECT 'two' AS b, 3 AS c; SELECT 4 AS d").unwrap();
        let rows: Vec<Vec<String>> = msgs
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect())
                }
                _ => None,
            })
            .collect();
        assert_eq!(rows, vec![vec!["1".to_string()], vec!["two".into(), "3".into()], vec!["4".into()]]);

        // An error in a multi-statement Query: psql reports it and exits non-zero.
        let out = pgmux.psql("appdb", "alice", "SELECT 1; SELECT 1/0; SELECT 3");
        assert!(!out.status.success(), "psql succeeded on division by zero");
        assert!(stderr_of(&out).contains("division by zero"), "stderr: {}", stderr_of(&out));

        // The Unix socket in socket_dir.
        let sock = pgmux.socket_dir().join(format!(".s.PGSQL.{}", pgmux.port()));
        assert!(sock.exists(), "no Unix socket at {}", sock.display());
        let out = psql_unix(&pgmux, "appdb", "alice", "SELECT 6 * 7, current_user");
        assert!(out.status.success(), "psql over the Unix socket failed: {}", stderr_of(&out));
        assert_eq!(stdout_of(&out).trim(), "42|alice");
        let out = psql_unix(&pgmux, "otherdb", "bob", "SELECT current_database(), current_user; SELECT 'x' || 'y'");
        assert!(out.status.success(), "psql over the Unix socket failed: {}", stderr_of(&out));
        assert_eq!(stdout_of(&out).trim(), "otherdb|bob\nxy");
        // The driver over the Unix socket too.
        let mut u = postgres::Client::connect(
            &format!("host={} port={} dbname=appdb user=alice", pgmux.socket_dir().display(), pgmux.port()),
            postgres::NoTls,
        )
        .expect("driver over the Unix socket");
        let v: i32 = u.query_one("SELECT $1::int * 2", &[&21i32]).unwrap().get(0);
        assert_eq!(v, 42);
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 2. pgbench
// ---------------------------------------------------------------------------------------------------------------

/// Checks a pgbench run: exit 0, no failed transactions, tps > 0. Returns tps.
fn check_pgbench(what: &str, out: &Output) -> f64 {
    let stdout = stdout_of(out);
    let stderr = stderr_of(out);
    assert!(
        out.status.success(),
        "pgbench {what} exited {}:\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        last_lines(&stderr, 40)
    );
    assert!(stdout.contains("number of failed transactions: 0 "), "pgbench {what}: failed transactions:\n{stdout}");
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("pgbench {what}: no tps line in:\n{stdout}"));
    assert!(tps > 0.0, "pgbench {what}: tps = {tps}\n{stdout}");
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("pgbench {what}: no processed count in:\n{stdout}"));
    assert!(processed > 0, "pgbench {what}: processed {processed}");
    eprintln!("pgbench {what}: tps = {tps:.0}, {processed} transactions");
    tps
}

#[test]
fn pgbench_200_clients_pool_of_4() {
    // bob@appdb is used by no other test here, so its backends are this pgmux's.
    let pgmux = Pgmux::start(PgmuxConfig::new().set("max_client_conn", "5000"));
    with_deadline(&pgmux, Duration::from_secs(150), || {
        let out = pgmux.pgbench(&["-U", "bob", "-i", "-s", "2", "-q", "appdb"]);
        assert!(
            out.status.success(),
            "pgbench -i through pgmux failed ({}):\n{}\n{}",
            out.status,
            stdout_of(&out),
            last_lines(&stderr_of(&out), 40)
        );
        let n = pg().psql_admin("appdb", "SELECT count(*) FROM pgbench_accounts");
        assert_eq!(n.trim(), "200000", "pgbench -i -s 2 loaded {n} accounts");

        let sampler = BackendSampler::start("appdb", "bob");
        for (what, args) in [
            ("-S -M simple", &["-S", "-M", "simple"][..]),
            ("-S -M extended", &["-S", "-M", "extended"][..]),
            ("TPC-B -M simple", &["-M", "simple"][..]),
            ("TPC-B -M extended", &["-M", "extended"][..]),
        ] {
            let mut a = vec!["-U", "bob", "-c", "200", "-j", "2", "-T", "5", "-n"];
            a.extend_from_slice(args);
            a.push("appdb");
            let out = pgmux.pgbench(&a);
            check_pgbench(what, &out);
        }
        let (max_seen, pids_at_max) = sampler.finish();
        assert!(max_seen >= 1, "the sampler never saw a backend of bob@appdb during pgbench");
        assert!(
            max_seen <= 4,
            "PostgreSQL had {max_seen} client backends for bob@appdb during pgbench (pool of 4): {pids_at_max:?}"
        );
        let after = backends("appdb", "bob");
        assert!(
            !after.is_empty() && after.len() <= 4,
            "after pgbench PostgreSQL has {} client backends for bob@appdb (want 1..=4): {after:?}",
            after.len()
        );
        // TPC-B really ran: history rows were written.
        let h: i64 = pg().psql_admin("appdb", "SELECT count(*) FROM pgbench_history").trim().parse().unwrap();
        assert!(h > 0, "no pgbench_history rows after two TPC-B runs");
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 3. many concurrent driver sessions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn fifty_threads_fifty_transactions_each() {
    const THREADS: i32 = 50;
    const TXNS: i32 = 50;
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(120), || {
        let mut setup = pgmux.client("appdb", "alice");
        setup
            .batch_execute(
                "DROP TABLE IF EXISTS core_mt_rows, core_mt_counter;
                 CREATE TABLE core_mt_counter (id int PRIMARY KEY, n int NOT NULL);
                 CREATE TABLE core_mt_rows (thread int NOT NULL, seq int NOT NULL, state text NOT NULL,
                                            PRIMARY KEY (thread, seq));
                 INSERT INTO core_mt_counter SELECT g, 0 FROM generate_series(0, 50) g;",
            )
            .unwrap();
        let start = Arc::new(Barrier::new(THREADS as usize));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        std::thread::scope(|scope| {
            for tid in 1..=THREADS {
                let start = start.clone();
                let failures = failures.clone();
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "alice");
                    start.wait();
                    let fail = |m: String| failures.lock().unwrap().push(format!("thread {tid}: {m}"));
                    for seq in 0..TXNS {
                        let mut t = c.transaction().unwrap();
                        let n: i32 = t
                            .query_one("UPDATE core_mt_counter SET n = n + 1 WHERE id = $1 RETURNING n", &[&tid])
                            .unwrap()
                            .get(0);
                        if n != seq + 1 {
                            fail(format!("counter {n} in transaction {seq}"));
                        }
                        t.execute("UPDATE core_mt_counter SET n = n + 1 WHERE id = 0", &[]).unwrap();
                        t.execute("INSERT INTO core_mt_rows VALUES ($1, $2, 'pending')", &[&tid, &seq]).unwrap();
                        // Only this transaction's uncommitted row may be visible.
                        let pending: Vec<(i32, i32)> = t
                            .query("SELECT thread, seq FROM core_mt_rows WHERE state = 'pending'", &[])
                            .unwrap()
                            .iter()
                            .map(|r| (r.get(0), r.get(1)))
                            .collect();
                        if pending != vec![(tid, seq)] {
                            fail(format!("saw pending rows {pending:?} in transaction {seq}"));
                        }
                        let mine: i64 =
                            t.query_one("SELECT count(*) FROM core_mt_rows WHERE thread = $1", &[&tid]).unwrap().get(0);
                        if mine != i64::from(seq) + 1 {
                            fail(format!("sees {mine} own rows in transaction {seq}"));
                        }
                        let own_n: i32 =
                            t.query_one("SELECT n FROM core_mt_counter WHERE id = $1", &[&tid]).unwrap().get(0);
                        if own_n != seq + 1 {
                            fail(format!("re-read counter {own_n} in transaction {seq}"));
                        }
                        t.execute(
                            "UPDATE core_mt_rows SET state = 'done' WHERE thread = $1 AND seq = $2",
                            &[&tid, &seq],
                        )
                        .unwrap();
                        t.commit().unwrap();
                    }
                });
            }
        });
        let failures = failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} isolation failures, first: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        let total: i32 = setup.query_one("SELECT n FROM core_mt_counter WHERE id = 0", &[]).unwrap().get(0);
        assert_eq!(total, THREADS * TXNS);
        let per_thread: Vec<(i32, i32)> = setup
            .query("SELECT id, n FROM core_mt_counter WHERE id > 0 ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want: Vec<(i32, i32)> = (1..=THREADS).map(|t| (t, TXNS)).collect();
        assert_eq!(per_thread, want);
        let row = setup
            .query_one(
                "SELECT count(*), count(DISTINCT (thread, seq)), count(*) FILTER (WHERE state <> 'done') FROM core_mt_rows",
                &[],
            )
            .unwrap();
        let (rows, distinct, not_done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((rows, distinct, not_done), (i64::from(THREADS * TXNS), i64::from(THREADS * TXNS), 0));
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 4. COPY
// ---------------------------------------------------------------------------------------------------------------

/// 10,000 rows of COPY text, `id\tpayload\n`, ordered by id.
fn copy_rows() -> String {
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&format!("{i}\trow-{i}-{}\n", "x".repeat(i % 37)));
    }
    s
}

/// The same rows as [`copy_rows`], generated by the server.
const COPY_ROWS_SQL: &str = "SELECT g, 'row-' || g || '-' || repeat('x', g % 37) FROM generate_series(0, 9999) g";

fn copy_out_string(c: &mut postgres::Client, sql: &str) -> String {
    let mut got = String::new();
    c.copy_out(sql).unwrap().read_to_string(&mut got).unwrap();
    got
}

/// Simple-protocol `COPY ... FROM STDIN` over a raw session: sends `rows` as CopyData messages (each row its own
/// message), CopyDone, and returns the messages up to ReadyForQuery.
fn raw_copy_in(s: &mut TcpStream, sql: &str, rows: &[&str]) -> Vec<(u8, Vec<u8>)> {
    raw_send(s, &query_message(sql));
    let (t, body) = read_backend_message(s).expect("pgmux closed the connection");
    assert_eq!(t, b'G', "expected CopyInResponse, got {:?} {}", t as char, error_message(&body));
    for row in rows {
        raw_send(s, &with_length(Some(b'd'), row.as_bytes().to_vec()));
    }
    raw_send(s, &with_length(Some(b'c'), Vec::new()));
    read_until_ready(s).expect("pgmux closed the connection")
}

#[test]
fn copy_out_10000_rows() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS core_copy_out; CREATE TABLE core_copy_out (id int PRIMARY KEY, payload text);
             INSERT INTO core_copy_out {COPY_ROWS_SQL}"
        ))
        .unwrap();
        let expected = copy_rows();
        let got = copy_out_string(&mut c, "COPY (SELECT id, payload FROM core_copy_out ORDER BY id) TO STDOUT");
        assert_eq!(got.len(), expected.len(), "COPY TO STDOUT returned a different amount of data");
        assert!(got == expected, "COPY TO STDOUT returned different data");
        // The plain `COPY t TO STDOUT` form (heap order: sort the lines).
        let got = copy_out_string(&mut c, "COPY core_copy_out TO STDOUT");
        let mut lines: Vec<&str> = got.lines().collect();
        lines.sort_by_key(|l| l.split('\t').next().unwrap().parse::<i32>().unwrap());
        assert_eq!(lines, expected.lines().collect::<Vec<_>>());
        // The session and a second one are fine afterwards.
        assert_eq!(c.query_one("SELECT count(*) FROM core_copy_out", &[]).unwrap().get::<_, i64>(0), 10_000);
        // psql's COPY TO STDOUT (simple protocol).
        let out = pgmux.psql("appdb", "alice", "COPY (SELECT id, payload FROM core_copy_out ORDER BY id) TO STDOUT");
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(stdout_of(&out) == expected, "psql COPY TO STDOUT returned different data");
    });
    pgmux.stop();
}

#[test]
fn copy_in_10000_rows_driver() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(
            "DROP TABLE IF EXISTS core_copy_in; CREATE TABLE core_copy_in (id int PRIMARY KEY, payload text)",
        )
        .unwrap();
        let expected = copy_rows();
        let mut w = c.copy_in("COPY core_copy_in (id, payload) FROM STDIN").unwrap();
        for chunk in expected.as_bytes().chunks(7_919) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 10_000, "COPY FROM STDIN row count");
        // The session goes on: the next request (the driver's Close of the COPY statement, then a query).
        let n: i64 = c
            .query_one("SELECT count(*) FROM core_copy_in", &[])
            .unwrap_or_else(|e| panic!("session broken after copy_in: {e:?}"))
            .get(0);
        assert_eq!(n, 10_000);
        let got = copy_out_string(&mut c, "COPY (SELECT id, payload FROM core_copy_in ORDER BY id) TO STDOUT");
        assert!(got == expected, "rows read back differ from those copied in");
    });
    pgmux.stop();
}

/// The driver's COPY FROM STDIN sends Bind/Execute/Sync, then CopyData..., CopyDone, Sync. PostgreSQL ignores a
/// Sync received in copy-in mode, so it answers with ONE ReadyForQuery. Raw-protocol reproducer of that sequence.
#[test]
fn copy_in_extended_protocol_sync_inside_copy() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute("DROP TABLE IF EXISTS core_copy_x; CREATE TABLE core_copy_x (id int, t text)").unwrap();
        let mut s = raw_login(&pgmux, "alice", "appdb");
        let mut batch = pbe("COPY core_copy_x FROM STDIN");
        batch.extend(sync_msg());
        raw_send(&mut s, &batch);
        let (t1, _) = read_backend_message(&mut s).expect("closed");
        let (t2, _) = read_backend_message(&mut s).expect("closed");
        let (t3, _) = read_backend_message(&mut s).expect("closed");
        assert_eq!([t1, t2, t3], [b'1', b'2', b'G'], "Parse, Bind, CopyInResponse");
        let mut batch = Vec::new();
        for row in ["1\tone\n", "2\ttwo\n"] {
            batch.extend(with_length(Some(b'd'), row.as_bytes().to_vec()));
        }
        batch.extend(with_length(Some(b'c'), Vec::new()));
        batch.extend(sync_msg());
        raw_send(&mut s, &batch);
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["C", "Z(I)"]));
        // The COPY is over and the raw session idles: the (single) upstream must be free for another session.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = c.query_one("SELECT count(*) FROM core_copy_x", &[]).map(|r| r.get::<_, i64>(0));
            let _ = tx.send((r.map_err(|e| e.to_string()), c));
        });
        let (r, mut c) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("another session starved: the idle session still holds the upstream after its COPY");
        assert_eq!(r, Ok(2));
        // The session continues with a simple query, then an extended one.
        raw_send(&mut s, &query_message("SELECT count(*) FROM core_copy_x"));
        let got = read_until_ready(&mut s);
        assert_eq!(
            got.as_deref().map(describe),
            Some(strs(&["T", "D(2)", "C", "Z(I)"])),
            "session after an extended-protocol COPY FROM STDIN (None = pgmux closed it)"
        );
        let mut batch = pbe("SELECT 'next'");
        batch.extend(sync_msg());
        raw_send(&mut s, &batch);
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["1", "2", "D(next)", "C", "Z(I)"]));
        // Another session on the (single) worker is served normally too.
        assert_eq!(c.query_one("SELECT count(*) FROM core_copy_x", &[]).unwrap().get::<_, i64>(0), 2);
    });
    pgmux.stop();
}

#[test]
fn copy_large_rows_stream_through() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(
            "DROP TABLE IF EXISTS core_copy_big; CREATE TABLE core_copy_big (id int PRIMARY KEY, payload text)",
        )
        .unwrap();
        // One row of 150 KB (above the 64 KiB streaming threshold), one of 3 MB (above the 1 MiB high water).
        let big1: String = (0..150_000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let big2: String = (0..3_000_000).map(|i| (b'A' + (i % 23) as u8) as char).collect();
        let (r1, r3) = (format!("1\t{big1}\n"), format!("3\t{big2}\n"));
        // In over the simple protocol, each row one CopyData message.
        let mut s = raw_login(&pgmux, "alice", "appdb");
        let got = raw_copy_in(&mut s, "COPY core_copy_big (id, payload) FROM STDIN", &[&r1, "2\tsmall\n", &r3]);
        assert_eq!(describe(&got), strs(&["C", "Z(I)"]));
        let lens: Vec<(i32, i32)> = c
            .query("SELECT id, length(payload) FROM core_copy_big ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(lens, vec![(1, 150_000), (2, 5), (3, 3_000_000)]);
        // Out with COPY TO STDOUT.
        let got = copy_out_string(&mut c, "COPY (SELECT id, payload FROM core_copy_big ORDER BY id) TO STDOUT");
        assert!(got == format!("{r1}2\tsmall\n{r3}"), "large rows came back different ({} bytes)", got.len());
        // Out as DataRows, and a 3 MB parameter in.
        let rows = c.query("SELECT id, payload FROM core_copy_big ORDER BY id", &[]).unwrap();
        let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert!(got == vec![(1, big1.clone()), (2, "small".into()), (3, big2.clone())], "large DataRows differ");
        let same: bool = c.query_one("SELECT payload = $1 FROM core_copy_big WHERE id = 3", &[&big2]).unwrap().get(0);
        assert!(same, "3 MB parameter did not arrive intact");
        // The raw session is still in step.
        raw_send(&mut s, &query_message("SELECT sum(length(payload)) FROM core_copy_big"));
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["T", "D(3150005)", "C", "Z(I)"]));
    });
    pgmux.stop();
}

#[test]
fn copy_in_large_rows_driver() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(
            "DROP TABLE IF EXISTS core_copy_big2; CREATE TABLE core_copy_big2 (id int PRIMARY KEY, payload text)",
        )
        .unwrap();
        let big: String = (0..150_000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let mut w = c.copy_in("COPY core_copy_big2 (id, payload) FROM STDIN").unwrap();
        w.write_all(format!("1\t{big}\n2\tsmall\n").as_bytes()).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let got = c
            .query_one("SELECT payload FROM core_copy_big2 WHERE id = 1", &[])
            .unwrap_or_else(|e| panic!("session broken after copy_in: {e:?}"))
            .get::<_, String>(0);
        assert!(got == big, "150 KB row read back differs");
        let got = copy_out_string(&mut c, "COPY (SELECT id, payload FROM core_copy_big2 ORDER BY id) TO STDOUT");
        assert!(got == format!("1\t{big}\n2\tsmall\n"), "COPY TO STDOUT of the 150 KB row differs");
    });
    pgmux.stop();
}

/// 10,000 rows with a bad one in the middle.
fn rows_with_bad_one() -> String {
    let mut data = String::new();
    for i in 0..10_000 {
        if i == 5_000 {
            data.push_str("not-a-number\tbad row\n");
        } else {
            data.push_str(&format!("{i}\tgood\n"));
        }
    }
    data
}

#[test]
fn copy_in_bad_row_simple_protocol() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(
            "DROP TABLE IF EXISTS core_copy_err1; CREATE TABLE core_copy_err1 (id int PRIMARY KEY, payload text)",
        )
        .unwrap();
        let mut s = raw_login(&pgmux, "alice", "appdb");
        let data = rows_with_bad_one();
        let rows: Vec<&str> = data.split_inclusive('\n').collect();
        let got = describe(&raw_copy_in(&mut s, "COPY core_copy_err1 (id, payload) FROM STDIN", &rows));
        assert!(
            got.len() == 2 && got[0].starts_with("E(invalid input syntax for type integer") && got[1] == "Z(I)",
            "simple-protocol COPY with a bad row: {got:?}"
        );
        raw_send(&mut s, &query_message("SELECT count(*) FROM core_copy_err1"));
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["T", "D(0)", "C", "Z(I)"]));
        let got =
            describe(&raw_copy_in(&mut s, "COPY core_copy_err1 (id, payload) FROM STDIN", &["1\tone\n", "2\ttwo\n"]));
        assert_eq!(got, strs(&["C", "Z(I)"]));
        assert_eq!(c.query_one("SELECT count(*) FROM core_copy_err1", &[]).unwrap().get::<_, i64>(0), 2);
        // psql reading COPY data from stdin (simple protocol), with a bad row.
        let mut cmd = psql_cmd();
        cmd.args(["-h", "127.0.0.1", "-p", &pgmux.port().to_string(), "-U", "alice", "-d", "appdb"])
            .args(["-c", "COPY core_copy_err1 (id, payload) FROM STDIN"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"3\tthree\nbad\tx\n4\tfour\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "psql COPY with a bad row succeeded");
        assert!(stderr_of(&out).contains("invalid input syntax for type integer"), "{}", stderr_of(&out));
        assert_eq!(c.query_one("SELECT count(*) FROM core_copy_err1", &[]).unwrap().get::<_, i64>(0), 2);
    });
    pgmux.stop();
}

#[test]
fn copy_in_bad_row_driver() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute(
            "DROP TABLE IF EXISTS core_copy_err2; CREATE TABLE core_copy_err2 (id int PRIMARY KEY, payload text)",
        )
        .unwrap();
        let data = rows_with_bad_one();
        let mut w = c.copy_in("COPY core_copy_err2 (id, payload) FROM STDIN").unwrap();
        let write_result = data.as_bytes().chunks(4096).try_for_each(|ch| w.write_all(ch));
        let result = match write_result {
            Ok(()) => w.finish().map_err(|e| db_error(&e)),
            Err(e) => {
                drop(w);
                Err((String::new(), format!("write: {e}")))
            }
        };
        let (code, msg) = result.expect_err("COPY with a bad row succeeded");
        assert_eq!(code, "22P02", "unexpected error for the bad row: {msg}");
        assert!(msg.contains("invalid input syntax for type integer"), "error: {msg}");
        let n: i64 = c
            .query_one("SELECT count(*) FROM core_copy_err2", &[])
            .unwrap_or_else(|e| panic!("session broken after a failed copy_in: {e:?}"))
            .get(0);
        assert_eq!(n, 0, "a failed COPY left rows behind");
        let v: i32 = c.query_one("SELECT 7 * $1::int", &[&6i32]).unwrap().get(0);
        assert_eq!(v, 42, "session not usable after a failed COPY");
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 5. pipelined extended protocol
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn pipelined_extended_protocol_raw() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut s = raw_login(&pgmux, "alice", "appdb");

        // P/B/E x3, one Sync, one write.
        let mut batch = Vec::new();
        for q in ["SELECT 1", "SELECT 2", "SELECT 3"] {
            batch.extend(pbe(q));
        }
        batch.extend(sync_msg());
        raw_send(&mut s, &batch);
        let got = describe(&read_n_ready(&mut s, 1));
        assert_eq!(got, strs(&["1", "2", "D(1)", "C", "1", "2", "D(2)", "C", "1", "2", "D(3)", "C", "Z(I)"]));

        // (P/B/E/Sync) x3 in one write.
        let mut batch = Vec::new();
        for q in ["SELECT 'a'", "SELECT 'b'", "SELECT 'c'"] {
            batch.extend(pbe(q));
            batch.extend(sync_msg());
        }
        raw_send(&mut s, &batch);
        let got = describe(&read_n_ready(&mut s, 3));
        assert_eq!(
            got,
            strs(&["1", "2", "D(a)", "C", "Z(I)", "1", "2", "D(b)", "C", "Z(I)", "1", "2", "D(c)", "C", "Z(I)"])
        );

        // Named statements, Describe, a transaction across Syncs, all in one write.
        let mut batch = Vec::new();
        batch.extend(with_length(Some(b'Q'), b"BEGIN\0".to_vec()));
        batch.extend(parse_msg("s1", "SELECT 10 + 1"));
        batch.extend(bind_msg("p1", "s1"));
        batch.extend(with_length(Some(b'D'), b"Pp1\0".to_vec()));
        batch.extend(execute_msg("p1"));
        batch.extend(sync_msg());
        batch.extend(bind_msg("", "s1"));
        batch.extend(execute_msg(""));
        batch.extend(sync_msg());
        batch.extend(with_length(Some(b'Q'), b"COMMIT\0".to_vec()));
        raw_send(&mut s, &batch);
        let got = describe(&read_n_ready(&mut s, 4));
        assert_eq!(
            got,
            strs(&["C", "Z(T)", "1", "2", "T", "D(11)", "C", "Z(T)", "2", "D(11)", "C", "Z(T)", "C", "Z(I)"])
        );

        // Flush without Sync: the results come before any Sync is sent.
        let mut batch = pbe("SELECT 'flushed'");
        batch.extend(flush_msg());
        raw_send(&mut s, &batch);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(read_backend_message(&mut s).expect("closed"));
        }
        assert_eq!(describe(&got), strs(&["1", "2", "D(flushed)", "C"]));
        // More work in the same unsynced batch, flushed again, then the Sync.
        let mut batch = pbe("SELECT 'again'");
        batch.extend(flush_msg());
        raw_send(&mut s, &batch);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(read_backend_message(&mut s).expect("closed"));
        }
        assert_eq!(describe(&got), strs(&["1", "2", "D(again)", "C"]));
        raw_send(&mut s, &sync_msg());
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["Z(I)"]));

        // An error in the middle of a pipeline: the rest up to Sync is skipped, the session continues.
        let mut batch = Vec::new();
        batch.extend(pbe("SELECT 'first'"));
        // (1/0 of constants fails when planned, at Bind; the volatile one fails in Execute.)
        batch.extend(pbe("SELECT 1/0"));
        batch.extend(pbe("SELECT 'skipped'"));
        batch.extend(sync_msg());
        batch.extend(pbe("SELECT 'after sync'"));
        batch.extend(pbe("SELECT 1/(random() * 0)::int"));
        batch.extend(pbe("SELECT 'skipped too'"));
        batch.extend(flush_msg());
        batch.extend(pbe("SELECT 'and this'"));
        batch.extend(sync_msg());
        batch.extend(pbe("SELECT 'last'"));
        batch.extend(sync_msg());
        raw_send(&mut s, &batch);
        let got = describe(&read_n_ready(&mut s, 3));
        assert_eq!(
            got,
            strs(&[
                "1",
                "2",
                "D(first)",
                "C",
                "1",
                "E(division by zero)",
                "Z(I)",
                "1",
                "2",
                "D(after sync)",
                "C",
                "1",
                "2",
                "E(division by zero)",
                "Z(I)",
                "1",
                "2",
                "D(last)",
                "C",
                "Z(I)",
            ])
        );
        // A Parse error (bad SQL) in the middle, three batches.
        let mut batch = Vec::new();
        for q in ["SELECT 'x'", "SELEC oops", "SELECT 'z'"] {
            batch.extend(pbe(q));
            batch.extend(sync_msg());
        }
        raw_send(&mut s, &batch);
        let got = describe(&read_n_ready(&mut s, 3));
        assert_eq!(
            got,
            strs(&[
                "1",
                "2",
                "D(x)",
                "C",
                "Z(I)",
                "E(syntax error at or near \"SELEC\")",
                "Z(I)",
                "1",
                "2",
                "D(z)",
                "C",
                "Z(I)"
            ])
        );

        // Another session on the same (single) worker still works, and this one afterwards.
        let mut other = pgmux.client("appdb", "alice");
        assert_eq!(other.query_one("SELECT 5", &[]).unwrap().get::<_, i32>(0), 5);
        raw_send(&mut s, &query_message("SELECT 'still here'"));
        assert_eq!(describe(&read_n_ready(&mut s, 1)), strs(&["T", "D(still here)", "C", "Z(I)"]));
    });
    pgmux.stop();
}

#[test]
fn pipelined_tokio_postgres() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    let conn_str = pgmux.conn_str("appdb", "alice", "");
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("tokio-postgres connection error: {e}");
                }
            });
            // 30 queries pipelined on one connection: every prepare and execute in flight at once.
            let futs = (0..30i32).map(|i| {
                let client = &client;
                async move {
                    let row = client.query_one("SELECT $1::int * 10, $2::text", &[&i, &format!("q{i}")]).await?;
                    Ok::<_, tokio_postgres::Error>((row.get::<_, i32>(0), row.get::<_, String>(1)))
                }
            });
            let got = futures_util::future::try_join_all(futs).await.unwrap();
            let want: Vec<(i32, String)> = (0..30).map(|i| (i * 10, format!("q{i}"))).collect();
            assert_eq!(got, want);

            // A failing query in the middle of a pipeline fails alone.
            let stmt = client.prepare("SELECT 100 / $1::int").await.unwrap();
            let futs = [5i32, 0, 4, 0, 2].map(|d| {
                let client = &client;
                let stmt = &stmt;
                async move { client.query_one(stmt, &[&d]).await.map(|r| r.get::<_, i32>(0)) }
            });
            let results = futures_util::future::join_all(futs).await;
            let summary: Vec<Result<i32, String>> = results
                .into_iter()
                .map(|r| r.map_err(|e| e.as_db_error().map(|d| d.message().to_string()).unwrap_or(e.to_string())))
                .collect();
            assert_eq!(
                summary,
                vec![Ok(20), Err("division by zero".into()), Ok(25), Err("division by zero".into()), Ok(50)]
            );
            let row = client.query_one("SELECT 'alive'::text", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "alive");
        });
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 6. errors inside transactions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn error_aborts_transaction_until_rollback() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut a = pgmux.client("appdb", "alice");
        let mut b = pgmux.client("appdb", "alice");
        a.batch_execute("DROP TABLE IF EXISTS core_abort; CREATE TABLE core_abort (x int)").unwrap();

        a.batch_execute("BEGIN").unwrap();
        a.execute("INSERT INTO core_abort VALUES (1)", &[]).unwrap();
        let (code, msg) = db_error(&a.simple_query("SELECT 1/0").unwrap_err());
        assert_eq!((code.as_str(), msg.as_str()), ("22012", "division by zero"));
        for attempt in 0..3 {
            let (code, msg) = db_error(&a.query("SELECT 1", &[]).unwrap_err());
            assert_eq!(code, "25P02", "attempt {attempt}: {msg}");
            assert!(
                msg.contains("current transaction is aborted, commands ignored until end of transaction block"),
                "attempt {attempt}: {msg}"
            );
            let (code, _) = db_error(&a.simple_query("INSERT INTO core_abort VALUES (2)").unwrap_err());
            assert_eq!(code, "25P02");
        }

        // Meanwhile another session of the same pool works normally, in and out of transactions.
        assert_eq!(b.query_one("SELECT 2 + 2", &[]).unwrap().get::<_, i32>(0), 4);
        let mut t = b.transaction().unwrap();
        t.execute("INSERT INTO core_abort VALUES (100)", &[]).unwrap();
        let n: i64 = t.query_one("SELECT count(*) FROM core_abort", &[]).unwrap().get(0);
        assert_eq!(n, 1, "B sees A's uncommitted insert or misses its own");
        t.commit().unwrap();
        // A is still aborted.
        let (code, _) = db_error(&a.query("SELECT 1", &[]).unwrap_err());
        assert_eq!(code, "25P02", "A's transaction is no longer aborted after B's work");

        a.batch_execute("ROLLBACK").unwrap();
        assert_eq!(a.query_one("SELECT 3", &[]).unwrap().get::<_, i32>(0), 3);
        let vals: Vec<i32> =
            a.query("SELECT x FROM core_abort ORDER BY x", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(vals, vec![100], "A's rolled-back insert is visible or B's commit is lost");
        // A can run a good transaction now.
        let mut t = a.transaction().unwrap();
        t.execute("INSERT INTO core_abort VALUES (3)", &[]).unwrap();
        t.commit().unwrap();
        let n: i64 = b.query_one("SELECT count(*) FROM core_abort", &[]).unwrap().get(0);
        assert_eq!(n, 2);
        // Same through the driver's Transaction API: error, then rollback on drop.
        {
            let mut t = a.transaction().unwrap();
            assert!(t.execute("INSERT INTO core_abort VALUES ('x'::int)", &[]).is_err());
            let (code, _) = db_error(&t.query("SELECT 1", &[]).unwrap_err());
            assert_eq!(code, "25P02");
        }
        assert_eq!(a.query_one("SELECT 4", &[]).unwrap().get::<_, i32>(0), 4);
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 7. notices
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn notices_are_forwarded() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut cfg = postgres::Config::from_str(&pgmux.conn_str("appdb", "alice", "")).unwrap();
        let sink = seen.clone();
        cfg.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        let mut other = pgmux.client("appdb", "alice");

        c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'pgmux'; END $$").unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["NOTICE: hello from pgmux".to_string()]);
        // Several notices in one statement, and a WARNING, in order; inside a transaction.
        c.batch_execute(
            "BEGIN; DO $$ BEGIN FOR i IN 1..3 LOOP RAISE NOTICE 'n%', i; END LOOP; RAISE WARNING 'w'; END $$; COMMIT",
        )
        .unwrap();
        // The other session (same worker) gets none of them.
        other.batch_execute("SELECT 1").unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            strs(&["NOTICE: hello from pgmux", "NOTICE: n1", "NOTICE: n2", "NOTICE: n3", "WARNING: w"])
        );
        // A notice through the extended protocol (raised by a function in a prepared query).
        other
            .batch_execute(
                "CREATE OR REPLACE FUNCTION core_note(t text) RETURNS int LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE NOTICE 'note %', t; RETURN length(t); END $$",
            )
            .unwrap();
        let v: i32 = c.query_one("SELECT core_note($1)", &[&"abc"]).unwrap().get(0);
        assert_eq!(v, 3);
        assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("NOTICE: note abc"));
        assert_eq!(seen.lock().unwrap().len(), 6);

        // psql prints notices on stderr.
        let out = pgmux.psql("appdb", "alice", "DO $$ BEGIN RAISE NOTICE 'psql sees %', 42; END $$");
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(stderr_of(&out).contains("NOTICE:  psql sees 42"), "psql stderr: {:?}", stderr_of(&out));
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 8. multiplexing
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn twenty_sessions_share_two_backends() {
    // alice@otherdb is used by no other test here.
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "2"));
    with_deadline(&pgmux, Duration::from_secs(90), || {
        let mut setup = pgmux.client("otherdb", "alice");
        setup
            .batch_execute("DROP TABLE IF EXISTS core_mux; CREATE TABLE core_mux (session int, pid int, n int)")
            .unwrap();
        drop(setup);
        let connected = Arc::new(Barrier::new(21));
        let checked = Arc::new(Barrier::new(21));
        let pids = Arc::new(Mutex::new(BTreeSet::<i32>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let sampler = BackendSampler::start("otherdb", "alice");
        let during = std::thread::scope(|scope| {
            for sid in 0..20i32 {
                let (connected, checked, pids, errors, pgmux) = (&connected, &checked, &pids, &errors, &pgmux);
                scope.spawn(move || {
                    let mut c = pgmux.client("otherdb", "alice");
                    connected.wait();
                    for n in 0..10i32 {
                        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                        pids.lock().unwrap().insert(pid);
                        // Within a transaction the backend stays the same.
                        let mut t = c.transaction().unwrap();
                        let p1: i32 = t.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                        t.execute("INSERT INTO core_mux VALUES ($1, pg_backend_pid(), $2)", &[&sid, &n]).unwrap();
                        t.query_one("SELECT pg_sleep(0.002)", &[]).unwrap();
                        let p2: i32 = t.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                        t.commit().unwrap();
                        if p1 != p2 {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("session {sid}: backend changed {p1} -> {p2} mid-transaction"));
                        }
                        pids.lock().unwrap().insert(p1);
                    }
                    // All 20 stay connected while the main thread looks at PostgreSQL.
                    checked.wait();
                    let v: i32 = c.query_one("SELECT $1::int", &[&sid]).unwrap().get(0);
                    assert_eq!(v, sid);
                });
            }
            connected.wait();
            // Every session has done its work once the others reach `checked`; sample with all 20 connected.
            let b = {
                // wait until the work is done: the table has 200 rows
                let mut probe = pgmux.client("otherdb", "alice");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let n: i64 = probe.query_one("SELECT count(*) FROM core_mux", &[]).unwrap().get(0);
                    if n == 200 || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                backends("otherdb", "alice")
            };
            checked.wait();
            b
        });
        let (max_seen, at_max) = sampler.finish();
        let errors = errors.lock().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let pids = pids.lock().unwrap().clone();
        assert!(!pids.is_empty() && pids.len() <= 2, "sessions saw backend pids {pids:?} (pool of 2)");
        assert!(
            during.len() <= 2 && !during.is_empty(),
            "PostgreSQL had backends {during:?} with 20 sessions (pool of 2)"
        );
        assert!(max_seen <= 2, "PostgreSQL had {max_seen} backends for alice@otherdb at once: {at_max:?}");
        let during_set: BTreeSet<i32> = during.into_iter().collect();
        assert!(pids.is_subset(&during_set), "sessions saw pids {pids:?}, PostgreSQL has {during_set:?}");
        let mut check = pgmux.client("otherdb", "alice");
        let row = check
            .query_one("SELECT count(*), count(DISTINCT (session, n)), count(DISTINCT pid) FROM core_mux", &[])
            .unwrap();
        let (rows, distinct, npids): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((rows, distinct), (200, 200));
        assert!(npids <= 2, "rows were written by {npids} backends");
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 9. session and statement pool modes
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn session_mode_keeps_backend_and_resets_after() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("pool_mode", "\"session\"").set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let default_work_mem = pg().psql_admin("appdb", "SHOW work_mem").trim().to_string();
        let mut a = pgmux.client("appdb", "alice");
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        a.batch_execute("CREATE TEMP TABLE core_sess_tmp (x int); SET work_mem = '7MB'; PREPARE core_ps AS SELECT 1")
            .unwrap();
        for i in 0..5i32 {
            let mut t = a.transaction().unwrap();
            t.execute("INSERT INTO core_sess_tmp VALUES ($1)", &[&i]).unwrap();
            let p: i32 = t.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            t.commit().unwrap();
            assert_eq!(p, pid, "session mode: backend changed between transactions");
            let n: i64 = a.query_one("SELECT count(*) FROM core_sess_tmp", &[]).unwrap().get(0);
            assert_eq!(n, i64::from(i) + 1);
        }
        let wm: String = a.query_one("SELECT current_setting('work_mem')", &[]).unwrap().get(0);
        assert_eq!(wm, "7MB");
        drop(a);

        // The next session gets the same backend (one worker), cleaned by DISCARD ALL.
        let mut b = pgmux.client("appdb", "alice");
        let pid_b: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        assert_eq!(pid_b, pid, "pool of 1 in session mode: the next session should reuse the backend");
        let tmp: Option<String> = b.query_one("SELECT to_regclass('pg_temp.core_sess_tmp')::text", &[]).unwrap().get(0);
        assert_eq!(tmp, None, "the next session sees the previous session's temp table");
        let wm: String = b.query_one("SELECT current_setting('work_mem')", &[]).unwrap().get(0);
        assert_eq!(wm, default_work_mem, "the previous session's SET work_mem leaked");
        let prepared: i64 =
            b.query_one("SELECT count(*) FROM pg_prepared_statements WHERE name = 'core_ps'", &[]).unwrap().get(0);
        assert_eq!(prepared, 0, "the previous session's prepared statement leaked");
        // And the new session can create its own temp table of the same name.
        b.batch_execute("CREATE TEMP TABLE core_sess_tmp (y text)").unwrap();
    });
    pgmux.stop();
}

#[test]
fn statement_mode_refuses_transaction_blocks() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("pool_mode", "\"statement\"").set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        c.batch_execute("DROP TABLE IF EXISTS core_stmt; CREATE TABLE core_stmt (x int)").unwrap();
        for i in 0..5i32 {
            assert_eq!(c.query_one("SELECT $1::int + 1", &[&i]).unwrap().get::<_, i32>(0), i + 1);
            c.execute("INSERT INTO core_stmt VALUES ($1)", &[&i]).unwrap();
        }
        let n: i64 = c.query_one("SELECT count(*) FROM core_stmt", &[]).unwrap().get(0);
        assert_eq!(n, 5);

        // BEGIN over a raw socket: the error names the reason, the session ends.
        let mut s = raw_login(&pgmux, "alice", "appdb");
        raw_send(&mut s, &query_message("BEGIN; INSERT INTO core_stmt VALUES (99)"));
        let mut msgs = Vec::new();
        while let Some(m) = read_backend_message(&mut s) {
            msgs.push(m);
        }
        let errors: Vec<String> = msgs.iter().filter(|m| m.0 == b'E').map(|m| error_message(&m.1)).collect();
        assert!(
            errors.iter().any(|e| e == "transaction blocks not allowed in statement pooling mode"),
            "statement mode BEGIN: got {:?}",
            describe(&msgs)
        );
        // The refused transaction was rolled back, and other sessions keep working.
        let n: i64 = c.query_one("SELECT count(*) FROM core_stmt", &[]).unwrap().get(0);
        assert_eq!(n, 5, "the refused transaction block's INSERT was committed");
        let mut d = pgmux.client("appdb", "alice");
        assert_eq!(d.query_one("SELECT 8", &[]).unwrap().get::<_, i32>(0), 8);
        // The driver's BEGIN (its own round trip) is refused as well: the session ends (the FATAL itself may be
        // lost to a connection reset when the driver writes its next request), and nothing of the block commits.
        let r = d.batch_execute("BEGIN").and_then(|_| d.batch_execute("INSERT INTO core_stmt VALUES (77)"));
        let e = r.expect_err("BEGIN accepted in statement mode");
        let text = format!("{e} {e:?}");
        assert!(
            text.contains("transaction blocks not allowed in statement pooling mode")
                || e.is_closed()
                || text.contains("Connection reset"),
            "driver BEGIN in statement mode: {text}"
        );
        let n: i64 = c.query_one("SELECT count(*) FROM core_stmt", &[]).unwrap().get(0);
        assert_eq!(n, 5, "an INSERT after a refused BEGIN was committed");
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 10. transaction mode: a waiting session proceeds when the owner commits
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn transaction_mode_waiter_proceeds_after_commit() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut a = pgmux.client("appdb", "alice");
        a.batch_execute(
            "DROP TABLE IF EXISTS core_wait; CREATE TABLE core_wait (id int PRIMARY KEY, v int);
             INSERT INTO core_wait VALUES (1, 1)",
        )
        .unwrap();
        let mut b = pgmux.client("appdb", "alice");
        assert_eq!(b.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);

        a.batch_execute("BEGIN; UPDATE core_wait SET v = v + 1 WHERE id = 1").unwrap();
        let a_pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let (tx, rx) = mpsc::channel();
        let commit_started = std::thread::scope(|scope| {
            scope.spawn(move || {
                let r = b.query_one(
                    "SELECT v, pg_current_xact_id_if_assigned()::text, pg_backend_pid() FROM core_wait WHERE id = 1",
                    &[],
                );
                let done = Instant::now();
                let r = r.map(|row| (row.get::<_, i32>(0), row.get::<_, Option<String>>(1), row.get::<_, i32>(2)));
                let _ = tx.send((done, r.map_err(|e| e.to_string())));
            });
            // B must be waiting for the upstream while A's transaction is open.
            match rx.recv_timeout(Duration::from_millis(500)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(r) => panic!("B got an answer while A held the upstream in a transaction: {r:?}"),
                Err(e) => panic!("B's thread died: {e}"),
            }
            // A keeps working in its transaction meanwhile.
            let v: i32 = a.query_one("SELECT v FROM core_wait WHERE id = 1", &[]).unwrap().get(0);
            assert_eq!(v, 2);
            assert!(rx.try_recv().is_err(), "B answered before A's commit");
            let started = Instant::now();
            a.batch_execute("COMMIT").unwrap();
            started
        });
        let (done, r) = rx.recv_timeout(Duration::from_secs(10)).expect("B did not proceed after A's commit");
        let (v, xid, b_pid) = r.expect("B's query failed");
        assert!(done >= commit_started, "B's result arrived before A's COMMIT was sent");
        assert!(done.duration_since(commit_started) < Duration::from_secs(5), "B took too long after the commit");
        assert_eq!(v, 2, "B must see A's committed update");
        assert_eq!(xid, None, "B ran inside A's transaction (an xid was assigned)");
        assert_eq!(b_pid, a_pid, "pool of 1: both sessions must share the backend");
    });
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// 11. startup parameters follow the session
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn startup_parameters_follow_the_session() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut setup = pgmux.client("appdb", "alice");
        setup
            .batch_execute(
                "DROP SCHEMA IF EXISTS core_sp CASCADE; CREATE SCHEMA core_sp;
                 CREATE TABLE core_sp.only_here (x int); INSERT INTO core_sp.only_here VALUES (7)",
            )
            .unwrap();
        let mut a = client_with(&pgmux, "appdb", "alice", "application_name=alpha");
        let mut b = client_with(&pgmux, "appdb", "alice", "application_name=beta");
        let mut c = client_with(
            &pgmux,
            "appdb",
            "alice",
            "application_name=gamma options='-c search_path=core_sp,public -c statement_timeout=300'",
        );
        let mut d = pgmux.client("appdb", "alice");

        let show = |cl: &mut postgres::Client| -> (String, String, String, i32) {
            let r = cl
                .query_one(
                    "SELECT current_setting('application_name'), replace(current_setting('search_path'), ' ', ''), \
                     current_setting('statement_timeout'), pg_backend_pid()",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        let default_sp = "\"$user\",public".to_string();
        let mut backend_pids = BTreeSet::new();
        for round in 0..10 {
            for (name, cl, want) in [
                ("A", &mut a, ("alpha", default_sp.as_str(), "0")),
                ("B", &mut b, ("beta", default_sp.as_str(), "0")),
                ("C", &mut c, ("gamma", "core_sp,public", "300ms")),
                ("D", &mut d, ("", default_sp.as_str(), "0")),
            ] {
                let (app, sp, st, pid) = show(cl);
                backend_pids.insert(pid);
                assert_eq!(
                    (app.as_str(), sp.as_str(), st.as_str()),
                    want,
                    "round {round}: session {name} sees another session's settings"
                );
            }
        }
        assert_eq!(backend_pids.len(), 1, "pool of 1: all sessions share one backend: {backend_pids:?}");

        // The settings act, not just show: search_path finds core_sp's table only for C, the timeout fires only
        // for C.
        assert_eq!(c.query_one("SELECT x FROM only_here", &[]).unwrap().get::<_, i32>(0), 7);
        let (code, _) = db_error(&a.query("SELECT x FROM only_here", &[]).unwrap_err());
        assert_eq!(code, "42P01", "A resolved only_here through C's search_path");
        let (code, msg) = db_error(&c.query("SELECT pg_sleep(2)", &[]).unwrap_err());
        assert_eq!(code, "57014", "C's statement_timeout did not fire: {msg}");
        assert!(msg.contains("statement timeout"), "{msg}");
        let t = Instant::now();
        a.query("SELECT pg_sleep(0.5)", &[]).expect("A hit C's statement_timeout");
        assert!(t.elapsed() >= Duration::from_millis(450));

        // A setting changed with SET follows its session too.
        a.batch_execute("SET application_name = 'alpha2'").unwrap();
        for _ in 0..3 {
            assert_eq!(show(&mut b).0, "beta");
            assert_eq!(show(&mut a).0, "alpha2");
            assert_eq!(show(&mut c).0, "gamma");
            assert_eq!(show(&mut d).0, "");
        }
        // A SET undone by ROLLBACK, and a SET LOCAL, do not stick to the session.
        a.batch_execute("BEGIN; SET application_name = 'rolled_back'").unwrap();
        assert_eq!(show(&mut a).0, "rolled_back");
        a.batch_execute("ROLLBACK").unwrap();
        assert_eq!(show(&mut b).0, "beta");
        assert_eq!(show(&mut a).0, "alpha2", "a rolled-back SET stuck to the session");
        a.batch_execute("BEGIN; SET LOCAL application_name = 'local'; COMMIT").unwrap();
        assert_eq!(show(&mut b).0, "beta");
        assert_eq!(show(&mut a).0, "alpha2", "a SET LOCAL outlived its transaction");
        // PostgreSQL reports the application_name of whoever runs.
        let seen: String = b
            .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        assert_eq!(seen, "beta");
    });
    pgmux.stop();
}
