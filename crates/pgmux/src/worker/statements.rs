//! Prepared statements in transaction mode: each session's own namespace, mapped onto statements of the upstream.
//!
//! A session names its statements as it likes (every pgbench client uses `P0_1`, `P0_2`, ...). pgmux keeps, per
//! session, name → definition (query text and parameter types), and per upstream, definition → an upstream name
//! (`pgmux_<n>`) that pgmux chose. Sessions that prepare the same definition share one upstream statement, so a
//! session's Parse of a known definition costs no round trip: pgmux answers ParseComplete itself. A statement the
//! upstream lacks (new upstream, evicted, wiped by DISCARD ALL) is prepared again just before it is used.
//!
//! The upstream cache is bounded; the least recently used statements not used in the current turn are closed.

use std::collections::HashMap;
use std::rc::Rc;

/// A statement by definition: what PostgreSQL needs to prepare it again anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StmtDef {
    pub query: Box<str>,
    pub param_types: Box<[u32]>,
    /// What running it may do to session state (`EFFECT_*`), derived from the text once.
    pub effects: u8,
    /// Backend-held state running it may create or release (`pgmux_proto::sql::PIN_*`).
    pub pins: u8,
    pub unpins: u8,
    /// Running it leaves the session's and the upstream's state as they were (`riders::plain_sql`): it may be
    /// pipelined.
    pub plain: bool,
}

/// Running it may change settings (SET, RESET, set_config, SET ROLE).
pub const EFFECT_SETTINGS: u8 = 1;
/// Running it deallocates every prepared statement (DEALLOCATE ALL, DISCARD ALL).
pub const EFFECT_DEALLOCATE_ALL: u8 = 2;
/// Running it resets every setting (RESET ALL, DISCARD ALL).
pub const EFFECT_RESET_ALL: u8 = 4;

impl StmtDef {
    pub fn new(query: &str, param_types: &[u32]) -> StmtDef {
        StmtDef {
            query: query.into(),
            param_types: param_types.into(),
            effects: effects_of(query),
            pins: pgmux_proto::sql::pins(query),
            unpins: pgmux_proto::sql::unpins(query),
            plain: super::riders::plain_sql(query),
        }
    }
}

/// The session-state effects of a statement text.
pub fn effects_of(query: &str) -> u8 {
    use pgmux_proto::sql::{self, DiscardKind, Kind};
    if !sql::may_be_interesting(query) {
        return 0;
    }
    let mut e = 0;
    for st in sql::statements(query) {
        e |= match st.kind {
            Kind::Set { .. } | Kind::SetFromCurrent { .. } | Kind::Reset { .. } | Kind::Role { .. } => EFFECT_SETTINGS,
            Kind::CallsSetConfig => EFFECT_SETTINGS,
            Kind::ResetAll => EFFECT_SETTINGS | EFFECT_RESET_ALL,
            Kind::Discard(DiscardKind::All) => EFFECT_SETTINGS | EFFECT_RESET_ALL | EFFECT_DEALLOCATE_ALL,
            Kind::Deallocate { name: None } => EFFECT_DEALLOCATE_ALL,
            _ => 0,
        };
    }
    e
}

/// A statement is shared between sessions only when its text, types and the settings that decide what its names
/// refer to (search_path, role) are the same.
type Key = (Rc<StmtDef>, Rc<str>);

#[derive(Debug)]
struct Cached {
    name: Rc<str>,
    last_used: u64,
}

/// The statements one upstream has, by definition.
#[derive(Debug)]
pub struct UpstreamStatements {
    by_def: HashMap<Key, Cached>,
    next_id: u64,
    capacity: usize,
    /// The definition currently held by the upstream's unnamed statement, if pgmux knows it.
    pub unnamed: Option<Rc<StmtDef>>,
}

impl UpstreamStatements {
    /// How many statements the upstream holds (SHOW SERVERS' prepared_statements).
    pub fn count(&self) -> usize {
        self.by_def.len()
    }

