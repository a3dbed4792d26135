//! The chaos load: writer clients that keep a durability ledger, idle sessions that hold state, and the check that
//! compares what the clients saw with what PostgreSQL kept. Used by `scripts/chaos` (through
//! `src/bin/chaos_load.rs`) and by `tests/tests/chaos.rs`.
//!
//! Ledger rule: every writer transaction moves money on one row of `chaos_accounts` and inserts a row with an id the
//! client made up into `chaos_ledger`. The client writes the id down as `committed` only after COMMIT returned OK;
//! as `failed` when the transaction certainly did not commit (an error before COMMIT was sent, or an ERROR from
//! COMMIT itself); as `rolledback` when the client rolled it back on purpose; and as `unknown` when the connection
//! went away while COMMIT was in flight. Afterwards every committed id must be in the table exactly once, no failed
//! or rolled-back id may be there, unknown ids may go either way, and the accounts must sum to the ledger's deltas.
//!
//! Every client operation runs under a deadline, so a pooler that hangs shows up as `Deadline` events instead of a
//! load that never ends. The load runs on its own thread with a single-threaded tokio runtime; [`Load`] steers it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls, Statement};

/// Rows of `chaos_accounts`: few enough that writers wait on each other's row locks now and then.
pub const ACCOUNTS: i32 = 50;

/// A (database, user) the load connects to through the pooler.
#[derive(Debug, Clone)]
pub struct Target {
    pub db: String,
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The pooler, on 127.0.0.1.
    pub port: u16,
    pub targets: Vec<Target>,
    pub writers_per_target: usize,
    pub idle_per_target: usize,
    /// Longest any single client operation (connect, statement, COMMIT) may take.
    pub deadline: Duration,
    /// Pause after each writer transaction (zero: flat out).
    pub think: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Committed,
    Failed,
    RolledBack,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolledback",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One writer transaction as its client saw it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub id: i64,
    /// Index into [`LoadConfig::targets`].
    pub target: usize,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A transaction that had begun was lost with its connection (not a client we killed on purpose).
    Aborted,
    /// The connection was lost before the transaction began (the session was idle or waiting).
    SessionLost,
    ConnectFailed,
    /// A client operation exceeded [`LoadConfig::deadline`].
    Deadline,
    /// A client we closed abruptly on purpose.
    Killed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Aborted => "aborted",
            EventKind::SessionLost => "session_lost",
            EventKind::ConnectFailed => "connect_failed",
            EventKind::Deadline => "deadline",
            EventKind::Killed => "killed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub client: usize,
    pub kind: EventKind,
    pub detail: String,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct Report {
    pub txns: Vec<Txn>,
    pub events: Vec<Event>,
    pub idle_total: usize,
    /// Idle sessions that did not come through the run intact, with what was wrong.
    pub idle_lost: Vec<String>,
    /// Clients closed on purpose by [`Load::kill_clients`].
    pub killed: usize,
}

impl Report {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.txns.iter().filter(|t| t.outcome == outcome).count()
    }

    pub fn events_of(&self, kind: EventKind) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.kind == kind)
    }

    /// Writes `ledger.tsv` (id, target, outcome), `events.tsv` (time, client, kind, detail) and `idle.tsv`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut ledger = String::new();
        for t in &self.txns {
            let _ = writeln!(ledger, "{}\t{}\t{}", t.id, t.target, t.outcome.as_str());
        }
        std::fs::write(dir.join("ledger.tsv"), ledger)?;
        let mut events = String::new();
        for e in &self.events {
            let detail = e.detail.replace(['\t', '\n'], " ");
            let _ = writeln!(events, "{:.3}\t{}\t{}\t{detail}", e.at, e.client, e.kind.as_str());
        }
        std::fs::write(dir.join("events.tsv"), events)?;
        std::fs::write(dir.join("idle_lost.txt"), self.idle_lost.join("\n"))
    }
}

/// Seconds since the Unix epoch, the clock `scripts/chaos` stamps its faults with (`date +%s.%N`).
pub fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A small xorshift generator: the load needs variety, not quality, and no extra crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(1);
        Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

// ----- the tables -----

