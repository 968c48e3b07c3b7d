//! Operations on one PostgreSQL member that failover, switchover and rejoin share: a session
//! with errors that name the member, promotion that does not sit out PostgreSQL's retry sleep,
//! a write check, and stopping or starting a member whose data directory is on this host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_core::{Error, Kind};

use crate::{db_error_text, Member};

/// One connection to a member; errors say which member and what was being done. Every
/// statement has a deadline ([`QUERY_DEADLINE`], longer for a `CHECKPOINT`): a server that
/// accepts and then never answers (frozen, or cut off without a reset) ends the call with an
/// error instead of holding a failover, switchover or rejoin forever.
pub struct Session {
    pub site: String,
    pub(crate) client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
}

/// A primary's WAL archiver, from PostgreSQL's own statistics.
#[derive(Clone, Debug, Default)]
pub struct Archiver {
    /// Failed `archive_command` runs since the statistics were last reset.
    pub failed_count: u64,
    /// Unix seconds of the last failure and the last success.
    pub last_failed: Option<f64>,
    pub last_archived: Option<f64>,
    /// Segments waiting to be archived.
    pub waiting: Option<u64>,
}

/// The longest one statement may take before the session gives up on the server.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(60);
/// A `CHECKPOINT` writes every dirty buffer: on a big, busy server that takes minutes.
pub const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Session {
    pub async fn connect(m: &Member, timeout: Duration) -> Result<Session, Error> {
        let (client, conn) = m
            .async_config(timeout)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                Error::new(
                    Kind::Source,
                    format!("connecting to {}: {}", m.site, db_error_text(&e)),
                )
            })?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Session {
            site: m.site.clone(),
            client,
            conn,
        })
    }

    fn err(&self, what: &str, e: tokio_postgres::Error) -> Error {
        Error::new(
            Kind::Source,
            format!("{} ({what}): {}", self.site, db_error_text(&e)),
        )
    }

    /// `work` (one statement of `sql`) within its deadline.
    async fn within<T>(
        &self,
        sql: &str,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        let limit = if sql.trim().eq_ignore_ascii_case("CHECKPOINT") {
            CHECKPOINT_DEADLINE
        } else {
            QUERY_DEADLINE
        };
        self.within_for(limit, sql, work).await
    }

    /// `work` within `limit`.
    pub(crate) async fn within_for<T>(
        &self,
        limit: Duration,
        sql: &str,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r.map_err(|e| self.err(sql, e)),
            Err(_) => Err(Error::new(
                Kind::Source,
                format!(
                    "{} ({sql}): no answer within {} s: the server is hung or cut off",
                    self.site,
                    limit.as_secs()
                ),
            )
            .hint("check the member's host (is the postmaster stopped or starved?) and the network, then run the command again")),
        }
    }

    /// Run statements (no result).
    pub async fn exec(&self, sql: &str) -> Result<(), Error> {
        self.within(sql, self.client.batch_execute(sql)).await
    }

    /// One text value (NULL as empty).
    pub async fn text(&self, sql: &str) -> Result<String, Error> {
        let row = self.within(sql, self.client.query_one(sql, &[])).await?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    }

    /// On a primary: what its archiver says (`pg_stat_archiver`), and how many WAL segments
    /// wait to be archived (`.ready` files; None without the right to list them).
    pub async fn archiver(&self) -> Result<Archiver, Error> {
        let sql = "SELECT failed_count, extract(epoch FROM last_failed_time)::float8, extract(epoch FROM last_archived_time)::float8 FROM pg_stat_archiver";
        let row = self.within(sql, self.client.query_one(sql, &[])).await?;
        let waiting_sql =
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'";
        let waiting = self
            .within(waiting_sql, self.client.query_one(waiting_sql, &[]))
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0) as u64);
        Ok(Archiver {
            failed_count: row.get::<_, i64>(0) as u64,
            last_failed: row.get(1),
            last_archived: row.get(2),
            waiting,
        })
    }

    pub async fn bool(&self, sql: &str) -> Result<bool, Error> {
        let row = self.within(sql, self.client.query_one(sql, &[])).await?;
        Ok(row.get(0))
    }

    /// On a primary: the replication state (`streaming`, `catchup`, …) of the standby that
    /// connects with application_name `site`, empty when it is not connected.
    pub async fn standby_state(&self, site: &str) -> Result<String, Error> {
        self.text(&format!(
            "SELECT coalesce(max(state), '') FROM pg_stat_replication WHERE application_name = '{}'",
            site.replace('\'', "''")
        ))
        .await
    }

    /// The cluster's system identifier.
    pub async fn system_id(&self) -> Result<String, Error> {
        self.text("SELECT system_identifier::text FROM pg_control_system()")
            .await
    }

    /// On a standby: the last WAL position replayed (0 when none).
    pub async fn replay_lsn(&self) -> Result<u64, Error> {
        Ok(self
            .text("SELECT pg_last_wal_replay_lsn()::text")
            .await?
            .parse::<lifeboat_core::wal::Lsn>()
            .map(|l| l.0)
            .unwrap_or(0))
    }

    /// The `primary_conninfo` a member streams with (empty on a primary).
    pub async fn primary_conninfo(&self) -> Result<String, Error> {
        self.text("SHOW primary_conninfo").await
    }

    /// A checkpoint (its own, longer deadline).
    pub async fn checkpoint(&self) -> Result<(), Error> {
        self.exec("CHECKPOINT").await
    }

    /// On a primary: the name of the WAL segment holding `lsn` on its current timeline.
    pub async fn walfile_name(&self, lsn: u64) -> Result<String, Error> {
        self.text(&format!(
            "SELECT pg_walfile_name('{}')",
            lifeboat_core::wal::Lsn(lsn)
        ))
        .await
    }

    /// Whether the server's pg_wal still holds the file `name`.
    pub async fn has_wal_file(&self, name: &str) -> Result<bool, Error> {
        self.bool(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_ls_waldir() WHERE name = '{}')",
            name.replace('\'', "")
        ))
        .await
    }

    /// The history file of timeline `tli` from the server's pg_wal.
    pub async fn timeline_history(&self, tli: u32) -> Result<String, Error> {
        self.text(&format!(
            "SELECT convert_from(pg_read_binary_file('pg_wal/{tli:08X}.history'), 'UTF8')"
        ))
        .await
    }

    /// Make exactly `site` the synchronous standby (ALTER SYSTEM and reload).
    pub async fn set_synchronous_standby(&self, site: &str) -> Result<(), Error> {
        self.set("synchronous_standby_names", &format!("\"{site}\""))
            .await
    }

    pub async fn in_recovery(&self) -> Result<bool, Error> {
        self.bool("SELECT pg_is_in_recovery()").await
    }

    /// Set a reloadable parameter with ALTER SYSTEM and reload (ALTER SYSTEM cannot run in a
    /// multi-statement batch: it refuses transaction blocks).
    pub async fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        let quoted = value.replace('\'', "''");
        self.exec(&format!("ALTER SYSTEM SET {name} = '{quoted}'"))
            .await?;
        self.exec("SELECT pg_reload_conf()").await
    }

    /// Promote a standby and wait until it leaves recovery (60 s at most). Returns the
    /// `synchronous_standby_names` it had if they were cleared first: a promoted standby that
    /// names synchronous standbys would make every commit wait for a standby that follows
    /// nobody yet.
    pub async fn promote(&self) -> Result<Option<String>, Error> {
        let ssn = self.text("SHOW synchronous_standby_names").await?;
        let cleared = if ssn.trim().is_empty() {
            None
        } else {
            self.set("synchronous_standby_names", "").await?;
            Some(ssn)
        };
        // pg_promote(wait => true) polls every 100 ms; ask without waiting and poll faster.
        if !self.bool("SELECT pg_promote(false)").await? {
            return Err(Error::new(
                Kind::Source,
                format!(
                    "{} refused to promote (pg_promote returned false)",
                    self.site
                ),
            ));
        }
        let asked = Instant::now();
        let mut nudged = asked;
        while self.in_recovery().await? {
            if asked.elapsed() > Duration::from_secs(60) {
                return Err(Error::new(
                    Kind::Source,
                    format!(
                        "{} was asked to promote but is still in recovery after 60 s",
                        self.site
                    ),
                )
                .hint("see its server log"));
            }
            // PostgreSQL 15's startup process can take the promote request and then sleep out
            // wal_retrieve_retry_interval (5 s by default) before acting on it: the promotion
            // outliers seen with every orchestrator. A configuration reload sets its latch and
            // wakes it; harmless otherwise.
            if nudged.elapsed() >= Duration::from_millis(100) {
                let _ = self.exec("SELECT pg_reload_conf()").await;
                nudged = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(cleared)
    }

    /// A write commits (a temporary table: nothing is left behind).
    pub async fn check_write(&self) -> Result<(), Error> {
        self.exec(
            "CREATE TEMP TABLE lifeboat_write_probe(x int); INSERT INTO lifeboat_write_probe VALUES (1)",
        )
        .await
        .map_err(|e| {
            Error::new(
                Kind::Source,
                format!("{} refused a write: {}", self.site, e.message),
            )
        })
    }
}

/// Run a PostgreSQL tool as the owner of `data` (the data directory it works on), with
/// stdin closed and messages in English (callers parse them).
pub fn run_as_owner(
    cmd: &mut std::process::Command,
    data: &Path,
) -> Result<std::process::Output, Error> {
    crate::as_owner_of(cmd, data);
    output(cmd)
}

/// Run a tool with stdin closed and messages in English, as the caller set it up.
fn output(cmd: &mut std::process::Command) -> Result<std::process::Output, Error> {
    cmd.stdin(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            Error::new(
                Kind::Source,
                format!("{}: {e}", cmd.get_program().to_string_lossy()),
            )
        })
}

