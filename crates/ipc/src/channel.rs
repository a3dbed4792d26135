//! The channel between two pgmux processes: a non-blocking `SOCK_SEQPACKET` socketpair end that carries one
//! [`Msg`] per packet, with the message's file descriptors in the same `sendmsg` (SCM_RIGHTS).
//!
//! It owns the fd-passing rules: received fds are close-on-exec (`MSG_CMSG_CLOEXEC`), a truncated payload or control
//! message is an error, and the number of fds that arrived must match what the message declares. Every fd that did
//! arrive is owned (and so closed) before any error is returned, so nothing leaks.
//!
//! [`Outbox`] queues what a channel cannot take right now, so a process never blocks on a slow peer.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};

use crate::message::{MessageError, Msg};

/// Largest payload a channel sends or receives. It fits the default unix socket send buffer, so one message never
/// needs more than one `sendmsg`.
pub const MAX_MSG_LEN: usize = 200 * 1024;
/// Most fds one message may carry; the receive control buffer has room for exactly this many.
pub const MAX_FDS: usize = 4;
/// Most messages an [`Outbox`] holds before refusing more.
pub const MAX_QUEUED_MSGS: usize = 100_000;
/// Most payload bytes an [`Outbox`] holds before refusing more.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const CMSG_BUF_LEN: usize = unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) } as usize;

/// A control buffer aligned for `cmsghdr`, as the CMSG_* macros require.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; CMSG_BUF_LEN],
}

/// What went wrong on a channel.
#[derive(Debug)]
pub enum IpcError {
    /// The socket buffer is full; try again when the channel is writable.
    WouldBlock,
    /// The peer process closed its end (or died).
    Closed,
    Io {
        op: &'static str,
        source: io::Error,
    },
    /// The payload is longer than [`MAX_MSG_LEN`].
    TooLarge(usize),
    /// The message declares `expected` fds but `got` were passed or arrived.
    FdCountMismatch {
        expected: usize,
        got: usize,
    },
    /// More fds were sent than the receiver has room for (MSG_CTRUNC).
    ControlTruncated,
    /// The payload was longer than the receive buffer (MSG_TRUNC).
    PayloadTruncated,
    Decode(MessageError),
}

impl fmt::Display for IpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpcError::WouldBlock => write!(f, "ipc channel: send would block"),
            IpcError::Closed => write!(f, "ipc channel: peer closed"),
            IpcError::Io { op, source } => write!(f, "ipc channel: {op}: {source}"),
            IpcError::TooLarge(len) => {
                write!(f, "ipc channel: message of {len} bytes exceeds {MAX_MSG_LEN}")
            }
            IpcError::FdCountMismatch { expected, got } => {
                write!(f, "ipc channel: message carries {expected} fds but {got} were given")
            }
            IpcError::ControlTruncated => {
                write!(f, "ipc channel: control message truncated (more than {MAX_FDS} fds sent)")
            }
            IpcError::PayloadTruncated => {
                write!(f, "ipc channel: payload truncated (peer sent more than {MAX_MSG_LEN} bytes)")
            }
            IpcError::Decode(e) => write!(f, "ipc channel: {e}"),
        }
    }
}

