//! The status board: a shared-memory table where each worker publishes what its upstream is doing, so siblings and
//! the supervisor can see, without a message, which workers of a pool are idle.
//!
//! The supervisor maps it (`MAP_SHARED | MAP_ANONYMOUS`) before forking anything, so every child inherits the same
//! pages. Slot `i` belongs to the worker in the supervisor's child slot `i`: the supervisor fills `pool` and `pid`
//! when it starts the worker and clears them when it reaps it; the worker alone writes the rest. Everything is an
//! atomic read or written with relaxed ordering: the board holds hints for scheduling decisions (where to move a
//! waiting session), never facts that correctness depends on, and a stale value costs at most one wasted move.
//!
//! One entry is a fact: the **exposed** sessions, those whose client may have seen part of a reply or whose bytes
//! the worker has read (the owner of the upstream, sessions with output not yet written or input not yet acted on,
//! or state not yet reported). A worker publishes a session as exposed *before* it reads from or writes to that
//! session's socket. When a worker dies, the supervisor re-homes every session it holds that was not exposed (its
//! request, if any, is still in the kernel) and closes the exposed ones. Writes made by a process that has died
//! are all visible to the supervisor, which still maps the pages.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Child slots beyond this have no board entry (their workers simply publish nothing).
pub const BOARD_SLOTS: usize = 4096;

/// What a worker's upstream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Starting, or no worker in this slot.
    Unknown,
    /// Connected, nobody owns the upstream and nobody waits: a session sent here is served at once.
    Idle,
    /// A session owns the upstream (or pgmux runs clean-up on it).
    Busy,
    /// Moving its sessions away; takes no new ones.
    Draining,
}

impl State {
    fn code(self) -> u32 {
        match self {
            State::Unknown => 0,
            State::Idle => 1,
            State::Busy => 2,
            State::Draining => 3,
        }
    }

    fn from_code(c: u32) -> State {
        match c {
            1 => State::Idle,
            2 => State::Busy,
            3 => State::Draining,
            _ => State::Unknown,
        }
    }
}

/// Exposed sessions a slot can list; with more, the slot says "overflow" and all are treated as exposed.
pub const EXPOSED_MAX: usize = 10;
const OVERFLOW: u32 = u32::MAX;

/// One worker's entry. 128 bytes (two cache lines of its own), so two workers never write the same cache line.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Slot {
    /// Pool index + 1; 0 = no worker here. Written by the supervisor.
    pool: AtomicU32,
    /// Written by the supervisor.
    pid: AtomicU32,
    state: AtomicU32,
    /// Sessions waiting for the upstream.
    queued: AtomicU32,
    /// Sessions on this worker.
    sessions: AtomicU32,
    /// How many of `exposed` are valid, or OVERFLOW.
    exposed_count: AtomicU32,
    /// How many more workers the pool may start now (pool size and shared limits). Written by the supervisor each
    /// tick; a worker moves sessions waiting behind a long turn only to idle siblings or into that room.
    room: AtomicU32,
    /// Session id of the upstream's owner; 0 = none.
    owner: AtomicU64,
    /// Since when the first session of the queue has been waiting (CLOCK_MONOTONIC ns); 0 = nobody waits. The
    /// supervisor opens the reserve pool when this is older than `reserve_pool_timeout`.
    waiting_since: AtomicU64,
    exposed: [AtomicU64; EXPOSED_MAX],
}

/// A worker's published status, as read by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub pool: usize,
    pub pid: u32,
    pub state: State,
    pub queued: u32,
    pub sessions: u32,
    pub owner: u64,
    pub waiting_since_ns: u64,
}

/// The mapping. Each process has its own `Board` value over the same shared pages; it unmaps on drop.
pub struct Board {
    base: NonNull<Slot>,
    len: usize,
}

