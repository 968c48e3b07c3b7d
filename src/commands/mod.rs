//! One file per subcommand.

pub mod audit;
pub mod backup;
pub mod demo;
pub mod failover;
pub mod forget;
pub mod init;
pub mod plan;
pub mod rejoin;
pub mod repo;
pub mod restore;
pub mod runbook;
pub mod serve;
pub mod snapshots;
pub mod status;
pub mod switchover;
pub mod verify;
pub mod wal;

use lifeboat_engine::Context;

/// Load the plan named by `--plan`.
pub fn context(cli: &crate::Cli) -> anyhow::Result<Context> {
    Ok(Context::load(&cli.plan)?)
}
