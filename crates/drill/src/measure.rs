//! What a drill measured, computed from the writers' log and what the recovered server holds:
//! pure functions, so every figure in a report can be checked by a unit test.
//!
//! Writes are counted as Jepsen's set checker counts them: an acknowledged write the server
//! does not hold is **lost**; a write whose outcome the client never learned (the connection
//! broke after the statement was sent) that the server holds is **recovered**; a row the
//! drill never attempted is **unexpected**; an id held twice is **duplicated**.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use lifeboat_pg::workload::Ack;

/// One write attempt, times in milliseconds since the drill started (monotonic clock).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub id: u64,
    pub writer: u32,
    pub start_ms: f64,
    pub end_ms: f64,
    /// `ok`, `failed` (certainly not committed) or `unknown`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The path the writer took: `endpoint` or `dns` (absent: the only path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Attempt {
    pub fn acked(&self) -> bool {
        self.outcome == "ok"
    }
}

/// The paths the attempts took, in order of first use.
pub fn paths(attempts: &[Attempt]) -> Vec<Option<String>> {
    let mut v: Vec<Option<String>> = Vec::new();
    for a in attempts {
        if !v.contains(&a.via) {
            v.push(a.via.clone());
        }
    }
    v
}

/// The attempts of one path.
pub fn through(attempts: &[Attempt], via: &Option<String>) -> Vec<Attempt> {
    attempts.iter().filter(|a| &a.via == via).cloned().collect()
}

/// Whether every path has an acknowledged write that began at or after `since`: the service
/// is back for every kind of client, not only the first to reconnect.
pub fn back_on_every_path(attempts: &[Attempt], since: f64) -> bool {
    let ps = paths(attempts);
    !ps.is_empty()
        && ps
            .iter()
            .all(|p| outage(&through(attempts, p), since).1.is_some())
}

/// The write counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Writes {
    pub attempted: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    pub lost: u64,
    pub recovered: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    /// The first lost ids (at most 20), for the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_ids: Vec<u64>,
}

/// Count writes: `attempts` against `present` (id → rows holding it on the recovered server).
/// `until_ms`: only attempts that ended before this count as acknowledged-and-expected (for a
/// point-in-time restore: writes acknowledged before the recovery target).
pub fn count(attempts: &[Attempt], present: &BTreeMap<u64, u64>, until_ms: Option<f64>) -> Writes {
    let mut w = Writes::default();
    let tried: BTreeSet<u64> = attempts.iter().map(|a| a.id).collect();
    for a in attempts {
        w.attempted += 1;
        match a.outcome.as_str() {
            "ok" => w.acknowledged += 1,
            "failed" => w.failed += 1,
            _ => w.unknown += 1,
        }
        let expected = a.acked() && until_ms.is_none_or(|u| a.end_ms <= u);
        let held = present.contains_key(&a.id);
        if expected && !held {
            w.lost += 1;
            if w.lost_ids.len() < 20 {
                w.lost_ids.push(a.id);
            }
        }
        if a.outcome == "unknown" && held {
            w.recovered += 1;
        }
    }
    for (id, n) in present {
        if !tried.contains(id) {
            w.unexpected += 1;
        }
        if *n > 1 {
            w.duplicated += 1;
        }
    }
    w
}

/// The writers' view of the outage: the last acknowledged write that began before the fault,
/// and the first acknowledged write that began after it (ms since the start).
pub fn outage(attempts: &[Attempt], fault_ms: f64) -> (Option<f64>, Option<f64>) {
    let last_before = attempts
        .iter()
        .filter(|a| a.acked() && a.start_ms < fault_ms)
        .map(|a| a.end_ms)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let first_after = attempts
        .iter()
        .filter(|a| a.acked() && a.start_ms >= fault_ms)
        .map(|a| a.end_ms)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
    (last_before, first_after)
}

