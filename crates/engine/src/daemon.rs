//! `lifeboat serve` (issue 4, first cut): for every postgres service with `failover:`, probe
//! all members every `interval`, keep consecutive pass/fail counts, build a [`World`], call
//! [`decide`], and act — fail over (record intent, cut traffic, stop the old primary when it is
//! reachable and local, promote, wait for writes, route, record) or fence a writable old
//! primary. Traffic goes through a TCP proxy per service. State that must survive a restart
//! (routed primary, epoch, failover under way) lives in [`crate::coord::StateFile`].
//! Everything runs on one tokio runtime under one shutdown signal (SIGTERM/SIGINT).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lifeboat_core::decide::{decide, Action, Decision, Failure, MemberView, Role, World};
use lifeboat_core::plan::{FailoverSpec, HealthCheck, ReplicationMode, Service, Severity};
use lifeboat_core::{Error, Kind};
use tokio::sync::watch;

use crate::context::Context;
use crate::coord::{FailoverState, StateFile, SyncFile, SyncRecord};
use crate::failpoint;
use crate::health::{extra_checks, probe, Probe};
use crate::healthapi::{MemberHealth, Shared};
use crate::pg::{Member, PgService};
use crate::pgops::Session;
use crate::traffic::{proxy, Route};

/// One member's checks: the PostgreSQL probe and, when it passes, the extra checks.
async fn check_member(m: &Member, extra: Option<Vec<HealthCheck>>, timeout: Duration) -> Probe {
    let mut p = probe(m, timeout).await;
    if p.ok {
        if let Some(checks) = extra {
            if let Err(e) = extra_checks(&checks, timeout).await {
                p.ok = false;
                p.failure = Some(Failure::Error(e));
            }
        }
    }
    p
}

/// A postgres service as the daemon (and `status`) watch it.
pub struct Watched {
    pub service: String,
    pub members: Vec<Member>,
    pub spec: FailoverSpec,
    mode: ReplicationMode,
    max_lag: Option<u64>,
    /// `replication.user` and its password, when the plan names them.
    pub replication_user: Option<(String, Option<String>)>,
    pub bin_dir: std::path::PathBuf,
}

impl Watched {
    /// A `sync` tier (RPO 0: only a synchronous standby may be promoted).
    pub fn is_sync(&self) -> bool {
        self.mode == ReplicationMode::Sync
    }

    /// Time between checks (default 500 ms).
    pub fn interval(&self) -> Duration {
        self.spec
            .interval
            .map(|d| d.std())
            .unwrap_or(Duration::from_millis(500))
    }

    /// Deadline of one check (default 400 ms).
    pub fn timeout(&self) -> Duration {
        self.spec
            .timeout
            .map(|d| d.std())
            .unwrap_or(Duration::from_millis(400))
    }

    /// Time between checks of a primary whose connection was refused (default 100 ms).
    pub fn recheck_interval(&self) -> Duration {
        self.spec
            .recheck_interval
            .map(|d| d.std())
            .unwrap_or(Duration::from_millis(100))
            .min(self.interval())
    }

    /// Check every member at once: the PostgreSQL probe, then the member's extra checks.
    pub async fn check_all(&self) -> Vec<(String, Probe)> {
        let timeout = self.timeout();
        let handles: Vec<_> = self
            .members
            .iter()
            .map(|m| {
                let m = m.clone();
                let extra = self.spec.health_checks.get(&m.site).cloned();
                tokio::spawn(
                    async move { (m.site.clone(), check_member(&m, extra, timeout).await) },
                )
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            if let Ok(r) = h.await {
                out.push(r);
            }
        }
        out
    }

    /// While `site` fails Lifeboat's checks: whether its witness checks say its clients still
    /// reach it (None: it has no witness, or it does not fail).
    pub async fn witness(&self, site: &str, counts: &BTreeMap<String, Counts>) -> Option<bool> {
        let checks = self.spec.witness.get(site)?;
        if counts.get(site).is_none_or(|c| c.failures == 0) {
            return None;
        }
        Some(extra_checks(checks, self.timeout()).await.is_ok())
    }

    /// `None` for services that are not postgres. The failover settings are the service's, or
    /// the defaults when it has none.
    pub fn from_plan(ctx: &Context, name: &str) -> Result<Option<Watched>, Error> {
        let Some(
            svc @ Service::Postgres {
                failover,
                replication,
                ..
            },
        ) = ctx.plan.services.get(name)
        else {
            return Ok(None);
        };
        let pg = PgService::from_plan(name, svc, &ctx.base)?;
        let members = pg
            .members
            .keys()
            .map(|s| pg.member(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Watched {
            service: name.to_string(),
            members,
            spec: failover.as_deref().cloned().unwrap_or_default(),
            mode: replication
                .as_ref()
                .map(|r| r.mode)
                .unwrap_or(ReplicationMode::Async),
            max_lag: replication
                .as_ref()
                .and_then(|r| r.max_lag_on_failover)
                .map(|s| s.0),
            replication_user: match replication.as_ref().and_then(|r| r.user.clone()) {
                Some(u) => Some((
                    u,
                    replication
                        .as_ref()
                        .and_then(|r| r.password.as_ref())
                        .map(|p| p.resolve())
                        .transpose()
                        .map_err(|e| {
                            Error::new(
                                Kind::Input,
                                format!("service {name}: replication.password: {e}"),
                            )
                        })?,
                )),
                None => None,
            },
            bin_dir: pg.bin_dir.clone(),
        }))
    }
}

fn log(event: &str, service: &str, fields: serde_json::Value) {
    let mut v = serde_json::json!({
        "time": jiff::Timestamp::now().to_string(),
        "event": event,
        "service": service,
    });
    if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
        o.extend(f.clone());
    }
    eprintln!("{v}");
}

