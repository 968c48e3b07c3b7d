//! `lifeboat plan check | schema | show`.

use lifeboat_context::{load_plan, PlanError};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Validate the plan: every error with file, line, column and field path.
    Check,
    /// Print the plan's JSON Schema (for editors).
    Schema,
    /// Print the plan as Lifeboat understands it (secrets shown as references).
    Show,
}

pub fn run(cli: &crate::Cli, c: &Cmd) -> anyhow::Result<i32> {
    match c {
        Cmd::Schema => {
            crate::output::json(&lifeboat_core::plan_schema());
            Ok(0)
        }
        Cmd::Check => {
            match load_plan(&cli.plan) {
                Ok(plan) => {
                    let warnings = lifeboat_core::validate::warnings(&plan);
                    if cli.json {
                        let w: Vec<_> = warnings
                        .iter()
                        .map(|(path, message)| serde_json::json!({"path": path, "message": message}))
                        .collect();
                        crate::output::json(
                            &serde_json::json!({"ok": true, "errors": [], "warnings": w}),
                        );
                    } else {
                        for (path, message) in &warnings {
                            eprintln!("warning: {path}: {message}");
                        }
                        println!(
                            "{}: ok — {} tier(s), {} service(s), {} repositor{}, {} backup job(s)",
                            cli.plan.display(),
                            plan.tiers.len(),
                            plan.services.len(),
                            plan.repositories.len(),
                            if plan.repositories.len() == 1 {
                                "y"
                            } else {
                                "ies"
                            },
                            plan.backups.len()
                        );
                    }
                    Ok(0)
                }
                Err(PlanError::Invalid(diags)) => {
                    if cli.json {
                        crate::output::json(&serde_json::json!({"ok": false, "errors": diags}));
                    } else {
                        for d in &diags {
                            eprintln!("{d}");
                        }
                        eprintln!("{} error(s) in {}", diags.len(), cli.plan.display());
                    }
                    Ok(crate::exit::USAGE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Show => {
            let plan = load_plan(&cli.plan)?;
            crate::output::json(&plan);
            Ok(0)
        }
    }
}
