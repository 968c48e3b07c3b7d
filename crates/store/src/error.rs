//! Turning rustic_core's errors into Lifeboat's [`Error`]: its kind, its cause in a few words,
//! and a hint where the cause is known (missing bucket, refused credentials, full disk).

pub use lifeboat_core::error::{one_line, Error, Kind, Result};

/// What a rustic_core error says, taken apart once for every caller.
pub(crate) struct Parsed {
    pub kind: Kind,
    /// rustic's own sentence, without its decoration.
    pub guidance: String,
    /// The innermost cause ("Connection refused", "No space left on device").
    pub root: Option<String>,
    /// A hint specific to the cause, when one is known (missing bucket, bad credentials, full
    /// disk); callers add a generic one only when this is empty.
    pub hint: Option<String>,
}

impl Parsed {
    /// The most specific short text about the cause.
    pub fn cause(&self) -> String {
        self.root
            .as_deref()
            .map(root_summary)
            .unwrap_or_else(|| self.guidance.clone())
    }
}

#[allow(clippy::boxed_local)] // rustic_core hands its errors out boxed
pub(crate) fn parse(e: Box<rustic_core::RusticError>) -> Parsed {
    use rustic_core::ErrorKind as K;
    let log = e.display_log();
    let mut root: Option<String> = None;
    let mut src = std::error::Error::source(&*e);
    while let Some(s) = src {
        root = Some(s.to_string());
        src = s.source();
    }
    // rustic_core exposes the kind only through its log line: "(kind: related to Backend".
    let kind_of = |k: K| log.contains(&format!("kind: related to {k}"));
    let mut kind = if e.is_incorrect_password() || kind_of(K::Credentials) || kind_of(K::Key) {
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
    let all = format!("{log} {}", root.clone().unwrap_or_default());
    let mut hint = None;
    if all.contains("No space left on device") || all.contains("os error 28") {
        kind = Kind::Io;
        hint = Some("the disk is full: free space and run again; no snapshot was recorded".into());
    } else if let Some(h) = s3_hint(&all) {
        kind = Kind::Backend;
        hint = Some(h.into());
    }
    Parsed {
        kind,
        guidance: summary(&log),
        root,
        hint,
    }
}

/// Turn a rustic_core error into ours: "{doing} failed: {guidance}: {cause}".
pub(crate) fn rustic(e: Box<rustic_core::RusticError>, doing: &str) -> Error {
    let p = parse(e);
    let mut message = format!("{doing} failed: {}", p.guidance);
    if p.root.is_some() {
        let cause = p.cause();
        if !p.guidance.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    let mut err = Error::new(p.kind, message);
    err.root_cause = p.root;
    err.hint = p.hint;
    err
}

/// S3 error codes whose cause is known: a missing bucket, then refused credentials.
const S3_CODES: [&str; 4] = [
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
];

/// The S3 server refused the credentials: what to check.
pub(crate) const S3_CREDENTIALS_HINT: &str = "the S3 server refused the credentials: check access_key_id / secret_access_key (or AWS_* variables)";

/// What to do about an S3 failure whose text names a known cause.
pub(crate) fn s3_hint(text: &str) -> Option<&'static str> {
    if text.contains(S3_CODES[0]) {
        Some("the S3 bucket does not exist: create it (e.g. `aws s3 mb s3://BUCKET`) and run again")
    } else if S3_CODES[1..].iter().any(|c| text.contains(c)) {
        Some(S3_CREDENTIALS_HINT)
    } else {
        None
    }
}

/// The useful tail of a (possibly long, nested) root-cause message: an S3 error code when there
/// is one, else the last `: `-separated part if it is plain text, else the whole, capped.
pub(crate) fn root_summary(r: &str) -> String {
    if r.contains("timeout reached") || r.contains("operation timed out") {
        return "the S3 server did not answer in time (each try has a deadline; set `timeout`, `io_timeout`, `retries` in the repository URL)".into();
    }
    for code in S3_CODES {
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
/// rustic's advice is for rustic's users: replace it with what a Lifeboat user runs.
pub(crate) fn reword(text: &str) -> String {
    text.replace(" Please check if the given path is correct.", "")
        .replace("Please check if the given path is correct.", "")
        .replace(
            "Can be a parallel backup job. To repair: 'rustic repair index'.",
            "A backup that is still running or was killed leaves such packs: `lifeboat forget` removes them once no backup runs.",
        )
        .replace(
            "To repair: 'rustic repair index'.",
            "The index does not match the stored packs: run `lifeboat repo check --read-data` and restore damaged snapshots from a copy.",
        )
}

fn summary(text: &str) -> String {
    let line = reword(&one_line(text));
    let line = line.trim_start_matches("Error:").trim();
    let line = line.split(" (kind: related to").next().unwrap_or(line);
    line.trim().to_string()
}
