//! The admin console (database `pgbouncer`): every SHOW command's columns exactly as PgBouncer 1.25 sends them
//! (names, order, type OIDs), compared with the PgBouncer installed on the machine where the versions overlap; numbers
//! that follow real activity; access control (admin_users, stats_users, the OS user over the Unix socket); and each
//! control command's effect on real clients of a real PostgreSQL.

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgmux_tests::util::{
    error_field, error_message, query_message, raw_connect, raw_send, read_backend_message, read_until_ready,
    startup_packet_with,
};
use pgmux_tests::{wait_until, with_deadline, Pgmux, PgmuxConfig, Postgres};
use postgres::SimpleQueryMessage;

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// pgmux with an admin user "admin" and a stats user "stats" (both in the userlist), trust auth.
fn config() -> PgmuxConfig {
    PgmuxConfig::new()
        .set("admin_users", "\"admin\"")
        .set("stats_users", "\"stats, bob\"")
        .user("admin", "adminpw")
        .user("stats", "statspw")
}

fn console(pgmux: &Pgmux, user: &str) -> postgres::Client {
    pgmux.client("pgbouncer", user)
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

fn num(row: &HashMap<String, String>, col: &str) -> i64 {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col}: {row:?}"))
}

/// The row of `rows` whose `col` is `value`.
fn find<'a>(rows: &'a [HashMap<String, String>], col: &str, value: &str) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r.get(col).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no row with {col}={value} in {rows:?}"))
}

fn db_error(e: &postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// Runs a console command that must fail; returns its message.
fn console_err(c: &mut postgres::Client, sql: &str) -> String {
    match c.simple_query(sql) {
        Ok(m) => panic!("{sql}: succeeded with {} messages", m.len()),
        Err(e) => db_error(&e),
    }
}

/// Raw-protocol session: logs in with trust and returns the socket.
fn raw_login(port: u16, user: &str, db: &str) -> TcpStream {
    let mut s = raw_connect(port);
    raw_send(&mut s, &startup_packet_with(&[("user", user), ("database", db)]));
    let msgs = read_until_ready(&mut s).expect("login");
    assert!(msgs.iter().all(|(t, _)| *t != b'E'), "login failed: {msgs:?}");
    s
}

/// Column names and type OIDs of a query's RowDescription, over the raw protocol.
fn describe(s: &mut TcpStream, sql: &str) -> Vec<(String, u32)> {
    raw_send(s, &query_message(sql));
    let msgs = read_until_ready(s).expect("answer");
    if let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b'E') {
        panic!("{sql}: {}", error_message(body));
    }
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'T').unwrap_or_else(|| panic!("{sql}: no RowDescription"));
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut cols = Vec::new();
    let mut rest = &body[2..];
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8(rest[..end].to_vec()).unwrap();
        let oid = u32::from_be_bytes(rest[end + 7..end + 11].try_into().unwrap());
        cols.push((name, oid));
        rest = &rest[end + 19..];
    }
    cols
}

