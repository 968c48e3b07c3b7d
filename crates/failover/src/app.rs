//! The monitor of one application tier (`kind: http`): check every site's health URL every
//! `checks.interval` (all sites at once, each bounded by its timeout, so a URL that hangs
//! fails its own check and delays nothing else), keep consecutive pass/fail counts, read the
//! followed database's member view from its monitor, call [`lifeboat_core::route::route`] and
//! point the DNS name at the chosen site. Every change of the answer is logged, recorded in the
//! evidence log, notified, runs the `on_change` runbook, and is kept in
//! `<state>/routes/<service>.json` (for `status`, metrics, and the next start, which resumes
//! from the recorded site instead of starting over).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use lifeboat_core::decide::Role;
use lifeboat_core::plan::{DnsSpec, Failback, HealthCheck, HttpChecks, Service, Severity};
use lifeboat_core::route::{route, DbAt, Input, Route, SiteView};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::healthapi::Shared;
use crate::log::log;
use lifeboat_context::Context;

/// An http service as the monitor needs it.
#[derive(Clone, Debug)]
pub struct AppTier {
    pub service: String,
    /// Sites in order of preference, with their checks.
    pub sites: Vec<(String, HealthCheck)>,
    pub follows: Option<String>,
    pub checks: HttpChecks,
    pub failback: Failback,
    pub dns: Option<DnsSpec>,
    /// What the name answers per site: the plan's `dns.records`, else the health URL's host.
    pub records: BTreeMap<String, String>,
    pub on_change: Option<String>,
}

impl AppTier {
    /// `None` for services that are not http.
    pub fn from_plan(ctx: &Context, name: &str) -> Option<AppTier> {
        let Service::Http {
            health,
            order,
            follows,
            checks,
            failback,
            dns,
            on_change,
            ..
        } = ctx.plan.services.get(name)?
        else {
            return None;
        };
        // The plan's order; then the plan's site order; then any other site by name.
        let mut names: Vec<&String> = order.iter().collect();
        for s in ctx.plan.sites.iter().chain(health.keys()) {
            if health.contains_key(s) && !names.contains(&s) {
                names.push(s);
            }
        }
        let sites = names
            .into_iter()
            .filter_map(|s| Some((s.clone(), health.get(s)?.spec().check())))
            .collect();
        let records = health
            .iter()
            .filter_map(|(site, h)| {
                let r = dns
                    .as_ref()
                    .and_then(|d| d.records.get(site).cloned())
                    .or_else(|| h.spec().host())?;
                Some((site.clone(), r))
            })
            .collect();
        Some(AppTier {
            service: name.to_string(),
            sites,
            follows: follows.clone(),
            checks: checks.clone().unwrap_or_default(),
            failback: failback.unwrap_or_default(),
            dns: dns.clone(),
            records,
            on_change: on_change.clone(),
        })
    }

    pub fn order(&self) -> Vec<String> {
        self.sites.iter().map(|(s, _)| s.clone()).collect()
    }
}

/// What the checks of one site have shown so far.
#[derive(Clone, Debug, Default)]
struct SiteCounts {
    failures: u32,
    successes: u32,
    /// None until the first check: a site's first result is taken as it is (a daemon that
    /// starts does not wait out the thresholds before it can answer).
    healthy: Option<bool>,
    failure: Option<String>,
    /// The followed database's member here: what counts, and how many ticks in a row it
    /// has looked down (a member is taken as down after `unhealthy_threshold` of them, not on
    /// one failed probe).
    db: Option<DbAt>,
    db_down_ticks: u32,
}

impl SiteCounts {
    fn observe(&mut self, r: Result<(), String>, checks: &HttpChecks) {
        match r {
            Ok(()) => {
                self.successes += 1;
                self.failures = 0;
                self.failure = None;
                if self.healthy.is_none() || self.successes >= checks.healthy_threshold() {
                    self.healthy = Some(true);
                } else if self.healthy == Some(false) {
                    self.failure = Some(format!(
                        "recovering: {} of {} passing checks in a row",
                        self.successes,
                        checks.healthy_threshold()
                    ));
                }
            }
            Err(e) => {
                self.failures += 1;
                self.successes = 0;
                self.failure = Some(e);
                if self.healthy.is_none() || self.failures >= checks.unhealthy_threshold() {
                    self.healthy = Some(false);
                }
            }
        }
    }
}