/// (Re)creates `chaos_accounts` and `chaos_ledger` in the database `conn` points at (a direct connection).
pub fn setup_tables(conn: &str) -> Result<(), String> {
    let mut c = postgres::Client::connect(conn, postgres::NoTls).map_err(|e| format!("connect {conn}: {e}"))?;
    // The ledger has no unique constraint on purpose: a transaction applied twice must show up as a duplicate, not
    // as an error.
    let sql = format!(
        "DROP TABLE IF EXISTS chaos_accounts, chaos_ledger;
         CREATE TABLE chaos_accounts (aid int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
         INSERT INTO chaos_accounts (aid) SELECT generate_series(1, {ACCOUNTS});
         CREATE TABLE chaos_ledger (id bigint NOT NULL, client int NOT NULL, delta int NOT NULL,
                                    backend int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE INDEX ON chaos_ledger (id);
         GRANT ALL ON chaos_accounts, chaos_ledger TO PUBLIC;"
    );
    c.batch_execute(&sql).map_err(|e| format!("create chaos tables: {e}"))
}

/// What the comparison of client logs and table found for one database.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub committed: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub unknown: usize,
    /// Unknown ids that turned out committed.
    pub unknown_present: usize,
    /// Committed ids missing from the table.
    pub lost: Vec<i64>,
    /// Ids present more than once.
    pub duplicated: Vec<i64>,
    /// Failed or rolled-back ids present in the table.
    pub phantom: Vec<i64>,
    /// Ids in the table no client logged at all.
    pub unexplained: Vec<i64>,
    /// sum(balance) - sum(delta): not zero means an UPDATE and its INSERT did not commit together.
    pub balance_drift: i64,
}

impl Verdict {
    pub fn violations(&self) -> usize {
        self.lost.len()
            + self.duplicated.len()
            + self.phantom.len()
            + self.unexplained.len()
            + usize::from(self.balance_drift != 0)
    }

    pub fn merge(&mut self, o: &Verdict) {
        self.committed += o.committed;
        self.failed += o.failed;
        self.rolled_back += o.rolled_back;
        self.unknown += o.unknown;
        self.unknown_present += o.unknown_present;
        self.lost.extend(&o.lost);
        self.duplicated.extend(&o.duplicated);
        self.phantom.extend(&o.phantom);
        self.unexplained.extend(&o.unexplained);
        self.balance_drift += o.balance_drift.abs();
    }
}

/// Compares `txns` (the transactions logged against this database) with its `chaos_ledger`, over a direct
/// connection `conn`.
pub fn verify(conn: &str, txns: &[&Txn]) -> Result<Verdict, String> {
    let mut c = postgres::Client::connect(conn, postgres::NoTls).map_err(|e| format!("connect {conn}: {e}"))?;
    let rows = c
        .query("SELECT id, count(*) FROM chaos_ledger GROUP BY id", &[])
        .map_err(|e| format!("read chaos_ledger: {e}"))?;
    let mut present: HashMap<i64, i64> = HashMap::new();
    for r in rows {
        present.insert(r.get(0), r.get(1));
    }
    let drift: i64 = c
        .query_one(
            "SELECT (SELECT coalesce(sum(balance), 0) FROM chaos_accounts)::int8 \
             - (SELECT coalesce(sum(delta), 0) FROM chaos_ledger)::int8",
            &[],
        )
        .map_err(|e| format!("sum balances: {e}"))?
        .get(0);
    let mut v = Verdict { balance_drift: drift, ..Verdict::default() };
    let mut logged = HashSet::new();
    for t in txns {
        logged.insert(t.id);
        let n = present.get(&t.id).copied().unwrap_or(0);
        if n > 1 {
            v.duplicated.push(t.id);
        }
        match t.outcome {
            Outcome::Committed => {
                v.committed += 1;
                if n == 0 {
                    v.lost.push(t.id);
                }
            }
            Outcome::Failed | Outcome::RolledBack => {
                if t.outcome == Outcome::Failed {
                    v.failed += 1;
                } else {
                    v.rolled_back += 1;
                }
                if n > 0 {
                    v.phantom.push(t.id);
                }
            }
            Outcome::Unknown => {
                v.unknown += 1;
                if n > 0 {
                    v.unknown_present += 1;
                }
            }
        }
    }
    v.unexplained = present.keys().filter(|id| !logged.contains(id)).copied().collect();
    v.unexplained.sort_unstable();
    Ok(v)
}

// ----- running the load -----

enum Ctl {
    Kill(usize, std::sync::mpsc::Sender<usize>),
    Stop,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    committed: AtomicU64,
    /// Connection tasks of writers, by client number, so kill_clients can drop their sockets.
    conns: Mutex<HashMap<usize, tokio::task::AbortHandle>>,
    /// Writers closed on purpose whose next error is ours, not the pooler's.
    killed: Mutex<HashSet<usize>>,
}

impl Shared {
    fn take_killed(&self, client: usize) -> bool {
        self.killed.lock().map(|mut k| k.remove(&client)).unwrap_or(false)
    }

    fn forget_conn(&self, client: usize) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&client);
        }
    }
}

