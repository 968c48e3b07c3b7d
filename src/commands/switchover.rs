//! `lifeboat switchover SERVICE --to SITE`: a planned role swap without data loss (see
//! crates/engine/src/switchover.rs). When `lifeboat serve` runs with this state directory the
//! daemon carries it out (it owns the traffic endpoint); otherwise this command does.

use std::time::Duration;

use lifeboat_core::plan::Severity;
use lifeboat_failover::control::Control;
use lifeboat_failover::coord::StateFile;
use lifeboat_failover::switchover::{Report, Step};
use lifeboat_failover::{switchover::run_switchover, world::Watched};

#[derive(clap::Args)]
pub struct Args {
    /// The postgres service.
    service: String,
    /// The site whose standby becomes the primary.
    #[arg(long)]
    to: String,
    /// How long the target may take to replay the primary's last WAL before the switchover is
    /// called off (and writes go back to the old primary).
    #[arg(long, default_value = "30s")]
    timeout: lifeboat_core::units::Duration,
}

pub fn print_step(s: &Step) {
    println!("  {:<15} {:>6} ms  {}", s.step, s.ms, s.detail);
}

/// The switchover of `w` to `to`: handed to the running daemon when there is one (it owns the
/// traffic endpoint and would otherwise see the primary stop and act on it), done here
/// otherwise, with notifications sent from here.
pub fn perform(
    cli: &crate::Cli,
    ctx: &lifeboat_context::Context,
    w: &Watched,
    rt: &tokio::runtime::Runtime,
    to: &str,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let control = Control::new(&ctx.state_dir);
    if control.daemon_running() {
        if !cli.json {
            println!(
                "switchover of {} to {to}: handed to the running daemon",
                w.service
            );
        }
        let report = control.switchover(&w.service, to, timeout, &ctx.actor)?;
        if !cli.json {
            report.steps.iter().for_each(print_step);
        }
        return Ok(report);
    }
    if !cli.json {
        println!(
            "switchover of {} to {to} (no daemon runs: done here)",
            w.service
        );
    }
    let notes = super::Notes::start(ctx, rt, &w.service);
    let state = StateFile::new(&ctx.state_dir, &w.service);
    let quiet = cli.json;
    let r = rt.block_on(run_switchover(
        w,
        &state,
        None,
        to,
        timeout,
        ctx,
        &move |s| {
            if !quiet {
                print_step(s)
            }
        },
    ));
    let (severity, summary) = match &r {
        Ok(rep) => match &rep.aborted {
            Some(why) => (
                Severity::P2,
                format!("switchover to {to} by {} ABORTED: {why}", ctx.actor),
            ),
            None => (
                Severity::P3,
                format!(
                    "switchover {} → {to} by {}: done, writes stopped for {} ms",
                    rep.from,
                    ctx.actor,
                    rep.downtime_ms.unwrap_or(0)
                ),
            ),
        },
        Err(e) => (
            Severity::P2,
            format!("switchover to {to} by {} FAILED: {e}", ctx.actor),
        ),
    };
    let details = match &r {
        Ok(rep) => serde_json::to_value(rep).unwrap_or_default(),
        Err(e) => serde_json::json!({"to": to, "error": e.to_string()}),
    };
    notes.send(severity, "switchover", summary, details);
    notes.finish(rt);
    Ok(r?)
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let Some(w) = Watched::from_plan(&ctx, &a.service)? else {
        anyhow::bail!("`{}` is not a postgres service of the plan", a.service);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = perform(cli, &ctx, &w, &rt, &a.to, a.timeout.std())?;
    if cli.json {
        crate::output::json(&report);
    } else if let Some(why) = &report.aborted {
        println!("switchover ABORTED: {why}");
    } else {
        println!(
            "switchover done: {} → {}, epoch {}; writes stopped for {} ms; nothing lost (the target replayed {} — the old primary's final WAL); {}",
            report.from,
            report.to,
            report.epoch,
            report.downtime_ms.unwrap_or(0),
            report.final_lsn.as_deref().unwrap_or("?"),
            if report.old_primary_streaming {
                format!("{} now streams from {} as its standby", report.from, report.to)
            } else {
                format!("{} started as a standby but does not stream yet", report.from)
            }
        );
    }
    Ok(if report.aborted.is_some() { 1 } else { 0 })
}
