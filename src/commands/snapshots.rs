//! `lifeboat snapshots`.

#[derive(clap::Args)]
pub struct Args {
    /// Repository (default: the plan's only one).
    #[arg(long)]
    repo: Option<String>,
    /// Only this job's snapshots.
    #[arg(long)]
    job: Option<String>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let repo = a.repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
    let store = ctx.open_repo(&repo)?;
    let snaps: Vec<_> = store
        .snapshots()?
        .into_iter()
        .filter(|s| a.job.is_none() || s.job == a.job)
        .collect();
    if cli.json {
        crate::output::json(&snaps);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.short_id.clone(),
                s.time
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " "),
                s.job.clone().unwrap_or_default(),
                s.service.clone().unwrap_or_default(),
                s.kind.clone().unwrap_or_default(),
                s.files.to_string(),
                crate::output::bytes(s.bytes),
                s.paths.join(","),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "ID", "TIME", "JOB", "SERVICE", "KIND", "FILES", "SIZE", "PATHS",
        ],
        &rows,
    );
    println!("{} snapshot(s) in repository {repo}", snaps.len());
    Ok(0)
}