/// What `<state>/routes/<service>.json` holds: the answer and the view it was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteRecord {
    pub site: Option<String>,
    pub record: Option<String>,
    /// The followed database's primary site when this answer was chosen.
    pub chosen_with_primary: Option<String>,
    pub reason: String,
    pub held: Option<String>,
    /// When the answer last changed (RFC 3339).
    pub since: Option<String>,
    pub sites: BTreeMap<String, SiteState>,
    /// When this was written.
    pub time: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SiteState {
    pub healthy: Option<bool>,
    pub failure: Option<String>,
    pub record: Option<String>,
    /// With `follows`: what the database member here is.
    pub db: Option<DbAt>,
}

pub fn record_path(state_dir: &std::path::Path, service: &str) -> PathBuf {
    state_dir.join("routes").join(format!("{service}.json"))
}

/// The record of `service`'s answer, if the daemon has written one.
pub fn load_record(state_dir: &std::path::Path, service: &str) -> Option<RouteRecord> {
    serde_json::from_slice(&std::fs::read(record_path(state_dir, service)).ok()?).ok()
}

struct Monitor {
    app: AppTier,
    ctx: Context,
    notifier: lifeboat_context::notify::Notifier,
    dns: Option<crate::dns::Names>,
    db: Option<Shared>,
    control: crate::control::Control,
    counts: BTreeMap<String, SiteCounts>,
    rec: RouteRecord,
    written: Option<(Option<String>, String, BTreeMap<String, SiteState>)>,
}

