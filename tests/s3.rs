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
