//! `lifeboat rejoin SERVICE SITE`: make a failed old primary a standby of the current
//! primary. First a **divergence report**: the WAL the old primary wrote on its timeline after
//! the point where the new primary's timeline forked off — the transactions a failover threw
//! away — decoded with `pg_waldump`, saved to a file and summarised in the evidence log. Then
//! `pg_rewind` (the member's own configuration files kept: pg_rewind would copy the source's),
//! or — when rewind is impossible (no data checksums or wal_log_hints, WAL gone) — a fresh clone
//! with `pg_basebackup`, saying so. Finally it starts as a standby and, in a sync tier, becomes
//! the synchronous standby again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_core::wal::Lsn;
use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};

use crate::world::Watched;
use lifeboat_pg::ops::Session;
use lifeboat_pg::Member;

/// What the old primary wrote that the new timeline does not have.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Divergence {
    /// The old primary's timeline and the new primary's.
    pub old_timeline: u32,
    pub new_timeline: u32,
    /// Where the new timeline forked off the old one.
    pub fork_lsn: String,
    /// End of the old primary's WAL (none: nothing after the fork).
    pub old_end_lsn: Option<String>,
    /// Bytes of WAL discarded.
    pub bytes: u64,
    /// Transactions committed after the fork on the old primary (lost to clients that saw them
    /// acknowledged), with their commit times.
    pub commits: Vec<(u32, String)>,
    pub aborts: usize,
    /// Records by resource manager and kind, e.g. `Heap/INSERT` → 12.
    pub records: std::collections::BTreeMap<String, usize>,
    /// Relations written to (as `relname` when the new primary knows the file node).
    pub relations: Vec<String>,
    /// The full `pg_waldump` output.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub service: String,
    pub member: String,
    pub primary: String,
    pub divergence: Option<Divergence>,
    /// `pg_rewind`, `pg_basebackup` (rewind impossible), or `none` (nothing to undo).
    pub method: String,
    /// Why rewind was impossible, when it was.
    pub rewind_error: Option<String>,
    pub streaming: bool,
    pub ms: u64,
}

