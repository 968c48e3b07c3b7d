//! `lifeboat drill list | show NAME | run NAME|SCENARIO [--yes] | heal`: disasters injected
//! under a workload and measured against the plan's objectives.

use std::io::{BufRead, IsTerminal, Write};

use lifeboat_drill::run::{self, RunOpts};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// The plan's drills.
    List,
    /// What a drill does and what it is measured against.
    Show {
        /// A drill of the plan, or a scenario name.
        name: String,
    },
    /// Run a drill of the plan, or a scenario with its defaults against the plan's postgres
    /// service: kill-primary, hang-primary, partition-site (root), switchover, corrupt-data,
    /// lose-region (labs), restore-only.
    Run {
        /// A drill of the plan (`drill list`), or a scenario name.
        name: String,
        /// Confirm a disruptive drill against a plan that is not a lab (automation).
        #[arg(long)]
        yes: bool,
        /// Negative control: freeze the primary's WAL senders before the writes start, so
        /// nothing written reaches a standby: an async tier loses those writes at the fault,
        /// and the drill must count each one.
        #[arg(long)]
        freeze_replication: bool,
        /// Where to write the reports (default: the state directory's drill/reports).
        #[arg(long)]
        report_dir: Option<std::path::PathBuf>,
        /// Run it this many times, the fault's timing (and a partition's shape) drawn at
        /// random: p50, p95 and max of RTO, RPO and lost writes in one report.
        #[arg(long)]
        trials: Option<u32>,
        /// The seed of the random draws (printed, to replay a run). Default: random.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Undo whatever faults a drill that was killed left behind.
    Heal,
}

fn objectives_table(r: &lifeboat_drill::report::Report) {
    let rows: Vec<Vec<String>> = r
        .objectives
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.target.clone(),
                o.measured.clone(),
                if o.met { "met" } else { "BREACHED" }.into(),
            ]
        })
        .collect();
    crate::output::table(&["OBJECTIVE", "TARGET", "MEASURED", ""], &rows);
}

