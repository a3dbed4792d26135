//! Parsing one admin console query into a command, with PgBouncer's grammar and error messages.
//!
//! PgBouncer accepts `WORD [WORD] [;]` (a word is `[0-9a-z_]+` in any case, or a double-quoted identifier with `""`
//! for a quote), `SET key = value` / `SET key TO value` (value a word or a single-quoted string with `''`), and
//! nothing else: one command per query, no comments. Privileges are checked here too, after the syntax, in
//! PgBouncer's order: every command but SHOW (and SHOW FDS) needs an admin user.

use pgmux_ipc::admin::{AdminCommand, ShutdownMode};

/// Longest command word and argument PgBouncer accepts (its buffers are 16 and 64 bytes).
const MAX_CMD: usize = 15;
const MAX_ARG: usize = 63;
const MAX_SET_VALUE: usize = 255;

/// The SHOW commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Version,
    Config,
    Databases,
    Pools,
    Clients,
    Servers,
    Users,
    Stats,
    StatsTotals,
    StatsAverages,
    Totals,
    Lists,
    State,
    Mem,
    Peers,
    PeerPools,
    DnsHosts,
    DnsZones,
    Sockets,
    ActiveSockets,
    /// pgmux only: sessions holding an upstream between transactions, and why.
    Pins,
}

impl Show {
    /// Whether the answer needs the supervisor's snapshot (the others the listener answers alone).
    pub fn needs_snapshot(self) -> bool {
        !matches!(self, Show::Help | Show::Version | Show::Mem | Show::DnsHosts | Show::DnsZones | Show::Peers)
    }
}

/// What a console query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// `SHOW client_encoding` and the like: PgBouncer answers a few parameters with fixed values for clients that
    /// probe them.
    FakeShow {
        name: &'static str,
        value: &'static str,
    },
    /// `SET client_encoding = ...`: accepted and ignored with a notice.
    FakeSet,
    /// Carried out by the supervisor; `tag` is the CommandComplete when it succeeds.
    Control {
        command: AdminCommand,
        tag: String,
    },
}

/// A refused query: the ErrorResponse message (SQLSTATE 08P01, as PgBouncer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Parameters PgBouncer fakes for clients that SHOW or SET them.
const FAKE_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
    ("extra_float_digits", "2"),
];

/// Parses `query` for a console user; `admin` is false for stats_users.
pub fn parse(query: &str, admin: bool) -> Result<Command, Refusal> {
    let syntax = || Refusal(format!("invalid command '{query}', use SHOW HELP;"));
    let toks = tokenize(query).ok_or_else(syntax)?;
    let toks = strip_semicolon(&toks).ok_or_else(syntax)?;
    if let Some(Tok::Word(w)) = toks.first() {
        if w.eq_ignore_ascii_case("set") {
            return parse_set(toks, admin).unwrap_or_else(|| Err(syntax()));
        }
    }
    let (cmd, arg) = match toks {
        [Tok::Word(c)] | [Tok::Quoted(c)] => (c.as_str(), None),
        [Tok::Word(c) | Tok::Quoted(c), Tok::Word(a) | Tok::Quoted(a)] => (c.as_str(), Some(a.as_str())),
        _ => return Err(syntax()),
    };
    if cmd.len() > MAX_CMD || arg.is_some_and(|a| a.len() > MAX_ARG) {
        return Err(Refusal("bad arguments".into()));
    }
    let cmd = cmd.to_ascii_lowercase();
    let need_admin = || if admin { Ok(()) } else { Err(Refusal("admin access needed".into())) };
    let db = || arg.map(str::to_string);
    let control = |command: AdminCommand, tag: &str| Ok(Command::Control { command, tag: tag.to_string() });
    match cmd.as_str() {
        "show" | "select" => parse_show(arg.ok_or_else(syntax)?, admin).ok_or_else(syntax)?,
        "reload" | "suspend" if arg.is_some() => Err(syntax()),
        "reload" => need_admin().and_then(|_| control(AdminCommand::Reload, "RELOAD")),
        "suspend" => need_admin().and_then(|_| control(AdminCommand::Suspend, "SUSPEND")),
        "pause" => need_admin().and_then(|_| control(AdminCommand::Pause { db: db() }, "PAUSE")),
        "resume" => need_admin().and_then(|_| control(AdminCommand::Resume { db: db() }, "RESUME")),
        "kill" => need_admin().and_then(|_| control(AdminCommand::Kill { db: db() }, "KILL")),
        "reconnect" => need_admin().and_then(|_| control(AdminCommand::Reconnect { db: db() }, "RECONNECT")),
        "wait_close" => need_admin().and_then(|_| control(AdminCommand::WaitClose { db: db() }, "WAIT_CLOSE")),
        "disable" | "enable" => {
            need_admin()?;
            let db = arg.ok_or_else(|| Refusal("a database is required".into()))?.to_string();
            if cmd == "disable" {
                control(AdminCommand::Disable { db }, "DISABLE")
            } else {
                control(AdminCommand::Enable { db }, "ENABLE")
            }
        }
        "kill_client" => {
            need_admin()?;
            let id = arg
                .and_then(|a| a.parse::<u64>().ok())
                .ok_or_else(|| Refusal("invalid client pointer supplied".into()))?;
            control(AdminCommand::KillClient { id }, "KILL_CLIENT")
        }
        "shutdown" => {
            let mode = match arg.map(str::to_ascii_lowercase).as_deref() {
                None => ShutdownMode::Immediate,
                Some("wait_for_clients") => ShutdownMode::WaitForClients,
                Some("wait_for_servers") => ShutdownMode::WaitForServers,
                Some(_) => return Err(syntax()),
            };
            need_admin()?;
            control(AdminCommand::Shutdown { mode }, "SHUTDOWN")
        }
        _ => Err(syntax()),
    }
}

