//! Table-driven tests of statement splitting and classification. Each
//! expected statement is written as a short description (see `describe`),
//! and every result is also checked for span consistency and for agreement
//! with `may_be_interesting`.

use super::*;
use crate::testutil::XorShift;

fn ident(i: &Ident<'_>) -> String {
    if i.raw == i.value {
        i.value.to_string()
    } else {
        format!("{}[{}]", i.value, i.raw)
    }
}

/// A compact rendering of a kind that tables can spell out.
fn describe(k: &Kind<'_>) -> String {
    match k {
        Kind::Set { name, value, local } => {
            format!("set {} = {value}{}", ident(name), if *local { " local" } else { "" })
        }
        Kind::SetFromCurrent { name } => format!("set {} from current", ident(name)),
        Kind::Reset { name } => format!("reset {}", ident(name)),
        Kind::ResetAll => "reset all".into(),
        Kind::Role { local } => format!("role{}", if *local { " local" } else { "" }),
        Kind::TransactionScoped => "transaction scoped".into(),
        Kind::Prepare { name, body } => format!("prepare {} as {body}", ident(name)),
        Kind::Execute { name } => format!("execute {}", ident(name)),
        Kind::Deallocate { name } => format!("deallocate {}", name.as_ref().map_or("all".into(), ident)),
        Kind::Discard(d) => format!("discard {d:?}"),
        Kind::CloseAll => "close all".into(),
        Kind::Listen { channel } => format!("listen {}", ident(channel)),
        Kind::Unlisten { channel } => format!("unlisten {}", channel.as_ref().map_or("*".into(), ident)),
        Kind::Begin => "begin".into(),
        Kind::Commit => "commit".into(),
        Kind::Rollback => "rollback".into(),
        Kind::CallsSetConfig => "set_config".into(),
        Kind::Other => "other".into(),
    }
}

fn idents<'k, 'a>(k: &'k Kind<'a>) -> Vec<&'k Ident<'a>> {
    match k {
        Kind::Set { name, .. }
        | Kind::SetFromCurrent { name }
        | Kind::Reset { name }
        | Kind::Prepare { name, .. }
        | Kind::Execute { name } => vec![name],
        Kind::Listen { channel } => vec![channel],
        Kind::Deallocate { name: Some(n) } | Kind::Unlisten { channel: Some(n) } => vec![n],
        _ => vec![],
    }
}

