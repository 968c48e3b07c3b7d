//! The scheduler: every backup job's and drill's `schedule`, and the plan's `schedules`
//! (verify, forget, copy, check), run by the daemon as `lifeboat` commands — the same
//! commands an operator types, so a scheduled run and one from the command line take the same
//! locks and leave the same records (snapshots, evidence events, reports).
//!
//! Each run is a child process with its output in `.lifeboat/schedule/logs/`; the failover
//! checks never wait for one. Never two runs of one entry at once: a run that would overlap
//! is skipped and counted. At most `scheduler.max_concurrent` runs at a time (default 1); a
//! run that finds no free slot waits for one. A run missed while the daemon was down runs once
//! when it starts (unless `catch_up: false`), and the missed instants are counted. What each
//! entry did last is kept in `.lifeboat/schedule/state.json`, written atomically, so a restart
//! loses nothing. Runs stop with the daemon (SIGTERM when it stops, the kernel's parent-death
//! signal when it is killed) and are recorded as interrupted; the next start runs them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use lifeboat_context::Context;
use lifeboat_core::plan::{Plan, Schedule};
use lifeboat_core::schedule::Parsed;
use lifeboat_core::{Error, Kind};
use lifeboat_failover::log::log;

/// One thing the daemon runs on a schedule.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where it is in the plan: `backups.NAME`, `drills.NAME`, `schedules.NAME`.
    pub id: String,
    /// The command, in words (`lifeboat backup db-base`).
    pub what: String,
    /// The arguments to `lifeboat --plan PLAN`.
    pub args: Vec<String>,
    pub schedule: Schedule,
    pub parsed: Parsed,
}

/// Every schedule in the plan (the plan was validated: a schedule that does not parse is
/// left out).
pub fn entries(plan: &Plan) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut add = |id: String, args: Vec<String>, s: &Schedule| {
        if let Ok(parsed) = lifeboat_core::schedule::parse(s) {
            out.push(Entry {
                what: format!("lifeboat {}", args.join(" ")),
                id,
                args,
                schedule: s.clone(),
                parsed,
            });
        }
    };
    for (name, j) in &plan.backups {
        if let Some(s) = &j.schedule {
            add(
                format!("backups.{name}"),
                vec!["backup".into(), name.clone()],
                s,
            );
        }
    }
    for (name, d) in &plan.drills {
        if let Some(s) = &d.schedule {
            add(
                format!("drills.{name}"),
                vec!["drill".into(), "run".into(), name.clone(), "--yes".into()],
                s,
            );
        }
    }
    for (name, t) in &plan.schedules {
        add(format!("schedules.{name}"), task_args(t), &t.schedule);
    }
    out
}

/// The command a `schedules` entry runs.
fn task_args(t: &lifeboat_core::plan::Task) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let flag = |a: &mut Vec<String>, f: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(f.into());
            a.push(v.clone());
        }
    };
    match t.run.as_str() {
        "verify" => {
            a.push("verify".into());
            if t.restore == Some(true) {
                a.push("--restore".into());
                if let Some(s) = &t.service {
                    a.push(s.clone());
                }
            } else if let Some(j) = &t.job {
                a.push(j.clone());
            }
        }
        "forget" => {
            a.push("forget".into());
            flag(&mut a, "--repo", &t.repository);
        }
        "copy" => {
            a.extend(["repo".into(), "copy".into()]);
            flag(&mut a, "--from", &t.from);
            flag(&mut a, "--to", &t.to);
        }
        _ => {
            a.extend(["repo".into(), "check".into()]);
            flag(&mut a, "--repo", &t.repository);
        }
    }
    if t.run == "verify" || t.run == "check" {
        if t.read_data == Some(true) {
            a.push("--read-data".into());
        }
        flag(&mut a, "--read-data-subset", &t.read_data_subset);
    }
    a
}

