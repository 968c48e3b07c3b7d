//! `lifeboat lab`: a two-site environment built from the PostgreSQL binaries on this machine —
//! a primary (site `east`) and a streaming standby (`west`, synchronous unless asked
//! otherwise) of one cluster, WAL archived by `lifeboat wal push`, a repository per site (the
//! second a cross-region copy), a generated plan with a tier and drills, a first base backup,
//! and `lifeboat serve` with its traffic endpoint and DNS name.
//!
//! As root, PostgreSQL runs as `postgres` (the lab belongs to it) and each site lives in its
//! own network namespace (see `labnet`): the members get their own addresses, share port 5432,
//! and a partition is a link set down. As a normal user, or with `--loopback`, everything runs
//! on loopback ports picked free, and `partition-site` (root only) cuts the primary's address
//! and port off with a per-drill nftables table. `lab down` stops every process working in the
//! lab directory, removes its namespaces and the directory; run twice, the second finds
//! nothing to do.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use lifeboat_core::{Error, Kind};

use crate::ledger::start_time;

/// What `lab up` made, kept in `DIR/lab.json` (which marks the directory as a lab).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub plan: PathBuf,
    pub replication: String,
    pub east_port: u16,
    pub west_port: u16,
    /// `namespaces` (a network namespace per site, as root) or `loopback`.
    #[serde(default)]
    pub network: String,
    /// The members' addresses (127.0.0.1 on loopback).
    #[serde(default = "loopback")]
    pub east_host: String,
    #[serde(default = "loopback")]
    pub west_host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::labnet::LabNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_delay: Option<String>,
    pub endpoint: String,
    pub dns: String,
    pub dns_name: String,
    /// Where the daemon serves /metrics.
    #[serde(default)]
    pub metrics: String,
    /// Where the daemon serves its API and dashboard (the token is in `api.token`).
    #[serde(default)]
    pub api: String,
    pub daemon_pid: u32,
    pub daemon_start: u64,
    pub created: String,
    /// Agents coordinated through etcd instead of the daemon (`lab up --agents`): a third,
    /// witness site with etcd and an endpoint only.
    #[serde(default)]
    pub agents: bool,
    /// etcd's client addresses, one member per site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// Each site's traffic endpoint (site, address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_endpoints: Vec<(String, String)>,
}

pub const MARKER: &str = "lab.json";

fn loopback() -> String {
    "127.0.0.1".into()
}

pub struct LabOpts {
    pub dir: PathBuf,
    pub asynchronous: bool,
    /// Everything on loopback even as root (no namespaces: partition-site then cuts the
    /// primary off with an nftables table on this machine).
    pub loopback: bool,
    /// A WAN delay on every site link (`tc netem delay`, e.g. `20ms`), namespaces only.
    pub wan_delay: Option<String>,
    /// Agents beside each member coordinated through etcd (one member per site, a third
    /// witness site), instead of the daemon. Root only: every site in its namespace.
    pub agents: bool,
}

/// The port of every site's traffic endpoint in an agents lab.
const SITE_ENDPOINT_PORT: u16 = 6432;
/// etcd's client and peer ports on each site's address.
const ETCD_CLIENT: u16 = 2379;
const ETCD_PEER: u16 = 2380;

impl LabState {
    fn netns(&self, site: &str) -> Option<&str> {
        self.net.as_ref().and_then(|n| n.netns_of(site))
    }

    fn host(&self, site: &str) -> &str {
        if site == "east" {
            &self.east_host
        } else {
            &self.west_host
        }
    }

    fn port(&self, site: &str) -> u16 {
        if site == "east" {
            self.east_port
        } else {
            self.west_port
        }
    }