/// Invariants every result must satisfy, whatever the input.
fn check_invariants(sql: &str, stmts: &[Stmt<'_>]) {
    let mut last = 0;
    for s in stmts {
        assert!(s.span.start >= last && s.span.start < s.span.end && s.span.end <= sql.len(), "{sql:?}: {s:?}");
        assert!(sql.get(s.span.clone()).is_some(), "span not on char boundaries: {sql:?} {s:?}");
        last = s.span.end;
        for i in idents(&s.kind) {
            assert!(i.span.start >= s.span.start && i.span.end <= s.span.end, "{sql:?}: {i:?}");
            assert_eq!(sql.get(i.span.clone()), Some(i.raw), "{sql:?}");
        }
    }
    if stmts.iter().any(|s| s.kind != Kind::Other) {
        assert!(may_be_interesting(sql), "may_be_interesting said no to {sql:?}: {stmts:?}");
    }
}

fn check(cases: &[(&str, &[&str])]) {
    for (sql, want) in cases {
        let stmts = statements(sql);
        let got: Vec<String> = stmts.iter().map(|s| describe(&s.kind)).collect();
        assert_eq!(got, *want, "input {sql:?}");
        check_invariants(sql, &stmts);
        if let [one] = want {
            assert_eq!(describe(&classify(sql)), *one, "classify {sql:?}");
        }
    }
}

#[test]
fn set_forms() {
    check(&[
        ("SET x = 1", &["set x = 1"]),
        ("set X to 'a', 'b'", &["set x[X] = 'a', 'b'"]),
        ("SET /* c */ SESSION -- c\n x /**/ = /**/ 1 ", &["set x = 1"]),
        ("SET SESSION x = 1", &["set x = 1"]),
        ("SET LOCAL x TO DEFAULT", &["set x = DEFAULT local"]),
        ("set local \"MixedCase\" = on", &["set MixedCase[\"MixedCase\"] = on local"]),
        ("SET myapp.user_id = 5", &["set myapp.user_id = 5"]),
        ("SET MyApp . \"User\" = 5", &["set myapp.User[MyApp . \"User\"] = 5"]),
        ("SET session = 1", &["set session = 1"]),
        ("SET local.x = 1", &["set local.x = 1"]),
        ("SET SESSION local TO 1", &["set local = 1"]),
        ("SET search_path FROM CURRENT", &["set search_path from current"]),
        ("SET TIME ZONE 'UTC'", &["set timezone[TIME ZONE] = 'UTC'"]),
        ("set local time /* x */ zone local", &["set timezone[time /* x */ zone] = DEFAULT local"]),
        ("SET time = 1", &["set time = 1"]),
        (
            "SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE",
            &["set timezone[TIME ZONE] = INTERVAL '+00:00' HOUR TO MINUTE"],
        ),
        ("SET NAMES 'UTF8'", &["set client_encoding[NAMES] = 'UTF8'"]),
        ("SET NAMES", &["set client_encoding[NAMES] = DEFAULT"]),
        ("SET names TO 'x'", &["set names = 'x'"]),
        ("SET SCHEMA 'x'", &["set search_path[SCHEMA] = 'x'"]),
        ("SET SCHEMA x", &["other"]),
        ("SET XML OPTION DOCUMENT", &["set xmloption[XML OPTION] = DOCUMENT"]),
        ("SET x = U&'d\\0061t\\+000061'", &["set x = U&'d\\0061t\\+000061'"]),
        ("SET x = U&'d!0061t!+000061' UESCAPE '!'", &["set x = U&'d!0061t!+000061' UESCAPE '!'"]),
        ("SET x = E'a\\';b'; SET y = 2", &["set x = E'a\\';b'", "set y = 2"]),
        ("SET x", &["other"]),
        ("SET x =", &["other"]),
        ("SET", &["other"]),
        ("SET CATALOG 'db'", &["other"]),
        ("SET x = 'unterminated; SET y = 1", &["set x = 'unterminated; SET y = 1"]),
        ("SETTINGS", &["other"]),
    ]);
}

#[test]
fn role_and_transaction_scoped_forms() {
    check(&[
        ("SET ROLE admin", &["role"]),
        ("set local role none", &["role local"]),
        ("SET SESSION ROLE 'x'", &["role"]),
        ("SET role = 'x'", &["role"]),
        ("SET \"ROLE\" TO x", &["role"]),
        ("SET SESSION AUTHORIZATION alice", &["role"]),
        ("SET LOCAL SESSION AUTHORIZATION DEFAULT", &["role local"]),
        ("SET SESSION SESSION AUTHORIZATION DEFAULT", &["role"]),
        ("set session_authorization = 'bob'", &["role"]),
        ("RESET ROLE", &["role"]),
        ("RESET SESSION AUTHORIZATION", &["role"]),
        ("reset Session_Authorization", &["role"]),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &["transaction scoped"]),
        ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", &["transaction scoped"]),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", &["transaction scoped"]),
        ("SET CONSTRAINTS ALL DEFERRED", &["transaction scoped"]),
        ("RESET TRANSACTION ISOLATION LEVEL", &["transaction scoped"]),
        ("SET transaction_isolation = 'serializable'", &["set transaction_isolation = 'serializable'"]),
    ]);
}

#[test]
fn reset_forms() {
    check(&[
        ("RESET x", &["reset x"]),
        ("reset /* c */ ALL", &["reset all"]),
        ("RESET TIME ZONE", &["reset timezone[TIME ZONE]"]),
        ("RESET myapp.User_Id", &["reset myapp.user_id[myapp.User_Id]"]),
        ("RESET", &["other"]),
    ]);
}

