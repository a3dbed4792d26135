//! Session settings: which startup parameters become settings, and the SQL that brings an upstream from the
//! settings it has to the ones a session expects.
//!
//! Names are kept lower-case (PostgreSQL's setting names are case-insensitive). A setting absent from a map means
//! the server default. The difference between two maps becomes one simple Query of `set_config`/`RESET` statements,
//! which runs as an implicit transaction: if one of them fails, none applies, so the upstream's state stays known.

use std::collections::HashMap;

/// Settings PostgreSQL reports with ParameterStatus that a client may change. Reported parameters outside this list
/// (server_version, is_superuser, session_authorization, ...) are facts about the server or the role, not settings.
pub const TRACKED_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "search_path",
];

pub fn is_tracked_reported(name: &str) -> bool {
    TRACKED_REPORTED.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Turn a client's startup parameters into settings: everything except the connection's identity, with
/// `options=-c name=value ...` expanded.
pub fn from_startup(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: &str| {
        let name = name.to_ascii_lowercase();
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value.to_string();
        } else {
            out.push((name, value.to_string()));
        }
    };
    for (name, value) in params {
        match name.to_ascii_lowercase().as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (n, v) in parse_options(value) {
                    put(&n, &v);
                }
            }
            _ => put(name, value),
        }
    }
    out
}

/// Parse libpq's `options` value: whitespace-separated switches, backslash escapes a character; `-c name=value`,
/// `-cname=value` and `--name=value` set a parameter. Other switches are ignored.
pub fn parse_options(s: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let assignment = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("-c").map(str::to_string)
        };
        if let Some((n, v)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            // `--name=value` allows dashes for underscores, as postgres does.
            out.push((n.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// The upstream already has exactly these settings (no allocation).
pub fn same(current: &HashMap<String, String>, wanted: &[(String, String)]) -> bool {
    current.len() == wanted.len() && wanted.iter().all(|(n, v)| current.get(n) == Some(v))
}

/// SQL that takes an upstream from `current` to `wanted`, or None when they already agree.
pub fn diff_sql(current: &HashMap<String, String>, wanted: &[(String, String)]) -> Option<String> {
    // The common case, checked without allocating: every session of the pool has the same settings.
    if same(current, wanted) {
        return None;
    }
    let mut sql = String::new();
    let want = |n: &str| wanted.iter().find(|(k, _)| k == n).map(|(_, v)| v);
    // Identity first: RESET SESSION AUTHORIZATION also resets the role, so when either differs both are reset and
    // then set again, session authorization before role.
    const IDENTITY: [&str; 2] = ["session_authorization", "role"];
    if IDENTITY.iter().any(|n| current.get(*n) != want(n)) {
        for n in IDENTITY {
            if current.contains_key(n) {
                sql.push_str("RESET ");
                push_ident_path(&mut sql, n);
                sql.push(';');
            }
        }
        for n in IDENTITY {
            if let Some(v) = want(n) {
                push_set_config(&mut sql, n, v);
            }
        }
    }
    for (name, value) in wanted {
        if IDENTITY.contains(&name.as_str()) {
            continue;
        }
        if current.get(name) != Some(value) {
            push_set_config(&mut sql, name, value);
        }
    }
    for name in current.keys() {
        if IDENTITY.contains(&name.as_str()) {
            continue;
        }
        if !wanted.iter().any(|(n, _)| n == name) {
            sql.push_str("RESET ");
            push_ident_path(&mut sql, name);
            sql.push(';');
        }
    }
    if sql.is_empty() {
        None
    } else {
        Some(sql)
    }
}

fn push_set_config(sql: &mut String, name: &str, value: &str) {
    sql.push_str("SELECT pg_catalog.set_config(");
    push_literal(sql, name);
    sql.push_str(", ");
    push_literal(sql, value);
    sql.push_str(", false);");
}

/// `SET name TO 'value'` for a setting (answered by a single CommandComplete, so it can be hidden in a Query).
pub fn set_statement(name: &str, value: &str) -> String {
    let mut sql = String::from("SET ");
    push_ident_path(&mut sql, name);
    sql.push_str(" TO ");
    push_literal(&mut sql, value);
    sql
}

/// A string literal that means the same whatever standard_conforming_strings is.
fn push_literal(out: &mut String, s: &str) {
    if s.contains('\\') {
        out.push_str("E'");
        for c in s.chars() {
            match c {
                '\'' => out.push_str("''"),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
    } else {
        out.push('\'');
        for c in s.chars() {
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
        }
    }
    out.push('\'');
}

/// A possibly dotted setting name (custom settings are `prefix.name`), each part quoted.
fn push_ident_path(out: &mut String, name: &str) {
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push('"');
        for c in part.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn startup_params_become_settings() {
        let got = from_startup(&s(&[
            ("user", "alice"),
            ("database", "appdb"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
            ("options", "-c search_path=a,b --statement-timeout=5s -cwork_mem=64kB -X"),
        ]));
        assert_eq!(
            got,
            s(&[
                ("application_name", "psql"),
                ("datestyle", "ISO"),
                ("search_path", "a,b"),
                ("statement_timeout", "5s"),
                ("work_mem", "64kB"),
            ])
        );
    }

    #[test]
    fn options_escapes() {
        assert_eq!(parse_options(r"-c application_name=a\ b"), s(&[("application_name", "a b")]));
        assert_eq!(parse_options("-c"), Vec::<(String, String)>::new());
        assert_eq!(parse_options("  "), Vec::<(String, String)>::new());
    }

    #[test]
    fn diff_is_empty_when_equal() {
        let mut cur = HashMap::new();
        cur.insert("application_name".to_string(), "x".to_string());
        assert_eq!(diff_sql(&cur, &s(&[("application_name", "x")])), None);
        assert_eq!(diff_sql(&HashMap::new(), &[]), None);
    }

    #[test]
    fn identity_changes_reset_both_then_set_in_order() {
        let mut cur = HashMap::new();
        cur.insert("role".to_string(), "bob".to_string());
        let sql = diff_sql(&cur, &[]).unwrap_or_default();
        assert_eq!(sql, "RESET \"role\";");
        let sql = diff_sql(&cur, &s(&[("role", "carol"), ("session_authorization", "alice")])).unwrap_or_default();
        assert_eq!(
            sql,
            "RESET \"role\";SELECT pg_catalog.set_config('session_authorization', 'alice', false);\
             SELECT pg_catalog.set_config('role', 'carol', false);"
        );
        assert_eq!(diff_sql(&cur, &s(&[("role", "bob")])), None);
        assert_eq!(set_statement("work_mem", "8MB"), "SET \"work_mem\" TO '8MB'");
    }

    #[test]
    fn diff_sets_and_resets() {
        let mut cur = HashMap::new();
        cur.insert("my.opt".to_string(), "1".to_string());
        let sql = diff_sql(&cur, &s(&[("application_name", "it's")])).unwrap_or_default();
        assert_eq!(sql, "SELECT pg_catalog.set_config('application_name', 'it''s', false);RESET \"my\".\"opt\";");
        let sql = diff_sql(&HashMap::new(), &s(&[("search_path", r"a\b")])).unwrap_or_default();
        assert_eq!(sql, r"SELECT pg_catalog.set_config('search_path', E'a\\b', false);");
    }
}
