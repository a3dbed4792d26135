//! Tests for pgbouncer.ini: the reader (sections, comments, quoting, includes, repeats), the mapping onto
//! [`Config`] (the same as pooler.toml's), warnings for keys without effect, and every error with its line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{AuthType, Config, ConfigError, Format, PoolMode};

const MAIN: &str = "/etc/pgbouncer/pgbouncer.ini";

/// Parses `text` as MAIN; `files` are what `%include` finds (absolute paths).
fn parse_with(text: &str, files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let files: HashMap<PathBuf, String> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    let read = move |p: &Path| {
        files.get(p).cloned().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"))
    };
    Config::parse_ini_with(text, Path::new(MAIN), &read)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &[])
}

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// `[pgbouncer]` with `body`, plus one database.
fn pgb(body: &str) -> String {
    format!("[databases]\nx = host=h\n[pgbouncer]\n{body}\n")
}

/// The error for `text`, checked to name `file`, `line` and (if given) `key`, and to mention `message`.
fn assert_err_at(text: &str, file: &str, line: usize, key: Option<&str>, message: &str) {
    let e = parse_with(text, &[("/etc/pgbouncer/inc.ini", "[bogus]\n")]).expect_err(text);
    assert_eq!(e.file, Path::new(file), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.key.as_deref(), key, "{e}");
    assert!(e.message.contains(message), "{e:?} lacks {message:?}");
    assert!(e.to_string().starts_with(&format!("{file}: line {line}: ")), "{e}");
}

const FULL: &str = r#"
;; a PgBouncer-style file
[databases]
appdb = host=127.0.0.1 port=5432 dbname=appdb
forced = host=db.example port=6000 dbname='other db' user=svc password='it''s; #secret' pool_size=3 pool_mode=session
"weird name" = host=/run/pg
* = host=127.0.0.1

[users]
alice = pool_mode=statement max_user_connections=4

[pgbouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 6433
unix_socket_dir = /tmp
auth_type = SCRAM-SHA-256
auth_file = userlist.txt
pool_mode = Transaction
default_pool_size = 7
max_client_conn = 500
client_login_timeout = 2.5
server_connect_timeout = 3
server_login_retry = 0
query_wait_timeout = 0
idle_transaction_timeout = 30.0
server_lifetime = 16.0
server_reset_query = DISCARD ALL ; not a comment
max_packet_size = 65536
logfile = log/pgbouncer.log
pidfile = /run/pgbouncer.pid
# comment
   ; indented comment
"#;

#[test]
fn full_file_maps_onto_config() {
    let c = ok(FULL);
    assert_eq!(c.format, Format::Ini);
    let p = &c.pooler;
    assert_eq!(p.listen_addr, ["127.0.0.1", "::1"]);
    assert_eq!(p.listen_port, 6433);
    assert_eq!(p.unix_socket_dir, Some(PathBuf::from("/tmp")));
    assert_eq!(p.auth_type, AuthType::ScramSha256, "lookups are case-insensitive, as in PgBouncer");
    assert_eq!(p.auth_file, Some(PathBuf::from("/etc/pgbouncer/userlist.txt")));
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!(p.default_pool_size, 7);
    assert_eq!(p.max_client_conn, 500);
    assert_eq!(p.client_login_timeout, Duration::from_millis(2500));
    assert_eq!(p.server_connect_timeout, Duration::from_secs(3));
    assert_eq!(p.server_login_retry, Duration::ZERO);
    assert_eq!(p.query_wait_timeout, None);
    assert_eq!(p.idle_transaction_timeout, Some(Duration::from_secs(30)));
    assert_eq!(p.server_lifetime, Some(Duration::from_secs(16)));
    assert_eq!(p.server_reset_query, "DISCARD ALL ; not a comment", "; later in a line is part of the value");
    assert_eq!(p.max_packet_size, 65536);
    assert_eq!(p.logfile, Some(PathBuf::from("/etc/pgbouncer/log/pgbouncer.log")));
    assert_eq!(p.pidfile, Some(PathBuf::from("/run/pgbouncer.pid")));

    let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["*", "appdb", "forced", "weird name"]);
    let forced = c.database("forced").unwrap();
    assert_eq!((forced.host.as_str(), forced.port), ("db.example", 6000));
    assert_eq!(forced.dbname, "other db");
    assert_eq!(forced.user.as_deref(), Some("svc"));
    assert_eq!(forced.password.as_deref(), Some("it's; #secret"));
    assert_eq!(forced.pool_size, 3);
    assert_eq!(forced.pool_mode, PoolMode::Session);
    let app = c.database("appdb").unwrap();
    assert_eq!((app.pool_size, app.pool_mode), (7, PoolMode::Transaction), "defaults from [pgbouncer]");
    assert_eq!(c.database("weird name").unwrap().host, "/run/pg");
    let other = c.database("sales").unwrap();
    assert_eq!(other.name, "*");
    assert_eq!(c.upstream_dbname(other, "sales"), "sales");

    let alice = c.user("alice").unwrap();
    assert_eq!(alice.pool_mode, Some(PoolMode::Statement));
    assert_eq!(alice.max_user_connections, 4);
    assert!(c.user("bob").is_none());
}

