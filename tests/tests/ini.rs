//! PgBouncer's own configuration, end to end: the same pgbouncer.ini and userlist.txt run by pgmux and by the real
//! PgBouncer (Debian's `pgbouncer`) serve the same queries through a forced-user database, a plain one and the `*`
//! fallback; settings without effect are logged as such; `--check` on good and bad files; `--format` and a reload
//! keeping it; `-R` refused; `-u` switching user after binding when run as root, and refused otherwise.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgmux_tests::pgmux::{binary, proc_table};
use pgmux_tests::util::{free_port, tail_file, temp_dir, wait_until};
use pgmux_tests::Postgres;

const START_DEADLINE: Duration = Duration::from_secs(15);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A directory holding pgbouncer.ini (with an `%include`), userlist.txt, and a port for them.
struct Setup {
    dir: PathBuf,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        let s = Setup { dir: temp_dir("pgmux-ini-test"), port: free_port() };
        s.write("userlist.txt", "\"alice\" \"alicepw\"\n\"bob\" \"bobpw\"\n");
        std::fs::create_dir_all(s.dir.join("conf.d")).unwrap();
        s.write("conf.d/tuning.ini", "; included from pgbouncer.ini\ndefault_pool_size = 2\nmax_client_conn = 50\n");
        s.write("pgbouncer.ini", &s.ini(""));
        s
    }

    /// The file both poolers run. Relative names (the include, auth_file) are the same for PgBouncer, which takes
    /// them relative to its working directory (the test runs it in `dir`), and pgmux, which takes them relative to
    /// the file. `extra` is appended to `[pgbouncer]`.
    fn ini(&self, extra: &str) -> String {
        let pg = Postgres::shared().port();
        format!(
            ";; one file for pgmux and PgBouncer\n\
             [databases]\n\
             ; every client logs in upstream as md5user (md5 over TCP: the password here is needed)\n\
             forced = host=127.0.0.1 port={pg} dbname='otherdb' user=md5user password='md5pw'\n\
             app = host=127.0.0.1 port={pg} dbname=appdb\n\
             * = host=127.0.0.1 port={pg}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = md5\n\
             auth_file = userlist.txt\n\
             pool_mode = transaction\n\
             %include conf.d/tuning.ini\n\
             server_reset_query = DISCARD ALL\n\
             tcp_keepalive = 1\n\
             server_fast_close = 1\n\
             {extra}",
            port = self.port
        )
    }

    /// Line of `tcp_keepalive` in [`Setup::ini`].
    const KEEPALIVE_LINE: usize = 17;

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn assert_port_free(&self, what: &str) {
        std::net::TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("{what}: port {} not free: {e}", self.port));
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A pooler process under test, in its own process group, its output in `log`.
struct Running {
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
    what: String,
}

