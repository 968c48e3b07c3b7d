//! The API's handlers and its OpenAPI document.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use lifeboat_core::decide::Action;
use lifeboat_core::plan::Service;
use lifeboat_failover::control::{Control, Request};
use lifeboat_failover::coord::StateFile;
use lifeboat_failover::manual::{check_once, plan_failover, Overrides};
use lifeboat_failover::world::Watched;

use super::jobs::Job;
use super::{require, ApiError, ApiState, Caller, JsonBody, Role};

type R<T> = Result<T, ApiError>;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/status", get(status))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}", get(service))
        .route("/api/v1/services/{service}/history", get(history))
        .route("/api/v1/services/{service}/failover", post(failover))
        .route("/api/v1/services/{service}/switchover", post(switchover))
        .route("/api/v1/snapshots", get(snapshots))
        .route("/api/v1/schedules", get(schedules))
        .route("/api/v1/schedules/{id}/pause", post(pause))
        .route("/api/v1/schedules/{id}/resume", post(resume))
        .route("/api/v1/jobs", get(jobs).post(start_job))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/evidence", get(evidence))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident_one))
        .route("/api/v1/incidents/{id}/report", get(incident_report))
        .route("/api/v1/incidents/{id}/ack", post(incident_ack))
        .route("/api/v1/incidents/{id}/resolve", post(incident_resolve))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lifeboat",
        description = "The disaster-recovery daemon's API: the state of each service against its objectives, and the safe ways to act. Every route needs `Authorization: Bearer TOKEN`."
    ),
    paths(
        whoami, status, services, service, history, failover, switchover, snapshots,
        schedules, pause, resume, jobs, start_job, job, cancel_job, evidence,
        incidents, incident_one, incident_report, incident_ack, incident_resolve
    ),
    components(schemas(ApiError, Job, StatusDoc, ServiceView, ActionDoc, Ages, Objectives, Fact,
        FailoverRequest, SwitchoverRequest, JobRequest, PauseRequest, EvidencePage, Me,
        crate::incident::Incident, ResolveRequest, ReportQuery)),
    modifiers(&Bearer),
)]
struct Doc;

struct Bearer;
impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut d = Doc::openapi();
    d.info.version = env!("CARGO_PKG_VERSION").to_string();
    d
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

// ---- open endpoints -------------------------------------------------------------------

pub async fn health(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"status": "ok", "plan": s.ctx.plan.name, "version": env!("CARGO_PKG_VERSION")}),
    )
}

pub async fn livez() -> &'static str {
    "ok\n"
}