#[test]
fn ini_and_toml_give_the_same_config() {
    let ini = ok(FULL);
    let toml = Config::parse(
        r#"
[pooler]
listen_addr = "127.0.0.1, ::1"
listen_port = 6433
unix_socket_dir = "/tmp"
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
pool_mode = "transaction"
default_pool_size = 7
max_client_conn = 500
client_login_timeout = 2.5
server_connect_timeout = 3
server_login_retry = 0
query_wait_timeout = 0
idle_transaction_timeout = 30.0
server_lifetime = 16
server_reset_query = "DISCARD ALL ; not a comment"
max_packet_size = 65536
logfile = "log/pgbouncer.log"
pidfile = "/run/pgbouncer.pid"
[databases.appdb]
host = "127.0.0.1"
port = 5432
dbname = "appdb"
[databases.forced]
host = "db.example"
port = 6000
dbname = "other db"
user = "svc"
password = "it's; #secret"
pool_size = 3
pool_mode = "session"
[databases."weird name"]
host = "/run/pg"
[databases."*"]
host = "127.0.0.1"
[users.alice]
pool_mode = "statement"
max_user_connections = 4
"#,
        Path::new("/etc/pgbouncer/pooler.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ini.pooler, toml.pooler);
    assert_eq!(ini.users, toml.users);
    assert_eq!(ini.databases.len(), toml.databases.len());
    for (a, b) in ini.databases.iter().zip(&toml.databases) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

#[test]
fn crlf_blank_lines_and_spacing() {
    let c = ok("\r\n[databases]\r\n  x=host=h\r\n\r\n[pgbouncer]\r\n\tlisten_port\t=\t7000 \r\n");
    assert_eq!(c.pooler.listen_port, 7000);
    assert_eq!(c.databases[0].host, "h");
    // An empty connection string: every default (Unix socket in unix_socket_dir, same name upstream).
    let c = ok("[databases]\nfoodb =\n[pgbouncer]\n");
    assert_eq!((c.databases[0].host.as_str(), c.databases[0].dbname.as_str()), ("/tmp", "foodb"));
}

#[test]
fn repeated_keys_and_sections_keep_the_later_value() {
    let c = ok("[pgbouncer]\nlisten_port = 1\nmax_client_conn = 5\n\
                [databases]\nx = host=a\n\
                [pgbouncer]\nlisten_port = 2\n\
                [databases]\nx = host=b port=7\ny = host=c\n\
                [pgbouncer]\nlisten_port = 3\n");
    assert_eq!(c.pooler.listen_port, 3);
    assert_eq!(c.pooler.max_client_conn, 5, "keys of an earlier [pgbouncer] are kept");
    let x = c.database("x").unwrap();
    assert_eq!((x.host.as_str(), x.port), ("b", 7), "a database defined twice: the later string, whole");
    assert!(c.database("y").is_some());
    // PgBouncer would reset max_client_conn at the second [pgbouncer]: say so.
    let repeats: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(repeats.len(), 2, "{repeats:?}");
    assert!(repeats[0].starts_with(&format!("{MAIN}: line 6: [pgbouncer] appears again (first at {MAIN}:1)")));
    assert!(repeats[0].contains("PgBouncer resets them to their defaults"), "{}", repeats[0]);
}

#[test]
fn includes_are_relative_to_the_including_file_and_share_the_section() {
    let main = "[pgbouncer]\nlisten_port = 1\n%include conf.d/pool.ini\nmax_client_conn = 9\n\
                %include /abs/dbs.ini\n";
    let files = [
        // Continues [pgbouncer]; its own include is relative to conf.d/.
        ("/etc/pgbouncer/conf.d/pool.ini", "listen_port = 2\nauth_file = users.txt\n%include more.ini\n"),
        ("/etc/pgbouncer/conf.d/more.ini", "; nothing but\ndefault_pool_size = 3\n"),
        // Opens [databases]; the including file continues there afterwards.
        ("/abs/dbs.ini", "[databases]\nx = host=h\n"),
    ];
    let c = parse_with(&format!("{main}y = host=g\n"), &files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pooler.listen_port, 2);
    assert_eq!(c.pooler.max_client_conn, 9);
    assert_eq!(c.pooler.default_pool_size, 3);
    assert_eq!(c.pooler.auth_file, Some(PathBuf::from("/etc/pgbouncer/conf.d/users.txt")), "relative to its file");
    assert!(c.database("x").is_some() && c.database("y").is_some());

    // "%includes" is not the directive; the line is a syntax error.
    assert_err_at("[pgbouncer]\n%includes x\n", MAIN, 2, None, "expected `key = value`");
}

#[test]
fn include_errors_name_the_including_line() {
    assert_err_at(
        "[pgbouncer]\n\n%include missing.ini\n",
        MAIN,
        3,
        None,
        "%include /etc/pgbouncer/missing.ini: cannot read",
    );
    assert_err_at("[pgbouncer]\n%include\n", MAIN, 2, None, "%include without a file name");
    // The included file's own errors name it.
    assert_err_at("[pgbouncer]\n%include inc.ini\n", "/etc/pgbouncer/inc.ini", 1, None, "unknown section [bogus]");
    // A file including itself stops at the nesting limit.
    let e = parse_with("[pgbouncer]\n%include /loop.ini\n", &[("/loop.ini", "\n%include /loop.ini\n")]).unwrap_err();
    assert_eq!((e.file.as_path(), e.line), (Path::new("/loop.ini"), Some(2)), "{e}");
    assert!(e.message.contains("nested more than 10 deep"), "{e}");
}

#[test]
fn syntax_errors_carry_file_and_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("[pgbouncer]\nlisten_port 6432\n", 2, "expected `key = value`, `[section]`, `%include FILE` or a comment"),
        ("[pgbouncer]\n= 5\n", 2, "missing key before ="),
        ("[pgbouncer\n", 1, "section header [pgbouncer lacks its closing ]"),
        ("[pgbouncer] x\n", 1, "unexpected text \"x\" after [pgbouncer]"),
        ("\n[Pgbouncer]\n", 2, "unknown section [Pgbouncer] (expected pgbouncer, databases, users or peers)"),
        ("listen_port = 1\n[pgbouncer]\n", 1, "listen_port = ...: a setting before any [section]"),
        ("[databases]\n\"unterminated = host=h\n", 2, "lacks its closing double quote"),
        ("[databases]\nx y = host=h\n", 2, "expected `key = value`"),
    ];
    for (text, line, message) in cases {
        assert_err_at(text, MAIN, *line, None, message);
    }
    // A header may be followed by a comment.
    ok("[pgbouncer] ; main\n[databases] # routes\nx = host=h\n");
}

#[test]
fn value_errors_name_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("listen_port = 70000", "pgbouncer.listen_port", "invalid value 70000 (expected an integer from 1 to 65535)"),
        ("listen_port = 64xx", "pgbouncer.listen_port", "invalid value \"64xx\""),
        ("listen_port =", "pgbouncer.listen_port", "invalid value \"\""),
        ("pool_mode = sesion", "pgbouncer.pool_mode", "invalid value \"sesion\""),
        ("auth_type = pam", "pgbouncer.auth_type", "a PgBouncer method pgmux does not support"),
        ("client_login_timeout = soon", "pgbouncer.client_login_timeout", "expected a number of seconds"),
        ("query_wait_timeout = -1", "pgbouncer.query_wait_timeout", "invalid value -1"),
        ("server_lifetime = inf", "pgbouncer.server_lifetime", "invalid value \"inf\""),
        ("so_reuseport = maybe", "pgbouncer.so_reuseport", "invalid value \"maybe\" (expected 1 or 0, on or off)"),
        ("tcp_keepalive = sometimes", "pgbouncer.tcp_keepalive", "expected 1 or 0"),
        ("client_tls_sslmode = always", "pgbouncer.client_tls_sslmode", "expected one of: disable, allow"),
        ("pkt_buf = big", "pgbouncer.pkt_buf", "invalid value \"big\""),
        ("admin_users = a,,b", "pgbouncer.admin_users", "empty name in list"),
        ("unix_socket_dir = @pgmux", "pgbouncer.unix_socket_dir", "abstract-namespace"),
        (
            "auth_typ = md5",
            "pgbouncer.auth_typ",
            "unknown key (not a PgBouncer 1.25 setting nor one of pgmux's own); did you mean auth_type?",
        ),
    ];
    for (line, key, message) in cases {
        // [databases] takes lines 1-2, [pgbouncer] line 3: the key is on line 4.
        assert_err_at(&pgb(line), MAIN, 4, Some(key), message);
    }
}

