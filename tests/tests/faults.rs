//! Fault handling: cancels, clients that vanish at awkward moments, dead workers, listeners and supervisors,
//! and shutdown.
//!
//! Every test that counts PostgreSQL backends gets a database of its own (`faults_<name>`), so tests running in
//! parallel against the shared cluster cannot disturb each other's `pg_stat_activity` counts.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pgmux_tests::util::{
    query_message, raw_connect, raw_send, read_backend_message, read_until_ready, startup_packet, wait_until,
    with_length,
};
use pgmux_tests::{error_message, Pgmux, PgmuxConfig, Postgres};
use postgres::error::SqlState;
use postgres::NoTls;

// ----- helpers -----

fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// Creates (or re-creates) the database `name`, owned by alice.
fn fresh_db(name: &str) -> String {
    pg().psql_admin("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    pg().psql_admin("postgres", &format!("CREATE DATABASE {name} OWNER alice"));
    name.to_string()
}

/// The fixture config plus `[databases."db"]` sections with the given pool sizes.
fn config(dbs: &[(&str, u32)]) -> PgmuxConfig {
    let mut c = PgmuxConfig::new();
    for (db, size) in dbs {
        let dbname = format!("\"{db}\"");
        let size = size.to_string();
        c = c.database(db, &[("dbname", dbname.as_str()), ("pool_size", size.as_str())]);
    }
    c
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Backend {
    pid: i32,
    state: String,
    /// Seconds since the last state change.
    age: f64,
    query: String,
}

/// Client backends connected to `db` (the admin query itself runs in `postgres`, so it never counts).
fn activity(db: &str) -> Vec<Backend> {
    let out = pg().psql_admin(
        "postgres",
        &format!(
            "SELECT pid, coalesce(state, ''), \
             coalesce(extract(epoch FROM now() - state_change), 0)::float8, \
             replace(coalesce(query, ''), E'\\n', ' ') \
             FROM pg_stat_activity WHERE datname = '{db}' AND backend_type = 'client backend'"
        ),
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            Backend {
                pid: f[0].parse().unwrap(),
                state: f[1].to_string(),
                age: f[2].parse().unwrap_or(0.0),
                query: f.get(3).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

fn running(db: &str, needle: &str) -> bool {
    activity(db).iter().any(|b| b.state == "active" && b.query.contains(needle))
}

/// Runs `f` on a thread; the receiver yields its result (use `recv_timeout` so a hang fails the test quickly).
fn spawn_timed<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

fn connect(conn_str: &str) -> postgres::Client {
    postgres::Client::connect(conn_str, NoTls).unwrap_or_else(|e| panic!("connect {conn_str}: {e:?}"))
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Logs in over a raw socket (trust) and returns it ready for queries.
fn raw_login(port: u16, user: &str, db: &str) -> TcpStream {
    let mut s = raw_connect(port);
    raw_send(&mut s, &startup_packet(user, db));
    let msgs = read_until_ready(&mut s).unwrap_or_else(|| panic!("pgmux closed a raw login to {db}"));
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("raw login to {db} refused: {}", error_message(body));
    }
    s
}

/// Sends a simple query and reads to ReadyForQuery; returns the transaction status byte.
fn raw_query(s: &mut TcpStream, sql: &str) -> u8 {
    raw_send(s, &query_message(sql));
    let msgs = read_until_ready(s).unwrap_or_else(|| panic!("connection closed during {sql:?}"));
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("{sql:?} failed: {}", error_message(body));
    }
    msgs.last().and_then(|m| m.1.first().copied()).unwrap()
}

fn parse_msg(sql: &str) -> Vec<u8> {
    let mut b = vec![0u8]; // unnamed statement
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    with_length(Some(b'P'), b)
}

fn bind_msg() -> Vec<u8> {
    let mut b = vec![0u8, 0u8]; // unnamed portal, unnamed statement
    b.extend_from_slice(&0u16.to_be_bytes()); // parameter formats
    b.extend_from_slice(&0u16.to_be_bytes()); // parameters
    b.extend_from_slice(&0u16.to_be_bytes()); // result formats
    with_length(Some(b'B'), b)
}

fn execute_msg() -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&0u32.to_be_bytes());
    with_length(Some(b'E'), b)
}

fn flush_msg() -> Vec<u8> {
    with_length(Some(b'H'), Vec::new())
}

/// psql through pgmux as alice, output discarded.
fn spawn_psql(pgmux: &Pgmux, db: &str, args: &[&str], stdin: Stdio) -> Child {
    let mut cmd = Command::new(pg().bin("psql"));
    for v in ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGOPTIONS", "PGSSLMODE"] {
        cmd.env_remove(v);
    }
    cmd.args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", &pgmux.port().to_string()])
        .args(["-U", "alice", "-d", db])
        .args(args)
        .env("PGPASSWORD", "alicepw")
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn psql")
}

/// Sends `bytes` and closes, with TCP_CORK so the data and the FIN leave in one segment: the peer sees the
/// data and the end of the stream in a single readiness event, as it does for a client that writes and exits
/// while the peer is busy.
fn send_and_hang_up(mut stream: TcpStream, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_CORK: {}", std::io::Error::last_os_error());
    raw_send(&mut stream, bytes);
    drop(stream);
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// (state, pgrp, comm) of a process from /proc, None if it is gone.
fn proc_stat(pid: u32) -> Option<(char, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = tail.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp, comm))
}

