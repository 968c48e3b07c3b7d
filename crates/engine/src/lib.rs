//! Lifeboat's engine: backup jobs, retention, verification, restore, copy, and the evidence log
//! that records every one of them. The CLI (and later the daemon) are thin callers of this.

pub mod backup;
pub mod context;
pub mod control;
pub mod coord;
pub mod daemon;
pub mod dns;
pub mod evidence;
pub mod failpoint;
pub mod health;
pub mod healthapi;
pub mod manual;
pub mod notify;
pub mod ops;
pub mod pg;
pub mod pgbackup;
pub mod pgops;
pub mod pitr;
pub mod rejoin;
pub mod runbook;
pub mod signals;
pub mod switchover;
pub mod traffic;
pub mod wal;

pub use context::{Context, PlanError};
