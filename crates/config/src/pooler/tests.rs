//! Tests for `pooler.toml` parsing: values, defaults, lookups and every error kind.

use super::*;

const FULL: &str = r#"
[pooler]
listen_addr = "127.0.0.1"
listen_port = 6432
unix_socket_dir = "/tmp"
listeners = 2
auth_type = "md5"
auth_file = "userlist.txt"
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 10000
client_login_timeout = 60
server_connect_timeout = 15
server_login_retry = 15
query_wait_timeout = 120
server_reset_query = "DISCARD ALL"
max_packet_size = 2147483647
logfile = ""
pidfile = ""

[databases.appdb]
host = "127.0.0.1"
port = 5432
dbname = "appdb"
user = ""
password = ""
pool_size = 0
pool_mode = ""

[databases."*"]
host = "127.0.0.1"
port = 5432
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/pgmux/pooler.toml"))
}

/// The error for `[pooler]` body `pooler` plus a minimal database.
fn pooler_err(pooler: &str) -> ConfigError {
    let text = format!("[pooler]\n{pooler}\n[databases.x]\nhost = \"h\"\n");
    parse(&text).expect_err("should be rejected")
}

/// The error for a `[databases.x]` body.
fn db_err(body: &str) -> ConfigError {
    parse(&format!("[databases.x]\n{body}\n")).expect_err("should be rejected")
}

fn assert_err(err: &ConfigError, key: &str, message: &str) {
    assert_eq!(err.file, Path::new("/etc/pgmux/pooler.toml"));
    assert_eq!(err.key.as_deref(), Some(key), "{err}");
    assert!(err.message.contains(message), "{err:?} lacks {message:?}");
}

#[test]
fn full_example_parses() {
    let c = parse(FULL).unwrap();
    let p = &c.pooler;
    assert_eq!(c.path, Path::new("/etc/pgmux/pooler.toml"));
    assert_eq!(p.listen_addr, vec!["127.0.0.1"]);
    assert_eq!(p.listen_port, 6432);
    assert_eq!(p.unix_socket_dir, Some(PathBuf::from("/tmp")));
    assert_eq!(p.listeners, 2);
    assert_eq!(p.auth_type, AuthType::Md5);
    assert_eq!(p.auth_file, Some(PathBuf::from("/etc/pgmux/userlist.txt")));
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!(p.default_pool_size, 20);
    assert_eq!(p.max_client_conn, 10000);
    assert_eq!(p.client_login_timeout, Duration::from_secs(60));
    assert_eq!(p.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(p.server_login_retry, Duration::from_secs(15));
    assert_eq!(p.query_wait_timeout, Some(Duration::from_secs(120)));
    assert_eq!(p.server_reset_query, "DISCARD ALL");
    assert_eq!(p.max_packet_size, 2_147_483_647);
    assert_eq!(p.logfile, None);
    assert_eq!(p.pidfile, None);

    let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["*", "appdb"]);
    let app = c.database("appdb").unwrap();
    assert_eq!(app.host, "127.0.0.1");
    assert_eq!(app.port, 5432);
    assert_eq!(app.dbname, "appdb");
    assert_eq!(app.user, None);
    assert_eq!(app.password, None);
    assert_eq!(app.pool_size, 20);
    assert_eq!(app.pool_mode, PoolMode::Transaction);
    let star = c.database("*").unwrap();
    assert_eq!(star.dbname, "");
    assert_eq!(star.pool_size, 20);
}

#[test]
fn example_file_parses() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../pooler.toml.example"));
    let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pooler.pool_mode, PoolMode::Transaction);
    assert_eq!(c.pooler.auth_file, Some(path.parent().unwrap().join("userlist.txt")));
    assert!(c.database("appdb").is_some());
    assert_eq!(c.database("other").unwrap().name, "*");
}

