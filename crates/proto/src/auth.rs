//! Password authentication mathematics: MD5 hashes as stored in pg_authid
//! and userlists, the SCRAM-SHA-256 server side used to authenticate pgmux's
//! own clients, and a thin wrapper over postgres-protocol's SCRAM client
//! used when pgmux logs in upstream. No I/O besides the OS random source.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use md5::Md5;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sha2::{Digest, Sha256};
use std::fmt;

/// Fills `buf` from the kernel's CSPRNG. Salts and nonces come from here.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        // SAFETY: `rest` is a live, exclusively borrowed slice, so the
        // pointer is valid for writes of `rest.len()` bytes; getrandom
        // writes at most that many and keeps no reference afterwards.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            // A signal can interrupt a large request; anything else is real.
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// "md5" + hex(md5(password ++ user)): the form pg_authid and userlists store.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    postgres_protocol::password::md5(password.as_bytes(), user)
}

/// What a client answers to AuthenticationMD5Password, computed from the
/// stored hash alone so pgmux can check clients and log in upstream
/// without knowing the cleartext password. A stored value without the
/// "md5" prefix is used as-is.
pub fn md5_salted_response(stored_md5: &str, salt: [u8; 4]) -> String {
    let hex_part = stored_md5.strip_prefix("md5").unwrap_or(stored_md5);
    let mut h = Md5::new();
    h.update(hex_part.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// HMAC-SHA256 without a fallible constructor: HMAC zero-pads keys up to
/// the 64-byte block and hashes longer ones first, so doing that here and
/// using the fixed-size constructor gives the same MAC with no error path.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block[..32].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = Hmac::<Sha256>::new(&Key::<Hmac<Sha256>>::from(block));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SCRAM's Hi(): PBKDF2-HMAC-SHA256 with a single output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut prev = hmac_sha256(password, &[salt, &[0, 0, 0, 1]]);
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac_sha256(password, &[&prev]);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

/// Compares without an early exit, so timing does not reveal how many
/// leading bytes of a key an attacker guessed right.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A SCRAM-SHA-256 verifier as stored in pg_authid.rolpassword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn decode_key(b64: &str) -> Option<[u8; 32]> {
    B64.decode(b64).ok()?.try_into().ok()
}

impl ScramSecret {
    /// Parses "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 {
            return None;
        }
        Some(ScramSecret {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: decode_key(stored)?,
            server_key: decode_key(server)?,
        })
    }

    /// Derives a secret from a cleartext password.
    ///
    /// Limitation: PostgreSQL runs SASLprep over the password first. For
    /// ASCII passwords (the overwhelmingly common case) that is the
    /// identity; for non-ASCII passwords needing normalisation the secret
    /// will differ from PostgreSQL's, and such users should store the
    /// SCRAM secret instead of the cleartext password.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// Checks a cleartext password (e.g. from AuthenticationCleartextPassword)
    /// against this secret.
    pub fn verify_password(&self, password: &str) -> bool {
        let other = ScramSecret::from_password(password, &self.salt, self.iterations);
        // Evaluate both before combining so the comparison time does not
        // depend on which key differs.
        let a = ct_eq(&self.stored_key, &other.stored_key);
        let b = ct_eq(&self.server_key, &other.server_key);
        a & b
    }
}

