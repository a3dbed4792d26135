//! Limits that protect pgmux from clients that are slow, silent or too many, against the real binary.
//!
//! `client_login_timeout`: a client that stalls anywhere in its login (silent, half a startup packet, no or half an
//! answer to md5 or SCRAM, stopped mid-SCRAM) is closed with 08P01 after the timeout, and cannot hold the listener
//! it is on: other clients log in and query through it meanwhile. `max_client_conn`: clients past the limit are
//! refused with 53300 "no more connections allowed (max_client_conn)", delivered before a clean close, also under a
//! flood of simultaneous connections; existing sessions keep working; and the count comes back exactly when
//! sessions end, however they end.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgmux_tests::checks::{
    assert_error, assert_intact, expect_error_then_eof, family, login_select_1, on_client, raw_select_1, read_byte,
    within, QUERY_LIMIT,
};
use pgmux_tests::util::{
    error_field, password_message, query_message, raw_send, ssl_request, terminate_message, wait_closed, with_length,
};
use pgmux_tests::{error_message, raw_connect, read_backend_message, startup_packet, wait_until, Pgmux, PgmuxConfig};

// ---------------------------------------------------------------------------------------------------------------
// client_login_timeout
// ---------------------------------------------------------------------------------------------------------------

const LOGIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A SASLInitialResponse choosing SCRAM-SHA-256 with `data` as the client-first-message.
fn sasl_initial_response(data: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    with_length(Some(b'p'), body)
}

/// Connects and sends `startup`; returns the socket once the first authentication request (`R`, code `want`)
/// has arrived.
fn at_auth_request(port: u16, startup: &[u8], want: u32) -> TcpStream {
    let mut s = raw_connect(port);
    raw_send(&mut s, startup);
    let (tag, body) = read_backend_message(&mut s).expect("an authentication request");
    assert_eq!((tag, body.get(..4)), (b'R', Some(&want.to_be_bytes()[..])), "authentication request");
    s
}

