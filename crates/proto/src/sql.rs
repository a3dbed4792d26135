//! Recognising the SQL statements that change session state, so that pgmux
//! can keep each client session's state private while many sessions share
//! one server connection in transaction pooling mode.
//!
//! This is not a SQL parser. It owns three things: a tokeniser faithful to
//! PostgreSQL's lexical rules (`lex`), splitting a simple-Query string into
//! statements at top-level semicolons, and reading the few statements whose
//! grammar matters (SET/RESET, PREPARE/EXECUTE/DEALLOCATE, DISCARD, CLOSE
//! ALL, LISTEN/UNLISTEN, transaction control) closely enough to report the
//! byte spans of the names in them (`classify`, `ident`). Apart from those,
//! [`pins`] and [`unpins`] (`pin`) find statements that create or release
//! state only the backend holds (temporary tables, WITH HOLD cursors,
//! advisory locks, LOADed libraries). Everything is a pure function over
//! `&str`, never panics, and runs in linear time.
//!
//! It runs on every query of every session, so the common case is kept
//! cheap: [`may_be_interesting`] answers "certainly nothing here" without
//! tokenising when a query has no semicolon, and [`statements`] only reads a
//! statement beyond its first word when that word is one of a few keywords.
//!
//! Where the server and this module could disagree, the module errs towards
//! reporting a statement rather than hiding one: a hidden `SET search_path`
//! would leak into other clients' sessions, an extra report costs pgmux a
//! closer look. In particular a SQL-standard function body (`BEGIN ATOMIC
//! ... END`) is split at its inner semicolons, so its final `END` reads as a
//! [`Kind::Commit`]; pgmux must take transaction state from ReadyForQuery,
//! not from these kinds.

mod classify;
mod ident;
mod lex;
mod pin;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ops::Range;

use classify::{keyword, Kw};
use lex::{is_ident_cont, is_ident_start, skip_trivia, Lexer, Tok, TokKind};

