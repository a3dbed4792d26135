//! The grammar of the statements pgmux cares about, read off the token
//! stream of one statement whose first word is already known to be one of
//! them. Everything else is [`Kind::Other`].
//!
//! Parsing is lenient about what follows the part that decides the kind:
//! when the server rejects such a statement it rejects the whole query
//! string, so nothing runs and the extra precision would buy nothing.

use std::borrow::Cow;
use std::ops::Range;

use super::ident::{decode_unicode, fold_unquoted, truncate, undouble, valid_uescape};
use super::lex::{Lexer, Tok, TokKind};
use super::{DiscardKind, Ident, Kind};

/// First words that can start a statement whose kind is not `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kw {
    Set,
    Reset,
    Prepare,
    Execute,
    Deallocate,
    Discard,
    Close,
    Listen,
    Unlisten,
    Begin,
    Start,
    Commit,
    End,
    Rollback,
    Abort,
    /// `EXPLAIN ... EXECUTE name` runs a prepared statement.
    Explain,
    /// `CREATE TABLE ... AS EXECUTE name` runs a prepared statement.
    Create,
}

/// Maps a first word to a keyword. Dispatching on the length first keeps
/// the common miss (SELECT, INSERT, UPDATE...) to a couple of comparisons.
pub(super) fn keyword(w: &[u8]) -> Option<Kw> {
    let is = |k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    let kw = match w.len() {
        3 if is("set") => Kw::Set,
        3 if is("end") => Kw::End,
        5 if is("reset") => Kw::Reset,
        5 if is("close") => Kw::Close,
        5 if is("begin") => Kw::Begin,
        5 if is("start") => Kw::Start,
        5 if is("abort") => Kw::Abort,
        6 if is("listen") => Kw::Listen,
        6 if is("commit") => Kw::Commit,
        6 if is("create") => Kw::Create,
        7 if is("prepare") => Kw::Prepare,
        7 if is("execute") => Kw::Execute,
        7 if is("discard") => Kw::Discard,
        7 if is("explain") => Kw::Explain,
        8 if is("unlisten") => Kw::Unlisten,
        8 if is("rollback") => Kw::Rollback,
        10 if is("deallocate") => Kw::Deallocate,
        _ => return None,
    };
    Some(kw)
}

/// Classifies the statement at `span` (its first token is the word for
/// `kw`).
pub(super) fn statement(src: &str, span: Range<usize>, kw: Kw) -> Kind<'_> {
    let mut p = Parser { src, lx: Lexer::new(src, span.start, span.end), end: span.end };
    p.lx.next();
    p.parse(kw).unwrap_or(Kind::Other)
}

struct Parser<'a> {
    src: &'a str,
    lx: Lexer<'a>,
    /// End of the statement's last token.
    end: usize,
}

