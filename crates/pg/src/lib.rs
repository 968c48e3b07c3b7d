//! The PostgreSQL room: members of a `postgres` service and how to reach them, server facts,
//! health probes (`health`), sessions with deadlines and the member operations failover,
//! switchover and rejoin share (`ops`: promote, stop, start, control data), and the PostgreSQL
//! programs Lifeboat drives.
//!
//! Depends on `lifeboat-core` only. The rule (pgBackRest's): no SQL outside this crate — every
//! statement is a named operation here — and every PostgreSQL program is started from here
//! (`tool`, `ops`).

pub mod basebackup;
pub mod health;
pub mod ops;
pub mod tool;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_core::plan::{PgMember, Service};
use lifeboat_core::wal::Lsn;
use lifeboat_core::{Error, Kind};

/// A member with its secrets resolved (in memory only).
#[derive(Clone)]
pub struct Member {
    pub service: String,
    pub site: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub dbname: String,
    pub data_dir: Option<PathBuf>,
    /// The network namespace its server runs in (see the plan's `netns`).
    pub netns: Option<String>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} ({}:{})",
            self.service, self.site, self.host, self.port
        )
    }
}

/// What a server says about itself.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerInfo {
    pub version_num: i32,
    pub in_recovery: bool,
    pub system_id: String,
    pub timeline: i32,
    /// Current write LSN (primary) or replay LSN (standby).
    pub lsn: String,
    pub archive_mode: String,
    pub archive_command: String,
}

pub struct PgService<'a> {
    pub name: String,
    pub members: &'a std::collections::BTreeMap<String, PgMember>,
    pub bin_dir: PathBuf,
    pub databases: &'a [String],
    pub checks: &'a [String],
}

impl<'a> PgService<'a> {
    pub fn from_plan(name: &str, svc: &'a Service, base: &Path) -> Result<Self, Error> {
        let Service::Postgres {
            members,
            bin_dir,
            databases,
            checks,
            ..
        } = svc
        else {
            return Err(Error::new(
                Kind::Input,
                format!("service {name} is a {} service, not postgres", svc.kind()),
            ));
        };
        let bin_dir = match bin_dir {
            Some(d) => base.join(d),
            None => detect_bin_dir(),
        };
        Ok(Self {
            name: name.into(),
            members,
            bin_dir,
            databases,
            checks,
        })
    }

    pub fn member(&self, site: &str) -> Result<Member, Error> {
        let m = self.members.get(site).ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!(
                    "service {} has no member in site `{site}` (members: {})",
                    self.name,
                    self.members.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let password = match &m.password {
            Some(s) => Some(s.resolve().map_err(|e| {
                Error::new(
                    Kind::Input,
                    format!("service {} member {site}: password: {e}", self.name),
                )
            })?),
            None => None,
        };
        Ok(Member {
            service: self.name.clone(),
            site: site.into(),
            host: m.host.clone(),
            port: m.port,
            user: m.user.clone().unwrap_or_else(|| "postgres".into()),
            password,
            dbname: m.dbname.clone().unwrap_or_else(|| "postgres".into()),
            data_dir: m.data_dir.as_ref().map(PathBuf::from),
            netns: m.netns.clone(),
        })
    }

    /// The member to take a backup from: the site asked for, or the reachable primary.
    pub fn pick(&self, from: Option<&str>) -> Result<(Member, ServerInfo), Error> {
        if let Some(site) = from {
            let m = self.member(site)?;
            let info = m.probe()?;
            return Ok((m, info));
        }
        let mut seen = Vec::new();
        for site in self.members.keys() {
            let m = self.member(site)?;
            match m.probe() {
                Ok(info) if !info.in_recovery => return Ok((m, info)),
                Ok(_) => seen.push(format!("{site}: standby")),
                Err(e) => seen.push(format!("{site}: {}", e.message)),
            }
        }
        Err(Error::new(
            Kind::Source,
            format!(
                "service {}: no reachable primary ({})",
                self.name,
                seen.join("; ")
            ),
        )
        .hint("start the primary, or back up a standby with `from: SITE` on the job"))
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        if p.exists() {
            p
        } else {
            PathBuf::from(name)
        }
    }
}

/// `pg_config --bindir` on PATH, else the newest `/usr/lib/postgresql/*/bin`, else PATH.
pub fn detect_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if d.join("pg_ctl").exists() {
                return d;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_default()
}

impl Member {
    pub fn describe(&self) -> String {
        format!(
            "{} member {} ({}:{})",
            self.service, self.site, self.host, self.port
        )
    }

