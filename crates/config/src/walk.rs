//! Typed, key-naming access to one parsed TOML table.
//!
//! Config values are read by walking a `toml::Table` instead of deriving
//! serde structs, so every message can name the dotted key, the bad value and
//! what would have been accepted.

use std::path::Path;
use std::time::Duration;

use crate::error::ConfigError;

/// Largest accepted timeout: big enough for "practically never", small enough
/// that `Instant + timeout` cannot overflow.
const MAX_SECONDS: f64 = 1e9;

/// One table of the config file, e.g. `[pooler]` or `[databases.appdb]`.
pub(crate) struct Section<'a> {
    file: &'a Path,
    prefix: String,
    table: &'a toml::Table,
}

impl<'a> Section<'a> {
    pub(crate) fn new(file: &'a Path, prefix: String, table: &'a toml::Table) -> Self {
        Section { file, prefix, table }
    }

    /// The dotted name of `name` in this section, as the user would write it.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{}", self.prefix, toml_key(name))
    }

    pub(crate) fn err(&self, name: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at_key(self.file, self.key(name), message)
    }

    /// Rejects the first key (in sorted order) not in `allowed`.
    pub(crate) fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        let mut keys: Vec<&String> = self.table.keys().collect();
        keys.sort();
        match keys.into_iter().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(self.err(unknown, format!("unknown key (expected one of: {})", allowed.join(", ")))),
            None => Ok(()),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(Some(*i)),
            Some(toml::Value::Integer(i)) => {
                Err(self.err(name, format!("invalid value {i} (expected an integer from {min} to {max})")))
            }
            Some(other) => Err(self.wrong_type(name, "an integer", other)),
        }
    }

    /// A number of seconds (integer or float, as PgBouncer accepts `15.0`).
    pub(crate) fn seconds(&self, name: &str, min: f64) -> Result<Option<Duration>, ConfigError> {
        let secs = match self.table.get(name) {
            None => return Ok(None),
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(other) => return Err(self.wrong_type(name, "a number of seconds", other)),
        };
        if !(min..=MAX_SECONDS).contains(&secs) {
            return Err(self.err(
                name,
                format!("invalid value {secs} (expected a number of seconds from {min} to {MAX_SECONDS})"),
            ));
        }
        Duration::try_from_secs_f64(secs).map(Some).map_err(|e| self.err(name, format!("invalid value {secs}: {e}")))
    }

    /// A string, or an array of strings (only used by `listen_addr`).
    pub(crate) fn string_list(&self, name: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        match self.table.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.as_str()])),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.as_str()),
                    other => Err(self.wrong_type(name, "an array of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.wrong_type(name, "a string or an array of strings", other)),
        }
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &toml::Value) -> ConfigError {
        self.err(name, format!("wrong type: expected {expected}, found {}", found.type_str()))
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