/// A running load. Dropping it without [`Load::stop`] leaves the thread to finish on its own.
pub struct Load {
    ctl: mpsc::UnboundedSender<Ctl>,
    thread: std::thread::JoinHandle<Report>,
    shared: Arc<Shared>,
}

impl Load {
    /// Opens the idle sessions (an error if any cannot be opened: the run would mean nothing) and starts the
    /// writers.
    pub fn start(cfg: LoadConfig) -> Result<Load, String> {
        let (ctl, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let shared = Arc::new(Shared::default());
        let shared2 = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                    return Report::default();
                }
            };
            rt.block_on(run(cfg, shared2, rx, ready_tx))
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Load { ctl, thread, shared }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the load thread died during start-up".into()),
        }
    }

    /// Transactions committed so far.
    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Relaxed)
    }

    /// Closes up to `n` writer connections abruptly (no Terminate, whatever they are doing). Returns how many.
    pub fn kill_clients(&self, n: usize) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.ctl.send(Ctl::Kill(n, tx)).is_err() {
            return 0;
        }
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or(0)
    }

    /// Stops the writers, checks the idle sessions and returns the report.
    pub fn stop(self) -> Report {
        let _ = self.ctl.send(Ctl::Stop);
        self.thread.join().unwrap_or_default()
    }
}

async fn run(
    cfg: LoadConfig,
    shared: Arc<Shared>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Report {
    let cfg = Arc::new(cfg);
    let mut idle = Vec::new();
    for (t, _) in cfg.targets.iter().enumerate() {
        for k in 0..cfg.idle_per_target {
            match IdleSession::open(&cfg, t, k).await {
                Ok(s) => idle.push(s),
                Err(e) => {
                    let _ = ready.send(Err(format!("opening idle session {t}/{k}: {e}")));
                    return Report::default();
                }
            }
        }
    }
    let mut writers = Vec::new();
    for t in 0..cfg.targets.len() {
        for w in 0..cfg.writers_per_target {
            let client = t * cfg.writers_per_target + w;
            writers.push(tokio::spawn(writer(cfg.clone(), shared.clone(), client, t)));
        }
    }
    let _ = ready.send(Ok(()));

    let mut rng = Rng::new(0xC4A05);
    let mut report = Report { idle_total: idle.len(), ..Report::default() };
    while let Some(msg) = ctl.recv().await {
        match msg {
            Ctl::Kill(n, reply) => {
                let killed = kill_some(&shared, n, &mut rng);
                report.killed += killed;
                let _ = reply.send(killed);
            }
            Ctl::Stop => break,
        }
    }
    shared.stopping.store(true, Ordering::Relaxed);
    for w in writers {
        if let Ok((txns, events)) = w.await {
            report.txns.extend(txns);
            report.events.extend(events);
        }
    }
    for s in idle {
        if let Err(e) = s.check(cfg.deadline).await {
            report.idle_lost.push(e);
        }
    }
    report.events.sort_by(|a, b| a.at.total_cmp(&b.at));
    report
}

fn kill_some(shared: &Shared, n: usize, rng: &mut Rng) -> usize {
    let Ok(mut conns) = shared.conns.lock() else { return 0 };
    let mut ids: Vec<usize> = conns.keys().copied().collect();
    ids.sort_unstable();
    let mut killed = 0;
    while killed < n && !ids.is_empty() {
        let i = rng.below(ids.len() as u64) as usize;
        let id = ids.swap_remove(i);
        if let Some(h) = conns.remove(&id) {
            if let Ok(mut k) = shared.killed.lock() {
                k.insert(id);
            }
            // Dropping the connection future closes the socket without a Terminate, like a killed client.
            h.abort();
            killed += 1;
        }
    }
    killed
}

/// Why a client operation did not succeed.
#[derive(Debug)]
enum OpError {
    /// An ERROR: the statement failed, the connection is fine.
    Statement(String),
    /// The connection is gone (FATAL, closed, I/O error).
    Lost(String),
    Deadline,
}

impl OpError {
    fn text(&self) -> String {
        match self {
            OpError::Statement(s) | OpError::Lost(s) => s.clone(),
            OpError::Deadline => "deadline exceeded".into(),
        }
    }
}

fn classify(e: tokio_postgres::Error) -> OpError {
    match e.as_db_error() {
        Some(db) if db.severity() == "ERROR" => OpError::Statement(format!("{} {}", db.code().code(), db.message())),
        Some(db) => OpError::Lost(format!("{} {} {}", db.severity(), db.code().code(), db.message())),
        None => OpError::Lost(e.to_string()),
    }
}

async fn op<T>(deadline: Duration, f: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, OpError> {
    match tokio::time::timeout(deadline, f).await {
        Err(_) => Err(OpError::Deadline),
        Ok(Err(e)) => Err(classify(e)),
        Ok(Ok(v)) => Ok(v),
    }
}

fn conn_string(cfg: &LoadConfig, t: &Target, app: &str) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} dbname={} user={} application_name={app} connect_timeout={}",
        cfg.port,
        t.db,
        t.user,
        cfg.deadline.as_secs().max(1)
    );
    if !t.password.is_empty() {
        let _ = write!(s, " password={}", t.password);
    }
    s
}