/// One statement of a query string: its byte range in the input and what it
/// is. The span runs from the start of the first token to the end of the
/// last, so it excludes surrounding whitespace and comments and the
/// terminating semicolon (comments between tokens stay inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt<'a> {
    pub span: Range<usize>,
    pub kind: Kind<'a>,
}

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `SET [SESSION] name {TO|=} value[, ...]`; `local` for SET LOCAL.
    /// `value` is the source text from the first token of the value list
    /// to the end of the statement (so `DEFAULT` appears as written). The
    /// keyword forms map onto parameters: `TIME ZONE` → "timezone" (with
    /// `LOCAL` given as the value "DEFAULT", and an `INTERVAL '...'` value as
    /// written), `NAMES` → "client_encoding" ("DEFAULT" when no encoding is
    /// named), `SCHEMA 'x'` → "search_path", `XML OPTION` → "xmloption"; for
    /// those the name's `raw` and `span` cover the keywords.
    Set {
        name: Ident<'a>,
        value: &'a str,
        local: bool,
    },
    /// `SET name FROM CURRENT`.
    SetFromCurrent {
        name: Ident<'a>,
    },
    /// `RESET name` (`RESET TIME ZONE` gives "timezone").
    Reset {
        name: Ident<'a>,
    },
    ResetAll,
    /// `SET [SESSION|LOCAL] ROLE ...`, `RESET ROLE`, `SET [SESSION|LOCAL]
    /// SESSION AUTHORIZATION ...`, `RESET SESSION AUTHORIZATION`, and the
    /// same spelled as parameters (`SET role = x`, `RESET
    /// session_authorization`).
    Role {
        local: bool,
    },
    /// `SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS AS TRANSACTION
    /// ...`, `SET CONSTRAINTS ...`, `RESET TRANSACTION ISOLATION LEVEL`.
    TransactionScoped,
    /// `PREPARE name [(types)] AS statement`: the name, and the source text
    /// of the statement after AS. A set_config call inside `body` is not
    /// flagged here; classify the body to find it.
    Prepare {
        name: Ident<'a>,
        body: &'a str,
    },
    /// `EXECUTE name [(args)]`, and also `EXPLAIN ... EXECUTE name` and
    /// `CREATE TABLE ... AS EXECUTE name`, which run a prepared statement
    /// just the same and need the same renaming.
    Execute {
        name: Ident<'a>,
    },
    /// `DEALLOCATE [PREPARE] name`; `None` for `ALL`.
    Deallocate {
        name: Option<Ident<'a>>,
    },
    /// `DISCARD ALL | PLANS | SEQUENCES | TEMP | TEMPORARY`.
    Discard(DiscardKind),
    /// `CLOSE ALL` (`CLOSE name` is `Other`).
    CloseAll,
    Listen {
        channel: Ident<'a>,
    },
    /// `None` for `UNLISTEN *`.
    Unlisten {
        channel: Option<Ident<'a>>,
    },
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END` (`COMMIT PREPARED` is `Other`).
    Commit,
    /// `ROLLBACK`, `ABORT` (`ROLLBACK TO SAVEPOINT` and `ROLLBACK PREPARED`
    /// are `Other`).
    Rollback,
    /// Some other statement that calls `set_config(...)` (any spelling of
    /// the name, schema-qualified or not), or that carries "set_config" in a
    /// string or dollar-quoted body, which a DO block or a function might
    /// execute. A hint for pgmux to look closer, never a proof.
    CallsSetConfig,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardKind {
    All,
    Plans,
    Sequences,
    /// `TEMP` or `TEMPORARY`.
    Temp,
}

/// An identifier as written (possibly quoted) and its normalised value:
/// unquoted → ASCII-lowercased, `"quoted"` → exact with `""` unescaped,
/// `U&"..."` → decoded; each part then cut to 63 bytes as the server does.
/// `span` is the byte range of `raw` in the input, for rewriting; for a
/// `U&"..."` name it includes any `UESCAPE 'c'` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident<'a> {
    pub raw: &'a str,
    pub span: Range<usize>,
    pub value: Cow<'a, str>,
}

/// Splits a simple-Query string into statements at top-level semicolons
/// (not inside strings, quoted identifiers, comments, dollar quotes or
/// parentheses) and classifies each. Empty statements (only `;`,
/// whitespace or comments) are skipped.
pub fn statements(sql: &str) -> Vec<Stmt<'_>> {
    let watch = mentions_set_config(sql.as_bytes());
    Pieces::new(sql, watch).map(|p| Stmt { kind: kind_of(sql, &p), span: p.span }).collect()
}

/// Classifies a single statement, e.g. the query of a Parse message; a
/// trailing semicolon is fine. Text holding several statements is `Other`,
/// because the server refuses to prepare it and so none of it runs.
pub fn classify(sql: &str) -> Kind<'_> {
    let mut pieces = Pieces::new(sql, mentions_set_config(sql.as_bytes()));
    match (pieces.next(), pieces.next()) {
        (Some(p), None) => kind_of(sql, &p),
        _ => Kind::Other,
    }
}

/// Cheap pre-check: could [`statements`] find anything but `Other` here?
/// `false` is a promise that it would not, so pgmux can skip all further
/// work. Without a semicolon only the first word needs looking at; with
/// one, the text is tokenised (no allocation) to find each statement's
/// first word, because a semicolon inside a string must not be mistaken for
/// a statement boundary in either direction.
pub fn may_be_interesting(sql: &str) -> bool {
    let b = sql.as_bytes();
    if mentions_set_config(b) {
        return true;
    }
    // A single statement with a trailing semicolon (as pgbench and many drivers send) needs no tokenising.
    let body =
        b.iter().rposition(|&c| !c.is_ascii_whitespace() && c != b';').and_then(|i| b.get(..=i)).unwrap_or_default();
    if !body.contains(&b';') {
        let b = body;
        let start = skip_trivia(b, 0);
        let end = b.get(start..).map_or(start, |r| start + r.iter().take_while(|&&c| is_ident_cont(c)).count());
        return b.get(start).is_some_and(|&c| is_ident_start(c))
            && keyword(b.get(start..end).unwrap_or_default()).is_some();
    }
    Pieces::new(sql, false).any(|p| p.first.is_some())
}

/// Backend-held state a statement text may create (bits).
///
/// A temporary object: `CREATE [OR REPLACE] [GLOBAL|LOCAL] {TEMP|TEMPORARY}
/// ...` (except a TABLE with `ON COMMIT DROP`), `CREATE ... pg_temp.name`,
/// `SELECT ... INTO [GLOBAL|LOCAL] {TEMP|TEMPORARY} [TABLE] name`.
pub const PIN_TEMP: u8 = 1;
/// `DECLARE name ... WITH HOLD ... FOR query`.
pub const PIN_HOLD_CURSOR: u8 = 2;
/// A call to pg_advisory_lock, pg_advisory_lock_shared,
/// pg_try_advisory_lock or pg_try_advisory_lock_shared (not the `_xact_`
/// variants), schema-qualified or not, in any case.
pub const PIN_ADVISORY: u8 = 4;
/// `LOAD 'library'`.
pub const PIN_LOAD: u8 = 8;

