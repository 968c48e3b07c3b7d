//! The daemon's HTTP API against the real binary: every `/api` route needs a token, reads
//! included, and a caller without one learns nothing about what exists; roles are enforced;
//! bad requests get a 400 naming the field, 404, 409 and 413; a client that sends its request
//! a byte a second is cut off; jobs run the command line's commands as the token's name, with
//! their result, conflicts and cancellation, and a daemon killed while one runs reports it
//! interrupted when it is back; schedules pause and resume; the evidence log pages; the
//! OpenAPI document is 3.1; no token appears in a log or an answer.

mod common;

use std::io::{Read, Write};

use std::time::{Duration, Instant};

use common::{api, free_port, http, Daemon, Lab};

struct Tokens {
    viewer: String,
    operator: String,
    admin: String,
}

fn make_token(lab: &Lab, name: &str, role: &str) -> (String, String) {
    let r = lab
        .ok(&["--json", "api", "token", name, "--role", role])
        .json();
    (
        r["token"].as_str().unwrap().to_string(),
        r["sha256"].as_str().unwrap().to_string(),
    )
}

/// A plan with a fast and a slow backup job, a schedule, and three tokens known three ways:
/// by hash in the plan, from the environment, from a file.
fn setup() -> (Lab, u16, Tokens) {
    let lab = Lab::new();
    common::make_data(&lab);
    let port = free_port();
    let (viewer, viewer_hash) = make_token(&lab, "dashboard", "viewer");
    let (operator, _) = make_token(&lab, "oncall", "operator");
    let (admin, _) = make_token(&lab, "lead", "admin");
    lab.write("admin.token", format!("{admin}\n"));
    lab.plan(&format!(
        r#"name: served
tiers:
  std: {{ rpo: 1h, rto: 4h }}
services:
  files: {{ kind: paths, tier: std, paths: [data] }}
  slow: {{ kind: command, tier: std, command: "sleep 30; echo slow", filename: slow.txt }}
repositories:
  main: {{ url: repo, key_file: test.key }}
backups:
  files: {{ service: files, schedule: "* * * * *" }}
  slow: {{ service: slow }}
api:
  listen: "127.0.0.1:{port}"
  max_body: 2KiB
  tokens:
    - {{ name: dashboard, role: viewer, sha256: {viewer_hash} }}
    - {{ name: oncall, role: operator, token: "${{LB_ONCALL_TOKEN}}" }}
    - {{ name: lead, role: admin, token: "file:admin.token" }}
"#
    ));
    lab.ok(&["repo", "init"]);
    (
        lab,
        port,
        Tokens {
            viewer,
            operator,
            admin,
        },
    )
}

fn serve(lab: &Lab, t: &Tokens, log: &str) -> Daemon {
    lab.serve(log, &[("LB_ONCALL_TOKEN", &t.operator)])
}

