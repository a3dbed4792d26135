//! Backend (server to client) messages. Encoders build what pgmux itself
//! says to its clients (errors, authentication requests, synthesised
//! replies); decoders read the bodies of what an upstream PostgreSQL says to
//! pgmux during login and when it reports errors.

use crate::cursor::{Context, Cursor, DecodeError};
use crate::encode::{message, put_cstr, put_u32};

// ---------------------------------------------------------------- encoding

/// Fields of an ErrorResponse or NoticeResponse that pgmux cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localised severity ("FATAL", "ERROR", "WARNING", ...).
    pub severity: String,
    /// SQLSTATE, five characters.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

fn put_fields(out: &mut Vec<u8>, f: &ErrorFields) {
    // S is the (possibly localised) severity and V the fixed one; pgmux does
    // not localise, so both carry the same text, as PostgreSQL sends both.
    let mut field = |t: u8, v: &str| {
        out.push(t);
        put_cstr(out, v.as_bytes());
    };
    field(b'S', &f.severity);
    field(b'V', &f.severity);
    field(b'C', &f.code);
    field(b'M', &f.message);
    if let Some(d) = &f.detail {
        field(b'D', d);
    }
    if let Some(h) = &f.hint {
        field(b'H', h);
    }
    out.push(0);
}

pub fn error_response_full(out: &mut Vec<u8>, fields: &ErrorFields) {
    message(out, b'E', |b| put_fields(b, fields));
}

pub fn error_response(out: &mut Vec<u8>, severity: &str, code: &str, message_text: &str) {
    error_response_full(out, &simple_fields(severity, code, message_text));
}

pub fn notice_response_full(out: &mut Vec<u8>, fields: &ErrorFields) {
    message(out, b'N', |b| put_fields(b, fields));
}

pub fn notice_response(out: &mut Vec<u8>, severity: &str, code: &str, message_text: &str) {
    let f = simple_fields(severity, code, message_text);
    message(out, b'N', |b| put_fields(b, &f));
}

fn simple_fields(severity: &str, code: &str, message: &str) -> ErrorFields {
    ErrorFields {
        severity: severity.to_owned(),
        code: code.to_owned(),
        message: message.to_owned(),
        detail: None,
        hint: None,
    }
}

const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

pub fn auth_ok(out: &mut Vec<u8>) {
    message(out, b'R', |b| put_u32(b, AUTH_OK));
}

pub fn auth_cleartext(out: &mut Vec<u8>) {
    message(out, b'R', |b| put_u32(b, AUTH_CLEARTEXT));
}

pub fn auth_md5(out: &mut Vec<u8>, salt: [u8; 4]) {
    message(out, b'R', |b| {
        put_u32(b, AUTH_MD5);
        b.extend_from_slice(&salt);
    });
}

pub fn auth_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        put_u32(b, AUTH_SASL);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.push(0);
    });
}

pub fn auth_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'R', |b| {
        put_u32(b, AUTH_SASL_CONTINUE);
        b.extend_from_slice(data);
    });
}

pub fn auth_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'R', |b| {
        put_u32(b, AUTH_SASL_FINAL);
        b.extend_from_slice(data);
    });
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(out: &mut Vec<u8>, pid: u32, key: u32) {
    message(out, b'K', |b| {
        put_u32(b, pid);
        put_u32(b, key);
    });
}

/// `status` is b'I' (idle), b'T' (in transaction) or b'E' (failed transaction).
pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    message(out, b'Z', |b| b.push(status));
}

pub fn parse_complete(out: &mut Vec<u8>) {
    message(out, b'1', |_| {});
}

pub fn bind_complete(out: &mut Vec<u8>) {
    message(out, b'2', |_| {});
}

pub fn close_complete(out: &mut Vec<u8>) {
    message(out, b'3', |_| {});
}

pub fn no_data(out: &mut Vec<u8>) {
    message(out, b'n', |_| {});
}

pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// Type OIDs of the columns pgmux describes itself (the admin console's result sets).
pub const TEXT_OID: u32 = 25;
pub const INT4_OID: u32 = 23;
pub const INT8_OID: u32 = 20;
pub const NUMERIC_OID: u32 = 1700;

/// One column of a RowDescription pgmux builds: every field but name and type is "not from a table", text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub type_oid: u32,
}

impl Column<'_> {
    /// The type's length as PostgreSQL reports it: fixed for the integers, -1 (variable) otherwise.
    fn type_len(&self) -> i16 {
        match self.type_oid {
            INT4_OID => 4,
            INT8_OID => 8,
            _ => -1,
        }
    }
}

