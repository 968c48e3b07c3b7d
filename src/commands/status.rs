//! `lifeboat status [SERVICE]`: probe every member of the postgres services once and show
//! roles, health, WAL positions and lag, and what `decide` would conclude if this state held
//! (the daemon, issue 4, keeps probing and acts on it).

use std::time::Duration;

use lifeboat_core::decide::{decide, MemberView, Role, World};
use lifeboat_core::plan::{ReplicationMode, Service};

#[derive(clap::Args)]
pub struct Args {
    /// Only this service.
    service: Option<String>,
    /// Per-probe deadline in milliseconds (connection included).
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

#[derive(serde::Serialize)]
struct MemberStatus {
    site: String,
    address: String,
    probe: lifeboat_engine::health::Probe,
}

#[derive(serde::Serialize)]
struct ServiceStatus {
    service: String,
    members: Vec<MemberStatus>,
    decision: lifeboat_core::decide::Decision,
    /// What a running `lifeboat serve` last decided (its `.lifeboat/daemon/<service>.json`).
    daemon: Option<serde_json::Value>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut out = Vec::new();
    for (name, svc) in &ctx.plan.services {
        if a.service.as_ref().is_some_and(|s| s != name) {
            continue;
        }
        let Service::Postgres { replication, .. } = svc else {
            continue;
        };
        let pg = lifeboat_engine::pg::PgService::from_plan(name, svc, &ctx.base)?;
        let mut members = Vec::new();
        for site in pg.members.keys() {
            let m = pg.member(site)?;
            let probe = lifeboat_engine::health::probe_blocking(&m, timeout);
            members.push(MemberStatus {
                site: site.clone(),
                address: format!("{}:{}", m.host, m.port),
                probe,
            });
        }
        let primary = members
            .iter()
            .find(|m| m.probe.role == Some(Role::Primary))
            .map(|m| m.site.clone());
        let primary_lsn = members
            .iter()
            .find(|m| m.probe.role == Some(Role::Primary))
            .and_then(|m| m.probe.lsn);
        let any_sync = members
            .iter()
            .flat_map(|m| m.probe.standbys.iter())
            .any(|s| s.sync_state == "sync" || s.sync_state == "quorum");
        let world = World {
            service: name.clone(),
            mode: replication
                .as_ref()
                .map(|r| r.mode)
                .unwrap_or(ReplicationMode::Async),
            max_lag_bytes: replication
                .as_ref()
                .and_then(|r| r.max_lag_on_failover)
                .map(|s| s.0),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            auto_failover: true,
            members: members
                .iter()
                .map(|m| MemberView {
                    site: m.site.clone(),
                    failures: u32::from(!m.probe.ok),
                    successes: u32::from(m.probe.ok),
                    last_failure: m.probe.failure.clone(),
                    role: m.probe.role,
                    system_id: m.probe.system_id.clone(),
                    timeline: m.probe.timeline,
                    received_lsn: m.probe.lsn.filter(|_| m.probe.role == Some(Role::Standby)),
                    replayed_lsn: m.probe.replay_lsn,
                    // One standby and a synchronous slot on the primary: that standby.
                    was_sync: any_sync && m.probe.role == Some(Role::Standby),
                    clients_reach_it: None,
                })
                .collect(),
            primary,
            epoch: 0,
            primary_last_lsn: primary_lsn,
            failover_in_progress: None,
        };
        let daemon = std::fs::read(ctx.state_dir.join("daemon").join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(ServiceStatus {
            service: name.clone(),
            decision: decide(&world),
            members,
            daemon,
        });
    }
    if cli.json {
        crate::output::json(&out);
        return Ok(0);
    }
    for s in &out {
        println!("service {}", s.service);
        for m in &s.members {
            let p = &m.probe;
            let state = match (&p.failure, p.role) {
                (Some(f), _) => format!(
                    "DOWN ({})",
                    serde_json::to_value(f)
                        .unwrap_or_default()
                        .to_string()
                        .trim_matches('"')
                ),
                (None, Some(Role::Primary)) => "primary".into(),
                (None, Some(Role::Standby)) => "standby".into(),
                (None, None) => "up".into(),
            };
            println!(
                "  {:<10} {:<24} {:<18} timeline {:<3} lsn {:<14} {} ms",
                m.site,
                m.address,
                state,
                p.timeline
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                p.lsn
                    .map(|l| lifeboat_core::wal::Lsn(l).to_string())
                    .unwrap_or_else(|| "-".into()),
                p.latency_ms
            );
            for sb in &p.standbys {
                println!(
                    "    streams to {} ({}, {})",
                    sb.application_name, sb.state, sb.sync_state
                );
            }
        }
        println!("  if this state held: {}", s.decision.reason);
        if let Some(d) = &s.daemon {
            println!(
                "  daemon's last decision ({}, epoch {}): {}",
                d["time"].as_str().unwrap_or("?"),
                d["epoch"],
                d["decision"]["reason"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(0)
}
