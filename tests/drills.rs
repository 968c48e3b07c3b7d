//! Drills against the real lab: `lifeboat lab up` builds a primary and a standby of one real
//! PostgreSQL 15 cluster with the daemon; every scenario runs against it and its measurements
//! are checked for sense; a negative control (replication frozen in an async lab) must lose
//! writes, and the drill must count each one; reports are checked against the evidence log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, Run};

/// A lab in a fresh directory every user can reach (PostgreSQL runs as `postgres` under root).
struct TestLab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl TestLab {
    fn up(extra: &[&str]) -> TestLab {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("lab");
        let mut args = vec!["lab", "up", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = run_in(tmp.path(), &args);
        assert_eq!(r.code, 0, "lab up:\n{}", r.all());
        TestLab { _tmp: tmp, dir }
    }

    fn plan(&self) -> String {
        self.dir.join("lifeboat.yaml").display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--plan").arg(self.plan()).args(args);
        c.current_dir(&self.dir)
            .env("LIFEBOAT_PROGRESS", "0")
            .env("LIFEBOAT_ACTOR", "test")
            .env_remove("LIFEBOAT_PLAN")
            .env_remove("LIFEBOAT_STATE_DIR");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }

    /// `drill run NAME --json`: the summary and the full JSON report it wrote.
    fn drill(&self, args: &[&str]) -> (Run, serde_json::Value, serde_json::Value) {
        let mut a = vec!["--json", "drill", "run"];
        a.extend_from_slice(args);
        let r = self.run(&a);
        let summary = r.json();
        let path = summary["reports"]["json"][0].as_str().unwrap_or_else(|| {
            panic!(
                "no report:\n{}\ndaemon log:\n{}",
                r.all(),
                self.daemon_log()
            )
        });
        let full: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        (r, summary, full)
    }

    fn daemon_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        log.lines()
            .filter(|l| !l.contains("\"stay\""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Roles now, by site (from `lab status`).
    fn roles(&self) -> Vec<(String, String)> {
        let r = run_in(
            &self.dir,
            &[
                "--json",
                "lab",
                "status",
                "--dir",
                self.dir.to_str().unwrap(),
            ],
        );
        r.json()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m[0].as_str().unwrap().into(), m[2].as_str().unwrap().into()))
            .collect()
    }

    /// One primary and one standby again (a drill leaves the service whole).
    fn assert_whole(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let roles = self.roles();
            let p = roles.iter().filter(|(_, r)| r == "primary").count();
            let s = roles.iter().filter(|(_, r)| r == "standby").count();
            if p == 1 && s == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the lab is not whole: {roles:?}\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// No process of the lab is stopped (state T).
    fn assert_nothing_frozen(&self) {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                continue;
            };
            if !cwd.starts_with(std::fs::canonicalize(&self.dir).unwrap()) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string));
            assert_ne!(state.as_deref(), Some("T"), "pid {pid} is still frozen");
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = run_in(
            self._tmp.path(),
            &["lab", "down", "--dir", self.dir.to_str().unwrap()],
        );
    }
}

fn run_in(dir: &Path, args: &[&str]) -> Run {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("LIFEBOAT_PROGRESS", "0")
        .env_remove("LIFEBOAT_PLAN")
        .output()
        .unwrap()
        .into()
}

/// GET /metrics from the lab's daemon until the text holds `line` (the repositories are
/// probed every 5 s in a lab).
fn scrape_until(addr: &str, line: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                c,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            if out.lines().any(|l| l.starts_with(line)) {
                return;
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no `{line}` from {addr} within 40 s:\n{last}");
}

fn lifeboat_pg_bin() -> PathBuf {
    common::pg::pg_bin()
}

fn objective<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no objective {name}: {report}"))
}

/// The writes counted again from the report's own evidence (attempts and held ids).
fn recount(full: &serde_json::Value) -> (u64, u64) {
    let held: std::collections::BTreeSet<u64> = full["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    let acked: Vec<u64> = full["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "ok")
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let lost = acked.iter().filter(|id| !held.contains(id)).count() as u64;
    (acked.len() as u64, lost)
}

