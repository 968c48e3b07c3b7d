//! PostgreSQL backups: physical base backups (`pg_basebackup`, streamed, with a fast
//! checkpoint) and logical dumps (`pg_dump -Fc`), each written as one tagged snapshot.
//!
//! A base backup is staged in the state directory and then archived as `/pgdata`; it carries
//! its own WAL (`-X stream`), so it restores even without the WAL archive, and its tags record
//! where it starts and ends (`pg.start_lsn`, `pg.stop_lsn`, `pg.timeline`, `pg.stop_time`,
//! `pg.system_id`) so recovery can pick the right one for a target.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Run a PostgreSQL program; its stderr (last lines) goes into the error.
/// Bytes below `dir` (files only, recursively): how far a tool writing there has come.
fn bytes_below(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Run a PostgreSQL tool that writes below `progress`. One that writes nothing there for
/// `stall` is killed (with its process group) and the run fails: its server froze or the
/// network to it went silent, and the tool itself would wait forever.
fn run_watched(
    mut cmd: Command,
    what: &str,
    progress: &Path,
    stall: Duration,
) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    run_tool_inner(cmd, what, Some((progress, stall)))
}

/// Run a PostgreSQL tool to its end (one that returns at once, as `pg_ctl start`).
pub(crate) fn run_tool(cmd: Command, what: &str) -> Result<(), Error> {
    run_tool_inner(cmd, what, None)
}

fn run_tool_inner(
    mut cmd: Command,
    what: &str,
    watch: Option<(&Path, Duration)>,
) -> Result<(), Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            Kind::Source,
            format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()),
        )
        .hint("set bin_dir of the service in the plan to the directory holding the PostgreSQL programs")
    })?;
    // stderr on its own thread: a tool that fills the pipe must not block the watchdog.
    let reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = e.read_to_string(&mut err);
            err
        })
    });
    let mut seen = watch.map(|(p, _)| bytes_below(p)).unwrap_or(0);
    let mut moved = std::time::Instant::now();
    let mut checked = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(Error::new(Kind::Source, format!("{what}: {e}"))),
        }
        let Some((progress, stall)) = watch else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if checked.elapsed() >= Duration::from_secs(1).min(stall) {
            checked = std::time::Instant::now();
            let now = bytes_below(progress);
            if now != seen {
                seen = now;
                moved = std::time::Instant::now();
            } else if moved.elapsed() >= stall {
                // SAFETY: signalling the process group this function started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(Error::new(
                    Kind::Source,
                    format!(
                        "{what} wrote nothing for {} s and was stopped: the server is hung or the network to it went silent",
                        stall.as_secs()
                    ),
                )
                .hint("no snapshot was recorded; check the server, then run the backup again (the job's `stall_timeout` sets how long to wait)"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let tail = lifeboat_core::error::stderr_tail(&err, 4);
    let hint = if tail.contains("password authentication failed") || tail.contains("no password") {
        "check the member's user and password in the plan"
    } else if tail.contains("replication connection") || tail.contains("pg_hba.conf") {
        "the role needs the REPLICATION attribute and a `replication` line in pg_hba.conf"
    } else {
        "no snapshot was recorded; fix the cause and run the backup again"
    };
    Err(Error::new(Kind::Source, format!("{what} failed ({status}): {tail}")).hint(hint))
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
            let mut cmd = Command::new(pg.tool("pg_basebackup"));
            member.libpq_env(&mut cmd);
            cmd.arg("-D")
                .arg(&data)
                .args([
                    "-F",
                    "p",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-password",
                ])
                .args(["--manifest-checksums=NONE", "-l"])
                .arg(format!("lifeboat {job_name}"));
            run_watched(
                cmd,
                &format!("pg_basebackup of {}", member.describe()),
                &staging.0,
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
                let mut cmd = Command::new(pg.tool("pg_dump"));
                member.libpq_env(&mut cmd);
                cmd.env("PGDATABASE", db)
                    .args(["-F", "c", "--no-password", "-f"])
                    .arg(staging.0.join(format!("{db}.dump")));
                run_watched(
                    cmd,
                    &format!("pg_dump of database {db} on {}", member.describe()),
                    &staging.0,
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