/// Connects, running the connection on its own task. Returns the client and the task's abort handle.
async fn connect(cfg: &LoadConfig, t: &Target, app: &str) -> Result<(Client, tokio::task::AbortHandle), OpError> {
    let (client, connection) = op(cfg.deadline, tokio_postgres::connect(&conn_string(cfg, t, app), NoTls)).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task.abort_handle()))
}

struct Prepared {
    begin: Statement,
    update: Statement,
    insert: Statement,
    commit: Statement,
    rollback: Statement,
}

async fn prepare(c: &Client, deadline: Duration) -> Result<Prepared, OpError> {
    Ok(Prepared {
        begin: op(deadline, c.prepare("BEGIN")).await?,
        update: op(deadline, c.prepare("UPDATE chaos_accounts SET balance = balance + $1::int4 WHERE aid = $2::int4"))
            .await?,
        insert: op(
            deadline,
            c.prepare(
                "INSERT INTO chaos_ledger (id, client, delta, backend) \
                 VALUES ($1::int8, $2::int4, $3::int4, pg_backend_pid())",
            ),
        )
        .await?,
        commit: op(deadline, c.prepare("COMMIT")).await?,
        rollback: op(deadline, c.prepare("ROLLBACK")).await?,
    })
}

/// How one transaction ended, and whether it cost the connection.
struct TxnResult {
    outcome: Outcome,
    /// The connection is unusable: (event kind, why).
    loss: Option<(EventKind, String)>,
}

impl TxnResult {
    fn ok(outcome: Outcome) -> TxnResult {
        TxnResult { outcome, loss: None }
    }

