//! Lifeboat's storage layer: restic-format repositories (through rustic_core), restic-format
//! locks, and raw objects beside the repository data. Every call to object storage goes through
//! here.

pub mod error;
pub mod lock;
pub mod objects;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod s3;
pub mod spool;
pub mod walarchive;

pub use error::{Error, Kind};
pub use lock::RepoKey;
pub use repo::{BackupSummary, CheckReport, RepoSpec, SnapshotInfo, SnapshotTags, Store};