pub fn row_description(out: &mut Vec<u8>, columns: &[Column<'_>]) {
    message(out, b'T', |b| {
        b.extend_from_slice(&u16::try_from(columns.len()).unwrap_or(u16::MAX).to_be_bytes());
        for c in columns {
            put_cstr(b, c.name.as_bytes());
            put_u32(b, 0); // table oid
            b.extend_from_slice(&0u16.to_be_bytes()); // column number
            put_u32(b, c.type_oid);
            b.extend_from_slice(&c.type_len().to_be_bytes());
            put_u32(b, u32::MAX); // type modifier -1
            b.extend_from_slice(&0u16.to_be_bytes()); // text format
        }
    });
}

/// A DataRow of text values; `None` is SQL NULL.
pub fn data_row<S: AsRef<str>>(out: &mut Vec<u8>, values: &[Option<S>]) {
    message(out, b'D', |b| {
        b.extend_from_slice(&u16::try_from(values.len()).unwrap_or(u16::MAX).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    let v = v.as_ref().as_bytes();
                    put_u32(b, u32::try_from(v.len()).unwrap_or(u32::MAX));
                    b.extend_from_slice(v);
                }
                None => put_u32(b, u32::MAX),
            }
        }
    });
}

pub fn empty_query_response(out: &mut Vec<u8>) {
    message(out, b'I', |_| {});
}

/// Tells a client asking for a newer minor version (or sending `_pq_.`
/// options) what pgmux actually speaks.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest_minor: u32, unrecognized: &[String]) {
    message(out, b'v', |b| {
        put_u32(b, newest_minor);
        put_u32(b, u32::try_from(unrecognized.len()).unwrap_or(u32::MAX));
        for name in unrecognized {
            put_cstr(b, name.as_bytes());
        }
    });
}

// ---------------------------------------------------------------- decoding

/// An upstream server's Authentication* request ('R' body).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSSAPI, SSPI, ...: pgmux cannot answer these.
    Unsupported(u32),
}

/// Fails on trailing bytes: a body longer than its type allows means the
/// length word and the content disagree.
fn expect_end(cur: &Cursor<'_>, what: &'static str) -> Result<(), DecodeError> {
    if cur.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Invalid(what))
    }
}

pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, DecodeError> {
    let mut cur = Cursor::new(body);
    let code = cur.read_u32().ctx("authentication request code")?;
    let req = match code {
        AUTH_OK => AuthRequest::Ok,
        AUTH_CLEARTEXT => AuthRequest::Cleartext,
        AUTH_MD5 => {
            let salt = cur.read_bytes(4).ctx("AuthenticationMD5Password salt")?;
            let mut s = [0; 4];
            s.copy_from_slice(salt);
            AuthRequest::Md5 { salt: s }
        }
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = cur.read_cstr().ctx("AuthenticationSASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        AUTH_SASL_CONTINUE => return Ok(AuthRequest::SaslContinue(cur.rest())),
        AUTH_SASL_FINAL => return Ok(AuthRequest::SaslFinal(cur.rest())),
        other => return Ok(AuthRequest::Unsupported(other)),
    };
    expect_end(&cur, "trailing bytes after authentication request")?;
    Ok(req)
}

pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), DecodeError> {
    let mut cur = Cursor::new(body);
    let name = cur.read_cstr().ctx("ParameterStatus name")?;
    let value = cur.read_cstr().ctx("ParameterStatus value")?;
    expect_end(&cur, "trailing bytes after ParameterStatus")?;
    Ok((name, value))
}

/// (process id, secret key). Exactly 8 bytes: pgmux speaks protocol 3.0
/// upstream, where the key is 4 bytes.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(u32, u32), DecodeError> {
    let mut cur = Cursor::new(body);
    let pid = cur.read_u32().ctx("BackendKeyData process id")?;
    let key = cur.read_u32().ctx("BackendKeyData secret key")?;
    expect_end(&cur, "BackendKeyData length (longer than 8 bytes)")?;
    Ok((pid, key))
}

/// A DataRow's columns (`None` is NULL). The column count is checked against the bytes present before anything is
/// allocated, and every length against what remains.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, DecodeError> {
    let mut cur = Cursor::new(body);
    let count = usize::from(cur.read_u16().ctx("DataRow column count")?);
    // Each column takes at least its 4-byte length.
    if count.saturating_mul(4) > cur.remaining() {
        return Err(DecodeError::Invalid("DataRow column count (more than the message holds)"));
    }
    let mut cols = Vec::with_capacity(count);
    for _ in 0..count {
        let len = cur.read_i32().ctx("DataRow column length")?;
        if len == -1 {
            cols.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| DecodeError::Invalid("DataRow column length"))?;
        cols.push(Some(cur.read_bytes(len).ctx("DataRow column value")?));
    }
    expect_end(&cur, "trailing bytes after DataRow")?;
    Ok(cols)
}

pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, DecodeError> {
    let mut cur = Cursor::new(body);
    let status = cur.read_u8().ctx("ReadyForQuery status")?;
    expect_end(&cur, "trailing bytes after ReadyForQuery")?;
    match status {
        b'I' | b'T' | b'E' => Ok(status),
        _ => Err(DecodeError::Invalid("ReadyForQuery status")),
    }
}

/// Reads an ErrorResponse or NoticeResponse body. Values are converted
/// lossily: this feeds logs, and an upstream in an unexpected encoding
/// should still be reported rather than turned into a second error.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, DecodeError> {
    let mut cur = Cursor::new(body);
    let mut f = ErrorFields::default();
    let mut localized_severity = None;
    loop {
        let t = cur.read_u8().ctx("error field type")?;
        if t == 0 {
            break;
        }
        let v = String::from_utf8_lossy(cur.read_cstr_bytes().ctx("error field value")?).into_owned();
        match t {
            b'S' => localized_severity = Some(v),
            b'V' => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            b'D' => f.detail = Some(v),
            b'H' => f.hint = Some(v),
            // Position, context, schema, ...: not needed for logging.
            _ => {}
        }
    }
    expect_end(&cur, "trailing bytes after error fields")?;
    // Servers before 9.6 send only the localised S; prefer V when present.
    if f.severity.is_empty() {
        f.severity = localized_severity.unwrap_or_default();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_prefixes_fail, XorShift};

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn error_and_notice() {
        assert_eq!(enc(|o| error_response(o, "FATAL", "28P01", "bad")), b"E\0\0\0\x1fSFATAL\0VFATAL\0C28P01\0Mbad\0\0");
        assert_eq!(
            enc(|o| notice_response(o, "NOTICE", "00000", "hi")),
            b"N\0\0\0\x20SNOTICE\0VNOTICE\0C00000\0Mhi\0\0"
        );
        let full = ErrorFields {
            severity: "ERROR".into(),
            code: "08P01".into(),
            message: "m".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        };
        let bytes = enc(|o| error_response_full(o, &full));
        assert_eq!(bytes, b"E\0\0\0\x23SERROR\0VERROR\0C08P01\0Mm\0Dd\0Hh\0\0");
        assert_eq!(parse_error_fields(&bytes[5..]), Ok(full));
    }

    #[test]
    fn data_rows() {
        let row = enc(|o| data_row(o, &[Some("alice"), None, Some("")]));
        assert_eq!(parse_data_row(&row[5..]), Ok(vec![Some(&b"alice"[..]), None, Some(&b""[..])]));
        assert_prefixes_fail(&row[5..], |x| parse_data_row(x).is_ok());
        assert_eq!(parse_data_row(b"\0\0"), Ok(vec![]));
        assert!(parse_data_row(b"\0\x01\xff\xff\xff\xfe").is_err(), "negative length other than -1");
        assert!(parse_data_row(b"\xff\xff\0\0\0\0").is_err(), "count beyond the body");
        assert!(parse_data_row(b"\0\0x").is_err(), "trailing bytes");
    }

    #[test]
    fn embedded_nul_is_cut() {
        assert_eq!(enc(|o| command_complete(o, "SE\0LECT")), b"C\0\0\0\x07SE\0");
    }

    #[test]
    fn auth_messages() {
        assert_eq!(enc(auth_ok), b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(enc(auth_cleartext), b"R\0\0\0\x08\0\0\0\x03");
        assert_eq!(enc(|o| auth_md5(o, [1, 2, 3, 4])), b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
        assert_eq!(enc(|o| auth_sasl(o, &["SCRAM-SHA-256"])), b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(enc(|o| auth_sasl_continue(o, b"r=x")), b"R\0\0\0\x0b\0\0\0\x0br=x");
        assert_eq!(enc(|o| auth_sasl_final(o, b"v=y")), b"R\0\0\0\x0b\0\0\0\x0cv=y");
    }

    #[test]
    fn simple_messages() {
        assert_eq!(enc(|o| parameter_status(o, "a", "b")), b"S\0\0\0\x08a\0b\0");
        assert_eq!(enc(|o| backend_key_data(o, 1, 0x01020304)), b"K\0\0\0\x0c\0\0\0\x01\x01\x02\x03\x04");
        assert_eq!(enc(|o| ready_for_query(o, b'I')), b"Z\0\0\0\x05I");
        assert_eq!(enc(parse_complete), b"1\0\0\0\x04");
        assert_eq!(enc(bind_complete), b"2\0\0\0\x04");
        assert_eq!(enc(close_complete), b"3\0\0\0\x04");
        assert_eq!(enc(no_data), b"n\0\0\0\x04");
        assert_eq!(enc(empty_query_response), b"I\0\0\0\x04");
        assert_eq!(enc(|o| command_complete(o, "SELECT 1")), b"C\0\0\0\x0dSELECT 1\0");
        assert_eq!(
            enc(|o| negotiate_protocol_version(o, 0, &["_pq_.x".to_string()])),
            b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0"
        );
        // Several messages append back to back.
        let mut out = Vec::new();
        parse_complete(&mut out);
        bind_complete(&mut out);
        assert_eq!(out, b"1\0\0\0\x042\0\0\0\x04");
    }

    #[test]
    fn result_set_messages() {
        let cols = [Column { name: "a", type_oid: TEXT_OID }, Column { name: "n", type_oid: INT8_OID }];
        assert_eq!(
            enc(|o| row_description(o, &cols)),
            b"T\0\0\0\x2e\0\x02a\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0\
              n\0\0\0\0\0\0\0\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0"
        );
        assert_eq!(enc(|o| data_row(o, &[Some("x"), None])), b"D\0\0\0\x0f\0\x02\0\0\0\x01x\xff\xff\xff\xff");
        assert_eq!(enc(|o| data_row::<&str>(o, &[])), b"D\0\0\0\x06\0\0");
    }

    #[test]
    fn decode_auth_requests() {
        assert_eq!(parse_auth_request(b"\0\0\0\0"), Ok(AuthRequest::Ok));
        assert_eq!(parse_auth_request(b"\0\0\0\x03"), Ok(AuthRequest::Cleartext));
        let md5 = b"\0\0\0\x05abcd";
        assert_eq!(parse_auth_request(md5), Ok(AuthRequest::Md5 { salt: *b"abcd" }));
        assert_prefixes_fail(md5, |b| parse_auth_request(b).is_ok());
        let sasl = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        assert_eq!(
            parse_auth_request(sasl),
            Ok(AuthRequest::Sasl { mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] })
        );
        assert_prefixes_fail(sasl, |b| parse_auth_request(b).is_ok());
        assert_eq!(parse_auth_request(b"\0\0\0\x0bxyz"), Ok(AuthRequest::SaslContinue(b"xyz")));
        assert_eq!(parse_auth_request(b"\0\0\0\x0cxyz"), Ok(AuthRequest::SaslFinal(b"xyz")));
        assert_eq!(parse_auth_request(b"\0\0\0\x07"), Ok(AuthRequest::Unsupported(7)));
        assert_prefixes_fail(b"\0\0\0\x0c", |b| parse_auth_request(b).is_ok());
        // Lying lengths: more bytes than the request type carries.
        assert!(parse_auth_request(b"\0\0\0\0x").is_err());
        assert!(parse_auth_request(b"\0\0\0\x05abcde").is_err());
        assert!(parse_auth_request(b"\0\0\0\x0aA\0\0x").is_err());
    }

    #[test]
    fn decode_simple() {
        let ps = b"TimeZone\0UTC\0";
        assert_eq!(parse_parameter_status(ps), Ok(("TimeZone", "UTC")));
        assert_prefixes_fail(ps, |b| parse_parameter_status(b).is_ok());
        assert!(parse_parameter_status(b"a\0b\0c").is_err());

        let k = b"\0\0\x30\x39\xde\xad\xbe\xef";
        assert_eq!(parse_backend_key_data(k), Ok((12345, 0xdeadbeef)));
        assert_prefixes_fail(k, |b| parse_backend_key_data(b).is_ok());
        assert!(parse_backend_key_data(b"\0\0\0\x01\0\0\0\x02\0").is_err());

        for s in *b"ITE" {
            assert_eq!(parse_ready_for_query(&[s]), Ok(s));
        }
        assert_eq!(parse_ready_for_query(b"X"), Err(DecodeError::Invalid("ReadyForQuery status")));
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }

    #[test]
    fn decode_error_fields() {
        let body = b"SERREUR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0P15\0Fparse_relation.c\0\0";
        let f = parse_error_fields(body).unwrap();
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.code, "42P01");
        assert_eq!(f.message, "relation \"x\" does not exist");
        assert_eq!(f.detail, None);
        assert_prefixes_fail(body, |b| parse_error_fields(b).is_ok());
        // Old servers: only the localised severity.
        assert_eq!(parse_error_fields(b"SFATAL\0\0").unwrap().severity, "FATAL");
        // Non-UTF-8 text still decodes for logging.
        assert_eq!(parse_error_fields(b"M\xff\0\0").unwrap().message, "\u{fffd}");
        assert!(parse_error_fields(b"Mx\0\0junk").is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0xbacc);
        for _ in 0..20_000 {
            let buf = rng.buffer(48);
            let _ = parse_auth_request(&buf);
            let _ = parse_parameter_status(&buf);
            let _ = parse_backend_key_data(&buf);
            let _ = parse_ready_for_query(&buf);
            let _ = parse_error_fields(&buf);
            let _ = parse_data_row(&buf);
        }
    }
}
