//! `lifeboat agent --member SITE`: one agent beside each PostgreSQL member, coordinated through
//! etcd (the plan's `coordinator:`), instead of one daemon deciding for every site.
//!
//! - The agent is the only thing that makes its server writable: a standby is promoted only
//!   by its own agent, and only after that agent won the service's leader key
//!   ([`lifeboat_etcd::Coordinator::campaign`]); the key's create revision is the fencing
//!   token, recorded in the evidence log with every decision.
//! - The leader renews its lease every `renew`. A watchdog thread, apart from the async loop
//!   so a stuck request cannot hold it, kills the server (every process of it, postmaster
//!   first: [`lifeboat_pg::ops::kill_all`]) when the deadline passes — the time the last
//!   acknowledged renewal was *sent*, plus the TTL, minus `margin`, on a monotonic clock.
//! - A primary whose agent does not hold the key (another member leads, or etcd cannot be
//!   reached to take it) is stopped: a server never stays writable without the lease.
//! - The primary's PostgreSQL gone (crashed, stopped) → the agent resigns at once, so a
//!   standby need not wait for the lease to run out.
//! - In a sync tier only the last leader, or a standby it published as synchronous (read from
//!   `pg_stat_replication` once `synchronous_standby_names` has taken effect), may campaign;
//!   a standby campaigns only when nobody holds the key and the last leader's server is gone
//!   from its view (its WAL receiver no longer streams, or the server does not answer), never
//!   on a fresh service nobody has led yet. An agent killed alone fails nothing over: its
//!   server still answers, and the agent started again takes the key back (the dead agent's
//!   lease ended, so its token is refused from then on).
//!
//! - Once its server takes writes, the leader publishes the route under its token
//!   ([`lifeboat_etcd::Coordinator::publish_route`]); the site's traffic endpoints
//!   ([`crate::site_endpoint`], run beside the agent) route only to it.
//!
//! - In a sync tier the leader keeps one streaming standby synchronous, emptying the list of
//!   possible successors in etcd before it changes or clears `synchronous_standby_names`
//!   (`Agent::manage_sync`).
//! - Once another member leads, an agent makes its own member that leader's standby
//!   (`coordinator.rejoin`; [`crate::rejoin::rejoin_to`]).
//!
//! - Fail-safe (`coordinator.failsafe`, off by default): a leader that cannot renew keeps its
//!   server writable only while every other member's agent promises not to campaign
//!   ([`crate::failsafe`]); etcd back, it takes the key again as the last leader.
//! - A hardware or kernel watchdog device (`coordinator.watchdog`, off by default) as the
//!   backstop, fed by the watchdog thread only while a reset would still come before the
//!   lease could run out.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lifeboat_context::Context;
use lifeboat_core::plan::{CoordinatorSpec, RejoinMode, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_etcd::{Coordinator, Leadership};
use lifeboat_pg::ops::Session;
use lifeboat_pg::Member;
use tokio::sync::watch;

use crate::log::log;

/// How often an agent looks at its own server (the renewals go every `renew`).
const CHECK: Duration = Duration::from_millis(100);
/// The longest one look at the server may take.
const PROBE: Duration = Duration::from_millis(500);
/// After a rejoin (or restart) that failed, the next try: 2 s, doubling up to a minute.
const REJOIN_FIRST_RETRY: Duration = Duration::from_secs(2);
const REJOIN_LAST_RETRY: Duration = Duration::from_secs(60);

/// What the agent saw of its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Not answering (crashed, stopped, hung).
    Down,
    Primary,
    /// A standby; `streaming`: its WAL receiver streams from a primary now.
    Standby {
        streaming: bool,
    },
}

/// The services a member at `site` belongs to (all, or the one named).
fn services<'a>(ctx: &'a Context, site: &str, only: Option<&str>) -> Result<Vec<&'a str>, Error> {
    let mut out = Vec::new();
    for (name, svc) in &ctx.plan.services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Service::Postgres { members, .. } = svc {
            if members.contains_key(site) {
                out.push(name.as_str());
            }
        }
    }
    if out.is_empty() {
        let what = only.map_or("no postgres service".to_string(), |o| {
            format!("service `{o}` has no member")
        });
        return Err(Error::new(
            Kind::Input,
            format!("{what} in site `{site}`: this agent would have nothing to look after"),
        )
        .hint("run the agent on a member's host with --member naming that member's site"));
    }
    Ok(out)
}

/// Run the agents of site `site` (one per service) until `stop`. Fails at once, leaving every
/// server as it is, when the plan has no coordinator or etcd cannot be reached.
pub async fn run(
    ctx: &Context,
    site: &str,
    only: Option<&str>,
    endpoints: bool,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let Some(spec) = ctx.plan.coordinator.clone() else {
        return Err(Error::new(
            Kind::Input,
            "the plan has no `coordinator:`: agents coordinate through etcd",
        )
        .hint("add `coordinator: { etcd: [host:port, …] }`, or run `lifeboat serve` (one daemon decides)"));
    };
    let names = services(ctx, site, only)?;
    // The site's traffic endpoints (`failover.site_listen`) take their addresses first, then
    // follow etcd on their own connections, beside the agents.
    let mut bound = Vec::new();
    if endpoints {
        for e in crate::site_endpoint::at_site(ctx, site, only)? {
            bound.push(e.bind().await?);
        }
    }
    let mut agents = Vec::new();
    for name in names {
        agents.push(Agent::start(ctx, &spec, name, site).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        tasks.spawn(b.run(stop.clone()));
    }
    for a in agents {
        tasks.spawn(a.run(stop.clone()));
    }
    crate::site_endpoint::all_of(tasks).await
}

/// One thing an agent did: on stderr as `agent_WHAT`, in the evidence log as `agent WHAT`,
/// with the member and the action beside `fields`.
fn event(
    ctx: &Context,
    member: &Member,
    what: &str,
    outcome: &str,
    started: Instant,
    fields: serde_json::Value,
) {
    let mut f = serde_json::json!({"member": member.site, "action": what});
    if let (Some(o), Some(x)) = (f.as_object_mut(), fields.as_object()) {
        o.extend(x.clone());
    }
    log(&format!("agent_{what}"), &member.service, f.clone());
    if let Err(e) = ctx.record(
        &format!("agent {what}"),
        &member.service,
        outcome,
        started,
        f,
    ) {
        log(
            "error",
            &member.service,
            serde_json::json!({"error": format!("evidence log: {e}")}),
        );
    }
}

/// Whether a site claim's holder (`host:pid`) is an agent of this host that no longer runs.
fn predecessor_dead(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == lifeboat_store::lock::hostname()
        && pid != std::process::id()
        // Gone, a zombie, or another program that took the pid since.
        && (!lifeboat_pg::ops::alive(pid)
            || !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("lifeboat") || c.contains("agent")))
}

