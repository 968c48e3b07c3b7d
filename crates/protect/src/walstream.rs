//! The streaming archive: while `lifeboat serve` runs, WAL of a service with `wal_stream`
//! comes from the primary over the replication protocol, from a physical replication slot, as
//! `pg_receivewal --synchronous` receives it (PostgreSQL's own client, supervised here), into a
//! spool in the state directory. Every `interval` the spool goes to the archive: complete
//! segments and history files as `wal push` stores them, and the segment being received as
//! far as it has come (replacing its previous copy), so the archive trails the primary by
//! about the interval instead of a whole segment.
//!
//! `archive_command` keeps running: for a segment already streamed it only confirms (same
//! content, nothing stored); whatever the stream missed — the daemon down, the slot dropped
//! behind its back, a failover to a primary the stream has not reached yet — it archives by
//! itself, so the archive has no gap the stream made. A dropped slot is reported (daemon log
//! and evidence log) and created again.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lifeboat_context::Context;
use lifeboat_core::plan::{Service, WalStream};
use lifeboat_core::wal::WalFile;
use lifeboat_core::{Error, Kind};
use lifeboat_pg::PgService;
use lifeboat_store::walarchive::WalArchive;

use crate::walsock::Log;

/// The services whose plan asks for a streaming archive, with their settings.
pub fn streaming_services(ctx: &Context) -> Vec<(String, WalStream)> {
    ctx.plan
        .services
        .iter()
        .filter_map(|(name, s)| match s {
            Service::Postgres {
                wal_stream: Some(ws),
                ..
            } => Some((name.clone(), ws.clone())),
            _ => None,
        })
        .collect()
}

/// Where the stream's files wait for the archive.
pub fn spool_dir(ctx: &Context, service: &str) -> PathBuf {
    ctx.state_dir.join("walstream").join(service)
}

/// What one pass over the spool stored.
#[derive(Default, Debug)]
pub struct Pass {
    /// Complete files archived (or found archived already).
    pub archived: Vec<String>,
}

/// The state of the segment being received, to store it only when it grew.
#[derive(Default)]
pub struct PartialSeen(Option<(String, SystemTime, u64)>);

