//! The daemon's scheduler against the real binary: a plan with schedules and no failover
//! service is served; a run missed while the daemon was down runs at its start (and the missed
//! ones are counted); a run that would overlap the previous one is skipped and counted; the
//! daemon killed in the middle of a run and started again records it as interrupted, keeps
//! the last success, and the next backup goes through the dead run's lock; a second daemon on
//! the state directory is refused; `plan check` names a bad expression and a bad time zone.

mod common;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use common::{bin, Daemon, Lab};

const PLAN: &str = r#"name: sched
tiers:
  std: { rpo: 1h, rto: 4h }
services:
  files: { kind: paths, tier: std, paths: [data] }
  slow: { kind: command, tier: std, command: "sleep 75; echo slow", filename: slow.txt }
repositories:
  main: { url: repo, key_file: test.key }
backups:
  files: { service: files, schedule: "* * * * *" }
  slow: { service: slow, schedule: { cron: "* * * * *", time_zone: Europe/Berlin } }
schedules:
  check-main: { run: check, repository: main, schedule: "0 4 * * *" }
scheduler: { max_concurrent: 3 }
"#;

fn serve(lab: &Lab, log: &str) -> Daemon {
    Daemon(
        Command::new(bin())
            .args(["serve"])
            .current_dir(lab.path())
            .env("LIFEBOAT_PROGRESS", "0")
            .env_remove("LIFEBOAT_PLAN")
            .env_remove("LIFEBOAT_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.p(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn records(lab: &Lab) -> serde_json::Value {
    std::fs::read(lab.p(".lifeboat/schedule/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Wait until `f` holds on the scheduler's records.
fn wait_for(lab: &Lab, what: &str, secs: u64, f: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = records(lab);
        if f(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\nrecords: {r:#}\ndaemon log:\n{}",
            std::fs::read_to_string(lab.p("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn schedules_run_catch_up_skip_overlaps_and_survive_the_daemon_killed_mid_run() {
    let lab = Lab::new();
    lab.plan(PLAN);
    lab.write("data/a.txt", "hello");
    lab.ok(&["repo", "init"]);
    // Bad input: the line and the field are named.
    let bad = PLAN
        .replace("\"0 4 * * *\"", "\"0 4 * *\"")
        .replace("time_zone: Europe/Berlin", "time_zone: Europe/Atlantis");
    lab.write("bad.yaml", &bad);
    let r = lab.run(&["--plan", "bad.yaml", "plan", "check"]);
    assert_ne!(r.code, 0);
    assert!(
        r.all().contains("schedules.check-main.schedule"),
        "{}",
        r.all()
    );
    assert!(r.all().contains("4 fields"), "{}", r.all());
    assert!(r.all().contains("Europe/Atlantis"), "{}", r.all());
    // file:line:column of each.
    assert!(r.all().contains("bad.yaml:11:"), "{}", r.all());
    assert!(r.all().contains("bad.yaml:13:"), "{}", r.all());

    // The scheduler's records say both backups last ran two hours ago: the daemon, started
    // now, catches up once each and counts what it missed.
    let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    lab.write(
        ".lifeboat/schedule/state.json",
        serde_json::json!({
            "backups.files": { "last_due": two_hours_ago.to_string() },
            "backups.slow": { "last_due": two_hours_ago.to_string() },
        })
        .to_string(),
    );
    let mut d = serve(&lab, "serve.log");
    wait_for(&lab, "the missed files backup ran", 60, |r| {
        r["backups.files"]["last_outcome"] == "ok"
    });
    let r = records(&lab);
    assert!(
        r["backups.files"]["missed"].as_u64().unwrap() >= 100,
        "{r:#}"
    );
    assert!(r["backups.slow"]["running"].is_object(), "{r:#}");
    // A scheduled backup is an ordinary backup: a snapshot, and an evidence event whose actor
    // is the scheduler.
    assert!(lab.snapshot_count("main") >= 1);
    assert!(
        lab.events()
            .iter()
            .any(|e| e["command"] == "backup" && e["actor"] == "scheduler"),
        "{:#?}",
        lab.events()
    );
    // The daemon keeps the state directory: a second one is refused.
    let second = lab.run(&["serve"]);
    assert_ne!(second.code, 0);
    assert!(
        second.all().contains("another `lifeboat serve` runs"),
        "{}",
        second.all()
    );
    // The slow backup takes 75 s: the next minute's run of it is skipped and counted.
    wait_for(&lab, "an overlapping run skipped", 75, |r| {
        r["backups.slow"]["skipped_overlap"].as_u64().unwrap_or(0) >= 1
    });
    let listed = lab.ok(&["schedule"]);
    assert!(listed.stdout.contains("backups.files"), "{}", listed.all());
    assert!(listed.stdout.contains("Europe/Berlin"), "{}", listed.all());
    assert!(listed.stdout.contains("running"), "{}", listed.all());

    // The daemon dies in the middle of the slow backup, and the backup with it.
    let files_ok = records(&lab)["backups.files"]["runs_ok"].as_u64().unwrap();
    let last_success = records(&lab)["backups.files"]["last_success"].clone();
    let child = records(&lab)["backups.slow"]["running"]["pid"]
        .as_u64()
        .unwrap() as u32;
    d.kill_now();

    kill(child);
    std::thread::sleep(Duration::from_millis(300));
    d = serve(&lab, "serve.log");
    wait_for(&lab, "the killed run recorded as interrupted", 30, |r| {
        r["backups.slow"]["last_outcome"] == "interrupted"
    });
    let r = records(&lab);
    assert!(r["backups.files"]["last_success"].as_str().unwrap() >= last_success.as_str().unwrap());
    assert_eq!(
        r["backups.slow"]["runs_failed"].as_u64().unwrap(),
        1,
        "{r:#}"
    );
    // The next backup goes through the lock the killed one left in the repository.
    wait_for(&lab, "a backup after the restart", 75, |r| {
        r["backups.files"]["runs_ok"].as_u64().unwrap_or(0) > files_ok
    });
    d.kill_now();

    // Whatever the scheduler still ran goes too.
    if let Some(m) = records(&lab).as_object() {
        for r in m.values() {
            if let Some(p) = r["running"]["pid"].as_u64() {
                kill(p as u32);
            }
        }
    }
}

#[test]
fn serve_refuses_a_plan_with_nothing_to_do_and_says_what_would_give_it_work() {
    let lab = Lab::new();
    lab.plan(&common::basic_plan("echo hi"));
    let r = lab.run(&["serve"]);
    assert_ne!(r.code, 0);
    assert!(r.all().contains("no schedule"), "{}", r.all());
    let none = lab.ok(&["schedule"]);
    assert!(none.stdout.contains("no schedules"), "{}", none.all());
}
