//! `lifeboat status [SERVICE]`: probe every member of the postgres services once and show
//! roles, health, WAL positions and lag, and what `decide` would conclude if this state held
//! (the daemon keeps probing and acts on it).

use std::time::Duration;

use std::collections::BTreeMap;

use lifeboat_core::decide::{decide, Role};
use lifeboat_failover::coord::FailoverState;
use lifeboat_failover::world::{build_world, Counts, Watched};

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
    probe: lifeboat_pg::health::Probe,
}

#[derive(serde::Serialize)]
struct ServiceStatus {
    service: String,
    members: Vec<MemberStatus>,
    decision: lifeboat_core::decide::Decision,
    /// What a running `lifeboat serve` last decided (its `.lifeboat/daemon/<service>.json`).
    daemon: Option<serde_json::Value>,
    drills: Vec<lifeboat_drill::Latest>,
}

pub fn run(cli: &crate::Cli, a: &Args) -> anyhow::Result<i32> {
    let ctx = super::context(cli)?;
    let timeout = Duration::from_millis(a.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Vec::new();
    let drills = lifeboat_drill::latest(&ctx);
    let is_app = |n: &str| {
        matches!(
            ctx.plan.services.get(n),
            Some(lifeboat_core::plan::Service::Http { .. })
        )
    };
    let is_bucket = |n: &str| {
        matches!(
            ctx.plan.services.get(n),
            Some(lifeboat_core::plan::Service::Bucket { .. })
        )
    };
    let buckets: Vec<BucketStatus> = lifeboat_protect::bucket::replicated_services(&ctx)
        .into_iter()
        .filter(|r| a.service.as_deref().is_none_or(|s| s == r.service))
        .map(|r| BucketStatus {
            kind: "bucket",
            source: without_query(&r.source.url),
            replica: without_query(&r.replica.url),
            deletes: r.deletes,
            state: lifeboat_protect::bucket::load_state(&ctx.state_dir, &r.service),
            service: r.service,
        })
        .collect();
    let pg_names = match a.service.as_deref() {
        Some(s) if is_app(s) || is_bucket(s) => Vec::new(),
        only => ctx.postgres_services(only)?,
    };
    let apps: Vec<AppStatus> = ctx
        .plan
        .services
        .keys()
        .filter(|n| is_app(n) && a.service.as_deref().is_none_or(|s| s == n.as_str()))
        .filter_map(|n| lifeboat_failover::app::AppTier::from_plan(&ctx, n))
        .map(|app| app_status(&ctx, &rt, &app, timeout))
        .collect();
    for name in pg_names {
        let Some(mut w) = Watched::from_plan(&ctx, &name)? else {
            continue;
        };
        // One probe each: judge it as if it had lasted (thresholds of 1).
        w.spec.unhealthy_threshold = Some(1);
        w.spec.healthy_threshold = Some(1);
        w.spec.timeout = Some(lifeboat_core::units::Duration(timeout));
        let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
        let mut members = Vec::new();
        for (site, probe) in rt.block_on(w.check_all()) {
            counts
                .entry(site.clone())
                .or_default()
                .observe(probe.clone());
            let address = w
                .members
                .iter()
                .find(|m| m.site == site)
                .map(|m| format!("{}:{}", m.host, m.port))
                .unwrap_or_default();
            members.push(MemberStatus {
                site,
                address,
                probe,
            });
        }
        let primary = members.iter().find(|m| m.probe.role == Some(Role::Primary));
        let state = FailoverState {
            primary: primary.map(|m| m.site.clone()),
            ..Default::default()
        };
        let world = build_world(&w, &counts, &state, primary.and_then(|m| m.probe.lsn), None);
        let daemon = std::fs::read(ctx.state_dir.join("daemon").join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(ServiceStatus {
            service: name.clone(),
            decision: decide(&world),
            members,
            daemon,
            drills: drills
                .iter()
                .filter(|d| d.service == name)
                .cloned()
                .collect(),
        });
    }
    if cli.json {
        let mut all: Vec<serde_json::Value> = out
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect();
        all.extend(
            apps.iter()
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
        );
        all.extend(
            buckets
                .iter()
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
        );
        crate::output::json(&all);
        return Ok(0);
    }
    for s in &apps {
        print_app(s);
    }
    for b in &buckets {
        print_bucket(b);
    }
    for s in &out {
        println!("service {}", s.service);
        for m in &s.members {
            let p = &m.probe;
            let state = match (&p.failure, p.role) {
                (Some(f), _) => format!("DOWN ({})", f.describe()),
                (None, Some(Role::Primary)) => "primary".into(),
                (None, Some(Role::Standby)) if p.streaming == Some(false) => {
                    "standby, NOT streaming".into()
                }
                (None, Some(Role::Standby)) => match p.lag_s {
                    Some(l) => format!("standby, lag {l:.1} s"),
                    None => "standby".into(),
                },
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
                let behind = match (p.lsn, sb.replay_lsn) {
                    (Some(a), Some(b)) => format!(", {} bytes behind", a.saturating_sub(b)),
                    _ => String::new(),
                };
                let secs = sb
                    .replay_lag_s
                    .map(|l| format!(", replay lag {l:.2} s"))
                    .unwrap_or_default();
                println!(
                    "    streams to {} ({}, {}{behind}{secs})",
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
        for d in &s.drills {
            let ms = |v: Option<u64>| v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into());
            println!(
                "  drill {:<13} tier {} — last {} {} (RTO {}, RPO {}, {} lost); last passed {}",
                d.scenario,
                d.tier,
                d.time.get(..19).unwrap_or(&d.time),
                d.outcome,
                ms(d.rto_ms),
                ms(d.rpo_ms),
                d.lost_writes
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.last_passed
                    .as_deref()
                    .and_then(|t| t.get(..19))
                    .unwrap_or("never")
            );
        }
    }
    if let Some(m) = &ctx.plan.metrics {
        println!(
            "metrics: http://{}/metrics (served by `lifeboat serve`)",
            m.listen
        );
    }
    if let Some(a) = &ctx.plan.api {
        println!(
            "dashboard: {}://{}/ (served by `lifeboat serve`)",
            if a.tls.is_some() { "https" } else { "http" },
            a.listen
        );
    }
    // Incidents not resolved yet (`lifeboat incident list` shows them all).
    if let Ok((all, _)) = lifeboat_server::incident::load(&ctx) {
        for i in all.iter().rev().filter(|i| i.open()) {
            println!(
                "incident {} {:?} {}: {} (opened {}){}",
                i.id,
                i.severity,
                i.state.to_uppercase(),
                i.title,
                i.opened.get(..19).unwrap_or(&i.opened),
                if i.state == "open" {
                    format!(" — `lifeboat ack {}` stops its escalation", i.id)
                } else {
                    String::new()
                }
            );
        }
    }
    // Schedules that should have run and have not (`lifeboat schedule` lists them all).
    for v in lifeboat_server::schedule::views(
        &ctx.plan,
        &ctx.state_dir,
        jiff::Timestamp::now(),
        super::schedule::GRACE,
    ) {
        if let Some(since) = v.overdue_since {
            println!(
                "schedule {} OVERDUE: due {} ({}), last run {} — is `lifeboat serve` running?",
                v.id,
                since.strftime("%Y-%m-%d %H:%M:%SZ"),
                v.what,
                v.record
                    .last_end
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "never".into())
            );
        }
    }
    Ok(0)
}

#[derive(serde::Serialize)]
struct AppSite {
    site: String,
    url: String,
    record: Option<String>,
    /// This command's own check, now.
    healthy: bool,
    failure: Option<String>,
    /// What the daemon's checks say (thresholds applied).
    daemon_healthy: Option<bool>,
    database: Option<lifeboat_core::route::DbAt>,
}

#[derive(serde::Serialize)]
struct AppStatus {
    service: String,
    kind: &'static str,
    name: Option<String>,
    follows: Option<String>,
    failback: lifeboat_core::plan::Failback,
    sites: Vec<AppSite>,
    /// The daemon's answer (`<state>/routes/<service>.json`), when one runs or ran.
    answer: Option<lifeboat_failover::app::RouteRecord>,
}

/// One check of every site now, beside what the daemon last answered.
fn app_status(
    ctx: &lifeboat_context::Context,
    rt: &tokio::runtime::Runtime,
    app: &lifeboat_failover::app::AppTier,
    timeout: Duration,
) -> AppStatus {
    let answer = lifeboat_failover::app::load_record(&ctx.state_dir, &app.service);
    let sites = app
        .sites
        .iter()
        .map(|(site, check)| {
            let seen = answer.as_ref().and_then(|r| r.sites.get(site));
            let now = rt.block_on(lifeboat_pg::health::extra_checks(
                std::slice::from_ref(check),
                timeout,
            ));
            AppSite {
                site: site.clone(),
                url: lifeboat_pg::health::redact_url(check.http.as_deref().unwrap_or_default()),
                record: app.records.get(site).cloned(),
                healthy: now.is_ok(),
                failure: now.err(),
                daemon_healthy: seen.and_then(|s| s.healthy),
                database: seen.and_then(|s| s.db.clone()),
            }
        })
        .collect();
    AppStatus {
        service: app.service.clone(),
        kind: "http",
        name: app.dns.as_ref().map(|d| d.name.clone()),
        follows: app.follows.clone(),
        failback: app.failback,
        sites,
        answer,
    }
}

fn print_app(s: &AppStatus) {
    println!(
        "service {} (http{}{})",
        s.service,
        s.name
            .as_ref()
            .map(|n| format!(", name {n}"))
            .unwrap_or_default(),
        s.follows
            .as_ref()
            .map(|f| format!(", follows {f}"))
            .unwrap_or_default()
    );
    for site in &s.sites {
        let answered = s
            .answer
            .as_ref()
            .is_some_and(|a| a.site.as_deref() == Some(site.site.as_str()));
        println!(
            "  {:<10} {:<16} {:<26} {}{}",
            site.site,
            site.record.as_deref().unwrap_or("-"),
            match &site.failure {
                None => "healthy".to_string(),
                Some(e) => format!("UNHEALTHY ({e})"),
            },
            if answered { "<- answered" } else { "" },
            site.database
                .as_ref()
                .map(|d| format!("  database: {}", d.describe()))
                .unwrap_or_default()
        );
    }
    match &s.answer {
        Some(a) => {
            println!(
                "  daemon answers {} since {}: {}",
                a.site.as_deref().unwrap_or("nothing (SERVFAIL)"),
                a.since.as_deref().and_then(|t| t.get(..19)).unwrap_or("?"),
                a.reason
            );
            if let Some(h) = &a.held {
                println!(
                    "  {h} is healthy again; `lifeboat failback {}` moves the name back",
                    s.service
                );
            }
        }
        None => println!("  no answer recorded: `lifeboat serve` has not routed this service yet"),
    }
}

/// A URL without its query (the options there say nothing a reader of `status` needs).
fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or("").to_string()
}

#[derive(serde::Serialize)]
struct BucketStatus {
    service: String,
    kind: &'static str,
    source: String,
    replica: String,
    deletes: lifeboat_core::plan::Deletes,
    /// The replicator's state (`<state>/buckets/<service>.json`), when the daemon has run it.
    state: Option<lifeboat_protect::bucket::State>,
}

fn print_bucket(b: &BucketStatus) {
    println!(
        "service {} (bucket {} → {}, deletes {})",
        b.service,
        b.source,
        b.replica,
        b.deletes.name()
    );
    let Some(st) = &b.state else {
        println!("  not replicated yet: `lifeboat serve` replicates it");
        return;
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let age = |ms: Option<i64>| {
        ms.map(|t| format!("{:.1} s ago", (now - t) as f64 / 1000.0))
            .unwrap_or_else(|| "never".into())
    };
    println!(
        "  replica whole up to {} ({} object(s), {} pending); last full comparison {}",
        age(st.replicated_until_ms),
        st.source_objects,
        st.pending_objects,
        age(st.last_full_reconcile_ms)
    );
    if let Some(e) = &st.error {
        println!(
            "  FAILING since {}: {e}{}",
            age(st.failing_since_ms),
            st.hint
                .as_deref()
                .map(|h| format!(" — {h}"))
                .unwrap_or_default()
        );
    }
}
