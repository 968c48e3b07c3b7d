//! The daemon's HTTP API under `/api/v1/`: what the on-call engineer reads (status, services
//! and their members, history, recoverable window, snapshots, schedules, jobs, the evidence
//! log) and the safe ways to act (jobs, pausing schedules, failover and switchover with the
//! command line's pre-checks and a typed confirmation). Every `/api` route needs a bearer
//! token; `viewer` tokens read, `operator` tokens act, `admin` tokens may also override a
//! failover's safety (`force`, `accept_data_loss`). The token's name is the actor in the
//! evidence log. The OpenAPI 3.1 document is generated from this code
//! (`/api/v1/openapi.json`).
//!
//! Errors are JSON `{error, hint, field}`: 400 naming the field, 401 without a valid token
//! (saying nothing about what exists), 403 for a role too weak, 404, 409 for a conflicting
//! job or a refused action, 413 for a body over the limit, 408 for a request slower than the
//! timeout.

pub mod auth;
pub mod jobs;
mod routes;

pub use routes::document;

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use lifeboat_context::Context;
use lifeboat_core::plan::ApiSpec;
use lifeboat_failover::healthapi::Shared;

pub use auth::{Caller, Role, Tokens};

/// The evidence log's events and the head they were read at.
pub type EventCache = Arc<std::sync::Mutex<Option<(String, Arc<Vec<lifeboat_evidence::Event>>)>>>;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub ctx: Context,
    /// The failover monitors' latest view of each service's members.
    pub members: Vec<(String, Shared)>,
    /// The metrics text `metrics::refresh` keeps (also the source of the ages shown).
    pub metrics: Arc<RwLock<String>>,
    pub tokens: Arc<Tokens>,
    pub jobs: jobs::Jobs,
    pub started: jiff::Timestamp,
    pub max_body: usize,
    /// The evidence log as last read, with the head it was read at: read again only when
    /// the head moves, so a status under load does not read the whole log each time.
    pub events: EventCache,
}

impl ApiState {
    /// The evidence log's events, oldest first (cached until the log's head moves).
    pub fn events(&self) -> Result<Arc<Vec<lifeboat_evidence::Event>>, ApiError> {
        let head =
            std::fs::read_to_string(self.ctx.state_dir.join("evidence.head")).unwrap_or_default();
        if let Ok(c) = self.events.lock() {
            if let Some((h, ev)) = c.as_ref() {
                if *h == head && !head.is_empty() {
                    return Ok(ev.clone());
                }
            }
        }
        let ev = self
            .ctx
            .evidence()
            .and_then(|e| e.list(None))
            .map_err(|e| ApiError::new(500, format!("the evidence log: {e}")))?;
        let ev = Arc::new(ev);
        // Kept only when the head did not move while the log was read (else the next read
        // tries again).
        let after =
            std::fs::read_to_string(self.ctx.state_dir.join("evidence.head")).unwrap_or_default();
        if after == head {
            if let Ok(mut c) = self.events.lock() {
                *c = Some((head, ev.clone()));
            }
        }
        Ok(ev)
    }
}

/// An error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The request field at fault (400).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            hint: None,
            field: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> ApiError {
        self.hint = Some(h.into());
        self
    }
    pub fn field(status: u16, field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(status, error)
        }
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "a valid bearer token is required")
            .hint("send `Authorization: Bearer TOKEN` with a token the plan's `api.tokens` knows")
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(404, what)
    }
}

impl From<lifeboat_core::Error> for ApiError {
    fn from(e: lifeboat_core::Error) -> ApiError {
        use lifeboat_core::Kind;
        let status = match e.kind {
            Kind::Input => 400,
            Kind::Locked | Kind::Conflict => 409,
            Kind::Backend | Kind::Source => 502,
            _ => 500,
        };
        ApiError {
            status,
            error: e.message.clone(),
            hint: e.hint.clone(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (code, axum::Json(&self)).into_response();
        if self.status == 401 {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
        }
        r
    }
}

/// A JSON body, parsed strictly: an unknown field or a wrong type is a 400 naming the field;
/// a body over the limit a 413. An empty body is `{}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(413, "the request body is larger than the API accepts")
                        .hint("requests are small JSON documents; the limit is `api.max_body`")
                } else {
                    ApiError::new(
                        400,
                        format!("the request body could not be read: {}", r.body_text()),
                    )
                }
            })?;
        let text: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            b"{}"
        } else {
            &bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let field = if path == "." { String::new() } else { path };
                if inner.is_syntax() || inner.is_eof() {
                    ApiError::new(400, format!("the request body is not valid JSON: {inner}"))
                } else if field.is_empty() {
                    ApiError::new(400, format!("the request body: {inner}"))
                } else {
                    ApiError::field(400, &field, format!("{field}: {inner}"))
                }
            })
    }
}

/// The caller a request's bearer token names.
fn caller_of(s: &ApiState, req: &axum::http::HeaderMap) -> Option<Caller> {
    let v = req.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    s.tokens.check(token)
}

/// Every `/api` request: a known token or 401 (nothing else said).
async fn require_token(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    match caller_of(&s, req.headers()) {
        Some(c) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The caller's role must be at least `need`.
pub fn require(c: &Caller, need: Role) -> Result<(), ApiError> {
    if c.role >= need {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            format!(
                "token `{}` has the role {}; this needs {}",
                c.name,
                c.role.name(),
                need.name()
            ),
        )
        .hint("ask for a token with that role (the plan's `api.tokens`)"))
    }
}

/// Unknown paths: under `/api` only for a valid token (a caller without one learns nothing
/// about what exists), elsewhere plain 404.
async fn fallback(State(s): State<ApiState>, req: Request) -> Response {
    if req.uri().path().starts_with("/api") && caller_of(&s, req.headers()).is_none() {
        return ApiError::unauthorized().into_response();
    }
    ApiError::not_found(format!("no endpoint {} {}", req.method(), req.uri().path()))
        .hint("the endpoints are listed in /api/v1/openapi.json")
        .into_response()
}

/// The whole application on the API's address.
pub fn router(spec: &ApiSpec, state: ApiState) -> Router {
    use axum::routing::get;
    let open: BTreeSet<String> = spec
        .open
        .clone()
        .unwrap_or_else(|| {
            lifeboat_core::plan::API_OPEN
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
        .into_iter()
        .collect();
    let auth = axum::middleware::from_fn_with_state(state.clone(), require_token);
    let api = routes::routes().layer(auth.clone());
    let mut plain = Router::new();
    let mut guarded = Router::new();
    for (name, r) in [
        ("health", get(routes::health)),
        ("livez", get(routes::livez)),
        ("readyz", get(routes::readyz)),
        ("metrics", get(routes::metrics)),
    ] {
        let path = format!("/{name}");
        if open.contains(name) {
            plain = plain.route(&path, r);
        } else {
            guarded = guarded.route(&path, r);
        }
    }
    let timeout = spec
        .request_timeout
        .map(|d| d.std())
        .unwrap_or(Duration::from_secs(10));
    let app = Router::new()
        .merge(crate::ui::router())
        .merge(api)
        .merge(plain)
        .merge(guarded.layer(auth))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state);
    crate::http::with_timeout(app, timeout)
}
