//! The runbook executor: ordered steps with timeouts, retries, `on_failure` and
//! approval gates; steps grouped by service run in the services' `depends_on` order, independent
//! services in parallel; every step timed and recorded in the evidence log. An automatic (or
//! manual) failover performs the built-in fence, promote and switch-traffic steps itself, on its
//! fast path, and times each; the daemon then runs the service's `failover` runbooks through
//! this executor, where those steps carry the failover's own timings and details and the other
//! steps (hooks, webhooks, notifications, approvals) run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_core::plan::{Runbook, RunbookStep, Service, Severity};
use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};

use crate::coord::StateFile;
use crate::world::Watched;
use lifeboat_context::Context;
use lifeboat_pg::ops::Session;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepResult {
    pub step: String,
    pub service: Option<String>,
    /// ok, failed, skipped, refused (approval not given).
    pub outcome: String,
    pub attempts: u32,
    pub ms: u64,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub runbook: String,
    /// ok, failed (a step failed with on_failure: stop, or an approval was refused).
    pub outcome: String,
    pub steps: Vec<StepResult>,
    pub ms: u64,
}

/// A built-in failover step the failover itself performed (fence, promote, switch-traffic),
/// timed: a failover runbook run after it shows these as its own steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuiltinStep {
    pub action: String,
    pub ms: u64,
    pub detail: String,
}

/// How a run is driven.
pub struct Options {
    /// Approve every gate (automation).
    pub yes: bool,
    /// Ask a person to approve a step (the prompt); false refuses.
    pub approve: Box<dyn Fn(&str) -> bool + Send + Sync>,
    pub progress: Box<dyn Fn(&StepResult) + Send + Sync>,
    /// After an automatic failover: the built-in failover steps are already done, approval
    /// gates cannot be answered.
    pub after_failover: bool,
    /// The built-in steps that failover performed.
    pub done: Vec<BuiltinStep>,
    /// Extra environment for commands (LIFEBOAT_FROM, LIFEBOAT_TO …).
    pub env: Vec<(String, String)>,
}

/// One phase of a run: a barrier step alone, or levels of services whose steps run in order
/// per service, services of one level in parallel.
#[derive(Debug, PartialEq, Eq)]
pub enum Phase {
    Barrier(usize),
    Levels(Vec<Vec<(String, Vec<usize>)>>),
}

/// The order a runbook runs in (step indexes).
pub fn order(services: &BTreeMap<String, Service>, rb: &Runbook) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut group: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let flush = |group: &mut BTreeMap<String, Vec<usize>>, phases: &mut Vec<Phase>| {
        if group.is_empty() {
            return;
        }
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut levels = Vec::new();
        while done.len() < group.len() {
            let level: Vec<(String, Vec<usize>)> = group
                .iter()
                .filter(|(s, _)| !done.contains(*s))
                .filter(|(s, _)| {
                    services
                        .get(*s)
                        .map(|svc| svc.depends_on())
                        .unwrap_or_default()
                        .iter()
                        .all(|d| !group.contains_key(d) || done.contains(d))
                })
                .map(|(s, v)| (s.clone(), v.clone()))
                .collect();
            if level.is_empty() {
                // A cycle (refused by plan check): run the rest in name order.
                let rest: Vec<_> = group
                    .iter()
                    .filter(|(s, _)| !done.contains(*s))
                    .map(|(s, v)| (s.clone(), v.clone()))
                    .collect();
                rest.iter().for_each(|(s, _)| {
                    done.insert(s.clone());
                });
                levels.push(rest);
                break;
            }
            level.iter().for_each(|(s, _)| {
                done.insert(s.clone());
            });
            levels.push(level);
        }
        phases.push(Phase::Levels(levels));
        group.clear();
    };
    for (i, st) in rb.steps.iter().enumerate() {
        match st.service.as_ref() {
            Some(s) => group.entry(s.clone()).or_default().push(i),
            None => {
                flush(&mut group, &mut phases);
                phases.push(Phase::Barrier(i));
            }
        }
    }
    flush(&mut group, &mut phases);
    phases
}

fn step_name(st: &RunbookStep) -> String {
    st.name.clone().unwrap_or_else(|| {
        st.action
            .clone()
            .or_else(|| st.command.clone())
            .or_else(|| st.webhook.as_ref().map(|w| format!("webhook {w}")))
            .unwrap_or_default()
    })
}