/// The watchdog: one OS thread per agent that kills the server when the leader's deadline
/// passes without a renewal having moved it.
#[derive(Clone)]
struct Watchdog(Arc<(Mutex<Option<Instant>>, Condvar)>);

impl Watchdog {
    fn spawn(member: Member, ctx: Context, margin: Duration, mut dev: Option<Device>) -> Watchdog {
        let w = Watchdog(Arc::new((Mutex::new(None), Condvar::new())));
        let inner = w.0.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*inner;
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match *g {
                    None => {
                        if let Some(d) = dev.as_mut() {
                            d.disarm();
                        }
                        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    Some(d) => {
                        let now = Instant::now();
                        if now < d {
                            // The device is fed only while a reset would still come at most
                            // half the margin after the deadline: before the lease could run
                            // out, after this thread had its chance to stop the server.
                            let mut wait = d - now;
                            if let Some(dev) = dev.as_mut() {
                                if now + dev.timeout <= d + margin / 2 {
                                    dev.feed(&ctx, &member);
                                }
                                wait = wait.min(FEED);
                            }
                            g = cv
                                .wait_timeout(g, wait)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                            continue;
                        }
                        *g = None;
                        drop(g);
                        if let Some(dev) = dev.as_mut() {
                            dev.disarm();
                        }
                        let started = Instant::now();
                        let r = lifeboat_pg::ops::kill_all(&member);
                        // How long before the lease could run out the server was gone.
                        let left = (d + margin).saturating_duration_since(Instant::now());
                        let reason = "the lease could not be renewed in time: the server was stopped before it could run out";
                        let (outcome, err) = match &r {
                            Ok(_) => ("ok", None),
                            Err(e) => ("failed", Some(e.to_string())),
                        };
                        event(
                            &ctx,
                            &member,
                            "fence",
                            outcome,
                            started,
                            serde_json::json!({"reason": reason, "by": "watchdog", "lease_left_ms": left.as_millis() as u64, "error": err}),
                        );
                        g = lock.lock().unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        });
        w
    }

    /// Arm (or move) the deadline; `None` disarms.
    fn set(&self, d: Option<Instant>) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = d;
        cv.notify_all();
    }

    /// Whether the watchdog fired since the deadline was last set.
    fn fired(&self) -> bool {
        self.0
             .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

/// How often the watchdog thread feeds a hardware watchdog while its member leads.
const FEED: Duration = Duration::from_millis(100);

/// A hardware or kernel watchdog device (`coordinator.watchdog`): open (armed) only while this
/// member leads; closed with the magic character otherwise, so it stops counting.
struct Device {
    path: std::path::PathBuf,
    /// Whole seconds the device waits after the last feed before it resets the machine.
    timeout: Duration,
    open: Option<std::fs::File>,
    /// Why the device could not be armed last (said once).
    failed: Option<String>,
}

/// `WDIOC_SETTIMEOUT` (linux/watchdog.h: `_IOWR('W', 6, int)`).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

impl Device {
    /// The device's timeout for a lease, whole seconds. The reset comes at most `ttl −
    /// margin/2` after the send time of the last acknowledged renewal whatever the timeout
    /// (the feeding stops that much earlier); a longer one survives longer stalls of the
    /// feeding thread, a shorter one feeds on late renewals. Half the time left: 1 s for the
    /// default 3 s lease.
    fn timeout_for(ttl: Duration, margin: Duration) -> Duration {
        let secs = ((ttl - margin / 2).as_secs_f64() / 2.0).floor().max(1.0);
        Duration::from_secs(secs as u64)
    }

    /// Open `path` and set its timeout (the device counts from here).
    fn arm(path: &std::path::Path, timeout: Duration) -> Result<std::fs::File, String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut t: libc::c_int = timeout.as_secs() as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer; the file is
        // held open across the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            Self::close(f);
            return Err(format!(
                "{} is not a watchdog that takes a {} s timeout: {e}",
                path.display(),
                timeout.as_secs()
            ));
        }
        if t as u64 > timeout.as_secs() {
            Self::close(f);
            return Err(format!(
                "{} cannot count as short as {} s (it set {t} s)",
                path.display(),
                timeout.as_secs()
            ));
        }
        Ok(f)
    }

    /// Close with the magic character: the device stops counting.
    fn close(mut f: std::fs::File) {
        use std::io::Write;
        let _ = f.write_all(b"V");
    }

    /// Whether `path` can be used as the agents need (opened, timeout set, closed again).
    fn probe(path: &std::path::Path, timeout: Duration) -> Result<(), String> {
        Self::arm(path, timeout).map(Self::close)
    }

    fn feed(&mut self, ctx: &Context, member: &Member) {
        use std::io::Write;
        if self.open.is_none() {
            match Self::arm(&self.path, self.timeout) {
                Ok(f) => {
                    self.open = Some(f);
                    self.failed = None;
                }
                Err(why) => {
                    if self.failed.as_deref() != Some(why.as_str()) {
                        event(
                            ctx,
                            member,
                            "watchdog",
                            "failed",
                            Instant::now(),
                            serde_json::json!({"error": why, "note": "the agent's own watchdog thread still stops the server at the deadline"}),
                        );
                        self.failed = Some(why);
                    }
                    return;
                }
            }
        }
        if let Some(f) = self.open.as_mut() {
            let _ = f.write_all(b"1");
        }
    }

    fn disarm(&mut self) {
        if let Some(f) = self.open.take() {
            Self::close(f);
        }
    }
}

