//! What the worker sends upstream for each whole message of the owning session, in transaction and statement mode.
//!
//! Most messages go through untouched. Those that name prepared statements are mapped from the session's namespace
//! to the upstream's (`statements`), which may mean answering a Parse or Close itself, preparing a statement again
//! just before it is used, or making PostgreSQL fail the way it would have for the client (a name the session does
//! not have). Simple queries that may touch session state (the SQL lexer's `may_be_interesting`) are classified
//! statement by statement: SQL-level PREPARE/EXECUTE/DEALLOCATE names are renamed into the session's own upstream
//! names, and the effects that only hold if a statement succeeds (DEALLOCATE, DISCARD ALL, RESET ALL) are applied
//! when that statement's CommandComplete arrives (`QueryPlan`). Settings changes are not parsed from the text: a
//! session whose turn may have changed settings gets them read back from the upstream before it lets go of it.

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use pgmux_proto::sql::{self, DiscardKind, Kind as SqlKind};
use pgmux_proto::{backend as be, frame, frontend as fe};

use super::replies::{Action, Disposition, Owner};
use super::settings;
use super::statements::{wire, StmtDef, EFFECT_DEALLOCATE_ALL, EFFECT_RESET_ALL, EFFECT_SETTINGS};
use super::Worker;

/// A Parse pgmux sent or answered, remembered until it is known to have worked.
#[derive(Debug)]
pub struct ParseSlot {
    pub def: Rc<StmtDef>,
    pub ctx: Rc<str>,
    /// The upstream name; None when pgmux answered the Parse itself (the upstream already had the statement).
    pub created: Option<Rc<str>>,
    /// The session's name for it, for a client's own Parse (not for one pgmux added).
    pub session: Option<(u64, Box<str>)>,
}

/// A SQL-level prepared statement of one session: its own upstream name, and how to prepare it again.
#[derive(Debug, Clone)]
pub struct SqlPrepared {
    pub upstream_name: String,
    /// The statement text after the name: `[(types)] AS statement`.
    pub rest: String,
    /// The upstream generation it was prepared in; a different generation means the upstream lost it.
    pub generation: u64,
}

/// Effects of one simple Query that hold only if a given statement of it succeeds.
#[derive(Debug, Default)]
pub struct QueryPlan {
    pub session_id: u64,
    /// The next statement's index (one CommandComplete per statement).
    pub next: usize,
    /// Indexes of statements pgmux added whose CommandComplete the client must not see.
    pub hidden: Vec<usize>,
    pub actions: Vec<(usize, PlanAction)>,
}

#[derive(Debug)]
pub enum PlanAction {
    /// DEALLOCATE ALL or DISCARD ALL: every prepared statement of the upstream is gone.
    DeallocateAll {
        discard: bool,
    },
    /// RESET ALL (or DISCARD ALL): the session's settings go back to its startup values.
    ResetAll,
    AddSql(String, SqlPrepared),
    RemoveSql(String),
    RemoveProtocol(String),
    /// LISTEN ch / UNLISTEN ch / UNLISTEN * (None) ran: the session's channels change, and the upstream's
    /// must become the union again.
    Listen(String),
    Unlisten(Option<String>),
}

impl Worker {
    /// Handle one whole client message of session `idx` (id `id`) in transaction or statement mode.
    pub(super) fn client_message(&mut self, idx: usize, id: u64, tag: u8, msg: &[u8]) {
        let body = msg.get(frame::HEADER_LEN..).unwrap_or_default();
        log::trace!("s{id}: client message '{}' ({} bytes)", tag as char, msg.len());
        match tag {
            b'P' => self.client_parse(idx, id, msg, body),
            b'B' => self.client_bind(idx, id, msg, body),
            b'D' | b'C' => self.client_describe_or_close(idx, id, tag, msg, body),
            b'Q' => self.client_query(idx, id, msg, body),
            _ => self.forward(id, tag, msg),
        }
    }

    fn forward(&mut self, id: u64, tag: u8, msg: &[u8]) {
        if let Some(up) = self.upstream.as_mut() {
            up.outbuf.extend_from_slice(msg);
        }
        if tag == b'P' {
            self.stats.server_parse();
        }
        self.replies.push(Owner::Session(id), tag, Disposition::Forward);
    }

