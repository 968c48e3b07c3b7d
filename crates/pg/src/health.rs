//! Health checks of PostgreSQL members, for the daemon and `status`: one round trip that says
//! whether the server answers, what it is (role, cluster, timeline, WAL position, its standbys),
//! and — when it does not answer — how it failed: refused (down) versus timed out (hung or cut
//! off). The whole probe, connection included, is bounded by one deadline, so a stopped server
//! costs exactly the timeout (libpq's `connect_timeout` rounds up to 2 s; this does not).

use std::time::{Duration, Instant};

use lifeboat_core::decide::{Failure, Role};
use serde::Serialize;

use crate::Member;

/// One standby as the primary sees it (`pg_stat_replication`).
#[derive(Clone, Debug, Serialize)]
pub struct StandbyRow {
    pub application_name: String,
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Time between a commit on the primary and its replay there (`replay_lag`; none when idle).
    pub replay_lag_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// Every check passed.
    pub ok: bool,
    /// PostgreSQL itself answered (even if an extra check then failed).
    pub answered: bool,
    pub failure: Option<Failure>,
    pub role: Option<Role>,
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    /// Primary: current write position. Standby: last received (flushed) position.
    pub lsn: Option<u64>,
    /// Standby: last replayed position.
    pub replay_lsn: Option<u64>,
    /// Standby: seconds its replay is behind (0 when everything received is replayed).
    pub lag_s: Option<f64>,
    /// Standby: whether its WAL receiver is streaming from a primary.
    pub streaming: Option<bool>,
    pub standbys: Vec<StandbyRow>,
    pub latency_ms: u64,
}

impl Probe {
    fn failed(f: Failure, started: Instant) -> Probe {
        Probe {
            ok: false,
            answered: false,
            failure: Some(f),
            role: None,
            system_id: None,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            lag_s: None,
            streaming: None,
            standbys: Vec::new(),
            latency_ms: started.elapsed().as_millis() as u64,
        }
    }
}

fn lsn(s: Option<String>) -> Option<u64> {
    s.and_then(|s| s.parse::<lifeboat_core::wal::Lsn>().ok())
        .map(|l| l.0)
}

/// The timeline of a primary is that of its current WAL file. A standby's is the newest it
/// holds WAL of: the timeline its WAL receiver gets (while it streams), or the newest
/// timeline among the WAL segments in its pg_wal ([`with_wal_dir`]: received or restored —
/// what a promotion would continue from), never less than its last restartpoint's. The
/// restartpoint alone (`pg_control_checkpoint()`) lags a timeline switch by up to
/// `checkpoint_timeout`: after a switchover or rejoin the daemon then held ("timeline 1, behind
/// the primary's 2"). One expression, for the probe and for [`crate::server_info`].
macro_rules! timeline_sql {
    () => {
        "CASE WHEN pg_is_in_recovery() THEN greatest( \
           (SELECT timeline_id FROM pg_control_checkpoint()), \
           (SELECT received_tli FROM pg_stat_wal_receiver)) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
    };
}

/// The member's timeline alone (see [`timeline_sql`]).
pub(crate) const TIMELINE: &str = concat!("SELECT ", timeline_sql!());

const QUERY: &str = concat!(
    "SELECT pg_is_in_recovery(), \
    (SELECT system_identifier::text FROM pg_control_system()), ",
    timeline_sql!(),
    ", \
    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text \
         ELSE pg_current_wal_lsn()::text END, \
    pg_last_wal_replay_lsn()::text, \
    CASE WHEN pg_is_in_recovery() THEN \
      CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END END::float8, \
    CASE WHEN pg_is_in_recovery() THEN \
      coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false) END"
);

/// The newest timeline a standby has WAL segments of. A separate query: `pg_ls_waldir()` needs
/// superuser or `pg_monitor`; without them the probe goes on without it.
const WAL_DIR_TIMELINE: &str = "SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) \
    FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'";

/// A standby's `timeline` raised to the newest it has WAL segments of in its pg_wal (a primary's
/// is returned as it is).
pub(crate) async fn with_wal_dir(
    c: &tokio_postgres::Client,
    in_recovery: bool,
    timeline: Option<u32>,
) -> Option<u32> {
    if !in_recovery {
        return timeline;
    }
    match c.query_one(WAL_DIR_TIMELINE, &[]).await {
        Ok(r) => timeline.max(r.get::<_, Option<i32>>(0).map(|t| t as u32)),
        Err(_) => timeline,
    }
}