#[derive(Debug)]
pub enum ScramError {
    /// The client's message does not follow RFC 5802's grammar.
    Malformed(&'static str),
    /// The client asked for channel binding ("p=..."), which pgmux does not
    /// offer (it advertises only SCRAM-SHA-256, not -PLUS).
    ChannelBindingUnsupported,
    /// An authorization identity ("a=...") was given; PostgreSQL refuses it too.
    AuthzidUnsupported,
    /// A mandatory extension ("m=...") was requested.
    ExtensionUnsupported,
    /// The "c=" attribute does not repeat the GS2 header from the first message.
    ChannelBindingMismatch,
    /// The client's final nonce is not the one the exchange agreed on.
    NonceMismatch,
    /// The proof does not match the secret: wrong password.
    InvalidProof,
    /// A message arrived when the exchange was not expecting it.
    OutOfOrder(&'static str),
    /// The OS random source failed while making a nonce.
    Random(std::io::Error),
    /// The upstream server's SCRAM messages were rejected by the client side.
    Client(std::io::Error),
    /// The server's salt or iteration count is not the stored secret's: the secrets differ.
    SecretMismatch,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(why) => write!(f, "malformed SCRAM message: {why}"),
            ScramError::ChannelBindingUnsupported => {
                write!(f, "SCRAM channel binding was requested but is not supported (only SCRAM-SHA-256 is offered)")
            }
            ScramError::AuthzidUnsupported => {
                write!(f, "client uses authorization identity, but it is not supported")
            }
            ScramError::ExtensionUnsupported => {
                write!(f, "client requires an unsupported SCRAM extension")
            }
            ScramError::ChannelBindingMismatch => {
                write!(f, "SCRAM channel binding check failed")
            }
            ScramError::NonceMismatch => write!(f, "SCRAM nonce mismatch"),
            ScramError::InvalidProof => write!(f, "SCRAM proof does not match: wrong password"),
            ScramError::OutOfOrder(what) => write!(f, "unexpected SCRAM message: {what}"),
            ScramError::Random(e) => write!(f, "could not generate SCRAM nonce: {e}"),
            ScramError::Client(e) => write!(f, "SCRAM exchange with server failed: {e}"),
            ScramError::SecretMismatch => {
                write!(f, "the server's SCRAM secret differs from the one in auth_file (other salt or iteration count)")
            }
        }
    }
}

impl std::error::Error for ScramError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScramError::Random(e) | ScramError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// Printable characters except ',' (RFC 5802 "printable"), the nonce alphabet.
fn is_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        gs2_header: &'static str,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done {
        client_key: [u8; 32],
    },
    /// Any error ends the exchange; a retry needs a new ScramServer.
    Failed,
}

/// Server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) for clients of pgmux.
pub struct ScramServer {
    secret: ScramSecret,
    state: ServerState,
}

impl ScramServer {
    pub fn new(secret: ScramSecret) -> Self {
        ScramServer { secret, state: ServerState::AwaitingClientFirst }
    }

    /// Takes the client-first-message (SASLInitialResponse data) and
    /// returns the server-first-message (AuthenticationSASLContinue data).
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            self.state = ServerState::Failed;
            return Err(ScramError::OutOfOrder("client-first-message sent twice"));
        }
        self.state = ServerState::Failed;
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("client-first-message is not UTF-8"))?;
        let (gs2_header, bare) = split_gs2_header(msg)?;
        let client_nonce = parse_client_first_bare(bare)?;

        let mut raw = [0u8; 18];
        random_bytes(&mut raw).map_err(ScramError::Random)?;
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&self.secret.salt), self.secret.iterations);
        let reply = server_first.clone().into_bytes();
        self.state =
            ServerState::AwaitingClientFinal { gs2_header, client_first_bare: bare.to_owned(), server_first, nonce };
        Ok(reply)
    }

    /// Takes the client-final-message (SASLResponse data), verifies the
    /// proof and returns the server-final-message
    /// (AuthenticationSASLFinal data).
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, ServerState::Failed);
        let ServerState::AwaitingClientFinal { gs2_header, client_first_bare, server_first, nonce } = state else {
            return Err(ScramError::OutOfOrder("client-final-message before client-first-message"));
        };
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("client-final-message is not UTF-8"))?;
        // The proof is always the last attribute, and everything before it
        // is signed as client-final-message-without-proof.
        let (without_proof, proof_b64) =
            msg.rsplit_once(",p=").ok_or(ScramError::Malformed("client-final-message has no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("expected channel binding attribute"))?;
        let final_nonce =
            attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("expected nonce attribute"))?;
        // Any further attributes are extensions, which RFC 5802 says to ignore.
        if cbind != B64.encode(gs2_header) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if final_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; 32] = B64
            .decode(proof_b64)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("client proof is not 32 bytes of base64"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let derived: [u8; 32] = Sha256::digest(client_key).into();
        if !ct_eq(&derived, &self.secret.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, &[auth_message.as_bytes()]);
        self.state = ServerState::Done { client_key };
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// The client's ClientKey after a successful exchange. With it pgmux can
    /// authenticate upstream as this user without knowing the password.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Done { client_key } => Some(client_key),
            _ => None,
        }
    }
}