/// The services `serve` protects.
fn watched(ctx: &Context) -> Result<Vec<Watched>, Error> {
    let mut out = Vec::new();
    for (name, svc) in &ctx.plan.services {
        if let Service::Postgres {
            failover: Some(_), ..
        } = svc
        {
            out.extend(Watched::from_plan(ctx, name)?);
        }
    }
    if out.is_empty() {
        return Err(Error::new(
            Kind::Input,
            "no postgres service in the plan has `failover:`: nothing to protect",
        )
        .hint("add `failover: { listen: 127.0.0.1:6432 }` to a postgres service with members in two sites"));
    }
    Ok(out)
}

/// Run until SIGTERM/SIGINT.
pub fn serve(ctx: &Context) -> Result<(), Error> {
    let services = watched(ctx)?;
    let _lock = crate::control::Control::new(&ctx.state_dir).hold()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Before the runtime creates its threads, so they inherit the blocked mask.
    crate::signals::on_termination(move || {
        let _ = stop_tx.send(true);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(Kind::Internal, format!("runtime: {e}")))?;
    rt.block_on(async {
        let (notifier, notify_worker) = crate::notify::Notifier::start(ctx);
        let mut servers = Vec::new();
        let mut monitors = Vec::new();
        // One DNS responder per listen address, shared by the services that name it.
        let mut dns: BTreeMap<String, crate::dns::Names> = BTreeMap::new();
        for w in services {
            let state = StateFile::new(&ctx.state_dir, &w.service);
            let st = state.load()?;
            let (route_tx, route_rx) = watch::channel(Route {
                epoch: st.epoch,
                target: None,
            });
            if let Some(listen) = &w.spec.listen {
                let l = bind(&w.service, listen).await?;
                log(
                    "listening",
                    &w.service,
                    serde_json::json!({"address": listen, "endpoint": "traffic"}),
                );
                servers.push(tokio::spawn(proxy(l, route_rx, stop_rx.clone())));
            }
            let shared = Shared::default();
            for (site, listen) in &w.spec.health_listen {
                let l = bind(&w.service, listen).await?;
                log(
                    "listening",
                    &w.service,
                    serde_json::json!({"address": listen, "endpoint": "health", "member": site}),
                );
                servers.push(tokio::spawn(crate::healthapi::serve(
                    l,
                    site.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                )));
            }
            if let Some(d) = &w.spec.dns {
                if !dns.contains_key(&d.listen) {
                    let sock = crate::dns::bind(&d.listen).await.map_err(|e| {
                        Error::new(
                            Kind::Io,
                            format!(
                                "service {}: cannot answer DNS on {}: {e}",
                                w.service, d.listen
                            ),
                        )
                    })?;
                    let names = crate::dns::Names::default();
                    servers.push(tokio::spawn(crate::dns::serve(
                        sock,
                        names.clone(),
                        stop_rx.clone(),
                    )));
                    log(
                        "listening",
                        &w.service,
                        serde_json::json!({"address": d.listen, "endpoint": "dns", "name": d.name}),
                    );
                    dns.insert(d.listen.clone(), names);
                }
                if let Some(names) = dns.get(&d.listen) {
                    if let Ok(mut n) = names.lock() {
                        n.push(crate::dns::Answer {
                            name: d.name.trim_end_matches('.').to_ascii_lowercase(),
                            ttl: d.ttl.map(|t| t.std().as_secs() as u32).unwrap_or(5),
                            target: None,
                        });
                    }
                }
            }
            let names = w
                .spec
                .dns
                .as_ref()
                .and_then(|d| dns.get(&d.listen).cloned());
            monitors.push(tokio::spawn(monitor(
                w,
                state,
                route_tx,
                shared,
                stop_rx.clone(),
                ctx.clone(),
                notifier.clone(),
                names,
            )));
        }
        let mut stop_rx = stop_rx;
        while !*stop_rx.borrow() {
            if stop_rx.changed().await.is_err() {
                break;
            }
        }
        // Monitors stop between ticks, so a failover under way finishes first (bounded: a
        // failover that hangs is resumed from its recorded intent at the next start).
        for m in monitors {
            let abort = m.abort_handle();
            if tokio::time::timeout(Duration::from_secs(60), m)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in servers {
            t.abort();
        }
        // Notifications under way get a few seconds to finish.
        notifier.drain(notify_worker, Duration::from_secs(10)).await;
        Ok::<(), Error>(())
    })?;
    log("stopped", "*", serde_json::json!({}));
    Ok(())
}

async fn bind(service: &str, listen: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            Kind::Io,
            format!("service {service}: cannot listen on {listen}: {e}"),
        )
        .hint("another process (or another lifeboat serve) holds the address; stop it or change the plan")
    })
}

