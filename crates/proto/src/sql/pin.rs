//! Finding statements that create or release state only the server backend
//! holds: temporary tables (and other temporary objects), WITH HOLD cursors,
//! session-level advisory locks and libraries loaded with LOAD. A session
//! that creates such state must keep its backend.
//!
//! The scan errs towards pinning where the two ways of being wrong differ
//! in cost only by degree: a false pin costs a pooled backend, a missed one
//! loses a client's state. Dollar-quoted bodies (DO blocks, function bodies)
//! are scanned as SQL, since their statements run when the code does; plain
//! string literals and comments never match.

use super::lex::{Lexer, Tok, TokKind};
use super::{PIN_ADVISORY, PIN_HOLD_CURSOR, PIN_LOAD, PIN_TEMP};

/// Dollar-quoted bodies nested deeper than this are not lexed again: their
/// text is judged by the substring filter alone, which keeps the work
/// linear (each level re-lexes its body once).
const MAX_NESTING: usize = 4;

/// Substrings without which nothing can pin, and the bit each may lead to.
const PIN_NEEDLES: &[(&[u8], u8)] =
    &[(b"temp", PIN_TEMP), (b"hold", PIN_HOLD_CURSOR), (b"advisory", PIN_ADVISORY), (b"load", PIN_LOAD)];

const UNPIN_NEEDLES: &[(&[u8], u8)] = &[
    (b"discard", PIN_TEMP | PIN_HOLD_CURSOR | PIN_ADVISORY),
    (b"close", PIN_HOLD_CURSOR),
    (b"unlock_all", PIN_ADVISORY),
];

/// Session-level advisory lock functions (the `_xact_` ones end with the
/// transaction and do not pin).
const ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// Words that cannot be the table name after `INTO TEMP`: there `temp`
/// was the name (or a syntax error), not the keyword.
const NOT_A_NAME: &[&str] = &[
    "from",
    "where",
    "group",
    "having",
    "window",
    "union",
    "intersect",
    "except",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "using",
];

pub(super) fn pins(sql: &str) -> u8 {
    if !may_pin(sql) {
        return 0;
    }
    scan(sql, 0)
}

/// The cheap filter: "temp", "hold" or "advisory" anywhere (any case), or
/// "load" where a LOAD statement could start: the first word, after a
/// semicolon, or inside a dollar-quoted body.
pub(super) fn may_pin(sql: &str) -> bool {
    let b = sql.as_bytes();
    let found = needles(b, PIN_NEEDLES);
    if found & !PIN_LOAD != 0 {
        return true;
    }
    found & PIN_LOAD != 0 && (b.contains(&b';') || b.contains(&b'$') || first_word_is(sql, "load"))
}

pub(super) fn unpins(sql: &str) -> u8 {
    if needles(sql.as_bytes(), UNPIN_NEEDLES) == 0 {
        return 0;
    }
    let s = Src(sql);
    let mut lx = Lexer::new(sql, 0, sql.len());
    let mut bits = 0;
    let mut depth = 0usize;
    let mut at_start = true;
    while let Some(t) = lx.next() {
        let first = std::mem::replace(&mut at_start, false);
        match t.kind {
            TokKind::Punct(b';') if depth == 0 => at_start = true,
            TokKind::Punct(b'(') => depth += 1,
            TokKind::Punct(b')') => depth = depth.saturating_sub(1),
            TokKind::Word if first && s.is(t, "discard") => {
                let n = lx.peek();
                if s.word(n, "all") {
                    bits |= PIN_TEMP | PIN_HOLD_CURSOR | PIN_ADVISORY;
                } else if s.word(n, "temp") || s.word(n, "temporary") {
                    bits |= PIN_TEMP;
                }
            }
            TokKind::Word if first && s.is(t, "close") && s.word(lx.peek(), "all") => bits |= PIN_HOLD_CURSOR,
            TokKind::Word | TokKind::Ident if s.names(t, &["pg_advisory_unlock_all"]) && s.punct(lx.peek(), b'(') => {
                bits |= PIN_ADVISORY
            }
            _ => {}
        }
    }
    bits
}

/// A `CREATE` of a temporary object seen in the current statement.
struct TempCreate {
    /// A table, which `ON COMMIT DROP` keeps from outliving the
    /// transaction.
    table: bool,
    depth: usize,
    commit_drop: bool,
}

impl TempCreate {
    fn bits(self) -> u8 {
        if self.table && self.commit_drop {
            0
        } else {
            PIN_TEMP
        }
    }
}

