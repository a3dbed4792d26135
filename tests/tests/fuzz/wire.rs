//! Wire-protocol targets: the untagged startup packet (what a listener reads first), tagged frontend messages
//! (framing and every body decoder a listener or worker applies to client bytes), and the backend bodies and SCRAM
//! messages pgmux reads while logging in upstream or verifying a client.

use pgmux_proto::auth::{ScramClient, ScramSecret, ScramServer};
use pgmux_proto::backend::{self, AuthRequest};
use pgmux_proto::frame::{self, peek_header, DEFAULT_MAX_MESSAGE_LEN, MAX_STARTUP_LEN};
use pgmux_proto::frontend;
use pgmux_proto::startup::{
    decode_startup, startup_packet_len, Startup, StartupError, StartupPacket, GSSENC_REQUEST_CODE, PROTOCOL_3_0,
    SSL_REQUEST_CODE,
};

use crate::gen::{fix_len, mutate, Rng};

/// Frames a body: tag, then a length word counting itself.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Mostly unmutated 1 time in 4, so the deep paths and round trips see valid input too.
fn maybe_mutate(rng: &mut Rng, buf: &mut Vec<u8>, donor: &[u8]) -> bool {
    if rng.one_in(4) {
        return false;
    }
    mutate(rng, buf, donor);
    true
}

// ---------------------------------------------------------------------------------------------------------------
// startup packet
// ---------------------------------------------------------------------------------------------------------------

/// Startup parameters as a client might send them: user and database usually, options with `-c`, unicode
/// values, repeated names, protocol extension options, and sometimes enough of them to pass the 10000-byte cap.
fn startup_params(rng: &mut Rng) -> Vec<(String, String)> {
    const NAMES: &[&str] = &[
        "user",
        "database",
        "options",
        "application_name",
        "client_encoding",
        "replication",
        "_pq_.compression",
        "_pq_.",
        "DateStyle",
        "search_path",
    ];
    let mut params = Vec::new();
    if !rng.one_in(8) {
        params.push(("user".to_string(), if rng.one_in(10) { String::new() } else { rng.cstr_text(12) }));
    }
    for _ in 0..rng.len(12) {
        let name = if rng.one_in(4) { rng.cstr_text(10) } else { rng.pick(NAMES).to_string() };
        if name.is_empty() {
            continue; // an empty name ends the list on the wire
        }
        let value = if rng.one_in(30) { "x".repeat(rng.below(12_000)) } else { rng.cstr_text(20) };
        params.push((name, value));
    }
    params
}

fn encode_startup(code: u32, params: &[(String, String)]) -> Vec<u8> {
    let refs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    frontend::startup_message(&mut out, &refs);
    out[4..8].copy_from_slice(&code.to_be_bytes());
    out
}

/// What decode_startup must say about a packet built from `code` and `params` (none of them special codes).
fn expected_startup(code: u32, params: &[(String, String)], len: usize) -> Result<Startup, StartupError> {
    if len > MAX_STARTUP_LEN {
        return Err(StartupError::TooLong(len as u32));
    }
    let (major, minor) = ((code >> 16) as u16, code as u16);
    if major != 3 {
        return Err(StartupError::UnsupportedVersion { major, minor });
    }
    let (options, params): (Vec<_>, Vec<_>) = params.iter().cloned().partition(|(n, _)| n.starts_with("_pq_."));
    let user = params.iter().rev().find(|(n, _)| n == "user").map(|(_, v)| v.as_str());
    if user.is_none_or(str::is_empty) {
        return Err(StartupError::MissingUser);
    }
    Ok(Startup { minor, params, protocol_options: options.into_iter().map(|(n, _)| n).collect() })
}

