//! Tokeniser for PostgreSQL's lexical structure, just precise enough to find
//! where tokens start and end the way the server's scanner does: strings
//! (plain, `E''`, `U&''`, dollar-quoted), quoted identifiers (`""`, `U&""`),
//! nested `/* */` and `--` comments, identifiers, numbers, parameters and
//! single-byte punctuation.
//!
//! It works on bytes and only ever stops at ASCII bytes or at the end of the
//! input, so every position it reports is a char boundary of the `&str` it
//! was given. Nothing is ever an error: an unterminated string, identifier,
//! dollar quote or comment runs to the end of the input, which is where the
//! server would report the error (and execute nothing).
//!
//! standard_conforming_strings is assumed on, PostgreSQL's default since 9.1:
//! backslash escapes only inside `E'...'`.

/// What kind of token it is; positions live in [`Tok`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"..."`.
    Ident,
    /// `U&"..."`.
    UIdent,
    /// `'...'` (also the quoted part of `B'..'`, `X'..'`, `N'..'`, whose
    /// prefix lexes as a word: the quoting rules are the same).
    Str,
    /// `E'...'`.
    EStr,
    /// `U&'...'`.
    UStr,
    /// `$tag$...$tag$`.
    Dollar,
    Number,
    /// `$1`.
    Param,
    /// Any other single byte: operators, `;`, `(`, `)`, `,`, `.`, ...
    Punct(u8),
}

/// One token. `body` is the text between the delimiters for quoted tokens
/// (escapes not yet processed) and the whole token otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tok {
    pub kind: TokKind,
    pub start: usize,
    pub end: usize,
    pub body_start: usize,
    pub body_end: usize,
    /// False when the input ended before the closing delimiter.
    pub terminated: bool,
}

impl Tok {
    fn plain(kind: TokKind, start: usize, end: usize) -> Tok {
        Tok { kind, start, end, body_start: start, body_end: end, terminated: true }
    }

    pub fn is_string(&self) -> bool {
        matches!(self.kind, TokKind::Str | TokKind::EStr | TokKind::UStr | TokKind::Dollar)
    }
}

/// Copyable so that callers can look ahead by lexing from a copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// Lexes `src[start..end]`; positions stay relative to `src`. `start`
    /// must be a token start (or trivia) for the tokens to match what a lex
    /// of the whole input would produce there.
    pub fn new(src: &'a str, start: usize, end: usize) -> Lexer<'a> {
        let all = src.as_bytes();
        Lexer { b: all.get(..end).unwrap_or(all), pos: start }
    }

    /// Where the next token (or trivia before it) starts.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next token without consuming it.
    pub fn peek(&self) -> Option<Tok> {
        let mut copy = *self;
        copy.next()
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let b = self.b;
        let start = skip_trivia(b, self.pos);
        let &c = b.get(start)?;
        let next = b.get(start + 1).copied();
        let tok = match c {
            b'\'' => quoted(b, start, start, b'\'', TokKind::Str),
            b'"' => quoted(b, start, start, b'"', TokKind::Ident),
            b'e' | b'E' if next == Some(b'\'') => escape_string(b, start),
            b'u' | b'U' if next == Some(b'&') => match b.get(start + 2) {
                Some(b'\'') => quoted(b, start, start + 2, b'\'', TokKind::UStr),
                Some(b'"') => quoted(b, start, start + 2, b'"', TokKind::UIdent),
                _ => Tok::plain(TokKind::Word, start, word_end(b, start)),
            },
            b'$' => dollar(b, start),
            b'0'..=b'9' => Tok::plain(TokKind::Number, start, number_end(b, start)),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                Tok::plain(TokKind::Number, start, number_end(b, start + 1))
            }
            c if is_ident_start(c) => Tok::plain(TokKind::Word, start, word_end(b, start)),
            c => Tok::plain(TokKind::Punct(c), start, start + 1),
        };
        self.pos = tok.end;
        Some(tok)
    }
}

