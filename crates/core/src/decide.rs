//! Failover decisions as a pure function: one snapshot of the world in, one decision with a
//! readable reason out. The daemon builds the snapshot each tick from its health
//! checks and persisted state; unit tests drive it with fixtures.
//!
//! Safety rules, in order:
//! 1. A failover already under way (persisted before any action) is resumed, never restarted
//!    with another target: a daemon killed mid-failover finishes what it started.
//! 2. A member that is writable but not the routed primary is fenced (an old primary back).
//! 3. The primary is failed over only after `unhealthy_threshold` consecutive failed checks —
//!    flapping never accumulates — and never when a witness says clients still reach it (a
//!    partition between Lifeboat and the primary is not a failure).
//! 4. Only a healthy standby of the same cluster (system identifier, timeline not behind) may be
//!    promoted; in `sync` mode only one that was synchronous; in every mode only one within
//!    `max_lag_on_failover` of the primary's last known position.
//! 5. Each failover moves the fencing epoch forward by one.

use serde::{Deserialize, Serialize};

use crate::plan::ReplicationMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

/// How the last failed check failed (a refused connection and a timeout are different signals).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Nothing listens: the server is down.
    Refused,
    /// Accepted but no answer in time: hung, overloaded, or a network partition.
    Timeout,
    /// Anything else (authentication, an SQL error).
    Error(String),
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Failure::Refused => "connection refused".into(),
            Failure::Timeout => "queries time out".into(),
            Failure::Error(e) => e.clone(),
        }
    }
}

/// What Lifeboat knows about one member this tick.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberView {
    pub site: String,
    /// Consecutive failed checks (reset by a success).
    pub failures: u32,
    /// Consecutive successful checks (reset by a failure).
    pub successes: u32,
    pub last_failure: Option<Failure>,
    /// Role the server reported at its last successful check.
    pub role: Option<Role>,
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    /// Standby: WAL received and flushed (durable on the standby).
    pub received_lsn: Option<u64>,
    /// Standby: WAL replayed.
    pub replayed_lsn: Option<u64>,
    /// Standby: whether the primary listed it as synchronous at its last successful check.
    pub was_sync: bool,
    /// Standby: whether the primary listed it as streaming at its last successful check
    /// (None: the primary has not been seen healthy, so it is unknown).
    pub was_streaming: Option<bool>,
    /// Standby: seconds its replay is behind, as it reported at its last successful check.
    pub lag_seconds: Option<f64>,
    /// A witness's view of whether clients reach this member (None: no witness).
    pub clients_reach_it: Option<bool>,
    /// Standby: the daemon's record says the primary listed it as synchronous, but that was
    /// seen this many seconds ago, too long to trust (the daemon was not watching since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_record_too_old_s: Option<u64>,
}

/// One snapshot of a service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct World {
    pub service: String,
    pub mode: ReplicationMode,
    pub max_lag_bytes: Option<u64>,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub auto_failover: bool,
    pub members: Vec<MemberView>,
    /// The site the traffic endpoint routes writes to (persisted).
    pub primary: Option<String>,
    /// The fencing epoch (persisted; only moves forward).
    pub epoch: u64,
    /// The primary's write position at its last successful check.
    pub primary_last_lsn: Option<u64>,
    /// A failover recorded as started and not finished: (target site, its epoch).
    pub failover_in_progress: Option<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Nothing to do.
    Stay,
    /// Fence `from` (stop or demote it; the endpoint refuses it from `epoch` on), promote `to`,
    /// switch traffic.
    Failover {
        from: Option<String>,
        to: String,
        epoch: u64,
    },
    /// A writable member that must not take writes: fence it.
    Fence { site: String, epoch: u64 },
    /// A failover is needed but no member may be promoted safely; a person must decide.
    Hold,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(flatten)]
    pub action: Action,
    /// One readable sentence: what was decided and why.
    pub reason: String,
}

fn stay(reason: String) -> Decision {
    Decision {
        action: Action::Stay,
        reason,
    }
}

fn fmt_secs(s: u64) -> String {
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} bytes")
    }
}

impl World {
    fn member(&self, site: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.site == site)
    }
    fn unhealthy(&self, m: &MemberView) -> bool {
        m.failures >= self.unhealthy_threshold
    }
    fn healthy(&self, m: &MemberView) -> bool {
        m.failures == 0 && m.successes >= self.healthy_threshold
    }
}

