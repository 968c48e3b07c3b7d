//! A flipped byte in a pack file: `verify --read-data` names the damaged snapshot(s), and a
//! restore of the damaged data fails loudly instead of writing wrong bytes.

mod common;
use common::*;

#[test]
fn flipped_byte_is_detected_and_restore_refuses() {
    let lab = Lab::new();
    lab.plan(&basic_plan("echo x"));
    make_data(&lab);
    lab.ok(&["repo", "init"]);
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
    let mut packs = Vec::new();
    for d in std::fs::read_dir(lab.p("repo/data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            packs.push((f.metadata().unwrap().len(), f.path()));
        }
    }
    packs.sort();
    let (len, pack) = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();

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

    let r = lab.run(&["restore", &snap, "--target", "out"]);
    assert_ne!(r.code, 0, "restore of damaged data succeeded:\n{}", r.all());
    let target = restored(&lab.p("out"), &lab.p("data/bin/random.bin"));
    if let Ok(got) = std::fs::read(&target) {
        assert!(
            got != noise(2 << 20, 7) || got.is_empty(),
            "wrong data was written silently"
        );
        assert_ne!(
            got,
            std::fs::read(lab.p("data/bin/random.bin")).unwrap(),
            "restore wrote the file although its data is damaged"
        );
    }
    assert_eq!(lab.events().last().unwrap()["outcome"], "failed");
}
