//! PostgreSQL backups: physical base backups (`pg_basebackup`, streamed, with a fast
//! checkpoint) and logical dumps (`pg_dump -Fc`), each written as one tagged snapshot.
//!
//! A base backup is staged in the state directory and then archived as `/pgdata`; it carries
//! its own WAL (`-X stream`), so it restores even without the WAL archive, and its tags record
//! where it starts and ends (`pg.start_lsn`, `pg.stop_lsn`, `pg.timeline`, `pg.stop_time`,
//! `pg.system_id`) so recovery can pick the right one for a target.

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_core::plan::{BackupJob, BackupMethod, BaseVia, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_store::{BackupSummary, SnapshotTags, Store};

use lifeboat_context::Context;
use lifeboat_pg::basebackup::StartError;
use lifeboat_pg::{manifest_end_lsn, parse_backup_label, PgService};

/// Removes a staging directory however the backup ends.
pub(crate) struct Staging(pub PathBuf);

impl Staging {
    pub fn new(ctx: &Context, name: &str) -> Result<Self, Error> {
        let dir = ctx
            .state_dir
            .join("spool")
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::new(Kind::Io, format!("cannot create {}: {e}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(
    ctx: &Context,
    store: &Store,
    job_name: &str,
    job: &BackupJob,
    svc: &Service,
    mut tags: SnapshotTags,
    full: bool,
) -> Result<BackupSummary, Error> {
    let pg = PgService::from_plan(&job.service, svc, &ctx.base)?;
    let (member, info) = pg.pick(job.from.as_deref())?;
    tags.extra.push(("pg.member".into(), member.site.clone()));
    tags.extra
        .push(("pg.system_id".into(), info.system_id.clone()));
    tags.extra
        .push(("pg.version".into(), info.version_num.to_string()));
    // Tablespaces outside the data directory would be written to their original paths by a
    // plain-format pg_basebackup: refuse them clearly instead.
    let extra_ts = member.outside_tablespaces()?;
    if extra_ts > 0 && job.method.unwrap_or_default() == BackupMethod::Base {
        return Err(Error::new(
            Kind::Source,
            format!(
                "{} has {extra_ts} tablespace(s) outside the data directory: base backups of those are not supported yet",
                member.describe()
            ),
        )
        .hint("use a `method: dump` job for this cluster meanwhile"));
    }
    let stall = job
        .stall_timeout
        .map(|d| d.std())
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_secs(1));
    let BackupMethod::Base = job.method.unwrap_or_default() else {
        return dump(ctx, store, job_name, job, &pg, &member, tags, stall);
    };
    let via = job.via.unwrap_or_default();
    let local = match via {
        BaseVia::Stream => Err("the job says `via: stream`".to_string()),
        _ if !store.has_pipeline()? => Err(format!(
            "repository {} is a version 1 repository",
            store.spec.name
        )),
        _ => lifeboat_pg::basebackup::local_data_dir(&member, &info.system_id),
    };
    let why = match local {
        Ok(dir) => match direct(store, job_name, job, &member, &info, tags.clone(), &dir, stall, full) {
            Ok(s) => return Ok(s),
            Err(StartError::Failed(e)) => return Err(e),
            Err(StartError::Unsuitable(e)) if via == BaseVia::Files => return Err(e),
            Err(StartError::Unsuitable(e)) => format!(
                "the backup could not start on the data directory: {}{}",
                e.message,
                e.hint.map(|h| format!("; to read it in place: {h}")).unwrap_or_default()
            ),
        },
        Err(why) if via == BaseVia::Files => {
            return Err(Error::new(
                Kind::Source,
                format!("cannot read the data directory of {}: {why}", member.describe()),
            )
            .hint("run the backup on the member's host (its `data_dir` in the plan), or set the job's `via` to `auto` or `stream`"))
        }
        Err(why) => why,
    };
    let staging = Staging::new(ctx, job_name)?;
    let data = staging.0.join("pgdata");
    lifeboat_pg::tool::basebackup(
        &member,
        &pg.tool("pg_basebackup"),
        &data,
        &format!("lifeboat {job_name}"),
        stall,
    )?;
    // The end of the backup on the server's clock: recovery targets are compared with
    // commit times the server wrote, so a skewed local clock must not pick the backup.
    let stop_time = member
        .clock_micros()
        .ok()
        .and_then(|us| jiff::Timestamp::from_microsecond(us).ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap_or_default();
    let (start, tli) = parse_backup_label(&label)
        .ok_or_else(|| Error::new(Kind::Source, "pg_basebackup wrote no readable backup_label"))?;
    let manifest = std::fs::read_to_string(data.join("backup_manifest")).unwrap_or_default();
    let stop = manifest_end_lsn(&manifest).ok_or_else(|| {
        Error::new(
            Kind::Source,
            "pg_basebackup wrote no backup_manifest with WAL ranges",
        )
    })?;
    tags.extra.extend([
        ("pg.via".into(), "stream".into()),
        ("pg.start_lsn".into(), start.to_string()),
        ("pg.stop_lsn".into(), stop.to_string()),
        ("pg.timeline".into(), tli.to_string()),
        (
            "pg.stop_time".into(),
            stop_time.as_microsecond().to_string(),
        ),
    ]);
    // Never archive a lock file or a stale pid as part of the backup.
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    let mut s = store.backup_dir_as(&data, "/pgdata", &tags)?;
    s.via = Some(format!("streamed with pg_basebackup ({why})"));
    Ok(s)
}

/// The facts `pg_backup_stop()` gives, kept for the snapshot's tags.
struct StopFacts {
    start: lifeboat_core::wal::Lsn,
    stop: lifeboat_core::wal::Lsn,
    timeline: u32,
    time_micros: i64,
}

/// The previous base backup of this data directory a new one may take unchanged files from,
/// or why there is none to trust (then every file is read and hashed: a full checksum pass).
fn parent_base(
    store: &Store,
    service: &str,
    member: &lifeboat_pg::Member,
    info: &lifeboat_pg::ServerInfo,
    data: &std::path::Path,
) -> Result<(Option<lifeboat_store::SnapshotInfo>, String), Error> {
    let data_tag = data.display().to_string();
    let last = store
        .snapshots()?
        .into_iter()
        .filter(|s| s.service.as_deref() == Some(service))
        .filter(|s| s.tag("pg.via").as_deref() == Some("files"))
        .filter(|s| s.tag("pg.data_dir").as_deref() == Some(data_tag.as_str()))
        .filter(|s| s.tag("pg.member").as_deref() == Some(member.site.as_str()))
        .filter_map(|s| BaseBackup::from_snapshot(&s).map(|b| (s, b)))
        .max_by_key(|(s, _)| s.timestamp);
    let Some((p, b)) = last else {
        return Ok((
            None,
            "no earlier base backup of this data directory: every file read".into(),
        ));
    };
    let short = &p.id[..8];
    if b.system_id != info.system_id {
        return Ok((
            None,
            format!("the cluster was recreated since base backup {short}: every file read"),
        ));
    }
    if i64::from(b.timeline) != i64::from(info.timeline) {
        return Ok((None, format!("the timeline changed since base backup {short} ({} → {}): every file read and checked", b.timeline, info.timeline)));
    }
    if p.timestamp > jiff::Timestamp::now().as_second() {
        return Ok((None, format!("this host's clock is behind base backup {short}'s time: every file read and checked")));
    }
    let note = format!("files unchanged since base backup {short} taken from it");
    Ok((Some(p), note))
}

/// A base backup read from the data directory on this host, between `pg_backup_start()` and
/// `pg_backup_stop()` on one session.
#[allow(clippy::too_many_arguments)]
fn direct(
    store: &Store,
    job_name: &str,
    job: &BackupJob,
    member: &lifeboat_pg::Member,
    info: &lifeboat_pg::ServerInfo,
    mut tags: SnapshotTags,
    data: &std::path::Path,
    stall: Duration,
    full: bool,
) -> Result<BackupSummary, StartError> {
    use lifeboat_pg::basebackup::{
        is_relation_file, wal_for_backup, BackupSession, DataDirRules, Rule,
    };
    use lifeboat_store::tree_source::{Extra, Treat, TreeSource};
    use std::sync::{Arc, Mutex};

    let (parent, parent_note) = if full {
        (None, "a full backup: every file read".to_string())
    } else {
        parent_base(store, &job.service, member, info, data).map_err(StartError::Unsuitable)?
    };
    // A file written in the same clock tick as the parent read it keeps its mtime: only files
    // last modified a second before the parent began are taken unread.
    let unchanged_before = parent
        .as_ref()
        .and_then(|p| jiff::Timestamp::from_second(p.timestamp - 1).ok());
    tags.extra.extend([
        ("pg.via".into(), "files".into()),
        ("pg.data_dir".into(), data.display().to_string()),
    ]);
    let session = BackupSession::start(
        member,
        data,
        &format!("lifeboat {job_name}"),
        info.version_num,
        stall,
    )?;
    lifeboat_context::failpoint::pause("base-backup-started");
    let seg_size = session.wal_segment_size;
    let facts = Arc::new(Mutex::new(None::<StopFacts>));
    let rules = DataDirRules::scan(data);
    let trailer = {
        let (facts, data) = (facts.clone(), data.to_path_buf());
        move || -> Result<Vec<Extra>, Error> {
            let stopped = session.stop()?;
            drop(session);
            let (start, timeline) = parse_backup_label(&stopped.label).ok_or_else(|| {
                Error::new(
                    Kind::Source,
                    "pg_backup_stop() returned no readable backup_label",
                )
            })?;
            let wal = wal_for_backup(&data, start, stopped.lsn, seg_size).map_err(|e| {
                Error::new(
                    Kind::Io,
                    format!("listing {}: {e}", data.join("pg_wal").display()),
                )
            })?;
            let first = lifeboat_core::wal::segment_name(
                timeline,
                lifeboat_core::wal::segno_of(start, seg_size),
                seg_size,
            );
            if !wal.contains(&first) {
                return Err(lifeboat_store::Error::new(
                    lifeboat_store::Kind::Source,
                    format!("WAL segment {first}, where the backup starts, is gone from pg_wal"),
                )
                .hint("something removed WAL the backup's replication slot was holding: run the backup again"));
            }
            let mut extras = vec![
                Extra::Dir {
                    rel: "pg_wal".into(),
                    from: data.join("pg_wal"),
                },
                Extra::Dir {
                    rel: "pg_wal/archive_status".into(),
                    from: data.join("pg_wal/archive_status"),
                },
            ];
            extras.extend(wal.iter().map(|name| Extra::File {
                rel: std::path::Path::new("pg_wal").join(name),
                from: data.join("pg_wal").join(name),
            }));
            extras.push(Extra::Bytes {
                rel: "backup_label".into(),
                data: stopped.label.into_bytes(),
            });
            if !stopped.tablespace_map.is_empty() {
                extras.push(Extra::Bytes {
                    rel: "tablespace_map".into(),
                    data: stopped.tablespace_map.into_bytes(),
                });
            }
            *facts.lock().expect("facts") = Some(StopFacts {
                start,
                stop: stopped.lsn,
                timeline,
                time_micros: stopped.time_micros,
            });
            Ok(extras)
        }
    };
    let source = TreeSource::new(
        data,
        move |rel, is_dir| match rules.rule(rel, is_dir) {
            Rule::Keep => Treat::Keep,
            Rule::Skip => Treat::Skip,
            Rule::Empty => Treat::Empty,
            Rule::Stable => Treat::Stable,
        },
        trailer,
    )
    .map_err(StartError::Failed)?;
    let mut s = store
        .backup_tree(
            &source,
            "/pgdata",
            &tags,
            parent.as_ref().map(|p| p.id.as_str()),
            unchanged_before,
            Some(is_relation_file),
            || {
                let f = facts
                    .lock()
                    .expect("facts")
                    .take()
                    .ok_or_else(|| Error::new(Kind::Internal, "the backup was not stopped"))?;
                Ok(vec![
                    ("pg.start_lsn".into(), f.start.to_string()),
                    ("pg.stop_lsn".into(), f.stop.to_string()),
                    ("pg.timeline".into(), f.timeline.to_string()),
                    ("pg.stop_time".into(), f.time_micros.to_string()),
                ])
            },
        )
        .map_err(StartError::Failed)?;
    // Pages written while the backup read them are expected: WAL replay from the start
    // checkpoint repairs them. Say how many, not which.
    let changed = std::mem::take(&mut s.changed_while_read).len();
    s.via = Some(format!(
        "read the data directory {} on this host; {parent_note}{}",
        data.display(),
        if changed > 0 {
            format!("; {changed} file(s) written while read (WAL replay completes them)")
        } else {
            String::new()
        }
    ));
    Ok(s)
}

/// Logical dumps (`pg_dump -Fc`) of the service's databases, staged then archived.
#[allow(clippy::too_many_arguments)]
fn dump(
    ctx: &Context,
    store: &Store,
    job_name: &str,
    job: &BackupJob,
    pg: &PgService,
    member: &lifeboat_pg::Member,
    tags: SnapshotTags,
    stall: Duration,
) -> Result<BackupSummary, Error> {
    if pg.databases.is_empty() {
        return Err(Error::new(
            Kind::Input,
            format!(
                "job {job_name} dumps service {} but the service lists no `databases`",
                job.service
            ),
        ));
    }
    let staging = Staging::new(ctx, job_name)?;
    for db in pg.databases {
        lifeboat_pg::tool::dump(
            member,
            &pg.tool("pg_dump"),
            db,
            &staging.0.join(format!("{db}.dump")),
            stall,
        )?;
    }
    store.backup_dir_as(&staging.0, "/dumps", &tags)
}

/// The base backup's recorded facts, from a snapshot's tags.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BaseBackup {
    pub snapshot: String,
    pub job: Option<String>,
    pub start_lsn: lifeboat_core::wal::Lsn,
    pub stop_lsn: lifeboat_core::wal::Lsn,
    pub timeline: u32,
    /// Unix microseconds: the backup is consistent for any target after this.
    pub stop_time: i64,
    pub system_id: String,
}

impl BaseBackup {
    pub fn from_snapshot(s: &lifeboat_store::SnapshotInfo) -> Option<Self> {
        if s.kind.as_deref() != Some("base") {
            return None;
        }
        let tag = |k: &str| s.tag(k);
        Some(Self {
            snapshot: s.id.clone(),
            job: s.job.clone(),
            start_lsn: tag("pg.start_lsn")?.parse().ok()?,
            stop_lsn: tag("pg.stop_lsn")?.parse().ok()?,
            timeline: tag("pg.timeline")?.parse().ok()?,
            stop_time: tag("pg.stop_time")?.parse().ok()?,
            system_id: tag("pg.system_id").unwrap_or_default(),
        })
    }
}

/// Base backups of a service in a repository, oldest first.
pub fn base_backups(store: &Store, service: &str) -> Result<Vec<BaseBackup>, Error> {
    Ok(store
        .snapshots()?
        .iter()
        .filter(|s| s.service.as_deref() == Some(service))
        .filter_map(BaseBackup::from_snapshot)
        .collect())
}
