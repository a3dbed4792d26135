//! The listener process: accepts clients, reads their startup packet, authenticates them and hands each
//! authenticated socket to the supervisor as `Msg::Login` (record + socket in one `sendmsg`).
//!
//! One mio loop owns the listen sockets, the channel to the supervisor and every connection still logging in. A
//! connection is a plain struct in a slab (index = mio `Token`) with a phase: reading the startup packet,
//! authenticating (`client_auth`), flushing the last auth message before hand-off, or closing (error written,
//! lingering briefly so the client reads it instead of a reset). Sockets are edge-triggered; each connection keeps
//! its own readiness. Nothing is buffered beyond `MAX_STARTUP_LEN` while reading the startup packet or one 8 KiB
//! password message during authentication. A janitor tick (10 per second) enforces `client_login_timeout`, the
//! shutdown grace period and the supervisor's liveness; there is no timer per socket.
//!
//! CancelRequests are passed to the supervisor as `Msg::CancelRequest` and the socket is closed without a reply, as
//! PostgreSQL does.
//!
//! A login to the admin console (database `pgbouncer` or `pgmux`) is not handed off: the connection stays here as
//! a console (`crate::admin::console`), whose commands go to the supervisor as `Msg::AdminRequest` and whose
//! answers come back as `Msg::AdminReply`.
//!
//! With `metrics_listen` set, the listener also serves the Prometheus endpoint on the socket the supervisor bound
//! for it (`crate::metrics::server`), asking the supervisor for snapshots the same way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::unistd::Pid;
use pgmux_config::{Config, UserList};
use pgmux_ipc::admin::AdminCommand;
use pgmux_ipc::{Channel, IpcError, Msg, Outbox, SessionRecord};
use pgmux_proto::backend;
use pgmux_proto::frame::{peek_header, MAX_STARTUP_LEN};
use pgmux_proto::startup::{decode_startup, startup_packet_len, Startup, StartupError, StartupPacket};

use crate::admin::console::{Console, Step};
use crate::admin::show::Local;
use crate::client_auth::{AuthStep, ClientAuth};
use crate::metrics::server::{self as metrics, MetricsServer};
use crate::net::{Conn, ReadOutcome};
use crate::process;
use crate::sockets::ListenSocket;

/// Everything a listener process needs, moved into it by the supervisor right after `fork`.
pub struct ListenerContext {
    pub index: u32,
    pub config: Arc<Config>,
    pub userlist: Arc<UserList>,
    pub listen: Vec<ListenSocket>,
    pub channel: Channel,
    pub parent: Pid,
    /// The Prometheus endpoint's listen socket (`metrics_listen`), shared by every listener.
    pub metrics: Option<OwnedFd>,
}

const CHANNEL: Token = Token(usize::MAX);
/// Listen socket `i` has token `LISTEN_BASE - i`; slab slots count up from 0, so they never meet.
const LISTEN_BASE: usize = usize::MAX - 1;
const TICK: Duration = Duration::from_millis(100);
/// Largest password/SASL message accepted during authentication (PostgreSQL uses the same limit).
const MAX_AUTH_MSG_LEN: u32 = 8192;
const MAX_AUTH_BUFFER: usize = MAX_AUTH_MSG_LEN as usize + 5;
/// How long a failed connection may linger so the client reads its error, and how much we discard meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const MAX_DISCARD: usize = 64 * 1024;
/// Pause before retrying accept after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accepts per listen socket per loop turn, so one busy socket cannot starve the others.
const ACCEPT_BATCH: usize = 256;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 16 * 1024;

/// Runs the listener until the supervisor says stop (exit 0) or disappears. Returns the process exit code.
pub fn run(ctx: ListenerContext) -> i32 {
    match Listener::new(ctx) {
        Ok(mut l) => l.run(),
        Err(e) => {
            error!("cannot start: {e}");
            1
        }
    }
}