#[test]
fn prepared_statements() {
    check(&[
        ("PREPARE p AS SELECT 1", &["prepare p as SELECT 1"]),
        (
            "prepare P (int, text[]) as insert into t values ($1, ';'); EXECUTE p(1, 'a;b')",
            &["prepare p[P] as insert into t values ($1, ';')", "execute p"],
        ),
        ("PREPARE \"Q\"\"x\" AS SELECT $$;$$", &["prepare Q\"x[\"Q\"\"x\"] as SELECT $$;$$"]),
        ("PREPARE p AS", &["other"]),
        ("PREPARE p (int AS SELECT 1", &["other"]),
        ("PREPARE TRANSACTION 'gid'", &["other"]),
        ("PREPARE transaction AS SELECT 1", &["prepare transaction as SELECT 1"]),
        ("EXECUTE p", &["execute p"]),
        ("execute /* x */ U&\"p\\0031\"(1)", &["execute p1[U&\"p\\0031\"]"]),
        ("EXECUTE U&\"p!0031\" UESCAPE '!' (1)", &["execute p1[U&\"p!0031\" UESCAPE '!']"]),
        ("EXECUTE U&\"p!0031\" UESCAPE 'ab'", &["other"]),
        ("EXECUTE U&\"p\\zzzz\"", &["other"]),
        ("EXECUTE \"\"", &["other"]),
        ("EXECUTE \"open", &["other"]),
        ("EXECUTE", &["other"]),
        ("EXPLAIN EXECUTE p(1)", &["execute p"]),
        ("EXPLAIN (ANALYZE, BUFFERS) EXECUTE p", &["execute p"]),
        ("EXPLAIN ANALYZE VERBOSE EXECUTE p", &["execute p"]),
        ("EXPLAIN SELECT 1", &["other"]),
        ("CREATE TABLE t AS EXECUTE p (1)", &["execute p"]),
        ("CREATE TABLE t (a int)", &["other"]),
        ("DEALLOCATE p", &["deallocate p"]),
        ("DEALLOCATE PREPARE p", &["deallocate p"]),
        ("DEALLOCATE PREPARE ALL", &["deallocate all"]),
        ("deallocate all", &["deallocate all"]),
        ("DEALLOCATE prepare", &["deallocate prepare"]),
        ("DEALLOCATE", &["other"]),
    ]);
}

#[test]
fn discard_close_listen() {
    check(&[
        ("DISCARD ALL", &["discard All"]),
        ("discard plans", &["discard Plans"]),
        ("DISCARD SEQUENCES", &["discard Sequences"]),
        ("DISCARD TEMP", &["discard Temp"]),
        ("Discard /* c */ Temporary", &["discard Temp"]),
        ("DISCARD", &["other"]),
        ("CLOSE ALL", &["close all"]),
        ("close c", &["other"]),
        ("LISTEN chan", &["listen chan"]),
        ("LISTEN \"Chan\"", &["listen Chan[\"Chan\"]"]),
        ("UNLISTEN chan", &["unlisten chan"]),
        ("UNLISTEN *", &["unlisten *"]),
        ("LISTEN", &["other"]),
    ]);
}

#[test]
fn transaction_control() {
    check(&[
        ("BEGIN", &["begin"]),
        ("begin isolation level serializable", &["begin"]),
        ("START TRANSACTION READ ONLY", &["begin"]),
        ("START", &["other"]),
        ("COMMIT", &["commit"]),
        ("commit and chain", &["commit"]),
        ("END WORK", &["commit"]),
        ("COMMIT PREPARED 'gid'", &["other"]),
        ("ROLLBACK", &["rollback"]),
        ("abort", &["rollback"]),
        ("ROLLBACK WORK", &["rollback"]),
        ("ROLLBACK TO SAVEPOINT s", &["other"]),
        ("ROLLBACK TRANSACTION TO s", &["other"]),
        ("ROLLBACK PREPARED 'gid'", &["other"]),
        ("BEGIN; SET LOCAL x = 1; COMMIT", &["begin", "set x = 1 local", "commit"]),
    ]);
}

#[test]
fn set_config_calls() {
    check(&[
        ("select set_config('a','b',false)", &["set_config"]),
        ("SELECT pg_catalog.SET_CONFIG /* c */ ('a', 'b', false)", &["set_config"]),
        ("SELECT \"set_config\"('a','b',false)", &["set_config"]),
        ("SELECT U&\"set\\005fconfig\"('a','b',false)", &["set_config"]),
        ("SELECT U&\"set!005fconfig\" UESCAPE '!' ('a','b',false)", &["set_config"]),
        ("DO $$BEGIN PERFORM set_config('a','b',false); END$$", &["set_config"]),
        ("SELECT set_config FROM t", &["other"]),
        ("SELECT \"SET_CONFIG\"(1)", &["other"]),
        ("SELECT 1 -- set_config(", &["other"]),
        ("SELECT 1; SELECT set_config('a','b',true)", &["other", "set_config"]),
        ("SET x = 1; select set_config('a','b',false)", &["set x = 1", "set_config"]),
    ]);
}