/// Decode the old primary's WAL from the fork point to its end.
/// Whether `pg_wal` holds a segment of timeline `tli` at or after the one holding `fork`
/// (where the old primary may have written after the fork). The segment size is the WAL
/// files' own (16 MiB when none is there to say).
fn wrote_after(pg_wal: &Path, tli: u32, fork: u64) -> bool {
    let files: Vec<(String, u64)> = std::fs::read_dir(pg_wal)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.to_string(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    let seg_size = files
        .iter()
        .find(|(n, len)| n.len() == 24 && len.is_power_of_two())
        .map_or(16 << 20, |(_, len)| *len);
    let fork_seg = lifeboat_core::wal::segno_of(Lsn(fork), seg_size);
    files.iter().any(|(n, _)| {
        matches!(
            lifeboat_core::wal::WalFile::parse(n, seg_size),
            Some(lifeboat_core::wal::WalFile::Segment { timeline, segno }
                | lifeboat_core::wal::WalFile::Partial { timeline, segno })
                if timeline == tli && segno >= fork_seg
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn divergence(
    bin_dir: &Path,
    service: &str,
    data: &Path,
    old_tli: u32,
    new_tli: u32,
    fork: u64,
    out_dir: &Path,
    site: &str,
) -> Result<Divergence, Error> {
    let mut d = Divergence {
        old_timeline: old_tli,
        new_timeline: new_tli,
        fork_lsn: Lsn(fork).to_string(),
        ..Default::default()
    };
    if !wrote_after(&data.join("pg_wal"), old_tli, fork) {
        // The old primary's WAL ends where the new timeline begins (a fork on a segment
        // boundary, after a segment switch): nothing was written after it.
        return Ok(d);
    }
    let out = lifeboat_pg::tool::waldump(bin_dir, data, old_tli, Lsn(fork))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // pg_waldump stops at the end of valid WAL: "invalid record length at X" (or "… at X:
    // …" for other end markers); the last record's end is the end of the old timeline.
    let mut end: Option<u64> = None;
    for l in text.lines() {
        let lsn = l
            .split("lsn: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse::<Lsn>().ok());
        let len = l
            .split("len (rec/tot):")
            .nth(1)
            .and_then(|r| r.split('/').nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(a), Some(n)) = (lsn, len) {
            end = Some(a.0 + n);
        }
        let rmgr = l
            .split("rmgr: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        let desc = l.split("desc: ").nth(1).unwrap_or("");
        let kind = desc.split_whitespace().next().unwrap_or("?");
        if rmgr == "?" {
            continue;
        }
        *d.records.entry(format!("{rmgr}/{kind}")).or_default() += 1;
        if rmgr == "Transaction" && kind == "COMMIT" {
            let xid = l
                .split("tx:")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(0);
            let when = desc
                .trim_start_matches("COMMIT")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if xid != 0 {
                d.commits.push((xid, when));
            }
        } else if rmgr == "Transaction" && kind == "ABORT" {
            d.aborts += 1;
        }
        for part in l.split("rel ").skip(1) {
            if let Some(r) = part.split_whitespace().next() {
                let r = r.trim_end_matches([',', ';']).to_string();
                if !d.relations.contains(&r) {
                    d.relations.push(r);
                }
            }
        }
    }
    // No valid record at or after the fork: the old primary wrote nothing the new timeline
    // lacks (a torn record at the fork was never flushed, so never acknowledged).
    let nothing_after = err.contains(&format!(
        "could not find a valid record after {}",
        Lsn(fork)
    ));
    if end.is_none()
        && !err.contains("invalid record length")
        && !nothing_after
        && !out.status.success()
    {
        return Err(Error::new(
            Kind::Source,
            format!("pg_waldump on {site}'s WAL: {}", err.trim()),
        ));
    }
    d.old_end_lsn = end.map(|e| Lsn(e).to_string());
    d.bytes = end.map(|e| e.saturating_sub(fork)).unwrap_or(0);
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", out_dir.display())))?;
    let file = out_dir.join(format!(
        "{service}-{site}-{}.waldump.txt",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    ));
    std::fs::write(&file, format!("{text}{err}"))
        .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", file.display())))?;
    d.file = Some(file);
    Ok(d)
}

/// Why the primary behind `ps` no longer has its WAL from `fork` on (the segment holding it,
/// on its current timeline, is gone from pg_wal), or None when it has it (or cannot say).
async fn wal_gone_since(ps: &Session, fork: u64) -> Option<String> {
    // pg_walfile_name names the segment holding the byte *before* an LSN on a segment
    // boundary; the standby needs the one the new timeline starts in.
    let name = ps.walfile_name(fork + 1).await.ok()?;
    let there = ps.has_wal_file(&name).await.ok()?;
    (!there).then(|| {
        format!(
            "the new primary no longer has its WAL from the fork at {} (segment {name} was recycled): a rewound standby could not catch up",
            Lsn(fork)
        )
    })
}

/// The newest timeline named by a WAL segment or history file in `wal` (0 if none).
fn newest_timeline(wal: &Path) -> u32 {
    std::fs::read_dir(wal)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.len() == 24 || n.ends_with(".history"))
                .filter_map(|n| u32::from_str_radix(n.get(..8)?, 16).ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Crash recovery of a stopped, crashed data directory in single-user mode, with
/// `wal_keep_size` covering all of its `pg_wal` so the recovery's checkpoint removes nothing.
async fn crash_recovery(bin_dir: &Path, data: &Path) -> Result<(), Error> {
    let wal_bytes: u64 = std::fs::read_dir(data.join("pg_wal"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let keep_mb = wal_bytes / (1 << 20) + 256;
    let out = lifeboat_pg::tool::single_user_recovery(bin_dir, data, keep_mb).await?;
    if !out.status.success() {
        return Err(Error::new(
            Kind::Source,
            format!(
                "crash recovery of {} failed: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint("its server log says why; once it starts on its own (pg_ctl start, then stop), run `lifeboat rejoin` again, or re-clone it"));
    }
    Ok(())
}

/// The configuration files at the top of a data directory (pg_rewind replaces them with the
/// source's: the rejoining member must keep its own port, names and access rules).
fn config_files(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(data) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// Rejoin `site` as a standby of the current primary.
pub async fn rejoin(
    w: &Watched,
    state_dir: &Path,
    site: &str,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report, Error> {
    rejoin_to(w, state_dir, site, None, true, progress).await
}

/// Rejoin `site` as a standby. `leader`: for an agent, the member holding the leader key —
/// only it counts as the primary to follow, and it makes the rejoined member synchronous
/// itself (the leader's agent owns `synchronous_standby_names`). Without it: the one other
/// member answering as primary, and in a sync tier the rejoined member is made synchronous
/// here. `may_clone`: where pg_rewind is impossible, clone the member again (else fail, the
/// member left stopped).
pub async fn rejoin_to(
    w: &Watched,
    state_dir: &Path,
    site: &str,
    leader: Option<&str>,
    may_clone: bool,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report, Error> {
    let started = Instant::now();
    let old = w
        .members
        .iter()
        .find(|m| m.site == site)
        .ok_or_else(|| Error::new(Kind::Input, format!("{} has no member {site}", w.service)))?
        .clone();
    let data = old.data_dir.clone().ok_or_else(|| {
        Error::new(
            Kind::Input,
            format!("rejoin rewrites {site}'s data directory: it needs its data_dir on this host"),
        )
    })?;
    // The primary: the one member that answers as such, and it is not `site`.
    let mut primary: Option<(Member, Session)> = None;
    for m in &w.members {
        if leader.is_some_and(|l| l != m.site && m.site != site) {
            continue;
        }
        if let Ok(s) = Session::connect(m, Duration::from_secs(3)).await {
            if matches!(s.in_recovery().await, Ok(false)) {
                if m.site == site && leader.is_some() {
                    return Err(Error::new(
                        Kind::Conflict,
                        format!(
                            "{site} runs as a primary while another member leads: not rejoined"
                        ),
                    ));
                }
                if m.site == site {
                    let recorded = crate::coord::StateFile::new(state_dir, &w.service)
                        .load()?
                        .primary;
                    if recorded.as_deref() == Some(site) || recorded.is_none() {
                        return Err(Error::new(
                            Kind::Input,
                            format!(
                                "{site} is the primary of {}: there is nothing to rejoin",
                                w.service
                            ),
                        ));
                    }
                    // A writable old primary: stop it cleanly first.
                    progress(&format!("{site} still runs as a primary: stopping it"));
                    drop(s);
                    lifeboat_pg::ops::stop_fast(&w.bin_dir, &old, 60).await?;
                    continue;
                }
                primary = Some((m.clone(), s));
            }
        }
    }
    let (pm, ps) = primary.ok_or_else(|| match leader {
        // An agent: the leader it saw in etcd does not answer as primary (yet, or any more).
        Some(l) => Error::new(
            Kind::Source,
            format!("{}: the leader {l} does not answer as primary", w.service),
        )
        .hint("the agent tries again; check the leader's agent and server (`lifeboat status`)"),
        None => Error::new(
            Kind::Source,
            format!("{}: no other member answers as primary", w.service),
        )
        .hint(format!(
            "a rejoined member follows a running primary: check `lifeboat status {0}`, or fail over first (`lifeboat failover {0}`)",
            w.service
        )),
    })?;
    // Stopped? (A standby that runs already is stopped too: it is re-pointed.)
    if lifeboat_pg::ops::running(&old) {
        progress(&format!("stopping {site}"));
    }
    // Also clears what a crashed postmaster left behind (a stale pid file).
    lifeboat_pg::ops::stop_fast(&w.bin_dir, &old, 60).await?;
    let mut report = Report {
        service: w.service.clone(),
        member: site.into(),
        primary: pm.site.clone(),
        ..Default::default()
    };
    // Where the timelines part: the old member's last checkpoint timeline, the primary's
    // current one (the probe reads it from the WAL file name: pg_control's lags right after a
    // promotion, until the first checkpoint).
    // The old member's pg_control lags too when it died soon after its own promotion (a
    // switchover back, then a crash): the newest timeline in its pg_wal is the one it was on.
    let old_tli = lifeboat_pg::ops::control_data(&w.bin_dir, &old)
        .await?
        .timeline
        .max(newest_timeline(&data.join("pg_wal")));
    let new_tli = lifeboat_pg::health::probe(&pm, Duration::from_secs(5))
        .await
        .timeline
        .ok_or_else(|| {
            Error::new(
                Kind::Source,
                format!("{} did not say which timeline it is on", pm.site),
            )
        })?;
    let mut fork: Option<u64> = None;
    if new_tli > old_tli {
        let history = ps.timeline_history(new_tli).await?;
        fork = history.lines().find_map(|l| {
            let mut p = l.split_whitespace();
            let t: u32 = p.next()?.parse().ok()?;
            (t == old_tli).then(|| p.next()?.parse::<Lsn>().ok().map(|l| l.0))?
        });
    }
    if let Some(f) = fork {
        let (bin_dir, service, d2, out_dir, s2) = (
            w.bin_dir.clone(),
            w.service.clone(),
            data.clone(),
            state_dir.join("divergence"),
            site.to_string(),
        );
        let div = tokio::task::spawn_blocking(move || {
            divergence(&bin_dir, &service, &d2, old_tli, new_tli, f, &out_dir, &s2)
        })
        .await
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))??;
        progress(&format!(
            "divergence: {} bytes of WAL on {site}'s timeline {old_tli} after the fork at {} ({} committed transaction(s)); saved to {}",
            div.bytes,
            div.fork_lsn,
            div.commits.len(),
            div.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default()
        ));
        report.divergence = Some(div);
    }
    let diverged = report.divergence.as_ref().is_some_and(|d| d.bytes > 0);
    // Rewind (keeping the member's own configuration), or clone again.
    let saved = config_files(&data);
    report.method = "none".into();
    if diverged || fork.is_some() {
        // pg_rewind reads the source's timeline from its control file, which a freshly
        // promoted primary updates only at its next checkpoint: without one, pg_rewind finds
        // "the same timeline" and does nothing.
        ps.checkpoint().await?;
        // A crashed member needs crash recovery first. pg_rewind would run it with the
        // member's settings, and its end-of-recovery checkpoint recycles the WAL before it —
        // including the segments back to the last checkpoint before the fork, which pg_rewind
        // then needs and no longer finds ("could not find previous WAL record"): a re-clone
        // where a rewind would do. Lifeboat runs it itself, keeping every segment there is.
        if !lifeboat_pg::ops::control_data(&w.bin_dir, &old)
            .await?
            .clean
        {
            progress(&format!(
                "{site} was not shut down cleanly: crash recovery (single-user, its WAL kept for pg_rewind)"
            ));
            crash_recovery(&w.bin_dir, &data).await?;
        }
        // The rewound member replays the new primary's WAL from the fork on: if the new
        // primary has recycled that segment, the standby could never catch up (it would wait
        // for WAL "already removed"). Rewind is impossible then: clone again.
        let gone = match fork {
            Some(f) => wal_gone_since(&ps, f).await,
            None => None,
        };
        // Ok: rewound; Err: why a rewind is impossible (then the member is cloned again).
        let rewound: Result<(), String> = match gone {
            Some(why) => Err(why),
            None => {
                let out = lifeboat_pg::tool::rewind(&w.bin_dir, &data, &pm).await?;
                let said = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                if out.status.success() && said.contains("no rewind required") && diverged {
                    return Err(Error::new(
                        Kind::Source,
                        format!("pg_rewind found nothing to rewind, but {site} diverged: refusing to start it as a standby"),
                    ));
                }
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .filter(|l| l.contains("error") || l.contains("fatal"))
                        .collect::<Vec<_>>()
                        .join("; "))
                }
            }
        };
        if let Err(why) = rewound {
            if !may_clone {
                return Err(Error::new(
                    Kind::Source,
                    format!("pg_rewind is impossible ({why}): {site} stays stopped"),
                )
                .hint(format!(
                    "`lifeboat rejoin {} {site}` clones it again (its directory kept beside), or set coordinator.rejoin: clone; turn on wal_log_hints or data checksums so a rewind can be used",
                    w.service
                )));
            }
            progress(&format!(
                "pg_rewind is impossible ({why}): cloning {site} again from {} with pg_basebackup",
                pm.site
            ));
            report.rewind_error = Some(why);
            reclone(w, &old, &pm, &data).await?;
            report.method = "pg_basebackup".into();
        } else {
            report.method = "pg_rewind".into();
            progress(&format!(
                "pg_rewind: {site} rewound to {}'s timeline",
                pm.site
            ));
        }
        // Its own configuration back (pg_rewind and pg_basebackup bring the source's).
        for (p, b) in &saved {
            let _ = std::fs::write(p, b);
        }
    }
    drop(ps);
    crate::switchover::start_as_standby(w, &old, &pm).await?;
    progress(&format!("{site} started as a standby of {}", pm.site));
    report.streaming =
        crate::switchover::await_streaming(w, &pm, site, Duration::from_secs(30), leader.is_none())
            .await?;
    report.ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Clone `old` again from the primary (its old directory is kept beside, renamed).
async fn reclone(w: &Watched, old: &Member, pm: &Member, data: &Path) -> Result<(), Error> {
    let aside = data.with_file_name(format!(
        "{}.lifeboat-old-{}",
        data.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    ));
    let md = std::fs::metadata(data)
        .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", data.display())))?;
    std::fs::rename(data, &aside)
        .and_then(|_| std::fs::create_dir(data))
        .and_then(|_| {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
            std::os::unix::fs::chown(data, Some(md.uid()), Some(md.gid()))
        })
        .map_err(|e| Error::new(Kind::Io, format!("moving {} aside: {e}", data.display())))?;
    // As the standby will stream: the replication role (pg_hba may allow only it), through
    // the environment (never a password on the command line).
    let conninfo = crate::switchover::replication_conninfo(w, &old.site, pm).await;
    let out = lifeboat_pg::tool::clone_from(&w.bin_dir, data, pm, &conninfo).await?;
    if !out.status.success() {
        return Err(Error::new(
            Kind::Source,
            format!(
                "pg_basebackup of {} from {}: {}",
                old.site,
                pm.site,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint(format!(
            "{}'s old data directory is kept at {}",
            old.site,
            aside.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_written_after_a_fork_on_a_segment_boundary() {
        let d = tempfile::tempdir().unwrap();
        let seg = |name: &str| {
            std::fs::File::create(d.path().join(name))
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
        };
        seg("000000010000000000000002");
        seg("000000010000000000000003");
        std::fs::write(
            d.path().join("000000010000000000000003.00000028.backup"),
            "x",
        )
        .unwrap();
        // The new timeline begins at 0/4000000: the old one ends with segment 3.
        assert!(!wrote_after(d.path(), 1, 0x400_0000));
        // A fork inside segment 3: the old primary may have written after it.
        assert!(wrote_after(d.path(), 1, 0x380_0000));
        // Another timeline's files do not count.
        seg("000000020000000000000004");
        assert!(!wrote_after(d.path(), 1, 0x400_0000));
        seg("000000010000000000000004");
        assert!(wrote_after(d.path(), 1, 0x400_0000));
    }
}
