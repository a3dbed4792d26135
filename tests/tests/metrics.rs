//! The Prometheus endpoint (`metrics_listen`) against the real binary and a real PostgreSQL: what a plain HTTP
//! client gets (status, content type, text format 0.0.4 that a strict validator accepts), numbers that follow real
//! activity (transactions, the query-duration and client-wait histograms, waiting clients, worker crashes), hostile
//! requests (wrong method, wrong path, garbage, a slowloris) refused or timed out without disturbing pooling, a bad
//! address stopping start-up, and no endpoint unless configured.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgmux_tests::checks::{login_select_1, within, QUERY_LIMIT};
use pgmux_tests::pgmux::binary;
use pgmux_tests::util::{free_port, temp_dir};
use pgmux_tests::{wait_until, with_deadline, Pgmux, PgmuxConfig};

// ---------------------------------------------------------------------------------------------------------------
// a plain HTTP client
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Everything the server sends until it closes; None if it closed without a byte (or reset the connection).
fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => break,
            Err(e) => panic!("reading the HTTP response: {e} (after {} bytes)", raw.len()),
        }
    }
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{status_line}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let r = Response { status, headers, body: body.to_string() };
    if let (Some(len), false) = (r.header("Content-Length"), r.body.is_empty()) {
        assert_eq!(len.parse::<usize>().unwrap(), r.body.len(), "Content-Length");
    }
    Some(r)
}

fn request(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    read_response(&mut s)
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: pgmux\r\nAccept: text/plain\r\n\r\n").as_bytes())
        .unwrap_or_else(|| panic!("GET {path}: closed without an answer"))
}

/// A successful scrape, validated.
fn scrape(addr: SocketAddr) -> Exposition {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let ct = r.header("Content-Type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content type {ct:?}");
    Exposition::parse(&r.body)
}

// ---------------------------------------------------------------------------------------------------------------
// a strict validator for the text exposition format 0.0.4
// ---------------------------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: HashMap<String, String>,
    samples: Vec<(String, Labels, f64)>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `{a="x",b="y\"z"}` → labels, checking names and escapes.
fn parse_labels(s: &str) -> Labels {
    let mut out = Labels::new();
    let inner = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).unwrap_or_else(|| panic!("labels {s:?}"));
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label in {s:?}"));
        assert!(is_name(name) && !name.starts_with("__"), "label name {name:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {s:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("raw line feed in a label value: {s:?}"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {s:?}"),
            }
        };
        assert!(out.insert(name.to_string(), value).is_none(), "label {name} twice in {s:?}");
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("sample value {v:?}")),
    }
}

impl Exposition {
    /// Every line is a HELP, a TYPE or a sample `name{labels} value`; every family has HELP and TYPE before its
    /// samples, which are contiguous; histograms have cumulative buckets ending in +Inf equal to `_count`, and a
    /// `_sum`.
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with('\n'), "the exposition must end with a line feed");
        let mut e = Exposition::default();
        let mut helped: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut finished: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                assert!(is_name(name), "{line:?}");
                assert!(!helped.contains(&name.to_string()), "HELP twice for {name}");
                helped.push(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line:?}");
                assert!(helped.last().map(String::as_str) == Some(name), "TYPE of {name} without its HELP first");
                assert!(e.types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice for {name}");
                if let Some(prev) = current.replace(name.to_string()) {
                    finished.push(prev);
                }
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample {line:?}"));
            let (name, labels) = match series.find('{') {
                Some(i) => (&series[..i], parse_labels(&series[i..])),
                None => (series, Labels::new()),
            };
            assert!(is_name(name), "sample name {name:?}");
            let family = current.as_deref().unwrap_or_else(|| panic!("sample {line:?} before any TYPE"));
            let kind = e.types.get(family).map(String::as_str);
            let base = match kind {
                Some("histogram") => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or_else(|| panic!("histogram sample {name}")),
                _ => name,
            };
            assert_eq!(base, family, "sample {line:?} outside its family");
            assert!(!finished.contains(&family.to_string()), "{family}'s samples are not contiguous");
            if kind == Some("counter") {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
            if name.ends_with("_bucket") {
                assert!(labels.contains_key("le"), "bucket without le: {line:?}");
            }
            let v = parse_value(value);
            if kind == Some("counter") || name.ends_with("_bucket") || name.ends_with("_count") {
                assert!(v >= 0.0, "negative {line:?}");
            }
            e.samples.push((name.to_string(), labels, v));
        }
        e.check_histograms();
        e
    }

    fn check_histograms(&self) {
        for (family, _) in self.types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket_name = format!("{family}_bucket");
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for (name, labels, v) in &self.samples {
                if *name == bucket_name {
                    let mut key = labels.clone();
                    let le = parse_value(&key.remove("le").unwrap());
                    series.entry(key).or_default().push((le, *v));
                }
            }
            for (labels, buckets) in series {
                assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "{family}{labels:?}: le not increasing");
                assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{labels:?}: not cumulative");
                let (last_le, last) = *buckets.last().unwrap();
                assert_eq!(last_le, f64::INFINITY, "{family}{labels:?}: no +Inf bucket");
                let count = self.get(&format!("{family}_count"), &labels).expect("_count");
                assert_eq!(last, count, "{family}{labels:?}: +Inf bucket != _count");
                assert!(self.get(&format!("{family}_sum"), &labels).is_some(), "{family}{labels:?}: no _sum");
            }
        }
    }

    fn get(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.samples.iter().find(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| *v)
    }

    /// The sample `name` with exactly `labels`, 0 if absent (a pool that does not exist yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        assert!(
            self.types.contains_key(name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s).is_some_and(|b| self.types.contains_key(b))),
            "no family {name}"
        );
        let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.get(name, &labels).unwrap_or(0.0)
    }
}

