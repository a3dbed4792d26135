//! The crate's one error type, and its warnings: which file, which line and key (when known), what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem, precise enough to fix without reading code.
///
/// Displays as `<file>: <key>: <message>` (TOML, where values carry no line),
/// `<file>: line <n>: <key>: <message>` (pgbouncer.ini), or `<file>: <message>`
/// when the problem is not about one key (then the message starts with the
/// line number whenever one is known, and `line` holds it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), line: None, key: None, message: message.into() }
    }

    pub(crate) fn at_key(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), line: None, key: Some(key.into()), message: message.into() }
    }

    /// A problem with `key`, set at `line` of `file`.
    pub(crate) fn at_key_line(
        file: &Path,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError { file: file.to_path_buf(), line, key: Some(key.into()), message: message.into() }
    }

    /// An error at a 1-based line (and optionally column) of a text file.
    pub(crate) fn at_line(file: &Path, line: usize, column: Option<usize>, message: impl fmt::Display) -> Self {
        let message = match column {
            Some(column) => format!("line {line}, column {column}: {message}"),
            None => format!("line {line}: {message}"),
        };
        ConfigError { line: Some(line), ..ConfigError::new(file, message) }
    }

    /// Reading the file failed (missing, unreadable, not UTF-8).
    pub(crate) fn read(file: &Path, err: &std::io::Error) -> Self {
        ConfigError::new(file, format!("cannot read file: {err}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, self.line, self.key.as_deref(), &self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Something that loads but will not do what the file's author may expect, chiefly a PgBouncer setting pgmux
/// accepts without acting on it. Displayed like a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl Warning {
    pub(crate) fn at_key(file: &Path, line: Option<usize>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Warning { file: file.to_path_buf(), line, key: Some(key.into()), message: message.into() }
    }

    pub(crate) fn at_line(file: &Path, line: usize, message: impl Into<String>) -> Self {
        Warning { file: file.to_path_buf(), line: Some(line), key: None, message: message.into() }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        located(f, &self.file, self.line, self.key.as_deref(), &self.message)
    }
}

/// `file: [line N: ][key: ]message`, except that a line-level error already starts its message with the line.
fn located(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: Option<usize>,
    key: Option<&str>,
    message: &str,
) -> fmt::Result {
    write!(f, "{}: ", file.display())?;
    match (line, key) {
        (Some(line), Some(key)) => write!(f, "line {line}: {key}: {message}"),
        (Some(line), None) if !message.starts_with("line ") => write!(f, "line {line}: {message}"),
        (_, Some(key)) => write!(f, "{key}: {message}"),
        (_, None) => f.write_str(message),
    }
}

/// 1-based line and column of byte offset `pos` in `text`, clamped to the text.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
