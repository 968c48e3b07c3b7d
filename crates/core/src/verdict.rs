//! Verification verdicts ("is the last backup there, fresh and readable?"), as pure functions of what was seen.

use serde::Serialize;

use crate::units::Duration;

/// What verification observed for one job.
#[derive(Clone, Debug)]
pub struct JobObservation {
    pub job: String,
    /// Age of the newest snapshot, if there is one.
    pub newest_age: Option<std::time::Duration>,
    pub snapshot_count: usize,
    /// Largest allowed age (the job's `max_age`, else its tier's RPO).
    pub max_age: Duration,
    /// Where `max_age` came from, for the message ("tier critical RPO", "max_age").
    pub max_age_source: String,
    pub min_snapshots: u32,
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub job: String,
    pub check: &'static str,
    pub ok: bool,
    pub message: String,
}

fn age_str(d: std::time::Duration) -> String {
    // Round to seconds: a verdict is read by people.
    Duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// The metadata checks of one job: a snapshot exists, it is fresh enough, enough are retained.
pub fn judge_job(o: &JobObservation) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut push = |check, ok, message: String| {
        f.push(Finding {
            job: o.job.clone(),
            check,
            ok,
            message,
        })
    };
    match o.newest_age {
        None => push(
            "exists",
            false,
            format!(
                "job {}: no snapshot exists; run `lifeboat backup {}`",
                o.job, o.job
            ),
        ),
        Some(age) => {
            push(
                "exists",
                true,
                format!("job {}: latest snapshot is {} old", o.job, age_str(age)),
            );
            let fresh = age <= o.max_age.std();
            push(
                "fresh",
                fresh,
                if o.max_age.std().is_zero() && !fresh {
                    format!(
                        "job {}: {} is 0s, which periodic backups cannot meet (that tier needs replication); set `verify: {{ max_age: … }}` on this job to the backup interval you accept",
                        o.job, o.max_age_source
                    )
                } else if fresh {
                    format!(
                        "job {}: latest snapshot {} old is within {} ({})",
                        o.job,
                        age_str(age),
                        o.max_age,
                        o.max_age_source
                    )
                } else {
                    format!(
                        "job {}: latest snapshot is {} old, older than {} ({}); the backup schedule is not keeping up",
                        o.job,
                        age_str(age),
                        o.max_age,
                        o.max_age_source
                    )
                },
            );
        }
    }
    let enough = o.snapshot_count >= o.min_snapshots as usize;
    push(
        "retained",
        enough,
        if enough {
            format!(
                "job {}: {} snapshot(s) retained (at least {} required)",
                o.job, o.snapshot_count, o.min_snapshots
            )
        } else {
            format!(
                "job {}: only {} snapshot(s) retained, at least {} required",
                o.job, o.snapshot_count, o.min_snapshots
            )
        },
    );
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(age: Option<u64>, count: usize) -> JobObservation {
        JobObservation {
            job: "configs".into(),
            newest_age: age.map(std::time::Duration::from_secs),
            snapshot_count: count,
            max_age: Duration::from_secs(3600),
            max_age_source: "tier batch RPO".into(),
            min_snapshots: 2,
        }
    }

    #[test]
    fn fresh_and_enough_passes() {
        assert!(judge_job(&obs(Some(60), 3)).iter().all(|f| f.ok));
    }

    #[test]
    fn stale_snapshot_fails_with_reason() {
        let f = judge_job(&obs(Some(7200), 3));
        let stale = f.iter().find(|f| f.check == "fresh").unwrap();
        assert!(!stale.ok);
        assert!(
            stale.message.contains("2h old, older than 1h"),
            "{}",
            stale.message
        );
    }

    #[test]
    fn zero_rpo_explains_itself() {
        let mut o = obs(Some(30), 3);
        o.max_age = Duration::from_secs(0);
        o.max_age_source = "tier critical RPO".into();
        let f = judge_job(&o);
        let fresh = f.iter().find(|f| f.check == "fresh").unwrap();
        assert!(!fresh.ok);
        assert!(
            fresh.message.contains("periodic backups cannot meet"),
            "{}",
            fresh.message
        );
    }

    #[test]
    fn missing_and_too_few() {
        let f = judge_job(&obs(None, 0));
        assert!(f.iter().all(|f| !f.ok));
        assert!(f[0].message.contains("lifeboat backup configs"));
    }
}