const ALICE: &[(&str, &str)] = &[("database", "appdb"), ("user", "alice")];

fn with_le(le: &str) -> Vec<(&str, &str)> {
    let mut v = ALICE.to_vec();
    v.push(("le", le));
    v
}

/// pgmux with the endpoint on a free port.
fn start(config: PgmuxConfig) -> (Pgmux, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pgmux = Pgmux::start(config.set("metrics_listen", &format!("\"{addr}\"")));
    (pgmux, addr)
}

// ---------------------------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------------------------

/// The exposition is valid and complete, and counters follow 200 real transactions at once (no waiting for a
/// stats period: every scrape gathers fresh reports from every worker).
#[test]
fn scrape_is_valid_and_counts_follow_activity() {
    let (pgmux, addr) = start(PgmuxConfig::new());
    let before = scrape(addr);
    assert_eq!(before.value("pgmux_up", &[]), 1.0);
    assert_eq!(before.value("pgmux_listeners", &[]), 2.0);
    assert_eq!(before.value("pgmux_config_max_client_connections", &[]), 5000.0);
    assert_eq!(before.value("pgmux_version_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(before.value("pgmux_start_time_seconds", &[]) > 1.6e9);
    let tx0 = before.value("pgmux_transactions_total", ALICE);
    let q0 = before.value("pgmux_query_duration_seconds_count", ALICE);

    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut c = pgmux.client("appdb", "alice");
        for i in 0..200 {
            c.batch_execute(&format!("SELECT {i}")).unwrap();
        }
        // The client stays connected: its pool has a client, an upstream and counted bytes.
        let after = scrape(addr);
        let tx = after.value("pgmux_transactions_total", ALICE);
        assert!(tx >= tx0 + 200.0, "transactions {tx0} -> {tx}");
        assert!(after.value("pgmux_queries_total", ALICE) >= 200.0);
        assert!(after.value("pgmux_query_duration_seconds_count", ALICE) >= q0 + 200.0);
        assert!(after.value("pgmux_query_duration_seconds_sum", ALICE) > 0.0);
        assert!(after.value("pgmux_queries_duration_seconds_total", ALICE) > 0.0);
        assert!(after.value("pgmux_client_wait_duration_seconds_count", ALICE) >= 200.0);
        assert!(after.value("pgmux_received_bytes_total", ALICE) > 200.0 * 10.0);
        assert!(after.value("pgmux_sent_bytes_total", ALICE) > 200.0 * 10.0);
        assert!(after.value("pgmux_server_assignments_total", ALICE) >= 200.0);
        assert_eq!(after.value("pgmux_pools_client_active_connections", ALICE), 1.0);
        assert_eq!(after.value("pgmux_pools_client_waiting_connections", ALICE), 0.0);
        assert_eq!(after.value("pgmux_pools_pool_size", ALICE), 4.0);
        assert_eq!(after.value("pgmux_pools_server_idle_connections", ALICE), 1.0);
        assert_eq!(after.value("pgmux_client_connections", &[]), 1.0);
        assert!(after.value("pgmux_workers", &[]) >= 1.0);
        assert_eq!(after.value("pgmux_databases_current_connections", &[("database", "appdb")]), 1.0);
        assert_eq!(after.value("pgmux_databases_pool_size", &[("database", "appdb")]), 4.0);
        assert_eq!(after.value("pgmux_databases_paused", &[("database", "appdb")]), 0.0);
        assert_eq!(after.value("pgmux_databases_disabled", &[("database", "otherdb")]), 0.0);
        // Most of these SELECTs take well under 10 ms.
        assert!(after.value("pgmux_query_duration_seconds_bucket", &with_le("0.01")) >= 100.0);
        // HEAD: the same head, no body.
        let head = request(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").expect("an answer to HEAD");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert!(head.header("Content-Length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(0) > 1000);
    });
}

