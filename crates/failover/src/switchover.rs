//! Planned switchover without data loss: stop writes on the primary with a clean
//! shutdown, wait until the target has replayed the primary's final WAL (its shutdown
//! checkpoint — the "demotion token" CloudNativePG uses), promote the target, route traffic to
//! it, and restart the old primary as its standby: no re-clone, nothing lost, downtime measured.
//! If the target does not catch up in time, the old primary is started again and takes writes
//! as before.
//!
//! The same function runs inside `lifeboat serve` (which then also moves its traffic endpoint)
//! and from the command line when no daemon runs.

use std::time::{Duration, Instant};

use lifeboat_core::wal::Lsn;
use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::coord::StateFile;
use crate::log::log;
use crate::traffic::Route;
use crate::world::Watched;
use lifeboat_context::Context;
use lifeboat_pg::ops::{pg_ctl, Session};
use lifeboat_pg::Member;

/// One timed step of a switchover.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub step: String,
    pub ms: u64,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub service: String,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    /// The old primary's shutdown checkpoint: the last WAL it wrote.
    pub final_lsn: Option<String>,
    /// From the moment writes stopped (traffic cut / shutdown began) to the first write the
    /// new primary accepted.
    pub downtime_ms: Option<u64>,
    pub steps: Vec<Step>,
    /// Why it was called off (writes went back to the old primary).
    pub aborted: Option<String>,
    /// The old primary follows the new one (streaming).
    pub old_primary_streaming: bool,
}

struct Clock<'a> {
    report: &'a mut Report,
    at: Instant,
    progress: &'a (dyn Fn(&Step) + Send + Sync),
}

impl Clock<'_> {
    fn done(&mut self, step: &str, detail: impl Into<String>) {
        let s = Step {
            step: step.into(),
            ms: self.at.elapsed().as_millis() as u64,
            detail: detail.into(),
        };
        (self.progress)(&s);
        self.report.steps.push(s);
        self.at = Instant::now();
    }
}

fn member<'a>(w: &'a Watched, site: &str) -> Result<&'a Member, Error> {
    w.members.iter().find(|m| m.site == site).ok_or_else(|| {
        Error::new(
            Kind::Input,
            format!("{} has no member at site {site}", w.service),
        )
    })
}

/// `pg_ctl start` a member, its early output in `<data_dir>/log/lifeboat-start.log`, waiting
/// up to `wait_s` for it to accept connections (a standby: once consistent, which after a
/// rewind means replaying the WAL from the last common checkpoint on; pg_ctl returns at once
/// if the server exits).
pub(crate) async fn start_logged(
    w: &Watched,
    m: &Member,
    wait_s: u32,
) -> Result<(std::process::Output, std::path::PathBuf), Error> {
    let data = lifeboat_pg::ops::data_dir(m)?;
    let log = data.join("log");
    let _ = std::fs::create_dir_all(&log);
    if let Ok(md) = std::fs::metadata(&data) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(&log, Some(md.uid()), Some(md.gid()));
    }
    let logfile = log.join("lifeboat-start.log");
    let out = pg_ctl(
        &w.bin_dir,
        m,
        &[
            "start",
            "-w",
            "-t",
            &wait_s.to_string(),
            "-l",
            &logfile.to_string_lossy(),
        ],
    )
    .await?;
    Ok((out, logfile))
}

/// What to do when a standby does not start: its log says whether it waits for WAL the
/// primary has already recycled (after a rewind it replays from the last common checkpoint).
fn removed_wal_hint(logfile: &std::path::Path) -> String {
    let log = std::fs::read_to_string(logfile).unwrap_or_default();
    if log.contains("has already been removed") {
        format!(
            "it needs WAL the primary has already recycled (see {}): keep more WAL on the members (wal_keep_size), give it a restore_command from the WAL archive, or re-clone it",
            logfile.display()
        )
    } else {
        format!("see {}", logfile.display())
    }
}

/// How `site` streams from `primary`: with the plan's `replication.user`, else with the role
/// (and options) the primary itself streamed with when it was a standby — pg_hba often allows
/// replication for that role only — else with the member's own user.
pub async fn replication_conninfo(w: &Watched, site: &str, primary: &Member) -> String {
    let base = match &w.replication_user {
        Some(_) => None,
        None => match Session::connect(primary, Duration::from_secs(5)).await {
            Ok(s) => s.primary_conninfo().await.ok(),
            Err(_) => None,
        },
    };
    primary.standby_conninfo(site, base.as_deref(), w.replication_user.as_ref())
}

