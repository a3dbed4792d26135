//! The pgmux binary under test: a config builder and a running instance.
//!
//! Each [`Pgmux`] gets its own temp dir (pooler.toml, userlist.txt, the Unix
//! socket and pgmux.log), its own port, and its own process group, so Drop can
//! kill the supervisor and any worker it leaves behind. On a failing test the
//! ends of the pgmux and PostgreSQL logs are printed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::postgres::{clear_pg_env, Postgres};
use crate::util::{tail_file, temp_dir};

/// How long pgmux may take to accept its first TCP connection.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long pgmux may take to exit after SIGINT in [`Pgmux::stop`].
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The userlist every config starts with; the same passwords as the roles
/// [`Postgres::shared`] creates.
pub const DEFAULT_USERS: &[(&str, &str)] =
    &[("alice", "alicepw"), ("bob", "bobpw"), ("md5user", "md5pw"), ("scramuser", "scrampw"), ("postgres", "")];

/// Builder for pooler.toml + userlist.txt. Values are TOML value text, e.g.
/// `.set("pool_mode", "\"session\"")` or `.set("default_pool_size", "2")`.
/// `listen_addr`, `listen_port`, `unix_socket_dir` and `auth_file` are filled
/// in by [`Pgmux::start`] unless set explicitly.
#[derive(Debug, Clone)]
pub struct PgmuxConfig {
    pooler: Vec<(String, String)>,
    databases: Vec<(String, Vec<(String, String)>)>,
    users: Vec<(String, String)>,
    extra: String,
}

impl Default for PgmuxConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PgmuxConfig {
    /// Defaults: 2 listeners, trust auth, transaction pooling, pool size 4,
    /// databases `appdb`, `otherdb` and `"*"` on the shared PostgreSQL.
    pub fn new() -> Self {
        let cfg = PgmuxConfig {
            pooler: Vec::new(),
            databases: Vec::new(),
            users: DEFAULT_USERS.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            extra: String::new(),
        };
        cfg.set("listeners", "2")
            .set("auth_type", "\"trust\"")
            .set("pool_mode", "\"transaction\"")
            .set("default_pool_size", "4")
            .set("max_client_conn", "5000")
            .database("appdb", &[("dbname", "\"appdb\"")])
            .database("otherdb", &[("dbname", "\"otherdb\"")])
            .database("*", &[])
    }

    /// Sets (or replaces) a `[pooler]` key; `value` is TOML text.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        set_key(&mut self.pooler, key, value);
        self
    }

    /// Removes a `[pooler]` key, so pgmux's own default applies.
    pub fn unset(mut self, key: &str) -> Self {
        self.pooler.retain(|(k, _)| k != key);
        self
    }

    /// Adds (or replaces) `[databases."name"]` with `host`/`port` of the
    /// shared PostgreSQL plus `keys` (TOML value text), which may override
    /// them.
    pub fn database(mut self, name: &str, keys: &[(&str, &str)]) -> Self {
        let pg = Postgres::shared();
        let mut section =
            vec![("host".to_string(), format!("\"{}\"", pg.host())), ("port".to_string(), pg.port().to_string())];
        for (k, v) in keys {
            set_key(&mut section, k, v);
        }
        match self.databases.iter_mut().find(|(n, _)| n == name) {
            Some((_, existing)) => *existing = section,
            None => self.databases.push((name.to_string(), section)),
        }
        self
    }

    pub fn remove_database(mut self, name: &str) -> Self {
        self.databases.retain(|(n, _)| n != name);
        self
    }

    /// Adds (or replaces) a userlist line `"user" "secret"`.
    pub fn user(mut self, name: &str, secret: &str) -> Self {
        set_key(&mut self.users, name, secret);
        self
    }

    /// Empties the userlist.
    pub fn clear_users(mut self) -> Self {
        self.users.clear();
        self
    }

    /// Appends raw TOML after everything else (for sections this builder
    /// does not know about yet).
    pub fn raw(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The number of listener processes this configuration asks for (pgmux's default is 2).
    pub fn listeners(&self) -> usize {
        self.pooler.iter().find(|(k, _)| k == "listeners").and_then(|(_, v)| v.trim().parse().ok()).unwrap_or(2)
    }

    /// The userlist secret of `user`, if listed.
    pub fn password_of(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, p)| p.as_str())
    }

    /// The pooler.toml text.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("[pooler]\n");
        for (k, v) in &self.pooler {
            out.push_str(&format!("{k} = {v}\n"));
        }
        for (name, keys) in &self.databases {
            out.push_str(&format!("\n[databases.\"{name}\"]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.extra.is_empty() {
            out.push('\n');
            out.push_str(&self.extra);
        }
        out
    }

    /// The userlist.txt text.
    pub fn userlist(&self) -> String {
        self.users.iter().map(|(u, p)| format!("\"{u}\" \"{p}\"\n")).collect()
    }
}

