//! A directory read in place with rules for what to leave out, and files added once the walk
//! is over: the source of a base backup that reads a live PostgreSQL data directory.
//!
//! The walk lists the directory as restic does ([`rustic_core::LocalSource`]); `classify`
//! decides per entry whether it is kept, left out (with everything under it), kept as an empty
//! directory, or read whole in memory until two reads agree (a small file rewritten in place,
//! such as `pg_control`, must not be stored torn). When the listing ends, the `trailer` runs
//! (a base backup calls `pg_backup_stop()` there) and its entries follow: files whose content
//! exists only then (`backup_label`) and directories left out of the walk to be added whole
//! at the end (`pg_wal`, with the segments the backup needs). The backup pipeline writes a
//! directory's tree once its entries are all seen, so the root tree written last holds them.

use std::io::{Cursor, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{
    ErrorKind, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource,
    ReadSourceEntry, ReadSourceOpen, RusticError, RusticResult,
};

use crate::error::{Error, Kind, Result};

/// What becomes of an entry of the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treat {
    Keep,
    /// Left out, with everything under it.
    Skip,
    /// A directory kept without its contents.
    Empty,
    /// A file read whole, again until two reads agree.
    Stable,
}

/// An entry added after the walk, its path relative to the root.
pub enum Extra {
    /// A directory: its metadata from this path on disk (a symlink is followed).
    Dir { rel: PathBuf, from: PathBuf },
    /// A file on disk (a symlink is followed).
    File { rel: PathBuf, from: PathBuf },
    /// A file with this content, owned like the root, mode 0600.
    Bytes { rel: PathBuf, data: Vec<u8> },
}

type Classify = dyn Fn(&Path, bool) -> Treat + Send + Sync;
type Trailer = Box<dyn FnOnce() -> Result<Vec<Extra>> + Send>;

pub struct TreeSource {
    root: PathBuf,
    local: LocalSource,
    classify: Arc<Classify>,
    trailer: Mutex<Option<Trailer>>,
    /// The trailer's own error (the walk sees a listing error and stops).
    failed: Arc<Mutex<Option<Error>>>,
}

