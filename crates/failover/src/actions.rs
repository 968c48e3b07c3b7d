//! The built-in runbook actions that act on PostgreSQL members and on traffic — `fence`,
//! `promote`, `switch-traffic`, `wait-healthy`, `rejoin`, `switchover`, `restore` — for the
//! runbook executor (`lifeboat-runbook`), which reaches them only through its `Actions` trait.

use std::time::Duration;

use lifeboat_context::Context;
use lifeboat_core::plan::{RunbookStep, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_pg::ops::Session;
use lifeboat_runbook::{ActionFuture, Actions};

use crate::coord::StateFile;
use crate::world::Watched;

/// The failover room's built-in actions.
pub struct Builtins;

impl Actions for Builtins {
    fn perform<'a>(&'a self, ctx: &'a Context, st: &'a RunbookStep) -> ActionFuture<'a> {
        Box::pin(perform(ctx, st))
    }
}

async fn perform(ctx: &Context, st: &RunbookStep) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    match st.action.as_deref().unwrap_or("") {
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
            let s = state.route_to(&m.site).map_err(e)?;
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
                let checks: Vec<_> = match &st.site {
                    Some(s) => health.get(s).into_iter().collect(),
                    None => health.values().collect(),
                };
                let mut any = false;
                for c in checks {
                    any |= lifeboat_pg::health::extra_checks(
                        &[c.spec().check()],
                        Duration::from_secs(2),
                    )
                    .await
                    .is_ok();
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