/// Clients that stall at every point of a login, all on the one listener: each is closed with 08P01
/// "client_login_timeout" about client_login_timeout after it connected, and while they wait, other clients log in
/// and run queries through the same listener without delay, and a session that logged in before is unaffected.
fn stalled_logins_time_out_while_others_work(auth: &str) {
    let p = Pgmux::start(
        PgmuxConfig::new()
            .set("listeners", "1")
            .set("client_login_timeout", &LOGIN_TIMEOUT.as_secs_f64().to_string())
            .set("auth_type", &format!("\"{auth}\"")),
    );
    assert_eq!(p.children("pgmux-listener").len(), 1, "one listener");
    let port = p.port();
    let c = Arc::new(Mutex::new(p.client("appdb", "alice")));
    on_client(&c, "SELECT 1 on the long-lived session", |c| c.query_one("SELECT 1", &[]).map(|_| ())).unwrap();
    let before = family(&p);

    let start = Instant::now();
    let pkt = startup_packet("alice", "appdb");
    let mut stalled: Vec<(String, TcpStream)> = Vec::new();
    for i in 0..20 {
        stalled.push((format!("silent #{i}"), raw_connect(port)));
    }
    let mut half = raw_connect(port);
    raw_send(&mut half, &pkt[..pkt.len() / 2]);
    stalled.push(("half a startup packet".into(), half));
    let mut ssl = raw_connect(port);
    raw_send(&mut ssl, &ssl_request());
    assert_eq!(read_byte(&mut ssl), b'N');
    stalled.push(("nothing after the SSLRequest answer".into(), ssl));
    if auth == "md5" {
        stalled.push(("no answer to the md5 challenge".into(), at_auth_request(port, &pkt, 5)));
        let mut s = at_auth_request(port, &pkt, 5);
        let answer = with_length(Some(b'p'), b"md50123456789abcdef0123456789abcdef\0".to_vec());
        raw_send(&mut s, &answer[..answer.len() / 2]);
        stalled.push(("half a password message".into(), s));
    } else {
        stalled.push(("no SASLInitialResponse".into(), at_auth_request(port, &pkt, 10)));
        let first = sasl_initial_response(b"n,,n=,r=0123456789abcdefghij");
        let mut s = at_auth_request(port, &pkt, 10);
        raw_send(&mut s, &first[..first.len() - 3]);
        stalled.push(("half a SASLInitialResponse".into(), s));
        // The exchange itself is under way: the server-first-message has come, the client never finishes.
        let mut s = at_auth_request(port, &pkt, 10);
        raw_send(&mut s, &first);
        let (tag, body) = read_backend_message(&mut s).expect("AuthenticationSASLContinue");
        assert_eq!((tag, body.get(..4)), (b'R', Some(&11u32.to_be_bytes()[..])), "mid-SCRAM");
        stalled.push(("stalled mid-SCRAM (no client-final-message)".into(), s));
        let mut s = at_auth_request(port, &pkt, 10);
        raw_send(&mut s, &first);
        read_backend_message(&mut s).expect("AuthenticationSASLContinue");
        raw_send(&mut s, b"p\0\0\0\x40c=biws,r=");
        stalled.push(("half a client-final-message".into(), s));
    }

    // Meanwhile, on the same listener: five logins, each with queries, all done before any stalled login is due.
    for i in 0..5 {
        let t = Instant::now();
        login_select_1(&p, "appdb", "alice");
        on_client(&c, "the long-lived session", |c| c.query_one("SELECT 2", &[]).map(|_| ())).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "login {i} took {:?} next to stalled ones", t.elapsed());
    }
    assert!(start.elapsed() < LOGIN_TIMEOUT, "the logins beside the stalled ones took {:?}", start.elapsed());

    for (name, mut s) in stalled {
        let (code, msg) = expect_error_then_eof(&mut s);
        let elapsed = start.elapsed();
        eprintln!("{name}: {code}: {msg} after {elapsed:?}");
        assert_eq!(code, "08P01", "{name}");
        assert!(msg.contains("client_login_timeout"), "{name}: {msg}");
        assert!(
            elapsed >= LOGIN_TIMEOUT - Duration::from_millis(50) && elapsed < LOGIN_TIMEOUT + Duration::from_secs(3),
            "{name}: closed after {elapsed:?}, expected about {LOGIN_TIMEOUT:?}"
        );
    }
    assert_intact(&p, &before, "appdb", "alice", false);
    on_client(&c, "SELECT 1 on the long-lived session", |c| c.query_one("SELECT 1", &[]).map(|_| ())).unwrap();
    drop(c);
    p.stop();
}

#[test]
fn stalled_md5_logins_hit_client_login_timeout() {
    stalled_logins_time_out_while_others_work("md5");
}

#[test]
fn stalled_scram_logins_hit_client_login_timeout() {
    stalled_logins_time_out_while_others_work("scram-sha-256");
}

// ---------------------------------------------------------------------------------------------------------------
// max_client_conn
// ---------------------------------------------------------------------------------------------------------------

/// `SELECT 1` on every client, bounded in time.
fn all_select_1(clients: Vec<postgres::Client>) -> Vec<postgres::Client> {
    within(QUERY_LIMIT, "SELECT 1 on every admitted client", move || {
        let mut clients = clients;
        for c in clients.iter_mut() {
            c.query_one("SELECT 1", &[]).expect("an admitted client broke");
        }
        clients
    })
}