/// The longest time without an acknowledged write from the last one before the fault on:
/// (its start, its end). A planned switchover stops writes some time after it begins, so the
/// outage is the widest gap, not the first one after the fault.
pub fn widest_gap(attempts: &[Attempt], fault_ms: f64) -> Option<(f64, f64)> {
    let (last_before, _) = outage(attempts, fault_ms);
    let mut acks: Vec<f64> = attempts
        .iter()
        .filter(|a| a.acked())
        .map(|a| a.end_ms)
        .filter(|t| last_before.is_none_or(|l| *t >= l))
        .collect();
    acks.sort_by(|a, b| a.total_cmp(b));
    acks.windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
}

/// RPO as time: from the newest acknowledged write the server still holds (among those
/// acknowledged before the first lost one) to the newest lost one. 0 when nothing was lost.
pub fn rpo_ms(attempts: &[Attempt], present: &BTreeMap<u64, u64>, until_ms: Option<f64>) -> f64 {
    let expected: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.acked() && until_ms.is_none_or(|u| a.end_ms <= u))
        .collect();
    let lost: Vec<&&Attempt> = expected
        .iter()
        .filter(|a| !present.contains_key(&a.id))
        .collect();
    let Some(first_lost) = lost.iter().map(|a| a.start_ms).reduce(f64::min) else {
        return 0.0;
    };
    let newest_lost = lost.iter().map(|a| a.end_ms).fold(0.0, f64::max);
    let kept = expected
        .iter()
        .filter(|a| present.contains_key(&a.id) && a.end_ms <= first_lost)
        .map(|a| a.end_ms)
        .fold(0.0, f64::max);
    (newest_lost - kept).max(0.0)
}

/// RPO as bytes: how far past the point the new primary forked from the old one (the
/// switchpoint of its timeline) the newest lost write was acknowledged. 0 when nothing was
/// lost; unknown when the fork point is.
pub fn rpo_bytes(
    attempts: &[Attempt],
    lost_ids: &BTreeSet<u64>,
    switchpoint: Option<u64>,
) -> Option<u64> {
    let newest_lost = attempts
        .iter()
        .filter(|a| lost_ids.contains(&a.id))
        .filter_map(|a| a.ack.as_ref().map(|k| k.lsn))
        .max();
    match (newest_lost, switchpoint) {
        (None, _) => Some(0),
        (Some(l), Some(s)) => Some(l.saturating_sub(s)),
        (Some(_), None) => None,
    }
}

/// Acknowledged and failed writes per bucket of `bucket_ms` (the report's chart).
pub fn per_bucket(attempts: &[Attempt], bucket_ms: f64) -> Vec<(u32, u32)> {
    let end = attempts.iter().map(|a| a.end_ms).fold(0.0, f64::max);
    let n = (end / bucket_ms) as usize + 1;
    let mut out = vec![(0u32, 0u32); n];
    for a in attempts {
        let i = ((a.end_ms / bucket_ms) as usize).min(n - 1);
        if a.acked() {
            out[i].0 += 1;
        } else {
            out[i].1 += 1;
        }
    }
    out
}

