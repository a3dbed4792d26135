//! Checks shared by the robustness tests (`bad_input.rs`, `limits.rs`): a bounded wait for calls of the postgres
//! crate, which has no read timeout; the process family still intact after abuse; a normal login still working;
//! an ErrorResponse followed by EOF on a raw socket.

use std::io::Read;
use std::net::TcpStream;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::pgmux::Pgmux;
use crate::util::{
    error_field, error_message, query_message, raw_send, read_backend_message, read_until_ready, wait_closed,
};

/// Runs `f` on a helper thread and waits at most `limit` for it: the postgres crate has no read timeout, and a
/// hung pooler must fail the test, not hang it. (On a timeout the thread is left blocked; it ends when pgmux is
/// killed at the end of the test.)
pub fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{what}: no answer within {limit:?} (pgmux hung?)"),
    }
}

/// How long one query or login of a robustness test may take before pgmux counts as hung.
pub const QUERY_LIMIT: Duration = Duration::from_secs(15);

/// A normal login through pgmux and `SELECT 1`, bounded in time.
pub fn login_select_1(p: &Pgmux, db: &str, user: &str) {
    let password = p.config().password_of(user).unwrap_or("").to_string();
    let conn = p.conn_str(db, user, &password);
    let who = format!("login as {user}@{db} + SELECT 1");
    within(QUERY_LIMIT, &who.clone(), move || {
        let mut c = postgres::Client::connect(&conn, postgres::NoTls).unwrap_or_else(|e| panic!("{who}: {e:?}"));
        let one: i32 = c.query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
        assert_eq!(one, 1);
    });
}

/// Runs `sql` (one row expected) on a shared long-lived client, bounded in time.
pub fn on_client<T: Send + 'static>(
    c: &Arc<Mutex<postgres::Client>>,
    what: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let c = Arc::clone(c);
    within(QUERY_LIMIT, what, move || {
        let mut guard = c.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
}

/// The pgmux children at one point in time.
#[derive(Debug, Clone)]
pub struct Family {
    pub listeners: Vec<u32>,
    pub workers: Vec<u32>,
}

pub fn family(p: &Pgmux) -> Family {
    Family { listeners: p.children("pgmux-listener"), workers: p.children("pgmux-worker") }
}

/// State letter of /proc/<pid>/stat, None if the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, tail) = stat.rsplit_once(')')?;
    tail.split_whitespace().next()?.chars().next()
}

/// Supervisor alive, the same listeners, every worker of `before` still there (`exact`: and no other), and a
/// normal login as `user@db` runs `SELECT 1`.
pub fn assert_intact(p: &Pgmux, before: &Family, db: &str, user: &str, exact_workers: bool) {
    match proc_state(p.pid()) {
        Some('Z') | Some('X') | None => panic!("supervisor {} is gone", p.pid()),
        _ => {}
    }
    let now = family(p);
    assert_eq!(now.listeners, before.listeners, "listener processes changed (one died and was respawned?)");
    for w in &before.workers {
        assert!(
            now.workers.contains(w),
            "worker {w} is gone (workers before {:?}, now {:?})",
            before.workers,
            now.workers
        );
    }
    if exact_workers {
        assert_eq!(now.workers, before.workers, "worker set changed");
    }
    login_select_1(p, db, user);
}

/// Reads up to the first ErrorResponse (skipping NegotiateProtocolVersion/notices), then requires EOF. Returns
/// (SQLSTATE, message).
pub fn expect_error_then_eof(s: &mut TcpStream) -> (String, String) {
    let (code, msg) = loop {
        match read_backend_message(s) {
            Some((b'E', body)) => {
                let code = error_field(&body, b'C').unwrap_or_default();
                let msg = error_message(&body);
                break (code, msg);
            }
            Some((b'v', _)) | Some((b'N', _)) | Some((b'S', _)) => continue,
            Some((t, body)) => panic!("expected an ErrorResponse, got message {:?} ({} bytes)", t as char, body.len()),
            None => panic!("connection closed without an ErrorResponse"),
        }
    };
    assert!(!code.is_empty(), "ErrorResponse without a SQLSTATE");
    assert!(!msg.is_empty(), "ErrorResponse without a message");
    assert!(wait_closed(s), "connection not closed after the error");
    (code, msg)
}

/// [`expect_error_then_eof`] with the SQLSTATE `want_code` and a message mentioning each of `words`; returns the
/// message.
pub fn assert_error(s: &mut TcpStream, want_code: &str, words: &[&str]) -> String {
    let (code, msg) = expect_error_then_eof(s);
    eprintln!("    got {code}: {msg}");
    assert_eq!(code, want_code, "SQLSTATE (message {msg:?})");
    let lower = msg.to_lowercase();
    for w in words {
        assert!(lower.contains(&w.to_lowercase()), "error message {msg:?} does not mention {w:?}");
    }
    msg
}

/// The one-byte answer to an SSLRequest or GSSENCRequest.
pub fn read_byte(s: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap_or_else(|e| panic!("reading the one-byte SSL/GSS answer: {e}"));
    b[0]
}

/// Sends `SELECT 1` on a logged-in raw socket and checks the one row.
pub fn raw_select_1(s: &mut TcpStream) {
    raw_send(s, &query_message("SELECT 1"));
    let msgs = read_until_ready(s).expect("closed while answering SELECT 1");
    assert!(
        msgs.iter().all(|(t, _)| *t != b'E'),
        "SELECT 1 failed: {:?}",
        msgs.iter().filter(|(t, _)| *t == b'E').map(|(_, b)| error_message(b)).collect::<Vec<_>>()
    );
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("no DataRow for SELECT 1");
    // DataRow: int16 count, int32 len, bytes.
    assert_eq!(&row.1[..], &[0, 1, 0, 0, 0, 1, b'1']);
}