/// Ready once every failover monitor has seen its members once.
pub async fn readyz(State(s): State<ApiState>) -> Response {
    let waiting: Vec<&str> = s
        .members
        .iter()
        .filter(|(_, m)| m.lock().map(|m| m.is_empty()).unwrap_or(true))
        .map(|(n, _)| n.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for the first checks of {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

pub async fn metrics(State(s): State<ApiState>) -> Response {
    crate::metrics::response(&s.metrics)
}

// ---- reading ---------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
struct Me {
    name: String,
    role: String,
}

/// The calling token's name and role.
#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = Me), (status = 401, body = ApiError)))]
async fn whoami(Extension(c): Extension<Caller>) -> Json<Me> {
    Json(Me {
        name: c.name,
        role: c.role.name().into(),
    })
}

/// One metric sample that concerns a service.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Fact {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an OpenMetrics text (`# ` lines skipped).
pub fn samples(text: &str) -> Vec<Fact> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never hold `",` (names of plan items and sites).
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once("=\"") {
                map.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
            }
        }
        out.push(Fact {
            metric: name.trim_start_matches("lifeboat_").to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// The service's objectives.
#[derive(Serialize, ToSchema)]
struct Objectives {
    rpo_seconds: f64,
    rto_seconds: f64,
}

/// When things last happened for the service (RFC 3339), and the measured figures beside
/// them; absent when never.
#[derive(Default, Serialize, ToSchema)]
struct Ages {
    last_backup: Option<String>,
    last_backup_failure: Option<String>,
    last_wal_archived: Option<String>,
    last_verified_restore: Option<String>,
    /// How long the last verified restore took until it took a write.
    verified_restore_rto_seconds: Option<f64>,
    last_drill: Option<String>,
    drill_rto_seconds: Option<f64>,
    drill_rpo_seconds: Option<f64>,
    last_copy: Option<String>,
    recovery_window_start: Option<String>,
    recovery_window_end: Option<String>,
    /// How much would be lost now, as time: from the newest point a restore reaches (or the
    /// newest backup) to now.
    rpo_actual_seconds: Option<f64>,
}

/// One service: objectives, whether they are met, members and their roles, and its history.
#[derive(Serialize, ToSchema)]
struct ServiceView {
    name: String,
    kind: String,
    tier: String,
    objectives: Option<Objectives>,
    /// `met`, `breached`, or `unknown` (nothing measured yet).
    rpo: String,
    ages: Ages,
    /// The member Lifeboat routes writes to, and its epoch (failover services).
    primary: Option<String>,
    epoch: Option<u64>,
    failover_in_progress: Option<String>,
    #[schema(value_type = Vec<Object>)]
    members: Vec<lifeboat_failover::healthapi::MemberHealth>,
    /// What the monitor decided last and why.
    #[schema(value_type = Option<Object>)]
    decision: Option<serde_json::Value>,
    /// The latest run of each drill scenario.
    #[schema(value_type = Vec<Object>)]
    drills: Vec<lifeboat_drill::Latest>,
    /// Every metric sample about the service.
    facts: Vec<Fact>,
    /// What can be done for it, each with the command line that does the same.
    actions: Vec<ActionDoc>,
}

/// One way to act, as the dashboard offers it.
#[derive(Serialize, ToSchema)]
struct ActionDoc {
    label: String,
    /// The command line that does the same.
    command: String,
    method: String,
    path: String,
    #[schema(value_type = Object)]
    body: serde_json::Value,
    /// `typed`: the person types the service's name, sent as `confirm`; `plain`: a yes.
    confirm: String,
    /// The weakest role allowed.
    role: String,
    /// A body to send first for the pre-checks (`dry_run`), shown before confirming.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<serde_json::Value>,
}

fn action(
    label: String,
    command: String,
    path: String,
    body: serde_json::Value,
    typed: bool,
) -> ActionDoc {
    ActionDoc {
        label,
        command,
        method: "POST".into(),
        path,
        body,
        confirm: if typed { "typed" } else { "plain" }.into(),
        role: "operator".into(),
        dry_run: None,
    }
}

/// The actions a service offers: switch over to each other member and fail over (when it has
/// failover), back up now (each job), prove a restore (postgres), run each drill.
fn actions(
    plan: &lifeboat_core::plan::Plan,
    name: &str,
    svc: &Service,
    primary: Option<&str>,
) -> Vec<ActionDoc> {
    let mut out = Vec::new();
    if let Service::Postgres {
        failover: Some(_),
        members,
        ..
    } = svc
    {
        for site in members.keys().filter(|m| Some(m.as_str()) != primary) {
            out.push(action(
                format!("Switch over to {site}"),
                format!("lifeboat switchover {name} --to {site}"),
                format!("/api/v1/services/{name}/switchover"),
                serde_json::json!({"to": site}),
                true,
            ));
        }
        let mut f = action(
            "Fail over".into(),
            format!("lifeboat failover {name}"),
            format!("/api/v1/services/{name}/failover"),
            serde_json::json!({}),
            true,
        );
        f.dry_run = Some(serde_json::json!({"dry_run": true}));
        out.push(f);
    }
    for job in plan
        .backups
        .iter()
        .filter(|(_, j)| j.service == name)
        .map(|(k, _)| k)
    {
        out.push(action(
            format!("Back up now ({job})"),
            format!("lifeboat backup {job}"),
            "/api/v1/jobs".into(),
            serde_json::json!({"kind": "backup", "job": job}),
            false,
        ));
    }
    if matches!(svc, Service::Postgres { .. }) {
        out.push(action(
            "Prove a restore".into(),
            format!("lifeboat verify --restore {name}"),
            "/api/v1/jobs".into(),
            serde_json::json!({"kind": "restore", "service": name}),
            false,
        ));
    }
    for (drill, d) in plan.drills.iter().filter(|(_, d)| d.service == name) {
        out.push(action(
            format!("Run drill {drill} ({})", d.scenario),
            format!("lifeboat drill run {drill} --yes"),
            "/api/v1/jobs".into(),
            serde_json::json!({"kind": "drill", "drill": drill}),
            true,
        ));
    }
    out
}

fn time_of(secs: f64) -> Option<String> {
    jiff::Timestamp::from_millisecond((secs * 1000.0) as i64)
        .ok()
        .map(|t| t.to_string())
}

fn view(
    s: &ApiState,
    name: &str,
    svc: &Service,
    all: &[Fact],
    drills: &[lifeboat_drill::Latest],
) -> ServiceView {
    let facts: Vec<Fact> = all
        .iter()
        .filter(|f| f.labels.get("service").map(String::as_str) == Some(name))
        .cloned()
        .collect();
    let max = |metric: &str| {
        facts
            .iter()
            .filter(|f| f.metric == metric)
            .map(|f| f.value)
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
    };
    let tier = s.ctx.plan.tiers.get(svc.tier());
    let latest_drill = drills.iter().max_by(|a, b| a.time.cmp(&b.time));
    let copy = all
        .iter()
        .filter(|f| f.metric == "copy_last_success_timestamp_seconds")
        .map(|f| f.value)
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let newest = max("recovery_window_end_timestamp_seconds")
        .or(max("wal_archive_last_success_timestamp_seconds"))
        .or(max("backup_last_success_timestamp_seconds"));
    let rpo_actual = newest.map(|t| (now - t).max(0.0));
    let ages = Ages {
        last_backup: max("backup_last_success_timestamp_seconds").and_then(time_of),
        last_backup_failure: max("backup_last_failure_timestamp_seconds").and_then(time_of),
        last_wal_archived: max("wal_archive_last_success_timestamp_seconds").and_then(time_of),
        last_verified_restore: max("restore_verification_last_success_timestamp_seconds")
            .and_then(time_of),
        verified_restore_rto_seconds: max("restore_verification_duration_seconds"),
        last_drill: latest_drill.map(|d| d.time.clone()),
        drill_rto_seconds: latest_drill
            .and_then(|d| d.rto_ms)
            .map(|v| v as f64 / 1000.0),
        drill_rpo_seconds: latest_drill
            .and_then(|d| d.rpo_ms)
            .map(|v| v as f64 / 1000.0),
        last_copy: copy.and_then(time_of),
        recovery_window_start: max("recovery_window_start_timestamp_seconds").and_then(time_of),
        recovery_window_end: max("recovery_window_end_timestamp_seconds").and_then(time_of),
        rpo_actual_seconds: rpo_actual,
    };
    let rpo = match (tier, rpo_actual) {
        (Some(t), Some(a)) if a <= t.rpo.0.as_secs_f64().max(1.0) => "met",
        (Some(_), Some(_)) => "breached",
        _ => "unknown",
    };
    let members = s
        .members
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, m)| m.lock().ok().map(|m| m.values().cloned().collect()))
        .unwrap_or_default();
    let st = StateFile::new(&s.ctx.state_dir, name).load().ok();
    let failover = matches!(
        svc,
        Service::Postgres {
            failover: Some(_),
            ..
        }
    );
    let decision = std::fs::read(s.ctx.state_dir.join("daemon").join(format!("{name}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    ServiceView {
        name: name.to_string(),
        kind: svc.kind().to_string(),
        tier: svc.tier().to_string(),
        objectives: tier.map(|t| Objectives {
            rpo_seconds: t.rpo.0.as_secs_f64(),
            rto_seconds: t.rto.0.as_secs_f64(),
        }),
        rpo: rpo.into(),
        ages,
        primary: st
            .as_ref()
            .filter(|_| failover)
            .and_then(|s| s.primary.clone()),
        epoch: st.as_ref().filter(|_| failover).map(|s| s.epoch),
        failover_in_progress: st
            .as_ref()
            .and_then(|s| s.in_progress.as_ref().map(|(t, _)| t.clone())),
        members,
        decision,
        drills: drills.to_vec(),
        facts,
        actions: actions(
            &s.ctx.plan,
            name,
            svc,
            st.as_ref().and_then(|s| s.primary.as_deref()),
        ),
    }
}

fn views(s: &ApiState, only: Option<&str>) -> R<Vec<ServiceView>> {
    let text = s.metrics.read().map(|t| t.clone()).unwrap_or_default();
    let all = samples(&text);
    let drills = lifeboat_drill::latest_of(&s.events()?);
    let mut out = Vec::new();
    for (name, svc) in &s.ctx.plan.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let d: Vec<_> = drills
            .iter()
            .filter(|d| &d.service == name)
            .cloned()
            .collect();
        out.push(view(s, name, svc, &all, &d));
    }
    if let Some(o) = only {
        if out.is_empty() {
            return Err(unknown_service(s, o));
        }
    }
    Ok(out)
}

fn unknown_service(s: &ApiState, name: &str) -> ApiError {
    ApiError::not_found(format!("no service `{name}` in the plan")).hint(format!(
        "the plan's services: {}",
        s.ctx
            .plan
            .services
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The whole picture.
#[derive(Serialize, ToSchema)]
struct StatusDoc {
    plan: String,
    version: String,
    daemon_started: String,
    now: String,
    services: Vec<ServiceView>,
    #[schema(value_type = Vec<Object>)]
    schedules: Vec<crate::schedule::View>,
    /// Running jobs and the ten most recent others.
    jobs: Vec<Job>,
    /// Incidents not resolved yet, newest first.
    incidents: Vec<crate::incident::Incident>,
}

fn schedule_views(s: &ApiState) -> Vec<crate::schedule::View> {
    crate::schedule::views(
        &s.ctx.plan,
        &s.ctx.state_dir,
        jiff::Timestamp::now(),
        std::time::Duration::from_secs(120),
    )
}

/// Every service against its objectives, the schedules and the jobs.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = StatusDoc), (status = 401, body = ApiError)))]
async fn status(State(s): State<ApiState>) -> R<Json<StatusDoc>> {
    let st = s.clone();
    let doc = tokio::task::spawn_blocking(move || -> R<StatusDoc> {
        let mut jobs = st.jobs.list();
        let mut recent = 0;
        jobs.retain(|j| {
            j.active() || {
                recent += 1;
                recent <= 10
            }
        });
        Ok(StatusDoc {
            plan: st.ctx.plan.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            daemon_started: st.started.to_string(),
            now: jiff::Timestamp::now().to_string(),
            services: views(&st, None)?,
            schedules: schedule_views(&st),
            jobs,
            incidents: crate::incident::of(&st.ctx.plan, &st.events()?)
                .into_iter()
                .rev()
                .filter(|i| i.open())
                .collect(),
        })
    })
    .await
    .map_err(|e| ApiError::new(500, format!("status: {e}")))??;
    Ok(Json(doc))
}

/// Every service of the plan.
#[utoipa::path(get, path = "/api/v1/services", responses((status = 200, body = Vec<ServiceView>)))]
async fn services(State(s): State<ApiState>) -> R<Json<Vec<ServiceView>>> {
    let v = tokio::task::spawn_blocking(move || views(&s, None))
        .await
        .map_err(|e| ApiError::new(500, format!("services: {e}")))??;
    Ok(Json(v))
}

/// One service.
#[utoipa::path(get, path = "/api/v1/services/{service}", params(("service" = String, Path)), responses((status = 200, body = ServiceView), (status = 404, body = ApiError)))]
async fn service(State(s): State<ApiState>, Path(name): Path<String>) -> R<Json<ServiceView>> {
    let mut v = tokio::task::spawn_blocking(move || views(&s, Some(&name)))
        .await
        .map_err(|e| ApiError::new(500, format!("service: {e}")))??;
    Ok(Json(v.remove(0)))
}

/// The service's failovers, switchovers, rejoins, drills and restores, newest first, from the
/// evidence log: what Lifeboat did, when, why and how long it took.
#[utoipa::path(get, path = "/api/v1/services/{service}/history", params(("service" = String, Path)), responses((status = 200, body = EvidencePage), (status = 404, body = ApiError)))]
async fn history(State(s): State<ApiState>, Path(name): Path<String>) -> R<Json<EvidencePage>> {
    if !s.ctx.plan.services.contains_key(&name) {
        return Err(unknown_service(&s, &name));
    }
    let q = EvidenceQuery {
        target: Some(name),
        limit: Some(200),
        ..Default::default()
    };
    let page = tokio::task::spawn_blocking(move || evidence_page(&s, &q))
        .await
        .map_err(|e| ApiError::new(500, format!("history: {e}")))??;
    Ok(Json(page))
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EvidenceQuery {
    /// At most this many events (default 100, at most 1000).
    limit: Option<usize>,
    /// Only events before this sequence number (the next page: the last page's `next_before`).
    before: Option<i64>,
    command: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    actor: Option<String>,
}

/// A page of the evidence log, newest first.
#[derive(Serialize, ToSchema)]
struct EvidencePage {
    #[schema(value_type = Vec<Object>)]
    events: Vec<lifeboat_evidence::Event>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next_before: Option<i64>,
}

fn evidence_page(s: &ApiState, q: &EvidenceQuery) -> R<EvidencePage> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::field(400, "limit", "limit: between 1 and 1000"));
    }
    let all = s.events()?;
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let mut events: Vec<_> = all
        .iter()
        .rev()
        .filter(|e| q.before.is_none_or(|b| e.seq < b))
        .filter(|e| {
            eq(&q.command, &e.command)
                && eq(&q.target, &e.target)
                && eq(&q.outcome, &e.outcome)
                && eq(&q.actor, &e.actor)
        })
        .take(limit + 1)
        .cloned()
        .collect();
    let more = events.len() > limit;
    events.truncate(limit);
    Ok(EvidencePage {
        next_before: if more {
            events.last().map(|e| e.seq)
        } else {
            None
        },
        events,
    })
}

/// The evidence log: every command's outcome, hash-chained; paged, filterable.
#[utoipa::path(get, path = "/api/v1/evidence", params(EvidenceQuery), responses((status = 200, body = EvidencePage), (status = 400, body = ApiError)))]
async fn evidence(
    State(s): State<ApiState>,
    q: Result<Query<EvidenceQuery>, axum::extract::rejection::QueryRejection>,
) -> R<Json<EvidencePage>> {
    let Query(q) = q.map_err(|e| ApiError::new(400, format!("the query: {}", e.body_text())))?;
    let page = tokio::task::spawn_blocking(move || evidence_page(&s, &q))
        .await
        .map_err(|e| ApiError::new(500, format!("evidence: {e}")))??;
    Ok(Json(page))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SnapshotQuery {
    /// The repository (default: the plan's only one).
    repository: Option<String>,
    /// Only this backup job's snapshots.
    job: Option<String>,
}

/// The snapshots in a repository, newest first.
#[utoipa::path(get, path = "/api/v1/snapshots", params(SnapshotQuery), responses((status = 200, body = Vec<Object>), (status = 404, body = ApiError)))]
async fn snapshots(
    State(s): State<ApiState>,
    q: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> R<Json<serde_json::Value>> {
    let Query(q) = q.map_err(|e| ApiError::new(400, format!("the query: {}", e.body_text())))?;
    let repo = match &q.repository {
        Some(r) if !s.ctx.plan.repositories.contains_key(r) => {
            return Err(
                ApiError::not_found(format!("no repository `{r}` in the plan"))
                    .hint(format!("the plan's repositories: {}", s.ctx.repo_names())),
            )
        }
        Some(r) => r.clone(),
        None => s
            .ctx
            .default_repo()
            .map_err(|e| ApiError::field(400, "repository", e.message.clone()))?,
    };
    let v = tokio::task::spawn_blocking(move || -> R<serde_json::Value> {
        let store = s.ctx.open_repo(&repo)?;
        let mut snaps = store
            .snapshots()
            .map_err(|e| ApiError::new(502, format!("repository {repo}: {e}")))?;
        if let Some(j) = &q.job {
            snaps.retain(|x| x.job.as_deref() == Some(j.as_str()));
        }
        snaps.sort_by_key(|x| std::cmp::Reverse(x.timestamp));
        Ok(serde_json::to_value(snaps).unwrap_or_default())
    })
    .await
    .map_err(|e| ApiError::new(500, format!("snapshots: {e}")))??;
    Ok(Json(v))
}

/// Every schedule: next and last run, overdue, paused.
#[utoipa::path(get, path = "/api/v1/schedules", responses((status = 200, body = Vec<Object>)))]
async fn schedules(State(s): State<ApiState>) -> Json<Vec<crate::schedule::View>> {
    Json(schedule_views(&s))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct PauseRequest {
    /// Why (kept with the pause, shown to others).
    reason: Option<String>,
}

/// An operator's act in the evidence log, the token's name as the actor.
fn record(s: &ApiState, c: &Caller, command: &str, target: &str, figures: serde_json::Value) {
    let mut ctx = s.ctx.clone();
    ctx.actor = c.name.clone();
    let _ = ctx.record(command, target, "ok", std::time::Instant::now(), figures);
}

fn schedule_exists(s: &ApiState, id: &str) -> R<()> {
    if crate::schedule::entries(&s.ctx.plan)
        .iter()
        .any(|e| e.id == id)
    {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no schedule `{id}`"))
            .hint("`GET /api/v1/schedules` lists them (ids like backups.NAME)"))
    }
}

/// Pause a schedule: its instants pass without a run until it is resumed (a run under way
/// goes on). Operator.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/pause", params(("id" = String, Path)), request_body = PauseRequest, responses((status = 200, body = Object), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn pause(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PauseRequest>,
) -> R<Json<serde_json::Value>> {
    require(&c, Role::Operator)?;
    schedule_exists(&s, &id)?;
    let p = crate::schedule::Pause {
        by: c.name.clone(),
        since: jiff::Timestamp::now(),
        reason: b.reason,
    };
    let changed = crate::schedule::set_paused(&s.ctx.state_dir, &id, Some(p))?;
    if changed {
        record(&s, &c, "schedule pause", &id, serde_json::json!({}));
    }
    Ok(Json(
        serde_json::json!({"id": id, "paused": true, "changed": changed}),
    ))
}

/// Resume a paused schedule: it runs again from its next instant. Operator.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/resume", params(("id" = String, Path)), responses((status = 200, body = Object), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn resume(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(_b): JsonBody<PauseRequest>,
) -> R<Json<serde_json::Value>> {
    require(&c, Role::Operator)?;
    schedule_exists(&s, &id)?;
    let changed = crate::schedule::set_paused(&s.ctx.state_dir, &id, None)?;
    if changed {
        record(&s, &c, "schedule resume", &id, serde_json::json!({}));
    }
    Ok(Json(
        serde_json::json!({"id": id, "paused": false, "changed": changed}),
    ))
}

// ---- jobs ------------------------------------------------------------------------------

/// A job to start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    /// `backup` (give `job`), `verify` (optional `job`, `read_data`), `restore` (a restore of
    /// `service` into a sandbox, proven by its checks), `drill` (give `drill`), `copy` (give
    /// `to`, optional `from`), `check` (optional `repository`, `read_data`).
    kind: String,
    job: Option<String>,
    service: Option<String>,
    drill: Option<String>,
    from: Option<String>,
    to: Option<String>,
    repository: Option<String>,
    #[serde(default)]
    read_data: bool,
}

fn need<'a>(v: &'a Option<String>, field: &str, kind: &str) -> R<&'a str> {
    v.as_deref()
        .ok_or_else(|| ApiError::field(400, field, format!("{field}: a {kind} job needs it")))
}

/// The command line of a job, after checking that what it names exists.
fn job_args(s: &ApiState, r: &JobRequest) -> R<(String, Vec<String>)> {
    let plan = &s.ctx.plan;
    let exists = |ok: bool, field: &str, what: &str, name: &str, all: Vec<String>| -> R<()> {
        if ok {
            Ok(())
        } else {
            Err(
                ApiError::field(404, field, format!("no {what} `{name}` in the plan"))
                    .hint(format!("the plan's {what}s: {}", all.join(", "))),
            )
        }
    };
    let repo_ok = |field: &str, name: &str| {
        exists(
            plan.repositories.contains_key(name),
            field,
            "repository",
            name,
            plan.repositories.keys().cloned().collect(),
        )
    };
    match r.kind.as_str() {
        "backup" => {
            let j = need(&r.job, "job", "backup")?;
            exists(plan.backups.contains_key(j), "job", "backup job", j, plan.backups.keys().cloned().collect())?;
            Ok((j.to_string(), vec!["backup".into(), j.into()]))
        }
        "verify" => {
            let mut a = vec!["verify".to_string()];
            let target = match &r.job {
                Some(j) => {
                    exists(plan.backups.contains_key(j), "job", "backup job", j, plan.backups.keys().cloned().collect())?;
                    a.push(j.clone());
                    j.clone()
                }
                None => "*".into(),
            };
            if r.read_data {
                a.push("--read-data".into());
            }
            Ok((target, a))
        }
        "restore" => {
            let svc = need(&r.service, "service", "restore")?;
            let pg = matches!(plan.services.get(svc), Some(Service::Postgres { .. }));
            if !plan.services.contains_key(svc) {
                return Err(unknown_service(s, svc).field_of("service"));
            }
            if !pg {
                return Err(ApiError::field(400, "service", format!("service: `{svc}` is not a postgres service; a restore into a sandbox proves postgres services")));
            }
            Ok((svc.to_string(), vec!["verify".into(), "--restore".into(), svc.into()]))
        }
        "drill" => {
            let d = need(&r.drill, "drill", "drill")?;
            exists(plan.drills.contains_key(d), "drill", "drill", d, plan.drills.keys().cloned().collect())?;
            Ok((d.to_string(), vec!["drill".into(), "run".into(), d.into(), "--yes".into()]))
        }
        "copy" => {
            let to = need(&r.to, "to", "copy")?;
            repo_ok("to", to)?;
            let mut a = vec!["repo".to_string(), "copy".into()];
            if let Some(f) = &r.from {
                repo_ok("from", f)?;
                a.extend(["--from".into(), f.clone()]);
            }
            a.extend(["--to".into(), to.into()]);
            Ok((format!("{}→{to}", r.from.as_deref().unwrap_or("")), a))
        }
        "check" => {
            let mut a = vec!["repo".to_string(), "check".into()];
            if let Some(rp) = &r.repository {
                repo_ok("repository", rp)?;
                a.extend(["--repo".into(), rp.clone()]);
            }
            if r.read_data {
                a.push("--read-data".into());
            }
            Ok((r.repository.clone().unwrap_or_else(|| "*".into()), a))
        }
        other => Err(ApiError::field(400, "kind", format!("kind: unknown job kind `{other}`: one of backup, verify, restore, drill, copy, check"))),
    }
}

impl ApiError {
    fn field_of(mut self, f: &str) -> ApiError {
        self.field = Some(f.into());
        self
    }
}

fn conflict(j: &Job) -> ApiError {
    ApiError::new(
        409,
        format!(
            "job {} ({}) does the same and is still {}",
            j.id, j.command, j.state
        ),
    )
    .hint(format!(
        "wait for it (`GET /api/v1/jobs/{}`) or cancel it",
        j.id
    ))
}

/// Start a job → 202 with the job; `GET /api/v1/jobs/{id}` follows it. Operator.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobRequest, responses((status = 202, body = Job), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError)))]
async fn start_job(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    JsonBody(r): JsonBody<JobRequest>,
) -> R<(StatusCode, Json<Job>)> {
    require(&c, Role::Operator)?;
    let (target, args) = job_args(&s, &r)?;
    if let Some(j) = s.jobs.conflict(&r.kind, &target, &args) {
        return Err(conflict(&j));
    }
    let line = format!("lifeboat {}", args.join(" "));
    if let Some(v) = schedule_views(&s)
        .into_iter()
        .find(|v| v.running && v.what == line)
    {
        return Err(ApiError::new(
            409,
            format!("the schedule {} is running the same command now", v.id),
        )
        .hint("wait for it to finish (`GET /api/v1/schedules`)"));
    }
    let j = s
        .jobs
        .start_child(&s.ctx, &r.kind, &target, args, &c.name)?;
    Ok((StatusCode::ACCEPTED, Json(j)))
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", responses((status = 200, body = Vec<Job>)))]
async fn jobs(State(s): State<ApiState>) -> Json<Vec<Job>> {
    Json(s.jobs.list())
}

/// One job, with its progress while it runs and its result when it has ended.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = String, Path)), responses((status = 200, body = Job), (status = 404, body = ApiError)))]
async fn job(State(s): State<ApiState>, Path(id): Path<String>) -> R<Json<Job>> {
    s.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job `{id}`")))
}

/// Cancel a running job (it stops as on Ctrl-C, releasing its locks). Operator.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = String, Path)), responses((status = 202, body = Job), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn cancel_job(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R<(StatusCode, Json<Job>)> {
    require(&c, Role::Operator)?;
    if s.jobs.get(&id).is_none() {
        return Err(ApiError::not_found(format!("no job `{id}`")));
    }
    let j = s.jobs.cancel(&id).map_err(|e| ApiError::new(409, e))?;
    record(
        &s,
        &c,
        "job cancel",
        &id,
        serde_json::json!({"job": j.command}),
    );
    Ok((StatusCode::ACCEPTED, Json(j)))
}

// ---- failover and switchover -----------------------------------------------------------

/// A manual failover: the command line's pre-checks, then — with `confirm` naming the
/// service — the failover the daemon performs automatically.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FailoverRequest {
    /// The site to promote (default: the best eligible standby).
    to: Option<String>,
    /// The service's name, typed by the person asking (required unless `dry_run`).
    confirm: Option<String>,
    /// Only the pre-checks and the decision.
    #[serde(default)]
    dry_run: bool,
    /// Fail over although the primary is healthy. Admin.
    #[serde(default)]
    force: bool,
    /// Promote a standby that may lack acknowledged writes. Admin.
    #[serde(default)]
    accept_data_loss: bool,
}

