//! The SHOW commands' result sets, built from the supervisor's [`Snapshot`]: column names, order and types exactly
//! as PgBouncer 1.25 sends them (text, int4, int8, numeric; timestamps as text), and the values computed with
//! PgBouncer's rules from what pgmux's processes reported.
//!
//! Mapping onto pgmux: each worker's upstream is one "server"; a session that owns its worker's upstream is an
//! active client linked to that server; a session with a request queued for the upstream (or held by the supervisor
//! because no worker could take it yet) is waiting; every other session is idle. Server states: a released,
//! clean upstream is idle; one being cleaned (rollback, reset, unpin) is used; a worker that did not answer in time
//! and never reported is a server logging in.

use std::collections::HashMap;

use pgmux_ipc::admin::{PoolInfo, Snapshot, UserInfo, WorkerInfo, MODE_SESSION, MODE_STATEMENT};
use pgmux_ipc::stats::{Counters, ServerState, SessionReport, SessionState, PIN_IN_TRANSACTION};
use pgmux_proto::backend::{Column, INT4_OID, INT8_OID, NUMERIC_OID, TEXT_OID};
use pgmux_proto::sql::{PIN_ADVISORY, PIN_HOLD_CURSOR, PIN_LOAD, PIN_TEMP};

use super::command::Show;

/// What pgmux says it is in SHOW VERSION (the PgBouncer it behaves like comes first, for tools that parse it).
pub fn version_string() -> String {
    format!("PgBouncer 1.25.0 compatible (pgmux {})", env!("CARGO_PKG_VERSION"))
}

/// The console's own facts that the supervisor does not know.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Connections still logging in on this listener.
    pub login_clients: usize,
}

/// Column names and PostgreSQL types of a result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<(&'static str, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// Columns from PgBouncer's type letters: s text, i int4, q int8, N numeric, T timestamp (sent as text).
    fn new(types: &str, names: &[&'static str]) -> ResultSet {
        let columns = types
            .chars()
            .zip(names.iter())
            .map(|(t, n)| {
                let oid = match t {
                    'i' => INT4_OID,
                    'q' => INT8_OID,
                    'N' => NUMERIC_OID,
                    _ => TEXT_OID,
                };
                (*n, oid)
            })
            .collect();
        ResultSet { columns, rows: Vec::new() }
    }

    fn push(&mut self, row: Vec<Option<String>>) {
        self.rows.push(row);
    }

    /// RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let cols: Vec<Column<'_>> = self.columns.iter().map(|(name, oid)| Column { name, type_oid: *oid }).collect();
        pgmux_proto::backend::row_description(out, &cols);
        for r in &self.rows {
            pgmux_proto::backend::data_row(out, r);
        }
        pgmux_proto::backend::command_complete(out, "SHOW");
    }
}

fn s(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}

fn n(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn mode_name(m: u8) -> &'static str {
    match m {
        MODE_SESSION => "session",
        MODE_STATEMENT => "statement",
        _ => "transaction",
    }
}

/// A wall-clock instant (µs since the epoch) as PgBouncer prints timestamps: `YYYY-MM-DD HH:MM:SS UTC`; 0 is
/// NULL-like and printed empty, as PgBouncer prints an unset time.
pub fn timestamp(us: u64) -> String {
    if us == 0 {
        return String::new();
    }
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Splits a wait in µs into PgBouncer's (seconds, microseconds) column pair.
fn wait_pair(us: u64) -> (Option<String>, Option<String>) {
    (n(us / 1_000_000), n(us % 1_000_000))
}

fn client_ptr(id: u64) -> String {
    format!("c{id}")
}

fn server_ptr(index: u32) -> String {
    format!("s{index}")
}

/// Where each session stands, from every worker's report.
struct SessionIndex<'a> {
    by_id: HashMap<u64, (&'a SessionReport, &'a WorkerInfo)>,
    /// Sessions the supervisor holds for a pool: id → µs waited.
    held: HashMap<u64, u64>,
}

