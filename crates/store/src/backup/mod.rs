//! Lifeboat's own backup pipeline, writing the restic repository format (version 2).
//!
//! rustic_core's archiver reads, chunks (Rabin, a byte at a time, tables rebuilt per file) and
//! hashes each file on one thread and uploads one pack at a time. This one splits the work in
//! stages joined by bounded channels, so memory stays bounded whatever the source:
//!
//! ```text
//! walk (this thread: directory order, parent snapshot, trees)
//!   → readers (read, gear-hash chunking, SHA-256; a chunk already stored is skipped here)
//!   → sealers (zstd with a context kept per thread, AES-256-CTR + Poly1305)
//!   → packer (16 MiB packs; several uploads in flight; the index after its packs)
//! ```
//!
//! A directory's tree is written once every file in it has its content ids; directories are
//! finished in the order the walk leaves them, so a parent always comes after its children.
//! A file unchanged since the parent snapshot (same type, size, mtime, ctime and inode, every
//! blob still in the index) is taken from the parent without being read, as restic does. A file
//! that changes while it is read is stored as read (its size is what was read, so the snapshot
//! is consistent) and named in the summary; a file that vanishes between the listing and its
//! reading is left out and named too.

pub mod cdc;
pub mod pack;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Metadata, Node, NodeType, SnapshotFile, SnapshotSummary, Tree};
use rustic_core::{DataId, Id, ReadSource, ReadSourceEntry, ReadSourceOpen, TreeId};

use crate::error::{Error, Kind, Result};
use crate::lock::RepoKey;
use crate::objects::ObjectStore;
use pack::{BlobKind, KnownBlobs, Location, Packer, PlainBlob};

/// How the pipeline runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Store the (single) backup path under this path instead.
    pub as_path: Option<PathBuf>,
    /// Compare with this snapshot: unchanged files are not read again.
    pub parent: Option<SnapshotFile>,
    /// zstd level of data and tree blobs.
    pub level: i32,
    /// Look at a file again after reading it, to notice changes made while it was read (off
    /// for sources that are not files on this machine, such as a spooled command output).
    pub restat: bool,
    /// Files (by their path on disk) cut in chunks of [`FIXED_CHUNK`] bytes instead of by
    /// content: files that only change in place, page by page.
    pub fixed_chunks: Option<fn(&Path) -> bool>,
    /// Take a file from the parent only if it was last modified before this time (the
    /// parent's start): a file written in the same clock tick as the parent read it keeps
    /// its mtime, so the stamps alone cannot tell. `None`: the stamps decide (as restic).
    pub unchanged_before: Option<jiff::Timestamp>,
}

/// The chunk size of [`Options::fixed_chunks`] files: 128 PostgreSQL pages, restic's
/// average chunk.
pub const FIXED_CHUNK: usize = 1 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            as_path: None,
            parent: None,
            level: 3,
            restat: true,
            fixed_chunks: None,
            unchanged_before: None,
        }
    }
}

/// A snapshot written, and what the run noticed.
pub struct Outcome {
    pub snapshot: SnapshotFile,
    /// Files that changed while they were read (stored as read).
    pub changed_while_read: Vec<String>,
    /// Files listed but gone when they were to be read (left out).
    pub vanished: Vec<String>,
}

