//! `lifeboat failover SERVICE [--to SITE] [--dry-run] [--force] [--yes]`: the manual
//! failover. Pre-checks (primary down, target healthy and caught up, backups recent, plan
//! valid), the steps, then — after the operator types the service name — the same failover
//! the daemon performs automatically (handed to `lifeboat serve` when it runs).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use lifeboat_core::decide::Action;
use lifeboat_core::plan::Severity;
use lifeboat_core::{Error, Kind};
use lifeboat_failover::control::{Control, Request};
use lifeboat_failover::coord::StateFile;
use lifeboat_failover::manual::{plan_failover, run_failover, FailoverPlan, Level, Overrides};
use lifeboat_failover::world::Watched;

#[derive(clap::Args)]
pub struct Args {
    /// The postgres service.
    pub(crate) service: String,
    /// The site to promote (default: the best eligible standby).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Show the pre-checks, the steps and the decision; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Fail over even though the primary is healthy (its clients are cut off; it is stopped).
    #[arg(long)]
    pub(crate) force: bool,
    /// Promote a standby that may lack acknowledged writes: not known to have been synchronous
    /// (sync tier), behind `max_lag_on_failover`, not streaming, or of unknown position. For
    /// when the primary is gone for good and waiting costs more than the loss; the pre-checks
    /// say what may be lost, and the evidence log records that it was accepted.
    #[arg(long)]
    pub(crate) accept_data_loss: bool,
    /// Do not ask for the typed confirmation (automation).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// What the person types after `prompt`; refused without a terminal.
pub(crate) fn typed(prompt: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::new(
            Kind::Input,
            "refusing to fail over without a typed confirmation: no terminal",
        )
        .hint("run it in a terminal, or pass --yes (automation)")
        .into());
    }
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn show(p: &FailoverPlan) {
    println!("pre-checks:");
    for c in &p.checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("  [{mark}] {}", c.what);
    }
    if !p.steps.is_empty() {
        println!("steps:");
        for (i, s) in p.steps.iter().enumerate() {
            println!("  {}. {s}", i + 1);
        }
    }
    println!("decision: {}", p.decision.reason);
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let Some(mut w) = Watched::from_plan(&ctx, &a.service)? else {
        anyhow::bail!("`{}` is not a postgres service of the plan", a.service);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = rt.block_on(lifeboat_failover::manual::check_once(&mut w));
    let state = StateFile::new(&ctx.state_dir, &a.service);
    let overrides = Overrides {
        force: a.force,
        accept_loss: a.accept_data_loss,
    };
    let plan = plan_failover(
        &ctx,
        &w,
        &counts,
        &state.load()?,
        a.to.as_deref(),
        overrides,
    );
    let go = matches!(plan.decision.action, Action::Failover { .. });
    if a.dry_run {
        if cli.json {
            crate::output::json(&plan);
        } else {
            show(&plan);
            println!("(dry run: nothing done)");
        }
        return Ok(if go { 0 } else { 1 });
    }
    if !cli.json {
        show(&plan);
    }
    let Action::Failover { to, .. } = plan.decision.action.clone() else {
        return Err(Error::new(Kind::Input, plan.decision.reason).into());
    };
    if !a.yes {
        let line = typed(&format!(
            "Type the service name ({}) to fail over to {to}: ",
            a.service
        ))?;
        if line.trim() != a.service {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "confirmation `{}` does not match `{}`: nothing done",
                    line.trim(),
                    a.service
                ),
            )
            .into());
        }
    }
    let control = Control::new(&ctx.state_dir);
    let done: FailoverPlan = if control.daemon_running() {
        let req = Request {
            force: a.force,
            accept_loss: a.accept_data_loss,
            ..Request::new("failover", Some(to.clone()), &ctx.actor)
        };
        control.submit(&a.service, &req)?;
        let id = req.id;
        let answer = control.wait(&a.service, &id, Duration::from_secs(180))?;
        if let Some(e) = answer["error"].as_str() {
            let mut err = Error::new(Kind::Source, format!("the daemon refused or failed: {e}"));
            err = err.hint(
                answer["hint"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!(
                            "`lifeboat status {}` shows what the daemon sees now",
                            a.service
                        )
                    }),
            );
            return Err(err.into());
        }
        let mut p = plan.clone();
        if let Some(r) = answer["plan"]["decision"]["reason"].as_str() {
            p.decision.reason = r.to_string();
        }
        p
    } else {
        let (route, _rx) = tokio::sync::watch::channel(lifeboat_failover::traffic::Route {
            epoch: 0,
            target: None,
        });
        let notes = super::Notes::start(&ctx, &rt, &a.service);
        notes.send(
            Severity::P1,
            "failover",
            format!("manual failover to {to} by {}: starting", ctx.actor),
            serde_json::to_value(&plan).unwrap_or_default(),
        );
        let r = rt.block_on(run_failover(
            &ctx,
            &w,
            &state,
            &route,
            &counts,
            Some(&to),
            overrides,
        ));
        match &r {
            Ok(done) => notes.send(
                Severity::P1,
                "failover",
                format!(
                    "manual failover to {to} by {}: done, {to} takes writes",
                    ctx.actor
                ),
                serde_json::to_value(done).unwrap_or_default(),
            ),
            Err(e) => notes.send(
                Severity::P1,
                "failover",
                format!("manual failover to {to} by {} FAILED: {e}", ctx.actor),
                serde_json::json!({"to": to, "error": e.to_string()}),
            ),
        }
        notes.finish(&rt);
        r?
    };
    if cli.json {
        crate::output::json(&done);
    } else {
        println!("failover done: {} now takes writes", to);
    }
    Ok(0)
}