impl<'a> SessionIndex<'a> {
    fn new(snap: &'a Snapshot) -> SessionIndex<'a> {
        let mut by_id = HashMap::new();
        let mut held = HashMap::new();
        for p in &snap.pools {
            for w in &p.workers {
                if let Some(r) = &w.report {
                    for s in &r.sessions {
                        by_id.insert(s.session_id, (s, w));
                    }
                }
            }
            for (id, us) in &p.waiting {
                held.insert(*id, *us);
            }
        }
        SessionIndex { by_id, held }
    }
}

/// Builds the result set of `show` (for every SHOW but HELP, whose answer is a notice).
pub fn result(show: Show, snap: &Snapshot, local: &Local) -> ResultSet {
    match show {
        Show::Pools => pools(snap),
        Show::Stats => stats(snap),
        Show::StatsTotals => stats_totals(snap),
        Show::StatsAverages => stats_averages(snap),
        Show::Totals => totals(snap),
        Show::Clients => sockets(snap, SocketRows::Clients),
        Show::Servers => sockets(snap, SocketRows::Servers),
        Show::Sockets => sockets(snap, SocketRows::Debug),
        Show::ActiveSockets => ResultSet::new(SKF_DBG, SOCKET_COLUMNS),
        Show::Databases => databases(snap),
        Show::Users => users(snap),
        Show::Config => config(snap),
        Show::Lists => lists(snap, local),
        Show::State => state(snap),
        Show::Version => {
            let mut r = ResultSet::new("s", &["version"]);
            r.push(vec![s(version_string())]);
            r
        }
        Show::Pins => pins(snap),
        Show::Mem => ResultSet::new("siiii", &["name", "size", "used", "free", "memtotal"]),
        Show::Peers => ResultSet::new("isii", &["peer_id", "host", "port", "pool_size"]),
        Show::PeerPools => ResultSet::new(
            "iiiii",
            &["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"],
        ),
        Show::DnsHosts => ResultSet::new("sqs", &["hostname", "ttl", "addrs"]),
        Show::DnsZones => ResultSet::new("sqi", &["zonename", "serial", "count"]),
        Show::Help => ResultSet::new("", &[]),
    }
}

/// Pools in PgBouncer's order: by database, then user.
fn sorted_pools(snap: &Snapshot) -> Vec<&PoolInfo> {
    let mut v: Vec<&PoolInfo> = snap.pools.iter().collect();
    v.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    v
}

fn server_state(w: &WorkerInfo) -> Option<ServerState> {
    match &w.report {
        Some(r) => r.upstream.as_ref().map(|u| u.state),
        // Never answered: busy connecting (connecting blocks a worker), so it is a server logging in.
        None => Some(ServerState::Login),
    }
}

fn pools(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new(
        "ssiiiiiiiiiiiiiss",
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
        ],
    );
    for p in sorted_pools(snap) {
        let c = pool_counts(p);
        let (mw, mw_us) = wait_pair(c.maxwait_us);
        r.push(vec![
            s(&p.database),
            s(&p.user),
            n(c.cl_active),
            n(c.cl_waiting),
            n(0),
            n(0),
            n(c.sv_active),
            n(0),
            n(0),
            n(c.sv_idle),
            n(c.sv_used),
            n(0),
            n(c.sv_login),
            mw,
            mw_us,
            s(mode_name(p.pool_mode)),
            None,
        ]);
    }
    r
}

/// A pool's SHOW POOLS numbers (also the Prometheus endpoint's pool gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub cl_active: u64,
    pub cl_waiting: u64,
    pub sv_active: u64,
    pub sv_idle: u64,
    pub sv_used: u64,
    pub sv_login: u64,
    pub maxwait_us: u64,
}

pub fn pool_counts(p: &PoolInfo) -> PoolCounts {
    let (mut active, mut waiting, mut maxwait) = (0u64, p.waiting.len() as u64, 0u64);
    let mut sv = [0u64; 4];
    for (_, us) in &p.waiting {
        maxwait = maxwait.max(*us);
    }
    for w in &p.workers {
        if let Some(st) = server_state(w) {
            if let Some(slot) = sv.get_mut(st as usize) {
                *slot += 1;
            }
        }
        for sess in w.report.iter().flat_map(|r| r.sessions.iter()) {
            if sess.state == SessionState::Waiting {
                waiting += 1;
                maxwait = maxwait.max(sess.wait_us);
            } else {
                active += 1;
            }
        }
    }
    let [sv_idle, sv_active, sv_used, sv_login] = sv;
    PoolCounts { cl_active: active, cl_waiting: waiting, sv_active, sv_idle, sv_used, sv_login, maxwait_us: maxwait }
}