fn watched(s: &ApiState, name: &str) -> R<Watched> {
    if !s.ctx.plan.services.contains_key(name) {
        return Err(unknown_service(s, name));
    }
    Watched::from_plan(&s.ctx, name)?.ok_or_else(|| {
        ApiError::new(
            409,
            format!("`{name}` has no failover: it is not a postgres service with `failover:`"),
        )
    })
}

fn confirmed(confirm: &Option<String>, name: &str) -> R<()> {
    match confirm.as_deref() {
        Some(c) if c == name => Ok(()),
        Some(c) => Err(ApiError::field(
            400,
            "confirm",
            format!("confirm: `{c}` does not name the service `{name}`: nothing done"),
        )),
        None => Err(ApiError::field(
            400,
            "confirm",
            format!("confirm: type the service's name (`{name}`) to confirm"),
        )),
    }
}

/// Fail over: 200 with the pre-checks for `dry_run`, 409 with them when they refuse, else
/// 202 with the job that does it. Operator (`force` and `accept_data_loss`: admin).
#[utoipa::path(post, path = "/api/v1/services/{service}/failover", params(("service" = String, Path)), request_body = FailoverRequest, responses((status = 200, body = Object), (status = 202, body = Job), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn failover(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(r): JsonBody<FailoverRequest>,
) -> R<Response> {
    require(&c, Role::Operator)?;
    if r.force || r.accept_data_loss {
        require(&c, Role::Admin)?;
    }
    let mut w = watched(&s, &name)?;
    if !r.dry_run {
        confirmed(&r.confirm, &name)?;
    }
    if let Some(j) = s.jobs.conflict("failover", &name, &[]) {
        return Err(conflict(&j));
    }
    let counts = check_once(&mut w).await;
    let state = StateFile::new(&s.ctx.state_dir, &name).load()?;
    let o = Overrides {
        force: r.force,
        accept_loss: r.accept_data_loss,
    };
    let plan = plan_failover(&s.ctx, &w, &counts, &state, r.to.as_deref(), o);
    if r.dry_run {
        return Ok(Json(serde_json::to_value(&plan).unwrap_or_default()).into_response());
    }
    let Action::Failover { to, .. } = plan.decision.action.clone() else {
        let mut e = ApiError::new(409, format!("refused: {}", plan.decision.reason));
        e.hint = Some(
            plan.checks
                .iter()
                .filter(|c| c.level != lifeboat_failover::manual::Level::Ok)
                .map(|c| c.what.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )
        .filter(|h| !h.is_empty());
        return Err(e);
    };
    let mut command = format!("lifeboat failover {name} --to {to}");
    if r.force {
        command.push_str(" --force");
    }
    if r.accept_data_loss {
        command.push_str(" --accept-data-loss");
    }
    let control = Control::new(&s.ctx.state_dir);
    let req = Request {
        force: r.force,
        accept_loss: r.accept_data_loss,
        ..Request::new("failover", Some(to.clone()), &c.name)
    };
    let svc = name.clone();
    let j = s
        .jobs
        .start_task("failover", &name, command, &c.name, move || {
            control.submit(&svc, &req)?;
            let answer = control.wait(&svc, &req.id, std::time::Duration::from_secs(180))?;
            if let Some(e) = answer["error"].as_str() {
                let mut err = lifeboat_core::Error::new(lifeboat_core::Kind::Source, e);
                if let Some(h) = answer["hint"].as_str() {
                    err = err.hint(h);
                }
                return Err(err);
            }
            Ok(answer)
        });
    Ok((StatusCode::ACCEPTED, Json(j)).into_response())
}

/// A switchover: the primary hands over to `to` with nothing lost (it aborts, changing
/// nothing, when the target cannot catch up).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SwitchoverRequest {
    /// The standby's site that takes over.
    to: String,
    /// The service's name, typed by the person asking.
    confirm: Option<String>,
    /// How long the target may take to catch up (default 30s).
    catch_up: Option<String>,
}

