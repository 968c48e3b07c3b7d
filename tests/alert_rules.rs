//! The shipped alert rules (`deploy/prometheus/`): `promtool check rules` and `promtool test
//! rules` — one unit test per rule, firing and not firing. That every metric they name is one
//! the daemon exports is checked by the server crate's metrics tests.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (install Prometheus' tools: scripts/install-deps.sh installs Debian's `prometheus`)")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_rules_are_valid_and_every_rule_has_a_passing_unit_test() {
    let (ok, out) = promtool(&["check", "rules", "lifeboat-rules.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&[
        "test",
        "rules",
        "lifeboat-rules.test.yml",
        "lifeboat-rules.days.test.yml",
    ]);
    assert!(ok, "{out}");
    // Every alert is tested.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let rules = std::fs::read_to_string(dir.join("lifeboat-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("lifeboat-rules.test.yml")).unwrap()
        + &std::fs::read_to_string(dir.join("lifeboat-rules.days.test.yml")).unwrap();
    for l in rules.lines() {
        if let Some(name) = l.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "no unit test for {name}"
            );
        }
    }
}

/// The Grafana dashboard (`deploy/grafana/lifeboat.json`) parses, has its panels, and every
/// query is valid PromQL (each checked by promtool as a recording rule). That each metric it
/// names is exported is checked by the server crate's metrics tests.
#[test]
fn the_dashboard_parses_and_every_query_is_valid_promql() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/lifeboat.json");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(d["uid"], "lifeboat-dr");
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() > 10);
    let mut exprs = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 15, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$service", "db");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let f = dir.path().join("dashboard-rules.yml");
    std::fs::write(&f, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", f.to_str().unwrap()]);
    assert!(ok, "{out}");
}
