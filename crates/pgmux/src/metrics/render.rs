//! The supervisor's snapshot as Prometheus text exposition format 0.0.4, sans IO: one `# HELP` and one `# TYPE` line
//! per metric family, then its samples, each family's samples together. Names follow pgbouncer_exporter's where it
//! has the metric (`pgbouncer_pools_client_active_connections` → `pgmux_pools_client_active_connections`); pool
//! gauges are computed exactly as SHOW POOLS computes its columns (`admin::show::pool_counts`), so the two never
//! disagree. Times are seconds, as Prometheus wants; pgmux counts microseconds.

use std::fmt::Write as _;

use pgmux_ipc::admin::{PoolInfo, Snapshot};
use pgmux_ipc::stats::{Histogram, BUCKET_BOUNDS_US};

use crate::admin::show::{pool_counts, servers_by_database, PoolCounts};

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: &str) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and line feed (the format's only escapes).
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Microseconds as seconds, printed without an exponent or a needless fraction ("0.0005", "1", "2.5").
pub fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1_000_000.0)
}

/// The whole exposition of one snapshot.
pub fn render(snap: &Snapshot) -> String {
    let mut e = Exposition::default();
    process(&mut e, snap);
    databases(&mut e, snap);
    pools(&mut e, snap);
    e.out
}

fn process(e: &mut Exposition, snap: &Snapshot) {
    let p = &snap.process;
    e.single(
        "pgmux_up",
        Kind::Gauge,
        "Whether the supervisor answered this scrape (always 1 when there is an answer).",
        "1",
    );
    e.family("pgmux_version_info", Kind::Gauge, "pgmux's version, as a label.");
    e.sample("pgmux_version_info", &[("version", env!("CARGO_PKG_VERSION"))], "1");
    e.single(
        "pgmux_start_time_seconds",
        Kind::Gauge,
        "When the supervisor started, in seconds since the Unix epoch.",
        &seconds(p.start_time_us),
    );
    e.single("pgmux_listeners", Kind::Gauge, "Listener processes alive.", &p.listeners.to_string());
    e.single(
        "pgmux_workers",
        Kind::Gauge,
        "Worker processes alive (each holds at most one server connection).",
        &snap.workers.to_string(),
    );
    e.single(
        "pgmux_client_connections",
        Kind::Gauge,
        "Client connections logged in (console connections and logins in progress excluded).",
        &snap.clients.len().to_string(),
    );
    let max_client_conn =
        snap.settings.iter().find(|(k, ..)| k == "max_client_conn").map_or("0", |(_, v, ..)| v.as_str());
    e.single(
        "pgmux_config_max_client_connections",
        Kind::Gauge,
        "Configured max_client_conn.",
        max_client_conn.parse::<u64>().map_or("0".to_string(), |v| v.to_string()).as_str(),
    );
    for (name, help, value) in [
        ("pgmux_worker_crashes_total", "Workers that died of a signal or a non-zero exit.", p.worker_crashes),
        ("pgmux_listener_crashes_total", "Listeners that died of a signal or a non-zero exit.", p.listener_crashes),
        (
            "pgmux_sessions_migrated_total",
            "Sessions a worker handed back to move to another worker of their pool (waiting behind a busy server, \
             draining).",
            p.sessions_migrated,
        ),
        (
            "pgmux_sessions_recovered_total",
            "Sessions whose worker exited or died and that went on at another worker.",
            p.sessions_recovered,
        ),
        ("pgmux_sessions_lost_total", "Sessions closed because their worker died while serving them.", p.sessions_lost),
    ] {
        e.single(name, Kind::Counter, help, &value.to_string());
    }
}

fn databases(e: &mut Exposition, snap: &Snapshot) {
    let servers = servers_by_database(snap);
    let mut dbs: Vec<&pgmux_ipc::admin::DatabaseInfo> = snap.databases.iter().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    type Value = fn(&pgmux_ipc::admin::DatabaseInfo, u64) -> u64;
    let families: [(&str, &str, Value); 5] = [
        ("pgmux_databases_pool_size", "Configured server connections per pool of the database.", |d, _| {
            u64::from(d.pool_size)
        }),
        (
            "pgmux_databases_max_connections",
            "Limit on the database's server connections over all its pools (0: none, as PgBouncer's \
             max_db_connections).",
            |_, _| 0,
        ),
        ("pgmux_databases_current_connections", "Server connections open to the database.", |_, current| current),
        ("pgmux_databases_paused", "1 if the database is paused (PAUSE, SUSPEND, KILL).", |d, _| u64::from(d.paused)),
        ("pgmux_databases_disabled", "1 if the database refuses new clients (DISABLE).", |d, _| u64::from(d.disabled)),
    ];
    for (name, help, value) in families {
        e.family(name, Kind::Gauge, help);
        for d in &dbs {
            let current = servers.get(d.name.as_str()).copied().unwrap_or(0);
            e.sample(name, &[("database", &d.name)], &value(d, current).to_string());
        }
    }
}

