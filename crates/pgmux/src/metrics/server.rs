//! The Prometheus endpoint as a listener process serves it: accepts on the metrics socket (which the supervisor
//! bound and every listener inherits), reads one request head per connection, asks the supervisor for a fresh
//! snapshot (`Msg::AdminRequest` with `AdminCommand::Snapshot`, the console's SHOW machinery: every worker reports
//! within 300 ms), renders it and closes the connection after the answer.
//!
//! A metrics client is as untrusted as a database client: at most [`MAX_CONNS`] connections at once (more are
//! closed at accept), a request head of at most `http::MAX_HEAD_LEN` bytes that must be complete within
//! [`REQUEST_TIMEOUT`] (else 408), and every connection gone [`HARD_TIMEOUT`] after it was accepted whatever it is
//! doing, so a slow reader cannot hold one either. The listener's janitor tick enforces the deadlines; there is no
//! timer per socket. Nothing of this touches the listener's PostgreSQL clients beyond sharing its event loop.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use pgmux_ipc::admin::AdminReply;
use pgmux_ipc::wire::Assembler;

use super::http::{self, Parse, Route, Status};
use super::render;
use crate::net::{Conn, ReadOutcome};

/// The listen socket's token; connection slot `i` has `LISTEN_TOKEN + 1 + i`. The listener's own tokens are far
/// away: its connections count up from 0, its listen sockets down from `usize::MAX - 1`.
const LISTEN_TOKEN: usize = usize::MAX / 2;
/// Metrics connections served at once; Prometheus scrapes one at a time.
pub const MAX_CONNS: usize = 32;
/// Time a client has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time after which a connection is closed whatever it is doing (waiting for the supervisor, being written to).
pub const HARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection's input is drained after the answer, so unread bytes do not turn our FIN into a
/// reset that could destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const MAX_DISCARD: usize = 64 * 1024;
/// Accepts per loop turn, so a flood cannot starve the listener's PostgreSQL clients.
const ACCEPT_BATCH: usize = 64;

/// Whether `token` is one of the endpoint's.
pub fn owns(token: Token) -> bool {
    token.0.checked_sub(LISTEN_TOKEN).is_some_and(|i| i <= MAX_CONNS)
}

enum State {
    /// Reading the request head.
    Reading(Vec<u8>),
    /// A valid request: the listener is about to ask the supervisor.
    Asking {
        head_only: bool,
    },
    /// Waiting for the supervisor's snapshot (request `id`).
    Waiting {
        id: u64,
        head_only: bool,
        assembler: Assembler,
    },
    Writing {
        out: Vec<u8>,
        written: usize,
    },
    /// The answer is out and our side shut; input is discarded until EOF or the deadline.
    Lingering {
        until: Instant,
        discarded: usize,
    },
}

struct HttpConn {
    conn: Conn,
    peer: String,
    accepted: Instant,
    readable: bool,
    writable: bool,
    state: State,
}

enum Verdict {
    Keep,
    Close,
}

/// The endpoint's socket and connections in one listener.
pub struct MetricsServer {
    listen: Option<mio::net::TcpListener>,
    listen_ready: bool,
    conns: Vec<Option<HttpConn>>,
    /// Connections whose valid request still needs a supervisor request id.
    asks: Vec<usize>,
    /// Supervisor request id → connection slot.
    pending: HashMap<u64, usize>,
}

impl MetricsServer {
    pub fn new(fd: OwnedFd, registry: &Registry) -> io::Result<MetricsServer> {
        let mut listen = mio::net::TcpListener::from(fd);
        registry.register(&mut listen, Token(LISTEN_TOKEN), Interest::READABLE)?;
        Ok(MetricsServer {
            listen: Some(listen),
            listen_ready: true,
            conns: Vec::new(),
            asks: Vec::new(),
            pending: HashMap::new(),
        })
    }

