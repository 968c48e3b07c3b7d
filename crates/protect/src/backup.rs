//! Running backup jobs: take the job's lock, read the source, write a tagged snapshot, copy it
//! to the job's other repositories, and record it all.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_core::plan::{BackupJob, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_store::{BackupSummary, SnapshotTags, Store};
use serde::Serialize;

use lifeboat_context::Context;

#[derive(Clone, Debug, Serialize)]
pub struct JobOutcome {
    pub job: String,
    pub service: String,
    pub kind: String,
    pub repository: String,
    pub ok: bool,
    pub error: Option<String>,
    /// What kind of failure (`locked`, `key`, `backend`, `source`, …), for exit codes.
    pub error_kind: Option<Kind>,
    pub summary: Option<BackupSummary>,
    pub copies: Vec<CopyOutcome>,
    pub duration_ms: u64,
    pub stale_locks: Vec<String>,
    /// Locks of dead processes on this host, removed before the backup (and recorded).
    pub stale_locks_removed: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyOutcome {
    pub repository: String,
    pub ok: bool,
    pub error: Option<String>,
    pub bytes_uploaded: u64,
    /// WAL files copied with it (the WAL archives in the snapshot's repository).
    pub wal_files: usize,
}

fn job_repo(ctx: &Context, name: &str, job: &BackupJob) -> Result<String, Error> {
    ctx.plan
        .job_repository(job)
        .map(str::to_string)
        .ok_or_else(|| Error::new(Kind::Input, format!("job {name} names no repository")))
}

/// Run one job. Never panics on a bad source: the error is returned in the outcome and recorded.
pub fn run_job(ctx: &Context, name: &str) -> JobOutcome {
    run_job_with(ctx, name, false)
}

/// [`run_job`]; with `full`, every file is read again (no file is taken unread from the
/// previous snapshot; deduplication still stores only what changed).
pub fn run_job_with(ctx: &Context, name: &str, full: bool) -> JobOutcome {
    let started = Instant::now();
    let job = ctx.plan.backups.get(name).cloned();
    let mut out = JobOutcome {
        job: name.into(),
        service: job.as_ref().map(|j| j.service.clone()).unwrap_or_default(),
        kind: String::new(),
        repository: String::new(),
        ok: false,
        error: None,
        error_kind: None,
        summary: None,
        copies: Vec::new(),
        duration_ms: 0,
        stale_locks: Vec::new(),
        stale_locks_removed: Vec::new(),
    };
    let result = (|| -> Result<(), Error> {
        let job = job.ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!(
                    "no backup job `{name}` in the plan (jobs: {})",
                    ctx.plan
                        .backups
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let repo_name = job_repo(ctx, name, &job)?;
        out.repository = repo_name.clone();
        let svc = ctx.plan.services.get(&job.service).ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!("job {name}: no service `{}`", job.service),
            )
        })?;
        out.kind = job.snapshot_kind(svc).into();
        let store = ctx.open_repo(&repo_name)?;
        let lock = ctx.lock_repo(&store, false, "backup", Some(name))?;
        out.stale_locks = lock
            .stale_seen
            .iter()
            .map(|l| format!("{} ({})", l.describe(), l.stale.clone().unwrap_or_default()))
            .collect();
        out.stale_locks_removed = lock
            .removed
            .iter()
            .map(|l| format!("{} ({})", l.describe(), l.stale.clone().unwrap_or_default()))
            .collect();
        let tags = SnapshotTags {
            plan: ctx.plan.name.clone(),
            job: name.into(),
            service: job.service.clone(),
            kind: job.snapshot_kind(svc).into(),
            extra: Vec::new(),
        };
        let summary = backup_service(ctx, &store, name, &job, svc, tags, full)?;
        drop(lock);
        let snapshot_id = summary.snapshot.clone();
        out.summary = Some(summary);
        for target in &job.copy_to {
            out.copies
                .push(copy_one(&store, ctx, &out.repository, target, &snapshot_id));
        }
        Ok(())
    })();
    match result {
        Ok(()) => out.ok = out.copies.iter().all(|c| c.ok),
        Err(e) => {
            out.error_kind = Some(e.kind);
            out.error = Some(e.to_string());
        }
    }
    out.duration_ms = started.elapsed().as_millis() as u64;
    let figures = serde_json::to_value(&out).unwrap_or_default();
    let outcome = if out.ok { "ok" } else { "failed" };
    if let Err(e) = ctx.record("backup", name, outcome, started, figures) {
        out.ok = false;
        out.error = Some(format!(
            "{}; and the evidence log could not record it: {e}",
            out.error.clone().unwrap_or_else(|| "backup done".into())
        ));
    }
    out
}

