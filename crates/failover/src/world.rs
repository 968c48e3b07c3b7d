//! The world a failover decision is made on: a postgres service as the daemon watches it
//! ([`Watched`]), what the checks of each member have shown ([`Counts`]), the daemon's record of
//! the primary's synchronous standbys from before it started ([`Remembered`]), and the
//! [`World`] snapshot built from them for `lifeboat_core::decide`. Shared by the monitor,
//! `status`, manual failover, switchover, rejoin and runbooks.

use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_core::decide::{Failure, MemberView, Role, World};
use lifeboat_core::plan::{FailoverSpec, HealthCheck, ReplicationMode, Service};
use lifeboat_core::{Error, Kind};

use crate::coord::{FailoverState, SyncRecord};
use lifeboat_context::Context;
use lifeboat_pg::health::{extra_checks, probe, Probe};
use lifeboat_pg::{Member, PgService};

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
#[derive(Clone)]
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
    // `sync` standbys (priority commit, `FIRST k (…)`) each hold every acknowledged commit. A
    // `quorum` standby (`ANY k (…)`) does only when it is the one listed: with several, a
    // commit may be on k of them and not on the one promoted, so none counts as synchronous
    // (a sync tier then holds rather than risk losing acknowledged writes).
    let quorum = p
        .standbys
        .iter()
        .filter(|s| s.sync_state == "quorum")
        .count();
    let sync: Vec<&str> = p
        .standbys
        .iter()
        .filter(|s| s.sync_state == "sync" || (s.sync_state == "quorum" && quorum == 1))
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

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_pg::health::StandbyRow;

    fn watched(sites: &[&str]) -> Watched {
        let members: String = sites
            .iter()
            .enumerate()
            .map(|(i, s)| format!("      {s}: {{ host: 127.0.0.1, port: {} }}\n", 5432 + i))
            .collect();
        let yaml = format!(
            "name: t\ntiers:\n  gold: {{ rpo: 0s, rto: 1m }}\nsites: [{}]\nservices:\n  db:\n    kind: postgres\n    tier: gold\n    members:\n{members}    replication: {{ mode: sync }}\n    failover: {{}}\n",
            sites.join(", ")
        );
        let plan = lifeboat_core::parse_plan(&yaml, "p.yaml").unwrap_or_else(|d| panic!("{d:?}"));
        let ctx = Context {
            plan,
            plan_path: "p.yaml".into(),
            base: ".".into(),
            state_dir: std::env::temp_dir(),
            actor: "test".into(),
        };
        Watched::from_plan(&ctx, "db").unwrap().unwrap()
    }

    fn primary_listing(rows: &[(&str, &str)]) -> Probe {
        Probe {
            ok: true,
            answered: true,
            failure: None,
            role: Some(Role::Primary),
            system_id: Some("1".into()),
            timeline: Some(1),
            lsn: Some(100),
            replay_lsn: None,
            lag_s: None,
            streaming: None,
            standbys: rows
                .iter()
                .map(|(name, sync)| StandbyRow {
                    application_name: name.to_string(),
                    state: "streaming".into(),
                    sync_state: sync.to_string(),
                    flush_lsn: Some(100),
                    replay_lsn: Some(100),
                    replay_lag_s: None,
                })
                .collect(),
            latency_ms: 1,
        }
    }

    #[test]
    fn only_standbys_that_hold_every_acknowledged_commit_count_as_synchronous() {
        let w = watched(&["a", "b", "c"]);
        // FIRST 1 (b, c): b is sync, c potential.
        let r = replication_of(
            &w,
            Some("a"),
            &primary_listing(&[("b", "sync"), ("c", "potential")]),
        );
        assert_eq!((r["b"].0, r["c"].0), (true, false));
        // ANY 1 (b, c): a commit may be on c only; neither may be taken for synchronous.
        let r = replication_of(
            &w,
            Some("a"),
            &primary_listing(&[("b", "quorum"), ("c", "quorum")]),
        );
        assert_eq!((r["b"].0, r["c"].0), (false, false));
        assert!(r["b"].1 && r["c"].1, "both still stream");
        // ANY 1 (b) with c not listed: b holds every commit.
        let r = replication_of(
            &w,
            Some("a"),
            &primary_listing(&[("b", "quorum"), ("c", "async")]),
        );
        assert_eq!((r["b"].0, r["c"].0), (true, false));
    }
}