#[test]
fn splitting() {
    check(&[
        ("", &[]),
        ("   \n\t ", &[]),
        (";;; ;", &[]),
        ("-- only a comment", &[]),
        ("/* only */ -- comments\n", &[]),
        ("SELECT ';'; SET x = 1", &["other", "set x = 1"]),
        ("SELECT E'\\';'; SET x = 1", &["other", "set x = 1"]),
        ("SELECT 'a\\'; SET x = 1; --'", &["other", "set x = 1"]),
        ("SELECT \"quoted;ident\"; SET x = 1", &["other", "set x = 1"]),
        ("SELECT $$;$$; SET x = 1", &["other", "set x = 1"]),
        ("SELECT $tag$ $ ; $$ $tag$; SET x = 1", &["other", "set x = 1"]),
        ("SELECT /* nested /* */ ; */ 1; SET x = 1", &["other", "set x = 1"]),
        ("SELECT 1 -- comment ;\n; SET x = 1", &["other", "set x = 1"]),
        ("SELECT (1;2); SET x = 1", &["other", "set x = 1"]),
        ("SELECT 1); SET x = 1", &["other", "set x = 1"]),
        ("SELECT U&'d\\0061t\\+000061;'; RESET ALL", &["other", "reset all"]),
        ("SELECT 'unterminated; SET x = 1", &["other"]),
        ("SELECT $q$ unterminated; SET x = 1", &["other"]),
        ("SELECT 1 /* unterminated; SET x = 1", &["other"]),
        ("SELECT 1 -- to the end; SET x = 1", &["other"]),
        ("SELECT x$$; SET y = 1", &["other", "set y = 1"]),
        ("SELECT $1; SET y = 1", &["other", "set y = 1"]),
        ("DISCARD ALL;\n\n  LISTEN a ; UNLISTEN * ;", &["discard All", "listen a", "unlisten *"]),
        ("select 1 as begin; commit", &["other", "commit"]),
    ]);
}

/// SQL-standard bodies are split at inner semicolons on purpose (see the
/// module documentation): guessing where they end could hide a statement.
#[test]
fn begin_atomic_bodies_over_report_rather_than_hide() {
    let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS case; END; SET search_path = evil";
    let got: Vec<String> = statements(sql).iter().map(|s| describe(&s.kind)).collect();
    assert_eq!(got, ["other", "commit", "set search_path = evil"]);
}

#[test]
fn spans_are_trimmed_and_point_into_input() {
    let sql = "  /* a */ SET x = 1 -- b\n ;\n SET myapp.Id TO 'v' ; ";
    let stmts = statements(sql);
    assert_eq!(stmts.len(), 2);
    assert_eq!(sql.get(stmts[0].span.clone()), Some("SET x = 1"));
    assert_eq!(sql.get(stmts[1].span.clone()), Some("SET myapp.Id TO 'v'"));
    let Kind::Set { name, value, local: false } = &stmts[1].kind else { panic!("{:?}", stmts[1]) };
    assert_eq!((name.raw, name.value.as_ref(), *value), ("myapp.Id", "myapp.id", "'v'"));
    assert_eq!(sql.get(name.span.clone()), Some("myapp.Id"));
}

#[test]
fn values_borrow_when_unchanged() {
    let Kind::Execute { name } = classify("EXECUTE plain_name") else { panic!() };
    assert!(matches!(name.value, Cow::Borrowed("plain_name")));
    let Kind::Listen { channel } = classify("LISTEN \"Q\"") else { panic!() };
    assert!(matches!(channel.value, Cow::Borrowed("Q")));
}

#[test]
fn long_names_are_cut_like_the_server() {
    let long = "p".repeat(70);
    let sql = format!("EXECUTE {long}");
    let Kind::Execute { name } = classify(&sql) else { panic!() };
    assert_eq!(name.value.len(), 63);
    assert_eq!(name.raw.len(), 70);
}

#[test]
fn classify_single_statement() {
    assert_eq!(classify("SET x = 1;"), statements("SET x = 1")[0].kind);
    assert_eq!(describe(&classify(" ; SET x = 1 ; ; ")), "set x = 1");
    assert_eq!(classify("SET x = 1; SET y = 2"), Kind::Other);
    assert_eq!(classify(""), Kind::Other);
    assert_eq!(classify("-- nothing"), Kind::Other);
}