/// Run runbook `name`.
pub async fn run(ctx: &Context, name: &str, opts: Options) -> Result<RunReport, Error> {
    let rb = ctx
        .plan
        .runbooks
        .get(name)
        .cloned()
        .ok_or_else(|| Error::new(Kind::Input, format!("no runbook `{name}` in the plan")))?;
    Ok(run_runbook(ctx, name, &rb, opts).await)
}

/// Run `rb` (a runbook of the plan, or one a command builds, e.g. the built-in failback) under
/// `name`.
pub async fn run_runbook(ctx: &Context, name: &str, rb: &Runbook, opts: Options) -> RunReport {
    let started = Instant::now();
    let opts = Arc::new(opts);
    let mut results: Vec<StepResult> = Vec::new();
    let mut stopped = false;
    // Every step's outcome goes to the plan's notification targets by severity (a failed or
    // refused step P2, the others P4), in the background.
    let (notifier, notify_worker) = lifeboat_context::notify::Notifier::start(ctx);
    // Steps take the runbook's service when they name none — for ordering too.
    let mut rb2 = rb.clone();
    for st in rb2.steps.iter_mut() {
        if st.service.is_none() && st.action.as_deref() != Some("notify") {
            st.service = rb.service.clone();
        }
    }
    for phase in order(&ctx.plan.services, &rb2) {
        match phase {
            Phase::Barrier(i) => {
                let r = if stopped {
                    skipped(&rb2.steps[i])
                } else {
                    run_step(ctx, name, &rb2, i, &opts).await
                };
                stopped |= stops(&rb2.steps[i], &r);
                (opts.progress)(&r);
                notifier.send(step_note(name, &r));
                results.push(r);
            }
            Phase::Levels(levels) => {
                for level in levels {
                    let mut tasks = Vec::new();
                    for (_, idxs) in level {
                        let (ctx, rb2, opts, name, notifier) = (
                            ctx.clone(),
                            rb2.clone(),
                            opts.clone(),
                            name.to_string(),
                            notifier.clone(),
                        );
                        let already = stopped;
                        tasks.push(tokio::spawn(async move {
                            let mut out = Vec::new();
                            let mut stop = already;
                            for i in idxs {
                                let r = if stop {
                                    skipped(&rb2.steps[i])
                                } else {
                                    run_step(&ctx, &name, &rb2, i, &opts).await
                                };
                                stop |= stops(&rb2.steps[i], &r);
                                (opts.progress)(&r);
                                notifier.send(step_note(&name, &r));
                                out.push((i, r, stop));
                            }
                            out
                        }));
                    }
                    let mut level_results = Vec::new();
                    for t in tasks {
                        if let Ok(v) = t.await {
                            level_results.extend(v);
                        }
                    }
                    level_results.sort_by_key(|(i, _, _)| *i);
                    for (_, r, stop) in level_results {
                        stopped |= stop;
                        results.push(r);
                    }
                }
            }
        }
    }
    let report = RunReport {
        runbook: name.to_string(),
        outcome: if stopped { "failed" } else { "ok" }.into(),
        steps: results,
        ms: started.elapsed().as_millis() as u64,
    };
    let _ = ctx.record(
        "runbook",
        name,
        &report.outcome,
        started,
        serde_json::to_value(&report).unwrap_or_default(),
    );
    notifier.send(lifeboat_context::notify::Note {
        severity: if stopped { Severity::P2 } else { Severity::P3 },
        event: "runbook".into(),
        service: rb.service.clone().unwrap_or_default(),
        summary: format!(
            "runbook {name}: {} in {} ms ({} step(s))",
            report.outcome,
            report.ms,
            report.steps.len()
        ),
        details: serde_json::json!({"runbook": name, "outcome": report.outcome}),
    });
    notifier.drain(notify_worker, Duration::from_secs(30)).await;
    report
}

fn step_note(runbook: &str, r: &StepResult) -> lifeboat_context::notify::Note {
    let bad = r.outcome == "failed" || r.outcome == "refused";
    lifeboat_context::notify::Note {
        severity: if bad { Severity::P2 } else { Severity::P4 },
        event: "runbook-step".into(),
        service: r.service.clone().unwrap_or_default(),
        summary: format!(
            "runbook {runbook}, step {}: {}{}",
            r.step,
            r.outcome,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", r.detail)
            }
        ),
        details: serde_json::to_value(r).unwrap_or_default(),
    }
}