/// What the checks of one member have shown so far.
#[derive(Default, Clone)]
pub struct Counts {
    /// Consecutive failed checks.
    pub failures: u32,
    /// Consecutive passed checks.
    pub successes: u32,
    pub last: Option<Probe>,
    /// The last check that passed.
    pub last_ok: Option<Probe>,
    /// What the member's witness checks said at the last failed check (None: not asked).
    pub clients_reach_it: Option<bool>,
}

impl Counts {
    /// Record one check.
    pub fn observe(&mut self, p: Probe) {
        if p.ok {
            self.failures = 0;
            self.successes += 1;
            self.last_ok = Some(p.clone());
        } else {
            self.successes = 0;
            self.failures += 1;
        }
        self.last = Some(p);
    }

    /// The role the last check reported, if it passed.
    pub fn role(&self) -> Option<Role> {
        self.last.as_ref().filter(|p| p.ok).and_then(|p| p.role)
    }
}

#[allow(clippy::too_many_arguments)]
async fn monitor(
    w: Watched,
    state: StateFile,
    route_tx: watch::Sender<Route>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
    ctx: Context,
    notifier: crate::notify::Notifier,
    dns: Option<crate::dns::Names>,
) {
    let state_dir = ctx.state_dir.clone();
    let control = crate::control::Control::new(&state_dir);
    let interval = w.interval();
    let recheck = w.recheck_interval();
    let threshold = w.spec.unhealthy_threshold.unwrap_or(3);
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut last_reason = String::new();
    let mut primary_last_lsn: Option<u64> = None;
    // What was last seen of the primary's replication, kept on disk for the next start.
    let sync_file = SyncFile::new(&state_dir, &w.service);
    let mut remembered = sync_file.load();
    let sync_max_age = w.sync_record_max_age();
    let mut remembered_at: Option<Instant> = None;
    let mut next = tokio::time::Instant::now();
    // Actions that failed: retried after 1, 2, 4 … 30 s, not at every tick.
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let tick = tokio::time::Instant::now();
        next = tick + interval;
        for (site, p) in w.check_all().await {
            counts.entry(site).or_default().observe(p);
        }
        let sites: Vec<String> = w.spec.witness.keys().cloned().collect();
        for site in sites {
            let seen = w.witness(&site, &counts).await;
            if let Some(c) = counts.get_mut(&site) {
                c.clients_reach_it = seen;
            }
        }
        let mut st = match state.load() {
            Ok(s) => s,
            Err(e) => {
                log(
                    "error",
                    &w.service,
                    serde_json::json!({"error": e.to_string()}),
                );
                continue;
            }
        };
        // At first start: adopt the one member that reports itself primary.
        if st.primary.is_none() && st.in_progress.is_none() {
            let primaries: Vec<&String> = counts
                .iter()
                .filter(|(_, c)| c.failures == 0 && c.role() == Some(Role::Primary))
                .map(|(s, _)| s)
                .collect();
            if let [only] = primaries.as_slice() {
                st.primary = Some((*only).clone());
                st.epoch = st.epoch.max(1);
                if let Err(e) = state.store(&st) {
                    log(
                        "error",
                        &w.service,
                        serde_json::json!({"error": e.to_string()}),
                    );
                    continue;
                }
                log(
                    "adopted",
                    &w.service,
                    serde_json::json!({"primary": only, "epoch": st.epoch}),
                );
            }
        }
        // An operator's request (switchover) comes before this tick's decision.
        if st.in_progress.is_none() {
            if let Some(req) = control.take(&w.service) {
                let answer = handle(&w, &state, &route_tx, &req, &ctx, &counts).await;
                notifier.send(crate::notify::Note {
                    severity: if req.op == "failover" {
                        Severity::P1
                    } else {
                        Severity::P3
                    },
                    event: req.op.clone(),
                    service: w.service.clone(),
                    summary: match answer["error"].as_str() {
                        Some(e) => format!("{} requested by {} FAILED: {e}", req.op, req.actor),
                        None => format!(
                            "{} to {} requested by {}: done",
                            req.op,
                            req.to.as_deref().unwrap_or("?"),
                            req.actor
                        ),
                    },
                    details: answer.clone(),
                });
                control.answer(&w.service, &req.id, &answer);
                counts.clear();
                next = tokio::time::Instant::now();
                continue;
            }
        }
        if let Some(p) = st.primary.as_ref().and_then(|p| counts.get(p)) {
            if p.failures == 0 && p.role() == Some(Role::Primary) {
                primary_last_lsn = p.last.as_ref().and_then(|l| l.lsn);
            }
            // A refused connection means nothing listens: confirm it quickly instead of
            // waiting a whole interval per check (a timeout keeps the full window).
            if matches!(
                p.last.as_ref().and_then(|l| l.failure.as_ref()),
                Some(Failure::Refused)
            ) && p.failures < threshold
            {
                next = tick + recheck;
            }
        }
        if let Some(rec) = sync_record(&w, &counts, &st, primary_last_lsn) {
            let same_sets = remembered.as_ref().is_some_and(|r| {
                (&r.primary, r.epoch, &r.synchronous, &r.streaming)
                    == (&rec.primary, rec.epoch, &rec.synchronous, &rec.streaming)
            });
            if !same_sets || remembered_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match sync_file.store(&rec) {
                    Ok(()) => remembered_at = Some(Instant::now()),
                    Err(e) => log(
                        "error",
                        &w.service,
                        serde_json::json!({"error": e.to_string(), "note": "the synchronous standbys could not be recorded: a daemon restarted while the primary is down would hold"}),
                    ),
                }
                remembered = Some(rec);
            }
        }
        let world = build_world(
            &w,
            &counts,
            &st,
            primary_last_lsn,
            remembered.as_ref().map(|record| Remembered {
                record,
                max_age: sync_max_age,
            }),
        );
        let d = decide(&world);
        if d.reason != last_reason {
            log(
                "decision",
                &w.service,
                serde_json::to_value(&d).unwrap_or_default(),
            );
            if d.action == Action::Hold && st.primary.is_some() {
                notifier.send(note(Severity::P1, "hold", &w.service, &d.reason, &d));
            }
            last_reason = d.reason.clone();
            let _ = std::fs::create_dir_all(state_dir.join("daemon"));
            let _ = std::fs::write(
                state_dir.join("daemon").join(format!("{}.json", w.service)),
                serde_json::to_vec_pretty(&serde_json::json!({
                    "decision": d, "epoch": st.epoch, "primary": st.primary,
                    "time": jiff::Timestamp::now().to_string(),
                }))
                .unwrap_or_default(),
            );
        }
        let key = serde_json::to_string(&d.action).unwrap_or_default();
        let waiting = backoff.waiting(&key);
        match d.action.clone() {
            _ if waiting => {}
            Action::Failover { from, to, epoch } => {
                let started = Instant::now();
                let r = failover(
                    &w,
                    &state,
                    &route_tx,
                    &mut st,
                    from.clone(),
                    &to,
                    epoch,
                    &counts,
                )
                .await;
                let outcome = if r.is_ok() { "ok" } else { "failed" };
                log(
                    "failover",
                    &w.service,
                    serde_json::json!({"from": from, "to": to, "epoch": epoch, "outcome": outcome,
                        "error": r.as_ref().err().map(|e| e.to_string()),
                        "ms": started.elapsed().as_millis() as u64, "reason": d.reason,
                        "steps": r.as_ref().ok()}),
                );
                record(&ctx, &w.service, &d, outcome, started, r.as_ref().ok());
                notifier.send(note(
                    Severity::P1,
                    "failover",
                    &w.service,
                    &match &r {
                        Ok(_) => format!("failed over to {to} (epoch {epoch}): {}", d.reason),
                        Err(e) => format!("failover to {to} FAILED: {e}"),
                    },
                    &d,
                ));
                backoff.outcome(&key, r.is_ok());
                if let Ok(done) = r {
                    after_failover_runbooks(&ctx, &w.service, from.as_deref(), &to, epoch, done);
                    // The new primary's state is known now; check again at once.
                    counts.clear();
                    next = tokio::time::Instant::now();
                }
            }
            Action::Fence { site, epoch } => {
                let started = Instant::now();
                let r = fence(&w, &site).await;
                log(
                    "fence",
                    &w.service,
                    serde_json::json!({"site": site, "epoch": epoch,
                        "error": r.as_ref().err().map(|e| e.to_string())}),
                );
                record(
                    &ctx,
                    &w.service,
                    &d,
                    if r.is_ok() { "ok" } else { "failed" },
                    started,
                    None,
                );
                notifier.send(note(Severity::P2, "fence", &w.service, &d.reason, &d));
                backoff.outcome(&key, r.is_ok());
            }
            _ => {}
        }
        // Route writes to the recorded primary while it is healthy.
        let target = st.primary.as_ref().and_then(|p| {
            let c = counts.get(p)?;
            let healthy = c.failures == 0 && c.role() == Some(Role::Primary);
            healthy
                .then(|| w.members.iter().find(|m| &m.site == p))
                .flatten()
                .map(|m| format!("{}:{}", m.host, m.port))
        });
        if let Some(t) = target {
            let want = Route {
                epoch: st.epoch,
                target: Some(t),
            };
            if *route_tx.borrow() != want {
                log(
                    "route",
                    &w.service,
                    serde_json::json!({"epoch": want.epoch, "target": want.target}),
                );
                let _ = route_tx.send(want);
            }
        }
        publish(&w, &counts, &st, primary_last_lsn, &route_tx, &shared);
        if let (Some(names), Some(spec)) = (&dns, &w.spec.dns) {
            // The name follows the route: the primary's record while it takes writes.
            let target = route_tx
                .borrow()
                .target
                .as_ref()
                .and(st.primary.as_ref())
                .and_then(|p| {
                    spec.records.get(p).cloned().or_else(|| {
                        w.members
                            .iter()
                            .find(|m| &m.site == p)
                            .map(|m| m.host.clone())
                    })
                });
            let name = spec.name.trim_end_matches('.').to_ascii_lowercase();
            if let Ok(mut n) = names.lock() {
                for a in n.iter_mut().filter(|a| a.name == name) {
                    if a.target != target {
                        log(
                            "dns",
                            &w.service,
                            serde_json::json!({"name": name, "target": target}),
                        );
                        a.target = target.clone();
                    }
                }
            }
        }
    }
}