/// Server connections (workers with an upstream) per database: SHOW DATABASES' current_connections.
pub fn servers_by_database(snap: &Snapshot) -> HashMap<&str, u64> {
    let mut servers: HashMap<&str, u64> = HashMap::new();
    for p in &snap.pools {
        let up = p.workers.iter().filter(|w| w.report.as_ref().is_some_and(|r| r.upstream.is_some())).count();
        *servers.entry(p.database.as_str()).or_default() += up as u64;
    }
    servers
}

/// Per-database sums of the pools' totals and of their averaging-window starts, in database order.
fn per_database(snap: &Snapshot) -> Vec<(String, Counters, Counters, u64)> {
    let mut out: Vec<(String, Counters, Counters, u64)> = Vec::new();
    for p in sorted_pools(snap) {
        match out.last_mut() {
            Some((db, total, start, window)) if *db == p.database => {
                *total = total.add(&p.totals);
                *start = start.add(&p.window_start);
                *window = (*window).max(p.window_us);
            }
            _ => out.push((p.database.clone(), p.totals, p.window_start, p.window_us)),
        }
    }
    out
}

/// PgBouncer's averages: counts and bytes per second over the window, times per transaction, query or
/// assignment in it.
fn averages(total: &Counters, start: &Counters, window_us: u64) -> Counters {
    let d = total.since(start);
    let per_sec = |v: u64| if window_us == 0 { 0 } else { (u128::from(v) * 1_000_000 / u128::from(window_us)) as u64 };
    let per = |v: u64, count: u64| v.checked_div(count).unwrap_or(0);
    Counters {
        server_assignment_count: per_sec(d.server_assignment_count),
        xact_count: per_sec(d.xact_count),
        query_count: per_sec(d.query_count),
        received: per_sec(d.received),
        sent: per_sec(d.sent),
        xact_time_us: per(d.xact_time_us, d.xact_count),
        query_time_us: per(d.query_time_us, d.query_count),
        wait_time_us: per(d.wait_time_us, d.server_assignment_count),
        client_parse_count: per_sec(d.client_parse_count),
        server_parse_count: per_sec(d.server_parse_count),
        bind_count: per_sec(d.bind_count),
        pipelined_count: per_sec(d.pipelined_count),
    }
}

fn counter_values(c: &Counters) -> Vec<Option<String>> {
    [
        c.server_assignment_count,
        c.xact_count,
        c.query_count,
        c.received,
        c.sent,
        c.xact_time_us,
        c.query_time_us,
        c.wait_time_us,
        c.client_parse_count,
        c.server_parse_count,
        c.bind_count,
    ]
    .iter()
    .map(n)
    .collect()
}

