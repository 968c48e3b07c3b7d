//! `lifeboat restore SNAPSHOT --target DIR`, and point-in-time recovery of a postgres service:
//! `lifeboat restore SERVICE --to "2026-11-20 14:03:00+00" --target DIR [--start PORT]`.

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_protect::pitr::{RestoreOpts, Target};

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id (a unique prefix) or `latest`; or a postgres service name for
    /// point-in-time recovery.
    snapshot: String,
    /// Directory to restore into (created if missing; must be empty unless --force).
    #[arg(long, required_unless_present = "from_replica")]
    target: Option<PathBuf>,
    /// A bucket service: copy back from its replica the objects its source lost (missing at
    /// the source; with --force also those whose content differs there).
    #[arg(long, conflicts_with_all = ["target", "to", "to_lsn", "to_name", "latest", "start"])]
    from_replica: bool,
    /// Repository (default: the plan's only one). PostgreSQL: restore from this one (a
    /// cross-region copy: its base backups and the WAL copied there) instead of the one the
    /// service archives into.
    #[arg(long)]
    repo: Option<String>,
    /// With `latest`: the latest snapshot of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only this file or directory of the snapshot, as it was backed up (`/etc/app/app.conf`):
    /// a file is restored as DIR/NAME, a directory's contents into DIR.
    #[arg(long)]
    path: Option<String>,
    /// PostgreSQL: recover to this time (with a UTC offset: "2026-11-20 14:03:00+00").
    #[arg(long, conflicts_with_all = ["to_lsn", "to_name", "latest"])]
    to: Option<String>,
    /// PostgreSQL: recover to this WAL location (`0/3000148`).
    #[arg(long, conflicts_with_all = ["to_name", "latest"])]
    to_lsn: Option<String>,
    /// PostgreSQL: recover to a restore point made with pg_create_restore_point().
    #[arg(long, conflicts_with = "latest")]
    to_name: Option<String>,
    /// PostgreSQL: recover everything the archive holds.
    #[arg(long)]
    latest: bool,
    /// PostgreSQL: start the restored server on this port and wait until it accepts writes.
    #[arg(long, value_name = "PORT")]
    start: Option<u16>,
    /// Replace the contents of a non-empty target directory.
    #[arg(long)]
    force: bool,
    /// When running as root: the user to own the restored data directory.
    #[arg(long)]
    owner: Option<String>,
    /// How long to wait for recovery with --start (seconds).
    #[arg(long, default_value_t = 3600)]
    wait_timeout: u64,
}

fn pitr_target(a: &Args) -> anyhow::Result<Target> {
    Ok(if let Some(t) = &a.to {
        let micros = lifeboat_protect::pitr::parse_pg_time(t).ok_or_else(|| {
            anyhow::Error::new(lifeboat_core::Error::new(
                lifeboat_core::Kind::Input,
                format!(
                    "--to `{t}` is not a time with a UTC offset (e.g. \"2026-11-20 14:03:00+00\")"
                ),
            ))
        })?;
        Target::Time(micros)
    } else if let Some(l) = &a.to_lsn {
        l.parse::<lifeboat_core::wal::Lsn>()
            .map_err(|e| lifeboat_core::Error::new(lifeboat_core::Kind::Input, e))?;
        Target::Lsn(l.clone())
    } else if let Some(n) = &a.to_name {
        Target::Name(n.clone())
    } else {
        Target::Latest
    })
}

/// `restore BUCKET --from-replica [--force]`.
fn from_replica(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let Some(r) = lifeboat_protect::bucket::Replicated::from_plan(&ctx, &a.snapshot) else {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!("`{}` is not a bucket service of the plan (--from-replica restores a bucket from its replica)", a.snapshot),
        ));
    };
    let started = std::time::Instant::now();
    let out = lifeboat_protect::bucket::restore_from_replica(&r, a.force);
    let figures = match &out {
        Ok(o) => serde_json::to_value(o).unwrap_or_default(),
        Err(e) => serde_json::json!({"error": e.message}),
    };
    ctx.record(
        "restore",
        &r.service,
        if out.is_ok() { "ok" } else { "failed" },
        started,
        figures,
    )?;
    let o = out?;
    if cli.json {
        crate::output::json(&o);
        return Ok(0);
    }
    println!(
        "{}: copied {} object(s), {} from the replica back to the source",
        r.service,
        o.copied,
        crate::output::bytes(o.copied_bytes)
    );
    if !o.left_differing.is_empty() {
        println!(
            "  {} object(s) differ at the source and were left as they are (--force replaces them): {}",
            o.left_differing.len(),
            o.left_differing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(0)
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    if a.from_replica {
        return from_replica(cli, a);
    }
    let target = a
        .target
        .clone()
        .expect("clap requires --target without --from-replica");
    let ctx = super::context(cli)?;
    let is_pg = matches!(
        ctx.plan.services.get(&a.snapshot),
        Some(lifeboat_core::plan::Service::Postgres { .. })
    );
    let pitr_flags = a.to.is_some()
        || a.to_lsn.is_some()
        || a.to_name.is_some()
        || a.latest
        || a.start.is_some();
    if is_pg {
        if a.start.is_some() {
            lifeboat_protect::pitr::install_teardown_on_signal();
        }
        let o = RestoreOpts {
            target: pitr_target(a)?,
            dest: std::path::absolute(&target)?,
            force: a.force,
            start: a.start,
            owner: a.owner.clone(),
            wait_timeout: Duration::from_secs(a.wait_timeout),
            repository: a.repo.clone(),
        };
        let r = lifeboat_protect::pitr::restore(&ctx, &a.snapshot, &o)?;
        if cli.json {
            crate::output::json(&r);
            return Ok(0);
        }
        for w in &r.warnings {
            println!("warning: {w}");
        }
        println!(
            "restored base backup {} of {} into {} ({} files, {})",
            &r.snapshot[..8],
            r.service,
            r.dest,
            r.files,
            crate::output::bytes(r.bytes)
        );
        match &r.reached {
            Some(reached) => {
                println!(
                    "recovered and promoted on port {}: accepts writes ({:.1}s)",
                    r.port.unwrap_or_default(),
                    r.duration_ms as f64 / 1000.0
                );
                if let Some(l) = &reached.stop_line {
                    println!("  {l}");
                }
                println!(
                    "  reached: LSN {}, last transaction at {}",
                    reached.lsn.as_deref().unwrap_or("?"),
                    reached
                        .last_xact_time
                        .map(lifeboat_protect::wal::fmt_micros)
                        .unwrap_or_else(|| "?".into())
                );
            }
            None => println!(
                "recovery is configured (recovery.signal, postgresql.auto.conf): start the server to replay WAL to the target; it promotes itself there"
            ),
        }
        return Ok(0);
    }
    if pitr_flags {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!(
                "`{}` is not a postgres service: --to/--to-lsn/--to-name/--latest/--start need one",
                a.snapshot
            ),
        ));
    }
    let repo = a.repo.clone().map_or_else(|| ctx.default_repo(), Ok)?;
    let r = lifeboat_protect::ops::restore(
        &ctx,
        &repo,
        &a.snapshot,
        a.job.as_deref(),
        a.path.as_deref(),
        &target,
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