#[test]
fn max_client_conn_refuses_the_21st_and_recovers() {
    let p = Pgmux::start(PgmuxConfig::new().set("max_client_conn", "20"));
    let port = p.port();
    let mut clients: Vec<postgres::Client> = (0..20).map(|_| p.client("appdb", "alice")).collect();
    clients = all_select_1(clients);
    let before = family(&p);

    let refused = |what: &str| {
        let mut s = raw_connect(port);
        raw_send(&mut s, &startup_packet("alice", "appdb"));
        let msg = assert_error(&mut s, "53300", &["max_client_conn"]);
        eprintln!("{what}: {msg}");
        let err = p
            .try_client("appdb", "alice", "alicepw")
            .err()
            .unwrap_or_else(|| panic!("{what}: a client over max_client_conn got in"));
        let db = err.as_db_error().unwrap_or_else(|| panic!("{what}: not a server error: {err:?}"));
        assert_eq!(db.code().code(), "53300");
        assert!(db.message().contains("max_client_conn"), "{}", db.message());
    };
    refused("21st client");
    clients = all_select_1(clients);

    // Close 5; exactly 5 new ones get in (the supervisor learns of closes asynchronously: retry briefly).
    clients.truncate(15);
    for i in 0..5 {
        let mut got = None;
        wait_until(Duration::from_secs(5), &format!("replacement login {i}"), || {
            match p.try_client("appdb", "alice", "alicepw") {
                Ok(c) => {
                    got = Some(c);
                    true
                }
                Err(_) => false,
            }
        });
        clients.push(got.unwrap());
    }
    clients = all_select_1(clients);
    refused("21st client after replacing 5");
    clients.clear();
    wait_until(Duration::from_secs(5), "logins after closing all", || {
        p.try_client("appdb", "alice", "alicepw").is_ok()
    });
    assert_intact(&p, &before, "appdb", "alice", false);
    p.stop();
}

/// A client admitted during a flood: raw sockets give exact control, the postgres crate shows what a real driver
/// makes of a refusal.
enum Admitted {
    Raw(TcpStream),
    Driver(Box<postgres::Client>),
}

impl Admitted {
    fn select_1(&mut self) {
        match self {
            Admitted::Raw(s) => raw_select_1(s),
            Admitted::Driver(c) => {
                let one: i32 = c.query_one("SELECT 1", &[]).expect("an admitted client broke").get(0);
                assert_eq!(one, 1);
            }
        }
    }
}

/// How one client of a flood fared.
enum Outcome {
    Admitted(Admitted),
    /// Got an ErrorResponse (SQLSTATE, message), then EOF.
    Refused(String, String),
    /// Anything else: the pooler hung up without a word, sent something unexpected, or timed out.
    Broken(String),
}

/// A raw login as alice@appdb (trust or md5).
fn raw_flood_login(port: u16) -> Outcome {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return Outcome::Broken(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(QUERY_LIMIT));
    let _ = s.set_nodelay(true);
    // A refusal may come before the startup packet is written: a failed write is judged by what can be read.
    let _ = std::io::Write::write_all(&mut s, &startup_packet("alice", "appdb"));
    loop {
        match read_backend_message(&mut s) {
            Some((b'Z', _)) => return Outcome::Admitted(Admitted::Raw(s)),
            Some((b'E', body)) => {
                let (code, msg) = (error_field(&body, b'C').unwrap_or_default(), error_message(&body));
                if !wait_closed(&mut s) {
                    return Outcome::Broken(format!("not closed after {code}: {msg}"));
                }
                return Outcome::Refused(code, msg);
            }
            Some((b'R', body)) if body.get(..4) == Some(&[0, 0, 0, 5][..]) => {
                let salt = [body[4], body[5], body[6], body[7]];
                let hash = pgmux_proto::auth::md5_password_hash("alice", "alicepw");
                let answer = pgmux_proto::auth::md5_salted_response(&hash, salt);
                let _ = std::io::Write::write_all(&mut s, &password_message(&answer));
            }
            Some((b'R' | b'S' | b'K' | b'N', _)) => {}
            Some((t, _)) => return Outcome::Broken(format!("unexpected message {:?} during login", t as char)),
            None => return Outcome::Broken("connection closed without an ErrorResponse".into()),
        }
    }
}

/// A login through the postgres crate: a refusal must reach it as the server error, not as an I/O failure.
fn driver_flood_login(conn_str: &str) -> Outcome {
    match postgres::Client::connect(conn_str, postgres::NoTls) {
        Ok(c) => Outcome::Admitted(Admitted::Driver(Box::new(c))),
        Err(e) => match e.as_db_error() {
            Some(db) => Outcome::Refused(db.code().code().to_string(), db.message().to_string()),
            None => Outcome::Broken(format!("driver got no server error: {e:?}")),
        },
    }
}