    pub fn config(&self, timeout: Duration) -> postgres::Config {
        postgres::Config::from(self.async_config(timeout))
    }

    /// The same connection settings for tokio-postgres (health checks).
    pub fn async_config(&self, timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("lifeboat")
            .connect_timeout(timeout);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// `primary_conninfo` for a standby of this member named `application_name`. The role and
    /// connection options come from `role` (the plan's `replication.user`), else from `base` (the
    /// `primary_conninfo` another standby streamed with: its user, password, SSL settings),
    /// else are this member's own user and password; host, port and application_name are this
    /// member's and the name given. It holds the password (as `pg_basebackup -R` writes it):
    /// only for `postgresql.auto.conf` (mode 600, in the data directory); programs get
    /// credentials through [`Member::libpq_env`], never arguments.
    pub fn standby_conninfo(
        &self,
        application_name: &str,
        base: Option<&str>,
        role: Option<&(String, Option<String>)>,
    ) -> String {
        const OURS: [&str; 4] = ["host", "hostaddr", "port", "application_name"];
        let mut kv: Vec<(String, String)> = match (role, base.filter(|b| !b.trim().is_empty())) {
            (None, Some(b)) => parse_conninfo(b)
                .into_iter()
                .filter(|(k, _)| !OURS.contains(&k.as_str()))
                .collect(),
            (Some((u, p)), _) => {
                let mut v = vec![("user".to_string(), u.clone())];
                if let Some(p) = p {
                    v.push(("password".into(), p.clone()));
                }
                v
            }
            (None, None) => {
                let mut v = vec![("user".to_string(), self.user.clone())];
                if let Some(p) = &self.password {
                    v.push(("password".into(), p.clone()));
                }
                v
            }
        };
        kv.push(("host".into(), self.host.clone()));
        kv.push(("port".into(), self.port.to_string()));
        kv.push(("application_name".into(), application_name.to_string()));
        kv.iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Environment for libpq programs (`PGPASSWORD` never appears on a command line).
    pub fn libpq_env(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", &self.dbname)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "lifeboat");
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
    }

    /// Run `work` on a session with this member from synchronous code, the connection and
    /// every statement within `deadline`: a server that accepts and never answers ends the
    /// call with an error instead of hanging the command.
    pub fn within<T, F, Fut>(&self, deadline: Duration, work: F) -> Result<T, Error>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(Kind::Internal, format!("runtime: {e}")))?;
        let what = self.describe();
        rt.block_on(async {
            let run = async {
                let (client, conn) = self
                    .async_config(deadline)
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| connect_error(&what, &e))?;
                let conn = tokio::spawn(conn);
                let r = work(client).await;
                conn.abort();
                r
            };
            match tokio::time::timeout(deadline, run).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(
                    Kind::Source,
                    format!(
                        "{what}: no answer within {} s: the server is hung or cut off",
                        deadline.as_secs()
                    ),
                )
                .hint("check that the server runs normally (not stopped or starved) and the network to it, then run again")),
            }
        })
    }

    /// Tablespaces outside the data directory (a plain-format base backup cannot hold them).
    pub fn outside_tablespaces(&self) -> Result<i64, Error> {
        self.within(Duration::from_secs(30), |c| async move {
            Ok(c.query_one(
                "SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0))
        })
    }

    /// The server's clock (Unix microseconds): recovery targets are compared with commit times
    /// the server wrote, not with this host's clock.
    pub fn clock_micros(&self) -> Result<i64, Error> {
        self.within(Duration::from_secs(30), |c| async move {
            c.query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| Error::new(Kind::Source, db_error_text(&e)))
        })
    }

    /// Connect and ask the server what it is (within 10 s).
    pub fn probe(&self) -> Result<ServerInfo, Error> {
        self.within(
            Duration::from_secs(10),
            |c| async move { server_info(&c).await },
        )
        .map_err(|e| e.context(self.describe()))
    }
}