pub fn gen_startup(rng: &mut Rng) -> Vec<u8> {
    let mut packet = match rng.below(10) {
        0 => encode_startup(SSL_REQUEST_CODE, &[]).get(..8).unwrap_or_default().to_vec(),
        1 => encode_startup(GSSENC_REQUEST_CODE, &[]).get(..8).unwrap_or_default().to_vec(),
        2 => {
            let (pid, key) = (rng.next_u64() as u32, rng.next_u64() as u32);
            let mut c = Vec::new();
            frontend::cancel_request(&mut c, pid, key);
            assert_eq!(decode_startup(&c), Ok(StartupPacket::Cancel { pid, key }), "cancel request {c:02x?}");
            c
        }
        _ => {
            let code = match rng.below(6) {
                0 => PROTOCOL_3_0 + 2,
                1 => 0x0002_0000,
                2 => 0x0004_0000,
                3 => (rng.next_u64() as u32) & !0x04d2_0000, // never one of the 1234.56xx request codes
                _ => PROTOCOL_3_0,
            };
            let params = startup_params(rng);
            let p = encode_startup(code, &params);
            let want = expected_startup(code, &params, p.len()).map(StartupPacket::Startup);
            assert_eq!(decode_startup(&p), want, "startup packet {p:02x?}");
            p
        }
    };
    let mut donor = Vec::new();
    frontend::startup_message(&mut donor, &[("user", "alice"), ("database", "appdb"), ("options", "-c x=1")]);
    if maybe_mutate(rng, &mut packet, &donor) && rng.one_in(2) {
        fix_len(&mut packet, 0);
    }
    packet
}