impl std::error::Error for IpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IpcError::Io { source, .. } => Some(source),
            IpcError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// One end of a channel between two processes.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Channel {
    /// A connected, non-blocking, close-on-exec `SOCK_SEQPACKET` pair.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited socketpair end. The caller decides its blocking mode.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let bits = fcntl(&self.fd, FcntlArg::F_GETFL)?;
        let mut flags = OFlag::from_bits_retain(bits);
        flags.set(OFlag::O_NONBLOCK, nonblocking);
        fcntl(&self.fd, FcntlArg::F_SETFL(flags))?;
        Ok(())
    }

    /// Sends `msg` with exactly `msg.fd_count()` fds in one `sendmsg`.
    pub fn send(&self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        check_fd_count(msg, fds.len())?;
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        self.send_encoded(&payload, fds)
    }

    /// Sends an already encoded payload with `fds`, unchecked against the message: the receiver still checks.
    /// An empty payload is refused because the peer would read it as end-of-stream.
    pub fn send_encoded(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        if payload.len() > MAX_MSG_LEN {
            return Err(IpcError::TooLarge(payload.len()));
        }
        if payload.is_empty() {
            return Err(IpcError::Io {
                op: "sendmsg",
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty payload"),
            });
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(payload)];
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) if n == payload.len() => return Ok(()),
                // SOCK_SEQPACKET sends are atomic; a short count would mean the socket is not what we think.
                Ok(n) => {
                    return Err(IpcError::Io {
                        op: "sendmsg",
                        source: io::Error::other(format!("short send: {n} of {} bytes", payload.len())),
                    })
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(IpcError::WouldBlock),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(IpcError::Closed),
                Err(e) => return Err(IpcError::Io { op: "sendmsg", source: e.into() }),
            }
        }
    }

    /// Receives one message and its fds; `Ok(None)` when nothing is waiting.
    pub fn recv(&self) -> Result<Option<(Msg, Vec<OwnedFd>)>, IpcError> {
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_MSG_LEN);
        let mut cmsg = CmsgBuf { _align: [], bytes: [0; CMSG_BUF_LEN] };
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: MAX_MSG_LEN };
        let (len, mhdr) = loop {
            // SAFETY: msghdr is plain data for which all-zero is a valid value (null pointers, zero lengths).
            let mut mhdr: libc::msghdr = unsafe { mem::zeroed() };
            mhdr.msg_iov = &mut iov;
            mhdr.msg_iovlen = 1;
            mhdr.msg_control = cmsg.bytes.as_mut_ptr().cast();
            mhdr.msg_controllen = CMSG_BUF_LEN as _;
            // SAFETY: the fd is open for the lifetime of self; iov points at MAX_MSG_LEN writable bytes of buf's
            // capacity and msg_control at CMSG_BUF_LEN writable, cmsghdr-aligned bytes, both alive for the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut mhdr, libc::MSG_CMSG_CLOEXEC) };
            if let Ok(n) = usize::try_from(n) {
                break (n, mhdr);
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Ok(None),
                Errno::ECONNRESET => return Err(IpcError::Closed),
                e => return Err(IpcError::Io { op: "recvmsg", source: e.into() }),
            }
        };
        // Own every fd that arrived before looking at anything else, so every error path below closes them.
        // SAFETY: mhdr was filled in by a successful recvmsg and its control buffer (cmsg) is still alive.
        let fds = unsafe { take_fds(&mhdr) };
        // SAFETY: recvmsg wrote `len` bytes (len <= iov_len == MAX_MSG_LEN <= capacity) at the start of buf.
        unsafe { buf.set_len(len.min(MAX_MSG_LEN)) };

        if mhdr.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(IpcError::ControlTruncated);
        }
        if mhdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(IpcError::PayloadTruncated);
        }
        if buf.is_empty() {
            return Err(IpcError::Closed);
        }
        let msg = Msg::decode(&buf).map_err(IpcError::Decode)?;
        check_fd_count(&msg, fds.len())?;
        Ok(Some((msg, fds)))
    }
}

fn check_fd_count(msg: &Msg, got: usize) -> Result<(), IpcError> {
    let expected = msg.fd_count();
    if got == expected {
        Ok(())
    } else {
        Err(IpcError::FdCountMismatch { expected, got })
    }
}

