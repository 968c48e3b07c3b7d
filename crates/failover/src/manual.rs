//! Manual failover, as an on-call engineer runs it by hand: pre-checks (target healthy and caught up,
//! backups recent, plan valid), what will happen, then the same failover the daemon performs
//! automatically. A failover away from a healthy primary is refused unless forced.

use std::collections::BTreeMap;
use std::time::Instant;

use lifeboat_core::decide::{
    eligibility, eligibility_accepting_loss, Action, Decision, Failure, Role,
};
use lifeboat_core::{Error, Kind};
use serde::Serialize;
use tokio::sync::watch;

use crate::coord::{FailoverState, StateFile};
use crate::traffic::Route;
use crate::world::{build_world, Counts, Watched};
use lifeboat_context::Context;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub level: Level,
    pub what: String,
}

/// What an operator may override in a manual failover.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Overrides {
    /// Fail over although the primary is healthy (`--force`).
    pub force: bool,
    /// Promote a standby that is not proven to have every acknowledged write — not known to be
    /// synchronous in a sync tier, behind `max_lag_on_failover`, not streaming, or of unknown
    /// position (`--accept-data-loss`). Never one of another cluster, unhealthy, or on an older
    /// timeline.
    pub accept_loss: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverPlan {
    pub checks: Vec<Check>,
    pub steps: Vec<String>,
    pub decision: Decision,
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// One check of each member, judged as if it had lasted (thresholds of 1, 2 s deadline): what
/// a manual failover decides on.
pub async fn check_once(w: &mut Watched) -> BTreeMap<String, Counts> {
    w.spec.unhealthy_threshold = Some(1);
    w.spec.healthy_threshold = Some(1);
    w.spec.timeout = Some(lifeboat_core::units::Duration(
        std::time::Duration::from_secs(2),
    ));
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for (site, p) in w.check_all().await {
        counts.entry(site).or_default().observe(p);
    }
    counts
}

/// The pre-checks and the decision for a manual failover of `w` now.
pub fn plan_failover(
    ctx: &Context,
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
    to: Option<&str>,
    o: Overrides,
) -> FailoverPlan {
    let mut checks = Vec::new();
    let st = with_primary(w, counts, st, &mut checks);
    let world = world_of(ctx, w, counts, &st);
    let hold = |checks: Vec<Check>, reason: String| FailoverPlan {
        checks,
        steps: Vec::new(),
        decision: Decision {
            action: Action::Hold,
            reason,
        },
    };
    if let Some((t, e)) = &st.in_progress {
        return hold(
            checks,
            format!("a failover to {t} (epoch {e}) is under way: `lifeboat serve` finishes it"),
        );
    }
    let Some(from) = st.primary.clone() else {
        return hold(
            checks,
            format!("{}: no member is known to be the primary", w.service),
        );
    };
    checks.push(primary_check(&from, counts, o.force));
    let best = choose_target(&world, w, &from, to, o, &mut checks);
    checks.push(backup_check(ctx, w));
    checks.push(Check {
        level: Level::Ok,
        what: "plan: valid (checked when loaded)".into(),
    });
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .map(|c| c.what.clone())
        .collect();
    let Some((target, behind)) = best.filter(|_| failing.is_empty()) else {
        return hold(
            checks,
            format!("{}: not failing over: {}", w.service, failing.join("; ")),
        );
    };
    let epoch = st.epoch + 1;
    FailoverPlan {
        checks,
        steps: steps(&from, &target, epoch),
        decision: Decision {
            action: Action::Failover {
                from: Some(from.clone()),
                to: target.clone(),
                epoch,
            },
            reason: format!(
                "{}: manual failover from {from} to {target} ({behind} bytes behind), epoch {} → {epoch}",
                w.service, st.epoch
            ),
        },
    }
}

/// The state with its primary: the recorded one, else the one member that says it is primary,
/// else — when exactly one member is down and every other one is a standby — the one down.
fn with_primary(
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
    checks: &mut Vec<Check>,
) -> FailoverState {
    let mut st = st.clone();
    if st.primary.is_some() {
        return st;
    }
    let p: Vec<&String> = counts
        .iter()
        .filter(|(_, c)| c.role() == Some(Role::Primary))
        .map(|(s, _)| s)
        .collect();
    if let [only] = p.as_slice() {
        st.primary = Some((*only).clone());
    } else if p.is_empty() {
        let down: Vec<&String> = w
            .members
            .iter()
            .map(|m| &m.site)
            .filter(|s| counts.get(*s).is_none_or(|c| c.failures > 0))
            .collect();
        let standbys = counts
            .values()
            .filter(|c| c.role() == Some(Role::Standby))
            .count();
        if let [only] = down.as_slice() {
            if standbys + 1 == w.members.len() {
                st.primary = Some((*only).clone());
                checks.push(Check {
                    level: Level::Warn,
                    what: format!("no daemon state: {only} is taken for the primary (the one member that does not answer; the others are standbys)"),
                });
            }
        }
    }
    st
}

/// The world the failover rules judge, with a daemon's record of the synchronous standbys as
/// the daemon itself would use it.
fn world_of(
    ctx: &Context,
    w: &Watched,
    counts: &BTreeMap<String, Counts>,
    st: &FailoverState,
) -> lifeboat_core::decide::World {
    let primary_lsn = st
        .primary
        .as_ref()
        .and_then(|p| counts.get(p))
        .and_then(|c| c.last_ok.as_ref())
        .and_then(|p| p.lsn);
    let record = crate::coord::SyncFile::new(&ctx.state_dir, &w.service).load();
    build_world(
        w,
        counts,
        st,
        primary_lsn,
        record.as_ref().map(|record| crate::world::Remembered {
            record,
            max_age: w.sync_record_max_age(),
        }),
    )
}

/// The primary must be down, unless forced.
fn primary_check(from: &str, counts: &BTreeMap<String, Counts>, force: bool) -> Check {
    let pc = counts.get(from).cloned().unwrap_or_default();
    if pc.failures == 0 && pc.role() == Some(Role::Primary) {
        return Check {
            level: if force { Level::Warn } else { Level::Fail },
            what: format!(
                "primary {from} is healthy: a failover cuts its clients off and stops it{}",
                if force {
                    " (--force)"
                } else {
                    "; use `lifeboat switchover` for a planned change (nothing lost), or --force"
                }
            ),
        };
    }
    Check {
        level: Level::Ok,
        what: format!(
            "primary {from} is down ({})",
            pc.last
                .as_ref()
                .and_then(|p| p.failure.as_ref())
                .map(Failure::describe)
                .unwrap_or_else(|| "no answer".into())
        ),
    }
}

/// The target — the one named, or the best eligible standby — with a check per candidate:
/// (site, bytes behind), or None when none may be promoted.
fn choose_target(
    world: &lifeboat_core::decide::World,
    w: &Watched,
    from: &str,
    to: Option<&str>,
    o: Overrides,
    checks: &mut Vec<Check>,
) -> Option<(String, u64)> {
    let mut candidates: Vec<(String, Result<u64, String>)> = Vec::new();
    let mut accepted: Vec<String> = Vec::new();
    for m in w
        .members
        .iter()
        .filter(|m| m.site != from && to.is_none_or(|t| t == m.site))
    {
        let r = match eligibility(world, &m.site) {
            Err(why) if o.accept_loss => match eligibility_accepting_loss(world, &m.site) {
                Ok(behind) => {
                    checks.push(Check {
                        level: Level::Warn,
                        what: format!(
                            "{why} — ACCEPTED (--accept-data-loss): {}",
                            match behind {
                                Some(b) => format!("up to {b} bytes of WAL may be lost"),
                                None => "how much may be lost is unknown".to_string(),
                            }
                        ),
                    });
                    accepted.push(m.site.clone());
                    Ok(behind.unwrap_or(0))
                }
                Err(hard) => Err(hard),
            },
            r => r,
        };
        candidates.push((m.site.clone(), r));
    }
    if let Some(t) = to {
        if candidates.is_empty() {
            checks.push(Check {
                level: Level::Fail,
                what: if t == from {
                    format!("{t} is the primary")
                } else {
                    format!("{t} is not a member of {}", w.service)
                },
            });
        }
    }
    let best = candidates
        .iter()
        .filter_map(|(s, r)| r.as_ref().ok().map(|b| (s.clone(), *b)))
        // A standby that needs no waiver first, then the one least behind.
        .min_by_key(|(s, b)| (accepted.contains(s), *b));
    for (s, r) in &candidates {
        match r {
            Ok(_) if accepted.contains(s) => {}
            Ok(b) => checks.push(Check {
                level: Level::Ok,
                what: format!("{s}: healthy standby of the same cluster, {b} bytes behind the primary's last known position"),
            }),
            Err(why) => checks.push(Check {
                level: if to.is_some() || best.is_none() { Level::Fail } else { Level::Warn },
                what: why.clone(),
            }),
        }
    }
    best
}

/// The newest successful backup of this service, from the evidence log.
fn backup_check(ctx: &Context, w: &Watched) -> Check {
    let jobs: Vec<&String> = ctx
        .plan
        .backups
        .iter()
        .filter(|(_, j)| j.service == w.service)
        .map(|(n, _)| n)
        .collect();
    let last = ctx
        .evidence()
        .ok()
        .and_then(|e| e.list(None).ok())
        .and_then(|evs| {
            evs.into_iter()
                .rev()
                .find(|e| e.command == "backup" && e.outcome == "ok" && jobs.contains(&&e.target))
        });
    match last {
        Some(e) => {
            let age = e
                .time
                .parse::<jiff::Timestamp>()
                .map(|t| jiff::Timestamp::now().as_second() - t.as_second())
                .unwrap_or(0);
            Check {
                level: Level::Ok,
                what: format!("backups: last `{}` succeeded {} ago", e.target, ago(age)),
            }
        }
        None => Check {
            level: Level::Warn,
            what: format!(
                "backups: no successful backup of {} in the evidence log{}",
                w.service,
                if jobs.is_empty() {
                    " (no job backs it up)"
                } else {
                    ""
                }
            ),
        },
    }
}

/// What the failover will do, in order, for the pre-checks' listing.
fn steps(from: &str, target: &str, epoch: u64) -> Vec<String> {
    vec![
        format!(
            "record the intent: {target}, epoch {epoch} (a daemon restarted mid-way resumes it)"
        ),
        "cut traffic through the endpoint (new connections refused, open ones closed)".into(),
        format!("stop {from} (pg_ctl stop -m fast) if it still answers and its data_dir is here"),
        format!("promote {target} (pg_promote), clearing synchronous_standby_names if set"),
        format!("check that {target} accepts a write"),
        format!("route traffic to {target}; record the failover in the evidence log"),
    ]
}

/// Carry out a manual failover (checked again, now), recorded as `failover` in the evidence log.
pub async fn run_failover(
    ctx: &Context,
    w: &Watched,
    state: &StateFile,
    route: &watch::Sender<Route>,
    counts: &BTreeMap<String, Counts>,
    to: Option<&str>,
    o: Overrides,
) -> Result<FailoverPlan, Error> {
    let mut st = state.load()?;
    let plan = plan_failover(ctx, w, counts, &st, to, o);
    let Action::Failover { from, to, epoch } = plan.decision.action.clone() else {
        return Err(Error::new(Kind::Input, plan.decision.reason.clone()));
    };
    let started = Instant::now();
    let r = crate::sequence::failover(w, state, route, &mut st, from, &to, epoch, counts).await;
    let mut figures = serde_json::to_value(&plan.decision).unwrap_or_default();
    figures["manual"] = serde_json::json!(true);
    figures["force"] = serde_json::json!(o.force);
    figures["accept_data_loss"] = serde_json::json!(o.accept_loss);
    match &r {
        Ok(steps) => figures["steps"] = serde_json::to_value(steps).unwrap_or_default(),
        Err(e) => figures["error"] = serde_json::json!(e.to_string()),
    }
    let _ = ctx.record(
        "failover",
        &w.service,
        if r.is_ok() { "ok" } else { "failed" },
        started,
        figures,
    );
    r.map(|_| plan)
}