#[test]
fn connection_string_errors_name_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("x = host=h port", "databases.x", "expected key=value, found \"port\" without ="),
        ("x = dbname='open", "databases.x", "dbname: single-quoted value lacks its closing quote"),
        ("x = dbname=", "databases.x", "dbname: empty value"),
        ("x = host=h bogus=1", "databases.x.bogus", "unknown key (expected one of: host, port, dbname"),
        ("x = hots=h", "databases.x.hots", "did you mean host?"),
        ("x = port=0", "databases.x.port", "invalid value 0 (expected an integer from 1 to 65535)"),
        ("x = port=5432x", "databases.x.port", "invalid value \"5432x\""),
        ("x = host=a,b", "databases.x.host", "host lists are not supported"),
        ("x = host=@abstract", "databases.x.host", "abstract-namespace sockets are not supported"),
        ("x = pool_mode=txn", "databases.x.pool_mode", "invalid value \"txn\""),
        ("x = pool_size=-1", "databases.x.pool_size", "invalid value -1"),
        ("x = load_balance_hosts=random", "databases.x.load_balance_hosts", "expected one of: round-robin, disable"),
        ("pgbouncer = host=h", "databases.pgbouncer", "reserved for the admin console"),
    ];
    for (line, key, message) in cases {
        assert_err_at(&format!("[pgbouncer]\n[databases]\n\n{line}\n"), MAIN, 4, Some(key), message);
    }
    let users: &[(&str, &str, &str)] = &[
        ("alice = pool_mode=bad", "users.alice.pool_mode", "invalid value \"bad\""),
        ("alice = max_user_connections=x", "users.alice.max_user_connections", "invalid value \"x\""),
        ("alice = pool_size=1 host=h", "users.alice.host", "unknown key (expected one of: pool_mode, pool_size"),
        ("alice = pool_mode", "users.alice", "without ="),
    ];
    for (line, key, message) in users {
        assert_err_at(&format!("[pgbouncer]\n[databases]\nx=\n[users]\n{line}\n"), MAIN, 5, Some(key), message);
    }
    assert_err_at("[pgbouncer]\n[databases]\nx=\n[peers]\n1 = port=6432\n", MAIN, 5, Some("peers.1.host"), "no host");
    assert_err_at(
        "[pgbouncer]\n[databases]\nx=\n[peers]\n1 = host=h sslmode=x\n",
        MAIN,
        5,
        Some("peers.1.sslmode"),
        "unknown key",
    );
}