impl Board {
    /// Maps a zeroed board of [`BOARD_SLOTS`] slots, shared with every child forked afterwards.
    pub fn new() -> io::Result<Board> {
        let len = BOARD_SLOTS;
        // One more slot at the end: its `pool` field is the number of slots ever claimed (see `in_use`).
        let bytes = (len + 1) * std::mem::size_of::<Slot>();
        // SAFETY: an anonymous shared mapping with no address hint has no preconditions; the result is checked for
        // MAP_FAILED below. Anonymous pages are zero-filled, which is a valid `Slot` (all atomics 0).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<Slot>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Board { base, len })
    }

    /// The slots up to the highest ever claimed: what a scan for workers needs to look at (the supervisor fills the
    /// lowest free slots, so this is about the number of children, not the board's size).
    fn in_use(&self) -> &[Slot] {
        let high = self.header().pool.load(Ordering::Relaxed) as usize;
        self.slots().get(..high.min(self.len)).unwrap_or_default()
    }

    fn header(&self) -> &Slot {
        // SAFETY: the mapping holds `len + 1` zero-initialised, aligned `Slot`s (see `new`) and stays mapped until
        // `self` is dropped; the extra one is only accessed through its atomics, like the others.
        unsafe { &*self.base.as_ptr().add(self.len) }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: `base` points to `len` zero-initialised, suitably aligned (page-aligned) `Slot`s that stay mapped
        // until `self` is dropped. Other processes write the same memory concurrently, which is sound because every
        // field is only accessed through atomics (the padding is never read).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// Supervisor: a worker of `pool` (pid `pid`) now lives in child slot `slot`.
    pub fn claim(&self, slot: usize, pool: usize, pid: u32) {
        if let Some(s) = self.slots().get(slot) {
            s.state.store(State::Unknown.code(), Ordering::Relaxed);
            s.queued.store(0, Ordering::Relaxed);
            s.sessions.store(0, Ordering::Relaxed);
            s.owner.store(0, Ordering::Relaxed);
            s.waiting_since.store(0, Ordering::Relaxed);
            s.room.store(0, Ordering::Relaxed);
            s.exposed_count.store(0, Ordering::Relaxed);
            s.pid.store(pid, Ordering::Relaxed);
            s.pool.store(u32::try_from(pool + 1).unwrap_or(0), Ordering::Relaxed);
            self.header().pool.fetch_max(u32::try_from(slot + 1).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
    }

    /// Supervisor: the worker in `slot` may count on `room` more workers for its pool.
    pub fn set_room(&self, slot: usize, room: u32) {
        if let Some(s) = self.slots().get(slot) {
            s.room.store(room, Ordering::Relaxed);
        }
    }

    /// Worker: how many more workers its pool may start, as the supervisor last wrote.
    pub fn room(&self, slot: usize) -> u32 {
        self.slots().get(slot).map_or(0, |s| s.room.load(Ordering::Relaxed))
    }

    /// Supervisor: child slot `slot` no longer holds a worker.
    pub fn release(&self, slot: usize) {
        if let Some(s) = self.slots().get(slot) {
            s.pool.store(0, Ordering::Relaxed);
            s.pid.store(0, Ordering::Relaxed);
            s.state.store(State::Unknown.code(), Ordering::Relaxed);
        }
    }

    /// Worker: publish its own status. `exposed` lists the sessions other than `owner` that are exposed;
    /// `waiting_since_ns` is when the first queued session began waiting (0: none waits).
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        slot: usize,
        state: State,
        queued: usize,
        sessions: usize,
        owner: u64,
        waiting_since_ns: u64,
        exposed: &[u64],
    ) {
        if let Some(s) = self.slots().get(slot) {
            s.state.store(state.code(), Ordering::Relaxed);
            s.queued.store(u32::try_from(queued).unwrap_or(u32::MAX), Ordering::Relaxed);
            s.waiting_since.store(waiting_since_ns, Ordering::Relaxed);
            s.sessions.store(u32::try_from(sessions).unwrap_or(u32::MAX), Ordering::Relaxed);
            s.owner.store(owner, Ordering::Relaxed);
            if exposed.len() > EXPOSED_MAX {
                s.exposed_count.store(OVERFLOW, Ordering::Relaxed);
            } else {
                for (cell, id) in s.exposed.iter().zip(exposed) {
                    cell.store(*id, Ordering::Relaxed);
                }
                s.exposed_count.store(exposed.len() as u32, Ordering::Relaxed);
            }
        }
    }

    /// Supervisor, after the worker in `slot` died: the sessions it had exposed (owner included), or `None` when
    /// it cannot tell (too many to list, or no entry), in which case every session must be taken as exposed.
    pub fn exposed(&self, slot: usize) -> Option<Vec<u64>> {
        let s = self.slots().get(slot)?;
        if s.pool.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let count = s.exposed_count.load(Ordering::Relaxed);
        if count == OVERFLOW {
            return None;
        }
        let mut ids: Vec<u64> = s.exposed.iter().take(count as usize).map(|c| c.load(Ordering::Relaxed)).collect();
        let owner = s.owner.load(Ordering::Relaxed);
        if owner != 0 {
            ids.push(owner);
        }
        Some(ids)
    }

    pub fn status(&self, slot: usize) -> Option<Status> {
        let s = self.slots().get(slot)?;
        let pool = s.pool.load(Ordering::Relaxed);
        if pool == 0 {
            return None;
        }
        Some(Status {
            pool: pool as usize - 1,
            pid: s.pid.load(Ordering::Relaxed),
            state: State::from_code(s.state.load(Ordering::Relaxed)),
            queued: s.queued.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
            owner: s.owner.load(Ordering::Relaxed),
            waiting_since_ns: s.waiting_since.load(Ordering::Relaxed),
        })
    }

    /// Workers of `pool` other than the one in `me`: how many are idle, and how many exist.
    pub fn siblings(&self, pool: usize, me: usize) -> (usize, usize) {
        let want = u32::try_from(pool + 1).unwrap_or(0);
        let (mut idle, mut all) = (0, 0);
        for (i, s) in self.in_use().iter().enumerate() {
            if i == me || s.pool.load(Ordering::Relaxed) != want {
                continue;
            }
            match State::from_code(s.state.load(Ordering::Relaxed)) {
                State::Draining => {}
                State::Idle => {
                    idle += 1;
                    all += 1;
                }
                _ => all += 1,
            }
        }
        (idle, all)
    }

    /// The slots that hold workers of `pool` other than `me`, into `out` (a scan of the whole board: callers keep the
    /// list for a while and check it with [`Board::any_idle`]).
    pub fn sibling_slots(&self, pool: usize, me: usize, out: &mut Vec<usize>) {
        let want = u32::try_from(pool + 1).unwrap_or(0);
        out.clear();
        out.extend(
            self.in_use()
                .iter()
                .enumerate()
                .filter(|(i, s)| *i != me && s.pool.load(Ordering::Relaxed) == want)
                .map(|(i, _)| i),
        );
    }

    /// Whether one of `slots` holds an idle worker of `pool` (a few loads: the per-request check).
    pub fn any_idle(&self, pool: usize, slots: &[usize]) -> bool {
        let want = u32::try_from(pool + 1).unwrap_or(0);
        slots.iter().filter_map(|&i| self.slots().get(i)).any(|s| {
            s.pool.load(Ordering::Relaxed) == want && State::from_code(s.state.load(Ordering::Relaxed)) == State::Idle
        })
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: `base` and `len + 1` slots describe exactly the mapping made in `new`, and no reference into it outlives `self`
        // (every accessor borrows `self`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), (self.len + 1) * std::mem::size_of::<Slot>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Slot>(), 128);
    }

    #[test]
    fn exposed_sessions() {
        let b = Board::new().unwrap();
        assert_eq!(b.exposed(2), None, "no worker there: unknown");
        b.claim(2, 0, 10);
        assert_eq!(b.exposed(2), Some(vec![]));
        b.publish(2, State::Busy, 0, 5, 7, 0, &[3, 4]);
        assert_eq!(b.exposed(2), Some(vec![3, 4, 7]));
        b.publish(2, State::Idle, 0, 5, 0, 0, &[]);
        assert_eq!(b.exposed(2), Some(vec![]));
        let many: Vec<u64> = (1..=EXPOSED_MAX as u64 + 1).collect();
        b.publish(2, State::Busy, 0, 20, 99, 0, &many);
        assert_eq!(b.exposed(2), None, "overflow: all exposed");
        b.publish(2, State::Busy, 0, 20, 99, 0, &many[..EXPOSED_MAX]);
        assert_eq!(b.exposed(2).map(|v| v.len()), Some(EXPOSED_MAX + 1));
    }

    #[test]
    fn scans_stop_at_the_highest_claimed_slot() {
        let b = Board::new().unwrap();
        let mut out = Vec::new();
        b.sibling_slots(0, 0, &mut out);
        assert!(out.is_empty());
        b.claim(7, 0, 70);
        b.claim(2, 0, 20);
        b.claim(3, 1, 30);
        b.sibling_slots(0, 2, &mut out);
        assert_eq!(out, vec![7]);
        assert_eq!(b.in_use().len(), 8);
        b.publish(7, State::Idle, 0, 0, 0, 0, &[]);
        assert!(b.any_idle(0, &out));
        assert!(!b.any_idle(1, &out), "slot 7 is pool 0's");
        b.release(7);
        assert!(!b.any_idle(0, &out), "a released slot is nobody's sibling");
        assert_eq!(b.siblings(0, 2), (0, 0));
    }

    #[test]
    fn claim_publish_release() {
        let b = Board::new().unwrap();
        assert_eq!(b.status(3), None);
        b.claim(3, 0, 100);
        b.claim(4, 0, 101);
        b.claim(5, 1, 102);
        assert_eq!(b.siblings(0, 3), (0, 1));
        b.publish(4, State::Idle, 0, 2, 0, 0, &[]);
        b.publish(3, State::Busy, 5, 9, 77, 1234, &[]);
        assert_eq!(b.siblings(0, 3), (1, 1));
        assert_eq!(b.siblings(0, 4), (0, 1));
        assert_eq!(b.siblings(1, 99), (0, 1));
        let s = b.status(3).unwrap();
        assert_eq!((s.pool, s.pid, s.state, s.queued, s.sessions, s.owner), (0, 100, State::Busy, 5, 9, 77));
        assert_eq!(s.waiting_since_ns, 1234);
        assert_eq!(b.room(3), 0);
        b.set_room(3, 2);
        assert_eq!(b.room(3), 2);
        b.publish(4, State::Draining, 0, 2, 0, 0, &[]);
        assert_eq!(b.siblings(0, 3), (0, 0));
        b.release(4);
        assert_eq!(b.status(4), None);
        assert_eq!(b.status(BOARD_SLOTS), None);
        b.publish(BOARD_SLOTS + 1, State::Idle, 0, 0, 0, 0, &[]); // out of range: ignored
    }

    #[test]
    fn shared_with_a_forked_child() {
        let b = Board::new().unwrap();
        b.claim(1, 2, 5);
        // SAFETY: the test harness may run threads, but the child only touches the board and calls _exit.
        match unsafe { libc::fork() } {
            0 => {
                b.publish(1, State::Idle, 0, 3, 0, 0, &[]);
                // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child; `status` is a valid out pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let s = b.status(1).unwrap();
                assert_eq!((s.state, s.sessions), (State::Idle, 3));
            }
            _ => panic!("fork failed"),
        }
    }
}