fn skipped(st: &RunbookStep) -> StepResult {
    StepResult {
        step: step_name(st),
        service: st.service.clone(),
        outcome: "skipped".into(),
        attempts: 0,
        ms: 0,
        detail: "an earlier step failed with on_failure: stop".into(),
    }
}

fn stops(st: &RunbookStep, r: &StepResult) -> bool {
    (r.outcome == "failed" && st.on_failure.as_deref() != Some("continue"))
        || r.outcome == "refused"
}

async fn run_step(
    ctx: &Context,
    runbook: &str,
    rb: &Runbook,
    i: usize,
    opts: &Options,
) -> StepResult {
    let st = &rb.steps[i];
    let name = step_name(st);
    let started = Instant::now();
    let mut res = StepResult {
        step: name.clone(),
        service: st.service.clone(),
        outcome: "ok".into(),
        attempts: 0,
        ms: 0,
        detail: String::new(),
    };
    let builtin_failover = matches!(
        st.action.as_deref(),
        Some("fence" | "promote" | "switch-traffic")
    );
    if opts.after_failover && builtin_failover {
        // Performed by the failover (its fast path, before this runbook's other steps): its
        // timing and outcome are this step's.
        match opts
            .done
            .iter()
            .find(|d| Some(d.action.as_str()) == st.action.as_deref())
        {
            Some(d) => {
                res.detail = format!("done by the automatic failover: {}", d.detail);
                res.attempts = 1;
                res.ms = d.ms;
            }
            None => {
                res.outcome = "skipped".into();
                res.detail = "not part of this failover".into();
            }
        }
        record_step(ctx, runbook, &name, started, &res);
        return res;
    } else if st.approval == Some(true) && !opts.yes {
        let approved = !opts.after_failover
            && (opts.approve)(&format!("approve step `{name}` of runbook `{runbook}`?"));
        if !approved {
            res.outcome = "refused".into();
            res.detail = if opts.after_failover {
                format!("needs approval: run `lifeboat runbook run {runbook}`")
            } else {
                "approval not given".into()
            };
        }
    }
    if res.outcome == "ok" {
        let timeout = st.timeout.map(|d| d.std()).unwrap_or(
            if st.action.as_deref() == Some("wait-healthy") {
                Duration::from_secs(120)
            } else {
                Duration::from_secs(60)
            },
        );
        let retries = st.retries.unwrap_or(0);
        for attempt in 0..=retries {
            res.attempts = attempt + 1;
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
            }
            match tokio::time::timeout(timeout, attempt_step(ctx, runbook, st, opts)).await {
                Ok(Ok(detail)) => {
                    res.outcome = "ok".into();
                    res.detail = detail;
                    break;
                }
                Ok(Err(e)) => {
                    res.outcome = "failed".into();
                    res.detail = e;
                }
                Err(_) => {
                    res.outcome = "failed".into();
                    res.detail = format!("timed out after {timeout:?}");
                }
            }
        }
        if res.outcome == "failed" && st.on_failure.as_deref() == Some("continue") {
            res.detail += " (on_failure: continue)";
        }
    }
    res.ms = started.elapsed().as_millis() as u64;
    record_step(ctx, runbook, &name, started, &res);
    res
}

fn record_step(ctx: &Context, runbook: &str, name: &str, started: Instant, res: &StepResult) {
    let _ = ctx.record(
        "runbook-step",
        &format!("{runbook}/{name}"),
        &res.outcome,
        started,
        serde_json::to_value(res).unwrap_or_default(),
    );
}

fn watched(ctx: &Context, st: &RunbookStep) -> Result<Watched, String> {
    let svc = st.service.as_deref().ok_or("no service")?;
    Watched::from_plan(ctx, svc)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{svc} is not a postgres service"))
}

fn site(w: &Watched, st: &RunbookStep) -> Result<lifeboat_pg::Member, String> {
    let s = st.site.as_deref().ok_or("no site")?;
    w.members
        .iter()
        .find(|m| m.site == s)
        .cloned()
        .ok_or_else(|| format!("{} has no member {s}", w.service))
}