fn stats(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new(
        "sNNNNNNNNNNNNNNNNNNNNNN",
        &[
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "total_client_parse_count",
            "total_server_parse_count",
            "total_bind_count",
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
    );
    for (db, total, start, window) in per_database(snap) {
        let mut row = vec![s(db)];
        row.extend(counter_values(&total));
        row.extend(counter_values(&averages(&total, &start, window)));
        r.push(row);
    }
    r
}

const SUBSET_COLUMNS: [&str; 12] = [
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

fn stats_totals(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new("sNNNNNNNNNNN", &SUBSET_COLUMNS);
    for (db, total, _, _) in per_database(snap) {
        let mut row = vec![s(db)];
        row.extend(counter_values(&total));
        r.push(row);
    }
    r
}

fn stats_averages(snap: &Snapshot) -> ResultSet {
    let mut names = SUBSET_COLUMNS;
    for (slot, name) in
        names.iter_mut().skip(9).zip(["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"])
    {
        *slot = name;
    }
    let mut r = ResultSet::new("sNNNNNNNNNNN", &names);
    for (db, total, start, window) in per_database(snap) {
        let mut row = vec![s(db)];
        row.extend(counter_values(&averages(&total, &start, window)));
        r.push(row);
    }
    r
}

fn totals(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new("sN", &["name", "value"]);
    let (mut total, mut start, mut window) = (Counters::default(), Counters::default(), 0);
    for (_, t, st, w) in per_database(snap) {
        total = total.add(&t);
        start = start.add(&st);
        window = window.max(w);
    }
    let names = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
    ];
    for (prefix, values) in
        [("total_", counter_values(&total)), ("avg_", counter_values(&averages(&total, &start, window)))]
    {
        for (name, v) in names.iter().zip(values) {
            r.push(vec![s(format!("{prefix}{name}")), v]);
        }
    }
    r
}

const SKF_STD: &str = "ssssssisiTTiiississii";
const SKF_DBG: &str = "ssssssisiTTiiississiiiiiiiii";
const SOCKET_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketRows {
    Clients,
    Servers,
    /// SHOW SOCKETS: both, with PgBouncer's list names as states and the buffer columns (always 0 here).
    Debug,
}

/// The host a database's servers are reached at, as SHOW SERVERS' addr: "unix" for a socket directory.
fn server_addr(host: &str) -> String {
    if host.starts_with('/') {
        "unix".to_string()
    } else {
        host.to_string()
    }
}

fn sockets(snap: &Snapshot, which: SocketRows) -> ResultSet {
    let debug = which == SocketRows::Debug;
    let mut r = if debug {
        ResultSet::new(SKF_DBG, SOCKET_COLUMNS)
    } else {
        ResultSet::new(SKF_STD, SOCKET_COLUMNS.get(..21).unwrap_or_default())
    };
    let index = SessionIndex::new(snap);
    let dbinfo: HashMap<&str, &pgmux_ipc::admin::DatabaseInfo> =
        snap.databases.iter().map(|d| (d.name.as_str(), d)).collect();
    let app_names: HashMap<u64, &str> = snap.clients.iter().map(|c| (c.id, c.application_name.as_str())).collect();
    let mut push = |mut row: Vec<Option<String>>| {
        if debug {
            row.extend((0..7).map(|_| n(0)));
        }
        r.push(row);
    };
    if which != SocketRows::Servers {
        let mut clients: Vec<&pgmux_ipc::admin::ClientInfo> = snap.clients.iter().collect();
        clients.sort_by(|a, b| (&a.database, &a.user, a.id).cmp(&(&b.database, &b.user, b.id)));
        // Active and idle first, then waiting, as PgBouncer walks its active and waiting lists.
        for waiting_pass in [false, true] {
            for c in &clients {
                let (state, wait_us, request_us, prepared, link) = match (index.by_id.get(&c.id), index.held.get(&c.id))
                {
                    (_, Some(us)) => ("waiting", *us, 0, 0, String::new()),
                    (Some((rep, w)), None) => {
                        let link = if rep.state == SessionState::Active { server_ptr(w.index) } else { String::new() };
                        let state = match rep.state {
                            SessionState::Active => "active",
                            SessionState::Waiting => "waiting",
                            SessionState::Idle => "idle",
                        };
                        (state, rep.wait_us, rep.request_time_us, rep.prepared, link)
                    }
                    (None, None) => ("idle", 0, 0, 0, String::new()),
                };
                if (state == "waiting") != waiting_pass {
                    continue;
                }
                let state = match (debug, state) {
                    (true, "waiting") => "cl_waiting",
                    (true, _) => "cl_active",
                    (false, st) => st,
                };
                let (wait, wait_us) = wait_pair(wait_us);
                push(vec![
                    s("C"),
                    s(&c.user),
                    s(&c.database),
                    s("none"),
                    s(state),
                    s(&c.addr),
                    n(c.port),
                    s(&c.local_addr),
                    n(c.local_port),
                    s(timestamp(c.connect_time_us)),
                    s(timestamp(request_us.max(c.connect_time_us))),
                    wait,
                    wait_us,
                    n(0),
                    s(client_ptr(c.id)),
                    s(link),
                    n(0),
                    s(""),
                    s(&c.application_name),
                    n(prepared),
                    n(c.id),
                ]);
            }
        }
    }
    if which != SocketRows::Clients {
        for p in sorted_pools(snap) {
            let db = dbinfo.get(p.database.as_str()).or_else(|| dbinfo.get("*"));
            let host = db.map(|d| server_addr(&d.host)).unwrap_or_default();
            let port = db.map_or(0, |d| d.port);
            let user = db.and_then(|d| d.force_user.clone()).unwrap_or_else(|| p.user.clone());
            for w in &p.workers {
                let Some(state) = server_state(w) else { continue };
                let up = w.report.as_ref().and_then(|r| r.upstream.as_ref());
                let close_needed = w.report.as_ref().is_some_and(|r| r.close_needed);
                let state = match (debug, state) {
                    (false, ServerState::Idle) => "idle",
                    (false, ServerState::Active) => "active",
                    (false, ServerState::Used) => "used",
                    (false, ServerState::Login) => "new",
                    (true, ServerState::Idle) => "sv_idle",
                    (true, ServerState::Active) => "sv_active",
                    (true, ServerState::Used) => "sv_used",
                    (true, ServerState::Login) => "sv_login",
                };
                let owner = up.map_or(0, |u| u.owner);
                push(vec![
                    s("S"),
                    s(&user),
                    s(&p.database),
                    s("none"),
                    s(state),
                    s(&host),
                    n(port),
                    s(up.map(|u| u.local_addr.clone()).unwrap_or_default()),
                    n(up.map_or(0, |u| u.local_port)),
                    s(timestamp(up.map_or(0, |u| u.connect_time_us))),
                    s(timestamp(up.map_or(0, |u| u.request_time_us.max(u.connect_time_us)))),
                    n(0),
                    n(0),
                    n(u8::from(close_needed)),
                    s(server_ptr(w.index)),
                    s(if owner != 0 { client_ptr(owner) } else { String::new() }),
                    n(up.map_or(0, |u| u.backend_pid)),
                    s(""),
                    s(if owner != 0 { app_names.get(&owner).copied().unwrap_or("") } else { "" }),
                    n(up.map_or(0, |u| u.prepared)),
                    n(w.index),
                ]);
            }
        }
    }
    r
}

fn databases(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new(
        "ssissiiiissiiiiii",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ],
    );
    let servers = servers_by_database(snap);
    let mut clients: HashMap<&str, u64> = HashMap::new();
    for c in &snap.clients {
        *clients.entry(c.database.as_str()).or_default() += 1;
    }
    let mut rows: Vec<(String, Vec<Option<String>>)> = snap
        .databases
        .iter()
        .map(|d| {
            let row = vec![
                s(&d.name),
                s(&d.host),
                n(d.port),
                s(&d.dbname),
                d.force_user.clone(),
                n(d.pool_size),
                n(d.min_pool_size),
                n(d.reserve_pool_size),
                n(d.server_lifetime_s),
                s(mode_name(d.pool_mode)),
                None,
                n(d.max_connections),
                n(servers.get(d.name.as_str()).copied().unwrap_or(0)),
                n(d.max_client_connections),
                n(clients.get(d.name.as_str()).copied().unwrap_or(0)),
                n(u8::from(d.paused)),
                n(u8::from(d.disabled)),
            ];
            (d.name.clone(), row)
        })
        .collect();
    // The console's own database, as PgBouncer lists it.
    rows.push((
        "pgbouncer".into(),
        vec![
            s("pgbouncer"),
            None,
            n(snap.listen_port),
            s("pgbouncer"),
            s("pgbouncer"),
            n(2),
            n(0),
            n(0),
            n(0),
            s("statement"),
            None,
            n(0),
            n(0),
            n(0),
            n(0),
            n(0),
            n(0),
        ],
    ));
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    r.rows = rows.into_iter().map(|(_, row)| row).collect();
    r
}