pub fn run_cmd(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    if matches!(c, Cmd::Run { .. }) {
        run::install_interrupt();
    }
    let ctx = super::context(cli)?;
    if matches!(c, Cmd::Run { .. } | Cmd::Heal) {
        lifeboat_drill::become_state_owner(&ctx)?;
    }
    match c {
        Cmd::List => {
            let rows: Vec<Vec<String>> = ctx
                .plan
                .drills
                .iter()
                .map(|(n, d)| {
                    vec![
                        n.clone(),
                        d.scenario.clone(),
                        d.service.clone(),
                        d.schedule
                            .as_ref()
                            .map(|s| s.cron().to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            if cli.json {
                crate::output::json(&ctx.plan.drills);
            } else if rows.is_empty() {
                println!(
                    "the plan has no drills (`lifeboat drill run SCENARIO` runs one with defaults)"
                );
            } else {
                crate::output::table(&["DRILL", "SCENARIO", "SERVICE", "SCHEDULE"], &rows);
            }
            Ok(0)
        }
        Cmd::Show { name } => {
            let (name, d) = run::resolve(&ctx, name)?;
            if cli.json {
                crate::output::json(&d);
                return Ok(0);
            }
            let tier = ctx
                .plan
                .services
                .get(&d.service)
                .map(|s| s.tier().to_string())
                .unwrap_or_default();
            let t = ctx.plan.tiers.get(&tier);
            let o = d.objectives.clone().unwrap_or_default();
            println!(
                "drill {name}: {} on {} (tier {tier})",
                d.scenario, d.service
            );
            println!(
                "  objectives: RPO {}, RTO {}{}",
                o.rpo
                    .or(t.map(|t| t.rpo))
                    .map(|d| d.to_string())
                    .unwrap_or("-".into()),
                o.rto
                    .or(t.map(|t| t.rto))
                    .map(|d| d.to_string())
                    .unwrap_or("-".into()),
                o.lost_writes
                    .map(|n| format!(", at most {n} lost writes"))
                    .unwrap_or_default()
            );
            let w = d.workload.clone().unwrap_or_default();
            println!(
                "  workload: {} writer(s), one new connection per write every {}, {} before the fault",
                w.writers.unwrap_or(2),
                w.interval.map(|d| d.to_string()).unwrap_or("20ms".into()),
                w.warmup.map(|d| d.to_string()).unwrap_or("2s".into())
            );
            for c in &d.steady_state {
                println!(
                    "  steady state ({}): {}",
                    if c.when.is_empty() {
                        "before, after".into()
                    } else {
                        c.when.join(", ")
                    },
                    c.name
                        .clone()
                        .or(c.sql.clone())
                        .or(c.http.clone())
                        .or(c.command.clone())
                        .unwrap_or_default()
                );
            }
            if let Some(s) = &d.schedule {
                println!(
                    "  schedule: {} ({}), run by the daemon (`lifeboat serve`) with --yes",
                    s.cron(),
                    s.time_zone().unwrap_or("UTC")
                );
            }
            println!(
                "  disruptive: {}",
                if run::disruptive(&d) {
                    "yes (asks for confirmation outside a lab)"
                } else {
                    "no"
                }
            );
            Ok(0)
        }
        Cmd::Heal => {
            let done = lifeboat_drill::ledger::Ledger::new(&ctx.state_dir).heal()?;
            if done.is_empty() {
                println!("no fault left behind: nothing to heal");
            }
            for d in done {
                println!("healed: {d}");
            }
            Ok(0)
        }
        Cmd::Run {
            name,
            yes,
            freeze_replication,
            report_dir,
            trials,
            seed,
        } => {
            let (name, d) = run::resolve(&ctx, name)?;
            let is_lab = ctx.base.join(lifeboat_drill::lab::MARKER).exists();
            if run::disruptive(&d) && !is_lab && !yes {
                confirm(&d.service, &d.scenario)?;
            }
            if !cli.json {
                println!("drill {name}: {} on {} …", d.scenario, d.service);
            }
            let opts = RunOpts {
                freeze_replication: *freeze_replication,
                report_dir: report_dir.clone(),
            };
            if let Some(n) = trials {
                let seed = seed.unwrap_or_else(|| {
                    let mut b = [0u8; 8];
                    let _ = getrandom::fill(&mut b);
                    u64::from_le_bytes(b) >> 16
                });
                if !cli.json {
                    println!("{n} trials, seed {seed}");
                }
                let each = |t: &lifeboat_drill::trials::Trial| {
                    if !cli.json {
                        println!(
                            "  trial {:>3}: {:<11} fault after {:>5} ms{}  RTO {:>6}  RPO {:>6}  lost {}",
                            t.n,
                            t.outcome,
                            t.warmup_ms,
                            t.shape.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
                            t.rto_ms.map(|v| format!("{v} ms")).unwrap_or("-".into()),
                            t.rpo_ms.map(|v| format!("{v} ms")).unwrap_or("-".into()),
                            t.lost
                        );
                    }
                };
                let (r, written) =
                    lifeboat_drill::trials::run_trials(&ctx, &name, &d, &opts, *n, seed, &each)?;
                if cli.json {
                    let mut v = serde_json::to_value(&r)?;
                    v["reports"] = serde_json::to_value(&written)?;
                    crate::output::json(&v);
                } else {
                    let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or("-".into());
                    println!(
                        "{} of {} passed; RTO p50 {} p95 {} max {} ms; RPO max {} ms; {} writes lost in all",
                        r.passed,
                        r.trials.len(),
                        f(r.rto_ms.p50),
                        f(r.rto_ms.p95),
                        f(r.rto_ms.max),
                        f(r.rpo_ms.max),
                        r.lost_total
                    );
                    for (p, _) in &written {
                        println!("report: {}", p.display());
                    }
                }
                let all = r.passed as usize == r.trials.len() && r.trials.len() == *n as usize;
                return Ok(if all { 0 } else { crate::exit::FAILED });
            }
            let (r, written) = run::run(&ctx, &name, &d, &opts)?;
            if cli.json {
                let mut v = serde_json::to_value(&r)?;
                v.as_object_mut().map(|o| o.remove("attempts"));
                v["reports"] = serde_json::to_value(&written)?;
                crate::output::json(&v);
            } else {
                println!(
                    "{}{}",
                    r.outcome.to_uppercase(),
                    r.reason
                        .as_ref()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                );
                if let Some(f) = &r.fault {
                    println!("fault: {f}");
                }
                let w = &r.measured.writes;
                println!(
                    "writes: {} attempted, {} acknowledged, {} lost, {} recovered, {} unexpected, {} duplicated",
                    w.attempted, w.acknowledged, w.lost, w.recovered, w.unexpected, w.duplicated
                );
                for p in &r.measured.parts {
                    println!("  {:<12} {:>6} ms  {}", p.name, p.ms, p.detail);
                }
                for p in &r.measured.paths {
                    println!(
                        "through the {}: RTO {} ({})",
                        if p.via == "dns" {
                            "DNS name"
                        } else {
                            "endpoint"
                        },
                        p.rto_ms
                            .map(|r| format!("{r} ms"))
                            .unwrap_or_else(|| "not recovered".into()),
                        p.detail
                    );
                }
                objectives_table(&r);
                for a in &r.after {
                    println!("  {a}");
                }
                println!("report: {}", written.markdown.0.display());
                println!("        {}", written.html.0.display());
                println!("        {}", written.json.0.display());
            }
            Ok(match r.outcome.as_str() {
                "passed" => 0,
                "interrupted" => 130,
                _ => crate::exit::FAILED,
            })
        }
    }
}

/// A disruptive drill outside a lab: type the service's name (refused without a terminal).
fn confirm(service: &str, scenario: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!("`{scenario}` disrupts service {service} and this plan is not a lab: confirmation needed, and there is no terminal to ask")
        )
        .hint("pass --yes to confirm from automation"));
    }
    print!("`{scenario}` disrupts service {service} (writes stop until it recovers). Type the service name to go on: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != service {
        anyhow::bail!(lifeboat_core::Error::new(
            lifeboat_core::Kind::Input,
            format!(
                "confirmation `{}` does not name {service}: nothing was done",
                line.trim()
            )
        ));
    }
    Ok(())
}