    pub fn new(capacity: usize) -> Self {
        UpstreamStatements { by_def: HashMap::new(), next_id: 1, capacity: capacity.max(1), unnamed: None }
    }

    /// The upstream name of `def` prepared under `ctx`, marking it used in `turn`.
    pub fn lookup(&mut self, def: &Rc<StmtDef>, ctx: &Rc<str>, turn: u64) -> Option<Rc<str>> {
        let c = self.by_def.get_mut(&(def.clone(), ctx.clone()))?;
        c.last_used = turn;
        Some(c.name.clone())
    }

    /// Choose an upstream name for a definition about to be prepared (assumed to succeed; `forget` undoes it).
    pub fn insert(&mut self, def: Rc<StmtDef>, ctx: Rc<str>, turn: u64) -> Rc<str> {
        let name: Rc<str> = Rc::from(format!("pgmux_{}", self.next_id));
        self.next_id += 1;
        self.by_def.insert((def, ctx), Cached { name: name.clone(), last_used: turn });
        name
    }

    /// The Parse for this definition failed or was skipped: the upstream does not have it.
    pub fn forget(&mut self, def: &Rc<StmtDef>, ctx: &Rc<str>, name: &str) {
        let key = (def.clone(), ctx.clone());
        if self.by_def.get(&key).is_some_and(|c| &*c.name == name) {
            self.by_def.remove(&key);
        }
    }

    /// Statements to close so the cache fits its capacity, least recently used first, never one used in `turn`.
    pub fn evict(&mut self, turn: u64) -> Vec<Rc<str>> {
        let excess = self.by_def.len().saturating_sub(self.capacity);
        if excess == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, Key)> =
            self.by_def.iter().filter(|(_, c)| c.last_used < turn).map(|(k, c)| (c.last_used, k.clone())).collect();
        candidates.sort_by_key(|(used, _)| *used);
        let mut out = Vec::new();
        for (_, def) in candidates.into_iter().take(excess) {
            if let Some(c) = self.by_def.remove(&def) {
                out.push(c.name);
            }
        }
        out
    }

    /// Everything was deallocated upstream (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_def.clear();
        self.unnamed = None;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_def.len()
    }
}

/// Message bodies pgmux writes when it renames or re-prepares statements.
pub mod wire {
    /// A whole Parse message.
    pub fn parse(out: &mut Vec<u8>, name: &str, query: &str, param_types: &[u32]) {
        let len = 4 + name.len() + 1 + query.len() + 1 + 2 + 4 * param_types.len();
        out.push(b'P');
        out.extend_from_slice(&(len as u32).to_be_bytes());
        put_cstr(out, name);
        put_cstr(out, query);
        out.extend_from_slice(&(param_types.len() as u16).to_be_bytes());
        for t in param_types {
            out.extend_from_slice(&t.to_be_bytes());
        }
    }

    /// A Bind, Describe or Close whose statement name is replaced: `prefix` is what comes before the name in the
    /// body (the portal name and its NUL for Bind, the 'S' byte for Describe and Close), `rest` what follows the
    /// name's NUL.
    pub fn renamed(out: &mut Vec<u8>, tag: u8, prefix: &[u8], name: &str, rest: &[u8]) {
        let len = 4 + prefix.len() + name.len() + 1 + rest.len();
        out.push(tag);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(prefix);
        put_cstr(out, name);
        out.extend_from_slice(rest);
    }

    pub fn close_statement(out: &mut Vec<u8>, name: &str) {
        renamed(out, b'C', b"S", name, &[]);
    }

