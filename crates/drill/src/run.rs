//! Running one drill: check the service, start the writers, inject the fault (written to the
//! ledger first), wait for the recovery within the guardrails, heal, count, put the service
//! back together, report and record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_context::Context;
use lifeboat_core::plan::{Drill, ReplicationMode, Service, SteadyCheck, FAILOVER_SCENARIOS};
use lifeboat_core::{Error, Kind};
use lifeboat_pg::ops::Session;
use lifeboat_pg::workload::{self, Outcome};
use lifeboat_pg::{Member, PgService};

use crate::ledger::{start_time, Fault, Ledger, RunLock};
use crate::measure::{self, Attempt};
use crate::report::{Measured, Objective, Part, Report, SteadyResult, Written};

/// Set by SIGINT/SIGTERM (see [`install_interrupt`]): the drill heals and reports "interrupted".
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Route SIGINT and SIGTERM to [`INTERRUPTED`]. Call before any other thread starts.
pub fn install_interrupt() {
    lifeboat_context::signals::on_termination(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("interrupted: healing the drill's faults and putting the service back");
        // A restore in progress stops waiting when its sandbox server is gone.
        lifeboat_protect::pitr::stop_sandboxes();
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    /// Negative control: freeze the primary's WAL senders (SIGSTOP) before the writers start,
    /// so nothing written from then on reaches a standby: an async tier loses it at the
    /// fault, a sync tier stops acknowledging.
    pub freeze_replication: bool,
    /// Where reports go. Default: `STATE_DIR/drill/reports`.
    pub report_dir: Option<PathBuf>,
}

/// A drill of the plan by name, or a scenario run with defaults against the plan's postgres
/// service (the one with failover, when there are several).
pub fn resolve(ctx: &Context, what: &str) -> Result<(String, Drill), Error> {
    if let Some(d) = ctx.plan.drills.get(what) {
        return Ok((what.to_string(), d.clone()));
    }
    if !lifeboat_core::plan::DRILL_SCENARIOS.contains(&what) {
        let mut names: Vec<String> = ctx.plan.drills.keys().cloned().collect();
        names.extend(
            lifeboat_core::plan::DRILL_SCENARIOS
                .iter()
                .map(|s| s.to_string()),
        );
        return Err(Error::new(
            Kind::Input,
            format!(
                "`{what}` is neither a drill of the plan nor a scenario (choose one of: {})",
                names.join(", ")
            ),
        ));
    }
    let pg: Vec<(&String, &Service)> = ctx
        .plan
        .services
        .iter()
        .filter(|(_, s)| matches!(s, Service::Postgres { .. }))
        .collect();
    let with_failover: Vec<&String> = pg
        .iter()
        .filter(|(_, s)| {
            matches!(
                s,
                Service::Postgres {
                    failover: Some(_),
                    ..
                }
            )
        })
        .map(|(n, _)| *n)
        .collect();
    let service = match (pg.len(), with_failover.as_slice()) {
        (0, _) => {
            return Err(Error::new(
                Kind::Input,
                "the plan has no postgres service to drill",
            ))
        }
        (1, _) => pg[0].0.clone(),
        (_, [one]) => (*one).clone(),
        _ => {
            return Err(Error::new(
                Kind::Input,
                format!("the plan has several postgres services: add a drill to the plan's `drills:` naming the `service` to run `{what}` against"),
            ))
        }
    };
    let d = Drill {
        scenario: what.to_string(),
        service,
        ..Default::default()
    };
    let mut errs = Vec::new();
    let mut plan = ctx.plan.clone();
    plan.drills = [(what.to_string(), d.clone())].into();
    for (field, msg) in lifeboat_core::validate::validate(
        &plan,
        &lifeboat_core::validate::Declared {
            tiers: plan.tiers.keys().cloned().collect(),
            services: plan.services.keys().cloned().collect(),
            repositories: plan.repositories.keys().cloned().collect(),
        },
    ) {
        if field.starts_with("drills.") {
            errs.push(msg);
        }
    }
    if !errs.is_empty() {
        return Err(Error::new(Kind::Input, errs.join("; ")));
    }
    Ok((what.to_string(), d))
}

/// Whether a drill would disturb the service (and needs confirmation outside a lab).
pub fn disruptive(d: &Drill) -> bool {
    !matches!(d.scenario.as_str(), "restore-only" | "corrupt-data")
}

/// One drill, start to end. Errors are for what kept it from starting; once it has started,
/// what goes wrong is in the report (outcome `error`, `aborted`, `interrupted`).
pub fn run(ctx: &Context, name: &str, d: &Drill, o: &RunOpts) -> Result<(Report, Written), Error> {
    let (_lock, abandoned) = RunLock::take(&ctx.state_dir, name)?;
    let ledger = Ledger::new(&ctx.state_dir);
    let mut before_notes = Vec::new();
    if let Some(a) = abandoned {
        before_notes.push(format!(
            "drill `{}` (pid {}) had stopped without finishing",
            a.drill, a.pid
        ));
    }
    for h in ledger.heal()? {
        before_notes.push(format!("left over from an earlier drill, healed: {h}"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    let mut dr = Driver::new(ctx, name, d, o, ledger)?;
    dr.report.after = before_notes;
    let started = Instant::now();
    let result = match d.scenario.as_str() {
        "kill-primary" | "hang-primary" | "partition-site" | "switchover" => dr.failover_drill(&rt),
        "corrupt-data" => dr.corrupt_data(&rt),
        "lose-region" => dr.lose_region(&rt),
        "restore-only" => dr.restore_only(),
        other => Err(Error::new(
            Kind::Input,
            format!("unknown scenario `{other}`"),
        )),
    };
    // Whatever happened: every fault healed.
    match dr.ledger.heal() {
        Ok(h) => dr
            .report
            .after
            .extend(h.into_iter().map(|h| format!("healed: {h}"))),
        Err(e) => dr.report.after.push(format!("healing failed: {e}")),
    }
    if let Err(e) = result {
        dr.report.outcome = "error".into();
        dr.report.reason = Some(match &e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message.clone(),
        });
    }
    dr.teardown(&rt);
    if dr.report.outcome.is_empty() {
        dr.report.outcome = if dr.report.objectives.iter().all(|o| o.met)
            && dr.report.steady_state.iter().all(|s| s.passed)
        {
            "passed".into()
        } else {
            "failed".into()
        };
    }
    dr.report.duration_ms = started.elapsed().as_millis() as u64;
    let dir = o
        .report_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.join("drill/reports"));
    let written = dr.report.write(&dir)?;
    let r = &dr.report;
    let figures = serde_json::json!({
        "drill": r.drill, "scenario": r.scenario, "run_id": r.run_id, "outcome": r.outcome,
        "reason": r.reason, "tier": r.tier,
        "rto_ms": r.measured.rto_ms, "rpo_ms": r.measured.rpo_ms, "rpo_bytes": r.measured.rpo_bytes,
        "writes": r.measured.writes,
        "objectives": r.objectives,
        "reports": {
            "json": {"path": written.json.0.display().to_string(), "sha256": written.json.1},
            "markdown": {"path": written.markdown.0.display().to_string(), "sha256": written.markdown.1},
            "html": {"path": written.html.0.display().to_string(), "sha256": written.html.1},
        },
    });
    ctx.record("drill", &r.service, &r.outcome, started, figures)
        .map_err(|e| Error::new(Kind::Io, format!("recording the drill: {e}")))?;
    Ok((dr.report, written))
}

struct Driver<'a> {
    ctx: &'a Context,
    d: &'a Drill,
    o: &'a RunOpts,
    ledger: Ledger,
    pg: PgService<'a>,
    members: Vec<Member>,
    endpoint: Option<(String, u16)>,
    /// The service's DNS name: the responder's address, the name, its TTL, and the port the
    /// members share (None: they differ, and a DNS client could not find the server).
    dns: Option<(std::net::SocketAddr, String, Duration, Option<u16>)>,
    sync: bool,
    report: Report,
    t0: Instant,
    wall0: jiff::Timestamp,
    rto_target: Option<Duration>,
    rpo_target: Option<Duration>,
    /// The old primary, to rejoin afterwards.
    rejoin: Option<String>,
    run_table: Option<Member>,
    /// lose-region: the survivor's data directory set aside, and where it belongs; put back
    /// if the rebuild fails.
    set_aside: Option<(PathBuf, PathBuf)>,
}

fn new_run_id() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "{}-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
        hex::encode(b)
    )
}

