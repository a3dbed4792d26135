//! Riders (`worker/riders.rs`): queued sessions whose simple queries go upstream behind the owner's before its reply
//! is back. Against the real binary and PostgreSQL, over a pool of one so that every session queues: replies reach
//! the session that asked, under load, byte for byte; a session's own settings, transactions and state-changing
//! statements never ride or leak; a cancel for a pipelined query stops that query and not the one ahead of it; a
//! client that leaves while its query waits upstream costs nobody else anything. `pgmux_pipelined_turns_total`
//! proves that requests did ride, so none of this passes by never pipelining.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pgmux_tests::util::free_port;
use pgmux_tests::{wait_until, with_deadline, Pgmux, PgmuxConfig};
use postgres::SimpleQueryMessage;

/// pgmux over a pool of one, with the metrics endpoint.
fn start() -> (Pgmux, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = PgmuxConfig::new().set("default_pool_size", "1").set("metrics_listen", &format!("\"{addr}\""));
    (Pgmux::start(config), addr)
}

/// `pgmux_pipelined_turns_total` of appdb/alice; 0 before the pool's first session (it has no series yet).
fn pipelined(addr: SocketAddr) -> f64 {
    pipelined_series(addr).unwrap_or(0.0)
}

/// `pgmux_pipelined_turns_total` of appdb/alice, if the pool has its series.
fn pipelined_series(addr: SocketAddr) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| {
            l.starts_with("pgmux_pipelined_turns_total{")
                && l.contains("database=\"appdb\"")
                && l.contains("user=\"alice\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap_or_else(|e| panic!("pgmux_pipelined_turns_total {v:?}: {e}")))
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect()),
            _ => None,
        })
        .collect()
}

/// Twenty sessions over one upstream, each asking for values only it knows, with its own work_mem, some of them
/// inside transactions and some making errors: every reply is its own, and many requests rode.
#[test]
fn pipelined_replies_reach_their_own_sessions() {
    let (pgmux, addr) = start();
    let mut setup = pgmux.client("appdb", "alice");
    setup.batch_execute("DROP TABLE IF EXISTS pipe_t; CREATE TABLE pipe_t (id int PRIMARY KEY, v int)").unwrap();
    setup.batch_execute("INSERT INTO pipe_t SELECT g, 0 FROM generate_series(0, 19) g").unwrap();
    let before = pipelined(addr);
    with_deadline(&pgmux, Duration::from_secs(120), || {
        std::thread::scope(|scope| {
            for i in 0..20i32 {
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "alice");
                    // Half of them change a setting: their plain queries ride only behind the same settings.
                    let work_mem = if i % 2 == 0 { format!("{}kB", 3001 + i) } else { "4MB".to_string() };
                    if i % 2 == 0 {
                        c.batch_execute(&format!("SET work_mem = '{work_mem}'")).unwrap();
                    }
                    for q in 0..150i32 {
                        let got = rows(
                            &c.simple_query(&format!(
                                "SELECT {i}, {q}, current_setting('work_mem'), repeat('x', {})",
                                (i * 37 + q) % 200
                            ))
                            .unwrap(),
                        );
                        let want = vec![vec![
                            i.to_string(),
                            q.to_string(),
                            work_mem.clone(),
                            "x".repeat(((i * 37 + q) % 200) as usize),
                        ]];
                        assert_eq!(got, want, "session {i}, query {q}");
                        match q % 25 {
                            // A transaction of its own: its uncommitted write is visible to it alone.
                            7 => {
                                c.simple_query("BEGIN").unwrap();
                                c.simple_query(&format!("UPDATE pipe_t SET v = v + 1000 WHERE id = {i}")).unwrap();
                                let mine =
                                    rows(&c.simple_query(&format!("SELECT v FROM pipe_t WHERE id = {i}")).unwrap());
                                assert_eq!(mine[0][0].parse::<i32>().unwrap() % 1000, q / 25, "session {i}");
                                assert!(mine[0][0].parse::<i32>().unwrap() >= 1000);
                                c.simple_query(&format!("UPDATE pipe_t SET v = v - 1000 + 1 WHERE id = {i}")).unwrap();
                                c.simple_query("COMMIT").unwrap();
                            }
                            // An error ends its own implicit transaction only.
                            13 => {
                                let e = c.simple_query("SELECT 1/0").unwrap_err();
                                assert_eq!(e.code().map(|c| c.code()), Some("22012"), "session {i}: {e}");
                            }
                            _ => {}
                        }
                    }
                    // Nobody saw another session's +1000 while it was uncommitted, and every commit counted once.
                    let v = rows(&c.simple_query(&format!("SELECT v FROM pipe_t WHERE id = {i}")).unwrap());
                    assert_eq!(v, vec![vec!["6".to_string()]], "session {i}");
                });
            }
        })
    });
    let rode = pipelined_series(addr).expect("no pgmux_pipelined_turns_total for appdb/alice after the load") - before;
    eprintln!("pipelined turns: {rode}");
    assert!(rode >= 100.0, "only {rode} requests rode behind another session's over one upstream under load");
    assert!(!pgmux.log().contains("panicked"), "{}", pgmux.log());
}

