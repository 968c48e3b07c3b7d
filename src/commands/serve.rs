//! `lifeboat serve`: the daemon. Watches every postgres service with `failover:`, fails it over
//! when its primary fails (see crates/engine/src/daemon.rs), and serves its traffic endpoint.
//! Structured events (JSON lines) go to stderr; failovers and fences to the evidence log.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(cli: &crate::Cli, _a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    lifeboat_server::serve(&ctx)?;
    Ok(0)
}