/// Switch over → 202 with the job that does it. Operator.
#[utoipa::path(post, path = "/api/v1/services/{service}/switchover", params(("service" = String, Path)), request_body = SwitchoverRequest, responses((status = 202, body = Job), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn switchover(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(r): JsonBody<SwitchoverRequest>,
) -> R<(StatusCode, Json<Job>)> {
    require(&c, Role::Operator)?;
    let w = watched(&s, &name)?;
    if !w.members.iter().any(|m| m.site == r.to) {
        return Err(ApiError::field(
            400,
            "to",
            format!(
                "to: `{}` is not a site of {name} (its members: {})",
                r.to,
                w.members
                    .iter()
                    .map(|m| m.site.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    confirmed(&r.confirm, &name)?;
    let catch_up = match &r.catch_up {
        Some(t) => t
            .parse::<lifeboat_core::units::Duration>()
            .map_err(|e| ApiError::field(400, "catch_up", format!("catch_up: {e}")))?
            .std(),
        None => std::time::Duration::from_secs(30),
    };
    if let Some(j) = s.jobs.conflict("switchover", &name, &[]) {
        return Err(conflict(&j));
    }
    let control = Control::new(&s.ctx.state_dir);
    let (svc, to, actor) = (name.clone(), r.to.clone(), c.name.clone());
    let command = format!("lifeboat switchover {name} --to {}", r.to);
    let j = s
        .jobs
        .start_task("switchover", &name, command, &c.name, move || {
            let report = control.switchover(&svc, &to, catch_up, &actor)?;
            Ok(serde_json::to_value(report).unwrap_or_default())
        });
    Ok((StatusCode::ACCEPTED, Json(j)))
}

// ---- incidents -------------------------------------------------------------------------

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> R<T> + Send + 'static) -> R<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, format!("{e}")))?
}

fn incident_of(
    s: &ApiState,
    id: &str,
) -> R<(crate::incident::Incident, Vec<lifeboat_evidence::Event>)> {
    let (all, events) = crate::incident::load(&s.ctx)?;
    let inc = crate::incident::find(&all, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no incident `{id}`")))?;
    Ok((inc, events))
}

/// Every incident, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", responses((status = 200, body = Vec<crate::incident::Incident>)))]
async fn incidents(State(s): State<ApiState>) -> R<Json<Vec<crate::incident::Incident>>> {
    let v = blocking(move || Ok(crate::incident::load(&s.ctx)?.0)).await?;
    Ok(Json(v.into_iter().rev().collect()))
}

/// One incident with its timeline (the evidence events).
#[utoipa::path(get, path = "/api/v1/incidents/{id}", params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = ApiError)))]
async fn incident_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> R<Json<serde_json::Value>> {
    let (inc, events) = blocking(move || incident_of(&s, &id)).await?;
    let timeline: Vec<_> = events
        .iter()
        .filter(|e| inc.events.contains(&e.seq))
        .collect();
    Ok(Json(
        serde_json::json!({"incident": inc, "timeline": timeline}),
    ))
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReportQuery {
    /// `markdown` (default) or `html`.
    format: Option<String>,
}

/// The post-incident report (Markdown or HTML).
#[utoipa::path(get, path = "/api/v1/incidents/{id}/report", params(("id" = String, Path), ReportQuery), responses((status = 200, body = String), (status = 404, body = ApiError)))]
async fn incident_report(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> R<Response> {
    let Query(q) = q.map_err(|e| ApiError::new(400, format!("the query: {}", e.body_text())))?;
    let html = match q.format.as_deref() {
        None | Some("markdown") | Some("md") => false,
        Some("html") => true,
        Some(other) => {
            return Err(ApiError::field(
                400,
                "format",
                format!("format: `{other}` is not markdown or html"),
            ))
        }
    };
    let plan = s.ctx.plan.clone();
    let (inc, events) = blocking(move || incident_of(&s, &id)).await?;
    let md = crate::incident::report(&plan, &inc, &events);
    Ok(if html {
        (
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    axum::http::header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            crate::incident::report_html(&md),
        )
            .into_response()
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/markdown; charset=utf-8",
            )],
            md,
        )
            .into_response()
    })
}

/// An operator's act on an incident, recorded under the token's name.
async fn incident_act(
    s: ApiState,
    c: Caller,
    id: String,
    command: &'static str,
    note: Option<String>,
) -> R<Json<crate::incident::Incident>> {
    require(&c, Role::Operator)?;
    let inc = blocking(move || {
        incident_of(&s, &id)?;
        Ok(crate::incident::act(
            &s.ctx,
            &c.name,
            &id,
            command,
            note.as_deref(),
        )?)
    })
    .await?;
    Ok(Json(inc))
}

/// Acknowledge an incident: its escalation stops. Operator.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/ack", params(("id" = String, Path)), responses((status = 200, body = crate::incident::Incident), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn incident_ack(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> R<Json<crate::incident::Incident>> {
    incident_act(s, c, id, "incident ack", None).await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    /// What ended it, in a sentence.
    note: Option<String>,
}

/// Resolve an incident after the review. Operator.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", params(("id" = String, Path)), request_body = ResolveRequest, responses((status = 200, body = crate::incident::Incident), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn incident_resolve(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ResolveRequest>,
) -> R<Json<crate::incident::Incident>> {
    incident_act(s, c, id, "incident resolve", b.note).await
}