impl TreeSource {
    pub fn new(
        root: &Path,
        classify: impl Fn(&Path, bool) -> Treat + Send + Sync + 'static,
        trailer: impl FnOnce() -> Result<Vec<Extra>> + Send + 'static,
    ) -> Result<Self> {
        let local = LocalSource::new(
            LocalSourceSaveOptions::default(),
            &rustic_core::Excludes::default(),
            &LocalSourceFilterOptions::default(),
            &[root.to_path_buf()],
        )
        .map_err(|e| {
            Error::new(
                Kind::Source,
                format!(
                    "cannot list {}: {}",
                    root.display(),
                    crate::error::parse(e).cause()
                ),
            )
            .hint("check that the directory exists and is readable by the user running Lifeboat")
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            local,
            classify: Arc::new(classify),
            trailer: Mutex::new(Some(Box::new(trailer))),
            failed: Arc::new(Mutex::new(None)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The trailer's error, if it failed (taken).
    pub fn take_error(&self) -> Option<Error> {
        self.failed.lock().expect("trailer error").take()
    }
}

pub enum TreeOpen {
    Local(<LocalSource as ReadSource>::Open),
    Path(PathBuf),
    Stable(PathBuf),
    Bytes(Vec<u8>),
}

fn io_err(path: &Path, e: std::io::Error) -> Box<RusticError> {
    RusticError::new(
        ErrorKind::InputOutput,
        format!("cannot read {}: {e}", path.display()),
    )
}

/// A small file read whole until two reads in a row agree.
fn read_stable(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut last = std::fs::read(path)?;
    for _ in 0..20 {
        let again = std::fs::read(path)?;
        if again == last {
            return Ok(again);
        }
        last = again;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(std::io::Error::other(
        "it changed on every read (20 times in a row)",
    ))
}

impl ReadSourceOpen for TreeOpen {
    type Reader = Box<dyn Read + Send>;
    fn open(self) -> RusticResult<Self::Reader> {
        match self {
            TreeOpen::Local(o) => Ok(Box::new(o.open()?)),
            TreeOpen::Path(p) => std::fs::File::open(&p)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| io_err(&p, e)),
            TreeOpen::Stable(p) => read_stable(&p)
                .map(|d| Box::new(Cursor::new(d)) as Box<dyn Read + Send>)
                .map_err(|e| io_err(&p, e)),
            TreeOpen::Bytes(d) => Ok(Box::new(Cursor::new(d))),
        }
    }
}

/// A node for a path on disk (symlinks followed), as restic records it.
fn node_from_disk(name: &std::ffi::OsStr, path: &Path) -> std::io::Result<(Node, bool)> {
    let m = std::fs::metadata(path)?;
    let ts = |s: i64, ns: i64| jiff::Timestamp::new(s, ns as i32).ok();
    let meta = Metadata {
        mode: Some(go_mode(m.mode())),
        mtime: ts(m.mtime(), m.mtime_nsec()),
        atime: ts(m.atime(), m.atime_nsec()),
        ctime: ts(m.ctime(), m.ctime_nsec()),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        user: None,
        group: None,
        inode: m.ino(),
        device_id: m.dev(),
        size: if m.is_dir() { 0 } else { m.size() },
        links: m.nlink(),
        extended_attributes: Vec::new(),
    };
    let kind = if m.is_dir() {
        NodeType::Dir
    } else {
        NodeType::File
    };
    Ok((Node::new_node(name, kind, meta), m.is_dir()))
}

/// Go's `fs.FileMode` for a directory or a regular file (what restic stores).
fn go_mode(st_mode: u32) -> u32 {
    const GO_MODE_DIR: u32 = 1 << 31;
    let perm = st_mode & 0o777;
    if st_mode & 0o170_000 == 0o040_000 {
        perm | GO_MODE_DIR
    } else {
        perm
    }
}

type Entry = RusticResult<ReadSourceEntry<TreeOpen>>;

fn extra_entry(root: &Path, owner: Option<(u32, u32)>, x: Extra) -> Entry {
    let (rel, open) = match x {
        Extra::Dir { rel, from } | Extra::File { rel, from } => (rel, TreeOpen::Path(from)),
        Extra::Bytes { rel, data } => (rel, TreeOpen::Bytes(data)),
    };
    let name = rel
        .file_name()
        .ok_or_else(|| RusticError::new(ErrorKind::Internal, "an added entry without a name"))?
        .to_os_string();
    let (node, open) = match open {
        TreeOpen::Path(from) => {
            let (node, is_dir) = node_from_disk(&name, &from).map_err(|e| io_err(&from, e))?;
            (node, (!is_dir).then_some(TreeOpen::Path(from)))
        }
        TreeOpen::Bytes(data) => {
            let meta = Metadata {
                mode: Some(0o600),
                mtime: Some(jiff::Timestamp::now()),
                uid: owner.map(|o| o.0),
                gid: owner.map(|o| o.1),
                size: data.len() as u64,
                ..Default::default()
            };
            let node = Node::new_node(&name, NodeType::File, meta);
            (node, Some(TreeOpen::Bytes(data)))
        }
        TreeOpen::Local(_) | TreeOpen::Stable(_) => unreachable!("extras are paths or bytes"),
    };
    Ok(ReadSourceEntry {
        path: root.join(&rel),
        node,
        open,
    })
}

impl ReadSource for TreeSource {
    type Open = TreeOpen;
    type Iter = Box<dyn Iterator<Item = Entry>>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.local.size()
    }

    fn entries(&self) -> Self::Iter {
        let root = self.root.clone();
        let classify = self.classify.clone();
        let mut skipping: Option<PathBuf> = None;
        let walk = self.local.entries().filter_map(move |e| {
            let e = match e {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            if let Some(p) = &skipping {
                if e.path.starts_with(p) {
                    return None;
                }
                skipping = None;
            }
            let rel = e.path.strip_prefix(&root).unwrap_or(&e.path);
            let is_dir = matches!(e.node.node_type, NodeType::Dir);
            match classify(rel, is_dir) {
                Treat::Keep => Some(Ok(map_open(e, false))),
                Treat::Stable => Some(Ok(map_open(e, true))),
                Treat::Skip => {
                    if is_dir {
                        skipping = Some(e.path.clone());
                    }
                    None
                }
                Treat::Empty => {
                    if is_dir {
                        skipping = Some(e.path.clone());
                    }
                    Some(Ok(map_open(e, false)))
                }
            }
        });
        let trailer = self.trailer.lock().expect("trailer").take();
        let failed = self.failed.clone();
        let root = self.root.clone();
        let owner = std::fs::metadata(&root).ok().map(|m| (m.uid(), m.gid()));
        // Runs once the walk is over (a second listing has no trailer left).
        let tail = std::iter::once_with(move || match trailer.map(|t| t()) {
            None => Vec::new(),
            Some(Ok(extras)) => extras
                .into_iter()
                .map(|x| extra_entry(&root, owner, x))
                .collect(),
            Some(Err(e)) => {
                let msg = e.to_string();
                *failed.lock().expect("trailer error") = Some(e);
                vec![Err(RusticError::new(ErrorKind::Internal, msg))]
            }
        })
        .flatten();
        Box::new(walk.chain(tail))
    }
}

fn map_open(
    e: ReadSourceEntry<<LocalSource as ReadSource>::Open>,
    stable: bool,
) -> ReadSourceEntry<TreeOpen> {
    let path = e.path;
    ReadSourceEntry {
        open: e.open.map(|o| {
            if stable {
                TreeOpen::Stable(path.clone())
            } else {
                TreeOpen::Local(o)
            }
        }),
        path,
        node: e.node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_skips_empties_and_the_trailer_adds_at_the_end() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("data");
        for d in ["keep", "skip/deep", "empty/inner", "late"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "keep/a",
            "skip/b",
            "skip/deep/c",
            "empty/d",
            "empty/inner/e",
            "late/f",
            "ctl",
        ] {
            std::fs::write(root.join(f), f.as_bytes()).expect("write");
        }
        let src = TreeSource::new(
            &root,
            |rel, _| match rel.to_str().expect("utf8") {
                "skip" | "late" => Treat::Skip,
                "empty" => Treat::Empty,
                "ctl" => Treat::Stable,
                _ => Treat::Keep,
            },
            {
                let root = root.clone();
                move || {
                    Ok(vec![
                        Extra::Dir {
                            rel: "late".into(),
                            from: root.join("late"),
                        },
                        Extra::File {
                            rel: "late/f".into(),
                            from: root.join("late/f"),
                        },
                        Extra::Bytes {
                            rel: "label".into(),
                            data: b"written at the end".to_vec(),
                        },
                    ])
                }
            },
        )
        .expect("source");
        let mut seen = Vec::new();
        for e in src.entries() {
            let e = e.expect("entry");
            let rel = e
                .path
                .strip_prefix(&root)
                .expect("under root")
                .to_path_buf();
            let is_file = matches!(e.node.node_type, NodeType::File);
            let content = e.open.filter(|_| is_file).map(|o| {
                let mut s = String::new();
                o.open()
                    .expect("open")
                    .read_to_string(&mut s)
                    .expect("read");
                s
            });
            seen.push((rel.display().to_string(), content));
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ctl", "empty", "keep", "keep/a", "late", "late/f", "label"]
        );
        assert_eq!(seen[0].1.as_deref(), Some("ctl"));
        assert_eq!(seen[6].1.as_deref(), Some("written at the end"));
        assert!(src.take_error().is_none());
    }

    #[test]
    fn a_failing_trailer_ends_the_listing_with_its_error_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = TreeSource::new(
            dir.path(),
            |_, _| Treat::Keep,
            || Err(Error::new(Kind::Source, "the backup could not be stopped")),
        )
        .expect("source");
        let last = src.entries().last().expect("entries");
        assert!(last.is_err());
        let e = src.take_error().expect("kept");
        assert!(e.to_string().contains("could not be stopped"), "{e}");
    }
}