/// Copy a new snapshot to `target`, with the WAL archives kept in `from` (the snapshot's
/// repository) for the postgres services archiving there.
fn copy_one(store: &Store, ctx: &Context, from: &str, target: &str, snapshot: &str) -> CopyOutcome {
    let r = (|| {
        let dest = ctx.open_repo(target)?;
        let _lock = ctx.lock_repo(&dest, false, "copy", None)?;
        let s = store.copy_to(&dest, &[snapshot.to_string()])?;
        let w = crate::wal::copy_archives(ctx, store, &dest, from)?;
        Ok::<_, Error>((s, w))
    })();
    match r {
        Ok((s, w)) => CopyOutcome {
            repository: target.into(),
            ok: true,
            error: None,
            bytes_uploaded: s.bytes_uploaded + w.bytes,
            wal_files: w.copied,
        },
        Err(e) => CopyOutcome {
            repository: target.into(),
            ok: false,
            error: Some(e.to_string()),
            bytes_uploaded: 0,
            wal_files: 0,
        },
    }
}

fn backup_service(
    ctx: &Context,
    store: &Store,
    job_name: &str,
    job: &BackupJob,
    svc: &Service,
    tags: SnapshotTags,
    full: bool,
) -> Result<BackupSummary, Error> {
    let job_def = job;
    let (job, service, tags) = (job_name, job.service.as_str(), &tags);
    match svc {
        Service::Paths { paths, exclude, .. } => {
            let abs: Vec<PathBuf> = paths.iter().map(|p| ctx.base.join(p)).collect();
            store.backup_paths(&abs, &anchor_excludes(exclude, &ctx.base), tags, full)
        }
        Service::Command {
            command,
            filename,
            timeout,
            ..
        } => {
            let name = filename.clone().unwrap_or_else(|| format!("{service}.out"));
            let limit = timeout
                .map(|t| t.std())
                .unwrap_or(Duration::from_secs(3600));
            let spool = run_to_spool(ctx, job, command, limit)?;
            let r = store.backup_file_as(&spool, &name, tags);
            let _ = std::fs::remove_file(&spool);
            r
        }
        Service::Postgres { .. } => {
            crate::pgbackup::run(ctx, store, job_name, job_def, svc, tags.clone(), full)
        }
        Service::Http { .. } => Err(Error::new(
            Kind::Input,
            format!("service {service} is an http service: there is nothing to back up"),
        )),
        Service::Bucket { .. } => Err(Error::new(
            Kind::Input,
            format!(
                "service {service} is a bucket: `lifeboat serve` keeps it replicated to its replica"
            ),
        )),
    }
}

/// Exclude patterns follow gitignore rules: one without `/` (`*.tmp`, `cache`) matches a name
/// anywhere; one with `/` is anchored. Anchored relative patterns (`data/cache`) are relative to
/// the plan file, like `paths`; absolute ones and `**/…` are kept as written.
fn anchor_excludes(patterns: &[String], base: &std::path::Path) -> Vec<String> {
    patterns
        .iter()
        .map(|p| {
            let body = p.trim_end_matches('/');
            if body.contains('/') && !p.starts_with('/') && !p.starts_with("**") {
                format!(
                    "{}/{}",
                    base.display().to_string().trim_end_matches('/'),
                    p.trim_start_matches("./")
                )
            } else {
                p.clone()
            }
        })
        .collect()
}

/// Run `sh -c command` with stdout to a private spool file; fail on non-zero exit or timeout.
fn run_to_spool(
    ctx: &Context,
    job: &str,
    command: &str,
    limit: Duration,
) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = ctx.state_dir.join("spool");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(Kind::Io, format!("cannot create {}: {e}", dir.display())))?;
    clean_spool(&dir);
    let path = dir.join(format!("{job}-{}.out", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::new(Kind::Io, format!("cannot create {}: {e}", path.display())))?;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        // Its own process group, so a timeout kills the command's children too.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(Kind::Source, format!("cannot start `{command}`: {e}")))?;
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the child's process group; no memory is touched.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "timed out after {}s and was killed",
                    limit.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let stderr = err_reader.join().unwrap_or_default();
    let tail = lifeboat_core::error::stderr_tail(&String::from_utf8_lossy(&stderr), 5);
    let fail = |why: String| {
        let _ = std::fs::remove_file(&path);
        Err(Error::new(
            Kind::Source,
            format!(
                "command `{command}` {why}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {tail}")
                }
            ),
        )
        .hint("no snapshot was recorded; fix the command and run the backup again"))
    };
    match status {
        Ok(s) if s.success() => Ok(path),
        Ok(s) => fail(format!("failed ({s})")),
        Err(why) => fail(why),
    }
}

/// Remove spool files left by runs that were killed (their process is gone).
fn clean_spool(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_suffix(".out")
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: kill(pid, 0) only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Jobs to run: the one named, or all in the plan.
pub fn select_jobs(ctx: &Context, job: Option<&str>) -> Vec<String> {
    match job {
        Some(j) => vec![j.to_string()],
        None => ctx.plan.backups.keys().cloned().collect(),
    }
}
