//! Operations on one PostgreSQL member that failover, switchover and rejoin share: a session
//! with errors that name the member, promotion that does not sit out PostgreSQL's retry sleep,
//! a write check, and stopping or starting a member whose data directory is on this host.

use std::time::{Duration, Instant};

use lifeboat_store::{Kind, StoreError};

use crate::pg::{db_error_text, Member};

/// One connection to a member; errors say which member and what was being done.
pub struct Session {
    pub site: String,
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Session {
    pub async fn connect(m: &Member, timeout: Duration) -> Result<Session, StoreError> {
        let (client, conn) = m
            .async_config(timeout)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                StoreError::new(
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

    fn err(&self, what: &str, e: tokio_postgres::Error) -> StoreError {
        StoreError::new(
            Kind::Source,
            format!("{} ({what}): {}", self.site, db_error_text(&e)),
        )
    }

    /// Run statements (no result).
    pub async fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.err(sql, e))
    }

    /// One text value (NULL as empty).
    pub async fn text(&self, sql: &str) -> Result<String, StoreError> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| self.err(sql, e))?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    }

    pub async fn bool(&self, sql: &str) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| self.err(sql, e))?;
        Ok(row.get(0))
    }

    pub async fn in_recovery(&self) -> Result<bool, StoreError> {
        self.bool("SELECT pg_is_in_recovery()").await
    }

    /// Set a reloadable parameter with ALTER SYSTEM and reload (ALTER SYSTEM cannot run in a
    /// multi-statement batch: it refuses transaction blocks).
    pub async fn set(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let quoted = value.replace('\'', "''");
        self.exec(&format!("ALTER SYSTEM SET {name} = '{quoted}'"))
            .await?;
        self.exec("SELECT pg_reload_conf()").await
    }

    /// Promote a standby and wait until it leaves recovery (60 s at most). Returns the
    /// `synchronous_standby_names` it had if they were cleared first: a promoted standby that
    /// names synchronous standbys would make every commit wait for a standby that follows
    /// nobody yet.
    pub async fn promote(&self) -> Result<Option<String>, StoreError> {
        let ssn = self.text("SHOW synchronous_standby_names").await?;
        let cleared = if ssn.trim().is_empty() {
            None
        } else {
            self.set("synchronous_standby_names", "").await?;
            Some(ssn)
        };
        // pg_promote(wait => true) polls every 100 ms; ask without waiting and poll faster.
        if !self.bool("SELECT pg_promote(false)").await? {
            return Err(StoreError::new(
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
                return Err(StoreError::new(
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
    pub async fn check_write(&self) -> Result<(), StoreError> {
        self.exec(
            "CREATE TEMP TABLE lifeboat_write_probe(x int); INSERT INTO lifeboat_write_probe VALUES (1)",
        )
        .await
        .map_err(|e| {
            StoreError::new(
                Kind::Source,
                format!("{} refused a write: {}", self.site, e.message),
            )
        })
    }
}

/// Run `pg_ctl` on a member's local data directory, as the directory's owner.
pub async fn pg_ctl(
    bin_dir: &std::path::Path,
    m: &Member,
    args: &[&str],
) -> Result<std::process::Output, StoreError> {
    let Some(data) = m.data_dir.clone() else {
        return Err(StoreError::new(
            Kind::Input,
            format!("{} has no data_dir on this host", m.site),
        )
        .hint("add the member's data_dir to the plan, or run this on the member's host"));
    };
    let pg_ctl = bin_dir.join("pg_ctl");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(pg_ctl);
        c.arg("-D")
            .arg(&data)
            .args(&args)
            .stdin(std::process::Stdio::null());
        crate::pg::as_owner_of(&mut c, &data);
        c.output()
    })
    .await
    .map_err(|e| StoreError::new(Kind::Internal, e.to_string()))?
    .map_err(|e| StoreError::new(Kind::Source, format!("pg_ctl: {e}")))
}
