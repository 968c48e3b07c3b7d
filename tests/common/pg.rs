//! A real PostgreSQL 15 cluster in a lab directory, archiving into the lab's repository with
//! `lifeboat wal push`. As root, the lab belongs to `postgres` and PostgreSQL and Lifeboat run
//! as that user (as they would on a database host); otherwise as the current user.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{bin, free_port, Lab, Run};

pub fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL version").1
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pg_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "running as root needs a `postgres` user");
    // SAFETY: non-null.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

pub struct Pg {
    /// The lifeboat binary, linked into the lab: PostgreSQL (as `postgres`) runs it for
    /// archive_command and restore_command, and the build directory may not be reachable.
    pub lb: PathBuf,
    pub lab: Lab,
    pub port: u16,
    pub data: PathBuf,
    pub bin: PathBuf,
}

impl Pg {
    /// A lab with a plan for service `db`, a repository, and a running cluster that archives
    /// with `lifeboat wal push db %p`. `extra` is appended to the plan's `backups:` section.
    pub fn start(extra_jobs: &str, checks: &[&str]) -> Pg {
        Self::start_with("{ url: repo, key_file: test.key }", extra_jobs, checks)
    }

    /// With the repository `main` given as a YAML flow mapping.
    pub fn start_with(repo: &str, extra_jobs: &str, checks: &[&str]) -> Pg {
        Self::start_full(repo, "", extra_jobs, checks)
    }

    /// With more settings of service `db` (lines indented by four spaces).
    pub fn start_full(repo: &str, service_extra: &str, extra_jobs: &str, checks: &[&str]) -> Pg {
        let lab = Lab::new();
        let port = free_port();
        let data = lab.p("pgdata");
        let checks: Vec<String> = checks.iter().map(|c| format!("\"{c}\"")).collect();
        lab.plan(&format!(
            r#"name: pgtest
tiers:
  gold: {{ rpo: 5m, rto: 15m }}
sites: [a]
services:
  db:
    kind: postgres
    tier: gold
    members:
      a: {{ host: 127.0.0.1, port: {port}, user: postgres, data_dir: pgdata }}
    databases: [app]
    checks: [{checks}]
{service_extra}repositories:
  main: {repo}
backups:
  db-base: {{ service: db }}
{extra_jobs}"#,
            checks = checks.join(", ")
        ));
        let lb = lab.p("lifeboat");
        if std::fs::hard_link(bin(), &lb).is_err() {
            std::fs::copy(bin(), &lb).unwrap();
        }
        let pg = Pg {
            lb,
            lab,
            port,
            data,
            bin: pg_bin(),
        };
        pg.chown();
        let r = pg.tool("initdb", &["-D", "pgdata", "-A", "trust", "-U", "postgres"]);
        assert!(
            r.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let archive = format!(
            "{} --plan {} wal push db %p",
            pg.lb.display(),
            pg.lab.p("lifeboat.yaml").display()
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             wal_level = replica\narchive_mode = on\narchive_command = '{archive}'\n\
             fsync = off\nshared_buffers = 32MB\nmax_wal_senders = 4\n"
        );
        pg.append_conf("pgdata/postgresql.conf", &conf);
        pg.ok(&["repo", "init"]);
        pg.pg_ctl(&["start", "-w", "-t", "60", "-l", "pg.log"]);
        pg.sql("CREATE DATABASE app");
        pg
    }

    /// Append settings to a configuration file of the lab (and give the lab back to postgres).
    pub fn append_conf(&self, rel: &str, text: &str) {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.lab.p(rel))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        self.chown();
    }

