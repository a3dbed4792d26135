//! Authenticating one client: a sans-IO state machine the listener feeds with the client's messages.
//!
//! `ClientAuth::start` picks the method from `auth_type` and the user's secret the way PgBouncer does (`md5` with a
//! SCRAM secret switches to SCRAM; `trust` still needs the user in the auth_file when there is one) and returns the
//! first thing to send. Each further client message goes through `on_message`, which answers with the next bytes to
//! send, success, or a failure to report (SQLSTATE + message) before closing.
//!
//! An unknown user (or a secret that cannot serve the method) still gets the full exchange with a dummy secret and
//! fails only at the end, with the same message as a wrong password, so clients cannot probe which users exist. The
//! real reason is kept for the log (`failure_detail`).
//!
//! Before that, [`plan`] turns `auth_type` into what this connection must do: `hba` finds the first matching rule
//! of the auth_hba_file and maps its method (md5, password = plain, scram-sha-256, trust) onto the same machine, or
//! decides at once (reject, no matching rule, peer, cert), with PostgreSQL's messages; `any` lets the client in.

use std::net::IpAddr;

use pgmux_config::hba::{Hba, Method, Peer};
use pgmux_config::{AuthType, Secret};
use pgmux_proto::auth::{self, ScramError, ScramSecret, ScramServer};
use pgmux_proto::{backend, frontend};

/// The only SASL mechanism pgmux offers (no channel binding, so no -PLUS).
const SCRAM_MECHANISM: &str = "SCRAM-SHA-256";
/// Salt length and iteration count for SCRAM secrets derived from cleartext passwords, as PostgreSQL's defaults.
const SCRAM_SALT_LEN: usize = 16;
const SCRAM_ITERATIONS: u32 = 4096;

/// SQLSTATEs this module reports.
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const INTERNAL_ERROR: &str = "XX000";

/// What the listener does next.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Send these bytes, then wait for the client's next message.
    Send(Vec<u8>),
    /// Authenticated. Send these bytes (AuthenticationSASLFinal after SCRAM, empty otherwise) before the session is
    /// handed on; whoever greets the client next sends AuthenticationOk.
    Done(Vec<u8>),
    /// Send a FATAL ErrorResponse with this SQLSTATE and message, then close.
    Fail { code: &'static str, message: String },
}

/// What a connection must do to log in, decided from `auth_type` (and the hba rules) before any password is asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Authenticate with this method (trust, plain, md5 or scram-sha-256) against the user's secret.
    Authenticate(AuthType),
    /// In, with no password and no secret: `auth_type = any`, or a peer rule the client's OS user satisfied.
    Accept,
    /// Refused before any exchange; `detail` is for the log only.
    Refuse { code: &'static str, message: String, detail: String },
}

/// Decides how the client of `peer`, asking for `database` as `user`, logs in. `os_user` reports the OS user at the
/// other end of a Unix socket (SO_PEERCRED); it is asked only when a peer rule applies.
pub fn plan(
    auth_type: AuthType,
    hba: Option<&Hba>,
    peer: Peer,
    database: &str,
    user: &str,
    os_user: impl FnOnce() -> Option<String>,
) -> Plan {
    match auth_type {
        AuthType::Trust | AuthType::Plain | AuthType::Md5 | AuthType::ScramSha256 => Plan::Authenticate(auth_type),
        AuthType::Any => Plan::Accept,
        AuthType::Hba => {
            // The configuration never holds auth_type = hba without rules; if it somehow did, nobody gets in.
            let Some(hba) = hba else {
                return Plan::Refuse {
                    code: INVALID_AUTHORIZATION,
                    message: format!(
                        "no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\", no encryption",
                        host(peer)
                    ),
                    detail: "auth_type = hba but no rules are loaded".into(),
                };
            };
            plan_hba(hba, peer, database, user, os_user)
        }
    }
}