    /// Make PostgreSQL fail at this point of the session's batch (so it skips to Sync and aborts the implicit
    /// transaction, exactly as for the client's own error), and show the client `code`/`message` instead.
    fn fail_like_postgres(&mut self, id: u64, code: &str, message: &str) {
        let mut err = Vec::new();
        be::error_response(&mut err, "ERROR", code, message);
        if let Some(up) = self.upstream.as_mut() {
            fe::execute(&mut up.outbuf, "pgmux: emulated error", 0);
        }
        self.replies.push_with(Owner::Session(id), b'E', Disposition::Replace, Action::None, Some(err.into()));
    }

    fn new_parse_slot(&mut self, slot: ParseSlot) -> Action {
        let n = self.next_parse_slot;
        self.next_parse_slot = self.next_parse_slot.wrapping_add(1);
        self.parse_slots.insert(n, slot);
        Action::Parsed(n)
    }

    fn client_parse(&mut self, idx: usize, id: u64, msg: &[u8], body: &[u8]) {
        let Ok(p) = fe::parse_parse(body) else { return self.forward(id, b'P', msg) };
        let turn = self.turn;
        // SQL-level PREPARE/EXECUTE/DEALLOCATE sent through the extended protocol (as psycopg and JDBC do) are
        // renamed like in a simple Query.
        let renamed = if sql::may_be_interesting(p.query) { self.rename_sql_in_parse(idx, id, p.query) } else { None };
        let query = renamed.as_deref().unwrap_or(p.query);
        let def = Rc::new(StmtDef::new(query, &p.param_types));
        if p.name.is_empty() {
            if let Some(s) = self.session(idx) {
                s.unnamed = Some(def.clone());
            }
            if let Some(up) = self.upstream.as_mut() {
                up.stmts.unnamed = Some(def);
                if renamed.is_some() {
                    wire::parse(&mut up.outbuf, "", query, &p.param_types);
                    self.stats.server_parse();
                    self.replies.push(Owner::Session(id), b'P', Disposition::Forward);
                    return;
                }
            }
            return self.forward(id, b'P', msg);
        }
        let name = p.name.to_string();
        let Some(s) = self.session(idx) else { return };
        if s.prepared.contains_key(name.as_str()) {
            return self.fail_like_postgres(id, "42P05", &format!("prepared statement \"{name}\" already exists"));
        }
        let ctx = s.ctx.clone();
        let Some(up) = self.upstream.as_mut() else { return };
        if up.stmts.lookup(&def, &ctx, turn).is_some() {
            // The upstream has it already: answer the Parse here, in its place among the replies.
            let action = self.new_parse_slot(ParseSlot {
                def: def.clone(),
                ctx,
                created: None,
                session: Some((id, name.clone().into())),
            });
            let mut reply = Vec::new();
            be::parse_complete(&mut reply);
            self.replies.push_synth(Owner::Session(id), reply, action);
        } else {
            let uname = up.stmts.insert(def.clone(), ctx.clone(), turn);
            wire::parse(&mut up.outbuf, &uname, query, &p.param_types);
            self.stats.server_parse();
            let victims = up.stmts.evict(turn);
            let action = self.new_parse_slot(ParseSlot {
                def: def.clone(),
                ctx,
                created: Some(uname),
                session: Some((id, name.clone().into())),
            });
            self.replies.push_with(Owner::Session(id), b'P', Disposition::Forward, action, None);
            self.close_upstream_statements(id, victims);
        }
        if let Some(s) = self.session(idx) {
            s.prepared.insert(name.into(), def);
            s.touch();
        }
    }