enum Acceptor {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

struct ListenEntry {
    sock: Acceptor,
    name: String,
    /// Edge-triggered: true until accept reports WouldBlock.
    ready: bool,
}

impl ListenEntry {
    fn accept(&self) -> io::Result<(OwnedFd, String)> {
        match &self.sock {
            Acceptor::Tcp(l) => l.accept().map(|(s, addr)| (OwnedFd::from(s), addr.to_string())),
            Acceptor::Unix(l) => l.accept().map(|(s, _)| (OwnedFd::from(s), "unix".to_string())),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match &mut self.sock {
            Acceptor::Tcp(l) => l,
            Acceptor::Unix(l) => l,
        }
    }
}

/// What the startup packet told us, kept until hand-off.
struct LoginInfo {
    database: String,
    user: String,
    params: Vec<(String, String)>,
    /// From a SCRAM login: passed on so the worker can log in upstream with it.
    scram_client_key: Option<[u8; 32]>,
}

enum Phase {
    ReadingStartup,
    Authenticating(Box<ClientAuth>),
    /// Authenticated; waiting for the last auth bytes to reach the client.
    HandingOff,
    /// An admin console session (it stays in this process until the client leaves).
    Console(Box<Console>),
    /// An error is being written; then the write side is shut and input discarded until EOF or the deadline.
    Closing {
        deadline: Instant,
        shut: bool,
        discarded: usize,
    },
}

/// One connection that has not finished logging in.
struct Client {
    sock: Conn,
    addr: String,
    accepted: Instant,
    phase: Phase,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    readable: bool,
    writable: bool,
    ssl_answered: bool,
    gss_answered: bool,
    login: Option<LoginInfo>,
    /// Logged in to the console as the OS user running pgmux over the Unix socket (no password, admin rights).
    peer_admin: bool,
    /// Names the connection in log lines, PgBouncer-style ("C-0x..."): unique across listeners.
    cid: u64,
}

/// What the loop must do with a connection after driving it.
enum Verdict {
    /// Waiting for readiness.
    Wait,
    /// Close the socket now, nothing more to say.
    Drop,
    Cancel {
        pid: u32,
        key: u32,
    },
    HandOff,
    /// A console command for the supervisor.
    Admin(AdminCommand),
}

/// The read-only configuration a connection consults.
struct Env<'a> {
    config: &'a Config,
    userlist: &'a UserList,
    /// Connections this listener holds (logging in, or consoles).
    connections: usize,
}

struct Listener {
    index: u32,
    config: Arc<Config>,
    userlist: Arc<UserList>,
    channel: Channel,
    parent: Pid,
    poll: Poll,
    listen: Vec<Option<ListenEntry>>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    outbox: Outbox,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    last_tick: Instant,
    refused: u64,
    accepted_total: u64,
    last_refusal_log: Option<Instant>,
    exit: Option<i32>,
    /// Console commands sent to the supervisor: request id → connection slot.
    admin_requests: std::collections::HashMap<u64, usize>,
    next_admin_id: u64,
    metrics: Option<MetricsServer>,
}

impl Listener {
    fn new(ctx: ListenerContext) -> io::Result<Listener> {
        let poll = Poll::new()?;
        let raw = ctx.channel.as_raw_fd();
        poll.registry().register(&mut SourceFd(&raw), CHANNEL, Interest::READABLE | Interest::WRITABLE)?;
        let mut listen = Vec::new();
        for (i, l) in ctx.listen.into_iter().enumerate() {
            let name = l.describe();
            let sock = match l {
                ListenSocket::Tcp { fd, .. } => Acceptor::Tcp(mio::net::TcpListener::from(fd)),
                ListenSocket::Unix { fd, .. } => Acceptor::Unix(mio::net::UnixListener::from(fd)),
            };
            let mut entry = ListenEntry { sock, name, ready: true };
            poll.registry().register(entry.source(), Token(LISTEN_BASE - i), Interest::READABLE)?;
            listen.push(Some(entry));
        }
        let metrics = match ctx.metrics {
            Some(fd) => Some(MetricsServer::new(fd, poll.registry())?),
            None => None,
        };
        Ok(Listener {
            index: ctx.index,
            config: ctx.config,
            userlist: ctx.userlist,
            channel: ctx.channel,
            parent: ctx.parent,
            poll,
            listen,
            clients: Vec::new(),
            free: Vec::new(),
            outbox: Outbox::new(),
            accept_paused_until: None,
            shutdown_deadline: None,
            last_tick: Instant::now(),
            refused: 0,
            accepted_total: 0,
            last_refusal_log: None,
            exit: None,
            admin_requests: std::collections::HashMap::new(),
            next_admin_id: 1,
            metrics,
        })
    }

