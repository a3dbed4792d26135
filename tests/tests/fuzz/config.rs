//! Configuration targets: `pooler.toml` (through the toml crate and pgmux's key walker) and the PgBouncer-style
//! userlist. They are read from files the operator writes, so the bar is "a typo gives an error naming the place,
//! never a panic"; the generators mix valid files with wrongly typed, out-of-range and malformed values.

use std::path::Path;
use std::time::Duration;

use pgmux_config::{Config, PoolMode, Secret, UserList};

use crate::gen::{mutate, Rng};

const CONFIG_PATH: &str = "/etc/pgmux/pooler.toml";
const USERLIST_PATH: &str = "/etc/pgmux/userlist.txt";
const EXAMPLE: &str = include_str!("../../../pooler.toml.example");

// ---------------------------------------------------------------------------------------------------------------
// pooler.toml
// ---------------------------------------------------------------------------------------------------------------

const POOLER_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "listeners",
    "auth_type",
    "auth_file",
    "pool_mode",
    "default_pool_size",
    "max_client_conn",
    "client_login_timeout",
    "server_connect_timeout",
    "server_login_retry",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "server_lifetime",
    "server_reset_query",
    "max_packet_size",
    "logfile",
    "pidfile",
    "no_such_key",
];

const DATABASE_KEYS: &[&str] = &["host", "port", "dbname", "user", "password", "pool_size", "pool_mode", "bogus"];

/// TOML values of every type, at and around the limits pgmux checks.
const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "64",
    "65",
    "1023",
    "1024",
    "65535",
    "65536",
    "-1",
    "10000",
    "10001",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "0.0",
    "0.0005",
    "0.001",
    "1.5",
    "1e9",
    "1.000001e9",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "-0.0",
    "true",
    "\"\"",
    "\"*\"",
    "\"trust\"",
    "\"md5\"",
    "\"scram-sha-256\"",
    "\"plain\"",
    "\"session\"",
    "\"transaction\"",
    "\"statement\"",
    "\"127.0.0.1, ::1\"",
    "\" , \"",
    "\"127.0.0.1,,::1\"",
    "\"a b\"",
    "\"/tmp\"",
    "\"relative/path\"",
    "\"h1,h2\"",
    "\"\\u00e9\\t\\n\"",
    "'literal \\ string'",
    "[]",
    "[\"127.0.0.1\", \"*\"]",
    "[1, 2]",
    "[\"a\", 1]",
    "{}",
    "{ x = 1 }",
    "1979-05-27T07:32:00Z",
];

fn database_name(rng: &mut Rng) -> String {
    rng.pick(&["appdb", "\"*\"", "\"\"", "\"we\\\"ird\"", "\"é\"", "db-2", "x_y"]).to_string()
}

/// A config file with random keys and values; sometimes the repository's own example file.
fn random_toml(rng: &mut Rng) -> String {
    if rng.one_in(8) {
        return EXAMPLE.to_string();
    }
    let mut out = String::new();
    if !rng.one_in(8) {
        out.push_str("[pooler]\n");
        for _ in 0..rng.len(12) {
            out.push_str(&format!("{} = {}\n", rng.pick(POOLER_KEYS), rng.pick(VALUES)));
        }
    }
    for _ in 0..rng.len(4) {
        out.push_str(&format!("\n[databases.{}]\n", database_name(rng)));
        for _ in 0..rng.len(5) {
            out.push_str(&format!("{} = {}\n", rng.pick(DATABASE_KEYS), rng.pick(VALUES)));
        }
    }
    if rng.one_in(6) {
        out.push_str(rng.pick(&[
            "\n[other]\nx = 1\n",
            "\ndatabases = 1\n",
            "\n[pooler.listen_port]\n",
            "\n[databases]\nappdb = 5\n",
            "\ndatabases = { a = { host = \"h\" } }\n",
        ]));
    }
    out
}