fn set_key(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.to_string(),
        None => list.push((key.to_string(), value.to_string())),
    }
}

/// A running pgmux. Dropping it kills it.
#[derive(Debug)]
pub struct Pgmux {
    child: Option<Child>,
    pid: u32,
    port: u16,
    dir: PathBuf,
    config: PgmuxConfig,
}

impl Pgmux {
    /// Writes the config into a fresh temp dir, starts pgmux with `-v`, and
    /// waits until it accepts TCP connections. Panics with the pgmux log if it
    /// exits or does not listen within 15 s.
    pub fn start(config: PgmuxConfig) -> Pgmux {
        Pgmux::start_with_env(config, &[])
    }

    /// [`Pgmux::start`] with extra environment variables for the pgmux process.
    pub fn start_with_env(config: PgmuxConfig, env: &[(&str, &str)]) -> Pgmux {
        // Start PostgreSQL first, so a failure there is not blamed on pgmux.
        Postgres::shared();
        let dir = temp_dir("pgmux-test");
        let port = crate::util::free_port();
        let mut config = config;
        let defaults = [
            ("listen_addr", "\"127.0.0.1\"".to_string()),
            ("listen_port", port.to_string()),
            ("unix_socket_dir", toml_str(&dir)),
            ("auth_file", toml_str(&dir.join("userlist.txt"))),
        ];
        for (k, v) in defaults {
            if !config.pooler.iter().any(|(key, _)| key == k) {
                config.pooler.insert(0, (k.to_string(), v));
            }
        }
        // Tests that set listen_port themselves get what they asked for.
        let port =
            config.pooler.iter().find(|(k, _)| k == "listen_port").and_then(|(_, v)| v.parse().ok()).unwrap_or(port);

        let config_path = dir.join("pooler.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write pooler.toml");
        std::fs::write(dir.join("userlist.txt"), config.userlist()).expect("write userlist.txt");

        let log_path = dir.join("pgmux.log");
        let log = File::create(&log_path).expect("create pgmux.log");
        let mut cmd = Command::new(binary());
        cmd.arg(std::env::var("PGMUX_TEST_VERBOSITY").unwrap_or_else(|_| "-v".into()))
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            // Own group: Drop can take down workers a dying supervisor left.
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));
        let mut pgmux = Pgmux { pid: child.id(), child: Some(child), port, dir, config };
        pgmux.wait_listening();
        pgmux
    }

    fn wait_listening(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!(
                    "pgmux exited during start-up ({status}). Config:\n{}\n--- pgmux log ---\n{}",
                    self.config.to_toml(),
                    self.log()
                );
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            // The port accepts as soon as the supervisor has bound it; wait for every listener too, so tests that
            // look at the process family see it complete.
            let listeners: usize = self.config.listeners();
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.children("pgmux-listener").len() >= listeners
            {
                return;
            }
            if start.elapsed() > START_DEADLINE {
                panic!("pgmux did not accept TCP connections on port {} within {START_DEADLINE:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Pid of the supervisor.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Directory of the Unix socket `.s.PGSQL.<port>` (also holds the config
    /// and the log).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &PgmuxConfig {
        &self.config
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgmux.log")
    }

    /// Everything pgmux has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// A libpq/rust-postgres connection string through pgmux over TCP.
    pub fn conn_str(&self, db: &str, user: &str, password: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} dbname={db} user={user} connect_timeout=10", self.port);
        if !password.is_empty() {
            s.push_str(&format!(" password={password}"));
        }
        s
    }

    /// Connects through pgmux with the user's userlist password; panics with
    /// the error (the logs follow via Drop).
    pub fn client(&self, db: &str, user: &str) -> postgres::Client {
        self.try_client(db, user, self.password(user))
            .unwrap_or_else(|e| panic!("connect to pgmux as {user}@{db}: {e:?}"))
    }

    /// Like [`Self::client`] with an explicit password, returning the error
    /// for tests that expect one.
    pub fn try_client(&self, db: &str, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.conn_str(db, user, password), postgres::NoTls)
    }

    fn password(&self, user: &str) -> &str {
        self.config
            .password_of(user)
            .or_else(|| DEFAULT_USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p))
            .unwrap_or("")
    }

    /// Runs `psql -X -A -t -v ON_ERROR_STOP=1 -c sql` through pgmux over TCP
    /// with the user's userlist password. Does not check the status.
    pub fn psql(&self, db: &str, user: &str, sql: &str) -> Output {
        let mut cmd = Command::new(Postgres::shared().bin("psql"));
        clear_pg_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", db, "-c", sql])
            .env("PGPASSWORD", self.password(user))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        cmd.output().expect("spawn psql")
    }

    /// Runs pgbench against pgmux (`-h 127.0.0.1 -p <port>` prepended). If
    /// the args contain `-U user`, that user's password is supplied.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(Postgres::shared().bin("pgbench"));
        clear_pg_env(&mut cmd);
        let user = args.windows(2).find(|w| w[0] == "-U").map(|w| w[1]).unwrap_or("postgres");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .env("PGUSER", user)
            .env("PGPASSWORD", self.password(user))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        cmd.output().expect("spawn pgbench")
    }

    /// Pids of the supervisor's direct children whose `/proc/<pid>/comm` is
    /// `name` (e.g. `pgmux-worker`), sorted.
    pub fn children(&self, name: &str) -> Vec<u32> {
        let mut pids: Vec<u32> =
            proc_table().into_iter().filter(|p| p.ppid == self.pid && p.comm == name).map(|p| p.pid).collect();
        pids.sort_unstable();
        pids
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) to `pid`; panics if that fails.
    pub fn kill(&self, pid: u32, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            panic!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
    }

    /// Writes `config` over the running one (the listen keys [`Pgmux::start`]
    /// filled in are kept) and sends SIGHUP.
    pub fn reload(&mut self, config: PgmuxConfig) {
        let mut config = config;
        for key in ["listen_addr", "listen_port", "unix_socket_dir", "auth_file"] {
            if !config.pooler.iter().any(|(k, _)| k == key) {
                if let Some(entry) = self.config.pooler.iter().find(|(k, _)| k == key) {
                    config.pooler.insert(0, entry.clone());
                }
            }
        }
        std::fs::write(self.dir.join("pooler.toml"), config.to_toml()).expect("write pooler.toml");
        std::fs::write(self.dir.join("userlist.txt"), config.userlist()).expect("write userlist.txt");
        self.config = config;
        self.kill(self.pid, libc::SIGHUP);
    }

    /// Overwrites pooler.toml with `text` as is and sends SIGHUP.
    pub fn reload_raw(&self, text: &str) {
        std::fs::write(self.dir.join("pooler.toml"), text).expect("write pooler.toml");
        self.kill(self.pid, libc::SIGHUP);
    }

    /// SIGINT (PgBouncer's safe shutdown: transactions in flight finish, then
    /// sessions are closed), then waits up to 10 s for the supervisor to exit.
    /// Panics (after SIGKILL) if it does not, or if it leaves processes of its
    /// group behind.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("pgmux already stopped");
        self.kill(self.pid, libc::SIGINT);
        let status = wait_child(&mut child, STOP_DEADLINE);
        let Some(status) = status else {
            kill_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
            panic!("pgmux did not exit within {STOP_DEADLINE:?} of SIGINT");
        };
        let pgid = self.pid;
        let mut alive = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            alive = group_alive(pgid);
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive {
            let left: Vec<String> = proc_table()
                .into_iter()
                .filter(|p| p.pgrp == pgid)
                .map(|p| format!("{} ({})", p.pid, p.comm))
                .collect();
            kill_group(pgid, libc::SIGKILL);
            panic!("pgmux exited ({status}) but left processes behind: {left:?}");
        }
        status
    }
}

