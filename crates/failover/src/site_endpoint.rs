//! A site's traffic endpoint when agents coordinate through etcd (`failover.site_listen`): the
//! same TCP proxy as `lifeboat serve`'s ([`crate::traffic`]), its route read from etcd instead
//! of decided here.
//!
//! - It routes only to the member that holds the service's leader key *and* has published
//!   the route under that key's token (its agent does so once its server takes writes), read
//!   together in one linearizable transaction.
//! - The token only grows: a route with a token below the largest this endpoint has routed to
//!   is refused (an agent, an etcd member or a read that is behind cannot send traffic back
//!   to an older leader).
//! - A route change (another token, another member, none) drops every connection made under
//!   the old one.
//! - It cannot read etcd: it keeps the route it has only until the instant the leader it
//!   routes to must itself have stopped had it lost etcd too (the read's *send* time plus the
//!   lease TTL minus the margin, on a monotonic clock), then drops every connection and
//!   refuses new ones until it reads etcd again — unless the plan has fail-safe mode
//!   (`coordinator.failsafe`): then it asks the leader's agent whether it still leads under
//!   the route's token and for how long, and keeps the route that long from when it asked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lifeboat_context::Context;
use lifeboat_core::plan::{CoordinatorSpec, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_etcd::Coordinator;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::log::log;
use crate::traffic::{proxy, Route};

/// How often an endpoint reads the route.
const POLL: Duration = Duration::from_millis(100);
/// The longest one read may take.
const READ: Duration = Duration::from_millis(500);

/// One service's endpoint at one site, before it listens.
pub struct SiteEndpoint {
    service: String,
    site: String,
    listen: String,
    key: String,
    /// `site → host:port` of every member.
    members: BTreeMap<String, String>,
    spec: CoordinatorSpec,
    failsafe: Option<crate::failsafe::Failsafe>,
}

/// The endpoints the plan puts at `site` (every postgres service with a `site_listen` entry
/// there, or only `only`).
pub fn at_site(ctx: &Context, site: &str, only: Option<&str>) -> Result<Vec<SiteEndpoint>, Error> {
    let Some(spec) = ctx.plan.coordinator.clone() else {
        return Err(Error::new(
            Kind::Input,
            "the plan has no `coordinator:`: these endpoints follow the leader key in etcd",
        )
        .hint("add `coordinator: { etcd: [host:port, …] }`, or use `failover.listen` with `lifeboat serve`"));
    };
    let failsafe = match &spec.failsafe {
        Some(f) => Some(crate::failsafe::Failsafe::load(f, &ctx.base)?),
        None => None,
    };
    let mut out = Vec::new();
    for (name, svc) in &ctx.plan.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Service::Postgres {
            failover: Some(f), ..
        } = svc
        else {
            continue;
        };
        let Some(listen) = f.site_listen.get(site) else {
            continue;
        };
        let pg = lifeboat_pg::PgService::from_plan(name, svc, &ctx.base)?;
        let mut members = BTreeMap::new();
        for s in pg.members.keys() {
            let m = pg.member(s)?;
            members.insert(s.clone(), format!("{}:{}", m.host, m.port));
        }
        out.push(SiteEndpoint {
            service: name.clone(),
            site: site.to_string(),
            listen: listen.clone(),
            key: Coordinator::leader_key(&ctx.plan.name, name),
            members,
            spec: spec.clone(),
            failsafe: failsafe.clone(),
        });
    }
    Ok(out)
}

/// What the endpoint does with one read of etcd.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// Route to this member (`site`, token).
    To(String, i64),
    /// Nobody may take traffic now (no leader, or it does not take writes yet).
    Nobody,
    /// Could not read.
    Failed,
}

/// The route the endpoint keeps, as reads come in.
#[derive(Debug)]
struct Follower {
    /// The largest token routed to so far.
    max_token: i64,
    current: Route,
    /// Until when the current route holds without a fresh read.
    valid_until: Option<Instant>,
    hold: Duration,
}

impl Follower {
    fn new(hold: Duration) -> Follower {
        Follower {
            max_token: 0,
            current: Route {
                epoch: 0,
                target: None,
            },
            valid_until: None,
            hold,
        }
    }