/// `n` logins started together when `go` opens (every fourth through the postgres crate); returns the admitted
/// clients and the refusals, failing on any other outcome and on any refusal but max_client_conn's.
fn flood(p: &Pgmux, n: usize, go: Arc<std::sync::Barrier>) -> (Vec<Admitted>, Vec<(String, String)>) {
    let port = p.port();
    let conn_str = p.conn_str("appdb", "alice", "alicepw");
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (go, conn_str) = (Arc::clone(&go), conn_str.clone());
            std::thread::spawn(move || {
                go.wait();
                if i % 4 == 3 {
                    driver_flood_login(&conn_str)
                } else {
                    raw_flood_login(port)
                }
            })
        })
        .collect();
    let (mut admitted, mut refused, mut broken) = (Vec::new(), Vec::new(), Vec::new());
    for t in threads {
        match t.join() {
            Ok(Outcome::Admitted(c)) => admitted.push(c),
            Ok(Outcome::Refused(code, msg)) => refused.push((code, msg)),
            Ok(Outcome::Broken(why)) => broken.push(why),
            Err(_) => broken.push("client thread panicked (read timeout?)".into()),
        }
    }
    assert!(broken.is_empty(), "{} of {n} flood clients got neither a session nor a refusal: {broken:?}", broken.len());
    for (code, msg) in &refused {
        assert_eq!(code, "53300", "refusal {msg:?}");
        assert!(msg.contains("no more connections allowed (max_client_conn)"), "refusal {msg:?}");
    }
    (admitted, refused)
}

fn flood_now(p: &Pgmux, n: usize) -> (Vec<Admitted>, Vec<(String, String)>) {
    flood(p, n, Arc::new(std::sync::Barrier::new(n)))
}

/// 200 clients at once against max_client_conn = 50 with 10 sessions open: exactly 40 get in, the other 160 are
/// told 53300 "no more connections allowed (max_client_conn)" (none is just hung up on, and a driver sees the
/// server's error), the 10 run queries right through the flood, and once the flood's sessions have ended in every
/// way a session can end, exactly 40 fit again and the 41st is refused: nothing leaked, nothing over-counted.
fn connection_flood_past_max_client_conn(auth: &str) {
    const MAX: usize = 50;
    const EXISTING: usize = 10;
    const FLOOD: usize = 200;
    let p = Pgmux::start(
        PgmuxConfig::new().set("max_client_conn", &MAX.to_string()).set("auth_type", &format!("\"{auth}\"")),
    );
    let existing: Vec<postgres::Client> = (0..EXISTING).map(|_| p.client("appdb", "alice")).collect();
    let existing = all_select_1(existing);
    let before = family(&p);

    // The existing sessions start querying at the very moment the flood starts connecting.
    let go = Arc::new(std::sync::Barrier::new(FLOOD + EXISTING));
    let busy: Vec<_> = existing
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                go.wait();
                for _ in 0..20 {
                    let v: i32 =
                        c.query_one("SELECT $1::int", &[&(i as i32)]).expect("an existing session broke").get(0);
                    assert_eq!(v, i as i32);
                }
                c
            })
        })
        .collect();
    let started = Instant::now();
    let (mut admitted, refused) = flood(&p, FLOOD, go);
    let existing: Vec<postgres::Client> = within(QUERY_LIMIT, "existing sessions during the flood", move || {
        busy.into_iter().map(|t| t.join().unwrap()).collect()
    });
    eprintln!("flood: {} admitted, {} refused in {:?}", admitted.len(), refused.len(), started.elapsed());
    assert_eq!(admitted.len(), MAX - EXISTING, "admitted past max_client_conn or refused below it");
    assert_eq!(refused.len(), FLOOD - (MAX - EXISTING));
    for c in admitted.iter_mut() {
        c.select_1();
    }
    let existing = all_select_1(existing);

    // The flood's sessions end every way a session can: Terminate, a plain close, a close with a query running.
    for (i, c) in admitted.drain(..).enumerate() {
        match (c, i % 3) {
            (Admitted::Raw(mut s), 0) => raw_send(&mut s, &terminate_message()),
            (Admitted::Raw(mut s), 2) => raw_send(&mut s, &query_message("SELECT pg_sleep(0.3)")),
            (Admitted::Driver(c), _) => drop(c),
            (Admitted::Raw(s), _) => drop(s),
        }
    }

    // Exactly the free places fit again: the count came back down, and not below the truth. Closes reach the
    // supervisor asynchronously, so logins are retried until all 40 places are held.
    let mut again: Vec<Admitted> = Vec::new();
    wait_until(Duration::from_secs(10), "40 places free again after the flood", || {
        let (got, _) = flood_now(&p, MAX - EXISTING - again.len());
        again.extend(got);
        again.len() >= MAX - EXISTING
    });
    assert_eq!(again.len(), MAX - EXISTING);
    let (extra, refused) = flood_now(&p, 1);
    assert!(extra.is_empty() && refused.len() == 1, "a client past max_client_conn got in after the flood");
    for c in again.iter_mut() {
        c.select_1();
    }
    let existing = all_select_1(existing);
    drop(again);
    drop(existing);
    wait_until(Duration::from_secs(10), "logins after everyone left", || {
        p.try_client("appdb", "alice", "alicepw").is_ok()
    });
    assert_intact(&p, &before, "appdb", "alice", false);
    p.stop();
}

