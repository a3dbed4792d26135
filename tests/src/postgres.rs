//! One throwaway PostgreSQL 15 per test binary.
//!
//! Started on first use of [`Postgres::shared`], stopped (`-m immediate`) and
//! deleted by an `atexit` handler when the test binary exits. Missing binaries
//! are a loud panic, never a skip: a green run must mean the tests ran.
//!
//! When the tests run as root (CI containers), the cluster is owned by and
//! runs as the `postgres` OS user, because `initdb` and `postgres` refuse root.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::util::{free_port, tail_file, temp_dir};

/// Where Debian's postgresql-15 puts its binaries; `PG_BINDIR` overrides.
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// Roles and databases every test can rely on. Passwords match the default
/// pgmux userlist in [`crate::pgmux::DEFAULT_USERS`].
const SETUP_SQL: &[&str] = &[
    "CREATE ROLE alice LOGIN PASSWORD 'alicepw' CREATEDB",
    "CREATE ROLE bob LOGIN PASSWORD 'bobpw'",
    "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5pw'",
    "SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD 'scrampw'",
    "CREATE DATABASE appdb OWNER alice",
    "CREATE DATABASE otherdb OWNER alice",
];

static SHARED: OnceLock<Postgres> = OnceLock::new();

/// A running throwaway cluster. See the module docs.
#[derive(Debug)]
pub struct Postgres {
    bindir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// `Some((uid, gid))` of the `postgres` OS user when we are root.
    run_as: Option<(u32, u32)>,
}

