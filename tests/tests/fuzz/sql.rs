//! The SQL target: `statements`, `classify`, `may_be_interesting`, `pins` and `unpins` on generated query texts.
//!
//! Three kinds of input: scripts built from a small grammar of the statements pgmux cares about, whose expected
//! split and classification are known exactly (the oracle); "token soup" from an alphabet that stresses every
//! quoting rule; and byte-level mutations of both. Whatever the input, spans must point into it on char
//! boundaries, a statement must classify the same alone as inside its script, and renaming a prepared statement
//! the way a worker does must leave the script's statements intact.

use std::fmt::Write as _;

use pgmux_proto::sql::{
    classify, ident_replacement, may_be_interesting, pins, quote_ident, quote_literal, statements, unpins, DiscardKind,
    Ident, Kind, Stmt, PIN_ADVISORY, PIN_HOLD_CURSOR, PIN_LOAD, PIN_TEMP,
};

use crate::gen::{mutate, Rng};

/// The name a worker gives a renamed SQL-level prepared statement (`pgmuxq_<session>_<worker>_<n>`).
const RENAMED: &str = "pgmuxq_12_3_45";

// ---------------------------------------------------------------------------------------------------------------
// rendering kinds
// ---------------------------------------------------------------------------------------------------------------

/// A kind as text, identifiers by value, with their spans relative to `base` when `spans` is set (to compare a
/// statement classified alone with the same statement inside its script).
fn describe(k: &Kind<'_>, base: usize, spans: bool) -> String {
    let id = |i: &Ident<'_>| {
        if spans {
            format!("{}@{}..{}", i.value, i.span.start.wrapping_sub(base), i.span.end.wrapping_sub(base))
        } else {
            i.value.to_string()
        }
    };
    let local = |l: bool| if l { " local" } else { "" };
    match k {
        Kind::Set { name, value, local: l } => format!("set {} = {value}{}", id(name), local(*l)),
        Kind::SetFromCurrent { name } => format!("set {} from current", id(name)),
        Kind::Reset { name } => format!("reset ={}", id(name)),
        Kind::ResetAll => "reset all".into(),
        Kind::Role { local: l } => format!("role{}", local(*l)),
        Kind::TransactionScoped => "transaction scoped".into(),
        Kind::Prepare { name, body } => format!("prepare {} as {body}", id(name)),
        Kind::Execute { name } => format!("execute {}", id(name)),
        Kind::Deallocate { name } => {
            format!("deallocate {}", name.as_ref().map_or("all".into(), |n| format!("={}", id(n))))
        }
        Kind::Discard(d) => format!("discard {d:?}"),
        Kind::CloseAll => "close all".into(),
        Kind::Listen { channel } => format!("listen {}", id(channel)),
        Kind::Unlisten { channel } => {
            format!("unlisten {}", channel.as_ref().map_or("*".into(), |n| format!("={}", id(n))))
        }
        Kind::Begin => "begin".into(),
        Kind::Commit => "commit".into(),
        Kind::Rollback => "rollback".into(),
        Kind::CallsSetConfig => "set_config".into(),
        Kind::Other => "other".into(),
    }
}

fn idents<'k, 'a>(k: &'k Kind<'a>) -> Vec<&'k Ident<'a>> {
    match k {
        Kind::Set { name, .. }
        | Kind::SetFromCurrent { name }
        | Kind::Reset { name }
        | Kind::Prepare { name, .. }
        | Kind::Execute { name } => vec![name],
        Kind::Listen { channel } => vec![channel],
        Kind::Deallocate { name: Some(n) } | Kind::Unlisten { channel: Some(n) } => vec![n],
        _ => vec![],
    }
}

/// The name a worker renames in a statement of this kind, if any.
fn renamed_ident<'k, 'a>(k: &'k Kind<'a>) -> Option<&'k Ident<'a>> {
    match k {
        Kind::Prepare { name, .. } | Kind::Execute { name } | Kind::Deallocate { name: Some(name) } => Some(name),
        _ => None,
    }
}

