//! `auth_query`: the secret of a user missing from auth_file, looked up in PostgreSQL, for the listener.
//!
//! A lookup connects to the upstream of the database entry `auth_dbname` names (else the one the client asked for),
//! logs in as `auth_user` (with its auth_file secret, or that entry's `password=` when the entry logs in as
//! auth_user), and runs `auth_query` with the client's user name as the parameter `$1` of an extended-protocol
//! Bind, never pasted into the SQL. A row's second column is the secret; no row, a NULL or an empty secret mean "no
//! such user", which the client learns exactly as it would learn of a wrong password.
//!
//! Where it runs: on a short-lived helper thread of the listener process, at most [`MAX_RUNNING`] at a time, each
//! bounded by `server_connect_timeout` from connect to the last byte of the answer. A lookup is a plain client
//! conversation (connect, log in with md5 or SCRAM, one query) that `worker::upstream` already implements with a
//! deadline; running it on a thread reuses that code instead of writing a second, non-blocking login state machine
//! for the mio loop, and the loop itself never waits: the thread hands its answer back through a channel and wakes
//! the loop with a `mio::Waker`. Only connections waiting for a lookup wait for it; concurrent logins of the same
//! (database, user) share one lookup.
//!
//! Results are cached per (database asked for, user) for [`CACHE_TTL`] (at most [`CACHE_MAX`] entries, per
//! listener process): a changed password is noticed when the entry expires, or at once after a reload (which
//! starts new listeners). Only found secrets are cached: a user created a moment ago can log in at once, and failed
//! lookups (PostgreSQL down, wrong auth_user password) are retried by the next login.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgmux_config::{Config, Secret, UserList};
use pgmux_proto::{backend as be, frontend as fe};

use crate::worker::upstream::{self, Address, Credential};

/// How long a looked-up secret is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Test knob (documented in the README): the cache lifetime in milliseconds, so a test can watch an entry expire
/// without waiting a minute.
pub const CACHE_TTL_ENV: &str = "PGMUX_TEST_AUTH_CACHE_TTL_MS";
/// Most cached secrets per listener process.
pub const CACHE_MAX: usize = 10_000;
/// Most lookups running at once per listener; more wait in a queue (bounded by the logins in progress).
pub const MAX_RUNNING: usize = 4;

/// (database the client asked for, user).
pub type Key = (String, String);

/// What a lookup found: `Some(secret)`, or `None` for "no such user" (no row, NULL, empty). `Err` says why the
/// lookup itself failed.
pub type Answer = Result<Option<String>, String>;

/// Everything a lookup needs, resolved from the configuration when the client asked.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: Address,
    /// The database name sent upstream.
    pub dbname: String,
    pub auth_user: String,
    pub credential: Credential,
    pub query: String,
    pub timeout: Duration,
}

impl Target {
    /// The lookup for clients of database `requested`; None when that database has no auth_user (no lookups).
    pub fn resolve(config: &Config, userlist: &UserList, requested: &str) -> Result<Option<Target>, String> {
        let Some(db) = config.database(requested) else { return Ok(None) };
        let Some(auth_user) = db.auth_user.clone() else { return Ok(None) };
        let entry_name = db.auth_dbname.as_deref().unwrap_or(requested);
        let entry =
            config.database(entry_name).ok_or_else(|| format!("auth_dbname {entry_name:?} names no database"))?;
        let credential = match (&entry.user, &entry.password, userlist.get(&auth_user)) {
            (Some(u), Some(p), _) if *u == auth_user => Credential::Plain(p.clone()),
            (_, _, Some(Secret::Plain(p))) => Credential::Plain(p.clone()),
            (_, _, Some(Secret::Md5(h))) => Credential::Md5(h.clone()),
            // No client login brings keys for auth_user: PostgreSQL asking for SCRAM makes the lookup fail, saying so.
            (_, _, Some(Secret::Scram(s))) => match pgmux_proto::auth::ScramSecret::parse(s) {
                Some(secret) => Credential::Scram { secret, client_key: None },
                None => Credential::None,
            },
            // Not listed: PostgreSQL may trust auth_user.
            (_, _, None) => Credential::None,
        };
        Ok(Some(Target {
            addr: Address::new(&entry.host, entry.port),
            dbname: config.upstream_dbname(entry, entry_name).to_string(),
            auth_user,
            credential,
            query: db.auth_query.clone(),
            timeout: config.pooler.server_connect_timeout,
        }))
    }
}

