//! Backups of `paths` and `command` services, restore, retention, copy, and their failures,
//! through the real binary on real local repositories.

mod common;
use common::*;

#[test]
fn backup_and_restore_are_byte_identical_with_modes_and_mtimes() {
    let lab = ready_lab("printf 'kind: List\\\\nitems: []\\\\n'");
    let r = lab.ok(&["--json", "backup"]);
    let v = r.json();
    let files = v
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "files")
        .unwrap();
    assert_eq!(files["ok"], true);
    assert_eq!(files["files"], 24);
    assert!(files["bytes_read"].as_u64().unwrap() > 2 << 20);
    assert!(files["bytes_added"].as_u64().unwrap() > 0);
    assert!(files["duration_s"].as_f64().is_some());

    let snaps = lab.ok(&["--json", "snapshots"]).json();
    let s = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["job"] == "files")
        .unwrap();
    assert_eq!(s["plan"], "t");
    assert_eq!(s["service"], "files");
    assert_eq!(s["kind"], "files");
    let id = s["short_id"].as_str().unwrap().to_string();

    lab.ok(&["restore", &id, "--target", "out"]);
    let n = assert_same_tree(&lab.p("data"), &restored(&lab.p("out"), &lab.p("data")));
    assert_eq!(n, 24);

    // the command's stdout is the snapshot's one file
    lab.ok(&["restore", "latest", "--job", "dump", "--target", "out2"]);
    assert_eq!(
        std::fs::read_to_string(lab.p("out2/dump.txt")).unwrap(),
        "kind: List\nitems: []\n"
    );

    // every state-changing command is in the evidence log
    let cmds: Vec<String> = lab
        .events()
        .iter()
        .map(|e| e["command"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cmds,
        ["repo init", "backup", "backup", "restore", "restore"]
    );
}

#[test]
fn second_backup_deduplicates() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup", "files"]);
    lab.write("data/text/f1.txt", "changed\n");
    let v = lab.ok(&["--json", "backup", "files"]).json();
    let added = v[0]["bytes_stored"].as_u64().unwrap();
    assert!(added < 64 * 1024, "a one-file change stored {added} bytes");
}

