//! `lifeboat runbook list | show NAME | run NAME [--yes]`: the plan's ordered procedures (see
//! crates/engine/src/runbook.rs). `show` prints the order a run takes: barriers alone, services
//! by dependency level, services of one level in parallel.

use std::io::{BufRead, IsTerminal, Write};

use lifeboat_core::plan::Runbook;
use lifeboat_runbook::{order, run_runbook, Options, Phase, StepResult};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// The plan's runbooks.
    List,
    /// The order a run takes.
    Show { name: String },
    /// Run it: every step timed and recorded; approval gates ask (or `--yes`).
    Run {
        name: String,
        /// Approve every gate (automation).
        #[arg(long)]
        yes: bool,
    },
}

fn describe(st: &lifeboat_core::plan::RunbookStep) -> String {
    let what = st
        .action
        .clone()
        .map(|a| match (&st.site, &st.job) {
            (Some(s), _) => format!("{a} {s}"),
            (_, Some(j)) => format!("{a} {j}"),
            _ => a,
        })
        .or_else(|| st.command.as_ref().map(|c| format!("command `{c}`")))
        .or_else(|| st.webhook.as_ref().map(|w| format!("webhook {w}")))
        .unwrap_or_default();
    let mut extra = Vec::new();
    if let Some(t) = st.timeout {
        extra.push(format!("timeout {t}"));
    }
    if let Some(r) = st.retries {
        extra.push(format!("retries {r}"));
    }
    if st.on_failure.as_deref() == Some("continue") {
        extra.push("on failure continue".into());
    }
    if st.approval == Some(true) {
        extra.push("APPROVAL".into());
    }
    match (&st.name, extra.is_empty()) {
        (Some(n), true) => format!("{n}: {what}"),
        (Some(n), false) => format!("{n}: {what} ({})", extra.join(", ")),
        (None, true) => what,
        (None, false) => format!("{what} ({})", extra.join(", ")),
    }
}

pub fn run_cmd(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    match c {
        Cmd::List => {
            if cli.json {
                crate::output::json(&ctx.plan.runbooks);
                return Ok(0);
            }
            if ctx.plan.runbooks.is_empty() {
                println!("no runbooks in the plan");
            }
            for (n, rb) in &ctx.plan.runbooks {
                println!(
                    "{n:<24} {:<12} {:<10} {} step(s)",
                    rb.kind.as_deref().unwrap_or("manual"),
                    rb.service.as_deref().unwrap_or("-"),
                    rb.steps.len()
                );
            }
            Ok(0)
        }
        Cmd::Show { name } => {
            let rb = ctx
                .plan
                .runbooks
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no runbook `{name}` in the plan"))?;
            let mut rb2 = rb.clone();
            for st in rb2.steps.iter_mut() {
                if st.service.is_none() && st.action.as_deref() != Some("notify") {
                    st.service = rb.service.clone();
                }
            }
            println!(
                "runbook {name} ({})",
                rb.kind.as_deref().unwrap_or("manual")
            );
            let mut n = 0;
            for phase in order(&ctx.plan.services, &rb2) {
                match phase {
                    Phase::Barrier(i) => {
                        n += 1;
                        println!("{n}. {}", describe(&rb2.steps[i]));
                    }
                    Phase::Levels(levels) => {
                        for level in levels {
                            n += 1;
                            let par = if level.len() > 1 {
                                " (in parallel)"
                            } else {
                                ""
                            };
                            println!(
                                "{n}. services {}{par}:",
                                level
                                    .iter()
                                    .map(|(s, _)| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            );
                            for (s, idxs) in level {
                                for i in idxs {
                                    println!("     {s}: {}", describe(&rb2.steps[i]));
                                }
                            }
                        }
                    }
                }
            }
            Ok(0)
        }
        Cmd::Run { name, yes } => {
            let Some(rb) = ctx.plan.runbooks.get(name) else {
                anyhow::bail!("no runbook `{name}` in the plan");
            };
            execute(cli, &ctx, name, rb, *yes, Vec::new())
        }
    }
}

/// Run `rb` under `name`, printing each step as it ends; 0 when every step passed.
pub fn execute(
    cli: &crate::Cli,
    ctx: &lifeboat_context::Context,
    name: &str,
    rb: &Runbook,
    yes: bool,
    env: Vec<(String, String)>,
) -> anyhow::Result<i32> {
    let quiet = cli.json;
    let opts = Options {
        yes,
        approve: Box::new(|prompt: &str| {
            if !std::io::stdin().is_terminal() {
                eprintln!("{prompt} refused: no terminal to ask (pass --yes to approve)");
                return false;
            }
            print!("{prompt} type yes: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            line.trim() == "yes"
        }),
        progress: Box::new(move |r: &StepResult| {
            if !quiet {
                println!(
                    "  {:<8} {:>7} ms  {}{}{}",
                    r.outcome,
                    r.ms,
                    r.service
                        .as_deref()
                        .map(|s| format!("[{s}] "))
                        .unwrap_or_default(),
                    r.step,
                    if r.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", r.detail)
                    }
                );
            }
        }),
        after_failover: false,
        done: Vec::new(),
        env,
        actions: std::sync::Arc::new(lifeboat_failover::actions::Builtins),
    };
    if !quiet {
        println!("runbook {name}:");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_runbook(ctx, name, rb, opts));
    if cli.json {
        crate::output::json(&report);
    } else {
        println!("runbook {name}: {} in {} ms", report.outcome, report.ms);
    }
    Ok(if report.outcome == "ok" { 0 } else { 1 })
}
