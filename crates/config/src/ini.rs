//! Reading PgBouncer's `pgbouncer.ini` into sections of `key = value` entries, each remembering its file and line.
//!
//! The syntax is libusual's `parse_ini_file`, which PgBouncer uses: one `[section]`, `key = value`, comment (`;` or
//! `#` first on the line) or `%include FILE` per line. A value is the rest of the line with surrounding spaces
//! removed; `;` and `#` later in a line are part of the value, and values are not unquoted (PgBouncer does not
//! either). Keys are made of letters, digits and `_.-*`, or are SQL-quoted (`"my db"`, `""` for a quote), which is
//! how `[databases]` and `[users]` spell names with other characters. A key set twice keeps its later value; a
//! section may appear several times and continues where it was. `%include` reads another file in place, with the
//! current section carrying over in both directions; a relative name is taken relative to the directory of the file
//! that includes it (PgBouncer takes it relative to its working directory, which a daemon or a service manager makes
//! hard to predict).
//!
//! What the values mean is not this module's business: [`crate::pooler`] reads the sections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Warning};

/// As in libusual: deeper nesting is almost certainly an include cycle.
const MAX_INCLUDE_DEPTH: usize = 10;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The entries of one section, by key (a key set twice keeps its later entry).
pub(crate) type Entries = BTreeMap<String, Entry>;

/// The sections PgBouncer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Pgbouncer,
    Databases,
    Users,
    Peers,
}

impl Name {
    fn parse(s: &str) -> Option<Name> {
        match s {
            "pgbouncer" => Some(Name::Pgbouncer),
            "databases" => Some(Name::Databases),
            "users" => Some(Name::Users),
            "peers" => Some(Name::Peers),
            _ => None,
        }
    }
}

/// A whole pgbouncer.ini with its includes.
#[derive(Debug, Default)]
pub(crate) struct Ini {
    pub pgbouncer: Entries,
    pub databases: Entries,
    pub users: Entries,
    pub peers: Entries,
    /// Where `[pgbouncer]` first appeared; PgBouncer refuses a file without it.
    pub pgbouncer_at: Option<(PathBuf, usize)>,
    /// Things that load but behave differently from PgBouncer.
    pub warnings: Vec<Warning>,
}

impl Ini {
    fn section(&mut self, name: Name) -> &mut Entries {
        match name {
            Name::Pgbouncer => &mut self.pgbouncer,
            Name::Databases => &mut self.databases,
            Name::Users => &mut self.users,
            Name::Peers => &mut self.peers,
        }
    }
}

/// Reads `text` as the file `path`; `read` loads included files (the disk, or a map in tests).
pub(crate) fn parse(
    text: &str,
    path: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Ini, ConfigError> {
    let mut reader = Reader { ini: Ini::default(), current: None, read };
    reader.file(text, path, 0)?;
    Ok(reader.ini)
}

struct Reader<'r> {
    ini: Ini,
    current: Option<Name>,
    read: &'r dyn Fn(&Path) -> std::io::Result<String>,
}

impl Reader<'_> {
    fn file(&mut self, text: &str, path: &Path, depth: usize) -> Result<(), ConfigError> {
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let at = |message: String| ConfigError::at_line(path, line, None, message);
            let s = raw.trim();
            if let Some(rest) = s.strip_prefix("%include") {
                // libusual wants a blank right after the directive; "%includes" is a syntax error.
                if rest.starts_with([' ', '\t']) || rest.is_empty() {
                    self.include(rest.trim(), path, line, depth)?;
                    continue;
                }
            }
            if s.is_empty() || s.starts_with(';') || s.starts_with('#') {
                continue;
            }
            if let Some(header) = s.strip_prefix('[') {
                self.header(header, path, line).map_err(at)?;
                continue;
            }
            let (key, value) = key_value(s).map_err(at)?;
            let Some(section) = self.current else {
                return Err(at(format!("{key} = ...: a setting before any [section]")));
            };
            let entry = Entry { key: key.clone(), value: value.to_string(), file: path.to_path_buf(), line };
            self.ini.section(section).insert(key, entry);
        }
        Ok(())
    }

    fn header(&mut self, header: &str, path: &Path, line: usize) -> Result<(), String> {
        let Some((name, after)) = header.split_once(']') else {
            return Err(format!("section header [{header} lacks its closing ]"));
        };
        let after = after.trim_start();
        if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
            return Err(format!("unexpected text {after:?} after [{name}]"));
        }
        let Some(section) = Name::parse(name) else {
            return Err(format!("unknown section [{name}] (expected pgbouncer, databases, users or peers)"));
        };
        if section == Name::Pgbouncer {
            match &self.ini.pgbouncer_at {
                None => self.ini.pgbouncer_at = Some((path.to_path_buf(), line)),
                Some((first, first_line)) => self.ini.warnings.push(Warning::at_line(
                    path,
                    line,
                    format!(
                        "[pgbouncer] appears again (first at {}:{first_line}): pgmux keeps the keys set before, \
                         PgBouncer resets them to their defaults",
                        first.display()
                    ),
                )),
            }
        }
        self.current = Some(section);
        Ok(())
    }

    fn include(&mut self, name: &str, path: &Path, line: usize, depth: usize) -> Result<(), ConfigError> {
        let at = |message: String| ConfigError::at_line(path, line, None, message);
        if name.is_empty() {
            return Err(at("%include without a file name".to_string()));
        }
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(at(format!(
                "%include {name}: includes nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"
            )));
        }
        let target = match path.parent() {
            Some(dir) if Path::new(name).is_relative() => dir.join(name),
            _ => PathBuf::from(name),
        };
        let text = (self.read)(&target).map_err(|e| at(format!("%include {}: cannot read: {e}", target.display())))?;
        self.file(&text, &target, depth + 1)
    }
}

/// `key = value` (the line is already trimmed): the key, unquoted, and the raw value.
fn key_value(s: &str) -> Result<(String, &str), String> {
    let (key, rest) = if let Some(quoted) = s.strip_prefix('"') {
        let (key, rest) = unquote_identifier(quoted)?;
        (key, rest)
    } else {
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c))).unwrap_or(s.len());
        (s[..end].to_string(), &s[end..])
    };
    let Some(value) = rest.trim_start().strip_prefix('=') else {
        return Err(format!("expected `key = value`, `[section]`, `%include FILE` or a comment, found {s:?}"));
    };
    if key.is_empty() {
        return Err(format!("missing key before = in {s:?}"));
    }
    Ok((key, value.trim()))
}

/// The body of a double-quoted identifier (after the opening quote): its text and what follows the closing quote.
fn unquote_identifier(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        if let Some((_, '"')) = chars.peek() {
            chars.next();
            out.push('"');
            continue;
        }
        return Ok((out, &s[i + 1..]));
    }
    Err(format!("name \"{s} lacks its closing double quote"))
}

#[cfg(test)]
mod tests;
