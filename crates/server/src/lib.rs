//! `lifeboat serve`: the daemon as a composition of workers under one shutdown signal
//! (SIGTERM/SIGINT) — per postgres service with `failover:` a monitor, its traffic endpoint, its
//! health endpoints and its DNS name; per http service a monitor that points its DNS name at
//! a healthy site (following its database's primary when it `follows` one); per bucket
//! service its replication; the scheduler (`schedule`) for every schedule in the
//! plan; the WAL handoff socket (`wal push` hands its segments to the daemon) when the plan
//! archives WAL; notifications in the background. Stopping lets a failover under way finish (bounded),
//! then stops the endpoints and drains notifications.

pub mod api;
pub mod health;
pub mod http;
pub mod incident;
pub mod metrics;
pub mod schedule;
pub mod ui;

use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_core::plan::Service;
use lifeboat_core::{Error, Kind};
use tokio::sync::watch;

use lifeboat_context::Context;
use lifeboat_failover::coord::StateFile;
use lifeboat_failover::daemon::monitor;
use lifeboat_failover::healthapi::Shared;
use lifeboat_failover::log::log;
use lifeboat_failover::traffic::{proxy, Route};
use lifeboat_failover::world::Watched;

/// The services `serve` protects.
fn watched(ctx: &Context) -> Result<Vec<Watched>, Error> {
    let mut out = Vec::new();
    for (name, svc) in &ctx.plan.services {
        if let Service::Postgres {
            failover: Some(_), ..
        } = svc
        {
            out.extend(Watched::from_plan(ctx, name)?);
        }
    }
    if out.is_empty()
        && apps(ctx).is_empty()
        && lifeboat_protect::bucket::replicated_services(ctx).is_empty()
        && schedule::entries(&ctx.plan).is_empty()
        && ctx.plan.metrics.is_none()
        && ctx.plan.api.is_none()
        && lifeboat_protect::walsock::archiving_services(ctx).is_empty()
    {
        return Err(Error::new(
            Kind::Input,
            "the plan has no schedule and no postgres service with `failover:`: the daemon would have nothing to do",
        )
        .hint("give a backup job a `schedule` (or add `schedules:`), or add `failover: { listen: 127.0.0.1:6432 }` to a postgres service with members in two sites"));
    }
    Ok(out)
}

/// The application tiers `serve` routes.
fn apps(ctx: &Context) -> Vec<lifeboat_failover::app::AppTier> {
    ctx.plan
        .services
        .keys()
        .filter_map(|name| lifeboat_failover::app::AppTier::from_plan(ctx, name))
        .collect()
}

/// The answer slot of one DNS name: on the responder for its listen address, which is started
/// the first time a service names that address (services may share one).
async fn dns_name(
    dns: &mut BTreeMap<String, lifeboat_failover::dns::Names>,
    servers: &mut Vec<tokio::task::JoinHandle<()>>,
    d: &lifeboat_core::plan::DnsSpec,
    service: &str,
    stop_rx: &watch::Receiver<bool>,
) -> Result<lifeboat_failover::dns::Names, Error> {
    if !dns.contains_key(&d.listen) {
        let sock = lifeboat_failover::dns::bind(&d.listen).await.map_err(|e| {
            Error::new(
                Kind::Io,
                format!("service {service}: cannot answer DNS on {}: {e}", d.listen),
            )
        })?;
        let names = lifeboat_failover::dns::Names::default();
        servers.push(tokio::spawn(lifeboat_failover::dns::serve(
            sock,
            names.clone(),
            stop_rx.clone(),
        )));
        log(
            "listening",
            service,
            serde_json::json!({"address": d.listen, "endpoint": "dns", "name": d.name}),
        );
        dns.insert(d.listen.clone(), names);
    }
    let names = dns[&d.listen].clone();
    if let Ok(mut n) = names.lock() {
        n.push(lifeboat_failover::dns::Answer {
            name: d.key(),
            ttl: d.ttl.map(|t| t.std().as_secs() as u32).unwrap_or(5),
            target: None,
        });
    }
    Ok(names)
}

