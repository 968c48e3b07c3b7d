//! The S3 backend against a real S3-protocol server on loopback (moto's server), and an
//! unreachable endpoint: retries, then a clear error, and no snapshot recorded.

mod common;
use common::moto::moto;
use common::*;

fn s3_plan(port: u16) -> String {
    basic_plan("echo x").replace(
        "main: { url: repo, key_file: test.key }",
        &format!("main: {{ url: \"s3://lifeboat-test/prod/lifeboat?endpoint=http://127.0.0.1:{port}&region=us-east-1\", key_file: test.key, access_key_id: testing, secret_access_key: testing }}"),
    )
}

#[test]
fn backup_restore_forget_on_s3() {
    let m = moto();
    let lab = Lab::new();
    lab.plan(&s3_plan(m.port));
    make_data(&lab);
    lab.ok(&["repo", "init"]);
    lab.ok(&["backup"]);
    lab.write("data/text/f9.txt", "more\n");
    lab.ok(&["backup", "files"]);
    lab.ok(&["backup", "files"]);
    assert_eq!(lab.snapshot_count("main"), 4);
    lab.ok(&["restore", "latest", "--job", "files", "--target", "out"]);
    assert_same_tree(&lab.p("data"), &restored(&lab.p("out"), &lab.p("data")));
    lab.ok(&["verify", "--read-data"]);
    let r = lab.ok(&["--json", "forget"]).json();
    assert_eq!(r[0]["removed"], 1);
    assert_eq!(lab.snapshot_count("main"), 3);
    // locks live in the bucket too
    let locks = lab.ok(&["repo", "locks"]);
    assert!(locks.stdout.contains("no locks"), "{}", locks.stdout);
}

#[test]
fn unreachable_endpoint_is_a_clear_error_and_records_nothing() {
    let port = 1; // nothing listens on port 1 (and no other test can take it)
    let lab = Lab::new();
    lab.plan(&s3_plan(port));
    make_data(&lab);
    let r = lab.run(&["backup", "files"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(
        r.stderr.contains("cannot reach repository main"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    let ev = lab.events();
    assert_eq!(ev.last().unwrap()["outcome"], "failed");
    let r = lab.run(&["--json", "snapshots"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert_eq!(r.json()["retryable"], true);
    let r = lab.run(&["snapshots"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
}

#[test]
fn missing_bucket_says_so() {
    let m = moto();
    let lab = Lab::new();
    lab.plan(&s3_plan(m.port).replace("s3://lifeboat-test/", "s3://no-such-bucket/"));
    let r = lab.run(&["repo", "init"]);
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(
        r.stderr.contains("NoSuchBucket") && r.stderr.contains("create it"),
        "{}",
        r.stderr
    );
}

/// An S3 server that accepts connections and never answers (stopped with SIGSTOP): every call
/// has a deadline and bounded retries, so the backup ends with a clear error (exit 5) and
/// records no snapshot, instead of hanging with no end in sight.
#[test]
fn a_server_that_never_answers_ends_the_backup_with_a_clear_error() {
    let m = moto();
    let lab = Lab::new();
    let plan = s3_plan(m.port).replace(
        "&region=us-east-1",
        "&region=us-east-1&timeout=2s&io_timeout=2s&retries=1",
    );
    lab.plan(&plan);
    make_data(&lab);
    lab.ok(&["repo", "init"]);
    lab.ok(&["backup", "files"]);
    lab.write("data/text/new.txt", "changed\n");
    m.signal(libc::SIGSTOP);
    // Bounded: a few deadlines with their retries, far below the 2 minutes it hung before.
    let out = run_bounded(lab.cmd(&["backup", "files"]), 90);
    m.signal(libc::SIGCONT);
    let out = out.expect("the backup still hangs on a server that never answers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = out.status;
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("did not answer in time"), "{stderr}");
    assert!(!stderr.contains("check if the given path"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    // No snapshot of the failed run once the server answers again.
    assert_eq!(lab.snapshot_count("main"), 1);
    let ev = lab.events();
    assert_eq!(ev.last().unwrap()["outcome"], "failed");
}
