//! Locks: two runs of one job never overlap, forget waits for nobody, stale locks are reported
//! with the command that clears them, and restic honours Lifeboat's locks.

mod common;
use common::*;

use std::time::{Duration, Instant};

/// The `dump` command runs until the test creates the file `release` (no timing races).
const SLOW_DUMP: &str = "while [ ! -e release ]; do sleep 0.05; done; echo done";

fn wait_for_lock(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        // a finished lock file: 64 hex characters, not a temporary file still being written
        let done = std::fs::read_dir(lab.p("repo/locks"))
            .map(|d| d.flatten().any(|e| e.file_name().len() == 64))
            .unwrap_or(false);
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no lock appeared");
}

/// A repository with a `dump` backup running (and holding its lock) for a few seconds.
fn start_slow_backup() -> (Lab, std::process::Child) {
    let lab = ready_lab(SLOW_DUMP);
    let first = lab.cmd(&["backup", "dump"]).spawn().unwrap();
    wait_for_lock(&lab);
    (lab, first)
}

#[test]
fn concurrent_runs_of_one_job_are_refused() {
    let (lab, mut first) = start_slow_backup();
    let second = lab.run(&["backup", "dump"]);
    assert_eq!(second.code, 3, "{}", second.all());
    assert!(
        second.stderr.contains("repository is locked"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("lifeboat backup dump"),
        "{}",
        second.stderr
    );
    // another job may run meanwhile
    lab.ok(&["backup", "files"]);
    // forget needs the repository to itself
    let f = lab.run(&["forget"]);
    assert_eq!(f.code, 3, "{}", f.all());
    // restic honours the lock, and can read it
    let out = restic(&lab).arg("prune").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("locked"),
        "restic ignored the lock: {text}"
    );
    lab.write("release", "");
    assert!(first.wait().unwrap().success());
    assert_eq!(lab.snapshot_count("main"), 2);
    // released: nothing left
    assert_eq!(std::fs::read_dir(lab.p("repo/locks")).unwrap().count(), 0);
}

#[test]
fn stale_lock_from_a_killed_run_is_reported_and_cleared() {
    let (lab, mut first) = start_slow_backup();
    // SIGKILL: no chance to clean up
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    let locks = lab.ok(&["repo", "locks"]);
    assert!(
        locks.stdout.contains("STALE") && locks.stdout.contains("no longer running"),
        "{}",
        locks.stdout
    );
    assert!(
        locks.stdout.contains("lifeboat repo unlock"),
        "{}",
        locks.stdout
    );
    // restic's check refuses while the abandoned lock is there
    let out = restic(&lab).arg("check").output().unwrap();
    assert!(!out.status.success(), "restic check ran past the lock");
    // the next writer removes it (its process is provably gone), says so and records it
    let r = lab.run(&["backup", "files"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("removed an abandoned lock") && r.stderr.contains("no longer running"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(lab.p("repo/locks")).unwrap().count(), 0);
    let unlock = lab
        .events()
        .into_iter()
        .find(|e| e["command"] == "repo unlock")
        .expect("the removal is in the evidence log");
    assert_eq!(unlock["figures"]["by"], "backup");
    assert!(
        unlock["figures"]["removed"][0]
            .as_str()
            .unwrap()
            .contains("lifeboat backup dump"),
        "{unlock}"
    );
    let out = restic(&lab).arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the killed run's spool file was cleaned up by the next run of a command job
    lab.write("release", "");
    lab.ok(&["backup", "dump"]);
    assert_eq!(
        std::fs::read_dir(lab.p(".lifeboat/spool")).unwrap().count(),
        0
    );
    // `repo unlock` still clears what a writer would not (a lock it cannot judge dead)
    let u = lab.ok(&["repo", "unlock"]);
    assert!(u.stdout.contains("removed 0 lock"), "{}", u.stdout);
}

/// Packs no index names (what a killed backup leaves behind) are freed by forget, and the
/// report says how much: it used to say "pruned 0 pack(s), freed 0 B" while deleting them.
#[test]
fn forget_reports_the_packs_a_killed_backup_left() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup", "files"]);
    // A twin of the repository (same keys) takes a backup of new data; its new packs, copied
    // into the first repository without their index, are exactly a killed backup's leftovers.
    let twin = lab.p("twin");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(lab.p("repo"))
        .arg(&twin)
        .status()
        .unwrap();
    assert!(cp.success());
    let before: std::collections::BTreeSet<_> = packs(&twin);
    lab.write("data/new.bin", noise(3 << 20, 99));
    let plan = std::fs::read_to_string(lab.p("lifeboat.yaml")).unwrap();
    lab.plan(&plan.replace("url: repo", "url: twin"));
    lab.ok(&["backup", "files"]);
    lab.plan(&plan);
    let mut added = 0u64;
    for p in packs(&twin).difference(&before) {
        let rel = p.strip_prefix(&twin).unwrap();
        let dest = lab.p("repo").join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(p, &dest).unwrap();
        added += std::fs::metadata(&dest).unwrap().len();
    }
    assert!(added > 0);
    // check names them in Lifeboat's words, not rustic's ("rustic repair index").
    let c = lab.run(&["repo", "check"]);
    assert!(!c.all().contains("rustic"), "{}", c.all());
    assert!(c.all().contains("lifeboat forget"), "{}", c.all());
    let r = lab.ok(&["--json", "forget"]);
    let v = r.json()[0].clone();
    assert!(v["packs_removed"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["bytes_freed"].as_u64().unwrap(), added, "{v}");
    let out = restic(&lab)
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn packs(repo: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.insert(f.path());
        }
    }
    out
}

#[test]
fn lifeboat_honours_a_lock_held_by_restic() {
    use std::io::Write;
    let lab = ready_lab("echo x");
    // `restic backup --stdin` holds its (zstd-compressed, v2) lock while it waits for input
    let mut restic = restic(&lab)
        .args(["backup", "--stdin", "--stdin-filename", "x"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lock(&lab);
    let locks = lab.ok(&["repo", "locks"]);
    assert!(
        locks.stdout.contains("held by another restic client"),
        "{}",
        locks.stdout
    );
    let f = lab.run(&["forget"]);
    assert_eq!(f.code, 3, "forget ran under restic's lock: {}", f.all());
    // a shared backup lock may coexist with restic's shared lock
    lab.ok(&["backup", "files"]);
    restic.stdin.take().unwrap().write_all(b"data").unwrap();
    assert!(restic.wait().unwrap().success());
    lab.ok(&["forget"]);
}