/// The expected columns of each SHOW command, from PgBouncer 1.25's admin.c and stats.c (type letters: s text,
/// i int4, q int8, N numeric, T timestamp as text).
fn expected() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let sockets = vec![
        "type",
        "user",
        "database",
        "replication",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "close_needed",
        "ptr",
        "link",
        "remote_pid",
        "tls",
        "application_name",
        "prepared_statements",
        "id",
    ];
    vec![
        (
            "SHOW POOLS",
            "ssiiiiiiiiiiiiiss",
            vec![
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ],
        ),
        (
            "SHOW STATS",
            "sNNNNNNNNNNNNNNNNNNNNNN",
            vec![
                "database",
                "total_server_assignment_count",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_client_parse_count",
                "total_server_parse_count",
                "total_bind_count",
                "avg_server_assignment_count",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        (
            "SHOW STATS_TOTALS",
            "sNNNNNNNNNNN",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
                "xact_time",
                "query_time",
                "wait_time",
                "client_parse_count",
                "server_parse_count",
                "bind_count",
            ],
        ),
        (
            "SHOW STATS_AVERAGES",
            "sNNNNNNNNNNN",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
                "xact_time",
                "query_time",
                "wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        ("SHOW TOTALS", "sN", vec!["name", "value"]),
        ("SHOW CLIENTS", "ssssssisiTTiiississii", sockets.clone()),
        ("SHOW SERVERS", "ssssssisiTTiiississii", sockets),
        (
            "SHOW DATABASES",
            "ssissiiiissiiiiii",
            vec![
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ],
        ),
        (
            "SHOW USERS",
            "ssssiiii",
            vec![
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ],
        ),
        ("SHOW CONFIG", "ssss", vec!["key", "value", "default", "changeable"]),
        ("SHOW LISTS", "si", vec!["list", "items"]),
        ("SHOW VERSION", "s", vec!["version"]),
        ("SHOW STATE", "ss", vec!["key", "value"]),
        ("SHOW MEM", "siiii", vec!["name", "size", "used", "free", "memtotal"]),
        ("SHOW DNS_HOSTS", "sqs", vec!["hostname", "ttl", "addrs"]),
        ("SHOW DNS_ZONES", "sqi", vec!["zonename", "serial", "count"]),
        ("SHOW PEERS", "isii", vec!["peer_id", "host", "port", "pool_size"]),
        ("SHOW PINS", "ssiiqs", vec!["database", "user", "server_id", "server_pid", "session_id", "reason"]),
    ]
}

fn oid(letter: char) -> u32 {
    match letter {
        'i' => INT4,
        'q' => INT8,
        'N' => NUMERIC,
        _ => TEXT,
    }
}

/// Whether the process has exited (gone, or a zombie waiting for the fixture to reap it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, t)| t.split_whitespace().next()).is_some_and(|s| s == "Z"),
    }
}

/// Runs `f` on a thread and returns a receiver for its result, so a test can check that it blocks.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

// ---------------------------------------------------------------------------------------------------------------
// columns
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn every_show_has_pgbouncer_columns_and_types() {
    let pgmux = Pgmux::start(config());
    let _client = pgmux.client("appdb", "alice");
    let mut s = raw_login(pgmux.port(), "admin", "pgbouncer");
    for (sql, types, names) in expected() {
        let got = describe(&mut s, sql);
        let want: Vec<(String, u32)> = names.iter().zip(types.chars()).map(|(n, t)| (n.to_string(), oid(t))).collect();
        assert_eq!(got, want, "{sql}");
    }
    // SHOW SOCKETS adds PgBouncer's buffer columns.
    let sockets = describe(&mut s, "SHOW SOCKETS");
    assert_eq!(sockets.len(), 28);
    assert_eq!(sockets.last().map(|c| c.0.as_str()), Some("send_avail"));
    // SHOW HELP is a notice and SHOW; fake parameters answer like PgBouncer.
    raw_send(&mut s, &query_message("SHOW HELP"));
    let msgs = read_until_ready(&mut s).unwrap();
    let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"NCZ");
    assert!(error_field(&msgs[0].1, b'D').unwrap().contains("SHOW HELP|CONFIG|DATABASES"));
    // The console speaks the simple protocol only: an extended-protocol query gets an error, then the connection
    // is closed, as PgBouncer does.
    raw_send(&mut s, b"P\0\0\0\x10\0SHOW POOLS\0\0\0S\0\0\0\x04");
    let (tag, body) = read_backend_message(&mut s).unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(error_message(&body), "extended query protocol not supported by admin console");
    assert!(read_backend_message(&mut s).is_none(), "connection closed after the error");
    let mut c = console(&pgmux, "admin");
    assert_eq!(rows(&mut c, "SHOW client_encoding")[0]["client_encoding"], "UTF-8");
    assert!(rows(&mut c, "SHOW VERSION")[0]["version"].starts_with("PgBouncer 1.25"));
    pgmux.stop();
}