/// Size, mtime and ctime as the kernel reports them, to notice a file changing under a read.
type Stamp = (u64, i64, i64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// A file's content, as a reader hands it back.
struct FileDone {
    content: Vec<DataId>,
    size: u64,
    changed: bool,
}

struct FileJob {
    job: usize,
    reader: Box<dyn Read + Send>,
    path: PathBuf,
    /// The size the listing saw (reads are sized by it).
    size: u64,
    before: Option<Stamp>,
    /// Cut in fixed-size chunks (see [`Options::fixed_chunks`]).
    fixed: bool,
}

enum Slot {
    Ready(Node),
    /// A file being read by job `.0`; `.2` is its path in the snapshot (for the summary).
    File(usize, Node, String),
    Dir(usize),
}

/// A directory the walk is in (or the snapshot's root, which has no node).
struct Frame {
    node: Option<Node>,
    slots: Vec<Slot>,
    /// The same directory in the parent snapshot.
    parent: Option<Tree>,
    parent_tree: Option<TreeId>,
}

struct Finished {
    seq: usize,
    frame: Frame,
}

struct Walk<'a> {
    objects: &'a dyn ObjectStore,
    key: &'a RepoKey,
    trees: &'a HashMap<Id, Location>,
    /// Data blobs in the index or added by this run.
    known: &'a Mutex<HashSet<Id>>,
    packer: &'a Packer,
    progress: &'a rustic_core::Progress,
    /// See [`Options::restat`].
    restat: bool,
    fixed_chunks: Option<fn(&Path) -> bool>,
    unchanged_before: Option<jiff::Timestamp>,
    compressor: zstd::bulk::Compressor<'static>,
    trees_added: HashSet<Id>,
    stack: Vec<Frame>,
    cur: PathBuf,
    finished: VecDeque<Finished>,
    subtrees: HashMap<usize, Node>,
    next_seq: usize,
    results: HashMap<usize, Result<FileDone>>,
    /// Files handed to the readers whose trees are not written yet.
    pending_jobs: usize,
    next_job: usize,
    summary: SnapshotSummary,
    changed: Vec<String>,
    vanished: Vec<String>,
}

type Results = crossbeam_channel::Receiver<(usize, Result<FileDone>)>;