/// Takes ownership of every fd in the SCM_RIGHTS messages of `mhdr`, including the ones that fit before a
/// truncation (the kernel installs those in our table even when it sets MSG_CTRUNC).
///
/// # Safety
/// SAFETY: `mhdr` must have been filled in by a successful `recvmsg`, with its control buffer still alive; every
/// pointer walked here comes from the CMSG_* macros over that buffer and its reported length.
// msg_controllen and cmsg_len are size_t on glibc but u32 on musl: the casts are needed somewhere.
#[allow(clippy::unnecessary_cast)]
unsafe fn take_fds(mhdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    let control_start = mhdr.msg_control as usize;
    let control_end = control_start.saturating_add(mhdr.msg_controllen as usize);
    // SAFETY: per the contract, mhdr describes a valid control buffer of msg_controllen bytes.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(mhdr) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie within msg_controllen.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: cmsg is a valid header within the buffer; CMSG_DATA/CMSG_LEN are pointer/size arithmetic.
            let data: *const u8 = unsafe { libc::CMSG_DATA(cmsg) };
            // SAFETY: CMSG_LEN only does arithmetic on its argument.
            let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
            let declared = (hdr.cmsg_len as usize).saturating_sub(header_len);
            // Never read past what the kernel said it wrote, whatever the header claims.
            let available = control_end.saturating_sub(data as usize);
            let count = declared.min(available) / mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: data + i * 4 lies within the control buffer (checked above); the bytes may be unaligned.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed this fd in our table for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: mhdr and cmsg are valid as above; CMSG_NXTHDR returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(mhdr, cmsg) };
    }
    fds
}

