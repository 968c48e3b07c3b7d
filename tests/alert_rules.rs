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
