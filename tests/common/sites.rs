//! A three-site lab with agents (`lifeboat lab up --agents`: east, west and a witness, each a
//! network namespace with an etcd member and a traffic endpoint), writers on every site, the
//! faults of the partition suite, and the checker that counts what they did: lost acknowledged
//! writes and split-brain windows. Root only. Used by tests/partitions.rs and, with more
//! trials, by bench/partitions.sh.
//!
//! For the side-by-side the same lab can be handed to Patroni ([`Keeper::Patroni`]): the
//! agents and endpoints are stopped, Patroni runs beside each server on the same etcd members,
//! and the clients' path that stands for the endpoint is libpq's multi-host connection string
//! with `target_session_attrs=read-write` (Patroni has no endpoint of its own).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pg::pg_bin;

pub const SITES: [&str; 3] = ["east", "west", "witness"];

/// Who keeps the service: Lifeboat's agents, or Patroni with the given timing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keeper {
    Lifeboat,
    Patroni {
        ttl: u32,
        loop_wait: u32,
        retry_timeout: u32,
    },
}

impl Keeper {
    /// How long the service may take to be whole again after a fault is healed.
    pub fn settle(&self) -> Duration {
        match self {
            Keeper::Lifeboat => Duration::from_secs(60),
            Keeper::Patroni { ttl, .. } => Duration::from_secs(4 * u64::from(*ttl) + 60),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Keeper::Lifeboat => "lifeboat agents".into(),
            Keeper::Patroni {
                ttl,
                loop_wait,
                retry_timeout,
            } => {
                format!("patroni (ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout})")
            }
        }
    }
}

/// The lab as `lab up --agents --json` described it.
pub struct Sites {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    /// site → its namespace.
    pub netns: BTreeMap<String, String>,
    /// site → its address.
    pub addr: BTreeMap<String, String>,
    /// site → its endpoint (`host:port`, or a libpq connection string for Patroni).
    pub endpoint: BTreeMap<String, String>,
    pub keeper: Keeper,
}

impl Drop for Sites {
    fn drop(&mut self) {
        let _ = self.lifeboat(&["lab", "down", "--dir", self.dir.to_str().unwrap()]);
    }
}

/// One acknowledged write: its value, who wrote it by which path, and the server that took it
/// (address and timeline) at which instant of the server's clock (every site shares this
/// machine's clock).
#[derive(Clone, Debug)]
pub struct Ack {
    pub v: u64,
    pub writer: String,
    pub path: String,
    pub server: String,
    pub timeline: String,
    /// Microseconds since the epoch, from the server's `clock_timestamp()`.
    pub at_us: i64,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Count {
    pub acked: usize,
    pub lost: Vec<u64>,
    /// Split-brain windows: each pair of servers (on their timelines) that took acknowledged
    /// writes in overlapping time — one came back after the other had begun — once per pair:
    /// (the server that came back, the one it overlapped, the first such instant).
    pub split_brain: Vec<(String, String, i64)>,
    /// The servers in the order they took writes.
    pub history: Vec<String>,
}

impl Sites {
    /// Build the lab (`lifeboat lab up --agents`).
    pub fn up() -> Sites {
        Sites::up_with(Keeper::Lifeboat)
    }

