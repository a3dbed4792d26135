//! `auth_type = hba` (rules from `auth_hba_file`, pg_hba.conf's format) and `auth_type = any`, against the real
//! binary and PostgreSQL.
//!
//! One rules file covers every method over TCP and over the Unix socket; which rule applies is chosen by user and
//! database, so each case names the line it exercises. The tests run as root, so a `peer` rule lets the PostgreSQL
//! user `root` in over the Unix socket and refuses any other name. The role `hba_scram` has its SCRAM secret in the
//! auth_file (an md5 rule turns into SCRAM for it, as in PostgreSQL); the other users have plain passwords.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use pgmux_tests::util::{startup_packet, temp_dir};
use pgmux_tests::{wait_until, Pgmux, PgmuxConfig, Postgres};

const LIMIT: Duration = Duration::from_secs(20);

/// The rules every test starts from. Line numbers matter: the cases below name them.
const RULES: &str = "\
host     all       bob        127.0.0.1/32  reject
hostssl  all       all        0.0.0.0/0     trust
host     appdb     alice      127.0.0.1/32  md5
host     otherdb   alice      127.0.0.1/32  scram-sha-256
host     postgres  alice      127.0.0.1/32  password
host     appdb     md5user    127.0.0.1/32  trust
host     appdb     scramuser  127.0.0.1/32  peer
host     otherdb   scramuser  127.0.0.1/32  cert
host     all       md5user    127.0.0.1/32  scram-sha-256
host     all       hba_scram  127.0.0.1/32  md5
local    all       root                     peer
local    appdb     alice                    md5
local    otherdb   alice                    scram-sha-256
local    postgres  alice                    password
local    appdb     bob                      trust
local    all       bob                      reject
local    all       md5user                  peer
local    all       hba_scram                md5
";

// ---------------------------------------------------------------------------------------------------------------
// fixtures and helpers
// ---------------------------------------------------------------------------------------------------------------

/// Runs `f` on a helper thread, failing (not hanging) if it takes longer than `limit`.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: no answer within {LIMIT:?} (pgmux hung?)"),
    }
}

/// The roles this binary needs besides the shared ones: root (for peer) and hba_scram (SCRAM secret). Returns
/// hba_scram's secret as PostgreSQL stores it.
fn fixture() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        let pg = Postgres::shared();
        pg.psql_admin(
            "postgres",
            "CREATE ROLE root LOGIN; SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE hba_scram LOGIN PASSWORD 'hbapw'",
        );
        pg.psql_admin("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'hba_scram'").trim().to_string()
    })
}

/// A rules file in a directory of its own; returns its path.
fn rules_file(text: &str) -> PathBuf {
    let path = temp_dir("pgmux-hba").join("hba.conf");
    std::fs::write(&path, text).expect("write hba.conf");
    path
}

fn hba_config(rules: &Path) -> PgmuxConfig {
    PgmuxConfig::new()
        .set("auth_type", "\"hba\"")
        .set("auth_hba_file", &format!("\"{}\"", rules.display()))
        .user("hba_scram", fixture())
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Tcp,
    Unix,
}

fn conn_str(p: &Pgmux, via: Via, db: &str, user: &str, password: &str) -> String {
    let host = match via {
        Via::Tcp => "127.0.0.1".to_string(),
        Via::Unix => p.socket_dir().display().to_string(),
    };
    let mut s = format!("host={host} port={} dbname={db} user={user} connect_timeout=10", p.port());
    if !password.is_empty() {
        s.push_str(&format!(" password={password}"));
    }
    s
}

/// Logs in and returns `current_user`.
fn login(p: &Pgmux, via: Via, db: &str, user: &str, password: &str) -> Result<String, (String, String)> {
    let conn = conn_str(p, via, db, user, password);
    within(&format!("login {user}@{db} via {via:?}"), move || match postgres::Client::connect(&conn, postgres::NoTls) {
        Ok(mut c) => Ok(c.query_one("SELECT current_user::text", &[]).expect("query").get::<_, String>(0)),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e:?}"));
            Err((db.code().code().to_string(), db.message().to_string()))
        }
    })
}