/// Parse, Bind (`$1` = the user name, as a text parameter), Execute and Sync of `query`.
pub fn encode_query(query: &str, user: &str) -> Vec<u8> {
    let mut out = Vec::new();
    fe::parse(&mut out, "", query, &[0]);
    fe::bind_text(&mut out, "", "", &[Some(user.as_bytes())]);
    fe::execute(&mut out, "", 0);
    fe::sync(&mut out);
    out
}

/// Reads the answer to [`encode_query`], message by message, until ReadyForQuery.
#[derive(Debug, Default)]
pub struct Reply {
    rows: u64,
    secret: Option<String>,
    error: Option<String>,
}

impl Reply {
    /// Feeds one backend message; Some once the answer is complete.
    pub fn on_message(&mut self, tag: u8, body: &[u8]) -> Option<Answer> {
        match tag {
            b'D' => {
                self.rows += 1;
                if self.rows == 1 {
                    match be::parse_data_row(body) {
                        Ok(cols) if cols.len() == 2 => match cols.get(1).copied().flatten() {
                            Some(v) => match std::str::from_utf8(v) {
                                Ok(s) => self.secret = Some(s.to_string()),
                                Err(_) => self.fail("auth_query returned a secret that is not UTF-8"),
                            },
                            None => self.secret = None,
                        },
                        Ok(cols) => self.fail(&format!(
                            "auth_query returned {} columns (expected 2: user name, secret)",
                            cols.len()
                        )),
                        Err(e) => self.fail(&format!("bad DataRow: {e}")),
                    }
                }
                None
            }
            b'E' => {
                let why = match be::parse_error_fields(body) {
                    Ok(f) => format!("auth_query failed: {} ({})", f.message, f.code),
                    Err(e) => format!("auth_query failed with an unreadable error: {e}"),
                };
                self.fail(&why);
                None
            }
            b'I' => {
                self.fail("auth_query is empty");
                None
            }
            // ParseComplete, BindComplete, RowDescription, NoData, CommandComplete, PortalSuspended, notices,
            // ParameterStatus, notifications: nothing to learn.
            b'1' | b'2' | b'T' | b'n' | b'C' | b's' | b'N' | b'S' | b'A' => None,
            b'Z' => Some(self.answer()),
            other => Some(Err(format!("unexpected message type {other} in the answer to auth_query"))),
        }
    }

    fn fail(&mut self, why: &str) {
        if self.error.is_none() {
            self.error = Some(why.to_string());
        }
    }

    fn answer(&mut self) -> Answer {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.rows > 1 {
            // Which row would be the user's? Refuse rather than guess.
            return Err(format!("auth_query returned {} rows (expected at most 1)", self.rows));
        }
        // PostgreSQL never accepts an empty password: an empty secret is no secret.
        Ok(self.secret.take().filter(|s| !s.is_empty()))
    }
}

/// Runs one lookup, blocking for at most `target.timeout`. Meant for a helper thread.
pub fn run(target: &Target, user: &str) -> Answer {
    let deadline = Instant::now() + target.timeout;
    let params = [
        ("user", target.auth_user.as_str()),
        ("database", target.dbname.as_str()),
        ("application_name", "pgmux auth_query"),
    ];
    let mut up = upstream::connect(&target.addr, &params, &target.auth_user, &target.credential, target.timeout)
        .map_err(|e| format!("as auth_user \"{}\" at {}: {e}", target.auth_user, target.addr))?;
    let io = |e: upstream::UpstreamError| format!("running auth_query at {}: {e}", target.addr);
    upstream::send_all(&up.conn, &encode_query(&target.query, user), deadline).map_err(io)?;
    let mut reply = Reply::default();
    let answer = loop {
        let (tag, body) = upstream::read_message(&up.conn, &mut up.inbuf, deadline).map_err(io)?;
        if let Some(answer) = reply.on_message(tag, &body) {
            break answer;
        }
    };
    let mut bye = Vec::new();
    fe::terminate(&mut bye);
    let _ = up.conn.write(&bye);
    answer
}