#[test]
fn defaults_are_pgbouncers() {
    let c = parse("[databases.db]\n").unwrap();
    let p = &c.pooler;
    assert!(p.listen_addr.is_empty());
    assert_eq!(p.listen_port, 6432);
    assert_eq!(p.unix_socket_dir, Some(PathBuf::from("/tmp")));
    assert_eq!(p.listeners, 2);
    assert_eq!(p.auth_type, AuthType::Md5);
    assert_eq!(p.auth_file, None);
    assert_eq!(p.pool_mode, PoolMode::Session);
    assert_eq!(p.default_pool_size, 20);
    assert_eq!(p.max_client_conn, 100);
    assert_eq!(p.client_login_timeout, Duration::from_secs(60));
    assert_eq!(p.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(p.server_login_retry, Duration::from_secs(15));
    assert_eq!(p.query_wait_timeout, Some(Duration::from_secs(120)));
    assert_eq!(p.server_reset_query, "DISCARD ALL");
    assert_eq!(p.max_packet_size, 2_147_483_647);

    let db = &c.databases[0];
    assert_eq!(db.host, "/tmp", "no host: server socket in unix_socket_dir");
    assert_eq!(db.port, 5432);
    assert_eq!(db.dbname, "db");
    assert_eq!(db.pool_size, 20);
    assert_eq!(db.pool_mode, PoolMode::Session);
}

#[test]
fn no_host_without_socket_dir_uses_postgres_default_dir() {
    let c = parse("[pooler]\nunix_socket_dir = \"\"\n[databases.db]\n").unwrap();
    assert_eq!(c.pooler.unix_socket_dir, None);
    assert_eq!(c.databases[0].host, DEFAULT_SERVER_SOCKET_DIR);
}

#[test]
fn database_overrides_resolve() {
    let c = parse(
        "[pooler]\npool_mode = \"transaction\"\ndefault_pool_size = 7\n\
         [databases.a]\nhost = \"/run/pg\"\ndbname = \"real\"\nuser = \"u\"\npassword = \"p\"\n\
         pool_size = 3\npool_mode = \"session\"\n",
    )
    .unwrap();
    let a = &c.databases[0];
    assert_eq!(a.host, "/run/pg");
    assert_eq!(a.dbname, "real");
    assert_eq!(a.user.as_deref(), Some("u"));
    assert_eq!(a.password.as_deref(), Some("p"));
    assert_eq!(a.pool_size, 3);
    assert_eq!(a.pool_mode, PoolMode::Session);
}

#[test]
fn wildcard_fallback_lookup() {
    let c = parse(FULL).unwrap();
    let app = c.database("appdb").unwrap();
    assert_eq!(app.name, "appdb");
    assert_eq!(c.upstream_dbname(app, "appdb"), "appdb");
    let other = c.database("sales").unwrap();
    assert_eq!(other.name, "*");
    assert_eq!(c.upstream_dbname(other, "sales"), "sales");

    let only = parse("[databases.appdb]\nhost = \"h\"\n").unwrap();
    assert!(only.database("sales").is_none());

    let fixed = parse("[databases.\"*\"]\ndbname = \"shared\"\n").unwrap();
    let db = fixed.database("anything").unwrap();
    assert_eq!(fixed.upstream_dbname(db, "anything"), "shared");
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let text = "[pooler]\nauth_file = \"users.txt\"\nlogfile = \"log/pgmux.log\"\n\
                pidfile = \"/run/pgmux.pid\"\n[databases.x]\n";
    let c = Config::parse(text, Path::new("/srv/conf/pooler.toml")).unwrap();
    assert_eq!(c.pooler.auth_file, Some(PathBuf::from("/srv/conf/users.txt")));
    assert_eq!(c.pooler.logfile, Some(PathBuf::from("/srv/conf/log/pgmux.log")));
    assert_eq!(c.pooler.pidfile, Some(PathBuf::from("/run/pgmux.pid")));

    let c = Config::parse(text, Path::new("pooler.toml")).unwrap();
    assert_eq!(c.pooler.auth_file, Some(PathBuf::from("users.txt")));
    let c = Config::parse(text, Path::new("conf/pooler.toml")).unwrap();
    assert_eq!(c.pooler.auth_file, Some(PathBuf::from("conf/users.txt")));
}

#[test]
fn listen_addr_forms() {
    let addrs = |v: &str| parse(&format!("[pooler]\nlisten_addr = {v}\n[databases.x]\n")).unwrap().pooler.listen_addr;
    assert_eq!(addrs("\"*\""), ["0.0.0.0", "::"]);
    assert!(addrs("\"\"").is_empty());
    assert_eq!(addrs("\"127.0.0.1, ::1,localhost\""), ["127.0.0.1", "::1", "localhost"]);
    assert_eq!(addrs("[\"127.0.0.1\", \"::1\"]"), ["127.0.0.1", "::1"]);
    assert_eq!(addrs("\"*,0.0.0.0\""), ["0.0.0.0", "::"]);
}

#[test]
fn fractional_and_zero_timeouts() {
    let c = parse(
        "[pooler]\nserver_connect_timeout = 2.5\nquery_wait_timeout = 0\nserver_login_retry = 0\n\
         [databases.x]\n",
    )
    .unwrap();
    assert_eq!(c.pooler.server_connect_timeout, Duration::from_millis(2500));
    assert_eq!(c.pooler.query_wait_timeout, None);
    assert_eq!(c.pooler.server_login_retry, Duration::ZERO);
}

#[test]
fn enum_display_is_file_spelling() {
    for (s, t) in [
        ("trust", AuthType::Trust),
        ("plain", AuthType::Plain),
        ("md5", AuthType::Md5),
        ("scram-sha-256", AuthType::ScramSha256),
    ] {
        assert_eq!(t.to_string(), s);
        let c = parse(&format!("[pooler]\nauth_type = \"{s}\"\n[databases.x]\n")).unwrap();
        assert_eq!(c.pooler.auth_type, t);
    }
    for (s, m) in
        [("session", PoolMode::Session), ("transaction", PoolMode::Transaction), ("statement", PoolMode::Statement)]
    {
        assert_eq!(m.to_string(), s);
    }
}

#[test]
fn unknown_pooler_key() {
    let e = pooler_err("auth_typ = \"md5\"");
    assert_eq!(
        e.to_string(),
        "/etc/pgmux/pooler.toml: pooler.auth_typ: unknown key (not a PgBouncer 1.25 setting nor one of pgmux's \
         own); did you mean auth_type?"
    );
    assert_err(&pooler_err("bogus = 1"), "pooler.bogus", "unknown key (not a PgBouncer");
}

#[test]
fn unknown_database_key_and_table() {
    assert_err(&db_err("hots = \"h\""), "databases.x.hots", "unknown key (expected one of: host, port,");
    let e = parse("[databases.x]\n[pgbouncer]\nlisten_port = 1\n").unwrap_err();
    assert_err(&e, "pgbouncer", "unknown table (expected pooler, databases or users)");
    let e = parse("listen_port = 1\n[databases.x]\n").unwrap_err();
    assert_err(&e, "listen_port", "unknown table");
    let e = parse("[databases.\"*\"]\nfoo = 1\n").unwrap_err();
    assert_err(&e, "databases.\"*\".foo", "unknown key");
}

#[test]
fn bad_enum_values() {
    let e = pooler_err("pool_mode = \"sesion\"");
    assert_eq!(
        e.to_string(),
        "/etc/pgmux/pooler.toml: pooler.pool_mode: invalid value \"sesion\" \
         (expected session, transaction or statement)"
    );
    assert_err(
        &pooler_err("auth_type = \"md6\""),
        "pooler.auth_type",
        "invalid value \"md6\" (expected trust, plain, md5, scram-sha-256, hba or any)",
    );
    assert_err(
        &db_err("pool_mode = \"txn\""),
        "databases.x.pool_mode",
        "invalid value \"txn\" (expected session, transaction or statement)",
    );
}

#[test]
fn out_of_range_numbers() {
    let cases = [
        ("listen_port = 70000", "pooler.listen_port", "invalid value 70000 (expected an integer from 1 to 65535)"),
        ("listen_port = 0", "pooler.listen_port", "invalid value 0"),
        ("listeners = 0", "pooler.listeners", "invalid value 0 (expected an integer from 1 to 64)"),
        ("listeners = 65", "pooler.listeners", "invalid value 65"),
        ("default_pool_size = 10001", "pooler.default_pool_size", "from 1 to 10000"),
        ("max_client_conn = -1", "pooler.max_client_conn", "invalid value -1"),
        ("max_client_conn = 4294967296", "pooler.max_client_conn", "invalid value 4294967296"),
        ("max_packet_size = 2147483648", "pooler.max_packet_size", "from 1024 to 2147483647"),
        ("client_login_timeout = 0", "pooler.client_login_timeout", "invalid value 0"),
        ("query_wait_timeout = -5", "pooler.query_wait_timeout", "invalid value -5"),
        ("server_login_retry = nan", "pooler.server_login_retry", "invalid value NaN"),
        ("server_connect_timeout = inf", "pooler.server_connect_timeout", "invalid value inf"),
        ("query_wait_timeout = 1e300", "pooler.query_wait_timeout", "expected a number of seconds"),
    ];
    for (line, key, msg) in cases {
        assert_err(&pooler_err(line), key, msg);
    }
    assert_err(&db_err("port = 65536"), "databases.x.port", "invalid value 65536");
    assert_err(&db_err("pool_size = 10001"), "databases.x.pool_size", "from 0 to 10000");
    assert_err(&db_err("pool_size = -1"), "databases.x.pool_size", "invalid value -1");
}

#[test]
fn wrong_types() {
    assert_err(
        &pooler_err("listen_port = \"6432\""),
        "pooler.listen_port",
        "wrong type: expected an integer, found string",
    );
    assert_err(&pooler_err("auth_type = 5"), "pooler.auth_type", "expected a string, found integer");
    assert_err(&pooler_err("listen_addr = 1"), "pooler.listen_addr", "expected a string or an array of strings");
    assert_err(&pooler_err("listen_addr = [1]"), "pooler.listen_addr", "expected an array of strings");
    assert_err(
        &pooler_err("client_login_timeout = \"60s\""),
        "pooler.client_login_timeout",
        "expected a number of seconds",
    );
    assert_err(&db_err("host = 1"), "databases.x.host", "expected a string, found integer");
    let e = parse("pooler = 1\n[databases.x]\n").unwrap_err();
    assert_err(&e, "pooler", "expected a table, found integer");
    let e = parse("databases = \"x\"\n").unwrap_err();
    assert_err(&e, "databases", "expected a table, found string");
    let e = parse("[databases]\nappdb = \"host=h\"\n").unwrap_err();
    assert_err(&e, "databases.appdb", "expected a table, found string");
}

#[test]
fn bad_hosts_and_addresses() {
    assert_err(&db_err("host = \"\""), "databases.x.host", "empty host");
    assert_err(&db_err("host = \"a,b\""), "databases.x.host", "host lists are not supported");
    assert_err(&db_err("host = \"a b\""), "databases.x.host", "contains whitespace");
    assert_err(&pooler_err("listen_addr = \"a,,b\""), "pooler.listen_addr", "empty address in list");
    assert_err(&pooler_err("listen_addr = \"a\\tb\""), "pooler.listen_addr", "contains whitespace");
}

#[test]
fn no_database_is_an_error() {
    for text in ["", "[pooler]\n", "[databases]\n"] {
        let e = parse(text).unwrap_err();
        assert_err(&e, "databases", "no database configured");
    }
}

#[test]
fn toml_syntax_errors_carry_line_numbers() {
    let e = parse("[pooler]\nlisten_port = 6432\nthis is not toml\n").unwrap_err();
    assert_eq!(e.key, None);
    assert!(e.message.starts_with("line 3, column "), "{e}");
    assert!(e.to_string().starts_with("/etc/pgmux/pooler.toml: line 3, column "), "{e}");

    let e = parse("[pooler]\nlisten_port = 1\nlisten_port = 2\n[databases.x]\n").unwrap_err();
    assert!(e.message.starts_with("line 3"), "{e}");

    for garbage in ["\u{0}\u{1}\u{2}", "[[[", "=", "a = \"", "\u{feff}[x", "\r\n\r\n]"] {
        let e = parse(garbage).unwrap_err();
        assert!(e.message.contains("line "), "{garbage:?}: {e}");
    }
}

#[test]
fn load_reports_missing_file() {
    let path = Path::new("/nonexistent/pgmux/pooler.toml");
    let e = Config::load(path).unwrap_err();
    assert_eq!(e.file, path);
    assert!(e.message.starts_with("cannot read file:"), "{e}");
}

#[test]
fn line_col_handles_edges() {
    assert_eq!(line_col("", 10), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\n", 1), (1, 1));
}

#[test]
fn admin_and_stats_users() {
    let c = parse("[pooler]\nadmin_users = \"admin, ops ,admin\"\nstats_users = [\"mon\", \"a,b\"]\nstats_period = 15\n[databases.x]\nhost = \"h\"\n")
        .unwrap();
    assert_eq!(c.pooler.admin_users, vec!["admin", "ops"]);
    assert_eq!(c.pooler.stats_users, vec!["mon", "a", "b"]);
    assert_eq!(c.pooler.stats_period, Duration::from_secs(15));
    let d = parse("[pooler]\nadmin_users = \"\"\n[databases.x]\nhost = \"h\"\n").unwrap();
    assert!(d.pooler.admin_users.is_empty());
    assert_eq!(d.pooler.stats_period, Duration::from_secs(60));
    assert_err(&pooler_err("admin_users = \"a,,b\""), "pooler.admin_users", "empty name");
    assert_err(&pooler_err("stats_users = 3"), "pooler.stats_users", "wrong type");
    assert_err(&pooler_err("stats_period = 0"), "pooler.stats_period", "invalid value");
}

#[test]
fn pgbouncer_keys_work_in_toml_too() {
    let c = parse(
        "[pooler]\ntcp_keepalive = true\nso_reuseport = 0\nmin_pool_size = 3\nadmin_users = [\"a\", \"b\"]\n\
         user = \"postgres\"\nverbose = 1\n\
         [databases.x]\nconnect_query = \"SELECT 1\"\nreserve_pool = 2\n[users.alice]\npool_mode = \"statement\"\n",
    )
    .unwrap();
    assert_eq!(c.format, Format::Toml);
    assert_eq!((c.pooler.min_pool_size, c.pooler.user.as_deref(), c.pooler.verbose), (3, Some("postgres"), 1));
    assert_eq!(c.pooler.admin_users, ["a", "b"]);
    assert_eq!(c.databases[0].reserve_pool_size, 2);
    assert_eq!(c.user("alice").and_then(|u| u.pool_mode), Some(PoolMode::Statement));
    let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        lines,
        ["/etc/pgmux/pooler.toml: pooler.tcp_keepalive: has no effect in pgmux: pgmux leaves this socket option \
             at the operating system's default",]
    );
    assert_err(&pooler_err("so_reuseport = \"yes\""), "pooler.so_reuseport", "expected a boolean, found string");
    assert_err(&pooler_err("tcp_keepcnt = 1.5"), "pooler.tcp_keepcnt", "expected an integer, found float");
    let e = parse("[databases.pgbouncer]\n").unwrap_err();
    assert_err(&e, "databases.pgbouncer", "reserved for the admin console");
}

#[test]
fn relative_socket_dir_resolves_against_config_dir() {
    let c =
        Config::parse("[pooler]\nunix_socket_dir = \"run\"\n[databases.x]\n", Path::new("/srv/pooler.toml")).unwrap();
    assert_eq!(c.pooler.unix_socket_dir, Some(PathBuf::from("/srv/run")));
    assert_eq!(c.databases[0].host, "/srv/run");
}

/// A scratch directory for files a configuration names (auth_hba_file).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgmux-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn auth_type_hba_reads_its_rules_with_the_file() {
    let dir = scratch("hba");
    let toml = dir.join("pooler.toml");
    std::fs::write(dir.join("hba.conf"), "local all all peer\nhost all all 0.0.0.0/0 md5\n").unwrap();
    std::fs::write(dir.join("bad.conf"), "local all all peer\nhost all all localhost md5\n").unwrap();
    let load = |pooler: &str| Config::parse(&format!("[pooler]\n{pooler}\n[databases.x]\n"), &toml);

    // Relative to the configuration's directory, read with it.
    let c = load("auth_type = \"hba\"\nauth_hba_file = \"hba.conf\"").unwrap();
    assert_eq!(c.pooler.auth_type, AuthType::Hba);
    assert_eq!(c.pooler.auth_type.to_string(), "hba");
    assert_eq!(c.hba.as_ref().map(|h| h.rules.len()), Some(2));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let e = load("auth_type = \"hba\"").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("pooler.auth_type"));
    assert!(e.message.contains("auth_type = hba needs auth_hba_file"), "{e}");
    // A bad rules file fails the load, naming its own file and line.
    let e = load("auth_type = \"hba\"\nauth_hba_file = \"bad.conf\"").unwrap_err();
    assert_eq!((e.file.clone(), e.line), (dir.join("bad.conf"), Some(2)), "{e}");
    assert!(e.message.contains("DNS"), "{e}");
    let e = load("auth_type = \"HBA\"\nauth_hba_file = \"missing.conf\"").unwrap_err();
    assert_eq!(e.file, dir.join("missing.conf"));
    assert!(e.message.contains("cannot read file"), "{e}");

    // Not read (and said so) for another auth_type, as PgBouncer reads it only for hba.
    let c = load("auth_type = \"md5\"\nauth_hba_file = \"bad.conf\"").unwrap();
    assert!(c.hba.is_none());
    let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(lines, [format!("{}: pooler.auth_hba_file: has no effect unless auth_type = hba", toml.display())]);

    // The console's SET: switching to hba needs the rules loaded with the file; away and back is fine.
    assert!(
        matches!(c.with_setting("auth_type", "hba"), Err(crate::settings::SetError::Invalid(m)) if m.contains("reload"))
    );
    let h = load("auth_type = \"hba\"\nauth_hba_file = \"hba.conf\"").unwrap();
    let md5 = h.with_setting("auth_type", "md5").unwrap();
    assert_eq!(md5.with_setting("auth_type", "hba").unwrap().pooler.auth_type, AuthType::Hba);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn auth_type_any_needs_a_forced_user_everywhere() {
    let e = parse(
        "[pooler]\nauth_type = \"any\"\n[databases.a]\nuser = \"app\"\n[databases.b]\n[databases.\"*\"]\nhost = \"h\"\n",
    )
    .unwrap_err();
    assert_err(&e, "pooler.auth_type", "every database must log in as a fixed user; add user=... to: *, b");
    let c = parse("[pooler]\nauth_type = \"any\"\n[databases.a]\nuser = \"app\"\n[databases.\"*\"]\nuser = \"web\"\n")
        .unwrap();
    assert_eq!(c.pooler.auth_type, AuthType::Any);
    assert_eq!(c.pooler.auth_type.to_string(), "any");
    // SET auth_type = any follows the same rule.
    let plain = parse("[pooler]\n[databases.a]\n").unwrap();
    assert!(
        matches!(plain.with_setting("auth_type", "any"), Err(crate::settings::SetError::Invalid(m)) if m.contains("to: a"))
    );
    assert_eq!(
        c.with_setting("auth_type", "md5").unwrap().with_setting("auth_type", "any").unwrap().pooler.auth_type,
        AuthType::Any
    );
    // Methods pgmux lacks are refused by name.
    assert_err(&pooler_err("auth_type = \"pam\""), "pooler.auth_type", "a PgBouncer method pgmux does not support");
}