    /// The transaction's fate after `e`, given whether it had begun and whether COMMIT was in flight.
    fn from_error(e: OpError, begun: bool, commit_sent: bool) -> TxnResult {
        let outcome = match (&e, commit_sent) {
            (OpError::Statement(_), _) | (_, false) => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        let loss = match e {
            OpError::Statement(_) => None,
            OpError::Deadline => Some((EventKind::Deadline, e.text())),
            OpError::Lost(why) if begun => Some((EventKind::Aborted, why)),
            OpError::Lost(why) => Some((EventKind::SessionLost, why)),
        };
        TxnResult { outcome, loss }
    }
}

struct Work {
    id: i64,
    client: i32,
    aid: i32,
    delta: i32,
    rollback: bool,
}

/// BEGIN, UPDATE, INSERT, COMMIT one round trip each over the extended protocol.
async fn txn_extended(c: &Client, p: &Prepared, w: &Work, d: Duration) -> TxnResult {
    if let Err(e) = op(d, c.execute(&p.begin, &[])).await {
        return TxnResult::from_error(e, false, false);
    }
    let body = async {
        op(d, c.execute(&p.update, &[&w.delta, &w.aid])).await?;
        op(d, c.execute(&p.insert, &[&w.id, &w.client, &w.delta])).await
    };
    if let Err(e) = body.await {
        return end_failed(c, e, d, |c| c.execute(&p.rollback, &[])).await;
    }
    if w.rollback {
        return match op(d, c.execute(&p.rollback, &[])).await {
            Ok(_) => TxnResult::ok(Outcome::RolledBack),
            Err(e) => TxnResult { outcome: Outcome::RolledBack, ..TxnResult::from_error(e, true, false) },
        };
    }
    match op(d, c.execute(&p.commit, &[])).await {
        Ok(_) => TxnResult::ok(Outcome::Committed),
        Err(e) => TxnResult::from_error(e, true, true),
    }
}

/// The same with the simple protocol, one statement per Query.
async fn txn_simple(c: &Client, w: &Work, d: Duration) -> TxnResult {
    if let Err(e) = op(d, c.simple_query("BEGIN")).await {
        return TxnResult::from_error(e, false, false);
    }
    let update = format!("UPDATE chaos_accounts SET balance = balance + {} WHERE aid = {}", w.delta, w.aid);
    let insert = format!(
        "INSERT INTO chaos_ledger (id, client, delta, backend) VALUES ({}, {}, {}, pg_backend_pid())",
        w.id, w.client, w.delta
    );
    let body = async {
        op(d, c.simple_query(&update)).await?;
        op(d, c.simple_query(&insert)).await
    };
    if let Err(e) = body.await {
        return end_failed(c, e, d, |c| c.simple_query("ROLLBACK")).await;
    }
    if w.rollback {
        return match op(d, c.simple_query("ROLLBACK")).await {
            Ok(_) => TxnResult::ok(Outcome::RolledBack),
            Err(e) => TxnResult { outcome: Outcome::RolledBack, ..TxnResult::from_error(e, true, false) },
        };
    }
    match op(d, c.simple_query("COMMIT")).await {
        Ok(_) => TxnResult::ok(Outcome::Committed),
        Err(e) => TxnResult::from_error(e, true, true),
    }
}

/// After a failed statement inside the transaction: roll back if the connection is still there.
async fn end_failed<'a, T, F: Future<Output = Result<T, tokio_postgres::Error>> + 'a>(
    c: &'a Client,
    e: OpError,
    d: Duration,
    rollback: impl FnOnce(&'a Client) -> F,
) -> TxnResult {
    let r = TxnResult::from_error(e, true, false);
    if r.loss.is_some() {
        return r;
    }
    match op(d, rollback(c)).await {
        Ok(_) => r,
        Err(e) => TxnResult::from_error(e, true, false),
    }
}

/// All four statements pipelined: sent back to back, answers awaited together.
async fn txn_pipelined(c: &Client, p: &Prepared, w: &Work, d: Duration) -> TxnResult {
    let update: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&w.delta, &w.aid];
    let insert: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&w.id, &w.client, &w.delta];
    let (b, u, i, m) = tokio::join!(
        op(d, c.execute(&p.begin, &[])),
        op(d, c.execute(&p.update, &update)),
        op(d, c.execute(&p.insert, &insert)),
        op(d, c.execute(&p.commit, &[])),
    );
    let begun = b.is_ok();
    let mut statement_error = None;
    for r in [b, u, i, m] {
        match r {
            Ok(_) => {}
            Err(OpError::Statement(s)) => statement_error = statement_error.or(Some(s)),
            // COMMIT went out with the rest, so any loss leaves its fate open.
            Err(e) => return TxnResult::from_error(e, begun, true),
        }
    }
    match statement_error {
        // A failed statement aborted the transaction; the pipelined COMMIT then rolled it back.
        Some(_) => TxnResult::ok(Outcome::Failed),
        None => TxnResult::ok(Outcome::Committed),
    }
}

