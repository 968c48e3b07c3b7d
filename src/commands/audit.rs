//! `lifeboat audit list | verify`.

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Show recorded events.
    List {
        /// Only the newest N.
        #[arg(long)]
        last: Option<usize>,
    },
    /// Check the hash chain: detects edited, deleted or truncated events. With --report, say
    /// whether a drill report file is one the log recorded.
    Verify {
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
}

pub fn run(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let ev = ctx.evidence()?;
    match c {
        Cmd::List { last } => {
            let events = ev.list(*last)?;
            if cli.json {
                crate::output::json(&events);
            } else {
                let rows: Vec<Vec<String>> = events
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            e.time.chars().take(19).collect(),
                            e.actor.clone(),
                            e.command.clone(),
                            e.target.clone(),
                            e.outcome.clone(),
                            format!("{:.1}s", e.duration_ms as f64 / 1000.0),
                            e.hash[..12].to_string(),
                        ]
                    })
                    .collect();
                crate::output::table(
                    &[
                        "SEQ", "TIME", "ACTOR", "COMMAND", "TARGET", "OUTCOME", "TOOK", "HASH",
                    ],
                    &rows,
                );
            }
            Ok(0)
        }
        Cmd::Verify { report: Some(file) } => {
            let chain = ev.verify()?;
            let found = lifeboat_drill::verify_report(&ctx, file)?;
            let ok = found.is_some() && chain.problems.is_empty();
            if cli.json {
                crate::output::json(&serde_json::json!({
                    "report": file.display().to_string(), "recorded": found.is_some(),
                    "event": found.as_ref().map(|e| e.seq), "chain_intact": chain.problems.is_empty(),
                }));
            } else {
                match &found {
                    Some(e) => println!(
                        "{}: the report recorded by event {} ({} {} {}, {}), hash chain {}",
                        file.display(),
                        e.seq,
                        e.command,
                        e.target,
                        e.outcome,
                        e.time,
                        if chain.problems.is_empty() {
                            "intact"
                        } else {
                            "TAMPERED"
                        }
                    ),
                    None => println!(
                        "{}: NOT a report the evidence log recorded (edited, or from elsewhere)",
                        file.display()
                    ),
                }
            }
            Ok(if ok { 0 } else { crate::exit::FAILED })
        }
        Cmd::Verify { report: None } => {
            let r = ev.verify()?;
            if cli.json {
                crate::output::json(&r);
            } else if r.problems.is_empty() {
                println!(
                    "evidence log intact: {} event(s), hash chain verified",
                    r.events
                );
            } else {
                for p in &r.problems {
                    println!("TAMPERED  {p}");
                }
                println!(
                    "evidence log has {} problem(s) in {} event(s)",
                    r.problems.len(),
                    r.events
                );
            }
            Ok(if r.problems.is_empty() {
                0
            } else {
                crate::exit::FAILED
            })
        }
    }
}
