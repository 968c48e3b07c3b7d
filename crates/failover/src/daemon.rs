//! The monitor of one postgres service (`lifeboat serve` runs one per service): probe every
//! member every `interval`, keep consecutive pass/fail counts, build a [`World`], call
//! [`decide`], and act — fail over (the [`crate::sequence`]) or fence a writable old primary;
//! carry out requests from commands (switchover, manual failover); route the endpoint and the
//! DNS name to the primary; publish what the health endpoints answer. State that must survive a
//! restart lives in [`crate::coord`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lifeboat_core::decide::{decide, Action, Decision, Failure, Role};
use lifeboat_core::plan::Severity;
use lifeboat_core::Error;
use tokio::sync::watch;

use crate::coord::{FailoverState, StateFile, SyncFile, SyncRecord};
use crate::healthapi::{MemberHealth, Shared};
use crate::log::log;
use crate::sequence::fence;
use crate::traffic::Route;
use crate::world::{build_world, sync_record, Counts, Remembered, Watched};
use lifeboat_context::Context;

/// One service's monitor: what it keeps between ticks.
struct Monitor {
    w: Watched,
    state: StateFile,
    route_tx: watch::Sender<Route>,
    shared: Shared,
    ctx: Context,
    notifier: lifeboat_context::notify::Notifier,
    dns: Option<crate::dns::Names>,
    control: crate::control::Control,
    counts: BTreeMap<String, Counts>,
    last_reason: String,
    primary_last_lsn: Option<u64>,
    /// What was last seen of the primary's replication, kept on disk for the next start.
    sync_file: SyncFile,
    remembered: Option<SyncRecord>,
    remembered_at: Option<Instant>,
    /// Actions that failed: retried after 1, 2, 4 … 30 s, not at every tick.
    backoff: Backoff,
}

/// What a step of the tick asks of the loop.
enum Next {
    /// Go on with this tick.
    Go,
    /// End this tick; check again after the interval.
    Later,
    /// End this tick; check again at once (the world just changed).
    Now,
}

/// Run one service's monitor until `stop` says so.
#[allow(clippy::too_many_arguments)]
pub async fn monitor(
    w: Watched,
    state: StateFile,
    route_tx: watch::Sender<Route>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
    ctx: Context,
    notifier: lifeboat_context::notify::Notifier,
    dns: Option<crate::dns::Names>,
) {
    let sync_file = SyncFile::new(&ctx.state_dir, &w.service);
    let mut m = Monitor {
        control: crate::control::Control::new(&ctx.state_dir),
        remembered: sync_file.load(),
        sync_file,
        w,
        state,
        route_tx,
        shared,
        ctx,
        notifier,
        dns,
        counts: BTreeMap::new(),
        last_reason: String::new(),
        primary_last_lsn: None,
        remembered_at: None,
        backoff: Backoff::default(),
    };
    let interval = m.w.interval();
    let mut next = tokio::time::Instant::now();
    // LIFEBOAT_LOG_EVERY_CHECK=1: one log line per check with how late it started (for the
    // benchmark of the checks' jitter; off by default, it is two lines a second).
    let log_every = std::env::var("LIFEBOAT_LOG_EVERY_CHECK").is_ok_and(|v| v == "1");
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let tick = tokio::time::Instant::now();
        if log_every {
            log(
                "check",
                &m.w.service,
                serde_json::json!({"late_ms": tick.saturating_duration_since(next).as_secs_f64() * 1000.0}),
            );
        }
        next = tick + interval;
        match m.tick().await {
            (_, Next::Now) => next = tokio::time::Instant::now(),
            (true, _) => next = tick + m.w.recheck_interval(),
            _ => {}
        }
    }
}

impl Monitor {
    /// One tick: check, load the state, adopt or take a request, decide, act, route and
    /// publish. Returns whether the primary was refused (re-check it sooner) and what next.
    async fn tick(&mut self) -> (bool, Next) {
        self.check().await;
        let mut st = match self.state.load() {
            Ok(s) => s,
            Err(e) => {
                self.error(&e);
                return (false, Next::Later);
            }
        };
        if let Next::Later = self.adopt(&mut st) {
            return (false, Next::Later);
        }
        if let n @ Next::Now = self.request(&st).await {
            return (false, n);
        }
        let refused = self.follow_primary(&st);
        self.remember_sync(&st);
        let d = self.decide(&st);
        let next = self.act(&mut st, &d).await;
        self.route(&st);
        publish(
            &self.w,
            &self.counts,
            &st,
            self.primary_last_lsn,
            &self.route_tx,
            &self.shared,
        );
        self.follow_dns(&st);
        (refused, next)
    }

