//! Base backups read from the data directory itself, with PostgreSQL's non-exclusive backup
//! API on one session (`pg_backup_start()` … `pg_backup_stop()`), as pgBackRest does when it
//! runs on the database host; and PostgreSQL's rules for what a base backup leaves out.
//!
//! While the backup runs, a temporary physical replication slot (created before the start
//! checkpoint, dropped with the session) keeps every WAL segment from the backup's start in
//! `pg_wal`, so the segments the backup needs are copied into it after the stop, and the
//! backup restores even without the WAL archive — as `pg_basebackup -X stream` does. If the
//! session ends before the stop (the backup failed, the process was killed), PostgreSQL ends
//! the backup itself and drops the slot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_core::wal::Lsn;
use lifeboat_core::{Error, Kind};

use crate::ops::{Session, CHECKPOINT_DEADLINE};
use crate::Member;

/// What becomes of a data directory entry in a base backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Keep,
    /// Left out with everything under it.
    Skip,
    /// A directory kept empty (PostgreSQL recreates what it needs in it).
    Empty,
    /// Read whole until two reads agree (`pg_control`, rewritten in place).
    Stable,
}

/// Directories whose contents a base backup leaves out (PostgreSQL's `basebackup.c`): runtime
/// state rebuilt at start. `pg_wal` is added after the stop with the segments the backup needs.
const EMPTY_DIRS: [&str; 8] = [
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_wal",
];

/// Files of the data directory's top a base backup leaves out.
const SKIP_FILES: [&str; 8] = [
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label.old",
];

/// PostgreSQL's rules for one data directory: which entries a base backup keeps.
#[derive(Clone, Debug, Default)]
pub struct DataDirRules {
    /// Unlogged relations (`dir/relfilenode` with an `_init` fork): only the init fork is
    /// kept, the rest is reset at recovery.
    unlogged: HashSet<PathBuf>,
}

/// `16384`, `16384.1`, `16384_fsm`, `16384_vm.2`, `16384_init` → ("16384", fork).
fn relation_parts(name: &str) -> Option<(&str, &str)> {
    let base = name.split('.').next()?;
    if let Some(seg) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) {
        if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let (node, fork) = match base.split_once('_') {
        Some((n, f)) if ["fsm", "vm", "init"].contains(&f) => (n, f),
        Some(_) => return None,
        None => (base, "main"),
    };
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some((node, fork))
}

/// Whether `dir` (relative to the data directory) holds relation files: `global`,
/// `base/<db oid>`, or a tablespace's `pg_tblspc/<oid>/<version dir>/<db oid>`.
fn is_relation_dir(dir: &Path) -> bool {
    let c: Vec<&str> = dir.iter().filter_map(|c| c.to_str()).collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match c.as_slice() {
        ["global"] => true,
        ["base", db] => digits(db),
        ["pg_tblspc", ts, _, db] => digits(ts) && digits(db),
        _ => false,
    }
}

/// Whether a path (on disk or in a snapshot: its last components decide) is a relation file:
/// 8 KiB pages changed in place, cut in fixed-size chunks.
pub fn is_relation_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if relation_parts(name).is_none() {
        return false;
    }
    let Some(dir) = path.parent() else {
        return false;
    };
    let tail: Vec<&std::ffi::OsStr> = dir.iter().collect();
    (1..=4.min(tail.len())).any(|n| {
        let sub: PathBuf = tail[tail.len() - n..].iter().collect();
        is_relation_dir(&sub)
    })
}

