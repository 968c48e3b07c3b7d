//! `lifeboat repo init | copy | locks | unlock`.

use lifeboat_protect::ops;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create the named repository (default: every repository in the plan that does not exist).
    Init { name: Option<String> },
    /// Copy this plan's snapshots to another repository, uploading only what it lacks.
    Copy {
        /// Source repository (default: the plan's only repository).
        #[arg(long)]
        from: Option<String>,
        /// Destination repository.
        #[arg(long)]
        to: String,
    },
    /// Check a repository's integrity (structure; with --read-data every blob), naming damaged
    /// snapshots.
    Check {
        #[arg(long)]
        repo: Option<String>,
        /// Read all data back: decrypt and check every blob.
        #[arg(long)]
        read_data: bool,
        /// Read a subset: `10%`, `1/5`, or a size like `500MiB`.
        #[arg(long, value_name = "SUBSET")]
        read_data_subset: Option<String>,
    },
    /// List locks in a repository.
    Locks {
        #[arg(long)]
        repo: Option<String>,
    },
    /// Remove stale locks (dead processes); `--all` removes every lock.
    Unlock {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub fn run(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    match c {
        Cmd::Init { name } => {
            let names: Vec<String> = match name {
                Some(n) => vec![n.clone()],
                None => ctx.plan.repositories.keys().cloned().collect(),
            };
            let mut created = Vec::new();
            for n in names {
                if name.is_none() && lifeboat_store::repo::exists(&ctx.repo_spec(&n)?)? {
                    if !cli.json {
                        println!("repository {n}: already exists");
                    }
                    continue;
                }
                let url = ops::init_repo(&ctx, &n)?;
                if !cli.json {
                    println!("repository {n}: created at {url} (restic format v2, zstd)");
                }
                created.push(serde_json::json!({"name": n, "url": url}));
            }
            if cli.json {
                crate::output::json(&serde_json::json!({"created": created}));
            }
            Ok(0)
        }
        Cmd::Copy { from, to } => {
            let from = match from {
                Some(f) => f.clone(),
                None => ctx
                    .plan
                    .repositories
                    .keys()
                    .find(|k| *k != to)
                    .cloned()
                    .filter(|_| ctx.plan.repositories.len() == 2)
                    .ok_or_else(|| anyhow::anyhow!("name the source repository with --from"))?,
            };
            let r = ops::copy(&ctx, &from, to)?;
            if cli.json {
                crate::output::json(&r);
            } else {
                println!(
                    "copied {} snapshot(s) from {} to {} ({} already there), uploaded {}",
                    r.copied,
                    r.from,
                    r.to,
                    r.already_there,
                    crate::output::bytes(r.bytes_uploaded)
                );
                if r.wal.copied + r.wal.already_there > 0 {
                    println!(
                        "copied {} WAL file(s) ({} already there), {}",
                        r.wal.copied,
                        r.wal.already_there,
                        crate::output::bytes(r.wal.bytes)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Check {
            repo,
            read_data,
            read_data_subset,
        } => {
            let repo = repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
            let r = ops::check(&ctx, &repo, *read_data, read_data_subset.as_deref())?;
            if cli.json {
                crate::output::json(&r);
            } else {
                for e in &r.errors {
                    println!("ERROR  {e}");
                }
                for w in &r.warnings {
                    println!("warn   {w}");
                }
                for (id, job) in &r.damaged_snapshots {
                    println!(
                        "DAMAGED snapshot {} (job {})",
                        &id[..8],
                        job.as_deref().unwrap_or("-")
                    );
                }
                if r.errors.is_empty() {
                    println!("repository {repo}: no errors found");
                }
            }
            Ok(if r.errors.is_empty() {
                0
            } else {
                crate::exit::FAILED
            })
        }
        Cmd::Locks { repo } => {
            let repo = repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
            let store = ctx.open_repo(&repo)?;
            let locks = store.locks()?;
            if cli.json {
                crate::output::json(&locks);
            } else if locks.is_empty() {
                println!("repository {repo}: no locks");
            } else {
                for l in &locks {
                    match &l.stale {
                        Some(why) => println!(
                            "{} — STALE: {why}; `lifeboat repo unlock --repo {repo}` removes it",
                            l.describe()
                        ),
                        None => println!("{}", l.describe()),
                    }
                }
            }
            Ok(0)
        }
        Cmd::Unlock { repo, all } => {
            let repo = repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
            let store = ctx.open_repo(&repo)?;
            let removed = ops::unlock(&ctx, &store, *all)?;
            if cli.json {
                crate::output::json(&removed);
            } else {
                println!("repository {repo}: removed {} lock(s)", removed.len());
                for l in &removed {
                    println!("  {}", l.describe());
                }
            }
            Ok(0)
        }
    }
}