fn note(
    sev: Severity,
    event: &str,
    service: &str,
    summary: &str,
    d: &Decision,
) -> crate::notify::Note {
    crate::notify::Note {
        severity: sev,
        event: event.into(),
        service: service.into(),
        summary: summary.into(),
        details: serde_json::to_value(d).unwrap_or_default(),
    }
}

/// Run the service's `failover` runbooks in the background (their hooks and notifications;
/// the built-in failover steps are what just happened).
fn after_failover_runbooks(
    ctx: &Context,
    service: &str,
    from: Option<&str>,
    to: &str,
    epoch: u64,
    done: Vec<crate::runbook::BuiltinStep>,
) {
    for (name, rb) in &ctx.plan.runbooks {
        if rb.kind.as_deref() != Some("failover") || rb.service.as_deref() != Some(service) {
            continue;
        }
        let (ctx, name, svc, done) = (ctx.clone(), name.clone(), service.to_string(), done.clone());
        let env = vec![
            (
                "LIFEBOAT_FROM".to_string(),
                from.unwrap_or_default().to_string(),
            ),
            ("LIFEBOAT_TO".to_string(), to.to_string()),
            ("LIFEBOAT_EPOCH".to_string(), epoch.to_string()),
        ];
        tokio::spawn(async move {
            let svc2 = svc.clone();
            let opts = crate::runbook::Options {
                yes: false,
                approve: Box::new(|_| false),
                progress: Box::new(move |r| {
                    log(
                        "runbook_step",
                        &svc2,
                        serde_json::to_value(r).unwrap_or_default(),
                    )
                }),
                after_failover: true,
                done,
                env,
            };
            if let Err(e) = crate::runbook::run(&ctx, &name, opts).await {
                log(
                    "error",
                    &svc,
                    serde_json::json!({"runbook": name, "error": e.to_string()}),
                );
            }
        });
    }
}