/// Nearest-rank percentile of `xs` (p in 0..=100).
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: u64, start: f64, end: f64, outcome: &str, lsn: u64) -> Attempt {
        Attempt {
            id,
            writer: 0,
            start_ms: start,
            end_ms: end,
            outcome: outcome.into(),
            ack: (outcome == "ok").then_some(Ack {
                port: 1,
                lsn,
                timeline: 1,
            }),
            error: None,
            via: None,
        }
    }

    #[test]
    fn back_only_when_every_path_has_a_write_after_the_fault() {
        let via = |mut x: Attempt, v: &str| {
            x.via = Some(v.into());
            x
        };
        let log = vec![
            via(a(1, 0.0, 5.0, "ok", 1), "endpoint"),
            via(a(2, 1.0, 6.0, "ok", 1), "dns"),
            via(a(3, 100.0, 700.0, "ok", 1), "endpoint"),
            via(a(4, 100.0, 2100.0, "failed", 0), "dns"),
        ];
        assert!(!back_on_every_path(&log, 50.0), "dns is still down");
        let mut more = log.clone();
        more.push(via(a(5, 2200.0, 2210.0, "ok", 1), "dns"));
        assert!(back_on_every_path(&more, 50.0));
        assert_eq!(paths(&more).len(), 2);
        assert_eq!(
            widest_gap(&through(&more, &Some("dns".into())), 50.0),
            Some((6.0, 2210.0))
        );
        assert!(!back_on_every_path(&[], 0.0));
    }

    #[test]
    fn counts_lost_recovered_unexpected_duplicated() {
        let log = vec![
            a(1, 0.0, 5.0, "ok", 100),
            a(2, 10.0, 15.0, "ok", 200),
            a(3, 20.0, 25.0, "ok", 300),
            a(4, 30.0, 1030.0, "unknown", 0),
            a(5, 40.0, 41.0, "failed", 0),
            a(6, 1100.0, 1105.0, "ok", 50),
        ];
        // 3 lost, 4 recovered, 9 never attempted, 6 held twice.
        let present: BTreeMap<u64, u64> = [(1, 1), (2, 1), (4, 1), (6, 2), (9, 1)].into();
        let w = count(&log, &present, None);
        assert_eq!(
            (w.attempted, w.acknowledged, w.failed, w.unknown),
            (6, 4, 1, 1)
        );
        assert_eq!(
            (w.lost, w.recovered, w.unexpected, w.duplicated),
            (1, 1, 1, 1)
        );
        assert_eq!(w.lost_ids, vec![3]);
        // The newest kept before the loss ended at 15; the lost one at 25.
        assert_eq!(rpo_ms(&log, &present, None), 10.0);
        assert_eq!(rpo_bytes(&log, &[3].into(), Some(250)), Some(50));
        assert_eq!(rpo_bytes(&log, &BTreeSet::new(), None), Some(0));
        assert_eq!(rpo_bytes(&log, &[3].into(), None), None);
    }

    #[test]
    fn nothing_lost_is_rpo_zero_and_until_limits_what_is_expected() {
        let log = vec![a(1, 0.0, 5.0, "ok", 1), a(2, 10.0, 15.0, "ok", 2)];
        let present: BTreeMap<u64, u64> = [(1, 1)].into();
        // Restored to a point at 8 ms: write 2 came after it and is not expected.
        let w = count(&log, &present, Some(8.0));
        assert_eq!(w.lost, 0);
        assert_eq!(rpo_ms(&log, &present, Some(8.0)), 0.0);
        assert_eq!(count(&log, &present, None).lost, 1);
    }

    #[test]
    fn outage_is_last_ack_before_to_first_ack_after() {
        let log = vec![
            a(1, 0.0, 5.0, "ok", 1),
            a(2, 90.0, 95.0, "ok", 1),
            a(3, 99.0, 600.0, "failed", 0),
            a(4, 610.0, 700.0, "ok", 1),
            a(5, 720.0, 725.0, "ok", 1),
        ];
        assert_eq!(outage(&log, 100.0), (Some(95.0), Some(700.0)));
        assert_eq!(outage(&log, 800.0), (Some(725.0), None));
        assert_eq!(widest_gap(&log, 100.0), Some((95.0, 700.0)));
        // A switchover that stops writes later than it starts: the gap is still found.
        assert_eq!(widest_gap(&log, 50.0), Some((95.0, 700.0)));
    }

    #[test]
    fn percentiles_and_buckets() {
        let xs = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&xs, 50.0), Some(3.0));
        assert_eq!(percentile(&xs, 95.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
        let log = vec![a(1, 0.0, 50.0, "ok", 1), a(2, 0.0, 150.0, "failed", 0)];
        assert_eq!(per_bucket(&log, 100.0), vec![(1, 0), (0, 1)]);
    }
}