    /// Rename the prepared-statement name of a single SQL-level PREPARE, EXECUTE or DEALLOCATE in a Parse's text.
    /// The session's map changes when the Parse is sent (not when it runs): a PREPARE parsed but never run, or
    /// one that fails, still reserves the name, and a DEALLOCATE parsed but not run still forgets it.
    fn rename_sql_in_parse(&mut self, idx: usize, id: u64, text: &str) -> Option<String> {
        let stmts = sql::statements(text);
        let [st] = stmts.as_slice() else { return None };
        let generation = self.upstream.as_ref().map(|u| u.generation).unwrap_or(0);
        let worker = self.ctx.index;
        let (span, uname) = match &st.kind {
            SqlKind::Prepare { name, .. } => {
                let client = name.value.to_string();
                let s = self.session(idx)?;
                let uname = match s.sql_prepared.get(&client) {
                    Some(p) => p.upstream_name.clone(),
                    None => {
                        s.sql_counter += 1;
                        let uname = format!("pgmuxq_{}_{}_{}", id, worker, s.sql_counter);
                        let rest = text.get(name.span.end..st.span.end).unwrap_or_default().to_string();
                        let p = SqlPrepared { upstream_name: uname.clone(), rest, generation };
                        s.sql_prepared.insert(client, p);
                        s.touch();
                        uname
                    }
                };
                (name.span.clone(), uname)
            }
            SqlKind::Execute { name } => {
                let client = name.value.to_string();
                let p = self.session(idx)?.sql_prepared.get(&client).cloned()?;
                if p.generation != generation {
                    // The upstream lost it: prepare it again first, out of the client's sight.
                    self.hidden_statement(id, &format!("PREPARE {} {}", p.upstream_name, p.rest));
                    if let Some(e) = self.session(idx).and_then(|s| s.sql_prepared.get_mut(&client)) {
                        e.generation = generation;
                    }
                }
                (name.span.clone(), p.upstream_name)
            }
            SqlKind::Deallocate { name: Some(name) } => {
                let client = name.value.to_string();
                let s = self.session(idx)?;
                let p = s.sql_prepared.remove(&client)?;
                s.touch();
                (name.span.clone(), p.upstream_name)
            }
            _ => return None,
        };
        let mut out = String::with_capacity(text.len() + 32);
        out.push_str(text.get(..span.start)?);
        out.push_str(&sql::ident_replacement(text, span.clone(), &uname));
        out.push_str(text.get(span.end..)?);
        Some(out)
    }

    /// Run one statement through the unnamed statement before the session's next message, showing only errors.
    fn hidden_statement(&mut self, id: u64, text: &str) {
        let Some(up) = self.upstream.as_mut() else { return };
        wire::parse(&mut up.outbuf, "", text, &[]);
        wire::renamed(&mut up.outbuf, b'B', b"\0", "", b"\0\0\0\0\0\0");
        fe::execute(&mut up.outbuf, "", 0);
        up.stmts.unnamed = None;
        for tag in [b'P', b'B', b'E'] {
            self.replies.push(Owner::Session(id), tag, Disposition::HideOk);
        }
    }

    /// A statement is about to run: note what it may do to the session's state.
    fn note_effects(&mut self, idx: usize, def: &StmtDef) {
        let (effects, pins, unpins) = (def.effects, def.pins, def.unpins);
        if effects == 0 && pins == 0 && unpins == 0 {
            return;
        }
        let Some(s) = self.session(idx) else { return };
        s.pins = (s.pins & !unpins) | pins;
        if effects & EFFECT_SETTINGS != 0 {
            s.settings_dirty = true;
        }
        if effects & EFFECT_RESET_ALL != 0 {
            s.reset_seen = true;
        }
        if effects & EFFECT_DEALLOCATE_ALL != 0 {
            s.pending_deallocate_all = true;
        }
    }

    /// Close statements evicted from the upstream cache; their CloseComplete is swallowed.
    fn close_upstream_statements(&mut self, id: u64, victims: Vec<Rc<str>>) {
        for v in victims {
            if let Some(up) = self.upstream.as_mut() {
                wire::close_statement(&mut up.outbuf, &v);
            }
            self.replies.push(Owner::Session(id), b'C', Disposition::Swallow);
        }
    }

    /// The upstream name for a session's statement, preparing it upstream first if the upstream lacks it.
    fn ensure_upstream_statement(&mut self, idx: usize, id: u64, def: &Rc<StmtDef>) -> Option<Rc<str>> {
        let turn = self.turn;
        let ctx = self.session(idx)?.ctx.clone();
        let up = self.upstream.as_mut()?;
        if let Some(name) = up.stmts.lookup(def, &ctx, turn) {
            return Some(name);
        }
        let uname = up.stmts.insert(def.clone(), ctx.clone(), turn);
        wire::parse(&mut up.outbuf, &uname, &def.query, &def.param_types);
        self.stats.server_parse();
        let victims = up.stmts.evict(turn);
        let action =
            self.new_parse_slot(ParseSlot { def: def.clone(), ctx, created: Some(uname.clone()), session: None });
        self.replies.push_with(Owner::Session(id), b'P', Disposition::HideOk, action, None);
        self.close_upstream_statements(id, victims);
        Some(uname)
    }

