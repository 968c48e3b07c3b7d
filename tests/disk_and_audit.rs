//! A full disk while backing up, and an evidence log edited behind Lifeboat's back.

mod common;
use common::*;

#[test]
fn disk_full_during_backup_fails_clearly_and_records_no_snapshot() {
    let lab = Lab::new();
    let Some(_guard) = tmpfs(&lab.p("repo"), "1536k") else {
        return;
    };
    lab.plan(&basic_plan("echo x"));
    make_data(&lab); // 2 MiB of random data: does not fit
    lab.ok(&["repo", "init"]);
    let r = lab.run(&["backup", "files"]);
    assert_ne!(r.code, 0, "{}", r.all());
    eprintln!("disk-full output: {}", r.stderr);
    assert!(
        r.stderr.contains("No space left on device") || r.stderr.contains("disk is full"),
        "{}",
        r.stderr
    );
    assert_eq!(
        lab.snapshot_count("main"),
        0,
        "a half-written snapshot was recorded"
    );
    assert_eq!(lab.events().last().unwrap()["outcome"], "failed");
    // after freeing space (a smaller source), backups work again and verify is clean
    lab.write("data/bin/random.bin", noise(100_000, 3));
    lab.ok(&["backup", "files"]);
    lab.ok(&["verify", "files", "--read-data"]);
}

#[test]
fn audit_verify_detects_edited_and_deleted_events() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup"]);
    lab.ok(&["verify"]);
    let ev = lab.events();
    assert_eq!(ev.len(), 4);
    for e in &ev {
        for field in [
            "time",
            "actor",
            "command",
            "plan",
            "target",
            "outcome",
            "duration_ms",
            "figures",
            "hash",
            "prev_hash",
        ] {
            assert!(!e[field].is_null(), "event lacks {field}: {e}");
        }
    }
    assert_eq!(ev[1]["target"], "dump");
    assert_eq!(ev[2]["figures"]["summary"]["files"], 24);
    assert_eq!(ev[1]["prev_hash"], ev[0]["hash"]);
    let ok = lab.ok(&["audit", "verify"]);
    assert!(ok.stdout.contains("intact: 4 event(s)"), "{}", ok.stdout);

    let db = rusqlite::Connection::open(lab.p(".lifeboat/evidence.db")).unwrap();
    db.execute(
        "UPDATE events SET outcome = 'ok', figures = '{}' WHERE seq = 2",
        [],
    )
    .unwrap();
    let r = lab.run(&["audit", "verify"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("TAMPERED  event 2 (backup dump"),
        "{}",
        r.stdout
    );

    let lab2 = Lab::new();
    lab2.plan(&basic_plan("echo x"));
    make_data(&lab2);
    lab2.ok(&["repo", "init"]);
    lab2.ok(&["backup"]);
    let db = rusqlite::Connection::open(lab2.p(".lifeboat/evidence.db")).unwrap();
    db.execute("DELETE FROM events WHERE seq = 2", []).unwrap();
    let r = lab2.run(&["audit", "verify"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("were deleted"), "{}", r.stdout);
}