impl DataDirRules {
    /// Look for unlogged relations (their `_init` forks) in the data directory.
    pub fn scan(data: &Path) -> Self {
        let mut unlogged = HashSet::new();
        let mut dirs = vec![PathBuf::from("global")];
        if let Ok(rd) = std::fs::read_dir(data.join("base")) {
            dirs.extend(rd.flatten().map(|e| Path::new("base").join(e.file_name())));
        }
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(data.join(&d)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if let Some((node, "init")) = name.to_str().and_then(relation_parts) {
                    unlogged.insert(d.join(node));
                }
            }
        }
        Self { unlogged }
    }

    /// What a base backup does with `rel` (relative to the data directory).
    pub fn rule(&self, rel: &Path, is_dir: bool) -> Rule {
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            return Rule::Keep;
        };
        let top = rel.parent().is_none_or(|p| p.as_os_str().is_empty());
        if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
            return Rule::Skip;
        }
        if top {
            if is_dir && EMPTY_DIRS.contains(&name) {
                return Rule::Empty;
            }
            if !is_dir && SKIP_FILES.contains(&name) {
                return Rule::Skip;
            }
        }
        if is_dir {
            return Rule::Keep;
        }
        if rel == Path::new("global/pg_control") {
            return Rule::Stable;
        }
        let dir = rel.parent().unwrap_or(Path::new(""));
        if is_relation_dir(dir) {
            // Temporary relations (`t<backend>_<relfilenode>`) belong to sessions.
            if name.starts_with('t')
                && name[1..].split_once('_').is_some_and(|(b, r)| {
                    b.bytes().all(|c| c.is_ascii_digit()) && relation_parts(r).is_some()
                })
            {
                return Rule::Skip;
            }
            if let Some((node, fork)) = relation_parts(name) {
                if fork != "init" && self.unlogged.contains(&dir.join(node)) {
                    return Rule::Skip;
                }
            }
        }
        Rule::Keep
    }
}

