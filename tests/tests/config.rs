//! The binary's command line and configuration handling: `--version`, `--check`, and refusing bad configurations
//! with a message that names the file and the key, before binding anything. These tests need no PostgreSQL.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgmux_tests::pgmux::binary;
use pgmux_tests::util::{free_port, temp_dir};

const RUN_LIMIT: Duration = Duration::from_secs(10);

/// Runs pgmux with `args` in `dir` (own process group), waiting at most [`RUN_LIMIT`]; on a timeout the group is
/// killed and the test fails.
fn run(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn pgmux");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => {
            // Nothing of the group may be left (a config error must not fork anything).
            // SAFETY: kill has no memory-safety preconditions; signal 0 only probes.
            let left = unsafe { libc::kill(-pid, 0) } == 0;
            if left {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                panic!("pgmux {args:?} exited but left processes of its group behind");
            }
            out.expect("wait for pgmux")
        }
        Err(_) => {
            // SAFETY: as above; the group is the one created by process_group(0).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            panic!("pgmux {args:?} did not exit within {RUN_LIMIT:?} (it should have refused its config)");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory holding a valid `good.toml` (TCP on a free port, Unix socket in the directory) and its auth_file.
struct Setup {
    dir: PathBuf,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = temp_dir("pgmux-config-test");
        let port = free_port();
        let s = Setup { dir, port };
        std::fs::write(
            s.dir.join("userlist.txt"),
            "\"alice\" \"alicepw\"\n\"bob\" \"md5d0763edaa9d9bd2a9516280e9044d885\"\n",
        )
        .unwrap();
        std::fs::write(s.dir.join("good.toml"), s.toml("", "")).unwrap();
        s
    }

    /// The good config with `pooler_extra` appended to `[pooler]` and `db_extra` to `[databases.appdb]` (TOML
    /// allows no duplicate keys, so the base omits the keys the bad cases set).
    fn toml(&self, pooler_extra: &str, db_extra: &str) -> String {
        let mut pooler = String::new();
        let defaults = [
            ("listen_addr", "\"127.0.0.1\"".to_string()),
            ("listen_port", self.port.to_string()),
            ("unix_socket_dir", format!("\"{}\"", self.dir.display())),
            ("auth_type", "\"md5\"".to_string()),
            ("auth_file", "\"userlist.txt\"".to_string()),
            ("pool_mode", "\"transaction\"".to_string()),
            ("listeners", "1".to_string()),
        ];
        for (k, v) in defaults {
            if !pooler_extra.lines().any(|l| l.split('=').next().map(str::trim) == Some(k)) {
                pooler.push_str(&format!("{k} = {v}\n"));
            }
        }
        pooler.push_str(pooler_extra);
        let mut db = String::new();
        for (k, v) in [("host", "\"127.0.0.1\""), ("port", "5432"), ("pool_size", "2")] {
            if !db_extra.lines().any(|l| l.split('=').next().map(str::trim) == Some(k)) {
                db.push_str(&format!("{k} = {v}\n"));
            }
        }
        db.push_str(db_extra);
        format!("[pooler]\n{pooler}\n[databases.appdb]\n{db}")
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn socket_file(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Nothing was left bound: the TCP port is free and no Unix socket file exists.
    fn assert_nothing_bound(&self, what: &str) {
        TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("{what}: port {} not free afterwards: {e}", self.port));
        assert!(!self.socket_file().exists(), "{what}: Unix socket {} was created", self.socket_file().display());
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `args` expecting failure; checks the exit status, that stderr mentions every word in `words`, and that
/// nothing was bound. Returns stderr.
fn expect_refusal(s: &Setup, what: &str, args: &[&str], words: &[&str]) -> String {
    let out = run(&s.dir, args);
    let err = text(&out.stderr);
    eprintln!("{what}: exit {:?}, stderr: {}", out.status.code(), err.trim());
    assert!(!out.status.success(), "{what}: pgmux {args:?} exited 0; stderr: {err}");
    for w in words {
        assert!(err.contains(w), "{what}: stderr does not mention {w:?}:\n{err}");
    }
    s.assert_nothing_bound(what);
    err
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn version_and_help() {
    let dir = temp_dir("pgmux-config-test");
    for flag in ["--version", "-V"] {
        let out = run(&dir, &[flag]);
        assert!(out.status.success(), "{flag}: {:?}", out.status);
        let stdout = text(&out.stdout);
        let version = stdout.trim().strip_prefix("pgmux ").unwrap_or_else(|| panic!("{flag}: {stdout:?}"));
        let parts: Vec<&str> = version.split(['.', '-', '+']).collect();
        assert!(
            parts.len() >= 3 && parts[..3].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
            "{flag}: not a version: {stdout:?}"
        );
    }
    let out = run(&dir, &["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("usage: pgmux"), "{}", text(&out.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors() {
    let s = Setup::new();
    let err = expect_refusal(&s, "no arguments", &[], &["usage: pgmux", "CONFIG"]);
    assert!(err.contains("missing CONFIG"), "{err}");
    expect_refusal(&s, "unknown option", &["--bogus", "good.toml"], &["--bogus", "usage: pgmux"]);
    expect_refusal(&s, "two config files", &["good.toml", "good.toml"], &["usage: pgmux"]);
    let out = run(&s.dir, &[]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn check_accepts_a_good_config_without_binding() {
    let s = Setup::new();
    let out = run(&s.dir, &["--check", "good.toml"]);
    assert!(out.status.success(), "--check good.toml: {:?}\n{}", out.status, text(&out.stderr));
    assert!(text(&out.stdout).contains("good.toml"), "{}", text(&out.stdout));
    s.assert_nothing_bound("--check good.toml");
    // An absolute path works too.
    let abs = s.dir.join("good.toml");
    let out = run(&s.dir, &["--check", abs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Sanity check for the "nothing bound" assertions: the same config, run for real, does bind both, and removes
/// the Unix socket when stopped.
#[test]
fn good_config_runs_binds_and_cleans_up() {
    let s = Setup::new();
    let mut child = Command::new(binary())
        .arg("good.toml")
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let up = loop {
        if std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok() {
            break true;
        }
        if start.elapsed() > RUN_LIMIT || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let socket_existed = s.socket_file().exists();
    // SAFETY: kill has no memory-safety preconditions; `pid` is our child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > RUN_LIMIT {
            // SAFETY: as above, the whole group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(up, "pgmux good.toml did not listen");
    assert!(socket_existed, "no Unix socket while running");
    assert!(status.is_some_and(|st| st.success()), "SIGTERM exit: {status:?}");
    s.assert_nothing_bound("after SIGTERM");
}

#[test]
fn bad_configs_are_refused_naming_file_and_key() {
    let s = Setup::new();
    // (file name, pooler extra, database extra, words stderr must contain besides the file name)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("unknown_key.toml", "bogus_key = 1\n", "", &["pooler.bogus_key", "unknown key"]),
        ("unknown_db_key.toml", "", "hots = \"x\"\n", &["databases.appdb.hots", "unknown key"]),
        ("pool_mode.toml", "pool_mode = \"sesion\"\n", "", &["pooler.pool_mode", "sesion"]),
        ("db_pool_mode.toml", "", "pool_mode = \"sesion\"\n", &["databases.appdb.pool_mode", "sesion"]),
        ("listen_port.toml", "listen_port = 70000\n", "", &["pooler.listen_port", "70000"]),
        ("listen_port_zero.toml", "listen_port = 0\n", "", &["pooler.listen_port"]),
        ("listen_port_str.toml", "listen_port = \"6432\"\n", "", &["pooler.listen_port", "integer"]),
        ("auth_type.toml", "auth_type = \"md4\"\n", "", &["pooler.auth_type", "md4"]),
        ("pool_size.toml", "default_pool_size = -1\n", "", &["pooler.default_pool_size"]),
        ("timeout.toml", "client_login_timeout = \"soon\"\n", "", &["pooler.client_login_timeout"]),
        ("max_packet.toml", "max_packet_size = 10\n", "", &["pooler.max_packet_size"]),
        ("db_port.toml", "", "port = 99999\n", &["databases.appdb.port", "99999"]),
    ];
    let mut failures = Vec::new();
    for (name, pooler, db, words) in cases {
        let path = s.write(name, &s.toml(pooler, db));
        let path_str = path.to_str().unwrap().to_string();
        for mode in [&["--check"][..], &["-v"][..]] {
            let mut args: Vec<&str> = mode.to_vec();
            args.push(&path_str);
            let mut all: Vec<&str> = words.to_vec();
            all.push(&path_str);
            let what = format!("{name} {mode:?}");
            if std::panic::catch_unwind(|| expect_refusal(&s, &what, &args, &all)).is_err() {
                failures.push(what);
            }
        }
    }
    assert!(failures.is_empty(), "failed: {failures:#?}");
}

#[test]
fn broken_files_are_refused_naming_the_file() {
    let s = Setup::new();
    // Missing config file (relative, as given on the command line).
    let err = expect_refusal(&s, "missing file", &["nope.toml"], &["nope.toml"]);
    assert!(err.to_lowercase().contains("no such file") || err.contains("cannot read"), "{err}");
    expect_refusal(&s, "missing file --check", &["--check", "nope.toml"], &["nope.toml"]);

    // TOML syntax error: file and line.
    let path = s.write("syntax.toml", &format!("{}\nthis is not toml\n", s.toml("", "")));
    let p = path.to_str().unwrap();
    expect_refusal(&s, "syntax error", &[p], &[p, "line"]);

    // No databases at all.
    let path = s.write("nodb.toml", s.toml("", "").split("[databases").next().unwrap());
    let p = path.to_str().unwrap();
    expect_refusal(&s, "no databases", &[p], &[p, "databases"]);

    // The auth_file is missing: its path is named.
    let path = s.write("noauth.toml", &s.toml("auth_file = \"missing-userlist.txt\"\n", ""));
    let p = path.to_str().unwrap();
    expect_refusal(&s, "missing auth_file", &[p], &["missing-userlist.txt"]);

    // A malformed auth_file line: file and line number.
    s.write("bad-userlist.txt", "\"alice\" \"alicepw\"\n\"bob\" bobpw\n");
    let path = s.write("badauth.toml", &s.toml("auth_file = \"bad-userlist.txt\"\n", ""));
    let p = path.to_str().unwrap();
    expect_refusal(&s, "malformed auth_file", &["--check", p], &["bad-userlist.txt", "line 2"]);
    expect_refusal(&s, "malformed auth_file (run)", &[p], &["bad-userlist.txt", "line 2"]);
}

#[test]
fn config_errors_come_before_binding() {
    // Hold the configured port: a pgmux that bound before validating would complain about the address instead.
    let s = Setup::new();
    let path = s.write("bad.toml", &s.toml("pool_mode = \"sesion\"\n", ""));
    let p = path.to_str().unwrap();
    let holder = TcpListener::bind(("127.0.0.1", s.port)).unwrap();
    let out = run(&s.dir, &[p]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("pooler.pool_mode"), "{err}");
    assert!(!err.to_lowercase().contains("in use"), "bound before validating: {err}");
    assert!(!s.socket_file().exists());
    drop(holder);

    // -d without a logfile is refused before binding too.
    let out = run(&s.dir, &["-d", "good.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("logfile"), "{}", text(&out.stderr));
    s.assert_nothing_bound("-d without logfile");
}

#[test]
fn failure_after_binding_leaves_no_socket_file() {
    // The pidfile is only written after the sockets are bound; if that fails, pgmux must not leave its Unix socket
    // file (nor the port) behind.
    let s = Setup::new();
    let path = s.write("pidfile.toml", &s.toml("pidfile = \"/nonexistent-dir-for-pgmux-test/pgmux.pid\"\n", ""));
    let p = path.to_str().unwrap();
    expect_refusal(&s, "pidfile in a missing directory", &[p], &["pidfile", "/nonexistent-dir-for-pgmux-test"]);
}
