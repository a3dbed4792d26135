//! Frontend (client to server) messages. Encoders build what pgmux sends
//! upstream when it acts as a client (login, health-check queries, Sync,
//! cancel); decoders read the bodies of what pgmux's own clients send, as
//! far as pgmux needs to look inside them (names of statements and portals,
//! authentication responses). Everything else is forwarded untouched.

use crate::cursor::{Context, Cursor, DecodeError};
use crate::encode::{message, patch_len, put_cstr, put_u32};
use crate::startup::{CANCEL_REQUEST_CODE, PROTOCOL_3_0};

// ---------------------------------------------------------------- encoding

/// StartupMessage for protocol 3.0 (untagged).
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    put_u32(out, PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(out, name.as_bytes());
        put_cstr(out, value.as_bytes());
    }
    out.push(0);
    patch_len(out, len_at);
}

/// PasswordMessage carrying a cleartext password or an md5 response.
pub fn password_message(out: &mut Vec<u8>, password: &[u8]) {
    message(out, b'p', |b| put_cstr(b, password));
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        put_u32(b, u32::try_from(data.len()).unwrap_or(u32::MAX));
        b.extend_from_slice(data);
    });
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'p', |b| b.extend_from_slice(data));
}

pub fn query(out: &mut Vec<u8>, sql: &str) {
    message(out, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

pub fn sync(out: &mut Vec<u8>) {
    message(out, b'S', |_| {});
}

pub fn flush(out: &mut Vec<u8>) {
    message(out, b'H', |_| {});
}

pub fn terminate(out: &mut Vec<u8>) {
    message(out, b'X', |_| {});
}

/// CancelRequest (untagged, sent on a fresh connection).
pub fn cancel_request(out: &mut Vec<u8>, pid: u32, key: u32) {
    put_u32(out, 16);
    put_u32(out, CANCEL_REQUEST_CODE);
    put_u32(out, pid);
    put_u32(out, key);
}

pub fn copy_fail(out: &mut Vec<u8>, message_text: &str) {
    message(out, b'f', |b| put_cstr(b, message_text.as_bytes()));
}

/// Execute: run `portal`, returning at most `max_rows` rows (0 = all).
pub fn execute(out: &mut Vec<u8>, portal: &str, max_rows: u32) {
    message(out, b'E', |b| {
        put_cstr(b, portal.as_bytes());
        put_u32(b, max_rows);
    });
}

/// Parse: prepare `query` as statement `name` (empty = unnamed); a type of 0 lets the server infer it.
pub fn parse(out: &mut Vec<u8>, name: &str, query: &str, param_types: &[u32]) {
    message(out, b'P', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, query.as_bytes());
        b.extend_from_slice(&u16::try_from(param_types.len()).unwrap_or(u16::MAX).to_be_bytes());
        for t in param_types.iter().take(usize::from(u16::MAX)) {
            put_u32(b, *t);
        }
    });
}

/// Bind with every parameter in text format (`None` is NULL) and every result column in text format. Values travel
/// as parameters, never inside the query text, so no value can change what the statement does.
pub fn bind_text(out: &mut Vec<u8>, portal: &str, statement: &str, params: &[Option<&[u8]>]) {
    message(out, b'B', |b| {
        put_cstr(b, portal.as_bytes());
        put_cstr(b, statement.as_bytes());
        // No parameter format codes: all text.
        b.extend_from_slice(&0u16.to_be_bytes());
        let params = params.get(..params.len().min(usize::from(u16::MAX))).unwrap_or_default();
        b.extend_from_slice(&u16::try_from(params.len()).unwrap_or(u16::MAX).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    put_u32(b, u32::try_from(v.len()).unwrap_or(u32::MAX));
                    b.extend_from_slice(v);
                }
                None => put_u32(b, u32::MAX),
            }
        }
        // No result format codes: all text.
        b.extend_from_slice(&0u16.to_be_bytes());
    });
}