/// What one entry did last, and its counters since it was first scheduled.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The scheduled instant last acted on (run, skipped or caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_end: Option<Timestamp>,
    /// `ok`, `failed`, `interrupted` (the daemon stopped while it ran and it is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Timestamp>,
    #[serde(default)]
    pub runs_ok: u64,
    #[serde(default)]
    pub runs_failed: u64,
    /// Runs not started because the previous one still ran.
    #[serde(default)]
    pub skipped_overlap: u64,
    /// Scheduled instants that passed while the daemon was down.
    #[serde(default)]
    pub missed: u64,
    /// Scheduled instants not run because the schedule was paused.
    #[serde(default)]
    pub skipped_paused: u64,
    /// The run under way: its process and when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningRun>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunningRun {
    pub pid: u32,
    /// The process's start time (clock ticks since boot), so a reused pid is not mistaken.
    pub start_ticks: u64,
    pub started: Timestamp,
}

/// Who paused a schedule, and when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pause {
    pub by: String,
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn paused_path(state_dir: &Path) -> PathBuf {
    state_dir.join("schedule").join("paused.json")
}

/// The paused schedules by id (none when the file is missing or unreadable).
pub fn paused(state_dir: &Path) -> BTreeMap<String, Pause> {
    std::fs::read(paused_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Pause (`Some`) or resume (`None`) schedule `id`; the scheduler reads it before each
/// instant. Written atomically. Returns whether anything changed.
pub fn set_paused(state_dir: &Path, id: &str, p: Option<Pause>) -> Result<bool, Error> {
    let mut all = paused(state_dir);
    let changed = match p {
        Some(p) => {
            if all.contains_key(id) {
                false
            } else {
                all.insert(id.to_string(), p);
                true
            }
        }
        None => all.remove(id).is_some(),
    };
    if changed {
        let path = paused_path(state_dir);
        let io = |e: std::io::Error| Error::new(Kind::Io, format!("{}: {e}", path.display()));
        std::fs::create_dir_all(path.parent().unwrap_or(state_dir)).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&all).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(io)?;
    }
    Ok(changed)
}

fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("schedule").join("state.json")
}

/// The scheduler's records (empty when it never ran).
pub fn load(state_dir: &Path) -> BTreeMap<String, Record> {
    std::fs::read(state_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Write the records so a crash leaves the old or the new file, never half of one.
fn save(state_dir: &Path, records: &BTreeMap<String, Record>) -> Result<(), Error> {
    use std::io::Write;
    let p = state_path(state_dir);
    let dir = p.parent().unwrap_or(state_dir);
    let io = |e: std::io::Error| Error::new(Kind::Io, format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec_pretty(records).unwrap_or_default())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &p).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The start time of a process (field 22 of /proc/PID/stat), if it runs.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the run's process still runs (a zombie — exited, not yet reaped — does not).
fn alive(r: &RunningRun) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", r.pid)) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
    !matches!(state.as_deref(), Some("Z") | Some("X") | None)
        && start_ticks(r.pid) == Some(r.start_ticks)
}

/// How an entry stands now, for `lifeboat schedule` and `lifeboat status`.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub id: String,
    pub what: String,
    pub cron: String,
    pub time_zone: String,
    pub next: Option<Timestamp>,
    /// The scheduled instant that should have run by now and has not (the daemon is down,
    /// or was when it came due).
    pub overdue_since: Option<Timestamp>,
    pub running: bool,
    /// Paused: instants pass without a run until it is resumed.
    pub paused: Option<Pause>,
    #[serde(flatten)]
    pub record: Record,
}

/// Every entry with its record, its next instant and whether it is overdue. An instant is
/// overdue when it passed more than `grace` ago and was not acted on.
pub fn views(plan: &Plan, state_dir: &Path, now: Timestamp, grace: Duration) -> Vec<View> {
    let records = load(state_dir);
    let paused = paused(state_dir);
    entries(plan)
        .into_iter()
        .map(|e| {
            let r = records.get(&e.id).cloned().unwrap_or_default();
            let last = e.parsed.last_at_or_before(now);
            let overdue_since = last.filter(|l| {
                let late = now.duration_since(*l).as_secs_f64() > grace.as_secs_f64();
                let acted = r.last_due.is_some_and(|d| d >= *l);
                late && !acted && r.last_due.is_some()
            });
            View {
                id: e.id.clone(),
                what: e.what.clone(),
                cron: e.schedule.cron().to_string(),
                time_zone: e.parsed.tz_name.clone(),
                next: e.parsed.next_after(now),
                overdue_since,
                running: r.running.as_ref().is_some_and(alive),
                paused: paused.get(&e.id).cloned(),
                record: r,
            }
        })
        .collect()
}

