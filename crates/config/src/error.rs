//! The crate's one error type: which file, which key (if any), what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem, precise enough to fix without reading code.
///
/// Displays as `<file>: <key>: <message>`, or `<file>: <message>` when the
/// problem is not about one key (then the message carries a line number
/// whenever one is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), key: None, message: message.into() }
    }

    pub(crate) fn at_key(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), key: Some(key.into()), message: message.into() }
    }

    /// An error at a 1-based line (and optionally column) of a text file.
    pub(crate) fn at_line(file: &Path, line: usize, column: Option<usize>, message: impl fmt::Display) -> Self {
        let message = match column {
            Some(column) => format!("line {line}, column {column}: {message}"),
            None => format!("line {line}: {message}"),
        };
        ConfigError::new(file, message)
    }

    /// Reading the file failed (missing, unreadable, not UTF-8).
    pub(crate) fn read(file: &Path, err: &std::io::Error) -> Self {
        ConfigError::new(file, format!("cannot read file: {err}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.file.display(), key, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

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