/// What a valid config built by [`valid_toml`] must parse to.
struct Expected {
    listeners: u32,
    listen_port: u16,
    max_client_conn: u32,
    login_timeout: Duration,
    pool_mode: PoolMode,
    databases: Vec<(String, u32)>,
}

fn valid_toml(rng: &mut Rng) -> (String, Expected) {
    let listeners = 1 + rng.below(64) as u32;
    let listen_port = 1 + rng.below(65535) as u16;
    let max_client_conn = 1 + rng.below(100_000) as u32;
    let millis = 1 + rng.below(100_000) as u64;
    let (mode_text, pool_mode) = rng.pick(&[
        ("session", PoolMode::Session),
        ("transaction", PoolMode::Transaction),
        ("statement", PoolMode::Statement),
    ]);
    let default_pool_size = 1 + rng.below(10_000) as u32;
    let mut text = format!(
        "[pooler]\nlisteners = {listeners}\nlisten_port = {listen_port}\nmax_client_conn = {max_client_conn}\n\
         client_login_timeout = {}\npool_mode = \"{mode_text}\"\ndefault_pool_size = {default_pool_size}\n",
        millis as f64 / 1000.0
    );
    let mut databases: Vec<(String, u32)> = Vec::new();
    for i in 0..1 + rng.below(4) {
        let name = format!("db{i}_{}", rng.below(1000));
        let size = rng.below(5) as u32;
        text.push_str(&format!("\n[databases.{name}]\nhost = \"127.0.0.1\"\npool_size = {size}\n"));
        databases.push((name, if size == 0 { default_pool_size } else { size }));
    }
    databases.sort();
    let expected = Expected {
        listeners,
        listen_port,
        max_client_conn,
        login_timeout: Duration::from_secs_f64(millis as f64 / 1000.0),
        pool_mode,
        databases,
    };
    (text, expected)
}