/// Run until SIGTERM/SIGINT.
pub fn serve(ctx: &Context) -> Result<(), Error> {
    let services = watched(ctx)?;
    let apps = apps(ctx);
    // Tokens are read before anything listens: a token that cannot be read stops the start.
    let tokens = match &ctx.plan.api {
        Some(a) => Some(std::sync::Arc::new(api::Tokens::load(a)?)),
        None => None,
    };
    // So are the TLS files.
    let tls = match ctx.plan.api.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(t) => Some(http::tls_acceptor(t, &ctx.base)?),
        None => None,
    };
    let _lock = lifeboat_failover::control::Control::new(&ctx.state_dir).hold()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Before the runtime creates its threads, so they inherit the blocked mask.
    lifeboat_context::signals::on_termination(move || {
        let _ = stop_tx.send(true);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(Kind::Internal, format!("runtime: {e}")))?;
    rt.block_on(async {
        let (notifier, notify_worker) = lifeboat_context::notify::Notifier::start(ctx);
        let mut servers = Vec::new();
        let mut monitors = Vec::new();
        let mut members: Vec<(String, Shared)> = Vec::new();
        // One DNS responder per listen address, shared by the services that name it.
        let mut dns: BTreeMap<String, lifeboat_failover::dns::Names> = BTreeMap::new();
        for w in services {
            let state = StateFile::new(&ctx.state_dir, &w.service);
            let st = state.load()?;
            let (route_tx, route_rx) = watch::channel(Route {
                epoch: st.epoch,
                target: None,
            });
            if let Some(listen) = &w.spec.listen {
                let l = bind(&format!("service {}", w.service), listen).await?;
                log(
                    "listening",
                    &w.service,
                    serde_json::json!({"address": listen, "endpoint": "traffic"}),
                );
                servers.push(tokio::spawn(proxy(l, route_rx, stop_rx.clone())));
            }
            let shared = Shared::default();
            for (site, listen) in &w.spec.health_listen {
                let l = bind(&format!("service {}", w.service), listen).await?;
                log(
                    "listening",
                    &w.service,
                    serde_json::json!({"address": listen, "endpoint": "health", "member": site}),
                );
                servers.push(tokio::spawn(http::serve(
                    l,
                    http::with_timeout(
                        health::router(site.clone(), shared.clone()),
                        Duration::from_secs(5),
                    ),
                    stop_rx.clone(),
                )));
            }
            let names = match &w.spec.dns {
                Some(d) => Some(dns_name(&mut dns, &mut servers, d, &w.service, &stop_rx).await?),
                None => None,
            };
            members.push((w.service.clone(), shared.clone()));
            monitors.push(tokio::spawn(monitor(
                w,
                state,
                route_tx,
                shared,
                stop_rx.clone(),
                ctx.clone(),
                notifier.clone(),
                names,
            )));
        }
        // Application tiers, after the databases they may follow.
        for app in apps {
            let names = match &app.dns {
                Some(d) => Some(dns_name(&mut dns, &mut servers, d, &app.service, &stop_rx).await?),
                None => None,
            };
            let db = app.follows.as_ref().and_then(|f| {
                members
                    .iter()
                    .find(|(s, _)| s == f)
                    .map(|(_, shared)| shared.clone())
            });
            log(
                "watching",
                &app.service,
                serde_json::json!({"sites": app.order(), "follows": app.follows, "name": app.dns.as_ref().map(|d| &d.name)}),
            );
            monitors.push(tokio::spawn(lifeboat_failover::app::monitor(
                app,
                db,
                stop_rx.clone(),
                ctx.clone(),
                notifier.clone(),
                names,
            )));
        }
        let text = std::sync::Arc::new(std::sync::RwLock::new(String::new()));
        if ctx.plan.metrics.is_some() || ctx.plan.api.is_some() {
            servers.push(tokio::spawn(metrics::refresh(
                ctx.clone(),
                members.clone(),
                text.clone(),
                Duration::from_secs(2),
                stop_rx.clone(),
            )));
        }
        if let Some(m) = &ctx.plan.metrics {
            let l = bind("metrics", &m.listen).await?;
            log(
                "listening",
                "*",
                serde_json::json!({"address": m.listen, "endpoint": "metrics", "url": format!("http://{}/metrics", m.listen)}),
            );
            servers.push(tokio::spawn(http::serve(
                l,
                http::with_timeout(metrics::router(text.clone()), Duration::from_secs(10)),
                stop_rx.clone(),
            )));
        }
        if let (Some(a), Some(tokens)) = (&ctx.plan.api, tokens) {
            let l = bind("api", &a.listen).await?;
            log(
                "listening",
                "*",
                serde_json::json!({"address": a.listen, "endpoint": "api", "url": format!("{}://{}/api/v1/", if tls.is_some() { "https" } else { "http" }, a.listen), "tokens": a.tokens.len(), "client_certificates": a.tls.as_ref().is_some_and(|t| t.client_ca.is_some())}),
            );
            let state = api::ApiState {
                ctx: ctx.clone(),
                members: members.clone(),
                metrics: text.clone(),
                tokens,
                jobs: api::jobs::Jobs::open(&ctx.state_dir),
                started: jiff::Timestamp::now(),
                max_body: a.max_body.map(|s| s.0 as usize).unwrap_or(64 * 1024),
                events: Default::default(),
            };
            servers.push(tokio::spawn(http::serve_with(
                l,
                api::router(a, state),
                tls,
                stop_rx.clone(),
            )));
        }
        let archiving = lifeboat_protect::walsock::archiving_services(ctx);
        // The handoff is a fast path only: a socket that cannot be made is logged and the
        // daemon runs without it (failover and schedules matter more; `wal push` archives in
        // its own process meanwhile).
        match (!archiving.is_empty()).then(|| lifeboat_protect::walsock::bind(ctx)) {
            Some(Ok(l)) => {
                log(
                    "listening",
                    "*",
                    serde_json::json!({"endpoint": "wal handoff", "socket": lifeboat_protect::walsock::SOCKET, "services": archiving}),
                );
                servers.push(tokio::spawn(lifeboat_protect::walsock::serve(
                    ctx.clone(),
                    l,
                    stop_rx.clone(),
                    log,
                )));
            }
            Some(Err(e)) => log(
                "wal handoff",
                "*",
                serde_json::json!({"action": "not serving", "reason": e.message, "hint": e.hint}),
            ),
            None => {}
        }
        for r in lifeboat_protect::bucket::replicated_services(ctx) {
            log(
                "watching",
                &r.service,
                serde_json::json!({"source": r.source.url.split('?').next(), "replica": r.replica.url.split('?').next(), "deletes": r.deletes, "interval_s": r.interval.as_secs_f64()}),
            );
            servers.push(tokio::spawn(lifeboat_protect::bucket::run(
                ctx.clone(),
                r,
                stop_rx.clone(),
                notifier.clone(),
                log,
            )));
        }
        for (service, ws) in lifeboat_protect::walstream::streaming_services(ctx) {
            servers.push(tokio::spawn(lifeboat_protect::walstream::run(
                ctx.clone(),
                service,
                ws,
                stop_rx.clone(),
                log,
            )));
        }
        let scheduler = tokio::spawn(schedule::run(ctx.clone(), stop_rx.clone()));
        servers.push(tokio::spawn(incident::run(
            ctx.clone(),
            notifier.clone(),
            stop_rx.clone(),
        )));
        let mut stop_rx = stop_rx;
        while !*stop_rx.borrow() {
            if stop_rx.changed().await.is_err() {
                break;
            }
        }
        // Monitors stop between ticks, so a failover under way finishes first (bounded: a
        // failover that hangs is resumed from its recorded intent at the next start).
        for m in monitors {
            let abort = m.abort_handle();
            if tokio::time::timeout(Duration::from_secs(60), m)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in servers {
            t.abort();
        }
        // The scheduler stops between ticks and stops its runs (each gets SIGTERM and 10 s).
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(15), scheduler).await {
            log(
                "schedule",
                "*",
                serde_json::json!({"action": "error", "reason": e.to_string()}),
            );
        }
        // Notifications under way get a few seconds to finish.
        notifier.drain(notify_worker, Duration::from_secs(10)).await;
        Ok::<(), Error>(())
    })?;
    log("stopped", "*", serde_json::json!({}));
    Ok(())
}

async fn bind(what: &str, listen: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            Kind::Io,
            format!("{what}: cannot listen on {listen}: {e}"),
        )
        .hint("another process (or another lifeboat serve) holds the address; stop it or change the plan")
    })
}