/// Why the data directory cannot be read here, or where it is.
pub fn local_data_dir(m: &Member, system_id: &str) -> Result<PathBuf, String> {
    let Some(dir) = m.data_dir.clone() else {
        return Err(format!("the plan gives no data_dir for member {}", m.site));
    };
    let control = dir.join("global/pg_control");
    let bytes = std::fs::read(&control)
        .map_err(|e| format!("{} cannot be read on this host: {e}", control.display()))?;
    let pid_file = std::fs::read_to_string(dir.join("postmaster.pid"))
        .map_err(|_| format!("no server runs from {} on this host", dir.display()))?;
    let mut lines = pid_file.lines();
    let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
    let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
    if !pid.is_some_and(crate::ops::alive) {
        return Err(format!(
            "the server of {} is not running on this host",
            dir.display()
        ));
    }
    if port != Some(m.port) {
        return Err(format!(
            "the server running from {} listens on port {}, not the member's {}",
            dir.display(),
            port.map_or("?".into(), |p| p.to_string()),
            m.port
        ));
    }
    // pg_control starts with the cluster's system identifier.
    let here = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")).to_string());
    if here.as_deref() != Some(system_id) {
        return Err(format!(
            "{} belongs to another cluster (system identifier {}, the server says {system_id})",
            dir.display(),
            here.unwrap_or_default()
        ));
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// What `pg_backup_stop()` returned, with the server's clock after it.
#[derive(Clone, Debug)]
pub struct Stopped {
    pub lsn: Lsn,
    pub label: String,
    pub tablespace_map: String,
    /// Unix microseconds on the server's clock.
    pub time_micros: i64,
}

/// Why a backup could not be taken on the data directory.
#[derive(Debug)]
pub enum StartError {
    /// This way cannot work here (another server runs from the directory, no replication
    /// slot free): streaming the backup may.
    Unsuitable(Error),
    /// The server failed or did not answer: any other way would too.
    Failed(Error),
}

/// One session holding a non-exclusive base backup open.
pub struct BackupSession {
    rt: tokio::runtime::Runtime,
    session: Session,
    version: i32,
    /// The server's WAL segment size (bytes).
    pub wal_segment_size: u64,
}

impl BackupSession {
    /// Connect, check that the server runs from `data` (its `data_directory`), reserve WAL with
    /// a temporary slot and start the backup (a fast checkpoint: it may take minutes on a busy
    /// server, bounded by `checkpoint_limit`).
    pub fn start(
        m: &Member,
        data: &Path,
        label: &str,
        version: i32,
        checkpoint_limit: Duration,
    ) -> Result<Self, StartError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Failed(Error::new(Kind::Internal, format!("runtime: {e}"))))?;
        use StartError::{Failed, Unsuitable};
        let label = label.replace('\'', "''");
        let (session, wal_segment_size) = rt.block_on(async {
            let s = Session::connect(m, Duration::from_secs(10))
                .await
                .map_err(Failed)?;
            // Needs superuser or pg_read_all_settings; without them, streaming may still work.
            let dd = s.text("SHOW data_directory").await.map_err(|e| {
                Unsuitable(e.hint("GRANT pg_read_all_settings TO the member's role to read the data directory in place"))
            })?;
            let same = std::fs::canonicalize(&dd).ok() == std::fs::canonicalize(data).ok();
            if !same {
                return Err(Unsuitable(Error::new(
                    Kind::Source,
                    format!(
                        "{} runs from {dd}, not from {} on this host",
                        m.describe(),
                        data.display()
                    ),
                )));
            }
            let seg: u64 = s
                .text("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
                .await
                .map_err(Failed)?
                .parse()
                .map_err(|_| {
                    Failed(Error::new(
                        Kind::Source,
                        format!("{}: wal_segment_size is not a number", m.describe()),
                    ))
                })?;
            // Before the start checkpoint: it keeps everything from the last redo point on.
            s.exec(&format!(
                "SELECT pg_create_physical_replication_slot('lifeboat_backup_{}', true, true)",
                std::process::id()
            ))
            .await
            .map_err(|e| {
                Unsuitable(e.hint("the backup reserves WAL with a temporary replication slot: raise max_replication_slots by one"))
            })?;
            let sql = if version >= 150_000 {
                format!("SELECT pg_backup_start('{label}', true)")
            } else {
                format!("SELECT pg_start_backup('{label}', true, false)")
            };
            // The fast checkpoint: bounded by the job's stall limit, as pg_basebackup's wait
            // for its first byte is. Where the backup starts comes from the backup_label
            // pg_backup_stop() returns.
            match tokio::time::timeout(
                checkpoint_limit,
                s.client.query_one(sql.as_str(), &[]),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let err = Error::new(
                        Kind::Source,
                        format!("{} (starting the backup): {}", m.describe(), crate::db_error_text(&e)),
                    );
                    // A role with REPLICATION but no right to pg_backup_start() can still
                    // stream a backup with pg_basebackup.
                    let denied = e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
                    return Err(if denied {
                        Unsuitable(err.hint("GRANT EXECUTE ON FUNCTION pg_backup_start, pg_backup_stop TO the member's role (and pg_read_all_settings) to read the data directory in place"))
                    } else {
                        Failed(err)
                    });
                }
                Err(_) => {
                    return Err(Failed(Error::new(
                        Kind::Source,
                        format!(
                            "{}: the backup's start checkpoint made no progress for {} s (the job's stall_timeout)",
                            m.describe(),
                            checkpoint_limit.as_secs()
                        ),
                    )
                    .hint("check the server (a stuck checkpointer or an overloaded disk), or raise the job's stall_timeout")))
                }
            };
            Ok((s, seg))
        })?;
        Ok(Self {
            rt,
            session,
            version,
            wal_segment_size,
        })
    }

    /// End the backup: the stop position, the `backup_label` and `tablespace_map` contents.
    /// On a primary PostgreSQL switches to a new WAL segment, so the last one is complete.
    /// Archiving is not waited for: the segments are copied into the backup.
    pub fn stop(&self) -> Result<Stopped, Error> {
        let sql = if self.version >= 150_000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let s = &self.session;
        self.rt.block_on(async {
            let row = s
                .within_for(CHECKPOINT_DEADLINE, sql, s.client.query_one(sql, &[]))
                .await?;
            let lsn: String = row.get(0);
            let time: i64 = s
                .text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text")
                .await?
                .parse()
                .map_err(|_| Error::new(Kind::Source, "the server's clock unreadable"))?;
            Ok(Stopped {
                lsn: lsn
                    .parse()
                    .map_err(|e: String| Error::new(Kind::Source, e))?,
                label: row.get::<_, Option<String>>(1).unwrap_or_default(),
                tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
                time_micros: time,
            })
        })
    }
}

