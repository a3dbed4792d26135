//! PgBouncer's connection strings: the values of `[databases]`, `[users]` and `[peers]` entries.
//!
//! `key=value` pairs separated by spaces, as PgBouncer's `cstr_get_pair` reads them: a key runs up to `=` or a
//! space, spaces may surround the `=`, a value runs up to the next space unless it starts with a single quote, in
//! which case it runs to the closing quote with `''` standing for one quote (`connect_query='SELECT ''x'''`). Empty
//! values (`dbname=` or `dbname=''`) are refused, as PgBouncer refuses them. Where PgBouncer would silently swallow
//! the character after a closing quote, pgmux asks for a space or the end of the string instead.

/// The pairs of `s`, in order; the message says what is wrong and where.
pub(crate) fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(['=', ' ', '\t']).unwrap_or(rest.len());
        let (key, after_key) = rest.split_at(key_end);
        let Some(after_eq) = after_key.trim_start().strip_prefix('=') else {
            return Err(format!("expected key=value, found {key:?} without ="));
        };
        if key.is_empty() {
            return Err(format!("missing key before = in {rest:?}"));
        }
        let after_eq = after_eq.trim_start();
        let (value, after_value) = match after_eq.strip_prefix('\'') {
            Some(quoted) => {
                let (value, after) = unquote(quoted).map_err(|e| format!("{key}: {e}"))?;
                if !(after.is_empty() || after.starts_with([' ', '\t'])) {
                    return Err(format!("{key}: expected a space after the closing quote, found {after:?}"));
                }
                (value, after)
            }
            None => {
                let end = after_eq.find([' ', '\t']).unwrap_or(after_eq.len());
                let (value, after) = after_eq.split_at(end);
                (value.to_string(), after)
            }
        };
        if value.is_empty() {
            return Err(format!("{key}: empty value (leave the key out instead)"));
        }
        out.push((key.to_string(), value));
        rest = after_value.trim_start();
    }
    Ok(out)
}

/// The body of a single-quoted value (after the opening quote): its text and what follows the closing quote.
fn unquote(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            out.push(c);
            continue;
        }
        if let Some((_, '\'')) = chars.peek() {
            chars.next();
            out.push('\'');
            continue;
        }
        return Ok((out, &s[i + 1..]));
    }
    Err("single-quoted value lacks its closing quote".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<(String, String)> {
        pairs(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn plain_and_quoted_values() {
        assert_eq!(ok(""), []);
        assert_eq!(ok("   "), []);
        assert_eq!(ok("host=h port=5432"), [pair("host", "h"), pair("port", "5432")]);
        assert_eq!(ok("  host = h\tport =5432  "), [pair("host", "h"), pair("port", "5432")]);
        assert_eq!(ok("dbname='my db' user=u"), [pair("dbname", "my db"), pair("user", "u")]);
        assert_eq!(ok("connect_query='SELECT ''x'''"), [pair("connect_query", "SELECT 'x'")]);
        assert_eq!(ok("password='a=b;c#d'"), [pair("password", "a=b;c#d")]);
        assert_eq!(ok("password=it's"), [pair("password", "it's")], "a quote inside an unquoted value is kept");
        assert_eq!(ok("application_name='é ü'"), [pair("application_name", "é ü")]);
        assert_eq!(ok("a=1 a=2"), [pair("a", "1"), pair("a", "2")], "the caller decides what a repeat means");
    }

    #[test]
    fn malformed_strings() {
        let cases = [
            ("host", "expected key=value, found \"host\" without ="),
            ("host h", "without ="),
            ("=h", "missing key before ="),
            ("host=", "host: empty value"),
            ("host=''", "host: empty value"),
            ("host='h", "host: single-quoted value lacks its closing quote"),
            ("dbname='a'b", "dbname: expected a space after the closing quote"),
            ("host=h port", "found \"port\" without ="),
        ];
        for (s, message) in cases {
            let e = pairs(s).expect_err(s);
            assert!(e.contains(message), "{s:?}: {e:?} lacks {message:?}");
        }
    }
}
