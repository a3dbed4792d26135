//! The queue of replies one upstream owes: the multiplexing invariant of a worker lives here.
//!
//! Every frontend message that pgmux sends upstream and that PostgreSQL answers gets an entry, in order: who the
//! answer is for (a session, or pgmux itself) and what to do with it (forward it to the session's client, or swallow
//! it because pgmux added the message). Backend messages are matched against the front of the queue following the
//! protocol's rules: a Query or a Sync is answered up to ReadyForQuery; Parse, Bind and Close by one completion
//! message; Describe by RowDescription or NoData (after an optional ParameterDescription); Execute by rows and a
//! CommandComplete, EmptyQueryResponse or PortalSuspended. An ErrorResponse to an extended-protocol message means
//! PostgreSQL skips every message up to the next Sync, so those entries are dropped too, and any extended message
//! sent before that Sync arrives is skipped the same way.
//!
//! COPY FROM STDIN: PostgreSQL ignores Sync (and Flush) while in copy-in mode. A client using the extended protocol
//! typically sends Bind/Execute/Sync before its CopyData, so when the CopyInResponse arrives, the Sync entries queued
//! behind the COPY up to the client's CopyDone/CopyFail are removed.
//!
//! The worker may hand the upstream to another session only when this queue is empty, or, to a session whose plain
//! simple query was pipelined behind the owner's (`riders`), when nothing more is owed to the owner: every entry
//! names its session, so a reply can never reach the wrong client. A backend message that fits no entry is a desynchronisation: the worker must drop the upstream.

use std::collections::VecDeque;
use std::fmt;

/// Who an upstream reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A client session, by its session id (never a slab index, which can be reused).
    Session(u64),
    /// pgmux itself (settings sync, rollback after a client left, reset queries).
    Pgmux,
    /// A session that has left; its replies are dropped.
    Gone,
}

/// What happens to the replies of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
    /// A message pgmux added on the session's behalf (re-preparing a statement): its success is swallowed, but an
    /// ErrorResponse goes to the session, whose own next messages PostgreSQL will now skip.
    HideOk,
    /// A message pgmux sent only to make PostgreSQL fail the way it would have for the client (a statement name the
    /// session does not have): the upstream's ErrorResponse is replaced by the entry's bytes.
    Replace,
}

/// What the worker must do when an entry is answered or dropped; opaque to this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    None,
    /// A Parse pgmux sent or answered, by the worker's slot number for it.
    Parsed(u32),
    /// A simple Query with effects tied to its statements' success, by the worker's plan number.
    Plan(u32),
}

/// The frontend message an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    FunctionCall,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// Answered by pgmux itself: the entry's bytes go to its owner as soon as it reaches the front (a ParseComplete
    /// for a Parse pgmux did not need to send, a CloseComplete for a session-only Close).
    Synth,
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail) before PostgreSQL's CopyInResponse was seen. It
    /// expects no reply; it marks where copy-in mode ends, because PostgreSQL ignores every Sync it receives while in
    /// copy-in mode and those Syncs must then expect nothing.
    CopyEnd,
}

impl Kind {
    /// The frontend message types that PostgreSQL answers, mapped to their entry kind. Flush, CopyData, CopyDone
    /// and CopyFail get no entry of their own: what they cause is part of the COPY's Query or Execute entry.
    pub fn of_frontend(tag: u8) -> Option<Kind> {
        Some(match tag {
            b'Q' => Kind::Query,
            b'F' => Kind::FunctionCall,
            b'P' => Kind::Parse,
            b'B' => Kind::Bind,
            b'D' => Kind::Describe,
            b'E' => Kind::Execute,
            b'C' => Kind::Close,
            b'S' => Kind::Sync,
            _ => return None,
        })
    }