    fn run(&mut self) -> i32 {
        info!("listener-{} accepting on {} socket(s)", self.index, self.listen.len());
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout =
                if self.can_accept() { Duration::ZERO } else { TICK.saturating_sub(self.last_tick.elapsed()) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("poll failed: {e}");
                    return 1;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    CHANNEL => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.channel_readable();
                        }
                        if ev.is_writable() {
                            self.flush_outbox();
                        }
                    }
                    Token(t) if t < self.clients.len() => {
                        if let Some(Some(c)) = self.clients.get_mut(t) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.readable = true;
                            }
                            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                                c.writable = true;
                            }
                            self.drive(t);
                        }
                    }
                    t if metrics::owns(t) => {
                        if let Some(m) = self.metrics.as_mut() {
                            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                            m.event(self.poll.registry(), t, readable, writable);
                        }
                    }
                    Token(t) => {
                        if let Some(Some(l)) = LISTEN_BASE.checked_sub(t).and_then(|i| self.listen.get_mut(i)) {
                            l.ready = true;
                        }
                    }
                }
                if self.exit.is_some() {
                    break;
                }
            }
            self.accept_all();
            self.serve_metrics();
            if self.last_tick.elapsed() >= TICK {
                self.last_tick = Instant::now();
                self.janitor();
            }
            if let Some(code) = self.exit {
                return code;
            }
        }
    }

    // ----- accepting -----

    fn can_accept(&self) -> bool {
        self.accept_paused_until.is_none() && self.listen.iter().flatten().any(|l| l.ready)
    }

    fn accept_all(&mut self) {
        for i in 0..self.listen.len() {
            for _ in 0..ACCEPT_BATCH {
                if self.accept_paused_until.is_some() || self.exit.is_some() {
                    return;
                }
                let Some(Some(l)) = self.listen.get_mut(i) else { break };
                if !l.ready {
                    break;
                }
                match l.accept() {
                    Ok((fd, addr)) => self.add_client(fd, addr),
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            l.ready = false;
                            break;
                        }
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                        _ => match e.raw_os_error() {
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                                warn!("accept on {}: {e}; pausing accepts for {ACCEPT_BACKOFF:?}", l.name);
                                self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                                return;
                            }
                            // Errors Linux passes on from the new connection itself: skip that connection.
                            Some(
                                libc::ENETDOWN
                                | libc::EPROTO
                                | libc::ENOPROTOOPT
                                | libc::EHOSTDOWN
                                | libc::ENONET
                                | libc::EHOSTUNREACH
                                | libc::EOPNOTSUPP
                                | libc::ENETUNREACH
                                | libc::EPERM,
                            ) => debug!("accept on {}: {e}", l.name),
                            _ => {
                                error!("accept on {}: {e}", l.name);
                                l.ready = false;
                                break;
                            }
                        },
                    },
                }
            }
        }
    }

    fn add_client(&mut self, fd: OwnedFd, addr: String) {
        let in_progress = self.clients.len() - self.free.len();
        if in_progress >= self.config.pooler.max_client_conn as usize {
            self.refuse(fd, &addr);
            return;
        }
        let sock = match Conn::new(fd) {
            Ok(s) => s,
            Err(e) => {
                warn!("{addr}: cannot set up accepted socket: {e}");
                return;
            }
        };
        sock.set_nodelay();
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        let raw = sock.raw_fd();
        if let Err(e) =
            self.poll.registry().register(&mut SourceFd(&raw), Token(slot), Interest::READABLE | Interest::WRITABLE)
        {
            error!("{addr}: cannot register accepted socket: {e}");
            self.free.push(slot);
            return;
        }
        debug!("connection accepted from {addr}");
        let client = Client {
            sock,
            addr,
            accepted: Instant::now(),
            phase: Phase::ReadingStartup,
            inbuf: Vec::new(),
            out: Vec::new(),
            readable: true,
            writable: true,
            ssl_answered: false,
            gss_answered: false,
            login: None,
            peer_admin: false,
            cid: (u64::from(self.index) << 40) | self.accepted_total,
        };
        self.accepted_total += 1;
        if let Some(s) = self.clients.get_mut(slot) {
            *s = Some(client);
        }
        self.drive(slot);
    }

    /// Over max_client_conn: say so (whatever fits in one non-blocking write) and close.
    fn refuse(&mut self, fd: OwnedFd, addr: &str) {
        self.refused += 1;
        let now = Instant::now();
        if self.last_refusal_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            warn!(
                "{addr}: no more connections allowed (max_client_conn {} logins in progress; {} refused so far)",
                self.config.pooler.max_client_conn, self.refused
            );
            self.last_refusal_log = Some(now);
        }
        if let Ok(sock) = Conn::new(fd) {
            let mut msg = Vec::new();
            backend::error_response(&mut msg, "FATAL", "53300", "no more connections allowed (max_client_conn)");
            let _ = sock.write(&msg);
            // The client has usually sent its startup packet already. Closing over unread input makes the kernel
            // answer with a reset instead of a FIN, and a client kernel may then drop the error unread (Windows
            // does): end our side after the error, and consume what has arrived, before the socket is closed. No
            // lingering here, unlike a failed login, so a flood cannot pile up refused sockets.
            sock.shutdown_write();
            let mut sink = Vec::new();
            while sink.len() < MAX_DISCARD {
                match sock.read_into(&mut sink, READ_CHUNK) {
                    Ok(ReadOutcome::Data { drained: false, .. }) => {}
                    _ => break,
                }
            }
        }
    }

    // ----- connections -----

    fn drive(&mut self, slot: usize) {
        let connections = self.clients.len() - self.free.len();
        let env = Env { config: &self.config, userlist: &self.userlist, connections };
        let verdict = match self.clients.get_mut(slot) {
            Some(Some(c)) => c.advance(&env),
            _ => return,
        };
        match verdict {
            Verdict::Wait => {}
            Verdict::Drop => self.remove(slot),
            Verdict::Cancel { pid, key } => {
                self.remove(slot);
                self.send(&Msg::CancelRequest { pid, key }, Vec::new(), "cancel request");
            }
            Verdict::HandOff => self.hand_off(slot),
            Verdict::Admin(command) => {
                let id = self.next_admin_id;
                self.next_admin_id += 1;
                if let Some(Some(Client { phase: Phase::Console(console), .. })) = self.clients.get_mut(slot) {
                    console.asked(id);
                }
                self.admin_requests.insert(id, slot);
                self.send(&Msg::AdminRequest { id, command }, Vec::new(), "console command");
            }
        }
    }

    fn take(&mut self, slot: usize) -> Option<Client> {
        let c = self.clients.get_mut(slot)?.take()?;
        let raw = c.sock.raw_fd();
        if let Err(e) = self.poll.registry().deregister(&mut SourceFd(&raw)) {
            debug!("{}: deregister: {e}", c.addr);
        }
        self.free.push(slot);
        Some(c)
    }

    fn remove(&mut self, slot: usize) {
        drop(self.take(slot));
    }

    fn hand_off(&mut self, slot: usize) {
        let Some(mut c) = self.take(slot) else { return };
        let Some(login) = c.login.take() else {
            error!("{}: authenticated without a startup packet; dropping", c.addr);
            return;
        };
        debug!("login: db={} user={} addr={}", login.database, login.user, c.addr);
        let record = SessionRecord {
            database: login.database,
            user: login.user,
            startup_params: login.params,
            client_addr: c.addr,
            pending_input: std::mem::take(&mut c.inbuf),
            scram_client_key: login.scram_client_key.map(|k| k.to_vec()).unwrap_or_default(),
            ..SessionRecord::default()
        };
        self.send(&Msg::Login { record }, vec![c.sock.into_fd()], "login");
    }

    /// Accepts metrics connections and asks the supervisor for a snapshot for each complete request.
    fn serve_metrics(&mut self) {
        let Some(m) = self.metrics.as_mut() else { return };
        m.accept(self.poll.registry());
        for slot in m.take_asks() {
            let id = self.next_admin_id;
            self.next_admin_id += 1;
            if let Some(m) = self.metrics.as_mut() {
                m.asked(slot, id);
            }
            self.send(&Msg::AdminRequest { id, command: AdminCommand::Snapshot }, Vec::new(), "metrics request");
        }
    }

    // ----- supervisor channel -----

    fn send(&mut self, msg: &Msg, fds: Vec<OwnedFd>, what: &str) {
        match self.outbox.send(&self.channel, msg, fds) {
            Ok(()) => {}
            Err(IpcError::Closed) => {
                info!("supervisor closed the channel; exiting");
                self.exit = Some(0);
            }
            Err(e) => error!("cannot pass {what} to the supervisor: {e}"),
        }
    }

    fn flush_outbox(&mut self) {
        match self.outbox.flush(&self.channel) {
            Ok(_) => {}
            Err(IpcError::Closed) => {
                info!("supervisor closed the channel; exiting");
                self.exit = Some(0);
            }
            Err(e) => {
                error!("cannot flush messages to the supervisor: {e}");
                self.exit = Some(1);
            }
        }
    }

    fn channel_readable(&mut self) {
        loop {
            match self.channel.recv() {
                Ok(Some((msg, _fds))) => match msg {
                    Msg::Shutdown => self.begin_shutdown(),
                    Msg::AdminReply { id, last, part } => self.admin_reply(id, last, &part),
                    Msg::CloseConsoles => self.close_consoles(),
                    Msg::SetConfig { key, value } => match self.config.with_setting(&key, &value) {
                        Ok(c) => self.config = Arc::new(c),
                        Err(e) => warn!("SET {key}: {e:?}"),
                    },
                    other => warn!("unexpected {} from the supervisor", other.name()),
                },
                Ok(None) => return,
                Err(IpcError::Closed) => {
                    info!("supervisor closed the channel; exiting");
                    self.exit = Some(0);
                    return;
                }
                Err(e @ IpcError::Io { .. }) => {
                    error!("reading from the supervisor: {e}");
                    self.exit = Some(1);
                    return;
                }
                // The bad message has been consumed; the next one may be fine.
                Err(e) => error!("bad message from the supervisor: {e}"),
            }
        }
    }

    /// A piece of the supervisor's answer to a console command.
    fn admin_reply(&mut self, id: u64, last: bool, part: &[u8]) {
        let Some(&slot) = self.admin_requests.get(&id) else {
            if let Some(m) = self.metrics.as_mut() {
                m.reply_part(self.poll.registry(), id, part, last);
            }
            return;
        };
        if last {
            self.admin_requests.remove(&id);
        }
        let local = Local { login_clients: self.clients.len() - self.free.len() };
        let Some(Some(c)) = self.clients.get_mut(slot) else { return };
        let Phase::Console(console) = &mut c.phase else { return };
        if let Some(bytes) = console.on_reply_part(id, part, last, &local) {
            c.out.extend_from_slice(&bytes);
            // Pipelined console queries wait in the buffer: look at them now.
            c.readable = true;
            self.drive(slot);
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let in_progress = self.clients.len() - self.free.len();
        info!("shutting down: no longer accepting, {in_progress} login(s) in progress");
        for entry in self.listen.iter_mut() {
            if let Some(mut l) = entry.take() {
                let _ = self.poll.registry().deregister(l.source());
            }
        }
        if let Some(m) = self.metrics.as_mut() {
            m.stop_accepting(self.poll.registry());
        }
        // Console sessions stay: a listener retired by a reload serves them until their clients leave; when pgmux
        // itself stops, the supervisor says so (`Msg::CloseConsoles`).
        self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
    }

    /// pgmux is stopping: console sessions end once what they were sent (an answer to SHUTDOWN) is out.
    fn close_consoles(&mut self) {
        for slot in 0..self.clients.len() {
            if let Some(Some(c)) = self.clients.get_mut(slot) {
                if matches!(c.phase, Phase::Console(_)) {
                    c.phase = Phase::Closing { deadline: Instant::now() + CLOSE_LINGER, shut: false, discarded: 0 };
                    self.drive(slot);
                }
            }
        }
    }

    // ----- janitor -----

    fn janitor(&mut self) {
        if !process::parent_alive(self.parent) {
            error!("supervisor is gone; exiting");
            self.exit = Some(1);
            return;
        }
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
        }
        if let Some(m) = self.metrics.as_mut() {
            m.tick(self.poll.registry(), now);
        }
        let timeout = self.config.pooler.client_login_timeout;
        for slot in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get_mut(slot) else { continue };
            match c.phase {
                Phase::Closing { deadline, .. } if now >= deadline => self.remove(slot),
                Phase::Closing { .. } | Phase::Console(_) => {}
                _ if !timeout.is_zero() && now.duration_since(c.accepted) > timeout => {
                    c.fail("08P01", "client_login_timeout".into(), None);
                    self.drive(slot);
                }
                _ => {}
            }
        }
        if let Some(deadline) = self.shutdown_deadline {
            let in_progress = self.clients.len() - self.free.len();
            let consoles = self.clients.iter().flatten().filter(|c| matches!(c.phase, Phase::Console(_))).count();
            if in_progress == 0 && self.outbox.is_empty() {
                info!("shutdown complete");
                self.exit = Some(0);
            } else if now >= deadline && in_progress > consoles {
                warn!("shutdown: giving up on {} unfinished login(s)", in_progress - consoles);
                self.flush_outbox();
                if consoles == 0 {
                    self.exit = Some(0);
                } else {
                    let logins: Vec<usize> = (0..self.clients.len())
                        .filter(
                            |&i| matches!(self.clients.get(i), Some(Some(c)) if !matches!(c.phase, Phase::Console(_))),
                        )
                        .collect();
                    for slot in logins {
                        self.remove(slot);
                    }
                }
            }
        }
    }
}

