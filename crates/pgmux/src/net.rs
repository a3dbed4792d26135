//! A non-blocking stream socket owned as an `OwnedFd`, used for client sockets that arrive by SCM_RIGHTS (TCP or
//! Unix-domain, pgmux does not care which) and for upstream connections.
//!
//! Reads append to a caller's `Vec<u8>` so buffers are reused; writes use `MSG_NOSIGNAL` so a vanished peer is an
//! `EPIPE`, never a signal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

/// What one read attempt saw.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were appended; `drained` is true when the read came back short, which on a stream socket
    /// means the kernel had nothing more at that moment. With edge-triggered epoll, later data raises a new event,
    /// so the caller may treat the socket as not readable without paying for a read that returns EAGAIN.
    Data { n: usize, drained: bool },
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> io::Result<Conn> {
        let conn = Conn { fd };
        conn.set_nonblocking(true)?;
        Ok(conn)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let sock = socket2::SockRef::from(&self.fd);
        sock.set_nonblocking(on)
    }

    pub fn set_nodelay(&self) {
        // Fails harmlessly on Unix-domain sockets.
        let _ = socket2::SockRef::from(&self.fd).set_tcp_nodelay(true);
    }

    /// Read up to `max` bytes, appending to `buf`.
    pub fn read_into(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<ReadOutcome> {
        let start = buf.len();
        buf.reserve(max);
        let spare = buf.capacity() - start;
        let want = spare.min(max);
        loop {
            // SAFETY: the pointer and length describe the vector's spare capacity, which `reserve` guaranteed; the
            // kernel writes at most `want` bytes there, and only the bytes it reports are exposed via `set_len`.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().add(start) as *mut libc::c_void, want, 0) };
            if n > 0 {
                let n = n as usize;
                // SAFETY: the kernel initialised exactly `n` bytes after `start`.
                unsafe { buf.set_len(start + n) };
                return Ok(ReadOutcome::Data { n, drained: n < want });
            }
            if n == 0 {
                return Ok(ReadOutcome::Eof);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
                _ => return Err(err),
            }
        }
    }

    /// Write as much of `data` as the socket takes; Ok(0) means it would block.
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is a valid readable slice for its whole length.
            let n = unsafe {
                libc::send(self.fd.as_raw_fd(), data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// Write everything, blocking in poll(2) up to `timeout` if needed. For small best-effort messages (errors
    /// before a close, cancel requests), never for the hot path.
    pub fn write_all_timeout(&self, mut data: &[u8], timeout: std::time::Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !data.is_empty() {
            let n = self.write(data)?;
            data = data.get(n..).unwrap_or_default();
            if n == 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
                }
                self.wait(libc::POLLOUT, left)?;
            }
        }
        Ok(())
    }

    /// Block in poll(2) until the socket is ready for `events` or `timeout` passes.
    pub fn wait(&self, events: libc::c_short, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(r > 0)
    }

    /// Send FIN: the peer sees the end of our output while we may still read its input.
    pub fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