/// Live (not zombie) pgmux-listener / pgmux-worker processes in the process group `pgid`.
fn live_children_in_group(pgid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, pgrp, comm) = proc_stat(pid)?;
            (pgrp == pgid && state != 'Z' && (comm == "pgmux-listener" || comm == "pgmux-worker"))
                .then_some((pid, comm))
        })
        .collect()
}

fn raise_nofile(want: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Number of log lines containing `needle`.
fn log_count(pgmux: &Pgmux, needle: &str) -> usize {
    pgmux.log().lines().filter(|l| l.contains(needle)).count()
}

// ----- 1. cancel -----

#[test]
fn cancel_reaches_only_the_running_query() {
    let db = fresh_db("faults_cancel");
    let pgmux = Pgmux::start(config(&[(&db, 2)]));
    let mut a = pgmux.client(&db, "alice");
    let mut b = pgmux.client(&db, "alice");
    let (pa, pb) = (backend_pid(&mut a), backend_pid(&mut b));
    assert_ne!(pa, pb, "with pool_size 2 the first two sessions should get a worker each");

    let token = a.cancel_token();
    let ra = spawn_timed(move || {
        let t = Instant::now();
        let r = a.simple_query("SELECT pg_sleep(30)").map(|_| ());
        (r, t.elapsed(), a)
    });
    let rb = spawn_timed(move || b.query_one("SELECT 42::int4 FROM pg_sleep(2)", &[]).map(|r| r.get::<_, i32>(0)));
    let d = db.clone();
    wait_until(Duration::from_secs(10), "both queries running", || {
        running(&d, "pg_sleep(30)") && running(&d, "pg_sleep(2)")
    });
    let sent = Instant::now();
    token.cancel_query(NoTls).expect("send cancel request through pgmux");
    let (result, _, mut a) = ra.recv_timeout(Duration::from_secs(15)).expect("A's query was not cancelled within 15 s");
    let err = result.expect_err("A's pg_sleep(30) succeeded although it was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "A got {err:?}");
    assert!(sent.elapsed() < Duration::from_secs(10), "cancel took {:?}", sent.elapsed());
    let vb = rb.recv_timeout(Duration::from_secs(15)).expect("B hung").expect("B was hit by A's cancel");
    assert_eq!(vb, 42);
    // A's session is usable again, still on its upstream.
    assert_eq!(backend_pid(&mut a), pa);
    assert!(!running(&db, "pg_sleep(30)"));
}

#[test]
fn cancel_of_an_idle_session_is_harmless() {
    let db = fresh_db("faults_idlecancel");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut x = pgmux.client(&db, "alice");
    let mut y = pgmux.client(&db, "alice");
    assert_eq!(backend_pid(&mut x), backend_pid(&mut y), "pool_size 1: one upstream");
    let token = x.cancel_token();

    // X idle, nobody running: the cancel must not stick to the upstream and hit Y's next query.
    token.cancel_query(NoTls).unwrap();
    let v: i32 = y.query_one("SELECT 7::int4 FROM pg_sleep(0.5)", &[]).expect("Y cancelled by X's cancel").get(0);
    assert_eq!(v, 7);

    // X idle while Y's query runs on the shared upstream.
    let ry = spawn_timed(move || (y.query_one("SELECT 8::int4 FROM pg_sleep(2)", &[]).map(|r| r.get::<_, i32>(0)), y));
    let d = db.clone();
    wait_until(Duration::from_secs(10), "Y's query running", || running(&d, "pg_sleep(2)"));
    token.cancel_query(NoTls).unwrap();
    let (r, mut y) = ry.recv_timeout(Duration::from_secs(15)).expect("Y hung");
    assert_eq!(r.expect("Y's query was cancelled by a cancel request for idle session X"), 8);
    // And nothing lingers for later queries of either session.
    let v: i32 = y.query_one("SELECT 9::int4 FROM pg_sleep(0.3)", &[]).expect("Y's next query").get(0);
    assert_eq!(v, 9);
    x.simple_query("SELECT 1").expect("X still works");
}

// ----- 2. clients killed mid-transaction / mid-query -----

#[test]
fn client_killed_mid_transaction_releases_locks_and_rolls_back() {
    let db = fresh_db("faults_killtxn");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)").unwrap();

    let mut psql = spawn_psql(&pgmux, &db, &[], Stdio::piped());
    psql.stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN;\nINSERT INTO t VALUES (2, 0);\nSELECT v FROM t WHERE id = 1 FOR UPDATE;\n")
        .unwrap();
    let d = db.clone();
    wait_until(Duration::from_secs(10), "psql idle in transaction holding the row lock", || {
        activity(&d).iter().any(|b| b.state == "idle in transaction" && b.query.contains("FOR UPDATE"))
    });
    psql.kill().unwrap(); // SIGKILL
    let _ = psql.wait();

    let killed = Instant::now();
    let rb = spawn_timed(move || {
        b.batch_execute("UPDATE t SET v = v + 1 WHERE id = 1")?;
        let n: i64 = b.query_one("SELECT count(*) FROM t WHERE id = 2", &[])?.get(0);
        Ok::<_, postgres::Error>(n)
    });
    let n = rb
        .recv_timeout(Duration::from_secs(10))
        .expect("B's UPDATE still blocked 10 s after the lock holder was killed")
        .expect("B's UPDATE failed");
    assert!(killed.elapsed() < Duration::from_secs(5), "B served only after {:?}", killed.elapsed());
    assert_eq!(n, 0, "the killed client's INSERT is visible to B (its transaction was not rolled back)");
    // Seen from outside pgmux: the row lock is free and the insert is gone.
    let v = pg().psql_admin(&db, "SET lock_timeout = '3s'; UPDATE t SET v = v + 1 WHERE id = 1 RETURNING v");
    assert_eq!(v.trim(), "2");
    assert_eq!(pg().psql_admin(&db, "SELECT count(*) FROM t WHERE id = 2").trim(), "0");
    let left = activity(&db);
    assert!(left.iter().all(|b| b.state != "idle in transaction"), "{left:?}");
    assert!(left.len() <= 1, "{left:?}");
}

#[test]
fn client_killed_during_long_query_is_cancelled() {
    let db = fresh_db("faults_killquery");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.simple_query("SELECT 1").unwrap();
    let mut psql = spawn_psql(&pgmux, &db, &["-c", "SELECT pg_sleep(30)"], Stdio::null());
    let d = db.clone();
    wait_until(Duration::from_secs(10), "psql's pg_sleep(30) running", || running(&d, "pg_sleep(30)"));
    psql.kill().unwrap();
    let _ = psql.wait();
    let killed = Instant::now();
    let rb = spawn_timed(move || b.query_one("SELECT 5::int4", &[]).map(|r| r.get::<_, i32>(0)));
    let v = rb
        .recv_timeout(Duration::from_secs(10))
        .expect("B not served within 10 s: pgmux waits for the dead client's pg_sleep(30)")
        .expect("B failed");
    assert_eq!(v, 5);
    assert!(killed.elapsed() < Duration::from_secs(5), "B served only after {:?}", killed.elapsed());
    assert!(!running(&db, "pg_sleep(30)"), "the dead client's query still runs");
}

/// A client sends a query while another session owns the upstream, then hangs up before its turn. The worker
/// must not make everyone wait for a query nobody will read.
#[test]
fn client_that_leaves_while_queued_does_not_hold_up_the_pool() {
    let db = fresh_db("faults_queuedleave");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut c = pgmux.client(&db, "alice");
    let mut b = pgmux.client(&db, "alice");
    c.batch_execute("BEGIN").unwrap(); // c owns the only upstream until COMMIT
    let mut a = raw_login(pgmux.port(), "alice", &db);
    raw_send(&mut a, &query_message("SELECT pg_sleep(20)"));
    drop(a);
    c.batch_execute("COMMIT").unwrap();
    let start = Instant::now();
    let rb = spawn_timed(move || b.query_one("SELECT 6::int4", &[]).map(|r| r.get::<_, i32>(0)));
    let v = rb
        .recv_timeout(Duration::from_secs(10))
        .expect("B not served within 10 s: the departed client's pg_sleep(20) ran to completion")
        .expect("B failed");
    assert_eq!(v, 6);
    assert!(start.elapsed() < Duration::from_secs(5), "B served only after {:?}", start.elapsed());
    assert!(!running(&db, "pg_sleep(20)"));
}

/// Same shape without a long query: the request and the hang-up both wait in the kernel while another session
/// owns the upstream. When its turn comes the worker must see the EOF behind the request and close the session
/// (otherwise it stays in the worker and counts against max_client_conn forever).
#[test]
fn queued_client_that_hung_up_is_closed() {
    let db = fresh_db("faults_queuedeof");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut c = pgmux.client(&db, "alice");
    c.simple_query("SELECT 1").unwrap();
    for round in 1..=3 {
        c.batch_execute("BEGIN").unwrap();
        let mut a = raw_login(pgmux.port(), "alice", &db);
        raw_send(&mut a, &query_message("SELECT 1"));
        drop(a);
        c.batch_execute("COMMIT").unwrap();
        c.simple_query("SELECT 1").expect("holder after the queued client's turn");
        wait_until(Duration::from_secs(5), "the worker to close the client that hung up behind its query", || {
            log_count(&pgmux, "closing because: client unexpected eof") >= round
        });
    }
}

// ----- 3. disconnect mid-COPY / mid-batch -----

#[test]
fn disconnect_mid_copy_from_stdin() {
    let db = fresh_db("faults_copy");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.batch_execute("CREATE TABLE t (x int)").unwrap();

    let mut a = raw_login(pgmux.port(), "alice", &db);
    raw_send(&mut a, &query_message("COPY t FROM STDIN"));
    loop {
        let (tag, body) = read_backend_message(&mut a).expect("closed before CopyInResponse");
        assert_ne!(tag, b'E', "COPY failed: {}", error_message(&body));
        if tag == b'G' {
            break;
        }
    }
    send_and_hang_up(a, &with_length(Some(b'd'), b"1\n2\n3\n".to_vec()));

    let rb = spawn_timed(move || {
        let n: i64 = b.query_one("SELECT count(*) FROM t", &[])?.get(0);
        Ok::<_, postgres::Error>((n, b))
    });
    let (n, mut b) =
        rb.recv_timeout(Duration::from_secs(10)).expect("next session hung after COPY client left").expect("next");
    assert_eq!(n, 0, "rows of an abandoned COPY were committed");
    b.batch_execute("INSERT INTO t VALUES (7)").expect("upstream unusable after abandoned COPY");
    let left = activity(&db);
    assert!(left.len() <= 1, "more upstream backends than pool_size: {left:?}");
    assert!(left.iter().all(|x| x.state == "idle"), "{left:?}");
}

#[test]
fn disconnect_mid_large_copy_data_message() {
    let db = fresh_db("faults_bigcopy");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.batch_execute("CREATE TABLE t (x int)").unwrap();

    let mut a = raw_login(pgmux.port(), "alice", &db);
    raw_send(&mut a, &query_message("COPY t FROM STDIN"));
    loop {
        let (tag, body) = read_backend_message(&mut a).expect("closed before CopyInResponse");
        assert_ne!(tag, b'E', "COPY failed: {}", error_message(&body));
        if tag == b'G' {
            break;
        }
    }
    // A 200 KiB CopyData of which only half is sent: pgmux streams it and cannot finish it.
    let full = with_length(Some(b'd'), b"1\n".repeat(100 * 1024));
    send_and_hang_up(a, &full[..full.len() / 2]);

    let rb = spawn_timed(move || {
        let n: i64 = b.query_one("SELECT count(*) FROM t", &[])?.get(0);
        Ok::<_, postgres::Error>(n)
    });
    let n = rb.recv_timeout(Duration::from_secs(10)).expect("next session hung").expect("next session failed");
    assert_eq!(n, 0);
    let d = db.clone();
    wait_until(Duration::from_secs(10), "the abandoned upstream to go away (<= 1 backend)", || activity(&d).len() <= 1);
}

#[test]
fn disconnect_after_unsynced_insert_rolls_back() {
    let db = fresh_db("faults_unsynced");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.batch_execute("CREATE TABLE t (x int)").unwrap();

    // Parse/Bind/Execute + Flush, no Sync: PostgreSQL holds the INSERT in an implicit transaction that a
    // disconnect rolls back.
    let mut a = raw_login(pgmux.port(), "alice", &db);
    let mut batch = parse_msg("INSERT INTO t VALUES (99)");
    batch.extend(bind_msg());
    batch.extend(execute_msg());
    batch.extend(flush_msg());
    raw_send(&mut a, &batch);
    for want in [b'1', b'2', b'C'] {
        let (tag, body) = read_backend_message(&mut a).expect("closed mid-batch");
        assert_eq!(tag, want, "unexpected '{}' {}", tag as char, error_message(&body));
    }
    drop(a);

    let rb = spawn_timed(move || {
        let n: i64 = b.query_one("SELECT count(*) FROM t WHERE x = 99", &[])?.get(0);
        b.batch_execute("INSERT INTO t VALUES (1)")?;
        Ok::<_, postgres::Error>(n)
    });
    let n = rb.recv_timeout(Duration::from_secs(10)).expect("next session hung").expect("next session failed");
    assert_eq!(n, 0, "the departed client's unsynced INSERT is visible to the next session (and committed by it)");
    assert_eq!(pg().psql_admin(&db, "SELECT count(*) FROM t WHERE x = 99").trim(), "0");
    let left = activity(&db);
    assert!(left.len() <= 1, "{left:?}");
}

/// While a client's extended-protocol batch is open (answered up to a Flush, no Sync yet), its implicit
/// transaction is open on the upstream: nobody else may use that upstream until the Sync.
#[test]
fn unsynced_batch_keeps_the_upstream() {
    let db = fresh_db("faults_unsyncedhold");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.batch_execute("CREATE TABLE t (x int)").unwrap();
    let mut a = raw_login(pgmux.port(), "alice", &db);
    let mut batch = parse_msg("INSERT INTO t VALUES (99)");
    batch.extend(bind_msg());
    batch.extend(execute_msg());
    batch.extend(flush_msg());
    raw_send(&mut a, &batch);
    for want in [b'1', b'2', b'C'] {
        let (tag, body) = read_backend_message(&mut a).expect("closed mid-batch");
        assert_eq!(tag, want, "unexpected '{}' {}", tag as char, error_message(&body));
    }
    let rb = spawn_timed(move || b.query_one("SELECT count(*) FROM t WHERE x = 99", &[]).map(|r| r.get::<_, i64>(0)));
    // B must wait for A's Sync. (A bounded wait: this asserts that something does NOT happen.)
    if let Ok(r) = rb.recv_timeout(Duration::from_secs(2)) {
        panic!("B ran on the upstream while A's extended batch was unsynced (inside A's implicit transaction): {r:?}");
    }
    raw_send(&mut a, &with_length(Some(b'S'), Vec::new()));
    let msgs = read_until_ready(&mut a).expect("A closed");
    assert_eq!(msgs.last().unwrap().1, vec![b'I']);
    let n = rb.recv_timeout(Duration::from_secs(10)).expect("B hung after A's Sync").expect("B failed");
    assert_eq!(n, 1);
}

#[test]
fn disconnect_during_unsynced_execute() {
    let db = fresh_db("faults_unsyncedrun");
    let pgmux = Pgmux::start(config(&[(&db, 1)]));
    let mut b = pgmux.client(&db, "alice");
    b.simple_query("SELECT 1").unwrap();

    let mut a = raw_login(pgmux.port(), "alice", &db);
    let mut batch = parse_msg("SELECT pg_sleep(30)");
    batch.extend(bind_msg());
    batch.extend(execute_msg());
    raw_send(&mut a, &batch);
    let d = db.clone();
    wait_until(Duration::from_secs(10), "the unsynced Execute running", || running(&d, "pg_sleep(30)"));
    drop(a);
    let left_at = Instant::now();
    let rb = spawn_timed(move || b.query_one("SELECT 3::int4", &[]).map(|r| r.get::<_, i32>(0)));
    let v = rb
        .recv_timeout(Duration::from_secs(10))
        .expect("next session not served within 10 s")
        .expect("next session failed");
    assert_eq!(v, 3);
    assert!(left_at.elapsed() < Duration::from_secs(5), "served after {:?}", left_at.elapsed());
    let left = activity(&db);
    assert!(left.len() <= 1, "{left:?}");
    assert!(left.iter().all(|x| x.state == "idle"), "{left:?}");
}

// ----- 4. the other database after a disconnect -----

/// The sequence that once took a whole server down (an earlier built-in pooler routed a session to a backend of
/// another database after a client disconnected): with pools of 2, client A on one database leaves abruptly
/// mid-transaction, then client B on the other database connects and works. B's queries must run in B's database,
/// A's transaction must be rolled back, PostgreSQL must not restart and the pooler must stay up.
#[test]
fn other_database_is_never_served_by_a_disconnected_sessions_pool() {
    let app = fresh_db("faults_db_app");
    let other = fresh_db("faults_db_other");
    let pg_log_start = std::fs::metadata(pg().log_path()).map(|m| m.len()).unwrap_or(0);
    let started_at = pg().postmaster_start_time();
    let pgmux = Pgmux::start(config(&[(&app, 2), (&other, 2)]));
    let conn_other = pgmux.conn_str(&other, "alice", "alicepw");
    let conn_app = pgmux.conn_str(&app, "alice", "alicepw");
    pg().psql_admin(&app, "CREATE TABLE t (x int); GRANT ALL ON t TO PUBLIC");
    for round in 0..9 {
        // A on the first database leaves abruptly: inside a transaction, inside a transaction while a statement
        // of it runs, or between transactions.
        let mut a = raw_login(pgmux.port(), "alice", &app);
        match round % 3 {
            0 => assert_eq!(raw_query(&mut a, "BEGIN; INSERT INTO t VALUES (1)"), b'T'),
            1 => {
                assert_eq!(raw_query(&mut a, "BEGIN; INSERT INTO t VALUES (2)"), b'T');
                raw_send(&mut a, &query_message("SELECT pg_sleep(5)"));
                let d = app.clone();
                wait_until(Duration::from_secs(10), "A's statement running", || running(&d, "pg_sleep(5)"));
            }
            _ => assert_eq!(raw_query(&mut a, "SELECT 1"), b'I'),
        }
        drop(a);
        let mut o = connect(&conn_other);
        let got: String = o.query_one("SELECT current_database()::text", &[]).unwrap().get(0);
        assert_eq!(got, other, "round {round}: a session for {other} was served by {got}");
        // Interleave: the app pool itself still routes to app, and the other pool again after that.
        let mut p = connect(&conn_app);
        let got: String = p.query_one("SELECT current_database()::text", &[]).unwrap().get(0);
        assert_eq!(got, app, "round {round}");
        drop(p);
        let got: String = o.query_one("SELECT current_database()::text", &[]).unwrap().get(0);
        assert_eq!(got, other, "round {round} (second query)");
    }
    let log = std::fs::read(pg().log_path()).unwrap_or_default();
    let new = String::from_utf8_lossy(log.get(pg_log_start as usize..).unwrap_or_default()).into_owned();
    let bad: Vec<&str> = new
        .lines()
        .filter(|l| l.contains("FATAL") && (l.contains("faults_db_") || l.contains("database \"")))
        .collect();
    assert!(bad.is_empty(), "PostgreSQL logged: {bad:#?}");
    assert!(activity(&app).len() <= 2 && activity(&other).len() <= 2);
    assert_eq!(pg().postmaster_start_time(), started_at, "PostgreSQL restarted (a backend crashed?)");
    assert_eq!(pg().psql_admin(&app, "SELECT count(*) FROM t").trim(), "0", "A's abandoned transactions committed");
    assert!(alive(pgmux.pid()), "the supervisor died");
    assert!(!pgmux.log().contains(" died"), "a pgmux process died");
    assert_eq!(pgmux.children("pgmux-listener").len(), 2);
}

// ----- 5. SIGKILL of a worker under load -----

#[test]
fn worker_sigkill_under_load() {
    let db = fresh_db("faults_workerkill");
    let out = Command::new(pg().bin("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", &pg().port().to_string(), "-U", "postgres", &db])
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    let pgmux = Pgmux::start(config(&[(&db, 4)]));

    // Six sessions first, so the four workers exist; remember each one's upstream backend.
    let mut mine: Vec<(postgres::Client, i32)> = (0..6)
        .map(|_| {
            let mut c = pgmux.client(&db, "postgres");
            let p = backend_pid(&mut c);
            (c, p)
        })
        .collect();
    wait_until(Duration::from_secs(10), "4 workers", || pgmux.children("pgmux-worker").len() == 4);

    let assigned_before = log_count(&pgmux, " -> worker-");
    let port = pgmux.port();
    let bench_db = db.clone();
    let bench = spawn_timed(move || {
        Command::new(pg().bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-n", "-S", "-c", "20", "-j", "2", "-T", "8", &bench_db])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    wait_until(Duration::from_secs(15), "pgbench's 20 sessions assigned", || {
        log_count(&pgmux, " -> worker-") >= assigned_before + 20
    });

    // The worker whose upstream is session 0's backend.
    let victim_backend = mine[0].1;
    let log = pgmux.log();
    let line = log
        .lines()
        .find(|l| l.contains("new server connection") && l.contains(&format!("(backend pid {victim_backend})")))
        .expect("log line naming the worker of session 0's backend");
    let victim: u32 = line.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("pid in log line");
    let role = line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(r, _)| r.to_string()).unwrap();
    assert!(pgmux.children("pgmux-worker").contains(&victim));
    pgmux.kill(victim, libc::SIGKILL);
    let died = format!("(pid {victim}) died");
    wait_until(Duration::from_secs(5), "the supervisor to log the worker's death", || pgmux.log().contains(&died));
    assert!(alive(pgmux.pid()), "supervisor died with its worker");

    for (i, (c, before)) in mine.iter_mut().enumerate() {
        let r = c.query_one("SELECT pg_backend_pid()", &[]).map(|r| r.get::<_, i32>(0));
        if *before == victim_backend {
            // Idle on the killed worker: it goes on at another one.
            let now = r.unwrap_or_else(|e| panic!("idle session {i} of the killed worker was lost: {e}"));
            assert_ne!(now, victim_backend, "session {i} still on the dead worker's backend");
        } else {
            // It must not notice; which upstream answers is not its business: under pgbench's load, sessions waiting
            // behind a long turn move to an idle sibling worker.
            r.unwrap_or_else(|e| panic!("session {i} on a surviving worker failed: {e}"));
        }
    }
    let mut fresh = pgmux.client(&db, "postgres");
    fresh.simple_query("SELECT 1").expect("new session after worker death");

    let out = bench.recv_timeout(Duration::from_secs(40)).expect("pgbench did not finish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count from pgbench:\n{stdout}\n{stderr}"));
    assert!(processed > 0, "pgbench processed nothing:\n{stdout}\n{stderr}");
    let aborted = stderr.lines().filter(|l| l.contains("aborted in command")).count();
    let lost_marker = format!("{role}: ");
    let lost: usize = pgmux
        .log()
        .lines()
        .find_map(|l| {
            let rest = l.split(&lost_marker).nth(1)?;
            let (_, closed) = rest.split_once(" idle session(s) moved to other workers, ")?;
            closed.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no '{lost_marker}... N session(s) with a request in flight closed' in the log"));
    eprintln!(
        "pgbench: {processed} transactions, {aborted} clients aborted; the killed worker closed {lost} session(s)"
    );
    // In flight at a worker: the owner's request and up to 3 plain queries pipelined behind it (`worker/riders.rs`).
    assert!(lost <= 4, "the killed worker cost {lost} sessions, not at most its requests in flight (owner + 3 riders)");
    assert!(aborted <= lost, "{aborted} pgbench clients aborted but the killed worker closed only {lost}:\n{stderr}");
    drop(mine);
    drop(fresh);
    let d = db.clone();
    wait_until(Duration::from_secs(10), "<= 4 backends for the db", || activity(&d).len() <= 4);
}

// ----- 6. a thousand clients killed at once -----

#[test]
fn thousand_clients_dropped_at_once() {
    raise_nofile(8192);
    let db = fresh_db("faults_thousand");
    let pgmux = Pgmux::start(config(&[(&db, 4)]).set("max_client_conn", "5000"));
    let port = pgmux.port();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        let mut s = raw_login(port, "alice", &db);
                        if (t * 250 + i) % 20 == 0 {
                            raw_send(&mut s, &query_message("SELECT pg_sleep(1)"));
                        }
                        s
                    })
                    .collect::<Vec<TcpStream>>()
            })
        })
        .collect();
    let all: Vec<TcpStream> = threads.into_iter().flat_map(|t| t.join().expect("login thread")).collect();
    assert_eq!(all.len(), 1000);
    assert!(activity(&db).len() <= 4);
    drop(all);
    let dropped = Instant::now();

    let conn = pgmux.conn_str(&db, "alice", "alicepw");
    let r = spawn_timed(move || {
        let mut c = connect(&conn);
        c.query_one("SELECT 1::int4", &[]).map(|r| r.get::<_, i32>(0))
    });
    let v = r
        .recv_timeout(Duration::from_secs(10))
        .expect("a new session was not served within 10 s of 1000 clients leaving")
        .expect("new session failed");
    assert_eq!(v, 1);
    let d = db.clone();
    wait_until(Duration::from_secs(10), "every backend idle (none active / idle in transaction)", || {
        activity(&d).iter().all(|b| b.state == "idle")
    });
    assert!(dropped.elapsed() < Duration::from_secs(15));
    let left = activity(&db);
    assert!(left.len() <= 4, "{left:?}");
    assert!(!pgmux.log().contains("panicked"), "a pgmux process panicked");
    assert_eq!(pgmux.children("pgmux-listener").len(), 2);
}