fn connect_error(what: &str, e: &tokio_postgres::Error) -> Error {
    let msg = db_error_text(e);
    let hint = if msg.contains("password authentication failed")
        || msg.contains("no password supplied")
        || msg.contains("role") && msg.contains("does not exist")
    {
        "check the member's user and password in the plan (and pg_hba.conf on the server)"
    } else {
        "check that the server is running and reachable at the member's host and port"
    };
    Error::new(Kind::Source, format!("cannot connect to {what}: {msg}")).hint(hint)
}

/// A PostgreSQL error as one line: the server's message when there is one.
pub fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

pub async fn server_info(c: &tokio_postgres::Client) -> Result<ServerInfo, Error> {
    let q = "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), \
             (SELECT system_identifier::text FROM pg_control_system()), \
             CASE WHEN pg_is_in_recovery() \
                  THEN COALESCE(pg_last_wal_replay_lsn(), '0/0')::text \
                  ELSE pg_current_wal_lsn()::text END, \
             current_setting('archive_mode'), current_setting('archive_command')";
    let row = c.query_one(q, &[]).await.map_err(|e| {
        Error::new(
            Kind::Source,
            format!("querying server state: {}", db_error_text(&e)),
        )
    })?;
    // The timeline: a primary's from its current WAL file (pg_control lags right after a
    // promotion), a standby's the newest it holds WAL of (see `health::QUERY`).
    let tli = c
        .query_one(crate::health::TIMELINE, &[])
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .map(|t| t as u32);
    let tli = crate::health::with_wal_dir(c, row.get(1), tli)
        .await
        .unwrap_or(0) as i32;
    Ok(ServerInfo {
        version_num: row.get(0),
        in_recovery: row.get(1),
        system_id: row.get(2),
        timeline: tli,
        lsn: row.get(3),
        archive_mode: row.get(4),
        archive_command: row.get(5),
    })
}

/// When Lifeboat runs as root, PostgreSQL programs that refuse root (`pg_ctl`, `postgres`)
/// run as the owner of the data directory.
pub fn as_owner_of(cmd: &mut Command, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    if let Ok(md) = std::fs::metadata(dir) {
        if md.uid() != 0 {
            cmd.uid(md.uid()).gid(md.gid());
        }
    }
}

/// [`as_owner_of`], and inside the network namespace `netns` (`/run/netns/NAME`) when one is
/// given: the child takes root back if this process keeps it as its saved id (a command run
/// as root that switched to the state directory's owner), enters the namespace, then becomes
/// the directory's owner. Without root to enter it, the error says so.
pub fn as_owner_of_in(cmd: &mut Command, dir: &Path, netns: Option<&str>) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let Some(ns) = netns else {
        as_owner_of(cmd, dir);
        return Ok(());
    };
    let path = Path::new("/run/netns").join(ns);
    let file = std::fs::File::open(&path).map_err(|e| {
        Error::new(
            Kind::Source,
            format!("network namespace {ns} ({}): {e}", path.display()),
        )
        .hint("a lab's namespaces go with `lifeboat lab down`; run `lifeboat lab up` again, or remove `netns` from the member")
    })?;
    let (uid, gid) = std::fs::metadata(dir)
        .map(|m| (m.uid(), m.gid()))
        .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", dir.display())))?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three ids into the given locations.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    if r != 0 && e != 0 && s != 0 {
        return Err(Error::new(
            Kind::Input,
            format!("starting a server in network namespace {ns} needs root"),
        )
        .hint("run the command as root (the lab was built by root)"));
    }
    let fd = file.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec; `file` outlives the spawn
    // (it moves into the closure), its descriptor closes at exec.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &file;
            if libc::geteuid() != 0
                && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if uid != 0
                && (libc::setgroups(1, &gid) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// uid/gid of a user by name (for restored data directories when running as root).
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read immediately.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null pointer from getpwnam.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Change ownership of a tree (no symlink following).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    let md = std::fs::symlink_metadata(root)?;
    if md.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Parse `backup_label`: start LSN, timeline, and the start time line.
pub fn parse_backup_label(text: &str) -> Option<(Lsn, u32)> {
    let mut lsn = None;
    let mut tli = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            lsn = rest.split_whitespace().next()?.parse().ok();
        }
        if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            tli = rest.trim().parse().ok();
        }
    }
    Some((lsn?, tli?))
}

