//! Inter-process targets: `Msg` (every message between supervisor, listeners and workers) and `SessionRecord`
//! (the state of a session that travels with its socket). A child that is compromised or buggy must not be able to
//! crash the supervisor with a bad message, so these decoders are held to the same standard as client input; and
//! because a record is re-encoded at every move, encode → decode must be the exact identity.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use pgmux_ipc::channel::MAX_MSG_LEN;
use pgmux_ipc::{Channel, IpcError, Msg, PreparedStatement, SessionRecord};

use crate::gen::{interesting_u32, mutate, Rng};

fn pairs(rng: &mut Rng, max: usize) -> Vec<(String, String)> {
    (0..rng.len(max)).map(|_| (rng.text(12), rng.text(24))).collect()
}

/// A record with every field populated at random: unicode and NULs in strings, empty and long lists, large
/// pending input, extreme integers.
pub fn record(rng: &mut Rng) -> SessionRecord {
    let int = |rng: &mut Rng| if rng.one_in(4) { interesting_u32(rng, 0) } else { rng.next_u64() as u32 };
    SessionRecord {
        session_id: if rng.one_in(4) { u64::MAX } else { rng.next_u64() },
        database: rng.text(16),
        user: rng.text(16),
        startup_params: pairs(rng, 6),
        cancel_pid: int(rng),
        cancel_key: int(rng),
        client_addr: rng.pick(&["127.0.0.1:51234", "[::1]:5000", "unix", ""]).to_string(),
        settings: pairs(rng, 8),
        prepared: (0..if rng.one_in(20) { 300 } else { rng.len(4) })
            .map(|_| PreparedStatement {
                name: rng.text(10),
                query: rng.text(60),
                param_types: (0..rng.len(70)).map(|_| rng.next_u64() as u32).collect(),
            })
            .collect(),
        flags: int(rng),
        pending_input: if rng.one_in(30) { vec![b'Q'; 100_000] } else { rng.bytes(200) },
        baseline: pairs(rng, 4),
        sql_prepared: (0..rng.len(4)).map(|_| (rng.text(8), rng.text(16), rng.text(40))).collect(),
        listens: (0..rng.len(4)).map(|_| rng.text(10)).collect(),
        moved_at_ns: rng.next_u64(),
        waiting_since_ns: rng.next_u64(),
        scram_client_key: if rng.one_in(2) { rng.bytes(32) } else { Vec::new() },
        auth_secret: if rng.one_in(2) { rng.text(100) } else { String::new() },
    }
}

fn encode_record(r: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode(&mut out);
    out
}

fn encode_msg(m: &Msg) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

/// The donor for splices: a small valid record, so splices carry plausible length words.
fn donor() -> Vec<u8> {
    let r = SessionRecord { database: "app".into(), user: "alice".into(), ..SessionRecord::default() };
    encode_record(&r)
}

pub fn gen_record(rng: &mut Rng) -> Vec<u8> {
    let r = record(rng);
    let mut buf = encode_record(&r);
    assert_eq!(SessionRecord::decode(&buf).as_ref(), Ok(&r), "record round trip ({} bytes)", buf.len());
    // Embedded in a larger message, the record says how much of it was its own.
    let mut longer = buf.clone();
    longer.extend_from_slice(b"tail");
    assert_eq!(SessionRecord::decode_prefix(&longer), Ok((r, buf.len())));
    if !rng.one_in(4) {
        mutate(rng, &mut buf, &donor());
    }
    buf
}

pub fn check_record(b: &[u8]) {
    match SessionRecord::decode(b) {
        // Canonical: no two encodings of one record, so whatever decodes re-encodes to the same bytes.
        Ok(r) => assert_eq!(encode_record(&r), b, "{r:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match SessionRecord::decode_prefix(b) {
        Ok((r, used)) => {
            assert!(used <= b.len());
            assert_eq!(encode_record(&r), &b[..used]);
            assert_eq!(SessionRecord::decode(b).is_ok(), used == b.len());
        }
        Err(e) => assert_eq!(SessionRecord::decode(b).err(), Some(e)),
    }
}

fn msg(rng: &mut Rng) -> Msg {
    match rng.below(11) {
        0 => Msg::Login { record: record(rng) },
        1 => Msg::CancelRequest { pid: rng.next_u64() as u32, key: rng.next_u64() as u32 },
        2 => Msg::Assign { record: record(rng) },
        3 => Msg::Cancel { session_id: rng.next_u64() },
        4 => Msg::Shutdown,
        5 => Msg::SessionClosed { session_id: rng.next_u64() },
        6 => Msg::WorkerStatus { upstream_up: rng.one_in(2), sessions: rng.next_u64() as u32 },
        7 => Msg::Migrate { record: record(rng) },
        8 => Msg::Drain,
        9 => Msg::SessionState { record: record(rng) },
        _ => Msg::Draining,
    }
}

pub fn gen_msg(rng: &mut Rng) -> Vec<u8> {
    let m = msg(rng);
    let mut buf = encode_msg(&m);
    assert_eq!(Msg::decode(&buf).as_ref(), Ok(&m), "{} round trip ({} bytes)", m.name(), buf.len());
    if !rng.one_in(4) {
        let mut d = vec![1];
        d.extend(donor());
        mutate(rng, &mut buf, &d);
    }
    buf
}

pub fn check_msg(b: &[u8]) {
    let decoded = Msg::decode(b);
    match &decoded {
        Ok(m) => assert_eq!(encode_msg(m), b, "{m:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // A quarter of the inputs also go through a real SOCK_SEQPACKET pair, with 0 to 2 fds attached: what the
    // receiving process gets must be exactly the decoded message, and only with the fds it declares.
    if b.len().is_multiple_of(4) {
        through_channel(b, b.len() / 4 % 3, &decoded);
    }
}

fn through_channel(b: &[u8], nfds: usize, decoded: &Result<Msg, pgmux_ipc::message::MessageError>) {
    let (tx, rx) = Channel::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
    let files: Vec<OwnedFd> = (0..nfds)
        .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap_or_else(|e| panic!("/dev/null: {e}"))))
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    match tx.send_encoded(b, &fds) {
        Ok(()) => assert!(!b.is_empty() && b.len() <= MAX_MSG_LEN),
        Err(IpcError::TooLarge(n)) => {
            assert!(n > MAX_MSG_LEN);
            return;
        }
        Err(e) => {
            assert!(b.is_empty(), "sending {} bytes: {e}", b.len());
            return;
        }
    }
    match (rx.recv(), decoded) {
        (Ok(Some((m, got))), Ok(want)) => {
            assert_eq!(&m, want);
            assert_eq!(got.len(), nfds);
            assert_eq!(m.fd_count(), nfds);
        }
        (Err(IpcError::FdCountMismatch { expected, got }), Ok(want)) => {
            assert_eq!((expected, got), (want.fd_count(), nfds));
        }
        (Err(IpcError::Decode(e)), Err(want)) => assert_eq!(&e, want),
        (got, want) => panic!("channel gave {got:?} for a payload that decodes to {want:?}"),
    }
}