/// Splits "n,,rest" / "y,,rest" into the GS2 header and the bare message.
fn split_gs2_header(msg: &str) -> Result<(&'static str, &str), ScramError> {
    let (header, rest) = if let Some(rest) = msg.strip_prefix("n,") {
        ("n,,", rest)
    } else if let Some(rest) = msg.strip_prefix("y,") {
        // The client could bind but thinks we cannot; true, since pgmux
        // never offers SCRAM-SHA-256-PLUS, so this is not a downgrade.
        ("y,,", rest)
    } else if msg.starts_with("p=") {
        return Err(ScramError::ChannelBindingUnsupported);
    } else {
        return Err(ScramError::Malformed("unexpected channel-binding flag in client-first-message"));
    };
    if rest.starts_with("a=") {
        return Err(ScramError::AuthzidUnsupported);
    }
    let bare = rest.strip_prefix(',').ok_or(ScramError::Malformed("expected ',' after channel-binding flag"))?;
    Ok((header, bare))
}

/// Returns the client nonce from "n=<user>,r=<nonce>[,ext...]".
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    if bare.starts_with("m=") {
        return Err(ScramError::ExtensionUnsupported);
    }
    let mut attrs = bare.split(',');
    // PostgreSQL ignores the SCRAM user name (libpq sends it empty) and uses
    // the one from the startup packet; so do we.
    attrs.next().and_then(|a| a.strip_prefix("n=")).ok_or(ScramError::Malformed("expected user name attribute"))?;
    let nonce =
        attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("expected nonce attribute"))?;
    if !is_nonce(nonce) {
        return Err(ScramError::Malformed("client nonce is empty or not printable"));
    }
    Ok(nonce)
}

/// Client side of SCRAM-SHA-256 for logging in to an upstream server,
/// delegating to postgres-protocol. Channel binding is reported as
/// unsupported because pgmux's upstream connections are plain TCP or Unix.
pub struct ScramClient {
    inner: ScramSha256,
}

impl ScramClient {
    pub fn new(password: &[u8]) -> Self {
        ScramClient { inner: ScramSha256::new(password, ChannelBinding::unsupported()) }
    }

    /// The message to send next (client-first, then client-final).
    pub fn message(&self) -> &[u8] {
        self.inner.message()
    }

    /// Feeds AuthenticationSASLContinue data.
    pub fn update(&mut self, server_data: &[u8]) -> Result<(), ScramError> {
        self.inner.update(server_data).map_err(ScramError::Client)
    }

    /// Feeds AuthenticationSASLFinal data, verifying the server's signature.
    pub fn finish(&mut self, server_data: &[u8]) -> Result<(), ScramError> {
        self.inner.finish(server_data).map_err(ScramError::Client)
    }
}

/// Client side of SCRAM-SHA-256 without the password: with a user's ClientKey (learnt from that user's own SCRAM
/// login to pgmux, see [`ScramServer::client_key`]) and the stored secret, pgmux can log in upstream as the user, as
/// PgBouncer does when auth_file holds SCRAM secrets. The server must hold the same secret (same salt and
/// iteration count); otherwise the exchange fails with a clear error instead of a wrong proof.
pub struct ScramKeyClient {
    client_key: [u8; 32],
    secret: ScramSecret,
    client_first_bare: String,
    message: Vec<u8>,
    state: KeyClientState,
}

enum KeyClientState {
    /// The client-first-message is ready; waiting for the server-first-message.
    First {
        nonce: String,
    },
    /// The client-final-message is ready; waiting for the server's signature.
    Final {
        server_signature: [u8; 32],
    },
    Done,
    Failed,
}

impl ScramKeyClient {
    pub fn new(client_key: [u8; 32], secret: ScramSecret) -> Result<Self, ScramError> {
        let mut raw = [0u8; 18];
        random_bytes(&mut raw).map_err(ScramError::Random)?;
        let nonce = B64.encode(raw);
        // PostgreSQL takes the user from the startup packet; libpq sends an empty SCRAM user name too.
        let client_first_bare = format!("n=,r={nonce}");
        let message = format!("n,,{client_first_bare}").into_bytes();
        Ok(ScramKeyClient { client_key, secret, client_first_bare, message, state: KeyClientState::First { nonce } })
    }

