//! Authentication, both ways.
//!
//! Client auth (client -> pgmux): every `auth_type` against every kind of auth_file secret (plain text, md5 hash,
//! SCRAM secret), through the postgres crate and psql: the right password logs in, a wrong one gets 28P01
//! "password authentication failed for user ...", a user missing from the auth_file is refused. The roles carol
//! (plain secret), dave (md5 secret) and erin (SCRAM secret) exist only in this binary's cluster, which trusts them
//! over TCP, so upstream login never interferes with what is tested.
//!
//! Upstream auth (pgmux -> PostgreSQL): md5user and scramuser, which PostgreSQL makes use md5 and SCRAM over TCP.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use pgmux_tests::util::error_field;
use pgmux_tests::{error_message, raw_connect, read_backend_message, startup_packet, Pgmux, PgmuxConfig, Postgres};

const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/// Runs `f` on a helper thread, failing (not hanging) if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{what}: no answer within {limit:?} (pgmux hung?)"),
    }
}

/// Secrets of the extra roles, made by PostgreSQL itself.
struct Secrets {
    dave_md5: String,
    erin_scram: String,
    md5user_md5: String,
    scramuser_scram: String,
}

fn secrets() -> &'static Secrets {
    static S: OnceLock<Secrets> = OnceLock::new();
    S.get_or_init(|| {
        let pg = Postgres::shared();
        pg.psql_admin(
            "postgres",
            "CREATE ROLE carol LOGIN PASSWORD 'carolpw'; \
             SET password_encryption = 'md5'; CREATE ROLE dave LOGIN PASSWORD 'davepw'; \
             SET password_encryption = 'scram-sha-256'; CREATE ROLE erin LOGIN PASSWORD 'erinpw'",
        );
        let get = |role: &str| {
            pg.psql_admin("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"))
                .trim()
                .to_string()
        };
        let s = Secrets {
            dave_md5: get("dave"),
            erin_scram: get("erin"),
            md5user_md5: get("md5user"),
            scramuser_scram: get("scramuser"),
        };
        // "md5" + md5(password + user), as the auth_file format wants.
        let expect = pg.psql_admin("postgres", "SELECT 'md5' || md5('davepw' || 'dave')");
        assert_eq!(s.dave_md5, expect.trim());
        assert!(s.erin_scram.starts_with("SCRAM-SHA-256$"), "{}", s.erin_scram);
        assert!(s.md5user_md5.starts_with("md5"), "{}", s.md5user_md5);
        assert!(s.scramuser_scram.starts_with("SCRAM-SHA-256$"));
        s
    })
}

/// A pgmux with `auth_type` and carol/dave/erin in its auth_file (plain, md5, SCRAM secrets).
fn start_with(auth_type: &str) -> Pgmux {
    let s = secrets();
    Pgmux::start(
        PgmuxConfig::new()
            .set("auth_type", &format!("\"{auth_type}\""))
            .user("carol", "carolpw")
            .user("dave", &s.dave_md5)
            .user("erin", &s.erin_scram),
    )
}