/// Make a stopped old primary a standby of `primary` (standby.signal, primary_conninfo with
/// application_name = its site) and start it.
pub async fn start_as_standby(w: &Watched, old: &Member, primary: &Member) -> Result<(), Error> {
    let data = lifeboat_pg::ops::data_dir(old)?;
    let conninfo = replication_conninfo(w, &old.site, primary).await;
    let owner = std::fs::metadata(&data).ok();
    let write = |name: &str, text: &str, append: bool| -> std::io::Result<()> {
        use std::io::Write;
        let path = data.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Some(md) = &owner {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid()))?;
        }
        Ok(())
    };
    write("standby.signal", "", false)
        .and_then(|_| {
            write(
                "postgresql.auto.conf",
                &format!(
                    "\n# lifeboat: standby of {} since {}\nprimary_conninfo = '{}'\nrecovery_target_timeline = 'latest'\n",
                    primary.site,
                    jiff::Timestamp::now(),
                    conninfo.replace('\'', "''")
                ),
                true,
            )
        })
        .map_err(|e| {
            Error::new(
                Kind::Io,
                format!("writing the standby configuration of {}: {e}", old.site),
            )
        })?;
    let (out, logfile) = start_logged(w, old, 300).await?;
    if !out.status.success() {
        return Err(Error::new(
            Kind::Source,
            format!(
                "{} did not start as a standby: {}",
                old.site,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint(removed_wal_hint(&logfile)));
    }
    Ok(())
}

/// Switch `w`'s primary over to `to`. `route`: the daemon's traffic endpoint, if any.
pub async fn switchover(
    w: &Watched,
    state: &StateFile,
    route: Option<&watch::Sender<Route>>,
    to: &str,
    timeout: Duration,
    progress: &(dyn Fn(&Step) + Send + Sync),
) -> Result<Report, Error> {
    let st = state.load()?;
    if let Some((t, e)) = &st.in_progress {
        return Err(Error::new(
            Kind::Conflict,
            format!(
                "a failover of {} to {t} (epoch {e}) is under way",
                w.service
            ),
        )
        .hint("let `lifeboat serve` finish it first"));
    }
    let target = member(w, to)?;
    let from = current_primary(w, &st).await?;
    if from == to {
        return Err(Error::new(
            Kind::Input,
            format!("{to} is already the primary of {}", w.service),
        ));
    }
    let old = member(w, &from)?;
    if old.data_dir.is_none() {
        return Err(Error::new(
            Kind::Input,
            format!("switchover stops the primary {from} cleanly and restarts it as a standby: it needs its data_dir on this host"),
        )
        .hint("run the switchover on the primary's host, or add its data_dir to the plan"));
    }
    let mut report = Report {
        service: w.service.clone(),
        from: from.clone(),
        to: to.into(),
        ..Default::default()
    };
    let mut clock = Clock {
        report: &mut report,
        at: Instant::now(),
        progress,
    };
    let t = prechecks(w, old, target).await?;
    clock.done(
        "pre-checks",
        format!("{from} primary, {to} streaming standby of the same cluster"),
    );

    // Intent: a daemon that dies from here on resumes a failover to the target, which is safe
    // (the old primary is stopped before the target is promoted).
    let epoch = st.epoch + 1;
    state.begin_switchover(to, epoch)?;
    let stopped_writes = Instant::now();
    if let Some(r) = route {
        let _ = r.send(Route {
            epoch,
            target: None,
        });
    }
    if let Err(e) = lifeboat_pg::ops::stop_fast(&w.bin_dir, old, 60).await {
        state.call_off()?;
        return Err(e);
    }
    let cd = lifeboat_pg::ops::control_data(&w.bin_dir, old).await?;
    let (final_lsn, clean) = (cd.checkpoint, cd.clean);
    clock.report.final_lsn = Some(Lsn(final_lsn).to_string());
    clock.done(
        "stop-writes",
        format!(
            "{from} shut down {}; final WAL position {}",
            if clean { "cleanly" } else { "NOT cleanly" },
            Lsn(final_lsn)
        ),
    );

    // Wait until the target has replayed the shutdown checkpoint.
    let replayed = match catch_up(&t, final_lsn, timeout).await? {
        Ok(replayed) => replayed,
        Err(replayed) => {
            // Call it off: the old primary takes writes again; nothing was lost.
            let reason = format!(
                "{to} replayed only up to {} of {from}'s final {} within {timeout:?}",
                Lsn(replayed),
                Lsn(final_lsn)
            );
            let restart = start_logged(w, old, 60).await.map(|(o, _)| o);
            let back = match restart {
                Ok(o) if o.status.success() => "writes are back on the old primary",
                _ => "the old primary did NOT start again: start it by hand",
            };
            state.call_off()?;
            clock.done("abort", format!("{reason}; {back}"));
            clock.report.aborted = Some(format!("{reason}; {back}"));
            return Ok(report);
        }
    };
    clock.done(
        "catch-up",
        format!(
            "{to} replayed up to {} (> {})",
            Lsn(replayed),
            Lsn(final_lsn)
        ),
    );

    t.promote().await?;
    t.check_write().await?;
    let downtime = stopped_writes.elapsed();
    clock.report.downtime_ms = Some(downtime.as_millis() as u64);
    clock.report.epoch = epoch;
    clock.done("promote", format!("{to} promoted and took a write"));
    state.complete(to, epoch)?;
    if let Some(r) = route {
        let _ = r.send(Route {
            epoch,
            target: Some(format!("{}:{}", target.host, target.port)),
        });
    }
    clock.done(
        "switch-traffic",
        format!("epoch {epoch}: traffic goes to {to}"),
    );

    // The old primary follows the new one.
    start_as_standby(w, old, target).await?;
    let following =
        await_streaming(w, target, &from, timeout.max(Duration::from_secs(10)), true).await?;
    clock.report.old_primary_streaming = following;
    clock.done(
        "rejoin",
        if following {
            format!(
                "{from} streams from {to} as a standby{}",
                if w.is_sync() { " (synchronous)" } else { "" }
            )
        } else {
            format!("{from} started as a standby but does not stream from {to} yet: see its log")
        },
    );
    Ok(report)
}

/// Who is primary: the daemon's record, or the one member that says so.
async fn current_primary(w: &Watched, st: &crate::coord::FailoverState) -> Result<String, Error> {
    if let Some(p) = &st.primary {
        return Ok(p.clone());
    }
    let mut from = None;
    for m in &w.members {
        if let Ok(s) = Session::connect(m, w.timeout()).await {
            if matches!(s.in_recovery().await, Ok(false)) {
                from = Some(m.site.clone());
            }
        }
    }
    from.ok_or_else(|| Error::new(Kind::Source, format!("{}: no member is primary", w.service)))
}

/// The pre-checks: the primary answers as primary; the target is a standby of the same
/// cluster that streams from it. The session to the target, for the rest.
async fn prechecks(w: &Watched, old: &Member, target: &Member) -> Result<Session, Error> {
    let (from, to) = (&old.site, &target.site);
    let p = Session::connect(old, w.timeout().max(Duration::from_secs(2))).await?;
    if p.in_recovery().await? {
        return Err(Error::new(
            Kind::Source,
            format!("{from} is not a primary (it is in recovery)"),
        ));
    }
    let t = Session::connect(target, w.timeout().max(Duration::from_secs(2))).await?;
    if !t.in_recovery().await? {
        return Err(Error::new(
            Kind::Source,
            format!(
                "{to} is not a standby: two primaries? run `lifeboat status {}`",
                w.service
            ),
        ));
    }
    if p.system_id().await? != t.system_id().await? {
        return Err(Error::new(
            Kind::Source,
            format!("{to} belongs to another cluster (system identifier differs from {from}'s)"),
        ));
    }
    let streaming = p.standby_state(to).await?;
    if streaming != "streaming" {
        return Err(Error::new(
            Kind::Source,
            format!("{to} does not stream from {from} (pg_stat_replication: {:?}): a switchover would wait for WAL it cannot receive",
                if streaming.is_empty() { "not listed" } else { streaming.as_str() }),
        )
        .hint(format!("standbys must connect with application_name = their site ({to})")));
    }
    Ok(t)
}

/// Wait until the target has replayed past `final_lsn`: `Ok(position)`, or `Err(position)`
/// when `timeout` passed first.
async fn catch_up(
    t: &Session,
    final_lsn: u64,
    timeout: Duration,
) -> Result<Result<u64, u64>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let replayed = t.replay_lsn().await?;
        if replayed > final_lsn {
            return Ok(Ok(replayed));
        }
        if Instant::now() > deadline {
            return Ok(Err(replayed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until `site` streams from `primary`; in a sync tier (and `make_sync`) it then becomes
/// the primary's synchronous standby (RPO 0 protected again). Whether it streams.
pub async fn await_streaming(
    w: &Watched,
    primary: &Member,
    site: &str,
    timeout: Duration,
    make_sync: bool,
) -> Result<bool, Error> {
    let s = Session::connect(primary, Duration::from_secs(5)).await?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if s.standby_state(site).await? == "streaming" {
            if w.is_sync() && make_sync {
                s.set_synchronous_standby(site).await?;
            }
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

/// A switchover, recorded in the evidence log (`switchover`: ok, aborted or failed).
pub async fn run_switchover(
    w: &Watched,
    state: &StateFile,
    route: Option<&watch::Sender<Route>>,
    to: &str,
    timeout: Duration,
    ctx: &Context,
    progress: &(dyn Fn(&Step) + Send + Sync),
) -> Result<Report, Error> {
    let started = Instant::now();
    let r = switchover(w, state, route, to, timeout, progress).await;
    let (outcome, figures) = match &r {
        Ok(rep) if rep.aborted.is_some() => {
            ("aborted", serde_json::to_value(rep).unwrap_or_default())
        }
        Ok(rep) => ("ok", serde_json::to_value(rep).unwrap_or_default()),
        Err(e) => (
            "failed",
            serde_json::json!({"to": to, "error": e.to_string()}),
        ),
    };
    if let Err(e) = ctx.record("switchover", &w.service, outcome, started, figures) {
        log(
            "error",
            &w.service,
            serde_json::json!({"error": format!("evidence log: {e}")}),
        );
    }
    r
}