fn pools(e: &mut Exposition, snap: &Snapshot) {
    let mut pools: Vec<(&PoolInfo, PoolCounts)> = snap.pools.iter().map(|p| (p, pool_counts(p))).collect();
    pools.sort_by(|a, b| (&a.0.database, &a.0.user).cmp(&(&b.0.database, &b.0.user)));
    type Value = fn(&PoolInfo, &PoolCounts) -> String;
    let families: [(&str, Kind, &str, Value); 17] = [
        (
            "pgmux_pools_client_active_connections",
            Kind::Gauge,
            "Client connections not waiting: linked to a server connection, or idle (SHOW POOLS cl_active).",
            |_, c| c.cl_active.to_string(),
        ),
        (
            "pgmux_pools_client_waiting_connections",
            Kind::Gauge,
            "Client connections with a request waiting for a server connection (SHOW POOLS cl_waiting).",
            |_, c| c.cl_waiting.to_string(),
        ),
        ("pgmux_pools_server_active_connections", Kind::Gauge, "Server connections linked to a client.", |_, c| {
            c.sv_active.to_string()
        }),
        (
            "pgmux_pools_server_idle_connections",
            Kind::Gauge,
            "Server connections unused and ready for a client.",
            |_, c| c.sv_idle.to_string(),
        ),
        (
            "pgmux_pools_server_used_connections",
            Kind::Gauge,
            "Server connections being cleaned (rollback, reset) before the next client.",
            |_, c| c.sv_used.to_string(),
        ),
        ("pgmux_pools_server_login_connections", Kind::Gauge, "Server connections logging in.", |_, c| {
            c.sv_login.to_string()
        }),
        (
            "pgmux_pools_client_maxwait_seconds",
            Kind::Gauge,
            "How long the oldest waiting client has waited.",
            |_, c| seconds(c.maxwait_us),
        ),
        ("pgmux_pools_pool_size", Kind::Gauge, "Largest number of server connections of the pool.", |p, _| {
            p.size.to_string()
        }),
        ("pgmux_server_assignments_total", Kind::Counter, "Times a client was given a server connection.", |p, _| {
            p.totals.server_assignment_count.to_string()
        }),
        (
            "pgmux_pipelined_turns_total",
            Kind::Counter,
            "Requests sent to a server connection behind another client's, before its reply (pgmux only).",
            |p, _| p.totals.pipelined_count.to_string(),
        ),
        ("pgmux_transactions_total", Kind::Counter, "Transactions pooled (an autocommit statement is one).", |p, _| {
            p.totals.xact_count.to_string()
        }),
        ("pgmux_queries_total", Kind::Counter, "Queries pooled.", |p, _| p.totals.query_count.to_string()),
        ("pgmux_received_bytes_total", Kind::Counter, "Bytes received from clients.", |p, _| {
            p.totals.received.to_string()
        }),
        ("pgmux_sent_bytes_total", Kind::Counter, "Bytes sent to clients.", |p, _| p.totals.sent.to_string()),
        (
            "pgmux_transactions_duration_seconds_total",
            Kind::Counter,
            "Time spent in transactions on server connections.",
            |p, _| seconds(p.totals.xact_time_us),
        ),
        (
            "pgmux_queries_duration_seconds_total",
            Kind::Counter,
            "Time spent running queries on server connections.",
            |p, _| seconds(p.totals.query_time_us),
        ),
        (
            "pgmux_client_wait_seconds_total",
            Kind::Counter,
            "Time clients spent waiting for a server connection.",
            |p, _| seconds(p.totals.wait_time_us),
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help);
        for (p, c) in &pools {
            e.sample(name, &[("database", &p.database), ("user", &p.user)], &value(p, c));
        }
    }
    histogram(
        e,
        "pgmux_query_duration_seconds",
        "Query duration: from the query's first byte sent to the server to its ReadyForQuery.",
        &pools,
        |p| &p.latency.query,
    );
    histogram(
        e,
        "pgmux_client_wait_duration_seconds",
        "Client wait: from a request arriving to the start of its turn on a server connection.",
        &pools,
        |p| &p.latency.wait,
    );
}