    fn error(&self, e: &Error) {
        log(
            "error",
            &self.w.service,
            serde_json::json!({"error": e.to_string()}),
        );
    }

    /// Every member's checks, then the witnesses of the ones that fail.
    async fn check(&mut self) {
        for (site, p) in self.w.check_all().await {
            self.counts.entry(site).or_default().observe(p);
        }
        let sites: Vec<String> = self.w.spec.witness.keys().cloned().collect();
        for site in sites {
            let seen = self.w.witness(&site, &self.counts).await;
            if let Some(c) = self.counts.get_mut(&site) {
                c.clients_reach_it = seen;
            }
        }
    }

    /// At first start: adopt the one member that reports itself primary.
    fn adopt(&mut self, st: &mut FailoverState) -> Next {
        if st.primary.is_some() || st.in_progress.is_some() {
            return Next::Go;
        }
        let primaries: Vec<&String> = self
            .counts
            .iter()
            .filter(|(_, c)| c.failures == 0 && c.role() == Some(Role::Primary))
            .map(|(s, _)| s)
            .collect();
        if let [only] = primaries.as_slice() {
            let only = (*only).clone();
            match self.state.adopt(&only) {
                Ok(s) => *st = s,
                Err(e) => {
                    self.error(&e);
                    return Next::Later;
                }
            }
            log(
                "adopted",
                &self.w.service,
                serde_json::json!({"primary": only, "epoch": st.epoch}),
            );
        }
        Next::Go
    }

    /// An operator's request (switchover, manual failover) comes before this tick's decision.
    async fn request(&mut self, st: &FailoverState) -> Next {
        if st.in_progress.is_some() {
            return Next::Go;
        }
        let Some(req) = self.control.take(&self.w.service) else {
            return Next::Go;
        };
        let answer = handle(
            &self.w,
            &self.state,
            &self.route_tx,
            &req,
            &self.ctx,
            &self.counts,
        )
        .await;
        self.notifier.send(lifeboat_context::notify::Note {
            severity: if req.op == "failover" {
                Severity::P1
            } else {
                Severity::P3
            },
            event: req.op.clone(),
            service: self.w.service.clone(),
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
            only: None,
        });
        self.control.answer(&self.w.service, &req.id, &answer);
        self.counts.clear();
        Next::Now
    }

    /// Keep the healthy primary's last position; true when its connection was just refused
    /// (nothing listens: confirm quickly instead of waiting a whole interval per check; a
    /// timeout keeps the full window).
    fn follow_primary(&mut self, st: &FailoverState) -> bool {
        let threshold = self.w.spec.unhealthy_threshold.unwrap_or(3);
        let Some(p) = st.primary.as_ref().and_then(|p| self.counts.get(p)) else {
            return false;
        };
        if p.failures == 0 && p.role() == Some(Role::Primary) {
            self.primary_last_lsn = p.last.as_ref().and_then(|l| l.lsn);
        }
        matches!(
            p.last.as_ref().and_then(|l| l.failure.as_ref()),
            Some(Failure::Refused)
        ) && p.failures < threshold
    }

    /// Keep the record of the primary's synchronous standbys on disk: at once when the sets
    /// change, else at most once a second.
    fn remember_sync(&mut self, st: &FailoverState) {
        let Some(rec) = sync_record(&self.w, &self.counts, st, self.primary_last_lsn) else {
            return;
        };
        let same_sets = self.remembered.as_ref().is_some_and(|r| {
            (&r.primary, r.epoch, &r.synchronous, &r.streaming)
                == (&rec.primary, rec.epoch, &rec.synchronous, &rec.streaming)
        });
        if same_sets
            && self
                .remembered_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        match self.sync_file.store(&rec) {
            Ok(()) => self.remembered_at = Some(Instant::now()),
            Err(e) => log(
                "error",
                &self.w.service,
                serde_json::json!({"error": e.to_string(), "note": "the synchronous standbys could not be recorded: a daemon restarted while the primary is down would hold"}),
            ),
        }
        self.remembered = Some(rec);
    }