    /// Make sure the upstream's unnamed statement is this session's before the session uses it.
    fn ensure_unnamed(&mut self, idx: usize, id: u64) {
        let Some(mine) = self.session(idx).and_then(|s| s.unnamed.clone()) else { return };
        let Some(up) = self.upstream.as_mut() else { return };
        if up.stmts.unnamed.as_ref().is_some_and(|u| Rc::ptr_eq(u, &mine) || **u == *mine) {
            return;
        }
        wire::parse(&mut up.outbuf, "", &mine.query, &mine.param_types);
        self.stats.server_parse();
        up.stmts.unnamed = Some(mine);
        self.replies.push(Owner::Session(id), b'P', Disposition::HideOk);
    }

    fn client_bind(&mut self, idx: usize, id: u64, msg: &[u8], body: &[u8]) {
        let Some((portal, stmt, rest)) = wire::split_bind(body) else { return self.forward(id, b'B', msg) };
        if stmt.is_empty() {
            self.ensure_unnamed(idx, id);
            if let Some(def) = self.session(idx).and_then(|s| s.unnamed.clone()) {
                self.note_effects(idx, &def);
            }
            return self.forward(id, b'B', msg);
        }
        let Some(def) = self.session(idx).and_then(|s| s.prepared.get(stmt).cloned()) else {
            return self.fail_like_postgres(id, "26000", &format!("prepared statement \"{stmt}\" does not exist"));
        };
        self.note_effects(idx, &def);
        let Some(uname) = self.ensure_upstream_statement(idx, id, &def) else { return };
        if let Some(up) = self.upstream.as_mut() {
            wire::renamed(&mut up.outbuf, b'B', portal, &uname, rest);
        }
        self.replies.push(Owner::Session(id), b'B', Disposition::Forward);
    }

    fn client_describe_or_close(&mut self, idx: usize, id: u64, tag: u8, msg: &[u8], body: &[u8]) {
        let parsed = if tag == b'D' { fe::parse_describe(body) } else { fe::parse_close(body) };
        let Ok((kind, name)) = parsed else { return self.forward(id, tag, msg) };
        if kind != b'S' {
            return self.forward(id, tag, msg); // portals live inside the session's own transaction
        }
        if name.is_empty() {
            if tag == b'D' {
                self.ensure_unnamed(idx, id);
            } else {
                if let Some(s) = self.session(idx) {
                    s.unnamed = None;
                }
                if let Some(up) = self.upstream.as_mut() {
                    up.stmts.unnamed = None;
                }
            }
            return self.forward(id, tag, msg);
        }
        if tag == b'C' {
            // Only the session's name goes; the upstream statement may serve other sessions.
            if let Some(s) = self.session(idx) {
                s.prepared.remove(name);
                s.touch();
            }
            let mut reply = Vec::new();
            be::close_complete(&mut reply);
            self.replies.push_synth(Owner::Session(id), reply, Action::None);
            return;
        }
        let Some(def) = self.session(idx).and_then(|s| s.prepared.get(name).cloned()) else {
            return self.fail_like_postgres(id, "26000", &format!("prepared statement \"{name}\" does not exist"));
        };
        let Some(uname) = self.ensure_upstream_statement(idx, id, &def) else { return };
        if let Some(up) = self.upstream.as_mut() {
            wire::renamed(&mut up.outbuf, b'D', b"S", &uname, &[]);
        }
        self.replies.push(Owner::Session(id), b'D', Disposition::Forward);
    }