fn wait_up(lab: &Lab, port: u16, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/livez", None, None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the API did not come up:\n{}",
            std::fs::read_to_string(lab.p(log)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll a job until it has ended.
fn finished(port: u16, token: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, j) = api(
            port,
            "GET",
            &format!("/api/v1/jobs/{id}"),
            Some(token),
            None,
        );
        assert_eq!(code, 200, "{j}");
        if !matches!(j["state"].as_str(), Some("running" | "cancelling")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn post_job(port: u16, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    api(port, "POST", "/api/v1/jobs", token, Some(body))
}

/// A job request refused with 400 naming `field`.
fn rejected(port: u16, token: Option<&str>, body: &str, field: &str) {
    let (code, e) = post_job(port, token, body);
    assert_eq!(
        (code, e["field"].as_str()),
        (400, Some(field)),
        "{body}: {e}"
    );
}

#[test]
fn every_api_route_needs_a_token_roles_hold_and_bad_requests_name_the_field() {
    let (lab, port, t) = setup();
    let _d = serve(&lab, &t, "serve.log");
    wait_up(&lab, port, "serve.log");

    // Open endpoints.
    assert_eq!(http(port, "GET", "/livez", None, None).0, 200);
    assert_eq!(http(port, "GET", "/health", None, None).0, 200);
    let (code, metrics) = http(port, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(metrics.contains("lifeboat_build_info"), "{metrics}");

    // No token, a wrong one, a wrong scheme: 401 everywhere under /api, existing or not, and
    // the answer names nothing of the plan.
    for path in [
        "/api/v1/status",
        "/api/v1/services/files",
        "/api/v1/services/nope",
        "/api/v1/no-such-route",
        "/api/v1/openapi.json",
        "/api/v1/evidence",
    ] {
        for token in [None, Some("lbt_0000"), Some(t.viewer.as_str())] {
            if token == Some(t.viewer.as_str()) {
                continue;
            }
            let (code, body) = http(port, "GET", path, token, None);
            assert_eq!(code, 401, "{path} {token:?}: {body}");
            assert!(
                !body.contains("files") && !body.contains("served"),
                "{body}"
            );
        }
    }
    let (code, _) = post_job(port, None, r#"{"kind":"backup","job":"files"}"#);
    assert_eq!(code, 401);
    let basic = {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n", t.viewer).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");

    // A viewer reads everything …
    let (code, st) = api(port, "GET", "/api/v1/status", Some(&t.viewer), None);
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["plan"], "served");
    let names: Vec<&str> = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["files", "slow"]);
    assert_eq!(st["services"][0]["objectives"]["rpo_seconds"], 3600.0);
    assert_eq!(st["services"][0]["rpo"], "unknown", "nothing backed up yet");
    let (code, me) = api(port, "GET", "/api/v1/whoami", Some(&t.viewer), None);
    assert_eq!(
        (code, me["name"].as_str(), me["role"].as_str()),
        (200, Some("dashboard"), Some("viewer"))
    );
    let (code, doc) = api(port, "GET", "/api/v1/openapi.json", Some(&t.viewer), None);
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for p in [
        "/api/v1/status",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/services/{service}/failover",
        "/api/v1/evidence",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // … and may not act.
    let (code, e) = post_job(port, Some(&t.viewer), r#"{"kind":"backup","job":"files"}"#);
    assert_eq!(code, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("viewer"), "{e}");
    let (code, _) = api(
        port,
        "POST",
        "/api/v1/schedules/backups.files/pause",
        Some(&t.viewer),
        None,
    );
    assert_eq!(code, 403);

    // Bad requests.
    let op = Some(t.operator.as_str());
    rejected(
        port,
        op,
        r#"{"kind":"backup","job":"files","jbo":1}"#,
        "jbo",
    );
    rejected(port, op, r#"{"kind":"backup"}"#, "job");
    rejected(port, op, r#"{"kind":"backup","job":7}"#, "job");
    rejected(port, op, r#"{"kind":"reboot"}"#, "kind");
    let (code, e) = post_job(port, op, r#"{"kind":"backup","job": "#);
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not valid JSON"),
        "{e}"
    );
    let (code, e) = post_job(port, op, r#"{"kind":"backup","job":"nope"}"#);
    assert_eq!(code, 404, "{e}");
    assert!(e["hint"].as_str().unwrap().contains("files"), "{e}");
    let (code, e) = api(port, "GET", "/api/v1/services/nope", op, None);
    assert_eq!(code, 404, "{e}");
    let (code, _) = api(port, "GET", "/api/v1/jobs/nope", op, None);
    assert_eq!(code, 404);
    let (code, e) = api(port, "GET", "/api/v1/evidence?limit=0", op, None);
    assert_eq!((code, e["field"].as_str()), (400, Some("limit")), "{e}");
    let big = format!(
        r#"{{"kind":"backup","job":"files","x":"{}"}}"#,
        "a".repeat(4096)
    );
    let (code, e) = post_job(port, op, &big);
    assert_eq!(code, 413, "{e}");
    let (code, e) = api(
        port,
        "POST",
        "/api/v1/services/files/failover",
        op,
        Some(r#"{"confirm":"files"}"#),
    );
    assert_eq!(code, 409, "a paths service has no failover: {e}");
    // Nothing above started anything.
    let (_, jobs) = api(port, "GET", "/api/v1/jobs", op, None);
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");

    // A client sending its request a byte a second is cut off, and the daemon still answers.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    for b in
        b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            http(port, "GET", "/livez", None, None).0,
            200,
            "the daemon answers meanwhile"
        );
        let mut probe = [0u8; 256];
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut probe);
        slow.set_nonblocking(false).unwrap();
        if r.is_ok() {
            cut = true; // closed (0) or answered with an error before the head was complete
            break;
        }
    }
    assert!(
        cut,
        "a client a byte a second was never cut off ({:?})",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // No token in the daemon's log.
    let log = std::fs::read_to_string(lab.p("serve.log")).unwrap();
    for tok in [&t.viewer, &t.operator, &t.admin] {
        assert!(!log.contains(tok.as_str()), "a token in the log");
    }
}

#[test]
fn jobs_run_as_the_token_with_results_conflicts_cancel_and_survive_a_daemon_restart() {
    let (lab, port, t) = setup();
    let mut d = serve(&lab, &t, "serve.log");
    wait_up(&lab, port, "serve.log");
    let op = Some(t.operator.as_str());

    let (code, j) = post_job(port, op, r#"{"kind":"backup","job":"files"}"#);
    assert_eq!(code, 202, "{j}");
    assert_eq!(j["command"], "lifeboat backup files");
    assert_eq!(j["actor"], "oncall");
    let done = finished(port, &t.operator, j["id"].as_str().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["result"].is_object() || done["result"].is_array(),
        "{done}"
    );
    let backups: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| e["command"] == "backup")
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        backups[0]["actor"], "oncall",
        "the token's name is the actor"
    );
    // The status now knows the backup (from the metrics, rebuilt every 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = api(port, "GET", "/api/v1/services/files", Some(&t.viewer), None);
        if st["ages"]["last_backup"].is_string() {
            assert_eq!(st["rpo"], "met", "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A slow job; the same again conflicts; cancelling stops it.
    let (code, slow) = post_job(port, op, r#"{"kind":"backup","job":"slow"}"#);
    assert_eq!(code, 202, "{slow}");
    let id = slow["id"].as_str().unwrap().to_string();
    let (code, e) = post_job(port, op, r#"{"kind":"backup","job":"slow"}"#);
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains(&id), "{e}");
    let (code, _) = api(
        port,
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&t.viewer),
        None,
    );
    assert_eq!(code, 403);
    let (code, c) = api(port, "POST", &format!("/api/v1/jobs/{id}/cancel"), op, None);
    assert_eq!(code, 202, "{c}");
    let ended = finished(port, &t.operator, &id);
    assert_eq!(ended["state"], "cancelled", "{ended}");
    let (code, _) = api(port, "POST", &format!("/api/v1/jobs/{id}/cancel"), op, None);
    assert_eq!(code, 409, "an ended job cannot be cancelled");

    // The daemon killed while a job runs: started again, it says the job was interrupted.
    let (code, slow) = post_job(port, op, r#"{"kind":"backup","job":"slow"}"#);
    assert_eq!(code, 202, "{slow}");
    let id = slow["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    d.kill_now();
    let _d2 = serve(&lab, &t, "serve2.log");
    wait_up(&lab, port, "serve2.log");
    let (code, j) = api(port, "GET", &format!("/api/v1/jobs/{id}"), op, None);
    assert_eq!(
        (code, j["state"].as_str()),
        (200, Some("interrupted")),
        "{j}"
    );
    let (_, all) = api(port, "GET", "/api/v1/jobs", Some(&t.viewer), None);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    // The job's process went with the daemon: the next backup of the job is not blocked.
    let (code, j) = post_job(port, op, r#"{"kind":"backup","job":"files"}"#);
    assert_eq!(code, 202, "{j}");
    assert_eq!(
        finished(port, &t.operator, j["id"].as_str().unwrap())["state"],
        "succeeded"
    );

    // The evidence log, paged and filtered.
    let (code, p1) = api(
        port,
        "GET",
        "/api/v1/evidence?command=backup&limit=1",
        Some(&t.viewer),
        None,
    );
    assert_eq!(code, 200, "{p1}");
    assert_eq!(p1["events"].as_array().unwrap().len(), 1);
    let before = p1["next_before"].as_i64().expect("a second page");
    let (_, p2) = api(
        port,
        "GET",
        &format!("/api/v1/evidence?command=backup&limit=10&before={before}"),
        Some(&t.viewer),
        None,
    );
    assert!(
        p2["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["command"] == "backup" && e["seq"].as_i64().unwrap() < before),
        "{p2}"
    );
    assert!(p2["next_before"].is_null());
}

fn files_schedule(port: u16, token: &str) -> serde_json::Value {
    let (_, s) = api(port, "GET", "/api/v1/schedules", Some(token), None);
    s.as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "backups.files")
        .unwrap()
        .clone()
}

#[test]
fn a_paused_schedule_does_not_run_until_resumed() {
    let (lab, port, t) = setup();
    let _d = serve(&lab, &t, "serve.log");
    wait_up(&lab, port, "serve.log");
    let op = Some(t.operator.as_str());
    let (code, e) = api(
        port,
        "POST",
        "/api/v1/schedules/backups.nope/pause",
        op,
        None,
    );
    assert_eq!(code, 404, "{e}");
    let (code, r) = api(
        port,
        "POST",
        "/api/v1/schedules/backups.files/pause",
        op,
        Some(r#"{"reason":"storage maintenance"}"#),
    );
    assert_eq!(code, 200, "{r}");
    let files = files_schedule(port, &t.viewer);
    assert_eq!(files["paused"]["by"], "oncall", "{files}");
    let cli = lab.ok(&["schedule"]).stdout;
    assert!(cli.contains("PAUSED by oncall"), "{cli}");
    // Its every-minute instant passes without a run.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let f = files_schedule(port, &t.viewer);
        if f["skipped_paused"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(f["runs_ok"].as_u64().unwrap_or(0), 0, "{f}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused instant was not skipped: {f}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(lab.snapshot_count("main"), 0);
    let (code, _) = api(
        port,
        "POST",
        "/api/v1/schedules/backups.files/resume",
        op,
        None,
    );
    assert_eq!(code, 200);
    let f = files_schedule(port, &t.viewer);
    assert!(f["paused"].is_null(), "{f}");
    let actions: Vec<String> = lab
        .events()
        .iter()
        .filter(|e| e["actor"] == "oncall")
        .map(|e| e["command"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["schedule pause", "schedule resume"]);
}

#[test]
fn a_job_writes_its_progress_file_and_an_unreadable_token_stops_the_start() {
    let (lab, _port, _t) = setup();
    let out = lab
        .cmd(&["backup", "files"])
        .env("LIFEBOAT_PROGRESS_FILE", lab.p("progress.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.p("progress.json")).unwrap()).unwrap();
    assert!(p["step"].is_string(), "{p}");
    assert!(
        p["done"].as_u64().is_some() && p["total"].as_u64().is_some(),
        "{p}"
    );
    // The operator's variable is not set: the daemon does not start, and says which token.
    let out = lab
        .cmd(&["serve"])
        .env_remove("LB_ONCALL_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("oncall") && err.contains("LB_ONCALL_TOKEN"),
        "{err}"
    );
    // A bad plan names the field.
    let plan = std::fs::read_to_string(lab.p("lifeboat.yaml")).unwrap();
    lab.plan(&plan.replace("role: admin", "role: root"));
    let r = lab.run(&["plan", "check"]);
    assert_ne!(r.code, 0);
    assert!(r.all().contains("api.tokens[2].role"), "{}", r.all());
}

/// `openssl` with arguments, in the lab.
fn openssl(lab: &Lab, args: &str) {
    let o = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(lab.path())
        .output()
        .expect("openssl is installed by scripts/install-deps.sh");
    assert!(
        o.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn curl(lab: &Lab, args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .current_dir(lab.path())
        .output()
        .expect("curl is installed by scripts/install-deps.sh");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn over_tls_with_client_certificates_only_a_signed_client_gets_in() {
    let (lab, port, t) = setup();
    // A CA, the daemon's certificate for 127.0.0.1, and a client certificate it signed.
    openssl(&lab, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout ca.key -out ca.pem -subj /CN=test-ca");
    openssl(&lab, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    lab.write(
        "san.ext",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    openssl(&lab, "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out server.pem -extfile san.ext");
    openssl(&lab, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN=oncall-laptop");
    lab.write(
        "client.ext",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    openssl(&lab, "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem -extfile client.ext");
    let plan = std::fs::read_to_string(lab.p("lifeboat.yaml")).unwrap();
    lab.plan(&plan.replace(
        "  max_body: 2KiB\n",
        "  max_body: 2KiB\n  tls: { cert: server.pem, key: server.key, client_ca: ca.pem }\n",
    ));
    let _d = serve(&lab, &t, "serve.log");
    let url = format!("https://127.0.0.1:{port}/api/v1/whoami");
    let auth = format!("Authorization: Bearer {}", t.viewer);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (ok, out) = curl(
            &lab,
            &[
                "--cacert",
                "ca.pem",
                "--cert",
                "client.pem",
                "--key",
                "client.key",
                "-H",
                &auth,
                &url,
            ],
        );
        if ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "{out}\n{}",
            std::fs::read_to_string(lab.p("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("\"dashboard\""), "{body}");
    // The certificate alone is not enough: /api still needs the token.
    let (ok, out) = curl(
        &lab,
        &[
            "--cacert",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    );
    assert!(ok && out.ends_with("401"), "{out}");
    // No client certificate, or plain HTTP: no way in.
    let (ok, out) = curl(&lab, &["--cacert", "ca.pem", "-H", &auth, &url]);
    assert!(
        !ok || !out.contains("dashboard"),
        "in without a client certificate: {out}"
    );
    let (code, _) = http(port, "GET", "/api/v1/whoami", Some(&t.viewer), None);
    assert_ne!(code, 200, "plain HTTP on the TLS port");
    // A key that does not exist stops the start, naming the field.
    lab.plan(&plan.replace(
        "  max_body: 2KiB\n",
        "  max_body: 2KiB\n  tls: { cert: server.pem, key: missing.key }\n",
    ));
    let out = lab
        .cmd(&["serve"])
        .env("LB_ONCALL_TOKEN", &t.operator)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tls.key") && err.contains("missing.key"),
        "{err}"
    );
}

#[test]
fn the_remote_command_line_acts_through_the_api_with_a_token() {
    let (lab, port, t) = setup();
    let _d = serve(&lab, &t, "serve.log");
    wait_up(&lab, port, "serve.log");
    let url = format!("http://127.0.0.1:{port}");
    let remote = |token: &str, args: &[&str]| {
        let mut c = lab.cmd(&["remote", "--url", &url]);
        c.args(args)
            .env("LIFEBOAT_TOKEN", token)
            .env_remove("LIFEBOAT_API");
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (code, out) = remote(&t.viewer, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plan served") && out.contains("service files"),
        "{out}"
    );
    // A viewer may not start a job: the API's refusal, with its hint.
    let (code, out) = remote(&t.viewer, &["run", "backup", "files"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("403") && out.contains("needs operator"),
        "{out}"
    );
    // An operator runs a backup and follows it to its end; it is recorded under the token.
    let (code, out) = remote(&t.operator, &["run", "backup", "files"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lifeboat backup files: succeeded"), "{out}");
    let ev = lab.events();
    assert_eq!(
        ev.iter()
            .filter(|e| e["command"] == "backup" && e["actor"] == "oncall")
            .count(),
        1
    );
    // A failing one exits non-zero with the command's error.
    let (code, out) = remote(&t.operator, &["run", "backup", "nope"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("404") && out.contains("no backup job `nope`"),
        "{out}"
    );
    // A wrong token, a daemon that is not there.
    let (code, out) = remote("lbt_wrong", &["status"]);
    assert_ne!(code, 0);
    assert!(out.contains("401"), "{out}");
    let mut c = lab.cmd(&[
        "remote",
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "status",
    ]);
    let o = c.env("LIFEBOAT_TOKEN", &t.viewer).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("connection failed"));
}
