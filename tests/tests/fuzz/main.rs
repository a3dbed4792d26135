//! Bounded-time fuzzing of every decoder that reads bytes pgmux did not write itself: the startup packet, frontend
//! message framing and bodies (and the few backend bodies and SCRAM messages pgmux reads), the SQL lexer and
//! classifier, the inter-process `Msg` and `SessionRecord` decoders, and the pooler.toml and userlist.txt parsers.
//!
//! cargo-fuzz needs a nightly toolchain and a long-running process; this harness runs on stable inside
//! `cargo test`, so CI exercises it on every run. Each target starts from valid encodings built by a structure-aware
//! generator (real startup packets, Parse/Bind/Execute streams, records from `SessionRecord::encode`, SQL with
//! dollar quotes, nested comments, `E''` strings and unicode, ...), then mutates them (bit flips, inserted,
//! deleted and duplicated runs, truncation, splices from other valid inputs, length words set to extremes). Every
//! decode runs under `catch_unwind`: a panic is a failure, and so is a broken property: encode → decode is the
//! identity, a decoded value re-encodes to exactly the bytes it came from (the encodings are canonical), spans
//! point into the input on char boundaries, and so on.
//!
//! A failure names the target, the seed and the case, and prints the input (shrunk) in hex, so it reproduces
//! without the harness. Environment:
//!
//! - `PGMUX_FUZZ_SECS`: seconds per target (default 2; at least 200 cases run whatever the budget).
//! - `PGMUX_FUZZ_SEED`: base seed, decimal or `0x` hex (default: a fresh one per run, printed).
//! - `PGMUX_FUZZ_CASE`: run only this case of the seed (to reproduce a report).
//!
//! A longer run of one target, with its progress shown:
//!
//! ```sh
//! PGMUX_FUZZ_SECS=600 cargo test --release -p pgmux-tests --test fuzz -- --nocapture sql
//! ```

mod config;
mod gen;
mod ipc;
mod sql;
mod wire;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gen::{hex, splitmix64, Rng};

/// Cases every target runs even when its time budget is spent (a loaded machine still fuzzes a little).
const MIN_CASES: u64 = 200;
/// One decode of one small input taking this much CPU time means super-linear behaviour. (CPU time of the thread,
/// not wall time: on a shared machine a thread can wait seconds for a core.)
const SLOW_CASE: Duration = Duration::from_secs(2);
/// Shrinking stops after this many attempts or this long, whichever comes first.
const SHRINK_ATTEMPTS: usize = 4000;
const SHRINK_TIME: Duration = Duration::from_secs(20);

struct Settings {
    secs: f64,
    seed: u64,
    only_case: Option<u64>,
}

fn settings() -> Settings {
    let secs = match std::env::var("PGMUX_FUZZ_SECS") {
        Ok(v) => v.trim().parse::<f64>().unwrap_or_else(|_| panic!("PGMUX_FUZZ_SECS={v:?} is not a number")),
        Err(_) => 2.0,
    };
    let seed = match std::env::var("PGMUX_FUZZ_SEED") {
        Ok(v) => parse_u64(&v).unwrap_or_else(|| panic!("PGMUX_FUZZ_SEED={v:?} is not a number")),
        Err(_) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            splitmix64(now ^ u64::from(std::process::id()) << 32)
        }
    };
    let only_case = std::env::var("PGMUX_FUZZ_CASE")
        .ok()
        .map(|v| parse_u64(&v).unwrap_or_else(|| panic!("PGMUX_FUZZ_CASE={v:?} is not a number")));
    Settings { secs, seed, only_case }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

thread_local! {
    /// Set while a case runs: the panic hook then records the panic here instead of printing it.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once per process) a panic hook that stays silent for panics inside fuzz cases, keeping message and
/// location for the report, and behaves as before everywhere else.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let msg = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic payload)");
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg}{at}"));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f` with panics caught and silenced; `Err` holds the panic's message and location.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // Restores the previous state rather than clearing it, so a harness self-test can nest calls.
    let was = QUIET.with(|q| q.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|_| LAST_PANIC.with(|p| p.borrow().clone()))
}

/// Fuzzes one target: `gen` builds a case from its RNG (checking round-trip properties of the valid value it
/// starts from, by panicking) and returns the bytes to decode, usually mutated; `check` decodes them and panics
/// on any broken property. Runs for the time budget, then fails the test with a reproducible report if any case
/// failed.
pub fn fuzz(target: &str, gen: impl Fn(&mut Rng) -> Vec<u8>, check: impl Fn(&[u8])) {
    fuzz_with(target, &settings(), gen, check);
}

