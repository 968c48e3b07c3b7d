//! End to end with a real Prometheus server on loopback: it scrapes a running daemon (the
//! OpenMetrics text parses) with the shipped alert rules loaded; a scheduled backup fails
//! against a repository that is gone, and Prometheus' own API shows the alerts firing —
//! LifeboatBackupFailed and LifeboatScheduleFailed — then resolving once the repository is back
//! and the next run succeeds.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Daemon, Lab};

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    // Prometheus answers its API in chunks: undo the chunking.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            joined.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        return Some(joined);
    }
    Some(body.to_string())
}

/// The alerts Prometheus holds now: (name, state, job label).
fn alerts(port: u16) -> Vec<(String, String, String)> {
    let Some(body) = http_get(port, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                a["state"].as_str().unwrap_or("").to_string(),
                a["labels"]["job"]
                    .as_str()
                    .or(a["labels"]["schedule"].as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_the_daemon_and_fires_the_shipped_alerts_on_a_failing_schedule() {
    let lab = Lab::new();
    let metrics = free_port();
    let prom = free_port();
    lab.plan(&format!(
        r#"name: alerting
tiers:
  std: {{ rpo: 1h, rto: 4h }}
services:
  files: {{ kind: paths, tier: std, paths: [data] }}
repositories:
  main: {{ url: repo, key_file: test.key }}
backups:
  files: {{ service: files, schedule: "* * * * *" }}
metrics: {{ listen: "127.0.0.1:{metrics}" }}
"#
    ));
    lab.write("data/a.txt", "hello");
    lab.ok(&["repo", "init"]);
    // The repository is gone; the scheduler's records say the job last ran two hours ago, so
    // the daemon runs it at once — and it fails.
    std::fs::rename(lab.p("repo"), lab.p("repo.away")).unwrap();
    let earlier = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    lab.write(
        ".lifeboat/schedule/state.json",
        serde_json::json!({"backups.files": {"last_due": earlier.to_string()}}).to_string(),
    );
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/prometheus/lifeboat-rules.yml");
    lab.write(
        "prometheus.yml",
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: lifeboat\n    static_configs: [{{ targets: [\"127.0.0.1:{metrics}\"] }}]\n",
            rules.display()
        ),
    );
    let _daemon = lab.serve("serve.log", &[]);
    let _prometheus = Daemon(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                lab.p("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", lab.p("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.p("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus: {e} (scripts/install-deps.sh installs Debian's `prometheus`)")
            }),
    );
    let logs = || {
        format!(
            "daemon:\n{}\nprometheus:\n{}\nalerts: {:?}",
            std::fs::read_to_string(lab.p("serve.log")).unwrap_or_default(),
            std::fs::read_to_string(lab.p("prometheus.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n"),
            alerts(prom)
        )
    };
    // Prometheus scrapes the daemon: its target is up.
    wait_until(
        "the daemon scraped",
        60,
        || {
            http_get(prom, "/api/v1/query?query=up%7Bjob%3D%22lifeboat%22%7D")
                .is_some_and(|b| b.contains("\"value\"") && b.contains("\"1\"]"))
        },
        &logs,
    );
    let firing = |name: &str| {
        let name = name.to_string();
        move || {
            alerts(prom)
                .iter()
                .any(|(n, s, _)| *n == name && s == "firing")
        }
    };
    wait_until(
        "LifeboatBackupFailed firing",
        60,
        firing("LifeboatBackupFailed"),
        &logs,
    );
    wait_until(
        "LifeboatScheduleFailed firing",
        30,
        firing("LifeboatScheduleFailed"),
        &logs,
    );
    assert!(
        !alerts(prom).iter().any(|(n, _, _)| n == "LifeboatDown"),
        "{:?}",
        alerts(prom)
    );
    // The repository back, the next minute's run succeeds and the alerts resolve.
    std::fs::rename(lab.p("repo.away"), lab.p("repo")).unwrap();
    wait_until(
        "the alerts resolved",
        90,
        || {
            !alerts(prom)
                .iter()
                .any(|(n, _, _)| n == "LifeboatBackupFailed" || n == "LifeboatScheduleFailed")
        },
        &logs,
    );
}