#[test]
fn auth_query_keys_are_applied() {
    let c = parse(
        "[pooler]\nauth_user = \"pgb\"\nauth_query = \"SELECT u, p FROM users WHERE u = $1\"\nauth_dbname = \"authdb\"\n\
         [databases.authdb]\n[databases.a]\nauth_user = \"own\"\nauth_dbname = \"nowhere\"\n",
    )
    .unwrap();
    let a = c.database("a").unwrap();
    assert_eq!((a.auth_user.as_deref(), a.auth_dbname.as_deref()), (Some("own"), Some("nowhere")));
    assert_eq!(a.auth_query, "SELECT u, p FROM users WHERE u = $1", "from [pooler]");
    let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    // Applied keys raise no "no effect" warning; an auth_dbname naming no database does.
    assert_eq!(
        lines,
        ["/etc/pgmux/pooler.toml: pooler.auth_dbname: \"nowhere\" names no database: lookups that need it will \
          fail (add it to the databases)"]
    );
}

#[test]
fn metrics_listen_is_host_and_port() {
    let get = |v: &str| {
        let text = format!("[pooler]\nmetrics_listen = {v:?}\n[databases.x]\nhost = \"h\"\n");
        parse(&text).map(|c| c.pooler.metrics_listen)
    };
    assert_eq!(parse("[databases.x]\nhost = \"h\"\n").unwrap().pooler.metrics_listen, None);
    assert_eq!(get("").unwrap(), None);
    assert_eq!(get("127.0.0.1:9127").unwrap().as_deref(), Some("127.0.0.1:9127"));
    assert_eq!(get("[::1]:9127").unwrap().as_deref(), Some("[::1]:9127"));
    assert_eq!(get("localhost:9127").unwrap().as_deref(), Some("localhost:9127"));
    for bad in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":9127", "::1:9127", "[::1]", "[nope]:9127", "a b:1"] {
        let e = get(bad).expect_err(bad);
        assert_err(&e, "pooler.metrics_listen", "invalid value");
    }
    // No warning: it is pgmux's own key and does what it says.
    let c = parse("[pooler]\nmetrics_listen = \"127.0.0.1:9127\"\n[databases.x]\nhost = \"h\"\n").unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