    fn client_query(&mut self, idx: usize, id: u64, msg: &[u8], body: &[u8]) {
        self.last_query_plain = false;
        let Ok(text) = fe::parse_query(body) else { return self.forward(id, b'Q', msg) };
        let (pins, unpins) = (sql::pins(text), sql::unpins(text));
        if pins != 0 || unpins != 0 {
            if let Some(s) = self.session(idx) {
                s.pins = (s.pins & !unpins) | pins;
            }
        }
        if !sql::may_be_interesting(text) {
            // The same test as `riders::plain_sql`, without classifying the text twice.
            self.last_query_plain = pins == 0 && unpins == 0 && !super::riders::mentions_copy(text.as_bytes());
            return self.forward(id, b'Q', msg);
        }
        let generation = self.upstream.as_ref().map(|u| u.generation).unwrap_or(0);
        let worker = self.ctx.index;
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        // Statements pgmux puts in front of a given statement index, hidden from the client.
        let mut inserted: Vec<(usize, String)> = Vec::new();
        let mut plan = QueryPlan { session_id: id, ..Default::default() };
        let mut dirty = false;
        let mut protocol_needed: Vec<Rc<StmtDef>> = Vec::new();
        let stmts = sql::statements(text);
        let baseline = self.session(idx).map(|s| s.baseline.clone()).unwrap_or_default();
        let ctx = self.session(idx).map(|s| s.ctx.clone()).unwrap_or_else(|| Rc::from(""));
        // Names PREPAREd (Some: their upstream name) or DEALLOCATEd (None) earlier in this same Query.
        let mut local: HashMap<String, Option<String>> = HashMap::new();
        for (i, st) in stmts.iter().enumerate() {
            match &st.kind {
                SqlKind::Set { .. }
                | SqlKind::SetFromCurrent { .. }
                | SqlKind::Role { .. }
                | SqlKind::CallsSetConfig => dirty = true,
                SqlKind::Reset { name } => {
                    dirty = true;
                    // RESET goes back to the session's startup value, which the upstream holds only as a SET.
                    if let Some((n, v)) = baseline.iter().find(|(n, _)| *n == *name.value) {
                        inserted.push((i + 1, settings::set_statement(n, v)));
                    }
                }
                SqlKind::ResetAll => {
                    dirty = true;
                    plan.actions.push((i, PlanAction::ResetAll));
                    for (n, v) in &baseline {
                        inserted.push((i + 1, settings::set_statement(n, v)));
                    }
                }
                SqlKind::Discard(DiscardKind::All) => {
                    // Nothing can follow DISCARD ALL in the same Query (it refuses transaction blocks), so the
                    // startup values come back at the session's next turn.
                    dirty = true;
                    plan.actions.push((i, PlanAction::ResetAll));
                    plan.actions.push((i, PlanAction::DeallocateAll { discard: true }));
                }
                SqlKind::Deallocate { name: None } => {
                    plan.actions.push((i, PlanAction::DeallocateAll { discard: false }));
                }
                SqlKind::Listen { channel } => plan.actions.push((i, PlanAction::Listen(channel.value.to_string()))),
                SqlKind::Unlisten { channel } => {
                    plan.actions.push((i, PlanAction::Unlisten(channel.as_ref().map(|c| c.value.to_string()))));
                    // The upstream listens for every session of this worker: the session's UNLISTEN only changes
                    // its own channel set (applied on CommandComplete), and the worker's next listen sync drops
                    // channels nobody needs. Sent as is, it would stop the upstream listening for the others until
                    // that sync, and a NOTIFY committed in between would be lost for them. Same command tag.
                    edits.push((st.span.clone(), "UNLISTEN \"pgmux.noop\"".to_string()));
                }
                SqlKind::Prepare { name, .. } => {
                    let client = name.value.to_string();
                    let Some(s) = self.session(idx) else { continue };
                    let existing = match local.get(&client) {
                        Some(Some(uname)) => Some((uname.clone(), None)),
                        Some(None) => None,
                        None => s.sql_prepared.get(&client).map(|p| (p.upstream_name.clone(), Some(p.clone()))),
                    };
                    let uname = match existing {
                        // Already exists: let PostgreSQL say so, about a statement it has (prepared again first
                        // if the upstream lost it).
                        Some((uname, stale)) => {
                            if let Some(p) = stale.filter(|p| p.generation != generation) {
                                inserted.push((i, format!("PREPARE {} {}", p.upstream_name, p.rest)));
                                if let Some(e) = self.session(idx).and_then(|s| s.sql_prepared.get_mut(&client)) {
                                    e.generation = generation;
                                }
                            }
                            uname
                        }
                        None => {
                            s.sql_counter += 1;
                            // Session id and worker make it unique upstream even after the session moved.
                            let uname = format!("pgmuxq_{}_{}_{}", id, worker, s.sql_counter);
                            let rest = text.get(name.span.end..st.span.end).unwrap_or_default().to_string();
                            let prepared = SqlPrepared { upstream_name: uname.clone(), rest, generation };
                            plan.actions.push((i, PlanAction::AddSql(client.clone(), prepared)));
                            local.insert(client, Some(uname.clone()));
                            uname
                        }
                    };
                    edits.push((name.span.clone(), uname));
                }
                SqlKind::Execute { name } => {
                    let client = name.value.to_string();
                    if let Some(known) = local.get(&client) {
                        if let Some(uname) = known {
                            edits.push((name.span.clone(), uname.clone()));
                        }
                        continue;
                    }
                    let Some(s) = self.session(idx) else { continue };
                    if let Some(p) = s.sql_prepared.get(&client).cloned() {
                        if p.generation != generation {
                            // The upstream lost it (reconnect, DISCARD ALL): prepare it again right before.
                            inserted.push((i, format!("PREPARE {} {}", p.upstream_name, p.rest)));
                            if let Some(e) = self.session(idx).and_then(|s| s.sql_prepared.get_mut(&client)) {
                                e.generation = generation;
                            }
                        }
                        edits.push((name.span.clone(), p.upstream_name));
                    } else if let Some(def) = s.prepared.get(client.as_str()).cloned() {
                        // A protocol-level statement run with EXECUTE: use its shared upstream statement.
                        protocol_needed.push(def.clone());
                        let turn = self.turn;
                        if let Some(uname) = self.upstream.as_mut().and_then(|u| u.stmts.lookup(&def, &ctx, turn)) {
                            edits.push((name.span.clone(), uname.to_string()));
                        }
                    }
                }
                SqlKind::Deallocate { name: Some(name) } => {
                    let client = name.value.to_string();
                    let Some(s) = self.session(idx) else { continue };
                    let known = match local.get(&client) {
                        Some(k) => k.clone(),
                        None => s.sql_prepared.get(&client).map(|p| p.upstream_name.clone()),
                    };
                    if let Some(uname) = known {
                        edits.push((name.span.clone(), uname));
                        plan.actions.push((i, PlanAction::RemoveSql(client.clone())));
                        local.insert(client, None);
                    } else if s.prepared.contains_key(client.as_str()) {
                        // The upstream statement may be shared: deallocate a throwaway one instead, so the client
                        // still gets its DEALLOCATE, and drop only the session's name.
                        let dummy = format!("pgmuxd_{id}");
                        inserted.push((i, format!("PREPARE {dummy} AS SELECT 1")));
                        edits.push((name.span.clone(), dummy));
                        plan.actions.push((i, PlanAction::RemoveProtocol(client)));
                    }
                }
                _ => {}
            }
        }
        if dirty {
            if let Some(s) = self.session(idx) {
                s.settings_dirty = true;
            }
        }
        for def in protocol_needed {
            // Prepared before the Query runs; its name was looked up above, so it is only missing when new here.
            let _ = self.ensure_upstream_statement(idx, id, &def);
        }
        if edits.is_empty() && inserted.is_empty() && plan.actions.is_empty() {
            return self.forward(id, b'Q', msg);
        }
        let (new_text, new_index) = rewrite(text, &stmts, &edits, &inserted, &mut plan.hidden);
        for (at, _) in plan.actions.iter_mut() {
            *at = new_index.get(*at).copied().unwrap_or(usize::MAX);
        }
        if let Some(up) = self.upstream.as_mut() {
            fe::query(&mut up.outbuf, &new_text);
        }
        let slot = self.next_plan;
        self.next_plan = self.next_plan.wrapping_add(1);
        self.plans.insert(slot, plan);
        self.replies.push_with(Owner::Session(id), b'Q', Disposition::Forward, Action::Plan(slot), None);
    }

