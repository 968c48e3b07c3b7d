//! Runbooks: plan checks (unknown action, dependency cycle), the order of a run (services by
//! `depends_on`, independent ones in parallel, barriers alone), a hook that hangs (timeout, then
//! stop or continue as the plan says), approval gates, and the evidence log.

mod common;
use common::*;

const HEAD: &str = "name: rb\ntiers:\n  std: { rpo: 1h, rto: 4h }\nservices:\n  files: { kind: paths, tier: std, paths: [/x] }\n  api: { kind: paths, tier: std, paths: [/x], depends_on: [files] }\n  worker: { kind: paths, tier: std, paths: [/x], depends_on: [files] }\n  web: { kind: paths, tier: std, paths: [/x], depends_on: [api] }\n";

/// A step that logs its start and end (with times) into `order.log`.
fn logged(service: &str, name: &str) -> String {
    format!(
        "      - {{ name: {name}, service: {service}, command: \"echo start {name} $(date +%s%N) >> order.log; sleep 0.4; echo end {name} $(date +%s%N) >> order.log\" }}\n"
    )
}

#[test]
fn plan_check_names_unknown_actions_and_dependency_cycles() {
    let lab = Lab::new();
    lab.plan(&format!(
        "{HEAD}runbooks:\n  r:\n    steps:\n      - {{ action: teleport, service: api }}\n      - {{ command: \"true\", webhook: \"http://x\" }}\n      - {{ action: fence, service: api }}\n      - {{ command: \"true\", on_failure: maybe }}\n      - {{ action: switchover, service: api }}\n"
    ));
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    for want in [
        "runbooks.r.steps[0].action: unknown action `teleport` (built-in: notify, fence, promote, switch-traffic, wait-healthy, restore, rejoin",
        "runbooks.r.steps[1]: a step needs exactly one of `action`, `command`, `webhook`",
        "runbooks.r.steps[2]: `fence` needs a `site`",
        "runbooks.r.steps[3].on_failure: `maybe`: use stop or continue",
        "runbooks.r.steps[4]: `switchover` needs a `site`",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in {}", r.stderr);
    }
    assert!(
        r.stderr.contains("lifeboat.yaml:13:"),
        "line numbers: {}",
        r.stderr
    );
    // A cycle among the services a runbook orders.
    lab.plan(
        &HEAD
            .replace(
                "depends_on: [files] }\n  worker",
                "depends_on: [web] }\n  worker",
            )
            .to_string(),
    );
    let r = lab.run(&["plan", "check"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("dependency cycle: api → web → api")
            || r.stderr.contains("dependency cycle: web → api → web"),
        "{}",
        r.stderr
    );
}

#[test]
fn services_run_in_dependency_order_independent_ones_in_parallel() {
    let lab = Lab::new();
    let mut steps = String::from(
        "      - { name: begin, command: \"echo begin $(date +%s%N) >> order.log\" }\n",
    );
    for (svc, name) in [
        ("web", "web-up"),
        ("worker", "worker-up"),
        ("api", "api-up"),
        ("files", "files-up"),
    ] {
        steps += &logged(svc, name);
    }
    steps += "      - { name: finish, command: \"echo finish $(date +%s%N) >> order.log\" }\n";
    lab.plan(&format!(
        "{HEAD}runbooks:\n  restore-all:\n    kind: restoration\n    steps:\n{steps}"
    ));
    lab.ok(&["plan", "check"]);
    let show = lab.ok(&["runbook", "show", "restore-all"]).stdout;
    assert!(show.contains("2. services files:"), "{show}");
    assert!(
        show.contains("3. services api, worker (in parallel):"),
        "{show}"
    );
    assert!(show.contains("4. services web:"), "{show}");
    let r = lab.run(&["runbook", "run", "restore-all"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let log = std::fs::read_to_string(lab.p("order.log")).unwrap();
    let at = |what: &str| -> u128 {
        log.lines()
            .find(|l| l.starts_with(&format!("{what} ")))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{what} missing: {log}"))
    };
    assert!(at("begin") <= at("start files-up"));
    assert!(at("end files-up") <= at("start api-up"));
    assert!(at("end files-up") <= at("start worker-up"));
    // api and worker overlap: each started before the other ended.
    assert!(
        at("start api-up") < at("end worker-up") && at("start worker-up") < at("end api-up"),
        "{log}"
    );
    assert!(at("end api-up") <= at("start web-up"));
    assert!(at("end web-up") <= at("finish"));
    let ev = lab.events();
    assert_eq!(
        ev.iter().filter(|e| e["command"] == "runbook-step").count(),
        6
    );
    let rb = ev.iter().find(|e| e["command"] == "runbook").unwrap();
    assert_eq!(rb["outcome"], "ok");
}

#[test]
fn a_hanging_hook_times_out_then_stops_or_continues_as_the_plan_says() {
    let lab = Lab::new();
    lab.plan(&format!(
        "{HEAD}runbooks:\n  lenient:\n    steps:\n      - {{ name: dns, command: \"sleep 30\", timeout: 1s, on_failure: continue }}\n      - {{ name: after, command: \"echo ran > after.txt\" }}\n  strict:\n    steps:\n      - {{ name: dns, command: \"sleep 30; echo never > never.txt\", timeout: 1s, retries: 1 }}\n      - {{ name: after, command: \"echo ran > strict.txt\" }}\n"
    ));
    let r = lab.run(&["runbook", "run", "lenient"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("failed")
            && r.stdout
                .contains("timed out after 1s (on_failure: continue)"),
        "{}",
        r.stdout
    );
    assert!(lab.p("after.txt").exists());
    let r = lab.run(&["runbook", "run", "strict"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("skipped"), "{}", r.stdout);
    assert!(!lab.p("strict.txt").exists());
    let step = lab
        .events()
        .into_iter()
        .find(|e| e["command"] == "runbook-step" && e["target"] == "strict/dns")
        .unwrap();
    assert_eq!(step["figures"]["attempts"], 2, "{step}");
    // The timed-out command's process group is gone: nothing it started lives on.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!lab.p("never.txt").exists());
}

#[test]
fn approval_gates_refuse_without_a_person_and_pass_with_yes() {
    let lab = Lab::new();
    lab.plan(&format!(
        "{HEAD}runbooks:\n  gated:\n    kind: failover\n    steps:\n      - {{ name: scale, command: \"echo scaled > scaled.txt\", approval: true }}\n"
    ));
    // Step outcomes are notified by severity: this target takes P2 and worse only.
    let (hook, received) = webhook_receiver();
    let mut plan = std::fs::read_to_string(lab.p("lifeboat.yaml")).unwrap();
    plan += &format!(
        "notifications:\n  - {{ webhook: \"http://127.0.0.1:{hook}/ops\", min_severity: P2 }}\n"
    );
    std::fs::write(lab.p("lifeboat.yaml"), plan).unwrap();
    let r = lab.run(&["runbook", "run", "gated"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("refused"), "{}", r.stdout);
    assert!(r.stderr.contains("no terminal to ask"), "{}", r.stderr);
    assert!(!lab.p("scaled.txt").exists());
    let got = received.lock().unwrap().join("\n");
    assert!(
        got.contains("runbook gated, step scale: refused — approval not given"),
        "{got}"
    );
    assert!(got.contains("runbook gated: failed in"), "{got}");
    let r = lab.run(&["runbook", "run", "gated", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(lab.p("scaled.txt").exists());
    // The passing run (a P4 step, a P3 summary) is below this target's severity.
    assert_eq!(received.lock().unwrap().len(), 2);
    assert!(lab.ok(&["runbook", "list"]).stdout.contains("gated"));
}