/// The scanner's `space` class (`\v` is whitespace since PostgreSQL 16;
/// accepting it everywhere only matters for inputs older servers reject).
pub(super) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes >= 0x80 count as letters, as in the server: any non-ASCII
/// character may appear in an identifier.
pub(super) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(super) fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Dollar-quote tags are identifiers without `$`.
fn is_tag_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Skips whitespace and comments starting at `i`; returns the position of
/// the next token (or the end of input).
pub(super) fn skip_trivia(b: &[u8], mut i: usize) -> usize {
    loop {
        match (b.get(i), b.get(i + 1)) {
            (Some(&c), _) if is_space(c) => i += 1,
            (Some(b'-'), Some(b'-')) => {
                // The newline itself is then skipped as whitespace.
                i = match b.get(i..).and_then(|r| r.iter().position(|&c| c == b'\n' || c == b'\r')) {
                    Some(p) => i + p,
                    None => return b.len(),
                };
            }
            (Some(b'/'), Some(b'*')) => i = block_comment_end(b, i),
            _ => return i,
        }
    }
}

/// `i` is at `/*`. Comments nest; each delimiter is two bytes consumed
/// together so that `/*/` is not read as an open followed by a close.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    loop {
        match (b.get(i), b.get(i + 1)) {
            (Some(b'/'), Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (Some(b'*'), Some(b'/')) => {
                depth = depth.saturating_sub(1);
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            (Some(_), _) => i += 1,
            (None, _) => return b.len(),
        }
    }
}

fn word_end(b: &[u8], start: usize) -> usize {
    let rest = b.get(start..).unwrap_or_default();
    start + rest.iter().position(|&c| !is_ident_cont(c)).unwrap_or(rest.len())
}

/// Digits, dots and underscores. Letters are left for the next token, which
/// is what servers before 15 did with `1e'x'` and later ones reject anyway.
fn number_end(b: &[u8], start: usize) -> usize {
    let rest = b.get(start..).unwrap_or_default();
    start + rest.iter().position(|&c| !(c.is_ascii_digit() || c == b'.' || c == b'_')).unwrap_or(rest.len())
}

/// A string or identifier whose only escape is a doubled quote (`''`, `""`).
/// `open` is the index of the opening quote, after any prefix.
fn quoted(b: &[u8], start: usize, open: usize, q: u8, kind: TokKind) -> Tok {
    let body_start = open + 1;
    let mut i = body_start;
    loop {
        match b.get(i..).and_then(|r| r.iter().position(|&c| c == q)) {
            None => return unterminated(kind, start, body_start, b.len()),
            Some(p) => {
                let close = i + p;
                if b.get(close + 1) == Some(&q) {
                    i = close + 2;
                } else {
                    return Tok { kind, start, end: close + 1, body_start, body_end: close, terminated: true };
                }
            }
        }
    }
}

/// `E'...'`: a backslash escapes whatever byte follows it, a quote included.
/// Skipping a single byte is enough: continuation bytes of a multi-byte
/// character are never a quote or a backslash.
fn escape_string(b: &[u8], start: usize) -> Tok {
    let body_start = start + 2;
    let mut i = body_start;
    loop {
        match b.get(i) {
            None => return unterminated(TokKind::EStr, start, body_start, b.len()),
            Some(b'\\') => i += 2,
            Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => {
                return Tok { kind: TokKind::EStr, start, end: i + 1, body_start, body_end: i, terminated: true }
            }
            Some(_) => i += 1,
        }
    }
}

fn unterminated(kind: TokKind, start: usize, body_start: usize, len: usize) -> Tok {
    let body_start = body_start.min(len);
    Tok { kind, start, end: len, body_start, body_end: len, terminated: false }
}