/// Logs in with the postgres crate and checks `current_user`.
fn login_ok(p: &Pgmux, user: &str, password: &str) {
    let conn = p.conn_str("appdb", user, password);
    let (user, password) = (user.to_string(), password.to_string());
    within(LIMIT, &format!("login as {user}"), move || {
        let mut c = postgres::Client::connect(&conn, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{user} with password {password:?} refused: {e:?}"));
        let row = c.query_one("SELECT current_user::text", &[]).expect("query");
        assert_eq!(row.get::<_, String>(0), user);
    });
}

/// Logs in with the postgres crate expecting a server error; returns (SQLSTATE, message).
fn login_err(p: &Pgmux, user: &str, password: &str) -> (String, String) {
    let conn = p.conn_str("appdb", user, password);
    let (user, password) = (user.to_string(), password.to_string());
    within(LIMIT, &format!("refused login as {user}"), move || {
        match postgres::Client::connect(&conn, postgres::NoTls) {
            Ok(_) => panic!("{user} logged in with password {password:?}"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{user}: not a server error: {e:?}"));
                (db.code().code().to_string(), db.message().to_string())
            }
        }
    })
}

fn assert_password_failed(p: &Pgmux, user: &str, password: &str) {
    let (code, msg) = login_err(p, user, password);
    assert_eq!(code, "28P01", "{user}/{password:?}: {msg}");
    assert_eq!(msg, format!("password authentication failed for user \"{user}\""));
}

/// psql -c through pgmux with an explicit password (never prompting).
fn psql_as(p: &Pgmux, user: &str, password: &str, sql: &str) -> Output {
    let mut cmd = Command::new(Postgres::shared().bin("psql"));
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGDATA",
        "PGCHANNELBINDING",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &p.port().to_string()])
        .args(["-U", user, "-d", "appdb", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    within(LIMIT, "psql", move || cmd.output().expect("spawn psql"))
}

fn psql_ok(p: &Pgmux, user: &str, password: &str) {
    let out = psql_as(p, user, password, "SELECT current_user");
    assert!(out.status.success(), "psql as {user}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user);
}

fn psql_password_failed(p: &Pgmux, user: &str, password: &str) {
    let out = psql_as(p, user, password, "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql as {user} with {password:?} succeeded");
    assert!(err.contains(&format!("password authentication failed for user \"{user}\"")), "psql stderr: {err}");
}

/// The code of the first AuthenticationXXX pgmux sends for `user` (0 ok, 3 cleartext, 5 md5, 10 SASL).
fn first_auth_request(p: &Pgmux, user: &str) -> u32 {
    let mut s = raw_connect(p.port());
    pgmux_tests::util::raw_send(&mut s, &startup_packet(user, "appdb"));
    match read_backend_message(&mut s) {
        Some((b'R', body)) => u32::from_be_bytes(body[..4].try_into().unwrap()),
        Some((b'E', body)) => panic!("{user}: refused at once: {}", error_message(&body)),
        other => panic!("{user}: unexpected {other:?}"),
    }
}

fn family(p: &Pgmux) -> (Vec<u32>, Vec<u32>) {
    (p.children("pgmux-listener"), p.children("pgmux-worker"))
}

// ---------------------------------------------------------------------------------------------------------------
// client auth
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn trust_needs_only_a_listed_user() {
    let p = start_with("trust");
    for user in ["carol", "dave", "erin"] {
        assert_eq!(first_auth_request(&p, user), 0, "{user}: trust sends AuthenticationOk");
        login_ok(&p, user, "");
        login_ok(&p, user, "whatever");
        psql_ok(&p, user, "");
    }
    // Not in the auth_file: refused even under trust, as PgBouncer does.
    let (code, msg) = login_err(&p, "nobody", "");
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("\"trust\" authentication failed"), "{msg}");
    let out = psql_as(&p, "nobody", "", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.stop();
}

#[test]
fn plain_checks_cleartext_against_every_secret_kind() {
    let p = start_with("plain");
    for (user, pw) in [("carol", "carolpw"), ("dave", "davepw"), ("erin", "erinpw")] {
        assert_eq!(first_auth_request(&p, user), 3, "{user}: cleartext request");
        login_ok(&p, user, pw);
        psql_ok(&p, user, pw);
        assert_password_failed(&p, user, "wrong");
        assert_password_failed(&p, user, &format!("{pw}x"));
        psql_password_failed(&p, user, "wrong");
    }
    // The secret itself is not a password.
    let s = secrets();
    assert_password_failed(&p, "dave", &s.dave_md5);
    assert_password_failed(&p, "erin", &s.erin_scram);
    // Unknown user: the same exchange and the same message as a wrong password.
    assert_eq!(first_auth_request(&p, "nobody"), 3);
    assert_password_failed(&p, "nobody", "whatever");
    psql_password_failed(&p, "nobody", "whatever");
    p.stop();
}

#[test]
fn md5_with_plain_md5_and_scram_secrets() {
    let p = start_with("md5");
    // A SCRAM secret turns md5 into SCRAM (as in PgBouncer and PostgreSQL).
    for (user, pw, method) in [("carol", "carolpw", 5), ("dave", "davepw", 5), ("erin", "erinpw", 10)] {
        assert_eq!(first_auth_request(&p, user), method, "{user}: auth request");
        login_ok(&p, user, pw);
        psql_ok(&p, user, pw);
        assert_password_failed(&p, user, "wrong");
        psql_password_failed(&p, user, "wrong");
    }
    // Knowing the md5 hash is not enough for a client that hashes it again.
    assert_password_failed(&p, "dave", &secrets().dave_md5);
    assert_eq!(first_auth_request(&p, "nobody"), 5);
    assert_password_failed(&p, "nobody", "whatever");
    psql_password_failed(&p, "nobody", "whatever");
    p.stop();
}

#[test]
fn scram_with_plain_and_scram_secrets() {
    let p = start_with("scram-sha-256");
    for (user, pw) in [("carol", "carolpw"), ("erin", "erinpw")] {
        assert_eq!(first_auth_request(&p, user), 10, "{user}: SASL request");
        login_ok(&p, user, pw);
        psql_ok(&p, user, pw);
        assert_password_failed(&p, user, "wrong");
        psql_password_failed(&p, user, "wrong");
    }
    // An md5 secret cannot serve SCRAM: even the right password fails, with the usual message.
    assert_eq!(first_auth_request(&p, "dave"), 10);
    assert_password_failed(&p, "dave", "davepw");
    assert_eq!(first_auth_request(&p, "nobody"), 10);
    assert_password_failed(&p, "nobody", "whatever");
    psql_password_failed(&p, "nobody", "whatever");
    p.stop();
}

#[test]
fn many_concurrent_scram_logins() {
    let p = start_with("scram-sha-256");
    let conns: Vec<String> = (0..8).map(|_| p.conn_str("appdb", "erin", "erinpw")).collect();
    within(LIMIT, "8 parallel SCRAM logins", move || {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|conn| {
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        let mut c = postgres::Client::connect(&conn, postgres::NoTls).unwrap();
                        c.query_one("SELECT 1", &[]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    p.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// upstream auth
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn upstream_md5_and_scram_with_plain_passwords() {
    for auth_type in ["md5", "scram-sha-256", "plain"] {
        let p = Pgmux::start(PgmuxConfig::new().set("auth_type", &format!("\"{auth_type}\"")));
        for (user, pw) in [("md5user", "md5pw"), ("scramuser", "scrampw")] {
            login_ok(&p, user, pw);
            psql_ok(&p, user, pw);
            assert_password_failed(&p, user, "wrong");
        }
        p.stop();
    }
}

#[test]
fn upstream_md5_with_an_md5_secret_in_the_auth_file() {
    let s = secrets();
    for auth_type in ["md5", "plain", "trust"] {
        let p = Pgmux::start(
            PgmuxConfig::new().set("auth_type", &format!("\"{auth_type}\"")).user("md5user", &s.md5user_md5),
        );
        login_ok(&p, "md5user", "md5pw");
        psql_ok(&p, "md5user", "md5pw");
        if auth_type != "trust" {
            assert_password_failed(&p, "md5user", "wrong");
        }
        p.stop();
    }
}

#[test]
fn wrong_upstream_password_is_a_clear_error() {
    // trust: the client needs no password; pgmux logs in upstream with the auth_file's (wrong) ones.
    let p = Pgmux::start(
        PgmuxConfig::new()
            .set("auth_type", "\"trust\"")
            .set("server_login_retry", "1")
            .user("md5user", "wrongpw")
            .user("scramuser", "wrongpw"),
    );
    login_ok(&p, "alice", "");
    let before = family(&p);
    for user in ["md5user", "scramuser"] {
        for attempt in 0..3 {
            let t = Instant::now();
            let (code, msg) = login_err(&p, user, "");
            eprintln!("{user} attempt {attempt}: {code}: {msg} ({:?})", t.elapsed());
            assert!(
                msg.contains("password authentication failed") && msg.contains(user),
                "{user}: unclear error {code}: {msg}"
            );
            assert!(code.starts_with("08") || code.starts_with("28"), "{user}: SQLSTATE {code}");
            assert!(t.elapsed() < Duration::from_secs(5), "{user}: error took {:?}", t.elapsed());
        }
        let out = psql_as(&p, user, "", "SELECT 1");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The pooler keeps running and serving others.
    let after = family(&p);
    assert_eq!(after.0, before.0, "listeners changed");
    for w in &before.1 {
        assert!(after.1.contains(w), "worker {w} died");
    }
    // Failed pools do not pile up workers beyond their pool size (4 each).
    assert!(after.1.len() <= 1 + 4 + 4, "workers: {:?}", after.1);
    login_ok(&p, "alice", "");
    login_ok(&p, "bob", "");
    p.stop();
}

/// With only a SCRAM secret in auth_file, pgmux logs in upstream with the ClientKey it learnt from the client's own
/// SCRAM login (as PgBouncer does); the password itself is never known to pgmux.
#[test]
fn scram_secret_in_auth_file_logs_in_upstream_with_the_clients_keys() {
    let s = secrets();
    let p =
        Pgmux::start(PgmuxConfig::new().set("auth_type", "\"scram-sha-256\"").user("scramuser", &s.scramuser_scram));
    let (code, _) = login_err(&p, "scramuser", "wrongpw");
    assert_eq!(code, "28P01", "a wrong password must fail at pgmux");
    login_ok(&p, "scramuser", "scrampw");
    // Again: a second worker of the pool (or a reconnect) logs in the same way.
    login_ok(&p, "scramuser", "scrampw");
    login_ok(&p, "alice", "alicepw");
    p.stop();
}

/// Without a SCRAM login from the client (here: cleartext client auth), a SCRAM secret cannot answer the server's
/// SCRAM challenge, and the error says so.
#[test]
fn scram_secret_without_a_scram_client_login_says_why() {
    let s = secrets();
    let p = Pgmux::start(PgmuxConfig::new().set("auth_type", "\"plain\"").user("scramuser", &s.scramuser_scram));
    let (code, msg) = login_err(&p, "scramuser", "scrampw");
    eprintln!("scramuser: {code}: {msg}");
    assert!(msg.contains("scramuser") && msg.contains("SCRAM"), "unclear error: {msg}");
    assert_ne!(code, "28P01", "client auth itself succeeded; the error is about the server login");
    p.stop();
}

#[test]
fn raw_md5_wrong_answer_gets_28p01_then_eof() {
    let p = start_with("md5");
    let mut s = raw_connect(p.port());
    pgmux_tests::util::raw_send(&mut s, &startup_packet("carol", "appdb"));
    let (tag, body) = read_backend_message(&mut s).expect("md5 request");
    assert_eq!((tag, &body[..4]), (b'R', &[0u8, 0, 0, 5][..]));
    pgmux_tests::util::raw_send(&mut s, &pgmux_tests::util::password_message("md50123456789abcdef0123456789abcdef"));
    let (tag, body) = read_backend_message(&mut s).expect("error");
    assert_eq!(tag, b'E');
    assert_eq!(error_field(&body, b'C').as_deref(), Some("28P01"));
    assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
    assert_eq!(error_message(&body), "password authentication failed for user \"carol\"");
    assert!(pgmux_tests::util::wait_closed(&mut s));
    p.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// auth_query
// ---------------------------------------------------------------------------------------------------------------

/// Roles only auth_query knows (none is in pgmux's auth_file): aq_md5 (md5-encrypted), aq_scram and aq_cache
/// (SCRAM), aq_null (no password), and the lookup role pgmux_auth (a superuser, so the default auth_query may read
/// pg_authid). PostgreSQL asks all of them for a password over TCP, so pgmux's upstream login with the looked-up
/// secret is exercised too.
fn auth_query_roles() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let pg = Postgres::shared();
        pg.psql_admin(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE pgmux_auth LOGIN SUPERUSER PASSWORD 'authpw'; \
             CREATE ROLE aq_scram LOGIN PASSWORD 'aqscrampw'; CREATE ROLE aq_cache LOGIN PASSWORD 'oldpw'; \
             CREATE ROLE aq_null LOGIN; \
             SET password_encryption = 'md5'; CREATE ROLE aq_md5 LOGIN PASSWORD 'aqmd5pw'",
        );
        pg.prepend_hba("host all pgmux_auth,aq_md5,aq_scram,aq_cache,aq_null 127.0.0.1/32 md5");
        // A reload takes effect asynchronously: wait until PostgreSQL wants aq_md5's password.
        let conn = format!("host=127.0.0.1 port={} dbname=postgres user=aq_md5 connect_timeout=5", pg.port());
        pgmux_tests::wait_until(Duration::from_secs(10), "pg_hba.conf reloaded", || {
            postgres::Client::connect(&conn, postgres::NoTls).is_err()
        });
    });
}

/// pgmux with `auth_type`, auth_query logged in as pgmux_auth (its password in the auth_file).
fn aq_config(auth_type: &str) -> PgmuxConfig {
    auth_query_roles();
    PgmuxConfig::new()
        .set("auth_type", &format!("\"{auth_type}\""))
        .set("auth_user", "\"pgmux_auth\"")
        .user("pgmux_auth", "authpw")
}

/// An md5 login on a raw socket (for user names a connection string cannot carry): ("", "") once authenticated,
/// else the error's (SQLSTATE, message).
fn raw_md5_login(p: &Pgmux, user: &str, password: &str) -> (String, String) {
    let mut s = raw_connect(p.port());
    pgmux_tests::util::raw_send(&mut s, &startup_packet(user, "appdb"));
    let (tag, body) = read_backend_message(&mut s).expect("auth request");
    assert_eq!((tag, &body[..4]), (b'R', &[0u8, 0, 0, 5][..]), "{user}: md5 request");
    let salt: [u8; 4] = body[4..8].try_into().unwrap();
    let hash = pgmux_proto::auth::md5_password_hash(user, password);
    let answer = pgmux_proto::auth::md5_salted_response(&hash, salt);
    pgmux_tests::util::raw_send(&mut s, &pgmux_tests::util::password_message(&answer));
    match read_backend_message(&mut s) {
        Some((b'R', body)) if body[..4] == [0, 0, 0, 0] => (String::new(), String::new()),
        Some((b'E', body)) => (error_field(&body, b'C').unwrap_or_default(), error_message(&body)),
        other => panic!("{user}: unexpected {other:?}"),
    }
}

#[test]
fn auth_query_md5_and_scram_secrets() {
    let p = Pgmux::start(aq_config("md5"));
    // An md5 secret: md5 with the client, md5 upstream with the same hash.
    assert_eq!(first_auth_request(&p, "aq_md5"), 5);
    login_ok(&p, "aq_md5", "aqmd5pw");
    psql_ok(&p, "aq_md5", "aqmd5pw");
    assert_password_failed(&p, "aq_md5", "wrong");
    // A SCRAM secret: SCRAM with the client, and upstream with the keys of the client's own login.
    assert_eq!(first_auth_request(&p, "aq_scram"), 10);
    login_ok(&p, "aq_scram", "aqscrampw");
    psql_ok(&p, "aq_scram", "aqscrampw");
    assert_password_failed(&p, "aq_scram", "wrong");
    // auth_file users are never looked up.
    login_ok(&p, "alice", "alicepw");
    assert!(p.log().contains("auth_query found a secret for appdb/aq_md5"), "lookups are logged");
    assert!(!p.log().lines().any(|l| l.contains("auth_query") && l.contains("appdb/alice")), "alice was not looked up");
    p.stop();

    let p = Pgmux::start(aq_config("scram-sha-256"));
    login_ok(&p, "aq_scram", "aqscrampw");
    // An md5 secret cannot serve SCRAM: the usual failure.
    assert_password_failed(&p, "aq_md5", "aqmd5pw");
    p.stop();

    let p = Pgmux::start(aq_config("plain"));
    assert_eq!(first_auth_request(&p, "aq_md5"), 3);
    login_ok(&p, "aq_md5", "aqmd5pw");
    assert_password_failed(&p, "aq_md5", "wrong");
    p.stop();
}

#[test]
fn auth_query_no_secret_fails_like_a_wrong_password() {
    let p = Pgmux::start(aq_config("md5"));
    // NULL password, no such role, a name built to break out of a quoted literal: the same exchange, the same
    // failure, whatever the password.
    for user in ["aq_null", "aq_nobody"] {
        assert_eq!(first_auth_request(&p, user), 5, "{user}");
        assert_password_failed(&p, user, "whatever");
        assert_eq!(
            raw_md5_login(&p, user, ""),
            ("28P01".to_string(), format!("password authentication failed for user \"{user}\"")),
            "{user}: empty password"
        );
    }
    // The name travels as a parameter: quoting cannot turn it into aq_md5's row.
    let evil = "x' OR rolname = 'aq_md5";
    assert_eq!(
        raw_md5_login(&p, evil, "aqmd5pw"),
        ("28P01".to_string(), format!("password authentication failed for user \"{evil}\""))
    );
    assert_eq!(
        raw_md5_login(&p, "aq_md5", "aqmd5pw"),
        ("".to_string(), "".to_string()),
        "the same exchange works for aq_md5"
    );
    psql_password_failed(&p, "aq_null", "whatever");
    p.stop();
    // trust: a user auth_query finds is in without a password; one it does not find is not.
    let p = Pgmux::start(aq_config("trust"));
    login_ok(&p, "aq_md5", "");
    for user in ["aq_null", "aq_nobody"] {
        let (code, msg) = login_err(&p, user, "");
        assert_eq!((code.as_str(), msg.as_str()), ("28000", "\"trust\" authentication failed"), "{user}");
    }
    p.stop();
}

#[test]
fn auth_query_per_database_and_auth_file_first() {
    auth_query_roles();
    // Only appdb looks users up (its own auth_user, and its lookups run in the database entry "lookupdb"); bob's
    // auth_file entry wins over what auth_query would say.
    let config = PgmuxConfig::new()
        .set("auth_type", "\"md5\"")
        .database("appdb", &[("dbname", "\"appdb\""), ("auth_user", "\"pgmux_auth\""), ("auth_dbname", "\"lookupdb\"")])
        .database("lookupdb", &[("dbname", "\"postgres\"")])
        .user("pgmux_auth", "authpw")
        .user("bob", "filepw");
    let p = Pgmux::start(config);
    login_ok(&p, "aq_md5", "aqmd5pw");
    let conn = p.conn_str("otherdb", "aq_md5", "aqmd5pw");
    let err = within(LIMIT, "otherdb login", move || postgres::Client::connect(&conn, postgres::NoTls).err());
    let code = err.and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(code.as_deref(), Some("28P01"), "otherdb has no auth_user: aq_md5 is unknown there");
    // bob: PostgreSQL trusts bob and would give auth_query bob's real hash (of bobpw); the auth_file says filepw.
    login_ok(&p, "bob", "filepw");
    assert_password_failed(&p, "bob", "bobpw");
    p.stop();
}

#[test]
fn auth_query_cache_keeps_an_old_password_until_it_expires() {
    // One listener (each has its own cache), one worker (its upstream stays logged in), and a 3 s cache (the test
    // knob; the default is 60 s).
    let config = aq_config("md5").set("listeners", "1").set("default_pool_size", "1");
    let p = Pgmux::start_with_env(config, &[("PGMUX_TEST_AUTH_CACHE_TTL_MS", "3000")]);
    login_ok(&p, "aq_cache", "oldpw");
    let pg = Postgres::shared();
    pg.psql_admin("postgres", "SET password_encryption = 'scram-sha-256'; ALTER ROLE aq_cache PASSWORD 'newpw'");
    let changed = Instant::now();
    // Cached: the old password still works, the new one does not yet.
    login_ok(&p, "aq_cache", "oldpw");
    assert_password_failed(&p, "aq_cache", "newpw");
    assert!(changed.elapsed() < Duration::from_secs(2), "the checks above must run inside the cache lifetime");
    // Expired: looked up again.
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(changed.elapsed()));
    login_ok(&p, "aq_cache", "newpw");
    assert_password_failed(&p, "aq_cache", "oldpw");
    p.stop();
    pg.psql_admin("postgres", "ALTER ROLE aq_cache PASSWORD 'oldpw'");
}

#[test]
fn auth_query_failures_are_clear() {
    // auth_user's password is wrong: the lookup fails, the client is told so (not "wrong password"), the log
    // says why; auth_file users are unaffected.
    let down_port = pgmux_tests::free_port().to_string();
    let config = aq_config("md5")
        .user("pgmux_auth", "wrongpw")
        .database("downdb", &[("dbname", "\"appdb\""), ("port", &down_port)]);
    let p = Pgmux::start(config);
    for (db, why) in
        [("appdb", "password authentication failed for user \"pgmux_auth\""), ("downdb", "could not connect")]
    {
        let conn = p.conn_str(db, "aq_md5", "aqmd5pw");
        let t = Instant::now();
        let e = within(LIMIT, "failing lookup", move || postgres::Client::connect(&conn, postgres::NoTls).err());
        let db_err = e.as_ref().and_then(|e| e.as_db_error()).unwrap_or_else(|| panic!("{db}: {e:?}"));
        assert_eq!(db_err.code().code(), "08006", "{db}: {}", db_err.message());
        assert_eq!(
            db_err.message(),
            "could not look up user \"aq_md5\": auth_query failed (the pooler's log says why)"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{db}: took {:?}", t.elapsed());
        let log = p.log();
        assert!(
            log.lines().any(|l| l.contains(&format!("auth_query for {db}/aq_md5 failed")) && l.contains(why)),
            "{db}: log lacks the reason ({why})"
        );
    }
    login_ok(&p, "alice", "alicepw");
    p.stop();
}

#[test]
fn auth_query_slow_lookup_blocks_nobody_else() {
    // slowdb's "PostgreSQL" accepts connections and never answers: its lookups take server_connect_timeout (2 s).
    // Meanwhile the same listener logs in auth_file users and runs other lookups at once.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let config = aq_config("md5")
        .set("listeners", "1")
        .set("server_connect_timeout", "2")
        .database("slowdb", &[("dbname", "\"appdb\""), ("port", &port)]);
    let p = Pgmux::start(config);
    let slow_conn = p.conn_str("slowdb", "aq_md5", "aqmd5pw");
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let e = postgres::Client::connect(&slow_conn, postgres::NoTls).err();
        (t.elapsed(), e.and_then(|e| e.as_db_error().map(|d| d.code().code().to_string())))
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    login_ok(&p, "alice", "alicepw");
    login_ok(&p, "aq_scram", "aqscrampw");
    assert!(t.elapsed() < Duration::from_millis(1500), "logins waited for the slow lookup: {:?}", t.elapsed());
    let (took, code) = slow.join().unwrap();
    assert_eq!(code.as_deref(), Some("08006"));
    assert!(took >= Duration::from_millis(1800) && took < Duration::from_secs(6), "slow lookup took {took:?}");
    assert!(p.log().contains("auth_query for slowdb/aq_md5 failed"));
    drop(silent);
    p.stop();
}
