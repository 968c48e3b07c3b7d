//! The store's one public error: what failed, whether retrying can help, and what to do next.
//!
//! Policy (after rustic_core's `error.rs`): context is added as an error travels up, never
//! replaced; the hint is the next command a person should run. Secrets never enter messages:
//! passwords are resolved into memory only and no constructor here takes one.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Local disk I/O (full disk, permissions).
    Io,
    Internal,
}

#[derive(Debug)]
pub struct StoreError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    /// Whether trying again later may succeed (backend outages, locks).
    pub retryable: bool,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The innermost cause, when one was reported (for logs and JSON).
    pub root_cause: Option<String>,
}

impl StoreError {
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

impl fmt::Display for StoreError {
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

fn one_line(s: &str) -> String {
    // rustic errors are multi-paragraph reports; keep the first meaningful line.
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Turn a rustic_core error into ours, classifying it by kind.
#[allow(clippy::boxed_local)] // rustic_core hands its errors out boxed
pub(crate) fn rustic(e: Box<rustic_core::RusticError>, doing: &str) -> StoreError {
    use rustic_core::ErrorKind as K;
    let log = e.display_log();
    // The root cause is the most specific thing to tell a person ("Connection refused",
    // "No space left on device"); rustic's guidance says what it was doing.
    let mut root: Option<String> = None;
    let mut src = std::error::Error::source(&*e);
    while let Some(s) = src {
        root = Some(s.to_string());
        src = s.source();
    }
    // rustic_core exposes the kind only through its log line: "(kind: related to Backend".
    let kind_of = |k: K| log.contains(&format!("kind: related to {k}"));
    let kind = if e.is_incorrect_password() || kind_of(K::Credentials) || kind_of(K::Key) {
        Kind::Key
    } else if kind_of(K::Backend) {
        Kind::Backend
    } else if kind_of(K::Cryptography) || kind_of(K::Verification) {
        Kind::Integrity
    } else if kind_of(K::InputOutput) {
        Kind::Io
    } else if kind_of(K::InvalidInput) || kind_of(K::MissingInput) {
        Kind::Input
    } else {
        Kind::Internal
    };
    let guidance = summary(&log);
    let mut message = format!("{doing} failed: {guidance}");
    if let Some(r) = &root {
        let r = root_summary(r);
        if !guidance.contains(&r) {
            message = format!("{message}: {r}");
        }
    }
    let mut err = StoreError::new(kind, message);
    err.root_cause = root;
    let all = format!("{log} {}", err.root_cause.clone().unwrap_or_default());
    if all.contains("NoSuchBucket") {
        err.kind = Kind::Backend;
        err.hint = Some(
            "the S3 bucket does not exist: create it (e.g. `aws s3 mb s3://BUCKET`) and run again"
                .into(),
        );
    } else if all.contains("AccessDenied")
        || all.contains("InvalidAccessKeyId")
        || all.contains("SignatureDoesNotMatch")
    {
        err.kind = Kind::Backend;
        err.hint = Some("the S3 server refused the credentials: check access_key_id / secret_access_key (or AWS_* variables)".into());
    }
    if all.contains("No space left on device") || all.contains("os error 28") {
        err.kind = Kind::Io;
        err.hint =
            Some("the disk is full: free space and run again; no snapshot was recorded".into());
    }
    err
}

/// The useful tail of a (possibly long, nested) root-cause message: an S3 error code when there
/// is one, else the last `: `-separated part if it is plain text, else the whole, capped.
pub(crate) fn root_summary(r: &str) -> String {
    for code in [
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ] {
        if r.contains(code) {
            return format!("S3 error {code}");
        }
    }
    let tail = r.rsplit(": ").next().unwrap_or(r).trim();
    let text = if tail.len() >= 12 && !tail.contains('"') && !tail.contains('}') {
        tail
    } else {
        r.trim()
    };
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// rustic's log line without its decoration ("Error: …  (kind: related to …)").
fn summary(text: &str) -> String {
    let line = one_line(text);
    let line = line.trim_start_matches("Error:").trim();
    let line = line.split(" (kind: related to").next().unwrap_or(line);
    line.trim().to_string()
}