/// The same through the extended protocol (rust-postgres: named statements, Bind/Execute/Sync per query): replies
/// and errors stay with their sessions, statements prepared by one session never answer for another, and the
/// batches rode.
#[test]
fn pipelined_extended_batches_reach_their_own_sessions() {
    let (pgmux, addr) = start();
    let before = pipelined(addr);
    with_deadline(&pgmux, Duration::from_secs(120), || {
        std::thread::scope(|scope| {
            for i in 0..16i32 {
                let pgmux = &pgmux;
                scope.spawn(move || {
                    let mut c = pgmux.client("appdb", "alice");
                    // Same name in every session, a different text in each: the upstream must keep them apart.
                    let stmt = c.prepare(&format!("SELECT $1::int + $2::int, {i}::int AS who")).unwrap();
                    for q in 0..150i32 {
                        let row = c.query_one(&stmt, &[&(i * 1000), &q]).unwrap();
                        assert_eq!(row.get::<_, i32>(0), i * 1000 + q, "session {i}, query {q}");
                        assert_eq!(row.get::<_, i32>(1), i, "session {i} got another session's statement");
                        if q % 30 == 11 {
                            let e = c.query_one("SELECT 1 / $1::int", &[&0i32]).unwrap_err();
                            assert_eq!(e.code().map(|c| c.code()), Some("22012"), "session {i}: {e}");
                        }
                        if q % 30 == 23 {
                            let mut t = c.transaction().unwrap();
                            let v: i32 = t.query_one(&stmt, &[&1i32, &q]).unwrap().get(0);
                            assert_eq!(v, 1 + q);
                            t.commit().unwrap();
                        }
                    }
                });
            }
        })
    });
    let rode = pipelined_series(addr).expect("no pgmux_pipelined_turns_total for appdb/alice after the load") - before;
    eprintln!("pipelined turns: {rode}");
    assert!(rode >= 100.0, "only {rode} extended batches rode behind another session's under load");
}

/// Raw startup and a simple Query over TCP, so that two sessions' queries can reach pgmux microseconds apart.
struct Raw {
    s: TcpStream,
    pid: i32,
    key: i32,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", "alice"), ("database", "appdb")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).unwrap();
        let mut raw = Raw { s, pid: 0, key: 0 };
        loop {
            let (tag, body) = raw.read_msg();
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    assert_eq!(code, 0, "the fixture's pgmux trusts its clients");
                }
                b'K' => {
                    raw.pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                    raw.key = i32::from_be_bytes(body[4..8].try_into().unwrap());
                }
                b'Z' => return raw,
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }

    fn read_msg(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).unwrap();
        (head[0], body)
    }

    fn send_query(&mut self, sql: &str) {
        let mut q = vec![b'Q'];
        q.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        q.extend_from_slice(sql.as_bytes());
        q.push(0);
        self.s.write_all(&q).unwrap();
    }

    /// Up to ReadyForQuery: the SQLSTATE of an error, if any.
    fn finish(&mut self) -> Option<String> {
        let mut code = None;
        loop {
            let (tag, body) = self.read_msg();
            match tag {
                b'E' => {
                    let mut fields = body.split(|&b| b == 0);
                    code = fields.find(|f| f.first() == Some(&b'C')).map(|f| String::from_utf8_lossy(&f[1..]).into());
                }
                b'Z' => return code,
                _ => {}
            }
        }
    }

    fn cancel(&self, port: u16) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut msg = 16i32.to_be_bytes().to_vec();
        msg.extend_from_slice(&80877102i32.to_be_bytes());
        msg.extend_from_slice(&self.pid.to_be_bytes());
        msg.extend_from_slice(&self.key.to_be_bytes());
        c.write_all(&msg).unwrap();
        let _ = c.read(&mut [0u8; 1]);
    }
}

