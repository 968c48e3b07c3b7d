//! Restoring a snapshot's tree to a local directory.
//!
//! Lifeboat restores with its own writer instead of rustic_core's (which unwraps every read and
//! so panics on damaged data, leaving a zero-filled file of the right size behind, and buffers
//! whole packs: ~1 GB peak RSS on the benchmark dataset). Here every file is written to a
//! temporary name beside its destination, each blob is decrypted and authenticated as it is read,
//! and only a file whose every blob verified is renamed into place with its mode, times and
//! (as root) owner. A damaged file therefore never appears under its name; the restore goes on
//! with the other files and then fails, naming every file it could not restore.
//!
//! As restic does, files the snapshot recorded as hard links of one another (same device and
//! inode, more than one link) come back linked; runs of zeros come back as holes, so sparse
//! files stay sparse; symlinks get their own times.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use rustic_core::repofile::{BlobType, Node, NodeType};
use rustic_core::{IndexedFull, LsOptions, Progress, Repository};

use crate::error::{rustic, Error, Kind, Result};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths restored as hard links of another restored path (counted in `files` too).
    pub hard_links: u64,
    /// FIFOs and (as root) device nodes recreated.
    pub specials: u64,
    /// Entries not restored: sockets, and device nodes when not root.
    pub skipped: u64,
}

struct FileJob {
    dest: PathBuf,
    node: Node,
}

/// A file to link to an earlier one of the same inode, once that one is restored.
struct LinkJob {
    dest: PathBuf,
    /// Index into the file jobs of the first path of this inode.
    first: usize,
}

/// Go's `os.FileMode` (restic's on-disk mode) to Unix permission bits.
fn unix_mode(go_mode: u32) -> u32 {
    let mut m = go_mode & 0o777;
    if go_mode & (1 << 23) != 0 {
        m |= 0o4000; // setuid
    }
    if go_mode & (1 << 22) != 0 {
        m |= 0o2000; // setgid
    }
    if go_mode & (1 << 20) != 0 {
        m |= 0o1000; // sticky
    }
    m
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let kind = Kind::Io;
    let mut err = Error::new(kind, format!("{what} {}: {e}", path.display()));
    if e.raw_os_error() == Some(libc::ENOSPC) {
        err = err.hint("the target disk is full: free space or restore elsewhere");
    }
    err
}

