//! Typed, key-naming access to one section of either config format.
//!
//! Config values are read by walking a section (a `toml::Table`, or the entries of a pgbouncer.ini section or
//! connection string) instead of deriving serde structs, so every message can name the file, the line when there is
//! one, the dotted key, the bad value and what would have been accepted. Both formats go through the same getters,
//! which is what makes them produce the same [`crate::Config`]: TOML values arrive typed, ini values as text that is
//! parsed the way PgBouncer parses it (integers as `strtol` with base 0, seconds as a decimal number, booleans as
//! PostgreSQL's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ConfigError, Warning};
use crate::ini::Entries;

/// Largest accepted timeout: big enough for "practically never", small enough
/// that `Instant + timeout` cannot overflow.
const MAX_SECONDS: f64 = 1e9;

/// Where a section's values come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Toml(&'a toml::Table),
    Ini(&'a Entries),
}

/// One value, before it is given a type.
#[derive(Clone, Copy)]
pub(crate) enum Raw<'a> {
    Toml(&'a toml::Value),
    Text(&'a str),
}

/// One section of the config file, e.g. `[pooler]`, `[databases.appdb]` or the connection string of `appdb`.
pub(crate) struct Section<'a> {
    file: &'a Path,
    /// Where the section (or the connection string) starts, when the format has lines.
    line: Option<usize>,
    prefix: String,
    source: Source<'a>,
}

impl<'a> Section<'a> {
    pub(crate) fn new(file: &'a Path, prefix: String, table: &'a toml::Table) -> Self {
        Section { file, line: None, prefix, source: Source::Toml(table) }
    }

    /// Entries read from pgbouncer.ini; each knows its own file and line (`file` and `line`, where the section or
    /// connection string starts, are for messages about the section itself or a key it lacks).
    pub(crate) fn ini(file: &'a Path, line: Option<usize>, prefix: String, entries: &'a Entries) -> Self {
        Section { file, line, prefix, source: Source::Ini(entries) }
    }