/// Carry out an operator's request; the answer for the waiting command.
async fn handle(
    w: &Watched,
    state: &StateFile,
    route_tx: &watch::Sender<Route>,
    req: &crate::control::Request,
    ctx: &Context,
    counts: &BTreeMap<String, Counts>,
) -> serde_json::Value {
    log(
        "request",
        &w.service,
        serde_json::json!({"op": req.op, "to": req.to, "actor": req.actor, "id": req.id}),
    );
    match req.op.as_str() {
        "switchover" => {
            let Some(to) = req.to.as_deref() else {
                return serde_json::json!({"error": "switchover needs a target site"});
            };
            let service = w.service.clone();
            let r = run_switchover(
                w,
                state,
                Some(route_tx),
                to,
                Duration::from_millis(req.timeout_ms),
                ctx,
                &move |s| {
                    log(
                        "switchover_step",
                        &service,
                        serde_json::to_value(s).unwrap_or_default(),
                    )
                },
            )
            .await;
            match r {
                Ok(report) => serde_json::json!({"report": report}),
                Err(e) => serde_json::json!({"error": e.to_string(), "hint": e.hint}),
            }
        }
        "failover" => {
            match crate::manual::run_failover(
                ctx,
                w,
                state,
                route_tx,
                counts,
                req.to.as_deref(),
                crate::manual::Overrides {
                    force: req.force,
                    accept_loss: req.accept_loss,
                },
            )
            .await
            {
                Ok(plan) => serde_json::json!({"plan": plan}),
                Err(e) => serde_json::json!({"error": e.to_string(), "hint": e.hint}),
            }
        }
        other => serde_json::json!({"error": format!("unknown request `{other}`")}),
    }
}

