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
    // a stale lock does not block the next run, which says so
    let r = lab.run(&["backup", "files"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("stale lock ignored") && r.stderr.contains("lifeboat repo unlock"),
        "{}",
        r.stderr
    );
    // the killed run's spool file was cleaned up by the next run of a command job
    lab.write("release", "");
    lab.ok(&["backup", "dump"]);
    assert_eq!(
        std::fs::read_dir(lab.p(".lifeboat/spool")).unwrap().count(),
        0
    );
    let u = lab.ok(&["repo", "unlock"]);
    assert!(u.stdout.contains("removed 1 lock"), "{}", u.stdout);
    let last = lab.events().last().unwrap().clone();
    assert_eq!(last["command"], "repo unlock");
    assert!(
        last["figures"]["removed"][0]
            .as_str()
            .unwrap()
            .contains("pid"),
        "{last}"
    );
    assert_eq!(std::fs::read_dir(lab.p("repo/locks")).unwrap().count(), 0);
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