#[test]
fn may_be_interesting_is_cheap_and_sound() {
    for sql in ["SELECT 1", "select * from t where a = 'SET x = 1'", "INSERT INTO t VALUES (1)", "", "-- c"] {
        assert!(!may_be_interesting(sql), "{sql:?}");
    }
    for sql in ["SET x = 1", "select 1; /* c */ set x = 1", "  -- c\n begin", "SELECT set_config('a','b',false)"] {
        assert!(may_be_interesting(sql), "{sql:?}");
    }
    // A semicolon inside a string is not a statement boundary.
    assert!(!may_be_interesting("SELECT '; SET x = 1'"));
}

/// Found by the fuzz harness (tests/tests/fuzz): a worker replaced `"a"` in
/// `EXECUTE"a"` with a bare name, which ran into the keyword
/// (`EXECUTEpgmuxq_1_2_3`) and turned a valid statement into another one.
#[test]
fn ident_replacement_keeps_tokens_apart() {
    for (sql, want) in [
        ("EXECUTE foo(1)", "EXECUTE pgmuxq_1(1)"),
        ("EXECUTE\"a\"(1)", "EXECUTE pgmuxq_1(1)"),
        ("PREPARE\"a\"AS SELECT 1", "PREPARE pgmuxq_1 AS SELECT 1"),
        ("EXECUTE \"a\"$1", "EXECUTE pgmuxq_1 $1"),
        ("DEALLOCATE \"a\"é", "DEALLOCATE pgmuxq_1 é"),
        ("EXECUTE U&\"a\" UESCAPE '!'", "EXECUTE pgmuxq_1"),
    ] {
        let stmts = statements(sql);
        let [Stmt {
            kind: Kind::Execute { name } | Kind::Prepare { name, .. } | Kind::Deallocate { name: Some(name) },
            ..
        }] = stmts.as_slice()
        else {
            panic!("{sql:?}: {stmts:?}")
        };
        let out = format!(
            "{}{}{}",
            &sql[..name.span.start],
            ident_replacement(sql, name.span.clone(), "pgmuxq_1"),
            &sql[name.span.end..]
        );
        assert_eq!(out, want, "{sql:?}");
    }
}