pub fn gen_toml(rng: &mut Rng) -> Vec<u8> {
    let mut text = if rng.one_in(3) {
        let (text, want) = valid_toml(rng);
        let c = Config::parse(&text, Path::new(CONFIG_PATH)).unwrap_or_else(|e| panic!("{text}\n{e}"));
        let p = &c.pooler;
        assert_eq!(
            (p.listeners, p.listen_port, p.max_client_conn),
            (want.listeners, want.listen_port, want.max_client_conn)
        );
        assert_eq!((p.client_login_timeout, p.pool_mode), (want.login_timeout, want.pool_mode), "{text}");
        let dbs: Vec<(String, u32)> = c.databases.iter().map(|d| (d.name.clone(), d.pool_size)).collect();
        assert_eq!(dbs, want.databases, "{text}");
        text
    } else {
        random_toml(rng)
    };
    if rng.one_in(2) {
        let mut bytes = text.into_bytes();
        mutate(rng, &mut bytes, b"[databases.\"*\"]\nhost = \"/tmp\"\n");
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text.into_bytes()
}

/// The line number a message points at ("line N, column M: ..."), if it names one.
fn line_of(message: &str) -> Option<usize> {
    message.strip_prefix("line ")?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

pub fn check_toml(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    match Config::parse(&text, Path::new(CONFIG_PATH)) {
        Ok(c) => {
            let p = &c.pooler;
            assert!((1..=64).contains(&p.listeners) && p.listen_port >= 1 && p.max_client_conn >= 1);
            assert!(p.max_packet_size >= 1024 && p.max_packet_size <= i32::MAX as u32);
            assert!(!p.client_login_timeout.is_zero() && !p.server_connect_timeout.is_zero());
            for path in [&p.auth_file, &p.logfile, &p.pidfile].into_iter().flatten() {
                assert!(path.is_absolute(), "{path:?} not resolved against the config's directory");
            }
            assert!(!c.databases.is_empty());
            for w in c.databases.windows(2) {
                assert!(w[0].name < w[1].name, "databases not sorted and unique");
            }
            for d in &c.databases {
                assert!(!d.name.is_empty() && !d.host.is_empty() && d.port >= 1);
                assert!((1..=10_000).contains(&d.pool_size), "{}: pool_size {}", d.name, d.pool_size);
                assert_eq!(c.database(&d.name).map(|x| &x.name), Some(&d.name));
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with(CONFIG_PATH) && shown.len() > CONFIG_PATH.len() + 2, "{shown}");
            if let Some(line) = line_of(&e.message) {
                assert!(line >= 1 && line <= text.lines().count() + 1, "line {line} of a shorter file: {shown}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// userlist.txt
// ---------------------------------------------------------------------------------------------------------------

/// A field as the file spells it: double-quoted, inner quotes doubled.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn secret(rng: &mut Rng) -> (String, Secret) {
    match rng.below(4) {
        0 => {
            let hex: String = (0..32).map(|_| rng.pick(&['0', '9', 'a', 'f', 'A', 'F'])).collect();
            let s = format!("md5{hex}");
            (s.clone(), Secret::Md5(s.to_ascii_lowercase()))
        }
        1 => {
            let s = format!("SCRAM-SHA-256${}:c2FsdA==$c3RvcmVk+/==:c2VydmVy", 1 + rng.below(100_000));
            (s.clone(), Secret::Scram(s))
        }
        _ => {
            // The generator's alphabet cannot spell "md5" or "SCRAM", so this stays a plain password.
            let s = rng.cstr_text(16).replace(['\n', '\r'], "");
            (s.clone(), Secret::Plain(s))
        }
    }
}

pub fn gen_userlist(rng: &mut Rng) -> Vec<u8> {
    let mut text = String::new();
    let mut want: Vec<(String, Secret)> = Vec::new();
    let eol = if rng.one_in(3) { "\r\n" } else { "\n" };
    for _ in 0..rng.len(10) {
        match rng.below(6) {
            0 => text.push_str(rng.pick(&["; comment", "# comment", "", "   ", "\t; indented"])),
            _ => {
                let user = rng.cstr_text(12).replace(['\n', '\r'], "");
                let user = if user.is_empty() { "u".to_string() } else { user };
                let (spelled, kind) = secret(rng);
                let lead = if rng.one_in(4) { " \t" } else { "" };
                let tail = if rng.one_in(4) { " \"ignored\" extra" } else { "" };
                text.push_str(&format!("{lead}{} {}{tail}", quoted(&user), quoted(&spelled)));
                want.retain(|(u, _)| *u != user);
                want.push((user, kind));
            }
        }
        text.push_str(eol);
    }
    let list = UserList::parse(&text, Path::new(USERLIST_PATH)).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(list.len(), want.len(), "{text:?}");
    for (user, kind) in &want {
        assert_eq!(list.get(user), Some(kind), "user {user:?} in {text:?}");
    }
    let mut bytes = text.into_bytes();
    if !rng.one_in(4) {
        mutate(rng, &mut bytes, b"\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5\"\n");
    }
    bytes
}

pub fn check_userlist(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let whole = UserList::parse(&text, Path::new(USERLIST_PATH));
    // Lines are independent: the file is valid exactly when each line is, and holds at most one user per line.
    let mut all_ok = true;
    let mut users = 0;
    for line in text.lines() {
        match UserList::parse(line, Path::new(USERLIST_PATH)) {
            Ok(one) => users += one.len(),
            Err(_) => all_ok = false,
        }
    }
    match whole {
        Ok(list) => {
            assert!(all_ok, "the file parsed but one of its lines alone does not: {text:?}");
            assert!(list.len() <= users);
        }
        Err(e) => {
            assert!(!all_ok, "every line parses alone but the file does not: {text:?}: {e}");
            let line = line_of(&e.message).unwrap_or_else(|| panic!("error without a line number: {e}"));
            assert!(line >= 1 && line <= text.lines().count(), "{e}");
        }
    }
}