// ---------------------------------------------------------------- decoding

/// Fails on trailing bytes: a body longer than its type allows means the
/// length word and the content disagree.
fn expect_end(cur: &Cursor<'_>, what: &'static str) -> Result<(), DecodeError> {
    if cur.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Invalid(what))
    }
}

/// PasswordMessage body: the password (or md5 response) without its NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], DecodeError> {
    let mut cur = Cursor::new(body);
    let pw = cur.read_cstr_bytes().ctx("PasswordMessage password")?;
    expect_end(&cur, "trailing bytes after PasswordMessage")?;
    Ok(pw)
}

/// SASLInitialResponse body: (mechanism, client-first-message).
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let mut cur = Cursor::new(body);
    let mechanism = cur.read_cstr().ctx("SASLInitialResponse mechanism")?;
    let len = cur.read_i32().ctx("SASLInitialResponse data length")?;
    let data = match len {
        // -1 means "no initial response", which SCRAM never uses but the
        // protocol allows; the mechanism code rejects the empty message.
        -1 => &[][..],
        n if n < 0 => return Err(DecodeError::Invalid("SASLInitialResponse data length")),
        n => {
            if n as usize != cur.remaining() {
                return Err(DecodeError::Invalid("SASLInitialResponse data length (does not match message)"));
            }
            cur.read_bytes(n as usize).ctx("SASLInitialResponse data")?
        }
    };
    expect_end(&cur, "trailing bytes after SASLInitialResponse")?;
    Ok((mechanism, data))
}

/// SASLResponse body: the mechanism data is the whole body.
pub fn parse_sasl_response(body: &[u8]) -> &[u8] {
    body
}

/// Query body: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, DecodeError> {
    let mut cur = Cursor::new(body);
    let sql = cur.read_cstr().ctx("Query text")?;
    expect_end(&cur, "trailing bytes after Query")?;
    Ok(sql)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Empty for the unnamed statement.
    pub name: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, DecodeError> {
    let mut cur = Cursor::new(body);
    let name = cur.read_cstr().ctx("Parse statement name")?;
    let query = cur.read_cstr().ctx("Parse query")?;
    let count = cur.read_i16().ctx("Parse parameter count")?;
    let count = usize::try_from(count).map_err(|_| DecodeError::Invalid("Parse parameter count"))?;
    // Check the count against the bytes present before allocating, so a
    // lying count cannot make us reserve memory.
    if cur.remaining() != count * 4 {
        return Err(DecodeError::Invalid("Parse parameter count (does not match message length)"));
    }
    let mut param_types = Vec::with_capacity(count);
    for _ in 0..count {
        param_types.push(cur.read_u32().ctx("Parse parameter type")?);
    }
    Ok(Parse { name, query, param_types })
}

#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Empty for the unnamed portal.
    pub portal: &'a str,
    pub statement: &'a str,
}

/// Only the two names: pgmux routes on them and forwards the parameter
/// values without looking.
pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, DecodeError> {
    let mut cur = Cursor::new(body);
    let portal = cur.read_cstr().ctx("Bind portal name")?;
    let statement = cur.read_cstr().ctx("Bind statement name")?;
    Ok(Bind { portal, statement })
}

fn parse_kind_and_name<'a>(
    body: &'a [u8],
    kind_what: &'static str,
    name_what: &'static str,
    trailing_what: &'static str,
) -> Result<(u8, &'a str), DecodeError> {
    let mut cur = Cursor::new(body);
    let kind = cur.read_u8().ctx(kind_what)?;
    if kind != b'S' && kind != b'P' {
        return Err(DecodeError::Invalid(kind_what));
    }
    let name = cur.read_cstr().ctx(name_what)?;
    expect_end(&cur, trailing_what)?;
    Ok((kind, name))
}

/// Describe body: (b'S' statement or b'P' portal, name).
pub fn parse_describe(body: &[u8]) -> Result<(u8, &str), DecodeError> {
    parse_kind_and_name(body, "Describe kind", "Describe name", "trailing bytes after Describe")
}

