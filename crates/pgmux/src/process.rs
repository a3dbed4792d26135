//! Process plumbing: forking a child role, naming it, tying its life to the supervisor, and signal set-up.
//!
//! The supervisor is single-threaded when it forks, so the child may run ordinary Rust code afterwards. The child
//! keeps only the file descriptors it is given (everything else inherited from the supervisor is closed), never
//! returns into the supervisor's code (it exits with its role's status), and dies with the supervisor
//! (PR_SET_PDEATHSIG plus a check of the parent pid, which closes the race where the parent died before the prctl).

use std::fmt;
use std::os::fd::RawFd;

use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

#[derive(Debug)]
pub enum ProcessError {
    Fork(nix::Error),
    Signal(&'static str, nix::Error),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::Fork(e) => write!(f, "fork failed: {e}"),
            ProcessError::Signal(what, e) => write!(f, "signal set-up failed ({what}): {e}"),
        }
    }
}

impl std::error::Error for ProcessError {}

/// The signals the supervisor reads through its signalfd; blocked in the supervisor, restored in children.
pub fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Ignore SIGPIPE: a client that goes away must show up as EPIPE on the write, not kill the process.
pub fn ignore_sigpipe() -> Result<(), ProcessError> {
    // SAFETY: installing SIG_IGN runs no handler code, so there is no async-signal-safety concern.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(|e| ProcessError::Signal("SIGPIPE", e))
}

/// Raise the soft limit on open files to the hard limit: the supervisor keeps a copy of every client socket (so a
/// session survives its worker's death), and a worker holds its sessions' sockets. Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Set the kernel's name for this process (what `ps -o comm`, `pgrep -x` and /proc/PID/comm show).
pub fn set_process_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// Fork a child that runs `child_main` and exits with its return value. Only the descriptors in `keep` (plus
/// stdin/stdout/stderr) stay open in the child. Returns the child's pid in the parent.
///
/// `child_main` must not return into the supervisor's code paths, which is why this function exits the child
/// itself; destructors of the supervisor's state in the child's copy of memory never run, and the descriptors they
/// own have been closed underneath them, which is harmless because nothing in the child touches them.
///
/// `keep` holds raw descriptor numbers because the descriptors themselves are moved into `child_main`; the numbers
/// only select which descriptors the close(2) sweep in the child skips.
pub fn fork_child(name: &str, keep: &[RawFd], child_main: impl FnOnce() -> i32) -> Result<Pid, ProcessError> {
    let parent = nix::unistd::getpid();
    let keep_raw: Vec<RawFd> = keep.to_vec();
    // SAFETY: the supervisor is single-threaded (no threads are ever spawned in it), so the child's copy of the
    // address space is consistent: no lock is held by a thread that does not exist in the child.
    match unsafe { nix::unistd::fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            set_process_name(name);
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if nix::unistd::getppid() != parent {
                // The supervisor died before the prctl took effect.
                std::process::exit(1);
            }
            close_inherited_fds(&keep_raw);
            let _ = child_signals();
            let code = child_main();
            std::process::exit(code);
        }
    }
}

/// Children ignore the terminal's job-control signals (Ctrl-C reaches the whole process group; the supervisor
/// decides how to shut down and tells its children over their channels) and keep SIGTERM/SIGQUIT fatal.
fn child_signals() -> Result<(), ProcessError> {
    let mut all = SigSet::empty();
    for s in supervisor_signals().iter() {
        all.add(s);
    }
    all.thread_unblock().map_err(|e| ProcessError::Signal("unblock", e))?;
    for s in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2] {
        // SAFETY: SIG_IGN and SIG_DFL run no handler code.
        unsafe { signal::signal(s, SigHandler::SigIgn) }.map_err(|e| ProcessError::Signal("ignore", e))?;
    }
    for s in [Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGCHLD] {
        // SAFETY: as above.
        unsafe { signal::signal(s, SigHandler::SigDfl) }.map_err(|e| ProcessError::Signal("default", e))?;
    }
    ignore_sigpipe()
}

/// Close every descriptor above stderr that is not in `keep`.
fn close_inherited_fds(keep: &[RawFd]) {
    let mut open: Vec<RawFd> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
                open.push(fd);
            }
        }
    }
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: the descriptor belongs to state inherited from the supervisor that this child never uses;
            // closing it (and the read_dir's own, already closed, descriptor failing with EBADF) is harmless.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// True when `pid` is still our parent; children poll this on their janitor tick as a second line of defence.
pub fn parent_alive(parent: Pid) -> bool {
    nix::unistd::getppid() == parent
}