fn plan_hba(hba: &Hba, peer: Peer, database: &str, user: &str, os_user: impl FnOnce() -> Option<String>) -> Plan {
    let connection = format!("host \"{}\", user \"{user}\", database \"{database}\", no encryption", host(peer));
    let Some(rule) = hba.lookup(peer, database, user) else {
        return Plan::Refuse {
            code: INVALID_AUTHORIZATION,
            message: format!("no pg_hba.conf entry for {connection}"),
            detail: "no auth_hba_file rule matches".into(),
        };
    };
    let line = rule.line;
    match rule.method {
        Method::Trust => Plan::Authenticate(AuthType::Trust),
        Method::Md5 => Plan::Authenticate(AuthType::Md5),
        Method::Password => Plan::Authenticate(AuthType::Plain),
        Method::ScramSha256 => Plan::Authenticate(AuthType::ScramSha256),
        Method::Reject => Plan::Refuse {
            code: INVALID_AUTHORIZATION,
            message: format!("pg_hba.conf rejects connection for {connection}"),
            detail: format!("auth_hba_file line {line}: reject"),
        },
        Method::Peer => {
            let why = match peer {
                Peer::Tcp(_) => "peer authentication works only over the Unix socket".to_string(),
                Peer::Local => match os_user() {
                    Some(os) if os == user => return Plan::Accept,
                    Some(os) => format!("the client runs as OS user \"{os}\""),
                    None => "the client's OS user is unknown (no SO_PEERCRED or no passwd entry)".to_string(),
                },
            };
            Plan::Refuse {
                code: INVALID_AUTHORIZATION,
                message: format!("Peer authentication failed for user \"{user}\""),
                detail: format!("auth_hba_file line {line}: {why}"),
            }
        }
        Method::Cert => Plan::Refuse {
            code: INVALID_AUTHORIZATION,
            message: format!("certificate authentication failed for user \"{user}\""),
            detail: format!("auth_hba_file line {line}: cert needs TLS, which pgmux does not offer"),
        },
    }
}

/// The client's host as PostgreSQL names it in messages.
fn host(peer: Peer) -> String {
    match peer {
        Peer::Local => "[local]".to_string(),
        Peer::Tcp(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Peer::Tcp(ip) => ip.to_string(),
    }
}

/// What a password-type secret check compares against.
enum Check {
    /// The user's secret (None: unknown user or unusable secret, so every password fails).
    Cleartext(Option<Secret>),
    /// The expected AuthenticationMD5Password response (None: always fail).
    Md5(Option<String>),
}

enum State {
    AwaitPassword(Check),
    AwaitSaslInitial { server: ScramServer, real: bool },
    AwaitSaslFinal { server: ScramServer, real: bool },
    Finished,
}

pub struct ClientAuth {
    user: String,
    state: State,
    /// Why the login is doomed (or failed), for the log; never sent to the client.
    detail: Option<String>,
    /// The client's SCRAM ClientKey after a successful SCRAM login against a stored secret.
    client_key: Option<[u8; 32]>,
}

impl ClientAuth {
    /// The ClientKey of a successful SCRAM login: with the stored secret it lets pgmux log in upstream as this user.
    pub fn scram_client_key(&self) -> Option<[u8; 32]> {
        self.client_key
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitPassword(_) => "awaiting password",
            State::AwaitSaslInitial { .. } => "awaiting SASLInitialResponse",
            State::AwaitSaslFinal { .. } => "awaiting SASLResponse",
            State::Finished => "finished",
        };
        f.debug_struct("ClientAuth").field("user", &self.user).field("state", &state).finish()
    }
}