/// One service's agent on one member.
struct Agent {
    ctx: Context,
    member: Member,
    co: Coordinator,
    key: String,
    spec: CoordinatorSpec,
    sync_tier: bool,
    lead: Option<Leadership>,
    /// This agent's claim on its site (a key on its own lease): two agents for one site are
    /// refused.
    claim: Option<Leadership>,
    watchdog: Watchdog,
    /// The synchronous standbys last published.
    published: Option<Vec<String>>,
    /// The token under which this agent last published the route to its server.
    routed: Option<i64>,
    last_renew: Instant,
    /// When the leader renews next (sooner again after a renewal that failed).
    next_renew: Instant,
    /// The system identifier every member of the service must share, once checked.
    system_ok: bool,
    /// The service's other members.
    peers: std::collections::BTreeMap<String, Member>,
    /// The service as a rejoin sees it.
    watched: crate::world::Watched,
    /// No rejoin before this (after one that failed).
    rejoin_after: Instant,
    /// The wait before the next try after one more failure.
    rejoin_backoff: Duration,
    /// Why the last rejoin failed (the same failure again is not recorded again).
    rejoin_failed: Option<String>,
    /// Fail-safe mode, when the plan has it.
    failsafe: Option<crate::failsafe::Failsafe>,
    /// What this agent's fail-safe listener answers from.
    fs_state: crate::failsafe::Shared,
    /// In fail-safe: the leader stays writable until then (the last confirmed round's send
    /// time plus ttl minus margin).
    fs_until: Option<Instant>,
    /// Why the last fail-safe round was refused (recorded once while it stays the same).
    fs_refused: Option<String>,
    /// A standby whose server did not answer, not asked again before then.
    unanswered: Option<(String, Instant)>,
}

fn err_for(service: &str, site: &str, e: Error) -> Error {
    Error {
        message: format!("agent for {service} at {site}: {}", e.message),
        ..e
    }
}

/// How long an agent's start waits for etcd to commit its claim before it gives up.
const START_PATIENCE: Duration = Duration::from_secs(10);