#[test]
fn failing_command_fails_the_backup_and_records_no_snapshot() {
    let lab = ready_lab("echo partial; echo 'connection refused' >&2; exit 3");
    let r = lab.run(&["backup", "dump"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("failed (exit status: 3)"), "{}", r.stderr);
    assert!(r.stderr.contains("connection refused"), "{}", r.stderr);
    assert_eq!(lab.snapshot_count("main"), 0);
    let ev = lab.events();
    assert_eq!(ev.last().unwrap()["outcome"], "failed");
    // no spool left behind
    assert_eq!(
        std::fs::read_dir(lab.p(".lifeboat/spool")).unwrap().count(),
        0
    );
}

#[test]
fn command_timeout_kills_and_fails() {
    let lab = Lab::new();
    lab.plan(
        &basic_plan("sleep 30").replace("filename: dump.txt", "filename: dump.txt, timeout: 1s"),
    );
    lab.ok(&["repo", "init"]);
    let started = std::time::Instant::now();
    let r = lab.run(&["backup", "dump"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    assert!(
        started.elapsed().as_secs() < 25,
        "the command was not killed"
    );
    assert_eq!(lab.snapshot_count("main"), 0);
}

#[test]
fn missing_backup_path_fails_before_writing() {
    let lab = ready_lab("echo x");
    std::fs::remove_dir_all(lab.p("data")).unwrap();
    let r = lab.run(&["backup", "files"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("backup path") && r.stderr.contains("data"),
        "{}",
        r.stderr
    );
    assert_eq!(lab.snapshot_count("main"), 0);
}

#[test]
fn wrong_or_missing_key_is_a_clear_error() {
    let lab = ready_lab("echo x");
    lab.write("test.key", "not the key\n");
    let r = lab.run(&["backup", "files"]);
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(
        r.stderr.contains("wrong key for repository main"),
        "{}",
        r.stderr
    );
    assert!(
        !r.all().contains("not the key"),
        "the key leaked: {}",
        r.all()
    );
    let r = lab.run(&["snapshots"]);
    assert_eq!(r.code, 4);

    std::fs::remove_file(lab.p("test.key")).unwrap();
    let r = lab.run(&["snapshots"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("cannot read key file"), "{}", r.stderr);

    // key from an environment variable and from a command
    let lab2 = Lab::new();
    lab2.plan(&basic_plan("echo x").replace("key_file: test.key", "key_env: LB_TEST_KEY"));
    make_data(&lab2);
    let r = lab2
        .cmd(&["repo", "init"])
        .env_remove("LB_TEST_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("LB_TEST_KEY"));
    assert!(lab2
        .cmd(&["repo", "init"])
        .env("LB_TEST_KEY", "k1")
        .status()
        .unwrap()
        .success());
    assert!(lab2
        .cmd(&["backup", "files"])
        .env("LB_TEST_KEY", "k1")
        .status()
        .unwrap()
        .success());
    lab2.plan(&basic_plan("echo x").replace("key_file: test.key", "key_command: \"echo k1\""));
    assert_eq!(lab2.snapshot_count("main"), 1);
}

#[test]
fn forget_applies_retention_and_prunes() {
    let lab = ready_lab("echo x");
    for i in 0..4 {
        lab.write("data/bin/random.bin", noise(1 << 20, 1000 + 2 * i));
        lab.ok(&["backup", "files"]);
    }
    lab.ok(&["backup", "dump"]);
    let dry = lab.ok(&["forget", "--dry-run"]);
    assert_eq!(
        dry.stdout.matches("would remove").count(),
        2,
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("keep   files") && dry.stdout.contains("last 2"),
        "{}",
        dry.stdout
    );
    assert_eq!(lab.snapshot_count("main"), 5, "dry run changed something");

    let before = dir_size(&lab.p("repo/data"));
    let r = lab.ok(&["--json", "forget"]).json();
    assert_eq!(r[0]["removed"], 2);
    assert!(r[0]["packs_removed"].as_u64().unwrap() > 0, "{r}");
    // the dump job has no retention: untouched
    assert_eq!(r[0]["untouched"], 1);
    assert_eq!(lab.snapshot_count("main"), 3);
    let after = dir_size(&lab.p("repo/data"));
    let last = lab.events().last().unwrap().clone();
    assert_eq!(last["command"], "forget");
    assert_eq!(last["figures"]["removed"], 2);
    assert!(
        after < before - (1 << 20),
        "prune freed too little: {before} -> {after}"
    );
    // what is left still restores
    lab.ok(&["restore", "latest", "--job", "files", "--target", "out"]);
    assert_same_tree(&lab.p("data"), &restored(&lab.p("out"), &lab.p("data")));
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn copy_uploads_only_what_is_missing() {
    let lab = Lab::new();
    lab.plan(&basic_plan("echo x").replace(
        "  main: { url: repo, key_file: test.key }\n",
        "  main: { url: repo, key_file: test.key }\n  dr: { url: repo-dr, key_file: dr.key }\n",
    ).replace("files: { service: files,", "files: { service: files, repository: main,").replace("dump: { service: dump }", "dump: { service: dump, repository: main }"));
    lab.write("dr.key", "another key\n");
    make_data(&lab);
    lab.ok(&["repo", "init"]);
    lab.ok(&["backup", "files"]);
    let first = lab
        .ok(&["--json", "repo", "copy", "--from", "main", "--to", "dr"])
        .json();
    assert_eq!(first["copied"], 1);
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 1 << 20);
    let again = lab
        .ok(&["--json", "repo", "copy", "--from", "main", "--to", "dr"])
        .json();
    assert_eq!(again["copied"], 0);
    assert_eq!(again["already_there"], 1);
    let last = lab.events().last().unwrap().clone();
    assert_eq!(last["command"], "copy");
    assert_eq!(last["target"], "main -> dr");
    // a new snapshot with one changed file uploads little
    lab.write("data/text/f2.txt", "new\n");
    lab.ok(&["backup", "files"]);
    let third = lab
        .ok(&["--json", "repo", "copy", "--from", "main", "--to", "dr"])
        .json();
    assert_eq!(third["copied"], 1);
    assert!(
        third["bytes_uploaded"].as_u64().unwrap() < 256 * 1024,
        "{third}"
    );
    lab.ok(&["restore", "latest", "--repo", "dr", "--target", "out"]);
    assert_same_tree(&lab.p("data"), &restored(&lab.p("out"), &lab.p("data")));
}

#[test]
fn verify_checks_freshness_count_and_data() {
    let lab = Lab::new();
    lab.plan(&basic_plan("echo x").replace(
        "dump: { service: dump }",
        "dump: { service: dump, verify: { min_snapshots: 2 } }",
    ));
    make_data(&lab);
    lab.ok(&["repo", "init"]);
    // nothing backed up: every job fails "exists"
    let r = lab.run(&["verify"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("FAIL  job files: no snapshot exists; run `lifeboat backup files`"),
        "{}",
        r.stdout
    );
    lab.ok(&["backup"]);
    let r = lab.run(&["verify", "--read-data"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("FAIL  job dump: only 1 snapshot(s) retained, at least 2 required"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("ok    job files: data in repository main decrypts and matches its hashes"),
        "{}",
        r.stdout
    );
    lab.ok(&["verify", "files", "--read-data-subset", "50%"]);
    // a max_age shorter than the snapshot's age fails freshness
    lab.plan(&basic_plan("echo x").replace(
        "files: { service: files,",
        "files: { service: files, verify: { max_age: 1s },",
    ));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = lab.run(&["verify", "files"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("older than 1s (max_age)"), "{}", r.stdout);
}

#[test]
fn snapshots_table_lists_jobs() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup"]);
    let t = lab.ok(&["snapshots"]).stdout;
    let header = t.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("JOB") && header.contains("KIND"),
        "{t}"
    );
    assert!(
        t.lines().any(|l| l.contains(" files ") && l.contains("24")),
        "{t}"
    );
    assert!(t.contains("2 snapshot(s) in repository main"), "{t}");
}

#[test]
fn progress_bar_only_on_a_terminal() {
    let lab = ready_lab("echo x");
    // no terminal: no bar
    let r = lab
        .cmd(&["backup", "files"])
        .env_remove("LIFEBOAT_PROGRESS")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&r.stderr).contains("backing up"));
    // a pseudo-terminal (util-linux `script`): the bar is drawn
    let cmd = format!("{} backup files", bin().display());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(lab.path())
        .env_remove("LIFEBOAT_PROGRESS")
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("backing up"),
        "no progress bar on a TTY: {text}"
    );
}

#[test]
fn excludes_match_names_anywhere_and_anchored_paths_relative_to_the_plan() {
    let lab = Lab::new();
    lab.plan(&basic_plan("echo x").replace(
        "paths: [data] }",
        "paths: [data], exclude: [\"*.tmp\", \"data/cache/\", \"**/logs/old.log\"] }",
    ));
    lab.write("data/keep.txt", "k");
    lab.write("data/x.tmp", "t");
    lab.write("data/sub/y.tmp", "t");
    lab.write("data/cache/big.bin", "c");
    lab.write("data/sub/cache/kept.bin", "k"); // only data/cache is anchored
    lab.write("data/sub/logs/old.log", "o");
    lab.write("data/sub/logs/new.log", "n");
    lab.ok(&["repo", "init"]);
    lab.ok(&["backup", "files"]);
    lab.ok(&["restore", "latest", "--job", "files", "--target", "out"]);
    let root = restored(&lab.p("out"), &lab.p("data"));
    let mut found = Vec::new();
    fn walk(d: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    walk(&root, &root, &mut found);
    found.sort();
    assert_eq!(
        found,
        ["keep.txt", "sub/cache/kept.bin", "sub/logs/new.log"]
    );
}

#[test]
fn restore_one_file_or_directory_of_a_snapshot() {
    let lab = ready_lab("echo x");
    lab.ok(&["backup", "files"]);
    let file = lab.p("data/text/secret.conf");
    let file = file.to_str().unwrap();
    lab.ok(&[
        "restore", "latest", "--job", "files", "--path", file, "--target", "one",
    ]);
    let got = lab.p("one/secret.conf");
    assert_eq!(std::fs::read(&got).unwrap(), b"password=x\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&got).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dir = lab.p("data/text");
    lab.ok(&[
        "restore",
        "latest",
        "--job",
        "files",
        "--path",
        dir.to_str().unwrap(),
        "--target",
        "dir",
    ]);
    // a directory's contents go into the target
    assert_eq!(assert_same_tree(&dir, &lab.p("dir")), 21);
    let r = lab.run(&[
        "restore",
        "latest",
        "--job",
        "files",
        "--path",
        "/no/such/file",
        "--target",
        "x",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("finding /no/such/file in snapshot"),
        "{}",
        r.stderr
    );
}

#[test]
fn symlinks_fifos_empty_and_sticky_dirs_round_trip() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let lab = ready_lab("echo x");
    std::os::unix::fs::symlink("text/f1.txt", lab.p("data/link")).unwrap();
    std::os::unix::fs::symlink("/no/such/target", lab.p("data/dangling")).unwrap();
    let fifo = std::ffi::CString::new(lab.p("data/pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    std::fs::create_dir(lab.p("data/shared")).unwrap();
    std::fs::set_permissions(
        lab.p("data/shared"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    lab.ok(&["backup", "files"]);
    lab.ok(&["restore", "latest", "--job", "files", "--target", "out"]);
    let out = restored(&lab.p("out"), &lab.p("data"));
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        std::path::Path::new("text/f1.txt")
    );
    assert_eq!(
        std::fs::read_link(out.join("dangling")).unwrap(),
        std::path::Path::new("/no/such/target")
    );
    let pipe = std::fs::symlink_metadata(out.join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.permissions().mode() & 0o7777, 0o640);
    let shared = std::fs::metadata(out.join("shared")).unwrap();
    assert_eq!(shared.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_dir(out.join("shared")).unwrap().count(), 0);
}

/// What restic keeps, Lifeboat keeps: a file whose name is as long as the file system allows
/// (the temporary name once outgrew 255 bytes: "File name too long"), hard links (came back as
/// separate files), sparse files (came back fully allocated), symlink times (not restored).
/// restic restores the same repository the same way.
#[test]
fn long_names_hard_links_sparse_files_and_symlink_times_restore_as_they_were() {
    use std::os::unix::fs::MetadataExt;
    let lab = ready_lab("echo x");
    let long = "n".repeat(255);
    lab.write(&format!("data/{long}"), b"longest name");
    lab.write("data/links/a", b"one inode, two names");
    std::fs::hard_link(lab.p("data/links/a"), lab.p("data/links/b")).unwrap();
    // 64 MiB with 4 KiB of data at 1 MiB and at the end: mostly a hole.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(lab.p("data/sparse.img")).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
    }
    // A file ending in a hole.
    std::fs::File::create(lab.p("data/tail-hole"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    std::os::unix::fs::symlink("links/a", lab.p("data/old-link")).unwrap();
    let touch = std::process::Command::new("touch")
        .args(["-h", "-d", "2020-02-03 04:05:06"])
        .arg(lab.p("data/old-link"))
        .status()
        .unwrap();
    assert!(touch.success());
    lab.ok(&["backup", "files"]);
    lab.ok(&["restore", "latest", "--job", "files", "--target", "out"]);
    let out = restored(&lab.p("out"), &lab.p("data"));
    assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"longest name");
    let a = std::fs::metadata(out.join("links/a")).unwrap();
    let b = std::fs::metadata(out.join("links/b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard links came back as separate files");
    assert_eq!(a.nlink(), 2);
    assert_eq!(
        std::fs::read(out.join("links/b")).unwrap(),
        b"one inode, two names"
    );
    let sparse = std::fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "sparse file came back with {} bytes allocated",
        sparse.blocks() * 512
    );
    assert_eq!(
        std::fs::read(out.join("sparse.img")).unwrap(),
        std::fs::read(lab.p("data/sparse.img")).unwrap()
    );
    let tail = std::fs::metadata(out.join("tail-hole")).unwrap();
    assert_eq!(tail.len(), 32 << 20);
    assert!(tail.blocks() * 512 < 1 << 20);
    let link = std::fs::symlink_metadata(out.join("old-link")).unwrap();
    let orig = std::fs::symlink_metadata(lab.p("data/old-link")).unwrap();
    assert_eq!(link.mtime(), orig.mtime(), "symlink mtime not restored");
    assert_eq!(link.mtime_nsec(), orig.mtime_nsec());
}
