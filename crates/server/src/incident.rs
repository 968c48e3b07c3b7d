//! Incidents, derived from the evidence log: a failover, a failed backup, verification,
//! repository check, copy or WAL archive, or a drill that missed its objectives opens one, with
//! a severity (P1 all hands … P4 a note). Acknowledging (`lifeboat ack`, the API) and
//! resolving (`lifeboat incident resolve`, or the next success of what failed) are events in
//! the same log, and so is every escalation: the incidents are a function of the log, the
//! same for the command line and the daemon, surviving restarts, and as tamper-evident as the
//! log itself. The report (`lifeboat incident report ID`) follows the usual post-incident
//! template — date and time, duration, impact, root cause (for a person to fill in),
//! resolution as what Lifeboat did step by step with its timings, and the measured recovery
//! against the objectives.

use std::collections::BTreeMap;

use lifeboat_core::plan::{Plan, Severity};
use lifeboat_evidence::Event;
use serde::Serialize;

/// One incident.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Incident {
    /// `INC-N`, N the sequence number of the event that opened it.
    pub id: String,
    #[schema(value_type = String)]
    pub severity: Severity,
    /// `failover`, `backup`, `verification`, `check`, `copy`, `wal-archive`, `drill`.
    pub kind: String,
    /// The service concerned (or, for a repository check or copy, the repository).
    pub service: String,
    /// What failed: the backup job, the drill, the service.
    pub target: String,
    pub title: String,
    pub opened: String,
    /// `open`, `acknowledged`, `resolved`.
    pub state: String,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    /// How it was resolved: a person's note, or the event that ended it.
    pub resolution: Option<String>,
    /// Escalation levels already notified (indexes into the plan's `escalation.levels`).
    pub escalated: Vec<usize>,
    /// Notifications already sent about it: `opened`, `resolved`.
    pub notified: Vec<String>,
    /// Sequence numbers of the evidence events that make up its timeline.
    pub events: Vec<i64>,
}

impl Incident {
    pub fn open(&self) -> bool {
        self.state != "resolved"
    }
}

/// What an event says about incidents: it opens (or repeats) one of this kind and target,
/// or ends one.
enum Effect {
    Opens {
        kind: &'static str,
        severity: Severity,
        target: String,
        service: String,
        title: String,
    },
    Ends {
        kind: &'static str,
        target: String,
    },
    None,
}

fn service_of_job(plan: &Plan, job: &str) -> String {
    plan.backups
        .get(job)
        .map(|j| j.service.clone())
        .unwrap_or_else(|| job.to_string())
}

fn effect(plan: &Plan, e: &Event) -> Effect {
    let f = &e.figures;
    let ok = matches!(e.outcome.as_str(), "ok" | "passed");
    let fail = |kind, severity, target: &str, service: String, title: String| Effect::Opens {
        kind,
        severity,
        target: target.to_string(),
        service,
        title,
    };
    match e.command.as_str() {
        "failover" => {
            // The figures are the decision as recorded (its action flattened into them).
            let to = f["to"].as_str().unwrap_or("?");
            let title = if ok {
                match f["from"].as_str() {
                    Some(from) => format!("{}: failed over from {from} to {to}", e.target),
                    None => format!("{}: failed over to {to}", e.target),
                }
            } else {
                format!("{}: failover to {to} FAILED", e.target)
            };
            fail("failover", Severity::P1, &e.target, e.target.clone(), title)
        }
        "backup" if ok => Effect::Ends {
            kind: "backup",
            target: e.target.clone(),
        },
        "backup" => fail(
            "backup",
            Severity::P2,
            &e.target,
            service_of_job(plan, &e.target),
            format!("backup {} failed", e.target),
        ),
        "verify" | "verify restore" if ok => Effect::Ends {
            kind: "verification",
            target: e.target.clone(),
        },
        "verify" | "verify restore" => fail(
            "verification",
            Severity::P2,
            &e.target,
            if plan.services.contains_key(&e.target) {
                e.target.clone()
            } else {
                service_of_job(plan, &e.target)
            },
            format!("{} of {} failed", e.command, e.target),
        ),
        "drill" => {
            let drill = f["drill"].as_str().unwrap_or(&e.target).to_string();
            if ok {
                Effect::Ends {
                    kind: "drill",
                    target: drill,
                }
            } else {
                fail(
                    "drill",
                    Severity::P3,
                    &drill,
                    e.target.clone(),
                    format!("drill {drill} on {}: {}", e.target, e.outcome),
                )
            }
        }
        command => match SIMPLE.iter().find(|(c, ..)| *c == command) {
            Some((_, kind, _, _)) if ok => Effect::Ends {
                kind,
                target: e.target.clone(),
            },
            Some((_, kind, severity, title)) => fail(
                kind,
                *severity,
                &e.target,
                e.target.clone(),
                title.replace("{}", &e.target),
            ),
            None => Effect::None,
        },
    }
}

