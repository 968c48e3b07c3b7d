//! `lifeboat backup [JOB]`.

use lifeboat_protect::backup::{run_job_with, select_jobs};

#[derive(clap::Args)]
pub struct Args {
    /// The job to run (default: every job in the plan).
    job: Option<String>,
    /// Read every file again instead of taking files unchanged since the previous snapshot
    /// from it (a full backup; deduplication still stores only what changed).
    #[arg(long)]
    full: bool,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let jobs = select_jobs(&ctx, a.job.as_deref());
    if jobs.is_empty() {
        anyhow::bail!("the plan has no backup jobs");
    }
    let mut outcomes = Vec::new();
    let mut worst = 0;
    for job in jobs {
        let o = run_job_with(&ctx, &job, a.full);
        if !o.ok {
            worst = worst.max(
                o.error_kind
                    .map_or(crate::exit::FAILED, crate::exit::for_kind),
            );
        }
        if !cli.json {
            for s in &o.stale_locks {
                eprintln!("warning: stale lock ignored: {s}; `lifeboat repo unlock` removes it");
            }
            for s in &o.stale_locks_removed {
                eprintln!("removed an abandoned lock: {s}");
            }
            match (&o.summary, &o.error) {
                (Some(s), _) => println!(
                    "{}: snapshot {} — {} files, {} read, {} added ({} stored), {:.1}s",
                    o.job,
                    &s.snapshot[..8],
                    s.files,
                    crate::output::bytes(s.bytes_read),
                    crate::output::bytes(s.bytes_added),
                    crate::output::bytes(s.bytes_added_packed),
                    o.duration_ms as f64 / 1000.0
                ),
                (None, Some(e)) => eprintln!("{}: FAILED: {e}", o.job),
                _ => {}
            }
            if let Some(s) = &o.summary {
                if let Some(v) = &s.via {
                    println!("{}: {v}", o.job);
                }
                for p in &s.changed_while_read {
                    eprintln!("warning: {p} changed while it was read: stored as read; the next backup takes it again");
                }
                for p in &s.vanished {
                    eprintln!(
                        "warning: {p} was deleted before it could be read: not in this snapshot"
                    );
                }
            }
            for c in &o.copies {
                match &c.error {
                    None if c.wal_files > 0 => println!(
                        "{}: copied to {} with {} WAL file(s) ({} uploaded)",
                        o.job,
                        c.repository,
                        c.wal_files,
                        crate::output::bytes(c.bytes_uploaded)
                    ),
                    None => println!(
                        "{}: copied to {} ({} uploaded)",
                        o.job,
                        c.repository,
                        crate::output::bytes(c.bytes_uploaded)
                    ),
                    Some(e) => eprintln!("{}: copy to {} FAILED: {e}", o.job, c.repository),
                }
            }
        }
        outcomes.push(o);
    }
    if cli.json {
        let out: Vec<_> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "job": o.job, "ok": o.ok, "error": o.error, "repository": o.repository,
                    "snapshot": o.summary.as_ref().map(|s| s.snapshot.clone()),
                    "files": o.summary.as_ref().map(|s| s.files),
                    "bytes_read": o.summary.as_ref().map(|s| s.bytes_read),
                    "bytes_added": o.summary.as_ref().map(|s| s.bytes_added),
                    "bytes_stored": o.summary.as_ref().map(|s| s.bytes_added_packed),
                    "files_unchanged": o.summary.as_ref().map(|s| s.files_unchanged),
                    "changed_while_read": o.summary.as_ref().map(|s| &s.changed_while_read),
                    "vanished": o.summary.as_ref().map(|s| &s.vanished),
                    "via": o.summary.as_ref().and_then(|s| s.via.as_ref()),
                    "duration_s": o.duration_ms as f64 / 1000.0,
                    "copies": o.copies,
                })
            })
            .collect();
        crate::output::json(&out);
    }
    Ok(worst)
}
