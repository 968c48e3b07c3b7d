//! HTTP health endpoints for external load balancers, one listener per member, as
//! Patroni's REST API serves them for HAProxy:
//! - `/primary` (also `/leader`, `/master`, `/read-write`): 200 only on the member Lifeboat
//!   routes writes to, while it passes its checks;
//! - `/replica` (also `/standby`): 200 only on a healthy standby streaming from the primary,
//!   optionally within `?lag=SIZE` (`?lag=1MiB`);
//! - `/read-only`: 200 on either of those;
//! - `/health`: 200 on any member that passes its checks.
//!
//! Otherwise 503, with the same JSON body (the member's state); 404 for unknown paths. Any
//! method is answered like GET (HAProxy's `option httpchk` sends OPTIONS); HEAD gets no body.
//! The daemon serves them (`lifeboat_server::http`); this module decides the answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lifeboat_core::decide::Role;
use serde::Serialize;

/// What the daemon knows about one member, as the endpoints report it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberHealth {
    pub site: String,
    /// Passes its checks (last check ok).
    pub healthy: bool,
    pub role: Option<Role>,
    /// The member Lifeboat routes writes to (and it is healthy and primary).
    pub routed_primary: bool,
    /// Standby streaming from the primary (as the standby reports it).
    pub streaming: Option<bool>,
    /// Standby: bytes behind the primary's last known position.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// The timeline it is on, as its last check saw it.
    pub timeline: Option<u32>,
    pub epoch: u64,
    /// Why it failed its last check.
    pub failure: Option<String>,
}

pub type Shared = Arc<Mutex<BTreeMap<String, MemberHealth>>>;

/// The status code for `path` (with query) given a member's state.
pub fn status_for(path: &str, m: &MemberHealth) -> u16 {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let ok = match route.trim_end_matches('/') {
        "/primary" | "/leader" | "/master" | "/read-write" => {
            m.healthy && m.routed_primary && m.role == Some(Role::Primary)
        }
        "/replica" | "/standby" => {
            let max_lag = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("lag="))
                // A bare number is bytes, as in Patroni's `?lag=` (load balancer configs use it).
                .and_then(|v| {
                    v.parse::<u64>()
                        .ok()
                        .or_else(|| v.parse::<lifeboat_core::units::Size>().ok().map(|s| s.0))
                });
            m.healthy
                && m.role == Some(Role::Standby)
                && m.streaming == Some(true)
                && match max_lag {
                    Some(max) => m.lag_bytes.is_some_and(|l| l <= max),
                    None => true,
                }
        }
        "/read-only" => {
            m.healthy
                && (m.routed_primary && m.role == Some(Role::Primary)
                    || m.role == Some(Role::Standby) && m.streaming == Some(true))
        }
        "/health" | "/" => m.healthy,
        _ => return 404,
    };
    if ok {
        200
    } else {
        503
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: Role, routed: bool, streaming: Option<bool>, lag: Option<u64>) -> MemberHealth {
        MemberHealth {
            site: "a".into(),
            healthy: true,
            role: Some(role),
            routed_primary: routed,
            streaming,
            lag_bytes: lag,
            ..Default::default()
        }
    }

    #[test]
    fn primary_only_on_the_routed_healthy_primary() {
        assert_eq!(
            status_for("/primary", &member(Role::Primary, true, None, None)),
            200
        );
        // A writable member Lifeboat does not route to (an old primary back) is no primary.
        assert_eq!(
            status_for("/primary", &member(Role::Primary, false, None, None)),
            503
        );
        assert_eq!(
            status_for("/primary", &member(Role::Standby, false, Some(true), None)),
            503
        );
        let mut down = member(Role::Primary, true, None, None);
        down.healthy = false;
        assert_eq!(status_for("/primary", &down), 503);
        assert_eq!(status_for("/health", &down), 503);
        assert_eq!(status_for("/nope", &down), 404);
    }

    #[test]
    fn replica_needs_streaming_and_honours_lag() {
        let s = member(Role::Standby, false, Some(true), Some(4096));
        assert_eq!(status_for("/replica", &s), 200);
        assert_eq!(status_for("/replica?lag=1MiB", &s), 200);
        assert_eq!(status_for("/replica?lag=1024", &s), 503);
        assert_eq!(status_for("/read-only", &s), 200);
        let stuck = member(Role::Standby, false, Some(false), Some(0));
        assert_eq!(status_for("/replica", &stuck), 503);
        assert_eq!(status_for("/health", &stuck), 200);
        assert_eq!(
            status_for("/replica", &member(Role::Primary, true, None, None)),
            503
        );
    }
}