    /// The route after a read sent at `sent` (with `addr` resolving a member to its address),
    /// and whether that read was refused as older than a route already taken.
    fn apply(
        &mut self,
        read: Read,
        sent: Instant,
        now: Instant,
        addr: impl Fn(&str) -> Option<String>,
    ) -> (Route, bool) {
        let mut refused = false;
        match read {
            Read::To(_, token) if token < self.max_token => refused = true,
            Read::To(site, token) => {
                self.max_token = token;
                self.current = Route {
                    epoch: token as u64,
                    target: addr(&site),
                };
                self.valid_until = Some(sent + self.hold);
            }
            Read::Nobody => {
                self.current.target = None;
                self.valid_until = Some(sent + self.hold);
            }
            Read::Failed => {}
        }
        if self.valid_until.is_none_or(|v| now >= v) {
            self.current.target = None;
        }
        (self.current.clone(), refused)
    }

    /// Fail-safe: the leader of the current route confirmed it stays writable until `until`
    /// (measured from when it was asked). The route holds until then, never back once dropped.
    fn extend(&mut self, until: Instant) {
        if self.current.target.is_some() {
            self.valid_until = self.valid_until.map(|v| v.max(until));
        }
    }
}

impl SiteEndpoint {
    /// Take the address (before anything else starts: an address in use stops the start).
    pub async fn bind(self) -> Result<Bound, Error> {
        let listener = TcpListener::bind(&self.listen).await.map_err(|e| {
            Error::new(
                Kind::Io,
                format!(
                    "endpoint of {} at {}: cannot listen on {}: {e}",
                    self.service, self.site, self.listen
                ),
            )
            .hint("another process has the address, or it is not this host's: correct failover.site_listen")
        })?;
        Ok(Bound { ep: self, listener })
    }
}

/// An endpoint that holds its address.
pub struct Bound {
    ep: SiteEndpoint,
    listener: TcpListener,
}

impl Bound {
    /// Follow etcd and proxy until `stop`.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), Error> {
        let Bound { ep: me, listener } = self;
        let mut co = Coordinator::connect(&me.spec.etcd, READ).await.ok();
        let hold = me.spec.ttl().saturating_sub(me.spec.margin());
        let (tx, rx) = watch::channel(Route {
            epoch: 0,
            target: None,
        });
        log(
            "endpoint_started",
            &me.service,
            serde_json::json!({"site": me.site, "listen": me.listen}),
        );
        let server = tokio::spawn(proxy(listener, rx, stop.clone()));
        let mut f = Follower::new(hold);
        let mut stop = stop;
        let mut last_refused = 0;
        // The member and token of the route taken last (for fail-safe's question).
        let mut routed: Option<(String, i64)> = None;
        let mut failsafe_logged = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let sent = Instant::now();
            if co.is_none() {
                co = Coordinator::connect(&me.spec.etcd, READ).await.ok();
            }
            let mut read = match co.as_mut() {
                None => Read::Failed,
                Some(c) => match tokio::time::timeout(READ, c.route(&me.key)).await {
                    Ok(Ok(Some(h))) => Read::To(h.member, h.token),
                    Ok(Ok(None)) => Read::Nobody,
                    _ => Read::Failed,
                },
            };
            if let Read::To(site, t) = &read {
                if *t >= f.max_token {
                    routed = Some((site.clone(), *t));
                }
            }
            // Fail-safe: etcd cannot be read, or the leader key ran out under a leader that
            // holds without etcd — ask that leader whether it still holds under the route's
            // token, and for how long.
            let unsure = matches!(read, Read::Failed | Read::Nobody);
            let mut held = false;
            if let (true, Some(fs), Some((site, t))) = (unsure, &me.failsafe, &routed) {
                if f.current.target.is_some() {
                    let asked = Instant::now();
                    let from = format!("endpoint at {}", me.site);
                    match crate::failsafe::ask(fs, &me.service, &from, site, "status", *t, READ)
                        .await
                    {
                        Ok(ms) => {
                            f.extend(asked + Duration::from_millis(ms));
                            held = true;
                            if !failsafe_logged {
                                failsafe_logged = true;
                                log(
                                    "endpoint_failsafe",
                                    &me.service,
                                    serde_json::json!({"site": me.site, "token": t, "leader": site,
                                        "reason": "etcd cannot say who leads; the leader confirms it holds in fail-safe: the route stays"}),
                                );
                            }
                        }
                        Err(why) => {
                            if failsafe_logged {
                                log(
                                    "endpoint_failsafe_ended",
                                    &me.service,
                                    serde_json::json!({"site": me.site, "token": t, "leader": site, "why": why}),
                                );
                            }
                        }
                    }
                }
            }
            if !held {
                failsafe_logged = false;
            }
            if held && read == Read::Nobody {
                // The route stays as long as the leader said, as when etcd cannot be read.
                read = Read::Failed;
            }
            if read == Read::Nobody {
                routed = None;
            }
            let failed = read == Read::Failed;
            let token = match &read {
                Read::To(_, t) => *t,
                _ => 0,
            };
            let (route, refused) =
                f.apply(read, sent, Instant::now(), |s| me.members.get(s).cloned());
            if refused && token != last_refused {
                last_refused = token;
                log(
                    "endpoint_refused",
                    &me.service,
                    serde_json::json!({"site": me.site, "token": token, "largest_token": f.max_token,
                        "reason": "a route older than one already taken"}),
                );
            }
            if route != *tx.borrow() {
                log(
                    "endpoint_route",
                    &me.service,
                    serde_json::json!({"site": me.site, "token": route.epoch, "target": route.target,
                        "reason": if route.target.is_some() { "the leader's server takes writes" }
                                  else if failed { "etcd cannot be read: every connection dropped" }
                                  else { "nobody may take writes now" }}),
                );
                let _ = tx.send(route);
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = server.await;
        Ok(())
    }
}

