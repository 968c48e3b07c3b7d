//! `lifeboat restore SNAPSHOT --target DIR`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id (a unique prefix), or `latest`.
    snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long)]
    target: PathBuf,
    /// Repository (default: the plan's only one).
    #[arg(long)]
    repo: Option<String>,
    /// With `latest`: the latest snapshot of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only this file or directory of the snapshot, as it was backed up (`/etc/app/app.conf`):
    /// a file is restored as DIR/NAME, a directory's contents into DIR.
    #[arg(long)]
    path: Option<String>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let repo = a.repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
    let r = lifeboat_engine::ops::restore(
        &ctx,
        &repo,
        &a.snapshot,
        a.job.as_deref(),
        a.path.as_deref(),
        &a.target,
    )?;
    if cli.json {
        crate::output::json(&r);
    } else {
        println!(
            "restored snapshot {} into {}: {} files, {}",
            &r.snapshot[..8],
            r.target,
            r.files,
            crate::output::bytes(r.bytes)
        );
    }
    Ok(0)
}