impl Postgres {
    /// The cluster of this test binary, started on first call.
    pub fn shared() -> &'static Postgres {
        SHARED.get_or_init(|| {
            let pg = Postgres::start();
            // SAFETY: `stop_shared_at_exit` is an `extern "C" fn()` that only
            // touches the already-initialised `SHARED` static and never
            // unwinds (it catches panics), as atexit requires.
            let rc = unsafe { libc::atexit(stop_shared_at_exit) };
            assert_eq!(rc, 0, "atexit registration failed");
            pg
        })
    }

    /// A cluster of the caller's own, with the same roles and databases as the shared one, stopped and deleted
    /// when dropped. For tests that stop or restart PostgreSQL, which would disturb every other test of the binary.
    pub fn private() -> Postgres {
        Postgres::start()
    }

    fn start() -> Postgres {
        let bindir = std::env::var_os("PG_BINDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR));
        for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
            if !bindir.join(tool).is_file() {
                panic!(
                    "PostgreSQL 15 binary {} is missing. Install the Debian packages \
                     postgresql-15 and postgresql-client-15 (scripts/test does this when \
                     run as root), or set PG_BINDIR to a directory holding initdb, pg_ctl, \
                     postgres and psql.",
                    bindir.join(tool).display()
                );
            }
        }
        let run_as = postgres_os_user();
        let root = temp_dir("pgmux-test-pg");
        let data_dir = root.join("data");
        if let Some((uid, gid)) = run_as {
            chown(&root, uid, gid);
        }

        let pg = Postgres { bindir, root, data_dir, port: free_port(), run_as };
        pg.initdb();
        pg.configure();
        pg.pg_ctl_start();
        pg.create_fixtures();
        pg
    }

    fn initdb(&self) {
        let mut cmd = self.as_owner(&self.bin("initdb"));
        cmd.arg("-D").arg(&self.data_dir).args(["-U", "postgres", "-A", "trust", "-E", "UTF8"]).args([
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        run_checked(cmd, "initdb");
    }

    fn configure(&self) {
        let conf = format!(
            "\n# added by pgmux-tests\n\
             port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             max_connections = 1200\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 128MB\n\
             max_prepared_transactions = 0\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             log_connections = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = self.port,
            dir = self.data_dir.display(),
        );
        append(&self.data_dir.join("postgresql.conf"), &conf);
        let hba = "local all all trust\n\
                   host all md5user 127.0.0.1/32 md5\n\
                   host all scramuser 127.0.0.1/32 scram-sha-256\n\
                   host all all 127.0.0.1/32 trust\n";
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if let Some((uid, gid)) = self.run_as {
            chown(&self.data_dir.join("pg_hba.conf"), uid, gid);
        }
    }

    fn pg_ctl_start(&self) {
        let mut cmd = self.as_owner(&self.bin("pg_ctl"));
        cmd.arg("start").arg("-D").arg(&self.data_dir).arg("-l").arg(self.log_path()).args(["-w", "-t", "60"]);
        // pg_ctl's postmaster would otherwise inherit the test's pipes and
        // keep `cargo test` output open after we exit.
        cmd.stdin(Stdio::null());
        let out = cmd.output().expect("spawn pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed ({}):\n{}\n{}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(50)
            );
        }
    }

    fn create_fixtures(&self) {
        for sql in SETUP_SQL {
            self.psql_admin("postgres", sql);
        }
        for db in ["postgres", "appdb", "otherdb"] {
            self.psql_admin(db, "GRANT ALL ON SCHEMA public TO PUBLIC");
        }
    }

    /// `pg_ctl restart -m fast`: every backend is terminated (its client gets 57P01), then the server accepts
    /// connections again on the same port.
    pub fn restart_fast(&self) {
        self.pg_ctl_checked(&["restart", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast`: backends are terminated and the server stays down until [`Self::start_again`].
    pub fn stop_fast(&self) {
        self.pg_ctl_checked(&["stop", "-m", "fast"]);
    }

    /// Starts a cluster stopped with [`Self::stop_fast`].
    pub fn start_again(&self) {
        self.pg_ctl_checked(&["start"]);
    }

    fn pg_ctl_checked(&self, args: &[&str]) {
        let mut cmd = self.as_owner(&self.bin("pg_ctl"));
        cmd.args(args).arg("-D").arg(&self.data_dir).arg("-l").arg(self.log_path()).args(["-w", "-t", "60"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = cmd.output().unwrap_or_else(|e| panic!("spawn pg_ctl {args:?}: {e}"));
        if !out.status.success() {
            panic!(
                "pg_ctl {args:?} failed ({}): {}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
    }

    /// `pg_postmaster_start_time()` as text: changes exactly when the server restarted (or crashed and reset).
    pub fn postmaster_start_time(&self) -> String {
        self.psql_admin("postgres", "SELECT pg_postmaster_start_time()").trim().to_string()
    }

    /// TCP port, on [`Self::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory of the Unix socket `.s.PGSQL.<port>` (the data directory).
    pub fn socket_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("postgres.log")
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log_path(), n)
    }

    /// A PostgreSQL binary (`psql`, `pgbench`, ...) of the version under test.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Runs `sql` in `db` as the `postgres` role over the Unix socket,
    /// bypassing pgmux. Returns stdout (unaligned, tuples only); panics with
    /// psql's stderr if anything fails. Several statements separated by `;`
    /// run as one implicit transaction, as psql -c does.
    pub fn psql_admin(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .stdin(Stdio::null());
        clear_pg_env(&mut cmd);
        let out = cmd.output().expect("spawn psql");
        if !out.status.success() {
            panic!("psql_admin({db:?}, {sql:?}) failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `program` as the cluster's OS owner.
    fn as_owner(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        // initdb/pg_ctl check that they can read their cwd.
        cmd.current_dir(&self.root);
        clear_pg_env(&mut cmd);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", &self.root).env("USER", "postgres");
        }
        cmd
    }

    fn stop(&self) {
        let mut cmd = self.as_owner(&self.bin("pg_ctl"));
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Postgres {
    /// Only private clusters are ever dropped; the shared one lives in a static and is stopped at exit.
    fn drop(&mut self) {
        self.stop();
    }
}

extern "C" fn stop_shared_at_exit() {
    // Unwinding out of an extern "C" fn aborts; a failed clean-up must not
    // turn a passing run into a crash.
    let _ = std::panic::catch_unwind(|| {
        if let Some(pg) = SHARED.get() {
            pg.stop();
        }
    });
}

/// uid/gid of the `postgres` OS user when we are root, `None` otherwise.
fn postgres_os_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    // SAFETY: `name` is a valid C string; the returned record is only read
    // before any other getpw* call could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!(
            "running as root but there is no `postgres` OS user to run PostgreSQL as \
             (install the Debian package postgresql-15, which creates it)"
        );
    }
    // SAFETY: `pw` is non-null and points to libc's static passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append postgresql.conf");
}

/// Keeps the developer's PG* variables from redirecting fixture commands.
pub fn clear_pg_env(cmd: &mut Command) {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGDATA",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
}

fn run_checked(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}
