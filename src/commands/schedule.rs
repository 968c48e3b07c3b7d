//! `lifeboat schedule`: every schedule in the plan (backup jobs, drills, `schedules:`), what
//! it runs, its time zone, its last run (outcome, duration) and its next one;
//! `lifeboat schedule pause ID` / `resume ID` stop and restart one (the daemon reads it before
//! each instant).

use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Pause a schedule (`backups.NAME`, `drills.NAME`, `schedules.NAME`): its instants pass
    /// without a run until it is resumed; a run under way goes on.
    Pause {
        id: String,
        /// Why, shown to others.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused schedule from its next instant.
    Resume { id: String },
}

fn pause_or_resume(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let (id, pause) = match c {
        Cmd::Pause { id, reason } => (
            id,
            Some(lifeboat_server::schedule::Pause {
                by: ctx.actor.clone(),
                since: jiff::Timestamp::now(),
                reason: reason.clone(),
            }),
        ),
        Cmd::Resume { id } => (id, None),
    };
    let entries = lifeboat_server::schedule::entries(&ctx.plan);
    if !entries.iter().any(|e| &e.id == id) {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!("no schedule `{id}` in the plan"),
        )
        .hint(format!(
            "the plan's schedules: {}",
            entries
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let verb = if pause.is_some() { "pause" } else { "resume" };
    let changed = lifeboat_server::schedule::set_paused(&ctx.state_dir, id, pause)?;
    if changed {
        ctx.record(
            &format!("schedule {verb}"),
            id,
            "ok",
            std::time::Instant::now(),
            serde_json::json!({}),
        )?;
    }
    if cli.json {
        crate::output::json(
            &serde_json::json!({"id": id, "paused": verb == "pause", "changed": changed}),
        );
    } else if changed {
        println!("{id}: {verb}d");
    } else {
        println!("{id}: already {verb}d");
    }
    Ok(0)
}

/// A scheduled instant this long past without a run counts as overdue.
pub const GRACE: Duration = Duration::from_secs(120);

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    if let Some(c) = &a.cmd {
        return pause_or_resume(cli, c);
    }
    let ctx = super::context(cli)?;
    let views =
        lifeboat_server::schedule::views(&ctx.plan, &ctx.state_dir, jiff::Timestamp::now(), GRACE);
    if cli.json {
        crate::output::json(&views);
        return Ok(0);
    }
    if views.is_empty() {
        println!("no schedules in the plan (give a backup job or a drill a `schedule`, or add `schedules:`)");
        return Ok(0);
    }
    let when = |t: &Option<jiff::Timestamp>| {
        t.map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let last = if v.running {
                "running".to_string()
            } else {
                match (&v.record.last_outcome, v.record.last_end) {
                    (Some(o), end) => format!(
                        "{o} {}{}",
                        when(&end),
                        v.record
                            .last_duration_ms
                            .map(|d| format!(" ({:.1} s)", d as f64 / 1000.0))
                            .unwrap_or_default()
                    ),
                    (None, _) => "never".into(),
                }
            };
            let mut next = when(&v.next);
            if let Some(o) = v.overdue_since {
                next = format!("OVERDUE since {}", when(&Some(o)));
            }
            if let Some(p) = &v.paused {
                next = format!("PAUSED by {} since {}", p.by, when(&Some(p.since)));
            }
            vec![
                v.id.clone(),
                format!("{} ({})", v.cron, v.time_zone),
                v.what.trim_start_matches("lifeboat ").to_string(),
                last,
                next,
            ]
        })
        .collect();
    crate::output::table(&["SCHEDULE", "WHEN", "RUNS", "LAST", "NEXT"], &rows);
    let skipped: u64 = views.iter().map(|v| v.record.skipped_overlap).sum();
    let missed: u64 = views.iter().map(|v| v.record.missed).sum();
    if skipped + missed > 0 {
        println!("{skipped} run(s) skipped because the previous one still ran; {missed} missed while the daemon was down");
    }
    if views.iter().all(|v| v.record.last_due.is_none()) {
        println!("the daemon (`lifeboat serve`) has not run these schedules yet");
    }
    Ok(0)
}
