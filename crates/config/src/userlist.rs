//! The PgBouncer `auth_file` (userlist.txt): who may log in, with what secret.
//!
//! One user per line: `"name" "secret"`, both double-quoted, `""` standing for
//! a quote inside a field, anything after the second field ignored. Empty
//! lines and lines starting with `;` or `#` are comments. A secret is kept as
//! written and only classified (plain, MD5 or SCRAM); verifying it is the
//! binary's job.

use std::collections::HashMap;
use std::path::Path;

use crate::error::ConfigError;

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A user's stored secret, classified the way PgBouncer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A clear-text password.
    Plain(String),
    /// `"md5"` followed by 32 lowercase hex digits: md5(password + user).
    Md5(String),
    /// The whole `SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>` string.
    Scram(String),
}

impl Secret {
    /// Classifies a secret from elsewhere (what `auth_query` returned) by the auth_file's rules; a malformed SCRAM
    /// secret is an error.
    pub fn from_stored(secret: String) -> Result<Secret, String> {
        Secret::classify(secret)
    }

    /// The secret as written.
    pub fn as_str(&self) -> &str {
        match self {
            Secret::Plain(s) | Secret::Md5(s) | Secret::Scram(s) => s,
        }
    }

    fn classify(secret: String) -> Result<Secret, String> {
        if let Some(hex) = secret.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Secret::Md5(secret.to_ascii_lowercase()));
            }
        }
        if secret.starts_with(SCRAM_PREFIX) {
            check_scram(&secret)?;
            return Ok(Secret::Scram(secret));
        }
        Ok(Secret::Plain(secret))
    }
}

/// Users from an auth_file, looked up by exact name.
#[derive(Debug, Clone, Default)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl UserList {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<UserList, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))?;
        UserList::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used in messages).
    ///
    /// A user listed twice keeps the later secret, as in PgBouncer.
    pub fn parse(text: &str, path: &Path) -> Result<UserList, ConfigError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let entry = parse_line(line).map_err(|msg| ConfigError::at_line(path, i + 1, None, msg))?;
            if let Some((user, secret)) = entry {
                users.insert(user, secret);
            }
        }
        Ok(UserList { users })
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// The listed user names, in no particular order (the admin console's SHOW USERS).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One line: `Ok(None)` for blanks and comments.
fn parse_line(line: &str) -> Result<Option<(String, Secret)>, String> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted(rest).map_err(|e| format!("user name: {e}"))?;
    if user.is_empty() {
        return Err("empty user name".to_string());
    }
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err(format!("missing secret for user {user:?} (expected \"user\" \"secret\")"));
    }
    // Whatever follows the second field is ignored, as PgBouncer does.
    let (secret, _) = quoted(rest).map_err(|e| format!("secret of user {user:?}: {e}"))?;
    let secret = Secret::classify(secret).map_err(|e| format!("secret of user {user:?}: {e}"))?;
    Ok(Some((user, secret)))
}

/// A double-quoted field at the start of `s` (`""` is a quote), and what follows it.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let Some(body) = s.strip_prefix('"') else {
        return Err("expected a double-quoted field".to_string());
    };
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            value.push(c);
            continue;
        }
        if let Some((_, '"')) = chars.peek() {
            chars.next();
            value.push('"');
            continue;
        }
        return Ok((value, &body[i + 1..]));
    }
    Err("missing closing double quote".to_string())
}

/// Catches a truncated or mangled SCRAM secret at load time rather than at
/// the first login: `SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>`.
fn check_scram(secret: &str) -> Result<(), String> {
    let bad = |what: &str| Err(format!("malformed SCRAM secret ({what})"));
    let body = &secret[SCRAM_PREFIX.len()..];
    let Some((iter_salt, keys)) = body.split_once('$') else {
        return bad("expected SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>");
    };
    let Some((iterations, salt)) = iter_salt.split_once(':') else {
        return bad("expected <iterations>:<salt>");
    };
    if !matches!(iterations.parse::<u32>(), Ok(n) if n > 0) {
        return bad("iterations must be a positive integer");
    }
    let Some((stored, server)) = keys.split_once(':') else {
        return bad("expected <storedkey>:<serverkey>");
    };
    let base64 =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !(base64(salt) && base64(stored) && base64(server)) {
        return bad("salt and keys must be non-empty base64");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