    /// The scenarios this lab cannot run honestly, and why.
    pub fn cannot_run(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.net.is_none() {
            if crate::can_be_root() {
                v.push("partition-site runs, as an nftables table on this machine's loopback (both sites share it)".into());
            } else {
                v.push("partition-site: cutting a member off needs root (the sites share this machine's loopback)".into());
            }
            v.push("writers through the DNS name: the sites share one address (each member has its own port)".into());
        }
        v
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::new(Kind::Source, msg.into())
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{}: {e}", p.display()))
}

/// The user PostgreSQL runs as: `postgres` when this runs as root, else this user.
fn owner() -> Result<Option<(u32, u32)>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lifeboat_pg::user_ids("postgres").map(Some).ok_or_else(|| {
        Error::new(
            Kind::Input,
            "running as root, and there is no `postgres` user for PostgreSQL to run as",
        )
        .hint("create one (Debian's postgresql package does), or run the lab as a normal user")
    })
}

struct Shell {
    dir: PathBuf,
    owner: Option<(u32, u32)>,
    bin: PathBuf,
}

impl Shell {
    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("LC_ALL", "C")
            .env("LIFEBOAT_PROGRESS", "0")
            .env_remove("LIFEBOAT_PLAN")
            .env_remove("LIFEBOAT_STATE_DIR")
            .env_remove("PGPASSWORD")
            .stdin(std::process::Stdio::null());
        if let Some((u, g)) = self.owner {
            c.uid(u).gid(g);
        }
        c
    }

    /// [`Shell::cmd`] left as root.
    fn cmd_as_root(&self, program: &Path) -> Command {
        let mut c = self.cmd(program);
        if self.owner.is_some() {
            c.uid(0).gid(0);
        }
        c
    }

    /// Start a site's server (in its namespace when it has one), waiting until it runs.
    fn start(&self, st: &LabState, site: &str) -> Result<(), Error> {
        let data = self.dir.join(site).join("data");
        let log = format!("{site}/postgres.log");
        let mut c = self.cmd_as_root(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&data)
            .args(["-l", &log, "-w", "-t", "60", "start"]);
        lifeboat_pg::as_owner_of_in(&mut c, &data, st.netns(site))?;
        let out = c
            .output()
            .map_err(|e| err(format!("starting {site}: pg_ctl: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "starting {site} failed: {}{} (see {log})",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn run(&self, program: &Path, args: &[&str], what: &str) -> Result<String, Error> {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .map_err(|e| err(format!("{what}: {}: {e}", program.display())))?;
        if !out.status.success() {
            return Err(err(format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn pg(&self, tool: &str, args: &[&str], what: &str) -> Result<String, Error> {
        self.run(&self.bin.join(tool), args, what)
    }

    fn lifeboat(&self, args: &[&str], what: &str) -> Result<String, Error> {
        let mut a = vec!["--plan", "lifeboat.yaml"];
        a.extend_from_slice(args);
        self.run(&self.dir.join("lifeboat"), &a, what)
    }

    fn sql(&self, host: &str, port: u16, q: &str) -> Result<String, Error> {
        let p = port.to_string();
        self.pg(
            "psql",
            &[
                "-X",
                "-h",
                host,
                "-p",
                &p,
                "-U",
                "postgres",
                "-Atq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                q,
            ],
            "psql",
        )
    }

    fn chown(&self, p: &Path) {
        if let Some((u, g)) = self.owner {
            let _ = lifeboat_pg::chown_tree(p, u, g);
        }
    }
}

/// Distinct free ports on loopback.
fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(
            std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::new(Kind::Io, format!("finding a free port: {e}")))?,
        );
    }
    let ports = held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
        .collect();
    Ok(ports)
}

fn member_line(s: &LabState, site: &str) -> String {
    let ns = s
        .netns(site)
        .map(|n| format!(", netns: {n}"))
        .unwrap_or_default();
    format!(
        "{site}: {{ host: {}, port: {}, user: postgres, data_dir: {site}/data{ns} }}",
        s.host(site),
        s.port(site)
    )
}

fn plan_text(s: &LabState) -> String {
    let sync = s.replication == "sync";
    let (tier, objectives) = if sync {
        ("critical", "{ rpo: 0, rto: 30s }")
    } else {
        ("standard", "{ rpo: 5s, rto: 30s }")
    };
    format!(
        r#"# A two-site lab made by `lifeboat lab up`: a primary (east) and a {mode} streaming
# standby (west) of one PostgreSQL cluster on this machine, a repository per site (west's is
# the cross-region copy), and the daemon with its traffic endpoint and DNS name.
# Drill it: lifeboat drill run kill-primary    Remove it: lifeboat lab down
name: lab
tiers:
  {tier}: {objectives}
sites: [east, west]
services:
  db:
    kind: postgres
    tier: {tier}
    members:
      {east}
      {west}
    replication: {{ mode: {mode} }}
    checks: ["SELECT count(*) > 0 FROM pg_database"]
    failover:
      listen: "{endpoint}"
      dns: {{ listen: "{dns}", name: {dns_name}, ttl: 1s }}
repositories:
  east-repo: {{ url: east/repo, key_file: lab.key }}
  west-repo: {{ url: west/repo, key_file: lab.key }}
backups:
  db-base: {{ service: db, repository: east-repo, copy_to: [west-repo], retention: {{ last: 3 }} }}
metrics: {{ listen: "{metrics}", probe_interval: 5s }}
# The dashboard and API; the token is in api.token beside this plan.
api:
  listen: "{api}"
  tokens:
    - {{ name: lab-admin, role: admin, token: "file:{token}" }}
drills:
  kill-primary: {{ scenario: kill-primary, service: db }}
  hang-primary: {{ scenario: hang-primary, service: db }}
  # {partition}
  partition-site: {{ scenario: partition-site, service: db }}
  switchover: {{ scenario: switchover, service: db }}
  corrupt-data: {{ scenario: corrupt-data, service: db }}
  # Restored from the archive alone, the newest data is as old as the last archived segment
  # (archive_timeout is 1 min here); its RPO is the one for losing both sites.
  restore-only: {{ scenario: restore-only, service: db, objectives: {{ rpo: 5m }} }}
  # East and east-repo gone; the service rebuilt in west from west-repo alone. What was
  # written after the copy's last run is lost: the RPO is the copy's schedule.
  lose-region: {{ scenario: lose-region, service: db, objectives: {{ rpo: 5m, rto: 2m }} }}
"#,
        mode = s.replication,
        east = member_line(s, "east"),
        west = member_line(s, "west"),
        partition = if s.net.is_some() {
            "Each site is a network namespace: the primary's links are set down, then up."
        } else {
            "Needs root: an nftables table cuts the primary's address off (every path to it on\n  # this machine), removed when the drill ends."
        },
        endpoint = s.endpoint,
        dns = s.dns,
        dns_name = s.dns_name,
        metrics = s.metrics,
        api = s.api,
        token = s.dir.join("api.token").display(),
    )
}

/// The plan of an agents lab: the same cluster and repositories, a witness site, the
/// coordinator and an endpoint per site; no daemon sections and no drills (drills measure
/// the daemon's failovers).
fn agents_plan_text(s: &LabState) -> String {
    let etcd = s
        .etcd
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let endpoints = s
        .site_endpoints
        .iter()
        .map(|(site, a)| format!("{site}: \"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# A three-site lab made by `lifeboat lab up --agents`: a primary (east) and a {mode}
# streaming standby (west) of one PostgreSQL cluster, and a witness site with no server. Each
# site is a network namespace with an etcd member and a traffic endpoint; beside each server
# its agent (`lifeboat agent --member SITE`) holds or waits for the leader key. No daemon:
# nothing here runs `lifeboat serve`. Remove it: lifeboat lab down
name: lab
tiers:
  critical: {{ rpo: 0, rto: 30s }}
sites: [east, west, witness]
coordinator:
  etcd: [{etcd}]
services:
  db:
    kind: postgres
    tier: critical
    members:
      {east}
      {west}
    replication: {{ mode: {mode} }}
    checks: ["SELECT count(*) > 0 FROM pg_database"]
    failover:
      # Clients list every site's endpoint (target_session_attrs=read-write).
      site_listen: {{ {endpoints} }}
repositories:
  east-repo: {{ url: east/repo, key_file: lab.key }}
  west-repo: {{ url: west/repo, key_file: lab.key }}
backups:
  db-base: {{ service: db, repository: east-repo, copy_to: [west-repo], retention: {{ last: 3 }} }}
"#,
        mode = s.replication,
        east = member_line(s, "east"),
        west = member_line(s, "west"),
    )
}

/// Build the lab. On failure, what was started is stopped and the directory removed.
pub fn up(o: &LabOpts, say: &dyn Fn(&str)) -> Result<LabState, Error> {
    let dir = std::path::absolute(&o.dir).map_err(|e| io(&o.dir, e))?;
    if dir.join(MARKER).exists() {
        return Err(Error::new(
            Kind::Input,
            format!("a lab is already up in {}", dir.display()),
        )
        .hint("`lifeboat lab down` removes it, or pass another --dir"));
    }
    if has_entries(&dir)? {
        return Err(Error::new(
            Kind::Input,
            format!("{} exists and is not empty", dir.display()),
        )
        .hint("pass an empty or new --dir"));
    }
    let bin = lifeboat_pg::detect_bin_dir();
    if !bin.join("initdb").exists() {
        return Err(Error::new(
            Kind::Input,
            "PostgreSQL's programs (initdb, pg_ctl) are not installed here",
        )
        .hint("install PostgreSQL (Debian: postgresql), or put pg_config on PATH"));
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let sh = Shell {
        dir: dir.clone(),
        owner: owner()?,
        bin,
    };
    sh.chown(&dir);
    let r = build(&sh, o, say);
    if r.is_err() {
        let _ = down(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn build(sh: &Shell, o: &LabOpts, say: &dyn Fn(&str)) -> Result<LabState, Error> {
    let dir = &sh.dir;
    if sh.owner.is_some()
        && sh
            .run(Path::new("/bin/sh"), &["-c", "test -w ."], "access")
            .is_err()
    {
        return Err(Error::new(
            Kind::Input,
            format!("the postgres user cannot reach {}", dir.display()),
        )
        .hint("pass a --dir every user can reach, e.g. under /tmp"));
    }
    let lb = dir.join("lifeboat");
    let exe = std::env::current_exe().map_err(|e| err(format!("finding lifeboat: {e}")))?;
    if std::fs::hard_link(&exe, &lb).is_err() {
        std::fs::copy(&exe, &lb).map_err(|e| io(&lb, e))?;
    }
    let mut key = [0u8; 24];
    let _ = getrandom::fill(&mut key);
    let key_path = dir.join("lab.key");
    std::fs::write(&key_path, format!("{}\n", hex::encode(key))).map_err(|e| io(&key_path, e))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
    let mut token = [0u8; 32];
    let _ = getrandom::fill(&mut token);
    let token_path = dir.join("api.token");
    std::fs::write(&token_path, format!("lbt_{}\n", hex::encode(token)))
        .map_err(|e| io(&token_path, e))?;
    let _ = std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600));
    if o.agents && (o.loopback || sh.owner.is_none()) {
        return Err(Error::new(
            Kind::Input,
            "an agents lab gives each site its own network namespace (its server, agent, etcd member and endpoint cut off together by a partition): it needs root and no --loopback",
        ));
    }
    let sites: &[&str] = if o.agents {
        &["east", "west", "witness"]
    } else {
        &["east", "west"]
    };
    for d in sites {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| io(dir, e))?;
    }
    let ports = free_ports(6)?;
    let sync = !o.asynchronous;
    let mut st = LabState {
        dir: dir.clone(),
        plan: dir.join("lifeboat.yaml"),
        replication: if sync { "sync" } else { "async" }.into(),
        east_port: ports[0],
        west_port: ports[1],
        network: "loopback".into(),
        east_host: loopback(),
        west_host: loopback(),
        net: None,
        wan_delay: None,
        endpoint: format!("127.0.0.1:{}", ports[2]),
        dns: format!("127.0.0.1:{}", ports[3]),
        dns_name: "db.lab.internal".into(),
        metrics: format!("127.0.0.1:{}", ports[4]),
        api: format!("127.0.0.1:{}", ports[5]),
        daemon_pid: 0,
        daemon_start: 0,
        created: jiff::Timestamp::now().to_string(),
        agents: o.agents,
        etcd: Vec::new(),
        site_endpoints: Vec::new(),
    };
    // The marker first: whatever is made from here on, `lab down` finds and removes.
    save(&st)?;
    if o.wan_delay.is_some() && (o.loopback || sh.owner.is_none()) {
        return Err(Error::new(
            Kind::Input,
            "a WAN delay is set on the links between the sites' network namespaces: it needs root and no --loopback",
        ));
    }
    if sh.owner.is_some() && !o.loopback {
        if !crate::labnet::available() {
            return Err(Error::new(
                Kind::Input,
                "a lab built by root gives each site a network namespace, and `ip` (iproute2) is not installed",
            )
            .hint("install iproute2, or run `lab up --loopback`"));
        }
        let keep = |n: &crate::labnet::LabNet| {
            let mut s2 = st.clone();
            s2.net = Some(n.clone());
            save(&s2)
        };
        let net = crate::labnet::create(sites, o.wan_delay.as_deref(), &keep)?;
        say(&format!(
            "network: a namespace per site ({}), joined by a veth pair; this machine at {}{}",
            net.netns
                .iter()
                .map(|(s, n)| format!("{s} {n} {}", net.site_addr(s)))
                .collect::<Vec<_>>()
                .join(", "),
            net.host_addr(),
            o.wan_delay
                .as_deref()
                .map(|d| format!(", WAN delay {d} each way"))
                .unwrap_or_default()
        ));
        st.network = "namespaces".into();
        st.east_host = net.site_addr("east");
        st.west_host = net.site_addr("west");
        // Each site has its own address: both servers use PostgreSQL's port.
        st.east_port = 5432;
        st.west_port = 5432;
        st.wan_delay = o.wan_delay.clone();
        if o.agents {
            st.etcd = sites
                .iter()
                .map(|s| format!("{}:{ETCD_CLIENT}", net.site_addr(s)))
                .collect();
            st.site_endpoints = sites
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        format!("{}:{SITE_ENDPOINT_PORT}", net.site_addr(s)),
                    )
                })
                .collect();
            // Clients (and `lab status`) use the witness's endpoint.
            st.endpoint = format!("{}:{SITE_ENDPOINT_PORT}", net.site_addr("witness"));
            st.dns = String::new();
            st.metrics = String::new();
            st.api = String::new();
        }
        st.net = Some(net);
        save(&st)?;
    }
    let text = if o.agents {
        agents_plan_text(&st)
    } else {
        plan_text(&st)
    };
    std::fs::write(&st.plan, text).map_err(|e| io(&st.plan, e))?;
    sh.chown(dir);

    say(&format!(
        "east: initdb, primary on {}:{}",
        st.east_host, st.east_port
    ));
    sh.pg(
        "initdb",
        &["-D", "east/data", "-A", "trust", "-U", "postgres", "-k"],
        "initdb",
    )?;
    let archive = format!(
        "{} --plan {} wal push db %p",
        lb.display(),
        st.plan.display()
    );
    let common = format!(
        "\nunix_socket_directories = ''\nwal_level = replica\n\
         archive_mode = on\narchive_command = '{archive}'\nwal_log_hints = on\nmax_wal_senders = 8\n\
         wal_keep_size = '256MB'\narchive_timeout = 60\nshared_buffers = 32MB\nlog_line_prefix = '%m [%p] '\n"
    );
    append(
        &dir.join("east/data/postgresql.conf"),
        &format!(
            "{common}listen_addresses = '{}'\nport = {}\n",
            st.east_host, st.east_port
        ),
    )?;
    if let Some(net) = &st.net {
        // The sites and this machine reach the servers over the lab's links.
        append(
            &dir.join("east/data/pg_hba.conf"),
            &format!(
                "host all all {p}.0/24 trust\nhost replication all {p}.0/24 trust\n",
                p = net.prefix
            ),
        )?;
    }
    sh.lifeboat(&["repo", "init"], "repo init")?;
    sh.start(&st, "east")?;
    say(&format!(
        "west: pg_basebackup from east, {} standby on {}:{}",
        st.replication, st.west_host, st.west_port
    ));
    let east = st.east_port.to_string();
    sh.pg(
        "pg_basebackup",
        &[
            "-h",
            &st.east_host,
            "-p",
            &east,
            "-U",
            "postgres",
            "-D",
            "west/data",
            "-X",
            "stream",
            "-R",
            "--checkpoint=fast",
        ],
        "pg_basebackup",
    )?;
    // West names east as its synchronous standby, ready for the roles to swap.
    append(
        &dir.join("west/data/postgresql.auto.conf"),
        &format!(
            "listen_addresses = '{}'\nport = {}\nprimary_conninfo = 'host={} port={} user=postgres application_name=west'\nsynchronous_standby_names = '{}'\n",
            st.west_host,
            st.west_port,
            st.east_host,
            st.east_port,
            if sync { "east" } else { "" }
        ),
    )?;
    sh.chown(&dir.join("west"));
    sh.start(&st, "west")?;
    if sync {
        sh.sql(
            &st.east_host,
            st.east_port,
            "ALTER SYSTEM SET synchronous_standby_names = 'west'",
        )?;
        sh.sql(&st.east_host, st.east_port, "SELECT pg_reload_conf()")?;
    }
    await_streaming(sh, &st.east_host, st.east_port)?;
    say("a first base backup into east-repo, copied to west-repo");
    sh.lifeboat(&["backup", "db-base"], "the first base backup")?;
    if o.agents {
        start_agents(sh, &mut st, say)?;
        return Ok(st);
    }
    say(&format!(
        "the daemon: endpoint {}, DNS {} on {}",
        st.endpoint, st.dns_name, st.dns
    ));
    let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| io(dir, e))?;
    sh.chown(&dir.join("daemon.log"));
    // On namespaces the daemon starts as root and works as postgres, keeping root to start
    // members in their namespaces (a switchover restarts the old primary).
    let mut c = if st.net.is_some() {
        sh.cmd_as_root(&lb)
    } else {
        sh.cmd(&lb)
    };
    c.args(["--plan", "lifeboat.yaml", "serve"])
        .env("LIFEBOAT_ACTOR", "lab")
        .stdout(log.try_clone().map_err(|e| io(dir, e))?)
        .stderr(log);
    detached(&mut c);
    let child = c
        .spawn()
        .map_err(|e| err(format!("starting lifeboat serve: {e}")))?;
    st.daemon_pid = child.id();
    st.daemon_start = start_time(child.id()).unwrap_or(0);
    std::mem::forget(child);
    save(&st)?;
    sh.chown(&dir.join(MARKER));
    await_endpoint(sh, &st)?;
    Ok(st)
}

/// The child in a session of its own: what the lab starts outlives the command that built it.
fn detached(c: &mut Command) {
    // SAFETY: setsid is async-signal-safe, called in the child before exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Start `program args` in `site`'s namespace, as root (it works as the lab's owner where it
/// must, as `lifeboat` does), in its own session, its output in `log`.
fn spawn_in_site(
    sh: &Shell,
    st: &LabState,
    site: &str,
    program: &Path,
    args: &[&str],
    log: &str,
) -> Result<(), Error> {
    let f = std::fs::File::create(sh.dir.join(log)).map_err(|e| io(&sh.dir, e))?;
    let mut c = sh.cmd_as_root(program);
    c.args(args)
        .env("LIFEBOAT_ACTOR", "lab")
        .stdout(f.try_clone().map_err(|e| io(&sh.dir, e))?)
        .stderr(f);
    // Root's own directory: the child stays root inside the namespace.
    lifeboat_pg::as_owner_of_in(&mut c, Path::new("/"), st.netns(site))?;
    detached(&mut c);
    let child = c
        .spawn()
        .map_err(|e| err(format!("starting {} in {site}: {e}", program.display())))?;
    std::mem::forget(child);
    Ok(())
}

/// An agents lab's coordination: an etcd member per site, an agent beside each server, the
/// witness's endpoint; then wait until the endpoints route to the primary.
fn start_agents(sh: &Shell, st: &mut LabState, say: &dyn Fn(&str)) -> Result<(), Error> {
    let net = st.net.clone().expect("an agents lab has namespaces");
    let sites = ["east", "west", "witness"];
    let initial = sites
        .iter()
        .map(|s| format!("{s}=http://{}:{ETCD_PEER}", net.site_addr(s)))
        .collect::<Vec<_>>()
        .join(",");
    let etcd = which("etcd").ok_or_else(|| {
        Error::new(Kind::Input, "etcd is not installed here")
            .hint("install it (Debian: etcd-server), or build the lab without --agents")
    })?;
    say(&format!("etcd: a member per site ({})", st.etcd.join(", ")));
    for site in sites {
        let addr = net.site_addr(site);
        let client = format!("http://{addr}:{ETCD_CLIENT}");
        let peer = format!("http://{addr}:{ETCD_PEER}");
        let data = format!("{site}/etcd");
        spawn_in_site(
            sh,
            st,
            site,
            &etcd,
            &[
                "--name",
                site,
                "--data-dir",
                &data,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "100",
                // Loopback-fast links: a new etcd leader within about half a second, well
                // inside the agents' lease (3 s, stopped 1 s before it could run out).
                "--election-timeout",
                "500",
                // A member coming back from a partition does not depose the leader the others
                // kept (without it, its higher term forces an election: seconds with no
                // leader, in which no lease can be renewed).
                "--pre-vote",
            ],
            &format!("{site}/etcd.log"),
        )?;
    }
    await_etcd(st)?;
    let lb = sh.dir.join("lifeboat");
    for site in ["east", "west"] {
        say(&format!(
            "{site}: its agent, and its endpoint on {}",
            endpoint_of(st, site)
        ));
        spawn_in_site(
            sh,
            st,
            site,
            &lb,
            &["--plan", "lifeboat.yaml", "agent", "--member", site],
            &format!("{site}/agent.log"),
        )?;
    }
    say(&format!(
        "witness: its endpoint on {} (no server)",
        endpoint_of(st, "witness")
    ));
    spawn_in_site(
        sh,
        st,
        "witness",
        &lb,
        &["--plan", "lifeboat.yaml", "endpoint", "--site", "witness"],
        "witness/endpoint.log",
    )?;
    save(st)?;
    sh.chown(&sh.dir.join(MARKER));
    let deadline = Instant::now() + Duration::from_secs(30);
    for (site, addr) in &st.site_endpoints {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
        let port: u16 = port.parse().unwrap_or(0);
        while sh
            .sql(host, port, "SELECT pg_is_in_recovery()")
            .ok()
            .as_deref()
            != Some("f")
        {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(sh.dir.join("east/agent.log")).unwrap_or_default();
                return Err(err(format!(
                    "{site}'s endpoint {addr} did not reach the primary within 30 s; east's agent:\n{}",
                    lifeboat_core::error::stderr_tail(&log, 15)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn endpoint_of<'a>(st: &'a LabState, site: &str) -> &'a str {
    st.site_endpoints
        .iter()
        .find(|(s, _)| s == site)
        .map_or("", |(_, a)| a.as_str())
}

/// A program on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Until every etcd member answers `/health` healthy (30 s at most).
fn await_etcd(st: &LabState) -> Result<(), Error> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in &st.etcd {
        loop {
            let healthy = std::net::TcpStream::connect(addr)
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
                    let mut t = String::new();
                    s.read_to_string(&mut t)?;
                    Ok(t)
                })
                .is_ok_and(|t| t.contains("\"health\":\"true\""));
            if healthy {
                break;
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "etcd at {addr} was not healthy within 30 s (see its site's etcd.log)"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn append(p: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| io(p, e))
}

fn save(st: &LabState) -> Result<(), Error> {
    let p = st.dir.join(MARKER);
    std::fs::write(&p, serde_json::to_vec_pretty(st).unwrap_or_default()).map_err(|e| io(&p, e))
}

fn await_streaming(sh: &Shell, host: &str, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sh
            .sql(
                host,
                port,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .is_ok_and(|n| n != "0")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(err(
                "the standby did not stream from the primary within 60 s (see west/postgres.log)",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn await_endpoint(sh: &Shell, st: &LabState) -> Result<(), Error> {
    let port = st.endpoint.rsplit_once(':').map(|(_, p)| p).unwrap_or("0");
    let port: u16 = port.parse().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if sh.sql("127.0.0.1", port, "SELECT 1").is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline || start_time(st.daemon_pid) != Some(st.daemon_start) {
            let log = std::fs::read_to_string(st.dir.join("daemon.log")).unwrap_or_default();
            return Err(err(format!(
                "the daemon's endpoint {} did not take a connection within 30 s; its log:\n{}",
                st.endpoint,
                lifeboat_core::error::stderr_tail(&log, 15)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `dir` exists and holds anything.
fn has_entries(dir: &Path) -> Result<bool, Error> {
    Ok(dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .next()
            .is_some())
}

pub fn load(dir: &Path) -> Option<LabState> {
    std::fs::read(dir.join(MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Every process whose working directory is inside `dir` (PostgreSQL's servers, sandboxes).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
                && start_time(*pid).is_some()
        })
        .collect()
}

/// Stop everything the lab runs and remove its directory. What was done, in words; nothing
/// when there is no lab there (so it can run twice).
pub fn down(dir: &Path) -> Result<Vec<String>, Error> {
    let dir = std::path::absolute(dir).map_err(|e| io(dir, e))?;
    let mut done = Vec::new();
    let Some(st) = load(&dir) else {
        if has_entries(&dir)? {
            return Err(Error::new(
                Kind::Input,
                format!(
                    "{} is not a lab (it has no {MARKER}): nothing removed",
                    dir.display()
                ),
            ));
        }
        let _ = std::fs::remove_dir(&dir);
        return Ok(done);
    };
    if st.daemon_pid != 0 && start_time(st.daemon_pid) == Some(st.daemon_start) {
        // SAFETY: the daemon's pid, checked against its start time.
        unsafe { libc::kill(st.daemon_pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_time(st.daemon_pid) == Some(st.daemon_start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if start_time(st.daemon_pid) == Some(st.daemon_start) {
            // SAFETY: as above.
            unsafe { libc::kill(st.daemon_pid as i32, libc::SIGKILL) };
        }
        done.push(format!("daemon (pid {}) stopped", st.daemon_pid));
    }
    for _ in 0..50 {
        let pids = processes_in(&dir);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: processes working in the lab's directory; frozen ones are continued so
            // they can die.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
                libc::kill(*pid as i32, libc::SIGCONT);
            }
        }
        if done.last().is_none_or(|l| !l.starts_with("PostgreSQL")) {
            done.push(format!(
                "PostgreSQL and sandbox processes stopped ({})",
                pids.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(net) = &st.net {
        done.extend(crate::labnet::remove(net));
    }
    std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    done.push(format!("{} removed", dir.display()));
    Ok(done)
}

/// The lab's members and daemon, now.
#[derive(Debug, Serialize)]
pub struct LabStatus {
    pub state: LabState,
    pub daemon_running: bool,
    /// (site, address, role).
    pub members: Vec<(String, String, String)>,
}

pub fn status(dir: &Path) -> Result<LabStatus, Error> {
    let dir = std::path::absolute(dir).map_err(|e| io(dir, e))?;
    let st = load(&dir).ok_or_else(|| {
        Error::new(Kind::Input, format!("no lab in {}", dir.display()))
            .hint("`lifeboat lab up` builds one")
    })?;
    let sh = Shell {
        dir: dir.clone(),
        owner: owner()?,
        bin: lifeboat_pg::detect_bin_dir(),
    };
    let members = ["east", "west"]
        .iter()
        .map(|site| {
            let port = st.port(site);
            let role = match sh.sql(st.host(site), port, "SELECT pg_is_in_recovery()") {
                Ok(r) if r == "t" => "standby".to_string(),
                Ok(_) => "primary".to_string(),
                Err(_) => "not answering".to_string(),
            };
            (site.to_string(), format!("{}:{port}", st.host(site)), role)
        })
        .collect();
    Ok(LabStatus {
        daemon_running: start_time(st.daemon_pid) == Some(st.daemon_start),
        state: st,
        members,
    })
}