    /// A CommandComplete (or error, or ReadyForQuery) of a planned Query arrived. Returns false when the message
    /// must be hidden from the client.
    pub(super) fn plan_progress(&mut self, slot: u32, tag: u8) -> bool {
        match tag {
            b'C' => {
                let Some(plan) = self.plans.get_mut(&slot) else { return true };
                let i = plan.next;
                plan.next += 1;
                let hidden = plan.hidden.contains(&i);
                let mut due = Vec::new();
                let mut k = 0;
                while k < plan.actions.len() {
                    if plan.actions.get(k).is_some_and(|(at, _)| *at == i) {
                        due.push(plan.actions.remove(k).1);
                    } else {
                        k += 1;
                    }
                }
                let session_id = plan.session_id;
                for action in due {
                    self.apply_plan_action(session_id, action);
                }
                !hidden
            }
            b'Z' => {
                self.plans.remove(&slot);
                true
            }
            _ => true,
        }
    }

    fn apply_plan_action(&mut self, session_id: u64, action: PlanAction) {
        let idx = self.by_id.get(&session_id).copied();
        let session = idx.and_then(|i| self.sessions.get_mut(i)).and_then(|s| s.as_mut());
        match action {
            PlanAction::DeallocateAll { discard } => {
                if let Some(s) = session {
                    s.touch();
                    s.prepared.clear();
                    s.sql_prepared.clear();
                    s.unnamed = None;
                }
                self.upstream_deallocated(discard);
            }
            PlanAction::ResetAll => {
                if let Some(s) = session {
                    s.reset_seen = true;
                }
            }
            PlanAction::AddSql(name, p) => {
                if let Some(s) = session {
                    s.sql_prepared.insert(name, p);
                    s.touch();
                }
            }
            PlanAction::RemoveSql(name) => {
                if let Some(s) = session {
                    s.sql_prepared.remove(&name);
                    s.touch();
                }
            }
            PlanAction::RemoveProtocol(name) => {
                if let Some(s) = session {
                    s.prepared.remove(name.as_str());
                    s.touch();
                }
            }
            PlanAction::Listen(channel) => {
                if let Some(s) = session {
                    s.listens.insert(channel);
                    s.touch();
                }
                self.listen_sync = true;
            }
            PlanAction::Unlisten(channel) => {
                if let Some(s) = session {
                    match channel {
                        Some(c) => {
                            s.listens.remove(&c);
                            s.touch();
                        }
                        None => {
                            s.listens.clear();
                            s.touch();
                        }
                    }
                }
                self.listen_sync = true;
            }
        }
    }

