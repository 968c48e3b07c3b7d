//! A repository written by Lifeboat is read by the real `restic` binary (Debian package):
//! `restic check --read-data` passes and `restic restore` gives back the same bytes.

mod common;
use common::*;

/// The real restic on the lab's repository: its whole output, the test failing if restic does.
fn run_restic(lab: &Lab, args: &[&str]) -> String {
    let out = restic(lab)
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
}

#[test]
fn restic_checks_and_restores_a_lifeboat_repository() {
    let lab = ready_lab("printf 'terraform state'");
    lab.ok(&["backup"]);
    lab.write("data/text/f5.txt", "edited\n");
    lab.ok(&["backup", "files"]);

    let restic = |args: &[&str]| run_restic(&lab, args);
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

/// Lifeboat's own pipeline (gear-hash chunking, parallel packs): files of many chunks, runs of
/// zeros and a file edited in its middle. restic checks every byte, restores both snapshots as
/// they were, and the second backup stored only the chunks around the edit.
#[test]
fn restic_reads_the_pipeline_s_chunks_and_a_second_backup_stores_only_the_edit() {
    let lab = ready_lab("printf x");
    let mut big = noise(24 << 20, 11);
    big[8 << 20..12 << 20].fill(0);
    lab.write("data/big/random.bin", &big);
    let text: String = (0..200_000)
        .map(|i| format!("line {i} of a log file\n"))
        .collect();
    lab.write("data/big/log.txt", &text);
    let first = lab.ok(&["--json", "backup", "files"]).json();
    assert_eq!(first[0]["files_unchanged"], 0);
    big[(20 << 20) + 5..(20 << 20) + 105].fill(7);
    lab.write("data/big/random.bin", &big);
    let second = lab.ok(&["--json", "backup", "files"]).json();
    let added = second[0]["bytes_added"].as_u64().unwrap();
    // One to three chunks around the edit (at most 8 MiB each, ~1 MiB on average) and trees.
    assert!(added > 0 && added < 17 << 20, "{added} bytes added");
    assert!(
        second[0]["files_unchanged"].as_u64().unwrap() >= 24,
        "{second}"
    );

    let restic = |args: &[&str]| run_restic(&lab, args);
    let check = restic(&["check", "--read-data"]);
    assert!(check.contains("no errors were found"), "{check}");
    for (snap, dir) in [(&first, "by-restic-1"), (&second, "by-restic-2")] {
        let id = snap[0]["snapshot"].as_str().unwrap();
        restic(&["restore", id, "--target", lab.p(dir).to_str().unwrap()]);
    }
    let r2 = restored(&lab.p("by-restic-2"), &lab.p("data"));
    assert_same_tree(&lab.p("data"), &r2);
    let r1 = restored(&lab.p("by-restic-1"), &lab.p("data"));
    let old = std::fs::read(r1.join("big/random.bin")).unwrap();
    assert_eq!(old.len(), big.len());
    assert_eq!(&old[..20 << 20], &big[..20 << 20]);
    assert_ne!(
        old, big,
        "the first snapshot holds the file before its edit"
    );
}