/// Found secrets by (database, user), each trusted for `ttl`.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<Key, (Secret, Instant)>,
    ttl: Duration,
    max: usize,
}

impl Cache {
    pub fn new(ttl: Duration, max: usize) -> Cache {
        Cache { entries: HashMap::new(), ttl, max }
    }

    /// The cached secret, unless it is older than the TTL.
    pub fn get(&self, database: &str, user: &str, now: Instant) -> Option<&Secret> {
        let (secret, at) = self.entries.get(&(database.to_string(), user.to_string()))?;
        (now.saturating_duration_since(*at) < self.ttl).then_some(secret)
    }

    pub fn insert(&mut self, key: Key, secret: Secret, now: Instant) {
        if self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            // Still full of live entries: the oldest goes.
            while self.entries.len() >= self.max {
                let oldest = self.entries.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => self.entries.remove(&k),
                    None => break,
                };
            }
        }
        self.entries.insert(key, (secret, now));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A connection waiting for a lookup: its slot, and its id so a reused slot is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub slot: usize,
    pub cid: u64,
}

/// A lookup one or more connections wait for.
#[derive(Debug)]
pub struct Request {
    pub key: Key,
    pub target: Target,
}

/// A finished lookup, handed back to the loop.
#[derive(Debug)]
pub struct Finished {
    pub key: Key,
    pub answer: Answer,
    pub waiters: Vec<Waiter>,
    pub took: Duration,
}

struct Done {
    key: Key,
    answer: Answer,
    took: Duration,
}

/// The listener's lookups: the cache, the queue, the running helper threads and who waits for what.
pub struct Lookups {
    pub cache: Cache,
    queue: VecDeque<Request>,
    waiting: HashMap<Key, Vec<Waiter>>,
    running: usize,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    waker: Arc<mio::Waker>,
}

impl Lookups {
    /// `waker` wakes the listener's loop when a lookup finishes.
    pub fn new(waker: mio::Waker) -> Lookups {
        let ttl = std::env::var(CACHE_TTL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(CACHE_TTL, Duration::from_millis);
        let (tx, rx) = mpsc::channel();
        Lookups {
            cache: Cache::new(ttl, CACHE_MAX),
            queue: VecDeque::new(),
            waiting: HashMap::new(),
            running: 0,
            tx,
            rx,
            waker: Arc::new(waker),
        }
    }

    /// `waiter` waits for `request`'s answer; a lookup of the same key already under way is shared.
    pub fn request(&mut self, request: Request, waiter: Waiter) {
        if let Some(w) = self.waiting.get_mut(&request.key) {
            w.push(waiter);
            return;
        }
        self.waiting.insert(request.key.clone(), vec![waiter]);
        self.queue.push_back(request);
        self.start_more();
    }

    /// Lookups that finished since the last call (their found secrets are cached by now).
    pub fn finished(&mut self, now: Instant) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Ok(done) = self.rx.try_recv() {
            self.running = self.running.saturating_sub(1);
            if let Ok(Some(text)) = &done.answer {
                if let Ok(secret) = Secret::from_stored(text.clone()) {
                    self.cache.insert(done.key.clone(), secret, now);
                }
            }
            let waiters = self.waiting.remove(&done.key).unwrap_or_default();
            out.push(Finished { key: done.key, answer: done.answer, waiters, took: done.took });
        }
        self.start_more();
        out
    }

