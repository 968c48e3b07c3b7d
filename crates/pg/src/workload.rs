//! The SQL of a drill's workload: a table per drill run, writes that say which server took
//! them (port, timeline, WAL position), and reading back what a server holds.
//!
//! Each write is one autocommit `INSERT` on a new connection, as a client reconnecting after a
//! failover would. The table has no unique key, so a write applied twice shows as a duplicate
//! instead of an error.

use std::time::Duration;

use lifeboat_core::{Error, Kind};

use crate::ops::Session;
use crate::{db_error_text, Member};

/// What the server that acknowledged a write said about itself.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Ack {
    /// `inet_server_port()` of the server that committed it.
    pub port: u16,
    /// Its WAL insert position just before the commit.
    pub lsn: u64,
    /// The timeline it wrote on.
    pub timeline: u32,
}

/// The outcome of one write attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Committed and acknowledged.
    Acked(Ack),
    /// Certainly not committed: no connection, or the server refused the statement.
    Failed(String),
    /// The connection broke or the deadline passed after the statement was sent: it may or
    /// may not have committed.
    Unknown(String),
}

/// The schema-qualified table of a drill run (`run` is the run's id: letters, digits, `_`).
pub fn table(run: &str) -> String {
    format!("lifeboat_drill.run_{}", lifeboat_core::name_part(run))
}

/// Create the run's table on the primary.
pub async fn prepare(s: &Session, run: &str) -> Result<(), Error> {
    s.exec(&format!(
        "CREATE SCHEMA IF NOT EXISTS lifeboat_drill; \
         CREATE TABLE IF NOT EXISTS {} (id bigint NOT NULL, writer int NOT NULL, \
         at timestamptz NOT NULL DEFAULT clock_timestamp())",
        table(run)
    ))
    .await
}

/// Drop the run's table (teardown, or the `corrupt-data` fault itself). Returns the server's
/// clock just before the drop, in Unix microseconds.
pub async fn drop_table(s: &Session, run: &str) -> Result<i64, Error> {
    let before = s
        .text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text")
        .await?
        .parse::<i64>()
        .map_err(|e| Error::new(Kind::Source, format!("server clock: {e}")))?;
    s.exec(&format!("DROP TABLE IF EXISTS {}", table(run)))
        .await?;
    Ok(before)
}

/// Every id the server holds for the run, with how many rows carry it.
pub async fn ids(s: &Session, run: &str) -> Result<Vec<(u64, u64)>, Error> {
    let text = s
        .text(&format!(
            "SELECT coalesce(string_agg(id || ':' || n, ',' ORDER BY id), '') \
             FROM (SELECT id, count(*) AS n FROM {} GROUP BY id) t",
            table(run)
        ))
        .await?;
    Ok(text
        .split(',')
        .filter_map(|p| {
            let (a, b) = p.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect())
}

/// One write of id `id` by `writer` through `m` (an endpoint or a member).
pub async fn write(m: &Member, run: &str, id: u64, writer: u32, timeout: Duration) -> Outcome {
    let started = tokio::time::Instant::now();
    let conn = tokio::time::timeout(
        timeout,
        m.async_config(timeout).connect(tokio_postgres::NoTls),
    )
    .await;
    let (client, conn) = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::Failed(db_error_text(&e)),
        Err(_) => return Outcome::Failed("connection timed out".into()),
    };
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let left = timeout.saturating_sub(started.elapsed());
    let sql = format!(
        "INSERT INTO {} (id, writer) VALUES ({id}, {writer}) \
         RETURNING inet_server_port(), pg_current_wal_insert_lsn()::text, \
         substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)",
        table(run)
    );
    let r = tokio::time::timeout(left, client.query_one(&sql, &[])).await;
    task.abort();
    match r {
        Ok(Ok(row)) => {
            let port: Option<i32> = row.get(0);
            let lsn: String = row.get(1);
            let tli: String = row.get(2);
            Outcome::Acked(Ack {
                port: port.unwrap_or(0) as u16,
                lsn: lsn
                    .parse::<lifeboat_core::wal::Lsn>()
                    .map(|l| l.0)
                    .unwrap_or(0),
                timeline: u32::from_str_radix(&tli, 16).unwrap_or(0),
            })
        }
        // The server answered with an error: the statement did not commit.
        Ok(Err(e)) if e.as_db_error().is_some() => Outcome::Failed(db_error_text(&e)),
        Ok(Err(e)) => Outcome::Unknown(db_error_text(&e)),
        Err(_) => Outcome::Unknown(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// The start of timeline `tli` on its parent, from the server's history file: the WAL
/// position where the promoted server's history forked from the old primary's.
pub async fn switchpoint(s: &Session, tli: u32) -> Result<Option<u64>, Error> {
    if tli <= 1 {
        return Ok(None);
    }
    let history = s.timeline_history(tli).await?;
    Ok(history
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|lsn| lsn.parse::<lifeboat_core::wal::Lsn>().ok())
        .map(|l| l.0))
}

/// The server's current timeline.
pub async fn timeline(s: &Session) -> Result<u32, Error> {
    let t = s
        .text("SELECT substr(pg_walfile_name(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END), 1, 8)")
        .await?;
    u32::from_str_radix(&t, 16)
        .map_err(|e| Error::new(Kind::Source, format!("timeline `{t}`: {e}")))
}

/// Switch to a new WAL segment (so the archive gets everything written so far); its name.
pub async fn switch_wal(s: &Session) -> Result<String, Error> {
    s.text("SELECT pg_walfile_name(pg_switch_wal())").await
}

/// Switch to a new segment and wait (up to `limit`) until the archive has everything written
/// so far.
pub async fn archive_now(s: &Session, limit: Duration) -> Result<(), Error> {
    let seg = switch_wal(s).await?;
    let deadline = tokio::time::Instant::now() + limit;
    while last_archived(s).await? < seg {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(
                Kind::Source,
                format!(
                    "segment {seg} was not archived within {} s",
                    limit.as_secs()
                ),
            )
            .hint("check archive_command (`lifeboat wal push`) in the server log"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The last segment the server archived (empty when none).
pub async fn last_archived(s: &Session) -> Result<String, Error> {
    s.text("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        .await
}

/// A single-value query's value as text (a steady-state check): booleans read `true` or
/// `false`, NULL reads empty.
pub async fn value(s: &Session, sql: &str) -> Result<String, Error> {
    let sql = sql.trim().trim_end_matches(';');
    s.text(&format!("SELECT (({sql}))::text")).await
}
