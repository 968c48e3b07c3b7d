//! A real primary and streaming standby of one cluster with a plan that fails it over, and a
//! client writing through Lifeboat's endpoint that remembers what was acknowledged where.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::free_port;
use super::pg::Pg;
use super::Daemon;

/// A primary (site a) and a streaming standby (site b, application_name b) of one cluster, a
/// plan with failover on a traffic endpoint, and helpers to write through it.
pub struct Pair {
    pub pg: Pg,
    /// The standby's port.
    pub sport: u16,
    /// The traffic endpoint's port.
    pub front: u16,
}

impl Pair {
    /// `mode`: sync or async. `failover`: extra keys of the `failover:` mapping (flow style,
    /// each followed by a comma). `members`: extra member lines.
    pub fn new(mode: &str, failover: &str, members: &str) -> Pair {
        let pg = Pg::start("", &[]);
        let sport = free_port();
        // In sync mode the standby names the primary as its own synchronous standby, ready
        // for a role swap (as pg-pair.sh does): promoted alone, it must not wait for it.
        let ssn = if mode == "sync" { "a" } else { "" };
        pg.start_standby(
            pg.port,
            "standby",
            &format!(
                "port = {sport}\narchive_mode = off\nsynchronous_standby_names = '{ssn}'\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=b'\n",
                pg.port
            ),
        );
        if mode == "sync" {
            pg.sql("ALTER SYSTEM SET synchronous_standby_names = 'b'");
            pg.sql("SELECT pg_reload_conf()");
        }
        pg.sql("CREATE TABLE w(v int)");
        let front = free_port();
        let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
        let sites = if members.contains("      c:") {
            "[a, b, c]"
        } else {
            "[a, b]"
        };
        let plan = plan.replace("sites: [a]", &format!("sites: {sites}")).replace(
            "data_dir: pgdata }",
            &format!(
                "data_dir: pgdata }}\n      b: {{ host: 127.0.0.1, port: {sport}, user: postgres, data_dir: standby }}\n{members}    replication: {{ mode: {mode} }}\n    failover: {{ {failover} listen: \"127.0.0.1:{front}\" }}"
            ),
        );
        std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
        pg.chown();
        pg.ok(&["plan", "check"]);
        Pair { pg, sport, front }
    }

    /// After a manual failover of a pair holding one row: b is the primary with that row, and
    /// the one failover recorded (returned).
    pub fn b_took_over_with_one_row(&self) -> serde_json::Value {
        assert_eq!(self.in_recovery(self.sport), Some(false));
        assert_eq!(
            self.pg
                .sql_on(self.sport, "postgres", "SELECT count(*) FROM w"),
            "1"
        );
        let f = self.failovers();
        assert_eq!(f.len(), 1);
        f[0].clone()
    }