impl ClientAuth {
    /// Begins authenticating `user`, whose auth_file entry is `secret` (None when absent or when there is no
    /// auth_file). Returns the state machine and the first step.
    pub fn start(
        auth_type: AuthType,
        user: &str,
        secret: Option<&Secret>,
        auth_file_configured: bool,
    ) -> (ClientAuth, AuthStep) {
        let mut me = ClientAuth { user: user.to_owned(), state: State::Finished, detail: None, client_key: None };
        let step = match auth_type {
            // `plan` resolves these before a ClientAuth exists; reaching here is a bug, and a bug refuses.
            AuthType::Hba | AuthType::Any => me.internal(format!("auth_type {auth_type} reached the password check")),
            AuthType::Trust => {
                if auth_file_configured && secret.is_none() {
                    me.detail = Some(format!("no such user: {user}"));
                    AuthStep::Fail { code: INVALID_AUTHORIZATION, message: "\"trust\" authentication failed".into() }
                } else {
                    AuthStep::Done(Vec::new())
                }
            }
            AuthType::Plain => {
                if secret.is_none() {
                    me.detail = Some(format!("no such user: {user}"));
                }
                me.state = State::AwaitPassword(Check::Cleartext(secret.cloned()));
                let mut out = Vec::new();
                backend::auth_cleartext(&mut out);
                AuthStep::Send(out)
            }
            AuthType::Md5 => match secret {
                Some(Secret::Scram(s)) => me.start_scram(Some(s)),
                Some(Secret::Plain(pw)) => me.start_md5(Some(auth::md5_password_hash(user, pw))),
                Some(Secret::Md5(hash)) => me.start_md5(Some(hash.clone())),
                None => {
                    me.detail = Some(format!("no such user: {user}"));
                    me.start_md5(None)
                }
            },
            AuthType::ScramSha256 => match secret {
                Some(Secret::Scram(s)) => me.start_scram(Some(s)),
                Some(Secret::Plain(pw)) => me.start_scram_from_password(pw),
                Some(Secret::Md5(_)) => {
                    me.detail = Some("the user has an md5 secret, which cannot be used for SCRAM".into());
                    me.start_scram(None)
                }
                None => {
                    me.detail = Some(format!("no such user: {user}"));
                    me.start_scram(None)
                }
            },
        };
        if matches!(step, AuthStep::Fail { .. }) {
            me.state = State::Finished;
        }
        (me, step)
    }

    /// Feeds one client message (`tag` and the body after the length word).
    pub fn on_message(&mut self, tag: u8, body: &[u8]) -> AuthStep {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match state {
            State::AwaitPassword(check) => {
                if tag != b'p' {
                    return self.violation(format!("expected password response, got message type {}", tag_name(tag)));
                }
                let password = match frontend::parse_password(body) {
                    Ok(pw) => pw,
                    Err(e) => return self.violation(format!("invalid password message: {e}")),
                };
                self.check_password(&check, password)
            }
            State::AwaitSaslInitial { mut server, real } => {
                if tag != b'p' {
                    return self.violation(format!("expected SASL response, got message type {}", tag_name(tag)));
                }
                let (mechanism, data) = match frontend::parse_sasl_initial_response(body) {
                    Ok(v) => v,
                    Err(e) => return self.violation(format!("invalid SASLInitialResponse: {e}")),
                };
                if mechanism != SCRAM_MECHANISM {
                    return self.violation("client selected an invalid SASL authentication mechanism".into());
                }
                match server.client_first(data) {
                    Ok(reply) => {
                        self.state = State::AwaitSaslFinal { server, real };
                        let mut out = Vec::new();
                        backend::auth_sasl_continue(&mut out, &reply);
                        AuthStep::Send(out)
                    }
                    Err(e) => self.scram_error(e),
                }
            }
            State::AwaitSaslFinal { mut server, real } => {
                if tag != b'p' {
                    return self.violation(format!("expected SASL response, got message type {}", tag_name(tag)));
                }
                match server.client_final(frontend::parse_sasl_response(body)) {
                    Ok(reply) if real => {
                        self.client_key = server.client_key();
                        let mut out = Vec::new();
                        backend::auth_sasl_final(&mut out, &reply);
                        AuthStep::Done(out)
                    }
                    // A dummy secret has random keys, so no proof matches it; refuse even if one somehow did.
                    Ok(_) => self.password_failed(None),
                    Err(e) => self.scram_error(e),
                }
            }
            State::Finished => {
                self.violation(format!("unexpected message type {} after authentication", tag_name(tag)))
            }
        }
    }

    /// Why the login failed (or will fail), for the log. Never sent to the client.
    pub fn failure_detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    fn start_md5(&mut self, stored: Option<String>) -> AuthStep {
        let mut salt = [0u8; 4];
        if let Err(e) = auth::random_bytes(&mut salt) {
            return self.internal(format!("could not generate an md5 salt: {e}"));
        }
        let expected = stored.map(|s| auth::md5_salted_response(&s, salt));
        self.state = State::AwaitPassword(Check::Md5(expected));
        let mut out = Vec::new();
        backend::auth_md5(&mut out, salt);
        AuthStep::Send(out)
    }

