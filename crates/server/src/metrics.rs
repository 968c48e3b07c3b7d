//! `/metrics`: what the daemon knows, in the OpenMetrics text format (prometheus-client), on
//! the plan's `metrics.listen`.
//!
//! Every value is rebuilt from durable records — the evidence log (backups, restores proven,
//! drills, copies, checks, failovers), the scheduler's records, the plan's objectives — plus
//! the failover monitors' latest view of each member. A restart therefore loses no "last
//! success" and resets no counter (`_total` values are counts of logged events). Timestamps,
//! not ages: a frozen exporter shows as stale. A value not known yet is absent, never 0. No
//! snapshot ids, LSNs or times as labels. Runs started from the command line are in the same
//! log, so they show up too.
//!
//! The text is rebuilt in the background every few seconds and when the evidence log grows;
//! a scrape only copies it, so scrapes under load never touch the failover checks.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use lifeboat_context::Context;
use lifeboat_core::decide::Role;
use lifeboat_core::plan::Service;
use lifeboat_failover::healthapi::Shared;

type Labels = Vec<(String, String)>;
type G = Family<Labels, Gauge<f64, AtomicU64>>;
type C = Family<Labels, Counter<u64, AtomicU64>>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn seconds(rfc3339: &str) -> Option<f64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
}

/// What the repositories and the primaries say, read on a slower timer than the rest (a
/// repository may be remote): whether each repository opens, and each postgres service's WAL
/// archive and recoverable window, and its primary's archiver.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    /// Repository → it opened (config read and decrypted with its key).
    pub repos: BTreeMap<String, bool>,
    pub wal: BTreeMap<String, WalState>,
}

#[derive(Clone, Debug, Default)]
pub struct WalState {
    /// The archive could be listed and read.
    pub readable: bool,
    pub segments: Option<u64>,
    pub gap_segments: Option<u64>,
    /// Unix seconds of the newest segment's arrival in the archive.
    pub last_pushed: Option<f64>,
    /// The recoverable window (Unix seconds).
    pub window: Option<(f64, f64)>,
    /// The primary's archiver (PostgreSQL's statistics), when one answered.
    pub archiver: Option<lifeboat_pg::ops::Archiver>,
}

/// Read the repositories and WAL archives (blocking: run it off the runtime's threads).
pub fn read_storage(ctx: &Context) -> Storage {
    let mut st = Storage::default();
    for name in ctx.plan.repositories.keys() {
        st.repos.insert(name.clone(), ctx.open_repo(name).is_ok());
    }
    for (name, svc) in &ctx.plan.services {
        if !matches!(svc, Service::Postgres { .. })
            || lifeboat_protect::wal::wal_repo(ctx, name).is_err()
        {
            continue;
        }
        let w = match lifeboat_protect::wal::survey(ctx, name, false) {
            Ok(r) => WalState {
                readable: true,
                segments: Some(r.segments as u64),
                gap_segments: Some(r.gaps.iter().map(|g| g.count).sum()),
                last_pushed: r
                    .backups
                    .iter()
                    .filter_map(|b| b.reach.last_pushed_at)
                    .max()
                    .map(|us| us as f64 / 1e6),
                window: r.window.map(|(a, b)| (a as f64 / 1e6, b as f64 / 1e6)),
                archiver: None,
            },
            Err(_) => WalState::default(),
        };
        st.wal.insert(name.clone(), w);
    }
    st
}

/// The primary's archiver statistics for each postgres service (the first member that
/// answers as primary within 2 s).
pub async fn read_archivers(ctx: &Context, st: &mut Storage) {
    for (name, w) in st.wal.iter_mut() {
        let Some(svc) = ctx.plan.services.get(name) else {
            continue;
        };
        let Ok(pg) = lifeboat_pg::PgService::from_plan(name, svc, &ctx.base) else {
            continue;
        };
        for site in pg.members.keys() {
            let Ok(m) = pg.member(site) else { continue };
            let Ok(s) = lifeboat_pg::ops::Session::connect(&m, Duration::from_secs(2)).await else {
                continue;
            };
            let primary = tokio::time::timeout(Duration::from_secs(2), s.in_recovery())
                .await
                .ok()
                .and_then(|r| r.ok())
                == Some(false);
            if !primary {
                continue;
            }
            if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), s.archiver()).await {
                w.archiver = Some(a);
                break;
            }
        }
    }
}

/// One event of the evidence log, as the metrics need it.
pub struct Logged {
    pub time: String,
    pub command: String,
    pub target: String,
    pub outcome: String,
    pub duration_ms: i64,
    pub figures: serde_json::Value,
}