#[test]
fn quoting_helpers() {
    assert_eq!(quote_ident("a"), "\"a\"");
    assert_eq!(quote_ident("My \"x\""), "\"My \"\"x\"\"\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    // What we quote reads back as the same name or string.
    for s in ["plain", "Mixed", "q\"q", "sp ace", "ünï"] {
        let sql = format!("LISTEN {}", quote_ident(s));
        let Kind::Listen { channel } = classify(&sql) else { panic!("{sql}") };
        assert_eq!(channel.value, s);
    }
}

#[test]
fn pins_forms() {
    const T: u8 = PIN_TEMP;
    const H: u8 = PIN_HOLD_CURSOR;
    const A: u8 = PIN_ADVISORY;
    const L: u8 = PIN_LOAD;
    let cases: &[(&str, u8)] = &[
        ("CREATE TEMPORARY TABLE t (x int)", T),
        ("create local temp table t (x int)", T),
        ("CREATE GLOBAL TEMPORARY TABLE t (x int)", T),
        ("CREATE TEMP VIEW v AS SELECT 1", T),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", T),
        ("CREATE TEMP SEQUENCE s", T),
        ("CREATE TEMP TABLE t AS SELECT 1", T),
        ("create /* c */ Temp -- c\n table t (x int) on commit delete rows", T),
        ("CREATE TEMP TABLE t (x int) ON COMMIT PRESERVE ROWS", T),
        ("CREATE TEMP VIEW v AS SELECT 1 ON COMMIT DROP", T),
        ("CREATE TABLE pg_temp.t (x int)", T),
        ("CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql", T),
        ("CREATE TABLE IF NOT EXISTS \"pg_temp\".t (x int)", T),
        ("SELECT * INTO TEMP t FROM x", T),
        ("SELECT * INTO TEMPORARY TABLE t FROM x", T),
        ("select a into local temp \"T\" from x", T),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", T),
        ("SELECT 1; CREATE TEMP TABLE t (x int) ON COMMIT DROP; CREATE TEMP TABLE u (x int)", T),
        ("DO $$BEGIN CREATE TEMP TABLE t (x int); END$$", T),
        ("CREATE FUNCTION f() RETURNS void AS $f$ create temporary table t (x int) $f$ LANGUAGE sql", T),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", H),
        ("declare c no scroll cursor with hold for select 1", H),
        ("DECLARE c BINARY INSENSITIVE SCROLL CURSOR WITH /* c */ HOLD FOR SELECT 1", H),
        ("SELECT pg_advisory_lock(1)", A),
        ("select pg_catalog.pg_try_advisory_lock_shared(1,2)", A),
        ("SELECT PG_ADVISORY_LOCK_SHARED /* c */ (1)", A),
        ("SELECT pg_try_advisory_lock(1)", A),
        ("SELECT \"pg_advisory_lock\"(1)", A),
        ("SELECT 1 WHERE pg_try_advisory_lock(hashtext('x'))", A),
        ("DO $$BEGIN PERFORM pg_advisory_lock(1); END$$", A),
        ("SELECT $a$ $b$ select pg_advisory_lock(1) $b$ $a$", A),
        ("LOAD 'auto_explain'", L),
        ("load/**/'auto_explain'", L),
        ("SELECT 1; LOAD 'auto_explain'", L),
        ("DO $$BEGIN LOAD 'auto_explain'; END$$", L),
        ("CREATE TEMP TABLE t (x int); SELECT pg_advisory_lock(1); LOAD 'x'", T | A | L),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)", H | A),
        // Negatives.
        ("", 0),
        ("SELECT 1", 0),
        ("CREATE TEMP TABLE t (x int) ON COMMIT DROP", 0),
        ("create temporary table t on commit drop as select 1", 0),
        ("CREATE TABLE pg_temp.t (x int) ON COMMIT DROP", 0),
        ("SELECT pg_advisory_xact_lock(1)", 0),
        ("SELECT pg_try_advisory_xact_lock_shared(1)", 0),
        ("SELECT pg_advisory_unlock(1)", 0),
        ("SELECT pg_advisory_lock FROM t", 0),
        ("SELECT \"PG_ADVISORY_LOCK\"(1)", 0),
        ("SELECT temperature FROM t", 0),
        ("SELECT temp FROM t", 0),
        ("SELECT 'create temp table'", 0),
        ("SELECT 'select pg_advisory_lock(1)'", 0),
        ("SELECT 1 -- pg_advisory_lock(1)", 0),
        ("CREATE TABLE \"temp\" (x int)", 0),
        ("CREATE TABLE temperatures (x int)", 0),
        ("CREATE TABLE t AS SELECT a FROM pg_temp.x", 0),
        ("SELECT * FROM pg_temp.t", 0),
        ("INSERT INTO temp VALUES (1)", 0),
        ("MERGE INTO temp t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", 0),
        ("SELECT * INTO temp FROM x", 0),
        ("SELECT * INTO temporary_t FROM x", 0),
        ("DECLARE c CURSOR FOR SELECT 1", 0),
        ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", 0),
        ("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", 0),
        ("SELECT 'with hold'", 0),
        ("-- comment create temp table\nSELECT 1", 0),
        ("/* DECLARE c CURSOR WITH HOLD FOR */ SELECT 1", 0),
        ("SELECT load FROM t", 0),
        ("SELECT 'LOAD x'; SELECT 1", 0),
        ("SELECT download FROM t", 0),
        ("DO 'x'; SELECT 1 AS hold", 0),
    ];
    for &(sql, want) in cases {
        assert_eq!(pins(sql), want, "pins {sql:?}");
        assert_eq!(pin::scan(sql, 0), want, "scan {sql:?}");
    }
}