fn login_ok(p: &Pgmux, via: Via, db: &str, user: &str, password: &str) {
    match login(p, via, db, user, password) {
        Ok(current) => assert_eq!(current, user, "{user}@{db} via {via:?}"),
        Err(e) => panic!("{user}@{db} via {via:?} with {password:?} refused: {e:?}"),
    }
}

fn login_err(p: &Pgmux, via: Via, db: &str, user: &str, password: &str) -> (String, String) {
    match login(p, via, db, user, password) {
        Ok(_) => panic!("{user}@{db} via {via:?} logged in with {password:?}"),
        Err(e) => e,
    }
}

fn password_failed(p: &Pgmux, via: Via, db: &str, user: &str, password: &str) {
    let (code, msg) = login_err(p, via, db, user, password);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("28P01", format!("password authentication failed for user \"{user}\"").as_str()),
        "{user}@{db} via {via:?}"
    );
}

/// The first thing pgmux answers a startup packet with: `Ok(code)` of AuthenticationXXX (0 ok, 3 cleartext, 5 md5,
/// 10 SASL), or `Err((SQLSTATE, message))` of an immediate refusal.
fn first_answer(p: &Pgmux, via: Via, db: &str, user: &str) -> Result<u32, (String, String)> {
    let packet = startup_packet(user, db);
    match via {
        Via::Tcp => first_message(pgmux_tests::raw_connect(p.port()), &packet),
        Via::Unix => {
            let s = UnixStream::connect(p.socket_dir().join(format!(".s.PGSQL.{}", p.port()))).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            first_message(s, &packet)
        }
    }
}

fn first_message(mut s: impl Read + Write, packet: &[u8]) -> Result<u32, (String, String)> {
    s.write_all(packet).expect("send startup");
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("an answer");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("a whole message");
    match head[0] {
        b'R' => Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]])),
        b'E' => {
            Err((pgmux_tests::util::error_field(&body, b'C').unwrap_or_default(), pgmux_tests::error_message(&body)))
        }
        other => panic!("unexpected message {other}"),
    }
}

fn refused(p: &Pgmux, via: Via, db: &str, user: &str, message: &str) {
    let (code, msg) = login_err(p, via, db, user, "whatever");
    assert_eq!((code.as_str(), msg.as_str()), ("28000", message), "{user}@{db} via {via:?}");
    // Refused before any password is asked for.
    assert_eq!(first_answer(p, via, db, user), Err(("28000".to_string(), message.to_string())));
}