    /// This tick's decision; a new one is logged, kept for `status`, and a hold notified.
    fn decide(&mut self, st: &FailoverState) -> Decision {
        let world = build_world(
            &self.w,
            &self.counts,
            st,
            self.primary_last_lsn,
            self.remembered.as_ref().map(|record| Remembered {
                record,
                max_age: self.w.sync_record_max_age(),
            }),
        );
        let d = decide(&world);
        if d.reason == self.last_reason {
            return d;
        }
        log(
            "decision",
            &self.w.service,
            serde_json::to_value(&d).unwrap_or_default(),
        );
        if d.action == Action::Hold && st.primary.is_some() {
            self.notifier
                .send(note(Severity::P1, "hold", &self.w.service, &d.reason, &d));
        }
        self.last_reason = d.reason.clone();
        let dir = self.ctx.state_dir.join("daemon");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join(format!("{}.json", self.w.service)),
            serde_json::to_vec_pretty(&serde_json::json!({
                "decision": d, "epoch": st.epoch, "primary": st.primary,
                "time": jiff::Timestamp::now().to_string(),
            }))
            .unwrap_or_default(),
        );
        d
    }

    /// Carry out a failover or a fence (unless that action is backing off after a failure).
    async fn act(&mut self, st: &mut FailoverState, d: &Decision) -> Next {
        let key = serde_json::to_string(&d.action).unwrap_or_default();
        if self.backoff.waiting(&key) {
            return Next::Go;
        }
        match d.action.clone() {
            Action::Failover { from, to, epoch } => {
                let started = Instant::now();
                let r = crate::sequence::failover(
                    &self.w,
                    &self.state,
                    &self.route_tx,
                    st,
                    from.clone(),
                    &to,
                    epoch,
                    &self.counts,
                )
                .await;
                let outcome = if r.is_ok() { "ok" } else { "failed" };
                log(
                    "failover",
                    &self.w.service,
                    serde_json::json!({"from": from, "to": to, "epoch": epoch, "outcome": outcome,
                        "error": r.as_ref().err().map(|e| e.to_string()),
                        "ms": started.elapsed().as_millis() as u64, "reason": d.reason,
                        "steps": r.as_ref().ok()}),
                );
                record(
                    &self.ctx,
                    &self.w.service,
                    d,
                    outcome,
                    started,
                    r.as_ref().ok(),
                );
                self.notifier.send(note(
                    Severity::P1,
                    "failover",
                    &self.w.service,
                    &match &r {
                        Ok(_) => format!("failed over to {to} (epoch {epoch}): {}", d.reason),
                        Err(e) => format!("failover to {to} FAILED: {e}"),
                    },
                    d,
                ));
                self.backoff.outcome(&key, r.is_ok());
                if let Ok(done) = r {
                    after_failover_runbooks(
                        &self.ctx,
                        &self.w.service,
                        from.as_deref(),
                        &to,
                        epoch,
                        done,
                    );
                    // The new primary's state is known now; check again at once.
                    self.counts.clear();
                    return Next::Now;
                }
                Next::Go
            }
            Action::Fence { site, epoch } => {
                let started = Instant::now();
                let r = fence(&self.w, &site).await;
                log(
                    "fence",
                    &self.w.service,
                    serde_json::json!({"site": site, "epoch": epoch,
                        "error": r.as_ref().err().map(|e| e.to_string())}),
                );
                record(
                    &self.ctx,
                    &self.w.service,
                    d,
                    if r.is_ok() { "ok" } else { "failed" },
                    started,
                    None,
                );
                self.notifier
                    .send(note(Severity::P2, "fence", &self.w.service, &d.reason, d));
                self.backoff.outcome(&key, r.is_ok());
                Next::Go
            }
            _ => Next::Go,
        }
    }

    /// Route writes to the recorded primary while it is healthy.
    fn route(&self, st: &FailoverState) {
        let target = st.primary.as_ref().and_then(|p| {
            let c = self.counts.get(p)?;
            let healthy = c.failures == 0 && c.role() == Some(Role::Primary);
            healthy
                .then(|| self.w.members.iter().find(|m| &m.site == p))
                .flatten()
                .map(|m| format!("{}:{}", m.host, m.port))
        });
        let Some(t) = target else { return };
        let want = Route {
            epoch: st.epoch,
            target: Some(t),
        };
        if *self.route_tx.borrow() != want {
            log(
                "route",
                &self.w.service,
                serde_json::json!({"epoch": want.epoch, "target": want.target}),
            );
            let _ = self.route_tx.send(want);
        }
    }

    /// The DNS name follows the route: the primary's record while it takes writes.
    fn follow_dns(&self, st: &FailoverState) {
        let (Some(names), Some(spec)) = (&self.dns, &self.w.spec.dns) else {
            return;
        };
        let target = self
            .route_tx
            .borrow()
            .target
            .as_ref()
            .and(st.primary.as_ref())
            .and_then(|p| {
                spec.records.get(p).cloned().or_else(|| {
                    self.w
                        .members
                        .iter()
                        .find(|m| &m.site == p)
                        .map(|m| m.host.clone())
                })
            });
        let name = spec.key();
        if crate::dns::point(names, &name, target.clone()) {
            log(
                "dns",
                &self.w.service,
                serde_json::json!({"name": name, "target": target}),
            );
        }
    }
}

