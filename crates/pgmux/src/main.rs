//! pgmux: a PostgreSQL connection pooler built as a family of processes.
//!
//! `main` reads the command line and the configuration, binds the listen sockets and hands over to the supervisor,
//! which forks the listeners and workers. Nothing is bound when the configuration is wrong.

mod admin;
mod board;
mod client_auth;
mod listener;
mod logging;
mod net;
mod process;
mod sd_notify;
mod sockets;
mod supervisor;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info};

const USAGE: &str = "usage: pgmux [-d] [-v] [-q] [--check] CONFIG
       pgmux --version

  -d, --daemon   run in the background (requires logfile)
  -v, --verbose  more logging (repeat for more)
  -q, --quiet    only warnings and errors on stderr
  --check        validate CONFIG and its auth_file, then exit
  -V, --version  print the version
  -h, --help     this help";

struct Args {
    config: PathBuf,
    daemon: bool,
    verbose: u8,
    quiet: bool,
    check: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut config = None;
    let (mut daemon, mut verbose, mut quiet, mut check) = (false, 0u8, false, false);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-d" | "--daemon" => daemon = true,
            "-q" | "--quiet" => quiet = true,
            "--check" => check = true,
            "-V" | "--version" => {
                println!("pgmux {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            s if s.starts_with('-') && s.len() > 1 && s.chars().skip(1).all(|c| c == 'v') => {
                verbose = verbose.saturating_add((s.len() - 1) as u8)
            }
            "--verbose" => verbose = verbose.saturating_add(1),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if config.replace(PathBuf::from(s)).is_some() {
                    return Err("only one CONFIG file may be given".into());
                }
            }
        }
    }
    let config = config.ok_or("missing CONFIG")?;
    Ok(Some(Args { config, daemon, verbose, quiet, check }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
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
    let (config, userlist) = match supervisor::load_files(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgmux: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!("pgmux: {}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.daemon && config.pooler.logfile.is_none() {
        eprintln!("pgmux: -d needs a logfile in the configuration (stderr goes away)");
        return ExitCode::from(1);
    }
    if let Err(e) = logging::init(args.verbose, args.quiet, config.pooler.logfile.as_deref()) {
        eprintln!("pgmux: cannot open logfile: {e}");
        return ExitCode::from(1);
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
    let code = match supervisor::Supervisor::new(config, userlist, listen) {
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