    /// Answered by ReadyForQuery.
    fn ends_with_ready(self) -> bool {
        matches!(self, Kind::Query | Kind::FunctionCall | Kind::Sync)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    owner: Owner,
    kind: Kind,
    disposition: Disposition,
    action: Action,
    /// Synth: the reply itself. Replace: the ErrorResponse to send instead of the upstream's.
    bytes: Option<Box<[u8]>>,
}

impl Entry {
    fn new(owner: Owner, kind: Kind, disposition: Disposition) -> Entry {
        Entry { owner, kind, disposition, action: Action::None, bytes: None }
    }
}

/// Where one backend message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None for an asynchronous message (notice, parameter status, notification) arriving while nothing is owed.
    pub owner: Option<Owner>,
    pub disposition: Disposition,
    /// Set on ReadyForQuery: the entry it closed.
    pub ready: bool,
    /// The action of the entry this message completed (or failed).
    pub action: Action,
    /// Replace: what to send instead of this ErrorResponse.
    pub replacement: Option<Box<[u8]>>,
}

impl Route {
    fn to(e: &Entry, ready: bool) -> Route {
        Route { owner: Some(e.owner), disposition: e.disposition, ready, action: e.action, replacement: None }
    }

    fn completing(e: Entry, ready: bool) -> Route {
        Route { owner: Some(e.owner), disposition: e.disposition, ready, action: e.action, replacement: e.bytes }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desync {
    pub tag: u8,
    pub expected: Option<Kind>,
}

impl fmt::Display for Desync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expected {
            Some(k) => write!(f, "upstream sent message '{}' while a reply to {:?} was due", self.tag as char, k),
            None => write!(f, "upstream sent message '{}' while no reply was due", self.tag as char),
        }
    }
}

impl std::error::Error for Desync {}

#[derive(Debug, Default)]
pub struct Replies {
    queue: VecDeque<Entry>,
    /// An extended-protocol error was answered and no Sync has been sent since: PostgreSQL ignores every message
    /// up to the next Sync, so such messages get no entry.
    skipping: bool,
    /// PostgreSQL is in copy-in mode and the client has not yet ended it: Syncs it sends now are ignored.
    copy_in: bool,
    /// An extended-protocol message was sent since the last Sync (or simple Query): PostgreSQL may be inside an
    /// implicit transaction even after every reply has arrived (Parse/Bind/Execute answered after a Flush).
    unsynced: bool,
    /// Actions of entries PostgreSQL skipped after an error; the worker drains them.
    dropped: Vec<Action>,
}