impl Agent {
    async fn start(
        ctx: &Context,
        spec: &CoordinatorSpec,
        service: &str,
        site: &str,
    ) -> Result<Agent, Error> {
        let svc = ctx.plan.services.get(service).expect("listed above");
        let pg = lifeboat_pg::PgService::from_plan(service, svc, &ctx.base)?;
        let member = pg.member(site)?;
        let mut peers = std::collections::BTreeMap::new();
        for other in pg.members.keys().filter(|s| *s != site) {
            peers.insert(other.clone(), pg.member(other)?);
        }
        let sync_tier = matches!(svc, Service::Postgres { replication: Some(r), .. } if r.mode == lifeboat_core::plan::ReplicationMode::Sync);
        let watched = crate::world::Watched::from_plan(ctx, service)?.expect("a postgres service");
        let mut co = Coordinator::connect(&spec.etcd, Duration::from_secs(2))
            .await
            .map_err(|e| {
                err_for(service, site, e).hint(
                    "start etcd or correct coordinator.etcd; no server was touched or made writable",
                )
            })?;
        let key = Coordinator::leader_key(&ctx.plan.name, service);
        // A first request proves etcd answers (connecting alone may not).
        co.holder(&key).await.map_err(|e| {
            err_for(service, site, e).hint(
                "start etcd (a quorum of its members) or correct coordinator.etcd; no server was touched or made writable",
            )
        })?;
        let claim_key = format!(
            "{}/agents/{site}",
            key.strip_suffix("/leader").unwrap_or(&key)
        );
        let me = format!(
            "{}:{}",
            lifeboat_store::lock::hostname(),
            std::process::id()
        );
        // A claim is a write etcd must commit (and fsync): on a loaded machine its first one
        // can take longer than one try allows, so a start keeps trying for a while. A try that
        // timed out may still have created the claim: one held under this agent's own name is
        // taken back and made again.
        let deadline = Instant::now() + START_PATIENCE;
        let mut claimed = loop {
            match co.campaign(&claim_key, &me, spec.ttl()).await {
                Err(e) if e.retryable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => break r?,
            }
        };
        if let Err(h) = &claimed {
            // A predecessor on this host that died (killed, crashed): its claim is stale.
            if h.member == me || predecessor_dead(&h.member) {
                co.revoke(h).await?;
                claimed = co.campaign(&claim_key, &me, spec.ttl()).await?;
            }
        }
        let claim = match claimed {
            Ok(c) => c,
            Err(h) => {
                return Err(Error::new(
                    Kind::Conflict,
                    format!(
                        "agent for {service} at {site}: another agent ({}) already runs for this member",
                        h.member
                    ),
                )
                .hint("run one agent per member: stop the other one first"))
            }
        };
        let failsafe = match &spec.failsafe {
            Some(f) => Some(crate::failsafe::Failsafe::load(f, &ctx.base)?),
            None => None,
        };
        let fs_state = crate::failsafe::Shared::default();
        if let Some(fs) = &failsafe {
            for peer in peers.keys() {
                if !fs.listen.contains_key(peer) {
                    return Err(Error::new(
                        Kind::Input,
                        format!("coordinator.failsafe.listen has no address for {peer}, a member of {service}"),
                    )
                    .hint("fail-safe asks every other member: give each one's site an address"));
                }
            }
            let l = crate::failsafe::bind(fs, service, site).await?;
            tokio::spawn(crate::failsafe::serve(
                l,
                fs.clone(),
                service.to_string(),
                site.to_string(),
                spec.ttl(),
                fs_state.clone(),
            ));
        }
        let device = {
            use lifeboat_core::plan::WatchdogMode;
            let path = std::path::PathBuf::from(
                spec.watchdog_device.as_deref().unwrap_or("/dev/watchdog"),
            );
            let timeout = Device::timeout_for(spec.ttl(), spec.margin());
            match spec.watchdog.unwrap_or_default() {
                WatchdogMode::Off => None,
                mode => match Device::probe(&path, timeout) {
                    Ok(()) => Some(Device {
                        path,
                        timeout,
                        open: None,
                        failed: None,
                    }),
                    Err(why) if mode == WatchdogMode::Required => {
                        return Err(Error::new(
                            Kind::Input,
                            format!("agent for {service} at {site}: coordinator.watchdog is required, but {why}"),
                        )
                        .hint("load a watchdog driver (e.g. `modprobe softdog`) and let the agent's user write the device, or set coordinator.watchdog: auto or off; no server was touched or made writable"));
                    }
                    Err(why) => {
                        log(
                            "agent_watchdog_unavailable",
                            service,
                            serde_json::json!({"member": site, "error": why,
                                "note": "without it the agent's own watchdog thread stops the server at the deadline; a machine frozen as a whole relies on the sync tier"}),
                        );
                        None
                    }
                },
            }
        };
        let watchdog = Watchdog::spawn(member.clone(), ctx.clone(), spec.margin(), device);
        log(
            "agent_started",
            service,
            serde_json::json!({"member": site, "leader_key": key, "ttl_s": spec.ttl().as_secs()}),
        );
        Ok(Agent {
            ctx: ctx.clone(),
            member,
            co,
            key,
            spec: spec.clone(),
            sync_tier,
            lead: None,
            claim: Some(claim),
            watchdog,
            published: None,
            routed: None,
            last_renew: Instant::now(),
            next_renew: Instant::now(),
            system_ok: false,
            peers,
            watched,
            rejoin_after: Instant::now(),
            rejoin_backoff: REJOIN_FIRST_RETRY,
            rejoin_failed: None,
            failsafe,
            fs_state,
            fs_until: None,
            fs_refused: None,
            unanswered: None,
        })
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        loop {
            if *stop.borrow() {
                break;
            }
            let seen = self.look().await;
            self.step(seen).await;
            tokio::select! {
                _ = tokio::time::sleep(CHECK) => {}
                _ = stop.changed() => {}
            }
        }
        // A clean stop gives the leadership up (the server keeps running as it is: the next
        // agent to start for it campaigns again as its last leader).
        if let Some(l) = self.lead.take() {
            self.watchdog.set(None);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.co.resign(l)).await;
        }
        if let Some(claim) = self.claim.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.co.resign(claim)).await;
        }
        Ok(())
    }

    fn service(&self) -> &str {
        &self.member.service
    }

    fn event(&self, what: &str, outcome: &str, started: Instant, fields: serde_json::Value) {
        event(&self.ctx, &self.member, what, outcome, started, fields);
    }

    async fn look(&self) -> Seen {
        let probe = async {
            let s = Session::connect(&self.member, PROBE).await.ok()?;
            if !s.in_recovery().await.ok()? {
                return Some(Seen::Primary);
            }
            let streaming = s
                .bool(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
                )
                .await
                .ok()?;
            Some(Seen::Standby { streaming })
        };
        tokio::time::timeout(PROBE, probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(Seen::Down)
    }

    async fn step(&mut self, seen: Seen) {
        // Keep the site claim alive (its lease is this agent's own).
        let due = self.last_renew.elapsed() >= self.spec.renew();
        if due {
            self.last_renew = Instant::now();
        }
        if self.lead.is_some() && self.watchdog.fired() {
            // The watchdog stopped the server: this agent no longer leads.
            self.lead = None;
            self.fs_until = None;
        }
        match (self.lead.is_some(), seen) {
            (true, Seen::Primary) => {
                // A renewal that failed is tried again at the next look, not a period later:
                // an etcd electing a new leader answers again within its election timeout.
                if Instant::now() >= self.next_renew {
                    // In fail-safe the members are asked first (a renewal that etcd cannot
                    // answer takes its whole time), then etcd again.
                    if self.fs_until.is_some() {
                        self.failsafe_round().await;
                    }
                    let ok = self.renew().await;
                    if !ok && self.lead.is_some() && self.fs_until.is_none() {
                        self.failsafe_round().await;
                    }
                    self.next_renew = Instant::now() + if ok { self.spec.renew() } else { CHECK };
                }
                self.publish_route().await;
            }
            (true, _) => {
                let why = if seen == Seen::Down {
                    "the server stopped answering"
                } else {
                    "the server is no longer a primary"
                };
                self.resign(why).await;
            }
            (false, Seen::Primary) => self.primary_without_lease().await,
            (false, Seen::Standby { streaming }) => {
                self.maybe_take_over(streaming).await;
                if self.lead.is_none() && !streaming {
                    self.maybe_rejoin(seen).await;
                }
            }
            (false, Seen::Down) => {
                if !self.restart_as_last_leader().await {
                    self.maybe_rejoin(seen).await;
                }
            }
        }
        // The site claim's lease is this agent's own; after the leader's renewal, and briefly.
        if let (true, Some(claim)) = (due, self.claim.as_mut()) {
            let _ = tokio::time::timeout(PROBE, self.co.renew(claim)).await;
        }
        // What the fail-safe listener answers: whether this agent leads, and until when.
        let leading = self
            .lead
            .as_ref()
            .map(|l| (l.token, Some(self.writable_until(l))));
        self.fs_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leading = leading;
    }

    /// Until when the leader may keep its server writable: its lease's deadline, or later
    /// while every other member confirmed it in fail-safe.
    fn writable_until(&self, l: &Leadership) -> Instant {
        let d = l.deadline(self.spec.margin());
        self.fs_until.map_or(d, |f| f.max(d))
    }

    /// Whether this member promised a fail-safe leader not to campaign (and so may not now).
    fn pledged(&self) -> bool {
        self.fs_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pledged()
    }

    /// A token seen in etcd: a fail-safe call under a smaller one is stale.
    fn saw_token(&self, token: i64) {
        let mut st = self.fs_state.lock().unwrap_or_else(|e| e.into_inner());
        st.seen_token = st.seen_token.max(token);
    }

    /// Fail-safe, as the leader that could not renew: ask every other member's agent to
    /// promise not to campaign. All of them did → the server stays writable until this
    /// round's send time + ttl − margin (each promise runs a whole ttl from its answer, so
    /// this ends first). One did not → nothing moves: the watchdog stops the server at the
    /// deadline it has.
    async fn failsafe_round(&mut self) {
        let (Some(fs), Some(l)) = (self.failsafe.clone(), self.lead.as_ref()) else {
            return;
        };
        let sent = Instant::now();
        let token = l.token;
        let mut calls = tokio::task::JoinSet::new();
        for peer in self.peers.keys() {
            let (fs, service, me, peer) = (
                fs.clone(),
                self.service().to_string(),
                self.member.site.clone(),
                peer.clone(),
            );
            calls.spawn(async move {
                crate::failsafe::ask(&fs, &service, &me, &peer, "hold", token, PROBE).await
            });
        }
        let mut refused = Vec::new();
        while let Some(r) = calls.join_next().await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(why)) => refused.push(why),
                Err(e) => refused.push(e.to_string()),
            }
        }
        refused.sort();
        if self.peers.is_empty() {
            refused.push("the service has no other member to confirm it".into());
        }
        if !refused.is_empty() {
            let why = refused.join("; ");
            if self.fs_refused.as_deref() != Some(why.as_str()) {
                self.event(
                    "failsafe",
                    "refused",
                    sent,
                    serde_json::json!({"token": token, "error": why,
                        "reason": "etcd cannot be reached and not every other member confirmed this leader: it stops at its lease's deadline"}),
                );
                self.fs_refused = Some(why);
            }
            return;
        }
        let until = sent + self.spec.ttl().saturating_sub(self.spec.margin());
        if self.fs_until.is_none() {
            let members: Vec<&String> = self.peers.keys().collect();
            self.event(
                "failsafe",
                "ok",
                sent,
                serde_json::json!({"token": token, "members": members,
                    "reason": "etcd cannot be reached; every other member confirmed this leader and promised not to campaign: the server stays writable while they do"}),
            );
        }
        self.fs_refused = None;
        self.fs_until = Some(self.fs_until.map_or(until, |f| f.max(until)));
        let d = self.writable_until(l);
        self.watchdog.set(Some(d));
    }

    /// Renew the leader's lease once; whether it was renewed.
    async fn renew(&mut self) -> bool {
        let Some(l) = self.lead.as_ref() else {
            return false;
        };
        let deadline = self.writable_until(l);
        let in_failsafe = self.fs_until.is_some_and(|f| Instant::now() < f);
        let started = Instant::now();
        let Some(l) = self.lead.as_mut() else {
            return false;
        };
        match tokio::time::timeout_at(deadline.into(), self.co.renew(l)).await {
            Ok(Ok(())) => {
                let d = l.deadline(self.spec.margin());
                self.watchdog.set(Some(d));
                if self.fs_until.take().is_some() {
                    let token = l.token;
                    self.event(
                        "failsafe",
                        "ended",
                        started,
                        serde_json::json!({"token": token, "reason": "etcd answers again: the lease is renewed"}),
                    );
                }
                self.manage_sync().await;
                self.publish_sync().await;
                return true;
            }
            Ok(Err(e)) if e.kind == Kind::Conflict && in_failsafe => {
                // The lease ran out in etcd while every other member kept this leader: etcd
                // answers again, so take the key back as the last leader (a new token), or
                // stop if someone else has it.
                self.lead = None;
                self.fs_until = None;
                match self.take_lease().await {
                    Ok(l) => {
                        self.took_key(
                            l,
                            started,
                            "etcd answers again after fail-safe: the leader took the key back",
                        )
                        .await;
                        return true;
                    }
                    Err(why) => self.fence(&why, started).await,
                }
            }
            Ok(Err(e)) if e.kind == Kind::Conflict => {
                self.fence("the lease is gone: another member may lead now", started)
                    .await;
            }
            Ok(Err(e)) => {
                // etcd unreachable: the watchdog counts down; the next renewal may get through.
                log(
                    "agent_renew_failed",
                    self.service(),
                    serde_json::json!({"member": self.member.site, "error": e.to_string()}),
                );
            }
            Err(_) if self.fs_until.is_some_and(|f| Instant::now() < f) => {}
            Err(_) => {
                self.fence("the lease could not be renewed before it ran out", started)
                    .await;
            }
        }
        false
    }

    /// In a sync tier, as the leader: keep exactly one streaming standby synchronous
    /// (`synchronous_standby_names`), so a commit is acknowledged only once another site has
    /// it. Every standby published in etcd as allowed to take over must have every
    /// acknowledged commit, so the set published there is emptied *before* the server's
    /// synchronous standby changes or is cleared, and a new one is published only once
    /// `pg_stat_replication` shows it synchronous ([`Self::publish_sync`]). With no standby
    /// streaming the requirement is dropped (writes go on; nobody else may take over) — but
    /// only after etcd has taken the empty set: a leader cut off from etcd keeps waiting for
    /// its standby and acknowledges nothing.
    async fn manage_sync(&mut self) {
        if !self.sync_tier {
            return;
        }
        if self.lead.is_none() {
            return;
        }
        let q = async {
            let s = Session::connect(&self.member, PROBE).await.ok()?;
            let ssn = s.text("SHOW synchronous_standby_names").await.ok()?;
            let streaming = s
                .text("SELECT coalesce(string_agg(application_name, ',' ORDER BY application_name), '') FROM pg_stat_replication WHERE state = 'streaming'")
                .await
                .ok()?;
            let waiting = s
                .bool("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep')")
                .await
                .ok()?;
            Some((s, ssn, streaming, waiting))
        };
        let Some((session, ssn, streaming, waiting)) =
            tokio::time::timeout(PROBE, q).await.ok().flatten()
        else {
            return;
        };
        let mut streaming: Vec<&str> = streaming
            .split(',')
            .filter(|x| self.peers.contains_key(*x))
            .collect();
        let current = ssn.trim().trim_matches('"').to_string();
        // Commits wait for the synchronous standby: is its server there at all? A standby
        // whose site was cut off still shows as streaming until wal_sender_timeout (a minute
        // by default); meanwhile every commit would hang.
        if waiting && streaming.contains(&current.as_str()) && !self.answers(&current).await {
            streaming.retain(|s| *s != current);
        }
        if !current.is_empty() && streaming.contains(&current.as_str()) {
            return;
        }
        // The next one: the first streaming standby whose server answers.
        let mut next = None;
        for cand in streaming {
            if self.answers(cand).await {
                next = Some(cand.to_string());
                break;
            }
        }
        if current.is_empty() && next.is_none() {
            return;
        }
        let Some(l) = self.lead.as_ref() else { return };
        // First nobody else may take over…
        if self.published.as_ref().is_none_or(|p| !p.is_empty()) {
            let site = self.member.site.clone();
            match self.co.publish_sync(l, &site, &[]).await {
                Ok(true) => self.published = Some(Vec::new()),
                _ => return,
            }
        }
        // …then the server's synchronous standby changes.
        let started = Instant::now();
        let value = next.as_ref().map_or(String::new(), |n| format!("\"{n}\""));
        let r = tokio::time::timeout(PROBE, session.set("synchronous_standby_names", &value)).await;
        let err = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the server did not answer within 500 ms".into()),
        };
        let token = l.token;
        self.event(
            "synchronous",
            if err.is_none() { "ok" } else { "failed" },
            started,
            serde_json::json!({"token": token, "was": current, "now": next, "error": err,
                "reason": match &next {
                    Some(n) => format!("{n} streams: commits wait for it"),
                    None => format!("{current} no longer streams (or its server does not answer while commits wait for it): commits go on without a synchronous standby, and no other member may take over"),
                }}),
        );
    }

    /// Whether `site`'s server answers within the probe's time. One that did not is not
    /// asked again for 2 s (the leader's loop must not wait on it at every renewal).
    async fn answers(&mut self, site: &str) -> bool {
        if let Some((s, until)) = &self.unanswered {
            if s == site && Instant::now() < *until {
                return false;
            }
        }
        let Some(peer) = self.peers.get(site) else {
            return false;
        };
        let probe = async {
            let s = Session::connect(peer, PROBE).await.ok()?;
            s.in_recovery().await.ok()
        };
        let ok = tokio::time::timeout(PROBE, probe)
            .await
            .ok()
            .flatten()
            .is_some();
        self.unanswered =
            (!ok).then(|| (site.to_string(), Instant::now() + Duration::from_secs(2)));
        ok
    }

    /// A server this agent stopped as the last leader (its lease could not be renewed: etcd
    /// unreachable, the site cut off) while nobody took over — in a sync tier nobody else
    /// may, when no standby was synchronous: once etcd answers again and still nobody leads,
    /// start it again as it was, so it can take the key back (the next step, as any primary
    /// without the key) instead of the service staying down. Whether it was started.
    async fn restart_as_last_leader(&mut self) -> bool {
        if self.member.data_dir.is_none() || lifeboat_pg::ops::running(&self.member) {
            return false;
        }
        let Ok(Ok(None)) = tokio::time::timeout(PROBE, self.co.holder(&self.key)).await else {
            return false;
        };
        let Ok(Ok(Some((last, token, _)))) =
            tokio::time::timeout(PROBE, self.co.sync_set(&self.key)).await
        else {
            return false;
        };
        if last != self.member.site || Instant::now() < self.rejoin_after || self.pledged() {
            return false;
        }
        // Only a server that was a primary when it stopped (not a standby's crash).
        let was_primary = self
            .member
            .data_dir
            .as_ref()
            .is_some_and(|d| !d.join("standby.signal").exists());
        if !was_primary {
            return false;
        }
        let started = Instant::now();
        let r = crate::switchover::start_logged(&self.watched, &self.member, 60).await;
        let err = match &r {
            Ok((out, log)) if !out.status.success() => {
                Some(format!("pg_ctl start failed (see {})", log.display()))
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if err.is_some() {
            self.back_off();
        }
        self.event(
            "restart",
            if err.is_none() { "ok" } else { "failed" },
            started,
            serde_json::json!({"token": token, "error": err,
                "reason": "this member led last and nobody took over: its server is started again to take the key back"}),
        );
        err.is_none()
    }

    /// Once another member leads and takes writes (its route published): make this member its
    /// standby — a stopped server rewound or cloned again, a standby that follows another
    /// server re-pointed — unless the plan says `rejoin: manual` or this host does not have the
    /// member's data directory. The site claim is kept alive meanwhile.
    async fn maybe_rejoin(&mut self, seen: Seen) {
        let mode = self.spec.rejoin.unwrap_or_default();
        if mode == RejoinMode::Manual
            || self.member.data_dir.is_none()
            || Instant::now() < self.rejoin_after
        {
            return;
        }
        let Ok(Ok(Some(h))) = tokio::time::timeout(PROBE, self.co.route(&self.key)).await else {
            return;
        };
        if h.member == self.member.site {
            return;
        }
        let Some(leader) = self.peers.get(&h.member).cloned() else {
            return;
        };
        if matches!(seen, Seen::Standby { .. }) && self.follows(&leader).await {
            // It waits for the leader itself: it reconnects on its own.
            return;
        }
        // Never over a member of another cluster (a misplaced data directory): that is for a
        // person (`lifeboat rejoin` clones it again, keeping the old directory).
        if !self.system_ok {
            let theirs = self.co.value(&self.system_key()).await.ok().flatten();
            let mine = lifeboat_pg::ops::control_data(&self.watched.bin_dir, &self.member)
                .await
                .ok()
                .and_then(|c| c.system_id);
            if theirs.is_none() || theirs != mine {
                self.rejoin_after = Instant::now() + REJOIN_LAST_RETRY;
                return;
            }
        }
        let started = Instant::now();
        let (w, state_dir, site) = (
            self.watched.clone(),
            self.ctx.state_dir.clone(),
            self.member.site.clone(),
        );
        let service = self.service().to_string();
        let progress = move |m: &str| {
            log(
                "agent_rejoin_progress",
                &service,
                serde_json::json!({"member": site, "step": m}),
            )
        };
        let site = self.member.site.clone();
        let may_clone = mode == RejoinMode::Clone;
        let work =
            crate::rejoin::rejoin_to(&w, &state_dir, &site, Some(&h.member), may_clone, &progress);
        tokio::pin!(work);
        let r = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tokio::time::sleep(self.spec.renew()) => {
                    if let Some(claim) = self.claim.as_mut() {
                        let _ = tokio::time::timeout(PROBE, self.co.renew(claim)).await;
                    }
                }
            }
        };
        let fields = match &r {
            Ok(rep) => {
                serde_json::json!({"token": h.token, "leader": h.member, "method": rep.method,
                "streaming": rep.streaming, "rewind_error": rep.rewind_error,
                "discarded_commits": rep.divergence.as_ref().map(|d| d.commits.len()),
                "discarded_bytes": rep.divergence.as_ref().map(|d| d.bytes),
                "divergence_report": rep.divergence.as_ref().and_then(|d| d.file.clone()),
                "reason": format!("{} leads (token {}): {} follows it", h.member, h.token, self.member.site)})
            }
            Err(e) => {
                serde_json::json!({"token": h.token, "leader": h.member, "error": e.to_string(),
                "reason": format!("{} leads (token {}); rejoining {} failed, next try in {} s", h.member, h.token, self.member.site, self.rejoin_backoff.as_secs())})
            }
        };
        let again = match &r {
            Ok(_) => {
                self.rejoin_failed = None;
                self.rejoin_backoff = REJOIN_FIRST_RETRY;
                false
            }
            Err(e) => {
                self.back_off();
                self.rejoin_failed.replace(e.message.clone()).as_deref() == Some(&e.message)
            }
        };
        if again {
            return;
        }
        self.event(
            "rejoin",
            if r.is_ok() { "ok" } else { "failed" },
            started,
            fields,
        );
    }

    /// No rejoin or restart for a while after one failed, longer each time.
    fn back_off(&mut self) {
        self.rejoin_after = Instant::now() + self.rejoin_backoff;
        self.rejoin_backoff = (self.rejoin_backoff * 2).min(REJOIN_LAST_RETRY);
    }

    /// Whether this standby's `primary_conninfo` names `leader`'s address.
    async fn follows(&self, leader: &Member) -> bool {
        let q = async {
            let s = Session::connect(&self.member, PROBE).await.ok()?;
            s.primary_conninfo().await.ok()
        };
        let Some(ci) = tokio::time::timeout(PROBE, q).await.ok().flatten() else {
            return true;
        };
        let kv = lifeboat_pg::parse_conninfo(&ci);
        let get = |k: &str| kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let host = get("host").or(get("hostaddr"));
        let port = get("port").unwrap_or("5432");
        host == Some(leader.host.as_str()) && port == leader.port.to_string()
    }

    /// Tell the endpoints traffic may come here (the server takes writes, under this token).
    async fn publish_route(&mut self) {
        let Some(l) = self.lead.as_ref() else { return };
        if self.routed == Some(l.token) {
            return;
        }
        let site = self.member.site.clone();
        let token = l.token;
        match tokio::time::timeout(PROBE, self.co.publish_route(l, &site)).await {
            Ok(Ok(true)) => {
                self.routed = Some(token);
                log(
                    "agent_route_published",
                    self.service(),
                    serde_json::json!({"member": site, "token": token}),
                );
            }
            // No longer the leader's token: the next renewal finds out and fences.
            Ok(Ok(false)) => {}
            Ok(Err(e)) => log(
                "agent_route_failed",
                self.service(),
                serde_json::json!({"member": site, "token": token, "error": e.to_string()}),
            ),
            Err(_) => {}
        }
    }

    /// Publish the standbys the primary lists as synchronous now, when they changed.
    async fn publish_sync(&mut self) {
        if !self.sync_tier {
            return;
        }
        let Some(l) = self.lead.as_ref() else { return };
        let q = async {
            let s = Session::connect(&self.member, PROBE).await.ok()?;
            let t = s
                .text("SELECT coalesce(string_agg(application_name, ',' ORDER BY application_name), '') FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")
                .await
                .ok()?;
            Some(
                t.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        let Some(sync) = tokio::time::timeout(PROBE, q).await.ok().flatten() else {
            return;
        };
        if self.published.as_ref() == Some(&sync) {
            return;
        }
        let site = self.member.site.clone();
        if let Ok(true) = self.co.publish_sync(l, &site, &sync).await {
            log(
                "agent_sync_published",
                self.service(),
                serde_json::json!({"member": site, "token": l.token, "synchronous": sync}),
            );
            self.published = Some(sync);
        }
    }

    async fn resign(&mut self, why: &str) {
        let Some(l) = self.lead.take() else { return };
        self.fs_until = None;
        self.watchdog.set(None);
        let started = Instant::now();
        let token = l.token;
        let r = tokio::time::timeout(Duration::from_secs(1), self.co.resign(l)).await;
        let (outcome, err) = match r {
            Ok(Ok(())) => ("ok", None),
            Ok(Err(e)) => ("failed", Some(e.to_string())),
            Err(_) => ("failed", Some("etcd did not answer within 1 s".to_string())),
        };
        self.event(
            "resign",
            outcome,
            started,
            serde_json::json!({"token": token, "reason": why, "error": err,
                "note": if err.is_some() { "the lease runs out on its own within its ttl" } else { "another member may take over at once" }}),
        );
    }

    /// Stop this member's server now and say why.
    async fn fence(&mut self, why: &str, started: Instant) {
        let lead = self.lead.take();
        self.fs_until = None;
        let token = lead.as_ref().map(|l| l.token);
        self.watchdog.set(None);
        let m = self.member.clone();
        let r = tokio::task::spawn_blocking(move || lifeboat_pg::ops::kill_all(&m)).await;
        // For a leader: how long before its lease could run out the server was gone.
        let left = lead.map(|l| {
            l.deadline(Duration::ZERO)
                .saturating_duration_since(Instant::now())
                .as_millis() as u64
        });
        let err = match r {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        self.event(
            "fence",
            if err.is_none() { "ok" } else { "failed" },
            started,
            serde_json::json!({"token": token, "reason": why, "by": "agent", "lease_left_ms": left, "error": err}),
        );
    }

    /// Where the service's system identifier is recorded.
    fn system_key(&self) -> String {
        format!(
            "{}/system_id",
            self.key.strip_suffix("/leader").unwrap_or(&self.key)
        )
    }

    /// Every member of the service must be of one cluster: the first agent to look records
    /// the system identifier in etcd, the others compare.
    async fn same_cluster(&mut self) -> Result<bool, Error> {
        if self.system_ok {
            return Ok(true);
        }
        let Ok(s) = Session::connect(&self.member, PROBE).await else {
            return Ok(false);
        };
        let mine = s.system_id().await?;
        let key = self.system_key();
        let theirs = self.co.put_if_absent(&key, &mine).await?;
        if theirs == mine {
            self.system_ok = true;
            return Ok(true);
        }
        Err(Error::new(
            Kind::Conflict,
            format!(
                "{} at {} is of another cluster (system identifier {mine}; the service's is {theirs})",
                self.service(),
                self.member.site
            ),
        )
        .hint("this member was not made from the service's primary: rebuild it (lifeboat rejoin) or correct the plan"))
    }

    /// A writable server without the lease: take the lease if nobody holds it and this member
    /// may, else stop the server.
    async fn primary_without_lease(&mut self) {
        let started = Instant::now();
        match self.same_cluster().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return self.fence(&e.message, started).await,
        }
        match self.take_lease().await {
            Ok(l) => {
                self.took_key(l, started, "the primary took the service's leader key")
                    .await
            }
            Err(why) => self.fence(&why, started).await,
        }
    }

    /// This agent leads under `l` from now: the watchdog armed at its deadline, the next
    /// renewal scheduled, the synchronous standbys to be published again. Its token.
    fn hold(&mut self, l: Leadership) -> i64 {
        self.watchdog.set(Some(l.deadline(self.spec.margin())));
        self.next_renew = Instant::now() + self.spec.renew();
        let token = l.token;
        self.lead = Some(l);
        self.published = None;
        token
    }

    /// A primary's agent that took the key: hold it, say so, publish its synchronous standby.
    async fn took_key(&mut self, l: Leadership, started: Instant, reason: &str) {
        let token = self.hold(l);
        self.event(
            "lead",
            "ok",
            started,
            serde_json::json!({"token": token, "reason": reason}),
        );
        self.publish_sync().await;
    }

    /// Take the leader key for a primary, or why it may not have it (and must stop).
    async fn take_lease(&mut self) -> Result<Leadership, String> {
        let site = self.member.site.clone();
        let key = self.key.clone();
        let unreachable = |e: Error| {
            format!(
                "a primary without the lease, and etcd cannot give it: {}",
                e.message
            )
        };
        let held = |h: lifeboat_etcd::Holder| {
            format!(
                "{} leads (token {}): this server may not take writes",
                h.member, h.token
            )
        };
        if self.pledged() {
            return Err(
                "this member promised a fail-safe leader not to campaign: it may not take writes"
                    .into(),
            );
        }
        if let Some(h) = self.co.holder(&key).await.map_err(unreachable)? {
            self.saw_token(h.token);
            if h.member != site {
                return Err(held(h));
            }
            // This member's own key, left by a predecessor agent that is gone (this one holds
            // the member's claim, so no other agent for it lives): end that lease, so the old
            // token is refused from now on, and take a new one.
            self.co.revoke(&h).await.map_err(unreachable)?;
        }
        if !self
            .co
            .may_campaign(&key, &site)
            .await
            .map_err(unreachable)?
        {
            return Err(
                "a primary that is neither the last leader nor one of its synchronous standbys"
                    .into(),
            );
        }
        self.co
            .campaign(&key, &site, self.spec.ttl())
            .await
            .map_err(unreachable)?
            .map_err(held)
    }

    /// A standby whose primary is gone from its view: campaign when nobody leads and this
    /// member may, and promote on winning.
    async fn maybe_take_over(&mut self, streaming: bool) {
        let started = Instant::now();
        let site = self.member.site.clone();
        let key = self.key.clone();
        let holder = self.co.holder(&key).await;
        if let Ok(Some(h)) = &holder {
            self.saw_token(h.token);
        }
        // A fail-safe leader holds without etcd while this member promised not to campaign.
        let Ok(None) = holder else {
            return;
        };
        if self.pledged() {
            return;
        }
        // Nobody has led this service yet: a standby waits for the primary's agent.
        let published = match self.co.sync_set(&key).await {
            Ok(Some(p)) => p,
            _ => return,
        };
        let allowed = !self.sync_tier || published.0 == site || published.2.contains(&site);
        if !allowed {
            return;
        }
        // Still streaming: the last leader may only have lost its agent (then nothing fails
        // over) — or be paused or cut off, its connection not yet timed out. Ask it.
        if streaming {
            let Some(last) = self.peers.get(&published.0) else {
                return;
            };
            let answers = async {
                let s = Session::connect(last, PROBE).await.ok()?;
                s.in_recovery().await.ok()
            };
            if tokio::time::timeout(PROBE, answers)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
        }
        if !matches!(self.same_cluster().await, Ok(true)) {
            return;
        }
        let l = match self.co.campaign(&key, &site, self.spec.ttl()).await {
            Ok(Ok(l)) => l,
            _ => return,
        };
        let token = self.hold(l);
        let reason = format!(
            "{} led last (token {}); {site} {} and its primary no longer streams to it",
            published.0,
            published.1,
            if self.sync_tier {
                "was published as its synchronous standby"
            } else {
                "is a standby"
            }
        );
        let r = async {
            let s = Session::connect(&self.member, Duration::from_secs(2)).await?;
            s.promote().await
        }
        .await;
        match r {
            Ok(_) => {
                self.event(
                    "promote",
                    "ok",
                    started,
                    serde_json::json!({"token": token, "from": published.0, "reason": reason}),
                );
                self.publish_route().await;
            }
            Err(e) => {
                self.event(
                    "promote",
                    "failed",
                    started,
                    serde_json::json!({"token": token, "from": published.0, "reason": reason, "error": e.to_string()}),
                );
                self.resign("the promotion failed").await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_timeout_lets_the_reset_come_after_the_deadline_and_before_the_lease_ends() {
        for (ttl, margin) in [(3, 1000), (5, 1000), (10, 2000), (30, 5000), (2, 500)] {
            let ttl = Duration::from_secs(ttl);
            let margin = Duration::from_millis(margin);
            let t = Device::timeout_for(ttl, margin);
            assert!(t >= Duration::from_secs(1));
            // Fed until deadline + margin/2 − t: a renewal's answer may come that late.
            let deadline = ttl - margin;
            let last_feed = deadline + margin / 2 - t;
            assert!(last_feed > Duration::ZERO, "{ttl:?} {margin:?}: never fed");
            let reset = last_feed + t;
            assert!(reset > deadline && reset < ttl, "{ttl:?} {margin:?} {t:?}");
        }
        assert_eq!(
            Device::timeout_for(Duration::from_secs(3), Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_is_refused_and_a_missing_one_named() {
        let e =
            Device::probe(std::path::Path::new("/dev/null"), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("is not a watchdog"), "{e}");
        let e = Device::probe(
            std::path::Path::new("/nonexistent/watchdog"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("cannot open /nonexistent/watchdog"), "{e}");
    }
}