/// The precise check: one pass over the tokens, with bounded look-ahead.
pub(super) fn scan(src: &str, level: usize) -> u8 {
    let s = Src(src);
    let mut lx = Lexer::new(src, 0, src.len());
    let mut bits = 0;
    let mut depth = 0usize;
    let mut at_start = true;
    let mut prev: Option<Tok> = None;
    let mut create: Option<TempCreate> = None;
    // Between DECLARE and the FOR of its query, where WITH HOLD may be.
    let mut declare = false;
    while let Some(t) = lx.next() {
        let first = std::mem::replace(&mut at_start, false);
        match t.kind {
            TokKind::Punct(b';') if depth == 0 => {
                bits |= create.take().map_or(0, TempCreate::bits);
                declare = false;
                at_start = true;
            }
            TokKind::Punct(b'(') => depth += 1,
            TokKind::Punct(b')') => depth = depth.saturating_sub(1),
            TokKind::Dollar => {
                let body = s.body(t);
                bits |= if level < MAX_NESTING { scan(body, level + 1) } else { needles(body.as_bytes(), PIN_NEEDLES) };
            }
            TokKind::Word => {
                if s.is(t, "load") && (first || (level > 0 && lx.peek().is_some_and(|n| n.is_string()))) {
                    bits |= PIN_LOAD;
                } else if s.is(t, "create") {
                    if let Some(table) = s.temp_create(lx) {
                        bits |= create.take().map_or(0, TempCreate::bits);
                        create = Some(TempCreate { table, depth, commit_drop: false });
                    }
                } else if s.is(t, "on") {
                    if let Some(c) = create.as_mut().filter(|c| c.depth == depth) {
                        let mut la = lx;
                        c.commit_drop |= s.word(la.next(), "commit") && s.word(la.next(), "drop");
                    }
                } else if s.is(t, "declare") {
                    declare = true;
                } else if s.is(t, "for") {
                    declare = false;
                } else if s.is(t, "with") {
                    if declare && s.word(lx.peek(), "hold") {
                        bits |= PIN_HOLD_CURSOR;
                    }
                } else if s.is(t, "into") {
                    let target = s.word(prev, "insert") || s.word(prev, "merge");
                    if !target && s.into_temp(lx) {
                        bits |= PIN_TEMP;
                    }
                } else if s.names(t, ADVISORY_LOCKS) && s.punct(lx.peek(), b'(') {
                    bits |= PIN_ADVISORY;
                }
            }
            TokKind::Ident if s.names(t, ADVISORY_LOCKS) && s.punct(lx.peek(), b'(') => bits |= PIN_ADVISORY,
            _ => {}
        }
        prev = Some(t);
    }
    bits | create.map_or(0, TempCreate::bits)
}

/// Token tests against one source text.
#[derive(Clone, Copy)]
struct Src<'a>(&'a str);

impl<'a> Src<'a> {
    fn text(self, t: Tok) -> &'a str {
        self.0.get(t.start..t.end).unwrap_or_default()
    }

    fn body(self, t: Tok) -> &'a str {
        self.0.get(t.body_start..t.body_end).unwrap_or_default()
    }

    /// `t` is the unquoted word `kw` (any case).
    fn is(self, t: Tok, kw: &str) -> bool {
        t.kind == TokKind::Word && self.text(t).eq_ignore_ascii_case(kw)
    }

    fn word(self, t: Option<Tok>, kw: &str) -> bool {
        t.is_some_and(|t| self.is(t, kw))
    }

    fn punct(self, t: Option<Tok>, c: u8) -> bool {
        t.is_some_and(|t| t.kind == TokKind::Punct(c))
    }

    /// `t` names one of `names` (lower case): unquoted in any case, or
    /// quoted exactly.
    fn names(self, t: Tok, names: &[&str]) -> bool {
        match t.kind {
            TokKind::Word => names.iter().any(|n| self.text(t).eq_ignore_ascii_case(n)),
            TokKind::Ident => names.iter().any(|n| self.body(t) == *n),
            _ => false,
        }
    }

    /// After `CREATE` (`la` is just past it): whether this creates a
    /// temporary object, `CREATE [OR REPLACE] [GLOBAL|LOCAL] {TEMP|TEMPORARY}
    /// ...` or an object named `pg_temp.x`; `Some(true)` for a table.
    fn temp_create(self, mut la: Lexer<'_>) -> Option<bool> {
        let mut t = la.next();
        if self.word(t, "or") {
            if !self.word(la.next(), "replace") {
                return None;
            }
            t = la.next();
        }
        if self.word(t, "global") || self.word(t, "local") {
            t = la.next();
        }
        if self.word(t, "temp") || self.word(t, "temporary") {
            return Some(self.word(la.next(), "table"));
        }
        // An object created in the pg_temp schema is temporary too. Its
        // name comes within a few words (`TABLE IF NOT EXISTS pg_temp.t`),
        // before any parenthesis or AS.
        let table = self.word(t, "table");
        for _ in 0..6 {
            let u = t?;
            if self.names(u, &["pg_temp"]) && self.punct(la.peek(), b'.') {
                return Some(table);
            }
            if u.kind != TokKind::Word || self.is(u, "as") {
                return None;
            }
            t = la.next();
        }
        None
    }

    /// After `INTO` (`la` is just past it): `[GLOBAL|LOCAL] {TEMP|TEMPORARY}`
    /// followed by `TABLE` or a table name, as in SELECT INTO.
    fn into_temp(self, mut la: Lexer<'_>) -> bool {
        let mut t = la.next();
        if self.word(t, "global") || self.word(t, "local") {
            t = la.next();
        }
        if !(self.word(t, "temp") || self.word(t, "temporary")) {
            return false;
        }
        match la.next() {
            Some(n) if n.kind == TokKind::Word => !NOT_A_NAME.iter().any(|w| self.is(n, w)),
            Some(n) => matches!(n.kind, TokKind::Ident | TokKind::UIdent),
            None => false,
        }
    }
}

fn first_word_is(sql: &str, kw: &str) -> bool {
    Src(sql).word(Lexer::new(sql, 0, sql.len()).next(), kw)
}

/// The OR of the bits of the needles found in `b` (ASCII case-insensitive):
/// one pass, no allocation.
fn needles(b: &[u8], list: &[(&[u8], u8)]) -> u8 {
    let mut bits = 0;
    for (i, &c) in b.iter().enumerate() {
        let c = c.to_ascii_lowercase();
        for &(n, bit) in list {
            if n.first() == Some(&c) && b.get(i..i + n.len()).is_some_and(|w| w.eq_ignore_ascii_case(n)) {
                bits |= bit;
            }
        }
    }
    bits
}