/// Commands whose failure opens an incident about their target (a repository, a service)
/// and whose next success ends it: (command, kind, severity, title).
const SIMPLE: &[(&str, &str, Severity, &str)] = &[
    (
        "repo check",
        "check",
        Severity::P2,
        "repository {} failed its check",
    ),
    ("copy", "copy", Severity::P3, "cross-region copy {} failed"),
    (
        "wal push",
        "wal-archive",
        Severity::P2,
        "{}: WAL archiving failed",
    ),
];

/// Commands that belong to an open failover incident's timeline when they concern its service.
fn related(e: &Event, service: &str) -> bool {
    let about = e.target == service || e.figures["service"].as_str() == Some(service);
    about
        && matches!(
            e.command.as_str(),
            "switchover"
                | "rejoin"
                | "failback"
                | "fence"
                | "runbook"
                | "runbook-step"
                | "notify"
                | "decision"
        )
}

/// Every incident the log holds, oldest first.
pub fn derive(plan: &Plan, events: &[Event]) -> Vec<Incident> {
    let mut all: Vec<Incident> = Vec::new();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut open: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in events {
        match e.command.as_str() {
            "incident ack" | "incident resolve" | "escalate" | "incident notify" => {
                let Some(&i) = by_id.get(&e.target) else {
                    continue;
                };
                let inc = &mut all[i];
                inc.events.push(e.seq);
                match e.command.as_str() {
                    "incident ack" if inc.state == "open" => {
                        inc.state = "acknowledged".into();
                        inc.acknowledged_by = Some(e.actor.clone());
                        inc.acknowledged_at = Some(e.time.clone());
                    }
                    "incident resolve" if inc.open() => {
                        inc.state = "resolved".into();
                        inc.resolved_by = Some(e.actor.clone());
                        inc.resolved_at = Some(e.time.clone());
                        inc.resolution = e.figures["note"]
                            .as_str()
                            .map(str::to_string)
                            .or(Some("resolved by a person".into()));
                        open.retain(|_, v| *v != i);
                    }
                    "escalate" => {
                        if let Some(l) = e.figures["level"].as_u64() {
                            inc.escalated.push(l as usize);
                        }
                    }
                    "incident notify" => {
                        if let Some(w) = e.figures["what"].as_str() {
                            inc.notified.push(w.to_string());
                        }
                    }
                    _ => {}
                }
                continue;
            }
            _ => {}
        }
        match effect(plan, e) {
            Effect::Opens {
                kind,
                severity,
                target,
                service,
                title,
            } => {
                let key = (kind.to_string(), target.clone());
                if let Some(&i) = open.get(&key) {
                    // The same thing failing again: one incident, its timeline grows.
                    let inc = &mut all[i];
                    inc.events.push(e.seq);
                    inc.severity = inc.severity.min(severity);
                    continue;
                }
                let id = format!("INC-{}", e.seq);
                by_id.insert(id.clone(), all.len());
                open.insert(key, all.len());
                all.push(Incident {
                    id,
                    severity,
                    kind: kind.into(),
                    service,
                    target,
                    title,
                    opened: e.time.clone(),
                    state: "open".into(),
                    acknowledged_by: None,
                    acknowledged_at: None,
                    resolved_by: None,
                    resolved_at: None,
                    resolution: None,
                    escalated: Vec::new(),
                    notified: Vec::new(),
                    events: vec![e.seq],
                });
            }
            Effect::Ends { kind, target } => {
                if let Some(i) = open.remove(&(kind.to_string(), target)) {
                    let inc = &mut all[i];
                    inc.events.push(e.seq);
                    inc.state = "resolved".into();
                    inc.resolved_by = Some(e.actor.clone());
                    inc.resolved_at = Some(e.time.clone());
                    inc.resolution = Some(format!(
                        "{} {} succeeded (event {})",
                        e.command, e.target, e.seq
                    ));
                }
            }
            Effect::None => {
                for ((kind, _), &i) in open.iter() {
                    if kind == "failover" && related(e, &all[i].service) {
                        all[i].events.push(e.seq);
                    }
                }
            }
        }
    }
    all
}

