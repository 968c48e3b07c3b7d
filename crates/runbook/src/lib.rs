//! The runbook room: the executor of the plan's procedures — ordered steps with timeouts, retries, `on_failure` and
//! approval gates; steps grouped by service run in the services' `depends_on` order, independent
//! services in parallel; every step timed and recorded in the evidence log. An automatic (or
//! manual) failover performs the built-in fence, promote and switch-traffic steps itself, on its
//! fast path, and times each; the daemon then runs the service's `failover` runbooks through
//! this executor, where those steps carry the failover's own timings and details and the other
//! steps (hooks, webhooks, notifications, approvals) run.
//!
//! Above `core` and `context`. Built-in actions that act on members or traffic reach the
//! executor through [`Actions`] (implemented by `lifeboat-failover`): this crate imports no
//! room that acts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_core::plan::{Runbook, RunbookStep, Service, Severity};
use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};

use lifeboat_context::Context;

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

/// What a built-in action returns: the detail on success, the reason on failure.
pub type ActionFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>;

/// The built-in actions the executor does not perform itself — everything but `notify`,
/// commands and webhooks: `fence`, `promote`, `switch-traffic`, `wait-healthy`, `rejoin`,
/// `switchover`, `restore`. The failover room implements them; the executor knows them only
/// through this trait, so it imports neither failover nor protection.
pub trait Actions: Send + Sync {
    /// Perform `step` (its `action` names which); an unknown action is an error.
    fn perform<'a>(&'a self, ctx: &'a Context, step: &'a RunbookStep) -> ActionFuture<'a>;
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
    /// Who performs the built-in actions.
    pub actions: Arc<dyn Actions>,
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
        only: None,
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
        only: None,
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

/// One attempt; the detail on success, the reason on failure.
async fn attempt_step(
    ctx: &Context,
    runbook: &str,
    st: &RunbookStep,
    opts: &Options,
) -> Result<String, String> {
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
                only: None,
            });
            n.drain(worker, Duration::from_secs(30)).await;
            Ok("notified (deliveries recorded as `notify`)".into())
        }
        _ => opts.actions.perform(ctx, st).await,
    }
}
