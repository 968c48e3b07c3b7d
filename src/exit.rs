//! Exit codes, one table for every command (documented in the README).

use lifeboat_context::PlanError;
use lifeboat_core::{Error, Kind};

#[allow(dead_code)]
pub const OK: i32 = 0;
/// A check failed or an operation did not complete.
pub const FAILED: i32 = 1;
/// The plan or the command line is invalid.
pub const USAGE: i32 = 2;
/// The repository is locked by another process; retry later.
pub const LOCKED: i32 = 3;
/// The repository key is missing or wrong.
pub const KEY: i32 = 4;
/// Storage could not be reached.
pub const BACKEND: i32 = 5;

pub fn code_for(e: &anyhow::Error) -> i32 {
    if let Some(s) = e.downcast_ref::<Error>() {
        return for_kind(s.kind);
    }
    if e.downcast_ref::<PlanError>().is_some() {
        return USAGE;
    }
    FAILED
}

/// The exit code for a kind of storage/engine failure.
pub fn for_kind(kind: Kind) -> i32 {
    match kind {
        Kind::Input => USAGE,
        Kind::Locked => LOCKED,
        Kind::Key => KEY,
        Kind::Backend => BACKEND,
        _ => FAILED,
    }
}
