//! Incidents and the notifications about them, against the real daemon, a real SMTP server
//! (aiosmtpd) and a webhook receiver: a failing backup opens an incident; the plan's targets
//! are told (e-mail and a status page), the escalation levels follow while nobody acknowledges
//! it, an acknowledged one stops escalating; an SMTP server that is down or hangs is retried in
//! the background and recorded, and the daemon keeps answering; the next good backup resolves
//! the incident and the status page hears it; the report follows the post-incident template.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{api, free_port, http, webhook_receiver, Daemon, Lab};

fn smtp_server(maildir: &std::path::Path) -> (u16, Daemon) {
    let port = free_port();
    let d = Daemon(
        Command::new("/usr/bin/python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd is installed by scripts/install-deps.sh"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (port, d)
}

/// A server that accepts SMTP connections and never says a word.
fn hanging_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    port
}

fn mails(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_failed_backup_opens_an_incident_that_notifies_escalates_and_resolves() {
    let lab = Lab::new();
    common::make_data(&lab);
    let maildir = lab.p("maildir");
    let (smtp, _smtp) = smtp_server(&maildir);
    let (hook, got) = webhook_receiver();
    let hang = hanging_server();
    let down = free_port();
    let port = free_port();
    let t = lab
        .ok(&["--json", "api", "token", "oncall", "--role", "operator"])
        .json();
    let token = t["token"].as_str().unwrap().to_string();
    lab.plan(&format!(
        r#"name: paged
tiers:
  std: {{ rpo: 1h, rto: 4h }}
services:
  files: {{ kind: paths, tier: std, paths: [data] }}
  orders: {{ kind: command, tier: std, command: "test -f fixed && echo orders || exit 3", filename: orders.txt }}
  ledger: {{ kind: command, tier: std, command: "exit 4", filename: ledger.txt }}
repositories:
  main: {{ url: repo, key_file: test.key }}
backups:
  orders: {{ service: orders }}
  ledger: {{ service: ledger }}
notifications:
  - {{ name: oncall-mail, email: {{ to: [oncall@example.com], from: lifeboat@example.com, smtp: "127.0.0.1:{smtp}", tls: none }} }}
  - {{ name: status, webhook: "http://127.0.0.1:{hook}/page", format: statuspage, events: [incident, resolved] }}
  - {{ name: lead-hook, webhook: "http://127.0.0.1:{hook}/lead", events: [escalation] }}
  - {{ name: hanging-mail, email: {{ to: [x@example.com], from: lifeboat@example.com, smtp: "127.0.0.1:{hang}", tls: none }}, timeout: 2s, retries: 1, events: [incident] }}
  - {{ name: down-mail, email: {{ to: [x@example.com], from: lifeboat@example.com, smtp: "127.0.0.1:{down}", tls: none }}, timeout: 2s, retries: 1, events: [incident] }}
escalation:
  levels:
    - {{ name: on-call, after: 0s, notify: [oncall-mail] }}
    - {{ name: team lead, after: 4s, notify: [lead-hook] }}
    - {{ name: engineering manager, after: 1h, notify: [lead-hook] }}
api:
  listen: "127.0.0.1:{port}"
  tokens:
    - {{ name: oncall, role: operator, sha256: {} }}
"#,
        t["sha256"].as_str().unwrap()
    ));
    lab.ok(&["plan", "check"]);
    lab.ok(&["repo", "init"]);
    let _d = lab.serve("serve.log", &[]);
    wait_for("the API", 30, || {
        (http(port, "GET", "/livez", None, None).0 == 200).then_some(())
    });

    // The backup fails: an incident opens.
    assert_ne!(lab.run(&["backup", "orders"]).code, 0);
    let incs = lab.ok(&["--json", "incident", "list"]).json();
    let inc = incs[0].clone();
    assert_eq!(inc["severity"], "P2", "{inc}");
    assert_eq!(inc["kind"], "backup");
    assert_eq!(inc["state"], "open");
    let id = inc["id"].as_str().unwrap().to_string();

    // The on-call mailbox gets it (the incident, then level 1 of the escalation), with the
    // command that acknowledges it.
    let mail = wait_for("the on-call e-mail", 30, || {
        let m = mails(&maildir);
        (m.len() >= 2).then_some(m)
    });
    assert!(
        mail.iter()
            .any(|m| m.contains("Subject: [P2] paged incident:")
                && m.contains(&format!("lifeboat ack {id}"))),
        "{mail:?}"
    );
    assert!(mail.iter().any(|m| m.contains("escalation")), "{mail:?}");
    // The status page hears of it; four seconds on, nobody has acknowledged: the team lead is told.
    let page = wait_for("the status page", 30, || {
        got.lock()
            .unwrap()
            .iter()
            .find(|b| b.contains("\"incident\"") && b.contains("investigating"))
            .cloned()
    });
    let p: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(p["incident"]["impact_override"], "major");
    wait_for("the team lead's escalation", 30, || {
        got.lock()
            .unwrap()
            .iter()
            .find(|b| b.contains("team lead") && b.contains(&id))
            .cloned()
    });

    // A second incident, acknowledged through the API at once: it does not escalate.
    assert_ne!(lab.run(&["backup", "ledger"]).code, 0);
    let incs = lab.ok(&["--json", "incident", "list", "--open"]).json();
    let second = incs
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["target"] == "ledger")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, a) = api(
        port,
        "POST",
        &format!("/api/v1/incidents/{second}/ack"),
        Some(&token),
        None,
    );
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["acknowledged_by"], "oncall");
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !got.lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("team lead") && b.contains(&second)),
        "an acknowledged incident escalated"
    );

    // The SMTP servers that are down or hang: tried again in the background, the failure
    // recorded; the daemon answered all along.
    assert_eq!(http(port, "GET", "/livez", None, None).0, 200);
    wait_for("the failed deliveries", 60, || {
        let ev = lab.events();
        let failed: Vec<_> = ev
            .iter()
            .filter(|e| e["command"] == "notify" && e["outcome"] == "failed")
            .collect();
        (failed.iter().any(|e| e["target"] == "hanging-mail")
            && failed.iter().any(|e| e["target"] == "down-mail"))
        .then_some(())
    });

    // Fixed: the next backup resolves the first incident, and the status page closes it.
    lab.write("fixed", "");
    lab.ok(&["backup", "orders"]);
    let inc = lab.ok(&["--json", "incident", "show", &id]).json();
    assert_eq!(inc["incident"]["state"], "resolved", "{inc}");
    wait_for("the status page's resolution", 30, || {
        got.lock()
            .unwrap()
            .iter()
            .find(|b| b.contains("\"resolved\"") && b.contains(&id))
            .cloned()
    });

    // The report.
    let md = lab.ok(&["incident", "report", &id]).stdout;
    for want in [
        "# Incident Report",
        "**Date/Time**",
        "**Duration**",
        "**Impact**",
        "**Root Cause**",
        "**Resolution**",
        "escalated to level 2 (team lead)",
        "backup orders: ok",
        "| RTO | 4h |",
    ] {
        assert!(md.contains(want), "{want} missing:\n{md}");
    }
    lab.ok(&["incident", "report", &id, "--html", "--out", "report.html"]);
    let html = std::fs::read_to_string(lab.p("report.html")).unwrap();
    assert!(
        html.contains("<table>") && html.contains("<h1>Incident Report"),
        "{html}"
    );
    let (code, body) = http(
        port,
        "GET",
        &format!("/api/v1/incidents/{id}/report?format=html"),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    assert!(body.contains("<h1>"), "{body}");
    // Acknowledging twice changes nothing; an unknown incident is named.
    let again = lab.ok(&["--json", "ack", &second]).json();
    assert_eq!(again["acknowledged_by"], "oncall");
    let r = lab.run(&["ack", "INC-999999"]);
    assert_ne!(r.code, 0);
    assert!(r.all().contains("no incident INC-999999"), "{}", r.all());
    // The plan's webhook URL never appears in the evidence log.
    let log = serde_json::to_string(&lab.events()).unwrap();
    assert!(
        !log.contains(&format!("127.0.0.1:{hook}")),
        "a webhook URL in the evidence log"
    );
}