    /// A readiness event for one of [`owns`]'s tokens.
    pub fn event(&mut self, registry: &Registry, token: Token, readable: bool, writable: bool) {
        if token.0 == LISTEN_TOKEN {
            self.listen_ready = true;
            return;
        }
        let slot = token.0.saturating_sub(LISTEN_TOKEN + 1);
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            c.readable |= readable;
            c.writable |= writable;
            self.drive(registry, slot);
        }
    }

    /// Accepts waiting connections (while there is room) and reads what they sent.
    pub fn accept(&mut self, registry: &Registry) {
        for _ in 0..ACCEPT_BATCH {
            if !self.listen_ready {
                return;
            }
            let Some(listen) = &self.listen else { return };
            let (stream, peer) = match listen.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listen_ready = false;
                    return;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
                Err(e) => {
                    // Out of descriptors and the like: the janitor tick tries again.
                    debug!("metrics: accept: {e}");
                    self.listen_ready = false;
                    return;
                }
            };
            let live = self.conns.iter().flatten().count();
            if live >= MAX_CONNS {
                debug!("metrics: {peer}: too many metrics connections, closing");
                continue; // dropping the stream closes it
            }
            let conn = match Conn::new(OwnedFd::from(stream)) {
                Ok(c) => c,
                Err(e) => {
                    debug!("metrics: {peer}: {e}");
                    continue;
                }
            };
            let slot = self.conns.iter().position(Option::is_none).unwrap_or(self.conns.len());
            if slot >= MAX_CONNS {
                continue;
            }
            let raw = conn.raw_fd();
            let token = Token(LISTEN_TOKEN + 1 + slot);
            if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE | Interest::WRITABLE) {
                warn!("metrics: {peer}: cannot register: {e}");
                continue;
            }
            let c = HttpConn {
                conn,
                peer: peer.to_string(),
                accepted: Instant::now(),
                readable: true,
                writable: true,
                state: State::Reading(Vec::new()),
            };
            if slot == self.conns.len() {
                self.conns.push(Some(c));
            } else if let Some(s) = self.conns.get_mut(slot) {
                *s = Some(c);
            }
            self.drive(registry, slot);
        }
    }

    /// Connections that need a snapshot: the caller sends one request per slot and reports its id to
    /// [`Self::asked`].
    pub fn take_asks(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.asks)
    }

    pub fn asked(&mut self, slot: usize, id: u64) {
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            if let State::Asking { head_only } = c.state {
                c.state = State::Waiting { id, head_only, assembler: Assembler::default() };
                self.pending.insert(id, slot);
            }
        }
    }

    /// A piece of the supervisor's answer to request `id`. False: not one of ours.
    pub fn reply_part(&mut self, registry: &Registry, id: u64, part: &[u8], last: bool) -> bool {
        let Some(&slot) = self.pending.get(&id) else { return false };
        if last {
            self.pending.remove(&id);
        }
        let Some(Some(c)) = self.conns.get_mut(slot) else { return true };
        let State::Waiting { id: waiting_for, head_only, assembler } = &mut c.state else { return true };
        if *waiting_for != id {
            return true;
        }
        let head_only = *head_only;
        let whole = match assembler.push(part, last) {
            Ok(Some(whole)) => whole,
            Ok(None) => return true,
            Err(e) => {
                warn!("metrics: supervisor reply: {e}");
                self.pending.remove(&id);
                c.respond(http::error_response(Status::ServiceUnavailable, "bad answer from the supervisor"));
                self.drive(registry, slot);
                return true;
            }
        };
        let out = match AdminReply::decode(&whole) {
            Ok(AdminReply::Snapshot(snap)) => {
                http::response(Status::Ok, render::CONTENT_TYPE, render::render(&snap).as_bytes(), head_only)
            }
            Ok(AdminReply::Error { message, .. }) => http::error_response(Status::ServiceUnavailable, &message),
            Ok(AdminReply::Done) | Err(_) => {
                warn!("metrics: unexpected answer from the supervisor");
                http::error_response(Status::ServiceUnavailable, "bad answer from the supervisor")
            }
        };
        c.respond(out);
        self.drive(registry, slot);
        true
    }

    /// The janitor tick: request deadlines, lingering, and the hard limit; a listen socket that reported an error
    /// is tried again.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        if self.listen.is_some() {
            self.listen_ready = true;
        }
        for slot in 0..self.conns.len() {
            let Some(Some(c)) = self.conns.get_mut(slot) else { continue };
            let age = now.saturating_duration_since(c.accepted);
            if age >= HARD_TIMEOUT {
                debug!("metrics: {}: closing after {HARD_TIMEOUT:?}", c.peer);
                self.close(registry, slot);
                continue;
            }
            match &c.state {
                State::Reading(_) if age >= REQUEST_TIMEOUT => {
                    debug!("metrics: {}: no whole request within {REQUEST_TIMEOUT:?}", c.peer);
                    c.respond(http::error_response(Status::RequestTimeout, "no whole request in time"));
                    self.drive(registry, slot);
                }
                State::Lingering { until, .. } if now >= *until => self.close(registry, slot),
                _ => {}
            }
        }
    }

    /// The listener is retiring: accept nothing more (connections in progress are finished).
    pub fn stop_accepting(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listen.take() {
            let _ = registry.deregister(&mut l);
        }
    }

    fn drive(&mut self, registry: &Registry, slot: usize) {
        let verdict = match self.conns.get_mut(slot) {
            Some(Some(c)) => c.advance(),
            _ => return,
        };
        match verdict {
            Verdict::Keep => {
                if let Some(Some(HttpConn { state: State::Asking { .. }, .. })) = self.conns.get(slot) {
                    if !self.asks.contains(&slot) {
                        self.asks.push(slot);
                    }
                }
            }
            Verdict::Close => self.close(registry, slot),
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        let raw = c.conn.raw_fd();
        let _ = registry.deregister(&mut SourceFd(&raw));
        if let State::Waiting { id, .. } = c.state {
            self.pending.remove(&id);
        }
        self.asks.retain(|&s| s != slot);
    }
}