/// [`run_as_owner`] off the async runtime's threads.
pub async fn run_as_owner_async(
    mut cmd: std::process::Command,
    data: &Path,
) -> Result<std::process::Output, Error> {
    let data = data.to_path_buf();
    tokio::task::spawn_blocking(move || run_as_owner(&mut cmd, &data))
        .await
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))?
}

/// A member's data directory on this host.
pub fn data_dir(m: &Member) -> Result<PathBuf, Error> {
    m.data_dir.clone().ok_or_else(|| {
        Error::new(
            Kind::Input,
            format!("{} has no data_dir on this host", m.site),
        )
        .hint("add the member's data_dir to the plan, or run this on the member's host")
    })
}

/// Run `pg_ctl` on a member's local data directory, as the directory's owner.
pub async fn pg_ctl(
    bin_dir: &Path,
    m: &Member,
    args: &[&str],
) -> Result<std::process::Output, Error> {
    let data = data_dir(m)?;
    let mut c = std::process::Command::new(bin_dir.join("pg_ctl"));
    c.arg("-D").arg(&data).args(args);
    // A server started in its namespace (a lab's site); stop, promote and status only signal.
    let netns = m.netns.clone().filter(|_| args.first() == Some(&"start"));
    if netns.is_some() {
        crate::as_owner_of_in(&mut c, &data, netns.as_deref())?;
    }
    tokio::task::spawn_blocking(move || {
        if netns.is_some() {
            output(&mut c)
        } else {
            run_as_owner(&mut c, &data)
        }
    })
    .await
    .map_err(|e| Error::new(Kind::Internal, e.to_string()))?
}

