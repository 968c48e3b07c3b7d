//! `lifeboat switchover SERVICE --to SITE`: a planned role swap without data loss (see
//! crates/engine/src/switchover.rs). When `lifeboat serve` runs with this state directory the
//! daemon carries it out (it owns the traffic endpoint); otherwise this command does.

use std::time::Duration;

use lifeboat_engine::control::{Control, Request};
use lifeboat_engine::coord::StateFile;
use lifeboat_engine::daemon::{run_switchover, Watched};
use lifeboat_engine::switchover::{Report, Step};

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

fn print_step(s: &Step) {
    println!("  {:<15} {:>6} ms  {}", s.step, s.ms, s.detail);
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let Some(w) = Watched::from_plan(&ctx, &a.service)? else {
        anyhow::bail!("`{}` is not a postgres service of the plan", a.service);
    };
    let timeout = a.timeout.std();
    let control = Control::new(&ctx.state_dir);
    let report: Report = if control.daemon_running() {
        let req = Request {
            timeout_ms: timeout.as_millis() as u64,
            ..Request::new("switchover", Some(a.to.clone()), &ctx.actor)
        };
        control.submit(&a.service, &req)?;
        let id = req.id;
        if !cli.json {
            println!(
                "switchover of {} to {}: handed to the running daemon",
                a.service, a.to
            );
        }
        let answer = control.wait(&a.service, &id, timeout * 2 + Duration::from_secs(120))?;
        if let Some(e) = answer["error"].as_str() {
            let mut err = lifeboat_store::StoreError::new(lifeboat_store::Kind::Source, e);
            if let Some(h) = answer["hint"].as_str() {
                err = err.hint(h);
            }
            return Err(err.into());
        }
        let report: Report = serde_json::from_value(answer["report"].clone())?;
        if !cli.json {
            report.steps.iter().for_each(print_step);
        }
        report
    } else {
        if !cli.json {
            println!(
                "switchover of {} to {} (no daemon runs: done here)",
                a.service, a.to
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = StateFile::new(&ctx.state_dir, &a.service);
        let quiet = cli.json;
        rt.block_on(run_switchover(
            &w,
            &state,
            None,
            &a.to,
            timeout,
            &ctx,
            &move |s| {
                if !quiet {
                    print_step(s)
                }
            },
        ))?
    };
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