/// The WAL files of `pg_wal` a backup from `start` to `stop` needs: its segments on any
/// timeline (a standby may switch during the backup) and every timeline history file.
pub fn wal_for_backup(
    data: &Path,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
) -> std::io::Result<Vec<String>> {
    use lifeboat_core::wal::{segno_of, WalFile};
    let (first, last) = (segno_of(start, seg_size), segno_of(stop, seg_size));
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("pg_wal"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        match WalFile::parse(&name, seg_size) {
            Some(WalFile::Segment { segno, .. }) if (first..=last).contains(&segno) => {
                out.push(name)
            }
            Some(WalFile::History { .. }) => out.push(name),
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_apart_from_the_rest() {
        for p in [
            "base/5/16384",
            "base/5/16384.12",
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "/var/lib/pg/data/global/1262",
            "/snap/pgdata/base/1/2619_init",
            "pg_tblspc/16400/PG_15_202209061/5/16401",
        ] {
            assert!(is_relation_file(Path::new(p)), "{p}");
        }
        for p in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "pg_xact/0000",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "base/5/16384.x",
            "base/5/16384_foo",
            "pg_multixact/members/0000",
        ] {
            assert!(!is_relation_file(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn the_rules_leave_out_what_postgresql_rebuilds_and_keep_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::create_dir_all(d.join("base/5")).expect("mkdir");
        for f in ["16384", "16384_fsm", "16384.1", "16384_init", "16390"] {
            std::fs::write(d.join("base/5").join(f), b"").expect("write");
        }
        let r = DataDirRules::scan(d);
        let rule = |p: &str, dir: bool| r.rule(Path::new(p), dir);
        assert_eq!(
            rule("base/5/16384", false),
            Rule::Skip,
            "unlogged main fork"
        );
        assert_eq!(rule("base/5/16384.1", false), Rule::Skip);
        assert_eq!(rule("base/5/16384_fsm", false), Rule::Skip);
        assert_eq!(
            rule("base/5/16384_init", false),
            Rule::Keep,
            "its init fork"
        );
        assert_eq!(rule("base/5/16390", false), Rule::Keep);
        assert_eq!(
            rule("base/5/t3_16400", false),
            Rule::Skip,
            "temporary relation"
        );
        assert_eq!(rule("base/pgsql_tmp", true), Rule::Skip);
        assert_eq!(rule("base/5/pg_internal.init", false), Rule::Skip);
        assert_eq!(rule("pg_wal", true), Rule::Empty);
        assert_eq!(rule("pg_replslot", true), Rule::Empty);
        assert_eq!(rule("pg_xact", true), Rule::Keep);
        assert_eq!(rule("postmaster.pid", false), Rule::Skip);
        assert_eq!(rule("backup_label", false), Rule::Skip);
        assert_eq!(rule("postgresql.conf", false), Rule::Keep);
        assert_eq!(rule("global/pg_control", false), Rule::Stable);
        // Only at the top: a database may have a file called like that.
        assert_eq!(rule("base/5/postmaster.pid", false), Rule::Keep);
    }

    #[test]
    fn the_data_directory_is_read_in_place_only_when_its_running_server_is_the_member() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let m = Member {
            service: "db".into(),
            site: "a".into(),
            host: "127.0.0.1".into(),
            port: 5999,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
            data_dir: Some(d.to_path_buf()),
            netns: None,
        };
        let why = |m: &Member, id: &str| local_data_dir(m, id).expect_err("refused");
        assert!(why(
            &Member {
                data_dir: None,
                ..m.clone()
            },
            "1"
        )
        .contains("no data_dir"));
        assert!(why(&m, "1").contains("cannot be read on this host"));
        std::fs::create_dir_all(d.join("global")).expect("mkdir");
        let mut control = 7_000_000_000_000_000_001u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(d.join("global/pg_control"), &control).expect("write");
        assert!(why(&m, "1").contains("no server runs from"));
        let me = std::process::id();
        std::fs::write(
            d.join("postmaster.pid"),
            format!("{me}\n{}\n1\n5432\n", d.display()),
        )
        .expect("write");
        assert!(
            why(&m, "1").contains("listens on port 5432"),
            "{}",
            why(&m, "1")
        );
        std::fs::write(
            d.join("postmaster.pid"),
            format!("{me}\n{}\n1\n5999\n", d.display()),
        )
        .expect("write");
        assert!(why(&m, "42").contains("belongs to another cluster"));
        let ok = local_data_dir(&m, "7000000000000000001").expect("the member's own directory");
        assert_eq!(ok, std::fs::canonicalize(d).expect("canonical"));
        std::fs::write(d.join("postmaster.pid"), "999999999\n").expect("write");
        assert!(why(&m, "7000000000000000001").contains("not running on this host"));
    }
}