    /// SCRAM against a stored secret string (None: run against a dummy and fail).
    fn start_scram(&mut self, stored: Option<&str>) -> AuthStep {
        let parsed = stored.and_then(|s| {
            let p = ScramSecret::parse(s);
            if p.is_none() {
                self.detail = Some("the user's SCRAM secret cannot be parsed".into());
            }
            p
        });
        let real = parsed.is_some();
        let secret = match parsed {
            Some(s) => s,
            None => dummy_scram_secret(),
        };
        self.begin_sasl(secret, real)
    }

    fn start_scram_from_password(&mut self, password: &str) -> AuthStep {
        let mut salt = [0u8; SCRAM_SALT_LEN];
        if let Err(e) = auth::random_bytes(&mut salt) {
            return self.internal(format!("could not generate a SCRAM salt: {e}"));
        }
        self.begin_sasl(ScramSecret::from_password(password, &salt, SCRAM_ITERATIONS), true)
    }

    fn begin_sasl(&mut self, secret: ScramSecret, real: bool) -> AuthStep {
        self.state = State::AwaitSaslInitial { server: ScramServer::new(secret), real };
        let mut out = Vec::new();
        backend::auth_sasl(&mut out, &[SCRAM_MECHANISM]);
        AuthStep::Send(out)
    }

    fn check_password(&mut self, check: &Check, password: &[u8]) -> AuthStep {
        if password.is_empty() {
            // PostgreSQL never accepts an empty password, whatever is stored.
            return self.password_failed(Some("empty password"));
        }
        let ok = match check {
            Check::Md5(Some(expected)) => bytes_eq(expected.as_bytes(), password),
            Check::Cleartext(Some(Secret::Plain(stored))) => bytes_eq(stored.as_bytes(), password),
            Check::Cleartext(Some(Secret::Md5(stored))) => match std::str::from_utf8(password) {
                Ok(pw) => bytes_eq(stored.as_bytes(), auth::md5_password_hash(&self.user, pw).as_bytes()),
                Err(_) => false,
            },
            Check::Cleartext(Some(Secret::Scram(stored))) => {
                match (ScramSecret::parse(stored), std::str::from_utf8(password)) {
                    (Some(secret), Ok(pw)) => secret.verify_password(pw),
                    (None, _) => {
                        self.detail = Some("the user's SCRAM secret cannot be parsed".into());
                        false
                    }
                    (_, Err(_)) => false,
                }
            }
            Check::Md5(None) | Check::Cleartext(None) => false,
        };
        if ok {
            AuthStep::Done(Vec::new())
        } else {
            self.password_failed(Some("password does not match"))
        }
    }

    fn scram_error(&mut self, e: ScramError) -> AuthStep {
        match e {
            ScramError::InvalidProof => self.password_failed(Some("SCRAM proof does not match")),
            ScramError::Random(err) => self.internal(format!("could not generate a SCRAM nonce: {err}")),
            other => self.violation(other.to_string()),
        }
    }

    /// The one message every password failure shows the client; `why` is logged unless an earlier, truer reason
    /// (unknown user, unusable secret) is already recorded.
    fn password_failed(&mut self, why: Option<&str>) -> AuthStep {
        self.state = State::Finished;
        if self.detail.is_none() {
            self.detail = why.map(str::to_owned);
        }
        AuthStep::Fail {
            code: INVALID_PASSWORD,
            message: format!("password authentication failed for user \"{}\"", self.user),
        }
    }

    fn violation(&mut self, message: String) -> AuthStep {
        self.state = State::Finished;
        self.detail = Some(message.clone());
        AuthStep::Fail { code: PROTOCOL_VIOLATION, message }
    }

    fn internal(&mut self, message: String) -> AuthStep {
        self.state = State::Finished;
        self.detail = Some(message.clone());
        AuthStep::Fail { code: INTERNAL_ERROR, message }
    }
}

/// A secret nobody can authenticate against: random keys. If the random source fails, all-zero keys are just as
/// unreachable (a proof would need a SHA-256 preimage of zero).
fn dummy_scram_secret() -> ScramSecret {
    let mut salt = vec![0u8; SCRAM_SALT_LEN];
    let mut stored_key = [0u8; 32];
    let mut server_key = [0u8; 32];
    let _ = auth::random_bytes(&mut salt);
    let _ = auth::random_bytes(&mut stored_key);
    let _ = auth::random_bytes(&mut server_key);
    ScramSecret { iterations: SCRAM_ITERATIONS, salt, stored_key, server_key }
}

