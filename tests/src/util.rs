//! Small helpers shared by the fixtures and the tests: deadlines instead of
//! sleeps, free ports, temp dirs, and a raw-socket PostgreSQL client for
//! feeding pgmux bytes no real driver would send.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Read/write timeout of sockets from [`raw_connect`]. Long enough for a
/// loaded CI machine, short enough that a hung pooler fails the test.
pub const RAW_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest backend message [`read_backend_message`] accepts; anything bigger
/// from a pooler under test is a framing bug, not data.
const MAX_BACKEND_MESSAGE: usize = 64 << 20;

/// Polls `f` until it returns true; panics naming `what` once `deadline` has
/// passed. The poll interval grows from 2 ms to 50 ms so fast conditions are
/// seen quickly and slow ones do not burn a core.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if f() {
            return;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// released). Good enough for tests: the kernel hands out ports round-robin.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Creates a fresh directory `/tmp/<prefix>-<pid>-<n>-<nanos>`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = PathBuf::from(format!("/tmp/{prefix}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// The last `n` lines of a text file, or a note saying why there are none.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Opens a TCP connection to 127.0.0.1:`port` with [`RAW_IO_TIMEOUT`] on both
/// directions and Nagle off, so each `write_all` goes out as its own segment.
pub fn raw_connect(port: u16) -> TcpStream {
    let stream =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("raw connect to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(RAW_IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(RAW_IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A protocol 3.0 StartupMessage for `user` and `db`.
pub fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    startup_packet_with(&[("user", user), ("database", db)])
}

/// A protocol 3.0 StartupMessage with arbitrary parameters, in order.
pub fn startup_packet_with(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        push_cstr(&mut body, k);
        push_cstr(&mut body, v);
    }
    body.push(0);
    with_length(None, body)
}

/// The 8-byte SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    with_length(None, 80_877_103u32.to_be_bytes().to_vec())
}

/// A 16-byte CancelRequest.
pub fn cancel_request(pid: u32, secret: u32) -> Vec<u8> {
    let mut body = 80_877_102u32.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&secret.to_be_bytes());
    with_length(None, body)
}

/// A simple-protocol Query ('Q') message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, sql);
    with_length(Some(b'Q'), body)
}

/// A cleartext PasswordMessage ('p').
pub fn password_message(password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, password);
    with_length(Some(b'p'), body)
}

/// A Terminate ('X') message.
pub fn terminate_message() -> Vec<u8> {
    with_length(Some(b'X'), Vec::new())
}

/// Frames `body` as a message: optional type byte, then the big-endian
/// length counting itself.
pub fn with_length(tag: Option<u8>, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn push_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// Writes all of `bytes`, panicking on failure (the pooler closing on us is
/// reported by the following read, which is what tests assert on).
pub fn raw_send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap_or_else(|e| panic!("raw write of {} bytes: {e}", bytes.len()));
}

/// Reads one backend message: `(type, body without the length)`. Returns
/// `None` when the peer closed the connection (EOF or reset, also mid-message).
/// Panics on a read timeout, because that means the pooler neither answered
/// nor hung up.
pub fn read_backend_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    if !read_exact_or_eof(stream, &mut header) {
        return None;
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    assert!(
        (4..=MAX_BACKEND_MESSAGE).contains(&len),
        "backend message {:?} has impossible length {len}",
        header[0] as char
    );
    let mut body = vec![0u8; len - 4];
    if !read_exact_or_eof(stream, &mut body) {
        return None;
    }
    Some((header[0], body))
}

/// Reads messages until ReadyForQuery ('Z') and returns all of them, 'Z'
/// included; `None` if the connection closed first.
pub fn read_until_ready(stream: &mut TcpStream) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut messages = Vec::new();
    loop {
        let msg = read_backend_message(stream)?;
        let done = msg.0 == b'Z';
        messages.push(msg);
        if done {
            return Some(messages);
        }
    }
}

/// True once the peer has closed: reads until EOF/reset, discarding data.
/// Panics on timeout like [`read_backend_message`].
pub fn wait_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if is_hangup(&e) => return true,
            Err(e) if is_timeout(&e) => panic!("peer neither closed nor answered: {e}"),
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

fn read_exact_or_eof(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_hangup(&e) => return false,
            Err(e) if is_timeout(&e) => panic!(
                "timed out after {RAW_IO_TIMEOUT:?} reading a backend message ({filled}/{} bytes read)",
                buf.len()
            ),
            Err(e) => panic!("raw read: {e}"),
        }
    }
    true
}

fn is_hangup(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Half-closes our side, as a client that sent everything would.
pub fn raw_shutdown_write(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// The human-readable message (field 'M') of an ErrorResponse or
/// NoticeResponse body; empty if there is none.
pub fn error_message(body: &[u8]) -> String {
    error_field(body, b'M').unwrap_or_default()
}

/// Any field of an ErrorResponse/NoticeResponse body, e.g. `b'C'` for the
/// SQLSTATE code.
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if code == field {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    None
}

/// Logs in over TCP with a startup packet (trust auth) and reads to the first ReadyForQuery; panics on refusal.
pub fn raw_login(port: u16, user: &str, db: &str) -> TcpStream {
    let mut s = raw_connect(port);
    raw_send(&mut s, &startup_packet(user, db));
    let msgs = read_until_ready(&mut s).unwrap_or_else(|| panic!("pgmux closed a raw login to {db}"));
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("raw login to {db} refused: {}", error_message(body));
    }
    s
}

/// Sends a simple query and reads to ReadyForQuery; returns the transaction status byte. Panics on an error.
pub fn raw_query(s: &mut TcpStream, sql: &str) -> u8 {
    raw_send(s, &query_message(sql));
    let msgs = read_until_ready(s).unwrap_or_else(|| panic!("connection closed during {sql:?}"));
    if let Some((_, body)) = msgs.iter().find(|m| m.0 == b'E') {
        panic!("{sql:?} failed: {}", error_message(body));
    }
    msgs.last().and_then(|m| m.1.first().copied()).unwrap_or(0)
}

/// `(state, process group, comm)` of a process from /proc, or None when it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = tail.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_are_found() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0";
        assert_eq!(error_message(body), "password authentication failed");
        assert_eq!(error_field(body, b'C').as_deref(), Some("28P01"));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_message(b"SFATAL"), "");
    }

    #[test]
    fn startup_packet_is_framed() {
        let p = startup_packet("u", "d");
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()) as usize, p.len());
        assert_eq!(&p[4..8], &[0, 3, 0, 0]);
        assert!(p.ends_with(b"user\0u\0database\0d\0\0"));
    }
}
