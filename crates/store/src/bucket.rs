//! An S3 bucket (or a prefix of one) as a replicated bucket's side: list its objects, copy one
//! object to another bucket with its metadata, streaming, delete, hash one for a comparison.
//! Every call has the deadlines and retries of [`crate::s3::operator`]; errors name the side.

use std::collections::{BTreeMap, HashMap};

use opendal::blocking::Operator;
use opendal::options::{ListOptions, ReaderOptions, WriteOptions};
use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result};

/// The user-metadata key under which a replica keeps the source object's ETag: a copy made
/// in parts has an ETag of its own, so this is what tells that it holds that source version.
pub const SOURCE_ETAG: &str = "lifeboat-source-etag";

/// Copies are read and written in pieces of this size (multipart above it): memory per copy
/// in flight stays at about one piece whatever the object's size.
const PIECE: usize = 8 * 1024 * 1024;

/// One object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Unix milliseconds.
    pub modified_ms: Option<i64>,
}

/// What became of one copy.
#[derive(Debug)]
pub enum Copied {
    /// Copied: the source ETag it holds now, and the bytes.
    Done { etag: Option<String>, bytes: u64 },
    /// Deleted at the source before it could be read.
    Vanished,
    /// Changed at the source while it was read: nothing was written; the next pass copies the
    /// new version.
    Changed,
}

/// An object's content type and user metadata.
pub type ObjectMeta = (Option<String>, BTreeMap<String, String>);

pub struct Bucket {
    /// `source` or `replica`, for messages.
    pub side: &'static str,
    /// The URL without its query (which may hold options only).
    pub display: String,
    op: Operator,
}

impl Bucket {
    /// Open `url` (an `s3://` URL) with the given keys (else the AWS_* environment).
    pub fn open(side: &'static str, url: &str, keys: Option<(String, String)>) -> Result<Bucket> {
        let parsed = lifeboat_core::repo_url::RepoUrl::parse(url)
            .map_err(|e| Error::new(Kind::Input, format!("{side}: {e}")))?;
        let lifeboat_core::repo_url::RepoUrl::S3 {
            bucket,
            prefix,
            options,
        } = parsed
        else {
            return Err(Error::new(
                Kind::Input,
                format!("{side}: `{url}` is not an s3:// URL"),
            ));
        };
        let (o, d) = crate::s3::client_options(&bucket, &prefix, &options, keys.as_ref())?;
        Ok(Bucket {
            side,
            display: url.split('?').next().unwrap_or("").to_string(),
            op: crate::s3::operator(&o, d)?,
        })
    }

    fn fail(&self, doing: &str, e: &opendal::Error) -> Error {
        let not_found = e.kind() == opendal::ErrorKind::NotFound;
        let hint = crate::error::s3_hint(&e.to_string())
            .or((e.kind() == opendal::ErrorKind::PermissionDenied)
                .then_some(crate::error::S3_CREDENTIALS_HINT))
            .unwrap_or(if not_found {
                "check the bucket and prefix in the URL"
            } else {
                "check the endpoint in the URL and that the S3 server answers"
            });
        let kind = if not_found {
            Kind::Input
        } else {
            Kind::Backend
        };
        Error::new(
            kind,
            format!(
                "the {} bucket {}: {doing}: {}",
                self.side,
                self.display,
                crate::s3::describe(e)
            ),
        )
        .hint(hint)
    }