/// One attempt; the detail on success, the reason on failure.
async fn attempt_step(
    ctx: &Context,
    runbook: &str,
    st: &RunbookStep,
    opts: &Options,
) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    if let Some(cmd) = &st.command {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .current_dir(&ctx.base)
            .env("LIFEBOAT_RUNBOOK", runbook)
            .env("LIFEBOAT_STEP", step_name(st))
            .env("LIFEBOAT_SERVICE", st.service.as_deref().unwrap_or(""))
            .envs(opts.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = c.spawn().map_err(|e| format!("sh: {e}"))?;
        let pid = child.id();
        // A timeout drops this future: kill the command's whole process group then.
        struct Group(Option<u32>);
        impl Drop for Group {
            fn drop(&mut self) {
                if let Some(p) = self.0 {
                    // SAFETY: signalling a process group we created.
                    unsafe { libc::kill(-(p as i32), libc::SIGKILL) };
                }
            }
        }
        let mut guard = Group(pid);
        let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
        guard.0 = None;
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(3)..].join(" | ")
        };
        return if out.status.success() {
            Ok(tail(&out.stdout))
        } else {
            Err(format!("exited with {}: {}", out.status, tail(&out.stderr)))
        };
    }
    if let Some(hook) = &st.webhook {
        let url = hook.resolve().map_err(|e| e.to_string())?;
        let body = serde_json::json!({"runbook": runbook, "step": step_name(st),
            "service": st.service, "plan": ctx.plan.name, "time": jiff::Timestamp::now().to_string(),
            "env": opts.env.iter().cloned().collect::<BTreeMap<String, String>>()});
        let r = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|_| format!("webhook {hook}: request failed"))?;
        return if r.status().is_success() {
            Ok(format!("webhook {hook}: {}", r.status().as_u16()))
        } else {
            Err(format!("webhook {hook}: status {}", r.status().as_u16()))
        };
    }
    match st.action.as_deref().unwrap_or("") {
        "notify" => {
            let (n, worker) = lifeboat_context::notify::Notifier::start(ctx);
            n.send(lifeboat_context::notify::Note {
                severity: st.severity.unwrap_or(Severity::P3),
                event: format!("runbook {runbook}"),
                service: st.service.clone().unwrap_or_default(),
                summary: st.message.clone().unwrap_or_else(|| step_name(st)),
                details: serde_json::json!({"runbook": runbook}),
            });
            n.drain(worker, Duration::from_secs(30)).await;
            Ok("notified (deliveries recorded as `notify`)".into())
        }
        "fence" => {
            let w = watched(ctx, st)?;
            let m = site(&w, st)?;
            lifeboat_pg::ops::stop_fast(&w.bin_dir, &m, 60)
                .await
                .map_err(e)?;
            Ok(format!("{} stopped", m.site))
        }
        "promote" => {
            let w = watched(ctx, st)?;
            let m = site(&w, st)?;
            let s = Session::connect(&m, Duration::from_secs(5))
                .await
                .map_err(e)?;
            if s.in_recovery().await.map_err(e)? {
                s.promote().await.map_err(e)?;
            }
            s.check_write().await.map_err(e)?;
            Ok(format!("{} is a primary and took a write", m.site))
        }
        "switch-traffic" => {
            let w = watched(ctx, st)?;
            let m = site(&w, st)?;
            let state = StateFile::new(&ctx.state_dir, &w.service);
            let mut s = state.load().map_err(e)?;
            s.primary = Some(m.site.clone());
            s.epoch += 1;
            s.in_progress = None;
            state.store(&s).map_err(e)?;
            Ok(format!(
                "traffic goes to {} (epoch {}); a running daemon routes there at its next check",
                m.site, s.epoch
            ))
        }
        "wait-healthy" => wait_healthy(ctx, st).await,
        "rejoin" => {
            let w = watched(ctx, st)?;
            let m = site(&w, st)?;
            if let Some(p) = streams_from(&w, &m.site).await {
                return Ok(format!(
                    "{} already streams from {p}: nothing to rejoin",
                    m.site
                ));
            }
            let r = crate::rejoin::rejoin(&w, &ctx.state_dir, &m.site, &|_| {})
                .await
                .map_err(e)?;
            Ok(format!(
                "{} rejoined ({}){}",
                m.site,
                r.method,
                r.divergence
                    .as_ref()
                    .filter(|d| d.bytes > 0)
                    .map(|d| format!(", {} discarded transaction(s)", d.commits.len()))
                    .unwrap_or_default()
            ))
        }
        "restore" => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let target = st.target.clone().unwrap_or_default();
            let mut c = tokio::process::Command::new(exe);
            c.arg("--plan").arg(&ctx.plan_path);
            match (&st.job, &st.service) {
                (Some(job), _) => {
                    c.args([
                        "restore", "latest", "--job", job, "--target", &target, "--force",
                    ]);
                }
                (None, Some(svc)) => {
                    c.args(["restore", svc, "--latest", "--target", &target, "--force"]);
                    if let Some(p) = st.port {
                        c.args(["--start", &p.to_string()]);
                    }
                }
                _ => return Err("restore needs a job or a service".into()),
            }
            let out = c
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(format!("restored into {target}"))
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        }
        "switchover" => {
            let w = watched(ctx, st)?;
            let m = site(&w, st)?;
            // The step's own timeout bounds the whole step; the target gets half of it to
            // catch up before the switchover is called off (writes back on the old primary).
            let catch_up = st
                .timeout
                .map(|d| d.std() / 2)
                .unwrap_or(Duration::from_secs(30));
            let r = switchover(ctx, &w, &m.site, catch_up).await.map_err(e)?;
            match r.aborted {
                Some(why) => Err(format!("switchover to {} called off: {why}", m.site)),
                None => Ok(format!(
                    "{} → {}, epoch {}; writes stopped for {} ms",
                    r.from,
                    r.to,
                    r.epoch,
                    r.downtime_ms.unwrap_or(0)
                )),
            }
        }
        other => Err(format!("unknown action `{other}`")),
    }
}

