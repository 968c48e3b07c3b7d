//! Lifeboat's storage room: restic-format repositories (backups through Lifeboat's own pipeline
//! in `backup`, the rest through rustic_core), restic-format locks, the WAL archive's objects,
//! and raw objects beside the repository data. Every call to object storage goes through here
//! (S3 with deadlines: `s3`). Depends on `lifeboat-core` only.

pub mod backup;
pub mod bucket;
pub mod error;
pub mod keyfile;
pub mod lock;
pub mod objects;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod s3;
pub mod spool;
pub mod tree_source;
pub mod walarchive;

pub use error::{Error, Kind};
pub use lock::RepoKey;
pub use repo::{BackupSummary, CheckReport, RepoSpec, SnapshotInfo, SnapshotTags, Store};

/// glibc serves a large allocation from mmap and gives it back on free, but after the first
/// such free it raises that threshold to the freed size, so later read buffers and packs come
/// from per-thread arenas that keep their pages: peak RSS grew by ~40 MB over the live heap on
/// the benchmark dataset. A fixed threshold keeps buffers of 4 MiB and more out of the arenas;
/// `max_arenas` also bounds how many arenas the threads share. Process-wide: called by the
/// backup and restore paths, which are what a command runs.
pub(crate) fn tune_allocator(max_arenas: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; any value is valid for them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        if let Some(n) = max_arenas {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max_arenas;
}