#[test]
fn unpins_forms() {
    const T: u8 = PIN_TEMP;
    const H: u8 = PIN_HOLD_CURSOR;
    const A: u8 = PIN_ADVISORY;
    let cases: &[(&str, u8)] = &[
        ("DISCARD TEMP", T),
        ("discard temporary", T),
        ("DISCARD ALL", T | H | A),
        ("CLOSE ALL", H),
        ("close /* c */ all", H),
        ("SELECT pg_advisory_unlock_all()", A),
        ("select pg_catalog.PG_ADVISORY_UNLOCK_ALL ()", A),
        ("SELECT 1; DISCARD TEMP; CLOSE ALL", T | H),
        ("", 0),
        ("DISCARD PLANS", 0),
        ("DISCARD SEQUENCES", 0),
        ("CLOSE c", 0),
        ("SELECT pg_advisory_unlock(1)", 0),
        ("SELECT 'DISCARD ALL'", 0),
        ("-- DISCARD ALL", 0),
        ("SELECT 1 AS discard", 0),
        ("DO $$BEGIN PERFORM pg_advisory_unlock_all(); END$$", 0),
    ];
    for &(sql, want) in cases {
        assert_eq!(unpins(sql), want, "unpins {sql:?}");
    }
}

/// The filter of [`pins`] is sound: whatever the precise scan finds, it
/// lets through.
fn check_pins(sql: &str) {
    let precise = pin::scan(sql, 0);
    assert_eq!(pins(sql), precise, "filter hid a pin in {sql:?}");
    let _ = unpins(sql);
}

/// Random text from a token alphabet that stresses every quoting rule: no
/// panic, spans in bounds and on char boundaries, may_be_interesting sound.
#[test]
fn fuzz_token_soup() {
    const ALPHABET: &[&str] = &[
        "'",
        "\"",
        "$$",
        "$a$",
        "/*",
        "*/",
        "--",
        "\n",
        ";",
        "E'",
        "U&'",
        "U&\"",
        "\\",
        "SET ",
        "x",
        "(",
        ")",
        " ",
        "=",
        "TO ",
        "é",
        "RESET ",
        "PREPARE ",
        "AS ",
        "EXECUTE ",
        "UESCAPE ",
        "'!'",
        "set_config",
        ".",
        "$1",
        "LOCAL ",
        "TIME ZONE ",
        "ALL",
        "\\0061",
        "*",
        "CREATE ",
        "TEMP ",
        "TABLE ",
        "ON COMMIT DROP ",
        "INTO ",
        "DECLARE ",
        "WITH HOLD ",
        "FOR ",
        "pg_advisory_lock",
        "pg_advisory_unlock_all",
        "LOAD ",
        "DISCARD ",
        "CLOSE ",
    ];
    let mut rng = XorShift::new(0x5eed_5e77);
    let mut sql = String::new();
    for _ in 0..20_000 {
        sql.clear();
        let len = rng.next_u64() % 24;
        for _ in 0..len {
            let i = (rng.next_u64() % ALPHABET.len() as u64) as usize;
            sql.push_str(ALPHABET.get(i).copied().unwrap_or(""));
        }
        let stmts = statements(&sql);
        check_invariants(&sql, &stmts);
        let _ = classify(&sql);
        check_pins(&sql);
    }
}

/// Arbitrary bytes (made valid UTF-8), for characters the alphabet lacks.
#[test]
fn fuzz_random_text() {
    let mut rng = XorShift::new(42);
    for _ in 0..5_000 {
        let bytes = rng.buffer(64);
        let sql = String::from_utf8_lossy(&bytes);
        check_invariants(&sql, &statements(&sql));
        let _ = classify(&sql);
        check_pins(&sql);
    }
}

#[test]
fn linear_on_adversarial_input() {
    // Patterns that would be quadratic with naive rescanning.
    let n = 200_000;
    for sql in [
        ";/*".repeat(n / 3),
        ";--".repeat(n / 3),
        format!("SELECT $aaaaaaaaaa${}", "$aaaaaaaaa".repeat(n / 10)),
        "(".repeat(n),
        "SET x = ".to_string() + &"a.".repeat(n / 2),
        "SET ".to_string() + &"a.".repeat(n / 2) + "a = 1",
        "EXPLAIN ".to_string() + &"analyze ".repeat(n / 8),
        "SELECT ".to_string() + &"U&\"a\" ".repeat(n / 6) + "set_config",
        "DECLARE ".repeat(n / 8) + "WITH HOLD",
        "CREATE TEMP TABLE t ".repeat(n / 20),
        "SELECT $$".to_string() + &"$a$ $b$ temp".repeat(n / 12),
    ] {
        let start = std::time::Instant::now();
        let stmts = statements(&sql);
        check_invariants(&sql, &stmts);
        check_pins(&sql);
        assert!(start.elapsed().as_secs() < 5, "too slow on {}", sql.get(..20).unwrap_or(""));
    }
}