impl Client {
    /// Moves this connection as far as its buffers and readiness allow.
    fn advance(&mut self, env: &Env<'_>) -> Verdict {
        loop {
            if !self.out.is_empty() && self.writable {
                if let Err(e) = self.flush() {
                    debug!("{}: write failed: {e}", self.addr);
                    return Verdict::Drop;
                }
            }
            match self.phase {
                Phase::Closing { .. } => return self.advance_closing(),
                Phase::HandingOff if !self.out.is_empty() => return Verdict::Wait,
                Phase::HandingOff
                    if self.login.as_ref().is_some_and(|l| crate::admin::is_console_database(&l.database)) =>
                {
                    self.start_console(env);
                    continue;
                }
                Phase::HandingOff => return Verdict::HandOff,
                Phase::Console(_) => match self.advance_console(env) {
                    Some(v) => return v,
                    None => continue,
                },
                Phase::ReadingStartup | Phase::Authenticating(_) => {}
            }
            match self.process(env) {
                Some(Verdict::Wait) => continue,
                Some(v) => return v,
                None => {}
            }
            if !self.readable {
                return Verdict::Wait;
            }
            let limit = match self.phase {
                Phase::ReadingStartup => MAX_STARTUP_LEN,
                _ => MAX_AUTH_BUFFER,
            };
            // A full buffer was rejected by `process`, so there is room here unless leftovers from the startup
            // read still wait; reading nothing then would look like EOF, so stop instead.
            let room = limit.saturating_sub(self.inbuf.len()).min(READ_CHUNK);
            if room == 0 {
                self.fail("08P01", "message too long during login".into(), None);
                continue;
            }
            match self.sock.read_into(&mut self.inbuf, room) {
                Ok(ReadOutcome::Data { .. }) => {}
                Ok(ReadOutcome::WouldBlock) => self.readable = false,
                Ok(ReadOutcome::Eof) => {
                    debug!("{}: client closed the connection during login", self.who());
                    return Verdict::Drop;
                }
                Err(e) => {
                    debug!("{}: read failed during login: {e}", self.who());
                    return Verdict::Drop;
                }
            }
        }
    }