/// A switchover, recorded in the evidence log (`switchover`: ok, aborted or failed).
pub async fn run_switchover(
    w: &Watched,
    state: &StateFile,
    route: Option<&watch::Sender<Route>>,
    to: &str,
    timeout: Duration,
    ctx: &Context,
    progress: &(dyn Fn(&crate::switchover::Step) + Send + Sync),
) -> Result<crate::switchover::Report, Error> {
    let started = Instant::now();
    let r = crate::switchover::switchover(w, state, route, to, timeout, progress).await;
    let (outcome, figures) = match &r {
        Ok(rep) if rep.aborted.is_some() => {
            ("aborted", serde_json::to_value(rep).unwrap_or_default())
        }
        Ok(rep) => ("ok", serde_json::to_value(rep).unwrap_or_default()),
        Err(e) => (
            "failed",
            serde_json::json!({"to": to, "error": e.to_string()}),
        ),
    };
    if let Err(e) = ctx.record("switchover", &w.service, outcome, started, figures) {
        log(
            "error",
            &w.service,
            serde_json::json!({"error": format!("evidence log: {e}")}),
        );
    }
    r
}

/// Retry delays of actions that failed, by action.
#[derive(Default)]
struct Backoff {
    failed: BTreeMap<String, (u32, tokio::time::Instant)>,
}

impl Backoff {
    /// Whether `key` failed recently and must wait before its next attempt.
    fn waiting(&self, key: &str) -> bool {
        self.failed
            .get(key)
            .is_some_and(|(_, until)| tokio::time::Instant::now() < *until)
    }

    fn outcome(&mut self, key: &str, ok: bool) {
        if ok {
            self.failed.remove(key);
            return;
        }
        let e = self
            .failed
            .entry(key.to_string())
            .or_insert((0, tokio::time::Instant::now()));
        e.0 += 1;
        let delay = Duration::from_secs(1u64 << (e.0 - 1).min(5)).min(Duration::from_secs(30));
        e.1 = tokio::time::Instant::now() + delay;
    }
}

/// Update what the health endpoints answer.
fn publish(
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
    primary_last_lsn: Option<u64>,
    route_tx: &watch::Sender<Route>,
    shared: &Shared,
) {
    let routed = route_tx.borrow().target.is_some();
    let mut view = BTreeMap::new();
    for m in &w.members {
        let c = counts.get(&m.site).cloned().unwrap_or_default();
        let last = c.last.as_ref().filter(|p| p.ok);
        let role = last.and_then(|p| p.role);
        view.insert(
            m.site.clone(),
            MemberHealth {
                site: m.site.clone(),
                healthy: last.is_some(),
                role,
                routed_primary: routed && st.primary.as_deref() == Some(m.site.as_str()),
                streaming: last.and_then(|p| p.streaming),
                lag_bytes: match (role, primary_last_lsn, last.and_then(|p| p.replay_lsn)) {
                    (Some(Role::Standby), Some(pl), Some(r)) => Some(pl.saturating_sub(r)),
                    _ => None,
                },
                lag_seconds: last.and_then(|p| p.lag_s),
                epoch: st.epoch,
                failure: c
                    .last
                    .as_ref()
                    .and_then(|p| p.failure.as_ref())
                    .map(Failure::describe),
            },
        );
    }
    if let Ok(mut s) = shared.lock() {
        *s = view;
    }
}

/// The snapshot `decide` judges.
/// What a daemon remembers of the primary from before it started (its [`SyncRecord`]), and
/// how long that may be trusted.
#[derive(Clone, Copy)]
pub struct Remembered<'a> {
    pub record: &'a SyncRecord,
    pub max_age: Duration,
}

impl Watched {
    /// How long a restarted daemon trusts its record of the synchronous standbys (default 5m).
    pub fn sync_record_max_age(&self) -> Duration {
        self.spec
            .sync_record_max_age
            .map(|d| d.std())
            .unwrap_or(Duration::from_secs(300))
    }
}

/// Per site: whether the primary's last successful check listed it as synchronous, and as
/// streaming (None: the primary has not been seen healthy). Standbys are matched by
/// application_name = site; with one standby and one listed, it is that one.
fn replication_of(w: &Watched, primary: Option<&str>, p: &Probe) -> BTreeMap<String, (bool, bool)> {
    let standby_count = w.members.len().saturating_sub(1);
    let sync: Vec<&str> = p
        .standbys
        .iter()
        .filter(|s| s.sync_state == "sync" || s.sync_state == "quorum")
        .map(|s| s.application_name.as_str())
        .collect();
    let streaming: Vec<&str> = p
        .standbys
        .iter()
        .filter(|s| s.state == "streaming")
        .map(|s| s.application_name.as_str())
        .collect();
    w.members
        .iter()
        .filter(|m| Some(m.site.as_str()) != primary)
        .map(|m| {
            let s = m.site.as_str();
            (
                m.site.clone(),
                (
                    sync.contains(&s) || (standby_count == 1 && !sync.is_empty()),
                    streaming.contains(&s) || (standby_count == 1 && !streaming.is_empty()),
                ),
            )
        })
        .collect()
}