fn fuzz_with(target: &str, s: &Settings, gen: impl Fn(&mut Rng) -> Vec<u8>, check: impl Fn(&[u8])) {
    install_hook();
    let budget = Duration::from_secs_f64(s.secs.max(0.0));
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut case = s.only_case.unwrap_or(0);
    let mut cases = 0u64;
    loop {
        if s.only_case.is_some() && cases == 1 {
            break;
        }
        if s.only_case.is_none() && cases >= MIN_CASES && start.elapsed() >= budget {
            break;
        }
        let mut rng = Rng::new(s.seed ^ splitmix64(case));
        let input = match quietly(|| gen(&mut rng)) {
            Ok(input) => input,
            Err(why) => report(target, s, case, "a round trip of a valid value failed", &why, None),
        };
        let t = thread_cpu_time();
        if let Err(why) = quietly(|| check(&input)) {
            let shrunk = shrink(&input, &check);
            report(target, s, case, "decoding panicked or broke a property", &why, Some((&input, &shrunk)));
        }
        let took = thread_cpu_time().saturating_sub(t);
        slowest = slowest.max(took);
        if took > SLOW_CASE {
            let why = format!("one case took {took:?} of CPU time");
            report(target, s, case, "decoding is too slow", &why, Some((&input, &input)));
        }
        case += 1;
        cases += 1;
    }
    eprintln!(
        "fuzz {target}: {cases} cases in {:.1?} (slowest {slowest:.1?} of CPU), seed {:#x}",
        start.elapsed(),
        s.seed
    );
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the valid pointer it is given; CLOCK_THREAD_CPUTIME_ID needs no
    // other setup.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Smaller inputs that still fail, by deleting ever smaller chunks (a simple delta debugging).
fn shrink(input: &[u8], check: &impl Fn(&[u8])) -> Vec<u8> {
    let start = Instant::now();
    let mut best = input.to_vec();
    let mut attempts = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && attempts < SHRINK_ATTEMPTS && start.elapsed() < SHRINK_TIME {
        let mut i = 0;
        let mut progressed = false;
        while i < best.len() && attempts < SHRINK_ATTEMPTS && start.elapsed() < SHRINK_TIME {
            let mut candidate = best.clone();
            candidate.drain(i..(i + chunk).min(best.len()));
            attempts += 1;
            if quietly(|| check(&candidate)).is_err() {
                best = candidate;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    best
}

fn report(target: &str, s: &Settings, case: u64, what: &str, why: &str, input: Option<(&[u8], &[u8])>) -> ! {
    let mut msg = format!(
        "fuzz target `{target}`: {what}: {why}\n  seed {:#x}, case {case}; rerun with PGMUX_FUZZ_SEED={:#x} \
         PGMUX_FUZZ_CASE={case} cargo test --release -p pgmux-tests --test fuzz {target}\n",
        s.seed, s.seed
    );
    if let Some((original, shrunk)) = input {
        msg.push_str(&format!("  input ({} bytes): {}\n", original.len(), hex(original)));
        if shrunk.len() < original.len() {
            msg.push_str(&format!("  shrunk ({} bytes, still fails): {}\n", shrunk.len(), hex(shrunk)));
        }
        msg.push_str(&format!("  as text: {:?}\n", String::from_utf8_lossy(shrunk)));
    }
    panic!("{msg}");
}

// ---------------------------------------------------------------------------------------------------------------
// targets
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn startup_packet() {
    fuzz("startup_packet", wire::gen_startup, wire::check_startup);
}

#[test]
fn frontend_messages() {
    fuzz("frontend_messages", wire::gen_frontend, wire::check_frontend);
}

#[test]
fn backend_and_scram() {
    fuzz("backend_and_scram", wire::gen_backend_or_scram, wire::check_backend_or_scram);
}

#[test]
fn sql() {
    fuzz("sql", sql::gen, sql::check);
}

#[test]
fn ipc_messages() {
    fuzz("ipc_messages", ipc::gen_msg, ipc::check_msg);
}

#[test]
fn session_records() {
    fuzz("session_records", ipc::gen_record, ipc::check_record);
}

#[test]
fn pooler_toml() {
    fuzz("pooler_toml", config::gen_toml, config::check_toml);
}

#[test]
fn userlist() {
    fuzz("userlist", config::gen_userlist, config::check_userlist);
}

/// The harness itself: a decoder that panics on some inputs is caught, reported with seed and case, and the input
/// is shrunk to the bytes that matter. Without this, a harness that swallowed panics would pass every target.
#[test]
fn harness_catches_and_shrinks_a_panic() {
    install_hook();
    let check = |b: &[u8]| {
        if b.windows(2).any(|w| w == b"\xde\xad") {
            panic!("found the bad pair");
        }
    };
    let input = b"0123456789\xde\xadabcdef".to_vec();
    let err = quietly(|| check(&input)).expect_err("the check must panic");
    assert!(err.contains("found the bad pair") && err.contains("main.rs"), "{err}");
    assert_eq!(shrink(&input, &check), b"\xde\xad");
    let s = Settings { secs: 0.0, seed: 1, only_case: None };
    let gen = |rng: &mut Rng| if rng.one_in(5) { b"x\xde\xady".to_vec() } else { b"ok".to_vec() };
    let report = quietly(|| fuzz_with("selftest", &s, gen, check)).expect_err("fuzz must fail the test");
    assert!(report.contains("fuzz target `selftest`"), "{report}");
    assert!(report.contains("PGMUX_FUZZ_CASE="), "{report}");
    assert!(report.contains("shrunk (2 bytes, still fails): dead"), "{report}");
}