    /// The message to send next (client-first, then client-final).
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Feeds the server-first-message (AuthenticationSASLContinue data).
    pub fn update(&mut self, server_data: &[u8]) -> Result<(), ScramError> {
        let state = std::mem::replace(&mut self.state, KeyClientState::Failed);
        let KeyClientState::First { nonce } = state else {
            return Err(ScramError::OutOfOrder("server-first-message twice"));
        };
        let server_first =
            std::str::from_utf8(server_data).map_err(|_| ScramError::Malformed("server-first-message is not UTF-8"))?;
        let mut attrs = server_first.split(',');
        let full_nonce =
            attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("expected server nonce"))?;
        let salt = attrs.next().and_then(|a| a.strip_prefix("s=")).ok_or(ScramError::Malformed("expected salt"))?;
        let iterations = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse::<u32>().ok())
            .ok_or(ScramError::Malformed("expected iteration count"))?;
        if !full_nonce.starts_with(&nonce) || full_nonce.len() == nonce.len() || !is_nonce(full_nonce) {
            return Err(ScramError::NonceMismatch);
        }
        if B64.decode(salt).ok().as_deref() != Some(self.secret.salt.as_slice()) || iterations != self.secret.iterations
        {
            return Err(ScramError::SecretMismatch);
        }
        let without_proof = format!("c=biws,r={full_nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut proof = self.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        let server_signature = hmac_sha256(&self.secret.server_key, &[auth_message.as_bytes()]);
        self.state = KeyClientState::Final { server_signature };
        Ok(())
    }

    /// Feeds the server-final-message (AuthenticationSASLFinal data) and checks the server's signature.
    pub fn finish(&mut self, server_data: &[u8]) -> Result<(), ScramError> {
        let state = std::mem::replace(&mut self.state, KeyClientState::Failed);
        let KeyClientState::Final { server_signature } = state else {
            return Err(ScramError::OutOfOrder("server-final-message before server-first-message"));
        };
        let text =
            std::str::from_utf8(server_data).map_err(|_| ScramError::Malformed("server-final-message is not UTF-8"))?;
        let v = text.split(',').find_map(|a| a.strip_prefix("v=")).ok_or(ScramError::Malformed("expected verifier"))?;
        let got: [u8; 32] = B64
            .decode(v)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ScramError::Malformed("server signature is not 32 bytes of base64"))?;
        if !ct_eq(&got, &server_signature) {
            return Err(ScramError::InvalidProof);
        }
        self.state = KeyClientState::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;

    /// A ClientKey learnt from a password login to pgmux's ScramServer logs in to another server holding the same
    /// secret, and is refused by one holding a different secret.
    #[test]
    fn key_client_logs_in_with_a_learnt_client_key() {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 4096);
        // A client logs in to pgmux with its password.
        let mut pgmux_side = ScramServer::new(secret.clone());
        let mut client = ScramClient::new(b"pw");
        let first = pgmux_side.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let fin = pgmux_side.client_final(client.message()).unwrap();
        client.finish(&fin).unwrap();
        let key = pgmux_side.client_key().unwrap();
        // pgmux logs in upstream with the key.
        let mut upstream = ScramServer::new(secret.clone());
        let mut k = ScramKeyClient::new(key, secret.clone()).unwrap();
        let first = upstream.client_first(k.message()).unwrap();
        k.update(&first).unwrap();
        let fin = upstream.client_final(k.message()).unwrap();
        k.finish(&fin).unwrap();
        // Wrong key: the server refuses the proof.
        let mut upstream = ScramServer::new(secret.clone());
        let mut bad = ScramKeyClient::new([7u8; 32], secret.clone()).unwrap();
        let first = upstream.client_first(bad.message()).unwrap();
        bad.update(&first).unwrap();
        assert!(matches!(upstream.client_final(bad.message()), Err(ScramError::InvalidProof)));
        // The server holds a different secret (another salt): said before any proof is sent.
        let other = ScramSecret::from_password("pw", b"fedcba9876543210", 4096);
        let mut upstream = ScramServer::new(other);
        let mut k = ScramKeyClient::new(key, secret.clone()).unwrap();
        let first = upstream.client_first(k.message()).unwrap();
        assert!(matches!(k.update(&first), Err(ScramError::SecretMismatch)));
        // A forged server signature is caught.
        let mut upstream = ScramServer::new(secret.clone());
        let mut k = ScramKeyClient::new(key, secret).unwrap();
        let first = upstream.client_first(k.message()).unwrap();
        k.update(&first).unwrap();
        upstream.client_final(k.message()).unwrap();
        assert!(matches!(k.finish(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), Err(ScramError::InvalidProof)));
    }

    #[test]
    fn key_client_rejects_bad_server_messages() {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 4096);
        for bad in [&b""[..], b"r=", b"x=1,s=AA==,i=1", b"r=zzz,s=AA==,i=4096", b"\xff\xfe", b"r=abc"] {
            let mut k = ScramKeyClient::new([1u8; 32], secret.clone()).unwrap();
            assert!(k.update(bad).is_err(), "{bad:?}");
        }
        let mut k = ScramKeyClient::new([1u8; 32], secret).unwrap();
        assert!(k.finish(b"v=AA==").is_err(), "final before first");
    }

    #[test]
    fn random_bytes_fills() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        random_bytes(&mut []).unwrap();
    }

    #[test]
    fn md5_hashes() {
        let stored = md5_password_hash("md5_user", "password");
        assert_eq!(stored.len(), 35);
        assert!(stored.starts_with("md5"));
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        // Known answer from postgres-protocol's own test.
        assert_eq!(md5_salted_response(&stored, salt), "md562af4dd09bbb41884907a838a3233294");
        assert_eq!(
            md5_salted_response(&stored, salt),
            postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt)
        );
        assert_eq!(
            md5_salted_response(&md5_password_hash("a", "b"), [1, 2, 3, 4]),
            postgres_protocol::authentication::md5_hash(b"a", b"b", [1, 2, 3, 4])
        );
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2 (short key) and 6 (key longer than a block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"])),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn secret_parse_and_derive() {
        let stored = postgres_protocol::password::scram_sha_256(b"pw");
        let secret = ScramSecret::parse(&stored).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert!(secret.verify_password("pw"));
        assert!(!secret.verify_password("pW"));
        assert_eq!(ScramSecret::from_password("pw", &secret.salt, secret.iterations), secret);
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$0:c2FsdA==$",
            "SCRAM-SHA-256$x:c2FsdA==$a:b",
            "SCRAM-SHA-256$4096:!!$a:b",
            "SCRAM-SHA-256$4096",
        ] {
            assert_eq!(ScramSecret::parse(bad), None, "{bad}");
        }
        // Every truncation of a valid secret is rejected or, never panics.
        for n in 0..stored.len() {
            assert_eq!(ScramSecret::parse(&stored[..n]), None);
        }
    }

    /// Runs a whole exchange between postgres-protocol's client and our server.
    fn exchange(secret: ScramSecret, password: &str) -> Result<(), ScramError> {
        let mut client = ScramClient::new(password.as_bytes());
        let mut server = ScramServer::new(secret);
        let first = server.client_first(client.message())?;
        client.update(&first)?;
        let fin = server.client_final(client.message())?;
        assert!(server.client_key().is_some());
        client.finish(&fin)
    }

    #[test]
    fn scram_end_to_end() {
        let derived = ScramSecret::from_password("pencil", b"0123456789abcdef", 4096);
        exchange(derived.clone(), "pencil").unwrap();
        assert!(matches!(exchange(derived, "pen"), Err(ScramError::InvalidProof)));
        let stored = ScramSecret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        exchange(stored.clone(), "pw").unwrap();
        assert!(matches!(exchange(stored, "wp"), Err(ScramError::InvalidProof)));
    }

    #[test]
    fn client_key_recovers_stored_key() {
        let secret = ScramSecret::from_password("pw", b"salt", 16);
        let mut client = ScramClient::new(b"pw");
        let mut server = ScramServer::new(secret.clone());
        assert_eq!(server.client_key(), None);
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        server.client_final(client.message()).unwrap();
        let key = server.client_key().unwrap();
        assert_eq!(<[u8; 32]>::from(Sha256::digest(key)), secret.stored_key);
    }

    fn server() -> ScramServer {
        ScramServer::new(ScramSecret::from_password("pw", b"salt", 16))
    }

    #[test]
    fn client_first_variants() {
        let reply = server().client_first(b"n,,n=,r=abc").unwrap();
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.starts_with("r=abc"), "{reply}");
        // 18 random bytes are 24 base64 characters.
        assert_eq!(reply.split(',').next().unwrap().len(), 2 + 3 + 24);
        assert!(reply.ends_with(",s=c2FsdA==,i=16"), "{reply}");
        assert!(server().client_first(b"y,,n=user,r=abc,x=ext").is_ok());
        assert!(matches!(
            server().client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBindingUnsupported)
        ));
        assert!(matches!(server().client_first(b"n,a=bob,n=,r=abc"), Err(ScramError::AuthzidUnsupported)));
        assert!(matches!(server().client_first(b"n,,m=x,n=,r=abc"), Err(ScramError::ExtensionUnsupported)));
        for bad in [&b""[..], b"n", b"n,,", b"n,,n=", b"n,,n=,r=", b"n,,r=abc", b"x,,n=,r=a", b"n,,n=,r=a\xff"] {
            assert!(server().client_first(bad).is_err(), "{bad:?}");
        }
    }

    /// A server that has seen "n,,n=,r=abc", and the nonce it chose.
    fn after_first(header: &str) -> (ScramServer, String) {
        let mut s = server();
        let reply = s.client_first(format!("{header}n=,r=abc").as_bytes()).unwrap();
        let reply = String::from_utf8(reply).unwrap();
        let nonce = reply.split(',').next().unwrap()[2..].to_string();
        (s, nonce)
    }

    #[test]
    fn client_final_checks() {
        let proof = B64.encode([0u8; 32]);
        let (mut s, nonce) = after_first("n,,");
        assert!(matches!(
            s.client_final(format!("c=eSws,r={nonce},p={proof}").as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        ));
        let (mut s, nonce) = after_first("y,,");
        assert!(matches!(
            s.client_final(format!("c=biws,r={nonce},p={proof}").as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        ));
        let (mut s, _) = after_first("n,,");
        assert!(matches!(s.client_final(format!("c=biws,r=abc,p={proof}").as_bytes()), Err(ScramError::NonceMismatch)));
        let (mut s, nonce) = after_first("n,,");
        assert!(matches!(
            s.client_final(format!("c=biws,r={nonce},p={proof}").as_bytes()),
            Err(ScramError::InvalidProof)
        ));
        // Once failed, the exchange stays failed.
        assert!(matches!(s.client_final(b"c=biws"), Err(ScramError::OutOfOrder(_))));
        assert!(matches!(server().client_final(b"c=biws,r=a,p=AAAA"), Err(ScramError::OutOfOrder(_))));
        let (mut s, nonce) = after_first("n,,");
        assert!(matches!(s.client_final(format!("c=biws,r={nonce},p=AAAA").as_bytes()), Err(ScramError::Malformed(_))));
    }

    #[test]
    fn truncated_and_garbage_messages_fail() {
        let mut client = ScramClient::new(b"pw");
        let first_msg = client.message().to_vec();
        let mut s = server();
        let first = s.client_first(&first_msg).unwrap();
        client.update(&first).unwrap();
        let final_msg = client.message().to_vec();
        for n in 0..first_msg.len() {
            // Cutting into the nonce still leaves a valid message; only
            // shorter prefixes must fail.
            let prefix = &first_msg[..n];
            if !String::from_utf8_lossy(prefix).contains("r=") || prefix.ends_with(b"r=") {
                assert!(server().client_first(prefix).is_err(), "{prefix:?}");
            }
        }
        for n in 0..final_msg.len() {
            let (mut s2, _) = after_first("n,,");
            assert!(s2.client_final(&final_msg[..n]).is_err());
        }
        let mut rng = XorShift::new(0x5c7a);
        for _ in 0..5_000 {
            let buf = rng.buffer(80);
            let _ = server().client_first(&buf);
            let (mut s2, _) = after_first("n,,");
            let _ = s2.client_final(&buf);
            let _ = ScramSecret::parse(&String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn client_rejects_bad_server() {
        let mut client = ScramClient::new(b"pw");
        assert!(matches!(client.update(b"garbage"), Err(ScramError::Client(_))));
        // A server that does not know the password cannot fake the final.
        let mut client = ScramClient::new(b"pw");
        let mut s = ScramServer::new(ScramSecret::from_password("other", b"salt", 16));
        let first = s.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        assert!(s.client_final(client.message()).is_err());
        let bogus = format!("v={}", B64.encode([0u8; 32]));
        assert!(client.finish(bogus.as_bytes()).is_err());
    }
}