/// How far behind the primary a standby is when it may be promoted now, or why it may not.
fn ineligible(w: &World, primary: Option<&MemberView>, c: &MemberView) -> Result<u64, String> {
    if !w.healthy(c) {
        return Err(format!(
            "{} is not healthy ({} failed, {} passed checks in a row)",
            c.site, c.failures, c.successes
        ));
    }
    if c.role != Some(Role::Standby) {
        return Err(format!("{} is not a standby", c.site));
    }
    if let (Some(p), Some(sid)) = (primary.and_then(|p| p.system_id.as_ref()), &c.system_id) {
        if p != sid {
            return Err(format!(
                "{} belongs to another cluster (system identifier {sid}, primary {p})",
                c.site
            ));
        }
    }
    if let (Some(pt), Some(ct)) = (primary.and_then(|p| p.timeline), c.timeline) {
        if ct < pt {
            return Err(format!(
                "{} is on timeline {ct}, behind the primary's {pt}",
                c.site
            ));
        }
    }
    if c.was_streaming == Some(false) {
        return Err(format!(
            "{} was not replicating from the primary at its last successful check, so it may miss any amount of WAL",
            c.site
        ));
    }
    if w.mode == ReplicationMode::Sync && !c.was_sync {
        if let Some(age) = c.sync_record_too_old_s {
            return Err(format!(
                "{} was last seen synchronous {} ago, before the daemon (re)started; the primary may have run with other synchronous standbys since, so promoting it could lose acknowledged writes: check, then `lifeboat failover {} --to {} --accept-data-loss`",
                c.site,
                fmt_secs(age),
                w.service,
                c.site
            ));
        }
        return Err(format!(
            "{} was not a synchronous standby, and this is a sync tier (RPO 0): promoting it could lose acknowledged writes",
            c.site
        ));
    }
    let pos = c.received_lsn.max(c.replayed_lsn);
    let behind = match (w.primary_last_lsn, pos) {
        (Some(p), Some(s)) => p.saturating_sub(s),
        (Some(_), None) => {
            return Err(format!(
                "{} reported no WAL position, so its lag is unknown",
                c.site
            ))
        }
        (None, _) => 0,
    };
    if let Some(max) = w.max_lag_bytes {
        if behind > max {
            return Err(format!(
                "{} is {} behind the primary's last known position, more than max_lag_on_failover ({})",
                c.site,
                fmt_bytes(behind),
                fmt_bytes(max)
            ));
        }
    }
    Ok(behind)
}

/// Whether `site` may be promoted now: bytes behind the primary's last known position, or
/// why not (the same rules automatic failover applies).
pub fn eligibility(w: &World, site: &str) -> Result<u64, String> {
    let primary = w.primary.as_deref().and_then(|p| w.member(p));
    let c = w
        .member(site)
        .ok_or_else(|| format!("{site} is not a member of {}", w.service))?;
    if w.primary.as_deref() == Some(site) {
        return Err(format!("{site} is the primary"));
    }
    ineligible(w, primary, c)
}

/// Whether `site` could be promoted by an operator who accepts losing acknowledged writes (a
/// manual failover with `--accept-data-loss`): the rules that protect data — a synchronous
/// standby in a sync tier, `max_lag_on_failover`, a standby that was streaming, a known position
/// — are waived; the ones that protect the cluster — healthy, a standby, the same system
/// identifier, not on an older timeline — are not. `Ok(None)` when its position is unknown.
pub fn eligibility_accepting_loss(w: &World, site: &str) -> Result<Option<u64>, String> {
    let mut relaxed = w.clone();
    relaxed.mode = ReplicationMode::Async;
    relaxed.max_lag_bytes = None;
    let mut unknown = false;
    if let Some(m) = relaxed.members.iter_mut().find(|m| m.site == site) {
        m.was_streaming = None;
        unknown = m.received_lsn.max(m.replayed_lsn).is_none();
    }
    if unknown {
        relaxed.primary_last_lsn = None;
    }
    eligibility(&relaxed, site).map(|b| (!unknown).then_some(b))
}