/// Run the endpoints of `site` until `stop` (`lifeboat endpoint --site SITE`).
pub async fn run(
    ctx: &Context,
    site: &str,
    only: Option<&str>,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let eps = at_site(ctx, site, only)?;
    if eps.is_empty() {
        return Err(Error::new(
            Kind::Input,
            format!("no service has an endpoint at site `{site}`"),
        )
        .hint("give the service `failover.site_listen: {SITE: host:port}`"));
    }
    let mut bound = Vec::new();
    for e in eps {
        bound.push(e.bind().await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        tasks.spawn(b.run(stop.clone()));
    }
    all_of(tasks).await
}

/// Wait for every task; the first error among them, if any.
pub(crate) async fn all_of(
    mut tasks: tokio::task::JoinSet<Result<(), Error>>,
) -> Result<(), Error> {
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<String> {
        Some(format!("{s}:5432"))
    }

    #[test]
    fn routes_to_the_holder_never_back_to_an_older_token_and_drops_when_etcd_is_gone() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut f = Follower::new(Duration::from_secs(2));
        // Nothing read yet: nowhere.
        assert_eq!(f.apply(Read::Failed, t0, t0, addr).0.target, None);
        let (r, _) = f.apply(Read::To("east".into(), 10), ms(0), ms(5), addr);
        assert_eq!((r.epoch, r.target.as_deref()), (10, Some("east:5432")));
        // A failover: a larger token elsewhere.
        let (r, _) = f.apply(Read::To("west".into(), 17), ms(100), ms(105), addr);
        assert_eq!((r.epoch, r.target.as_deref()), (17, Some("west:5432")));
        // A read that is behind (the old leader's route): refused, the route stays.
        let (r, refused) = f.apply(Read::To("east".into(), 10), ms(200), ms(205), addr);
        assert!(refused);
        assert_eq!(r.target.as_deref(), Some("west:5432"));
        // etcd unreadable: the route holds until the read before was sent + hold…
        let (r, _) = f.apply(Read::Failed, ms(300), ms(2099), addr);
        assert_eq!(r.target.as_deref(), Some("west:5432"));
        let (r, _) = f.apply(Read::Failed, ms(2100), ms(2150), addr);
        assert_eq!(
            r.target, None,
            "past the hold every connection is dropped (the refused read renewed nothing)"
        );
        // Read again: back to the holder.
        let (r, _) = f.apply(Read::To("west".into(), 17), ms(2200), ms(2210), addr);
        assert_eq!(r.target.as_deref(), Some("west:5432"));
        // Nobody leads (the leader resigned): nowhere at once.
        let (r, _) = f.apply(Read::Nobody, ms(2300), ms(2310), addr);
        assert_eq!(r.target, None);
        // A member the plan does not know: nowhere.
        let (r, _) = f.apply(Read::To("north".into(), 20), ms(2400), ms(2410), |_| None);
        assert_eq!(r.target, None);
    }
}