const STANDBYS: &str = "SELECT coalesce(application_name, ''), coalesce(state, ''), \
    coalesce(sync_state, ''), flush_lsn::text, replay_lsn::text, \
    extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication";

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
        let timeline = with_wal_dir(
            &client,
            in_recovery,
            row.get::<_, Option<i32>>(2).map(|t| t as u32),
        )
        .await;
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
                    replay_lag_s: r.get(5),
                })
                .collect()
        };
        drop(client);
        conn.abort();
        Ok::<_, tokio_postgres::Error>(Probe {
            ok: true,
            answered: true,
            failure: None,
            role: Some(if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            }),
            system_id: row.get(1),
            timeline,
            lsn: lsn(row.get(3)),
            replay_lsn: lsn(row.get(4)),
            lag_s: row.get(5),
            streaming: row.get(6),
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

/// Run a member's extra checks (all must pass); the first failure, as a sentence.
pub async fn extra_checks(
    checks: &[lifeboat_core::plan::HealthCheck],
    timeout: Duration,
) -> Result<(), String> {
    for c in checks {
        let t = c.timeout.map(|d| d.std()).unwrap_or(timeout);
        let r = tokio::time::timeout(t, one_check(c)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("{} timed out after {t:?}", describe(c))),
        }
    }
    Ok(())
}

fn describe(c: &lifeboat_core::plan::HealthCheck) -> String {
    if let Some(u) = &c.http {
        format!("http check {}", redact_url(u))
    } else if let Some(t) = &c.tcp {
        format!("tcp check {t}")
    } else {
        "command check".into()
    }
}

/// A URL without credentials or query (which may hold tokens), for messages.
pub fn redact_url(u: &str) -> String {
    let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

async fn one_check(c: &lifeboat_core::plan::HealthCheck) -> Result<(), String> {
    let what = describe(c);
    if let Some(url) = &c.http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
        let resp = client.get(url).send().await.map_err(|e| {
            // reqwest's messages carry the URL; keep ours.
            let kind = if e.is_connect() {
                "connection failed"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            format!("{what}: {kind}")
        })?;
        let status = resp.status().as_u16();
        let ok = match c.status {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        };
        if !ok {
            return Err(format!("{what}: status {status}"));
        }
        if let Some(want) = &c.body {
            let body = resp
                .text()
                .await
                .map_err(|_| format!("{what}: body unreadable"))?;
            if !body.contains(want.as_str()) {
                return Err(format!("{what}: body does not contain {want:?}"));
            }
        }
        return Ok(());
    }
    if let Some(addr) = &c.tcp {
        return tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("{what}: {e}"));
    }
    if let Some(cmd) = &c.command {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let st = child.wait().await.map_err(|e| format!("{what}: {e}"))?;
        return if st.success() {
            Ok(())
        } else {
            Err(format!("{what} exited with {st}"))
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{extra_checks, redact_url};
    use lifeboat_core::plan::HealthCheck;
    use std::time::Duration;

    /// A one-shot HTTP server answering `status` with `body` to every request.
    fn server(status: u16, body: &'static str) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://user:secret@{addr}/health?token=t0ps3cret")
    }

    #[tokio::test]
    async fn http_tcp_and_command_checks_pass_and_fail_with_reasons() {
        let t = Duration::from_secs(2);
        let ok = server(200, "status: ok");
        let bad = server(500, "down");
        let check = |url: &str, status: Option<u16>, body: Option<&str>| HealthCheck {
            http: Some(url.to_string()),
            status,
            body: body.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            extra_checks(&[check(&ok, None, Some("ok"))], t).await,
            Ok(())
        );
        let e = extra_checks(&[check(&bad, None, None)], t)
            .await
            .unwrap_err();
        assert!(e.ends_with("status 500"), "{e}");
        assert!(!e.contains("secret") && !e.contains("t0ps3cret"), "{e}");
        assert_eq!(
            extra_checks(&[check(&bad, Some(500), None)], t).await,
            Ok(())
        );
        let e = extra_checks(&[check(&ok, None, Some("green"))], t)
            .await
            .unwrap_err();
        assert!(e.contains("body does not contain \"green\""), "{e}");
        // tcp: a closed port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = extra_checks(
            &[HealthCheck {
                tcp: Some(closed.to_string()),
                ..Default::default()
            }],
            t,
        )
        .await
        .unwrap_err();
        assert!(e.starts_with("tcp check"), "{e}");
        let cmd = |c: &str| HealthCheck {
            command: Some(c.into()),
            ..Default::default()
        };
        assert_eq!(extra_checks(&[cmd("true")], t).await, Ok(()));
        assert!(extra_checks(&[cmd("exit 3")], t)
            .await
            .unwrap_err()
            .contains("exit status: 3"));
        let e = extra_checks(&[cmd("sleep 5")], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn urls_lose_credentials_and_queries_in_messages() {
        assert_eq!(
            redact_url("https://user:pw@h.example:8443/health?token=x"),
            "https://h.example:8443/health"
        );
        assert_eq!(redact_url("http://h/health"), "http://h/health");
    }
}
