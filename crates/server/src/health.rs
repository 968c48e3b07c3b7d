//! Each member's health endpoints (`/primary`, `/replica`, `/read-only`, `/health`) for load
//! balancers, answered from what the monitor saw last (`lifeboat_failover::healthapi`).

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;

use lifeboat_failover::healthapi::{status_for, MemberHealth, Shared};

#[derive(Clone)]
struct Member {
    site: String,
    shared: Shared,
}

/// The router of one member's endpoints. Every method is answered like GET (HAProxy's
/// `option httpchk` sends OPTIONS); HEAD gets the headers only.
pub fn router(site: String, shared: Shared) -> Router {
    Router::new()
        .fallback(answer)
        .with_state(Member { site, shared })
}

async fn answer(State(m): State<Member>, uri: Uri) -> impl IntoResponse {
    let member = m
        .shared
        .lock()
        .ok()
        .and_then(|s| s.get(&m.site).cloned())
        .unwrap_or_else(|| MemberHealth {
            site: m.site.clone(),
            ..Default::default()
        });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let code =
        StatusCode::from_u16(status_for(&path, &member)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        code,
        // One check per connection, as load balancers' checks are made (and as before).
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONNECTION, "close"),
        ],
        serde_json::to_string(&member).unwrap_or_default(),
    )
}