impl<'a> Driver<'a> {
    fn new(
        ctx: &'a Context,
        name: &str,
        d: &'a Drill,
        o: &'a RunOpts,
        ledger: Ledger,
    ) -> Result<Driver<'a>, Error> {
        let svc = ctx.plan.services.get(&d.service).ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!("no service `{}` in the plan", d.service),
            )
        })?;
        let pg = PgService::from_plan(&d.service, svc, &ctx.base)?;
        let mut members = Vec::new();
        for site in pg.members.keys() {
            let mut m = pg.member(site)?;
            m.data_dir = m.data_dir.map(|p| ctx.base.join(p));
            members.push(m);
        }
        let ports: BTreeSet<u16> = members.iter().map(|m| m.port).collect();
        let dns = match svc {
            Service::Postgres { failover, .. } => failover
                .as_ref()
                .and_then(|f| f.dns.as_ref())
                .and_then(|d| {
                    let mut a: std::net::SocketAddr = d.listen.parse().ok()?;
                    if a.ip().is_unspecified() {
                        a.set_ip(if a.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        });
                    }
                    let port = (ports.len() == 1)
                        .then(|| ports.iter().next().copied())
                        .flatten();
                    let ttl = d.ttl.map(|t| t.0).unwrap_or(Duration::from_secs(5));
                    Some((a, d.name.clone(), ttl, port))
                }),
            _ => None,
        };
        let (endpoint, sync) = match svc {
            Service::Postgres {
                failover,
                replication,
                ..
            } => (
                failover
                    .as_ref()
                    .and_then(|f| f.listen.as_ref())
                    .and_then(|l| {
                        let (h, p) = l.rsplit_once(':')?;
                        let h = if h == "0.0.0.0" { "127.0.0.1" } else { h };
                        Some((h.to_string(), p.parse().ok()?))
                    }),
                replication
                    .as_ref()
                    .is_some_and(|r| r.mode == ReplicationMode::Sync),
            ),
            _ => (None, false),
        };
        check_paths(d, endpoint.is_some(), &dns)?;
        let tier = ctx.plan.tiers.get(svc.tier());
        let obj = d.objectives.clone().unwrap_or_default();
        let report = Report {
            drill: name.into(),
            scenario: d.scenario.clone(),
            service: d.service.clone(),
            tier: svc.tier().into(),
            plan: ctx.plan.name.clone(),
            run_id: new_run_id(),
            started: jiff::Timestamp::now().to_string(),
            replication: if members.len() > 1 {
                if sync { "sync" } else { "async" }.into()
            } else {
                String::new()
            },
            host: crate::report::host_description(),
            ..Default::default()
        };
        Ok(Driver {
            ctx,
            d,
            o,
            ledger,
            pg,
            members,
            endpoint,
            dns,
            sync,
            report,
            t0: Instant::now(),
            wall0: jiff::Timestamp::now(),
            rto_target: obj.rto.map(|d| d.0).or(tier.map(|t| t.rto.0)),
            rpo_target: obj.rpo.map(|d| d.0).or(tier.map(|t| t.rpo.0)),
            rejoin: None,
            run_table: None,
            set_aside: None,
        })
    }

    fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    fn member(&self, site: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.site == site)
    }

    /// A member, in the database the drill's table lives in.
    fn in_db(&self, m: &Member) -> Member {
        let mut m = m.clone();
        if let Some(db) = self.d.workload.as_ref().and_then(|w| w.database.clone()) {
            m.dbname = db;
        }
        m
    }

    /// Where writes go: the traffic endpoint, else the member that is primary now.
    fn write_target(&self, primary: &Member) -> Member {
        let mut m = primary.clone();
        if let Some((h, p)) = &self.endpoint {
            m.host = h.clone();
            m.port = *p;
        }
        if let Some(db) = self.d.workload.as_ref().and_then(|w| w.database.clone()) {
            m.dbname = db;
        }
        m
    }

    /// Each member's role now: (site, Some(in_recovery)) or None when it does not answer.
    async fn roles(&self) -> Vec<(String, Option<bool>)> {
        let mut out = Vec::new();
        for m in &self.members {
            let r = match Session::connect(m, Duration::from_secs(2)).await {
                Ok(s) => tokio::time::timeout(Duration::from_secs(2), s.in_recovery())
                    .await
                    .ok()
                    .and_then(|r| r.ok()),
                Err(_) => None,
            };
            out.push((m.site.clone(), r));
        }
        out
    }

    async fn primary(&self) -> Result<Member, Error> {
        let roles = self.roles().await;
        let primaries: Vec<&String> = roles
            .iter()
            .filter(|(_, r)| *r == Some(false))
            .map(|(s, _)| s)
            .collect();
        match primaries.as_slice() {
            [one] => Ok(self.member(one).cloned().unwrap_or_else(|| unreachable!())),
            [] => Err(Error::new(
                Kind::Source,
                format!(
                    "service {} has no primary now ({})",
                    self.d.service,
                    describe_roles(&roles)
                ),
            )
            .hint("`lifeboat status` shows what is wrong; a drill starts from a healthy service")),
            many => Err(Error::new(
                Kind::Source,
                format!(
                    "service {} has {} members taking writes ({}): not a state to drill from",
                    self.d.service,
                    many.len(),
                    describe_roles(&roles)
                ),
            )),
        }
    }

    /// The drill's own nftables table.
    fn nft_table(&self) -> String {
        format!(
            "lifeboat_drill_{}",
            self.report.run_id.to_lowercase().replace('-', "_")
        )
    }

    fn guard_no_write(&self) -> Duration {
        self.d
            .guardrails
            .as_ref()
            .and_then(|g| g.no_write_for.map(|d| d.0))
            .unwrap_or_else(|| {
                (self.rto_target.unwrap_or(Duration::from_secs(60)) + Duration::from_secs(30))
                    .min(Duration::from_secs(600))
            })
    }

    fn guard_total(&self) -> Duration {
        self.d
            .guardrails
            .as_ref()
            .and_then(|g| g.max_duration.map(|d| d.0))
            .unwrap_or(Duration::from_secs(1800))
    }

    fn workload(&self) -> (u32, Duration, Duration, Duration, Duration) {
        let w = self.d.workload.clone().unwrap_or_default();
        (
            w.writers.unwrap_or(2),
            w.interval.map(|d| d.0).unwrap_or(Duration::from_millis(20)),
            w.warmup.map(|d| d.0).unwrap_or(Duration::from_secs(2)),
            w.cooldown.map(|d| d.0).unwrap_or(Duration::from_secs(2)),
            w.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(2)),
        )
    }

    /// Sleep, waking for an interruption.
    async fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if interrupted() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn steady(&mut self, rt: &tokio::runtime::Runtime, phase: &str, target: &Member) -> bool {
        let checks: Vec<SteadyCheck> = self
            .d
            .steady_state
            .iter()
            .filter(|c| in_phase(c, phase))
            .cloned()
            .collect();
        let mut ok = true;
        for c in checks {
            let r = rt.block_on(check(&c, target));
            ok &= r.is_ok();
            self.report.steady_state.push(SteadyResult {
                name: check_name(&c),
                phase: phase.into(),
                runs: 1,
                failures: u32::from(r.is_err()),
                passed: r.is_ok(),
                detail: r.unwrap_or_else(|e| e),
            });
        }
        ok
    }

    fn abort(&mut self, outcome: &str, reason: String) {
        if self.report.outcome.is_empty() {
            self.report.outcome = outcome.into();
            self.report.reason = Some(reason);
        }
    }

    /// kill-primary, hang-primary, switchover: writers through the endpoint, the fault on the
    /// primary, then the daemon's failover (or the switchover) measured from the writes.
    fn failover_drill(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), Error> {
        let scenario = self.d.scenario.clone();
        let primary = rt.block_on(self.primary())?;
        self.report.primary_before = Some(primary.site.clone());
        let standbys: Vec<Member> = self
            .members
            .iter()
            .filter(|m| m.site != primary.site)
            .cloned()
            .collect();
        if standbys.is_empty() {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "`{scenario}` needs a standby to fail over to, and service {} has one member",
                    self.d.service
                ),
            ));
        }
        let control = lifeboat_failover::control::Control::new(&self.ctx.state_dir);
        if FAILOVER_SCENARIOS.contains(&scenario.as_str()) && !control.daemon_running() {
            return Err(Error::new(
                Kind::Input,
                format!("no `lifeboat serve` is watching service {}: nothing would fail it over, so the drill would only measure an outage", self.d.service),
            )
            .hint("start the daemon (`lifeboat serve`) for this plan, then run the drill"));
        }
        // The standbys stream (a drill starts from a healthy service).
        let s = rt.block_on(Session::connect(
            &self.in_db(&primary),
            Duration::from_secs(5),
        ))?;
        let mut streaming = Vec::new();
        for m in &standbys {
            if rt.block_on(s.standby_state(&m.site))? == "streaming" {
                streaming.push(m.site.clone());
            }
        }
        if streaming.is_empty() {
            return Err(Error::new(
                Kind::Source,
                format!(
                    "no standby of {} streams from the primary {} now",
                    self.d.service, primary.site
                ),
            )
            .hint("`lifeboat status` shows the standbys; rejoin one first (`lifeboat rejoin`)"));
        }
        let to = match (&self.d.site, scenario.as_str()) {
            (Some(s), _) => s.clone(),
            (None, _) => streaming[0].clone(),
        };
        let pids = lifeboat_pg::ops::processes(&primary);
        if scenario == "partition-site" {
            // A site in a namespace is isolated by setting its links down (no nftables).
            let shape = self.d.partition.as_deref().unwrap_or("isolate");
            let links_only = primary.netns.is_some() && shape != "one-way";
            check_nft(!links_only)?;
            if shape == "coordinator" && self.members.iter().any(|m| m.netns.is_none()) {
                return Err(Error::new(
                    Kind::Input,
                    "a `coordinator` partition cuts every site off from this machine and leaves them each other: it needs every member in its own network namespace",
                )
                .hint("run it on a lab built by root (`lifeboat lab up`), or choose `isolate` or `one-way`"));
            }
        }
        if (scenario == "kill-primary" || scenario == "hang-primary") && pids.is_empty() {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "the primary {}'s processes are not on this host (its data_dir {}): `{scenario}` signals them",
                    primary.site,
                    primary.data_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "is not in the plan".into())
                ),
            )
            .hint("run the drill on the primary's host"));
        }
        rt.block_on(workload::prepare(&s, &self.report.run_id))?;
        drop(s);
        let target = self.write_target(&primary);
        self.run_table = Some(target.clone());
        if !self.steady(rt, "before", &target) {
            self.abort(
                "aborted",
                "the steady state does not hold before the fault: nothing was injected".into(),
            );
            return Ok(());
        }
        if self.o.freeze_replication {
            // The primary's WAL senders, frozen: what it commits from now on reaches no
            // standby (a frozen receiver would still read what the kernel buffered for it).
            let frozen: Vec<(u32, u64)> = lifeboat_pg::ops::processes(&primary)
                .into_iter()
                .filter(|p| cmdline(*p).contains("walsender"))
                .filter_map(|p| Some((p, start_time(p)?)))
                .collect();
            if frozen.is_empty() {
                return Err(Error::new(
                    Kind::Source,
                    "--freeze-replication: the primary has no WAL sender process on this host",
                ));
            }
            self.ledger.add(Fault::Stopped {
                what: "the primary's WAL senders frozen (negative control)".into(),
                pids: frozen.clone(),
            })?;
            for (pid, _) in &frozen {
                // SAFETY: kill(2) of a pid read from /proc just now, written to the ledger.
                unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
            }
        }
        let (writers, interval, warmup, cooldown, timeout) = self.workload();
        let (log, stop, tasks) = self.start_writers(rt, &target, writers, interval, timeout)?;
        let during = self.start_during(rt, &target, stop.clone());
        let mut child = None;
        let mut heal_at: Option<Instant> = None;
        let result = (|| -> Result<(), Error> {
            if !rt.block_on(self.pause(warmup)) {
                self.abort("interrupted", "interrupted before the fault".into());
                return Ok(());
            }
            if !self.every_path_wrote(&log) {
                return Ok(());
            }
            match scenario.as_str() {
                "kill-primary" => {
                    let pids = lifeboat_pg::ops::processes(&primary);
                    for pid in &pids {
                        // SAFETY: kill(2) of the primary's processes, found by their cwd.
                        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    }
                    self.report.fault = Some(format!(
                        "the primary {}'s {} processes killed (SIGKILL)",
                        primary.site,
                        pids.len()
                    ));
                }
                "hang-primary" => {
                    let pids: Vec<(u32, u64)> = lifeboat_pg::ops::processes(&primary)
                        .into_iter()
                        .filter_map(|p| Some((p, start_time(p)?)))
                        .collect();
                    self.ledger.add(Fault::Stopped {
                        what: format!("primary {} frozen", primary.site),
                        pids: pids.clone(),
                    })?;
                    for (pid, _) in &pids {
                        // SAFETY: as above; written to the ledger first.
                        unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
                    }
                    self.report.fault = Some(format!(
                        "the primary {}'s {} processes frozen (SIGSTOP)",
                        primary.site,
                        pids.len()
                    ));
                }
                "partition-site" if self.d.partition.as_deref() == Some("coordinator") => {
                    // Every site cut off from this machine (the daemon, the endpoint, the
                    // writers); the sites still reach each other. Healed after `hold`.
                    let cut: Vec<(String, String)> = self
                        .members
                        .iter()
                        .filter_map(|m| Some((m.site.clone(), m.netns.clone()?)))
                        .collect();
                    self.ledger.add(Fault::Command {
                        what: format!(
                            "sites {} cut off from this machine (their {} links down)",
                            cut.iter()
                                .map(|(s, _)| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            crate::labnet::HOST_LINK
                        ),
                        heal: cut
                            .iter()
                            .map(|(_, ns)| {
                                format!("ip -n '{ns}' link set {} up", crate::labnet::HOST_LINK)
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                        privileged: true,
                    })?;
                    for (_, ns) in &cut {
                        crate::labnet::run(
                            "ip",
                            &["-n", ns, "link", "set", crate::labnet::HOST_LINK, "down"],
                        )?;
                    }
                    let hold = self.d.hold.map(|h| h.0).unwrap_or(Duration::from_secs(5));
                    heal_at = Some(Instant::now() + hold);
                    self.report.fault = Some(format!(
                        "every site cut off from the coordinator for {} s (the sites still reach each other): coordinator",
                        hold.as_secs_f64()
                    ));
                }
                "partition-site" if primary.netns.is_some() => {
                    // A site in its own network namespace: its links go down (isolate), or
                    // a table inside the namespace drops what comes in (one-way). This
                    // machine's rules are never touched.
                    let ns = primary.netns.clone().unwrap_or_default();
                    let shape = self.d.partition.clone().unwrap_or_else(|| "isolate".into());
                    if shape == "one-way" {
                        let table = self.nft_table();
                        self.ledger.add(Fault::Command {
                            what: format!(
                                "primary {} cut off (one-way, nftables table {table} in namespace {ns})",
                                primary.site
                            ),
                            heal: format!("ip netns exec '{ns}' nft delete table inet {table}"),
                            privileged: true,
                        })?;
                        nft_apply_in(
                            Some(&ns),
                            &partition_rules(&table, &primary.host, primary.port, &shape),
                        )?;
                    } else {
                        let links = crate::labnet::links_of(&ns);
                        if links.is_empty() {
                            return Err(Error::new(
                                Kind::Source,
                                format!("network namespace {ns} has no link to set down"),
                            ));
                        }
                        self.ledger.add(Fault::Command {
                            what: format!(
                                "site {} cut off: links {} of namespace {ns} down",
                                primary.site,
                                links.join(", ")
                            ),
                            heal: links
                                .iter()
                                .map(|l| format!("ip -n '{ns}' link set '{l}' up"))
                                .collect::<Vec<_>>()
                                .join("; "),
                            privileged: true,
                        })?;
                        for l in &links {
                            crate::labnet::run("ip", &["-n", &ns, "link", "set", l, "down"])?;
                        }
                    }
                    self.report.fault = Some(format!(
                        "site {} (namespace {ns}) cut off the network: {shape}",
                        primary.site
                    ));
                }
                "partition-site" => {
                    let shape = self.d.partition.clone().unwrap_or_else(|| "isolate".into());
                    let table = self.nft_table();
                    self.ledger.add(Fault::Command {
                        what: format!(
                            "primary {} cut off ({shape}, nftables table {table})",
                            primary.site
                        ),
                        heal: format!("nft delete table inet {table}"),
                        privileged: true,
                    })?;
                    nft_apply(&partition_rules(
                        &table,
                        &primary.host,
                        primary.port,
                        &shape,
                    ))?;
                    self.report.fault = Some(format!(
                        "the primary {} ({}:{}) cut off the network: {shape}",
                        primary.site, primary.host, primary.port
                    ));
                }
                _ => {
                    let mut c = crate::lifeboat_command(self.ctx);
                    c.args(["switchover", &self.d.service, "--to", &to]);
                    c.stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped());
                    child = Some(c.spawn().map_err(|e| {
                        Error::new(Kind::Internal, format!("starting lifeboat switchover: {e}"))
                    })?);
                    self.report.fault =
                        Some(format!("planned switchover from {} to {to}", primary.site));
                }
            }
            // The fault's instant is when it has taken effect: a write that began while the
            // processes were still being found and signalled may still be acknowledged by the
            // old primary, and must not count as the service being back.
            let fault_ms = self.now_ms();
            self.report.fault_at_ms = Some(fault_ms);
            if scenario != "switchover" {
                // Whatever happens next, the old primary is put back as a standby if the
                // daemon failed over from it.
                self.rejoin = Some(primary.site.clone());
            }
            // Wait for the first acknowledged write that began after the fault.
            // A switchover is over when its command is; the recovery is a write after that.
            let mut since = fault_ms;
            loop {
                if let Some(c) = child.as_mut() {
                    if c.try_wait().ok().flatten().is_none() {
                        since = self.now_ms();
                    }
                }
                // A partition that heals by itself: the recovery is a write after it.
                if let Some(at) = heal_at {
                    if Instant::now() < at {
                        since = self.now_ms();
                    } else {
                        heal_at = None;
                        for h in self.ledger.heal()? {
                            self.report
                                .after
                                .push(format!("healed after the hold: {h}"));
                        }
                    }
                }
                match self.recovered(&log, since, fault_ms) {
                    Some(true) => break,
                    Some(false) => return Ok(()),
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if !rt.block_on(self.pause(cooldown)) {
                self.abort("interrupted", "interrupted after the recovery".into());
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = rt.block_on(t);
        }
        if let Some(d) = during {
            if let Ok(results) = rt.block_on(d) {
                self.report.steady_state.extend(results);
            }
        }
        if let Some(c) = child {
            let out = c.wait_with_output();
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                let last = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                self.report.after.push(format!(
                    "lifeboat switchover exited {}: {}",
                    out.status.code().unwrap_or(-1),
                    last.trim()
                ));
                if !out.status.success() {
                    self.abort(
                        "error",
                        format!(
                            "the switchover failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    );
                }
            }
        }
        // Heal before counting: a frozen old primary is continued (the endpoint no longer
        // routes to it) and rejoined below.
        for h in self.ledger.heal()? {
            self.report.after.push(format!("healed: {h}"));
        }
        result?;
        let attempts = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        self.report.attempts = attempts;
        self.count_failover(rt, &primary)?;
        if self.d.partition.as_deref() == Some("coordinator") {
            // Cut off from both sites, the daemon cannot know the primary failed: it must
            // not fail over, and the primary must simply be back.
            let moved = self.report.primary_after.as_deref() != Some(primary.site.as_str());
            let name = self
                .report
                .primary_after
                .clone()
                .unwrap_or_else(|| "none".into());
            self.report.objectives.push(Objective {
                name: "failovers".into(),
                target: "0 (the coordinator saw neither site)".into(),
                measured: if moved {
                    format!("1: the primary is now {name}")
                } else {
                    "0".into()
                },
                met: !moved,
            });
        }
        Ok(())
    }

    /// Whether the writers saw the service back: Some(true) once a write that began after
    /// `since` was acknowledged, Some(false) when the drill must stop (interrupted, or a
    /// guardrail tripped: the report says which), None to keep waiting.
    fn recovered(&mut self, log: &Mutex<Vec<Attempt>>, since: f64, fault_ms: f64) -> Option<bool> {
        if measure::back_on_every_path(&log.lock().unwrap_or_else(|e| e.into_inner()), since) {
            return Some(true);
        }
        let no_write = self.guard_no_write();
        let total = self.guard_total();
        if interrupted() {
            self.abort(
                "interrupted",
                "interrupted before the service recovered".into(),
            );
        } else if self.now_ms() - fault_ms > no_write.as_secs_f64() * 1000.0 {
            self.abort(
                "aborted",
                format!(
                    "guardrail: no write succeeded for {} s after the fault",
                    no_write.as_secs()
                ),
            );
        } else if self.t0.elapsed() > total {
            self.abort(
                "aborted",
                format!("guardrail: the drill ran longer than {} s", total.as_secs()),
            );
        } else {
            return None;
        }
        Some(false)
    }

    /// The run's table on the primary: a session there, and where the writers write.
    fn prepare_run(
        &mut self,
        rt: &tokio::runtime::Runtime,
        primary: &Member,
    ) -> Result<(Session, Member), Error> {
        let s = rt.block_on(Session::connect(
            &self.in_db(primary),
            Duration::from_secs(5),
        ))?;
        rt.block_on(workload::prepare(&s, &self.report.run_id))?;
        let target = self.write_target(primary);
        self.run_table = Some(target.clone());
        Ok((s, target))
    }

    /// The paths the writers take (the plan's `through`, or the endpoint and, when it can
    /// work, the DNS name), written into the report.
    fn vias(&mut self, target: &Member) -> Result<Vec<Via>, Error> {
        let asked = self.d.workload.as_ref().and_then(|w| w.through.clone());
        let dns_possible = self.dns.as_ref().is_some_and(|d| d.3.is_some());
        let wanted = asked.clone().unwrap_or_else(|| {
            let mut v = vec!["endpoint".to_string()];
            if dns_possible {
                v.push("dns".into());
            }
            v
        });
        let mut out = Vec::new();
        for w in &wanted {
            if w == "endpoint" {
                out.push(Via::Endpoint(target.clone()));
                continue;
            }
            // Checked when the drill was set up (check_paths).
            let Some((server, name, ttl, Some(port))) = self.dns.clone() else {
                continue;
            };
            let mut m = target.clone();
            m.port = port;
            out.push(Via::Dns {
                server,
                name,
                ttl,
                template: m,
            });
        }
        self.report.measured.paths = out
            .iter()
            .map(|v| crate::report::PathRto {
                via: v.name().into(),
                detail: v.describe(self.endpoint.is_some()),
                ..Default::default()
            })
            .collect();
        Ok(out)
    }

    /// The workload's writers (`writers` per path), started; their log and the flag that
    /// stops them.
    #[allow(clippy::type_complexity)]
    fn start_writers(
        &mut self,
        rt: &tokio::runtime::Runtime,
        target: &Member,
        writers: u32,
        interval: Duration,
        timeout: Duration,
    ) -> Result<
        (
            Arc<Mutex<Vec<Attempt>>>,
            Arc<AtomicBool>,
            Vec<tokio::task::JoinHandle<()>>,
        ),
        Error,
    > {
        let vias = self.vias(target)?;
        let log = Arc::new(Mutex::new(Vec::<Attempt>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();
        let many = vias.len() > 1;
        for (i, via) in vias.iter().enumerate() {
            for w in 0..writers {
                tasks.push(rt.spawn(writer(
                    via.clone(),
                    many,
                    self.report.run_id.clone(),
                    i as u32 * writers + w,
                    next.clone(),
                    self.t0,
                    stop.clone(),
                    log.clone(),
                    interval,
                    timeout,
                )));
            }
        }
        Ok((log, stop, tasks))
    }

    /// Before the fault: every path must have carried a write, or the drill would measure a
    /// path that never worked. False (and the drill aborted, nothing injected) otherwise.
    fn every_path_wrote(&mut self, log: &Mutex<Vec<Attempt>>) -> bool {
        let a = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in &self.report.measured.paths.clone() {
            let mine: Vec<&Attempt> = a
                .iter()
                .filter(|x| x.via.as_deref().is_none_or(|v| v == p.via))
                .collect();
            if !mine.iter().any(|x| x.acked()) {
                let last = mine
                    .iter()
                    .rev()
                    .find_map(|x| x.error.clone())
                    .unwrap_or_else(|| "no attempt finished".into());
                self.abort(
                    "aborted",
                    format!(
                        "the writers through the {} ({}) had no acknowledged write before the fault ({last}): nothing was injected",
                        p.via, p.detail
                    ),
                );
                return false;
            }
        }
        true
    }

    fn start_during(
        &self,
        rt: &tokio::runtime::Runtime,
        target: &Member,
        stop: Arc<AtomicBool>,
    ) -> Option<tokio::task::JoinHandle<Vec<SteadyResult>>> {
        let checks: Vec<SteadyCheck> = self
            .d
            .steady_state
            .iter()
            .filter(|c| in_phase(c, "during"))
            .cloned()
            .collect();
        if checks.is_empty() {
            return None;
        }
        let target = target.clone();
        Some(rt.spawn(async move {
            let mut res: Vec<SteadyResult> = checks
                .iter()
                .map(|c| SteadyResult {
                    name: check_name(c),
                    phase: "during".into(),
                    runs: 0,
                    failures: 0,
                    passed: true,
                    detail: String::new(),
                })
                .collect();
            while !stop.load(Ordering::SeqCst) {
                for (c, r) in checks.iter().zip(res.iter_mut()) {
                    r.runs += 1;
                    match check(c, &target).await {
                        Ok(d) => r.detail = d,
                        Err(e) => {
                            r.failures += 1;
                            r.detail = e;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for (c, r) in checks.iter().zip(res.iter_mut()) {
                r.passed = r.failures <= c.max_failures.unwrap_or(0);
            }
            res
        }))
    }

    /// After a failover or switchover: which server holds what, and the objectives.
    fn count_failover(&mut self, rt: &tokio::runtime::Runtime, old: &Member) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (now, present, switchpoint) = loop {
            let r = rt.block_on(async {
                let p = self.primary().await?;
                let s = Session::connect(&self.in_db(&p), Duration::from_secs(3)).await?;
                let ids = workload::ids(&s, &self.report.run_id).await?;
                let tli = workload::timeline(&s).await?;
                let sp = workload::switchpoint(&s, tli).await.ok().flatten();
                Ok::<_, Error>((p, ids, sp))
            });
            match r {
                Ok(v) => break v,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        self.report.primary_after = Some(now.site.clone());
        self.report.held = present.clone();
        let present: BTreeMap<u64, u64> = present.into_iter().collect();
        let a = &self.report.attempts;
        let writes = measure::count(a, &present, None);
        let lost: BTreeSet<u64> = a
            .iter()
            .filter(|x| x.acked() && !present.contains_key(&x.id))
            .map(|x| x.id)
            .collect();
        let fault = self.report.fault_at_ms.unwrap_or(0.0);
        // Each path's outage; the RTO is the longest (every client back).
        let mut paths = std::mem::take(&mut self.report.measured.paths);
        let mut gap: Option<(f64, f64)> = None;
        for via in measure::paths(a) {
            let mine = measure::through(a, &via);
            let g = measure::widest_gap(&mine, fault);
            if let Some(p) = paths
                .iter_mut()
                .find(|p| via.as_deref() == Some(p.via.as_str()))
            {
                p.rto_ms = g.map(|(l, f)| (f - l).max(0.0) as u64);
                p.acknowledged = mine.iter().filter(|x| x.acked()).count() as u64;
            }
            if g.is_some_and(|(l, f)| gap.is_none_or(|(gl, gf)| f - l > gf - gl)) {
                gap = g;
            }
        }
        if paths.len() < 2 {
            paths.clear();
        }
        let rto = gap.map(|(l, f)| (f - l).max(0.0) as u64);
        self.report.recovered_at_ms = gap.map(|(_, f)| f);
        let rpo = measure::rpo_ms(a, &present, None) as u64;
        let bytes = if now.site == old.site {
            Some(0).filter(|_| lost.is_empty())
        } else {
            measure::rpo_bytes(a, &lost, switchpoint)
        };
        self.report.measured = Measured {
            rto_ms: rto,
            rpo_ms: Some(rpo),
            rpo_bytes: bytes,
            writes,
            parts: self.daemon_parts(fault),
            paths,
        };
        self.objectives();
        self.app_tiers(fault);
        Ok(())
    }

    /// Application tiers that follow the drilled database: each must answer the site of the
    /// primary after the drill (unless its app fails its checks there). An objective per tier,
    /// measured from the daemon's route record and its evidence (when the name moved).
    fn app_tiers(&mut self, fault_ms: f64) {
        let Some(primary) = self.report.primary_after.clone() else {
            return;
        };
        let fault_wall = self.wall0 + jiff::SignedDuration::from_secs_f64(fault_ms / 1000.0);
        let apps: Vec<String> = self
            .ctx
            .plan
            .services
            .iter()
            .filter(|(_, s)| {
                matches!(s, Service::Http { follows: Some(f), .. } if *f == self.d.service)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for app in apps {
            // The app's monitor follows within a tick of the database's; give it 5 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            let rec = loop {
                let rec = lifeboat_failover::app::load_record(&self.ctx.state_dir, &app);
                let done = rec
                    .as_ref()
                    .is_some_and(|r| r.site.as_deref() == Some(primary.as_str()));
                if done || Instant::now() > deadline {
                    break rec;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let answered = rec.as_ref().and_then(|r| r.site.clone());
            let app_down_there = rec.as_ref().is_some_and(|r| {
                r.sites
                    .get(&primary)
                    .is_some_and(|s| s.healthy == Some(false))
            });
            let moved_ms = self.ctx.evidence().ok().and_then(|ev| {
                let events = ev.list(Some(200)).ok()?;
                let e = events.iter().find(|e| {
                    e.command == "route"
                        && e.target == app
                        && e.figures["to"].as_str() == Some(primary.as_str())
                        && e.time
                            .parse::<jiff::Timestamp>()
                            .is_ok_and(|t| t >= fault_wall)
                })?;
                let t = e.time.parse::<jiff::Timestamp>().ok()?;
                Some(t.duration_since(fault_wall).as_millis().max(0) as u64)
            });
            let measured = match (&answered, moved_ms) {
                (Some(s), Some(ms)) => format!("answers {s}, moved {ms} ms after the fault"),
                (Some(s), None) => format!("answers {s}"),
                (None, _) => "answers no site".into(),
            };
            self.report.objectives.push(Objective {
                name: format!("{app} follows {}", self.d.service),
                target: format!("answers {primary}"),
                measured: if app_down_there && answered.as_deref() != Some(primary.as_str()) {
                    format!("{measured} (its app fails its checks at {primary})")
                } else {
                    measured
                },
                met: answered.as_deref() == Some(primary.as_str()) || app_down_there,
            });
        }
    }

    /// The parts of the recovery from the daemon's evidence: its failover event after the
    /// fault (detected = decided − fault; then each step it timed).
    fn daemon_parts(&self, fault_ms: f64) -> Vec<Part> {
        let fault_wall = self.wall0 + jiff::SignedDuration::from_secs_f64(fault_ms / 1000.0);
        let Ok(ev) = self.ctx.evidence() else {
            return Vec::new();
        };
        let Ok(events) = ev.list(Some(200)) else {
            return Vec::new();
        };
        let Some(e) = events.iter().find(|e| {
            (e.command == "failover" || e.command == "switchover")
                && e.target == self.d.service
                && e.time
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|t| t >= fault_wall)
        }) else {
            return Vec::new();
        };
        let Ok(end) = e.time.parse::<jiff::Timestamp>() else {
            return Vec::new();
        };
        let began = end - jiff::SignedDuration::from_millis(e.duration_ms);
        let mut parts = vec![Part {
            name: "detected".into(),
            ms: began.duration_since(fault_wall).as_millis().max(0) as u64,
            detail: format!(
                "the daemon decided: {}",
                e.figures["reason"].as_str().unwrap_or(&e.command)
            ),
        }];
        if let Some(steps) = e.figures["steps"].as_array() {
            for s in steps {
                parts.push(Part {
                    name: match s["action"].as_str().or(s["step"].as_str()).unwrap_or("") {
                        "fence" => "fenced".into(),
                        "promote" => "promoted".into(),
                        "switch-traffic" => "routed".into(),
                        other => other.to_string(),
                    },
                    ms: s["ms"]
                        .as_u64()
                        .or(s["ms"].as_f64().map(|f| f as u64))
                        .unwrap_or(0),
                    detail: s["detail"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        if let Some(first) = self.report.recovered_at_ms {
            let first_wall = self.wall0 + jiff::SignedDuration::from_secs_f64(first / 1000.0);
            parts.push(Part {
                name: "first write".into(),
                ms: first_wall.duration_since(end).as_millis().max(0) as u64,
                detail: "from the daemon routing to the first acknowledged write".into(),
            });
        }
        parts
    }

    fn objectives(&mut self) {
        let obj = self.d.objectives.clone().unwrap_or_default();
        let m = &self.report.measured;
        let mut out = Vec::new();
        if let Some(t) = self.rpo_target {
            let got = m.rpo_ms.unwrap_or(u64::MAX);
            out.push(Objective {
                name: "RPO".into(),
                target: lifeboat_core::units::Duration(t).to_string(),
                measured: self.report.rpo(),
                met: m.rpo_ms.is_some() && got as u128 <= t.as_millis(),
            });
        }
        if let Some(t) = self.rto_target {
            out.push(Objective {
                name: "RTO".into(),
                target: lifeboat_core::units::Duration(t).to_string(),
                measured: self.report.rto(),
                met: m.rto_ms.is_some_and(|r| r as u128 <= t.as_millis()),
            });
        }
        let lost_target = obj.lost_writes.or(
            // A lost region loses what its copy lacked: the RPO objective governs that.
            if (self.sync && self.d.scenario != "lose-region")
                || self.d.scenario == "switchover"
                || self.o.freeze_replication
            {
                Some(0)
            } else {
                None
            },
        );
        if let Some(t) = lost_target {
            out.push(Objective {
                name: "lost writes".into(),
                target: t.to_string(),
                measured: m.writes.lost.to_string(),
                met: m.writes.lost <= t,
            });
        }
        self.report.objectives = out;
    }

    /// corrupt-data: the drill's own table dropped at a recorded instant, then the service
    /// restored to just before it into a sandbox; the rows there compared with those written.
    fn corrupt_data(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), Error> {
        let primary = rt.block_on(self.primary())?;
        self.report.primary_before = Some(primary.site.clone());
        let (s, target) = self.prepare_run(rt, &primary)?;
        if !self.steady(rt, "before", &target) {
            self.abort(
                "aborted",
                "the steady state does not hold before the fault: nothing was injected".into(),
            );
            return Ok(());
        }
        let (writers, interval, warmup, _, timeout) = self.workload();
        let (log, stop, tasks) = self.start_writers(rt, &target, writers, interval, timeout)?;
        let went_on = rt.block_on(self.pause(warmup));
        // The bad migration: the table dropped, its instant on the server's clock.
        let fault_ms = self.now_ms();
        let before_us = if went_on {
            Some(rt.block_on(workload::drop_table(&s, &self.report.run_id))?)
        } else {
            None
        };
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = rt.block_on(t);
        }
        self.report.attempts = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(before_us) = before_us else {
            self.abort("interrupted", "interrupted before the fault".into());
            return Ok(());
        };
        self.run_table = None;
        self.report.fault_at_ms = Some(fault_ms);
        self.report.fault = Some(format!(
            "the drill's table dropped on {} (DROP TABLE) just after {}",
            primary.site,
            fmt_us(before_us)
        ));
        // Everything up to the drop into the archive.
        rt.block_on(workload::archive_now(&s, Duration::from_secs(60)))?;
        drop(s);
        if interrupted() {
            self.abort("interrupted", "interrupted before the restore".into());
            return Ok(());
        }
        let sandbox = self
            .ctx
            .state_dir
            .join("drill/sandbox")
            .join(&self.report.run_id);
        let port = lifeboat_protect::pitr::free_port()
            .map_err(|e| Error::new(Kind::Io, format!("a free port: {e}")))?;
        let restore = lifeboat_protect::pitr::restore(
            self.ctx,
            &self.d.service,
            &lifeboat_protect::pitr::RestoreOpts {
                target: lifeboat_protect::pitr::Target::Time(before_us),
                dest: sandbox.clone(),
                force: true,
                start: Some(port),
                owner: None,
                wait_timeout: Duration::from_secs(300),
                repository: None,
            },
        );
        let restored_ms = self.now_ms();
        let pg_ctl = self.pg.tool("pg_ctl");
        let counted = match restore {
            Ok(r) => {
                let mut m = self.in_db(&primary);
                m.host = "127.0.0.1".into();
                m.port = port;
                let ids = rt.block_on(async {
                    let s = Session::connect(&m, Duration::from_secs(5)).await?;
                    workload::ids(&s, &self.report.run_id).await
                });
                self.report.after.push(format!(
                    "restored to {} from {} (snapshot {}) in {} ms, on port {port}",
                    fmt_us(before_us),
                    r.repository,
                    r.snapshot,
                    r.duration_ms
                ));
                ids
            }
            Err(e) => Err(e),
        };
        lifeboat_pg::tool::stop_restored(&pg_ctl, &sandbox);
        let _ = std::fs::remove_dir_all(&sandbox);
        self.report.after.push("sandbox stopped and removed".into());
        let counted = counted?;
        self.report.held = counted.clone();
        let present: BTreeMap<u64, u64> = counted.into_iter().collect();
        self.report.primary_after = Some("sandbox restored to just before the drop".to_string());
        self.report.recovered_at_ms = Some(restored_ms);
        let a = &self.report.attempts;
        let writes = measure::count(a, &present, Some(fault_ms));
        self.report.measured = Measured {
            rto_ms: Some((restored_ms - fault_ms).max(0.0) as u64),
            rpo_ms: Some(measure::rpo_ms(a, &present, Some(fault_ms)) as u64),
            rpo_bytes: None,
            writes,
            parts: Vec::new(),
            paths: Vec::new(),
        };
        self.objectives();
        // A point-in-time restore must bring back every acknowledged row.
        if !self
            .report
            .objectives
            .iter()
            .any(|o| o.name == "lost writes")
        {
            let lost = self.report.measured.writes.lost;
            self.report.objectives.push(Objective {
                name: "lost writes".into(),
                target: "0".into(),
                measured: lost.to_string(),
                met: lost == 0,
            });
        }
        Ok(())
    }

    /// lose-region (labs only): the primary's site and its repository are lost; the service
    /// is rebuilt in the other site from the cross-region copy alone (its standby set aside:
    /// this proves the backups), the daemon routed to it, and writes resume. What the copy
    /// lacked — the writes after its last run — is lost and counted.
    fn lose_region(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), Error> {
        if !self.ctx.base.join(crate::lab::MARKER).exists() {
            return Err(Error::new(
                Kind::Input,
                "lose-region replaces the other site's standby with a restore from the cross-region copy: it runs on a lab only",
            )
            .hint("`lifeboat lab up`, then `lifeboat --plan LAB/lifeboat.yaml drill run lose-region`; against production, `restore-only` with `repository:` proves the copy without touching the standby"));
        }
        let primary = rt.block_on(self.primary())?;
        self.report.primary_before = Some(primary.site.clone());
        let survivor = self
            .members
            .iter()
            .find(|m| {
                Some(&m.site) == self.d.site.as_ref()
                    || (self.d.site.is_none() && m.site != primary.site)
            })
            .cloned()
            .ok_or_else(|| Error::new(Kind::Input, "lose-region needs a member in another site"))?;
        let own = self
            .ctx
            .plan
            .wal_repository(&self.d.service)
            .ok_or_else(|| Error::new(Kind::Input, "the service has no repository for its WAL"))?
            .to_string();
        let (job, copy) = self
            .ctx
            .plan
            .backups
            .iter()
            .filter(|(_, j)| j.service == self.d.service && self.ctx.plan.job_repository(j) == Some(own.as_str()))
            .flat_map(|(n, j)| j.copy_to.iter().map(move |c| (n.clone(), c.clone())))
            .next()
            .ok_or_else(|| {
                Error::new(
                    Kind::Input,
                    format!("no job copies {own} to another repository: there is no cross-region copy to rebuild from"),
                )
                .hint("add `copy_to: [REPO]` to the service's base-backup job")
            })?;
        let url = &self.ctx.plan.repositories[&own].url;
        if url.starts_with("s3://") {
            return Err(Error::new(
                Kind::Input,
                format!("lose-region takes repository {own} away by moving its directory: it must be local"),
            ));
        }
        let repo_dir = self.ctx.base.join(url);
        let data_dir = survivor.data_dir.clone().ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!("{} has no data_dir on this host", survivor.site),
            )
        })?;
        let (s, target) = self.prepare_run(rt, &primary)?;
        let (writers, interval, warmup, cooldown, timeout) = self.workload();
        let (log, stop, tasks) = self.start_writers(rt, &target, writers, interval, timeout)?;
        let result = (|| -> Result<(), Error> {
            if !rt.block_on(self.pause(warmup / 2)) {
                self.abort("interrupted", "interrupted before the fault".into());
                return Ok(());
            }
            if !self.every_path_wrote(&log) {
                return Ok(());
            }
            // The copy's last run before the disaster: everything archived so far goes over.
            rt.block_on(workload::archive_now(&s, Duration::from_secs(60)))?;
            let c = lifeboat_protect::ops::copy(self.ctx, &own, &copy)?;
            self.report.after.push(format!(
                "before the disaster, the copy's last run: {} snapshot(s) and {} WAL file(s) to {copy}",
                c.copied, c.wal.copied
            ));
            if !rt.block_on(self.pause(warmup / 2)) {
                self.abort("interrupted", "interrupted before the fault".into());
                return Ok(());
            }
            // The disaster: the site and its repository.
            let aside = repo_dir.with_extension(format!("lost-{}", self.report.run_id));
            self.ledger.add(Fault::Command {
                what: format!(
                    "repository {own} of site {} gone (moved aside)",
                    primary.site
                ),
                heal: format!(
                    "mv '{}' '{}'",
                    aside.display().to_string().replace('\'', ""),
                    repo_dir.display().to_string().replace('\'', "")
                ),
                privileged: false,
            })?;
            std::fs::rename(&repo_dir, &aside).map_err(|e| {
                Error::new(
                    Kind::Io,
                    format!("moving {} aside: {e}", repo_dir.display()),
                )
            })?;
            for m in [&primary, &survivor] {
                for pid in lifeboat_pg::ops::processes(m) {
                    // SAFETY: kill(2) of the member's processes, found by their cwd.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
            // The instant the site is gone (after the signals: see the failover drills).
            let fault_ms = self.now_ms();
            // Dead, not just signalled: then the survivor's data directory is set aside (kept
            // until the rebuilt server runs) and the restore gets an empty one.
            let gone_by = Instant::now() + Duration::from_secs(10);
            while [&primary, &survivor]
                .iter()
                .any(|m| lifeboat_pg::ops::running(m))
                && Instant::now() < gone_by
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let set_aside = data_dir.with_extension(format!("set-aside-{}", self.report.run_id));
            std::fs::rename(&data_dir, &set_aside).map_err(|e| {
                Error::new(
                    Kind::Io,
                    format!("setting {} aside: {e}", data_dir.display()),
                )
            })?;
            self.set_aside = Some((set_aside, data_dir.clone()));
            self.report.fault_at_ms = Some(fault_ms);
            self.report.fault = Some(format!(
                "site {} lost with its repository {own}; the standby in {} set aside: the service is rebuilt from the copy in {copy}",
                primary.site, survivor.site
            ));
            self.rejoin = Some(primary.site.clone());
            // Traffic goes to the survivor from now on (the daemon would fence a restored
            // server that appears beside the routed primary).
            lifeboat_failover::coord::StateFile::new(&self.ctx.state_dir, &self.d.service)
                .route_to(&survivor.site)?;
            std::thread::sleep(Duration::from_millis(300));
            let restore = lifeboat_protect::pitr::restore(
                self.ctx,
                &self.d.service,
                &lifeboat_protect::pitr::RestoreOpts {
                    target: lifeboat_protect::pitr::Target::Latest,
                    dest: data_dir.clone(),
                    force: false,
                    start: Some(survivor.port),
                    owner: None,
                    wait_timeout: Duration::from_secs(300),
                    repository: Some(copy.clone()),
                },
            )?;
            self.report.measured.parts.push(Part {
                name: "restored".into(),
                ms: restore.duration_ms,
                detail: format!(
                    "{} from {copy} (snapshot {}) into {}, started on port {}",
                    survivor.site,
                    &restore.snapshot[..restore.snapshot.len().min(8)],
                    data_dir.display(),
                    survivor.port
                ),
            });
            // It is the primary now: it archives again (a restored copy starts with archiving
            // off), after a restart.
            // Restarted on its own configuration, not the restore's private socket and options.
            // It listens where the member is expected (the backup may come from the other
            // site, whose address and port its configuration names).
            let m = survivor.clone();
            let pg_ctl = self.pg.tool("pg_ctl");
            lifeboat_pg::tool::stop_restored(&pg_ctl, &data_dir);
            let mut conf = format!(
                "\n# Rebuilt by a lose-region drill: the primary now\narchive_mode = 'on'\nport = {}\n",
                m.port
            );
            if m.host.parse::<std::net::IpAddr>().is_ok() {
                conf.push_str(&format!("listen_addresses = '{}'\n", m.host));
            }
            let auto = data_dir.join("postgresql.auto.conf");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&auto)
                .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
                .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", auto.display())))?;
            let restart_log = data_dir.with_extension("log");
            let out = rt.block_on(lifeboat_pg::ops::pg_ctl(
                &self.pg.bin_dir,
                &m,
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    &restart_log.display().to_string(),
                ],
            ))?;
            if !out.status.success() {
                return Err(Error::new(
                    Kind::Source,
                    format!(
                        "the rebuilt {} did not start again: {}",
                        survivor.site,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                )
                .hint(format!("see {}", restart_log.display())));
            }
            self.report.after.push(format!(
                "{} archives again (archive_mode on, restarted)",
                survivor.site
            ));
            if let Some((aside, _)) = self.set_aside.take() {
                let _ = std::fs::remove_dir_all(&aside);
                self.report.after.push(format!(
                    "the set-aside standby of {} removed",
                    survivor.site
                ));
            }
            loop {
                match self.recovered(&log, fault_ms, fault_ms) {
                    Some(true) => break,
                    Some(false) => return Ok(()),
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            rt.block_on(self.pause(cooldown));
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = rt.block_on(t);
        }
        drop(s);
        for h in self.ledger.heal()? {
            self.report.after.push(format!("healed: {h}"));
        }
        result?;
        if !self.report.outcome.is_empty() {
            return Ok(());
        }
        self.report.attempts = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        let parts = std::mem::take(&mut self.report.measured.parts);
        self.count_failover(rt, &primary)?;
        self.report.measured.parts = parts;
        self.after_rebuild(&data_dir, &job);
        Ok(())
    }

    /// The rebuilt primary recovered with archiving off: its new timeline's history never
    /// reached the archive, and no base backup exists on it. Both are made good now (as a
    /// runbook does after rebuilding from a copy), or later restores could not cross it.
    fn after_rebuild(&mut self, data_dir: &std::path::Path, job: &str) {
        let wal = data_dir.join("pg_wal");
        let mut histories: Vec<PathBuf> = std::fs::read_dir(&wal)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "history"))
            .collect();
        histories.sort();
        for h in histories {
            let mut c = crate::lifeboat_command(self.ctx);
            c.args(["wal", "push", &self.d.service]).arg(&h);
            let name = h
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            match c.output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => self.report.after.push(format!(
                    "archiving the timeline history {name} FAILED: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => self
                    .report
                    .after
                    .push(format!("archiving the timeline history {name} FAILED: {e}")),
            }
        }
        let mut c = crate::lifeboat_command(self.ctx);
        c.args(["backup", job]);
        match c.output() {
            Ok(o) if o.status.success() => self.report.after.push(format!(
                "a base backup of the rebuilt primary taken (job {job}), its timeline histories archived"
            )),
            Ok(o) => self.report.after.push(format!(
                "the base backup of the rebuilt primary (job {job}) FAILED: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => self
                .report
                .after
                .push(format!("the base backup of the rebuilt primary (job {job}) FAILED: {e}")),
        }
    }

    /// restore-only: the latest recovery point into a sandbox, its checks, timed.
    fn restore_only(&mut self) -> Result<(), Error> {
        let from_copy;
        let ctx = match &self.d.repository {
            Some(repo) => {
                from_copy =
                    lifeboat_protect::wal::using_repository(self.ctx, &self.d.service, repo)?;
                &from_copy
            }
            None => self.ctx,
        };
        let r = lifeboat_protect::pitr::verify_restore(ctx, &self.d.service)?;
        self.report.fault = Some(format!(
            "none: the latest recovery point of {} restored from {} into a sandbox",
            self.d.service, r.repository
        ));
        self.report.measured.rto_ms = Some(r.restore_ms);
        self.report.measured.rpo_ms = r.data_age_ms;
        self.report.after.push(format!(
            "snapshot {}, {} check(s); sandbox removed",
            r.snapshot,
            r.checks.len()
        ));
        self.objectives();
        self.report.objectives.retain(|o| o.name != "lost writes");
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.sql, c.detail))
            .collect();
        self.report.objectives.push(Objective {
            name: "restore checks".into(),
            target: "all pass".into(),
            measured: if let Some(e) = &r.error {
                format!("restore failed: {e}")
            } else if failed.is_empty() {
                format!("{} passed", r.checks.len())
            } else {
                format!("failed: {}", failed.join("; "))
            },
            met: r.ok,
        });
        Ok(())
    }

    /// After a failed lose-region rebuild: start the lost primary again, route to it, and
    /// start the standby whose data directory is `standby_home`.
    fn undo_lost_region(
        &mut self,
        rt: &tokio::runtime::Runtime,
        site: &str,
        standby_home: &std::path::Path,
    ) {
        let primary = self.members.iter().find(|m| m.site == site).cloned();
        let standby = self
            .members
            .iter()
            .find(|m| m.data_dir.as_deref() == Some(standby_home))
            .cloned();
        let start = |m: &Member| -> Result<(), String> {
            let data = m.data_dir.clone().ok_or("no data_dir")?;
            let log = data.with_extension("log");
            let out = rt
                .block_on(lifeboat_pg::ops::pg_ctl(
                    &self.pg.bin_dir,
                    m,
                    &["start", "-w", "-t", "60", "-l", &log.display().to_string()],
                ))
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} (see {})",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    log.display()
                ))
            }
        };
        let Some(p) = primary else { return };
        match start(&p).and_then(|()| {
            lifeboat_failover::coord::StateFile::new(&self.ctx.state_dir, &self.d.service)
                .route_to(site)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => self.report.after.push(format!(
                "{site} started again as the primary, the traffic routed back to it"
            )),
            Err(e) => self
                .report
                .after
                .push(format!("starting {site} again FAILED: {e}")),
        }
        if let Some(sb) = standby {
            match start(&sb) {
                Ok(()) => self
                    .report
                    .after
                    .push(format!("{} started again as its standby", sb.site)),
                Err(e) => self
                    .report
                    .after
                    .push(format!("starting {} again FAILED: {e}", sb.site)),
            }
        }
    }

    /// Put the service back together: rejoin the old primary, drop the run's table, run the
    /// plan's teardown commands; then the steady state after.
    fn teardown(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some((aside, home)) = self.set_aside.take() {
            // The rebuild failed: the set-aside standby goes back where it was (started by
            // hand or by `lab down`/`lab up`).
            lifeboat_pg::tool::stop_restored(&self.pg.tool("pg_ctl"), &home);
            let _ = std::fs::remove_dir_all(&home);
            match std::fs::rename(&aside, &home) {
                Ok(()) => {
                    self.report.after.push(format!(
                        "the rebuild failed: the set-aside data directory is back in {}",
                        home.display()
                    ));
                    // The disaster undone: the old primary (its data intact) starts again and
                    // takes the traffic back, the standby starts again beside it.
                    if let Some(site) = self.rejoin.take() {
                        self.undo_lost_region(rt, &site, &home);
                    }
                }
                Err(e) => self.report.after.push(format!(
                    "the rebuild failed, and putting {} back failed: {e}",
                    aside.display()
                )),
            }
        }
        if let Some(site) = self.rejoin.take() {
            let routed = self.routed_primary(&site);
            if self.d.rejoin != Some(false) && routed.as_deref() != Some(site.as_str()) {
                let mut c = crate::lifeboat_command(self.ctx);
                c.args(["rejoin", &self.d.service, &site]);
                match c.output() {
                    Ok(o) if o.status.success() => {
                        self.report
                            .after
                            .push(format!("{site} rejoined as a standby (lifeboat rejoin)"));
                        let back = rt.block_on(self.await_streaming(&site));
                        if !back {
                            self.report
                                .after
                                .push(format!("{site} did not stream again within 60 s"));
                        }
                    }
                    Ok(o) => self.report.after.push(format!(
                        "rejoining {site} FAILED: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => self
                        .report
                        .after
                        .push(format!("rejoining {site} FAILED: {e}")),
                }
            }
        }
        if let Some(m) = self.run_table.take() {
            let run = self.report.run_id.clone();
            let r = rt.block_on(async {
                let s = Session::connect(&m, Duration::from_secs(5)).await?;
                workload::drop_table(&s, &run).await
            });
            if r.is_ok() {
                self.report.after.push(format!(
                    "the drill's table {} dropped",
                    workload::table(&run)
                ));
            }
        }
        for cmd in &self.d.teardown {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&self.ctx.base)
                .output();
            self.report.after.push(match out {
                Ok(o) if o.status.success() => format!("teardown `{cmd}`: ok"),
                Ok(o) => format!(
                    "teardown `{cmd}`: exit {} {}",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => format!("teardown `{cmd}`: {e}"),
            });
        }
        if self.d.steady_state.iter().any(|c| in_phase(c, "after")) {
            match rt.block_on(self.primary()) {
                Ok(p) => {
                    let t = self.write_target(&p);
                    self.steady(rt, "after", &t);
                }
                Err(e) => self.report.steady_state.push(SteadyResult {
                    name: "service".into(),
                    phase: "after".into(),
                    runs: 1,
                    failures: 1,
                    passed: false,
                    detail: e.message,
                }),
            }
        }
    }

    /// The member the daemon routes writes to, once no failover is in progress (waiting up to
    /// 30 s: an interrupted or aborted drill may end while the daemon is still deciding).
    fn routed_primary(&self, old: &str) -> Option<String> {
        let state = lifeboat_failover::coord::StateFile::new(&self.ctx.state_dir, &self.d.service);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The daemon needs its detection window to see a fault that was healed at once.
        if self.report.recovered_at_ms.is_none() {
            std::thread::sleep(Duration::from_secs(3));
        }
        loop {
            let st = state.load().ok();
            let settled = st.as_ref().is_some_and(|s| s.in_progress.is_none());
            let routed = st.as_ref().and_then(|s| s.primary.clone());
            if (settled && routed.as_deref() != Some(old)) || Instant::now() > deadline {
                return routed;
            }
            if settled && self.report.recovered_at_ms.is_none() {
                // Healed before the daemon moved: the old primary goes on.
                return routed;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    async fn await_streaming(&self, site: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(p) = self.primary().await {
                if let Ok(s) = Session::connect(&p, Duration::from_secs(2)).await {
                    if s.standby_state(site).await.ok().as_deref() == Some("streaming") {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

#[allow(clippy::too_many_arguments)]
/// The paths a drill's `workload.through` names must exist: checked before anything runs.
fn check_paths(
    d: &Drill,
    has_endpoint: bool,
    dns: &Option<(std::net::SocketAddr, String, Duration, Option<u16>)>,
) -> Result<(), Error> {
    let Some(asked) = d.workload.as_ref().and_then(|w| w.through.as_ref()) else {
        return Ok(());
    };
    if asked.iter().any(|p| p == "endpoint") && !has_endpoint {
        return Err(Error::new(
            Kind::Input,
            format!(
                "service {} has no traffic endpoint (failover.listen) for the writers",
                d.service
            ),
        ));
    }
    if asked.iter().any(|p| p == "dns") {
        match dns {
            None => {
                return Err(Error::new(
                    Kind::Input,
                    format!(
                        "service {} has no DNS name (failover.dns) for the writers",
                        d.service
                    ),
                ))
            }
            Some((_, _, _, None)) => {
                return Err(Error::new(
                    Kind::Input,
                    format!(
                        "writers through the DNS name need the members of {} to share one port (a name gives an address, not a port)",
                        d.service
                    ),
                )
                .hint("give each site its own address and the same port, or write only through the endpoint (workload.through: [endpoint])"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// How a writer reaches the service.
#[derive(Clone)]
enum Via {
    /// The daemon's traffic endpoint (or, without one, the primary itself).
    Endpoint(Member),
    /// The service's DNS name: asked of the responder, the answer cached for its TTL (at
    /// most the plan's), then the server at that address on the members' port.
    Dns {
        server: std::net::SocketAddr,
        name: String,
        ttl: Duration,
        template: Member,
    },
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Via::Endpoint(_) => "endpoint",
            Via::Dns { .. } => "dns",
        }
    }

    fn describe(&self, has_endpoint: bool) -> String {
        match self {
            Via::Endpoint(m) if has_endpoint => format!("{}:{}", m.host, m.port),
            Via::Endpoint(m) => format!("the primary {}:{} directly", m.host, m.port),
            Via::Dns {
                server,
                name,
                ttl,
                template,
            } => format!(
                "{name} asked of {server}, cached for its TTL ({} s), port {}",
                ttl.as_secs_f64(),
                template.port
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    via: Via,
    tag: bool,
    run: String,
    w: u32,
    next: Arc<AtomicU64>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    interval: Duration,
    timeout: Duration,
) {
    let mut cached: Option<(std::net::IpAddr, Instant)> = None;
    while !stop.load(Ordering::SeqCst) {
        let id = next.fetch_add(1, Ordering::SeqCst);
        let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let target = match &via {
            Via::Endpoint(m) => Ok(m.clone()),
            Via::Dns {
                server,
                name,
                ttl,
                template,
            } => {
                let fresh = cached.filter(|(_, until)| Instant::now() < *until);
                let addr = match fresh {
                    Some((a, _)) => Ok(a),
                    None => {
                        crate::resolve::resolve(*server, name, timeout.min(Duration::from_secs(1)))
                            .await
                            .map(|(a, t)| {
                                let keep = Duration::from_secs(t.into()).min(*ttl);
                                cached = Some((a, Instant::now() + keep));
                                a
                            })
                    }
                };
                addr.map(|a| {
                    let mut m = template.clone();
                    m.host = a.to_string();
                    m
                })
            }
        };
        let r = match target {
            Ok(t) => workload::write(&t, &run, id, w, timeout).await,
            Err(e) => {
                cached = None;
                Outcome::Failed(e)
            }
        };
        let end_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (outcome, ack, error) = match r {
            Outcome::Acked(a) => ("ok", Some(a), None),
            Outcome::Failed(e) => ("failed", None, Some(e)),
            Outcome::Unknown(e) => ("unknown", None, Some(e)),
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(Attempt {
            id,
            writer: w,
            start_ms,
            end_ms,
            outcome: outcome.into(),
            ack,
            error,
            via: tag.then(|| via.name().to_string()),
        });
        tokio::time::sleep(interval).await;
    }
}

/// The nftables table that cuts `host:port` off: `isolate` drops what goes to it and what it
/// sends; `one-way` only what goes to it. Its own table, so the host's rules are never
/// touched, and deleting the table undoes it.
pub fn partition_rules(table: &str, host: &str, port: u16, shape: &str) -> String {
    let (to, from) = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => (format!("ip daddr {a} "), format!("ip saddr {a} ")),
        Ok(std::net::IpAddr::V6(a)) => (format!("ip6 daddr {a} "), format!("ip6 saddr {a} ")),
        Err(_) => (String::new(), String::new()),
    };
    let mut rules = format!("{to}tcp dport {port} drop; ");
    if shape != "one-way" {
        rules.push_str(&format!("{from}tcp sport {port} drop; "));
    }
    format!(
        "table inet {table} {{\n  chain input {{ type filter hook input priority -10; policy accept; {rules}}}\n  chain output {{ type filter hook output priority -10; policy accept; {rules}}}\n}}\n"
    )
}

fn check_nft(needs_nft: bool) -> Result<(), Error> {
    if !crate::can_be_root() {
        return Err(Error::new(
            Kind::Input,
            "partition-site cuts the primary off (its namespace's links, or an nftables table): it needs root",
        )
        .hint("run the drill as root (a lab made as root works; on loopback as a normal user it cannot cut a member off honestly)"));
    }
    if !needs_nft {
        return Ok(());
    }
    let mut c = std::process::Command::new("nft");
    c.arg("--version");
    crate::privileged(&mut c);
    match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(Error::new(
            Kind::Input,
            "partition-site needs the `nft` program (nftables)",
        )
        .hint("install it (Debian: nftables)")),
    }
}

fn nft_apply(ruleset: &str) -> Result<(), Error> {
    nft_apply_in(None, ruleset)
}

/// Apply an nftables ruleset on this machine, or inside a network namespace.
fn nft_apply_in(netns: Option<&str>, ruleset: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut c = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => std::process::Command::new("nft"),
    };
    c.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    crate::privileged(&mut c);
    let mut child = c
        .spawn()
        .map_err(|e| Error::new(Kind::Internal, format!("nft: {e}")))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(ruleset.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(Kind::Internal, format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(
            Kind::Source,
            format!(
                "nft refused the partition: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn in_phase(c: &SteadyCheck, phase: &str) -> bool {
    if c.when.is_empty() {
        phase == "before" || phase == "after"
    } else {
        c.when.iter().any(|w| w == phase)
    }
}

fn check_name(c: &SteadyCheck) -> String {
    c.name.clone().unwrap_or_else(|| {
        c.sql
            .clone()
            .or(c.http.clone())
            .or(c.command.clone())
            .unwrap_or_default()
    })
}

/// One run of a steady-state check: Ok(what was seen) or Err(why it failed).
async fn check(c: &SteadyCheck, target: &Member) -> Result<String, String> {
    let limit = c.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5));
    let work = async {
        if let Some(sql) = &c.sql {
            let s = Session::connect(target, limit)
                .await
                .map_err(|e| e.message)?;
            let v = workload::value(&s, sql).await.map_err(|e| e.message)?;
            if c.min.is_some() || c.max.is_some() {
                let n: f64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{v}` is not a number"))?;
                if c.min.is_some_and(|m| n < m) || c.max.is_some_and(|m| n > m) {
                    return Err(format!(
                        "{n} is outside [{}, {}]",
                        c.min
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-inf".into()),
                        c.max.map(|m| m.to_string()).unwrap_or_else(|| "inf".into())
                    ));
                }
                return Ok(v);
            }
            let want = c.expect.clone().unwrap_or_else(|| "true".into());
            let same = v == want || (want == "true" && v == "t") || (want == "t" && v == "true");
            if same {
                Ok(v)
            } else {
                Err(format!("got `{v}`, expected `{want}`"))
            }
        } else if let Some(url) = &c.http {
            let client = reqwest::Client::builder()
                .timeout(limit)
                .build()
                .map_err(|e| e.to_string())?;
            let r = client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET: {e}"))?;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            let status_ok = match c.status {
                Some(s) => s == status,
                None => (200..300).contains(&status),
            };
            if !status_ok {
                return Err(format!("status {status}"));
            }
            if let Some(b) = &c.body {
                if !body.contains(b.as_str()) {
                    return Err(format!("status {status}, but the body lacks `{b}`"));
                }
            }
            Ok(format!("status {status}"))
        } else if let Some(cmd) = &c.command {
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok("exit 0".into())
            } else {
                Err(format!(
                    "exit {}: {}",
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        } else {
            Err("the check has no sql, http or command".into())
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

fn describe_roles(roles: &[(String, Option<bool>)]) -> String {
    roles
        .iter()
        .map(|(s, r)| {
            format!(
                "{s}: {}",
                match r {
                    Some(false) => "primary",
                    Some(true) => "standby",
                    None => "not answering",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn fmt_us(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| us.to_string())
}
