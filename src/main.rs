//! `lifeboat`: the command line. Thin by design: each subcommand in `commands/` parses its
//! arguments, calls the engine, and prints a table or `--json`.

mod commands;
mod exit;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Executable disaster-recovery plans: proven backups, safe failover, measured drills"
)]
pub struct Cli {
    /// The plan file.
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_PLAN",
        default_value = "lifeboat.yaml"
    )]
    pub plan: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Write a commented starter plan (and a repository key file if none exists).
    Init(commands::init::Args),
    /// Check, export the schema of, or show the plan.
    #[command(subcommand)]
    Plan(commands::plan::Cmd),
    /// Create repositories, copy between them, manage locks.
    #[command(subcommand)]
    Repo(commands::repo::Cmd),
    /// Run backup jobs (all, or the one named).
    Backup(commands::backup::Args),
    /// List snapshots.
    Snapshots(commands::snapshots::Args),
    /// Restore a snapshot into a directory.
    Restore(commands::restore::Args),
    /// Apply the plan's retention and prune unreferenced data.
    Forget(commands::forget::Args),
    /// Check that backups exist, are fresh, are retained, and (with --read-data) are intact.
    Verify(commands::verify::Args),
    /// PostgreSQL WAL archive: archive_command, restore_command, and the recoverable window.
    #[command(subcommand)]
    Wal(commands::wal::Cmd),
    /// The daemon: health checks, automatic failover, the traffic endpoint, and every
    /// schedule in the plan.
    Serve(commands::serve::Args),
    /// The agent beside one PostgreSQL member when etcd coordinates the sites (the plan's
    /// `coordinator:`): holds the leader's lease on the primary, promotes its standby only
    /// after winning it, and stops its server before a lease it cannot renew runs out.
    Agent(commands::agent::Args),
    /// A site's traffic endpoints alone (the plan's `failover.site_listen`), each routing to
    /// the member that holds the leader key in etcd, for a site without a PostgreSQL member.
    Endpoint(commands::endpoint::Args),
    /// Every schedule in the plan: what it runs, its last run and its next one; pause or
    /// resume one.
    Schedule(commands::schedule::Args),
    /// Incidents (failovers, failed backups and verifications, missed drill objectives): list,
    /// show, write the post-incident report, resolve.
    #[command(subcommand)]
    Incident(commands::incident::Cmd),
    /// Acknowledge an incident: its escalation stops.
    Ack(commands::incident::AckArgs),
    /// Act through a daemon's API from anywhere (status, switchover, failover, jobs,
    /// acknowledging incidents), with a token.
    Remote(commands::remote::Args),
    /// The daemon's HTTP API: make a token, print the OpenAPI document.
    #[command(subcommand)]
    Api(commands::api::Cmd),
    /// Probe every PostgreSQL member once: roles, health, WAL positions, and what would be decided.
    Status(commands::status::Args),
    /// Manual failover: pre-checks, the steps, a typed confirmation, then the failover.
    Failover(commands::failover::Args),
    /// Planned switchover without data loss: the old primary becomes the new one's standby.
    Switchover(commands::switchover::Args),
    /// Make a failed old primary a standby again (pg_rewind), with a divergence report.
    Rejoin(commands::rejoin::Args),
    /// Give the primary back: rejoin the site if needed, then switch over to it.
    Failback(commands::rejoin::FailbackArgs),
    /// Runbooks: list, show the order, run (steps timed, recorded, approval gates).
    #[command(subcommand)]
    Runbook(commands::runbook::Cmd),
    /// Drills: a disaster injected under a workload, RTO, RPO and lost writes measured.
    #[command(subcommand)]
    Drill(commands::drill::Cmd),
    /// A two-site lab on this machine to drill on.
    #[command(subcommand)]
    Lab(commands::lab::Cmd),
    /// The evidence log.
    #[command(subcommand)]
    Audit(commands::audit::Cmd),
    /// A self-contained tour: plan, repository, backups, verification, damage, restore, audit.
    Demo(commands::demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match &cli.command {
        Command::Init(a) => commands::init::run(&cli, a),
        Command::Plan(c) => commands::plan::run(&cli, c),
        Command::Repo(c) => commands::repo::run(&cli, c),
        Command::Backup(a) => commands::backup::run(&cli, a),
        Command::Snapshots(a) => commands::snapshots::run(&cli, a),
        Command::Restore(a) => commands::restore::run(&cli, a),
        Command::Forget(a) => commands::forget::run(&cli, a),
        Command::Verify(a) => commands::verify::run(&cli, a),
        Command::Audit(c) => commands::audit::run(&cli, c),
        Command::Wal(c) => commands::wal::run(&cli, c),
        Command::Status(a) => commands::status::run(&cli, a),
        Command::Serve(a) => commands::serve::run(&cli, a),
        Command::Agent(a) => commands::agent::run(&cli, a),
        Command::Endpoint(a) => commands::endpoint::run(&cli, a),
        Command::Schedule(a) => commands::schedule::run(&cli, a),
        Command::Api(c) => commands::api::run_cmd(&cli, c),
        Command::Incident(c) => commands::incident::run_cmd(&cli, c),
        Command::Ack(a) => commands::incident::ack(&cli, a),
        Command::Remote(a) => commands::remote::run(&cli, a),
        Command::Runbook(c) => commands::runbook::run_cmd(&cli, c),
        Command::Rejoin(a) => commands::rejoin::run(&cli, a),
        Command::Failback(a) => commands::rejoin::failback(&cli, a),
        Command::Failover(a) => commands::failover::run(&cli, a),
        Command::Switchover(a) => commands::switchover::run(&cli, a),
        Command::Demo(a) => commands::demo::run(&cli, a),
        Command::Drill(c) => commands::drill::run_cmd(&cli, c),
        Command::Lab(c) => commands::lab::run_cmd(&cli, c),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = exit::code_for(&e);
            if json {
                // `retryable`: whether running the same command later may succeed (a lock, an
                // unreachable backend): for schedulers deciding whether to retry.
                let retryable = e
                    .downcast_ref::<lifeboat_core::Error>()
                    .is_some_and(|s| s.retryable);
                println!(
                    "{}",
                    serde_json::json!({"error": format!("{e:#}"), "exit_code": code, "retryable": retryable})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::exit(code);
        }
    }
}
