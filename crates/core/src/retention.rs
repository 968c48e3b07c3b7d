//! Retention as a pure decision: which snapshots a policy keeps, and why.
//!
//! restic's algorithm: walk snapshots newest first; each rule (`last`, `hourly`, … `yearly`)
//! keeps the newest snapshot of each of its N most recent periods; `within` keeps everything
//! younger than the span, counted back from the newest snapshot. A snapshot kept by any rule
//! stays. Periods are calendar periods in UTC (ISO weeks).

use jiff::Timestamp;
use serde::Serialize;

use crate::plan::Retention;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    pub keep: bool,
    /// Rules that keep it ("daily 2026-11-20"), or why it goes.
    pub reasons: Vec<String>,
}

fn bucket(t: Timestamp, rule: &str) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC);
    match rule {
        "hourly" => dt.strftime("%Y-%m-%d %H:00").to_string(),
        "daily" => dt.strftime("%Y-%m-%d").to_string(),
        "weekly" => {
            let w = dt.date().iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }
        "monthly" => dt.strftime("%Y-%m").to_string(),
        _ => dt.strftime("%Y").to_string(),
    }
}

/// Decide for snapshots given as `(id, time)`, in any order. Returns newest first.
pub fn apply(policy: &Retention, snapshots: &[(String, Timestamp)]) -> Vec<Verdict> {
    let mut snaps: Vec<&(String, Timestamp)> = snapshots.iter().collect();
    snaps.sort_by_key(|s| std::cmp::Reverse(s.1));
    let newest = snaps.first().map(|s| s.1);
    let rules: [(&str, Option<u32>); 5] = [
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1.unwrap_or(0)).collect();
    let mut last_bucket: Vec<Option<String>> = vec![None; rules.len()];
    let mut last_left = policy.last.unwrap_or(0);
    let mut out = Vec::new();
    for (id, t) in snaps {
        let mut reasons = Vec::new();
        if last_left > 0 {
            last_left -= 1;
            reasons.push(format!("last {}", policy.last.unwrap_or(0)));
        }
        if let (Some(within), Some(newest)) = (policy.within, newest) {
            let age = newest.duration_since(*t);
            if age.as_secs() >= 0 && (age.as_secs() as u64) < within.0.as_secs().max(1) {
                reasons.push(format!("within {within}"));
            }
        }
        for (i, (name, _)) in rules.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            let b = bucket(*t, name);
            if last_bucket[i].as_deref() != Some(&b) {
                left[i] -= 1;
                reasons.push(format!("{name} {b}"));
                last_bucket[i] = Some(b);
            }
        }
        let keep = !reasons.is_empty();
        if !keep {
            reasons.push("no keep rule matches: older than every rule's periods".into());
        }
        out.push(Verdict {
            id: id.clone(),
            keep,
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn snaps(times: &[&str]) -> Vec<(String, Timestamp)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("s{i}"), ts(t)))
            .collect()
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        let s = snaps(&[
            "2026-11-20T01:00:00Z",
            "2026-11-20T23:00:00Z",
            "2026-11-21T05:00:00Z",
            "2026-11-22T05:00:00Z",
        ]);
        let p = Retention {
            daily: Some(2),
            ..Default::default()
        };
        let v = apply(&p, &s);
        let kept: Vec<&str> = v.iter().filter(|v| v.keep).map(|v| v.id.as_str()).collect();
        assert_eq!(kept, ["s3", "s2"]);
        assert!(v.iter().find(|v| v.id == "s1").unwrap().reasons[0].contains("no keep rule"));
    }

    #[test]
    fn seed_004_policy_keeps_long_tail() {
        // 3 years of one snapshot a day
        let start = ts("2024-01-01T02:00:00Z");
        let s: Vec<(String, Timestamp)> = (0..3 * 365)
            .map(|d| {
                (
                    format!("d{d}"),
                    start + jiff::SignedDuration::from_hours(24 * d),
                )
            })
            .collect();
        let p = Retention {
            daily: Some(30),
            weekly: Some(13),
            monthly: Some(12),
            yearly: Some(7),
            ..Default::default()
        };
        let v = apply(&p, &s);
        let kept = v.iter().filter(|v| v.keep).count();
        // 30 daily, then weekly/monthly/yearly add the older ones (overlaps are counted once)
        assert!(kept > 30 + 10 && kept < 30 + 13 + 12 + 7, "kept {kept}");
        let oldest_kept = v.iter().rev().find(|v| v.keep).unwrap();
        assert!(
            oldest_kept
                .reasons
                .iter()
                .any(|r| r.starts_with("yearly 2024")),
            "{oldest_kept:?}"
        );
    }

    #[test]
    fn last_and_within() {
        let s = snaps(&[
            "2026-11-22T00:00:00Z",
            "2026-11-21T12:00:00Z",
            "2026-11-19T00:00:00Z",
        ]);
        let p = Retention {
            last: Some(1),
            within: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        let v = apply(&p, &s);
        assert_eq!(v.iter().filter(|v| v.keep).count(), 2);
        assert!(!v[2].keep);
    }
}