/// The record to keep of a primary seen healthy in this tick (None: it was not).
pub fn sync_record(
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
    primary_last_lsn: Option<u64>,
) -> Option<SyncRecord> {
    let primary = st.primary.as_ref()?;
    let c = counts.get(primary)?;
    if c.failures > 0 || c.role() != Some(Role::Primary) {
        return None;
    }
    let p = c.last_ok.as_ref()?;
    let repl = replication_of(w, Some(primary), p);
    let standby_count = w.members.len().saturating_sub(1);
    let flushed = w
        .members
        .iter()
        .filter(|m| &m.site != primary)
        .filter_map(|m| {
            let row = p
                .standbys
                .iter()
                .find(|s| s.application_name == m.site)
                .or_else(|| {
                    (standby_count == 1 && p.standbys.len() == 1).then(|| &p.standbys[0])
                })?;
            Some((m.site.clone(), row.flush_lsn?))
        })
        .collect();
    Some(SyncRecord {
        primary: primary.clone(),
        epoch: st.epoch,
        system_id: p.system_id.clone(),
        timeline: p.timeline,
        primary_lsn: primary_last_lsn,
        synchronous: repl
            .iter()
            .filter(|(_, r)| r.0)
            .map(|(s, _)| s.clone())
            .collect(),
        streaming: repl
            .iter()
            .filter(|(_, r)| r.1)
            .map(|(s, _)| s.clone())
            .collect(),
        flushed,
        seen_at_ms: jiff::Timestamp::now().as_millisecond(),
    })
}