/// `pgmux --check` on a pooler.toml written from `config` (with the listen keys a started pgmux would get).
fn check(config: &PgmuxConfig) -> (bool, String) {
    let dir = temp_dir("pgmux-hba-check");
    let text = format!(
        "{}\n",
        config.to_toml().replacen("[pooler]\n", &format!("[pooler]\nunix_socket_dir = \"{}\"\n", dir.display()), 1)
    );
    let path = dir.join("pooler.toml");
    std::fs::write(&path, text).expect("write pooler.toml");
    let out = Command::new(pgmux_tests::pgmux::binary()).arg("--check").arg(&path).output().expect("run pgmux");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------------------------
// hba
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn every_method_over_tcp() {
    let p = Pgmux::start(hba_config(&rules_file(RULES)));
    let t = Via::Tcp;
    // Line 3: md5; line 4: scram-sha-256; line 5: password (PgBouncer's plain). Line 2 (hostssl trust) never
    // matches, or the wrong passwords below would get in.
    for (db, code) in [("appdb", 5), ("otherdb", 10), ("postgres", 3)] {
        assert_eq!(first_answer(&p, t, db, "alice"), Ok(code), "alice@{db}");
        login_ok(&p, t, db, "alice", "alicepw");
        password_failed(&p, t, db, "alice", "wrong");
    }
    // Line 6: trust.
    assert_eq!(first_answer(&p, t, "appdb", "md5user"), Ok(0));
    login_ok(&p, t, "appdb", "md5user", "");
    // First match wins: md5user elsewhere falls to line 9 (scram-sha-256).
    assert_eq!(first_answer(&p, t, "otherdb", "md5user"), Ok(10));
    login_ok(&p, t, "otherdb", "md5user", "md5pw");
    password_failed(&p, t, "otherdb", "md5user", "nope");
    // Line 10: md5 with a SCRAM secret is SCRAM, as in PostgreSQL.
    assert_eq!(first_answer(&p, t, "appdb", "hba_scram"), Ok(10));
    login_ok(&p, t, "appdb", "hba_scram", "hbapw");
    password_failed(&p, t, "appdb", "hba_scram", "wrong");
    // Line 1: reject, before anything else could match.
    refused(
        &p,
        t,
        "appdb",
        "bob",
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"bob\", database \"appdb\", no encryption",
    );
    // Line 7: peer over TCP fails; line 8: cert (pgmux has no TLS) fails.
    refused(&p, t, "appdb", "scramuser", "Peer authentication failed for user \"scramuser\"");
    refused(&p, t, "otherdb", "scramuser", "certificate authentication failed for user \"scramuser\"");
    // No rule: scramuser@postgres, and a user no rule names (hostssl would have matched both).
    refused(
        &p,
        t,
        "postgres",
        "scramuser",
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"scramuser\", database \"postgres\", no encryption",
    );
    refused(
        &p,
        t,
        "appdb",
        "nobody",
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"nobody\", database \"appdb\", no encryption",
    );
    let log = p.log();
    assert!(log.contains("pooler error: no pg_hba.conf entry"), "PgBouncer-style log line for refusals");
    p.stop();
}

#[test]
fn every_method_over_the_unix_socket() {
    let p = Pgmux::start(hba_config(&rules_file(RULES)));
    let u = Via::Unix;
    // Line 11: peer lets root in (the tests run as root); PostgreSQL has a role root.
    assert_eq!(first_answer(&p, u, "appdb", "root"), Ok(0));
    login_ok(&p, u, "appdb", "root", "");
    // Line 17: peer refuses any other name for the same OS user.
    refused(&p, u, "appdb", "md5user", "Peer authentication failed for user \"md5user\"");
    // Lines 12-14: md5, scram-sha-256, password.
    for (db, code) in [("appdb", 5), ("otherdb", 10), ("postgres", 3)] {
        assert_eq!(first_answer(&p, u, db, "alice"), Ok(code), "alice@{db}");
        login_ok(&p, u, db, "alice", "alicepw");
        password_failed(&p, u, db, "alice", "wrong");
    }
    // Line 15: trust; line 16: reject for bob's other databases.
    assert_eq!(first_answer(&p, u, "appdb", "bob"), Ok(0));
    login_ok(&p, u, "appdb", "bob", "");
    refused(
        &p,
        u,
        "otherdb",
        "bob",
        "pg_hba.conf rejects connection for host \"[local]\", user \"bob\", database \"otherdb\", no encryption",
    );
    // Line 18: md5 upgraded to SCRAM.
    assert_eq!(first_answer(&p, u, "otherdb", "hba_scram"), Ok(10));
    login_ok(&p, u, "otherdb", "hba_scram", "hbapw");
    // No local rule for scramuser.
    refused(
        &p,
        u,
        "appdb",
        "scramuser",
        "no pg_hba.conf entry for host \"[local]\", user \"scramuser\", database \"appdb\", no encryption",
    );
    p.stop();
}

#[test]
fn trust_rules_still_need_a_listed_user() {
    // As with auth_type = trust: with an auth_file, the user must be in it (or found by auth_query).
    let p = Pgmux::start(hba_config(&rules_file("host all all 127.0.0.1/32 trust\n")));
    login_ok(&p, Via::Tcp, "appdb", "alice", "");
    let (code, msg) = login_err(&p, Via::Tcp, "appdb", "nobody", "");
    assert_eq!((code.as_str(), msg.as_str()), ("28000", "\"trust\" authentication failed"));
    p.stop();
}

#[test]
fn reload_rereads_the_rules_and_keeps_them_when_the_file_is_bad() {
    let rules = rules_file("host all alice 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 reject\n");
    let mut p = Pgmux::start(hba_config(&rules));
    login_ok(&p, Via::Tcp, "appdb", "alice", "alicepw");
    refused(
        &p,
        Via::Tcp,
        "appdb",
        "bob",
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"bob\", database \"appdb\", no encryption",
    );
    // New rules: bob by password, alice rejected.
    std::fs::write(&rules, "host all bob 127.0.0.1/32 password\nhost all all 127.0.0.1/32 reject\n").unwrap();
    p.reload(p.config().clone());
    wait_until(Duration::from_secs(10), "bob allowed after reload", || {
        login(&p, Via::Tcp, "appdb", "bob", "bobpw").is_ok()
    });
    assert_eq!(first_answer(&p, Via::Tcp, "appdb", "bob"), Ok(3));
    refused(
        &p,
        Via::Tcp,
        "appdb",
        "alice",
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"alice\", database \"appdb\", no encryption",
    );
    // A file that does not load keeps the running rules, and the log names its file and line.
    std::fs::write(&rules, "host all all 127.0.0.1/32 trust\nhost all all localhost md5\n").unwrap();
    p.reload(p.config().clone());
    wait_until(Duration::from_secs(10), "reload error logged", || p.log().contains("localhost"));
    let log = p.log();
    let line = log.lines().find(|l| l.contains("localhost")).unwrap_or_default().to_string();
    assert!(line.contains(&format!("{}: line 2", rules.display())), "{line}");
    refused(
        &p,
        Via::Tcp,
        "appdb",
        "alice",
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"alice\", database \"appdb\", no encryption",
    );
    login_ok(&p, Via::Tcp, "appdb", "bob", "bobpw");
    p.stop();
}

#[test]
fn configuration_errors() {
    fixture();
    let rules = rules_file("host all all 127.0.0.1/32 md5\n");
    let (ok, text) = check(&hba_config(&rules));
    assert!(ok, "{text}");
    let (ok, text) = check(&PgmuxConfig::new().set("auth_type", "\"hba\""));
    assert!(!ok && text.contains("pooler.auth_type") && text.contains("needs auth_hba_file"), "{text}");
    let bad = rules_file("host all all 127.0.0.1/32 md5\nhost all +admins 0.0.0.0/0 md5\n");
    let (ok, text) = check(&hba_config(&bad));
    assert!(!ok && text.contains(&format!("{}: line 2", bad.display())) && text.contains("group"), "{text}");
    // The same file with another auth_type is not read, and --check says the key has no effect.
    let (ok, text) = check(&hba_config(&bad).set("auth_type", "\"md5\""));
    assert!(ok && text.contains("auth_hba_file: has no effect unless auth_type = hba"), "{text}");
    // any: every database, * included, needs a forced user.
    let (ok, text) = check(&PgmuxConfig::new().set("auth_type", "\"any\""));
    assert!(!ok && text.contains("add user=... to: *, appdb, otherdb"), "{text}");
}

// ---------------------------------------------------------------------------------------------------------------
// any
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn any_ignores_the_user_name() {
    let config = PgmuxConfig::new()
        .set("auth_type", "\"any\"")
        .database("appdb", &[("dbname", "\"appdb\""), ("user", "\"alice\"")])
        .database("otherdb", &[("dbname", "\"otherdb\""), ("user", "\"bob\"")])
        .database("*", &[("user", "\"alice\"")]);
    let p = Pgmux::start(config);
    for via in [Via::Tcp, Via::Unix] {
        // Nobody needs a password, or a name pgmux knows; the session is the database's forced user's.
        assert_eq!(first_answer(&p, via, "appdb", "nobody"), Ok(0));
        assert_eq!(login(&p, via, "appdb", "nobody", ""), Ok("alice".to_string()));
        assert_eq!(login(&p, via, "otherdb", "whoever", "x"), Ok("bob".to_string()));
        assert_eq!(login(&p, via, "postgres", "md5user", ""), Ok("alice".to_string()));
    }
    p.stop();
}