/// The primary `site` streams from, if it is a streaming standby now.
async fn streams_from(w: &Watched, site: &str) -> Option<String> {
    for pm in w.members.iter().filter(|m| m.site != site) {
        if let Ok(s) = Session::connect(pm, Duration::from_secs(3)).await {
            if matches!(s.in_recovery().await, Ok(false))
                && s.standby_state(site)
                    .await
                    .is_ok_and(|st| st == "streaming")
            {
                return Some(pm.site.clone());
            }
        }
    }
    None
}

/// A switchover to `to`: handed to a running daemon (it owns the traffic endpoint and would
/// otherwise act on the primary it sees stop), done here otherwise.
pub async fn switchover(
    ctx: &Context,
    w: &Watched,
    to: &str,
    catch_up: Duration,
) -> Result<crate::switchover::Report, Error> {
    let control = crate::control::Control::new(&ctx.state_dir);
    if !control.daemon_running() {
        let state = StateFile::new(&ctx.state_dir, &w.service);
        return crate::switchover::run_switchover(w, &state, None, to, catch_up, ctx, &|_| {})
            .await;
    }
    let (state_dir, service, to, actor) = (
        ctx.state_dir.clone(),
        w.service.clone(),
        to.to_string(),
        ctx.actor.clone(),
    );
    tokio::task::spawn_blocking(move || {
        crate::control::Control::new(&state_dir).switchover(&service, &to, catch_up, &actor)
    })
    .await
    .map_err(|e| Error::new(Kind::Source, e.to_string()))?
}

async fn wait_healthy(ctx: &Context, st: &RunbookStep) -> Result<String, String> {
    let svc = st.service.as_deref().ok_or("no service")?;
    loop {
        let ok = match ctx.plan.services.get(svc) {
            Some(Service::Postgres { .. }) => {
                let w = watched(ctx, st)?;
                let members: Vec<_> = match &st.site {
                    Some(_) => vec![site(&w, st)?],
                    None => w.members.clone(),
                };
                let mut any = false;
                for m in members {
                    if let Ok(s) = Session::connect(&m, Duration::from_secs(2)).await {
                        any |= match s.in_recovery().await {
                            Ok(false) => s.check_write().await.is_ok(),
                            Ok(true) => st.site.is_some(),
                            Err(_) => false,
                        };
                    }
                }
                any
            }
            Some(Service::Http { health, .. }) => {
                let urls: Vec<&String> = match &st.site {
                    Some(s) => health.get(s).into_iter().collect(),
                    None => health.values().collect(),
                };
                let mut any = false;
                for u in urls {
                    any |= reqwest::get(u.as_str())
                        .await
                        .is_ok_and(|r| r.status().is_success());
                }
                any
            }
            _ => return Err(format!("wait-healthy: {svc} has no health to wait for")),
        };
        if ok {
            return Ok(format!("{svc} is healthy"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