// ----- 7. supervisor death -----

#[test]
fn children_die_with_the_supervisor() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    let mut c = pgmux.client("appdb", "alice");
    c.simple_query("SELECT 1").unwrap();
    let mut c2 = pgmux.client("otherdb", "bob");
    c2.simple_query("SELECT 1").unwrap();
    wait_until(Duration::from_secs(5), "2 listeners and 2 workers", || {
        pgmux.children("pgmux-listener").len() == 2 && pgmux.children("pgmux-worker").len() == 2
    });
    let kids = live_children_in_group(pgmux.pid());
    assert_eq!(kids.len(), 4, "{kids:?}");
    pgmux.kill(pgmux.pid(), libc::SIGKILL);
    wait_until(Duration::from_secs(5), "listeners and workers to exit after the supervisor", || {
        live_children_in_group(pgmux.pid()).is_empty()
    });
    for (pid, _) in &kids {
        assert!(proc_stat(*pid).is_none_or(|(s, _, _)| s == 'Z'), "{pid} still running");
    }
    assert!(c.simple_query("SELECT 1").is_err(), "a session survived its worker");
}

// ----- 8. process names -----

#[test]
fn process_names() {
    let pgmux = Pgmux::start(PgmuxConfig::new().set("listeners", "3"));
    wait_until(Duration::from_secs(5), "3 listeners", || pgmux.children("pgmux-listener").len() == 3);
    assert!(pgmux.children("pgmux-worker").is_empty(), "workers before any session");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pgmux.pid())).unwrap();
    assert_eq!(comm.trim_end(), "pgmux");
    let mut c = pgmux.client("appdb", "alice");
    c.simple_query("SELECT 1").unwrap();
    assert_eq!(pgmux.children("pgmux-worker").len(), 1);
    let mut c2 = pgmux.client("appdb", "bob");
    c2.simple_query("SELECT 1").unwrap();
    assert_eq!(pgmux.children("pgmux-worker").len(), 2, "one worker per pool");
    // Nothing else: every child is a listener or a worker.
    let named = pgmux.children("pgmux-listener").len() + pgmux.children("pgmux-worker").len();
    let all = pgmux_tests::pgmux::proc_table().into_iter().filter(|p| p.ppid == pgmux.pid()).count();
    assert_eq!(named, all);
}

