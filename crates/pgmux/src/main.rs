//! pgmux: a PostgreSQL connection pooler built as a family of processes.
//!
//! `main` reads the command line and the configuration, binds the listen sockets and hands over to the supervisor,
//! which forks the listeners and workers. Nothing is bound when the configuration is wrong.

mod admin;
mod board;
mod client_auth;
mod listener;
mod logging;
mod metrics;
mod net;
mod process;
mod sd_notify;
mod sockets;
mod supervisor;
mod worker;

use std::ffi::CString;
use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info, warn};
use pgmux_config::Format;

const USAGE: &str = "usage: pgmux [OPTION]... CONFIG
       pgmux -V | -h

CONFIG is a pgbouncer.ini (by its .ini extension) or a pooler.toml.

  -d, --daemon          run in the background (requires logfile)
  -q, --quiet           only warnings and errors
  -v, --verbose         more logging (repeat for more)
  -u, --user=USER       switch to OS user USER after binding the listen sockets (needs root)
      --format=FORMAT   read CONFIG as ini or toml, whatever its extension
      --check           validate CONFIG and its auth_file, list settings without effect, then exit
  -R, --reboot          refused: pgmux has no online restart
  -V, --version         print the version
  -h, --help            this help";

/// Why `-R` is refused, and what to do instead.
const NO_REBOOT: &str = "-R/--reboot: online restart is not supported: pgmux cannot take over the sockets and \
                         connections of a running pgmux. Restart with SIGTERM instead (the old pgmux stops accepting, \
                         serves its sessions to the end and exits) and start the new one; zero-downtime rolling \
                         restarts will use so_reuseport, which pgmux accepts but does not act on yet";

#[derive(Debug, Default)]
struct Args {
    config: PathBuf,
    format: Option<Format>,
    daemon: bool,
    verbose: u8,
    quiet: bool,
    check: bool,
    user: Option<String>,
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Args),
    Version,
    Help,
}