/// B's query waits upstream behind A's; B's client cancels it. A's query finishes untouched, B's is cancelled once
/// it runs rather than run to its end. Repeated until B did ride (two queries sent microseconds apart almost always
/// make the second a rider; the log says which happened).
#[test]
fn cancel_of_a_pipelined_query_stops_that_query_only() {
    let (pgmux, _metrics) = start();
    let port = pgmux.port();
    let mut rode_once = false;
    let count = |what: &str| pgmux.log().lines().filter(|l| l.ends_with(what)).count();
    for attempt in 0..8 {
        let (held_before, direct_before) = (count(RIDER_HELD), count("its running query"));
        let mut a = Raw::connect(port);
        let mut b = Raw::connect(port);
        let started = Instant::now();
        a.send_query("SELECT pg_sleep(0.6)");
        b.send_query("SELECT pg_sleep(6)");
        std::thread::sleep(Duration::from_millis(200));
        b.cancel(port);
        // Which of the two went first is the kernel's business: the log says whether B's cancel was held (B rode
        // behind A) or went straight to B's running query (A rode behind B).
        let mut held = false;
        wait_until(Duration::from_secs(5), "the worker to log what it did with the cancel", || {
            held = count(RIDER_HELD) > held_before;
            held || count("its running query") > direct_before
        });
        eprintln!("attempt {attempt}: B rode={held}");
        // Either way, only B's query is cancelled, and it does not run to its end.
        only_b_cancelled(&mut a, &mut b, started);
        if held {
            rode_once = true;
            break;
        }
    }
    assert!(rode_once, "in 8 attempts, B never rode behind A");
}

/// A cancel for a request still waiting in pgmux's queue (the upstream is busy with another session's query) is held
/// and sent once that request runs, so the query is cancelled instead of running to its end later; the query ahead
/// is not touched.
#[test]
fn cancel_of_a_queued_query_is_held_until_it_runs() {
    let (pgmux, _metrics) = start();
    let port = pgmux.port();
    let mut a = Raw::connect(port);
    let mut b = Raw::connect(port);
    let started = Instant::now();
    a.send_query("SELECT pg_sleep(0.8)");
    // Long after A's request went upstream: B cannot ride, it waits in the queue.
    std::thread::sleep(Duration::from_millis(150));
    b.send_query("SELECT pg_sleep(8)");
    std::thread::sleep(Duration::from_millis(150));
    b.cancel(port);
    only_b_cancelled(&mut a, &mut b, started);
    wait_until(Duration::from_secs(5), "the worker to log that it held the cancel", || {
        pgmux.log().contains("cancel held until its request runs (it waits for the server)")
    });
    // The cancel is used up: B's next query runs normally.
    b.send_query("SELECT pg_sleep(0.2)");
    assert_eq!(b.finish(), None);
}

/// The worker's log line for a cancel held for a rider.
const RIDER_HELD: &str = "cancel held until its request runs (it rides behind the owner's)";

/// A's query (ahead) succeeds, B's is cancelled well before its pg_sleep ends, and both sessions carry on.
fn only_b_cancelled(a: &mut Raw, b: &mut Raw, started: Instant) {
    let a_result = a.finish();
    let b_result = b.finish();
    let b_done = started.elapsed();
    eprintln!("a={a_result:?} b={b_result:?} after {b_done:?}");
    assert_eq!(a_result, None, "the query ahead was hit by B's cancel");
    assert_eq!(b_result.as_deref(), Some("57014"), "B's query was not cancelled");
    assert!(b_done < Duration::from_secs(4), "the cancel did not stop B's query: {b_done:?}");
    a.send_query("SELECT 1");
    assert_eq!(a.finish(), None);
    b.send_query("SELECT 1");
    assert_eq!(b.finish(), None);
}

