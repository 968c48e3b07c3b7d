//! Health checks of PostgreSQL members, for the daemon (issue 4): one round trip that says
//! whether the server answers, what it is (role, cluster, timeline, WAL position, its standbys),
//! and — when it does not answer — how it failed: refused (down) versus timed out (hung or cut
//! off). The whole probe, connection included, is bounded by one deadline, so a stopped server
//! costs exactly the timeout (libpq's `connect_timeout` rounds up to 2 s; this does not).

use std::time::{Duration, Instant};

use lifeboat_core::decide::{Failure, Role};
use serde::Serialize;

use crate::pg::Member;

/// One standby as the primary sees it (`pg_stat_replication`).
#[derive(Clone, Debug, Serialize)]
pub struct StandbyRow {
    pub application_name: String,
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub ok: bool,
    pub failure: Option<Failure>,
    pub role: Option<Role>,
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    /// Primary: current write position. Standby: last received (flushed) position.
    pub lsn: Option<u64>,
    /// Standby: last replayed position.
    pub replay_lsn: Option<u64>,
    pub standbys: Vec<StandbyRow>,
    pub latency_ms: u64,
}

impl Probe {
    fn failed(f: Failure, started: Instant) -> Probe {
        Probe {
            ok: false,
            failure: Some(f),
            role: None,
            system_id: None,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            standbys: Vec::new(),
            latency_ms: started.elapsed().as_millis() as u64,
        }
    }
}

fn lsn(s: Option<String>) -> Option<u64> {
    s.and_then(|s| s.parse::<lifeboat_core::wal::Lsn>().ok())
        .map(|l| l.0)
}

const QUERY: &str = "SELECT pg_is_in_recovery(), \
    (SELECT system_identifier::text FROM pg_control_system()), \
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text \
         ELSE pg_current_wal_lsn()::text END, \
    pg_last_wal_replay_lsn()::text";

const STANDBYS: &str = "SELECT coalesce(application_name, ''), coalesce(state, ''), \
    coalesce(sync_state, ''), flush_lsn::text, replay_lsn::text FROM pg_stat_replication";

fn classify(e: &tokio_postgres::Error) -> Failure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                    Failure::Refused
                }
                std::io::ErrorKind::TimedOut => Failure::Timeout,
                _ => Failure::Error(io.to_string()),
            };
        }
        src = s.source();
    }
    Failure::Error(match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    })
}

/// Probe one member within `timeout`.
pub async fn probe(member: &Member, timeout: Duration) -> Probe {
    let started = Instant::now();
    let cfg = member.async_config(timeout);
    let work = async {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let row = client.query_one(QUERY, &[]).await?;
        let in_recovery: bool = row.get(0);
        let standbys = if in_recovery {
            Vec::new()
        } else {
            client
                .query(STANDBYS, &[])
                .await?
                .iter()
                .map(|r| StandbyRow {
                    application_name: r.get(0),
                    state: r.get(1),
                    sync_state: r.get(2),
                    flush_lsn: lsn(r.get(3)),
                    replay_lsn: lsn(r.get(4)),
                })
                .collect()
        };
        drop(client);
        conn.abort();
        Ok::<_, tokio_postgres::Error>(Probe {
            ok: true,
            failure: None,
            role: Some(if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            }),
            system_id: row.get(1),
            timeline: row.get::<_, Option<i32>>(2).map(|t| t as u32),
            lsn: lsn(row.get(3)),
            replay_lsn: lsn(row.get(4)),
            standbys,
            latency_ms: 0,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(mut p)) => {
            p.latency_ms = started.elapsed().as_millis() as u64;
            p
        }
        Ok(Err(e)) => Probe::failed(classify(&e), started),
        Err(_) => Probe::failed(Failure::Timeout, started),
    }
}

/// Probe on a private single-threaded runtime (for commands outside the daemon).
pub fn probe_blocking(member: &Member, timeout: Duration) -> Probe {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(probe(member, timeout)),
        Err(e) => Probe::failed(Failure::Error(e.to_string()), Instant::now()),
    }
}
