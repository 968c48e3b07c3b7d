//! Retention, verification, restore and copy: the engine functions behind those commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use lifeboat_core::retention::{self, Verdict};
use lifeboat_core::verdict::{judge_job, Finding, JobObservation};
use lifeboat_core::{Error, Kind};
use lifeboat_store::SnapshotInfo;
use serde::Serialize;

use lifeboat_context::Context;

#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    /// WAL files removed (or to remove) per service: no retained base backup needs them.
    pub wal_removed: BTreeMap<String, Vec<String>>,
    pub repository: String,
    pub dry_run: bool,
    /// Per job: each snapshot's verdict with its reasons.
    pub jobs: BTreeMap<String, Vec<Verdict>>,
    /// Snapshots of jobs without a retention policy (or not in the plan): kept.
    pub untouched: usize,
    pub removed: usize,
    pub packs_removed: u64,
    pub bytes_freed: u64,
}

/// Apply every job's retention in `repo`, then prune. With `dry_run`, only report.
pub fn forget(ctx: &Context, repo: &str, dry_run: bool) -> Result<ForgetReport, Error> {
    let started = Instant::now();
    let store = ctx.open_repo(repo)?;
    let _lock = if dry_run {
        None
    } else {
        Some(ctx.lock_repo(&store, true, "forget", None)?)
    };
    let snaps = store.snapshots()?;
    let mut by_job: BTreeMap<String, Vec<&SnapshotInfo>> = BTreeMap::new();
    let mut untouched = 0;
    for s in &snaps {
        let policy = s
            .job
            .as_ref()
            .filter(|_| s.plan.as_deref() == Some(ctx.plan.name.as_str()))
            .and_then(|j| ctx.plan.backups.get(j))
            .and_then(|j| j.retention.as_ref());
        match (policy, &s.job) {
            (Some(_), Some(j)) => by_job.entry(j.clone()).or_default().push(s),
            _ => untouched += 1,
        }
    }
    let mut jobs = BTreeMap::new();
    let mut to_delete = Vec::new();
    for (job, list) in by_job {
        let policy = ctx.plan.backups[&job].retention.clone().unwrap_or_default();
        let input: Vec<(String, jiff::Timestamp)> = list
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    jiff::Timestamp::from_second(s.timestamp).unwrap_or_default(),
                )
            })
            .collect();
        let verdicts = retention::apply(&policy, &input);
        to_delete.extend(verdicts.iter().filter(|v| !v.keep).map(|v| v.id.clone()));
        jobs.insert(job, verdicts);
    }
    // WAL no retained base backup needs, per postgres service archiving into this repository.
    let mut wal = BTreeMap::new();
    for (name, svc) in &ctx.plan.services {
        if !matches!(svc, lifeboat_core::plan::Service::Postgres { .. })
            || ctx.plan.wal_repository(name) != Some(repo)
        {
            continue;
        }
        let retained: Vec<crate::pgbackup::BaseBackup> = snaps
            .iter()
            .filter(|s| s.service.as_deref() == Some(name.as_str()) && !to_delete.contains(&s.id))
            .filter_map(crate::pgbackup::BaseBackup::from_snapshot)
            .collect();
        let gone = crate::wal::retain(ctx, name, &retained, true)?;
        if !gone.is_empty() {
            wal.insert(name.clone(), gone);
        }
    }
    let mut report = ForgetReport {
        repository: repo.into(),
        dry_run,
        jobs,
        untouched,
        removed: 0,
        packs_removed: 0,
        bytes_freed: 0,
        wal_removed: wal.clone(),
    };
    if !dry_run {
        if !to_delete.is_empty() {
            store.delete_snapshots(&to_delete)?;
            report.removed = to_delete.len();
        }
        for svc in wal.keys() {
            let retained: Vec<crate::pgbackup::BaseBackup> = snaps
                .iter()
                .filter(|s| {
                    s.service.as_deref() == Some(svc.as_str()) && !to_delete.contains(&s.id)
                })
                .filter_map(crate::pgbackup::BaseBackup::from_snapshot)
                .collect();
            crate::wal::retain(ctx, svc, &retained, false)?;
        }
        let (packs, bytes) = store.prune()?;
        report.packs_removed = packs;
        report.bytes_freed = bytes;
        let figures = serde_json::json!({
            "removed": report.removed, "kept": snaps.len() - report.removed,
            "removed_ids": to_delete, "packs_removed": packs, "bytes_freed": bytes,
            "wal_removed": report.wal_removed.iter().map(|(k, v)| (k.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        });
        ctx.record("forget", repo, "ok", started, figures)?;
    }
    Ok(report)
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub findings: Vec<Finding>,
    pub ok: bool,
}

/// The backup verification checks for every job (or one): latest exists, fresh within the tier's RPO (or
/// `max_age`), enough retained; with `read_data`, the data decrypts and matches its hashes.
pub fn verify(
    ctx: &Context,
    job: Option<&str>,
    read_data: bool,
    subset: Option<&str>,
) -> Result<VerifyReport, Error> {
    let started = Instant::now();
    let mut findings = Vec::new();
    let jobs: Vec<String> = match job {
        Some(j) if !ctx.plan.backups.contains_key(j) => {
            return Err(Error::new(
                Kind::Input,
                format!("no backup job `{j}` in the plan"),
            ))
        }
        Some(j) => vec![j.to_string()],
        None => ctx.plan.backups.keys().cloned().collect(),
    };
    // Group jobs by repository so each repository is opened and checked once.
    let mut by_repo: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for j in &jobs {
        let def = &ctx.plan.backups[j];
        if let Some(r) = ctx.plan.job_repository(def) {
            by_repo.entry(r.to_string()).or_default().push(j.clone());
        }
    }
    let now = jiff::Timestamp::now();
    for (repo, jobs) in by_repo {
        let store = match ctx.open_repo(&repo) {
            Ok(s) => s,
            Err(e) => {
                for j in &jobs {
                    findings.push(Finding {
                        job: j.clone(),
                        check: "repository",
                        ok: false,
                        // One line per finding: the hint follows after `;`.
                        message: format!(
                            "job {j}: repository {repo} cannot be opened: {}{}",
                            e.message,
                            e.hint
                                .as_deref()
                                .map(|h| format!("; {h}"))
                                .unwrap_or_default()
                        ),
                    });
                }
                continue;
            }
        };
        let snaps = store.snapshots()?;
        for j in &jobs {
            let def = &ctx.plan.backups[j];
            let mine: Vec<&SnapshotInfo> = snaps
                .iter()
                .filter(|s| {
                    s.job.as_deref() == Some(j) && s.plan.as_deref() == Some(ctx.plan.name.as_str())
                })
                .collect();
            let newest_age = mine.last().map(|s| {
                let secs = now.as_second() - s.timestamp;
                std::time::Duration::from_secs(secs.max(0) as u64)
            });
            let policy = def.verify.clone().unwrap_or_default();
            let (max_age, source) = match policy.max_age {
                Some(a) => (a, "max_age".to_string()),
                None => {
                    let tier = ctx
                        .plan
                        .services
                        .get(&def.service)
                        .map(|s| s.tier().to_string())
                        .unwrap_or_default();
                    let rpo = ctx.plan.tiers.get(&tier).map(|t| t.rpo).unwrap_or_default();
                    (rpo, format!("tier {tier} RPO"))
                }
            };
            findings.extend(judge_job(&JobObservation {
                job: j.clone(),
                newest_age,
                snapshot_count: mine.len(),
                max_age,
                max_age_source: source,
                min_snapshots: policy.min_snapshots.unwrap_or(1),
            }));
        }
        if read_data || subset.is_some() {
            let report = store.check(true, subset)?;
            let damaged: BTreeMap<&str, Vec<&str>> =
                report
                    .damaged_snapshots
                    .iter()
                    .fold(BTreeMap::new(), |mut m, (id, job)| {
                        m.entry(job.as_deref().unwrap_or("(no job)"))
                            .or_default()
                            .push(&id[..8]);
                        m
                    });
            for j in &jobs {
                let bad = damaged.get(j.as_str());
                let ok = bad.is_none() && report.errors.is_empty();
                let message = match bad {
                    Some(ids) => format!(
                        "job {j}: snapshot(s) {} reference damaged data in repository {repo} (pack {}); restore from an older snapshot or a copy",
                        ids.join(", "),
                        report.damaged_packs.iter().map(|p| &p[..8]).collect::<Vec<_>>().join(", ")
                    ),
                    None if !report.errors.is_empty() => format!(
                        "job {j}: repository {repo} has errors: {}",
                        report.errors.join("; ")
                    ),
                    None => format!("job {j}: data in repository {repo} decrypts and matches its hashes"),
                };
                findings.push(Finding {
                    job: j.clone(),
                    check: "data",
                    ok,
                    message,
                });
            }
        }
    }
    let ok = findings.iter().all(|f| f.ok);
    let report = VerifyReport { findings, ok };
    ctx.record(
        "verify",
        job.unwrap_or("all"),
        if ok { "ok" } else { "failed" },
        started,
        serde_json::to_value(&report).unwrap_or_default(),
    )?;
    Ok(report)
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub repository: String,
    pub target: String,
    pub files: u64,
    pub bytes: u64,
}

/// Restore a snapshot (id prefix or `latest`, optionally of a job) into `target`.
pub fn restore(
    ctx: &Context,
    repo: &str,
    snapshot: &str,
    job: Option<&str>,
    path: Option<&str>,
    target: &Path,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let result = (|| -> Result<_, Error> {
        let store = ctx.open_repo(repo)?;
        let snap = store.find_snapshot(snapshot, job)?;
        let s = store.restore(&snap.id, path, target)?;
        Ok(RestoreReport {
            snapshot: snap.id,
            repository: repo.into(),
            target: target.display().to_string(),
            files: s.files,
            bytes: s.bytes,
        })
    })();
    let (outcome, figures) = match &result {
        Ok(r) => ("ok", serde_json::to_value(r).unwrap_or_default()),
        Err(e) => (
            "failed",
            serde_json::json!({"error": e.message, "snapshot": snapshot, "target": target.display().to_string()}),
        ),
    };
    ctx.record("restore", snapshot, outcome, started, figures)?;
    result
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub copied: usize,
    pub already_there: usize,
    pub bytes_uploaded: u64,
    /// The WAL archives of the postgres services archiving into `from`.
    pub wal: crate::wal::WalCopy,
}

/// Copy every snapshot of this plan from `from` to `to` (cross-region copy), and the WAL
/// archives of the postgres services archiving into `from`.
pub fn copy(ctx: &Context, from: &str, to: &str) -> Result<CopyReport, Error> {
    let started = Instant::now();
    let result = (|| -> Result<_, Error> {
        let src = ctx.open_repo(from)?;
        let dest = ctx.open_repo(to)?;
        let _lock = ctx.lock_repo(&dest, false, "copy", None)?;
        let ids: Vec<String> = src
            .snapshots()?
            .into_iter()
            .filter(|s| s.plan.as_deref() == Some(ctx.plan.name.as_str()))
            .map(|s| s.id)
            .collect();
        let s = src.copy_to(&dest, &ids)?;
        let wal = crate::wal::copy_archives(ctx, &src, &dest, from)?;
        Ok(CopyReport {
            from: from.into(),
            to: to.into(),
            copied: s.copied,
            already_there: s.already_there,
            bytes_uploaded: s.bytes_uploaded,
            wal,
        })
    })();
    let (outcome, figures) = match &result {
        Ok(r) => ("ok", serde_json::to_value(r).unwrap_or_default()),
        Err(e) => ("failed", serde_json::json!({"error": e.message})),
    };
    ctx.record(
        "copy",
        &format!("{from} -> {to}"),
        outcome,
        started,
        figures,
    )?;
    result
}

/// Create a plan's repository (or all of them).
pub fn init_repo(ctx: &Context, repo: &str) -> Result<String, Error> {
    let started = Instant::now();
    let spec = ctx.repo_spec(repo)?;
    let r = lifeboat_store::Store::init(&spec).map(|s| s.spec.display.clone());
    let (outcome, figures) = match &r {
        Ok(d) => ("ok", serde_json::json!({"url": d})),
        Err(e) => ("failed", serde_json::json!({"error": e.message})),
    };
    ctx.record("repo init", repo, outcome, started, figures)?;
    r
}

/// Check a repository's integrity, recorded in the evidence log.
pub fn check(
    ctx: &Context,
    repo: &str,
    read_data: bool,
    subset: Option<&str>,
) -> Result<lifeboat_store::CheckReport, Error> {
    let started = Instant::now();
    let store = ctx.open_repo(repo)?;
    let report = store.check(read_data || subset.is_some(), subset)?;
    let outcome = if report.errors.is_empty() {
        "ok"
    } else {
        "failed"
    };
    ctx.record(
        "repo check",
        repo,
        outcome,
        started,
        serde_json::to_value(&report).unwrap_or_default(),
    )?;
    Ok(report)
}

/// Remove stale (or all) locks, recorded in the evidence log: removing a lock is a decision.
pub fn unlock(
    ctx: &Context,
    store: &lifeboat_store::Store,
    all: bool,
) -> Result<Vec<lifeboat_store::lock::FoundLock>, Error> {
    let started = Instant::now();
    let removed = store.unlock(all)?;
    let figures = serde_json::json!({
        "all": all,
        "removed": removed.iter().map(|l| l.describe()).collect::<Vec<_>>(),
    });
    ctx.record("repo unlock", &store.spec.name, "ok", started, figures)?;
    Ok(removed)
}