/// A PgBouncer from the distribution (an older version) against the same PostgreSQL: each of its SHOW columns
/// appears in pgmux's answer in the same order (newer versions only added columns, and renamed `reserve_pool`).
#[test]
fn columns_agree_with_the_installed_pgbouncer() {
    let pgmux = Pgmux::start(config());
    let bouncer = PgBouncer::start();
    let mut theirs = raw_login(bouncer.port, "admin", "pgbouncer");
    let mut ours = raw_login(pgmux.port(), "admin", "pgbouncer");
    let renamed = HashMap::from([("reserve_pool", "reserve_pool_size")]);
    for sql in [
        "SHOW POOLS",
        "SHOW STATS",
        "SHOW STATS_TOTALS",
        "SHOW STATS_AVERAGES",
        "SHOW TOTALS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW DATABASES",
        "SHOW USERS",
        "SHOW CONFIG",
        "SHOW LISTS",
        "SHOW VERSION",
        "SHOW STATE",
        "SHOW MEM",
        "SHOW DNS_HOSTS",
        "SHOW DNS_ZONES",
    ] {
        // Commands the installed version predates (SHOW STATE is newer than 1.18) are compared by the test above.
        raw_send(&mut theirs, &query_message(sql));
        if read_until_ready(&mut theirs).unwrap().iter().any(|(t, _)| *t == b'E') {
            continue;
        }
        let their_cols = describe(&mut theirs, sql);
        let our_cols: Vec<String> = describe(&mut ours, sql).into_iter().map(|c| c.0).collect();
        let mut at = 0;
        for (name, _) in &their_cols {
            let name = renamed.get(name.as_str()).copied().unwrap_or(name);
            match our_cols.iter().skip(at).position(|c| c == name) {
                Some(i) => at += i + 1,
                None => panic!(
                    "{sql}: PgBouncer's column {name} missing or out of order in {our_cols:?} (theirs: {their_cols:?})"
                ),
            }
        }
    }
    pgmux.stop();
}

