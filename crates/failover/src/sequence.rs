//! The failover sequence, shared by the monitor and manual failover: record the intent, cut
//! traffic, fence the old primary, promote, check a write, route, close the record — each step
//! timed. A daemon killed at any point resumes it from the recorded intent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lifeboat_core::{Error, Kind};
use tokio::sync::watch;

use crate::coord::{FailoverState, StateFile};
use crate::log::log;
use crate::traffic::Route;
use crate::world::{Counts, Watched};
use lifeboat_context::failpoint;
use lifeboat_pg::ops::Session;

#[allow(clippy::too_many_arguments)]
pub async fn failover(
    w: &Watched,
    state: &StateFile,
    route_tx: &watch::Sender<Route>,
    st: &mut FailoverState,
    from: Option<String>,
    to: &str,
    epoch: u64,
    counts: &BTreeMap<String, Counts>,
) -> Result<Vec<lifeboat_runbook::BuiltinStep>, Error> {
    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut step = |action: &str, detail: String, t: &mut Instant| {
        steps.push(lifeboat_runbook::BuiltinStep {
            action: action.into(),
            ms: t.elapsed().as_millis() as u64,
            detail,
        });
        *t = Instant::now();
    };
    // 1. Intent first: a restart resumes this exact failover.
    *st = state.begin_failover(to, epoch)?;
    failpoint::hit("failover-after-intent");
    // 2. Cut traffic: no connection goes anywhere until the new primary takes writes.
    let _ = route_tx.send(Route {
        epoch,
        target: None,
    });
    // 3. Stop the old primary if it still answers and lives here.
    if let Some(f) = &from {
        if counts
            .get(f)
            .and_then(|c| c.last.as_ref())
            .is_some_and(|p| p.answered)
        {
            // The endpoint no longer routes to it whatever happens here; a stop that fails is
            // said, not hidden (it may still take writes from clients that bypass Lifeboat).
            match fence(w, f).await {
                Ok(()) => step("fence", format!("{f} stopped"), &mut t),
                Err(e) => {
                    log(
                        "fence_failed",
                        &w.service,
                        serde_json::json!({"site": f, "error": e.to_string(), "hint": e.hint}),
                    );
                    step(
                        "fence",
                        format!("{f} refused by the endpoint only; stopping it failed: {e}"),
                        &mut t,
                    );
                }
            }
        } else {
            step(
                "fence",
                format!("{f} does not answer: refused by the endpoint from epoch {epoch} on"),
                &mut t,
            );
        }
    }
    // 4. Promote (a no-op if it already is the primary: a resumed failover).
    let target = w
        .members
        .iter()
        .find(|m| m.site == to)
        .ok_or_else(|| Error::new(Kind::Input, format!("no member {to}")))?
        .clone();
    let session = Session::connect(&target, Duration::from_secs(5)).await?;
    let mut promoted = format!("{to} already promoted");
    if session.in_recovery().await? {
        promoted = format!("{to} promoted (pg_promote)");
        if let Some(was) = session.promote().await? {
            log(
                "sync_standbys_cleared",
                &w.service,
                serde_json::json!({"member": to, "was": was,
                    "note": "no standby follows the new primary yet: commits are not synchronously replicated until one rejoins"}),
            );
        }
    }
    failpoint::hit("failover-after-promote");
    // 5. It takes writes.
    session.check_write().await?;
    drop(session);
    step("promote", format!("{promoted}; it accepts a write"), &mut t);
    // 6. Route, and close the record.
    *st = state.complete(to, epoch)?;
    let _ = route_tx.send(Route {
        epoch,
        target: Some(format!("{}:{}", target.host, target.port)),
    });
    step(
        "switch-traffic",
        format!(
            "the endpoint routes to {to} ({}:{}), epoch {epoch}",
            target.host, target.port
        ),
        &mut t,
    );
    Ok(steps)
}

/// Stop a member that must not take writes, when its data directory is on this host.
pub async fn fence(w: &Watched, site: &str) -> Result<(), Error> {
    let Some(m) = w.members.iter().find(|m| m.site == site) else {
        return Ok(());
    };
    if m.data_dir.is_none() {
        return Err(Error::new(
            Kind::Input,
            format!("{site} has no data_dir on this host: it is refused by the endpoint only"),
        ));
    }
    lifeboat_pg::ops::stop_fast(&w.bin_dir, m, 10).await
}
