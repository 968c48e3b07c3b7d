//! Lifeboat's storage room: restic-format repositories (backups through Lifeboat's own pipeline
//! in `backup`, the rest through rustic_core), restic-format locks, the WAL archive's objects,
//! and raw objects beside the repository data. Every call to object storage goes through here
//! (S3 with deadlines: `s3`). Depends on `lifeboat-core` only.

pub mod backup;
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
