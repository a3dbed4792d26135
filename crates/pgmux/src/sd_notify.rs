//! systemd's readiness protocol (`Type=notify`): datagrams such as `READY=1` sent to the socket named by
//! `$NOTIFY_SOCKET`, so PgBouncer's unit file works with the binary swapped.
//!
//! Nothing happens when the variable is unset (not run by systemd). Abstract socket names (`@...`) are supported.
//! Errors are logged once and otherwise ignored: a pooler must not stop because its service manager went away.

use std::os::unix::net::UnixDatagram;

use log::debug;

/// Sends `state` (e.g. "READY=1\nSTATUS=...") to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            debug!("sd_notify: socket: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_addr(name).and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr)),
        None => sock.send_to(state.as_bytes(), std::path::Path::new(&path)),
    };
    if let Err(e) = result {
        debug!("sd_notify {state:?}: {e}");
    }
}

fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}