pub fn check_startup(b: &[u8]) {
    let full = startup_packet_len(b);
    match &full {
        Ok(Some(n)) => {
            assert!((8..=MAX_STARTUP_LEN).contains(n), "accepted length {n}");
            assert_eq!(b.get(..4), Some(&(*n as u32).to_be_bytes()[..]));
        }
        Ok(None) => assert!(b.len() < 4, "asked for more with {} bytes buffered", b.len()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The listener calls startup_packet_len on whatever prefix has arrived: it must give the same verdict as soon
    // as the length word is there, and ask for more before.
    for cut in 0..b.len().min(6) {
        let early = startup_packet_len(&b[..cut]);
        if cut < 4 {
            assert_eq!(early, Ok(None), "verdict on {cut} bytes");
        } else {
            assert_eq!(early, full, "verdict on {cut} bytes");
        }
    }
    if let Ok(Some(n)) = full {
        if let Some(packet) = b.get(..n) {
            let _ = decode_startup(packet);
        }
    }
    match decode_startup(b) {
        Ok(StartupPacket::SslRequest) => assert_eq!(b, &[0, 0, 0, 8, 4, 210, 22, 47]),
        Ok(StartupPacket::GssEncRequest) => assert_eq!(b, &[0, 0, 0, 8, 4, 210, 22, 48]),
        Ok(StartupPacket::Cancel { pid, key }) => {
            let mut again = Vec::new();
            frontend::cancel_request(&mut again, pid, key);
            assert_eq!(again, b);
        }
        Ok(StartupPacket::Startup(s)) => {
            assert_eq!(full, Ok(Some(b.len())));
            assert!(s.user().is_some_and(|u| !u.is_empty()), "accepted without a user: {s:?}");
            assert!(s.database().is_some());
            for (n, v) in &s.params {
                assert!(!n.is_empty() && !n.contains('\0') && !v.contains('\0'), "{n:?}={v:?}");
                assert!(!n.starts_with("_pq_."));
            }
            // Without protocol options nothing is dropped: the packet re-encodes to the same bytes.
            if s.protocol_options.is_empty() {
                let code = PROTOCOL_3_0 | u32::from(s.minor);
                assert_eq!(encode_startup(code, &s.params), b, "re-encoding {s:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// frontend messages
// ---------------------------------------------------------------------------------------------------------------

const SQL_SNIPPETS: &[&str] = &[
    "SELECT 1",
    "SELECT $1::int, $2",
    "SET search_path = a, \"B\"",
    "PREPARE p AS SELECT 1; EXECUTE p",
    "DO $$BEGIN PERFORM set_config('x.y', '1', false); END$$",
    "SELECT E'\\'', U&\"d\\0061t\" UESCAPE '\\' /* /* nested */ */ -- c",
    "",
];

/// One valid client message (tag and body) after login, checked against its decoder where pgmux has one.
fn frontend_message(rng: &mut Rng) -> (u8, Vec<u8>) {
    let mut b = Vec::new();
    let name = |rng: &mut Rng| if rng.one_in(3) { String::new() } else { rng.cstr_text(10) };
    let sql = |rng: &mut Rng| {
        if rng.one_in(2) {
            rng.pick(SQL_SNIPPETS).to_string()
        } else {
            rng.cstr_text(40)
        }
    };
    let tag = match rng.below(15) {
        0 => {
            let q = sql(rng);
            cstr(&mut b, &q);
            assert_eq!(frontend::parse_query(&b), Ok(q.as_str()));
            b'Q'
        }
        1 => {
            let (n, q) = (name(rng), sql(rng));
            let types: Vec<u32> = (0..rng.len(20)).map(|_| rng.next_u64() as u32).collect();
            cstr(&mut b, &n);
            cstr(&mut b, &q);
            b.extend_from_slice(&(types.len() as i16).to_be_bytes());
            for t in &types {
                b.extend_from_slice(&t.to_be_bytes());
            }
            let p = frontend::parse_parse(&b).unwrap_or_else(|e| panic!("Parse {b:02x?}: {e}"));
            assert_eq!((p.name, p.query, &p.param_types), (n.as_str(), q.as_str(), &types));
            b'P'
        }
        2 => {
            let (portal, stmt) = (name(rng), name(rng));
            cstr(&mut b, &portal);
            cstr(&mut b, &stmt);
            let formats = rng.len(4);
            b.extend_from_slice(&(formats as i16).to_be_bytes());
            for _ in 0..formats {
                b.extend_from_slice(&(rng.below(2) as i16).to_be_bytes());
            }
            let params = rng.len(4);
            b.extend_from_slice(&(params as i16).to_be_bytes());
            for _ in 0..params {
                if rng.one_in(4) {
                    b.extend_from_slice(&(-1i32).to_be_bytes());
                } else {
                    let v = rng.bytes(16);
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(&v);
                }
            }
            b.extend_from_slice(&0i16.to_be_bytes());
            let bind = frontend::parse_bind(&b).unwrap_or_else(|e| panic!("Bind {b:02x?}: {e}"));
            assert_eq!((bind.portal, bind.statement), (portal.as_str(), stmt.as_str()));
            b'B'
        }
        3 | 4 => {
            let kind = if rng.one_in(2) { b'S' } else { b'P' };
            let n = name(rng);
            b.push(kind);
            cstr(&mut b, &n);
            let tag = if rng.one_in(2) { b'D' } else { b'C' };
            let got = if tag == b'D' { frontend::parse_describe(&b) } else { frontend::parse_close(&b) };
            assert_eq!(got, Ok((kind, n.as_str())));
            tag
        }
        5 => {
            let (portal, rows) = (name(rng), rng.next_u64() as u32);
            frontend::execute(&mut b, &portal, rows);
            b.drain(..5);
            assert_eq!(frontend::parse_execute(&b), Ok((portal.as_str(), rows)));
            b'E'
        }
        6 => b'S',
        7 => b'H',
        8 => b'X',
        9 => {
            b = rng.bytes(64);
            b'd'
        }
        10 => b'c',
        11 => {
            cstr(&mut b, &rng.cstr_text(20));
            b'f'
        }
        12 => {
            let pw = rng.cstr_text(20);
            frontend::password_message(&mut b, pw.as_bytes());
            b.drain(..5);
            assert_eq!(frontend::parse_password(&b), Ok(pw.as_bytes()));
            b'p'
        }
        13 => {
            let (mech, data) = (rng.cstr_text(14), rng.bytes(40));
            frontend::sasl_initial_response(&mut b, &mech, &data);
            b.drain(..5);
            assert_eq!(frontend::parse_sasl_initial_response(&b), Ok((mech.as_str(), data.as_slice())));
            b'p'
        }
        _ => {
            // FunctionCall: oid, argument formats, arguments, result format.
            b.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&4i32.to_be_bytes());
            b.extend_from_slice(&7u32.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b'F'
        }
    };
    (tag, b)
}

/// A stream of 1 to 8 client messages, as a worker reads it: sometimes one body mutated behind a correct length
/// word (the body decoders get garbage), sometimes the whole stream (framing gets garbage).
pub fn gen_frontend(rng: &mut Rng) -> Vec<u8> {
    let msgs: Vec<(u8, Vec<u8>)> = (0..1 + rng.below(8)).map(|_| frontend_message(rng)).collect();
    let mut donor = Vec::new();
    frontend::query(&mut donor, "SELECT 1");
    let stream = |msgs: &[(u8, Vec<u8>)]| -> Vec<u8> { msgs.iter().flat_map(|(t, b)| message(*t, b)).collect() };
    // Framing a valid stream gives back exactly the messages it was built from.
    let mut whole = stream(&msgs);
    let mut split = Vec::new();
    walk_frames(&whole, DEFAULT_MAX_MESSAGE_LEN, |t, body| split.push((t, body.to_vec())));
    assert_eq!(split, msgs, "framing of a valid stream {whole:02x?}");
    if rng.one_in(2) {
        let mut msgs = msgs;
        let i = rng.below(msgs.len());
        mutate(rng, &mut msgs[i].1, &donor);
        stream(&msgs)
    } else {
        maybe_mutate(rng, &mut whole, &donor);
        whole
    }
}

/// Splits `buf` into messages the way a worker does (header judged before the body is awaited) and hands each
/// whole one to `each`. Stops at the first bad header or at an incomplete message.
fn walk_frames(mut buf: &[u8], max: u32, mut each: impl FnMut(u8, &[u8])) {
    while let Some(h) = peek_header(buf) {
        assert_eq!(h.total_len(), h.len as usize + 1);
        if let Err(e) = frame::check_frontend(h, max) {
            assert!(!e.to_string().is_empty());
            return;
        }
        assert!(frame::is_frontend_tag(h.tag) && h.len >= 4 && h.len <= max, "{h:?} passed the check");
        let Some(whole) = buf.get(..h.total_len()) else { return };
        let body = &whole[frame::HEADER_LEN..];
        assert_eq!(body.len(), h.body_len());
        each(h.tag, body);
        buf = &buf[h.total_len()..];
    }
}

pub fn check_frontend(b: &[u8]) {
    // Every decoder on the raw bytes too: they must be total whatever they are given.
    decode_frontend_body(b);
    // The smallest max_packet_size pgmux accepts, and the default.
    walk_frames(b, 1024, |_, _| {});
    walk_frames(b, DEFAULT_MAX_MESSAGE_LEN, |_, body| decode_frontend_body(body));
}

/// Runs every frontend body decoder on `b`. Whatever one accepts must re-encode to exactly `b`: a decoder that
/// accepted more than one spelling of a message could let pgmux and PostgreSQL read different things.
fn decode_frontend_body(b: &[u8]) {
    if let Ok(q) = frontend::parse_query(b) {
        let mut again = Vec::new();
        cstr(&mut again, q);
        assert_eq!(again, b, "Query");
    }
    if let Ok(p) = frontend::parse_parse(b) {
        let mut again = Vec::new();
        cstr(&mut again, p.name);
        cstr(&mut again, p.query);
        again.extend_from_slice(&(p.param_types.len() as i16).to_be_bytes());
        for t in &p.param_types {
            again.extend_from_slice(&t.to_be_bytes());
        }
        assert_eq!(again, b, "Parse {p:?}");
    }
    if let Ok(bind) = frontend::parse_bind(b) {
        let mut head = Vec::new();
        cstr(&mut head, bind.portal);
        cstr(&mut head, bind.statement);
        assert!(b.starts_with(&head), "Bind {bind:?}");
    }
    for (what, got) in [("Describe", frontend::parse_describe(b)), ("Close", frontend::parse_close(b))] {
        if let Ok((kind, name)) = got {
            assert!(kind == b'S' || kind == b'P');
            let mut again = vec![kind];
            cstr(&mut again, name);
            assert_eq!(again, b, "{what}");
        }
    }
    if let Ok((portal, rows)) = frontend::parse_execute(b) {
        let mut again = Vec::new();
        frontend::execute(&mut again, portal, rows);
        assert_eq!(&again[5..], b, "Execute");
    }
    if let Ok(pw) = frontend::parse_password(b) {
        assert!(!pw.contains(&0));
        let mut again = pw.to_vec();
        again.push(0);
        assert_eq!(again, b, "PasswordMessage");
    }
    if let Ok((mech, data)) = frontend::parse_sasl_initial_response(b) {
        let mut again = Vec::new();
        frontend::sasl_initial_response(&mut again, mech, data);
        let mut absent = Vec::new();
        cstr(&mut absent, mech);
        absent.extend_from_slice(&[0xff; 4]);
        // -1 ("no initial response") decodes as empty data, the one other spelling.
        assert!(&again[5..] == b || (data.is_empty() && absent == b), "SASLInitialResponse {mech:?} {data:02x?}");
    }
    assert_eq!(frontend::parse_sasl_response(b), b);
}

// ---------------------------------------------------------------------------------------------------------------
// backend bodies and SCRAM
// ---------------------------------------------------------------------------------------------------------------

/// The password and secret of the SCRAM cases; few iterations keep a case cheap (the count is not what is tested).
const SCRAM_PASSWORD: &str = "pencil";

fn scram_secret() -> ScramSecret {
    ScramSecret::from_password(SCRAM_PASSWORD, b"0123456789abcdef", 2)
}

/// One valid backend message, checked against its decoder.
fn backend_message(rng: &mut Rng) -> Vec<u8> {
    let mut m = Vec::new();
    match rng.below(9) {
        0 => {
            backend::auth_ok(&mut m);
            assert_eq!(backend::parse_auth_request(&m[5..]), Ok(AuthRequest::Ok));
        }
        1 => {
            let salt = (rng.next_u64() as u32).to_be_bytes();
            backend::auth_md5(&mut m, salt);
            assert_eq!(backend::parse_auth_request(&m[5..]), Ok(AuthRequest::Md5 { salt }));
        }
        2 => {
            let mechs: Vec<String> = (0..rng.len(3)).map(|_| rng.cstr_text(14)).filter(|s| !s.is_empty()).collect();
            let refs: Vec<&str> = mechs.iter().map(String::as_str).collect();
            backend::auth_sasl(&mut m, &refs);
            assert_eq!(backend::parse_auth_request(&m[5..]), Ok(AuthRequest::Sasl { mechanisms: refs }));
        }
        3 => {
            let data = rng.bytes(40);
            backend::auth_sasl_continue(&mut m, &data);
            assert_eq!(backend::parse_auth_request(&m[5..]), Ok(AuthRequest::SaslContinue(&data)));
        }
        4 => {
            let (n, v) = (rng.cstr_text(12), rng.cstr_text(20));
            backend::parameter_status(&mut m, &n, &v);
            assert_eq!(backend::parse_parameter_status(&m[5..]), Ok((n.as_str(), v.as_str())));
        }
        5 => {
            let (pid, key) = (rng.next_u64() as u32, rng.next_u64() as u32);
            backend::backend_key_data(&mut m, pid, key);
            assert_eq!(backend::parse_backend_key_data(&m[5..]), Ok((pid, key)));
        }
        6 => {
            let status = rng.pick(b"ITE");
            backend::ready_for_query(&mut m, status);
            assert_eq!(backend::parse_ready_for_query(&m[5..]), Ok(status));
        }
        _ => {
            let (sev, code, msg) = (rng.cstr_text(8), rng.cstr_text(5), rng.cstr_text(40));
            backend::error_response(&mut m, &sev, &code, &msg);
            let f = backend::parse_error_fields(&m[5..]).unwrap_or_else(|e| panic!("ErrorResponse {m:02x?}: {e}"));
            assert_eq!((f.severity, f.code, f.message), (sev, code, msg));
        }
    }
    m
}

/// A full SCRAM exchange with pgmux's client and server sides must succeed; the same exchange with the client's
/// final message changed in any way must not (it is all signed). Returns the client-first message and the final
/// one, for the byte-level check.
fn scram_exchange(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut server = ScramServer::new(scram_secret());
    let mut client = ScramClient::new(SCRAM_PASSWORD.as_bytes());
    let first = client.message().to_vec();
    let server_first = server.client_first(&first).unwrap_or_else(|e| panic!("client-first {first:02x?}: {e}"));
    client.update(&server_first).unwrap_or_else(|e| panic!("server-first {server_first:02x?}: {e}"));
    let fin = client.message().to_vec();
    let mut tampered = fin.clone();
    mutate(rng, &mut tampered, &first);
    if tampered != fin {
        let mut other = ScramServer::new(scram_secret());
        let reply = other.client_first(&first).unwrap_or_else(|e| panic!("client-first again: {e}"));
        // The nonce differs per exchange: splice this exchange's nonce into the tampered message's place so that
        // only the mutation can make it fail.
        let old_nonce = nonce_of(&server_first);
        let new_nonce = nonce_of(&reply);
        let tampered_here = replace_bytes(&tampered, old_nonce, new_nonce);
        let fin_here = replace_bytes(&fin, old_nonce, new_nonce);
        if tampered_here != fin_here {
            assert!(
                other.client_final(&tampered_here).is_err() && other.client_key().is_none(),
                "a tampered client-final message was accepted: {:?}",
                String::from_utf8_lossy(&tampered_here)
            );
        }
    }
    let server_final = server.client_final(&fin).unwrap_or_else(|e| panic!("client-final {fin:02x?}: {e}"));
    client.finish(&server_final).unwrap_or_else(|e| panic!("server-final {server_final:02x?}: {e}"));
    assert!(server.client_key().is_some());
    (first, fin)
}

/// The `r=` value of a server-first message.
fn nonce_of(server_first: &[u8]) -> &[u8] {
    let body = server_first.strip_prefix(b"r=").unwrap_or_default();
    let end = body.iter().position(|&c| c == b',').unwrap_or(body.len());
    &body[..end]
}

fn replace_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match haystack.windows(from.len().max(1)).position(|w| w == from) {
        Some(i) if !from.is_empty() => [&haystack[..i], to, &haystack[i + from.len()..]].concat(),
        _ => haystack.to_vec(),
    }
}

/// Selector byte 0: a stream of backend messages. Selector 1: two SCRAM messages, each after a u32 length.
pub fn gen_backend_or_scram(rng: &mut Rng) -> Vec<u8> {
    let mut out;
    if rng.one_in(3) {
        let (first, fin) = scram_exchange(rng);
        out = vec![1];
        for m in [&first, &fin] {
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
    } else {
        out = vec![0];
        for _ in 0..1 + rng.below(4) {
            out.extend(backend_message(rng));
        }
    }
    let donor = b"r=abc,s=c2FsdA==,i=4096";
    maybe_mutate(rng, &mut out, donor);
    out
}

pub fn check_backend_or_scram(b: &[u8]) {
    match b.split_first() {
        Some((1, rest)) => check_scram(rest),
        Some((_, rest)) => check_backend(rest),
        None => {}
    }
}

fn check_backend(mut buf: &[u8]) {
    while let Some(h) = peek_header(buf) {
        if frame::check_backend(h, DEFAULT_MAX_MESSAGE_LEN).is_err() {
            break;
        }
        let Some(whole) = buf.get(..h.total_len()) else { break };
        let body = &whole[frame::HEADER_LEN..];
        decode_backend_body(body);
        buf = &buf[h.total_len()..];
    }
    decode_backend_body(buf);
}

fn decode_backend_body(b: &[u8]) {
    if let Ok(req) = backend::parse_auth_request(b) {
        match req {
            AuthRequest::Ok | AuthRequest::Cleartext => assert_eq!(b.len(), 4),
            AuthRequest::Md5 { .. } => assert_eq!(b.len(), 8),
            AuthRequest::Sasl { mechanisms } => assert!(mechanisms.iter().all(|m| !m.is_empty())),
            AuthRequest::SaslContinue(d) | AuthRequest::SaslFinal(d) => assert_eq!(d, &b[4..]),
            AuthRequest::Unsupported(code) => assert_eq!(b.get(..4), Some(&code.to_be_bytes()[..])),
        }
    }
    if let Ok((n, v)) = backend::parse_parameter_status(b) {
        assert_eq!([n.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat(), b);
    }
    if backend::parse_backend_key_data(b).is_ok() {
        assert_eq!(b.len(), 8);
    }
    if let Ok(status) = backend::parse_ready_for_query(b) {
        assert_eq!(b, [status]);
    }
    let _ = backend::parse_error_fields(b);
}

/// Arbitrary client-first and client-final messages against pgmux's SCRAM server: never a panic, and never a
/// success, since the final message cannot know the server's random nonce.
fn check_scram(b: &[u8]) {
    let take = |b: &mut &[u8]| -> Vec<u8> {
        let n = b.get(..4).map_or(0, |l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        let rest = b.get(4..).unwrap_or_default();
        let (head, tail) = rest.split_at(n.min(rest.len()));
        *b = tail;
        head.to_vec()
    };
    let mut rest = b;
    let first = take(&mut rest);
    let fin = take(&mut rest);
    let mut server = ScramServer::new(scram_secret());
    match server.client_first(&first) {
        Ok(reply) => {
            let reply = String::from_utf8(reply).unwrap_or_else(|e| panic!("server-first is not UTF-8: {e}"));
            assert!(reply.starts_with("r=") && reply.contains(",s=") && reply.contains(",i=2"), "{reply}");
            assert!(server.client_final(&fin).is_err(), "a client-final without the server's nonce was accepted");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(server.client_final(&fin).is_err(), "client-final accepted after a failed client-first");
        }
    }
    assert!(server.client_key().is_none());
    // The byte paths the listener takes from a SASL message to the SCRAM server.
    let _ = frontend::parse_sasl_initial_response(b);
    let _ = ScramSecret::parse(&String::from_utf8_lossy(b));
}