    /// Every object (keys relative to the URL's prefix), in key order.
    pub fn list(&self) -> Result<Vec<Object>> {
        let lister = self
            .op
            .lister_options(
                "",
                ListOptions {
                    recursive: true,
                    ..Default::default()
                },
            )
            .map_err(|e| self.fail("listing", &e))?;
        let mut out = Vec::new();
        for entry in lister {
            let entry = entry.map_err(|e| self.fail("listing", &e))?;
            let m = entry.metadata();
            if !m.is_file() {
                continue;
            }
            out.push(Object {
                key: entry.path().to_string(),
                size: m.content_length(),
                etag: m.etag().map(str::to_string),
                modified_ms: m
                    .last_modified()
                    .map(|t| jiff::Timestamp::from(t).as_millisecond()),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The source ETag a replica object says it holds (its user metadata), if any.
    pub fn source_etag_of(&self, key: &str) -> Result<Option<String>> {
        match self.op.stat(key) {
            Ok(m) => Ok(m.user_metadata().and_then(|u| u.get(SOURCE_ETAG)).cloned()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(&format!("reading {key}'s metadata"), &e)),
        }
    }

    /// Copy `key` from this bucket to `to`, streaming in pieces, with its content type,
    /// encoding, disposition, cache control and user metadata, plus the source ETag. The
    /// source is read under If-Match of the ETag it had when the copy began: if it changes
    /// meanwhile, nothing is written (a piece already uploaded stays an unfinished multipart
    /// upload, never an object).
    pub fn copy_to(&self, to: &Bucket, key: &str) -> Result<Copied> {
        self.copy_to_observed(to, key, &|| {})
    }

    /// [`Bucket::copy_to`], calling `after_stat` between reading the object's metadata and
    /// its content (where a concurrent change or deletion lands; tests use it to put one there).
    pub fn copy_to_observed(
        &self,
        to: &Bucket,
        key: &str,
        after_stat: &dyn Fn(),
    ) -> Result<Copied> {
        let meta = match self.op.stat(key) {
            Ok(m) => m,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Copied::Vanished),
            Err(e) => return Err(self.fail(&format!("reading {key}'s metadata"), &e)),
        };
        after_stat();
        let etag = meta.etag().map(str::to_string);
        let size = meta.content_length();
        let mut user: HashMap<String, String> = meta.user_metadata().cloned().unwrap_or_default();
        if let Some(t) = &etag {
            user.insert(SOURCE_ETAG.into(), t.clone());
        }
        let options = WriteOptions {
            content_type: meta.content_type().map(str::to_string),
            content_encoding: meta.content_encoding().map(str::to_string),
            content_disposition: meta.content_disposition().map(str::to_string),
            cache_control: meta.cache_control().map(str::to_string),
            user_metadata: Some(user),
            chunk: Some(PIECE),
            ..Default::default()
        };
        if size == 0 {
            // Nothing to read (a zero-length range is not one S3 serves).
            to.op
                .write_options(key, Vec::<u8>::new(), options)
                .map_err(|e| to.fail(&format!("writing {key}"), &e))?;
            return Ok(Copied::Done { etag, bytes: 0 });
        }
        let reader = match self.op.reader_options(
            key,
            ReaderOptions {
                if_match: etag.clone(),
                chunk: Some(PIECE),
                ..Default::default()
            },
        ) {
            Ok(r) => r,
            Err(e) => return self.read_failed(key, e),
        };
        let mut writer = to
            .op
            .writer_options(key, options)
            .map_err(|e| to.fail(&format!("writing {key}"), &e))?;
        let pieces = match reader.into_iterator(0..size) {
            Ok(p) => p,
            Err(e) => return self.read_failed(key, e),
        };
        let mut bytes = 0u64;
        for piece in pieces {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => return self.read_failed(key, e),
            };
            bytes += piece.len() as u64;
            writer
                .write(piece)
                .map_err(|e| to.fail(&format!("writing {key}"), &e))?;
        }
        if bytes != size {
            // Shorter or longer than it said: changed under the copy.
            return Ok(Copied::Changed);
        }
        writer
            .close()
            .map_err(|e| to.fail(&format!("writing {key}"), &e))?;
        Ok(Copied::Done { etag, bytes })
    }

    fn read_failed(&self, key: &str, e: opendal::Error) -> Result<Copied> {
        match e.kind() {
            opendal::ErrorKind::NotFound => Ok(Copied::Vanished),
            opendal::ErrorKind::ConditionNotMatch => Ok(Copied::Changed),
            _ => Err(self.fail(&format!("reading {key}"), &e)),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.op
            .delete(key)
            .map_err(|e| self.fail(&format!("deleting {key}"), &e))
    }

    /// SHA-256 of an object's content (None: it is gone), read in pieces.
    pub fn hash(&self, key: &str) -> Result<Option<[u8; 32]>> {
        let reader = match self.op.reader_options(
            key,
            ReaderOptions {
                chunk: Some(PIECE),
                ..Default::default()
            },
        ) {
            Ok(r) => r,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(&format!("reading {key}"), &e)),
        };
        let size = match self.op.stat(key) {
            Ok(m) => m.content_length(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(&format!("reading {key}"), &e)),
        };
        let mut h = Sha256::new();
        for piece in reader
            .into_iterator(0..size)
            .map_err(|e| self.fail(&format!("reading {key}"), &e))?
        {
            let piece = piece.map_err(|e| self.fail(&format!("reading {key}"), &e))?;
            for chunk in piece {
                h.update(&chunk);
            }
        }
        Ok(Some(h.finalize().into()))
    }

    /// An object's whole content (None: there is no such object). For small objects and
    /// tests: it is held in memory.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.op.read(key) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(&format!("reading {key}"), &e)),
        }
    }

    /// Write a whole object with a content type and user metadata.
    pub fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        user: &[(&str, &str)],
    ) -> Result<()> {
        self.op
            .write_options(
                key,
                body,
                WriteOptions {
                    content_type: content_type.map(str::to_string),
                    user_metadata: (!user.is_empty()).then(|| {
                        user.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    }),
                    ..Default::default()
                },
            )
            .map(|_| ())
            .map_err(|e| self.fail(&format!("writing {key}"), &e))
    }

    /// An object's user metadata and content type (for comparisons in tests and `verify`).
    pub fn metadata(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.op.stat(key) {
            Ok(m) => Ok(Some((
                m.content_type().map(str::to_string),
                m.user_metadata()
                    .map(|u| u.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            ))),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(&format!("reading {key}'s metadata"), &e)),
        }
    }
}
