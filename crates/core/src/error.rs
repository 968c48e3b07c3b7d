//! Lifeboat's one public error: what failed, whether retrying can help, and what to do next.
//! Every layer returns it; the binary maps its [`Kind`] to an exit code.
//!
//! Policy (after rustic_core's `error.rs`): context is added as an error travels up, never
//! replaced; the hint is the next command a person should run. Secrets never enter messages:
//! passwords are resolved into memory only and no constructor here takes one.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The plan or the command line asked for something impossible.
    Input,
    /// The repository key is missing or wrong.
    Key,
    /// The repository does not exist or is not a restic repository.
    NotARepository,
    /// Another process holds a conflicting lock.
    Locked,
    /// The storage backend could not be reached or failed.
    Backend,
    /// Stored data is damaged (hash or MAC mismatch, missing blobs).
    Integrity,
    /// A source (path, command) could not be read.
    Source,
    /// Different content already stored under the same name (a WAL segment archived twice).
    Conflict,
    /// Local disk I/O (full disk, permissions).
    Io,
    Internal,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    /// Whether trying again later may succeed (backend outages, locks).
    pub retryable: bool,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The innermost cause, when one was reported (for logs and JSON).
    pub root_cause: Option<String>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            retryable: matches!(kind, Kind::Backend | Kind::Locked),
            source: None,
            root_cause: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            let text = one_line(&s.to_string());
            if !text.is_empty() && !self.message.contains(&text) {
                write!(f, ": {text}")?;
            }
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

pub fn one_line(s: &str) -> String {
    // rustic errors are multi-paragraph reports; keep the first meaningful line.
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

impl std::error::Error for Error {}

/// The last `n` non-empty lines of a program's stderr, on one line (for error messages).
pub fn stderr_tail(stderr: &str, n: usize) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub type Result<T> = std::result::Result<T, Error>;
