//! A flipped byte in a pack file: `verify --read-data` names the damaged snapshot(s), and a
//! restore of the damaged data fails loudly instead of writing wrong bytes.

mod common;
use common::*;

#[test]
fn flipped_byte_is_detected_and_restore_refuses() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup", "files"]);
    let good = lab.ok(&["verify", "files", "--read-data"]);
    assert!(
        good.stdout.contains("decrypts and matches"),
        "{}",
        good.stdout
    );
    let snap = lab.ok(&["--json", "snapshots"]).json()[0]["short_id"]
        .as_str()
        .unwrap()
        .to_string();

    // the largest pack holds random.bin's data
    flip_largest_pack(&lab.p("repo"));

    let r = lab.run(&["verify", "files", "--read-data"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains(&format!(
            "FAIL  job files: snapshot(s) {snap} reference damaged data"
        )),
        "{}",
        r.stdout
    );
    let ev = lab.events();
    assert_eq!(ev.last().unwrap()["command"], "verify");
    assert_eq!(ev.last().unwrap()["outcome"], "failed");

    let r = lab.run(&["repo", "check", "--read-data"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("DAMAGED snapshot {snap} (job files)")),
        "{}",
        r.stdout
    );

    let r = lab.run(&["restore", &snap, "--target", "out"]);
    assert_eq!(
        r.code,
        1,
        "restore of damaged data did not fail cleanly:\n{}",
        r.all()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("1 file(s) could not be restored and were not written")
            && r.stderr.contains("random.bin"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("failed its authentication (MAC) check"),
        "{}",
        r.stderr
    );
    // the damaged file is not there under its name, no temporary file is left behind,
    // and every undamaged file was restored
    let out = restored(&lab.p("out"), &lab.p("data"));
    assert!(
        !out.join("bin/random.bin").exists(),
        "a damaged file was written"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("run.sh")],
        "{leftovers:?}"
    );
    assert_eq!(std::fs::read_dir(out.join("text")).unwrap().count(), 21);
    assert_eq!(lab.events().last().unwrap()["outcome"], "failed");
}

/// A large file is restored by several readers at once: a damaged blob anywhere in it still
/// fails the file (never written under its name) and the restore, naming it.
#[test]
fn a_damaged_blob_in_a_large_file_restored_in_parallel_fails_that_file() {
    let lab = ready_lab("echo x");
    lab.write("data/bin/big.bin", noise(24 << 20, 11));
    lab.ok(&["backup", "files"]);
    let snap = lab.ok(&["--json", "snapshots"]).json()[0]["short_id"]
        .as_str()
        .unwrap()
        .to_string();
    // One byte flipped in the middle of every pack of file data (trees are in small packs).
    for d in std::fs::read_dir(lab.p("repo").join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.len() < 1 << 20 {
                continue;
            }
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let r = lab.run(&["restore", &snap, "--target", "out"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.contains("big.bin"), "{}", r.stderr);
    let restored: Vec<_> = walk_files(&lab.p("out"));
    assert!(
        !restored.iter().any(|p| p.ends_with("big.bin")),
        "a damaged file was written: {restored:?}"
    );
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