    /// The dotted name of `name` in this section, as the user would write it.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{}", self.prefix, toml_key(name))
    }

    /// The file and line `name` was set at (the section's file when it is not set or the format has no lines).
    fn origin(&self, name: &str) -> (&'a Path, Option<usize>) {
        match self.source {
            Source::Ini(entries) => match entries.get(name) {
                Some(e) => (e.file.as_path(), Some(e.line)),
                None => (self.file, self.line),
            },
            Source::Toml(_) => (self.file, self.line),
        }
    }

    /// A problem with the section as a whole (e.g. a reserved database name).
    pub(crate) fn section_err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at_key_line(self.file, self.line, self.prefix.clone(), message)
    }

    pub(crate) fn err(&self, name: &str, message: impl Into<String>) -> ConfigError {
        let (file, line) = self.origin(name);
        ConfigError::at_key_line(file, line, self.key(name), message)
    }

    pub(crate) fn warning(&self, name: &str, message: impl Into<String>) -> Warning {
        let (file, line) = self.origin(name);
        Warning::at_key(file, line, self.key(name), message)
    }

    /// The keys present, in the order they appear (file order for ini, sorted for TOML).
    pub(crate) fn keys(&self) -> Vec<&'a str> {
        match self.source {
            Source::Toml(t) => {
                let mut keys: Vec<&str> = t.keys().map(String::as_str).collect();
                keys.sort_unstable();
                keys
            }
            Source::Ini(entries) => {
                let mut keys: Vec<(&std::path::Path, usize, &str)> =
                    entries.values().map(|e| (e.file.as_path(), e.line, e.key.as_str())).collect();
                keys.sort_unstable();
                keys.into_iter().map(|(_, _, k)| k).collect()
            }
        }
    }

    pub(crate) fn raw(&self, name: &str) -> Option<Raw<'a>> {
        match self.source {
            Source::Toml(t) => t.get(name).map(Raw::Toml),
            Source::Ini(entries) => entries.get(name).map(|e| Raw::Text(e.value.as_str())),
        }
    }

    /// Rejects the first key (in file order) not in `allowed`, suggesting a near miss.
    pub(crate) fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self.keys().into_iter().find(|k| !allowed.contains(k)) {
            Some(unknown) => {
                let hint = match closest(unknown, allowed) {
                    Some(near) => format!("; did you mean {near}?"),
                    None => String::new(),
                };
                let message = if allowed.len() <= 30 {
                    format!("unknown key (expected one of: {}){hint}", allowed.join(", "))
                } else {
                    format!("unknown key (not a PgBouncer 1.25 setting nor one of pgmux's own){hint}")
                };
                Err(self.err(unknown, message))
            }
            None => Ok(()),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Raw::Toml(toml::Value::String(s))) => Ok(Some(s.as_str())),
            Some(Raw::Text(s)) => Ok(Some(s)),
            Some(Raw::Toml(other)) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    /// A string that names a file, resolved against the directory of the file that set it; `""` means unset.
    pub(crate) fn path(&self, name: &str) -> Result<Option<Option<PathBuf>>, ConfigError> {
        let Some(value) = self.string(name)? else { return Ok(None) };
        if value.is_empty() {
            return Ok(Some(None));
        }
        let value = Path::new(value);
        let (file, _) = self.origin(name);
        Ok(Some(Some(match file.parent() {
            Some(dir) if value.is_relative() => dir.join(value),
            _ => value.to_path_buf(),
        })))
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        let n = match self.raw(name) {
            None => return Ok(None),
            Some(Raw::Toml(toml::Value::Integer(i))) => *i,
            Some(Raw::Toml(other)) => return Err(self.wrong_type(name, "an integer", other)),
            Some(Raw::Text(t)) => parse_c_integer(t).ok_or_else(|| {
                self.err(name, format!("invalid value {t:?} (expected an integer from {min} to {max})"))
            })?,
        };
        if (min..=max).contains(&n) {
            Ok(Some(n))
        } else {
            Err(self.err(name, format!("invalid value {n} (expected an integer from {min} to {max})")))
        }
    }

    /// A number of seconds (integer or float, as PgBouncer accepts `15.0`).
    pub(crate) fn seconds(&self, name: &str, min: f64) -> Result<Option<Duration>, ConfigError> {
        let secs = match self.raw(name) {
            None => return Ok(None),
            Some(Raw::Toml(toml::Value::Integer(i))) => *i as f64,
            Some(Raw::Toml(toml::Value::Float(f))) => *f,
            Some(Raw::Toml(other)) => return Err(self.wrong_type(name, "a number of seconds", other)),
            Some(Raw::Text(t)) => t.trim().parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| {
                self.err(name, format!("invalid value {t:?} (expected a number of seconds, e.g. 15 or 2.5)"))
            })?,
        };
        if !(min..=MAX_SECONDS).contains(&secs) {
            return Err(self.err(
                name,
                format!("invalid value {secs} (expected a number of seconds from {min} to {MAX_SECONDS})"),
            ));
        }
        Duration::try_from_secs_f64(secs).map(Some).map_err(|e| self.err(name, format!("invalid value {secs}: {e}")))
    }

    /// A number of seconds where 0 means "never" (`None`).
    pub(crate) fn timeout(&self, name: &str) -> Result<Option<Option<Duration>>, ConfigError> {
        Ok(self.seconds(name, 0.0)?.map(|d| (!d.is_zero()).then_some(d)))
    }

    /// A boolean: TOML `true`/`false`, or (both formats) an integer where non-zero is true, as PgBouncer's integer
    /// switches; ini text also takes PostgreSQL's spellings (`on`, `off`, `yes`, `no`, `true`, `false`).
    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Raw::Toml(toml::Value::Boolean(b))) => Ok(Some(*b)),
            Some(Raw::Toml(toml::Value::Integer(i))) => Ok(Some(*i != 0)),
            Some(Raw::Toml(other)) => Err(self.wrong_type(name, "a boolean", other)),
            Some(Raw::Text(t)) => parse_bool(t)
                .map(Some)
                .ok_or_else(|| self.err(name, format!("invalid value {t:?} (expected 1 or 0, on or off)"))),
        }
    }

    /// A string, or an array of strings (TOML only).
    pub(crate) fn string_list(&self, name: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Raw::Toml(toml::Value::String(s))) => Ok(Some(vec![s.as_str()])),
            Some(Raw::Text(s)) => Ok(Some(vec![s])),
            Some(Raw::Toml(toml::Value::Array(items))) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.as_str()),
                    other => Err(self.wrong_type(name, "an array of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Raw::Toml(other)) => Err(self.wrong_type(name, "a string or an array of strings", other)),
        }
    }

    /// A comma-separated list of names (PgBouncer's `admin_users`, `ignore_startup_parameters`, ...); TOML may give
    /// an array instead. `""` is the empty list.
    pub(crate) fn name_list(&self, name: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(items) = self.string_list(name)? else { return Ok(None) };
        let mut out: Vec<String> = Vec::new();
        for item in &items {
            for part in item.split(',').map(str::trim) {
                if part.is_empty() {
                    if items.len() == 1 && item.trim().is_empty() {
                        continue;
                    }
                    return Err(self.err(name, format!("invalid value {item:?} (empty name in list)")));
                }
                if part.chars().any(char::is_control) {
                    return Err(self.err(name, format!("invalid name {part:?} (contains a control character)")));
                }
                if !out.iter().any(|o| o == part) {
                    out.push(part.to_string());
                }
            }
        }
        Ok(Some(out))
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &toml::Value) -> ConfigError {
        self.err(name, format!("wrong type: expected {expected}, found {}", found.type_str()))
    }
}