struct Queued {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Messages waiting for a channel to become writable, sent in order. Our copies of their fds stay open until the
/// message has gone, then are closed.
#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<Queued>,
    bytes: usize,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").field("messages", &self.queue.len()).field("bytes", &self.bytes).finish()
    }
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends `msg` now if nothing is queued and the channel takes it, else queues it. `fds` are closed once the
    /// message has gone (or immediately, if it is refused).
    pub fn send(&mut self, ch: &Channel, msg: &Msg, fds: Vec<OwnedFd>) -> Result<(), IpcError> {
        check_fd_count(msg, fds.len())?;
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        if payload.len() > MAX_MSG_LEN {
            return Err(IpcError::TooLarge(payload.len()));
        }
        if self.queue.is_empty() {
            match ch.send_encoded(&payload, &borrow_all(&fds)) {
                Ok(()) => return Ok(()),
                Err(IpcError::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        if self.queue.len() >= MAX_QUEUED_MSGS || self.bytes + payload.len() > MAX_QUEUED_BYTES {
            return Err(IpcError::Io {
                op: "outbox enqueue",
                source: io::Error::other(format!(
                    "outbox full: {} messages, {} bytes queued",
                    self.queue.len(),
                    self.bytes
                )),
            });
        }
        self.bytes += payload.len();
        self.queue.push_back(Queued { payload, fds });
        Ok(())
    }

    /// Sends queued messages in order: `Ok(true)` when the queue is empty, `Ok(false)` when the channel is full
    /// again (wait for writability and call again).
    pub fn flush(&mut self, ch: &Channel) -> Result<bool, IpcError> {
        while let Some(front) = self.queue.front() {
            match ch.send_encoded(&front.payload, &borrow_all(&front.fds)) {
                Ok(()) => {
                    self.bytes -= front.payload.len();
                    self.queue.pop_front();
                }
                Err(IpcError::WouldBlock) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SessionRecord;
    use nix::fcntl::FdFlag;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use nix::unistd::{pipe2, read, write};
    use std::sync::Mutex;

    /// Tests that count open fds must not run while another test opens or closes some.
    static FD_LOCK: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        FD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    fn assign() -> Msg {
        Msg::Assign {
            record: SessionRecord {
                session_id: 17,
                database: "app".into(),
                user: "alice".into(),
                ..SessionRecord::default()
            },
        }
    }

    fn encoded(m: &Msg) -> Vec<u8> {
        let mut v = Vec::new();
        m.encode(&mut v);
        v
    }

    fn raw_send(ch: &Channel, payload: &[u8], fds: &[RawFd]) {
        let rights = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(ch.as_raw_fd(), &[IoSlice::new(payload)], &rights, MsgFlags::empty(), None).unwrap();
    }

    #[test]
    fn assign_passes_a_working_cloexec_fd() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC).unwrap();
        a.send(&assign(), &[wr.as_fd()]).unwrap();
        drop(wr);
        let (msg, fds) = b.recv().unwrap().unwrap();
        assert_eq!(msg, assign());
        assert_eq!(fds.len(), 1);
        let fd_flags = FdFlag::from_bits_retain(fcntl(&fds[0], FcntlArg::F_GETFD).unwrap());
        assert!(fd_flags.contains(FdFlag::FD_CLOEXEC));
        write(&fds[0], b"hello").unwrap();
        drop(fds);
        let mut got = [0u8; 16];
        let n = read(&rd, &mut got).unwrap();
        assert_eq!(&got[..n], b"hello");
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn messages_without_fds_round_trip() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let msgs = [
            Msg::Shutdown,
            Msg::CancelRequest { pid: 1, key: 2 },
            Msg::WorkerStatus { upstream_up: true, sessions: 5 },
        ];
        for m in &msgs {
            a.send(m, &[]).unwrap();
        }
        for m in &msgs {
            let (got, fds) = b.recv().unwrap().unwrap();
            assert_eq!((&got, fds.len()), (m, 0));
        }
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn largest_message_round_trips_and_larger_is_refused() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let mut record = SessionRecord::default();
        let overhead = encoded(&Msg::Assign { record: record.clone() }).len();
        record.pending_input = vec![7; MAX_MSG_LEN - overhead];
        let big = Msg::Assign { record };
        assert_eq!(encoded(&big).len(), MAX_MSG_LEN);
        let (_rd, wr) = pipe2(OFlag::O_CLOEXEC).unwrap();
        a.send(&big, &[wr.as_fd()]).unwrap();
        let (got, fds) = b.recv().unwrap().unwrap();
        assert_eq!((got, fds.len()), (big.clone(), 1));

        let Msg::Assign { mut record } = big else { unreachable!() };
        record.pending_input.push(0);
        let err = a.send(&Msg::Assign { record }, &[wr.as_fd()]).unwrap_err();
        assert!(matches!(err, IpcError::TooLarge(n) if n == MAX_MSG_LEN + 1));
    }

    #[test]
    fn oversized_payload_is_payload_truncated() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let mut payload = encoded(&Msg::Shutdown);
        payload.resize(MAX_MSG_LEN + 1, 0);
        raw_send(&a, &payload, &[]);
        assert!(matches!(b.recv(), Err(IpcError::PayloadTruncated)));
    }

    #[test]
    fn send_checks_fd_count_locally() {
        let _g = lock();
        let (a, _b) = Channel::pair().unwrap();
        let err = a.send(&assign(), &[]).unwrap_err();
        assert!(matches!(err, IpcError::FdCountMismatch { expected: 1, got: 0 }));
        let err = a.send(&Msg::Shutdown, &[a.as_fd()]).unwrap_err();
        assert!(matches!(err, IpcError::FdCountMismatch { expected: 0, got: 1 }));
    }

    #[test]
    fn received_fd_count_mismatch_detected_and_closed() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        // An Assign without its fd.
        a.send_encoded(&encoded(&assign()), &[]).unwrap();
        assert!(matches!(b.recv(), Err(IpcError::FdCountMismatch { expected: 1, got: 0 })));
        // A Shutdown with an fd it should not carry: the fd must be closed, not leaked.
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let before = open_fds();
        a.send_encoded(&encoded(&Msg::Shutdown), &[wr.as_fd()]).unwrap();
        drop(wr);
        assert!(matches!(b.recv(), Err(IpcError::FdCountMismatch { expected: 0, got: 1 })));
        assert_eq!(open_fds(), before - 1);
        // Every write end is closed, so the pipe reads end-of-file.
        let mut buf = [0u8; 1];
        assert_eq!(read(&rd, &mut buf).unwrap(), 0);
    }

    #[test]
    fn too_many_fds_is_control_truncated_without_leaks() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let before = open_fds();
        let dups: Vec<OwnedFd> = (0..6).map(|_| wr.try_clone().unwrap()).collect();
        let raw: Vec<RawFd> = dups.iter().map(AsRawFd::as_raw_fd).collect();
        raw_send(&a, &encoded(&Msg::Shutdown), &raw);
        drop(dups);
        assert_eq!(open_fds(), before);
        assert!(matches!(b.recv(), Err(IpcError::ControlTruncated)));
        assert_eq!(open_fds(), before);
        drop(wr);
        let mut buf = [0u8; 1];
        assert_eq!(read(&rd, &mut buf).unwrap(), 0);
    }

    #[test]
    fn garbage_payload_is_decode_error() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        a.send_encoded(&[0xEE, 1, 2], &[]).unwrap();
        assert!(matches!(b.recv(), Err(IpcError::Decode(MessageError::UnknownTag(0xEE)))));
    }

    #[test]
    fn peer_closed() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        a.send(&Msg::Shutdown, &[]).unwrap();
        drop(a);
        // What was sent before the close is still delivered, then the close is reported.
        assert_eq!(b.recv().unwrap().unwrap().0, Msg::Shutdown);
        assert!(matches!(b.recv(), Err(IpcError::Closed)));
        assert!(matches!(b.send(&Msg::Shutdown, &[]), Err(IpcError::Closed)));
        assert!(matches!(Outbox::new().send(&b, &Msg::Shutdown, Vec::new()), Err(IpcError::Closed)));
    }

    #[test]
    fn set_nonblocking_toggles_the_flag() {
        let _g = lock();
        let (a, _b) = Channel::pair().unwrap();
        let nonblocking =
            |ch: &Channel| OFlag::from_bits_retain(fcntl(ch, FcntlArg::F_GETFL).unwrap()).contains(OFlag::O_NONBLOCK);
        assert!(nonblocking(&a));
        a.set_nonblocking(false).unwrap();
        assert!(!nonblocking(&a));
        a.set_nonblocking(true).unwrap();
        assert!(nonblocking(&a));
        let a = Channel::from_fd(a.into_fd());
        assert!(nonblocking(&a));
    }

    #[test]
    fn outbox_queues_on_would_block_and_flushes_in_order() {
        let _g = lock();
        let (a, b) = Channel::pair().unwrap();
        let mut filler = 0u64;
        loop {
            match a.send(&Msg::Cancel { session_id: filler }, &[]) {
                Ok(()) => filler += 1,
                Err(IpcError::WouldBlock) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        assert!(filler > 0);

        let mut outbox = Outbox::new();
        let (rd, wr) = pipe2(OFlag::O_CLOEXEC).unwrap();
        outbox.send(&a, &assign(), vec![wr]).unwrap();
        assert_eq!(outbox.len(), 1);
        outbox.send(&a, &Msg::SessionClosed { session_id: 99 }, Vec::new()).unwrap();
        assert_eq!(outbox.len(), 2);
        assert!(!outbox.flush(&a).unwrap());
        assert_eq!(outbox.len(), 2);

        for i in 0..filler {
            let (m, _) = b.recv().unwrap().unwrap();
            assert_eq!(m, Msg::Cancel { session_id: i });
        }
        assert!(b.recv().unwrap().is_none());

        assert!(outbox.flush(&a).unwrap());
        assert!(outbox.is_empty());
        let (m, passed) = b.recv().unwrap().unwrap();
        assert_eq!((m, passed.len()), (assign(), 1));
        let (m, fds) = b.recv().unwrap().unwrap();
        assert_eq!((m, fds.len()), (Msg::SessionClosed { session_id: 99 }, 0));

        // The outbox closed its copy of the write end once the message went: after dropping the received one the
        // pipe reads end-of-file.
        write(&passed[0], b"x").unwrap();
        drop(passed);
        let mut buf = [0u8; 4];
        assert_eq!(read(&rd, &mut buf).unwrap(), 1);
        assert_eq!(read(&rd, &mut buf).unwrap(), 0);

        // With an empty queue and a writable channel, send goes out immediately.
        outbox.send(&a, &Msg::Shutdown, Vec::new()).unwrap();
        assert!(outbox.is_empty());
        assert_eq!(b.recv().unwrap().unwrap().0, Msg::Shutdown);
    }

    #[test]
    fn outbox_refuses_wrong_fd_count() {
        let _g = lock();
        let (a, _b) = Channel::pair().unwrap();
        let mut outbox = Outbox::new();
        assert!(matches!(outbox.send(&a, &assign(), Vec::new()), Err(IpcError::FdCountMismatch { .. })));
        assert!(outbox.is_empty());
    }
}