fn histogram(
    e: &mut Exposition,
    name: &str,
    help: &str,
    pools: &[(&PoolInfo, PoolCounts)],
    pick: fn(&PoolInfo) -> &Histogram,
) {
    e.family(name, Kind::Histogram, help);
    let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
    for (p, _) in pools {
        let h = pick(p);
        let (db, user) = (("database", p.database.as_str()), ("user", p.user.as_str()));
        let labels = [db, user];
        for (bound, n) in BUCKET_BOUNDS_US.iter().zip(h.cumulative()) {
            let le = seconds(*bound);
            e.sample(&bucket, &[db, user, ("le", &le)], &n.to_string());
        }
        e.sample(&bucket, &[db, user, ("le", "+Inf")], &h.count().to_string());
        e.sample(&sum, &labels, &seconds(h.sum_us));
        e.sample(&count, &labels, &h.count().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgmux_ipc::admin::{DatabaseInfo, ProcessInfo, WorkerInfo};
    use pgmux_ipc::stats::{Counters, SessionReport, SessionState, WorkerReport};

    fn snapshot() -> Snapshot {
        let mut latency = pgmux_ipc::stats::Latency::default();
        for us in [100, 700, 700, 3_000_000, 60_000_000] {
            latency.query.observe(us);
        }
        let session = |id, state, wait_us| SessionReport {
            session_id: id,
            state,
            wait_us,
            request_time_us: 0,
            prepared: 0,
            pins: 0,
        };
        Snapshot {
            databases: vec![DatabaseInfo {
                name: "app\"db".into(),
                pool_size: 4,
                paused: true,
                ..DatabaseInfo::default()
            }],
            pools: vec![PoolInfo {
                database: "app\"db".into(),
                user: "a\\li\nce".into(),
                size: 4,
                waiting: vec![(9, 2_500_000)],
                workers: vec![WorkerInfo {
                    index: 1,
                    pid: 10,
                    fresh: true,
                    report: Some(WorkerReport {
                        sessions: vec![
                            session(1, SessionState::Active, 0),
                            session(2, SessionState::Waiting, 1_000),
                            session(3, SessionState::Idle, 0),
                        ],
                        ..WorkerReport::default()
                    }),
                }],
                totals: Counters { xact_count: 200, query_time_us: 1_500_000, ..Counters::default() },
                latency,
                ..PoolInfo::default()
            }],
            settings: vec![("max_client_conn".into(), "100".into(), "100".into(), true)],
            workers: 1,
            process: ProcessInfo { listeners: 2, worker_crashes: 3, ..ProcessInfo::default() },
            ..Snapshot::default()
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_label_value("é{},="), "é{},=");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn seconds_are_plain_decimals() {
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1), "0.000001");
        let les: Vec<String> = BUCKET_BOUNDS_US.iter().map(|b| seconds(*b)).collect();
        assert_eq!(les.join(","), "0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10");
    }

    #[test]
    fn samples_and_labels() {
        let text = render(&snapshot());
        let labels = r#"{database="app\"db",user="a\\li\nce"}"#;
        for line in [
            "pgmux_up 1".to_string(),
            "pgmux_workers 1".to_string(),
            "pgmux_listeners 2".to_string(),
            "pgmux_worker_crashes_total 3".to_string(),
            "pgmux_config_max_client_connections 100".to_string(),
            r#"pgmux_databases_paused{database="app\"db"} 1"#.to_string(),
            r#"pgmux_databases_pool_size{database="app\"db"} 4"#.to_string(),
            format!("pgmux_transactions_total{labels} 200"),
            format!("pgmux_queries_duration_seconds_total{labels} 1.5"),
            // 2 sessions not waiting, 1 waiting in the worker and 1 held by the supervisor.
            format!("pgmux_pools_client_active_connections{labels} 2"),
            format!("pgmux_pools_client_waiting_connections{labels} 2"),
            format!("pgmux_pools_client_maxwait_seconds{labels} 2.5"),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="0.0005"} 1"#.to_string(),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="0.001"} 3"#.to_string(),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="2.5"} 3"#.to_string(),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="5"} 4"#.to_string(),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="10"} 4"#.to_string(),
            r#"pgmux_query_duration_seconds_bucket{database="app\"db",user="a\\li\nce",le="+Inf"} 5"#.to_string(),
            format!("pgmux_query_duration_seconds_sum{labels} 63.0015"),
            format!("pgmux_query_duration_seconds_count{labels} 5"),
            format!("pgmux_client_wait_duration_seconds_count{labels} 0"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_declared_once_before_its_samples() {
        let text = render(&snapshot());
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut seen_samples_of: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(!declared.iter().any(|(n, _)| n == name), "{name} declared twice");
                declared.push((name.to_string(), kind.to_string()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = declared.last().unwrap();
            let base = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name),
                _ => name,
            };
            assert_eq!(base, family, "sample {line:?} outside its family");
            if seen_samples_of.last() != Some(&family.clone()) {
                assert!(!seen_samples_of.contains(family), "{family}'s samples are split");
                seen_samples_of.push(family.clone());
            }
        }
        assert!(text.ends_with('\n'));
    }
}