    /// Clone the server on `from_port` into `dir` as a streaming standby (pg_basebackup -R),
    /// append `conf` to its postgresql.auto.conf and start it (log: `<dir>.log`).
    #[allow(dead_code)]
    pub fn start_standby(&self, from_port: u16, dir: &str, conf: &str) {
        let port = from_port.to_string();
        let o = self.tool(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                dir,
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.append_conf(&format!("{dir}/postgresql.auto.conf"), conf);
        let log = format!("{dir}.log");
        let o = self.tool("pg_ctl", &["-D", dir, "-l", &log, "-w", "start"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// The pid of the postmaster of a data directory in the lab (from its pid file).
    pub fn postmaster_pid(&self, dir: &str) -> i32 {
        std::fs::read_to_string(self.lab.p(dir).join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Give everything in the lab to postgres, except the linked binary (its inode is the
    /// build's). Running servers create and remove files meanwhile (archive_status, pg_wal):
    /// a file that vanishes is skipped, and files postgres already owns are left alone.
    pub fn chown(&self) {
        fn walk(dir: &Path, skip: &Path, uid: u32, gid: u32) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path == skip {
                    continue;
                }
                let Ok(md) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if md.uid() != uid || md.gid() != gid {
                    match std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => panic!("chown {}: {e}", path.display()),
                    }
                }
                if md.is_dir() {
                    walk(&path, skip, uid, gid);
                }
            }
        }
        if let Some((uid, gid)) = pg_ids() {
            let _ = std::os::unix::fs::lchown(self.lab.path(), Some(uid), Some(gid));
            walk(self.lab.path(), &self.lb, uid, gid);
        }
    }

    pub fn as_pg(&self, c: &mut Command) {
        c.current_dir(self.lab.path())
            .env("HOME", self.lab.path())
            .env("LIFEBOAT_PROGRESS", "0")
            .env("LIFEBOAT_ACTOR", "test")
            .env_remove("LIFEBOAT_PLAN")
            .env_remove("LIFEBOAT_STATE_DIR")
            .env_remove("PGPASSWORD");
        if let Some((uid, gid)) = pg_ids() {
            c.uid(uid).gid(gid);
        }
    }

    pub fn tool(&self, name: &str, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(self.bin.join(name));
        c.args(args);
        self.as_pg(&mut c);
        c.output().unwrap()
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        self.pg_ctl_in("pgdata", args)
    }

    /// `pg_ctl` on the data directory `dir` of the lab.
    pub fn pg_ctl_in(&self, dir: &str, args: &[&str]) {
        let mut a = vec!["-D", dir];
        a.extend_from_slice(args);
        let o = self.tool("pg_ctl", &a);
        assert!(
            o.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Run SQL on `port`: the trimmed output, or psql's error.
    /// A PostgreSQL client program (`psql`, `pg_dump`, `pgbench`…) connecting to `port` as
    /// this lab's user, not yet run.
    pub fn client(&self, name: &str, port: u16) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]);
        self.as_pg(&mut c);
        c
    }

    /// `psql -c Q` on `port` as this lab's user, not yet run.
    pub fn psql_cmd(&self, port: u16, db: &str, q: &str) -> Command {
        let mut c = self.client("psql", port);
        c.args(["-X", "-d", db, "-Atq", "-v", "ON_ERROR_STOP=1", "-c", q]);
        c
    }

    pub fn try_sql_on(&self, port: u16, db: &str, q: &str) -> Result<String, String> {
        let o = self.psql_cmd(port, db, q).output().unwrap();
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Run SQL on the cluster (or on `port`), return trimmed output.
    pub fn sql_on(&self, port: u16, db: &str, q: &str) -> String {
        self.try_sql_on(port, db, q)
            .unwrap_or_else(|e| panic!("psql {q}: {e}"))
    }

    pub fn sql(&self, q: &str) -> String {
        self.sql_on(self.port, "postgres", q)
    }

    /// Force the current segment into the archive and wait until it is there.
    pub fn switch_wal(&self) {
        self.switch_wal_on(self.port)
    }

    pub fn switch_wal_on(&self, port: u16) {
        let name = self.sql_on(port, "postgres", "SELECT pg_walfile_name(pg_switch_wal())");
        for _ in 0..300 {
            let done = self.sql_on(
                port,
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            if done.as_str() >= name.as_str() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "segment {name} was not archived: {}",
            std::fs::read_to_string(self.lab.p("pg.log")).unwrap_or_default()
        );
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.lb);
        c.args(args);
        self.as_pg(&mut c);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "lifeboat {args:?} failed:\n{}", r.all());
        r
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.ok(&["--json", "audit", "list"])
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Stop a server started by `lifeboat restore --start` in `dir`.
    pub fn stop_dir(&self, dir: &str) {
        let _ = self.tool("pg_ctl", &["-D", dir, "stop", "-m", "immediate", "-w"]);
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl", &["-D", "pgdata", "stop", "-m", "immediate", "-w"]);
        for d in ["r1", "r2", "r3", "standby", "stranger", "plain/pgdata"] {
            if self.lab.p(d).join("postmaster.pid").exists() {
                self.stop_dir(d);
            }
        }
    }
}
