//! A repository written by Lifeboat is read by the real `restic` binary (Debian package):
//! `restic check --read-data` passes and `restic restore` gives back the same bytes.

mod common;
use common::*;

#[test]
fn restic_checks_and_restores_a_lifeboat_repository() {
    let lab = ready_lab("printf 'terraform state'");
    lab.ok(&["backup"]);
    lab.write("data/text/f5.txt", "edited\n");
    lab.ok(&["backup", "files"]);

    let restic = |args: &[&str]| {
        let out = restic(&lab)
            .args(args)
            .env("RESTIC_PROGRESS_FPS", "0.01")
            .output()
            .expect("restic is installed (Debian package `restic`; .ci/run installs it)");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "restic {args:?} failed:\n{all}");
        all
    };
    let check = restic(&["check", "--read-data"]);
    assert!(check.contains("no errors were found"), "{check}");

    let snaps = restic(&["snapshots", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(snaps.lines().find(|l| l.starts_with('[')).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "plan=t"));

    let latest = lab.ok(&["--json", "snapshots", "--job", "files"]).json();
    let id = latest.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    restic(&[
        "restore",
        &id,
        "--target",
        lab.p("by-restic").to_str().unwrap(),
    ]);
    let n = assert_same_tree(
        &lab.p("data"),
        &restored(&lab.p("by-restic"), &lab.p("data")),
    );
    assert_eq!(n, 24);
}