impl Running {
    /// Spawns `cmd` and waits until `port` accepts TCP connections.
    fn start(mut cmd: Command, port: u16, log: PathBuf, what: &str) -> Running {
        let out = File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut r = Running { pid: child.id() as i32, child: Some(child), log, what: what.to_string() };
        let start = Instant::now();
        loop {
            if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{what} exited during start-up ({status}):\n{}", tail_file(&r.log, 50));
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return r;
            }
            assert!(start.elapsed() < START_DEADLINE, "{what} did not listen on {port}:\n{}", tail_file(&r.log, 50));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// SIGINT, then waits for the exit; panics (after SIGKILL) if it does not come.
    fn stop(self) {
        self.stop_with(libc::SIGINT);
    }

    fn stop_with(mut self, sig: i32) {
        let mut child = self.child.take().expect("already stopped");
        signal(self.pid, sig);
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > STOP_DEADLINE {
                signal(-self.pid, libc::SIGKILL);
                let _ = child.wait();
                panic!("{} did not exit within {STOP_DEADLINE:?} of signal {sig}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Children a supervisor leaves behind must not outlive the test.
        wait_until(Duration::from_secs(3), "the process group to exit", || !group_alive(self.pid));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(-self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
        if group_alive(self.pid) {
            signal(-self.pid, libc::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("===== {} log ({}) =====\n{}", self.what, self.log.display(), tail_file(&self.log, 100));
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pids are our children or their groups.
    unsafe { libc::kill(pid, sig) };
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: as in `signal`; signal 0 only checks existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn pgmux_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG");
    cmd
}

/// Runs pgmux to completion (it is expected to exit by itself).
fn pgmux_output(dir: &Path, args: &[&str]) -> Output {
    let mut child = pgmux_cmd(dir, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > STOP_DEADLINE {
            signal(-pid, libc::SIGKILL);
            panic!("pgmux {args:?} did not exit within {STOP_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn connect(port: u16, db: &str, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={port} dbname={db} user={user} password={password} connect_timeout=10 \
         application_name=ini-test"
    );
    postgres::Client::connect(&conn, postgres::NoTls)
}

/// The same conversation with either pooler; returns what it saw, for comparing the two.
fn conversation(port: u16) -> Vec<String> {
    let mut seen = Vec::new();
    for (db, user, password) in [
        ("app", "alice", "alicepw"),
        ("forced", "alice", "alicepw"),
        ("otherdb", "alice", "alicepw"),
        ("appdb", "bob", "bobpw"),
    ] {
        let mut c = connect(port, db, user, password).unwrap_or_else(|e| panic!("{user}@{db}: {e:?}"));
        let row = c.query_one("SELECT current_user::text, current_database()::text", &[]).unwrap();
        let mut tx = c.transaction().unwrap();
        let n: i32 = tx.query_one("SELECT 40 + 2", &[]).unwrap().get(0);
        tx.commit().unwrap();
        seen.push(format!("{user}@{db} -> {}@{} ({n})", row.get::<_, String>(0), row.get::<_, String>(1)));
    }
    for (db, user, password) in [("app", "alice", "wrong"), ("app", "mallory", "x")] {
        let refused = connect(port, db, user, password).is_err();
        seen.push(format!("{user}@{db} with a bad password or unknown user: refused={refused}"));
    }
    seen
}

const EXPECTED: &[&str] = &[
    "alice@app -> alice@appdb (42)",
    "alice@forced -> md5user@otherdb (42)",
    "alice@otherdb -> alice@otherdb (42)",
    "bob@appdb -> bob@appdb (42)",
    "alice@app with a bad password or unknown user: refused=true",
    "mallory@app with a bad password or unknown user: refused=true",
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The real uid of `pid`, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn pgbouncer_binary() -> PathBuf {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("PgBouncer is not installed: install the Debian package pgbouncer (scripts/test does, as root)")
        })
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn the_same_pgbouncer_ini_serves_through_pgmux_and_pgbouncer() {
    let s = Setup::new();

    let pgmux =
        Running::start(pgmux_cmd(&s.dir, &["pgbouncer.ini"]), s.port, s.dir.join("pgmux.log"), "pgmux pgbouncer.ini");
    let through_pgmux = conversation(s.port);
    let log = pgmux.log_text();
    // Named as pgmux was given it.
    let keepalive = format!(
        "WARN pgbouncer.ini: line {}: pgbouncer.tcp_keepalive: has no effect in pgmux: pgmux leaves this socket \
         option at the operating system's default",
        Setup::KEEPALIVE_LINE
    );
    assert!(log.contains(&keepalive), "pgmux log lacks {keepalive:?}:\n{log}");
    assert!(
        log.contains("pgbouncer.server_fast_close: has no effect in pgmux yet"),
        "pgmux log lacks the server_fast_close warning:\n{log}"
    );
    assert_eq!(log.matches("has no effect in pgmux").count(), 2, "each key is reported once:\n{log}");
    pgmux.stop();
    s.assert_port_free("after pgmux stopped");
    assert_eq!(through_pgmux, EXPECTED);

    // PgBouncer refuses to run as root; as root, let it switch to postgres itself (-u, as pgmux does).
    let mut cmd = Command::new(pgbouncer_binary());
    if is_root() {
        cmd.args(["-u", "postgres"]);
    }
    cmd.arg("pgbouncer.ini").current_dir(&s.dir);
    let pgbouncer = Running::start(cmd, s.port, s.dir.join("pgbouncer.log"), "pgbouncer pgbouncer.ini");
    let through_pgbouncer = conversation(s.port);
    // PgBouncer's SIGINT waits for its servers to be released; SIGTERM is its immediate exit.
    pgbouncer.stop_with(libc::SIGTERM);
    assert_eq!(through_pgbouncer, through_pgmux, "PgBouncer and pgmux answered differently");
}

#[test]
fn check_accepts_a_good_ini_and_lists_what_has_no_effect() {
    let s = Setup::new();
    let out = pgmux_output(&s.dir, &["--check", "pgbouncer.ini"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "--check pgbouncer.ini: {:?}\n{stderr}", out.status);
    assert_eq!(stdout, "pgmux: pgbouncer.ini: configuration is valid (2 warnings above)\n");
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[0].starts_with(&format!(
        "pgmux: warning: pgbouncer.ini: line {}: pgbouncer.tcp_keepalive: has no effect in pgmux: ",
        Setup::KEEPALIVE_LINE
    )));
    assert!(warnings[1].contains("pgbouncer.server_fast_close: has no effect in pgmux yet"), "{stderr}");
    s.assert_port_free("--check");

    // Whatever the name, --format ini reads PgBouncer's format, and --format toml does not.
    std::fs::copy(s.dir.join("pgbouncer.ini"), s.dir.join("pgbouncer.conf")).unwrap();
    let out = pgmux_output(&s.dir, &["--check", "--format", "ini", "pgbouncer.conf"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = pgmux_output(&s.dir, &["--check", "pgbouncer.conf"]);
    assert!(!out.status.success(), "pgbouncer.conf read as TOML should fail");
    let out = pgmux_output(&s.dir, &["--check", "--format=toml", "pgbouncer.ini"]);
    assert!(!out.status.success() && text(&out.stderr).contains("pgbouncer.ini: line 1"), "{}", text(&out.stderr));
}

#[test]
fn bad_ini_files_are_refused_naming_file_line_and_key() {
    let s = Setup::new();
    let good = s.ini("");
    let line_of = |needle: &str| good.lines().position(|l| l.starts_with(needle)).map(|i| i + 1).unwrap();
    // (what, file text, file the message names, words the message has)
    let cases: Vec<(&str, String, &str, Vec<String>)> = vec![
        (
            "unknown key",
            format!("{good}bogus_key = 1\n"),
            "bad.ini",
            vec![format!("line {}: pgbouncer.bogus_key: unknown key", good.lines().count() + 1)],
        ),
        (
            "bad value",
            good.replace(&format!("listen_port = {}", s.port), "listen_port = 99999"),
            "bad.ini",
            vec![format!("line {}: pgbouncer.listen_port: invalid value 99999", line_of("listen_port"))],
        ),
        (
            "connection string",
            good.replace("app = host=127.0.0.1", "app = host=127.0.0.1 dbname='appdb"),
            "bad.ini",
            vec![format!("line {}: databases.app: dbname: single-quoted value lacks", line_of("app ="))],
        ),
        (
            "unknown connection key",
            good.replace("app = host=127.0.0.1", "app = hots=127.0.0.1"),
            "bad.ini",
            vec![format!("line {}: databases.app.hots: unknown key", line_of("app =")), "did you mean host?".into()],
        ),
        ("section", format!("{good}[pgbouncr]\n"), "bad.ini", vec!["unknown section [pgbouncr]".into()]),
        ("syntax", format!("{good}this is not ini\n"), "bad.ini", vec!["expected `key = value`".into()]),
        (
            "missing include",
            good.replace("conf.d/tuning.ini", "conf.d/missing.ini"),
            "bad.ini",
            vec![format!("line {}: %include ", line_of("%include")), "missing.ini: cannot read".into()],
        ),
        (
            "error inside an include",
            good.replace("conf.d/tuning.ini", "conf.d/broken.ini"),
            "conf.d/broken.ini",
            vec!["line 2: pgbouncer.max_client_conn: invalid value \"lots\"".into()],
        ),
        ("auth_type", format!("{good}auth_type = hba\n"), "bad.ini", vec!["pgmux does not support".into()]),
        (
            "missing auth_file",
            good.replace("auth_file = userlist.txt", "auth_file = missing.txt"),
            "missing.txt",
            vec!["cannot read file".into()],
        ),
        ("no [pgbouncer]", "[databases]\nx = host=h\n".into(), "bad.ini", vec!["no [pgbouncer] section".into()]),
    ];
    s.write("conf.d/broken.ini", "; fine\nmax_client_conn = lots\n");
    let mut failures = Vec::new();
    for (what, contents, named, words) in cases {
        s.write("bad.ini", &contents);
        for mode in [&["--check", "bad.ini"][..], &["bad.ini"][..]] {
            let out = pgmux_output(&s.dir, mode);
            let stderr = text(&out.stderr);
            // Files are named as pgmux was given them: relative here, as is what they include and name.
            let ok = out.status.code() == Some(1)
                && stderr.contains(&format!("pgmux: {named}: "))
                && words.iter().all(|w| stderr.contains(w.as_str()));
            if !ok {
                failures.push(format!("{what} {mode:?}: exit {:?}, stderr: {stderr}", out.status.code()));
            }
            s.assert_port_free(what);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn reload_reads_the_file_in_the_format_it_started_with() {
    let s = Setup::new();
    std::fs::copy(s.dir.join("pgbouncer.ini"), s.dir.join("pooler.conf")).unwrap();
    let pgmux = Running::start(
        pgmux_cmd(&s.dir, &["--format=ini", "pooler.conf"]),
        s.port,
        s.dir.join("pgmux.log"),
        "pgmux --format=ini pooler.conf",
    );
    let pg = Postgres::shared().port();
    let text = s.ini("").replace("[pgbouncer]", &format!("late = host=127.0.0.1 port={pg} dbname=appdb\n[pgbouncer]"));
    s.write("pooler.conf", &text);
    signal(pgmux.pid, libc::SIGHUP);
    wait_until(Duration::from_secs(10), "database late to serve appdb after SIGHUP", || {
        connect(s.port, "late", "alice", "alicepw")
            .and_then(|mut c| c.query_one("SELECT current_database()::text", &[]))
            .is_ok_and(|row| row.get::<_, String>(0) == "appdb")
    });
    pgmux.stop();
}

#[test]
fn reboot_is_refused() {
    let s = Setup::new();
    for flag in ["-R", "--reboot", "-dR"] {
        let out = pgmux_output(&s.dir, &[flag, "pgbouncer.ini"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.starts_with("pgmux: -R/--reboot: online restart is not supported"), "{flag}: {stderr}");
        assert!(stderr.contains("SIGTERM") && stderr.contains("so_reuseport"), "{stderr}");
        s.assert_port_free(flag);
    }
}

#[test]
fn user_switches_after_binding_only_as_root() {
    let s = Setup::new();
    let out = pgmux_output(&s.dir, &["-u", "no_such_user_for_pgmux", "pgbouncer.ini"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-u no_such_user_for_pgmux: no such user"), "{}", text(&out.stderr));
    s.assert_port_free("-u unknown user");

    if !is_root() {
        let out = pgmux_output(&s.dir, &["-u", "root", "pgbouncer.ini"]);
        assert!(text(&out.stderr).contains("switching to another user needs root"), "{}", text(&out.stderr));
        eprintln!("not root: the switch itself is tested only when the tests run as root (as in CI)");
        return;
    }
    let (uid, gid) = os_user("postgres").expect("an OS user postgres (from postgresql-15)");

    // Not root: refused before binding, saying why.
    let mut cmd = pgmux_cmd(&s.dir, &["-u", "root", "pgbouncer.ini"]);
    cmd.uid(uid).gid(gid).stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("-u root: switching to another user needs root, and pgmux runs as uid {uid}")));
    s.assert_port_free("-u as non-root");

    // Root: binds (here also a Unix socket, in a directory postgres owns), then every process runs as postgres.
    let sock = s.dir.join("sock");
    std::fs::create_dir(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).unwrap();
    s.write("user.ini", &s.ini("").replace("unix_socket_dir =\n", &format!("unix_socket_dir = {}\n", sock.display())));
    let pgmux = Running::start(
        pgmux_cmd(&s.dir, &["-u", "postgres", "user.ini"]),
        s.port,
        s.dir.join("pgmux.log"),
        "pgmux -u postgres",
    );
    let socket_file = sock.join(format!(".s.PGSQL.{}", s.port));
    assert!(socket_file.exists(), "no Unix socket {}", socket_file.display());
    assert_eq!(conversation(s.port), EXPECTED);
    let family: Vec<(u32, String)> = proc_table()
        .into_iter()
        .filter(|p| p.pid == pgmux.pid as u32 || p.ppid == pgmux.pid as u32)
        .map(|p| (p.pid, p.comm))
        .collect();
    assert!(family.iter().any(|(_, c)| c == "pgmux-worker"), "{family:?}");
    for (pid, comm) in &family {
        assert_eq!(uid_of(*pid), Some(uid), "{comm} ({pid}) does not run as postgres");
    }
    assert!(pgmux.log_text().contains("running as user postgres"), "{}", pgmux.log_text());
    pgmux.stop();
    assert!(!socket_file.exists(), "the Unix socket was left behind by the switched pgmux");
}