/// Run one http service's monitor until `stop` says so. `db`: the followed postgres
/// service's member view (its monitor publishes it).
pub async fn monitor(
    app: AppTier,
    db: Option<Shared>,
    mut stop: watch::Receiver<bool>,
    ctx: Context,
    notifier: lifeboat_context::notify::Notifier,
    dns: Option<crate::dns::Names>,
) {
    let rec = load_record(&ctx.state_dir, &app.service).unwrap_or_default();
    let mut m = Monitor {
        control: crate::control::Control::new(&ctx.state_dir),
        app,
        ctx,
        notifier,
        dns,
        db,
        counts: BTreeMap::new(),
        rec,
        written: None,
    };
    if let Some(site) = m.rec.site.clone() {
        log(
            "resumed",
            &m.app.service,
            serde_json::json!({"site": site, "note": "answering the recorded site until the first checks"}),
        );
        m.point_dns();
    }
    let interval = m.app.checks.interval();
    let mut next = tokio::time::Instant::now();
    // Between checks, the followed database's view is looked at every 100 ms: when its routed
    // primary moves, the answer follows at once on the checks already made, instead of up to
    // an interval later.
    let peek = std::time::Duration::from_millis(100);
    let mut seen_primary = m.primary();
    loop {
        let wake = match m.db {
            Some(_) => next.min(tokio::time::Instant::now() + peek),
            None => next,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let primary = m.primary();
        if tokio::time::Instant::now() >= next {
            next = tokio::time::Instant::now() + interval;
            m.tick(true).await;
        } else if primary != seen_primary {
            m.tick(false).await;
        }
        seen_primary = primary;
    }
}

impl Monitor {
    /// Check the sites (or, `check` false, decide again on the last checks because the
    /// database moved), decide, move the answer, answer a request.
    async fn tick(&mut self, check: bool) {
        if check || self.counts.is_empty() {
            self.check().await;
        }
        if self.waiting_for_db() {
            return;
        }
        self.follow_db();
        let req = self.control.take(&self.app.service);
        let failback_requested = req.as_ref().is_some_and(|r| r.op == "failback");
        let r = self.decide(failback_requested);
        let previous = self.rec.site.clone();
        if r.site != previous {
            self.change(
                previous.as_deref(),
                &r,
                req.as_ref().map(|q| q.actor.as_str()),
            );
        } else if r.reason != self.rec.reason {
            log(
                "decision",
                &self.app.service,
                serde_json::to_value(&r).unwrap_or_default(),
            );
        }
        self.rec.reason = r.reason.clone();
        self.rec.held = r.held.clone();
        self.store();
        if let Some(req) = req {
            let answer = match req.op.as_str() {
                "failback" => serde_json::json!({
                    "site": r.site, "from": previous, "reason": r.reason,
                    "record": self.rec.record,
                }),
                other => {
                    serde_json::json!({"error": format!("`{other}` is not a request for an http service")})
                }
            };
            self.control.answer(&self.app.service, &req.id, &answer);
        }
    }

    /// Every site's check at once, each bounded by its own timeout.
    async fn check(&mut self) {
        let mut set = tokio::task::JoinSet::new();
        let timeout = self.app.checks.timeout();
        for (site, check) in &self.app.sites {
            let (site, check) = (site.clone(), check.clone());
            set.spawn(async move {
                let r =
                    lifeboat_pg::health::extra_checks(std::slice::from_ref(&check), timeout).await;
                (site, r)
            });
        }
        while let Some(done) = set.join_next().await {
            if let Ok((site, r)) = done {
                let checks = &self.app.checks;
                self.counts.entry(site).or_default().observe(r, checks);
            }
        }
    }

    /// Before the followed database's monitor has checked its members, nothing is known of
    /// where writes go: no decision yet (the recorded answer, if any, stays).
    fn waiting_for_db(&self) -> bool {
        self.db
            .as_ref()
            .is_some_and(|s| s.lock().map(|v| v.is_empty()).unwrap_or(true))
    }

    /// The followed database's member at each site, as its monitor last published it.
    fn follow_db(&mut self) {
        let Some(shared) = &self.db else { return };
        let view = shared.lock().map(|v| v.clone()).unwrap_or_default();
        let threshold = self.app.checks.unhealthy_threshold();
        for (site, c) in self.counts.iter_mut() {
            let Some(m) = view.get(site) else {
                // No member of the database at this site: nothing bars it. (Before the
                // database's first check its view is empty: every site is unknown.)
                c.db = if view.is_empty() {
                    Some(DbAt::Unknown)
                } else {
                    None
                };
                continue;
            };
            let now = if m.routed_primary {
                DbAt::RoutedPrimary
            } else if !m.healthy {
                DbAt::Down(
                    m.failure
                        .clone()
                        .unwrap_or_else(|| "fails its checks".into()),
                )
            } else if m.role == Some(Role::Primary) {
                DbAt::UnroutedPrimary
            } else {
                DbAt::Standby
            };
            if matches!(now, DbAt::Down(_)) {
                c.db_down_ticks += 1;
                let known_good = matches!(c.db, Some(DbAt::Standby | DbAt::RoutedPrimary));
                if known_good && c.db_down_ticks < threshold {
                    continue;
                }
            } else {
                c.db_down_ticks = 0;
            }
            c.db = Some(now);
        }
    }

    fn primary(&self) -> Option<String> {
        let shared = self.db.as_ref()?;
        let view = shared.lock().ok()?;
        view.values()
            .find(|m| m.routed_primary)
            .map(|m| m.site.clone())
    }

    fn decide(&self, failback_requested: bool) -> Route {
        let sites: BTreeMap<String, SiteView> = self
            .counts
            .iter()
            .map(|(s, c)| {
                (
                    s.clone(),
                    SiteView {
                        healthy: c.healthy == Some(true),
                        failure: c.failure.clone(),
                        db: c.db.clone(),
                    },
                )
            })
            .collect();
        let order = self.app.order();
        let primary = self.primary();
        route(&Input {
            order: &order,
            sites: &sites,
            follows: self.app.follows.as_deref().map(|f| (f, primary.as_deref())),
            current: self.rec.site.as_deref(),
            chosen_with_primary: self.rec.chosen_with_primary.as_deref(),
            failback: self.app.failback,
            failback_requested,
        })
    }

    /// The answer moves: DNS first (clients), then the log, the evidence, people, the hook.
    fn change(&mut self, from: Option<&str>, r: &Route, asked_by: Option<&str>) {
        let started = Instant::now();
        let svc = self.app.service.clone();
        let primary_before = self.rec.chosen_with_primary.clone();
        self.rec.site = r.site.clone();
        self.rec.record = r
            .site
            .as_ref()
            .and_then(|s| self.app.records.get(s).cloned());
        self.rec.chosen_with_primary = self.primary();
        self.rec.since = Some(jiff::Timestamp::now().to_string());
        self.point_dns();
        let order = self.app.order();
        let rank = |s: Option<&str>| s.and_then(|s| order.iter().position(|o| o == s));
        // The database moved (its primary changed, or the member at the old site went
        // down or stopped being the routed primary): the app follows it.
        let db_moved = self.app.follows.is_some()
            && (primary_before != self.rec.chosen_with_primary
                || from.is_some_and(|f| {
                    self.counts.get(f).is_some_and(|c| {
                        !matches!(c.db, None | Some(DbAt::RoutedPrimary | DbAt::Standby))
                    })
                }));
        let kind = match (from, r.site.as_deref()) {
            (_, None) => "no answer",
            (None, Some(_)) => "first answer",
            (Some(_), Some(_)) if db_moved => "follows the database",
            (f, Some(to)) if rank(Some(to)) < rank(f) => "failback",
            _ => "failover",
        };
        let figures = serde_json::json!({
            "from": from, "to": r.site, "record": self.rec.record, "change": kind,
            "reason": r.reason, "name": self.app.dns.as_ref().map(|d| d.name.clone()),
            "asked_by": asked_by,
        });
        log("route", &svc, figures.clone());
        if let Err(e) = self.ctx.record(
            "route",
            &svc,
            if r.site.is_some() { "ok" } else { "failed" },
            started,
            figures.clone(),
        ) {
            log(
                "error",
                &svc,
                serde_json::json!({"error": format!("evidence log: {e}")}),
            );
        }
        if kind != "first answer" {
            let to = r.site.as_deref().unwrap_or("nowhere");
            self.notifier.send(lifeboat_context::notify::Note {
                severity: match kind {
                    "no answer" => Severity::P1,
                    "failback" => Severity::P3,
                    _ => Severity::P2,
                },
                event: "route".into(),
                service: svc.clone(),
                summary: format!(
                    "{svc} {kind}: {} → {to}: {}",
                    from.unwrap_or("nowhere"),
                    r.reason
                ),
                details: figures,
                only: None,
            });
        }
        if let Some(rb) = &self.app.on_change {
            let env = vec![
                ("LIFEBOAT_SERVICE".to_string(), svc.clone()),
                (
                    "LIFEBOAT_SITE".to_string(),
                    r.site.clone().unwrap_or_default(),
                ),
                (
                    "LIFEBOAT_RECORD".to_string(),
                    self.rec.record.clone().unwrap_or_default(),
                ),
                (
                    "LIFEBOAT_FROM".to_string(),
                    from.unwrap_or_default().to_string(),
                ),
                ("LIFEBOAT_REASON".to_string(), r.reason.clone()),
            ];
            crate::daemon::spawn_runbook(&self.ctx, rb, &svc, env, None);
        }
    }

    fn point_dns(&self) {
        let (Some(names), Some(spec)) = (&self.dns, &self.app.dns) else {
            return;
        };
        let target = self
            .rec
            .site
            .as_ref()
            .and_then(|s| self.app.records.get(s).cloned());
        crate::dns::point(names, &spec.key(), target);
    }

    /// Keep the record on disk when the answer, the reason or a site's health changed.
    fn store(&mut self) {
        let sites: BTreeMap<String, SiteState> = self
            .app
            .sites
            .iter()
            .map(|(s, _)| {
                let c = self.counts.get(s).cloned().unwrap_or_default();
                (
                    s.clone(),
                    SiteState {
                        healthy: c.healthy,
                        failure: c.failure,
                        record: self.app.records.get(s).cloned(),
                        db: c.db,
                    },
                )
            })
            .collect();
        let key = (
            self.rec.site.clone(),
            self.rec.reason.clone(),
            sites.clone(),
        );
        if self.written.as_ref() == Some(&key) {
            return;
        }
        self.rec.sites = sites;
        self.rec.time = jiff::Timestamp::now().to_string();
        let path = record_path(&self.ctx.state_dir, &self.app.service);
        let body = serde_json::to_vec_pretty(&self.rec).unwrap_or_default();
        match lifeboat_context::write_atomically(&path, &body) {
            Ok(()) => self.written = Some(key),
            Err(e) => log(
                "error",
                &self.app.service,
                serde_json::json!({"error": format!("{}: {e}", path.display()), "note": "the answer is served; a restarted daemon would start from its checks"}),
            ),
        }
    }
}