/// The world `decide` judges. What the primary last said of its standbys comes from this
/// run's checks; until the primary has answered one (a daemon restarted while it is down),
/// from `remembered` — trusted for synchronous standbys only while younger than its
/// `max_age`, and only for the same primary and epoch.
pub fn build_world(
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
    primary_last_lsn: Option<u64>,
    remembered: Option<Remembered<'_>>,
) -> World {
    let primary_probe = st
        .primary
        .as_ref()
        .and_then(|p| counts.get(p))
        .and_then(|c| c.last_ok.as_ref());
    let memory = remembered.filter(|r| {
        primary_probe.is_none()
            && Some(&r.record.primary) == st.primary.as_ref()
            && r.record.epoch == st.epoch
    });
    let memory_age_ms = memory
        .map(|r| (jiff::Timestamp::now().as_millisecond() - r.record.seen_at_ms).max(0) as u64);
    let memory_fresh = match (memory, memory_age_ms) {
        (Some(r), Some(age)) => u128::from(age) <= r.max_age.as_millis(),
        _ => false,
    };
    // site → (was synchronous, was streaming); None: unknown.
    let repl: Option<BTreeMap<String, (bool, bool)>> = match (primary_probe, memory) {
        (Some(p), _) => Some(replication_of(w, st.primary.as_deref(), p)),
        (None, Some(r)) => Some(
            w.members
                .iter()
                .filter(|m| Some(&m.site) != st.primary.as_ref())
                .map(|m| {
                    (
                        m.site.clone(),
                        (
                            memory_fresh && r.record.synchronous.contains(&m.site),
                            r.record.streaming.contains(&m.site),
                        ),
                    )
                })
                .collect(),
        ),
        (None, None) => None,
    };
    let primary_last_lsn = primary_last_lsn.or_else(|| memory.and_then(|r| r.record.primary_lsn));
    World {
        service: w.service.clone(),
        mode: w.mode,
        max_lag_bytes: w.max_lag,
        unhealthy_threshold: w.spec.unhealthy_threshold.unwrap_or(3),
        healthy_threshold: w.spec.healthy_threshold.unwrap_or(2),
        auto_failover: w.spec.auto.unwrap_or(true),
        members: w
            .members
            .iter()
            .map(|m| {
                let c = counts.get(&m.site).cloned().unwrap_or_default();
                let known = c.last_ok.as_ref();
                // The primary not seen this run: what the record says it was.
                let recalled = memory
                    .filter(|_| known.is_none() && Some(&m.site) == st.primary.as_ref())
                    .map(|r| r.record);
                let r = repl.as_ref().and_then(|r| r.get(&m.site)).copied();
                MemberView {
                    site: m.site.clone(),
                    failures: c.failures,
                    successes: c.successes,
                    last_failure: c.last.as_ref().and_then(|p| p.failure.clone()),
                    role: known
                        .and_then(|p| p.role)
                        .or(recalled.map(|_| Role::Primary)),
                    system_id: known
                        .and_then(|p| p.system_id.clone())
                        .or_else(|| recalled.and_then(|r| r.system_id.clone())),
                    timeline: known
                        .and_then(|p| p.timeline)
                        .or_else(|| recalled.and_then(|r| r.timeline)),
                    received_lsn: known
                        .and_then(|p| p.lsn)
                        .filter(|_| known.and_then(|p| p.role) == Some(Role::Standby)),
                    replayed_lsn: known.and_then(|p| p.replay_lsn),
                    was_sync: r.is_some_and(|r| r.0),
                    was_streaming: r.map(|r| r.1),
                    lag_seconds: known.and_then(|p| p.lag_s),
                    clients_reach_it: c.clients_reach_it,
                    sync_record_too_old_s: memory
                        .filter(|r| !memory_fresh && r.record.synchronous.contains(&m.site))
                        .and(memory_age_ms)
                        .map(|ms| ms / 1000),
                }
            })
            .collect(),
        primary: st.primary.clone(),
        epoch: st.epoch,
        primary_last_lsn,
        failover_in_progress: st.in_progress.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn failover(
    w: &Watched,
    state: &StateFile,
    route_tx: &watch::Sender<Route>,
    st: &mut FailoverState,
    from: Option<String>,
    to: &str,
    epoch: u64,
    counts: &BTreeMap<String, Counts>,
) -> Result<Vec<crate::runbook::BuiltinStep>, Error> {
    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut step = |action: &str, detail: String, t: &mut Instant| {
        steps.push(crate::runbook::BuiltinStep {
            action: action.into(),
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
        *t = Instant::now();
    };
    // 1. Intent first: a restart resumes this exact failover.
    st.in_progress = Some((to.to_string(), epoch));
    st.epoch = st.epoch.max(epoch);
    state.store(st)?;
    failpoint::hit("failover-after-intent");
    // 2. Cut traffic: no connection goes anywhere until the new primary takes writes.
    let _ = route_tx.send(Route {
        epoch,
        target: None,
    });
    // 3. Stop the old primary if it still answers and lives here.
    if let Some(f) = &from {
        if counts
            .get(f)
            .and_then(|c| c.last.as_ref())
            .is_some_and(|p| p.answered)
        {
            // The endpoint no longer routes to it whatever happens here; a stop that fails is
            // said, not hidden (it may still take writes from clients that bypass Lifeboat).
            match fence(w, f).await {
                Ok(()) => step("fence", format!("{f} stopped"), &mut t),
                Err(e) => {
                    log(
                        "fence_failed",
                        &w.service,
                        serde_json::json!({"site": f, "error": e.to_string(), "hint": e.hint}),
                    );
                    step(
                        "fence",
                        format!("{f} refused by the endpoint only; stopping it failed: {e}"),
                        &mut t,
                    );
                }
            }
        } else {
            step(
                "fence",
                format!("{f} does not answer: refused by the endpoint from epoch {epoch} on"),
                &mut t,
            );
        }
    }
    // 4. Promote (a no-op if it already is the primary: a resumed failover).
    let target = w
        .members
        .iter()
        .find(|m| m.site == to)
        .ok_or_else(|| Error::new(Kind::Input, format!("no member {to}")))?
        .clone();
    let session = Session::connect(&target, Duration::from_secs(5)).await?;
    let mut promoted = format!("{to} already promoted");
    if session.in_recovery().await? {
        promoted = format!("{to} promoted (pg_promote)");
        if let Some(was) = session.promote().await? {
            log(
                "sync_standbys_cleared",
                &w.service,
                serde_json::json!({"member": to, "was": was,
                    "note": "no standby follows the new primary yet: commits are not synchronously replicated until one rejoins"}),
            );
        }
    }
    failpoint::hit("failover-after-promote");
    // 5. It takes writes.
    session.check_write().await?;
    drop(session);
    step("promote", format!("{promoted}; it accepts a write"), &mut t);
    // 6. Route, and close the record.
    st.primary = Some(to.to_string());
    st.in_progress = None;
    state.store(st)?;
    let _ = route_tx.send(Route {
        epoch,
        target: Some(format!("{}:{}", target.host, target.port)),
    });
    step(
        "switch-traffic",
        format!(
            "the endpoint routes to {to} ({}:{}), epoch {epoch}",
            target.host, target.port
        ),
        &mut t,
    );
    Ok(steps)
}

/// Stop a member that must not take writes, when its data directory is on this host.
async fn fence(w: &Watched, site: &str) -> Result<(), Error> {
    let Some(m) = w.members.iter().find(|m| m.site == site) else {
        return Ok(());
    };
    if m.data_dir.is_none() {
        return Err(Error::new(
            Kind::Input,
            format!("{site} has no data_dir on this host: it is refused by the endpoint only"),
        ));
    }
    crate::pgops::stop_fast(&w.bin_dir, m, 10).await
}

fn record(
    ctx: &Context,
    service: &str,
    d: &Decision,
    outcome: &str,
    started: Instant,
    steps: Option<&Vec<crate::runbook::BuiltinStep>>,
) {
    let command = match d.action {
        Action::Failover { .. } => "failover",
        Action::Fence { .. } => "fence",
        _ => "decision",
    };
    let mut figures = serde_json::to_value(d).unwrap_or_default();
    if let Some(s) = steps {
        figures["steps"] = serde_json::to_value(s).unwrap_or_default();
    }
    if let Err(e) = ctx.record(command, service, outcome, started, figures) {
        log(
            "error",
            service,
            serde_json::json!({"error": format!("evidence log: {e}")}),
        );
    }
}