/// The metrics text for this plan, these events, the scheduler's records and the members'
/// health. Pure but for the clock-free inputs it is given.
pub fn render(
    ctx: &Context,
    events: &[Logged],
    schedules: &[crate::schedule::View],
    members: &[(String, Shared)],
    storage: &Storage,
) -> String {
    let mut reg = Registry::with_prefix("lifeboat");
    let g = |reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>| -> G {
        let f = G::default();
        match unit {
            Some(u) => reg.register_with_unit(name, help, u, f.clone()),
            None => reg.register(name, help, f.clone()),
        }
        f
    };
    let c = |reg: &mut Registry, name: &str, help: &str| -> C {
        let f = C::default();
        reg.register(name, help, f.clone());
        f
    };
    let build = g(
        &mut reg,
        "build_info",
        "The running Lifeboat's version (always 1)",
        None,
    );
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1.0);

    // The objectives, so alerts compare against them instead of a number written in a rule.
    let rpo = g(
        &mut reg,
        "objective_rpo",
        "The service tier's recovery point objective",
        Some(Unit::Seconds),
    );
    let rto = g(
        &mut reg,
        "objective_rto",
        "The service tier's recovery time objective",
        Some(Unit::Seconds),
    );
    for (name, svc) in &ctx.plan.services {
        if let Some(t) = ctx.plan.tiers.get(svc.tier()) {
            let l = labels(&[("service", name), ("tier", svc.tier())]);
            rpo.get_or_create(&l).set(t.rpo.0.as_secs_f64());
            rto.get_or_create(&l).set(t.rto.0.as_secs_f64());
        }
    }

    let b_ok = g(
        &mut reg,
        "backup_last_success_timestamp",
        "When the job's last successful backup ended",
        Some(Unit::Seconds),
    );
    let b_fail = g(
        &mut reg,
        "backup_last_failure_timestamp",
        "When the job's last failed backup ended",
        Some(Unit::Seconds),
    );
    let b_dur = g(
        &mut reg,
        "backup_duration",
        "How long the job's last successful backup took",
        Some(Unit::Seconds),
    );
    let b_size = g(&mut reg, "backup_size", "The job's last successful backup: bytes read from the source, and bytes it added to the repository (stored, compressed)", Some(Unit::Bytes));
    let b_runs = c(
        &mut reg,
        "backup_runs",
        "Backups of the job by result, from the evidence log (never reset by a restart)",
    );
    let v_ok = g(
        &mut reg,
        "restore_verification_last_success_timestamp",
        "When a restore of the service into a sandbox last passed its checks",
        Some(Unit::Seconds),
    );
    let v_fail = g(
        &mut reg,
        "restore_verification_last_failure_timestamp",
        "When a restore of the service into a sandbox last failed",
        Some(Unit::Seconds),
    );
    let v_dur = g(
        &mut reg,
        "restore_verification_duration",
        "How long the last passing restore took, until it took a write",
        Some(Unit::Seconds),
    );
    let v_age = g(
        &mut reg,
        "restore_verification_data_age",
        "How old the newest data of the last passing restore was",
        Some(Unit::Seconds),
    );
    let d_run = g(
        &mut reg,
        "drill_last_run_timestamp",
        "When the drill last ran (any outcome)",
        Some(Unit::Seconds),
    );
    let d_ok = g(
        &mut reg,
        "drill_last_success_timestamp",
        "When the drill last passed",
        Some(Unit::Seconds),
    );
    let d_rto = g(
        &mut reg,
        "drill_measured_rto",
        "The RTO the drill's last run measured",
        Some(Unit::Seconds),
    );
    let d_rpo = g(
        &mut reg,
        "drill_measured_rpo",
        "The RPO the drill's last run measured",
        Some(Unit::Seconds),
    );
    let d_lost = g(
        &mut reg,
        "drill_lost_writes",
        "Acknowledged writes the drill's last run lost",
        None,
    );
    let d_runs = c(
        &mut reg,
        "drill_runs",
        "Drill runs by outcome, from the evidence log",
    );
    let cp_ok = g(
        &mut reg,
        "copy_last_success_timestamp",
        "When the cross-region copy between two repositories last succeeded",
        Some(Unit::Seconds),
    );
    let cp_fail = g(
        &mut reg,
        "copy_last_failure_timestamp",
        "When the cross-region copy between two repositories last failed",
        Some(Unit::Seconds),
    );
    let chk = g(
        &mut reg,
        "repository_last_check_timestamp",
        "When `repo check` of the repository last passed",
        Some(Unit::Seconds),
    );
    let chk_fail = g(
        &mut reg,
        "repository_last_check_failure_timestamp",
        "When `repo check` of the repository last failed",
        Some(Unit::Seconds),
    );
    let fo = c(&mut reg, "failovers", "Failovers and switchovers of the service by kind (auto, manual, switchover), from the evidence log");
    let routes = c(
        &mut reg,
        "http_route_changes",
        "Changes of an http service's DNS answer by kind (failover, failback, follows the database, no answer, first answer), from the evidence log",
    );
    let route_at = g(
        &mut reg,
        "http_route_last_change_timestamp",
        "When an http service's DNS answer last changed",
        Some(Unit::Seconds),
    );

    // Events in log order: the last one of a kind wins.
    for e in events {
        let t = seconds(&e.time);
        let ok = e.outcome == "ok" || e.outcome == "passed";
        let f = &e.figures;
        match e.command.as_str() {
            "route" => {
                let change = f["change"].as_str().unwrap_or("");
                routes
                    .get_or_create(&labels(&[("service", &e.target), ("change", change)]))
                    .inc();
                if let Some(t) = t {
                    route_at
                        .get_or_create(&labels(&[("service", &e.target)]))
                        .set(t);
                }
            }
            "backup" => {
                let repo = f["repository"].as_str().unwrap_or("");
                let kind = f["kind"].as_str().unwrap_or("");
                let service = f["service"].as_str().unwrap_or("");
                let l = labels(&[
                    ("job", &e.target),
                    ("service", service),
                    ("repository", repo),
                    ("kind", kind),
                ]);
                let js = labels(&[("job", &e.target), ("service", service)]);
                b_runs
                    .get_or_create(&labels(&[
                        ("job", &e.target),
                        ("result", if ok { "success" } else { "failure" }),
                    ]))
                    .inc();
                if let Some(t) = t {
                    if ok {
                        b_ok.get_or_create(&l).set(t);
                        b_dur.get_or_create(&js).set(e.duration_ms as f64 / 1000.0);
                        if let Some(n) = f["summary"]["bytes_read"].as_f64() {
                            b_size
                                .get_or_create(
                                    &[js.clone(), labels(&[("stage", "source")])].concat(),
                                )
                                .set(n);
                        }
                        if let Some(n) = f["summary"]["bytes_added_packed"].as_f64() {
                            b_size
                                .get_or_create(
                                    &[js.clone(), labels(&[("stage", "stored")])].concat(),
                                )
                                .set(n);
                        }
                    } else {
                        b_fail.get_or_create(&l).set(t);
                    }
                }
            }
            "verify restore" => {
                let l = labels(&[("service", &e.target)]);
                if let Some(t) = t {
                    if ok {
                        v_ok.get_or_create(&l).set(t);
                        if let Some(ms) = f["restore_ms"].as_f64() {
                            v_dur.get_or_create(&l).set(ms / 1000.0);
                        }
                        if let Some(ms) = f["data_age_ms"].as_f64() {
                            v_age.get_or_create(&l).set(ms / 1000.0);
                        }
                    } else {
                        v_fail.get_or_create(&l).set(t);
                    }
                }
            }
            "drill" => {
                let drill = f["drill"].as_str().unwrap_or("");
                let scenario = f["scenario"].as_str().unwrap_or("");
                let l = labels(&[
                    ("drill", drill),
                    ("service", &e.target),
                    ("scenario", scenario),
                ]);
                d_runs
                    .get_or_create(&labels(&[("drill", drill), ("outcome", &e.outcome)]))
                    .inc();
                if let Some(t) = t {
                    d_run.get_or_create(&l).set(t);
                    if e.outcome == "passed" {
                        d_ok.get_or_create(&l).set(t);
                    }
                }
                // Measurements of the last run; a run that measured nothing leaves none.
                let dl = labels(&[("drill", drill)]);
                for (fam, key, scale) in [(&d_rto, "rto_ms", 1000.0), (&d_rpo, "rpo_ms", 1000.0)] {
                    match f[key].as_f64() {
                        Some(v) => {
                            fam.get_or_create(&dl).set(v / scale);
                        }
                        None => {
                            fam.remove(&dl);
                        }
                    }
                }
                match f["writes"]["lost"].as_f64() {
                    Some(v) => {
                        d_lost.get_or_create(&dl).set(v);
                    }
                    None => {
                        d_lost.remove(&dl);
                    }
                }
            }
            "copy" => {
                let from = f["from"].as_str().unwrap_or("");
                let to = f["to"].as_str().unwrap_or("");
                let l = labels(&[("from", from), ("to", to)]);
                if let Some(t) = t {
                    if ok {
                        cp_ok.get_or_create(&l).set(t);
                    } else {
                        cp_fail.get_or_create(&l).set(t);
                    }
                }
            }
            "repo check" => {
                let l = labels(&[("repository", &e.target)]);
                if let Some(t) = t {
                    if ok {
                        chk.get_or_create(&l).set(t);
                    } else {
                        chk_fail.get_or_create(&l).set(t);
                    }
                }
            }
            "failover" | "switchover" if ok => {
                let kind = if e.command == "switchover" {
                    "switchover"
                } else if f["manual"] == serde_json::json!(true) {
                    "manual"
                } else {
                    "auto"
                };
                fo.get_or_create(&labels(&[("service", &e.target), ("kind", kind)]))
                    .inc();
            }
            _ => {}
        }
    }
    // Make sure a service with no failover yet exports 0 for each kind (a counter starts at 0).
    for (name, svc) in &ctx.plan.services {
        if matches!(
            svc,
            Service::Postgres {
                failover: Some(_),
                ..
            }
        ) {
            for kind in ["auto", "manual", "switchover"] {
                let _ = fo.get_or_create(&labels(&[("service", name), ("kind", kind)]));
            }
        }
    }

    // The scheduler's records.
    let s_next = g(
        &mut reg,
        "schedule_next_run_timestamp",
        "When the schedule runs next",
        Some(Unit::Seconds),
    );
    let s_last = g(
        &mut reg,
        "schedule_last_run_timestamp",
        "When the schedule's last run ended",
        Some(Unit::Seconds),
    );
    let s_ok = g(
        &mut reg,
        "schedule_last_success_timestamp",
        "When the schedule's last successful run ended",
        Some(Unit::Seconds),
    );
    let s_up = g(
        &mut reg,
        "schedule_last_run_success",
        "1 when the schedule's last run succeeded, 0 when it failed or was interrupted",
        None,
    );
    let s_running = g(
        &mut reg,
        "schedule_running",
        "1 while a run of the schedule is under way",
        None,
    );
    let s_missed = c(
        &mut reg,
        "schedule_missed_runs",
        "Scheduled runs that passed while the daemon was down",
    );
    let s_skipped = c(
        &mut reg,
        "schedule_skipped_runs",
        "Scheduled runs not started because the previous run still ran",
    );
    let s_overdue = g(
        &mut reg,
        "schedule_overdue",
        "1 when a scheduled run is more than two minutes late",
        None,
    );
    for v in schedules {
        let l = labels(&[("schedule", &v.id)]);
        let ts = |t: Option<jiff::Timestamp>| t.map(|t| t.as_millisecond() as f64 / 1000.0);
        if let Some(n) = ts(v.next) {
            s_next.get_or_create(&l).set(n);
        }
        if let Some(n) = ts(v.record.last_end) {
            s_last.get_or_create(&l).set(n);
        }
        if let Some(n) = ts(v.record.last_success) {
            s_ok.get_or_create(&l).set(n);
        }
        if let Some(o) = &v.record.last_outcome {
            s_up.get_or_create(&l)
                .set(if o == "ok" { 1.0 } else { 0.0 });
        }
        s_running
            .get_or_create(&l)
            .set(if v.running { 1.0 } else { 0.0 });
        s_missed.get_or_create(&l).inc_by(v.record.missed);
        s_skipped.get_or_create(&l).inc_by(v.record.skipped_overlap);
        s_overdue
            .get_or_create(&l)
            .set(if v.overdue_since.is_some() { 1.0 } else { 0.0 });
    }

    // The members, as the failover monitors saw them last.
    let m_up = g(
        &mut reg,
        "member_up",
        "1 when the member passed its last check",
        None,
    );
    let m_role = g(
        &mut reg,
        "member_role",
        "1 for the member's current role (primary or standby)",
        None,
    );
    let m_routed = g(
        &mut reg,
        "member_routed_primary",
        "1 on the member the endpoint routes writes to",
        None,
    );
    let m_tl = g(
        &mut reg,
        "member_timeline",
        "The timeline the member is on, as its last check saw it",
        None,
    );
    let lag_b = g(
        &mut reg,
        "replication_lag",
        "How far a standby is behind the primary's last known position",
        Some(Unit::Bytes),
    );
    let lag_s = g(
        &mut reg,
        "replication_lag",
        "How far behind a standby's replay is",
        Some(Unit::Seconds),
    );
    for (service, shared) in members {
        let Ok(m) = shared.lock() else { continue };
        for (site, h) in m.iter() {
            let l = labels(&[("service", service), ("site", site)]);
            m_up.get_or_create(&l)
                .set(if h.healthy { 1.0 } else { 0.0 });
            m_routed
                .get_or_create(&l)
                .set(if h.routed_primary { 1.0 } else { 0.0 });
            for (role, name) in [(Role::Primary, "primary"), (Role::Standby, "standby")] {
                m_role
                    .get_or_create(&labels(&[
                        ("service", service),
                        ("site", site),
                        ("role", name),
                    ]))
                    .set(if h.role == Some(role) { 1.0 } else { 0.0 });
            }
            if let Some(t) = h.timeline {
                m_tl.get_or_create(&l).set(f64::from(t));
            }
            if let Some(b) = h.lag_bytes {
                lag_b.get_or_create(&l).set(b as f64);
            }
            if let Some(s) = h.lag_seconds {
                lag_s.get_or_create(&l).set(s);
            }
        }
    }
    // Application tiers: what the daemon's checks and answer are now (its route record).
    let h_up = g(
        &mut reg,
        "http_site_healthy",
        "1 while the http service's site passes its checks (thresholds applied)",
        None,
    );
    let h_answer = g(
        &mut reg,
        "http_route",
        "1 on the site the http service's DNS name answers with",
        None,
    );
    for name in ctx.plan.services.keys() {
        if !matches!(
            ctx.plan.services.get(name),
            Some(lifeboat_core::plan::Service::Http { .. })
        ) {
            continue;
        }
        let Some(r) = lifeboat_failover::app::load_record(&ctx.state_dir, name) else {
            continue;
        };
        for (site, st) in &r.sites {
            let l = labels(&[("service", name), ("site", site)]);
            if let Some(h) = st.healthy {
                h_up.get_or_create(&l).set(if h { 1.0 } else { 0.0 });
            }
            h_answer
                .get_or_create(&l)
                .set(if r.site.as_deref() == Some(site.as_str()) {
                    1.0
                } else {
                    0.0
                });
        }
    }
    // Replicated buckets: the replicator's state file.
    let bk_until = g(
        &mut reg,
        "bucket_replicated_until_timestamp",
        "Every source object modified before this instant is in the replica (now minus this is the replication lag)",
        Some(Unit::Seconds),
    );
    let bk_pend = g(
        &mut reg,
        "bucket_pending_objects",
        "Source objects not yet in the replica at the last pass",
        None,
    );
    let bk_pend_b = g(
        &mut reg,
        "bucket_pending",
        "Bytes of the source objects not yet in the replica at the last pass",
        Some(Unit::Bytes),
    );
    let bk_full = g(
        &mut reg,
        "bucket_last_reconcile_timestamp",
        "When the last full comparison of source and replica began",
        Some(Unit::Seconds),
    );
    let bk_fail = g(
        &mut reg,
        "bucket_replication_last_failure_timestamp",
        "When a replication pass last failed",
        Some(Unit::Seconds),
    );
    let bk_failing = g(
        &mut reg,
        "bucket_replication_failing",
        "1 while the bucket's replication fails",
        None,
    );
    let bk_copied = c(
        &mut reg,
        "bucket_copied_objects",
        "Objects copied to the replica (counted in the state directory)",
    );
    let bk_copied_b = c(
        &mut reg,
        "bucket_copied_bytes",
        "Bytes copied to the replica (counted in the state directory)",
    );
    for r in lifeboat_protect::bucket::replicated_services(ctx) {
        let Some(st) = lifeboat_protect::bucket::load_state(&ctx.state_dir, &r.service) else {
            continue;
        };
        let l = labels(&[("service", &r.service)]);
        let secs = |ms: i64| ms as f64 / 1000.0;
        if let Some(t) = st.replicated_until_ms {
            bk_until.get_or_create(&l).set(secs(t));
        }
        bk_pend.get_or_create(&l).set(st.pending_objects as f64);
        bk_pend_b.get_or_create(&l).set(st.pending_bytes as f64);
        if let Some(t) = st.last_full_reconcile_ms {
            bk_full.get_or_create(&l).set(secs(t));
        }
        if let Some(t) = st.last_failure_ms {
            bk_fail.get_or_create(&l).set(secs(t));
        }
        bk_failing
            .get_or_create(&l)
            .set(if st.error.is_some() { 1.0 } else { 0.0 });
        bk_copied.get_or_create(&l).inc_by(st.copied_objects);
        bk_copied_b.get_or_create(&l).inc_by(st.copied_bytes);
    }
    // Repositories and WAL archives (read every minute).
    let r_up = g(
        &mut reg,
        "repository_up",
        "1 when the repository opened at the last probe (its config read with its key)",
        None,
    );
    for (name, ok) in &storage.repos {
        r_up.get_or_create(&labels(&[("repository", name)]))
            .set(if *ok { 1.0 } else { 0.0 });
    }
    let w_read = g(
        &mut reg,
        "wal_archive_readable",
        "1 when the service's WAL archive could be listed and read at the last probe",
        None,
    );
    let w_segs = g(
        &mut reg,
        "wal_archive_segments",
        "WAL segments in the service's archive",
        None,
    );
    let w_gaps = g(
        &mut reg,
        "wal_archive_gap_segments",
        "Segments missing between archived ones: replay stops at the first",
        None,
    );
    let w_last = g(
        &mut reg,
        "wal_archive_last_success_timestamp",
        "When the newest WAL segment reached the archive",
        Some(Unit::Seconds),
    );
    let w_fail = c(&mut reg, "wal_archive_failures", "Failed archive_command runs on the primary (PostgreSQL's pg_stat_archiver: it resets with the server's statistics)");
    let w_fail_t = g(
        &mut reg,
        "wal_archive_last_failure_timestamp",
        "When archive_command last failed on the primary",
        Some(Unit::Seconds),
    );
    let w_wait = g(
        &mut reg,
        "wal_archive_waiting_segments",
        "WAL segments on the primary waiting to be archived",
        None,
    );
    let win_a = g(
        &mut reg,
        "recovery_window_start_timestamp",
        "The earliest point a restore can reach (the oldest base backup's end)",
        Some(Unit::Seconds),
    );
    let win_b = g(
        &mut reg,
        "recovery_window_end_timestamp",
        "The latest point a restore can reach (the last replayable commit)",
        Some(Unit::Seconds),
    );
    for (service, w) in &storage.wal {
        let l = labels(&[("service", service)]);
        w_read
            .get_or_create(&l)
            .set(if w.readable { 1.0 } else { 0.0 });
        if let Some(n) = w.segments {
            w_segs.get_or_create(&l).set(n as f64);
        }
        if let Some(n) = w.gap_segments {
            w_gaps.get_or_create(&l).set(n as f64);
        }
        if let Some(t) = w.last_pushed {
            w_last.get_or_create(&l).set(t);
        }
        if let Some((a, b)) = w.window {
            win_a.get_or_create(&l).set(a);
            win_b.get_or_create(&l).set(b);
        }
        if let Some(a) = &w.archiver {
            w_fail.get_or_create(&l).inc_by(a.failed_count);
            if let Some(t) = a.last_failed {
                w_fail_t.get_or_create(&l).set(t);
            }
            if let Some(n) = a.waiting {
                w_wait.get_or_create(&l).set(n as f64);
            }
        }
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// The evidence log's events (what the metrics need of them), and the last one's number.
fn logged(ctx: &Context) -> (Vec<Logged>, Option<i64>) {
    let Ok(ev) = ctx.evidence() else {
        return (Vec::new(), None);
    };
    let all = ev.list(None).unwrap_or_default();
    let last = all.last().map(|e| e.seq);
    let events = all
        .into_iter()
        .map(|e| Logged {
            time: e.time,
            command: e.command,
            target: e.target,
            outcome: e.outcome,
            duration_ms: e.duration_ms,
            figures: e.figures,
        })
        .collect();
    (events, last)
}

/// The events, read again only when the log has grown: its head file (`SEQ HASH`) names the
/// newest event, and a list that reaches it is kept until the head moves. The head is
/// written just before its event commits, so a list read in between is not kept.
struct Events {
    head: Option<String>,
    events: Arc<Vec<Logged>>,
}

impl Events {
    fn get(&mut self, ctx: &Context) -> Arc<Vec<Logged>> {
        let head = std::fs::read_to_string(ctx.state_dir.join("evidence.head")).ok();
        if head.is_some() && head == self.head {
            return self.events.clone();
        }
        let (events, last) = logged(ctx);
        let head_seq = head
            .as_deref()
            .and_then(|h| h.split_whitespace().next())
            .and_then(|n| n.parse::<i64>().ok());
        self.events = Arc::new(events);
        self.head = head.filter(|_| head_seq.is_some() && head_seq == last);
        self.events.clone()
    }
}

/// Rebuild the text every `every` (sooner never matters: records change at human pace, the
/// members' view is at most that old).
pub async fn refresh(
    ctx: Context,
    members: Vec<(String, Shared)>,
    text: Arc<RwLock<String>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let storage = Arc::new(RwLock::new(Storage::default()));
    let probe = ctx
        .plan
        .metrics
        .as_ref()
        .and_then(|m| m.probe_interval.map(|d| d.0))
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    // The repositories and archives every minute, in a task of their own (a slow repository
    // delays only these figures).
    {
        let (ctx, storage, mut stop) = (ctx.clone(), storage.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let c = ctx.clone();
                if let Ok(mut st) = tokio::task::spawn_blocking(move || read_storage(&c)).await {
                    read_archivers(&ctx, &mut st).await;
                    if let Ok(mut w) = storage.write() {
                        *w = st;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(probe) => {}
                    r = stop.changed() => {
                        if r.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let cache = Arc::new(std::sync::Mutex::new(Events {
        head: None,
        events: Arc::new(Vec::new()),
    }));
    loop {
        let c = ctx.clone();
        let m = members.clone();
        let st = storage.read().map(|s| s.clone()).unwrap_or_default();
        let cache = cache.clone();
        let built = tokio::task::spawn_blocking(move || {
            let events = match cache.lock() {
                Ok(mut k) => k.get(&c),
                Err(_) => Arc::new(logged(&c).0),
            };
            let views = crate::schedule::views(
                &c.plan,
                &c.state_dir,
                jiff::Timestamp::now(),
                Duration::from_secs(120),
            );
            render(&c, &events, &views, &m, &st)
        })
        .await;
        if let Ok(t) = built {
            if let Ok(mut w) = text.write() {
                *w = t;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// The OpenMetrics text as an HTTP response.
pub fn response(text: &RwLock<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text.read().map(|t| t.clone()).unwrap_or_default(),
    )
        .into_response()
}

/// `GET /metrics` (and `/` with a pointer to it) from the text `refresh` keeps.
pub fn router(text: Arc<RwLock<String>>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(t): axum::extract::State<Arc<RwLock<String>>>| async move {
                    response(&t)
                },
            ),
        )
        .route("/", get(|| async { "Lifeboat: metrics at /metrics\n" }))
        .with_state(text)
}

/// Counts by name, for tests: the value of a sample line `name{labels} value`.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every metric family name the text declares (`# TYPE name kind`).
pub fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (n, k) = l.split_once(' ')?;
            Some((n.to_string(), k.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_failover::healthapi::MemberHealth;

    fn event(command: &str, target: &str, outcome: &str, figures: serde_json::Value) -> Logged {
        Logged {
            time: "2026-12-01T10:00:00Z".into(),
            command: command.into(),
            target: target.into(),
            outcome: outcome.into(),
            duration_ms: 1500,
            figures,
        }
    }

    /// Every kind of record once: every family has a sample.
    fn everything() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "key\n").unwrap();
        let plan = dir.path().join("lifeboat.yaml");
        std::fs::write(
            &plan,
            r#"name: m
tiers: { gold: { rpo: 0, rto: 30s }, std: { rpo: 1h, rto: 4h } }
sites: [east, west]
services:
  db:
    kind: postgres
    tier: gold
    members:
      east: { host: 127.0.0.1, port: 5432 }
      west: { host: 127.0.0.2, port: 5432 }
    failover: { listen: "127.0.0.1:6432" }
  etc: { kind: paths, tier: std, paths: [/etc] }
  app:
    kind: http
    tier: gold
    follows: db
    health: { east: "http://10.0.1.5/health", west: "http://10.0.2.5/health" }
  uploads:
    kind: bucket
    tier: std
    source: { url: "s3://uploads?endpoint=http://127.0.0.1:9000" }
    replica: { url: "s3://uploads-dr?endpoint=http://127.0.0.1:9001" }
repositories:
  main: { url: repo, key_file: k }
  dr: { url: repo2, key_file: k }
backups:
  etc: { service: etc, repository: main, schedule: "@daily" }
"#,
        )
        .unwrap();
        let ctx = Context::load(&plan).unwrap();
        // What the app's monitor and the bucket's replicator keep on disk.
        std::fs::create_dir_all(ctx.state_dir.join("routes")).unwrap();
        std::fs::write(
            ctx.state_dir.join("routes/app.json"),
            r#"{"site": "west", "reason": "x", "time": "2026-12-01T00:00:00Z",
                "sites": {"east": {"healthy": false}, "west": {"healthy": true}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(ctx.state_dir.join("buckets")).unwrap();
        std::fs::write(
            ctx.state_dir.join("buckets/uploads.json"),
            r#"{"replicated_until_ms": 1796119000000, "pending_objects": 3, "pending_bytes": 300,
                "source_objects": 10, "source_bytes": 1000, "last_full_reconcile_ms": 1796118000000,
                "copied_objects": 7, "copied_bytes": 700, "deleted_objects": 0,
                "error": "the replica bucket s3://uploads-dr: listing: denied", "last_failure_ms": 1796119500000,
                "time_ms": 1796119600000}"#,
        )
        .unwrap();
        let sched = ctx.state_dir.join("schedule");
        std::fs::create_dir_all(&sched).unwrap();
        std::fs::write(
            sched.join("state.json"),
            r#"{"backups.etc": {"last_due": "2026-12-01T00:00:00Z", "last_end": "2026-12-01T00:00:05Z", "last_success": "2026-12-01T00:00:05Z", "last_outcome": "ok", "missed": 2}}"#,
        )
        .unwrap();
        let events = vec![
            event(
                "backup",
                "etc",
                "ok",
                serde_json::json!({"service": "etc", "repository": "main", "kind": "files", "summary": {"bytes_read": 100, "bytes_added_packed": 10}}),
            ),
            event(
                "backup",
                "etc",
                "failed",
                serde_json::json!({"service": "etc", "repository": "main", "kind": "files"}),
            ),
            event(
                "verify restore",
                "db",
                "ok",
                serde_json::json!({"restore_ms": 2000, "data_age_ms": 500}),
            ),
            event("verify restore", "db", "failed", serde_json::json!({})),
            event(
                "drill",
                "db",
                "passed",
                serde_json::json!({"drill": "monthly", "scenario": "kill-primary", "rto_ms": 700, "rpo_ms": 0, "writes": {"lost": 0}}),
            ),
            event(
                "copy",
                "main -> dr",
                "ok",
                serde_json::json!({"from": "main", "to": "dr"}),
            ),
            event(
                "copy",
                "main -> dr",
                "failed",
                serde_json::json!({"from": "main", "to": "dr"}),
            ),
            event("repo check", "main", "ok", serde_json::json!({})),
            event("repo check", "main", "failed", serde_json::json!({})),
            event(
                "failover",
                "db",
                "ok",
                serde_json::json!({"action": "failover"}),
            ),
            event("failover", "db", "ok", serde_json::json!({"manual": true})),
            event("switchover", "db", "ok", serde_json::json!({})),
            event(
                "route",
                "app",
                "ok",
                serde_json::json!({"from": "east", "to": "west", "change": "follows the database"}),
            ),
        ];
        let views = crate::schedule::views(
            &ctx.plan,
            &ctx.state_dir,
            jiff::Timestamp::now(),
            Duration::from_secs(120),
        );
        let shared: Shared = Default::default();
        shared.lock().unwrap().insert(
            "west".into(),
            MemberHealth {
                site: "west".into(),
                healthy: true,
                role: Some(Role::Standby),
                lag_bytes: Some(10),
                lag_seconds: Some(0.5),
                timeline: Some(3),
                ..Default::default()
            },
        );
        let mut storage = Storage::default();
        storage.repos.insert("main".into(), true);
        storage.wal.insert(
            "db".into(),
            WalState {
                readable: true,
                segments: Some(10),
                gap_segments: Some(0),
                last_pushed: Some(1796119000.0),
                window: Some((1796110000.0, 1796119000.0)),
                archiver: Some(lifeboat_pg::ops::Archiver {
                    failed_count: 2,
                    last_failed: Some(1796100000.0),
                    last_archived: Some(1796119000.0),
                    waiting: Some(1),
                }),
            },
        );
        let text = render(&ctx, &events, &views, &[("db".into(), shared)], &storage);
        (dir, text)
    }

    #[test]
    fn the_records_become_the_samples_they_stand_for() {
        let (_d, t) = everything();
        let v = |s: &str| sample(&t, s).unwrap_or_else(|| panic!("no {s} in\n{t}"));
        let at = 1796119200.0; // 2026-12-01T10:00:00Z
        assert_eq!(
            v(
                r#"lifeboat_backup_last_success_timestamp_seconds{job="etc",service="etc",repository="main",kind="files"}"#
            ),
            at
        );
        assert_eq!(
            v(r#"lifeboat_backup_runs_total{job="etc",result="failure"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_backup_size_bytes{job="etc",service="etc",stage="stored"}"#),
            10.0
        );
        assert_eq!(
            v(r#"lifeboat_drill_measured_rto_seconds{drill="monthly"}"#),
            0.7
        );
        assert_eq!(
            v(r#"lifeboat_failovers_total{service="db",kind="auto"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_failovers_total{service="db",kind="manual"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_failovers_total{service="db",kind="switchover"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_objective_rpo_seconds{service="etc",tier="std"}"#),
            3600.0
        );
        assert_eq!(v(r#"lifeboat_http_route{service="app",site="west"}"#), 1.0);
        assert_eq!(v(r#"lifeboat_http_route{service="app",site="east"}"#), 0.0);
        assert_eq!(
            v(r#"lifeboat_http_site_healthy{service="app",site="east"}"#),
            0.0
        );
        assert_eq!(
            v(r#"lifeboat_http_route_changes_total{service="app",change="follows the database"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_bucket_replicated_until_timestamp_seconds{service="uploads"}"#),
            1796119000.0
        );
        assert_eq!(
            v(r#"lifeboat_bucket_pending_objects{service="uploads"}"#),
            3.0
        );
        assert_eq!(
            v(r#"lifeboat_bucket_replication_failing{service="uploads"}"#),
            1.0
        );
        assert_eq!(
            v(r#"lifeboat_bucket_copied_bytes_total{service="uploads"}"#),
            700.0
        );
        assert_eq!(
            v(r#"lifeboat_replication_lag_bytes{service="db",site="west"}"#),
            10.0
        );
        assert_eq!(
            v(r#"lifeboat_member_role{service="db",site="west",role="standby"}"#),
            1.0
        );
        assert!(
            t.contains("lifeboat_schedule_next_run_timestamp_seconds{schedule=\"backups.etc\"}")
        );
        assert_eq!(
            v(r#"lifeboat_wal_archive_failures_total{service="db"}"#),
            2.0
        );
        assert_eq!(
            v(r#"lifeboat_recovery_window_end_timestamp_seconds{service="db"}"#),
            1796119000.0
        );
        assert_eq!(v(r#"lifeboat_repository_up{repository="main"}"#), 1.0);
        assert_eq!(
            v(r#"lifeboat_member_timeline{service="db",site="west"}"#),
            3.0
        );
    }

    #[test]
    fn every_metric_the_shipped_alert_rules_and_dashboard_name_is_exported() {
        let (_d, t) = everything();
        let declared = families(&t);
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let rules = std::fs::read_to_string(deploy.join("prometheus/lifeboat-rules.yml")).unwrap()
            + &std::fs::read_to_string(deploy.join("grafana/lifeboat.json")).unwrap();
        let mut named: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lifeboat_") && !w.ends_with('_'))
            .collect();
        named.sort();
        named.dedup();
        assert!(named.len() > 20, "{named:?}");
        for n in named {
            let family = n.strip_suffix("_total").unwrap_or(n);
            assert!(
                declared.contains_key(family),
                "the rules or the dashboard name {n}, which the daemon does not export:\n{t}"
            );
        }
    }
}