struct PgBouncer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PgBouncer {
    fn start() -> PgBouncer {
        let pg = Postgres::shared();
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed (scripts/test installs it)");
        let port = pgmux_tests::free_port();
        let dir = std::env::temp_dir().join(format!("pgmux-admin-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"admin\" \"adminpw\"\n\"alice\" \"alicepw\"\n").unwrap();
        let ini = format!(
            "[databases]\nappdb = host={} port={} dbname=appdb\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {}\nadmin_users = admin\npool_mode = transaction\n\
             logfile = {}\n",
            pg.host(),
            pg.port(),
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let mut cmd = Command::new(bin);
        // PgBouncer refuses to run as root; the fixture's PostgreSQL runs as "postgres" then, and so does it.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = Command::new("chown").args(["-R", "postgres", &dir.display().to_string()]).status();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let b = PgBouncer { child, port, dir };
        wait_until(Duration::from_secs(10), "pgbouncer listening", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        b
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "pgbouncer log:\n{}",
                std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// numbers
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn numbers_follow_activity() {
    let pgmux = Pgmux::start(config().set("default_pool_size", "2"));
    let mut clients: Vec<postgres::Client> = (0..5).map(|_| pgmux.client("appdb", "alice")).collect();
    let mut admin = console(&pgmux, "admin");

    // Five sessions, nothing asked yet: five active (idle) clients, nobody waiting.
    let pools = rows(&mut admin, "SHOW POOLS");
    let p = find(&pools, "database", "appdb");
    assert_eq!((p["user"].as_str(), num(p, "cl_active"), num(p, "cl_waiting")), ("alice", 5, 0), "{p:?}");
    assert_eq!(p["pool_mode"], "transaction");
    assert!(num(p, "sv_idle") + num(p, "sv_active") + num(p, "sv_login") >= 1, "{p:?}");

    // 30 transactions: 20 autocommit statements and 10 explicit ones of three statements each.
    let mut pids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let c = &mut clients[i % 5];
        pids.insert(c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0));
    }
    for i in 0..10 {
        let c = &mut clients[i % 5];
        c.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
    }
    let stats = rows(&mut admin, "SHOW STATS");
    let s = find(&stats, "database", "appdb");
    assert!(num(s, "total_xact_count") >= 30, "{s:?}");
    assert!(num(s, "total_query_count") >= 30, "{s:?}");
    assert!(num(s, "total_server_assignment_count") >= 30, "{s:?}");
    assert!(num(s, "total_received") > 0 && num(s, "total_sent") > 0, "{s:?}");
    assert!(num(s, "total_query_time") > 0 && num(s, "total_xact_time") >= num(s, "total_query_time") / 2, "{s:?}");
    // The driver prepares each extended-protocol query: Parse and Bind are counted.
    assert!(num(s, "total_client_parse_count") >= 20 && num(s, "total_bind_count") >= 20, "{s:?}");
    assert!(num(s, "avg_xact_count") >= 0);
    let totals = rows(&mut admin, "SHOW STATS_TOTALS");
    assert!(num(find(&totals, "database", "appdb"), "xact_count") >= 30);
    let t = rows(&mut admin, "SHOW TOTALS");
    assert!(num(find(&t, "name", "total_xact_count"), "value") >= 30, "{t:?}");

    // Every session is listed with its own address; the servers are the backends the sessions saw.
    let cl = rows(&mut admin, "SHOW CLIENTS");
    let ours: Vec<&HashMap<String, String>> = cl.iter().filter(|r| r["database"] == "appdb").collect();
    assert_eq!(ours.len(), 5, "{cl:?}");
    for r in &ours {
        assert_eq!((r["type"].as_str(), r["user"].as_str(), r["addr"].as_str()), ("C", "alice", "127.0.0.1"));
        assert_eq!(r["state"], "idle", "{r:?}");
        assert_eq!(num(r, "local_port"), i64::from(pgmux.port()));
        assert!(r["connect_time"].ends_with("UTC"), "{r:?}");
    }
    let sv = rows(&mut admin, "SHOW SERVERS");
    let servers: Vec<&HashMap<String, String>> = sv.iter().filter(|r| r["database"] == "appdb").collect();
    assert!(!servers.is_empty() && servers.len() <= 2, "{sv:?}");
    for r in &servers {
        assert!(pids.contains(&(num(r, "remote_pid") as i32)), "{r:?} not among {pids:?}");
        assert_eq!(r["state"], "idle");
    }
    let dbs = rows(&mut admin, "SHOW DATABASES");
    let d = find(&dbs, "name", "appdb");
    assert_eq!((num(d, "current_client_connections"), num(d, "pool_size")), (5, 2), "{d:?}");
    assert_eq!(d["paused"], "0");
    find(&dbs, "name", "pgbouncer");
    let users = rows(&mut admin, "SHOW USERS");
    assert_eq!(num(find(&users, "name", "alice"), "current_client_connections"), 5);
    let lists = rows(&mut admin, "SHOW LISTS");
    assert_eq!(num(find(&lists, "list", "used_clients"), "items"), 5);
    let cfg = rows(&mut admin, "SHOW CONFIG");
    assert_eq!(find(&cfg, "key", "default_pool_size")["value"], "2");
    let state = rows(&mut admin, "SHOW STATE");
    assert_eq!(find(&state, "key", "active")["value"], "yes");

    // A client that leaves disappears from the lists at once.
    drop(clients.pop());
    wait_until(Duration::from_secs(5), "client gone from SHOW CLIENTS", || {
        rows(&mut admin, "SHOW CLIENTS").iter().filter(|r| r["database"] == "appdb").count() == 4
    });
    pgmux.stop();
}

#[test]
fn waiting_clients_and_pins() {
    let pgmux = Pgmux::start(config().set("default_pool_size", "1"));
    let mut admin = console(&pgmux, "admin");
    let mut holder = pgmux.client("appdb", "alice");
    holder.batch_execute("CREATE TEMP TABLE pinned (x int)").unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let port = pgmux.port();
    let conn = pgmux.conn_str("appdb", "alice", "");
    with_deadline(&pgmux, Duration::from_secs(30), || {
        let mut waiter = postgres::Client::connect(&conn, postgres::NoTls).unwrap();
        let done = spawn(move || waiter.simple_query("SELECT 42").map(|_| ()).map_err(|e| e.to_string()));
        wait_until(Duration::from_secs(5), "a waiting client in SHOW POOLS", || {
            let pools = rows(&mut admin, "SHOW POOLS");
            num(find(&pools, "database", "appdb"), "cl_waiting") == 1
        });
        let pools = rows(&mut admin, "SHOW POOLS");
        let p = find(&pools, "database", "appdb");
        assert_eq!((num(p, "cl_active"), num(p, "sv_active")), (1, 1), "{p:?}");
        let pins = rows(&mut admin, "SHOW PINS");
        assert_eq!(pins.len(), 1, "{pins:?}");
        assert_eq!(pins[0]["reason"], "temporary table");
        assert_eq!(num(&pins[0], "server_pid"), i64::from(holder_pid));
        let clients = rows(&mut admin, "SHOW CLIENTS");
        let waiting = find(&clients, "state", "waiting");
        assert_eq!(num(waiting, "id"), num(&pins[0], "session_id") + 1);
        let active = find(&clients, "state", "active");
        assert_eq!(active["link"], find(&rows(&mut admin, "SHOW SERVERS"), "state", "active")["ptr"]);
        drop(holder);
        assert_eq!(done.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
        assert!(rows(&mut admin, "SHOW PINS").is_empty());
    });
    let _ = port;
    pgmux.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// access
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn access_control() {
    let pgmux = Pgmux::start(config().set("auth_type", "\"md5\""));
    // Not an admin or stats user: authenticated, then refused, as PgBouncer.
    let e = pgmux.try_client("pgbouncer", "alice", "alicepw").map(|_| ()).unwrap_err();
    assert_eq!(db_error(&e), "not allowed");
    let e = pgmux.try_client("pgbouncer", "admin", "wrong").map(|_| ()).unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code().to_string()).as_deref(), Some("28P01"), "{e:?}");
    // A stats user may SHOW but not control.
    let mut stats = pgmux.try_client("pgbouncer", "stats", "statspw").unwrap();
    let _client = pgmux.try_client("appdb", "bob", "bobpw").unwrap();
    assert_eq!(rows(&mut stats, "SHOW POOLS")[0]["user"], "bob");
    // bob is a stats user too: his console login works with his own password.
    let mut bob = pgmux.try_client("pgbouncer", "bob", "bobpw").unwrap();
    assert_eq!(find(&rows(&mut bob, "SHOW STATE"), "key", "paused")["value"], "no");
    assert_eq!(console_err(&mut stats, "PAUSE"), "admin access needed");
    assert_eq!(console_err(&mut stats, "SHOW FDS"), "admin access needed");
    assert_eq!(console_err(&mut stats, "SET query_wait_timeout = 3"), "admin access needed");
    assert_eq!(console_err(&mut stats, "SHOW nonsense"), "invalid command 'SHOW nonsense', use SHOW HELP;");

    // The OS user running pgmux gets in over the Unix socket without a password, as user pgbouncer.
    let out = psql_unix(&pgmux, "pgbouncer", "SHOW STATE");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("active|yes"));
    let out = psql_unix(&pgmux, "pgbouncer", "PAUSE otherdb");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same user over TCP has no such privilege (and no password).
    assert!(pgmux.try_client("pgbouncer", "pgbouncer", "").is_err());
    pgmux.stop();
}

fn psql_unix(pgmux: &Pgmux, user: &str, sql: &str) -> std::process::Output {
    let mut cmd = Command::new(Postgres::shared().bin("psql"));
    pgmux_tests::postgres::clear_pg_env(&mut cmd);
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &pgmux.socket_dir().display().to_string(), "-p", &pgmux.port().to_string()])
        .args(["-U", user, "-d", "pgbouncer", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd.output().expect("spawn psql")
}

// ---------------------------------------------------------------------------------------------------------------
// controls
// ---------------------------------------------------------------------------------------------------------------

/// A console connection string for `user` (trust auth in these tests).
fn console_conn(pgmux: &Pgmux, user: &str) -> String {
    pgmux.conn_str("pgbouncer", user, "")
}

fn connect(conn: &str) -> postgres::Client {
    postgres::Client::connect(conn, postgres::NoTls).unwrap_or_else(|e| panic!("connect {conn}: {e:?}"))
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// True if `rx` has nothing after `wait`: the operation it stands for is blocked.
fn still_blocked<T>(rx: &mpsc::Receiver<T>, wait: Duration) -> bool {
    matches!(rx.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout))
}

#[test]
fn pause_waits_for_servers_and_resume_releases_clients() {
    let pgmux = Pgmux::start(config().set("default_pool_size", "2"));
    let mut admin = console(&pgmux, "admin");
    let mut in_txn = pgmux.client("appdb", "alice");
    let mut other = pgmux.client("appdb", "alice");
    other.batch_execute("SELECT 1").unwrap();
    in_txn.batch_execute("BEGIN; SELECT 1").unwrap();
    let console = console_conn(&pgmux, "admin");
    let app = pgmux.conn_str("appdb", "alice", "");
    with_deadline(&pgmux, Duration::from_secs(60), || {
        // PAUSE waits until the open transaction ends.
        let c2 = console.clone();
        let pause = spawn(move || connect(&c2).simple_query("PAUSE appdb").map(|_| ()).map_err(|e| db_error(&e)));
        assert!(still_blocked(&pause, Duration::from_millis(400)), "PAUSE returned while a transaction was open");
        let dbs = rows(&mut admin, "SHOW DATABASES");
        assert_eq!(find(&dbs, "name", "appdb")["paused"], "1");
        in_txn.batch_execute("COMMIT").unwrap();
        assert_eq!(pause.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
        // Paused: every server of the database is closed, as PgBouncer does for a database restart.
        let servers = rows(&mut admin, "SHOW SERVERS");
        assert!(servers.iter().all(|r| r["database"] != "appdb"), "{servers:?}");
        // Queries and new logins wait.
        let query = spawn(move || other.simple_query("SELECT 1").map(|_| other).map_err(|e| db_error(&e)));
        let app2 = app.clone();
        let login = spawn(move || postgres::Client::connect(&app2, postgres::NoTls).map_err(|e| e.to_string()));
        assert!(still_blocked(&query, Duration::from_millis(400)), "a query ran while paused");
        assert!(still_blocked(&login, Duration::from_millis(10)), "a login completed while paused");
        wait_until(Duration::from_secs(5), "both clients waiting", || {
            num(find(&rows(&mut admin, "SHOW POOLS"), "database", "appdb"), "cl_waiting") == 2
        });
        assert_eq!(console_err(&mut admin, "RESUME otherdb"), "database otherdb is not paused");
        admin.simple_query("RESUME appdb").unwrap();
        let mut other = query.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        let mut fresh = login.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        fresh.batch_execute("SELECT 1").unwrap();
        other.batch_execute("SELECT 1").unwrap();
        assert_eq!(console_err(&mut admin, "RESUME appdb"), "database appdb is not paused");
        assert_eq!(console_err(&mut admin, "RESUME"), "pooler is not paused/suspended");
        // Global PAUSE, SHOW STATE, RESUME; SUSPEND likewise.
        admin.simple_query("PAUSE").unwrap();
        assert_eq!(find(&rows(&mut admin, "SHOW STATE"), "key", "paused")["value"], "yes");
        assert_eq!(console_err(&mut admin, "SUSPEND"), "already suspended/paused");
        admin.simple_query("RESUME").unwrap();
        admin.simple_query("SUSPEND").unwrap();
        assert_eq!(find(&rows(&mut admin, "SHOW STATE"), "key", "suspended")["value"], "yes");
        admin.simple_query("RESUME").unwrap();
        assert_eq!(find(&rows(&mut admin, "SHOW STATE"), "key", "active")["value"], "yes");
        other.batch_execute("SELECT 1").unwrap();
        assert_eq!(console_err(&mut admin, "PAUSE pgbouncer"), "cannot pause admin db: pgbouncer");
    });
    pgmux.stop();
}

#[test]
fn disable_refuses_new_clients_only() {
    let pgmux = Pgmux::start(config().remove_database("*"));
    let mut admin = console(&pgmux, "admin");
    let mut existing = pgmux.client("appdb", "alice");
    admin.simple_query("DISABLE appdb").unwrap();
    let e = pgmux.try_client("appdb", "alice", "").map(|_| ()).unwrap_err();
    assert_eq!(db_error(&e), "database does not allow connections: appdb");
    existing.batch_execute("SELECT 1").unwrap();
    pgmux.client("otherdb", "alice").batch_execute("SELECT 1").unwrap();
    assert_eq!(find(&rows(&mut admin, "SHOW DATABASES"), "name", "appdb")["disabled"], "1");
    admin.simple_query("ENABLE appdb").unwrap();
    pgmux.client("appdb", "alice").batch_execute("SELECT 1").unwrap();
    assert_eq!(console_err(&mut admin, "DISABLE nosuchdb"), "no such database: nosuchdb");
    assert_eq!(console_err(&mut admin, "DISABLE"), "a database is required");
    pgmux.stop();
}

#[test]
fn kill_client_and_kill_database() {
    let pgmux = Pgmux::start(config());
    let mut admin = console(&pgmux, "admin");
    let mut victim = connect(&format!("{} application_name=victim", pgmux.conn_str("appdb", "alice", "")));
    let mut bystander = pgmux.client("appdb", "alice");
    let mut elsewhere = pgmux.client("otherdb", "alice");
    victim.batch_execute("SELECT 1").unwrap();
    let clients = rows(&mut admin, "SHOW CLIENTS");
    let id = find(&clients, "application_name", "victim")["id"].clone();
    admin.simple_query(&format!("KILL_CLIENT {id}")).unwrap();
    let e = victim.batch_execute("SELECT 1").unwrap_err();
    assert!(e.is_closed() || db_error(&e).contains("admin forced disconnect"), "{e:?}");
    bystander.batch_execute("SELECT 1").unwrap();
    assert_eq!(console_err(&mut admin, &format!("KILL_CLIENT {id}")), "client not found");

    // KILL drops every client and server of the database and leaves it paused.
    admin.simple_query("KILL appdb").unwrap();
    let e = bystander.batch_execute("SELECT 1").unwrap_err();
    assert!(e.is_closed() || db_error(&e).contains("database removed"), "{e:?}");
    elsewhere.batch_execute("SELECT 1").unwrap();
    wait_until(Duration::from_secs(5), "appdb's servers gone", || {
        rows(&mut admin, "SHOW SERVERS").iter().all(|r| r["database"] != "appdb")
    });
    assert_eq!(find(&rows(&mut admin, "SHOW DATABASES"), "name", "appdb")["paused"], "1");
    let app = pgmux.conn_str("appdb", "alice", "");
    with_deadline(&pgmux, Duration::from_secs(30), || {
        let login = spawn(move || postgres::Client::connect(&app, postgres::NoTls).map_err(|e| e.to_string()));
        assert!(still_blocked(&login, Duration::from_millis(400)), "a login to a killed database went through");
        admin.simple_query("RESUME appdb").unwrap();
        login.recv_timeout(Duration::from_secs(10)).unwrap().unwrap().batch_execute("SELECT 1").unwrap();
    });
    assert_eq!(console_err(&mut admin, "KILL pgbouncer"), "cannot kill admin db: pgbouncer");
    pgmux.stop();
}

#[test]
fn reconnect_and_wait_close() {
    let pgmux = Pgmux::start(config().set("default_pool_size", "1"));
    let mut admin = console(&pgmux, "admin");
    let mut c = pgmux.client("appdb", "alice");
    let before = backend_pid(&mut c);
    c.batch_execute("BEGIN").unwrap();
    admin.simple_query("RECONNECT appdb").unwrap();
    let servers = rows(&mut admin, "SHOW SERVERS");
    assert_eq!(find(&servers, "remote_pid", &before.to_string())["close_needed"], "1");
    let console = console_conn(&pgmux, "admin");
    with_deadline(&pgmux, Duration::from_secs(30), || {
        let wait =
            spawn(move || connect(&console).simple_query("WAIT_CLOSE appdb").map(|_| ()).map_err(|e| db_error(&e)));
        assert!(still_blocked(&wait, Duration::from_millis(400)), "WAIT_CLOSE returned while the server was in use");
        assert_eq!(backend_pid(&mut c), before, "the transaction keeps its server");
        c.batch_execute("COMMIT").unwrap();
        assert_eq!(wait.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
    });
    assert_ne!(backend_pid(&mut c), before, "a new server after RECONNECT");
    admin.simple_query("WAIT_CLOSE").unwrap();
    assert_eq!(console_err(&mut admin, "RECONNECT pgbouncer"), "cannot reconnect admin db: pgbouncer");
    pgmux.stop();
}

#[test]
fn set_and_reload_reach_every_process() {
    let pgmux = Pgmux::start(config().set("default_pool_size", "1"));
    let mut admin = console(&pgmux, "admin");
    // SET reaches the workers: a client waiting behind a busy server now times out after a second.
    admin.simple_query("SET query_wait_timeout = 1").unwrap();
    assert_eq!(find(&rows(&mut admin, "SHOW CONFIG"), "key", "query_wait_timeout")["value"], "1");
    let mut holder = pgmux.client("appdb", "alice");
    holder.batch_execute("CREATE TEMP TABLE t (x int)").unwrap();
    let mut waiter = pgmux.client("appdb", "alice");
    let started = Instant::now();
    let e = waiter.batch_execute("SELECT 1").unwrap_err();
    assert!(db_error(&e).contains("query_wait_timeout") || e.is_closed(), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    drop(holder);
    for (sql, want) in [
        ("SET listen_port = 1", "SET failed: listen_port cannot be changed while pgmux runs"),
        ("SET nonsense = 1", "SET failed: unknown parameter nonsense"),
        ("SET max_client_conn = 'many'", "SET failed: max_client_conn: \"many\" is not an integer"),
    ] {
        assert_eq!(console_err(&mut admin, sql), want);
    }

    // RELOAD reads the file again; changed settings reach the listeners (alice becomes a stats user).
    assert_eq!(db_error(&pgmux.try_client("pgbouncer", "alice", "").map(|_| ()).unwrap_err()), "not allowed");
    let path = pgmux.socket_dir().join("pooler.toml");
    let text = pgmux.config().clone().set("stats_users", "\"stats, alice\"").to_toml();
    std::fs::write(&path, &text).unwrap();
    admin.simple_query("RELOAD").unwrap();
    assert_eq!(find(&rows(&mut admin, "SHOW CONFIG"), "key", "stats_users")["value"], "stats,alice");
    let mut alice = pgmux.try_client("pgbouncer", "alice", "").unwrap();
    assert_eq!(console_err(&mut alice, "RELOAD"), "admin access needed");
    // A broken file changes nothing.
    std::fs::write(&path, "[pooler]\nlisten_port = \"x\"\n").unwrap();
    let e = admin.simple_query("RELOAD").unwrap_err();
    assert_eq!(db_error(&e), "RELOAD failed, see logs for additional details");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("F0000"));
    assert_eq!(find(&rows(&mut admin, "SHOW CONFIG"), "key", "stats_users")["value"], "stats,alice");
    std::fs::write(&path, &text).unwrap();
    pgmux.stop();
}

#[test]
fn shutdown_wait_for_clients() {
    let pgmux = Pgmux::start(config());
    let mut admin = console(&pgmux, "admin");
    let mut c = pgmux.client("appdb", "alice");
    // Answered, then the console ends with the listeners (SIGTERM's shutdown).
    admin.simple_query("SHUTDOWN WAIT_FOR_CLIENTS").unwrap();
    // New connections are refused; existing clients go on until they leave.
    wait_until(Duration::from_secs(5), "TCP refused", || TcpStream::connect(("127.0.0.1", pgmux.port())).is_err());
    c.batch_execute("SELECT 1").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!exited(pgmux.pid()), "pgmux exited with a client connected");
    c.batch_execute("SELECT 1").unwrap();
    drop(c);
    wait_until(Duration::from_secs(10), "pgmux exits once the last client left", || exited(pgmux.pid()));
    pgmux.stop();
}

#[test]
fn shutdown_wait_for_servers_and_immediate() {
    let pgmux = Pgmux::start(config());
    let mut admin = console(&pgmux, "admin");
    let mut c = pgmux.client("appdb", "alice");
    c.batch_execute("BEGIN; SELECT 1").unwrap();
    admin.simple_query("SHUTDOWN WAIT_FOR_SERVERS").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!exited(pgmux.pid()), "pgmux exited while a transaction was open");
    c.batch_execute("COMMIT").unwrap();
    wait_until(Duration::from_secs(10), "pgmux exits once the server is released", || exited(pgmux.pid()));
    pgmux.stop();

    // SHUTDOWN without a mode: no answer, the console connection ends with pgmux.
    let pgmux = Pgmux::start(config());
    let mut admin = console(&pgmux, "admin");
    let e = admin.simple_query("SHUTDOWN").unwrap_err();
    assert!(e.is_closed() || e.as_db_error().is_some_and(|d| d.code().code() == "57P01"), "{e:?}");
    wait_until(Duration::from_secs(10), "pgmux exits", || exited(pgmux.pid()));
    pgmux.stop();
}
