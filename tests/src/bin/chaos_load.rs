//! The load generator of `scripts/chaos`: writer clients with a durability ledger and idle sessions with state,
//! through pgmux, for as long as the script injects faults (see `pgmux_tests::load`).
//!
//! ```text
//! chaos_load --port PGMUX_PORT --pg-host H --pg-port P --target DB:USER[:PASSWORD]... \
//!            [--writers N] [--idle N] [--deadline SECS] --control FIFO --out DIR [--faults FILE]
//! ```
//!
//! It (re)creates the ledger tables over a direct connection to PostgreSQL (as `postgres`), starts the load,
//! writes `DIR/ready`, and then obeys lines read from the control FIFO: `kill-clients N` closes N writer
//! connections abruptly, `stop` (or the FIFO's end) stops the load. Then it checks the idle sessions, compares the
//! clients' ledger with the tables, attributes lost transactions and sessions to the faults the script logged in
//! `FILE` (lines `unix-time<TAB>kind<TAB>detail`), writes the raw logs into DIR, prints a summary, and writes
//! `DIR/results.env` (KEY=VALUE lines the script sources). Exit status: 0, or 2 on bad usage or set-up failure;
//! judging the results is the script's job.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use pgmux_tests::load::{self, EventKind, Load, LoadConfig, Outcome, Target, Verdict};

/// A lost transaction or session is blamed on the latest fault at most this long before it.
const ATTRIBUTION_WINDOW: f64 = 3.0;

struct Args {
    cfg: LoadConfig,
    pg_host: String,
    pg_port: u16,
    control: PathBuf,
    out: PathBuf,
    faults: Option<PathBuf>,
}

fn usage(msg: &str) -> ! {
    eprintln!("chaos_load: {msg}");
    eprintln!(
        "usage: chaos_load --port PORT --pg-host H --pg-port P --target DB:USER[:PASSWORD]... [--writers N] \
         [--idle N] [--deadline SECS] --control FIFO --out DIR [--faults FILE]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut port = None;
    let mut pg_host = "127.0.0.1".to_string();
    let mut pg_port = None;
    let mut targets = Vec::new();
    let mut writers = 6;
    let mut idle = 4;
    let mut deadline = 20u64;
    let mut control = None;
    let mut out = None;
    let mut faults = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")));
        match flag.as_str() {
            "--port" => port = Some(num(value()) as u16),
            "--pg-host" => pg_host = value(),
            "--pg-port" => pg_port = Some(num(value()) as u16),
            "--target" => {
                let v = value();
                let mut parts = v.splitn(3, ':');
                let (Some(db), Some(user)) = (parts.next(), parts.next()) else {
                    usage(&format!("--target wants DB:USER[:PASSWORD], got {v}"))
                };
                let password = parts.next().unwrap_or("").to_string();
                targets.push(Target { db: db.to_string(), user: user.to_string(), password });
            }
            "--writers" => writers = num(value()) as usize,
            "--idle" => idle = num(value()) as usize,
            "--deadline" => deadline = num(value()),
            "--control" => control = Some(PathBuf::from(value())),
            "--out" => out = Some(PathBuf::from(value())),
            "--faults" => faults = Some(PathBuf::from(value())),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if targets.is_empty() {
        usage("at least one --target is needed");
    }
    Args {
        cfg: LoadConfig {
            port: port.unwrap_or_else(|| usage("--port is needed")),
            targets,
            writers_per_target: writers,
            idle_per_target: idle,
            deadline: Duration::from_secs(deadline),
            think: Duration::ZERO,
        },
        pg_host,
        pg_port: pg_port.unwrap_or_else(|| usage("--pg-port is needed")),
        control: control.unwrap_or_else(|| usage("--control is needed")),
        out: out.unwrap_or_else(|| usage("--out is needed")),
        faults,
    }
}

fn direct(args: &Args, db: &str) -> String {
    format!("host={} port={} user=postgres dbname={db} connect_timeout=10", args.pg_host, args.pg_port)
}

fn main() {
    let args = parse_args();
    let mut dbs: Vec<String> = args.cfg.targets.iter().map(|t| t.db.clone()).collect();
    dbs.dedup();
    for db in &dbs {
        if let Err(e) = load::setup_tables(&direct(&args, db)) {
            eprintln!("chaos_load: {e}");
            std::process::exit(2);
        }
    }
    let load = match Load::start(args.cfg.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chaos_load: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::write(args.out.join("ready"), "") {
        eprintln!("chaos_load: write ready file: {e}");
        std::process::exit(2);
    }
    // Opening the FIFO blocks until the script opens its end for writing.
    match std::fs::File::open(&args.control) {
        Ok(f) => {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                match (words.next(), words.next().and_then(|n| n.parse::<usize>().ok())) {
                    (Some("kill-clients"), Some(n)) => {
                        let killed = load.kill_clients(n);
                        eprintln!("chaos_load: killed {killed} client(s); {} committed so far", load.committed());
                    }
                    (Some("stop"), _) => break,
                    _ => eprintln!("chaos_load: ignoring control line {line:?}"),
                }
            }
        }
        Err(e) => eprintln!("chaos_load: cannot open {}: {e}; stopping", args.control.display()),
    }
    let report = load.stop();
    if let Err(e) = report.write(&args.out) {
        eprintln!("chaos_load: writing logs into {}: {e}", args.out.display());
    }

    let mut total = Verdict::default();
    let mut verify_error = String::new();
    for db in &dbs {
        let txns: Vec<&load::Txn> =
            report.txns.iter().filter(|t| args.cfg.targets.get(t.target).is_some_and(|x| &x.db == db)).collect();
        match load::verify(&direct(&args, db), &txns) {
            Ok(v) => total.merge(&v),
            Err(e) => verify_error = e,
        }
    }
    let faults = read_faults(args.faults.as_ref());
    let blame = attribute(&report, &faults);
    print_summary(&report, &total, &blame, &verify_error);
    let env = results_env(&report, &total, &blame, &verify_error);
    if let Err(e) = std::fs::write(args.out.join("results.env"), env) {
        eprintln!("chaos_load: write results.env: {e}");
        std::process::exit(2);
    }
}

fn read_faults(path: Option<&PathBuf>) -> Vec<(f64, String)> {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else { return Vec::new() };
    let mut faults: Vec<(f64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let at = f.next()?.parse().ok()?;
            Some((at, f.next()?.to_string()))
        })
        .collect();
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    faults
}

/// (fault kind or "none", event kind) -> count: each aborted transaction and lost session, blamed on the latest
/// fault logged at most [`ATTRIBUTION_WINDOW`] seconds before it.
fn attribute(report: &load::Report, faults: &[(f64, String)]) -> BTreeMap<(String, &'static str), usize> {
    let mut blame = BTreeMap::new();
    for e in &report.events {
        if !matches!(e.kind, EventKind::Aborted | EventKind::SessionLost) {
            continue;
        }
        let cause = faults
            .iter()
            .rev()
            .find(|(at, _)| *at <= e.at + 0.05 && e.at - at <= ATTRIBUTION_WINDOW)
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| "none".to_string());
        *blame.entry((cause, e.kind.as_str())).or_insert(0) += 1;
    }
    blame
}