    fn start_more(&mut self) {
        while self.running < MAX_RUNNING {
            let Some(req) = self.queue.pop_front() else { return };
            let tx = self.tx.clone();
            let waker = self.waker.clone();
            let key = req.key.clone();
            let spawned = std::thread::Builder::new().name("auth_query".into()).spawn(move || {
                let started = Instant::now();
                let answer = run(&req.target, &req.key.1);
                let _ = tx.send(Done { key: req.key, answer, took: started.elapsed() });
                let _ = waker.wake();
            });
            match spawned {
                Ok(_) => self.running += 1,
                Err(e) => {
                    // Answer at once (through the channel, so waiters are served on the loop's next turn).
                    let _ = self.tx.send(Done {
                        key,
                        answer: Err(format!("cannot start a lookup thread: {e}")),
                        took: Duration::ZERO,
                    });
                    self.running += 1;
                    let _ = self.waker.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgmux_proto::frame::peek_header;

    fn feed(reply: &mut Reply, msgs: &[u8]) -> Option<Answer> {
        let mut rest = msgs;
        while let Some(h) = peek_header(rest) {
            let total = h.total_len();
            if let Some(a) = reply.on_message(h.tag, &rest[5..total]) {
                assert_eq!(total, rest.len(), "nothing after ReadyForQuery");
                return Some(a);
            }
            rest = &rest[total..];
        }
        None
    }

    fn answer(build: impl FnOnce(&mut Vec<u8>)) -> Answer {
        let mut msgs = Vec::new();
        build(&mut msgs);
        be::ready_for_query(&mut msgs, b'I');
        feed(&mut Reply::default(), &msgs).expect("complete")
    }

    fn front(msgs: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = msgs;
        while let Some(h) = peek_header(rest) {
            out.push((h.tag, rest[5..h.total_len()].to_vec()));
            rest = &rest[h.total_len()..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn the_user_name_is_a_parameter_never_sql() {
        let evil = "x' OR '1'='1";
        let msgs = front(&encode_query("SELECT usename, passwd FROM pg_shadow WHERE usename = $1", evil));
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"PBES");
        let parse = fe::parse_parse(&msgs[0].1).unwrap();
        assert_eq!(parse.query, "SELECT usename, passwd FROM pg_shadow WHERE usename = $1");
        assert!(!String::from_utf8_lossy(&msgs[0].1).contains(evil));
        // Bind: portal, statement, 0 format codes, 1 parameter of the name's length, the name, 0 result formats.
        let mut bind = b"\0\0\0\0\0\x01".to_vec();
        bind.extend_from_slice(&(evil.len() as u32).to_be_bytes());
        bind.extend_from_slice(evil.as_bytes());
        bind.extend_from_slice(b"\0\0");
        assert_eq!(msgs[1].1, bind);
    }

    #[test]
    fn answers() {
        let md5 = "md5d0763edaa9d9bd2a9516280e9044d885";
        let found = answer(|m| {
            be::parse_complete(m);
            be::bind_complete(m);
            be::data_row(m, &[Some("alice"), Some(md5)]);
            be::command_complete(m, "SELECT 1");
        });
        assert_eq!(found, Ok(Some(md5.to_string())));
        // No row, a NULL secret, an empty one: no such user, all the same.
        assert_eq!(answer(|m| be::command_complete(m, "SELECT 0")), Ok(None));
        assert_eq!(answer(|m| be::data_row(m, &[Some("alice"), None::<&str>])), Ok(None));
        assert_eq!(answer(|m| be::data_row(m, &[Some("alice"), Some("")])), Ok(None));
        // Failures are errors, never "no such user".
        let two = answer(|m| {
            be::data_row(m, &[Some("a"), Some(md5)]);
            be::data_row(m, &[Some("b"), Some(md5)]);
        });
        assert!(two.unwrap_err().contains("2 rows"));
        assert!(answer(|m| be::data_row(m, &[Some(md5)])).unwrap_err().contains("1 columns"));
        let err = answer(|m| be::error_response(m, "ERROR", "42501", "permission denied for table pg_authid"));
        assert_eq!(err, Err("auth_query failed: permission denied for table pg_authid (42501)".into()));
        assert!(answer(be::empty_query_response).unwrap_err().contains("empty"));
        let mut bad_row = Vec::new();
        be::data_row(&mut bad_row, &[Some("alice"), Some(md5)]);
        bad_row.truncate(bad_row.len() - 1);
        let len = (bad_row.len() - 1) as u32;
        bad_row[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(answer(|m| m.extend_from_slice(&bad_row)).unwrap_err().contains("DataRow"));
        assert!(Reply::default().on_message(b'R', b"\0\0\0\0").unwrap().is_err());
        // An error after a row still fails the lookup.
        let late = answer(|m| {
            be::data_row(m, &[Some("alice"), Some(md5)]);
            be::error_response(m, "ERROR", "57014", "canceled");
        });
        assert!(late.is_err());
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(60), 3);
        let s = |x: &str| Secret::Plain(x.to_string());
        let k = |u: &str| ("db".to_string(), u.to_string());
        c.insert(k("a"), s("1"), t0);
        assert_eq!(c.get("db", "a", t0 + Duration::from_secs(59)), Some(&s("1")));
        assert_eq!(c.get("db", "a", t0 + Duration::from_secs(60)), None, "expired");
        assert_eq!(c.get("other", "a", t0), None, "per database");
        c.insert(k("b"), s("2"), t0 + Duration::from_secs(1));
        c.insert(k("c"), s("3"), t0 + Duration::from_secs(2));
        // Full of live entries: the oldest (a) makes room.
        c.insert(k("d"), s("4"), t0 + Duration::from_secs(3));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("db", "a", t0 + Duration::from_secs(3)), None);
        assert_eq!(c.get("db", "d", t0 + Duration::from_secs(3)), Some(&s("4")));
        // Expired entries go first, all of them.
        c.insert(k("e"), s("5"), t0 + Duration::from_secs(62));
        assert_eq!(c.len(), 2);
        // Replacing an entry refreshes it.
        c.insert(k("e"), s("6"), t0 + Duration::from_secs(100));
        assert_eq!(c.get("db", "e", t0 + Duration::from_secs(150)), Some(&s("6")));
        let mut off = Cache::new(Duration::from_secs(60), 0);
        off.insert(k("a"), s("1"), t0);
        assert_eq!(off.len(), 0);
    }

    #[test]
    fn target_resolution() {
        let text = "[pooler]\nauth_user = \"lookup\"\nauth_dbname = \"authdb\"\n\
                    [databases.appdb]\nhost = \"10.0.0.1\"\nport = 5433\n\
                    [databases.authdb]\nhost = \"/run/pg\"\ndbname = \"postgres\"\n\
                    [databases.own]\nhost = \"h\"\nauth_user = \"own\"\nauth_dbname = \"own\"\nuser = \"own\"\n\
                    password = \"ownpw\"\nauth_query = \"SELECT 1, 2\"\n";
        let config = Config::parse(text, std::path::Path::new("/tmp/x.toml")).unwrap();
        let users = UserList::parse("\"lookup\" \"md5d0763edaa9d9bd2a9516280e9044d885\"\n", "/tmp/u".as_ref()).unwrap();
        let t = Target::resolve(&config, &users, "appdb").unwrap().unwrap();
        assert_eq!(t.addr.to_string(), "/run/pg/.s.PGSQL.5432");
        assert_eq!((t.dbname.as_str(), t.auth_user.as_str()), ("postgres", "lookup"));
        assert!(matches!(t.credential, Credential::Md5(_)));
        assert_eq!(t.query, pgmux_config::pooler::DEFAULT_AUTH_QUERY);
        let own = Target::resolve(&config, &users, "own").unwrap().unwrap();
        assert!(matches!(&own.credential, Credential::Plain(p) if p == "ownpw"));
        assert_eq!((own.dbname.as_str(), own.query.as_str()), ("own", "SELECT 1, 2"));
        let plain = Config::parse("[databases.appdb]\nhost = \"h\"\n", "/tmp/y.toml".as_ref()).unwrap();
        assert!(Target::resolve(&plain, &users, "appdb").unwrap().is_none(), "no auth_user, no lookups");
    }
}
