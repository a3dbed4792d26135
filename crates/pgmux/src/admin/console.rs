//! One admin console connection, sans IO: the listener feeds it the client's bytes and the supervisor's replies and
//! writes out what it returns.
//!
//! Only the simple query protocol is served, one command at a time: while a command waits for the supervisor, no
//! further input is looked at (it stays buffered, so a client that pipelines gets its answers in order). Anything
//! but Query and Terminate gets an ErrorResponse and the connection is closed, as PgBouncer does.

use pgmux_ipc::admin::{AdminCommand, AdminReply};
use pgmux_ipc::wire::Assembler;
use pgmux_proto::backend::{self as be, ErrorFields};
use pgmux_proto::frame::{self, peek_header};
use pgmux_proto::frontend;

use super::command::{self, Command, Show};
use super::show::{self, Local};

/// Longest console query accepted; PgBouncer's commands are far shorter.
const MAX_QUERY_LEN: u32 = 64 * 1024;

/// What the listener does after feeding the console.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until more bytes arrive (or, while a command is pending, until its reply).
    Wait,
    /// Send these bytes and feed the console again.
    Send(Vec<u8>),
    /// Pass this command to the supervisor; the answer comes back through [`Console::on_reply`].
    Ask(AdminCommand),
    /// Send these bytes, then close the connection.
    Close(Vec<u8>),
}

#[derive(Debug)]
enum Pending {
    Show(Show),
    Control { tag: String },
}

#[derive(Debug)]
pub struct Console {
    /// May run every command (admin_users, or the pgmux OS user over the Unix socket); else SHOW only.
    admin: bool,
    pending: Option<(u64, Pending)>,
    assembler: Assembler,
}

impl Console {
    pub fn new(admin: bool) -> Console {
        Console { admin, pending: None, assembler: Assembler::default() }
    }