/// Options as PgBouncer's getopt takes them (`-dv`, `-u USER`, `-uUSER`, `--user=USER`, `--user USER`, `--`),
/// plus pgmux's own `--check` and `--format`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut a = Args::default();
    let (mut config, mut reboot) = (None, false);
    let mut args = args.into_iter();
    let positional = |s: String, config: &mut Option<PathBuf>| {
        if config.replace(PathBuf::from(s)).is_some() {
            return Err("only one CONFIG file may be given".to_string());
        }
        Ok(())
    };
    while let Some(arg) = args.next() {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let mut value = |what: &str| match inline.clone().or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("--{name} needs {what}")),
            };
            match name {
                "" => {
                    for rest in args.by_ref() {
                        positional(rest, &mut config)?;
                    }
                }
                "daemon" => a.daemon = true,
                "quiet" => a.quiet = true,
                "verbose" => a.verbose = a.verbose.saturating_add(1),
                "check" => a.check = true,
                "reboot" => reboot = true,
                "version" => return Ok(Command::Version),
                "help" => return Ok(Command::Help),
                "user" => a.user = Some(value("a user name")?),
                "format" => {
                    let f = value("ini or toml")?;
                    a.format = Some(Format::from_name(&f).ok_or(format!("--format {f}: expected ini or toml"))?);
                }
                _ => return Err(format!("unknown option --{name}")),
            }
            if inline.is_some() && !matches!(name, "user" | "format") {
                return Err(format!("option --{name} takes no value"));
            }
            continue;
        }
        let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
            positional(arg, &mut config)?;
            continue;
        };
        for (i, c) in shorts.char_indices() {
            match c {
                'd' => a.daemon = true,
                'q' => a.quiet = true,
                'v' => a.verbose = a.verbose.saturating_add(1),
                'R' => reboot = true,
                'V' => return Ok(Command::Version),
                'h' => return Ok(Command::Help),
                'u' => {
                    // The rest of this argument, or the next one, is the user (getopt's "u:").
                    let rest = shorts.get(i + 1..).unwrap_or_default();
                    let user = if rest.is_empty() { args.next() } else { Some(rest.to_string()) };
                    a.user = Some(user.filter(|u| !u.is_empty()).ok_or("-u needs a user name")?);
                    break;
                }
                other => return Err(format!("unknown option -{other}")),
            }
        }
    }
    if reboot {
        return Err(NO_REBOOT.to_string());
    }
    a.config = config.ok_or("missing CONFIG")?;
    Ok(Command::Run(a))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(a)) => a,
        Ok(Command::Version) => {
            println!("pgmux {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) if e == NO_REBOOT => {
            eprintln!("pgmux: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("pgmux: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Signals the supervisor reads from its signalfd are blocked from the start, so one that arrives while the
    // configuration is read or the sockets are bound waits for the loop instead of killing the process.
    if !args.check {
        if let Err(e) = process::supervisor_signals().thread_block() {
            eprintln!("pgmux: blocking signals: {e}");
            return ExitCode::from(1);
        }
    }
    let format = args.format.unwrap_or_else(|| Format::of_path(&args.config));
    let (config, userlist) = match supervisor::load_files(&args.config, format) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgmux: {e}");
            return ExitCode::from(1);
        }
    };
    // As in PgBouncer, the command line's user wins over the file's.
    let user_name = args.user.clone().or_else(|| config.pooler.user.clone());
    let user = match &user_name {
        Some(name) => match target_user(name, args.check) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("pgmux: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    if args.check {
        for w in &config.warnings {
            eprintln!("pgmux: warning: {w}");
        }
        let notes = match config.warnings.len() {
            0 => String::new(),
            1 => " (1 warning above)".to_string(),
            n => format!(" ({n} warnings above)"),
        };
        println!("pgmux: {}: configuration is valid{notes}", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.daemon && config.pooler.logfile.is_none() {
        eprintln!("pgmux: -d needs a logfile in the configuration (stderr goes away)");
        return ExitCode::from(1);
    }
    if let Err(e) = logging::init(args.verbose.max(config.pooler.verbose), args.quiet, config.pooler.logfile.as_deref())
    {
        eprintln!("pgmux: cannot open logfile: {e}");
        return ExitCode::from(1);
    }
    for w in &config.warnings {
        warn!("{w}");
    }
    let nofile = process::raise_nofile_limit();
    let wanted = u64::from(config.pooler.max_client_conn) * 2 + 64;
    if nofile < wanted {
        log::warn!(
            "open files limit is {nofile}; max_client_conn {} needs about {wanted} (the supervisor keeps a copy of \
             every client socket): raise it (ulimit -n, LimitNOFILE=)",
            config.pooler.max_client_conn
        );
    }
    if let Err(e) = process::ignore_sigpipe() {
        eprintln!("pgmux: {e}");
        return ExitCode::from(1);
    }
    let listen = match sockets::bind_all(
        &config.pooler.listen_addr,
        config.pooler.listen_port,
        config.pooler.unix_socket_dir.as_deref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    let _socket_files = sockets::SocketFiles::of(&listen);
    if listen.is_empty() {
        error!("nothing to listen on: listen_addr and unix_socket_dir are both empty");
        return ExitCode::from(1);
    }
    let metrics = match config.pooler.metrics_listen.as_deref().map(sockets::bind_metrics).transpose() {
        Ok(m) => m,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(user) = &user {
        if let Err(e) = switch_user(user, &config.pooler) {
            error!("-u {}: {e}", user.name);
            return ExitCode::from(1);
        }
        info!("running as user {} (uid {}, gid {})", user.name, user.uid, user.gid);
    }
    if args.daemon {
        if let Err(e) = daemonize() {
            error!("cannot daemonize: {e}");
            return ExitCode::from(1);
        }
    }
    process::set_process_name("pgmux");
    let pidfile = config.pooler.pidfile.clone();
    if let Some(path) = &pidfile {
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            error!("{}: pooler.pidfile: cannot write {}: {e}", args.config.display(), path.display());
            return ExitCode::from(1);
        }
    }
    info!("pgmux {} starting", env!("CARGO_PKG_VERSION"));
    let code = match supervisor::Supervisor::new(config, userlist, listen, metrics) {
        Ok(mut s) => s.run(),
        Err(e) => {
            error!("{e}");
            1
        }
    };
    if let Some(path) = &pidfile {
        let _ = std::fs::remove_file(path);
    }
    info!("pgmux stopped");
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The OS user `-u`/`user` names, if pgmux must switch to it: `None` when pgmux already runs as that user (as
/// PgBouncer allows). Only root can switch; checked before anything is bound, so a refusal leaves nothing behind.
/// `--check` only checks that the user exists.
fn target_user(name: &str, check_only: bool) -> Result<Option<nix::unistd::User>, String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("-u {name}: cannot look up the user: {e}"))?
        .ok_or_else(|| format!("-u {name}: no such user"))?;
    let me = nix::unistd::geteuid();
    if check_only || user.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(format!(
            "-u {name}: switching to another user needs root, and pgmux runs as uid {me}; start it as root, or as \
             {name} without -u"
        ));
    }
    Ok(Some(user))
}

/// Becomes `user` for good (groups, gid, uid), after the listen sockets are bound: a port below 1024 stays usable.
/// The Unix socket file and the log file, created as root, are handed to `user` first so that pgmux can still
/// remove the one (in a sticky /tmp) and append to the other after a restart without `-u`.
fn switch_user(user: &nix::unistd::User, pooler: &pgmux_config::Pooler) -> Result<(), String> {
    use nix::unistd::{chown, initgroups, setgid, setuid};
    let socket = pooler.unix_socket_dir.as_ref().map(|dir| dir.join(format!(".s.PGSQL.{}", pooler.listen_port)));
    for path in socket.iter().chain(pooler.logfile.iter()) {
        if path.exists() {
            chown(path.as_path(), Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot hand {} to the user: {e}", path.display()))?;
        }
    }
    let name = CString::new(user.name.as_str()).map_err(|e| format!("bad user name: {e}"))?;
    initgroups(&name, user.gid).map_err(|e| format!("initgroups: {e}"))?;
    setgid(user.gid).map_err(|e| format!("setgid({}): {e}", user.gid))?;
    setuid(user.uid).map_err(|e| format!("setuid({}): {e}", user.uid))?;
    Ok(())
}

/// Classic double fork: the grandchild runs on, detached from the terminal, with stdio on /dev/null.
fn daemonize() -> Result<(), String> {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: no threads exist yet, so the child's copy of the process is consistent.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(|e| e.to_string())?;
    // SAFETY: as above; still single-threaded.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| e.to_string())?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns; `null` stays valid during the call.
        let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse_args(args.iter().map(|s| s.to_string()))? {
            Command::Run(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn pgbouncer_style_options() {
        let a = run(&["-d", "-vv", "-q", "-u", "postgres", "pgbouncer.ini"]).unwrap();
        assert!(a.daemon && a.quiet && !a.check);
        assert_eq!((a.verbose, a.user.as_deref(), a.config.to_str()), (2, Some("postgres"), Some("pgbouncer.ini")));
        let a = run(&["--daemon", "--verbose", "--verbose", "--user=alice", "x.ini"]).unwrap();
        assert_eq!((a.daemon, a.verbose, a.user.as_deref()), (true, 2, Some("alice")));
        assert_eq!(run(&["-dvupostgres", "x"]).unwrap().user.as_deref(), Some("postgres"), "getopt's -uUSER");
        assert_eq!(run(&["--user", "bob", "x"]).unwrap().user.as_deref(), Some("bob"));
        assert_eq!(run(&["--", "-odd-name.ini"]).unwrap().config, PathBuf::from("-odd-name.ini"));
        let a = run(&["--check", "--format=ini", "conf"]).unwrap();
        assert_eq!((a.check, a.format), (true, Some(Format::Ini)));
        assert_eq!(run(&["--format", "toml", "conf"]).unwrap().format, Some(Format::Toml));
        assert!(matches!(parse_args(["-V".to_string()]), Ok(Command::Version)));
        assert!(matches!(parse_args(["x".to_string(), "--help".to_string()]), Ok(Command::Help)));
        assert!(matches!(parse_args(["-dh".to_string()]), Ok(Command::Help)));
    }

    #[test]
    fn refusals() {
        for (args, message) in [
            (&["-R", "x.ini"][..], NO_REBOOT),
            (&["--reboot", "x.ini"][..], NO_REBOOT),
            (&["-u"][..], "-u needs a user name"),
            (&["x", "--user"][..], "--user needs a user name"),
            (&["--user=", "x"][..], "--user needs a user name"),
            (&["--format=yaml", "x"][..], "--format yaml: expected ini or toml"),
            (&["--daemon=1", "x"][..], "option --daemon takes no value"),
            (&["-x", "c"][..], "unknown option -x"),
            (&["--bogus", "c"][..], "unknown option --bogus"),
            (&["a", "b"][..], "only one CONFIG file may be given"),
            (&[][..], "missing CONFIG"),
        ] {
            assert_eq!(run(args).unwrap_err(), message, "{args:?}");
        }
    }
}
