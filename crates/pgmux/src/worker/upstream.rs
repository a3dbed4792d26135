//! The worker's one connection to PostgreSQL: connecting, logging in as a client (trust, cleartext, md5,
//! SCRAM-SHA-256), and sending CancelRequests for it.
//!
//! Connecting and logging in block the worker, bounded by `server_connect_timeout`: a worker without an upstream has
//! nothing else useful to do, and the sessions waiting for it stay queued in the kernel meanwhile. Once logged in,
//! the socket turns non-blocking and the event loop owns it.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgmux_proto::auth::{md5_salted_response, ScramClient, ScramError, ScramKeyClient, ScramSecret};
use pgmux_proto::backend::{self as be, AuthRequest};
use pgmux_proto::frame;
use pgmux_proto::frontend as fe;

use crate::net::{Conn, ReadOutcome};

/// Prepared statements one upstream keeps before the least recently used are closed.
const STATEMENT_CACHE: usize = 1000;

/// Where PostgreSQL listens.
#[derive(Debug, Clone)]
pub enum Address {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Address {
    /// `host` starting with '/' is a socket directory, as in libpq and PgBouncer.
    pub fn new(host: &str, port: u16) -> Address {
        if host.starts_with('/') {
            Address::Unix(PathBuf::from(host).join(format!(".s.PGSQL.{port}")))
        } else {
            Address::Tcp(host.to_string(), port)
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(h, p) => write!(f, "{h}:{p}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The password pgmux logs in with, as it was configured.
#[derive(Debug, Clone)]
pub enum Credential {
    None,
    Plain(String),
    /// "md5" + hex: enough for md5 authentication, not for cleartext or SCRAM.
    Md5(String),
    /// A SCRAM secret from auth_file, and (once a client of this user has logged in with SCRAM) that client's
    /// ClientKey: enough for SCRAM-SHA-256 upstream, as PgBouncer does it.
    Scram {
        secret: ScramSecret,
        client_key: Option<[u8; 32]>,
    },
}

impl Credential {
    /// What a secret `auth_query` returned (carried in a session's record) lets pgmux log in with: an md5 hash
    /// answers md5, a password anything, a SCRAM secret SCRAM together with the ClientKey of that session's own SCRAM
    /// login (`client_key`, 32 bytes, or empty). A SCRAM secret that does not parse gives nothing.
    pub fn from_lookup(secret: &str, client_key: &[u8]) -> Credential {
        match pgmux_config::Secret::from_stored(secret.to_string()) {
            Ok(pgmux_config::Secret::Plain(p)) => Credential::Plain(p),
            Ok(pgmux_config::Secret::Md5(h)) => Credential::Md5(h),
            Ok(pgmux_config::Secret::Scram(text)) => match ScramSecret::parse(&text) {
                Some(secret) => Credential::Scram { secret, client_key: <[u8; 32]>::try_from(client_key).ok() },
                None => Credential::None,
            },
            Err(_) => Credential::None,
        }
    }

    /// Whether both hold the same secret (a SCRAM ClientKey aside).
    pub fn same_secret(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::None, Credential::None) => true,
            (Credential::Plain(a), Credential::Plain(b)) | (Credential::Md5(a), Credential::Md5(b)) => a == b,
            (Credential::Scram { secret: a, .. }, Credential::Scram { secret: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// Either side of a SCRAM exchange pgmux can run as a client.
enum ScramLogin {
    Password(ScramClient),
    Keys(ScramKeyClient),
}

impl ScramLogin {
    fn message(&self) -> &[u8] {
        match self {
            ScramLogin::Password(c) => c.message(),
            ScramLogin::Keys(c) => c.message(),
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<(), ScramError> {
        match self {
            ScramLogin::Password(c) => c.update(data),
            ScramLogin::Keys(c) => c.update(data),
        }
    }

    fn finish(&mut self, data: &[u8]) -> Result<(), ScramError> {
        match self {
            ScramLogin::Password(c) => c.finish(data),
            ScramLogin::Keys(c) => c.finish(data),
        }
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    Connect { addr: String, source: io::Error },
    Io { op: &'static str, source: io::Error },
    Closed,
    Timeout,
    Rejected { code: String, message: String },
    Auth(String),
    Protocol(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect { addr, source } => write!(f, "could not connect to server {addr}: {source}"),
            UpstreamError::Io { op, source } => write!(f, "server connection {op} failed: {source}"),
            UpstreamError::Closed => write!(f, "server closed the connection during login"),
            UpstreamError::Timeout => write!(f, "server login timed out (server_connect_timeout)"),
            UpstreamError::Rejected { code, message } => write!(f, "server login failed: {message} ({code})"),
            UpstreamError::Auth(m) => write!(f, "server login failed: {m}"),
            UpstreamError::Protocol(m) => write!(f, "server login failed: protocol error: {m}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A logged-in upstream and what the login told us.
pub struct Upstream {
    pub conn: Conn,
    pub addr: Address,
    pub backend_pid: u32,
    pub backend_key: u32,
    /// ParameterStatus values reported at login, in arrival order (names as PostgreSQL spells them).
    pub params: Vec<(String, String)>,
    /// Settings pgmux has changed on this backend since login, by lower-case name; absent means the default.
    pub applied: HashMap<String, String>,
    /// The session whose settings `applied` matches, so a session that runs twice in a row costs no comparison.
    pub applied_for: Option<u64>,
    /// Channels the backend LISTENs to.
    pub listening: std::collections::BTreeSet<String>,
    /// The prepared statements it has, by definition.
    pub stmts: super::statements::UpstreamStatements,
    /// Changes whenever the upstream loses its SQL-level prepared statements (a new connection, DISCARD ALL).
    pub generation: u64,
    /// Transaction status from the last ReadyForQuery.
    pub txn_status: u8,
    pub inbuf: Vec<u8>,
    pub outbuf: Vec<u8>,
    pub out_pos: usize,
    pub readable: bool,
    pub writable: bool,
    /// PostgreSQL closed its side or the socket has an error: read until EOF.
    pub hup: bool,
    /// Bytes written to the socket since login; with `outbuf` this locates any byte in the output stream.
    pub sent_total: u64,
    pub connected_at: Instant,
    /// Bytes of a large backend message still to pass through to `stream_route`'s owner.
    pub passthrough: usize,
    /// Set while PostgreSQL is in COPY FROM STDIN for the current owner.
    pub copy_in: bool,
}

/// Connect and log in. Blocks for at most `timeout`.
pub fn connect(
    addr: &Address,
    params: &[(&str, &str)],
    user: &str,
    credential: &Credential,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let deadline = Instant::now() + timeout;
    let fd = open_socket(addr, timeout)?;
    let conn = Conn::new(fd).map_err(|e| UpstreamError::Io { op: "set-up", source: e })?;
    conn.set_nodelay();
    let mut out = Vec::new();
    fe::startup_message(&mut out, params);
    send_all(&conn, &out, deadline)?;

    let mut inbuf = Vec::new();
    let mut scram: Option<ScramLogin> = None;
    let mut params_seen = Vec::new();
    let mut key = (0u32, 0u32);
    loop {
        let (tag, body) = read_message(&conn, &mut inbuf, deadline)?;
        match tag {
            b'R' => {
                let req = be::parse_auth_request(&body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let mut reply = Vec::new();
                match req {
                    AuthRequest::Ok => continue,
                    AuthRequest::Cleartext => match credential {
                        Credential::Plain(p) => fe::password_message(&mut reply, p.as_bytes()),
                        _ => return Err(no_password("cleartext", user)),
                    },
                    AuthRequest::Md5 { salt } => {
                        let stored = match credential {
                            Credential::Plain(p) => pgmux_proto::auth::md5_password_hash(user, p),
                            Credential::Md5(h) => h.clone(),
                            Credential::None | Credential::Scram { .. } => return Err(no_password("md5", user)),
                        };
                        fe::password_message(&mut reply, md5_salted_response(&stored, salt).as_bytes());
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if !mechanisms.contains(&"SCRAM-SHA-256") {
                            return Err(UpstreamError::Auth(format!("unsupported SASL mechanisms {mechanisms:?}")));
                        }
                        let client = match credential {
                            Credential::Plain(p) => ScramLogin::Password(ScramClient::new(p.as_bytes())),
                            Credential::Scram { secret, client_key: Some(key) } => ScramLogin::Keys(
                                ScramKeyClient::new(*key, secret.clone())
                                    .map_err(|e| UpstreamError::Auth(e.to_string()))?,
                            ),
                            Credential::Scram { client_key: None, .. } => {
                                return Err(UpstreamError::Auth(format!(
                                    "server asks for SCRAM-SHA-256 authentication of user \"{user}\"; pgmux has \
                                     only a SCRAM secret (from auth_file or auth_query), usable once this user has \
                                     logged in to pgmux with SCRAM-SHA-256"
                                )))
                            }
                            _ => return Err(no_password("SCRAM-SHA-256", user)),
                        };
                        fe::sasl_initial_response(&mut reply, "SCRAM-SHA-256", client.message());
                        scram = Some(client);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let Some(client) = scram.as_mut() else {
                            return Err(UpstreamError::Protocol("SASL continue without SASL start".into()));
                        };
                        client.update(data).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        fe::sasl_response(&mut reply, client.message());
                    }
                    AuthRequest::SaslFinal(data) => {
                        let Some(client) = scram.as_mut() else {
                            return Err(UpstreamError::Protocol("SASL final without SASL start".into()));
                        };
                        client.finish(data).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        continue;
                    }
                    AuthRequest::Unsupported(code) => {
                        return Err(UpstreamError::Auth(format!("unsupported authentication method {code}")))
                    }
                }
                send_all(&conn, &reply, deadline)?;
            }
            b'S' => {
                let (n, v) = be::parse_parameter_status(&body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                params_seen.push((n.to_string(), v.to_string()));
            }
            b'K' => key = be::parse_backend_key_data(&body).map_err(|e| UpstreamError::Protocol(e.to_string()))?,
            b'N' | b'v' => {}
            b'E' => {
                let f = be::parse_error_fields(&body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                return Err(UpstreamError::Rejected { code: f.code, message: f.message });
            }
            b'Z' => {
                conn.set_nonblocking(true).map_err(|e| UpstreamError::Io { op: "set-up", source: e })?;
                return Ok(Upstream {
                    conn,
                    addr: addr.clone(),
                    backend_pid: key.0,
                    backend_key: key.1,
                    params: params_seen,
                    applied: HashMap::new(),
                    applied_for: None,
                    txn_status: b'I',
                    stmts: super::statements::UpstreamStatements::new(STATEMENT_CACHE),
                    listening: std::collections::BTreeSet::new(),
                    generation: 0,
                    inbuf,
                    outbuf: Vec::new(),
                    out_pos: 0,
                    readable: true,
                    writable: true,
                    hup: false,
                    sent_total: 0,
                    connected_at: Instant::now(),
                    passthrough: 0,
                    copy_in: false,
                });
            }
            other => {
                return Err(UpstreamError::Protocol(format!("unexpected message '{}' during login", other as char)))
            }
        }
    }
}

fn no_password(method: &str, user: &str) -> UpstreamError {
    UpstreamError::Auth(format!(
        "server asks for {method} authentication of user \"{user}\" but no usable password is configured"
    ))
}

fn open_socket(addr: &Address, timeout: Duration) -> Result<OwnedFd, UpstreamError> {
    let err = |e| UpstreamError::Connect { addr: addr.to_string(), source: e };
    match addr {
        Address::Tcp(host, port) => {
            let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs().map_err(err)?.collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for a in addrs {
                let sock = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM.cloexec(), None)
                    .map_err(err)?;
                match sock.connect_timeout(&a.into(), timeout) {
                    Ok(()) => return Ok(sock.into()),
                    Err(e) => last = e,
                }
            }
            Err(err(last))
        }
        Address::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
            Ok(s.into())
        }
    }
}

pub(crate) fn send_all(conn: &Conn, data: &[u8], deadline: Instant) -> Result<(), UpstreamError> {
    let left = deadline.saturating_duration_since(Instant::now());
    conn.write_all_timeout(data, left).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => UpstreamError::Timeout,
        _ => UpstreamError::Io { op: "write", source: e },
    })
}

/// Read one whole backend message during login (bounded: login messages are small).
pub(crate) fn read_message(conn: &Conn, buf: &mut Vec<u8>, deadline: Instant) -> Result<(u8, Vec<u8>), UpstreamError> {
    const LOGIN_MAX: u32 = 1 << 20;
    loop {
        if let Some(h) = frame::peek_header(buf) {
            frame::check_backend(h, LOGIN_MAX).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            if buf.len() >= h.total_len() {
                let body = buf.get(frame::HEADER_LEN..h.total_len()).unwrap_or_default().to_vec();
                buf.drain(..h.total_len());
                return Ok((h.tag, body));
            }
        }
        match conn.read_into(buf, 16 * 1024).map_err(|e| UpstreamError::Io { op: "read", source: e })? {
            ReadOutcome::Data { .. } => {}
            ReadOutcome::Eof => return Err(UpstreamError::Closed),
            ReadOutcome::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(UpstreamError::Timeout);
                }
                conn.wait(libc::POLLIN, left).map_err(|e| UpstreamError::Io { op: "poll", source: e })?;
            }
        }
    }
}

/// Send a CancelRequest for the backend `pid`/`key` and wait until the postmaster has closed the connection, which
/// it does after signalling the backend: when this returns, the cancel can no longer land on a later query.
pub fn send_cancel(addr: &Address, pid: u32, key: u32, timeout: Duration) -> Result<(), UpstreamError> {
    let deadline = Instant::now() + timeout;
    let fd = open_socket(addr, timeout)?;
    let conn = Conn::new(fd).map_err(|e| UpstreamError::Io { op: "set-up", source: e })?;
    let mut out = Vec::new();
    fe::cancel_request(&mut out, pid, key);
    send_all(&conn, &out, deadline)?;
    let mut sink = Vec::new();
    loop {
        sink.clear();
        match conn.read_into(&mut sink, 64) {
            Ok(ReadOutcome::Data { .. }) => {}
            Ok(ReadOutcome::Eof) | Err(_) => return Ok(()),
            Ok(ReadOutcome::WouldBlock) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(UpstreamError::Timeout);
                }
                let _ = conn.wait(libc::POLLIN, left);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed SCRAM secret in PostgreSQL's notation (arbitrary keys).
    const SCRAM: &str = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$\
                         Lh+8RqDl0/TWtfzY9+z6n0cNEdWXpfWDhVbwWZ9Sl9M=:\
                         o6eJzAkHyxaG0mnq+LNqUQeIjtyxb7NXyb8wjmPuwiQ=";

    #[test]
    fn credentials_from_looked_up_secrets() {
        let md5 = "md5d0763edaa9d9bd2a9516280e9044d885";
        assert!(matches!(Credential::from_lookup(md5, &[]), Credential::Md5(h) if h == md5));
        assert!(matches!(Credential::from_lookup("pw", &[]), Credential::Plain(p) if p == "pw"));
        let key = [7u8; 32];
        match Credential::from_lookup(SCRAM, &key) {
            Credential::Scram { secret, client_key } => {
                assert_eq!(secret.iterations, 4096);
                assert_eq!(client_key, Some(key));
            }
            other => panic!("{other:?}"),
        }
        // A key of the wrong length is no key; a mangled SCRAM secret is nothing to log in with.
        assert!(matches!(Credential::from_lookup(SCRAM, &[1, 2]), Credential::Scram { client_key: None, .. }));
        assert!(matches!(Credential::from_lookup("SCRAM-SHA-256$x", &key), Credential::None));
    }

    #[test]
    fn same_secret_ignores_the_client_key() {
        let a = Credential::from_lookup(SCRAM, &[1; 32]);
        let b = Credential::from_lookup(SCRAM, &[]);
        assert!(a.same_secret(&b));
        assert!(!a.same_secret(&Credential::Plain("pw".into())));
        assert!(Credential::Md5("md5x".into()).same_secret(&Credential::Md5("md5x".into())));
        assert!(!Credential::Md5("md5x".into()).same_secret(&Credential::Md5("md5y".into())));
        assert!(Credential::None.same_secret(&Credential::None));
    }
}
