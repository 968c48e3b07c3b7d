//! `lifeboat incident list | show ID | report ID | resolve ID`, and `lifeboat ack ID`: the
//! incidents the evidence log holds — opened by a failover, a failed backup, verification,
//! check, copy or WAL archive, or a drill that missed its objectives — and the post-incident
//! report of one (Markdown, or HTML with `--html`).

use std::path::PathBuf;

use lifeboat_server::incident;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Every incident, newest first (`--open`: only those not resolved).
    List {
        #[arg(long)]
        open: bool,
    },
    /// One incident and its timeline.
    Show { id: String },
    /// The post-incident report: date and time, duration, impact, root cause (to fill in),
    /// what Lifeboat did step by step with its timings, recovery against the objectives.
    Report {
        id: String,
        /// HTML instead of Markdown.
        #[arg(long)]
        html: bool,
        /// Write it here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Close an incident after the review.
    Resolve {
        id: String,
        /// What ended it, in a sentence.
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct AckArgs {
    /// The incident (`INC-12`, or `12`).
    id: String,
}

pub fn ack(cli: &crate::Cli, a: &AckArgs) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let inc = incident::act(&ctx, &ctx.actor, &a.id, "incident ack", None)?;
    if cli.json {
        crate::output::json(&inc);
    } else {
        println!(
            "{} {}: acknowledged by {} — escalation stops",
            inc.id,
            inc.title,
            inc.acknowledged_by.as_deref().unwrap_or("?")
        );
    }
    Ok(0)
}

pub fn run_cmd(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let (all, events) = incident::load(&ctx)?;
    let get = |id: &str| -> anyhow::Result<incident::Incident> {
        incident::find(&all, id).cloned().ok_or_else(|| {
            anyhow::anyhow!(lifeboat_core::Error::new(
                lifeboat_core::Kind::Input,
                format!("no incident {id}"),
            )
            .hint("`lifeboat incident list` shows them"))
        })
    };
    match c {
        Cmd::List { open } => {
            let mut list: Vec<_> = all.iter().filter(|i| !open || i.open()).cloned().collect();
            list.reverse();
            if cli.json {
                crate::output::json(&list);
                return Ok(0);
            }
            if list.is_empty() {
                println!("no incidents");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        format!("{:?}", i.severity),
                        i.state.clone(),
                        i.opened.chars().take(19).collect(),
                        i.title.clone(),
                    ]
                })
                .collect();
            crate::output::table(&["INCIDENT", "SEV", "STATE", "OPENED", "WHAT"], &rows);
        }
        Cmd::Show { id } => {
            let inc = get(id)?;
            if cli.json {
                let timeline: Vec<_> = events
                    .iter()
                    .filter(|e| inc.events.contains(&e.seq))
                    .collect();
                crate::output::json(&serde_json::json!({"incident": inc, "timeline": timeline}));
                return Ok(0);
            }
            print!("{}", incident::report(&ctx.plan, &inc, &events));
        }
        Cmd::Report { id, html, out } => {
            let inc = get(id)?;
            let md = incident::report(&ctx.plan, &inc, &events);
            let text = if *html {
                incident::report_html(&md)
            } else {
                md
            };
            match out {
                Some(p) => {
                    std::fs::write(p, text)?;
                    println!("{} report written to {}", inc.id, p.display());
                }
                None => print!("{text}"),
            }
        }
        Cmd::Resolve { id, note } => {
            let inc = incident::act(&ctx, &ctx.actor, id, "incident resolve", note.as_deref())?;
            if cli.json {
                crate::output::json(&inc);
            } else {
                println!("{} {}: {}", inc.id, inc.title, inc.state);
            }
        }
    }
    Ok(0)
}