/// The end LSN of a base backup from its `backup_manifest` (`WAL-Ranges`).
pub fn manifest_end_lsn(manifest: &str) -> Option<Lsn> {
    let v: serde_json::Value = serde_json::from_str(manifest).ok()?;
    v.get("WAL-Ranges")?
        .as_array()?
        .iter()
        .filter_map(|r| r.get("End-LSN")?.as_str()?.parse().ok())
        .max()
}

/// The key/value pairs of a libpq connection string (`key=value`, values bare or in single
/// quotes with backslash escapes), in order.
pub fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() {
            return out;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek() != Some(&'=') {
            return out;
        }
        it.next();
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            while let Some(c) = it.next() {
                match c {
                    '\\' => {
                        if let Some(n) = it.next() {
                            val.push(n);
                        }
                    }
                    '\'' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    it.next();
                    if let Some(n) = it.next() {
                        val.push(n);
                    }
                    continue;
                }
                val.push(c);
                it.next();
            }
        }
        out.push((key, val));
    }
}

/// A restored server on this host, through a synchronous client: whether it left recovery.
pub fn local_in_recovery(c: &mut postgres::Client) -> bool {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .map(|r| r.get(0))
        .unwrap_or(true)
}

/// A restored server takes a write (a temporary table: nothing is left behind).
pub fn local_write_probe(c: &mut postgres::Client) -> Result<(), String> {
    // Bounded: a server that waits for a synchronous standby it does not have would otherwise
    // hold the caller forever.
    c.batch_execute(
        "SET statement_timeout = '30s'; CREATE TEMP TABLE lifeboat_write_probe(x int); INSERT INTO lifeboat_write_probe VALUES (1);",
    )
    .map_err(|e| db_error_text(&e))
}

/// A plan's SQL check on a restored server: it must return one boolean.
pub fn local_check(c: &mut postgres::Client, sql: &str) -> Result<bool, String> {
    c.query_one(sql, &[])
        .map_err(|e| db_error_text(&e))
        .and_then(|row| {
            row.try_get::<_, bool>(0)
                .map_err(|_| "the check must return one boolean column".to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_conninfo_inherits_the_replication_role() {
        let base = "user=replicator password='pa ss\\'w' channel_binding=prefer host=127.0.0.1 port=5433 application_name=west sslmode=prefer";
        let kv = parse_conninfo(base);
        assert_eq!(kv[1], ("password".into(), "pa ss'w".into()));
        assert_eq!(kv.len(), 7);
        let m = Member {
            service: "db".into(),
            site: "west".into(),
            host: "10.0.0.2".into(),
            port: 5434,
            user: "postgres".into(),
            password: Some("super".into()),
            dbname: "postgres".into(),
            data_dir: None,
            netns: None,
        };
        let c = m.standby_conninfo("east", Some(base), None);
        assert_eq!(
            c,
            "user='replicator' password='pa ss\\'w' channel_binding='prefer' sslmode='prefer' host='10.0.0.2' port='5434' application_name='east'"
        );
        // Round trip.
        assert_eq!(parse_conninfo(&c)[1].1, "pa ss'w");
        // The plan's role wins; without either, the member's own.
        let role = ("repl".to_string(), None);
        assert_eq!(
            m.standby_conninfo("east", Some(base), Some(&role)),
            "user='repl' host='10.0.0.2' port='5434' application_name='east'"
        );
        assert_eq!(
            m.standby_conninfo("east", Some("  "), None),
            "user='postgres' password='super' host='10.0.0.2' port='5434' application_name='east'"
        );
    }

    #[test]
    fn label_and_manifest() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-22 06:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n";
        assert_eq!(
            parse_backup_label(label),
            Some(("0/2000028".parse().unwrap(), 1))
        );
        let m = r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [], "WAL-Ranges": [{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }]}"#;
        assert_eq!(manifest_end_lsn(m), Some("0/2000100".parse().unwrap()));
    }
}
