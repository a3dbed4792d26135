//! Log setup shared by every pgmux process.
//!
//! Each line names the process that wrote it ("supervisor", "listener-1", "worker-3 appdb/alice"). A forked child
//! inherits the parent's logger, so the role lives in a global that the format function reads and that the child
//! overwrites right after `fork` (the process is single-threaded then, so nothing else reads it concurrently).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::RwLock;

static ROLE: RwLock<String> = RwLock::new(String::new());
/// The log file's descriptor, which forked children must keep open.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

pub fn log_fd() -> Option<std::os::fd::RawFd> {
    let fd = LOG_FD.load(Ordering::Relaxed);
    (fd >= 0).then_some(fd)
}

/// Set the process role shown on every log line from now on.
pub fn set_role(role: impl Into<String>) {
    if let Ok(mut r) = ROLE.write() {
        *r = role.into();
    }
}

/// Install the logger once, in the supervisor before any fork. `verbosity`: 0 = info, 1 = debug, 2+ = trace;
/// `quiet` lowers stderr output to warnings. `RUST_LOG` still overrides.
pub fn init(verbosity: u8, quiet: bool, logfile: Option<&Path>) -> std::io::Result<()> {
    let level = match (quiet, verbosity) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    set_role("supervisor");
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(|buf, record| {
        let role = ROLE.read().map(|r| r.clone()).unwrap_or_default();
        writeln!(
            buf,
            "{} {} [{}] {} {}",
            buf.timestamp_millis(),
            std::process::id(),
            role,
            record.level(),
            record.args()
        )
    });
    if let Some(path) = logfile {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        LOG_FD.store(std::os::fd::AsRawFd::as_raw_fd(&file), Ordering::Relaxed);
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    // A second init (tests) is harmless; ignore the error.
    let _ = builder.try_init();
    Ok(())
}