impl HttpConn {
    fn respond(&mut self, out: Vec<u8>) {
        self.state = State::Writing { out, written: 0 };
    }

    /// Moves the connection as far as its buffers and readiness allow.
    fn advance(&mut self) -> Verdict {
        loop {
            match &mut self.state {
                State::Reading(buf) => {
                    let judged = match http::parse(buf) {
                        Parse::Incomplete => None,
                        Parse::Request(r) => Some(match http::route(&r) {
                            Route::Metrics { head_only } => Ok(head_only),
                            Route::Refuse(status) => Err((status, "only GET /metrics is served")),
                        }),
                        Parse::Refuse(status, why) => Some(Err((status, why))),
                    };
                    match judged {
                        Some(Ok(head_only)) => {
                            self.state = State::Asking { head_only };
                            return Verdict::Keep;
                        }
                        Some(Err((status, why))) => {
                            debug!("metrics: {}: {} ({why})", self.peer, status.code());
                            self.respond(http::error_response(status, why));
                            continue;
                        }
                        None => {}
                    }
                    if !self.readable {
                        return Verdict::Keep;
                    }
                    // `parse` refuses a full buffer without a head, so there is room; never read past the cap.
                    let room = http::MAX_HEAD_LEN.saturating_sub(buf.len());
                    if room == 0 {
                        self.respond(http::error_response(Status::HeaderTooLarge, "request head too large"));
                        continue;
                    }
                    match self.conn.read_into(buf, room) {
                        Ok(ReadOutcome::Data { .. }) => {}
                        Ok(ReadOutcome::WouldBlock) => self.readable = false,
                        Ok(ReadOutcome::Eof) | Err(_) => return Verdict::Close,
                    }
                }
                // The request is complete; anything else the client sends stays in the kernel until the answer.
                State::Asking { .. } | State::Waiting { .. } => return Verdict::Keep,
                State::Writing { out, written } => {
                    let rest = out.get(*written..).unwrap_or_default();
                    if rest.is_empty() {
                        self.conn.shutdown_write();
                        self.state = State::Lingering { until: Instant::now() + LINGER, discarded: 0 };
                        continue;
                    }
                    if !self.writable {
                        return Verdict::Keep;
                    }
                    match self.conn.write(rest) {
                        Ok(0) => self.writable = false,
                        Ok(n) => *written += n,
                        Err(e) => {
                            debug!("metrics: {}: write: {e}", self.peer);
                            return Verdict::Close;
                        }
                    }
                }
                State::Lingering { discarded, .. } => {
                    if !self.readable {
                        return Verdict::Keep;
                    }
                    let mut scratch = Vec::new();
                    match self.conn.read_into(&mut scratch, 4096) {
                        Ok(ReadOutcome::Data { n, .. }) => {
                            *discarded += n;
                            if *discarded > MAX_DISCARD {
                                return Verdict::Close;
                            }
                        }
                        Ok(ReadOutcome::WouldBlock) => self.readable = false,
                        Ok(ReadOutcome::Eof) | Err(_) => return Verdict::Close,
                    }
                }
            }
        }
    }
}
