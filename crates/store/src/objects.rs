//! Raw object access beside the restic data: lock files today, the WAL archive next.
//!
//! rustic_core's backend traits only address its own file types (config, keys, snapshots, index,
//! packs); `locks/` and Lifeboat's own objects go through this trait instead. Two real
//! implementations: a local directory and S3 (through OpenDAL, as rustic_backend does).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Kind, Result};

pub trait ObjectStore: Send + Sync {
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// At most the first `n` bytes of an object.
    fn get_head(&self, key: &str, n: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.get(key)?.map(|mut b| {
            b.truncate(n);
            b
        }))
    }
    /// `len` bytes of an object from `offset` (a blob inside a pack); `None` if the object is
    /// not there. Shorter than `len` only when the object is.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.get(key)?.map(|b| {
            let start = (offset as usize).min(b.len());
            b[start..(start + len).min(b.len())].to_vec()
        }))
    }
    /// Keys directly below `prefix` (a "directory" such as `locks`), without the prefix.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    fn delete(&self, key: &str) -> Result<()>;
}

pub struct LocalObjects {
    root: PathBuf,
}

impl LocalObjects {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

fn io(e: std::io::Error, what: &str) -> Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return Error::new(Kind::Io, format!("{what}: {e}")).hint(
            "the repository's disk is full: free space and run again (nothing half-written was kept)",
        );
    }
    Error::new(Kind::Backend, format!("{what}: {e}"))
}

impl ObjectStore for LocalObjects {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let path = self.root.join(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(e, &format!("creating {}", dir.display())))?;
        }
        // Write to a temporary name, fsync, rename, fsync the directory: a reader never sees
        // half an object, and once put returns the object survives a crash.
        let tmp = PathBuf::from(format!(
            "{}.{}.tmp-lifeboat",
            path.display(),
            std::process::id()
        ));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e, &format!("writing {key}"))
        })
    }
    fn get_head(&self, key: &str, n: usize) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let f = match std::fs::File::open(self.root.join(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e, &format!("reading {key}"))),
        };
        let mut buf = Vec::with_capacity(n.min(1 << 20));
        f.take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io(e, &format!("reading {key}")))?;
        Ok(Some(buf))
    }
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        let f = match std::fs::File::open(self.root.join(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e, &format!("reading {key}"))),
        };
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e, &format!("reading {key}"))),
            }
        }
        buf.truncate(got);
        Ok(Some(buf))
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.root.join(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e, &format!("reading {key}"))),
        }
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.root.join(prefix);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e, &format!("listing {prefix}"))),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io(e, &format!("listing {prefix}")))?;
            if let Some(name) = entry.file_name().to_str() {
                if !name.ends_with(".tmp-lifeboat") && entry.path().is_file() {
                    out.push(name.to_string());
                }
            }
        }
        Ok(out)
    }
    fn delete(&self, key: &str) -> Result<()> {
        match std::fs::remove_file(self.root.join(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e, &format!("deleting {key}"))),
        }
    }
}

pub struct S3Objects {
    op: opendal::blocking::Operator,
}

impl S3Objects {
    /// `options` are OpenDAL's S3 options (bucket, root, endpoint, region, keys); every call
    /// has the deadlines `d` (see [`crate::s3`]).
    pub fn new(options: &BTreeMap<String, String>, d: crate::s3::Deadlines) -> Result<Self> {
        Ok(Self {
            op: crate::s3::operator(options, d)?,
        })
    }
}

fn s3err(e: opendal::Error, what: &str) -> Error {
    Error::new(Kind::Backend, format!("{what}: {}", crate::s3::describe(&e))).hint(
        crate::error::s3_hint(&e.to_string()).unwrap_or(
            "check that the S3 endpoint is reachable, answers, and takes the credentials; then run the command again",
        ),
    )
}

impl ObjectStore for S3Objects {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.op
            .write(key, data.to_vec())
            .map(|_| ())
            .map_err(|e| s3err(e, &format!("writing {key}")))
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.op.read(key) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s3err(e, &format!("reading {key}"))),
        }
    }
    fn get_head(&self, key: &str, n: usize) -> Result<Option<Vec<u8>>> {
        // A range past the end of the object is an error for OpenDAL: learn the length first.
        let len = match self.op.stat(key) {
            Ok(m) => m.content_length(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(s3err(e, &format!("reading {key}"))),
        };
        let opts = opendal::options::ReadOptions {
            range: (0..len.min(n as u64)).into(),
            ..Default::default()
        };
        match self.op.read_options(key, opts) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s3err(e, &format!("reading {key}"))),
        }
    }
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        let opts = opendal::options::ReadOptions {
            range: (offset..offset + len as u64).into(),
            ..Default::default()
        };
        match self.op.read_options(key, opts) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s3err(e, &format!("reading {key}"))),
        }
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = format!("{}/", prefix.trim_end_matches('/'));
        match self.op.list(&dir) {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter(|e| e.metadata().is_file())
                .map(|e| e.name().to_string())
                .collect()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(s3err(e, &format!("listing {prefix}"))),
        }
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.op
            .delete(key)
            .map_err(|e| s3err(e, &format!("deleting {key}")))
    }
}