    fn put_cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// Split a Bind body into (portal name with its NUL, statement name, the rest). None if malformed.
    pub fn split_bind(body: &[u8]) -> Option<(&[u8], &str, &[u8])> {
        let p = body.iter().position(|&b| b == 0)?;
        let (portal, after) = body.split_at(p + 1);
        let s = after.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(after.get(..s)?).ok()?;
        Some((portal, name, after.get(s + 1..)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(q: &str) -> Rc<StmtDef> {
        Rc::new(StmtDef::new(q, &[23]))
    }

    fn ctx(s: &str) -> Rc<str> {
        Rc::from(s)
    }

    #[test]
    fn shared_by_definition_and_context() {
        let mut c = UpstreamStatements::new(10);
        let x = ctx("public");
        assert!(c.lookup(&def("select 1"), &x, 1).is_none());
        let n = c.insert(def("select 1"), x.clone(), 1);
        assert_eq!(c.lookup(&def("select 1"), &x, 2).as_deref(), Some(&*n));
        // Same text, other parameter types: another statement.
        let other = Rc::new(StmtDef::new("select 1", &[]));
        assert!(c.lookup(&other, &x, 2).is_none());
        // Same text under another search_path: another statement.
        assert!(c.lookup(&def("select 1"), &ctx("s2"), 2).is_none());
        c.forget(&def("select 1"), &x, &n);
        assert!(c.lookup(&def("select 1"), &x, 3).is_none());
    }

    #[test]
    fn effects_are_derived_from_the_text() {
        assert_eq!(StmtDef::new("select 1", &[]).effects, 0);
        assert_eq!(StmtDef::new("SET work_mem = '1MB'", &[]).effects, EFFECT_SETTINGS);
        assert_eq!(StmtDef::new("deallocate all", &[]).effects, EFFECT_DEALLOCATE_ALL);
        assert_eq!(
            StmtDef::new("DISCARD ALL", &[]).effects,
            EFFECT_SETTINGS | EFFECT_RESET_ALL | EFFECT_DEALLOCATE_ALL
        );
    }

    #[test]
    fn eviction_spares_the_current_turn() {
        let mut c = UpstreamStatements::new(2);
        let x = ctx("");
        let a = c.insert(def("a"), x.clone(), 1);
        c.insert(def("b"), x.clone(), 2);
        c.insert(def("c"), x.clone(), 3);
        assert_eq!(c.evict(3), vec![a]);
        assert_eq!(c.len(), 2);
        c.insert(def("d"), x.clone(), 3);
        // "b" (turn 2) goes; "c" and "d" were used in turn 3.
        assert_eq!(c.evict(3).len(), 1);
        assert!(c.lookup(&def("b"), &x, 3).is_none());
    }

    #[test]
    fn wire_bind_rename_round_trip() {
        let body = b"portal\0P0_1\0\x00\x00\x00\x00\x00\x00";
        let (portal, name, rest) = wire::split_bind(body).unwrap_or_default_for_test();
        assert_eq!((portal, name), (&b"portal\0"[..], "P0_1"));
        let mut out = Vec::new();
        wire::renamed(&mut out, b'B', portal, "pgmux_7", rest);
        assert_eq!(&out[..1], b"B");
        assert_eq!(u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize, out.len() - 1);
        assert_eq!(&out[5..], b"portal\0pgmux_7\0\x00\x00\x00\x00\x00\x00");
        assert!(wire::split_bind(b"no-nul").is_none());
        assert!(wire::split_bind(b"p\0no-nul").is_none());
    }

    #[test]
    fn wire_parse_matches_protocol() {
        let mut out = Vec::new();
        wire::parse(&mut out, "s", "select $1", &[23]);
        assert_eq!(out, b"P\x00\x00\x00\x16s\0select $1\0\x00\x01\x00\x00\x00\x17".to_vec());
    }

    trait OrDefault<'a> {
        fn unwrap_or_default_for_test(self) -> (&'a [u8], &'a str, &'a [u8]);
    }
    impl<'a> OrDefault<'a> for Option<(&'a [u8], &'a str, &'a [u8])> {
        fn unwrap_or_default_for_test(self) -> (&'a [u8], &'a str, &'a [u8]) {
            self.unwrap_or((&[], "", &[]))
        }
    }
}