    pub fn start(&self, failpoints: &str) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.pg.lab.p("daemon.log"))
            .unwrap();
        let mut c = self.pg.cmd(&["serve"]);
        c.stdout(Stdio::null()).stderr(log);
        if !failpoints.is_empty() {
            c.env("LIFEBOAT_FAILPOINTS", failpoints);
        }
        Daemon(c.spawn().unwrap())
    }

    /// Insert `v` through the endpoint: the port of the server that acknowledged it.
    pub fn write(&self, v: i32) -> Option<u16> {
        self.pg
            .try_sql_on(
                self.front,
                "postgres",
                &format!("INSERT INTO w VALUES ({v}) RETURNING inet_server_port()"),
            )
            .ok()
            .and_then(|s| s.parse().ok())
    }

    /// Write until `n` writes are acknowledged (the daemon routes), within 20 s.
    pub fn write_some(&self, log: &mut Writes, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < n {
            assert!(
                Instant::now() < deadline,
                "no write went through the endpoint:\n{}",
                self.daemon_log()
            );
            if log.write(self) {
                got += 1;
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The daemon ended by SIGKILL (its failpoint fired).
    pub fn assert_died_at_failpoint(&self, daemon: &mut Daemon) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = daemon.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the failpoint never fired:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{}",
            self.daemon_log()
        );
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.pg.lab.p("daemon.log")).unwrap_or_default()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(self.pg.lab.p(".lifeboat/failover/db.json")).unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    pub fn in_recovery(&self, port: u16) -> Option<bool> {
        self.pg
            .try_sql_on(port, "postgres", "SELECT pg_is_in_recovery()")
            .ok()
            .map(|s| s == "t")
    }

    /// Every process of a data directory's server (postmaster and children).
    pub fn signal_server(&self, dir: &str, sig: i32) {
        let pid = self.pg.postmaster_pid(dir);
        let children = std::process::Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .unwrap();
        unsafe { libc::kill(pid, sig) };
        for c in String::from_utf8_lossy(&children.stdout).lines() {
            if let Ok(c) = c.trim().parse::<i32>() {
                unsafe { libc::kill(c, sig) };
            }
        }
    }

    pub fn failovers(&self) -> Vec<serde_json::Value> {
        self.pg
            .events()
            .into_iter()
            .filter(|e| e["command"] == "failover")
            .collect()
    }

    /// Block until the standby is the primary and takes writes through the endpoint.
    pub fn await_failover(&self, log: &mut Writes, within: Duration) {
        self.await_primary(log, self.sport, within);
    }

    /// Every acknowledged write is on the server that is primary now.
    pub fn assert_nothing_lost(&self, log: &Writes, port: u16) {
        let have: Vec<i32> = self
            .pg
            .sql_on(port, "postgres", "SELECT v FROM w ORDER BY v")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let lost: Vec<&i32> = log.acked.iter().filter(|a| !have.contains(a)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // A test that failed while the primary was frozen: thaw it so it can be stopped.
        if self.pg.lab.p("pgdata/postmaster.pid").exists() {
            self.signal_server("pgdata", libc::SIGCONT);
        }
    }
}

/// What a client writing through the endpoint saw: acknowledged values and, in order, the
/// server port that acknowledged each.
#[derive(Default)]
pub struct Writes {
    pub next: i32,
    pub acked: Vec<i32>,
    pub servers: Vec<u16>,
}

impl Writes {
    pub fn write(&mut self, pair: &Pair) -> bool {
        self.next += 1;
        match pair.write(self.next) {
            Some(port) => {
                self.acked.push(self.next);
                self.servers.push(port);
                true
            }
            None => false,
        }
    }

    /// Once the standby took a write, the old primary never took one again (no instant with
    /// two primaries behind the endpoint).
    pub fn assert_one_primary_at_a_time(&self, old: u16, new: u16) {
        if let Some(first_new) = self.servers.iter().position(|p| *p == new) {
            assert!(
                !self.servers[first_new..].contains(&old),
                "writes went to {old} after {new} took over: {:?}",
                self.servers
            );
        }
    }
}

impl Pair {
    /// Block until writes through the endpoint land on `port`.
    pub fn await_primary(&self, log: &mut Writes, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            assert!(
                Instant::now() < deadline,
                "no write reached port {port} within {within:?}:\n{}",
                self.daemon_log()
            );
            if log.write(self) && log.servers.last() == Some(&port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Pair {
    /// Give the plan an API on a free port with one token per `(name, role)`: the port and
    /// the tokens, in order.
    pub fn with_api(&self, tokens: &[(&str, &str)]) -> (u16, Vec<String>) {
        let port = free_port();
        let mut plan = std::fs::read_to_string(self.pg.lab.p("lifeboat.yaml")).unwrap();
        plan.push_str(&format!(
            "api:\n  listen: \"127.0.0.1:{port}\"\n  tokens:\n"
        ));
        let mut out = Vec::new();
        for (name, role) in tokens {
            let r = self
                .pg
                .ok(&["--json", "api", "token", name, "--role", role])
                .json();
            plan.push_str(&format!(
                "    - {{ name: {name}, role: {role}, sha256: {} }}\n",
                r["sha256"].as_str().unwrap()
            ));
            out.push(r["token"].as_str().unwrap().to_string());
        }
        std::fs::write(self.pg.lab.p("lifeboat.yaml"), plan).unwrap();
        (port, out)
    }

    /// Wait until the daemon's API says it is ready (every monitor has checked once).
    pub fn await_api(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::http(port, "GET", "/readyz", None, None).0 != 200 {
            assert!(Instant::now() < deadline, "{}", self.daemon_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
