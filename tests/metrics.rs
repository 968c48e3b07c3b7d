//! `/metrics` of a running daemon: values rebuilt from the evidence log, so a backup run from
//! the command line shows up, a restart loses no "last success" and resets no counter, a
//! failure is a timestamp of its own, a value not known yet is absent; the objectives are
//! exported; a scrape during a backup is answered; no secret appears.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;

use std::time::{Duration, Instant};

use common::{free_port, Daemon, Lab, KEY};

fn plan(port: u16) -> String {
    format!(
        r#"name: metered
tiers:
  std: {{ rpo: 1h, rto: 4h }}
services:
  files: {{ kind: paths, tier: std, paths: [data] }}
  slow: {{ kind: command, tier: std, command: "sleep 4; echo slow", filename: slow.txt }}
repositories:
  main: {{ url: repo, key_file: test.key }}
backups:
  files: {{ service: files }}
  slow: {{ service: slow }}
metrics: {{ listen: "127.0.0.1:{port}" }}
"#
    )
}

fn serve(lab: &Lab) -> Daemon {
    lab.serve("serve.log", &[])
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrape until `f` holds (the text is rebuilt every 2 s).
fn scrape_until(lab: &Lab, port: u16, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = get(port, "/metrics") {
            if f(&body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!("{what}: not within 30 s\n{body}");
            }
        } else if Instant::now() > deadline {
            panic!(
                "{what}: no answer on :{port}\n{}",
                std::fs::read_to_string(lab.p("serve.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const OK: &str = r#"lifeboat_backup_last_success_timestamp_seconds{job="files",service="files",repository="main",kind="files"}"#;
const RUNS_OK: &str = r#"lifeboat_backup_runs_total{job="files",result="success"}"#;

#[test]
fn metrics_come_from_the_records_and_survive_a_restart() {
    let lab = Lab::new();
    let port = free_port();
    lab.plan(&plan(port));
    lab.write("data/a.txt", "hello");
    lab.ok(&["repo", "init"]);
    // Run from the command line before the daemon exists.
    lab.ok(&["backup", "files"]);
    let mut d = serve(&lab);
    let text = scrape_until(&lab, port, "the backup from the command line", |t| {
        value(t, OK).is_some()
    });
    let first = value(&text, OK).unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        first <= now + 1.0 && first > now - 120.0,
        "{first} vs {now}"
    );
    assert_eq!(value(&text, RUNS_OK), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            r#"lifeboat_objective_rpo_seconds{service="files",tier="std"}"#
        ),
        Some(3600.0)
    );
    assert!(text.contains("lifeboat_build_info{version="), "{text}");
    // Not known yet: absent, not 0.
    assert!(!text.contains("lifeboat_restore_verification_last_success_timestamp_seconds{"));
    assert!(!text.contains("lifeboat_backup_last_failure_timestamp_seconds{"));
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(!text.contains(KEY), "no secret in the metrics");
    // Units and names: timestamps in seconds, counters end in _total.
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut p = l.split_whitespace().skip(2);
        let (name, kind) = (p.next().unwrap(), p.next().unwrap());
        assert!(name.starts_with("lifeboat_"), "{l}");
        if name.contains("timestamp") {
            assert!(name.ends_with("_seconds"), "{l}");
        }
        if kind == "counter" {
            assert!(text.contains(&format!("{name}_total")), "{l}");
        }
    }

    // A scrape while a backup runs is answered.
    let mut slow = lab
        .cmd(&["backup", "slow"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, _) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(slow.wait().unwrap().success());

    // A failed backup (the repository gone) is a failure timestamp; the success stays.
    std::fs::rename(lab.p("repo"), lab.p("repo.away")).unwrap();
    assert_ne!(lab.run(&["backup", "files"]).code, 0);
    std::fs::rename(lab.p("repo.away"), lab.p("repo")).unwrap();
    let text = scrape_until(&lab, port, "the failure", |t| {
        t.contains(r#"lifeboat_backup_runs_total{job="files",result="failure"} 1"#)
    });
    assert_eq!(value(&text, OK), Some(first));
    assert!(text.contains("lifeboat_backup_last_failure_timestamp_seconds{job=\"files\""));

    // Restarted, the daemon exports the same values: nothing zeroed, no counter reset.
    d.kill_now();

    d = serve(&lab);
    let again = scrape_until(&lab, port, "the values after a restart", |t| {
        value(t, OK).is_some()
    });
    assert_eq!(value(&again, OK), Some(first));
    assert_eq!(value(&again, RUNS_OK), Some(1.0));
    assert_eq!(
        value(
            &again,
            r#"lifeboat_backup_runs_total{job="slow",result="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(get(port, "/nothing").unwrap().0, 404);
    d.kill_now();
}