/// What the scheduler decides for one entry at `now`, given its record. Pure.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Nothing to do before `next`.
    Wait,
    /// Run now for the instant `due`; `missed` instants before it passed unrun.
    Run { due: Timestamp, missed: u64 },
}

/// At start-up: whether a run was missed while the daemon was down (a record says when it
/// last acted; an entry never acted on has missed nothing).
pub fn catch_up(e: &Entry, r: &Record, now: Timestamp) -> Due {
    let (Some(last_due), Some(latest)) = (r.last_due, e.parsed.last_at_or_before(now)) else {
        return Due::Wait;
    };
    if latest <= last_due {
        return Due::Wait;
    }
    let passed = e.parsed.count_between(last_due, now, 100_000);
    if e.schedule.catch_up() {
        Due::Run {
            due: latest,
            missed: passed.saturating_sub(1),
        }
    } else {
        Due::Run {
            due: latest,
            missed: passed,
        }
    }
}

struct Live {
    entry: Entry,
    /// The next instant and when it may start (the instant plus its jitter).
    next: Option<(Timestamp, Timestamp)>,
    child: Option<tokio::process::Child>,
    started: Option<(Timestamp, std::time::Instant, PathBuf)>,
    /// Due but waiting for a free slot.
    queued: Option<Timestamp>,
    /// An earlier daemon's run still under way (watched until it is gone).
    orphan: Option<RunningRun>,
}

fn with_jitter(e: &Entry, t: Timestamp) -> Timestamp {
    let Some(j) = e.schedule.jitter() else {
        return t;
    };
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let frac = (u64::from_le_bytes(b) % 1_000_000) as f64 / 1_000_000.0;
    t + jiff::SignedDuration::from_secs_f64(j.as_secs_f64() * frac)
}

fn schedule_next(l: &mut Live, after: Timestamp) {
    l.next = l
        .entry
        .parsed
        .next_after(after)
        .map(|n| (n, with_jitter(&l.entry, n)));
}

