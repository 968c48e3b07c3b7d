//! `lifeboat forget [--dry-run]`.

#[derive(clap::Args)]
pub struct Args {
    /// Show what would be removed and why; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repository (default: every repository of the plan).
    #[arg(long)]
    repo: Option<String>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let repos: Vec<String> = match &a.repo {
        Some(r) => vec![r.clone()],
        None => ctx.plan.repositories.keys().cloned().collect(),
    };
    let mut reports = Vec::new();
    for repo in repos {
        let r = lifeboat_protect::ops::forget(&ctx, &repo, a.dry_run)?;
        if !cli.json {
            for (job, verdicts) in &r.jobs {
                for v in verdicts {
                    println!(
                        "{} {job} {}  {}",
                        if v.keep {
                            "keep  "
                        } else {
                            if a.dry_run {
                                "would remove"
                            } else {
                                "remove"
                            }
                        },
                        &v.id[..8],
                        v.reasons.join(", ")
                    );
                }
            }
            for (svc, names) in &r.wal_removed {
                println!(
                    "{} {} WAL file(s) of {svc} no retained base backup needs ({} .. {})",
                    if r.dry_run { "would remove" } else { "removed" },
                    names.len(),
                    names.first().map(String::as_str).unwrap_or(""),
                    names.last().map(String::as_str).unwrap_or("")
                );
            }
            if r.dry_run {
                let n: usize = r.jobs.values().flatten().filter(|v| !v.keep).count();
                println!("repository {repo}: dry run — {n} snapshot(s) would be removed, {} without a policy kept", r.untouched);
            } else {
                println!(
                    "repository {repo}: removed {} snapshot(s), pruned {} pack(s), freed {}",
                    r.removed,
                    r.packs_removed,
                    crate::output::bytes(r.bytes_freed)
                );
            }
        }
        reports.push(r);
    }
    if cli.json {
        crate::output::json(&reports);
    }
    Ok(0)
}