#[test]
fn file_level_errors() {
    let e = parse("[databases]\nx = host=h\n").unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (None, None));
    assert_eq!(e.to_string(), format!("{MAIN}: no [pgbouncer] section (PgBouncer requires one too)"));
    // PgBouncer starts without databases (only its console answers), so pgmux does too, saying what it means.
    let c = ok("[pgbouncer]\nlisten_port = 6432\n[databases]\n");
    assert!(c.databases.is_empty());
    assert_eq!(
        c.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        [format!(
            "{MAIN}: databases: no database configured: every client will be refused (add NAME = host=... or \
             * = host=... under [databases])"
        )]
    );
    let e = Config::load(Path::new("/nonexistent/pgmux/pgbouncer.ini")).unwrap_err();
    assert!(e.message.starts_with("cannot read file:"), "{e}");
}

#[test]
fn keys_without_effect_are_reported_once_each_with_their_line() {
    let c = ok(&pgb("cancel_wait_timeout = 2\n\
                     tcp_keepalive = 1\n\
                     so_reuseport = 0\n\
                     client_tls_sslmode = disable\n\
                     server_tls_sslmode = prefer\n\
                     admin_users =\n\
                     stats_users = monitor\n\
                     server_fast_close = 0\n\
                     listen_port = 6432"));
    let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{MAIN}: line 4: pgbouncer.cancel_wait_timeout: has no effect in pgmux yet (accepted, not acted on)"
            ),
            format!(
                "{MAIN}: line 5: pgbouncer.tcp_keepalive: has no effect in pgmux: pgmux leaves this socket option at \
                 the operating system's default"
            ),
            format!(
                "{MAIN}: line 8: pgbouncer.server_tls_sslmode: has no effect in pgmux: pgmux does not speak TLS \
                 (it answers SSLRequest with N and connects to PostgreSQL without TLS)"
            ),
        ],
        "so_reuseport = 0, sslmode = disable, empty lists and zero timeouts are what pgmux does anyway"
    );
    // Stored keys keep their values for later work.
    assert_eq!(c.pooler.cancel_wait_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.pooler.stats_users, ["monitor"]);
    assert!(!c.pooler.server_fast_close);

    let c = ok(
        "[pgbouncer]\n[databases]\nx = host=h connect_query='SELECT 1' auth_dbname=authdb target_session_attrs=any\n\
                [users]\nalice = max_user_connections=3\n[peers]\n1 = host=/tmp/p1\n",
    );
    let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    // connect_query and every [users] key are applied: no warning for them.
    assert_eq!(lines.len(), 2, "{lines:#?}");
    // auth_dbname is applied; naming no database is worth a warning of its own.
    assert!(lines[0].starts_with(&format!("{MAIN}: line 7: peers.1.host: has no effect in pgmux: pgmux does not")));
    assert!(lines[1].contains("auth_dbname: \"authdb\" names no database"), "{lines:#?}");
}