fn parse_show(what: &str, admin: bool) -> Option<Result<Command, Refusal>> {
    let lower = what.to_ascii_lowercase();
    if let Some((name, value)) = FAKE_PARAMS.iter().find(|(n, _)| *n == lower) {
        return Some(Ok(Command::FakeShow { name, value }));
    }
    let show = match lower.as_str() {
        "help" => Show::Help,
        "version" => Show::Version,
        "config" => Show::Config,
        "databases" => Show::Databases,
        "pools" => Show::Pools,
        "clients" => Show::Clients,
        "servers" => Show::Servers,
        "users" => Show::Users,
        "stats" => Show::Stats,
        "stats_totals" => Show::StatsTotals,
        "stats_averages" => Show::StatsAverages,
        "totals" => Show::Totals,
        "lists" => Show::Lists,
        "state" => Show::State,
        "mem" => Show::Mem,
        "peers" => Show::Peers,
        "peer_pools" => Show::PeerPools,
        "dns_hosts" => Show::DnsHosts,
        "dns_zones" => Show::DnsZones,
        "sockets" => Show::Sockets,
        "active_sockets" => Show::ActiveSockets,
        "pins" => Show::Pins,
        // Dangerous to show to everybody in PgBouncer (cancel keys, passwords); pgmux cannot pass its sockets
        // anyway, since they live in other processes.
        "fds" if !admin => return Some(Err(Refusal("admin access needed".into()))),
        "fds" => return Some(Err(Refusal("SHOW FDS is not supported by pgmux (online restart is not)".into()))),
        _ => return None,
    };
    Some(Ok(Command::Show(show)))
}