/// The decision for one tick.
pub fn decide(w: &World) -> Decision {
    // 1. Finish what was started.
    if let Some((to, epoch)) = &w.failover_in_progress {
        return Decision {
            action: Action::Failover {
                from: w.primary.clone().filter(|p| p != to),
                to: to.clone(),
                epoch: *epoch,
            },
            reason: format!(
                "resuming the failover of {} to {to} (epoch {epoch}) that was under way when the daemon stopped",
                w.service
            ),
        };
    }
    let Some(primary_site) = w.primary.clone().or_else(|| {
        let mut p = w
            .members
            .iter()
            .filter(|m| m.role == Some(Role::Primary) && m.failures == 0);
        match (p.next(), p.next()) {
            (Some(only), None) => Some(only.site.clone()),
            _ => None,
        }
    }) else {
        return Decision {
            action: Action::Hold,
            reason: format!(
                "{}: no member is known to be the primary (none, or more than one, reports it): a person must choose",
                w.service
            ),
        };
    };
    let primary = w.member(&primary_site);
    let primary_sid = primary.and_then(|p| p.system_id.clone());
    let foreign = |m: &MemberView| match (&primary_sid, &m.system_id) {
        (Some(p), Some(s)) => p != s,
        _ => false,
    };
    // 2. Any other writable member of this cluster is an old primary that came back: fence it.
    //    (A member of another cluster is a misconfiguration: never touched, only reported.)
    if let Some(rogue) = w.members.iter().find(|m| {
        m.site != primary_site && m.role == Some(Role::Primary) && m.failures == 0 && !foreign(m)
    }) {
        return Decision {
            action: Action::Fence {
                site: rogue.site.clone(),
                epoch: w.epoch,
            },
            reason: format!(
                "{} at {} accepts writes but traffic goes to {primary_site} (epoch {}): fencing it so it never takes writes through Lifeboat",
                w.service, rogue.site, w.epoch
            ),
        };
    }
    let Some(p) = primary else {
        return Decision {
            action: Action::Hold,
            reason: format!(
                "{}: the routed primary {primary_site} is not a member of the plan",
                w.service
            ),
        };
    };
    // 3. Is the primary failed?
    if !w.unhealthy(p) {
        let standbys: Vec<String> = w
            .members
            .iter()
            .filter(|m| m.site != p.site)
            .map(|m| {
                if m.failures > 0 {
                    return format!(
                        "{} failing checks ({})",
                        m.site,
                        m.last_failure
                            .as_ref()
                            .map(Failure::describe)
                            .unwrap_or_default()
                    );
                }
                if foreign(m) {
                    return format!(
                        "{} belongs to ANOTHER cluster (system identifier {}, primary's {}): check the plan",
                        m.site,
                        m.system_id.as_deref().unwrap_or("?"),
                        primary_sid.as_deref().unwrap_or("?")
                    );
                }
                if m.role != Some(Role::Standby) {
                    return format!("{} state unknown", m.site);
                }
                if m.was_streaming == Some(false) {
                    return format!("{} standby NOT replicating", m.site);
                }
                let mut s = format!(
                    "{} {}standby",
                    m.site,
                    if m.was_sync { "synchronous " } else { "" }
                );
                if let (Some(pl), Some(r)) = (w.primary_last_lsn, m.replayed_lsn) {
                    s += &format!(" behind by {}", fmt_bytes(pl.saturating_sub(r)));
                }
                if let Some(l) = m.lag_seconds {
                    s += &format!(" ({l:.1} s)");
                }
                s
            })
            .collect();
        let state = if p.failures > 0 {
            format!(
                "primary {} failed {} check(s) in a row ({}); failover after {}",
                p.site,
                p.failures,
                p.last_failure
                    .as_ref()
                    .map(Failure::describe)
                    .unwrap_or_default(),
                w.unhealthy_threshold
            )
        } else {
            format!("primary {} healthy", p.site)
        };
        let unprotected = w.mode == ReplicationMode::Sync
            && p.failures == 0
            && !w.members.iter().any(|m| m.site != p.site && m.was_sync);
        return stay(format!(
            "{}: {state}{}{}",
            w.service,
            if standbys.is_empty() {
                String::new()
            } else {
                format!("; {}", standbys.join(", "))
            },
            if unprotected {
                "; sync tier WITHOUT a synchronous standby: a failover now would be refused"
            } else {
                ""
            }
        ));
    }
    let why = format!(
        "primary {} failed {} checks in a row ({})",
        p.site,
        p.failures,
        p.last_failure
            .as_ref()
            .map(Failure::describe)
            .unwrap_or_else(|| "no answer".into())
    );
    if p.clients_reach_it == Some(true) {
        return stay(format!(
            "{}: {why}, but its clients still reach it: Lifeboat is cut off from the primary, it has not failed; not failing over (that would make two primaries)",
            w.service
        ));
    }
    if !w.auto_failover {
        return Decision {
            action: Action::Hold,
            reason: format!(
                "{}: {why}; automatic failover is off: run `lifeboat failover {}`",
                w.service, w.service
            ),
        };
    }
    // 4. The best eligible standby.
    let mut refusals = Vec::new();
    let mut best: Option<(&MemberView, u64)> = None;
    for c in w.members.iter().filter(|m| m.site != p.site) {
        match ineligible(w, Some(p), c) {
            Ok(behind) => {
                if best.is_none_or(|(_, b)| behind < b) {
                    best = Some((c, behind));
                }
            }
            Err(r) => refusals.push(r),
        }
    }
    match best {
        Some((c, behind)) => Decision {
            action: Action::Failover {
                from: Some(p.site.clone()),
                to: c.site.clone(),
                epoch: w.epoch + 1,
            },
            reason: format!(
                "{}: {why}; promoting {}: {}{} behind the primary's last known position (epoch {} → {})",
                w.service,
                c.site,
                if c.was_sync { "synchronous standby, " } else { "" },
                fmt_bytes(behind),
                w.epoch,
                w.epoch + 1
            ),
        },
        None => Decision {
            action: Action::Hold,
            reason: format!(
                "{}: {why}, and no standby may be promoted: {}",
                w.service,
                if refusals.is_empty() {
                    "there is no other member".to_string()
                } else {
                    refusals.join("; ")
                }
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(site: &str, role: Role) -> MemberView {
        MemberView {
            site: site.into(),
            successes: 10,
            role: Some(role),
            system_id: Some("7000".into()),
            timeline: Some(1),
            received_lsn: Some(1000),
            replayed_lsn: Some(1000),
            ..Default::default()
        }
    }

    fn down(site: &str, failures: u32, how: Failure) -> MemberView {
        MemberView {
            failures,
            successes: 0,
            last_failure: Some(how),
            ..healthy(site, Role::Primary)
        }
    }

    fn world(mode: ReplicationMode, members: Vec<MemberView>) -> World {
        World {
            service: "db".into(),
            mode,
            max_lag_bytes: Some(1 << 20),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            auto_failover: true,
            members,
            primary: Some("east".into()),
            epoch: 4,
            primary_last_lsn: Some(1000),
            failover_in_progress: None,
        }
    }

    fn sync_standby(site: &str) -> MemberView {
        MemberView {
            was_sync: true,
            ..healthy(site, Role::Standby)
        }
    }

    #[test]
    fn accepting_loss_waives_the_data_rules_only() {
        let primary_down = down("east", 3, Failure::Refused);
        // Not known to be synchronous in a sync tier, and far behind: refused, unless loss is
        // accepted.
        let mut west = healthy("west", Role::Standby);
        west.replayed_lsn = Some(10);
        west.received_lsn = Some(10);
        let mut w = world(
            ReplicationMode::Sync,
            vec![primary_down.clone(), west.clone()],
        );
        w.primary_last_lsn = Some(100 << 20);
        assert!(eligibility(&w, "west").unwrap_err().contains("synchronous"));
        assert_eq!(
            eligibility_accepting_loss(&w, "west"),
            Ok(Some((100 << 20) - 10))
        );
        // A position nobody knows: allowed, and said to be unknown.
        let mut blind = west.clone();
        blind.replayed_lsn = None;
        blind.received_lsn = None;
        blind.was_streaming = Some(false);
        let w2 = world(ReplicationMode::Sync, vec![primary_down.clone(), blind]);
        assert_eq!(eligibility_accepting_loss(&w2, "west"), Ok(None));
        // Never: another cluster, an unhealthy member, a primary.
        let stranger = MemberView {
            system_id: Some("8111".into()),
            ..west.clone()
        };
        let w3 = world(
            ReplicationMode::Sync,
            vec![healthy("east", Role::Primary), stranger],
        );
        assert!(eligibility_accepting_loss(&w3, "west")
            .unwrap_err()
            .contains("another cluster"));
        let sick = down("west", 3, Failure::Timeout);
        let w4 = world(ReplicationMode::Async, vec![primary_down, sick]);
        assert!(eligibility_accepting_loss(&w4, "west")
            .unwrap_err()
            .contains("not healthy"));
    }

    #[test]
    fn healthy_primary_stays() {
        let d = decide(&world(
            ReplicationMode::Async,
            vec![
                healthy("east", Role::Primary),
                healthy("west", Role::Standby),
            ],
        ));
        assert_eq!(d.action, Action::Stay);
        assert_eq!(
            d.reason,
            "db: primary east healthy; west standby behind by 0 bytes"
        );
    }

    #[test]
    fn status_names_lag_in_seconds_and_a_standby_that_does_not_replicate() {
        let mut west = sync_standby("west");
        west.was_streaming = Some(true);
        west.lag_seconds = Some(0.25);
        west.replayed_lsn = Some(3000 - 2048);
        let mut w = world(
            ReplicationMode::Sync,
            vec![healthy("east", Role::Primary), west.clone()],
        );
        w.primary_last_lsn = Some(3000);
        let d = decide(&w);
        assert_eq!(
            d.reason,
            "db: primary east healthy; west synchronous standby behind by 2.0 KiB (0.2 s)"
        );
        west.was_streaming = Some(false);
        let d = decide(&world(
            ReplicationMode::Sync,
            vec![healthy("east", Role::Primary), west],
        ));
        assert!(
            d.reason.ends_with("west standby NOT replicating"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_member_of_another_cluster_is_never_fenced_nor_promoted() {
        let stranger = MemberView {
            system_id: Some("8111".into()),
            ..healthy("west", Role::Primary)
        };
        let d = decide(&world(
            ReplicationMode::Async,
            vec![healthy("east", Role::Primary), stranger.clone()],
        ));
        assert_eq!(d.action, Action::Stay, "{}", d.reason);
        assert!(
            d.reason.contains("west belongs to ANOTHER cluster"),
            "{}",
            d.reason
        );
        let d = decide(&world(
            ReplicationMode::Async,
            vec![
                down("east", 3, Failure::Refused),
                MemberView {
                    role: Some(Role::Standby),
                    ..stranger
                },
            ],
        ));
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(
            d.reason.contains("belongs to another cluster"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_standby_that_was_not_replicating_is_never_promoted() {
        // Async tier with no lag limit: only the streaming check stands between a standby that
        // stopped replicating hours ago and a failover that loses those hours.
        let mut w = world(
            ReplicationMode::Async,
            vec![
                down("east", 3, Failure::Refused),
                MemberView {
                    was_streaming: Some(false),
                    ..healthy("west", Role::Standby)
                },
            ],
        );
        w.max_lag_bytes = None;
        let d = decide(&w);
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reason
                .contains("west was not replicating from the primary"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn primary_down_fails_over_with_a_new_epoch() {
        let d = decide(&world(
            ReplicationMode::Sync,
            vec![down("east", 3, Failure::Refused), sync_standby("west")],
        ));
        assert_eq!(
            d.action,
            Action::Failover {
                from: Some("east".into()),
                to: "west".into(),
                epoch: 5
            }
        );
        assert!(
            d.reason
                .contains("primary east failed 3 checks in a row (connection refused)"),
            "{}",
            d.reason
        );
        assert!(
            d.reason
                .contains("promoting west: synchronous standby, 0 bytes behind"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn hung_primary_is_failed_over_and_named_as_such() {
        let d = decide(&world(
            ReplicationMode::Async,
            vec![
                down("east", 3, Failure::Timeout),
                healthy("west", Role::Standby),
            ],
        ));
        assert!(matches!(d.action, Action::Failover { .. }));
        assert!(d.reason.contains("queries time out"), "{}", d.reason);
    }

    #[test]
    fn below_the_threshold_nothing_happens() {
        let d = decide(&world(
            ReplicationMode::Async,
            vec![
                down("east", 2, Failure::Timeout),
                healthy("west", Role::Standby),
            ],
        ));
        assert_eq!(d.action, Action::Stay);
        assert!(
            d.reason
                .contains("failed 2 check(s) in a row (queries time out); failover after 3"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn flapping_never_reaches_the_threshold() {
        // fail, ok, fail, ok, fail: the counter restarts after every success.
        let mut east = healthy("east", Role::Primary);
        for ok in [false, true, false, true, false] {
            if ok {
                east.failures = 0;
                east.successes += 1;
            } else {
                east.failures += 1;
                east.successes = 0;
            }
            let d = decide(&world(
                ReplicationMode::Async,
                vec![east.clone(), healthy("west", Role::Standby)],
            ));
            assert_eq!(d.action, Action::Stay, "{}", d.reason);
        }
    }

    #[test]
    fn partition_from_lifeboat_only_is_not_a_failure() {
        let mut east = down("east", 5, Failure::Timeout);
        east.clients_reach_it = Some(true);
        let d = decide(&world(
            ReplicationMode::Async,
            vec![east, healthy("west", Role::Standby)],
        ));
        assert_eq!(d.action, Action::Stay);
        assert!(
            d.reason.contains("its clients still reach it"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn lagging_standby_is_not_promoted() {
        let mut west = healthy("west", Role::Standby);
        west.received_lsn = Some(1000 - 10);
        let mut w = world(
            ReplicationMode::Async,
            vec![down("east", 3, Failure::Refused), west],
        );
        w.primary_last_lsn = Some(1000 + (2 << 20));
        let d = decide(&w);
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reason.contains("more than max_lag_on_failover (1.0 MiB)"),
            "{}",
            d.reason
        );
        // Received but not yet replayed WAL counts: it is durable on the standby.
        let mut west = healthy("west", Role::Standby);
        west.received_lsn = Some(1000 + (2 << 20));
        west.replayed_lsn = Some(1000);
        w.members[1] = west;
        assert!(matches!(decide(&w).action, Action::Failover { .. }));
    }

    #[test]
    fn a_sync_record_too_old_to_trust_holds_and_says_why() {
        let mut b = healthy("west", Role::Standby);
        b.sync_record_too_old_s = Some(3 * 3600);
        let w = world(
            ReplicationMode::Sync,
            vec![down("east", 3, Failure::Refused), b],
        );
        let d = decide(&w);
        assert_eq!(d.action, Action::Hold, "{}", d.reason);
        assert!(
            d.reason.contains("west was last seen synchronous 3 h ago")
                && d.reason.contains("--accept-data-loss"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn sync_tier_without_a_synchronous_standby_holds() {
        let d = decide(&world(
            ReplicationMode::Sync,
            vec![
                down("east", 3, Failure::Refused),
                healthy("west", Role::Standby),
            ],
        ));
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reason.contains("was not a synchronous standby"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn the_old_primary_back_after_failover_is_fenced() {
        let mut w = world(
            ReplicationMode::Async,
            vec![
                healthy("east", Role::Primary),
                healthy("west", Role::Primary),
            ],
        );
        w.primary = Some("west".into());
        w.epoch = 5;
        let d = decide(&w);
        assert_eq!(
            d.action,
            Action::Fence {
                site: "east".into(),
                epoch: 5
            }
        );
        assert!(
            d.reason
                .contains("east accepts writes but traffic goes to west"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn an_interrupted_failover_is_resumed_not_restarted() {
        let mut w = world(
            ReplicationMode::Async,
            vec![
                down("east", 3, Failure::Refused),
                healthy("west", Role::Standby),
                healthy("south", Role::Standby),
            ],
        );
        w.failover_in_progress = Some(("west".into(), 5));
        let d = decide(&w);
        assert_eq!(
            d.action,
            Action::Failover {
                from: Some("east".into()),
                to: "west".into(),
                epoch: 5
            }
        );
        assert!(
            d.reason.starts_with("resuming the failover"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn another_cluster_or_an_unhealthy_standby_is_never_promoted() {
        let mut other = healthy("west", Role::Standby);
        other.system_id = Some("9999".into());
        let mut sick = healthy("south", Role::Standby);
        sick.successes = 1;
        let d = decide(&world(
            ReplicationMode::Async,
            vec![down("east", 3, Failure::Refused), other, sick],
        ));
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reason.contains("west belongs to another cluster"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("south is not healthy"), "{}", d.reason);
    }

    #[test]
    fn the_closest_standby_wins_and_manual_mode_holds() {
        let mut near = healthy("west", Role::Standby);
        near.received_lsn = Some(990);
        near.replayed_lsn = Some(990);
        let mut far = healthy("south", Role::Standby);
        far.received_lsn = Some(900);
        far.replayed_lsn = Some(900);
        let mut w = world(
            ReplicationMode::Async,
            vec![down("east", 3, Failure::Refused), far, near],
        );
        assert!(matches!(decide(&w).action, Action::Failover { ref to, .. } if to == "west"));
        w.auto_failover = false;
        let d = decide(&w);
        assert_eq!(d.action, Action::Hold);
        assert!(
            d.reason.contains("run `lifeboat failover db`"),
            "{}",
            d.reason
        );
    }
}