/// A session queued behind a busy upstream is a waiting client while it waits, and its wait lands in the client
/// wait histogram once its turn comes.
#[test]
fn waiting_client_shows_up() {
    // One upstream for everyone: the second client must wait for the first one's query.
    let (pgmux, addr) = start(PgmuxConfig::new().set("default_pool_size", "1"));
    let slow_over_1s = |e: &Exposition| {
        e.value("pgmux_client_wait_duration_seconds_bucket", &with_le("+Inf"))
            - e.value("pgmux_client_wait_duration_seconds_bucket", &with_le("1"))
    };
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut busy = pgmux.client("appdb", "alice");
        let mut waiter = pgmux.client("appdb", "alice");
        busy.batch_execute("SELECT 1").unwrap();
        waiter.batch_execute("SELECT 1").unwrap();
        let before = scrape(addr);
        std::thread::scope(|scope| {
            let slow = scope.spawn(move || busy.batch_execute("SELECT pg_sleep(2.5)"));
            std::thread::sleep(Duration::from_millis(300));
            let quick = scope.spawn(move || {
                let start = Instant::now();
                waiter.batch_execute("SELECT 2").unwrap();
                start.elapsed()
            });
            let mut seen = None;
            wait_until(Duration::from_secs(2), "a waiting client in the metrics", || {
                let e = scrape(addr);
                let waiting = e.value("pgmux_pools_client_waiting_connections", ALICE);
                seen = Some((waiting, e.value("pgmux_pools_client_maxwait_seconds", ALICE)));
                waiting >= 1.0
            });
            let (_, maxwait) = seen.unwrap();
            assert!(maxwait > 0.0, "a waiting client with no wait");
            slow.join().unwrap().unwrap();
            let waited = quick.join().unwrap();
            assert!(waited > Duration::from_secs(1), "the second client did not wait ({waited:?})");
        });
        let after = scrape(addr);
        assert_eq!(after.value("pgmux_pools_client_waiting_connections", ALICE), 0.0);
        assert!(slow_over_1s(&after) >= slow_over_1s(&before) + 1.0, "the long wait is not in the histogram");
        assert!(after.value("pgmux_client_wait_seconds_total", ALICE) > 1.0);
        // The 2.5 s query is in the query histogram above 2.5 s... or at it: above 1 s in any case.
        let q = |e: &Exposition, le| e.value("pgmux_query_duration_seconds_bucket", &with_le(le));
        assert!(q(&after, "+Inf") - q(&after, "1") >= 1.0);
    });
}

/// SIGKILL of a worker: the crash is counted, its idle session is counted as recovered, counters it reported
/// before stay in the totals, and pooling goes on.
#[test]
fn worker_crash_is_counted() {
    let (pgmux, addr) = start(PgmuxConfig::new().set("default_pool_size", "1"));
    with_deadline(&pgmux, Duration::from_secs(60), || {
        let mut idle = pgmux.client("appdb", "alice");
        for _ in 0..20 {
            idle.batch_execute("SELECT 1").unwrap();
        }
        let before = scrape(addr);
        assert_eq!(before.value("pgmux_worker_crashes_total", &[]), 0.0);
        let tx = before.value("pgmux_transactions_total", ALICE);
        assert!(tx >= 20.0);
        std::thread::sleep(Duration::from_millis(50));
        let workers = pgmux.children("pgmux-worker");
        assert_eq!(workers.len(), 1);
        pgmux.kill(workers[0], libc::SIGKILL);
        wait_until(Duration::from_secs(5), "the crash in the metrics", || {
            scrape(addr).value("pgmux_worker_crashes_total", &[]) == 1.0
        });
        let after = scrape(addr);
        assert_eq!(after.value("pgmux_sessions_recovered_total", &[]), 1.0);
        assert_eq!(after.value("pgmux_sessions_lost_total", &[]), 0.0);
        assert!(after.value("pgmux_transactions_total", ALICE) >= tx, "totals went backwards after the crash");
        idle.batch_execute("SELECT 1").unwrap();
        let later = scrape(addr);
        assert!(later.value("pgmux_transactions_total", ALICE) >= tx + 1.0);
        assert_eq!(later.value("pgmux_workers", &[]), 1.0);
    });
}