    /// What PgBouncer's console says after authentication.
    pub fn greeting(out: &mut Vec<u8>, cancel_pid: u32, cancel_key: u32) {
        be::auth_ok(out);
        for (name, value) in [
            ("server_version", "1.25.0/bouncer"),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "GMT"),
            ("standard_conforming_strings", "on"),
            ("is_superuser", "on"),
        ] {
            be::parameter_status(out, name, value);
        }
        be::backend_key_data(out, cancel_pid, cancel_key);
        be::ready_for_query(out, b'I');
    }

    /// The id of the supervisor request this console waits for.
    pub fn waiting_for(&self) -> Option<u64> {
        self.pending.as_ref().map(|(id, _)| *id)
    }

    /// Acts on the next whole message in `inbuf` (consumed). `Ask` must be followed by [`Console::asked`].
    pub fn on_input(&mut self, inbuf: &mut Vec<u8>, local: &Local) -> Step {
        if self.pending.is_some() {
            return Step::Wait;
        }
        let Some(h) = peek_header(inbuf) else { return Step::Wait };
        if h.tag != b'Q' || h.len > MAX_QUERY_LEN || frame::check_frontend(h, MAX_QUERY_LEN).is_err() {
            let message = match h.tag {
                b'X' => return Step::Close(Vec::new()),
                b'P' | b'B' | b'E' => "extended query protocol not supported by admin console".to_string(),
                b'Q' => format!("query longer than {MAX_QUERY_LEN} bytes"),
                t => format!("unsupported packet type for admin console: {}", tag_name(t)),
            };
            return Step::Close(error(&message, false));
        }
        let total = h.total_len();
        let Some(msg) = inbuf.get(frame::HEADER_LEN..total) else { return Step::Wait };
        let query = frontend::parse_query(msg).map(str::to_owned);
        inbuf.drain(..total);
        let query = match query {
            Ok(q) => q,
            Err(e) => return Step::Close(error(&format!("invalid query message: {e}"), false)),
        };
        self.query(&query, local)
    }

    fn query(&mut self, query: &str, local: &Local) -> Step {
        match command::parse(query, self.admin) {
            Err(command::Refusal(message)) => Step::Send(error(&message, true)),
            Ok(Command::Show(Show::Help)) => {
                let mut out = Vec::new();
                let fields = ErrorFields {
                    severity: "NOTICE".into(),
                    code: "00000".into(),
                    message: "Console usage".into(),
                    detail: Some(show::HELP_DETAIL.into()),
                    hint: None,
                };
                be::notice_response_full(&mut out, &fields);
                be::command_complete(&mut out, "SHOW");
                be::ready_for_query(&mut out, b'I');
                Step::Send(out)
            }
            Ok(Command::Show(what)) if what.needs_snapshot() => {
                self.pending = Some((0, Pending::Show(what)));
                Step::Ask(AdminCommand::Snapshot)
            }
            Ok(Command::Show(what)) => {
                let mut out = Vec::new();
                show::result(what, &pgmux_ipc::admin::Snapshot::default(), local).encode(&mut out);
                be::ready_for_query(&mut out, b'I');
                Step::Send(out)
            }
            Ok(Command::FakeShow { name, value }) => {
                let mut out = Vec::new();
                be::row_description(&mut out, &[be::Column { name, type_oid: be::TEXT_OID }]);
                be::data_row(&mut out, &[Some(value)]);
                be::command_complete(&mut out, "SHOW");
                be::ready_for_query(&mut out, b'I');
                Step::Send(out)
            }
            Ok(Command::FakeSet) => {
                let mut out = Vec::new();
                be::notice_response(&mut out, "NOTICE", "00000", "SET ignored");
                be::command_complete(&mut out, "SET");
                be::ready_for_query(&mut out, b'I');
                Step::Send(out)
            }
            Ok(Command::Control { command, tag }) => {
                self.pending = Some((0, Pending::Control { tag }));
                Step::Ask(command)
            }
        }
    }

    /// The listener sent the command from the last `Ask` as request `id`.
    pub fn asked(&mut self, id: u64) {
        if let Some((pending_id, _)) = self.pending.as_mut() {
            *pending_id = id;
        }
    }

    /// A piece of the supervisor's reply to request `id`. Returns the bytes for the client once the reply is
    /// whole; an undecodable reply becomes an error for this command only.
    pub fn on_reply_part(&mut self, id: u64, part: &[u8], last: bool, local: &Local) -> Option<Vec<u8>> {
        if self.waiting_for() != Some(id) {
            return None;
        }
        let whole = match self.assembler.push(part, last) {
            Ok(None) => return None,
            Ok(Some(whole)) => AdminReply::decode(&whole).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let reply = whole.unwrap_or_else(|e| AdminReply::Error {
            code: "XX000".into(),
            message: format!("pgmux: bad reply from the supervisor: {e}"),
        });
        Some(self.on_reply(reply, local))
    }

    fn on_reply(&mut self, reply: AdminReply, local: &Local) -> Vec<u8> {
        let pending = self.pending.take().map(|(_, p)| p);
        let mut out = Vec::new();
        match (pending, reply) {
            (_, AdminReply::Error { code, message }) => {
                be::error_response(&mut out, "ERROR", &code, &message);
            }
            (Some(Pending::Show(what)), AdminReply::Snapshot(snap)) => {
                show::result(what, &snap, local).encode(&mut out);
            }
            (Some(Pending::Control { tag }), AdminReply::Done) => be::command_complete(&mut out, &tag),
            (_, _) => be::error_response(&mut out, "ERROR", "XX000", "pgmux: unexpected reply from the supervisor"),
        }
        be::ready_for_query(&mut out, b'I');
        out
    }
}

/// ErrorResponse (SQLSTATE 08P01 as PgBouncer's console errors), followed by ReadyForQuery when the connection
/// stays open.
fn error(message: &str, ready: bool) -> Vec<u8> {
    let mut out = Vec::new();
    be::error_response(&mut out, "ERROR", "08P01", message);
    if ready {
        be::ready_for_query(&mut out, b'I');
    }
    out
}

fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        tag.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Vec<u8> {
        let mut v = Vec::new();
        frontend::query(&mut v, sql);
        v
    }

    /// The message tags in `bytes`.
    fn tags(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(h) = peek_header(rest) {
            out.push(h.tag);
            rest = &rest[h.total_len()..];
        }
        out
    }

    fn reply_bytes(c: &mut Console, id: u64, r: &AdminReply) -> Vec<u8> {
        let mut payload = Vec::new();
        r.encode(&mut payload);
        c.on_reply_part(id, &payload, true, &Local::default()).unwrap()
    }

    #[test]
    fn show_asks_then_formats() {
        let mut c = Console::new(false);
        let mut input = query("SHOW POOLS");
        input.extend(query("SHOW VERSION"));
        assert_eq!(c.on_input(&mut input, &Local::default()), Step::Ask(AdminCommand::Snapshot));
        c.asked(7);
        // The pipelined query waits for the first reply.
        assert_eq!(c.on_input(&mut input, &Local::default()), Step::Wait);
        assert!(c.on_reply_part(6, b"", true, &Local::default()).is_none());
        let out = reply_bytes(&mut c, 7, &AdminReply::Snapshot(Box::default()));
        assert_eq!(tags(&out), b"TCZ");
        match c.on_input(&mut input, &Local::default()) {
            Step::Send(out) => assert_eq!(tags(&out), b"TDCZ"),
            other => panic!("{other:?}"),
        }
        assert!(input.is_empty());
    }

    #[test]
    fn controls_need_admin_and_report_errors() {
        let mut c = Console::new(false);
        match c.on_input(&mut query("PAUSE"), &Local::default()) {
            Step::Send(out) => assert_eq!(tags(&out), b"EZ"),
            other => panic!("{other:?}"),
        }
        let mut c = Console::new(true);
        assert_eq!(
            c.on_input(&mut query("pause appdb"), &Local::default()),
            Step::Ask(AdminCommand::Pause { db: Some("appdb".into()) })
        );
        c.asked(1);
        let out = reply_bytes(&mut c, 1, &AdminReply::Done);
        assert_eq!(out, {
            let mut v = Vec::new();
            be::command_complete(&mut v, "PAUSE");
            be::ready_for_query(&mut v, b'I');
            v
        });
        assert_eq!(c.on_input(&mut query("resume"), &Local::default()), Step::Ask(AdminCommand::Resume { db: None }));
        c.asked(2);
        assert_eq!(tags(&reply_bytes(&mut c, 2, &AdminReply::error("pooler is not paused/suspended"))), b"EZ");
        // A snapshot where a command completion was expected is a bug, reported as such.
        assert_eq!(c.on_input(&mut query("reload"), &Local::default()), Step::Ask(AdminCommand::Reload));
        c.asked(3);
        assert_eq!(tags(&reply_bytes(&mut c, 3, &AdminReply::Snapshot(Box::default()))), b"EZ");
        // Garbage from the supervisor is an error for this command, not a panic.
        assert_eq!(c.on_input(&mut query("reload"), &Local::default()), Step::Ask(AdminCommand::Reload));
        c.asked(4);
        assert_eq!(tags(&c.on_reply_part(4, b"\xff", true, &Local::default()).unwrap()), b"EZ");
    }

    #[test]
    fn local_answers() {
        let mut c = Console::new(false);
        for (q, want) in [
            ("SHOW HELP", &b"NCZ"[..]),
            ("show version", b"TDCZ"),
            ("SHOW mem", b"TCZ"),
            ("show client_encoding", b"TDCZ"),
            ("SET client_encoding = 'UTF8'", b"NCZ"),
            ("nonsense", b"EZ"),
        ] {
            match c.on_input(&mut query(q), &Local::default()) {
                Step::Send(out) => assert_eq!(tags(&out), want, "{q}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_protocol_messages_close() {
        let mut c = Console::new(true);
        assert_eq!(c.on_input(&mut b"X\0\0\0\x04".to_vec(), &Local::default()), Step::Close(Vec::new()));
        let mut parse = b"P\0\0\0\x08\0\0\0\0".to_vec();
        match c.on_input(&mut parse, &Local::default()) {
            Step::Close(out) => assert_eq!(tags(&out), b"E"),
            other => panic!("{other:?}"),
        }
        match c.on_input(&mut b"Q\x7f\xff\xff\xff".to_vec(), &Local::default()) {
            Step::Close(out) => assert_eq!(tags(&out), b"E"),
            other => panic!("{other:?}"),
        }
        // Partial input waits.
        let mut partial = query("SHOW POOLS");
        partial.truncate(8);
        assert_eq!(c.on_input(&mut partial, &Local::default()), Step::Wait);
    }
}