    /// Build the lab and hand it to `keeper`.
    pub fn up_with(keeper: Keeper) -> Sites {
        let tmp = tempfile::Builder::new()
            .prefix("lifeboat-sites-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().join("lab");
        let out = Command::new(super::bin())
            .args(["--json", "lab", "up", "--agents", "--dir"])
            .arg(&dir)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up --agents: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut netns = BTreeMap::new();
        let mut addr = BTreeMap::new();
        let prefix = st["net"]["prefix"].as_str().unwrap().to_string();
        for (i, pair) in st["net"]["netns"].as_array().unwrap().iter().enumerate() {
            let site = pair[0].as_str().unwrap().to_string();
            netns.insert(site.clone(), pair[1].as_str().unwrap().to_string());
            addr.insert(site, format!("{prefix}.{}", i + 2));
        }
        let endpoint = st["site_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut s = Sites {
            dir,
            _tmp: tmp,
            netns,
            addr,
            endpoint,
            keeper,
        };
        if let Keeper::Patroni {
            ttl,
            loop_wait,
            retry_timeout,
        } = keeper
        {
            s.hand_to_patroni(ttl, loop_wait, retry_timeout);
        }
        s.sql_via(
            &s.endpoint["witness"],
            // The writers connect as an ordinary role, as applications do: commits that hang
            // (waiting for a synchronous standby) can fill max_connections, and the
            // superuser's reserved slots still let the harness look at the servers.
            "CREATE TABLE w(v bigint PRIMARY KEY, writer text); CREATE ROLE writer LOGIN; GRANT SELECT, INSERT ON w TO writer",
        )
        .unwrap();
        s
    }

    pub fn lifeboat(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.dir.join("lifeboat"))
            .args(["--plan", "lifeboat.yaml"])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// Stop the agents and endpoints, and run Patroni beside each server instead, on the same
    /// etcd members; its first leader is east's server. Patroni's defaults otherwise, with
    /// `synchronous_mode` (the lab's tier is synchronous) and pg_rewind.
    fn hand_to_patroni(&mut self, ttl: u32, loop_wait: u32, retry_timeout: u32) {
        let kill_all = |parts: &[&str]| {
            for (pid, _) in self.pids(parts) {
                // SAFETY: kill(2) on the lab's own processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        };
        kill_all(&["lifeboat", "agent"]);
        kill_all(&["lifeboat", "endpoint"]);
        // Both servers stopped (fast shutdown) and freed of what the agents set with ALTER
        // SYSTEM: Patroni writes its own configuration.
        for site in ["west", "east"] {
            if let Some(pm) = self.postmaster(site) {
                // SAFETY: the lab's own postmaster.
                unsafe { libc::kill(pm, libc::SIGINT) };
            }
            let pidfile = self.dir.join(site).join("data/postmaster.pid");
            let deadline = Instant::now() + Duration::from_secs(60);
            while pidfile.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(!pidfile.exists(), "{site}'s server did not stop");
            std::fs::write(
                self.dir.join(site).join("data/postgresql.auto.conf"),
                "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n",
            )
            .unwrap();
        }
        let clients = format!(
            "host={},{} port=5432,5432 target_session_attrs=read-write",
            self.addr["east"], self.addr["west"]
        );
        for site in SITES {
            self.endpoint.insert(site.to_string(), clients.clone());
        }
        let etcd: Vec<String> = SITES
            .iter()
            .map(|s| format!("{}:2379", self.addr[*s]))
            .collect();
        for site in ["east", "west"] {
            let a = &self.addr[site];
            let d = self.dir.join(site);
            let yml = format!(
                r#"scope: lab
namespace: /patroni/
name: {site}
restapi:
  listen: {a}:8008
  connect_address: {a}:8008
etcd3:
  hosts: [{hosts}]
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        max_wal_senders: 8
        wal_keep_size: 256MB
postgresql:
  listen: {a}:5432
  connect_address: {a}:5432
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser: {{ username: postgres }}
    replication: {{ username: postgres }}
    rewind: {{ username: postgres }}
  parameters:
    unix_socket_directories: ''
    archive_mode: 'off'
"#,
                hosts = etcd.join(", "),
                data = d.join("data").display(),
                bin = pg_bin().display(),
                pgpass = d.join("pgpass").display(),
            );
            std::fs::write(d.join("patroni.yml"), yml).unwrap();
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(d.join("patroni.yml"))
                .status();
            self.start_patroni(site);
            let want = site.to_string();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let ok = if site == "east" {
                    self.primary() == Some(want.clone())
                } else {
                    self.converged_within(Duration::from_secs(1)).is_some()
                };
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "patroni on {site} did not take the server over:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    /// Start Patroni for `site`'s server in the site's namespace, as the servers' owner.
    pub fn start_patroni(&self, site: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(site).join("patroni.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns[site]])
            .args([
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "/usr/bin/patroni",
            ])
            .arg(format!("{site}/patroni.yml"))
            .env("HOME", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::mem::forget(child);
    }

    /// One statement through `host:port` (from this machine), within 3 s.
    pub fn sql_via(&self, hostport: &str, q: &str) -> Result<String, String> {
        self.sql_within(hostport, q, Duration::from_secs(3))
    }

    /// The same within `limit` (a long read).
    pub fn sql_within(&self, hostport: &str, q: &str, limit: Duration) -> Result<String, String> {
        psql(hostport, q, limit)
    }

    /// The site whose server answers as primary, if exactly one does.
    pub fn primary(&self) -> Option<String> {
        let p: Vec<String> = ["east", "west"]
            .iter()
            .filter(|s| {
                self.sql_via(
                    &format!("{}:5432", self.addr[**s]),
                    "SELECT pg_is_in_recovery()",
                )
                .is_ok_and(|r| r == "f")
            })
            .map(|s| s.to_string())
            .collect();
        (p.len() == 1).then(|| p[0].clone())
    }

    /// Until the service is whole again (within `limit`): one primary, the other member its
    /// synchronous standby, every endpoint reaching the primary. The primary's site then.
    pub fn converged_within(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(p) = self.primary() {
                let streaming = self
                    .sql_via(
                        &format!("{}:5432", self.addr[&p]),
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'",
                    )
                    .is_ok_and(|n| n == "1");
                let routed = SITES.iter().all(|s| {
                    self.sql_via(&self.endpoint[*s], "SELECT pg_is_in_recovery()")
                        .is_ok_and(|r| r == "f")
                });
                if streaming && routed {
                    return Some(p);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// The logs of the agents, endpoints and etcd members (for a failed assertion).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let files: &[&str] = match self.keeper {
            Keeper::Lifeboat => &["east/agent.log", "west/agent.log", "witness/endpoint.log"],
            Keeper::Patroni { .. } => &["east/patroni.log", "west/patroni.log"],
        };
        for f in files {
            let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(25).collect();
            out.push_str(&format!("--- {f}:\n"));
            for l in tail.into_iter().rev() {
                out.push_str(&format!("{}\n", &l[..l.len().min(400)]));
            }
        }
        out
    }

    /// Processes working in the lab whose command line has every one of `parts`.
    pub fn pids(&self, parts: &[&str]) -> Vec<(i32, Vec<String>)> {
        let dir = std::fs::canonicalize(&self.dir).unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(&dir))
            })
            .filter_map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let line = args.join(" ");
                parts
                    .iter()
                    .all(|p| line.contains(p))
                    .then_some((pid, args))
            })
            .collect()
    }

    /// The postmaster of `site`'s server.
    pub fn postmaster(&self, site: &str) -> Option<i32> {
        let t = std::fs::read_to_string(self.dir.join(site).join("data/postmaster.pid")).ok()?;
        t.lines().next()?.trim().parse().ok()
    }

    /// Every process of `site`'s server (the postmaster and its children).
    pub fn server_pids(&self, site: &str) -> Vec<i32> {
        let Some(pm) = self.postmaster(site) else {
            return Vec::new();
        };
        let mut v = vec![pm];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pm) {
                v.push(pid);
            }
        }
        v
    }

    /// Start again, in `site`'s namespace, a process killed earlier (its command line).
    pub fn respawn(&self, site: &str, args: &[String], log: &str) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns[site]])
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let child = c.spawn().unwrap();
        std::mem::forget(child);
    }

    /// Set every link of `site`'s namespace down (`up`: back up).
    pub fn links(&self, site: &str, up: bool) {
        let ns = &self.netns[site];
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = l.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap();
            if name == "lo" {
                continue;
            }
            let st = Command::new("ip")
                .args([
                    "-n",
                    ns,
                    "link",
                    "set",
                    name,
                    if up { "up" } else { "down" },
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    /// One-way: `site` receives everything but sends nothing to the other sites (an nftables
    /// table in its namespace); `false` removes it.
    pub fn one_way(&self, site: &str, on: bool) {
        let ns = &self.netns[site];
        let script = if on {
            let others: Vec<&str> = SITES
                .iter()
                .filter(|s| **s != site)
                .map(|s| self.addr[*s].as_str())
                .collect();
            format!(
                "table inet lifeboat_oneway {{\n  chain out {{ type filter hook output priority -10; policy accept; ip daddr {{ {} }} drop; }}\n}}\n",
                others.join(", ")
            )
        } else {
            "delete table inet lifeboat_oneway\n".into()
        };
        use std::io::Write;
        let mut c = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {ns}: {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `psql -c Q` against `target` (`host:port`, or a libpq connection string), killed when it
/// takes longer than `limit` (then the write it carried counts as not acknowledged). Its output
/// is read while it runs (a long answer must not fill the pipe and hold it).
fn psql(target: &str, q: &str, limit: Duration) -> Result<String, String> {
    psql_as("postgres", target, q, limit)
}

/// `psql -c Q` as `user` on `target` (`host:port` or a connection string), killed at `limit`.
fn psql_as(user: &str, target: &str, q: &str, limit: Duration) -> Result<String, String> {
    let mut c = Command::new(pg_bin().join("psql"));
    c.arg("-X");
    if target.contains('=') {
        let db = if target.contains("dbname=") {
            ""
        } else {
            " dbname=postgres"
        };
        c.args(["-d", &format!("{target} user={user}{db}")]);
    } else {
        let (host, port) = target.rsplit_once(':').unwrap();
        c.args(["-h", host, "-p", port, "-U", user, "-d", "postgres"]);
    }
    c.arg("-Atq")
        .args(["-v", "ON_ERROR_STOP=1", "-c", q])
        .env("PGCONNECT_TIMEOUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => {
            // SAFETY: kill(2) on our own child, which the thread above still waits for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err("timed out".into());
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Writers: one thread per site, inside that site's namespace, writing in turn through its own
/// site's endpoint and directly to each server.
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub acks: Arc<Mutex<Vec<Ack>>>,
}

impl Writers {
    pub fn start(s: &Sites) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1));
        let mut threads = Vec::new();
        for site in SITES {
            let ns = PathBuf::from("/run/netns").join(&s.netns[site]);
            let paths = [
                ("endpoint".to_string(), s.endpoint[site].clone()),
                ("east".to_string(), format!("{}:5432", s.addr["east"])),
                ("west".to_string(), format!("{}:5432", s.addr["west"])),
            ];
            let (stop, acks, next) = (stop.clone(), acks.clone(), next.clone());
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let (path, hp) = &paths[i % paths.len()];
                    i += 1;
                    let v = next.fetch_add(1, Ordering::SeqCst);
                    let q = format!(
                        "INSERT INTO w VALUES ({v}, '{site}') RETURNING inet_server_addr()::text || ' ' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || ' ' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
                    );
                    if let Ok(r) = psql_as("writer", hp, &q, Duration::from_secs(2)) {
                        let f: Vec<&str> = r.split_whitespace().collect();
                        if f.len() == 3 {
                            acks.lock().unwrap().push(Ack {
                                v,
                                writer: site.to_string(),
                                path: path.clone(),
                                server: f[0].split('/').next().unwrap_or(f[0]).to_string(),
                                timeline: f[1].to_string(),
                                at_us: f[2].parse().unwrap_or(0),
                            });
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        Writers {
            stop,
            threads,
            acks,
        }
    }

    pub fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let v = self.acks.lock().unwrap().clone();
        v
    }
}

/// This thread into the network namespace at `ns` (threads have their own).
fn enter(ns: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(ns).unwrap();
    // SAFETY: setns on this thread with a namespace descriptor held open across the call.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {}", ns.display());
}

/// Count, Jepsen-style: every acknowledged write missing from `have` (the values the final
/// primary holds) is lost; and ordered by the servers' own clock, a server (on its timeline)
/// that takes a write after another one has begun to take writes is a split brain — each
/// server-and-timeline must take its writes in one run, one after the other.
pub fn check(acks: &[Ack], have: &std::collections::BTreeSet<u64>) -> Count {
    let mut c = Count {
        acked: acks.len(),
        ..Default::default()
    };
    c.lost = acks
        .iter()
        .filter(|a| !have.contains(&a.v))
        .map(|a| a.v)
        .collect();
    let mut sorted: Vec<&Ack> = acks.iter().collect();
    sorted.sort_by_key(|a| a.at_us);
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for a in sorted {
        let id = format!("{}@{}", a.server, a.timeline);
        if current.as_deref() == Some(id.as_str()) {
            continue;
        }
        let other = current.clone().unwrap_or_default();
        let seen = c
            .split_brain
            .iter()
            .any(|(x, y, _)| (*x == id && *y == other) || (*x == other && *y == id));
        if finished.contains(&id) && !seen {
            c.split_brain.push((id.clone(), other, a.at_us));
        }
        if let Some(cur) = current.take() {
            if !finished.contains(&cur) {
                finished.push(cur);
            }
        }
        if !c.history.contains(&id) {
            c.history.push(id.clone());
        }
        current = Some(id);
    }
    c
}

/// A small deterministic generator (xorshift) for seeded trials.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
