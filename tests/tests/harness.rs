//! Self-test of the fixtures that needs only PostgreSQL, not pgmux.

use pgmux_tests::Postgres;

#[test]
fn shared_postgres_answers() {
    let pg = Postgres::shared();
    assert_eq!(pg.psql_admin("postgres", "SELECT 1").trim(), "1");
    assert!(pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port())).exists());
    assert!(pg.bin("pgbench").is_file(), "pgbench missing from {:?}", pg.bin(""));
}

#[test]
fn fixture_roles_and_databases_exist() {
    let pg = Postgres::shared();
    let roles = pg.psql_admin(
        "postgres",
        "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles \
         WHERE rolname IN ('alice', 'bob', 'md5user', 'scramuser')",
    );
    assert_eq!(roles.trim(), "alice,bob,md5user,scramuser");
    let dbs = pg.psql_admin(
        "postgres",
        "SELECT string_agg(datname || ':' || pg_get_userbyid(datdba), ',' ORDER BY datname) \
         FROM pg_database WHERE datname IN ('appdb', 'otherdb')",
    );
    assert_eq!(dbs.trim(), "appdb:alice,otherdb:alice");
    assert_eq!(pg.psql_admin("appdb", "SELECT current_database()").trim(), "appdb");
}

#[test]
fn passwords_are_hashed_as_requested() {
    let pg = Postgres::shared();
    let md5 = pg.psql_admin("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'");
    assert!(md5.trim().starts_with("md5"), "md5user is not md5-hashed: {md5}");
    // The md5 format is "md5" || md5(password || username).
    let matches = pg.psql_admin(
        "postgres",
        "SELECT rolpassword = 'md5' || md5('md5pw' || 'md5user') FROM pg_authid \
         WHERE rolname = 'md5user'",
    );
    assert_eq!(matches.trim(), "t", "md5user's hash is not md5('md5pw' || 'md5user')");
    let scram = pg.psql_admin("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'");
    assert!(scram.trim().starts_with("SCRAM-SHA-256$"), "scramuser: {scram}");
}

#[test]
fn tcp_logins_follow_pg_hba() {
    let pg = Postgres::shared();
    let url =
        |user: &str, pw: &str| format!("host=127.0.0.1 port={} dbname=appdb user={user} password={pw}", pg.port());
    for (user, pw) in [("alice", "x"), ("md5user", "md5pw"), ("scramuser", "scrampw")] {
        let mut c =
            postgres::Client::connect(&url(user, pw), postgres::NoTls).unwrap_or_else(|e| panic!("{user}: {e}"));
        let row = c.query_one("SELECT current_user::text", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }
    let err = postgres::Client::connect(&url("md5user", "wrong"), postgres::NoTls).err();
    assert!(err.is_some(), "md5user logged in with a wrong password");
}