/// What backend-held state running `sql` (a simple Query of any number of
/// statements, or the query of a Parse) may create: the OR of the `PIN_*`
/// bits over its statements. Dollar-quoted bodies (DO blocks, function
/// bodies) count as if their statements ran; string literals, comments and
/// quoted identifiers never match a keyword.
///
/// 0 for the vast majority of queries, and cheap for them: unless the text
/// contains "temp", "hold" or "advisory" (any case), or "load" where a
/// statement could start with it, nothing is tokenised.
pub fn pins(sql: &str) -> u8 {
    pin::pins(sql)
}

/// What state the statements of `sql` release: `DISCARD ALL` →
/// `PIN_TEMP | PIN_HOLD_CURSOR | PIN_ADVISORY`, `DISCARD TEMP|TEMPORARY` →
/// `PIN_TEMP`, `CLOSE ALL` → `PIN_HOLD_CURSOR`, a call to
/// pg_advisory_unlock_all() → `PIN_ADVISORY`. Calls inside dollar-quoted
/// bodies do not count, since they may never run. The OR over statements.
pub fn unpins(sql: &str) -> u8 {
    pin::unpins(sql)
}

/// The text to put in place of `sql[span]`, an identifier token that
/// [`statements`] reported, so that it names `name` instead: `name` itself
/// (a plain lower-case identifier such as pgmux's `pgmuxq_1_2_3`), with a
/// space on each side where the neighbouring byte would otherwise run into
/// it. A quoted name needs no whitespace around it (`EXECUTE"a"(1)`,
/// `PREPARE"a"AS ...`), but a bare one there would merge with its
/// neighbours into one word and change the statement.
pub fn ident_replacement(sql: &str, span: Range<usize>, name: &str) -> String {
    let b = sql.as_bytes();
    let before = span.start.checked_sub(1).and_then(|i| b.get(i)).is_some_and(|&c| is_ident_cont(c));
    let after = b.get(span.end).is_some_and(|&c| is_ident_cont(c));
    let mut out = String::with_capacity(name.len() + 2);
    if before {
        out.push(' ');
    }
    out.push_str(name);
    if after {
        out.push(' ');
    }
    out
}

/// Quotes `s` as an identifier: always in double quotes, so that the value
/// is taken exactly (case kept, keywords allowed), with `"` doubled.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes `s` as a string literal, `'` doubled. With a backslash present it
/// becomes `E'...'` with backslashes doubled too, which reads the same
/// whatever standard_conforming_strings is set to.
pub fn quote_literal(s: &str) -> String {
    let escape = s.contains('\\');
    let mut out = String::with_capacity(s.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || (escape && c == '\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

// ------------------------------------------------------------- splitting

/// One non-empty statement found by the splitter.
struct Piece {
    span: Range<usize>,
    /// The first token, if it is a word that can start an interesting
    /// statement.
    first: Option<Kw>,
    /// Whether a set_config call (or mention in a string) was seen.
    set_config: bool,
}

fn kind_of<'a>(sql: &'a str, p: &Piece) -> Kind<'a> {
    let kind = match p.first {
        Some(kw) => classify::statement(sql, p.span.clone(), kw),
        None => Kind::Other,
    };
    if kind == Kind::Other && p.set_config {
        Kind::CallsSetConfig
    } else {
        kind
    }
}

/// Iterates over the non-empty statements of a query string.
struct Pieces<'a> {
    src: &'a str,
    lx: Lexer<'a>,
    /// Look for set_config; off when the text cannot mention it, which
    /// spares the per-token checks for nearly every query.
    watch: bool,
}