/// Close body: (b'S' statement or b'P' portal, name).
pub fn parse_close(body: &[u8]) -> Result<(u8, &str), DecodeError> {
    parse_kind_and_name(body, "Close kind", "Close name", "trailing bytes after Close")
}

/// Execute body: (portal, row limit; 0 means no limit).
pub fn parse_execute(body: &[u8]) -> Result<(&str, u32), DecodeError> {
    let mut cur = Cursor::new(body);
    let portal = cur.read_cstr().ctx("Execute portal name")?;
    let max_rows = cur.read_u32().ctx("Execute row limit")?;
    expect_end(&cur, "trailing bytes after Execute")?;
    Ok((portal, max_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{decode_startup, StartupPacket};
    use crate::testutil::{assert_prefixes_fail, XorShift};

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn encoders() {
        assert_eq!(enc(|o| startup_message(o, &[("user", "u")])), b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
        assert_eq!(enc(|o| password_message(o, b"pw")), b"p\0\0\0\x07pw\0");
        assert_eq!(
            enc(|o| sasl_initial_response(o, "SCRAM-SHA-256", b"n,,")),
            b"p\0\0\0\x19SCRAM-SHA-256\0\0\0\0\x03n,,"
        );
        assert_eq!(enc(|o| sasl_response(o, b"c=")), b"p\0\0\0\x06c=");
        assert_eq!(enc(|o| query(o, "SELECT 1")), b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(enc(sync), b"S\0\0\0\x04");
        assert_eq!(enc(flush), b"H\0\0\0\x04");
        assert_eq!(enc(terminate), b"X\0\0\0\x04");
        assert_eq!(enc(|o| cancel_request(o, 1, 2)), b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02");
        assert_eq!(enc(|o| copy_fail(o, "no")), b"f\0\0\0\x07no\0");
    }

    #[test]
    fn encoders_round_trip_through_decoders() {
        let s = enc(|o| startup_message(o, &[("user", "u"), ("database", "d")]));
        let StartupPacket::Startup(st) = decode_startup(&s).unwrap() else { panic!("not a startup") };
        assert_eq!((st.user(), st.database()), (Some("u"), Some("d")));
        let c = enc(|o| cancel_request(o, 7, 9));
        assert_eq!(decode_startup(&c), Ok(StartupPacket::Cancel { pid: 7, key: 9 }));
        let p = enc(|o| sasl_initial_response(o, "SCRAM-SHA-256", b"n,,n=,r=abc"));
        assert_eq!(parse_sasl_initial_response(&p[5..]), Ok(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..])));
    }

    #[test]
    fn password_and_sasl() {
        assert_eq!(parse_password(b"secret\0"), Ok(&b"secret"[..]));
        assert_prefixes_fail(b"secret\0", |b| parse_password(b).is_ok());
        assert!(parse_password(b"a\0b").is_err());

        let init = b"SCRAM-SHA-256\0\0\0\0\x03n,,";
        assert_eq!(parse_sasl_initial_response(init), Ok(("SCRAM-SHA-256", &b"n,,"[..])));
        assert_prefixes_fail(init, |b| parse_sasl_initial_response(b).is_ok());
        assert_eq!(parse_sasl_initial_response(b"M\0\xff\xff\xff\xff"), Ok(("M", &b""[..])));
        // Lying lengths in both directions, and negative ones.
        assert!(parse_sasl_initial_response(b"M\0\0\0\0\x04n,,").is_err());
        assert!(parse_sasl_initial_response(b"M\0\0\0\0\x02n,,").is_err());
        assert!(parse_sasl_initial_response(b"M\0\x80\0\0\0").is_err());
        assert!(parse_sasl_initial_response(b"M\0\xff\xff\xff\xffx").is_err());
        assert_eq!(parse_sasl_response(b"c=biws"), b"c=biws");
    }

    #[test]
    fn query_and_parse() {
        assert_eq!(parse_query(b"SELECT 1\0"), Ok("SELECT 1"));
        assert_prefixes_fail(b"SELECT 1\0", |b| parse_query(b).is_ok());
        assert!(parse_query(b"SELECT 1\0\0").is_err());

        let p = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        assert_eq!(parse_parse(p), Ok(Parse { name: "s1", query: "SELECT $1", param_types: vec![23] }));
        assert_prefixes_fail(p, |b| parse_parse(b).is_ok());
        assert_eq!(parse_parse(b"\0SELECT 1\0\0\0"), Ok(Parse { name: "", query: "SELECT 1", param_types: vec![] }));
        // Count larger than the data, smaller than the data, negative.
        assert!(parse_parse(b"\0q\0\x7f\xff\0\0\0\x17").is_err());
        assert!(parse_parse(b"\0q\0\0\0\0\0\0\x17").is_err());
        assert!(parse_parse(b"\0q\0\xff\xff").is_err());
        assert_eq!(parse_parse(b"\xff\0q\0\0\0"), Err(DecodeError::InvalidUtf8("Parse statement name")));
    }

    #[test]
    fn parse_and_bind_encoders() {
        let mut out = Vec::new();
        parse(&mut out, "", "SELECT $1", &[0]);
        assert_eq!(out, b"P\0\0\0\x15\0SELECT $1\0\0\x01\0\0\0\0");
        let p = parse_parse(&out[5..]).unwrap();
        assert_eq!((p.name, p.query, p.param_types), ("", "SELECT $1", vec![0]));
        let mut out = Vec::new();
        bind_text(&mut out, "", "", &[Some(b"al'ice"), None]);
        assert_eq!(out, b"B\0\0\0\x1a\0\0\0\0\0\x02\0\0\0\x06al'ice\xff\xff\xff\xff\0\0");
        assert_eq!(parse_bind(&out[5..]), Ok(Bind { portal: "", statement: "" }));
    }

    #[test]
    fn bind_describe_close_execute() {
        // Portal, statement, then parameter data pgmux does not interpret.
        let b = b"p1\0s1\0\0\0\0\0\0\0";
        assert_eq!(parse_bind(b), Ok(Bind { portal: "p1", statement: "s1" }));
        assert_prefixes_fail(b"p1\0s1\0", |x| parse_bind(x).is_ok());

        assert_eq!(parse_describe(b"Sst\0"), Ok((b'S', "st")));
        assert_eq!(parse_describe(b"P\0"), Ok((b'P', "")));
        assert_prefixes_fail(b"Sst\0", |x| parse_describe(x).is_ok());
        assert_eq!(parse_describe(b"Xst\0"), Err(DecodeError::Invalid("Describe kind")));
        assert!(parse_describe(b"Sst\0x").is_err());

        assert_eq!(parse_close(b"Pp\0"), Ok((b'P', "p")));
        assert_prefixes_fail(b"Pp\0", |x| parse_close(x).is_ok());
        assert_eq!(parse_close(b"Q\0"), Err(DecodeError::Invalid("Close kind")));

        let e = b"p\0\0\0\0\x0a";
        assert_eq!(parse_execute(e), Ok(("p", 10)));
        assert_prefixes_fail(e, |x| parse_execute(x).is_ok());
        assert!(parse_execute(b"p\0\0\0\0\x0a\0").is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0xf00d);
        for _ in 0..20_000 {
            let buf = rng.buffer(48);
            let _ = parse_password(&buf);
            let _ = parse_sasl_initial_response(&buf);
            let _ = parse_sasl_response(&buf);
            let _ = parse_query(&buf);
            let _ = parse_parse(&buf);
            let _ = parse_bind(&buf);
            let _ = parse_describe(&buf);
            let _ = parse_close(&buf);
            let _ = parse_execute(&buf);
        }
    }
}