impl Drop for Pgmux {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: clients the test still holds are closed once idle.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGINT) };
            if wait_child(&mut child, Duration::from_secs(3)).is_none() {
                kill_group(self.pid, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        // Workers that outlived the supervisor must not outlive the test.
        if group_alive(self.pid) {
            kill_group(self.pid, libc::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== pgmux log (last 200 lines of {}) =====\n{}",
                self.log_path().display(),
                tail_file(&self.log_path(), 200)
            );
            let pg = Postgres::shared();
            eprintln!(
                "===== PostgreSQL log (last 50 lines of {}) =====\n{}\n=====",
                pg.log_path().display(),
                pg.log_tail(50)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The pgmux binary: `$PGMUX_BIN`, else `pgmux` next to the test binary's
/// `deps/` directory (target/<profile>/pgmux).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PGMUX_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "PGMUX_BIN={} does not exist", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe.parent().and_then(Path::parent).map(|profile_dir| profile_dir.join("pgmux"));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "pgmux binary not found: set PGMUX_BIN, or build it into the same profile as the \
             tests (`cargo build --release -p pgmux` before `cargo test --release`, or just run \
             scripts/test). Looked for {:?}",
            candidate
        ),
    }
}

fn toml_str(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

fn wait_child(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_group(pgid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a
    // process group, ours was created by `process_group(0)` at spawn.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
}

fn group_alive(pgid: u32) -> bool {
    // SAFETY: as in kill_group; signal 0 only checks existence.
    unsafe { libc::kill(-(pgid as libc::pid_t), 0) == 0 }
}

/// One line of /proc/<pid>/stat, the fields the fixtures use.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub comm: String,
}

/// All processes, from /proc. Processes that vanish while reading are skipped.
pub fn proc_table() -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // comm may contain spaces and parens; the fields after the last
            // ')' are fixed: state ppid pgrp ...
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let mut fields = tail.split_whitespace().skip(1);
            let ppid = fields.next()?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            Some(ProcInfo { pid, ppid, pgrp, comm })
        })
        .collect()
}

/// Runs `f` on a scoped thread; if it has not finished within `limit`, pgmux is SIGKILLed (its process group), so
/// every client blocked on it sees EOF and `f` unwinds, and the test fails naming the deadline.
pub fn with_deadline<R: Send>(pgmux: &Pgmux, limit: Duration, f: impl FnOnce() -> R + Send) -> R {
    let (tx, rx) = mpsc::channel::<()>();
    let pgid = pgmux.pid();
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        });
        let timed_out = match rx.recv_timeout(limit) {
            Ok(()) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => false, // f panicked
            Err(mpsc::RecvTimeoutError::Timeout) => true,
        };
        if timed_out {
            eprintln!("test body exceeded {limit:?}; killing pgmux. Last pgmux log lines:\n{}", {
                let log = pgmux.log();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(80)..].join("\n")
            });
            // SAFETY: kill has no memory-safety preconditions; the group was created for this pgmux.
            unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
            let _ = handle.join();
            panic!("test body did not finish within {limit:?} (pgmux hung?)");
        }
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