/// Compares without an early exit on the first differing byte (the length may leak; the content does not).
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A message type as PostgreSQL's errors show it: printable tags as characters, others as numbers.
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
    use pgmux_proto::auth::ScramClient;
    use pgmux_proto::frame::peek_header;

    const USER: &str = "alice";
    const PW: &str = "s3cret";

    /// Splits one whole encoded message into (tag, body), checking the length word.
    fn split(msg: &[u8]) -> (u8, &[u8]) {
        let h = peek_header(msg).expect("header");
        assert_eq!(h.total_len(), msg.len(), "one whole message");
        (h.tag, &msg[5..])
    }

    fn sent(step: AuthStep) -> Vec<u8> {
        match step {
            AuthStep::Send(b) => b,
            other => panic!("expected Send, got {other:?}"),
        }
    }

    fn password(pw: &str) -> Vec<u8> {
        let mut out = Vec::new();
        frontend::password_message(&mut out, pw.as_bytes());
        out
    }

    fn feed(a: &mut ClientAuth, msg: &[u8]) -> AuthStep {
        let (tag, body) = split(msg);
        a.on_message(tag, body)
    }

    fn is_password_failure(step: &AuthStep) -> bool {
        matches!(step, AuthStep::Fail { code: "28P01", message } if message == "password authentication failed for user \"alice\"")
    }

    fn is_violation(step: &AuthStep) -> bool {
        matches!(step, AuthStep::Fail { code: "08P01", .. })
    }

    fn b64(data: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    fn scram_secret(pw: &str) -> Secret {
        let s = ScramSecret::from_password(pw, b"0123456789abcdef", 4096);
        let text =
            format!("SCRAM-SHA-256${}:{}${}:{}", s.iterations, b64(&s.salt), b64(&s.stored_key), b64(&s.server_key));
        assert_eq!(ScramSecret::parse(&text), Some(s));
        Secret::Scram(text)
    }

    fn secrets() -> Vec<Secret> {
        vec![Secret::Plain(PW.into()), Secret::Md5(auth::md5_password_hash(USER, PW)), scram_secret(PW)]
    }

    #[test]
    fn b64_matches_known_vectors() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn trust() {
        let (_, step) = ClientAuth::start(AuthType::Trust, USER, None, false);
        assert_eq!(step, AuthStep::Done(Vec::new()));
        for s in secrets() {
            let (_, step) = ClientAuth::start(AuthType::Trust, USER, Some(&s), true);
            assert_eq!(step, AuthStep::Done(Vec::new()));
        }
        let (a, step) = ClientAuth::start(AuthType::Trust, USER, None, true);
        assert_eq!(step, AuthStep::Fail { code: "28000", message: "\"trust\" authentication failed".into() });
        assert_eq!(a.failure_detail(), Some("no such user: alice"));
    }

    fn plain_login(secret: Option<&Secret>, pw: &str) -> (ClientAuth, AuthStep) {
        let (mut a, step) = ClientAuth::start(AuthType::Plain, USER, secret, true);
        assert_eq!(sent(step), b"R\0\0\0\x08\0\0\0\x03");
        let step = feed(&mut a, &password(pw));
        (a, step)
    }

    #[test]
    fn plain_with_each_secret() {
        for s in secrets() {
            assert_eq!(plain_login(Some(&s), PW).1, AuthStep::Done(Vec::new()), "{s:?}");
            let (a, step) = plain_login(Some(&s), "wrong");
            assert!(is_password_failure(&step), "{s:?}: {step:?}");
            assert_eq!(a.failure_detail(), Some("password does not match"));
            assert!(is_password_failure(&plain_login(Some(&s), "").1));
        }
        // An md5 secret must not accept its own hash as the cleartext password.
        let md5 = Secret::Md5(auth::md5_password_hash(USER, PW));
        assert!(is_password_failure(&plain_login(Some(&md5), &auth::md5_password_hash(USER, PW)).1));
        let (a, step) = plain_login(None, PW);
        assert!(is_password_failure(&step));
        assert_eq!(a.failure_detail(), Some("no such user: alice"));
    }

    /// Runs an md5 exchange, answering with the response `pw` would give.
    fn md5_login(secret: Option<&Secret>, pw: &str) -> (ClientAuth, AuthStep) {
        let (mut a, step) = ClientAuth::start(AuthType::Md5, USER, secret, true);
        let req = sent(step);
        assert_eq!(&req[..9], b"R\0\0\0\x0c\0\0\0\x05");
        let salt: [u8; 4] = req[9..13].try_into().unwrap();
        let answer = auth::md5_salted_response(&auth::md5_password_hash(USER, pw), salt);
        let step = feed(&mut a, &password(&answer));
        (a, step)
    }

    #[test]
    fn md5_with_plain_and_md5_secrets() {
        for s in [Secret::Plain(PW.into()), Secret::Md5(auth::md5_password_hash(USER, PW))] {
            assert_eq!(md5_login(Some(&s), PW).1, AuthStep::Done(Vec::new()), "{s:?}");
            assert!(is_password_failure(&md5_login(Some(&s), "wrong").1), "{s:?}");
        }
        let (a, step) = md5_login(None, PW);
        assert!(is_password_failure(&step));
        assert_eq!(a.failure_detail(), Some("no such user: alice"));
    }

    #[test]
    fn md5_salts_differ() {
        let s = Secret::Plain(PW.into());
        let one = sent(ClientAuth::start(AuthType::Md5, USER, Some(&s), true).1);
        let two = sent(ClientAuth::start(AuthType::Md5, USER, Some(&s), true).1);
        assert_ne!(one, two);
    }

    /// Runs a SCRAM exchange as a real client with password `pw` would.
    fn scram_login(auth_type: AuthType, secret: Option<&Secret>, pw: &str) -> (ClientAuth, AuthStep) {
        let (mut a, step) = ClientAuth::start(auth_type, USER, secret, true);
        assert_eq!(sent(step), b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        let mut client = ScramClient::new(pw.as_bytes());
        let mut msg = Vec::new();
        frontend::sasl_initial_response(&mut msg, SCRAM_MECHANISM, client.message());
        let cont = sent(feed(&mut a, &msg));
        let (tag, body) = split(&cont);
        assert_eq!((tag, &body[..4]), (b'R', &[0, 0, 0, 11][..]));
        client.update(&body[4..]).expect("server-first accepted");
        let mut msg = Vec::new();
        frontend::sasl_response(&mut msg, client.message());
        let step = feed(&mut a, &msg);
        if let AuthStep::Done(fin) = &step {
            let (tag, body) = split(fin);
            assert_eq!((tag, &body[..4]), (b'R', &[0, 0, 0, 12][..]));
            client.finish(&body[4..]).expect("server signature verifies");
        }
        (a, step)
    }

    #[test]
    fn scram_with_scram_and_plain_secrets() {
        for s in [scram_secret(PW), Secret::Plain(PW.into())] {
            let (_, step) = scram_login(AuthType::ScramSha256, Some(&s), PW);
            assert!(matches!(step, AuthStep::Done(ref b) if !b.is_empty()), "{s:?}: {step:?}");
            let (a, step) = scram_login(AuthType::ScramSha256, Some(&s), "wrong");
            assert!(is_password_failure(&step), "{s:?}: {step:?}");
            assert_eq!(a.failure_detail(), Some("SCRAM proof does not match"));
        }
    }

    #[test]
    fn scram_refuses_md5_secret_and_unknown_user_after_the_exchange() {
        let md5 = Secret::Md5(auth::md5_password_hash(USER, PW));
        let (a, step) = scram_login(AuthType::ScramSha256, Some(&md5), PW);
        assert!(is_password_failure(&step), "{step:?}");
        assert!(a.failure_detail().unwrap().contains("md5 secret"));
        let (a, step) = scram_login(AuthType::ScramSha256, None, PW);
        assert!(is_password_failure(&step), "{step:?}");
        assert_eq!(a.failure_detail(), Some("no such user: alice"));
    }

    #[test]
    fn md5_with_scram_secret_switches_to_scram() {
        let s = scram_secret(PW);
        let (_, step) = scram_login(AuthType::Md5, Some(&s), PW);
        assert!(matches!(step, AuthStep::Done(_)), "{step:?}");
        assert!(is_password_failure(&scram_login(AuthType::Md5, Some(&s), "nope").1));
    }

    #[test]
    fn wrong_tags_are_protocol_violations() {
        let s = Secret::Plain(PW.into());
        for t in [AuthType::Plain, AuthType::Md5, AuthType::ScramSha256] {
            let (mut a, _) = ClientAuth::start(t, USER, Some(&s), true);
            let step = a.on_message(b'Q', b"SELECT 1\0");
            assert!(is_violation(&step), "{t}: {step:?}");
            // Once failed, nothing more is accepted.
            assert!(is_violation(&a.on_message(b'p', b"s3cret\0")));
        }
        let (mut a, _) = ClientAuth::start(AuthType::Plain, USER, Some(&s), true);
        assert_eq!(
            a.on_message(0, b""),
            AuthStep::Fail { code: "08P01", message: "expected password response, got message type 0".into() }
        );
    }

    #[test]
    fn garbage_bodies() {
        let s = Secret::Plain(PW.into());
        for t in [AuthType::Plain, AuthType::Md5] {
            for body in [&b""[..], b"no terminator", b"pw\0trailing"] {
                let (mut a, _) = ClientAuth::start(t, USER, Some(&s), true);
                assert!(is_violation(&a.on_message(b'p', body)), "{t} {body:?}");
            }
        }
        let bad_initial: [&[u8]; 6] = [
            b"",
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\0\0\0",
            b"SCRAM-SHA-256\0\0\0\0\x05abc",
            b"SCRAM-SHA-256-PLUS\0\xff\xff\xff\xff",
            b"SCRAM-SHA-256\0\0\0\0\x04junk",
        ];
        for body in bad_initial {
            let (mut a, _) = ClientAuth::start(AuthType::ScramSha256, USER, Some(&s), true);
            assert!(is_violation(&a.on_message(b'p', body)), "{body:?}");
        }
        // A good first message, then a garbage final one.
        let (mut a, _) = ClientAuth::start(AuthType::ScramSha256, USER, Some(&s), true);
        let mut msg = Vec::new();
        frontend::sasl_initial_response(&mut msg, SCRAM_MECHANISM, b"n,,n=,r=abcdef");
        sent(feed(&mut a, &msg));
        assert!(is_violation(&a.on_message(b'p', b"c=biws,r=wrongnonce,p=AAAA")));
    }

    fn hba(text: &str) -> Hba {
        Hba::parse(text, std::path::Path::new("/nonexistent/pg_hba.conf")).unwrap()
    }

    fn tcp(ip: &str) -> Peer {
        Peer::Tcp(ip.parse().unwrap())
    }

    /// The plan for `user`@`db` from `peer`, whose OS user (asked only for peer rules) is root.
    fn planned(h: &Hba, peer: Peer, db: &str, user: &str) -> Plan {
        plan(AuthType::Hba, Some(h), peer, db, user, || Some("root".to_string()))
    }

    fn refusal(p: Plan) -> (&'static str, String) {
        match p {
            Plan::Refuse { code, message, .. } => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn plain_auth_types_plan_themselves() {
        for t in [AuthType::Trust, AuthType::Plain, AuthType::Md5, AuthType::ScramSha256] {
            let p = plan(t, None, tcp("10.0.0.1"), "db", "u", || panic!("no peer lookup"));
            assert_eq!(p, Plan::Authenticate(t));
        }
        assert_eq!(plan(AuthType::Any, None, Peer::Local, "db", "anyone", || None), Plan::Accept);
        // hba without rules (impossible by configuration) lets nobody in.
        let (code, _) = refusal(plan(AuthType::Hba, None, Peer::Local, "db", "u", || Some("u".into())));
        assert_eq!(code, "28000");
        // A ClientAuth never runs for these: if it did, it refuses.
        for t in [AuthType::Hba, AuthType::Any] {
            let (_, step) = ClientAuth::start(t, USER, None, false);
            assert!(matches!(step, AuthStep::Fail { code: "XX000", .. }), "{step:?}");
        }
    }

    #[test]
    fn hba_methods_first_match_and_messages() {
        let h = hba("local all root peer\n\
                     local all all md5\n\
                     host all bob 127.0.0.1/32 reject\n\
                     hostssl all all 0.0.0.0/0 trust\n\
                     host appdb all 127.0.0.1/32 scram-sha-256\n\
                     host all all 127.0.0.1/32 password\n\
                     host all peeruser 10.0.0.0/8 peer\n\
                     host all all 10.0.0.0/8 cert\n\
                     host all all ::1/128 trust\n");
        assert_eq!(planned(&h, Peer::Local, "db", "root"), Plan::Accept, "peer: OS user root");
        assert_eq!(planned(&h, Peer::Local, "db", "alice"), Plan::Authenticate(AuthType::Md5), "local md5");
        assert_eq!(planned(&h, tcp("127.0.0.1"), "appdb", "alice"), Plan::Authenticate(AuthType::ScramSha256));
        assert_eq!(planned(&h, tcp("127.0.0.1"), "otherdb", "alice"), Plan::Authenticate(AuthType::Plain));
        assert_eq!(planned(&h, tcp("::1"), "x", "y"), Plan::Authenticate(AuthType::Trust));
        assert_eq!(planned(&h, tcp("::ffff:127.0.0.1"), "appdb", "a"), Plan::Authenticate(AuthType::ScramSha256));
        // First match wins: bob is rejected before the scram rule could apply.
        assert_eq!(
            refusal(planned(&h, tcp("127.0.0.1"), "appdb", "bob")),
            (
                "28000",
                "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"bob\", database \"appdb\", no \
                 encryption"
                    .to_string()
            )
        );
        // hostssl never matches (no TLS): nothing else covers 192.168.x.
        assert_eq!(
            refusal(planned(&h, tcp("192.168.1.1"), "appdb", "alice")),
            (
                "28000",
                "no pg_hba.conf entry for host \"192.168.1.1\", user \"alice\", database \"appdb\", no encryption"
                    .to_string()
            )
        );
        assert_eq!(
            refusal(planned(&h, tcp("::ffff:192.168.1.1"), "d", "u")).1,
            "no pg_hba.conf entry for host \"192.168.1.1\", user \"u\", database \"d\", no encryption"
        );
        // Peer over TCP fails; cert always fails (no TLS).
        assert_eq!(
            refusal(planned(&h, tcp("10.1.1.1"), "d", "peeruser")),
            ("28000", "Peer authentication failed for user \"peeruser\"".to_string())
        );
        assert_eq!(
            refusal(planned(&h, tcp("10.1.1.1"), "d", "carol")),
            ("28000", "certificate authentication failed for user \"carol\"".to_string())
        );
        let local_peer = hba("local all all peer\n");
        assert_eq!(
            refusal(planned(&local_peer, Peer::Local, "d", "alice")).1,
            "Peer authentication failed for user \"alice\""
        );
        let unknown = plan(AuthType::Hba, Some(&local_peer), Peer::Local, "d", "alice", || None);
        match unknown {
            Plan::Refuse { code: "28000", detail, .. } => assert!(detail.contains("unknown"), "{detail}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(planned(&local_peer, Peer::Local, "d", "root"), Plan::Accept);
        // The OS user is asked for only when a peer rule applies.
        let p = plan(AuthType::Hba, Some(&h), Peer::Local, "db", "alice", || panic!("asked for the OS user"));
        assert_eq!(p, Plan::Authenticate(AuthType::Md5));
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Stored secrets only: deriving one from a cleartext password per login is slow in debug builds.
        let cases = [
            (AuthType::Plain, Secret::Plain(PW.into())),
            (AuthType::Md5, Secret::Md5(auth::md5_password_hash(USER, PW))),
            (AuthType::ScramSha256, scram_secret(PW)),
        ];
        for i in 0..3000 {
            let (t, s) = &cases[i % 3];
            let (mut a, _) = ClientAuth::start(*t, USER, Some(s), true);
            for _ in 0..3 {
                let len = (next() % 40) as usize;
                let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if i % 2 == 0 {
                    let mut b = b"SCRAM-SHA-256\0".to_vec();
                    b.extend_from_slice(&(len as u32).to_be_bytes());
                    b.extend_from_slice(&body);
                    body = b;
                }
                let tag = if next() % 8 == 0 { next() as u8 } else { b'p' };
                let _ = a.on_message(tag, &body);
            }
        }
    }
}