fn parse_set(toks: &[Tok], admin: bool) -> Option<Result<Command, Refusal>> {
    let [_, key, op, value] = toks else { return None };
    let key = match key {
        Tok::Word(k) | Tok::Quoted(k) => k,
        Tok::Str(_) | Tok::Eq | Tok::Semi => return None,
    };
    match op {
        Tok::Eq => {}
        Tok::Word(w) if w.eq_ignore_ascii_case("to") => {}
        _ => return None,
    }
    let value = match value {
        Tok::Word(v) | Tok::Quoted(v) | Tok::Str(v) => v,
        Tok::Eq | Tok::Semi => return None,
    };
    if key.is_empty() || key.len() > MAX_ARG || value.len() > MAX_SET_VALUE {
        return Some(Err(Refusal("bad arguments".into())));
    }
    let key = key.to_ascii_lowercase();
    if FAKE_PARAMS.iter().any(|(n, _)| *n == key) {
        return Some(Ok(Command::FakeSet));
    }
    if !admin {
        return Some(Err(Refusal("admin access needed".into())));
    }
    let tag = format!("SET {key}={value}");
    Some(Ok(Command::Control { command: AdminCommand::Set { key, value: value.clone() }, tag }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// `[0-9A-Za-z_]+`
    Word(String),
    /// `"..."` with `""` unescaped.
    Quoted(String),
    /// `'...'` with `''` unescaped.
    Str(String),
    Eq,
    Semi,
}

/// Splits a query into PgBouncer's tokens; None on anything else (an unterminated quote, a stray character).
fn tokenize(q: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '=' => {
                chars.next();
                out.push(Tok::Eq);
            }
            ';' => {
                chars.next();
                out.push(Tok::Semi);
            }
            '"' | '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        q if q == c => {
                            if chars.peek() == Some(&c) {
                                chars.next();
                                s.push(c);
                            } else {
                                break;
                            }
                        }
                        other => s.push(other),
                    }
                }
                // PgBouncer's identifier pattern needs at least one character between the quotes.
                if c == '"' && s.is_empty() {
                    return None;
                }
                out.push(if c == '"' { Tok::Quoted(s) } else { Tok::Str(s) });
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(s));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The tokens before one optional trailing `;`.
fn strip_semicolon(toks: &[Tok]) -> Option<&[Tok]> {
    let toks = match toks.split_last() {
        Some((Tok::Semi, rest)) => rest,
        _ => toks,
    };
    if toks.contains(&Tok::Semi) || toks.is_empty() {
        return None;
    }
    Some(toks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Command {
        parse(q, true).unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    fn err(q: &str, admin: bool) -> String {
        match parse(q, admin) {
            Err(Refusal(m)) => m,
            Ok(c) => panic!("{q}: accepted as {c:?}"),
        }
    }

    fn control(q: &str) -> AdminCommand {
        match ok(q) {
            Command::Control { command, .. } => command,
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn show_commands() {
        assert_eq!(ok("SHOW POOLS"), Command::Show(Show::Pools));
        assert_eq!(ok("  show\tpools ; "), Command::Show(Show::Pools));
        assert_eq!(ok("show stats_totals;"), Command::Show(Show::StatsTotals));
        assert_eq!(ok("SELECT clients"), Command::Show(Show::Clients));
        assert_eq!(ok("show \"pools\""), Command::Show(Show::Pools));
        assert_eq!(ok("show pins"), Command::Show(Show::Pins));
        assert_eq!(ok("SHOW client_encoding"), Command::FakeShow { name: "client_encoding", value: "UTF-8" });
        assert_eq!(parse("show stats", false), Ok(Command::Show(Show::Stats)));
    }

    #[test]
    fn controls() {
        assert_eq!(control("PAUSE"), AdminCommand::Pause { db: None });
        assert_eq!(control("pause appdb;"), AdminCommand::Pause { db: Some("appdb".into()) });
        assert_eq!(control("PAUSE \"App\"\"Db\""), AdminCommand::Pause { db: Some("App\"Db".into()) });
        assert_eq!(control("resume appdb"), AdminCommand::Resume { db: Some("appdb".into()) });
        assert_eq!(control("KILL_CLIENT 42"), AdminCommand::KillClient { id: 42 });
        assert_eq!(control("shutdown wait_for_clients"), AdminCommand::Shutdown { mode: ShutdownMode::WaitForClients });
        assert_eq!(control("SHUTDOWN"), AdminCommand::Shutdown { mode: ShutdownMode::Immediate });
        assert_eq!(control("disable appdb"), AdminCommand::Disable { db: "appdb".into() });
        assert_eq!(control("reload"), AdminCommand::Reload);
        match ok("SET query_wait_timeout = 5") {
            Command::Control { command, tag } => {
                assert_eq!(command, AdminCommand::Set { key: "query_wait_timeout".into(), value: "5".into() });
                assert_eq!(tag, "SET query_wait_timeout=5");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            control("set server_reset_query to 'DISCARD ''ALL'''"),
            AdminCommand::Set { key: "server_reset_query".into(), value: "DISCARD 'ALL'".into() }
        );
        assert_eq!(ok("SET client_encoding = utf8"), Command::FakeSet);
    }

    #[test]
    fn refusals_with_pgbouncer_messages() {
        assert_eq!(err("SHOW", true), "invalid command 'SHOW', use SHOW HELP;");
        assert_eq!(err("show nothing", true), "invalid command 'show nothing', use SHOW HELP;");
        assert_eq!(err("select 1 + 1", true), "invalid command 'select 1 + 1', use SHOW HELP;");
        assert_eq!(err("SHOW POOLS; SHOW STATS", true), "invalid command 'SHOW POOLS; SHOW STATS', use SHOW HELP;");
        assert_eq!(err("", true), "invalid command '', use SHOW HELP;");
        assert_eq!(err("reload now", true), "invalid command 'reload now', use SHOW HELP;");
        assert_eq!(err("shutdown later", true), "invalid command 'shutdown later', use SHOW HELP;");
        assert_eq!(err("show 'pools'", true), "invalid command 'show 'pools'', use SHOW HELP;");
        assert_eq!(err("DISABLE", true), "a database is required");
        assert_eq!(err("KILL_CLIENT abc", true), "invalid client pointer supplied");
        assert_eq!(err("PAUSE", false), "admin access needed");
        assert_eq!(err("SHOW FDS", false), "admin access needed");
        assert_eq!(err("SET query_wait_timeout = 1", false), "admin access needed");
        assert_eq!(err(&format!("pause {}", "x".repeat(64)), true), "bad arguments");
        assert_eq!(err("show \"", true), "invalid command 'show \"', use SHOW HELP;");
        assert_eq!(err("show ☃", true), "invalid command 'show ☃', use SHOW HELP;");
    }
}
