//! Application tiers (`kind: http`) routed by `lifeboat serve`'s DNS responder: a real HTTP
//! server per site whose `/health` can be switched (or made to hang), queried through the name
//! with `dig`; with `follows`, a real PostgreSQL pair failed over under the app.

mod common;
use common::pair::Pair;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One site's app server on loopback: `/health` answers `status` with body `ok` (200) or
/// `down`; status 0 accepts the request and never answers (a hung app).
struct App {
    port: u16,
    status: Arc<AtomicU16>,
}

impl App {
    fn start() -> App {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(200));
        let st = status.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    let s = st.load(Ordering::SeqCst);
                    if s == 0 {
                        std::thread::sleep(Duration::from_secs(120));
                        return;
                    }
                    let body = if s == 200 { "ok" } else { "down" };
                    let _ = r.get_mut().write_all(
                        format!("HTTP/1.1 {s} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    );
                });
            }
        });
        App { port, status }
    }

    fn set(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }
}

/// The name's A record (or the response status when there is none).
fn answer(dns: u16, name: &str) -> String {
    let (status, a, _) = dig(dns, name, "+notcp");
    match a {
        Some(a) if status == "NOERROR" => a,
        _ => status,
    }
}

/// Wait until the name answers `want`; the answers seen on the way, for the message.
fn await_answer(dns: u16, name: &str, want: &str, within: Duration, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let a = answer(dns, name);
        if a == want {
            return;
        }
        if seen.last() != Some(&a) {
            seen.push(a);
        }
        assert!(
            Instant::now() < deadline,
            "{name} never answered {want} (answers: {seen:?}):\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The name keeps answering `want` for `dur`.
fn stays(dns: u16, name: &str, want: &str, dur: Duration, log: &dyn Fn() -> String) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        assert_eq!(answer(dns, name), want, "{}", log());
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Add service `app` (following `db`, a health URL per site, name app.lifeboat.test on `dns`
/// with records 10.0.1.5 for a and 10.0.2.5 for b) to the pair's plan, with more lines for the
/// service and more top-level sections.
fn with_app(pair: &Pair, a: &App, b: &App, dns: u16, service_extra: &str, top_extra: &str) {
    let pg = &pair.pg;
    let plan = std::fs::read_to_string(pg.lab.p("lifeboat.yaml")).unwrap();
    let app = format!(
        r#"  app:
    kind: http
    tier: gold
    depends_on: [db]
    follows: db
    health:
      a: {}
      b: {{ url: "{}", status: 200, body: ok }}
    checks: {{ interval: 200ms, timeout: 300ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
    dns: {{ listen: "127.0.0.1:{dns}", name: app.lifeboat.test, ttl: 1s, records: {{ a: 10.0.1.5, b: 10.0.2.5 }} }}
{service_extra}"#,
        a.url(),
        b.url()
    );
    let plan = plan.replacen("repositories:", &format!("{app}repositories:"), 1) + top_extra;
    std::fs::write(pg.lab.p("lifeboat.yaml"), plan).unwrap();
    pg.ok(&["plan", "check"]);
}

fn route_events(lab: &Lab) -> Vec<serde_json::Value> {
    lab.events()
        .into_iter()
        .filter(|e| e["command"] == "route")
        .collect()
}

/// The app follows its database: it answers the primary's site; while the app there fails,
/// the next site whose database member is a healthy standby, and back when it recovers; when
/// the database fails over, the name moves with it although the old site's app is healthy,
/// and never goes back to the old primary's site. A restarted daemon resumes on the recorded
/// site; when the database is given back, the app follows it back. Every change is in the evidence log, notified, and runs the `on_change` runbook.
#[test]
fn an_app_tier_fails_over_with_its_database_through_the_dns_name() {
    let pair = Pair::new("async", "", "");
    let pg = &pair.pg;
    let (a, b) = (App::start(), App::start());
    let dns = free_port();
    let (hook, received) = webhook_receiver();
    with_app(
        &pair,
        &a,
        &b,
        dns,
        "    on_change: app-moved\n",
        &format!(
            "runbooks:\n  app-moved:\n    steps:\n      - {{ command: 'echo \"$LIFEBOAT_FROM $LIFEBOAT_SITE $LIFEBOAT_RECORD\" >> moves.txt' }}\nnotifications:\n  - {{ webhook: \"http://127.0.0.1:{hook}/hook\" }}\n"
        ),
    );
    let log = || pair.daemon_log();
    let name = "app.lifeboat.test";
    let mut daemon = pair.start("");
    await_answer(dns, name, "10.0.1.5", Duration::from_secs(20), &log);

    // The app at the primary's site fails: the name goes to b, whose database member is a
    // healthy standby; the decision says why.
    a.set(503);
    await_answer(dns, name, "10.0.2.5", Duration::from_secs(10), &log);
    let st = pg.ok(&["--json", "status", "app"]).json();
    let app = &st[0];
    assert_eq!(app["answer"]["site"], "b", "{app}");
    let reason = app["answer"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("a: the app fails its checks") && reason.contains("status 503"),
        "{reason}"
    );
    assert_eq!(app["sites"][0]["healthy"], false, "{app}");
    let human = pg.ok(&["status", "app"]).stdout;
    assert!(human.contains("<- answered"), "{human}");
    // It recovers: back to the primary's site after the healthy threshold.
    a.set(200);
    await_answer(dns, name, "10.0.1.5", Duration::from_secs(10), &log);

    // The database fails over to b: the app follows although a's app is healthy.
    pair.signal_server("pgdata", libc::SIGKILL);
    await_answer(dns, name, "10.0.2.5", Duration::from_secs(30), &log);
    assert_eq!(pair.in_recovery(pair.sport), Some(false), "{}", log());
    stays(dns, name, "10.0.2.5", Duration::from_secs(2), &log);

    // The daemon killed and started again: it resumes on b (a's member is down: barred).
    daemon.kill_now();
    let _daemon = pair.start("");
    await_answer(dns, name, "10.0.2.5", Duration::from_secs(20), &log);
    stays(dns, name, "10.0.2.5", Duration::from_secs(3), &log);
    assert!(log().contains("\"event\":\"resumed\""), "{}", log());

    // The database is given back to a (rejoin, then a switchover through the daemon): the
    // app follows it back.
    let r = pg.run(&["failback", "db", "--to", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    await_answer(dns, name, "10.0.1.5", Duration::from_secs(20), &log);

    let routes = route_events(&pg.lab);
    let changes: Vec<(String, String)> = routes
        .iter()
        .map(|e| {
            (
                e["figures"]["change"].as_str().unwrap_or("?").to_string(),
                e["figures"]["to"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("first answer".to_string(), "a".to_string()),
            ("failover".into(), "b".into()),
            ("failback".into(), "a".into()),
            ("follows the database".into(), "b".into()),
            ("follows the database".into(), "a".into()),
        ],
        "{routes:#?}"
    );
    // The hook ran for every change, with the sites and the record.
    let deadline = Instant::now() + Duration::from_secs(10);
    let moves = loop {
        let m = std::fs::read_to_string(pg.lab.p("moves.txt")).unwrap_or_default();
        if m.lines().count() >= 5 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = moves.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "a 10.0.1.5",
            "a b 10.0.2.5",
            "b a 10.0.1.5",
            "a b 10.0.2.5",
            "b a 10.0.1.5"
        ],
        "{moves}"
    );
    // People were told of each move (not of the first answer).
    let got = received.lock().unwrap().clone();
    let routed: Vec<&String> = got
        .iter()
        .filter(|b| b.contains("\"event\":\"route\""))
        .collect();
    assert_eq!(routed.len(), 4, "{got:#?}");
    assert!(routed[2].contains("follows the database"), "{}", routed[2]);
}

/// A health URL that hangs fails by its timeout and blocks nothing: the other sites' checks
/// go on (a second site failing is seen while the first still hangs). With `failback:
/// manual` the name stays on the site it moved to when the preferred one recovers, until
/// `lifeboat failback`. Every site down: the name keeps answering (fail open).
#[test]
fn a_hung_site_fails_by_its_timeout_and_manual_failback_waits_for_a_person() {
    let lab = Lab::new();
    let (east, west, north) = (App::start(), App::start(), App::start());
    let (dns, metrics) = (free_port(), free_port());
    lab.plan(&format!(
        r#"name: apps
tiers:
  gold: {{ rpo: 5m, rto: 15m }}
sites: [east, west, north]
services:
  shop:
    kind: http
    tier: gold
    health:
      north: {}
      east: {}
      west: {}
    order: [east, west, north]
    failback: manual
    checks: {{ interval: 200ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
    dns: {{ listen: "127.0.0.1:{dns}", name: shop.lifeboat.test, records: {{ east: 10.1.0.1, west: 10.2.0.1, north: 10.3.0.1 }} }}
metrics: {{ listen: "127.0.0.1:{metrics}" }}
"#,
        north.url(),
        east.url(),
        west.url()
    ));
    lab.ok(&["plan", "check"]);
    let _d = lab.serve("daemon.log", &[]);
    let log = || std::fs::read_to_string(lab.p("daemon.log")).unwrap_or_default();
    let name = "shop.lifeboat.test";
    await_answer(dns, name, "10.1.0.1", Duration::from_secs(20), &log);

    east.set(0); // hangs for two minutes
    await_answer(dns, name, "10.2.0.1", Duration::from_secs(10), &log);
    west.set(500); // seen while east's requests still hang
    await_answer(dns, name, "10.3.0.1", Duration::from_secs(10), &log);
    // The metrics say the same (refreshed every 2 s).
    let want = [
        (r#"lifeboat_http_route{service="shop",site="north"}"#, 1.0),
        (r#"lifeboat_http_route{service="shop",site="east"}"#, 0.0),
        (
            r#"lifeboat_http_site_healthy{service="shop",site="west"}"#,
            0.0,
        ),
        (
            r#"lifeboat_http_site_healthy{service="shop",site="north"}"#,
            1.0,
        ),
        (
            r#"lifeboat_http_route_changes_total{service="shop",change="failover"}"#,
            2.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = http(metrics, "GET", "/metrics", None, None);
        let got: Vec<Option<f64>> = want
            .iter()
            .map(|(k, _)| lifeboat_server::metrics::sample(&text, k))
            .collect();
        if want.iter().zip(&got).all(|((_, v), g)| *g == Some(*v)) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics {got:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = lab.ok(&["--json", "status", "shop"]).json();
    let reason = st[0]["answer"]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("east: the app fails its checks") && reason.contains("timed out"),
        "{reason}"
    );
    assert!(
        reason.contains("west: the app fails its checks") && reason.contains("status 500"),
        "{reason}"
    );

    // Both recover: manual failback holds the name on north and says so.
    east.set(200);
    west.set(200);
    stays(dns, name, "10.3.0.1", Duration::from_secs(3), &log);
    let st = lab.ok(&["--json", "status", "shop"]).json();
    assert_eq!(st[0]["answer"]["held"], "east", "{}", st[0]);
    let human = lab.ok(&["status", "shop"]).stdout;
    assert!(human.contains("lifeboat failback shop"), "{human}");
    let r = lab.run(&["failback", "shop", "--to", "east"]);
    assert_ne!(r.code, 0, "an http service takes no --to: {}", r.all());
    let r = lab.ok(&["failback", "shop"]);
    assert!(r.stdout.contains("north → east"), "{}", r.all());
    assert_eq!(answer(dns, name), "10.1.0.1");

    // Every site down: still answering (the current site), never SERVFAIL while one was.
    // (east last: until it fails too, it passes and keeps the name)
    for s in [&north, &west, &east] {
        s.set(503);
    }
    stays(dns, name, "10.1.0.1", Duration::from_secs(2), &log);
    let st = lab.ok(&["--json", "status", "shop"]).json();
    let reason = st[0]["answer"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("no site passes its checks"), "{reason}");
    let audit = lab.events();
    let moved: Vec<&serde_json::Value> = audit.iter().filter(|e| e["command"] == "route").collect();
    assert_eq!(moved.len(), 4, "{moved:#?}");
    assert_eq!(moved[3]["figures"]["change"], "failback");
    assert!(moved[3]["figures"]["asked_by"].is_string(), "{}", moved[3]);
}

/// Plan mistakes in an http service are named with their line and field.
#[test]
fn http_service_plan_mistakes_are_named() {
    let lab = Lab::new();
    lab.plan(
        r#"name: apps
tiers:
  gold: { rpo: 5m, rto: 15m }
sites: [east, west]
services:
  files: { kind: paths, tier: gold, paths: [/etc] }
  shop:
    kind: http
    tier: gold
    health:
      east: http://127.0.0.1:1/health
      mars: http://127.0.0.1:2/health
      west: { url: "ftp://x/health" }
    order: [east, moon]
    follows: files
    on_change: nope
    dns: { listen: "127.0.0.1:5353", name: shop.test, records: { pluto: 10.0.0.1 } }
"#,
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.all();
    for want in [
        "services.shop.health.mars: site `mars` is not in `sites`",
        "services.shop.health.west: `ftp://x/health` is not an http:// or https:// URL",
        "services.shop.order[1]: site `moon` has no health check",
        "services.shop.follows: `files` is a paths service",
        "services.shop.on_change: undeclared runbook `nope`",
        "services.shop.dns.records.pluto: `pluto` has no health check",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(e.contains("lifeboat.yaml:12:"), "line numbers: {e}");
    // A health entry that is neither a URL nor a check.
    lab.plan(
        "name: apps\ntiers:\n  gold: { rpo: 5m, rto: 15m }\nsites: [east]\nservices:\n  shop:\n    kind: http\n    tier: gold\n    health:\n      east: { url: \"http://x/\", satus: 200 }\n",
    );
    let e = lab.run(&["plan", "check"]).all();
    assert!(
        e.contains("satus") && e.contains("lifeboat.yaml:10:"),
        "{e}"
    );
}

/// A drill on the database an app tier follows: its report holds an objective per following
/// tier — the name answers the new primary's site — with when it moved.
#[test]
fn a_drill_on_the_database_shows_its_app_tier_following() {
    let pair = Pair::new("async", "", "");
    let (a, b) = (App::start(), App::start());
    let dns = free_port();
    with_app(
        &pair,
        &a,
        &b,
        dns,
        "",
        "drills:\n  crash: { scenario: kill-primary, service: db }\n",
    );
    let log = || pair.daemon_log();
    let name = "app.lifeboat.test";
    let _daemon = pair.start("");
    await_answer(dns, name, "10.0.1.5", Duration::from_secs(20), &log);
    let r = pair.pg.run(&["--json", "drill", "run", "crash", "--yes"]);
    let summary = r.json();
    let path = summary["reports"]["json"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no report:\n{}\n{}", r.all(), log()));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(report["primary_after"], "b", "{report:#}");
    let o = report["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "app follows db")
        .unwrap_or_else(|| panic!("{report:#}"))
        .clone();
    assert_eq!(o["target"], "answers b", "{o}");
    assert_eq!(o["met"], true, "{o}");
    assert!(
        o["measured"]
            .as_str()
            .unwrap()
            .starts_with("answers b, moved "),
        "{o}"
    );
    assert_eq!(answer(dns, name), "10.0.2.5");
    let md = std::fs::read_to_string(summary["reports"]["markdown"][0].as_str().unwrap())
        .unwrap_or_default();
    assert!(md.contains("app follows db"), "{md}");
}