#[test]
fn stored_settings_follow_pgbouncer() {
    let c = ok("[pgbouncer]\nreserve_pool_size = 2\nmax_db_connections = 10\nserver_check_query = <empty>\n\
                auth_user = pgb\nauth_dbname = authdb\nignore_startup_parameters = extra_float_digits, options\n\
                so_reuseport = on\nuser = postgres\nverbose = 2\nstats_period = 30\n\
                [databases]\na = host=h reserve_pool=5 max_db_connections=3 client_encoding=UTF8 \
                application_name='my app' server_lifetime=60 auth_user=other\nb = host=h\n");
    let p = &c.pooler;
    assert_eq!(p.server_check_query, Some(String::new()), "<empty> sends an empty query");
    assert_eq!(p.ignore_startup_parameters, ["extra_float_digits", "options"]);
    assert!(p.so_reuseport);
    assert_eq!(p.user.as_deref(), Some("postgres"));
    assert_eq!(p.verbose, 2);
    assert_eq!(p.stats_period, Duration::from_secs(30));
    let a = c.database("a").unwrap();
    assert_eq!((a.reserve_pool_size, a.max_db_connections), (5, 3), "reserve_pool is the old name");
    assert_eq!(a.client_encoding.as_deref(), Some("UTF8"));
    assert_eq!(a.application_name.as_deref(), Some("my app"));
    assert_eq!(a.server_lifetime, Some(Duration::from_secs(60)));
    assert_eq!(a.auth_user.as_deref(), Some("other"));
    assert_eq!(a.auth_dbname.as_deref(), Some("authdb"), "from [pgbouncer]");
    let b = c.database("b").unwrap();
    assert_eq!((b.reserve_pool_size, b.max_db_connections), (2, 10), "from [pgbouncer]");
    assert_eq!(b.auth_user.as_deref(), Some("pgb"));
    assert_eq!(b.server_lifetime, Some(Duration::from_secs(3600)));

    let c = ok("[pgbouncer]\nserver_check_query =\n[databases]\nx=\n");
    assert_eq!(c.pooler.server_check_query, None, "\"\" disables the check");
}

#[test]
fn reader_keeps_entries_with_their_origin() {
    let ini = super::parse("[pgbouncer]\nfoo = bar baz  \n[users]\n\"a\"\"b\" = x\n", Path::new(MAIN), &|_| {
        Err(std::io::Error::other("no includes here"))
    })
    .unwrap();
    let foo = ini.pgbouncer.get("foo").unwrap();
    assert_eq!((foo.value.as_str(), foo.line), ("bar baz", 2));
    assert_eq!(ini.users.get("a\"b").map(|e| e.line), Some(4));
    assert_eq!(ini.pgbouncer_at, Some((PathBuf::from(MAIN), 1)));
}