/// `$1`, `$tag$...$tag$`, or a lone `$`.
fn dollar(b: &[u8], start: usize) -> Tok {
    let after = start + 1;
    match b.get(after) {
        Some(c) if c.is_ascii_digit() => {
            let rest = b.get(after..).unwrap_or_default();
            let end = after + rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(rest.len());
            return Tok::plain(TokKind::Param, start, end);
        }
        Some(&c) if c == b'$' || is_ident_start(c) => {}
        _ => return Tok::plain(TokKind::Punct(b'$'), start, after),
    }
    let rest = b.get(after..).unwrap_or_default();
    let tag_end = after + rest.iter().position(|&c| !is_tag_cont(c)).unwrap_or(rest.len());
    if b.get(tag_end) != Some(&b'$') {
        // `$abc` without a closing `$` is not a delimiter: the server
        // returns the `$` alone and lexes the rest afresh.
        return Tok::plain(TokKind::Punct(b'$'), start, after);
    }
    let tag = b.get(after..tag_end).unwrap_or_default();
    let body_start = tag_end + 1;
    let mut i = body_start;
    // Looking for `$tag$` at every `$` is linear overall: a comparison that
    // matches k bytes has passed k tag bytes, none of which is a `$`, so the
    // next candidate lies beyond them.
    loop {
        let Some(p) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'$')) else {
            return unterminated(TokKind::Dollar, start, body_start, b.len());
        };
        let close = i + p;
        let cand = b.get(close + 1..).unwrap_or_default();
        let matched =
            cand.len() > tag.len() && tag.iter().zip(cand).all(|(x, y)| x == y) && cand.get(tag.len()) == Some(&b'$');
        if matched {
            let end = close + tag.len() + 2;
            return Tok { kind: TokKind::Dollar, start, end, body_start, body_end: close, terminated: true };
        }
        i = close + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(TokKind, &str)> {
        Lexer::new(s, 0, s.len()).map(|t| (t.kind, s.get(t.start..t.end).unwrap_or("?"))).collect()
    }

    #[test]
    fn token_boundaries() {
        use TokKind::*;
        let cases: &[(&str, &[(TokKind, &str)])] = &[
            ("", &[]),
            ("  -- only\n /* c */ ", &[]),
            ("a$b$ c", &[(Word, "a$b$"), (Word, "c")]),
            ("e'x' ee'x'", &[(EStr, "e'x'"), (Word, "ee"), (Str, "'x'")]),
            (r"E'a\'b' 'c\'", &[(EStr, r"E'a\'b'"), (Str, r"'c\'")]),
            ("'it''s'", &[(Str, "'it''s'")]),
            ("\"a\"\"b\"", &[(Ident, "\"a\"\"b\"")]),
            (
                "U&'x' u&\"y\" u&z",
                &[(UStr, "U&'x'"), (UIdent, "u&\"y\""), (Word, "u"), (Punct(b'&'), "&"), (Word, "z")],
            ),
            ("$1 $$x$$ $a$ $b$ $a$", &[(Param, "$1"), (Dollar, "$$x$$"), (Dollar, "$a$ $b$ $a$")]),
            ("$a $", &[(Punct(b'$'), "$"), (Word, "a"), (Punct(b'$'), "$")]),
            ("$a$$$a$", &[(Dollar, "$a$$$a$")]),
            ("/* a /* b */ c */x", &[(Word, "x")]),
            ("/*/ x */y", &[(Word, "y")]),
            ("1.5e3 .5", &[(Number, "1.5"), (Word, "e3"), (Number, ".5")]),
            ("x::int;", &[(Word, "x"), (Punct(b':'), ":"), (Punct(b':'), ":"), (Word, "int"), (Punct(b';'), ";")]),
            ("'open", &[(Str, "'open")]),
            ("E'open\\", &[(EStr, "E'open\\")]),
            ("$q$open", &[(Dollar, "$q$open")]),
            ("/* open", &[]),
            ("héllo wörld", &[(Word, "héllo"), (Word, "wörld")]),
        ];
        for (input, want) in cases {
            assert_eq!(kinds(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn bodies() {
        let s = "E'a' \"b\"\"c\" $t$d$t$ 'e";
        let bodies: Vec<&str> =
            Lexer::new(s, 0, s.len()).map(|t| s.get(t.body_start..t.body_end).unwrap_or("?")).collect();
        assert_eq!(bodies, ["a", "b\"\"c", "d", "e"]);
    }
}