impl Replies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.iter().all(|e| e.kind == Kind::CopyEnd)
    }

    /// Record a frontend message sent upstream. Messages PostgreSQL does not answer are ignored.
    pub fn push(&mut self, owner: Owner, tag: u8, disposition: Disposition) {
        self.push_with(owner, tag, disposition, Action::None, None)
    }

    /// Record a reply pgmux gives itself, in its place among the upstream's replies.
    pub fn push_synth(&mut self, owner: Owner, reply: Vec<u8>, action: Action) {
        if self.skipping {
            // PostgreSQL would have skipped the message this answers.
            if action != Action::None {
                self.dropped.push(action);
            }
            return;
        }
        let mut e = Entry::new(owner, Kind::Synth, Disposition::Forward);
        e.bytes = Some(reply.into_boxed_slice());
        e.action = action;
        self.queue.push_back(e);
    }

    /// The first synthesised reply, if it is at the front and so due now.
    pub fn pop_synth(&mut self) -> Option<(Owner, Box<[u8]>, Action)> {
        if self.queue.front().is_some_and(|e| e.kind == Kind::Synth) {
            let e = self.queue.pop_front()?;
            return Some((e.owner, e.bytes.unwrap_or_default(), e.action));
        }
        None
    }

    /// Actions of entries dropped because PostgreSQL skipped their messages after an error.
    pub fn take_dropped(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.dropped)
    }

    /// Record a frontend message with what to do when it is answered (`action`) and, for `Replace`, the error to
    /// send instead of the upstream's.
    pub fn push_with(
        &mut self,
        owner: Owner,
        tag: u8,
        disposition: Disposition,
        action: Action,
        bytes: Option<Box<[u8]>>,
    ) {
        if tag == b'c' || tag == b'f' {
            if self.copy_in {
                self.copy_in = false;
            } else if !self.queue.is_empty() {
                self.queue.push_back(Entry::new(owner, Kind::CopyEnd, disposition));
            }
            return;
        }
        let Some(kind) = Kind::of_frontend(tag) else { return };
        self.unsynced = !kind.ends_with_ready();
        if self.copy_in && kind == Kind::Sync {
            // Ignored by PostgreSQL in copy-in mode.
            return;
        }
        if self.skipping {
            if kind != Kind::Sync {
                // PostgreSQL ignores every message, a simple Query included, until the Sync arrives.
                if action != Action::None {
                    self.dropped.push(action);
                }
                return;
            }
            self.skipping = false;
        }
        self.queue.push_back(Entry { owner, kind, disposition, action, bytes });
    }

    /// True when the last message sent upstream leaves PostgreSQL waiting for a Sync before it will answer with
    /// ReadyForQuery: extended-protocol messages without a Sync after them, or an error being skipped.
    pub fn needs_sync(&self) -> bool {
        self.skipping || self.unsynced
    }

    /// The session left before any of its current turn reached PostgreSQL (the caller has cut those bytes from
    /// the upstream's output): forget its entries as if they had never been queued. The upstream was clean when the
    /// turn began (it is only handed over then), so the batch state goes back to clean too.
    pub fn forget_unsent(&mut self, session_id: u64) {
        self.queue.retain(|e| e.owner != Owner::Session(session_id));
        self.unsynced = false;
        self.skipping = false;
        self.copy_in = false;
    }

    /// The session left: whatever it is still owed is swallowed.
    pub fn orphan(&mut self, session_id: u64) {
        for e in self.queue.iter_mut() {
            if e.owner == Owner::Session(session_id) {
                e.owner = Owner::Gone;
                e.disposition = Disposition::Swallow;
            }
        }
    }

    /// True while a reply is owed to this session.
    pub fn owes(&self, session_id: u64) -> bool {
        self.queue.iter().any(|e| e.owner == Owner::Session(session_id))
    }

    /// CopyInResponse: drop the Syncs sent between the COPY and the client's CopyEnd (or all of them, if the client
    /// has not ended the COPY yet, in which case later Syncs are ignored until it does).
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        let mut ended = false;
        while let Some(e) = self.queue.get(i) {
            match e.kind {
                Kind::Sync => {
                    self.queue.remove(i);
                }
                Kind::CopyEnd => {
                    self.queue.remove(i);
                    ended = true;
                    break;
                }
                _ => i += 1,
            }
        }
        self.copy_in = !ended;
    }

    /// Route one backend message by its type byte.
    pub fn on_backend(&mut self, tag: u8) -> Result<Route, Desync> {
        // A CopyEnd that reaches the front ended a COPY that never started (or already finished): nothing answers it.
        while self.queue.front().is_some_and(|e| e.kind == Kind::CopyEnd) {
            self.queue.pop_front();
        }
        match tag {
            b'G' => self.enter_copy_in(),
            // An error ends copy-in mode: PostgreSQL honours the next Sync again.
            b'E' => self.copy_in = false,
            _ => {}
        }
        let Some(front) = self.queue.front() else {
            return match tag {
                // Asynchronous messages may come at any time; with nothing owed they belong to nobody in particular.
                b'N' | b'S' | b'A' => Ok(Route {
                    owner: None,
                    disposition: Disposition::Forward,
                    ready: false,
                    action: Action::None,
                    replacement: None,
                }),
                _ => Err(Desync { tag, expected: None }),
            };
        };
        let kind = front.kind;
        let bad = || Desync { tag, expected: Some(kind) };
        match (kind, tag) {
            // Asynchronous messages go to whoever the upstream is working for.
            (_, b'N' | b'S' | b'A') => Ok(Route::to(front, false)),
            (Kind::Query | Kind::FunctionCall | Kind::Sync, b'Z') => {
                self.copy_in = false;
                let e = self.pop()?;
                Ok(Route::completing(e, true))
            }
            // Everything a simple query or a function call produces belongs to it until ReadyForQuery.
            (Kind::Query, b'T' | b'D' | b'C' | b'I' | b'E' | b'G' | b'H' | b'W' | b'd' | b'c') => {
                Ok(Route::to(front, false))
            }
            (Kind::FunctionCall, b'V' | b'E') => Ok(Route::to(front, false)),
            (Kind::Parse, b'1') | (Kind::Bind, b'2') | (Kind::Close, b'3') | (Kind::Describe, b'T' | b'n') => {
                let e = self.pop()?;
                Ok(Route::completing(e, false))
            }
            (Kind::Describe, b't') => Ok(Route::to(front, false)),
            (Kind::Execute, b'D' | b'G' | b'H' | b'W' | b'd' | b'c') => Ok(Route::to(front, false)),
            (Kind::Execute, b'C' | b'I' | b's') => {
                let e = self.pop()?;
                Ok(Route::completing(e, false))
            }
            (Kind::Sync | Kind::Synth | Kind::CopyEnd, _) => Err(bad()),
            (_, b'E') => {
                // An extended-protocol message failed: PostgreSQL now skips to the next Sync.
                let e = self.pop()?;
                while let Some(next) = self.queue.front() {
                    if next.kind == Kind::Sync {
                        break;
                    }
                    if next.action != Action::None {
                        self.dropped.push(next.action);
                    }
                    self.queue.pop_front();
                }
                if self.queue.is_empty() {
                    self.skipping = true;
                }
                Ok(Route::completing(e, false))
            }
            _ => Err(bad()),
        }
    }

    fn pop(&mut self) -> Result<Entry, Desync> {
        self.queue.pop_front().ok_or(Desync { tag: 0, expected: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Owner = Owner::Session(1);
    const B: Owner = Owner::Session(2);
    const FWD: Disposition = Disposition::Forward;
    const SWALLOW: Disposition = Disposition::Swallow;

    /// Push `sent` (owner, tags), then feed `received` and compare each route's owner and readiness.
    fn run(sent: &[(Owner, &str, Disposition)], received: &str) -> Vec<Result<(Option<Owner>, bool), u8>> {
        let mut r = Replies::new();
        for (owner, tags, d) in sent {
            for t in tags.bytes() {
                r.push(*owner, t, *d);
            }
        }
        received.bytes().map(|t| r.on_backend(t).map(|route| (route.owner, route.ready)).map_err(|e| e.tag)).collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            sent: Vec<(Owner, &'static str, Disposition)>,
            received: &'static str,
            expect: Vec<Result<(Option<Owner>, bool), u8>>,
        }
        let s = |o| Ok((Some(o), false));
        let z = |o| Ok((Some(o), true));
        let cases = vec![
            Case {
                name: "simple query",
                sent: vec![(A, "Q", FWD)],
                received: "TDDCZ",
                expect: vec![s(A), s(A), s(A), s(A), z(A)],
            },
            Case { name: "query error", sent: vec![(A, "Q", FWD)], received: "EZ", expect: vec![s(A), z(A)] },
            Case {
                name: "extended pipeline",
                sent: vec![(A, "PBDES", FWD)],
                received: "12TDCZ",
                expect: vec![s(A), s(A), s(A), s(A), s(A), z(A)],
            },
            Case {
                name: "describe statement",
                sent: vec![(A, "PDS", FWD)],
                received: "1tnZ",
                expect: vec![s(A), s(A), s(A), z(A)],
            },
            Case {
                name: "error skips to sync",
                sent: vec![(A, "PBES", FWD)],
                received: "EZ",
                expect: vec![s(A), z(A)],
            },
            Case {
                name: "two syncs",
                sent: vec![(A, "PBESBES", FWD)],
                received: "12CZ2CZ",
                expect: vec![s(A), s(A), s(A), z(A), s(A), s(A), z(A)],
            },
            Case {
                name: "error in first of two batches",
                sent: vec![(A, "BESBES", FWD)],
                received: "EZ2CZ",
                expect: vec![s(A), z(A), s(A), s(A), z(A)],
            },
            Case {
                name: "pgmux query before a session's",
                sent: vec![(Owner::Pgmux, "Q", SWALLOW), (A, "Q", FWD)],
                received: "SCZCZ",
                expect: vec![s(Owner::Pgmux), s(Owner::Pgmux), z(Owner::Pgmux), s(A), z(A)],
            },
            Case {
                name: "notice while idle has no owner",
                sent: vec![],
                received: "N",
                expect: vec![Ok((None, false))],
            },
            Case { name: "unexpected ready", sent: vec![], received: "Z", expect: vec![Err(b'Z')] },
            Case { name: "wrong completion", sent: vec![(A, "B", FWD)], received: "1", expect: vec![Err(b'1')] },
            Case {
                name: "copy in via query",
                sent: vec![(A, "Qddc", FWD)],
                received: "GCZ",
                expect: vec![s(A), s(A), z(A)],
            },
            Case {
                name: "copy out via execute",
                sent: vec![(A, "BES", FWD)],
                received: "2HddcCZ",
                expect: vec![s(A), s(A), s(A), s(A), s(A), s(A), z(A)],
            },
            Case {
                name: "portal suspended",
                sent: vec![(A, "BEES", FWD)],
                received: "2DsDCZ",
                expect: vec![s(A), s(A), s(A), s(A), s(A), z(A)],
            },
            Case {
                name: "flush only: nothing owed",
                sent: vec![(A, "H", FWD)],
                received: "Z",
                expect: vec![Err(b'Z')],
            },
            Case {
                name: "two sessions in order",
                sent: vec![(A, "Q", FWD), (B, "Q", FWD)],
                received: "CZCZ",
                expect: vec![s(A), z(A), s(B), z(B)],
            },
        ];
        for c in cases {
            assert_eq!(run(&c.sent, c.received), c.expect, "case {}", c.name);
        }
    }

    #[test]
    fn copy_in_ignores_syncs_sent_during_copy() {
        // Bind/Execute/Sync sent before the data (as the postgres crate does), then data, CopyDone, Sync.
        let mut r = Replies::new();
        for t in b"BES" {
            r.push(A, *t, FWD);
        }
        assert_eq!(r.on_backend(b'2').map(|x| x.ready), Ok(false));
        assert_eq!(r.on_backend(b'G').map(|x| x.ready), Ok(false));
        for t in b"ddSc" {
            r.push(A, *t, FWD); // the S inside copy mode is ignored by PostgreSQL
        }
        r.push(A, b'S', FWD);
        assert_eq!(r.on_backend(b'C').map(|x| x.ready), Ok(false));
        assert_eq!(r.on_backend(b'Z').map(|x| x.ready), Ok(true));
        assert!(r.is_empty());
    }

    #[test]
    fn copy_in_fully_pipelined_before_response() {
        let mut r = Replies::new();
        for t in b"BESddcS" {
            r.push(A, *t, FWD);
        }
        for (tag, ready) in [(b'2', false), (b'G', false), (b'C', false), (b'Z', true)] {
            assert_eq!(r.on_backend(tag).map(|x| x.ready), Ok(ready));
        }
        assert!(r.is_empty());
    }

    #[test]
    fn copy_in_error_honours_next_sync() {
        let mut r = Replies::new();
        for t in b"BESd" {
            r.push(A, *t, FWD);
        }
        for tag in [b'2', b'G', b'E'] {
            assert!(r.on_backend(tag).is_ok());
        }
        // The client, unaware, ends the copy and syncs; PostgreSQL answers that Sync.
        for t in b"cS" {
            r.push(A, *t, FWD);
        }
        assert_eq!(r.on_backend(b'Z').map(|x| x.ready), Ok(true));
        assert!(r.is_empty());
    }

    #[test]
    fn copy_end_of_a_copy_that_never_started() {
        let mut r = Replies::new();
        for t in b"BESdcS" {
            r.push(A, *t, FWD);
        }
        for (tag, ready) in [(b'E', false), (b'Z', true), (b'Z', true)] {
            assert_eq!(r.on_backend(tag).map(|x| x.ready), Ok(ready));
        }
        assert!(r.is_empty());
    }

    #[test]
    fn simple_query_copy() {
        let mut r = Replies::new();
        r.push(A, b'Q', FWD);
        assert!(r.on_backend(b'G').is_ok());
        for t in b"ddc" {
            r.push(A, *t, FWD);
        }
        assert_eq!(r.on_backend(b'C').map(|x| x.ready), Ok(false));
        assert_eq!(r.on_backend(b'Z').map(|x| x.ready), Ok(true));
        assert!(r.is_empty());
    }

    #[test]
    fn skipping_persists_until_sync() {
        let mut r = Replies::new();
        for t in b"PB" {
            r.push(A, *t, FWD);
        }
        assert!(r.on_backend(b'E').is_ok());
        assert!(r.is_empty());
        assert!(r.needs_sync());
        // Sent after the error but before a Sync: ignored by PostgreSQL, so no entry.
        r.push(A, b'E', FWD);
        assert!(r.is_empty());
        r.push(A, b'S', FWD);
        assert!(!r.needs_sync());
        assert_eq!(r.on_backend(b'Z').map(|x| x.ready), Ok(true));
        assert!(r.is_empty());
    }

    #[test]
    fn orphaned_replies_are_swallowed() {
        let mut r = Replies::new();
        r.push(A, b'Q', FWD);
        r.push(B, b'Q', FWD);
        r.orphan(1);
        assert!(!r.owes(1));
        assert!(r.owes(2));
        let route = r.on_backend(b'C').ok();
        assert_eq!(route.map(|x| (x.owner, x.disposition)), Some((Some(Owner::Gone), SWALLOW)));
    }

    #[test]
    fn needs_sync_tracks_extended_without_sync() {
        let mut r = Replies::new();
        assert!(!r.needs_sync());
        r.push(A, b'P', FWD);
        assert!(r.needs_sync());
        r.push(A, b'S', FWD);
        assert!(!r.needs_sync());
        r.push(A, b'H', FWD);
        assert!(!r.needs_sync());
    }

    #[test]
    fn answered_batch_without_sync_still_needs_one() {
        // Parse/Bind/Execute then Flush: everything answered, but PostgreSQL is inside an implicit transaction.
        let mut r = Replies::new();
        for t in b"PBEH" {
            r.push(A, *t, FWD);
        }
        for t in [b'1', b'2', b'C'] {
            assert!(r.on_backend(t).is_ok());
        }
        assert!(r.is_empty());
        assert!(r.needs_sync());
        r.push(A, b'S', FWD);
        assert_eq!(r.on_backend(b'Z').map(|x| x.ready), Ok(true));
        assert!(!r.needs_sync());
    }

    #[test]
    fn forget_unsent_restores_a_clean_queue() {
        let mut r = Replies::new();
        r.push(Owner::Pgmux, b'Q', SWALLOW);
        for t in b"PBE" {
            r.push(A, *t, FWD);
        }
        r.forget_unsent(1);
        assert!(!r.needs_sync());
        assert!(!r.owes(1));
        assert_eq!(r.on_backend(b'Z').map(|x| (x.owner, x.ready)), Ok((Some(Owner::Pgmux), true)));
        assert!(r.is_empty());
    }
}