/// The incidents of the plan's evidence log.
pub fn load(
    ctx: &lifeboat_context::Context,
) -> Result<(Vec<Incident>, Vec<Event>), lifeboat_core::Error> {
    let ev = ctx.evidence().map_err(|e| {
        lifeboat_core::Error::new(lifeboat_core::Kind::Io, format!("the evidence log: {e}"))
    })?;
    let events = ev.list(None).map_err(|e| {
        lifeboat_core::Error::new(lifeboat_core::Kind::Io, format!("the evidence log: {e}"))
    })?;
    Ok((derive(&ctx.plan, &events), events))
}

/// The incidents of events already read.
pub fn of(plan: &Plan, events: &[Event]) -> Vec<Incident> {
    derive(plan, events)
}

/// Find an incident by id (`INC-12` or `12`).
pub fn find<'a>(all: &'a [Incident], id: &str) -> Option<&'a Incident> {
    let id = if id.starts_with("INC-") {
        id.to_string()
    } else {
        format!("INC-{id}")
    };
    all.iter().find(|i| i.id == id)
}

fn ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

fn span(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        s if s < 120 => format!("{:.1} s", ms as f64 / 1000.0),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// What one timeline event says, in a line.
fn describe(e: &Event) -> String {
    let f = &e.figures;
    let reason = f["reason"]
        .as_str()
        .or(f["error"].as_str())
        .or(f["aborted"].as_str())
        .unwrap_or("");
    let mut s = format!("{} {}: {}", e.command, e.target, e.outcome);
    if e.command == "escalate" {
        s = format!(
            "escalated to level {} ({}): {}",
            f["level"].as_u64().unwrap_or(0) + 1,
            f["name"].as_str().unwrap_or(""),
            f["notify"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    if e.command == "incident ack" {
        s = format!("acknowledged by {}", e.actor);
    }
    if e.command == "notify" {
        s = format!(
            "notified {} about {} ({}): {}",
            e.target,
            f["event"].as_str().unwrap_or(""),
            f["severity"].as_str().unwrap_or(""),
            e.outcome
        );
    }
    if !reason.is_empty() {
        s.push_str(" — ");
        s.push_str(reason);
    }
    if let Some(steps) = f["steps"].as_array() {
        let parts: Vec<String> = steps
            .iter()
            .map(|st| {
                format!(
                    "{} {} ms",
                    st["action"].as_str().unwrap_or("?"),
                    st["ms"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        if !parts.is_empty() {
            s.push_str(&format!(" (steps: {})", parts.join(", ")));
        }
    }
    s
}

/// The post-incident report, as Markdown.
pub fn report(plan: &Plan, inc: &Incident, events: &[Event]) -> String {
    let by_seq: BTreeMap<i64, &Event> = events.iter().map(|e| (e.seq, e)).collect();
    let timeline: Vec<&Event> = inc
        .events
        .iter()
        .filter_map(|s| by_seq.get(s).copied())
        .collect();
    let opened = ts(&inc.opened);
    let end = inc.resolved_at.as_deref().and_then(ts);
    let now = jiff::Timestamp::now();
    let duration =
        opened.map(|o| (end.unwrap_or(now).as_millisecond() - o.as_millisecond()).max(0));
    let tier_name = plan
        .services
        .get(&inc.service)
        .map(|s| s.tier().to_string());
    let tier = tier_name.as_ref().and_then(|t| plan.tiers.get(t));
    let mut md = String::new();
    md.push_str(&format!(
        "# Incident Report: {} — {}\n\n",
        inc.id, inc.title
    ));
    md.push_str(&format!(
        "**Date/Time**: {} UTC\n\n",
        opened
            .map(|o| o.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| inc.opened.clone())
    ));
    md.push_str(&format!(
        "**Duration**: {}{}\n\n",
        duration.map(span).unwrap_or_else(|| "unknown".into()),
        if end.is_none() {
            " so far (not resolved)"
        } else {
            ""
        }
    ));
    md.push_str(&format!(
        "**Severity**: {:?}  \n**State**: {}",
        inc.severity, inc.state
    ));
    if let (Some(by), Some(at)) = (&inc.acknowledged_by, &inc.acknowledged_at) {
        md.push_str(&format!("  \n**Acknowledged**: by {by} at {at}"));
    }
    md.push_str("\n\n");
    md.push_str(&format!(
        "**Impact**: service {} (tier {}){}\n\n",
        inc.service,
        tier_name.as_deref().unwrap_or("?"),
        match inc.kind.as_str() {
            "failover" => "; writes moved to another member. Clients were cut off from the old primary during the failover below.".to_string(),
            "backup" | "wal-archive" => format!("; the recovery point grows older until {} succeeds again.", inc.target),
            "verification" => "; the backups are not proven restorable until a verification passes.".into(),
            "drill" => "; the drill's measured recovery missed the objectives (figures below).".into(),
            _ => String::new(),
        }
    ));
    md.push_str("**Root Cause**: _(for a person to fill in after the review)_\n\n");
    md.push_str("**Resolution**: what Lifeboat did, in order\n\n");
    md.push_str("| Time (UTC) | +offset | What | Took | By |\n|---|---|---|---|---|\n");
    for e in &timeline {
        let off = match (opened, ts(&e.time)) {
            (Some(o), Some(t)) => span(t.as_millisecond() - o.as_millisecond()),
            _ => "?".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            ts(&e.time)
                .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
                .unwrap_or_else(|| e.time.clone()),
            off,
            describe(e).replace('|', "\\|").replace('\n', " "),
            span(e.duration_ms),
            e.actor
        ));
    }
    if let Some(r) = &inc.resolution {
        md.push_str(&format!(
            "\nResolved: {r}{}.\n",
            inc.resolved_by
                .as_ref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default()
        ));
    }
    md.push_str("\n## Recovery against the objectives\n\n");
    md.push_str("| | Objective | Measured |\n|---|---|---|\n");
    let rto = tier
        .map(|t| format!("{}", t.rto))
        .unwrap_or_else(|| "—".into());
    let rpo = tier
        .map(|t| format!("{}", t.rpo))
        .unwrap_or_else(|| "—".into());
    let (m_rto, mut m_rpo) = measured(plan, inc, &timeline);
    if matches!(inc.kind.as_str(), "backup" | "wal-archive") {
        // Unprotected data: from the last success before the incident to its end (or now).
        let command = if inc.kind == "backup" {
            "backup"
        } else {
            "wal push"
        };
        let last_ok = events
            .iter()
            .filter(|e| e.command == command && e.target == inc.target && e.outcome == "ok")
            .filter(|e| opened.zip(ts(&e.time)).is_some_and(|(o, t)| t < o))
            .filter_map(|e| ts(&e.time))
            .next_back();
        m_rpo = match last_ok {
            Some(t) => format!(
                "up to {} of changes not protected (since the last good {command} at {})",
                span(end.unwrap_or(now).as_millisecond() - t.as_millisecond()),
                t.strftime("%Y-%m-%d %H:%M:%S")
            ),
            None => "no good copy before the incident".into(),
        };
    }
    md.push_str(&format!(
        "| RTO | {rto} | {m_rto} |\n| RPO | {rpo} | {m_rpo} |\n"
    ));
    md.push_str("\n**Lessons Learned**: _(for the review)_\n\n");
    md.push_str(&format!(
        "_Generated by Lifeboat from the evidence log (events {}); `lifeboat audit verify` proves the log unaltered._\n",
        inc.events.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    ));
    md
}

/// The recovery measured for an incident, in words: a failover's duration (plus the
/// detection the plan's checks take), a drill's figures.
fn measured(plan: &Plan, inc: &Incident, timeline: &[&Event]) -> (String, String) {
    match inc.kind.as_str() {
        "failover" => {
            let Some(f) = timeline.iter().find(|e| e.command == "failover") else {
                return ("—".into(), "—".into());
            };
            let (interval, threshold) = match plan.services.get(&inc.service) {
                Some(lifeboat_core::plan::Service::Postgres {
                    failover: Some(fo), ..
                }) => (
                    fo.interval.map(|d| d.0.as_millis() as i64).unwrap_or(500),
                    fo.unhealthy_threshold.unwrap_or(3),
                ),
                _ => (500, 3),
            };
            let refused = f.figures["reason"]
                .as_str()
                .is_some_and(|r| r.contains("connection refused"));
            let rto = format!(
                "{} to fail over once decided, after {threshold} failed checks in a row ({}); a drill measures the whole outage as clients see it",
                span(f.duration_ms),
                if refused {
                    "refused connections are re-checked every 100 ms".to_string()
                } else {
                    format!("one every {}", span(interval))
                }
            );
            let lost = f.figures["lost_bytes"]
                .as_u64()
                .or(f.figures["lag_bytes"].as_u64());
            let rpo = match (f.figures["reason"].as_str(), lost) {
                (_, Some(b)) => format!("{b} bytes behind at promotion"),
                (Some(r), None) if r.contains("synchronous standby") => {
                    "0: a synchronous standby was promoted".into()
                }
                _ => "not measured (see the decision's reason)".into(),
            };
            (rto, rpo)
        }
        "drill" => {
            let Some(d) = timeline.iter().rev().find(|e| e.command == "drill") else {
                return ("—".into(), "—".into());
            };
            let f = &d.figures;
            (
                f["rto_ms"]
                    .as_i64()
                    .map(span)
                    .unwrap_or_else(|| "not measured".into()),
                f["rpo_ms"]
                    .as_i64()
                    .map(span)
                    .unwrap_or_else(|| "not measured".into()),
            )
        }
        _ => ("—".into(), "—".into()),
    }
}

/// The report as a self-contained HTML page (the Markdown's content; every value escaped).
pub fn report_html(md: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let inline = |s: &str| {
        let s = esc(s);
        // **bold** and _italic_ only.
        let mut out = String::new();
        let mut bold = false;
        for (i, part) in s.split("**").enumerate() {
            if i > 0 {
                out.push_str(if bold { "</strong>" } else { "<strong>" });
                bold = !bold;
            }
            out.push_str(part);
        }
        out.replace("  ", "<br>")
    };
    let mut html = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Incident report</title><style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}</style></head><body>\n");
    let mut in_table = false;
    for line in md.lines() {
        if line.starts_with('|') {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                continue;
            }
            if !in_table {
                html.push_str("<table>");
                in_table = true;
                html.push_str("<tr>");
                for c in &cells {
                    html.push_str(&format!("<th>{}</th>", inline(c)));
                }
                html.push_str("</tr>\n");
                continue;
            }
            html.push_str("<tr>");
            for c in &cells {
                html.push_str(&format!("<td>{}</td>", inline(&c.replace("\\|", "|"))));
            }
            html.push_str("</tr>\n");
            continue;
        }
        if in_table {
            html.push_str("</table>\n");
            in_table = false;
        }
        if let Some(h) = line.strip_prefix("# ") {
            html.push_str(&format!("<h1>{}</h1>\n", inline(h)));
        } else if let Some(h) = line.strip_prefix("## ") {
            html.push_str(&format!("<h2>{}</h2>\n", inline(h)));
        } else if !line.trim().is_empty() {
            html.push_str(&format!("<p>{}</p>\n", inline(line)));
        }
    }
    if in_table {
        html.push_str("</table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

/// The escalation levels due now for an open, unacknowledged incident: (level index, level).
pub fn due_levels<'a>(
    plan: &'a Plan,
    inc: &Incident,
    now: jiff::Timestamp,
) -> Vec<(usize, &'a lifeboat_core::plan::EscalationLevel)> {
    let Some(esc) = &plan.escalation else {
        return Vec::new();
    };
    let sev = esc
        .severities
        .clone()
        .unwrap_or_else(|| vec![Severity::P1, Severity::P2]);
    if inc.state != "open" || !sev.contains(&inc.severity) {
        return Vec::new();
    }
    let Some(opened) = ts(&inc.opened) else {
        return Vec::new();
    };
    let age = now.as_millisecond() - opened.as_millisecond();
    esc.levels
        .iter()
        .enumerate()
        .filter(|(i, l)| !inc.escalated.contains(i) && age >= l.after.0.as_millis() as i64)
        .collect()
}

/// Record an operator's act on an incident (`incident ack`, `incident resolve`) as `actor`.
pub fn act(
    ctx: &lifeboat_context::Context,
    actor: &str,
    id: &str,
    command: &str,
    note: Option<&str>,
) -> Result<Incident, lifeboat_core::Error> {
    use lifeboat_core::{Error, Kind};
    let (all, _) = load(ctx)?;
    let inc = find(&all, id).cloned().ok_or_else(|| {
        Error::new(Kind::Input, format!("no incident {id}"))
            .hint("`lifeboat incident list` shows them")
    })?;
    let already = match command {
        "incident ack" => inc.state != "open",
        _ => !inc.open(),
    };
    if already {
        return Ok(inc);
    }
    let mut c = ctx.clone();
    c.actor = actor.to_string();
    c.record(
        command,
        &inc.id,
        "ok",
        std::time::Instant::now(),
        serde_json::json!({"note": note}),
    )
    .map_err(|e| Error::new(Kind::Io, format!("the evidence log: {e}")))?;
    let (all, _) = load(ctx)?;
    Ok(find(&all, &inc.id).cloned().unwrap_or(inc))
}

fn note_for(
    plan: &Plan,
    inc: &Incident,
    event: &str,
    summary: String,
    only: Option<Vec<String>>,
) -> lifeboat_context::notify::Note {
    let _ = plan;
    lifeboat_context::notify::Note {
        severity: inc.severity,
        event: event.into(),
        service: inc.service.clone(),
        summary,
        details: serde_json::json!({
            "incident": inc.id, "kind": inc.kind, "target": inc.target, "title": inc.title,
            "opened": inc.opened, "state": inc.state,
            "acknowledge": format!("lifeboat ack {}", inc.id),
        }),
        only,
    }
}

/// The daemon's incident worker, until `stop`: tells the plan's targets when an incident
/// opens and when it is resolved, and escalates an unacknowledged one level by level. Each
/// notification is recorded before it is sent, so a restart sends none twice. Incidents that
/// opened before the daemon started, longer ago than the last escalation delay plus an hour,
/// are left alone (no flood of old news at a start).
pub async fn run(
    ctx: lifeboat_context::Context,
    notifier: lifeboat_context::notify::Notifier,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let horizon_ms = ctx
        .plan
        .escalation
        .as_ref()
        .and_then(|e| e.levels.last())
        .map(|l| l.after.0.as_millis() as i64)
        .unwrap_or(0)
        + 3_600_000;
    if ctx.plan.notifications.is_empty() {
        return; // nobody to tell; `lifeboat incident list` still shows them
    }
    let started = jiff::Timestamp::now();
    loop {
        let c = ctx.clone();
        let notes = tokio::task::spawn_blocking(move || tick(&c, started, horizon_ms))
            .await
            .unwrap_or_default();
        for n in notes {
            notifier.send(n);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

fn tick(
    ctx: &lifeboat_context::Context,
    started: jiff::Timestamp,
    horizon_ms: i64,
) -> Vec<lifeboat_context::notify::Note> {
    let Ok((all, _)) = load(ctx) else {
        return Vec::new();
    };
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    let record = |inc: &Incident, command: &str, figures: serde_json::Value| -> bool {
        let mut c = ctx.clone();
        c.actor = "lifeboat".into();
        c.record(command, &inc.id, "ok", std::time::Instant::now(), figures)
            .is_ok()
    };
    for inc in &all {
        let Some(opened) = ts(&inc.opened) else {
            continue;
        };
        let fresh =
            opened >= started || now.as_millisecond() - opened.as_millisecond() < horizon_ms;
        if !fresh {
            continue;
        }
        if !inc.notified.iter().any(|w| w == "opened")
            && record(
                inc,
                "incident notify",
                serde_json::json!({"what": "opened"}),
            )
        {
            out.push(note_for(
                &ctx.plan,
                inc,
                "incident",
                format!("{} opened ({:?}): {}", inc.id, inc.severity, inc.title),
                None,
            ));
        }
        if !inc.open() {
            if inc.notified.iter().any(|w| w == "opened")
                && !inc.notified.iter().any(|w| w == "resolved")
                && record(
                    inc,
                    "incident notify",
                    serde_json::json!({"what": "resolved"}),
                )
            {
                out.push(note_for(
                    &ctx.plan,
                    inc,
                    "resolved",
                    format!(
                        "{} resolved: {}",
                        inc.id,
                        inc.resolution.clone().unwrap_or_default()
                    ),
                    None,
                ));
            }
            continue;
        }
        for (i, level) in due_levels(&ctx.plan, inc, now) {
            let who = level
                .name
                .clone()
                .unwrap_or_else(|| format!("level {}", i + 1));
            if record(
                inc,
                "escalate",
                serde_json::json!({"level": i, "name": who, "notify": level.notify, "after": level.after.to_string()}),
            ) {
                out.push(note_for(
                    &ctx.plan,
                    inc,
                    "escalation",
                    format!(
                        "{} unacknowledged for {}: {who} is told ({})",
                        inc.id, level.after, inc.title
                    ),
                    Some(level.notify.clone()),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        lifeboat_core::load::parse_plan(
            "name: t\ntiers:\n  gold: { rpo: 0s, rto: 1m }\nsites: [a, b]\nservices:\n  db: { kind: postgres, tier: gold, members: { a: { host: 127.0.0.1, port: 5432, user: postgres, data_dir: d }, b: { host: 127.0.0.1, port: 5433, user: postgres, data_dir: e } }, failover: { listen: \"127.0.0.1:6432\" } }\nnotifications:\n  - { name: x, webhook: \"http://127.0.0.1:9/x\" }\n  - { name: y, webhook: \"http://127.0.0.1:9/y\" }\nescalation:\n  levels:\n    - { after: 0s, notify: [x] }\n    - { after: 15m, notify: [y] }\n",
            "t.yaml",
        )
        .expect("plan")
    }

    fn ev(
        seq: i64,
        time: &str,
        command: &str,
        target: &str,
        outcome: &str,
        figures: serde_json::Value,
    ) -> Event {
        Event {
            seq,
            time: time.into(),
            actor: "t".into(),
            command: command.into(),
            plan: "t".into(),
            target: target.into(),
            outcome: outcome.into(),
            duration_ms: 150,
            figures,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_failover_opens_a_p1_that_gathers_what_followed_until_resolved_by_a_person() {
        let p = plan();
        let events = vec![
            ev(
                1,
                "2026-01-01T00:00:00Z",
                "failover",
                "db",
                "ok",
                // As the daemon records it.
                serde_json::to_value(lifeboat_core::decide::Decision {
                    action: lifeboat_core::decide::Action::Failover {
                        from: Some("a".into()),
                        to: "b".into(),
                        epoch: 2,
                    },
                    reason: "promoting b: synchronous standby".into(),
                })
                .unwrap(),
            ),
            ev(
                2,
                "2026-01-01T00:00:01Z",
                "notify",
                "slack",
                "ok",
                serde_json::json!({"service": "db", "event": "failover"}),
            ),
            ev(
                3,
                "2026-01-01T00:00:02Z",
                "backup",
                "other",
                "ok",
                serde_json::json!({}),
            ),
            ev(
                4,
                "2026-01-01T00:05:00Z",
                "rejoin",
                "db",
                "ok",
                serde_json::json!({}),
            ),
            ev(
                5,
                "2026-01-01T00:06:00Z",
                "incident ack",
                "INC-1",
                "ok",
                serde_json::json!({}),
            ),
            ev(
                6,
                "2026-01-01T01:00:00Z",
                "incident resolve",
                "INC-1",
                "ok",
                serde_json::json!({"note": "a's disk replaced"}),
            ),
        ];
        let all = derive(&p, &events);
        assert_eq!(all.len(), 1);
        let i = &all[0];
        assert_eq!(
            (i.id.as_str(), i.severity, i.kind.as_str()),
            ("INC-1", Severity::P1, "failover")
        );
        assert_eq!(i.title, "db: failed over from a to b");
        assert_eq!(
            i.events,
            vec![1, 2, 4, 5, 6],
            "the unrelated backup is not in it"
        );
        assert_eq!(i.state, "resolved");
        assert_eq!(i.resolution.as_deref(), Some("a's disk replaced"));
        let md = report(&p, i, &events);
        assert!(md.contains("**Duration**: 1 h 0 min"), "{md}");
        assert!(
            md.contains("| RPO | 0s | 0: a synchronous standby was promoted |"),
            "{md}"
        );
        assert!(md.contains("acknowledged by t"), "{md}");
    }

    #[test]
    fn repeated_failures_are_one_incident_and_escalation_follows_its_age_until_acknowledged() {
        let p = plan();
        let mut events = vec![
            ev(
                1,
                "2026-01-01T00:00:00Z",
                "backup",
                "db-base",
                "failed",
                serde_json::json!({}),
            ),
            ev(
                2,
                "2026-01-01T00:01:00Z",
                "backup",
                "db-base",
                "failed",
                serde_json::json!({}),
            ),
            ev(
                3,
                "2026-01-01T00:01:30Z",
                "escalate",
                "INC-1",
                "ok",
                serde_json::json!({"level": 0}),
            ),
        ];
        let all = derive(&p, &events);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].events, vec![1, 2, 3]);
        assert_eq!(all[0].severity, Severity::P2);
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
        assert!(
            due_levels(&p, &all[0], at("2026-01-01T00:10:00Z")).is_empty(),
            "level 0 done, level 1 not due"
        );
        let due = due_levels(&p, &all[0], at("2026-01-01T00:16:00Z"));
        assert_eq!(due.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1]);
        events.push(ev(
            4,
            "2026-01-01T00:12:00Z",
            "incident ack",
            "INC-1",
            "ok",
            serde_json::json!({}),
        ));
        let all = derive(&p, &events);
        assert!(
            due_levels(&p, &all[0], at("2026-01-01T00:16:00Z")).is_empty(),
            "acknowledged: no escalation"
        );
        // A success ends it; the next failure is a new incident.
        events.push(ev(
            5,
            "2026-01-01T00:20:00Z",
            "backup",
            "db-base",
            "ok",
            serde_json::json!({}),
        ));
        events.push(ev(
            6,
            "2026-01-01T00:30:00Z",
            "backup",
            "db-base",
            "failed",
            serde_json::json!({}),
        ));
        let all = derive(&p, &events);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].state, "resolved");
        assert_eq!(
            (all[1].id.as_str(), all[1].state.as_str()),
            ("INC-6", "open")
        );
        // An incident for a P3 (a drill) does not escalate: only P1 and P2 do by default.
        events.push(ev(
            7,
            "2026-01-01T00:31:00Z",
            "drill",
            "db",
            "failed",
            serde_json::json!({"drill": "kill"}),
        ));
        let all = derive(&p, &events);
        assert_eq!(all[2].severity, Severity::P3);
        assert!(due_levels(&p, &all[2], at("2026-01-02T00:00:00Z")).is_empty());
        let html = report_html(&report(&p, &all[2], &events));
        assert!(html.contains("<h1>") && !html.contains("<script"), "{html}");
    }
}