/// The scheduler, until `stop` turns true. Running children are left to finish on their own
/// (each holds its own locks); the next start watches them until they are gone.
pub async fn run(ctx: Context, stop: watch::Receiver<bool>) -> Result<(), Error> {
    let entries = entries(&ctx.plan);
    if entries.is_empty() {
        return Ok(());
    }
    let max = ctx
        .plan
        .scheduler
        .as_ref()
        .and_then(|s| s.max_concurrent)
        .unwrap_or(1)
        .max(1) as usize;
    let mut records = load(&ctx.state_dir);
    let now = Timestamp::now();
    let mut live: Vec<Live> = Vec::new();
    for e in entries {
        let r = records.entry(e.id.clone()).or_default();
        let mut l = Live {
            entry: e.clone(),
            next: None,
            child: None,
            started: None,
            queued: None,
            orphan: None,
        };
        if let Some(run) = r.running.clone() {
            if alive(&run) {
                log(
                    "schedule",
                    &e.id,
                    serde_json::json!({"action": "watching", "pid": run.pid, "reason": "a run started before this daemon still runs"}),
                );
                l.orphan = Some(run);
            } else {
                r.running = None;
                r.last_outcome = Some("interrupted".into());
                r.last_end = Some(now);
                r.last_failure = Some(now);
                r.runs_failed += 1;
                log(
                    "schedule",
                    &e.id,
                    serde_json::json!({"action": "interrupted", "reason": "the daemon stopped while it ran; its process is gone", "again": e.schedule.catch_up()}),
                );
                if e.schedule.catch_up() {
                    // It runs again now: its instant was not served.
                    l.queued = r.last_due.or(Some(now));
                }
            }
        }
        match catch_up(&e, r, now) {
            Due::Run { due, missed } if l.queued.is_none() || !e.schedule.catch_up() => {
                r.missed += missed;
                if e.schedule.catch_up() {
                    l.queued = Some(due);
                    log(
                        "schedule",
                        &e.id,
                        serde_json::json!({"action": "catch-up", "due": due.to_string(), "missed": missed}),
                    );
                } else {
                    r.last_due = Some(due);
                }
            }
            Due::Run { due, missed } => {
                // Interrupted and missed since: one run covers both.
                r.missed += missed;
                l.queued = Some(due);
            }
            Due::Wait => {
                if r.last_due.is_none() {
                    // First sight: from now on (the record marks where it started).
                    r.last_due = Some(now);
                }
            }
        }
        schedule_next(&mut l, now);
        live.push(l);
    }
    save(&ctx.state_dir, &records)?;
    log(
        "schedule",
        "*",
        serde_json::json!({
            "action": "started",
            "entries": live.iter().map(|l| serde_json::json!({
                "id": l.entry.id,
                "run": l.entry.what,
                "next": l.next.map(|n| n.0.to_string()),
            })).collect::<Vec<_>>(),
            "max_concurrent": max,
        }),
    );
    let logs = ctx.state_dir.join("schedule").join("logs");
    let mut stop = stop;
    loop {
        let now = Timestamp::now();
        let mut changed = false;
        // Runs that ended.
        for l in live.iter_mut() {
            if let Some(o) = &l.orphan {
                if !alive(o) {
                    let r = records.entry(l.entry.id.clone()).or_default();
                    r.running = None;
                    r.last_outcome = Some("unknown".into());
                    r.last_end = Some(now);
                    l.orphan = None;
                    changed = true;
                }
            }
            let Some(c) = l.child.as_mut() else { continue };
            let Ok(Some(status)) = c.try_wait() else {
                continue;
            };
            let (start, t0, log_path) =
                l.started
                    .take()
                    .unwrap_or((now, std::time::Instant::now(), PathBuf::new()));
            l.child = None;
            let r = records.entry(l.entry.id.clone()).or_default();
            let ok = status.success();
            r.running = None;
            r.last_start = Some(start);
            r.last_end = Some(now);
            r.last_duration_ms = Some(t0.elapsed().as_millis() as u64);
            r.last_exit = status.code();
            r.last_outcome = Some(if ok { "ok" } else { "failed" }.into());
            r.last_log = Some(log_path.clone());
            if ok {
                r.runs_ok += 1;
                r.last_success = Some(now);
            } else {
                r.runs_failed += 1;
                r.last_failure = Some(now);
            }
            log(
                "schedule",
                &l.entry.id,
                serde_json::json!({
                    "action": "finished",
                    "outcome": r.last_outcome,
                    "exit": status.code(),
                    "duration_ms": r.last_duration_ms,
                    "log": log_path,
                }),
            );
            changed = true;
        }
        // Instants that came due.
        let paused = paused(&ctx.state_dir);
        for l in live.iter_mut() {
            let Some((due, start_at)) = l.next else {
                continue;
            };
            if now < start_at {
                continue;
            }
            schedule_next(l, due);
            let r = records.entry(l.entry.id.clone()).or_default();
            r.last_due = Some(due);
            changed = true;
            if let Some(p) = paused.get(&l.entry.id) {
                r.skipped_paused += 1;
                log(
                    "schedule",
                    &l.entry.id,
                    serde_json::json!({"action": "skipped", "due": due.to_string(), "reason": format!("paused by {} since {}", p.by, p.since)}),
                );
            } else if l.child.is_some() || l.orphan.is_some() || l.queued.is_some() {
                r.skipped_overlap += 1;
                log(
                    "schedule",
                    &l.entry.id,
                    serde_json::json!({"action": "skipped", "due": due.to_string(), "reason": "the previous run still runs"}),
                );
            } else {
                l.queued = Some(due);
            }
        }
        // Start what is queued, within the limit.
        let mut busy = live
            .iter()
            .filter(|l| l.child.is_some() || l.orphan.is_some())
            .count();
        for l in live.iter_mut() {
            if busy >= max {
                break;
            }
            let Some(due) = l.queued.take() else { continue };
            let r = records.entry(l.entry.id.clone()).or_default();
            if paused.contains_key(&l.entry.id) {
                // A catch-up or a rerun queued before the pause: not run while paused.
                r.skipped_paused += 1;
                changed = true;
                continue;
            }
            r.last_due = Some(r.last_due.map_or(due, |d| d.max(due)));
            match start(&ctx, &l.entry, &logs) {
                Ok((child, path)) => {
                    let pid = child.id().unwrap_or(0);
                    r.running = Some(RunningRun {
                        pid,
                        start_ticks: start_ticks(pid).unwrap_or(0),
                        started: now,
                    });
                    log(
                        "schedule",
                        &l.entry.id,
                        serde_json::json!({"action": "started", "due": due.to_string(), "run": l.entry.what, "pid": pid, "log": path}),
                    );
                    l.child = Some(child);
                    l.started = Some((now, std::time::Instant::now(), path));
                    busy += 1;
                }
                Err(e) => {
                    r.runs_failed += 1;
                    r.last_outcome = Some("failed".into());
                    r.last_failure = Some(now);
                    r.last_start = Some(now);
                    r.last_end = Some(now);
                    log(
                        "schedule",
                        &l.entry.id,
                        serde_json::json!({"action": "failed", "reason": e.to_string()}),
                    );
                }
            }
            changed = true;
        }
        if changed {
            if let Err(e) = save(&ctx.state_dir, &records) {
                log(
                    "schedule",
                    "*",
                    serde_json::json!({"action": "error", "reason": e.to_string()}),
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // Runs stop with the daemon: SIGTERM, a few seconds to end, then SIGKILL.
    let now = Timestamp::now();
    for l in live.iter_mut() {
        let Some(mut c) = l.child.take() else {
            continue;
        };
        if let Some(pid) = c.id() {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
        let r = records.entry(l.entry.id.clone()).or_default();
        r.running = None;
        r.last_outcome = Some("interrupted".into());
        r.last_start = l.started.as_ref().map(|s| s.0);
        r.last_end = Some(now);
        r.last_failure = Some(now);
        r.runs_failed += 1;
        log(
            "schedule",
            &l.entry.id,
            serde_json::json!({"action": "interrupted", "reason": "the daemon stops; the run runs again at its next start"}),
        );
    }
    save(&ctx.state_dir, &records)
}

/// Start one run: `lifeboat --plan PLAN ARGS`, its output into a log file of its own.
fn start(ctx: &Context, e: &Entry, logs: &Path) -> Result<(tokio::process::Child, PathBuf), Error> {
    let io =
        |p: &Path, err: std::io::Error| Error::new(Kind::Io, format!("{}: {err}", p.display()));
    std::fs::create_dir_all(logs).map_err(|err| io(logs, err))?;
    prune_logs(logs, 200);
    let path = logs.join(format!(
        "{}-{}.log",
        e.id,
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    ));
    let out = std::fs::File::create(&path).map_err(|err| io(&path, err))?;
    let err_out = out.try_clone().map_err(|err| io(&path, err))?;
    let child = spawn(ctx, &e.args, "scheduler", out, err_out, &[])
        .map_err(|err| Error::new(Kind::Internal, format!("starting {}: {err}", e.what)))?;
    Ok((child, path))
}

/// Start `lifeboat --plan PLAN ARGS` as the daemon's child, acting as `actor`, its output
/// into the files given. It gets SIGTERM when the daemon dies (even by SIGKILL).
pub fn spawn(
    ctx: &Context,
    args: &[String],
    actor: &str,
    stdout: std::fs::File,
    stderr: std::fs::File,
    env: &[(&str, &std::ffi::OsStr)],
) -> std::io::Result<tokio::process::Child> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "lifeboat".into());
    let mut c = tokio::process::Command::new(exe);
    // SAFETY: getpid has no preconditions.
    let daemon = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec. If the daemon died before
    // PDEATHSIG took effect, the run stops now.
    unsafe {
        c.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            if libc::getppid() != daemon {
                libc::_exit(143);
            }
            Ok(())
        });
    }
    c.arg("--plan")
        .arg(&ctx.plan_path)
        .args(args)
        .current_dir(&ctx.base)
        .env("LIFEBOAT_ACTOR", actor)
        .env("LIFEBOAT_PROGRESS", "0")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
}

/// Keep the newest `keep` run logs.
fn prune_logs(dir: &Path, keep: usize) {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cron: &str, catch: bool) -> Entry {
        let schedule = Schedule::Spec(lifeboat_core::plan::ScheduleSpec {
            cron: cron.into(),
            time_zone: None,
            jitter: None,
            catch_up: Some(catch),
        });
        Entry {
            id: "backups.x".into(),
            what: "lifeboat backup x".into(),
            args: vec!["backup".into(), "x".into()],
            parsed: lifeboat_core::schedule::parse(&schedule).unwrap(),
            schedule,
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_run_missed_while_down_runs_once_and_the_rest_are_counted() {
        let e = entry("0 * * * *", true);
        let r = Record {
            last_due: Some(ts("2026-12-01T10:00:00Z")),
            ..Default::default()
        };
        // Down from 10:30 to 13:20: 11:00, 12:00 and 13:00 passed; 13:00 runs, two are missed.
        assert_eq!(
            catch_up(&e, &r, ts("2026-12-01T13:20:00Z")),
            Due::Run {
                due: ts("2026-12-01T13:00:00Z"),
                missed: 2
            }
        );
        // Nothing passed: nothing to catch up.
        assert_eq!(catch_up(&e, &r, ts("2026-12-01T10:59:00Z")), Due::Wait);
        // Never acted on: nothing was missed.
        assert_eq!(
            catch_up(&e, &Record::default(), ts("2026-12-01T13:20:00Z")),
            Due::Wait
        );
        // catch_up: false counts every passed instant and runs none now.
        let no = entry("0 * * * *", false);
        assert_eq!(
            catch_up(&no, &r, ts("2026-12-01T13:20:00Z")),
            Due::Run {
                due: ts("2026-12-01T13:00:00Z"),
                missed: 3
            }
        );
    }

    #[test]
    fn entries_come_from_jobs_drills_and_schedules_with_their_commands() {
        let plan = lifeboat_core::parse_plan(
            r#"name: p
tiers: { gold: { rpo: 1h, rto: 1h } }
sites: [a]
services:
  files: { kind: paths, tier: gold, paths: [/etc] }
repositories:
  main: { url: repo, key_file: k }
  copy: { url: repo2, key_file: k }
backups:
  etc: { service: files, repository: main, schedule: "0 2 * * *" }
schedules:
  nightly-check: { run: check, repository: main, read_data_subset: "5%", schedule: { cron: "0 4 * * *", time_zone: Europe/Berlin } }
  copy-west: { run: copy, from: main, to: copy, schedule: "*/15 * * * *" }
  verify-all: { run: verify, schedule: "@daily" }
"#,
            "p.yaml",
        )
        .unwrap();
        let e = entries(&plan);
        let by = |id: &str| e.iter().find(|x| x.id == id).unwrap().args.join(" ");
        assert_eq!(by("backups.etc"), "backup etc");
        assert_eq!(
            by("schedules.nightly-check"),
            "repo check --repo main --read-data-subset 5%"
        );
        assert_eq!(by("schedules.copy-west"), "repo copy --from main --to copy");
        assert_eq!(by("schedules.verify-all"), "verify");
        let tz = e
            .iter()
            .find(|x| x.id == "schedules.nightly-check")
            .unwrap();
        assert_eq!(tz.parsed.tz_name, "Europe/Berlin");
    }
}