    /// Every prepared statement of the upstream is gone (and with DISCARD ALL, every setting): other sessions'
    /// statements will be prepared again when they next use them.
    pub(super) fn upstream_deallocated(&mut self, discard: bool) {
        let next = self.next_generation;
        if let Some(up) = self.upstream.as_mut() {
            up.stmts.clear();
            up.generation = next;
            if discard {
                up.applied.clear();
                up.applied_for = None;
            }
        }
        self.next_generation += 1;
    }

    /// DEALLOCATE ALL or DISCARD ALL, run through the extended protocol by session `id`, has completed.
    pub(super) fn deallocated_all(&mut self, id: u64) {
        if let Some(s) = self.by_id.get(&id).copied().and_then(|i| self.session(i)) {
            s.prepared.clear();
            s.sql_prepared.clear();
            s.touch();
            s.unnamed = None;
        }
        // Settings are left alone here: DISCARD ALL also marks the session's settings for a read-back, which
        // replaces what pgmux believes the upstream has with what it really has.
        self.upstream_deallocated(false);
    }

    /// A Parse pgmux sent or answered has been answered (`ok`) or failed/skipped.
    pub(super) fn parse_settled(&mut self, slot: u32, ok: bool) {
        let Some(p) = self.parse_slots.remove(&slot) else { return };
        if ok {
            return;
        }
        if let (Some(up), Some(uname)) = (self.upstream.as_mut(), p.created.as_ref()) {
            up.stmts.forget(&p.def, &p.ctx, uname);
        }
        if let Some((session_id, name)) = p.session {
            let _ = &p.ctx;
            if let Some(s) = self.by_id.get(&session_id).copied().and_then(|i| self.session(i)) {
                if s.prepared.get(&*name).is_some_and(|d| Rc::ptr_eq(d, &p.def)) {
                    s.prepared.remove(&*name);
                    s.touch();
                }
            }
        }
    }
}

