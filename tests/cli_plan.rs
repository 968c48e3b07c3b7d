//! `lifeboat init`, `plan check`, `plan schema` through the real binary.

mod common;
use common::*;

#[test]
fn init_writes_a_plan_that_passes_check() {
    let lab = Lab::new();
    lab.ok(&["init"]);
    assert!(lab.p("lifeboat.yaml").exists());
    let key = std::fs::metadata(lab.p("lifeboat.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let r = lab.ok(&["plan", "check"]);
    assert!(r.stdout.contains("ok"), "{}", r.stdout);
    // a second init refuses to overwrite
    assert_ne!(lab.run(&["init"]).code, 0);
}

#[test]
fn check_reports_every_error_with_location_and_fails() {
    let lab = Lab::new();
    lab.plan(
        "name: t\ntiers:\n  std: { rpo: 1h, rto: soon }\nservices:\n  a: { kind: paths, tier: gold, paths: [/x], colour: 1 }\nrepositories:\n  main: { url: r, key_file: k }\nbackups:\n  j: { service: b, retention: {} }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.stderr;
    assert!(
        e.contains("lifeboat.yaml:3:24: tiers.std.rto: `soon` is not a duration"),
        "{e}"
    );
    assert!(
        e.contains("lifeboat.yaml:5:46: services.a.colour: unknown field `colour`"),
        "{e}"
    );
    assert!(
        e.contains("lifeboat.yaml:9:17: backups.j.service: job names undeclared service `b`"),
        "{e}"
    );
    assert!(
        e.contains("backups.j.retention: retention has no keep rule"),
        "{e}"
    );
    // JSON form for machines
    let r = lab.run(&["--json", "plan", "check"]);
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert!(v["errors"].as_array().unwrap().len() >= 3);
    assert_eq!(v["errors"][0]["line"], 3);
}

#[test]
fn malformed_yaml_and_wrong_types_are_located() {
    let lab = Lab::new();
    lab.plan("name: t\nservices:\n  a: { kind: paths\n");
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("malformed YAML"), "{}", r.stderr);
    lab.plan("name: t\nsites: east\n");
    let r = lab.run(&["plan", "check"]);
    assert!(
        r.stderr.contains(
            "lifeboat.yaml:2:8: sites: invalid type: string \"east\", expected a sequence"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn schema_is_json_schema() {
    let lab = Lab::new();
    let v = lab.ok(&["plan", "schema"]).json();
    assert!(v["$schema"].as_str().unwrap().contains("json-schema.org"));
    assert!(v["properties"]["backups"].is_object());
}

#[test]
fn plan_show_never_prints_inline_secrets() {
    let lab = Lab::new();
    lab.plan("name: t\nnotifications:\n  - { webhook: \"https://hooks.example/T0/very-secret-token\" }\n  - { webhook: \"${HOOK}\" }\n");
    let r = lab.ok(&["plan", "show"]);
    assert!(!r.stdout.contains("very-secret-token"), "{}", r.stdout);
    assert!(
        r.stdout.contains("***") && r.stdout.contains("${HOOK}"),
        "{}",
        r.stdout
    );
}

#[test]
fn check_warns_about_unprotected_services_without_failing() {
    let lab = Lab::new();
    lab.plan(&basic_plan("echo x").replace("  dump: { service: dump }\n", ""));
    let r = lab.ok(&["plan", "check"]);
    assert!(
        r.stderr
            .contains("warning: services.dump: no backup job backs this service up"),
        "{}",
        r.stderr
    );
    let v = lab.ok(&["--json", "plan", "check"]).json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["warnings"][0]["path"], "services.dump");
}

#[test]
fn postgres_jobs_are_checked_against_their_service() {
    let lab = Lab::new();
    lab.plan(
        "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n    wal_repository: nope\n  files: { kind: paths, tier: std, paths: [/x] }\nrepositories:\n  main: { url: r, key_file: k }\nbackups:\n  base: { service: db, from: b }\n  dump: { service: db, method: dump }\n  f: { service: files, method: base }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.stderr;
    assert!(
        e.contains("services.db.wal_repository: undeclared repository `nope`"),
        "{e}"
    );
    assert!(
        e.contains("backups.base.from: service `db` has no member in site `b`"),
        "{e}"
    );
    assert!(
        e.contains("backups.dump.method: method dump needs the service `db` to list `databases`"),
        "{e}"
    );
    assert!(
        e.contains("backups.f.method: `method` applies to postgres services only"),
        "{e}"
    );
    assert!(e.contains("lifeboat.yaml:16:"), "line numbers: {e}");
}

#[test]
fn how_a_base_backup_reads_and_the_wal_stream_s_slot_are_checked() {
    let lab = Lab::new();
    lab.plan(
        "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n    databases: [app]\n    wal_stream: { slot: Bad-Slot, interval: 0s }\n  files: { kind: paths, tier: std, paths: [/x] }\nrepositories:\n  main: { url: r, key_file: k }\nbackups:\n  dump: { service: db, method: dump, via: files }\n  f: { service: files, via: stream }\n  odd: { service: db, via: sideways }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.stderr;
    // An unknown way is refused where the YAML is read, with its position.
    assert!(e.contains("via") && e.contains("sideways"), "{e}");
    lab.plan(
        "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n    databases: [app]\n    wal_stream: { slot: Bad-Slot, interval: 0s }\n  files: { kind: paths, tier: std, paths: [/x] }\nrepositories:\n  main: { url: r, key_file: k }\nbackups:\n  dump: { service: db, method: dump, via: files }\n  f: { service: files, via: stream }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let e = r.stderr;
    assert!(
        e.contains("services.db.wal_stream.slot: `Bad-Slot` is not a replication slot name"),
        "{e}"
    );
    assert!(
        e.contains("services.db.wal_stream.interval: must be more than 0"),
        "{e}"
    );
    assert!(
        e.contains("backups.dump.via: `via` applies to base backups only"),
        "{e}"
    );
    assert!(
        e.contains("backups.f.via: `via` applies to postgres base backups only"),
        "{e}"
    );
}

#[test]
fn automatic_failover_needs_two_sites() {
    let lab = Lab::new();
    lab.plan(
        "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n    failover: { listen: \"not-an-address\" }\n",
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("services.db.failover: automatic failover needs members in at least two sites (this service has 1)"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("services.db.failover.listen: `not-an-address` is not an address"),
        "{}",
        r.stderr
    );
}

#[test]
fn automatic_failover_refuses_both_members_in_one_site_or_on_one_server() {
    let lab = Lab::new();
    let head = "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a, b]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n";
    // Two members under one site key.
    lab.plan(&format!(
        "{head}      a: {{ host: 10.0.0.1, port: 5432 }}\n      a: {{ host: 10.0.0.2, port: 5432 }}\n    failover: {{ listen: \"127.0.0.1:6432\" }}\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("duplicate key `a`"), "{}", r.stderr);
    assert!(r.stderr.contains("lifeboat.yaml:11:"), "{}", r.stderr);
    // Two sites, one server; an unknown site for a health endpoint; a check of two kinds.
    lab.plan(&format!(
        "{head}      a: {{ host: 10.0.0.1, port: 5432 }}\n      b: {{ host: 10.0.0.1, port: 5432 }}\n    failover:\n      health_listen: {{ c: \"127.0.0.1:8008\" }}\n      health_checks:\n        a: [ {{ tcp: \"10.0.0.1:80\", command: \"true\" }}, {{ http: \"ftp://x\" }} ]\n      witness: {{ z: [ {{ tcp: \"nope\" }} ] }}\n      dns: {{ listen: \"nope\", name: \"bad..name\", records: {{ z: 1.2.3.4 }} }}\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    for want in [
        "services.db.members.b: members a and b are the same server (10.0.0.1:5432)",
        "services.db.failover.health_listen.c: `c` is not a member of this service",
        "services.db.failover.health_checks.a[0]: a health check needs exactly one of `http`, `tcp`, `command`",
        "services.db.failover.health_checks.a[1]: `ftp://x` is not an http:// or https:// URL",
        "services.db.failover.witness.z: `z` is not a member of this service",
        "services.db.failover.witness.z[0]: `nope` is not host:port",
        "services.db.failover.dns.listen: `nope` is not an address to answer on",
        "services.db.failover.dns.name: `bad..name` is not a DNS name",
        "services.db.failover.dns.records.z: `z` is not a member of this service",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in {}", r.stderr);
    }
}

/// Hostile plans end in a located error (exit 2), never an abort: an alias bomb, deep nesting,
/// bytes that are not UTF-8.
#[test]
fn hostile_plans_are_refused_with_a_position() {
    let lab = Lab::new();
    lab.ok(&["init"]);
    let good = std::fs::read_to_string(lab.p("lifeboat.yaml")).unwrap();
    let mut bomb = format!("{good}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x{i}: &a{i} [{}]\n",
            vec![format!("*a{p}"); 10].join(", ")
        ));
    }
    lab.plan(&bomb);
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("expands to more than"), "{}", r.stderr);

    let mut deep = format!("{good}\nx:\n");
    for i in 0..3000 {
        deep.push_str(&format!("{}a:\n", " ".repeat(2 * (i + 1))));
    }
    lab.plan(&deep);
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("nested more than"), "{}", r.stderr);

    let mut bytes = good.clone().into_bytes();
    let at = good.find("my-service").unwrap();
    bytes[at + 2] = 0xff;
    std::fs::write(lab.p("lifeboat.yaml"), &bytes).unwrap();
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let line = good[..at].matches('\n').count() + 1;
    assert!(
        r.stderr.contains(&format!(
            "lifeboat.yaml:{line}:9: (top level): byte 0xff is not UTF-8"
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn a_coordinator_needs_etcd_addresses_and_timings_that_leave_time_to_renew() {
    let lab = Lab::new();
    let base = "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a, b]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n      b: { host: 127.0.0.1, port: 5433 }\n";
    lab.plan(&format!(
        "{base}coordinator:\n  etcd: [\"10.0.0.1:2379\", \"no-port\"]\n  ttl: 1500ms\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("coordinator.etcd[1]: `no-port` is not an etcd client address"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("coordinator.ttl: "), "{}", r.stderr);
    lab.plan(&format!(
        "{base}coordinator:\n  etcd: []\n  ttl: 3s\n  renew: 2s\n  margin: 1s\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("coordinator.etcd: name at least one etcd member"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("coordinator.renew: renewing every 2s"),
        "{}",
        r.stderr
    );
    lab.plan(&format!(
        "{base}coordinator:\n  etcd: [\"10.0.0.1:2379\"]\n  tll: 3s\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("tll"), "{}", r.stderr);
    lab.plan(&format!(
        "{base}coordinator:\n  etcd: [\"10.0.0.1:2379\", \"10.0.0.2:2379\", \"10.0.0.3:2379\"]\n"
    ));
    lab.ok(&["plan", "check"]);
}

#[test]
fn failsafe_needs_an_address_for_every_member_site_and_a_key_and_the_watchdog_a_known_mode() {
    let lab = Lab::new();
    let base = "name: t\ntiers:\n  std: { rpo: 1h, rto: 4h }\nsites: [a, b, w]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: { host: 127.0.0.1, port: 5432 }\n      b: { host: 127.0.0.1, port: 5433 }\ncoordinator:\n  etcd: [\"10.0.0.1:2379\"]\n";
    lab.plan(&format!(
        "{base}  failsafe:\n    listen: {{ a: \"127.0.0.1:7434\", x: \"127.0.0.1:7435\", w: \"here\" }}\n    key_file: \" \"\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    for want in [
        "coordinator.failsafe.listen.x: `x` is not one of the plan's sites",
        "coordinator.failsafe.listen.w: `here` is not an address to listen on",
        "coordinator.failsafe.listen: db has a member at b: give its agent an address",
        "coordinator.failsafe.key_file: name a file",
    ] {
        assert!(r.stderr.contains(want), "{want}:\n{}", r.stderr);
    }
    lab.plan(&format!("{base}  watchdog: sometimes\n"));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("sometimes"), "{}", r.stderr);
    lab.plan(&format!(
        "{base}  watchdog: required\n  failsafe:\n    listen: {{ a: \"127.0.0.1:7434\", b: \"127.0.0.1:7435\" }}\n    key_file: failsafe.key\n"
    ));
    lab.ok(&["plan", "check"]);
}

#[test]
fn endpoints_per_site_need_plan_sites_addresses_and_a_coordinator() {
    let lab = Lab::new();
    let svc = |listen: &str| {
        format!("name: t\ntiers:\n  std: {{ rpo: 1h, rto: 4h }}\nsites: [a, b, w]\nservices:\n  db:\n    kind: postgres\n    tier: std\n    members:\n      a: {{ host: 127.0.0.1, port: 5432 }}\n      b: {{ host: 127.0.0.1, port: 5433 }}\n    failover:\n      site_listen: {listen}\n")
    };
    let coordinator = "coordinator:\n  etcd: [\"10.0.0.1:2379\"]\n";
    lab.plan(&format!(
        "{}{coordinator}",
        svc("{ a: \"127.0.0.1:6432\", x: \"127.0.0.1:6433\", b: \"east-proxy\" }")
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    for want in [
        "services.db.failover.site_listen.x: `x` is not one of the plan's sites",
        "services.db.failover.site_listen.b: `east-proxy` is not an address to listen on",
    ] {
        assert!(r.stderr.contains(want), "{want}:\n{}", r.stderr);
    }
    // A site without a member (a witness) may have an endpoint; without etcd none may.
    let good = svc("{ a: \"127.0.0.1:6432\", w: \"127.0.0.1:6434\" }");
    lab.plan(&good);
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "services.db.failover.site_listen: endpoints per site follow the leader key in etcd"
        ),
        "{}",
        r.stderr
    );
    lab.plan(&format!("{good}{coordinator}"));
    lab.ok(&["plan", "check"]);
}