/// An integer as C's `strtol(s, &end, 0)` reads a whole string: optional sign, then `0x` hex, a leading `0` for
/// octal (PgBouncer's `unix_socket_mode = 0777`), or decimal.
pub(crate) fn parse_c_integer(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..)?),
        Some(b'+') => (false, s.get(1..)?),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        (16, hex)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, digits.get(1..)?)
    } else {
        (10, digits)
    };
    // from_str_radix would take a second sign; C would not.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i64::from_str_radix(digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// PostgreSQL's boolean spellings, plus any integer (non-zero is true), as PgBouncer's integer switches read them.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "f" | "n" => Some(false),
        other => parse_c_integer(other).map(|n| n != 0),
    }
}

/// `name` as a TOML key: bare when possible, otherwise quoted (`"*"`).
pub(crate) fn toml_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// The entry of `allowed` nearest to `key`, if it is near enough to be a typo.
fn closest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed.iter().map(|a| (edit_distance(key, a), *a)).filter(|(d, a)| *d <= 2.max(a.len() / 5)).min().map(|(_, a)| a)
}

/// Levenshtein distance (keys are short; quadratic is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev.get(j).copied().unwrap_or(usize::MAX).saturating_add(usize::from(ca != *cb));
            let delete = prev.get(j + 1).copied().unwrap_or(usize::MAX).saturating_add(1);
            let insert = cur.get(j).copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integers() {
        for (s, n) in [("0", 0), ("42", 42), ("-7", -7), ("+7", 7), ("0x1F", 31), ("0777", 511), ("010", 8), (" 5", 5)]
        {
            assert_eq!(parse_c_integer(s), Some(n), "{s:?}");
        }
        for s in ["", "-", "0x", "1.5", "12a", "099", "--1", "+-1", "9223372036854775808", "1 "] {
            assert_eq!(parse_c_integer(s), None, "{s:?}");
        }
    }

    #[test]
    fn booleans() {
        for s in ["1", "on", "ON", "true", "yes", "2", "-1"] {
            assert_eq!(parse_bool(s), Some(true), "{s:?}");
        }
        for s in ["0", "off", "False", "no", "00"] {
            assert_eq!(parse_bool(s), Some(false), "{s:?}");
        }
        for s in ["", "maybe", "1.0"] {
            assert_eq!(parse_bool(s), None, "{s:?}");
        }
    }

    #[test]
    fn near_misses() {
        let keys = ["auth_type", "auth_file", "listen_port"];
        assert_eq!(closest("auth_typ", &keys), Some("auth_type"));
        assert_eq!(closest("listenport", &keys), Some("listen_port"));
        assert_eq!(closest("bogus", &keys), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