/// The server's identifier length cut: 63 bytes, on a char boundary.
fn truncate63(s: &str) -> &str {
    let mut cut = s.len().min(63);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

// ---------------------------------------------------------------------------------------------------------------
// the grammar with an oracle
// ---------------------------------------------------------------------------------------------------------------

/// Unquoted names that are no keyword any of the parsed statements treats specially.
const PLAIN_NAMES: &[&str] = &["p", "stmt1", "My_Stmt", "x$y", "é_nom", "ÄBC", "chan", "_u", "q9"];

/// An identifier spelled one of the ways the server accepts, and the name it stands for.
fn ident(rng: &mut Rng) -> (String, String) {
    match rng.below(6) {
        0 | 1 => {
            let w = if rng.one_in(10) { "abcdefghij".repeat(7) } else { rng.pick(PLAIN_NAMES).to_string() };
            let value = truncate63(&w.to_ascii_lowercase()).to_string();
            (w, value)
        }
        2 | 3 => {
            let v = name_value(rng);
            (quote_ident(&v), truncate63(&v).to_string())
        }
        _ => {
            let v = name_value(rng);
            (unicode_ident(rng, &v), truncate63(&v).to_string())
        }
    }
}

/// A non-empty name without NUL: anything a quoted identifier may hold.
fn name_value(rng: &mut Rng) -> String {
    let v = rng.cstr_text(12);
    if v.is_empty() {
        "n".into()
    } else if rng.one_in(8) {
        // Past 63 bytes with a multi-byte character across the cut.
        format!("{}é{v}", "a".repeat(62))
    } else {
        v
    }
}

/// `U&"..."` spelling `v`, each character as itself or as an escape (4 or 6 hex digits, or a UTF-16 surrogate
/// pair), with the default escape character or one chosen with UESCAPE.
fn unicode_ident(rng: &mut Rng, v: &str) -> String {
    let esc = if rng.one_in(2) { '\\' } else { rng.pick(&['!', '%', '#', '~']) };
    let mut body = String::new();
    for c in v.chars() {
        let cp = c as u32;
        match rng.below(4) {
            _ if c == esc => {
                body.push(esc);
                body.push(esc);
            }
            0 if c == '"' => body.push_str("\"\""),
            0 => body.push(c),
            1 if cp <= 0xffff => {
                let _ = write!(body, "{esc}{cp:04X}");
            }
            2 if cp > 0xffff => {
                let v = cp - 0x10000;
                let _ = write!(body, "{esc}{:04x}{esc}{:04X}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3ff));
            }
            _ => {
                let _ = write!(body, "{esc}+{cp:06X}");
            }
        }
    }
    if esc == '\\' {
        format!("U&\"{body}\"")
    } else {
        format!("U&\"{body}\" UESCAPE '{esc}'")
    }
}

/// Whitespace and comments the server skips between tokens; each contains a real separator.
const GAPS: &[&str] =
    &[" ", "  ", "\n", "\t", " /* c */ ", " /* a /* nested; */ b */ ", " -- ; line\n", "\r\n", "\u{0b}"];

fn gap(rng: &mut Rng) -> &'static str {
    if rng.one_in(3) {
        rng.pick(GAPS)
    } else {
        " "
    }
}

/// Values a SET may take: numbers, words, lists, and strings of every kind with semicolons inside.
fn set_value(rng: &mut Rng) -> Vec<String> {
    let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    match rng.below(8) {
        0 => t(&["1"]),
        1 => t(&["DEFAULT"]),
        2 => t(&["a", ",", "'b;c'"]),
        3 => t(&["E'it\\'s;'"]),
        4 => t(&["$v$;$v$"]),
        5 => t(&["U&'\\0041;'"]),
        _ => vec![quote_literal(&rng.cstr_text(10).replace("set_config", ""))],
    }
}

/// One statement as tokens, the kind it must get (as [`describe`] renders it), and the token index of its name.
fn statement(rng: &mut Rng) -> (Vec<String>, String) {
    let w = |s: &str| s.to_string();
    let (raw, value) = ident(rng);
    match rng.below(16) {
        0 | 1 => {
            let local = rng.one_in(3);
            let mut toks = vec![w("SET")];
            if local {
                toks.push(w("LOCAL"));
            } else if rng.one_in(3) {
                toks.push(w("SESSION"));
            }
            toks.push(raw);
            toks.push(w(if rng.one_in(2) { "=" } else { "TO" }));
            let val = set_value(rng);
            let rendered = val.join("\u{1}"); // joined with the gaps later; the marker is replaced below
            toks.extend(val);
            let want = if value.eq_ignore_ascii_case("role") || value.eq_ignore_ascii_case("session_authorization") {
                format!("role{}", if local { " local" } else { "" })
            } else {
                format!("set {value} = {rendered}{}", if local { " local" } else { "" })
            };
            (toks, want)
        }
        2 => {
            let want = if value.eq_ignore_ascii_case("role") || value.eq_ignore_ascii_case("session_authorization") {
                w("role")
            } else {
                format!("reset ={value}")
            };
            (vec![w("RESET"), raw], want)
        }
        3 | 4 => {
            let mut toks = vec![w("PREPARE"), raw];
            if rng.one_in(2) {
                toks.extend(["(", "int", ",", "text", ")"].map(w));
            }
            toks.push(w("AS"));
            let body = ["SELECT", "$1", ",", "';'"].map(w);
            let want = format!("prepare {value} as {}", body.join("\u{1}"));
            toks.extend(body);
            (toks, want)
        }
        5 => {
            let mut toks = vec![w("EXECUTE"), raw];
            if rng.one_in(2) {
                toks.extend(["(", "1", ",", "'a;'", ")"].map(w));
            }
            (toks, format!("execute {value}"))
        }
        6 => {
            let mut toks = match rng.below(3) {
                0 => vec![w("EXPLAIN"), w("ANALYZE"), w("EXECUTE")],
                1 => ["CREATE", "TABLE", "t", "AS", "EXECUTE"].map(w).to_vec(),
                _ => vec![w("EXPLAIN"), w("("), w("COSTS"), w("off"), w(")"), w("EXECUTE")],
            };
            toks.push(raw);
            (toks, format!("execute {value}"))
        }
        7 => {
            let mut toks = vec![w("DEALLOCATE")];
            if rng.one_in(2) {
                toks.push(w("PREPARE"));
            }
            toks.push(raw);
            (toks, format!("deallocate ={value}"))
        }
        8 => (vec![w("LISTEN"), raw], format!("listen {value}")),
        9 => match rng.below(2) {
            0 => (vec![w("UNLISTEN"), raw], format!("unlisten ={value}")),
            _ => (vec![w("UNLISTEN"), w("*")], w("unlisten *")),
        },
        10 => {
            let (word, kind) = rng.pick(&[
                ("ALL", DiscardKind::All),
                ("PLANS", DiscardKind::Plans),
                ("SEQUENCES", DiscardKind::Sequences),
                ("TEMP", DiscardKind::Temp),
                ("temporary", DiscardKind::Temp),
            ]);
            (vec![w("DISCARD"), w(word)], format!("discard {kind:?}"))
        }
        11 => {
            let (toks, want): (&[&str], &str) = rng.pick(&[
                (&["BEGIN"][..], "begin"),
                (&["START", "TRANSACTION"], "begin"),
                (&["COMMIT"], "commit"),
                (&["END"], "commit"),
                (&["ROLLBACK"], "rollback"),
                (&["ABORT"], "rollback"),
                (&["ROLLBACK", "TO", "SAVEPOINT", "s"], "other"),
                (&["CLOSE", "ALL"], "close all"),
                (&["RESET", "ALL"], "reset all"),
            ]);
            (toks.iter().map(|s| w(s)).collect(), w(want))
        }
        12 => (
            ["SELECT", "pg_catalog", ".", "set_config", "(", "'a'", ",", "'b'", ",", "false", ")"].map(w).to_vec(),
            w("set_config"),
        ),
        13 => (vec![w("DO"), w("$f$BEGIN; SET x = 1; END$f$")], w("other")),
        _ => {
            // Statement separators and keywords hidden in strings, identifiers and dollar quotes.
            let hidden = rng.pick(&[
                "'SET x = 1; RESET ALL'",
                "$q$ ; SET y $q$",
                "E'\\';SET z = 1'",
                "U&'\\0041;'",
                "\"weird;ident\"",
                "$a$ $b$ ; $a$",
                "B'101'",
            ]);
            (vec![w("SELECT"), w(hidden), w("AS"), w("c")], w("other"))
        }
    }
}

/// A script of 0 to 5 statements with known kinds, separated by semicolons and trivia. Returns the text and, per
/// statement, its exact text and the rendering of its kind.
fn script(rng: &mut Rng) -> (String, Vec<(String, String)>) {
    let mut sql = String::new();
    let mut want = Vec::new();
    if rng.one_in(2) {
        sql.push_str(gap(rng));
    }
    for i in 0..rng.below(6) {
        if i > 0 {
            sql.push_str(gap(rng));
            sql.push(';');
            if rng.one_in(4) {
                sql.push_str(" ;");
            }
            sql.push_str(gap(rng));
        }
        let (toks, kind) = statement(rng);
        let mut text = String::new();
        let mut gaps = Vec::new();
        for (j, t) in toks.iter().enumerate() {
            if j > 0 {
                let g = gap(rng);
                text.push_str(g);
                gaps.push(g);
            }
            text.push_str(t);
        }
        // Values and bodies in the expected rendering are source text: put the same gaps in.
        let mut kind_text = String::new();
        let mut parts = kind.split('\u{1}');
        if let Some(first) = parts.next() {
            kind_text.push_str(first);
        }
        let tail_gaps = &gaps[gaps.len().saturating_sub(kind.matches('\u{1}').count())..];
        for (part, g) in parts.zip(tail_gaps) {
            kind_text.push_str(g);
            kind_text.push_str(part);
        }
        sql.push_str(&text);
        want.push((text, kind_text));
    }
    if rng.one_in(2) {
        sql.push(';');
        sql.push_str(gap(rng));
    }
    (sql, want)
}

/// Fragments that stress every quoting and nesting rule when strung together at random.
const SOUP: &[&str] = &[
    "'",
    "\"",
    "$$",
    "$a$",
    "$1",
    "/*",
    "*/",
    "--",
    "\n",
    ";",
    "(",
    ")",
    ",",
    ".",
    "=",
    "*",
    "\\",
    "E'",
    "e'",
    "U&'",
    "U&\"",
    "u&\"",
    "UESCAPE ",
    "'!'",
    "\\0061",
    "\\+01F418",
    "\\D83D\\DE00",
    "!0041",
    "SET ",
    "LOCAL ",
    "SESSION ",
    "ROLE ",
    "TIME ZONE ",
    "TO ",
    "FROM CURRENT",
    "RESET ",
    "ALL",
    "PREPARE ",
    "AS ",
    "EXECUTE ",
    "EXPLAIN ",
    "ANALYZE ",
    "CREATE ",
    "TEMP ",
    "TABLE ",
    "ON COMMIT DROP ",
    "INTO ",
    "DECLARE ",
    "WITH HOLD ",
    "FOR ",
    "DEALLOCATE ",
    "DISCARD ",
    "CLOSE ",
    "LISTEN ",
    "UNLISTEN ",
    "BEGIN",
    "COMMIT",
    "ROLLBACK ",
    "LOAD ",
    "set_config",
    "pg_catalog.",
    "\"set_config\"",
    "pg_advisory_lock",
    "pg_advisory_unlock_all",
    "pg_temp.",
    "x",
    "é",
    "🐘",
    "中文",
    " ",
    "\t",
    "B'",
    "X'",
    "1.5",
    ".5",
    "::",
];

fn soup(rng: &mut Rng) -> String {
    (0..rng.len(40)).map(|_| rng.pick(SOUP)).collect()
}

/// Quoting helpers against the lexer: a quoted name or literal is one token whatever it holds, and reads back as
/// the value quoted.
fn check_quoting(rng: &mut Rng) {
    let v = name_value(rng);
    let listen = format!("LISTEN {}", quote_ident(&v));
    assert_eq!(describe(&classify(&listen), 0, false), format!("listen {}", truncate63(&v)), "{listen:?}");
    let lit = quote_literal(&rng.cstr_text(16));
    let set = format!("SET x = {lit}; SET y = 1");
    let got: Vec<String> = statements(&set).iter().map(|s| describe(&s.kind, 0, false)).collect();
    assert_eq!(got, [format!("set x = {lit}"), "set y = 1".to_string()], "{set:?}");
}

pub fn gen(rng: &mut Rng) -> Vec<u8> {
    check_quoting(rng);
    let text = if rng.one_in(3) {
        soup(rng)
    } else {
        let (sql, want) = script(rng);
        let stmts = statements(&sql);
        let got: Vec<(String, String)> =
            stmts.iter().map(|s| (sql[s.span.clone()].to_string(), describe(&s.kind, 0, false))).collect();
        assert_eq!(got, want, "script {sql:?}");
        sql
    };
    let mut bytes = text.into_bytes();
    if rng.one_in(100) && !bytes.is_empty() {
        // Long input made of one pattern, so that work super-linear in the length shows in the CPU-time limit
        // (64 KiB at a few ns per byte takes well under a millisecond; quadratic work takes minutes).
        let unit = bytes.clone();
        while bytes.len() < 64 * 1024 {
            bytes.extend_from_slice(&unit);
        }
    }
    if !rng.one_in(4) {
        let donor = "SET x = 1; PREPARE p AS SELECT $$;$$; /* */".as_bytes();
        if rng.one_in(2) {
            mutate(rng, &mut bytes, donor);
        } else {
            // Insert whole fragments at char boundaries, keeping the text valid UTF-8.
            let mut s = String::from_utf8_lossy(&bytes).into_owned();
            for _ in 0..1 + rng.below(3) {
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, rng.pick(SOUP));
            }
            bytes = s.into_bytes();
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------------------------
// properties of any input
// ---------------------------------------------------------------------------------------------------------------

/// Byte offset of `part` inside `whole`, if it is a subslice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    (p >= w && p + part.len() <= w + whole.len()).then(|| p - w)
}

fn check_stmt(sql: &str, s: &Stmt<'_>, last_end: usize) {
    let ctx = || format!("{sql:?}: {s:?}");
    assert!(s.span.start >= last_end && s.span.start < s.span.end && s.span.end <= sql.len(), "{}", ctx());
    assert!(sql.get(s.span.clone()).is_some(), "span not on char boundaries: {}", ctx());
    for i in idents(&s.kind) {
        assert!(i.span.start >= s.span.start && i.span.end <= s.span.end, "ident outside its statement: {}", ctx());
        assert_eq!(sql.get(i.span.clone()), Some(i.raw), "ident raw text: {}", ctx());
        assert!(!i.value.is_empty(), "empty name: {}", ctx());
    }
    if let Some(n) = renamed_ident(&s.kind) {
        assert!(n.value.len() <= 63, "name longer than the server keeps: {}", ctx());
    }
    let tail = match &s.kind {
        Kind::Set { value, .. } => Some(*value),
        Kind::Prepare { body, .. } => Some(*body),
        _ => None,
    };
    if let Some(t) = tail.filter(|&t| t != "DEFAULT" || offset_in(sql, t).is_some()) {
        // Values and bodies are the source text up to the statement's end (or "DEFAULT" for the keyword forms
        // that mean it without saying it).
        let at = offset_in(sql, t).unwrap_or_else(|| panic!("value is not a slice of the input: {}", ctx()));
        assert!(at >= s.span.start && at + t.len() == s.span.end && !t.is_empty(), "{}", ctx());
    }
}

pub fn check(b: &[u8]) {
    let sql = String::from_utf8_lossy(b);
    let sql = sql.as_ref();
    let stmts = statements(sql);
    let mut last_end = 0;
    for s in &stmts {
        check_stmt(sql, s, last_end);
        last_end = s.span.end;
    }
    let interesting = stmts.iter().any(|s| s.kind != Kind::Other);
    assert!(!interesting || may_be_interesting(sql), "may_be_interesting said no to {sql:?}: {stmts:?}");
    let alone = match stmts.as_slice() {
        [one] => describe(&one.kind, 0, true),
        _ => "other".to_string(),
    };
    assert_eq!(describe(&classify(sql), 0, true), alone, "classify disagrees with statements on {sql:?}");

    let all_bits = PIN_TEMP | PIN_HOLD_CURSOR | PIN_ADVISORY | PIN_LOAD;
    let (p, u) = (pins(sql), unpins(sql));
    assert_eq!(p & !all_bits, 0);
    assert_eq!(u & !all_bits, 0);
    let (mut p_each, mut u_each) = (0, 0);
    for (i, s) in stmts.iter().enumerate() {
        // A statement means the same cut out of its script, so pgmux may look at one alone.
        let text = &sql[s.span.clone()];
        let kind = classify(text);
        assert_eq!(
            describe(&kind, 0, true),
            describe(&s.kind, s.span.start, true),
            "statement {i} of {sql:?} classifies differently alone ({text:?})"
        );
        p_each |= pins(text);
        u_each |= unpins(text);
        // Each rename re-splits the whole text: a few per input keep the check linear on long inputs.
        if i < 8 {
            check_rename(sql, &stmts, i);
        }
    }
    assert_eq!(p, p_each, "pins of {sql:?} differ from its statements' pins");
    assert_eq!(u, u_each, "unpins of {sql:?} differ from its statements' unpins");
}

/// A worker renames the statement name of PREPARE/EXECUTE/DEALLOCATE by replacing the name's span with
/// `ident_replacement`. The result must split the same way and name the new statement; otherwise the upstream would
/// run something else. (This found `EXECUTE"a"` becoming `EXECUTEpgmuxq_...` with a bare replacement.)
fn check_rename(sql: &str, stmts: &[Stmt<'_>], i: usize) {
    let Some(name) = stmts.get(i).and_then(|s| renamed_ident(&s.kind)) else { return };
    let with = ident_replacement(sql, name.span.clone(), RENAMED);
    let renamed = format!("{}{with}{}", &sql[..name.span.start], &sql[name.span.end..]);
    let again = statements(&renamed);
    let before: Vec<String> = stmts.iter().map(|s| variant(&s.kind)).collect();
    let after: Vec<String> = again.iter().map(|s| variant(&s.kind)).collect();
    assert_eq!(after, before, "renaming statement {i} of {sql:?} gives {renamed:?}");
    let new_name = again.get(i).and_then(|s| renamed_ident(&s.kind)).map(|n| n.value.to_string());
    assert_eq!(new_name.as_deref(), Some(RENAMED), "renamed {sql:?} to {renamed:?}");
}

/// The kind without names or values.
fn variant(k: &Kind<'_>) -> String {
    let d = describe(k, 0, false);
    d.split(' ').next().unwrap_or_default().to_string()
}