async fn writer(cfg: Arc<LoadConfig>, shared: Arc<Shared>, client: usize, target: usize) -> (Vec<Txn>, Vec<Event>) {
    let mut rng = Rng::new(client as u64 + 1);
    let mut txns = Vec::new();
    let mut events = Vec::new();
    let mut conn: Option<(Client, Prepared)> = None;
    let Some(t) = cfg.targets.get(target) else { return (txns, events) };
    let mut seq: u32 = 0;
    let d = cfg.deadline;
    while !shared.stopping.load(Ordering::Relaxed) {
        let Some((c, p)) = conn.as_ref() else {
            let app = format!("chaos_writer_{client}");
            let opened = async {
                let (c, abort) = connect(&cfg, t, &app).await?;
                if let Ok(mut m) = shared.conns.lock() {
                    m.insert(client, abort);
                }
                let p = prepare(&c, d).await?;
                Ok::<_, OpError>((c, p))
            };
            match opened.await {
                Ok(cp) => conn = Some(cp),
                Err(e) => {
                    shared.forget_conn(client);
                    let kind = if shared.take_killed(client) {
                        EventKind::Killed
                    } else if matches!(e, OpError::Deadline) {
                        EventKind::Deadline
                    } else {
                        EventKind::ConnectFailed
                    };
                    events.push(Event { at: now_secs(), client, kind, detail: e.text() });
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
                }
            }
            continue;
        };
        seq += 1;
        let w = Work {
            id: ((client as i64) << 32) | i64::from(seq),
            client: client as i32,
            aid: 1 + rng.below(ACCOUNTS as u64) as i32,
            delta: 1 + rng.below(100) as i32,
            rollback: seq.is_multiple_of(10),
        };
        let r = match seq % 3 {
            0 => txn_extended(c, p, &w, d).await,
            1 => txn_simple(c, &w, d).await,
            _ => txn_pipelined(c, p, &Work { rollback: false, ..w }, d).await,
        };
        if r.outcome == Outcome::Committed {
            shared.committed.fetch_add(1, Ordering::Relaxed);
        }
        txns.push(Txn { id: w.id, target, outcome: r.outcome });
        if let Some((kind, detail)) = r.loss {
            let kind = if shared.take_killed(client) { EventKind::Killed } else { kind };
            events.push(Event { at: now_secs(), client, kind, detail });
            shared.forget_conn(client);
            conn = None;
        } else if !cfg.think.is_zero() {
            tokio::time::sleep(cfg.think).await;
        }
    }
    shared.forget_conn(client);
    (txns, events)
}

/// A session that sits idle through the run holding state of its own: two settings, a SQL-level and a
/// protocol-level prepared statement.
struct IdleSession {
    client: Client,
    label: String,
    app: String,
    lock_timeout: String,
    k: i32,
    stmt: Statement,
}

impl IdleSession {
    async fn open(cfg: &LoadConfig, target: usize, k: usize) -> Result<IdleSession, String> {
        let t = cfg.targets.get(target).ok_or("no such target")?;
        let label = format!("idle {}/{} #{k}", t.db, t.user);
        let app = format!("chaos_idle_{target}_{k}");
        let k = k as i32;
        // Not a multiple of 1000, so SHOW gives it back in the same spelling.
        let lock_timeout = format!("{}ms", 1001 + k);
        let (client, _abort) = connect(cfg, t, "chaos_idle_login").await.map_err(|e| e.text())?;
        let d = cfg.deadline;
        let setup = format!(
            "SET application_name = '{app}'; SET lock_timeout = '{lock_timeout}'; \
             PREPARE chaos_idle_q AS SELECT {k}::int4"
        );
        op(d, client.batch_execute(&setup)).await.map_err(|e| e.text())?;
        let stmt = op(d, client.prepare(&format!("SELECT $1::int4 + {k}"))).await.map_err(|e| e.text())?;
        Ok(IdleSession { client, label, app, lock_timeout, k, stmt })
    }

    /// Whether everything the session set up is still there, over the same connection.
    async fn check(&self, d: Duration) -> Result<(), String> {
        let fail = |what: &str, e: OpError| format!("{}: {what}: {}", self.label, e.text());
        let show = |name: &'static str| async move {
            let rows = op(d, self.client.query_one(&format!("SELECT current_setting('{name}')"), &[])).await?;
            Ok::<String, OpError>(rows.get(0))
        };
        let app = show("application_name").await.map_err(|e| fail("SHOW application_name", e))?;
        let lt = show("lock_timeout").await.map_err(|e| fail("SHOW lock_timeout", e))?;
        if app != self.app || lt != self.lock_timeout {
            return Err(format!(
                "{}: settings changed: application_name {app:?} (want {:?}), lock_timeout {lt:?} (want {:?})",
                self.label, self.app, self.lock_timeout
            ));
        }
        let v: i32 =
            op(d, self.client.query_one(&self.stmt, &[&1i32])).await.map_err(|e| fail("prepared statement", e))?.get(0);
        if v != 1 + self.k {
            return Err(format!("{}: prepared statement answered {v}, want {}", self.label, 1 + self.k));
        }
        let rows = op(d, self.client.simple_query("EXECUTE chaos_idle_q")).await.map_err(|e| fail("EXECUTE", e))?;
        let got = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        if got.as_deref() != Some(self.k.to_string().as_str()) {
            return Err(format!("{}: EXECUTE chaos_idle_q gave {got:?}, want {}", self.label, self.k));
        }
        Ok(())
    }
}