    /// Acts on one complete message in `inbuf`. None: more bytes needed. Some(Wait): progress was made, go on.
    fn process(&mut self, env: &Env<'_>) -> Option<Verdict> {
        match self.phase {
            Phase::ReadingStartup => return self.process_startup(env),
            Phase::Authenticating(_) => {}
            Phase::HandingOff | Phase::Closing { .. } | Phase::Console(_) => return None,
        }
        // Judge the header before buffering the body: only small password messages are valid now.
        let h = peek_header(&self.inbuf)?;
        if h.tag != b'p' {
            let msg = format!("expected password response, got message type {}", tag_name(h.tag));
            self.fail("08P01", msg, None);
            return Some(Verdict::Wait);
        }
        if h.len < 4 || h.len > MAX_AUTH_MSG_LEN {
            self.fail("08P01", format!("invalid password message length {}", h.len), None);
            return Some(Verdict::Wait);
        }
        let total = h.total_len();
        let body = self.inbuf.get(5..total)?;
        let Phase::Authenticating(auth) = &mut self.phase else { return None };
        let step = auth.on_message(h.tag, body);
        self.inbuf.drain(..total);
        self.apply(step);
        Some(Verdict::Wait)
    }

    fn process_startup(&mut self, env: &Env<'_>) -> Option<Verdict> {
        let len = match startup_packet_len(&self.inbuf) {
            Ok(len) => len?,
            Err(e) => {
                self.fail("08P01", e.to_string(), None);
                return Some(Verdict::Wait);
            }
        };
        let packet = self.inbuf.get(..len)?;
        let decoded = decode_startup(packet);
        self.inbuf.drain(..len);
        match decoded {
            Err(e @ StartupError::UnsupportedVersion { .. }) => self.fail("0A000", e.to_string(), None),
            Err(e @ StartupError::MissingUser) => self.fail("28000", e.to_string(), None),
            Err(e) => self.fail("08P01", e.to_string(), None),
            Ok(StartupPacket::SslRequest) if !self.ssl_answered => {
                self.ssl_answered = true;
                self.out.push(b'N');
            }
            Ok(StartupPacket::GssEncRequest) if !self.gss_answered => {
                self.gss_answered = true;
                self.out.push(b'N');
            }
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                self.fail("08P01", "encryption requested twice".into(), None)
            }
            Ok(StartupPacket::Cancel { pid, key }) => {
                debug!("{}: cancel request", self.addr);
                return Some(Verdict::Cancel { pid, key });
            }
            Ok(StartupPacket::Startup(s)) => self.start_login(s, env),
        }
        Some(Verdict::Wait)
    }

    fn start_login(&mut self, s: Startup, env: &Env<'_>) {
        if s.minor > 0 || !s.protocol_options.is_empty() {
            backend::negotiate_protocol_version(&mut self.out, 0, &s.protocol_options);
        }
        let (Some(user), Some(database)) = (s.user(), s.database()) else {
            self.fail("28000", "no PostgreSQL user name specified in startup packet".into(), None);
            return;
        };
        let (user, database) = (user.to_owned(), database.to_owned());
        let params = s.params.into_iter().filter(|(n, _)| n != "user" && n != "database").collect();
        self.login = Some(LoginInfo { database: database.clone(), user: user.clone(), params, scram_client_key: None });
        info!("{} login attempt: db={database} user={user} tls=no", self.who());
        let console = crate::admin::is_console_database(&database);
        if console && self.addr == "unix" && crate::admin::is_own_user_over_unix(&self.sock, &user) {
            // PgBouncer lets the OS user running it into the console over the Unix socket without a password.
            self.peer_admin = true;
            self.phase = Phase::HandingOff;
            return;
        }
        if !console && env.config.database(&database).is_none() {
            self.fail("3D000", format!("no such database: {database}"), None);
            return;
        }
        let pooler = &env.config.pooler;
        let (auth, step) =
            ClientAuth::start(pooler.auth_type, &user, env.userlist.get(&user), pooler.auth_file.is_some());
        self.phase = Phase::Authenticating(Box::new(auth));
        self.apply(step);
    }

    fn apply(&mut self, step: AuthStep) {
        match step {
            AuthStep::Send(bytes) => self.out.extend_from_slice(&bytes),
            AuthStep::Done(bytes) => {
                self.out.extend_from_slice(&bytes);
                if let (Phase::Authenticating(a), Some(login)) = (&self.phase, self.login.as_mut()) {
                    login.scram_client_key = a.scram_client_key();
                }
                self.phase = Phase::HandingOff;
            }
            AuthStep::Fail { code, message } => {
                let detail = match &self.phase {
                    Phase::Authenticating(a) => a.failure_detail().map(str::to_owned),
                    _ => None,
                };
                self.fail(code, message, detail.as_deref());
            }
        }
    }

    /// Authenticated to the console database: admin_users (or the OS user over the Unix socket) get every command,
    /// stats_users SHOW only, anybody else is refused as PgBouncer refuses them.
    fn start_console(&mut self, env: &Env<'_>) {
        let user = self.login.as_ref().map(|l| l.user.clone()).unwrap_or_default();
        let pooler = &env.config.pooler;
        let admin = self.peer_admin || pooler.admin_users.contains(&user);
        if !admin && !pooler.stats_users.contains(&user) {
            self.fail("08P01", "not allowed".into(), None);
            return;
        }
        let mut key = [0u8; 8];
        let _ = pgmux_proto::auth::random_bytes(&mut key);
        let [a, b, c, d, e, f, g, h] = key;
        // The console cannot be cancelled (a CancelRequest names no session); its key is only for clients that
        // expect one.
        Console::greeting(
            &mut self.out,
            u32::from_be_bytes([a, b, c, d]) & 0x7fff_ffff,
            u32::from_be_bytes([e, f, g, h]),
        );
        info!("console login: user={user} addr={} ({})", self.addr, if admin { "admin" } else { "stats" });
        self.phase = Phase::Console(Box::new(Console::new(admin)));
    }

    /// Runs the console until it waits. None: continue the connection's loop (bytes to flush, or it closes).
    fn advance_console(&mut self, env: &Env<'_>) -> Option<Verdict> {
        let local = Local { login_clients: env.connections };
        loop {
            let Phase::Console(console) = &mut self.phase else { return None };
            match console.on_input(&mut self.inbuf, &local) {
                Step::Send(bytes) => {
                    self.out.extend_from_slice(&bytes);
                    return None;
                }
                Step::Ask(command) => return Some(Verdict::Admin(command)),
                Step::Close(bytes) => {
                    self.out.extend_from_slice(&bytes);
                    self.inbuf = Vec::new();
                    self.phase = Phase::Closing { deadline: Instant::now() + CLOSE_LINGER, shut: false, discarded: 0 };
                    return None;
                }
                Step::Wait if console.waiting_for().is_some() || !self.readable => return Some(Verdict::Wait),
                Step::Wait => {}
            }
            // A whole console query is at most 64 KiB; more buffered than that has already been refused.
            match self.sock.read_into(&mut self.inbuf, READ_CHUNK) {
                Ok(ReadOutcome::Data { .. }) => {}
                Ok(ReadOutcome::WouldBlock) => self.readable = false,
                Ok(ReadOutcome::Eof) | Err(_) => return Some(Verdict::Drop),
            }
        }
    }

    /// Logs why the login failed, queues the FATAL error and starts closing.
    fn fail(&mut self, code: &str, message: String, detail: Option<&str>) {
        let why = match detail {
            Some(d) if d != message => format!("{message} ({d})"),
            _ => message.clone(),
        };
        // PgBouncer's wording, so existing log alerts keep matching.
        let who = self.who();
        // The client reads PostgreSQL's message ("... for user \"x\""); the log says what PgBouncer's says.
        let reason = if code == "28P01" { "password authentication failed" } else { message.as_str() };
        info!("{who} closing because: {reason} (age={}s)", self.accepted.elapsed().as_secs());
        if code.starts_with("28") {
            warn!("{who} pooler error: {reason}");
        }
        debug!("{who} login failed: {why}");
        backend::error_response(&mut self.out, "FATAL", code, &message);
        self.inbuf = Vec::new();
        self.phase = Phase::Closing { deadline: Instant::now() + CLOSE_LINGER, shut: false, discarded: 0 };
    }

    /// Writes the error; once it is out, shuts our side and discards input until the client hangs up, so the
    /// kernel does not answer unread input with a reset that could destroy the error before the client reads it.
    fn advance_closing(&mut self) -> Verdict {
        if !self.out.is_empty() {
            return Verdict::Wait;
        }
        let Phase::Closing { shut, discarded, .. } = &mut self.phase else { return Verdict::Drop };
        if !*shut {
            *shut = true;
            let _ = socket2::SockRef::from(&self.sock).shutdown(std::net::Shutdown::Write);
        }
        let mut scratch = Vec::new();
        while self.readable {
            scratch.clear();
            match self.sock.read_into(&mut scratch, 4096) {
                Ok(ReadOutcome::Data { n, .. }) => {
                    *discarded += n;
                    if *discarded > MAX_DISCARD {
                        return Verdict::Drop;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => self.readable = false,
                Ok(ReadOutcome::Eof) | Err(_) => return Verdict::Drop,
            }
        }
        Verdict::Wait
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.sock.write(&self.out)?;
            if n == 0 {
                self.writable = false;
                break;
            }
            self.out.drain(..n.min(self.out.len()));
        }
        Ok(())
    }

    /// "C-0x2a: appdb/alice@127.0.0.1:50000" as PgBouncer names clients in its log; "(nodb)/(nouser)" before the
    /// startup packet is known.
    fn who(&self) -> String {
        match &self.login {
            Some(l) => format!("C-0x{:x}: {}/{}@{}", self.cid, l.database, l.user, self.addr),
            None => format!("C-0x{:x}: (nodb)/(nouser)@{}", self.cid, self.addr),
        }
    }
}

fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgmux_proto::frontend;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::thread::JoinHandle;

    struct Harness {
        addr: SocketAddr,
        sup: Channel,
        thread: Option<JoinHandle<i32>>,
    }

    impl Harness {
        fn start(pooler: &str) -> Harness {
            let text = format!("[pooler]\n{pooler}\n[databases.appdb]\nhost = \"127.0.0.1\"\nport = 5432\n");
            let config = Config::parse(&text, Path::new("/tmp/pgmux-listener-test.toml")).unwrap();
            let userlist = UserList::parse("\"alice\" \"s3cret\"\n", Path::new("/tmp/userlist.txt")).unwrap();
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std_listener.set_nonblocking(true).unwrap();
            let addr = std_listener.local_addr().unwrap();
            let (sup, child) = Channel::pair().unwrap();
            let ctx = ListenerContext {
                index: 1,
                config: Arc::new(config),
                userlist: Arc::new(userlist),
                listen: vec![ListenSocket::Tcp { fd: std_listener.into(), addr }],
                channel: child,
                parent: nix::unistd::getppid(),
                metrics: None,
            };
            let thread = Some(std::thread::spawn(move || run(ctx)));
            Harness { addr, sup, thread }
        }

        fn connect(&self) -> TcpStream {
            let s = TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        }

        fn recv(&self) -> (Msg, Vec<OwnedFd>) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(m) = self.sup.recv().unwrap() {
                    return m;
                }
                assert!(Instant::now() < deadline, "no message from the listener");
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        fn shutdown(mut self) -> i32 {
            self.sup.send(&Msg::Shutdown, &[]).unwrap();
            self.thread.take().unwrap().join().unwrap()
        }
    }

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        frontend::startup_message(&mut out, params);
        out
    }

    /// Everything the listener sends until it closes the connection.
    fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    }

    /// The SQLSTATE of the ErrorResponse at the end of `buf`.
    fn sqlstate(buf: &[u8]) -> String {
        let start = buf.iter().position(|&b| b == b'E').expect("an ErrorResponse");
        let fields = &buf[start + 5..];
        let c = fields.windows(2).position(|w| w[0] == 0 && w[1] == b'C').expect("a code field") + 2;
        String::from_utf8(fields[c..c + 5].to_vec()).unwrap()
    }

    #[test]
    fn trust_login_is_handed_off_with_pipelined_bytes() {
        let h = Harness::start("auth_type = \"trust\"");
        let mut c = h.connect();
        c.write_all(b"\0\0\0\x08\x04\xd2\x16\x2f").unwrap();
        let mut n = [0u8; 1];
        c.read_exact(&mut n).unwrap();
        assert_eq!(&n, b"N");
        let mut msg = startup(&[("user", "alice"), ("database", "appdb"), ("application_name", "t")]);
        let mut query = Vec::new();
        frontend::query(&mut query, "SELECT 1");
        msg.extend_from_slice(&query);
        c.write_all(&msg).unwrap();
        let (m, fds) = h.recv();
        let Msg::Login { record } = m else { panic!("expected Login, got {m:?}") };
        assert_eq!(fds.len(), 1);
        assert_eq!((record.database.as_str(), record.user.as_str()), ("appdb", "alice"));
        assert_eq!(record.startup_params, vec![("application_name".to_string(), "t".to_string())]);
        assert_eq!(record.client_addr, c.local_addr().unwrap().to_string());
        assert_eq!(record.pending_input, query);
        assert_eq!(h.shutdown(), 0);
    }

    #[test]
    fn md5_wrong_password_and_right_password() {
        let h = Harness::start("auth_type = \"md5\"");
        for (pw, ok) in [("wrong", false), ("s3cret", true)] {
            let mut c = h.connect();
            c.write_all(&startup(&[("user", "alice"), ("database", "appdb")])).unwrap();
            let mut req = [0u8; 13];
            c.read_exact(&mut req).unwrap();
            assert_eq!(&req[..9], b"R\0\0\0\x0c\0\0\0\x05");
            let salt: [u8; 4] = req[9..13].try_into().unwrap();
            let answer =
                pgmux_proto::auth::md5_salted_response(&pgmux_proto::auth::md5_password_hash("alice", pw), salt);
            let mut msg = Vec::new();
            frontend::password_message(&mut msg, answer.as_bytes());
            c.write_all(&msg).unwrap();
            if ok {
                let (m, fds) = h.recv();
                assert!(matches!(m, Msg::Login { .. }) && fds.len() == 1, "{m:?}");
            } else {
                assert_eq!(sqlstate(&read_all(&mut c)), "28P01");
            }
        }
        assert_eq!(h.shutdown(), 0);
    }

    #[test]
    fn refusals() {
        let h = Harness::start("auth_type = \"md5\"");
        let mut c = h.connect();
        c.write_all(&startup(&[("user", "alice"), ("database", "nope")])).unwrap();
        assert_eq!(sqlstate(&read_all(&mut c)), "3D000");

        let mut c = h.connect();
        c.write_all(&[0, 0, 0x27, 0x11, 0, 3, 0, 0]).unwrap();
        assert_eq!(sqlstate(&read_all(&mut c)), "08P01");

        let mut c = h.connect();
        c.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap();
        assert_eq!(sqlstate(&read_all(&mut c)), "0A000");

        // During authentication only small 'p' messages are valid.
        let mut c = h.connect();
        let mut msg = startup(&[("user", "alice"), ("database", "appdb")]);
        frontend::query(&mut msg, "SELECT 1");
        c.write_all(&msg).unwrap();
        let got = read_all(&mut c);
        assert_eq!(got[0], b'R');
        assert_eq!(sqlstate(&got), "08P01");

        let mut c = h.connect();
        let mut msg = startup(&[("user", "alice"), ("database", "appdb")]);
        msg.extend_from_slice(b"p\x7f\xff\xff\xff");
        c.write_all(&msg).unwrap();
        assert_eq!(sqlstate(&read_all(&mut c)), "08P01");

        // A protocol 3.2 client first learns we speak 3.0.
        let mut c = h.connect();
        let mut msg = startup(&[("user", "alice"), ("database", "nope")]);
        msg[7] = 2;
        c.write_all(&msg).unwrap();
        let got = read_all(&mut c);
        assert_eq!(&got[..13], b"v\0\0\0\x0c\0\0\0\0\0\0\0\0");
        assert_eq!(sqlstate(&got), "3D000");
        assert_eq!(h.shutdown(), 0);
    }

    #[test]
    fn cancel_request_goes_to_the_supervisor() {
        let h = Harness::start("auth_type = \"trust\"");
        let mut c = h.connect();
        c.write_all(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xde\xad\xbe\xef").unwrap();
        let (m, fds) = h.recv();
        assert_eq!(m, Msg::CancelRequest { pid: 12345, key: 0xdead_beef });
        assert!(fds.is_empty());
        assert!(read_all(&mut c).is_empty());
        assert_eq!(h.shutdown(), 0);
    }

    #[test]
    fn login_timeout_and_max_client_conn() {
        let h = Harness::start("auth_type = \"md5\"\nclient_login_timeout = 0.3\nmax_client_conn = 1");
        let mut idle = h.connect();
        std::thread::sleep(Duration::from_millis(50));
        let mut second = h.connect();
        assert_eq!(sqlstate(&read_all(&mut second)), "53300");
        let started = Instant::now();
        let got = read_all(&mut idle);
        assert_eq!(sqlstate(&got), "08P01");
        assert!(got.windows(20).any(|w| w == b"client_login_timeout"));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(h.shutdown(), 0);
    }

    #[test]
    fn channel_closed_exits() {
        let mut h = Harness::start("auth_type = \"trust\"");
        let thread = h.thread.take().unwrap();
        drop(h);
        assert_eq!(thread.join().unwrap(), 0);
    }
}