fn note(
    sev: Severity,
    event: &str,
    service: &str,
    summary: &str,
    d: &Decision,
) -> lifeboat_context::notify::Note {
    lifeboat_context::notify::Note {
        severity: sev,
        event: event.into(),
        service: service.into(),
        summary: summary.into(),
        details: serde_json::to_value(d).unwrap_or_default(),
        only: None,
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
    done: Vec<lifeboat_runbook::BuiltinStep>,
) {
    let env = vec![
        (
            "LIFEBOAT_FROM".to_string(),
            from.unwrap_or_default().to_string(),
        ),
        ("LIFEBOAT_TO".to_string(), to.to_string()),
        ("LIFEBOAT_EPOCH".to_string(), epoch.to_string()),
    ];
    for (name, rb) in &ctx.plan.runbooks {
        if rb.kind.as_deref() != Some("failover") || rb.service.as_deref() != Some(service) {
            continue;
        }
        spawn_runbook(ctx, name, service, env.clone(), Some(done.clone()));
    }
}

/// Run runbook `name` in the background, its steps logged under `service`. `done`: the
/// built-in failover steps an automatic failover already performed (the runbook's own are
/// then skipped); None: a runbook run for another event (its approval gates are refused: no
/// one is there to answer).
pub(crate) fn spawn_runbook(
    ctx: &Context,
    name: &str,
    service: &str,
    env: Vec<(String, String)>,
    done: Option<Vec<lifeboat_runbook::BuiltinStep>>,
) {
    let (ctx, name, svc) = (ctx.clone(), name.to_string(), service.to_string());
    tokio::spawn(async move {
        let svc2 = svc.clone();
        let opts = lifeboat_runbook::Options {
            yes: false,
            approve: Box::new(|_| false),
            progress: Box::new(move |r| {
                log(
                    "runbook_step",
                    &svc2,
                    serde_json::to_value(r).unwrap_or_default(),
                )
            }),
            after_failover: done.is_some(),
            done: done.unwrap_or_default(),
            env,
            actions: std::sync::Arc::new(crate::actions::Builtins),
        };
        if let Err(e) = lifeboat_runbook::run(&ctx, &name, opts).await {
            log(
                "error",
                &svc,
                serde_json::json!({"runbook": name, "error": e.to_string()}),
            );
        }
    });
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
    // The evidence log names who asked (a person, an API token), not the daemon.
    let mut asked = ctx.clone();
    asked.actor = req.actor.clone();
    let ctx = &asked;
    match req.op.as_str() {
        "switchover" => {
            let Some(to) = req.to.as_deref() else {
                return serde_json::json!({"error": "switchover needs a target site"});
            };
            let service = w.service.clone();
            let r = crate::switchover::run_switchover(
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
                timeline: last.and_then(|p| p.timeline),
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

fn record(
    ctx: &Context,
    service: &str,
    d: &Decision,
    outcome: &str,
    started: Instant,
    steps: Option<&Vec<lifeboat_runbook::BuiltinStep>>,
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