#[test]
fn sync_lab_runs_every_scenario_with_measurements_that_make_sense() {
    let lab = TestLab::up(&[]);
    assert_eq!(lab.roles()[0], ("east".to_string(), "primary".to_string()));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // A namespace per site: the members have their own addresses and share the port.
        assert_eq!(state["network"], "namespaces", "{state}");
        assert_ne!(state["east_host"], state["west_host"]);
        assert_eq!(state["east_port"], state["west_port"]);
    }

    // kill-primary: the standby takes over, nothing acknowledged is lost.
    let (r, s, full) = lab.drill(&["kill-primary"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    assert_eq!(s["outcome"], "passed");
    assert_eq!(s["primary_before"], "east");
    assert_eq!(s["primary_after"], "west");
    let w = &s["measured"]["writes"];
    assert!(w["acknowledged"].as_u64().unwrap() > 20, "{w}");
    assert_eq!(w["lost"], 0);
    assert_eq!(w["unexpected"], 0);
    assert_eq!(w["duplicated"], 0);
    assert_eq!(recount(&full), (w["acknowledged"].as_u64().unwrap(), 0));
    assert_eq!(s["measured"]["rpo_ms"], 0);
    assert_eq!(s["measured"]["rpo_bytes"], 0);
    let rto = s["measured"]["rto_ms"].as_u64().unwrap();
    assert!(rto > 0 && rto < 30_000, "RTO {rto}");
    let parts: Vec<&str> = s["measured"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["detected", "promoted", "routed", "first write"] {
        assert!(parts.contains(&p), "{parts:?}");
    }
    // The parts fit inside the outage the writers saw.
    let sum: u64 = s["measured"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ms"].as_u64().unwrap())
        .sum();
    assert!(sum <= rto + 100, "parts {sum} ms > RTO {rto} ms");
    for o in ["RPO", "RTO", "lost writes"] {
        assert_eq!(objective(&s, o)["met"], true, "{o}");
    }
    if root {
        // Writers went through the endpoint and through the DNS name; each path has its
        // outage, the RTO is the longest.
        let paths = s["measured"]["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 2, "{paths:?}");
        let mut longest = 0;
        for p in paths {
            let r = p["rto_ms"].as_u64().unwrap();
            assert!(r > 0 && p["acknowledged"].as_u64().unwrap() > 5, "{p}");
            longest = longest.max(r);
        }
        assert_eq!(longest, rto);
        assert!(full["attempts"].to_string().contains("\"via\":\"dns\""));
    }
    lab.assert_whole();

    // Reports: each file is the one the log recorded; an edited one is not.
    for k in ["json", "markdown", "html"] {
        let f = s["reports"][k][0].as_str().unwrap();
        let v = lab.run(&["audit", "verify", "--report", f]);
        assert_eq!(v.code, 0, "{}", v.all());
    }
    let md = s["reports"]["markdown"][0].as_str().unwrap();
    let text = std::fs::read_to_string(md).unwrap();
    assert!(text.contains("| RTO | 30s |"), "{text}");
    let html = std::fs::read_to_string(s["reports"]["html"][0].as_str().unwrap()).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("http://")
            || html.contains("xmlns='http://www.w3.org/2000/svg'")
    );
    assert!(!html.contains("<script src") && !html.contains("<link"));
    std::fs::write(md, text.replace("| yes |", "| no |")).unwrap();
    let v = lab.run(&["audit", "verify", "--report", md]);
    assert_ne!(v.code, 0);
    assert!(v.stdout.contains("NOT a report"), "{}", v.all());

    // hang-primary: the old primary (west now) frozen; detected by timeouts.
    let (r, s, _) = lab.drill(&["hang-primary"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    assert_eq!(s["primary_before"], "west");
    assert_eq!(s["primary_after"], "east");
    assert_eq!(s["measured"]["writes"]["lost"], 0);
    assert!(
        s["after"].to_string().contains("continued"),
        "{}",
        s["after"]
    );
    lab.assert_nothing_frozen();
    lab.assert_whole();

    // switchover: planned, nothing lost, and back in one piece.
    let (r, s, _) = lab.drill(&["switchover"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(s["primary_after"], "west");
    assert_eq!(s["measured"]["writes"]["lost"], 0);
    assert!(s["measured"]["rto_ms"].as_u64().unwrap() > 0);
    lab.assert_whole();

    // corrupt-data: the table dropped, restored to just before it: every row is back.
    let (r, s, full) = lab.drill(&["corrupt-data"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let w = &s["measured"]["writes"];
    assert!(w["acknowledged"].as_u64().unwrap() > 10, "{w}");
    assert_eq!(w["lost"], 0);
    // Every row acknowledged before the drop is back; rows in flight at that instant may be
    // on either side of the recovery point; nothing else is there.
    let fault = full["fault_at_ms"].as_f64().unwrap();
    let before = full["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "ok" && a["end_ms"].as_f64().unwrap() <= fault)
        .count() as u64;
    let held = full["held"].as_array().unwrap().len() as u64;
    assert!(
        held >= before && held <= w["acknowledged"].as_u64().unwrap(),
        "held {held}, acknowledged before the drop {before}: {w}"
    );
    assert_eq!(w["unexpected"], 0);
    assert!(s["measured"]["rto_ms"].as_u64().unwrap() > 0);

    // restore-only: the latest point in a sandbox, checks pass.
    let (r, s, _) = lab.drill(&["restore-only"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(objective(&s, "restore checks")["met"], true);

    // partition-site: the primary's address cut off by an nftables table of the drill's own,
    // gone afterwards.
    let (r, s, _) = lab.drill(&["partition-site"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    assert_eq!(s["measured"]["writes"]["lost"], 0);
    assert_ne!(s["primary_before"], s["primary_after"]);
    assert!(
        s["fault"].as_str().unwrap().contains("cut off"),
        "{}",
        s["fault"]
    );
    if root {
        // A real partition: the site's namespace lost its links, and has them back.
        assert!(
            s["fault"].as_str().unwrap().contains("namespace"),
            "{}",
            s["fault"]
        );
        assert!(
            s["after"].to_string().contains("down: undone"),
            "{}",
            s["after"]
        );
    }
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("lifeboat_drill"),
        "{}",
        String::from_utf8_lossy(&tables.stdout)
    );
    lab.assert_whole();

    if root {
        // Both sites cut off from the coordinator (they still see each other): the daemon
        // holds, nothing fails over, the primary is simply back once the partition heals.
        let plan = std::fs::read_to_string(lab.plan()).unwrap();
        std::fs::write(
            lab.plan(),
            format!("{plan}  coordinator: {{ scenario: partition-site, service: db, partition: coordinator, hold: 2s }}\n"),
        )
        .unwrap();
        let (r, s, _) = lab.drill(&["coordinator"]);
        assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
        assert_eq!(s["primary_before"], s["primary_after"]);
        assert_eq!(objective(&s, "failovers")["met"], true);
        assert_eq!(s["measured"]["writes"]["lost"], 0);
        assert!(
            s["measured"]["rto_ms"].as_u64().unwrap() >= 2000,
            "{}",
            s["measured"]
        );
        lab.assert_whole();
    }

    // lose-region: the primary's site and its repository gone; rebuilt in the other site
    // from the cross-region copy alone; the writes after the copy's last run are lost and
    // counted; the lab whole again afterwards, the repository back.
    let (r, s, full) = lab.drill(&["lose-region"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    let lost = s["measured"]["writes"]["lost"].as_u64().unwrap();
    assert!(
        lost > 0,
        "writes after the last copy are lost: {}",
        s["measured"]
    );
    assert_eq!(recount(&full).1, lost);
    assert!(s["measured"]["rpo_ms"].as_u64().unwrap() > 0);
    assert_ne!(s["primary_before"], s["primary_after"]);
    assert!(
        s["measured"]["parts"].to_string().contains("restored"),
        "{}",
        s["measured"]
    );
    assert!(lab.dir.join("east/repo/config").exists());
    lab.assert_whole();

    // status shows the latest drills.
    let st = lab.run(&["status"]);
    assert!(st.stdout.contains("kill-primary"), "{}", st.all());

    // Every drill is in the evidence log.
    let ev = lab.run(&["--json", "audit", "list"]).json();
    let drills = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["command"] == "drill")
        .count();
    assert_eq!(drills, if root { 8 } else { 7 });
}

#[test]
fn async_negative_control_loses_writes_and_the_drill_counts_each_one() {
    let lab = TestLab::up(&["--async"]);
    let (r, s, full) = lab.drill(&["kill-primary", "--freeze-replication"]);
    // The control must fail its objective.
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(s["outcome"], "failed", "{}", r.all());
    let lost = s["measured"]["writes"]["lost"].as_u64().unwrap();
    assert!(lost > 0, "{}", s["measured"]);
    assert_eq!(objective(&s, "lost writes")["met"], false);
    // Exactly: replication was frozen before the first write, so every write acknowledged
    // before the fault is gone, and every one after it is kept.
    let fault = full["fault_at_ms"].as_f64().unwrap();
    let before: u64 = full["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "ok" && a["start_ms"].as_f64().unwrap() < fault)
        .count() as u64;
    assert_eq!(
        lost, before,
        "lost {lost}, acknowledged before the fault {before}"
    );
    assert_eq!(recount(&full).1, lost);
    assert!(s["measured"]["rpo_ms"].as_u64().unwrap() > 0);
    assert!(s["measured"]["rpo_bytes"].as_u64().unwrap() > 0);
    lab.assert_nothing_frozen();
    lab.assert_whole();

    // The cross-region copy carries the WAL too: with the primary's repository gone, a
    // point-in-time restore from the copy still reaches past the last base backup.
    let sql = |port: &str, q: &str| -> String {
        let mut c = Command::new(lifeboat_pg_bin().join("psql"));
        c.args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-U",
            "postgres",
            "-Atq",
            "-c",
            q,
        ]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let endpoint = std::fs::read_to_string(lab.plan())
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("listen: \"127.0.0.1:")
                .map(|p| p.trim_end_matches('"').to_string())
        })
        .unwrap();
    sql(
        &endpoint,
        "CREATE TABLE kept(v int); INSERT INTO kept SELECT generate_series(1, 100)",
    );
    let r = lab.run(&["backup", "db-base"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("WAL file(s)"), "{}", r.all());
    sql(
        &endpoint,
        "INSERT INTO kept SELECT generate_series(101, 150)",
    );
    let seg = sql(&endpoint, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(
        &endpoint,
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(Instant::now() < deadline, "{seg} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = lab.run(&["repo", "copy", "--from", "east-repo", "--to", "west-repo"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("WAL file(s)"), "{}", r.all());
    std::fs::rename(lab.dir.join("east/repo"), lab.dir.join("east/repo.gone")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = lab.dir.join("from-copy");
    // As the lab's owner, as PostgreSQL's restore_command will be.
    let mut c = lab.cmd(&[
        "restore",
        "db",
        "--latest",
        "--repo",
        "west-repo",
        "--target",
        target.to_str().unwrap(),
        "--start",
        &port.to_string(),
    ]);
    {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let md = std::fs::metadata(&lab.dir).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            c.uid(md.uid()).gid(md.gid());
        }
    }
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sql(&port.to_string(), "SELECT count(*) FROM kept"), "150");
    // The same as a drill: restore-only from the copy, timed, the plan's checks run.
    let plan = std::fs::read_to_string(lab.plan()).unwrap();
    std::fs::write(
        lab.plan(),
        format!("{plan}  from-copy: {{ scenario: restore-only, service: db, repository: west-repo, objectives: {{ rpo: 1h }} }}\n"),
    )
    .unwrap();
    let (r, s, _) = lab.drill(&["from-copy"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        s["fault"].as_str().unwrap().contains("west-repo"),
        "{}",
        s["fault"]
    );
    assert_eq!(objective(&s, "restore checks")["met"], true);
    // With the repository down: the daemon's metric says so, the daemon keeps running, and a
    // failover goes through as before.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    let metrics = state["metrics"].as_str().unwrap().to_string();
    let down = r#"lifeboat_repository_up{repository="east-repo"} 0"#;
    let up = r#"lifeboat_repository_up{repository="east-repo"} 1"#;
    scrape_until(&metrics, down);
    let (r, s, _) = lab.drill(&["kill-primary"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    assert_ne!(s["primary_before"], s["primary_after"]);
    lab.assert_whole();
    // The daemon's WAL handoff may have recreated the repository's directory while it was
    // gone (segments archived meanwhile): keep what it wrote, then put the repository back.
    let (repo, gone) = (lab.dir.join("east/repo"), lab.dir.join("east/repo.gone"));
    if repo.exists() {
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join("."))
            .arg(&gone)
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::remove_dir_all(&repo).unwrap();
    }
    std::fs::rename(&gone, &repo).unwrap();
    scrape_until(&metrics, up);

    // Trials: the fault's timing drawn from the seed, the distribution in one report.
    let r = lab.run(&[
        "--json",
        "drill",
        "run",
        "kill-primary",
        "--trials",
        "2",
        "--seed",
        "11",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    let t = r.json();
    assert_eq!(t["seed"], 11);
    assert_eq!(t["trials"].as_array().unwrap().len(), 2);
    assert_eq!(t["passed"], 2);
    assert!(t["rto_ms"]["p50"].as_f64().unwrap() > 0.0);
    for tr in t["trials"].as_array().unwrap() {
        let w = tr["warmup_ms"].as_u64().unwrap();
        assert!((1000..3000).contains(&w), "{tr}");
    }
    let md = t["reports"][0][0].as_str().unwrap();
    assert!(std::fs::read_to_string(md).unwrap().contains("--seed 11"));
    lab.assert_whole();
}

#[test]
fn interrupted_refused_killed_and_guarded_drills_heal_and_say_so() {
    let lab = TestLab::up(&[]);
    let plan = std::fs::read_to_string(lab.plan()).unwrap();
    std::fs::write(
        lab.plan(),
        format!(
            "{plan}  slow-kill: {{ scenario: kill-primary, service: db, workload: {{ warmup: 8s }} }}\n  \
             slow-hang: {{ scenario: hang-primary, service: db, workload: {{ warmup: 1s }}, guardrails: {{ no_write_for: 20s }} }}\n  \
             tight-hang: {{ scenario: hang-primary, service: db, workload: {{ warmup: 1s }}, guardrails: {{ no_write_for: 500ms }} }}\n"
        ),
    )
    .unwrap();
    assert_eq!(lab.run(&["plan", "check"]).code, 0);

    // Steady state: a check that does not hold before the fault aborts the drill with
    // nothing injected; one that fails after it fails the drill; during-checks are counted.
    let plan = std::fs::read_to_string(lab.plan()).unwrap();
    std::fs::write(
        lab.plan(),
        format!(
            "{plan}  unsteady: {{ scenario: kill-primary, service: db, steady_state: [{{ sql: \"SELECT count(*) FROM pg_database\", min: 100 }}] }}\n  \
             checked: {{ scenario: kill-primary, service: db, steady_state: [{{ name: tables, sql: \"SELECT count(*) FROM pg_class\", min: 1 }}, {{ command: \"true\", when: [during], max_failures: 0 }}, {{ name: after-hook, command: \"exit 3\", when: [after] }}] }}\n"
        ),
    )
    .unwrap();
    let r = lab.run(&["--json", "drill", "run", "unsteady"]);
    let s = r.json();
    assert_eq!(s["outcome"], "aborted", "{}", r.all());
    assert!(s["fault"].is_null(), "nothing injected: {s}");
    assert_eq!(s["steady_state"][0]["passed"], false);
    assert!(
        s["steady_state"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("outside"),
        "{s}"
    );
    assert_eq!(lab.roles()[0].1, "primary");
    let r = lab.run(&["--json", "drill", "run", "checked"]);
    let s = r.json();
    assert_eq!(s["outcome"], "failed", "{}", r.all());
    for o in s["objectives"].as_array().unwrap() {
        assert_eq!(o["met"], true, "{o}");
    }
    let by = |n: &str, phase: &str| {
        s["steady_state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n && c["phase"] == phase)
            .unwrap_or_else(|| panic!("no {n} {phase}: {s}"))
            .clone()
    };
    assert_eq!(by("tables", "before")["passed"], true);
    assert_eq!(by("tables", "after")["passed"], true);
    assert!(by("true", "during")["runs"].as_u64().unwrap() >= 2);
    assert_eq!(by("true", "during")["passed"], true);
    assert_eq!(by("after-hook", "after")["passed"], false);
    lab.assert_whole();
    // The primary moved to west; the drills below start from there.
    let r = lab.run(&["switchover", "db", "--to", "east"]);
    assert_eq!(r.code, 0, "{}", r.all());
    lab.assert_whole();

    // A drill in its warm-up; a second one is refused, naming it; then Ctrl-C.
    let first = lab
        .cmd(&["--json", "drill", "run", "slow-kill"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let second = lab.run(&["drill", "run", "switchover"]);
    assert_ne!(second.code, 0);
    assert!(
        second.stderr.contains("drill `slow-kill` is running"),
        "{}",
        second.all()
    );
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let out = first.wait_with_output().unwrap();
    let r: Run = out.into();
    assert_eq!(r.code, 130, "{}", r.all());
    assert_eq!(r.json()["outcome"], "interrupted");
    lab.assert_whole();
    assert_eq!(lab.roles()[0].1, "primary", "nothing was injected");

    // Ctrl-C after the fault: the frozen primary is continued, the service made whole, the
    // report says "interrupted".
    let ledger = lab.dir.join(".lifeboat/drill/faults.json");
    let hung = lab
        .cmd(&["--json", "drill", "run", "slow-hang"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .contains("frozen")
    {
        assert!(
            Instant::now() < deadline,
            "the fault was never written down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(hung.id() as i32, libc::SIGINT) };
    let r: Run = hung.wait_with_output().unwrap().into();
    assert_eq!(r.code, 130, "{}", r.all());
    let s = r.json();
    assert_eq!(s["outcome"], "interrupted", "{s}");
    assert!(
        s["after"].to_string().contains("continued"),
        "{}",
        s["after"]
    );
    lab.assert_nothing_frozen();
    lab.assert_whole();

    // A guardrail trips: aborted, healed, reported; the service whole afterwards.
    let r = lab.run(&["--json", "drill", "run", "tight-hang"]);
    assert_ne!(r.code, 0);
    let s = r.json();
    assert_eq!(s["outcome"], "aborted", "{}", r.all());
    assert!(s["reason"].as_str().unwrap().contains("guardrail"), "{s}");
    lab.assert_nothing_frozen();
    lab.assert_whole();

    // A drill killed (SIGKILL) after it froze the primary: `drill heal` undoes it.
    let old = lab
        .roles()
        .into_iter()
        .find(|(_, r)| r == "primary")
        .map(|(s, _)| s)
        .unwrap();
    let other = if old == "east" { "west" } else { "east" };
    let mut killed = lab
        .cmd(&["drill", "run", "slow-hang"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ledger = lab.dir.join(".lifeboat/drill/faults.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .contains("frozen")
    {
        assert!(
            Instant::now() < deadline,
            "the fault was never written down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    killed.kill().unwrap();
    killed.wait().unwrap();
    // The primary stays frozen with nobody to continue it: the daemon fails over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let routed = loop {
        let st: serde_json::Value = serde_json::from_slice(
            &std::fs::read(lab.dir.join(".lifeboat/failover/db.json")).unwrap(),
        )
        .unwrap();
        if st["in_progress"].is_null() && st["primary"] == other {
            break other;
        }
        assert!(
            Instant::now() < deadline,
            "no failover after the hang: {st}\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // `drill heal` continues the frozen old primary (the endpoint no longer routes to it).
    let h = lab.run(&["drill", "heal"]);
    assert_eq!(h.code, 0, "{}", h.all());
    assert!(h.stdout.contains("continued"), "{}", h.all());
    lab.assert_nothing_frozen();
    assert!(lab
        .run(&["drill", "heal"])
        .stdout
        .contains("nothing to heal"));
    // A rejoin (what the killed drill's teardown would have done) makes the lab whole.
    assert_eq!(routed, other);
    let r = lab.run(&["rejoin", "db", &old]);
    assert_eq!(r.code, 0, "{}", r.all());
    lab.assert_whole();
}

#[test]
fn lab_down_twice_and_lab_refusals() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Ports taken: the lab picks free ones (it never asks for fixed ports).
    let _held: Vec<std::net::TcpListener> = (0..20)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let dir = tmp.path().join("lab");
    let d = dir.to_str().unwrap();
    let r = run_in(tmp.path(), &["lab", "up", "--dir", d]);
    assert_eq!(r.code, 0, "{}", r.all());
    let again = run_in(tmp.path(), &["lab", "up", "--dir", d]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already up"), "{}", again.all());
    let down = run_in(tmp.path(), &["lab", "down", "--dir", d]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(!dir.exists());
    if unsafe { libc::geteuid() } == 0 {
        // The namespaces went with it.
        assert!(down.stdout.contains("network namespace"), "{}", down.all());
        let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in down
            .stdout
            .lines()
            .filter(|l| l.contains("network namespace"))
        {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                !String::from_utf8_lossy(&ns.stdout).contains(name),
                "{name} is still there"
            );
        }
    }
    let twice = run_in(tmp.path(), &["lab", "down", "--dir", d]);
    assert_eq!(twice.code, 0, "{}", twice.all());
    assert!(
        twice.stdout.contains("nothing to remove"),
        "{}",
        twice.all()
    );
    // Nothing of the lab runs any more.
    let ps = Command::new("pgrep").args(["-f", d]).output().unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // A directory that is not a lab is not removed.
    std::fs::create_dir_all(tmp.path().join("other")).unwrap();
    std::fs::write(tmp.path().join("other/keep"), "x").unwrap();
    let r = run_in(
        tmp.path(),
        &[
            "lab",
            "down",
            "--dir",
            tmp.path().join("other").to_str().unwrap(),
        ],
    );
    assert_ne!(r.code, 0);
    assert!(tmp.path().join("other/keep").exists());
}

#[test]
fn a_loopback_lab_drills_and_says_what_it_cannot_run_honestly() {
    let lab = TestLab::up(&["--loopback"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(state["network"], "loopback", "{state}");
    assert_ne!(state["east_port"], state["west_port"]);
    let (r, s, _) = lab.drill(&["kill-primary"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), lab.daemon_log());
    assert_eq!(s["measured"]["writes"]["lost"], 0);
    // One path: a DNS name gives an address, and both sites share one.
    assert!(s["measured"]["paths"].is_null(), "{}", s["measured"]);
    let explicit = std::fs::read_to_string(lab.plan()).unwrap()
        + "  by-name: { scenario: kill-primary, service: db, workload: { through: [dns] } }\n";
    std::fs::write(lab.plan(), explicit).unwrap();
    let r = lab.run(&["drill", "run", "by-name"]);
    assert_ne!(r.code, 0);
    assert!(r.all().contains("share one port"), "{}", r.all());
    lab.assert_whole();
}

/// A plan whose postgres service has one member.
const ONE_MEMBER: &str = r#"name: one
tiers:
  gold: { rpo: 0, rto: 1m }
sites: [a]
services:
  db:
    kind: postgres
    tier: gold
    members:
      a: { host: 127.0.0.1, port: 5999 }
repositories:
  main: { url: repo, key_file: test.key }
"#;

#[test]
fn a_failover_drill_on_a_service_with_one_member_is_refused_with_the_reason() {
    let lab = common::Lab::new();
    lab.plan(&format!(
        "{ONE_MEMBER}drills:\n  crash: {{ scenario: kill-primary, service: db }}\n  nope: {{ scenario: unplug-everything, service: db }}\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.all().contains("drills.crash.scenario"), "{}", r.all());
    assert!(
        r.all().contains("needs a member to fail over to"),
        "{}",
        r.all()
    );
    assert!(
        r.all().contains("unknown scenario `unplug-everything`"),
        "{}",
        r.all()
    );
    // A scenario named on the command line against the same service.
    lab.plan(ONE_MEMBER);
    let r = lab.run(&["drill", "run", "kill-primary", "--yes"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("needs a member to fail over to"),
        "{}",
        r.all()
    );
    // Disruptive outside a lab, without a terminal: refused unless --yes.
    let r = lab.run(&["drill", "run", "switchover"]);
    assert_ne!(r.code, 0);
    assert!(
        r.all().contains("needs a member") || r.all().contains("confirmation"),
        "{}",
        r.all()
    );
}

#[test]
fn the_demo_runs_end_to_end_and_leaves_nothing_behind() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("run");
    let r = run_in(tmp.path(), &["demo", "--dir", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.all());
    // Both drills passed, with their objectives tables.
    assert_eq!(r.stdout.matches("\nPASSED\n").count(), 2, "{}", r.stdout);
    assert!(r.stdout.contains("lost writes  0       0"), "{}", r.stdout);
    assert!(
        r.stdout.contains("the report recorded by event"),
        "{}",
        r.stdout
    );
    assert!(
        !dir.exists(),
        "the demo directory is removed without --keep"
    );
    let ps = Command::new("pgrep")
        .args(["-f", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