/// Reads what is left after an ErrorResponse: true for a clean EOF, false for a reset.
fn clean_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("reading to EOF: {e}"),
        }
    }
}

/// A listener full of logins in progress refuses the next client at accept. The client has sent its startup
/// packet and a query by then; closing over that unread input would make the kernel send a reset instead of a
/// FIN, and a client kernel may then drop the refusal unread (Windows does), so the client must see the error and
/// then a clean EOF. The listener is paused while the client connects and writes, so its bytes are surely queued
/// before the accept.
#[test]
fn refusal_at_accept_is_delivered_before_a_clean_close() {
    let p =
        Pgmux::start(PgmuxConfig::new().set("listeners", "1").set("max_client_conn", "3").set("auth_type", "\"md5\""));
    let port = p.port();
    let listener = p.children("pgmux-listener")[0];
    let pkt = startup_packet("alice", "appdb");
    let stalled: Vec<TcpStream> = (0..3).map(|_| at_auth_request(port, &pkt, 5)).collect();
    for round in 0..3 {
        p.kill(listener, libc::SIGSTOP);
        let mut s = raw_connect(port);
        let mut bytes = pkt.clone();
        bytes.extend_from_slice(&query_message("SELECT 1"));
        raw_send(&mut s, &bytes);
        std::thread::sleep(Duration::from_millis(50));
        p.kill(listener, libc::SIGCONT);
        let (tag, body) = read_backend_message(&mut s).expect("a refusal");
        assert_eq!(tag, b'E', "round {round}");
        assert_eq!(error_field(&body, b'C').as_deref(), Some("53300"), "round {round}: {}", error_message(&body));
        assert!(error_message(&body).contains("max_client_conn"), "round {round}");
        assert!(clean_eof(&mut s), "round {round}: the refusal was followed by a reset, not a clean close");
    }
    drop(stalled);
    wait_until(Duration::from_secs(10), "a login once the stalled ones left", || {
        p.try_client("appdb", "alice", "alicepw").is_ok()
    });
    p.stop();
}

/// Trust logins finish in one step, so the supervisor refuses the extra sessions.
#[test]
fn connection_flood_past_max_client_conn_trust() {
    connection_flood_past_max_client_conn("trust");
}

/// md5 logins take a round trip, so logins in progress pile up in the listeners, which refuse too.
#[test]
fn connection_flood_past_max_client_conn_md5() {
    connection_flood_past_max_client_conn("md5");
}
