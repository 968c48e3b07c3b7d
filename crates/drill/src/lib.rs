//! Lifeboat's drill room: disasters injected under a workload and measured — how long the
//! service was down (RTO), what it lost (RPO, as time and bytes, and acknowledged writes
//! counted one by one) — against the plan's objectives, with reports whose hashes go into the
//! evidence log; and the lab, a two-site environment to drill on.
//!
//! Above `protect` (point-in-time restores into sandboxes) and `failover` (the daemon being
//! drilled, its control files); the SQL of the workload lives in `pg::workload`.

pub mod lab;
pub mod labnet;
pub mod ledger;
pub mod measure;
pub mod report;
pub mod resolve;
pub mod run;
pub mod trials;

use std::path::Path;

use lifeboat_context::Context;

/// The `lifeboat` binary run on this plan, as the owner of the state directory when running as
/// root (so the files it writes stay the daemon's and PostgreSQL's).
pub fn lifeboat_command(ctx: &Context) -> std::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "lifeboat".into());
    let mut c = std::process::Command::new(exe);
    c.arg("--plan")
        .arg(&ctx.plan_path)
        .current_dir(&ctx.base)
        .env("LIFEBOAT_ACTOR", &ctx.actor)
        .env("LIFEBOAT_PROGRESS", "0")
        .stdin(std::process::Stdio::null());
    // On a lab whose sites are network namespaces the child keeps root (it switches to the
    // state directory's owner itself, as this process did): starting its members needs it.
    if can_be_root() && lifeboat_context::identity::namespaced(&ctx.plan) {
        privileged(&mut c);
    } else {
        lifeboat_pg::as_owner_of(&mut c, &ctx.state_dir);
    }
    c
}

pub use lifeboat_context::identity::{become_state_owner, can_be_root, privileged};

/// The latest drill of each scenario per service, and the latest that passed, from the
/// evidence log: what `lifeboat status` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latest {
    pub service: String,
    pub scenario: String,
    pub drill: String,
    pub tier: String,
    pub time: String,
    pub outcome: String,
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    pub lost_writes: Option<u64>,
    pub last_passed: Option<String>,
}

pub fn latest(ctx: &Context) -> Vec<Latest> {
    let Ok(ev) = ctx.evidence() else {
        return Vec::new();
    };
    let Ok(events) = ev.list(None) else {
        return Vec::new();
    };
    latest_of(&events)
}

/// The latest run of each drill scenario per service, from events already read.
pub fn latest_of(events: &[lifeboat_evidence::Event]) -> Vec<Latest> {
    let mut by: std::collections::BTreeMap<(String, String), Latest> = Default::default();
    for e in events.iter().filter(|e| e.command == "drill") {
        let f = &e.figures;
        let scenario = f["scenario"].as_str().unwrap_or("").to_string();
        let key = (e.target.clone(), scenario.clone());
        let passed_before = by.get(&key).and_then(|l| l.last_passed.clone());
        by.insert(
            key,
            Latest {
                service: e.target.clone(),
                scenario,
                drill: f["drill"].as_str().unwrap_or("").to_string(),
                tier: f["tier"].as_str().unwrap_or("").to_string(),
                time: e.time.clone(),
                outcome: e.outcome.clone(),
                rto_ms: f["rto_ms"].as_u64(),
                rpo_ms: f["rpo_ms"].as_u64(),
                lost_writes: f["writes"]["lost"].as_u64(),
                last_passed: if e.outcome == "passed" {
                    Some(e.time.clone())
                } else {
                    passed_before
                },
            },
        );
    }
    by.into_values().collect()
}

/// Whether a report file is one the evidence log recorded: the drill event naming its hash.
pub fn verify_report(
    ctx: &Context,
    file: &Path,
) -> Result<Option<lifeboat_evidence::Event>, lifeboat_core::Error> {
    let sha = report::sha256_file(file)?;
    let ev = ctx
        .evidence()
        .map_err(|e| lifeboat_core::Error::new(lifeboat_core::Kind::Io, e.to_string()))?;
    let events = ev
        .list(None)
        .map_err(|e| lifeboat_core::Error::new(lifeboat_core::Kind::Io, e.to_string()))?;
    Ok(events.into_iter().find(|e| {
        e.command == "drill"
            && ["json", "markdown", "html"]
                .iter()
                .any(|k| e.figures["reports"][k]["sha256"].as_str() == Some(sha.as_str()))
    }))
}