fn print_summary(
    report: &load::Report,
    v: &Verdict,
    blame: &BTreeMap<(String, &'static str), usize>,
    verify_error: &str,
) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "transactions: {} committed, {} failed, {} rolled back on purpose, {} unknown ({} of them committed)",
        report.count(Outcome::Committed),
        report.count(Outcome::Failed),
        report.count(Outcome::RolledBack),
        report.count(Outcome::Unknown),
        v.unknown_present
    );
    let _ = writeln!(
        s,
        "ledger: lost {:?} duplicated {:?} phantom {:?} unexplained {:?} balance drift {}",
        first(&v.lost),
        first(&v.duplicated),
        first(&v.phantom),
        first(&v.unexplained),
        v.balance_drift
    );
    if !verify_error.is_empty() {
        let _ = writeln!(s, "ledger check failed: {verify_error}");
    }
    for ((cause, kind), n) in blame {
        let _ = writeln!(s, "{n:>5} {kind} after {cause}");
    }
    // What clients were told, most frequent first: the errors a fault produces should be clear ones.
    let mut messages: HashMap<(&str, String), usize> = HashMap::new();
    for e in &report.events {
        let short: String = e.detail.chars().take(110).collect();
        *messages.entry((e.kind.as_str(), short)).or_insert(0) += 1;
    }
    let mut messages: Vec<_> = messages.into_iter().collect();
    messages.sort_by_key(|m| std::cmp::Reverse(m.1));
    for ((kind, msg), n) in messages.iter().take(12) {
        let _ = writeln!(s, "{n:>5} {kind}: {msg}");
    }
    for l in &report.idle_lost {
        let _ = writeln!(s, "idle session lost: {l}");
    }
    print!("{s}");
}

fn first(ids: &[i64]) -> Vec<i64> {
    ids.iter().take(5).copied().collect()
}

fn results_env(
    report: &load::Report,
    v: &Verdict,
    blame: &BTreeMap<(String, &'static str), usize>,
    verify_error: &str,
) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: usize| {
        let _ = writeln!(s, "{k}={v}");
    };
    kv("LEDGER_COMMITTED", v.committed);
    kv("LEDGER_FAILED", v.failed);
    kv("LEDGER_ROLLEDBACK", v.rolled_back);
    kv("LEDGER_UNKNOWN", v.unknown);
    kv("LEDGER_UNKNOWN_PRESENT", v.unknown_present);
    kv("LEDGER_LOST", v.lost.len());
    kv("LEDGER_DUPLICATED", v.duplicated.len());
    kv("LEDGER_PHANTOM", v.phantom.len());
    kv("LEDGER_UNEXPLAINED", v.unexplained.len());
    kv("LEDGER_DRIFT", v.balance_drift.unsigned_abs() as usize);
    kv("LEDGER_CHECK_FAILED", usize::from(!verify_error.is_empty()));
    kv("IDLE_TOTAL", report.idle_total);
    kv("IDLE_LOST", report.idle_lost.len());
    kv("CLIENTS_KILLED", report.killed);
    for kind in
        [EventKind::Aborted, EventKind::SessionLost, EventKind::ConnectFailed, EventKind::Deadline, EventKind::Killed]
    {
        kv(&format!("EV_{}", kind.as_str().to_uppercase()), report.events_of(kind).count());
    }
    for ((cause, kind), n) in blame {
        kv(&format!("BLAME_{}_{}", cause.to_uppercase(), kind.to_uppercase()), *n);
    }
    s
}
