//! The listen sockets: bound once by the supervisor before any child exists, inherited by every listener.
//!
//! Binding happens only after the configuration has been validated, so a bad config never leaves a socket behind.
//! The Unix socket file is removed on a clean shutdown; a stale file from a crashed run is replaced only when nothing
//! answers on it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use socket2::{Domain, Socket, Type};

/// One listening socket, TCP or Unix-domain, non-blocking.
#[derive(Debug)]
pub enum ListenSocket {
    Tcp { fd: OwnedFd, addr: SocketAddr },
    Unix { fd: OwnedFd, path: PathBuf },
}

impl ListenSocket {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            ListenSocket::Tcp { fd, .. } | ListenSocket::Unix { fd, .. } => fd.as_fd(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ListenSocket::Tcp { addr, .. } => addr.to_string(),
            ListenSocket::Unix { path, .. } => path.display().to_string(),
        }
    }
}

#[derive(Debug)]
pub struct BindError {
    pub what: String,
    pub source: std::io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not listen on {}: {}", self.what, self.source)
    }
}

impl std::error::Error for BindError {}

const BACKLOG: i32 = 4096;

/// Bind every configured address. `addrs` are textual IPs ("0.0.0.0", "::", "127.0.0.1"); hostnames are resolved.
pub fn bind_all(addrs: &[String], port: u16, unix_dir: Option<&Path>) -> Result<Vec<ListenSocket>, BindError> {
    let mut out = Vec::new();
    for a in addrs {
        for addr in resolve(a, port)? {
            out.push(bind_tcp(addr)?);
        }
    }
    if let Some(dir) = unix_dir {
        out.push(bind_unix(&dir.join(format!(".s.PGSQL.{port}")))?);
    }
    Ok(out)
}

/// The Prometheus endpoint's socket: `metrics_listen` is `ip:port`, `[v6]:port` or `host:port` (bound to the first
/// address the host resolves to).
pub fn bind_metrics(addr: &str) -> Result<ListenSocket, BindError> {
    let what = format!("{addr} (metrics_listen)");
    let resolved = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            use std::net::ToSocketAddrs;
            let mut all = addr.to_socket_addrs().map_err(|e| BindError { what: what.clone(), source: e })?;
            all.next().ok_or_else(|| BindError {
                what: what.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address"),
            })?
        }
    };
    bind_tcp(resolved).map_err(|e| BindError { what, source: e.source })
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, BindError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map(|it| it.collect())
        .map_err(|e| BindError { what: format!("{host}:{port}"), source: e })
}

fn bind_tcp(addr: SocketAddr) -> Result<ListenSocket, BindError> {
    let err = |e| BindError { what: addr.to_string(), source: e };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), None).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // "*" binds 0.0.0.0 and :: separately; keep the v6 socket v6-only so both can bind.
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(BACKLOG).map_err(err)?;
    let bound = sock.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
    Ok(ListenSocket::Tcp { fd: sock.into(), addr: bound })
}

fn bind_unix(path: &Path) -> Result<ListenSocket, BindError> {
    let err = |e| BindError { what: path.display().to_string(), source: e };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another server is listening on this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    // Everyone may connect, as with PostgreSQL's default unix_socket_permissions; authentication decides.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777));
    // UnixListener has no backlog knob; re-listen with a large one (listen(2) on a listening socket updates it).
    let fd: OwnedFd = listener.into();
    let sock = Socket::from(fd);
    sock.listen(BACKLOG).map_err(err)?;
    Ok(ListenSocket::Unix { fd: sock.into(), path: path.to_path_buf() })
}

/// Removes the Unix socket files when the supervisor's `main` returns, whichever way it returns. Forked children
/// carry a copy of this value but leave with `exit`, which runs no destructors, so only the supervisor removes them.
pub struct SocketFiles(Vec<PathBuf>);

impl SocketFiles {
    pub fn of(sockets: &[ListenSocket]) -> SocketFiles {
        SocketFiles(
            sockets
                .iter()
                .filter_map(|s| match s {
                    ListenSocket::Unix { path, .. } => Some(path.clone()),
                    ListenSocket::Tcp { .. } => None,
                })
                .collect(),
        )
    }
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