impl Walk<'_> {
    fn load_tree(&self, id: &TreeId) -> Option<Tree> {
        let id = id.into_inner();
        let loc = self.trees.get(&id)?;
        // A parent that cannot be read only costs reading the files again.
        let data = pack::read_blob(self.objects, self.key, &id, loc).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// The entry of this name in the parent snapshot's copy of the current directory (trees
    /// are sorted by name, as restic writes them).
    fn parent_node(&self, name: &OsStr) -> Option<&Node> {
        let tree = self.stack.last()?.parent.as_ref()?;
        let i = tree
            .nodes
            .binary_search_by(|n| (*n.name()).cmp(name))
            .ok()?;
        Some(&tree.nodes[i])
    }

    fn push(&mut self, slot: Slot) {
        self.stack
            .last_mut()
            .expect("the root frame")
            .slots
            .push(slot);
    }

    fn open_dir(&mut self, name: &OsStr, node: Node) {
        let parent_tree = self
            .parent_node(name)
            .filter(|p| matches!(p.node_type, NodeType::Dir))
            .and_then(|p| p.subtree);
        let parent = parent_tree.as_ref().and_then(|id| self.load_tree(id));
        self.stack.push(Frame {
            node: Some(node),
            slots: Vec::new(),
            parent,
            parent_tree,
        });
        self.cur.push(name);
    }

    fn close_dir(&mut self) {
        let frame = self.stack.pop().expect("an open directory");
        self.cur.pop();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.push(Slot::Dir(seq));
        self.finished.push_back(Finished { seq, frame });
    }

    /// A file: taken from the parent snapshot when unchanged there, otherwise opened and
    /// returned as a job for the readers. `None` when there is nothing to read.
    fn add_file<O: ReadSourceOpen>(
        &mut self,
        name: &OsStr,
        path: &Path,
        tree_path: &Path,
        mut node: Node,
        open: Option<O>,
    ) -> Result<Option<FileJob>>
    where
        O::Reader: 'static,
    {
        let parent = self.parent_node(name);
        let in_parent = parent.is_some();
        let reuse = parent.and_then(|p| {
            let (pm, m) = (&p.meta, &node.meta);
            let same = matches!(p.node_type, NodeType::File)
                && pm.size == m.size
                && pm.mtime == m.mtime
                && pm.ctime.zip(m.ctime).is_none_or(|(x, y)| x == y)
                && (pm.inode == 0 || m.inode == 0 || pm.inode == m.inode)
                && self
                    .unchanged_before
                    .is_none_or(|t| m.mtime.is_some_and(|mt| mt < t));
            let content = p.content.clone()?;
            let known = self.known.lock().expect("known");
            (same && content.iter().all(|id| known.contains(&id.into_inner()))).then_some(content)
        });
        if let Some(content) = reuse {
            self.summary.total_files_processed += 1;
            self.summary.files_unmodified += 1;
            self.summary.total_bytes_processed += node.meta.size;
            self.progress.inc(node.meta.size);
            node.content = Some(content);
            self.push(Slot::Ready(node));
            return Ok(None);
        }
        let restat = self.restat;
        let before = if restat { stamp(path) } else { None };
        let reader = match open.map(ReadSourceOpen::open) {
            Some(Ok(r)) => r,
            None => {
                return Err(Error::new(
                    Kind::Internal,
                    format!("{}: a file without content to read", path.display()),
                ))
            }
            Some(Err(_)) if restat && std::fs::symlink_metadata(path).is_err() => {
                self.vanished.push(tree_path.display().to_string());
                return Ok(None);
            }
            Some(Err(e)) => {
                return Err(Error::new(
                    Kind::Source,
                    format!(
                        "cannot open {}: {}",
                        path.display(),
                        crate::error::parse(e).cause()
                    ),
                )
                .hint("check that the file is readable by the user running Lifeboat; no snapshot was recorded"))
            }
        };
        self.summary.total_files_processed += 1;
        if in_parent {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        let job = self.next_job;
        self.next_job += 1;
        self.pending_jobs += 1;
        let size = node.meta.size;
        self.push(Slot::File(job, node, tree_path.display().to_string()));
        Ok(Some(FileJob {
            job,
            reader: Box::new(reader),
            path: path.to_path_buf(),
            size,
            before,
            fixed: self.fixed_chunks.is_some_and(|f| f(path)),
        }))
    }

    /// Wait until the readers have answered for `job`.
    fn await_job(&mut self, results: &Results, job: usize) -> Result<()> {
        while !self.results.contains_key(&job) {
            let (j, r) = results
                .recv()
                .map_err(|_| Error::new(Kind::Internal, "the file readers stopped"))?;
            self.results.insert(j, r);
        }
        Ok(())
    }

    /// Wait until every file of `frame` is read.
    fn await_frame(&mut self, results: &Results, frame: &Frame) -> Result<()> {
        for slot in &frame.slots {
            if let Slot::File(job, ..) = slot {
                self.await_job(results, *job)?;
            }
        }
        Ok(())
    }

    /// Write the trees of finished directories whose files are all read. With `block`, wait
    /// for the readers until every finished directory is written.
    fn finish_dirs(&mut self, results: &Results, block: bool) -> Result<()> {
        for (job, r) in results.try_iter() {
            self.results.insert(job, r);
        }
        while let Some(front) = self.finished.front() {
            let ready = front.frame.slots.iter().all(|s| match s {
                Slot::File(job, ..) => self.results.contains_key(job),
                _ => true,
            });
            if !ready && !block {
                return Ok(());
            }
            let Finished { seq, frame } = self.finished.pop_front().expect("front");
            self.await_frame(results, &frame)?;
            let mut node = frame.node.clone().expect("a directory's node");
            node.subtree = Some(self.write_tree(frame)?);
            self.subtrees.insert(seq, node);
        }
        Ok(())
    }

    /// The tree of a frame whose files are all read: stored unless the repository has it.
    fn write_tree(&mut self, frame: Frame) -> Result<TreeId> {
        let mut nodes = Vec::with_capacity(frame.slots.len());
        for slot in frame.slots {
            match slot {
                Slot::Ready(n) => nodes.push(n),
                Slot::Dir(seq) => nodes.push(self.subtrees.remove(&seq).expect("child tree")),
                Slot::File(job, mut n, tree_path) => {
                    self.pending_jobs -= 1;
                    let done = self.results.remove(&job).expect("file read")?;
                    if done.changed {
                        self.changed.push(tree_path);
                    }
                    n.meta.size = done.size;
                    n.content = Some(done.content);
                    self.summary.total_bytes_processed += done.size;
                    nodes.push(n);
                }
            }
        }
        // By name as bytes, the order restic writes and reads.
        nodes.sort_by(|a, b| a.name().cmp(&b.name()));
        let tree = Tree { nodes };
        // As rustic_core's Tree::serialize (restic's JSON and a newline), hashed once here.
        let mut bytes = serde_json::to_vec(&tree)
            .map_err(|e| Error::new(Kind::Internal, format!("serialising a tree: {e}")))?;
        bytes.push(b'\n');
        let raw = pack::sha256(&bytes);
        let id = Id::new(raw);
        self.summary.total_dirs_processed += 1;
        self.summary.total_dirsize_processed += bytes.len() as u64;
        match frame.parent_tree {
            Some(p) if p.into_inner() == id => self.summary.dirs_unmodified += 1,
            Some(_) => self.summary.dirs_changed += 1,
            None => self.summary.dirs_new += 1,
        }
        if !self.trees.contains_key(&id) && self.trees_added.insert(id) {
            let sealed = pack::seal(self.key, &mut self.compressor, raw, BlobKind::Tree, &bytes)?;
            self.packer.add(sealed)?;
        }
        Ok(TreeId::from(id))
    }
}

/// Back up `source` into the repository behind `objects`, as `snap` (its tags, host and time
/// already set). Returns the snapshot as written.
pub fn archive<R: ReadSource>(
    objects: Arc<dyn ObjectStore>,
    key: &RepoKey,
    source: &R,
    backup_paths: &[PathBuf],
    snap: SnapshotFile,
    opts: &Options,
    progress: &rustic_core::Progress,
) -> Result<Outcome>
where
    <R::Open as ReadSourceOpen>::Reader: 'static,
{
    archive_with(
        objects,
        key,
        source,
        backup_paths,
        snap,
        opts,
        progress,
        |_| Ok(()),
    )
}

/// [`archive`], with `amend` given the snapshot after every file and tree is stored and
/// before the snapshot is written: for facts only known at the end (a base backup's stop
/// position). An error there records no snapshot.
#[allow(clippy::too_many_arguments)]
pub fn archive_with<R: ReadSource>(
    objects: Arc<dyn ObjectStore>,
    key: &RepoKey,
    source: &R,
    backup_paths: &[PathBuf],
    mut snap: SnapshotFile,
    opts: &Options,
    progress: &rustic_core::Progress,
    amend: impl FnOnce(&mut SnapshotFile) -> Result<()>,
) -> Result<Outcome>
where
    <R::Open as ReadSourceOpen>::Reader: 'static,
{
    let started = jiff::Zoned::now();
    crate::tune_allocator(None);
    let known = KnownBlobs::load(&objects, key)?;
    let chunker = cdc::Chunker::new(&key.mac("lifeboat-chunker", b"gear table"));
    let data_known = Mutex::new(known.data);
    let packer = Packer::new(objects.clone(), key.clone(), 2);
    let abort = AtomicBool::new(false);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let readers = cores.clamp(2, 4);
    let sealers = cores.clamp(1, 8);

    let (files_tx, files_rx) = crossbeam_channel::bounded::<FileJob>(readers * 4);
    let (blobs_tx, blobs_rx) = crossbeam_channel::bounded::<PlainBlob>(sealers * 2);
    let (results_tx, results_rx) = crossbeam_channel::unbounded::<(usize, Result<FileDone>)>();
    let seal_error: Mutex<Option<Error>> = Mutex::new(None);

    let walked = std::thread::scope(|s| -> Result<(Walk<'_>, TreeId)> {
        // The total for the progress bar, counted beside the backup (as restic does).
        s.spawn(|| {
            if let Ok(Some(total)) = source.size() {
                progress.set_length(total);
            }
        });
        for _ in 0..readers {
            let files_rx = files_rx.clone();
            let blobs_tx = blobs_tx.clone();
            let results_tx = results_tx.clone();
            let (chunker, data_known, abort) = (&chunker, &data_known, &abort);
            let restat = opts.restat;
            s.spawn(move || {
                for job in files_rx {
                    let FileJob {
                        job,
                        reader,
                        path,
                        size,
                        before,
                        fixed,
                    } = job;
                    if abort.load(Ordering::Relaxed) {
                        let _ = results_tx.send((job, Err(Error::new(Kind::Internal, "stopped"))));
                        continue;
                    }
                    let mut content = Vec::new();
                    let emit = |chunk: bytes::Bytes| {
                        if abort.load(Ordering::Relaxed) {
                            return Err(std::io::Error::other("the backup stopped"));
                        }
                        let id = pack::sha256(&chunk);
                        content.push(DataId::from(Id::new(id)));
                        progress.inc(chunk.len() as u64);
                        if data_known.lock().expect("known").insert(Id::new(id)) {
                            blobs_tx
                                .send(PlainBlob {
                                    id,
                                    kind: BlobKind::Data,
                                    data: chunk,
                                })
                                .map_err(|_| std::io::Error::other("the sealers stopped"))?;
                        }
                        Ok(())
                    };
                    let read = if fixed {
                        cdc::fixed_chunks(reader, size, FIXED_CHUNK, emit)
                    } else {
                        chunker.chunks(reader, size, emit)
                    };
                    let r = match read {
                        Ok(size) => {
                            let changed = restat && before.is_some() && stamp(&path) != before;
                            Ok(FileDone {
                                content,
                                size,
                                changed,
                            })
                        }
                        Err(e) => Err(Error::new(
                            Kind::Source,
                            format!("reading {}: {e}", path.display()),
                        )
                        .hint("check that the file is readable by the user running Lifeboat; no snapshot was recorded")),
                    };
                    let _ = results_tx.send((job, r));
                }
            });
        }
        drop(results_tx);
        for _ in 0..sealers {
            let blobs_rx = blobs_rx.clone();
            let (packer, abort, seal_error) = (&packer, &abort, &seal_error);
            let level = opts.level;
            s.spawn(move || {
                let mut compressor = match zstd::bulk::Compressor::new(level) {
                    Ok(c) => c,
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        seal_error.lock().expect("err").get_or_insert(Error::new(
                            Kind::Internal,
                            format!("zstd level {level}: {e}"),
                        ));
                        return;
                    }
                };
                for blob in blobs_rx {
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let r = pack::seal(
                        packer.key(),
                        &mut compressor,
                        blob.id,
                        blob.kind,
                        &blob.data,
                    )
                    .and_then(|sealed| packer.add(sealed));
                    if let Err(e) = r {
                        abort.store(true, Ordering::Relaxed);
                        seal_error.lock().expect("err").get_or_insert(e);
                    }
                }
            });
        }
        drop(blobs_tx);
        drop(blobs_rx);
        drop(files_rx);

        let mut walk = Walk {
            objects: &*objects,
            key,
            trees: &known.trees,
            known: &data_known,
            packer: &packer,
            progress,
            restat: opts.restat,
            fixed_chunks: opts.fixed_chunks,
            unchanged_before: opts.unchanged_before,
            compressor: zstd::bulk::Compressor::new(opts.level)
                .map_err(|e| Error::new(Kind::Input, format!("zstd level {}: {e}", opts.level)))?,
            trees_added: HashSet::new(),
            stack: Vec::new(),
            cur: PathBuf::from("/"),
            finished: VecDeque::new(),
            subtrees: HashMap::new(),
            next_seq: 0,
            results: HashMap::new(),
            pending_jobs: 0,
            next_job: 0,
            summary: SnapshotSummary::default(),
            changed: Vec::new(),
            vanished: Vec::new(),
        };
        let root_parent = opts.parent.as_ref().map(|p| p.tree);
        walk.stack.push(Frame {
            node: None,
            slots: Vec::new(),
            parent: root_parent.as_ref().and_then(|id| walk.load_tree(id)),
            parent_tree: root_parent,
        });
        let result = (|| -> Result<TreeId> {
            for entry in source.entries() {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                let ReadSourceEntry { path, node, open } = entry.map_err(|e| {
                    let p = crate::error::parse(e);
                    Error::new(
                        Kind::Source,
                        format!("listing the backup paths: {}", p.cause()),
                    )
                    .hint("check that the paths exist and are readable; no snapshot was recorded")
                })?;
                // The path inside the snapshot, always absolute.
                let tree_path = match (&opts.as_path, backup_paths.first()) {
                    (Some(ap), Some(bp)) => match path.strip_prefix(bp) {
                        Ok(rest) if rest.as_os_str().is_empty() => ap.clone(),
                        Ok(rest) => ap.join(rest),
                        Err(_) => path.clone(),
                    },
                    _ => path.clone(),
                };
                let tree_path = Path::new("/").join(&tree_path);
                let Some(name) = tree_path.file_name().map(OsStr::to_os_string) else {
                    continue; // "/" itself: its entries go in the root tree
                };
                let dir = tree_path.parent().unwrap_or(Path::new("/")).to_path_buf();
                while !dir.starts_with(&walk.cur) {
                    walk.close_dir();
                }
                let missing: Vec<_> = dir
                    .strip_prefix(&walk.cur)
                    .expect("a prefix")
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        _ => None,
                    })
                    .collect();
                for comp in missing {
                    let meta = Metadata {
                        mode: Some(0o755),
                        ..Default::default()
                    };
                    walk.open_dir(&comp, Node::new_node(&comp, NodeType::Dir, meta));
                }
                let node = if node.name() == name.as_os_str() {
                    node
                } else {
                    let mut n = Node::new_node(&name, node.node_type.clone(), node.meta.clone());
                    n.content = node.content.clone();
                    n
                };
                match node.node_type {
                    NodeType::Dir => walk.open_dir(&name, node),
                    NodeType::File => {
                        let job = walk.add_file(&name, &path, &tree_path, node, open)?;
                        if let Some(job) = job {
                            files_tx.send(job).map_err(|_| {
                                Error::new(Kind::Internal, "the file readers stopped")
                            })?;
                        }
                    }
                    _ => {
                        walk.summary.total_files_processed += 1;
                        walk.push(Slot::Ready(node));
                    }
                }
                // Bound what waits: past a few thousand files in flight, wait for the readers.
                walk.finish_dirs(&results_rx, walk.pending_jobs > 4096)?;
            }
            while walk.stack.len() > 1 {
                walk.close_dir();
            }
            walk.finish_dirs(&results_rx, true)?;
            let root = walk.stack.pop().expect("root frame");
            // The root's own files (a single file backed up, or files at "/").
            walk.await_frame(&results_rx, &root)?;
            walk.write_tree(root)
        })();
        drop(files_tx);
        match result {
            Ok(root) => Ok((walk, root)),
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    });
    if let Some(e) = seal_error.into_inner().expect("err") {
        return Err(e);
    }
    let (walk, root_tree) = walked?;
    let stats = packer.finish()?;

    let mut summary = walk.summary;
    summary.data_blobs = stats.data_blobs;
    summary.tree_blobs = stats.tree_blobs;
    summary.data_added = stats.data_added + stats.trees_added;
    summary.data_added_packed = stats.data_added_packed + stats.trees_added_packed;
    summary.data_added_files = stats.data_added;
    summary.data_added_files_packed = stats.data_added_packed;
    summary.data_added_trees = stats.trees_added;
    summary.data_added_trees_packed = stats.trees_added_packed;
    summary.command = "lifeboat backup".into();
    let ended = jiff::Zoned::now();
    summary.backup_start = started.clone();
    summary.backup_end = ended.clone();
    let secs =
        (ended.timestamp().as_millisecond() - started.timestamp().as_millisecond()) as f64 / 1000.0;
    summary.backup_duration = secs;
    summary.total_duration = secs;

    snap.tree = root_tree;
    let mut paths = rustic_core::StringList::default();
    for p in backup_paths {
        paths.add(
            opts.as_path
                .as_ref()
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned(),
        );
    }
    snap.paths = paths;
    if let Some(p) = &opts.parent {
        snap.parent = Some(p.id);
        snap.parents = vec![p.id];
    }
    snap.summary = Some(summary);
    snap.id = Default::default();
    amend(&mut snap)?;
    let json = serde_json::to_vec(&snap)
        .map_err(|e| Error::new(Kind::Internal, format!("snapshot: {e}")))?;
    let (stored, id) = pack::encode_file(key, &json)?;
    objects.put(&format!("snapshots/{id}"), &stored)?;
    snap.id = id
        .parse()
        .map_err(|_| Error::new(Kind::Internal, "snapshot id"))?;
    Ok(Outcome {
        snapshot: snap,
        changed_while_read: walk.changed,
        vanished: walk.vanished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::LocalObjects;
    use rustic_core::{LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions};
    use std::sync::atomic::AtomicUsize;

    type LocalOpen = <LocalSource as ReadSource>::Open;

    /// What happens to a file when the pipeline opens it.
    #[derive(Clone, Copy)]
    enum Hook {
        None,
        /// Deleted just before it is opened (listed, then gone).
        Vanish,
        /// Appended to after the first read.
        Grow,
        /// Cut to half its size after the first read.
        Shrink,
    }

    struct Hooked {
        inner: LocalSource,
        target: PathBuf,
        hook: Hook,
        opens: Arc<AtomicUsize>,
    }

    struct HookedOpen {
        inner: LocalOpen,
        path: PathBuf,
        hook: Hook,
        opens: Arc<AtomicUsize>,
    }

    /// A reader whose file is changed (grown or shrunk, as `hook` says) after its first read.
    struct ChangedUnderRead<R> {
        inner: R,
        path: PathBuf,
        hook: Hook,
        reads: usize,
    }

    impl<R: Read> Read for ChangedUnderRead<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.reads += 1;
            if self.reads == 1 {
                use std::io::{Seek, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
                match self.hook {
                    Hook::Grow => {
                        f.seek(std::io::SeekFrom::End(0))?;
                        f.write_all(b"written while the backup read the file")?;
                    }
                    Hook::Shrink => f.set_len(f.metadata()?.len() / 2)?,
                    Hook::None | Hook::Vanish => {}
                }
            }
            Ok(n)
        }
    }

    impl ReadSourceOpen for HookedOpen {
        type Reader = Box<dyn Read + Send>;
        fn open(self) -> rustic_core::RusticResult<Self::Reader> {
            self.opens.fetch_add(1, Ordering::Relaxed);
            match self.hook {
                Hook::Vanish => {
                    std::fs::remove_file(&self.path).expect("remove");
                    Ok(Box::new(self.inner.open()?))
                }
                hook @ (Hook::Grow | Hook::Shrink) => Ok(Box::new(ChangedUnderRead {
                    inner: self.inner.open()?,
                    path: self.path,
                    hook,
                    reads: 0,
                })),
                Hook::None => Ok(Box::new(self.inner.open()?)),
            }
        }
    }

    impl ReadSource for Hooked {
        type Open = HookedOpen;
        type Iter = std::vec::IntoIter<rustic_core::RusticResult<ReadSourceEntry<HookedOpen>>>;
        fn size(&self) -> rustic_core::RusticResult<Option<u64>> {
            Ok(None)
        }
        fn entries(&self) -> Self::Iter {
            self.inner
                .entries()
                .map(|e| {
                    e.map(|e| {
                        let hook = if e.path == self.target {
                            self.hook
                        } else {
                            Hook::None
                        };
                        ReadSourceEntry {
                            open: e.open.map(|inner| HookedOpen {
                                inner,
                                path: e.path.clone(),
                                hook,
                                opens: self.opens.clone(),
                            }),
                            path: e.path,
                            node: e.node,
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        src: PathBuf,
        objects: Arc<dyn ObjectStore>,
        key: RepoKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("a.txt"), b"alpha").expect("write");
        std::fs::write(src.join("sub/big.bin"), vec![42u8; 3 << 20]).expect("write");
        std::fs::write(src.join("sub/c.txt"), b"gamma").expect("write");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        Fixture {
            objects: Arc::new(LocalObjects::new(&repo)),
            key: RepoKey::from_hex(&"3c".repeat(64)).expect("key"),
            src,
            _dir: dir,
        }
    }

    fn run(
        f: &Fixture,
        target: &str,
        hook: Hook,
        parent: Option<SnapshotFile>,
    ) -> (Outcome, usize) {
        let paths = vec![f.src.clone()];
        let inner = LocalSource::new(
            LocalSourceSaveOptions::default(),
            &rustic_core::Excludes::default(),
            &LocalSourceFilterOptions::default(),
            &paths,
        )
        .expect("source");
        let opens = Arc::new(AtomicUsize::new(0));
        let src = Hooked {
            inner,
            target: f.src.join(target),
            hook,
            opens: opens.clone(),
        };
        let snap = rustic_core::SnapshotOptions::default()
            .to_snapshot()
            .expect("snapshot");
        let opts = Options {
            parent,
            ..Options::default()
        };
        let out = archive(
            f.objects.clone(),
            &f.key,
            &src,
            &paths,
            snap,
            &opts,
            &rustic_core::Progress::hidden(),
        )
        .expect("backup");
        (out, opens.load(Ordering::Relaxed))
    }

    /// The nodes of the backed-up directory, read back from the repository.
    fn nodes(f: &Fixture, snap: &SnapshotFile, sub: &[&str]) -> Vec<Node> {
        let known = KnownBlobs::load(&f.objects, &f.key).expect("index");
        let mut id = snap.tree;
        let comps: Vec<String> = f
            .src
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .chain(sub.iter().map(|s| s.to_string()))
            .collect();
        let load = |id: &TreeId| -> Tree {
            let id = id.into_inner();
            let data = pack::read_blob(&*f.objects, &f.key, &id, &known.trees[&id]).expect("tree");
            serde_json::from_slice(&data).expect("json")
        };
        for c in comps {
            let t = load(&id);
            id = t
                .nodes
                .iter()
                .find(|n| n.name().to_string_lossy() == c)
                .and_then(|n| n.subtree)
                .expect("directory in the snapshot");
        }
        load(&id).nodes
    }

    #[test]
    fn a_file_that_changes_while_it_is_read_is_stored_as_read_and_named() {
        let f = fixture();
        let (out, _) = run(&f, "sub/big.bin", Hook::Grow, None);
        assert_eq!(
            out.changed_while_read.len(),
            1,
            "{:?}",
            out.changed_while_read
        );
        assert!(out.changed_while_read[0].ends_with("sub/big.bin"));
        let n = nodes(&f, &out.snapshot, &["sub"]);
        let big = n
            .iter()
            .find(|n| n.name().to_string_lossy() == "big.bin")
            .expect("big.bin");
        // The size recorded is what was read: the tree agrees with its content.
        let on_disk = std::fs::metadata(f.src.join("sub/big.bin"))
            .expect("stat")
            .len();
        assert!(big.meta.size >= 3 << 20 && big.meta.size <= on_disk);
        assert!(!big.content.as_ref().expect("content").is_empty());
    }

    #[test]
    fn a_file_that_shrinks_while_it_is_read_is_stored_as_read_and_named() {
        let f = fixture();
        let (out, _) = run(&f, "sub/big.bin", Hook::Shrink, None);
        assert_eq!(
            out.changed_while_read.len(),
            1,
            "{:?}",
            out.changed_while_read
        );
        let n = nodes(&f, &out.snapshot, &["sub"]);
        let big = n
            .iter()
            .find(|n| n.name().to_string_lossy() == "big.bin")
            .expect("big.bin");
        // What was read, no more: the read stopped at the new end.
        assert!(big.meta.size < 3 << 20, "{}", big.meta.size);
        assert!(big.meta.size >= (3 << 20) / 2, "{}", big.meta.size);
        assert!(!big.content.as_ref().expect("content").is_empty());
    }

    #[test]
    fn a_file_that_vanishes_before_it_is_read_is_left_out_and_named() {
        let f = fixture();
        let (out, _) = run(&f, "sub/c.txt", Hook::Vanish, None);
        assert_eq!(out.vanished.len(), 1);
        assert!(out.vanished[0].ends_with("sub/c.txt"));
        let n = nodes(&f, &out.snapshot, &["sub"]);
        let names: Vec<_> = n
            .iter()
            .map(|n| n.name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["big.bin"]);
        let summary = out.snapshot.summary.expect("summary");
        assert_eq!(summary.total_files_processed, 2);
    }

    #[test]
    fn unchanged_files_come_from_the_parent_without_being_read_and_nothing_new_is_stored() {
        let f = fixture();
        let (first, opened) = run(&f, "", Hook::None, None);
        assert_eq!(opened, 3);
        std::fs::write(f.src.join("sub/c.txt"), b"gamma, edited").expect("write");
        let (second, opened) = run(&f, "", Hook::None, Some(first.snapshot.clone()));
        assert_eq!(opened, 1, "only the changed file is read again");
        let s = second.snapshot.summary.clone().expect("summary");
        assert_eq!(
            (s.files_unmodified, s.files_changed, s.files_new),
            (2, 1, 0)
        );
        assert!(
            s.data_added_files < 100,
            "{} bytes of file data added",
            s.data_added_files
        );
        let n = nodes(&f, &second.snapshot, &["sub"]);
        let c = n
            .iter()
            .find(|n| n.name().to_string_lossy() == "c.txt")
            .expect("c.txt");
        assert_eq!(c.meta.size, 13);
        // The big file's content ids are the parent's.
        let before = nodes(&f, &first.snapshot, &["sub"]);
        assert_eq!(before[0].content, n[0].content);
        // Nothing changed: the same root tree, and no data added.
        let (third, opened) = run(&f, "", Hook::None, Some(second.snapshot.clone()));
        assert_eq!(opened, 0);
        assert_eq!(third.snapshot.tree, second.snapshot.tree);
        assert_eq!(third.snapshot.summary.expect("summary").data_added, 0);
    }
}