impl<'a> Parser<'a> {
    fn parse(&mut self, kw: Kw) -> Option<Kind<'a>> {
        Some(match kw {
            Kw::Set => self.set()?,
            Kw::Reset => self.reset()?,
            Kw::Prepare => self.prepare()?,
            Kw::Execute => Kind::Execute { name: self.col_id()? },
            Kw::Deallocate => self.deallocate()?,
            Kw::Discard => self.discard()?,
            Kw::Close => self.eat("all").then_some(Kind::CloseAll)?,
            Kw::Listen => Kind::Listen { channel: self.col_id()? },
            Kw::Unlisten => self.unlisten()?,
            Kw::Begin => Kind::Begin,
            Kw::Start => self.eat("transaction").then_some(Kind::Begin)?,
            Kw::Commit => (!self.at("prepared")).then_some(Kind::Commit)?,
            Kw::End => Kind::Commit,
            Kw::Rollback => self.rollback()?,
            Kw::Abort => Kind::Rollback,
            Kw::Explain => self.explain()?,
            Kw::Create => self.create_as_execute()?,
        })
    }

    // ------------------------------------------------------------ helpers

    fn text(&self, r: Range<usize>) -> &'a str {
        self.src.get(r).unwrap_or_default()
    }

    fn is_word(&self, t: Option<Tok>, kw: &str) -> bool {
        t.is_some_and(|t| {
            t.kind == TokKind::Word && self.text(t.start..t.end).as_bytes().eq_ignore_ascii_case(kw.as_bytes())
        })
    }

    fn at(&self, kw: &str) -> bool {
        self.is_word(self.lx.peek(), kw)
    }

    /// The token after the next one.
    fn peek2(&self) -> Option<Tok> {
        let mut la = self.lx;
        la.next();
        la.next()
    }

    fn eat(&mut self, kw: &str) -> bool {
        let hit = self.at(kw);
        if hit {
            self.lx.next();
        }
        hit
    }

    fn at_punct(&self, c: u8) -> bool {
        self.lx.peek().is_some_and(|t| t.kind == TokKind::Punct(c))
    }

    /// Source text from the next token to the end of the statement, if any.
    fn rest(&self) -> Option<&'a str> {
        let t = self.lx.peek()?;
        Some(self.text(t.start..self.end))
    }

    /// Skips a parenthesised group starting at the next token, if there is
    /// one; false if it never closes.
    fn skip_parens(&mut self) -> bool {
        if !self.at_punct(b'(') {
            return true;
        }
        let mut depth = 0usize;
        for t in self.lx.by_ref() {
            match t.kind {
                TokKind::Punct(b'(') => depth += 1,
                TokKind::Punct(b')') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// A name built from keywords (`TIME ZONE`) that stands for a parameter.
    fn keyword_name(&self, start: usize, end: usize, value: &'static str) -> Ident<'a> {
        Ident { raw: self.text(start..end), span: start..end, value: Cow::Borrowed(value) }
    }

    // -------------------------------------------------------- identifiers

    /// One identifier (ColId), with the UESCAPE clause of a `U&"..."`.
    /// Keywords are not rejected: the server would, and nothing would run.
    fn col_id(&mut self) -> Option<Ident<'a>> {
        let t = self.lx.peek()?;
        let mut after = self.lx;
        after.next();
        let value = match t.kind {
            TokKind::Word => fold_unquoted(self.text(t.start..t.end)),
            TokKind::Ident if t.terminated && t.body_end > t.body_start => {
                undouble(self.text(t.body_start..t.body_end), '"')
            }
            TokKind::UIdent if t.terminated && t.body_end > t.body_start => {
                let esc = self.uescape(&mut after)?;
                let decoded = decode_unicode(self.text(t.body_start..t.body_end), esc)?;
                Cow::Owned(decoded)
            }
            _ => return None,
        };
        // The lexer stops right after the last token it returned: the
        // identifier, or the string of its UESCAPE clause.
        let end = after.pos();
        self.lx = after;
        Some(Ident { raw: self.text(t.start..end), span: t.start..end, value: truncate(value) })
    }

    /// The escape character for a `U&` token; `after` is positioned just
    /// past the token and is moved past `UESCAPE 'c'` when present.
    fn uescape(&self, after: &mut Lexer<'a>) -> Option<char> {
        let mut la = *after;
        if !self.is_word(la.next(), "uescape") {
            return Some('\\');
        }
        let s = la.next().filter(|s| s.kind == TokKind::Str && s.terminated)?;
        let mut chars = self.text(s.body_start..s.body_end).chars();
        let esc = chars.next().filter(|&c| valid_uescape(c))?;
        if chars.next().is_some() {
            return None;
        }
        *after = la;
        Some(esc)
    }

    /// A possibly dotted parameter name (`myapp.user_id`); `raw` and `span`
    /// cover all of it, `value` joins the normalised parts with dots.
    fn var_name(&mut self) -> Option<Ident<'a>> {
        let first = self.col_id()?;
        if !self.at_punct(b'.') {
            return Some(first);
        }
        let start = first.span.start;
        let mut end = first.span.end;
        let mut value = first.value.into_owned();
        while self.at_punct(b'.') {
            self.lx.next();
            let part = self.col_id()?;
            value.push('.');
            value.push_str(&part.value);
            end = part.span.end;
        }
        Some(Ident { raw: self.text(start..end), span: start..end, value: Cow::Owned(value) })
    }

    /// Whether a keyword at the next token is really a parameter name:
    /// `SET session = 1` and `SET role TO x` name parameters, because the
    /// grammar reads the keyword as a name when `=`, `TO`, `.` or `FROM`
    /// follows.
    fn keyword_is_name(&self) -> bool {
        match self.peek2() {
            Some(t) if t.kind == TokKind::Punct(b'=') || t.kind == TokKind::Punct(b'.') => true,
            t => self.is_word(t, "to") || self.is_word(t, "from"),
        }
    }

    // ---------------------------------------------------------- statements

    fn set(&mut self) -> Option<Kind<'a>> {
        if let Some(k) = self.set_special(false) {
            return k;
        }
        let mut local = false;
        if (self.at("local") || self.at("session")) && !self.keyword_is_name() {
            local = self.at("local");
            self.lx.next();
            if let Some(k) = self.set_special(local) {
                return k;
            }
        }
        let name = self.var_name()?;
        if self.at_punct(b'=') || self.at("to") {
            self.lx.next();
            let value = self.rest()?;
            if is_role_param(&name.value) {
                return Some(Kind::Role { local });
            }
            return Some(Kind::Set { name, value, local });
        }
        if self.eat("from") && self.at("current") {
            return Some(Kind::SetFromCurrent { name });
        }
        None
    }

    /// The keyword forms of SET. `None` when the next words are not one;
    /// `Some(None)` when they are but the statement is malformed.
    fn set_special(&mut self, local: bool) -> Option<Option<Kind<'a>>> {
        let t = self.lx.peek()?;
        if t.kind != TokKind::Word || self.keyword_is_name() {
            return None;
        }
        let two = |p: &Self, a: &str, b: &str| p.at(a) && p.is_word(p.peek2(), b);
        let (name, value): (&'static str, Option<&'a str>) = if two(self, "time", "zone") {
            let zone_end = self.peek2().map_or(t.end, |z| z.end);
            self.lx.next();
            self.lx.next();
            // LOCAL means the default here, but `SET timezone TO local` would
            // name a zone called "local": hand pgmux the meaning.
            let value = match self.rest() {
                Some(v) if v.eq_ignore_ascii_case("local") => Some("DEFAULT"),
                v => v,
            };
            return Some(value.map(|value| Kind::Set {
                name: self.keyword_name(t.start, zone_end, "timezone"),
                value,
                local,
            }));
        } else if self.at("names") {
            self.lx.next();
            // Without an encoding, NAMES restores the default.
            ("client_encoding", Some(self.rest().unwrap_or("DEFAULT")))
        } else if self.at("schema") {
            self.lx.next();
            let ok = self.lx.peek().is_some_and(|s| s.is_string());
            ("search_path", self.rest().filter(|_| ok))
        } else if two(self, "xml", "option") {
            let end = self.peek2().map_or(t.end, |o| o.end);
            self.lx.next();
            self.lx.next();
            return Some(self.rest().map(|value| Kind::Set {
                name: self.keyword_name(t.start, end, "xmloption"),
                value,
                local,
            }));
        } else if self.at("role") || two(self, "session", "authorization") {
            return Some(Some(Kind::Role { local }));
        } else if self.at("transaction") || self.at("constraints") || two(self, "session", "characteristics") {
            return Some(Some(Kind::TransactionScoped));
        } else if self.at("catalog") {
            // The server refuses to change the database this way.
            return Some(None);
        } else {
            return None;
        };
        Some(value.map(|value| Kind::Set { name: self.keyword_name(t.start, t.end, name), value, local }))
    }

    fn reset(&mut self) -> Option<Kind<'a>> {
        let t = self.lx.peek()?;
        let two = |p: &Self, a: &str, b: &str| p.at(a) && p.is_word(p.peek2(), b);
        if self.at("all") {
            return Some(Kind::ResetAll);
        }
        if two(self, "time", "zone") {
            let end = self.peek2().map_or(t.end, |z| z.end);
            return Some(Kind::Reset { name: self.keyword_name(t.start, end, "timezone") });
        }
        if two(self, "transaction", "isolation") {
            return Some(Kind::TransactionScoped);
        }
        if two(self, "session", "authorization") {
            return Some(Kind::Role { local: false });
        }
        let name = self.var_name()?;
        if is_role_param(&name.value) {
            return Some(Kind::Role { local: false });
        }
        Some(Kind::Reset { name })
    }

    fn prepare(&mut self) -> Option<Kind<'a>> {
        // PREPARE TRANSACTION 'gid' is two-phase commit, not a statement.
        if self.at("transaction") && self.peek2().is_some_and(|t| t.is_string()) {
            return None;
        }
        let name = self.col_id()?;
        if !self.skip_parens() || !self.eat("as") {
            return None;
        }
        Some(Kind::Prepare { name, body: self.rest()? })
    }

    fn deallocate(&mut self) -> Option<Kind<'a>> {
        // A lone `DEALLOCATE prepare` names a statement called "prepare".
        if self.at("prepare") && self.peek2().is_some() {
            self.lx.next();
        }
        if self.at("all") {
            return Some(Kind::Deallocate { name: None });
        }
        Some(Kind::Deallocate { name: Some(self.col_id()?) })
    }

    fn discard(&mut self) -> Option<Kind<'a>> {
        let d = if self.at("all") {
            DiscardKind::All
        } else if self.at("plans") {
            DiscardKind::Plans
        } else if self.at("sequences") {
            DiscardKind::Sequences
        } else if self.at("temp") || self.at("temporary") {
            DiscardKind::Temp
        } else {
            return None;
        };
        Some(Kind::Discard(d))
    }

    fn unlisten(&mut self) -> Option<Kind<'a>> {
        if self.at_punct(b'*') {
            return Some(Kind::Unlisten { channel: None });
        }
        Some(Kind::Unlisten { channel: Some(self.col_id()?) })
    }

    fn rollback(&mut self) -> Option<Kind<'a>> {
        if self.at("prepared") {
            return None;
        }
        if !self.eat("work") {
            self.eat("transaction");
        }
        // ROLLBACK TO [SAVEPOINT] leaves the transaction open.
        (!self.at("to")).then_some(Kind::Rollback)
    }

    fn explain(&mut self) -> Option<Kind<'a>> {
        if self.at_punct(b'(') {
            if !self.skip_parens() {
                return None;
            }
        } else {
            while self.eat("analyze") || self.eat("analyse") || self.eat("verbose") {}
        }
        self.eat("execute").then_some(())?;
        Some(Kind::Execute { name: self.col_id()? })
    }

    /// `CREATE TABLE name [...] AS EXECUTE name`: the only CREATE where the
    /// words AS EXECUTE meet.
    fn create_as_execute(&mut self) -> Option<Kind<'a>> {
        while let Some(t) = self.lx.next() {
            if self.is_word(Some(t), "as") && self.eat("execute") {
                return Some(Kind::Execute { name: self.col_id()? });
            }
        }
        None
    }
}

/// SET role and SET session_authorization are SET ROLE and SET SESSION
/// AUTHORIZATION spelled as parameters; the server looks parameter names up
/// without regard to case, so `"ROLE"` counts too.
fn is_role_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
}