/// A client that leaves while its query waits upstream: the query runs for nobody, its reply is dropped, and the
/// sessions around it get exactly their own replies.
#[test]
fn a_rider_that_leaves_costs_nobody_else() {
    let (pgmux, addr) = start();
    let port = pgmux.port();
    let before = pipelined(addr);
    for round in 0..20 {
        let mut a = Raw::connect(port);
        let mut gone = Raw::connect(port);
        let mut c = Raw::connect(port);
        a.send_query("SELECT pg_sleep(0.05), 'a'");
        gone.send_query("SELECT repeat('g', 100000)");
        c.send_query(&format!("SELECT 'c{round}'"));
        gone.s.shutdown(std::net::Shutdown::Both).unwrap();
        drop(gone);
        assert_eq!(a.finish(), None, "round {round}");
        // c's reply is its own: read the DataRow.
        let mut got = None;
        loop {
            let (tag, body) = c.read_msg();
            match tag {
                b'D' => got = Some(String::from_utf8_lossy(&body[6..]).to_string()),
                b'E' => panic!("round {round}: {}", String::from_utf8_lossy(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        assert_eq!(got.as_deref(), Some(format!("c{round}").as_str()), "round {round}");
    }
    assert!(pipelined(addr) - before >= 1.0, "nothing rode in 20 rounds");
    let mut check = pgmux.client("appdb", "alice");
    assert_eq!(check.query_one("SELECT 41 + 1", &[]).unwrap().get::<_, i32>(0), 42);
}

/// Twelve sessions each cancel their own `pg_sleep` a few milliseconds after sending it, over and over, while their
/// requests ride behind each other. PostgreSQL may take a cancel that lands late (the query it was meant for just
/// ended, or the postmaster's second signal) for the query behind it; pgmux must not let that reach the rider's
/// client: no query is ever cancelled before its own client asked.
#[test]
fn a_late_cancel_never_stops_another_sessions_query() {
    use postgres::error::SqlState;
    use postgres::NoTls;
    let (pgmux, addr) = start();
    let before = pipelined(addr);
    let until = Instant::now() + Duration::from_secs(8);
    let (foreign, cancelled) = with_deadline(&pgmux, Duration::from_secs(60), || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..12u64)
                .map(|i| {
                    let pgmux = &pgmux;
                    scope.spawn(move || {
                        let mut c = pgmux.client("appdb", "alice");
                        let token = c.cancel_token();
                        let (mut foreign, mut cancelled) = (Vec::new(), 0);
                        let mut n = 0u64;
                        while Instant::now() < until {
                            n += 1;
                            let delay = Duration::from_millis(3 + (n + i) % 5 * 2);
                            let token = token.clone();
                            let canceller = std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                let sent = Instant::now();
                                token.cancel_query(NoTls).expect("cancel through pgmux");
                                sent
                            });
                            let result = c.batch_execute("SELECT pg_sleep(0.5)");
                            let ended = Instant::now();
                            let sent = canceller.join().unwrap();
                            match result {
                                Ok(()) => {}
                                Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                                    cancelled += 1;
                                    if ended < sent {
                                        foreign.push(format!(
                                            "session {i} query {n}: cancelled {:?} before its own cancel",
                                            sent - ended
                                        ));
                                    }
                                }
                                Err(e) => panic!("session {i}: {e}"),
                            }
                            c.batch_execute("SELECT 1").expect("the session goes on");
                        }
                        (foreign, cancelled)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).fold((Vec::new(), 0), |(mut f, c), (f2, c2)| {
                f.extend(f2);
                (f, c + c2)
            })
        })
    });
    let rode = pipelined(addr) - before;
    eprintln!(
        "{cancelled} queries cancelled, {rode} pipelined turns, runs again: {}",
        pgmux.log().matches("it runs again").count()
    );
    assert!(foreign.is_empty(), "queries stopped by another session's cancel:\n{}", foreign.join("\n"));
    assert!(cancelled >= 200, "only {cancelled} queries were cancelled");
    assert!(rode >= 100.0, "only {rode} requests rode: the test did not pipeline");
}
