//! Turning an identifier token into the name the server would use: unquoted
//! names fold ASCII letters to lower case, `"quoted"` names keep their case
//! with `""` undoubled, `U&"..."` names decode their Unicode escapes, and all
//! of them are cut to NAMEDATALEN - 1 bytes as the server's scanner does, so
//! that two spellings the server treats as one name compare equal here too.

use std::borrow::Cow;

/// NAMEDATALEN - 1 in a default PostgreSQL build.
const MAX_IDENT_BYTES: usize = 63;

/// Only ASCII folds: for multi-byte encodings (UTF-8 is the only one pgmux
/// speaks to clients) the server leaves other letters alone.
pub(super) fn fold_unquoted(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Undoubles the quote character `q` of a quoted body.
pub(super) fn undouble(s: &str, q: char) -> Cow<'_, str> {
    let mut doubled = String::with_capacity(2);
    doubled.push(q);
    doubled.push(q);
    if s.contains(doubled.as_str()) {
        Cow::Owned(s.replace(doubled.as_str(), q.encode_utf8(&mut [0; 4])))
    } else {
        Cow::Borrowed(s)
    }
}

/// Cuts to the server's identifier length limit on a char boundary (the
/// server clips multi-byte characters whole too).
pub(super) fn truncate(name: Cow<'_, str>) -> Cow<'_, str> {
    if name.len() <= MAX_IDENT_BYTES {
        return name;
    }
    let cut = (0..=MAX_IDENT_BYTES).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    match name {
        Cow::Borrowed(s) => Cow::Borrowed(s.get(..cut).unwrap_or(s)),
        Cow::Owned(mut s) => {
            s.truncate(cut);
            Cow::Owned(s)
        }
    }
}

/// Whether `c` may be chosen with UESCAPE: the server refuses hex digits,
/// `+`, quotes and whitespace because they would make escapes ambiguous.
pub(super) fn valid_uescape(c: char) -> bool {
    !(c.is_ascii_hexdigit() || matches!(c, '+' | '\'' | '"' | ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

/// Decodes the body of a `U&"..."` identifier (quotes still doubled) with
/// escape character `esc`: `<esc><esc>`, `<esc>XXXX`, `<esc>+XXXXXX`, and
/// UTF-16 surrogate pairs written as two escapes. `None` where the server
/// would report an invalid escape.
pub(super) fn decode_unicode(body: &str, esc: char) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            // The lexer only ends the token at a lone quote, so this is the
            // first of a doubled pair.
            chars.next();
            out.push('"');
            continue;
        }
        if c != esc {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&esc) {
            chars.next();
            out.push(esc);
            continue;
        }
        let first = escape_value(&mut chars)?;
        let cp = if (0xD800..0xDC00).contains(&first) {
            if chars.next() != Some(esc) {
                return None;
            }
            let second = escape_value(&mut chars)?;
            if !(0xDC00..0xE000).contains(&second) {
                return None;
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        // NUL cannot appear in a name; lone surrogates are not characters.
        if cp == 0 {
            return None;
        }
        out.push(char::from_u32(cp)?);
    }
    Some(out)
}

/// The code point after an escape character: 4 hex digits, or `+` and 6.
fn escape_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<u32> {
    let digits = if chars.peek() == Some(&'+') {
        chars.next();
        6
    } else {
        4
    };
    let mut v = 0u32;
    for _ in 0..digits {
        v = v.checked_mul(16)?.checked_add(chars.next()?.to_digit(16)?)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_undoubling_borrow_when_unchanged() {
        assert!(matches!(fold_unquoted("abc"), Cow::Borrowed("abc")));
        assert_eq!(fold_unquoted("AbÉc"), "abÉc");
        assert!(matches!(undouble("abc", '"'), Cow::Borrowed("abc")));
        assert_eq!(undouble("a\"\"b", '"'), "a\"b");
    }

    #[test]
    fn truncates_on_char_boundary() {
        let long = "a".repeat(62) + "éé";
        let t = truncate(Cow::Borrowed(long.as_str()));
        assert_eq!(t.len(), 62);
        assert_eq!(truncate(Cow::Owned("x".repeat(70))).len(), 63);
        assert_eq!(truncate(Cow::Borrowed("short")), "short");
    }

    #[test]
    fn unicode_escapes() {
        assert_eq!(decode_unicode(r"d\0061t\+000061", '\\').as_deref(), Some("data"));
        assert_eq!(decode_unicode("d!0061t!+000061", '!').as_deref(), Some("data"));
        assert_eq!(decode_unicode(r"a\\b", '\\').as_deref(), Some(r"a\b"));
        assert_eq!(decode_unicode("q\"\"q", '\\').as_deref(), Some("q\"q"));
        assert_eq!(decode_unicode(r"\D83D\DE00", '\\').as_deref(), Some("\u{1F600}"));
        for bad in [r"\00", r"\zzzz", r"\0000", r"\D83D", r"\D83Dx", r"\DE00", r"\+110000", "\\"] {
            assert_eq!(decode_unicode(bad, '\\'), None, "{bad:?}");
        }
    }
}