/// The postmaster's pid from a member's local pid file (first line), if it has one.
pub(crate) fn postmaster_pid(m: &Member) -> Option<u32> {
    let d = m.data_dir.as_ref()?;
    let t = std::fs::read_to_string(d.join("postmaster.pid")).ok()?;
    t.lines().next()?.trim().parse().ok()
}

/// Whether process `pid` runs on this host (a zombie does not).
pub fn alive(pid: u32) -> bool {
    // The state follows the command name in parentheses; a zombie is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The live processes working in a member's data directory on this host (PostgreSQL's
/// processes run in it). After a `kill -9` of the postmaster its children linger until they
/// notice, and the dead postmaster's pid file (and, unreaped, its zombie) fool `pg_ctl status`.
pub fn processes(m: &Member) -> Vec<u32> {
    let Some(data) = m
        .data_dir
        .as_ref()
        .and_then(|d| std::fs::canonicalize(d).ok())
    else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data)
                && alive(*pid)
        })
        .collect()
}

/// Whether any process of the member's cluster runs on this host.
pub fn running(m: &Member) -> bool {
    !processes(m).is_empty()
}

/// Stop a member on this host (`pg_ctl stop -m fast`, waiting up to `secs`) and wait until
/// none of its processes is left. A member that does not run counts as stopped; anything that
/// keeps it running is an error.
pub async fn stop_fast(bin_dir: &Path, m: &Member, secs: u32) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(secs.into());
    let postmaster = postmaster_pid(m);
    let mut why = String::new();
    if postmaster.is_some_and(alive) {
        let out = pg_ctl(
            bin_dir,
            m,
            &["stop", "-m", "fast", "-w", "-t", &secs.to_string()],
        )
        .await?;
        let text = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !text.contains("Is server running?") {
            why = text.trim().to_string();
        }
    }
    // Without a postmaster its children exit on their own, within moments.
    while running(m) {
        if Instant::now() > deadline {
            if why.is_empty() {
                why = format!(
                    "processes {:?} still run in its data directory",
                    processes(m)
                );
            }
            return Err(
                Error::new(Kind::Source, format!("stopping {} failed: {why}", m.site)).hint(
                    format!(
                "it may still take writes: stop it by hand (pg_ctl stop -m immediate -D {})",
                m.data_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A killed postmaster's pid file names a process that is gone, or an unreaped zombie that
    // PostgreSQL's own check (kill 0) takes for a live server: nothing of the cluster runs any
    // more, so the file is stale and would only stop the next start (or pg_rewind's recovery).
    if let (Some(pid), Some(data)) = (postmaster, &m.data_dir) {
        if !alive(pid) {
            let _ = std::fs::remove_file(data.join("postmaster.pid"));
        }
    }
    Ok(())
}

/// Fence a member on this host at once: SIGKILL its postmaster first (no new backend can be
/// forked after it), then every process left in its data directory, until none is. Nothing
/// is acknowledged after this returns `Ok`; the server restarts with crash recovery. Used when
/// a leader's lease is about to run out, where a clean shutdown could take longer than the
/// time left.
pub fn kill_all(m: &Member) -> Result<usize, Error> {
    let mut killed = 0;
    if let Some(pid) = postmaster_pid(m).filter(|p| *p > 0 && alive(*p)) {
        // SAFETY: kill(2) with a pid read from the cluster's own pid file.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes(m);
        if left.is_empty() {
            return Ok(killed);
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                Kind::Source,
                format!(
                    "{} could not be stopped: processes {left:?} survive SIGKILL",
                    m.site
                ),
            )
            .hint(format!(
                "the server may still take writes: stop it by hand (kill -9 {}), then check that nothing runs in {}",
                left.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
                m.data_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )));
        }
        for pid in left {
            // SAFETY: kill(2) on a process found working in the member's data directory.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a stopped member's control file says (`pg_controldata`).
pub struct ControlData {
    /// Latest checkpoint location (a clean shutdown's is the last WAL it wrote).
    pub checkpoint: u64,
    /// Timeline of that checkpoint.
    pub timeline: u32,
    /// Shut down cleanly (not crashed, not in recovery).
    pub clean: bool,
    /// The cluster's system identifier.
    pub system_id: Option<String>,
}

pub async fn control_data(bin_dir: &Path, m: &Member) -> Result<ControlData, Error> {
    let data = data_dir(m)?;
    let mut c = std::process::Command::new(bin_dir.join("pg_controldata"));
    c.arg("-D").arg(&data);
    let out = run_as_owner_async(c, &data).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let checkpoint = field("Latest checkpoint location:")
        .and_then(|v| v.parse::<lifeboat_core::wal::Lsn>().ok())
        .ok_or_else(|| {
            Error::new(
                Kind::Source,
                format!(
                    "pg_controldata on {} gave no checkpoint location: {}",
                    m.site,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
        })?
        .0;
    Ok(ControlData {
        checkpoint,
        timeline: field("Latest checkpoint's TimeLineID:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        clean: field("Database cluster state:").as_deref() == Some("shut down"),
        system_id: field("Database system identifier:"),
    })
}