// ----- 9. listener crash -----

#[test]
fn listener_crash_is_respawned_without_a_storm() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    wait_until(Duration::from_secs(5), "2 listeners", || pgmux.children("pgmux-listener").len() == 2);
    let before = pgmux.children("pgmux-listener");
    pgmux.kill(before[0], libc::SIGKILL);
    wait_until(Duration::from_secs(5), "the killed listener to be replaced", || {
        let now = pgmux.children("pgmux-listener");
        now.len() == 2 && !now.contains(&before[0])
    });
    for _ in 0..10 {
        pgmux.client("appdb", "alice").simple_query("SELECT 1").expect("login after listener respawn");
    }

    // Kill every listener as soon as it appears, for 3 s.
    let started_before = log_count(&pgmux, "started listener-");
    let storm = Instant::now();
    let mut killed = std::collections::HashSet::new();
    while storm.elapsed() < Duration::from_secs(3) {
        for pid in pgmux.children("pgmux-listener") {
            if killed.insert(pid) {
                // SAFETY: kill has no memory-safety preconditions; a pid that just exited is harmless.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    let respawns = log_count(&pgmux, "started listener-") - started_before;
    assert!(respawns >= 2, "listeners were not respawned during the storm ({respawns})");
    // 100+200+400+800+1600 ms: at most ~6 per listener index in 3 s with the doubling backoff.
    assert!(respawns <= 14, "{respawns} listener respawns in 3 s: no backoff");
    assert!(alive(pgmux.pid()));
    wait_until(Duration::from_secs(15), "listeners back to 2 after the storm", || {
        let now = pgmux.children("pgmux-listener");
        now.len() == 2 && now.iter().all(|p| !killed.contains(p))
    });
    pgmux.client("appdb", "alice").simple_query("SELECT 1").expect("login after the storm");
}

// ----- 10. clean shutdown: see tests/reload.rs (SIGTERM, SIGINT) -----
