//! PostgreSQL backups: physical base backups (`pg_basebackup`, streamed, with a fast
//! checkpoint) and logical dumps (`pg_dump -Fc`), each written as one tagged snapshot.
//!
//! A base backup is staged in the state directory and then archived as `/pgdata`; it carries
//! its own WAL (`-X stream`), so it restores even without the WAL archive, and its tags record
//! where it starts and ends (`pg.start_lsn`, `pg.stop_lsn`, `pg.timeline`, `pg.stop_time`,
//! `pg.system_id`) so recovery can pick the right one for a target.

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_core::plan::{BackupJob, BackupMethod, Service};
use lifeboat_core::{Error, Kind};
use lifeboat_store::{BackupSummary, SnapshotTags, Store};

use lifeboat_context::Context;
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
    let staging = Staging::new(ctx, job_name)?;
    let stall = job
        .stall_timeout
        .map(|d| d.std())
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_secs(1));
    match job.method.unwrap_or_default() {
        BackupMethod::Base => {
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
            let (start, tli) = parse_backup_label(&label).ok_or_else(|| {
                Error::new(Kind::Source, "pg_basebackup wrote no readable backup_label")
            })?;
            let manifest =
                std::fs::read_to_string(data.join("backup_manifest")).unwrap_or_default();
            let stop = manifest_end_lsn(&manifest).ok_or_else(|| {
                Error::new(
                    Kind::Source,
                    "pg_basebackup wrote no backup_manifest with WAL ranges",
                )
            })?;
            tags.extra.extend([
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
            store.backup_dir_as(&data, "/pgdata", &tags)
        }
        BackupMethod::Dump => {
            if pg.databases.is_empty() {
                return Err(Error::new(
                    Kind::Input,
                    format!(
                        "job {job_name} dumps service {} but the service lists no `databases`",
                        job.service
                    ),
                ));
            }
            for db in pg.databases {
                lifeboat_pg::tool::dump(
                    &member,
                    &pg.tool("pg_dump"),
                    db,
                    &staging.0.join(format!("{db}.dump")),
                    stall,
                )?;
            }
            store.backup_dir_as(&staging.0, "/dumps", &tags)
        }
    }
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
        let tag = |k: &str| {
            let p = format!("{k}=");
            s.tags
                .iter()
                .find_map(|t| t.strip_prefix(&p).map(str::to_string))
        };
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