impl<'a> Pieces<'a> {
    fn new(src: &'a str, watch: bool) -> Self {
        Pieces { src, lx: Lexer::new(src, 0, src.len()), watch }
    }

    fn text(&self, t: &Tok) -> &'a str {
        self.src.get(t.start..t.end).unwrap_or_default()
    }

    fn body(&self, t: &Tok) -> &'a str {
        self.src.get(t.body_start..t.body_end).unwrap_or_default()
    }

    /// Whether `t` names set_config (so a following `(` makes a call), and
    /// whether it is a string that mentions it.
    fn set_config_token(&mut self, t: &Tok) -> (bool, bool) {
        match t.kind {
            TokKind::Word => (self.text(t).eq_ignore_ascii_case("set_config"), false),
            TokKind::Ident => (self.body(t) == "set_config", false),
            TokKind::UIdent => {
                // Decode as classify would; an escape clause sits between
                // the name and its parenthesis, so step over it. A body that
                // does not decode is treated as a match: the server may read
                // it differently, and a false alarm is cheap.
                let mut la = self.lx;
                let mut esc = '\\';
                if la.next().is_some_and(|u| self.text(&u).eq_ignore_ascii_case("uescape")) {
                    if let Some(s) = la.next().filter(|s| s.kind == TokKind::Str) {
                        esc = self.body(&s).chars().next().unwrap_or('\\');
                        self.lx = la;
                    }
                }
                let named = ident::decode_unicode(self.body(t), esc).is_none_or(|v| v == "set_config");
                (named, false)
            }
            TokKind::Str | TokKind::EStr | TokKind::UStr | TokKind::Dollar => {
                (false, has_set_config_name(self.body(t).as_bytes()))
            }
            _ => (false, false),
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let first = loop {
            let t = self.lx.next()?;
            if t.kind != TokKind::Punct(b';') {
                break t;
            }
        };
        let kw = if first.kind == TokKind::Word { keyword(self.text(&first).as_bytes()) } else { None };
        let mut end = first.end;
        let mut depth = 0usize;
        let mut set_config = false;
        let mut named = false;
        let mut tok = Some(first);
        while let Some(t) = tok {
            match t.kind {
                TokKind::Punct(b';') if depth == 0 => break,
                TokKind::Punct(b'(') => {
                    set_config |= named;
                    depth += 1;
                }
                // An unmatched `)` is a syntax error for the server, which
                // then runs nothing; it must not make later `;` look nested.
                TokKind::Punct(b')') => depth = depth.saturating_sub(1),
                _ => {}
            }
            named = false;
            if self.watch {
                let (n, mentioned) = self.set_config_token(&t);
                named = n;
                set_config |= mentioned;
            }
            end = end.max(self.lx.pos());
            tok = self.lx.next();
        }
        Some(Piece { span: first.start..end, first: kw, set_config })
    }
}

/// Whether the text could refer to set_config at all: the name in any case,
/// or a `U&"` identifier that might spell it with escapes.
fn mentions_set_config(b: &[u8]) -> bool {
    has_set_config_name(b) || b.windows(3).any(|w| w.eq_ignore_ascii_case(b"u&\""))
}

/// "set_config" in any case: one pass over the bytes, no allocation.
fn has_set_config_name(b: &[u8]) -> bool {
    const NAME: &[u8] = b"set_config";
    b.iter()
        .enumerate()
        .any(|(i, &c)| c | 0x20 == b's' && b.get(i..i + NAME.len()).is_some_and(|w| w.eq_ignore_ascii_case(NAME)))
}