/// Apply renames (`edits`, byte ranges into `text`) and insert hidden statements before given statement indexes.
/// Records in `hidden` the statement indexes (in the new text) whose CommandComplete the client must not see, and
/// returns the new text with each original statement's index in it.
fn rewrite(
    text: &str,
    stmts: &[sql::Stmt<'_>],
    edits: &[(Range<usize>, String)],
    inserted: &[(usize, String)],
    hidden: &mut Vec<usize>,
) -> (String, Vec<usize>) {
    let mut mapping = Vec::with_capacity(stmts.len());
    let mut out = String::with_capacity(text.len() + 64);
    let mut pos = 0;
    let mut new_index = 0;
    // Statements before which something is inserted, by their start offset.
    let mut inserts: HashMap<usize, Vec<&str>> = HashMap::new();
    for (i, sqltext) in inserted {
        if let Some(st) = stmts.get(*i) {
            inserts.entry(st.span.start).or_default().push(sqltext);
        }
    }
    let mut edits: Vec<&(Range<usize>, String)> = edits.iter().collect();
    edits.sort_by_key(|(r, _)| r.start);
    let mut edit_iter = edits.into_iter().peekable();
    for st in stmts {
        if let Some(list) = inserts.get(&st.span.start) {
            out.push_str(text.get(pos..st.span.start).unwrap_or_default());
            pos = st.span.start;
            for extra in list {
                out.push_str(extra);
                out.push_str(";\n");
                hidden.push(new_index);
                new_index += 1;
            }
        }
        while let Some((r, replacement)) = edit_iter.peek() {
            if r.start >= st.span.end {
                break;
            }
            if r.start >= pos {
                out.push_str(text.get(pos..r.start).unwrap_or_default());
                out.push_str(&sql::ident_replacement(text, r.clone(), replacement));
                pos = r.end;
            }
            edit_iter.next();
        }
        mapping.push(new_index);
        new_index += 1;
    }
    out.push_str(text.get(pos..).unwrap_or_default());
    // Statements added after the last one; the newline ends a trailing `--` comment first.
    for (i, extra) in inserted {
        if *i >= stmts.len() {
            out.push_str("\n;");
            out.push_str(extra);
            hidden.push(new_index);
            new_index += 1;
        }
    }
    (out, mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_renames_and_inserts() {
        let text = "PREPARE foo AS SELECT 1; EXECUTE foo; SELECT 'foo'";
        let stmts = sql::statements(text);
        assert_eq!(stmts.len(), 3);
        let name_span = |i: usize| match &stmts[i].kind {
            SqlKind::Prepare { name, .. } | SqlKind::Execute { name } => name.span.clone(),
            _ => 0..0,
        };
        let edits = vec![(name_span(0), "pgmuxq_1_1".to_string()), (name_span(1), "pgmuxq_1_1".to_string())];
        let inserted = vec![(1, "PREPARE x AS SELECT 2".to_string())];
        let mut hidden = Vec::new();
        let (out, mapping) = rewrite(text, &stmts, &edits, &inserted, &mut hidden);
        assert_eq!(out, "PREPARE pgmuxq_1_1 AS SELECT 1; PREPARE x AS SELECT 2;\nEXECUTE pgmuxq_1_1; SELECT 'foo'");
        assert_eq!(hidden, vec![1]);
        assert_eq!(mapping, vec![0, 2, 3]);
    }

    #[test]
    fn rewrite_keeps_a_renamed_name_apart_from_its_neighbours() {
        // Valid SQL with no whitespace around a quoted name; a bare replacement would merge into `EXECUTEpgmuxq_1`.
        let text = "PREPARE\"a\"AS SELECT 1;EXECUTE\"a\"";
        let stmts = sql::statements(text);
        let edits: Vec<(Range<usize>, String)> = stmts
            .iter()
            .filter_map(|s| match &s.kind {
                SqlKind::Prepare { name, .. } | SqlKind::Execute { name } => {
                    Some((name.span.clone(), "pgmuxq_1".into()))
                }
                _ => None,
            })
            .collect();
        let (out, _) = rewrite(text, &stmts, &edits, &[], &mut Vec::new());
        assert_eq!(out, "PREPARE pgmuxq_1 AS SELECT 1;EXECUTE pgmuxq_1");
    }

    #[test]
    fn rewrite_appends_after_the_last_statement() {
        let text = "RESET work_mem -- back";
        let stmts = sql::statements(text);
        let mut hidden = Vec::new();
        let inserted = vec![(1, "SET work_mem TO '8MB'".to_string())];
        let (out, mapping) = rewrite(text, &stmts, &[], &inserted, &mut hidden);
        assert_eq!(out, "RESET work_mem -- back\n;SET work_mem TO '8MB'");
        assert_eq!((hidden, mapping), (vec![1], vec![0]));
    }

    #[test]
    fn rewrite_without_changes_is_identity() {
        let text = "SET a = 1; SELECT 2";
        let stmts = sql::statements(text);
        let mut hidden = Vec::new();
        assert_eq!(rewrite(text, &stmts, &[], &[], &mut hidden).0, text);
        assert!(hidden.is_empty());
    }
}
