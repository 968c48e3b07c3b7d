//! S3 access with deadlines: one OpenDAL operator for both restic's files (through rustic_core's
//! backend traits) and Lifeboat's own objects (locks, the WAL archive).
//!
//! rustic_backend's OpenDAL backend has no deadline on a call: against an S3 server that accepts
//! connections and never answers, a backup hung with no end in sight. Here every call has one
//! (`timeout` for the whole call, `io_timeout` for each read or write of a body without
//! progress) and is retried a bounded number of times with backoff, then fails as a backend
//! error (exit 5) that says what to check — never rustic's "check if the given path is correct".
//! Both deadlines and the retry count can be set in the repository URL's query
//! (`?timeout=30s&io_timeout=30s&retries=3`).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opendal::blocking::Operator;
use opendal::options::{ListOptions, ReadOptions};
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
    ALL_FILE_TYPES,
};

use crate::error::{Error, Kind, Result};

/// Deadlines and retries of S3 calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// A whole call (stat, list page, delete; a read or write without its body).
    pub timeout: Duration,
    /// One read or write of a body (a pack is tens of MiB: on a slow link that takes a while,
    /// so this is longer than `timeout`).
    pub io_timeout: Duration,
    /// Attempts after the first, with backoff.
    pub retries: usize,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
            retries: 3,
        }
    }
}

impl Deadlines {
    /// Take Lifeboat's own keys out of the URL's query options (the rest go to the S3 client).
    pub fn take_from(options: &mut BTreeMap<String, String>) -> Result<Self> {
        let mut d = Self::default();
        let dur = |k: &str, v: String| -> Result<Duration> {
            v.parse::<lifeboat_core::units::Duration>()
                .map(|d| d.std())
                .map_err(|e| Error::new(Kind::Input, format!("repository URL `{k}`: {e}")))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(Error::new(
                            Kind::Input,
                            format!("repository URL `{k}` must be more than 0"),
                        ))
                    } else {
                        Ok(d)
                    }
                })
        };
        if let Some(v) = options.remove("timeout") {
            d.timeout = dur("timeout", v)?;
        }
        if let Some(v) = options.remove("io_timeout") {
            d.io_timeout = dur("io_timeout", v)?;
        }
        if let Some(v) = options.remove("retries") {
            d.retries = v.parse().map_err(|_| {
                Error::new(
                    Kind::Input,
                    format!("repository URL `retries`: `{v}` is not a whole number"),
                )
            })?;
        }
        Ok(d)
    }
}

/// The S3 keys to sign with: the plan's `access_key_id` / `secret_access_key`, each else its
/// `AWS_*` variable; None when either is missing (the S3 client's own defaults then). `whose`
/// names the owner in an error ("repository main", "the replica bucket").
pub fn keys(
    access_key_id: &Option<lifeboat_core::secret::Secret>,
    secret_access_key: &Option<lifeboat_core::secret::Secret>,
    whose: &str,
) -> Result<Option<(String, String)>> {
    let resolve = |s: &Option<lifeboat_core::secret::Secret>, env: &str| match s {
        Some(s) => s
            .resolve()
            .map(Some)
            .map_err(|e| Error::new(Kind::Key, format!("{whose}: {e}"))),
        None => Ok(std::env::var(env).ok()),
    };
    Ok(
        match (
            resolve(access_key_id, "AWS_ACCESS_KEY_ID")?,
            resolve(secret_access_key, "AWS_SECRET_ACCESS_KEY")?,
        ) {
            (Some(a), Some(s)) => Some((a, s)),
            _ => None,
        },
    )
}

/// The S3 client's options for `s3://BUCKET/PREFIX?…` (the URL's query options, `bucket`,
/// `root`, a default region, the keys when given) and the deadlines of its calls, taken out of
/// the query.
pub fn client_options(
    bucket: &str,
    prefix: &str,
    options: &BTreeMap<String, String>,
    keys: Option<&(String, String)>,
) -> Result<(BTreeMap<String, String>, Deadlines)> {
    let mut o = options.clone();
    let d = Deadlines::take_from(&mut o)?;
    o.insert("bucket".into(), bucket.to_string());
    o.insert("root".into(), format!("/{prefix}"));
    o.entry("region".into())
        .or_insert_with(|| "us-east-1".into());
    if let Some((a, s)) = keys {
        o.insert("access_key_id".into(), a.clone());
        o.insert("secret_access_key".into(), s.clone());
    }
    Ok((o, d))
}

pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A blocking S3 operator whose every call has a deadline and bounded retries.
pub fn operator(options: &BTreeMap<String, String>, d: Deadlines) -> Result<Operator> {
    let op = opendal::Operator::via_iter("s3", options.iter().map(|(k, v)| (k.clone(), v.clone())))
        .map_err(|e| Error::new(Kind::Input, format!("configuring S3 access: {e}")))?
        // Inside the retries: each attempt has its own deadline, and a timed-out attempt is
        // retried (OpenDAL marks timeouts temporary).
        .layer(
            opendal::layers::TimeoutLayer::new()
                .with_timeout(d.timeout)
                .with_io_timeout(d.io_timeout),
        )
        .layer(
            opendal::layers::RetryLayer::new()
                .with_max_times(d.retries)
                .with_max_delay(Duration::from_secs(10))
                .with_jitter(),
        );
    let _guard = runtime().enter();
    Operator::new(op).map_err(|e| Error::new(Kind::Internal, format!("S3 client: {e}")))
}

/// What an S3 failure means for the user, in words.
pub fn describe(e: &opendal::Error) -> String {
    let s = e.to_string();
    let summary = crate::error::root_summary(&s);
    if summary.starts_with("the S3 server") {
        summary
    } else {
        format!("the S3 server failed: {summary}")
    }
}

/// restic's files on S3, for rustic_core.
#[derive(Clone, Debug)]
pub struct S3Backend {
    op: Operator,
    location: String,
}

impl S3Backend {
    pub fn new(options: &BTreeMap<String, String>, d: Deadlines) -> Result<Self> {
        let location = format!(
            "s3:{}{}",
            options.get("bucket").map(String::as_str).unwrap_or(""),
            options.get("root").map(String::as_str).unwrap_or("")
        );
        Ok(Self {
            op: operator(options, d)?,
            location,
        })
    }

    fn path(tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        match tpe {
            FileType::Config => "config".into(),
            FileType::Pack => format!("data/{}/{}", &hex[0..2], &hex[..]),
            _ => format!("{}/{}", tpe.dirname(), &hex[..]),
        }
    }
}

fn fail(doing: String, e: opendal::Error) -> Box<RusticError> {
    let kind = if e.kind() == opendal::ErrorKind::NotFound {
        ErrorKind::MissingInput
    } else {
        ErrorKind::Backend
    };
    let text = format!("{doing}: {}", describe(&e));
    RusticError::with_source(kind, text, e)
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            return match self.op.stat("config") {
                Ok(m) => Ok(vec![(
                    Id::default(),
                    u32::try_from(m.content_length()).unwrap_or(u32::MAX),
                )]),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(fail("reading the repository's config".into(), e)),
            };
        }
        let dir = format!("{}/", tpe.dirname());
        let entries = self
            .op
            .list_options(
                &dir,
                ListOptions {
                    recursive: true,
                    ..Default::default()
                },
            )
            .map_err(|e| fail(format!("listing the repository's {dir}"), e))?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .filter_map(|e| {
                let id = Id::parse_some(e.name(), tpe)?;
                Some((id, u32::try_from(e.metadata().content_length()).ok()?))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        self.op
            .read(&path)
            .map(|b| b.to_bytes())
            .map_err(|e| fail(format!("reading {path}"), e))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        let range = u64::from(offset)..u64::from(offset) + u64::from(length);
        self.op
            .read_options(
                &path,
                ReadOptions {
                    range: range.into(),
                    ..Default::default()
                },
            )
            .map(|b| b.to_bytes())
            .map_err(|e| fail(format!("reading {path}"), e))
    }

    /// Warm-up commands (cold storage) get the object's key below the bucket.
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        let root = self.op.info().root();
        let root = root.trim_matches('/');
        let rel = Self::path(tpe, id);
        if root.is_empty() {
            rel
        } else {
            format!("{root}/{rel}")
        }
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        // S3 has no directories; creating the prefixes is enough for listings.
        for tpe in ALL_FILE_TYPES {
            let dir = format!("{}/", tpe.dirname());
            self.op
                .create_dir(&dir)
                .map_err(|e| fail(format!("creating {dir}"), e))?;
        }
        Ok(())
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        self.op
            .write(&path, content.into_vec())
            .map(|_| ())
            .map_err(|e| fail(format!("writing {path}"), e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        self.op
            .delete(&path)
            .map_err(|e| fail(format!("removing {path}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_out_of_the_url_options() {
        let mut o: BTreeMap<String, String> = [
            ("endpoint", "http://127.0.0.1:9"),
            ("timeout", "2s"),
            ("retries", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = Deadlines::take_from(&mut o).unwrap();
        assert_eq!(d.timeout, Duration::from_secs(2));
        assert_eq!(d.io_timeout, Deadlines::default().io_timeout);
        assert_eq!(d.retries, 1);
        assert_eq!(o.len(), 1, "only the S3 client's own options are left");
        let mut bad: BTreeMap<String, String> = [("timeout".to_string(), "0s".to_string())].into();
        assert!(Deadlines::take_from(&mut bad).is_err());
    }
}