fn set_meta(path: &Path, node: &Node, is_root: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = &node.meta;
    if is_root {
        if let (Some(uid), Some(gid)) = (meta.uid, meta.gid) {
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
            // SAFETY: lchown on a valid C string; errors are checked.
            if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
                return Err(io_err(
                    "setting the owner of",
                    path,
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    let symlink = matches!(node.node_type, NodeType::Symlink { .. });
    if let (Some(mode), false) = (meta.mode, symlink) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode(mode)))
            .map_err(|e| io_err("setting the mode of", path, e))?;
    }
    if let Some(mtime) = meta.mtime {
        // utimensat by path: opening a FIFO or device to set its times would block or act on
        // the device.
        let ts = |t: jiff::Timestamp| libc::timespec {
            tv_sec: t.as_second() as libc::time_t,
            tv_nsec: t.subsec_nanosecond() as libc::c_long,
        };
        let atime = meta.atime.map(ts).unwrap_or(libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        });
        let times = [atime, ts(mtime)];
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
        // A symlink's own times, not its target's.
        let flags = if symlink {
            libc::AT_SYMLINK_NOFOLLOW
        } else {
            0
        };
        // SAFETY: valid C string and a two-element timespec array, as utimensat requires.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
            return Err(io_err(
                "setting the times of",
                path,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Recreate a FIFO or device node; false when that is not possible here (devices need root).
fn make_special(dest: &Path, t: &NodeType) -> bool {
    let _ = std::fs::remove_file(dest);
    let Ok(c) = std::ffi::CString::new(dest.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: mkfifo/mknod on a valid C string; the result is checked.
    let r = unsafe {
        match t {
            NodeType::Fifo => libc::mkfifo(c.as_ptr(), 0o600),
            NodeType::Dev { device } => {
                libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, *device as libc::dev_t)
            }
            NodeType::Chardev { device } => {
                libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, *device as libc::dev_t)
            }
            _ => -1,
        }
    };
    r == 0
}

/// A temporary name beside `dest` of fixed, short length: any name the file system accepts
/// must restore, so the temporary name cannot grow with it (a name of 255 bytes plus a
/// suffix was "File name too long"). The job number keeps it unique within the restore.
fn tmp_name(dest: &Path, job: usize) -> PathBuf {
    dest.with_file_name(format!(".lifeboat-{}-{job}.part", std::process::id()))
}

/// Whether a blob is all zeros (written as a hole, so sparse files stay sparse).
fn all_zero(data: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128, so viewing aligned bytes as words is sound.
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Set once a command is interrupted: from then on no restore of this process writes again.
/// Every write holds the read side, so [`halt`] returns only when none is in flight.
static HALTED: RwLock<bool> = RwLock::new(false);

/// Stop every restore of this process for good, waiting for the writes in flight: a command
/// tearing down what it restored (an interrupted sandbox) can then remove it knowing nothing
/// writes there again behind it.
pub fn halt() {
    *HALTED.write().unwrap_or_else(|e| e.into_inner()) = true;
}

/// Permission to write one more thing of a restore, held while it is written.
fn write_gate() -> Result<RwLockReadGuard<'static, bool>> {
    let g = HALTED.read().unwrap_or_else(|e| e.into_inner());
    if *g {
        return Err(Error::new(
            Kind::Io,
            "the restore was stopped: the command was interrupted",
        ));
    }
    Ok(g)
}

/// A file of at least this many blobs is read by helpers in parallel.
const PARALLEL_FROM: usize = 8;
/// How many helpers read a large file's blobs.
const HELPERS: usize = 3;

fn restore_file<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    job: &FileJob,
    index: usize,
    is_root: bool,
    bytes: &AtomicU64,
    progress: &Progress,
) -> Result<()> {
    let _gate = write_gate()?;
    let tmp = tmp_name(&job.dest, index);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
        let mut len: u64 = 0;
        let mut hole = false;
        let fetch = |id: &rustic_core::DataId| {
            repo.cat_blob(BlobType::Data, &id.to_hex()).map_err(|e| {
                let mut err = rustic(e, "reading data");
                err.kind = Kind::Integrity;
                if err.message.contains("aead") || err.message.contains("MAC") {
                    let pack = err
                        .message
                        .split("Pack:")
                        .nth(1)
                        .map(|r| r.chars().take_while(char::is_ascii_hexdigit).collect::<String>())
                        .unwrap_or_default();
                    err.message = format!(
                        "its data is damaged: blob {} in pack {pack} failed its authentication (MAC) check",
                        &id.to_hex()[..8]
                    );
                }
                err
            })
        };
        let mut write = |data: &[u8]| -> Result<()> {
            if all_zero(data) {
                f.seek(SeekFrom::Current(data.len() as i64))
                    .map_err(|e| io_err("writing", &tmp, e))?;
                hole = true;
            } else {
                f.write_all(data).map_err(|e| io_err("writing", &tmp, e))?;
                hole = false;
            }
            len += data.len() as u64;
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            progress.inc(data.len() as u64);
            Ok(())
        };
        let ids: Vec<&rustic_core::DataId> = job.node.content.iter().flatten().collect();
        if ids.len() < PARALLEL_FROM {
            for id in &ids {
                write(&fetch(id)?)?;
            }
        } else {
            // A large file: its blobs read, authenticated and decompressed by a few helpers
            // (blob i by helper i mod n, one ahead each), written here in order.
            std::thread::scope(|s| -> Result<()> {
                let rxs: Vec<_> = (0..HELPERS)
                    .map(|h| {
                        let (tx, rx) = crossbeam_channel::bounded(1);
                        let (ids, fetch) = (&ids, &fetch);
                        s.spawn(move || {
                            for id in ids.iter().skip(h).step_by(HELPERS) {
                                let r = fetch(id);
                                let failed = r.is_err();
                                if tx.send(r).is_err() || failed {
                                    break;
                                }
                            }
                        });
                        rx
                    })
                    .collect();
                for i in 0..ids.len() {
                    let data = rxs[i % HELPERS]
                        .recv()
                        .map_err(|_| Error::new(Kind::Internal, "a restore helper stopped"))??;
                    write(&data)?;
                }
                Ok(())
            })?;
        }
        if hole {
            // A file ending in a hole: its length comes from set_len, not a write.
            f.set_len(len).map_err(|e| io_err("writing", &tmp, e))?;
        }
        f.flush().map_err(|e| io_err("writing", &tmp, e))?;
        drop(f);
        set_meta(&tmp, &job.node, is_root)?;
        std::fs::rename(&tmp, &job.dest).map_err(|e| io_err("renaming into place", &job.dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Restore the tree under `root` (a snapshot's root node) into `target`.
pub fn restore_tree<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    root: &Node,
    target: &Path,
    progress: Progress,
) -> Result<RestoreSummary> {
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut summary = RestoreSummary::default();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut files: Vec<FileJob> = Vec::new();
    let mut links: Vec<LinkJob> = Vec::new();
    // (device, inode) → the file job of its first path, for nodes with more than one link.
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    let mut total: u64 = 0;
    {
        let _gate = write_gate()?;
        std::fs::create_dir_all(target).map_err(|e| io_err("creating", target, e))?;
    }
    // A single file (or symlink) restores as itself into `target`; a directory restores its tree.
    let entries: Box<dyn Iterator<Item = rustic_core::RusticResult<(PathBuf, Node)>>> =
        if matches!(root.node_type, NodeType::Dir) {
            Box::new(
                repo.ls(root, &LsOptions::default())
                    .map_err(|e| rustic(e, "reading the snapshot's trees"))?,
            )
        } else {
            Box::new(std::iter::once(Ok((
                PathBuf::from(root.name().into_owned()),
                root.clone(),
            ))))
        };
    for entry in entries {
        let (rel, node) = entry.map_err(|e| {
            let mut err = rustic(e, "reading the snapshot's trees");
            err.kind = Kind::Integrity;
            err
        })?;
        let dest = target.join(&rel);
        let _gate = write_gate()?;
        match &node.node_type {
            NodeType::Dir => {
                std::fs::create_dir_all(&dest).map_err(|e| io_err("creating", &dest, e))?;
                dirs.push((dest, node));
            }
            NodeType::File => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err("creating", parent, e))?;
                }
                if node.meta.links > 1 && node.meta.inode != 0 {
                    let key = (node.meta.device_id, node.meta.inode);
                    if let Some(&first) = inodes.get(&key) {
                        links.push(LinkJob { dest, first });
                        continue;
                    }
                    inodes.insert(key, files.len());
                }
                total += node.meta.size;
                files.push(FileJob { dest, node });
            }
            NodeType::Symlink { .. } => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err("creating", parent, e))?;
                }
                let _ = std::fs::remove_file(&dest);
                std::os::unix::fs::symlink(node.node_type.to_link(), &dest)
                    .map_err(|e| io_err("creating symlink", &dest, e))?;
                set_meta(&dest, &node, is_root)?;
                summary.symlinks += 1;
            }
            NodeType::Fifo | NodeType::Dev { .. } | NodeType::Chardev { .. } => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err("creating", parent, e))?;
                }
                if make_special(&dest, &node.node_type) {
                    set_meta(&dest, &node, is_root)?;
                    summary.specials += 1;
                } else {
                    summary.skipped += 1;
                }
            }
            _ => summary.skipped += 1,
        }
    }
    progress.set_length(total);

    // A dozen threads read blobs of about 1 MiB: with an arena each they kept ~50 MB more
    // than they use; two arenas cost no measurable speed.
    crate::tune_allocator(Some(2));
    // Files in parallel: reading and decrypting is CPU work, writing is I/O; a few more
    // workers than cores keeps both busy. Each worker holds at most one blob in memory.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(2, 8);
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let failures: Mutex<Vec<(PathBuf, Error)>> = Mutex::new(Vec::new());
    let failed: Vec<std::sync::atomic::AtomicBool> = (0..files.len())
        .map(|_| std::sync::atomic::AtomicBool::new(false))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = files.get(i) else { break };
                if let Err(e) = restore_file(repo, job, i, is_root, &bytes, &progress) {
                    failed[i].store(true, Ordering::Relaxed);
                    failures
                        .lock()
                        .expect("failures lock")
                        .push((job.dest.clone(), e));
                }
            });
        }
    });
    progress.finish();
    // Hard links last: each to its inode's first path, restored above.
    let mut linked = 0u64;
    for l in &links {
        let _gate = write_gate()?;
        let first = &files[l.first].dest;
        if failed[l.first].load(Ordering::Relaxed) {
            failures.lock().expect("failures lock").push((
                l.dest.clone(),
                Error::new(
                    Kind::Integrity,
                    format!("a hard link of {}, which was not restored", first.display()),
                ),
            ));
            continue;
        }
        let _ = std::fs::remove_file(&l.dest);
        match std::fs::hard_link(first, &l.dest) {
            Ok(()) => linked += 1,
            Err(e) => failures
                .lock()
                .expect("failures lock")
                .push((l.dest.clone(), io_err("linking", &l.dest, e))),
        }
    }
    // Directories last, deepest first, so their times survive the files written into them.
    for (dest, node) in dirs.iter().rev() {
        let _gate = write_gate()?;
        set_meta(dest, node, is_root)?;
    }
    let failures = failures.into_inner().expect("failures lock");
    summary.files = (files.len() + links.len()) as u64 - failures.len() as u64;
    summary.hard_links = linked;
    summary.dirs = dirs.len() as u64;
    summary.bytes = bytes.load(Ordering::Relaxed);
    if !failures.is_empty() {
        let list: Vec<String> = failures
            .iter()
            .take(5)
            .map(|(p, e)| format!("{}: {}", p.display(), e.message))
            .collect();
        let more = if failures.len() > 5 {
            format!(" (and {} more)", failures.len() - 5)
        } else {
            String::new()
        };
        // The hint follows the cause: damaged data points at verify; a local problem (disk
        // full, permissions) at the target.
        let damaged = failures.iter().any(|(_, e)| e.kind == Kind::Integrity);
        let local = failures.iter().find(|(_, e)| e.kind != Kind::Integrity);
        let mut next = Vec::new();
        if damaged {
            next.push("run `lifeboat verify --read-data` to find the damaged snapshots, and restore the damaged files from an older snapshot or a copy".to_string());
        }
        if let Some((_, e)) = local {
            next.push(match &e.hint {
                Some(h) => h.clone(),
                None => "the target refused the write: check its free space and permissions, then restore again".into(),
            });
        }
        return Err(Error::new(
            if damaged { Kind::Integrity } else { Kind::Io },
            format!(
                "{} file(s) could not be restored and were not written: {}{more}",
                failures.len(),
                list.join("; ")
            ),
        )
        .hint(format!(
            "the other {} file(s) were restored; {}",
            summary.files,
            next.join("; ")
        )));
    }
    Ok(summary)
}