/// Wrong method, wrong path, garbage, oversized heads and a slowloris get a 4xx (or a close after a timeout); the
/// endpoint and the pooler keep working meanwhile.
#[test]
fn bad_requests_are_refused_and_pooling_goes_on() {
    let (pgmux, addr) = start(PgmuxConfig::new());
    let post = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").expect("answer to POST");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/metrics/x").status, 404);
    // 10 KB of garbage: refused (the head never ends, or its first line is not HTTP).
    let mut x: u32 = 12345;
    let garbage: Vec<u8> = (0..10 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect();
    for bytes in [garbage, vec![b'A'; 10 * 1024], b"GET /metrics HTTP/9.9\r\n\r\n".to_vec()] {
        let mut s = connect(addr);
        // The server may refuse and close before all of it is written.
        let _ = s.write_all(&bytes);
        if let Some(r) = read_response(&mut s) {
            assert!((400..500).contains(&r.status) || r.status == 505, "{r:?}");
        }
    }
    login_select_1(&pgmux, "appdb", "alice");

    // A slowloris: one byte a second. Meanwhile scrapes and queries are served; it is answered 408 (or closed)
    // within the request timeout.
    let mut slow = connect(addr);
    let started = Instant::now();
    let dribble = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            if started.elapsed() > Duration::from_secs(12) {
                break;
            }
        }
        slow
    });
    let mut c = pgmux.client("appdb", "alice");
    for _ in 0..3 {
        within(QUERY_LIMIT, "a query during a slowloris", {
            let mut one = pgmux.client("appdb", "bob");
            move || one.batch_execute("SELECT 1").unwrap()
        });
        c.batch_execute("SELECT 1").unwrap();
        assert!(scrape(addr).value("pgmux_transactions_total", ALICE) >= 1.0);
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut slow = dribble.join().unwrap();
    let answer = read_response(&mut slow);
    let took = started.elapsed();
    if let Some(r) = &answer {
        assert_eq!(r.status, 408, "{r:?}");
    }
    assert!(took < Duration::from_secs(14), "the slowloris was held for {took:?}");
    assert!(took >= Duration::from_secs(4), "the slowloris was cut off before its timeout ({took:?})");
    // Many half-open requests at once do not stop the pooler either.
    let idle: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    login_select_1(&pgmux, "appdb", "alice");
    drop(idle);
    wait_until(Duration::from_secs(10), "the endpoint to serve again", || {
        let mut s = connect(addr);
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        read_response(&mut s).is_some_and(|r| r.status == 200)
    });
    assert!(!pgmux.log().contains("panicked"), "{}", pgmux.log());
    assert_eq!(pgmux.children("pgmux-listener").len(), 2, "a listener died");
}

/// IPv6: `[::1]:port` (skipped where the machine has no IPv6 loopback).
#[test]
fn ipv6_address() {
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let pgmux = Pgmux::start(PgmuxConfig::new().set("metrics_listen", &format!("\"[::1]:{port}\"")));
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(scrape(addr).value("pgmux_up", &[]), 1.0);
    assert!(pgmux.log().contains(&format!("metrics on http://[::1]:{port}/metrics")), "{}", pgmux.log());
}

/// Without `metrics_listen`, pgmux listens on nothing but its PostgreSQL port.
#[test]
fn disabled_by_default() {
    let pgmux = Pgmux::start(PgmuxConfig::new());
    let listening = listening_ports(pgmux.pid());
    assert_eq!(listening, vec![pgmux.port()], "the supervisor listens on more than the pooler port");
    assert!(!pgmux.log().contains("metrics on"));
}

/// The TCP ports on which the sockets of process `pid` listen, from /proc.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address st ... inode: fields 1, 3 and 9.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()).unwrap();
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A metrics address that cannot be bound stops start-up with an error naming it, before anything is forked.
#[test]
fn unbindable_address_fails_startup() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (addr, why) in
        [(format!("127.0.0.1:{port}"), "Address already in use"), ("192.0.2.1:9127".to_string(), "address")]
    {
        let dir = temp_dir("pgmux-metrics-bad");
        let config = PgmuxConfig::new()
            .set("listen_addr", "\"127.0.0.1\"")
            .set("listen_port", &free_port().to_string())
            .set("unix_socket_dir", &format!("\"{}\"", dir.display()))
            .set("metrics_listen", &format!("\"{addr}\""));
        let path = dir.join("pooler.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let mut child = Command::new(binary())
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pgmux started with an unbindable metrics_listen {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{addr}: {stderr}");
        assert!(stderr.contains(&format!("could not listen on {addr} (metrics_listen)")), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(taken);
}