/// Store what the spool holds: complete segments and history files (removed from the spool
/// once durable), then the partial segment if it changed. A file the archive refuses (same
/// name, other content) is moved aside into `refused/` and reported, never deleted.
pub fn upload(a: &WalArchive, spool: &Path, seen: &mut PartialSeen) -> Result<Pass, Error> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .map_err(|e| Error::new(Kind::Io, format!("listing {}: {e}", spool.display())))?
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let seg_size = a
        .meta()?
        .map_or(lifeboat_core::wal::DEFAULT_SEGMENT_SIZE, |m| m.seg_size);
    let mut pass = Pass::default();
    let mut partial = None;
    for name in names {
        let path = spool.join(&name);
        match WalFile::parse(&name, seg_size) {
            Some(f @ (WalFile::Segment { .. } | WalFile::History { .. })) => {
                let data = std::fs::read(&path).map_err(|e| {
                    Error::new(Kind::Io, format!("reading {}: {e}", path.display()))
                })?;
                match a.push(&name, &data) {
                    Ok(_) => {}
                    Err(e) if e.kind == Kind::Conflict => {
                        let aside = spool.join("refused");
                        let _ = std::fs::create_dir_all(&aside);
                        let _ = std::fs::rename(&path, aside.join(&name));
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                let _ = std::fs::remove_file(&path);
                if matches!(f, WalFile::Segment { .. }) {
                    a.drop_live(&name)?;
                }
                pass.archived.push(name);
            }
            Some(WalFile::Partial { .. }) => partial = Some(name),
            _ => {}
        }
    }
    if let Some(name) = partial {
        let path = spool.join(&name);
        let seg = name.trim_end_matches(".partial").to_string();
        let m = std::fs::metadata(&path)
            .map_err(|e| Error::new(Kind::Io, format!("reading {}: {e}", path.display())))?;
        let stamp = (
            seg.clone(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
        );
        if seen.0.as_ref() != Some(&stamp) {
            let data = std::fs::read(&path)
                .map_err(|e| Error::new(Kind::Io, format!("reading {}: {e}", path.display())))?;
            a.push_live(&seg, &data)?;
            seen.0 = Some(stamp);
        }
    }
    Ok(pass)
}

/// `pg_receivewal` with `args` for member `m`, killed if dropped.
fn receivewal(pg: &PgService, m: &lifeboat_pg::Member, args: &[&OsStr]) -> tokio::process::Command {
    let mut c = tokio::process::Command::from(lifeboat_pg::tool::receivewal(
        m,
        &pg.tool("pg_receivewal"),
        args,
    ));
    c.kill_on_drop(true);
    c
}

/// Create the slot on `m` if it is missing: `Ok(true)` when it was created now.
async fn ensure_slot(
    pg: &PgService<'_>,
    m: &lifeboat_pg::Member,
    slot: &str,
) -> Result<bool, String> {
    let mut c = receivewal(
        pg,
        m,
        &["--create-slot".as_ref(), "-S".as_ref(), slot.as_ref()],
    );
    match tokio::time::timeout(Duration::from_secs(30), c.output()).await {
        Ok(Ok(o)) if o.status.success() => Ok(true),
        Ok(Ok(o)) => {
            let text = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if text.contains("already exists") {
                Ok(false)
            } else {
                Err(text)
            }
        }
        Ok(Err(e)) => Err(format!("cannot run pg_receivewal: {e}")),
        Err(_) => Err("pg_receivewal --create-slot did not answer within 30 s".into()),
    }
}

/// Stream `service`'s WAL until `stop` turns true. Every change of state is logged
/// (`wal stream`); a dropped slot is also recorded in the evidence log.
pub async fn run(
    ctx: Context,
    service: String,
    ws: WalStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
    log: Log,
) {
    let slot = ws.slot_for(&service);
    let every = ws
        .interval
        .map(|d| d.std())
        .unwrap_or(Duration::from_millis(500))
        .max(Duration::from_millis(50));
    let spool = spool_dir(&ctx, &service);
    if let Err(e) = std::fs::create_dir_all(&spool) {
        log(
            "wal stream",
            &service,
            serde_json::json!({"action": "not streaming", "reason": format!("cannot create {}: {e}", spool.display())}),
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700));
    let archive = loop {
        let (c, s) = (ctx.clone(), service.clone());
        match tokio::task::spawn_blocking(move || crate::wal::archive(&c, &s)).await {
            Ok(Ok((a, _))) => break std::sync::Arc::new(a),
            Ok(Err(e)) => log(
                "wal stream",
                &service,
                serde_json::json!({"action": "waiting for the archive", "reason": e.message}),
            ),
            Err(_) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(PartialSeen::default()));
    let pass = |archive: std::sync::Arc<WalArchive>,
                spool: PathBuf,
                seen: std::sync::Arc<std::sync::Mutex<PartialSeen>>| async move {
        tokio::task::spawn_blocking(move || {
            let mut s = seen.lock().expect("seen");
            upload(&archive, &spool, &mut s)
        })
        .await
        .unwrap_or_else(|e| Err(Error::new(Kind::Internal, e.to_string())))
    };
    let mut last_reason = String::new();
    // This stream had a slot on that member.
    let marker = |site: &str| spool.join(format!(".slot-on-{site}"));
    while !*stop.borrow() {
        // Whatever the spool holds from before (a restart, a lost connection) goes first.
        if let Err(e) = pass(archive.clone(), spool.clone(), seen.clone()).await {
            log(
                "wal stream",
                &service,
                serde_json::json!({"action": "storing", "error": e.message}),
            );
        }
        let primary = {
            let c = ctx.clone();
            let s = service.clone();
            tokio::task::spawn_blocking(move || -> Result<lifeboat_pg::Member, Error> {
                let svc = c
                    .plan
                    .services
                    .get(&s)
                    .ok_or_else(|| Error::new(Kind::Input, "service gone"))?;
                let pg = PgService::from_plan(&s, svc, &c.base)?;
                pg.pick(None).map(|(m, _)| m)
            })
            .await
        };
        let member = match primary {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                if e.message != last_reason {
                    log(
                        "wal stream",
                        &service,
                        serde_json::json!({"action": "waiting for a primary", "reason": e.message}),
                    );
                    last_reason = e.message;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            Err(_) => return,
        };
        let svc = ctx.plan.services.get(&service).expect("the service");
        let Ok(pg) = PgService::from_plan(&service, svc, &ctx.base) else {
            return;
        };
        match ensure_slot(&pg, &member, &slot).await {
            Ok(true) if marker(&member.site).exists() => {
                // The slot this stream used is gone: somebody dropped it (or the server was
                // rebuilt). The WAL it held may be gone too; archive_command archives it.
                log(
                    "wal stream",
                    &service,
                    serde_json::json!({"action": "slot dropped", "member": member.site, "slot": slot, "fallback": "archive_command archives the segments the stream missed"}),
                );
                let _ = ctx.record(
                    "wal stream",
                    &service,
                    "slot dropped",
                    Instant::now(),
                    serde_json::json!({"member": member.site, "slot": slot, "fallback": "archive_command archives the segments the stream missed; created again"}),
                );
            }
            Ok(_) => {}
            Err(why) => {
                if why != last_reason {
                    log(
                        "wal stream",
                        &service,
                        serde_json::json!({"action": "cannot create the slot", "member": member.site, "slot": slot, "reason": why}),
                    );
                    last_reason = why;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        // Kept across restarts of the daemon: a slot missing at the next start is reported too.
        let _ = std::fs::write(marker(&member.site), slot.as_bytes());
        let stream_args: [&OsStr; 6] = [
            "-D".as_ref(),
            spool.as_os_str(),
            "-S".as_ref(),
            slot.as_ref(),
            "--synchronous".as_ref(),
            "--no-loop".as_ref(),
        ];
        let mut child = match receivewal(&pg, &member, &stream_args).spawn() {
            Ok(c) => c,
            Err(e) => {
                log(
                    "wal stream",
                    &service,
                    serde_json::json!({"action": "not streaming", "reason": format!("cannot run pg_receivewal: {e}")}),
                );
                return;
            }
        };
        log(
            "wal stream",
            &service,
            serde_json::json!({"action": "streaming", "member": member.site, "slot": slot}),
        );
        last_reason.clear();
        let mut stderr = child.stderr.take();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    match pass(archive.clone(), spool.clone(), seen.clone()).await {
                        Ok(p) => {
                            if !p.archived.is_empty() {
                                log("wal stream", &service, serde_json::json!({"action": "archived", "files": p.archived}));
                            }
                        }
                        Err(e) => log("wal stream", &service, serde_json::json!({"action": "storing", "error": e.message, "hint": e.hint})),
                    }
                }
                r = child.wait() => break r.ok(),
                _ = stop.changed() => {
                    if *stop.borrow() {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        let _ = pass(archive.clone(), spool.clone(), seen.clone()).await;
                        return;
                    }
                }
            }
        };
        let mut text = String::new();
        if let Some(mut e) = stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut text)).await;
        }
        let reason = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("pg_receivewal ended")
            .trim()
            .to_string();
        // A dropped slot is reported when it is created again (next round).
        log(
            "wal stream",
            &service,
            serde_json::json!({"action": "stopped", "member": member.site, "slot": slot, "status": ended.map(|s| s.to_string()), "reason": reason, "after_s": started.elapsed().as_secs()}),
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_named_after_the_service_unless_the_plan_names_it() {
        let ws = WalStream::default();
        assert_eq!(ws.slot_for("orders-db"), "lifeboat_orders_db");
        let named = WalStream {
            slot: Some("mine".into()),
            ..Default::default()
        };
        assert_eq!(named.slot_for("x"), "mine");
    }
}