fn users(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new(
        "ssssiiii",
        &[
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
    );
    let mut names: Vec<(&str, Option<&UserInfo>)> =
        snap.users.iter().enumerate().map(|(i, u)| (u.as_str(), snap.user_limits.get(i))).collect();
    if !names.iter().any(|(n, _)| *n == "pgbouncer") {
        names.push(("pgbouncer", None));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(b.0));
    names.dedup_by(|a, b| a.0 == b.0);
    // PgBouncer prints a user's own sizes right-aligned in nine characters, and nothing when it has none.
    let size = |v: Option<u32>| s(v.map(|v| format!("{v:>9}")).unwrap_or_default());
    for (name, limits) in names {
        let servers: usize = snap
            .pools
            .iter()
            .filter(|p| p.user == name)
            .flat_map(|p| p.workers.iter())
            .filter(|w| w.report.as_ref().is_some_and(|r| r.upstream.is_some()))
            .count();
        let clients = snap.clients.iter().filter(|c| c.user == name).count();
        let l = limits.cloned().unwrap_or_default();
        r.push(vec![
            s(name),
            size(l.pool_size),
            size(l.reserve_pool_size),
            l.pool_mode.map(|m| mode_name(m).to_string()),
            n(l.max_connections),
            n(servers),
            n(l.max_client_connections),
            n(clients),
        ]);
    }
    r
}

fn config(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new("ssss", &["key", "value", "default", "changeable"]);
    for (k, v, d, c) in &snap.settings {
        r.push(vec![s(k), s(v), s(d), s(if *c { "yes" } else { "no" })]);
    }
    r
}

fn lists(snap: &Snapshot, local: &Local) -> ResultSet {
    let mut r = ResultSet::new("si", &["list", "items"]);
    let servers: usize = snap
        .pools
        .iter()
        .flat_map(|p| p.workers.iter())
        .filter(|w| w.report.as_ref().is_some_and(|r| r.upstream.is_some()))
        .count();
    let users = {
        let mut u: Vec<&str> = snap.users.iter().map(String::as_str).collect();
        u.push("pgbouncer");
        u.sort_unstable();
        u.dedup();
        u.len()
    };
    for (name, v) in [
        ("databases", snap.databases.len() + 1),
        ("users", users),
        ("peers", 0),
        ("pools", snap.pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", snap.clients.len()),
        ("login_clients", local.login_clients),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        r.push(vec![s(name), n(v)]);
    }
    r
}

fn state(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new("ss", &["key", "value"]);
    let yes = |b: bool| s(if b { "yes" } else { "no" });
    r.push(vec![s("active"), yes(snap.pause_state == 0)]);
    r.push(vec![s("paused"), yes(snap.pause_state == 1)]);
    r.push(vec![s("suspended"), yes(snap.pause_state == 2)]);
    r
}

/// Why a session holds its upstream, from its pin bits.
pub fn pin_reasons(pins: u8) -> String {
    let mut out: Vec<&str> = Vec::new();
    for (bit, why) in [
        (PIN_TEMP, "temporary table"),
        (PIN_HOLD_CURSOR, "WITH HOLD cursor"),
        (PIN_ADVISORY, "advisory lock"),
        (PIN_LOAD, "LOAD"),
        (PIN_IN_TRANSACTION, "in transaction"),
    ] {
        if pins & bit != 0 {
            out.push(why);
        }
    }
    out.join(", ")
}

fn pins(snap: &Snapshot) -> ResultSet {
    let mut r = ResultSet::new("ssiiqs", &["database", "user", "server_id", "server_pid", "session_id", "reason"]);
    for p in sorted_pools(snap) {
        for w in &p.workers {
            let Some(rep) = &w.report else { continue };
            let pid = rep.upstream.as_ref().map_or(0, |u| u.backend_pid);
            for sess in &rep.sessions {
                if sess.pins != 0 {
                    r.push(vec![
                        s(&p.database),
                        s(&p.user),
                        n(w.index),
                        n(pid),
                        n(sess.session_id),
                        s(pin_reasons(sess.pins)),
                    ]);
                }
            }
        }
    }
    r
}

/// SHOW HELP's notice detail: PgBouncer's list plus pgmux's own command.
pub const HELP_DETAIL: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW PEERS|PEER_POOLS\n\
\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n\
\tSHOW DNS_HOSTS|DNS_ZONES\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSHOW PINS (pgmux)\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSUSPEND\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
\tWAIT_CLOSE [<db>]";

#[cfg(test)]
mod tests {
    use super::*;
    use pgmux_ipc::admin::{ClientInfo, DatabaseInfo, MODE_TRANSACTION};
    use pgmux_ipc::stats::{UpstreamReport, WorkerReport};

    fn session(id: u64, state: SessionState, wait_us: u64, pins: u8) -> SessionReport {
        SessionReport { session_id: id, state, wait_us, request_time_us: 0, prepared: 1, pins }
    }

    fn snapshot() -> Snapshot {
        let upstream = |state, owner| UpstreamReport {
            backend_pid: 900 + owner as u32,
            state,
            owner,
            connect_time_us: 1_700_000_000_000_000,
            request_time_us: 0,
            local_addr: "127.0.0.1".into(),
            local_port: 40000,
            prepared: 3,
            application_name: String::new(),
        };
        let w1 = WorkerInfo {
            index: 1,
            pid: 11,
            fresh: true,
            report: Some(WorkerReport {
                counters: Counters { xact_count: 10, query_count: 20, xact_time_us: 1000, ..Counters::default() },
                upstream: Some(upstream(ServerState::Active, 1)),
                sessions: vec![
                    session(1, SessionState::Active, 0, PIN_TEMP | PIN_IN_TRANSACTION),
                    session(2, SessionState::Waiting, 2_500_000, 0),
                    session(3, SessionState::Idle, 0, 0),
                ],
                ..WorkerReport::default()
            }),
        };
        let w2 = WorkerInfo {
            index: 2,
            pid: 12,
            fresh: true,
            report: Some(WorkerReport {
                upstream: Some(upstream(ServerState::Idle, 0)),
                sessions: vec![session(4, SessionState::Idle, 0, 0)],
                ..WorkerReport::default()
            }),
        };
        let w3 = WorkerInfo { index: 3, pid: 13, fresh: false, report: None };
        let client = |id: u64| ClientInfo {
            id,
            database: "appdb".into(),
            user: "alice".into(),
            addr: "127.0.0.1".into(),
            port: 50000 + id as u32,
            local_addr: "127.0.0.1".into(),
            local_port: 6432,
            connect_time_us: 1_700_000_000_000_000,
            application_name: format!("app{id}"),
        };
        Snapshot {
            now_us: 1_700_000_100_000_000,
            pause_state: 0,
            listen_port: 6432,
            databases: vec![DatabaseInfo {
                name: "appdb".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                dbname: "appdb".into(),
                force_user: None,
                pool_size: 4,
                pool_mode: MODE_TRANSACTION,
                server_lifetime_s: 3600,
                paused: false,
                disabled: true,
                min_pool_size: 1,
                reserve_pool_size: 2,
                max_connections: 30,
                max_client_connections: 40,
            }],
            pools: vec![PoolInfo {
                database: "appdb".into(),
                user: "alice".into(),
                pool_mode: MODE_TRANSACTION,
                size: 4,
                waiting: vec![(5, 3_000_001)],
                workers: vec![w1, w2, w3],
                totals: Counters { xact_count: 70, query_count: 140, xact_time_us: 7000, ..Counters::default() },
                window_start: Counters { xact_count: 10, query_count: 20, xact_time_us: 1000, ..Counters::default() },
                window_us: 60_000_000,
                ..PoolInfo::default()
            }],
            clients: (1..=5).map(client).collect(),
            users: vec!["alice".into()],
            user_limits: vec![UserInfo {
                pool_size: Some(7),
                reserve_pool_size: None,
                pool_mode: Some(MODE_SESSION),
                max_connections: 3,
                max_client_connections: 0,
            }],
            settings: vec![("listen_port".into(), "6432".into(), "6432".into(), false)],
            workers: 3,
            ..Snapshot::default()
        }
    }

    fn col(r: &ResultSet, name: &str) -> usize {
        r.columns.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("no column {name}"))
    }

    fn get<'a>(r: &'a ResultSet, row: usize, name: &str) -> &'a str {
        r.rows[row][col(r, name)].as_deref().unwrap_or("NULL")
    }

    #[test]
    fn pools_counts() {
        let r = result(Show::Pools, &snapshot(), &Local::default());
        assert_eq!(r.columns.len(), 17);
        assert_eq!(r.columns[2], ("cl_active", INT4_OID));
        assert_eq!(get(&r, 0, "cl_active"), "3");
        assert_eq!(get(&r, 0, "cl_waiting"), "2");
        assert_eq!(get(&r, 0, "sv_active"), "1");
        assert_eq!(get(&r, 0, "sv_idle"), "1");
        assert_eq!(get(&r, 0, "sv_login"), "1");
        assert_eq!(get(&r, 0, "maxwait"), "3");
        assert_eq!(get(&r, 0, "maxwait_us"), "1");
        assert_eq!(get(&r, 0, "pool_mode"), "transaction");
        assert_eq!(get(&r, 0, "load_balance_hosts"), "NULL");
    }

    #[test]
    fn stats_totals_and_averages() {
        let snap = snapshot();
        let r = result(Show::Stats, &snap, &Local::default());
        assert_eq!(r.columns.len(), 23);
        assert!(r.columns.iter().skip(1).all(|(_, oid)| *oid == NUMERIC_OID));
        assert_eq!(get(&r, 0, "total_xact_count"), "70");
        // 60 transactions in 60 s; 6000 µs over 60 transactions.
        assert_eq!(get(&r, 0, "avg_xact_count"), "1");
        assert_eq!(get(&r, 0, "avg_xact_time"), "100");
        let t = result(Show::StatsTotals, &snap, &Local::default());
        assert_eq!(t.columns.len(), 12);
        assert_eq!(get(&t, 0, "query_count"), "140");
        let a = result(Show::StatsAverages, &snap, &Local::default());
        assert_eq!(a.columns.last().map(|c| c.0), Some("avg_bind_count"));
        assert_eq!(get(&a, 0, "query_count"), "2");
        let totals = result(Show::Totals, &snap, &Local::default());
        assert_eq!(totals.rows.len(), 22);
        assert_eq!(totals.rows[1], vec![s("total_xact_count"), s("70")]);
    }

    #[test]
    fn clients_and_servers() {
        let snap = snapshot();
        let c = result(Show::Clients, &snap, &Local::default());
        assert_eq!(c.columns.len(), 21);
        assert_eq!(c.rows.len(), 5);
        let by_id = |id: &str| c.rows.iter().position(|r| r[col(&c, "id")].as_deref() == Some(id)).unwrap();
        assert_eq!(get(&c, by_id("1"), "state"), "active");
        assert_eq!(get(&c, by_id("1"), "link"), "s1");
        assert_eq!(get(&c, by_id("2"), "state"), "waiting");
        assert_eq!(get(&c, by_id("2"), "wait"), "2");
        assert_eq!(get(&c, by_id("2"), "wait_us"), "500000");
        assert_eq!(get(&c, by_id("5"), "state"), "waiting");
        assert_eq!(get(&c, by_id("3"), "state"), "idle");
        assert_eq!(get(&c, by_id("1"), "connect_time"), "2023-11-14 22:13:20 UTC");
        assert_eq!(get(&c, by_id("1"), "application_name"), "app1");
        // Waiting clients come after the active and idle ones.
        assert_eq!(get(&c, 3, "state"), "waiting");
        let s = result(Show::Servers, &snap, &Local::default());
        assert_eq!(s.rows.len(), 3);
        assert_eq!(get(&s, 0, "state"), "active");
        assert_eq!(get(&s, 0, "link"), "c1");
        assert_eq!(get(&s, 0, "remote_pid"), "901");
        assert_eq!(get(&s, 0, "application_name"), "app1");
        assert_eq!(get(&s, 2, "state"), "new");
        let sock = result(Show::Sockets, &snap, &Local::default());
        assert_eq!(sock.columns.len(), 28);
        assert_eq!(sock.rows.len(), 8);
    }

    #[test]
    fn databases_users_lists_pins() {
        let snap = snapshot();
        let d = result(Show::Databases, &snap, &Local::default());
        assert_eq!(d.rows.len(), 2);
        assert_eq!(get(&d, 0, "name"), "appdb");
        assert_eq!(get(&d, 0, "current_connections"), "2");
        assert_eq!(get(&d, 0, "current_client_connections"), "5");
        assert_eq!(get(&d, 0, "disabled"), "1");
        assert_eq!(get(&d, 0, "min_pool_size"), "1");
        assert_eq!(get(&d, 0, "reserve_pool_size"), "2");
        assert_eq!(get(&d, 0, "max_connections"), "30");
        assert_eq!(get(&d, 0, "max_client_connections"), "40");
        assert_eq!(get(&d, 1, "name"), "pgbouncer");
        assert_eq!(get(&d, 1, "host"), "NULL");
        let u = result(Show::Users, &snap, &Local::default());
        assert_eq!(u.rows.len(), 2);
        assert_eq!(get(&u, 0, "current_client_connections"), "5");
        assert_eq!(get(&u, 0, "pool_size"), "        7");
        assert_eq!(get(&u, 0, "reserve_pool_size"), "");
        assert_eq!(get(&u, 0, "pool_mode"), "session");
        assert_eq!(get(&u, 0, "max_user_connections"), "3");
        assert_eq!((get(&u, 1, "name"), get(&u, 1, "pool_mode")), ("pgbouncer", "NULL"));
        let l = result(Show::Lists, &snap, &Local { login_clients: 3 });
        assert_eq!(l.rows[6], vec![s("used_clients"), s("5")]);
        assert_eq!(l.rows[7], vec![s("login_clients"), s("3")]);
        let p = result(Show::Pins, &snap, &Local::default());
        assert_eq!(
            p.rows,
            vec![vec![s("appdb"), s("alice"), s("1"), s("901"), s("1"), s("temporary table, in transaction")]]
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "");
        assert_eq!(timestamp(1), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(4_102_444_799_000_000), "2099-12-31 23:59:59 UTC");
    }
}
